//! # pvops-vmi — the VMI-style backend
//!
//! VMware's VMI (Linux 2.6.21–2.6.36) put the hypervisor interface in an
//! option ROM: the guest finds the ROM in the option-ROM window, asks it,
//! call by call, where the code is (the *relocation query*), and then calls
//! into the ROM instead of executing `lgdt`, `ltr`, ... This crate is that
//! guest side for pvops' descriptor ops:
//!
//! 1. [`rom::probe`] scans 0xC0000..0xE0000 in 2 KiB steps and applies the
//!    checks Linux's `check_vmi_rom` applied (signatures, API 3.x, a PCI
//!    header offset, GPL license), and no others: a ROM Linux would use is
//!    found even with a bad checksum or no `"PCIR"` signature.
//!    [`rom::probe_strict`] ([`rom::ProbeRules::Strict`]) adds the length,
//!    checksum, `"PCIR"` and bounds checks. A refused ROM comes back with the
//!    rule it broke.
//! 2. [`VmiOps::init`] calls VMI_Init and queries the relocation of calls
//!    3–14 and 73 once; CALL_REL entries must point inside the ROM.
//! 3. Each op goes where its answer says, as Linux's `activate_vmi` wired it
//!    (`arch/x86/kernel/vmi_32.c` in its last form, through 2.6.36):
//!    * CALL_REL: into the ROM.
//!    * NONE: the native op (the hypervisor traps and emulates the
//!      instruction).
//!    * NOP: depends on how Linux installed the op. Calls Linux reached
//!      through a wrapper (`para_wrap`: SetLDT, SetTR, WriteGDTEntry,
//!      WriteLDTEntry, WriteIDTEntry, UpdateKernelStack, SetLazyMode;
//!      [`call::WRAPPED`]) install nothing for NOP, so the native op stays:
//!      this backend runs the native op too. Calls Linux pointed at the ROM
//!      directly (`para_fill`: SetGDT, SetIDT) get `vmi_nop`: nothing is
//!      done. A getter (GetGDT, GetIDT, GetLDT, GetTR) cannot do nothing and
//!      still answer, so NOP means the native instruction there, as NONE.
//!
//! How each native op is carried out: `lgdt`/`lidt`/`ltr`/`lldt` and the
//! getters through the native backend; Write*Entry as a store into the
//! table; UpdateKernelStack as Linux's `native_load_sp0`, a store of sp0
//! into the kernel's TSS, the one the kernel's GDT names at
//! [`GdtLayout::tss`] (found through the guest's view of the GDT, not the
//! CPU's TR, which under a VMI hypervisor is not the guest's); SetLazyMode's
//! native op does nothing (the pairing of enter/leave is still checked).
//!
//! VMI was 32-bit only; the register convention of the 64-bit VMI-style ROM
//! is defined and documented in [`platform`].
//!
//! | op | VMI call | notes |
//! |---|---|---|
//! | `load_gdt` / `store_gdt` | SetGDT (3) / GetGDT (7) | GetGDT returns the guest's view |
//! | `load_idt` / `store_idt` | SetIDT (5) / GetIDT (9) | |
//! | `load_tr` / `store_tr` | SetTR (6) / GetTR (10) | |
//! | `load_ldt` | WriteGDTEntry (11) of the LDT descriptor, then SetLDT (4) | `None`: WriteGDTEntry of an empty LDT descriptor, then SetLDT(0), as Linux's `vmi_set_ldt`; with SetLDT answered NONE/NOP, `native_set_ldt`: `lldt 0` only |
//! | `store_ldt` | GetLDT (8), then the descriptor it names | |
//! | `write_gdt/ldt/idt_entry` | WriteGDTEntry / WriteLDTEntry / WriteIDTEntry (11–13) | |
//! | `load_tls` | WriteGDTEntry for each slot that changed | compared with the GDT as the guest wrote it |
//! | `alloc_ldt` / `free_ldt` | nothing | |
//! | `load_kernel_stack` | UpdateKernelStack (14) | TSS selector, sp0 (Linux passed `__KERNEL_DS`, the kernel's stack segment; the layout has no such slot, so this backend names the TSS) |
//! | `enter/leave_lazy_cpu`, `flush_lazy` | SetLazyMode(2) / SetLazyMode(0) / 0 then 2 | |

#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

#[cfg(target_arch = "x86_64")]
pub mod kernel;
pub mod platform;
pub mod rom;

use core::fmt;
use core::sync::atomic::{AtomicBool, Ordering};

use pvops::descriptor::SystemType;
use pvops::table::TableRecord;
use pvops::validate::{self, IstSupport, MemoryView};
use pvops::{
    Descriptor, DescriptorOps, DescriptorTablePointer, Errno, Gdt, GdtEntry, GdtLayout, Idt,
    IdtGate, Ldt, PvError, Result, Ring, Selector, Slot, TLS_ENTRIES, TableIndicator, TableKind,
};
use pvops_native::{Cpu, HardwareCpu, NativeOps};

