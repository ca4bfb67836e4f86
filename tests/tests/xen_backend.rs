//! pvops-xen's `XenOps` against hv-sim's Xen PV simulator (pv64).
//!
//! Every op runs through `XenVcpu` (hv-sim's `XenPlatform`) into
//! `XenDomain::hypercall`, which applies current Xen's rules; each test then
//! asserts the resulting hypervisor state (GDT frames, stored descriptors,
//! trap table, LDT, kernel stack, page types and mappings) and the trace of
//! hypercalls (multicall batching shows as sub-calls at depth 1).

#![cfg(target_arch = "x86_64")]

// The workspace's one seed helper (fixed seeds plus one printed random seed).
#[path = "../../hv-sim/tests/common/seeds.rs"]
mod seeds;

use hv_sim::xen::{Abi, PageType, TraceEvent, XenDomain, check_descriptor};
use pvops::{
    Descriptor, DescriptorOps, Errno, Gate64, Gdt, GdtEntry, GdtLayout, Idt, Ldt, OpsTable,
    PvError, Ring, Selector, Slot, SystemDescriptor, SystemType, TLS_ENTRIES, TableKind, Tss32,
    Tss64, presets,
};
use pvops_xen::XenOps;
use pvops_xen::XenPlatform as _;
use pvops_xen::abi::{PTE_PRESENT, PTE_RW};

type Ops<'a> = XenOps<hv_sim::xen::XenVcpu<'a>>;

const KCS: Selector = Selector(0xe033); // FLAT_KERNEL_CS (pv64)

fn domain() -> XenDomain {
    XenDomain::pv64(96, 2)
}

fn ops(dom: &XenDomain, vcpu: usize) -> Ops<'_> {
    XenOps::new(dom.vcpu_handle(vcpu), GdtLayout::LINUX_X86_64)
}

/// (depth, name, result) of every hypercall in the trace.
fn calls(dom: &XenDomain) -> Vec<(u32, &'static str, i64)> {
    dom.trace()
        .calls()
        .filter_map(|e| match e {
            TraceEvent::Call {
                depth,
                name,
                result,
                ..
            } => Some((*depth, *name, *result)),
            _ => None,
        })
        .collect()
}

/// Decoded argument strings of the calls named `name`.
fn args_of(dom: &XenDomain, which: &str) -> Vec<String> {
    dom.trace()
        .calls()
        .filter_map(|e| match e {
            TraceEvent::Call { name, .. } if *name == which => e.args_text(),
            _ => None,
        })
        .collect()
}

fn hv(call: &'static str, errno: Errno, at: Slot) -> PvError {
    PvError::Hypervisor { call, errno, at }
}

/// Xen's rewrite of a descriptor on pv64.
fn xen(d: Descriptor) -> u64 {
    check_descriptor(Abi::Pv64, d.0).unwrap()
}

/// A 16-entry Linux-like GDT in a fresh page, loaded; trace cleared.
fn loaded_gdt<'a>(dom: &'a XenDomain, o: &Ops<'a>) -> Gdt {
    let base = dom.alloc_pages(1);
    let init = presets::LINUX_X86_64_GDT;
    for (i, d) in init.iter().enumerate() {
        assert!(dom.host_write_u64(base + i as u64 * 8, d.0));
    }
    let gdt = Gdt::new(base, 16).unwrap();
    // SAFETY: a page of simulated guest RAM, valid for the test's life.
    unsafe { o.load_gdt(&gdt).unwrap() };
    dom.clear_trace();
    gdt
}

fn write_gate(dom: &XenDomain, idt: &Idt, v: u8, g: Gate64) {
    let a = idt.slot_addr(v).unwrap();
    assert!(dom.host_write_u64(a, g.low));
    assert!(dom.host_write_u64(a + 8, g.high));
}

fn no_violations(dom: &XenDomain) {
    assert_eq!(dom.violations(), Vec::<String>::new());
    dom.check_invariants().unwrap();
}

// ---- GDT ----------------------------------------------------------------

/// Linux's `cvt_gate_to_trap` (`arch/x86/xen/enlighten_pv.c`) from a 64-bit
/// gate's raw halves: (vector, flags, cs, address), or `None` for a gate
/// Linux does not forward. Type (Linux's 5-bit `type` field, bits 40-44,
/// so S = 0) 0xE (interrupt) or 0xF (trap);
/// IST (bits 32-34) only on #DB, NMI, #DF, #MC; offset bits 0-15, 48-63 and
/// the high word; a zero address is the list's end; flags = DPL (bits
/// 45-46), plus 4 for an interrupt gate. The present bit is not looked at.
fn linux_trap_info(vector: u8, low: u64, high: u64) -> Option<(u8, u8, u16, u64)> {
    let typ = (low >> 40) & 0x1f;
    if typ != 0xe && typ != 0xf {
        return None;
    }
    if (low >> 32) & 7 != 0 && !matches!(vector, 1 | 2 | 8 | 18) {
        return None;
    }
    let address = (low & 0xffff) | ((low >> 48) << 16) | ((high & 0xffff_ffff) << 32);
    if address == 0 {
        return None;
    }
    let dpl = ((low >> 45) & 3) as u8;
    let flags = if typ == 0xe { dpl | 4 } else { dpl };
    Some((vector, flags, (low >> 16) as u16, address))
}

