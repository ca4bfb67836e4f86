//! Unit tests against a tiny recording platform. hv-sim's Xen simulator is
//! the real test (`tests/tests/xen_backend.rs`); this mock only checks what
//! the backend sends: it decodes argument structures, runs multicalls entry
//! by entry, stores `update_descriptor` writes and fails calls on request.

extern crate std;

use core::cell::RefCell;
use std::boxed::Box;
use std::string::ToString;
use std::vec;
use std::vec::Vec;

use pvops::{
    Descriptor, DescriptorOps, Errno, Gate64, Gdt, GdtEntry, GdtLayout, Idt, Ldt, PvError, Ring,
    Selector, Slot, SystemDescriptor, TableKind,
};

use crate::abi::{DOMID_SELF, KERNEL_DS, MmuextOp, PTE_PRESENT, PTE_RW, TrapInfo};
use crate::{XenOps, XenPlatform, nr};

const PAGES: usize = 24;
const MFN0: u64 = 0x500;

#[repr(C, align(4096))]
struct Page([u8; 4096]);

/// One hypercall the mock saw.
#[derive(Clone, Debug, PartialEq)]
struct Rec {
    nr: u32,
    args: [u64; 5],
    /// Index inside a multicall, `None` for a direct call.
    in_mc: Option<usize>,
    /// Decoded pointer argument: frames, trap_info words, mmuext words.
    payload: Vec<u64>,
}

struct Mock {
    mem: Box<[Page]>,
    log: RefCell<Vec<Rec>>,
    /// (nr, return value) overrides.
    fail: RefCell<Vec<(u32, i64)>>,
}

impl Mock {
    fn new() -> Mock {
        let mem: Box<[Page]> = (0..PAGES).map(|_| Page([0; 4096])).collect();
        Mock {
            mem,
            log: RefCell::new(Vec::new()),
            fail: RefCell::new(Vec::new()),
        }
    }
    fn base(&self) -> u64 {
        self.mem.as_ptr() as u64
    }
    /// Guest address of page `i` (page 0 is the scratch buffer).
    fn page(&self, i: usize) -> u64 {
        self.base() + i as u64 * 4096
    }
    fn read(&self, va: u64) -> u64 {
        assert!(va >= self.base() && va + 8 <= self.base() + (PAGES * 4096) as u64);
        // SAFETY: inside `mem` (asserted).
        unsafe { (va as *const u64).read() }
    }
    fn write(&self, va: u64, v: u64) {
        assert!(va >= self.base() && va + 8 <= self.base() + (PAGES * 4096) as u64);
        // SAFETY: inside `mem` (asserted); tests are single-threaded.
        unsafe { (va as *mut u64).write(v) }
    }
    fn log(&self) -> Vec<Rec> {
        self.log.borrow().clone()
    }
    fn clear(&self) {
        self.log.borrow_mut().clear();
    }
    fn nrs(&self) -> Vec<(u32, Option<usize>)> {
        self.log().iter().map(|r| (r.nr, r.in_mc)).collect()
    }
    fn fail_with(&self, nr: u32, ret: i64) {
        self.fail.borrow_mut().push((nr, ret));
    }
    fn mfn_of(&self, va: u64) -> u64 {
        self.virt_to_mfn(va).unwrap()
    }

