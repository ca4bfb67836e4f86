//! In-process cost of hv-sim's Xen PV hypercalls, against the lean path
//! they are built on (issue 13): `check_descriptor` plus one store, measured
//! in the same run so the ratios hold on whatever CPU runs them.
//!
//! * `update_descriptor` with 1 and with 14 live GDT frames (the cost must
//!   not grow with the number of descriptor frames the domain holds);
//! * `set_trap_table(256)` against 256 lean gate checks;
//! * `set_gdt(14 frames)`, first validation (each call types 14 fresh
//!   frames) and re-load (the frames stay typed through a second vCPU);
//! * `multicall(n)` of `update_descriptor` for n = 1..1024, which must be
//!   linear in n.
//!
//! Run: `cargo bench -p hv-sim --bench xen_hypercalls`. `hv-sim bench`
//! prints the same figures as one table.

#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use hv_sim::xen::{Abi, TrapInfo, XenDomain, check_descriptor, nr};

/// A 64-bit user code segment, DPL 3 (valid for pv64 as it is).
const UCODE64: u64 = 0x00af_fb00_0000_ffff;

fn hc(d: &XenDomain, v: usize, n: u64, a: &[u64]) -> i64 {
    let mut args = [0u64; 6];
    args[..a.len()].copy_from_slice(a);
    d.hypercall(v, n, args)
}

/// `frames` fresh pages mapped read-only; their mfns.
fn ro_frames(d: &XenDomain, frames: usize) -> Vec<u64> {
    (0..frames)
        .map(|_| {
            let va = d.alloc_pages(1);
            let m = d.virt_to_mfn(va).unwrap();
            assert_eq!(hc(d, 0, nr::UPDATE_VA_MAPPING, &[va, m << 12 | 1, 0]), 0);
            m
        })
        .collect()
}

fn frame_list(d: &XenDomain, mfns: &[u64]) -> u64 {
    let list = d.alloc_pages(1);
    for (i, m) in mfns.iter().enumerate() {
        assert!(d.host_write_u64(list + 8 * i as u64, *m));
    }
    list
}

/// A pv64 domain whose vCPU 0 has a live GDT of `frames` frames.
fn domain_with_gdt(frames: usize) -> (XenDomain, Vec<u64>) {
    let d = XenDomain::pv64(128, 2);
    let mfns = ro_frames(&d, frames);
    let list = frame_list(&d, &mfns);
    assert_eq!(hc(&d, 0, nr::SET_GDT, &[list, frames as u64 * 512]), 0);
    d.clear_trace();
    (d, mfns)
}

fn update_descriptor(c: &mut Criterion) {
    let mut g = c.benchmark_group("update_descriptor");
    // The floor: the descriptor rule and one store.
    let mut slot = [0u64; 512];
    g.bench_function("lean check_descriptor + store", |b| {
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 1) & 511;
            let v = check_descriptor(Abi::Pv64, black_box(UCODE64)).unwrap();
            // SAFETY: `i < 512`, inside `slot`.
            unsafe { core::ptr::write_volatile(slot.as_mut_ptr().add(i), v) };
        })
    });
    for frames in [1usize, 14] {
        let (d, mfns) = domain_with_gdt(frames);
        let maddr = mfns[0] << 12;
        assert_eq!(hc(&d, 0, nr::UPDATE_DESCRIPTOR, &[maddr + 8, UCODE64]), 0);
        g.bench_function(
            BenchmarkId::new("hypercall, live GDT frames", frames),
            |b| {
                let mut i = 0u64;
                b.iter(|| {
                    i = (i + 1) & 511;
                    black_box(hc(&d, 0, nr::UPDATE_DESCRIPTOR, &[maddr + i * 8, UCODE64]))
                })
            },
        );
    }
    g.finish();
}

