//! `examples/kernel32` runs the 32-bit differential scenarios (issue 11,
//! deliverable 3): hv-sim draws them from a seed (CPL 0, flat 32-bit
//! code, paging off), passes them to the kernel as its PVH module, and
//! the kernel, booted by QEMU TCG, sets each one up in its own tables,
//! runs the instruction, catches any exception through its own 32-bit
//! IDT, restores its tables through pvops' native backend and writes a
//! record. Each record is compared field by field with hv-sim's emulator
//! (`hv_sim::emulate::diff::kernel32`), the mismatches explained by the
//! same QEMU departures as the differential's own guest. Also: a blob the
//! kernel must refuse (bad magic) gives a failed `scenarios` check, not a
//! crash, and a record changed on purpose is never explained.
//! `HV_SIM_K32_N` sets the count (100,000 by default). Needs QEMU
//! (`SKIPPED` otherwise, a failure with `HV_SIM_REQUIRE_QEMU=1`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use hv_sim::emulate::diff::{self, Paging, kernel32};
use hv_sim::kernel_build::{KernelBuildError, build_kernel_workspace_for, example_dir};
use hv_sim::testing::qemu_or_skip;

/// The kernel's ELF, built once per test process.
fn kernel32_elf() -> PathBuf {
    static ELF: OnceLock<Result<PathBuf, KernelBuildError>> = OnceLock::new();
    ELF.get_or_init(|| {
        build_kernel_workspace_for(
            &example_dir("kernel32"),
            "kernel32",
            "i686-unknown-linux-gnu",
        )
        .map(|bins| bins.join("pvops-kernel32"))
    })
    .clone()
    .unwrap_or_else(|e| panic!("{e}"))
}

/// The boot checks the kernel runs before the scenarios.
const BOOT_CHECKS: usize = 19;

