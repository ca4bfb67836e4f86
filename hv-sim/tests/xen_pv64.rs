//! Xen PV personality, 64-bit ABI: every hypercall's success and errno paths.

#[path = "common/xen.rs"]
mod xen_helpers;

use hv_sim::xen::*;
use pvops_xen::XenPlatform;
use xen_helpers::{hc, map, mc_entry, mfn, ops, set_gdt, table};

const KCODE64: u64 = 0x00af_9b00_0000_ffff; // DPL 0 long-mode code
const KDATA: u64 = 0x00cf_9300_0000_ffff; // DPL 0 flat data
const TSS: u64 = 0x0000_8900_0000_0067; // present 64-bit TSS (low half)

fn reason(d: &XenDomain) -> String {
    d.trace().last_call().unwrap().1.unwrap_or("").to_string()
}

#[test]
fn set_gdt_installs_and_raises_dpl() {
    let d = XenDomain::pv64(64, 1);
    let (_, m) = table(&d, &[0, KCODE64, KDATA]);
    assert_eq!(set_gdt(&d, &[m], 3), 0);
    assert_eq!(d.gdt_entry(0, 1), KCODE64 | 3 << 45);
    assert_eq!(d.gdt_entry(0, 2), KDATA | 3 << 45);
    let v = d.vcpu(0);
    assert_eq!(v.gdt_frames, vec![m]);
    assert_eq!(v.gdt_ents, 3);
    let f = d.frame(m).unwrap();
    assert_eq!((f.typ, f.type_count), (PageType::SegDesc, 1));
    d.check_invariants().unwrap();
}

#[test]
fn set_gdt_writable_frame_rejected_old_gdt_kept() {
    let d = XenDomain::pv64(64, 1);
    let (_, m1) = table(&d, &[0, KCODE64]);
    assert_eq!(set_gdt(&d, &[m1], 2), 0);
    let va2 = d.alloc_pages(1);
    let m2 = mfn(&d, va2);
    assert_eq!(set_gdt(&d, &[m2], 2), -EINVAL);
    let r = reason(&d);
    assert!(r.contains("mapped writable at va"), "{r}");
    assert!(r.contains(&format!("{va2:#x}")), "{r}");
    assert_eq!(d.vcpu(0).gdt_frames, vec![m1]);
    assert_eq!(d.gdt_entry(0, 1), KCODE64 | 3 << 45);
    d.check_invariants().unwrap();
}

#[test]
fn set_gdt_entry_limits_and_faults() {
    let d = XenDomain::pv64(64, 1);
    assert_eq!(hc(&d, nr::SET_GDT, &[0, 7169]), -EINVAL);
    // entries = 0: nothing read, NULL list fine.
    assert_eq!(hc(&d, nr::SET_GDT, &[0, 0]), 0);
    // entries is a 32-bit uint: 2^32 + 0 is 0 entries.
    assert_eq!(hc(&d, nr::SET_GDT, &[0, 1 << 32]), 0);
    // Unmapped list.
    assert_eq!(hc(&d, nr::SET_GDT, &[0x1000, 1]), -EFAULT);
    // Non-guest address.
    assert_eq!(hc(&d, nr::SET_GDT, &[0xFFFF_8000_0000_0000, 1]), -EFAULT);
    // 7168 entries = 14 frames, all must be valid.
    let mut mfns = vec![];
    for _ in 0..14 {
        mfns.push(table(&d, &[]).1);
    }
    assert_eq!(set_gdt(&d, &mfns, 7168), 0);
    assert_eq!(d.vcpu(0).gdt_frames.len(), 14);
    d.check_invariants().unwrap();
}

