//! Boot the example kernel under KVM with hv-sim's VMI-style personality.
//!
//! Needs /dev/kvm; prints `SKIPPED: <reason>` and passes without it.

use hv_sim::kernel_build::build_example_kernel;
use hv_sim::kvm::vmi::boot_vmi;
use hv_sim::kvm::{self, Config};

fn kvm_or_skip(test: &str) -> bool {
    match kvm::available() {
        Ok(()) => true,
        Err(why) => {
            println!("SKIPPED: {test}: {why}");
            false
        }
    }
}

fn kernel_image() -> Vec<u8> {
    let elf = build_example_kernel().expect("example kernel builds");
    std::fs::read(&elf).expect("read kernel image")
}

#[test]
fn vmi_backend_boot_passes_every_check() {
    if !kvm_or_skip("vmi_backend_boot_passes_every_check") {
        return;
    }
    let image = kernel_image();
    let r = boot_vmi(&image, &Config::default()).unwrap_or_else(|e| panic!("{e}"));
    println!("{}", r.boot.text);
    println!("{}", r.trace);
    println!("{}", r.summary());
    println!("{:?}", r.calls_by_name());
    let failed = r.boot.failed();
    assert!(failed.is_empty(), "failed checks: {failed:#?}");
    assert_eq!(r.boot.exit_status, Some(0));
}
