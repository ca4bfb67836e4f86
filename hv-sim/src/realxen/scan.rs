//! Reading Xen's serial line: the guest's text, Xen's banner, dom0's
//! shutdown, a panic or a domain crash.

use super::{MAX_LINE, SERIAL_CAP, ShutdownReason, TAIL_LINES};

/// What the serial line has shown so far.
#[derive(Default)]
pub(super) struct Scan {
    pub(super) serial: String,
    pub(super) serial_truncated: bool,
    pub(super) serial_bytes: u64,
    pub(super) guest_text: String,
    pub(super) guest_truncated: bool,
    /// Last [`TAIL_LINES`] lines.
    pub(super) tail: std::collections::VecDeque<String>,
    pub(super) xen_seen: bool,
    pub(super) xen_version: Option<String>,
    pub(super) xen_banner: Option<String>,
    pub(super) exit_status: Option<u32>,
    pub(super) shutdown: Option<ShutdownReason>,
    pub(super) panic: Option<String>,
    /// The panic message is complete (Xen printed its last line).
    pub(super) panic_done: bool,
    pub(super) crash: Option<String>,
    pub(super) partial: Vec<u8>,
}

impl Scan {
    pub(super) fn feed(&mut self, bytes: &[u8]) {
        self.serial_bytes += bytes.len() as u64;
        for &b in bytes {
            if b == b'\n' {
                let line = std::mem::take(&mut self.partial);
                self.line(&line, true);
            } else {
                self.partial.push(b);
                if self.partial.len() >= MAX_LINE {
                    let line = std::mem::take(&mut self.partial);
                    self.line(&line, true);
                }
            }
        }
    }

    /// The serial line closed: take what is left as a last line.
    pub(super) fn finish(&mut self) {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.line(&line, false);
        }
    }

    fn keep(&mut self, line: &str, newline: bool) {
        let need = line.len() + usize::from(newline);
        if self.serial_truncated || self.serial.len() + need > SERIAL_CAP {
            self.serial_truncated = true;
            return;
        }
        self.serial.push_str(line);
        if newline {
            self.serial.push('\n');
        }
    }

    fn line(&mut self, raw: &[u8], newline: bool) {
        let text = printable(&String::from_utf8_lossy(raw));
        let line = text.as_str();
        self.keep(line, newline);
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line.to_string());

        let xen_line = if self.xen_seen {
            line.strip_prefix("(XEN)")
        } else {
            // Before Xen's first line: the firmware's text; Xen's first
            // line may follow the firmware's escape sequences.
            match line.find("(XEN)") {
                Some(i) => {
                    self.xen_seen = true;
                    Some(&line[i + 5..])
                }
                None => return,
            }
        };
        match xen_line {
            Some(msg) => {
                let msg = msg.strip_prefix(' ').unwrap_or(msg).to_string();
                self.xen_message(&msg);
            }
            None => self.guest_line(line),
        }
    }

    fn guest_line(&mut self, line: &str) {
        if let Some(n) = line
            .trim()
            .strip_prefix(hvsim_boot_protocol::EXIT_STATUS_PREFIX)
            && let Ok(n) = n.trim().parse()
        {
            self.exit_status = Some(n);
        }
        if self.guest_truncated || self.guest_text.len() + line.len() + 1 > SERIAL_CAP {
            self.guest_truncated = true;
            return;
        }
        self.guest_text.push_str(line);
        self.guest_text.push('\n');
    }

    fn xen_message(&mut self, msg: &str) {
        if self.xen_banner.is_none()
            && let Some(rest) = msg.strip_prefix("Xen version ")
        {
            self.xen_version = rest.split_whitespace().next().map(str::to_string);
            self.xen_banner = Some(msg.to_string());
        }
        if self.shutdown.is_none()
            && let Some(r) = parse_hwdom_shutdown(msg)
        {
            self.shutdown = Some(r);
        }
        if self.panic.is_none() && msg.starts_with("Panic on CPU") {
            self.panic = Some(msg.to_string());
        } else if let Some(p) = &mut self.panic
            && p.ends_with(':')
            && !msg.starts_with("****")
        {
            // The panic's message: the line after "Panic on CPU N:".
            p.push(' ');
            p.push_str(msg.trim());
        }
        if self.panic.is_some()
            && (msg.starts_with("Manual reset required")
                || msg.starts_with("Reboot in five seconds")
                || msg.starts_with("Crash in five seconds"))
        {
            self.panic_done = true;
        }
        if self.crash.is_none()
            && (msg.contains("domain_crash")
                || (msg.starts_with("Domain ") && msg.contains(" crashed")))
        {
            self.crash = Some(msg.to_string());
        }
    }

    pub(super) fn tail(&self) -> String {
        let mut s = String::new();
        for l in &self.tail {
            s.push_str(l);
            s.push('\n');
        }
        s
    }
}

/// `line` without terminal escape sequences (the firmware clears the
/// screen: printed in a test's output they would reset the terminal) and
/// other control characters but tabs (Xen's `\r`).
pub(super) fn printable(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: parameters and intermediates up to a final byte; any
            // other escape is ESC and one character.
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('\x40'..='\x7e').contains(&c) {
                        break;
                    }
                }
            }
        } else if c == '\t' || !c.is_control() {
            out.push(c);
        }
    }
    out
}

/// The shutdown a `hwdom_shutdown` line (without `(XEN) `) reports.
pub(super) fn parse_hwdom_shutdown(msg: &str) -> Option<ShutdownReason> {
    if msg.starts_with("Hardware domain ") && msg.contains(" did unsupported soft reset") {
        return Some(ShutdownReason::SoftReset);
    }
    let rest = msg.strip_prefix("Hardware Dom")?;
    let rest = rest.trim_start_matches(|c: char| c.is_ascii_digit());
    if rest.starts_with(" halted: halting machine") {
        Some(ShutdownReason::Poweroff)
    } else if rest.starts_with(" crashed:") {
        Some(ShutdownReason::Crash)
    } else if rest.starts_with(" shutdown: watchdog rebooting machine") {
        Some(ShutdownReason::Watchdog)
    } else if rest.starts_with(" shutdown: rebooting machine") {
        Some(ShutdownReason::Reboot)
    } else if let Some(r) = rest.strip_prefix(" shutdown (unknown reason ") {
        let n: String = r.chars().take_while(|c| c.is_ascii_digit()).collect();
        n.parse().ok().map(ShutdownReason::Unknown)
    } else {
        None
    }
}
