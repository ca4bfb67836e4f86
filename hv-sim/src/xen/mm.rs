//! `arch/x86/mm.c` for descriptor and writable pages: their type
//! references (`get_page_type` for `PGT_seg_desc_page` and
//! `PGT_writable_page`), `do_update_va_mapping` and `do_mmuext_op` with its `switch` (the
//! page-table commands are in `mmuext_pt.rs`, the batch loop it shares
//! with `do_mmu_update` in `mmu_update.rs`).

use std::ops::ControlFlow;

use super::pagetables::{Batch, in_batch};
use super::*;

impl Inner {
    pub(super) fn frame_reason(&self, mfn: u64) -> String {
        if self.mfn_valid(mfn) {
            format!("mfn {mfn:#x} is not owned by this domain")
        } else {
            format!("mfn {mfn:#x} is not a valid machine frame")
        }
    }

    pub(super) fn writable_vas(&self, mfn: u64) -> Vec<u64> {
        self.ptes
            .iter()
            .enumerate()
            .filter(|(_, p)| {
                **p & (PTE_P | PTE_RW) == PTE_P | PTE_RW && (**p & PTE_MFN_MASK) >> 12 == mfn
            })
            .map(|(i, _)| self.va_base + (i * PAGE_SIZE) as u64)
            .collect()
    }

    /// get_page_and_type(PGT_seg_desc_page); validates on a type change.
    pub(super) fn get_segdesc(&mut self, mfn: u64) -> Result<(), String> {
        let pfn = self.m2p(mfn).ok_or_else(|| self.frame_reason(mfn))?;
        let fi = self.frames[pfn];
        if fi.typ == PageType::SegDesc {
            let f = &mut self.frames[pfn];
            f.type_count += 1;
            f.refs += 1;
            return Ok(());
        }
        if fi.type_count > 0 {
            return Err(match fi.typ {
                PageType::Writable => {
                    let vas: Vec<String> = self
                        .writable_vas(mfn)
                        .iter()
                        .map(|v| format!("{v:#x}"))
                        .collect();
                    format!(
                        "frame {mfn:#x} is mapped writable at va {}; Xen requires descriptor pages to have no writable mapping",
                        if vas.is_empty() {
                            "?".to_string()
                        } else {
                            vas.join(", ")
                        }
                    )
                }
                t => format!(
                    "frame {mfn:#x} is in use as a {} page; it cannot become a descriptor page",
                    t.name()
                ),
            });
        }
        // Type change: validate all 512 slots in place, stop at the first bad.
        for i in 0..512 {
            let d = self.ram.read_u64(pfn, i * 8);
            match check_descriptor(self.abi, d) {
                Ok(n) => {
                    if n != d {
                        self.ram.write_u64(pfn, i * 8, n);
                    }
                }
                Err(r) => {
                    let f = &mut self.frames[pfn];
                    f.typ = PageType::None;
                    f.validated = false;
                    self.shadows.remove(pfn);
                    return Err(format!(
                        "validating frame {mfn:#x}: slot {i} = {d:#018x} rejected: {r} (slots 0..{i} were already rewritten in place)"
                    ));
                }
            }
        }
        let f = &mut self.frames[pfn];
        f.typ = PageType::SegDesc;
        f.validated = true;
        f.type_count = 1;
        f.refs += 1;
        self.shadows.insert(pfn, self.ram.page_slots(pfn));
        self.note(Change::Typed {
            mfn,
            typ: PageType::SegDesc,
        });
        Ok(())
    }

    pub(super) fn put_type(&mut self, mfn: u64) {
        if let Some(pfn) = self.m2p(mfn) {
            let f = &mut self.frames[pfn];
            f.type_count = f.type_count.saturating_sub(1);
            f.refs = f.refs.saturating_sub(1);
        }
    }

