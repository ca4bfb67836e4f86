//! `arch/x86/mm.c` `do_mmu_update` and `mod_l1_entry` .. `mod_l4_entry`:
//! page-table entry updates with Xen's fast path, and
//! `MMU_MACHPHYS_UPDATE`.

use super::*;

impl Inner {
    /// `mod_l1_entry` .. `mod_l4_entry` on slot `slot` of validated table
    /// `tbl`.
    pub(crate) fn mod_entry(
        &mut self,
        tbl: usize,
        level: u8,
        slot: usize,
        new: u64,
        preserve_ad: bool,
        pg: PgOwner,
    ) -> Hc {
        if level == 4 && !guest_l4_slot(slot) {
            return Err(fail(EINVAL, format!("L4 slot {slot} is Xen's (256-271)")));
        }
        let old = self.read_entry(tbl, slot);
        let mut new = new;
        if new & PTE_P != 0 {
            let disallow = if level == 1 {
                self.l1_disallow_mask()
            } else {
                BASE_DISALLOW
            };
            if new & disallow != 0 {
                return Err(fail(
                    EINVAL,
                    format!(
                        "L{level} entry {new:#x} sets disallowed bits {:#x}",
                        new & disallow
                    ),
                ));
            }
            new = adjust(level, new);
            if !has_changed(old, new) {
                if preserve_ad {
                    new |= old & (PTE_A | PTE_D);
                }
                self.write_entry(tbl, slot, new);
                self.note_entry(tbl, level, slot, old, new, EntryVia::FastPath);
                return Ok(0);
            }
            if level == 1 {
                new ^= self.get_page_from_l1e(new, pg)?;
            } else {
                self.get_page_from_lne_once(level, new, tbl)?;
            }
        }
        if preserve_ad {
            new |= old & (PTE_A | PTE_D);
        }
        self.write_entry(tbl, slot, new);
        self.put_entry(level, old, tbl);
        self.note_entry(tbl, level, slot, old, new, EntryVia::Validated);
        Ok(0)
    }

    pub(crate) fn note_entry(
        &mut self,
        tbl: usize,
        level: u8,
        slot: usize,
        old: u64,
        new: u64,
        via: EntryVia,
    ) {
        let mfn = self.mfn(tbl);
        self.note(Change::Entry {
            level,
            mfn,
            slot,
            old,
            new,
            via,
        });
    }

