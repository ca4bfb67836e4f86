//! `arch/x86/pv/misc-hypercalls.c`: `do_stack_switch` and
//! `do_set_segment_base` (with the selector load `SEGBASE_GS_USER_SEL`
//! makes).

use super::*;

impl Inner {
    pub(super) fn stack_switch(&mut self, v: usize, ss: u64, sp: u64) -> Hc {
        let krpl = u64::from(self.abi.krpl());
        let ss = if ss & 3 < krpl { (ss & !3) | krpl } else { ss };
        let vc = &mut self.vcpus[v];
        vc.kernel_ss = ss;
        vc.kernel_sp = sp;
        self.note(Change::KernelStack { ss, sp });
        Ok(0)
    }

    pub(super) fn set_segment_base(&mut self, v: usize, which: u32, base: u64) -> Hc {
        if self.abi == Abi::Pv32 {
            return Err(fail(
                ENOSYS,
                "set_segment_base does not exist for 32-bit PV guests",
            ));
        }
        match which {
            0..=2 => {
                if !is_canonical(base) {
                    return Err(fail(EINVAL, format!("base {base:#x} is not canonical")));
                }
                let vc = &mut self.vcpus[v];
                let what = match which {
                    0 => {
                        vc.fs_base = base;
                        "fs_base"
                    }
                    1 => {
                        vc.gs_base_user = base;
                        "gs_base_user"
                    }
                    _ => {
                        vc.gs_base_kernel = base;
                        "gs_base_kernel"
                    }
                };
                self.note(Change::SegmentBase { which: what, base });
                Ok(0)
            }
            3 => {
                let mut sel = base as u16;
                if sel > 3 {
                    sel |= 3;
                }
                match self.load_data_selector(v, sel) {
                    Ok(b) => {
                        // gs_base_user is re-read from the segment register
                        // in every case; a NUL selector leaves base 0 (Intel
                        // clears it, and on AMD Xen loads a flat selector
                        // first).
                        let vc = &mut self.vcpus[v];
                        vc.gs_user_sel = sel;
                        vc.gs_base_user = b;
                        self.note(Change::UserGs { sel, base: b });
                    }
                    Err(r) => {
                        let vc = &mut self.vcpus[v];
                        vc.gs_user_sel = 0;
                        vc.gs_base_user = 0;
                        self.note(Change::UserGsFaulted { sel, why: r });
                    }
                }
                Ok(0)
            }
            _ => Err(fail(
                EINVAL,
                format!("unknown segment base selector which={which}"),
            )),
        }
    }

    /// Load a data selector into %gs the way Xen does for
    /// SEGBASE_GS_USER_SEL: a `mov` at CPL 0 with the selector's RPL forced
    /// to 3 for non-NUL selectors, so the usual data-segment rules apply with
    /// max(CPL, RPL) = 3. Returns the segment base. On success the CPU sets
    /// the descriptor's accessed bit, which lands in the guest's frame (Xen
    /// maps GDT/LDT frames read-write in its own area).
    pub(super) fn load_data_selector(&mut self, v: usize, sel: u16) -> Result<u64, String> {
        if sel & !3 == 0 {
            return Ok(0);
        }
        let idx = u32::from(sel >> 3);
        // Where the descriptor lives: (pfn, byte offset), for the A bit.
        let (d, loc) = if sel & 4 != 0 {
            let d = self.map_ldt(v, idx, false).map_err(|f| f.to_string())?;
            let off = idx as usize * 8;
            let loc = self.vcpus[v].ldt_mapped[off / PAGE_SIZE]
                .and_then(|m| self.m2p(m))
                .map(|pfn| (pfn, off % PAGE_SIZE));
            (d, loc)
        } else if idx >= 7168 {
            // Xen's per-CPU GDT page for 64-bit PV vCPUs (`desc.c`
            // `boot_gdt`): 0xe023 (ring-3 compat code, readable), 0xe02b
            // (ring-3 data) and 0xe033 (ring-3 64-bit code, readable) are
            // DPL 3, present, already accessed, base 0. Everything else there
            // is DPL 0, a system descriptor or empty.
            return if matches!(sel, 0xe023 | 0xe02b | 0xe033) {
                Ok(0)
            } else {
                Err(format!(
                    "Xen-reserved selector {sel:#x} is not loadable at RPL 3"
                ))
            };
        } else {
            let loc = self.vcpus[v]
                .gdt_frames
                .get((idx / 512) as usize)
                .and_then(|&m| self.m2p(m))
                .map(|pfn| (pfn, (idx as usize % 512) * 8));
            (self.gdt_entry(v, idx), loc)
        };
        let present = d & (1 << 47) != 0;
        let s = d & (1 << 44) != 0;
        let typ = (d >> 40) & 0xF;
        let code = typ & 8 != 0;
        let readable = typ & 2 != 0;
        let conforming = typ & 4 != 0;
        let dpl = (d >> 45) & 3;
        if !s || (code && !readable) {
            return Err(format!(
                "selector {sel:#x} names a non-data descriptor {d:#018x}"
            ));
        }
        if !(code && conforming) && dpl < 3 {
            return Err(format!("selector {sel:#x}: DPL {dpl} < RPL 3"));
        }
        if !present {
            return Err(format!("selector {sel:#x} names a non-present descriptor"));
        }
        if d & (1 << 40) == 0
            && let Some((pfn, off)) = loc
        {
            let nd = d | (1 << 40);
            self.set_slot(pfn, off / 8, nd);
            self.note(Change::AccessedBit { sel, desc: nd });
        }
        Ok(((d >> 16) & 0xFF_FFFF) | (((d >> 56) & 0xFF) << 24))
    }
}
