//! An x86-64 instruction emulator for the descriptor-table instructions:
//! the hypervisor's half of trap-and-emulate.
//!
//! A deprivileged kernel that executes `lgdt`, `lidt`, `ltr`, `lldt` (and,
//! with CR4.UMIP, `sgdt`, `sidt`, `str`, `sldt`) raises #GP. The hypervisor
//! takes the fault, fetches the instruction through the guest's paging,
//! decodes it, reads the memory operand, checks it as the CPU would, and
//! applies it to the guest's *virtual* descriptor-table registers:
//! [`emulate`] does all of that and answers with an [`Outcome`]:
//! [`Outcome::Emulated`] (advance RIP by `len`), [`Outcome::Inject`] (deliver
//! this exception to the guest instead), or [`Outcome::NotEmulated`] (not one
//! of these instructions: deliver the original fault).
//!
//! The shape follows Cloud Hypervisor's x86 emulator: decoding is
//! iced-x86's, and the CPU state ([`CpuState`]) and guest memory
//! ([`GuestMemory`]) sit behind two separate traits, so the same code runs
//! against a real vCPU ([`crate::kvm::trap`]) and against mocks
//! ([`mock`]) in unit tests and benchmarks.
//!
//! # Semantics (64-bit mode; SDM vol. 2 LGDT/LIDT, LTR, LLDT, SGDT/SIDT, STR, SLDT)
//! * A LOCK prefix: #UD.
//! * LGDT/LIDT/LTR/LLDT at virtual CPL > 0: #GP(0); SGDT/SIDT/STR/SLDT at
//!   CPL > 0 with virtual CR4.UMIP: #GP(0).
//! * Memory operands: any ModRM form (RIP-relative, base + index × scale +
//!   displacement, 32-bit address size, FS/GS overrides); an effective
//!   address whose first or last byte is non-canonical: #GP(0), or #SS(0)
//!   when the segment is SS (RSP/RBP based); a failed access: #PF with the
//!   memory's address and error code. Nothing is committed before every
//!   access and check has passed.
//! * LGDT/LIDT read the 10-byte m16&64 operand; a non-canonical base:
//!   #GP(0) (as [`crate::softcpu`]).
//! * LTR/LLDT, with the same checks and order as [`crate::softcpu`]: a null
//!   selector is #GP(0) for LTR and empties LDTR for LLDT; TI = 1 or a
//!   16-byte descriptor past the GDT limit: #GP(selector); a code/data
//!   descriptor or the wrong type (LTR: available 64-bit TSS, type 9 — a
//!   busy one is refused; LLDT: LDT, type 2): #GP(selector); not present:
//!   #NP(selector); a non-zero type in the upper half or a non-canonical
//!   base: #GP(selector). LTR then sets the busy bit in the GDT (the type
//!   byte, written alone as the CPU's locked update does).
//! * STR/SLDT to a register: a 16-bit destination keeps bits 63:16, a 32-
//!   or 64-bit one is zero-extended; to memory: 2 bytes whatever the
//!   operand size. SGDT/SIDT store 10 bytes.
//!
//! Guest values are never trusted: every address computation wraps or is
//! checked, and a malformed instruction is [`Outcome::NotEmulated`], never a
//! panic.

pub mod mock;
pub mod segment;
pub mod walk;

use std::fmt;

use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};
use pvops::descriptor::SystemType;
use pvops::{Descriptor, DescriptorTablePointer, Selector, TableIndicator};

pub use crate::softcpu::DtRegisters;

/// The longest x86 instruction.
pub const MAX_INSN_LEN: usize = 15;

/// A segment register, for memory-operand segment bases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Segment {
    /// ES (base 0 in 64-bit mode).
    Es,
    /// CS (base 0 in 64-bit mode).
    Cs,
    /// SS (base 0 in 64-bit mode).
    Ss,
    /// DS (base 0 in 64-bit mode).
    Ds,
    /// FS.
    Fs,
    /// GS.
    Gs,
}

