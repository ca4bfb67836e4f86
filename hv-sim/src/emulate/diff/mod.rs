//! The emulator against QEMU TCG (issue 11, deliverable 5; first harness).
//!
//! Random scenarios are drawn on the host from a seed. Each one is a
//! descriptor-table instruction (any of the eight, any operand form:
//! register, 32-bit ModRM/SIB, 16-bit addressing with 0x67, 16-bit operand
//! size with 0x66, segment overrides, LOCK) with the segment registers it
//! uses (random base, limit, type: read/write, read-only, expand-down,
//! readable code; G, B; null ES/FS/GS), general registers aimed at the edges
//! of those limits, a GDT limit, system descriptors in the GDT (available
//! and busy 16/32-bit TSS, LDT, data, not present) and a selector.
//!
//! [`image::build`] turns them into one small 32-bit guest that runs them
//! all under QEMU TCG (legacy protected mode, a ring-0 runner, paging on), catching
//! every exception, and writes one record per scenario: the vector and
//! error code, the EIP in the exception's frame, EAX, GDTR, IDTR, TR,
//! LDTR, the data window and the GDT's scenario slots. The same scenario is run through [`super::emulate`] on a
//! [`MockCpu`](super::mock::MockCpu) over [`MockPhys`](super::mock::MockPhys) and the page walker, holding the same
//! state, and the two are compared field by field.
//!
//! The guest runs with CR0.WP under 32-bit paging or (a second image)
//! PAE paging with EFER.NXE, SMEP and SMAP ([`Paging`]), the window's
//! page read/write, read-only, not present or user per scenario, and
//! under PAE also execute-disable or with a reserved bit (an address bit
//! at or above MAXPHYADDR, or bit 52): #PF with its error code and CR2, and the
//! accessed and dirty bits, are compared too; the emulator walks the same
//! tables ([`super::walk`], [`super::paged`]). A third image runs with
//! paging off ([`Paging::Off`]: CR0.PG = 0, as examples/kernel32 and PVM
//! run 32-bit code), the window's entry unused: QEMU TCG's run of it checks
//! no data segment ([`Departures::no_segment_checks`]), but the same image
//! on PVM does (`kvm::diff32`: Linux's `emulate.c` loads and checks
//! DS/ES/FS/GS in 32-bit protected mode; 10,130 of 25,000 scenarios decided
//! by a data-segment limit, type or null-selector rule agree there, 0
//! unexplained mismatches, AMD EPYC (family 25, model 1, stepping 1)). The
//! PAE scenarios found a
//! walker bug (bits 62:52 of a PAE entry are reserved, SDM vol. 3A tables
//! 4-9 to 4-11; fixed, with a regression test in `walk`) and a fourth
//! QEMU departure ([`Departures::rsvd_without_p`]).
//!
//! The guest keeps the scenarios apart: each one's state is reset before
//! it runs, its code is read-only (a store QEMU lets through an unchecked
//! segment faults instead of rewriting a later scenario: scenario 30,002
//! of seed [`SEED`] once ran corrupted code that way), and every operand
//! is aimed at the window, where QEMU puts it too (a unit test checks all
//! 100,000), or (a 16-bit address through a null segment, base 0) below
//! 64 KiB, which the paged images map read-only onto the window's page
//! ([`image::pte`]): so with paging on, QEMU reads only memory the
//! harness holds, and a mismatch is explained by a departure or not (the
//! stricter rule; with paging off those addresses are RAM the harness
//! does not hold, and such a mismatch counts as unverifiable:
//! [`Mismatch::unverifiable`]). [`compare`] splits a run over several
//! QEMU processes. `examples/kernel32` runs the CPL 0, 32-bit code
//! scenarios too, paging off, in its own tables under QEMU TCG
//! ([`kernel32`]: 100,000 from seed [`SEED`], 0 unexplained, by
//! [`compare_records`]).
//!
//! # Rings, UMIP and 16-bit code ([`generate_rings`], [`compare_rings`])
//! A second stream of scenarios runs the instruction at CPL 0–3, with
//! CR4.UMIP on or off (QEMU's `-cpu qemu64,+smep,+smap,+umip`: TCG
//! emulates UMIP), EFLAGS.AC on or off, in flat 32-bit code or 16-bit
//! code (CS.D = 0: 0x66 and 0x67 then select 32-bit sizes, the operand
//! at 16-bit addressing by default; the instruction sometimes across
//! offset 0xFFFF of a 64 KiB or 1 MiB code segment). The design:
//! * Every scenario is entered by IRET from the ring-0 runner, with the
//!   scenario's CS (0x08, or a ring-N 32/16-bit code segment written at
//!   [`image::CODE_SEL`] before it), SS (a ring-N flat stack at
//!   [`image::STACK_SEL`]) and EFLAGS (AC); the runner sets CR4.UMIP as
//!   the scenario says. Data segments get DPL 3 above CPL 0 (the IRET
//!   would null them otherwise). The test GDTR's limit then covers those
//!   entries (IRET reads them); the LTR/LLDT limit edges stay with the
//!   CPL 0, 32-bit scenarios.
//! * Back to ring 0: a CPL 0 stub jumps back (16-bit code: after saving
//!   SGDT's answer and restoring the runtime GDTR, whose entry 0x08 the
//!   far jump reads); above CPL 0, `int 0x20` through a DPL 3 gate;
//!   exceptions through the DPL 0 gates (a gate's DPL binds `int n` only).
//! * TR: the runner loads the runtime TSS ([`image::TSS_SEL`], SS0:ESP0
//!   the ring-0 stack, its busy bit cleared first) before every scenario,
//!   so delivery from rings 1–3 can switch stacks whatever the previous
//!   scenario's LTR loaded; STR then stores that selector (the record's
//!   TR before, given to the emulator too). LTR at CPL > 0 is #GP(0)
//!   before it reads anything, so no scenario above CPL 0 changes TR.
//! * Paging: the ring-3 stubs lie in user pages (from a 4 MiB boundary
//!   past the data blocks); the others, and everything the runner reads,
//!   in supervisor pages (SMEP, SMAP). The window's entry is a user page
//!   three times in four at CPL 3.
//!
//! They found no emulator bug, and a fifth QEMU departure
//! ([`Departures::no_fetch_limit`]). With seed [`SEED`], 25,000 under
//! 32-bit paging and 12,500 under PAE: 0 unexplained (the test prints
//! the counts).
//!
//! # Edges ([`generate_edges`], [`compare_edges`])
//! A third stream draws the rings stream's dimensions and then what those
//! leave out ([`Edges`]):
//! * The EIP: every record holds the EIP of the exception's frame, so a
//!   fault's EIP (the faulting instruction's, SDM vol. 3A 6.5 "faults")
//!   is compared in every stream. Here EFLAGS.TF is set three times in
//!   four by the runner's IRET: a completed instruction then ends in the
//!   single-step #DB, a trap whose frame holds the EIP execution resumes
//!   at (SDM vol. 3A 17.3.1.4; the IRET that sets TF does not trap
//!   itself), recorded as a success with that EIP and compared with
//!   [`super::next_rip`]. Not after a CPL 0 LGDT/LIDT: the #DB would go
//!   through the table just loaded.
//! * 16-bit code ending at offset 0xFFFF (one 16-bit scenario in three,
//!   always with TF: without the trap, execution would go on where the
//!   guest has no code for it). QEMU resumes at 0x10000, as the emulator
//!   does: IP does not wrap at 64 KiB ([`super::next_rip`]).
//! * #SS: above CPL 0, half the scenarios give an SS-relative operand (an
//!   SS override, `[esp+…]`, `[ebp+…]`, `[bp+si]`, `[bp+di]`) a stack
//!   segment of its own at [`image::STACK_SEL`] (read/write or
//!   expand-down, DPL = CPL, a limit at an edge of the access: #SS(0)
//!   past it, SDM vol. 3A 6.15 "Interrupt 12"). The runner's IRET loads
//!   it with the scenario's ESP; exception delivery from an outer ring
//!   switches to the TSS's SS0:ESP0, so the scenario's SS need only be
//!   one IRET loads. An ESP-based operand gets a 32-bit stack (B = 1):
//!   IRET to a 16-bit stack loads SP only, ESP's upper half staying the
//!   ring-0 one (what Linux's espfix hides). QEMU checks no data segment
//!   ([`Departures::no_segment_checks`], SS included here), so the #SS
//!   itself is the emulator's (the SDM-cited unit tests check it).
//! * Conforming code: one scenario in four runs in a conforming CS of
//!   DPL 0 to the CPL (SDM vol. 3A 5.8.1.2: CPL unchanged, the RPL the
//!   CPL), entered by IRET.
//! * XD on instruction fetches: under PAE, one scenario in eight at CPL
//!   0–2 runs with the page of its instruction's last byte execute-disable
//!   ([`image::xd_page`]; the runner sets bit 63 of its entry before the
//!   CR3 reload, the recorder clears it; the stubs start on a page of
//!   their own, so the runner's never is): a fetch #PF with I/D set
//!   (error code 0x11, SDM vol. 3A 4.6, 4.7), its CR2 and EIP compared.
//!
//! 4-level paging, 64-bit mode and compatibility mode (16- and 32-bit
//! code, 16-byte system descriptors, SMAP with EFLAGS.AC either way) are
//! [`long`]'s: a second guest that reuses this one's generator, encoder,
//! QEMU run and departures. Not covered yet here: reserved bits and XD in
//! the PDPTE and PDE (only the window's PTE varies: the directory entry
//! above it maps the guest's own code and tables too; under PAE the CPU
//! loads the PDPTEs at a MOV to CR3, #GP(0) for reserved bits, SDM vol.
//! 3A 4.4.1, so a PDPTE with reserved bits can't be in use at all, while
//! the emulator's walker reads PDPTEs from memory at each walk), LTR/LLDT
//! limit edges in 16-bit code, IRET's own checks (data segments below
//! the new CPL).

