//! The record of everything a VMI guest asked of the simulated hypervisor.
//!
//! Bounded: it keeps the last [`TRACE_CAP`] events and counts the ones it
//! dropped (as the Xen personality's trace does), so a guest's memory does
//! not grow with its history. Effective-state changes are stored raw
//! ([`Change`]: a few words each, no heap) and formatted only when the
//! trace is displayed; a refusal's reason is a string, built only on the
//! failure path.

use core::fmt;
use std::collections::VecDeque;

use super::abi::{Reloc, call};
use pvops::Selector;

/// Events a trace keeps; older ones are dropped (and counted).
pub const TRACE_CAP: usize = 1 << 16;

/// One change to the effective state, as recorded (raw; `Display` formats
/// it). The table-sized changes record the count, not the entries: the
/// entries are in [`super::EffectiveState`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// A new effective GDT of `entries` guest entries (plus the reserved
    /// ones) at the hypervisor's `base`.
    Gdt {
        /// Address of the effective GDT.
        base: u64,
        /// Guest entries.
        entries: u32,
    },
    /// One effective GDT slot.
    GdtSlot {
        /// Slot index.
        index: u32,
        /// The effective 8 bytes.
        value: u64,
    },
    /// A new effective IDT of `gates` gates at the hypervisor's `base`.
    Idt {
        /// Address of the effective IDT.
        base: u64,
        /// Gates.
        gates: u32,
    },
    /// One effective IDT gate.
    IdtSlot {
        /// Vector.
        vector: u32,
        /// (low, high) 8 bytes; high is 0 for a 32-bit guest.
        gate: (u64, u64),
    },
    /// A new effective LDT (none when `entries` is 0).
    Ldt {
        /// LDT selector.
        sel: Selector,
        /// Linear base.
        base: u64,
        /// Entries.
        entries: u32,
    },
    /// One effective LDT slot.
    LdtSlot {
        /// Slot index.
        index: u32,
        /// The effective 8 bytes.
        value: u64,
    },
    /// The task register loaded (its descriptor marked busy).
    Tr {
        /// TSS selector.
        sel: Selector,
        /// TSS base.
        base: u64,
        /// TSS limit.
        limit: u32,
    },
    /// The ring-0 stack pointer.
    KernelStack {
        /// sp0.
        sp0: u64,
    },
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Change::Gdt { base, entries } => write!(
                f,
                "effective GDT at {base:#x}: {entries} guest entries + {} reserved",
                super::machine::HV_RESERVED_GDT.len()
            ),
            Change::GdtSlot { index, value } => {
                write!(f, "effective GDT[{index}] = {value:#018x}")
            }
            Change::Idt { base, gates } => {
                write!(f, "effective IDT at {base:#x}: {gates} gates")
            }
            Change::IdtSlot { vector, gate } => write!(
                f,
                "effective IDT[{vector}] = {:#018x}:{:#018x}",
                gate.1, gate.0
            ),
            Change::Ldt {
                base, entries: 0, ..
            } => {
                write!(f, "effective LDT none (base {base:#x})")
            }
            Change::Ldt { sel, base, entries } => {
                write!(f, "effective LDT {sel} at {base:#x}: {entries} entries")
            }
            Change::LdtSlot { index, value } => {
                write!(f, "effective LDT[{index}] = {value:#018x}")
            }
            Change::Tr { sel, base, limit } => write!(
                f,
                "effective TR = {sel} (TSS base {base:#x}, limit {limit:#x}), descriptor marked busy"
            ),
            Change::KernelStack { sp0 } => write!(f, "effective sp0 = {sp0:#x}"),
        }
    }
}

/// One event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmiEvent {
    /// VMI_Init was called.
    Init,
    /// A relocation query and its answer.
    Reloc {
        /// Call number asked about.
        call: u32,
        /// eip answered.
        eip: u64,
        /// Type answered (0 NONE, 1 CALL_REL, 2 JUMP_REL, 3 NOP).
        typ: u8,
    },
    /// A call through a ROM stub.
    Call {
        /// Sequence number.
        seq: u64,
        /// Call number.
        nr: u32,
        /// rdi, rsi, rdx, rcx.
        args: [u64; 4],
        /// rax as a signed value (`-errno` on refusal).
        result: i64,
        /// Why it was refused.
        reason: Option<String>,
        /// Its effective-state changes wait for the end of lazy mode.
        deferred: bool,
        /// Effective-state changes it made (or queued).
        changes: Vec<Change>,
    },
    /// SetLazyMode(0) applied the queued changes.
    Flush {
        /// The changes, in order.
        applied: Vec<Change>,
    },
    /// The guest called an address that is not a stub of the ROM.
    BadEntry {
        /// The address.
        entry: u64,
        /// Why it is not a stub.
        why: String,
    },
}

