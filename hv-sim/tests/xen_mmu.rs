//! Xen's page-table types and MMU calls for a 64-bit PV guest, as hv-sim
//! models them (`hv-sim/src/xen/pagetables.rs`, XEN-SEMANTICS.md §12):
//! every rule with its errno, each test naming the Xen 4.17 function
//! (`xen/arch/x86/mm.c` unless said otherwise). In process: no KVM, QEMU or
//! Xen. The tests marked "real Xen showed" pin down what the differential
//! battery (`tests/xen_differential.rs`) found real Xen doing that hv-sim
//! did not.

#[path = "common/xen.rs"]
mod xen_helpers;

use hv_sim::xen::domain::guest_pf_error_code;
use hv_sim::xen::*;
use xen_helpers::{hc, map, mfn};

/// `_PAGE_USER`, `_PAGE_GUEST_KERNEL`, `_PAGE_GLOBAL`, `_PAGE_ACCESSED`,
/// `_PAGE_DIRTY`, `_PAGE_PCD`, `_PAGE_PSE`.
const US: u64 = 4;
const GK: u64 = 1 << 52;
const G: u64 = 0x100;
const A: u64 = 0x20;
const D: u64 = 0x40;
const PCD: u64 = 0x10;
const PSE: u64 = 0x80;
const KDATA: u64 = 0x00cf_9300_0000_ffff;

/// A pv64 domain and one page of arguments: mmuext ops from offset 0,
/// mmu_update requests from 1024, `done` at 2048.
struct T {
    d: XenDomain,
    args: u64,
}

impl T {
    fn new(privileged: bool) -> T {
        let d = XenDomain::pv64(64, 1);
        d.set_privileged(privileged);
        let args = d.alloc_pages(1);
        T { d, args }
    }

    fn hc(&self, nr: u64, a: &[u64]) -> i64 {
        hc(&self.d, nr, a)
    }

    /// A fresh page: (va, mfn), mapped writable.
    fn page(&self) -> (u64, u64) {
        let va = self.d.alloc_pages(1);
        (va, mfn(&self.d, va))
    }

    fn put(&self, va: u64, slot: u64, v: u64) {
        assert!(self.d.host_write_u64(va + slot * 8, v));
    }

    fn get(&self, va: u64, slot: u64) -> u64 {
        self.d.host_read_u64(va + slot * 8).unwrap()
    }

    /// update_va_mapping of `va` to its own frame.
    fn map(&self, va: u64, rw: bool) -> i64 {
        map(&self.d, va, rw)
    }

    fn done_va(&self) -> u64 {
        self.args + 2048
    }

    fn done(&self) -> u64 {
        self.d.host_read_u64(self.done_va()).unwrap()
    }

    /// mmuext_op with `ops`, `done` at its place (preset to all ones).
    fn ext(&self, ops: &[(u32, u64, u64)], dom: u16) -> i64 {
        for (k, (cmd, a1, a2)) in ops.iter().enumerate() {
            let at = self.args + 24 * k as u64;
            self.d.host_write_u64(at, u64::from(*cmd));
            self.d.host_write_u64(at + 8, *a1);
            self.d.host_write_u64(at + 16, *a2);
        }
        self.d.host_write_u64(self.done_va(), u64::MAX);
        self.hc(
            nr::MMUEXT_OP,
            &[self.args, ops.len() as u64, self.done_va(), u64::from(dom)],
        )
    }

    fn pin(&self, level: u32, mfn: u64) -> i64 {
        self.ext(&[(MMUEXT_PIN_L1_TABLE + level - 1, mfn, 0)], DOMID_SELF)
    }

    fn unpin(&self, mfn: u64) -> i64 {
        self.ext(&[(MMUEXT_UNPIN_TABLE, mfn, 0)], DOMID_SELF)
    }

    /// mmu_update with (ptr, val) requests.
    fn mmu(&self, reqs: &[(u64, u64)], dom: u32) -> i64 {
        for (k, (p, v)) in reqs.iter().enumerate() {
            let at = self.args + 1024 + 16 * k as u64;
            self.d.host_write_u64(at, *p);
            self.d.host_write_u64(at + 8, *v);
        }
        self.d.host_write_u64(self.done_va(), u64::MAX);
        self.hc(
            nr::MMU_UPDATE,
            &[
                self.args + 1024,
                reqs.len() as u64,
                self.done_va(),
                u64::from(dom),
            ],
        )
    }

    fn typ(&self, mfn: u64) -> (PageType, u32) {
        let f = self.d.frame(mfn).unwrap();
        (f.typ, f.type_count)
    }

    fn ok(&self) {
        self.d.check_invariants().unwrap();
    }

    /// A read-only page holding an L1 with `entries`; (va, mfn).
    fn l1(&self, entries: &[(u64, u64)]) -> (u64, u64) {
        let (va, m) = self.page();
        for (s, v) in entries {
            self.put(va, *s, *v);
        }
        assert_eq!(self.map(va, false), 0);
        (va, m)
    }
}

/// The done value written back (low 4 bytes over the all-ones preset).
fn done32(t: &T) -> u64 {
    t.done() & 0xffff_ffff
}

// --------------------------------------------------------------------
// L1 tables: promote_l1_table, get_page_from_l1e, adjust_guest_l1e

