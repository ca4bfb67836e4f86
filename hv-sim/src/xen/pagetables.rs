//! Xen's page-table types for a 64-bit PV guest: the page-table part of
//! `xen/arch/x86/mm.c` (Xen 4.17), as `impl Inner` blocks over the domain's
//! state. A child module of [`super`] (`domain.rs`), hooked from its
//! dispatcher (`mmu_update`) and from `mmuext_cmd` (PIN/UNPIN, the base
//! pointers, the MULTI flushes, the cache and page commands).
//!
//! What is modelled, by Xen function:
//!
//! * types L1–L4 with type counts, `PGT_validated` and `PGT_pinned`
//!   (`_get_page_type`, `_put_page_type`, `validate_page`,
//!   `devalidate_page`): a frame takes a page-table type only while no
//!   other type holds a reference; taking it validates every entry
//!   (`promote_l1_table` .. `promote_l4_table`), dropping the last
//!   reference releases every entry's references (`demote_l*_table`);
//! * entries: `get_page_from_l1e` (flags against `l1_disallow_mask`, the
//!   frame must be the page owner's, a writable entry needs the frame to
//!   take `PGT_writable_page`), `get_page_from_l2e` .. `l4e` (the base
//!   disallow mask, the frame must take the next lower type, else a
//!   read-only linear page table of the same level:
//!   `get_l*_linear_pagetable` with `linear_pt_count`), the pv64
//!   write-backs `adjust_guest_l1e` .. `l4e`, the reserved Xen slots
//!   256–271 of an L4 (`is_guest_l4_slot`, `init_xen_l4_slots`);
//! * `mod_l1_entry` .. `mod_l4_entry` with Xen's fast path for entries that
//!   differ only in harmless flags, `do_mmu_update` (MMU_NORMAL_PT_UPDATE,
//!   MMU_PT_UPDATE_PRESERVE_AD, MMU_PT_UPDATE_NO_TRANSLATE,
//!   MMU_MACHPHYS_UPDATE, `done`, `foreigndom` with its page-table-owner
//!   half), and `do_mmuext_op`'s MMUEXT_PIN_L*_TABLE, MMUEXT_UNPIN_TABLE,
//!   MMUEXT_NEW_BASEPTR (`new_guest_cr3`), MMUEXT_NEW_USER_BASEPTR,
//!   MMUEXT_TLB_FLUSH_MULTI / INVLPG_MULTI (`vcpumask_to_pcpumask`),
//!   MMUEXT_FLUSH_CACHE(_GLOBAL), MMUEXT_CLEAR_PAGE, MMUEXT_COPY_PAGE.
//!
//! The guest's live mapping stays the flat direct map (`Inner::ptes`).
//! The bootstrap tables Xen's dom0 builder wrote are typed as Xen types
//! them (`mark_pv_pt_pages_rdonly`: L4 pinned and installed, the others
//! validated with one reference from their parent); their L1s are *live*:
//! an L1 entry of one of them is the direct-map entry of the address it
//! maps, so `mmu_update` on it changes the live mapping as
//! `update_va_mapping` does, and `update_va_mapping` writes the entry into
//! the frame. Every other page table is a guest-built table that is
//! validated and reference-counted but never walked.
//!
//! Validation is preemptible as in Xen (`PGT_partial`,
//! `nr_validated_ptes`, `partial_flags`): an L2-L4 table whose promotion
//! runs past [`PREEMPT_BUDGET`] entries in one invocation is left
//! part-validated ([`Partial`]) and the call is continued; demotion
//! (`_put_page_type` → `demote_l*_table`, `old_guest_table`) releases
//! entries within the same budget, the rest in continuations
//! (XEN-SEMANTICS §13.3).

use std::collections::{BTreeMap, BTreeSet};

use super::*;

