//! The IDT: gates for #BP, #UD and #GP (and #PF under Xen), load_idt,
//! store_idt, then real exceptions landing in the handlers.
//!
//! Native loads the kernel's IDT. Xen turns it into a trap table (its
//! handlers take Xen's bounce frame, [`crate::xen`]). VMI writes two gates
//! before SetIDT and the #GP gate into the loaded IDT; `sidt` shows the
//! hypervisor's effective IDT.

use core::arch::asm;
use core::sync::atomic::Ordering;

use pvops::{DescriptorOps, Gate64, Ring, Selector};

use super::{Backend, Personality, Tables, xen_sel};
use crate::KERNEL_CS;
use crate::cpu::{
    BP_COUNT, GP_COUNT, GP_ERROR, UD_COUNT, bp_handler, faulting_segment_load, gp_handler,
    raw_sidt, ud_handler,
};
use crate::report::Tally;

/// An interrupt gate to `h` on the kernel's code segment.
fn gate(h: extern "C" fn(), dpl: Ring) -> Gate64 {
    Gate64::interrupt(Selector(KERNEL_CS), h as usize as u64, dpl)
}

/// Write the handlers' gates and load the IDT.
pub fn load<O: DescriptorOps>(ops: &O, t: &mut Tally, p: &Personality, tb: &Tables) {
    let idt = &tb.idt;
    // Xen bounces exceptions with its own frame: its handlers (and a #PF
    // one for the read-only GDT check).
    let (bp, ud, gp, pf): (extern "C" fn(), extern "C" fn(), extern "C" fn(), _) = match p.backend {
        Backend::Xen => {
            use crate::xen;
            (
                xen::bp_handler,
                xen::ud_handler,
                xen::gp_handler,
                Some(xen::pf_handler as extern "C" fn()),
            )
        }
        Backend::Native | Backend::Vmi => (bp_handler, ud_handler, gp_handler, None),
    };
    // VMI writes the #GP gate into the loaded IDT (WriteIDTEntry after SetIDT).
    let late_gp = p.backend == Backend::Vmi;
    let write = |v: u8, h: extern "C" fn(), dpl: Ring| {
        // SAFETY: static IDT; the handlers are the naked stubs of
        // crate::cpu (crate::xen under Xen).
        unsafe { ops.write_idt_entry(idt, v, gate(h, dpl)) }
    };
    let r = write(3, bp, Ring::Ring3)
        .and_then(|()| write(6, ud, Ring::Ring0))
        .and_then(|()| {
            if late_gp {
                Ok(())
            } else {
                write(13, gp, Ring::Ring0)
            }
        })
        .and_then(|()| pf.map_or(Ok(()), |pf| write(14, pf, Ring::Ring0)))
        // SAFETY: static IDT, loaded for the kernel's life.
        .and_then(|()| unsafe { ops.load_idt(idt) })
        .and_then(|()| {
            if late_gp {
                write(13, gp, Ring::Ring0)
            } else {
                Ok(())
            }
        });
    let guest_view = || ops.store_idt() == Ok(idt.pointer());
    match p.backend {
        Backend::Native => t.check(
            "load_idt/store_idt",
            r.is_ok() && guest_view(),
            format_args!("{r:?}"),
        ),
        Backend::Xen => t.check(
            "load_idt (set_trap_table); store_idt = guest view",
            r.is_ok() && guest_view(),
            format_args!("{r:?}"),
        ),
        Backend::Vmi => {
            let (limit, base) = raw_sidt();
            t.check(
                "load_idt (SetIDT) + WriteIDTEntry into the loaded IDT; store_idt = guest view; sidt = the effective IDT",
                r.is_ok() && guest_view() && base != idt.base() && limit == 0xfff,
                format_args!("{r:?}; sidt base {base:#x} limit {limit:#x}"),
            );
        }
    }
}

/// Real exceptions through the IDT just loaded (by whatever means the
/// backend loads it): `int3` (where the host can run it), `ud2`, and a
/// segment load with a selector past the GDT, each landing in its handler
/// exactly once. The check names say which kind of IDT was used.
pub fn exceptions(t: &mut Tally, p: &Personality) {
    let (ud_name, gp_name) = match p.backend {
        Backend::Native => (
            "ud2 lands in the #UD handler",
            "bad selector -> #GP(selector) in handler",
        ),
        Backend::Xen => (
            "ud2 lands in the #UD handler (trap table)",
            "bad selector -> #GP(selector) in handler (trap table)",
        ),
        Backend::Vmi => (
            "ud2 lands in the #UD handler (SetIDT gate)",
            "bad selector -> #GP(selector) in the handler (WriteIDTEntry gate)",
        ),
    };
    if p.soft_int {
        // SAFETY: int3 traps into the #BP handler, which returns.
        unsafe { asm!("int3", options(nomem, nostack)) };
        t.check(
            "int3 lands in the #BP handler",
            BP_COUNT.load(Ordering::SeqCst) == 1,
            format_args!("count={}", BP_COUNT.load(Ordering::SeqCst)),
        );
    } else {
        t.skip(
            "int3 lands in the #BP handler",
            "software interrupts are not emulated by this host (PVM)",
        );
    }
    // SAFETY: ud2 faults into the #UD handler, which skips it.
    unsafe { asm!("ud2", options(nomem, nostack)) };
    t.check(
        ud_name,
        UD_COUNT.load(Ordering::SeqCst) == 1,
        format_args!("count={}", UD_COUNT.load(Ordering::SeqCst)),
    );
    faulting_segment_load(0x7f8);
    let err = GP_ERROR.load(Ordering::SeqCst);
    t.check(
        gp_name,
        GP_COUNT.load(Ordering::SeqCst) == 1 && err == 0x7f8,
        format_args!("count={} error={err:#x}", GP_COUNT.load(Ordering::SeqCst)),
    );
}

/// The frame Xen bounced the #UD with, as the handler recorded it.
pub fn xen_bounce_frame(t: &mut Tally) {
    let f = |i: usize| crate::xen::UD_FRAME[i].load(Ordering::SeqCst);
    let (cs_word, rflags, ss, at) = (f(0), f(1), f(2), f(3));
    let mask = (cs_word >> 32) & 0xff;
    t.check(
        "#UD bounce frame: [rcx, r11, rip, cs, rflags, rsp, ss], cs RPL cleared with the event mask in bits 32-39, IF = !mask, IOPL 0",
        cs_word & 0xffff == u64::from(xen_sel::FLAT_KERNEL_CS & !3)
            && ss == u64::from(xen_sel::FLAT_KERNEL_SS)
            && (rflags >> 9) & 1 == u64::from(mask == 0)
            && (rflags >> 12) & 3 == 0
            && (at + 7 * 8).is_multiple_of(16),
        format_args!("cs word {cs_word:#x} rflags {rflags:#x} ss {ss:#x} frame at {at:#x}"),
    );
}
