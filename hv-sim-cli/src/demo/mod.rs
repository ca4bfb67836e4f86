//! `hv-sim demo`: pvops' backends in-process against hv-sim's models, then
//! the example kernel under KVM (native, Xen-style, VMI-style and
//! trap-and-emulate personalities), QEMU and real Xen, each boot a row of
//! one summary table ([`report`]), and one verdict line last.

mod in_process;
pub mod report;
mod seeds;

use hv_sim::kvm::CheckSummary;
use std::process::ExitCode;
use std::time::Duration;

use hv_sim::kvm::{BootReport, GuestCheck};
use report::{Boot, Check, Demo, Outcome};

/// Run every boot and print the report (every check with `verbose`).
pub fn run(verbose: bool) -> ExitCode {
    out!(
        "hv-sim demo: pvops' backends in-process, then the example kernel under KVM, QEMU and Xen"
    );
    let mut demo = Demo::default();
    in_process(&mut demo);
    let mut smp = Vec::new();
    kvm_native(&mut demo, &mut smp);
    let xen_calls = kvm_xen(&mut demo, &mut smp);
    kvm_vmi(&mut demo);
    kvm_trap(&mut demo, xen_calls);
    let seed_lines = seeds::run(&mut demo);
    qemu(&mut demo, &mut smp);
    real_xen(&mut demo, &mut smp);
    if !smp.is_empty() {
        let on: Vec<String> = smp.iter().map(|c| c.name.clone()).collect();
        let mut b = Boot::ran(
            "2 CPUs",
            "each CPU its own GDT, TR/TSS.rsp0 (Xen: its kernel stack) and FS base",
            smp,
            true,
        );
        b.figures = on.join(", ");
        demo.boots.push(b);
    }
    if hv_sim::kvm::available().is_ok() && hv_sim::kvm::host_is_pvm() {
        demo.notes.push(
            "/dev/kvm is PVM (kvm_pvm), which cannot run lar/lsl/verr or int n in a guest: \
             the KVM boots skip those checks and check the same effects through segment \
             loads and faults; QEMU and real Xen run them"
                .into(),
        );
    }
    for line in seed_lines {
        out!("{line}");
    }
    for line in demo.render(verbose) {
        out!("{line}");
    }
    if demo.boots.iter().any(Boot::failed) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn in_process(demo: &mut Demo) {
    let runs = [
        (
            "in-process native",
            "native backend against the SoftCpu instruction model",
            in_process::run_native_in_process(),
        ),
        (
            "in-process xen",
            "Xen-style backend against hv-sim's Xen PV domain",
            in_process::run_xen_in_process(),
        ),
        (
            "in-process vmi",
            "VMI-style backend against hv-sim's VMI personality",
            in_process::run_vmi_in_process(),
        ),
    ];
    for (label, title, r) in runs {
        let checks = r
            .checks
            .iter()
            .map(|c| Check {
                name: c.name.into(),
                outcome: if c.passed {
                    Outcome::Pass
                } else {
                    Outcome::Fail
                },
                detail: c.detail.clone(),
            })
            .collect();
        let mut b = Boot::ran(label, title, checks, true);
        b.figures = if r.backend == "native" {
            format!("{} instructions modelled", r.instructions.len())
        } else {
            format!("{} hypercalls", r.hypercalls)
        };
        if !r.instructions.is_empty() {
            b.details.push(format!(
                "instructions executed by the CPU model: {}",
                r.instructions.join("; ")
            ));
        }
        demo.boots.push(b);
    }
}

/// A guest's checks as the report's.
fn checks(cs: &[GuestCheck]) -> Vec<Check> {
    cs.iter()
        .map(|c| Check {
            name: c.name.clone(),
            outcome: if c.skipped {
                Outcome::Skip
            } else if c.passed {
                Outcome::Pass
            } else {
                Outcome::Fail
            },
            detail: c.detail.clone(),
        })
        .collect()
}

/// `exit 0`, or that the guest reported none.
fn exit(status: Option<u32>) -> String {
    status.map_or_else(|| "no exit status".into(), |s| format!("exit {s}"))
}

/// `27 exits (26 port I/O, 1 HLT)`: the kinds that occurred.
fn exits(r: &BootReport) -> String {
    let e = r.exits;
    let kinds: Vec<String> = [
        (e.io, "port I/O"),
        (e.mmio, "MMIO"),
        (e.hlt, "HLT"),
        (e.other, "other"),
    ]
    .iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, k)| format!("{n} {k}"))
    .collect();
    format!(
        "{} exits ({})",
        e.io + e.mmio + e.hlt + e.other,
        kinds.join(", ")
    )
}

