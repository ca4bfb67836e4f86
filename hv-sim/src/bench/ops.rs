//! VM exits per kernel operation, for each personality.
//!
//! The operations are run in process through each backend against hv-sim's
//! own hypervisor model, and the exits are counted where the guest would
//! leave the vCPU:
//!
//! * **native**: none — under KVM the kernel's `lgdt`/`lidt`/`ltr`/`lldt`
//!   run without exiting to the VMM (the native boot counts only its report
//!   lines and its exit write);
//! * **Xen-style**: one exit per hypercall the backend issues (the
//!   hypercall page is one `out` per call; a multicall is one call),
//!   counted by a wrapper around hv-sim's [`crate::xen::XenVcpu`]
//!   platform; TLS updates are the `update_descriptor` calls in the trace,
//!   multicall entries included;
//! * **VMI-style**: one exit per ROM call (each stub is one `out`),
//!   counted by a wrapper around [`crate::vmi::VmiHypervisor`]; TLS updates
//!   are its WriteGDTEntry calls;
//! * **trap-and-emulate**: one exit per descriptor-table instruction the
//!   native backend executes (each raises #GP in ring 3, or #GP under UMIP
//!   for the stores), counted by hv-sim's [`SoftCpu`] instruction model.
//!   Its stores into the live GDT (TLS) do not exit in hv-sim, which
//!   rebuilds the real tables at the next trap; a VMM that write-protected
//!   the table pages would add one exit per store.
//!
//! The kernel the KVM boots run only does 64 lazy context switches with
//! fresh TLS each time, in the middle of its other checks, so the boots can
//! confirm the totals (see [`super::kvm`]) but not give each operation on
//! its own; the same backend code is counted here instead.

use std::sync::atomic::{AtomicU64, Ordering};

use pvops::{
    Descriptor, DescriptorOps, DescriptorStorage, Gate64, Gdt, GdtLayout, Idt, IdtGate, IdtStorage,
    Ldt, Ring, Selector, SystemDescriptor, TableStorage, Tss64, TssStorage, presets,
};
use pvops_native::NativeOps;
use pvops_vmi::{ReadPhys, VmiPlatform};
use pvops_xen::XenPlatform;

use super::{Goal, Section};
use crate::softcpu::{CpuMode, HostMemory, SoftCpu};
use crate::vmi::{GuestKind, HostGuestMemory, VmiEvent, VmiHypervisor};
use crate::xen::{TraceEvent, XenDomain, XenVcpu, nr};

const LAYOUT: GdtLayout = GdtLayout::LINUX_X86_64;
/// VMI's WriteGDTEntry call number.
const VMI_WRITE_GDT_ENTRY: u32 = pvops_vmi::call::WRITE_GDT_ENTRY;

/// hv-sim's Xen vCPU with a count of the hypercalls issued through it.
struct CountingXen<'a> {
    inner: XenVcpu<'a>,
    calls: AtomicU64,
}

// SAFETY: forwards every method to `XenVcpu`, which keeps the contract;
// the count touches no guest memory.
unsafe impl XenPlatform for CountingXen<'_> {
    unsafe fn hypercall(&self, nr: u32, args: [u64; 5]) -> i64 {
        self.calls.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller keeps the forwarded contract.
        unsafe { self.inner.hypercall(nr, args) }
    }
    fn virt_to_mfn(&self, va: u64) -> Option<u64> {
        self.inner.virt_to_mfn(va)
    }
    fn scratch(&self) -> (u64, usize) {
        self.inner.scratch()
    }
}

/// hv-sim's VMI personality with a count of the ROM calls made to it.
struct CountingVmi {
    inner: &'static VmiHypervisor<HostGuestMemory>,
    calls: AtomicU64,
}

impl ReadPhys for CountingVmi {
    fn read_phys(&self, addr: u64, buf: &mut [u8]) -> bool {
        self.inner.read_phys(addr, buf)
    }
}

