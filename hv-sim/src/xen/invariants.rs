//! The model's invariants (hv-sim's, not Xen's): what must hold after
//! every call, checked by `XenDomain::check_invariants` and the property
//! and differential tests.

use super::*;
use crate::xen::error::InvariantError;

impl Inner {
    pub(super) fn invariants(&self) -> Result<(), InvariantError> {
        let krpl = u64::from(self.abi.krpl());
        // The entry's name is formatted only for the error (this runs after
        // every call in the fuzzer and the property tests).
        let check = |table: &'static str, v: usize, idx: usize, d: u64| {
            let present = d & (1 << 47) != 0;
            let s = d & (1 << 44) != 0;
            if present && s && (d >> 45) & 3 < krpl {
                return Err(InvariantError::LowDpl {
                    vcpu: v,
                    table,
                    index: idx,
                    desc: d,
                    krpl: krpl as u8,
                });
            }
            Ok(())
        };
        for (v, vc) in self.vcpus.iter().enumerate() {
            for idx in 0..(vc.gdt_frames.len() as u32 * 512) {
                check("GDT", v, idx as usize, self.gdt_entry(v, idx))?;
            }
            for (slot, m) in vc.ldt_mapped.iter().enumerate() {
                if let Some(mfn) = m {
                    let pfn = self.m2p(*mfn).ok_or_else(|| {
                        InvariantError::Accounting(format!(
                            "vcpu{v} LDT slot {slot} maps mfn {mfn:#x}, not the domain's"
                        ))
                    })?;
                    for i in 0..512 {
                        check("LDT", v, slot * 512 + i, self.ram.read_u64(pfn, i * 8))?;
                    }
                }
            }
        }
        // Type counts against mappings and users.
        let mut rw = vec![0u32; self.pages()];
        let mut mapped = vec![0u32; self.pages()];
        for p in &self.ptes {
            if p & PTE_P != 0
                && let Some(pfn) = self.m2p((p & PTE_MFN_MASK) >> 12)
            {
                mapped[pfn] += 1;
                if p & PTE_RW != 0 {
                    rw[pfn] += 1;
                }
            }
        }
        let mut seg = vec![0u32; self.pages()];
        for vc in &self.vcpus {
            for m in vc.gdt_frames.iter().chain(vc.ldt_mapped.iter().flatten()) {
                if let Some(pfn) = self.m2p(*m) {
                    seg[pfn] += 1;
                }
            }
        }
        // Page-table entries, pins and roots (pagetables.rs).
        let pt = self.pt_users().map_err(InvariantError::Accounting)?;
        for (pfn, r) in rw.iter_mut().enumerate() {
            *r += pt.rw[pfn];
        }
        for (pfn, fi) in self.frames.iter().enumerate() {
            let mfn = self.mfn(pfn);
            let want = match fi.typ {
                PageType::Writable => rw[pfn],
                PageType::SegDesc => seg[pfn],
                PageType::L1 | PageType::L2 | PageType::L3 | PageType::L4 => pt.typed[pfn],
                PageType::None => 0,
            };
            if fi.type_count != want {
                return Err(InvariantError::Accounting(format!(
                    "mfn {mfn:#x}: type {} count {} but {want} users",
                    fi.typ.name(),
                    fi.type_count
                )));
            }
            if fi.typ != PageType::Writable && rw[pfn] > 0 {
                return Err(InvariantError::Accounting(format!(
                    "mfn {mfn:#x} has type {} but is mapped writable",
                    fi.typ.name()
                )));
            }
            if fi.refs != mapped[pfn] + seg[pfn] + pt.refs[pfn] {
                return Err(InvariantError::Accounting(format!(
                    "mfn {mfn:#x}: refs {} but {} mappings and users",
                    fi.refs,
                    mapped[pfn] + seg[pfn] + pt.refs[pfn]
                )));
            }
            if fi.typ == PageType::SegDesc && !self.shadows.contains_key(pfn) {
                return Err(InvariantError::Accounting(format!(
                    "mfn {mfn:#x}: seg_desc without shadow"
                )));
            }
        }
        self.pt_invariants().map_err(InvariantError::Accounting)
    }
}

impl XenDomain {
    /// A copy of the trace.
    pub fn trace(&self) -> Trace {
        let mut g = self.lock();
        g.audit();
        g.trace.clone()
    }

    /// Keep the last `limit` events and the last `limit` changes of the
    /// trace (the default is [`TRACE_CAP`](super::trace::TRACE_CAP)), or
    /// everything (`None`: memory then grows with the domain's history).
    /// The trace starts afresh.
    pub fn set_trace_limit(&self, limit: Option<usize>) {
        self.lock().trace = Trace::with_limit(limit);
    }

    /// Forget the trace.
    pub fn clear_trace(&self) {
        self.lock().trace.clear();
    }

    /// The violations recorded so far.
    pub fn violations(&self) -> Vec<String> {
        let mut g = self.lock();
        g.audit();
        let mut v: Vec<String> = g
            .trace
            .events
            .iter()
            .filter_map(|e| match e {
                TraceEvent::Violation { message } => Some(message.clone()),
                _ => None,
            })
            .collect();
        if g.trace.dropped_violations > 0 {
            v.insert(
                0,
                format!(
                    "{} earlier violations dropped from the bounded trace",
                    g.trace.dropped_violations
                ),
            );
        }
        v
    }

    /// Check the model's invariants: every present code/data descriptor in a
    /// live GDT or mapped LDT page has DPL >= krpl; no seg_desc frame in use
    /// has a writable mapping; type counts match the mappings. Err = what
    /// is wrong.
    ///
    /// Like every entry point, it first looks for direct guest writes to
    /// descriptor frames (recording and undoing them as violations).
    ///
    /// # Errors
    /// The first broken invariant.
    pub fn check_invariants(&self) -> Result<(), InvariantError> {
        let mut g = self.lock();
        g.audit();
        g.invariants()
    }
}