/// `promote_l1_table`: every present entry is checked by
/// `get_page_from_l1e` and written back adjusted (`adjust_guest_l1e`:
/// kernel entries get _PAGE_USER | _PAGE_GUEST_KERNEL, user ones
/// _PAGE_GLOBAL); a writable entry takes a writable type reference on its
/// frame; not-present entries are not looked at.
#[test]
fn pinning_an_l1_validates_and_adjusts_every_entry() {
    let t = T::new(false);
    let (_, xm) = t.page();
    let (_, ym) = t.page();
    let (tv, tm) = t.l1(&[
        (0, xm << 12 | 1),
        (3, ym << 12 | 3),
        (4, xm << 12 | 5),
        (7, 0xdead_b000 | 2),
    ]);
    assert_eq!(t.pin(1, tm), 0);
    assert_eq!(t.get(tv, 0), xm << 12 | 1 | US | GK);
    assert_eq!(t.get(tv, 3), ym << 12 | 3 | US | GK);
    assert_eq!(t.get(tv, 4), xm << 12 | 5 | G);
    assert_eq!(t.get(tv, 7), 0xdead_b000 | 2);
    assert_eq!(t.typ(tm), (PageType::L1, 1));
    assert!(t.d.frame(tm).unwrap().validated);
    assert!(t.d.is_pinned(tm));
    // Y: the direct map's writable mapping and the entry's.
    assert_eq!(t.typ(ym), (PageType::Writable, 2));
    assert_eq!(t.d.frame(xm).unwrap().refs, 3);
    // A page table cannot be mapped writable (get_page_from_l1e).
    assert_eq!(t.map(tv, true), -EBUSY);
    t.ok();
}

/// MMUEXT_PIN_L*_TABLE on a pinned frame: -EINVAL ("already pinned", the
/// extra type reference dropped); MMUEXT_UNPIN_TABLE on a frame not pinned:
/// -EINVAL. Unpinning drops the last reference: `demote_l1_table` releases
/// every entry's references. `done` counts the ops before the failing one.
#[test]
fn pin_twice_and_unpin_twice_are_einval() {
    let t = T::new(false);
    let (_, ym) = t.page();
    let (_, tm) = t.l1(&[(1, ym << 12 | 3)]);
    let pin = (MMUEXT_PIN_L1_TABLE, tm, 0);
    let unpin = (MMUEXT_UNPIN_TABLE, tm, 0);
    assert_eq!(t.ext(&[pin, pin], DOMID_SELF), -EINVAL);
    assert_eq!(done32(&t), 1);
    assert_eq!(t.typ(tm), (PageType::L1, 1));
    assert_eq!(t.typ(ym), (PageType::Writable, 2));
    assert_eq!(t.ext(&[unpin, unpin], DOMID_SELF), -EINVAL);
    assert_eq!(done32(&t), 1);
    assert!(!t.d.is_pinned(tm));
    let f = t.d.frame(tm).unwrap();
    assert_eq!((f.type_count, f.validated), (0, false));
    assert_eq!(t.typ(ym), (PageType::Writable, 1));
    t.ok();
}

/// `_get_page_type`: a frame with writable mappings (type count > 0) cannot
/// take a page-table type: -EINVAL, nothing validated.
#[test]
fn pinning_a_page_mapped_writable_is_einval() {
    let t = T::new(false);
    let (tv, tm) = t.page();
    t.put(tv, 0, 0x1234_5000 | 1);
    assert_eq!(t.pin(1, tm), -EINVAL);
    assert_eq!(t.typ(tm), (PageType::Writable, 1));
    assert_eq!(t.get(tv, 0), 0x1234_5000 | 1);
    t.ok();
}

/// `_get_page_type`: a live GDT frame (seg_desc, in use) cannot become a
/// page table: -EINVAL; nor can a page table become a GDT frame
/// (`pv_set_gdt`: -EINVAL).
#[test]
fn a_live_gdt_frame_and_a_page_table_exclude_each_other() {
    let t = T::new(false);
    let (gv, gm) = t.page();
    t.put(gv, 1, KDATA);
    assert_eq!(t.map(gv, false), 0);
    let list = t.d.alloc_pages(1);
    t.put(list, 0, gm);
    assert_eq!(t.hc(nr::SET_GDT, &[list, 2]), 0);
    assert_eq!(t.pin(1, gm), -EINVAL);
    assert_eq!(t.typ(gm), (PageType::SegDesc, 1));
    let (_, tm) = t.l1(&[]);
    assert_eq!(t.pin(1, tm), 0);
    t.put(list, 0, tm);
    assert_eq!(t.hc(nr::SET_GDT, &[list, 2]), -EINVAL);
    t.ok();
}

/// `get_page_from_l1e`: a writable entry for a frame that cannot take the
/// writable type (a live descriptor page, a page table) is -EBUSY; a
/// read-only one is fine. At the first bad entry `promote_l1_table` drops
/// the references of the entries before it, but their write-backs stay;
/// the frame is left without a type (`validate_page`).
#[test]
fn a_writable_entry_for_a_descriptor_page_fails_the_l1_with_ebusy() {
    let t = T::new(false);
    let (gv, gm) = t.page();
    assert_eq!(t.map(gv, false), 0);
    let list = t.d.alloc_pages(1);
    t.put(list, 0, gm);
    assert_eq!(t.hc(nr::SET_GDT, &[list, 1]), 0);
    let (_, xm) = t.page();
    let (tv, tm) = t.l1(&[(0, xm << 12 | 3), (1, gm << 12 | 1), (2, gm << 12 | 3)]);
    assert_eq!(t.pin(1, tm), -EBUSY);
    assert!(
        t.d.trace()
            .last_call()
            .unwrap()
            .1
            .unwrap()
            .contains("slot 2"),
        "{}",
        t.d.trace()
    );
    assert_eq!(t.get(tv, 0), xm << 12 | 3 | US | GK, "write-back stays");
    assert_eq!(t.get(tv, 2), gm << 12 | 3, "bad entry untouched");
    assert_eq!(t.typ(tm), (PageType::None, 0));
    assert_eq!(t.typ(xm), (PageType::Writable, 1), "reference dropped");
    assert_eq!(t.typ(gm), (PageType::SegDesc, 1));
    t.ok();
}

