//! The real transport: a kernel calling into the VMI-style ROM.
//!
//! [`KernelPlatform`] reads guest-physical memory through the kernel's
//! mapping of it (for the probe) and calls ROM entry points with an indirect
//! `call`, using the 64-bit convention documented in
//! [`platform`](crate::platform): arguments in rdi, rsi, rdx, rcx, result in
//! rax (GetRelocationInfo also returns the type in rdx). The ROM code may
//! clobber every caller-saved register, as a SysV function may.
//!
//! 64-bit only: a 32-bit kernel would call with regparm(3) (eax, edx, ecx),
//! which is not wired here.

use crate::platform::VmiPlatform;

/// A kernel's VMI environment: where guest-physical memory is mapped.
pub struct KernelPlatform {
    phys_offset: u64,
}

impl KernelPlatform {
    /// `phys_offset` is the virtual address at which the kernel maps
    /// guest-physical address 0 (0 for an identity-mapped kernel).
    ///
    /// # Safety
    /// Guest-physical 0xC0000..0xE0000 must be mapped readable at
    /// `phys_offset + addr`, and the ROM there executable.
    pub const unsafe fn new(phys_offset: u64) -> Self {
        KernelPlatform { phys_offset }
    }
}

impl VmiPlatform for KernelPlatform {
    fn read_phys(&self, addr: u64, buf: &mut [u8]) -> bool {
        let Some(va) = self.phys_offset.checked_add(addr) else {
            return false;
        };
        for (i, b) in buf.iter_mut().enumerate() {
            // SAFETY: `new`'s contract maps the physical range the probe
            // reads (the option ROM window) at `phys_offset`.
            *b = unsafe { ((va as usize + i) as *const u8).read_volatile() };
        }
        true
    }

    unsafe fn get_reloc(&self, jump_point: u64, call: u32) -> (u64, u8) {
        let (eip, typ): (u64, u64);
        // SAFETY: the caller guarantees `jump_point` is the ROM's
        // GetRelocationInfo jump point; it follows the SysV convention.
        unsafe {
            core::arch::asm!(
                "call {entry}",
                entry = in(reg) jump_point,
                in("rdi") call as u64,
                lateout("rax") eip,
                lateout("rdx") typ,
                clobber_abi("C"),
            );
        }
        (eip, typ as u8)
    }

    unsafe fn call(&self, entry: u64, args: [u64; 4]) -> u64 {
        let ret: u64;
        // SAFETY: the caller guarantees `entry` is a ROM entry point the
        // relocation query returned; it follows the SysV convention.
        unsafe {
            core::arch::asm!(
                "call {entry}",
                entry = in(reg) entry,
                in("rdi") args[0],
                in("rsi") args[1],
                in("rdx") args[2],
                in("rcx") args[3],
                lateout("rax") ret,
                clobber_abi("C"),
            );
        }
        ret
    }
}
