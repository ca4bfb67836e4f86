//! Boot `examples/blog-os-kernel` in both forms, its tables built with the
//! `x86_64` crate and loaded by it (`with-x86_64`) or moved into pvops
//! storage and loaded by pvops' native backend (`with-pvops`), under QEMU
//! TCG through the pvops-pvh entry, under hv-sim's native KVM runner, and
//! as the PVH dom0 of real Xen 4.17 under QEMU. The kernel checks GDTR,
//! IDTR and TR with the raw instructions, the TSS busy bit, a breakpoint
//! and an invalid opcode on IST1 through its IDT. Prints
//! `SKIPPED: <reason>` where QEMU, /dev/kvm or Xen is missing (fails
//! instead with `HV_SIM_REQUIRE_QEMU/KVM/XEN=1`).

#[path = "common/pvh_kernels.rs"]
mod pvh_kernels;

use std::time::Duration;

use hv_sim::kvm::{self, Config};
use hv_sim::testing::{kvm_or_skip, qemu_or_skip, xen_or_skip};
use pvh_kernels::{Outcome, blog_os_kernel, boot_pvh_dom0};

const BINS: [&str; 2] = ["with-x86_64", "with-pvops"];

/// Every table check ran (but those in `may_skip`) and passed;
/// `with-pvops` also used a write op.
fn check_outcome(bin: &str, r: &Outcome, may_skip: &[&str]) {
    println!("{bin}:\n{}", r.text);
    let mut want = vec![
        "gdtr",
        "idtr",
        "tr",
        "tss busy",
        "breakpoint",
        "invalid opcode on IST1",
    ];
    if bin == "with-pvops" {
        want.push("write_gdt_entry");
    }
    for name in &want {
        let c = r.check(name);
        assert!(
            !c.skipped || may_skip.contains(name),
            "{bin}: {name} skipped: {}",
            c.detail
        );
    }
    assert_eq!(r.checks.len(), want.len(), "{bin}: {:?}", r.checks);
    assert!(r.failed().is_empty(), "{bin}: failed: {:#?}", r.failed());
    assert_eq!(r.exit_status, Some(0), "{bin}: {}", r.text);
}

#[test]
fn blog_os_kernel_boots_under_qemu_both_ways() {
    if !qemu_or_skip("blog_os_kernel_boots_under_qemu_both_ways") {
        return;
    }
    for bin in BINS {
        let r = hv_sim::qemu::boot(&blog_os_kernel(bin), Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{bin}: {e}"));
        assert!(
            r.text.contains("entered through the PVH note"),
            "{}",
            r.text
        );
        check_outcome(bin, &Outcome::from(&r), &[]);
    }
}

#[test]
fn blog_os_kernel_boots_under_kvm_both_ways() {
    if !kvm_or_skip("blog_os_kernel_boots_under_kvm_both_ways") {
        return;
    }
    for bin in BINS {
        let image = std::fs::read(blog_os_kernel(bin)).expect("read the kernel");
        let r = kvm::boot(&image, &Config::default()).unwrap_or_else(|e| panic!("{bin}: {e}"));
        assert!(r.stray_io.is_empty(), "{:?}", r.stray_io);
        // A PVM host cannot deliver int3 (boot flag NO_SOFTWARE_INTERRUPTS).
        check_outcome(bin, &Outcome::from(&r), &["breakpoint"]);
    }
}

#[test]
fn blog_os_kernel_boots_as_real_xen_pvh_dom0_both_ways() {
    let Some(xen) = xen_or_skip("blog_os_kernel_boots_as_real_xen_pvh_dom0_both_ways") else {
        return;
    };
    for bin in BINS {
        let r = boot_pvh_dom0(&xen.elf, &blog_os_kernel(bin), Duration::from_secs(120))
            .unwrap_or_else(|e| panic!("{bin}: {e}"));
        assert!(
            r.text.contains("entered through the PVH note"),
            "{}",
            r.text
        );
        check_outcome(bin, &r, &[]);
    }
}
