//! Why a QEMU differential run gave no report.

use std::time::Duration;

/// Why [`super::run_qemu`], [`super::compare`] or
/// [`super::compare_scenarios`] gave no report.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiffError {
    /// QEMU is not usable here: the reason to print with `SKIPPED:`.
    #[error("QEMU is not available: {0}")]
    Unavailable(#[from] crate::kvm::Unavailable),
    /// The scenarios' image would overlap the records.
    #[error(
        "{scenarios} scenarios make a {bytes}-byte image that reaches the records at {records_at:#x}: run fewer at a time"
    )]
    TooManyScenarios {
        /// How many scenarios.
        scenarios: usize,
        /// The image's size.
        bytes: usize,
        /// Where the records start.
        records_at: u32,
    },
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// QEMU ran past the time limit (and was killed).
    #[error("QEMU still running after {0:?}")]
    Timeout(Duration),
    /// The guest did not write every record and exit.
    #[error("the guest did not finish ({status}; {got} of {want} record bytes): a triple fault?")]
    Unfinished {
        /// QEMU's exit status.
        status: std::process::ExitStatus,
        /// Record bytes read back.
        got: usize,
        /// Record bytes expected.
        want: usize,
    },
    /// The scenarios mix paging modes (one image runs one): the first
    /// scenario whose mode differs from the first one's.
    #[error("scenario {index} has another paging mode than scenario 0: one image runs one mode")]
    MixedPaging {
        /// Its index.
        index: usize,
    },
    /// A scenario [`super::kernel32`] cannot give the kernel (its index).
    #[error("scenario {index} cannot run in examples/kernel32: {why}")]
    NotForKernel32 {
        /// Its index.
        index: usize,
        /// Why.
        why: String,
    },
    /// A comparison thread panicked (a bug in hv-sim): its message.
    #[error("a comparison thread panicked: {0}")]
    ThreadPanicked(String),
}
