//! Issue 9, deliverable 2: one table of bad inputs, run against every
//! backend — native over hv-sim's SoftCpu, Xen over hv-sim's pv64 domain
//! (`XenOps` over `XenDomain::vcpu_handle`), VMI over hv-sim's VMI
//! personality — expecting the same error kind everywhere, and that no
//! case reaches the CPU or the hypervisor: SoftCpu's instruction log, the
//! Xen trace and the VMI trace have no new entry for it.
//!
//! The error kind is the validation layer's rule name for
//! [`PvError::Invalid`], else the variant. Refusals only a hypervisor can
//! judge are not in the table (see `only_the_hypervisor_judges` and
//! `ist_is_per_backend` at the end).

#![cfg(target_arch = "x86_64")]

use hv_sim::softcpu::{CpuMode, HostMemory, SoftCpu};
use hv_sim::vmi::{GuestKind, HostGuestMemory, VmiHypervisor};
use hv_sim::xen::XenDomain;
use pvops::*;
use pvops_native::NativeOps;
use pvops_vmi::VmiOps;
use pvops_xen::XenOps;

const LAYOUT: GdtLayout = GdtLayout::LINUX_X86_64;
const H: u64 = 0xffff_ffff_8100_0000;
const NON_CANONICAL: u64 = 0x0000_8000_0000_0000;

/// One backend, booted: GDT loaded (Linux-like, 16 entries), a TSS
/// descriptor at 8 written through the op, IDT (32 gates) and LDT (8
/// entries) allocated but not loaded.
struct Env {
    name: &'static str,
    ops: &'static dyn DescriptorOps,
    /// Write table memory directly (scenario set-up, not an op).
    poke: Box<dyn Fn(u64, u64)>,
    /// Instructions executed plus hypervisor calls made so far.
    reached: Box<dyn Fn() -> u64>,
    gdt: Gdt,
    idt: Idt,
    ldt: Ldt,
}

/// A page-aligned block of 8 pages for the host-memory backends.
fn host_pages() -> impl FnMut() -> u64 {
    let block: &'static TableStorage<u64, 4096> =
        Box::leak(Box::new(TableStorage::new([0u64; 4096])));
    let mut next = 0u64;
    move || {
        let a = block.base() + next * 4096;
        next += 1;
        assert!(next <= 8);
        a
    }
}

fn host_poke(addr: u64, v: u64) {
    // SAFETY: only called on addresses of the leaked blocks above.
    unsafe { pvops::table::store_u64(addr, v) }
}

/// Lay out the tables in pages from `alloc` and boot `ops` on them.
fn boot(
    name: &'static str,
    ops: &'static dyn DescriptorOps,
    mut alloc: impl FnMut() -> u64,
    poke: Box<dyn Fn(u64, u64)>,
    reached: Box<dyn Fn() -> u64>,
) -> Env {
    let gdt = Gdt::new(alloc(), 16).unwrap();
    let idt = Idt::new(alloc(), 32).unwrap();
    let ldt = Ldt::new(alloc(), 8).unwrap();
    let tss = alloc();
    let init = presets::LINUX_X86_64_GDT;
    for (i, d) in init.iter().enumerate() {
        poke(gdt.base() + 8 * i as u64, d.0);
    }
    // SAFETY: tables in memory leaked for the test's life.
    unsafe {
        ops.load_gdt(&gdt).unwrap();
        ops.write_gdt_entry(
            &gdt,
            8,
            SystemDescriptor::tss(tss, Tss64::LIMIT).unwrap().into(),
        )
        .unwrap();
    }
    Env {
        name,
        ops,
        poke,
        reached,
        gdt,
        idt,
        ldt,
    }
}

fn native() -> Env {
    // SAFETY: the CPU model is only given addresses of leaked tables.
    let cpu = SoftCpu::new(unsafe { HostMemory::new() }, CpuMode::Long);
    let ops: &'static NativeOps<SoftCpu> = Box::leak(Box::new(NativeOps::with_cpu(cpu, LAYOUT)));
    let count = move || {
        let c = ops.cpu();
        c.log().len() as u64 + c.log_dropped()
    };
    boot(
        "native",
        ops,
        host_pages(),
        Box::new(host_poke),
        Box::new(count),
    )
}