    fn run(&self, nr: u32, args: [u64; 5], in_mc: Option<usize>) -> i64 {
        let mut payload = Vec::new();
        match nr {
            nr::SET_GDT => {
                let n = (args[1] as usize).div_ceil(512);
                payload = (0..n).map(|i| self.read(args[0] + i as u64 * 8)).collect();
            }
            nr::SET_TRAP_TABLE => {
                let mut at = args[0];
                loop {
                    let w = [self.read(at), self.read(at + 8)];
                    payload.extend_from_slice(&w);
                    if w[1] == 0 {
                        break;
                    }
                    at += 16;
                }
            }
            nr::MMUEXT_OP => {
                payload = (0..3).map(|i| self.read(args[0] + i * 8)).collect();
            }
            nr::UPDATE_DESCRIPTOR => {
                let off = args[0] & 0xfff;
                let mfn = args[0] >> 12;
                self.write(self.page((mfn - MFN0) as usize) + off, args[1]);
            }
            _ => {}
        }
        self.log.borrow_mut().push(Rec {
            nr,
            args,
            in_mc,
            payload,
        });
        if nr == nr::MULTICALL {
            if let Some((_, r)) = self.fail.borrow().iter().find(|(n, _)| *n == nr) {
                return *r;
            }
            for i in 0..args[1] {
                let e = args[0] + i * 64;
                let a = [
                    self.read(e + 16),
                    self.read(e + 24),
                    self.read(e + 32),
                    self.read(e + 40),
                    self.read(e + 48),
                ];
                let r = self.run(self.read(e) as u32, a, Some(i as usize));
                self.write(e + 8, r as u64);
            }
            return 0;
        }
        let fail = self.fail.borrow();
        fail.iter().find(|(n, _)| *n == nr).map_or(0, |(_, r)| *r)
    }
}

// SAFETY: the scratch buffer is page 0 of the mock's own memory, used only
// by the backend under test; the mock hypervisor touches nothing outside
// that memory (its accessors assert it).
unsafe impl XenPlatform for Mock {
    unsafe fn hypercall(&self, nr: u32, args: [u64; 5]) -> i64 {
        self.run(nr, args, None)
    }
    fn virt_to_mfn(&self, va: u64) -> Option<u64> {
        let off = va.checked_sub(self.base())?;
        (off < (PAGES * 4096) as u64).then_some(MFN0 + off / 4096)
    }
    fn scratch(&self) -> (u64, usize) {
        (self.page(0), 4096)
    }
}

fn ops() -> XenOps<Mock> {
    XenOps::new(Mock::new(), GdtLayout::LINUX_X86_64)
}

fn hv(call: &'static str, errno: Errno, at: pvops::Slot) -> PvError {
    PvError::Hypervisor { call, errno, at }
}

/// A 16-entry GDT on page 1, loaded; the log cleared.
fn loaded(o: &XenOps<Mock>) -> Gdt {
    let gdt = Gdt::new(o.platform().page(1), 16).unwrap();
    // SAFETY: page 1 of the mock's memory.
    unsafe { o.load_gdt(&gdt).unwrap() };
    o.platform().clear();
    gdt
}

#[test]
fn load_gdt_remaps_read_only_then_set_gdt_with_machine_frames() {
    let o = ops();
    let m = o.platform();
    // 600 entries: two pages, so the two remaps go as one multicall.
    let gdt = Gdt::new(m.page(2), 600).unwrap();
    // SAFETY: pages 2-3 of the mock's memory.
    unsafe { o.load_gdt(&gdt).unwrap() };
    let log = m.log();
    assert_eq!(
        m.nrs(),
        [
            (nr::MULTICALL, None),
            (nr::UPDATE_VA_MAPPING, Some(0)),
            (nr::UPDATE_VA_MAPPING, Some(1)),
            (nr::SET_GDT, None)
        ]
    );
    assert_eq!(
        log[1].args[..3],
        [m.page(2), (m.mfn_of(m.page(2)) << 12) | PTE_PRESENT, 0]
    );
    assert_eq!(log[2].args[1], (m.mfn_of(m.page(3)) << 12) | PTE_PRESENT);
    assert_eq!(log[3].args[1], 600);
    assert_eq!(log[3].payload, [MFN0 + 2, MFN0 + 3]);
    assert_eq!(o.store_gdt().unwrap(), gdt.pointer());
}

