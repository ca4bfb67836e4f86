//! The VMI ABI as hv-sim's VMI personality defines it: call numbers,
//! relocation types, the option-ROM header, the probe window, the lazy
//! modes, and the port protocol of hv-sim's own ROM stubs.
//!
//! This module is hv-sim's **own transcription** of the interface. The
//! personality is meant to be an independent oracle for the guest crate
//! `pvops-vmi`, so nothing here is taken from that crate: if the guest gets
//! a call number, a relocation type or a header offset wrong, the guest and
//! this hypervisor disagree and the tests fail (`.ci/mutation-check` proves
//! it by mutating the guest's constants one at a time).
//!
//! # Sources (facts only; no code copied)
//! * Linux `arch/x86/include/asm/vmi.h` (2.6.21–2.6.36; earlier
//!   `include/asm-i386/vmi.h`), e.g. torvalds/linux at
//!   c613bbba6f39c8804f1f26e96fb68a117cc9e282: `VMI_SIGNATURE`, the PCI
//!   vendor/device ids, `VMI_API_REV_MAJOR`/`MINOR`, every `VMI_CALL_*`
//!   number, the `VMI_RELOCATION_*` types, and `struct vrom_header`,
//!   `struct pci_header`, `struct pnp_header` (all packed; the offsets below
//!   are the running sums of their field sizes, cross-checked in the tests).
//! * Linux `arch/x86/include/asm/vmi_time.h`: the timer calls 66–71.
//! * Linux `arch/x86/kernel/vmi_32.c`: how Linux used them — the probe
//!   window (0xC0000 up to 0xE0000 in 2048-byte steps), the option-ROM
//!   signature 0xaa55, the license strings it accepted ("GPL", "GPL v2"),
//!   and the SetLazyMode arguments (2 entering lazy CPU mode, 1 entering
//!   lazy MMU mode, 0 leaving either).
//! * `/work/shared/reference/vmi-abi.md` (the project's summary of the
//!   above).
//! * The `"PCIR"` and `"$PnP"` signatures are the PCI Firmware and Plug and
//!   Play BIOS specifications' (the headers `vmi.h` lays out begin with
//!   them).
//!
//! VMI was 32-bit only. [`port`] is not VMI's: it is the protocol between
//! hv-sim's 64-bit ROM stubs and hv-sim's VMM (both hv-sim's), described in
//! [`super::rom`].

/// Option-ROM signature at offset 0 (bytes 0x55, 0xAA; `vmi_32.c` compares
/// the u16 with 0xaa55).
pub const ROM_SIGNATURE: u16 = 0xAA55;
/// `VMI_SIGNATURE`: `"cVmi"` read as a little-endian u32.
pub const VMI_SIGNATURE: u32 = 0x696d_5663;
/// `PCI_VENDOR_ID_VMWARE`.
pub const PCI_VENDOR_ID_VMWARE: u16 = 0x15AD;
/// `PCI_DEVICE_ID_VMWARE_VMI`.
pub const PCI_DEVICE_ID_VMWARE_VMI: u16 = 0x0801;
/// `VMI_API_REV_MAJOR`: a ROM with another major version is refused.
pub const API_REV_MAJOR: u8 = 3;
/// `VMI_API_REV_MINOR`: the lowest minor version accepted.
pub const API_REV_MINOR: u8 = 0;
/// Signature of the PCI data structure the ROM header points at.
pub const PCI_SIGNATURE: [u8; 4] = *b"PCIR";
/// Signature of the PnP expansion header.
pub const PNP_SIGNATURE: [u8; 4] = *b"$PnP";
/// The license strings a guest accepts (anything else is refused).
pub const LICENSES: [&[u8]; 2] = [b"GPL", b"GPL v2"];

/// The window the guest scans for the ROM (`probe_vmi_rom`).
pub mod scan {
    /// First address (inclusive).
    pub const START: u64 = 0xC0000;
    /// End (exclusive).
    pub const END: u64 = 0xE0000;
    /// Step: option ROMs start on 2 KiB boundaries.
    pub const STEP: u64 = 2048;
}