// One module per Xen function group (see each module's first line).
#[path = "ro_page_fault.rs"]
mod ro_page_fault;
pub use ro_page_fault::guest_pf_error_code;
#[path = "dom0_build.rs"]
mod dom0_build;
#[path = "mmu_update.rs"]
mod mmu_update;
pub(crate) use mmu_update::{Batch, in_batch};
#[path = "mmuext_pt.rs"]
mod mmuext_pt;
#[path = "pt_invariants.rs"]
mod pt_invariants;

/// `_PAGE_PWT`.
const PTE_PWT: u64 = 0x8;
/// `_PAGE_PCD`.
const PTE_PCD: u64 = 0x10;
/// `_PAGE_ACCESSED`.
const PTE_A: u64 = 0x20;
/// `_PAGE_DIRTY`.
const PTE_D: u64 = 0x40;
/// `_PAGE_PAT` in an L1 entry, `_PAGE_PSE` above.
const PTE_PAT: u64 = 0x80;
/// `base_disallow_mask` (`arch_init_memory`) as PTE bits: everything but
/// P, RW, US, A, D, the software bits 9-11 and 52-62 and NX, i.e. PWT,
/// PCD, PSE/PAT and G. `L2_DISALLOW_MASK`, `L4_DISALLOW_MASK` and a 64-bit
/// guest's `l3_disallow_mask` are this mask.
const BASE_DISALLOW: u64 = PTE_PWT | PTE_PCD | PTE_PAT | PTE_GLOBAL;
/// The bits `l1e_has_changed` looks at outside `FASTPATH_FLAG_WHITELIST`
/// (NX, the software bits, G, D, A, US): the frame number and P, RW, PWT,
/// PCD, PAT/PSE. With `CONFIG_PV_LINEAR_PT` (Debian's build) the upper
/// levels use the same list.
const FASTPATH_CHANGED: u64 = PTE_MFN_MASK | PTE_P | PTE_RW | PTE_PWT | PTE_PCD | PTE_PAT;
/// `__PAGE_HYPERVISOR_RW` (P, RW, A, D): Xen's own L4 entries.
const PAGE_HYPERVISOR_RW: u64 = PTE_P | PTE_RW | PTE_A | PTE_D;
/// `ROOT_PAGETABLE_FIRST_XEN_SLOT` ..= `ROOT_PAGETABLE_LAST_XEN_SLOT`.
const XEN_L4_SLOTS: std::ops::RangeInclusive<usize> = 256..=271;
/// The L4 slot of Xen's read-only M2P (`RO_MPT_VIRT_START`).
const RO_MPT_SLOT: usize = 256;
/// The L4 slot of Xen's linear page table (`LINEAR_PT_VIRT_START`): the
/// L4 maps itself there.
const LINEAR_PT_SLOT: usize = 258;
/// The L4 slot of the shadow linear map (empty without shadow paging).
const SH_LINEAR_PT_SLOT: usize = 259;

/// Xen's `-ERESTART`: a validation was preempted. Internal only: the
/// batch loops (`do_mmu_update`, `do_mmuext_op`) turn it into a
/// continuation, so the guest never sees it.
pub(crate) const ERESTART: i64 = 85;

/// A table left part-validated by a preempted call (`PGT_partial`): it
/// keeps one type reference and one general reference of its own until a
/// later `_get_page_type` of the same type resumes it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Partial {
    /// `nr_validated_ptes`: slots below this one hold their references.
    next: usize,
    /// `partial_flags & PTF_partial_set`: the entry at `next` names a
    /// table that is itself partial, and this table holds a general
    /// reference to it.
    child: bool,
    /// Being demoted (on the demotion stack), not validated.
    down: bool,
}

/// Whose pages an `mmu_update` / `mmuext_op` names (`get_pg_owner`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PgOwner {
    /// DOMID_SELF: the caller.
    Current,
    /// DOMID_IO (`dom_io`): owns no RAM; its MMIO mappings revert to the
    /// caller for permission checks.
    Io,
    /// DOMID_XEN (`dom_xen`): owns none of the domain's frames.
    Xen,
}

