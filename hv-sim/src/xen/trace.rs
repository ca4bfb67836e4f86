//! The record of everything a domain's guest asked of the simulated Xen.
//!
//! Stored raw, formatted only when displayed: a hypercall's event holds its
//! number and argument registers, and its state changes are [`Change`]
//! values in the trace's own change log, so recording a call allocates
//! nothing (issue 13).
//!
//! Bounded by default: it keeps the last [`TRACE_CAP`] events and the last
//! [`TRACE_CAP`] changes and counts what it dropped, so a domain's memory
//! does not grow with its history (a differential run issues tens of
//! thousands of hypercalls). `XenDomain::set_trace_limit` sets another
//! bound, or none.

use core::fmt;
use core::ops::Range;
use std::collections::VecDeque;

use super::descriptor_policy::Abi;
use super::mem::PageType;

/// Events (and changes) a bounded trace keeps; older ones are dropped and
/// counted.
pub const TRACE_CAP: usize = 1 << 12;

/// How a page-table entry was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryVia {
    /// `mmu_update` with the new entry validated.
    Validated,
    /// Xen's fast path: only A/D or software bits changed.
    FastPath,
    /// The writable page-table emulation (`ptwr_emulated_update`).
    Ptwr,
}

/// A state change a call made, kept raw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// `set_trap_table(NULL)`: every virtual IDT entry cleared.
    TrapTableCleared,
    /// One virtual IDT entry installed.
    Trap {
        /// Vector.
        vector: u8,
        /// Code selector (RPL raised to krpl).
        cs: u16,
        /// Handler address.
        address: u64,
        /// Flags (DPL, interrupt gate bit).
        flags: u8,
    },
    /// A new GDT: `entries` entries in `frames`.
    Gdt {
        /// Entries.
        entries: u32,
        /// The frames' mfns (14 at most).
        frames: Box<[u64]>,
    },
    /// The kernel stack for ring transitions.
    KernelStack {
        /// Stack segment (RPL raised to krpl).
        ss: u64,
        /// Stack pointer.
        sp: u64,
    },
    /// `update_descriptor` stored `value` at machine address `maddr`.
    Descriptor {
        /// Machine address.
        maddr: u64,
        /// The value Xen stored (after its fix-ups).
        value: u64,
    },
    /// A direct-map PTE changed (`update_va_mapping`).
    Pte {
        /// The page's virtual address.
        va: u64,
        /// Old PTE.
        old: u64,
        /// New PTE.
        new: u64,
    },
    /// `set_segment_base` of FS, user GS or kernel GS.
    SegmentBase {
        /// "fs_base", "gs_base_user" or "gs_base_kernel".
        which: &'static str,
        /// New base.
        base: u64,
    },
    /// `SEGBASE_GS_USER_SEL` loaded user %gs.
    UserGs {
        /// Selector (RPL 3).
        sel: u16,
        /// Its base.
        base: u64,
    },
    /// `SEGBASE_GS_USER_SEL` faulted: %gs left null, result 0 as on Xen.
    UserGsFaulted {
        /// Selector.
        sel: u16,
        /// Why the load faulted.
        why: String,
    },
    /// The CPU set a descriptor's accessed bit while loading `sel`.
    AccessedBit {
        /// Selector loaded.
        sel: u16,
        /// The descriptor afterwards.
        desc: u64,
    },
    /// An iret sub-call ended a multicall with result `rc`.
    MulticallIret {
        /// Entry index.
        entry: u64,
        /// The multicall's result.
        rc: i64,
    },
    /// The final-status continuation of mmu_update / mmuext_op.
    PreemptedStatus {
        /// "requests" or "ops".
        what: &'static str,
        /// The result (foreigndom).
        rc: i64,
    },
    /// `MMUEXT_SET_LDT`.
    Ldt {
        /// Base address.
        base: u64,
        /// Entries.
        entries: u64,
    },
    /// A page of the LDT was mapped (lazily, on first use).
    LdtMapped {
        /// LDT page slot (0..16).
        slot: usize,
        /// Its mfn.
        mfn: u64,
    },
    /// A page of the LDT was unmapped.
    LdtUnmapped {
        /// LDT page slot.
        slot: usize,
        /// Its mfn.
        mfn: u64,
    },
    /// A frame was validated and took a type (seg_desc or L1..L4).
    Typed {
        /// Frame.
        mfn: u64,
        /// Its new type.
        typ: PageType,
    },
    /// A seg_desc frame with no users lost its type (it became writable).
    SegDescLost {
        /// Frame.
        mfn: u64,
    },
    /// A page-table frame lost its last type reference.
    Devalidated {
        /// Frame.
        mfn: u64,
        /// The type it had.
        typ: PageType,
    },
    /// A linear page-table entry: `from` maps `to`, of the same level.
    Linear {
        /// Table holding the entry.
        from: u64,
        /// Level of both.
        level: u8,
        /// Table mapped.
        to: u64,
    },
    /// `mmu_update` wrote a page-table entry.
    Entry {
        /// Level of the table.
        level: u8,
        /// The table's mfn.
        mfn: u64,
        /// Slot.
        slot: usize,
        /// Old entry.
        old: u64,
        /// New entry.
        new: u64,
        /// Which path wrote it.
        via: EntryVia,
    },
    /// `mmu_update` wrote a slot of a page with no page-table type.
    Slot {
        /// Frame.
        mfn: u64,
        /// Slot.
        slot: usize,
        /// Value.
        value: u64,
        /// The frame had no type in use and became writable.
        fresh: bool,
    },
    /// `MMU_MACHPHYS_UPDATE`.
    M2p {
        /// Machine frame.
        mfn: u64,
        /// Its new pseudo-physical frame.
        gpfn: u64,
    },
    /// `MMUEXT_CLEAR_PAGE`.
    Cleared {
        /// Frame.
        mfn: u64,
    },
    /// `MMUEXT_COPY_PAGE`.
    Copied {
        /// Source.
        src: u64,
        /// Destination.
        dst: u64,
    },
    /// A page table was pinned.
    Pinned {
        /// Frame.
        mfn: u64,
        /// Its type.
        typ: PageType,
    },
    /// A page table was unpinned.
    Unpinned {
        /// Frame.
        mfn: u64,
    },
    /// A new kernel page-table base (mapped LDT pages dropped).
    Cr3 {
        /// The root's mfn.
        mfn: u64,
    },
    /// A new user page-table base.
    UserRoot {
        /// The root's mfn.
        mfn: u64,
    },
    /// The call was preempted: the guest re-executes hypercall `op` with
    /// `args` (`hypercall_create_continuation`).
    Preempted {
        /// Hypercall of the continuation.
        op: u64,
        /// Its arguments.
        args: [u64; 6],
    },
    /// `SCHEDOP_shutdown`.
    Shutdown {
        /// Reason code.
        reason: u32,
        /// Its name.
        name: &'static str,
    },
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::TrapTableCleared => f.write_str("virtual IDT cleared (NULL table)"),
            Change::Trap {
                vector,
                cs,
                address,
                flags,
            } => write!(
                f,
                "trap[{vector}] = cs {cs:#x} address {address:#x} flags {flags:#x}"
            ),
            Change::Gdt { entries, frames } => {
                write!(f, "GDT = {entries} entries in frames [")?;
                for (i, m) in frames.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{m:#x}")?;
                }
                f.write_str("]")
            }
            Change::KernelStack { ss, sp } => {
                write!(f, "kernel_ss = {ss:#x}, kernel_sp = {sp:#x}")
            }
            Change::Descriptor { maddr, value } => write!(f, "[{maddr:#x}] = {value:#018x}"),
            Change::Pte { va, old, new } => write!(f, "pte[va {va:#x}] {old:#x} -> {new:#x}"),
            Change::SegmentBase { which, base } => write!(f, "{which} = {base:#x}"),
            Change::UserGs { sel, base } => write!(f, "user %gs = {sel:#x} (base {base:#x})"),
            Change::UserGsFaulted { sel, why } => write!(
                f,
                "loading user %gs = {sel:#x} faulted ({why}); %gs left null, result 0 as on Xen"
            ),
            Change::AccessedBit { sel, desc } => write!(
                f,
                "CPU set the accessed bit of selector {sel:#x}'s descriptor: {desc:#018x}"
            ),
            Change::MulticallIret { entry, rc } => write!(
                f,
                "entry {entry} was iret: the multicall stops and returns its result ({rc})"
            ),
            Change::PreemptedStatus { what, rc } => write!(
                f,
                "count = MMU_UPDATE_PREEMPTED with NULL {what}: returns foreigndom ({rc})"
            ),
            Change::Ldt { base, entries } => write!(
                f,
                "LDT = base {base:#x}, {entries} entries (pages mapped on first use)"
            ),
            Change::LdtMapped { slot, mfn } => write!(f, "LDT slot {slot} maps mfn {mfn:#x}"),
            Change::LdtUnmapped { slot, mfn } => {
                write!(f, "LDT slot {slot} (mfn {mfn:#x}) unmapped")
            }
            Change::Typed {
                mfn,
                typ: PageType::SegDesc,
            } => write!(f, "mfn {mfn:#x} validated and typed seg_desc"),
            Change::Typed { mfn, typ } => write!(f, "mfn {mfn:#x} validated as {}", typ.name()),
            Change::SegDescLost { mfn } => write!(f, "mfn {mfn:#x} loses its seg_desc type"),
            Change::Devalidated { mfn, typ } => {
                write!(f, "mfn {mfn:#x} devalidated ({})", typ.name())
            }
            Change::Linear { from, level, to } => {
                write!(f, "mfn {from:#x} maps L{level} mfn {to:#x} linearly")
            }
            Change::Entry {
                level,
                mfn,
                slot,
                old,
                new,
                via,
            } => {
                let how = match via {
                    EntryVia::Validated => "",
                    EntryVia::FastPath => " (fast path)",
                    EntryVia::Ptwr => " (writable page-table emulation)",
                };
                write!(f, "L{level} mfn {mfn:#x}[{slot}] {old:#x} -> {new:#x}{how}")
            }
            Change::Slot {
                mfn,
                slot,
                value,
                fresh,
            } => write!(
                f,
                "[mfn {mfn:#x} slot {slot}] = {value:#x} ({})",
                if *fresh {
                    "no type in use: now writable"
                } else {
                    "writable page"
                }
            ),
            Change::M2p { mfn, gpfn } => write!(f, "m2p[{mfn:#x}] = {gpfn:#x}"),
            Change::Cleared { mfn } => write!(f, "mfn {mfn:#x} cleared"),
            Change::Copied { src, dst } => write!(f, "mfn {src:#x} copied to mfn {dst:#x}"),
            Change::Pinned { mfn, typ } => write!(f, "mfn {mfn:#x} pinned as {}", typ.name()),
            Change::Unpinned { mfn } => write!(f, "mfn {mfn:#x} unpinned"),
            Change::Cr3 { mfn } => write!(f, "cr3 = mfn {mfn:#x}; mapped LDT pages dropped"),
            Change::UserRoot { mfn } => write!(f, "user root = mfn {mfn:#x}"),
            Change::Preempted { op, args } => write!(
                f,
                "preempted: continues as {}({:#x}, {:#x})",
                super::domain::hypercall_name(*op),
                args[0],
                args[1]
            ),
            Change::Shutdown { reason, name } => {
                write!(f, "domain shut down: reason {reason} ({name})")
            }
        }
    }
}

