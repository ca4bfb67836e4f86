//! One register cache per vCPU: an exit costs one `KVM_RUN` and no register
//! ioctls unless the state really changed.
//!
//! Every vCPU ioctl costs about as much as a whole ring-0 exit under PVM
//! (~7 µs, see the README's figures), so hv-sim reads and writes the vCPU's
//! registers through one `RegCache` per vCPU only:
//!
//! * **Sync regs** (`KVM_CAP_SYNC_REGS` with `KVM_SYNC_X86_REGS` and
//!   `KVM_SYNC_X86_SREGS`, the default where the host offers both): KVM
//!   stores the general and system registers into `kvm_run` on every exit
//!   (`kvm_valid_regs`), so reading them costs nothing; a write is applied
//!   on the next `KVM_RUN` (`kvm_dirty_regs`), so it costs nothing either.
//! * **Ioctls** (hosts without sync regs, or `HV_SIM_NO_SYNC_REGS` set):
//!   the first read in an exit is one `KVM_GET_REGS`/`KVM_GET_SREGS`, the
//!   written set is one `KVM_SET_REGS`/`KVM_SET_SREGS` before the next run.
//!
//! Either way a write that leaves the registers as they were is no write:
//! nothing is marked dirty. [`VcpuIoctls`] counts what each boot issued.

use kvm_bindings::{kvm_regs, kvm_sregs};
use kvm_ioctls::{Cap, Kvm, SyncReg, VcpuFd};

use super::PortError;

/// The vCPU ioctls a boot issued, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VcpuIoctls {
    /// `KVM_RUN`s (one per exit, and the first entry).
    pub runs: u64,
    /// `KVM_GET_REGS`.
    pub get_regs: u64,
    /// `KVM_SET_REGS`.
    pub set_regs: u64,
    /// `KVM_GET_SREGS`.
    pub get_sregs: u64,
    /// `KVM_SET_SREGS`.
    pub set_sregs: u64,
    /// Register writes handed to KVM through `kvm_dirty_regs` (no ioctl).
    pub sync_writes: u64,
    /// Did this boot use sync regs?
    pub sync_regs: bool,
}

impl VcpuIoctls {
    /// Register ioctls (everything but `KVM_RUN`).
    pub fn register_ioctls(&self) -> u64 {
        self.get_regs + self.set_regs + self.get_sregs + self.set_sregs
    }
}

/// Does this host's KVM offer sync regs for the general and system
/// registers (and is `HV_SIM_NO_SYNC_REGS` unset)?
pub fn sync_regs_available(kvm: &Kvm) -> bool {
    if std::env::var_os("HV_SIM_NO_SYNC_REGS").is_some() {
        return false;
    }
    let want = (SyncReg::Register as i32) | (SyncReg::SystemRegister as i32);
    kvm.check_extension_int(Cap::SyncRegs) & want == want
}

/// The register cache of one vCPU (see the module documentation).
pub(crate) struct RegCache {
    sync: bool,
    /// The registers of this exit, once read (or written).
    regs: Option<kvm_regs>,
    sregs: Option<kvm_sregs>,
    regs_dirty: bool,
    sregs_dirty: bool,
    counts: VcpuIoctls,
}

impl RegCache {
    /// A cache for `vcpu`; with `sync`, KVM is asked to store the
    /// registers into `kvm_run` on every exit.
    pub(crate) fn new(vcpu: &mut VcpuFd, sync: bool) -> RegCache {
        if sync {
            vcpu.set_sync_valid_reg(SyncReg::Register);
            vcpu.set_sync_valid_reg(SyncReg::SystemRegister);
        }
        RegCache {
            sync,
            regs: None,
            sregs: None,
            regs_dirty: false,
            sregs_dirty: false,
            counts: VcpuIoctls {
                sync_regs: sync,
                ..VcpuIoctls::default()
            },
        }
    }

    /// The general registers.
    pub(crate) fn regs(&mut self, vcpu: &VcpuFd) -> Result<kvm_regs, PortError> {
        if let Some(r) = self.regs {
            return Ok(r);
        }
        self.counts.get_regs += 1;
        let r = vcpu.get_regs().map_err(PortError::ioctl("KVM_GET_REGS"))?;
        self.regs = Some(r);
        Ok(r)
    }

    /// The system registers.
    pub(crate) fn sregs(&mut self, vcpu: &VcpuFd) -> Result<kvm_sregs, PortError> {
        if let Some(s) = self.sregs {
            return Ok(s);
        }
        self.counts.get_sregs += 1;
        let s = vcpu
            .get_sregs()
            .map_err(PortError::ioctl("KVM_GET_SREGS"))?;
        self.sregs = Some(s);
        Ok(s)
    }