#[test]
fn load_gdt_installs_machine_frames_read_only() {
    let dom = domain();
    let o = ops(&dom, 0);
    // 600 entries: two frames.
    let base = dom.alloc_pages(2);
    assert!(dom.host_write_u64(base + 16, presets::KERNEL_CODE64.0));
    assert!(dom.host_write_u64(base + 4096 + 8, presets::KERNEL_DATA.0));
    let gdt = Gdt::new(base, 600).unwrap();
    // SAFETY: simulated guest RAM.
    unsafe { o.load_gdt(&gdt).unwrap() };

    let v = dom.vcpu(0);
    let mfns = [
        dom.virt_to_mfn(base).unwrap(),
        dom.virt_to_mfn(base + 4096).unwrap(),
    ];
    assert_eq!(v.gdt_frames, mfns);
    assert_eq!(v.gdt_ents, 600);
    // Xen validated the pages: DPL 0 raised to 3 in what the CPU sees.
    assert_eq!(dom.gdt_entry(0, 2), xen(presets::KERNEL_CODE64));
    assert_eq!(dom.gdt_entry(0, 2) >> 45 & 3, 3);
    assert_eq!(dom.gdt_entry(0, 513), xen(presets::KERNEL_DATA));
    for (i, m) in mfns.iter().enumerate() {
        let pte = dom.pte(base + i as u64 * 4096).unwrap();
        assert_eq!(pte & PTE_RW, 0, "GDT page {i} still writable");
        assert_eq!(pte & PTE_PRESENT, 1);
        assert_eq!(dom.frame(*m).unwrap().typ, PageType::SegDesc);
    }
    // The remaps went as one multicall, then set_gdt.
    assert_eq!(
        calls(&dom),
        [
            (0, "multicall", 0),
            (1, "update_va_mapping", 0),
            (1, "update_va_mapping", 0),
            (0, "set_gdt", 0)
        ]
    );
    assert_eq!(
        args_of(&dom, "update_va_mapping")[0],
        format!("va={base:#x}, pte={:#x}, flags=0x0", (mfns[0] << 12) | 1)
    );
    assert_eq!(
        args_of(&dom, "set_gdt")[0].split(", ").nth(1),
        Some("entries=600")
    );
    assert_eq!(o.store_gdt().unwrap(), gdt.pointer());
    no_violations(&dom);
}

#[test]
fn load_gdt_rules() {
    let dom = domain();
    let o = ops(&dom, 0);
    let base = dom.alloc_pages(15);
    // Not on a page boundary: refused before any hypercall.
    let off = Gdt::new(base + 64, 8).unwrap();
    // SAFETY: simulated guest RAM.
    let e = unsafe { o.load_gdt(&off) }.unwrap_err();
    assert_eq!(
        e,
        PvError::MisalignedTable {
            table: TableKind::Gdt,
            base: base + 64,
            align: 4096
        }
    );
    assert!(e.to_string().contains("4096-byte aligned"), "{e}");
    assert!(calls(&dom).is_empty());
    // More than Xen's 7168 guest entries: Xen says -EINVAL, nothing loaded.
    let big = Gdt::new(base, 7169).unwrap();
    // SAFETY: 15 pages of simulated guest RAM.
    let e = unsafe { o.load_gdt(&big) }.unwrap_err();
    assert_eq!(e, hv("set_gdt", Errno::EINVAL, Slot::Table(TableKind::Gdt)));
    assert_eq!(dom.vcpu(0).gdt_ents, 0);
    assert_eq!(o.store_gdt().unwrap(), Default::default());
    // A GDT holding a descriptor Xen refuses (a present interrupt gate).
    let bad = dom.alloc_pages(1);
    let gate = Gate64::interrupt(KCS, 0x1000, Ring::Ring0);
    assert!(dom.host_write_u64(bad + 8, gate.low));
    let g = Gdt::new(bad, 4).unwrap();
    // SAFETY: simulated guest RAM.
    let r = unsafe { o.load_gdt(&g) };
    assert_eq!(
        r,
        Err(hv("set_gdt", Errno::EINVAL, Slot::Table(TableKind::Gdt)))
    );
    // Outside guest RAM: no translation.
    let far = Gdt::new(0x1000, 4).unwrap();
    // SAFETY: never touched: translation fails first.
    let e = unsafe { o.load_gdt(&far) }.unwrap_err();
    assert_eq!(
        e,
        PvError::NoTranslation {
            op: "load_gdt",
            addr: 0x1000
        }
    );
}

#[test]
fn write_gdt_entry_stores_at_the_machine_address() {
    let dom = domain();
    let o = ops(&dom, 0);
    let gdt = loaded_gdt(&dom, &o);
    let mfn = dom.virt_to_mfn(gdt.base()).unwrap();
    // A DPL0 code segment: Xen raises its DPL to 3.
    let d = Descriptor::code(Ring::Ring0, true);
    // SAFETY: the loaded GDT.
    unsafe { o.write_gdt_entry(&gdt, 9, d.into()).unwrap() };
    assert_eq!(calls(&dom), [(0, "update_descriptor", 0)]);
    assert_eq!(
        args_of(&dom, "update_descriptor"),
        [format!(
            "maddr={:#x}, desc={:#018x}",
            (mfn << 12) | (9 * 8),
            d.0
        )]
    );
    assert_eq!(dom.gdt_entry(0, 9), d.with_dpl(Ring::Ring3).0);
    assert_eq!(
        dom.host_read_u64(gdt.base() + 72),
        Some(d.with_dpl(Ring::Ring3).0)
    );
    // Index checked by the table handle first.
    // SAFETY: refused before any access.
    let e = unsafe { o.write_gdt_entry(&gdt, 16, d.into()) }.unwrap_err();
    assert!(matches!(e, PvError::IndexOutOfRange { index: 16, .. }));
    no_violations(&dom);
}

#[test]
fn tss_and_ldt_descriptor_writes_are_ignored() {
    let dom = domain();
    let o = ops(&dom, 0);
    let gdt = loaded_gdt(&dom, &o);
    let before: Vec<u64> = (0..16).map(|i| dom.gdt_entry(0, i)).collect();
    let tss = SystemDescriptor::tss(0x5000, Tss64::LIMIT).unwrap();
    let ldt = SystemDescriptor::ldt(0x6000, 4).unwrap();
    let tss32 = Descriptor::system32(SystemType::Tss, 0x5000, Tss32::LIMIT, Ring::Ring0).unwrap();
    let busy32 =
        Descriptor::system32(SystemType::TssBusy, 0x5000, Tss32::LIMIT, Ring::Ring0).unwrap();
    let ldt32 = Descriptor::system32(SystemType::Ldt, 0x6000, 31, Ring::Ring0).unwrap();
    // SAFETY: the loaded GDT.
    unsafe {
        o.write_gdt_entry(&gdt, 8, tss.into()).unwrap();
        o.write_gdt_entry(&gdt, 10, ldt.into()).unwrap();
        o.write_gdt_entry(&gdt, 11, tss32.into()).unwrap();
        o.write_gdt_entry(&gdt, 11, busy32.into()).unwrap();
        o.write_gdt_entry(&gdt, 11, ldt32.into()).unwrap();
    }
    assert!(calls(&dom).is_empty());
    let after: Vec<u64> = (0..16).map(|i| dom.gdt_entry(0, i)).collect();
    assert_eq!(before, after);
    // ...but a 16-byte entry in the last slot is still an error.
    // SAFETY: refused before any access.
    let e = unsafe { o.write_gdt_entry(&gdt, 15, GdtEntry::Double(tss)) }.unwrap_err();
    assert!(matches!(e, PvError::DoubleSlotPastEnd { index: 15, .. }));
}