#[test]
fn load_gdt_rules_and_errors() {
    let o = ops();
    let m = o.platform();
    let off = Gdt::new(m.page(2) + 8, 4).unwrap();
    // SAFETY: inside the mock's memory.
    let e = unsafe { o.load_gdt(&off) }.unwrap_err();
    assert_eq!(
        e,
        PvError::MisalignedTable {
            table: TableKind::Gdt,
            base: m.page(2) + 8,
            align: 4096
        }
    );
    assert!(m.log().is_empty());
    // No translation: nothing sent.
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
    assert!(m.log().is_empty());
    // Xen refuses: errno comes back, the shadow is unchanged.
    m.fail_with(nr::SET_GDT, -22);
    let gdt = Gdt::new(m.page(1), 16).unwrap();
    // SAFETY: page 1.
    let e = unsafe { o.load_gdt(&gdt) }.unwrap_err();
    assert_eq!(e, hv("set_gdt", Errno::EINVAL, Slot::Table(TableKind::Gdt)));
    assert_eq!(o.store_gdt().unwrap(), Default::default());
}

#[test]
fn write_gdt_entry_updates_the_machine_address_and_ignores_tss_ldt() {
    let o = ops();
    let m = o.platform();
    let gdt = loaded(&o);
    let code = pvops::presets::KERNEL_CODE64;
    // SAFETY: the loaded GDT on page 1.
    unsafe { o.write_gdt_entry(&gdt, 5, code.into()).unwrap() };
    let log = m.log();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].nr, nr::UPDATE_DESCRIPTOR);
    assert_eq!(log[0].args[..2], [((MFN0 + 1) << 12) | 40, code.0]);
    assert_eq!(m.read(m.page(1) + 40), code.0);
    m.clear();
    let tss = SystemDescriptor::tss(0x5000, pvops::Tss64::LIMIT).unwrap();
    let tss32 = Descriptor::system32(
        pvops::SystemType::Tss,
        0x5000,
        pvops::Tss32::LIMIT,
        Ring::Ring0,
    )
    .unwrap();
    let ldt32 = Descriptor::system32(pvops::SystemType::Ldt, 0x5000, 0x67, Ring::Ring0).unwrap();
    // SAFETY: as above.
    unsafe {
        o.write_gdt_entry(&gdt, 8, tss.into()).unwrap();
        o.write_gdt_entry(&gdt, 8, tss32.into()).unwrap();
        o.write_gdt_entry(&gdt, 10, ldt32.into()).unwrap();
    }
    assert!(m.log().is_empty());
    // Another 16-byte entry (a 64-bit call gate): both halves, upper first.
    let g = Gate64::call(Selector(0xe033), 0xffff_8000_0000_1000, Ring::Ring3);
    let whole = SystemDescriptor {
        low: g.low,
        high: g.high,
    };
    // SAFETY: the loaded GDT.
    unsafe { o.write_gdt_entry(&gdt, 10, whole.into()).unwrap() };
    let log = m.log();
    assert_eq!(log.len(), 2);
    assert_eq!(log[0].args[..2], [((MFN0 + 1) << 12) | 88, g.high]);
    assert_eq!(log[1].args[..2], [((MFN0 + 1) << 12) | 80, g.low]);
    m.clear();
    // Validation still comes first for ignored entries.
    // SAFETY: rejected before any access.
    let e = unsafe { o.write_gdt_entry(&gdt, 15, GdtEntry::Double(tss)) }.unwrap_err();
    assert!(matches!(e, PvError::DoubleSlotPastEnd { .. }));
    // SAFETY: rejected before any access.
    let e = unsafe { o.write_gdt_entry(&gdt, 16, code.into()) }.unwrap_err();
    assert!(matches!(e, PvError::IndexOutOfRange { index: 16, .. }));
    m.fail_with(nr::UPDATE_DESCRIPTOR, -22);
    // SAFETY: the loaded GDT.
    let e = unsafe { o.write_gdt_entry(&gdt, 6, code.into()) }.unwrap_err();
    assert_eq!(
        e,
        hv(
            "update_descriptor",
            Errno::EINVAL,
            Slot::Entry(TableKind::Gdt, 6)
        )
    );
}

