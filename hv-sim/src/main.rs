//! `hv-sim`: command-line front end.

use std::io::{BufRead, BufWriter, Read, Write};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    /// short forms (the same forms check-descriptor takes).
    Explain {
        /// Descriptors: exactly 16 hex digits each, optional 0x/0X prefix.
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
    /// too) are ignored, and a line longer than 4096 bytes is refused.
    CheckDescriptor {
        /// Guest ABI.
        #[arg(long, value_enum)]
        abi: AbiArg,
        /// Descriptors: exactly 16 hex digits each, optional 0x/0X prefix; a
        /// single `-` reads one per line from stdin.
        #[arg(required = true)]
        hex: Vec<String>,
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
            println!("{table}");
            ExitCode::SUCCESS
        }
        Cmd::Explain { hex } => match explain(&hex) {
            Ok(true) => ExitCode::SUCCESS,
            // Each malformed descriptor was reported; the others explained.
            Ok(false) => ExitCode::from(2),
            Err(e) => fail("explain", &e),
        },
        Cmd::CheckDescriptor { abi, hex } => {
            let abi = match abi {
                AbiArg::Pv64 => hv_sim::xen::Abi::Pv64,
                AbiArg::Pv32 => hv_sim::xen::Abi::Pv32,
            };
            match check_descriptors(abi, &hex) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail("check-descriptor", &e),
            }
        }
    }
}

/// Report a subcommand's error on stderr and exit 2. Writing to stderr can
/// fail too (a closed pipe): then the exit status alone tells.
fn fail(cmd: &str, e: &str) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "hv-sim {cmd}: {e}");
    ExitCode::from(2)
}

/// `explain`: each descriptor in plain words. A malformed one is reported
/// on stderr and the rest still explained (`Ok(false)`); a failed write to
/// stdout (closed pipe, full disk) stops with `Err`.
fn explain(hex: &[String]) -> Result<bool, String> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut all_ok = true;
    for h in hex {
        match hv_sim::explain::parse_descriptor(h) {
            Ok(v) => out
                .write_all(hv_sim::explain::explain(v).as_bytes())
                .map_err(|e| format!("writing output: {e}"))?,
            Err(e) => {
                // Keep stdout and stderr in input order.
                out.flush().map_err(|e| format!("writing output: {e}"))?;
                let _ = writeln!(std::io::stderr(), "hv-sim explain: {e}");
                all_ok = false;
            }
        }
    }
    out.flush().map_err(|e| format!("writing output: {e}"))?;
    Ok(all_ok)
}