mod error;
pub mod image;
pub mod kernel32;
pub mod long;
mod run;
pub use run::run_qemu;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use super::walk::PagingMode;
use super::{Exception, Outcome};

/// Bytes per record.
pub const RECORD: usize = 220;

/// The seed CI's run draws its scenarios from.
pub const SEED: u64 = 0x11_d1ff;

/// One scenario.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// The instruction's bytes.
    pub insn: Vec<u8>,
    /// EAX … EDI (ESP unused: the stack).
    pub regs: [u32; 8],
    /// ES, DS, FS, GS selectors.
    pub sels: [u16; 4],
    /// GDT entries 3..=15 (selectors 0x18..0x78).
    pub gdt_slots: [u64; 13],
    /// The data window's 64 bytes.
    pub window: [u8; 64],
    /// The GDTR loaded before the instruction: (limit, base).
    pub test_gdtr: (u16, u32),
    /// The window page's page-table entry during the instruction.
    pub win_pte: u64,
    /// The paging mode (one per guest image).
    pub paging: Paging,
    /// The CPL the instruction runs at (the runner IRETs to it).
    pub cpl: u8,
    /// CR4.UMIP during the instruction.
    pub umip: bool,
    /// EFLAGS.AC during the instruction (lifts SMAP for explicit
    /// supervisor accesses, SDM vol. 3A 4.6).
    pub ac: bool,
    /// 16-bit code (CS.D = 0, a 64 KiB code segment based so that the
    /// instruction sits at this offset), or `None`: flat 32-bit code.
    pub code16: Option<u16>,
    /// 16-bit code: CS's limit (byte granular; 0xFFFF or 0xF_FFFF).
    pub cs_limit: u32,
    /// The dimensions only [`generate_edges`] draws (all off elsewhere).
    pub edges: Edges,
}

