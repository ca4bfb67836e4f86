//! Xen's copy of every descriptor and page-table frame it has validated.
//!
//! On Xen a typed frame (seg_desc, L1..L4) has no writable mapping, so a
//! guest store to it faults. An in-process guest (a kernel's code run as a
//! test, whose pv64 direct map is host memory) can store to it anyway. The
//! model keeps what Xen validated or wrote in a shadow of each typed frame
//! and:
//!
//! * reads typed frames through the shadow ([`Inner::slot`], and
//!   [`Inner::load_bytes`] for hypercall arguments), so it never acts on a
//!   value Xen would not have let the guest store; a read that finds RAM
//!   different from the shadow marks the domain *suspect*;
//! * writes typed frames through [`Inner::set_slot`] (RAM and shadow
//!   together; a slot the guest had overwritten marks the domain suspect);
//! * audits ([`Inner::audit`]): compares every shadowed frame with RAM,
//!   undoes each direct store and records it as a violation. An audit
//!   runs at the end of an entry point that found the domain suspect, at
//!   every observation (`violations`, `check_invariants`, `trace`, the
//!   table readers) and, in strict mode, at the start of every entry point,
//!   so a strict test still fails at the first hypercall after the store.
//!
//! So a hypercall costs what it reads, not what the domain holds: there is
//! no per-call scan of every descriptor frame (issue 13), and nothing is
//! allocated on that path. What a direct store can no longer do is go
//! unnoticed: the audit at the next observation finds it.

use std::cell::Cell;
use std::collections::BTreeSet;

use super::{Inner, TraceEvent};

/// One frame's 512 slots as Xen last validated or wrote them.
pub(crate) type Slots = [u64; 512];

/// The shadows of a domain's typed frames, indexed by pfn.
#[derive(Default)]
pub(crate) struct Shadows {
    by_pfn: Vec<Option<Box<Slots>>>,
    /// The pfns that have a shadow, for audits (in pfn order).
    live: BTreeSet<usize>,
    /// A read or write found RAM different from a shadow since the last
    /// audit.
    suspect: Cell<bool>,
}

impl Shadows {
    /// Room for `pages` frames, none shadowed.
    pub(crate) fn new(pages: usize) -> Shadows {
        Shadows {
            by_pfn: (0..pages).map(|_| None).collect(),
            live: BTreeSet::new(),
            suspect: Cell::new(false),
        }
    }

    pub(crate) fn get(&self, pfn: usize) -> Option<&Slots> {
        self.by_pfn.get(pfn)?.as_deref()
    }

    pub(crate) fn contains_key(&self, pfn: usize) -> bool {
        self.get(pfn).is_some()
    }

    /// Start shadowing `pfn` with `slots` (replacing any shadow).
    pub(crate) fn insert(&mut self, pfn: usize, slots: Box<Slots>) {
        if let Some(s) = self.by_pfn.get_mut(pfn) {
            *s = Some(slots);
            self.live.insert(pfn);
        }
    }

    /// Stop shadowing `pfn`.
    pub(crate) fn remove(&mut self, pfn: usize) {
        if let Some(s) = self.by_pfn.get_mut(pfn) {
            *s = None;
            self.live.remove(&pfn);
        }
    }

    /// The shadowed pfns, in order.
    pub(crate) fn pfns(&self) -> impl Iterator<Item = usize> + '_ {
        self.live.iter().copied()
    }

    pub(crate) fn mark_suspect(&self) {
        self.suspect.set(true);
    }

    pub(crate) fn is_suspect(&self) -> bool {
        self.suspect.get()
    }
}

impl Inner {
    /// Slot `slot` of frame `pfn` as Xen's memory holds it: the shadow of
    /// a typed frame (RAM otherwise). A typed frame whose RAM differs marks
    /// the domain suspect; the next audit undoes the store.
    pub(crate) fn slot(&self, pfn: usize, slot: usize) -> u64 {
        let ram = self.ram.read_u64(pfn, slot * 8);
        match self.shadows.get(pfn) {
            Some(sh) => {
                if sh[slot] != ram {
                    self.shadows.mark_suspect();
                }
                sh[slot]
            }
            None => ram,
        }
    }

    /// Xen's own write of slot `slot` of frame `pfn` (RAM and shadow). A
    /// slot the guest had stored to directly is audited first, so Xen's
    /// write does not hide the violation.
    pub(crate) fn set_slot(&mut self, pfn: usize, slot: usize, v: u64) {
        if let Some(sh) = self.shadows.get(pfn)
            && sh[slot] != self.ram.read_u64(pfn, slot * 8)
        {
            self.audit();
        }
        if let Some(sh) = self
            .shadows
            .by_pfn
            .get_mut(pfn)
            .and_then(|s| s.as_deref_mut())
        {
            sh[slot] = v;
        }
        self.ram.write_u64(pfn, slot * 8, v);
    }

    /// An entry point begins: in strict mode, audit now, so the first
    /// hypercall after a direct store fails.
    pub(crate) fn enter(&mut self) {
        if self.strict {
            self.audit();
        }
    }

    /// The audit when a read or write found a direct store.
    pub(crate) fn audit_if_suspect(&mut self) {
        if self.shadows.is_suspect() {
            self.audit();
        }
    }

    /// Compare every shadowed frame with RAM: each frame the guest stored
    /// to directly is restored from its shadow and recorded as a
    /// violation (on Xen the store would have faulted). Allocates only to
    /// record what it finds.
    pub(crate) fn audit(&mut self) {
        self.shadows.suspect.set(false);
        let mut found: Vec<(usize, usize, u64, u64)> = Vec::new();
        for pfn in self.shadows.pfns() {
            let Some(sh) = self.shadows.get(pfn) else {
                continue;
            };
            if let Some(slot) = (0..512).find(|&i| self.ram.read_u64(pfn, i * 8) != sh[i]) {
                found.push((pfn, slot, self.ram.read_u64(pfn, slot * 8), sh[slot]));
            }
        }
        for (pfn, slot, now, was) in found {
            if let Some(sh) = self.shadows.get(pfn) {
                for (i, v) in sh.iter().enumerate() {
                    self.ram.write_u64(pfn, i * 8, *v);
                }
            }
            let mfn = self.mfn(pfn);
            let (what, how) = if self.frames[pfn].typ.level().is_some() {
                (
                    "page-table",
                    "Page tables may only change through mmu_update",
                )
            } else {
                (
                    "descriptor",
                    "Descriptor pages may only change through update_descriptor",
                )
            };
            let m = format!(
                "guest wrote {what} frame mfn {mfn:#x} directly while it had no writable mapping \
                 (slot {slot}: {was:#018x} -> {now:#018x}); on Xen that store faults, so hv-sim undid it. \
                 {how}"
            );
            self.trace
                .push(TraceEvent::Violation { message: m.clone() });
            self.strict_failures.push(m);
        }
    }
}
