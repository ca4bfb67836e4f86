//! Exceptions on the Xen personality: the forced-emulation `cpuid`, the
//! bounce to the guest's `set_trap_table` handler, and the `iret`
//! hypercall's stub.

use super::*;

impl XenGuest {
    pub(super) fn emulate_cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4] {
        let sig = |i: usize| {
            u32::from_le_bytes([
                CPUID_SIGNATURE[i],
                CPUID_SIGNATURE[i + 1],
                CPUID_SIGNATURE[i + 2],
                CPUID_SIGNATURE[i + 3],
            ])
        };
        match leaf {
            0x4000_0000 => [0x4000_0002, sig(0), sig(4), sig(8)],
            // Version; hypercall pages (1) and the MSR that would write one.
            0x4000_0001 => [XEN_VERSION, 0, 0, 0],
            0x4000_0002 => [1, 0x4000_0000, 0, 0],
            _ => self
                .cpuid
                .iter()
                .find(|e| {
                    e.function == leaf
                        && (e.flags & kvm_bindings::KVM_CPUID_FLAG_SIGNIFCANT_INDEX == 0
                            || e.index == subleaf)
                })
                .map_or([0; 4], |e| [e.eax, e.ebx, e.ecx, e.edx]),
        }
    }

    /// An exception stub's port write: the stub pushed rax above the
    /// hardware frame. Emulate a forced-emulation `cpuid`, or bounce.
    pub(super) fn exception(
        &mut self,
        vm: &VmFd,
        vcpu: &mut Vcpu<'_>,
        mut regs: kvm_regs,
        v: u8,
    ) -> Result<(), PortError> {
        const PREFIX: [u8; 7] = [0x0f, 0x0b, b'x', b'e', b'n', 0x0f, 0xa2];
        let saved_rax = self.read(regs.rsp)?;
        let mut p = regs.rsp + 8;
        let error_code = if traps::has_error_code(v) {
            p += 8;
            Some(self.read(p - 8)? as u32)
        } else {
            None
        };
        // The kernel runs in ring 3, so the CPU sets a #PF's user bit; Xen
        // hands a fault taken in guest kernel mode on with it clear.
        let error_code = if v == 14 {
            error_code.map(|c| crate::xen::domain::guest_pf_error_code(c, true))
        } else {
            error_code
        };
        let at = Interrupted {
            rip: self.read(p)?,
            cs: self.read(p + 8)? as u16,
            rflags: self.read(p + 16)?,
            rsp: self.read(p + 24)?,
            ss: self.read(p + 32)? as u16,
            rcx: regs.rcx,
            r11: regs.r11,
        };
        let mut insn = [0u8; 7];
        if v == 6 && self.mem.read_slice(&mut insn, GuestAddress(at.rip)).is_ok() && insn == PREFIX
        {
            let r = self.emulate_cpuid(saved_rax as u32, regs.rcx as u32);
            regs.rax = u64::from(r[0]);
            regs.rbx = u64::from(r[1]);
            regs.rcx = u64::from(r[2]);
            regs.rdx = u64::from(r[3]);
            regs.rip = at.rip + PREFIX.len() as u64;
            regs.rsp = at.rsp;
            regs.rflags = at.rflags;
            self.emulated_cpuids += 1;
            vcpu.set_regs(&regs);
            return Ok(());
        }
        if v == 14 {
            let cr2 = vcpu.sregs()?.cr2;
            if (REAL_LDT..REAL_LDT + 16 * 4096).contains(&cr2) {
                // The CPU touched a page of the LDT not mapped yet: map it
                // now as Xen does on this fault (`handle_ldt_mapping_fault`)
                // and retry the instruction; if the guest's page cannot be
                // mapped, the #PF goes to the guest.
                let index = ((cr2 - REAL_LDT) / 8) as u32;
                if self.dom.touch_ldt(self.cur, index).is_ok() {
                    regs.rax = saved_rax;
                    regs.rip = at.rip;
                    regs.rsp = at.rsp;
                    regs.rflags = at.rflags;
                    self.lazy_ldt_maps += 1;
                    vcpu.set_regs(&regs);
                    return self.sync(vm, vcpu);
                }
            }
            // A write to a read-only mapping (present, write; no reserved
            // bit or fetch): Xen emulates a store into an L1 page table in
            // use as a validated entry update (`pv_ro_page_fault`) and
            // resumes after the instruction.
            if error_code.is_some_and(|c| c & 0x1b == 0x3) {
                let mut insn = [0u8; 15];
                let _ = self.mem.read_slice(&mut insn, GuestAddress(at.rip));
                let gpr = [
                    saved_rax, regs.rcx, regs.rdx, regs.rbx, at.rsp, regs.rbp, regs.rsi, regs.rdi,
                    regs.r8, regs.r9, regs.r10, regs.r11, regs.r12, regs.r13, regs.r14, regs.r15,
                ];
                if let Some(next) = self.dom.ptwr_fault(cr2, &insn, at.rip, &gpr) {
                    regs.rax = saved_rax;
                    regs.rip = next;
                    regs.rsp = at.rsp;
                    regs.rflags = at.rflags;
                    vcpu.set_regs(&regs);
                    return self.sync(vm, vcpu);
                }
            }
        }
        let t = self.dom.vcpu(self.cur).trap_table[usize::from(v)];
        if t.address == 0 {
            return Err(Crash::XenNoHandler {
                vector: v,
                error_code,
                rip: at.rip,
            }
            .into());
        }
        let bf = traps::bounce_frame(&at, error_code, self.upcall_mask, t.flags & 4 != 0);
        for (i, word) in bf.words.iter().enumerate() {
            self.dom
                .guest_write_u64(bf.rsp + i as u64 * 8, *word)
                .map_err(|fault| Crash::XenBounceFrame { vector: v, fault })?;
        }
        self.upcall_mask = bf.upcall_mask;
        regs.rax = saved_rax;
        regs.rsp = bf.rsp;
        regs.rip = t.address;
        regs.rflags = bf.rflags;
        *self.bounced.entry(v).or_default() += 1;
        vcpu.set_regs(&regs);
        Ok(())
    }

    /// The `iret` stub's port write: the `iret_context` is at rsp.
    pub(super) fn iret(
        &mut self,
        vcpu: &mut Vcpu<'_>,
        mut regs: kvm_regs,
    ) -> Result<(), PortError> {
        let mut ctx = [0u64; 9];
        for (i, w) in ctx.iter_mut().enumerate() {
            let a = regs.rsp.wrapping_add(i as u64 * 8);
            *w = self
                .dom
                .guest_read_u64(a)
                .ok_or(Crash::XenIret(traps::IretError::Unreadable(a)))?;
        }
        let r = traps::iret(ctx).map_err(Crash::XenIret)?;
        if r.cs != FLAT_KERNEL_CS || r.ss != FLAT_KERNEL_SS {
            return Err(Crash::XenIretMode { cs: r.cs, ss: r.ss }.into());
        }
        regs.rax = r.rax;
        regs.rip = r.rip;
        regs.rsp = r.rsp;
        // As Xen's exit to the guest leaves them (never a bad RFLAGS for
        // KVM). The real IOPL stays 3: hv-sim's stubs use `out`.
        let (rflags, rcx, r11) = traps::iret_exit(&r);
        regs.rflags = rflags | traps::RFLAGS_IOPL;
        (regs.rcx, regs.r11) = (rcx, r11);
        self.upcall_mask = r.upcall_mask;
        self.irets += 1;
        vcpu.set_regs(&regs);
        Ok(())
    }
}