/// What [`generate_edges`]' scenarios add: EFLAGS.TF (the resumed EIP
/// recorded from the single-step trap), a limited or expand-down stack
/// segment, a conforming code segment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Edges {
    /// EFLAGS.TF during the instruction: a successful one ends in a
    /// single-step #DB (a trap: its frame holds the EIP execution resumes
    /// at, SDM vol. 3A 17.3.1.4), recorded as a success with that EIP.
    pub tf: bool,
    /// The ring-N stack segment's descriptor (at [`image::STACK_SEL`]),
    /// or `None`: flat. The runner's IRET loads it with ESP = EAX…EDI's
    /// ESP (`regs[4]`).
    pub stack: Option<u64>,
    /// A conforming code segment at [`image::CODE_SEL`] with this DPL
    /// (≤ the CPL: SDM vol. 3A 5.8.1.2), or `None`: non-conforming, DPL =
    /// CPL.
    pub conforming: Option<u8>,
    /// Under PAE, the page of the instruction's last byte execute-disable
    /// ([`image::xd_page`]: CPL 0–2): the fetch is a #PF with I/D set.
    pub xd_fetch: bool,
}

/// One record, as the guest writes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The exception's vector, or `None`.
    pub vector: Option<u8>,
    /// Its error code (0 if none).
    pub error: u32,
    /// EAX after a successful instruction.
    pub eax: u32,
    /// GDTR and IDTR as SGDT/SIDT store them (limit, base).
    pub gdtr: (u16, u32),
    /// IDTR.
    pub idtr: (u16, u32),
    /// TR and LDTR selectors.
    pub tr: u16,
    /// LDTR.
    pub ldtr: u16,
    /// The data window.
    pub window: Vec<u8>,
    /// The GDT's scenario slots (0x18..0x80).
    pub gdt: Vec<u8>,
    /// CR2 (compared after a #PF only).
    pub cr2: u32,
    /// The window's page-table entry after the instruction (A and D).
    pub pte: u64,
    /// The EIP in the exception's frame (the faulting instruction's, or
    /// under [`Edges::tf`] where execution resumes), `None` without an
    /// exception (QEMU's; the emulator's is always known). Compared where
    /// both are known.
    pub eip: Option<u32>,
    /// Emulator only, under [`Departures::no_segment_checks`]: the operand
    /// fell outside the memory the harness knows (QEMU's read RAM the
    /// harness does not compare). Not compared.
    pub outside: bool,
}