/// Where an event's changes are in its trace's change log: the ids in
/// `ids` whose owner is the event `owner` (a multicall's sub-calls log
/// theirs in between). See [`Trace::changes`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChangeIds {
    /// The event's id.
    pub owner: u64,
    /// Change ids logged while it ran.
    pub ids: Range<u64>,
}

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
        /// The ABI the arguments are in.
        abi: Abi,
        /// Argument registers as the handler saw them.
        args: [u64; 6],
        /// Return value.
        result: i64,
        /// Why it was rejected (when `result < 0`), in plain words.
        reason: Option<String>,
        /// State changes it made.
        changes: ChangeIds,
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
        changes: ChangeIds,
    },
    /// A guest action real Xen would not have allowed to happen (e.g. a
    /// direct write to a live descriptor frame).
    Violation {
        /// What happened.
        message: String,
    },
}

impl TraceEvent {
    /// A call's arguments decoded for its hypercall and ABI
    /// (`maddr=0x.., desc=0x..`); `None` for other events.
    pub fn args_text(&self) -> Option<String> {
        match self {
            TraceEvent::Call { nr, abi, args, .. } => Some(decode_args(*nr, *abi, args)),
            _ => None,
        }
    }
}

/// Hypercall `nr`'s arguments `a` in words (pv32 values split across
/// registers are joined).
pub fn decode_args(nr: u64, abi: Abi, a: &[u64; 6]) -> String {
    match (nr, abi) {
        (0, _) => format!("table={:#x}", a[0]),
        (1, _) => format!(
            "reqs={:#x}, count={:#x}, pdone={:#x}, foreigndom={:#x}",
            a[0], a[1] as u32, a[2], a[3] as u32
        ),
        (2, _) => format!("frame_list={:#x}, entries={}", a[0], a[1] as u32),
        (3, _) => format!("ss={:#x}, sp={:#x}", a[0], a[1]),
        (10, Abi::Pv64) => format!("maddr={:#x}, desc={:#018x}", a[0], a[1]),
        (10, Abi::Pv32) => format!(
            "maddr={:#x}, desc={:#018x}",
            a[0] | a[1] << 32,
            a[2] | a[3] << 32
        ),
        (13, _) => format!("list={:#x}, nr={}", a[0], a[1]),
        (14, Abi::Pv64) => format!("va={:#x}, pte={:#x}, flags={:#x}", a[0], a[1], a[2]),
        (14, Abi::Pv32) => format!(
            "va={:#x}, pte={:#x}, flags={:#x}",
            a[0],
            a[1] | a[2] << 32,
            a[3]
        ),
        (25, _) => format!("which={}, base={:#x}", a[0] as u32, a[1]),
        (26, _) => format!(
            "ops={:#x}, count={:#x}, pdone={:#x}, foreigndom={:#x}",
            a[0], a[1] as u32, a[2], a[3] as u32
        ),
        _ => format!(
            "{:#x}, {:#x}, {:#x}, {:#x}, {:#x}",
            a[0], a[1], a[2], a[3], a[4]
        ),
    }
}

