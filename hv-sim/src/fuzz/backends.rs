//! Fuzz target: pvops-xen's ops (`XenOps`) over an in-process pv64 domain.
//!
//! A case builds a 32-page pv64 domain with a GDT (two pages), an IDT and
//! an LDT in its RAM, filled with descriptors shaped by Xen's rules, and
//! drives the backend for one vCPU through up to 32 ops with arbitrary
//! indices, entries, gates, selectors and stacks: `load_gdt` of any length
//! that fits its pages, `write_gdt_entry` (8- and 16-byte entries, any
//! index), `write_ldt_entry`, `write_idt_entry`, `load_idt`, `load_tr`,
//! `load_ldt` (and `None`), `load_tls`, `alloc_ldt`/`free_ldt`,
//! `load_kernel_stack`, the lazy-mode calls and every `store_*`, with the
//! guest writing its own tables natively in between.
//!
//! After every op: no panic, and `XenDomain::check_invariants` holds (the
//! backend can only ask; whatever it asks, the domain stays safe); a
//! successful `load_gdt` is what `store_gdt` reports.

use pvops::{
    Descriptor, DescriptorOps, Gate64, Gdt, GdtEntry, GdtLayout, Idt, Ldt, Selector,
    SystemDescriptor,
};

use super::{CaseStats, Source, descriptor, int, selector};
use crate::vmi::abi::call;
use crate::vmi::{GuestKind, GuestMemory, HostWindow, VmiHypervisor};
use crate::xen::XenDomain;
use pvops_vmi::VmiPlatform;

const PAGE: u64 = 4096;

/// Where a case's tables live, and what differs between the Xen and VMI
/// cases around one shared op menu ([`drive`]).
struct Arena<'a> {
    gdt_va: u64,
    idt_va: u64,
    ldt_va: u64,
    /// A page for kernel stacks.
    other_va: u64,
    /// GDT lengths the case picks from (the Xen case's two pages take up
    /// to 1024 entries).
    gdt_sizes: &'static [u32],
    /// Table pages the guest's own (native) stores aim at.
    native_pages: &'a [u64],
    /// The guest's native store of a word.
    store: &'a dyn Fn(u64, u64),
    /// The model's invariant check after each op.
    invariants: &'a dyn Fn() -> Result<(), String>,
    /// Base of the outcome keys in [`CaseStats`].
    outcome_base: u64,
}

impl Arena<'_> {
    /// A fresh set of table handles (GDT, IDT, LDT) over the arena.
    fn tables(&self, s: &mut Source) -> (Gdt, Idt, Ldt) {
        let n = s.pick(self.gdt_sizes);
        let g = Gdt::new(self.gdt_va, n)
            .unwrap_or(Gdt::new(self.gdt_va, 16).unwrap_or_else(|_| unreachable!()));
        let i = Idt::new(self.idt_va, s.pick(&[1u32, 32, 256])).unwrap_or_else(|_| unreachable!());
        let l =
            Ldt::new(self.ldt_va, s.pick(&[1u32, 8, 16, 512])).unwrap_or_else(|_| unreachable!());
        (g, i, l)
    }
}

/// The shared case loop: up to 32 ops from the menu ([`op`]) on `ops`, with
/// the model's invariants and store_gdt's agreement with a successful
/// load_gdt checked after each.
///
/// # Safety
/// The arena's GDT (two pages), IDT, LDT and stack pages are memory of the
/// model under test that outlives `ops`, and in-process guest addresses
/// are this process's addresses of those bytes. (The kernel-side op
/// contracts, live segments and handlers, concern a real CPU, which this
/// is not.)
unsafe fn drive<O: DescriptorOps>(
    ops: &O,
    a: &Arena<'_>,
    s: &mut Source,
    st: &mut CaseStats,
) -> Result<(), String> {
    let mut t = a.tables(s);
    for step in 0..s.range(1, 32) {
        if s.chance(1, 8) {
            t = a.tables(s);
        }
        let k = s.below(16);
        st.calls += 1;
        // SAFETY: forwarded from the caller: every table handle comes from
        // `a.tables`.
        let r = unsafe { op(ops, a, s, &t, k) };
        st.outcome(a.outcome_base + k, i64::from(r.is_ok()));
        st.checks += 1;
        if let Err(e) = (a.invariants)() {
            return Err(format!(
                "step {step}: op {k} = {r:?}: invariant broken: {e}"
            ));
        }
        let gdt = &t.0;
        if k == 0 && r.is_ok() && ops.store_gdt() != Ok(gdt.pointer()) {
            return Err(format!(
                "step {step}: load_gdt({gdt:?}) succeeded but store_gdt = {:?}",
                ops.store_gdt()
            ));
        }
    }
    Ok(())
}

