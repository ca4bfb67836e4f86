//! Boot the example kernel in a real KVM virtual machine.
//!
//! Needs /dev/kvm; prints `SKIPPED: <reason>` and passes without it (CI on
//! this project's machines has it, so there it runs).

#[path = "common/text.rs"]
mod text;

use hv_sim::kvm::CheckSummary;
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

/// Issue 9: the kernel starts vCPU 1 through the runner's START_AP port;
/// each CPU loads its own GDT, TSS, kernel stack and TLS through the
/// per-CPU pvops table and reads back (str, sgdt, the TSS's rsp0, FS:0)
/// what it has, and the boot CPU compares both with what each loaded.
#[test]
fn native_boot_brings_up_a_second_vcpu_with_its_own_tr_rsp0_and_fs() {
    if !kvm_or_skip("native_boot_brings_up_a_second_vcpu_with_its_own_tr_rsp0_and_fs") {
        return;
    }
    let image = example_kernel_image().expect("example kernel builds");
    let report = kvm::boot(&image, &Config::default()).unwrap_or_else(|e| panic!("{e}"));
    let smp = report
        .checks
        .iter()
        .find(|c| c.name.starts_with("smp 2 CPUs"))
        .unwrap_or_else(|| panic!("no smp check in:\n{}", report.text));
    assert!(smp.passed, "{smp:?}\n{}", report.text);
    assert!(smp.detail.contains("START_AP"), "{smp:?}");
    for cpu in 0..2 {
        assert!(
            report.text.contains(&format!("smp cpu {cpu}: done=1 ")),
            "{}",
            report.text
        );
    }
    // KVM's side: vCPU 1's TR and GDTR as KVM_GET_SREGS reports them at its
    // halt, and the rsp0 of the TSS its TR names (read from guest memory by
    // the runner), are what the kernel says CPU 1 loaded, and not CPU 0's.
    let line = |prefix: &str| text::line(&report.text, prefix);
    let (kvm1, cpu0, cpu1) = (
        line("hv-sim: vCPU 1 halted:"),
        line("smp cpu 0:"),
        line("smp cpu 1:"),
    );
    assert_eq!(
        text::field(&kvm1, "tr.base="),
        text::field(&cpu1, " tss="),
        "{kvm1}\n{cpu1}"
    );
    assert_eq!(
        text::field(&kvm1, "gdt.base="),
        text::field(&cpu1, " gdt="),
        "{kvm1}\n{cpu1}"
    );
    assert_eq!(
        text::field(&kvm1, "TSS.rsp0="),
        text::field(&cpu1, " rsp0="),
        "{kvm1}\n{cpu1}"
    );
    assert_eq!(text::field(&kvm1, " tr="), "0x40", "{kvm1}");
    assert_ne!(text::field(&cpu0, " tss="), text::field(&cpu1, " tss="));
    assert_ne!(text::field(&cpu0, " rsp0="), text::field(&cpu1, " rsp0="));
}

#[test]
fn malformed_images_are_refused() {
    let err = kvm::parse_elf(b"not an elf").unwrap_err();
    assert!(err.to_string().contains("kernel image rejected"), "{err}");
    assert!(matches!(err, kvm::KvmError::Elf(_)), "{err:?}");
    assert!(std::error::Error::source(&err).is_some(), "{err:?}");
}
