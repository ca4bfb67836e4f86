//! `arch/x86/mm.c` `do_mmuext_op`, the page-table commands: pins, the
//! base pointers (`new_guest_cr3`), and the page commands (the `switch`
//! that calls them is `mmuext_cmd` in `mm.rs`).

use super::*;

impl Inner {
    /// MMUEXT_CLEAR_PAGE: the frame must take the writable type.
    pub(crate) fn clear_page(&mut self, pg: PgOwner, mfn: u64) -> Hc {
        let pfn = self.writable_page_of(pg, mfn)?;
        for i in 0..512 {
            self.ram.write_u64(pfn, i * 8, 0);
        }
        self.frames[pfn].type_count -= 1;
        self.put_page(pfn);
        self.note(Change::Cleared { mfn });
        Ok(0)
    }

    /// MMUEXT_COPY_PAGE from `src` (any of the owner's frames) to `dst`
    /// (which must take the writable type).
    pub(crate) fn copy_page(&mut self, pg: PgOwner, dst: u64, src: u64) -> Hc {
        let spfn = self.get_page_of(pg, src)?;
        let dpfn = match self.writable_page_of(pg, dst) {
            Ok(d) => d,
            Err(f) => {
                self.put_page(spfn);
                return Err(f);
            }
        };
        for i in 0..512 {
            let w = self.slot(spfn, i);
            self.ram.write_u64(dpfn, i * 8, w);
        }
        self.frames[dpfn].type_count -= 1;
        self.put_page(dpfn);
        self.put_page(spfn);
        self.note(Change::Copied { src, dst });
        Ok(0)
    }

    /// CLEAR_PAGE/COPY_PAGE's destination: a page reference and a writable
    /// type reference, or -EINVAL.
    pub(crate) fn writable_page_of(&mut self, pg: PgOwner, mfn: u64) -> Result<usize, Fail> {
        let pfn = self.get_page_of(pg, mfn)?;
        if let Err(r) = self.get_writable_type(pfn) {
            self.put_page(pfn);
            return Err(fail(EINVAL, r));
        }
        Ok(pfn)
    }

    /// MMUEXT_PIN_L*_TABLE: the frame takes the type (validated on a type
    /// change) and keeps a reference while pinned.
    pub(crate) fn pin(&mut self, cmd: u32, mfn: u64, pg: PgOwner) -> Hc {
        if self.abi == Abi::Pv32 {
            return Err(fail(
                ENOSYS,
                "hv-sim models page-table pinning for 64-bit PV guests only",
            ));
        }
        let ty = PageType::table(cmd as u8 + 1).unwrap_or(PageType::None);
        let pfn = self.get_page_of(pg, mfn)?;
        if let Err(f) = self.get_pt_type(pfn, ty) {
            self.put_page(pfn);
            return Err(f);
        }
        if !self.pt.pinned.insert(pfn) {
            self.put_page_and_type(pfn);
            return Err(fail(EINVAL, format!("mfn {mfn:#x} is already pinned")));
        }
        self.note(Change::Pinned { mfn, typ: ty });
        Ok(0)
    }

    /// MMUEXT_UNPIN_TABLE.
    pub(crate) fn unpin(&mut self, mfn: u64, pg: PgOwner) -> Hc {
        if self.abi == Abi::Pv32 {
            return Err(fail(
                ENOSYS,
                "hv-sim models page-table pinning for 64-bit PV guests only",
            ));
        }
        let pfn = self.get_page_of(pg, mfn)?;
        if !self.pt.pinned.remove(&pfn) {
            self.put_page(pfn);
            return Err(fail(EINVAL, format!("mfn {mfn:#x} is not pinned")));
        }
        self.put_page_and_type(pfn);
        self.put_page(pfn);
        self.note(Change::Unpinned { mfn });
        Ok(0)
    }

    /// MMUEXT_NEW_BASEPTR (`new_guest_cr3`): the root takes the L4 type
    /// (validated on a type change) before it is installed; the old root's
    /// references go; mapped LDT pages are dropped. The current root again
    /// is a no-op.
    pub(crate) fn new_baseptr(&mut self, v: usize, mfn: u64) -> Hc {
        if self.abi == Abi::Pv32 {
            return self.new_baseptr_pv32(v, mfn);
        }
        let old = self.vcpus[v].cr3;
        if old == Some(mfn) {
            return Ok(0);
        }
        let pfn = self.get_page_and_type(mfn, PageType::L4)?;
        self.destroy_ldt(v);
        // fill_ro_mpt: the read-only M2P slot, unless the guest cleared it
        // with VMASST_TYPE_m2p_strict (not modelled: never set).
        if self.slot(pfn, RO_MPT_SLOT) == 0 {
            let e = self.xen_frame(RO_MPT_SLOT) << 12 | PAGE_HYPERVISOR_RW;
            self.write_entry(pfn, RO_MPT_SLOT, e);
        }
        self.vcpus[v].cr3 = Some(mfn);
        if let Some(op) = old.and_then(|o| self.m2p(o)) {
            self.put_page_and_type(op);
        }
        self.note(Change::Cr3 { mfn });
        Ok(0)
    }

    /// A 32-bit guest's root (a PAE L3 in Xen) takes the L3 type without
    /// validation: hv-sim does not model PAE page tables.
    pub(crate) fn new_baseptr_pv32(&mut self, v: usize, mfn: u64) -> Hc {
        let cur = self.vcpus[v].cr3;
        if cur != Some(mfn) {
            let Some(pfn) = self.m2p(mfn) else {
                return Err(fail(EINVAL, self.frame_reason(mfn)));
            };
            let f = self.frames[pfn];
            if f.typ != PageType::L3 {
                if f.type_count > 0 {
                    return Err(fail(
                        EINVAL,
                        format!(
                            "frame {mfn:#x} is in use as a {} page; it cannot become a page-table root",
                            f.typ.name()
                        ),
                    ));
                }
                if f.typ == PageType::SegDesc {
                    self.shadows.remove(pfn);
                }
                self.frames[pfn].typ = PageType::L3;
                self.frames[pfn].validated = true;
            }
            self.frames[pfn].type_count += 1;
            self.frames[pfn].refs += 1;
            if let Some(old) = cur {
                self.put_type(old);
            }
            self.vcpus[v].cr3 = Some(mfn);
        }
        self.destroy_ldt(v);
        self.note(Change::Cr3 { mfn });
        Ok(0)
    }

    /// MMUEXT_NEW_USER_BASEPTR: the user-mode root (0 = none) takes the L4
    /// type; the old one's references go.
    pub(crate) fn new_user_baseptr(&mut self, v: usize, mfn: u64) -> Hc {
        let old = self.pt.user_root.get(&v).copied().unwrap_or(0);
        if old == mfn {
            return Ok(0);
        }
        if mfn != 0 {
            self.get_page_and_type(mfn, PageType::L4)?;
            self.pt.user_root.insert(v, mfn);
        } else {
            self.pt.user_root.remove(&v);
        }
        if let Some(op) = self.m2p(old).filter(|_| old != 0) {
            self.put_page_and_type(op);
        }
        self.note(Change::UserRoot { mfn });
        Ok(0)
    }
}
