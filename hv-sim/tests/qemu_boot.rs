//! Boot the example kernel under QEMU (TCG) through its PVH entry: the
//! "second real machine". Prints `SKIPPED: <reason>` without QEMU (fails
//! instead with `HV_SIM_REQUIRE_QEMU=1`).

use hv_sim::kvm::CheckSummary;
use std::time::Duration;

use hv_sim::kernel_build::build_example_kernel;

#[test]
fn pvh_boot_under_qemu_passes_every_check() {
    if !hv_sim::testing::qemu_or_skip("pvh_boot_under_qemu_passes_every_check") {
        return;
    }
    let elf = build_example_kernel().expect("example kernel builds");
    let report =
        hv_sim::qemu::boot(&elf, Duration::from_secs(120)).unwrap_or_else(|e| panic!("{e}"));
    println!("{}", report.text);
    // Under QEMU nothing is skipped: lar/lsl/verr and int3 run too.
    assert!(
        report.checks.iter().all(|c| !c.skipped),
        "{:?}",
        report.checks
    );
    assert!(report.ran() >= 17, "too few checks: {:?}", report.checks);
    assert!(report.failed().is_empty(), "failed: {:#?}", report.failed());
    assert_eq!(report.exit_status, Some(0));
    // Issue 9: `-smp 2`: the AP started by INIT-SIPI-SIPI through the local
    // APIC loaded its own GDT, TSS, kernel stack and TLS through pvops.
    let smp = report
        .checks
        .iter()
        .find(|c| c.name.starts_with("smp 2 CPUs"))
        .unwrap_or_else(|| panic!("no smp check in:\n{}", report.text));
    assert!(
        smp.passed && smp.detail.contains("INIT-SIPI-SIPI"),
        "{smp:?}"
    );
}