#[test]
fn set_gdt_bad_slot_partial_rewrite() {
    let d = XenDomain::pv64(64, 1);
    let (va, m) = table(&d, &[KCODE64, KDATA, TSS, KDATA]);
    assert_eq!(set_gdt(&d, &[m], 4), -EINVAL);
    let r = reason(&d);
    assert!(r.contains("slot 2"), "{r}");
    // Slots before the bad one rewritten, bad and later untouched.
    assert_eq!(d.host_read_u64(va), Some(KCODE64 | 3 << 45));
    assert_eq!(d.host_read_u64(va + 8), Some(KDATA | 3 << 45));
    assert_eq!(d.host_read_u64(va + 16), Some(TSS));
    assert_eq!(d.host_read_u64(va + 24), Some(KDATA));
    assert_eq!(d.frame(m).unwrap().typ, PageType::None);
    assert!(d.vcpu(0).gdt_frames.is_empty());
    d.check_invariants().unwrap();
}

#[test]
fn set_gdt_second_frame_fails_drops_first_ref() {
    let d = XenDomain::pv64(64, 1);
    let (_, m1) = table(&d, &[KCODE64]);
    let (_, m2) = table(&d, &[TSS]);
    assert_eq!(set_gdt(&d, &[m1, m2], 600), -EINVAL);
    assert_eq!(d.frame(m1).unwrap().type_count, 0);
    // Typed seg_desc already: used again without re-validation.
    assert_eq!(d.frame(m1).unwrap().typ, PageType::SegDesc);
    d.check_invariants().unwrap();
}

#[test]
fn set_gdt_foreign_and_absurd_frames() {
    let d = XenDomain::pv64(64, 1);
    let own = mfn(&d, d.va_base());
    // mfn + 1 is valid but belongs to someone else.
    assert_eq!(set_gdt(&d, &[own + 1], 1), -EINVAL);
    assert!(reason(&d).contains("not owned"), "{}", reason(&d));
    assert_eq!(set_gdt(&d, &[u64::MAX >> 12], 1), -EINVAL);
    assert!(reason(&d).contains("not a valid machine frame"));
}

#[test]
fn repeated_frame_and_reinstall() {
    let d = XenDomain::pv64(64, 1);
    let (_, m) = table(&d, &[KCODE64]);
    assert_eq!(set_gdt(&d, &[m, m], 1024), 0);
    assert_eq!(d.frame(m).unwrap().type_count, 2);
    assert_eq!(set_gdt(&d, &[m], 1), 0);
    assert_eq!(d.frame(m).unwrap().type_count, 1);
    d.check_invariants().unwrap();
}

#[test]
fn live_gdt_frame_cannot_be_mapped_writable() {
    let d = XenDomain::pv64(64, 1);
    let (va, m) = table(&d, &[KCODE64]);
    assert_eq!(set_gdt(&d, &[m], 1), 0);
    assert_eq!(map(&d, va, true), -EBUSY);
    assert!(reason(&d).contains("live descriptor page"));
    // Read-only mapping is fine.
    assert_eq!(map(&d, va, false), 0);
    // Guest store through the read-only mapping faults.
    assert!(d.guest_write_u64(va, 0).is_err());
    // Replace the GDT: count 0, type kept, now writable mapping allowed.
    assert_eq!(hc(&d, nr::SET_GDT, &[0, 0]), 0);
    assert_eq!(map(&d, va, true), 0);
    assert_eq!(d.frame(m).unwrap().typ, PageType::Writable);
    d.check_invariants().unwrap();
}

