//! `hv-sim`'s subcommands on hostile input (issue 10, deliverable 5):
//! closed pipes, long lines and malformed input are handled the same way
//! in every subcommand; `hv-sim fuzz` runs, reproduces a seed and replays a
//! case.

use std::io::Write;
use std::process::{Command, Stdio};

fn hv_sim(args: &[&str], stdin: &[u8], stdout: Stdio) -> (i32, Vec<u8>, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hv-sim"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut i = c.stdin.take().unwrap();
    let input = stdin.to_vec();
    let w = std::thread::spawn(move || {
        let _ = i.write_all(&input);
    });
    let o = c.wait_with_output().unwrap();
    w.join().unwrap();
    (
        o.status.code().unwrap_or(-1),
        o.stdout,
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn run(args: &[&str], stdin: &[u8]) -> (i32, String, String) {
    let (rc, out, err) = hv_sim(args, stdin, Stdio::piped());
    (rc, String::from_utf8(out).unwrap(), err)
}

/// `hv-sim demo | head -0`: the demo's first line hits the closed pipe and
/// the process ends quietly (141), before any boot.
#[test]
fn demo_on_a_closed_pipe_ends_quietly() {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let (rc, _, err) = hv_sim(&["demo"], b"", writer.into());
    assert_eq!(rc, 141, "{err}");
    assert_eq!(err, "");
}

/// `explain -` reads stdin with check-descriptor's rules: the same lines
/// accepted, the same limit, the same errors.
#[test]
fn explain_and_check_descriptor_read_stdin_alike() {
    let good = b"  00af9b000000ffff\r\n\n0X00CF93000000FFFF\n";
    let (rc, out, err) = run(&["explain", "-"], good);
    assert_eq!(rc, 0, "{err}");
    assert_eq!(out.matches("descriptor 0x").count(), 2, "{out}");
    let (rc, out, err) = run(&["check-descriptor", "--abi", "pv64", "-"], good);
    assert_eq!(rc, 0, "{err}");
    assert_eq!(out.lines().count(), 2, "{out}");
    for (input, want) in [
        (
            &b"00af9b000000ffff\n+f\n"[..],
            "line 2: malformed descriptor \"+f\"",
        ),
        (&b"\xff\xfe\n"[..], "line 1: malformed descriptor"),
        (
            &b"00af9b000000ffff 00af9b000000ffff\n"[..],
            "line 1: malformed descriptor",
        ),
    ] {
        for args in [
            &["explain", "-"][..],
            &["check-descriptor", "--abi", "pv32", "-"][..],
        ] {
            let (rc, out, err) = run(args, input);
            assert_eq!(rc, 2, "{args:?} {input:?}: {out}{err}");
            assert!(err.contains(want), "{args:?} {input:?}: {err}");
            assert!(err.len() < 300, "{args:?}: {err}");
        }
    }
    // A 1 MiB line: refused at 4096 bytes by both, without echoing it.
    let mut long = vec![b'a'; 1 << 20];
    long.push(b'\n');
    for args in [
        &["explain", "-"][..],
        &["check-descriptor", "--abi", "pv64", "-"][..],
    ] {
        let (rc, out, err) = run(args, &long);
        assert_eq!(rc, 2, "{args:?}");
        assert_eq!(out, "");
        assert!(err.contains("line 1: longer than 4096 bytes"), "{err:.300}");
        assert!(err.len() < 300, "{} bytes", err.len());
    }
}

/// Both subcommands stop at the first malformed argument, after the output
/// of the ones before it, with status 2.
#[test]
fn first_malformed_argument_stops_both() {
    let (rc, out, err) = run(
        &["explain", "00af9b000000ffff", "+f", "00cf93000000ffff"],
        b"",
    );
    assert_eq!(rc, 2);
    assert_eq!(out.matches("descriptor 0x").count(), 1, "{out}");
    assert!(err.contains("malformed descriptor \"+f\""), "{err}");
    let (rc, out, err) = run(
        &[
            "check-descriptor",
            "--abi",
            "pv64",
            "00af9b000000ffff",
            "+f",
            "00cf93000000ffff",
        ],
        b"",
    );
    assert_eq!(rc, 2);
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(err.contains("malformed descriptor \"+f\""), "{err}");
}

/// `hv-sim fuzz`: a short run of every target prints its seed, the CPU and
/// a line per target; the same seed gives the same calls; a failing case
/// replays from its words file.
#[test]
fn fuzz_runs_reproducibly_and_replays() {
    let args = [
        "fuzz", "--target", "all", "--calls", "4000", "--seed", "0x1234",
    ];
    let (rc, out, err) = run(&args, b"");
    assert_eq!(rc, 0, "{out}{err}");
    assert!(out.contains("seed 0x0000000000001234"), "{out}");
    assert!(out.contains("CPU: "), "{out}");
    for t in [
        "xen-pv64",
        "xen-pv32",
        "vmi64",
        "vmi32",
        "rom",
        "emulate",
        "core",
        "xen-backend",
        "vmi-backend",
    ] {
        assert!(out.contains(&format!("  {t} ")), "{t}: {out}");
    }
    let counts = |o: &str| -> Vec<String> {
        o.lines()
            .filter(|l| l.starts_with("  "))
            .map(|l| l.split(" calls").next().unwrap_or("").to_string())
            .collect()
    };
    let (_, again, _) = run(&args, b"");
    assert_eq!(counts(&out), counts(&again));
    // Bad arguments: status 2, short message.
    let (rc, out, _) = run(&["fuzz", "--target", "nope", "--calls", "1"], b"");
    assert_eq!(rc, 2);
    assert!(out.contains("unknown target"), "{out}");
    let (rc, _, _) = run(&["fuzz", "--seed", "+f", "--calls", "1"], b"");
    assert_eq!(rc, 2);
    // Replay: a corpus entry replays clean.
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../hv-sim/fuzz-corpus/xen-pv64");
    let first = std::fs::read_dir(&dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let (rc, out, err) = run(
        &[
            "fuzz",
            "--target",
            "xen-pv64",
            "--replay",
            first.to_str().unwrap(),
        ],
        b"",
    );
    assert_eq!(rc, 0, "{out}{err}");
    assert!(out.contains("no failure"), "{out}");
}