    /// get_page_type(PGT_writable_page) (no general ref).
    pub(super) fn get_writable_type(&mut self, pfn: usize) -> Result<(), String> {
        let mfn = self.mfn(pfn);
        let f = self.frames[pfn];
        if f.typ != PageType::Writable {
            if f.type_count > 0 {
                return Err(match f.typ {
                    PageType::SegDesc => format!(
                        "frame {mfn:#x} is a live descriptor page (seg_desc, {} users); Xen refuses writable mappings of GDT/LDT frames",
                        f.type_count
                    ),
                    t => format!("frame {mfn:#x} is in use as a {} page", t.name()),
                });
            }
            if f.typ == PageType::SegDesc {
                self.shadows.remove(pfn);
                self.note(Change::SegDescLost { mfn });
            }
            let fm = &mut self.frames[pfn];
            fm.typ = PageType::Writable;
            fm.validated = false;
        }
        self.frames[pfn].type_count += 1;
        Ok(())
    }

    pub(super) fn update_va_mapping(&mut self, va: u64, pte: u64, flags: u64) -> Hc {
        let idx = match self.va_page(va) {
            Some(i) if self.addr_ok(va) => i,
            _ => {
                return Err(fail(
                    EINVAL,
                    format!("no guest L1 page table covers va {va:#x}"),
                ));
            }
        };
        let old = self.ptes[idx];
        if pte & PTE_P != 0 {
            let disallow = self.l1_disallow_mask();
            if pte & disallow != 0 {
                return Err(fail(
                    EINVAL,
                    format!("pte {pte:#x} sets disallowed bits {:#x}", pte & disallow),
                ));
            }
            let mfn = (pte & PTE_MFN_MASK) >> 12;
            let Some(pfn) = self.m2p(mfn) else {
                return Err(if self.mfn_valid(mfn) {
                    fail(EBUSY, format!("mfn {mfn:#x} belongs to another domain"))
                } else if mfn == INVALID_MFN {
                    fail(EINVAL, format!("mfn {mfn:#x} is INVALID_MFN"))
                } else {
                    fail(
                        EPERM,
                        format!("mfn {mfn:#x} is not RAM (MMIO without permission)"),
                    )
                });
            };
            if pte & PTE_RW != 0 {
                self.get_writable_type(pfn).map_err(|r| fail(EBUSY, r))?;
            }
            self.frames[pfn].refs += 1;
        }
        if old & PTE_P != 0
            && let Some(opfn) = self.m2p((old & PTE_MFN_MASK) >> 12)
        {
            let f = &mut self.frames[opfn];
            f.refs -= 1;
            if old & PTE_RW != 0 {
                f.type_count -= 1;
            }
        }
        // pv64 (`pv/mm.h` `adjust_guest_l1e`): a present entry always gets
        // _PAGE_USER (the kernel runs in ring 3); one the guest did not mark
        // user also gets _PAGE_GUEST_KERNEL, and one without
        // _PAGE_GUEST_KERNEL gets _PAGE_GLOBAL.
        let mut pte = pte;
        if self.abi == Abi::Pv64 && pte & PTE_P != 0 {
            if pte & PTE_USER == 0 {
                pte |= PTE_GUEST_KERNEL | PTE_USER;
            }
            if pte & PTE_GUEST_KERNEL == 0 {
                pte |= PTE_GLOBAL | PTE_USER;
            }
        }
        self.ptes[idx] = pte;
        self.live_l1_written(idx);
        let page_va = self.va_base + (idx * PAGE_SIZE) as u64;
        self.note(Change::Pte {
            va: page_va,
            old,
            new: pte,
        });
        let kind = flags & 3;
        let target = flags & !3;
        if (kind == 1 || kind == 2) && target != 0 && target != 4 {
            self.read_vcpu_bitmap(target)?;
        }
        Ok(0)
    }

    /// `vcpumask_to_pcpumask`: reads the guest's vCPU bitmap one long (8
    /// bytes pv64, 4 pv32) at a time while the word's first vCPU exists,
    /// and stops early at a set bit naming a vCPU beyond the last. A read
    /// fault is -EFAULT.
    pub(super) fn read_vcpu_bitmap(&self, bmap: u64) -> Hc {
        let bits = self.long_size() * 8;
        let nvcpus = self.vcpus.len() as u64;
        let mut offs = 0u64;
        loop {
            let bias = offs * bits;
            if bias >= nvcpus {
                return Ok(0);
            }
            let va = bmap.wrapping_add(offs * self.long_size());
            let Ok(word) = self.load_long(va) else {
                return Err(fail(
                    EFAULT,
                    format!(
                        "vCPU bitmap word {offs} at {va:#x} cannot be read (the PTE was already written)"
                    ),
                ));
            };
            // Set bits are visited upwards; one beyond the last vCPU ends
            // the walk, so the highest set bit decides.
            if word != 0 && bias + u64::from(63 - word.leading_zeros()) >= nvcpus {
                return Ok(0);
            }
            offs += 1;
        }
    }