pub use platform::{ReadPhys, RelocType, Relocation, VmiPlatform};
pub use rom::{NotFound, Refusal, VmiRom};

/// VMI API 3.0 call numbers for descriptor tables (Linux `asm/vmi.h`).
pub mod call {
    /// SetGDT.
    pub const SET_GDT: u32 = 3;
    /// SetLDT.
    pub const SET_LDT: u32 = 4;
    /// SetIDT.
    pub const SET_IDT: u32 = 5;
    /// SetTR.
    pub const SET_TR: u32 = 6;
    /// GetGDT.
    pub const GET_GDT: u32 = 7;
    /// GetLDT.
    pub const GET_LDT: u32 = 8;
    /// GetIDT.
    pub const GET_IDT: u32 = 9;
    /// GetTR.
    pub const GET_TR: u32 = 10;
    /// WriteGDTEntry.
    pub const WRITE_GDT_ENTRY: u32 = 11;
    /// WriteLDTEntry.
    pub const WRITE_LDT_ENTRY: u32 = 12;
    /// WriteIDTEntry.
    pub const WRITE_IDT_ENTRY: u32 = 13;
    /// UpdateKernelStack.
    pub const UPDATE_KERNEL_STACK: u32 = 14;
    /// SetLazyMode.
    pub const SET_LAZY_MODE: u32 = 73;

    /// The calls this backend uses, in the order of [`crate::VmiOps::relocations`].
    pub const USED: [u32; 13] = [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 73];

    /// The used calls Linux installed through a wrapper (`para_wrap` in
    /// `activate_vmi`, in its last form, through 2.6.36), which does nothing
    /// for a NOP answer (it is not clear that a NOP VMI call means a no-op
    /// paravirt op), so the native op stays in place. The other used calls
    /// were filled (`para_fill`): NOP made them no-ops. (History: 2.6.22's
    /// `arch/i386/kernel/vmi.c` filled all three Write*Entry ops; once the
    /// descriptor ops took a descriptor pointer, 2.6.25-era `vmi_32.c`
    /// wrapped WriteGDTEntry and WriteIDTEntry, and later versions
    /// WriteLDTEntry too.)
    pub const WRAPPED: [u32; 7] = [
        SET_LDT,
        SET_TR,
        WRITE_GDT_ENTRY,
        WRITE_LDT_ENTRY,
        WRITE_IDT_ENTRY,
        UPDATE_KERNEL_STACK,
        SET_LAZY_MODE,
    ];

    /// Is `nr` one of [`WRAPPED`]?
    pub const fn is_wrapped(nr: u32) -> bool {
        let mut i = 0;
        while i < WRAPPED.len() {
            if WRAPPED[i] == nr {
                return true;
            }
            i += 1;
        }
        false
    }

    /// VMI's name of call `nr` (API 3.0), `None` for undefined numbers.
    pub const fn name(nr: u32) -> Option<&'static str> {
        Some(match nr {
            0 => "CPUID",
            1 => "WRMSR",
            2 => "RDMSR",
            3 => "SetGDT",
            4 => "SetLDT",
            5 => "SetIDT",
            6 => "SetTR",
            7 => "GetGDT",
            8 => "GetLDT",
            9 => "GetIDT",
            10 => "GetTR",
            11 => "WriteGDTEntry",
            12 => "WriteLDTEntry",
            13 => "WriteIDTEntry",
            14 => "UpdateKernelStack",
            15 => "SetCR0",
            16 => "SetCR2",
            17 => "SetCR3",
            18 => "SetCR4",
            19 => "GetCR0",
            20 => "GetCR2",
            21 => "GetCR3",
            22 => "GetCR4",
            23 => "WBINVD",
            24 => "SetDR",
            25 => "GetDR",
            26 => "RDPMC",
            27 => "RDTSC",
            28 => "CLTS",
            29 => "EnableInterrupts",
            30 => "DisableInterrupts",
            31 => "GetInterruptMask",
            32 => "SetInterruptMask",
            33 => "IRET",
            34 => "SYSEXIT",
            35 => "Halt",
            36 => "Reboot",
            37 => "Shutdown",
            38 => "SetPxE",
            39 => "SetPxELong",
            40 => "UpdatePxE",
            41 => "UpdatePxELong",
            42 => "MachineToPhysical",
            43 => "PhysicalToMachine",
            44 => "AllocatePage",
            45 => "ReleasePage",
            46 => "InvalPage",
            47 => "FlushTLB",
            48 => "SetLinearMapping",
            61 => "SetIOPLMask",
            62 => "SetInitialAPState",
            63 => "APICWrite",
            64 => "APICRead",
            65 => "IODelay",
            66 => "GetCycleFrequency",
            67 => "GetCycleCounter",
            68 => "SetAlarm",
            69 => "CancelAlarm",
            70 => "GetWallclockTime",
            71 => "WallclockUpdated",
            73 => "SetLazyMode",
            _ => return None,
        })
    }
}