/// VMI API 3.0 call numbers (`VMI_CALL_*`).
pub mod call {
    /// CPUID.
    pub const CPUID: u32 = 0;
    /// WRMSR.
    pub const WRMSR: u32 = 1;
    /// RDMSR.
    pub const RDMSR: u32 = 2;
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
    /// SetCR0.
    pub const SET_CR0: u32 = 15;
    /// SetCR2.
    pub const SET_CR2: u32 = 16;
    /// SetCR3.
    pub const SET_CR3: u32 = 17;
    /// SetCR4.
    pub const SET_CR4: u32 = 18;
    /// GetCR0.
    pub const GET_CR0: u32 = 19;
    /// GetCR2.
    pub const GET_CR2: u32 = 20;
    /// GetCR3.
    pub const GET_CR3: u32 = 21;
    /// GetCR4.
    pub const GET_CR4: u32 = 22;
    /// WBINVD.
    pub const WBINVD: u32 = 23;
    /// SetDR.
    pub const SET_DR: u32 = 24;
    /// GetDR.
    pub const GET_DR: u32 = 25;
    /// RDPMC.
    pub const RDPMC: u32 = 26;
    /// RDTSC.
    pub const RDTSC: u32 = 27;
    /// CLTS.
    pub const CLTS: u32 = 28;
    /// EnableInterrupts.
    pub const ENABLE_INTERRUPTS: u32 = 29;
    /// DisableInterrupts.
    pub const DISABLE_INTERRUPTS: u32 = 30;
    /// GetInterruptMask.
    pub const GET_INTERRUPT_MASK: u32 = 31;
    /// SetInterruptMask.
    pub const SET_INTERRUPT_MASK: u32 = 32;
    /// IRET.
    pub const IRET: u32 = 33;
    /// SYSEXIT.
    pub const SYSEXIT: u32 = 34;
    /// Halt.
    pub const HALT: u32 = 35;
    /// Reboot.
    pub const REBOOT: u32 = 36;
    /// Shutdown.
    pub const SHUTDOWN: u32 = 37;
    /// SetPxE.
    pub const SET_PXE: u32 = 38;
    /// SetPxELong.
    pub const SET_PXE_LONG: u32 = 39;
    /// UpdatePxE.
    pub const UPDATE_PXE: u32 = 40;
    /// UpdatePxELong.
    pub const UPDATE_PXE_LONG: u32 = 41;
    /// MachineToPhysical.
    pub const MACHINE_TO_PHYSICAL: u32 = 42;
    /// PhysicalToMachine.
    pub const PHYSICAL_TO_MACHINE: u32 = 43;
    /// AllocatePage.
    pub const ALLOCATE_PAGE: u32 = 44;
    /// ReleasePage.
    pub const RELEASE_PAGE: u32 = 45;
    /// InvalPage.
    pub const INVAL_PAGE: u32 = 46;
    /// FlushTLB.
    pub const FLUSH_TLB: u32 = 47;
    /// SetLinearMapping.
    pub const SET_LINEAR_MAPPING: u32 = 48;
    /// SetIOPLMask.
    pub const SET_IOPL_MASK: u32 = 61;
    /// SetInitialAPState.
    pub const SET_INITIAL_AP_STATE: u32 = 62;
    /// APICWrite.
    pub const APIC_WRITE: u32 = 63;
    /// APICRead.
    pub const APIC_READ: u32 = 64;
    /// IODelay.
    pub const IO_DELAY: u32 = 65;
    /// GetCycleFrequency (`vmi_time.h`).
    pub const GET_CYCLE_FREQUENCY: u32 = 66;
    /// GetCycleCounter (`vmi_time.h`).
    pub const GET_CYCLE_COUNTER: u32 = 67;
    /// SetAlarm (`vmi_time.h`).
    pub const SET_ALARM: u32 = 68;
    /// CancelAlarm (`vmi_time.h`).
    pub const CANCEL_ALARM: u32 = 69;
    /// GetWallclockTime (`vmi_time.h`).
    pub const GET_WALLCLOCK_TIME: u32 = 70;
    /// WallclockUpdated (`vmi_time.h`).
    pub const WALLCLOCK_UPDATED: u32 = 71;
    /// SetLazyMode.
    pub const SET_LAZY_MODE: u32 = 73;

    /// The calls this personality implements (CALL_REL by default): the
    /// descriptor-table calls 3–14 and SetLazyMode.
    pub const IMPLEMENTED: [u32; 13] = [
        SET_GDT,
        SET_LDT,
        SET_IDT,
        SET_TR,
        GET_GDT,
        GET_LDT,
        GET_IDT,
        GET_TR,
        WRITE_GDT_ENTRY,
        WRITE_LDT_ENTRY,
        WRITE_IDT_ENTRY,
        UPDATE_KERNEL_STACK,
        SET_LAZY_MODE,
    ];