#[test]
fn update_va_mapping_errors() {
    let d = XenDomain::pv64(64, 1);
    let va = d.alloc_pages(1);
    let m = mfn(&d, va);
    // No L1 for an address outside the direct map.
    assert_eq!(
        hc(&d, nr::UPDATE_VA_MAPPING, &[0x1000, m << 12 | 1, 0]),
        -EINVAL
    );
    // Disallowed cache attribute bit.
    assert_eq!(
        hc(&d, nr::UPDATE_VA_MAPPING, &[va, m << 12 | 1 | 0x10, 0]),
        -EINVAL
    );
    // Foreign frame, MMIO.
    assert_eq!(
        hc(&d, nr::UPDATE_VA_MAPPING, &[va, (m + 1) << 12 | 1, 0]),
        -EBUSY
    );
    assert_eq!(
        hc(&d, nr::UPDATE_VA_MAPPING, &[va, 0xFFFF_FFFF << 12 | 1, 0]),
        -EPERM
    );
    // Unmap: later reads through it fault.
    assert_eq!(hc(&d, nr::UPDATE_VA_MAPPING, &[va, 0, 0]), 0);
    assert_eq!(d.guest_read_u64(va), None);
    assert_eq!(hc(&d, nr::SET_GDT, &[va, 1]), -EFAULT);
    // Bitmap fault after the PTE was written.
    assert_eq!(
        hc(&d, nr::UPDATE_VA_MAPPING, &[va, m << 12 | 3, 1 | 0x1000]),
        -EFAULT
    );
    // pv64 adjust_guest_l1e: a kernel (U=0) entry gains _PAGE_USER and
    // _PAGE_GUEST_KERNEL (bit 52).
    assert_eq!(d.pte(va), Some(m << 12 | 3 | 4 | 1 << 52));
    // LOCAL / ALL flush fine.
    assert_eq!(hc(&d, nr::UPDATE_VA_MAPPING, &[va, m << 12 | 3, 2]), 0);
    assert_eq!(hc(&d, nr::UPDATE_VA_MAPPING, &[va, m << 12 | 3, 5]), 0);
    d.check_invariants().unwrap();
}

#[test]
fn update_descriptor_paths() {
    let d = XenDomain::pv64(64, 1);
    let (va, m) = table(&d, &[0, KCODE64]);
    assert_eq!(set_gdt(&d, &[m], 2), 0);
    let ma = m << 12;
    assert_eq!(hc(&d, nr::UPDATE_DESCRIPTOR, &[ma + 4, KDATA]), -EINVAL);
    assert!(reason(&d).contains("aligned"));
    assert_eq!(hc(&d, nr::UPDATE_DESCRIPTOR, &[ma + 8, TSS]), -EINVAL);
    assert!(reason(&d).contains("system descriptor"));
    // XSA-32: absurd machine address.
    assert_eq!(
        hc(&d, nr::UPDATE_DESCRIPTOR, &[0xFFFF_FFFF_FFFF_F000, KDATA]),
        -EINVAL
    );
    assert_eq!(
        hc(&d, nr::UPDATE_DESCRIPTOR, &[(m + 1) << 12, KDATA]),
        -EINVAL
    );
    // Live GDT slot: written with DPL raised; no violation afterwards.
    assert_eq!(hc(&d, nr::UPDATE_DESCRIPTOR, &[ma + 8, KDATA]), 0);
    assert_eq!(d.gdt_entry(0, 1), KDATA | 3 << 45);
    assert_eq!(d.host_read_u64(va + 8), Some(KDATA | 3 << 45));
    // Beyond gdt_ents: not checked.
    assert_eq!(hc(&d, nr::UPDATE_DESCRIPTOR, &[ma + 8 * 100, KDATA]), 0);
    // Ordinary writable page.
    let p = d.alloc_pages(1);
    assert_eq!(
        hc(&d, nr::UPDATE_DESCRIPTOR, &[mfn(&d, p) << 12, KCODE64]),
        0
    );
    assert_eq!(d.host_read_u64(p), Some(KCODE64 | 3 << 45));
    assert!(d.violations().is_empty());
    d.check_invariants().unwrap();
}

#[test]
fn update_descriptor_into_page_table_rejected() {
    let d = XenDomain::pv64(64, 1);
    let va = d.alloc_pages(1);
    assert_eq!(map(&d, va, false), 0);
    let m = mfn(&d, va);
    let ops = d.alloc_pages(1);
    d.host_write_u64(ops, u64::from(MMUEXT_NEW_BASEPTR));
    d.host_write_u64(ops + 8, m);
    assert_eq!(
        hc(&d, nr::MMUEXT_OP, &[ops, 1, 0, u64::from(DOMID_SELF)]),
        0
    );
    assert_eq!(d.frame(m).unwrap().typ, PageType::PageTable);
    assert_eq!(hc(&d, nr::UPDATE_DESCRIPTOR, &[m << 12, KDATA]), -EINVAL);
    assert_eq!(map(&d, va, true), -EBUSY);
    d.check_invariants().unwrap();
}

