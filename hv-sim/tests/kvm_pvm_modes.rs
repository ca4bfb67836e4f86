//! Which CPU modes this host's `/dev/kvm` runs (issue 11, deliverable 3:
//! can the 32-bit kernel and the 32-bit scenarios run on KVM here?).
//!
//! Each test enters a small hand-assembled guest in one mode through
//! `KVM_SET_SREGS` ([`hv_sim::kvm::flat`]) and prints what the host
//! answered. On a PVM host (`kvm_pvm`, this project's machines) the
//! answers are PVM's, and the tests assert them:
//! * real mode, 32-bit protected mode with paging off, and compatibility
//!   mode run;
//! * 32-bit and PAE paging do not: `KVM_SET_SREGS` succeeds but CR0.PG is
//!   dropped, and the next `KVM_RUN` shuts the vCPU down (the host logs
//!   "kvm-pvm supports paging only in long mode"); a guest's own
//!   `mov cr0` that sets PG with EFER.LME clear raises #GP(0), which the
//!   SDM does not (vol. 3A 2.5: PG with PE set is valid; #GP only for PG
//!   without PE, or PG with LME and no PAE);
//! * a protected-mode `iret` stops the VM with `KVM_EXIT_INTERNAL_ERROR`
//!   (the guest runs through KVM's instruction emulator, whose IRET is
//!   real-mode only).
//!
//! On hardware virtualization every mode runs, and the tests assert that.
//! Prints `SKIPPED: <reason>` without /dev/kvm (fails instead with
//! `HV_SIM_REQUIRE_KVM=1`).

use std::time::Duration;

use hv_sim::kvm::flat::{FlatConfig, FlatRun, Out, Stop, run_flat};
use hv_sim::kvm::host_is_pvm;
use hv_sim::kvm::layout::flat_segment;
use hv_sim::testing::kvm_or_skip;
use kvm_bindings::{kvm_regs, kvm_sregs};

const DONE: u16 = 0xf4;
const CODE: u64 = 0x1000;
const HANDLER: u64 = 0x1100;
const GDT: u64 = 0x500;
const IDT: u64 = 0x2000;
/// `mov eax, 1; out 0xf4, eax`.
const DONE_1: [u8; 7] = [0xb8, 1, 0, 0, 0, 0xe7, DONE as u8];

fn cfg() -> FlatConfig {
    FlatConfig {
        mem_size: 4 << 20,
        timeout: Duration::from_secs(10),
        max_exits: 64,
        done_port: DONE,
        maxphyaddr: None,
    }
}

/// null, 64-bit code 0x08, data 0x10, 32-bit code 0x18.
fn gdt() -> Vec<u8> {
    [
        0u64,
        0x00af_9b00_0000_ffff,
        0x00cf_9300_0000_ffff,
        0x00cf_9b00_0000_ffff,
    ]
    .iter()
    .flat_map(|d| d.to_le_bytes())
    .collect()
}

/// A 32-bit interrupt gate to `handler` through selector 0x18.
fn gate32(handler: u64) -> [u8; 8] {
    let g = (handler & 0xffff) | 0x18 << 16 | 0x8e00 << 32 | (handler >> 16 & 0xffff) << 48;
    g.to_le_bytes()
}

/// 32-bit protected mode, paging off, flat segments, CPL 0.
fn prot32(regs: &mut kvm_regs, s: &mut kvm_sregs) {
    s.cs = flat_segment(0x18, true, 0);
    (s.cs.l, s.cs.db) = (0, 1);
    let d = flat_segment(0x10, false, 0);
    (s.ds, s.es, s.fs, s.gs, s.ss) = (d, d, d, d, d);
    s.gdt.base = GDT;
    s.gdt.limit = 31;
    s.idt.base = IDT;
    s.idt.limit = 0xff;
    s.cr0 = 0x11;
    s.cr4 = 0;
    s.efer = 0;
    regs.rip = CODE;
    regs.rsp = 0x8000;
    regs.rflags = 2;
}

