//! An in-process fuzzer for hv-sim and the guest crates (`hv-sim fuzz`).
//!
//! # Engine
//! A stable, dependency-free, deterministic engine: cargo-fuzz needs a
//! nightly toolchain and `libfuzzer-sys`/`arbitrary`, which this project's
//! offline build cannot fetch, and a coverage-guided engine is not what the
//! invariants need anyway: each target *generates structured input* (valid
//! frames, VAs and selectors of the domain, descriptors shaped by the rules
//! they must pass, boundary and non-canonical values) and checks the model's
//! invariants after every call.
//!
//! Every choice a target makes is drawn from a [`Source`]: a stream of
//! 64-bit words that starts with a recorded case (a corpus entry, possibly
//! mutated) and continues with [`SplitMix64`]. So a case *is* its word
//! stream: a failure prints the words, `hv-sim fuzz --replay FILE` runs them
//! again, and a regression test is the words in a test. A run is a pure
//! function of the seed and the corpus (`hv-sim/fuzz-corpus/<target>/*.words`,
//! kept in the repository): first every corpus entry as recorded, then
//! mutations of the corpus (words replaced by dictionary values, bits
//! flipped, ranges duplicated, dropped or spliced from another entry), then
//! fresh random cases; a case whose calls reach an outcome (call, result)
//! not seen before joins the in-memory corpus and is mutated in turn.
//!
//! # Targets
//! See [`Target`]; each module's documentation says what it generates and
//! which invariants it checks after each call.

pub mod backends;
pub mod core_fns;
pub mod emul;
pub mod rom;
pub mod vmi;
pub mod xen;

mod corpus;
mod error;
mod source;

pub use corpus::{default_corpus_dir, load_corpus, parse_words, words_file};
pub use error::{CorpusError, Finding, WordsError};
pub use source::{BOUNDARIES, SELECTORS, Source, SplitMix64, descriptor, int, selector};

use std::collections::HashSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// Xen PV, 64-bit ABI: every hypercall with arbitrary and structured
    /// arguments and guest memory, multicall lists (nested, iret entries),
    /// lazy LDT faults and guest stores.
    XenPv64,
    /// The same for the 32-bit compat ABI.
    XenPv32,
    /// VMI personality, 64-bit guest: every call, relocation answers,
    /// entries through the ROM stubs.
    Vmi64,
    /// VMI personality, 32-bit guest.
    Vmi32,
    /// `pvops_vmi::rom` on arbitrary option-ROM windows.
    Rom,
    /// `hv_sim::emulate` with arbitrary vCPU state, memory and bytes.
    Emulate,
    /// pvops' descriptor/gate/selector/pointer encoding and decoding,
    /// Xen's `check_descriptor`, and the CLI's descriptor parsing and
    /// stdin reader.
    Core,
    /// pvops-xen's ops over an in-process pv64 domain.
    XenBackend,
    /// pvops-vmi's ops over an in-process 64-bit VMI personality.
    VmiBackend,
}

impl Target {
    /// Every target, in the order `all` runs them.
    pub const ALL: [Target; 9] = [
        Target::XenPv64,
        Target::XenPv32,
        Target::Vmi64,
        Target::Vmi32,
        Target::Rom,
        Target::Emulate,
        Target::Core,
        Target::XenBackend,
        Target::VmiBackend,
    ];

