//! `hv-sim bench`: one table of the key cost figures (issue 13), each
//! beside the floor it is measured against *in the same run*, so the ratios
//! hold on whatever machine runs it while the absolute figures move with
//! the CPU and the load.
//!
//! Sections, in the order printed:
//! * **dispatch** ([`inproc::dispatch`]): `write_gdt_entry` on the native
//!   backend called directly, through static dispatch, an `OpsTable` and the
//!   installed global table, against a plain store;
//! * **in-process hypercalls** ([`inproc::hypercalls`]): hv-sim's Xen PV
//!   handlers against their lean validation (`check_descriptor` and a
//!   store), with their scaling in GDT frames and in entries;
//! * **emulator** ([`inproc::emulator`]): [`crate::emulate`] handling a
//!   trapped `sgdt`/`lgdt`, against this host's Linux emulating a user-space
//!   `sgdt` under UMIP, timed from a loop in a child process;
//! * **exits per kernel operation** ([`ops`]): each personality's VM exits
//!   for a GDT load, an IDT load, one context switch and 1,000, lazy and
//!   not, counted where they are issued (see that module for why that is
//!   the same count as a boot's);
//! * **µs per exit** ([`kvm`]): bare-exit loops (ring 0, ring 3, and a
//!   ring-3 #GP delivered to a ring-3 handler), a dedicated trap loop under
//!   the trap-and-emulate personality, and the example kernel's four boots,
//!   split into the bare exit, the delivery and hv-sim's own time.
//!
//! Timing is a plain loop: the median of 51 batches of about 200 µs each,
//! long enough to dwarf the clock's granularity and short enough that most
//! run unpreempted on a loaded machine ([`time_ns`]). The whole run
//! takes seconds; criterion (`cargo bench`) stays for the detailed benches.

pub mod inproc;
pub mod kvm;
pub mod ops;
pub mod phases;
pub mod worst;

#[cfg(test)]
mod tests;

use std::fmt::{self, Write as _};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// The machine a table was measured on.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Machine {
    /// The CPU ([`cpu_model`]).
    pub cpu: String,
    /// Logical CPUs online.
    pub cpus: usize,
    /// What `/dev/kvm` is: `PVM (kvm_pvm)`, `hardware KVM`, or why none.
    pub kvm: String,
    /// `/proc/loadavg`'s 1, 5 and 15 minute figures, at the start.
    pub load_before: String,
    /// The same at the end.
    pub load_after: String,
    /// Whether the CPU has UMIP (so a user-space `sgdt` traps to Linux).
    pub umip: bool,
}

impl Machine {
    /// Read this machine's description (the load average is read now;
    /// [`Machine::finish`] adds the figure at the end of the run).
    pub fn probe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let field = |name: &str| {
            cpuinfo.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == name).then(|| v.trim().to_string())
            })
        };
        let umip = field("flags").is_some_and(|f| f.split_whitespace().any(|w| w == "umip"));
        let kvm = match crate::kvm::available() {
            Err(why) => format!("none ({why})"),
            Ok(()) if crate::kvm::host_is_pvm() => "PVM (kvm_pvm: guests run deprivileged)".into(),
            Ok(()) => "hardware KVM".into(),
        };
        Machine {
            cpu: cpu_model(),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kvm,
            load_before: load_average(),
            load_after: String::new(),
            umip,
        }
    }

    /// Record the load average at the end of the run.
    pub fn finish(&mut self) {
        self.load_after = load_average();
    }
}

/// The host CPU from `/proc/cpuinfo`: its model name with its family,
/// model and stepping (the model name alone is masked on some hosts, e.g.
/// `AMD EPYC`), or `unknown CPU`.
pub fn cpu_model() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        cpuinfo.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == name).then(|| v.trim().to_string())
        })
    };
    let Some(name) = field("model name") else {
        return "unknown CPU".into();
    };
    match (field("cpu family"), field("model"), field("stepping")) {
        (Some(f), Some(m), Some(s)) => format!("{name} (family {f}, model {m}, stepping {s})"),
        _ => name,
    }
}

/// `/proc/loadavg`'s first three fields, or `unknown`.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// One section of the table: a heading, column names and rows of text.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Section {
    /// Heading.
    pub title: String,
    /// Column names (the first is the figure's name).
    pub columns: Vec<String>,
    /// Rows, one cell per column (missing cells print empty).
    pub rows: Vec<Vec<String>>,
    /// Lines printed under the section.
    pub notes: Vec<String>,
}

impl Section {
    /// A section with the usual columns: figure, value, floor, ratio.
    pub fn figures(title: &str) -> Section {
        Section::with_columns(title, &["figure", "value", "floor (same run)", "ratio"])
    }

    /// A section with its own columns.
    pub fn with_columns(title: &str, columns: &[&str]) -> Section {
        Section {
            title: title.to_string(),
            columns: columns.iter().map(|c| c.to_string()).collect(),
            ..Section::default()
        }
    }

