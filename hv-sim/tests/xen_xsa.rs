//! Regression tests named after the Xen security advisories that apply to
//! the descriptor-table hypercalls.

#[path = "common/xen.rs"]
mod xen_helpers;

use hv_sim::xen::*;
use xen_helpers::{hc, ops};

fn mmuext1(d: &XenDomain, cmd: u32, a1: u64, a2: u64) -> i64 {
    let va = ops(d, &[(cmd, a1, a2)]);
    hc(d, nr::MMUEXT_OP, &[va, 1, 0, u64::from(DOMID_SELF)])
}

#[test]
fn xsa32_absurd_frames() {
    let d = XenDomain::pv64(32, 1);
    for maddr in [!7u64, 1 << 52, 0x7FFF_FFFF_F000] {
        assert_eq!(hc(&d, nr::UPDATE_DESCRIPTOR, &[maddr, 0]), -EINVAL);
    }
    assert_eq!(mmuext1(&d, MMUEXT_NEW_BASEPTR, u64::MAX, 0), -EINVAL);
    let list = d.alloc_pages(1);
    d.host_write_u64(list, u64::MAX);
    assert_eq!(hc(&d, nr::SET_GDT, &[list, 1]), -EINVAL);
}

#[test]
fn xsa193_non_canonical_bases() {
    let d = XenDomain::pv64(32, 1);
    for base in [1u64 << 47, 0x8000_0000_0000_0000, 0xFFFF_7FFF_FFFF_FFFF] {
        for which in 0..3 {
            assert_eq!(hc(&d, nr::SET_SEGMENT_BASE, &[which, base]), -EINVAL);
        }
        assert_eq!(mmuext1(&d, MMUEXT_SET_LDT, base & !0xFFF, 1), -EINVAL);
        let t = d.alloc_pages(1);
        d.host_write_u64(t, 0x10 << 16);
        d.host_write_u64(t + 8, base);
        assert_eq!(hc(&d, nr::SET_TRAP_TABLE, &[t]), -EINVAL);
    }
    // Canonical high-half addresses are fine for segment bases.
    assert_eq!(hc(&d, nr::SET_SEGMENT_BASE, &[0, 0xFFFF_FFFF_FFFF_0000]), 0);
    let v = d.vcpu(0);
    assert_eq!(v.fs_base, 0xFFFF_FFFF_FFFF_0000);
}

#[test]
fn xsa213_nested_multicall_is_refused_per_entry() {
    let d = XenDomain::pv64(32, 1);
    let l = d.alloc_pages(1);
    d.host_write_u64(l, nr::MULTICALL);
    d.host_write_u64(l + 16, l);
    d.host_write_u64(l + 24, 1);
    d.host_write_u64(l + 64, nr::STACK_SWITCH);
    d.host_write_u64(l + 80, 0x10);
    d.host_write_u64(l + 88, 0x8000);
    assert_eq!(hc(&d, nr::MULTICALL, &[l, 2]), 0);
    assert_eq!(d.host_read_u64(l + 8), Some(-EINVAL as u64));
    assert_eq!(d.host_read_u64(l + 72), Some(0));
    assert_eq!(d.vcpu(0).kernel_sp, 0x8000);
    assert!(!d.vcpu(0).in_multicall);
}

#[test]
fn xsa279_failed_update_va_mapping_returns_before_flush() {
    let d = XenDomain::pv64(32, 1);
    // Non-canonical va with an INVLPG flush: the update fails (-EINVAL) and
    // nothing else happens (in particular no -EFAULT from a bitmap read).
    assert_eq!(
        hc(&d, nr::UPDATE_VA_MAPPING, &[1 << 63, 0, 2 | 0x1000]),
        -EINVAL
    );
    // INVLPG of a bad address through mmuext is silently skipped.
    assert_eq!(mmuext1(&d, MMUEXT_INVLPG_LOCAL, 1 << 63, 0), 0);
}

#[test]
fn xsa298_ldt_limits_and_gates() {
    let d = XenDomain::pv32(32, 1);
    // No LDT installed: any LDT access is beyond the limit (#GP), Xen never
    // promotes the page at linear 0.
    let f = d.touch_ldt_from(0, 0, true).unwrap_err();
    assert_eq!((f.vector, f.error_code), (13, 4));
    // A gate selector past Xen's range is refused.
    let gate = 1u64 << 47 | 0xC << 40 | (7168u64 << 3) << 16;
    assert!(check_descriptor(Abi::Pv32, gate).is_err());
    // pv64 gates must have parameter count 0; pv32 may use 0-31.
    let gate = 1u64 << 47 | 0xC << 40 | 3 << 32 | 0x10 << 16;
    assert!(check_descriptor(Abi::Pv64, gate).is_err());
    assert!(check_descriptor(Abi::Pv32, gate).is_ok());
    // Gate DPL lands in the selector RPL, gate DPL field 0.
    let s = check_descriptor(Abi::Pv64, gate & !(3 << 32)).unwrap();
    assert_eq!(((s >> 45) & 3, (s >> 16) & 3), (0, 3));
}
