//! The blog_os-style kernel moved to pvops' native backend. Compare with
//! `with-x86_64.rs`: only the table statics and the load calls differ. The
//! tables are still built with the `x86_64` crate (the library's `GDT`,
//! `TSS` and `IDT`); pvops copies them into its storage, loads that, and
//! from then on every pvops op, the write ops included, works on them.

#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]

use pvops::x86_64_interop::{copy_gdt, copy_idt};
use pvops::{Descriptor, DescriptorOps, DescriptorStorage, Gate64, GdtLayout, IdtStorage};
use pvops_blog_os_kernel::{Checks, Expected, GDT, IDT, check_tables, exit, hello};
use pvops_native::NativeOps;
use x86_64::instructions::segmentation::{CS, DS, ES, SS, Segment};

pvops_pvh::entry!(kmain);

// ---- table statics: the live tables are pvops storage --------------------
static GDT_LIVE: DescriptorStorage<16> = DescriptorStorage::new([Descriptor::NULL; 16]);
static IDT_LIVE: IdtStorage<256> = IdtStorage::new([Gate64::MISSING; 256]);
/// The GDT above: TSS in slots 3-4 (where `append` put it); TLS and LDT
/// slots past it, for pvops' `load_tls`/`load_ldt`.
const LAYOUT: GdtLayout = GdtLayout {
    tss: 3,
    tls_first: 5,
    ldt: 8,
};
// SAFETY: ring 0; the tables this kernel loads are 'static storage.
static OPS: NativeOps = unsafe { NativeOps::new(LAYOUT) };

fn init(c: &mut Checks) -> Expected {
    // ---- load calls ------------------------------------------------------
    // SAFETY: GDT_LIVE and IDT_LIVE are not loaded yet; once loaded they
    // stay loaded ('static).
    let loaded = unsafe {
        copy_gdt(&GDT.0, &GDT_LIVE)
            .and_then(|gdt| OPS.load_gdt(&gdt))
            .and_then(|()| {
                CS::set_reg(GDT.1.code);
                SS::set_reg(GDT.1.data);
                DS::set_reg(GDT.1.data);
                ES::set_reg(GDT.1.data);
                OPS.load_tr(GDT.1.tss.into())
            })
            .and_then(|()| copy_idt(&IDT, &IDT_LIVE))
            .and_then(|idt| OPS.load_idt(&idt))
    };
    if let Err(e) = loaded {
        c.fatal("load", format_args!("{e}"));
    }
    // ---- end of load calls -----------------------------------------------
    write_op(c);
    Expected {
        gdt: (GDT_LIVE.base(), 16 * 8 - 1),
        idt: (IDT_LIVE.base(), 4095),
        tss_low: GDT_LIVE
            .read(GDT.1.tss.index() as usize)
            .unwrap_or_default()
            .0,
    }
}

/// What the move buys: a write op on the live GDT. A data descriptor goes
/// into a free slot through pvops, and the CPU loads it into FS.
fn write_op(c: &mut Checks) {
    use pvops::{GdtEntry, Ring, Selector, presets};
    let slot = 6;
    let r = GDT_LIVE.gdt().and_then(|gdt| {
        // SAFETY: GDT_LIVE is the loaded GDT; slot 6 is unused.
        unsafe { OPS.write_gdt_entry(&gdt, slot, GdtEntry::Single(presets::KERNEL_DATA)) }
    });
    let sel = Selector::gdt(slot as u16, Ring::Ring0);
    let fs = r.map(|()| {
        // SAFETY: the selector names the present data descriptor just
        // written; FS is not otherwise used.
        unsafe { x86_64::instructions::segmentation::FS::set_reg(sel.into()) };
        x86_64::instructions::segmentation::FS::get_reg().0
    });
    match fs {
        Ok(v) => c.check(
            v == sel.bits(),
            "write_gdt_entry",
            format_args!(
                "data descriptor into GDT[{slot}] of the live table, then FS = {v:#x}, expected {:#x}",
                sel.bits()
            ),
        ),
        Err(e) => c.check(false, "write_gdt_entry", format_args!("{e}")),
    }
}

fn kmain(boot: pvops_pvh::BootInfo) -> ! {
    hello("pvops native backend loads", &boot);
    let mut c = Checks::default();
    let want = init(&mut c);
    check_tables(&mut c, boot.boot_flags, &want);
    exit(c.failed)
}