/// The vCPU state the emulator reads and changes.
///
/// A safe trait: the emulator treats every value it reads (registers, the
/// virtual descriptor-table registers) as guest data and reaches guest
/// memory only through [`GuestMemory`], never by dereferencing them.
pub trait CpuState {
    /// General-purpose register `n` in x86 numbering (0 = rax, 1 = rcx, 2 =
    /// rdx, 3 = rbx, 4 = rsp, 5 = rbp, 6 = rsi, 7 = rdi, 8–15 = r8–r15).
    fn gpr(&self, n: u8) -> u64;
    /// Write general-purpose register `n` (all 64 bits).
    fn set_gpr(&mut self, n: u8, value: u64);
    /// The address of the faulting instruction.
    fn rip(&self) -> u64;
    /// A segment's base (only FS and GS have one in 64-bit mode).
    fn segment_base(&self, seg: Segment) -> u64;
    /// The guest's *virtual* CPL (0 for a kernel that believes it runs in
    /// ring 0, whatever ring the vCPU really runs in).
    fn cpl(&self) -> u8;
    /// The guest's virtual CR4.UMIP.
    fn umip(&self) -> bool;
    /// The guest's virtual descriptor-table registers.
    fn descriptor_tables(&self) -> DtRegisters;
    /// Replace them (called once, after every check passed).
    fn set_descriptor_tables(&mut self, dt: DtRegisters);
}

/// How the guest's memory is being accessed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Instruction fetch.
    Fetch,
    /// Data read by the instruction (its memory operand).
    Read,
    /// Data write by the instruction.
    Write,
    /// The CPU's own read of a descriptor table (implicit, supervisor).
    ImplicitRead,
    /// The CPU's own write of a descriptor table (LTR's busy bit).
    ImplicitWrite,
}

impl Access {
    /// Does it write?
    pub fn is_write(self) -> bool {
        matches!(self, Access::Write | Access::ImplicitWrite)
    }
}

/// A failed guest-memory access: what #PF would report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageFault {
    /// The linear address that failed (CR2).
    pub addr: u64,
    /// The #PF error code (P, W/R, U/S, I/D bits).
    pub error_code: u32,
}

/// The guest's memory, addressed linearly (through the guest's paging).
///
/// A safe trait: it returns bytes and faults, nothing the emulator
/// dereferences, so a wrong answer is a wrong emulation, not undefined
/// behaviour. An implementation must be sound for every address itself.
pub trait GuestMemory {
    /// Read `buf.len()` bytes at `addr`.
    fn read(&self, addr: u64, buf: &mut [u8], access: Access) -> Result<(), PageFault>;
    /// Write `data` at `addr`.
    fn write(&self, addr: u64, data: &[u8], access: Access) -> Result<(), PageFault>;
}

/// An exception the emulator wants delivered to the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exception {
    /// #UD (vector 6).
    Ud,
    /// #NP(error code) (vector 11).
    Np(u16),
    /// #SS(error code) (vector 12).
    Ss(u16),
    /// #GP(error code) (vector 13).
    Gp(u16),
    /// #PF (vector 14), with CR2 and the error code.
    Pf(PageFault),
}

impl Exception {
    /// The vector.
    pub fn vector(self) -> u8 {
        match self {
            Exception::Ud => 6,
            Exception::Np(_) => 11,
            Exception::Ss(_) => 12,
            Exception::Gp(_) => 13,
            Exception::Pf(_) => 14,
        }
    }

    /// The error code pushed with it, if the vector has one.
    pub fn error_code(self) -> Option<u32> {
        match self {
            Exception::Ud => None,
            Exception::Np(e) | Exception::Ss(e) | Exception::Gp(e) => Some(u32::from(e)),
            Exception::Pf(pf) => Some(pf.error_code),
        }
    }
}

impl fmt::Display for Exception {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exception::Ud => write!(f, "#UD"),
            Exception::Np(e) => write!(f, "#NP({e:#x})"),
            Exception::Ss(e) => write!(f, "#SS({e:#x})"),
            Exception::Gp(e) => write!(f, "#GP({e:#x})"),
            Exception::Pf(pf) => write!(f, "#PF(addr {:#x}, error {:#x})", pf.addr, pf.error_code),
        }
    }
}

/// The instructions this emulator handles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Insn {
    /// LGDT m16&64.
    Lgdt,
    /// LIDT m16&64.
    Lidt,
    /// LTR r/m16.
    Ltr,
    /// LLDT r/m16.
    Lldt,
    /// SGDT m.
    Sgdt,
    /// SIDT m.
    Sidt,
    /// STR r/m16.
    Str,
    /// SLDT r/m16.
    Sldt,
}

impl Insn {
    /// All of them.
    pub const ALL: [Insn; 8] = [
        Insn::Lgdt,
        Insn::Lidt,
        Insn::Ltr,
        Insn::Lldt,
        Insn::Sgdt,
        Insn::Sidt,
        Insn::Str,
        Insn::Sldt,
    ];

