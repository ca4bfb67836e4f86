//! `hv-sim check-descriptor` and `hv-sim explain` on the command line.

use std::io::Write;
use std::process::{Command, Stdio};

fn run(args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hv-sim"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let o = c.wait_with_output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8(o.stdout).unwrap(),
        String::from_utf8(o.stderr).unwrap(),
    )
}

#[test]
fn args_echoed_and_checked() {
    let (rc, out, _) = run(
        &[
            "check-descriptor",
            "--abi",
            "pv64",
            "0x00af9b000000FFFF",
            "0000890000000067",
        ],
        "",
    );
    assert_eq!(rc, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "0x00af9b000000FFFF ok 00affb000000ffff");
    assert!(
        lines[1].starts_with("0000890000000067 rejected "),
        "{}",
        lines[1]
    );
}

#[test]
fn pv32_rules() {
    let (rc, out, _) = run(
        &[
            "check-descriptor",
            "--abi",
            "pv32",
            "00af9b000000ffff",
            "00cf9b000000ffff",
        ],
        "",
    );
    assert_eq!(rc, 0);
    assert!(out.lines().next().unwrap().contains("rejected L bit"));
    assert_eq!(
        out.lines().nth(1).unwrap(),
        "00cf9b000000ffff ok 00cfbb000000ffff"
    );
}

#[test]
fn stdin_mode() {
    let input = "00cf93000000ffff\r\n0x00008c0100100000\n";
    let (rc, out, _) = run(&["check-descriptor", "--abi", "pv64", "-"], input);
    assert_eq!(rc, 0);
    assert_eq!(
        out,
        "00cf93000000ffff ok 00cff3000000ffff\n0x00008c0100100000 rejected call gate reserved bits set (high dword 0x00008c01): pv64 gates need bits 0-7 clear (parameter count 0)\n"
    );
}

#[test]
fn malformed_input_fails() {
    for bad in ["123", "0x", "00cf93000000fffg", "00cf93000000ffff0"] {
        let (rc, _, err) = run(&["check-descriptor", "--abi", "pv64", bad], "");
        assert_ne!(rc, 0, "{bad}");
        assert!(err.contains("malformed descriptor"), "{err}");
    }
    let (rc, _, err) = run(
        &["check-descriptor", "--abi", "pv64", "-"],
        "00cf93000000ffff\nzz\n",
    );
    assert_ne!(rc, 0);
    assert!(err.contains("line 2"), "{err}");
    let (rc, _, _) = run(
        &["check-descriptor", "--abi", "pv16", "00cf93000000ffff"],
        "",
    );
    assert_ne!(rc, 0);
}

#[test]
fn stdin_tolerates_blank_lines_and_crlf() {
    let (code, out, err) = run(
        &["check-descriptor", "--abi", "pv64", "-"],
        "00cf9a000000ffff\r\n\r\n  \n0000e50000000000\r\n",
    );
    assert_eq!(code, 0, "{err}");
    let lines: Vec<_> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert_eq!(lines[0], "00cf9a000000ffff ok 00cffa000000ffff");
    assert!(lines[1].starts_with("0000e50000000000 rejected "), "{out}");
}

/// Issue 10 item 4: `explain` and `check-descriptor` parse descriptors with
/// one function, so both take (and both refuse) the same inputs.
#[test]
fn explain_and_check_descriptor_accept_the_same_forms() {
    let good = [
        "00af9b000000ffff",
        "0x00af9b000000ffff",
        "0X00AF9B000000FFFF",
        "0x00Af9b000000fFfF",
    ];
    let bad = [
        "+f",
        "f",
        "0",
        "0x0",
        "0x",
        "+0af9b000000ffff",
        "0x+0af9b000000ffff",
        "00af9b000000ffff0",
        " 00af9b000000ffff",
        "00af9b000000ffff ",
        "00af_9b00_0000_ffff",
        "0x0x00af9b000000ff",
        "zz",
    ];
    for h in good {
        let (rc, out, err) = run(&["explain", h], "");
        assert_eq!(rc, 0, "explain {h:?}: {err}");
        assert!(
            out.starts_with("descriptor 0x00af9b000000ffff\n"),
            "explain {h:?}: {out}"
        );
        let (rc, out, err) = run(&["check-descriptor", "--abi", "pv64", h], "");
        assert_eq!(rc, 0, "check-descriptor {h:?}: {err}");
        assert_eq!(out, format!("{h} ok 00affb000000ffff\n"));
    }
    for h in bad {
        for args in [
            &["explain", h][..],
            &["check-descriptor", "--abi", "pv64", h][..],
        ] {
            let (rc, out, err) = run(args, "");
            assert_eq!(rc, 2, "{args:?} should be refused: {out}{err}");
            assert_eq!(out, "", "{args:?}");
            assert!(
                err.contains("malformed descriptor") && err.contains("exactly 16 hex digits"),
                "{args:?}: {err}"
            );
        }
    }
    // The same parser behind `-` (whose lines are trimmed first).
    let (rc, _, err) = run(&["check-descriptor", "--abi", "pv64", "-"], "+f\n");
    assert_eq!(rc, 2);
    assert!(err.contains("line 1: malformed descriptor \"+f\""), "{err}");
    // --help documents the forms, for both.
    for cmd in ["explain", "check-descriptor"] {
        let (rc, out, _) = run(&[cmd, "--help"], "");
        assert_eq!(rc, 0);
        assert!(out.contains("exactly 16 hex digits"), "{cmd}: {out}");
        assert!(out.contains("0x"), "{cmd}: {out}");
    }
}

