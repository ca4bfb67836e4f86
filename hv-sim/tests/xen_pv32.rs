//! Xen PV personality, 32-bit compat ABI: layouts, split arguments, krpl 1.

#[path = "common/xen.rs"]
mod xen_helpers;

use hv_sim::xen::*;
use xen_helpers::{hc, map, mfn, set_gdt, table};

const CODE32: u64 = 0x00cf_9b00_0000_ffff; // DPL 0 flat code, G=1
const DATA32_DPL2: u64 = 0x00cf_d300_0000_ffff;
const CODE64: u64 = 0x00af_9b00_0000_ffff;

#[test]
fn guest_addresses_are_32_bit() {
    let d = XenDomain::pv32(64, 1);
    assert_eq!(d.va_base(), 0xC000_0000);
    let va = d.alloc_pages(1);
    assert!(va < 1 << 32);
    assert!(d.host_write_u64(va, 7));
    assert_eq!(d.guest_read_u64(va), Some(7));
}

#[test]
fn set_gdt_pv32_rules() {
    let d = XenDomain::pv32(64, 1);
    let (_, m1) = table(&d, &[0, CODE32, DATA32_DPL2]);
    let (_, m2) = table(&d, &[]);
    assert_eq!(set_gdt(&d, &[m1, m2], 1024), 0);
    assert_eq!(d.vcpu(0).gdt_frames, vec![m1, m2]);
    assert_eq!(d.gdt_entry(0, 1), 0x00cf_bb00_0000_ffff); // DPL 0 -> 1
    assert_eq!(d.gdt_entry(0, 2), DATA32_DPL2); // DPL 2 kept
    // L bit: rejected on pv32.
    let (_, m3) = table(&d, &[CODE64]);
    assert_eq!(set_gdt(&d, &[m3], 1), -EINVAL);
    let r = d.trace().last_call().unwrap().1.unwrap().to_string();
    assert!(r.contains("L bit"), "{r}");
    assert_eq!(d.vcpu(0).gdt_frames, vec![m1, m2]);
    d.check_invariants().unwrap();
}

#[test]
fn limit_extension_in_gdt() {
    let d = XenDomain::pv32(64, 1);
    let (_, m) = table(&d, &[0x00cf_b300_0000_5800, 0x00cf_b300_0000_57ff]);
    assert_eq!(set_gdt(&d, &[m], 2), 0);
    assert_eq!(d.gdt_entry(0, 0), 0x00cf_b300_0000_ffff);
    assert_eq!(d.gdt_entry(0, 1), 0x00cf_b300_0000_57ff);
}

#[test]
fn update_descriptor_split_args() {
    let d = XenDomain::pv32(64, 1);
    let (_, m) = table(&d, &[0, 0]);
    assert_eq!(set_gdt(&d, &[m], 2), 0);
    let ma = (m << 12) + 8;
    let desc = CODE32;
    assert_eq!(
        hc(
            &d,
            nr::UPDATE_DESCRIPTOR,
            &[ma & 0xFFFF_FFFF, ma >> 32, desc & 0xFFFF_FFFF, desc >> 32]
        ),
        0
    );
    assert_eq!(d.gdt_entry(0, 1), 0x00cf_bb00_0000_ffff);
    // XSA-32: absurd address via pa_hi.
    assert_eq!(
        hc(
            &d,
            nr::UPDATE_DESCRIPTOR,
            &[0, 0xFFFF_FFFF, desc & 0xFFFF_FFFF, desc >> 32]
        ),
        -EINVAL
    );
    // L bit rejected.
    assert_eq!(
        hc(
            &d,
            nr::UPDATE_DESCRIPTOR,
            &[ma, 0, CODE64 & 0xFFFF_FFFF, CODE64 >> 32]
        ),
        -EINVAL
    );
    // Upper argument bits are not part of a 32-bit register.
    assert_eq!(
        hc(
            &d,
            nr::UPDATE_DESCRIPTOR,
            &[ma | 0xdead << 32, 0, desc & 0xFFFF_FFFF, desc >> 32]
        ),
        0
    );
}

#[test]
fn trap_table_compat_layout() {
    let d = XenDomain::pv32(64, 1);
    let t = d.alloc_pages(1);
    // vector 14, flags 4, cs 0x10 (RPL 0 -> 1), address 0xc0100000
    d.host_write_u64(t, 14 | 4 << 8 | 0x10 << 16 | 0xc010_0000 << 32);
    // vector 3, cs 0xe019, address 0x1 ; then terminator
    d.host_write_u64(t + 8, 3 | 3 << 8 | 0xe019 << 16 | 1 << 32);
    d.host_write_u64(t + 16, 5);
    assert_eq!(hc(&d, nr::SET_TRAP_TABLE, &[t]), 0);
    let tt = d.vcpu(0).trap_table;
    assert_eq!(
        tt[14],
        TrapInfo {
            vector: 14,
            flags: 4,
            cs: 0x11,
            address: 0xc010_0000
        }
    );
    assert_eq!(tt[3].cs, 0xe019);
    assert_eq!(tt[5].address, 0);
    assert_eq!(hc(&d, nr::SET_TRAP_TABLE, &[0x1000]), -EFAULT);
}

#[test]
fn stack_switch_krpl_1() {
    let d = XenDomain::pv32(64, 1);
    assert_eq!(hc(&d, nr::STACK_SWITCH, &[0xe020, 0xc000_1000]), 0);
    assert_eq!(d.vcpu(0).kernel_ss, 0xe021);
    assert_eq!(hc(&d, nr::STACK_SWITCH, &[0x1b, 0]), 0);
    assert_eq!(d.vcpu(0).kernel_ss, 0x1b);
}