/// The example kernel's 2-CPU check in a boot (`smp 2 CPUs ...`, or under
/// Xen `smp 2 vCPUs (Xen) ...`), as a check of the 2-CPU row.
fn smp_check(on: &str, cs: &[GuestCheck]) -> Check {
    match cs.iter().find(|c| c.name.starts_with("smp 2 ")) {
        Some(c) => Check {
            name: on.into(),
            ..checks(std::slice::from_ref(c)).remove(0)
        },
        None => Check {
            name: on.into(),
            outcome: Outcome::Fail,
            detail: "the kernel reported no 2-CPU check".into(),
        },
    }
}

/// Build the example kernel and boot it with `boot` (a KVM personality):
/// the report, or the boot's row when it could not run.
fn kvm_boot<T>(
    label: &str,
    title: &str,
    boot: impl FnOnce(&[u8], &hv_sim::kvm::Config) -> Result<T, hv_sim::kvm::KvmError>,
) -> Result<T, Box<Boot>> {
    if let Err(why) = hv_sim::kvm::available() {
        return Err(Box::new(Boot::skipped(
            label,
            title,
            format!("KVM is not available ({why})"),
        )));
    }
    hv_sim::testing::example_kernel_image()
        .map_err(|e| e.to_string())
        .and_then(|image| boot(&image, &hv_sim::kvm::Config::default()).map_err(|e| e.to_string()))
        .map_err(|e| Box::new(Boot::error(label, title, format!("boot failed: {e}"))))
}

/// Boot under KVM with `boot` and start the boot's row: its checks,
/// passing when the guest exited with 0. `None` (the row already pushed)
/// when it could not run.
fn kvm_row<T>(
    demo: &mut Demo,
    label: &str,
    title: &str,
    boot: impl FnOnce(&[u8], &hv_sim::kvm::Config) -> Result<T, hv_sim::kvm::KvmError>,
    report: impl Fn(&T) -> &BootReport,
) -> Option<(T, Boot)> {
    match kvm_boot(label, title, boot) {
        Err(b) => {
            demo.boots.push(*b);
            None
        }
        Ok(r) => {
            let g = report(&r);
            let b = Boot::ran(label, title, checks(&g.checks), g.exit_status == Some(0));
            Some((r, b))
        }
    }
}

fn kvm_native(demo: &mut Demo, smp: &mut Vec<Check>) {
    let (label, title) = (
        "KVM native",
        "the example kernel in a KVM VM, native backend",
    );
    let Some((r, mut b)) = kvm_row(demo, label, title, hv_sim::kvm::boot, |r| r) else {
        return;
    };
    b.figures = format!("{}, {}", exit(r.exit_status), exits(&r));
    smp.push(smp_check("KVM native", &r.checks));
    demo.boots.push(b);
}

/// The Xen-style boot; its hypercall exits and the descriptor hypercalls
/// they carried, for the trap-and-emulate comparison.
fn kvm_xen(demo: &mut Demo, smp: &mut Vec<Check>) -> Option<(u64, usize)> {
    let (label, title) = (
        "KVM xen",
        "hv-sim's Xen-style personality (hypercall page, ring 3), xen backend",
    );
    let boot = hv_sim::kvm::xen::boot_xen;
    let (r, mut b) = kvm_row(demo, label, title, boot, |r| &r.boot)?;
    smp.push(smp_check("KVM xen", &r.boot.checks));
    b.figures = format!("{} hypercalls, {}", r.hypercalls, exits(&r.boot));
    let kinds: Vec<String> = r
        .calls_by_name()
        .iter()
        .map(|(n, (d, m))| format!("{n} {d}+{m}"))
        .collect();
    b.details.push(format!(
        "hypercalls by kind (direct+in multicalls): {}",
        kinds.join(", ")
    ));
    for (name, errno, reason) in r.rejected() {
        b.details
            .push(format!("refused as on Xen: {name} = {errno}: {reason}"));
    }
    let bounced: Vec<String> = r
        .bounced
        .iter()
        .map(|(v, n)| format!("{} x{n}", pvops::error::vector_name(*v)))
        .collect();
    b.details.push(format!(
        "{}, shutdown reason {}; {} cpuid(s) emulated via the Xen prefix; exceptions bounced: {}; \
         {} iret(s); {} page-table mirror flushes",
        exit(r.boot.exit_status),
        r.shutdown.map_or_else(|| "none".into(), |s| s.to_string()),
        r.emulated_cpuids,
        if bounced.is_empty() {
            "none".into()
        } else {
            bounced.join(", ")
        },
        r.irets,
        r.pte_flushes
    ));
    if let Err(e) = &r.invariants {
        b.details
            .push(format!("the domain's invariants broke: {e}"));
        b.figures.push_str("; invariants broke");
        b.status = report::Status::Ran { ok: false };
    }
    // Descriptor work only: the console and shutdown calls are the report
    // protocol, which the trap-and-emulate boot does on ports.
    let by = r.calls_by_name();
    let report = |n: &str| by.get(n).map_or(0, |c| c.0 + c.1);
    let report_calls = report("console_io") + report("sched_op");
    let carried: usize = by
        .iter()
        .filter(|(n, _)| !matches!(**n, "console_io" | "sched_op"))
        .map(|(n, (d, m))| if *n == "multicall" { *m } else { d + m })
        .sum();
    demo.boots.push(b);
    Some((r.hypercalls - report_calls as u64, carried))
}

