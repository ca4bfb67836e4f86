//! What the Xen-style backend needs from its environment.
//!
//! A kernel implements [`XenPlatform`] with its hypercall page (`call
//! hypercall_page + nr * 32`, 64-bit arguments in rdi, rsi, rdx, r10, r8),
//! its p2m list (pseudo-physical frame → machine frame, handed over by the
//! hypervisor at boot) and one page of its own memory for argument
//! structures. hv-sim implements it in-process, so the same backend code is
//! unit-tested against the simulated hypervisor.

/// The environment of the Xen-style backend (one per vCPU).
pub trait XenPlatform {
    /// Issue hypercall `nr` with its arguments (64-bit PV ABI: rdi, rsi,
    /// rdx, r10, r8; unused ones are ignored). Returns rax: 0 or a
    /// non-negative result on success, `-errno` on failure.
    ///
    /// # Safety
    /// Pointer arguments must be guest virtual addresses of memory laid out
    /// as the hypercall expects.
    unsafe fn hypercall(&self, nr: u32, args: [u64; 5]) -> i64;

    /// Machine frame number backing guest virtual address `va` (the kernel's
    /// `virt_to_mfn`), `None` if `va` is not mapped.
    fn virt_to_mfn(&self, va: u64) -> Option<u64>;

    /// A scratch buffer in guest memory for hypercall argument structures:
    /// (guest virtual address, length in bytes, at least 4096, page aligned).
    /// Only this vCPU uses it, and only during one op.
    fn scratch(&self) -> (u64, usize);
}
