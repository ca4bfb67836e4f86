//! Boot `examples/minimal-kernel` (the kernel of docs/BOOT-YOUR-OWN-KERNEL.md,
//! entered through pvops-pvh) under QEMU TCG through its PVH note, under
//! hv-sim's native KVM runner at `_start`, and as the PVH dom0 of real Xen
//! 4.17 under QEMU. Prints `SKIPPED: <reason>` where QEMU, /dev/kvm or Xen
//! is missing (fails instead with `HV_SIM_REQUIRE_QEMU/KVM/XEN=1`).

#[path = "common/pvh_kernels.rs"]
mod pvh_kernels;

use std::time::Duration;

use hv_sim::kvm::{self, Config};
use hv_sim::testing::{kvm_or_skip, qemu_or_skip, xen_or_skip};
use pvh_kernels::{Outcome, boot_pvh_dom0, minimal_kernel};

/// Every check passed, `skipped` of them skipped, entered through `via`.
fn check_outcome(r: &Outcome, via: &str, skipped: usize) {
    println!("{}", r.text);
    assert!(
        r.text.contains(&format!("entered through {via}")),
        "{}",
        r.text
    );
    for name in ["long mode", "code segment", "own stack", "pvh start info"] {
        r.check(name);
    }
    assert_eq!(r.checks.len(), 4, "{:?}", r.checks);
    let n = r.checks.iter().filter(|c| c.skipped).count();
    assert_eq!(n, skipped, "{:?}", r.checks);
    assert!(r.failed().is_empty(), "failed: {:#?}", r.failed());
    assert_eq!(r.exit_status, Some(0), "{}", r.text);
}

#[test]
fn minimal_kernel_boots_under_qemu_through_pvh() {
    if !qemu_or_skip("minimal_kernel_boots_under_qemu_through_pvh") {
        return;
    }
    let r = hv_sim::qemu::boot(&minimal_kernel(), Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}"));
    // QEMU's hvm_start_info carries the magic: that check ran too.
    check_outcome(&Outcome::from(&r), "the PVH note", 0);
}

#[test]
fn minimal_kernel_boots_under_kvm_at_start() {
    if !kvm_or_skip("minimal_kernel_boots_under_kvm_at_start") {
        return;
    }
    let image = std::fs::read(minimal_kernel()).expect("read the kernel");
    let r = kvm::boot(&image, &Config::default()).unwrap_or_else(|e| panic!("{e}"));
    assert!(r.stray_io.is_empty(), "{:?}", r.stray_io);
    // No start info at _start: that one check is skipped.
    check_outcome(&Outcome::from(&r), "_start", 1);
}

#[test]
fn minimal_kernel_boots_as_real_xen_pvh_dom0() {
    let Some(xen) = xen_or_skip("minimal_kernel_boots_as_real_xen_pvh_dom0") else {
        return;
    };
    let r = boot_pvh_dom0(&xen.elf, &minimal_kernel(), Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}"));
    // Xen's PVH dom0 builder passes its hvm_start_info in ebx too.
    check_outcome(&r, "the PVH note", 0);
}