/// `get_page_from_l1e`: `l1_disallow_mask` (cache attributes for a domU,
/// -EINVAL; allowed for the hardware domain), a frame owned by someone
/// else (-EBUSY), a frame that is not RAM (-EPERM), INVALID_MFN (-EINVAL).
#[test]
fn l1_entry_flag_and_frame_rules() {
    let t = T::new(false);
    let (_, xm) = t.page();
    let pin_with = |t: &T, e: u64| {
        let (_, tm) = t.l1(&[(5, e)]);
        t.pin(1, tm)
    };
    assert_eq!(pin_with(&t, xm << 12 | 1 | PCD), -EINVAL);
    assert_eq!(pin_with(&t, (xm + 1) << 12 | 1), -EBUSY);
    assert_eq!(pin_with(&t, 1 << 48 | 1), -EPERM);
    assert_eq!(pin_with(&t, ((1u64 << 40) - 1) << 12 | 1), -EINVAL);
    let t = T::new(true);
    let (_, xm) = t.page();
    assert_eq!(pin_with(&t, xm << 12 | 1 | PCD), 0);
    t.ok();
}

// --------------------------------------------------------------------
// Upper levels: promote_l2_table .. promote_l4_table, get_page_from_l2e ..

/// `get_page_from_l2e`: an L2 entry's frame takes the L1 type (validated
/// then); the L2's last reference going (`demote_l2_table`) drops it again,
/// and with it the L1's entries' references.
#[test]
fn an_l2_validates_the_l1s_it_names() {
    let t = T::new(false);
    let (_, ym) = t.page();
    let (_, am) = t.l1(&[(0, ym << 12 | 3)]);
    let (bv, bm) = t.l1(&[(9, am << 12 | 7)]);
    assert_eq!(t.pin(2, bm), 0);
    assert_eq!(t.typ(am), (PageType::L1, 1));
    assert!(!t.d.is_pinned(am));
    assert_eq!(t.typ(ym), (PageType::Writable, 2));
    // adjust_guest_l2e: _PAGE_USER.
    assert_eq!(t.get(bv, 9), am << 12 | 7);
    assert_eq!(t.unpin(bm), 0);
    assert_eq!(t.typ(am).1, 0);
    assert_eq!(t.typ(ym), (PageType::Writable, 1));
    t.ok();
}

/// `L2_DISALLOW_MASK` (= `base_disallow_mask`): PSE, G, PWT, PCD refused
/// with -EINVAL, from every domain.
#[test]
fn l2_entries_with_pse_or_global_are_einval() {
    let t = T::new(true);
    let (_, am) = t.l1(&[]);
    for bad in [PSE, G, PCD, 0x8] {
        let (_, bm) = t.l1(&[(0, am << 12 | 5 | bad)]);
        assert_eq!(t.pin(2, bm), -EINVAL, "flag {bad:#x}");
    }
    t.ok();
}

/// `get_l2_linear_pagetable`: an entry naming a validated L2 read-only is a
/// linear page table (`linear_pt_count`: +1 in the table holding it, -1 in
/// the one named); writable it is -EINVAL; naming the table itself
/// read-only takes no reference. A table mapped linearly cannot hold
/// linear entries itself.
#[test]
fn read_only_l2_entries_naming_an_l2_are_linear_page_tables() {
    let t = T::new(false);
    let (_, bm) = t.l1(&[]);
    assert_eq!(t.pin(2, bm), 0);
    let (cv, cm) = t.page();
    t.put(cv, 0, bm << 12 | 5);
    t.put(cv, 1, cm << 12 | 5);
    assert_eq!(t.map(cv, false), 0);
    assert_eq!(t.pin(2, cm), 0);
    assert_eq!(t.d.linear_pt_count(cm), 1);
    assert_eq!(t.d.linear_pt_count(bm), -1);
    assert_eq!(t.typ(bm), (PageType::L2, 2));
    assert_eq!(t.typ(cm), (PageType::L2, 1), "the self entry holds nothing");
    t.ok();
    // B is mapped linearly: it may not hold a linear entry itself.
    let (ev, em) = t.page();
    assert_eq!(t.pin(2, em), -EINVAL, "E is still mapped writable");
    assert_eq!(t.map(ev, false), 0);
    assert_eq!(t.pin(2, em), 0);
    assert_eq!(
        t.mmu(
            &[((bm << 12) | (8 * 3), em << 12 | 5)],
            u32::from(DOMID_SELF)
        ),
        -EINVAL
    );
    // Writable: refused.
    assert_eq!(
        t.mmu(
            &[((cm << 12) | (8 * 4), em << 12 | 7)],
            u32::from(DOMID_SELF)
        ),
        -EINVAL
    );
    assert_eq!(t.unpin(cm), 0);
    assert_eq!(t.d.linear_pt_count(bm), 0);
    assert_eq!(t.typ(bm), (PageType::L2, 1));
    t.ok();
}

/// `promote_l2_table` failing at a later slot: the entries before it were
/// written back adjusted and keep that; their references are dropped
/// (through `old_guest_table` on Xen, at once here); the caller sees the
/// failing entry's errno.
#[test]
fn an_l2_failing_at_a_later_slot_drops_the_earlier_references() {
    let t = T::new(false);
    let (_, am) = t.l1(&[]);
    let (bv, bm) = t.l1(&[(0, am << 12 | 1), (5, am << 12 | 1 | PSE)]);
    assert_eq!(t.pin(2, bm), -EINVAL);
    assert_eq!(t.get(bv, 0), am << 12 | 1 | US);
    assert_eq!(t.typ(am).1, 0);
    assert_eq!(t.typ(bm).1, 0);
    t.ok();
}