fn kvm_vmi(demo: &mut Demo) {
    let (label, title) = (
        "KVM vmi",
        "hv-sim's VMI-style personality (option ROM at 0xc0000, ring 3), vmi backend",
    );
    let boot = hv_sim::kvm::vmi::boot_vmi;
    let Some((r, mut b)) = kvm_row(demo, label, title, boot, |r| &r.boot) else {
        return;
    };
    b.figures = format!("{} ROM calls, {}", r.rom_calls, exits(&r.boot));
    let kinds: Vec<String> = r
        .calls_by_name()
        .iter()
        .map(|(n, c)| format!("{n} {c}"))
        .collect();
    b.details
        .push(format!("ROM calls by kind: {}", kinds.join(", ")));
    for (name, errno, reason) in r.rejected() {
        b.details.push(format!(
            "refused by the VMI personality: {name} = {errno}: {reason}"
        ));
    }
    let (deferred, flushes) = r.lazy_batches();
    b.details.push(format!(
        "{}; {deferred} calls deferred in lazy mode, applied by {flushes} flushes; \
         real tables installed {} times",
        exit(r.boot.exit_status),
        r.installs
    ));
    demo.boots.push(b);
}

fn kvm_trap(demo: &mut Demo, xen_calls: Option<(u64, usize)>) {
    let (label, title) = (
        "KVM trap-and-emulate",
        "native backend in ring 3: hv-sim traps and emulates lgdt/lidt/ltr/lldt and, \
         under UMIP, sgdt/sidt/str/sldt",
    );
    let boot = hv_sim::kvm::trap::boot_trap;
    let Some((r, mut b)) = kvm_row(demo, label, title, boot, |r| &r.boot) else {
        return;
    };
    let emulated = r.emulated_total();
    let trap_exits = r.traps - r.bounced.total();
    let per_op = trap_exits as f64 / emulated.max(1) as f64;
    let e = r.boot.exits;
    let total = e.io + e.mmio + e.hlt + e.other;
    b.figures = format!("{emulated} emulated, {total} exits, {per_op:.2} exits/op");
    if let Some((hypercalls, carried)) = xen_calls {
        b.figures.push_str(&format!(
            " (xen {:.2})",
            hypercalls as f64 / carried.max(1) as f64
        ));
    }
    let kinds: Vec<String> = r.emulated.iter().map(|(n, c)| format!("{n} {c}")).collect();
    b.details
        .push(format!("emulated by kind: {}", kinds.join(", ")));
    for (insn, exc) in r.injected.kept() {
        b.details
            .push(format!("injected instead of emulating: {insn} -> {exc}"));
    }
    for x in r.bounced.kept() {
        b.details.push(format!(
            "delivered to the guest's own #GP handler: rip {:#x}, error code {:#x} ({})",
            x.rip, x.error_code, x.reason
        ));
    }
    for (what, dropped) in [
        ("injected exceptions", r.injected.dropped()),
        ("bounced #GPs", r.bounced.dropped()),
    ] {
        if dropped > 0 {
            b.details
                .push(format!("{dropped} more {what} (counted, not listed)"));
        }
    }
    let per = |d: Duration| d.as_secs_f64() * 1e6 / r.traps.max(1) as f64;
    b.details.push(format!(
        "{}; {} #GP traps; UMIP {}; real TR/LDTR installed {} times; {:.1} µs per trap \
         (emulator {:.1} µs, rebuilding the real tables {:.1} µs)",
        exit(r.boot.exit_status),
        r.traps,
        if r.umip {
            "on"
        } else {
            "OFF (sgdt/sidt/str/sldt do not trap)"
        },
        r.installs,
        per(r.handler_time),
        per(r.emulate_time),
        per(r.sync_time)
    ));
    demo.boots.push(b);
}

