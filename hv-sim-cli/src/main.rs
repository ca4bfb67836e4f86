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

mod fuzz;

/// Print a line on stdout, ending the process as [`output_failed`] says
/// when stdout cannot be written.
macro_rules! out {
    ($($t:tt)*) => {
        write_out(format_args!($($t)*))
    };
}

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
    /// Run every descriptor op through a backend and check its effect.
    Demo,
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
        Cmd::Demo => demo(),
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

fn demo() -> ExitCode {
    let mut ok = true;
    out!("== in-process: native backend against the SoftCpu instruction model");
    let report = hv_sim::demo::run_native_in_process();
    for c in &report.checks {
        out!(
            "  [{}] {} — {}",
            if c.passed { "pass" } else { "FAIL" },
            c.name,
            c.detail
        );
    }
    out!(
        "  instructions executed by the CPU model: {}",
        report.instructions.join("; ")
    );
    out!(
        "  in-process native: checks={}/{}",
        report.passed(),
        report.checks.len()
    );
    ok &= report.passed() == report.checks.len();

    let mut in_process = |title: &str, report: hv_sim::demo::DemoReport| {
        out!("== in-process: {title}");
        for c in &report.checks {
            out!(
                "  [{}] {} — {}",
                if c.passed { "pass" } else { "FAIL" },
                c.name,
                c.detail
            );
        }
        out!(
            "  in-process {}: checks={}/{} hypercalls={}",
            report.backend,
            report.passed(),
            report.checks.len(),
            report.hypercalls
        );
        ok &= report.passed() == report.checks.len();
        report
    };
    let xen_local = in_process(
        "Xen-style backend against hv-sim's Xen PV domain",
        hv_sim::demo::run_xen_in_process(),
    );
    let vmi_local = in_process(
        "VMI-style backend against hv-sim's VMI personality",
        hv_sim::demo::run_vmi_in_process(),
    );

    out!("== KVM: the example kernel (examples/kernel) booted in a real VM, native backend");
    let mut smp = Vec::new();
    let summary = match kvm_boot(&mut ok, hv_sim::kvm::boot) {
        Boot::Skipped(_) => {
            out!("  (the in-process run above is what can run here)");
            None
        }
        Boot::Failed => None,
        Boot::Ran(r) => {
            if hv_sim::kvm::host_is_pvm() {
                out!(
                    "  host: /dev/kvm is PVM (kvm_pvm): lar/lsl/verr and int n cannot run in a guest here; those checks are skipped and the same effects are checked through segment loads and faults"
                );
            }
            print_checks(&r.checks);
            out!(
                "  exit status {:?}; VM exits: {} port I/O, {} MMIO, {} HLT, {} other; rejected calls: 0",
                r.exit_status,
                r.exits.io,
                r.exits.mmio,
                r.exits.hlt,
                r.exits.other
            );
            ok &= r.failed().is_empty() && r.exit_status == Some(0);
            smp.push(format!("native/KVM {}", smp_verdict(&r.checks)));
            Some(r.summary_line("native", 0))
        }
    };
    out!(
        "== KVM: the same kernel booted with hv-sim's Xen-style personality (hypercall page, ring 3), xen backend"
    );
    let mut xen_calls: Option<(u64, usize)> = None;
    let xen_summary = match kvm_boot(&mut ok, hv_sim::kvm::xen::boot_xen) {
        Boot::Skipped(_) | Boot::Failed => None,
        Boot::Ran(r) => {
            print_checks(&r.boot.checks);
            let kinds: Vec<String> = r
                .calls_by_name()
                .iter()
                .map(|(n, (d, m))| format!("{n} {d}+{m}"))
                .collect();
            out!(
                "  hypercalls by kind (direct+in multicalls): {}",
                kinds.join(", ")
            );
            for (name, errno, reason) in r.rejected() {
                out!("  refused as on Xen: {name} = {errno}: {reason}");
            }
            out!(
                "  exit status {:?} (shutdown reason {:?}); {} cpuid(s) emulated via the Xen prefix; exceptions bounced by vector {:?}, {} iret(s); {} page-table mirror flushes",
                r.boot.exit_status,
                r.shutdown,
                r.emulated_cpuids,
                r.bounced,
                r.irets,
                r.pte_flushes
            );
            ok &=
                r.boot.failed().is_empty() && r.boot.exit_status == Some(0) && r.invariants.is_ok();
            // Descriptor work only: the console and shutdown calls are the
            // report protocol, which the trap-and-emulate boot does on ports.
            let by = r.calls_by_name();
            let report = |n: &str| by.get(n).map_or(0, |c| c.0 + c.1);
            let report_calls = report("console_io") + report("sched_op");
            let carried: usize = by
                .iter()
                .filter(|(n, _)| !matches!(**n, "console_io" | "sched_op"))
                .map(|(n, (d, m))| if *n == "multicall" { *m } else { d + m })
                .sum();
            xen_calls = Some((r.hypercalls - report_calls as u64, carried));
            Some(r.summary())
        }
    };
    out!(
        "== KVM: the same kernel booted with hv-sim's VMI-style personality (option ROM at 0xC0000, ring 3), vmi backend"
    );
    let vmi_summary = match kvm_boot(&mut ok, hv_sim::kvm::vmi::boot_vmi) {
        Boot::Skipped(_) | Boot::Failed => None,
        Boot::Ran(r) => {
            print_checks(&r.boot.checks);
            let kinds: Vec<String> = r
                .calls_by_name()
                .iter()
                .map(|(n, c)| format!("{n} {c}"))
                .collect();
            out!("  ROM calls by kind: {}", kinds.join(", "));
            for (name, errno, reason) in r.rejected() {
                out!("  refused by the VMI personality: {name} = {errno}: {reason}");
            }
            let (deferred, flushes) = r.lazy_batches();
            out!(
                "  exit status {:?}; VM exits: {} port I/O ({} ROM calls), {} MMIO, {} HLT, {} other; {} calls deferred in lazy mode, applied by {} flushes; real tables installed {} times",
                r.boot.exit_status,
                r.boot.exits.io,
                r.rom_calls,
                r.boot.exits.mmio,
                r.boot.exits.hlt,
                r.boot.exits.other,
                deferred,
                flushes,
                r.installs
            );
            ok &= r.boot.failed().is_empty() && r.boot.exit_status == Some(0);
            Some(r.summary())
        }
    };
    let trap_summary = trap_section(&mut ok, xen_calls);
    out!("== QEMU (TCG): the same kernel image through its PVH entry, native backend");
    match hv_sim::qemu::available() {
        Err(why) => out!("  SKIPPED: {why}"),
        Ok(()) => match hv_sim::kernel_build::build_example_kernel()
            .map_err(|e| e.to_string())
            .and_then(|elf| hv_sim::qemu::boot(&elf, std::time::Duration::from_secs(120)))
        {
            Err(e) => {
                out!("  boot failed: {e}");
                ok = false;
            }
            Ok(r) => {
                print_checks(&r.checks);
                out!(
                    "  qemu native: checks={}/{} exit status {:?}",
                    r.passed(),
                    r.ran(),
                    r.exit_status
                );
                ok &= r.failed().is_empty() && r.exit_status == Some(0);
                smp.push(format!("native/QEMU -smp 2 {}", smp_verdict(&r.checks)));
            }
        },
    }
    let real_xen_summary = real_xen_section(&mut ok);
    out!("== summary");
    match summary {
        Some(line) => out!("{line}"),
        None => out!(
            "backend=native checks={}/{} hypercalls=0 exits=0 (in-process; no KVM boot)",
            report.passed(),
            report.checks.len()
        ),
    }
    match xen_summary {
        Some(line) => out!("{line}"),
        None => out!(
            "{} (in-process against hv-sim's Xen domain; no KVM boot)",
            xen_local.summary()
        ),
    }
    match vmi_summary {
        Some(line) => out!("{line}"),
        None => out!(
            "{} (in-process against hv-sim's VMI personality; no KVM boot)",
            vmi_local.summary()
        ),
    }
    for line in trap_summary {
        out!("{line}");
    }
    for line in real_xen_summary {
        out!("{line}");
    }
    if !smp.is_empty() {
        out!(
            "2 CPUs (each its own GDT, TR/TSS.rsp0, FS base): {}",
            smp.join(", ")
        );
    }
    if hv_sim::kvm::available().is_ok() && hv_sim::kvm::host_is_pvm() {
        out!(
            "(skipped = checks this host cannot run in a KVM guest: /dev/kvm is PVM, which cannot emulate lar/lsl/verr or int n; the QEMU boot runs them)"
        );
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The example kernel's 2-CPU check in a boot: pass, FAIL, skip or missing.
fn smp_verdict(checks: &[hv_sim::kvm::GuestCheck]) -> &'static str {
    match checks.iter().find(|c| c.name.starts_with("smp 2 CPUs")) {
        Some(c) if c.skipped => "skip",
        Some(c) if c.passed => "pass",
        Some(_) => "FAIL",
        None => "missing",
    }
}

/// Print a boot's checks, one per line.
fn print_checks(checks: &[hv_sim::kvm::GuestCheck]) {
    for c in checks {
        let v = if c.skipped {
            "skip"
        } else if c.passed {
            "pass"
        } else {
            "FAIL"
        };
        out!("  [{v}] {} — {}", c.name, c.detail);
    }
}

/// One KVM boot of the demo.
enum Boot<T> {
    /// No KVM here (the reason was printed).
    Skipped(String),
    /// Building or booting failed (printed; the demo fails).
    Failed,
    /// The guest ran.
    Ran(T),
}

/// Build the example kernel and boot it with `boot` (one of the KVM
/// personalities), printing `SKIPPED` or the failure as the demo reports
/// them.
fn kvm_boot<T>(
    ok: &mut bool,
    boot: impl FnOnce(&[u8], &hv_sim::kvm::Config) -> Result<T, hv_sim::kvm::KvmError>,
) -> Boot<T> {
    if let Err(why) = hv_sim::kvm::available() {
        out!("  SKIPPED: KVM is not available ({why})");
        return Boot::Skipped(why);
    }
    match kernel_image()
        .and_then(|image| boot(&image, &hv_sim::kvm::Config::default()).map_err(|e| e.to_string()))
    {
        Ok(r) => Boot::Ran(r),
        Err(e) => {
            out!("  boot failed: {e}");
            *ok = false;
            Boot::Failed
        }
    }
}

/// The real Xen hypervisor: the same image as its dom0 (every check), then
/// the differential battery on real Xen and on hv-sim, compared line by
/// line (a fresh seed each run, or `HV_SIM_DIFF_SEED`). Returns the
/// summary lines.
fn real_xen_section(ok: &mut bool) -> Vec<String> {
    out!(
        "== real Xen: the same image as a 64-bit PV dom0 of Debian's Xen 4.17 under QEMU TCG, xen backend"
    );
    let xen = match hv_sim::realxen::available() {
        Ok(x) => x,
        Err(why) => {
            out!("  SKIPPED: {why}");
            return Vec::new();
        }
    };
    let elf = match hv_sim::kernel_build::build_example_kernel() {
        Ok(e) => e,
        Err(e) => {
            out!("  building the kernel failed: {e}");
            *ok = false;
            return Vec::new();
        }
    };
    let mut lines = Vec::new();
    match xen.boot(&elf, "", std::time::Duration::from_secs(180)) {
        Err(e) => {
            out!("  boot failed: {e}");
            *ok = false;
        }
        Ok(r) => {
            print_checks(&r.checks);
            out!(
                "  {}; exit status {:?}, Xen: {:?}, {:.2} s from QEMU's start",
                r.xen_banner.as_deref().unwrap_or("Xen"),
                r.exit_status,
                r.shutdown,
                r.wall.as_secs_f64()
            );
            *ok &= r.failed().is_empty() && r.exit_status == Some(0) && r.skipped() == 0;
            lines.push(r.summary_line("xen"));
        }
    }
    out!(
        "== differential: the kernel's battery of raw hypercalls on real Xen and on hv-sim (KVM), line by line"
    );
    if let Err(why) = hv_sim::kvm::available() {
        out!("  SKIPPED: hv-sim's side needs KVM ({why})");
        return lines;
    }
    let seed = match hv_sim::differential::seed_from_env() {
        Ok(s) => s,
        Err(e) => {
            out!("  {e}");
            *ok = false;
            return lines;
        }
    };
    let count = 10_000;
    let t = std::time::Instant::now();
    match hv_sim::differential::run(&xen, &elf, seed, count, std::time::Duration::from_secs(300)) {
        Err(e) => {
            out!("  failed: {e}");
            *ok = false;
        }
        Ok(d) => {
            for x in &d.disagreements {
                out!(
                    "  call {}:\n    xen:    {}\n    hv-sim: {}",
                    x.index,
                    x.xen,
                    x.hv_sim
                );
            }
            out!(
                "  {count} calls from seed {seed} (reproduce: HV_SIM_DIFF_SEED={seed}); {:.1} s for both runs{}",
                t.elapsed().as_secs_f64(),
                if hv_sim::kvm::host_is_pvm() {
                    "; GDT-selector probes not compared (PVM loads them from the host's GDT)"
                } else {
                    ""
                }
            );
            *ok &= d.all_agree();
            lines.push(d.summary_line());
        }
    }
    lines
}

/// Build the example kernel (once; cargo is incremental) and read its ELF.
fn kernel_image() -> Result<Vec<u8>, String> {
    let elf = hv_sim::kernel_build::build_example_kernel().map_err(|e| e.to_string())?;
    std::fs::read(&elf).map_err(|e| format!("reading {}: {e}", elf.display()))
}

/// The trap-and-emulate boot: its checks, what hv-sim emulated, and the
/// lines for the summary (its own, then the comparison with the Xen-style
/// boot's hypercalls).
fn trap_section(ok: &mut bool, xen_calls: Option<(u64, usize)>) -> Vec<String> {
    out!(
        "== KVM: the same kernel, native backend, deprivileged (ring 3): hv-sim traps and emulates lgdt/lidt/ltr/lldt and, under UMIP, sgdt/sidt/str/sldt"
    );
    let r = match kvm_boot(ok, hv_sim::kvm::trap::boot_trap) {
        Boot::Skipped(why) => {
            return vec![format!(
                "personality=trap-and-emulate backend=native (SKIPPED: KVM is not available: {why}; the emulator's unit tests run in-process)"
            )];
        }
        Boot::Failed => return Vec::new(),
        Boot::Ran(r) => r,
    };
    print_checks(&r.boot.checks);
    let kinds: Vec<String> = r.emulated.iter().map(|(n, c)| format!("{n} {c}")).collect();
    out!("  emulated by kind: {}", kinds.join(", "));
    for (insn, exc) in &r.injected {
        out!("  injected instead of emulating: {insn} -> {exc}");
    }
    for b in &r.bounced {
        out!(
            "  delivered to the guest's own #GP handler: rip {:#x}, error code {:#x} ({})",
            b.rip,
            b.error_code,
            b.reason
        );
    }
    let per_trap = r
        .handler_time
        .checked_div(r.traps.max(1) as u32)
        .unwrap_or_default();
    out!(
        "  exit status {:?}; VM exits: {} port I/O ({} #GP traps), {} MMIO, {} HLT, {} other; UMIP {}; real TR/LDTR installed {} times; hv-sim's handling {:.1} µs per trap (emulator {:.1} µs, rebuilding the real tables {:.1} µs, the rest reading the guest's tables and the exit bookkeeping; registers travel in sync regs)",
        r.boot.exit_status,
        r.boot.exits.io,
        r.traps,
        r.boot.exits.mmio,
        r.boot.exits.hlt,
        r.boot.exits.other,
        if r.umip {
            "on"
        } else {
            "OFF (sgdt/sidt/str/sldt do not trap)"
        },
        r.installs,
        per_trap.as_secs_f64() * 1e6,
        r.emulate_time.as_secs_f64() * 1e6 / r.traps.max(1) as f64,
        r.sync_time.as_secs_f64() * 1e6 / r.traps.max(1) as f64
    );
    *ok &= r.boot.failed().is_empty() && r.boot.exit_status == Some(0);
    let emulated = r.emulated_total();
    let stores: u64 = ["sgdt", "sidt", "str", "sldt"]
        .iter()
        .filter_map(|k| r.emulated.get(k))
        .sum();
    let trap_exits = r.traps - r.bounced.len() as u64;
    let mut lines = vec![r.summary()];
    let trap_part = format!(
        "trap-and-emulate {trap_exits} exits for {emulated} descriptor-table instructions = {:.2} exits/op ({stores} of them sgdt/sidt/str/sldt)",
        trap_exits as f64 / emulated.max(1) as f64
    );
    lines.push(match xen_calls {
        Some((hypercalls, carried)) => format!(
            "compare: {trap_part}; xen {hypercalls} hypercall exits for {carried} descriptor hypercalls = {:.2} exits/op (multicalls batch the context switches; store_* read the guest's shadow, no exit)",
            hypercalls as f64 / carried.max(1) as f64
        ),
        None => format!("compare: {trap_part}; xen: no KVM boot to compare with"),
    });
    lines
}