    /// Its name on the command line and in the corpus directory.
    pub fn name(self) -> &'static str {
        match self {
            Target::XenPv64 => "xen-pv64",
            Target::XenPv32 => "xen-pv32",
            Target::Vmi64 => "vmi64",
            Target::Vmi32 => "vmi32",
            Target::Rom => "rom",
            Target::Emulate => "emulate",
            Target::Core => "core",
            Target::XenBackend => "xen-backend",
            Target::VmiBackend => "vmi-backend",
        }
    }

    /// The target called `name`.
    pub fn from_name(name: &str) -> Option<Target> {
        Target::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Its share of `all`'s calls (out of the sum over targets): the
    /// hypervisor models get most.
    pub fn weight(self) -> u64 {
        match self {
            Target::XenPv64 | Target::XenPv32 => 22,
            Target::Vmi64 | Target::Vmi32 => 12,
            Target::Emulate => 6,
            Target::Core => 12,
            Target::Rom => 3,
            Target::XenBackend | Target::VmiBackend => 4,
        }
    }

    /// Rough cost of a call relative to the others (for scheduling).
    pub fn cost(self) -> u64 {
        match self {
            Target::XenPv64 | Target::XenPv32 | Target::XenBackend | Target::VmiBackend => 4,
            Target::Vmi64 | Target::Vmi32 => 3,
            Target::Emulate => 3,
            Target::Rom => 2,
            Target::Core => 1,
        }
    }

    /// Run one case from `src`.
    fn case(self, src: &mut Source, st: &mut CaseStats) -> Result<(), String> {
        match self {
            Target::XenPv64 => xen::case(crate::xen::Abi::Pv64, src, st),
            Target::XenPv32 => xen::case(crate::xen::Abi::Pv32, src, st),
            Target::Vmi64 => vmi::case(crate::vmi::GuestKind::Vmi64, src, st),
            Target::Vmi32 => vmi::case(crate::vmi::GuestKind::Vmi32, src, st),
            Target::Rom => rom::case(src, st),
            Target::Emulate => emul::case(src, st),
            Target::Core => core_fns::case(src, st),
            Target::XenBackend => backends::xen_case(src, st),
            Target::VmiBackend => backends::vmi_case(src, st),
        }
    }
}

/// What one case did: calls made, invariant checks run, and the outcomes
/// seen (call and result class), which decide whether it joins the corpus.
#[derive(Default)]
pub struct CaseStats {
    /// Calls into the code under test.
    pub calls: u64,
    /// Invariant checks (each a full check of the model or an oracle
    /// comparison).
    pub checks: u64,
    /// Outcome signatures (a hash of call and result).
    pub outcomes: Vec<u64>,
    /// The case ended at a known, reported defect (see [`KNOWN_ISSUES`]).
    pub known: Option<&'static str>,
}

/// Defects found by the fuzzer in code outside this module's owner's area,
/// reported and not yet fixed: a case that reaches one ends there and is
/// counted, not failed, so the CI stage keeps fuzzing everything else.
/// Each has an `#[ignore]`d regression test in `tests/fuzz_regressions.rs`;
/// remove the entry when its test passes.
pub const KNOWN_ISSUES: &[&str] = &[];

impl CaseStats {
    /// Record the outcome of call `what` with result `r`: errnos and small
    /// results are kept exact, large ones by magnitude.
    pub fn outcome(&mut self, what: u64, r: i64) {
        let class = if (-4096..=64).contains(&r) {
            r
        } else {
            64 + i64::from(64 - r.unsigned_abs().leading_zeros() as i8)
        };
        self.outcomes
            .push(what.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ class as u64);
    }
}

/// A failed case: what broke, and the words that reproduce it.
#[derive(Clone, Debug)]
pub struct Failure {
    /// The target.
    pub target: Target,
    /// What broke (an invariant, an oracle, or a panic's message).
    pub message: String,
    /// The case's words (`hv-sim fuzz --replay`).
    pub words: Vec<u64>,
    /// The run's seed.
    pub seed: u64,
    /// Which case of the run.
    pub case: u64,
}

impl Failure {
    /// The case as a corpus/replay file.
    pub fn words_file(&self) -> String {
        words_file(
            self.target,
            &self.words,
            &format!("failure: {}", self.message),
        )
    }
}

/// A target's totals for one run.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Cases run.
    pub cases: u64,
    /// Calls into the code under test.
    pub calls: u64,
    /// Invariant checks.
    pub checks: u64,
    /// Corpus entries replayed.
    pub corpus: u64,
    /// Distinct outcomes seen.
    pub outcomes: usize,
    /// Cases added to the in-memory corpus.
    pub kept: usize,
    /// Cases that ended at a known defect ([`KNOWN_ISSUES`]).
    pub known: u64,
    /// Time taken.
    pub elapsed: Duration,
    /// The first failure, if any (the run stops there).
    pub failure: Option<Box<Failure>>,
}