/// SetLazyMode argument: no lazy mode (flushes what was deferred).
pub const LAZY_NONE: u64 = 0;
/// SetLazyMode argument: lazy MMU mode.
pub const LAZY_MMU: u64 = 1;
/// SetLazyMode argument: lazy CPU mode (context switch).
pub const LAZY_CPU: u64 = 2;

const fn slot(nr: u32) -> usize {
    match nr {
        call::SET_LAZY_MODE => 12,
        n => (n - 3) as usize,
    }
}

/// Where an op goes, from its call's relocation answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    /// CALL_REL: into the ROM.
    Rom,
    /// NONE, or NOP for a wrapped call: the native op.
    Native,
    /// NOP for a call Linux filled directly: nothing.
    Nothing,
}

const fn call_name(nr: u32) -> &'static str {
    match call::name(nr) {
        Some(n) => n,
        None => "?",
    }
}

/// Why the backend could not start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitError {
    /// No usable ROM was found.
    Probe(NotFound),
    /// VMI_Init returned non-zero.
    InitFailed {
        /// Its return value.
        ret: u64,
    },
    /// A relocation answer this backend cannot use.
    BadRelocation {
        /// Call number.
        call: u32,
        /// The raw type byte.
        typ: u8,
        /// The eip returned.
        eip: u64,
        /// The rule it breaks.
        rule: &'static str,
    },
}

impl fmt::Display for InitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            InitError::Probe(nf) => write!(f, "vmi: {nf}"),
            InitError::InitFailed { ret } => {
                write!(
                    f,
                    "vmi: VMI_Init returned {ret:#x}, the ROM failed to initialize"
                )
            }
            InitError::BadRelocation {
                call,
                typ,
                eip,
                rule,
            } => write!(
                f,
                "vmi: relocation of {} ({call}) is type {typ} eip {eip:#x}: {rule}",
                call_name(call)
            ),
        }
    }
}

impl core::error::Error for InitError {}

/// The VMI-style backend over platform `P`, falling back to the native
/// backend over CPU `C` for calls the ROM answers NONE.
pub struct VmiOps<P, C = HardwareCpu> {
    platform: P,
    rom: VmiRom,
    relocs: [Relocation; 13],
    native: NativeOps<C>,
    layout: GdtLayout,
    lazy: AtomicBool,
    /// The GDT last loaded through this backend (entries 0 = unknown), so
    /// `load_tls`/`load_ldt` find it without a GetGDT call (a VM exit each
    /// under a real hypervisor). Linux's VMI guest likewise used its own
    /// per-CPU GDT pointer. Also the validation layer's view of the GDT.
    gdt: TableRecord,
    /// The LDT last loaded through this backend (the validation layer's
    /// view of the LDT; no GetLDT call).
    ldt: TableRecord,
}

/// The table-pointer operand passed to SetGDT/GetGDT/SetIDT/GetIDT.
#[cfg(target_arch = "x86_64")]
type VmiDtr = pvops::DtPtr64;
#[cfg(not(target_arch = "x86_64"))]
type VmiDtr = pvops::DtPtr32;

fn dtr_from(p: DescriptorTablePointer) -> VmiDtr {
    #[cfg(target_arch = "x86_64")]
    {
        p.to_packed64()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        p.to_packed32()
    }
}

// The base is u32 on 32-bit x86 and u64 on x86_64: one conversion for both.
#[allow(clippy::useless_conversion)]
fn dtr_to(d: VmiDtr) -> DescriptorTablePointer {
    let (limit, base) = (d.limit, d.base);
    DescriptorTablePointer {
        limit,
        base: base.into(),
    }
}

/// Split a 64-bit value into the two argument words of the 32-bit VMI
/// layout, or pass it whole (64-bit convention) with a zero second word.
fn desc_args(low: u64, high: u64) -> (u64, u64) {
    if cfg!(target_arch = "x86_64") {
        (low, high)
    } else {
        (low & 0xffff_ffff, low >> 32)
    }
}

/// The GDT entry of an LDT descriptor: base, raw 20-bit limit (bytes - 1),
/// present, DPL 0 (16 bytes in long mode).
fn ldt_entry(base: u64, limit: u32) -> Result<GdtEntry> {
    #[cfg(target_arch = "x86_64")]
    {
        Ok(GdtEntry::Double(pvops::SystemDescriptor::from_fields(
            pvops::SystemDescriptorFields {
                base,
                limit,
                typ: SystemType::Ldt as u8,
                dpl: Ring::Ring0,
                present: true,
                avl: false,
                granularity: false,
                low_reserved: 0,
                high_reserved: 0,
            },
        )?))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        Ok(GdtEntry::Single(Descriptor::system32(
            SystemType::Ldt,
            base as u32,
            limit,
            Ring::Ring0,
        )?))
    }
}