#[test]
fn kernel32_runs_the_32bit_scenarios() {
    if !qemu_or_skip("kernel32_runs_the_32bit_scenarios") {
        return;
    }
    let n: usize = std::env::var("HV_SIM_K32_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    assert!(n > 0, "HV_SIM_K32_N must be at least 1");
    let elf = kernel32_elf();
    let scenarios = diff::generate_in(n, diff::SEED, Paging::Off);
    let blob = kernel32::blob(&scenarios).unwrap_or_else(|e| panic!("{e}"));
    let t0 = Instant::now();
    let run = kernel32::run_blob(&elf, &blob, n, Duration::from_secs(300))
        .unwrap_or_else(|e| panic!("{e}"));
    let booted = t0.elapsed();
    let at = vec![kernel32::STUB; n];
    let report = diff::compare_records(&scenarios, &run.records, &at);
    println!(
        "kernel32 under QEMU TCG: {n} scenarios (seed {:#x}, paging off): boot, run and exit {:.1} s, comparison with the emulator {:.1} s",
        diff::SEED,
        booted.as_secs_f64(),
        (t0.elapsed() - booted).as_secs_f64()
    );
    // Every boot check, then `scenarios: N run`; exit status 0.
    let failed: Vec<_> = run.checks.iter().filter(|c| !c.passed).collect();
    assert!(failed.is_empty(), "failed: {failed:#?}\n{}", run.text);
    assert_eq!(run.checks.len(), BOOT_CHECKS + 1, "{}", run.text);
    let last = &run.checks[BOOT_CHECKS];
    assert_eq!(last.name, "scenarios", "{}", run.text);
    assert!(
        last.detail.starts_with(&format!("{n} run")),
        "{}",
        last.detail
    );
    assert_eq!(run.exit_status, Some(0), "{}", run.text);

    println!("SDM outcomes (the emulator's): {:?}", report.outcomes);
    let mut by_cause: BTreeMap<String, usize> = BTreeMap::new();
    for m in &report.mismatches {
        let cause = match m.explained_by {
            Some(d) => d.to_string(),
            None if m.unverifiable => "QEMU: no segment checks, operand in RAM not compared".into(),
            None => format!("unexplained: {}", m.fields.join("+")),
        };
        *by_cause.entry(cause).or_default() += 1;
    }
    let unexplained: Vec<_> = report
        .mismatches
        .iter()
        .filter(|m| m.explained_by.is_none() && !m.unverifiable)
        .collect();
    println!(
        "emulator vs kernel32 on QEMU TCG: {} agree, {} mismatches, {} not explained: {by_cause:?}",
        report.agreed,
        report.mismatches.len(),
        unexplained.len()
    );
    for m in unexplained.iter().take(8) {
        println!(
            "#{} {:02x?} regs {:x?} sels {:x?} gdtr {:x?}\n  kernel32 {} err {:#x} | emulator {} err {:#x}; differ: {:?}\n  {:x?}\n  {:x?}",
            m.index,
            m.scenario.insn,
            m.scenario.regs,
            m.scenario.sels,
            m.scenario.test_gdtr,
            diff::vector_name(m.qemu.vector),
            m.qemu.error,
            diff::vector_name(m.emulator.vector),
            m.emulator.error,
            m.fields,
            m.qemu,
            m.emulator
        );
    }
    assert_eq!(report.agreed + report.mismatches.len(), n);
    assert!(
        unexplained.is_empty(),
        "{} mismatches no documented QEMU departure explains",
        unexplained.len()
    );

    // The comparison can fail: a record changed as no CPU would (an
    // error-code bit, a GDT slot byte, EAX after a success) is never
    // explained.
    let agreed: Vec<usize> = (0..n)
        .filter(|i| !report.mismatches.iter().any(|m| m.index == *i))
        .take(3)
        .collect();
    assert_eq!(agreed.len(), 3.min(report.agreed));
    let mut records = run.records.clone();
    for (k, &i) in agreed.iter().enumerate() {
        let at = i * diff::RECORD + [4, 96 + 0x20, 8][k];
        records[at] ^= 0x40;
    }
    // And a fault's EIP (the frame's: the instruction's address).
    let faulted = (0..n)
        .find(|i| {
            !agreed.contains(i)
                && !report.mismatches.iter().any(|m| m.index == *i)
                && run.records[i * diff::RECORD..][..4] != [0xff; 4]
        })
        .expect("an agreed scenario that faulted");
    let eip = &mut records[faulted * diff::RECORD + 216..][..4];
    assert_eq!(eip, kernel32::STUB.to_le_bytes());
    eip[0] ^= 1;
    let broken = diff::compare_records(&scenarios, &records, &at);
    for &i in agreed.iter().chain([&faulted]) {
        let m = broken.mismatches.iter().find(|m| m.index == i);
        assert!(
            m.is_some_and(|m| m.explained_by.is_none() && !m.unverifiable),
            "scenario {i}, its record changed: {m:?}"
        );
    }
}

/// A blob with a bad magic: the kernel refuses it with a failed
/// `scenarios` check (and exit status 1), after every boot check passed.
#[test]
fn kernel32_refuses_a_bad_blob() {
    if !qemu_or_skip("kernel32_refuses_a_bad_blob") {
        return;
    }
    let elf = kernel32_elf();
    let scenarios = diff::generate_in(4, diff::SEED, Paging::Off);
    let mut blob = kernel32::blob(&scenarios).expect("a blob");
    blob[0] ^= 1;
    let err = kernel32::run_blob(&elf, &blob, 0, Duration::from_secs(60))
        .expect("the kernel exits after refusing");
    println!("{}", err.text);
    assert_eq!(err.checks.len(), BOOT_CHECKS + 1, "{}", err.text);
    assert!(err.checks[..BOOT_CHECKS].iter().all(|c| c.passed));
    let last = &err.checks[BOOT_CHECKS];
    assert!(
        last.name == "scenarios" && !last.passed && last.detail.contains("bad magic"),
        "{last:?}"
    );
    assert_eq!(err.exit_status, Some(1));
}
