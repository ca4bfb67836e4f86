//! Why a machine runner cannot run here ([`Unavailable`], shared by the
//! KVM, QEMU and real-Xen runners), why a KVM boot failed ([`KvmError`]),
//! and, inside a boot, why the exit loop or a personality stopped the
//! guest: the rule the guest broke ([`Crash`]) or what failed in hv-sim
//! ([`PortError`]).

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
    #[error(transparent)]
    Ioctl(#[from] IoctlError),
    /// The guest memory could not be created or mapped.
    #[error("guest memory ({what}): {detail}")]
    GuestMemory {
        /// What was being done.
        what: &'static str,
        /// Why it failed.
        detail: String,
    },
    /// Writing hv-sim's own tables or pages (or the kernel's segments)
    /// into guest memory failed (the address is outside guest RAM).
    #[error(transparent)]
    GuestWrite(#[from] HvPageError),
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
    #[error("setting up the vCPU ({stage}): {source}")]
    VcpuSetup {
        /// `"entry state"` or `"personality setup"`.
        stage: &'static str,
        /// Why.
        #[source]
        source: PortError,
    },
    /// A personality's run ended without its outcome (a bug in hv-sim).
    #[error("the {0} personality ended without its outcome")]
    NoOutcome(&'static str),
    /// The guest stopped in a way that is not an orderly exit.
    #[error("guest crashed: {crash}; it printed:\n{text}")]
    GuestCrashed {
        /// What happened: the rule the guest broke (triple fault, a broken
        /// port protocol, an exception its hypervisor does not survive ...).
        #[source]
        crash: Crash,
        /// Text the guest printed before.
        text: String,
    },
    /// hv-sim failed while the guest ran (a vCPU ioctl, a write to its own
    /// pages, its own descriptors or invariants): a bug in hv-sim or the
    /// host, not the guest's doing.
    #[error("hv-sim failed while the guest ran: {source}; it printed:\n{text}")]
    Runner {
        /// What failed.
        #[source]
        source: PortError,
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
        move |errno| IoctlError { op, errno }.into()
    }

    /// The guest's run stopped with `e`, after printing `text`: a
    /// [`Crash`] is the guest's, anything else hv-sim's.
    pub(crate) fn stopped(e: PortError, text: &[u8]) -> KvmError {
        let text = String::from_utf8_lossy(text).into_owned();
        match e {
            PortError::Crash(crash) => KvmError::GuestCrashed { crash, text },
            source => KvmError::Runner { source, text },
        }
    }

    /// A failed write of `what` at `addr`.
    pub(crate) fn guest_write(
        what: &'static str,
        addr: u64,
    ) -> impl Fn(vm_memory::GuestMemoryError) -> KvmError + Copy {
        move |source| {
            HvPageError {
                op: "writing",
                what,
                addr,
                source,
            }
            .into()
        }
    }
}

/// A KVM ioctl that failed.
#[derive(Debug, thiserror::Error)]
#[error("KVM ioctl {op} failed: {errno}")]
pub struct IoctlError {
    /// The ioctl (`KVM_CREATE_VM`, `KVM_RUN`, `KVM_GET_REGS` ...).
    pub op: &'static str,
    /// Its errno.
    #[source]
    pub errno: kvm_ioctls::Error,
}

/// An access to guest memory on hv-sim's behalf (its own pages, the
/// kernel's segments) that failed.
#[derive(Debug, thiserror::Error)]
#[error("{op} {what} at {addr:#x}: {source}")]
pub struct HvPageError {
    /// `reading`, `writing`.
    pub op: &'static str,
    /// What (`hv-sim's pages`, `the TSS copy` ...).
    pub what: &'static str,
    /// The guest-physical address.
    pub addr: u64,
    /// Why it failed.
    #[source]
    pub source: vm_memory::GuestMemoryError,
}

/// The rule a guest broke that stops its run: which port, value, vector or
/// vCPU, and what its hypervisor (or hv-sim's protocol) says.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Crash {
    /// A port of hv-sim's protocol written with another width than its
    /// one dword.
    #[error(
        "{name} port {port:#x} written with {len} bytes: the protocol is one dword, {protocol}"
    )]
    PortWidth {
        /// The port's name (`text-buffer`, `start-AP`).
        name: &'static str,
        /// The port.
        port: u16,
        /// Bytes written.
        len: usize,
        /// What the dword holds.
        protocol: &'static str,
    },
    /// A stub's port written by other code than hv-sim's stub (or the
    /// ROM's): the write, and the owner the port is reserved to.
    #[error(
        "{name} port {port:#x} written with {len} bytes {data:#x} (rax {rax:#x}) at rip {rip:#x}: only {owner} may use it{}",
        paren(.why)
    )]
    NotFromStub {
        /// The port's name (`VMI`, `hypercall`, `trap`).
        name: &'static str,
        /// The port.
        port: u16,
        /// Bytes written.
        len: usize,
        /// The value written.
        data: u32,
        /// rax at the write (the stubs write rax).
        rax: u64,
        /// rip at the write.
        rip: u64,
        /// Who may write it.
        owner: &'static str,
        /// What is at rip instead (the VMI ROM's decoder says).
        why: Option<String>,
    },
    /// A text-buffer write names bytes outside guest RAM.
    #[error(
        "text-buffer port {port:#x} written with {word:#x}: {len} bytes at {gpa:#x} are not guest RAM ({source})"
    )]
    TextBuffer {
        /// The port.
        port: u16,
        /// The dword written.
        word: u32,
        /// The buffer's address.
        gpa: u64,
        /// Its length.
        len: usize,
        /// Why it cannot be read.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// A start-AP write names an entry point outside guest RAM.
    #[error("start-AP port {port:#x}: entry {entry:#x} is outside guest RAM ({mem_size:#x} bytes)")]
    ApEntry {
        /// The port.
        port: u16,
        /// The entry point written.
        entry: u64,
        /// Guest RAM.
        mem_size: usize,
    },
    /// A start-AP write asks for more vCPUs than the runner starts.
    #[error(
        "start-AP port {port:#x}: vCPU {id} asked for; the native runner starts at most {max} vCPUs"
    )]
    TooManyAps {
        /// The port.
        port: u16,
        /// The vCPU it would start.
        id: u64,
        /// Most vCPUs.
        max: u64,
    },
    /// A personality brought up a vCPU the runner cannot run (itself, one
    /// run before, or past the limit).
    #[error(
        "vCPU {cur} brought up vCPU {next}: hv-sim runs each secondary vCPU once, at most {max} in all, taking turns with the one that starts it"
    )]
    VcpuRestart {
        /// The running vCPU.
        cur: u64,
        /// The one it brought up.
        next: u64,
        /// Most vCPUs.
        max: u64,
    },
    /// The guest triple-faulted.
    #[error("shutdown (triple fault) near rip {rip:#x}")]
    TripleFault {
        /// rip as KVM reports it.
        rip: u64,
    },
    /// A VM exit no runner serves (an MMIO-less port read is served).
    #[error("{exit}{}", rip_bytes(.at))]
    UnexpectedExit {
        /// The exit, as kvm-ioctls names it.
        exit: String,
        /// rip and the 16 bytes there, where known.
        at: Option<(u64, [u8; 16])>,
    },
    /// Xen-style: `VCPUOP_up` on a context hv-sim cannot start.
    #[error(
        "vCPU {vcpu} brought up on cs {cs:#x} ss {ss:#x}: hv-sim starts a vCPU only in kernel mode on FLAT_KERNEL_CS/SS ({:#x}/{:#x})",
        super::xen::FLAT_KERNEL_CS,
        super::xen::FLAT_KERNEL_SS
    )]
    XenVcpuMode {
        /// The vCPU.
        vcpu: usize,
        /// Its context's cs.
        cs: u16,
        /// Its context's ss.
        ss: u16,
    },
    /// Xen-style: an exception with no `set_trap_table` handler (Xen
    /// crashes the domain).
    #[error(
        "exception {vector} (error code {error_code:x?}) at rip {rip:#x} and the guest registered no handler for it: Xen crashes the domain"
    )]
    XenNoHandler {
        /// The vector.
        vector: u8,
        /// Its error code.
        error_code: Option<u32>,
        /// Where it was raised.
        rip: u64,
    },
    /// Xen-style: the bounce frame cannot be written on the guest's kernel
    /// stack (Xen crashes the domain).
    #[error("bounce frame for exception {vector}: {fault}; Xen crashes the domain")]
    XenBounceFrame {
        /// The vector.
        vector: u8,
        /// The fault on the kernel stack.
        #[source]
        fault: crate::xen::GuestFault,
    },
    /// Xen-style: an `iret` hypercall Xen refuses (it crashes the domain).
    #[error("{0}; Xen crashes the domain")]
    XenIret(#[source] crate::xen::traps::IretError),
    /// Xen-style: an `iret` to other selectors than the kernel's.
    #[error("iret to cs {cs:#x} ss {ss:#x}: hv-sim returns only to FLAT_KERNEL_CS/SS")]
    XenIretMode {
        /// The context's cs.
        cs: u16,
        /// The context's ss.
        ss: u16,
    },
    /// Trap-and-emulate: an exception to deliver with no gate for it in
    /// the guest's IDT.
    #[error(
        "{exception} to deliver and the guest's IDT (base {base:#x} limit {limit:#x}) has no gate for vector {}",
        .exception.vector()
    )]
    NoGate {
        /// The exception.
        exception: crate::emulate::Exception,
        /// The guest's IDTR base.
        base: u64,
        /// Its limit.
        limit: u16,
    },
    /// Trap-and-emulate: the guest's memory (exception frame, operand)
    /// cannot be accessed through its page tables.
    #[error("{what} at {addr:#x}: {pf:?}")]
    GuestAccess {
        /// What was read or written (`reading the #GP frame` ...).
        what: &'static str,
        /// The linear address.
        addr: u64,
        /// The page fault the walk met.
        pf: crate::emulate::PageFault,
    },
    /// Write-protect mode: the store that faulted cannot be decoded.
    #[error("write-protect mode: the faulting store at {rip:#x} cannot be fetched or decoded")]
    WpUndecodable {
        /// Its rip.
        rip: u64,
    },
    /// Write-protect mode: an instruction the store emulation does not
    /// cover stores into a protected table page.
    #[error(
        "write-protect mode: {mnemonic} at {rip:#x} stores into a protected table page; only mov, add, sub, and, or, xor, inc and dec are emulated"
    )]
    WpUnsupported {
        /// The instruction.
        mnemonic: String,
        /// Its rip.
        rip: u64,
    },
    /// Write-protect mode: the decoded store does not cover the fault.
    #[error(
        "write-protect mode: {mnemonic} at {rip:#x} stores {size} bytes at {addr:#x}, but the fault was at {cr2:#x}"
    )]
    WpMismatch {
        /// The instruction.
        mnemonic: String,
        /// Its rip.
        rip: u64,
        /// Bytes it stores.
        size: usize,
        /// Where.
        addr: u64,
        /// Where the fault was.
        cr2: u64,
    },
}