fn xen() -> Env {
    let dom: &'static XenDomain = Box::leak(Box::new(XenDomain::pv64(64, 1)));
    let ops: &'static XenOps<hv_sim::xen::XenVcpu<'static>> =
        Box::leak(Box::new(XenOps::new(dom.vcpu_handle(0), LAYOUT)));
    let count = move || {
        let t = dom.trace();
        t.calls().count() as u64 + t.dropped
    };
    boot(
        "xen",
        ops,
        move || dom.alloc_pages(1),
        Box::new(move |a, v| assert!(dom.host_write_u64(a, v))),
        Box::new(count),
    )
}

type Vmi = VmiOps<&'static VmiHypervisor<HostGuestMemory>, SoftCpu>;

fn vmi() -> Env {
    // SAFETY: the guest (this test, through the backend) only passes
    // pointers to its leaked tables and to operands on its stack.
    let mem = unsafe { HostGuestMemory::new() };
    let hv: &'static VmiHypervisor<HostGuestMemory> =
        Box::leak(Box::new(VmiHypervisor::new(GuestKind::Vmi64, mem)));
    // SAFETY: the CPU model is only given addresses of leaked tables.
    let cpu = SoftCpu::new(unsafe { HostMemory::new() }, CpuMode::Long);
    let rom = pvops_vmi::rom::probe(hv).unwrap();
    // SAFETY: hv-sim's ROM, which passed the probe.
    let ops: &'static Vmi = Box::leak(Box::new(
        unsafe { VmiOps::init(hv, rom, LAYOUT, NativeOps::with_cpu(cpu, LAYOUT)) }.unwrap(),
    ));
    let count = move || {
        let t = hv.trace();
        let c = ops.native().cpu();
        t.events.len() as u64 + t.dropped + c.log().len() as u64 + c.log_dropped()
    };
    boot(
        "vmi",
        ops,
        host_pages(),
        Box::new(host_poke),
        Box::new(count),
    )
}

/// The error's kind: the rule for `Invalid`, else the variant.
fn kind(e: &PvError) -> String {
    match e {
        PvError::Invalid { rule, .. } => rule.name().to_string(),
        PvError::BadSelector { .. } => "bad-selector".into(),
        PvError::WrongDescriptorType { .. } => "wrong-descriptor-type".into(),
        PvError::IndexOutOfRange { .. } => "index-out-of-range".into(),
        PvError::DoubleSlotPastEnd { .. } => "double-slot-past-end".into(),
        PvError::NoTableLoaded { .. } => "no-table-loaded".into(),
        other => format!("{other:?}"),
    }
}

fn gate(sel: u16) -> Gate64 {
    Gate64::interrupt(Selector(sel), H, Ring::Ring0)
}

fn call_gate(sel: u16, offset: u64) -> GdtEntry {
    let g = Gate64::call(Selector(sel), offset, Ring::Ring0);
    GdtEntry::Double(SystemDescriptor {
        low: g.low,
        high: g.high,
    })
}

fn tss_at(base: u64, limit: u32) -> SystemDescriptor {
    SystemDescriptor::tss(base, limit).unwrap()
}

impl Env {
    fn poke_gate(&self, v: u8, g: Gate64) {
        let a = self.idt.slot_addr(v).unwrap();
        (self.poke)(a, g.low);
        (self.poke)(a + 8, g.high);
    }
    fn poke_gdt(&self, i: u32, d: u64) {
        (self.poke)(self.gdt.slot_addr(i).unwrap(), d);
    }
    // The ops below run on tables leaked for the test's life (the unsafe
    // ops' contract); the bad input is refused before anything is done.
    fn idt_entry(&self, v: u8, g: Gate64) -> Result<()> {
        // SAFETY: see above.
        unsafe { self.ops.write_idt_entry(&self.idt, v, g) }
    }
    fn load_idt(&self) -> Result<()> {
        // SAFETY: see above.
        unsafe { self.ops.load_idt(&self.idt) }
    }
    fn gdt_entry(&self, i: u32, e: GdtEntry) -> Result<()> {
        // SAFETY: see above.
        unsafe { self.ops.write_gdt_entry(&self.gdt, i, e) }
    }
    fn ldt_entry(&self, i: u32, d: Descriptor) -> Result<()> {
        // SAFETY: see above.
        unsafe { self.ops.write_ldt_entry(&self.ldt, i, d) }
    }
    fn load_tr(&self, sel: u16) -> Result<()> {
        // SAFETY: see above.
        unsafe { self.ops.load_tr(Selector(sel)) }
    }
    fn load_tls(&self, tls: [Descriptor; 3]) -> Result<()> {
        // SAFETY: see above.
        unsafe { self.ops.load_tls(&tls) }
    }
    fn stack(&self, sp0: u64) -> Result<()> {
        // SAFETY: see above.
        unsafe { self.ops.load_kernel_stack(sp0) }
    }
}

