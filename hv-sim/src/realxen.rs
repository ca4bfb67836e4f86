//! The third real machine: the real Xen hypervisor (Debian's
//! `xen-hypervisor-4.17-amd64`) under QEMU TCG, running a guest image as its
//! 64-bit PV dom0.
//!
//! # How a boot runs
//!
//! [`available`] finds the hypervisor (`/boot/xen-4.17-amd64.gz`, or the
//! file named by `HV_SIM_XEN`, gzipped or a plain ELF) and gunzips it once
//! into `target/hv-sim-xen/` (QEMU's `-kernel` wants the plain ELF32
//! multiboot image; the copy is made again only when the `.gz` is newer).
//! [`boot`] then runs, in a private temporary directory,
//!
//! ```text
//! qemu-system-x86_64 -machine q35 -cpu max -m 512 -smp 1 -nographic
//!     -monitor none -serial stdio -no-reboot -kernel xen -append XEN_CMDLINE
//!     -initrd "guest.elf <guest command line>"
//! ```
//!
//! with no standard input, reads the serial line from QEMU's standard
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

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::kvm::{GuestCheck, parse_checks};
use crate::qemu::QEMU;

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
///   [`DEFAULT_XEN`]; a gzipped one is extracted into the workspace's
///   `target/hv-sim-xen/` (again only when the source is newer).
pub fn available() -> Result<XenImage, String> {
    if std::env::var_os("HV_SIM_NO_XEN").is_some() {
        return Err("HV_SIM_NO_XEN is set".to_string());
    }
    crate::qemu::available()?;
    let (source, from_env) = match std::env::var_os("HV_SIM_XEN") {
        Some(p) if !p.is_empty() => (PathBuf::from(p), true),
        _ => (PathBuf::from(DEFAULT_XEN), false),
    };
    if !source.is_file() {
        return Err(if from_env {
            format!("HV_SIM_XEN={} is not a file", source.display())
        } else {
            format!(
                "{} not found; install Debian's xen-hypervisor-4.17-amd64 \
                 (apt-get install --no-install-recommends xen-hypervisor-4.17-amd64) \
                 or set HV_SIM_XEN",
                source.display()
            )
        });
    }
    let version = version_from_name(&source);
    let elf = if is_gzip(&source)? {
        extract(&source)?
    } else {
        source.clone()
    };
    check_elf(&elf)?;
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
    let image = available().map_err(RealXenError::Unavailable)?;
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

impl RealXenReport {
    /// Checks passed.
    pub fn passed(&self) -> usize {
        self.checks.iter().filter(|c| c.passed).count()
    }

    /// Checks that ran (passed or failed; skipped ones excluded).
    pub fn ran(&self) -> usize {
        self.checks.iter().filter(|c| !c.skipped).count()
    }

    /// Checks the guest reported as skipped.
    pub fn skipped(&self) -> usize {
        self.checks.iter().filter(|c| c.skipped).count()
    }

    /// Checks that failed.
    pub fn failed(&self) -> Vec<&GuestCheck> {
        self.checks
            .iter()
            .filter(|c| !c.passed && !c.skipped)
            .collect()
    }

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
pub enum RealXenError {
    /// Xen or QEMU is not usable here (the reason to print with `SKIPPED:`).
    #[error("real Xen is unavailable: {0}")]
    Unavailable(String),
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

/// `4.17` from `xen-4.17-amd64.gz` (digits and dots after `xen-`, at least
/// one dot).
fn version_from_name(p: &Path) -> Option<String> {
    let name = p.file_name()?.to_str()?;
    let rest = &name[name.find("xen-")? + 4..];
    let v: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let v = v.trim_end_matches('.');
    (v.contains('.') && v.starts_with(|c: char| c.is_ascii_digit())).then(|| v.to_string())
}

fn read_magic(p: &Path, n: usize) -> Result<Vec<u8>, String> {
    let mut f = std::fs::File::open(p).map_err(|e| format!("opening {}: {e}", p.display()))?;
    let mut buf = vec![0u8; n];
    let mut got = 0;
    while got < n {
        match f.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) => return Err(format!("reading {}: {e}", p.display())),
        }
    }
    buf.truncate(got);
    Ok(buf)
}

fn is_gzip(p: &Path) -> Result<bool, String> {
    Ok(read_magic(p, 2)? == [0x1f, 0x8b])
}

fn check_elf(p: &Path) -> Result<(), String> {
    if read_magic(p, 4)? == b"\x7fELF" {
        Ok(())
    } else {
        Err(format!("{} is not an ELF image", p.display()))
    }
}

/// `target/hv-sim-xen` of this workspace.
fn cache_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .unwrap_or(manifest)
        .join("target/hv-sim-xen")
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn unique(stem: &str) -> String {
    format!(
        "{stem}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Gunzip `gz` into the cache unless a copy at least as new is there.
fn extract(gz: &Path) -> Result<PathBuf, String> {
    let name = gz
        .file_name()
        .and_then(|n| n.to_str())
        .map(|n| n.strip_suffix(".gz").unwrap_or(n).to_string())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "xen".to_string());
    let dir = cache_dir();
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let out = dir.join(&name);
    let src_time = std::fs::metadata(gz)
        .and_then(|m| m.modified())
        .map_err(|e| format!("reading the time of {}: {e}", gz.display()))?;
    if let Ok(m) = std::fs::metadata(&out)
        && m.len() > 0
        && m.modified().is_ok_and(|t| t >= src_time)
    {
        return Ok(out);
    }
    // Extract beside it under a unique name, then rename: tests running at
    // once never see a half-written image.
    let tmp = dir.join(unique(&format!(".{name}")));
    let result = (|| {
        let f = std::fs::File::open(gz).map_err(|e| format!("opening {}: {e}", gz.display()))?;
        let mut dec = flate2::read::MultiGzDecoder::new(std::io::BufReader::new(f));
        let mut w =
            std::fs::File::create(&tmp).map_err(|e| format!("creating {}: {e}", tmp.display()))?;
        std::io::copy(&mut dec, &mut w)
            .map_err(|e| format!("gunzipping {} to {}: {e}", gz.display(), tmp.display()))?;
        drop(w);
        std::fs::rename(&tmp, &out)
            .map_err(|e| format!("renaming {} to {}: {e}", tmp.display(), out.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| out)
}

// ---------------------------------------------------------------------------
// Running QEMU.

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `-initrd`'s string: the guest's file name, then its command line, commas
/// doubled (QEMU splits the string into modules at single commas).
fn initrd_arg(file: &str, cmdline: &str) -> Result<String, RealXenError> {
    if cmdline.len() > MAX_GUEST_CMDLINE {
        return Err(RealXenError::BadCmdline(format!(
            "{} bytes, Xen keeps at most {MAX_GUEST_CMDLINE}",
            cmdline.len()
        )));
    }
    if let Some(c) = cmdline.chars().find(|c| c.is_control()) {
        return Err(RealXenError::BadCmdline(format!(
            "it holds the control character {c:?}"
        )));
    }
    let cmdline = cmdline.trim();
    Ok(if cmdline.is_empty() {
        file.to_string()
    } else {
        format!("{file} {}", cmdline.replace(',', ",,"))
    })
}

/// What the serial line has shown so far.
#[derive(Default)]
struct Scan {
    serial: String,
    serial_truncated: bool,
    serial_bytes: u64,
    guest_text: String,
    guest_truncated: bool,
    /// Last [`TAIL_LINES`] lines.
    tail: std::collections::VecDeque<String>,
    xen_seen: bool,
    xen_version: Option<String>,
    xen_banner: Option<String>,
    exit_status: Option<u32>,
    shutdown: Option<ShutdownReason>,
    panic: Option<String>,
    /// The panic message is complete (Xen printed its last line).
    panic_done: bool,
    crash: Option<String>,
    partial: Vec<u8>,
}

impl Scan {
    fn feed(&mut self, bytes: &[u8]) {
        self.serial_bytes += bytes.len() as u64;
        for &b in bytes {
            if b == b'\n' {
                let line = std::mem::take(&mut self.partial);
                self.line(&line, true);
            } else {
                self.partial.push(b);
                if self.partial.len() >= MAX_LINE {
                    let line = std::mem::take(&mut self.partial);
                    self.line(&line, true);
                }
            }
        }
    }

    /// The serial line closed: take what is left as a last line.
    fn finish(&mut self) {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.line(&line, false);
        }
    }

    fn keep(&mut self, line: &str, newline: bool) {
        let need = line.len() + usize::from(newline);
        if self.serial_truncated || self.serial.len() + need > SERIAL_CAP {
            self.serial_truncated = true;
            return;
        }
        self.serial.push_str(line);
        if newline {
            self.serial.push('\n');
        }
    }

    fn line(&mut self, raw: &[u8], newline: bool) {
        let text = printable(&String::from_utf8_lossy(raw));
        let line = text.as_str();
        self.keep(line, newline);
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line.to_string());

        let xen_line = if self.xen_seen {
            line.strip_prefix("(XEN)")
        } else {
            // Before Xen's first line: the firmware's text; Xen's first
            // line may follow the firmware's escape sequences.
            match line.find("(XEN)") {
                Some(i) => {
                    self.xen_seen = true;
                    Some(&line[i + 5..])
                }
                None => return,
            }
        };
        match xen_line {
            Some(msg) => {
                let msg = msg.strip_prefix(' ').unwrap_or(msg).to_string();
                self.xen_message(&msg);
            }
            None => self.guest_line(line),
        }
    }

    fn guest_line(&mut self, line: &str) {
        if let Some(n) = line
            .trim()
            .strip_prefix(hvsim_boot_protocol::EXIT_STATUS_PREFIX)
            && let Ok(n) = n.trim().parse()
        {
            self.exit_status = Some(n);
        }
        if self.guest_truncated || self.guest_text.len() + line.len() + 1 > SERIAL_CAP {
            self.guest_truncated = true;
            return;
        }
        self.guest_text.push_str(line);
        self.guest_text.push('\n');
    }

    fn xen_message(&mut self, msg: &str) {
        if self.xen_banner.is_none()
            && let Some(rest) = msg.strip_prefix("Xen version ")
        {
            self.xen_version = rest.split_whitespace().next().map(str::to_string);
            self.xen_banner = Some(msg.to_string());
        }
        if self.shutdown.is_none()
            && let Some(r) = parse_hwdom_shutdown(msg)
        {
            self.shutdown = Some(r);
        }
        if self.panic.is_none() && msg.starts_with("Panic on CPU") {
            self.panic = Some(msg.to_string());
        } else if let Some(p) = &mut self.panic
            && p.ends_with(':')
            && !msg.starts_with("****")
        {
            // The panic's message: the line after "Panic on CPU N:".
            p.push(' ');
            p.push_str(msg.trim());
        }
        if self.panic.is_some()
            && (msg.starts_with("Manual reset required")
                || msg.starts_with("Reboot in five seconds")
                || msg.starts_with("Crash in five seconds"))
        {
            self.panic_done = true;
        }
        if self.crash.is_none()
            && (msg.contains("domain_crash")
                || (msg.starts_with("Domain ") && msg.contains(" crashed")))
        {
            self.crash = Some(msg.to_string());
        }
    }

    fn tail(&self) -> String {
        let mut s = String::new();
        for l in &self.tail {
            s.push_str(l);
            s.push('\n');
        }
        s
    }
}

/// `line` without terminal escape sequences (the firmware clears the
/// screen: printed in a test's output they would reset the terminal) and
/// other control characters but tabs (Xen's `\r`).
fn printable(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: parameters and intermediates up to a final byte; any
            // other escape is ESC and one character.
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('\x40'..='\x7e').contains(&c) {
                        break;
                    }
                }
            }
        } else if c == '\t' || !c.is_control() {
            out.push(c);
        }
    }
    out
}

