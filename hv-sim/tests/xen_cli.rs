//! `hv-sim check-descriptor`.

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