    /// Set the general registers (from the next entry on); no write if
    /// they are unchanged.
    pub(crate) fn set_regs(&mut self, r: &kvm_regs) {
        if self.regs.as_ref() != Some(r) {
            self.regs = Some(*r);
            self.regs_dirty = true;
        }
    }

    /// Set the system registers (from the next entry on); no write if
    /// they are unchanged.
    pub(crate) fn set_sregs(&mut self, s: &kvm_sregs) {
        if self.sregs.as_ref() != Some(s) {
            self.sregs = Some(*s);
            self.sregs_dirty = true;
        }
    }

    /// Hand the written registers to KVM with ioctls now, and forget the
    /// cached ones (the next read asks KVM: what it accepted). For the
    /// entry state, before the first run.
    pub(crate) fn write_back_now(&mut self, vcpu: &VcpuFd) -> Result<(), PortError> {
        if let (true, Some(s)) = (self.sregs_dirty, self.sregs.as_ref()) {
            self.counts.set_sregs += 1;
            vcpu.set_sregs(s)
                .map_err(PortError::ioctl("KVM_SET_SREGS"))?;
        }
        if let (true, Some(r)) = (self.regs_dirty, self.regs.as_ref()) {
            self.counts.set_regs += 1;
            vcpu.set_regs(r).map_err(PortError::ioctl("KVM_SET_REGS"))?;
        }
        self.regs = None;
        self.sregs = None;
        self.regs_dirty = false;
        self.sregs_dirty = false;
        Ok(())
    }

    /// Before `KVM_RUN`: hand the written registers to KVM (through
    /// `kvm_dirty_regs`, or with ioctls), and count the run.
    pub(crate) fn before_run(&mut self, vcpu: &mut VcpuFd) -> Result<(), PortError> {
        if self.sync {
            if let (true, Some(s)) = (self.sregs_dirty, self.sregs) {
                vcpu.sync_regs_mut().sregs = s;
                vcpu.set_sync_dirty_reg(SyncReg::SystemRegister);
                self.counts.sync_writes += 1;
            }
            if let (true, Some(r)) = (self.regs_dirty, self.regs) {
                vcpu.sync_regs_mut().regs = r;
                vcpu.set_sync_dirty_reg(SyncReg::Register);
                self.counts.sync_writes += 1;
            }
            self.regs_dirty = false;
            self.sregs_dirty = false;
        } else {
            self.write_back_now(vcpu)?;
        }
        self.counts.runs += 1;
        Ok(())
    }

    /// After `KVM_RUN` returned (an exit, or an interrupted run): the
    /// registers KVM stored into `kvm_run`, or none cached.
    pub(crate) fn after_run(&mut self, vcpu: &VcpuFd) {
        if self.sync {
            let s = vcpu.sync_regs();
            self.regs = Some(s.regs);
            self.sregs = Some(s.sregs);
        } else {
            self.regs = None;
            self.sregs = None;
        }
    }

    /// What the boot issued.
    pub(crate) fn counts(&self) -> VcpuIoctls {
        self.counts
    }
}

impl VcpuIoctls {
    /// Add another vCPU's counts (a boot's report covers all its vCPUs).
    pub(crate) fn add(&mut self, o: VcpuIoctls) {
        self.runs += o.runs;
        self.get_regs += o.get_regs;
        self.set_regs += o.set_regs;
        self.get_sregs += o.get_sregs;
        self.set_sregs += o.set_sregs;
        self.sync_writes += o.sync_writes;
        self.sync_regs &= o.sync_regs;
    }
}

/// A vCPU between two runs, as the personalities see it: its registers
/// through the cache.
pub(crate) struct Vcpu<'a> {
    fd: &'a VcpuFd,
    cache: &'a mut RegCache,
}

impl<'a> Vcpu<'a> {
    /// `fd` through `cache`.
    pub(crate) fn new(fd: &'a VcpuFd, cache: &'a mut RegCache) -> Vcpu<'a> {
        Vcpu { fd, cache }
    }

    /// The general registers.
    pub(crate) fn regs(&mut self) -> Result<kvm_regs, PortError> {
        self.cache.regs(self.fd)
    }

    /// The system registers.
    pub(crate) fn sregs(&mut self) -> Result<kvm_sregs, PortError> {
        self.cache.sregs(self.fd)
    }

    /// Set the general registers (applied at the next entry).
    pub(crate) fn set_regs(&mut self, r: &kvm_regs) {
        self.cache.set_regs(r);
    }

    /// Set the system registers (applied at the next entry).
    pub(crate) fn set_sregs(&mut self, s: &kvm_sregs) {
        self.cache.set_sregs(s);
    }
}