#[test]
fn direct_write_to_descriptor_frame_is_a_violation() {
    let d = XenDomain::pv64(64, 1);
    let (va, m) = table(&d, &[0, KCODE64]);
    assert_eq!(set_gdt(&d, &[m], 2), 0);
    assert!(d.host_write_u64(va + 8, KCODE64)); // DPL 0 behind Xen's back
    assert_eq!(hc(&d, nr::STACK_SWITCH, &[0x10, 0x1000]), 0);
    let v = d.violations();
    assert_eq!(v.len(), 1);
    assert!(v[0].contains(&format!("guest wrote descriptor frame mfn {m:#x} directly")));
    // Undone, as the store would have faulted.
    assert_eq!(d.gdt_entry(0, 1), KCODE64 | 3 << 45);
    d.check_invariants().unwrap();
}

#[test]
#[should_panic(expected = "guest wrote descriptor frame")]
fn direct_write_strict_panics() {
    let d = XenDomain::pv64(64, 1);
    let (va, m) = table(&d, &[0, KCODE64]);
    assert_eq!(set_gdt(&d, &[m], 2), 0);
    d.set_strict(true);
    d.host_write_u64(va + 8, KCODE64);
    hc(&d, nr::STACK_SWITCH, &[0x10, 0x1000]);
}

#[test]
#[should_panic(expected = "Xen requires descriptor pages to have no writable mapping")]
fn strict_set_gdt_writable_panics_with_rule() {
    let d = XenDomain::pv64(64, 1);
    d.set_strict(true);
    let va = d.alloc_pages(1);
    let m = mfn(&d, va);
    set_gdt(&d, &[m], 1);
}

fn trap_entry(d: &XenDomain, va: u64, vector: u8, flags: u8, cs: u16, addr: u64) {
    let lo = u64::from(vector) | u64::from(flags) << 8 | u64::from(cs) << 16;
    d.host_write_u64(va, lo);
    d.host_write_u64(va + 8, addr);
}

#[test]
fn set_trap_table_paths() {
    let d = XenDomain::pv64(64, 1);
    let t = d.alloc_pages(1);
    trap_entry(&d, t, 0, 0, 0xe030, 0x1000);
    trap_entry(&d, t + 16, 14, 4, 0x10, 0x2000);
    trap_entry(&d, t + 32, 0x80, 3, 0x13, 0x3000);
    trap_entry(&d, t + 48, 7, 0, 0, 0); // terminator
    trap_entry(&d, t + 64, 8, 0, 0, 0x9999);
    assert_eq!(hc(&d, nr::SET_TRAP_TABLE, &[t]), 0);
    let tt = d.vcpu(0).trap_table;
    assert_eq!(
        tt[0],
        TrapInfo {
            vector: 0,
            flags: 0,
            cs: 0xe033,
            address: 0x1000
        }
    );
    assert_eq!(tt[14].cs, 0x13);
    assert_eq!(tt[14].flags, 4);
    assert_eq!(tt[0x80].address, 0x3000);
    assert_eq!(tt[8].address, 0);
    // XSA-193-style: non-canonical address -> -EINVAL, earlier entries kept.
    trap_entry(&d, t, 3, 3, 0x10, 0x4000);
    trap_entry(&d, t + 16, 4, 0, 0x10, 0x0000_8000_0000_0000);
    assert_eq!(hc(&d, nr::SET_TRAP_TABLE, &[t]), -EINVAL);
    assert_eq!(d.vcpu(0).trap_table[3].address, 0x4000);
    assert_eq!(d.vcpu(0).trap_table[4].address, 0);
    // Fault reading.
    assert_eq!(hc(&d, nr::SET_TRAP_TABLE, &[0x1000]), -EFAULT);
    // A table running off the end of RAM: entries before are kept.
    let last = d.va_base() + (d.pages() as u64 - 1) * 4096;
    trap_entry(&d, last + 4080, 9, 0, 0x10, 0x5000);
    assert_eq!(hc(&d, nr::SET_TRAP_TABLE, &[last + 4080]), -EFAULT);
    assert_eq!(d.vcpu(0).trap_table[9].address, 0x5000);
    // NULL clears everything.
    assert_eq!(hc(&d, nr::SET_TRAP_TABLE, &[0]), 0);
    assert!(
        d.vcpu(0)
            .trap_table
            .iter()
            .all(|e| *e == TrapInfo::default())
    );
}

