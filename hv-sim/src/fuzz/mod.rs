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

use std::collections::HashSet;
use std::fmt::Write as _;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// SplitMix64 (Steele, Lea, Flood 2014): a tiny, fast, well-distributed
/// 64-bit generator; a run depends only on its seed.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    /// The next word.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Where a case's choices come from: recorded words first, then the
/// generator. Every word handed out is recorded, so the case can be
/// replayed exactly.
pub struct Source {
    prefix: Vec<u64>,
    pos: usize,
    rng: SplitMix64,
    record: Vec<u64>,
}

impl Source {
    /// A source that replays `prefix`, then draws from `rng`.
    pub fn new(prefix: Vec<u64>, rng: SplitMix64) -> Source {
        Source {
            prefix,
            pos: 0,
            rng,
            record: Vec::new(),
        }
    }

    /// A source that replays `words` and then yields zeros (a replayed case
    /// that asks for more words than were recorded ends its loops there).
    pub fn replay(words: &[u64]) -> Source {
        Source::new(words.to_vec(), SplitMix64::new(0))
    }

    /// The next word.
    pub fn word(&mut self) -> u64 {
        let w = match self.prefix.get(self.pos) {
            Some(&w) => w,
            None => self.rng.next_u64(),
        };
        self.pos += 1;
        self.record.push(w);
        w
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        let w = self.word();
        w.checked_rem(n).unwrap_or(0)
    }

    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }

    /// One of `xs` (which must not be empty).
    pub fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }

    /// Index of a weighted choice.
    pub fn weighted(&mut self, weights: &[u64]) -> usize {
        let total: u64 = weights.iter().sum();
        let mut x = self.below(total);
        for (i, &w) in weights.iter().enumerate() {
            if x < w {
                return i;
            }
            x -= w;
        }
        weights.len() - 1
    }

    /// The words drawn so far.
    pub fn recorded(&self) -> &[u64] {
        &self.record
    }
}

/// Boundary values every target mixes into its integers.
pub const BOUNDARIES: &[u64] = &[
    0,
    1,
    2,
    3,
    7,
    8,
    0xf,
    0x10,
    0xff,
    0x100,
    0xfff,
    0x1000,
    0x1001,
    0xffff,
    0x1_0000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_f000,
    0xffff_fff8,
    0xffff_ffff,
    0x1_0000_0000,
    0x0000_7fff_ffff_f000,
    0x0000_7fff_ffff_ffff,
    0x0000_8000_0000_0000,
    0xffff_7fff_ffff_ffff,
    0xffff_8000_0000_0000,
    0xffff_8800_0000_0000,
    0xffff_ffff_ffff_f000,
    0xffff_ffff_ffff_fff8,
    0x7fff_ffff_ffff_ffff,
    0x8000_0000_0000_0000,
    u64::MAX,
];

/// Segment selectors worth trying: Xen's flat selectors (0xe008 ring-0
/// code, 0xe019 pv32 kernel CS, 0xe02b/0xe033 user CS/DS, 0xe021/0xe02b
/// pv32 kernel DS/user CS …), the guest's usual ones, null and LDT ones.
pub const SELECTORS: &[u64] = &[
    0, 3, 4, 7, 8, 0xb, 0x10, 0x13, 0x18, 0x1b, 0x23, 0x2b, 0x33, 0x38, 0x40, 0x48, 0x50, 0x60,
    0x61, 0x69, 0x7b, 0xe008, 0xe010, 0xe019, 0xe021, 0xe023, 0xe02b, 0xe033, 0xe039, 0xfff8,
    0xfffb, 0xffff,
];

/// A selector from [`SELECTORS`], or any 16-bit value.
pub fn selector(s: &mut Source) -> u64 {
    if s.chance(3, 4) {
        s.pick(SELECTORS)
    } else {
        s.below(0x1_0000)
    }
}

/// An integer: a boundary, a small number, or any word.
pub fn int(s: &mut Source) -> u64 {
    match s.below(4) {
        0 | 1 => s.pick(BOUNDARIES),
        2 => s.below(64),
        _ => s.word(),
    }
}

