//! The blog_os-style kernel as blog_os writes it: the `x86_64` crate loads
//! its tables. Compare with `with-pvops.rs`: only the table statics and the
//! load calls differ.

#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]

use pvops_blog_os_kernel::{Checks, Expected, GDT, IDT, check_tables, exit, hello};
use x86_64::instructions::segmentation::{CS, DS, ES, SS, Segment};
use x86_64::instructions::tables::load_tss;

pvops_pvh::entry!(kmain);

// ---- table statics: GDT, TSS and IDT are the library's Lazy statics ------

fn init(_c: &mut Checks) -> Expected {
    // ---- load calls ------------------------------------------------------
    GDT.0.load();
    // SAFETY: the selectors name the GDT's kernel code, data and TSS
    // descriptors, and the GDT is 'static.
    unsafe {
        CS::set_reg(GDT.1.code);
        SS::set_reg(GDT.1.data);
        DS::set_reg(GDT.1.data);
        ES::set_reg(GDT.1.data);
        load_tss(GDT.1.tss);
    }
    IDT.load();
    // ---- end of load calls -----------------------------------------------
    let entries = GDT.0.entries();
    Expected {
        gdt: (entries.as_ptr() as u64, GDT.0.limit()),
        idt: (&*IDT as *const _ as u64, 4095),
        tss_low: entries[GDT.1.tss.index() as usize].raw(),
    }
}

fn kmain(boot: pvops_pvh::BootInfo) -> ! {
    hello("x86_64 crate loads", &boot);
    let mut c = Checks::default();
    let want = init(&mut c);
    check_tables(&mut c, boot.boot_flags, &want);
    exit(c.failed)
}
