//! Where the emulator's time goes, instruction by instruction (issue 11,
//! side-by-side accounting): [`crate::emulate::profile`] over mock guest
//! memory, in process, no VM exit. The profiled total is larger than the
//! plain time by the profile's own clock reads (printed side by side);
//! the shares are what matter.

use super::inproc::{DATA, machine};
use super::{BATCH, BATCHES, Section, keep, time_ns};
use crate::emulate::profile::{Phase, Profiled, measure};
use crate::emulate::{Outcome, emulate};

/// Emulations per profiled run.
const RUNS: u32 = 20_000;

/// The section: a row per instruction, ns per emulation by phase.
pub fn phases() -> Section {
    let mut columns = vec!["instruction", "plain ns", "profiled ns"];
    columns.extend(Phase::ALL.iter().map(|p| p.name()));
    let mut s = Section::with_columns(
        "Emulator phases: ns per emulation (hv_sim::emulate::profile, mock memory)",
        &columns,
    );
    for (name, code) in [
        ("sgdt [rax]", &[0x0f, 0x01, 0x00][..]),
        (
            "lgdt [rip+disp32]",
            &[0x0f, 0x01, 0x15, 0x00, 0x10, 0x00, 0x00][..],
        ),
        ("sldt [rax]", &[0x0f, 0x00, 0x00][..]),
        ("str ax", &[0x66, 0x0f, 0x00, 0xc8][..]),
    ] {
        let (mut cpu, mem) = machine(code);
        cpu.gprs[0] = DATA;
        if !matches!(emulate(&mut cpu, &mem), Outcome::Emulated { .. }) {
            s.row([name, "n/a", "the emulator did not emulate it"]);
            continue;
        }
        let plain = time_ns(
            || {
                keep(emulate(&mut cpu, &mem));
            },
            BATCH,
            BATCHES,
        );
        let ((), p) = measure(|| {
            for _ in 0..RUNS {
                keep(emulate(&mut cpu, &Profiled(&mem)));
            }
        });
        let per =
            |d: std::time::Duration| format!("{:.0}", d.as_secs_f64() * 1e9 / f64::from(RUNS));
        let mut row = vec![name.to_string(), format!("{plain:.0}"), per(p.total())];
        row.extend(Phase::ALL.iter().map(|&ph| per(p.time(ph))));
        s.row(row);
    }
    s.note(
        "memory = the mock's page lookup and copy; on a real vCPU it is the walk of the guest's page \
         tables (see `hv-sim demo`'s per-trap medians)",
    );
    s
}
