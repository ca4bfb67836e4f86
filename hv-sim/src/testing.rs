//! Helpers for tests that need real machines.

use std::io::Write;

/// Report a skipped test: `SKIPPED: <test>: <reason>` on the process's
/// standard error, written directly rather than with `eprintln!`, so the
/// test harness's output capture does not swallow it and the line shows
/// in a normal `cargo test` run.
pub fn skipped(test: &str, why: &str) {
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED: {test}: {why}");
}

/// Is KVM usable here? If not, report the test as skipped (see
/// [`skipped`]) and answer false.
pub fn kvm_or_skip(test: &str) -> bool {
    match crate::kvm::available() {
        Ok(()) => true,
        Err(why) => {
            skipped(test, &why);
            false
        }
    }
}

/// Build the example kernel and read its ELF image.
pub fn example_kernel_image() -> Result<Vec<u8>, String> {
    let elf = crate::kernel_build::build_example_kernel()?;
    std::fs::read(&elf).map_err(|e| format!("reading {}: {e}", elf.display()))
}