#[test]
fn write_ldt_entry_uses_update_descriptor() {
    let o = ops();
    let m = o.platform();
    let ldt = Ldt::new(m.page(4) + 0x800, 4).unwrap();
    let d = Descriptor::data(Ring::Ring3);
    // SAFETY: page 4.
    unsafe { o.write_ldt_entry(&ldt, 3, d).unwrap() };
    assert_eq!(m.log()[0].args[..2], [((MFN0 + 4) << 12) | 0x818, d.0]);
    // SAFETY: rejected before any access.
    let e = unsafe { o.write_ldt_entry(&ldt, 4, d) }.unwrap_err();
    assert!(matches!(
        e,
        PvError::IndexOutOfRange {
            table: TableKind::Ldt,
            ..
        }
    ));
}

fn write_gate(m: &Mock, idt: &Idt, v: u8, g: Gate64) {
    let a = idt.slot_addr(v).unwrap();
    m.write(a, g.low);
    m.write(a + 8, g.high);
}

#[test]
fn load_idt_converts_gates_and_terminates() {
    let o = ops();
    let m = o.platform();
    let idt = Idt::new(m.page(5), 32).unwrap();
    let cs = Selector(0xe033);
    let h = 0xffff_8000_0000_1000u64;
    write_gate(m, &idt, 0, Gate64::interrupt(cs, h, Ring::Ring0));
    write_gate(
        m,
        &idt,
        2,
        Gate64::interrupt(cs, h + 2, Ring::Ring0)
            .with_ist(2)
            .unwrap(),
    );
    write_gate(m, &idt, 3, Gate64::trap(cs, h + 3, Ring::Ring3));
    // IST refused by default (Xen cannot honour it), before any call.
    // SAFETY: page 5.
    let e = unsafe { o.load_idt(&idt) }.unwrap_err();
    assert!(
        matches!(
            e,
            PvError::Invalid {
                op: "load_idt",
                at: Slot::Vector(2),
                rule: pvops::Rule::IstNotHonoured { ist: 2, .. }
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("with_ist_dropped_on"), "{e}");
    assert!(m.log().is_empty());
    // A kernel that opts into Linux's set gets the gate without its IST.
    let o = XenOps::new(Mock::new(), GdtLayout::LINUX_X86_64)
        .with_ist_dropped_on(pvops::VectorSet::LINUX_IST_OKAY);
    let m = o.platform();
    let idt = Idt::new(m.page(5), 32).unwrap();
    write_gate(m, &idt, 0, Gate64::interrupt(cs, h, Ring::Ring0));
    write_gate(
        m,
        &idt,
        2,
        Gate64::interrupt(cs, h + 2, Ring::Ring0)
            .with_ist(2)
            .unwrap(),
    );
    write_gate(m, &idt, 3, Gate64::trap(cs, h + 3, Ring::Ring3));
    // A not-present IST gate on #PF: not checked, and (as Linux) not sent.
    let np = Gate64::interrupt(cs, h + 14, Ring::Ring0)
        .with_ist(1)
        .unwrap();
    write_gate(
        m,
        &idt,
        14,
        Gate64 {
            low: np.low & !(1 << 47),
            high: np.high,
        },
    );
    // SAFETY: page 5.
    unsafe { o.load_idt(&idt).unwrap() };
    let log = m.log();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].nr, nr::SET_TRAP_TABLE);
    let t = |v, flags, a| {
        TrapInfo {
            vector: v,
            flags,
            cs: 0xe033,
            address: a,
        }
        .to_words()
    };
    let mut want = Vec::new();
    for w in [t(0, 4, h), t(2, 4, h + 2), t(3, 3, h + 3), [0, 0]] {
        want.extend_from_slice(&w);
    }
    assert_eq!(log[0].payload, want);
    assert_eq!(o.store_idt().unwrap(), idt.pointer());
}