fn show(name: &str, r: &FlatRun) {
    eprintln!(
        "{name}: accepted CR0 {:#x} CR4 {:#x} EFER {:#x}; stop {:?} after {} exits; outs {:x?}; rip {:#x}",
        r.accepted.cr0, r.accepted.cr4, r.accepted.efer, r.stop, r.exits, r.outs, r.regs.rip
    );
}

#[test]
fn real_mode_and_protected_mode_without_paging_run() {
    if !kvm_or_skip("real_mode_and_protected_mode_without_paging_run") {
        return;
    }
    // mov al, 0x42; out 0xf4, al
    let code16 = [0xb0, 0x42, 0xe6, DONE as u8];
    let r = run_flat(&cfg(), &[(CODE, &code16)], |regs, s| {
        s.cs.base = 0;
        s.cs.selector = 0;
        regs.rip = CODE;
        regs.rflags = 2;
    })
    .expect("real-mode VM");
    show("real mode", &r);
    assert_eq!(r.stop, Stop::Done(0x42));
    let g = gdt();
    let r = run_flat(&cfg(), &[(CODE, &DONE_1), (GDT, &g)], prot32).expect("protected-mode VM");
    show("32-bit protected mode, paging off", &r);
    assert_eq!(r.stop, Stop::Done(1));
    assert_eq!(r.accepted.cr0 & 0x8000_0001, 1);
}

/// Identity page tables for 32-bit paging (PD at 0x5000, 4 MiB pages) and
/// PAE paging (PDPT at 0x6000, PD at 0x4000, 2 MiB pages).
fn legacy_tables() -> Vec<(u64, Vec<u8>)> {
    let mut pae_pd = Vec::new();
    for k in 0..2u64 {
        pae_pd.extend_from_slice(&(k << 21 | 0x83).to_le_bytes());
    }
    let pdpt: Vec<u8> = (0..4).flat_map(|_| 0x4001u64.to_le_bytes()).collect();
    vec![
        (0x5000, 0x83u32.to_le_bytes().to_vec()),
        (0x4000, pae_pd),
        (0x6000, pdpt),
    ]
}

#[test]
fn pvm_drops_32bit_and_pae_paging_set_through_sregs() {
    if !kvm_or_skip("pvm_drops_32bit_and_pae_paging_set_through_sregs") {
        return;
    }
    let g = gdt();
    let tables = legacy_tables();
    for (name, cr3, cr4) in [
        ("32-bit paging", 0x5000u64, 0x10u64),
        ("PAE paging", 0x6000, 0x20),
    ] {
        let mut chunks: Vec<(u64, &[u8])> = vec![(CODE, &DONE_1), (GDT, &g)];
        chunks.extend(tables.iter().map(|(a, b)| (*a, b.as_slice())));
        let r = run_flat(&cfg(), &chunks, move |regs, s| {
            prot32(regs, s);
            s.cr0 |= 0x8001_0000;
            s.cr3 = cr3;
            s.cr4 = cr4;
        })
        .expect("VM");
        show(name, &r);
        if host_is_pvm() {
            assert_eq!(r.accepted.cr0 & 0x8000_0000, 0, "{name}: PVM kept CR0.PG");
            assert_eq!(r.stop, Stop::Shutdown, "{name}");
        } else {
            assert_eq!(r.stop, Stop::Done(1), "{name}");
        }
    }
}

