//! The emulator's side of the long-mode differential: the guest's state
//! for a scenario as a [`MockCpu`] over [`MockPhys`] through the 4-level
//! walker, and QEMU TCG's departures from the SDM, each modelled so a
//! mismatch counts as explained only when a set of them reproduces
//! QEMU's record exactly.

use std::cell::Cell;

use iced_x86::{Decoder, DecoderOptions, OpKind, Register};
use pvops::{DescriptorTablePointer, Selector};

use super::super::super::mock::{MockCpu, MockPhys};
use super::super::super::paged::Paged;
use super::super::super::walk::{PagingMode, PhysicalMemory, Walker};
use super::super::super::{
    Access, Exception, GuestMemory, Insn, Outcome, PageFault, Segment, emulate,
};
use super::super::{Departures, Lenient};
use super::{CodeMode, LongPaging, LongRecord, LongScenario, image};

/// QEMU TCG's departures from the SDM in IA-32e mode: the 32-bit
/// harness's [`Departures`] (no segment checks matters in compatibility
/// mode only) and those found here. A set of flags, as [`Departures`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LongDepartures {
    /// The 32-bit harness's.
    pub qemu: Departures,
    /// QEMU TCG (7.2) adds the ES or DS base to an operand with an ES or
    /// DS override in 64-bit mode (SDM vol. 3A 3.2.4 "Segmentation in
    /// IA-32e Mode": in 64-bit mode the processor treats the segment bases
    /// of CS, DS, ES and SS as zero).
    pub legacy_override_base: bool,
    /// QEMU TCG's LGDT/LIDT with a 0x66 prefix in 64-bit mode loads a
    /// 24-bit base, as with a 16-bit operand size outside 64-bit mode (SDM
    /// vol. 2A LGDT/LIDT: "In 64-bit mode, the instruction's operand size
    /// is fixed at 8+2 bytes").
    pub o16_dt_base: bool,
    /// QEMU TCG's LGDT/LIDT in 64-bit mode loads a non-canonical base,
    /// where hv-sim raises #GP(0) as KVM's x86 emulator (`em_lgdt_lidt`)
    /// does. The SDM's LGDT/LIDT page (vol. 2A, "64-Bit Mode Exceptions")
    /// lists only a non-canonical operand address: the one departure whose
    /// SDM answer is in doubt.
    pub noncanonical_dt_base: bool,
    /// QEMU TCG raises #GP(0), never #SS(0), for a non-canonical operand
    /// through SS (SDM vol. 2A LGDT … 64-Bit Mode Exceptions: "#SS(0) If a
    /// memory address referencing the SS segment is in a non-canonical
    /// form").
    pub gp_not_ss: bool,
    /// QEMU TCG accesses an operand piece by piece and page by page: the
    /// limit of LGDT/LIDT/SGDT/SIDT's pseudo-descriptor before its base,
    /// each piece's pages in order (A, and for a store D, set in a page's
    /// entry before the next page faults; a non-canonical second page
    /// #GP(0) after the first is translated), a store written once all its
    /// pages are. The SDM checks the operand as a whole first: vol. 2A
    /// "#GP(0) If the memory address is in a non-canonical form" before
    /// any page is used, and no store of a faulting instruction is made
    /// (vol. 3A 6.5: faults are reported before the instruction, with
    /// the state as it was).
    pub page_by_page: bool,
    /// QEMU TCG checks only bits 11:8 of a 16-byte TSS descriptor's upper
    /// type field (LTR), and none of an LDT descriptor's (LLDT): SDM vol.
    /// 3A figure 8-4 and LTR/LLDT "#GP(selector)" in IA-32e mode: bits
    /// 12:8 must be 0.
    pub sys_upper_unchecked: bool,
    /// QEMU TCG's LTR/LLDT in IA-32e mode load a non-canonical 64-bit
    /// base, where hv-sim's [`system`](crate::emulate::system) check
    /// raises #GP(selector) (SDM vol. 3A 8.2.3, the 16-byte descriptor's
    /// base is a 64-bit linear address).
    pub sys_base_unchecked: bool,
    /// QEMU TCG's LTR in IA-32e mode takes an available 16-bit TSS, type
    /// 1, and makes it busy, type 3 (SDM vol. 3A table 3-2: in IA-32e mode
    /// both types are reserved; vol. 2B LTR: #GP(selector) for a
    /// descriptor that is not an available TSS).
    pub tss16_in_ia32e: bool,
}

/// How many flags [`LongDepartures`] has.
pub(super) const FLAGS: u32 = 12;