impl Record {
    pub(crate) fn parse(b: &[u8]) -> (Record, u16) {
        let u32at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u16at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let v = u32at(0);
        (
            Record {
                vector: (v != u32::MAX).then_some(v as u8),
                error: u32at(4),
                eax: u32at(8),
                gdtr: (u16at(12), u32at(14)),
                idtr: (u16at(20), u32at(22)),
                tr: u16at(28),
                ldtr: u16at(30),
                window: b[32..96].to_vec(),
                gdt: b[96..200].to_vec(),
                cr2: u32at(204),
                pte: u64::from(u32at(208)) | u64::from(u32at(212)) << 32,
                eip: (v != u32::MAX).then_some(u32at(216)),
                outside: false,
            },
            u16at(200),
        )
    }
}

/// The guest's paging mode (CR0.WP set in both).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Paging {
    /// 32-bit paging with CR4.PSE (SDM vol. 3A 4.3).
    #[default]
    Bits32,
    /// PAE paging with EFER.NXE, CR4.SMEP and CR4.SMAP (SDM vol. 3A 4.4,
    /// 4.6: a supervisor store or load to a user page faults, EFLAGS.AC
    /// being 0).
    Pae,
    /// No paging (CR0.PG = 0, SDM vol. 3A 2.5: linear = physical): the
    /// window's page-table entry means nothing (no #PF, no accessed or
    /// dirty bits; the records' `pte` is 0). The image enters a CPL 0,
    /// flat 32-bit scenario without IRET (PVM stops at a protected-mode
    /// IRET); a stream with other rings or 16-bit code runs too (IRET,
    /// under QEMU), its ring-3 stubs in ordinary memory.
    Off,
}

