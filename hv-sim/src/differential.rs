//! hv-sim against the real Xen hypervisor, call by call.
//!
//! The example kernel's battery mode (`battery seed=S count=N` on its
//! command line; `examples/kernel/src/battery.rs`) issues `N` raw
//! hypercalls, valid and hostile mixed, drawn from seed `S`, and prints one
//! `b <i> <call> = <result> d=<digest> p=<probes>` line per call: the
//! result, a digest of the guest's descriptor frames as it reads them, and
//! whether loads from the GDT and LDT fault. [`run`] boots the same image
//! with the same command line on real Xen ([`crate::realxen`]) and under
//! hv-sim's Xen personality ([`crate::kvm::xen`]) and compares the lines.

use std::path::Path;
use std::time::Duration;

use crate::kvm::{self, Config};
use crate::realxen::{self, RealXenError, ShutdownReason, XenImage};

/// One line on which the two disagree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disagreement {
    /// Call index.
    pub index: usize,
    /// Real Xen's line.
    pub xen: String,
    /// hv-sim's line.
    pub hv_sim: String,
}

/// The outcome of one differential run.
#[derive(Clone, Debug)]
pub struct Differential {
    /// The seed.
    pub seed: u64,
    /// Calls asked for.
    pub count: usize,
    /// Xen's version label (`xen-4.17`).
    pub on: String,
    /// Lines compared (the shorter side's count).
    pub compared: usize,
    /// Lines that agree.
    pub agree: usize,
    /// Lines each side printed.
    pub lines: (usize, usize),
    /// The first disagreements (at most [`MAX_KEPT`]).
    pub disagreements: Vec<Disagreement>,
    /// All disagreeing lines.
    pub disagreeing: usize,
}

/// Disagreements kept in a [`Differential`].
pub const MAX_KEPT: usize = 20;

impl Differential {
    /// Did every call agree, with every call printed on both sides?
    pub fn all_agree(&self) -> bool {
        self.disagreeing == 0 && self.lines.0 == self.lines.1 && self.lines.0 >= self.count
    }

    /// `differential hv-sim vs xen-4.17: N/N agree (seed S)`.
    pub fn summary_line(&self) -> String {
        format!(
            "differential hv-sim vs {}: {}/{} agree (seed {})",
            self.on, self.agree, self.count, self.seed
        )
    }
}

/// The battery's lines (`b <i> ...`) in a guest's text.
pub fn battery_lines(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim_end)
        .filter(|l| l.starts_with(hvsim_boot_protocol::BATTERY_PREFIX) || l.starts_with("dump "))
        .collect()
}

/// A line with its GDT probe replaced by `-` (see [`compare`]).
pub fn mask_gdt_probe(line: &str) -> String {
    match line.rsplit_once(" p=") {
        Some((head, probes)) => match probes.split_once(':') {
            Some((k, rest)) => {
                // rest = "<gdt>,<ldt>"; the LDT result has no comma.
                let ldt = rest.rsplit_once(',').map_or(rest, |(_, l)| l);
                format!("{head} p={k}:-,{ldt}")
            }
            None => line.to_string(),
        },
        None => line.to_string(),
    }
}

/// Compare two battery outputs. With `mask_gdt` the GDT-selector probe is
/// left out of the comparison: on a PVM host (`kvm::host_is_pvm`) a ring-3
/// guest's loads of GDT selectors are checked against the *host's* GDT, not
/// the guest's (selectors 0x23, 0x2b, 0x33, 0x7b load, all others fault),
/// so hv-sim cannot show what Xen's GDT would do there.
pub fn compare(
    seed: u64,
    count: usize,
    on: &str,
    xen: &str,
    sim: &str,
    mask_gdt: bool,
) -> Differential {
    let prep = |t: &str| -> Vec<String> {
        battery_lines(t)
            .into_iter()
            .map(|l| {
                if mask_gdt {
                    mask_gdt_probe(l)
                } else {
                    l.to_string()
                }
            })
            .collect()
    };
    let (x, s) = (prep(xen), prep(sim));
    let compared = x.len().min(s.len());
    let mut disagreements = Vec::new();
    let mut disagreeing = 0;
    for (i, (a, b)) in x.iter().zip(&s).enumerate() {
        if a != b {
            disagreeing += 1;
            if disagreements.len() < MAX_KEPT {
                disagreements.push(Disagreement {
                    index: i,
                    xen: a.clone(),
                    hv_sim: b.clone(),
                });
            }
        }
    }
    Differential {
        seed,
        count,
        on: on.to_string(),
        compared,
        agree: compared - disagreeing,
        lines: (x.len(), s.len()),
        disagreements,
        disagreeing,
    }
}

