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
const VCPU_OP: u64 = 24;
/// The 64-bit `vcpu_guest_context` offsets (public/arch-x86/xen.h,
/// xen-x86_64.h): flags, user_regs.rip/cs/rflags/rsp/ss, gdt_frames,
/// gdt_ents, kernel_ss/sp, ctrlreg[3].
const FLAGS: u64 = 512;
const RIP: u64 = 520 + 16 * 8;
const CS: u64 = 520 + 17 * 8;
const RFLAGS: u64 = 520 + 18 * 8;
const RSP: u64 = 520 + 19 * 8;
const SS: u64 = 520 + 20 * 8;
const GDT_FRAMES: u64 = 4832;
const GDT_ENTS: u64 = 4960;
const KERNEL_SS: u64 = 4968;
const CR3: u64 = 4984 + 3 * 8;

fn mfn(dom: &XenDomain, va: u64) -> u64 {
    dom.virt_to_mfn(va).expect("mapped")
}

/// A page holding Linux's GDT (16 entries).
fn gdt_page(dom: &XenDomain) -> Gdt {
    let base = dom.alloc_pages(1);
    for (i, d) in presets::LINUX_X86_64_GDT.iter().enumerate() {
        assert!(dom.host_write_u64(base + 8 * i as u64, d.0));
    }
    Gdt::new(base, 16).unwrap()
}

/// update_va_mapping(va, its own frame, read-only).
fn read_only(dom: &XenDomain, va: u64) {
    let pte = mfn(dom, va) << 12 | 1;
    assert_eq!(dom.hypercall(0, 14, [va, pte, 2, 0, 0, 0]), 0);
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
    read_only(dom, gdts[1].base());
    let root = dom.alloc_pages(1);
    read_only(dom, root);
    let ctx = dom.alloc_pages(2);
    let put = |off: u64, v: u64| assert!(dom.host_write_u64(ctx + off, v));
    put(FLAGS, 1 << 2); // VGCF_in_kernel
    put(RIP, 0xffff_ffff_8100_2000);
    put(RSP, stacks[1]);
    put(CS, 0xe033);
    put(SS, 0xe02b);
    put(RFLAGS, 0x202);
    put(GDT_FRAMES, mfn(dom, gdts[1].base()));
    put(GDT_ENTS, 16);
    put(KERNEL_SS, 0xe02b);
    put(CR3, mfn(dom, root) << 12);
    assert_eq!(dom.hypercall(0, VCPU_OP, [0, 1, ctx, 0, 0, 0]), 0);
    assert!(!dom.vcpu(1).up);
    assert_eq!(dom.hypercall(0, VCPU_OP, [1, 1, 0, 0, 0, 0]), 0);
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
