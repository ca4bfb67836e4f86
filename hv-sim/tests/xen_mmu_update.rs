//! Xen's `mmu_update` for a 64-bit PV guest as hv-sim models it
//! (`hv-sim/src/xen/mmu_update.rs`, XEN-SEMANTICS.md §12), what real Xen
//! showed through the differential battery (`tests/xen_differential.rs`),
//! and the dom0 builder's tables: each test names the Xen 4.17 function
//! (`xen/arch/x86/mm.c` unless said otherwise). The L1/L2-L4 type rules,
//! base pointers and `mmuext_op` are in `xen_mmu.rs`. In process: no KVM,
//! QEMU or Xen.

#[path = "common/mmu.rs"]
mod mmu;
#[path = "common/xen.rs"]
mod xen_helpers;

use hv_sim::xen::domain::guest_pf_error_code;
use hv_sim::xen::*;
use mmu::*;

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
