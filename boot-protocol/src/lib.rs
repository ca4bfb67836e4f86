//! The private protocol between hv-sim's runners (the KVM personalities,
//! the QEMU and real-Xen runners) and the example kernel
//! (`examples/kernel`). One definition, used by both sides, so the two
//! cannot drift apart. It is not a hypervisor ABI: the Xen and VMI ABIs
//! each side owns separately, so that a wrong constant cannot pass on both.
//!
//! * Report: text lines on port [`ports::TEXT`] (QEMU's `isa-debugcon`) and
//!   an exit status on [`ports::EXIT`] (`isa-debug-exit`); a Xen PV guest
//!   prints the same lines with `console_io` and ends with
//!   [`EXIT_STATUS_PREFIX`] and `SCHEDOP_shutdown`.
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
    /// Exit with a dword status: QEMU's isa-debug-exit default port.
    pub const EXIT: u16 = 0xf4;
    /// Xen personality: a hypercall or exception stub's dword write (the
    /// hypercall number or exception marker). No device of QEMU's pc/q35
    /// machines decodes 0xE8.
    pub const HYPERCALL: u16 = 0xe8;
    /// Trap-and-emulate personality: hv-sim's #GP entry stub's dword write.
    pub const TRAP: u16 = 0xe5;
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
}