impl PgOwner {
    pub(crate) fn name(self) -> &'static str {
        match self {
            PgOwner::Current => "DOMID_SELF",
            PgOwner::Io => "DOMID_IO",
            PgOwner::Xen => "DOMID_XEN",
        }
    }
}

/// The page-table bookkeeping Xen keeps beside the type counts.
#[derive(Clone, Debug, Default)]
pub(crate) struct PtState {
    /// Frames (pfn) with `PGT_pinned`.
    pinned: BTreeSet<usize>,
    /// `linear_pt_count` (pfn → count, only non-zero ones): positive, the
    /// number of linear entries the table holds; negative, the number of
    /// same-level tables that map it read-only.
    linear: BTreeMap<usize, i32>,
    /// The bootstrap L1s (pfn → guest VA of what slot 0 maps): their
    /// entries are the live direct-map entries.
    live_l1: BTreeMap<usize, u64>,
    /// Each vCPU's `guest_table_user` (MMUEXT_NEW_USER_BASEPTR), if any.
    user_root: BTreeMap<usize, u64>,
    /// M2P entries written by MMU_MACHPHYS_UPDATE (pfn of the frame →
    /// value).
    m2p: BTreeMap<usize, u64>,
    /// Tables left part-validated by a preempted call, or part-released
    /// by a demotion not yet finished (pfn → state).
    partial: BTreeMap<usize, Partial>,
    /// Tables whose demotion is under way (`old_guest_table`), the next
    /// to release last.
    demoting: Vec<usize>,
}

/// Who holds page-table references, recounted for the invariants.
pub(crate) struct PtUsers {
    /// Type references held by page-table entries, pins and roots.
    pub(crate) typed: Vec<u32>,
    /// General references held by the same.
    pub(crate) refs: Vec<u32>,
    /// Writable type references held by writable L1 entries of guest-built
    /// tables.
    pub(crate) rw: Vec<u32>,
}

fn mfn_of(e: u64) -> u64 {
    (e & PTE_MFN_MASK) >> 12
}

/// `is_guest_l4_slot` for a 64-bit guest.
fn guest_l4_slot(slot: usize) -> bool {
    !XEN_L4_SLOTS.contains(&slot)
}

/// Guest slots of a table of `level`.
fn guest_slots(level: u8) -> impl DoubleEndedIterator<Item = usize> {
    (0..512).filter(move |&s| level != 4 || guest_l4_slot(s))
}

/// `adjust_guest_l1e` .. `adjust_guest_l4e` for a 64-bit guest (`pv/mm.h`).
fn adjust(level: u8, e: u64) -> u64 {
    if e & PTE_P == 0 {
        return e;
    }
    match level {
        1 => {
            let mut e = e;
            if e & PTE_USER == 0 {
                e |= PTE_GUEST_KERNEL | PTE_USER;
            }
            if e & PTE_GUEST_KERNEL == 0 {
                e |= PTE_GLOBAL | PTE_USER;
            }
            e
        }
        4 => e | PTE_A | PTE_USER,
        _ => e | PTE_USER,
    }
}

/// `l1e_has_changed(old, new, ~FASTPATH_FLAG_WHITELIST)`.
fn has_changed(old: u64, new: u64) -> bool {
    (old ^ new) & FASTPATH_CHANGED != 0
}

impl Inner {
    // ----------------------------------------------------------------
    // Entries of a table frame (live bootstrap L1s read and write the
    // direct map)

    /// The direct-map index slot `slot` of live L1 `pfn` stands for.
    fn live_index(&self, pfn: usize, slot: usize) -> Option<usize> {
        let base = *self.pt.live_l1.get(&pfn)?;
        self.va_page(base + (slot * PAGE_SIZE) as u64)
    }

    fn read_entry(&self, pfn: usize, slot: usize) -> u64 {
        match self.live_index(pfn, slot) {
            Some(i) => self.ptes[i],
            None => self.slot(pfn, slot),
        }
    }

