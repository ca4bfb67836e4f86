//! The second real machine: the same kernel image under QEMU (TCG, no KVM
//! needed), entered through its PVH note (`XEN_ELFNOTE_PHYS32_ENTRY`).
//!
//! QEMU's `isa-debugcon` (port 0xE9) captures the kernel's text and
//! `isa-debug-exit` (port 0xF4) ends QEMU with exit code `status << 1 | 1`,
//! the same ports hv-sim's KVM runner serves, so the report is parsed the
//! same way.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::kvm::{BootReport, ExitCounts, TEXT_CAP, Unavailable, VcpuIoctls, parse_checks};

/// The first [`TEXT_CAP`] bytes of the kernel's text (lossy UTF-8), and
/// how many more the file holds.
fn read_text(path: &Path) -> (String, u64) {
    use std::io::Read;
    let mut bytes = Vec::new();
    let total = std::fs::File::open(path)
        .and_then(|f| {
            let len = f.metadata()?.len();
            f.take(TEXT_CAP as u64).read_to_end(&mut bytes)?;
            Ok(len)
        })
        .unwrap_or(0);
    (
        String::from_utf8_lossy(&bytes).into_owned(),
        total.saturating_sub(bytes.len() as u64),
    )
}

/// The QEMU binary.
pub const QEMU: &str = "qemu-system-x86_64";

/// Is QEMU installed? `Err(reason)` says why not. Setting `HV_SIM_NO_QEMU`
/// makes it answer no.
pub fn available() -> Result<(), Unavailable> {
    if std::env::var_os("HV_SIM_NO_QEMU").is_some() {
        return Err(Unavailable::Disabled("HV_SIM_NO_QEMU"));
    }
    match Command::new(QEMU)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(s) if s.success() => Ok(()),
        Ok(status) => Err(Unavailable::NotWorking {
            program: QEMU,
            status,
        }),
        Err(source) => Err(Unavailable::NotInstalled {
            program: QEMU,
            hint: "install Debian's qemu-system-x86",
            source,
        }),
    }
}

/// Why a QEMU boot gave no report.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QemuError {
    /// QEMU is not usable here: the reason to print with `SKIPPED:`.
    #[error("QEMU is not available: {0}")]
    Unavailable(#[from] Unavailable),
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
    #[error("QEMU still running after {limit:?}; the kernel printed:\n{text}")]
    Timeout {
        /// The limit.
        limit: Duration,
        /// What the kernel printed.
        text: String,
    },
    /// QEMU ended without the kernel's write to the exit port.
    #[error(
        "QEMU ended without the kernel's exit write ({status}): {stderr}\nthe kernel printed:\n{text}"
    )]
    NoExitWrite {
        /// QEMU's exit status.
        status: std::process::ExitStatus,
        /// What QEMU printed on stderr.
        stderr: String,
        /// What the kernel printed.
        text: String,
    },
}

/// Boot `elf` under QEMU TCG and collect its report. QEMU is killed after
/// `timeout`.
pub fn boot(elf: &Path, timeout: Duration) -> Result<BootReport, QemuError> {
    available()?;
    let io = |what: String| move |source| QemuError::Io { what, source };
    let dir = std::env::temp_dir().join(format!("hv-sim-qemu-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
    let text_path = dir.join("debugcon.txt");
    let _ = std::fs::remove_file(&text_path);
    let mut child = Command::new(QEMU)
        .args(["-machine", "pc", "-accel", "tcg", "-m", "128", "-smp", "2"])
        .args(["-nographic", "-no-reboot", "-display", "none"])
        .args(["-serial", "none", "-monitor", "none"])
        .arg("-kernel")
        .arg(elf)
        .arg("-chardev")
        .arg(format!("file,id=dbg,path={}", text_path.display()))
        .args(["-device", "isa-debugcon,iobase=0xe9,chardev=dbg"])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io(format!("starting {QEMU}")))?;
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if start.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                let (text, _) = read_text(&text_path);
                return Err(QemuError::Timeout {
                    limit: timeout,
                    text,
                });
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(io("waiting for QEMU".into())(e)),
        }
    };
    let (text, text_dropped) = read_text(&text_path);
    let _ = std::fs::remove_dir_all(&dir);
    let exit_status = match status.code() {
        Some(c) if c & 1 == 1 => Some((c >> 1) as u32),
        _ => {
            let mut stderr = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
            }
            return Err(QemuError::NoExitWrite {
                status,
                stderr,
                text,
            });
        }
    };
    Ok(BootReport {
        exit_status,
        checks: parse_checks(&text),
        text,
        text_dropped,
        exits: ExitCounts::default(),
        stray_io: Default::default(),
        // QEMU runs the vCPU; hv-sim counts and times nothing.
        ioctls: VcpuIoctls::default(),
        run_time: Duration::ZERO,
        handle_time: Duration::ZERO,
    })
}
