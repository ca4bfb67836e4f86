//! Issue 9: two vCPUs of a Xen PV domain (hv-sim's pv64 model), each with
//! its own `XenOps` reached through one ops table (`pvops::percpu::PerCpu`
//! and a CPU-index hook; here each "CPU" is a host thread). vCPU 0 starts
//! vCPU 1 as Linux's `xen_cpu_up` does: a read-only GDT page, a root page
//! table, `VCPUOP_initialise` with a `vcpu_guest_context`, `VCPUOP_up`.
//! Then each vCPU loads its GDT, kernel stack and TLS through the table,
//! and the domain shows each vCPU with its own.

#![cfg(target_arch = "x86_64")]

use std::cell::Cell;

use hv_sim::xen::{TraceEvent, XenDomain, XenVcpu};
use pvops::percpu::{CpuIndex, PerCpu};
use pvops::{Descriptor, DescriptorOps, Gdt, GdtLayout, OpsTable, Ring, presets};
use pvops_xen::XenOps;

#[path = "../../hv-sim/tests/common/xen.rs"]
mod xen_helpers;
use xen_helpers::vcpu_ctx::{INITIALISE, UP, VCPU_OP};
use xen_helpers::{Context, hc, map, mfn, put_context};

std::thread_local! {
    static CPU: Cell<usize> = const { Cell::new(usize::MAX) };
}
struct ThreadIsCpu;
// SAFETY: each thread sets its index before its first op and keeps it;
// the two threads use different indices.
unsafe impl CpuIndex for ThreadIsCpu {
    fn current() -> usize {
        CPU.with(Cell::get)
    }
}

type Ops = PerCpu<XenOps<XenVcpu<'static>>, ThreadIsCpu, 2>;
const LAYOUT: GdtLayout = GdtLayout::LINUX_X86_64;
/// A page holding Linux's GDT (16 entries).
fn gdt_page(dom: &XenDomain) -> Gdt {
    let base = dom.alloc_pages(1);
    for (i, d) in presets::LINUX_X86_64_GDT.iter().enumerate() {
        assert!(dom.host_write_u64(base + 8 * i as u64, d.0));
    }
    Gdt::new(base, 16).unwrap()
}

fn tls(base: u64) -> [Descriptor; 3] {
    [
        Descriptor::data_segment(base as u32, 0xfff, Ring::Ring3).unwrap(),
        Descriptor::NULL,
        Descriptor::NULL,
    ]
}

#[test]
fn two_vcpus_each_load_their_own_gdt_kernel_stack_and_tls() {
    let dom: &'static XenDomain = Box::leak(Box::new(XenDomain::pv64(96, 2)));
    let ops: &'static Ops = Box::leak(Box::new(Ops::new()));
    let table: &'static OpsTable = Box::leak(Box::new(OpsTable::new(ops)));
    let stacks = [0xffff_c900_0000_a000u64, 0xffff_c900_0000_b000];
    let tls_bases = [0x0010_0000u64, 0x0020_0000];
    let gdts = [gdt_page(dom), gdt_page(dom)];

    // vCPU 0 (this thread): its backend, its GDT, kernel stack and TLS.
    CPU.with(|c| c.set(0));
    ops.register(0, XenOps::new(dom.vcpu_handle(0), LAYOUT))
        .unwrap();
    // SAFETY: pages of simulated guest RAM that live as long as the domain.
    unsafe {
        table.load_gdt(&gdts[0]).unwrap();
        table.load_kernel_stack(stacks[0]).unwrap();
        table.load_tls(&tls(tls_bases[0])).unwrap();
    }

    // Start vCPU 1 the way Linux's cpu_initialize_context does: its GDT
    // page read-only, a root page table, the context, then VCPUOP_up.
    assert_eq!(map(dom, gdts[1].base(), false), 0);
    let root = dom.alloc_pages(1);
    assert_eq!(map(dom, root, false), 0);
    let ctx = dom.alloc_pages(2);
    put_context(
        dom,
        ctx,
        &Context {
            rip: 0xffff_ffff_8100_2000,
            rsp: stacks[1],
            cs: 0xe033,
            rflags: 0x202,
            gdt: mfn(dom, gdts[1].base()),
            root: mfn(dom, root),
        },
    );
    assert_eq!(hc(dom, VCPU_OP, &[INITIALISE, 1, ctx]), 0);
    assert!(!dom.vcpu(1).up);
    assert_eq!(hc(dom, VCPU_OP, &[UP, 1]), 0);
    assert_eq!(dom.vcpu(1).gdt_frames, vec![mfn(dom, gdts[1].base())]);

    // vCPU 1 (another thread): its own backend through the same table.
    std::thread::scope(|s| {
        s.spawn(|| {
            CPU.with(|c| c.set(1));
            assert!(dom.vcpu(1).up, "started by VCPUOP_up");
            ops.register_current(XenOps::new(dom.vcpu_handle(1), LAYOUT))
                .unwrap();
            // SAFETY: as above.
            unsafe {
                table.load_gdt(&gdts[1]).unwrap();
                table.load_kernel_stack(stacks[1]).unwrap();
                table.load_tls(&tls(tls_bases[1])).unwrap();
            }
            assert_eq!(table.store_gdt().unwrap(), gdts[1].pointer());
        })
        .join()
        .unwrap();
    });
    assert_eq!(table.store_gdt().unwrap(), gdts[0].pointer());

    for v in 0..2 {
        let st = dom.vcpu(v);
        assert_eq!(st.kernel_sp, stacks[v], "vCPU {v}: its own kernel stack");
        assert_eq!(
            st.gdt_frames,
            vec![mfn(dom, gdts[v].base())],
            "vCPU {v}: its own GDT"
        );
        let t = Descriptor(dom.gdt_entry(v, LAYOUT.tls_first as u32));
        assert_eq!(t.base() as u64, tls_bases[v], "vCPU {v}: its own TLS");
    }
    // Every stack_switch ran on the vCPU whose backend issued it.
    let switches: Vec<usize> = dom
        .trace()
        .calls()
        .filter_map(|e| match e {
            TraceEvent::Call { name, vcpu, .. } if *name == "stack_switch" => Some(*vcpu),
            _ => None,
        })
        .collect();
    assert_eq!(switches, [0, 1]);
    dom.check_invariants().unwrap();
}