#[test]
fn full_idt_takes_two_calls() {
    let o = ops();
    let m = o.platform();
    let idt = Idt::new(m.page(6), 256).unwrap();
    for v in 0..=255u8 {
        write_gate(
            m,
            &idt,
            v,
            Gate64::interrupt(Selector(0xe033), 0x1000 + v as u64, Ring::Ring0),
        );
    }
    // SAFETY: pages 6-7.
    unsafe { o.load_idt(&idt).unwrap() };
    let log = m.log();
    assert_eq!(log.len(), 2);
    assert_eq!(log[0].payload.len(), 256 * 2); // 255 entries + terminator
    assert_eq!(log[1].payload.len(), 2 * 2);
    assert_eq!(
        TrapInfo::from_words([log[1].payload[0], log[1].payload[1]]).vector,
        255
    );
}

#[test]
fn write_idt_entry_stores_and_forwards_only_for_the_loaded_idt() {
    let o = ops();
    let m = o.platform();
    let idt = Idt::new(m.page(5), 32).unwrap();
    let other = Idt::new(m.page(8), 32).unwrap();
    let g = Gate64::trap(Selector(0xe033), 0x4000, Ring::Ring3);
    // SAFETY: page 8; no IDT loaded: store only.
    unsafe { o.write_idt_entry(&other, 3, g).unwrap() };
    assert!(m.log().is_empty());
    assert_eq!(m.read(m.page(8) + 48), g.low);
    // SAFETY: page 5.
    unsafe { o.load_idt(&idt).unwrap() };
    m.clear();
    // SAFETY: page 5, the loaded IDT.
    unsafe { o.write_idt_entry(&idt, 3, g).unwrap() };
    let log = m.log();
    assert_eq!(log.len(), 1);
    assert_eq!(
        log[0].payload,
        [
            TrapInfo {
                vector: 3,
                flags: 3,
                cs: 0xe033,
                address: 0x4000
            }
            .to_words(),
            [0, 0]
        ]
        .concat()
    );
    m.clear();
    // A not-present gate is stored but cannot be sent.
    // SAFETY: as above.
    unsafe { o.write_idt_entry(&idt, 3, Gate64::MISSING).unwrap() };
    assert!(m.log().is_empty());
    assert_eq!(m.read(m.page(5) + 48), 0);
    // SAFETY: rejected before any access.
    let e = unsafe { o.write_idt_entry(&idt, 32, g) }.unwrap_err();
    assert!(matches!(
        e,
        PvError::IndexOutOfRange {
            table: TableKind::Idt,
            ..
        }
    ));
}

#[test]
fn load_ldt_sends_mmuext_set_ldt() {
    let o = ops();
    let m = o.platform();
    let ldt = Ldt::new(m.page(9), 16).unwrap();
    // SAFETY: page 9.
    unsafe { o.load_ldt(Some(&ldt)).unwrap() };
    let log = m.log();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].nr, nr::MMUEXT_OP);
    assert_eq!(log[0].args[1..], [1, 0, DOMID_SELF, 0]);
    assert_eq!(log[0].payload, MmuextOp::set_ldt(m.page(9), 16).to_words());
    assert_eq!(o.store_ldt().unwrap(), Some(ldt));
    m.clear();
    // SAFETY: unloading.
    unsafe { o.load_ldt(None).unwrap() };
    assert_eq!(m.log()[0].payload, [13, 0, 0]);
    assert_eq!(o.store_ldt().unwrap(), None);
    // Misaligned: refused before any call.
    let bad = Ldt::new(m.page(9) + 8, 4).unwrap();
    // SAFETY: rejected before any access.
    let e = unsafe { o.load_ldt(Some(&bad)) }.unwrap_err();
    assert!(matches!(
        e,
        PvError::MisalignedTable {
            table: TableKind::Ldt,
            align: 4096,
            ..
        }
    ));
    // A refusal leaves the shadow alone.
    m.fail_with(nr::MMUEXT_OP, -22);
    // SAFETY: page 9.
    let e = unsafe { o.load_ldt(Some(&ldt)) }.unwrap_err();
    assert_eq!(
        e,
        hv("mmuext_op", Errno::EINVAL, Slot::Table(TableKind::Ldt))
    );
    assert_eq!(o.store_ldt().unwrap(), None);
}

