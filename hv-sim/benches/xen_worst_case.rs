//! The worst case of each long hypercall over a 4,096-page domain (the
//! largest the tests build), whole call and per invocation, against
//! `stack_switch` in the same run, with the CPU model: the
//! `hv_sim::bench::worst` section of `hv-sim bench`, on its own.
//!
//! Run: `cargo bench -p hv-sim --bench xen_worst_case`.

#![allow(missing_docs)]

use std::time::Instant;

use hv_sim::bench::{Machine, Table, worst};

fn main() {
    let t = Instant::now();
    let mut table = Table {
        machine: Machine::probe(),
        ..Table::default()
    };
    let (s, g) = worst::worst_cases();
    table.sections.push(s);
    table.goals = g;
    table.machine.finish();
    table.elapsed = t.elapsed();
    println!("{table}");
}
