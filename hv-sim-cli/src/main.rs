//! `hv-sim`: command-line front end.
//!
//! Every subcommand writes its output through [`out!`]/[`write_out`]: a
//! closed stdout (`hv-sim explain ... | head -0`) ends the process quietly
//! with status 141 (128 + SIGPIPE, what a shell shows for a tool killed by
//! the signal), any other write error is reported on stderr with status 2;
//! nothing panics. Descriptors are read by one function
//! ([`hv_sim::explain::for_each_descriptor`]) in every subcommand.

use std::io::{BufWriter, Write};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Print a line on stdout, ending the process as [`output_failed`] says
/// when stdout cannot be written.
macro_rules! out {
    ($($t:tt)*) => {
        $crate::write_out(format_args!($($t)*))
    };
}

mod demo;
mod fuzz;

#[derive(Parser)]
#[command(
    name = "hv-sim",
    version,
    about = "Userspace hypervisor simulator for pvops"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run every descriptor op through each backend in-process, boot the
    /// example kernel under KVM, QEMU and real Xen where present, and print
    /// a summary table with one verdict line last.
    Demo {
        /// Print every check and figure of every boot (wrapped at 100
        /// columns).
        #[arg(long, short)]
        verbose: bool,
    },
    /// Measure and print one table of the cost figures (dispatch,
    /// in-process hypercalls, the emulator, exits per kernel operation, µs
    /// per exit), each with its ratio against a floor from the same run.
    Bench,
    /// Decode 8-byte descriptors into their fields.
    ///
    /// A descriptor is exactly 16 hex digits (either case), optionally
    /// prefixed by 0x or 0X, e.g. 0x00af9b000000ffff; no sign, spaces or
    /// short forms (the same forms check-descriptor takes). With `-`, stdin
    /// holds one per line, as for check-descriptor. The first malformed
    /// descriptor stops with exit status 2.
    Explain {
        /// Descriptors: exactly 16 hex digits each, optional 0x/0X prefix; a
        /// single `-` reads one per line from stdin.
        #[arg(required = true)]
        hex: Vec<String>,
    },
    /// Run descriptors through Xen's check_descriptor: prints `HEX ok STORED`
    /// or `HEX rejected REASON` per input.
    ///
    /// A descriptor is exactly 16 hex digits (either case), optionally
    /// prefixed by 0x or 0X, e.g. 0x00af9b000000ffff; no sign, spaces or
    /// short forms (the same forms explain takes). With `-`, stdin holds one
    /// per line; blank lines and spaces around a descriptor (CRLF endings
    /// too) are ignored, and a line longer than 4096 bytes is refused. The
    /// first malformed descriptor stops with exit status 2.
    CheckDescriptor {
        /// Guest ABI.
        #[arg(long, value_enum)]
        abi: AbiArg,
        /// Descriptors: exactly 16 hex digits each, optional 0x/0X prefix; a
        /// single `-` reads one per line from stdin.
        #[arg(required = true)]
        hex: Vec<String>,
    },
    /// Fuzz hv-sim and the guest crates in-process: structured and mutated
    /// inputs, invariants checked after every call (see the README's
    /// "Fuzzing" section).
    Fuzz {
        /// A target (xen-pv64, xen-pv32, vmi64, vmi32, rom, emulate, core,
        /// xen-backend, vmi-backend) or `all`.
        #[arg(long, default_value = "all")]
        target: String,
        /// Calls in all (split among the targets of `all` by weight).
        #[arg(long, default_value_t = 1_000_000)]
        calls: u64,
        /// Seed (decimal or 0x hex); `random` draws one and prints it.
        #[arg(long, default_value = "random")]
        seed: String,
        /// Corpus directory (`<dir>/<target>/*.words`).
        #[arg(long)]
        corpus: Option<std::path::PathBuf>,
        /// Save cases that found new outcomes under this directory.
        #[arg(long)]
        save_corpus: Option<std::path::PathBuf>,
        /// Replay one case (a words file, as a failure prints) and exit.
        #[arg(long)]
        replay: Option<std::path::PathBuf>,
        /// Threads to run targets on.
        #[arg(long, default_value_t = 1)]
        jobs: usize,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum AbiArg {
    Pv64,
    Pv32,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Demo { verbose } => demo::run(verbose),
        Cmd::Bench => {
            let table = hv_sim::bench::run(&mut |s| eprintln!("bench: {s}"));
            out!("{table}");
            ExitCode::SUCCESS
        }
        Cmd::Explain { hex } => descriptors("explain", &hex, |out, _, v| {
            out.write_all(hv_sim::explain::explain(v).as_bytes())
        }),
        Cmd::CheckDescriptor { abi, hex } => {
            let abi = match abi {
                AbiArg::Pv64 => hv_sim::xen::Abi::Pv64,
                AbiArg::Pv32 => hv_sim::xen::Abi::Pv32,
            };
            descriptors(
                "check-descriptor",
                &hex,
                |out, h, d| match hv_sim::xen::check_descriptor(abi, d) {
                    Ok(v) => writeln!(out, "{h} ok {v:016x}"),
                    Err(r) => writeln!(out, "{h} rejected {r}"),
                },
            )
        }
        Cmd::Fuzz {
            target,
            calls,
            seed,
            corpus,
            save_corpus,
            replay,
            jobs,
        } => {
            let args = fuzz::CliArgs {
                target,
                calls,
                seed,
                corpus,
                save_corpus,
                replay,
                jobs,
            };
            ExitCode::from(fuzz::cli(&args, &mut |line| out!("{line}")))
        }
    }
}

/// Write formatted output and a newline to stdout (see [`output_failed`]).
fn write_out(args: std::fmt::Arguments<'_>) {
    let mut o = std::io::stdout().lock();
    if let Err(e) = o.write_fmt(args).and_then(|()| o.write_all(b"\n")) {
        output_failed(&e)
    }
}

/// Writing stdout failed: a closed pipe ends the process quietly with
/// status 141 (128 + SIGPIPE), as a tool killed by SIGPIPE; anything else
/// is reported on stderr with status 2.
fn output_failed(e: &std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(141);
    }
    let _ = writeln!(std::io::stderr(), "hv-sim: writing output: {e}");
    std::process::exit(2)
}

/// Report a subcommand's error on stderr and exit 2. Writing to stderr can
/// fail too (a closed pipe): then the exit status alone tells.
fn fail(cmd: &str, e: &str) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "hv-sim {cmd}: {e}");
    ExitCode::from(2)
}

/// `explain` and `check-descriptor`: each descriptor through `each`, read
/// by [`hv_sim::explain::for_each_descriptor`] (the same inputs, the same
/// errors, for both).
fn descriptors(
    cmd: &str,
    hex: &[String],
    mut each: impl FnMut(&mut dyn Write, &str, u64) -> std::io::Result<()>,
) -> ExitCode {
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let r = hv_sim::explain::for_each_descriptor(hex, std::io::stdin().lock(), |h, v| {
        each(&mut out, h, v)
    });
    // What was explained before a malformed input is printed before its
    // error.
    if let Err(e) = out.flush() {
        output_failed(&e);
    }
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(hv_sim::explain::InputError::Output(e)) => output_failed(&e),
        Err(e) => fail(cmd, &e.to_string()),
    }
}