#[test]
fn pvm_answers_a_guest_cr0_pg_without_lme_with_gp0() {
    if !kvm_or_skip("pvm_answers_a_guest_cr0_pg_without_lme_with_gp0") {
        return;
    }
    #[rustfmt::skip]
    let code = [
        0xb8, 0x00, 0x50, 0x00, 0x00, // mov eax, 0x5000
        0x0f, 0x22, 0xd8,             // mov cr3, eax
        0x0f, 0x20, 0xc0,             // mov eax, cr0
        0x0d, 0x00, 0x00, 0x00, 0x80, // or eax, 0x8000_0000
        0x0f, 0x22, 0xc0,             // mov cr0, eax
        0xb8, 0x01, 0x00, 0x00, 0x00, // mov eax, 1
        0xe7, DONE as u8,             // out 0xf4, eax
    ];
    // #GP: pop eax (the error code); out 0x91, eax; mov eax, 2; out 0xf4, eax
    let handler = [0x58, 0xe7, 0x91, 0xb8, 2, 0, 0, 0, 0xe7, DONE as u8];
    let (g, gate, tables) = (gdt(), gate32(HANDLER), legacy_tables());
    let chunks: Vec<(u64, &[u8])> = vec![
        (CODE, &code),
        (HANDLER, &handler),
        (GDT, &g),
        (IDT + 13 * 8, &gate),
        (0x5000, &tables[0].1),
    ];
    let r = run_flat(&cfg(), &chunks, |regs, s| {
        prot32(regs, s);
        s.cr4 = 0x10; // PSE: the directory's 4 MiB page
    })
    .expect("VM");
    show("guest mov cr0 (PG, LME clear)", &r);
    if host_is_pvm() {
        let gp0 = Out {
            port: 0x91,
            value: 0,
            size: 4,
        };
        assert_eq!((r.stop, r.outs), (Stop::Done(2), vec![gp0]));
    } else {
        assert_eq!(r.stop, Stop::Done(1));
    }
}

#[test]
fn pvm_stops_at_a_protected_mode_iret() {
    if !kvm_or_skip("pvm_stops_at_a_protected_mode_iret") {
        return;
    }
    // ud2; mov eax, 1; out 0xf4, eax
    let mut code = vec![0x0f, 0x0b];
    code.extend_from_slice(&DONE_1);
    // #UD: mov eax, 6; out 0x90, eax; add dword [esp], 2; iretd
    let handler = [0xb8, 6, 0, 0, 0, 0xe7, 0x90, 0x83, 0x04, 0x24, 0x02, 0xcf];
    let (g, gate) = (gdt(), gate32(HANDLER));
    let chunks: Vec<(u64, &[u8])> = vec![
        (CODE, &code),
        (HANDLER, &handler),
        (GDT, &g),
        (IDT + 6 * 8, &gate),
    ];
    let r = run_flat(&cfg(), &chunks, prot32).expect("VM");
    show("protected-mode iretd", &r);
    let ud = Out {
        port: 0x90,
        value: 6,
        size: 4,
    };
    assert_eq!(r.outs, vec![ud], "#UD reaches the 32-bit gate's handler");
    if host_is_pvm() {
        assert!(matches!(r.stop, Stop::InternalError(_)), "{:?}", r.stop);
        assert_eq!(r.regs.rip, HANDLER + 11, "stopped at the iretd");
    } else {
        assert_eq!(r.stop, Stop::Done(1));
    }
}

#[test]
fn compatibility_mode_runs() {
    if !kvm_or_skip("compatibility_mode_runs") {
        return;
    }
    let g = gdt();
    // PML4 0x2000 -> PDPT 0x3000 -> PD 0x4000 (2 MiB pages).
    let (pml4, pdpt) = (0x3003u64.to_le_bytes(), 0x4003u64.to_le_bytes());
    let tables = legacy_tables();
    let chunks: Vec<(u64, &[u8])> = vec![
        (CODE, &DONE_1),
        (GDT, &g),
        (0x2000, &pml4),
        (0x3000, &pdpt),
        (0x4000, &tables[1].1),
    ];
    let r = run_flat(&cfg(), &chunks, |regs, s| {
        prot32(regs, s);
        s.cr0 = 0x8005_0033;
        s.cr3 = 0x2000;
        s.cr4 = 0x20;
        s.efer = 0x500;
    })
    .expect("VM");
    show("compatibility mode", &r);
    assert_eq!(r.stop, Stop::Done(1));
    assert_eq!((r.accepted.efer & 0x400, r.accepted.cs.l), (0x400, 0));
}
