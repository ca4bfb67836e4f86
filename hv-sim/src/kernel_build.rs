//! Building the example kernel (`examples/kernel`) for `x86_64-unknown-none`.
//!
//! The kernel is its own cargo workspace (it never builds for the host). This
//! runs `cargo build --release` in it with its own target directory, after
//! adding the `x86_64-unknown-none` target with rustup if the toolchain lacks
//! it (a fresh machine has only the host target, and `RUSTUP_AUTO_INSTALL=0`
//! means nothing is added implicitly).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The kernel target.
pub const TARGET: &str = "x86_64-unknown-none";

/// `examples/kernel` in this source tree.
pub fn kernel_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/kernel")
}

fn target_installed(target: &str) -> bool {
    let out = Command::new("rustc").args(["--print", "sysroot"]).output();
    match out {
        Ok(o) if o.status.success() => {
            let sysroot = String::from_utf8_lossy(&o.stdout).trim().to_string();
            Path::new(&sysroot)
                .join("lib/rustlib")
                .join(target)
                .join("lib")
                .is_dir()
        }
        _ => false,
    }
}

/// `examples/<name>` in this source tree (`kernel`, `minimal-kernel`,
/// `blog-os-kernel`).
pub fn example_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
}

/// The directory cargo builds this workspace into: `CARGO_TARGET_DIR` when
/// set (relative to the current directory, as cargo takes it), else the
/// workspace's `target/`.
pub fn target_root() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => {
            let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
            manifest.parent().unwrap_or(manifest).join("target")
        }
    }
}

/// Why a kernel could not be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KernelBuildError {
    /// A tool (rustup or cargo) could not be started.
    #[error("running {tool}: {reason}")]
    Spawn {
        /// The command.
        tool: String,
        /// What starting it returned.
        reason: String,
    },
    /// `rustup target add <target>` failed (the target, then rustup's
    /// status).
    #[error("`rustup target add {0}` failed ({1})")]
    AddTarget(String, String),
    /// cargo failed.
    #[error("building the kernel in {dir} failed:\n{stderr}")]
    Cargo {
        /// The kernel's workspace.
        dir: PathBuf,
        /// cargo's standard error.
        stderr: String,
    },
}

/// Build the example kernel (see [`build_kernel_workspace`]); returns the
/// path of the ELF image. Later calls in the same process return the first
/// successful build's path at once.
pub fn build_example_kernel() -> Result<PathBuf, KernelBuildError> {
    static BUILT: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = built.as_ref() {
        return Ok(p.clone());
    }
    let p = build_kernel_workspace(&kernel_dir(), "example-kernel")?.join("pvops-example-kernel");
    *built = Some(p.clone());
    Ok(p)
}

/// Build the kernel workspace in `dir` (its own workspace, as
/// `examples/kernel` is) with `cargo build --release --locked` for
/// [`TARGET`], in `<target_name>` of the target directory
/// ([`target_root`]), saying so on standard error (a first build takes a
/// minute); returns the directory that holds its binaries.
pub fn build_kernel_workspace(dir: &Path, target_name: &str) -> Result<PathBuf, KernelBuildError> {
    build_kernel_workspace_for(dir, target_name, TARGET)
}

/// [`build_kernel_workspace`] for another target triple (`examples/kernel32`
/// builds for `i686-unknown-linux-gnu`).
pub fn build_kernel_workspace_for(
    dir: &Path,
    target_name: &str,
    target: &str,
) -> Result<PathBuf, KernelBuildError> {
    if !target_installed(target) {
        let st = Command::new("rustup")
            .args(["target", "add", target])
            .status()
            .map_err(|e| KernelBuildError::Spawn {
                tool: "rustup".into(),
                reason: e.to_string(),
            })?;
        if !st.success() {
            return Err(KernelBuildError::AddTarget(
                target.to_string(),
                st.to_string(),
            ));
        }
    }
    let target_dir = target_root().join(target_name);
    eprintln!(
        "hv-sim: building {} for {target} in {}",
        dir.display(),
        target_dir.display()
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let out = Command::new(&cargo)
        .current_dir(dir)
        .args([
            "build",
            "--release",
            "--quiet",
            "--locked",
            "--target",
            target,
        ])
        .env("CARGO_TARGET_DIR", &target_dir)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .map_err(|e| KernelBuildError::Spawn {
            tool: format!("{cargo} in {}", dir.display()),
            reason: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(KernelBuildError::Cargo {
            dir: dir.to_path_buf(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(target_dir.join(target).join("release"))
}
