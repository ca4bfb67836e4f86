//! Helpers for tests that need real machines.
//!
//! Each `*_or_skip` helper answers whether the machine is there; if not it
//! reports the test as skipped and the test returns early. Where CI has
//! installed the machine, a skip would hide a broken setup, so a skip can
//! be made to fail: with `HV_SIM_REQUIRE_KVM=1`, `HV_SIM_REQUIRE_QEMU=1` or
//! `HV_SIM_REQUIRE_XEN=1` set (any value but empty or `0`), the matching
//! helper panics with the reason instead, and the test fails.

use std::io::Write;

/// Report a skipped test: `SKIPPED: <test>: <reason>` on the process's
/// standard error, written directly rather than with `eprintln!`, so the
/// test harness's output capture does not swallow it and the line shows
/// in a normal `cargo test` run.
pub fn skipped(test: &str, why: &str) {
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED: {test}: {why}");
}

/// Is the variable `var` set to require a machine (set, not empty, not `0`)?
pub fn required(var: &str) -> bool {
    std::env::var_os(var).is_some_and(|v| !v.is_empty() && v != "0")
}

/// Skip `test` because `what` is unavailable (`why`), or, when `var` is
/// [`required`], fail it.
///
/// # Panics
/// When `var` is set: the test must not pass without the machine.
pub fn skip_unless_required(test: &str, var: &str, what: &str, why: &str) {
    if required(var) {
        panic!("{test}: {what} is unavailable but {var} is set: {why}");
    }
    skipped(test, why);
}

/// Is KVM usable here? If not, report the test as skipped (see
/// [`skipped`]) and answer false.
///
/// # Panics
/// When KVM is unavailable and `HV_SIM_REQUIRE_KVM` is set.
pub fn kvm_or_skip(test: &str) -> bool {
    match crate::kvm::available() {
        Ok(()) => true,
        Err(why) => {
            skip_unless_required(test, "HV_SIM_REQUIRE_KVM", "KVM", &why.to_string());
            false
        }
    }
}

/// Is QEMU installed? If not, report the test as skipped and answer false.
///
/// # Panics
/// When QEMU is unavailable and `HV_SIM_REQUIRE_QEMU` is set.
pub fn qemu_or_skip(test: &str) -> bool {
    match crate::qemu::available() {
        Ok(()) => true,
        Err(why) => {
            skip_unless_required(test, "HV_SIM_REQUIRE_QEMU", "QEMU", &why.to_string());
            false
        }
    }
}

/// Can real Xen run here (see [`crate::realxen::available`])? Returns the
/// hypervisor image, or reports the test as skipped and answers `None`.
///
/// # Panics
/// When real Xen is unavailable and `HV_SIM_REQUIRE_XEN` is set.
pub fn xen_or_skip(test: &str) -> Option<crate::realxen::XenImage> {
    match crate::realxen::available() {
        Ok(image) => Some(image),
        Err(why) => {
            skip_unless_required(test, "HV_SIM_REQUIRE_XEN", "real Xen", &why.to_string());
            None
        }
    }
}

/// Why [`example_kernel_image`] has no image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KernelImageError {
    /// The build failed.
    #[error(transparent)]
    Build(#[from] crate::kernel_build::KernelBuildError),
    /// The built ELF file could not be read.
    #[error("reading {path}: {source}", path = path.display())]
    Read {
        /// The ELF file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Build the example kernel and read its ELF image.
pub fn example_kernel_image() -> Result<Vec<u8>, KernelImageError> {
    let elf = crate::kernel_build::build_example_kernel()?;
    std::fs::read(&elf).map_err(|source| KernelImageError::Read { path: elf, source })
}
