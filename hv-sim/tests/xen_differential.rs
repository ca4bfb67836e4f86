//! hv-sim against real Xen 4.17, call by call: the example kernel's
//! battery (raw hypercalls, valid and hostile mixed) runs on the real
//! hypervisor under QEMU and under hv-sim's Xen personality under KVM, and
//! every line (result, digest of the guest's descriptor frames, GDT/LDT
//! load probes) must agree. Fixed seeds plus one random seed, printed;
//! `HV_SIM_DIFF_SEED=<n>` replaces the random one, `HV_SIM_DIFF_COUNT`
//! the number of calls per seed.
//!
//! Needs /dev/kvm, QEMU and Xen: prints `SKIPPED: <reason>` without them
//! (fails instead with `HV_SIM_REQUIRE_XEN=1` / `HV_SIM_REQUIRE_KVM=1`).

use std::io::Write;
use std::time::Duration;

use hv_sim::differential;
use hv_sim::kernel_build::build_example_kernel;
use hv_sim::testing::{kvm_or_skip, xen_or_skip};

const FIXED_SEEDS: [u64; 2] = [1, 0x005e_ed0f_da7a];

fn seeds() -> Vec<u64> {
    let mut v = FIXED_SEEDS.to_vec();
    v.push(differential::seed_from_env().unwrap_or_else(|e| panic!("{e}")));
    v
}

#[test]
fn hv_sim_agrees_with_real_xen_on_every_battery_call() {
    let test = "hv_sim_agrees_with_real_xen_on_every_battery_call";
    let Some(xen) = xen_or_skip(test) else {
        return;
    };
    if !kvm_or_skip(test) {
        return;
    }
    let count: usize = std::env::var("HV_SIM_DIFF_COUNT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let elf = build_example_kernel().expect("example kernel builds");
    let mut failed = Vec::new();
    for seed in seeds() {
        let d = differential::run(&xen, &elf, seed, count, Duration::from_secs(300))
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        let _ = writeln!(
            std::io::stderr().lock(),
            "{} (reproduce: HV_SIM_DIFF_SEED={seed} cargo test -p hv-sim --test xen_differential)",
            d.summary_line()
        );
        for x in &d.disagreements {
            println!(
                "seed {seed} call {}:\n  xen:    {}\n  hv-sim: {}",
                x.index, x.xen, x.hv_sim
            );
        }
        if !d.all_agree() {
            failed.push((seed, d.disagreeing, d.lines));
        }
    }
    assert!(
        failed.is_empty(),
        "disagreements (seed, lines, printed): {failed:?}"
    );
}