    /// Xen's write of a table entry (also its shadow copy, and the live
    /// direct-map entry of a bootstrap L1).
    fn write_entry(&mut self, pfn: usize, slot: usize, v: u64) {
        if let Some(i) = self.live_index(pfn, slot) {
            self.ptes[i] = v;
        }
        self.set_slot(pfn, slot, v);
    }

    /// `update_va_mapping` wrote direct-map entry `idx`: a bootstrap L1
    /// that maps that address holds the same value (on Xen it *is* that
    /// L1's entry).
    pub(super) fn live_l1_written(&mut self, idx: usize) {
        let va = self.va_base + (idx * PAGE_SIZE) as u64;
        let hit = self
            .pt
            .live_l1
            .iter()
            .find(|(_, base)| (**base..**base + (512 * PAGE_SIZE) as u64).contains(&va))
            .map(|(p, base)| (*p, ((va - base) / PAGE_SIZE as u64) as usize));
        if let Some((pfn, slot)) = hit {
            let v = self.ptes[idx];
            self.set_slot(pfn, slot, v);
        }
    }

    // ----------------------------------------------------------------
    // References and types

    /// `get_page` / `get_page_from_mfn` for the domain's own frames: a
    /// general reference, or -EINVAL (`get_page_and_type_from_mfn`).
    fn get_page(&mut self, mfn: u64) -> Result<usize, Fail> {
        match self.m2p(mfn) {
            Some(pfn) => {
                self.frames[pfn].refs += 1;
                Ok(pfn)
            }
            None => Err(fail(EINVAL, self.frame_reason(mfn))),
        }
    }

    /// `get_page_from_gfn(pg_owner, mfn)` of a non-translated domain: only
    /// the caller owns frames here.
    fn get_page_of(&mut self, pg: PgOwner, mfn: u64) -> Result<usize, Fail> {
        match pg {
            PgOwner::Current => self.get_page(mfn),
            _ => Err(fail(
                EINVAL,
                format!("mfn {mfn:#x} is not a page of {}", pg.name()),
            )),
        }
    }

    fn put_page(&mut self, pfn: usize) {
        let f = &mut self.frames[pfn];
        f.refs = f.refs.saturating_sub(1);
    }

    /// `_get_page_type` for a page-table type: a type change (count 0)
    /// validates; on failure the frame keeps no reference and (L1, or a
    /// failure at slot 0) no type. A part-validated frame of the type
    /// ([`Partial`]) is resumed where it stopped; a validation preempted
    /// again returns `ERESTART` with the frame partial.
    fn get_pt_type(&mut self, pfn: usize, ty: PageType) -> Result<(), Fail> {
        let mfn = self.mfn(pfn);
        let f = self.frames[pfn];
        if f.type_count > 0 {
            if f.typ != ty {
                return Err(fail(
                    EINVAL,
                    format!(
                        "mfn {mfn:#x} is in use as a {} page ({} references); it cannot take the {} type",
                        f.typ.name(),
                        f.type_count,
                        ty.name()
                    ),
                ));
            }
            if !f.validated {
                let Some(p) = self.pt.partial.remove(&pfn) else {
                    return Err(fail(
                        EINVAL,
                        format!("mfn {mfn:#x} is being validated as {}", ty.name()),
                    ));
                };
                // The partial state's type reference becomes the caller's;
                // its general reference goes once validation stops.
                let r = self.validate(pfn, ty, p);
                let r = self.validated(pfn, ty, r);
                self.put_page(pfn);
                return r;
            }
            self.frames[pfn].type_count += 1;
            return Ok(());
        }
        if f.typ == PageType::SegDesc {
            self.shadows.remove(pfn);
        }
        let fm = &mut self.frames[pfn];
        fm.typ = ty;
        fm.validated = false;
        fm.type_count = 1;
        self.pt.linear.remove(&pfn);
        let r = self.validate(pfn, ty, Partial::default());
        self.validated(pfn, ty, r)
    }

