//! `arch/x86/mm.c` `do_mmu_update` and `mod_l1_entry` .. `mod_l4_entry`:
//! page-table entry updates with Xen's fast path, and
//! `MMU_MACHPHYS_UPDATE`.

use std::ops::ControlFlow;

use super::*;

/// `MMU_UPDATE_PREEMPTED`: set in `count` by a batch's continuation.
const MMU_UPDATE_PREEMPTED: u32 = 0x8000_0000;

/// A `do_mmu_update` / `do_mmuext_op` batch: the hypercall's arguments,
/// `count` without `MMU_UPDATE_PREEMPTED`, and `done` as a continuation
/// left it in `*pdone`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Batch {
    /// The hypercall (`nr::MMU_UPDATE` or `nr::MMUEXT_OP`).
    pub(crate) op: u64,
    /// The guest's list (`ureqs` / `uops`).
    pub(crate) list: u64,
    /// The size of one element of the list in the guest's ABI.
    pub(crate) esize: u64,
    /// Elements to process.
    pub(crate) count: u32,
    /// Where the running total of elements done goes (0: nowhere).
    pub(crate) pdone: u64,
    /// The page owner (and, for mmu_update, the page-table owner).
    pub(crate) foreigndom: u32,
    /// Elements done by earlier continuations.
    pub(crate) done: u32,
}

impl Batch {
    /// The batch as the guest called it (`done` not read yet).
    pub(crate) fn new(
        op: u64,
        list: u64,
        esize: u64,
        count: u32,
        pdone: u64,
        foreigndom: u32,
    ) -> Batch {
        Batch {
            op,
            list,
            esize,
            count,
            pdone,
            foreigndom,
            done: 0,
        }
    }
}