#[test]
fn stack_switch_fixes_rpl() {
    let d = XenDomain::pv64(64, 1);
    assert_eq!(hc(&d, nr::STACK_SWITCH, &[0xe028, 0xdead_0000]), 0);
    assert_eq!(d.vcpu(0).kernel_ss, 0xe02b);
    assert_eq!(d.vcpu(0).kernel_sp, 0xdead_0000);
    // No checks at all.
    assert_eq!(
        hc(
            &d,
            nr::STACK_SWITCH,
            &[0x1_0000_0000, 0xFFFF_8000_0000_0000]
        ),
        0
    );
    assert_eq!(d.vcpu(0).kernel_ss, 0x1_0000_0003);
}

#[test]
fn set_segment_base_paths() {
    let d = XenDomain::pv64(64, 1);
    assert_eq!(hc(&d, nr::SET_SEGMENT_BASE, &[0, 0x7000]), 0);
    assert_eq!(hc(&d, nr::SET_SEGMENT_BASE, &[1, 0xFFFF_8000_0000_1000]), 0);
    assert_eq!(hc(&d, nr::SET_SEGMENT_BASE, &[2, 0x9000]), 0);
    let v = d.vcpu(0);
    assert_eq!(
        (v.fs_base, v.gs_base_user, v.gs_base_kernel),
        (0x7000, 0xFFFF_8000_0000_1000, 0x9000)
    );
    // XSA-193: non-canonical bases.
    for which in 0..3 {
        assert_eq!(
            hc(&d, nr::SET_SEGMENT_BASE, &[which, 0x0000_8000_0000_0000]),
            -EINVAL
        );
    }
    assert_eq!(hc(&d, nr::SET_SEGMENT_BASE, &[4, 0]), -EINVAL);
    // GS_USER_SEL: a bad selector loads null but returns 0.
    assert_eq!(hc(&d, nr::SET_SEGMENT_BASE, &[3, 0x18]), 0);
    assert_eq!(d.vcpu(0).gs_user_sel, 0);
    // A good one: GDT data segment with base 0x12345678.
    let (_, m) = table(&d, &[0, 0x12cf_9234_5678_ffff]);
    assert_eq!(set_gdt(&d, &[m], 2), 0);
    assert_eq!(hc(&d, nr::SET_SEGMENT_BASE, &[3, 0x8]), 0);
    assert_eq!(d.vcpu(0).gs_user_sel, 0xb);
    assert_eq!(d.vcpu(0).gs_base_user, 0x1234_5678);
}