    /// The end of `validate_page`: validated, partial (`ERESTART`: the
    /// frame keeps its type reference and takes a general one), or failed.
    fn validated(
        &mut self,
        pfn: usize,
        ty: PageType,
        r: Result<(), (Fail, usize)>,
    ) -> Result<(), Fail> {
        let mfn = self.mfn(pfn);
        match r {
            Ok(()) => {
                self.frames[pfn].validated = true;
                self.shadows.insert(pfn, self.ram.page_slots(pfn));
                self.note(Change::Typed { mfn, typ: ty });
                Ok(())
            }
            Err((f, _)) if f.errno == ERESTART => {
                self.frames[pfn].refs += 1;
                Err(f)
            }
            Err((f, slot)) => {
                let fm = &mut self.frames[pfn];
                fm.type_count = 0;
                if ty == PageType::L1 || slot == 0 {
                    fm.typ = PageType::None;
                }
                self.pt.linear.remove(&pfn);
                Err(fail(
                    f.errno,
                    format!(
                        "validating mfn {mfn:#x} as {}: slot {slot}: {}",
                        ty.name(),
                        f.reason
                    ),
                ))
            }
        }
    }

    /// `_put_page_type` for a page-table type; `ptpg` is the table whose
    /// entry held the reference (a linear entry when both have one type).
    /// The last reference devalidates.
    fn put_pt_type(&mut self, pfn: usize, ptpg: Option<usize>) {
        let ty = self.frames[pfn].typ;
        if let Some(t) = ptpg
            && self.frames[t].typ == ty
        {
            *self.pt.linear.entry(pfn).or_default() += 1;
            *self.pt.linear.entry(t).or_default() -= 1;
            self.pt.linear.retain(|_, c| *c != 0);
        }
        let f = &mut self.frames[pfn];
        f.type_count = f.type_count.saturating_sub(1);
        if f.type_count == 0 && ty.level().is_some() && f.validated && self.abi == Abi::Pv64 {
            f.validated = false;
            self.shadows.remove(pfn);
            self.start_demotion(pfn, ty);
        }
    }

    /// `_put_final_page_type` → `devalidate_page`, made preemptible as in
    /// Xen: the table becomes partial with every slot still holding its
    /// references (the partial state keeps a type and a general
    /// reference) and joins the demotion stack, which
    /// [`Inner::finish_demotions`] releases within the invocation's budget.
    /// Until then a `_get_page_type` of the same type resumes it as a
    /// partial validation (Xen's `nr_validated_ptes` serves both ways).
    fn start_demotion(&mut self, pfn: usize, ty: PageType) {
        let f = &mut self.frames[pfn];
        f.type_count = 1;
        f.refs += 1;
        let p = Partial {
            next: 512,
            child: false,
            down: true,
        };
        self.pt.partial.insert(pfn, p);
        self.pt.demoting.push(pfn);
        let mfn = self.mfn(pfn);
        self.note(Change::Devalidated { mfn, typ: ty });
    }

    /// `put_old_guest_table` / `demote_l1_table` .. `demote_l4_table`:
    /// release the demotion stack's references, highest slot first, one
    /// unit of work per entry (a table whose last type reference goes
    /// joins the stack). True when the stack is empty (every demotion
    /// finished); false when the budget ran out first (`-ERESTART`:
    /// the caller makes a continuation); at least one entry is released
    /// per invocation. hv-sim keeps one stack per domain where Xen keeps
    /// `old_guest_table` per vCPU: continuations run at once here.
    pub(crate) fn finish_demotions(&mut self) -> bool {
        while let Some(pfn) = self.pt.demoting.pop() {
            // A table taken again meanwhile is validated, or partial in a
            // validation of its own: its demotion is over.
            let Some(p) = self.pt.partial.get(&pfn).copied().filter(|p| p.down) else {
                continue;
            };
            let level = self.frames[pfn].typ.level().unwrap_or(1);
            // A live L1's entries are the direct map's and keep theirs.
            let top = if self.pt.live_l1.contains_key(&pfn) {
                0
            } else {
                p.next
            };
            let mut next = top;
            for slot in guest_slots(level).filter(move |&s| s < top).rev() {
                if self.work >= PREEMPT_BUDGET {
                    let p = Partial { next, ..p };
                    self.pt.partial.insert(pfn, p);
                    self.pt.demoting.push(pfn);
                    return false;
                }
                self.work += 1;
                let e = self.read_entry(pfn, slot);
                self.put_entry(level, e, pfn);
                next = slot;
            }
            self.pt.partial.remove(&pfn);
            self.frames[pfn].type_count = 0;
            self.put_page(pfn);
        }
        true
    }

