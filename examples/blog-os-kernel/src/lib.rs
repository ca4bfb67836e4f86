//! A blog_os-style kernel: its GDT, TSS and IDT are built with the `x86_64`
//! crate exactly as the blog_os posts do (`Lazy` statics instead of
//! `lazy_static!`, and handlers in assembly, because
//! `extern "x86-interrupt"` needs nightly).
//!
//! It is booted in two forms, the two binaries in `src/bin/`:
//! * `with-x86_64`: the tables loaded as blog_os loads them
//!   (`GDT.0.load()`, `load_tss`, `IDT.load()`);
//! * `with-pvops`: the same kernel moved to pvops' native backend. Only the
//!   table statics (two pvops storages and the backend) and the load calls
//!   differ: `diff src/bin/with-x86_64.rs src/bin/with-pvops.rs`.
//!
//! Both run [`check_tables`]: GDTR, IDTR and TR read back with the raw
//! instructions, the TSS descriptor's busy bit, a breakpoint exception
//! through the IDT, and an invalid-opcode exception on the IST stack that
//! `x86_64`'s `set_stack_index(0)` selects. Each is a `check` line on the
//! debug console; the number of failures is the exit status.

#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]

use core::arch::{asm, naked_asm};
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use hvsim_boot_protocol::{boot_flags, ports};
use spin::LazyLock as Lazy;
use x86_64::VirtAddr;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::idt::InterruptDescriptorTable;
use x86_64::structures::tss::TaskStateSegment;

// ---- blog_os's gdt.rs ---------------------------------------------------

/// The interrupt stack for invalid opcode (#UD), in `x86_64`'s numbering:
/// index 0 is `interrupt_stack_table[0]`, the CPU's IST1 (blog_os uses it
/// for the double fault).
pub const UD_IST_INDEX: u16 = 0;

const IST_STACK_SIZE: usize = 4096 * 4;

#[repr(C, align(16))]
struct IstStack([u8; IST_STACK_SIZE]);

static mut UD_STACK: IstStack = IstStack([0; IST_STACK_SIZE]);

/// The interrupt stack's address range.
pub fn ud_stack() -> (u64, u64) {
    let start = VirtAddr::from_ptr(&raw const UD_STACK).as_u64();
    (start, start + IST_STACK_SIZE as u64)
}

/// The TSS, with the #UD interrupt stack.
pub static TSS: Lazy<TaskStateSegment> = Lazy::new(|| {
    let mut tss = TaskStateSegment::new();
    tss.interrupt_stack_table[UD_IST_INDEX as usize] = VirtAddr::new(ud_stack().1);
    tss
});

/// The selectors `append` returned.
pub struct Selectors {
    /// Kernel code.
    pub code: SegmentSelector,
    /// Kernel data.
    pub data: SegmentSelector,
    /// The TSS.
    pub tss: SegmentSelector,
}

/// The GDT, built with `x86_64`'s builder.
pub static GDT: Lazy<(GlobalDescriptorTable, Selectors)> = Lazy::new(|| {
    let mut gdt = GlobalDescriptorTable::new();
    let code = gdt.append(Descriptor::kernel_code_segment());
    let data = gdt.append(Descriptor::kernel_data_segment());
    let tss = gdt.append(Descriptor::tss_segment(&TSS));
    (gdt, Selectors { code, data, tss })
});

// ---- blog_os's interrupts.rs --------------------------------------------

/// The IDT: breakpoint, and invalid opcode on its own stack.
pub static IDT: Lazy<InterruptDescriptorTable> = Lazy::new(|| {
    let mut idt = InterruptDescriptorTable::new();
    // SAFETY: both are interrupt handlers for their vectors (they return
    // with iretq); the UD stack is used by no other vector.
    unsafe {
        idt.breakpoint
            .set_handler_addr(VirtAddr::from_ptr(breakpoint_handler as *const ()));
        idt.invalid_opcode
            .set_handler_addr(VirtAddr::from_ptr(invalid_opcode_handler as *const ()))
            .set_stack_index(UD_IST_INDEX);
    }
    idt
});

static BREAKPOINTS: AtomicU32 = AtomicU32::new(0);
static INVALID_OPCODES: AtomicU32 = AtomicU32::new(0);
static UD_RSP: AtomicU64 = AtomicU64::new(0);

#[unsafe(naked)]
extern "C" fn breakpoint_handler() {
    naked_asm!("lock inc dword ptr [rip + {n}]", "iretq", n = sym BREAKPOINTS)
}

#[unsafe(naked)]
extern "C" fn invalid_opcode_handler() {
    // Record the stack the CPU switched to, skip the two-byte ud2.
    naked_asm!(
        "lock inc dword ptr [rip + {n}]",
        "mov qword ptr [rip + {rsp}], rsp",
        "add qword ptr [rsp], 2",
        "iretq",
        n = sym INVALID_OPCODES,
        rsp = sym UD_RSP,
    )
}

// ---- reporting ----------------------------------------------------------

/// The debug console (port 0xE9), one `out` per byte.
pub struct Console;

impl Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            // SAFETY: the runners' text port; no memory is touched.
            unsafe {
                asm!("out dx, al", in("dx") ports::TEXT, in("al") b, options(nomem, nostack))
            };
        }
        Ok(())
    }
}

/// Counts failed checks.
#[derive(Default)]
pub struct Checks {
    /// Failed so far.
    pub failed: u32,
}

impl Checks {
    /// Report `check <pass|fail> <name>: <detail>`.
    pub fn check(&mut self, pass: bool, name: &str, detail: fmt::Arguments<'_>) {
        self.failed += u32::from(!pass);
        let v = if pass { "pass" } else { "fail" };
        let _ = writeln!(Console, "check {v} {name}: {detail}");
    }