    /// VMI's name of call `nr` (the `VMI_CALL_` suffix), `None` for the
    /// numbers API 3.0 leaves undefined (49–60, 72, 74 and up).
    pub const fn name(nr: u32) -> Option<&'static str> {
        Some(match nr {
            CPUID => "CPUID",
            WRMSR => "WRMSR",
            RDMSR => "RDMSR",
            SET_GDT => "SetGDT",
            SET_LDT => "SetLDT",
            SET_IDT => "SetIDT",
            SET_TR => "SetTR",
            GET_GDT => "GetGDT",
            GET_LDT => "GetLDT",
            GET_IDT => "GetIDT",
            GET_TR => "GetTR",
            WRITE_GDT_ENTRY => "WriteGDTEntry",
            WRITE_LDT_ENTRY => "WriteLDTEntry",
            WRITE_IDT_ENTRY => "WriteIDTEntry",
            UPDATE_KERNEL_STACK => "UpdateKernelStack",
            SET_CR0 => "SetCR0",
            SET_CR2 => "SetCR2",
            SET_CR3 => "SetCR3",
            SET_CR4 => "SetCR4",
            GET_CR0 => "GetCR0",
            GET_CR2 => "GetCR2",
            GET_CR3 => "GetCR3",
            GET_CR4 => "GetCR4",
            WBINVD => "WBINVD",
            SET_DR => "SetDR",
            GET_DR => "GetDR",
            RDPMC => "RDPMC",
            RDTSC => "RDTSC",
            CLTS => "CLTS",
            ENABLE_INTERRUPTS => "EnableInterrupts",
            DISABLE_INTERRUPTS => "DisableInterrupts",
            GET_INTERRUPT_MASK => "GetInterruptMask",
            SET_INTERRUPT_MASK => "SetInterruptMask",
            IRET => "IRET",
            SYSEXIT => "SYSEXIT",
            HALT => "Halt",
            REBOOT => "Reboot",
            SHUTDOWN => "Shutdown",
            SET_PXE => "SetPxE",
            SET_PXE_LONG => "SetPxELong",
            UPDATE_PXE => "UpdatePxE",
            UPDATE_PXE_LONG => "UpdatePxELong",
            MACHINE_TO_PHYSICAL => "MachineToPhysical",
            PHYSICAL_TO_MACHINE => "PhysicalToMachine",
            ALLOCATE_PAGE => "AllocatePage",
            RELEASE_PAGE => "ReleasePage",
            INVAL_PAGE => "InvalPage",
            FLUSH_TLB => "FlushTLB",
            SET_LINEAR_MAPPING => "SetLinearMapping",
            SET_IOPL_MASK => "SetIOPLMask",
            SET_INITIAL_AP_STATE => "SetInitialAPState",
            APIC_WRITE => "APICWrite",
            APIC_READ => "APICRead",
            IO_DELAY => "IODelay",
            GET_CYCLE_FREQUENCY => "GetCycleFrequency",
            GET_CYCLE_COUNTER => "GetCycleCounter",
            SET_ALARM => "SetAlarm",
            CANCEL_ALARM => "CancelAlarm",
            GET_WALLCLOCK_TIME => "GetWallclockTime",
            WALLCLOCK_UPDATED => "WallclockUpdated",
            SET_LAZY_MODE => "SetLazyMode",
            _ => return None,
        })
    }
}

/// `vmi_relocation_info.type`: how the ROM wants call sites of a call made
/// (`VMI_RELOCATION_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Reloc {
    /// `VMI_RELOCATION_NONE`: keep the native instruction (the hypervisor
    /// traps and emulates it).
    None = 0,
    /// `VMI_RELOCATION_CALL_REL`: call `eip`.
    CallRel = 1,
    /// `VMI_RELOCATION_JUMP_REL`: jump to `eip` (patched call sites only).
    JumpRel = 2,
    /// `VMI_RELOCATION_NOP`: the op is a no-op.
    Nop = 3,
}

impl Reloc {
    /// Every type, in numeric order.
    pub const ALL: [Reloc; 4] = [Reloc::None, Reloc::CallRel, Reloc::JumpRel, Reloc::Nop];

