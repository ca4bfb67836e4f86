//! One boot: QEMU started in a private directory, its serial line read
//! until dom0's shutdown, a panic, a crash or the deadline.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::image::unique;
use super::scan::Scan;
use super::{GRACE, MAX_GUEST_CMDLINE, RealXenError, RealXenReport, XEN_CMDLINE, XenImage, io_err};
use crate::kvm::parse_checks;
use crate::qemu::QEMU;

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
pub(super) fn initrd_arg(file: &str, cmdline: &str) -> Result<String, RealXenError> {
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

pub(super) fn run(
    image: &XenImage,
    elf: &Path,
    cmdline: &str,
    timeout: Duration,
) -> Result<RealXenReport, RealXenError> {
    let initrd = initrd_arg("guest.elf", cmdline)?;
    let dir = TempDir(std::env::temp_dir().join(unique("hv-sim-xen")));
    let stderr_path = dir.0.join("qemu-stderr.txt");
    let start = Instant::now();
    let (qemu, Serial { rx, reader }) = start_qemu(image, elf, &initrd, &dir.0, &stderr_path)?;
    let mut scan = Scan::default();
    let closed = read_until_done(&mut scan, &rx, start + timeout);
    let wall = start.elapsed();
    // QEMU must be gone before the reader thread can see the pipe close:
    // after dom0's shutdown Xen idles (noreboot) and QEMU runs on.
    let status = if closed {
        reap(qemu)
    } else {
        drop(qemu);
        None
    };
    let _ = reader.join();
    // Whatever the pipe still held, then a last unterminated line.
    while let Ok(bytes) = rx.try_recv() {
        scan.feed(&bytes);
    }
    // The last line may be the shutdown line without its newline.
    scan.finish();
    outcome(scan, closed, status, &stderr_path, timeout, wall)
}

/// QEMU's standard output: the chunks its reader thread passes on.
struct Serial {
    rx: mpsc::Receiver<Vec<u8>>,
    reader: std::thread::JoinHandle<()>,
}

/// QEMU started on `image` with the guest in `dir` (made afresh), and a
/// thread that passes its standard output on in chunks.
fn start_qemu(
    image: &XenImage,
    elf: &Path,
    initrd: &str,
    dir: &Path,
    stderr_path: &Path,
) -> Result<(Qemu, Serial), RealXenError> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
    // Fixed names in the directory: no path of the caller's reaches QEMU's
    // option parser (spaces and commas in -initrd's string are syntax).
    std::fs::copy(elf, dir.join("guest.elf")).map_err(io_err(format!(
        "copying the guest {} to {}",
        elf.display(),
        dir.display()
    )))?;
    let xen_abs = std::fs::canonicalize(&image.elf)
        .map_err(io_err(format!("finding {}", image.elf.display())))?;
    std::os::unix::fs::symlink(&xen_abs, dir.join("xen")).map_err(io_err(format!(
        "linking {} into {}",
        xen_abs.display(),
        dir.display()
    )))?;
    let stderr = std::fs::File::create(stderr_path)
        .map_err(io_err(format!("creating {}", stderr_path.display())))?;
    let mut qemu = Qemu(
        Command::new(QEMU)
            .current_dir(dir)
            .args(["-machine", "q35", "-cpu", "max", "-m", "512", "-smp", "2"])
            .args(["-nographic", "-monitor", "none", "-serial", "stdio"])
            .args(["-no-reboot", "-kernel", "xen", "-append", XEN_CMDLINE])
            .arg("-initrd")
            .arg(initrd)
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
    Ok((qemu, Serial { rx, reader }))
}

/// Feed `scan` until dom0 shut down, a panic is complete, a grace period
/// after a panic or crash ran out, or `deadline`; true when the serial line
/// closed first (QEMU ended by itself).
fn read_until_done(scan: &mut Scan, rx: &mpsc::Receiver<Vec<u8>>, deadline: Instant) -> bool {
    let mut grace_until: Option<Instant> = None;
    loop {
        if scan.shutdown.is_some() || (scan.panic.is_some() && scan.panic_done) {
            return false;
        }
        if (scan.panic.is_some() || scan.crash.is_some()) && grace_until.is_none() {
            grace_until = Some(Instant::now() + GRACE);
        }
        let now = Instant::now();
        let until = grace_until.map_or(deadline, |g| g.min(deadline));
        if now >= until {
            // Past a grace period the panic or crash is the error; past
            // the deadline, the time.
            return false;
        }
        match rx.recv_timeout(until - now) {
            Ok(bytes) => scan.feed(&bytes),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return true,
        }
    }
}

/// QEMU's status once it ended by itself (its pipe closed), given a moment
/// to be reaped; QEMU is killed on return if it still runs.
fn reap(mut qemu: Qemu) -> Option<std::process::ExitStatus> {
    let reap_until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < reap_until {
        match qemu.0.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(_) => break,
        }
    }
    None
}

/// The report, or the error the serial line shows.
fn outcome(
    scan: Scan,
    closed: bool,
    status: Option<std::process::ExitStatus>,
    stderr_path: &Path,
    timeout: Duration,
    wall: Duration,
) -> Result<RealXenReport, RealXenError> {
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
            let mut err = std::fs::read(stderr_path).unwrap_or_default();
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