fn paren(why: &Option<String>) -> String {
    why.as_ref().map_or(String::new(), |w| format!(" ({w})"))
}

fn rip_bytes(at: &Option<(u64, [u8; 16])>) -> String {
    at.map_or(String::new(), |(rip, bytes)| {
        format!(" at rip {rip:#x} (bytes {bytes:02x?})")
    })
}

/// Why the exit loop or a personality cannot go on: the guest broke a rule
/// ([`PortError::Crash`]), or hv-sim failed on the way.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PortError {
    /// The guest broke a rule.
    #[error(transparent)]
    Crash(#[from] Crash),
    /// A vCPU or VM ioctl failed.
    #[error(transparent)]
    Ioctl(#[from] IoctlError),
    /// hv-sim's own pages (real tables, TSS copy, page tables) cannot be
    /// read or written.
    #[error(transparent)]
    HvMemory(#[from] HvPageError),
    /// hv-sim's own TSS or LDT descriptor is refused by pvops' rules.
    #[error("building hv-sim's own descriptor: {0}")]
    HvDescriptor(#[from] pvops::PvError),
    /// The VMI model's invariants broke after a call (a bug in hv-sim).
    #[error("hv-sim VMI invariant broken after call {call:#x}: {source}")]
    VmiInvariant {
        /// The call.
        call: u32,
        /// The invariant.
        #[source]
        source: crate::vmi::InvariantError,
    },
    /// The VMI model's effective GDT reaches hv-sim's reserved entries.
    #[error("effective GDT of {entries} entries runs into hv-sim's reserved entries at {first}")]
    GdtOverflow {
        /// Entries of the effective GDT.
        entries: usize,
        /// hv-sim's first entry.
        first: u32,
    },
}

impl PortError {
    /// A failed ioctl `op`.
    pub(crate) fn ioctl(op: &'static str) -> impl Fn(kvm_ioctls::Error) -> PortError + Copy {
        move |errno| IoctlError { op, errno }.into()
    }

    /// A failed `op` (`reading`, `writing`) of `what` at `addr`, a page
    /// of hv-sim's.
    pub(crate) fn hv_memory(
        op: &'static str,
        what: &'static str,
        addr: u64,
    ) -> impl Fn(vm_memory::GuestMemoryError) -> PortError + Copy {
        move |source| {
            HvPageError {
                op,
                what,
                addr,
                source,
            }
            .into()
        }
    }

    /// An access (`what`) to the guest's memory at `addr` through its page
    /// tables met `pf`.
    pub(crate) fn guest_access(
        what: &'static str,
        addr: u64,
    ) -> impl Fn(crate::emulate::PageFault) -> PortError + Copy {
        move |pf| Crash::GuestAccess { what, addr, pf }.into()
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
    fn a_stop_is_the_guests_crash_or_hv_sims_failure_with_its_cause_chained() {
        let e = KvmError::stopped(Crash::TripleFault { rip: 0x1234 }.into(), b"hello");
        assert_eq!(
            e.to_string(),
            "guest crashed: shutdown (triple fault) near rip 0x1234; it printed:\nhello"
        );
        let crash = e.source().and_then(|s| s.downcast_ref::<Crash>());
        assert!(
            matches!(crash, Some(Crash::TripleFault { rip: 0x1234 })),
            "{crash:?}"
        );
        let e = KvmError::stopped(
            PortError::ioctl("KVM_GET_REGS")(kvm_ioctls::Error::new(libc::EIO)),
            b"",
        );
        assert!(matches!(e, KvmError::Runner { .. }), "{e:?}");
        let errno = e
            .source()
            .and_then(|s| s.source())
            .and_then(|s| s.downcast_ref::<kvm_ioctls::Error>());
        assert_eq!(errno.map(|e| e.errno()), Some(libc::EIO));
        // A guest's misuse of a stub port names the port, the value, rip
        // and who may write it.
        let m = Crash::NotFromStub {
            name: "hypercall",
            port: 0xe8,
            len: 1,
            data: 0x17,
            rax: 0,
            rip: 0x10_0000,
            owner: "hv-sim's stubs",
            why: None,
        }
        .to_string();
        assert_eq!(
            m,
            "hypercall port 0xe8 written with 1 bytes 0x17 (rax 0x0) at rip 0x100000: only hv-sim's stubs may use it"
        );
    }

    #[test]
    fn a_panic_message_is_kept() {
        let p = std::thread::spawn(|| panic!("boom {}", 1))
            .join()
            .unwrap_err();
        assert_eq!(panic_message(p.as_ref()), "boom 1");
    }
}
