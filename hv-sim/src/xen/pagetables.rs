//! Xen's page-table types for a 64-bit PV guest: the page-table part of
//! `xen/arch/x86/mm.c` (Xen 4.17), as `impl Inner` blocks over the domain's
//! state. A child module of [`super`] (`domain.rs`), hooked from its
//! dispatcher (`mmu_update`) and from `mmuext_one` (PIN/UNPIN, the base
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
//! Xen defers some work to continuations (`old_guest_table`, preemption);
//! the guest sees only the final result, which hv-sim computes at once.

use std::collections::{BTreeMap, BTreeSet};

use super::*;

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
    fn name(self) -> &'static str {
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
}

/// Who holds page-table references, recounted for the invariants.
pub(super) struct PtUsers {
    /// Type references held by page-table entries, pins and roots.
    pub(super) typed: Vec<u32>,
    /// General references held by the same.
    pub(super) refs: Vec<u32>,
    /// Writable type references held by writable L1 entries of guest-built
    /// tables.
    pub(super) rw: Vec<u32>,
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
    /// failure at slot 0) no type.
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
                return Err(fail(
                    EINVAL,
                    format!("mfn {mfn:#x} is being validated as {}", ty.name()),
                ));
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
        match self.validate(pfn, ty) {
            Ok(()) => {
                self.frames[pfn].validated = true;
                self.shadows.insert(pfn, self.ram.page_slots(pfn));
                self.note(Change::Typed { mfn, typ: ty });
                Ok(())
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
            self.devalidate(pfn, ty);
            let mfn = self.mfn(pfn);
            self.note(Change::Devalidated { mfn, typ: ty });
        }
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

    /// `promote_l1_table` .. `promote_l4_table`: every (guest) slot in order;
    /// a valid present entry is written back adjusted; at the first bad
    /// one the earlier entries' references are dropped (the write-backs
    /// stay). Err carries the slot.
    fn validate(&mut self, pfn: usize, ty: PageType) -> Result<(), (Fail, usize)> {
        let Some(level) = ty.level() else {
            return Ok(());
        };
        if self.pt.live_l1.contains_key(&pfn) {
            // The direct map holds a live L1's references.
            return Ok(());
        }
        let slots: Vec<usize> = guest_slots(level).collect();
        for (k, &slot) in slots.iter().enumerate() {
            let e = self.read_entry(pfn, slot);
            if e & PTE_P == 0 {
                continue;
            }
            let r = if level == 1 {
                self.get_page_from_l1e(e, PgOwner::Current)
                    .map(|flip| e ^ flip)
            } else {
                self.get_page_from_lne(level, e, pfn).map(|()| e)
            };
            match r {
                Ok(v) => {
                    let n = adjust(level, v);
                    if n != e {
                        self.write_entry(pfn, slot, n);
                    }
                }
                Err(f) => {
                    for &s in slots[..k].iter().rev() {
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

    /// `demote_l1_table` .. `demote_l4_table` (a live L1's entries are the
    /// direct map's and keep their references).
    fn devalidate(&mut self, pfn: usize, ty: PageType) {
        let Some(level) = ty.level() else {
            return;
        };
        if self.pt.live_l1.contains_key(&pfn) {
            return;
        }
        for slot in guest_slots(level).rev() {
            let e = self.read_entry(pfn, slot);
            self.put_entry(level, e, pfn);
        }
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
    /// be a read-only linear map of a table of this level.
    fn get_page_from_lne(&mut self, level: u8, e: u64, tbl: usize) -> Result<(), Fail> {
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
        match self.get_page_and_type(mfn_of(e), child) {
            Ok(_) => Ok(()),
            Err(f) if f.errno == EINVAL => {
                if self.get_linear(level, e, tbl) {
                    Ok(())
                } else {
                    Err(f)
                }
            }
            Err(f) => Err(f),
        }
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

    /// `mod_l1_entry` .. `mod_l4_entry` on slot `slot` of validated table
    /// `tbl`.
    fn mod_entry(
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
                self.get_page_from_lne(level, new, tbl)?;
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

    fn note_entry(
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
    pub(super) fn mmu_update(&mut self, ureqs: u64, count: u32, pdone: u64, foreigndom: u32) -> Hc {
        if self.abi == Abi::Pv32 {
            return Err(fail(
                ENOSYS,
                "hv-sim models mmu_update for 64-bit PV guests only",
            ));
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
        rc
    }

    /// The request loop of `do_mmu_update`: (result, requests done).
    fn mmu_update_reqs(&mut self, ureqs: u64, count: u32, pg: PgOwner) -> (Hc, u32) {
        let mut xsm_checked = false;
        for i in 0..count {
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
                return (Err(fail(f.errno, format!("request {i}: {}", f.reason))), i);
            }
        }
        (Ok(0), count)
    }

    /// One MMU_NORMAL_PT_UPDATE: a validated table in use is updated with
    /// `mod_l*_entry` (its `page_lock` needs a type reference); a frame
    /// that can take the writable type gets the raw value; a live
    /// descriptor page is refused.
    fn normal_update(&mut self, ptr: u64, val: u64, preserve_ad: bool, pg: PgOwner) -> Hc {
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
    fn machphys_update(&mut self, mfn: u64, gpfn: u64, pg: PgOwner) -> Hc {
        if pg == PgOwner::Xen && !self.privileged {
            return Err(fail(EPERM, "DOMID_XEN: refused by the XSM policy"));
        }
        let pfn = self.get_page_of(pg, mfn)?;
        self.put_page(pfn);
        self.pt.m2p.insert(pfn, gpfn);
        self.note(Change::M2p { mfn, gpfn });
        Ok(0)
    }

    // ----------------------------------------------------------------
    // MMUEXT commands

    /// The page-table commands of `do_mmuext_op` (PIN/UNPIN, NEW_BASEPTR,
    /// NEW_USER_BASEPTR, TLB_FLUSH_MULTI, INVLPG_MULTI, FLUSH_CACHE,
    /// CLEAR_PAGE, COPY_PAGE, FLUSH_CACHE_GLOBAL).
    pub(super) fn mmuext_pt(
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
    fn writable_page_of(&mut self, pg: PgOwner, mfn: u64) -> Result<usize, Fail> {
        let pfn = self.get_page_of(pg, mfn)?;
        if let Err(r) = self.get_writable_type(pfn) {
            self.put_page(pfn);
            return Err(fail(EINVAL, r));
        }
        Ok(pfn)
    }

    /// MMUEXT_PIN_L*_TABLE: the frame takes the type (validated on a type
    /// change) and keeps a reference while pinned.
    fn pin(&mut self, cmd: u32, mfn: u64, pg: PgOwner) -> Hc {
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
    fn unpin(&mut self, mfn: u64, pg: PgOwner) -> Hc {
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
    fn new_baseptr(&mut self, v: usize, mfn: u64) -> Hc {
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
    fn new_baseptr_pv32(&mut self, v: usize, mfn: u64) -> Hc {
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
    fn new_user_baseptr(&mut self, v: usize, mfn: u64) -> Hc {
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

    // ----------------------------------------------------------------
    // The dom0 builder's tables

    /// Type the bootstrap tables in `pfns` (the first is the L4) as
    /// `mark_pv_pt_pages_rdonly` does: mapped read-only, each validated
    /// with one type reference from its parent's entry, the L4 pinned and
    /// installed as vCPU 0's root. Their L1s become the live ones.
    pub(super) fn install_bootstrap(&mut self, pfns: std::ops::Range<u64>) -> Result<(), String> {
        let owned = |p: u64| p >= self.reserved as u64 && p < self.pages() as u64;
        if pfns.is_empty() {
            return Err("no bootstrap page tables".into());
        }
        for pfn in pfns.clone() {
            let p = pfn as usize;
            if !owned(pfn) {
                return Err(format!(
                    "bootstrap page table pfn {pfn:#x} is not the domain's"
                ));
            }
            let f = &self.frames[p];
            if f.typ != PageType::Writable || f.type_count != 1 || f.refs != 1 {
                return Err(format!(
                    "bootstrap page table pfn {pfn:#x} is already in use"
                ));
            }
        }
        // Walk the tables from the root: (pfn, level, VA of its slot 0).
        let root = pfns.start as usize;
        let mut level_of: BTreeMap<usize, (u8, u64)> = BTreeMap::new();
        let mut todo = vec![(root, 4u8, 0u64)];
        while let Some((p, level, va)) = todo.pop() {
            if level_of.insert(p, (level, va)).is_some() {
                return Err(format!("bootstrap page table pfn {p:#x} is reached twice"));
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
                        return Err(format!(
                            "bootstrap L{level} pfn {p:#x} slot {slot} = {e:#x} names no bootstrap table"
                        ));
                    }
                }
            }
        }
        if level_of.len() != pfns.clone().count() {
            return Err("a bootstrap page-table frame is not reachable from the L4".into());
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

    // ----------------------------------------------------------------
    // Invariants

    /// The references page tables, pins and roots hold.
    pub(super) fn pt_users(&self) -> Result<PtUsers, String> {
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
            for slot in guest_slots(level) {
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
    pub(super) fn pt_invariants(&self) -> Result<(), String> {
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
        let mut lin = vec![(0i32, 0i32); self.pages()];
        for (pfn, f) in self.frames.iter().enumerate() {
            let mfn = self.mfn(pfn);
            let Some(level) = f.typ.level() else {
                if self.shadows.contains_key(pfn) && f.typ != PageType::SegDesc {
                    return Err(format!("mfn {mfn:#x} ({}) has a shadow", f.typ.name()));
                }
                continue;
            };
            if f.validated != (f.type_count > 0) {
                return Err(format!(
                    "{} mfn {mfn:#x}: validated {} with {} references",
                    f.typ.name(),
                    f.validated,
                    f.type_count
                ));
            }
            if self.shadows.contains_key(pfn) != (f.type_count > 0) {
                return Err(format!("{} mfn {mfn:#x}: shadow out of step", f.typ.name()));
            }
            if f.type_count == 0 || level == 1 {
                continue;
            }
            for slot in guest_slots(level) {
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

// --------------------------------------------------------------------
// Writable page tables (`pv/ro-page-fault.c`)

/// A general-purpose register's value in `gpr` (rax, rcx, rdx, rbx, rsp,
/// rbp, rsi, rdi, r8..r15) at the register's width, and the width.
fn reg_value(reg: iced_x86::Register, gpr: &[u64; 16]) -> Option<(u64, u32)> {
    use iced_x86::Register as R;
    let r = reg as u32;
    let block = |first: R, n: u32| {
        let f = first as u32;
        (r >= f && r < f + n).then_some((r - f) as usize)
    };
    if let Some(i) = block(R::AL, 4) {
        return Some((gpr[i] & 0xff, 1));
    }
    if let Some(i) = block(R::AH, 4) {
        return Some(((gpr[i] >> 8) & 0xff, 1));
    }
    if let Some(i) = block(R::SPL, 12) {
        return Some((gpr[i + 4] & 0xff, 1));
    }
    for (first, mask, width) in [
        (R::AX, 0xffff, 2),
        (R::EAX, 0xffff_ffff, 4),
        (R::RAX, u64::MAX, 8),
    ] {
        if let Some(i) = block(first, 16) {
            return Some((gpr[i] & mask, width));
        }
    }
    None
}

/// A plain `mov` to memory decoded from `insn` at `rip`: (address, width,
/// value, instruction length). Segment-prefixed and other instructions
/// are not decoded here.
fn decode_store(insn: &[u8], rip: u64, gpr: &[u64; 16]) -> Option<(u64, u32, u64, usize)> {
    use iced_x86::{Decoder, DecoderOptions, Mnemonic, OpKind, Register};
    let mut d = Decoder::with_ip(64, insn, rip, DecoderOptions::NONE);
    let i = d.decode();
    if i.is_invalid()
        || i.mnemonic() != Mnemonic::Mov
        || i.op0_kind() != OpKind::Memory
        || i.segment_prefix() != Register::None
    {
        return None;
    }
    let (value, width) = match i.op1_kind() {
        OpKind::Register => reg_value(i.op1_register(), gpr)?,
        OpKind::Immediate8 => (i.immediate(1), 1),
        OpKind::Immediate16 => (i.immediate(1), 2),
        OpKind::Immediate32 => (i.immediate(1), 4),
        OpKind::Immediate32to64 => (i.immediate(1), 8),
        _ => return None,
    };
    let addr = i.virtual_address(0, 0, |reg, _, _| {
        if matches!(
            reg,
            Register::ES | Register::CS | Register::SS | Register::DS
        ) {
            return Some(0);
        }
        reg_value(reg, gpr).map(|(v, _)| v)
    })?;
    Some((addr, width, value, i.len()))
}

/// The #PF error code Xen hands a PV guest (`pv_inject_event`): the user
/// bit tells the guest's mode (a 64-bit PV kernel runs in ring 3, so the
/// CPU always sets it), everything else is the hardware's.
pub fn guest_pf_error_code(hw: u32, guest_kernel_mode: bool) -> u32 {
    if guest_kernel_mode { hw & !4 } else { hw | 4 }
}

impl Inner {
    /// [`Inner::ptwr_update`] outside any hypercall: the notes it makes are
    /// not kept (no hypercall's trace entry to hold them).
    fn ptwr(&mut self, cr2: u64, addr: u64, width: u32, value: u64) -> bool {
        self.enter();
        let saved = self.owner.take();
        let done = self.ptwr_update(cr2, addr, width, value);
        self.owner = saved;
        self.audit_if_suspect();
        done
    }

    /// `ptwr_emulated_update` for a plain write of `width` bytes of
    /// `value` at `addr` that faulted at `cr2` on a read-only mapping:
    /// true when Xen completes it as a validated L1 update.
    fn ptwr_update(&mut self, cr2: u64, addr: u64, width: u32, value: u64) -> bool {
        // The hardware domain reaches the emulation through the r/o MMIO
        // check; another domain needs VMASST_TYPE_writable_pagetables,
        // which hv-sim does not model (vm_assist is -ENOSYS).
        if !self.privileged || self.abi != Abi::Pv64 {
            return false;
        }
        // guest_get_eff_kern_l1e: a present, read-only mapping of cr2.
        let Some(idx) = self.va_page(cr2).filter(|_| self.addr_ok(cr2)) else {
            return false;
        };
        let pte = self.ptes[idx];
        if pte & (PTE_P | PTE_RW) != PTE_P {
            return false;
        }
        // ptwr_do_page_fault: the domain's frame, locked as an L1.
        let Some(tbl) = self.m2p(mfn_of(pte)) else {
            return false;
        };
        let f = self.frames[tbl];
        if f.typ != PageType::L1 || f.type_count == 0 || !f.validated {
            return false;
        }
        // Naturally aligned, within cr2's page.
        if !matches!(width, 1 | 2 | 4 | 8)
            || (addr ^ cr2) & !0xfff != 0
            || addr & u64::from(width - 1) != 0
        {
            return false;
        }
        let slot = (addr as usize & 0xfff) / 8;
        let old = self.read_entry(tbl, slot);
        let mut new = value;
        if width != 8 {
            let shift = (addr & 7) * 8;
            let mask = ((1u64 << (width * 8)) - 1) << shift;
            new = (old & !mask) | ((value << shift) & mask);
        }
        if new & PTE_P != 0 {
            match self.get_page_from_l1e(new, PgOwner::Current) {
                Ok(flip) => new ^= flip,
                Err(_) => return false,
            }
        }
        let new = adjust(1, new);
        self.write_entry(tbl, slot, new);
        self.put_entry(1, old, tbl);
        self.note_entry(tbl, 1, slot, old, new, EntryVia::Ptwr);
        true
    }
}

impl XenDomain {
    /// The guest kernel wrote `width` bytes of `value` at `va` and the
    /// store faulted on a read-only mapping (`#PF` with the write and
    /// present bits): Xen's writable-page-table emulation
    /// (`pv_ro_page_fault` → `ptwr_emulated_update`). When `va` maps an L1
    /// page table in use, the new entry is validated as `mod_l1_entry`
    /// would (`get_page_from_l1e`, `adjust_guest_l1e`, no fast path) and
    /// written, and the store counts as done: true. Otherwise (no such
    /// table, a misaligned or page-crossing store, an entry Xen refuses)
    /// the #PF goes to the guest: false.
    ///
    /// Xen reaches this for the hardware domain always (through its
    /// read-only-MMIO check) and for other domains only with
    /// VMASST_TYPE_writable_pagetables, which hv-sim does not model.
    pub fn ptwr_write(&self, va: u64, width: u32, value: u64) -> bool {
        self.lock().ptwr(va, va, width, value)
    }

    /// [`XenDomain::ptwr_write`] for the faulting instruction `insn` at
    /// `rip` with general-purpose registers `gpr` (rax, rcx, rdx, rbx, rsp,
    /// rbp, rsi, rdi, r8–r15) and fault address `cr2`: a plain `mov` to
    /// memory (no segment prefix) is decoded and emulated. Returns the
    /// address of the next instruction when Xen completes the store, None
    /// when the #PF goes to the guest (hv-sim does not emulate other
    /// instructions that Xen's x86_emulate would: `xchg`, `cmpxchg`, string
    /// stores, read-modify-write arithmetic, FS/GS-relative stores).
    pub fn ptwr_fault(&self, cr2: u64, insn: &[u8], rip: u64, gpr: &[u64; 16]) -> Option<u64> {
        let (addr, width, value, len) = decode_store(insn, rip, gpr)?;
        self.lock()
            .ptwr(cr2, addr, width, value)
            .then(|| rip.wrapping_add(len as u64))
    }
}
