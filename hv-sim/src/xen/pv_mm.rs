//! `arch/x86/pv/mm.c`: the lazy LDT (`pv_map_ldt_shadow_page`), mapped
//! page by page on the guest's first access.

use super::*;

impl Inner {
    pub(super) fn map_ldt(&mut self, v: usize, index: u32, user: bool) -> Result<u64, GuestFault> {
        let vc = &self.vcpus[v];
        let off = u64::from(index) * 8;
        let gp = |reason: String| GuestFault {
            vector: 13,
            error_code: ((off as u32) & !3) | 4,
            cr2: None,
            reason,
        };
        if index >= vc.ldt_ents {
            return Err(gp(format!(
                "LDT index {index} is beyond the LDT limit ({} entries)",
                vc.ldt_ents
            )));
        }
        if let Some(d) = self.ldt_entry_mapped(v, index) {
            return Ok(d);
        }
        let mut linear = vc.ldt_base.wrapping_add(off);
        if self.abi == Abi::Pv32 {
            linear &= 0xFFFF_FFFF;
        }
        if self.abi == Abi::Pv64 && !is_canonical(linear) {
            return Err(gp(format!("LDT address {linear:#x} is non-canonical")));
        }
        let pf = |reason: String| GuestFault {
            vector: 14,
            error_code: if user { 4 } else { 0 },
            cr2: Some(linear),
            reason,
        };
        let page_va = linear & !0xFFF;
        let pte = if self.addr_ok(linear) {
            self.va_page(page_va).map(|i| self.ptes[i]).unwrap_or(0)
        } else {
            0
        };
        if pte & PTE_P == 0 {
            return Err(pf(format!("LDT page at va {page_va:#x} is not mapped")));
        }
        let mfn = (pte & PTE_MFN_MASK) >> 12;
        if let Err(r) = self.get_segdesc(mfn) {
            return Err(pf(format!("LDT page at va {page_va:#x}: {r}")));
        }
        let slot = (off as usize) / PAGE_SIZE;
        self.vcpus[v].ldt_mapped[slot] = Some(mfn);
        self.note(Change::LdtMapped { slot, mfn });
        Ok(self.ldt_entry_mapped(v, index).unwrap_or(0))
    }

    pub(super) fn ldt_entry_mapped(&self, v: usize, idx: u32) -> Option<u64> {
        let vc = &self.vcpus[v];
        let off = idx as usize * 8;
        let mfn = (*vc.ldt_mapped.get(off / PAGE_SIZE)?)?;
        let pfn = self.m2p(mfn)?;
        Some(self.slot(pfn, (off % PAGE_SIZE) / 8))
    }
}

impl XenDomain {
    /// The guest touched LDT entry `index` on vCPU `v` from kernel mode (a
    /// fault in Xen's LDT area): validate and map its page lazily as Xen
    /// does. Returns the descriptor, or the fault Xen would inject.
    pub fn touch_ldt(&self, v: usize, index: u32) -> Result<u64, GuestFault> {
        self.touch_ldt_from(v, index, false)
    }

    /// [`XenDomain::touch_ldt`] with the guest's mode at the time of the
    /// access (`user_mode` sets the U bit of an injected #PF).
    pub fn touch_ldt_from(&self, v: usize, index: u32, user_mode: bool) -> Result<u64, GuestFault> {
        let mut g = self.lock();
        assert!(v < g.vcpus.len(), "hv-sim: no vCPU {v}");
        g.strict_failures.clear();
        g.enter();
        let from = g.trace.next_change();
        let id = g.trace.push(TraceEvent::LdtFault {
            vcpu: v,
            index,
            fault: None,
            changes: ChangeIds::default(),
        });
        g.owner = Some(id);
        let r = g.map_ldt(v, index, user_mode);
        g.owner = None;
        let to = g.trace.next_change();
        if let Some(TraceEvent::LdtFault { fault, changes, .. }) = g.trace.get_mut(id) {
            *fault = r.as_ref().err().map(|f| f.to_string());
            *changes = ChangeIds {
                owner: id,
                ids: from..to,
            };
        }
        g.audit_if_suspect();
        if let Err(f) = &r {
            let m = format!("LDT entry {index} on vcpu{v}: Xen would inject {f}");
            g.strict_failures.push(m);
        }
        if let Some(msg) = g.finish_strict() {
            drop(g);
            panic!("{msg}");
        }
        r
    }
}
