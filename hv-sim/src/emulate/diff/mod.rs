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
//! all under QEMU TCG (legacy protected mode, CPL 0, paging off), catching
//! every exception, and writes one record per scenario: the vector and
//! error code, EAX, GDTR, IDTR, TR, LDTR, the data window and the GDT's
//! scenario slots. The same scenario is run through [`super::emulate`] on a
//! [`MockCpu`] over [`MockPhys`] and the page walker, holding the same
//! state, and the two are compared field by field.
//!
//! The guest runs with CR0.WP under 32-bit paging or (a second image)
//! PAE paging with EFER.NXE, SMEP and SMAP ([`Paging`]), the window's
//! page read/write, read-only, not present or user per scenario, and
//! under PAE also execute-disable or with a reserved bit (an address bit
//! at or above MAXPHYADDR, or bit 52): #PF with its error code and CR2, and the
//! accessed and dirty bits, are compared too; the emulator walks the same
//! tables ([`super::walk`], [`super::paged`]). The PAE scenarios found a
//! walker bug (bits 62:52 of a PAE entry are reserved, SDM vol. 3A tables
//! 4-9 to 4-11; fixed, with a regression test in `walk`) and a fourth
//! QEMU departure ([`Departures::rsvd_without_p`]).
//!
//! The guest keeps the scenarios apart: each one's state is reset before
//! it runs, its code is read-only (a store QEMU lets through an unchecked
//! segment faults instead of rewriting a later scenario: scenario 30,002
//! of seed [`SEED`] once ran corrupted code that way), and every operand
//! is aimed at the window, where QEMU puts it too (a unit test checks all
//! 100,000). [`compare`] splits a run over several QEMU processes.
//!
//! 4-level paging, 64-bit mode and compatibility mode (16- and 32-bit
//! code, 16-byte system descriptors, SMAP with EFLAGS.AC either way) are
//! [`long`]'s: a second guest that reuses this one's generator, encoder,
//! QEMU run and departures. Not covered yet here: CPL > 0 and UMIP, SMAP
//! with EFLAGS.AC set, 16-bit code segments, #SS (SS stays flat: the
//! guest's exception delivery needs it), reserved bits in the PDPTE and
//! PDE (only the window's PTE varies), XD on instruction fetches.

mod error;
pub mod image;
pub mod long;
mod run;
pub use run::run_qemu;

use std::cell::Cell;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use pvops::{DescriptorTablePointer, Selector};

use super::mock::{MockCpu, MockPhys};
use super::paged::Paged;
use super::segment::SegmentCache;
use super::walk::{PagingMode, PhysicalMemory, Walker};
use super::{Access, Exception, GuestMemory, Outcome, PageFault, Segment, emulate};

/// Bytes per record.
pub const RECORD: usize = 216;

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
    /// Emulator only, under [`Departures::no_segment_checks`]: the operand
    /// fell outside the memory the harness knows (QEMU's read RAM the
    /// harness does not compare). Not compared.
    pub outside: bool,
}

