//! The page-table half of the model's invariants (hv-sim's, not Xen's):
//! references, types, pins, shadows and linear counts agree with the
//! tables' entries.

use super::*;

impl Inner {
    /// The first slot of table `pfn` whose entry holds no references: 512,
    /// or where a preempted validation stopped.
    fn validated_end(&self, pfn: usize) -> usize {
        self.pt.partial.get(&pfn).map_or(512, |p| p.next)
    }

    /// The references page tables, pins and roots hold.
    pub(crate) fn pt_users(&self) -> Result<PtUsers, String> {
        let n = self.pages();
        let mut u = PtUsers {
            typed: vec![0; n],
            refs: vec![0; n],
            rw: vec![0; n],
        };
        let roots = self
            .vcpus
            .iter()
            .filter_map(|vc| vc.cr3)
            .chain(self.pt.user_root.values().copied());
        for m in roots {
            let p = self
                .m2p(m)
                .ok_or(format!("root mfn {m:#x} is not the domain's"))?;
            u.typed[p] += 1;
            u.refs[p] += 1;
        }
        for &p in &self.pt.pinned {
            u.typed[p] += 1;
            u.refs[p] += 1;
        }
        if self.abi == Abi::Pv32 {
            return Ok(u);
        }
        for (pfn, f) in self.frames.iter().enumerate() {
            let Some(level) = f.typ.level() else {
                continue;
            };
            if f.type_count == 0 || self.pt.live_l1.contains_key(&pfn) {
                continue;
            }
            let mfn = self.mfn(pfn);
            let end = self.validated_end(pfn);
            if let Some(p) = self.pt.partial.get(&pfn) {
                // The partial state's own references, and the general
                // one it holds on a partial table at `next`.
                u.typed[pfn] += 1;
                u.refs[pfn] += 1;
                let e = self.ram.read_u64(pfn, p.next * 8);
                if let Some(t) = self.m2p(mfn_of(e)).filter(|_| p.child) {
                    u.refs[t] += 1;
                }
            }
            for slot in guest_slots(level).filter(|&s| s < end) {
                let e = self.ram.read_u64(pfn, slot * 8);
                if e & PTE_P == 0 {
                    continue;
                }
                let t = self.m2p(mfn_of(e));
                if level == 1 {
                    match t {
                        Some(t) => {
                            u.refs[t] += 1;
                            if e & PTE_RW != 0 {
                                u.rw[t] += 1;
                            }
                        }
                        None => {
                            return Err(format!(
                                "L1 mfn {mfn:#x}[{slot}] = {e:#x} maps a frame that is not the domain's"
                            ));
                        }
                    }
                    continue;
                }
                if mfn_of(e) == mfn {
                    continue;
                }
                let t = t.ok_or(format!(
                    "L{level} mfn {mfn:#x}[{slot}] = {e:#x} names a frame that is not the domain's"
                ))?;
                let tt = self.frames[t].typ;
                if tt != f.typ && Some(tt) != PageType::table(level - 1) {
                    return Err(format!(
                        "L{level} mfn {mfn:#x}[{slot}] = {e:#x} names a {} page",
                        tt.name()
                    ));
                }
                u.typed[t] += 1;
                u.refs[t] += 1;
            }
        }
        Ok(u)
    }

    /// Pins, validation, shadows and linear counts of page tables.
    pub(crate) fn pt_invariants(&self) -> Result<(), String> {
        for &p in &self.pt.pinned {
            let f = self.frames[p];
            if f.typ.level().is_none() || f.type_count == 0 {
                return Err(format!(
                    "pinned mfn {:#x} has type {} count {}",
                    self.mfn(p),
                    f.typ.name(),
                    f.type_count
                ));
            }
        }
        if self.abi == Abi::Pv32 {
            return Ok(());
        }
        if let Some(p) = self.pt.demoting.last() {
            return Err(format!(
                "the demotion of mfn {:#x} is still under way between calls",
                self.mfn(*p)
            ));
        }
        let mut lin = vec![(0i32, 0i32); self.pages()];
        for (pfn, f) in self.frames.iter().enumerate() {
            let mfn = self.mfn(pfn);
            let Some(level) = f.typ.level() else {
                if self.shadows.contains_key(pfn) && f.typ != PageType::SegDesc {
                    return Err(format!("mfn {mfn:#x} ({}) has a shadow", f.typ.name()));
                }
                continue;
            };
            let partial = self.pt.partial.contains_key(&pfn);
            if partial && (f.validated || f.type_count != 1) {
                return Err(format!(
                    "partial {} mfn {mfn:#x}: validated {} with {} references",
                    f.typ.name(),
                    f.validated,
                    f.type_count
                ));
            }
            if !partial && f.validated != (f.type_count > 0) {
                return Err(format!(
                    "{} mfn {mfn:#x}: validated {} with {} references",
                    f.typ.name(),
                    f.validated,
                    f.type_count
                ));
            }
            if self.shadows.contains_key(pfn) != f.validated {
                return Err(format!("{} mfn {mfn:#x}: shadow out of step", f.typ.name()));
            }
            if f.type_count == 0 || level == 1 {
                continue;
            }
            let end = self.validated_end(pfn);
            for slot in guest_slots(level).filter(|&s| s < end) {
                let e = self.ram.read_u64(pfn, slot * 8);
                if e & PTE_P == 0 || mfn_of(e) == mfn {
                    continue;
                }
                if let Some(t) = self.m2p(mfn_of(e))
                    && self.frames[t].typ == f.typ
                {
                    lin[pfn].0 += 1;
                    lin[t].1 += 1;
                }
            }
        }
        for (pfn, (entries, uses)) in lin.iter().enumerate() {
            let have = self.pt.linear.get(&pfn).copied().unwrap_or(0);
            if (*entries > 0 && *uses > 0) || have != entries - uses {
                return Err(format!(
                    "mfn {:#x}: linear_pt_count {have}, but {entries} linear entries and {uses} uses",
                    self.mfn(pfn)
                ));
            }
        }
        for (&v, &m) in &self.pt.user_root {
            if self.m2p(m).map(|p| self.frames[p].typ) != Some(PageType::L4) {
                return Err(format!("vcpu{v} user root mfn {m:#x} is not an L4"));
            }
        }
        Ok(())
    }
}