/// Op `k` of the menu with arbitrary indices, entries, gates, selectors
/// and stacks (the module documentation lists them); what it did, for the
/// failure message.
///
/// # Safety
/// As [`drive`]'s; `t` comes from `a.tables`.
unsafe fn op<O: DescriptorOps>(
    ops: &O,
    a: &Arena<'_>,
    s: &mut Source,
    t: &(Gdt, Idt, Ldt),
    k: u64,
) -> Result<String, pvops::PvError> {
    let (gdt, idt, ldt) = t;
    let idx = if s.chance(3, 4) {
        s.below(40) as u32
    } else {
        int(s) as u32
    };
    // SAFETY: forwarded from the caller.
    unsafe {
        match k {
            0 => ops.load_gdt(gdt).map(|()| {
                let seen = ops.store_gdt();
                format!("load_gdt; store_gdt = {seen:?}")
            }),
            1 | 2 => {
                let e = if s.chance(2, 3) {
                    GdtEntry::Single(Descriptor(descriptor(s)))
                } else {
                    GdtEntry::Double(SystemDescriptor {
                        low: descriptor(s),
                        high: if s.chance(1, 2) { 0 } else { int(s) },
                    })
                };
                ops.write_gdt_entry(gdt, idx, e)
                    .map(|()| format!("write_gdt_entry({idx}, {e:?})"))
            }
            3 => {
                let d = Descriptor(descriptor(s));
                ops.write_ldt_entry(ldt, idx, d)
                    .map(|()| format!("write_ldt_entry({idx}, {d:?})"))
            }
            4 => {
                let g = Gate64 {
                    low: descriptor(s),
                    high: if s.chance(1, 2) { 0 } else { int(s) },
                };
                ops.write_idt_entry(idt, idx as u8, g)
                    .map(|()| format!("write_idt_entry({idx}, {g:?})"))
            }
            5 => ops.load_idt(idt).map(|()| "load_idt".into()),
            6 => {
                let sel = Selector(selector(s) as u16);
                ops.load_tr(sel).map(|()| format!("load_tr({sel:?})"))
            }
            7 => {
                let which = s.chance(3, 4).then_some(ldt);
                ops.load_ldt(which).map(|()| format!("load_ldt({which:?})"))
            }
            8 => {
                let tls = [
                    Descriptor(descriptor(s)),
                    Descriptor(descriptor(s)),
                    Descriptor(descriptor(s)),
                ];
                ops.load_tls(&tls).map(|()| format!("load_tls({tls:?})"))
            }
            9 => ops.alloc_ldt(ldt).map(|()| "alloc_ldt".into()),
            10 => ops.free_ldt(ldt).map(|()| "free_ldt".into()),
            11 => {
                let sp = if s.chance(1, 2) {
                    a.other_va + s.below(PAGE - 16)
                } else {
                    int(s)
                };
                ops.load_kernel_stack(sp)
                    .map(|()| format!("load_kernel_stack({sp:#x})"))
            }
            12 => ops.enter_lazy_cpu().map(|()| "enter_lazy_cpu".into()),
            13 => ops.leave_lazy_cpu().map(|()| "leave_lazy_cpu".into()),
            14 => {
                let _ = (
                    ops.store_gdt(),
                    ops.store_idt(),
                    ops.store_tr(),
                    ops.store_ldt(),
                );
                ops.flush_lazy().map(|()| "store_*; flush_lazy".into())
            }
            _ => {
                // The guest writes its own tables natively.
                let at = s.pick(a.native_pages) + s.below(512) * 8;
                (a.store)(at, descriptor(s));
                Ok("native write".into())
            }
        }
    }
}