#[test]
fn forbidden_descriptors_come_back_with_xens_errno() {
    let dom = domain();
    let o = ops(&dom, 0);
    let gdt = loaded_gdt(&dom, &o);
    let int_gate = Descriptor(Gate64::interrupt(KCS, 0x1000, Ring::Ring0).low);
    let reserved8 = Descriptor((1 << 47) | (8 << 40));
    for (i, d) in [int_gate, reserved8].into_iter().enumerate() {
        // SAFETY: the loaded GDT.
        let e = unsafe { o.write_gdt_entry(&gdt, 9 + i as u32, d.into()) }.unwrap_err();
        assert_eq!(
            e,
            hv(
                "update_descriptor",
                Errno::EINVAL,
                Slot::Entry(TableKind::Gdt, 9 + i as u32)
            ),
            "{d:?}"
        );
        assert_eq!(dom.gdt_entry(0, 9 + i as u32), 0);
    }
    // Not present: anything goes, stored unchanged.
    let np = Descriptor(int_gate.0 & !(1 << 47));
    // SAFETY: the loaded GDT.
    unsafe { o.write_gdt_entry(&gdt, 9, np.into()).unwrap() };
    assert_eq!(dom.gdt_entry(0, 9), np.0);
    no_violations(&dom);
}

#[test]
fn call_gates_follow_xens_rules() {
    let dom = domain();
    let o = ops(&dom, 0);
    let gdt = loaded_gdt(&dom, &o);
    // A DPL3 call gate to a guest GDT code selector: accepted, rewritten
    // (gate DPL forced to 0, the DPL carried in the target selector's RPL).
    let gate = Gate64::call(
        Selector::gdt(2, Ring::Ring0),
        0xffff_8000_0000_2000,
        Ring::Ring3,
    );
    // SAFETY: the loaded GDT; the upper half (type 0) goes in the next slot.
    unsafe {
        o.write_gdt_entry(&gdt, 9, Descriptor(gate.low).into())
            .unwrap();
        o.write_gdt_entry(&gdt, 10, Descriptor(gate.high).into())
            .unwrap();
    }
    let stored = dom.gdt_entry(0, 9);
    assert_eq!(stored, check_descriptor(Abi::Pv64, gate.low).unwrap());
    assert_eq!(stored >> 45 & 3, 0, "gate DPL forced to 0");
    assert_eq!(stored >> 16 & 3, 3, "DPL carried in the selector RPL");
    assert_eq!(dom.gdt_entry(0, 10), gate.high);
    // The flat kernel CS is allowed as a target, Xen's own selectors are not.
    let flat = Gate64::call(KCS, 0x2000, Ring::Ring3);
    let xen_ds = Gate64::call(Selector(0xe010), 0x2000, Ring::Ring3);
    // SAFETY: the loaded GDT.
    unsafe {
        o.write_gdt_entry(&gdt, 11, Descriptor(flat.low).into())
            .unwrap()
    };
    // SAFETY: the loaded GDT.
    let e = unsafe { o.write_gdt_entry(&gdt, 11, Descriptor(xen_ds.low).into()) }.unwrap_err();
    // Xen's own selectors are Xen's to judge: the validation layer lets
    // them through and the refusal names the slot.
    assert_eq!(
        e,
        hv(
            "update_descriptor",
            Errno::EINVAL,
            Slot::Entry(TableKind::Gdt, 11)
        )
    );
    // The same gate as one 16-byte entry: both halves sent, upper first.
    dom.clear_trace();
    let whole = SystemDescriptor {
        low: gate.low,
        high: gate.high,
    };
    // SAFETY: the loaded GDT.
    unsafe { o.write_gdt_entry(&gdt, 12, whole.into()).unwrap() };
    let mfn = dom.virt_to_mfn(gdt.base()).unwrap();
    assert_eq!(
        args_of(&dom, "update_descriptor"),
        [
            format!(
                "maddr={:#x}, desc={:#018x}",
                (mfn << 12) | (13 * 8),
                gate.high
            ),
            format!(
                "maddr={:#x}, desc={:#018x}",
                (mfn << 12) | (12 * 8),
                gate.low
            )
        ]
    );
    assert_eq!(dom.gdt_entry(0, 12), stored);
    assert_eq!(dom.gdt_entry(0, 13), gate.high);
    // pv64: a parameter count is a reserved bit.
    let with_params = Descriptor(flat.low | 2 << 32);
    // SAFETY: the loaded GDT.
    let e = unsafe { o.write_gdt_entry(&gdt, 11, with_params.into()) }.unwrap_err();
    assert_eq!(
        e,
        hv(
            "update_descriptor",
            Errno::EINVAL,
            Slot::Entry(TableKind::Gdt, 11)
        )
    );
    no_violations(&dom);
}

// ---- IDT ----------------------------------------------------------------

