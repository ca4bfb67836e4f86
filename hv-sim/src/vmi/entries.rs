//! The entry calls: WriteGDTEntry, WriteLDTEntry, WriteIDTEntry. Each one
//! checks every 8-byte slot it would put in an effective table (both
//! halves of a 16-byte descriptor, each as the CPU can read it), the slots
//! around it, and the gates that name those slots, and only then writes
//! the guest's table, in one all-or-nothing write: a refused call changes
//! nothing, in guest memory or in the effective state.

use super::gates::{self, Tables};
use super::machine::{EINVAL, GuestMemory, Inner, Outcome, VmiHypervisor, fail};
use super::policy::{self, GuestKind};
use super::state::Update;
use super::tables::gdt_refusal;

impl<M: GuestMemory> VmiHypervisor<M> {
    /// WriteGDTEntry(base, index, low, high): on a 64-bit guest an LDT or
    /// TSS descriptor (S = 0, type 2/9/0xb, present or not) takes two slots
    /// and `high` is its upper half; anything else is 8 bytes with high 0.
    /// A 32-bit guest passes one descriptor as two 32-bit words.
    pub(super) fn write_gdt_entry(&self, inner: &mut Inner, a: [u64; 4]) -> Outcome {
        let k = self.kind;
        let (base, index) = (a[0], a[1]);
        let (low, high) = match k {
            GuestKind::Vmi64 => (a[2], a[3]),
            GuestKind::Vmi32 => ((a[2] & 0xFFFF_FFFF) | (a[3] << 32), 0),
        };
        let double = policy::is_double(k, low);
        if !double && k == GuestKind::Vmi64 && high != 0 {
            return Err(fail(
                EINVAL,
                format!(
                    "WriteGDTEntry: GDT[{index}]: an 8-byte descriptor takes rcx = 0 (got {high:#x}); only TSS/LDT descriptors are 16 bytes"
                ),
            ));
        }
        let slots = if double { 2 } else { 1 };
        if index.saturating_add(slots) > 8192 {
            return Err(fail(
                EINVAL,
                format!("WriteGDTEntry: index {index} is past the largest GDT (8192 entries)"),
            ));
        }
        let loaded = inner.guest.gdtr.filter(|p| p.base == base);
        if let Some(p) = loaded {
            let n = (p.limit as u64 + 1) / 8;
            if index + slots > n {
                return Err(fail(
                    EINVAL,
                    format!(
                        "WriteGDTEntry: {}-byte descriptor at index {index} does not fit in the loaded GDT ({n} entries)",
                        slots * 8
                    ),
                ));
            }
        }
        // Slot index - 1 of the effective GDT (as it will be once a pending
        // batch is applied) may be the lower half of a present 16-byte
        // descriptor: then slot index is its upper half, validated with it;
        // an 8-byte descriptor there would change a live TSS's or LDT's
        // base after it was checked, or break the descriptor.
        if loaded.is_some() && index > 0 {
            let prev = inner.future().gdt.get(index as usize - 1).copied();
            if let Some(prev) = prev
                && prev & (1 << 47) != 0
                && policy::is_double(k, prev)
            {
                return Err(fail(
                    EINVAL,
                    format!(
                        "WriteGDTEntry: GDT[{index}] is the upper half of the present 16-byte descriptor at GDT[{}]; write that descriptor whole (or clear it first)",
                        index - 1
                    ),
                ));
            }
        }
        // Both halves: the lower as a descriptor, the upper as an upper half
        // (type field 0, so a selector naming it on its own gets a reserved
        // system type the CPU refuses), whether the lower half is present
        // or not.
        let (elo, ehi) = policy::check_gdt_entry(k, low, double.then_some(high))
            .map_err(|r| gdt_refusal("WriteGDTEntry", index, r))?;
        let i = index as usize;
        let mut patch = [(false, i, elo), (false, i + 1, ehi.unwrap_or(0))];
        let patch = &mut patch[..slots as usize];
        if loaded.is_some() {
            let future = inner.future();
            let t = Tables {
                patch,
                ..Tables::of(future)
            };
            gates::check_idt(k, &future.idt, &t, false).map_err(|(v, e)| {
                fail(
                    EINVAL,
                    format!("WriteGDTEntry: GDT[{index}]: IDT[{v}]'s {e}"),
                )
            })?;
        }
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&low.to_le_bytes());
        bytes[8..].copy_from_slice(&high.to_le_bytes());
        self.write(
            base.wrapping_add(index * 8),
            &bytes[..slots as usize * 8],
            "the GDT",
        )?;
        let ups = if loaded.is_some() {
            patch
                .iter()
                .map(|&(_, i, value)| Update::GdtSlot {
                    index: i as u32,
                    value,
                })
                .collect()
        } else {
            Vec::new()
        };
        Ok((0, ups))
    }

    /// WriteLDTEntry(base, index, low, high): one code/data descriptor.
    pub(super) fn write_ldt_entry(&self, inner: &mut Inner, a: [u64; 4]) -> Outcome {
        let k = self.kind;
        let (base, index) = (a[0], a[1]);
        let d = match k {
            GuestKind::Vmi64 => {
                if a[3] != 0 {
                    return Err(fail(
                        EINVAL,
                        format!(
                            "WriteLDTEntry: LDT[{index}]: rcx must be 0 (LDT entries are 8 bytes)"
                        ),
                    ));
                }
                a[2]
            }
            GuestKind::Vmi32 => (a[2] & 0xFFFF_FFFF) | (a[3] << 32),
        };
        if index >= 8192 {
            return Err(fail(
                EINVAL,
                format!("WriteLDTEntry: index {index} is past the largest LDT (8192 entries)"),
            ));
        }
        let loaded = inner.guest.ldt.filter(|&(b, _)| b == base);
        if let Some((_, n)) = loaded
            && index >= n as u64
        {
            return Err(fail(
                EINVAL,
                format!(
                    "WriteLDTEntry: index {index} is past the end of the loaded LDT ({n} entries)"
                ),
            ));
        }
        let e = policy::check_ldt_entry(k, d)
            .map_err(|r| fail(EINVAL, format!("WriteLDTEntry: LDT[{index}]: {r}")))?;
        if loaded.is_some() {
            let future = inner.future();
            let patch = [(true, index as usize, e)];
            let t = Tables {
                patch: &patch,
                ..Tables::of(future)
            };
            gates::check_idt(k, &future.idt, &t, false).map_err(|(v, why)| {
                fail(
                    EINVAL,
                    format!("WriteLDTEntry: LDT[{index}]: IDT[{v}]'s {why}"),
                )
            })?;
        }
        self.write(base.wrapping_add(index * 8), &d.to_le_bytes(), "the LDT")?;
        let ups = if loaded.is_some() {
            vec![Update::LdtSlot {
                index: index as u32,
                value: e,
            }]
        } else {
            Vec::new()
        };
        Ok((0, ups))
    }

    /// WriteIDTEntry(base, vector, low, high): an interrupt or trap gate
    /// (or, from a 32-bit guest, a task gate), 16 bytes on a 64-bit guest;
    /// its target is checked against the GDT and LDT in effect.
    pub(super) fn write_idt_entry(&self, inner: &mut Inner, a: [u64; 4]) -> Outcome {
        let k = self.kind;
        let (base, vector) = (a[0], a[1]);
        let gs = k.gate_size();
        let (lo, hi) = match k {
            GuestKind::Vmi64 => (a[2], a[3]),
            GuestKind::Vmi32 => ((a[2] & 0xFFFF_FFFF) | (a[3] << 32), 0),
        };
        if vector > 255 {
            return Err(fail(
                EINVAL,
                format!("WriteIDTEntry: vector {vector} is above 255"),
            ));
        }
        let loaded = inner.guest.idtr.filter(|p| p.base == base);
        if let Some(p) = loaded {
            let n = (p.limit as u64 + 1) / gs;
            if vector >= n {
                return Err(fail(
                    EINVAL,
                    format!(
                        "WriteIDTEntry: vector {vector} is past the end of the loaded IDT ({n} gates)"
                    ),
                ));
            }
        }
        let g = policy::check_gate(k, lo, hi)
            .map_err(|r| fail(EINVAL, format!("WriteIDTEntry: IDT[{vector}]: {r}")))?;
        if loaded.is_some() {
            gates::check_gate(k, g.0, &Tables::of(inner.future()))
                .map_err(|e| fail(EINVAL, format!("WriteIDTEntry: IDT[{vector}]: {e}")))?;
        }
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&lo.to_le_bytes());
        bytes[8..].copy_from_slice(&hi.to_le_bytes());
        self.write(
            base.wrapping_add(vector * gs),
            &bytes[..gs as usize],
            "the IDT",
        )?;
        let ups = if loaded.is_some() {
            vec![Update::IdtSlot {
                vector: vector as u32,
                gate: g,
            }]
        } else {
            Vec::new()
        };
        Ok((0, ups))
    }
}