/// The errno of a nested validation is the caller's: an L2 naming an L1
/// whose entry maps a live descriptor page writable fails with -EBUSY
/// (`get_page_from_l2e` tries the linear case on -EINVAL only).
#[test]
fn a_nested_validation_failure_keeps_its_errno() {
    let t = T::new(false);
    let (gv, gm) = t.page();
    assert_eq!(t.map(gv, false), 0);
    let list = t.d.alloc_pages(1);
    t.put(list, 0, gm);
    assert_eq!(t.hc(nr::SET_GDT, &[list, 1]), 0);
    let (_, am) = t.l1(&[(2, gm << 12 | 3)]);
    let (_, bm) = t.l1(&[(0, am << 12 | 7)]);
    assert_eq!(t.pin(2, bm), -EBUSY);
    assert_eq!(t.typ(am), (PageType::None, 0));
    t.ok();
}

/// `promote_l4_table`: slots 256-271 are Xen's (`is_guest_l4_slot`), not
/// validated, and filled by `init_xen_l4_slots` (slot 258 maps the table
/// itself); `mod_l4_entry` refuses them with -EINVAL. L3 entries name L2s,
/// L4 entries L3s; adjust_guest_l4e adds _PAGE_ACCESSED | _PAGE_USER.
#[test]
fn an_l4_hierarchy_and_xen_slots() {
    let t = T::new(false);
    let (_, l1) = t.l1(&[]);
    let (_, l2) = t.l1(&[(0, l1 << 12 | 7)]);
    let (_, l3) = t.l1(&[(0, l2 << 12 | 7)]);
    let (l4v, l4) = t.page();
    t.put(l4v, 1, l3 << 12 | 3);
    t.put(l4v, 260, 0xdead_beef);
    assert_eq!(t.map(l4v, false), 0);
    assert_eq!(t.pin(4, l4), 0);
    assert_eq!(t.get(l4v, 1), l3 << 12 | 3 | A | US);
    assert_eq!(t.get(l4v, 258), l4 << 12 | 0x63);
    assert_ne!(t.get(l4v, 260), 0xdead_beef);
    for (m, ty) in [(l3, PageType::L3), (l2, PageType::L2), (l1, PageType::L1)] {
        assert_eq!(t.typ(m), (ty, 1));
    }
    assert_eq!(
        t.mmu(&[((l4 << 12) | (8 * 262), 0)], u32::from(DOMID_SELF)),
        -EINVAL
    );
    assert_eq!(t.unpin(l4), 0);
    for m in [l1, l2, l3, l4] {
        assert_eq!(t.typ(m).1, 0);
    }
    t.ok();
}

// --------------------------------------------------------------------
// Base pointers: new_guest_cr3, MMUEXT_NEW_USER_BASEPTR

/// `new_guest_cr3`: the new root takes the L4 type (validated: a page with
/// a bad entry, or one mapped writable, is -EINVAL and nothing changes);
/// the old root's references go; the current root again is a no-op that
/// keeps the LDT; a foreign page owner is -EPERM.
#[test]
fn new_baseptr_validates_the_root() {
    let t = T::new(true);
    let (bad_v, bad) = t.page();
    t.put(bad_v, 3, 0x5000 | 1);
    assert_eq!(t.map(bad_v, false), 0);
    assert_eq!(t.ext(&[(MMUEXT_NEW_BASEPTR, bad, 0)], DOMID_SELF), -EINVAL);
    assert_eq!(t.d.vcpu(0).cr3, None);
    assert_eq!(t.typ(bad).1, 0);
    let (_, w) = t.page();
    assert_eq!(t.ext(&[(MMUEXT_NEW_BASEPTR, w, 0)], DOMID_SELF), -EINVAL);
    let (_, r1) = t.l1(&[]);
    let (_, r2) = t.l1(&[]);
    assert_eq!(t.ext(&[(MMUEXT_NEW_BASEPTR, r1, 0)], DOMID_SELF), 0);
    assert_eq!(t.typ(r1), (PageType::L4, 1));
    assert_eq!(
        t.ext(&[(MMUEXT_NEW_BASEPTR, r2, 0)], DOMID_IO),
        -EPERM,
        "the hardware domain may name DOMID_IO, but not for this"
    );
    // Same root: no-op (the LDT stays).
    let ldt = t.d.alloc_pages(1);
    assert_eq!(t.ext(&[(MMUEXT_SET_LDT, ldt, 16)], DOMID_SELF), 0);
    assert_eq!(t.ext(&[(MMUEXT_NEW_BASEPTR, r1, 0)], DOMID_SELF), 0);
    assert_eq!(t.d.vcpu(0).ldt_ents, 16);
    assert_eq!(t.ext(&[(MMUEXT_NEW_BASEPTR, r2, 0)], DOMID_SELF), 0);
    assert_eq!(t.typ(r1).1, 0);
    assert_eq!(t.typ(r2), (PageType::L4, 1));
    assert_eq!(t.d.vcpu(0).cr3, Some(r2));
    t.ok();
}