    /// The type byte.
    pub const fn byte(self) -> u8 {
        self as u8
    }

    /// Decode a type byte.
    pub const fn from_byte(t: u8) -> Option<Reloc> {
        match t {
            0 => Some(Reloc::None),
            1 => Some(Reloc::CallRel),
            2 => Some(Reloc::JumpRel),
            3 => Some(Reloc::Nop),
            _ => None,
        }
    }

    /// VMI's name (the `VMI_RELOCATION_` suffix).
    pub const fn name(self) -> &'static str {
        match self {
            Reloc::None => "NONE",
            Reloc::CallRel => "CALL_REL",
            Reloc::JumpRel => "JUMP_REL",
            Reloc::Nop => "NOP",
        }
    }
}

/// Byte offsets of `struct vrom_header` (packed).
pub mod header {
    /// u16 rom_signature.
    pub const ROM_SIGNATURE: usize = 0x00;
    /// u8 rom_length: size in 512-byte units.
    pub const ROM_LENGTH: usize = 0x02;
    /// u8 rom_entry\[4\]: 16-bit code entry point.
    pub const ROM_ENTRY: usize = 0x03;
    /// u8 rom_pad0.
    pub const ROM_PAD0: usize = 0x07;
    /// u32 vrom_signature.
    pub const VROM_SIGNATURE: usize = 0x08;
    /// u8 api_version_min.
    pub const API_VERSION_MIN: usize = 0x0C;
    /// u8 api_version_maj.
    pub const API_VERSION_MAJ: usize = 0x0D;
    /// u8 jump_slots.
    pub const JUMP_SLOTS: usize = 0x0E;
    /// u8 reserved1.
    pub const RESERVED1: usize = 0x0F;
    /// u32 virtual_top: start of the hypervisor's virtual range.
    pub const VIRTUAL_TOP: usize = 0x10;
    /// u16 reserved2.
    pub const RESERVED2: usize = 0x14;
    /// u16 license_offs.
    pub const LICENSE_OFFS: usize = 0x16;
    /// u16 pci_header_offs.
    pub const PCI_HEADER_OFFS: usize = 0x18;
    /// u16 pnp_header_offs.
    pub const PNP_HEADER_OFFS: usize = 0x1A;
    /// u32 rom_pad3.
    pub const ROM_PAD3: usize = 0x1C;
    /// u8 reserved\[96\].
    pub const RESERVED: usize = 0x20;
    /// char vmi_init\[8\]: the VMI_Init jump point.
    pub const VMI_INIT: usize = 0x80;
    /// char get_reloc\[8\]: the VMI_GetRelocationInfo jump point.
    pub const GET_RELOC: usize = 0x88;
    /// Size of the header.
    pub const SIZE: usize = 0x90;
    /// Bytes of a jump point.
    pub const JUMP_POINT_LEN: usize = 8;
    /// `rom_length` counts units of this many bytes.
    pub const LENGTH_UNIT: usize = 512;
}

/// Byte offsets of `struct pci_header` (packed).
pub mod pci_header {
    /// char sig\[4\] (`"PCIR"`).
    pub const SIG: usize = 0;
    /// short vendorID.
    pub const VENDOR_ID: usize = 4;
    /// short deviceID.
    pub const DEVICE_ID: usize = 6;
    /// short vpdData.
    pub const VPD_DATA: usize = 8;
    /// short size.
    pub const SIZE: usize = 10;
    /// char rev.
    pub const REV: usize = 12;
    /// char class.
    pub const CLASS: usize = 13;
    /// char subclass.
    pub const SUBCLASS: usize = 14;
    /// char interface.
    pub const INTERFACE: usize = 15;
    /// short chunks.
    pub const CHUNKS: usize = 16;
    /// char rom_version_min.
    pub const ROM_VERSION_MIN: usize = 18;
    /// char rom_version_maj.
    pub const ROM_VERSION_MAJ: usize = 19;
    /// char codetype.
    pub const CODETYPE: usize = 20;
    /// char lastRom.
    pub const LAST_ROM: usize = 21;
    /// short reserved.
    pub const RESERVED: usize = 22;
    /// Size of the structure.
    pub const LEN: usize = 24;
}

