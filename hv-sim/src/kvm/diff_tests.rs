//! The departure search can fail: a record that differs from the SDM's in
//! a way no modelled PVM/KVM departure makes is never "explained", so an
//! emulator bug that shows that way stays unexplained. Model only: no
//! /dev/kvm.

use super::*;
use crate::emulate::diff::long::{Kind, LongPaging, differences, generate};

/// What no departure does to a record: an error code bit no fault sets,
/// an IDTR limit off by one, a CR2 off by 16 after a #PF.
fn perturbations(e: &LongRecord) -> Vec<(&'static str, LongRecord)> {
    let mut out = Vec::new();
    if e.vector.is_some() {
        let mut q = e.clone();
        q.error ^= 0x4000_0000;
        out.push(("error code", q));
    }
    let mut q = e.clone();
    q.idtr.0 ^= 1;
    out.push(("IDTR limit", q));
    if e.vector == Some(14) {
        let mut q = e.clone();
        q.cr2 ^= 0x10;
        out.push(("CR2", q));
    }
    out
}

#[test]
fn no_departure_explains_a_difference_it_does_not_make() {
    let all = KvmDepartures::all();
    for kind in [Kind::Bits64, Kind::Compat] {
        let scenarios = generate(40, crate::emulate::diff::SEED, kind, LongPaging::Plain);
        let (_, at) = image::build(&scenarios).expect("the image");
        for (i, s) in scenarios.iter().enumerate() {
            let e = KvmDepartures::default().emulate(s, at[i], 0);
            for (what, q) in perturbations(&e) {
                assert!(
                    !differences(s.mode, &q, &e).is_empty(),
                    "#{i}: the {what} perturbation changed nothing"
                );
                if let Some(d) = all
                    .iter()
                    .find(|d| differences(s.mode, &q, &d.emulate(s, at[i], 0)).is_empty())
                {
                    panic!("{kind:?} #{i}: {d} explains a changed {what}");
                }
            }
        }
    }
}