/// Why a differential run gave no comparison.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DifferentialError {
    /// `HV_SIM_DIFF_SEED` is set but not a u64.
    #[error("HV_SIM_DIFF_SEED={0:?} is not a u64")]
    BadSeed(String),
    /// Real Xen gave no report.
    #[error("real Xen: {0}")]
    RealXen(#[from] RealXenError),
    /// Real Xen's dom0 stopped other than by powering off (the battery did
    /// not reach its end).
    #[error("real Xen: the battery ended with {reason:?}:\n{text}")]
    NotPoweroff {
        /// How dom0 stopped.
        reason: ShutdownReason,
        /// What it printed.
        text: String,
    },
    /// The kernel image could not be read.
    #[error("reading {path}: {source}", path = path.display())]
    Read {
        /// The image.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// hv-sim's KVM boot gave no report.
    #[error("hv-sim: {0}")]
    Sim(#[from] kvm::KvmError),
}

/// The seed to run: `HV_SIM_DIFF_SEED` if set (an error if it is not a
/// u64), else a fresh one from the clock.
pub fn seed_from_env() -> Result<u64, DifferentialError> {
    match std::env::var("HV_SIM_DIFF_SEED") {
        Ok(v) => v.parse().map_err(|_| DifferentialError::BadSeed(v)),
        Err(_) => Ok(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)),
    }
}

/// The battery's command line.
pub fn cmdline(seed: u64, count: usize) -> String {
    let dump = if std::env::var_os("HV_SIM_DIFF_DUMP").is_some() {
        " dump"
    } else {
        ""
    };
    format!(
        "{} seed={seed} count={count}{dump}",
        hvsim_boot_protocol::BATTERY_WORD
    )
}

/// Run the battery from `seed` on real Xen and under hv-sim (KVM) and
/// compare. `Err` when either side could not run it to its end.
pub fn run(
    xen: &XenImage,
    elf: &Path,
    seed: u64,
    count: usize,
    timeout: Duration,
) -> Result<Differential, DifferentialError> {
    let cmd = cmdline(seed, count);
    let real = xen.boot(elf, &cmd, timeout)?;
    if real.shutdown != ShutdownReason::Poweroff {
        return Err(DifferentialError::NotPoweroff {
            reason: real.shutdown,
            text: real.guest_text,
        });
    }
    let image = std::fs::read(elf).map_err(|source| DifferentialError::Read {
        path: elf.to_path_buf(),
        source,
    })?;
    let cfg = Config {
        guest_cmdline: cmd,
        timeout,
        ..Config::default()
    };
    let sim = kvm::xen::boot_xen(&image, &cfg)?;
    if let Some(dir) = std::env::var_os("HV_SIM_DIFF_SAVE") {
        // Both outputs, for a closer look at a disagreement.
        let dir = Path::new(&dir);
        let _ = std::fs::create_dir_all(dir);
        let _ = std::fs::write(dir.join(format!("xen-{seed}.txt")), &real.guest_text);
        let _ = std::fs::write(dir.join(format!("hv-sim-{seed}.txt")), &sim.boot.text);
    }
    Ok(compare(
        seed,
        count,
        &real.on_label(),
        &real.guest_text,
        &sim.boot.text,
        kvm::host_is_pvm(),
    ))
}

/// What [`realxen::available`] and [`kvm::available`] say, together.
pub fn available() -> Result<XenImage, kvm::Unavailable> {
    kvm::available()?;
    realxen::available()
}
