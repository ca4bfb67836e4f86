//! Seeds for the workspace's property tests (the one copy: hv-sim's tests
//! include it with `#[path = "common/seeds.rs"] mod seeds;`, other crates'
//! tests by a relative `#[path]` to this file).
//!
//! [`seeded_proptest!`] is `proptest!` (the block of `#[test] fn`s form)
//! with every property run through [`check`]: once from each seed in
//! [`FIXED`], so a plain `cargo test` is deterministic, then once more from a
//! random seed. That seed is printed on standard error, written directly so
//! the test harness's output capture does not swallow it (as
//! `hv_sim::testing::skipped` does), with the command that reruns it:
//!
//! ```text
//! PROPTEST SEED: xen_props check_descriptor_never_lowers_privilege: random seed 1234 (reproduce: PVOPS_PROPTEST_SEED=1234 cargo test -p hv-sim --test xen_props -- check_descriptor_never_lowers_privilege --exact)
//! ```
//!
//! `PVOPS_PROPTEST_SEED=<u64>` replaces the random seed (the fixed seeds
//! still run first). Seeds are proptest's own: each run is a
//! `ProptestConfig` with `rng_seed: RngSeed::Fixed(seed)`, and the random
//! one is drawn from a `TestRunner` whose config says `RngSeed::Random`.
//! Everything else is proptest's default, so the `.proptest-regressions`
//! file next to the test is replayed before every run and new failures are
//! saved to it, and proptest's environment variables still apply
//! (`PROPTEST_CASES`; `PROPTEST_RNG_SEED` overrides every run, fixed ones
//! included).

use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};

use proptest::prelude::Rng;
use proptest::test_runner::{Config, RngSeed, TestRunner};

/// The variable that forces the random seed.
pub const SEED_VAR: &str = "PVOPS_PROPTEST_SEED";

/// The seeds every run uses (arbitrary values, fixed forever; add, don't edit).
pub const FIXED: [u64; 3] = [
    0x7076_6f70_7300_0001,
    0x7076_6f70_7300_0002,
    0x7076_6f70_7300_0003,
];

/// `proptest! { #![proptest_config(CONFIG)] #[test] fn name(x in strategy, ..) { body } .. }`,
/// with each property run by [`check`] from CONFIG. The strategies are
/// combined exactly as `proptest!` combines them, so seeds saved in a
/// `.proptest-regressions` file replay the same values. Mount this file as
/// `mod seeds` at the test crate's root (the macro calls `$crate::seeds`).
macro_rules! seeded_proptest {
    (#![proptest_config($config:expr)]
     $($(#[$meta:meta])* fn $name:ident($($args:tt)+) $body:tt)*) => {
        $(
            $(#[$meta])*
            fn $name() {
                $crate::seeds::check($config, |config| {
                    ::proptest::proptest!(config, |($($args)+)| $body);
                });
            }
        )*
    };
}
pub(crate) use seeded_proptest;

/// Run `property` once per seed: each of [`FIXED`], then the random seed
/// (or `PVOPS_PROPTEST_SEED`). `property` gets `base` with that seed and is
/// expected to hand it to `proptest!` ([`seeded_proptest!`] does).
///
/// A failing run's panic is passed on after a line on standard error that
/// says which seed failed and how to rerun it.
pub fn check(base: Config, mut property: impl FnMut(Config)) {
    let thread = std::thread::current();
    // libtest runs each test on a thread named after the test's path.
    let test = thread.name().filter(|n| *n != "main");
    let (random, forced) = match std::env::var(SEED_VAR) {
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(seed) => (seed, true),
            Err(e) => panic!("{SEED_VAR}={v:?} is not a u64: {e}"),
        },
        Err(_) => (random_seed(), false),
    };
    let rerun = |seed: u64| {
        let filter = test.map_or(String::new(), |t| format!(" -- {t} --exact"));
        format!(
            "{SEED_VAR}={seed} cargo test -p {} --test {}{filter}",
            env!("CARGO_PKG_NAME"),
            env!("CARGO_CRATE_NAME"),
        )
    };
    let name = format!(
        "{} {}",
        env!("CARGO_CRATE_NAME"),
        test.unwrap_or("(property)")
    );
    let from = if forced { "forced seed" } else { "random seed" };
    say(&format!(
        "PROPTEST SEED: {name}: {from} {random} (reproduce: {})",
        rerun(random)
    ));
    if let Ok(v) = std::env::var("PROPTEST_RNG_SEED") {
        say(&format!(
            "PROPTEST SEED: {name}: PROPTEST_RNG_SEED={v} is set: proptest uses it in place of the fixed and random seeds"
        ));
    }
    let runs = FIXED
        .iter()
        .map(|&s| (s, "fixed seed"))
        .chain([(random, from)]);
    for (seed, what) in runs {
        let config = Config {
            rng_seed: RngSeed::Fixed(seed),
            ..base.clone()
        };
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| property(config))) {
            say(&format!(
                "PROPTEST SEED: {name}: FAILED from {what} {seed} (reproduce: {})",
                rerun(seed)
            ));
            resume_unwind(panic);
        }
    }
}

/// A seed from the operating system's randomness, through proptest's own
/// `RngSeed::Random` runner.
fn random_seed() -> u64 {
    let config = Config {
        rng_seed: RngSeed::Random,
        failure_persistence: None,
        ..Config::default()
    };
    TestRunner::new(config).rng().next_u64()
}

/// One line on the process's standard error, past the harness's capture.
fn say(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}