#[test]
fn multicall_paths() {
    let d = XenDomain::pv64(64, 1);
    let l = d.alloc_pages(1);
    mc_entry(&d, l, nr::STACK_SWITCH, &[0x10, 0x2000]);
    mc_entry(&d, l + 64, nr::MULTICALL, &[l, 1]);
    mc_entry(&d, l + 128, 99, &[]);
    mc_entry(&d, l + 192, nr::SET_GDT, &[0, 9999]);
    assert_eq!(hc(&d, nr::MULTICALL, &[l, 4]), 0);
    assert_eq!(d.host_read_u64(l + 8), Some(0));
    assert_eq!(d.host_read_u64(l + 72), Some((-EINVAL) as u64));
    assert_eq!(d.host_read_u64(l + 136), Some((-ENOSYS) as u64));
    assert_eq!(d.host_read_u64(l + 200), Some((-EINVAL) as u64));
    assert_eq!(d.vcpu(0).kernel_sp, 0x2000);
    assert!(!d.vcpu(0).in_multicall);
    // Unreadable list / bad range.
    assert_eq!(hc(&d, nr::MULTICALL, &[0x1000, 1]), -EFAULT);
    assert_eq!(hc(&d, nr::MULTICALL, &[0xFFFF_8000_0000_0000, 1]), -EFAULT);
    assert_eq!(hc(&d, nr::MULTICALL, &[l, u64::MAX]), -EFAULT);
    // nr = 0: nothing.
    assert_eq!(hc(&d, nr::MULTICALL, &[0, 0]), 0);
    // Result write fault: list page read-only.
    assert_eq!(map(&d, l, false), 0);
    assert_eq!(hc(&d, nr::MULTICALL, &[l, 1]), -EFAULT);
    assert!(!d.vcpu(0).in_multicall);
    let s = d.trace().to_string();
    assert!(s.contains("multicall inside a multicall"), "{s}");
}

fn mmuext(d: &XenDomain, list: &[(u32, u64, u64)], dom: u16, pdone: u64) -> i64 {
    let va = ops(d, list);
    hc(
        d,
        nr::MMUEXT_OP,
        &[va, list.len() as u64, pdone, u64::from(dom)],
    )
}

#[test]
fn set_ldt_checks() {
    let d = XenDomain::pv64(64, 1);
    let page = d.alloc_pages(1);
    assert_eq!(
        mmuext(&d, &[(MMUEXT_SET_LDT, page + 8, 1)], DOMID_SELF, 0),
        -EINVAL
    );
    assert_eq!(
        mmuext(&d, &[(MMUEXT_SET_LDT, page, 8193)], DOMID_SELF, 0),
        -EINVAL
    );
    // XSA-193/279-style: non-canonical / Xen-range LDT bases.
    assert_eq!(
        mmuext(
            &d,
            &[(MMUEXT_SET_LDT, 0x0000_8000_0000_0000, 1)],
            DOMID_SELF,
            0
        ),
        -EINVAL
    );
    assert_eq!(
        mmuext(
            &d,
            &[(MMUEXT_SET_LDT, 0xFFFF_8000_0000_0000, 1)],
            DOMID_SELF,
            0
        ),
        -EINVAL
    );
    assert_eq!(mmuext(&d, &[(MMUEXT_SET_LDT, page, 1)], 1, 0), -ESRCH);
    assert_eq!(mmuext(&d, &[(MMUEXT_SET_LDT, page, 1)], 77, 0), -ESRCH);
    assert_eq!(
        mmuext(&d, &[(MMUEXT_SET_LDT, page, 1)], DOMID_XEN, 0),
        -EPERM
    );
    assert_eq!(mmuext(&d, &[(14, 0, 0)], DOMID_SELF, 0), -ENOSYS);
    assert_eq!(
        mmuext(&d, &[(MMUEXT_MARK_SUPER, 0, 0)], DOMID_SELF, 0),
        -EOPNOTSUPP
    );
    // nr_ents 0: address ignored.
    assert_eq!(mmuext(&d, &[(MMUEXT_SET_LDT, 0x123, 0)], DOMID_SELF, 0), 0);
    assert_eq!(d.vcpu(0).ldt_base, ZERO_BLOCK_PTR);
    // pdone gets the number done; first failure stops the batch.
    let done = d.alloc_pages(1);
    let r = mmuext(
        &d,
        &[
            (MMUEXT_TLB_FLUSH_LOCAL, 0, 0),
            (MMUEXT_SET_LDT, page, 2),
            (MMUEXT_SET_LDT, 1, 1),
            (MMUEXT_SET_LDT, page, 3),
        ],
        DOMID_SELF,
        done,
    );
    assert_eq!(r, -EINVAL);
    assert_eq!(d.host_read_u64(done).map(|x| x as u32), Some(2));
    assert_eq!((d.vcpu(0).ldt_base, d.vcpu(0).ldt_ents), (page, 2));
    // Unreadable ops.
    assert_eq!(
        hc(&d, nr::MMUEXT_OP, &[0x1000, 1, 0, u64::from(DOMID_SELF)]),
        -EFAULT
    );
}

