//! A VM and its RAM, and the watchdog that bounds a run: what every KVM
//! runner here (the personalities' boots, the flat runner, the bare-exit
//! benchmark) starts from.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::{KvmError, PortError};

/// `size` bytes of anonymous guest RAM from GPA 0.
pub(crate) fn guest_ram(size: usize) -> Result<GuestMemoryMmap, KvmError> {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).map_err(|e| KvmError::GuestMemory {
        what: "mmap",
        detail: e.to_string(),
    })
}

/// KVM's memory slot 0 over all of `mem` (one region from GPA 0).
pub(crate) fn slot0(
    mem: &GuestMemoryMmap,
) -> Result<kvm_userspace_memory_region, vm_memory::GuestMemoryError> {
    let host = mem.get_host_address(GuestAddress(0))?;
    Ok(kvm_userspace_memory_region {
        slot: 0,
        guest_phys_addr: 0,
        memory_size: mem.iter().map(|r| r.len()).sum(),
        userspace_addr: host as u64,
        flags: 0,
    })
}

/// A VM with its guest memory. Fields drop in order: the VM before the
/// memory KVM maps.
pub(crate) struct Machine {
    pub(crate) vm: VmFd,
    pub(crate) kvm: Kvm,
    pub(crate) mem: GuestMemoryMmap,
}

impl Machine {
    /// A VM over `mem` (KVM's slot 0).
    pub(crate) fn new(mem: GuestMemoryMmap) -> Result<Machine, KvmError> {
        let io = KvmError::ioctl;
        let kvm = Kvm::new().map_err(io("open /dev/kvm"))?;
        let vm = kvm.create_vm().map_err(io("KVM_CREATE_VM"))?;
        let region = slot0(&mem).map_err(|e| KvmError::GuestMemory {
            what: "host address",
            detail: e.to_string(),
        })?;
        // SAFETY: the region is the mapping owned by `mem`, which the
        // Machine drops after `vm` (and a caller that takes the fields
        // apart keeps it alive past the VM).
        unsafe { vm.set_user_memory_region(region) }.map_err(io("KVM_SET_USER_MEMORY_REGION"))?;
        Ok(Machine { vm, kvm, mem })
    }
}

/// hv-sim wrote page-table entries behind KVM's back: drop every mapping
/// KVM derived from them (PVM's shadow page tables) by deleting slot 0 and
/// adding it again over the same RAM; the guest's next accesses rebuild
/// them. The vCPU must be stopped (in an exit).
///
/// # Safety
///
/// `mem` must be the RAM registered as `vm`'s slot 0 when the VM was made
/// ([`Machine::new`]), and must outlive `vm`: KVM maps whatever `mem`
/// names into the guest.
pub(crate) unsafe fn reload_slot(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<(), PortError> {
    let region = slot0(mem).map_err(PortError::hv_memory(
        "finding",
        "the host address of guest RAM",
        0,
    ))?;
    let gone = kvm_userspace_memory_region {
        memory_size: 0,
        ..region
    };
    // SAFETY: size 0 deletes slot 0 (no mapping is made); the vCPU is
    // stopped in an exit.
    unsafe { vm.set_user_memory_region(gone) }
        .map_err(PortError::ioctl("KVM_SET_USER_MEMORY_REGION (delete)"))?;
    // SAFETY: the caller guarantees `mem` is the RAM of the VM's slot 0 at
    // its creation and outlives the VM: the same mapping again.
    unsafe { vm.set_user_memory_region(region) }
        .map_err(PortError::ioctl("KVM_SET_USER_MEMORY_REGION (re-add)"))
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Run `f` on a thread of its own under a watchdog: at `limit` the flag
/// `f` polls between runs is set and the thread is kicked out of
/// `KVM_RUN` (SIGRTMIN) until it returns.
pub(crate) fn with_watchdog<T: Send + 'static>(
    limit: Duration,
    f: impl FnOnce(&AtomicBool) -> Result<T, KvmError> + Send + 'static,
) -> Result<T, KvmError> {
    vmm_sys_util::signal::register_signal_handler(vmm_sys_util::signal::SIGRTMIN(), kick_handler)
        .map_err(KvmError::Signal)?;
    let timed_out = Arc::new(AtomicBool::new(false));
    let flag = timed_out.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        let r = f(&flag);
        let _ = tx.send(());
        r
    });
    if rx.recv_timeout(limit).is_err() {
        timed_out.store(true, Ordering::SeqCst);
        // Kick the vCPU out of KVM_RUN until the thread notices the flag.
        while !handle.is_finished() {
            use vmm_sys_util::signal::Killable;
            let _ = handle.kill(vmm_sys_util::signal::SIGRTMIN());
            let _ = rx.recv_timeout(Duration::from_millis(50));
        }
    }
    handle
        .join()
        .map_err(|p| KvmError::VcpuThreadPanicked(super::error::panic_message(p.as_ref())))?
}