    /// Append a row.
    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) -> &mut Self {
        self.rows.push(cells.into_iter().map(Into::into).collect());
        self
    }

    /// A figure with no floor (it is one: others are measured against it).
    pub fn floor(&mut self, name: &str, value: Figure) -> &mut Self {
        self.row([
            name.to_string(),
            value.to_string(),
            "(floor)".into(),
            String::new(),
        ])
    }

    /// A figure, its floor's name and value, and the ratio.
    pub fn against(&mut self, name: &str, value: Figure, floor: &str, of: Figure) -> &mut Self {
        self.row([
            name.to_string(),
            value.to_string(),
            format!("{floor} {of}"),
            ratio(value.value(), of.value()),
        ])
    }

    /// A row saying why a figure could not be measured.
    pub fn missing(&mut self, name: &str, why: &str) -> &mut Self {
        self.row([
            name.to_string(),
            "n/a".into(),
            why.to_string(),
            String::new(),
        ])
    }

    /// Append a note.
    pub fn note(&mut self, text: impl Into<String>) -> &mut Self {
        self.notes.push(text.into());
        self
    }
}

/// A measured quantity with its unit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Figure {
    /// Nanoseconds.
    Ns(f64),
    /// Microseconds.
    Us(f64),
    /// A count (exits, calls).
    Count(f64),
}

impl Figure {
    /// The number, in the figure's own unit.
    pub fn value(self) -> f64 {
        match self {
            Figure::Ns(v) | Figure::Us(v) | Figure::Count(v) => v,
        }
    }
}

impl fmt::Display for Figure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let num = |v: f64| {
            if v >= 100.0 || v == v.trunc() {
                format!("{v:.0}")
            } else if v >= 10.0 {
                format!("{v:.1}")
            } else {
                format!("{v:.2}")
            }
        };
        match *self {
            Figure::Ns(v) if v >= 10_000.0 => write!(f, "{} µs", num(v / 1000.0)),
            Figure::Ns(v) => write!(f, "{} ns", num(v)),
            Figure::Us(v) => write!(f, "{} µs", num(v)),
            Figure::Count(v) => write!(f, "{}", num(v)),
        }
    }
}

/// `value / floor` as `12.3×`, or `-` where the floor is not positive.
pub fn ratio(value: f64, floor: f64) -> String {
    if floor.is_nan() || floor <= 0.0 || !value.is_finite() {
        return "-".into();
    }
    let r = value / floor;
    if r >= 100.0 {
        format!("{r:.0}×")
    } else if r >= 10.0 {
        format!("{r:.1}×")
    } else {
        format!("{r:.2}×")
    }
}

/// A goal from the issue and whether this run met it.
#[derive(Clone, Debug, PartialEq)]
pub struct Goal {
    /// The goal, as the issue states it.
    pub what: String,
    /// Met, not met, or not measured here (`None`).
    pub met: Option<bool>,
    /// The measured figure, or the cause where it is not met.
    pub detail: String,
}

impl Goal {
    /// A goal with its verdict.
    pub fn new(what: &str, met: Option<bool>, detail: impl Into<String>) -> Goal {
        Goal {
            what: what.to_string(),
            met,
            detail: detail.into(),
        }
    }
}

/// What `hv-sim bench` prints.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Table {
    /// Where it ran.
    pub machine: Machine,
    /// The sections.
    pub sections: Vec<Section>,
    /// The goals.
    pub goals: Vec<Goal>,
    /// How long the run took.
    pub elapsed: Duration,
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.machine;
        writeln!(f, "hv-sim bench")?;
        writeln!(f)?;
        writeln!(f, "- CPU: {} ({} CPUs online)", m.cpu, m.cpus)?;
        writeln!(f, "- /dev/kvm: {}", m.kvm)?;
        writeln!(
            f,
            "- load average (1/5/15 min): {} at the start, {} at the end",
            m.load_before,
            if m.load_after.is_empty() {
                "?"
            } else {
                &m.load_after
            }
        )?;
        writeln!(
            f,
            "- UMIP: {}",
            if m.umip {
                "on (a user-space sgdt traps to Linux)"
            } else {
                "not reported by the CPU"
            }
        )?;
        writeln!(
            f,
            "- run took {:.1} s; every ratio is against a floor measured in this run",
            self.elapsed.as_secs_f64()
        )?;
        for s in &self.sections {
            writeln!(f)?;
            writeln!(f, "### {}", s.title)?;
            writeln!(f)?;
            f.write_str(&markdown(&s.columns, &s.rows))?;
            for n in &s.notes {
                writeln!(f, "- {n}")?;
            }
        }
        if !self.goals.is_empty() {
            writeln!(f)?;
            writeln!(f, "### Goals")?;
            writeln!(f)?;
            let rows: Vec<Vec<String>> = self
                .goals
                .iter()
                .map(|g| {
                    let v = match g.met {
                        Some(true) => "met",
                        Some(false) => "NOT met",
                        None => "not measured",
                    };
                    vec![g.what.clone(), v.to_string(), g.detail.clone()]
                })
                .collect();
            let cols = ["goal", "verdict", "measured / cause"].map(String::from);
            f.write_str(&markdown(&cols, &rows))?;
        }
        Ok(())
    }
}