    /// The mnemonic.
    pub fn name(self) -> &'static str {
        match self {
            Insn::Lgdt => "lgdt",
            Insn::Lidt => "lidt",
            Insn::Ltr => "ltr",
            Insn::Lldt => "lldt",
            Insn::Sgdt => "sgdt",
            Insn::Sidt => "sidt",
            Insn::Str => "str",
            Insn::Sldt => "sldt",
        }
    }

    /// Loads (privileged at any CPL > 0) rather than stores (which fault
    /// only under UMIP).
    pub fn is_load(self) -> bool {
        matches!(self, Insn::Lgdt | Insn::Lidt | Insn::Ltr | Insn::Lldt)
    }

    fn from_mnemonic(m: Mnemonic) -> Option<Insn> {
        Some(match m {
            Mnemonic::Lgdt => Insn::Lgdt,
            Mnemonic::Lidt => Insn::Lidt,
            Mnemonic::Ltr => Insn::Ltr,
            Mnemonic::Lldt => Insn::Lldt,
            Mnemonic::Sgdt => Insn::Sgdt,
            Mnemonic::Sidt => Insn::Sidt,
            Mnemonic::Str => Insn::Str,
            Mnemonic::Sldt => Insn::Sldt,
            _ => return None,
        })
    }
}

impl fmt::Display for Insn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why an instruction was not emulated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotEmulated {
    /// The instruction bytes could not be fetched (the caller delivers the
    /// original fault; a #PF on the fetch itself would be the CPU's).
    Fetch(PageFault),
    /// The bytes do not decode to a valid 64-bit instruction.
    Undecodable,
    /// A valid instruction, but not one of [`Insn::ALL`] (its mnemonic).
    Other(String),
}

impl fmt::Display for NotEmulated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotEmulated::Fetch(pf) => write!(f, "instruction fetch failed at {:#x}", pf.addr),
            NotEmulated::Undecodable => write!(f, "undecodable instruction"),
            NotEmulated::Other(m) => write!(f, "{m} is not a descriptor-table instruction"),
        }
    }
}

/// What the emulator did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Done: the caller advances RIP by `len`. `operand` is the selector
    /// loaded/stored, or the table base loaded/stored.
    Emulated {
        /// Which instruction.
        insn: Insn,
        /// Its length in bytes.
        len: usize,
        /// Selector or table base.
        operand: u64,
    },
    /// The instruction faults: deliver this to the guest (RIP unchanged).
    Inject {
        /// Which instruction.
        insn: Insn,
        /// The exception.
        exception: Exception,
    },
    /// Not a descriptor-table instruction: deliver the original fault.
    NotEmulated(NotEmulated),
}

use pvops::table::is_canonical as canonical;

/// Fetch the instruction at the guest's RIP (up to 15 bytes, fewer where
/// the next page is not mapped) and emulate it.
pub fn emulate<C: CpuState, M: GuestMemory>(cpu: &mut C, mem: &M) -> Outcome {
    let rip = cpu.rip();
    let mut bytes = [0u8; MAX_INSN_LEN];
    // Up to the end of RIP's page first, then the rest if the next page is
    // mapped: an instruction may straddle a page boundary.
    let first = ((4096 - (rip & 0xfff)) as usize).min(MAX_INSN_LEN);
    if let Err(pf) = mem.read(rip, &mut bytes[..first], Access::Fetch) {
        return Outcome::NotEmulated(NotEmulated::Fetch(pf));
    }
    let mut n = first;
    if first < MAX_INSN_LEN
        && mem
            .read(
                rip.wrapping_add(first as u64),
                &mut bytes[first..],
                Access::Fetch,
            )
            .is_ok()
    {
        n = MAX_INSN_LEN;
    }
    emulate_bytes(cpu, mem, &bytes[..n])
}

/// Emulate the instruction whose bytes (at the guest's RIP) are `bytes`.
pub fn emulate_bytes<C: CpuState, M: GuestMemory>(cpu: &mut C, mem: &M, bytes: &[u8]) -> Outcome {
    let rip = cpu.rip();
    let mut d = Decoder::with_ip(64, bytes, rip, DecoderOptions::NONE);
    let i = d.decode();
    if i.is_invalid() {
        // A LOCK prefix makes a valid instruction invalid: #UD if that is
        // all that is wrong with one of ours.
        let mut d = Decoder::with_ip(64, bytes, rip, DecoderOptions::NO_INVALID_CHECK);
        let j = d.decode();
        if !j.is_invalid()
            && j.has_lock_prefix()
            && let Some(insn) = Insn::from_mnemonic(j.mnemonic())
        {
            return Outcome::Inject {
                insn,
                exception: Exception::Ud,
            };
        }
        return Outcome::NotEmulated(NotEmulated::Undecodable);
    }
    let Some(insn) = Insn::from_mnemonic(i.mnemonic()) else {
        return Outcome::NotEmulated(NotEmulated::Other(format!("{:?}", i.mnemonic())));
    };
    match execute(cpu, mem, &i, insn) {
        Ok(operand) => Outcome::Emulated {
            insn,
            len: i.len(),
            operand,
        },
        Err(exception) => Outcome::Inject { insn, exception },
    }
}

