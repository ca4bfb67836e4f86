//! Boot the example kernel as dom0 of the real Xen hypervisor (Debian's
//! 4.17) under QEMU TCG: the "third real machine". Prints
//! `SKIPPED: <reason>` without Xen or QEMU (fails instead with
//! `HV_SIM_REQUIRE_XEN=1`).
//!
//! The kernel reports through `console_io(CONSOLEIO_write)` (`check ...`
//! lines, then `exit status N`) and ends with `sched_op(SCHEDOP_shutdown)`,
//! reason poweroff when every check passed and crash otherwise.

use hv_sim::kvm::CheckSummary;
use std::time::Duration;

use hv_sim::kernel_build::build_example_kernel;
use hv_sim::realxen::ShutdownReason;
use hv_sim::testing::xen_or_skip;

/// The guest's command line (`start_info.cmd_line`).
const CMDLINE: &str = "";

#[test]
fn example_kernel_passes_every_check_on_real_xen() {
    let Some(xen) = xen_or_skip("example_kernel_passes_every_check_on_real_xen") else {
        return;
    };
    let elf = build_example_kernel().expect("example kernel builds");
    let report = xen
        .boot(&elf, CMDLINE, Duration::from_secs(180))
        .unwrap_or_else(|e| panic!("booting {} on {}: {e}", elf.display(), xen.label()));
    println!("{}", report.serial);
    println!("{} in {:?}", report.summary_line("xen"), report.wall);
    assert!(report.ran() >= 1, "no checks ran:\n{}", report.guest_text);
    assert!(report.failed().is_empty(), "failed: {:#?}", report.failed());
    assert_eq!(
        report.skipped(),
        0,
        "skipped on real Xen: {:#?}",
        report
            .checks
            .iter()
            .filter(|c| c.skipped)
            .collect::<Vec<_>>()
    );
    assert_eq!(
        report.exit_status,
        Some(0),
        "guest text:\n{}",
        report.guest_text
    );
    assert_eq!(report.shutdown, ShutdownReason::Poweroff);
    // Issue 9: QEMU -smp 2 gives dom0 two vCPUs; the kernel starts vCPU 1
    // with VCPUOP_initialise + VCPUOP_up (real Xen, the truth source for
    // both) and each vCPU loads its own GDT, kernel stack and TLS through
    // its own backend.
    let smp = report
        .checks
        .iter()
        .find(|c| c.name.starts_with("smp 2 vCPUs (Xen)"))
        .unwrap_or_else(|| panic!("no smp check:\n{}", report.guest_text));
    assert!(smp.passed, "{smp:?}\n{}", report.guest_text);
}