/// The trace; `Display` prints one event per line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VmiTrace {
    /// The last [`TRACE_CAP`] events, in order.
    pub events: VecDeque<VmiEvent>,
    /// Events dropped from the front to keep the bound.
    pub dropped: u64,
}

impl VmiTrace {
    /// Append `e`, dropping the oldest event at the bound.
    pub(crate) fn push(&mut self, e: VmiEvent) {
        if self.events.len() >= TRACE_CAP {
            self.events.pop_front();
            self.dropped += 1;
        }
        self.events.push_back(e);
    }

    /// Call numbers of the calls kept, in order.
    pub fn call_numbers(&self) -> Vec<u32> {
        self.events
            .iter()
            .filter_map(|e| match e {
                VmiEvent::Call { nr, .. } => Some(*nr),
                _ => None,
            })
            .collect()
    }

    /// The last call's result and refusal reason.
    pub fn last_call(&self) -> Option<(i64, Option<&str>)> {
        self.events.iter().rev().find_map(|e| match e {
            VmiEvent::Call { result, reason, .. } => Some((*result, reason.as_deref())),
            _ => None,
        })
    }
}

fn reloc_name(t: u8) -> &'static str {
    match Reloc::from_byte(t) {
        Some(r) => r.name(),
        None => "?",
    }
}

impl fmt::Display for VmiEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmiEvent::Init => f.write_str("VMI_Init() = 0"),
            VmiEvent::Reloc { call: nr, eip, typ } => write!(
                f,
                "GetRelocationInfo({nr} {}) = {} {eip:#x}",
                call::name(*nr).unwrap_or("undefined"),
                reloc_name(*typ)
            ),
            VmiEvent::Call {
                seq,
                nr,
                args,
                result,
                reason,
                deferred,
                changes,
            } => {
                write!(
                    f,
                    "#{seq:<4} {}({nr})({:#x}, {:#x}, {:#x}, {:#x}) = {result}",
                    call::name(*nr).unwrap_or("undefined"),
                    args[0],
                    args[1],
                    args[2],
                    args[3]
                )?;
                if let Some(r) = reason {
                    write!(f, "\n      refused: {r}")?;
                }
                for c in changes {
                    let tag = if *deferred { "deferred: " } else { "" };
                    write!(f, "\n      {tag}{c}")?;
                }
                Ok(())
            }
            VmiEvent::Flush { applied } => {
                write!(
                    f,
                    "      flush: {} deferred change(s) applied",
                    applied.len()
                )?;
                for c in applied {
                    write!(f, "\n        {c}")?;
                }
                Ok(())
            }
            VmiEvent::BadEntry { entry, why } => {
                write!(f, "      BAD ENTRY {entry:#x}: {why}")
            }
        }
    }
}

impl fmt::Display for VmiTrace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "hv-sim VMI trace ({} events):", self.events.len())?;
        if self.dropped > 0 {
            writeln!(
                f,
                "  ({} earlier events dropped; the trace keeps {TRACE_CAP})",
                self.dropped
            )?;
        }
        for e in &self.events {
            writeln!(f, "{e}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_with_a_dropped_count() {
        let mut t = VmiTrace::default();
        for i in 0..TRACE_CAP as u64 + 10 {
            t.push(VmiEvent::Reloc {
                call: 3,
                eip: i,
                typ: 1,
            });
        }
        assert_eq!(t.events.len(), TRACE_CAP);
        assert_eq!(t.dropped, 10);
        assert!(matches!(t.events[0], VmiEvent::Reloc { eip: 10, .. }));
        assert!(t.to_string().contains("10 earlier events dropped"));
    }

    #[test]
    fn changes_format_on_display() {
        let c = Change::GdtSlot {
            index: 6,
            value: 0x00cf_f300_0000_ffff,
        };
        assert_eq!(c.to_string(), "effective GDT[6] = 0x00cff3000000ffff");
        let none = Change::Ldt {
            sel: Selector::NULL,
            base: 0,
            entries: 0,
        };
        assert_eq!(none.to_string(), "effective LDT none (base 0x0)");
    }
}
