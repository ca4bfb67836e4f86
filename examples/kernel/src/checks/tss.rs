//! The TSS and TR: write the TSS descriptor, load_tr, load_kernel_stack.
//!
//! Native: `ltr` marks the descriptor busy and refuses it a second time;
//! the kernel stack lands in the TSS's rsp0. Xen owns the TSS: load_tr is a
//! no-op and the stack goes to stack_switch. VMI: SetTR marks only the
//! effective copy busy, the stack goes to the hypervisor's copy, and a
//! load_tr of a data segment is refused before any call.

use pvops::{DescriptorOps, GdtEntry, PvError, Selector, SystemDescriptor};

use super::{Backend, Personality, SP0, Tables, xen_sel};
use crate::cpu::raw_str;
use crate::report::Tally;
use crate::{GDT, KERNEL_DS, LAYOUT, TSS, TSS_SEL};

/// The TSS descriptor, load_tr, and load_kernel_stack.
pub fn load<O: DescriptorOps>(ops: &O, t: &mut Tally, p: &Personality, tb: &Tables) {
    let tss = SystemDescriptor::tss(TSS.base(), pvops::Tss64::LIMIT).unwrap_or_default();
    // SAFETY: static GDT and TSS.
    let r = unsafe { ops.write_gdt_entry(&tb.gdt, LAYOUT.tss as u32, GdtEntry::Double(tss)) };
    // SAFETY: as above.
    let r2 = unsafe { ops.load_tr(TSS_SEL) };
    let typ = GDT.read(LAYOUT.tss as usize).map(|d| d.typ());
    let ours =
        || r.is_ok() && r2.is_ok() && raw_str() == TSS_SEL.bits() && ops.store_tr() == Ok(TSS_SEL);
    match p.backend {
        Backend::Native => {
            t.check(
                "load_tr (str, busy bit)",
                ours() && typ == Some(0xb),
                format_args!("{r2:?} str={:#x} type={typ:x?}", raw_str()),
            );
            // SAFETY: as above.
            let again = unsafe { ops.load_tr(TSS_SEL) };
            t.check(
                "load_tr refuses the busy TSS",
                again.is_err(),
                format_args!("{again:?}"),
            );
        }
        Backend::Xen => t.check(
            "load_tr is a no-op: store_tr = 0 (as Linux's xen_store_tr), str = Xen's TSS",
            r.is_ok()
                && r2.is_ok()
                && ops.store_tr() == Ok(Selector::NULL)
                && raw_str() == xen_sel::TSS,
            format_args!("{r:?} {r2:?} str={:#x}", raw_str()),
        ),
        Backend::Vmi => t.check(
            "load_tr (SetTR) -> str = store_tr, the guest's TSS descriptor stays available",
            ours() && typ == Some(0x9),
            format_args!("{r:?} {r2:?} str={:#x} type={typ:x?}", raw_str()),
        ),
    }
    kernel_stack(ops, t, p);
    if p.backend == Backend::Vmi {
        refused_load_tr(ops, t);
    }
}

/// load_kernel_stack: native writes TSS.rsp0; Xen's stack_switch and VMI's
/// UpdateKernelStack leave the guest's TSS alone.
fn kernel_stack<O: DescriptorOps>(ops: &O, t: &mut Tally, p: &Personality) {
    // SAFETY: TR names our static TSS (or the hypervisor's); the value is
    // only recorded.
    let r = unsafe { ops.load_kernel_stack(SP0) };
    let rsp0 = (TSS.read(0).unwrap_or(0) >> 32) | (TSS.read(1).unwrap_or(0) << 32);
    match p.backend {
        Backend::Native => t.check(
            "load_kernel_stack -> TSS.rsp0",
            r.is_ok() && rsp0 == SP0,
            format_args!("{rsp0:#x}"),
        ),
        Backend::Xen => t.check(
            "load_kernel_stack (stack_switch)",
            r.is_ok(),
            format_args!("{r:?}"),
        ),
        Backend::Vmi => t.check(
            "load_kernel_stack (UpdateKernelStack) accepted, guest TSS untouched (sp0 goes to hv-sim's copy, checked host-side)",
            r.is_ok() && rsp0 == 0,
            format_args!("{r:?}; guest TSS.rsp0 {rsp0:#x}"),
        ),
    }
}

/// load_tr of a data segment: refused by the validation layer before the
/// hypervisor call; TR unchanged.
fn refused_load_tr<O: DescriptorOps>(ops: &O, t: &mut Tally) {
    // SAFETY: the selector names a data segment: the call is refused
    // before anything changes.
    let bad = unsafe { ops.load_tr(Selector(KERNEL_DS)) };
    t.check(
        "load_tr of a data segment refused before SetTR (validation layer); TR unchanged, the kernel carries on",
        matches!(bad, Err(PvError::WrongDescriptorType { op: "load_tr", .. }))
            && raw_str() == TSS_SEL.bits()
            && ops.store_tr() == Ok(TSS_SEL),
        format_args!("{bad:?}; str={:#x}", raw_str()),
    );
}
