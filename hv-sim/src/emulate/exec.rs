//! Executing one decoded descriptor-table instruction: every operand form,
//! every check, in the CPU's order (SDM vol. 2A/2B LGDT/LIDT, LLDT, LTR,
//! SGDT, SIDT, SLDT, STR), as a staged [`Effect`] that [`commit`] applies
//! once the caller is satisfied the bytes did not change (see
//! [`super::emulate`] on the self-modifying-code race).
//!
//! * Memory operands: the effective address (iced-x86 masks it to the
//!   address size), then segmentation ([`super::segment::linear`]: the
//!   segment's type, limit, expand-down, null/unusable, #GP(0) or #SS(0))
//!   outside 64-bit mode; the canonical check of its first and last byte
//!   in 64-bit mode (#SS(0) through SS); then the guest's paging (#PF).
//! * LGDT/LIDT: 10 bytes (m16&64) in 64-bit mode, a non-canonical base
//!   #GP(0); else 6 bytes (m16&32): with a 32-bit operand size the 32-bit
//!   base, with a 16-bit one its low 24 bits ("IDTR(Base) ← SRC[16:47] AND
//!   00FFFFFFH").
//! * SGDT/SIDT: 10 bytes in 64-bit mode; else 6 bytes, limit and the full
//!   32-bit base whatever the operand size (SDM SGDT: "16-bit or 32-bit
//!   operand size: DEST[16:47] ← GDTR(Base)").
//! * LTR/LLDT: the selector from a register's low 16 bits or 2 bytes of
//!   memory, then [`super::system`]'s checks.
//! * STR/SLDT: to memory 2 bytes whatever the operand size; to a 16-bit
//!   register its low 16 bits (the rest kept); to a 32- or 64-bit register
//!   zero-extended.

use iced_x86::{Code, Instruction, OpKind, Register};
use pvops::{DescriptorTablePointer, Selector};

use super::fetch::Mode;
use super::segment::{self, SegAccess};
use super::system::{self, SystemLoad};
use super::{Access, CpuState, DtRegisters, Exception, GuestMemory, Insn, Segment};

/// What an instruction changes, staged until [`commit`].
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Effect {
    /// New descriptor-table registers.
    pub dt: Option<DtRegisters>,
    /// A general-purpose register write (number, full 64-bit value).
    pub gpr: Option<(u8, u64)>,
    /// A memory write: linear address, bytes (first `len`), access.
    pub write: Option<(u64, [u8; 10], usize, Access)>,
    /// The selector or table base loaded or stored (for the outcome).
    pub operand: u64,
}

/// Apply `e`: the memory write first (it may still fault: then nothing
/// else is applied), then the registers.
pub(crate) fn commit<C: CpuState + ?Sized, M: GuestMemory + ?Sized>(
    cpu: &mut C,
    mem: &M,
    e: &Effect,
) -> Result<(), Exception> {
    if let Some((addr, bytes, len, access)) = e.write {
        mem.write(addr, &bytes[..len], access)
            .map_err(Exception::Pf)?;
    }
    if let Some((n, v)) = e.gpr {
        cpu.set_gpr(n, v);
    }
    if let Some(dt) = e.dt {
        cpu.set_descriptor_tables(dt);
    }
    Ok(())
}

/// A general-purpose register's number and size in bytes.
pub(crate) fn gpr(reg: Register) -> Option<(u8, u8)> {
    let r = reg as u32;
    let block = |first: Register, size: u8| {
        let f = first as u32;
        (r >= f && r < f + 16).then(|| ((r - f) as u8, size))
    };
    block(Register::AX, 2)
        .or_else(|| block(Register::EAX, 4))
        .or_else(|| block(Register::RAX, 8))
}

/// The segment register an iced-x86 register names, if it names one.
pub(crate) fn segment_of(reg: Register) -> Option<Segment> {
    Some(match reg {
        Register::ES => Segment::Es,
        Register::CS => Segment::Cs,
        Register::SS => Segment::Ss,
        Register::DS => Segment::Ds,
        Register::FS => Segment::Fs,
        Register::GS => Segment::Gs,
        _ => return None,
    })
}