/// Run `args` with stdout going to `stdout`; returns the exit code and
/// stderr.
fn run_to(args: &[&str], stdin: &str, stdout: Stdio) -> (i32, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hv-sim"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let o = c.wait_with_output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8(o.stderr).unwrap(),
    )
}

/// The invocations that write to stdout (all but `demo`).
const WRITERS: &[(&[&str], &str)] = &[
    (&["explain", "0x00af9b000000ffff"], ""),
    (&["explain", "0x00af9b000000ffff", "zz"], ""),
    (&["explain", "-"], "00cf9b000000ffff\n"),
    (
        &["check-descriptor", "--abi", "pv64", "00af9b000000ffff"],
        "",
    ),
    (
        &["check-descriptor", "--abi", "pv32", "-"],
        "00cf9b000000ffff\n",
    ),
];

/// Issue 10 item 2: a closed stdout (`hv-sim explain ... | head -c0`) ends
/// every subcommand quietly with status 141 (128 + SIGPIPE, what a shell
/// shows for a tool the signal killed); `explain` used to panic (exit 101).
#[test]
fn closed_stdout_ends_quietly_not_a_panic() {
    for &(args, stdin) in WRITERS {
        // The read end is closed before the child starts: every write to
        // stdout fails with EPIPE (Rust programs ignore SIGPIPE).
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let (rc, err) = run_to(args, stdin, writer.into());
        assert_eq!(rc, 141, "{args:?}: {err}");
        assert_eq!(err, "", "{args:?}");
    }
}

/// Issue 10 item 2: any other write error on stdout (a full disk,
/// /dev/full) is reported on stderr with status 2, never a panic.
#[test]
fn stdout_write_error_is_reported_not_a_panic() {
    let Ok(full) = std::fs::OpenOptions::new().write(true).open("/dev/full") else {
        eprintln!("no /dev/full here; skipped");
        return;
    };
    for &(args, stdin) in WRITERS {
        let (rc, err) = run_to(args, stdin, full.try_clone().unwrap().into());
        assert_eq!(rc, 2, "{args:?}: {err}");
        assert!(
            err.contains("writing output") && !err.contains("panicked"),
            "{args:?}: {err}"
        );
    }
}

/// Run `check-descriptor --abi pv64 -` with `input` written from another
/// thread (the child may stop reading early). Returns the exit code, stdout,
/// stderr and whether all of `input` was written.
fn run_stdin_bytes(input: Vec<u8>) -> (i32, String, String, bool) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hv-sim"))
        .args(["check-descriptor", "--abi", "pv64", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = c.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&input).is_ok());
    let o = c.wait_with_output().unwrap();
    let wrote_all = writer.join().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8(o.stdout).unwrap(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
        wrote_all,
    )
}

/// Issue 10 item 3: a stdin line is read in bounded chunks and refused past
/// 4096 bytes, naming the line and the limit; the child stops reading
/// there, and its error does not echo the line.
#[test]
fn stdin_lines_are_bounded() {
    // 64 MiB on one line after a good one: refused at line 2, long before
    // the writer is done.
    let mut input = b"00cf93000000ffff\n".to_vec();
    input.resize(input.len() + (64 << 20), b'0');
    input.extend_from_slice(b"\n00cf93000000ffff\n");
    let (rc, out, err, wrote_all) = run_stdin_bytes(input);
    assert_eq!(rc, 2, "{err}");
    assert_eq!(out, "00cf93000000ffff ok 00cff3000000ffff\n");
    assert!(
        err.contains("line 2") && err.contains("4096 bytes"),
        "{}",
        &err[..err.len().min(300)]
    );
    assert!(err.len() < 300, "stderr is {} bytes", err.len());
    assert!(!wrote_all, "hv-sim read the whole 64 MiB line");

    // The limit is 4096 bytes before the newline: a padded descriptor of
    // exactly that length is read, one byte more is refused.
    let line = |len: usize| format!("{}00cf93000000ffff\n", " ".repeat(len - 16));
    let (rc, out, err, _) = run_stdin_bytes(line(4096).into_bytes());
    assert_eq!(rc, 0, "{err}");
    assert_eq!(out, "00cf93000000ffff ok 00cff3000000ffff\n");
    let (rc, _, err, _) = run_stdin_bytes(line(4097).into_bytes());
    assert_eq!(rc, 2);
    assert!(err.contains("line 1: longer than 4096 bytes"), "{err}");
}

/// Issue 10 item 3: a malformed descriptor is quoted by a short prefix
/// only, on stdin and as an argument, in both subcommands.
#[test]
fn errors_quote_only_a_prefix_of_bad_input() {
    let long = "x".repeat(4000);
    let (rc, _, err, _) = run_stdin_bytes(format!("{long}\n").into_bytes());
    assert_eq!(rc, 2);
    assert!(err.contains("line 1: malformed descriptor"), "{err}");
    assert!(err.contains("(4000 bytes)"), "{err}");
    assert!(err.len() < 300, "stderr is {} bytes", err.len());
    let long = "y".repeat(100_000);
    for args in [
        &["explain", &long][..],
        &["check-descriptor", "--abi", "pv64", &long][..],
    ] {
        let (rc, _, err) = run(args, "");
        assert_eq!(rc, 2);
        assert!(err.contains("malformed descriptor"), "{err:.300}");
        assert!(err.contains("(100000 bytes)"), "{err:.300}");
        assert!(err.len() < 300, "stderr is {} bytes", err.len());
    }
}