#[test]
fn lazy_ldt_mapping() {
    let d = XenDomain::pv64(64, 1);
    let ldt = d.alloc_pages(2);
    d.host_write_u64(ldt + 8, KDATA);
    d.host_write_u64(ldt + 4096, TSS); // second page is bad
    assert_eq!(mmuext(&d, &[(MMUEXT_SET_LDT, ldt, 1024)], DOMID_SELF, 0), 0);
    // Nothing validated yet.
    assert_eq!(d.host_read_u64(ldt + 8), Some(KDATA));
    // First page still writable: #PF.
    let f = d.touch_ldt(0, 1).unwrap_err();
    assert_eq!((f.vector, f.error_code, f.cr2), (14, 0, Some(ldt + 8)));
    assert!(f.reason.contains("mapped writable"), "{f}");
    let f = d.touch_ldt_from(0, 1, true).unwrap_err();
    assert_eq!(f.error_code, 4);
    assert_eq!(map(&d, ldt, false), 0);
    assert_eq!(d.touch_ldt(0, 1), Ok(KDATA | 3 << 45));
    assert_eq!(d.ldt_entry(0, 1), Some(KDATA | 3 << 45));
    assert_eq!(d.vcpu(0).ldt_mapped[0], Some(mfn(&d, ldt)));
    // Second page: read-only but contains a TSS.
    assert_eq!(map(&d, ldt + 4096, false), 0);
    let f = d.touch_ldt(0, 512).unwrap_err();
    assert_eq!((f.vector, f.cr2), (14, Some(ldt + 4096)));
    // Beyond ldt_ents: #GP(sel).
    let f = d.touch_ldt(0, 1024).unwrap_err();
    assert_eq!((f.vector, f.error_code), (13, (1024 * 8) | 4));
    // The mapped LDT page cannot become writable...
    assert_eq!(map(&d, ldt, true), -EBUSY);
    // ... until the LDT is dropped (NEW_BASEPTR to another root).
    let root = d.alloc_pages(1);
    assert_eq!(map(&d, root, false), 0);
    assert_eq!(
        mmuext(&d, &[(MMUEXT_NEW_BASEPTR, mfn(&d, root), 0)], DOMID_SELF, 0),
        0
    );
    assert_eq!(d.vcpu(0).ldt_mapped, [None; 16]);
    assert_eq!(map(&d, ldt, true), 0);
    // Same root again: a reload, nothing dropped.
    assert_eq!(
        mmuext(&d, &[(MMUEXT_NEW_BASEPTR, mfn(&d, root), 0)], DOMID_SELF, 0),
        0
    );
    d.check_invariants().unwrap();
}

#[test]
fn ldt_non_canonical_gp() {
    let d = XenDomain::pv64(64, 1);
    let base = (1u64 << 47) - 4096;
    assert_eq!(
        mmuext(&d, &[(MMUEXT_SET_LDT, base, 8192)], DOMID_SELF, 0),
        0
    );
    let f = d.touch_ldt(0, 600).unwrap_err();
    assert_eq!((f.vector, f.error_code), (13, (600 * 8) | 4));
    // Below the boundary: a #PF (nothing mapped there).
    assert_eq!(d.touch_ldt(0, 3).unwrap_err().vector, 14);
}

