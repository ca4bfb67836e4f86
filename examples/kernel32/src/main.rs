//! A 32-bit protected-mode kernel (i686) on pvops' native backend.
//!
//! QEMU enters it through its PVH note in 32-bit protected mode with paging
//! off, which it keeps. It loads its own GDT (Linux's i386 layout), a
//! 32-bit TSS and LDT (8-byte system descriptors), an IDT of 32-bit gates,
//! all through `pvops_native::NativeOps`, and checks each effect on the CPU
//! with the raw instructions: the 6-byte `sgdt`/`sidt` operands, `str`,
//! `sldt`, segment loads through the LDT and the TLS slots, `TSS.esp0`, and
//! real faults delivered through the 32-bit gates, and a trip to ring 3
//! and back whose `int 0x80` enters on TSS.ss0:esp0. Each check is a
//! `check <pass|fail|skip> <name>: <detail>` line on port 0xE9 (the boot
//! protocol hv-sim's QEMU runner parses); the number of failed checks is
//! written to port 0xF4.
//!
//! Given a PVH module (hv-sim's blob), it then runs the 32-bit
//! differential scenarios ([`scenarios`]): each descriptor-table
//! instruction with its segment registers, GDT slots, data window and
//! test GDTR set up at the addresses hv-sim's differential guest uses,
//! any exception caught through its own 32-bit IDT, its own tables
//! restored through `NativeOps`, a record per scenario that hv-sim
//! compares with its emulator (`hv-sim/tests/kernel32_scenarios.rs`:
//! 100,000 in 5.6–12.1 s under QEMU TCG on a loaded 2-core AMD EPYC, 0 unexplained
//! mismatches), and one more check line, `scenarios: N run`. It is
//! linked at 2 MiB: the MiB from 1 MiB holds those tables.

#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]

mod checks;
mod scenarios;

use core::arch::{asm, global_asm, naked_asm};
use core::fmt::{self, Write};
use core::sync::atomic::AtomicU32;

use hvsim_boot_protocol::ports;

/// The kernel's stack.
#[repr(C, align(16))]
struct Stack([u8; 64 * 1024]);
static mut STACK: Stack = Stack([0; 64 * 1024]);

// The PVH note (namesz 4 "Xen\0", descsz 4, type 18 =
// XEN_ELFNOTE_PHYS32_ENTRY, the entry's physical address) and the entry:
// protected mode, paging off, flat 32-bit segments, ebx = hvm_start_info,
// no stack. Turn SSE on (the i686 target's code uses SSE2: CR0.EM clear,
// CR0.MP set, CR4.OSFXSR and OSXMMEXCPT set) before any Rust code runs,
// then call kmain(start_info) on our stack (16-byte aligned at the call).
global_asm!(
    ".pushsection .note.Xen, \"a\", @note",
    ".balign 4",
    ".long 4, 4, 18",
    ".asciz \"Xen\"",
    ".balign 4",
    ".long _start",
    ".popsection",
    ".pushsection .text._start, \"ax\"",
    ".globl _start",
    "_start:",
    "cli",
    "cld",
    "mov esp, offset {stack} + {size}",
    "xor ebp, ebp",
    "mov eax, cr0",
    "and eax, 0xfffffffb",
    "or eax, 2",
    "mov cr0, eax",
    "mov eax, cr4",
    "or eax, 0x600",
    "mov cr4, eax",
    "sub esp, 12",
    "push ebx",
    "call {kmain}",
    "ud2",
    ".popsection",
    stack = sym STACK,
    size = const core::mem::size_of::<Stack>(),
    kmain = sym kmain,
);

/// The debug console (port 0xE9), one `out` per byte.
struct Console;

impl Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            // SAFETY: port 0xE9 is the runners' text port; writing it has
            // no effect on memory.
            unsafe {
                asm!("out dx, al", in("dx") ports::TEXT, in("al") b, options(nomem, nostack))
            };
        }
        Ok(())
    }
}

/// Counts the failed checks.
pub struct Tally {
    failed: u32,
}

impl Tally {
    /// Report one check as `check <pass|fail> <name>: <detail>`.
    pub fn check(&mut self, name: &str, pass: bool, detail: fmt::Arguments<'_>) {
        self.failed += u32::from(!pass);
        let verdict = if pass { "pass" } else { "fail" };
        let _ = writeln!(Console, "check {verdict} {name}: {detail}");
    }
}

/// Exceptions taken, by handler, and what the #GP handler saw.
pub static UD_COUNT: AtomicU32 = AtomicU32::new(0);
pub static BP_COUNT: AtomicU32 = AtomicU32::new(0);
pub static GP_COUNT: AtomicU32 = AtomicU32::new(0);
/// The #GP error code.
pub static GP_ERROR: AtomicU32 = AtomicU32::new(0);
/// The CS and EFLAGS words of the #GP frame (a 32-bit frame: error code,
/// EIP, CS, EFLAGS, four bytes each).
pub static GP_CS: AtomicU32 = AtomicU32::new(0);
pub static GP_EFLAGS: AtomicU32 = AtomicU32::new(0);