impl LongDepartures {
    /// The set whose flags are `m`'s bits (bit order as in [`Self::all`]'s masks).
    pub(super) fn from_bits(m: u32) -> LongDepartures {
        let bit = |k: u32| m & 1 << k != 0;
        LongDepartures {
            qemu: Departures {
                no_segment_checks: bit(0),
                ignores_lock: bit(1),
                null_ltr: bit(2),
                rsvd_without_p: bit(3),
                // The long guest's code segments are flat: no fetch limit.
                no_fetch_limit: false,
            },
            legacy_override_base: bit(4),
            o16_dt_base: bit(5),
            noncanonical_dt_base: bit(6),
            gp_not_ss: bit(7),
            page_by_page: bit(8),
            sys_upper_unchecked: bit(9),
            sys_base_unchecked: bit(10),
            tss16_in_ia32e: bit(11),
        }
    }

    /// Every non-empty set that can matter in `mode`, smallest first.
    pub fn all(mode: CodeMode) -> Vec<LongDepartures> {
        // No segment checks: compatibility mode only; the 64-bit-mode
        // operand departures: 64-bit mode only.
        let never = if mode == CodeMode::Bits64 { 0x1 } else { 0xf0 };
        let mut masks: Vec<u32> = (1..1u32 << FLAGS).filter(|m| m & never == 0).collect();
        masks.sort_by_key(|m| m.count_ones());
        masks.into_iter().map(LongDepartures::from_bits).collect()
    }

    fn without_null_ltr(self) -> LongDepartures {
        LongDepartures {
            qemu: Departures {
                null_ltr: false,
                ..self.qemu
            },
            ..self
        }
    }
}

impl std::fmt::Display for LongDepartures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names = Vec::new();
        if self.qemu != Departures::default() {
            names.push(self.qemu.to_string());
        }
        for (on, name) in [
            (
                self.legacy_override_base,
                "ES/DS override base in 64-bit mode",
            ),
            (
                self.o16_dt_base,
                "0x66 LGDT/LIDT loads 24 bits in 64-bit mode",
            ),
            (
                self.noncanonical_dt_base,
                "LGDT/LIDT take a non-canonical base",
            ),
            (self.gp_not_ss, "#GP for #SS"),
            (self.page_by_page, "page by page"),
            (
                self.sys_upper_unchecked,
                "16-byte descriptor's upper type unchecked",
            ),
            (
                self.sys_base_unchecked,
                "LTR/LLDT take a non-canonical base",
            ),
            (self.tss16_in_ia32e, "LTR takes a 16-bit TSS in IA-32e mode"),
        ] {
            if on {
                names.push(format!("QEMU: {name}"));
            }
        }
        write!(f, "{}", names.join(" + "))
    }
}

/// Why QEMU's access failed: a #PF, or a non-canonical page (#GP(0)).
enum QemuFault {
    Pf(PageFault),
    Gp,
}

/// QEMU TCG's access to `buf.len()` bytes at `addr`
/// ([`LongDepartures::page_by_page`]): a 10-byte pseudo-descriptor as its
/// limit then its base, each piece page by page.
fn qemu_access<M: GuestMemory>(
    mem: &M,
    addr: u64,
    buf: &mut [u8],
    write: bool,
) -> Result<(), QemuFault> {
    let cuts: &[usize] = if buf.len() == 10 {
        &[0, 2, 10]
    } else {
        &[0, buf.len()]
    };
    let access = if write { Access::Write } else { Access::Read };
    for w in cuts.windows(2) {
        let mut k = w[0];
        while k < w[1] {
            let la = addr.wrapping_add(k as u64);
            if !pvops::table::is_canonical(la) {
                return Err(QemuFault::Gp);
            }
            let n = ((0x1000 - (la & 0xfff)) as usize).min(w[1] - k);
            // A store's pages are translated (for writing) first.
            let mut probe = [0u8; 16];
            mem.read(la, &mut probe[..n], access)
                .map_err(QemuFault::Pf)?;
            if !write {
                buf[k..k + n].copy_from_slice(&probe[..n]);
            }
            k += n;
        }
        if write {
            let at = addr.wrapping_add(w[0] as u64);
            mem.write(at, &buf[w[0]..w[1]], access)
                .map_err(QemuFault::Pf)?;
        }
    }
    Ok(())
}

