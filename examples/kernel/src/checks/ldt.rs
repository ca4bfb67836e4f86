//! The LDT: alloc_ldt, an entry, load_ldt, a segment load through it,
//! free_ldt.
//!
//! Native loads the kernel's LDT. Xen loads it through its own LDT
//! descriptor (`sldt` shows Xen's selector) and raises DPL 0 to 3 in the
//! guest's frame; VMI raises DPLs only in its effective LDT, and an entry
//! written into the loaded LDT takes effect.

use core::sync::atomic::Ordering;

use pvops::{DescriptorOps, Ring, Selector};

use super::{Backend, Personality, Tables, probe_seg};
use crate::cpu::{lar, lsl, raw_sldt, read_fs0, verr};
use crate::report::Tally;
use crate::{LDT, LDT_PROBE, LDT_PROBE2};

/// alloc_ldt, LDT[1] = a data segment over LDT_PROBE, load_ldt; then the
/// selector load through it.
pub fn load<O: DescriptorOps>(ops: &O, t: &mut Tally, p: &Personality, tb: &Tables) {
    let ldt = &tb.ldt;
    // SAFETY: static LDT, page aligned.
    let r = unsafe {
        ops.alloc_ldt(ldt)
            .and_then(|()| ops.write_ldt_entry(ldt, 1, probe_seg(&LDT_PROBE, 0xfff)))
            .and_then(|()| ops.load_ldt(Some(ldt)))
    };
    let sldt = raw_sldt();
    let loaded = r.is_ok() && sldt == p.ldtr() && ops.store_ldt() == Ok(Some(*ldt));
    let name = match p.backend {
        Backend::Native => "load_ldt (sldt)",
        Backend::Xen => "load_ldt (MMUEXT_SET_LDT): store_ldt = guest view, sldt = Xen's LDT",
        Backend::Vmi => "load_ldt (WriteGDTEntry + SetLDT) -> sldt = store_ldt = guest view",
    };
    t.check(name, loaded, format_args!("{r:?} sldt={sldt:#x}"));

    let ldt_sel = Selector::ldt(1, Ring::Ring0).bits();
    let v = read_fs0(ldt_sel);
    let hit = v == LDT_PROBE.load(Ordering::SeqCst);
    let dpl = LDT.read(1).map(|d| d.dpl() as u8);
    match p.backend {
        Backend::Native => t.check(
            "LDT selector loads (FS:[0] through LDT[1])",
            hit,
            format_args!("{v:#x}"),
        ),
        Backend::Xen => t.check(
            "LDT selector loads (FS:[0] through LDT[1], DPL raised to 3)",
            hit && dpl == Some(3),
            format_args!("{v:#x}"),
        ),
        Backend::Vmi => t.check(
            "LDT selector loads (FS:[0] through LDT[1], DPL raised in the effective LDT)",
            hit && dpl == Some(0),
            format_args!("{v:#x}"),
        ),
    }
    match p.backend {
        Backend::Native if p.inspect => t.check(
            "lar/lsl/verr on an LDT selector",
            lsl(ldt_sel) == Some(0xfff)
                && lar(ldt_sel).map(|v| (v >> 8) & 0xfe) == Some(0x92)
                && verr(ldt_sel),
            format_args!("lsl={:x?} lar={:x?}", lsl(ldt_sel), lar(ldt_sel)),
        ),
        Backend::Native => t.skip("lar/lsl/verr on an LDT selector", p.no_inspect_reason()),
        Backend::Xen => {}
        Backend::Vmi => write_loaded(ops, t, tb),
    }
}

/// An entry written into the loaded LDT takes effect (WriteLDTEntry).
fn write_loaded<O: DescriptorOps>(ops: &O, t: &mut Tally, tb: &Tables) {
    // SAFETY: static LDT, currently loaded.
    let r = unsafe { ops.write_ldt_entry(&tb.ldt, 2, probe_seg(&LDT_PROBE2, 0xfff)) };
    let v = read_fs0(Selector::ldt(2, Ring::Ring0).bits());
    t.check(
        "WriteLDTEntry into the loaded LDT takes effect (FS:[0] through LDT[2])",
        r.is_ok() && v == LDT_PROBE2.load(Ordering::SeqCst),
        format_args!("{r:?} {v:#x}"),
    );
}

/// free_ldt once nothing has it loaded (the last context switch loaded
/// none).
pub fn free<O: DescriptorOps>(ops: &O, t: &mut Tally, p: &Personality, tb: &Tables) {
    // SAFETY: the LDT is no longer loaded (the last switch loaded none).
    let r = unsafe { ops.free_ldt(&tb.ldt) };
    let name = match p.backend {
        // Xen makes the frame writable again.
        Backend::Xen => "free_ldt (writable again)",
        Backend::Native | Backend::Vmi => "free_ldt",
    };
    t.check(name, r.is_ok(), format_args!("{r:?}"));
}
