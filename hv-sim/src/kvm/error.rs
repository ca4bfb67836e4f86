//! Why a machine runner cannot run here ([`Unavailable`], shared by the
//! KVM, QEMU and real-Xen runners) and why a KVM boot failed
//! ([`KvmError`]).

use std::time::Duration;

/// Why a runner's machine (KVM, QEMU, real Xen) is not usable here: the
/// reason a test prints with `SKIPPED:`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Unavailable {
    /// The variable that turns the machine off is set (`HV_SIM_NO_KVM`,
    /// `HV_SIM_NO_QEMU`, `HV_SIM_NO_XEN`).
    #[error("{0} is set")]
    Disabled(&'static str),
    /// The device cannot be opened (`/dev/kvm`).
    #[error("{path}: {source}")]
    Device {
        /// The device.
        path: &'static str,
        /// Why not.
        #[source]
        source: std::io::Error,
    },
    /// The program cannot be started.
    #[error("{program} not found ({source}); {hint}")]
    NotInstalled {
        /// The program.
        program: &'static str,
        /// How to install it.
        hint: &'static str,
        /// Why it could not be started.
        #[source]
        source: std::io::Error,
    },
    /// The program starts but `--version` fails.
    #[error("`{program} --version` failed ({status})")]
    NotWorking {
        /// The program.
        program: &'static str,
        /// Its exit status.
        status: std::process::ExitStatus,
    },
    /// The hypervisor image is missing or unusable (real Xen): which file,
    /// and why.
    #[error("{0}")]
    Image(String),
}

/// Why a boot failed (as opposed to a guest that ran and reported).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KvmError {
    /// `/dev/kvm` cannot be used: the reason to print with `SKIPPED:`.
    #[error("KVM is not available: {0}")]
    Unavailable(#[from] Unavailable),
    /// The kernel image is unusable (the rule it breaks: segments, notes,
    /// RAM size, the personality's ROM).
    #[error("kernel image rejected: {0}")]
    BadImage(String),
    /// The kernel image is not a parseable ELF file.
    #[error("kernel image rejected: {0}")]
    Elf(#[from] goblin::error::Error),
    /// A KVM ioctl failed.
    #[error("KVM ioctl {op} failed: {errno}")]
    Ioctl {
        /// The ioctl (`KVM_CREATE_VM`, `KVM_RUN` ...).
        op: &'static str,
        /// Its errno.
        #[source]
        errno: kvm_ioctls::Error,
    },
    /// The guest memory could not be created or mapped.
    #[error("guest memory ({what}): {detail}")]
    GuestMemory {
        /// What was being done.
        what: &'static str,
        /// Why it failed.
        detail: String,
    },
    /// Writing hv-sim's own tables or pages into guest memory failed
    /// (the address is outside guest RAM).
    #[error("writing {what} at {addr:#x}: {source}")]
    GuestWrite {
        /// What was being written.
        what: &'static str,
        /// Where.
        addr: u64,
        /// Why.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// hv-sim's own descriptor for the personality's tables is refused
    /// by pvops' rules (a bug in hv-sim).
    #[error("building hv-sim's own descriptor: {0}")]
    HvDescriptor(#[from] pvops::PvError),
    /// The VMI ROM cannot be placed.
    #[error("placing the VMI ROM: {0}")]
    Rom(#[from] crate::vmi::RomError),
    /// The Xen model refused the bootstrap page tables hv-sim built.
    #[error("installing the bootstrap page tables: {0}")]
    Bootstrap(#[from] crate::xen::BootstrapError),
    /// The guest's report is not what the protocol says (a missing or
    /// malformed report line): what is wrong.
    #[error("the guest's report: {0}")]
    Report(String),
    /// The signal handler that kicks the vCPU out of `KVM_RUN` at the
    /// time limit could not be installed.
    #[error("installing the SIGRTMIN handler that interrupts KVM_RUN: {0}")]
    Signal(#[source] vmm_sys_util::errno::Error),
    /// The vCPU thread panicked (a bug in hv-sim): its panic message.
    #[error("the vCPU thread panicked: {0}")]
    VcpuThreadPanicked(String),
    /// Setting up a vCPU's entry state or the personality's initial
    /// tables failed.
    #[error("setting up the vCPU ({stage}): {detail}")]
    VcpuSetup {
        /// `"entry state"` or `"personality setup"`.
        stage: &'static str,
        /// Why.
        detail: String,
    },
    /// A personality's run ended without its outcome (a bug in hv-sim).
    #[error("the {0} personality ended without its outcome")]
    NoOutcome(&'static str),
    /// The guest stopped in a way that is not an orderly exit.
    #[error("guest crashed: {what}; it printed:\n{text}")]
    GuestCrashed {
        /// What happened (triple fault, failed entry, a broken port
        /// protocol ...).
        what: String,
        /// Text the guest printed before.
        text: String,
    },
    /// The guest ran past the time limit.
    #[error("guest still running after {limit:?}; it printed:\n{text}")]
    Timeout {
        /// The limit.
        limit: Duration,
        /// Text the guest printed before.
        text: String,
    },
}

impl KvmError {
    /// A failed ioctl `op`.
    pub(crate) fn ioctl(op: &'static str) -> impl Fn(kvm_ioctls::Error) -> KvmError + Copy {
        move |errno| KvmError::Ioctl { op, errno }
    }

    /// A failed write of `what` at `addr`.
    pub(crate) fn guest_write(
        what: &'static str,
        addr: u64,
    ) -> impl Fn(vm_memory::GuestMemoryError) -> KvmError + Copy {
        move |source| KvmError::GuestWrite { what, addr, source }
    }
}

/// The message of a panic payload.
pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error;

    #[test]
    fn an_ioctl_error_names_the_ioctl_and_chains_its_errno() {
        let e = KvmError::ioctl("KVM_CREATE_VM")(kvm_ioctls::Error::new(libc::EBUSY));
        assert!(
            e.to_string()
                .starts_with("KVM ioctl KVM_CREATE_VM failed: "),
            "{e}"
        );
        let errno = e.source().unwrap().downcast_ref::<kvm_ioctls::Error>();
        assert_eq!(errno.map(|e| e.errno()), Some(libc::EBUSY));
        let u = KvmError::from(Unavailable::Disabled("HV_SIM_NO_KVM"));
        assert_eq!(u.to_string(), "KVM is not available: HV_SIM_NO_KVM is set");
    }

    #[test]
    fn a_panic_message_is_kept() {
        let p = std::thread::spawn(|| panic!("boom {}", 1))
            .join()
            .unwrap_err();
        assert_eq!(panic_message(p.as_ref()), "boom 1");
    }
}
