//! The hypervisor's side of one descriptor-table op, two ways, side by side:
//!
//! * trap-and-emulate: hv-sim's emulator ([`hv_sim::emulate`]) handling
//!   the trapped instruction — decode with iced-x86, fetch the memory
//!   operand, the architectural checks, commit — over mock guest memory
//!   (no VM exit counted: that is the same for both ways on a real vCPU,
//!   one per trap or hypercall);
//! * paravirtual: the same op through `pvops-xen` into hv-sim's Xen PV
//!   domain (the backend's work plus the hypercall handler's validation
//!   and trace).
//!
//! Run: `cargo bench -p hv-sim --bench trap_emulate`.

#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use hv_sim::emulate::mock::{MockCpu, MockMemory};
use hv_sim::emulate::{Outcome, emulate};
use hv_sim::xen::XenDomain;
use pvops::{
    DescriptorOps, DescriptorTablePointer, Gdt, GdtLayout, Ldt, Selector, SystemDescriptor, presets,
};
use pvops_xen::XenOps;

const CODE: u64 = 0x40_0000;
const GDT: u64 = 0x1_0000;
const DATA: u64 = 0x2_0000;
const TSS_SEL: u16 = 0x40;
const LDT_SEL: u16 = 0x50;

/// A vCPU and memory with a 16-entry GDT (TSS at 0x40, LDT at 0x50) and
/// `code` at RIP.
fn machine(code: &[u8]) -> (MockCpu, MockMemory) {
    let mem = MockMemory::quiet();
    mem.map(GDT, true).map(DATA, true).map(CODE, false);
    mem.poke(CODE, code);
    let tss = SystemDescriptor::tss(0x3_0000, pvops::Tss64::LIMIT).unwrap();
    mem.poke_u64(GDT + u64::from(TSS_SEL), tss.low);
    mem.poke_u64(GDT + u64::from(TSS_SEL) + 8, tss.high);
    let ldt = SystemDescriptor::ldt(0x3_1000, 4).unwrap();
    mem.poke_u64(GDT + u64::from(LDT_SEL), ldt.low);
    mem.poke_u64(GDT + u64::from(LDT_SEL) + 8, ldt.high);
    // The lgdt operand for `lgdt [rip + 0x1000]` (7 bytes).
    mem.map(CODE + 7 + 0x1000, true);
    mem.poke(CODE + 7 + 0x1000, &[0x7f, 0, 0, 0, 1, 0, 0, 0, 0, 0]);
    let mut cpu = MockCpu {
        rip: CODE,
        ..MockCpu::default()
    };
    cpu.dt.gdtr = DescriptorTablePointer {
        limit: 16 * 8 - 1,
        base: GDT,
    };
    (cpu, mem)
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("one descriptor-table op, hypervisor side");

    // Trap-and-emulate.
    let (mut cpu, mem) = machine(&[0x0f, 0x01, 0x15, 0x00, 0x10, 0x00, 0x00]);
    assert!(matches!(emulate(&mut cpu, &mem), Outcome::Emulated { .. }));
    g.bench_function(
        "LGDT [rip+disp32] trapped: decode + 10-byte operand fetch + checks",
        |b| b.iter(|| black_box(emulate(&mut cpu, &mem))),
    );
    let (mut cpu, mem) = machine(&[0x0f, 0x00, 0xd8]); // ltr ax
    cpu.gprs[0] = u64::from(TSS_SEL);
    let type_byte = GDT + u64::from(TSS_SEL) + 5;
    g.bench_function(
        "LTR ax trapped: decode + descriptor fetch + checks + busy bit",
        |b| {
            b.iter(|| {
                // The previous iteration left the TSS busy: make it
                // available again (a byte store, as a kernel would).
                mem.poke(type_byte, &[0x89]);
                black_box(emulate(&mut cpu, &mem))
            })
        },
    );
    let (mut cpu, mem) = machine(&[0x0f, 0x00, 0xd0]); // lldt ax
    cpu.gprs[0] = u64::from(LDT_SEL);
    g.bench_function("LLDT ax trapped: decode + descriptor fetch + checks", |b| {
        b.iter(|| black_box(emulate(&mut cpu, &mem)))
    });
    let (mut cpu, mem) = machine(&[0x0f, 0x01, 0x00]); // sgdt [rax]
    cpu.gprs[0] = DATA;
    g.bench_function("SGDT [rax] trapped (UMIP): decode + 10-byte store", |b| {
        b.iter(|| black_box(emulate(&mut cpu, &mem)))
    });

    // The same ops through pvops-xen into hv-sim's Xen domain.
    let dom = XenDomain::pv64(64, 1);
    let gdt_va = dom.alloc_pages(1);
    for (i, d) in presets::LINUX_X86_64_GDT.iter().enumerate() {
        dom.host_write_u64(gdt_va + 8 * i as u64, d.0);
    }
    let gdt = Gdt::new(gdt_va, 16).unwrap();
    let ldt = Ldt::new(dom.alloc_pages(1), 4).unwrap();
    let xen = XenOps::new(dom.vcpu_handle(0), GdtLayout::LINUX_X86_64);
    // SAFETY: the tables are in the domain's RAM, alive for the whole bench.
    unsafe {
        xen.load_gdt(&gdt).unwrap();
        xen.alloc_ldt(&ldt).unwrap();
    }
    g.bench_function(
        "load_gdt via pvops-xen: update_va_mapping + set_gdt, validated by hv-sim",
        |b| {
            // SAFETY: as above.
            b.iter(|| unsafe { black_box(xen.load_gdt(&gdt)) })
        },
    );
    g.bench_function(
        "load_tr via pvops-xen: no hypercall (Xen owns the TSS)",
        |b| {
            // SAFETY: as above.
            b.iter(|| unsafe { black_box(xen.load_tr(Selector(TSS_SEL))) })
        },
    );
    g.bench_function("load_ldt via pvops-xen: mmuext_op(SET_LDT)", |b| {
        // SAFETY: as above.
        b.iter(|| unsafe { black_box(xen.load_ldt(Some(&ldt))) })
    });
    g.bench_function("store_gdt via pvops-xen: the guest's shadow", |b| {
        b.iter(|| black_box(xen.store_gdt()))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