impl Paging {
    /// The walker's mode.
    pub fn mode(self) -> PagingMode {
        match self {
            Paging::Bits32 => PagingMode::Bits32,
            Paging::Pae => PagingMode::Pae,
            Paging::Off => PagingMode::Off,
        }
    }
}

/// A small deterministic generator (SplitMix64).
pub(super) struct Rng(pub(super) u64);

impl Rng {
    pub(super) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub(super) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub(super) fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
}

/// An 8-byte descriptor.
pub(crate) fn desc(base: u32, limit: u32, access: u8, flags: u8) -> u64 {
    let (b, l) = (u64::from(base), u64::from(limit));
    (l & 0xffff)
        | (b & 0xff_ffff) << 16
        | u64::from(access) << 40
        | (l >> 16 & 0xf) << 48
        | u64::from(flags & 0xf) << 52
        | (b >> 24) << 56
}

#[cfg(test)]
mod departure_tests;
mod model;
mod scenarios;
pub use error::DiffError;
use model::{Lenient, ltr_as_lldt, modelled_insn};
pub use model::{emulate_scenario, segment_cache};
pub use scenarios::{generate, generate_edges, generate_in, generate_rings};

/// QEMU TCG's departures from the SDM that the harness models, to
/// classify a mismatch (the emulator keeps the SDM's answer). A set of
/// flags: a mismatch is explained when some set makes the emulator agree.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Departures {
    /// QEMU TCG does not check data-segment limits, types or null
    /// segments (SDM vol. 3A 5.3 "Limit checking", 5.4 "Type checking",
    /// 3.4.2: #GP(0) or #SS(0)): as if every data segment (and CS, for
    /// writes) were a 4 GiB read/write one with the same base, a null one
    /// based at 0.
    pub no_segment_checks: bool,
    /// QEMU TCG runs LOCK-prefixed 0F 00 / 0F 01 descriptor-table
    /// instructions (SDM vol. 2A/2B LGDT…STR: "#UD If the LOCK prefix is
    /// used").
    pub ignores_lock: bool,
    /// QEMU TCG's LTR takes a null selector and loads an unusable TR (SDM
    /// vol. 2B LTR: "#GP(0) If the source operand contains a NULL segment
    /// selector").
    pub null_ltr: bool,
    /// QEMU TCG (7.2) reports a reserved-bit #PF with the P bit clear
    /// (error code 0x8 or 0xA under PAE paging; SDM vol. 3A 4.7: "bit 3
    /// of the error code can be set only if bit 0 is also set").
    pub rsvd_without_p: bool,
    /// QEMU TCG (7.2) fetches instruction bytes past CS's limit: an
    /// instruction in 16-bit code that crosses offset 0xFFFF of a 64 KiB
    /// code segment runs, fetched on from offset 0x10000 (SDM vol. 3A 5.3:
    /// the limit applies to every byte fetched, "#GP(0) if the code
    /// segment limit is exceeded"; IP does not wrap to 0).
    pub no_fetch_limit: bool,
}