/// One case (see the module documentation).
pub(crate) fn xen_case(s: &mut Source, st: &mut CaseStats) -> Result<(), String> {
    let dom = XenDomain::pv64(32, 1);
    let gdt_va = dom.alloc_pages(2);
    let idt_va = dom.alloc_pages(1);
    let ldt_va = dom.alloc_pages(1);
    let other_va = dom.alloc_pages(1);
    for i in 0..s.range(1, 32) {
        dom.host_write_u64(gdt_va + 8 * i, descriptor(s));
    }
    let layout = if s.chance(3, 4) {
        GdtLayout::LINUX_X86_64
    } else {
        GdtLayout::LINUX_I386
    };
    let ops = pvops_xen::XenOps::new(dom.vcpu_handle(0), layout);
    let native_pages = [gdt_va, gdt_va + PAGE, idt_va, ldt_va];
    let arena = Arena {
        gdt_va,
        idt_va,
        ldt_va,
        other_va,
        gdt_sizes: &[1, 2, 16, 17, 256, 511, 512, 513, 1024],
        native_pages: &native_pages,
        store: &|va, v| {
            dom.host_write_u64(va, v);
        },
        invariants: &|| dom.check_invariants().map_err(|e| e.to_string()),
        outcome_base: 0x5000,
    };
    // SAFETY: the arena's pages were allocated in the domain's RAM above
    // (two for the GDT), which outlives `ops`; in-process pv64 guest
    // addresses are this process's addresses of those bytes.
    unsafe { drive(&ops, &arena, s, st) }
}

/// A native fallback that is never used (every relocation answer of
/// hv-sim's default ROM is CALL_REL) and has no memory: were it used, every
/// access would fault.
struct NoMemory;

impl crate::softcpu::LinearMemory for NoMemory {
    fn read_u64(&self, _: u64) -> Option<u64> {
        None
    }
    fn write_u64(&self, _: u64, _: u64) -> bool {
        false
    }
}

/// The VMI case's transport: hv-sim's ROM calls over a [`HostWindow`],
/// with the DTR operands of SetGDT/SetIDT/GetGDT/GetIDT (which the backend
/// keeps on its stack, outside the window) copied through a scratch DTR in
/// the window, as a hypervisor copies operands from guest memory. Nothing
/// else is relayed: a descriptor-derived base outside the window gets
/// -EFAULT.
struct Relay<'a> {
    hv: &'a VmiHypervisor<HostWindow>,
    /// Address of a 16-byte scratch area inside the window.
    scratch: u64,
}

impl pvops_vmi::ReadPhys for Relay<'_> {
    fn read_phys(&self, addr: u64, buf: &mut [u8]) -> bool {
        self.hv.read_phys(addr, buf)
    }
}

// SAFETY: `call` forwards to hv-sim's decoder, which touches only the
// window (`HostWindow::new`'s contract) and the scratch DTR in it; the only
// host pointers it follows are the DTR operands, which `VmiPlatform::call`'s
// contract makes valid for the 10 bytes read or written.
unsafe impl VmiPlatform for Relay<'_> {
    unsafe fn get_reloc(&self, jump_point: u64, nr: u32) -> (u64, u8) {
        self.hv.reloc_query(jump_point, nr)
    }

    unsafe fn call(&self, entry: u64, mut args: [u64; 4]) -> u64 {
        let dtr_call = |nr: u32| self.hv.relocation(nr).0 == entry;
        let (load, store) = (
            dtr_call(call::SET_GDT) || dtr_call(call::SET_IDT),
            dtr_call(call::GET_GDT) || dtr_call(call::GET_IDT),
        );
        let out = args[0];
        if load || store {
            let mut b = [0u8; 10];
            if load {
                // SAFETY: the caller's DTR operand, valid for 10 bytes
                // (VmiPlatform::call's contract).
                unsafe { core::ptr::copy_nonoverlapping(out as *const u8, b.as_mut_ptr(), 10) };
            }
            if !self.hv.memory().write(self.scratch, &b) {
                return (-14i64) as u64;
            }
            args[0] = self.scratch;
        }
        let r = self.hv.call_entry(entry, args);
        if store {
            let mut b = [0u8; 10];
            if self.hv.memory().read(self.scratch, &mut b) {
                // SAFETY: as above, for the write.
                unsafe { core::ptr::copy_nonoverlapping(b.as_ptr(), out as *mut u8, 10) };
            }
        }
        r
    }
}

