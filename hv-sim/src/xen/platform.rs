//! [`pvops_xen::XenPlatform`] for one vCPU of a simulated domain.

use pvops_xen::XenPlatform;

use super::domain::XenDomain;

/// A vCPU of a [`XenDomain`], as the Xen backend sees its environment.
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

impl XenPlatform for XenVcpu<'_> {
    unsafe fn hypercall(&self, nr: u32, args: [u64; 5]) -> i64 {
        let [a, b, c, d, e] = args;
        self.dom
            .hypercall(self.vcpu, u64::from(nr), [a, b, c, d, e, 0])
    }

    fn virt_to_mfn(&self, va: u64) -> Option<u64> {
        self.dom.virt_to_mfn(va)
    }

    fn scratch(&self) -> (u64, usize) {
        (self.dom.vcpu(self.vcpu).scratch_va, 4096)
    }
}
