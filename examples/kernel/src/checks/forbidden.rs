//! What the hypervisor forbids: a call gate its policy refuses (Xen: one
//! into Xen's own code segment; VMI: a ring-3 gate into the kernel), and
//! (Xen) a direct store into the live, read-only GDT. Each is refused
//! while the kernel carries on.

use core::sync::atomic::Ordering;

use pvops::{
    Descriptor, DescriptorOps, Errno, GdtEntry, PvError, Slot, SystemDescriptor, TableKind, presets,
};

use super::{Backend, Personality, Tables, xen_sel};
use crate::cpu::{PF_COUNT, direct_store, gp_handler};
use crate::report::Tally;
use crate::{GDT, KERNEL_CS};

/// A 64-bit call gate to gp_handler through `sel`, with access byte `access`.
fn gate_to_gp(sel: u16, access: u64) -> SystemDescriptor {
    let target = gp_handler as *const () as u64;
    SystemDescriptor {
        low: (target & 0xffff)
            | (u64::from(sel) << 16)
            | (access << 40)
            | ((target >> 16) & 0xffff) << 48,
        high: target >> 32,
    }
}

/// Write the forbidden gate: architecturally valid, refused by the
/// hypervisor's policy with -EINVAL naming the slot (the validation layer
/// lets it through); the next write (slot 15) still works.
pub fn call_gate<O: DescriptorOps>(ops: &O, t: &mut Tally, p: &Personality, tb: &Tables) {
    // Xen: slots 8-9 are unused (the TSS write was dropped). VMI: slots
    // 14-15 are free (TLS slot 2 is null).
    let (gate, slot, call) = match p.backend {
        Backend::Xen => (
            gate_to_gp(xen_sel::HYPERVISOR_CS, 0x8c),
            8,
            "update_descriptor",
        ),
        Backend::Vmi => (gate_to_gp(KERNEL_CS, 0xec), 14, "WriteGDTEntry"),
        Backend::Native => return,
    };
    // SAFETY: static GDT; the slots are unused (above).
    let r = unsafe { ops.write_gdt_entry(&tb.gdt, slot, GdtEntry::Double(gate)) };
    let refused = match r {
        Err(PvError::Hypervisor {
            call: c,
            errno: Errno::EINVAL,
            at: Slot::Entry(TableKind::Gdt, at),
        }) => {
            // Xen updates the gate one 8-byte half at a time.
            c == call && (at == slot || (p.backend == Backend::Xen && at == slot + 1))
        }
        _ => false,
    };
    // SAFETY: static GDT; slot 15 is free.
    let r2 = unsafe { ops.write_gdt_entry(&tb.gdt, 15, GdtEntry::Single(presets::USER_DATA)) };
    let next = r2.is_ok() && GDT.read(15) == Some(presets::USER_DATA);
    match p.backend {
        Backend::Xen => t.check(
            "forbidden call gate (target 0xe008) -> -EINVAL, and the kernel carries on",
            refused && next,
            format_args!("{r:?}; next write {r2:?}"),
        ),
        _ => t.check(
            "forbidden call gate (DPL 3) -> -EINVAL, nothing written, and the kernel carries on",
            refused && GDT.read(14) == Some(Descriptor::NULL) && next,
            format_args!("{r:?}; next write {r2:?}"),
        ),
    }
}

/// The GDT page is mapped read-only (Xen's load_gdt did update_va_mapping):
/// a direct store faults and the descriptor is unchanged.
pub fn direct_store_faults(t: &mut Tally, tb: &Tables) {
    let before = GDT.read(15);
    // SAFETY: the store faults into the #PF handler, which skips it.
    unsafe { direct_store(tb.gdt.base() + 15 * 8, 0x00cf_f300_0000_ffff) };
    t.check(
        "direct store into the live GDT -> #PF, descriptor unchanged",
        PF_COUNT.load(Ordering::SeqCst) == 1 && GDT.read(15) == before,
        format_args!("#PF count={}", PF_COUNT.load(Ordering::SeqCst)),
    );
}
