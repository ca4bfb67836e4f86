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

fn target_installed() -> bool {
    let out = Command::new("rustc").args(["--print", "sysroot"]).output();
    match out {
        Ok(o) if o.status.success() => {
            let sysroot = String::from_utf8_lossy(&o.stdout).trim().to_string();
            Path::new(&sysroot)
                .join("lib/rustlib")
                .join(TARGET)
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

/// Build the example kernel; returns the path of the ELF image.
pub fn build_example_kernel() -> Result<PathBuf, String> {
    let bins = build_kernel_workspace(&kernel_dir(), "example-kernel")?;
    Ok(bins.join("pvops-example-kernel"))
}

/// Build the kernel workspace in `dir` (its own workspace, as
/// `examples/kernel` is) with `cargo build --release --locked` for
/// [`TARGET`], in the target directory `target/<target_name>` of this
/// source tree; returns the directory that holds its binaries.
pub fn build_kernel_workspace(dir: &Path, target_name: &str) -> Result<PathBuf, String> {
    if !target_installed() {
        let st = Command::new("rustup")
            .args(["target", "add", TARGET])
            .status()
            .map_err(|e| format!("running rustup to add {TARGET}: {e}"))?;
        if !st.success() {
            return Err(format!("`rustup target add {TARGET}` failed ({st})"));
        }
    }
    let target_dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target")
        .join(target_name);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let out = Command::new(cargo)
        .current_dir(dir)
        .args([
            "build",
            "--release",
            "--quiet",
            "--locked",
            "--target",
            TARGET,
        ])
        .env("CARGO_TARGET_DIR", &target_dir)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .map_err(|e| format!("running cargo in {}: {e}", dir.display()))?;
    if !out.status.success() {
        return Err(format!(
            "building the kernel in {} failed:\n{}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(target_dir.join(TARGET).join("release"))
}
