//! The record of everything a domain's guest asked of the simulated Xen.
//!
//! Bounded: it keeps the last [`TRACE_CAP`] events and counts the ones it
//! dropped, so a domain's memory does not grow with its history (a
//! differential run issues tens of thousands of hypercalls).

use core::fmt;
use std::collections::VecDeque;

/// Events a trace keeps; older ones are dropped (and counted).
pub const TRACE_CAP: usize = 1 << 16;

/// One event in the trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TraceEvent {
    /// A hypercall (direct, or a multicall sub-call with `depth > 0`).
    Call {
        /// Sequence number.
        seq: u64,
        /// Calling vCPU.
        vcpu: usize,
        /// Multicall nesting depth (0 = issued directly).
        depth: u32,
        /// Hypercall number.
        nr: u64,
        /// Hypercall name.
        name: &'static str,
        /// Decoded arguments.
        args: String,
        /// Return value.
        result: i64,
        /// Why it was rejected (when `result < 0`), in plain words.
        reason: Option<String>,
        /// State changes it made.
        changes: Vec<String>,
    },
    /// A guest-visible fault delivered by a lazy LDT mapping attempt.
    LdtFault {
        /// vCPU.
        vcpu: usize,
        /// LDT entry index touched.
        index: u32,
        /// Outcome: `None` = mapped fine; `Some(text)` = the fault.
        fault: Option<String>,
        /// State changes.
        changes: Vec<String>,
    },
    /// A guest action real Xen would not have allowed to happen (e.g. a
    /// direct write to a live descriptor frame).
    Violation {
        /// What happened.
        message: String,
    },
}

/// The trace of a domain; `Display` prints it one event per line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Trace {
    /// The last [`TRACE_CAP`] events, in order.
    pub events: VecDeque<TraceEvent>,
    /// Events dropped from the front to keep the bound.
    pub dropped: u64,
    /// Of those, violations.
    pub dropped_violations: u64,
}

impl Trace {
    /// Append `e`, dropping the oldest event at the bound; returns the
    /// event's id for [`Trace::replace`].
    pub(crate) fn push(&mut self, e: TraceEvent) -> u64 {
        if self.events.len() >= TRACE_CAP {
            if matches!(self.events.pop_front(), Some(TraceEvent::Violation { .. })) {
                self.dropped_violations += 1;
            }
            self.dropped += 1;
        }
        self.events.push_back(e);
        self.dropped + self.events.len() as u64 - 1
    }

    /// Replace the event `id` (from [`Trace::push`]) if it is still kept.
    pub(crate) fn replace(&mut self, id: u64, e: TraceEvent) {
        if let Some(slot) = id
            .checked_sub(self.dropped)
            .and_then(|i| self.events.get_mut(usize::try_from(i).ok()?))
        {
            *slot = e;
        }
    }

    /// Forget everything.
    pub(crate) fn clear(&mut self) {
        *self = Trace::default();
    }

    /// The hypercall events only.
    pub fn calls(&self) -> impl Iterator<Item = &TraceEvent> {
        self.events
            .iter()
            .filter(|e| matches!(e, TraceEvent::Call { .. }))
    }

    /// The last hypercall's result and rejection reason, if any.
    pub fn last_call(&self) -> Option<(i64, Option<&str>)> {
        self.events.iter().rev().find_map(|e| match e {
            TraceEvent::Call { result, reason, .. } => Some((*result, reason.as_deref())),
            _ => None,
        })
    }
}

/// Symbolic errno name for a negative hypercall result.
pub fn errno_name(ret: i64) -> &'static str {
    match -ret {
        1 => "EPERM",
        2 => "ENOENT",
        3 => "ESRCH",
        11 => "EAGAIN",
        12 => "ENOMEM",
        13 => "EACCES",
        14 => "EFAULT",
        16 => "EBUSY",
        17 => "EEXIST",
        22 => "EINVAL",
        28 => "ENOSPC",
        38 => "ENOSYS",
        95 => "EOPNOTSUPP",
        _ => "E?",
    }
}

impl fmt::Display for TraceEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TraceEvent::Call {
                seq,
                vcpu,
                depth,
                nr,
                name,
                args,
                result,
                reason,
                changes,
            } => {
                let indent = "  ".repeat(*depth as usize);
                write!(f, "#{seq:<4} {indent}vcpu{vcpu} {name}({nr})({args}) = ")?;
                if *result < 0 {
                    write!(f, "-{} ({result})", errno_name(*result))?;
                } else {
                    write!(f, "{result}")?;
                }
                if let Some(r) = reason {
                    write!(f, "\n      {indent}rejected: {r}")?;
                }
                for c in changes {
                    write!(f, "\n      {indent}{c}")?;
                }
                Ok(())
            }
            TraceEvent::LdtFault {
                vcpu,
                index,
                fault,
                changes,
            } => {
                write!(f, "      vcpu{vcpu} LDT access to entry {index}: ")?;
                match fault {
                    None => f.write_str("mapped")?,
                    Some(t) => write!(f, "fault {t}")?,
                }
                for c in changes {
                    write!(f, "\n        {c}")?;
                }
                Ok(())
            }
            TraceEvent::Violation { message } => write!(f, "      VIOLATION: {message}"),
        }
    }
}

impl fmt::Display for Trace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "hv-sim Xen trace ({} events):", self.events.len())?;
        if self.dropped > 0 {
            writeln!(
                f,
                "  ({} earlier events dropped, {} of them violations; the trace keeps {TRACE_CAP})",
                self.dropped, self.dropped_violations
            )?;
        }
        for e in &self.events {
            writeln!(f, "{e}")?;
        }
        Ok(())
    }
}
