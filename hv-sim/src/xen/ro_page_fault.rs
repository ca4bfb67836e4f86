//! `arch/x86/pv/ro-page-fault.c`: writable page tables. A guest's plain
//! store to one of its own page tables faults (the frame is mapped
//! read-only) and Xen emulates it as an `mmu_update` of that entry
//! (`ptwr_emulated_update`).

use super::*;

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
