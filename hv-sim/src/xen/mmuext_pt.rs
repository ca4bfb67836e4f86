//! `arch/x86/mm.c` `do_mmuext_op`, the page-table commands: pins, the
//! base pointers (`new_guest_cr3`), and the page commands.

use super::*;

impl Inner {
    /// The page-table commands of `do_mmuext_op` (PIN/UNPIN, NEW_BASEPTR,
    /// NEW_USER_BASEPTR, TLB_FLUSH_MULTI, INVLPG_MULTI, FLUSH_CACHE,
    /// CLEAR_PAGE, COPY_PAGE, FLUSH_CACHE_GLOBAL).
    pub(crate) fn mmuext_pt(
        &mut self,
        v: usize,
        cmd: u32,
        arg1: u64,
        arg2: u64,
        pg: PgOwner,
    ) -> Hc {
        let foreign = pg != PgOwner::Current;
        let perm = |what: &str| {
            fail(
                EPERM,
                format!("{what} with a foreign page owner ({})", pg.name()),
            )
        };
        match cmd {
            MMUEXT_PIN_L1_TABLE..=MMUEXT_PIN_L4_TABLE => self.pin(cmd, arg1, pg),
            MMUEXT_UNPIN_TABLE => self.unpin(arg1, pg),
            MMUEXT_NEW_BASEPTR if foreign => Err(perm("NEW_BASEPTR")),
            MMUEXT_NEW_BASEPTR => self.new_baseptr(v, arg1),
            MMUEXT_NEW_USER_BASEPTR if foreign => Err(perm("NEW_USER_BASEPTR")),
            MMUEXT_NEW_USER_BASEPTR => self.new_user_baseptr(v, arg1),
            MMUEXT_TLB_FLUSH_MULTI | MMUEXT_INVLPG_MULTI => {
                if foreign {
                    return Err(perm("TLB_FLUSH_MULTI/INVLPG_MULTI"));
                }
                // vcpumask_to_pcpumask failing makes the op -EINVAL.
                self.read_vcpu_bitmap(arg2)
                    .map_err(|f| fail(EINVAL, format!("vCPU mask: {}", f.reason)))?;
                Ok(0)
            }
            MMUEXT_FLUSH_CACHE if foreign => Err(perm("FLUSH_CACHE")),
            MMUEXT_FLUSH_CACHE if !self.privileged => Err(fail(
                EACCES,
                "FLUSH_CACHE needs cache-flush permission (I/O capabilities)",
            )),
            MMUEXT_FLUSH_CACHE_GLOBAL if foreign => Err(perm("FLUSH_CACHE_GLOBAL")),
            MMUEXT_FLUSH_CACHE_GLOBAL if !self.privileged => Err(fail(
                EINVAL,
                "FLUSH_CACHE_GLOBAL needs cache-flush permission (I/O capabilities)",
            )),
            MMUEXT_FLUSH_CACHE | MMUEXT_FLUSH_CACHE_GLOBAL => Ok(0),
            MMUEXT_CLEAR_PAGE => {
                let pfn = self.writable_page_of(pg, arg1)?;
                for i in 0..512 {
                    self.ram.write_u64(pfn, i * 8, 0);
                }
                self.frames[pfn].type_count -= 1;
                self.put_page(pfn);
                self.note(Change::Cleared { mfn: arg1 });
                Ok(0)
            }
            MMUEXT_COPY_PAGE => {
                let src = self.get_page_of(pg, arg2)?;
                let dst = match self.writable_page_of(pg, arg1) {
                    Ok(d) => d,
                    Err(f) => {
                        self.put_page(src);
                        return Err(f);
                    }
                };
                for i in 0..512 {
                    let w = self.slot(src, i);
                    self.ram.write_u64(dst, i * 8, w);
                }
                self.frames[dst].type_count -= 1;
                self.put_page(dst);
                self.put_page(src);
                self.note(Change::Copied {
                    src: arg2,
                    dst: arg1,
                });
                Ok(0)
            }
            _ => Err(fail(ENOSYS, format!("unknown MMUEXT command {cmd}"))),
        }
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