#[test]
fn alloc_and_free_ldt_remap_every_page() {
    let o = ops();
    let m = o.platform();
    let ldt = Ldt::new(m.page(10) + 0x800, 1024).unwrap(); // spans 3 pages
    // SAFETY: pages 10-12.
    unsafe { o.alloc_ldt(&ldt).unwrap() };
    let log = m.log();
    assert_eq!(log[0].nr, nr::MULTICALL);
    assert_eq!(log[0].args[1], 3);
    for (i, r) in log[1..].iter().enumerate() {
        assert_eq!(r.nr, nr::UPDATE_VA_MAPPING);
        assert_eq!(r.args[0], m.page(10 + i));
        assert_eq!(r.args[1], ((MFN0 + 10 + i as u64) << 12) | PTE_PRESENT);
    }
    m.clear();
    let one = Ldt::new(m.page(10), 4).unwrap();
    // SAFETY: page 10.
    unsafe { o.free_ldt(&one).unwrap() };
    let log = m.log();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].args[1], ((MFN0 + 10) << 12) | PTE_PRESENT | PTE_RW);
}

#[test]
fn load_tr_store_tr_and_kernel_stack() {
    let o = ops();
    assert_eq!(o.store_tr().unwrap(), Selector::NULL);
    // Validated as on every backend: no GDT loaded yet.
    // SAFETY: nothing is touched.
    let e = unsafe { o.load_tr(Selector(0x40)) }.unwrap_err();
    assert!(
        matches!(e, PvError::NoTableLoaded { op: "load_tr", .. }),
        "{e:?}"
    );
    let gdt = loaded(&o);
    let m = o.platform();
    // The TSS descriptor is not sent to Xen, but it is the guest's view
    // of slot 8 that load_tr is checked against.
    let tss = SystemDescriptor::tss(0xffff_8000_0000_5000, pvops::Tss64::LIMIT).unwrap();
    // SAFETY: nothing is sent.
    unsafe {
        o.write_gdt_entry(&gdt, 8, tss.into()).unwrap();
        o.load_tr(Selector(0x40)).unwrap();
    }
    // Linux's xen_store_tr answers 0 whatever was loaded.
    assert_eq!(o.store_tr().unwrap(), Selector::NULL);
    assert!(m.log().is_empty());
    // SAFETY: scalar hypercall.
    unsafe { o.load_kernel_stack(0xffff_8000_dead_0000).unwrap() };
    assert_eq!(m.log()[0].nr, nr::STACK_SWITCH);
    assert_eq!(m.log()[0].args[..2], [KERNEL_DS, 0xffff_8000_dead_0000]);
}

#[test]
fn load_tls_sends_only_changed_slots() {
    let o = ops();
    let m = o.platform();
    let a = Descriptor::data(Ring::Ring3);
    let b = Descriptor::code(Ring::Ring3, false);
    // SAFETY: no GDT loaded: refused.
    let e = unsafe { o.load_tls(&[a; 3]) }.unwrap_err();
    assert_eq!(
        e,
        PvError::NoTableLoaded {
            op: "load_tls",
            table: TableKind::Gdt
        }
    );
    let _gdt = loaded(&o);
    // Slots 12-14 hold NULL already: nothing to send.
    // SAFETY: the loaded GDT.
    unsafe { o.load_tls(&[Descriptor::NULL; 3]).unwrap() };
    assert!(m.log().is_empty());
    // One slot: a single direct call.
    // SAFETY: as above.
    unsafe {
        o.load_tls(&[Descriptor::NULL, a, Descriptor::NULL])
            .unwrap()
    };
    assert_eq!(m.nrs(), [(nr::UPDATE_DESCRIPTOR, None)]);
    assert_eq!(m.log()[0].args[..2], [((MFN0 + 1) << 12) | (13 * 8), a.0]);
    m.clear();
    // Two slots: one multicall.
    // SAFETY: as above.
    unsafe { o.load_tls(&[b, a, b]).unwrap() };
    assert_eq!(
        m.nrs(),
        [
            (nr::MULTICALL, None),
            (nr::UPDATE_DESCRIPTOR, Some(0)),
            (nr::UPDATE_DESCRIPTOR, Some(1))
        ]
    );
    assert_eq!(m.log()[1].args[0] & 0xfff, 12 * 8);
    assert_eq!(m.log()[2].args[0] & 0xfff, 14 * 8);
    // A GDT too small for the TLS slots.
    let small = Gdt::new(m.page(1), 13).unwrap();
    // SAFETY: page 1.
    unsafe { o.load_gdt(&small).unwrap() };
    // SAFETY: refused before any access.
    let e = unsafe { o.load_tls(&[a; 3]) }.unwrap_err();
    assert!(matches!(e, PvError::IndexOutOfRange { index: 14, .. }));
}

