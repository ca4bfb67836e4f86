//! The real transport: calling a Xen hypercall page from a kernel.
//!
//! The hypervisor fills one page with 32-byte stubs; hypercall `nr` is a
//! `call` to `page + nr * 32`. 64-bit ABI: number in rax (the stub loads it),
//! arguments in rdi, rsi, rdx, r10, r8 — *r8*, not r9, for the fifth — and
//! the result in rax. A PV stub executes `syscall`, which clobbers rcx and
//! r11; Xen may also clobber the argument registers, so all of them are
//! treated as clobbered.
//!
//! [`KernelPlatform`] is the [`XenPlatform`] a kernel builds from what Xen
//! hands it at boot: the hypercall page (whose address the kernel named in
//! its `XEN_ELFNOTE_HYPERCALL_PAGE` ELF note), the p2m list
//! (`start_info.mfn_list`: machine frame of each pseudo-physical frame), the
//! offset of its direct map, and one scratch page.

use crate::XenPlatform;

/// Size of one hypercall stub.
pub const STUB_SIZE: u64 = 32;

/// Call hypercall `nr` through the hypercall page at `page`.
///
/// # Safety
/// `page` must be the address of a hypercall page filled by the
/// hypervisor (executable, mapped), and the arguments must be valid for
/// hypercall `nr`.
#[cfg(target_arch = "x86_64")]
pub unsafe fn call(page: u64, nr: u32, args: [u64; 5]) -> i64 {
    let ret: i64;
    let entry = page + nr as u64 * STUB_SIZE;
    // SAFETY: the caller guarantees `entry` is a hypervisor-provided stub
    // following the 64-bit hypercall ABI. It may use the stack (call/ret),
    // so no `nostack`; memory is read and written by the hypervisor, so no
    // `nomem`.
    unsafe {
        core::arch::asm!(
            "call {entry}",
            entry = in(reg) entry,
            inlateout("rax") nr as u64 => ret,
            inlateout("rdi") args[0] => _,
            inlateout("rsi") args[1] => _,
            inlateout("rdx") args[2] => _,
            inlateout("r10") args[3] => _,
            inlateout("r8") args[4] => _,
            lateout("rcx") _,
            lateout("r11") _,
        );
    }
    ret
}

/// A kernel's Xen environment: hypercall page, p2m list, direct map.
pub struct KernelPlatform {
    page: u64,
    p2m: &'static [u64],
    direct_map: u64,
    scratch: (u64, usize),
}

impl KernelPlatform {
    /// * `page`: address of the hypercall page;
    /// * `p2m`: machine frame number of each pseudo-physical frame;
    /// * `direct_map`: virtual address of pseudo-physical address 0 (the
    ///   kernel's linear map; 0 for an identity-mapped kernel);
    /// * `scratch`: one page (address, length >= 4096) for hypercall
    ///   arguments, used by this vCPU only.
    ///
    /// # Safety
    /// * `page` is the hypercall page the hypervisor filled (mapped,
    ///   executable), so [`XenPlatform::hypercall`] calls real stubs;
    /// * `scratch.0` is 8-byte aligned and valid for reads and writes of
    ///   `scratch.1` bytes for as long as this value lives, is the guest
    ///   virtual address the hypervisor sees for it, and nothing else uses
    ///   it while a backend op runs (one page per vCPU);
    /// * the kernel runs as a PV guest of that hypervisor, whose hypercalls
    ///   touch only the memory their arguments name.
    ///
    /// Calling it outside `unsafe` does not compile:
    ///
    /// ```compile_fail
    /// static P2M: [u64; 1] = [0];
    /// // Issue 9: safe code handed raw addresses to the backend.
    /// let k = pvops_xen::KernelPlatform::new(0x1000, &P2M, 0, (0x2000, 4096));
    /// ```
    pub const unsafe fn new(
        page: u64,
        p2m: &'static [u64],
        direct_map: u64,
        scratch: (u64, usize),
    ) -> Self {
        KernelPlatform {
            page,
            p2m,
            direct_map,
            scratch,
        }
    }
}

// SAFETY: `new`'s contract: a real hypercall page, a scratch page of this
// address space that the hypervisor sees at the same address, and a
// hypervisor that only touches what the arguments name.
unsafe impl XenPlatform for KernelPlatform {
    #[cfg(target_arch = "x86_64")]
    unsafe fn hypercall(&self, nr: u32, args: [u64; 5]) -> i64 {
        // SAFETY: the caller upholds the hypercall's argument contract; the
        // page was given to `new` as the hypervisor's hypercall page.
        unsafe { call(self.page, nr, args) }
    }

    /// The 32-bit hypercall ABI (ebx, ecx, edx, esi, edi) is not
    /// implemented: the Xen backend's ops are 64-bit only.
    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn hypercall(&self, _nr: u32, _args: [u64; 5]) -> i64 {
        let _ = self.page;
        -(pvops::Errno::ENOSYS.0 as i64)
    }

    fn virt_to_mfn(&self, va: u64) -> Option<u64> {
        let pfn = va.checked_sub(self.direct_map)? >> 12;
        self.p2m.get(usize::try_from(pfn).ok()?).copied()
    }

    fn scratch(&self) -> (u64, usize) {
        self.scratch
    }
}