/// A general-purpose register's number and size in bytes.
fn gpr(reg: Register) -> Option<(u8, u8)> {
    let r = reg as u32;
    let block = |first: Register, size: u8| {
        let f = first as u32;
        (r >= f && r < f + 16).then(|| ((r - f) as u8, size))
    };
    block(Register::AX, 2)
        .or_else(|| block(Register::EAX, 4))
        .or_else(|| block(Register::RAX, 8))
}

fn segment(reg: Register) -> Option<Segment> {
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

/// The memory operand's linear address, checked canonical for `len` bytes.
fn operand_address<C: CpuState>(cpu: &C, i: &Instruction, len: u64) -> Result<u64, Exception> {
    let addr = i
        .virtual_address(0, 0, |reg, _, _| {
            if let Some(seg) = segment(reg) {
                return Some(match seg {
                    Segment::Fs | Segment::Gs => cpu.segment_base(seg),
                    _ => 0,
                });
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
    let last = addr.wrapping_add(len - 1);
    if !canonical(addr) || !canonical(last) || last < addr {
        return Err(if i.memory_segment() == Register::SS {
            Exception::Ss(0)
        } else {
            Exception::Gp(0)
        });
    }
    Ok(addr)
}

fn read_operand<C: CpuState, M: GuestMemory>(
    cpu: &C,
    mem: &M,
    i: &Instruction,
    buf: &mut [u8],
) -> Result<(), Exception> {
    let addr = operand_address(cpu, i, buf.len() as u64)?;
    mem.read(addr, buf, Access::Read).map_err(Exception::Pf)
}

fn write_operand<C: CpuState, M: GuestMemory>(
    cpu: &C,
    mem: &M,
    i: &Instruction,
    data: &[u8],
) -> Result<(), Exception> {
    let addr = operand_address(cpu, i, data.len() as u64)?;
    mem.write(addr, data, Access::Write).map_err(Exception::Pf)
}

/// The 16-bit selector operand of LTR/LLDT (register or memory).
fn selector_operand<C: CpuState, M: GuestMemory>(
    cpu: &C,
    mem: &M,
    i: &Instruction,
) -> Result<Selector, Exception> {
    match i.op0_kind() {
        OpKind::Register => {
            let (n, _) = gpr(i.op0_register()).ok_or(Exception::Ud)?;
            Ok(Selector(cpu.gpr(n) as u16))
        }
        OpKind::Memory => {
            let mut b = [0u8; 2];
            read_operand(cpu, mem, i, &mut b)?;
            Ok(Selector(u16::from_le_bytes(b)))
        }
        _ => Err(Exception::Ud),
    }
}

fn dt_pointer_bytes(p: DescriptorTablePointer) -> [u8; 10] {
    let mut b = [0u8; 10];
    b[..2].copy_from_slice(&p.limit.to_le_bytes());
    b[2..].copy_from_slice(&p.base.to_le_bytes());
    b
}

/// Fetch and check the 16-byte system descriptor `sel` names for LTR/LLDT
/// (the order of [`crate::softcpu`]): returns its address, low half and
/// base. `want` is the only acceptable system type.
fn system_descriptor<M: GuestMemory>(
    mem: &M,
    dt: &DtRegisters,
    sel: Selector,
    want: SystemType,
) -> Result<(u64, Descriptor, u64), Exception> {
    let ec = sel.bits() & 0xfffc;
    if sel.ti() == TableIndicator::Ldt {
        return Err(Exception::Gp(ec));
    }
    let off = u64::from(sel.index()) * 8;
    if off + 15 > u64::from(dt.gdtr.limit) {
        return Err(Exception::Gp(ec));
    }
    let addr = dt.gdtr.base.wrapping_add(off);
    let mut b = [0u8; 16];
    mem.read(addr, &mut b, Access::ImplicitRead)
        .map_err(Exception::Pf)?;
    let low = Descriptor(u64::from_le_bytes(b[..8].try_into().unwrap_or_default()));
    let high = u64::from_le_bytes(b[8..].try_into().unwrap_or_default());
    if low.is_code_or_data() || low.system_type() != want {
        return Err(Exception::Gp(ec));
    }
    if !low.present() {
        return Err(Exception::Np(ec));
    }
    if (high >> 40) & 0x1f != 0 {
        return Err(Exception::Gp(ec));
    }
    let base = u64::from(low.base()) | (high << 32);
    if !canonical(base) {
        return Err(Exception::Gp(ec));
    }
    Ok((addr, low, base))
}

/// Write a 16-bit selector to STR/SLDT's destination.
fn store_selector<C: CpuState, M: GuestMemory>(
    cpu: &mut C,
    mem: &M,
    i: &Instruction,
    sel: Selector,
) -> Result<(), Exception> {
    match i.op0_kind() {
        OpKind::Register => {
            let (n, size) = gpr(i.op0_register()).ok_or(Exception::Ud)?;
            let v = u64::from(sel.bits());
            let new = if size == 2 {
                (cpu.gpr(n) & !0xffff) | v
            } else {
                v
            };
            cpu.set_gpr(n, new);
            Ok(())
        }
        OpKind::Memory => write_operand(cpu, mem, i, &sel.bits().to_le_bytes()),
        _ => Err(Exception::Ud),
    }
}

fn execute<C: CpuState, M: GuestMemory>(
    cpu: &mut C,
    mem: &M,
    i: &Instruction,
    insn: Insn,
) -> Result<u64, Exception> {
    if i.has_lock_prefix() {
        return Err(Exception::Ud);
    }
    let cpl = cpu.cpl();
    if cpl > 0 && (insn.is_load() || cpu.umip()) {
        return Err(Exception::Gp(0));
    }
    let mut dt = cpu.descriptor_tables();
    match insn {
        Insn::Lgdt | Insn::Lidt => {
            if i.op0_kind() != OpKind::Memory {
                return Err(Exception::Ud);
            }
            let mut b = [0u8; 10];
            read_operand(cpu, mem, i, &mut b)?;
            let p = DescriptorTablePointer {
                limit: u16::from_le_bytes([b[0], b[1]]),
                base: u64::from_le_bytes(b[2..].try_into().unwrap_or_default()),
            };
            if !canonical(p.base) {
                return Err(Exception::Gp(0));
            }
            if insn == Insn::Lgdt {
                dt.gdtr = p;
            } else {
                dt.idtr = p;
            }
            cpu.set_descriptor_tables(dt);
            Ok(p.base)
        }
        Insn::Sgdt | Insn::Sidt => {
            if i.op0_kind() != OpKind::Memory {
                return Err(Exception::Ud);
            }
            let p = if insn == Insn::Sgdt { dt.gdtr } else { dt.idtr };
            write_operand(cpu, mem, i, &dt_pointer_bytes(p))?;
            Ok(p.base)
        }
        Insn::Ltr => {
            let sel = selector_operand(cpu, mem, i)?;
            if sel.is_null() {
                return Err(Exception::Gp(0));
            }
            let (addr, low, base) = system_descriptor(mem, &dt, sel, SystemType::Tss)?;
            // The busy bit: type byte (bits 40..47) with bit 1 set.
            let typ = ((low.0 >> 40) as u8) | 2;
            mem.write(addr.wrapping_add(5), &[typ], Access::ImplicitWrite)
                .map_err(Exception::Pf)?;
            dt.tr = sel;
            dt.tr_base = base;
            dt.tr_limit = low.effective_limit();
            cpu.set_descriptor_tables(dt);
            Ok(u64::from(sel.bits()))
        }
        Insn::Lldt => {
            let sel = selector_operand(cpu, mem, i)?;
            if sel.is_null() {
                dt.ldtr = sel;
                dt.ldtr_base = 0;
                dt.ldtr_limit = 0;
            } else {
                let (_, low, base) = system_descriptor(mem, &dt, sel, SystemType::Ldt)?;
                dt.ldtr = sel;
                dt.ldtr_base = base;
                dt.ldtr_limit = low.effective_limit();
            }
            cpu.set_descriptor_tables(dt);
            Ok(u64::from(sel.bits()))
        }
        Insn::Str => {
            store_selector(cpu, mem, i, dt.tr)?;
            Ok(u64::from(dt.tr.bits()))
        }
        Insn::Sldt => {
            store_selector(cpu, mem, i, dt.ldtr)?;
            Ok(u64::from(dt.ldtr.bits()))
        }
    }
}

#[cfg(test)]
mod tests;
