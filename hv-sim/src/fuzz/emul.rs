//! Fuzz target: the trap-and-emulate instruction emulator
//! (`hv_sim::emulate`) with arbitrary vCPU state, memory and bytes.
//!
//! A case maps a few pages of mock memory (code; writable and read-only
//! data; a GDT page of TSS/LDT/code/data descriptors with hostile upper
//! halves; pages at the top of the lower canonical half and of the address
//! space), sets registers, FS/GS bases, CPL, UMIP and the descriptor-table
//! registers to values aimed at those pages, their edges and non-canonical
//! addresses, and emulates up to 16 instructions: `0F 00 /r` and `0F 01 /r`
//! with every prefix combination (LOCK, operand/address size, segment
//! overrides, REX), ModRM/SIB/displacement forms, or arbitrary bytes, at
//! RIPs that straddle a page end.
//!
//! After every instruction the outcome is judged against the architecture
//! (SDM vol. 2), independently of the emulator's code:
//! * it never succeeds where the CPU faults: a load (LGDT/LIDT/LTR/LLDT) at
//!   CPL > 0, a store under UMIP at CPL > 0, a LOCK prefix, a non-canonical
//!   LGDT/LIDT base, LTR of a null/LDT selector, of a descriptor past the
//!   GDT limit, not an available TSS, not present, with a non-zero upper
//!   type or a non-canonical base (LLDT likewise, with type LDT);
//! * a success changes only what the instruction writes: LGDT/LIDT one
//!   register, LTR the TR and the one busy bit, LLDT the LDTR, SGDT/SIDT ten
//!   contiguous bytes, STR/SLDT two bytes or one register;
//! * a fault or a non-emulated instruction changes nothing.

use pvops::{Descriptor, Selector};

use std::cell::RefCell;

use super::{CaseStats, Source, int};
use crate::emulate::mock::MockCpu;
use crate::emulate::{
    Access, DtRegisters, Exception, GuestMemory, Insn, Outcome, PageFault, emulate, emulate_bytes,
};

/// A page: base, present, writable, bytes.
type MemPage = (u64, bool, bool, Box<[u8; 4096]>);

/// Mock memory with a fixed set of pages (cheap to snapshot): a page is
/// present or not, writable or not; #PF error codes as a supervisor access
/// gets them (P, W, I).
struct Mem {
    pages: RefCell<Vec<MemPage>>,
}

impl Mem {
    fn page_of(&self, a: u64) -> Option<usize> {
        self.pages
            .borrow()
            .iter()
            .position(|(p, present, _, _)| *present && *p == a & !0xfff)
    }