/// The trace of a domain; `Display` prints it one event per line, with
/// each call's changes under it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trace {
    /// The kept events, in order.
    pub events: VecDeque<TraceEvent>,
    /// Events dropped from the front to keep the bound.
    pub dropped: u64,
    /// Of those, violations.
    pub dropped_violations: u64,
    /// The change log: (owner event id, change), in order.
    changes: VecDeque<(u64, Change)>,
    /// Changes dropped from the front of the log.
    changes_dropped: u64,
    /// The bound on events and on changes (`None`: keep everything).
    cap: Option<usize>,
}

impl Default for Trace {
    fn default() -> Trace {
        Trace {
            events: VecDeque::new(),
            dropped: 0,
            dropped_violations: 0,
            changes: VecDeque::new(),
            changes_dropped: 0,
            cap: Some(TRACE_CAP),
        }
    }
}

impl Trace {
    /// A trace that keeps the last `limit` events and changes, or (`None`)
    /// all of them (memory then grows with the domain's history). A limit
    /// of 0 keeps one.
    pub fn with_limit(limit: Option<usize>) -> Trace {
        Trace {
            cap: limit.map(|l| l.max(1)),
            ..Trace::default()
        }
    }

    /// Whether this trace drops old events.
    pub fn is_bounded(&self) -> bool {
        self.cap.is_some()
    }

