//! Cost of the dispatch modes, side by side: a plain store (what a kernel
//! without pvops does), the native backend called directly, through static
//! (generic) dispatch, through an `OpsTable` (function pointers), and
//! through the installed global table.
//!
//! The op is `write_gdt_entry` on the native backend: a bounds-checked store
//! into a GDT in this process's memory, so it runs in user space and the
//! numbers isolate dispatch overhead. Run: `cargo bench -p pvops-tests`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use pvops::{Descriptor, DescriptorOps, DescriptorStorage, Gdt, GdtEntry, GdtLayout, OpsTable};
use pvops_native::NativeOps;

static GDT: DescriptorStorage<32> = DescriptorStorage::new([Descriptor::NULL; 32]);
// SAFETY: the benchmarks only write entries of the static GDT below (plain
// stores); nothing loads or reads a table through the CPU's registers.
static NATIVE: NativeOps = unsafe { NativeOps::new(GdtLayout::LINUX) };

/// The backend's method called on the concrete type (no trait generics).
#[inline(never)]
fn direct_write(ops: &NativeOps, gdt: &Gdt, i: u32, d: Descriptor) -> pvops::Result<()> {
    // SAFETY: as generic_write.
    unsafe { NativeOps::write_gdt_entry(ops, gdt, i, GdtEntry::Single(d)) }
}

/// Kernel code generic over its backend. Each benchmark calls through one
/// non-inlined function, so all variants pay the same call boundary and
/// differ only in dispatch.
#[inline(never)]
fn generic_write<O: DescriptorOps>(ops: &O, gdt: &Gdt, i: u32, d: Descriptor) -> pvops::Result<()> {
    // SAFETY: GDT is a static table in this process; write_gdt_entry on the
    // native backend is a store and needs no privilege.
    unsafe { ops.write_gdt_entry(gdt, i, GdtEntry::Single(d)) }
}

fn bench(c: &mut Criterion) {
    let gdt = GDT.gdt().unwrap();
    let table: &'static OpsTable = Box::leak(Box::new(OpsTable::new(&NATIVE)));
    pvops::install(OpsTable::new(&NATIVE)).unwrap();
    let d = pvops::presets::USER_DATA;
    let mut g = c.benchmark_group("write_gdt_entry");
    g.bench_function("plain volatile store (no pvops)", |b| {
        b.iter(|| {
            let i = black_box(5usize);
            // SAFETY: index 5 < 32, static storage.
            unsafe { GDT.as_mut_ptr().add(i).write_volatile(black_box(d)) }
        })
    });
    g.bench_function("native backend, direct", |b| {
        b.iter(|| direct_write(&NATIVE, black_box(&gdt), black_box(5), black_box(d)))
    });
    g.bench_function("native backend, static dispatch", |b| {
        b.iter(|| generic_write(&NATIVE, black_box(&gdt), black_box(5), black_box(d)))
    });
    g.bench_function("native backend, OpsTable (fn pointers)", |b| {
        b.iter(|| {
            generic_write(
                black_box(table),
                black_box(&gdt),
                black_box(5),
                black_box(d),
            )
        })
    });
    g.bench_function("native backend, installed global table", |b| {
        b.iter(|| {
            generic_write(
                &pvops::Installed,
                black_box(&gdt),
                black_box(5),
                black_box(d),
            )
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
