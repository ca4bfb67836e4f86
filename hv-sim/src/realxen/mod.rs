//! The third real machine: the real Xen hypervisor (Debian's
//! `xen-hypervisor-4.17-amd64`) under QEMU TCG, running a guest image as its
//! 64-bit PV dom0.
//!
//! # How a boot runs
//!
//! [`available`] finds the hypervisor (`/boot/xen-4.17-amd64.gz`, or the
//! file named by `HV_SIM_XEN`, gzipped or a plain ELF) and gunzips it once
//! into `hv-sim-xen/` of the target directory (QEMU's `-kernel` wants the
//! plain ELF32 multiboot image; the copy is made again only when the `.gz` is newer).
//! [`boot`] then runs, in a private temporary directory,
//!
//! ```text
//! qemu-system-x86_64 -machine q35 -cpu max -m 512 -smp 2 -nographic
//!     -monitor none -serial stdio -no-reboot -kernel xen -append XEN_CMDLINE
//!     -initrd "guest.elf <guest command line>"
//! ```
//!
//! (two CPUs, so dom0 has two vCPUs: the example kernel starts the second
//! with `VCPUOP_initialise`), with no standard input, reads the serial line from QEMU's standard
//! output as it comes and ends QEMU itself: Xen halts the machine when dom0
//! shuts down, but QEMU keeps running.
//!
//! # What the runner depends on
//!
//! * The guest is the first multiboot module, so Xen builds it as dom0; the
//!   text after the file name in `-initrd`'s string is dom0's command line
//!   (`start_info.cmd_line`). QEMU splits `-initrd` at commas, so a comma in
//!   the command line is passed doubled (QEMU's escape).
//! * Xen prefixes each of its own lines with `(XEN) `. Dom0's
//!   `console_io(CONSOLEIO_write)` text reaches the serial line **without a
//!   prefix** (Xen writes the hardware domain's text straight out; a domU's
//!   would carry `(dN) `). Lines end in `\r\n`. Before Xen's first line the
//!   serial line carries the firmware's (SeaBIOS, iPXE) text. So the guest's
//!   text is every line after Xen's first `(XEN)` line that does not start
//!   with `(XEN)`.
//! * Xen's banner line: `Xen version %d.%d%s (...)` (`xen/drivers/char/
//!   console.c`, `console_init_preirq`), e.g. `Xen version 4.17.7 (Debian
//!   ...)`.
//! * Dom0's shutdown: `sched_op(SCHEDOP_shutdown)` reaches `domain_shutdown`,
//!   which for the hardware domain calls `hwdom_shutdown`
//!   (`xen/common/shutdown.c`, 4.17), printing one of
//!   `Hardware Dom%u halted: halting machine` (poweroff),
//!   `Hardware Dom%u crashed: ` (crash; with `noreboot` followed on the same
//!   line by `'noreboot' set - not rebooting.`),
//!   `Hardware Dom%u shutdown: rebooting machine` (reboot; QEMU then exits
//!   by itself, `-no-reboot`),
//!   `Hardware Dom%u shutdown: watchdog rebooting machine`,
//!   `Hardware domain %d did unsupported soft reset, rebooting.` and
//!   `Hardware Dom%u shutdown (unknown reason %u): `.
//! * A guest that Xen crashes (an exception with no handler, a bad
//!   hypercall frame ...) first gets `domain_crash called from %s:%d`
//!   (`xen/include/xen/sched.h`) or `domain_crash_sync called from ...`,
//!   then `Domain %d (vcpu#%d) crashed on cpu#%d:` or `Domain %d reported
//!   crashed by domain %d on cpu#%d:` (`xen/common/domain.c`,
//!   `__domain_crash`), a register dump, and then the same
//!   `Hardware Dom0 crashed: ` line as a guest that asked to crash: the
//!   earlier lines are what tell the two apart ([`RealXenError::DomainCrashed`]).
//! * A hypervisor panic prints `Panic on CPU %d:`, the message, a line of
//!   stars and `Manual reset required ('noreboot' specified)`
//!   (`xen/drivers/char/console.c`, `panic`) ([`RealXenError::XenPanic`]).
//!
//! Debian's 4.17 build has no 32-bit PV support (`CONFIG_PV32` unset): only
//! 64-bit PV guests run.

use crate::kvm::CheckSummary;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::kvm::GuestCheck;

mod image;
mod run;
mod scan;
#[cfg(test)]
mod tests;

use image::{check_elf, extract, is_gzip, version_from_name};
use run::run;

/// Where Debian's `xen-hypervisor-4.17-amd64` puts the hypervisor.
pub const DEFAULT_XEN: &str = "/boot/xen-4.17-amd64.gz";

/// Xen's command line: its console on the first serial port, 64 MiB for
/// dom0, halt instead of rebooting on a crash or panic (so the runner sees
/// the messages), and every log level.
pub const XEN_CMDLINE: &str = "console=com1 dom0_mem=64M noreboot loglvl=all guest_loglvl=all";