thread_local! {
    static PANIC_MSG: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Install a panic hook that records the message (and location) of a
/// panic on a fuzzing thread instead of printing it; other threads keep the
/// default hook.
fn install_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let fuzzing = PANIC_MSG.with(|m| m.borrow().is_some());
            if fuzzing {
                let msg = info
                    .payload()
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| info.payload().downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "(non-string payload)".into());
                let loc = info
                    .location()
                    .map(|l| format!(" at {}:{}", l.file(), l.line()))
                    .unwrap_or_default();
                PANIC_MSG.with(|m| *m.borrow_mut() = Some(format!("panic{loc}: {msg}")));
            } else {
                default(info);
            }
        }));
    });
}

/// Run one case, turning a panic into an error.
pub fn run_case(target: Target, src: &mut Source, st: &mut CaseStats) -> Result<(), Finding> {
    install_hook();
    PANIC_MSG.with(|m| *m.borrow_mut() = Some(String::new()));
    let r = catch_unwind(AssertUnwindSafe(|| target.case(src, st)));
    let msg = PANIC_MSG.with(|m| m.borrow_mut().take());
    match r {
        Ok(r) => r.map_err(Finding::Broken),
        Err(_) => Err(Finding::Panic(
            msg.filter(|m| !m.is_empty())
                .unwrap_or_else(|| "panic".into()),
        )),
    }
}

/// Replay a recorded case.
pub fn replay(target: Target, words: &[u64]) -> Result<CaseStats, Finding> {
    let mut st = CaseStats::default();
    run_case(target, &mut Source::replay(words), &mut st).map(|()| st)
}

/// The seed of `target`'s stream for run seed `seed` (each target its own).
fn target_seed(seed: u64, target: Target) -> u64 {
    let mut h = SplitMix64::new(seed);
    let mut x = h.next_u64();
    for b in target.name().bytes() {
        x = (x ^ u64::from(b)).wrapping_mul(0x100_0000_01B3);
    }
    x
}

/// Mutate `base` (a recorded case) into a new word prefix, with words from
/// `other` for splicing.
fn mutate(base: &[u64], other: &[u64], rng: &mut SplitMix64) -> Vec<u64> {
    let mut w = base.to_vec();
    if w.is_empty() {
        return w;
    }
    let n = 1 + rng.next_u64() % 4;
    for _ in 0..n {
        let len = w.len() as u64;
        let i = (rng.next_u64() % len.max(1)) as usize;
        match rng.next_u64() % 8 {
            0 | 1 => {
                if let Some(x) = w.get_mut(i) {
                    *x ^= 1 << (rng.next_u64() % 64);
                }
            }
            2 => {
                if let Some(x) = w.get_mut(i) {
                    *x = BOUNDARIES[(rng.next_u64() % BOUNDARIES.len() as u64) as usize];
                }
            }
            3 => {
                if let Some(x) = w.get_mut(i) {
                    *x = rng.next_u64();
                }
            }
            4 => {
                if let Some(x) = w.get_mut(i) {
                    *x = x.wrapping_add((rng.next_u64() % 9).wrapping_sub(4));
                }
            }
            5 => {
                // Duplicate a range (repeats an op).
                let j = (i + 1 + (rng.next_u64() % 16) as usize).min(w.len());
                let chunk: Vec<u64> = w[i..j].to_vec();
                let at = (rng.next_u64() % (w.len() as u64 + 1)) as usize;
                if w.len() + chunk.len() <= 4096 {
                    w.splice(at..at, chunk);
                }
            }
            6 => {
                // Drop a range.
                let j = (i + 1 + (rng.next_u64() % 16) as usize).min(w.len());
                w.drain(i..j);
                if w.is_empty() {
                    return w;
                }
            }
            _ => {
                // Splice: our head, the other's tail.
                if !other.is_empty() {
                    let k = (rng.next_u64() % other.len() as u64) as usize;
                    w.truncate(i);
                    w.extend_from_slice(&other[k..]);
                    if w.is_empty() {
                        return w;
                    }
                }
            }
        }
    }
    w
}