impl Record {
    fn parse(b: &[u8]) -> (Record, u16) {
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
}

impl Paging {
    /// The walker's mode.
    pub fn mode(self) -> PagingMode {
        match self {
            Paging::Bits32 => PagingMode::Bits32,
            Paging::Pae => PagingMode::Pae,
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
pub(super) fn desc(base: u32, limit: u32, access: u8, flags: u8) -> u64 {
    let (b, l) = (u64::from(base), u64::from(limit));
    (l & 0xffff)
        | (b & 0xff_ffff) << 16
        | u64::from(access) << 40
        | (l >> 16 & 0xf) << 48
        | u64::from(flags & 0xf) << 52
        | (b >> 24) << 56
}

mod scenarios;
pub use error::DiffError;
pub use scenarios::{generate, generate_in};

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
}

impl Departures {
    /// Every non-empty set, smallest first.
    pub fn all() -> Vec<Departures> {
        let mut v: Vec<Departures> = (1..16u8)
            .map(|m| Departures {
                no_segment_checks: m & 1 != 0,
                ignores_lock: m & 2 != 0,
                null_ltr: m & 4 != 0,
                rsvd_without_p: m & 8 != 0,
            })
            .collect();
        v.sort_by_key(|d| {
            u8::from(d.no_segment_checks)
                + u8::from(d.ignores_lock)
                + u8::from(d.null_ltr)
                + u8::from(d.rsvd_without_p)
        });
        v
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
        write!(f, "QEMU: {}", names.join(" + "))
    }
}

/// The guest's physical memory for `s` as the emulator needs it: the
/// paging (the window's entry as the scenario sets it, the first 4 MiB's
/// other pages identity, the directory's first entry already accessed:
/// the guest ran through it), the instruction (as `model` sees it), the
/// GDT and the window.
fn guest_memory(s: &Scenario, rip: u32, model: Departures) -> MockPhys {
    let phys = MockPhys::default();
    let insn = modelled_insn(&s.insn, model);
    paging_for(&phys, s, rip);
    phys.put(u64::from(rip), &insn);
    phys.put(
        u64::from(image::GDT) + 8,
        &0x00cf_9b00_0000_ffffu64.to_le_bytes(),
    );
    phys.put(
        u64::from(image::GDT) + 16,
        &0x00cf_9300_0000_ffffu64.to_le_bytes(),
    );
    for (k, w) in s.gdt_slots.iter().enumerate() {
        phys.put(
            u64::from(image::GDT) + 0x18 + 8 * k as u64,
            &w.to_le_bytes(),
        );
    }
    phys.put(u64::from(image::WIN), &s.window);
    phys
}

/// The instruction as a QEMU departure sees it: no LOCK prefix
/// ([`Departures::ignores_lock`]); a CS override as DS
/// ([`Departures::no_segment_checks`]: CS is flat, base 0, unchecked).
pub(super) fn modelled_insn(insn: &[u8], model: Departures) -> Vec<u8> {
    let opcode = insn.iter().position(|&b| b == 0x0f).unwrap_or(0);
    let mut out = Vec::new();
    for (k, &b) in insn.iter().enumerate() {
        match b {
            0xf0 if k < opcode && model.no_lock() => {}
            0x2e if k < opcode && model.flat() => out.push(0x3e),
            _ => out.push(b),
        }
    }
    out
}

/// An LTR instruction's bytes made LLDT (ModRM.reg 3 → 2), or `None` if
/// `insn` is not an LTR.
pub(super) fn ltr_as_lldt(insn: &[u8]) -> Option<Vec<u8>> {
    let opcode = insn.iter().position(|&b| b == 0x0f)?;
    let modrm = *insn.get(opcode + 2)?;
    if insn.get(opcode + 1) != Some(&0) || modrm >> 3 & 7 != 3 {
        return None;
    }
    let mut v = insn.to_vec();
    v[opcode + 2] = modrm & !0x38 | 2 << 3;
    Some(v)
}

/// The guest's page tables as the emulator needs them (the window's entry
/// as the scenario sets it, the directory's first entry already accessed:
/// the guest ran through it).
fn paging_for(phys: &MockPhys, s: &Scenario, rip: u32) {
    let pages = [rip, rip.wrapping_add(15), image::GDT, image::IDT];
    let win = u64::from(image::win_pte(s.paging));
    match s.paging {
        Paging::Bits32 => {
            phys.put_u32(u64::from(image::PD), image::PT | 0x27);
            for k in 1..image::MAPPED_4M {
                phys.put_u32(u64::from(image::PD + 4 * k), image::pde(s.paging, k));
            }
            for page in pages.into_iter().filter(|p| p >> 22 == 0) {
                let at = image::PT + (page >> 12) * 4;
                phys.put_u32(u64::from(at), image::pte(page) | 0x20);
            }
            phys.put_u32(win, s.win_pte as u32);
        }
        Paging::Pae => {
            phys.put(
                u64::from(image::PD),
                &u64::from(image::PAE_PD | 1).to_le_bytes(),
            );
            let pd = u64::from(image::PAE_PD);
            phys.put(pd, &u64::from(image::PT | 0x27).to_le_bytes());
            for k in 1..2 * image::MAPPED_4M {
                let e = u64::from(image::pde(s.paging, k));
                phys.put(pd + 8 * u64::from(k), &e.to_le_bytes());
            }
            for page in pages.into_iter().filter(|p| p >> 21 == 0) {
                let at = image::PT + (page >> 12) * 8;
                let e = u64::from(image::pte(page) | 0x20);
                phys.put(u64::from(at), &e.to_le_bytes());
            }
            phys.put(win, &s.win_pte.to_le_bytes());
        }
    }
}

/// The vCPU for `s`: 32-bit protected mode, its registers and segments
/// (flattened under [`Departures::no_segment_checks`]), GDTR, IDTR, TR.
fn cpu_for(s: &Scenario, rip: u32, tr_before: u16, model: Departures) -> MockCpu {
    let mut cpu = MockCpu::protected32();
    cpu.rip = u64::from(rip);
    for (r, v) in s.regs.iter().enumerate() {
        cpu.gprs[r] = u64::from(*v);
    }
    for (seg, sel) in [Segment::Es, Segment::Ds, Segment::Fs, Segment::Gs]
        .into_iter()
        .zip(s.sels)
    {
        let c = segment_cache(sel, &s.gdt_slots, model.flat());
        *cpu.seg_mut(seg) = c;
        match seg {
            Segment::Fs => cpu.fs_base = c.base,
            Segment::Gs => cpu.gs_base = c.base,
            _ => {}
        }
    }
    cpu.dt.gdtr = DescriptorTablePointer {
        limit: s.test_gdtr.0,
        base: u64::from(s.test_gdtr.1),
    };
    cpu.dt.idtr = DescriptorTablePointer {
        limit: image::IDT_LIMIT,
        base: u64::from(image::IDT),
    };
    cpu.dt.tr = Selector(tr_before);
    cpu
}

/// The hidden part `sel` loads from the GDT's scenario slots (0x18..):
/// unusable for a null selector; under
/// [`Departures::no_segment_checks`] a flat read/write segment with the
/// same base (QEMU loads a null selector with base 0).
pub(super) fn segment_cache(sel: u16, slots: &[u64; 13], flat: bool) -> SegmentCache {
    let c = if sel & 0xfffc == 0 {
        SegmentCache {
            unusable: true,
            ..SegmentCache::default()
        }
    } else {
        SegmentCache::from_descriptor(slots[usize::from(sel >> 3) - 3])
    };
    if flat {
        SegmentCache {
            base: if c.unusable { 0 } else { c.base },
            ..SegmentCache::from_descriptor(0x00cf_9300_0000_ffff)
        }
    } else {
        c
    }
}

/// The emulator's record for `s` (its instruction at `rip`), with TR
/// `tr_before` at the start; `model` applies a QEMU departure.
pub fn emulate_scenario(
    s: &Scenario,
    rip: u32,
    tr_before: u16,
    model: Departures,
) -> (Record, Outcome) {
    if model.null_ltr
        && let Some(r) = null_ltr(s, rip, tr_before, model)
    {
        return r;
    }
    let phys = guest_memory(s, rip, model);
    let mut walker = Walker::new(s.paging.mode(), u64::from(image::PD));
    let pae = s.paging == Paging::Pae;
    (walker.nxe, walker.smep, walker.smap, walker.maxphyaddr) = (pae, pae, pae, 40);
    let mem = Paged {
        phys: &phys,
        walker,
        cpl: 0,
    };
    let mut cpu = cpu_for(s, rip, tr_before, model);
    let lenient = Lenient(&mem, Cell::new(false), &phys);
    let o = if model.flat() {
        emulate(&mut cpu, &lenient)
    } else {
        emulate(&mut cpu, &mem)
    };
    let (vector, error) = match &o {
        Outcome::Inject {
            exception: Exception::Pf(pf),
            ..
        } if model.rsvd_without_p && pf.error_code & 8 != 0 => (Some(14), pf.error_code & !1),
        Outcome::Inject { exception, .. } => (
            Some(exception.vector()),
            exception.error_code().unwrap_or(0),
        ),
        Outcome::Emulated { .. } => (None, 0),
        // Not one of ours: no CPU answer to compare with.
        Outcome::NotEmulated(_) => (Some(0xff), 0),
    };
    let rec = Record {
        vector,
        error,
        eax: cpu.gprs[0] as u32,
        gdtr: (cpu.dt.gdtr.limit, cpu.dt.gdtr.base as u32),
        idtr: (cpu.dt.idtr.limit, cpu.dt.idtr.base as u32),
        tr: cpu.dt.tr.bits(),
        ldtr: cpu.dt.ldtr.bits(),
        window: peek(&phys, image::WIN, 64),
        gdt: peek(&phys, image::GDT + 0x18, 104),
        cr2: match &o {
            Outcome::Inject {
                exception: Exception::Pf(pf),
                ..
            } => pf.addr as u32,
            _ => 0,
        },
        pte: match s.paging {
            Paging::Bits32 => u64::from(
                phys.read_u32(u64::from(image::win_pte(s.paging)))
                    .unwrap_or(0),
            ),
            Paging::Pae => phys
                .read_u64(u64::from(image::win_pte(s.paging)))
                .unwrap_or(0),
        },
        outside: lenient.1.get(),
    };
    (rec, o)
}

/// QEMU's LTR of a null selector: LLDT's null path, into TR. `None` where
/// the instruction is not an LTR that the SDM faults for a null selector.
fn null_ltr(
    s: &Scenario,
    rip: u32,
    tr_before: u16,
    model: Departures,
) -> Option<(Record, Outcome)> {
    let as_lldt = Scenario {
        insn: ltr_as_lldt(&s.insn)?,
        ..s.clone()
    };
    let (sdm, _) = emulate_scenario(
        s,
        rip,
        tr_before,
        Departures {
            null_ltr: false,
            ..model
        },
    );
    if (sdm.vector, sdm.error) != (Some(13), 0) {
        return None;
    }
    let (mut r, o) = emulate_scenario(
        &as_lldt,
        rip,
        tr_before,
        Departures {
            null_ltr: false,
            ..model
        },
    );
    if r.vector.is_some() || r.ldtr & 0xfffc != 0 {
        return None;
    }
    r.tr = r.ldtr;
    r.ldtr = 0;
    Some((r, o))
}

fn peek(phys: &MockPhys, at: u32, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    let _ = phys.read_bytes(u64::from(at), &mut b);
    b
}

/// The memory as QEMU's guest sees it: where the harness holds no
/// physical memory, reads give zeros and writes go nowhere (RAM not
/// compared, or no RAM) instead of the mock's failure; a real page fault
/// (the window's entry) stands. Used only with a departure that sends
/// accesses outside the checked segments.
pub(super) struct Lenient<'a, M: GuestMemory>(
    pub(super) &'a M,
    pub(super) Cell<bool>,
    pub(super) &'a MockPhys,
);

impl<M: GuestMemory> Lenient<'_, M> {
    fn known(&self, addr: u64) -> bool {
        let mut b = [0u8];
        addr >> 12 == u64::from(image::WIN >> 12) || self.2.read_bytes(addr, &mut b).is_some()
    }
}

impl<M: GuestMemory> GuestMemory for Lenient<'_, M> {
    fn read(&self, addr: u64, buf: &mut [u8], access: Access) -> Result<(), PageFault> {
        match self.0.read(addr, buf, access) {
            Err(pf) if !self.known(pf.addr) => {
                buf.fill(0);
                self.1.set(true);
                Ok(())
            }
            r => r,
        }
    }

