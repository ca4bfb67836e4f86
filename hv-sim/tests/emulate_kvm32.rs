//! The emulator against PVM in 32-bit protected mode with paging off
//! (issue 11, deliverable 5: an independent check of the emulator's
//! data-segment limit and type checks, which QEMU TCG does not make).
//!
//! A probe first: the guest loads DS itself with a small-limit, an
//! expand-down, a read-only and a null segment and accesses inside and
//! past them, and loads DS with an execute-only code segment; on PVM each
//! answer is the SDM's (vol. 3A 5.3, 5.4: #GP(0); MOV to DS of an
//! unreadable code segment: #GP(selector)). Then `hv_sim::kvm::diff32`: the classic
//! 32-bit scenarios (`hv_sim::emulate::diff`, CPL 0, paging off, the QEMU
//! side's image) on a real vCPU and through `hv_sim::emulate`, compared
//! field by field; every mismatch must be explained by a documented PVM
//! departure (`Pvm32Departures`). Prints the CPU model, the scenarios per
//! second, the mismatches by cause and the scenarios a data-segment rule
//! decided on both sides, by rule. `HV_SIM_EMUDIFF_KVM32_N` sets the count
//! (25,000 by default: about 15 s here). Prints `SKIPPED: <reason>`
//! without /dev/kvm (fails instead with `HV_SIM_REQUIRE_KVM=1`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hv_sim::bench::cpu_model;
use hv_sim::emulate::diff;
use hv_sim::kvm::diff32::compare32;
use hv_sim::kvm::flat::{FlatConfig, FlatRun, Out, Stop, run_flat};
use hv_sim::kvm::layout::flat_segment;
use hv_sim::testing::kvm_or_skip;
use kvm_bindings::{kvm_regs, kvm_sregs};

const DONE: u16 = 0xf4;
const CODE: u64 = 0x1000;
const GP: u64 = 0x1100;
const SS_: u64 = 0x1180;
const GDT: u64 = 0x500;
const IDT: u64 = 0x2000;
const DATA: u64 = 0x3000;

fn desc(base: u32, limit: u32, access: u8, flags: u8) -> u64 {
    let (b, l) = (u64::from(base), u64::from(limit));
    (l & 0xffff)
        | (b & 0xff_ffff) << 16
        | u64::from(access) << 40
        | (l >> 16 & 0xf) << 48
        | u64::from(flags & 0xf) << 52
        | (b >> 24) << 56
}

/// null, 0x08 flat code, 0x10 flat data, 0x18 data base DATA limit 0xf,
/// 0x20 expand-down limit 0xfff (B), 0x28 read-only limit 0xffff, 0x30
/// execute-only code.
fn gdt() -> Vec<u8> {
    [
        0u64,
        0x00cf_9b00_0000_ffff,
        0x00cf_9300_0000_ffff,
        desc(DATA as u32, 0xf, 0x93, 0x4),
        desc(DATA as u32, 0xfff, 0x97, 0x4),
        desc(DATA as u32, 0xffff, 0x91, 0x4),
        desc(DATA as u32, 0xffff, 0x99, 0x4),
    ]
    .iter()
    .flat_map(|d| d.to_le_bytes())
    .collect()
}

fn gate32(handler: u64) -> [u8; 8] {
    let g = (handler & 0xffff) | 0x08 << 16 | 0x8e00 << 32 | (handler >> 16 & 0xffff) << 48;
    g.to_le_bytes()
}

fn prot32(regs: &mut kvm_regs, s: &mut kvm_sregs) {
    s.cs = flat_segment(0x08, true, 0);
    (s.cs.l, s.cs.db) = (0, 1);
    let d = flat_segment(0x10, false, 0);
    (s.ds, s.es, s.fs, s.gs, s.ss) = (d, d, d, d, d);
    s.gdt.base = GDT;
    s.gdt.limit = 0x37;
    s.idt.base = IDT;
    s.idt.limit = 0xff;
    s.cr0 = 0x11;
    s.cr4 = 0;
    s.efer = 0;
    regs.rip = CODE;
    regs.rsp = 0x8000;
    regs.rflags = 2;
}

/// Load DS with `sel` (by the guest's own `mov ds, ax`), run `access`,
/// report EAX on port 0x93 and stop with 1; #GP reports its error code
/// on 0x91 and stops with 13, #SS on 0x92 and 12.
fn probe(sel: u16, access: &[u8]) -> FlatRun {
    let mut code = vec![0x66, 0xb8];
    code.extend_from_slice(&sel.to_le_bytes());
    code.extend_from_slice(&[0x8e, 0xd8]); // mov ds, ax
    code.extend_from_slice(access);
    code.extend_from_slice(&[0xe7, 0x93, 0xb8, 1, 0, 0, 0, 0xe7, DONE as u8]);
    let gp = [0x58, 0xe7, 0x91, 0xb8, 13, 0, 0, 0, 0xe7, DONE as u8];
    let ss = [0x58, 0xe7, 0x92, 0xb8, 12, 0, 0, 0, 0xe7, DONE as u8];
    let data: Vec<u8> = (0..0x20u8).collect();
    let (g, gpg, ssg) = (gdt(), gate32(GP), gate32(SS_));
    let chunks: Vec<(u64, &[u8])> = vec![
        (CODE, &code),
        (GP, &gp),
        (SS_, &ss),
        (GDT, &g),
        (IDT + 13 * 8, &gpg),
        (IDT + 12 * 8, &ssg),
        (DATA, &data),
    ];
    let cfg = FlatConfig {
        mem_size: 4 << 20,
        timeout: Duration::from_secs(10),
        max_exits: 64,
        done_port: DONE,
        maxphyaddr: None,
    };
    run_flat(&cfg, &chunks, prot32).expect("VM")
}