    /// `get_page_and_type_from_mfn`.
    fn get_page_and_type(&mut self, mfn: u64, ty: PageType) -> Result<usize, Fail> {
        let pfn = self.get_page(mfn)?;
        if let Err(f) = self.get_pt_type(pfn, ty) {
            self.put_page(pfn);
            return Err(f);
        }
        Ok(pfn)
    }

    fn put_page_and_type(&mut self, pfn: usize) {
        self.put_pt_type(pfn, None);
        self.put_page(pfn);
    }

    /// `promote_l1_table` .. `promote_l4_table`: every (guest) slot in order
    /// from `from.next`; a valid present entry is written back adjusted; at
    /// the first bad one the earlier entries' references are dropped (the
    /// write-backs stay). Err carries the slot. Each entry is a unit of
    /// work; an L2-L4 table stops with `ERESTART` (recording where, as
    /// [`Partial`]) before a slot past its first once the invocation's
    /// budget is spent, or when the table its entry names was preempted.
    fn validate(&mut self, pfn: usize, ty: PageType, from: Partial) -> Result<(), (Fail, usize)> {
        let Some(level) = ty.level() else {
            return Ok(());
        };
        if self.pt.live_l1.contains_key(&pfn) {
            // The direct map holds a live L1's references.
            return Ok(());
        }
        let mut child = from.child;
        for slot in guest_slots(level).filter(|&s| s >= from.next) {
            if level > 1 && slot > from.next && self.work >= PREEMPT_BUDGET {
                let p = Partial {
                    next: slot,
                    ..Partial::default()
                };
                self.pt.partial.insert(pfn, p);
                return Err((fail(ERESTART, "validation preempted"), slot));
            }
            self.work += 1;
            let e = self.read_entry(pfn, slot);
            let partial = std::mem::take(&mut child);
            if e & PTE_P == 0 {
                continue;
            }
            let r = if level == 1 {
                self.get_page_from_l1e(e, PgOwner::Current)
                    .map(|flip| e ^ flip)
            } else {
                self.get_page_from_lne(level, e, pfn, partial).map(|()| e)
            };
            match r {
                Ok(v) => {
                    let n = adjust(level, v);
                    if n != e {
                        self.write_entry(pfn, slot, n);
                    }
                }
                Err(f) if f.errno == ERESTART => {
                    let p = Partial {
                        next: slot,
                        child: true,
                        down: false,
                    };
                    self.pt.partial.insert(pfn, p);
                    return Err((f, slot));
                }
                Err(f) => {
                    for s in guest_slots(level).filter(|&s| s < slot).rev() {
                        self.work += 1;
                        let e = self.read_entry(pfn, s);
                        self.put_entry(level, e, pfn);
                    }
                    return Err((f, slot));
                }
            }
        }
        if level == 4 {
            self.init_xen_l4_slots(pfn);
        }
        Ok(())
    }

    /// `put_page_from_l1e` .. `put_page_from_l4e` for an entry of table
    /// `tbl` at `level`.
    fn put_entry(&mut self, level: u8, e: u64, tbl: usize) {
        if e & PTE_P == 0 {
            return;
        }
        let mfn = mfn_of(e);
        let Some(t) = self.m2p(mfn) else {
            return;
        };
        if level == 1 {
            let f = &mut self.frames[t];
            if e & PTE_RW != 0 {
                f.type_count = f.type_count.saturating_sub(1);
            }
            f.refs = f.refs.saturating_sub(1);
        } else if t != tbl {
            self.put_pt_type(t, Some(tbl));
            self.put_page(t);
        }
    }