/// Byte offsets of `struct pnp_header` (packed; `long` is 4 bytes on the
/// i386 ABI VMI was defined for).
pub mod pnp_header {
    /// char sig\[4\] (`"$PnP"`).
    pub const SIG: usize = 0;
    /// char rev.
    pub const REV: usize = 4;
    /// char size.
    pub const SIZE: usize = 5;
    /// short next.
    pub const NEXT: usize = 6;
    /// short res.
    pub const RES: usize = 8;
    /// long devID.
    pub const DEV_ID: usize = 10;
    /// unsigned short manufacturer_offset.
    pub const MANUFACTURER_OFFSET: usize = 14;
    /// unsigned short product_offset.
    pub const PRODUCT_OFFSET: usize = 16;
    /// Size of the structure.
    pub const LEN: usize = 18;
}

/// SetLazyMode's argument (`vmi_32.c`: `set_lazy_mode(2)` entering lazy
/// CPU mode, `(1)` entering lazy MMU mode, `(0)` leaving either).
pub mod lazy {
    /// Not lazy: leaving a lazy mode flushes what was deferred.
    pub const NONE: u64 = 0;
    /// Lazy MMU mode.
    pub const MMU: u64 = 1;
    /// Lazy CPU mode (context switch).
    pub const CPU: u64 = 2;
}

/// hv-sim's 64-bit ROM stubs and its VMM (not VMI's: see [`super::rom`]).
/// Each stub is `mov eax, <value>; out PORT, eax; ret`; the VMM reads the
/// value from eax.
pub mod port {
    /// The I/O port the stubs write to (8-bit immediate form of `out`).
    pub const VMI_PORT: u8 = 0xE6;
    /// eax value of the VMI_Init stub (outside the call-number space).
    pub const PSEUDO_INIT: u32 = 0xFFFF_0000;
    /// eax value of the GetRelocationInfo stub.
    pub const PSEUDO_GET_RELOC: u32 = 0xFFFF_0001;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every call number next to its literal in `asm/vmi.h` /
    /// `asm/vmi_time.h`, with the source's name.
    #[test]
    fn call_numbers_are_the_sources_literals() {
        #[rustfmt::skip]
        let table: [(u32, u32, &str); 61] = [
            (call::CPUID, 0, "CPUID"),
            (call::WRMSR, 1, "WRMSR"),
            (call::RDMSR, 2, "RDMSR"),
            (call::SET_GDT, 3, "SetGDT"),
            (call::SET_LDT, 4, "SetLDT"),
            (call::SET_IDT, 5, "SetIDT"),
            (call::SET_TR, 6, "SetTR"),
            (call::GET_GDT, 7, "GetGDT"),
            (call::GET_LDT, 8, "GetLDT"),
            (call::GET_IDT, 9, "GetIDT"),
            (call::GET_TR, 10, "GetTR"),
            (call::WRITE_GDT_ENTRY, 11, "WriteGDTEntry"),
            (call::WRITE_LDT_ENTRY, 12, "WriteLDTEntry"),
            (call::WRITE_IDT_ENTRY, 13, "WriteIDTEntry"),
            (call::UPDATE_KERNEL_STACK, 14, "UpdateKernelStack"),
            (call::SET_CR0, 15, "SetCR0"),
            (call::SET_CR2, 16, "SetCR2"),
            (call::SET_CR3, 17, "SetCR3"),
            (call::SET_CR4, 18, "SetCR4"),
            (call::GET_CR0, 19, "GetCR0"),
            (call::GET_CR2, 20, "GetCR2"),
            (call::GET_CR3, 21, "GetCR3"),
            (call::GET_CR4, 22, "GetCR4"),
            (call::WBINVD, 23, "WBINVD"),
            (call::SET_DR, 24, "SetDR"),
            (call::GET_DR, 25, "GetDR"),
            (call::RDPMC, 26, "RDPMC"),
            (call::RDTSC, 27, "RDTSC"),
            (call::CLTS, 28, "CLTS"),
            (call::ENABLE_INTERRUPTS, 29, "EnableInterrupts"),
            (call::DISABLE_INTERRUPTS, 30, "DisableInterrupts"),
            (call::GET_INTERRUPT_MASK, 31, "GetInterruptMask"),
            (call::SET_INTERRUPT_MASK, 32, "SetInterruptMask"),
            (call::IRET, 33, "IRET"),
            (call::SYSEXIT, 34, "SYSEXIT"),
            (call::HALT, 35, "Halt"),
            (call::REBOOT, 36, "Reboot"),
            (call::SHUTDOWN, 37, "Shutdown"),
            (call::SET_PXE, 38, "SetPxE"),
            (call::SET_PXE_LONG, 39, "SetPxELong"),
            (call::UPDATE_PXE, 40, "UpdatePxE"),
            (call::UPDATE_PXE_LONG, 41, "UpdatePxELong"),
            (call::MACHINE_TO_PHYSICAL, 42, "MachineToPhysical"),
            (call::PHYSICAL_TO_MACHINE, 43, "PhysicalToMachine"),
            (call::ALLOCATE_PAGE, 44, "AllocatePage"),
            (call::RELEASE_PAGE, 45, "ReleasePage"),
            (call::INVAL_PAGE, 46, "InvalPage"),
            (call::FLUSH_TLB, 47, "FlushTLB"),
            (call::SET_LINEAR_MAPPING, 48, "SetLinearMapping"),
            (call::SET_IOPL_MASK, 61, "SetIOPLMask"),
            (call::SET_INITIAL_AP_STATE, 62, "SetInitialAPState"),
            (call::APIC_WRITE, 63, "APICWrite"),
            (call::APIC_READ, 64, "APICRead"),
            (call::IO_DELAY, 65, "IODelay"),
            (call::GET_CYCLE_FREQUENCY, 66, "GetCycleFrequency"),
            (call::GET_CYCLE_COUNTER, 67, "GetCycleCounter"),
            (call::SET_ALARM, 68, "SetAlarm"),
            (call::CANCEL_ALARM, 69, "CancelAlarm"),
            (call::GET_WALLCLOCK_TIME, 70, "GetWallclockTime"),
            (call::WALLCLOCK_UPDATED, 71, "WallclockUpdated"),
            (call::SET_LAZY_MODE, 73, "SetLazyMode"),
        ];
        for (constant, literal, name) in table {
            assert_eq!(constant, literal, "VMI_CALL_{name}");
            assert_eq!(call::name(literal), Some(name), "name of {literal}");
        }
        // Exactly these numbers are defined: 49–60, 72 and 74.. are not.
        for nr in 0..256 {
            let defined = table.iter().any(|&(_, l, _)| l == nr);
            assert_eq!(call::name(nr).is_some(), defined, "call {nr}");
        }
        assert_eq!(
            call::IMPLEMENTED,
            [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 73]
        );
    }

