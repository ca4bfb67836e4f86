//! The emulator's side of a scenario: the guest's memory, page tables
//! and vCPU as [`super::emulate`] sees them (the same state the guest
//! image sets up under QEMU), run once per QEMU departure model.

use std::cell::Cell;

use pvops::{DescriptorTablePointer, Selector};

use super::super::mock::{MockCpu, MockPhys};
use super::super::paged::Paged;
use super::super::segment::SegmentCache;
use super::super::walk::{PhysicalMemory, Walker};
use super::super::{
    Access, Exception, GuestMemory, NotEmulated, Outcome, PageFault, Segment, emulate,
};
use super::{Departures, Paging, Record, Scenario, image};

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
    // The runtime entries past the scenario slots: TSS (busy: TR holds
    // it), the scenario's code and stack segments.
    for (sel, w) in [
        (image::TSS_SEL, image::tss_descriptor(true)),
        (image::CODE_SEL, image::code_descriptor(s, rip)),
        (image::STACK_SEL, image::stack_descriptor(s)),
    ] {
        phys.put(u64::from(image::GDT + u32::from(sel)), &w.to_le_bytes());
    }
    // The page's other bytes are zeros (the mock holds whole pages), as in
    // the guest, where only the low aliases reach them ([`image::pte`]).
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
    let low = (0..image::LOW_ALIAS).step_by(0x1000);
    // Known memory for [`Lenient`], which judges a fault's (linear)
    // address by whether the harness holds it: the low aliases are known
    // (a fault there, a store or a user access, is the CPU's answer).
    // Their physical pages are never reached: the aliases map the window.
    if s.paging != Paging::Off {
        for page in low.clone() {
            phys.put(u64::from(page), &[0]); // a whole page of zeros
        }
    }
    let pages = [rip, rip.wrapping_add(15), image::GDT, image::IDT]
        .into_iter()
        .chain(low);
    let win = u64::from(image::win_pte(s.paging));
    // A ring-3 stub lies in the user pages, which start at a 4 MiB
    // boundary at or below it; the emulator reaches no other large page.
    let user_from = if s.cpl == 3 {
        rip & !0x3f_ffff
    } else {
        image::RESULTS
    };
    match s.paging {
        Paging::Off => {}
        Paging::Bits32 => {
            phys.put_u32(u64::from(image::PD), image::PT | 0x27);
            for k in 1..image::MAPPED_4M {
                let e = image::pde(s.paging, k, user_from);
                phys.put_u32(u64::from(image::PD + 4 * k), e);
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
                let e = u64::from(image::pde(s.paging, k, user_from));
                phys.put(pd + 8 * u64::from(k), &e.to_le_bytes());
            }
            for page in pages.into_iter().filter(|p| p >> 21 == 0) {
                let at = image::PT + (page >> 12) * 8;
                let xd = if image::xd_page(s, rip) == Some(page & !0xfff) {
                    1 << 63
                } else {
                    0
                };
                let e = u64::from(image::pte(page) | 0x20) | xd;
                phys.put(u64::from(at), &e.to_le_bytes());
            }
            phys.put(win, &s.win_pte.to_le_bytes());
        }
    }
}

/// The vCPU for `s` (its instruction at linear `rip`): protected mode at
/// its CPL, UMIP and code segment (32-bit flat, or 16-bit with the
/// instruction at its offset), its registers and segments (flattened
/// under [`Departures::no_segment_checks`]), GDTR, IDTR, TR.
fn cpu_for(s: &Scenario, rip: u32, tr_before: u16, model: Departures) -> MockCpu {
    let mut cpu = MockCpu::protected32();
    let (_, eip) = image::entry_point(s, rip);
    cpu.rip = u64::from(eip);
    cpu.cpl = s.cpl;
    cpu.umip = s.umip;
    let mut cs = SegmentCache::from_descriptor(image::code_descriptor(s, rip));
    if model.no_fetch_limit {
        (cs.limit, cs.g) = (0xf_ffff, true);
    }
    *cpu.seg_mut(Segment::Cs) = cs;
    let ss = SegmentCache::from_descriptor(image::stack_descriptor(s));
    // A scenario's own stack segment is unchecked like the others under
    // the departure (flat, same base).
    *cpu.seg_mut(Segment::Ss) = if model.flat() && s.edges.stack.is_some() {
        SegmentCache {
            base: ss.base,
            ..SegmentCache::from_descriptor(0x00cf_9300_0000_ffff)
        }
    } else {
        ss
    };
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
pub fn segment_cache(sel: u16, slots: &[u64; 13], flat: bool) -> SegmentCache {
    // A null selector, or (in a hand-built scenario) one outside the
    // scenario's slots, which the harness never loads: unusable.
    let slot = usize::from(sel >> 3)
        .checked_sub(3)
        .and_then(|k| slots.get(k));
    let c = match slot {
        Some(&d) if sel & 0xfffc != 0 => SegmentCache::from_descriptor(d),
        _ => SegmentCache {
            unusable: true,
            ..SegmentCache::default()
        },
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
    walker.ac = s.ac;
    let mem = Paged {
        phys: &phys,
        walker,
        cpl: s.cpl,
    };
    let mut cpu = cpu_for(s, rip, tr_before, model);
    let lenient = Lenient(&mem, Cell::new(false), &phys);
    let o = if model.flat() {
        emulate(&mut cpu, &lenient)
    } else {
        emulate(&mut cpu, &mem)
    };
    // The exception the CPU raises: the emulator's, or its instruction
    // fetch's (which it leaves to the CPU's original fault).
    let raised = match &o {
        Outcome::Inject { exception, .. } => Some(*exception),
        Outcome::NotEmulated(NotEmulated::Fetch(e)) => Some(*e),
        _ => None,
    };
    let (vector, error) = match (&o, raised) {
        (_, Some(Exception::Pf(pf))) if model.rsvd_without_p && pf.error_code & 8 != 0 => {
            (Some(14), pf.error_code & !1)
        }
        (_, Some(e)) => (Some(e.vector()), e.error_code().unwrap_or(0)),
        (Outcome::Emulated { .. }, None) => (None, 0),
        // Not one of ours: no CPU answer to compare with.
        _ => (Some(0xff), 0),
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
        cr2: match raised {
            Some(Exception::Pf(pf)) => pf.addr as u32,
            _ => 0,
        },
        pte: match s.paging {
            Paging::Off => 0,
            Paging::Bits32 => u64::from(
                phys.read_u32(u64::from(image::win_pte(s.paging)))
                    .unwrap_or(0),
            ),
            Paging::Pae => phys
                .read_u64(u64::from(image::win_pte(s.paging)))
                .unwrap_or(0),
        },
        eip: Some(match (&o, raised) {
            // The bytes a departure dropped (a LOCK prefix) were QEMU's too.
            (Outcome::Emulated { len, .. }, None) => {
                let dropped = s.insn.len() - modelled_insn(&s.insn, model).len();
                super::super::next_rip(&cpu, *len + dropped) as u32
            }
            _ => cpu.rip as u32,
        }),
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