// SAFETY: forwards to `VmiHypervisor`, which keeps the contract; the count
// touches no guest memory.
unsafe impl VmiPlatform for CountingVmi {
    unsafe fn get_reloc(&self, jump_point: u64, call: u32) -> (u64, u8) {
        // SAFETY: forwarded contract.
        unsafe { self.inner.get_reloc(jump_point, call) }
    }
    unsafe fn call(&self, entry: u64, args: [u64; 4]) -> u64 {
        self.calls.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded contract.
        unsafe { self.inner.call(entry, args) }
    }
}

/// The tables one backend runs on.
struct Tables {
    gdt: Gdt,
    idt: Idt,
    ldt: Ldt,
    /// A TSS descriptor to install at the layout's TSS slot and load with
    /// `load_tr` (`None`: the backend has no TR of its own, as Xen).
    tss: Option<SystemDescriptor>,
    sp0: u64,
}

/// The exits of each operation for one backend.
#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    gdt_first: u64,
    gdt_again: u64,
    idt: u64,
    switch_plain: u64,
    switch_lazy: u64,
    switch_plain_1000: u64,
    switch_lazy_1000: u64,
    /// Exits and TLS updates of a lazy context switch whose TLS is what the
    /// previous one loaded.
    same_tls_exits: u64,
    same_tls_updates: u64,
}

fn gate(v: u64) -> IdtGate {
    Gate64::interrupt(Selector(0x10), 0xffff_ffff_8100_0000 + v * 16, Ring::Ring0)
}

fn tls(i: u64) -> [Descriptor; 3] {
    [
        Descriptor::data_segment((i as u32) << 12, 0xf_ffff, Ring::Ring3).unwrap_or_default(),
        presets::USER_DATA,
        Descriptor::NULL,
    ]
}

/// Run the operations through `ops`; `exits()` and `tls_updates()` are
/// running totals.
fn count_ops<O: DescriptorOps>(
    ops: &O,
    t: &Tables,
    exits: &dyn Fn() -> u64,
    tls_updates: &dyn Fn() -> u64,
) -> Result<Counts, String> {
    let e = |what: &'static str| move |err: pvops::PvError| format!("{what}: {err}");
    let mut c = Counts::default();
    let delta = |f: &mut dyn FnMut() -> Result<(), String>| -> Result<u64, String> {
        let before = exits();
        f()?;
        Ok(exits() - before)
    };
    // The tables are leaked host memory or the domain's RAM, alive for the
    // whole process: every op's contract below holds.
    let load_gdt = || {
        // SAFETY: as above.
        unsafe { ops.load_gdt(&t.gdt) }.map_err(e("load_gdt"))
    };
    c.gdt_first = delta(&mut || load_gdt())?;
    c.gdt_again = delta(&mut || load_gdt())?;
    if let Some(tss) = t.tss {
        // SAFETY: as above.
        unsafe {
            ops.write_gdt_entry(&t.gdt, u32::from(LAYOUT.tss), tss.into())
                .map_err(e("write_gdt_entry(TSS)"))?;
            ops.load_tr(Selector::gdt(LAYOUT.tss, Ring::Ring0))
                .map_err(e("load_tr"))?;
        }
    }
    // SAFETY: as above.
    unsafe { ops.alloc_ldt(&t.ldt) }.map_err(e("alloc_ldt"))?;
    for v in 0..256u64 {
        // SAFETY: as above.
        unsafe { ops.write_idt_entry(&t.idt, v as u8, gate(v)) }.map_err(e("write_idt_entry"))?;
    }
    c.idt = delta(&mut || {
        // SAFETY: as above.
        unsafe { ops.load_idt(&t.idt) }.map_err(e("load_idt"))
    })?;
    let mut i = 0u64;
    // A switch to task i: its TLS, its kernel stack, and an LDT for even i
    // (a single switch below is always one that loads the LDT).
    let mut switch = |lazy: bool, same: bool| -> Result<(), String> {
        if !same {
            i += 1;
        }
        if lazy {
            ops.enter_lazy_cpu().map_err(e("enter_lazy_cpu"))?;
        }
        // SAFETY: as above.
        unsafe {
            ops.load_tls(&tls(i)).map_err(e("load_tls"))?;
            ops.load_kernel_stack(t.sp0 - (i % 64) * 0x1000)
                .map_err(e("load_kernel_stack"))?;
            ops.load_ldt(i.is_multiple_of(2).then_some(&t.ldt))
                .map_err(e("load_ldt"))?;
        }
        if lazy {
            ops.leave_lazy_cpu().map_err(e("leave_lazy_cpu"))?;
        }
        Ok(())
    };
    switch(false, false)?;
    c.switch_plain = delta(&mut || switch(false, false))?;
    switch(false, false)?;
    c.switch_lazy = delta(&mut || switch(true, false))?;
    c.switch_plain_1000 = delta(&mut || (0..1000).try_for_each(|_| switch(false, false)))?;
    c.switch_lazy_1000 = delta(&mut || (0..1000).try_for_each(|_| switch(true, false)))?;
    switch(true, false)?;
    let before = tls_updates();
    c.same_tls_exits = delta(&mut || switch(true, true))?;
    c.same_tls_updates = tls_updates() - before;
    Ok(c)
}

