//! The hypercalls a PV kernel needs around its descriptor work: writing to
//! the console and shutting down. Xen's `drivers/char/console.c`
//! (`do_console_io`, `guest_console_write`) and `common/sched/core.c`
//! (`do_sched_op`, `SCHEDOP_shutdown`).

use super::domain::{Hc, Inner, fail};
use super::trace::Change;
use super::{EFAULT, ENOSYS, EPERM};

/// `CONSOLEIO_write`.
pub const CONSOLEIO_WRITE: u32 = 0;
/// `CONSOLEIO_read`.
pub const CONSOLEIO_READ: u32 = 1;
/// `SCHEDOP_yield`.
pub const SCHEDOP_YIELD: u32 = 0;
/// `SCHEDOP_shutdown`: `arg` points at `struct sched_shutdown { u32 reason; }`.
pub const SCHEDOP_SHUTDOWN: u32 = 2;

/// Shutdown reasons (`public/sched.h`).
pub mod shutdown {
    /// `SHUTDOWN_poweroff`.
    pub const POWEROFF: u32 = 0;
    /// `SHUTDOWN_reboot`.
    pub const REBOOT: u32 = 1;
    /// `SHUTDOWN_suspend`.
    pub const SUSPEND: u32 = 2;
    /// `SHUTDOWN_crash`.
    pub const CRASH: u32 = 3;
    /// `SHUTDOWN_watchdog`.
    pub const WATCHDOG: u32 = 4;

    /// The reason's name, as Xen's `hwdom_shutdown` words it.
    pub fn name(reason: u32) -> &'static str {
        match reason {
            POWEROFF => "poweroff (halted)",
            REBOOT => "reboot",
            SUSPEND => "suspend",
            CRASH => "crash",
            WATCHDOG => "watchdog",
            _ => "unknown reason",
        }
    }
}

/// Bytes of console text kept per domain; later text is counted, not kept
/// (Xen's serial line has no such limit, but hv-sim's memory must stay
/// bounded by the arguments of one call, not by history).
pub const CONSOLE_CAP: usize = 1 << 20;

/// `guest_console_write` copies the guest's text in chunks of this many
/// bytes (`kbuf[128]`, one kept for the terminator).
const CHUNK: usize = 127;

/// A domain's console output.
#[derive(Clone, Debug, Default)]
pub struct Console {
    /// Text not yet taken by the runner (at most [`CONSOLE_CAP`] bytes).
    pub text: Vec<u8>,
    /// Bytes written past the cap and dropped.
    pub dropped: u64,
}

impl Inner {
    /// `console_io(cmd, count, buffer)`.
    ///
    /// * Only a privileged domain may use it (the default XSM policy,
    ///   `xsm_console_io`): a domU gets -EPERM.
    /// * `CONSOLEIO_write` copies `count` bytes in chunks of 127 and prints
    ///   each; a chunk that cannot be read ends the call with -EFAULT,
    ///   after the chunks before it were printed (as Xen does).
    /// * `CONSOLEIO_read` returns 0 (hv-sim has no serial input), any other
    ///   command -ENOSYS.
    pub(crate) fn console_io(&mut self, cmd: u32, count: u32, buffer: u64) -> Hc {
        if !self.privileged {
            return Err(fail(
                EPERM,
                "console_io: only a privileged domain may use the console (xsm_console_io)",
            ));
        }
        match cmd {
            CONSOLEIO_WRITE => {
                let mut left = count as usize;
                let mut at = buffer;
                let mut chunk = [0u8; CHUNK];
                while left > 0 {
                    let n = left.min(CHUNK);
                    if self.load_bytes(at, &mut chunk[..n]).is_err() {
                        return Err(fail(
                            EFAULT,
                            format!("console_io: buffer {at:#x}+{n} is not readable"),
                        ));
                    }
                    let room = CONSOLE_CAP.saturating_sub(self.console.text.len());
                    let keep = n.min(room);
                    self.console.text.extend_from_slice(&chunk[..keep]);
                    self.console.dropped += (n - keep) as u64;
                    left -= n;
                    at = at.wrapping_add(n as u64);
                }
                Ok(0)
            }
            CONSOLEIO_READ => Ok(0),
            _ => Err(fail(ENOSYS, format!("console_io: unknown command {cmd}"))),
        }
    }

    /// `sched_op(cmd, arg)`: `SCHEDOP_yield` returns 0; `SCHEDOP_shutdown`
    /// reads the reason (-EFAULT if unreadable), records it and returns 0
    /// (the domain's vCPUs then stop: the runner ends the guest); other
    /// commands are not modelled and answer -ENOSYS, Xen's answer for an
    /// unknown command.
    pub(crate) fn sched_op(&mut self, cmd: u32, arg: u64) -> Hc {
        match cmd {
            SCHEDOP_YIELD => Ok(0),
            SCHEDOP_SHUTDOWN => {
                let mut b = [0u8; 4];
                if self.load_bytes(arg, &mut b).is_err() {
                    return Err(fail(
                        EFAULT,
                        format!("sched_op(SCHEDOP_shutdown): reason at {arg:#x} is not readable"),
                    ));
                }
                // domain_shutdown takes the reason as a u8.
                let reason = u32::from(b[0]);
                self.shutdown = Some(reason);
                self.note(Change::Shutdown {
                    reason,
                    name: shutdown::name(reason),
                });
                Ok(0)
            }
            _ => Err(fail(
                ENOSYS,
                format!("sched_op: command {cmd} is not modelled by hv-sim"),
            )),
        }
    }
}
