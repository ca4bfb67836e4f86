//! Reporting to the host over port I/O.
//!
//! Protocol (hv-sim's `kvm::ports` mirrors it), on the ports QEMU's debug
//! devices use, so the same image reports under hv-sim's KVM runner and
//! under `qemu-system-x86_64 -device isa-debugcon,iobase=0xe9 -device
//! isa-debug-exit,iobase=0xf4,iosize=4`:
//! * port 0xE9, byte writes: a text stream of lines,
//!   `check <pass|fail|skip> <name>[: detail]` or free text;
//! * or, where the runner sets the `REPORT_BUFFER` boot flag (hv-sim's KVM
//!   runners; never QEMU, whose debug console sees only 0xE9), the same
//!   lines one exit each: a dword write to port 0xE0 of the line buffer's
//!   address | its length (`hvsim_boot_protocol::text_buffer`), the
//!   runner reading the bytes from guest memory ([`use_buffer_port`]);
//! * port 0xF4, dword write: exit with that status (the VM stops; QEMU exits
//!   with `status << 1 | 1`).
//!
//! A Xen PV guest (entered through the Xen ELF note's entry point) reports
//! the same lines through `console_io(CONSOLEIO_write)` instead, one
//! hypercall per line, and exits with an `exit status N` line and
//! `sched_op(SCHEDOP_shutdown)` ([`use_xen_console`]).

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, Ordering};

/// Text goes to Xen's console (`console_io`) rather than port 0xE9.
static XEN_CONSOLE: AtomicBool = AtomicBool::new(false);
/// Text goes a line at a time to port 0xE0 rather than a byte at a time to
/// port 0xE9.
static BUFFER_PORT: AtomicBool = AtomicBool::new(false);

/// One line of text waiting for its newline (Xen console and buffer port);
/// a longer line goes out in 2 KiB pieces, an exit each.
/// Page aligned: the buffer port names it by its address's upper bits.
#[repr(C, align(4096))]
struct LineBuf {
    buf: [u8; 2048],
    len: usize,
}

static LINE: spin::Mutex<LineBuf> = spin::Mutex::new(LineBuf {
    buf: [0; 2048],
    len: 0,
});

/// From now on, report through Xen's console and exit with
/// `sched_op(SCHEDOP_shutdown)`.
pub fn use_xen_console() {
    XEN_CONSOLE.store(true, Ordering::SeqCst);
}

/// From now on, report a line per `out` on the buffer port (the runner
/// set the `REPORT_BUFFER` boot flag). The kernel's memory is identity
/// mapped wherever hv-sim sets that flag, so the buffer's address is its
/// guest-physical address.
pub fn use_buffer_port() {
    BUFFER_PORT.store(true, Ordering::SeqCst);
}

/// Send the buffered line (the Xen console, or the buffer port).
fn flush(l: &mut LineBuf) {
    if l.len == 0 {
        return;
    }
    if XEN_CONSOLE.load(Ordering::Relaxed) {
        crate::xen::console_write(&l.buf[..l.len]);
    } else {
        let at = l.buf.as_ptr() as u64;
        match hvsim_boot_protocol::text_buffer::word(at, l.len) {
            Some(w) => outl(PORT_TEXT_BUFFER, w),
            // Not reachable (the buffer is page aligned in the low 4 GiB):
            // fall back to bytes rather than lose the text.
            None => l.buf[..l.len].iter().for_each(|b| outb(PORT_TEXT, *b)),
        }
    }
    l.len = 0;
}

/// Text output port.
pub const PORT_TEXT: u16 = hvsim_boot_protocol::ports::TEXT;
/// Text-buffer port.
pub const PORT_TEXT_BUFFER: u16 = hvsim_boot_protocol::ports::TEXT_BUFFER;
/// Exit port.
pub const PORT_EXIT: u16 = hvsim_boot_protocol::ports::EXIT;

fn outb(port: u16, v: u8) {
    // SAFETY: port output to the VMM's report device; no memory effects.
    unsafe {
        core::arch::asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack, preserves_flags))
    };
}

pub fn outl(port: u16, v: u32) {
    // SAFETY: port output to the VMM's report devices. For the buffer
    // port the VMM reads the line buffer: `nomem` is not claimed, so the
    // buffer's stores are complete before the `out`.
    unsafe {
        core::arch::asm!("out dx, eax", in("dx") port, in("eax") v, options(nostack, preserves_flags))
    };
}

/// Writer onto the text port.
pub struct Port;

impl Write for Port {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if XEN_CONSOLE.load(Ordering::Relaxed) || BUFFER_PORT.load(Ordering::Relaxed) {
            let mut l = LINE.lock();
            for b in s.bytes() {
                let n = l.len;
                l.buf[n] = b;
                l.len += 1;
                if b == b'\n' || l.len == l.buf.len() {
                    flush(&mut l);
                }
            }
            return Ok(());
        }
        for b in s.bytes() {
            outb(PORT_TEXT, b);
        }
        Ok(())
    }
}

/// Print formatted text to the host.
#[macro_export]
macro_rules! say {
    ($($t:tt)*) => {{
        let _ = core::fmt::Write::write_fmt(&mut $crate::report::Port, format_args!($($t)*));
    }};
}

/// Tally of checks.
pub struct Tally {
    /// Passed.
    pub passed: u32,
    /// Total.
    pub total: u32,
    /// Not run here (reported with the reason).
    pub skipped: u32,
}

impl Tally {
    /// No checks yet.
    pub const fn new() -> Self {
        Tally {
            passed: 0,
            total: 0,
            skipped: 0,
        }
    }

    /// Print the `done:` line the runners parse and exit with the number
    /// of failed checks.
    pub fn finish(self) -> ! {
        crate::say!(
            "done: {}/{} checks passed, {} skipped\n",
            self.passed,
            self.total,
            self.skipped
        );
        exit(self.total - self.passed)
    }

    /// Report a check that cannot run in this environment.
    pub fn skip(&mut self, name: &str, why: &str) {
        self.skipped += 1;
        say!("check skip {}: {}\n", name, why);
    }

    /// Record one check.
    pub fn check(&mut self, name: &str, ok: bool, detail: fmt::Arguments<'_>) {
        self.total += 1;
        if ok {
            self.passed += 1;
        }
        say!(
            "check {} {}: {}\n",
            if ok { "pass" } else { "fail" },
            name,
            detail
        );
    }
}

/// Stop the VM with `status`.
pub fn exit(status: u32) -> ! {
    if XEN_CONSOLE.load(Ordering::Relaxed) {
        crate::say!("{}{}\n", hvsim_boot_protocol::EXIT_STATUS_PREFIX, status);
        flush(&mut LINE.lock());
        crate::xen::shutdown(if status == 0 {
            pvops_xen::abi::shutdown::POWEROFF
        } else {
            pvops_xen::abi::shutdown::CRASH
        });
    }
    // A last line without its newline (not if the exit interrupted a
    // write, e.g. a panic: the line is half built).
    if let Some(mut l) = LINE.try_lock() {
        flush(&mut l);
    }
    outl(PORT_EXIT, status);
    loop {
        // SAFETY: halting with interrupts off ends this vCPU's work.
        unsafe { core::arch::asm!("cli; hlt", options(nomem, nostack)) };
    }
}