/// Is GDT slot `i` one of the TLS slots?
fn is_tls_slot(i: u64) -> bool {
    let first = u64::from(LAYOUT.tls_first);
    (first..first + 3).contains(&i)
}

fn leak<T>(x: T) -> &'static T {
    Box::leak(Box::new(x))
}

/// Tables in leaked host memory (native, trap-and-emulate, VMI).
fn host_tables() -> Result<Tables, String> {
    let gdt: &'static DescriptorStorage<16> =
        leak(DescriptorStorage::new(presets::LINUX_X86_64_GDT));
    let idt: &'static IdtStorage<256> = leak(IdtStorage::new([IdtGate::MISSING; 256]));
    let ldt: &'static DescriptorStorage<8> = leak(DescriptorStorage::new([Descriptor::NULL; 8]));
    let tss: &'static TssStorage<Tss64> = leak(TssStorage::new(Tss64::new()));
    let sp0: &'static TableStorage<u64, 512> = leak(TableStorage::new([0u64; 512]));
    Ok(Tables {
        gdt: gdt.gdt().map_err(|e| e.to_string())?,
        idt: idt.idt().map_err(|e| e.to_string())?,
        ldt: ldt.ldt().map_err(|e| e.to_string())?,
        tss: Some(tss.descriptor().map_err(|e| e.to_string())?),
        sp0: sp0.base() + 4096,
    })
}

/// The native backend on hv-sim's CPU model: the trap-and-emulate exits.
fn trap_and_emulate() -> Result<Counts, String> {
    let t = host_tables()?;
    // SAFETY: the CPU model is only handed the leaked tables above.
    let mem = unsafe { HostMemory::new() };
    let ops = NativeOps::with_cpu(SoftCpu::new(mem, CpuMode::Long), LAYOUT);
    let cpu = ops.cpu();
    let insns = || cpu.log().len() as u64 + cpu.log_dropped();
    count_ops(&ops, &t, &insns, &|| 0)
}