/// Most corpus candidates `--save-corpus` writes per target and run.
pub const SAVE_MAX: usize = 24;

/// Options of one target's run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Calls to make (the run stops at the first case past it).
    pub calls: u64,
    /// The run's seed.
    pub seed: u64,
    /// The corpus directory.
    pub corpus: PathBuf,
    /// Where to save the cases that found new outcomes (corpus
    /// candidates), if anywhere.
    pub save: Option<PathBuf>,
}

/// Run `target` for `opts.calls` calls: the corpus as recorded, then
/// mutations and fresh cases.
pub fn run_target(target: Target, opts: &Options) -> Report {
    let start = Instant::now();
    let mut rep = Report::default();
    let mut rng = SplitMix64::new(target_seed(opts.seed, target));
    let corpus = match load_corpus(&opts.corpus, target) {
        Ok(c) => c,
        Err(e) => {
            rep.failure = Some(Box::new(Failure {
                target,
                message: format!("corpus: {e}"),
                words: Vec::new(),
                seed: opts.seed,
                case: 0,
            }));
            return rep;
        }
    };
    let mut pool: Vec<Vec<u64>> = corpus.iter().map(|(_, w)| w.clone()).collect();
    let mut seen: HashSet<u64> = HashSet::new();
    let mut saved = 0usize;
    let mut next_corpus = 0usize;
    while rep.calls < opts.calls {
        // Corpus first, as recorded (then zeros: the case ends as it did).
        let (prefix, replayed) = if next_corpus < corpus.len() {
            next_corpus += 1;
            (corpus[next_corpus - 1].1.clone(), true)
        } else if !pool.is_empty() && rng.next_u64().is_multiple_of(2) {
            let a = (rng.next_u64() % pool.len() as u64) as usize;
            let b = (rng.next_u64() % pool.len() as u64) as usize;
            (mutate(&pool[a], &pool[b], &mut rng), false)
        } else {
            (Vec::new(), false)
        };
        let case_rng = SplitMix64::new(rng.next_u64());
        let mut src = if replayed {
            Source::new(prefix, SplitMix64::new(0))
        } else {
            Source::new(prefix, case_rng)
        };
        let mut st = CaseStats::default();
        let r = run_case(target, &mut src, &mut st);
        rep.cases += 1;
        rep.corpus += u64::from(replayed);
        rep.calls += st.calls;
        rep.checks += st.checks;
        rep.known += u64::from(st.known.is_some());
        if let Err(finding) = r {
            rep.failure = Some(Box::new(Failure {
                target,
                message: finding.to_string(),
                words: src.recorded().to_vec(),
                seed: opts.seed,
                case: rep.cases - 1,
            }));
            break;
        }
        let mut new = false;
        for o in &st.outcomes {
            new |= seen.insert(*o);
        }
        if new && !replayed && pool.len() < 4096 {
            let words = src.recorded().to_vec();
            if let Some(dir) = opts.save.as_ref().filter(|_| saved < SAVE_MAX) {
                let d = dir.join(target.name());
                let _ = std::fs::create_dir_all(&d);
                let f = d.join(format!("{:016x}-{saved:05}.words", opts.seed));
                let _ = std::fs::write(
                    f,
                    words_file(
                        target,
                        &words,
                        &format!("new outcomes found by seed {:#x}", opts.seed),
                    ),
                );
                saved += 1;
            }
            pool.push(words);
            rep.kept += 1;
        }
        if st.calls == 0 {
            // A case that made no call still counts, so the run ends.
            rep.calls += 1;
        }
    }
    rep.outcomes = seen.len();
    rep.elapsed = start.elapsed();
    rep
}