#[test]
fn load_idt_installs_the_trap_table() {
    let dom = domain();
    let o = ops(&dom, 0);
    let base = dom.alloc_pages(1);
    let idt = Idt::new(base, 32).unwrap();
    let h = 0xffff_8000_0010_0000u64;
    write_gate(&dom, &idt, 0, Gate64::interrupt(KCS, h, Ring::Ring0));
    write_gate(
        &dom,
        &idt,
        2,
        Gate64::interrupt(KCS, h + 2, Ring::Ring0)
            .with_ist(2)
            .unwrap(),
    );
    write_gate(&dom, &idt, 3, Gate64::trap(KCS, h + 3, Ring::Ring3));
    write_gate(
        &dom,
        &idt,
        8,
        Gate64::interrupt(KCS, h + 8, Ring::Ring0)
            .with_ist(1)
            .unwrap(),
    );
    // Refused before any hypercall: an IST gate the kernel did not opt
    // into losing, a call gate. A not-present trap gate is registered, as
    // Linux's cvt_gate_to_trap does (it looks at the gate type only).
    write_gate(
        &dom,
        &idt,
        14,
        Gate64::interrupt(KCS, h + 14, Ring::Ring0)
            .with_ist(3)
            .unwrap(),
    );
    let np = Gate64::trap(KCS, h + 6, Ring::Ring0);
    write_gate(
        &dom,
        &idt,
        6,
        Gate64 {
            low: np.low & !(1 << 47),
            high: np.high,
        },
    );
    write_gate(&dom, &idt, 7, Gate64::call(KCS, h + 7, Ring::Ring3));
    let refused = |o: &Ops<'_>| {
        // SAFETY: simulated guest RAM.
        match unsafe { o.load_idt(&idt) } {
            Err(PvError::Invalid { at, rule, .. }) => Some((at, rule.name())),
            _ => None,
        }
    };
    // Without the opt-in, IST on NMI is refused first.
    assert_eq!(refused(&o), Some((Slot::Vector(2), "ist-not-honoured")));
    // The kernel opts into Linux's set (#DB, NMI, #DF, #MC).
    let o = ops(&dom, 0).with_ist_dropped_on(pvops::VectorSet::LINUX_IST_OKAY);
    assert_eq!(refused(&o), Some((Slot::Vector(7), "not-a-gate")));
    write_gate(&dom, &idt, 7, Gate64::MISSING);
    assert_eq!(refused(&o), Some((Slot::Vector(14), "ist-not-honoured")));
    write_gate(&dom, &idt, 14, Gate64::MISSING);
    assert!(calls(&dom).is_empty());
    // SAFETY: simulated guest RAM.
    unsafe { o.load_idt(&idt).unwrap() };
    assert_eq!(calls(&dom), [(0, "set_trap_table", 0)]);
    let tt = dom.vcpu(0).trap_table;
    let t = |v: usize| (tt[v].vector, tt[v].flags, tt[v].cs, tt[v].address);
    assert_eq!(t(0), (0, 4, 0xe033, h));
    assert_eq!(t(2), (2, 4, 0xe033, h + 2));
    assert_eq!(t(3), (3, 3, 0xe033, h + 3));
    assert_eq!(t(8), (8, 4, 0xe033, h + 8));
    assert_eq!(t(6), (6, 0, 0xe033, h + 6));
    for v in [7usize, 14] {
        assert_eq!(tt[v].address, 0, "vector {v} should not be registered");
    }
    assert_eq!(o.store_idt().unwrap(), idt.pointer());
    no_violations(&dom);
}

#[test]
fn a_full_idt_fits_in_two_calls() {
    let dom = domain();
    let o = ops(&dom, 0);
    let base = dom.alloc_pages(1);
    let idt = Idt::new(base, 256).unwrap();
    for v in 0..=255u8 {
        write_gate(
            &dom,
            &idt,
            v,
            Gate64::interrupt(KCS, 0x10_0000 + v as u64 * 16, Ring::Ring0),
        );
    }
    // SAFETY: simulated guest RAM.
    unsafe { o.load_idt(&idt).unwrap() };
    assert_eq!(
        calls(&dom),
        [(0, "set_trap_table", 0), (0, "set_trap_table", 0)]
    );
    let tt = dom.vcpu(0).trap_table;
    assert!((0..256).all(|v| tt[v].address == 0x10_0000 + v as u64 * 16));
}

#[test]
fn a_non_canonical_handler_is_refused_before_xen() {
    let dom = domain();
    let o = ops(&dom, 0);
    let idt = Idt::new(dom.alloc_pages(1), 16).unwrap();
    write_gate(&dom, &idt, 1, Gate64::trap(KCS, 0x1000, Ring::Ring0));
    write_gate(
        &dom,
        &idt,
        3,
        Gate64::trap(KCS, 0x0000_8000_0000_0000, Ring::Ring3),
    );
    // SAFETY: simulated guest RAM.
    let e = unsafe { o.load_idt(&idt) }.unwrap_err();
    assert_eq!(
        e,
        PvError::Invalid {
            op: "load_idt",
            at: Slot::Vector(3),
            rule: pvops::Rule::OffsetNotCanonical {
                offset: 0x0000_8000_0000_0000
            }
        }
    );
    // Refused by the validation layer: Xen was not called, nothing applied.
    assert!(calls(&dom).is_empty());
    assert_eq!(dom.vcpu(0).trap_table[1].address, 0);
    assert_eq!(o.store_idt().unwrap(), Default::default());
}

#[test]
fn write_idt_entry_updates_the_loaded_idt_only() {
    let dom = domain();
    let o = ops(&dom, 0);
    let idt = Idt::new(dom.alloc_pages(1), 64).unwrap();
    let other = Idt::new(dom.alloc_pages(1), 64).unwrap();
    // SAFETY: simulated guest RAM.
    unsafe { o.load_idt(&idt).unwrap() };
    dom.clear_trace();
    let g = Gate64::interrupt(KCS, 0xffff_8000_0000_4000, Ring::Ring0);
    // SAFETY: simulated guest RAM, not loaded: stored only.
    unsafe { o.write_idt_entry(&other, 40, g).unwrap() };
    assert!(calls(&dom).is_empty());
    assert_eq!(dom.host_read_u64(other.slot_addr(40).unwrap()), Some(g.low));
    // SAFETY: the loaded IDT.
    unsafe { o.write_idt_entry(&idt, 40, g).unwrap() };
    assert_eq!(calls(&dom), [(0, "set_trap_table", 0)]);
    let e = dom.vcpu(0).trap_table[40];
    assert_eq!(
        (e.vector, e.flags, e.cs, e.address),
        (40, 4, 0xe033, g.offset())
    );
    assert_eq!(
        dom.host_read_u64(idt.slot_addr(40).unwrap() + 8),
        Some(g.high)
    );
    // SAFETY: refused before any access.
    let err = unsafe { o.write_idt_entry(&idt, 64, g) }.unwrap_err();
    assert!(matches!(
        err,
        PvError::IndexOutOfRange {
            table: TableKind::Idt,
            ..
        }
    ));
}

// ---- LDT ----------------------------------------------------------------