/// #BP (a trap: EIP already points past `int3`).
#[unsafe(naked)]
pub extern "C" fn bp_handler() {
    naked_asm!("lock inc dword ptr [{c}]", "iretd", c = sym BP_COUNT)
}

/// #UD: skip the 2-byte `ud2`.
#[unsafe(naked)]
pub extern "C" fn ud_handler() {
    naked_asm!(
        "lock inc dword ptr [{c}]",
        "add dword ptr [esp], 2",
        "iretd",
        c = sym UD_COUNT
    )
}

/// #GP: record the error code and the frame's CS and EFLAGS, pop the
/// error code and skip the 2-byte `mov ds, ax` that faulted.
#[unsafe(naked)]
pub extern "C" fn gp_handler() {
    naked_asm!(
        "push eax",
        "mov eax, [esp + 4]",
        "mov [{e}], eax",
        "mov eax, [esp + 12]",
        "mov [{cs}], eax",
        "mov eax, [esp + 16]",
        "mov [{fl}], eax",
        "pop eax",
        "add esp, 4",
        "add dword ptr [esp], 2",
        "lock inc dword ptr [{c}]",
        "iretd",
        e = sym GP_ERROR,
        cs = sym GP_CS,
        fl = sym GP_EFLAGS,
        c = sym GP_COUNT
    )
}

/// The ring-3 round trip (`checks::ring3_round_trip`): the kernel stack
/// pointer saved before `iretd` to ring 3, the address to resume at, and
/// what the `int 0x80` handler found: its ESP on entry, SS, and the frame's
/// CS, ESP and SS words.
pub static SAVED_ESP: AtomicU32 = AtomicU32::new(0);
pub static RESUME: AtomicU32 = AtomicU32::new(0);
pub static ENTRY_ESP: AtomicU32 = AtomicU32::new(0);
pub static ENTRY_SS: AtomicU32 = AtomicU32::new(0);
pub static FRAME_CS: AtomicU32 = AtomicU32::new(0);
pub static FRAME_ESP: AtomicU32 = AtomicU32::new(0);
pub static FRAME_SS: AtomicU32 = AtomicU32::new(0);

/// `int 0x80` from ring 3: the CPU switched to TSS.ss0:esp0 and pushed a
/// 32-bit inter-privilege frame (EIP, CS, EFLAGS, ESP, SS). DS was nulled
/// on the way to ring 3: load the kernel's before touching memory. Record
/// the state, then continue in the kernel at RESUME on its saved stack.
#[unsafe(naked)]
pub extern "C" fn int80_handler() {
    naked_asm!(
        "mov edx, esp",
        "mov eax, {kds}",
        "mov ds, eax",
        "mov es, eax",
        "mov [{entry_esp}], edx",
        "mov eax, ss",
        "mov [{entry_ss}], eax",
        "mov eax, [edx + 4]",
        "mov [{frame_cs}], eax",
        "mov eax, [edx + 12]",
        "mov [{frame_esp}], eax",
        "mov eax, [edx + 16]",
        "mov [{frame_ss}], eax",
        "mov esp, [{saved}]",
        "jmp dword ptr [{resume}]",
        kds = const checks::KERNEL_DS as u32,
        entry_esp = sym ENTRY_ESP,
        entry_ss = sym ENTRY_SS,
        frame_cs = sym FRAME_CS,
        frame_esp = sym FRAME_ESP,
        frame_ss = sym FRAME_SS,
        saved = sym SAVED_ESP,
        resume = sym RESUME,
    )
}

extern "C" fn kmain(start_info: u32) -> ! {
    let _ = writeln!(
        Console,
        "pvops 32-bit kernel: entered through the PVH note, hvm_start_info at {start_info:#x}"
    );
    let mut t = Tally { failed: 0 };
    checks::run(&mut t, start_info);
    // SAFETY: start_info is what the loader passed in EBX; checks::run
    // loaded the kernel's own tables.
    unsafe { scenarios::run(&mut t, start_info) };
    let _ = writeln!(Console, "pvops 32-bit kernel: {} failed", t.failed);
    exit(t.failed)
}

/// Write the exit status to port 0xF4 (QEMU's isa-debug-exit).
fn exit(status: u32) -> ! {
    // SAFETY: port 0xF4 ends the VM; no memory is touched.
    unsafe { asm!("out dx, eax", in("dx") ports::EXIT, in("eax") status, options(nomem, nostack)) };
    loop {
        // SAFETY: halting with interrupts off stops this CPU for good.
        unsafe { asm!("cli; hlt", options(nomem, nostack)) };
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let _ = writeln!(Console, "check fail panic: {info}");
    exit(0xff)
}

/// The precompiled `core` of the i686 Linux target was built for unwinding
/// and names this symbol in its (discarded) unwind tables; with
/// `panic = "abort"` nothing calls it. Defining the `eh_personality` lang
/// item needs nightly; a symbol of that name satisfies the linker on stable.
#[unsafe(no_mangle)]
extern "C" fn rust_eh_personality() {}
