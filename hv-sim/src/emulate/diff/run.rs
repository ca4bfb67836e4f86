//! One QEMU TCG run of a batch of scenarios: the guest image, the QEMU
//! command line, and the records read back from the guest's RAM file.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{DiffError, RECORD, Scenario, image};

/// Run `scenarios` under QEMU TCG: the raw records.
pub fn run_qemu(
    scenarios: &[Scenario],
    timeout: Duration,
) -> Result<(Vec<u8>, Vec<u32>), DiffError> {
    let (img, at) = image::build(scenarios)?;
    let records = run_image(&img, scenarios.len(), RECORD, timeout)?;
    Ok((records, at))
}

/// Run a guest image (multiboot, loaded at [`image::LOAD`]) under QEMU TCG
/// that writes `n` records of `record` bytes at [`image::RESULTS`] and
/// exits through `isa-debug-exit`: the records.
pub(super) fn run_image(
    img: &[u8],
    n: usize,
    record: usize,
    timeout: Duration,
) -> Result<Vec<u8>, DiffError> {
    crate::qemu::available()?;
    let io = |what: String| move |source| DiffError::Io { what, source };
    if image::LOAD as usize + img.len() > image::RESULTS as usize {
        return Err(DiffError::TooManyScenarios {
            scenarios: n,
            bytes: img.len(),
            records_at: image::RESULTS,
        });
    }
    static RUN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let run = RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("hv-sim-emudiff-{}-{run}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
    let kernel = dir.join("guest.bin");
    let ram = dir.join("ram");
    let _ = std::fs::remove_file(&ram);
    std::fs::write(&kernel, img).map_err(io(format!("writing {}", kernel.display())))?;
    let mut child = Command::new(crate::qemu::QEMU)
        .args(["-cpu", "qemu64,+smep,+smap,+umip"])
        .args([
            "-machine",
            "pc,memory-backend=ram",
            "-accel",
            "tcg",
            "-m",
            "256",
        ])
        .arg("-object")
        .arg(format!(
            "memory-backend-file,id=ram,size=256M,share=on,mem-path={}",
            ram.display()
        ))
        .args(["-nographic", "-no-reboot", "-display", "none"])
        .args(["-serial", "none", "-monitor", "none"])
        .arg("-kernel")
        .arg(&kernel)
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(io(format!("starting {}", crate::qemu::QEMU)))?;
    let waited = wait(&mut child, timeout);
    let records = read_records(&ram, n * record).unwrap_or_default();
    // The RAM file is 256 MiB (sparse): removed whatever happened.
    let _ = std::fs::remove_dir_all(&dir);
    let status = waited?;
    if status.code() != Some(1) || records.len() != n * record {
        return Err(DiffError::Unfinished {
            status,
            got: records.len(),
            want: n * record,
        });
    }
    Ok(records)
}

/// Wait for QEMU, killing it after `timeout`.
pub(super) fn wait(
    child: &mut std::process::Child,
    timeout: Duration,
) -> Result<std::process::ExitStatus, DiffError> {
    let t0 = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Ok(s),
            Ok(None) if t0.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(DiffError::Timeout(timeout));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(source) => {
                return Err(DiffError::Io {
                    what: "waiting for QEMU".into(),
                    source,
                });
            }
        }
    }
}

/// `len` bytes of records from the guest's RAM file, from
/// [`image::RESULTS`] (guest-physical address = file offset below the
/// PCI hole).
pub(super) fn read_records(ram: &Path, len: usize) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(ram)?;
    f.seek(SeekFrom::Start(u64::from(image::RESULTS)))?;
    let mut b = vec![0u8; len];
    f.read_exact(&mut b)?;
    Ok(b)
}