impl<P: VmiPlatform, C: Cpu> VmiOps<P, C> {
    /// Probe for the ROM, then [`VmiOps::init`].
    ///
    /// # Safety
    /// As [`VmiOps::init`].
    pub unsafe fn probe_and_init(
        platform: P,
        layout: GdtLayout,
        native: NativeOps<C>,
    ) -> core::result::Result<Self, InitError> {
        let rom = rom::probe(&platform).map_err(InitError::Probe)?;
        // SAFETY: forwarded contract; `rom` passed the probe.
        unsafe { Self::init(platform, rom, layout, native) }
    }

    /// Call VMI_Init, then query the relocation of every call the backend
    /// uses ([`call::USED`]). A CALL_REL entry outside the ROM, a JUMP_REL
    /// (Linux refused it for these calls too) or an unknown type is an error.
    ///
    /// # Safety
    /// `rom` must have passed [`rom::check_rom`] on this platform and be
    /// the hypervisor's ROM: its code will be called.
    pub unsafe fn init(
        platform: P,
        rom: VmiRom,
        layout: GdtLayout,
        native: NativeOps<C>,
    ) -> core::result::Result<Self, InitError> {
        // SAFETY: VMI_Init of a probed ROM (caller's contract).
        let ret = unsafe { platform.call(rom.init_entry(), [0; 4]) };
        if ret != 0 {
            return Err(InitError::InitFailed { ret });
        }
        let mut relocs = [Relocation::NONE; 13];
        for (i, &nr) in call::USED.iter().enumerate() {
            // SAFETY: the jump point of a probed ROM (caller's contract).
            let (eip, typ) = unsafe { platform.get_reloc(rom.reloc_entry(), nr) };
            let bad = |rule| InitError::BadRelocation {
                call: nr,
                typ,
                eip,
                rule,
            };
            let r = match RelocType::from_u8(typ) {
                Some(RelocType::CallRel) if !rom.contains(eip) => {
                    return Err(bad("CALL_REL entry is outside the ROM image"));
                }
                Some(RelocType::JumpRel) => {
                    return Err(bad(
                        "JUMP_REL is only for patched call sites (IRET, SYSEXIT), not for a called op",
                    ));
                }
                Some(t) => Relocation { eip, typ: t },
                None => return Err(bad("unknown relocation type (0..=3 are defined)")),
            };
            relocs[i] = r;
        }
        Ok(VmiOps {
            platform,
            rom,
            relocs,
            native,
            layout,
            lazy: AtomicBool::new(false),
            gdt: TableRecord::new(),
            ldt: TableRecord::new(),
        })
    }

    /// The ROM in use.
    pub fn rom(&self) -> &VmiRom {
        &self.rom
    }

    /// The platform.
    pub fn platform(&self) -> &P {
        &self.platform
    }

    /// The native fallback backend.
    pub fn native(&self) -> &NativeOps<C> {
        &self.native
    }

    /// The relocation answer for call `nr`, `None` if the backend does not
    /// use that call.
    pub fn relocation(&self, nr: u32) -> Option<Relocation> {
        call::USED
            .iter()
            .position(|&c| c == nr)
            .map(|i| self.relocs[i])
    }

    /// All answers, in [`call::USED`] order.
    pub fn relocations(&self) -> &[Relocation; 13] {
        &self.relocs
    }

    fn reloc(&self, nr: u32) -> Relocation {
        self.relocs[slot(nr)]
    }

    /// Where a `void` op for call `nr` goes (see the crate documentation).
    fn route(&self, nr: u32) -> Route {
        match self.reloc(nr).typ {
            RelocType::CallRel => Route::Rom,
            RelocType::Nop if !call::is_wrapped(nr) => Route::Nothing,
            // NONE; NOP for a wrapped call; JUMP_REL never gets past init.
            _ => Route::Native,
        }
    }

    /// Call `nr` at its CALL_REL entry and return rax.
    ///
    /// # Safety
    /// Pointer arguments must be valid for the call.
    unsafe fn raw(&self, nr: u32, args: [u64; 4]) -> u64 {
        // SAFETY: the entry came from the relocation query of a probed ROM
        // (init's contract), checked to lie inside the ROM; the caller
        // vouches for the arguments.
        unsafe { self.platform.call(self.reloc(nr).eip, args) }
    }

    /// Call a `void` VMI call about `at`: 0 is success, `-errno` a
    /// refusal.
    ///
    /// # Safety
    /// As [`Self::raw`].
    unsafe fn void_call(&self, nr: u32, at: Slot, args: [u64; 4]) -> Result<()> {
        // SAFETY: forwarded.
        let ret = unsafe { self.raw(nr, args) };
        if ret == 0 {
            return Ok(());
        }
        Err(PvError::Hypervisor {
            call: call_name(nr),
            errno: Errno::from_return(ret as i64).unwrap_or(Errno::EINVAL),
            at,
        })
    }

    /// The tables loaded through this backend, as the validation layer
    /// sees them (no VMI call).
    fn view(&self) -> MemoryView {
        // SAFETY: both records hold tables loaded through this backend's
        // unsafe load ops, valid until the next load through it (the ops'
        // contract); a new load replaces the record.
        unsafe { MemoryView::new(self.gdt.get(), self.ldt.get()) }
    }