impl Departures {
    /// Every non-empty set, smallest first.
    pub fn all() -> Vec<Departures> {
        let mut v: Vec<Departures> = (1..32u8)
            .map(|m| Departures {
                no_segment_checks: m & 1 != 0,
                ignores_lock: m & 2 != 0,
                null_ltr: m & 4 != 0,
                rsvd_without_p: m & 8 != 0,
                no_fetch_limit: m & 16 != 0,
            })
            .collect();
        v.sort_by_key(|d| {
            u8::from(d.no_segment_checks)
                + u8::from(d.ignores_lock)
                + u8::from(d.null_ltr)
                + u8::from(d.rsvd_without_p)
                + u8::from(d.no_fetch_limit)
        });
        v
    }

    /// Whether every departure in the set can change `s`'s answer (the
    /// others are not tried: the search stays as short as before them).
    fn apply_to(self, s: &Scenario) -> bool {
        let straddles = s
            .code16
            .is_some_and(|ip| usize::from(ip) + s.insn.len() > 0x1_0000);
        (!self.no_fetch_limit || straddles) && (!self.rsvd_without_p || s.paging == Paging::Pae)
    }

    pub(super) fn flat(self) -> bool {
        self.no_segment_checks
    }

    pub(super) fn no_lock(self) -> bool {
        self.ignores_lock
    }
}

impl std::fmt::Display for Departures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names = Vec::new();
        if self.no_segment_checks {
            names.push("no segment checks");
        }
        if self.ignores_lock {
            names.push("LOCK ignored");
        }
        if self.null_ltr {
            names.push("null LTR");
        }
        if self.rsvd_without_p {
            names.push("RSVD without P");
        }
        if self.no_fetch_limit {
            names.push("no CS limit on fetch");
        }
        write!(f, "QEMU: {}", names.join(" + "))
    }
}

/// One scenario on which QEMU and the emulator disagree.
#[derive(Clone, Debug)]
pub struct Mismatch {
    /// Its index.
    pub index: usize,
    /// The scenario.
    pub scenario: Scenario,
    /// What QEMU's CPU did.
    pub qemu: Record,
    /// What the emulator did.
    pub emulator: Record,
    /// Which fields differ (from the SDM's answer).
    pub fields: Vec<&'static str>,
    /// The QEMU departures that explain it, if some do.
    pub explained_by: Option<Departures>,
    /// Not explained, but QEMU, not checking segments, used memory the
    /// harness does not hold (so its result can't be predicted): paging
    /// off only (a 16-bit address through a null segment reaches the low
    /// 64 KiB of RAM); the paged images map those addresses to memory the
    /// harness holds, so there every mismatch is explained or not.
    pub unverifiable: bool,
}

/// The fields on which two records differ (EAX only after a success: a
/// fault's EAX is the handler's).
pub fn differences(q: &Record, e: &Record) -> Vec<&'static str> {
    let mut d = Vec::new();
    if (q.vector, q.error) != (e.vector, e.error) {
        d.push("exception");
    }
    if q.vector.is_none() && e.vector.is_none() && q.eax != e.eax {
        d.push("eax");
    }
    if q.vector == Some(14) && e.vector == Some(14) && q.cr2 != e.cr2 {
        d.push("cr2");
    }
    if let (Some(a), Some(b)) = (q.eip, e.eip)
        && a != b
    {
        d.push("eip");
    }
    for (name, same) in [
        ("pte", q.pte == e.pte),
        ("gdtr", q.gdtr == e.gdtr),
        ("idtr", q.idtr == e.idtr),
        ("tr", q.tr == e.tr),
        ("ldtr", q.ldtr == e.ldtr),
        ("memory", q.window == e.window),
        ("gdt", q.gdt == e.gdt),
    ] {
        if !same {
            d.push(name);
        }
    }
    d
}

/// What a comparison found (`M`: one mismatch, [`Mismatch`] here,
/// [`long::LongMismatch`] in long mode).
#[derive(Clone, Debug)]
pub struct Report<M = Mismatch> {
    /// Scenarios on which QEMU and the emulator agree exactly.
    pub agreed: usize,
    /// The others.
    pub mismatches: Vec<M>,
    /// The emulator's (the SDM's) outcomes, by instruction and exception:
    /// what the scenarios covered.
    pub outcomes: BTreeMap<String, usize>,
}