#[test]
fn set_ldt_unchanged_is_noop() {
    let d = XenDomain::pv64(64, 1);
    let ldt = d.alloc_pages(1);
    d.host_write_u64(ldt, KDATA);
    assert_eq!(map(&d, ldt, false), 0);
    assert_eq!(mmuext(&d, &[(MMUEXT_SET_LDT, ldt, 16)], DOMID_SELF, 0), 0);
    assert!(d.touch_ldt(0, 0).is_ok());
    assert_eq!(mmuext(&d, &[(MMUEXT_SET_LDT, ldt, 16)], DOMID_SELF, 0), 0);
    assert!(d.vcpu(0).ldt_mapped[0].is_some());
    assert_eq!(mmuext(&d, &[(MMUEXT_SET_LDT, ldt, 8)], DOMID_SELF, 0), 0);
    assert!(d.vcpu(0).ldt_mapped[0].is_none());
    d.check_invariants().unwrap();
}

#[test]
fn unknown_and_unmodelled_hypercalls() {
    let d = XenDomain::pv64(64, 1);
    assert_eq!(hc(&d, 11, &[]), -ENOSYS);
    assert_eq!(hc(&d, 31, &[]), -ENOSYS);
    assert_eq!(hc(&d, 1 << 32 | 2, &[]), -ENOSYS);
    assert_eq!(hc(&d, 1000, &[]), -ENOSYS);
    assert!(reason(&d).contains("no hypercall"));
    // vcpu_op models initialise, up, down and is_up (tests/xen_vcpu_op.rs);
    // VCPUOP_get_runstate_info (4) is not modelled.
    assert_eq!(hc(&d, 24, &[4, 0]), -ENOSYS);
    assert!(reason(&d).contains("does not model"));
}

#[test]
fn per_vcpu_state_is_separate() {
    let d = XenDomain::pv64(64, 2);
    let (_, m) = table(&d, &[0, KCODE64]);
    let list = d.alloc_pages(1);
    d.host_write_u64(list, m);
    assert_eq!(d.hypercall(1, nr::SET_GDT, [list, 2, 0, 0, 0, 0]), 0);
    assert_eq!(d.vcpu(1).gdt_frames, vec![m]);
    assert!(d.vcpu(0).gdt_frames.is_empty());
    assert_eq!(d.hypercall(0, nr::SET_GDT, [list, 2, 0, 0, 0, 0]), 0);
    assert_eq!(d.frame(m).unwrap().type_count, 2);
    d.check_invariants().unwrap();
}

#[test]
fn xen_platform_impl() {
    let d = XenDomain::pv64(64, 2);
    let p0 = d.vcpu_handle(0);
    let p1 = XenVcpu::new(&d, 1);
    let (s0, n0) = p0.scratch();
    let (s1, _) = p1.scratch();
    assert_eq!(n0, 4096);
    assert_ne!(s0, s1);
    assert_eq!(s0 % 4096, 0);
    let m = p0.virt_to_mfn(s0 + 5).unwrap();
    assert_eq!(d.mfn_to_pfn(m), Some((s0 - d.va_base()) / 4096));
    assert_ne!(m, (s0 - d.va_base()) / 4096, "p2m must not be the identity");
    assert_eq!(p0.virt_to_mfn(0x1000), None);
    assert_eq!(p0.virt_to_mfn(d.va_base() + d.pages() as u64 * 4096), None);
    // SAFETY: the arguments are plain values (no pointers).
    let r = unsafe { p1.hypercall(3, [0x10, 0x4000, 0, 0, 0]) };
    assert_eq!(r, 0);
    assert_eq!(d.vcpu(1).kernel_sp, 0x4000);
    // Trace prints readably.
    let s = d.trace().to_string();
    assert!(
        s.contains("vcpu1 stack_switch(3)(ss=0x10, sp=0x4000) = 0"),
        "{s}"
    );
}