    /// `do_mmuext_op(uops, count, pdone, foreigndom)` (and, for a 32-bit
    /// guest, `compat_mmuext_op`'s translation around it).
    pub(super) fn mmuext_op(
        &mut self,
        v: usize,
        ops: u64,
        count: u32,
        pdone: u64,
        foreigndom: u32,
    ) -> Hc {
        let esize = 3 * self.long_size();
        let b = Batch::new(nr::MMUEXT_OP, ops, esize, count, pdone, foreigndom);
        let b = match self.batch_start(b, "ops") {
            ControlFlow::Continue(b) => b,
            ControlFlow::Break(rc) => return rc,
        };
        // pv32 (`compat_mmuext_op`): ops are translated in chunks and only a
        // non-empty chunk reaches `do_mmuext_op`, so with count 0 nothing
        // else (foreigndom, pdone) is looked at.
        if self.abi == Abi::Pv32 && b.count == 0 {
            return Ok(0);
        }
        if !self.addr_ok(ops) {
            return Err(fail(EFAULT, format!("ops {ops:#x} is not a guest address")));
        }
        let pg = self.mmuext_pg_owner(foreigndom)?;
        let ops = self.batch_items(&b, |this, i, va| {
            let Some(op) = this.copy_mmuext_op(va) else {
                return Err(fail(
                    EFAULT,
                    format!("mmuext_op {i} at {va:#x} cannot be read"),
                ));
            };
            this.mmuext_cmd(v, op, pg)
                .map_err(|f| in_batch(f, format_args!("op {i} (cmd {})", op.cmd)))
        });
        self.batch_end(&b, ops)
    }

    /// `get_pg_owner(foreigndom)` and `xsm_mmuext_op` for `do_mmuext_op`.
    fn mmuext_pg_owner(&self, foreigndom: u32) -> Result<PgOwner, Fail> {
        let dom = foreigndom as u16;
        match dom {
            DOMID_SELF => Ok(PgOwner::Current),
            d if d == self.own_domid() => Err(fail(
                ESRCH,
                format!("foreigndom {d} is the caller's own id; use DOMID_SELF"),
            )),
            // dom_io / dom_xen exist and are PV, and so does dom0 for a
            // domU (`get_pg_owner` finds it), but the default XSM policy
            // (XSM_TARGET) lets only the domain itself or a control domain
            // act on another: a domU is refused, the hardware domain not.
            DOMID_IO | DOMID_XEN | 0 if !self.privileged => Err(fail(
                EPERM,
                format!(
                    "foreigndom {dom:#x}: the default XSM policy refuses an unprivileged domain acting on another (no op runs)"
                ),
            )),
            DOMID_IO => Ok(PgOwner::Io),
            DOMID_XEN => Ok(PgOwner::Xen),
            d => Err(fail(ESRCH, format!("no domain {d:#x}"))),
        }
    }

    /// `__copy_from_guest` of one `struct mmuext_op` at `va` (`cmd`, then
    /// `arg1` and `arg2` as longs: 24 bytes for pv64, 12 in the compat
    /// layout); `None` if it cannot be read.
    fn copy_mmuext_op(&self, va: u64) -> Option<MmuextOp> {
        let mut b = [0u8; 24];
        let long = self.long_size() as usize;
        self.load_bytes(va, &mut b[..3 * long]).ok()?;
        let word = |at: usize| {
            let mut w = [0u8; 8];
            w[..long].copy_from_slice(&b[at..at + long]);
            u64::from_le_bytes(w)
        };
        Some(MmuextOp {
            cmd: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            arg1: word(long),
            arg2: word(2 * long),
        })
    }

