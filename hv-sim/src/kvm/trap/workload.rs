//! The descriptor-write workload under the trap-and-emulate personality:
//! the example kernel's `workload.rs` (N context switches and N timer
//! ticks, tables laid out as [`Layout`] says), with the traps it caused
//! split into true and false sharing.

use std::time::Duration;

pub use hvsim_boot_protocol::workload::Layout;
use hvsim_boot_protocol::workload::{self as proto, LINE_PREFIX};

use super::{TrapBootReport, TrapMode, boot_trap_with};
use crate::emulate::profile::Phase;
use crate::kvm::{Config, KvmError};

/// One workload boot.
#[derive(Clone, Debug)]
pub struct WorkloadRun {
    /// The layout.
    pub layout: Layout,
    /// How hv-sim kept the real tables current.
    pub mode: TrapMode,
    /// Context switches (and timer ticks) the guest made.
    pub switches: u64,
    /// Its timer variable at the end.
    pub ticks: u64,
    /// Switches after which `FS:[0]` did not read the thread's TLS probe
    /// (the real GDT was stale).
    pub fs_mismatches: u64,
    /// Ops that returned an error.
    pub errors: u64,
    /// TSC cycles the guest's loop took (all exits included).
    pub guest_cycles: u64,
    /// Write faults on the table pages that touched a descriptor.
    pub true_traps: u64,
    /// Write faults on the table pages that touched other data only.
    pub false_traps: u64,
    /// hv-sim's time handling them: (true, false).
    pub handler_time: (Duration, Duration),
    /// The whole boot report.
    pub report: TrapBootReport,
}

impl WorkloadRun {
    /// Traps of one kind per 1000 switches.
    pub fn per_1000(&self, traps: u64) -> f64 {
        traps as f64 * 1000.0 / self.switches.max(1) as f64
    }

    /// hv-sim's handling time per write-protect trap, median, µs.
    pub fn median_handler_us(&self) -> f64 {
        let w = self.report.write_protect.as_ref();
        median_us(w.map_or(Vec::new(), |w| w.samples.iter().map(|s| s.0).collect()))
    }
}

/// Boot the workload with `layout` and `switches` under `mode`.
pub fn run_workload(
    image: &[u8],
    cfg: &Config,
    layout: Layout,
    switches: u16,
    mode: TrapMode,
) -> Result<WorkloadRun, KvmError> {
    let mut cfg = cfg.clone();
    cfg.boot_flags |= proto::flags(layout, switches);
    let report = boot_trap_with(image, &cfg, mode)?;
    let l = Line::parse(&report.boot.text)?;
    let wp = report.write_protect.clone().unwrap_or_default();
    Ok(WorkloadRun {
        layout,
        mode,
        switches: l.switches,
        ticks: l.ticks,
        fs_mismatches: l.fs_mismatches,
        errors: l.errors,
        guest_cycles: l.cycles,
        true_traps: wp.true_traps,
        false_traps: wp.false_traps,
        handler_time: (wp.true_time, wp.false_time),
        report,
    })
}

/// The host's TSC rate in Hz (the guest's cycles are the host's: KVM and
/// PVM offset the TSC, they do not scale it): the profiler's calibration.
pub use crate::emulate::profile::tsc_hz;

/// The guest's `workload …` line.
#[derive(Clone, Copy, Debug)]
struct Line {
    switches: u64,
    ticks: u64,
    fs_mismatches: u64,
    errors: u64,
    cycles: u64,
}

impl Line {
    fn parse(text: &str) -> Result<Line, KvmError> {
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix(LINE_PREFIX))
            .ok_or_else(|| {
                KvmError::Report(format!(
                    "the guest printed no `{LINE_PREFIX}` line (is it the workload kernel?): {text}"
                ))
            })?;
        let field = |k: &str| {
            line.split(' ')
                .find_map(|w| w.strip_prefix(k)?.strip_prefix('='))
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| KvmError::Report(format!("workload line without {k}: {line}")))
        };
        Ok(Line {
            switches: field("switches")?,
            ticks: field("ticks")?,
            fs_mismatches: field("fs_mismatches")?,
            errors: field("errors")?,
            cycles: field("cycles")?,
        })
    }
}