    /// `do_mmu_update(ureqs, count, pdone, foreigndom)` for a 64-bit guest.
    pub(crate) fn mmu_update(&mut self, ureqs: u64, count: u32, pdone: u64, foreigndom: u32) -> Hc {
        if self.abi == Abi::Pv32 {
            return Err(fail(
                ENOSYS,
                "hv-sim models mmu_update for 64-bit PV guests only",
            ));
        }
        // put_old_guest_table: a demotion under way finishes first.
        if !self.demote_pending() {
            let args = [ureqs, count.into(), pdone, foreigndom.into(), 0, 0];
            return Ok(self.continuation(nr::MMU_UPDATE, args));
        }
        if count == 0x8000_0000 && ureqs == 0 {
            let rc = i64::from(foreigndom as i32);
            self.note(Change::PreemptedStatus {
                what: "requests",
                rc,
            });
            return Ok(rc);
        }
        let mut done: u32 = 0;
        let count = if count & 0x8000_0000 != 0 {
            if pdone != 0 {
                let mut b = [0u8; 4];
                let _ = self.load_bytes_padded(pdone, &mut b);
                done = u32::from_le_bytes(b);
            }
            count & !0x8000_0000
        } else {
            count
        };
        if !self.addr_ok(ureqs) {
            return Err(fail(
                EFAULT,
                format!("requests {ureqs:#x} is not a guest address"),
            ));
        }
        let own = self.own_domid();
        let pt_dom = foreigndom >> 16;
        if pt_dom != 0 && pt_dom - 1 != u32::from(own) {
            return Err(fail(
                ESRCH,
                format!(
                    "foreigndom {foreigndom:#x} names page tables of domain {} (no such domain)",
                    pt_dom - 1
                ),
            ));
        }
        let (rc, i) = match foreigndom as u16 {
            DOMID_SELF => self.mmu_update_reqs(ureqs, count, PgOwner::Current),
            DOMID_IO => self.mmu_update_reqs(ureqs, count, PgOwner::Io),
            DOMID_XEN => self.mmu_update_reqs(ureqs, count, PgOwner::Xen),
            d if d == own => (
                Err(fail(
                    ESRCH,
                    format!("foreigndom {d} is the caller's own id; use DOMID_SELF"),
                )),
                0,
            ),
            // A domU naming dom0: `get_pg_owner` finds it; the default XSM
            // policy (`xsm_mmu_update`, XSM_TARGET, checked per request)
            // refuses the first request. (Modelled for the page-table and
            // machphys commands; an empty batch does nothing.)
            0 if count == 0 => (Ok(0), 0),
            0 => (
                Err(fail(
                    EPERM,
                    "foreigndom 0: the default XSM policy refuses a domU acting on dom0",
                )),
                0,
            ),
            d => (Err(fail(ESRCH, format!("no domain {d:#x}"))), 0),
        };
        if pdone != 0 {
            let _ = self.store_bytes(pdone, &done.wrapping_add(i).to_le_bytes(), false);
        }
        match rc {
            // Preempted (`-ERESTART`): the guest re-executes the rest of
            // the batch, `done` counting on from what is stored above.
            Err(f) if f.errno == ERESTART => {
                let rest = ureqs.wrapping_add(u64::from(i) * 16);
                let args = [rest, u64::from(count - i) | 0x8000_0000, pdone];
                let args = [args[0], args[1], args[2], u64::from(foreigndom), 0, 0];
                Ok(self.continuation(nr::MMU_UPDATE, args))
            }
            rc => self.final_status(nr::MMU_UPDATE, rc),
        }
    }

    /// The end of `do_mmu_update` / `do_mmuext_op`: a demotion still under
    /// way (`old_guest_table`) continues in the final-status continuation
    /// (a NULL list, `MMU_UPDATE_PREEMPTED`, the result in place of
    /// `foreigndom`), which returns that result once it is done.
    pub(crate) fn final_status(&mut self, op: u64, rc: Hc) -> Hc {
        if self.demote_pending() {
            return rc;
        }
        let r = match &rc {
            Ok(x) => *x,
            Err(f) => -f.errno,
        };
        let args = [0, 0x8000_0000, 0, u64::from(r as u32), 0, 0];
        Ok(self.continuation(op, args))
    }