    /// `do_mmuext_op`'s `switch ( op.cmd )`, in Xen's order. Every command
    /// but the pins and UNPIN needs the caller to be the page owner.
    fn mmuext_cmd(&mut self, v: usize, op: MmuextOp, pg: PgOwner) -> Hc {
        let MmuextOp { cmd, arg1, arg2 } = op;
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
            // `compat_mmuext_op` refuses it while translating, before
            // `do_mmuext_op` looks at the page owner.
            MMUEXT_NEW_USER_BASEPTR if self.abi == Abi::Pv32 => Err(fail(
                EINVAL,
                "NEW_USER_BASEPTR does not exist for 32-bit PV guests",
            )),
            MMUEXT_NEW_USER_BASEPTR if foreign => Err(perm("NEW_USER_BASEPTR")),
            MMUEXT_NEW_USER_BASEPTR => self.new_user_baseptr(v, arg1),
            MMUEXT_TLB_FLUSH_LOCAL
            | MMUEXT_INVLPG_LOCAL
            | MMUEXT_TLB_FLUSH_ALL
            | MMUEXT_INVLPG_ALL
                if foreign =>
            {
                Err(perm("TLB flush"))
            }
            MMUEXT_TLB_FLUSH_LOCAL
            | MMUEXT_INVLPG_LOCAL
            | MMUEXT_TLB_FLUSH_ALL
            | MMUEXT_INVLPG_ALL => Ok(0),
            MMUEXT_TLB_FLUSH_MULTI | MMUEXT_INVLPG_MULTI if foreign => {
                Err(perm("TLB_FLUSH_MULTI/INVLPG_MULTI"))
            }
            // vcpumask_to_pcpumask failing makes the op -EINVAL.
            MMUEXT_TLB_FLUSH_MULTI | MMUEXT_INVLPG_MULTI => self
                .read_vcpu_bitmap(arg2)
                .map_err(|f| fail(EINVAL, format!("vCPU mask: {}", f.reason))),
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
            MMUEXT_SET_LDT if foreign => Err(perm("SET_LDT")),
            MMUEXT_SET_LDT => self.set_ldt(v, arg1, arg2 as u32),
            MMUEXT_CLEAR_PAGE => self.clear_page(pg, arg1),
            MMUEXT_COPY_PAGE => self.copy_page(pg, arg1, arg2),
            MMUEXT_MARK_SUPER | MMUEXT_UNMARK_SUPER => {
                Err(fail(EOPNOTSUPP, "superpage marking is not supported"))
            }
            _ => Err(fail(ENOSYS, format!("unknown MMUEXT command {cmd}"))),
        }
    }

    /// MMUEXT_SET_LDT: `ents` entries at `ptr` (ZERO_BLOCK_PTR for none);
    /// the old LDT's mapped pages are dropped when it changes.
    fn set_ldt(&mut self, v: usize, ptr: u64, ents: u32) -> Hc {
        if ents > 8192 {
            return Err(fail(EINVAL, format!("{ents} LDT entries: at most 8192")));
        }
        let base = if ents > 0 {
            if ptr & 0xFFF != 0 {
                return Err(fail(
                    EINVAL,
                    format!("LDT base {ptr:#x} is not page aligned"),
                ));
            }
            if !self.addr_ok(ptr) {
                return Err(fail(
                    EINVAL,
                    format!("LDT base {ptr:#x} is not a guest address"),
                ));
            }
            ptr
        } else {
            ZERO_BLOCK_PTR
        };
        let vc = &self.vcpus[v];
        if vc.ldt_base == base && vc.ldt_ents == ents {
            return Ok(0);
        }
        self.destroy_ldt(v);
        let vc = &mut self.vcpus[v];
        vc.ldt_base = base;
        vc.ldt_ents = ents;
        self.note(Change::Ldt {
            base,
            entries: u64::from(ents),
        });
        Ok(0)
    }
}

/// One `struct mmuext_op` as the guest wrote it.
#[derive(Clone, Copy, Debug)]
struct MmuextOp {
    /// `cmd`: an `MMUEXT_*` command.
    cmd: u32,
    /// `arg1` (`mfn` or `linear_addr`).
    arg1: u64,
    /// `arg2` (`nr_ents`, `vcpumask` or `src_mfn`).
    arg2: u64,
}
