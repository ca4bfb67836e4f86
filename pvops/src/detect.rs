//! Which hypervisor are we running under? (CPUID leaf 0x4000_0000.)
//!
//! A hypervisor sets CPUID.1:ECX bit 31 and answers leaf 0x4000_0000 with
//! the highest hypervisor leaf in EAX and a 12-byte signature in EBX, ECX,
//! EDX: `"XenVMMXenVMM"` (Xen), `"VMwareVMware"` (VMware),
//! `"KVMKVMKVM\0\0\0"` (KVM). Xen moves its leaves to 0x4000_0100 (or
//! higher, in 0x100 steps) when it also offers Hyper-V's interface at the
//! base leaf, so — as Linux's `xen_cpuid_base()` does — the Xen signature is
//! searched in every 0x100 block up to 0x4001_0000.
//!
//! VMI is not detected here: a VMI hypervisor is found by scanning for its
//! option ROM (the VMI backend's job).

/// A source of CPUID results (the CPU, or recorded values in tests).
pub trait CpuidSource {
    /// `[eax, ebx, ecx, edx]` for `leaf`/`subleaf`.
    fn cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4];
}

/// The executing CPU's `cpuid` instruction.
#[derive(Clone, Copy, Debug, Default)]
pub struct NativeCpuid;

impl CpuidSource for NativeCpuid {
    fn cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4] {
        #[cfg(target_arch = "x86")]
        use core::arch::x86::__cpuid_count;
        #[cfg(target_arch = "x86_64")]
        use core::arch::x86_64::__cpuid_count;
        let r = __cpuid_count(leaf, subleaf);
        [r.eax, r.ebx, r.ecx, r.edx]
    }
}

/// What was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hypervisor {
    /// No hypervisor bit, or no signature we know.
    None,
    /// Xen, with its leaves starting at `base` (0x4000_0000 or a 0x100 step above).
    Xen {
        /// First Xen leaf.
        base: u32,
    },
    /// VMware.
    VMware,
    /// KVM.
    Kvm,
    /// Some other hypervisor, with its signature.
    Other([u8; 12]),
}

/// Xen's signature.
pub const XEN_SIGNATURE: &[u8; 12] = b"XenVMMXenVMM";
/// VMware's signature.
pub const VMWARE_SIGNATURE: &[u8; 12] = b"VMwareVMware";
/// KVM's signature.
pub const KVM_SIGNATURE: &[u8; 12] = b"KVMKVMKVM\0\0\0";

/// The 12-byte signature of a hypervisor leaf.
pub fn signature(regs: [u32; 4]) -> [u8; 12] {
    let mut s = [0u8; 12];
    s[0..4].copy_from_slice(&regs[1].to_le_bytes());
    s[4..8].copy_from_slice(&regs[2].to_le_bytes());
    s[8..12].copy_from_slice(&regs[3].to_le_bytes());
    s
}

/// Detect the hypervisor from a CPUID source.
pub fn detect_with(src: &impl CpuidSource) -> Hypervisor {
    let leaf1 = src.cpuid(1, 0);
    if leaf1[2] & (1 << 31) == 0 {
        return Hypervisor::None;
    }
    let base_regs = src.cpuid(0x4000_0000, 0);
    let base_sig = signature(base_regs);
    // Xen anywhere in the hypervisor range wins (Xen + Viridian puts Hyper-V
    // at the base and Xen one block up). A block counts only if its max-leaf
    // answer reaches at least two leaves past it, as Linux requires.
    let mut leaf = 0x4000_0000u32;
    while leaf < 0x4001_0000 {
        let regs = if leaf == 0x4000_0000 {
            base_regs
        } else {
            src.cpuid(leaf, 0)
        };
        if &signature(regs) == XEN_SIGNATURE && regs[0].wrapping_sub(leaf) >= 2 {
            return Hypervisor::Xen { base: leaf };
        }
        leaf += 0x100;
    }
    match &base_sig {
        s if s == VMWARE_SIGNATURE => Hypervisor::VMware,
        s if s == KVM_SIGNATURE => Hypervisor::Kvm,
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0] => Hypervisor::None,
        s => Hypervisor::Other(*s),
    }
}

/// Detect the hypervisor on the executing CPU.
pub fn detect_hypervisor() -> Hypervisor {
    detect_with(&NativeCpuid)
}

/// The former name of [`detect_hypervisor`], kept so existing callers build
/// (`pvops::detect` was both this function and this module).
#[doc(hidden)]
pub fn detect() -> Hypervisor {
    detect_hypervisor()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake<'a> {
        hv_bit: bool,
        leaves: &'a [(u32, [u32; 4])],
    }

    impl CpuidSource for Fake<'_> {
        fn cpuid(&self, leaf: u32, _: u32) -> [u32; 4] {
            if leaf == 1 {
                return [0, 0, (self.hv_bit as u32) << 31, 0];
            }
            self.leaves
                .iter()
                .find(|(l, _)| *l == leaf)
                .map_or([0; 4], |(_, r)| *r)
        }
    }

    const fn regs(max: u32, sig: &[u8; 12]) -> [u32; 4] {
        [
            max,
            u32::from_le_bytes([sig[0], sig[1], sig[2], sig[3]]),
            u32::from_le_bytes([sig[4], sig[5], sig[6], sig[7]]),
            u32::from_le_bytes([sig[8], sig[9], sig[10], sig[11]]),
        ]
    }

    #[test]
    fn signatures() {
        let xen = Fake {
            hv_bit: true,
            leaves: &[(0x4000_0000, regs(0x4000_0005, XEN_SIGNATURE))],
        };
        assert_eq!(detect_with(&xen), Hypervisor::Xen { base: 0x4000_0000 });
        let vmw = Fake {
            hv_bit: true,
            leaves: &[(0x4000_0000, regs(0x4000_0010, VMWARE_SIGNATURE))],
        };
        assert_eq!(detect_with(&vmw), Hypervisor::VMware);
        let kvm = Fake {
            hv_bit: true,
            leaves: &[(0x4000_0000, regs(0x4000_0001, KVM_SIGNATURE))],
        };
        assert_eq!(detect_with(&kvm), Hypervisor::Kvm);
        let none = Fake {
            hv_bit: false,
            leaves: &[(0x4000_0000, regs(0x4000_0005, XEN_SIGNATURE))],
        };
        assert_eq!(
            detect_with(&none),
            Hypervisor::None,
            "no hypervisor bit, no hypervisor"
        );
        let empty = Fake {
            hv_bit: true,
            leaves: &[],
        };
        assert_eq!(detect_with(&empty), Hypervisor::None);
        let hv = Fake {
            hv_bit: true,
            leaves: &[(0x4000_0000, regs(0x4000_0006, b"Microsoft Hv"))],
        };
        assert_eq!(detect_with(&hv), Hypervisor::Other(*b"Microsoft Hv"));
    }

    #[test]
    fn xen_behind_viridian() {
        let f = Fake {
            hv_bit: true,
            leaves: &[
                (0x4000_0000, regs(0x4000_0006, b"Microsoft Hv")),
                (0x4000_0100, regs(0x4000_0105, XEN_SIGNATURE)),
            ],
        };
        assert_eq!(detect_with(&f), Hypervisor::Xen { base: 0x4000_0100 });
    }
}
