//! The Xen targets are a function of their words only: pv64 guest VAs are
//! host addresses of the domain's RAM, and the same seed on RAM at other
//! host addresses must make the same calls with the same outcomes.

use super::{Dom, domain, steps};
use crate::fuzz::{CaseStats, Source, SplitMix64};
use crate::xen::Abi;

/// Per case: its words, calls, checks, outcomes and whether it passed.
type Digest = (Vec<u64>, u64, u64, Vec<u64>, bool);

/// Run `n` cases of `abi` from `seed`; the domains' VA bases and a digest
/// of each case. With `keep`, every domain stays allocated until the end
/// (so no two share RAM), else each is freed before the next.
fn run(abi: Abi, seed: u64, n: usize, keep: bool) -> (Vec<u64>, Vec<Digest>) {
    let mut rng = SplitMix64::new(seed);
    let mut kept: Vec<Dom> = Vec::new();
    let mut bases = Vec::new();
    let mut digests = Vec::new();
    for _ in 0..n {
        let mut s = Source::new(Vec::new(), SplitMix64::new(rng.next_u64()));
        let mut st = CaseStats::default();
        let mut dm = domain(abi, &mut s);
        bases.push(dm.base);
        let ok = steps(&mut dm, &mut s, &mut st).is_ok();
        digests.push((s.recorded().to_vec(), st.calls, st.checks, st.outcomes, ok));
        if keep {
            kept.push(dm);
        }
    }
    (bases, digests)
}

/// The same seed on pv64 domains whose RAM sits elsewhere in the host:
/// every case makes the same calls with the same outcomes.
#[test]
fn pv64_cases_do_not_depend_on_host_addresses() {
    let n = 1000;
    for seed in [1, 0x5eed] {
        let (base_a, a) = run(Abi::Pv64, seed, n, false);
        // Every domain of the second run stays allocated, so its RAM is
        // never where the first run's (freed after each case) was reused.
        let (base_b, b) = run(Abi::Pv64, seed, n, true);
        let moved = base_a.iter().zip(&base_b).filter(|(x, y)| x != y).count();
        assert!(moved >= n - 2, "only {moved} of {n} cases moved");
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!(
                x == y,
                "seed {seed:#x} case {i} (va_base {:#x} then {:#x}): \
                 outcomes {:x?}\nthen {:x?}",
                base_a[i],
                base_b[i],
                x.3,
                y.3
            );
        }
    }
}
