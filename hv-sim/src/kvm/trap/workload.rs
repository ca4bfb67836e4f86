//! The descriptor-write workload under the trap-and-emulate personality:
//! the example kernel's `workload.rs` (N context switches and N timer
//! ticks, tables laid out as [`Layout`] says), with the traps it caused
//! split into true and false sharing.

use std::time::Duration;

pub use hvsim_boot_protocol::workload::Layout;
use hvsim_boot_protocol::workload::{self as proto, LINE_PREFIX};

use super::{TrapBootReport, TrapMode, boot_trap_with};
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
    let line = report
        .boot
        .text
        .lines()
        .find_map(|l| l.strip_prefix(LINE_PREFIX))
        .ok_or_else(|| {
            KvmError::BadImage(format!(
                "the guest printed no `{LINE_PREFIX}` line (is it the workload kernel?): {}",
                report.boot.text
            ))
        })?;
    let field = |k: &str| {
        line.split(' ')
            .find_map(|w| w.strip_prefix(k)?.strip_prefix('='))
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| KvmError::BadImage(format!("workload line without {k}: {line}")))
    };
    let wp = report.write_protect.clone().unwrap_or_default();
    Ok(WorkloadRun {
        layout,
        mode,
        switches: field("switches")?,
        ticks: field("ticks")?,
        fs_mismatches: field("fs_mismatches")?,
        errors: field("errors")?,
        guest_cycles: field("cycles")?,
        true_traps: wp.true_traps,
        false_traps: wp.false_traps,
        handler_time: (wp.true_time, wp.false_time),
        report,
    })
}

/// The host's TSC rate in Hz, measured over `over` (the guest's cycles
/// are the host's: KVM and PVM offset the TSC, they do not scale it).
pub fn tsc_hz(over: Duration) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        let t = std::time::Instant::now();
        // SAFETY: rdtsc has no memory effects.
        let c0 = unsafe { core::arch::x86_64::_rdtsc() };
        std::thread::sleep(over);
        // SAFETY: as above.
        let c1 = unsafe { core::arch::x86_64::_rdtsc() };
        c1.wrapping_sub(c0) as f64 / t.elapsed().as_secs_f64()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = over;
        0.0
    }
}
