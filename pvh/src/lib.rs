//! # pvops-pvh — a PVH entry for x86_64 hobby kernels
//!
//! QEMU's `-kernel` (and Xen's PVH domain builder) boot an ELF64 kernel
//! through its PVH entry: the physical address in a
//! `XEN_ELFNOTE_PHYS32_ENTRY` ELF note, entered in 32-bit protected mode
//! with paging off and `ebx` = the physical address of the `hvm_start_info`.
//! hv-sim's KVM runner instead enters the ELF entry in 64-bit mode with
//! paging on. [`entry!`] gives a kernel both entries and one Rust function
//! behind them:
//!
//! * the note, and a 32-bit start (`pvops_pvh_start`) that identity-maps the
//!   first GiB with 2 MiB pages, turns on PAE, long mode and paging, loads a
//!   three-entry GDT (64-bit code `0x08`, data `0x10`), loads the data
//!   segments and continues at `_start` with no boot flags and
//!   `rsi = ebx`: the state hv-sim's native runner starts a kernel in;
//! * `_start` (the ELF entry), which switches to a stack of its own and
//!   calls your function with a [`BootInfo`]: the boot flags from `rdi`
//!   (see `hvsim_boot_protocol::boot_flags`) and, when entered through the
//!   PVH note, the `hvm_start_info` address.
//!
//! ```rust,ignore
//! #![no_std]
//! #![no_main]
//!
//! pvops_pvh::entry!(kmain);
//!
//! fn kmain(boot: pvops_pvh::BootInfo) -> ! {
//!     // 64-bit, ring 0, first GiB identity-mapped, interrupts off, no IDT.
//!     loop {}
//! }
//!
//! #[panic_handler]
//! fn panic(_: &core::panic::PanicInfo) -> ! {
//!     loop {}
//! }
//! ```
//!
//! ## What the kernel needs besides
//!
//! * **The linker script.** This crate's build script puts
//!   `pvops-pvh.ld` on the linker's search path; link with it by adding
//!   `"-C", "link-arg=-Tpvops-pvh.ld"` to the target's `rustflags` in
//!   `.cargo/config.toml`. It links the kernel at 1 MiB with virtual =
//!   physical, sets `ENTRY(_start)`, puts `.text._start` first, keeps the
//!   unreferenced `.note.Xen` section (its own `PT_NOTE` segment, where
//!   loaders look) and discards `.eh_frame`. A kernel with its own script
//!   needs the same: `KEEP(*(.note.Xen))`, `ENTRY(_start)`, everything
//!   between 1 MiB and 1 GiB.
//! * **`-C relocation-model=static`** in the same `rustflags`.
//!   `x86_64-unknown-none` builds position-independent executables by
//!   default, whose loader must apply relocations; the PVH loaders and
//!   hv-sim copy segments and jump, and the 32-bit start needs link-time
//!   absolute addresses.
//! * **`panic = "abort"`** in both profiles.
//!
//! `examples/minimal-kernel` in this crate's repository is the smallest
//! kernel built this way, and `docs/BOOT-YOUR-OWN-KERNEL.md` the guide.

#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]

/// What [`entry!`] hands the kernel's Rust entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootInfo {
    /// The boot flags the loader passed in `rdi`
    /// (`hvsim_boot_protocol::boot_flags`); 0 when entered through the PVH
    /// note (a full CPU).
    pub boot_flags: u64,
    /// The physical address of the `hvm_start_info` (it begins with
    /// [`HVM_START_MAGIC`]) when entered through the PVH note; `None` when
    /// entered at `_start` directly (hv-sim's KVM runners pass `rsi = 0`).
    pub pvh_start_info: Option<u64>,
}

impl BootInfo {
    /// From the registers `_start` was entered with. Not for kernels to
    /// call: [`entry!`] does.
    #[doc(hidden)]
    pub const fn from_registers(rdi: u64, rsi: u64) -> BootInfo {
        BootInfo {
            boot_flags: rdi,
            pvh_start_info: if rsi == 0 { None } else { Some(rsi) },
        }
    }
}

/// The first word of the `hvm_start_info` a PVH loader passes (Xen's
/// `XEN_HVM_START_MAGIC_VALUE`, in `xen/include/public/arch-x86/hvm/start_info.h`).
pub const HVM_START_MAGIC: u32 = 0x336e_c578;

/// The stack [`entry!`] gives the kernel unless told otherwise: 64 KiB.
pub const DEFAULT_STACK_SIZE: usize = 64 * 1024;

