//! What every example-kernel boot under KVM must show, whatever the
//! personality: hv-sim's boot tests include it with
//! `#[path = "common/boot.rs"] mod boot;`.

use hv_sim::kvm::BootReport;
use hv_sim::kvm::CheckSummary;

/// Every check passed, at least `min` ran, the kernel exited 0 with no
/// stray port I/O, and it reported `backend: <backend>`.
pub fn assert_clean(boot: &BootReport, min: usize, backend: &str) {
    let failed = boot.failed();
    assert!(failed.is_empty(), "failed checks: {failed:#?}");
    assert!(boot.ran() >= min, "too few checks ran: {:?}", boot.checks);
    assert_eq!(boot.exit_status, Some(0));
    assert!(boot.stray_io.is_empty(), "{:?}", boot.stray_io);
    assert!(
        boot.text.contains(&format!("backend: {backend}")),
        "the kernel picked the {backend} backend"
    );
}