fn set_trap_table(c: &mut Criterion) {
    let mut g = c.benchmark_group("set_trap_table");
    g.throughput(Throughput::Elements(256));
    let d = XenDomain::pv64(64, 1);
    let t = d.alloc_pages(2);
    for v in 0..256u64 {
        let e = t + v * 16;
        // vector, flags (DPL 0), cs (flat kernel CS), address.
        assert!(d.host_write_u64(e, v | 0xe033 << 16));
        assert!(d.host_write_u64(e + 8, 0xffff_8000_0000_1000 + v * 16));
    }
    // 257th entry: the terminator (address 0).
    assert!(d.host_write_u64(t + 256 * 16, 0));
    assert!(d.host_write_u64(t + 256 * 16 + 8, 0));
    // The floor: read each 16-byte entry from memory, Xen's checks
    // (canonical address, RPL raised to the kernel's) and the store.
    let raw: Vec<[u8; 16]> = (0..256u64)
        .map(|v| {
            let mut e = [0u8; 16];
            e[..8].copy_from_slice(&(v | 0xe033 << 16).to_le_bytes());
            e[8..].copy_from_slice(&(0xffff_8000_0000_1000 + v * 16).to_le_bytes());
            e
        })
        .collect();
    let mut table = vec![TrapInfo::default(); 256];
    g.bench_function("lean 256 entries: read, check, store", |b| {
        b.iter(|| {
            for e in black_box(&raw) {
                let address = u64::from_le_bytes(e[8..].try_into().unwrap());
                let mut cs = u16::from_le_bytes([e[2], e[3]]);
                if address == 0 || !hv_sim::xen::domain::is_canonical(address) {
                    break;
                }
                if cs & 3 < 3 {
                    cs |= 3;
                }
                table[usize::from(e[0])] = TrapInfo {
                    vector: e[0],
                    flags: e[1],
                    cs,
                    address,
                };
            }
            black_box(&table);
        })
    });
    assert_eq!(hc(&d, 0, nr::SET_TRAP_TABLE, &[t]), 0);
    g.bench_function("hypercall, 256 entries", |b| {
        b.iter(|| black_box(hc(&d, 0, nr::SET_TRAP_TABLE, &[t])))
    });
    g.finish();
}

fn set_gdt(c: &mut Criterion) {
    let mut g = c.benchmark_group("set_gdt 14 frames");
    g.throughput(Throughput::Elements(14 * 512));
    let d = XenDomain::pv64(128, 2);
    let a = ro_frames(&d, 14);
    let b2 = ro_frames(&d, 14);
    let la = frame_list(&d, &a);
    let lb = frame_list(&d, &b2);
    g.bench_function("lean 7168 descriptor checks", |b| {
        b.iter(|| {
            let mut ok = 0u32;
            for _ in 0..14 * 512 {
                ok += u32::from(check_descriptor(Abi::Pv64, black_box(0)).is_ok());
            }
            black_box(ok)
        })
    });
    // Set A loses its seg_desc type before each timed call (released,
    // then mapped writable and read-only again), so the call validates
    // all 7168 slots afresh.
    let retype = |mfns: &[u64]| {
        assert_eq!(hc(&d, 0, nr::SET_GDT, &[lb, 0]), 0);
        for m in mfns {
            let va = d.va_base() + (d.mfn_to_pfn(*m).unwrap() << 12);
            assert_eq!(hc(&d, 0, nr::UPDATE_VA_MAPPING, &[va, m << 12 | 3, 0]), 0);
            assert_eq!(hc(&d, 0, nr::UPDATE_VA_MAPPING, &[va, m << 12 | 1, 0]), 0);
        }
    };
    retype(&a);
    assert_eq!(hc(&d, 0, nr::SET_GDT, &[la, 14 * 512]), 0);
    g.bench_function("first validation", |b| {
        b.iter_batched(
            || retype(&a),
            |()| black_box(hc(&d, 0, nr::SET_GDT, &[la, 14 * 512])),
            BatchSize::PerIteration,
        )
    });
    // vCPU 1 holds set A, so vCPU 0's loads of A find it typed.
    assert_eq!(hc(&d, 1, nr::SET_GDT, &[la, 14 * 512]), 0);
    assert_eq!(hc(&d, 0, nr::SET_GDT, &[la, 14 * 512]), 0);
    g.bench_function("re-load", |b| {
        b.iter(|| black_box(hc(&d, 0, nr::SET_GDT, &[la, 14 * 512])))
    });
    g.finish();
}

fn multicall(c: &mut Criterion) {
    let mut g = c.benchmark_group("multicall of update_descriptor");
    let (d, mfns) = domain_with_gdt(1);
    let list = d.alloc_pages(16);
    for i in 0..1024u64 {
        let e = list + i * 64;
        assert!(d.host_write_u64(e, nr::UPDATE_DESCRIPTOR));
        assert!(d.host_write_u64(e + 16, (mfns[0] << 12) | ((i % 512) * 8)));
        assert!(d.host_write_u64(e + 24, UCODE64));
    }
    assert_eq!(hc(&d, 0, nr::MULTICALL, &[list, 1024]), 0);
    for n in [1u64, 16, 256, 1024] {
        g.throughput(Throughput::Elements(n));
        g.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| black_box(hc(&d, 0, nr::MULTICALL, &[list, n])))
        });
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(300))
        .measurement_time(std::time::Duration::from_secs(1))
        .sample_size(20)
}

criterion_group! {
    name = benches;
    config = config();
    targets = update_descriptor, set_trap_table, set_gdt, multicall
}
criterion_main!(benches);
