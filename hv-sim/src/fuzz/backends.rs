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
    let tables = |s: &mut Source| -> (Gdt, Idt, Ldt) {
        let n = s.pick(&[1u32, 2, 16, 17, 256, 511, 512, 513, 1024]);
        let g =
            Gdt::new(gdt_va, n).unwrap_or(Gdt::new(gdt_va, 16).unwrap_or_else(|_| unreachable!()));
        let ni = s.pick(&[1u32, 32, 256]);
        let i = Idt::new(idt_va, ni).unwrap_or_else(|_| unreachable!());
        let nl = s.pick(&[1u32, 8, 16, 512]);
        let l = Ldt::new(ldt_va, nl).unwrap_or_else(|_| unreachable!());
        (g, i, l)
    };
    let (mut gdt, mut idt, mut ldt) = tables(s);
    for step in 0..s.range(1, 32) {
        if s.chance(1, 8) {
            (gdt, idt, ldt) = tables(s);
        }
        let k = s.below(16);
        let idx = if s.chance(3, 4) {
            s.below(40) as u32
        } else {
            int(s) as u32
        };
        st.calls += 1;
        // SAFETY: every table handle describes pages of the domain's RAM
        // (Gdt/Idt/Ldt::new above, at most the pages allocated for them),
        // which outlives `ops`; in-process pv64 guest addresses are this
        // process's addresses of those bytes. The kernel-side contracts
        // (live segments, handlers) concern a real CPU, which this is not.
        let r: Result<String, pvops::PvError> = unsafe {
            match k {
                0 => ops.load_gdt(&gdt).map(|()| {
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
                    ops.write_gdt_entry(&gdt, idx, e)
                        .map(|()| format!("write_gdt_entry({idx}, {e:?})"))
                }
                3 => {
                    let d = Descriptor(descriptor(s));
                    ops.write_ldt_entry(&ldt, idx, d)
                        .map(|()| format!("write_ldt_entry({idx}, {d:?})"))
                }
                4 => {
                    let g = Gate64 {
                        low: descriptor(s),
                        high: if s.chance(1, 2) { 0 } else { int(s) },
                    };
                    ops.write_idt_entry(&idt, idx as u8, g)
                        .map(|()| format!("write_idt_entry({idx}, {g:?})"))
                }
                5 => ops.load_idt(&idt).map(|()| "load_idt".into()),
                6 => {
                    let sel = Selector(selector(s) as u16);
                    ops.load_tr(sel).map(|()| format!("load_tr({sel:?})"))
                }
                7 => {
                    let which = s.chance(3, 4).then_some(&ldt);
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
                9 => ops.alloc_ldt(&ldt).map(|()| "alloc_ldt".into()),
                10 => ops.free_ldt(&ldt).map(|()| "free_ldt".into()),
                11 => {
                    let sp = if s.chance(1, 2) {
                        other_va + s.below(PAGE - 16)
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
                    let base = s.pick(&[gdt_va, gdt_va + PAGE, idt_va, ldt_va]);
                    dom.host_write_u64(base + s.below(512) * 8, descriptor(s));
                    Ok("native write".into())
                }
            }
        };
        st.outcome(0x5000 + k, i64::from(r.is_ok()));
        st.checks += 1;
        if let Err(e) = dom.check_invariants() {
            return Err(format!(
                "step {step}: op {k} = {r:?}: invariant broken: {e}"
            ));
        }
        if k == 0 && r.is_ok() && ops.store_gdt() != Ok(gdt.pointer()) {
            return Err(format!(
                "step {step}: load_gdt({gdt:?}) succeeded but store_gdt = {:?}",
                ops.store_gdt()
            ));
        }
    }
    Ok(())
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
    let tables = |s: &mut Source| -> (Gdt, Idt, Ldt) {
        let n = s.pick(&[1u32, 2, 16, 17, 256, 511, 512]);
        let g =
            Gdt::new(gdt_va, n).unwrap_or(Gdt::new(gdt_va, 16).unwrap_or_else(|_| unreachable!()));
        let i = Idt::new(idt_va, s.pick(&[1u32, 32, 256])).unwrap_or_else(|_| unreachable!());
        let l = Ldt::new(ldt_va, s.pick(&[1u32, 8, 16, 512])).unwrap_or_else(|_| unreachable!());
        (g, i, l)
    };
    let (mut gdt, mut idt, mut ldt) = tables(s);
    for step in 0..s.range(1, 32) {
        if s.chance(1, 8) {
            (gdt, idt, ldt) = tables(s);
        }
        let k = s.below(16);
        let idx = if s.chance(3, 4) {
            s.below(40) as u32
        } else {
            int(s) as u32
        };
        st.calls += 1;
        // SAFETY: every table handle describes words of `window`, which
        // outlives `ops`; in-process guest addresses are this process's
        // addresses of those words. The kernel-side contracts (live
        // segments, handlers) concern a real CPU, which this is not.
        let r: Result<(), pvops::PvError> = unsafe {
            match k {
                0 => ops.load_gdt(&gdt),
                1 | 2 => {
                    let e = if s.chance(2, 3) {
                        GdtEntry::Single(Descriptor(descriptor(s)))
                    } else {
                        GdtEntry::Double(SystemDescriptor {
                            low: descriptor(s),
                            high: if s.chance(1, 2) { 0 } else { int(s) },
                        })
                    };
                    ops.write_gdt_entry(&gdt, idx, e)
                }
                3 => ops.write_ldt_entry(&ldt, idx, Descriptor(descriptor(s))),
                4 => {
                    let g = Gate64 {
                        low: descriptor(s),
                        high: if s.chance(1, 2) { 0 } else { int(s) },
                    };
                    ops.write_idt_entry(&idt, idx as u8, g)
                }
                5 => ops.load_idt(&idt),
                6 => ops.load_tr(Selector(selector(s) as u16)),
                7 => ops.load_ldt(s.chance(3, 4).then_some(&ldt)),
                8 => ops.load_tls(&[
                    Descriptor(descriptor(s)),
                    Descriptor(descriptor(s)),
                    Descriptor(descriptor(s)),
                ]),
                9 => ops.alloc_ldt(&ldt),
                10 => ops.free_ldt(&ldt),
                11 => ops.load_kernel_stack(if s.chance(1, 2) {
                    other_va + s.below(PAGE - 16)
                } else {
                    int(s)
                }),
                12 => ops.enter_lazy_cpu(),
                13 => ops.leave_lazy_cpu(),
                14 => {
                    let _ = (
                        ops.store_gdt(),
                        ops.store_idt(),
                        ops.store_tr(),
                        ops.store_ldt(),
                    );
                    ops.flush_lazy()
                }
                _ => {
                    // The guest writes its own tables natively.
                    let at = s.pick(&[gdt_va, idt_va, ldt_va]) + s.below(512) * 8;
                    word(at).store(descriptor(s), Ordering::Relaxed);
                    Ok(())
                }
            }
        };
        st.outcome(0x6000 + k, i64::from(r.is_ok()));
        st.checks += 1;
        if let Err(e) = hv.check_invariants() {
            return Err(format!(
                "step {step}: op {k} = {r:?}: invariant broken: {e}"
            ));
        }
        if k == 0 && r.is_ok() && ops.store_gdt() != Ok(gdt.pointer()) {
            return Err(format!(
                "step {step}: load_gdt({gdt:?}) succeeded but store_gdt = {:?}",
                ops.store_gdt()
            ));
        }
    }
    Ok(())
}