/// An 8-byte descriptor shaped by the rules `check_descriptor` and the VMI
/// policy apply: code/data with every DPL and L/D combination, each system
/// type (LDT, TSS, call/interrupt/trap/task gates) with hostile selectors
/// and reserved bits, not-present ones, and arbitrary words.
pub fn descriptor(s: &mut Source) -> u64 {
    let base_limit = |s: &mut Source| -> u64 {
        let bits = s.word();
        // Keep only base/limit/G/AVL-ish bits; type, S, DPL, P, L, D set below.
        bits & !((0xFF << 40) | (0xF << 52))
    };
    match s.below(10) {
        // Code/data: P, DPL, type, S=1, L/D/G.
        0..=3 => {
            let typ = s.below(16);
            let dpl = s.below(4);
            let p = u64::from(s.chance(7, 8));
            let flags = s.below(16); // G, D/B, L, AVL
            let bl = if s.chance(1, 2) {
                0x0000_0000_0000_ffff | 0xF << 48
            } else {
                base_limit(s)
            };
            bl | typ << 40 | 1 << 44 | dpl << 45 | p << 47 | flags << 52
        }
        // System descriptors and gates.
        4..=6 => {
            let typ = s.pick(&[
                0u64, 1, 2, 3, 4, 5, 6, 7, 9, 0xb, 0xc, 0xe, 0xf, 8, 0xa, 0xd,
            ]);
            let dpl = s.below(4);
            let p = u64::from(s.chance(7, 8));
            let sel = selector(s);
            let off = if s.chance(1, 2) {
                s.below(0x1_0000)
            } else {
                s.word()
            };
            let params = if s.chance(3, 4) { 0 } else { s.below(256) };
            (off & 0xffff)
                | sel << 16
                | params << 32
                | typ << 40
                | dpl << 45
                | p << 47
                | ((off >> 16) & 0xffff) << 48
        }
        7 => 0,
        8 => s.pick(&[
            0x00af_9b00_0000_ffff,
            0x00cf_9b00_0000_ffff,
            0x00cf_9300_0000_ffff,
            0x00af_fb00_0000_ffff,
            0x00cf_fb00_0000_ffff,
            0x00cf_f300_0000_ffff,
            0x00af_bb00_0000_ffff,
            0x00cf_bb00_0000_ffff,
            0x0000_8900_0000_0067,
            0x0000_8200_0000_ffff,
            0x0000_8c00_e008_1000,
            0x0000_ec00_e033_1000,
            0x0000_8e00_0010_1000,
            0x0000_ee00_e019_1000,
            0x0000_8500_0010_0000,
            0x0000_0200_0000_0000,
            0x0020_9800_0000_0000,
        ]),
        _ => s.word(),
    }
}

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
    fn cost(self) -> u64 {
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
pub fn run_case(target: Target, src: &mut Source, st: &mut CaseStats) -> Result<(), String> {
    install_hook();
    PANIC_MSG.with(|m| *m.borrow_mut() = Some(String::new()));
    let r = catch_unwind(AssertUnwindSafe(|| target.case(src, st)));
    let msg = PANIC_MSG.with(|m| m.borrow_mut().take());
    match r {
        Ok(r) => r,
        Err(_) => Err(msg
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| "panic".into())),
    }
}

/// Replay a recorded case.
pub fn replay(target: Target, words: &[u64]) -> Result<CaseStats, String> {
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

/// Render a case as a words file: `#` comment lines, then the words in hex.
pub fn words_file(target: Target, words: &[u64], comment: &str) -> String {
    let mut s = format!("# hv-sim fuzz case, target {}\n", target.name());
    for line in comment.lines() {
        let _ = writeln!(s, "# {line}");
    }
    for chunk in words.chunks(4) {
        let line: Vec<String> = chunk.iter().map(|w| format!("{w:#018x}")).collect();
        let _ = writeln!(s, "{}", line.join(" "));
    }
    s
}

/// Parse a words file (see [`words_file`]): hex words separated by
/// whitespace; `#` starts a comment. At most 65,536 words.
pub fn parse_words(text: &str) -> Result<Vec<u64>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("");
        for tok in line.split_whitespace() {
            let digits = tok
                .strip_prefix("0x")
                .or_else(|| tok.strip_prefix("0X"))
                .unwrap_or(tok);
            let w = u64::from_str_radix(digits, 16).map_err(|e| {
                format!("line {}: {}: {e}", n + 1, crate::explain::quote_prefix(tok))
            })?;
            out.push(w);
            if out.len() > 65_536 {
                return Err("more than 65,536 words".into());
            }
        }
    }
    Ok(out)
}

/// The corpus kept in the repository.
pub fn default_corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz-corpus")
}

/// The corpus entries of `target` under `dir` (sorted by file name; a
/// missing directory is an empty corpus).
pub fn load_corpus(dir: &Path, target: Target) -> Result<Vec<(String, Vec<u64>)>, String> {
    let d = dir.join(target.name());
    let Ok(rd) = std::fs::read_dir(&d) else {
        return Ok(Vec::new());
    };
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "words"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).map_err(|e| format!("{}: {e}", f.display()))?;
        let w = parse_words(&text).map_err(|e| format!("{}: {e}", f.display()))?;
        out.push((f.display().to_string(), w));
    }
    Ok(out)
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
        if let Err(message) = r {
            rep.failure = Some(Box::new(Failure {
                target,
                message,
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

/// The host CPU's model name (from /proc/cpuinfo), for the report.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

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
    r.map_err(|e| format!("seed {}: {e}", crate::explain::quote_prefix(s)))
}

/// `hv-sim fuzz`: run the targets, print a line per target (calls, checks,
/// time, rate) and a total with the seed and the CPU model through `out`;
/// print a failure's reproducer. Returns the exit status: 0, 1 (a target
/// failed) or 2 (bad arguments).
pub fn cli(a: &CliArgs, out: &mut dyn FnMut(String)) -> u8 {
    let targets: Vec<Target> = if a.target == "all" {
        Target::ALL.to_vec()
    } else {
        match Target::from_name(&a.target) {
            Some(t) => vec![t],
            None => {
                let names: Vec<&str> = Target::ALL.iter().map(|t| t.name()).collect();
                out(format!(
                    "unknown target {}; targets: {}, all",
                    crate::explain::quote_prefix(&a.target),
                    names.join(", ")
                ));
                return 2;
            }
        }
    };
    if let Some(f) = &a.replay {
        let [t] = targets[..] else {
            out("--replay needs --target (the case's target)".into());
            return 2;
        };
        let words = match std::fs::read_to_string(f)
            .map_err(|e| e.to_string())
            .and_then(|t| parse_words(&t))
        {
            Ok(w) => w,
            Err(e) => {
                out(format!("{}: {e}", f.display()));
                return 2;
            }
        };
        return match replay(t, &words) {
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
        };
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
    let mut failed = false;
    let (mut calls, mut checks) = (0u64, 0u64);
    for (t, r) in &reports {
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