/// The Xen-style backend against hv-sim's Xen domain.
fn xen() -> Result<Counts, String> {
    let dom = XenDomain::pv64(64, 1);
    let (gdt_va, idt_va, ldt_va) = (dom.alloc_pages(1), dom.alloc_pages(1), dom.alloc_pages(1));
    for (i, d) in presets::LINUX_X86_64_GDT.iter().enumerate() {
        if !dom.host_write_u64(gdt_va + 8 * i as u64, d.0) {
            return Err("writing the GDT".into());
        }
    }
    let t = Tables {
        gdt: Gdt::new(gdt_va, 16).map_err(|e| e.to_string())?,
        idt: Idt::new(idt_va, 256).map_err(|e| e.to_string())?,
        ldt: Ldt::new(ldt_va, 8).map_err(|e| e.to_string())?,
        tss: None,
        sp0: 0xffff_c900_0010_0000,
    };
    let ops = pvops_xen::XenOps::new(
        CountingXen {
            inner: dom.vcpu_handle(0),
            calls: AtomicU64::new(0),
        },
        LAYOUT,
    );
    let calls = || ops.platform().calls.load(Ordering::Relaxed);
    // The trace is bounded: count the updates since the last look.
    let seen = AtomicU64::new(0);
    let updates = || {
        let n = dom
            .trace()
            .calls()
            .filter(|e| {
                matches!(e, TraceEvent::Call { nr: n, args, .. }
                    if *n == nr::UPDATE_DESCRIPTOR && is_tls_slot((args[0] & 0xfff) / 8))
            })
            .count() as u64;
        dom.clear_trace();
        seen.fetch_add(n, Ordering::Relaxed) + n
    };
    dom.clear_trace();
    count_ops(&ops, &t, &calls, &updates)
}

/// The VMI-style backend against hv-sim's VMI personality.
fn vmi() -> Result<Counts, String> {
    // SAFETY: the backend only passes pointers to the leaked tables and to
    // DTR operands on its own stack.
    let hv = leak(VmiHypervisor::new(GuestKind::Vmi64, unsafe {
        HostGuestMemory::new()
    }));
    let plat: &'static CountingVmi = leak(CountingVmi {
        inner: hv,
        calls: AtomicU64::new(0),
    });
    let rom = pvops_vmi::rom::probe(plat).map_err(|e| format!("ROM probe: {e:?}"))?;
    // SAFETY: the inner CPU model only sees the leaked tables.
    let native = NativeOps::with_cpu(
        SoftCpu::new(unsafe { HostMemory::new() }, CpuMode::Long),
        LAYOUT,
    );
    // SAFETY: the ROM is hv-sim's and passed the probe.
    let ops = unsafe { pvops_vmi::VmiOps::init(plat, rom, LAYOUT, native) }
        .map_err(|e| format!("VMI_Init: {e:?}"))?;
    let t = host_tables()?;
    let calls = || plat.calls.load(Ordering::Relaxed);
    // WriteGDTEntry calls, from the trace's sequence numbers (bounded).
    let last_seq = AtomicU64::new(0);
    let total = AtomicU64::new(0);
    let updates = || {
        let from = last_seq.load(Ordering::Relaxed);
        let tr = hv.trace();
        let mut n = 0;
        for ev in &tr.events {
            if let VmiEvent::Call { seq, nr, args, .. } = ev
                && *seq > from
            {
                last_seq.fetch_max(*seq, Ordering::Relaxed);
                n += u64::from(*nr == VMI_WRITE_GDT_ENTRY && is_tls_slot(args[1]));
            }
        }
        total.fetch_add(n, Ordering::Relaxed) + n
    };
    updates();
    count_ops(&ops, &t, &calls, &updates)
}