    fn write(&self, addr: u64, data: &[u8], access: Access) -> Result<(), PageFault> {
        match self.0.write(addr, data, access) {
            Err(pf) if !self.known(pf.addr) => {
                self.1.set(true);
                Ok(())
            }
            r => r,
        }
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
    /// harness does not hold (so its result can't be predicted).
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
    let all = generate_in(n, seed, paging);
    compare_in_slices(
        &all,
        jobs,
        |part| compare_scenarios(part, timeout),
        |m| &mut m.index,
    )
}

/// Run and compare the given scenarios (a slice of [`generate`]'s, to
/// replay one).
pub fn compare_scenarios(scenarios: &[Scenario], timeout: Duration) -> Result<Report, DiffError> {
    let (records, at) = run_qemu(scenarios, timeout)?;
    let mut report = Report::default();
    let out = &mut report.mismatches;
    for (i, s) in scenarios.iter().enumerate() {
        let (q, tr_before) = Record::parse(&records[i * RECORD..(i + 1) * RECORD]);
        let (e, o) = emulate_scenario(s, at[i], tr_before, Departures::default());
        *report.outcomes.entry(outcome_key(&o)).or_default() += 1;
        let fields = differences(&q, &e);
        if fields.is_empty() {
            report.agreed += 1;
        }
        if !fields.is_empty() {
            let mut unverifiable = false;
            let explained_by = Departures::all().into_iter().find(|&d| {
                let (r, _) = emulate_scenario(s, at[i], tr_before, d);
                // An operand outside the known memory: QEMU read or wrote
                // RAM the harness does not hold; only the fault is certain.
                unverifiable |= r.outside;
                differences(&q, &r).is_empty()
            });
            out.push(Mismatch {
                index: i,
                scenario: s.clone(),
                qemu: q,
                emulator: e,
                fields,
                explained_by,
                unverifiable: explained_by.is_none() && unverifiable,
            });
        }
    }
    Ok(report)
}

/// An outcome as [`Report::outcomes`] counts it.
pub(super) fn outcome_key(o: &Outcome) -> String {
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
