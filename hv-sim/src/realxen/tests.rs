use super::image::version_from_name;
use super::run::initrd_arg;
use super::scan::{Scan, parse_hwdom_shutdown, printable};
use super::*;
use crate::kvm::parse_checks;

#[test]
fn version_from_file_names() {
    assert_eq!(
        version_from_name(Path::new("/boot/xen-4.17-amd64.gz")).as_deref(),
        Some("4.17")
    );
    assert_eq!(
        version_from_name(Path::new("xen-4.19.1")).as_deref(),
        Some("4.19.1")
    );
    assert_eq!(version_from_name(Path::new("/tmp/xen")), None);
    assert_eq!(version_from_name(Path::new("xen-amd64")), None);
}

#[test]
fn hwdom_shutdown_lines() {
    use ShutdownReason::*;
    let p = parse_hwdom_shutdown;
    assert_eq!(p("Hardware Dom0 halted: halting machine"), Some(Poweroff));
    assert_eq!(
        p("Hardware Dom0 crashed: 'noreboot' set - not rebooting."),
        Some(Crash)
    );
    assert_eq!(p("Hardware Dom0 shutdown: rebooting machine"), Some(Reboot));
    assert_eq!(
        p("Hardware Dom0 shutdown: watchdog rebooting machine"),
        Some(Watchdog)
    );
    assert_eq!(
        p("Hardware domain 0 did unsupported soft reset, rebooting."),
        Some(SoftReset)
    );
    assert_eq!(
        p("Hardware Dom0 shutdown (unknown reason 7): 'noreboot' set - not rebooting."),
        Some(Unknown(7))
    );
    assert_eq!(p("Dom0 has maximum 1 VCPUs"), None);
}

#[test]
fn initrd_string() {
    assert_eq!(initrd_arg("g", "").unwrap(), "g");
    assert_eq!(initrd_arg("g", " a,b c ").unwrap(), "g a,,b c");
    assert!(matches!(
        initrd_arg("g", "a\nb"),
        Err(RealXenError::BadCmdline(_))
    ));
    assert!(matches!(
        initrd_arg("g", &"x".repeat(2000)),
        Err(RealXenError::BadCmdline(_))
    ));
}

const SERIAL: &str = "SeaBIOS (version 1.16.2)\r\n\
    Booting from ROM..\x1bc\x1b[2J(XEN) Xen version 4.17.7 (Debian 4.17.7+13) (x) debug=n\r\n\
    (XEN) Freed 656kB init memory\r\n\
    check pass hello: ok\r\n\
    check skip later: not here\r\n\
    exit status 0\r\n\
    (XEN) Hardware Dom0 halted: halting machine\r\n";

#[test]
fn scan_separates_xen_and_guest() {
    let mut s = Scan::default();
    // Fed in pieces that split lines.
    for chunk in SERIAL.as_bytes().chunks(7) {
        s.feed(chunk);
    }
    s.finish();
    assert_eq!(s.xen_version.as_deref(), Some("4.17.7"));
    assert_eq!(
        s.guest_text,
        "check pass hello: ok\ncheck skip later: not here\nexit status 0\n"
    );
    assert_eq!(s.exit_status, Some(0));
    assert_eq!(s.shutdown, Some(ShutdownReason::Poweroff));
    assert!(s.crash.is_none() && s.panic.is_none());
    assert!(!s.serial.contains('\r') && !s.serial.contains('\x1b'));
    assert!(
        s.serial
            .contains("\nBooting from ROM..(XEN) Xen version 4.17.7")
    );
    assert_eq!(s.serial_bytes, SERIAL.len() as u64);
    let r = RealXenReport {
        checks: parse_checks(&s.guest_text),
        serial: s.serial,
        serial_truncated: false,
        serial_bytes: s.serial_bytes,
        guest_text: s.guest_text,
        exit_status: s.exit_status,
        shutdown: ShutdownReason::Poweroff,
        xen_version: s.xen_version,
        xen_banner: s.xen_banner,
        wall: Duration::ZERO,
    };
    assert_eq!(
        r.summary_line("xen"),
        "backend=xen on=xen-4.17 checks=1/1 skipped=1"
    );
}

#[test]
fn scan_sees_crashes_and_panics() {
    let mut s = Scan::default();
    s.feed(
        b"(XEN) Xen version 4.17.7\r\nhi\r\n(XEN) d0v0 Unhandled: vec 6\r\n\
          (XEN) domain_crash_sync called from entry.S\r\n\
          (XEN) Domain 0 (vcpu#0) crashed on cpu#0:\r\n\
          (XEN) Hardware Dom0 crashed: 'noreboot' set - not rebooting.\r\n",
    );
    assert_eq!(
        s.crash.as_deref(),
        Some("domain_crash_sync called from entry.S")
    );
    assert_eq!(s.shutdown, Some(ShutdownReason::Crash));
    assert!(s.tail().contains("Unhandled"));

    let mut s = Scan::default();
    s.feed(
        b"(XEN) Xen version 4.17.7\r\n(XEN) \r\n(XEN) ****\r\n(XEN) Panic on CPU 0:\r\n\
          (XEN) oops\r\n(XEN) ****\r\n(XEN) \r\n",
    );
    assert_eq!(s.panic.as_deref(), Some("Panic on CPU 0: oops"));
    assert!(!s.panic_done);
    s.feed(b"(XEN) Manual reset required ('noreboot' specified)\r\n");
    assert!(s.panic_done);
}

#[test]
fn escapes_are_dropped() {
    assert_eq!(printable("a\x1bc\x1b[?7l\x1b[2J\x1b[0mb\tc\r"), "ab\tc");
    assert_eq!(printable("x\x1b"), "x");
}

#[test]
fn serial_is_capped() {
    let mut s = Scan::default();
    s.feed(b"(XEN) Xen version 4.17.7\n");
    let line = vec![b'x'; 1 << 20];
    for _ in 0..20 {
        s.feed(&line);
        s.feed(b"\n");
    }
    s.feed(b"(XEN) Hardware Dom0 halted: halting machine\n");
    assert!(s.serial_truncated);
    assert!(s.serial.len() <= SERIAL_CAP);
    assert_eq!(s.shutdown, Some(ShutdownReason::Poweroff));
}