/// A markdown table with its columns padded to line up in a terminal.
fn markdown(columns: &[String], rows: &[Vec<String>]) -> String {
    let n = columns.len();
    let cell = |r: &[String], i: usize| r.get(i).map(|s| s.replace('|', "/")).unwrap_or_default();
    let mut width: Vec<usize> = columns.iter().map(|c| c.chars().count()).collect();
    for r in rows {
        for (i, w) in width.iter_mut().enumerate() {
            *w = (*w).max(cell(r, i).chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::from("|");
        for (i, c) in cells.iter().enumerate() {
            let pad = width[i].saturating_sub(c.chars().count());
            let _ = write!(s, " {c}{} |", " ".repeat(pad));
        }
        s.push('\n');
        s
    };
    let mut out = line(columns.to_vec());
    out.push_str(&line(width.iter().map(|w| "-".repeat(*w)).collect()));
    for r in rows {
        out.push_str(&line((0..n).map(|i| cell(r, i)).collect()));
    }
    out
}

/// Median nanoseconds per call of `f`: `batches` batches of enough calls
/// to last about `batch` each (calibrated first).
pub fn time_ns<F: FnMut()>(mut f: F, batch: Duration, batches: usize) -> f64 {
    // Warm up and calibrate: double the count until a batch lasts `batch`.
    let mut iters = 1u64;
    loop {
        let t = Instant::now();
        for _ in 0..iters {
            f();
        }
        let e = t.elapsed();
        if e >= batch || iters >= 1 << 30 {
            break;
        }
        iters = if e.is_zero() {
            iters * 16
        } else {
            let want = batch.as_secs_f64() / e.as_secs_f64() * iters as f64;
            (want.ceil() as u64).clamp(iters * 2, iters * 64)
        };
    }
    let mut per: Vec<f64> = (0..batches.max(1))
        .map(|_| {
            let t = Instant::now();
            for _ in 0..iters {
                f();
            }
            t.elapsed().as_secs_f64() * 1e9 / iters as f64
        })
        .collect();
    median(&mut per)
}

/// Median nanoseconds of `f` over `n` single calls, each after an untimed
/// `setup` (for calls whose state must be rebuilt every time).
pub fn time_each_ns<S: FnMut(), F: FnMut()>(mut setup: S, mut f: F, n: usize) -> f64 {
    let mut v: Vec<f64> = (0..n.max(1))
        .map(|_| {
            setup();
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e9
        })
        .collect();
    median(&mut v)
}

/// The median of `v` (0 for none); sorts `v`.
pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The batch length of the in-process figures: short, so that on a loaded
/// machine most batches run without being preempted and the median is one
/// of them.
pub(crate) const BATCH: Duration = Duration::from_micros(200);
/// Batches per figure.
pub(crate) const BATCHES: usize = 51;

/// Keep `x` alive and opaque (re-exported for the section modules).
#[inline(always)]
pub(crate) fn keep<T>(x: T) -> T {
    black_box(x)
}

/// Run everything and return the table. `progress` gets a line as each
/// section starts (the CLI prints them to stderr).
pub fn run(progress: &mut dyn FnMut(&str)) -> Table {
    let t = Instant::now();
    let mut table = Table {
        machine: Machine::probe(),
        ..Table::default()
    };
    let mut goals = Vec::new();
    progress("dispatch");
    table.sections.push(inproc::dispatch());
    progress("in-process hypercalls");
    let (s, g) = inproc::hypercalls();
    table.sections.push(s);
    goals.extend(g);
    progress("worst-case hypercalls (4,096-page domain)");
    let (s, g) = worst::worst_cases();
    table.sections.push(s);
    goals.extend(g);
    progress("emulator vs Linux's UMIP emulation");
    let (s, g) = inproc::emulator(table.machine.umip);
    table.sections.push(s);
    goals.extend(g);
    progress("emulator phases");
    table.sections.push(phases::phases());
    progress("exits per kernel operation");
    let (s, g) = ops::exits_per_op();
    table.sections.push(s);
    goals.extend(g);
    progress("µs per exit (KVM)");
    let (s, g) = kvm::per_exit(&mut *progress);
    table.sections.extend(s);
    goals.extend(g);
    table.goals = goals;
    table.machine.finish();
    table.elapsed = t.elapsed();
    table
}
