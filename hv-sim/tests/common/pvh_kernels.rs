//! The pvops-pvh kernels (`examples/minimal-kernel`, `examples/blog-os-kernel`):
//! built once per test process, and booted as a PVH dom0 of real Xen.
//!
//! hv-sim's `realxen` runner boots a kernel as Xen's *PV* dom0 (the kernel
//! needs Xen's PV notes and hypercalls). A pvops-pvh kernel has only the
//! PVH note, so it boots as a **PVH dom0** instead: Xen 4.17 builds it from
//! `XEN_ELFNOTE_PHYS32_ENTRY` and runs it in an HVM container, which needs
//! hardware virtualization with nested paging and an IOMMU. QEMU TCG
//! provides all three in software: `-cpu max,vendor=AuthenticAMD` has SVM
//! with NPT, `-device amd-iommu` an AMD IOMMU. Xen forwards the guest's
//! writes to port 0xE9 to its console as `(d0) ` lines, and the dom0's
//! write to port 0xF4 reaches QEMU's isa-debug-exit (a hardware domain has
//! the machine's I/O ports).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use hv_sim::kernel_build::{KernelBuildError, build_kernel_workspace, example_dir};
use hv_sim::kvm::{BootReport, GuestCheck, parse_checks};

/// `examples/minimal-kernel`'s ELF.
pub fn minimal_kernel() -> PathBuf {
    static ELF: OnceLock<Result<PathBuf, KernelBuildError>> = OnceLock::new();
    ELF.get_or_init(|| {
        build_kernel_workspace(&example_dir("minimal-kernel"), "minimal-kernel")
            .map(|bins| bins.join("pvops-minimal-kernel"))
    })
    .clone()
    .unwrap_or_else(|e| panic!("{e}"))
}

/// One of `examples/blog-os-kernel`'s binaries (`with-x86_64`, `with-pvops`).
pub fn blog_os_kernel(bin: &str) -> PathBuf {
    static DIR: OnceLock<Result<PathBuf, KernelBuildError>> = OnceLock::new();
    DIR.get_or_init(|| build_kernel_workspace(&example_dir("blog-os-kernel"), "blog-os-kernel"))
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
        .join(bin)
}

/// What a boot reported, whichever machine ran it.
pub struct Outcome {
    /// The kernel's text.
    pub text: String,
    /// Its check lines.
    pub checks: Vec<GuestCheck>,
    /// The status written to port 0xF4, if it got there.
    pub exit_status: Option<u32>,
}

impl From<&BootReport> for Outcome {
    fn from(r: &BootReport) -> Self {
        Outcome {
            text: r.text.clone(),
            checks: r.checks.clone(),
            exit_status: r.exit_status,
        }
    }
}

impl Outcome {
    /// The check named `name`.
    pub fn check(&self, name: &str) -> &GuestCheck {
        self.checks
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no check {name:?}:\n{}", self.text))
    }

    /// Checks that failed.
    pub fn failed(&self) -> Vec<&GuestCheck> {
        self.checks
            .iter()
            .filter(|c| !c.passed && !c.skipped)
            .collect()
    }
}

/// QEMU's arguments for Xen with `elf` as its PVH dom0 (see the module
/// documentation).
pub const XEN_PVH_CMDLINE: &str =
    "console=com1 dom0=pvh dom0_mem=64M noreboot loglvl=all guest_loglvl=all";

/// Boot `elf` as the PVH dom0 of the Xen ELF `xen` under QEMU TCG; QEMU is
/// killed after `timeout`.
pub fn boot_pvh_dom0(xen: &Path, elf: &Path, timeout: Duration) -> Result<Outcome, String> {
    let dir = std::env::temp_dir().join(format!(
        "hv-sim-pvh-xen-{}-{}",
        std::process::id(),
        elf.file_name().and_then(|n| n.to_str()).unwrap_or("kernel")
    ));
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let log_path = dir.join("serial.txt");
    let log =
        std::fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    let mut child = Command::new(hv_sim::qemu::QEMU)
        .args([
            "-machine",
            "q35",
            "-cpu",
            "max,vendor=AuthenticAMD",
            "-m",
            "512",
        ])
        .args([
            "-smp",
            "1",
            "-nographic",
            "-monitor",
            "none",
            "-serial",
            "stdio",
        ])
        .args(["-no-reboot", "-device", "amd-iommu"])
        .arg("-kernel")
        .arg(xen)
        .args(["-append", XEN_PVH_CMDLINE])
        .arg("-initrd")
        .arg(elf)
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting {}: {e}", hv_sim::qemu::QEMU))?;
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if start.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                return Err(format!("no exit after {timeout:?}; serial line:\n{log}"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(format!("waiting for QEMU: {e}")),
        }
    };
    let log =
        std::fs::read_to_string(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    let _ = std::fs::remove_dir_all(&dir);
    let text: String = log
        .lines()
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix("(d0) "))
        .flat_map(|l| [l, "\n"])
        .collect();
    // isa-debug-exit: QEMU exits with status << 1 | 1; anything else is
    // QEMU or Xen ending the machine.
    let exit_status = status
        .code()
        .filter(|c| c & 1 == 1)
        .map(|c| (c >> 1) as u32);
    if exit_status.is_none() {
        return Err(format!(
            "QEMU ended with {status}, not through port 0xF4; serial line:\n{log}"
        ));
    }
    Ok(Outcome {
        checks: parse_checks(&text),
        text,
        exit_status,
    })
}