/// The most serial text a [`RealXenReport`] keeps (16 MiB); the rest is
/// still scanned for Xen's messages but not stored.
pub const SERIAL_CAP: usize = 16 << 20;

/// Lines of serial output an error carries.
pub const TAIL_LINES: usize = 60;

/// Longest guest command line: Xen's `MAX_GUEST_CMDLINE` (1024) less the NUL.
pub const MAX_GUEST_CMDLINE: usize = 1023;

/// How long the runner keeps reading after Xen announced a panic or a
/// domain crash, for the rest of the message.
const GRACE: Duration = Duration::from_secs(3);

/// A line longer than this is taken as complete (a guest printing without
/// newlines must not grow memory without bound).
const MAX_LINE: usize = 64 << 10;

/// The hypervisor image QEMU loads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XenImage {
    /// The plain ELF image (the gunzipped cache, or the ELF named by
    /// `HV_SIM_XEN`).
    pub elf: PathBuf,
    /// Where it came from (the `.gz`, or the same ELF).
    pub source: PathBuf,
    /// The version the source file's name gives (`xen-4.17-amd64.gz` →
    /// `4.17`), if it names one.
    pub version: Option<String>,
}

impl XenImage {
    /// `xen-<version>` (`xen-4.17`), or `xen` when the file name gives no
    /// version.
    pub fn label(&self) -> String {
        match &self.version {
            Some(v) => format!("xen-{v}"),
            None => "xen".to_string(),
        }
    }

    /// Boot `elf` as dom0 on this hypervisor; see [`boot`].
    pub fn boot(
        &self,
        elf: &Path,
        cmdline: &str,
        timeout: Duration,
    ) -> Result<RealXenReport, RealXenError> {
        run(self, elf, cmdline, timeout)
    }
}

/// Can real Xen run here? Returns the hypervisor image, or why not.
///
/// * `HV_SIM_NO_XEN` set: no (to exercise skips);
/// * QEMU must be installed ([`crate::qemu::available`]);
/// * the hypervisor is `HV_SIM_XEN` if set (a `.gz` or a plain ELF), else
///   [`DEFAULT_XEN`]; a gzipped one is extracted into `hv-sim-xen/` of
///   the target directory (`CARGO_TARGET_DIR`, else the workspace's
///   `target/`), again only when the source is newer.
pub fn available() -> Result<XenImage, crate::kvm::Unavailable> {
    use crate::kvm::Unavailable;
    if std::env::var_os("HV_SIM_NO_XEN").is_some() {
        return Err(Unavailable::Disabled("HV_SIM_NO_XEN"));
    }
    crate::qemu::available()?;
    let (source, from_env) = match std::env::var_os("HV_SIM_XEN") {
        Some(p) if !p.is_empty() => (PathBuf::from(p), true),
        _ => (PathBuf::from(DEFAULT_XEN), false),
    };
    if !source.is_file() {
        return Err(Unavailable::Image(if from_env {
            format!("HV_SIM_XEN={} is not a file", source.display())
        } else {
            format!(
                "{} not found; install Debian's xen-hypervisor-4.17-amd64 \
                 (apt-get install --no-install-recommends xen-hypervisor-4.17-amd64) \
                 or set HV_SIM_XEN",
                source.display()
            )
        }));
    }
    let version = version_from_name(&source);
    let elf = if is_gzip(&source).map_err(Unavailable::Image)? {
        extract(&source).map_err(Unavailable::Image)?
    } else {
        source.clone()
    };
    check_elf(&elf).map_err(Unavailable::Image)?;
    Ok(XenImage {
        elf,
        source,
        version,
    })
}

/// Boot `elf` (a 64-bit PV kernel with Xen's ELF notes) as dom0 of real Xen
/// under QEMU, passing it `cmdline`, and collect its report.
///
/// Finds the hypervisor with [`available`]. Ends QEMU once Xen reports
/// dom0's shutdown; a Xen panic, a domain crash by Xen, QEMU ending first
/// or `timeout` passing are errors that carry the last lines of the serial
/// output.
pub fn boot(elf: &Path, cmdline: &str, timeout: Duration) -> Result<RealXenReport, RealXenError> {
    let image = available()?;
    run(&image, elf, cmdline, timeout)
}

/// How dom0 shut down, as Xen's `hwdom_shutdown` reported it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShutdownReason {
    /// `SHUTDOWN_poweroff` (0): "Hardware Dom0 halted: halting machine".
    Poweroff,
    /// `SHUTDOWN_reboot` (1): "Hardware Dom0 shutdown: rebooting machine".
    Reboot,
    /// `SHUTDOWN_crash` (3): "Hardware Dom0 crashed: ".
    Crash,
    /// `SHUTDOWN_watchdog` (4).
    Watchdog,
    /// `SHUTDOWN_soft_reset` (5).
    SoftReset,
    /// Any other code ("unknown reason N"; suspend (2) lands here too).
    Unknown(u32),
}

