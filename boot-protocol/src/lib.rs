//! The protocol between hv-sim's runners (the KVM personalities, the QEMU
//! and real-Xen runners) and a guest kernel they boot: the example kernel
//! (`examples/kernel`), or yours (`docs/BOOT-YOUR-OWN-KERNEL.md`). One
//! definition, used by both sides, so the two cannot drift apart. It is not a hypervisor ABI: the Xen and VMI ABIs
//! each side owns separately, so that a wrong constant cannot pass on both.
//!
//! * Report: text lines on port [`ports::TEXT`] (QEMU's `isa-debugcon`, one
//!   byte per `out`) or, where the runner says it serves it
//!   ([`boot_flags::REPORT_BUFFER`]), a line per `out` on
//!   [`ports::TEXT_BUFFER`] ([`text_buffer`]); an exit status on
//!   [`ports::EXIT`] (`isa-debug-exit`). A Xen PV guest prints the same
//!   lines with `console_io` and ends with [`EXIT_STATUS_PREFIX`] and
//!   `SCHEDOP_shutdown`.
//! * Lines: `check <pass|fail|skip> <name>: <detail>` ([`CHECK_PREFIX`]),
//!   and the differential battery's `b <i> ...` ([`BATTERY_PREFIX`]).
//! * Boot flags: what the host cannot run ([`boot_flags`]), in rdi at the
//!   native entry, or as `hvsim.flags=<hex>` ([`XEN_FLAGS_KEY`]) in a Xen
//!   guest's command line.

#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]

/// I/O ports of the report protocol and of hv-sim's stubs.
pub mod ports {
    /// Text output (byte writes): QEMU's debug console port.
    pub const TEXT: u16 = 0xe9;
    /// Text output a buffer at a time (dword writes, [`super::text_buffer`]):
    /// served by hv-sim's KVM runners only, which say so with
    /// [`super::boot_flags::REPORT_BUFFER`]. No device of QEMU's pc/q35
    /// machines decodes 0xE0–0xE3.
    pub const TEXT_BUFFER: u16 = 0xe0;
    /// Exit with a dword status: QEMU's isa-debug-exit default port.
    pub const EXIT: u16 = 0xf4;
    /// Xen personality: a hypercall or exception stub's dword write (the
    /// hypercall number or exception marker). No device of QEMU's pc/q35
    /// machines decodes 0xE8.
    pub const HYPERCALL: u16 = 0xe8;
    /// Trap-and-emulate personality: hv-sim's #GP entry stub's dword write.
    pub const TRAP: u16 = 0xe5;
    /// Start the next CPU (dword write: its 64-bit entry point, below
    /// 4 GiB): served by hv-sim's native KVM runner, which says so with
    /// [`super::boot_flags::START_AP_PORT`]. The runner creates the next
    /// vCPU in the state it gives the boot CPU (long mode, its boot GDT and
    /// page tables, rdi = the boot flags, rsi = the new CPU's index) and
    /// runs it until it halts, before the write returns. No device of
    /// QEMU's pc/q35 machines decodes 0xE3.
    pub const START_AP: u16 = 0xe3;
}