/// Memory as QEMU TCG's instructions see it under `model`: operands page
/// by page; LGDT/LIDT's base (64-bit mode) cut to 24 bits or taken
/// non-canonical (made canonical for the emulator's check and put back
/// in the record after); a 16-byte system descriptor's upper half as
/// QEMU checks it.
struct QemuView<'a, M: GuestMemory> {
    inner: &'a M,
    model: LongDepartures,
    /// LTR (else LLDT) for the upper-half check.
    ltr: bool,
    /// (the base the emulator saw, the one in memory).
    swapped: Cell<Option<(u64, u64)>>,
    /// A 16-bit TSS's type byte, shown to the emulator as a 64-bit TSS's
    /// ([`LongDepartures::tss16_in_ia32e`]), for the busy bit's write.
    tss16: Cell<Option<u8>>,
}

impl<M: GuestMemory> QemuView<'_, M> {
    fn operand(&self, addr: u64, buf: &mut [u8], access: Access) -> Result<(), PageFault> {
        if !self.model.page_by_page {
            return self.inner.read(addr, buf, access);
        }
        qemu_access(self.inner, addr, buf, false).map_err(|f| match f {
            QemuFault::Pf(pf) => pf,
            QemuFault::Gp => PageFault {
                addr,
                error_code: 0,
            },
        })
    }

    /// The pseudo-descriptor's base as QEMU loads it.
    fn dt_base(&self, buf: &mut [u8]) {
        let base = u64::from_le_bytes(buf[2..10].try_into().unwrap_or_default());
        let mut seen = base;
        if self.model.o16_dt_base {
            seen &= 0xff_ffff;
        }
        if self.model.noncanonical_dt_base {
            seen = ((seen << 16) as i64 >> 16) as u64;
        }
        buf[2..10].copy_from_slice(&seen.to_le_bytes());
        let kept = if self.model.o16_dt_base { seen } else { base };
        self.swapped.set(Some((seen, kept)));
    }

    /// A 16-byte system descriptor as QEMU checks it.
    fn system(&self, buf: &mut [u8]) {
        if self.model.sys_upper_unchecked {
            // Byte 13 holds bits 12:8 of the upper dword.
            buf[13] &= if self.ltr { !0x10 } else { !0x1f };
        }
        if self.model.sys_base_unchecked {
            buf[8..12].fill(0);
        }
        if self.model.tss16_in_ia32e && self.ltr && buf[5] & 0x1f == 0x01 {
            self.tss16.set(Some(buf[5]));
            buf[5] |= 0x08;
        }
    }
}

impl<M: GuestMemory> GuestMemory for QemuView<'_, M> {
    fn read(&self, addr: u64, buf: &mut [u8], access: Access) -> Result<(), PageFault> {
        match access {
            Access::Read => self.operand(addr, buf, access)?,
            _ => self.inner.read(addr, buf, access)?,
        }
        match (buf.len(), access) {
            (10, Access::Read) => self.dt_base(buf),
            (16, Access::ImplicitRead) => self.system(buf),
            _ => {}
        }
        Ok(())
    }

    fn write(&self, addr: u64, data: &[u8], access: Access) -> Result<(), PageFault> {
        if let (Some(byte), Access::ImplicitWrite, 1) = (self.tss16.get(), access, data.len()) {
            // The busy bit set in the 16-bit TSS's own type: 1 → 3.
            return self.inner.write(addr, &[byte | 2], access);
        }
        if !self.model.page_by_page || access != Access::Write {
            return self.inner.write(addr, data, access);
        }
        let mut b = data.to_vec();
        qemu_access(self.inner, addr, &mut b, true).map_err(|f| match f {
            QemuFault::Pf(pf) => pf,
            QemuFault::Gp => PageFault {
                addr,
                error_code: 0,
            },
        })
    }
}

