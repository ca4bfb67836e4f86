//! Making the domain's state real on the vCPU: the real GDT and LDT, the
//! segment bases and the mirrored page-table entries.

use super::*;

impl XenGuest {
    /// Install the initial real tables before the guest runs.
    pub(crate) fn initial_tables(
        &mut self,
        vm: &VmFd,
        vcpu: &mut Vcpu<'_>,
    ) -> Result<(), PortError> {
        let before = self.pte_flushes;
        self.sync(vm, vcpu)?;
        if self.cur == 0 {
            // Nothing ran yet: KVM had no shadow copies to drop.
            self.pte_flushes = before;
        }
        Ok(())
    }

    /// vCPU `id`'s state for the boot's text ([`VCPU_LINE_PREFIX`]): from
    /// KVM its TR, FS base and GDTR; from the domain (what Xen keeps) its
    /// kernel stack (`stack_switch`, Xen's per-vCPU `TSS.rsp0`) and its
    /// first GDT frame's guest address.
    pub(crate) fn vcpu_line(&self, id: usize, s: &kvm_sregs) -> String {
        let vc = self.dom.vcpu(id);
        let gdt = vc
            .gdt_frames
            .first()
            .and_then(|&mfn| self.dom.mfn_to_pfn(mfn))
            .map_or(0, |pfn| pfn << 12);
        format!(
            "{VCPU_LINE_PREFIX}{id}: tr={:#x} tr.base={:#x} fs.base={:#x} gdt.base={:#x} kernel_sp={:#x} gdt_frame={gdt:#x}\n",
            s.tr.selector, s.tr.base, s.fs.base, s.gdt.base, vc.kernel_sp
        )
    }

    pub(super) fn read(&self, addr: u64) -> Result<u64, PortError> {
        self.mem
            .read_obj(GuestAddress(addr))
            .map_err(PortError::hv_memory("reading", "guest memory", addr))
    }

    pub(super) fn write(&self, addr: u64, v: u64) -> Result<(), PortError> {
        self.mem
            .write_obj(v, GuestAddress(addr))
            .map_err(PortError::hv_memory("writing", "hv-sim's page", addr))
    }