    /// `init_xen_l4_slots` (and `fill_ro_mpt`): Xen's entries in slots
    /// 256-271. hv-sim writes the self map (slot 258) as Xen does and, for
    /// Xen's own tables, entries naming a frame that is not the domain's.
    fn init_xen_l4_slots(&mut self, pfn: usize) {
        let own = self.mfn(pfn);
        for slot in XEN_L4_SLOTS {
            let v = match slot {
                LINEAR_PT_SLOT => own << 12 | PAGE_HYPERVISOR_RW,
                SH_LINEAR_PT_SLOT => 0,
                s => self.xen_frame(s) << 12 | PAGE_HYPERVISOR_RW,
            };
            self.write_entry(pfn, slot, v);
        }
    }

    /// A machine frame standing for one of Xen's own tables: valid, never
    /// the domain's (frame numbers 1 mod 3 from MFN_OFFSET are nobody's).
    fn xen_frame(&self, slot: usize) -> u64 {
        MFN_OFFSET + 1 + 3 * (slot as u64 % 16)
    }

    /// `get_page_from_l1e(l1e, current domain, pg_owner)`: Ok(flags to
    /// flip). hv-sim gives no domain I/O memory: a frame that is not RAM
    /// is refused (-EPERM; -EINVAL for INVALID_MFN).
    fn get_page_from_l1e(&mut self, e: u64, pg: PgOwner) -> Result<u64, Fail> {
        let disallow = self.l1_disallow_mask();
        if e & disallow != 0 {
            return Err(fail(
                EINVAL,
                format!("L1 entry {e:#x} sets disallowed bits {:#x}", e & disallow),
            ));
        }
        let mfn = mfn_of(e);
        if !self.mfn_valid(mfn) {
            return Err(if mfn == INVALID_MFN {
                fail(EINVAL, format!("L1 entry {e:#x}: mfn is INVALID_MFN"))
            } else {
                fail(
                    EPERM,
                    format!(
                        "L1 entry {e:#x}: mfn {mfn:#x} is not RAM and not permitted I/O memory"
                    ),
                )
            });
        }
        let Some(pfn) = self.m2p(mfn) else {
            return Err(fail(
                EBUSY,
                format!("L1 entry {e:#x}: mfn {mfn:#x} is not the domain's"),
            ));
        };
        if pg != PgOwner::Current {
            return Err(fail(
                EBUSY,
                format!(
                    "L1 entry {e:#x}: mfn {mfn:#x} belongs to the caller, not to {} (xsm_priv_mapping refuses)",
                    pg.name()
                ),
            ));
        }
        if e & PTE_RW != 0 {
            self.get_writable_type(pfn)
                .map_err(|r| fail(EBUSY, format!("L1 entry {e:#x} is writable: {r}")))?;
        }
        self.frames[pfn].refs += 1;
        Ok(0)
    }

    /// `get_page_from_l2e` / `l3e` / `l4e` for an entry of table `tbl` at
    /// `level`: the frame takes the next lower type, else (-EINVAL) it may
    /// be a read-only linear map of a table of this level. `partial`
    /// (`PTF_partial_set`): `tbl` already holds a general reference to the
    /// part-validated frame. On `ERESTART` the general reference stays
    /// (`PTF_retain_ref_on_restart`).
    fn get_page_from_lne(
        &mut self,
        level: u8,
        e: u64,
        tbl: usize,
        partial: bool,
    ) -> Result<(), Fail> {
        if e & BASE_DISALLOW != 0 {
            return Err(fail(
                EINVAL,
                format!(
                    "L{level} entry {e:#x} sets disallowed bits {:#x}",
                    e & BASE_DISALLOW
                ),
            ));
        }
        let child = PageType::table(level - 1).unwrap_or(PageType::None);
        let mfn = mfn_of(e);
        let got = match self.m2p(mfn) {
            Some(p) if partial => Ok(p),
            _ => self.get_page(mfn),
        };
        let r = got.and_then(|p| match self.get_pt_type(p, child) {
            Err(f) if f.errno != ERESTART => {
                self.put_page(p);
                Err(f)
            }
            r => r,
        });
        match r {
            Err(f) if f.errno == EINVAL => {
                if self.get_linear(level, e, tbl) {
                    Ok(())
                } else {
                    Err(f)
                }
            }
            r => r,
        }
    }

