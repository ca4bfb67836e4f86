//! The smallest kernel that follows `docs/BOOT-YOUR-OWN-KERNEL.md`:
//! pvops-pvh's entry (QEMU through the PVH note, hv-sim's KVM runner at
//! `_start`), a few checks of the state it was entered in, each reported as
//! a `check` line on the debug console, and the number of failed checks
//! written to the exit port.

#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]

use core::arch::asm;
use core::fmt::{self, Write};

use hvsim_boot_protocol::ports;
use pvops_pvh::{BootInfo, HVM_START_MAGIC};

pvops_pvh::entry!(kmain);

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
struct Checks {
    failed: u32,
}

impl Checks {
    /// Report one check as `check <pass|fail> <name>: <detail>`.
    fn check(&mut self, pass: bool, name: &str, detail: fmt::Arguments<'_>) {
        self.failed += u32::from(!pass);
        let verdict = if pass { "pass" } else { "fail" };
        let _ = writeln!(Console, "check {verdict} {name}: {detail}");
    }

    fn skip(&mut self, name: &str, why: &str) {
        let _ = writeln!(Console, "check skip {name}: {why}");
    }
}

fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: reading EFER has no side effects; we run in ring 0.
    unsafe { asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

fn kmain(boot: BootInfo) -> ! {
    let via = match boot.pvh_start_info {
        Some(_) => "the PVH note",
        None => "_start",
    };
    let _ = writeln!(
        Console,
        "minimal kernel: entered through {via}, boot flags {:#x}",
        boot.boot_flags
    );
    let mut c = Checks { failed: 0 };

    let (cr0, cr4): (u64, u64);
    let cs: u16;
    // SAFETY: reading control registers and CS has no side effects (ring 0).
    unsafe {
        asm!("mov {}, cr0", out(reg) cr0, options(nomem, nostack));
        asm!("mov {}, cr4", out(reg) cr4, options(nomem, nostack));
        asm!("mov {:x}, cs", out(reg) cs, options(nomem, nostack));
    }
    let efer = rdmsr(0xc000_0080);
    c.check(
        efer & (1 << 10) != 0 && cr0 & (1 << 31) != 0 && cr4 & (1 << 5) != 0,
        "long mode",
        format_args!(
            "EFER {efer:#x} (LMA bit 10), CR0 {cr0:#x} (PG bit 31), CR4 {cr4:#x} (PAE bit 5)"
        ),
    );
    c.check(
        cs == 0x08,
        "code segment",
        format_args!("CS {cs:#x}, expected 0x8 (both entries' GDT)"),
    );

    // The stack is the entry's own: a local's address lies in this
    // kernel's image (linked at 1 MiB), not in a loader's stack below it.
    let local = 0u8;
    let sp = &local as *const u8 as u64;
    c.check(
        (0x10_0000..0x4000_0000).contains(&sp),
        "own stack",
        format_args!("a local at {sp:#x}, expected between 1 MiB and 1 GiB"),
    );

    match boot.pvh_start_info {
        Some(addr) => {
            // SAFETY: the PVH loader passed the address of its
            // hvm_start_info, below 4 GiB; the first GiB is identity-mapped
            // and QEMU places it low. An aligned u32 read.
            let magic = unsafe { (addr as usize as *const u32).read_volatile() };
            c.check(
                magic == HVM_START_MAGIC,
                "pvh start info",
                format_args!("at {addr:#x}, magic {magic:#x}, expected {HVM_START_MAGIC:#x}"),
            );
        }
        None => c.skip(
            "pvh start info",
            "entered at _start, not through the PVH note",
        ),
    }

    exit(c.failed)
}

/// Write the exit status to port 0xF4 (QEMU's isa-debug-exit; hv-sim's
/// runners stop the VM there).
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