fn out(port: u16, value: u32) -> Out {
    Out {
        port,
        value,
        size: 4,
    }
}

/// A probe case: name, DS selector, the access, the stop and port writes
/// the SDM gives.
type Case = (&'static str, u16, &'static [u8], Stop, Vec<Out>);

/// The guest loads DS itself and accesses inside and past the segment:
/// KVM's answers are the SDM's (vol. 3A 5.3 limit checks, 5.4 type checks,
/// 3.4.2 null selectors: #GP(0); a hit reads the segment's base).
#[test]
fn probe_pvm_data_segment_checks() {
    if !kvm_or_skip("probe_pvm_data_segment_checks") {
        return;
    }
    let cases: [Case; 9] = [
        (
            "limit 0xf, dword at 0xc",
            0x18,
            &[0xa1, 0xc, 0, 0, 0],
            Stop::Done(1),
            vec![out(0x93, 0x0f0e_0d0c)],
        ),
        (
            "limit 0xf, dword at 0xd",
            0x18,
            &[0xa1, 0xd, 0, 0, 0],
            Stop::Done(13),
            vec![out(0x91, 0)],
        ),
        (
            "expand-down 0xfff, dword at 0x10",
            0x20,
            &[0xa1, 0x10, 0, 0, 0],
            Stop::Done(13),
            vec![out(0x91, 0)],
        ),
        (
            "expand-down 0xfff, dword at 0x1000",
            0x20,
            &[0xa1, 0, 0x10, 0, 0],
            Stop::Done(1),
            vec![out(0x93, 0)],
        ),
        (
            "read-only, load",
            0x28,
            &[0xa1, 0x4, 0, 0, 0],
            Stop::Done(1),
            vec![out(0x93, 0x0706_0504)],
        ),
        (
            "read-only, store",
            0x28,
            &[0xa3, 0x4, 0, 0, 0],
            Stop::Done(13),
            vec![out(0x91, 0)],
        ),
        (
            "null, load",
            0x0,
            &[0xa1, 0x4, 0, 0, 0],
            Stop::Done(13),
            vec![out(0x91, 0)],
        ),
        (
            "sgdt through limit 0xf at 0xc",
            0x18,
            &[0x0f, 0x01, 0x05, 0xc, 0, 0, 0],
            Stop::Done(13),
            vec![out(0x91, 0)],
        ),
        (
            "execute-only code into DS",
            0x30,
            &[0xa1, 0x4, 0, 0, 0],
            Stop::Done(13),
            vec![out(0x91, 0x30)],
        ),
    ];
    for (name, sel, access, stop, outs) in cases {
        let r = probe(sel, access);
        println!("{name}: stop {:?}, port writes {:x?}", r.stop, r.outs);
        assert_eq!((r.stop, r.outs), (stop, outs), "{name}");
    }
}

#[test]
fn emulator_against_pvm_paging_off() {
    if !kvm_or_skip("emulator_against_pvm_paging_off") {
        return;
    }
    let n: usize = std::env::var("HV_SIM_EMUDIFF_KVM32_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(25_000);
    assert!(n >= 1, "HV_SIM_EMUDIFF_KVM32_N must be at least 1");
    let host = if hv_sim::kvm::host_is_pvm() {
        "PVM"
    } else {
        "KVM"
    };
    println!("host: {} ({host})", cpu_model());
    let t0 = Instant::now();
    let r = compare32(n, diff::SEED, Duration::from_secs(300)).expect("the KVM run");
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "{n} scenarios (seed {:#x}) in {secs:.1} s ({:.0} a second; {:.1} s in KVM_RUN, {} exits)",
        diff::SEED,
        n as f64 / secs,
        r.run_time.as_secs_f64(),
        r.exits
    );
    println!("SDM outcomes (the emulator's): {:?}", r.outcomes);
    let decided: usize = r.segment_faults.values().sum();
    println!(
        "decided by a data-segment rule, KVM and the emulator agreeing: {decided} scenarios: {:?}",
        r.segment_faults
    );
    let mut by_cause: BTreeMap<String, usize> = BTreeMap::new();
    for m in &r.mismatches {
        let cause = match m.explained_by {
            Some(d) => d.to_string(),
            None => format!("unexplained: {}", m.fields.join("+")),
        };
        *by_cause.entry(cause).or_default() += 1;
    }
    let unexplained: Vec<_> = r
        .mismatches
        .iter()
        .filter(|m| m.explained_by.is_none())
        .collect();
    println!(
        "emulator vs {host}, 32-bit protected mode, paging off: {n} scenarios, {} agree, {} mismatches, {} not explained by a documented PVM departure: {by_cause:?}",
        r.agreed,
        r.mismatches.len(),
        unexplained.len()
    );
    assert_eq!(r.agreed + r.mismatches.len(), n);
    for m in unexplained.iter().take(8) {
        println!(
            "#{} {:02x?} regs {:x?} sels {:x?} slots {:x?} gdtr {:x?}\n  kvm {} err {:#x} | emulator {} err {:#x}; differ: {:?}",
            m.index,
            m.scenario.insn,
            m.scenario.regs,
            m.scenario.sels,
            &m.scenario.gdt_slots[..4],
            m.scenario.test_gdtr,
            diff::vector_name(m.kvm.vector),
            m.kvm.error,
            diff::vector_name(m.emulator.vector),
            m.emulator.error,
            m.fields
        );
    }
    assert!(
        unexplained.is_empty(),
        "{} mismatches no documented PVM departure explains",
        unexplained.len()
    );
    // The check is worth something only if the data-segment rules decided
    // many scenarios on both sides (10,130 of 25,000 on PVM).
    assert!(
        decided * 4 >= n,
        "only {decided} of {n} scenarios were decided by a data-segment rule"
    );
}