    /// [`Inner::get_page_from_lne`] without `PTF_retain_ref_on_restart`
    /// (`mod_l2_entry` .. `mod_l4_entry`): a preempted validation drops the
    /// general reference; the frame stays partial for the re-executed call.
    fn get_page_from_lne_once(&mut self, level: u8, e: u64, tbl: usize) -> Result<(), Fail> {
        let r = self.get_page_from_lne(level, e, tbl, false);
        if let Err(f) = &r
            && f.errno == ERESTART
            && let Some(p) = self.m2p(mfn_of(e))
        {
            self.put_page(p);
        }
        r
    }

    /// `get_l2_linear_pagetable` .. `l4`: a read-only entry naming the
    /// table itself (no reference), or a validated table of the same level
    /// that holds no linear entries itself, in a table that is not mapped
    /// linearly.
    fn get_linear(&mut self, level: u8, e: u64, tbl: usize) -> bool {
        if e & PTE_RW != 0 {
            return false;
        }
        let mfn = mfn_of(e);
        if mfn == self.mfn(tbl) {
            return true;
        }
        let Ok(pg) = self.get_page(mfn) else {
            return false;
        };
        let ty = PageType::table(level).unwrap_or(PageType::None);
        let lin = |s: &Self, p: usize| s.pt.linear.get(&p).copied().unwrap_or(0);
        let f = self.frames[pg];
        if lin(self, tbl) < 0
            || lin(self, pg) > 0
            || f.typ != ty
            || !f.validated
            || f.type_count == 0
        {
            self.put_page(pg);
            return false;
        }
        *self.pt.linear.entry(tbl).or_default() += 1;
        *self.pt.linear.entry(pg).or_default() -= 1;
        self.pt.linear.retain(|_, c| *c != 0);
        self.frames[pg].type_count += 1;
        let (a, b) = (self.mfn(tbl), self.mfn(pg));
        self.note(Change::Linear {
            from: a,
            level,
            to: b,
        });
        true
    }

    // ----------------------------------------------------------------
    // Updates

    // ----------------------------------------------------------------
    // MMUEXT commands

    // ----------------------------------------------------------------
    // The dom0 builder's tables

    // ----------------------------------------------------------------
    // Invariants
}

impl XenDomain {
    /// Whether frame `mfn` is pinned (MMUEXT_PIN_L*_TABLE).
    pub fn is_pinned(&self, mfn: u64) -> bool {
        let g = self.lock();
        g.m2p(mfn).is_some_and(|p| g.pt.pinned.contains(&p))
    }

    /// Frame `mfn`'s `linear_pt_count`: positive, linear entries it holds;
    /// negative, same-level tables mapping it (0 for frames not the
    /// domain's).
    pub fn linear_pt_count(&self, mfn: u64) -> i32 {
        let g = self.lock();
        g.m2p(mfn)
            .and_then(|p| g.pt.linear.get(&p).copied())
            .unwrap_or(0)
    }

    /// vCPU `v`'s user-mode root (MMUEXT_NEW_USER_BASEPTR), if any.
    pub fn user_baseptr(&self, v: usize) -> Option<u64> {
        self.lock().pt.user_root.get(&v).copied()
    }

    /// The value MMU_MACHPHYS_UPDATE last wrote for frame `mfn`, if any.
    pub fn machphys_entry(&self, mfn: u64) -> Option<u64> {
        let g = self.lock();
        g.m2p(mfn).and_then(|p| g.pt.m2p.get(&p).copied())
    }
}