/// Boot flags: what this host cannot run in a guest, and how the kernel was
/// entered.
pub mod boot_flags {
    /// The host cannot run `lar`/`lsl`/`verr` in a guest: its /dev/kvm is
    /// PVM (`kvm_pvm`), whose emulator has no `lar`/`lsl`/`verr`, so a guest
    /// executing one stops with KVM_EXIT_INTERNAL_ERROR.
    pub const NO_DESCRIPTOR_INSPECTION: u64 = 1 << 0;
    /// The host cannot deliver software interrupts (`int3`, `int n`) in a
    /// guest (PVM stops the VM). Exceptions from faults are delivered.
    pub const NO_SOFTWARE_INTERRUPTS: u64 = 1 << 1;
    // Bit 2 was "use the Xen cpuid prefix": a Xen PV kernel now always asks
    // through Xen's forced-emulation prefix, as Linux's does.
    /// Set only by the VMI-style personality on hosts where `cpuid` in the
    /// guest is not trapped: the hypervisor leaves it shows are the host's,
    /// so the kernel must not pick a backend from them.
    pub const CPUID_SHOWS_HOST: u64 = 1 << 3;
    /// Set only by the trap-and-emulate personality: the kernel runs in
    /// ring 3 and believes it runs in ring 0.
    pub const DEPRIVILEGED: u64 = 1 << 4;
    /// Set by the kernel's own Xen PV entry point, never by a loader: it was
    /// started by a Xen domain builder (real Xen or hv-sim's Xen
    /// personality) with its start info in rsi.
    pub const XEN_PV_ENTRY: u64 = 1 << 5;
    /// The runner serves [`super::ports::TEXT_BUFFER`]: the kernel may
    /// report a line per exit there instead of a byte per exit on
    /// [`super::ports::TEXT`]. Set by hv-sim's KVM runners (native, VMI-style,
    /// trap-and-emulate); never under QEMU, whose debug console sees only
    /// the byte port.
    pub const REPORT_BUFFER: u64 = 1 << 6;
    /// Run the hostile-guest checks too: calls that would raise the guest
    /// above its ring if the hypervisor accepted them, each followed by the
    /// instruction that would use the escape on the real vCPU (set by the
    /// tests that prove the VMI personality's refusals hold on hardware).
    pub const HOSTILE: u64 = 1 << 7;
    /// The runner starts a second CPU on a write to
    /// [`super::ports::START_AP`] (hv-sim's native KVM runner). Without it
    /// a kernel starts its APs the way the platform does (INIT-SIPI-SIPI
    /// through the local APIC under QEMU).
    pub const START_AP_PORT: u64 = 1 << 8;
    /// Run the descriptor-write workload ([`super::workload`]) instead of
    /// the checks (native backend).
    pub const WORKLOAD: u64 = 1 << 9;
}

/// The descriptor-write workload (issue 11, seed 2): boot, N context
/// switches (`load_kernel_stack` + `load_tls` in lazy mode), N timer-style
/// updates of a variable, with the tables and the variable laid out one of
/// three ways.
pub mod workload {
    /// Bits 10–11 of the boot flags: the layout.
    pub const LAYOUT_SHIFT: u32 = 10;
    /// Bits 16–31: N (0 means [`DEFAULT_SWITCHES`]).
    pub const SWITCHES_SHIFT: u32 = 16;
    /// N when the flags give 0.
    pub const DEFAULT_SWITCHES: u32 = 1000;
    /// The result line starts with this: `workload layout=<a|b|c>
    /// switches=<n> ticks=<n> fs_mismatches=<n> cycles=<n>`.
    pub const LINE_PREFIX: &str = "workload ";

    /// Where the tables and the timer variable live.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Layout {
        /// Each table alone in its page (pvops' `TableStorage`), the
        /// variable elsewhere.
        Separate,
        /// The variable in the GDT's page, after its 16 entries.
        GdtSharesHotData,
        /// A 128-gate IDT (2 KiB) at the start of a page whose second half
        /// is the start of BSS, the variable first in it.
        IdtSharesBss,
    }

    impl Layout {
        /// All three, in order.
        pub const ALL: [Layout; 3] = [
            Layout::Separate,
            Layout::GdtSharesHotData,
            Layout::IdtSharesBss,
        ];

        /// The layout's letter (a, b, c).
        pub fn letter(self) -> char {
            match self {
                Layout::Separate => 'a',
                Layout::GdtSharesHotData => 'b',
                Layout::IdtSharesBss => 'c',
            }
        }

        /// The layout the boot flags name.
        pub fn from_flags(flags: u64) -> Layout {
            match (flags >> LAYOUT_SHIFT) & 3 {
                1 => Layout::GdtSharesHotData,
                2 => Layout::IdtSharesBss,
                _ => Layout::Separate,
            }
        }
    }

    /// The boot flags that run the workload with `layout` and `switches`.
    pub fn flags(layout: Layout, switches: u16) -> u64 {
        let l = match layout {
            Layout::Separate => 0,
            Layout::GdtSharesHotData => 1,
            Layout::IdtSharesBss => 2,
        };
        super::boot_flags::WORKLOAD | l << LAYOUT_SHIFT | u64::from(switches) << SWITCHES_SHIFT
    }

    /// N from the boot flags.
    pub fn switches(flags: u64) -> u32 {
        match ((flags >> SWITCHES_SHIFT) & 0xffff) as u32 {
            0 => DEFAULT_SWITCHES,
            n => n,
        }
    }
}

