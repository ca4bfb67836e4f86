//! IDT gates against the tables they name.
//!
//! A gate's code selector is resolved when an interrupt is delivered, in
//! the GDT or LDT in effect *then*, so a gate that was fine when written
//! can become an escape when the GDT or LDT changes under it. Every call
//! that changes the effective IDT, GDT or LDT therefore checks the gates
//! that will be in effect against the tables that will be in effect
//! (after any pending lazy batch and the call itself), and refuses the call
//! when a present gate would:
//!
//! * name one of the hypervisor's reserved GDT entries (they follow the
//!   guest's entries, so their selectors depend on the length the guest
//!   chose): its ring-0 code segment would run the guest's handler in
//!   ring 0; or
//! * name a present code segment whose DPL is below the guest kernel's
//!   ring (the handler would run above the guest's ring). The descriptor
//!   policy compresses every guest code segment to the guest's ring, so
//!   this can only be a reserved entry today; the check does not rely on
//!   that.
//!
//! Other targets (a null, not-present, data or system descriptor, an index
//! past the table) are left to the CPU, as on bare metal: delivery through
//! such a gate faults (#GP/#NP) and never runs anything above the guest's
//! ring. Linux relies on this: i386 `cpu_init` loads its IDT before the
//! GDT its gates name, and its double-fault task gate names a TSS slot
//! filled only after the GDT is loaded.
//!
//! Call gates need no re-check: the descriptor policy refuses them in the
//! GDT and LDT, whatever half of a 16-byte entry they would come from.

use super::machine::HV_RESERVED_GDT;
use super::policy::GuestKind;
use super::state::EffectiveState;

const P: u64 = 1 << 47;
const S: u64 = 1 << 44;
const CODE: u64 = 1 << 43;

/// The tables a gate's selector is resolved in.
#[derive(Clone, Copy)]
pub(super) struct Tables<'a> {
    /// The guest's entries of the effective GDT (the reserved ones follow
    /// them); `None` when no GDT is loaded (nothing to resolve against).
    pub gdt: Option<&'a [u64]>,
    /// The effective LDT.
    pub ldt: &'a [u64],
    /// Slots about to change: (in the LDT?, index, new value).
    pub patch: &'a [(bool, usize, u64)],
}

impl<'a> Tables<'a> {
    /// The tables of effective state `e`, unpatched.
    pub fn of(e: &'a EffectiveState) -> Tables<'a> {
        let n = e.gdt.len().saturating_sub(HV_RESERVED_GDT.len());
        Tables {
            gdt: (!e.gdt.is_empty()).then(|| &e.gdt[..n]),
            ldt: &e.ldt,
            patch: &[],
        }
    }

    fn slot(&self, ldt: bool, index: usize) -> Option<u64> {
        if let Some(&(_, _, v)) = self.patch.iter().find(|&&(l, i, _)| l == ldt && i == index) {
            return Some(v);
        }
        if ldt {
            self.ldt.get(index).copied()
        } else {
            self.gdt?.get(index).copied()
        }
    }
}

/// Why present gate `low` may not be in effect with `t` (the rule broken,
/// naming the selector and the slot); `Ok` for a not-present gate.
pub(super) fn check_gate(kind: GuestKind, low: u64, t: &Tables<'_>) -> Result<(), String> {
    if low & P == 0 {
        return Ok(());
    }
    let sel = (low >> 16) & 0xFFFF;
    let index = (sel >> 3) as usize;
    let ldt = sel & 4 != 0;
    if !ldt && let Some(gdt) = t.gdt {
        let n = gdt.len();
        if (n..n + HV_RESERVED_GDT.len()).contains(&index) {
            return Err(format!(
                "gate selector {sel:#x} names GDT[{index}], one of the hypervisor's reserved ring-0 entries that follow the guest's {n}"
            ));
        }
    }
    // A task gate names a TSS, not a code segment.
    if (low >> 40) & 0x1F == 0x5 {
        return Ok(());
    }
    let Some(d) = t.slot(ldt, index) else {
        return Ok(());
    };
    let dpl = (d >> 45) & 3;
    if d & (P | S | CODE) == P | S | CODE && dpl < kind.krpl() {
        return Err(format!(
            "gate selector {sel:#x} names {}[{index}] = {d:#018x}, a code segment of DPL {dpl}: delivery would run the guest's handler above its ring {}",
            if ldt { "LDT" } else { "GDT" },
            kind.krpl()
        ));
    }
    Ok(())
}

/// [`check_gate`] for every gate of `idt` whose selector names a slot of
/// `t.patch` (all of them when `all`): Err = (vector, rule broken).
pub(super) fn check_idt(
    kind: GuestKind,
    idt: &[(u64, u64)],
    t: &Tables<'_>,
    all: bool,
) -> Result<(), (usize, String)> {
    for (v, &(low, _)) in idt.iter().enumerate() {
        if low & P == 0 {
            continue;
        }
        if !all {
            let sel = (low >> 16) & 0xFFFF;
            let (ldt, index) = (sel & 4 != 0, (sel >> 3) as usize);
            if !t.patch.iter().any(|&(l, i, _)| l == ldt && i == index) {
                continue;
            }
        }
        check_gate(kind, low, t).map_err(|e| (v, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(sel: u64) -> u64 {
        (sel << 16) | (0x8E << 40)
    }

    #[test]
    fn reserved_and_above_ring_targets() {
        let gdt = [0, 0x00af_fb00_0000_ffff, 0x00af_9b00_0000_ffff];
        let t = Tables {
            gdt: Some(&gdt),
            ldt: &[],
            patch: &[],
        };
        let k = GuestKind::Vmi64;
        assert!(check_gate(k, gate(0x0b), &t).is_ok());
        let e = check_gate(k, gate(0x13), &t).unwrap_err();
        assert!(e.contains("GDT[2]") && e.contains("DPL 0"), "{e}");
        let e = check_gate(k, gate(0x1b), &t).unwrap_err();
        assert!(e.contains("reserved"), "{e}");
        // Faulting targets are the CPU's business.
        assert!(check_gate(k, gate(0x03), &t).is_ok());
        assert!(check_gate(k, gate(0x1000), &t).is_ok());
        // A patch is seen before the table.
        let p = [(false, 1, 0x00af_9b00_0000_ffff)];
        let t2 = Tables { patch: &p, ..t };
        assert!(check_gate(k, gate(0x0b), &t2).is_err());
        assert_eq!(check_idt(k, &[(gate(0x13), 0)], &t2, false), Ok(()));
        assert!(check_idt(k, &[(gate(0x0b), 0)], &t2, false).is_err());
        assert!(check_idt(k, &[(gate(0x13), 0)], &t2, true).is_err());
    }
}