/// The memory operand's linear address for `len` bytes.
fn operand_linear<C: CpuState + ?Sized>(
    cpu: &C,
    i: &Instruction,
    mode: Mode,
    len: u32,
    access: SegAccess,
) -> Result<u64, Exception> {
    // The offset (segment base 0), masked to the address size by iced.
    let offset = i
        .virtual_address(0, 0, |reg, _, _| {
            if segment_of(reg).is_some() {
                return Some(0);
            }
            let (n, size) = gpr(reg)?;
            let v = cpu.gpr(n);
            Some(match size {
                2 => v & 0xffff,
                4 => v & 0xffff_ffff,
                _ => v,
            })
        })
        .ok_or(Exception::Gp(0))?;
    let seg = segment_of(i.memory_segment()).ok_or(Exception::Gp(0))?;
    let cache = cpu.segment(seg);
    let addr = segment::linear(seg, &cache, offset, len, access, mode.is_64())?;
    if mode.is_64() {
        let last = addr.wrapping_add(u64::from(len) - 1);
        let canonical = pvops::table::is_canonical;
        if !canonical(addr) || !canonical(last) || last < addr {
            return Err(if seg == Segment::Ss {
                Exception::Ss(0)
            } else {
                Exception::Gp(0)
            });
        }
    }
    Ok(addr)
}

fn read_operand<C: CpuState + ?Sized, M: GuestMemory + ?Sized>(
    cpu: &C,
    mem: &M,
    i: &Instruction,
    mode: Mode,
    buf: &mut [u8],
) -> Result<(), Exception> {
    let addr = operand_linear(cpu, i, mode, buf.len() as u32, SegAccess::Read)?;
    mem.read(addr, buf, Access::Read).map_err(Exception::Pf)
}

/// Stage a write of `data` to the memory operand (segmentation checked
/// now, paging at commit).
fn stage_write<C: CpuState + ?Sized>(
    cpu: &C,
    i: &Instruction,
    mode: Mode,
    data: &[u8],
) -> Result<(u64, [u8; 10], usize, Access), Exception> {
    let addr = operand_linear(cpu, i, mode, data.len() as u32, SegAccess::Write)?;
    let mut b = [0u8; 10];
    b[..data.len()].copy_from_slice(data);
    Ok((addr, b, data.len(), Access::Write))
}

/// The 16-bit selector operand of LTR/LLDT (register or memory).
fn selector_operand<C: CpuState + ?Sized, M: GuestMemory + ?Sized>(
    cpu: &C,
    mem: &M,
    i: &Instruction,
    mode: Mode,
) -> Result<u16, Exception> {
    match i.op0_kind() {
        OpKind::Register => {
            let (n, _) = gpr(i.op0_register()).ok_or(Exception::Ud)?;
            Ok(cpu.gpr(n) as u16)
        }
        OpKind::Memory => {
            let mut b = [0u8; 2];
            read_operand(cpu, mem, i, mode, &mut b)?;
            Ok(u16::from_le_bytes(b))
        }
        _ => Err(Exception::Ud),
    }
}

/// STR/SLDT's destination.
fn store_selector<C: CpuState + ?Sized>(
    cpu: &C,
    i: &Instruction,
    mode: Mode,
    sel: Selector,
    e: &mut Effect,
) -> Result<(), Exception> {
    let v = u64::from(sel.bits());
    match i.op0_kind() {
        OpKind::Register => {
            let (n, size) = gpr(i.op0_register()).ok_or(Exception::Ud)?;
            let new = if size == 2 {
                (cpu.gpr(n) & !0xffff) | v
            } else {
                v
            };
            e.gpr = Some((n, new));
        }
        OpKind::Memory => e.write = Some(stage_write(cpu, i, mode, &sel.bits().to_le_bytes())?),
        _ => return Err(Exception::Ud),
    }
    e.operand = v;
    Ok(())
}

/// LGDT/LIDT's pseudo-descriptor.
fn load_pointer<C: CpuState + ?Sized, M: GuestMemory + ?Sized>(
    cpu: &C,
    mem: &M,
    i: &Instruction,
    mode: Mode,
) -> Result<DescriptorTablePointer, Exception> {
    if i.op0_kind() != OpKind::Memory {
        return Err(Exception::Ud);
    }
    let mut b = [0u8; 10];
    let len = if mode.is_64() { 10 } else { 6 };
    read_operand(cpu, mem, i, mode, &mut b[..len])?;
    let limit = u16::from_le_bytes([b[0], b[1]]);
    let mut base = u64::from_le_bytes(b[2..].try_into().unwrap_or_default());
    if mode.is_64() {
        if !pvops::table::is_canonical(base) {
            return Err(Exception::Gp(0));
        }
    } else if matches!(i.code(), Code::Lgdt_m1632_16 | Code::Lidt_m1632_16) {
        base &= 0x00ff_ffff;
    }
    Ok(DescriptorTablePointer { limit, base })
}