/// The guest's physical memory for `s` as the emulator needs it: the
/// page tables (the window's entry as the scenario sets it), the
/// instruction at `rip`'s page (as `model` sees it), the GDT and the
/// window.
fn guest_memory(s: &LongScenario, at: u32, model: LongDepartures) -> MockPhys {
    let phys = MockPhys::default();
    for (pa, e) in image::page_table_entries() {
        phys.put_u64(u64::from(pa), e);
    }
    for page in [
        at,
        at + 15,
        image::GDT,
        image::IDT,
        image::WIN,
        image::WIN + 0x1000,
    ] {
        if page >> 21 == 0 {
            let e = image::pte(page) | 0x20;
            phys.put_u64(u64::from(image::PT0 + (page >> 12) * 8), e);
        } else {
            let k = page >> 21;
            phys.put_u64(u64::from(image::PD0 + k * 8), image::pde(k) | 0x20);
        }
    }
    phys.put_u64(u64::from(s.win.pte_at()), s.win_pte);
    // A LOCK prefix dropped: the RIP-relative displacement is set for the
    // shorter instruction (QEMU's RIP after it counts the prefix).
    let kept = super::super::modelled_insn(&s.insn, model.qemu);
    let dropped = s.insn.len() - kept.len();
    let insn = LongScenario {
        insn: kept,
        rip_rel: s.rip_rel.map(|(k, ea)| (k - dropped, ea)),
        ..s.clone()
    }
    .insn_at(u64::from(at));
    phys.put(u64::from(at), &insn);
    let g = u64::from(image::GDT);
    for (sel, d) in [
        (0x08, image::CODE64),
        (0x10, image::DATA),
        (image::SEL_CODE32, image::CODE32),
        (image::SEL_CODE16, code16(s, at)),
    ] {
        phys.put_u64(g + u64::from(sel), d);
    }
    for (k, d) in s.gdt_slots.iter().enumerate() {
        phys.put_u64(g + 0x18 + 8 * k as u64, *d);
    }
    let win = u64::from(image::WIN);
    phys.put(win, &s.window);
    phys.put(win + 0xff0, &s.window_tail);
    phys
}

/// The 16-bit code segment's descriptor: based at the stub.
fn code16(s: &LongScenario, at: u32) -> u64 {
    let stub = at - image::insn_offset(s.mode);
    super::super::desc(stub, 0xffff, 0x9b, 0)
}

/// The vCPU for `s` (its instruction at linear `at`): IA-32e mode, CS for
/// its mode, the segments (flattened in compatibility mode under
/// [`Departures::no_segment_checks`]), FS/GS bases, registers, GDTR, IDTR,
/// TR.
fn cpu_for(s: &LongScenario, at: u32, tr_before: u16, model: LongDepartures) -> MockCpu {
    let (cs, rip) = match s.mode {
        CodeMode::Bits64 => (image::CODE64, u64::from(at)),
        CodeMode::Compat32 => (image::CODE32, u64::from(at)),
        CodeMode::Compat16 => (code16(s, at), u64::from(image::insn_offset(s.mode))),
    };
    let mut cpu = MockCpu::with_segments(true, cs, image::DATA);
    cpu.rip = rip;
    cpu.gprs = s.regs;
    cpu.gprs[4] = u64::from(image::STACK_TOP);
    let flat = model.qemu.flat() && s.mode != CodeMode::Bits64;
    for (k, seg) in [Segment::Es, Segment::Ds, Segment::Fs, Segment::Gs]
        .into_iter()
        .enumerate()
    {
        *cpu.seg_mut(seg) = super::super::segment_cache(s.sels[k], &s.gdt_slots, flat);
    }
    (cpu.fs_base, cpu.gs_base) = (s.fs_base, s.gs_base);
    cpu.dt.gdtr = DescriptorTablePointer {
        limit: s.test_gdtr.0,
        base: s.test_gdtr.1,
    };
    cpu.dt.idtr = DescriptorTablePointer {
        limit: image::IDT_LIMIT,
        base: u64::from(image::IDT),
    };
    cpu.dt.tr = Selector(tr_before);
    cpu
}

/// The ES or DS override of a 64-bit-mode instruction: its index in
/// [`LongScenario::sels`] and its place in `insn`
/// ([`LongDepartures::legacy_override_base`]).
fn legacy_override(s: &LongScenario) -> Option<(usize, usize)> {
    if s.mode != CodeMode::Bits64 {
        return None;
    }
    let opcode = s.insn.iter().position(|&b| b == 0x0f)?;
    let k = s.insn[..opcode]
        .iter()
        .rposition(|b| matches!(b, 0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65))?;
    match s.insn[k] {
        0x26 => Some((0, k)),
        0x3e => Some((1, k)),
        _ => None,
    }
}

/// `s` as QEMU runs it under `model`'s [`LongDepartures::legacy_override_base`]:
/// the ES/DS override made an FS one with that segment's base.
fn as_qemu_runs(s: &LongScenario, model: LongDepartures) -> Option<LongScenario> {
    let (seg, k) = legacy_override(s).filter(|_| model.legacy_override_base)?;
    let mut q = s.clone();
    q.insn[k] = 0x64;
    let sel = s.sels[seg];
    // A selector outside the scenario's slots (a hand-built scenario) has
    // no descriptor the harness wrote: base 0, as a null one.
    let slot = usize::from(sel >> 3).checked_sub(3);
    q.fs_base = match slot.and_then(|k| s.gdt_slots.get(k)) {
        Some(&d) if sel & 0xfffc != 0 => (d >> 16 & 0xff_ffff) | (d >> 56) << 24,
        _ => 0,
    };
    Some(q)
}

