//! An audit of the tables a real vCPU runs on: can code at the guest's
//! ring reach a more privileged ring through them?
//!
//! The VMI personality checks every call against its policy before it
//! changes the effective tables ([`crate::vmi`]); this audit is the second,
//! independent look. It reads the bytes the vCPU's GDTR, IDTR and LDTR name
//! (after hv-sim wrote them, in guest-physical memory) and walks them the way
//! the CPU resolves a selector, with no knowledge of the policy or of which
//! half of a 16-byte entry a slot came from. In 64-bit mode only two paths
//! raise the CPL (Intel SDM vol. 3A §5.8.6, §6.12.1):
//!
//! * a far `call` through a **call gate** (type 0xC) whose DPL lets the
//!   guest's ring use it, to a non-conforming code segment of lower DPL. In
//!   long mode a call gate is 16 bytes and *every* slot can start one (a
//!   selector names slot i; the CPU reads slots i and i+1, and requires the
//!   type field of the upper half to be 0: SDM §5.8.3.1), so every slot is
//!   tried as a gate start, whatever was meant to be there;
//! * delivery of an **exception or interrupt** through an interrupt or trap
//!   gate (type 0xE/0xF) to a non-conforming code segment of lower DPL.
//!   For exceptions and external interrupts the gate's DPL is not checked
//!   (SDM §6.12.1.1), so every present gate counts.
//!
//! The target must be a present, 64-bit (L = 1, D = 0) code segment for the
//! transfer to happen; anything else faults (#GP or #NP) before a
//! privileged instruction runs, and is no escape. A conforming code segment
//! keeps the caller's CPL (SDM §5.8.6).

use std::fmt;

/// Bit positions of a segment or gate descriptor's low quadword.
const P: u64 = 1 << 47;
const S: u64 = 1 << 44;
const CODE: u64 = 1 << 43;
const CONFORMING: u64 = 1 << 42;
const L: u64 = 1 << 53;
const D: u64 = 1 << 54;

/// One way up from the guest's ring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Escape {
    /// Where the path starts: `"IDT vector 14"`, `"GDT call gate at slot 2"`.
    pub via: String,
    /// The gate's code selector.
    pub selector: u16,
    /// The DPL of the code segment it reaches (below the guest's ring).
    pub target_dpl: u8,
}

impl fmt::Display for Escape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} -> selector {:#x}: a DPL {} code segment, above the guest's ring",
            self.via, self.selector, self.target_dpl
        )
    }
}

/// The tables as the vCPU sees them: each a slice of quadwords read from
/// the addresses its register names (the GDT and LDT up to their limits,
/// the IDT as (low, high) pairs).
#[derive(Clone, Copy, Debug)]
pub struct RealTables<'a> {
    /// The GDT's quadwords.
    pub gdt: &'a [u64],
    /// The LDT's quadwords (empty when LDTR is null or unusable).
    pub ldt: &'a [u64],
    /// The IDT's gates.
    pub idt: &'a [(u64, u64)],
}