/// An element's error with the element named (`-ERESTART` passes
/// through unchanged: the guest never sees it).
pub(crate) fn in_batch(f: Fail, what: std::fmt::Arguments<'_>) -> Fail {
    if f.errno == ERESTART {
        f
    } else {
        fail(f.errno, format!("{what}: {}", f.reason))
    }
}

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
        let b = Batch::new(nr::MMU_UPDATE, ureqs, 16, count, pdone, foreigndom);
        let b = match self.batch_start(b, "requests") {
            ControlFlow::Continue(b) => b,
            ControlFlow::Break(rc) => return rc,
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
        let reqs = match foreigndom as u16 {
            DOMID_SELF => self.mmu_update_reqs(&b, PgOwner::Current),
            DOMID_IO => self.mmu_update_reqs(&b, PgOwner::Io),
            DOMID_XEN => self.mmu_update_reqs(&b, PgOwner::Xen),
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
            0 if b.count == 0 => (Ok(0), 0),
            0 => (
                Err(fail(
                    EPERM,
                    "foreigndom 0: the default XSM policy refuses a domU acting on dom0",
                )),
                0,
            ),
            d => (Err(fail(ESRCH, format!("no domain {d:#x}"))), 0),
        };
        self.batch_end(&b, reqs)
    }

    /// The start of `do_mmu_update` / `do_mmuext_op`: a demotion under way
    /// (`put_old_guest_table`) finishes first, in a continuation of the
    /// whole call; the final-status continuation (`count ==
    /// MMU_UPDATE_PREEMPTED` with a NULL list) hands `foreigndom` back as
    /// the result (`compat_mmuext_op` forwards it unchanged); a continued
    /// batch (`MMU_UPDATE_PREEMPTED` set in `count`) resumes counting from
    /// `*pdone`, read errors ignored (the unread part reads as 0, a NULL
    /// `pdone` means 0). `what` names the list in the trace.
    pub(crate) fn batch_start(
        &mut self,
        mut b: Batch,
        what: &'static str,
    ) -> ControlFlow<Hc, Batch> {
        if !self.finish_demotions() {
            let args = [b.list, b.count.into(), b.pdone, b.foreigndom.into(), 0, 0];
            return ControlFlow::Break(Ok(self.continuation(b.op, args)));
        }
        if b.count == MMU_UPDATE_PREEMPTED && b.list == 0 {
            let rc = i64::from(b.foreigndom as i32);
            self.note(Change::PreemptedStatus { what, rc });
            return ControlFlow::Break(Ok(rc));
        }
        if b.count & MMU_UPDATE_PREEMPTED != 0 {
            b.count &= !MMU_UPDATE_PREEMPTED;
            if b.pdone != 0 {
                let mut d = [0u8; 4];
                let _ = self.load_bytes_padded(b.pdone, &mut d);
                b.done = u32::from_le_bytes(d);
            }
        }
        ControlFlow::Continue(b)
    }

    /// The loop of `do_mmu_update` / `do_mmuext_op`: `item(self, i, va)`
    /// for each element of the list, with `hypercall_preempt_check`
    /// between elements and an element's demotion (`old_guest_table`)
    /// finished before the next. Stops at the first error: (result,
    /// elements done).
    pub(crate) fn batch_items(
        &mut self,
        b: &Batch,
        mut item: impl FnMut(&mut Self, u32, u64) -> Hc,
    ) -> (Hc, u32) {
        for i in 0..b.count {
            if i > 0 && (!self.finish_demotions() || self.work >= PREEMPT_BUDGET) {
                return (Err(fail(ERESTART, "preempted")), i);
            }
            self.work += 1;
            if let Err(f) = item(self, i, b.list.wrapping_add(u64::from(i) * b.esize)) {
                return (Err(f), i);
            }
        }
        (Ok(0), b.count)
    }

    /// The end of `do_mmu_update` / `do_mmuext_op` after `i` elements:
    /// `*pdone` gets `done + i`; a preempted batch (`-ERESTART`) is
    /// continued from element `i` (the guest re-executes the rest, `done`
    /// counting on from what was stored), else [`Inner::final_status`].
    pub(crate) fn batch_end(&mut self, b: &Batch, (rc, i): (Hc, u32)) -> Hc {
        if b.pdone != 0 {
            let _ = self.store_bytes(b.pdone, &b.done.wrapping_add(i).to_le_bytes(), false);
        }
        match rc {
            Err(f) if f.errno == ERESTART => {
                let rest = b.list.wrapping_add(u64::from(i) * b.esize);
                let left = u64::from((b.count - i) | MMU_UPDATE_PREEMPTED);
                let args = [rest, left, b.pdone, u64::from(b.foreigndom), 0, 0];
                Ok(self.continuation(b.op, args))
            }
            rc => self.final_status(b.op, rc),
        }
    }

    /// The end of `do_mmu_update` / `do_mmuext_op`: a demotion still under
    /// way (`old_guest_table`) continues in the final-status continuation
    /// (a NULL list, `MMU_UPDATE_PREEMPTED`, the result in place of
    /// `foreigndom`), which returns that result once it is done.
    pub(crate) fn final_status(&mut self, op: u64, rc: Hc) -> Hc {
        if self.finish_demotions() {
            return rc;
        }
        let r = match &rc {
            Ok(x) => *x,
            Err(f) => -f.errno,
        };
        let args = [0, MMU_UPDATE_PREEMPTED.into(), 0, u64::from(r as u32), 0, 0];
        Ok(self.continuation(op, args))
    }

    /// The request loop of `do_mmu_update`: (result, requests done).
    fn mmu_update_reqs(&mut self, b: &Batch, pg: PgOwner) -> (Hc, u32) {
        let mut xsm_checked = false;
        self.batch_items(b, |this, i, va| {
            let mut r = [0u8; 16];
            if this.load_bytes(va, &mut r).is_err() {
                return Err(fail(
                    EFAULT,
                    format!("request {i} at {va:#x} cannot be read"),
                ));
            }
            let ptr = u64::from_le_bytes(r[..8].try_into().unwrap_or([0; 8]));
            let val = u64::from_le_bytes(r[8..].try_into().unwrap_or([0; 8]));
            let cmd = ptr & 7;
            // xsm_mmu_update (default policy): naming dom_xen's pages
            // needs a control domain; dom_io's are not checked.
            if cmd <= MMU_PT_UPDATE_NO_TRANSLATE && !xsm_checked {
                if pg == PgOwner::Xen && !this.privileged {
                    return Err(fail(
                        EPERM,
                        "foreigndom DOMID_XEN: the default XSM policy refuses an unprivileged domain",
                    ));
                }
                xsm_checked = true;
            }
            match cmd {
                MMU_NORMAL_PT_UPDATE | MMU_PT_UPDATE_PRESERVE_AD | MMU_PT_UPDATE_NO_TRANSLATE => {
                    this.normal_update(ptr - cmd, val, cmd == MMU_PT_UPDATE_PRESERVE_AD, pg)
                }
                MMU_MACHPHYS_UPDATE => this.machphys_update(ptr >> 12, val, pg),
                _ => Err(fail(ENOSYS, format!("unknown mmu_update command {cmd}"))),
            }
            .map_err(|f| in_batch(f, format_args!("request {i}")))
        })
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