    /// GetLDT / GetTR: a selector or `-errno`.
    fn selector_call(&self, nr: u32) -> Result<Selector> {
        // SAFETY: no pointer arguments.
        let ret = unsafe { self.raw(nr, [0; 4]) };
        if let Some(errno) = Errno::from_return(ret as i64) {
            return Err(PvError::Hypervisor {
                call: call_name(nr),
                errno,
                at: Slot::None,
            });
        }
        match u16::try_from(ret) {
            Ok(s) => Ok(Selector(s)),
            Err(_) => Err(PvError::Hypervisor {
                call: call_name(nr),
                errno: Errno::EINVAL,
                at: Slot::None,
            }),
        }
    }

    /// GetGDT / GetIDT into a DTR on our stack.
    fn dtr_call(&self, nr: u32) -> Result<DescriptorTablePointer> {
        let mut out = VmiDtr::default();
        let p = core::ptr::addr_of_mut!(out) as usize as u64;
        // SAFETY: the call writes the DTR operand at `p`, which we own.
        unsafe { self.void_call(nr, Slot::None, [p, 0, 0, 0])? };
        Ok(dtr_to(out))
    }

    /// The GDT the guest loaded (its own view).
    fn current_gdt(&self, op: &'static str) -> Result<Gdt> {
        if let Some((base, entries)) = self.gdt.get() {
            return Gdt::new(base, entries);
        }
        let p = self.store_gdt()?;
        if p.base == 0 && p.limit == 0 {
            return Err(PvError::NoTableLoaded {
                op,
                table: pvops::TableKind::Gdt,
            });
        }
        Gdt::from_pointer(p)
    }

    /// WriteGDTEntry, or the native store for NONE and NOP (a wrapped
    /// call).
    ///
    /// # Safety
    /// `gdt` must be valid writable memory.
    unsafe fn gdt_write(&self, gdt: &Gdt, index: u32, entry: GdtEntry) -> Result<()> {
        gdt.entry_addr(index, &entry)?;
        match self.route(call::WRITE_GDT_ENTRY) {
            Route::Rom => {
                let (lo, hi) = match entry {
                    GdtEntry::Single(d) => desc_args(d.0, 0),
                    GdtEntry::Double(s) => (s.low, s.high),
                };
                // SAFETY: the table is the caller's valid GDT; the entry was
                // checked to fit.
                unsafe {
                    self.void_call(
                        call::WRITE_GDT_ENTRY,
                        Slot::Entry(TableKind::Gdt, index),
                        [gdt.base(), index as u64, lo, hi],
                    )
                }
            }
            // SAFETY: forwarded contract.
            _ => unsafe { self.native.write_gdt_entry(gdt, index, entry) },
        }
    }

    /// SetLDT, or native `lldt` for NONE and NOP (a wrapped call).
    ///
    /// # Safety
    /// `sel` must be null or name a valid LDT descriptor.
    unsafe fn set_ldt(&self, sel: Selector) -> Result<()> {
        match self.route(call::SET_LDT) {
            // SAFETY: no pointer arguments.
            Route::Rom => unsafe {
                self.void_call(
                    call::SET_LDT,
                    Slot::Selector(sel),
                    [sel.bits() as u64, 0, 0, 0],
                )
            },
            // SAFETY: forwarded contract.
            _ => unsafe { self.native.cpu().lldt(sel) },
        }
    }

    /// SetLazyMode; its native op (NONE, or NOP: a wrapped call) does
    /// nothing beyond the pairing the callers already checked.
    fn set_lazy(&self, mode: u64) -> Result<()> {
        match self.route(call::SET_LAZY_MODE) {
            // SAFETY: no pointer arguments.
            Route::Rom => unsafe {
                self.void_call(call::SET_LAZY_MODE, Slot::None, [mode, 0, 0, 0])
            },
            _ => Ok(()),
        }
    }

