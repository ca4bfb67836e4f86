//! The exit-cost contract (issue 13): with sync regs a boot's register
//! ioctls are its setup's, none per exit, and its text costs an exit per
//! line, not per byte.

use super::*;
use crate::testing::{example_kernel_image, kvm_or_skip};

/// Register ioctls a vCPU may issue before its first run: the entry state
/// (get and set, regs and sregs) and a personality's first read-back.
const SETUP_IOCTLS: u64 = 6;

fn check(what: &str, b: &BootReport, handled: u64, vcpus: u64) {
    assert_eq!(b.exit_status, Some(0), "{what}:\n{}", b.text);
    assert!(b.failed().is_empty(), "{what}: {:?}", b.failed());
    let lines = b.text.lines().count() as u64;
    // An exit per line and per exit the personality handled, the exit
    // status, nothing per byte.
    assert!(
        b.exits.total() <= lines + handled + 1 + b.exits.other,
        "{what}: {} exits for {lines} lines and {handled} handled exits",
        b.exits.total()
    );
    if b.ioctls.sync_regs {
        assert!(
            b.ioctls.register_ioctls() <= SETUP_IOCTLS * vcpus,
            "{what}: {:?} over {} exits",
            b.ioctls,
            b.exits.total()
        );
    } else {
        println!("{what}: this host's KVM has no sync regs; register ioctls not checked");
    }
    assert_eq!(b.ioctls.runs, b.exits.total(), "{what}: a run per exit");
}

#[test]
fn an_exit_is_one_run_and_a_line_is_one_exit() {
    if !kvm_or_skip("an_exit_is_one_run_and_a_line_is_one_exit") {
        return;
    }
    let image = example_kernel_image().expect("example kernel builds");
    let cfg = Config::default();
    let n = boot(&image, &cfg).unwrap_or_else(|e| panic!("{e}"));
    // The native boot starts a second vCPU (issue 9): the START_AP port
    // write and that vCPU's halt are two exits the runner handles.
    check("native", &n, 2, 2);
    let v = vmi::boot_vmi(&image, &cfg).unwrap_or_else(|e| panic!("{e}"));
    check("vmi", &v.boot, v.rom_calls, 1);
    let t = trap::boot_trap(&image, &cfg).unwrap_or_else(|e| panic!("{e}"));
    check("trap-and-emulate", &t.boot, t.traps, 1);
    let x = xen::boot_xen(&image, &cfg).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(x.boot.exit_status, Some(0), "xen:\n{}", x.boot.text);
    if x.boot.ioctls.sync_regs {
        assert!(
            x.boot.ioctls.register_ioctls() <= SETUP_IOCTLS,
            "xen: {:?}",
            x.boot.ioctls
        );
    }
}

#[test]
fn text_buffer_writes_are_read_from_guest_memory() {
    let mem: GuestMemoryMmap =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x3800)]).expect("mmap");
    mem.write_slice(b"hello\n", GuestAddress(0x2000))
        .expect("write");
    let mut text = b"> ".to_vec();
    let w = hvsim_boot_protocol::text_buffer::word(0x2000, 6).expect("word");
    read_text_buffer(&mem, w.to_le_bytes(), 4, &mut text).expect("in RAM");
    assert_eq!(text, b"> hello\n");
    // Running past guest RAM: refused, the text unchanged.
    let w = hvsim_boot_protocol::text_buffer::word(0x3000, 0xfff).expect("word");
    let e = read_text_buffer(&mem, w.to_le_bytes(), 4, &mut text).unwrap_err();
    assert!(e.to_string().contains("not guest RAM"), "{e}");
    assert!(
        matches!(
            e,
            Crash::TextBuffer {
                gpa: 0x3000,
                len: 0xfff,
                ..
            }
        ),
        "{e:?}"
    );
    let e = read_text_buffer(&mem, w.to_le_bytes(), 1, &mut text).unwrap_err();
    assert!(e.to_string().contains("one dword"), "{e}");
    assert!(matches!(e, Crash::PortWidth { len: 1, .. }), "{e:?}");
    assert_eq!(text, b"> hello\n");
}

/// The exit loop keeps the first [`TEXT_CAP`] bytes of a guest's text and
/// counts the rest; stray port writes are kept up to a cap, all counted.
#[test]
fn a_guest_that_prints_forever_keeps_a_bounded_text() {
    let mut run = Run {
        text: vec![b'x'; TEXT_CAP - 3],
        ..Run::default()
    };
    run.bound_text();
    assert_eq!((run.text.len(), run.text_dropped), (TEXT_CAP - 3, 0));
    for _ in 0..3 {
        run.text.extend_from_slice(&[b'y'; 4095]);
        run.bound_text();
    }
    assert_eq!(run.text.len(), TEXT_CAP);
    assert_eq!(run.text_dropped, 3 * 4095 - 3);
    assert_eq!(&run.text[TEXT_CAP - 3..], b"yyy", "the first bytes kept");
    for i in 0..Capped::<(u16, u8)>::DEFAULT_CAP + 5 {
        run.stray_io.push((0x80, i as u8));
    }
    assert_eq!(run.stray_io.kept().len(), Capped::<(u16, u8)>::DEFAULT_CAP);
    assert_eq!(run.stray_io.dropped(), 5);
}
