//! What the Xen-style backend needs from its environment.
//!
//! A kernel implements [`XenPlatform`] with its hypercall page (`call
//! hypercall_page + nr * 32`, 64-bit arguments in rdi, rsi, rdx, r10, r8),
//! its p2m list (pseudo-physical frame → machine frame, handed over by the
//! hypervisor at boot) and one page of its own memory for argument
//! structures. hv-sim implements it in-process, so the same backend code is
//! unit-tested against the simulated hypervisor.

/// The environment of the Xen-style backend (one per vCPU).
///
/// # Safety
/// [`XenOps`](crate::XenOps) writes hypercall arguments into the scratch
/// buffer and reads results back from it, also from its safe ops
/// (`leave_lazy_cpu` and `flush_lazy` lay out a `multicall` there). So an
/// implementation must guarantee, for as long as the value lives:
///
/// * [`scratch`](XenPlatform::scratch) returns either a length below 4096
///   (no buffer: the backend then refuses every op that needs one with
///   [`PvError::Unsupported`](pvops::PvError::Unsupported)), or an address
///   that is 8-byte aligned and valid for reads and writes of that many
///   bytes in this address space, which nothing else reads or writes while
///   a backend op runs (one buffer per vCPU, one `XenOps` per buffer), and
///   which the hypervisor accepts as the guest virtual address of the same
///   bytes;
/// * [`hypercall`](XenPlatform::hypercall), given arguments that keep its
///   own contract, reads and writes no memory but what those arguments name
///   (as Xen does).
///
/// [`virt_to_mfn`](XenPlatform::virt_to_mfn) is only passed back to the
/// hypervisor, never dereferenced: a wrong answer is refused by the
/// hypervisor, not undefined behaviour.
///
/// Implementing it without `unsafe impl` does not compile:
///
/// ```compile_fail
/// struct Liar;
/// impl pvops_xen::XenPlatform for Liar {
///     unsafe fn hypercall(&self, _nr: u32, _args: [u64; 5]) -> i64 { 0 }
///     fn virt_to_mfn(&self, va: u64) -> Option<u64> { Some(va >> 12) }
///     // Issue 9: a scratch address that is not this process's memory made
///     // the safe `leave_lazy_cpu` segfault.
///     fn scratch(&self) -> (u64, usize) { (0x1000, 4096) }
/// }
/// ```
pub unsafe trait XenPlatform {
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
    /// (guest virtual address, length in bytes, at least 4096, page
    /// aligned), or a length below 4096 for none. Only this vCPU uses it,
    /// and only during one op. See the trait's safety contract.
    fn scratch(&self) -> (u64, usize);
}