    /// Linux's `native_load_sp0`: store sp0 into the kernel's TSS. The TSS
    /// is the one whose descriptor sits in slot [`GdtLayout::tss`] of the
    /// GDT the guest loaded (its own view: under a VMI hypervisor the CPU's
    /// TR and GDTR are the hypervisor's), available or busy.
    ///
    /// # Safety
    /// The TSS that descriptor names must be valid writable memory.
    unsafe fn store_sp0(&self, sp0: u64) -> Result<()> {
        const OP: &str = "load_kernel_stack";
        let gdt = self.current_gdt(OP)?;
        let index = self.layout.tss as u32;
        let addr = gdt.slot_addr(index)?;
        let two = cfg!(target_arch = "x86_64");
        if two {
            gdt.slot_addr(index + 1)?;
        }
        // SAFETY: the slot is inside the loaded GDT (load contract).
        let low = Descriptor(unsafe { read_u64(addr) });
        let tss = matches!(low.system_type(), SystemType::Tss | SystemType::TssBusy);
        if low.is_code_or_data() || !low.present() || !tss {
            return Err(PvError::WrongDescriptorType {
                op: OP,
                selector: Selector::gdt(self.layout.tss, Ring::Ring0),
                found: low.s_type(),
                expected: "a present TSS descriptor (S=0, type 9 or 0xB) in the layout's TSS slot",
            });
        }
        let mut base = low.base() as u64;
        if two {
            // SAFETY: checked above that slot index+1 is inside the GDT.
            base |= unsafe { read_u64(addr + 8) } << 32;
        }
        // 64-bit TSS: rsp0 at offset 4 (unaligned). 32-bit TSS: esp0 at 4.
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the TSS the kernel's descriptor names (caller's contract).
        unsafe {
            ((base + 4) as usize as *mut u64).write_unaligned(sp0)
        };
        #[cfg(not(target_arch = "x86_64"))]
        // SAFETY: the TSS the kernel's descriptor names (caller's contract).
        unsafe {
            ((base + 4) as usize as *mut u32).write_volatile(sp0 as u32)
        };
        Ok(())
    }
}

/// Read an aligned u64 of guest memory.
///
/// # Safety
/// `addr` must be 8-byte aligned and valid for an 8-byte read.
unsafe fn read_u64(addr: u64) -> u64 {
    // SAFETY: caller's guarantee; one relaxed atomic load because the
    // hypervisor or another CPU's op may write the slot, and
    // `TableStorage::read` may read it, concurrently.
    unsafe { pvops::table::load_u64(addr) }
}