#[test]
fn ldt_lifecycle() {
    let dom = domain();
    let o = ops(&dom, 0);
    let base = dom.alloc_pages(1);
    let ldt = Ldt::new(base, 16).unwrap();
    let mfn = dom.virt_to_mfn(base).unwrap();
    // alloc_ldt: the page becomes read-only.
    // SAFETY: simulated guest RAM.
    unsafe { o.alloc_ldt(&ldt).unwrap() };
    assert_eq!(dom.pte(base).unwrap() & PTE_RW, 0);
    // write_ldt_entry: update_descriptor at the slot's machine address.
    let d = Descriptor::data(Ring::Ring0);
    // SAFETY: simulated guest RAM.
    unsafe { o.write_ldt_entry(&ldt, 1, d).unwrap() };
    assert_eq!(
        args_of(&dom, "update_descriptor"),
        [format!("maddr={:#x}, desc={:#018x}", (mfn << 12) | 8, d.0)]
    );
    assert_eq!(dom.host_read_u64(base + 8), Some(xen(d)));
    // load_ldt: MMUEXT_SET_LDT.
    // SAFETY: simulated guest RAM.
    unsafe { o.load_ldt(Some(&ldt)).unwrap() };
    let v = dom.vcpu(0);
    assert_eq!((v.ldt_base, v.ldt_ents), (base, 16));
    assert_eq!(o.store_ldt().unwrap(), Some(ldt));
    // The CPU touching entry 1 maps the page lazily; Xen sees DPL 3.
    assert_eq!(dom.touch_ldt(0, 1), Ok(xen(d)));
    assert_eq!(dom.frame(mfn).unwrap().typ, PageType::SegDesc);
    // Making it writable while Xen maps it as an LDT page: -EBUSY.
    // SAFETY: simulated guest RAM.
    let e = unsafe { o.free_ldt(&ldt) }.unwrap_err();
    assert_eq!(
        e,
        hv(
            "update_va_mapping",
            Errno::EBUSY,
            Slot::Table(TableKind::Ldt)
        )
    );
    // Unload, then free: writable again.
    // SAFETY: no LDT.
    unsafe { o.load_ldt(None).unwrap() };
    let v = dom.vcpu(0);
    assert_eq!(v.ldt_ents, 0);
    assert_eq!(v.ldt_base, hv_sim::xen::ZERO_BLOCK_PTR);
    assert_eq!(o.store_ldt().unwrap(), None);
    // SAFETY: simulated guest RAM, not loaded.
    unsafe { o.free_ldt(&ldt).unwrap() };
    assert_ne!(dom.pte(base).unwrap() & PTE_RW, 0);
    assert!(dom.guest_write_u64(base, 0).is_ok());
    let mm = args_of(&dom, "mmuext_op");
    assert_eq!(mm.len(), 2);
    assert!(
        mm[0].ends_with("count=0x1, pdone=0x0, foreigndom=0x7ff0"),
        "{}",
        mm[0]
    );
    no_violations(&dom);
}

#[test]
fn load_ldt_needs_a_page_aligned_table() {
    let dom = domain();
    let o = ops(&dom, 0);
    let ldt = Ldt::new(dom.alloc_pages(1) + 0x100, 4).unwrap();
    // SAFETY: refused before any hypercall.
    let e = unsafe { o.load_ldt(Some(&ldt)) }.unwrap_err();
    assert!(matches!(
        e,
        PvError::MisalignedTable {
            table: TableKind::Ldt,
            align: 4096,
            ..
        }
    ));
    assert!(calls(&dom).is_empty());
    assert_eq!(o.store_ldt().unwrap(), None);
}

#[test]
fn alloc_ldt_remaps_every_page_of_a_large_ldt() {
    let dom = domain();
    let o = ops(&dom, 0);
    let base = dom.alloc_pages(3);
    let ldt = Ldt::new(base + 0x800, 1024).unwrap(); // 8 KiB over 3 pages
    // SAFETY: simulated guest RAM.
    unsafe { o.alloc_ldt(&ldt).unwrap() };
    let c = calls(&dom);
    assert_eq!(c[0], (0, "multicall", 0));
    assert_eq!(c[1..], [(1, "update_va_mapping", 0); 3]);
    for i in 0..3 {
        assert_eq!(dom.pte(base + i * 4096).unwrap() & PTE_RW, 0);
    }
}

// ---- TR, kernel stack, TLS ---------------------------------------------

#[test]
fn load_tr_is_a_shadow_and_the_kernel_stack_a_stack_switch() {
    let dom = domain();
    let o = ops(&dom, 0);
    assert_eq!(o.store_tr().unwrap(), Selector::NULL);
    // Validated as on every backend: no GDT loaded yet, then the TSS
    // descriptor the backend kept from Xen (the guest's view of slot 8).
    // SAFETY: no hypercall.
    let e = unsafe { o.load_tr(Selector(0x40)) }.unwrap_err();
    assert!(matches!(e, PvError::NoTableLoaded { .. }), "{e:?}");
    let gdt = loaded_gdt(&dom, &o);
    let tss = SystemDescriptor::tss(dom.alloc_pages(1), Tss64::LIMIT).unwrap();
    // SAFETY: not sent to Xen; no hypercall.
    unsafe {
        o.write_gdt_entry(&gdt, 8, tss.into()).unwrap();
        o.load_tr(Selector(0x40)).unwrap();
    }
    // Linux's xen_store_tr answers 0 whatever was loaded.
    assert_eq!(o.store_tr().unwrap(), Selector::NULL);
    assert!(calls(&dom).is_empty());
    // SAFETY: the stack is never used by the simulator.
    unsafe { o.load_kernel_stack(0xffff_8800_0001_0000).unwrap() };
    let v = dom.vcpu(0);
    // Linux passes __KERNEL_DS (0x18); Xen raises its RPL to 3.
    assert_eq!(v.kernel_ss, 0x1b);
    assert_eq!(v.kernel_sp, 0xffff_8800_0001_0000);
    assert_eq!(calls(&dom), [(0, "stack_switch", 0)]);
}