    /// Append `e`, dropping the oldest event at the bound; returns the
    /// event's id for [`Trace::replace`] and [`Trace::log`].
    #[inline]
    pub(crate) fn push(&mut self, e: TraceEvent) -> u64 {
        if self.cap.is_some_and(|cap| self.events.len() >= cap) {
            if matches!(self.events.pop_front(), Some(TraceEvent::Violation { .. })) {
                self.dropped_violations += 1;
            }
            self.dropped += 1;
        }
        self.events.push_back(e);
        self.dropped + self.events.len() as u64 - 1
    }

    /// The event `id` (from [`Trace::push`]) if it is still kept.
    #[inline]
    pub(crate) fn get_mut(&mut self, id: u64) -> Option<&mut TraceEvent> {
        let i = usize::try_from(id.checked_sub(self.dropped)?).ok()?;
        self.events.get_mut(i)
    }

    /// The id the next logged change will get.
    #[inline]
    pub(crate) fn next_change(&self) -> u64 {
        self.changes_dropped + self.changes.len() as u64
    }

    /// Log change `c` made by event `owner`, dropping the oldest change at
    /// the bound.
    #[inline]
    pub(crate) fn log(&mut self, owner: u64, c: Change) {
        if self.cap.is_some_and(|cap| self.changes.len() >= cap) {
            self.changes.pop_front();
            self.changes_dropped += 1;
        }
        self.changes.push_back((owner, c));
    }