/// The emulator's record for `s` (its instruction at linear `at`), with
/// TR `tr_before` at the start; `model` applies QEMU departures.
pub fn emulate_long(
    s: &LongScenario,
    at: u32,
    tr_before: u16,
    model: LongDepartures,
) -> (LongRecord, Outcome) {
    if let Some(q) = as_qemu_runs(s, model) {
        let plain = LongDepartures {
            legacy_override_base: false,
            ..model
        };
        return emulate_long(&q, at, tr_before, plain);
    }
    if model.qemu.null_ltr
        && let Some(r) = null_ltr(s, at, tr_before, model)
    {
        return r;
    }
    let phys = guest_memory(s, at, model);
    let mut walker = Walker::new(PagingMode::Level4, u64::from(image::PML4));
    let smap = s.paging == LongPaging::Smap;
    (walker.smep, walker.smap, walker.ac, walker.maxphyaddr) = (smap, smap, s.ac, 40);
    let mem = Paged {
        phys: &phys,
        walker,
        cpl: 0,
    };
    let mut cpu = cpu_for(s, at, tr_before, model);
    let start = cpu.clone();
    let lenient = Lenient(&mem, Cell::new(false), &phys);
    let opcode = s.insn.iter().position(|&b| b == 0x0f).unwrap_or(0);
    let view_model = LongDepartures {
        o16_dt_base: model.o16_dt_base && s.insn[..opcode].contains(&0x66),
        ..model
    };
    let ltr = super::super::ltr_as_lldt(&s.insn).is_some();
    let view = QemuView {
        inner: &mem,
        model: view_model,
        ltr,
        swapped: Cell::new(None),
        tss16: Cell::new(None),
    };
    let flat_view = QemuView {
        inner: &lenient,
        model: view_model,
        ltr,
        swapped: Cell::new(None),
        tss16: Cell::new(None),
    };
    let mut o = if model.qemu.flat() && s.mode != CodeMode::Bits64 {
        emulate(&mut cpu, &flat_view)
    } else {
        emulate(&mut cpu, &view)
    };
    if let Some((seen, base)) = view.swapped.get() {
        for p in [&mut cpu.dt.gdtr, &mut cpu.dt.idtr] {
            if p.base == seen {
                p.base = base;
            }
        }
    }
    if model.page_by_page
        && let Some(q) = out_of_canonical(s, at, &start, &o, &view)
    {
        o = q;
    }
    let rec = record_of(s, &cpu, &o, &phys, model, lenient.1.get());
    (rec, o)
}

/// QEMU's answer ([`LongDepartures::page_by_page`]) where the SDM's is
/// #GP(0) or #SS(0) for a 64-bit-mode operand whose first byte is
/// canonical and whose last is not: its pages in order, so the first one
/// is translated (#PF, or its A and D set) before the #GP(0).
fn out_of_canonical<M: GuestMemory>(
    s: &LongScenario,
    at: u32,
    start: &MockCpu,
    o: &Outcome,
    mem: &M,
) -> Option<Outcome> {
    let Outcome::Inject {
        insn,
        exception: Exception::Gp(0) | Exception::Ss(0),
    } = *o
    else {
        return None;
    };
    if s.mode != CodeMode::Bits64 {
        return None;
    }
    let bytes = s.insn_at(u64::from(at));
    let mut d = Decoder::with_ip(64, &bytes, u64::from(at), DecoderOptions::NO_INVALID_CHECK);
    let i = d.decode();
    if i.op0_kind() != OpKind::Memory {
        return None;
    }
    let addr = i.virtual_address(0, 0, |reg, _, _| match reg {
        Register::FS => Some(start.fs_base),
        Register::GS => Some(start.gs_base),
        Register::ES | Register::CS | Register::SS | Register::DS => Some(0),
        r => {
            let (n, size) = super::super::super::exec::gpr(r)?;
            let v = start.gprs[usize::from(n)];
            Some(if size == 4 { v & 0xffff_ffff } else { v })
        }
    })?;
    let mut buf = [0u8; 10];
    let (len, write) = match insn {
        Insn::Sgdt | Insn::Sidt => {
            let p = if insn == Insn::Sgdt {
                start.dt.gdtr
            } else {
                start.dt.idtr
            };
            buf[..2].copy_from_slice(&p.limit.to_le_bytes());
            buf[2..].copy_from_slice(&p.base.to_le_bytes());
            (10, true)
        }
        Insn::Lgdt | Insn::Lidt => (10, false),
        Insn::Str | Insn::Sldt => {
            let sel = if insn == Insn::Str {
                start.dt.tr
            } else {
                start.dt.ldtr
            };
            buf[..2].copy_from_slice(&sel.bits().to_le_bytes());
            (2, true)
        }
        Insn::Ltr | Insn::Lldt => (2, false),
    };
    let last = addr.wrapping_add(len as u64 - 1);
    if !pvops::table::is_canonical(addr) || pvops::table::is_canonical(last) {
        return None;
    }
    let exception = match qemu_access(mem, addr, &mut buf[..len], write) {
        Err(QemuFault::Pf(pf)) => Exception::Pf(pf),
        _ => Exception::Gp(0),
    };
    Some(Outcome::Inject { insn, exception })
}