    /// Report `check skip <name>: <why>`.
    pub fn skip(&mut self, name: &str, why: &str) {
        let _ = writeln!(Console, "check skip {name}: {why}");
    }

    /// A failed setup step: report it and stop with the failures so far
    /// plus one.
    pub fn fatal(&mut self, name: &str, detail: fmt::Arguments<'_>) -> ! {
        self.check(false, name, detail);
        exit(self.failed)
    }
}

/// Write the exit status to port 0xF4 (QEMU's isa-debug-exit; hv-sim's
/// runners stop there).
pub fn exit(status: u32) -> ! {
    // SAFETY: port 0xF4 ends the VM; no memory is touched.
    unsafe { asm!("out dx, eax", in("dx") ports::EXIT, in("eax") status, options(nomem, nostack)) };
    loop {
        // SAFETY: halting with interrupts off stops this CPU.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) };
    }
}

// ---- the checks ---------------------------------------------------------

/// What the loaded tables should look like.
pub struct Expected {
    /// The GDT the CPU should use: (base, limit).
    pub gdt: (u64, u16),
    /// The IDT: (base, limit).
    pub idt: (u64, u16),
    /// The TSS descriptor's low word in the loaded GDT, read after `ltr`.
    pub tss_low: u64,
}

fn sgdt() -> (u64, u16) {
    let mut p = [0u8; 10];
    // SAFETY: sgdt stores 10 bytes into the buffer.
    unsafe { asm!("sgdt [{}]", in(reg) p.as_mut_ptr(), options(nostack)) };
    let limit = u16::from_le_bytes([p[0], p[1]]);
    let mut base = [0u8; 8];
    base.copy_from_slice(&p[2..]);
    (u64::from_le_bytes(base), limit)
}

fn sidt() -> (u64, u16) {
    let mut p = [0u8; 10];
    // SAFETY: sidt stores 10 bytes into the buffer.
    unsafe { asm!("sidt [{}]", in(reg) p.as_mut_ptr(), options(nostack)) };
    let limit = u16::from_le_bytes([p[0], p[1]]);
    let mut base = [0u8; 8];
    base.copy_from_slice(&p[2..]);
    (u64::from_le_bytes(base), limit)
}

fn str_() -> u16 {
    let tr: u16;
    // SAFETY: str reads the task register.
    unsafe { asm!("str {:x}", out(reg) tr, options(nomem, nostack)) };
    tr
}

/// Check the tables the CPU uses against `want`, then take a breakpoint and
/// an invalid-opcode exception through the IDT.
pub fn check_tables(c: &mut Checks, flags: u64, want: &Expected) {
    let gdtr = sgdt();
    c.check(
        gdtr == want.gdt,
        "gdtr",
        format_args!(
            "sgdt base {:#x} limit {:#x}, expected base {:#x} limit {:#x}",
            gdtr.0, gdtr.1, want.gdt.0, want.gdt.1
        ),
    );
    let idtr = sidt();
    c.check(
        idtr == want.idt,
        "idtr",
        format_args!(
            "sidt base {:#x} limit {:#x}, expected base {:#x} limit {:#x}",
            idtr.0, idtr.1, want.idt.0, want.idt.1
        ),
    );
    let tr = str_();
    c.check(
        tr == GDT.1.tss.0,
        "tr",
        format_args!("str {tr:#x}, expected the TSS selector {:#x}", GDT.1.tss.0),
    );
    let typ = (want.tss_low >> 40) & 0xf;
    c.check(
        typ == 0xb,
        "tss busy",
        format_args!("the loaded GDT's TSS descriptor has type {typ:#x}: ltr marks it busy (0xb)"),
    );

    if flags & boot_flags::NO_SOFTWARE_INTERRUPTS != 0 {
        c.skip(
            "breakpoint",
            "this host cannot deliver int3 to a guest (boot flag)",
        );
    } else {
        let before = BREAKPOINTS.load(Ordering::SeqCst);
        // SAFETY: vector 3's handler returns to the next instruction.
        unsafe { asm!("int3") };
        let n = BREAKPOINTS.load(Ordering::SeqCst) - before;
        c.check(
            n == 1,
            "breakpoint",
            format_args!("int3 reached the IDT's handler {n} time(s), expected 1"),
        );
    }

    let before = INVALID_OPCODES.load(Ordering::SeqCst);
    // SAFETY: vector 6's handler skips the two-byte ud2 and returns.
    unsafe { asm!("ud2") };
    let n = INVALID_OPCODES.load(Ordering::SeqCst) - before;
    let rsp = UD_RSP.load(Ordering::SeqCst);
    let (lo, hi) = ud_stack();
    c.check(
        n == 1 && rsp > lo && rsp < hi,
        "invalid opcode on IST1",
        format_args!(
            "ud2 reached the handler {n} time(s) with rsp {rsp:#x}; expected once, on the stack {lo:#x}..{hi:#x} (x86_64 index {UD_IST_INDEX} = IST{})",
            pvops::x86_64_interop::ist_from_stack_index(UD_IST_INDEX).unwrap_or(0)
        ),
    );
}

/// Common start: say how the kernel was entered.
pub fn hello(variant: &str, boot: &pvops_pvh::BootInfo) {
    let via = if boot.pvh_start_info.is_some() {
        "the PVH note"
    } else {
        "_start"
    };
    let _ = writeln!(
        Console,
        "blog_os-style kernel ({variant}): entered through {via}, boot flags {:#x}",
        boot.boot_flags
    );
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let _ = writeln!(Console, "check fail panic: {info}");
    exit(0xff)
}