/// Define the kernel's entry points and call `$main` (a
/// `fn(`[`BootInfo`]`) -> !`) on a stack of its own.
///
/// `entry!(kmain)` uses a [`DEFAULT_STACK_SIZE`] stack;
/// `entry!(kmain, stack_size = 256 * 1024)` another size (a multiple of 16).
/// Use it once, in the kernel's binary crate (its items must be linked in:
/// the PVH note is referenced by nothing). It defines the symbols `_start`
/// and `pvops_pvh_start` and the sections `.note.Xen`, `.text._start`,
/// `.text.pvh`, `.rodata.pvh` and `.bss.pvh`.
///
/// The kernel runs with interrupts off and no IDT: load one before anything
/// can fault.
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        $crate::entry!($main, stack_size = $crate::DEFAULT_STACK_SIZE);
    };
    ($main:path, stack_size = $size:expr) => {
        #[repr(C, align(16))]
        struct __PvopsPvhStack([u8; $size]);
        const _: () = assert!(
            $size % 16 == 0 && $size >= 4096,
            "pvops_pvh::entry!: the stack size must be a multiple of 16, at least 4096"
        );

        static mut __PVOPS_PVH_STACK: __PvopsPvhStack = __PvopsPvhStack([0; $size]);

        extern "C" fn __pvops_pvh_rust_entry(rdi: u64, rsi: u64) -> ! {
            let main: fn($crate::BootInfo) -> ! = $main;
            main($crate::BootInfo::from_registers(rdi, rsi))
        }

        /// The ELF entry: 64-bit mode, paging on, `rdi` = boot flags,
        /// `rsi` = the `hvm_start_info` address or 0.
        #[unsafe(no_mangle)]
        #[unsafe(naked)]
        #[unsafe(link_section = ".text._start")]
        pub extern "C" fn _start() -> ! {
            ::core::arch::naked_asm!(
                "lea rsp, [rip + {stack} + {size}]",
                "xor ebp, ebp",
                "call {entry}",
                "ud2",
                stack = sym __PVOPS_PVH_STACK,
                size = const $size,
                entry = sym __pvops_pvh_rust_entry,
            )
        }

        ::core::arch::global_asm!(
            // The PVH note: namesz 4 ("Xen\0"), descsz 4, type 18
            // (XEN_ELFNOTE_PHYS32_ENTRY), the 32-bit entry's address.
            ".pushsection .note.Xen, \"a\", @note",
            ".balign 4",
            ".long 4, 4, 18",
            ".asciz \"Xen\"",
            ".balign 4",
            ".long pvops_pvh_start",
            ".popsection",
            // Entered in 32-bit protected mode, paging off, flat segments,
            // ebx = hvm_start_info. ebx survives until the jump to _start.
            ".pushsection .text.pvh, \"ax\"",
            ".code32",
            ".globl pvops_pvh_start",
            "pvops_pvh_start:",
            "cli",
            "cld",
            // PD: 512 entries of 2 MiB (P | RW | PS), physical i << 21.
            "mov edi, offset pvops_pvh_pd",
            "mov eax, 0x83",
            "mov ecx, 512",
            "2:",
            "mov dword ptr [edi], eax",
            "mov dword ptr [edi + 4], 0",
            "add eax, 0x200000",
            "add edi, 8",
            "dec ecx",
            "jnz 2b",
            // PDPT[0] -> PD, PML4[0] -> PDPT (P | RW).
            "mov eax, offset pvops_pvh_pd",
            "or eax, 3",
            "mov dword ptr [pvops_pvh_pdpt], eax",
            "mov eax, offset pvops_pvh_pdpt",
            "or eax, 3",
            "mov dword ptr [pvops_pvh_pml4], eax",
            "mov eax, offset pvops_pvh_pml4",
            "mov cr3, eax",
            "mov eax, cr4",
            "or eax, 0x20", // CR4.PAE
            "mov cr4, eax",
            "mov ecx, 0xc0000080", // EFER
            "rdmsr",
            "or eax, 0x100", // EFER.LME
            "wrmsr",
            "mov eax, cr0",
            "or eax, 0x80000001", // CR0.PG | CR0.PE
            "mov cr0, eax",
            "lgdt [pvops_pvh_gdtr]",
            // ljmp 0x08:pvops_pvh_long, encoded (EA, offset32, selector16):
            // no stack needed, and the PVH entry gives none (Xen's PVH
            // dom0 starts with esp = 0).
            ".byte 0xea",
            ".long pvops_pvh_long",
            ".word 0x08",
            ".code64",
            "pvops_pvh_long:",
            "mov ax, 0x10",
            "mov ds, ax",
            "mov es, ax",
            "mov ss, ax",
            "xor eax, eax",
            "mov fs, ax",
            "mov gs, ax",
            "xor edi, edi", // boot flags: none, a full CPU
            "mov esi, ebx", // the hvm_start_info
            "jmp _start",
            ".popsection",
            ".pushsection .rodata.pvh, \"a\"",
            ".balign 8",
            "pvops_pvh_gdt:",
            ".quad 0",
            // Accessed bits preset: the CPU need not write .rodata.
            ".quad 0x00af9b000000ffff", // 0x08: 64-bit code, DPL 0
            ".quad 0x00cf93000000ffff", // 0x10: data, DPL 0
            "pvops_pvh_gdtr:",
            ".word 23",
            ".long pvops_pvh_gdt",
            ".popsection",
            ".pushsection .bss.pvh, \"aw\", @nobits",
            ".balign 4096",
            "pvops_pvh_pml4: .skip 4096",
            "pvops_pvh_pdpt: .skip 4096",
            "pvops_pvh_pd: .skip 4096",
            ".popsection",
        );
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_info_from_registers() {
        assert_eq!(
            BootInfo::from_registers(0x40, 0),
            BootInfo {
                boot_flags: 0x40,
                pvh_start_info: None
            }
        );
        assert_eq!(
            BootInfo::from_registers(0, 0x1000).pvh_start_info,
            Some(0x1000)
        );
    }
}