/// MMUEXT_NEW_USER_BASEPTR: the user root takes the L4 type; 0 clears it;
/// the same value again is a no-op.
#[test]
fn new_user_baseptr_takes_an_l4_reference() {
    let t = T::new(false);
    let (_, r) = t.l1(&[]);
    let set = |m: u64| t.ext(&[(MMUEXT_NEW_USER_BASEPTR, m, 0)], DOMID_SELF);
    assert_eq!(set(r), 0);
    assert_eq!(set(r), 0);
    assert_eq!(t.typ(r), (PageType::L4, 1));
    assert_eq!(t.d.user_baseptr(0), Some(r));
    assert_eq!(set(r + 1), -EINVAL);
    assert_eq!(set(0), 0);
    assert_eq!(t.d.user_baseptr(0), None);
    assert_eq!(t.typ(r).1, 0);
    t.ok();
}

// --------------------------------------------------------------------
// Flushes and page commands (do_mmuext_op)

/// MMUEXT_TLB_FLUSH_MULTI / INVLPG_MULTI: `vcpumask_to_pcpumask` failing to
/// read the bitmap makes the op -EINVAL (not -EFAULT); an INVLPG_MULTI
/// address that is not a guest address is skipped.
#[test]
fn multi_flushes_want_a_readable_bitmap() {
    let t = T::new(false);
    let bm = t.d.alloc_pages(1);
    t.put(bm, 0, 1);
    for cmd in [MMUEXT_TLB_FLUSH_MULTI, MMUEXT_INVLPG_MULTI] {
        assert_eq!(t.ext(&[(cmd, bm, bm)], DOMID_SELF), 0);
        assert_eq!(t.ext(&[(cmd, 0x8000_0000_0000, bm)], DOMID_SELF), 0);
        assert_eq!(t.ext(&[(cmd, bm, 0x8000_0000_0000)], DOMID_SELF), -EINVAL);
        assert_eq!(t.ext(&[(cmd, bm, 0x10)], DOMID_SELF), -EINVAL);
    }
    t.ok();
}

/// `do_mmuext_op`: the hardware domain may name DOMID_IO / DOMID_XEN (the
/// default XSM policy, `xsm_mmuext_op`, lets a control domain act on any
/// domain); then every flush, SET_LDT, NEW_BASEPTR wants the page owner to
/// be the caller (-EPERM), PIN/UNPIN/CLEAR_PAGE find no page of that owner
/// (`get_page_from_gfn`, -EINVAL). A domU is refused up front (-EPERM).
/// (The battery's `mmuext(10 dom=0x7ff1) = -1` lines agree with real Xen.)
#[test]
fn foreign_page_owners_of_the_hardware_domain() {
    let t = T::new(true);
    let (_, m) = t.l1(&[]);
    for dom in [DOMID_IO, DOMID_XEN] {
        for cmd in [
            MMUEXT_TLB_FLUSH_LOCAL,
            MMUEXT_INVLPG_LOCAL,
            MMUEXT_TLB_FLUSH_ALL,
            MMUEXT_INVLPG_ALL,
            MMUEXT_TLB_FLUSH_MULTI,
            MMUEXT_FLUSH_CACHE,
            MMUEXT_NEW_USER_BASEPTR,
        ] {
            assert_eq!(t.ext(&[(cmd, 0, t.args)], dom), -EPERM, "cmd {cmd}");
        }
        assert_eq!(t.ext(&[(MMUEXT_PIN_L1_TABLE, m, 0)], dom), -EINVAL);
        assert_eq!(t.ext(&[(MMUEXT_UNPIN_TABLE, m, 0)], dom), -EINVAL);
        assert_eq!(t.ext(&[(MMUEXT_CLEAR_PAGE, m, 0)], dom), -EINVAL);
        assert_eq!(t.ext(&[(MMUEXT_MARK_SUPER, m, 0)], dom), -EOPNOTSUPP);
    }
    assert_eq!(t.ext(&[(MMUEXT_PIN_L1_TABLE, m, 0)], 0x7FF3), -ESRCH);
    let u = T::new(false);
    assert_eq!(u.ext(&[(MMUEXT_TLB_FLUSH_LOCAL, 0, 0)], DOMID_IO), -EPERM);
    t.ok();
}

/// MMUEXT_FLUSH_CACHE needs cache-flush permission (-EACCES without),
/// FLUSH_CACHE_GLOBAL too (-EINVAL without).
#[test]
fn cache_flushes_need_io_capabilities() {
    let u = T::new(false);
    assert_eq!(u.ext(&[(MMUEXT_FLUSH_CACHE, 0, 0)], DOMID_SELF), -EACCES);
    assert_eq!(
        u.ext(&[(MMUEXT_FLUSH_CACHE_GLOBAL, 0, 0)], DOMID_SELF),
        -EINVAL
    );
    let d = T::new(true);
    assert_eq!(d.ext(&[(MMUEXT_FLUSH_CACHE, 0, 0)], DOMID_SELF), 0);
    assert_eq!(d.ext(&[(MMUEXT_FLUSH_CACHE_GLOBAL, 0, 0)], DOMID_SELF), 0);
}

/// MMUEXT_CLEAR_PAGE / COPY_PAGE: the destination takes the writable type
/// (a page table in use: -EINVAL); a source or destination not the
/// domain's: -EINVAL.
#[test]
fn clear_and_copy_page_want_a_writable_destination() {
    let t = T::new(false);
    let (sv, sm) = t.page();
    t.put(sv, 3, 0x77);
    let (dv, dm) = t.page();
    assert_eq!(t.ext(&[(MMUEXT_COPY_PAGE, dm, sm)], DOMID_SELF), 0);
    assert_eq!(t.get(dv, 3), 0x77);
    assert_eq!(t.ext(&[(MMUEXT_CLEAR_PAGE, dm, 0)], DOMID_SELF), 0);
    assert_eq!(t.get(dv, 3), 0);
    let (_, tm) = t.l1(&[]);
    assert_eq!(t.pin(1, tm), 0);
    assert_eq!(t.ext(&[(MMUEXT_CLEAR_PAGE, tm, 0)], DOMID_SELF), -EINVAL);
    assert_eq!(t.ext(&[(MMUEXT_COPY_PAGE, tm, sm)], DOMID_SELF), -EINVAL);
    assert_eq!(
        t.ext(&[(MMUEXT_COPY_PAGE, dm, sm + 1)], DOMID_SELF),
        -EINVAL
    );
    t.ok();
}