#[test]
fn set_segment_base_enosys() {
    let d = XenDomain::pv32(64, 1);
    for which in 0..5 {
        assert_eq!(hc(&d, nr::SET_SEGMENT_BASE, &[which, 0]), -ENOSYS);
    }
}

#[test]
fn multicall_compat_entries() {
    let d = XenDomain::pv32(64, 1);
    let l = d.alloc_pages(1);
    // entry 0: stack_switch(0x10, 0x2000); entry 1: nested multicall.
    d.host_write_u64(l, nr::STACK_SWITCH | 0x5555 << 32);
    d.host_write_u64(l + 8, 0x10 | 0x2000 << 32);
    d.host_write_u64(l + 32, nr::MULTICALL | 0x5555 << 32);
    d.host_write_u64(l + 40, l);
    d.host_write_u64(l + 48, 0);
    assert_eq!(hc(&d, nr::MULTICALL, &[l, 2]), 0);
    assert_eq!(d.host_read_u64(l).unwrap() >> 32, 0);
    assert_eq!(
        d.host_read_u64(l + 32).unwrap() >> 32,
        (-EINVAL as i32 as u32) as u64
    );
    assert_eq!(d.vcpu(0).kernel_sp, 0x2000);
    assert_eq!(d.vcpu(0).kernel_ss, 0x11);
}

fn mmuext(d: &XenDomain, ops: &[(u32, u32, u32)], dom: u16) -> i64 {
    let va = d.alloc_pages(1);
    let mut bytes = vec![];
    for (c, a1, a2) in ops {
        bytes.extend_from_slice(&c.to_le_bytes());
        bytes.extend_from_slice(&a1.to_le_bytes());
        bytes.extend_from_slice(&a2.to_le_bytes());
    }
    bytes.resize(bytes.len().div_ceil(8) * 8, 0);
    for (i, ch) in bytes.chunks(8).enumerate() {
        d.host_write_u64(
            va + 8 * i as u64,
            u64::from_le_bytes(ch.try_into().unwrap()),
        );
    }
    hc(d, nr::MMUEXT_OP, &[va, ops.len() as u64, 0, u64::from(dom)])
}

#[test]
fn mmuext_compat() {
    let d = XenDomain::pv32(64, 1);
    let ldt = d.alloc_pages(1);
    d.host_write_u64(ldt, CODE32);
    // No range check on pv32 beyond alignment: a base above the hole is fine.
    assert_eq!(
        mmuext(&d, &[(MMUEXT_SET_LDT, 0xFFFF_F000, 4)], DOMID_SELF),
        0
    );
    assert_eq!(d.vcpu(0).ldt_base, 0xFFFF_F000);
    assert_eq!(
        mmuext(&d, &[(MMUEXT_SET_LDT, 0xFFFF_F001, 4)], DOMID_SELF),
        -EINVAL
    );
    assert_eq!(
        mmuext(&d, &[(MMUEXT_NEW_USER_BASEPTR, 0, 0)], DOMID_SELF),
        -EINVAL
    );
    assert_eq!(
        mmuext(&d, &[(MMUEXT_SET_LDT, ldt as u32, 2)], DOMID_SELF),
        0
    );
    assert_eq!(map(&d, ldt, false), 0);
    assert_eq!(d.touch_ldt(0, 0), Ok(0x00cf_bb00_0000_ffff));
    // Ring-1 kernel: pv32 user-mode fault sets U.
    assert_eq!(d.touch_ldt_from(0, 2, true).unwrap_err().vector, 13);
    // NEW_BASEPTR on pv32 always drops the LDT, to a new root and to the
    // current one again.
    let root = d.alloc_pages(1);
    assert_eq!(map(&d, root, false), 0);
    let new_baseptr = [(MMUEXT_NEW_BASEPTR, mfn(&d, root) as u32, 0)];
    for _ in 0..2 {
        assert!(d.touch_ldt(0, 0).is_ok());
        assert!(d.vcpu(0).ldt_mapped[0].is_some());
        assert_eq!(mmuext(&d, &new_baseptr, DOMID_SELF), 0);
        assert_eq!(d.vcpu(0).ldt_mapped[0], None);
    }
    d.check_invariants().unwrap();
}

#[test]
fn ldt_wraps_at_4g_on_pv32() {
    let d = XenDomain::pv32(64, 1);
    assert_eq!(
        mmuext(&d, &[(MMUEXT_SET_LDT, 0xFFFF_F000, 8192)], DOMID_SELF),
        0
    );
    let f = d.touch_ldt(0, 600).unwrap_err();
    // 0xFFFFF000 + 600*8 truncated to 32 bits: a #PF, never a #GP.
    assert_eq!(
        (f.vector, f.cr2),
        (14, Some((0xFFFF_F000u64 + 4800) & 0xFFFF_FFFF))
    );
}

#[test]
fn update_va_mapping_compat_and_ebusy() {
    let d = XenDomain::pv32(64, 1);
    let (va, m) = table(&d, &[CODE32]);
    assert_eq!(set_gdt(&d, &[m], 1), 0);
    assert_eq!(map(&d, va, true), -EBUSY);
    assert_eq!(
        hc(
            &d,
            nr::UPDATE_VA_MAPPING,
            &[0x1000, (m << 12 | 1) & 0xFFFF_FFFF, 0, 0]
        ),
        -EINVAL
    );
}
