//! What the VMI-style backend needs from its environment, and the calling
//! convention of the 64-bit VMI-style ROM.
//!
//! # Transport
//! [`VmiPlatform`] has three entry points:
//! * [`read_phys`](ReadPhys::read_phys) (its supertrait [`ReadPhys`]) reads guest-physical memory for
//!   the probe (the option-ROM window 0xC0000..0xE0000). A kernel reads its
//!   identity or direct map; hv-sim serves its simulated ROM window.
//! * [`get_reloc`](VmiPlatform::get_reloc) calls the ROM's
//!   GetRelocationInfo jump point (ROM + 0x88) for one call number.
//! * [`call`](VmiPlatform::call) calls a ROM entry point: an `eip` that the
//!   relocation query returned, or VMI_Init (ROM + 0x80).
//!
//! In a kernel, `call` is an indirect `call` to the entry (the ROM contains
//! real code); in-process, hv-sim decodes the entry back to the call whose
//! stub sits at that offset of the ROM image it built, so calling a wrong
//! address is an error there too, not silently the right function.
//!
//! # 64-bit register convention (VMI was 32-bit only; this is ours)
//! The header, the call numbers and the relocation query are VMI API 3.0.
//! Entry points are called with the System V AMD64 convention:
//!
//! * arguments in **rdi, rsi, rdx, rcx** (at most four; unused ones are 0);
//! * result in **rax**; rax, rcx, rdx, rsi, rdi, r8–r11 and flags are
//!   clobbered, everything else is preserved; the stack is 16-byte aligned
//!   at the `call`, as for any SysV function;
//! * a call that is `void` in VMI returns **0 in rax, or `-errno`** when the
//!   hypervisor refuses it (VMI injected a fault instead; an errno lets a
//!   kernel report the rule). GetLDT/GetTR return the selector (0..=0xFFFF)
//!   or `-errno`;
//! * GetRelocationInfo (rdi = call number) returns `struct
//!   vmi_relocation_info` split over the SysV two-register return:
//!   **rax = eip, rdx = type** (0 NONE, 1 CALL_REL, 2 JUMP_REL, 3 NOP);
//! * VMI_Init takes no argument and returns 0 when the ROM is ready.
//!
//! | call | rdi | rsi | rdx | rcx | rax |
//! |---|---|---|---|---|---|
//! | SetGDT (3) / SetIDT (5) | &DTR (10 bytes: u16 limit, u64 base) | | | | 0 / -errno |
//! | GetGDT (7) / GetIDT (9) | &DTR (out) | | | | 0 / -errno |
//! | SetLDT (4) / SetTR (6) | GDT selector (0 = no LDT) | | | | 0 / -errno |
//! | GetLDT (8) / GetTR (10) | | | | | selector / -errno |
//! | WriteGDTEntry (11) | table base | index | descriptor, 8 bytes whole | high 8 bytes of a 16-byte TSS/LDT/call-gate descriptor, else 0 | 0 / -errno |
//! | WriteLDTEntry (12) | table base | index | descriptor, 8 bytes whole | 0 | 0 / -errno |
//! | WriteIDTEntry (13) | table base | vector | gate low 8 bytes | gate high 8 bytes | 0 / -errno |
//! | UpdateKernelStack (14) | TSS selector | sp0 | | | 0 / -errno |
//! | SetLazyMode (73) | mode: 0 none, 1 MMU, 2 CPU | | | | 0 / -errno |
//!
//! A 16-byte GDT entry is recognized by its low half, as the CPU does in
//! long mode: S = 0 and type LDT (2), TSS (9/0xB) or call gate (0xC) takes
//! slots `index` and `index + 1`; every other descriptor takes one slot and
//! needs rcx = 0.
//!
//! Built for 32-bit x86, the backend passes the original VMI layout: the
//! 6-byte DTR, and descriptors and gates as two 32-bit words (low word third,
//! high word fourth: regparm(3) puts them in ecx and on the stack).
//!
//! ## The ROM's stubs
//! Each call's entry point in hv-sim's ROM is real x86-64 code:
//! `mov eax, <call number>; out 0xE6, eax; ret` (`B8 nn nn nn nn E7 E6 C3`).
//! The `out` to [`VMI_PORT`] exits to the userspace VMM, which reads rax (the
//! call), rdi/rsi/rdx/rcx (the arguments), carries the call out and sets rax
//! (and rdx for GetRelocationInfo) before resuming at the `ret`. VMI_Init and
//! GetRelocationInfo use the pseudo-call numbers [`PSEUDO_INIT`] and
//! [`PSEUDO_GET_RELOC`]. `out` needs CPL <= IOPL: under hv-sim's KVM
//! runner the guest kernel runs ring-compressed at CPL 3 with RFLAGS.IOPL = 3.

/// The I/O port the ROM's stubs write to exit to the VMM (8-bit immediate
/// form of `out`, so rdx, an argument register, is not needed for the port).
pub const VMI_PORT: u8 = 0xE6;
/// eax value of the VMI_Init stub.
pub const PSEUDO_INIT: u32 = 0xFFFF_0000;
/// eax value of the GetRelocationInfo stub.
pub const PSEUDO_GET_RELOC: u32 = 0xFFFF_0001;

/// How the ROM wants a call made (`vmi_relocation_info.type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RelocType {
    /// 0: keep the native instruction; the hypervisor traps and emulates it.
    None,
    /// 1: call `eip`.
    CallRel,
    /// 2: jump to `eip` (only for call sites Linux patched: IRET, SYSEXIT).
    JumpRel,
    /// 3: the op is a no-op on this hypervisor.
    Nop,
}