// --------------------------------------------------------------------
// mmu_update (do_mmu_update, mod_l1_entry .. mod_l4_entry)

/// MMU_NORMAL_PT_UPDATE on a pinned L1 (`mod_l1_entry`): a new entry is
/// checked like a validated one (writable to a page table: -EBUSY; domU
/// cache attributes: -EINVAL), the old one's references go; `done` counts
/// the requests before the failing one.
#[test]
fn mmu_update_of_an_l1_entry() {
    let t = T::new(false);
    let (_, xm) = t.page();
    let (tv, tm) = t.l1(&[]);
    assert_eq!(t.pin(1, tm), 0);
    let slot = |s: u64| (tm << 12) | (s * 8);
    let me = u32::from(DOMID_SELF);
    assert_eq!(t.mmu(&[(slot(2), xm << 12 | 3)], me), 0);
    assert_eq!(done32(&t), 1);
    assert_eq!(t.get(tv, 2), xm << 12 | 3 | US | GK);
    assert_eq!(t.typ(xm), (PageType::Writable, 2));
    let r = t.mmu(
        &[
            (slot(3), xm << 12 | 1),
            (slot(4), tm << 12 | 3),
            (slot(5), xm << 12 | 1),
        ],
        me,
    );
    assert_eq!(r, -EBUSY);
    assert_eq!(done32(&t), 1);
    assert_eq!(t.get(tv, 4), 0);
    assert_eq!(t.mmu(&[(slot(5), xm << 12 | 1 | PCD)], me), -EINVAL);
    assert_eq!(t.mmu(&[(slot(2), 0)], me), 0);
    assert_eq!(t.typ(xm), (PageType::Writable, 1));
    t.ok();
}

/// `mod_l1_entry`'s fast path: an entry differing only in
/// `FASTPATH_FLAG_WHITELIST` bits (A, D, NX, G, US, software bits) is
/// written without new references; MMU_PT_UPDATE_PRESERVE_AD keeps the old
/// entry's A and D bits.
#[test]
fn mmu_update_fast_path_and_preserve_ad() {
    let t = T::new(false);
    let (_, xm) = t.page();
    let (tv, tm) = t.l1(&[(0, xm << 12 | 3 | A | D)]);
    assert_eq!(t.pin(1, tm), 0);
    let me = u32::from(DOMID_SELF);
    assert_eq!(
        t.mmu(
            &[(tm << 12 | MMU_PT_UPDATE_PRESERVE_AD, xm << 12 | 3 | 1 << 63)],
            me
        ),
        0
    );
    assert_eq!(t.get(tv, 0), xm << 12 | 3 | 1 << 63 | US | GK | A | D);
    assert_eq!(t.mmu(&[(tm << 12, xm << 12 | 3)], me), 0);
    assert_eq!(t.get(tv, 0), xm << 12 | 3 | US | GK);
    assert_eq!(t.typ(xm), (PageType::Writable, 2));
    t.ok();
}

/// `do_mmu_update` on a frame that is not a page table in use: a frame that
/// can take the writable type gets the raw value (`paging_write_guest_entry`,
/// a seg_desc frame out of use becomes writable); a live descriptor page
/// is -EINVAL; a frame not the domain's is -EINVAL.
#[test]
fn mmu_update_of_a_frame_that_is_no_page_table() {
    let t = T::new(false);
    let me = u32::from(DOMID_SELF);
    let (pv, pm) = t.page();
    assert_eq!(t.mmu(&[(pm << 12 | 8, 0x1234)], me), 0);
    assert_eq!(t.get(pv, 1), 0x1234);
    let (gv, gm) = t.page();
    assert_eq!(t.map(gv, false), 0);
    let list = t.d.alloc_pages(1);
    t.put(list, 0, gm);
    assert_eq!(t.hc(nr::SET_GDT, &[list, 1]), 0);
    assert_eq!(t.mmu(&[(gm << 12 | 8, 0x1234)], me), -EINVAL);
    assert_eq!(t.hc(nr::SET_GDT, &[list, 0]), 0);
    assert_eq!(t.typ(gm), (PageType::SegDesc, 0));
    assert_eq!(t.mmu(&[(gm << 12 | 8, 0x1234)], me), 0);
    assert_eq!(t.get(gv, 1), 0x1234);
    assert_eq!(t.typ(gm), (PageType::Writable, 0));
    assert_eq!(t.mmu(&[((pm + 1) << 12, 0)], me), -EINVAL);
    t.ok();
}

/// MMU_MACHPHYS_UPDATE: the frame must be the page owner's (-EINVAL);
/// an unknown command (low 3 bits of `ptr`) is -ENOSYS; a continuation's
/// final status (count = MMU_UPDATE_PREEMPTED, no requests) hands back
/// `foreigndom`.
#[test]
fn mmu_update_commands() {
    let t = T::new(false);
    let me = u32::from(DOMID_SELF);
    let (_, pm) = t.page();
    assert_eq!(t.mmu(&[(pm << 12 | MMU_MACHPHYS_UPDATE, 0x42)], me), 0);
    assert_eq!(t.d.machphys_entry(pm), Some(0x42));
    assert_eq!(
        t.mmu(&[((pm + 1) << 12 | MMU_MACHPHYS_UPDATE, 0x42)], me),
        -EINVAL
    );
    assert_eq!(t.mmu(&[(pm << 12 | 7, 0)], me), -ENOSYS);
    assert_eq!(t.hc(nr::MMU_UPDATE, &[0, 0x8000_0000, 0, 0xffff_fff2]), -14);
    t.ok();
}

