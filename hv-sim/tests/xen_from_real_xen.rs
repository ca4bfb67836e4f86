//! Regression tests for what the real Xen 4.17 hypervisor showed that
//! hv-sim's model did not (found by the differential battery,
//! `tests/xen_differential.rs`, and by booting the example kernel on real
//! Xen, `tests/xen_real_boot.rs`). None needs Xen, QEMU or KVM. Each test
//! names the battery line (or boot check) that showed the difference and
//! the Xen source that explains it.
//!
//! Also pinned elsewhere: bit 62 of an L1 entry accepted by a release build
//! and cache attributes accepted from the hardware domain
//! (`xen_audit.rs`, `update_va_mapping_l1_flag_rules`).

#[path = "common/xen.rs"]
mod xen_helpers;

use hv_sim::xen::traps::{Interrupted, bounce_frame};
use hv_sim::xen::*;
use xen_helpers::{hc, ops};

/// `mmuext_op(SET_LDT)` with `foreigndom` `dom`.
fn set_ldt(d: &XenDomain, linear: u64, ents: u64, dom: u64) -> i64 {
    let va = ops(d, &[(MMUEXT_SET_LDT, linear, ents)]);
    hc(d, nr::MMUEXT_OP, &[va, 1, 0, dom])
}

/// Battery line `set_ldt(P6 0 dom=0x0) = -3`: dom0 naming itself by its
/// numeric id (0) gets -ESRCH (`get_pg_owner`: "Cannot specify itself as
/// foreign domain"), and a domain that does not exist (1, with no domU)
/// gets -ESRCH too; DOMID_SELF works.
#[test]
fn hardware_domain_naming_itself_or_a_missing_domain_gets_esrch() {
    let d = XenDomain::pv64(64, 1);
    d.set_privileged(true);
    let page = d.alloc_pages(1);
    assert_eq!(set_ldt(&d, page, 16, 0), -ESRCH);
    assert_eq!(set_ldt(&d, page, 16, 1), -ESRCH);
    assert_eq!(set_ldt(&d, page, 16, u64::from(DOMID_SELF)), 0);
    d.check_invariants().unwrap();
}

/// Battery line `set_ldt(P7 16 dom=0x7ff0) = 0 ... p=6:-,v14:0`: SET_LDT
/// on a page that is still mapped writable succeeds (nothing is validated
/// then), and the first load from the LDT gets a #PF with error code 0
/// (the CPU's implicit supervisor read of Xen's LDT area), because the page
/// cannot take the descriptor-page type (`pv_map_ldt_shadow_page`,
/// `handle_ldt_mapping_fault`). Before, hv-sim mapped LDT pages at SET_LDT
/// time and showed a #GP(selector) instead.
#[test]
fn lazy_ldt_mapping_of_a_writable_page_faults_with_pf_error_code_0() {
    let d = XenDomain::pv64(64, 1);
    d.set_privileged(true);
    let page = d.alloc_pages(1);
    assert_eq!(set_ldt(&d, page, 16, u64::from(DOMID_SELF)), 0);
    assert_eq!(d.ldt_entry(0, 1), None, "nothing mapped at SET_LDT time");
    let f = d.touch_ldt(0, 1).unwrap_err();
    assert_eq!((f.vector, f.error_code), (14, 0), "{f}");
    // Made read-only, the page maps on the next touch.
    let m = d.virt_to_mfn(page).unwrap();
    assert_eq!(hc(&d, nr::UPDATE_VA_MAPPING, &[page, m << 12 | 5, 2]), 0);
    assert_eq!(d.touch_ldt(0, 1), Ok(0));
    d.check_invariants().unwrap();
}

/// Boot check `#UD bounce frame` on real Xen 4.17: `cs word 0x10000e030
/// rflags 0x6 ss 0xe02b`: RPL cleared, dom0's event mask (1, set by the
/// dom0 builder) in bits 32-39, IF cleared because the mask was set, IOPL
/// 0; QEMU's pushed rflags had IF set and no RF (QEMU TCG does not set RF
/// for faults, which hardware does; hv-sim keeps whatever the CPU pushed).
#[test]
fn ud_bounce_frame_as_real_xen_built_it() {
    let at = Interrupted {
        rip: 0x20_0100,
        cs: 0xe033,
        rflags: 0x206,
        rsp: 0x23_0890,
        ss: 0xe02b,
        rcx: 1,
        r11: 2,
    };
    let f = bounce_frame(&at, None, 1, false);
    assert_eq!(f.words[3], 0x1_0000_e030);
    assert_eq!(f.words[4], 0x6);
    assert_eq!(f.words[6], 0xe02b);
    assert_eq!((f.rsp + 7 * 8) % 16, 0);
}

/// The start info a 64-bit PV dom0 gets (boot on real Xen 4.17): magic
/// "xen-3.0-x86_64", flags 0x303 (SIF_PRIVILEGED | SIF_INITDOMAIN and the
/// processor power-management bits), first_p2m_pfn = the first pfn past
/// the initial mapping; the layout for this kernel's 0x2382e0-byte image:
/// p2m 0x239000, start info 0x259000, page tables 0x25a000 (5 frames), boot
/// stack up to 0x260000, 4 MiB mapped.
#[test]
fn dom0_start_info_and_layout_as_real_xen_builds_them() {
    use hv_sim::kvm::xen::Dom0Layout;
    use hv_sim::kvm::xen::builder::si;
    let l = Dom0Layout::new(0x2382e0, 16384);
    assert_eq!(
        (
            l.p2m,
            l.start_info,
            l.pt_base,
            l.nr_pt_frames,
            l.stack_top,
            l.total
        ),
        (0x239000, 0x259000, 0x25a000, 5, 0x260000, 0x400000)
    );
    assert_eq!(
        si::SIF_PRIVILEGED | si::SIF_INITDOMAIN | si::SIF_PM_XEN_4_17,
        0x303
    );
    assert_eq!(si::MAGIC_PV64, b"xen-3.0-x86_64");
}
