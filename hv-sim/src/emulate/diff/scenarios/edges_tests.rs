//! Tests of the edges stream ([`super::generate_edges`]).

use super::super::super::{Exception, Outcome};
use super::super::{emulate_scenario, image};
use super::*;

/// The edges stream covers what it adds: TF (never after a CPL 0
/// LGDT/LIDT), 16-bit code ending at 0xFFFF (always with TF), SS-relative
/// operands through a stack segment of its own (above CPL 0, DPL = CPL,
/// read/write, 32-bit where ESP is the base) and conforming code (DPL ≤
/// CPL); and the emulator's answers include #SS(0) and a resumed EIP of
/// 0x10000.
#[test]
fn edges_cover_every_dimension() {
    let all = generate_edges(4000, super::super::SEED, Paging::Bits32);
    let (_, at) = image::build(&all).unwrap();
    let (mut tf, mut ffff, mut stack, mut conforming, mut ss_faults) = (0, 0, 0, 0, 0);
    let mut resumed_past = 0;
    for (i, s) in all.iter().enumerate() {
        let op = s.insn.iter().position(|&b| b == 0x0f).unwrap();
        if s.edges.tf {
            tf += 1;
            let table_load = s.insn[op + 1] == 1 && s.insn[op + 2] >> 3 & 7 >= 2;
            assert!(!(s.cpl == 0 && table_load), "{i}");
        }
        if let Some(ip) = s.code16
            && usize::from(ip) + s.insn.len() == 0x1_0000
        {
            ffff += 1;
            assert!(s.edges.tf, "{i}");
        }
        if let Some(d) = s.edges.stack {
            stack += 1;
            assert!(s.cpl > 0);
            assert_eq!(d >> 45 & 3, u64::from(s.cpl), "{i}: DPL");
            assert!(matches!(d >> 40 & 0x1f, 0x13 | 0x17), "{i}: type");
        }
        if let Some(dpl) = s.edges.conforming {
            conforming += 1;
            assert!(dpl <= s.cpl);
        }
        let (r, o) = emulate_scenario(s, at[i], image::TSS_SEL, Default::default());
        if let Outcome::Inject {
            exception: Exception::Ss(0),
            ..
        } = o
        {
            ss_faults += 1;
        }
        if r.vector.is_none() && r.eip == Some(0x1_0000) {
            resumed_past += 1;
        }
    }
    assert!(
        tf > 2500 && ffff > 80 && stack > 800 && conforming > 800,
        "{tf} {ffff} {stack} {conforming}"
    );
    assert!(
        ss_faults > 50 && resumed_past > 8,
        "{ss_faults} {resumed_past}"
    );
}

/// Under PAE the edges stream makes the code page execute-disable at CPL
/// 0–2 (never a CPL 3 stub's page: no page table maps those), and the
/// emulator's fetch then faults with I/D set at the instruction (SDM vol.
/// 3A 4.7: error code 0x11).
#[test]
fn edges_fetch_from_execute_disable_pages() {
    use super::super::super::NotEmulated;
    let all = generate_edges(4000, super::super::SEED, Paging::Pae);
    let (_, at) = image::build(&all).unwrap();
    let mut faults = 0;
    for (i, s) in all.iter().enumerate() {
        let Some(page) = image::xd_page(s, at[i]) else {
            continue;
        };
        assert!(s.cpl < 3 && s.edges.xd_fetch, "{i}");
        let (r, o) = emulate_scenario(s, at[i], image::TSS_SEL, Default::default());
        if let Outcome::NotEmulated(NotEmulated::Fetch(Exception::Pf(pf))) = o {
            assert_eq!(pf.error_code, 0x11, "{i}");
            assert_eq!(pf.addr as u32 & !0xfff, page, "{i}");
            assert_eq!(r.eip, Some(image::entry_point(s, at[i]).1), "{i}");
            faults += 1;
        }
    }
    assert!(faults > 200, "{faults}");
}
