//! The GDT: load it, run on it (segment reloads), read it back.
//!
//! Native loads the kernel's GDT and reloads every segment register from
//! it (deprivileged: only DS/ES, through the hypervisor's ring-3 copy). Xen
//! validates the frame and raises DPL 0 to 3 in the guest's own copy; VMI
//! leaves the guest's GDT as written and raises DPLs in its effective copy.
//! Under both, `sgdt` shows the hypervisor's table, not the guest's.

use pvops::{DescriptorOps, PvError, presets};

use super::{Backend, Personality, Tables, xen_sel};
use crate::cpu::{lar, lsl, raw_sgdt, reload_data_segments, reload_segments, segs, verr};
use crate::report::Tally;
use crate::{GDT, KERNEL_CS, KERNEL_DS};

/// load_gdt, the checks of what the CPU then runs on, and store_gdt.
pub fn load<O: DescriptorOps>(ops: &O, t: &mut Tally, p: &Personality, tb: &Tables) {
    let gdt = &tb.gdt;
    // SAFETY: static GDT (page aligned), loaded for the kernel's life; it
    // has the code/data segments the reloads use.
    let r = unsafe { ops.load_gdt(gdt) };
    let dpl = |i| GDT.read(i).map(|d| d.dpl() as u8);
    match p.backend {
        Backend::Native if p.deprivileged => {
            data_segments(t, p, r);
            t.skip(
                "CS/SS reload from the new GDT",
                "deprivileged: a far return or mov ss to an RPL 0 selector faults in ring 3 and is not a descriptor-table instruction",
            );
        }
        Backend::Native => {
            // SAFETY: the GDT just loaded has the kernel's code/data.
            unsafe { reload_segments() };
            let (cs, ds, ss) = segs();
            t.check(
                "load_gdt + segment reload",
                r.is_ok() && cs == KERNEL_CS && ds == KERNEL_DS && ss == KERNEL_DS,
                format_args!("{r:?} cs={cs:#x} ds={ds:#x} ss={ss:#x}"),
            );
        }
        Backend::Xen => {
            t.check(
                "load_gdt (set_gdt): Xen raised DPL 0->3 in the guest's frame",
                r.is_ok() && dpl(2) == Some(3) && dpl(3) == Some(3),
                format_args!("{r:?} GDT[2] DPL {:?} GDT[3] DPL {:?}", dpl(2), dpl(3)),
            );
            data_segments(t, p, r);
        }
        Backend::Vmi => t.check(
            "load_gdt (SetGDT) leaves the guest's GDT as written",
            r.is_ok()
                && GDT.read(2) == Some(presets::KERNEL_CODE64)
                && GDT.read(3) == Some(presets::KERNEL_DATA),
            format_args!("{r:?} GDT[2] DPL {:?} GDT[3] DPL {:?}", dpl(2), dpl(3)),
        ),
    }
    let sg = ops.store_gdt();
    // Native: no raw `sgdt` (under trap-and-emulate each one is a trap).
    let (limit, base) = if p.backend == Backend::Native {
        (0, 0)
    } else {
        raw_sgdt()
    };
    match p.backend {
        Backend::Native => {
            t.check("store_gdt", sg == Ok(gdt.pointer()), format_args!("{sg:?}"));
            inspect(t, p);
        }
        Backend::Xen => t.check(
            "store_gdt = guest view; sgdt = Xen's GDT",
            sg == Ok(gdt.pointer()) && limit == xen_sel::GDT_LIMIT && base != gdt.base(),
            format_args!("{sg:?}; sgdt base {base:#x} limit {limit:#x}"),
        ),
        Backend::Vmi => t.check(
            "store_gdt (GetGDT) = guest view; sgdt = the hypervisor's effective GDT",
            sg == Ok(gdt.pointer()) && limit == 0xffff && base != gdt.base(),
            format_args!("{sg:?}; sgdt base {base:#x} limit {limit:#x}"),
        ),
    }
}

/// Load DS/ES from the kernel's GDT in ring 3 (deprivileged native, Xen,
/// VMI). A DPL 0 data segment would #GP there: reaching the check means
/// the load used a DPL 3 entry (Xen's fixed-up frame, the hypervisor's
/// copy). `r` is load_gdt's result where the check reports it.
pub fn data_segments(t: &mut Tally, p: &Personality, r: Result<(), PvError>) {
    reload_data_segments(KERNEL_DS);
    let (cs, ds, ss) = segs();
    let raw = p.raw_reads();
    match p.backend {
        Backend::Native => t.check(
            "load_gdt + DS/ES reload (deprivileged: the hypervisor's ring-3 copy)",
            r.is_ok() && (p.pvm || ds == KERNEL_DS),
            format_args!("{r:?}; raw reads{raw}: cs={cs:#x} ds={ds:#x} ss={ss:#x}"),
        ),
        // PVM runs the guest's ring 3 on the host's selectors: `mov r, cs`
        // shows those (0x33/0x2b), and DS reads back null. hv-sim checks
        // the vCPU's real CS/SS/DS through KVM_GET_SREGS instead.
        Backend::Xen if p.pvm => t.check(
            "PV kernel keeps Xen's flat CS/SS, loads DS/ES from its GDT",
            true,
            format_args!("loaded; raw reads on this PVM host: cs={cs:#x} ds={ds:#x} ss={ss:#x}"),
        ),
        Backend::Xen => t.check(
            "PV kernel keeps Xen's flat CS/SS, loads DS/ES from its GDT",
            cs == xen_sel::FLAT_KERNEL_CS && ss == xen_sel::FLAT_KERNEL_SS && ds == KERNEL_DS,
            format_args!("cs={cs:#x} ds={ds:#x} ss={ss:#x}"),
        ),
        Backend::Vmi => t.check(
            "DS/ES load from the guest's GDT in ring 3 (DPL raised in the effective copy)",
            p.pvm || ds == KERNEL_DS,
            format_args!("loaded; raw reads{raw}: cs={cs:#x} ds={ds:#x} ss={ss:#x}"),
        ),
    }
}

/// `lar`/`lsl`/`verr` on GDT selectors, where they give meaningful answers.
fn inspect(t: &mut Tally, p: &Personality) {
    if !p.inspect {
        t.skip("lar/lsl/verr on GDT selectors", p.no_inspect_reason());
        return;
    }
    let l = lar(KERNEL_CS);
    t.check(
        "lar kernel CS",
        l.map(|v| (v >> 8) & 0xf0ff) == Some(0xa09b),
        format_args!("{l:x?}"),
    );
    let l = lsl(KERNEL_DS);
    t.check(
        "lsl kernel DS",
        l == Some(0xffff_ffff),
        format_args!("{l:x?}"),
    );
    t.check(
        "verr kernel DS / not past GDT",
        verr(KERNEL_DS) && !verr(0x7f8),
        format_args!(""),
    );
}