/// Read the IDT gate at `addr` (each word one atomic load).
///
/// # Safety
/// As [`read_u64`], for the gate's 8 or 16 bytes.
unsafe fn read_gate(addr: u64) -> IdtGate {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: forwarded contract: both words of the gate.
    unsafe {
        IdtGate {
            low: read_u64(addr),
            high: read_u64(addr + 8),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    // SAFETY: forwarded contract.
    unsafe {
        pvops::Gate32(read_u64(addr))
    }
}

impl<P: VmiPlatform, C: Cpu> DescriptorOps for VmiOps<P, C> {
    fn name(&self) -> &'static str {
        "vmi"
    }

    unsafe fn load_gdt(&self, gdt: &Gdt) -> Result<()> {
        // Forget the cached GDT first: if the load fails, the next op asks
        // the hypervisor (GetGDT) which table is live.
        self.gdt.set(None);
        let r = match self.reloc(call::SET_GDT).typ {
            RelocType::CallRel => {
                let dtr = dtr_from(gdt.pointer());
                let p = core::ptr::addr_of!(dtr) as usize as u64;
                // SAFETY: SetGDT reads the DTR we own and the table the
                // caller promised is valid.
                unsafe { self.void_call(call::SET_GDT, Slot::Table(TableKind::Gdt), [p, 0, 0, 0]) }
            }
            // The hypervisor ignores the load (Linux filled load_gdt with
            // vmi_nop): which GDT is live stays its business, so nothing is
            // cached.
            RelocType::Nop => return Ok(()),
            // SAFETY: forwarded contract.
            _ => unsafe { self.native.load_gdt(gdt) },
        };
        if r.is_ok() {
            self.gdt.set(Some((gdt.base(), gdt.entries())));
        }
        r
    }

    fn store_gdt(&self) -> Result<DescriptorTablePointer> {
        match self.reloc(call::GET_GDT).typ {
            RelocType::CallRel => self.dtr_call(call::GET_GDT),
            // A getter cannot be a no-op: NOP and NONE both mean `sgdt`.
            _ => self.native.store_gdt(),
        }
    }

    unsafe fn load_idt(&self, idt: &Idt) -> Result<()> {
        validate::idt(
            "load_idt",
            idt.entries(),
            // SAFETY: v < entries: gate v is inside the IDT, valid memory
            // by the op contract.
            |v| unsafe { read_gate(idt.base() + v as u64 * pvops::gate::IDT_ENTRY_SIZE as u64) },
            IstSupport::Honoured,
            "vmi",
            &self.view(),
        )?;
        match self.route(call::SET_IDT) {
            Route::Rom => {
                let dtr = dtr_from(idt.pointer());
                let p = core::ptr::addr_of!(dtr) as usize as u64;
                // SAFETY: SetIDT reads the DTR we own and the table the
                // caller promised is valid.
                unsafe { self.void_call(call::SET_IDT, Slot::Table(TableKind::Idt), [p, 0, 0, 0]) }
            }
            // Filled with vmi_nop by Linux.
            Route::Nothing => Ok(()),
            // SAFETY: forwarded contract.
            _ => unsafe { self.native.load_idt(idt) },
        }
    }

    fn store_idt(&self) -> Result<DescriptorTablePointer> {
        match self.reloc(call::GET_IDT).typ {
            RelocType::CallRel => self.dtr_call(call::GET_IDT),
            _ => self.native.store_idt(),
        }
    }

    unsafe fn load_tr(&self, tss: Selector) -> Result<()> {
        // The guest's GDT as this backend loaded it (GetGDT only when no
        // GDT was loaded through it).
        let gdt = if tss.is_null() || tss.ti() != TableIndicator::Gdt {
            None
        } else {
            Some(self.current_gdt("load_tr")?)
        };
        // SAFETY: the GDT loaded through this backend (valid until the next
        // load through it) or the one GetGDT reports (valid per the
        // `VmiPlatform` contract).
        let view = unsafe { MemoryView::new(gdt.map(|g| (g.base(), g.entries())), None) };
        validate::tss_selector("load_tr", tss, &view)?;
        match self.route(call::SET_TR) {
            Route::Rom => {
                // SAFETY: no pointer arguments; the caller vouches for the TSS.
                unsafe {
                    self.void_call(
                        call::SET_TR,
                        Slot::Selector(tss),
                        [tss.bits() as u64, 0, 0, 0],
                    )
                }
            }
            // SAFETY: forwarded contract.
            _ => unsafe { self.native.load_tr(tss) },
        }
    }

    fn store_tr(&self) -> Result<Selector> {
        match self.reloc(call::GET_TR).typ {
            RelocType::CallRel => self.selector_call(call::GET_TR),
            _ => self.native.store_tr(),
        }
    }

    unsafe fn load_ldt(&self, ldt: Option<&Ldt>) -> Result<()> {
        // Linux's `vmi_set_ldt` (SetLDT answered CALL_REL) always writes
        // the LDT descriptor, an empty one for no LDT, then SetLDT with the
        // selector or 0. Otherwise `native_set_ldt` stays: `lldt 0` alone
        // for no LDT, else the descriptor (through write_gdt_entry, whose
        // own answer decides how) and `lldt`.
        if ldt.is_none() && self.route(call::SET_LDT) != Route::Rom {
            // SAFETY: the null selector disables the LDT.
            unsafe { self.set_ldt(Selector::NULL)? };
            self.ldt.set(None);
            return Ok(());
        }
        let gdt = self.current_gdt("load_ldt")?;
        let entry = match ldt {
            Some(ldt) => ldt_entry(ldt.base(), ldt.limit())?,
            // pack_descriptor(NULL, 0 * 8 - 1, LDT): base 0, the limit's
            // low 20 bits all ones (byte granular), present, DPL 0.
            None => ldt_entry(0, 0xf_ffff)?,
        };
        // SAFETY: the loaded GDT is valid writable memory (load contract).
        unsafe { self.gdt_write(&gdt, self.layout.ldt as u32, entry)? };
        let sel = match ldt {
            Some(_) => Selector::gdt(self.layout.ldt, Ring::Ring0),
            None => Selector::NULL,
        };
        // SAFETY: the selector is null or names the descriptor just
        // written, for memory the caller promised stays valid.
        unsafe { self.set_ldt(sel)? };
        self.ldt.set(ldt.map(|l| (l.base(), l.entries())));
        Ok(())
    }

    fn store_ldt(&self) -> Result<Option<Ldt>> {
        let sel = match self.reloc(call::GET_LDT).typ {
            RelocType::CallRel => self.selector_call(call::GET_LDT)?,
            _ => self.native.cpu().sldt(),
        };
        if sel.is_null() {
            return Ok(None);
        }
        if sel.ti() != TableIndicator::Gdt {
            return Err(PvError::BadSelector {
                op: "store_ldt",
                selector: sel,
                rule: "has TI=1; an LDT descriptor lives in the GDT",
            });
        }
        let gdt = self.current_gdt("store_ldt")?;
        let index = sel.index() as u32;
        let addr = gdt.slot_addr(index)?;
        let two = cfg!(target_arch = "x86_64");
        if two {
            gdt.slot_addr(index + 1)?;
        }
        // SAFETY: both slots are inside the loaded GDT: one loaded through
        // this backend (valid per the load contract) or the one GetGDT
        // reports, valid per the `VmiPlatform` contract; slots are aligned.
        let low = Descriptor(unsafe { read_u64(addr) });
        if low.is_code_or_data() || low.system_type() != SystemType::Ldt {
            return Err(PvError::WrongDescriptorType {
                op: "store_ldt",
                selector: sel,
                found: low.s_type(),
                expected: "an LDT descriptor (S=0, type 2)",
            });
        }
        let mut base = low.base() as u64;
        if two {
            // SAFETY: checked above that slot index+1 is inside the GDT.
            base |= unsafe { read_u64(addr + 8) } << 32;
        }
        let bytes = low.effective_limit() as u64 + 1;
        Ok(Some(Ldt::new(base, (bytes / 8) as u32)?))
    }

    unsafe fn write_gdt_entry(&self, gdt: &Gdt, index: u32, entry: GdtEntry) -> Result<()> {
        gdt.entry_addr(index, &entry)?;
        validate::gdt_entry("write_gdt_entry", index, entry, &self.view())?;
        // SAFETY: forwarded contract.
        unsafe { self.gdt_write(gdt, index, entry) }
    }

    unsafe fn write_ldt_entry(&self, ldt: &Ldt, index: u32, entry: Descriptor) -> Result<()> {
        ldt.slot_addr(index)?;
        // TI=1 targets resolve in the LDT being written.
        // SAFETY: `ldt` is valid memory by the op contract.
        let view = unsafe { self.view().with_ldt(Some((ldt.base(), ldt.entries()))) };
        validate::ldt_entry("write_ldt_entry", index, entry, &view)?;
        match self.route(call::WRITE_LDT_ENTRY) {
            Route::Rom => {
                let (lo, hi) = desc_args(entry.0, 0);
                // SAFETY: the LDT is the caller's valid memory; index checked.
                unsafe {
                    self.void_call(
                        call::WRITE_LDT_ENTRY,
                        Slot::Entry(TableKind::Ldt, index),
                        [ldt.base(), index as u64, lo, hi],
                    )
                }
            }
            // SAFETY: forwarded contract.
            _ => unsafe { self.native.write_ldt_entry(ldt, index, entry) },
        }
    }

    unsafe fn write_idt_entry(&self, idt: &Idt, vector: u8, gate: IdtGate) -> Result<()> {
        idt.slot_addr(vector)?;
        validate::idt_gate(
            "write_idt_entry",
            vector,
            gate,
            IstSupport::Honoured,
            "vmi",
            &self.view(),
        )?;
        match self.route(call::WRITE_IDT_ENTRY) {
            Route::Rom => {
                #[cfg(target_arch = "x86_64")]
                let (lo, hi) = (gate.low, gate.high);
                #[cfg(not(target_arch = "x86_64"))]
                let (lo, hi) = desc_args(gate.0, 0);
                // SAFETY: the IDT is the caller's valid memory; vector checked.
                unsafe {
                    self.void_call(
                        call::WRITE_IDT_ENTRY,
                        Slot::Vector(vector),
                        [idt.base(), vector as u64, lo, hi],
                    )
                }
            }
            // SAFETY: forwarded contract.
            _ => unsafe { self.native.write_idt_entry(idt, vector, gate) },
        }
    }

    unsafe fn load_tls(&self, tls: &[Descriptor; TLS_ENTRIES]) -> Result<()> {
        validate::tls("load_tls", self.layout.tls_first as u32, tls)?;
        let gdt = self.current_gdt("load_tls")?;
        let first = self.layout.tls_first as u32;
        // All three slots must exist before anything is written.
        gdt.slot_addr(first + TLS_ENTRIES as u32 - 1)?;
        for (i, d) in tls.iter().enumerate() {
            let index = first + i as u32;
            let addr = gdt.slot_addr(index)?;
            // Linux's vmi_maybe_load_tls: skip slots that already hold it.
            // SAFETY: the slot is inside the loaded GDT (load contract).
            if unsafe { read_u64(addr) } == d.0 {
                continue;
            }
            // SAFETY: the loaded GDT is valid writable memory.
            unsafe { self.gdt_write(&gdt, index, GdtEntry::Single(*d))? };
        }
        Ok(())
    }

    // alloc_ldt / free_ldt: the trait's defaults (nothing to do: VMI does
    // not protect LDT pages).

    unsafe fn load_kernel_stack(&self, sp0: u64) -> Result<()> {
        validate::kernel_stack("load_kernel_stack", sp0)?;
        match self.route(call::UPDATE_KERNEL_STACK) {
            Route::Rom => {
                let tss = Selector::gdt(self.layout.tss, Ring::Ring0);
                // SAFETY: no pointer arguments the hypervisor dereferences
                // in guest memory; the caller vouches for sp0.
                unsafe {
                    self.void_call(
                        call::UPDATE_KERNEL_STACK,
                        Slot::KernelStack,
                        [tss.bits() as u64, sp0, 0, 0],
                    )
                }
            }
            // SAFETY: the kernel's TSS is valid memory (load_tr contract).
            _ => unsafe { self.store_sp0(sp0) },
        }
    }

    fn enter_lazy_cpu(&self) -> Result<()> {
        if self.lazy.swap(true, Ordering::Relaxed) {
            return Err(PvError::LazyModeMismatch {
                op: "enter_lazy_cpu",
            });
        }
        let r = self.set_lazy(LAZY_CPU);
        if r.is_err() {
            self.lazy.store(false, Ordering::Relaxed);
        }
        r
    }

    fn leave_lazy_cpu(&self) -> Result<()> {
        if !self.lazy.swap(false, Ordering::Relaxed) {
            return Err(PvError::LazyModeMismatch {
                op: "leave_lazy_cpu",
            });
        }
        self.set_lazy(LAZY_NONE)
    }

    fn flush_lazy(&self) -> Result<()> {
        if !self.lazy.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.set_lazy(LAZY_NONE)?;
        self.set_lazy(LAZY_CPU)
    }
}
