//! What a trap-and-emulate boot reports ([`super::boot_trap`]).

use crate::kvm::CheckSummary;
use std::collections::BTreeMap;
use std::time::Duration;

use super::WpReport;
use crate::emulate::{self, DtRegisters};
use crate::kvm::xen::FinalSegments;
use crate::kvm::{BootReport, Capped};

/// A #GP hv-sim did not emulate and delivered to the guest's own handler.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bounced {
    /// The faulting instruction.
    pub rip: u64,
    /// The #GP's error code.
    pub error_code: u64,
    /// Why it was not emulated.
    pub reason: String,
}

/// What a trap-and-emulate boot did.
#[derive(Clone, Debug)]
pub struct TrapBootReport {
    /// The guest's text, checks and exits.
    pub boot: BootReport,
    /// #GP traps that reached hv-sim (each one a port exit of the stub).
    pub traps: u64,
    /// Instructions emulated, by mnemonic.
    pub emulated: BTreeMap<&'static str, u64>,
    /// Exceptions the emulator injected instead: (instruction, exception);
    /// the first [`super::MAX_RECORDS`] kept, all counted.
    pub injected: Capped<(&'static str, String)>,
    /// #GPs delivered to the guest's handler as they were; the first
    /// [`super::MAX_RECORDS`] kept, all counted.
    pub bounced: Capped<Bounced>,
    /// Traps whose instruction bytes changed during emulation: resumed at
    /// the same RIP, nothing done (the self-modifying-code race).
    pub restarts: u64,
    /// Times the real tables' registers changed (TR/LDTR or CR2 written).
    pub installs: u64,
    /// Did the vCPU accept CR4.UMIP (so `sgdt`…`sldt` trap)?
    pub umip: bool,
    /// Time hv-sim spent handling traps (from the port exit to the
    /// registers set), summed.
    pub handler_time: Duration,
    /// Of that, in the emulator (fetch, decode, operand, checks), summed.
    pub emulate_time: Duration,
    /// Of that, rebuilding the real tables from the guest's, summed.
    pub sync_time: Duration,
    /// Where the emulator's time went, by phase (profiling on).
    pub phases: emulate::profile::Phases,
    /// The guest's virtual descriptor-table registers at its exit.
    pub virtual_dt: DtRegisters,
    /// The vCPU's segments at the guest's exit.
    pub final_segments: Option<FinalSegments>,
    /// The real TR and LDTR at the guest's exit: (selector, base).
    pub real_tr_ldtr: Option<((u16, u64), (u16, u64))>,
    /// Write-protect mode's counts ([`super::TrapMode::WriteProtect`] only).
    pub write_protect: Option<WpReport>,
}

impl TrapBootReport {
    /// Instructions emulated, all kinds.
    pub fn emulated_total(&self) -> u64 {
        self.emulated.values().sum()
    }

    /// The one-line summary.
    pub fn summary(&self) -> String {
        format!(
            "personality=trap-and-emulate backend=native checks={}/{} emulated={} exits={}{}",
            self.boot.passed(),
            self.boot.ran(),
            self.emulated_total(),
            self.boot.exits.total(),
            self.boot.skipped_suffix()
        )
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    use super::super::{Bounced, MAX_RECORDS, TrapGuest, TrapMode};
    use crate::emulate::{Exception, Insn, NotEmulated};
    use crate::kvm::Config;

    /// A guest that bounces and has injected more traps than a report
    /// keeps: the lists stop at [`MAX_RECORDS`], the counts stay exact.
    #[test]
    fn injected_and_bounced_are_capped_and_counted() {
        let cfg = Config {
            mem_size: 16 << 20,
            ..Config::default()
        };
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), cfg.mem_size)]).expect("mmap");
        let mut g = TrapGuest::new(&mem, &cfg, TrapMode::Shadow).expect("layout");
        let n = MAX_RECORDS as u64 + 1000;
        for i in 0..n {
            // As the #GP handler records them.
            let why = NotEmulated::Other("test".into());
            g.out.bounced.push_with(|| Bounced {
                rip: i,
                error_code: 0x7f8,
                reason: why.to_string(),
            });
            g.out
                .injected
                .push_with(|| (Insn::Lgdt.name(), Exception::Gp(0).to_string()));
        }
        let o = g.finish();
        for (kept, total) in [
            (o.bounced.kept().len(), o.bounced.total()),
            (o.injected.kept().len(), o.injected.total()),
        ] {
            assert_eq!((kept, total), (MAX_RECORDS, n));
        }
        assert_eq!(o.bounced.kept()[0].rip, 0, "the first ones are kept");
        assert_eq!(o.bounced.dropped(), 1000);
    }
}