impl<M> Default for Report<M> {
    fn default() -> Self {
        Report {
            agreed: 0,
            mismatches: Vec::new(),
            outcomes: BTreeMap::new(),
        }
    }
}

/// Generate `n` scenarios from `seed`, run them under QEMU and through the
/// emulator, and compare: in `jobs` slices, each its own QEMU process and
/// comparison on its own thread (each scenario stands alone: the guest
/// resets what it changed, so the slicing does not change the answers).
pub fn compare(
    n: usize,
    seed: u64,
    paging: Paging,
    jobs: usize,
    timeout: Duration,
) -> Result<Report, DiffError> {
    compare_all(&generate_in(n, seed, paging), jobs, timeout)
}

/// [`compare`] for [`generate_rings`]' scenarios: every CPL, UMIP on and
/// off, EFLAGS.AC, 16- and 32-bit code.
pub fn compare_rings(
    n: usize,
    seed: u64,
    paging: Paging,
    jobs: usize,
    timeout: Duration,
) -> Result<Report, DiffError> {
    compare_all(&generate_rings(n, seed, paging), jobs, timeout)
}

/// [`compare`] for [`generate_edges`]' scenarios: [`compare_rings`]'
/// and EFLAGS.TF (the resumed EIP), 16-bit code ending at 0xFFFF, #SS,
/// conforming code.
pub fn compare_edges(
    n: usize,
    seed: u64,
    paging: Paging,
    jobs: usize,
    timeout: Duration,
) -> Result<Report, DiffError> {
    compare_all(&generate_edges(n, seed, paging), jobs, timeout)
}

fn compare_all(all: &[Scenario], jobs: usize, timeout: Duration) -> Result<Report, DiffError> {
    compare_in_slices(
        all,
        jobs,
        |part| compare_scenarios(part, timeout),
        |m| &mut m.index,
    )
}

/// Compare `all` in `jobs` slices, each its own QEMU process and
/// comparison (`f`) on its own thread (each scenario stands alone: the
/// guest resets what it changed, so the slicing does not change the
/// answers), and merge the reports, each mismatch's index (`index`) moved
/// to its place in `all`.
pub(super) fn compare_in_slices<S: Sync, M: Send>(
    all: &[S],
    jobs: usize,
    f: impl Fn(&[S]) -> Result<Report<M>, DiffError> + Sync,
    index: impl Fn(&mut M) -> &mut usize,
) -> Result<Report<M>, DiffError> {
    let per = all.len().div_ceil(jobs.max(1)).max(1);
    let f = &f;
    let parts: Vec<Result<Report<M>, DiffError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = all
            .chunks(per)
            .map(|part| scope.spawn(move || f(part)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|p| {
                    Err(DiffError::ThreadPanicked(crate::kvm::panic_message(
                        p.as_ref(),
                    )))
                })
            })
            .collect()
    });
    let mut report = Report::default();
    for (k, part) in parts.into_iter().enumerate() {
        let part = part?;
        report.agreed += part.agreed;
        for mut m in part.mismatches {
            *index(&mut m) += k * per;
            report.mismatches.push(m);
        }
        for (key, count) in part.outcomes {
            *report.outcomes.entry(key).or_default() += count;
        }
    }
    Ok(report)
}

/// Run and compare the given scenarios (a slice of [`generate`]'s, to
/// replay one).
pub fn compare_scenarios(scenarios: &[Scenario], timeout: Duration) -> Result<Report, DiffError> {
    let (records, at) = run_qemu(scenarios, timeout)?;
    Ok(compare_records(scenarios, &records, &at))
}