#[test]
fn lazy_mode_batches_into_one_multicall() {
    let o = ops();
    let m = o.platform();
    let _gdt = loaded(&o);
    let ldt = Ldt::new(m.page(9), 8).unwrap();
    let a = Descriptor::data(Ring::Ring3);
    o.enter_lazy_cpu().unwrap();
    assert_eq!(
        o.enter_lazy_cpu(),
        Err(PvError::LazyModeMismatch {
            op: "enter_lazy_cpu"
        })
    );
    // SAFETY: the loaded GDT and page 9.
    unsafe {
        o.load_tls(&[a, a, Descriptor::NULL]).unwrap();
        o.load_kernel_stack(0x8000).unwrap();
        o.load_ldt(Some(&ldt)).unwrap();
    }
    assert!(m.log().is_empty());
    assert_eq!(o.queued(), 4);
    assert_eq!(o.store_ldt().unwrap(), Some(ldt));
    o.leave_lazy_cpu().unwrap();
    assert_eq!(
        m.nrs(),
        [
            (nr::MULTICALL, None),
            (nr::UPDATE_DESCRIPTOR, Some(0)),
            (nr::UPDATE_DESCRIPTOR, Some(1)),
            (nr::STACK_SWITCH, Some(2)),
            (nr::MMUEXT_OP, Some(3))
        ]
    );
    let log = m.log();
    assert_eq!(log[0].args[1], 4);
    // The mmuext_op pointer leads to the arena in the scratch page.
    assert_eq!(log[4].payload, MmuextOp::set_ldt(m.page(9), 8).to_words());
    assert!(log[4].args[0] >= m.page(0) + 2048 && log[4].args[0] < m.page(1));
    assert_eq!(log[4].args[3], DOMID_SELF);
    assert_eq!(
        o.leave_lazy_cpu(),
        Err(PvError::LazyModeMismatch {
            op: "leave_lazy_cpu"
        })
    );
    assert!(!o.is_lazy());
}

#[test]
fn non_deferrable_calls_flush_first_and_full_queue_flushes() {
    let o = ops();
    let m = o.platform();
    let gdt = loaded(&o);
    o.enter_lazy_cpu().unwrap();
    // SAFETY: scalar hypercalls and the loaded GDT.
    unsafe {
        o.load_kernel_stack(0x1000).unwrap();
        o.load_kernel_stack(0x2000).unwrap();
        o.write_gdt_entry(&gdt, 5, Descriptor::data(Ring::Ring3).into())
            .unwrap();
    }
    assert_eq!(
        m.nrs(),
        [
            (nr::MULTICALL, None),
            (nr::STACK_SWITCH, Some(0)),
            (nr::STACK_SWITCH, Some(1)),
            (nr::UPDATE_DESCRIPTOR, None)
        ]
    );
    m.clear();
    for i in 0..33u64 {
        // SAFETY: scalar hypercall.
        unsafe { o.load_kernel_stack(0x1000 * i).unwrap() };
    }
    // The 33rd call found the queue full: 32 went, one waits.
    assert_eq!(m.log().len(), 33);
    assert_eq!(m.log()[0].args[1], 32);
    assert_eq!(o.queued(), 1);
    o.flush_lazy().unwrap();
    assert!(o.is_lazy());
    assert_eq!(o.queued(), 0);
    assert_eq!(m.log()[33].nr, nr::STACK_SWITCH);
    assert_eq!(m.log()[33].in_mc, None);
    o.leave_lazy_cpu().unwrap();
}

