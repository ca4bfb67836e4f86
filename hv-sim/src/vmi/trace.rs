//! The record of everything a VMI guest asked of the simulated hypervisor.

use core::fmt;

use super::abi::{Reloc, call};

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
        changes: Vec<String>,
    },
    /// SetLazyMode(0) applied the queued changes.
    Flush {
        /// The changes, in order.
        applied: Vec<String>,
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
    /// Events in order.
    pub events: Vec<VmiEvent>,
}

impl VmiTrace {
    /// Call numbers of the calls made, in order.
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
        for e in &self.events {
            writeln!(f, "{e}")?;
        }
        Ok(())
    }
}