impl ShutdownReason {
    /// The `SHUTDOWN_*` code.
    pub fn code(self) -> u32 {
        match self {
            Self::Poweroff => 0,
            Self::Reboot => 1,
            Self::Crash => 3,
            Self::Watchdog => 4,
            Self::SoftReset => 5,
            Self::Unknown(n) => n,
        }
    }
}

impl std::fmt::Display for ShutdownReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Poweroff => f.write_str("poweroff"),
            Self::Reboot => f.write_str("reboot"),
            Self::Crash => f.write_str("crash"),
            Self::Watchdog => f.write_str("watchdog"),
            Self::SoftReset => f.write_str("soft_reset"),
            Self::Unknown(n) => write!(f, "unknown reason {n}"),
        }
    }
}

/// What one boot on real Xen produced.
#[derive(Clone, Debug)]
pub struct RealXenReport {
    /// The serial output, lines ending in `\n`, without Xen's `\r`, the
    /// firmware's terminal escapes or other control characters, at most
    /// [`SERIAL_CAP`] bytes.
    pub serial: String,
    /// The serial output was longer than [`SERIAL_CAP`] and was cut.
    pub serial_truncated: bool,
    /// Bytes QEMU wrote on the serial line in all.
    pub serial_bytes: u64,
    /// The guest's text: the lines after Xen's first that are not Xen's.
    pub guest_text: String,
    /// Checks parsed from the guest's text.
    pub checks: Vec<GuestCheck>,
    /// N from the guest's last `exit status N` line.
    pub exit_status: Option<u32>,
    /// The shutdown Xen reported.
    pub shutdown: ShutdownReason,
    /// Xen's version from its banner (`4.17.7`).
    pub xen_version: Option<String>,
    /// Xen's whole banner line (`Xen version 4.17.7 (Debian ...) ...`).
    pub xen_banner: Option<String>,
    /// From QEMU's start to Xen's shutdown line.
    pub wall: Duration,
}

impl crate::kvm::CheckSummary for RealXenReport {
    fn checks(&self) -> &[GuestCheck] {
        &self.checks
    }
}

impl RealXenReport {
    /// `xen-<major>.<minor>` from the banner's version (`xen-4.17`), or
    /// `xen-unknown`.
    pub fn on_label(&self) -> String {
        match &self.xen_version {
            Some(v) => {
                let mm: Vec<&str> = v.splitn(3, '.').take(2).collect();
                format!("xen-{}", mm.join("."))
            }
            None => "xen-unknown".to_string(),
        }
    }

    /// The demo's summary line for this boot:
    /// `backend=<name> on=xen-<major.minor> checks=<passed>/<ran> skipped=<n>`.
    pub fn summary_line(&self, backend: &str) -> String {
        format!(
            "backend={backend} on={} checks={}/{} skipped={}",
            self.on_label(),
            self.passed(),
            self.ran(),
            self.skipped()
        )
    }
}

/// Why a boot on real Xen gave no report.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RealXenError {
    /// Xen or QEMU is not usable here (the reason to print with `SKIPPED:`).
    #[error("real Xen is unavailable: {0}")]
    Unavailable(#[from] crate::kvm::Unavailable),
    /// The guest command line cannot be passed.
    #[error("guest command line refused: {0}")]
    BadCmdline(String),
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Xen panicked.
    #[error("Xen panicked ({marker}); last serial lines:\n{tail}")]
    XenPanic {
        /// Xen's `Panic on CPU N:` line and the message line after it.
        marker: String,
        /// The last lines of serial output.
        tail: String,
    },
    /// Xen crashed dom0 (the guest did not ask to stop).
    #[error("Xen crashed dom0 ({marker}); last serial lines:\n{tail}")]
    DomainCrashed {
        /// Xen's first crash line (`domain_crash called from ...`,
        /// `Domain 0 (vcpu#0) crashed on cpu#0:`).
        marker: String,
        /// The last lines of serial output.
        tail: String,
    },
    /// Xen reported no shutdown of dom0 within the limit.
    #[error("dom0 did not shut down within {limit:?}; last serial lines:\n{tail}")]
    Timeout {
        /// The limit.
        limit: Duration,
        /// The last lines of serial output.
        tail: String,
    },
    /// QEMU ended before Xen reported dom0's shutdown.
    #[error(
        "QEMU ended ({status}) before dom0 shut down; QEMU said: {stderr}\nlast serial lines:\n{tail}"
    )]
    QemuExited {
        /// QEMU's exit status.
        status: String,
        /// The start of QEMU's standard error.
        stderr: String,
        /// The last lines of serial output.
        tail: String,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RealXenError {
    let what = what.into();
    move |source| RealXenError::Io { what, source }
}

// ---------------------------------------------------------------------------
// Finding and extracting the hypervisor.

// ---------------------------------------------------------------------------