/// LTR/LLDT: the selector, the descriptor, the checks.
fn load_system<C: CpuState + ?Sized, M: GuestMemory + ?Sized>(
    cpu: &C,
    mem: &M,
    i: &Instruction,
    mode: Mode,
    kind: SystemLoad,
    e: &mut Effect,
) -> Result<(), Exception> {
    let mut dt = cpu.descriptor_tables();
    let sel = selector_operand(cpu, mem, i, mode)?;
    e.operand = u64::from(sel);
    let Some(at) = system::locate(kind, sel, dt.gdtr, mode.ia32e)? else {
        // LLDT with a null selector: LDTR unusable.
        dt.ldtr = Selector(sel);
        dt.ldtr_base = 0;
        dt.ldtr_limit = 0;
        e.dt = Some(dt);
        return Ok(());
    };
    let mut b = [0u8; 16];
    mem.read(at.addr, &mut b[..at.size as usize], Access::ImplicitRead)
        .map_err(Exception::Pf)?;
    let low = u64::from_le_bytes(b[..8].try_into().unwrap_or_default());
    let high = u64::from_le_bytes(b[8..].try_into().unwrap_or_default());
    let c = system::check(kind, sel, low, high, mode.ia32e)?;
    if let Some(busy) = c.busy_byte {
        let mut w = [0u8; 10];
        w[0] = busy;
        e.write = Some((at.addr.wrapping_add(5), w, 1, Access::ImplicitWrite));
        dt.tr = Selector(sel);
        dt.tr_base = c.base;
        dt.tr_limit = c.limit;
    } else {
        dt.ldtr = Selector(sel);
        dt.ldtr_base = c.base;
        dt.ldtr_limit = c.limit;
    }
    e.dt = Some(dt);
    Ok(())
}

/// Check and stage `insn` (decoded as `i` in `mode`).
pub(crate) fn execute<C: CpuState + ?Sized, M: GuestMemory + ?Sized>(
    cpu: &C,
    mem: &M,
    i: &Instruction,
    insn: Insn,
    mode: Mode,
) -> Result<Effect, Exception> {
    if i.has_lock_prefix() {
        return Err(Exception::Ud);
    }
    if cpu.cpl() > 0 && (insn.is_load() || cpu.umip()) {
        return Err(Exception::Gp(0));
    }
    let mut dt = cpu.descriptor_tables();
    let mut e = Effect::default();
    match insn {
        Insn::Lgdt | Insn::Lidt => {
            let p = load_pointer(cpu, mem, i, mode)?;
            if insn == Insn::Lgdt {
                dt.gdtr = p;
            } else {
                dt.idtr = p;
            }
            e.dt = Some(dt);
            e.operand = p.base;
        }
        Insn::Sgdt | Insn::Sidt => {
            if i.op0_kind() != OpKind::Memory {
                return Err(Exception::Ud);
            }
            let p = if insn == Insn::Sgdt { dt.gdtr } else { dt.idtr };
            let mut b = [0u8; 10];
            b[..2].copy_from_slice(&p.limit.to_le_bytes());
            b[2..].copy_from_slice(&p.base.to_le_bytes());
            let len = if mode.is_64() { 10 } else { 6 };
            e.write = Some(stage_write(cpu, i, mode, &b[..len])?);
            e.operand = if mode.is_64() {
                p.base
            } else {
                p.base & 0xffff_ffff
            };
        }
        Insn::Ltr => load_system(cpu, mem, i, mode, SystemLoad::Ltr, &mut e)?,
        Insn::Lldt => load_system(cpu, mem, i, mode, SystemLoad::Lldt, &mut e)?,
        Insn::Str => store_selector(cpu, i, mode, dt.tr, &mut e)?,
        Insn::Sldt => store_selector(cpu, i, mode, dt.ldtr, &mut e)?,
    }
    Ok(e)
}
