//! `arch/x86/pv/descriptor-tables.c`: `do_set_gdt`, `do_update_descriptor`
//! and `pv_destroy_ldt`, and the GDT as the vCPU sees it.

use super::*;

impl Inner {
    pub(super) fn destroy_ldt(&mut self, v: usize) {
        let slots = self.vcpus[v].ldt_mapped;
        for (i, s) in slots.iter().enumerate() {
            if let Some(mfn) = s {
                self.put_type(*mfn);
                self.note(Change::LdtUnmapped { slot: i, mfn: *mfn });
            }
        }
        self.vcpus[v].ldt_mapped = [None; 16];
    }

    pub(super) fn gdt_entry(&self, v: usize, idx: u32) -> u64 {
        let vc = &self.vcpus[v];
        match vc.gdt_frames.get((idx / 512) as usize) {
            Some(&mfn) if idx < 7168 => match self.m2p(mfn) {
                Some(pfn) => self.slot(pfn, idx as usize % 512),
                None => 0,
            },
            _ => 0,
        }
    }

    pub(super) fn set_gdt(&mut self, v: usize, list: u64, entries: u32) -> Hc {
        if entries > 7168 {
            return Err(fail(
                EINVAL,
                format!("{entries} entries: a guest GDT has at most 7168 (14 frames)"),
            ));
        }
        let nr = entries.div_ceil(512) as u64;
        let mut frames = Vec::new();
        if nr > 0 && !self.addr_ok(list) {
            return Err(fail(
                EFAULT,
                format!("frame list {list:#x} is not a guest address"),
            ));
        }
        for i in 0..nr {
            let va = list.wrapping_add(i * self.long_size());
            match self.load_long(va) {
                Ok(m) => frames.push(m),
                Err(()) => {
                    return Err(fail(
                        EFAULT,
                        format!("frame list entry {i} at {va:#x} cannot be read"),
                    ));
                }
            }
        }
        self.install_gdt(v, &frames, entries)
    }

    /// `pv_set_gdt`: take the segdesc type on every frame (all or none),
    /// then replace the vCPU's GDT. Shared by `set_gdt` and
    /// `VCPUOP_initialise`.
    pub(super) fn install_gdt(&mut self, v: usize, frames: &[u64], entries: u32) -> Hc {
        if entries > 7168 {
            return Err(fail(
                EINVAL,
                format!("{entries} entries: a guest GDT has at most 7168 (14 frames)"),
            ));
        }
        let frames = &frames[..(entries.div_ceil(512) as usize).min(frames.len())];
        for (i, &mfn) in frames.iter().enumerate() {
            if let Err(r) = self.get_segdesc(mfn) {
                for &m in frames[..i].iter().rev() {
                    self.put_type(m);
                }
                return Err(fail(
                    EINVAL,
                    format!("set_gdt frame {i}: {r}; the old GDT stays installed"),
                ));
            }
        }
        let old = std::mem::take(&mut self.vcpus[v].gdt_frames);
        for m in old {
            self.put_type(m);
        }
        self.note(Change::Gdt {
            entries,
            frames: frames.into(),
        });
        let vc = &mut self.vcpus[v];
        vc.gdt_frames = frames.to_vec();
        vc.gdt_ents = entries;
        Ok(0)
    }

    pub(super) fn update_descriptor(&mut self, maddr: u64, desc: u64) -> Hc {
        if !maddr.is_multiple_of(8) {
            return Err(fail(
                EINVAL,
                format!("machine address {maddr:#x} is not 8-byte aligned"),
            ));
        }
        let stored = check_descriptor(self.abi, desc)
            .map_err(|r| fail(EINVAL, format!("descriptor {desc:#018x}: {r}")))?;
        let mfn = maddr >> 12;
        let Some(pfn) = self.m2p(mfn) else {
            return Err(fail(EINVAL, self.frame_reason(mfn)));
        };
        let off = (maddr & 0xFFF) as usize;
        if self.frames[pfn].typ == PageType::SegDesc {
            self.set_slot(pfn, off / 8, stored);
        } else {
            self.get_writable_type(pfn).map_err(|r| fail(EINVAL, r))?;
            self.ram.write_u64(pfn, off, stored);
            self.frames[pfn].type_count -= 1;
        }
        self.note(Change::Descriptor {
            maddr,
            value: stored,
        });
        Ok(0)
    }
}