fn qemu(demo: &mut Demo, smp: &mut Vec<Check>) {
    let (label, title) = (
        "QEMU native",
        "QEMU TCG, the same image through its PVH entry",
    );
    if let Err(why) = hv_sim::qemu::available() {
        return demo
            .boots
            .push(Boot::skipped(label, title, why.to_string()));
    }
    let r = hv_sim::kernel_build::build_example_kernel()
        .map_err(|e| e.to_string())
        .and_then(|elf| {
            hv_sim::qemu::boot(&elf, Duration::from_secs(120)).map_err(|e| e.to_string())
        });
    match r {
        Err(e) => demo
            .boots
            .push(Boot::error(label, title, format!("boot failed: {e}"))),
        Ok(r) => {
            let mut b = Boot::ran(label, title, checks(&r.checks), r.exit_status == Some(0));
            b.figures = exit(r.exit_status);
            smp.push(smp_check("QEMU", &r.checks));
            demo.boots.push(b);
        }
    }
}

/// The real Xen hypervisor: the image as its dom0, then the differential
/// battery on real Xen and on hv-sim (a fresh seed each run, or
/// `HV_SIM_DIFF_SEED`).
fn real_xen(demo: &mut Demo, smp: &mut Vec<Check>) {
    let (label, title) = (
        "real Xen dom0",
        "64-bit PV dom0 of Debian's Xen 4.17 under QEMU TCG",
    );
    let (dlabel, dtitle) = (
        "differential",
        "the kernel's raw hypercalls on real Xen and on hv-sim (KVM), line by line",
    );
    let xen = match hv_sim::realxen::available() {
        Ok(x) => x,
        Err(why) => {
            demo.boots
                .push(Boot::skipped(label, title, why.to_string()));
            demo.boots
                .push(Boot::skipped(dlabel, dtitle, why.to_string()));
            return;
        }
    };
    let elf = match hv_sim::kernel_build::build_example_kernel() {
        Ok(e) => e,
        Err(e) => return demo.boots.push(Boot::error(label, title, e.to_string())),
    };
    let label = format!("real {} dom0", xen.label());
    match xen.boot(&elf, "", Duration::from_secs(180)) {
        Err(e) => demo
            .boots
            .push(Boot::error(&label, title, format!("boot failed: {e}"))),
        Ok(r) => {
            let ok = r.exit_status == Some(0) && r.skipped() == 0;
            let mut b = Boot::ran(&label, title, checks(&r.checks), ok);
            b.figures = format!(
                "{}, Xen: {}, {:.1} s from QEMU's start",
                exit(r.exit_status),
                r.shutdown,
                r.wall.as_secs_f64()
            );
            if let Some(banner) = &r.xen_banner {
                b.details.push(banner.clone());
            }
            smp.push(smp_check("real Xen", &r.checks));
            demo.boots.push(b);
        }
    }
    demo.boots.push(differential(&xen, &elf, dlabel, dtitle));
}

fn differential(
    xen: &hv_sim::realxen::XenImage,
    elf: &std::path::Path,
    label: &str,
    title: &str,
) -> Boot {
    if let Err(why) = hv_sim::kvm::available() {
        return Boot::skipped(label, title, format!("hv-sim's side needs KVM ({why})"));
    }
    let seed = match hv_sim::differential::seed_from_env() {
        Ok(s) => s,
        Err(e) => return Boot::error(label, title, e.to_string()),
    };
    let count = 10_000;
    let t = std::time::Instant::now();
    let d = match hv_sim::differential::run(xen, elf, seed, count, Duration::from_secs(300)) {
        Ok(d) => d,
        Err(e) => return Boot::error(label, title, e.to_string()),
    };
    let mut cs: Vec<Check> = d
        .disagreements
        .iter()
        .map(|x| Check {
            name: format!("call {}", x.index),
            outcome: Outcome::Fail,
            detail: format!("xen: {}; hv-sim: {}", x.xen, x.hv_sim),
        })
        .collect();
    if cs.is_empty() {
        cs.push(Check {
            name: format!("{} calls agree", d.agree),
            outcome: Outcome::Pass,
            detail: String::new(),
        });
    }
    let mut b = Boot::ran(label, title, cs, d.all_agree());
    b.figures = format!("{}/{count} agree, seed {seed} (HV_SIM_DIFF_SEED)", d.agree);
    b.details.push(format!(
        "{:.1} s for both runs{}",
        t.elapsed().as_secs_f64(),
        if hv_sim::kvm::host_is_pvm() {
            "; GDT-selector probes not compared (PVM loads them from the host's GDT)"
        } else {
            ""
        }
    ));
    b
}