/// `do_mmu_update`'s `foreigndom`: the upper half names the page-table
/// owner plus one (not a domain: -ESRCH before anything, `done` untouched);
/// the caller's own id is -ESRCH with `done` written (0); DOMID_IO's or
/// DOMID_XEN's pages are none of the caller's (L1: -EBUSY through
/// `xsm_priv_mapping`; L2-L4: -EINVAL); a domU may not name DOMID_XEN
/// (XSM, -EPERM).
#[test]
fn mmu_update_foreigndom() {
    let t = T::new(true);
    let (_, xm) = t.page();
    let (_, tm) = t.l1(&[]);
    assert_eq!(t.pin(1, tm), 0);
    let (_, l2) = t.l1(&[]);
    assert_eq!(t.pin(2, l2), 0);
    let req = [(tm << 12, xm << 12 | 1)];
    assert_eq!(t.mmu(&req, 2 << 16 | u32::from(DOMID_SELF)), -ESRCH);
    assert_eq!(t.done(), u64::MAX);
    assert_eq!(t.mmu(&req, 1 << 16 | u32::from(DOMID_SELF)), 0);
    assert_eq!(t.mmu(&req, 0), -ESRCH);
    assert_eq!(done32(&t), 0);
    assert_eq!(t.mmu(&req, 1), -ESRCH);
    // (The same entry again would take the fast path, owner unchecked.)
    let other = [(tm << 12 | 8, xm << 12 | 1)];
    assert_eq!(t.mmu(&req, u32::from(DOMID_IO)), 0);
    assert_eq!(t.mmu(&other, u32::from(DOMID_IO)), -EBUSY);
    assert_eq!(t.mmu(&other, u32::from(DOMID_XEN)), -EBUSY);
    assert_eq!(
        t.mmu(&[(l2 << 12, tm << 12 | 5)], u32::from(DOMID_IO)),
        -EINVAL
    );
    assert_eq!(t.mmu(&[(tm << 12, 0)], u32::from(DOMID_IO)), 0);
    let u = T::new(false);
    let (_, um) = u.page();
    assert_eq!(u.mmu(&[(um << 12, 0)], u32::from(DOMID_XEN)), -EPERM);
    assert_eq!(u.mmu(&[(um << 12, 0)], u32::from(DOMID_IO)), 0);
    // A domU naming dom0 (which exists): XSM refuses the request, -EPERM
    // (not -ESRCH: issue 8 item 5). From dom0 the same id is its own:
    // -ESRCH, above.
    assert_eq!(u.mmu(&[(um << 12, 0)], 0), -EPERM);
    t.ok();
}

// --------------------------------------------------------------------
// What real Xen showed (the differential battery)

/// Real Xen showed (battery `table(P6 L1 ...) rw=-16 ro=0 = 0`, hv-sim
/// had -14): a store by the hardware domain's kernel into a read-only L1
/// page table in use does not fault: Xen emulates it as a validated entry
/// update (`pv_ro_page_fault` → `ptwr_emulated_update`: `get_page_from_l1e`,
/// `adjust_guest_l1e`, the old entry's references dropped). An entry Xen
/// refuses, a misaligned store or a store into any other read-only page
/// still faults; a domU gets no emulation without
/// VMASST_TYPE_writable_pagetables.
#[test]
fn stores_into_an_l1_in_use_are_emulated_for_the_hardware_domain() {
    let t = T::new(true);
    let (_, xm) = t.page();
    let (tv, tm) = t.l1(&[(0, xm << 12 | 3)]);
    assert_eq!(t.pin(1, tm), 0);
    assert!(t.d.ptwr_write(tv + 8, 8, xm << 12 | 1));
    assert_eq!(t.get(tv, 1), xm << 12 | 1 | US | GK);
    assert!(t.d.ptwr_write(tv, 8, 0), "clearing entry 0");
    assert_eq!(t.typ(xm), (PageType::Writable, 1));
    assert!(
        !t.d.ptwr_write(tv + 16, 8, tm << 12 | 3),
        "writable self map"
    );
    assert!(!t.d.ptwr_write(tv + 20, 8, 0), "misaligned");
    // A sub-word store is merged with the rest of the entry.
    assert!(t.d.ptwr_write(tv + 8, 4, xm << 12 | 3));
    assert_eq!(t.get(tv, 1), xm << 12 | 3 | US | GK);
    t.ok();
    // Not an L1: faults.
    let (gv, _) = t.l1(&[]);
    assert!(!t.d.ptwr_write(gv, 8, 0));
    // The faulting instruction: `mov [rax], rdx` (48 89 10).
    let mut gpr = [0u64; 16];
    gpr[0] = tv + 8 * 6;
    gpr[2] = xm << 12 | 5;
    assert_eq!(
        t.d.ptwr_fault(tv + 48, &[0x48, 0x89, 0x10], 0x1000, &gpr),
        Some(0x1003)
    );
    assert_eq!(t.get(tv, 6), xm << 12 | 5 | G);
    // A domU: no emulation.
    let u = T::new(false);
    let (uv, um) = u.l1(&[]);
    assert_eq!(u.pin(1, um), 0);
    assert!(!u.d.ptwr_write(uv, 8, 0));
    t.ok();
}