    /// `VMI_RELOCATION_*`.
    #[test]
    fn relocation_types_are_the_sources_literals() {
        let table = [
            (Reloc::None, 0u8, "NONE"),
            (Reloc::CallRel, 1, "CALL_REL"),
            (Reloc::JumpRel, 2, "JUMP_REL"),
            (Reloc::Nop, 3, "NOP"),
        ];
        for (r, literal, name) in table {
            assert_eq!(r.byte(), literal, "VMI_RELOCATION_{name}");
            assert_eq!(Reloc::from_byte(literal), Some(r));
            assert_eq!(r.name(), name);
        }
        assert_eq!(Reloc::ALL.map(Reloc::byte), [0, 1, 2, 3]);
        assert_eq!(Reloc::from_byte(4), None);
    }

    /// The scalar constants of `asm/vmi.h` and `vmi_32.c`.
    #[test]
    fn rom_constants_are_the_sources_literals() {
        assert_eq!(ROM_SIGNATURE, 0xaa55);
        assert_eq!(ROM_SIGNATURE.to_le_bytes(), [0x55, 0xAA]);
        assert_eq!(VMI_SIGNATURE, 0x696d5663);
        assert_eq!(&VMI_SIGNATURE.to_le_bytes(), b"cVmi");
        assert_eq!(PCI_VENDOR_ID_VMWARE, 0x15AD);
        assert_eq!(PCI_DEVICE_ID_VMWARE_VMI, 0x0801);
        assert_eq!((API_REV_MAJOR, API_REV_MINOR), (3, 0));
        assert_eq!(&PCI_SIGNATURE, b"PCIR");
        assert_eq!(&PNP_SIGNATURE, b"$PnP");
        assert_eq!(LICENSES, [&b"GPL"[..], &b"GPL v2"[..]]);
        assert_eq!(
            (scan::START, scan::END, scan::STEP),
            (0xC0000, 0xE0000, 2048)
        );
        assert_eq!((lazy::NONE, lazy::MMU, lazy::CPU), (0, 1, 2));
        assert_eq!(
            (port::VMI_PORT, port::PSEUDO_INIT, port::PSEUDO_GET_RELOC),
            (0xE6, 0xFFFF_0000, 0xFFFF_0001)
        );
    }

