//! What a boot's personality is to the exit loop: one trait for the
//! native, Xen-style, VMI-style and trap-and-emulate runs, so that
//! [`super::run_vm`] is create VM → set up the vCPU → exit loop, with no
//! `match` over personalities.
//!
//! The loop calls, in order: [`Personality::cpuid_signature`] and
//! [`Personality::adjust_cpuid`] while it sets the vCPU's CPUID,
//! [`Personality::entry_state`] for the first registers,
//! [`Personality::initial_tables`] once KVM holds them, then
//! [`Personality::port`] for every port write that is not the report
//! protocol's, [`Personality::at_exit`] when the guest ends, and
//! [`Personality::finish`] for what the personality observed.

use kvm_bindings::{kvm_cpuid_entry2, kvm_regs, kvm_sregs};
use kvm_ioctls::VmFd;
use vm_memory::GuestMemoryMmap;

use super::regs::Vcpu;
use super::{Config, KvmError, Outcome, PortError, Setup, layout, trap, vmi, xen};

/// What a port write did.
pub(crate) enum PortAction {
    /// Handled; the guest runs on.
    Handled,
    /// The guest ended with this exit status.
    Exit(u32),
    /// The write brought up vCPU `n` (Xen's `VCPUOP_up`): the runner
    /// starts it and runs it until it goes down, then resumes this one.
    StartVcpu(u64),
    /// This vCPU went down (Xen's `VCPUOP_down` on itself): the runner
    /// returns to the vCPU that started it.
    VcpuDown,
}

/// A write to a port that is not the report protocol's, and what a
/// personality may use to serve it.
pub(crate) struct PortWrite<'a, 'v> {
    /// The VM.
    pub(crate) vm: &'a VmFd,
    /// The vCPU that wrote.
    pub(crate) vcpu: &'a mut Vcpu<'v>,
    /// The port.
    pub(crate) port: u16,
    /// The value (little-endian, zero-extended).
    pub(crate) data: u32,
    /// Bytes written.
    pub(crate) len: usize,
    /// The boot's text so far (Xen's console adds to it).
    pub(crate) text: &'a mut Vec<u8>,
}

/// A personality during one boot.
pub(crate) trait Personality {
    /// The CPUID 0x4000_0000 signature it answers with (`None`: the
    /// config's).
    fn cpuid_signature(&self, cfg: &Config) -> Option<[u8; 12]> {
        cfg.cpuid_signature
    }

    /// Adjust the CPUID entries the vCPU gets (the signature is already
    /// set), and learn what it needs of them.
    fn adjust_cpuid(&mut self, _entries: &mut [kvm_cpuid_entry2]) {}

    /// The first registers: the loop has set long mode, the entry point,
    /// the boot stack and the boot flags in `rdi`.
    fn entry_state(&mut self, _regs: &mut kvm_regs, _sregs: &mut kvm_sregs) {}

    /// Install what must be in place before the first instruction, once
    /// KVM holds the entry state.
    fn initial_tables(&mut self, _vm: &VmFd, _vcpu: &mut Vcpu<'_>) -> Result<(), PortError> {
        Ok(())
    }

    /// A port write `w` (not to a report port). `None`: not this
    /// personality's port (a stray write; the default). `Err`: the guest
    /// broke the personality's protocol ([`super::Crash`]) or hv-sim
    /// failed.
    fn port(&mut self, _w: PortWrite<'_, '_>) -> Option<Result<PortAction, PortError>> {
        None
    }

    /// [`super::boot_flags::START_AP_PORT`] if this personality starts a
    /// vCPU on a write to [`super::ports::START_AP`], else 0.
    fn ap_start_flag(&self) -> u64 {
        0
    }

    /// vCPU `id` runs next: a vCPU started by [`PortAction::StartVcpu`]
    /// (before its entry state is set) or the one that started it, once it
    /// is down ([`Personality::resume`] follows).
    fn select_vcpu(&mut self, _id: u64) {}

    /// The vCPU selected again after another ran: make what this
    /// personality keeps per vCPU (the real tables) its own again.
    fn resume(&mut self, _vm: &VmFd, _vcpu: &mut Vcpu<'_>) -> Result<(), PortError> {
        Ok(())
    }

    /// The runner's read-back of vCPU `id` (its registers in KVM `sregs`)
    /// for the boot's text, when it starts another vCPU or goes down;
    /// `None`: the runner's own line (TR, GDTR and the TSS's rsp0).
    fn vcpu_report(&self, _id: u64, _sregs: &kvm_sregs) -> Option<String> {
        None
    }

    /// The guest reported its exit: record the final state.
    fn at_exit(&mut self, _vcpu: &mut Vcpu<'_>) {}

    /// What the personality observed (`None` for native).
    fn finish(self: Box<Self>) -> Option<Outcome>;
}

/// Native: the boot tables of [`layout`], ring 0, no hypervisor.
struct Native;

impl Personality for Native {
    fn ap_start_flag(&self) -> u64 {
        super::boot_flags::START_AP_PORT
    }

    fn finish(self: Box<Self>) -> Option<Outcome> {
        None
    }
}

/// The personality `setup` names, over the loaded guest memory.
pub(crate) fn create(
    setup: &Setup,
    mem: &GuestMemoryMmap,
    cfg: &Config,
) -> Result<Box<dyn Personality>, KvmError> {
    Ok(match setup {
        Setup::Native => {
            layout::write_boot_tables(mem)?;
            Box::new(Native)
        }
        Setup::Xen(s) => Box::new(xen::XenGuest::new(mem, cfg, s)?),
        Setup::Vmi(rom) => Box::new(vmi::VmiGuest::new(mem, cfg, rom)?),
        Setup::Trap(mode) => Box::new(trap::TrapGuest::new(mem, cfg, *mode)?),
    })
}

/// The launch sequence the ring-3 personalities (Xen-style, VMI-style,
/// trap-and-emulate) share: KVM available, the ELF parsed, guest RAM within
/// what their page tables map ([`layout::ring3::MAX_PTS`]), the kernel's
/// segments inside it; then `setup` (given the ELF entry and segments)
/// names the entry point and the personality, the VM runs, and `take`
/// picks the personality's outcome from what it observed.
pub(crate) fn launch_ring3<T>(
    name: &'static str,
    image: &[u8],
    cfg: &Config,
    setup: impl FnOnce(u64, &[super::Segment<'_>]) -> Result<(u64, Setup), KvmError>,
    take: impl FnOnce(Outcome) -> Option<T>,
) -> Result<(super::BootReport, T), KvmError> {
    super::available()?;
    let (entry, segs) = super::parse_elf(image)?;
    super::check_ring3_ram(name, cfg.mem_size, layout::ring3::MAX_PTS)?;
    super::check_segments_fit(&segs, cfg.mem_size)?;
    let (entry, setup) = setup(entry, &segs)?;
    let (boot, outcome) = super::launch(entry, &segs, cfg, setup)?;
    let outcome = outcome.and_then(take).ok_or(KvmError::NoOutcome(name))?;
    Ok((boot, outcome))
}