#[test]
fn a_failing_entry_is_reported_and_its_tls_slot_forgotten() {
    let o = ops();
    let m = o.platform();
    let _gdt = loaded(&o);
    let a = Descriptor::data(Ring::Ring3);
    o.enter_lazy_cpu().unwrap();
    // SAFETY: the loaded GDT; scalar hypercalls.
    unsafe {
        o.load_kernel_stack(0x1000).unwrap();
        o.load_tls(&[a, Descriptor::NULL, Descriptor::NULL])
            .unwrap();
        o.load_kernel_stack(0x2000).unwrap();
    }
    m.fail_with(nr::UPDATE_DESCRIPTOR, -22);
    m.fail_with(nr::STACK_SWITCH, -1);
    // First failing entry (stack_switch at 0) wins; all three still ran.
    assert_eq!(
        o.leave_lazy_cpu(),
        Err(hv("stack_switch", Errno::EPERM, Slot::KernelStack))
    );
    assert_eq!(m.log().len(), 4);
    assert_eq!(o.queued(), 0);
    m.fail.borrow_mut().clear();
    m.clear();
    // The TLS slot whose update failed is sent again.
    // SAFETY: the loaded GDT.
    unsafe {
        o.load_tls(&[a, Descriptor::NULL, Descriptor::NULL])
            .unwrap()
    };
    assert_eq!(m.nrs(), [(nr::UPDATE_DESCRIPTOR, None)]);
}

#[test]
fn multicall_refused_as_a_whole() {
    let o = ops();
    let m = o.platform();
    let _gdt = loaded(&o);
    let a = Descriptor::data(Ring::Ring3);
    m.fail_with(nr::MULTICALL, -14);
    // SAFETY: the loaded GDT.
    let e = unsafe { o.load_tls(&[a, a, a]) }.unwrap_err();
    assert_eq!(e, hv("multicall", Errno::EFAULT, Slot::None));
    m.fail.borrow_mut().clear();
    m.clear();
    // Every slot of the refused batch is sent again.
    // SAFETY: the loaded GDT.
    unsafe { o.load_tls(&[a, a, a]).unwrap() };
    assert_eq!(m.log()[0].args[1], 3);
}

#[test]
fn a_scratch_buffer_below_the_contract_is_an_error() {
    struct Tiny(Mock);
    // SAFETY: as for `Mock` (a smaller view of the same page).
    unsafe impl XenPlatform for Tiny {
        unsafe fn hypercall(&self, nr: u32, args: [u64; 5]) -> i64 {
            // SAFETY: forwarded.
            unsafe { self.0.hypercall(nr, args) }
        }
        fn virt_to_mfn(&self, va: u64) -> Option<u64> {
            self.0.virt_to_mfn(va)
        }
        fn scratch(&self) -> (u64, usize) {
            (self.0.page(0), 1024)
        }
    }
    let t = XenOps::new(Tiny(Mock::new()), GdtLayout::LINUX_X86_64);
    let gdt = Gdt::new(t.platform().0.page(1), 16).unwrap();
    // SAFETY: page 1.
    let e = unsafe { t.load_gdt(&gdt) }.unwrap_err();
    assert!(matches!(e, PvError::Unsupported { backend: "xen", .. }));
    assert_eq!(t.queued(), 0);
    assert!(t.platform().0.log().is_empty());
}

#[test]
fn names() {
    let o = ops();
    assert_eq!(o.name(), "xen");
    assert_eq!(nr::name(nr::MMUEXT_OP), "mmuext_op");
    assert_eq!(vec![nr::name(99)], ["unknown hypercall"]);
}