/// The record the emulator's run gives.
fn record_of(
    s: &LongScenario,
    cpu: &MockCpu,
    o: &Outcome,
    phys: &MockPhys,
    model: LongDepartures,
    outside: bool,
) -> LongRecord {
    let (vector, error, cr2) = match o {
        Outcome::Inject {
            exception: Exception::Pf(pf),
            ..
        } if model.qemu.rsvd_without_p && pf.error_code & 8 != 0 => {
            (Some(14), pf.error_code & !1, pf.addr)
        }
        Outcome::Inject {
            exception: Exception::Pf(pf),
            ..
        } => (Some(14), pf.error_code, pf.addr),
        Outcome::Inject {
            exception: Exception::Ss(0),
            ..
        } if model.gp_not_ss => (Some(13), 0, 0),
        Outcome::Inject { exception, .. } => (
            Some(exception.vector()),
            exception.error_code().unwrap_or(0),
            0,
        ),
        Outcome::Emulated { .. } => (None, 0, 0),
        Outcome::NotEmulated(_) => (Some(0xff), 0, 0),
    };
    let mut window = vec![0u8; 80];
    let win = u64::from(image::WIN);
    let _ = phys.read_bytes(win, &mut window[..64]);
    let _ = phys.read_bytes(win + 0xff0, &mut window[64..]);
    let mut gdt = vec![0u8; 104];
    let _ = phys.read_bytes(u64::from(image::GDT) + 0x18, &mut gdt);
    LongRecord {
        vector,
        error: u64::from(error),
        rax: cpu.gprs[0],
        r8: cpu.gprs[8],
        gdtr: (cpu.dt.gdtr.limit, cpu.dt.gdtr.base),
        idtr: (cpu.dt.idtr.limit, cpu.dt.idtr.base),
        tr: cpu.dt.tr.bits(),
        ldtr: cpu.dt.ldtr.bits(),
        cr2,
        // Fault semantics (SDM vol. 3A 6.5): the frame holds the state
        // before the instruction; the guest's RFLAGS are the runner's, of
        // which only AC is the scenario's.
        frame: match vector {
            Some(_) => (cpu.rip, u64::from(s.ac) << 18, cpu.gprs[4]),
            None => (0, 0, 0),
        },
        pte: phys.get_u64(u64::from(s.win.pte_at())),
        window,
        gdt,
        outside,
    }
}

/// QEMU's LTR of a null selector ([`Departures::null_ltr`]): LLDT's null
/// path, into TR. `None` where the instruction is not an LTR the SDM
/// faults for a null selector.
fn null_ltr(
    s: &LongScenario,
    at: u32,
    tr_before: u16,
    model: LongDepartures,
) -> Option<(LongRecord, Outcome)> {
    let sdm_model = model.without_null_ltr();
    let as_lldt = super::super::ltr_as_lldt(&s.insn)?;
    let (sdm, _) = emulate_long(s, at, tr_before, sdm_model);
    if (sdm.vector, sdm.error) != (Some(13), 0) {
        return None;
    }
    let lldt = LongScenario {
        insn: as_lldt,
        ..s.clone()
    };
    let (mut r, o) = emulate_long(&lldt, at, tr_before, sdm_model);
    if r.vector.is_some() || r.ldtr & 0xfffc != 0 {
        return None;
    }
    r.tr = r.ldtr;
    r.ldtr = 0;
    Some((r, o))
}