/// The section and its goals.
pub fn exits_per_op() -> (Section, Vec<Goal>) {
    let mut s = Section::with_columns(
        "VM exits per kernel operation (counted where each personality exits)",
        &[
            "operation",
            "native",
            "Xen-style",
            "VMI-style",
            "trap-and-emulate",
            "floor: one exit per op",
        ],
    );
    let x = xen();
    let v = vmi();
    let t = trap_and_emulate();
    let cell = |r: &Result<Counts, String>, f: fn(&Counts) -> u64| match r {
        Ok(c) => f(c).to_string(),
        Err(_) => "error".into(),
    };
    type Op = (&'static str, fn(&Counts) -> u64, u64);
    let ops: [Op; 8] = [
        ("GDT load (first)", |c| c.gdt_first, 1),
        ("GDT load (again, same table)", |c| c.gdt_again, 1),
        ("IDT load (256 gates written first)", |c| c.idt, 1),
        ("1 context switch, not lazy", |c| c.switch_plain, 1),
        ("1 context switch, lazy", |c| c.switch_lazy, 1),
        (
            "1,000 context switches, not lazy",
            |c| c.switch_plain_1000,
            1000,
        ),
        ("1,000 context switches, lazy", |c| c.switch_lazy_1000, 1000),
        (
            "1 lazy context switch, TLS unchanged",
            |c| c.same_tls_exits,
            1,
        ),
    ];
    for (name, f, floor) in ops {
        s.row([
            name.to_string(),
            "0".into(),
            cell(&x, f),
            cell(&v, f),
            cell(&t, f),
            floor.to_string(),
        ]);
    }
    s.row([
        "TLS descriptor updates sent, TLS unchanged".to_string(),
        "0 exits (3 stores)".into(),
        cell(&x, |c| c.same_tls_updates),
        cell(&v, |c| c.same_tls_updates),
        "0 exits (3 stores)".into(),
        "0".into(),
    ]);
    s.note("a context switch is load_tls (a new TLS) + load_kernel_stack + load_ldt, as the example kernel's: a single switch loads an LDT, the 1,000 alternate an LDT and none; lazy: inside enter_lazy_cpu/leave_lazy_cpu");
    s.note("native: descriptor-table instructions do not exit to the VMM under KVM; trap-and-emulate: one exit per lgdt/lidt/ltr/lldt/sgdt/sidt/str/sldt the native backend executes (hv-sim's SoftCpu counts them), stores into the live GDT not trapped (hv-sim rebuilds its real tables at the next trap)");
    s.note("Xen-style and VMI-style: one exit per hypercall / ROM call (a multicall is one); counted in process through the same backend code the kernel runs, which the KVM boots below confirm in total");
    for (name, r) in [
        ("Xen-style", &x),
        ("VMI-style", &v),
        ("trap-and-emulate", &t),
    ] {
        if let Err(e) = r {
            s.note(format!("{name}: {e}"));
        }
    }
    let goals = goals(&x, &v, &t);
    (s, goals)
}

fn goals(
    x: &Result<Counts, String>,
    v: &Result<Counts, String>,
    t: &Result<Counts, String>,
) -> Vec<Goal> {
    let both = |f: fn(&Counts) -> u64| match (x, v) {
        (Ok(x), Ok(v)) => Some((f(x), f(v))),
        _ => None,
    };
    let mut g = Vec::new();
    let what = "1 exit per batched (lazy) context switch";
    g.push(match both(|c| c.switch_lazy_1000) {
        Some((a, b)) => Goal::new(
            what,
            Some(a <= 1000 && b <= 1000),
            format!(
                "per lazy switch: Xen-style {:.2}, VMI-style {:.2}{}",
                a as f64 / 1000.0,
                b as f64 / 1000.0,
                if b > 1000 {
                    " (VMI: each call of the batch is still a ROM call, an exit, and SetLazyMode 2/0 add two; the batch only defers the effects)"
                } else {
                    ""
                }
            ),
        ),
        None => Goal::new(what, None, "a backend's count failed"),
    });
    let what = "0 TLS updates when nothing changed";
    g.push(match both(|c| c.same_tls_updates) {
        Some((a, b)) => Goal::new(
            what,
            Some(a == 0 && b == 0),
            format!("Xen-style {a}, VMI-style {b} descriptor updates"),
        ),
        None => Goal::new(what, None, "a backend's count failed"),
    });
    let what = "1 exit to load a whole IDT (256 gates)";
    g.push(match (both(|c| c.idt), t) {
        (Some((a, b)), Ok(tc)) => Goal::new(
            what,
            Some(a <= 1 && b <= 1 && tc.idt <= 1),
            format!(
                "Xen-style {a}, VMI-style {b}, trap-and-emulate {}{}",
                tc.idt,
                if a > 1 {
                    " (Xen-style: set_trap_table's list goes through the backend's one 4 KiB scratch page, 255 entries and the terminator, so 256 gates take two calls)"
                } else {
                    ""
                }
            ),
        ),
        _ => Goal::new(what, None, "a backend's count failed"),
    });
    g
}