#[test]
fn load_tls_sends_only_changed_slots() {
    let dom = domain();
    let o = ops(&dom, 0);
    let a = Descriptor::data_segment(0x1000, 0xfff, Ring::Ring3).unwrap();
    let b = Descriptor::data_segment(0x2000, 0xfff, Ring::Ring3).unwrap();
    // SAFETY: no GDT loaded: refused.
    let e = unsafe { o.load_tls(&[a; TLS_ENTRIES]) }.unwrap_err();
    assert_eq!(
        e,
        PvError::NoTableLoaded {
            op: "load_tls",
            table: TableKind::Gdt
        }
    );
    let gdt = loaded_gdt(&dom, &o);
    let mfn = dom.virt_to_mfn(gdt.base()).unwrap();
    // The TLS slots already hold NULL: nothing to send.
    // SAFETY: the loaded GDT.
    unsafe { o.load_tls(&[Descriptor::NULL; 3]).unwrap() };
    assert!(calls(&dom).is_empty());
    // Three changes: one multicall of three.
    // SAFETY: the loaded GDT.
    unsafe { o.load_tls(&[a, b, a]).unwrap() };
    assert_eq!(
        calls(&dom),
        [
            (0, "multicall", 0),
            (1, "update_descriptor", 0),
            (1, "update_descriptor", 0),
            (1, "update_descriptor", 0)
        ]
    );
    assert_eq!(
        (12..15).map(|i| dom.gdt_entry(0, i)).collect::<Vec<_>>(),
        [a.0, b.0, a.0]
    );
    dom.clear_trace();
    // Only slot 13 changes: one update_descriptor at slot 13's address.
    // SAFETY: the loaded GDT.
    unsafe { o.load_tls(&[a, a, a]).unwrap() };
    assert_eq!(calls(&dom), [(0, "update_descriptor", 0)]);
    assert_eq!(
        args_of(&dom, "update_descriptor"),
        [format!(
            "maddr={:#x}, desc={:#018x}",
            (mfn << 12) | (13 * 8),
            a.0
        )]
    );
    dom.clear_trace();
    // Same again: nothing.
    // SAFETY: the loaded GDT.
    unsafe { o.load_tls(&[a, a, a]).unwrap() };
    assert!(calls(&dom).is_empty());
    // A write_gdt_entry into a TLS slot keeps the shadow honest.
    // SAFETY: the loaded GDT.
    unsafe { o.write_gdt_entry(&gdt, 12, b.into()).unwrap() };
    dom.clear_trace();
    // SAFETY: the loaded GDT.
    unsafe { o.load_tls(&[a, a, a]).unwrap() };
    assert_eq!(calls(&dom), [(0, "update_descriptor", 0)]);
    assert_eq!(dom.gdt_entry(0, 12), a.0);
    no_violations(&dom);
}

#[test]
fn the_tls_shadow_follows_the_loaded_gdt() {
    let dom = domain();
    let o = ops(&dom, 0);
    let a = Descriptor::data_segment(0x3000, 0xfff, Ring::Ring3).unwrap();
    // GDT A already holds `a` in slot 12.
    let base_a = dom.alloc_pages(1);
    assert!(dom.host_write_u64(base_a + 12 * 8, a.0));
    let gdt_a = Gdt::new(base_a, 16).unwrap();
    // SAFETY: simulated guest RAM.
    unsafe { o.load_gdt(&gdt_a).unwrap() };
    dom.clear_trace();
    // SAFETY: the loaded GDT.
    unsafe {
        o.load_tls(&[a, Descriptor::NULL, Descriptor::NULL])
            .unwrap()
    };
    assert!(calls(&dom).is_empty());
    // GDT B is empty: the same TLS set is sent, to B's frame.
    let base_b = dom.alloc_pages(1);
    let gdt_b = Gdt::new(base_b, 16).unwrap();
    // SAFETY: simulated guest RAM.
    unsafe { o.load_gdt(&gdt_b).unwrap() };
    dom.clear_trace();
    // SAFETY: the loaded GDT.
    unsafe {
        o.load_tls(&[a, Descriptor::NULL, Descriptor::NULL])
            .unwrap()
    };
    let mfn_b = dom.virt_to_mfn(base_b).unwrap();
    assert_eq!(
        args_of(&dom, "update_descriptor"),
        [format!(
            "maddr={:#x}, desc={:#018x}",
            (mfn_b << 12) | (12 * 8),
            a.0
        )]
    );
    assert_eq!(dom.vcpu(0).gdt_frames, [mfn_b]);
    assert_eq!(dom.gdt_entry(0, 12), a.0);
    // Reloading A (already read-only and validated) works too.
    // SAFETY: simulated guest RAM.
    unsafe { o.load_gdt(&gdt_a).unwrap() };
    assert_eq!(o.store_gdt().unwrap(), gdt_a.pointer());
    no_violations(&dom);
}

// ---- lazy mode ------------------------------------------------------------

#[test]
fn a_context_switch_is_one_multicall() {
    let dom = domain();
    let o = ops(&dom, 0);
    let _gdt = loaded_gdt(&dom, &o);
    let ldt_base = dom.alloc_pages(1);
    let ldt = Ldt::new(ldt_base, 8).unwrap();
    let tls = Descriptor::data_segment(0x7000, 0xfff, Ring::Ring3).unwrap();
    o.enter_lazy_cpu().unwrap();
    assert_eq!(
        o.enter_lazy_cpu(),
        Err(PvError::LazyModeMismatch {
            op: "enter_lazy_cpu"
        })
    );
    // SAFETY: the loaded GDT, simulated guest RAM.
    unsafe {
        o.load_kernel_stack(0xffff_8800_0002_0000).unwrap();
        o.load_tls(&[tls, tls, Descriptor::NULL]).unwrap();
        o.load_ldt(Some(&ldt)).unwrap();
    }
    // Nothing reached the hypervisor yet; the guest view already moved.
    assert!(calls(&dom).is_empty());
    assert_eq!(o.queued(), 4);
    assert_eq!(dom.vcpu(0).kernel_sp, 0);
    assert_eq!(o.store_ldt().unwrap(), Some(ldt));
    o.leave_lazy_cpu().unwrap();
    assert_eq!(
        calls(&dom),
        [
            (0, "multicall", 0),
            (1, "stack_switch", 0),
            (1, "update_descriptor", 0),
            (1, "update_descriptor", 0),
            (1, "mmuext_op", 0)
        ]
    );
    assert_eq!(
        args_of(&dom, "multicall")[0].split(", ").nth(1),
        Some("nr=4")
    );
    let v = dom.vcpu(0);
    assert_eq!(v.kernel_sp, 0xffff_8800_0002_0000);
    assert_eq!((v.ldt_base, v.ldt_ents), (ldt_base, 8));
    assert_eq!(dom.gdt_entry(0, 12), tls.0);
    assert!(!v.in_multicall);
    assert_eq!(
        o.leave_lazy_cpu(),
        Err(PvError::LazyModeMismatch {
            op: "leave_lazy_cpu"
        })
    );
    no_violations(&dom);
}