    fn check(&self, addr: u64, len: usize, access: Access) -> Result<(), PageFault> {
        let pages = self.pages.borrow();
        for k in 0..len as u64 {
            let a = addr.wrapping_add(k);
            let code = |p: bool| {
                u32::from(p)
                    | u32::from(access.is_write()) << 1
                    | u32::from(access == Access::Fetch) << 4
            };
            match pages
                .iter()
                .find(|(p, present, _, _)| *present && *p == a & !0xfff)
            {
                None => {
                    return Err(PageFault {
                        addr: a,
                        error_code: code(false),
                    });
                }
                Some((_, _, w, _)) if access.is_write() && !*w => {
                    return Err(PageFault {
                        addr: a,
                        error_code: code(true),
                    });
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    fn poke(&self, addr: u64, data: &[u8]) {
        for (k, b) in data.iter().enumerate() {
            let a = addr.wrapping_add(k as u64);
            if let Some(i) = self.page_of(a) {
                self.pages.borrow_mut()[i].3[(a & 0xfff) as usize] = *b;
            }
        }
    }

    fn peek(&self, addr: u64, len: usize) -> Option<Vec<u8>> {
        (0..len)
            .map(|k| {
                let a = addr.wrapping_add(k as u64);
                let i = self.page_of(a)?;
                Some(self.pages.borrow()[i].3[(a & 0xfff) as usize])
            })
            .collect()
    }

    fn is_mapped(&self, a: u64) -> bool {
        self.page_of(a).is_some()
    }
}

impl GuestMemory for Mem {
    fn read(&self, addr: u64, buf: &mut [u8], access: Access) -> Result<(), PageFault> {
        self.check(addr, buf.len(), access)?;
        let pages = self.pages.borrow();
        for (k, b) in buf.iter_mut().enumerate() {
            let a = addr.wrapping_add(k as u64);
            if let Some(p) = pages
                .iter()
                .find(|(p, present, _, _)| *present && *p == a & !0xfff)
            {
                *b = p.3[(a & 0xfff) as usize];
            }
        }
        Ok(())
    }

    fn write(&self, addr: u64, data: &[u8], access: Access) -> Result<(), PageFault> {
        self.check(addr, data.len(), access)?;
        let mut pages = self.pages.borrow_mut();
        for (k, b) in data.iter().enumerate() {
            let a = addr.wrapping_add(k as u64);
            if let Some(p) = pages
                .iter_mut()
                .find(|(p, present, _, _)| *present && *p == a & !0xfff)
            {
                p.3[(a & 0xfff) as usize] = *b;
            }
        }
        Ok(())
    }
}

const CODE: u64 = 0x40_0000;
const DATA: u64 = 0x50_0000;
const RO: u64 = 0x51_0000;
const GDT: u64 = 0x60_0000;
const TOP_LOW: u64 = 0x0000_7fff_ffff_f000;
const TOP: u64 = 0xffff_ffff_ffff_f000;
/// Mapped pages and whether they are writable.
const PAGES: [(u64, bool); 7] = [
    (CODE, true),
    (CODE + 0x1000, false),
    (DATA, true),
    (RO, false),
    (GDT, true),
    (TOP_LOW, true),
    (TOP, true),
];

/// An address aimed at a mapped page, its edges, or anywhere.
fn addr(s: &mut Source) -> u64 {
    match s.below(8) {
        0..=2 => {
            let (p, _) = s.pick(&PAGES);
            p + s.below(0x1000)
        }
        3 => {
            let (p, _) = s.pick(&PAGES);
            p.wrapping_add(0x1000).wrapping_sub(s.range(1, 10))
        }
        4 => s.pick(&[
            0x0000_8000_0000_0000 - 4,
            0xffff_8000_0000_0000,
            0x0000_8000_0000_0000,
        ]),
        _ => int(s),
    }
}

/// A GDT entry: TSS/LDT descriptors with hostile bits, code/data, random.
fn gdt_word(s: &mut Source) -> u64 {
    match s.below(6) {
        0 | 1 => {
            let typ = s.pick(&[0x9u64, 0xB, 0x2, 0x1, 0x3, 0xC, 0xE]);
            let p = u64::from(s.chance(7, 8));
            let dpl = s.below(4);
            let base = if s.chance(3, 4) { DATA } else { int(s) };
            let limit = s.pick(&[0x67u64, 0xfff, 0, 0xfffff]);
            (limit & 0xffff)
                | (base & 0xff_ffff) << 16
                | typ << 40
                | dpl << 45
                | p << 47
                | (limit >> 16 & 0xf) << 48
                | (base >> 24 & 0xff) << 56
        }
        // An upper half: the base's top, sometimes a type, non-canonical.
        2 => match s.below(3) {
            0 => 0,
            1 => s.pick(&[0xffff_ffffu64, 0x0000_8000, 0x1f << 8, 1 << 8]),
            _ => s.word(),
        },
        3 => super::descriptor(s),
        4 => 0,
        _ => s.word(),
    }
}

fn insn_bytes(s: &mut Source) -> (Vec<u8>, bool) {
    let mut b = Vec::new();
    let mut lock = false;
    if s.chance(1, 8) {
        for _ in 0..s.range(1, 15) {
            b.push(s.word() as u8);
        }
        let lock = b.contains(&0xF0);
        return (b, lock);
    }
    for _ in 0..s.below(4) {
        let p = s.pick(&[
            0x66u8, 0x67, 0xF0, 0xF2, 0xF3, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65,
        ]);
        lock |= p == 0xF0;
        b.push(p);
    }
    if s.chance(1, 3) {
        b.push(0x40 | s.below(16) as u8);
    }
    b.push(0x0F);
    b.push(if s.chance(1, 2) { 0x00 } else { 0x01 });
    let md = s.pick(&[0u8, 0, 1, 2, 3, 3]);
    let reg = s.below(8) as u8;
    let rm = s.below(8) as u8;
    b.push(md << 6 | reg << 3 | rm);
    if md != 3 && rm == 4 {
        b.push(s.word() as u8); // SIB
    }
    match md {
        1 => b.push(s.word() as u8),
        2 => b.extend_from_slice(&(s.word() as u32).to_le_bytes()),
        0 if rm == 5 => b.extend_from_slice(&(s.word() as u32).to_le_bytes()),
        _ => {}
    }
    for _ in 0..s.below(3) {
        b.push(s.word() as u8);
    }
    (b, lock)
}

fn canonical(a: u64) -> bool {
    let top = a >> 47;
    top == 0 || top == 0x1_ffff
}

/// The writable pages' bytes (nothing can change a read-only one).
fn snapshot(mem: &Mem) -> Vec<Vec<u8>> {
    mem.pages
        .borrow()
        .iter()
        .map(|p| if p.2 { p.3.to_vec() } else { Vec::new() })
        .collect()
}

/// The bytes that differ between two snapshots: (address, old, new).
fn diff(a: &[Vec<u8>], b: &[Vec<u8>]) -> Vec<(u64, u8, u8)> {
    let mut out = Vec::new();
    for (k, (x, y)) in a.iter().zip(b).enumerate() {
        if x != y {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                if p != q {
                    out.push((PAGES[k].0 + i as u64, *p, *q));
                }
            }
        }
    }
    out
}

/// Judge a successful emulation against the architecture.
fn judge(
    insn: Insn,
    operand: u64,
    before: &MockCpu,
    after: &MockCpu,
    changed: &[(u64, u8, u8)],
    mem: &Mem,
    lock: bool,
) -> Result<(), String> {
    if lock {
        return Err("emulated despite a LOCK prefix (#UD)".into());
    }
    if before.cpl > 0 && (insn.is_load() || before.umip) {
        return Err(format!(
            "emulated at CPL {} (UMIP {})",
            before.cpl, before.umip
        ));
    }
    let (b, a) = (&before.dt, &after.dt);
    let gprs_same = before.gprs == after.gprs;
    let only = |want: DtRegisters| -> Result<(), String> {
        if *a != want {
            return Err(format!(
                "registers changed beyond the instruction: {b:x?} -> {a:x?}"
            ));
        }
        Ok(())
    };
    match insn {
        Insn::Lgdt | Insn::Lidt => {
            let p = if insn == Insn::Lgdt { a.gdtr } else { a.idtr };
            if !canonical(p.base) || p.base != operand {
                return Err(format!(
                    "loaded base {:#x} (non-canonical or not the operand)",
                    p.base
                ));
            }
            let mut want = *b;
            if insn == Insn::Lgdt {
                want.gdtr = p;
            } else {
                want.idtr = p;
            }
            only(want)?;
            if !changed.is_empty() || !gprs_same {
                return Err("a load changed memory or a register".into());
            }
        }
        Insn::Ltr | Insn::Lldt => {
            let sel = Selector(operand as u16);
            let ltr = insn == Insn::Ltr;
            if sel.is_null() {
                if ltr {
                    return Err("LTR of a null selector succeeded (#GP(0))".into());
                }
                let mut want = *b;
                want.ldtr = sel;
                want.ldtr_base = 0;
                want.ldtr_limit = 0;
                only(want)?;
            } else {
                only(system_load(insn, sel, b, changed, mem)?)?;
            }
            if (!ltr && !changed.is_empty()) || !gprs_same {
                return Err(format!("{insn} changed memory or a register"));
            }
        }
        Insn::Sgdt | Insn::Sidt | Insn::Str | Insn::Sldt => {
            only(*b)?;
            store(insn, before, after, changed)?;
        }
    }
    Ok(())
}

/// LTR/LLDT of a non-null selector: the descriptor it must have read (a
/// present available TSS or LDT in the GDT, canonical base, no type in the
/// upper half) and the registers it must have left; LTR may change only
/// the busy bit.
fn system_load(
    insn: Insn,
    sel: Selector,
    b: &DtRegisters,
    changed: &[(u64, u8, u8)],
    mem: &Mem,
) -> Result<DtRegisters, String> {
    let ltr = insn == Insn::Ltr;
    if sel.bits() & 4 != 0 {
        return Err(format!("{insn} of LDT selector {sel} succeeded"));
    }
    let off = u64::from(sel.index()) * 8;
    if off + 15 > u64::from(b.gdtr.limit) {
        return Err(format!(
            "{insn} of {sel} past the GDT limit {:#x}",
            b.gdtr.limit
        ));
    }
    let at = b.gdtr.base.wrapping_add(off);
    let low = mem
        .peek(at, 8)
        .map(|v| u64::from_le_bytes(v.try_into().unwrap_or([0; 8])));
    let high = mem
        .peek(at.wrapping_add(8), 8)
        .map(|v| u64::from_le_bytes(v.try_into().unwrap_or([0; 8])));
    let (Some(low), Some(high)) = (low, high) else {
        return Err(format!("{insn} of {sel}: its descriptor is not mapped"));
    };
    let d = Descriptor(low);
    let want_typ = if ltr { 0xB } else { 0x2 };
    if d.is_code_or_data() || d.typ() != want_typ || !d.present() {
        return Err(format!(
            "{insn} of {sel}: descriptor {low:#018x} is not a present {}",
            if ltr { "available TSS" } else { "LDT" }
        ));
    }
    if (high >> 40) & 0x1f != 0 {
        return Err(format!("{insn} of {sel}: upper half {high:#x} has a type"));
    }
    let base = u64::from(d.base()) | high << 32;
    if !canonical(base) {
        return Err(format!("{insn} of {sel}: base {base:#x} is not canonical"));
    }
    let mut want = *b;
    if ltr {
        want.tr = sel;
        want.tr_base = base;
        want.tr_limit = d.effective_limit();
        // Exactly the busy bit of the type byte.
        let ok = changed.len() <= 1
            && changed
                .iter()
                .all(|&(x, o, n)| x == at.wrapping_add(5) && n == o | 2);
        if !ok {
            return Err(format!(
                "LTR changed memory beyond the busy bit: {changed:x?}"
            ));
        }
    } else {
        want.ldtr = sel;
        want.ldtr_base = base;
        want.ldtr_limit = d.effective_limit();
    }
    Ok(want)
}

/// SGDT/SIDT/STR/SLDT: at most the operand's bytes of memory, or (STR,
/// SLDT) one register instead.
fn store(
    insn: Insn,
    before: &MockCpu,
    after: &MockCpu,
    changed: &[(u64, u8, u8)],
) -> Result<(), String> {
    let width = if matches!(insn, Insn::Sgdt | Insn::Sidt) {
        10
    } else {
        2
    };
    if let (Some(first), Some(last)) = (changed.first(), changed.last())
        && last.0.wrapping_sub(first.0) >= width
    {
        return Err(format!(
            "{insn} changed more than {width} bytes: {changed:x?}"
        ));
    }
    let regs = before
        .gprs
        .iter()
        .zip(&after.gprs)
        .filter(|(x, y)| x != y)
        .count();
    if regs > 1 || (regs == 1 && !matches!(insn, Insn::Str | Insn::Sldt)) {
        return Err(format!("{insn} changed {regs} registers"));
    }
    if regs == 1 && !changed.is_empty() {
        return Err(format!("{insn} changed a register and memory"));
    }
    Ok(())
}

/// One case (see the module documentation).
pub(crate) fn case(s: &mut Source, st: &mut CaseStats) -> Result<(), String> {
    let mem = Mem {
        pages: RefCell::new(
            PAGES
                .iter()
                .map(|&(p, w)| {
                    (
                        p,
                        p != CODE + 0x1000 || s.chance(1, 2),
                        w,
                        Box::new([0; 4096]),
                    )
                })
                .collect(),
        ),
    };
    // The GDT page: entries 0..32.
    for i in 0..32u64 {
        mem.poke(GDT + 8 * i, &gdt_word(s).to_le_bytes());
    }
    // Some data.
    for _ in 0..s.below(8) {
        let a = addr(s);
        mem.poke(a, &s.word().to_le_bytes());
    }
    let mut cpu = MockCpu::default();
    for r in cpu.gprs.iter_mut() {
        *r = if s.chance(1, 2) { addr(s) } else { int(s) };
    }
    cpu.fs_base = addr(s);
    cpu.gs_base = addr(s);
    cpu.dt.gdtr.base = if s.chance(7, 8) { GDT } else { addr(s) };
    let any = s.word() as u16;
    cpu.dt.gdtr.limit = s.pick(&[0xffu16, 0x7f, 0x57, 0x67, 0xfff, 0xffff, any]);
    cpu.dt.idtr.base = addr(s);
    cpu.dt.idtr.limit = s.word() as u16;
    cpu.dt.tr = Selector(super::selector(s) as u16);
    cpu.dt.ldtr = Selector(super::selector(s) as u16);
    for step in 0..s.range(1, 16) {
        cpu.cpl = if s.chance(2, 3) { 0 } else { s.below(4) as u8 };
        cpu.umip = s.chance(1, 2);
        if s.chance(1, 4) {
            let r = s.below(16) as usize;
            cpu.gprs[r] = addr(s);
        }
        let (bytes, lock) = insn_bytes(s);
        // RIP: the start of the code page, or near its end so the bytes
        // straddle into the next page (mapped or not).
        cpu.rip = if s.chance(1, 3) {
            CODE + 0x1000 - s.range(1, bytes.len() as u64)
        } else {
            CODE + s.below(0xf00)
        };
        mem.poke(
            cpu.rip,
            &bytes[..bytes.len().min((CODE + 0x1000 - cpu.rip) as usize)],
        );
        let fetched = CODE + 0x1000 - cpu.rip >= bytes.len() as u64;
        if !fetched && mem.is_mapped(CODE + 0x1000) {
            let rest = (CODE + 0x1000 - cpu.rip) as usize;
            mem.poke(CODE + 0x1000, &bytes[rest..]);
        }
        let before_mem = snapshot(&mem);
        let before = cpu.clone();
        st.calls += 1;
        let out = if s.chance(3, 4) {
            emulate(&mut cpu, &mem)
        } else {
            emulate_bytes(&mut cpu, &mem, &bytes)
        };
        let after_mem = snapshot(&mem);
        let changed = diff(&before_mem, &after_mem);
        st.checks += 1;
        let what = format!(
            "step {step}: {bytes:02x?} at {:#x} with {before:x?}",
            before.rip
        );
        match &out {
            Outcome::Emulated { insn, len, operand } => {
                st.outcome(0x3000 + *insn as u64, 0);
                if *len == 0 || *len > 15 {
                    return Err(format!("{what}: emulated with length {len}"));
                }
                judge(*insn, *operand, &before, &cpu, &changed, &mem, lock)
                    .map_err(|e| format!("{what}: {out:x?}: {e}"))?;
            }
            Outcome::Inject { insn, exception } => {
                st.outcome(
                    0x3100 + *insn as u64 * 16 + u64::from(exception.vector()),
                    0,
                );
                if let Exception::Pf(pf) = exception
                    && PAGES.iter().any(|(p, w)| {
                        pf.addr & !0xfff == *p
                            && mem.is_mapped(*p)
                            && (*w || pf.error_code & 2 == 0)
                    })
                {
                    return Err(format!(
                        "{what}: {out:x?}: #PF on a page that allows the access"
                    ));
                }
                if cpu != before || !changed.is_empty() {
                    return Err(format!(
                        "{what}: {out:x?} but the state changed: {changed:x?} {cpu:x?}"
                    ));
                }
            }
            Outcome::NotEmulated(_) => {
                st.outcome(0x3200, 0);
                if cpu != before || !changed.is_empty() {
                    return Err(format!("{what}: {out:x?} but the state changed"));
                }
            }
        }
    }
    Ok(())
}