/// Compare the records a guest wrote for `scenarios` (each instruction at
/// `at[i]`) with the emulator's, field by field, and look for the QEMU
/// departures that explain each mismatch ([`kernel32`]'s records too).
pub fn compare_records(scenarios: &[Scenario], records: &[u8], at: &[u32]) -> Report {
    let mut report = Report::default();
    let out = &mut report.mismatches;
    let each = scenarios.iter().zip(records.chunks_exact(RECORD)).zip(at);
    for (i, ((s, rec), &at)) in each.enumerate() {
        let (mut q, tr_before) = Record::parse(rec);
        if s.edges.tf && q.vector == Some(1) {
            // The single-step trap: the instruction completed.
            q.vector = None;
        }
        let (e, o) = emulate_scenario(s, at, tr_before, Departures::default());
        *report.outcomes.entry(outcome_key(&o)).or_default() += 1;
        let fields = differences(&q, &e);
        if fields.is_empty() {
            report.agreed += 1;
        }
        if !fields.is_empty() {
            let (explained_by, unverifiable) = explain(s, at, tr_before, &q);
            out.push(Mismatch {
                index: i,
                scenario: s.clone(),
                qemu: q,
                emulator: e,
                fields,
                explained_by,
                // Paged images hold every byte QEMU can reach (the low
                // aliases, [`image::pte`]): there a departure run that left
                // the known memory is no excuse.
                unverifiable: explained_by.is_none() && unverifiable && s.paging == Paging::Off,
            });
        }
    }
    report
}

/// The smallest set of QEMU departures that makes the emulator's record
/// for `s` (at `rip`, TR `tr_before`) equal `q`, if one does; and whether
/// a departure run used memory the harness does not hold (QEMU read or
/// wrote RAM the harness does not hold: only the fault is certain).
fn explain(s: &Scenario, rip: u32, tr_before: u16, q: &Record) -> (Option<Departures>, bool) {
    let mut unverifiable = false;
    let explained_by = Departures::all()
        .into_iter()
        .filter(|d| d.apply_to(s))
        .find(|&d| {
            let (r, _) = emulate_scenario(s, rip, tr_before, d);
            unverifiable |= r.outside;
            differences(q, &r).is_empty()
        });
    (explained_by, unverifiable)
}

/// An outcome as [`Report::outcomes`] (and `kvm::diff`'s report) counts
/// it: "instruction outcome".
pub(crate) fn outcome_key(o: &Outcome) -> String {
    match o {
        Outcome::Emulated { insn, .. } => format!("{insn} ok"),
        Outcome::Inject { insn, exception } => {
            let e = match exception {
                Exception::Gp(0) => "#GP(0)".to_string(),
                Exception::Gp(_) => "#GP(sel)".to_string(),
                Exception::Np(_) => "#NP(sel)".to_string(),
                Exception::Pf(pf) => format!("#PF({:#x})", pf.error_code),
                other => other.to_string(),
            };
            format!("{insn} {e}")
        }
        // A fetch #PF by its error code, not its address.
        Outcome::NotEmulated(super::NotEmulated::Fetch(Exception::Pf(pf))) => {
            format!("not emulated: fetch #PF({:#x})", pf.error_code)
        }
        Outcome::NotEmulated(why) => format!("not emulated: {why}"),
    }
}

/// Write a guest image for `n` scenarios from `seed` (for running it by
/// hand: `qemu-system-x86_64 -kernel <path>` with [`run_qemu`]'s other
/// arguments; the records are in the RAM file at [`image::RESULTS`]).
pub fn write_image(path: &Path, n: usize, seed: u64) -> std::io::Result<()> {
    let (img, _) =
        image::build(&generate(n, seed)).map_err(|e| std::io::Error::other(e.to_string()))?;
    std::fs::write(path, img)
}

/// The exception a vector names, for messages.
pub fn vector_name(v: Option<u8>) -> String {
    match v {
        None => "none".into(),
        Some(6) => Exception::Ud.to_string(),
        Some(v) => format!("vector {v}"),
    }
}