    /// Make the domain's state real on the vCPU.
    pub(super) fn sync(&mut self, vm: &VmFd, vcpu: &mut Vcpu<'_>) -> Result<(), PortError> {
        let (cur, vc) = (self.cur, self.dom.vcpu(self.cur));
        let mut sregs = vcpu.sregs()?;

        // GDT: every slot of the guest's frames, as Xen validated them.
        let n = (vc.gdt_frames.len() as u32 * 512).min(FIRST_RESERVED_GDT_ENTRY);
        let gdt: Vec<u64> = (0..n)
            .map(|i| accessed(self.dom.gdt_entry(cur, i)))
            .collect();
        if gdt != self.last_gdt {
            for i in 0..n.max(self.gdt_written) {
                let d = gdt.get(i as usize).copied().unwrap_or(0);
                if self.last_gdt.get(i as usize) != Some(&d) {
                    self.write(REAL_GDT + u64::from(i) * 8, d)?;
                }
            }
            self.gdt_written = n;
            self.last_gdt = gdt;
        }

        // LDT, mapped lazily as Xen maps it: a page of the real LDT is
        // present only once the domain has mapped (validated) the guest's
        // page, which happens on the CPU's first access to it
        // ([`XenGuest::ldt_fault`]); entries past `ldt_ents` read as 0.
        let (base, ents) = (vc.ldt_base, vc.ldt_ents);
        let mut ldt = Vec::new();
        let mut present = [false; 16];
        if ents > 0 && base != ZERO_BLOCK_PTR {
            for idx in 0..ents {
                let e = self.dom.ldt_entry(cur, idx);
                present[(idx / 512) as usize] |= e.is_some();
                ldt.push(accessed(e.unwrap_or(0)));
            }
        }
        let ldt_state = (base, ents, ldt);
        if ldt_state != self.last_ldt {
            let (_, _, ref entries) = ldt_state;
            for (i, d) in entries.iter().enumerate() {
                self.write(REAL_LDT + i as u64 * 8, *d)?;
            }
            let sel_idx = u64::from(LDT_SELECTOR >> 3);
            if entries.is_empty() {
                self.write(REAL_GDT + sel_idx * 8, 0)?;
                self.write(REAL_GDT + sel_idx * 8 + 8, 0)?;
                sregs.ldt = kvm_segment {
                    unusable: 1,
                    ..Default::default()
                };
            } else {
                let limit = entries.len() as u32 * 8 - 1;
                let sd = pvops::SystemDescriptor::ldt(REAL_LDT, entries.len() as u32)?;
                self.write(REAL_GDT + sel_idx * 8, sd.low)?;
                self.write(REAL_GDT + sel_idx * 8 + 8, sd.high)?;
                sregs.ldt = kvm_segment {
                    base: REAL_LDT,
                    limit,
                    selector: LDT_SELECTOR,
                    type_: 2,
                    present: 1,
                    ..Default::default()
                };
            }
            self.last_ldt = ldt_state;
        }
        let mut ldt_ptes_changed = false;
        for (j, p) in present.iter().enumerate() {
            let page = REAL_LDT + j as u64 * 4096;
            let at = layout::RING3_PT_BASE + (page >> 12) * 8;
            let want = if *p { page | PTE_P | PTE_RW } else { 0 };
            ldt_ptes_changed |= self.set_real_pte(at, want)?;
        }

        // set_segment_base (or the bases of a VCPUOP_initialise context).
        let (fs, gs) = &mut self.bases[cur];
        if vc.fs_base != *fs {
            sregs.fs.base = vc.fs_base;
            *fs = vc.fs_base;
        }
        if vc.gs_base_kernel != *gs {
            sregs.gs.base = vc.gs_base_kernel;
            *gs = vc.gs_base_kernel;
        }
        sregs.gdt.base = REAL_GDT;
        sregs.gdt.limit = (REAL_GDT_ENTRIES * 8 - 1) as u16;
        vcpu.set_sregs(&sregs);

        // The domain's L1 entries, mirrored into the real page tables (only
        // when some changed since the last look).
        let ptes = self.dom.direct_map_ptes();
        let mut changed = ldt_ptes_changed;
        if ptes != self.last_ptes {
            debug_assert_eq!(ptes.len(), self.pages);
            for (pfn, pte) in ptes.iter().enumerate().skip(RESERVED_PAGES) {
                let want = if pte & PTE_P != 0 {
                    let mfn = (pte & PTE_MFN_MASK) >> 12;
                    match self.dom.mfn_to_pfn(mfn) {
                        Some(target) => (target << 12) | PTE_P | PTE_U | (pte & PTE_RW),
                        None => 0,
                    }
                } else {
                    0
                };
                changed |= self.set_real_pte(layout::RING3_PT_BASE + pfn as u64 * 8, want)?;
            }
            self.last_ptes = ptes;
        }
        if changed {
            self.flush_shadow_mmu(vm)?;
        }
        Ok(())
    }

    /// Write the real page-table entry at `at` if it differs from `want`;
    /// the accessed/dirty bits the CPU sets are not a difference. Returns
    /// whether it wrote.
    pub(super) fn set_real_pte(&self, at: u64, want: u64) -> Result<bool, PortError> {
        if self.read(at)? & !PTE_AD == want {
            return Ok(false);
        }
        self.write(at, want)?;
        Ok(true)
    }

    /// hv-sim wrote page-table entries behind KVM's back: KVM's shadow
    /// copies (PVM shadows the guest's tables) are stale. Re-registering the
    /// memory slot drops them; the guest's next accesses rebuild them.
    pub(super) fn flush_shadow_mmu(&mut self, vm: &VmFd) -> Result<(), PortError> {
        // SAFETY: `self.mem` is a clone (the same mapping) of the RAM the
        // runner's Machine registered as `vm`'s slot 0; the Machine keeps
        // it alive until after the VM is dropped.
        unsafe { super::super::reload_slot(vm, &self.mem) }?;
        self.pte_flushes += 1;
        Ok(())
    }
}
