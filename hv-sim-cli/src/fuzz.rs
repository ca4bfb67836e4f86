//! `hv-sim fuzz` (the engine is `hv_sim::fuzz`): its arguments, the run over several targets on several
//! threads, and its printed report.

use std::path::PathBuf;
use std::time::Instant;

use hv_sim::fuzz::*;

/// The host CPU, for the report.
pub use hv_sim::bench::cpu_model;

/// `hv-sim fuzz`'s arguments.
#[derive(Clone, Debug)]
pub struct CliArgs {
    /// A target's name or `all`.
    pub target: String,
    /// Calls in all.
    pub calls: u64,
    /// Seed: decimal, `0x` hex, or `random`.
    pub seed: String,
    /// Corpus directory (default: [`default_corpus_dir`]).
    pub corpus: Option<PathBuf>,
    /// Where to save new corpus candidates.
    pub save_corpus: Option<PathBuf>,
    /// Replay this words file and exit.
    pub replay: Option<PathBuf>,
    /// Threads.
    pub jobs: usize,
}

fn parse_seed(s: &str) -> Result<u64, String> {
    if s == "random" {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        return Ok(SplitMix64::new(t ^ u64::from(std::process::id()) << 32).next_u64());
    }
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|e| format!("seed {}: {e}", hv_sim::explain::quote_prefix(s)))
}

/// `hv-sim fuzz`: run the targets, print a line per target (calls, checks,
/// time, rate) and a total with the seed and the CPU model through `out`;
/// print a failure's reproducer. Returns the exit status: 0, 1 (a target
/// failed) or 2 (bad arguments).
pub fn cli(a: &CliArgs, out: &mut dyn FnMut(String)) -> u8 {
    let targets = match parse_targets(&a.target) {
        Ok(t) => t,
        Err(e) => {
            out(e);
            return 2;
        }
    };
    if let Some(f) = &a.replay {
        let [t] = targets[..] else {
            out("--replay needs --target (the case's target)".into());
            return 2;
        };
        return replay_file(t, f, out);
    }
    let seed = match parse_seed(&a.seed) {
        Ok(s) => s,
        Err(e) => {
            out(e);
            return 2;
        }
    };
    let total_w: u64 = targets.iter().map(|t| t.weight()).sum();
    let corpus = a.corpus.clone().unwrap_or_else(default_corpus_dir);
    let plan: Vec<(Target, Options)> = targets
        .iter()
        .map(|&t| {
            let calls = if targets.len() == 1 {
                a.calls
            } else {
                (a.calls as u128 * u128::from(t.weight())).div_ceil(u128::from(total_w)) as u64
            };
            (
                t,
                Options {
                    calls,
                    seed,
                    corpus: corpus.clone(),
                    save: a.save_corpus.clone(),
                },
            )
        })
        .collect();
    out(format!(
        "hv-sim fuzz: seed {seed:#018x} (reproduce: hv-sim fuzz --target {} --calls {} --seed {seed:#x}); CPU: {}; {} thread(s)",
        a.target,
        a.calls,
        cpu_model(),
        a.jobs.max(1)
    ));
    let start = Instant::now();
    let reports = run_plan(&plan, a.jobs.max(1));
    let wall = start.elapsed();
    let (calls, checks, failed) = print_reports(&reports, out);
    out(format!(
        "hv-sim fuzz: {calls} calls, {checks} invariant checks in {:.1} s ({:.0} calls/s); seed {seed:#018x}; {}",
        wall.as_secs_f64(),
        calls as f64 / wall.as_secs_f64().max(1e-9),
        if failed { "FAILED" } else { "no failure" }
    ));
    u8::from(failed)
}

/// Run each target of `plan` on `jobs` threads (largest first).
fn run_plan(plan: &[(Target, Options)], jobs: usize) -> Vec<(Target, Report)> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut order: Vec<usize> = (0..plan.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(plan[i].1.calls * plan[i].0.cost()));
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|sc| {
        for _ in 0..jobs.min(plan.len()) {
            sc.spawn(|| {
                loop {
                    let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(&i) = order.get(k) else { break };
                    let (t, o) = &plan[i];
                    let r = run_target(*t, o);
                    results
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((i, r));
                }
            });
        }
    });
    let mut r = results.into_inner().unwrap_or_else(|e| e.into_inner());
    r.sort_by_key(|(i, _)| *i);
    r.into_iter().map(|(i, rep)| (plan[i].0, rep)).collect()
}

/// The targets `name` names: one, or `all`.
fn parse_targets(name: &str) -> Result<Vec<Target>, String> {
    if name == "all" {
        return Ok(Target::ALL.to_vec());
    }
    Target::from_name(name).map(|t| vec![t]).ok_or_else(|| {
        let names: Vec<&str> = Target::ALL.iter().map(|t| t.name()).collect();
        format!(
            "unknown target {}; targets: {}, all",
            hv_sim::explain::quote_prefix(name),
            names.join(", ")
        )
    })
}

/// `--replay FILE`: run the case's words once; the exit status.
fn replay_file(t: Target, f: &std::path::Path, out: &mut dyn FnMut(String)) -> u8 {
    let words = match std::fs::read_to_string(f)
        .map_err(|e| e.to_string())
        .and_then(|t| parse_words(&t).map_err(|e| e.to_string()))
    {
        Ok(w) => w,
        Err(e) => {
            out(format!("{}: {e}", f.display()));
            return 2;
        }
    };
    match replay(t, &words) {
        Ok(st) => {
            out(format!(
                "{}: replayed {} words: {} calls, {} checks, no failure",
                t.name(),
                words.len(),
                st.calls,
                st.checks
            ));
            0
        }
        Err(e) => {
            out(format!("{}: FAILED: {e}", t.name()));
            1
        }
    }
}

/// A line per target, and a failure's reproducer; the total calls and
/// checks, and whether a target failed.
fn print_reports(reports: &[(Target, Report)], out: &mut dyn FnMut(String)) -> (u64, u64, bool) {
    let mut failed = false;
    let (mut calls, mut checks) = (0u64, 0u64);
    for (t, r) in reports {
        calls += r.calls;
        checks += r.checks;
        out(format!(
            "  {:<12} {:>11} calls {:>11} checks {:>8} cases ({} from the corpus, {} at a known defect) {:>6} outcomes {:>7.2} s {:>9.0} calls/s{}",
            t.name(),
            r.calls,
            r.checks,
            r.cases,
            r.corpus,
            r.known,
            r.outcomes,
            r.elapsed.as_secs_f64(),
            r.calls as f64 / r.elapsed.as_secs_f64().max(1e-9),
            if r.failure.is_some() { "  FAILED" } else { "" }
        ));
        if let Some(f) = &r.failure {
            failed = true;
            out(format!(
                "  FAILURE in {} (seed {:#x}, case {}): {}",
                t.name(),
                f.seed,
                f.case,
                f.message
            ));
            out("  reproducer (save as case.words, then: hv-sim fuzz --target NAME --replay case.words):".into());
            for line in f.words_file().lines() {
                out(format!("    {line}"));
            }
        }
    }
    if reports.iter().any(|(_, r)| r.known > 0) {
        for k in KNOWN_ISSUES {
            out(format!("  known defect (reported): {k}"));
        }
    }
    (calls, checks, failed)
}