type Case = (&'static str, fn(&Env) -> Result<()>, &'static str);

/// The table: (scenario, what it does, the expected error kind).
const CASES: &[Case] = &[
    // ---- IDT gates (write_idt_entry) ----
    (
        "gate selector names a data segment",
        |e| e.idt_entry(14, gate(0x18)),
        "not-code-segment",
    ),
    (
        "gate selector is an LDT selector",
        |e| e.idt_entry(14, gate(0x0c)),
        "gate-selector-in-ldt",
    ),
    (
        "gate selector is null",
        |e| e.idt_entry(14, gate(0)),
        "null-selector",
    ),
    (
        "gate selector past the GDT limit",
        |e| e.idt_entry(14, gate(100 << 3)),
        "selector-past-limit",
    ),
    (
        "gate selector names 32-bit code",
        |e| e.idt_entry(14, gate(0x08)),
        "wrong-code-width",
    ),
    (
        "gate selector names the TSS",
        |e| e.idt_entry(14, gate(0x40)),
        "not-code-segment",
    ),
    (
        "gate selector names a not-present code segment",
        |e| {
            e.poke_gdt(7, presets::KERNEL_CODE64.0 & !(1 << 47));
            e.idt_entry(14, gate(0x38))
        },
        "segment-not-present",
    ),
    (
        "non-canonical handler offset",
        |e| {
            e.idt_entry(
                14,
                Gate64::interrupt(Selector(0x10), NON_CANONICAL, Ring::Ring0),
            )
        },
        "offset-not-canonical",
    ),
    (
        "a call gate in the IDT",
        |e| e.idt_entry(14, Gate64::call(Selector(0x10), H, Ring::Ring0)),
        "not-a-gate",
    ),
    (
        "a present gate of reserved type 0",
        |e| {
            e.idt_entry(
                14,
                Gate64 {
                    low: 1 << 47 | 0x10 << 16,
                    high: 0,
                },
            )
        },
        "not-a-gate",
    ),
    (
        "vector past the IDT",
        |e| e.idt_entry(40, gate(0x10)),
        "index-out-of-range",
    ),
    // ---- load_idt: every gate checked ----
    (
        "load_idt: a gate on a data segment",
        |e| {
            e.poke_gate(3, gate(0x10));
            e.poke_gate(13, gate(0x18));
            e.load_idt()
        },
        "not-code-segment",
    ),
    (
        "load_idt: a non-canonical handler",
        |e| {
            e.poke_gate(6, Gate64::trap(Selector(0x10), NON_CANONICAL, Ring::Ring0));
            e.load_idt()
        },
        "offset-not-canonical",
    ),
    (
        "load_idt: an LDT selector",
        |e| {
            e.poke_gate(8, gate(0x0f));
            e.load_idt()
        },
        "gate-selector-in-ldt",
    ),
    // ---- GDT entries ----
    (
        "TSS limit below 0x67",
        |e| e.gdt_entry(10, tss_at(0x5000, 0x20).into()),
        "tss-limit-too-small",
    ),
    (
        "TSS base not canonical",
        |e| e.gdt_entry(10, tss_at(NON_CANONICAL, Tss64::LIMIT).into()),
        "base-not-canonical",
    ),
    (
        "LDT descriptor base not canonical",
        |e| e.gdt_entry(10, SystemDescriptor::ldt(NON_CANONICAL, 8).unwrap().into()),
        "base-not-canonical",
    ),
    (
        "call gate to a data segment",
        |e| e.gdt_entry(10, call_gate(0x18, H)),
        "not-code-segment",
    ),
    (
        "call gate to 32-bit code",
        |e| e.gdt_entry(10, call_gate(0x08, H)),
        "wrong-code-width",
    ),
    (
        "call gate to a non-canonical offset",
        |e| e.gdt_entry(10, call_gate(0x10, NON_CANONICAL)),
        "offset-not-canonical",
    ),
    (
        "call gate to the null selector",
        |e| e.gdt_entry(10, call_gate(0, H)),
        "null-selector",
    ),
    (
        "code segment with L and D set",
        |e| e.gdt_entry(7, Descriptor(presets::KERNEL_CODE64.0 | 1 << 54).into()),
        "code-l-and-d",
    ),
    (
        "GDT index past the end",
        |e| e.gdt_entry(16, presets::KERNEL_DATA.into()),
        "index-out-of-range",
    ),
    (
        "16-byte descriptor in the last slot",
        |e| e.gdt_entry(15, tss_at(0x5000, Tss64::LIMIT).into()),
        "double-slot-past-end",
    ),
    // ---- LDT entries ----
    (
        "a TSS descriptor in the LDT",
        |e| e.ldt_entry(2, Descriptor(tss_at(0x5000, Tss64::LIMIT).low)),
        "not-allowed-here",
    ),
    (
        "an LDT descriptor in the LDT",
        |e| e.ldt_entry(2, Descriptor(SystemDescriptor::ldt(0x5000, 8).unwrap().low)),
        "not-allowed-here",
    ),
    (
        "an interrupt gate in the LDT",
        |e| e.ldt_entry(2, Descriptor(gate(0x10).low)),
        "not-allowed-here",
    ),
    (
        "LDT index past the end",
        |e| e.ldt_entry(8, presets::USER_DATA),
        "index-out-of-range",
    ),
    // ---- load_tr ----
    (
        "load_tr of an LDT selector",
        |e| e.load_tr(0x44),
        "bad-selector",
    ),
    (
        "load_tr of the null selector",
        |e| e.load_tr(0),
        "bad-selector",
    ),
    (
        "load_tr of a data segment",
        |e| e.load_tr(0x18),
        "wrong-descriptor-type",
    ),
    (
        "load_tr past the GDT",
        |e| e.load_tr(20 << 3),
        "index-out-of-range",
    ),
    (
        "load_tr of the last slot",
        |e| e.load_tr(15 << 3),
        "double-slot-past-end",
    ),
    (
        "load_tr of a TSS whose limit is below 0x67",
        |e| {
            let d = tss_at(0x5000, 0x20);
            e.poke_gdt(10, d.low);
            e.poke_gdt(11, d.high);
            e.load_tr(10 << 3)
        },
        "tss-limit-too-small",
    ),
    (
        "load_tr of a TSS whose base is not canonical",
        |e| {
            let d = tss_at(NON_CANONICAL, Tss64::LIMIT);
            e.poke_gdt(10, d.low);
            e.poke_gdt(11, d.high);
            e.load_tr(10 << 3)
        },
        "base-not-canonical",
    ),
    // ---- TLS, kernel stack ----
    (
        "a TSS descriptor in a TLS slot",
        |e| {
            e.load_tls([
                presets::USER_DATA,
                Descriptor(tss_at(0x5000, Tss64::LIMIT).low),
                Descriptor::NULL,
            ])
        },
        "not-allowed-here",
    ),
    (
        "an L+D code segment in a TLS slot",
        |e| {
            e.load_tls([
                Descriptor(presets::USER_CODE64.0 | 1 << 54),
                Descriptor::NULL,
                Descriptor::NULL,
            ])
        },
        "code-l-and-d",
    ),
    (
        "non-canonical kernel stack",
        |e| e.stack(NON_CANONICAL),
        "stack-not-canonical",
    ),
];

