//! Unit-testing kernel descriptor code against hv-sim's Xen PV simulator:
//! run the example kernel's `cpu_init` with the Xen backend on a simulated
//! 64-bit PV domain, then look at what the hypervisor holds.
//! `cargo run -p pvops-examples --example xen_unit_test`

use hv_sim::xen::XenDomain;
use pvops::{DescriptorOps, Gdt, GdtLayout, Idt};
use pvops_examples::{Handler, INITIAL_GDT, cpu_init};
use pvops_xen::XenOps;

// Stands in for the kernel's #PF entry stub: the domain records the gate
// in its trap table and never delivers a fault.
extern "C" fn isr_page_fault() {}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A 64-page PV domain with one vCPU; tables live in its RAM.
    let dom = XenDomain::pv64(64, 1);
    dom.set_strict(true); // a rejected hypercall panics with the rule and the trace
    let gdt_va = dom.alloc_pages(1);
    for (i, d) in INITIAL_GDT.iter().enumerate() {
        dom.host_write_u64(gdt_va + 8 * i as u64, d.0);
    }
    let gdt = Gdt::new(gdt_va, 16)?;
    let idt = Idt::new(dom.alloc_pages(1), 256)?;
    let ops = XenOps::new(dom.vcpu_handle(0), GdtLayout::LINUX_X86_64);

    let stack = 0xffff_c900_0000_8000;
    let handler: Handler = isr_page_fault; // one pointer for the gate and the check
    // SAFETY: the tables are in the domain's RAM, which outlives `ops`.
    unsafe { cpu_init(&ops, &gdt, &idt, 0, &[(14, handler)], stack)? };
    let pf = handler as *const () as usize as u64;

    let v = dom.vcpu(0);
    assert_eq!(v.gdt_ents, 16);
    assert_eq!(v.kernel_sp, stack);
    assert_eq!(v.kernel_ss, 0x1b); // __KERNEL_DS (as Linux passes it), RPL raised to 3 by Xen
    let t = v.trap_table[14];
    assert_eq!((t.address, t.flags & 4), (pf, 4)); // interrupt gate: events masked
    // Xen rewrote the kernel code segment in place: DPL 0 raised to 3 (the
    // 64-bit PV kernel runs in ring 3).
    let cs = pvops::Descriptor(dom.gdt_entry(0, 2));
    assert_eq!(cs.dpl() as u8, 3);
    println!("GDT frames (machine): {:x?}", v.gdt_frames);
    println!("GDT[2] as Xen holds it: {cs}");
    println!("store_gdt (the guest's own view): {:?}", ops.store_gdt()?);
    println!("hypercall trace:\n{}", dom.trace());
    Ok(())
}
