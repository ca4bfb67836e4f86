//! Where Xen 4.17.7 (CI's, hv-sim's default) and 4.23-unstable (c447b73)
//! differ on hv-sim's surface (XEN-SEMANTICS §V.1), each behaviour behind
//! `XenDomain::set_version`.

#[path = "common/xen.rs"]
mod xen_helpers;

use hv_sim::xen::*;
use xen_helpers::hc;

#[test]
fn the_default_is_4_17() {
    assert_eq!(XenDomain::pv64(16, 1).version(), XenVersion::V4_17);
}

/// §V.1 #1, `common/multicall.c` `do_multicall`: 4.17 takes the count as a
/// `uint32_t` (2^58 is 0: nothing runs, 0 is returned); master takes all
/// 64 bits and refuses a list that long with -EFAULT before running any.
#[test]
fn multicall_count_width() {
    let d = XenDomain::pv64(32, 1);
    let list = d.alloc_pages(1);
    assert_eq!(hc(&d, nr::MULTICALL, &[list, 1 << 58]), 0);
    d.set_version(XenVersion::Unstable);
    assert_eq!(hc(&d, nr::MULTICALL, &[list, 1 << 58]), -EFAULT);
    // 2^32 + 1: 4.17 runs one entry (op 999: -ENOSYS in its result).
    d.set_version(XenVersion::V4_17);
    d.host_write_u64(list, 999);
    assert_eq!(hc(&d, nr::MULTICALL, &[list, (1 << 32) + 1]), 0);
    assert_eq!(d.host_read_u64(list + 8), Some(-ENOSYS as u64));
    d.check_invariants().unwrap();
}

/// §V.1 #2, `__copy_to_guest_pv`: an entry whose `result` field straddles
/// into a read-only page. 4.17 stores the 8 bytes at once, so none lands;
/// master copies a misaligned field byte by byte, so the bytes before the
/// read-only page land. Either way the multicall returns -EFAULT.
#[test]
fn multicall_result_write_granularity() {
    for (version, landed) in [(XenVersion::V4_17, false), (XenVersion::Unstable, true)] {
        let d = XenDomain::pv64(32, 1);
        d.set_version(version);
        let pages = d.alloc_pages(2);
        let second = pages + 4096;
        // The entry starts 12 bytes before the second page: op at -12,
        // result at -4..+4.
        let entry = second - 12;
        let op = 999u64;
        for (i, b) in op.to_le_bytes().iter().enumerate() {
            let a = entry + i as u64;
            let w = d.host_read_u64(a & !7).unwrap();
            let sh = (a & 7) * 8;
            d.host_write_u64(a & !7, (w & !(0xff << sh)) | (u64::from(*b) << sh));
        }
        let m = d.virt_to_mfn(second).unwrap();
        assert_eq!(hc(&d, nr::UPDATE_VA_MAPPING, &[second, m << 12 | 1, 2]), 0);
        assert_eq!(hc(&d, nr::MULTICALL, &[entry, 1]), -EFAULT, "{version:?}");
        // The 4 bytes before the read-only page: -ENOSYS's low half.
        let low = d.host_read_u64(second - 8).unwrap() >> 32;
        assert_eq!(
            low == u64::from(-ENOSYS as u32),
            landed,
            "{version:?}: {low:#x}"
        );
        d.check_invariants().unwrap();
    }
}

/// §V.1 #6: hypercall 31 (`xenoprof_op`) has a handler in 4.17 and none in
/// master; hv-sim answers -ENOSYS either way and says which.
#[test]
fn xenoprof_op_exists_in_4_17_only() {
    let d = XenDomain::pv64(16, 1);
    d.set_strict(false);
    assert_eq!(hc(&d, 31, &[]), -ENOSYS);
    let why = d
        .trace()
        .last_call()
        .and_then(|(_, r)| r.map(str::to_string));
    assert!(why.unwrap_or_default().contains("4.17 has a handler"));
    d.set_version(XenVersion::Unstable);
    assert_eq!(hc(&d, 31, &[]), -ENOSYS);
    let why = d
        .trace()
        .last_call()
        .and_then(|(_, r)| r.map(str::to_string));
    assert!(why.unwrap_or_default().contains("no hypercall number"));
}