    /// Walk a packed struct given as (offset constant, literal, field size,
    /// name) in declaration order: each literal is the running sum of the
    /// sizes before it, and the constant is that literal.
    fn packed(what: &str, fields: &[(usize, usize, usize, &str)], size: (usize, usize)) {
        let mut at = 0;
        for &(constant, literal, len, name) in fields {
            assert_eq!(constant, literal, "{what}.{name}");
            assert_eq!(literal, at, "{what}.{name} follows the fields before it");
            at += len;
        }
        assert_eq!(size.0, size.1, "sizeof {what}");
        assert_eq!(at, size.1, "sizeof {what} is the sum of its fields");
    }

    /// `struct vrom_header`: field, literal offset, field size.
    #[test]
    fn vrom_header_offsets_are_the_sources_layout() {
        use header::*;
        #[rustfmt::skip]
        packed("vrom_header", &[
            (ROM_SIGNATURE, 0x00, 2, "rom_signature"),
            (ROM_LENGTH, 0x02, 1, "rom_length"),
            (ROM_ENTRY, 0x03, 4, "rom_entry"),
            (ROM_PAD0, 0x07, 1, "rom_pad0"),
            (VROM_SIGNATURE, 0x08, 4, "vrom_signature"),
            (API_VERSION_MIN, 0x0C, 1, "api_version_min"),
            (API_VERSION_MAJ, 0x0D, 1, "api_version_maj"),
            (JUMP_SLOTS, 0x0E, 1, "jump_slots"),
            (RESERVED1, 0x0F, 1, "reserved1"),
            (VIRTUAL_TOP, 0x10, 4, "virtual_top"),
            (RESERVED2, 0x14, 2, "reserved2"),
            (LICENSE_OFFS, 0x16, 2, "license_offs"),
            (PCI_HEADER_OFFS, 0x18, 2, "pci_header_offs"),
            (PNP_HEADER_OFFS, 0x1A, 2, "pnp_header_offs"),
            (ROM_PAD3, 0x1C, 4, "rom_pad3"),
            (RESERVED, 0x20, 96, "reserved"),
            (VMI_INIT, 0x80, 8, "vmi_init"),
            (GET_RELOC, 0x88, 8, "get_reloc"),
        ], (SIZE, 0x90));
        assert_eq!((JUMP_POINT_LEN, LENGTH_UNIT), (8, 512));
    }

    /// `struct pci_header`.
    #[test]
    fn pci_header_offsets_are_the_sources_layout() {
        use pci_header::*;
        #[rustfmt::skip]
        packed("pci_header", &[
            (SIG, 0, 4, "sig"),
            (VENDOR_ID, 4, 2, "vendorID"),
            (DEVICE_ID, 6, 2, "deviceID"),
            (VPD_DATA, 8, 2, "vpdData"),
            (SIZE, 10, 2, "size"),
            (REV, 12, 1, "rev"),
            (CLASS, 13, 1, "class"),
            (SUBCLASS, 14, 1, "subclass"),
            (INTERFACE, 15, 1, "interface"),
            (CHUNKS, 16, 2, "chunks"),
            (ROM_VERSION_MIN, 18, 1, "rom_version_min"),
            (ROM_VERSION_MAJ, 19, 1, "rom_version_maj"),
            (CODETYPE, 20, 1, "codetype"),
            (LAST_ROM, 21, 1, "lastRom"),
            (RESERVED, 22, 2, "reserved"),
        ], (LEN, 24));
    }

    /// `struct pnp_header` (i386: `long` is 4 bytes).
    #[test]
    fn pnp_header_offsets_are_the_sources_layout() {
        use pnp_header::*;
        #[rustfmt::skip]
        packed("pnp_header", &[
            (SIG, 0, 4, "sig"),
            (REV, 4, 1, "rev"),
            (SIZE, 5, 1, "size"),
            (NEXT, 6, 2, "next"),
            (RES, 8, 2, "res"),
            (DEV_ID, 10, 4, "devID"),
            (MANUFACTURER_OFFSET, 14, 2, "manufacturer_offset"),
            (PRODUCT_OFFSET, 16, 2, "product_offset"),
        ], (LEN, 18));
    }
}
