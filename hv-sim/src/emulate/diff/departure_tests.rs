//! Negative tests of the 32-bit departures: each one explains only the
//! change it makes. For every single departure and every scenario it
//! changes, the departure's record is perturbed in each field the
//! departure changed, in a way no departure makes (an error-code bit no
//! fault sets, a vector none raises, a flipped bit in a byte the
//! departure wrote, an EIP or CR2 off by a bit, an ignored PTE bit, a
//! selector index no scenario loads); the harness's search
//! ([`explain`]) must then find no set that explains it. So an emulator
//! bug that shows in a field a departure touches stays unexplained.

use super::{
    Departures, Paging, Record, differences, emulate_scenario, explain, generate_edges,
    generate_in, image,
};

/// `r` changed in `field` in a way no modelled departure makes (the
/// window and GDT bytes by [`flip`], which needs the SDM's record).
fn perturb(r: &Record, field: &str) -> Record {
    let mut q = r.clone();
    match field {
        "exception" if q.vector.is_some() => q.error ^= 0x4000_0000,
        "exception" => q.vector = Some(5),
        "eax" => q.eax ^= 0x8000_0000,
        "cr2" => q.cr2 ^= 0x10,
        "eip" => q.eip = q.eip.map(|e| e ^ 0x4000_0000),
        "pte" => q.pte ^= 1 << 9,
        "gdtr" => q.gdtr.0 ^= 0x8000,
        "idtr" => q.idtr.0 ^= 0x8000,
        "tr" => q.tr ^= 0x8000,
        "ldtr" => q.ldtr ^= 0x8000,
        "memory" | "gdt" => {}
        other => panic!("no perturbation for {other}"),
    }
    q
}

#[test]
fn no_departure_explains_a_difference_it_does_not_make() {
    let singles = [
        Departures {
            no_segment_checks: true,
            ..Departures::default()
        },
        Departures {
            ignores_lock: true,
            ..Departures::default()
        },
        Departures {
            null_ltr: true,
            ..Departures::default()
        },
        Departures {
            rsvd_without_p: true,
            ..Departures::default()
        },
        Departures {
            no_fetch_limit: true,
            ..Departures::default()
        },
    ];
    let mut checked = [0usize; 5];
    for paging in [Paging::Bits32, Paging::Pae] {
        let mut all = generate_in(1500, super::SEED, paging);
        all.extend(generate_edges(1500, super::SEED, paging));
        let (_, at) = image::build(&all).expect("the image");
        let tr = image::TSS_SEL;
        for (i, s) in all.iter().enumerate() {
            let (sdm, _) = emulate_scenario(s, at[i], tr, Departures::default());
            for (k, d) in singles.iter().enumerate().filter(|(_, d)| d.apply_to(s)) {
                let (r, _) = emulate_scenario(s, at[i], tr, *d);
                if r.outside {
                    continue;
                }
                for field in differences(&r, &sdm) {
                    let mut q = perturb(&r, field);
                    match field {
                        "memory" => flip(&mut q.window, &sdm.window),
                        "gdt" => flip(&mut q.gdt, &sdm.gdt),
                        _ => {}
                    }
                    let (by, _) = explain(s, at[i], tr, &q);
                    assert!(
                        by.is_none(),
                        "{paging:?} #{i}: {} explains a changed {field} ({d})",
                        by.map(|b| b.to_string()).unwrap_or_default()
                    );
                    checked[k] += 1;
                }
            }
        }
    }
    // Every departure was tried on the fields it changes.
    assert!(checked.iter().all(|&n| n >= 10), "{checked:?}");
}

/// Flip bit 7 of the first byte where `b` differs from `other`.
fn flip(b: &mut [u8], other: &[u8]) {
    let k = b.iter().zip(other).position(|(x, y)| x != y).unwrap_or(0);
    b[k] ^= 0x80;
}