/// Words of the VMI case's window: GDT page, IDT page, LDT page, a page
/// for stacks and the scratch DTR.
const WINDOW_WORDS: usize = 4 * 512;

/// One case of `vmi-backend`: pvops-vmi's ops (`VmiOps`) over an in-process
/// 64-bit VMI personality, through the ROM's stubs, with the tables in a
/// [`crate::vmi::HostWindow`] of four pages: a descriptor whose base points
/// anywhere else gets -EFAULT instead of being dereferenced. The ops menu is
/// `xen_case`'s (any index, entry, gate, selector, stack, lazy mode, the
/// guest's own stores in between). After every op: no panic,
/// `VmiHypervisor::check_invariants`, and a successful `load_gdt` is what
/// `store_gdt` reports.
pub(crate) fn vmi_case(s: &mut Source, st: &mut CaseStats) -> Result<(), String> {
    use core::sync::atomic::{AtomicU64, Ordering};

    use crate::softcpu::{CpuMode, SoftCpu};

    let window: Box<[AtomicU64]> = (0..WINDOW_WORDS).map(|_| AtomicU64::new(0)).collect();
    let base = window.as_ptr() as u64;
    let (gdt_va, idt_va, ldt_va, other_va) = (base, base + PAGE, base + 2 * PAGE, base + 3 * PAGE);
    let word = |va: u64| &window[((va - base) / 8) as usize];
    for i in 0..s.range(1, 32) {
        word(gdt_va + 8 * i).store(descriptor(s), Ordering::Relaxed);
    }
    // SAFETY: `window` is valid memory (atomics: interior mutability) for
    // the whole case and outlives `hv` and `ops`; every table handle below
    // lies inside it.
    let mem = unsafe { HostWindow::new(window.as_ptr() as *mut u8, WINDOW_WORDS * 8) };
    let hv = VmiHypervisor::new(GuestKind::Vmi64, mem);
    let relay = Relay {
        hv: &hv,
        scratch: other_va + PAGE - 16,
    };
    let rom = pvops_vmi::rom::probe(&relay).map_err(|e| format!("probe: {e}"))?;
    let layout = if s.chance(3, 4) {
        GdtLayout::LINUX_X86_64
    } else {
        GdtLayout::LINUX_I386
    };
    let native = pvops_native::NativeOps::with_cpu(SoftCpu::new(NoMemory, CpuMode::Long), layout);
    // SAFETY: the ROM is hv-sim's and passed the probe; its stubs are
    // decoded, not jumped to.
    let ops = unsafe { pvops_vmi::VmiOps::init(relay, rom, layout, native) }
        .map_err(|e| format!("init: {e}"))?;
    let native_pages = [gdt_va, idt_va, ldt_va];
    let arena = Arena {
        gdt_va,
        idt_va,
        ldt_va,
        other_va,
        gdt_sizes: &[1, 2, 16, 17, 256, 511, 512],
        native_pages: &native_pages,
        store: &|va, v| word(va).store(v, Ordering::Relaxed),
        invariants: &|| hv.check_invariants().map_err(|e| e.to_string()),
        outcome_base: 0x6000,
    };
    // SAFETY: the arena's pages are words of `window`, which outlives
    // `ops`; in-process guest addresses are this process's addresses of
    // those words.
    unsafe { drive(&ops, &arena, s, st) }
}