#[test]
fn every_backend_refuses_every_case_the_same_way_before_the_hardware() {
    assert!(CASES.len() >= 30, "{} cases", CASES.len());
    let backends: [fn() -> Env; 3] = [native, xen, vmi];
    let mut failures = Vec::new();
    for (scenario, run, want) in CASES {
        for make in backends {
            let env = make();
            let before = (env.reached)();
            let r = run(&env);
            let after = (env.reached)();
            match &r {
                Err(e) if kind(e) == *want => {
                    let text = e.to_string();
                    // The message names the op (or the table) and the rule.
                    assert!(text.len() > 20, "{}: {scenario}: {text}", env.name);
                }
                _ => failures.push(format!("{}: {scenario}: want {want}, got {r:?}", env.name)),
            }
            if after != before {
                failures.push(format!(
                    "{}: {scenario}: reached the CPU or hypervisor ({} new entries)",
                    env.name,
                    after - before
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The messages name the op, the table and slot or vector, and the rule.
#[test]
fn messages_name_op_slot_and_rule() {
    let e = native();
    let m = |r: Result<()>| r.unwrap_err().to_string();
    assert_eq!(
        m(e.idt_entry(14, gate(0x18))),
        "write_idt_entry: IDT vector 14 (#PF): selector 0x0018 (GDT[3] RPL0) names a descriptor of type 0x13 (S<<4|type), not a code segment"
    );
    assert_eq!(
        m(e.gdt_entry(10, tss_at(0x5000, 0x20).into())),
        "write_gdt_entry: GDT[10]: TSS limit 0x20 is below 0x67: the CPU needs at least 104 bytes"
    );
    assert_eq!(
        m(e.idt_entry(
            14,
            Gate64::interrupt(Selector(0x10), NON_CANONICAL, Ring::Ring0)
        )),
        "write_idt_entry: IDT vector 14 (#PF): handler offset 0x800000000000 is not canonical"
    );
    assert_eq!(
        m(e.load_tr(0x44)),
        "load_tr: selector 0x0044 (LDT[8] RPL0) has TI=1 (LDT); TSS and LDT descriptors live in the GDT"
    );
}

/// Xen cannot honour an IST index (its `trap_info` has none): refused
/// unless the kernel opts in, while native and VMI (which honour it)
/// accept the same gate. Not a "same kind" case: the backends differ in
/// what they can do, not in the rules.
#[test]
fn ist_is_per_backend() {
    let g = gate(0x10).with_ist(1).unwrap();
    for make in [native, vmi] {
        let e = make();
        assert_eq!(e.idt_entry(14, g), Ok(()), "{}", e.name);
    }
    let e = xen();
    let before = (e.reached)();
    let err = e.idt_entry(14, g).unwrap_err();
    assert_eq!(kind(&err), "ist-not-honoured");
    assert!(err.to_string().contains("with_ist_dropped_on"), "{err}");
    assert_eq!((e.reached)(), before);
    // Opting in: the kernel takes #PF on the kernel stack under Xen.
    let dom: &'static XenDomain = Box::leak(Box::new(XenDomain::pv64(16, 1)));
    let ops =
        XenOps::new(dom.vcpu_handle(0), LAYOUT).with_ist_dropped_on(VectorSet::EMPTY.with(14));
    let idt = Idt::new(dom.alloc_pages(1), 32).unwrap();
    // SAFETY: a page of the domain's memory.
    unsafe { ops.write_idt_entry(&idt, 14, g) }.unwrap();
}

/// Rules only the hypervisor can judge stay with it, and its refusal now
/// names the slot: a call gate into Xen's own code segment (Xen's reserved
/// GDT entries are invisible to the guest), and under VMI a DPL-3 call
/// gate into kernel code (architecturally valid; the personality's policy
/// refuses it).
#[test]
fn only_the_hypervisor_judges() {
    let e = xen();
    let before = (e.reached)();
    let err = e.gdt_entry(10, call_gate(0xe008, H)).unwrap_err();
    assert!(
        matches!(
            err,
            PvError::Hypervisor {
                call: "update_descriptor",
                errno: Errno::EINVAL,
                at: Slot::Entry(TableKind::Gdt, 10 | 11),
            }
        ),
        "{err:?}"
    );
    assert!((e.reached)() > before);
    let e = vmi();
    let g = Gate64::call(Selector(0x10), H, Ring::Ring3);
    let err = e
        .gdt_entry(
            10,
            GdtEntry::Double(SystemDescriptor {
                low: g.low,
                high: g.high,
            }),
        )
        .unwrap_err();
    assert_eq!(
        err,
        PvError::Hypervisor {
            call: "WriteGDTEntry",
            errno: Errno::EINVAL,
            at: Slot::Entry(TableKind::Gdt, 10),
        }
    );
    assert_eq!(
        err.to_string(),
        "hypervisor rejected WriteGDTEntry for GDT[10]: -EINVAL (-22)"
    );
}