fn demo() -> ExitCode {
    let mut ok = true;
    println!("== in-process: native backend against the SoftCpu instruction model");
    let report = hv_sim::demo::run_native_in_process();
    for c in &report.checks {
        println!(
            "  [{}] {} — {}",
            if c.passed { "pass" } else { "FAIL" },
            c.name,
            c.detail
        );
    }
    println!(
        "  instructions executed by the CPU model: {}",
        report.instructions.join("; ")
    );
    println!(
        "  in-process native: checks={}/{}",
        report.passed(),
        report.checks.len()
    );
    ok &= report.passed() == report.checks.len();

    let mut in_process = |title: &str, report: hv_sim::demo::DemoReport| {
        println!("== in-process: {title}");
        for c in &report.checks {
            println!(
                "  [{}] {} — {}",
                if c.passed { "pass" } else { "FAIL" },
                c.name,
                c.detail
            );
        }
        println!(
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

    println!("== KVM: the example kernel (examples/kernel) booted in a real VM, native backend");
    let summary = match kvm_boot(&mut ok, hv_sim::kvm::boot) {
        Boot::Skipped(_) => {
            println!("  (the in-process run above is what can run here)");
            None
        }
        Boot::Failed => None,
        Boot::Ran(r) => {
            if hv_sim::kvm::host_is_pvm() {
                println!(
                    "  host: /dev/kvm is PVM (kvm_pvm): lar/lsl/verr and int n cannot run in a guest here; those checks are skipped and the same effects are checked through segment loads and faults"
                );
            }
            print_checks(&r.checks);
            println!(
                "  exit status {:?}; VM exits: {} port I/O, {} MMIO, {} HLT, {} other; rejected calls: 0",
                r.exit_status, r.exits.io, r.exits.mmio, r.exits.hlt, r.exits.other
            );
            ok &= r.failed().is_empty() && r.exit_status == Some(0);
            Some(r.summary_line("native", 0))
        }
    };
    println!(
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
            println!(
                "  hypercalls by kind (direct+in multicalls): {}",
                kinds.join(", ")
            );
            for (name, errno, reason) in r.rejected() {
                println!("  refused as on Xen: {name} = {errno}: {reason}");
            }
            println!(
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
    println!(
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
            println!("  ROM calls by kind: {}", kinds.join(", "));
            for (name, errno, reason) in r.rejected() {
                println!("  refused by the VMI personality: {name} = {errno}: {reason}");
            }
            let (deferred, flushes) = r.lazy_batches();
            println!(
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
    println!("== QEMU (TCG): the same kernel image through its PVH entry, native backend");
    match hv_sim::qemu::available() {
        Err(why) => println!("  SKIPPED: {why}"),
        Ok(()) => match hv_sim::kernel_build::build_example_kernel()
            .map_err(|e| e.to_string())
            .and_then(|elf| hv_sim::qemu::boot(&elf, std::time::Duration::from_secs(120)))
        {
            Err(e) => {
                println!("  boot failed: {e}");
                ok = false;
            }
            Ok(r) => {
                print_checks(&r.checks);
                println!(
                    "  qemu native: checks={}/{} exit status {:?}",
                    r.passed(),
                    r.ran(),
                    r.exit_status
                );
                ok &= r.failed().is_empty() && r.exit_status == Some(0);
            }
        },
    }
    let real_xen_summary = real_xen_section(&mut ok);
    println!("== summary");
    match summary {
        Some(line) => println!("{line}"),
        None => println!(
            "backend=native checks={}/{} hypercalls=0 exits=0 (in-process; no KVM boot)",
            report.passed(),
            report.checks.len()
        ),
    }
    match xen_summary {
        Some(line) => println!("{line}"),
        None => println!(
            "{} (in-process against hv-sim's Xen domain; no KVM boot)",
            xen_local.summary()
        ),
    }
    match vmi_summary {
        Some(line) => println!("{line}"),
        None => println!(
            "{} (in-process against hv-sim's VMI personality; no KVM boot)",
            vmi_local.summary()
        ),
    }
    for line in trap_summary {
        println!("{line}");
    }
    for line in real_xen_summary {
        println!("{line}");
    }
    if hv_sim::kvm::available().is_ok() && hv_sim::kvm::host_is_pvm() {
        println!(
            "(skipped = checks this host cannot run in a KVM guest: /dev/kvm is PVM, which cannot emulate lar/lsl/verr or int n; the QEMU boot runs them)"
        );
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
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
        println!("  [{v}] {} — {}", c.name, c.detail);
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
        println!("  SKIPPED: KVM is not available ({why})");
        return Boot::Skipped(why);
    }
    match kernel_image()
        .and_then(|image| boot(&image, &hv_sim::kvm::Config::default()).map_err(|e| e.to_string()))
    {
        Ok(r) => Boot::Ran(r),
        Err(e) => {
            println!("  boot failed: {e}");
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
    println!(
        "== real Xen: the same image as a 64-bit PV dom0 of Debian's Xen 4.17 under QEMU TCG, xen backend"
    );
    let xen = match hv_sim::realxen::available() {
        Ok(x) => x,
        Err(why) => {
            println!("  SKIPPED: {why}");
            return Vec::new();
        }
    };
    let elf = match hv_sim::kernel_build::build_example_kernel() {
        Ok(e) => e,
        Err(e) => {
            println!("  building the kernel failed: {e}");
            *ok = false;
            return Vec::new();
        }
    };
    let mut lines = Vec::new();
    match xen.boot(&elf, "", std::time::Duration::from_secs(180)) {
        Err(e) => {
            println!("  boot failed: {e}");
            *ok = false;
        }
        Ok(r) => {
            print_checks(&r.checks);
            println!(
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
    println!(
        "== differential: the kernel's battery of raw hypercalls on real Xen and on hv-sim (KVM), line by line"
    );
    if let Err(why) = hv_sim::kvm::available() {
        println!("  SKIPPED: hv-sim's side needs KVM ({why})");
        return lines;
    }
    let seed = match hv_sim::differential::seed_from_env() {
        Ok(s) => s,
        Err(e) => {
            println!("  {e}");
            *ok = false;
            return lines;
        }
    };
    let count = 10_000;
    let t = std::time::Instant::now();
    match hv_sim::differential::run(&xen, &elf, seed, count, std::time::Duration::from_secs(300)) {
        Err(e) => {
            println!("  failed: {e}");
            *ok = false;
        }
        Ok(d) => {
            for x in &d.disagreements {
                println!(
                    "  call {}:\n    xen:    {}\n    hv-sim: {}",
                    x.index, x.xen, x.hv_sim
                );
            }
            println!(
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
    println!(
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
    println!("  emulated by kind: {}", kinds.join(", "));
    for (insn, exc) in &r.injected {
        println!("  injected instead of emulating: {insn} -> {exc}");
    }
    for b in &r.bounced {
        println!(
            "  delivered to the guest's own #GP handler: rip {:#x}, error code {:#x} ({})",
            b.rip, b.error_code, b.reason
        );
    }
    let per_trap = r
        .handler_time
        .checked_div(r.traps.max(1) as u32)
        .unwrap_or_default();
    println!(
        "  exit status {:?}; VM exits: {} port I/O ({} #GP traps), {} MMIO, {} HLT, {} other; UMIP {}; real TR/LDTR installed {} times; hv-sim's handling {:.1} µs per trap (emulator {:.1} µs, rebuilding the real tables {:.1} µs, the rest KVM register ioctls)",
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

/// The longest stdin line `check-descriptor -` reads, in bytes (not
/// counting its `\n`): a descriptor line is at most a few dozen.
const MAX_LINE: usize = 4096;

fn check_one(abi: hv_sim::xen::Abi, h: &str, out: &mut impl Write) -> Result<(), String> {
    let d = hv_sim::explain::parse_descriptor(h)?;
    let r = match hv_sim::xen::check_descriptor(abi, d) {
        Ok(v) => writeln!(out, "{h} ok {v:016x}"),
        Err(r) => writeln!(out, "{h} rejected {r}"),
    };
    r.map_err(|e| format!("writing output: {e}"))
}

fn check_descriptors(abi: hv_sim::xen::Abi, hex: &[String]) -> Result<(), String> {
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    if hex.len() == 1 && hex[0] == "-" {
        let stdin = std::io::stdin();
        let mut line = Vec::with_capacity(MAX_LINE + 1);
        let mut input = stdin.lock();
        let mut n = 0u64;
        loop {
            line.clear();
            n += 1;
            // At most MAX_LINE bytes and the newline: memory stays bounded
            // however long the line is.
            let got = (&mut input)
                .take(MAX_LINE as u64 + 1)
                .read_until(b'\n', &mut line)
                .map_err(|e| format!("line {n}: reading stdin: {e}"))?;
            if got == 0 {
                break;
            }
            if line.len() > MAX_LINE && line.last() != Some(&b'\n') {
                return Err(format!(
                    "line {n}: longer than {MAX_LINE} bytes, the limit for a stdin line (a descriptor is 16 hex digits)"
                ));
            }
            // Blank lines (and CRLF endings, surrounding spaces) are allowed
            // in vector files; anything else must be a descriptor. Bytes
            // that are not UTF-8 make it malformed.
            let line = String::from_utf8_lossy(&line);
            let h = line.trim();
            if h.is_empty() {
                continue;
            }
            check_one(abi, h, &mut out).map_err(|e| format!("line {n}: {e}"))?;
        }
    } else {
        for h in hex {
            check_one(abi, h, &mut out)?;
        }
    }
    out.flush().map_err(|e| format!("writing output: {e}"))
}
