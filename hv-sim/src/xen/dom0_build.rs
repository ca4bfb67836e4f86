//! `arch/x86/pv/dom0_build.c` `mark_pv_pt_pages_rdonly`: the bootstrap
//! page tables Xen's dom0 builder wrote, typed and pinned as Xen types
//! them.

use super::*;
use crate::xen::error::BootstrapError;

impl Inner {
    /// Type the bootstrap tables in `pfns` (the first is the L4) as
    /// `mark_pv_pt_pages_rdonly` does: mapped read-only, each validated
    /// with one type reference from its parent's entry, the L4 pinned and
    /// installed as vCPU 0's root. Their L1s become the live ones.
    pub(crate) fn install_bootstrap(
        &mut self,
        pfns: std::ops::Range<u64>,
    ) -> Result<(), BootstrapError> {
        let owned = |p: u64| p >= self.reserved as u64 && p < self.pages() as u64;
        if pfns.is_empty() {
            return Err(BootstrapError::Empty);
        }
        for pfn in pfns.clone() {
            let p = pfn as usize;
            if !owned(pfn) {
                return Err(BootstrapError::NotOwned { pfn });
            }
            let f = &self.frames[p];
            if f.typ != PageType::Writable || f.type_count != 1 || f.refs != 1 {
                return Err(BootstrapError::InUse { pfn });
            }
        }
        // Walk the tables from the root: (pfn, level, VA of its slot 0).
        let root = pfns.start as usize;
        let mut level_of: BTreeMap<usize, (u8, u64)> = BTreeMap::new();
        let mut todo = vec![(root, 4u8, 0u64)];
        while let Some((p, level, va)) = todo.pop() {
            if level_of.insert(p, (level, va)).is_some() {
                return Err(BootstrapError::ReachedTwice { pfn: p as u64 });
            }
            if level == 1 {
                continue;
            }
            for slot in guest_slots(level) {
                let e = self.ram.read_u64(p, slot * 8);
                if e & PTE_P == 0 {
                    continue;
                }
                let shift = 12 + 9 * u32::from(level - 1);
                let child_va = va + ((slot as u64) << shift);
                match self.m2p(mfn_of(e)).filter(|c| pfns.contains(&(*c as u64))) {
                    Some(c) => todo.push((c, level - 1, child_va)),
                    None => {
                        return Err(BootstrapError::ForeignEntry {
                            level,
                            pfn: p as u64,
                            slot,
                            entry: e,
                        });
                    }
                }
            }
        }
        if level_of.len() != pfns.clone().count() {
            return Err(BootstrapError::Unreachable);
        }
        for (&p, &(level, va)) in &level_of {
            self.ptes[p] &= !PTE_RW;
            let f = &mut self.frames[p];
            f.typ = PageType::table(level).unwrap_or(PageType::None);
            f.validated = true;
            // The parent's entry (the root: guest_table and the pin).
            let users = if p == root { 2 } else { 1 };
            f.type_count = users;
            f.refs += users;
            if level == 1 {
                self.pt.live_l1.insert(p, va);
                for slot in 0..512 {
                    let e = self.ram.read_u64(p, slot * 8);
                    if let Some(i) = self.live_index(p, slot) {
                        let cur = self.ptes[i];
                        if e & PTE_P != 0 && (e ^ cur) & (PTE_MFN_MASK | PTE_P | PTE_RW) == 0 {
                            self.ptes[i] = e;
                        }
                    }
                }
            }
        }
        self.init_xen_l4_slots(root);
        for &p in level_of.keys() {
            self.shadows.insert(p, self.ram.page_slots(p));
        }
        self.pt.pinned.insert(root);
        self.vcpus[0].cr3 = Some(self.mfn(root));
        Ok(())
    }
}
