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
//! Fails on any mismatch no departure explains (the target of 0
//! unexplained; a 64-bit operand that crosses the canonical hole is
//! counted apart and not compared, see
//! `hv_sim::kvm::diff::crosses_canonical_hole`), and on any run that does
//! not finish.
//! `HV_SIM_EMUDIFF_KVM_N` sets the count per (mode, paging) run (2,500 by
//! default: 10,000 in all, about 5 s here, 12 s on a loaded machine). Prints `SKIPPED: <reason>` without /dev/kvm (fails instead
//! with `HV_SIM_REQUIRE_KVM=1`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hv_sim::bench::cpu_model;
use hv_sim::emulate::SegmentCache;
use hv_sim::emulate::diff;
use hv_sim::emulate::diff::long::{Kind, LongPaging, LongRecord, describe};
use hv_sim::kvm::diff::{KvmReport, compare, segments_at_instruction};
use iced_x86::{DecoderOptions, Mnemonic};

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
            assert_eq!(
                unexplained, 0,
                "{kind:?} under {paging:?} on {host}: {unexplained} of {n} mismatches no documented KVM departure explains: an emulator bug, or a departure to find and model"
            );
        }
    }
}

/// PVM holds the scenario's data segments at its instruction: for the
/// first 40 compatibility-mode scenarios, `KVM_GET_SREGS` at a `hlt` in
/// the instruction's place gives each non-null DS/ES/FS/GS the base (low
/// 32 bits: FS/GS's were then set by WRMSR), limit and type of the
/// scenario's descriptor (read-only, code, expand-down and small limits
/// among them). So the compatibility-mode runs check the emulator's
/// data-segment rules against KVM's.
#[test]
fn pvm_holds_the_scenarios_data_segments() {
    if !hv_sim::testing::kvm_or_skip("pvm_holds_the_scenarios_data_segments") {
        return;
    }
    let scenarios =
        hv_sim::emulate::diff::long::generate(40, diff::SEED, Kind::Compat, LongPaging::Plain);
    let mut checked = 0;
    for (i, s) in scenarios.iter().enumerate() {
        let sr = segments_at_instruction(s, Duration::from_secs(20)).expect("the KVM run");
        for (k, (name, seg)) in [("es", sr.es), ("ds", sr.ds), ("fs", sr.fs), ("gs", sr.gs)]
            .into_iter()
            .enumerate()
        {
            let sel = s.sels[k];
            let Some(&d) = usize::from(sel >> 3)
                .checked_sub(3)
                .and_then(|j| s.gdt_slots.get(j))
            else {
                continue;
            };
            if sel & 0xfffc == 0 {
                continue;
            }
            let c = SegmentCache::from_descriptor(d);
            assert_eq!(
                (
                    seg.selector,
                    seg.base & 0xffff_ffff,
                    seg.limit,
                    seg.type_,
                    seg.present != 0
                ),
                (
                    sel,
                    c.base & 0xffff_ffff,
                    c.effective_limit(),
                    c.typ,
                    c.present
                ),
                "#{i} {name}: PVM's segment against the scenario's descriptor {d:#x}"
            );
            checked += 1;
        }
    }
    println!("{checked} data segments of 40 scenarios as the scenarios loaded them");
    assert!(checked >= 100, "only {checked} segments checked");
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
            None if m.beyond_hole => "not compared: beyond the canonical hole".to_string(),
            None => format!("unexplained: {}", m.fields.join("+")),
        };
        *by_cause.entry(cause).or_default() += 1;
    }
    let unexplained: Vec<_> = report.unexplained().collect();
    println!(
        "emulator vs KVM, {kind:?} under {paging:?}: {n} scenarios (seed {:#x}), {} mismatches, {} not explained by a documented KVM departure: {by_cause:?}",
        diff::SEED,
        report.mismatches.len(),
        unexplained.len()
    );
    assert_eq!(report.mismatches.len() + report.agreed, n);
    // The scenarios not compared (an operand across the canonical hole)
    // must be few and must show what that rule claims KVM does: the
    // emulator's #GP(0)/#SS(0) (the SDM's answer; STR/SLDT aside), and on KVM no
    // canonical fault before any access: the operand went on through bits
    // 47:0 (success, a #PF past the first page, LTR/LLDT's check of the
    // selector it read there), or faulted only after walking the first
    // page (the window's A bit set where the emulator's is not).
    let beyond: Vec<_> = report.mismatches.iter().filter(|m| m.beyond_hole).collect();
    assert!(
        beyond.len() <= n.div_ceil(100),
        "{kind:?} under {paging:?}: {} of {n} scenarios not compared (operand across the canonical hole): more than 1%",
        beyond.len()
    );
    let canonical_fault = |r: &LongRecord| matches!(r.vector, Some(12 | 13)) && r.error == 0;
    for m in &beyond {
        // STR/SLDT store 2 bytes (SDM vol. 2B), which may end before the
        // hole: only KVM's 8-byte access (`dst_read_first`, `wide_store`)
        // crosses it, and the emulator's answer is the 2-byte one.
        let two_byte = matches!(
            iced_x86::Decoder::with_ip(64, &m.scenario.insn, u64::from(m.at), DecoderOptions::NONE)
                .decode()
                .mnemonic(),
            Mnemonic::Str | Mnemonic::Sldt
        );
        assert!(
            canonical_fault(&m.emulator) || two_byte,
            "#{}: not compared, but the emulator's answer is not the SDM's #GP(0)/#SS(0): {}",
            m.index,
            describe(&m.scenario, m.at, "kvm", &m.kvm, &m.emulator, &m.fields)
        );
        assert!(
            !canonical_fault(&m.kvm) || (m.kvm.pte & 0x20 != 0 && m.emulator.pte & 0x20 == 0),
            "#{}: not compared, but KVM raised the canonical fault too: {}",
            m.index,
            describe(&m.scenario, m.at, "kvm", &m.kvm, &m.emulator, &m.fields)
        );
    }
    for m in unexplained.iter().take(10) {
        let d = describe(&m.scenario, m.at, "kvm", &m.kvm, &m.emulator, &m.fields);
        println!("#{} {d}", m.index);
    }
    unexplained.len()
}
