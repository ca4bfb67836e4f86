//! The two states the personality keeps: the guest's view (what it set,
//! as it set it) and the effective state (what the CPU would use), and the
//! updates that take the effective state from one call to the next.

use super::machine::HV_RESERVED_GDT;
use super::trace::Change;
use pvops::{DescriptorTablePointer, Selector};

/// What the guest set, as it set it: GetGDT/GetIDT/GetLDT/GetTR answer
/// from here.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuestView {
    /// The DTR given to SetGDT.
    pub gdtr: Option<DescriptorTablePointer>,
    /// The DTR given to SetIDT.
    pub idtr: Option<DescriptorTablePointer>,
    /// The selector given to SetLDT.
    pub ldtr: Selector,
    /// The LDT it named: (linear base, entries).
    pub ldt: Option<(u64, u32)>,
    /// The selector given to SetTR.
    pub tr: Selector,
    /// UpdateKernelStack's (selector, sp0): the selector as passed, the
    /// kernel's stack segment (Linux: `__KERNEL_DS`) or the TSS selector
    /// (pvops-vmi's 64-bit convention).
    pub kernel_stack: Option<(Selector, u64)>,
    /// Current lazy mode (0 none, 1 MMU, 2 CPU).
    pub lazy_mode: u64,
}

/// What the CPU would really use: the hypervisor's copies after its
/// fix-ups ([`super::policy`]), at the hypervisor's own addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EffectiveState {
    /// Address of the effective GDT (the hypervisor's, not the guest's).
    pub gdt_base: u64,
    /// Effective GDT: the guest's entries fixed up, then [`HV_RESERVED_GDT`].
    pub gdt: Vec<u64>,
    /// Address of the effective IDT.
    pub idt_base: u64,
    /// Effective IDT gates (low, high); high is 0 for a 32-bit guest.
    pub idt: Vec<(u64, u64)>,
    /// Linear base of the loaded LDT (0 = none).
    pub ldt_base: u64,
    /// The selector of the loaded LDT (null = none).
    pub ldtr: Selector,
    /// Effective LDT entries.
    pub ldt: Vec<u64>,
    /// Task register.
    pub tr: Selector,
    /// TSS base.
    pub tss_base: u64,
    /// TSS limit.
    pub tss_limit: u32,
    /// Ring-0 (guest kernel) stack pointer.
    pub sp0: u64,
}

impl EffectiveState {
    /// The GDTR the CPU really holds.
    pub fn gdtr(&self) -> DescriptorTablePointer {
        DescriptorTablePointer {
            limit: (self.gdt.len() * 8).saturating_sub(1) as u16,
            base: self.gdt_base,
        }
    }

    /// The IDTR the CPU really holds (`gate_size` 16 or 8).
    pub fn idtr(&self, gate_size: u64) -> DescriptorTablePointer {
        DescriptorTablePointer {
            limit: (self.idt.len() as u64 * gate_size).saturating_sub(1) as u16,
            base: self.idt_base,
        }
    }
}

/// A change to the effective state (applied at once, or at the end of a
/// lazy batch).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Update {
    Gdt {
        base: u64,
        entries: Vec<u64>,
    },
    GdtSlot {
        index: u32,
        value: u64,
    },
    Idt {
        base: u64,
        gates: Vec<(u64, u64)>,
    },
    IdtSlot {
        vector: u32,
        gate: (u64, u64),
    },
    Ldt {
        sel: Selector,
        base: u64,
        entries: Vec<u64>,
    },
    LdtSlot {
        index: u32,
        value: u64,
    },
    Tr {
        sel: Selector,
        base: u64,
        limit: u32,
    },
    KernelStack {
        sp0: u64,
    },
}

const BUSY: u64 = 2 << 40;

/// Mark `d` busy if it is a present available TSS (S = 0, type 9); any
/// other descriptor is left alone (bit 41 is a code segment's R or a data
/// segment's W bit).
fn mark_busy(d: &mut u64) {
    if *d & (1 << 47) != 0 && (*d >> 40) & 0x1F == 0x9 {
        *d |= BUSY;
    }
}

impl Update {
    /// The raw trace record of this change.
    pub(super) fn change(&self) -> Change {
        match self {
            Update::Gdt { base, entries } => Change::Gdt {
                base: *base,
                entries: entries.len() as u32,
            },
            &Update::GdtSlot { index, value } => Change::GdtSlot { index, value },
            Update::Idt { base, gates } => Change::Idt {
                base: *base,
                gates: gates.len() as u32,
            },
            &Update::IdtSlot { vector, gate } => Change::IdtSlot { vector, gate },
            Update::Ldt { sel, base, entries } => Change::Ldt {
                sel: *sel,
                base: *base,
                entries: entries.len() as u32,
            },
            &Update::LdtSlot { index, value } => Change::LdtSlot { index, value },
            &Update::Tr { sel, base, limit } => Change::Tr { sel, base, limit },
            &Update::KernelStack { sp0 } => Change::KernelStack { sp0 },
        }
    }

    /// Apply it to `e`.
    pub(super) fn apply(self, e: &mut EffectiveState) {
        match self {
            Update::Gdt { base, entries } => {
                e.gdt_base = base;
                e.gdt = entries;
                e.gdt.extend_from_slice(&HV_RESERVED_GDT);
                let tr = e.tr.index() as usize;
                let guest_len = e.gdt.len() - HV_RESERVED_GDT.len();
                if !e.tr.is_null() && tr < guest_len {
                    mark_busy(&mut e.gdt[tr]);
                }
            }
            Update::GdtSlot { index, value } => {
                let guest_len = e.gdt.len().saturating_sub(HV_RESERVED_GDT.len());
                if (index as usize) < guest_len {
                    e.gdt[index as usize] = value;
                }
            }
            Update::Idt { base, gates } => {
                e.idt_base = base;
                e.idt = gates;
            }
            Update::IdtSlot { vector, gate } => {
                if let Some(g) = e.idt.get_mut(vector as usize) {
                    *g = gate;
                }
            }
            Update::Ldt { sel, base, entries } => {
                e.ldtr = sel;
                e.ldt_base = base;
                e.ldt = entries;
            }
            Update::LdtSlot { index, value } => {
                if let Some(d) = e.ldt.get_mut(index as usize) {
                    *d = value;
                }
            }
            Update::Tr { sel, base, limit } => {
                e.tr = sel;
                e.tss_base = base;
                e.tss_limit = limit;
                let guest_len = e.gdt.len().saturating_sub(HV_RESERVED_GDT.len());
                if (sel.index() as usize) < guest_len {
                    mark_busy(&mut e.gdt[sel.index() as usize]);
                }
            }
            Update::KernelStack { sp0 } => e.sp0 = sp0,
        }
    }
}
