//! Boot the example kernel in a real KVM virtual machine.
//!
//! Needs /dev/kvm; prints `SKIPPED: <reason>` and passes without it (CI on
//! this project's machines has it, so there it runs).

use hv_sim::kvm::{self, Config};
use hv_sim::testing::{example_kernel_image, kvm_or_skip};

#[test]
fn native_backend_boot_passes_every_check() {
    if !kvm_or_skip("native_backend_boot_passes_every_check") {
        return;
    }
    let image = example_kernel_image().expect("example kernel builds");
    let report = kvm::boot(&image, &Config::default()).unwrap_or_else(|e| panic!("{e}"));
    println!("{}", report.text);
    assert!(
        report.ran() >= 12,
        "too few checks ran: {:?}",
        report.checks
    );
    let failed = report.failed();
    assert!(failed.is_empty(), "failed checks: {failed:#?}");
    assert_eq!(report.exit_status, Some(0));
    assert!(report.stray_io.is_empty(), "{:?}", report.stray_io);
}

#[test]
fn malformed_images_are_refused() {
    let err = kvm::parse_elf(b"not an elf").unwrap_err();
    assert!(err.to_string().contains("kernel image rejected"), "{err}");
}
