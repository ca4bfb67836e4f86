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
//! # Semantics (SDM vol. 2 LGDT/LIDT, LTR, LLDT, SGDT/SIDT, STR, SLDT)
//! In every protected mode: legacy 32-bit protected mode with 16- or 32-bit
//! code ([`segment`]: CS.D), compatibility mode and 64-bit mode (EFER.LMA,
//! CS.L); real and virtual-8086 mode are not modelled. [`fetch`] fetches
//! through CS and the guest's paging (across pages), decodes at the mode's
//! bitness; `exec` checks and stages every operand form; [`system`] holds
//! the LTR/LLDT checks shared with [`crate::softcpu`]. In order:
//! * A LOCK prefix: #UD.
//! * LGDT/LIDT/LTR/LLDT at virtual CPL > 0: #GP(0); SGDT/SIDT/STR/SLDT at
//!   CPL > 0 with virtual CR4.UMIP: #GP(0).
//! * Memory operands: any ModRM form at the instruction's address size
//!   (16-bit `[bx+si]`, 32-bit SIB, RIP-relative), through the segment
//!   ([`segment::linear`]: type, limit, expand-down, unusable: #GP(0) or
//!   #SS(0)) outside 64-bit mode, canonical first and last byte in 64-bit
//!   mode (#GP(0), #SS(0) through SS); a failed access: #PF with CR2 and
//!   the error code. Nothing is committed before every access and check has
//!   passed (the one memory write, SGDT/SIDT/STR/SLDT's store or LTR's
//!   busy bit, is made first at commit).
//! * LGDT/LIDT: 10 bytes in 64-bit mode (non-canonical base: #GP(0)), else
//!   6 bytes, the base truncated to 24 bits with a 16-bit operand size.
//!   SGDT/SIDT: 10 bytes in 64-bit mode, else 6 with the 32-bit base.
//! * LTR/LLDT: [`system`]'s checks (8-byte descriptors in legacy mode,
//!   16-byte in IA-32e mode); LTR sets the busy bit in the GDT (the type
//!   byte, written alone as the CPU's locked update does).
//! * STR/SLDT to a register: a 16-bit destination keeps the rest, a 32- or
//!   64-bit one is zero-extended; to memory: 2 bytes whatever the operand
//!   size.
//!
//! Guest values are never trusted: every address computation wraps or is
//! checked, and a malformed instruction is [`Outcome::NotEmulated`], never a
//! panic.

// The QEMU differential runs QEMU through the runners' `qemu` module,
// which comes with the `kvm` feature.
#[cfg(feature = "kvm")]
pub mod diff;
mod exec;
#[cfg(feature = "kvm")]
pub(crate) use exec::segment_of;
pub mod fetch;
pub mod mock;
pub mod paged;
pub mod profile;
pub mod segment;
pub mod system;
pub mod walk;

use std::fmt;

use iced_x86::Mnemonic;

pub use crate::softcpu::DtRegisters;
pub use fetch::Mode;
pub use segment::SegmentCache;

/// The longest x86 instruction.
pub const MAX_INSN_LEN: usize = 15;