#[test]
fn a_non_deferrable_call_flushes_the_queue_first() {
    let dom = domain();
    let o = ops(&dom, 0);
    let gdt = loaded_gdt(&dom, &o);
    let idt = Idt::new(dom.alloc_pages(1), 16).unwrap();
    write_gate(&dom, &idt, 3, Gate64::trap(KCS, 0x3000, Ring::Ring3));
    o.enter_lazy_cpu().unwrap();
    // SAFETY: simulated guest RAM and the loaded GDT.
    unsafe {
        o.load_kernel_stack(0x1000).unwrap();
        o.load_kernel_stack(0x2000).unwrap();
        o.load_idt(&idt).unwrap();
        o.load_kernel_stack(0x3000).unwrap();
        o.write_gdt_entry(&gdt, 9, Descriptor::data(Ring::Ring3).into())
            .unwrap();
    }
    assert_eq!(
        calls(&dom),
        [
            (0, "multicall", 0),
            (1, "stack_switch", 0),
            (1, "stack_switch", 0),
            (0, "set_trap_table", 0),
            // A queue of one goes as the call itself (Linux's bypass).
            (0, "stack_switch", 0),
            (0, "update_descriptor", 0)
        ]
    );
    o.leave_lazy_cpu().unwrap();
    assert_eq!(dom.vcpu(0).kernel_sp, 0x3000);
}

#[test]
fn a_full_queue_is_sent_as_32_calls() {
    let dom = domain();
    let o = ops(&dom, 0);
    o.enter_lazy_cpu().unwrap();
    for i in 0..40u64 {
        // SAFETY: the simulator never uses the stack.
        unsafe { o.load_kernel_stack(0x1000 * (i + 1)).unwrap() };
    }
    let c = calls(&dom);
    assert_eq!(c.len(), 33);
    assert_eq!(
        args_of(&dom, "multicall")[0].split(", ").nth(1),
        Some("nr=32")
    );
    assert_eq!(o.queued(), 8);
    o.flush_lazy().unwrap();
    assert!(o.is_lazy());
    assert_eq!(dom.vcpu(0).kernel_sp, 0x1000 * 40);
    assert_eq!(
        args_of(&dom, "multicall")[1].split(", ").nth(1),
        Some("nr=8")
    );
    o.leave_lazy_cpu().unwrap();
}

#[test]
fn a_failing_entry_is_reported_after_all_entries_ran() {
    let dom = domain();
    let o = ops(&dom, 0);
    let gdt = loaded_gdt(&dom, &o);
    let a = Descriptor::data(Ring::Ring3);
    let b = Descriptor::data_segment(0x5000, 0xfff, Ring::Ring3).unwrap();
    // Only Xen can judge this one: making the live GDT's page writable
    // (an `Ldt` handle over the GDT page, so free_ldt remaps it).
    let over_gdt = Ldt::new(gdt.base(), 16).unwrap();
    o.enter_lazy_cpu().unwrap();
    // SAFETY: the loaded GDT; the remap is refused by Xen.
    unsafe {
        o.load_tls(&[a, b, a]).unwrap();
        o.free_ldt(&over_gdt).unwrap();
        o.load_kernel_stack(0x4000).unwrap();
    }
    let e = o.leave_lazy_cpu().unwrap_err();
    assert!(
        matches!(
            e,
            PvError::Hypervisor {
                call: "update_va_mapping",
                at: Slot::Table(TableKind::Ldt),
                ..
            }
        ),
        "{e:?}"
    );
    let got = calls(&dom);
    assert_eq!(got.len(), 6, "{got:?}");
    assert_eq!(got[0], (0, "multicall", 0));
    assert_eq!(
        got[1..4],
        [
            (1, "update_descriptor", 0),
            (1, "update_descriptor", 0),
            (1, "update_descriptor", 0)
        ]
    );
    assert_eq!((got[4].0, got[4].1), (1, "update_va_mapping"));
    assert!(got[4].2 < 0);
    // The entry after the failure ran.
    assert_eq!(got[5], (1, "stack_switch", 0));
    assert_eq!(dom.gdt_entry(0, 13), xen(b));
    assert_eq!(dom.vcpu(0).kernel_sp, 0x4000);
    assert!(!o.is_lazy());
}

// ---- per vCPU, dynamic dispatch ---------------------------------------------

#[test]
fn each_vcpu_has_its_own_backend_state() {
    let dom = domain();
    let o0 = ops(&dom, 0);
    let o1 = ops(&dom, 1);
    assert_ne!(o0.platform().scratch().0, o1.platform().scratch().0);
    let gdt = loaded_gdt(&dom, &o0);
    o1.enter_lazy_cpu().unwrap();
    // SAFETY: no memory involved.
    unsafe {
        o1.load_kernel_stack(0x1111_0000).unwrap();
        o0.load_kernel_stack(0x2222_0000).unwrap();
    }
    assert_eq!(dom.vcpu(0).kernel_sp, 0x2222_0000);
    assert_eq!(dom.vcpu(1).kernel_sp, 0);
    o1.leave_lazy_cpu().unwrap();
    assert_eq!(dom.vcpu(1).kernel_sp, 0x1111_0000);
    assert_eq!(o0.store_gdt().unwrap(), gdt.pointer());
    assert_eq!(o1.store_gdt().unwrap(), Default::default());
    assert_eq!(dom.vcpu(1).gdt_ents, 0);
}

#[test]
fn through_the_dynamic_ops_table() {
    let dom: &'static XenDomain = Box::leak(Box::new(domain()));
    let o: &'static Ops<'static> = Box::leak(Box::new(ops(dom, 0)));
    let table = OpsTable::new(o);
    assert_eq!(table.name(), "xen");
    let gdt = Gdt::new(dom.alloc_pages(1), 16).unwrap();
    // SAFETY: simulated guest RAM, leaked for 'static.
    unsafe {
        table.load_gdt(&gdt).unwrap();
        table
            .write_gdt_entry(&gdt, 2, presets::KERNEL_CODE64.into())
            .unwrap();
        table.load_kernel_stack(0x9000).unwrap();
    }
    assert_eq!(table.store_gdt().unwrap(), gdt.pointer());
    assert_eq!(dom.gdt_entry(0, 2), xen(presets::KERNEL_CODE64));
    assert_eq!(dom.vcpu(0).kernel_sp, 0x9000);
}