    /// The changes of `e` that are still kept, in order.
    pub fn changes<'a>(&'a self, e: &'a TraceEvent) -> impl Iterator<Item = &'a Change> + 'a {
        let ids = match e {
            TraceEvent::Call { changes, .. } | TraceEvent::LdtFault { changes, .. } => {
                changes.clone()
            }
            TraceEvent::Violation { .. } => ChangeIds::default(),
        };
        let from = ids.ids.start.max(self.changes_dropped) - self.changes_dropped;
        let to = ids.ids.end.max(self.changes_dropped) - self.changes_dropped;
        let to = (to as usize).min(self.changes.len());
        let from = (from as usize).min(to);
        self.changes
            .range(from..to)
            .filter(move |(o, _)| *o == ids.owner)
            .map(|(_, c)| c)
    }

    /// How many of `e`'s changes the bound dropped.
    pub fn changes_lost(&self, e: &TraceEvent) -> u64 {
        match e {
            TraceEvent::Call { changes, .. } | TraceEvent::LdtFault { changes, .. } => self
                .changes_dropped
                .saturating_sub(changes.ids.start)
                .min(changes.ids.end.saturating_sub(changes.ids.start)),
            TraceEvent::Violation { .. } => 0,
        }
    }

    /// Forget everything (the bound stays).
    pub(crate) fn clear(&mut self) {
        *self = Trace {
            cap: self.cap,
            ..Trace::default()
        };
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

    /// One event with its changes, for printing.
    pub fn display<'a>(&'a self, e: &'a TraceEvent) -> EventDisplay<'a> {
        EventDisplay { trace: self, e }
    }
}

/// Symbolic errno name for a negative hypercall result.
pub fn errno_name(ret: i64) -> &'static str {
    match ret.checked_neg().unwrap_or(0) {
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

/// An event with its changes ([`Trace::display`]).
pub struct EventDisplay<'a> {
    trace: &'a Trace,
    e: &'a TraceEvent,
}

impl fmt::Display for EventDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let indent = match self.e {
            TraceEvent::Call {
                seq,
                vcpu,
                depth,
                nr,
                name,
                abi,
                args,
                result,
                reason,
                ..
            } => {
                let indent = "  ".repeat(*depth as usize);
                let args = decode_args(*nr, *abi, args);
                write!(f, "#{seq:<4} {indent}vcpu{vcpu} {name}({nr})({args}) = ")?;
                if *result < 0 {
                    write!(f, "-{} ({result})", errno_name(*result))?;
                } else {
                    write!(f, "{result}")?;
                }
                if let Some(r) = reason {
                    write!(f, "\n      {indent}rejected: {r}")?;
                }
                format!("      {indent}")
            }
            TraceEvent::LdtFault {
                vcpu, index, fault, ..
            } => {
                write!(f, "      vcpu{vcpu} LDT access to entry {index}: ")?;
                match fault {
                    None => f.write_str("mapped")?,
                    Some(t) => write!(f, "fault {t}")?,
                }
                "        ".to_string()
            }
            TraceEvent::Violation { message } => return write!(f, "      VIOLATION: {message}"),
        };
        let lost = self.trace.changes_lost(self.e);
        if lost > 0 {
            write!(
                f,
                "\n{indent}({lost} changes dropped from the bounded trace)"
            )?;
        }
        for c in self.trace.changes(self.e) {
            write!(f, "\n{indent}{c}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Trace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "hv-sim Xen trace ({} events):", self.events.len())?;
        if self.dropped > 0 {
            writeln!(
                f,
                "  ({} earlier events dropped, {} of them violations; the trace keeps {})",
                self.dropped,
                self.dropped_violations,
                self.cap.unwrap_or(usize::MAX)
            )?;
        }
        for e in &self.events {
            writeln!(f, "{}", self.display(e))?;
        }
        Ok(())
    }
}
