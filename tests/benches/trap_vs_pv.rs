//! What trap-and-emulate costs, measured on this machine, next to the
//! paravirtual way of answering the same question.
//!
//! "Where is my GDT?":
//! * `sgdt` executed in user space: with UMIP on (as on the development
//!   machines) the CPU raises #GP and the host kernel decodes and emulates
//!   the instruction — a real trap-and-emulate round trip;
//! * `store_gdt` on the Xen-style backend: the guest's own shadow, no trap
//!   (this is why Linux's Xen guest never executes `sgdt`);
//! * `store_gdt` on the native backend over hv-sim's CPU model.
//!
//! And one validated write: `write_gdt_entry` through the Xen-style backend
//! into hv-sim (an `update_descriptor` hypercall: translation, checks,
//! trace), next to the native store. Run: `cargo bench -p pvops-tests --bench trap_vs_pv`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use hv_sim::softcpu::{CpuMode, HostMemory, SoftCpu};
use hv_sim::xen::XenDomain;
use pvops::{Descriptor, DescriptorOps, DescriptorStorage, Gdt, GdtEntry, GdtLayout, presets};
use pvops_native::{Cpu, HardwareCpu, NativeOps};
use pvops_xen::XenOps;

static GDT: DescriptorStorage<16> = DescriptorStorage::new([Descriptor::NULL; 16]);

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("where is my GDT");
    g.bench_function(
        "sgdt in user space (UMIP: trapped, emulated by the host kernel)",
        |b| {
            // SAFETY: only `sgdt` runs, a register read whose result is not
            // dereferenced (in user space it names the host kernel's GDT).
            let cpu = unsafe { HardwareCpu::new() };
            b.iter(|| black_box(cpu.sgdt()))
        },
    );

    let dom = XenDomain::pv64(64, 1);
    let va = dom.alloc_pages(1);
    let gdt = Gdt::new(va, 16).unwrap();
    let xen = XenOps::new(dom.vcpu_handle(0), GdtLayout::LINUX_X86_64);
    // SAFETY: the GDT is in the domain's RAM, alive for the whole bench.
    unsafe { xen.load_gdt(&gdt).unwrap() };
    g.bench_function("store_gdt, Xen-style backend (shadow, no trap)", |b| {
        b.iter(|| black_box(xen.store_gdt()))
    });

    // SAFETY: the CPU model is only given the static GDT below.
    let soft = NativeOps::with_cpu(
        SoftCpu::new(unsafe { HostMemory::new() }, CpuMode::Long),
        GdtLayout::LINUX,
    );
    // SAFETY: static table.
    unsafe { soft.load_gdt(&GDT.gdt().unwrap()).unwrap() };
    g.bench_function("store_gdt, native backend on hv-sim's CPU model", |b| {
        b.iter(|| black_box(soft.store_gdt()))
    });
    g.finish();

    let mut w = c.benchmark_group("write one GDT entry");
    // SAFETY: as `cpu` above: only `write_gdt_entry` (a plain store into
    // the static GDT) runs; no table is read through the CPU's registers.
    let native = unsafe { NativeOps::new(GdtLayout::LINUX) };
    let sgdt = GDT.gdt().unwrap();
    w.bench_function("native store", |b| {
        // SAFETY: static table; an entry write is a plain store.
        b.iter(|| unsafe {
            native.write_gdt_entry(&sgdt, black_box(5), GdtEntry::Single(presets::USER_DATA))
        })
    });
    w.bench_function("Xen-style: update_descriptor validated by hv-sim", |b| {
        // SAFETY: the GDT is in the domain's RAM.
        b.iter(|| unsafe {
            xen.write_gdt_entry(&gdt, black_box(5), GdtEntry::Single(presets::USER_DATA))
        })
    });
    w.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