// ---- properties -------------------------------------------------------------

mod props {
    use super::*;
    use proptest::prelude::*;

    /// The guest's GDT as XenOps sees it, read through the simulator.
    struct GuestGdt<'a>(&'a XenDomain, Gdt);
    impl pvops::TableView for GuestGdt<'_> {
        fn gdt_entries(&self) -> Option<u32> {
            Some(self.1.entries())
        }
        fn gdt_word(&self, index: u32) -> u64 {
            self.0
                .host_read_u64(self.1.base() + 8 * index as u64)
                .unwrap_or(0)
        }
        fn ldt_entries(&self) -> Option<u32> {
            None
        }
        fn ldt_word(&self, _: u32) -> u64 {
            0
        }
        fn hypervisor_selector(&self, sel: Selector) -> bool {
            sel.index() >= pvops_xen::FIRST_RESERVED_GDT_ENTRY
        }
    }

    fn gate_strategy() -> impl Strategy<Value = Gate64> {
        prop_oneof![
            // Anything at all.
            (any::<u64>(), any::<u64>()).prop_map(|(low, high)| Gate64 { low, high }),
            // Well-formed interrupt/trap gates with any DPL, IST, offset.
            (any::<bool>(), 0u8..4, 0u8..8, any::<u64>(), any::<bool>()).prop_map(
                |(int, dpl, ist, off, canonical)| {
                    let off = if canonical {
                        off & 0x7fff_ffff_ffff
                    } else {
                        off
                    };
                    let ring = pvops::selector::ring_from_bits(dpl);
                    let g = if int {
                        Gate64::interrupt(KCS, off, ring)
                    } else {
                        Gate64::trap(KCS, off, ring)
                    };
                    g.with_ist(ist).unwrap()
                }
            ),
        ]
    }

    seeds::seeded_proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        /// Any 8 bytes: ignored if TSS/LDT, else stored exactly as Xen's
        /// check_descriptor says, or refused with -EINVAL. Never a panic.
        #[test]
        fn any_gdt_descriptor(d in any::<u64>()) {
            let dom = domain();
            let o = ops(&dom, 0);
            let gdt = loaded_gdt(&dom, &o);
            let before = dom.gdt_entry(0, 9);
            // SAFETY: the loaded GDT.
            let r = unsafe { o.write_gdt_entry(&gdt, 9, Descriptor(d).into()) };
            // The validation layer's verdict, with the guest's GDT as the
            // backend sees it (Xen's own selectors left to Xen).
            let view = GuestGdt(&dom, gdt);
            let rules = pvops::validate::gdt_entry("write_gdt_entry", 9, Descriptor(d).into(), &view);
            if let Err(e) = rules {
                prop_assert_eq!(r, Err(e));
                prop_assert!(calls(&dom).is_empty());
                prop_assert_eq!(dom.gdt_entry(0, 9), before);
            } else if pvops_xen::is_tss_or_ldt(Descriptor(d)) {
                prop_assert_eq!(r, Ok(()));
                prop_assert!(calls(&dom).is_empty());
                prop_assert_eq!(dom.gdt_entry(0, 9), before);
            } else {
                match check_descriptor(Abi::Pv64, d) {
                    Ok(x) => {
                        prop_assert_eq!(r, Ok(()));
                        prop_assert_eq!(dom.gdt_entry(0, 9), x);
                    }
                    Err(_) => {
                        prop_assert_eq!(
                            r,
                            Err(hv("update_descriptor", Errno::EINVAL, Slot::Entry(TableKind::Gdt, 9)))
                        );
                        prop_assert_eq!(dom.gdt_entry(0, 9), before);
                    }
                }
            }
            prop_assert!(dom.check_invariants().is_ok());
        }

        /// Any IDT contents: Xen's trap table holds exactly the gates
        /// Linux's `cvt_gate_to_trap` forwards (cs RPL raised to 3), or Xen
        /// refuses a non-canonical handler with -EINVAL. The expectation is
        /// derived here from the raw gate bits (SDM 6.14.1), not with the
        /// backend's own conversion.
        #[test]
        fn any_idt(gates in proptest::collection::vec(gate_strategy(), 1..24)) {
            let dom = domain();
            let o = ops(&dom, 0);
            let idt = Idt::new(dom.alloc_pages(1), gates.len() as u32).unwrap();
            for (v, g) in gates.iter().enumerate() {
                write_gate(&dom, &idt, v as u8, *g);
            }
            // SAFETY: simulated guest RAM.
            let r = unsafe { o.load_idt(&idt) };
            let want: Vec<_> = gates
                .iter()
                .enumerate()
                .map(|(v, g)| linux_trap_info(v as u8, g.low, g.high))
                .collect();
            let canonical = |a: u64| (a >> 47) == 0 || (a >> 47) == 0x1_ffff;
            // The validation layer's rules (no GDT loaded: only the
            // table-free ones) come first; nothing reaches Xen then.
            let rules = pvops::validate::idt(
                "load_idt",
                gates.len() as u32,
                |v| gates[v as usize],
                o.ist_support(),
                "xen",
                &pvops::validate::NoTables,
            );
            if let Err(e) = rules {
                prop_assert_eq!(r, Err(e));
                prop_assert!(calls(&dom).is_empty());
            } else if want.iter().flatten().all(|t| canonical(t.3)) {
                prop_assert_eq!(r, Ok(()));
                let tt = dom.vcpu(0).trap_table;
                for (v, w) in want.iter().enumerate() {
                    let got = tt[v];
                    match w {
                        Some(t) => prop_assert_eq!(
                            (got.vector, got.flags, got.cs, got.address),
                            (t.0, t.1, t.2 | 3, t.3)
                        ),
                        None => prop_assert_eq!(got.address, 0),
                    }
                }
            } else {
                // A not-present gate is not checked, but Xen is told of it
                // (as Linux does) and refuses a non-canonical handler.
                prop_assert_eq!(
                    r,
                    Err(hv("set_trap_table", Errno::EINVAL, Slot::Table(TableKind::Idt)))
                );
            }
        }
    }
}
