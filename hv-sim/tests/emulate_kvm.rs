//! The emulator against KVM in IA-32e mode (issue 11, deliverable 5: "KVM
//! covers long mode"): the long-mode differential's scenarios
//! (`hv_sim::emulate::diff::long`, the same generator and guest image as
//! the QEMU TCG side) run on a real vCPU (`hv_sim::kvm::diff`) and through
//! `hv_sim::emulate`, compared field by field. On this project's machines
//! `/dev/kvm` is PVM, and the guest's CPL-0 code runs through the host
//! kernel's instruction emulator: the check is against Linux's
//! `arch/x86/kvm/emulate.c` and PVM's exception delivery.
//!
//! Prints the scenarios per second with the CPU model, the mismatch count
//! by cause (each documented PVM departure, `hv_sim::kvm::diff::KvmDepartures`,
//! reproduces KVM's record exactly) and the first unexplained mismatches.
//! Not yet at the target of 0 unexplained: under 1% of the
//! scenarios differ in ways no departure models yet (listed in
//! `hv_sim::kvm::diff`'s docs), so the test fails when more than
//! [`UNEXPLAINED_MAX_PERCENT`] of a run is unexplained (a regression in
//! the emulator or the harness), and on any run that does not finish. On
//! PVM at the default count the runs are deterministic, and the test
//! fails on any unexplained mismatch beyond the count measured there
//! ([`pinned_unexplained`]).
//! `HV_SIM_EMUDIFF_KVM_N` sets the count per (mode, paging) run (2,500 by
//! default: 10,000 in all, about 10 s here). Prints `SKIPPED: <reason>` without /dev/kvm (fails instead
//! with `HV_SIM_REQUIRE_KVM=1`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hv_sim::bench::cpu_model;
use hv_sim::emulate::diff;
use hv_sim::emulate::diff::long::{Kind, LongPaging, describe};
use hv_sim::kvm::diff::{KvmReport, compare};

#[test]
fn emulator_against_kvm_long_mode() {
    if !hv_sim::testing::kvm_or_skip("emulator_against_kvm_long_mode") {
        return;
    }
    let n: usize = std::env::var("HV_SIM_EMUDIFF_KVM_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_500);
    assert!(n >= 1, "HV_SIM_EMUDIFF_KVM_N must be at least 1");
    let host = if hv_sim::kvm::host_is_pvm() {
        "PVM"
    } else {
        "KVM"
    };
    println!("host: {} ({host})", cpu_model());
    for kind in [Kind::Bits64, Kind::Compat] {
        for paging in [LongPaging::Plain, LongPaging::Smap] {
            let unexplained = run(n, kind, paging);
            assert!(
                unexplained * 100 <= n * UNEXPLAINED_MAX_PERCENT,
                "{kind:?} under {paging:?}: {unexplained} of {n} mismatches no documented KVM departure explains (more than {UNEXPLAINED_MAX_PERCENT}%)"
            );
            // At the default count on PVM the run is deterministic: no
            // more unexplained than measured, so one new emulator bug
            // fails the test (fewer is progress: lower the pin).
            if n == 2_500 && host == "PVM" {
                let pinned = pinned_unexplained(kind, paging);
                assert!(
                    unexplained <= pinned,
                    "{kind:?} under {paging:?}: {unexplained} unexplained mismatches, {pinned} measured on PVM: a new one is an emulator bug or a new departure to document"
                );
            }
        }
    }
}

/// The share of a run's scenarios that may differ in ways no documented
/// departure models yet (measured: 0.4-0.76% per run at the default
/// count, AMD EPYC, PVM).
const UNEXPLAINED_MAX_PERCENT: usize = 1;

/// The unexplained mismatches measured on PVM (AMD EPYC host) at the
/// default 2,500 scenarios per run from [`diff::SEED`], listed by group in
/// `hv_sim::kvm::diff`'s docs.
fn pinned_unexplained(kind: Kind, paging: LongPaging) -> usize {
    match (kind, paging) {
        (Kind::Bits64, LongPaging::Plain) => 14,
        (Kind::Bits64, LongPaging::Smap) => 10,
        (Kind::Compat, LongPaging::Plain) => 19,
        (Kind::Compat, LongPaging::Smap) => 17,
    }
}

fn run(n: usize, kind: Kind, paging: LongPaging) -> usize {
    let seed = diff::SEED;
    let t0 = Instant::now();
    let report = compare(n, seed, kind, paging, Duration::from_secs(120)).expect("the KVM run");
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "{kind:?}, {paging:?}: {n} scenarios: {secs:.2} s ({:.0} scenarios/s; {:.2} s in KVM_RUN, {} exits)",
        n as f64 / secs,
        report.run_time.as_secs_f64(),
        report.exits
    );
    println!("SDM outcomes (the emulator's): {:?}", report.outcomes);
    summarize(n, kind, paging, &report)
}

fn summarize(n: usize, kind: Kind, paging: LongPaging, report: &KvmReport) -> usize {
    let mut by_cause: BTreeMap<String, usize> = BTreeMap::new();
    for m in &report.mismatches {
        let cause = match m.explained_by {
            Some(d) => d.to_string(),
            None => format!("unexplained: {}", m.fields.join("+")),
        };
        *by_cause.entry(cause).or_default() += 1;
    }
    let unexplained: Vec<_> = report
        .mismatches
        .iter()
        .filter(|m| m.explained_by.is_none())
        .collect();
    println!(
        "emulator vs KVM, {kind:?} under {paging:?}: {n} scenarios (seed {:#x}), {} mismatches, {} not explained by a documented KVM departure: {by_cause:?}",
        diff::SEED,
        report.mismatches.len(),
        unexplained.len()
    );
    assert_eq!(report.mismatches.len() + report.agreed, n);
    for m in unexplained.iter().take(10) {
        let d = describe(&m.scenario, m.at, "kvm", &m.kvm, &m.emulator, &m.fields);
        println!("#{} {d}", m.index);
    }
    unexplained.len()
}
