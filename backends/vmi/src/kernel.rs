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

use crate::platform::{ReadPhys, VmiPlatform};
use crate::rom::{SCAN_END, SCAN_START};

/// A kernel's VMI environment: where guest-physical memory is mapped.
pub struct KernelPlatform {
    phys_offset: u64,
}

impl KernelPlatform {
    /// `phys_offset` is the virtual address at which the kernel maps
    /// guest-physical address 0 (0 for an identity-mapped kernel).
    ///
    /// # Safety
    /// Guest-physical [`SCAN_START`]..[`SCAN_END`] (0xC0000..0xE0000) must
    /// be mapped readable at `phys_offset + addr` for as long as this value
    /// lives, and a VMI ROM there must be the hypervisor's, executable, and
    /// keep the [`VmiPlatform`] contract (its calls touch only what their
    /// arguments name; GetGDT reports the table the kernel loaded).
    ///
    /// Calling it outside `unsafe` does not compile:
    ///
    /// ```compile_fail
    /// let k = pvops_vmi::kernel::KernelPlatform::new(0);
    /// ```
    pub const unsafe fn new(phys_offset: u64) -> Self {
        KernelPlatform { phys_offset }
    }
}

/// Reads only inside the option-ROM window `new`'s contract maps: any byte
/// outside [`SCAN_START`]..[`SCAN_END`] makes it return false without
/// touching memory (issue 9: it used to read any address).
///
/// ```
/// use pvops_vmi::ReadPhys;
/// // SAFETY: nothing is read: every address below is outside the window.
/// let k = unsafe { pvops_vmi::kernel::KernelPlatform::new(0) };
/// let mut b = [0u8; 8];
/// assert!(!k.read_phys(0x10, &mut b));
/// assert!(!k.read_phys(0xDFFFC, &mut b)); // runs past 0xE0000
/// assert!(!k.read_phys(u64::MAX - 2, &mut b));
/// ```
impl ReadPhys for KernelPlatform {
    fn read_phys(&self, addr: u64, buf: &mut [u8]) -> bool {
        let Some(end) = addr.checked_add(buf.len() as u64) else {
            return false;
        };
        if addr < SCAN_START || end > SCAN_END {
            return false;
        }
        let Some(va) = self.phys_offset.checked_add(addr) else {
            return false;
        };
        for (i, b) in buf.iter_mut().enumerate() {
            // SAFETY: addr..end lies inside the option-ROM window (checked
            // above), which `new`'s contract maps readable at `phys_offset`.
            *b = unsafe { ((va as usize + i) as *const u8).read_volatile() };
        }
        true
    }
}

// SAFETY: `new`'s contract: the ROM is the hypervisor's and keeps the
// trait's contract; the calls below are the ROM's own code.
unsafe impl VmiPlatform for KernelPlatform {
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
