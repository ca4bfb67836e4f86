//! Helpers for tests that need real machines.

use std::io::Write;

/// Report a skipped test: `SKIPPED: <test>: <reason>` on the process's
/// standard error, written directly rather than with `eprintln!`, so the
/// test harness's output capture does not swallow it and the line shows
/// in a normal `cargo test` run.
pub fn skipped(test: &str, why: &str) {
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED: {test}: {why}");
}