/// How the workload's context switches reach the hypervisor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Way {
    /// The native backend in ring 0 under KVM: no hypervisor in the path.
    Native,
    /// The Xen-style personality: hypercalls (a multicall per lazy switch).
    Xen,
    /// The VMI-style personality: ROM calls, batched in lazy mode.
    Vmi,
    /// Trap-and-emulate with the table pages write-protected.
    TrapWriteProtect,
    /// Trap-and-emulate with shadowing only (stale between traps).
    TrapShadow,
}

impl Way {
    /// All of them, in report order.
    pub const ALL: [Way; 5] = [
        Way::Native,
        Way::Xen,
        Way::Vmi,
        Way::TrapWriteProtect,
        Way::TrapShadow,
    ];

    /// A short name.
    pub fn name(self) -> &'static str {
        match self {
            Way::Native => "native (ring 0, no VMM)",
            Way::Xen => "paravirt: Xen-style hypercalls",
            Way::Vmi => "paravirt: VMI-style ROM calls",
            Way::TrapWriteProtect => "trap-and-emulate + write protect",
            Way::TrapShadow => "trap-and-emulate, shadowing only",
        }
    }
}

/// One way through the same N context switches (layout a).
#[derive(Clone, Debug)]
pub struct Compared {
    /// Which.
    pub way: Way,
    /// VM exits per context switch: the exits of a boot with 2N switches
    /// less those of one with N, over N.
    pub exits_per_switch: f64,
    /// Guest TSC cycles per switch (the 2N boot's loop), in µs.
    pub us_per_switch: f64,
    /// Switches whose FS read a stale TLS descriptor (2N boot).
    pub stale: u64,
    /// Write-protect mode: where hv-sim's store emulation time went, the
    /// median per trap of each phase (µs), in [`Phase::ALL`]'s order.
    pub phases_us: Option<Vec<(Phase, f64)>>,
    /// Write-protect mode: hv-sim's handling time per trap, median, µs.
    pub handler_us: Option<f64>,
}

/// Boot `way` with `switches` switches: (exits, the workload line, the
/// write-protect report).
fn boot_way(
    image: &[u8],
    cfg: &Config,
    way: Way,
    switches: u16,
) -> Result<(u64, Line, Option<super::WpReport>), KvmError> {
    let mut cfg = cfg.clone();
    cfg.boot_flags |= proto::flags(Layout::Separate, switches);
    let (boot, wp) = match way {
        Way::Native => (crate::kvm::boot(image, &cfg)?, None),
        Way::Xen => (crate::kvm::xen::boot_xen(image, &cfg)?.boot, None),
        Way::Vmi => (crate::kvm::vmi::boot_vmi(image, &cfg)?.boot, None),
        Way::TrapWriteProtect | Way::TrapShadow => {
            let mode = if way == Way::TrapShadow {
                TrapMode::Shadow
            } else {
                TrapMode::WriteProtect
            };
            let r = boot_trap_with(image, &cfg, mode)?;
            (r.boot, r.write_protect)
        }
    };
    Ok((boot.exits.total(), Line::parse(&boot.text)?, wp))
}

/// The same guest operations (N then 2N lazy context switches, layout a)
/// each way; `tsc_hz` converts the guest's cycles.
pub fn compare(
    image: &[u8],
    cfg: &Config,
    way: Way,
    n: u16,
    tsc_hz: f64,
) -> Result<Compared, KvmError> {
    let n2 = n.saturating_mul(2);
    let (e1, _, _) = boot_way(image, cfg, way, n)?;
    let (e2, l, wp) = boot_way(image, cfg, way, n2)?;
    let handler_us = wp
        .as_ref()
        .map(|w| median_us(w.samples.iter().map(|s| s.0).collect()));
    let phases_us = wp.as_ref().map(|w| {
        Phase::ALL
            .iter()
            .map(|&p| {
                (
                    p,
                    median_us(w.samples.iter().map(|s| s.1.time(p)).collect()),
                )
            })
            .collect()
    });
    Ok(Compared {
        way,
        exits_per_switch: e2.saturating_sub(e1) as f64 / f64::from(n2 - n).max(1.0),
        us_per_switch: l.cycles as f64 / tsc_hz.max(1.0) * 1e6 / l.switches.max(1) as f64,
        stale: l.fs_mismatches,
        phases_us,
        handler_us,
    })
}

/// The median of `v` in µs (0 for none).
fn median_us(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v.get(v.len() / 2).map_or(0.0, |d| d.as_secs_f64() * 1e6)
}