    /// The request loop of `do_mmu_update`: (result, requests done).
    pub(crate) fn mmu_update_reqs(&mut self, ureqs: u64, count: u32, pg: PgOwner) -> (Hc, u32) {
        let mut xsm_checked = false;
        for i in 0..count {
            // hypercall_preempt_check between requests, and a request's
            // demotion (`old_guest_table`) finished before the next.
            if i > 0 && (!self.demote_pending() || self.work >= PREEMPT_BUDGET) {
                return (Err(fail(ERESTART, "preempted")), i);
            }
            self.work += 1;
            let va = ureqs.wrapping_add(u64::from(i) * 16);
            let mut b = [0u8; 16];
            if self.load_bytes(va, &mut b).is_err() {
                return (
                    Err(fail(
                        EFAULT,
                        format!("request {i} at {va:#x} cannot be read"),
                    )),
                    i,
                );
            }
            let ptr = u64::from_le_bytes(b[..8].try_into().unwrap_or([0; 8]));
            let val = u64::from_le_bytes(b[8..].try_into().unwrap_or([0; 8]));
            let cmd = ptr & 7;
            // xsm_mmu_update (default policy): naming dom_xen's pages
            // needs a control domain; dom_io's are not checked.
            if cmd <= MMU_PT_UPDATE_NO_TRANSLATE && !xsm_checked {
                if pg == PgOwner::Xen && !self.privileged {
                    return (
                        Err(fail(
                            EPERM,
                            "foreigndom DOMID_XEN: the default XSM policy refuses an unprivileged domain",
                        )),
                        i,
                    );
                }
                xsm_checked = true;
            }
            let r = match cmd {
                MMU_NORMAL_PT_UPDATE | MMU_PT_UPDATE_PRESERVE_AD | MMU_PT_UPDATE_NO_TRANSLATE => {
                    self.normal_update(ptr - cmd, val, cmd == MMU_PT_UPDATE_PRESERVE_AD, pg)
                }
                MMU_MACHPHYS_UPDATE => self.machphys_update(ptr >> 12, val, pg),
                _ => Err(fail(ENOSYS, format!("unknown mmu_update command {cmd}"))),
            };
            if let Err(f) = r {
                if f.errno == ERESTART {
                    return (Err(f), i);
                }
                return (Err(fail(f.errno, format!("request {i}: {}", f.reason))), i);
            }
        }
        (Ok(0), count)
    }

    /// One MMU_NORMAL_PT_UPDATE: a validated table in use is updated with
    /// `mod_l*_entry` (its `page_lock` needs a type reference); a frame
    /// that can take the writable type gets the raw value; a live
    /// descriptor page is refused.
    pub(crate) fn normal_update(
        &mut self,
        ptr: u64,
        val: u64,
        preserve_ad: bool,
        pg: PgOwner,
    ) -> Hc {
        let mfn = ptr >> 12;
        let Some(pfn) = self.m2p(mfn) else {
            return Err(fail(
                EINVAL,
                format!("page table {}", self.frame_reason(mfn)),
            ));
        };
        let slot = (ptr as usize & (PAGE_SIZE - 1)) / 8;
        let f = self.frames[pfn];
        let locked = f.type_count > 0 && (f.typ == PageType::Writable || f.validated);
        if locked {
            return match f.typ.level() {
                Some(1) => self.mod_entry(pfn, 1, slot, val, preserve_ad, pg),
                Some(level) if pg == PgOwner::Current => {
                    self.mod_entry(pfn, level, slot, val, preserve_ad, pg)
                }
                Some(level) => Err(fail(
                    EINVAL,
                    format!(
                        "L{level} updates need the page owner to be the page-table owner ({} given)",
                        pg.name()
                    ),
                )),
                None if f.typ == PageType::Writable => {
                    self.ram.write_u64(pfn, slot * 8, val);
                    self.note(Change::Slot {
                        mfn,
                        slot,
                        value: val,
                        fresh: false,
                    });
                    Ok(0)
                }
                None => Err(fail(
                    EINVAL,
                    format!(
                        "mfn {mfn:#x} is a {} page in use, not a page table",
                        f.typ.name()
                    ),
                )),
            };
        }
        self.get_writable_type(pfn).map_err(|r| fail(EINVAL, r))?;
        self.ram.write_u64(pfn, slot * 8, val);
        self.frames[pfn].type_count -= 1;
        self.note(Change::Slot {
            mfn,
            slot,
            value: val,
            fresh: true,
        });
        Ok(0)
    }

    /// MMU_MACHPHYS_UPDATE: the frame must be the page owner's.
    pub(crate) fn machphys_update(&mut self, mfn: u64, gpfn: u64, pg: PgOwner) -> Hc {
        if pg == PgOwner::Xen && !self.privileged {
            return Err(fail(EPERM, "DOMID_XEN: refused by the XSM policy"));
        }
        let pfn = self.get_page_of(pg, mfn)?;
        self.put_page(pfn);
        self.pt.m2p.insert(pfn, gpfn);
        self.note(Change::M2p { mfn, gpfn });
        Ok(0)
    }
}