/// The text-buffer protocol ([`ports::TEXT_BUFFER`]): one `out dx, eax`
/// per line (or per full buffer) with `eax = gpa | len`, where `gpa` is the
/// guest-physical address of the bytes, 4 KiB aligned and below 4 GiB, and
/// `len` < 4096 their count. The runner copies the bytes out of guest
/// memory; the kernel must map the buffer at the same address it passes
/// (hv-sim's personalities identity-map guest RAM).
pub mod text_buffer {
    /// Most bytes in one write.
    pub const MAX_LEN: usize = 4095;

    /// The port word for `len` bytes at `gpa`, or `None` if `gpa` is not 4
    /// KiB aligned below 4 GiB or `len` is over [`MAX_LEN`].
    pub fn word(gpa: u64, len: usize) -> Option<u32> {
        if gpa & 0xfff != 0 || gpa > u64::from(u32::MAX) || len > MAX_LEN {
            return None;
        }
        Some(gpa as u32 | len as u32)
    }

    /// The buffer a port word names: (guest-physical address, length).
    pub fn split(word: u32) -> (u64, usize) {
        (u64::from(word & !0xfff), (word & 0xfff) as usize)
    }
}

/// A Xen guest's command-line key for the boot flags: `hvsim.flags=<hex>`.
pub const XEN_FLAGS_KEY: &str = "hvsim.flags";
/// The command-line word that selects the differential battery
/// (`battery seed=<u64> count=<n> [dump]`).
pub const BATTERY_WORD: &str = "battery";
/// A check line starts with this.
pub const CHECK_PREFIX: &str = "check ";
/// A battery line starts with this.
pub const BATTERY_PREFIX: &str = "b ";
/// A Xen guest's last line before `SCHEDOP_shutdown`: `exit status <N>`.
pub const EXIT_STATUS_PREFIX: &str = "exit status ";

/// The value of `key=<value>` among the space-separated words of `cmdline`.
pub fn cmdline_value<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline
        .split(' ')
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// Does `cmdline` contain the word `word`?
pub fn cmdline_has(cmdline: &str, word: &str) -> bool {
    cmdline.split(' ').any(|w| w == word)
}

/// The boot flags in a Xen guest's command line (`hvsim.flags=0x3`), 0 if
/// absent or malformed.
pub fn cmdline_flags(cmdline: &str) -> u64 {
    cmdline_value(cmdline, XEN_FLAGS_KEY)
        .and_then(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_parsing() {
        let c = "hvsim.flags=0x3 battery seed=12 count=100 dump";
        assert_eq!(cmdline_flags(c), 3);
        assert_eq!(cmdline_value(c, "seed"), Some("12"));
        assert_eq!(cmdline_value(c, "count"), Some("100"));
        assert_eq!(cmdline_value(c, "see"), None);
        assert!(cmdline_has(c, BATTERY_WORD) && cmdline_has(c, "dump"));
        assert!(!cmdline_has(c, "batter"));
        assert_eq!(cmdline_flags(""), 0);
        assert_eq!(cmdline_flags("hvsim.flags=zz"), 0);
    }

    #[test]
    fn text_buffer_words() {
        assert_eq!(text_buffer::word(0x20_3000, 17), Some(0x20_3011));
        assert_eq!(text_buffer::split(0x20_3011), (0x20_3000, 17));
        assert_eq!(text_buffer::word(0x20_3000, 4095), Some(0x20_3fff));
        assert_eq!(text_buffer::word(0x20_3000, 4096), None);
        assert_eq!(text_buffer::word(0x20_3008, 1), None);
        assert_eq!(text_buffer::word(1 << 32, 1), None);
    }
}
