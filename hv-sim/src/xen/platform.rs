//! [`pvops_xen::XenPlatform`] for one vCPU of a simulated domain.

use pvops_xen::XenPlatform;

use super::descriptor_policy::Abi;
use super::domain::XenDomain;

/// A vCPU of a [`XenDomain`], as the Xen backend sees its environment.
///
/// The in-process backend writes its hypercall arguments into the vCPU's
/// scratch page, so only a [`XenDomain::pv64`] domain (guest VA = host
/// address) gets one; on others every op that needs it is refused. Drive
/// each vCPU from one backend at a time, as a kernel does with its
/// per-vCPU scratch page: two `XenOps` over the same vCPU on two threads
/// would share the page.
#[derive(Clone, Copy)]
pub struct XenVcpu<'a> {
    dom: &'a XenDomain,
    vcpu: usize,
}

impl<'a> XenVcpu<'a> {
    /// Handle for vCPU `vcpu` of `dom`.
    ///
    /// # Panics
    /// If `vcpu` is not a vCPU of `dom`.
    pub fn new(dom: &'a XenDomain, vcpu: usize) -> XenVcpu<'a> {
        assert!(vcpu < dom.vcpu_count(), "hv-sim: no vCPU {vcpu}");
        XenVcpu { dom, vcpu }
    }

    /// The domain.
    pub fn domain(&self) -> &'a XenDomain {
        self.dom
    }

    /// The vCPU index.
    pub fn index(&self) -> usize {
        self.vcpu
    }
}

impl XenDomain {
    /// A [`XenVcpu`] handle for vCPU `v`.
    pub fn vcpu_handle(&self, v: usize) -> XenVcpu<'_> {
        XenVcpu::new(self, v)
    }
}

impl XenVcpu<'_> {
    /// Are the domain's guest virtual addresses this process's addresses of
    /// the same bytes? Only for an in-process pv64 domain
    /// ([`XenDomain::pv64`]): a pv32 domain's VAs start at
    /// [`PV32_VA_BASE`](super::domain::PV32_VA_BASE), and a domain over a
    /// KVM guest's RAM ([`XenDomain::pv64_external`]) uses guest-physical
    /// addresses.
    pub fn host_addressed(&self) -> bool {
        let g = self.dom.lock();
        g.abi == Abi::Pv64 && g.va_base == g.ram.host_addr(0) as u64
    }
}

// SAFETY: `scratch` hands out a buffer only where the guest VA is the host
// address of the same bytes (`host_addressed`): the vCPU's scratch page,
// inside the domain's RAM allocation, which lives as long as the `&'a
// XenDomain` this handle borrows, page aligned. Elsewhere (pv32, external
// RAM) it answers length 0 and the backend refuses the ops that need it
// (issue 9: the backend wrote through a pv32 VA and segfaulted). hv-sim's
// hypercalls read and write guest memory only through `GuestRam`, inside
// that allocation, whatever the arguments; `virt_to_mfn` is never
// dereferenced. Exclusive use of the page during an op is the documented
// one-backend-per-vCPU rule above (the same rule a kernel keeps).
unsafe impl XenPlatform for XenVcpu<'_> {
    unsafe fn hypercall(&self, nr: u32, args: [u64; 5]) -> i64 {
        let [a, b, c, d, e] = args;
        self.dom
            .hypercall(self.vcpu, u64::from(nr), [a, b, c, d, e, 0])
    }

    fn virt_to_mfn(&self, va: u64) -> Option<u64> {
        self.dom.virt_to_mfn(va)
    }

    /// The vCPU's scratch page, or `(0, 0)` (none) when the domain's guest
    /// addresses are not this process's ([`XenVcpu::host_addressed`]): the
    /// in-process backend can only drive a [`XenDomain::pv64`] domain.
    fn scratch(&self) -> (u64, usize) {
        if !self.host_addressed() {
            return (0, 0);
        }
        (self.dom.vcpu(self.vcpu).scratch_va, 4096)
    }
}