/// A segment register (x86 numbering order).
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
    /// A segment register's hidden part (base, limit, attributes). In
    /// 64-bit mode only CS.L/CS.D and the FS/GS bases are used.
    fn segment(&self, seg: Segment) -> SegmentCache;
    /// EFER.LMA: IA-32e mode (with CS.L: 64-bit mode; without:
    /// compatibility mode). False: legacy protected mode.
    fn long_mode_active(&self) -> bool;
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

    /// Run `f` with other agents' writes to the `len` bytes at linear
    /// `addr` held off, as a hypervisor does by write-protecting the page
    /// (another vCPU's store then traps and waits until `f` is done). The
    /// emulator re-fetches the instruction and commits inside it (see
    /// [`emulate`]). The default holds nothing off: right for a memory no
    /// one else writes during an exit (one vCPU, stopped); with concurrent
    /// writers the re-check alone then catches most races, not all (a
    /// fetch torn the same way twice).
    fn without_writers<R>(&self, addr: u64, len: usize, f: impl FnOnce() -> R) -> R {
        let _ = (addr, len);
        f()
    }
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
    /// The instruction's bytes could not be fetched: the #GP(0) (CS limit,
    /// non-canonical RIP) or #PF the CPU's own fetch would raise. The caller
    /// delivers the original fault (the CPU did fetch the bytes when it
    /// faulted).
    Fetch(Exception),
    /// The bytes do not decode to a valid instruction in the vCPU's mode.
    Undecodable,
    /// The instruction's bytes changed while it was being emulated (the
    /// self-modifying-code race, see [`emulate`]): nothing was done; the
    /// caller resumes the guest at the same RIP, unchanged, so the vCPU
    /// re-executes what is there now.
    Changed,
    /// A valid instruction, but not one of [`Insn::ALL`] (its mnemonic).
    Other(String),
}

impl fmt::Display for NotEmulated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotEmulated::Fetch(e) => write!(f, "instruction fetch raises {e}"),
            NotEmulated::Undecodable => write!(f, "undecodable instruction"),
            NotEmulated::Changed => write!(f, "instruction bytes changed during emulation"),
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

/// Fetch the instruction at CS:RIP (up to 15 bytes, through CS and the
/// guest's paging), decode it in the vCPU's mode and emulate it.
///
/// # The self-modifying-code race
/// Another vCPU (or a DMA) may rewrite the instruction between the fault
/// and this fetch, or while it runs (SDM vol. 3A 8.1.3 leaves unsynchronized
/// cross-modifying code model-specific; a hypervisor must still never run
/// bytes that were never there). The emulator fetches once, decodes and
/// checks from that one snapshot and stages every effect. Then, with other
/// writers held off ([`GuestMemory::without_writers`]), it fetches the
/// instruction's bytes again: if they differ, nothing is committed and the
/// answer is [`NotEmulated::Changed`]; if not, it commits before letting
/// writers go. The second fetch sees memory at one instant, so an equal
/// first fetch was not torn: the instruction emulated was in memory, whole,
/// when it was committed. The caller then
/// resumes the guest at the same RIP with its registers as at the fault
/// (a fault leaves the state as before the instruction), so the vCPU
/// re-executes whatever is there now: an instruction that still faults
/// traps again. What is emulated is thus always an instruction whose bytes
/// were in memory, whole, after every read it made, and an exception is
/// injected (or the original #GP delivered) only for bytes that were still
/// there after the decision. See `tests/emulate_smc.rs`.
pub fn emulate<C: CpuState, M: GuestMemory>(cpu: &mut C, mem: &M) -> Outcome {
    use profile::{Phase, enter};
    let mode = Mode::of(cpu);
    let f = {
        let _p = enter(Phase::Fetch);
        fetch::fetch(cpu, mem, mode)
    };
    let (outcome, effect, len) = decide(cpu, mem, &f, mode);
    if matches!(outcome, Outcome::NotEmulated(NotEmulated::Fetch(_))) {
        return outcome;
    }
    let at = fetch::byte_linear(cpu, mode, 0).unwrap_or(cpu.rip());
    mem.without_writers(at, len.max(1), || {
        let _p = enter(Phase::Recheck);
        let again = fetch::fetch(cpu, mem, mode);
        if again.n < len || again.bytes[..len] != f.bytes[..len] {
            return Outcome::NotEmulated(NotEmulated::Changed);
        }
        let _p = enter(Phase::Commit);
        finish(cpu, mem, outcome, effect)
    })
}