/// Real Xen showed (battery `tree(...) P0:-16/v14:3/0`, hv-sim had
/// `v14:7`): a #PF taken in guest kernel mode reaches the guest with the
/// user bit clear, although the 64-bit PV kernel runs in ring 3
/// (`pv_inject_event`).
#[test]
fn a_page_fault_in_guest_kernel_mode_has_the_user_bit_clear() {
    assert_eq!(guest_pf_error_code(7, true), 3);
    assert_eq!(guest_pf_error_code(3, false), 7);
    assert_eq!(guest_pf_error_code(0, true), 0);
}

// --------------------------------------------------------------------
// The dom0 builder's tables (mark_pv_pt_pages_rdonly) and live L1s

/// Guest RAM owned by the test, for a domain with guest VA = GPA.
struct Ram {
    ptr: std::ptr::NonNull<u8>,
    layout: std::alloc::Layout,
}

impl Ram {
    fn new(pages: usize) -> Ram {
        let layout = std::alloc::Layout::from_size_align(pages * 4096, 4096).unwrap();
        // SAFETY: non-zero size.
        let p = unsafe { std::alloc::alloc_zeroed(layout) };
        Ram {
            ptr: std::ptr::NonNull::new(p).unwrap(),
            layout,
        }
    }
}

impl Drop for Ram {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// `mark_pv_pt_pages_rdonly`: the bootstrap L4 is pinned and installed
/// (two type references), every lower table validated with one reference
/// from its parent, all mapped read-only. The L1 is live: `mmu_update` of
/// one of its entries changes the direct map as `update_va_mapping` does,
/// and `update_va_mapping` writes the entry into the L1.
#[test]
fn bootstrap_tables_are_typed_and_their_l1_is_live() {
    let pages = 64;
    let ram = Ram::new(pages);
    // SAFETY: `ram` outlives the domain (dropped after it) and is only
    // accessed through it.
    let d = unsafe { XenDomain::pv64_external(ram.ptr, pages, 1, 8) };
    d.set_privileged(true);
    let m = |pfn: u64| d.pfn_to_mfn(pfn).unwrap();
    // L4 at pfn 10, L3 11, L2 12, L1 13 mapping pfns 16..64 at VA = PA.
    d.host_write_u64(10 * 4096, m(11) << 12 | 0x67);
    d.host_write_u64(11 * 4096, m(12) << 12 | 0x67);
    d.host_write_u64(12 * 4096, m(13) << 12 | 0x67);
    for pfn in 16..pages as u64 {
        d.host_write_u64(13 * 4096 + pfn * 8, m(pfn) << 12 | 0x27);
    }
    d.install_bootstrap_tables(10..14).unwrap();
    assert_eq!(d.frame(m(10)).unwrap().typ, PageType::L4);
    assert_eq!(d.frame(m(10)).unwrap().type_count, 2);
    assert!(d.is_pinned(m(10)));
    assert_eq!(d.vcpu(0).cr3, Some(m(10)));
    for (pfn, ty) in [(11, PageType::L3), (12, PageType::L2), (13, PageType::L1)] {
        let f = d.frame(m(pfn)).unwrap();
        assert_eq!((f.typ, f.type_count, f.validated), (ty, 1, true));
    }
    assert_eq!(d.pte(20 * 4096), Some(m(20) << 12 | 0x27));
    // mmu_update of the live entry for pfn 20: read-only now.
    let args = 30 * 4096;
    d.host_write_u64(args, (m(13) << 12) | (20 * 8));
    d.host_write_u64(args + 8, m(20) << 12 | 0x25);
    assert_eq!(
        d.hypercall(0, nr::MMU_UPDATE, [args, 1, 0, u64::from(DOMID_SELF), 0, 0]),
        0
    );
    assert_eq!(d.pte(20 * 4096), Some(m(20) << 12 | 0x25 | G));
    assert_eq!(d.guest_write_u64(20 * 4096, 1).unwrap_err().vector, 14);
    // update_va_mapping writes the L1's entry.
    let pte = m(21) << 12 | 0x5;
    assert_eq!(
        d.hypercall(0, nr::UPDATE_VA_MAPPING, [21 * 4096, pte, 0, 0, 0, 0]),
        0
    );
    assert_eq!(d.host_read_u64(13 * 4096 + 21 * 8), d.pte(21 * 4096));
    // A store into the live L1 (mapped read-only) is emulated for dom0.
    assert!(d.ptwr_write(13 * 4096 + 22 * 8, 8, m(22) << 12 | 0x25));
    assert_eq!(d.pte(22 * 4096), Some(m(22) << 12 | 0x25 | G));
    // The live root: Xen's slots refused, slot 0 would be the kernel's.
    d.host_write_u64(args, (m(10) << 12) | (260 * 8));
    d.host_write_u64(args + 8, 0);
    assert_eq!(
        d.hypercall(0, nr::MMU_UPDATE, [args, 1, 0, u64::from(DOMID_SELF), 0, 0]),
        -EINVAL
    );
    d.check_invariants().unwrap();
    drop(d);
}

/// A guest store into a validated page table behind Xen's back (only an
/// in-process kernel can: on Xen the table is read-only) is undone and
/// recorded as a violation, as for descriptor pages.
#[test]
fn direct_writes_to_a_page_table_are_violations() {
    let t = T::new(false);
    let (tv, tm) = t.l1(&[]);
    assert_eq!(t.pin(1, tm), 0);
    t.put(tv, 3, 0x1234_5000 | 1);
    t.ok();
    assert_eq!(t.get(tv, 3), 0);
    let v = t.d.violations();
    assert_eq!(v.len(), 1);
    assert!(v[0].contains("page-table frame"), "{v:?}");
}
