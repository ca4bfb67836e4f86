//! Boot the native-backend example kernel deprivileged under KVM with
//! hv-sim's trap-and-emulate personality: its descriptor-table instructions
//! fault and hv-sim emulates them.
//!
//! Needs /dev/kvm; prints `SKIPPED: <reason>` and passes without it.

use hv_sim::kvm::CheckSummary;
use hv_sim::kvm::Config;
use hv_sim::kvm::trap::{HV_TSS, TRAP_KERNEL_CS, TRAP_KERNEL_SS, boot_trap};
use hv_sim::testing::{example_kernel_image, kvm_or_skip};

#[test]
fn trap_and_emulate_boot_passes_every_check() {
    if !kvm_or_skip("trap_and_emulate_boot_passes_every_check") {
        return;
    }
    let image = example_kernel_image().expect("example kernel builds");
    let r = boot_trap(&image, &Config::default()).unwrap_or_else(|e| panic!("{e}"));
    println!("{}", r.boot.text);
    println!("{}", r.summary());
    println!("emulated {:?}", r.emulated);
    println!("injected {:?}", r.injected);
    println!("bounced {:?}", r.bounced);
    let failed = r.boot.failed();
    assert!(failed.is_empty(), "failed checks: {failed:#?}");
    assert_eq!(r.boot.exit_status, Some(0));
    assert!(r.boot.stray_io.is_empty(), "{:?}", r.boot.stray_io);
    assert!(
        r.boot.text.contains("backend: native"),
        "the native backend ran"
    );
    assert!(r.boot.text.contains("deprivileged (boot flag)"));
    assert_eq!(r.boot.ran(), 12, "{:#?}", r.boot.checks);
    assert!(r.umip, "the vCPU accepted CR4.UMIP");

    // Every descriptor-table instruction the kernel executes, by kind.
    // lgdt, lidt: once. ltr: once (the second load_tr is refused by the
    // backend before it executes ltr). lldt: load_ldt once + 64 context
    // switches. str: 3 (the TR check's raw str, store_tr, its detail).
    // sldt: the LDT check's raw sldt (its detail reuses it) and store_ldt,
    // + 1 per switch.
    // sgdt: store_gdt only (1): the native backend remembers the GDT it
    // loaded (its validation layer's record) instead of finding the live
    // GDT with sgdt in load_tr, load_ldt, load_tls and store_ldt, which
    // cost 100 trap exits here before.
    let get = |k: &str| r.emulated.get(k).copied().unwrap_or(0);
    let want = [
        ("lgdt", 1),
        ("lidt", 1),
        ("ltr", 1),
        ("lldt", 65),
        ("sgdt", 1),
        ("sidt", 1),
        ("str", 3),
        ("sldt", 66),
    ];
    for (k, n) in want {
        assert_eq!(get(k), n, "{k}: {:?}", r.emulated);
    }
    // One trap exit per emulated instruction, plus the bounced #GP.
    assert!(r.injected.is_empty(), "{:?}", r.injected);
    assert_eq!(r.bounced.total(), 1, "{:?}", r.bounced);
    assert_eq!(
        r.bounced.kept()[0].error_code,
        0x7f8,
        "the bad selector load"
    );
    assert_eq!(r.traps, r.emulated_total() + 1);
    assert!(r.boot.exits.total() > r.traps);
    assert!(r.summary().starts_with(&format!(
        "personality=trap-and-emulate backend=native checks=12/12 emulated={} exits=",
        r.emulated_total()
    )));

    // The guest's virtual registers: what it loaded.
    let dt = r.virtual_dt;
    assert_eq!(dt.tr.bits(), 0x40, "TR = the kernel's TSS selector");
    assert_eq!(dt.gdtr.limit, 16 * 8 - 1);
    assert_eq!(dt.idtr.limit, 256 * 16 - 1);
    assert_eq!(dt.ldtr.bits(), 0, "the last context switch loaded no LDT");
    // The real ones: ring 3 on hv-sim's selectors, DS from the guest's GDT
    // (compressed to DPL 3), TR naming hv-sim's TSS under the guest's
    // selector.
    let s = r.final_segments.expect("segments at exit");
    assert_eq!((s.cs, s.cpl, s.ss), (TRAP_KERNEL_CS, 3, TRAP_KERNEL_SS));
    assert_eq!((s.ds, s.es, s.ds_dpl), (0x18, 0x18, 3));
    let ((tr_sel, tr_base), (ldt_sel, _)) = r.real_tr_ldtr.expect("real TR/LDTR");
    assert_eq!((tr_sel, tr_base), (0x40, HV_TSS));
    assert_eq!(ldt_sel, 0);
    assert!(r.installs >= 2, "TR and LDTR changes installed");
}