/// The shutdown a `hwdom_shutdown` line (without `(XEN) `) reports.
fn parse_hwdom_shutdown(msg: &str) -> Option<ShutdownReason> {
    if msg.starts_with("Hardware domain ") && msg.contains(" did unsupported soft reset") {
        return Some(ShutdownReason::SoftReset);
    }
    let rest = msg.strip_prefix("Hardware Dom")?;
    let rest = rest.trim_start_matches(|c: char| c.is_ascii_digit());
    if rest.starts_with(" halted: halting machine") {
        Some(ShutdownReason::Poweroff)
    } else if rest.starts_with(" crashed:") {
        Some(ShutdownReason::Crash)
    } else if rest.starts_with(" shutdown: watchdog rebooting machine") {
        Some(ShutdownReason::Watchdog)
    } else if rest.starts_with(" shutdown: rebooting machine") {
        Some(ShutdownReason::Reboot)
    } else if let Some(r) = rest.strip_prefix(" shutdown (unknown reason ") {
        let n: String = r.chars().take_while(|c| c.is_ascii_digit()).collect();
        n.parse().ok().map(ShutdownReason::Unknown)
    } else {
        None
    }
}

/// QEMU, killed (and reaped) on drop.
struct Qemu(std::process::Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

fn run(
    image: &XenImage,
    elf: &Path,
    cmdline: &str,
    timeout: Duration,
) -> Result<RealXenReport, RealXenError> {
    let initrd = initrd_arg("guest.elf", cmdline)?;
    let dir = TempDir(std::env::temp_dir().join(unique("hv-sim-xen")));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0).map_err(io_err(format!("creating {}", dir.0.display())))?;
    // Fixed names in the directory: no path of the caller's reaches QEMU's
    // option parser (spaces and commas in -initrd's string are syntax).
    std::fs::copy(elf, dir.0.join("guest.elf")).map_err(io_err(format!(
        "copying the guest {} to {}",
        elf.display(),
        dir.0.display()
    )))?;
    let xen_abs = std::fs::canonicalize(&image.elf)
        .map_err(io_err(format!("finding {}", image.elf.display())))?;
    std::os::unix::fs::symlink(&xen_abs, dir.0.join("xen")).map_err(io_err(format!(
        "linking {} into {}",
        xen_abs.display(),
        dir.0.display()
    )))?;
    let stderr_path = dir.0.join("qemu-stderr.txt");
    let stderr = std::fs::File::create(&stderr_path)
        .map_err(io_err(format!("creating {}", stderr_path.display())))?;

    let start = Instant::now();
    let mut qemu = Qemu(
        Command::new(QEMU)
            .current_dir(&dir.0)
            .args(["-machine", "q35", "-cpu", "max", "-m", "512", "-smp", "1"])
            .args(["-nographic", "-monitor", "none", "-serial", "stdio"])
            .args(["-no-reboot", "-kernel", "xen", "-append", XEN_CMDLINE])
            .arg("-initrd")
            .arg(&initrd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(io_err(format!("starting {QEMU}")))?,
    );
    let mut out = qemu.0.stdout.take().ok_or_else(|| RealXenError::Io {
        what: "taking QEMU's standard output".to_string(),
        source: std::io::Error::other("no pipe"),
    })?;
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match out.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
            }
        }
    });

    let deadline = start + timeout;
    let mut scan = Scan::default();
    let mut grace_until: Option<Instant> = None;
    let mut closed = false;
    loop {
        if scan.shutdown.is_some() || (scan.panic.is_some() && scan.panic_done) {
            break;
        }
        if (scan.panic.is_some() || scan.crash.is_some()) && grace_until.is_none() {
            grace_until = Some(Instant::now() + GRACE);
        }
        let now = Instant::now();
        let until = grace_until.map_or(deadline, |g| g.min(deadline));
        if now >= until {
            // Past a grace period the panic or crash is the error; past
            // the deadline, the time.
            break;
        }
        match rx.recv_timeout(until - now) {
            Ok(bytes) => scan.feed(&bytes),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                closed = true;
                break;
            }
        }
    }
    let wall = start.elapsed();
    // QEMU's status, when it ended by itself (its pipe closed): give it a
    // moment to be reaped.
    let mut status = None;
    let reap_until = Instant::now() + Duration::from_secs(2);
    while closed && Instant::now() < reap_until {
        match qemu.0.try_wait() {
            Ok(Some(s)) => {
                status = Some(s);
                break;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(_) => break,
        }
    }
    drop(qemu); // kill QEMU if it still runs; its end closes the pipe
    let _ = reader.join();
    // Whatever the pipe still held, then a last unterminated line.
    while let Ok(bytes) = rx.try_recv() {
        scan.feed(&bytes);
    }
    // The last line may be the shutdown line without its newline.
    scan.finish();

    if let Some(marker) = scan.panic.clone() {
        return Err(RealXenError::XenPanic {
            marker,
            tail: scan.tail(),
        });
    }
    if let Some(marker) = scan.crash.clone() {
        return Err(RealXenError::DomainCrashed {
            marker,
            tail: scan.tail(),
        });
    }
    let Some(shutdown) = scan.shutdown else {
        if closed {
            let mut err = std::fs::read(&stderr_path).unwrap_or_default();
            err.truncate(4096);
            return Err(RealXenError::QemuExited {
                status: status.map_or_else(|| "status unknown".to_string(), |s| s.to_string()),
                stderr: String::from_utf8_lossy(&err).trim().to_string(),
                tail: scan.tail(),
            });
        }
        return Err(RealXenError::Timeout {
            limit: timeout,
            tail: scan.tail(),
        });
    };
    let checks = parse_checks(&scan.guest_text);
    Ok(RealXenReport {
        serial: scan.serial,
        serial_truncated: scan.serial_truncated,
        serial_bytes: scan.serial_bytes,
        guest_text: scan.guest_text,
        checks,
        exit_status: scan.exit_status,
        shutdown,
        xen_version: scan.xen_version,
        xen_banner: scan.xen_banner,
        wall,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_from_file_names() {
        assert_eq!(
            version_from_name(Path::new("/boot/xen-4.17-amd64.gz")).as_deref(),
            Some("4.17")
        );
        assert_eq!(
            version_from_name(Path::new("xen-4.19.1")).as_deref(),
            Some("4.19.1")
        );
        assert_eq!(version_from_name(Path::new("/tmp/xen")), None);
        assert_eq!(version_from_name(Path::new("xen-amd64")), None);
    }

    #[test]
    fn hwdom_shutdown_lines() {
        use ShutdownReason::*;
        let p = parse_hwdom_shutdown;
        assert_eq!(p("Hardware Dom0 halted: halting machine"), Some(Poweroff));
        assert_eq!(
            p("Hardware Dom0 crashed: 'noreboot' set - not rebooting."),
            Some(Crash)
        );
        assert_eq!(p("Hardware Dom0 shutdown: rebooting machine"), Some(Reboot));
        assert_eq!(
            p("Hardware Dom0 shutdown: watchdog rebooting machine"),
            Some(Watchdog)
        );
        assert_eq!(
            p("Hardware domain 0 did unsupported soft reset, rebooting."),
            Some(SoftReset)
        );
        assert_eq!(
            p("Hardware Dom0 shutdown (unknown reason 7): 'noreboot' set - not rebooting."),
            Some(Unknown(7))
        );
        assert_eq!(p("Dom0 has maximum 1 VCPUs"), None);
    }

    #[test]
    fn initrd_string() {
        assert_eq!(initrd_arg("g", "").unwrap(), "g");
        assert_eq!(initrd_arg("g", " a,b c ").unwrap(), "g a,,b c");
        assert!(matches!(
            initrd_arg("g", "a\nb"),
            Err(RealXenError::BadCmdline(_))
        ));
        assert!(matches!(
            initrd_arg("g", &"x".repeat(2000)),
            Err(RealXenError::BadCmdline(_))
        ));
    }

    const SERIAL: &str = "SeaBIOS (version 1.16.2)\r\n\
        Booting from ROM..\x1bc\x1b[2J(XEN) Xen version 4.17.7 (Debian 4.17.7+13) (x) debug=n\r\n\
        (XEN) Freed 656kB init memory\r\n\
        check pass hello: ok\r\n\
        check skip later: not here\r\n\
        exit status 0\r\n\
        (XEN) Hardware Dom0 halted: halting machine\r\n";

    #[test]
    fn scan_separates_xen_and_guest() {
        let mut s = Scan::default();
        // Fed in pieces that split lines.
        for chunk in SERIAL.as_bytes().chunks(7) {
            s.feed(chunk);
        }
        s.finish();
        assert_eq!(s.xen_version.as_deref(), Some("4.17.7"));
        assert_eq!(
            s.guest_text,
            "check pass hello: ok\ncheck skip later: not here\nexit status 0\n"
        );
        assert_eq!(s.exit_status, Some(0));
        assert_eq!(s.shutdown, Some(ShutdownReason::Poweroff));
        assert!(s.crash.is_none() && s.panic.is_none());
        assert!(!s.serial.contains('\r') && !s.serial.contains('\x1b'));
        assert!(
            s.serial
                .contains("\nBooting from ROM..(XEN) Xen version 4.17.7")
        );
        assert_eq!(s.serial_bytes, SERIAL.len() as u64);
        let r = RealXenReport {
            checks: parse_checks(&s.guest_text),
            serial: s.serial,
            serial_truncated: false,
            serial_bytes: s.serial_bytes,
            guest_text: s.guest_text,
            exit_status: s.exit_status,
            shutdown: ShutdownReason::Poweroff,
            xen_version: s.xen_version,
            xen_banner: s.xen_banner,
            wall: Duration::ZERO,
        };
        assert_eq!(
            r.summary_line("xen"),
            "backend=xen on=xen-4.17 checks=1/1 skipped=1"
        );
    }

    #[test]
    fn scan_sees_crashes_and_panics() {
        let mut s = Scan::default();
        s.feed(
            b"(XEN) Xen version 4.17.7\r\nhi\r\n(XEN) d0v0 Unhandled: vec 6\r\n\
              (XEN) domain_crash_sync called from entry.S\r\n\
              (XEN) Domain 0 (vcpu#0) crashed on cpu#0:\r\n\
              (XEN) Hardware Dom0 crashed: 'noreboot' set - not rebooting.\r\n",
        );
        assert_eq!(
            s.crash.as_deref(),
            Some("domain_crash_sync called from entry.S")
        );
        assert_eq!(s.shutdown, Some(ShutdownReason::Crash));
        assert!(s.tail().contains("Unhandled"));

        let mut s = Scan::default();
        s.feed(
            b"(XEN) Xen version 4.17.7\r\n(XEN) \r\n(XEN) ****\r\n(XEN) Panic on CPU 0:\r\n\
              (XEN) oops\r\n(XEN) ****\r\n(XEN) \r\n",
        );
        assert_eq!(s.panic.as_deref(), Some("Panic on CPU 0: oops"));
        assert!(!s.panic_done);
        s.feed(b"(XEN) Manual reset required ('noreboot' specified)\r\n");
        assert!(s.panic_done);
    }

    #[test]
    fn escapes_are_dropped() {
        assert_eq!(printable("a\x1bc\x1b[?7l\x1b[2J\x1b[0mb\tc\r"), "ab\tc");
        assert_eq!(printable("x\x1b"), "x");
    }

    #[test]
    fn serial_is_capped() {
        let mut s = Scan::default();
        s.feed(b"(XEN) Xen version 4.17.7\n");
        let line = vec![b'x'; 1 << 20];
        for _ in 0..20 {
            s.feed(&line);
            s.feed(b"\n");
        }
        s.feed(b"(XEN) Hardware Dom0 halted: halting machine\n");
        assert!(s.serial_truncated);
        assert!(s.serial.len() <= SERIAL_CAP);
        assert_eq!(s.shutdown, Some(ShutdownReason::Poweroff));
    }
}