impl RealTables<'_> {
    /// The descriptor `selector` names, as the CPU finds it: `None` past
    /// the table's limit or for a null GDT selector.
    fn resolve(&self, selector: u16) -> Option<u64> {
        let index = usize::from(selector >> 3);
        if selector & 4 != 0 {
            self.ldt.get(index).copied()
        } else if index == 0 {
            None
        } else {
            self.gdt.get(index).copied()
        }
    }

    /// The DPL of the code segment a transfer to `selector` would run on,
    /// when the transfer raises the CPL above `ring`; `None` if it faults
    /// or keeps the CPL.
    fn raises(&self, selector: u16, ring: u8) -> Option<u8> {
        let d = self.resolve(selector)?;
        let dpl = ((d >> 45) & 3) as u8;
        let code64 = d & (P | S | CODE) == P | S | CODE && d & L != 0 && d & D == 0;
        (code64 && d & CONFORMING == 0 && dpl < ring).then_some(dpl)
    }

    /// Every path from `ring` to a more privileged ring, at most `max`.
    pub fn escapes(&self, ring: u8, max: usize) -> Vec<Escape> {
        let mut out = Vec::new();
        let gate_sel = |low: u64| ((low >> 16) & 0xffff) as u16;
        for (v, &(low, _)) in self.idt.iter().enumerate() {
            let typ = (low >> 40) & 0x1f;
            if low & P != 0
                && (typ == 0xe || typ == 0xf)
                && let Some(dpl) = self.raises(gate_sel(low), ring)
            {
                out.push(Escape {
                    via: format!("IDT vector {v}"),
                    selector: gate_sel(low),
                    target_dpl: dpl,
                });
            }
        }
        for (name, table) in [("GDT", self.gdt), ("LDT", self.ldt)] {
            for (i, w) in table.windows(2).enumerate() {
                let (low, high) = (w[0], w[1]);
                let typ = (low >> 40) & 0x1f;
                let dpl = ((low >> 45) & 3) as u8;
                // A usable 64-bit call gate: present, type 0xC (S = 0), DPL
                // at or below the guest's privilege, upper half type 0.
                let gate = low & P != 0 && typ == 0xc && dpl >= ring && (high >> 40) & 0x1f == 0;
                if gate && let Some(t) = self.raises(gate_sel(low), ring) {
                    out.push(Escape {
                        via: format!("{name} call gate at slot {i}"),
                        selector: gate_sel(low),
                        target_dpl: t,
                    });
                }
            }
        }
        out.truncate(max);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 64-bit code, DPL `dpl`.
    fn code(dpl: u64) -> u64 {
        0x00af_9b00_0000_ffff | dpl << 45
    }
    const DATA0: u64 = 0x00cf_9300_0000_ffff;
    /// An interrupt gate to `sel`.
    fn intr(sel: u64) -> (u64, u64) {
        (0x8e00_0000_0000 | sel << 16, 0)
    }
    /// A call gate low half to `sel`, DPL `dpl`.
    /// Tables without an LDT.
    fn no_ldt<'a>(gdt: &'a [u64], idt: &'a [(u64, u64)]) -> RealTables<'a> {
        RealTables { gdt, ldt: &[], idt }
    }

    fn call_gate(sel: u64, dpl: u64) -> u64 {
        P | 0xc << 40 | dpl << 45 | sel << 16
    }

    #[test]
    fn compressed_tables_have_no_escape() {
        let gdt = [0, 0, code(3), DATA0 | 3 << 45];
        let idt = [intr(0x13), intr(0x10)];
        let t = no_ldt(&gdt, &idt);
        assert!(t.escapes(3, 8).is_empty());
    }

    // SDM §6.12.1: a gate to a DPL 0 code segment runs the handler in
    // ring 0, whatever the gate's DPL.
    #[test]
    fn idt_gate_to_ring0_code_is_an_escape() {
        let gdt = [0, 0, code(3), 0, code(0)];
        let mut g = intr(0x20);
        g.0 &= !(3 << 45); // DPL 0 gate: still used for exceptions
        let idt = [intr(0x10), g];
        let t = no_ldt(&gdt, &idt);
        let e = t.escapes(3, 8);
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].via, "IDT vector 1");
        assert_eq!(e[0].target_dpl, 0);
    }

    // SDM §5.8.6: a call gate usable from ring 3 (DPL 3) to a
    // non-conforming DPL 0 segment raises the CPL; the upper half must have
    // type 0 (SDM §5.8.3.1), so a slot whose successor has a type is no gate.
    #[test]
    fn call_gate_from_any_slot_pair() {
        let gdt = [0, call_gate(0x18, 3), 0, code(0), call_gate(0x18, 3), DATA0];
        let t = no_ldt(&gdt, &[]);
        let e = t.escapes(3, 8);
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].via, "GDT call gate at slot 1");
        assert_eq!(e[0].selector, 0x18);
        // DPL 0 gate: ring 3 cannot use it.
        let gdt = [0, call_gate(0x18, 0), 0, code(0)];
        let t = no_ldt(&gdt, &[]);
        assert!(t.escapes(3, 8).is_empty());
    }

    #[test]
    fn conforming_data_compat_and_missing_targets_are_no_escape() {
        let conforming = code(0) | CONFORMING;
        let compat = code(0) & !L;
        let absent = code(0) & !P;
        let gdt = [0, conforming, compat, absent, DATA0];
        let idt = [
            intr(0x8),
            intr(0x10),
            intr(0x18),
            intr(0x20),
            intr(0x28),
            intr(0),
        ];
        let t = no_ldt(&gdt, &idt);
        assert!(t.escapes(3, 8).is_empty());
    }

    #[test]
    fn ldt_selectors_resolve_in_the_ldt() {
        let ldt = [code(0), code(3)];
        let t = RealTables {
            gdt: &[0, code(3)],
            ldt: &ldt,
            idt: &[intr(0x4 | 0x3), intr(0xc)],
        };
        let e = t.escapes(3, 8);
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].selector, 0x7);
    }
}