/// Where execution resumes after an instruction of `len` bytes at the
/// vCPU's RIP ([`Outcome::Emulated`]'s "advance RIP by `len`"): RIP + len
/// in 64-bit mode, else EIP + len modulo 4 GiB, in 16-bit code too (CS.D
/// = 0): IP does not wrap at 64 KiB, so an instruction whose last byte is
/// at offset 0xFFFF resumes at offset 0x10000, where the next fetch
/// meets CS's limit (SDM vol. 3A 5.3: #GP(0) if "the code segment limit
/// is exceeded"; [`fetch`] checks each byte's EIP + k the same way).
/// QEMU TCG resumes there too (the 32-bit differential's TF scenarios),
/// and a real CPU faults at EIP 0x10000 (a 16-bit program run under KVM,
/// dosemu2 pull request 2807; OS/2 Museum, "Does (E)IP wrap around in
/// 16-bit segments?").
pub fn next_rip<C: CpuState + ?Sized>(cpu: &C, len: usize) -> u64 {
    let next = cpu.rip().wrapping_add(len as u64);
    if Mode::of(cpu).is_64() {
        next
    } else {
        next & 0xffff_ffff
    }
}

/// Emulate the instruction whose bytes (at the guest's RIP) are `bytes`
/// (no fetch, so no re-check).
pub fn emulate_bytes<C: CpuState, M: GuestMemory>(cpu: &mut C, mem: &M, bytes: &[u8]) -> Outcome {
    let mode = Mode::of(cpu);
    let mut f = fetch::Fetched {
        bytes: [0; MAX_INSN_LEN],
        n: bytes.len().min(MAX_INSN_LEN),
        stop: None,
    };
    f.bytes[..f.n].copy_from_slice(&bytes[..f.n]);
    let (outcome, effect, _) = decide(cpu, mem, &f, mode);
    finish(cpu, mem, outcome, effect)
}

fn finish<C: CpuState, M: GuestMemory>(
    cpu: &mut C,
    mem: &M,
    outcome: Outcome,
    effect: Option<exec::Effect>,
) -> Outcome {
    match (outcome, effect) {
        (Outcome::Emulated { insn, len, operand }, Some(e)) => match exec::commit(cpu, mem, &e) {
            Ok(()) => Outcome::Emulated { insn, len, operand },
            Err(exception) => Outcome::Inject { insn, exception },
        },
        (o, _) => o,
    }
}

/// Decode and check: the outcome, the staged effect of an emulated
/// instruction, and how many fetched bytes the decision rests on.
fn decide<C: CpuState, M: GuestMemory>(
    cpu: &C,
    mem: &M,
    f: &fetch::Fetched,
    mode: Mode,
) -> (Outcome, Option<exec::Effect>, usize) {
    let decoded = {
        let _p = profile::enter(profile::Phase::Decode);
        fetch::decode(f, cpu.rip(), mode)
    };
    let i = match decoded {
        Ok(i) => i,
        Err(fetch::DecodeError::Fetch(e)) => {
            return (Outcome::NotEmulated(NotEmulated::Fetch(e)), None, 0);
        }
        Err(fetch::DecodeError::Invalid(locked)) => {
            let o = match locked.and_then(|j| Insn::from_mnemonic(j.mnemonic()).map(|x| (j, x))) {
                Some((j, insn)) => {
                    return (
                        Outcome::Inject {
                            insn,
                            exception: Exception::Ud,
                        },
                        None,
                        j.len(),
                    );
                }
                None => Outcome::NotEmulated(NotEmulated::Undecodable),
            };
            return (o, None, f.n);
        }
    };
    let Some(insn) = Insn::from_mnemonic(i.mnemonic()) else {
        let o = Outcome::NotEmulated(NotEmulated::Other(format!("{:?}", i.mnemonic())));
        return (o, None, i.len());
    };
    let _p = profile::enter(profile::Phase::Execute);
    match exec::execute(cpu, mem, &i, insn, mode) {
        Ok(e) => (
            Outcome::Emulated {
                insn,
                len: i.len(),
                operand: e.operand,
            },
            Some(e),
            i.len(),
        ),
        Err(exception) => (Outcome::Inject { insn, exception }, None, i.len()),
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_modes;