impl RelocType {
    /// Decode the type byte.
    pub const fn from_u8(t: u8) -> Option<RelocType> {
        match t {
            0 => Some(RelocType::None),
            1 => Some(RelocType::CallRel),
            2 => Some(RelocType::JumpRel),
            3 => Some(RelocType::Nop),
            _ => None,
        }
    }

    /// The type byte.
    pub const fn as_u8(self) -> u8 {
        match self {
            RelocType::None => 0,
            RelocType::CallRel => 1,
            RelocType::JumpRel => 2,
            RelocType::Nop => 3,
        }
    }

    /// VMI's name (`NONE`, `CALL_REL`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            RelocType::None => "NONE",
            RelocType::CallRel => "CALL_REL",
            RelocType::JumpRel => "JUMP_REL",
            RelocType::Nop => "NOP",
        }
    }
}

/// One answer of the relocation query.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Relocation {
    /// Entry point (meaningful for CALL_REL / JUMP_REL).
    pub eip: u64,
    /// What to do.
    pub typ: RelocType,
}

impl Relocation {
    /// "Keep the native instruction".
    pub const NONE: Relocation = Relocation {
        eip: 0,
        typ: RelocType::None,
    };
}

/// Reading guest-physical memory for the ROM probe ([`rom::probe`] and
/// friends need only this).
///
/// A safe trait: the probe copies bytes into its own buffer and never
/// dereferences anything a reader returns, so a wrong answer is a refused
/// or misread ROM, not undefined behaviour. An implementation must itself
/// be sound for every `addr` (refuse what it cannot read).
///
/// [`rom::probe`]: crate::rom::probe
pub trait ReadPhys {
    /// Read `buf.len()` bytes of guest-physical memory at `addr`. Returns
    /// false if any byte is not readable (the probe then treats the slot as
    /// empty).
    fn read_phys(&self, addr: u64, buf: &mut [u8]) -> bool;
}

/// The VMI-style backend's environment (one per vCPU).
///
/// # Safety
/// [`VmiOps`](crate::VmiOps) dereferences what the hypervisor reports, also
/// in its safe ops (`store_ldt` reads the LDT descriptor in the GDT that
/// GetGDT names when no GDT was loaded through the backend). So an
/// implementation must guarantee, for a ROM that passed the probe on it:
///
/// * [`call`](VmiPlatform::call), given arguments that keep its contract,
///   reads and writes no memory but what its pointer arguments name (the
///   DTR operand of SetGDT/GetGDT, the tables it is told to write);
/// * GetGDT and GetIDT report base 0 and limit 0, or the table last loaded
///   with SetGDT/SetIDT (whose caller promised it stays valid memory of this
///   address space while loaded), or a table of this address space that
///   the hypervisor itself keeps valid while loaded; GetLDT and GetTR report
///   null or a selector loaded with SetLDT/SetTR;
/// * [`get_reloc`](VmiPlatform::get_reloc) answers CALL_REL only with entry
///   points that [`call`](VmiPlatform::call) accepts.
///
/// [`read_phys`](ReadPhys::read_phys) and
/// [`get_reloc`](VmiPlatform::get_reloc)'s answers are checked by the
/// backend before use.
///
/// Implementing it without `unsafe impl` does not compile:
///
/// ```compile_fail
/// use pvops_vmi::{ReadPhys, VmiPlatform};
/// struct Liar;
/// impl ReadPhys for Liar {
///     fn read_phys(&self, _: u64, _: &mut [u8]) -> bool { false }
/// }
/// impl VmiPlatform for Liar {
///     unsafe fn get_reloc(&self, _: u64, _: u32) -> (u64, u8) { (0, 0) }
///     // A GetGDT that reports a table nobody loaded.
///     unsafe fn call(&self, _: u64, _: [u64; 4]) -> u64 { 0 }
/// }
/// ```
pub unsafe trait VmiPlatform: ReadPhys {
    /// Call the GetRelocationInfo jump point `jump_point` (ROM + 0x88) for
    /// call number `call`; returns `(eip, type byte)` (rax, rdx).
    ///
    /// # Safety
    /// `jump_point` must be the jump point of a ROM that passed the probe.
    unsafe fn get_reloc(&self, jump_point: u64, call: u32) -> (u64, u8);

    /// Call the ROM entry point `entry` with up to four arguments (see the
    /// [module documentation](self) for registers) and return rax.
    ///
    /// # Safety
    /// `entry` must be VMI_Init or an `eip` the relocation query returned as
    /// CALL_REL; pointer arguments must be valid for what the call reads or
    /// writes.
    unsafe fn call(&self, entry: u64, args: [u64; 4]) -> u64;
}

impl<T: ReadPhys + ?Sized> ReadPhys for &T {
    fn read_phys(&self, addr: u64, buf: &mut [u8]) -> bool {
        (**self).read_phys(addr, buf)
    }
}

// SAFETY: forwards to `T`, which keeps the contract.
unsafe impl<T: VmiPlatform + ?Sized> VmiPlatform for &T {
    unsafe fn get_reloc(&self, jump_point: u64, call: u32) -> (u64, u8) {
        // SAFETY: forwarded contract.
        unsafe { (**self).get_reloc(jump_point, call) }
    }
    unsafe fn call(&self, entry: u64, args: [u64; 4]) -> u64 {
        // SAFETY: forwarded contract.
        unsafe { (**self).call(entry, args) }
    }
}
