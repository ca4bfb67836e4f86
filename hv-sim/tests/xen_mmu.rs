//! Xen's page-table types and MMU calls for a 64-bit PV guest, as hv-sim
//! models them (`hv-sim/src/xen/pagetables.rs`, XEN-SEMANTICS.md §12):
//! every rule with its errno, each test naming the Xen 4.17 function
//! (`xen/arch/x86/mm.c` unless said otherwise). In process: no KVM, QEMU or
//! Xen. The tests marked "real Xen showed" pin down what the differential
//! battery (`tests/xen_differential.rs`) found real Xen doing that hv-sim
//! did not (those, `mmu_update` and the dom0 builder's tables are in
//! `xen_mmu_update.rs`).

#[path = "common/mmu.rs"]
mod mmu;
#[path = "common/xen.rs"]
mod xen_helpers;

use hv_sim::xen::*;
use mmu::*;

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
