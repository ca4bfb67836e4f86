//! A flat guest on a real vCPU: byte chunks loaded at guest-physical
//! addresses, the entry state the caller writes, a bounded run to a "done"
//! port, and the guest's memory kept for reading back.
//!
//! This is the KVM side of the emulator's differential (issue 11,
//! deliverable 5: a guest image that runs scenarios and writes records into
//! its own RAM, as the QEMU side does through a RAM file) and of the
//! platform probes in `tests/kvm_pvm_modes.rs`. Nothing here is a
//! personality: no hv-sim tables, no report protocol. The caller builds
//! every table the guest uses; [`run_flat`] only creates the VM (one memory
//! slot from GPA 0), sets CPUID to what KVM supports, writes the entry
//! state, runs, and stops at the first of:
//! * a write to [`FlatConfig::done_port`] ([`Stop::Done`] with its value);
//! * `hlt`, a shutdown (triple fault), an internal error (PVM's "batch
//!   emul" failures, KVM's emulator refusing an instruction), a failed
//!   entry, any exit other than port I/O ([`Stop`]);
//! * [`FlatConfig::max_exits`] exits, or [`FlatConfig::timeout`] of wall
//!   clock (the watchdog interrupts `KVM_RUN` with SIGRTMIN, as the boot
//!   runner's does).
//!
//! Port writes to any other port are kept ([`FlatRun::outs`], at most
//! `max_exits` of them); port reads read all ones.
//!
//! # What PVM does with such a guest (measured; see README "/dev/kvm is PVM")
//! Under `kvm_pvm` a vCPU at CPL 0 in any mode runs through the host
//! kernel's instruction emulator (a 2-instruction loop costs about 1.2 µs
//! an iteration at CPL 0, about 2 ns at CPL 3), so long-mode scenarios
//! run at CPL 0 here are checked against Linux's `arch/x86/kvm/emulate.c`
//! and PVM's exception delivery through the guest's IDT. Real mode and
//! 32-bit protected mode with paging off run (with KVM's emulator: a
//! protected-mode `iret` stops the VM with `KVM_EXIT_INTERNAL_ERROR`, since
//! the emulator implements only the real-mode one); 32-bit and PAE paging
//! do not (`KVM_SET_SREGS` succeeds, CR0.PG is dropped, the next run shuts
//! down; a guest's own `mov cr0` setting PG raises #GP(0)).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kvm_bindings::{KVM_MAX_CPUID_ENTRIES, kvm_regs, kvm_sregs};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{KvmError, available};

/// What a flat run is given.
#[derive(Clone, Debug)]
pub struct FlatConfig {
    /// Guest RAM in bytes, from guest-physical 0 (a multiple of 4 KiB).
    pub mem_size: usize,
    /// Wall-clock limit.
    pub timeout: Duration,
    /// Most VM exits before the run is stopped ([`Stop::ExitLimit`]).
    pub max_exits: u64,
    /// The port whose write ends the run ([`Stop::Done`]).
    pub done_port: u16,
    /// The physical-address width CPUID leaf 0x8000_0008 reports (bits
    /// 7:0 of EAX), where not the host's: KVM checks the reserved bits of
    /// the guest's page-table entries against it.
    pub maxphyaddr: Option<u8>,
}

/// Why a flat run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stop {
    /// The guest wrote this value to the done port.
    Done(u32),
    /// `hlt`.
    Hlt,
    /// `KVM_EXIT_SHUTDOWN`: a triple fault, or a state KVM cannot run.
    Shutdown,
    /// `KVM_EXIT_INTERNAL_ERROR` with its suberror (1: emulation failed).
    InternalError(u32),
    /// `KVM_EXIT_FAIL_ENTRY` with its hardware reason.
    FailEntry(u64),
    /// [`FlatConfig::max_exits`] exits without a stop.
    ExitLimit,
    /// Any other exit (MMIO, a system event ...), as kvm-ioctls names it.
    Other(String),
}

/// A port write the guest made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Out {
    /// The port.
    pub port: u16,
    /// The value (little-endian, zero-extended).
    pub value: u32,
    /// Its size in bytes (1, 2 or 4).
    pub size: u8,
}

/// What a flat run did.
#[derive(Debug)]
pub struct FlatRun {
    /// Why it ended.
    pub stop: Stop,
    /// Port writes before the stop, in order (the done port's excluded).
    pub outs: Vec<Out>,
    /// VM exits.
    pub exits: u64,
    /// The system registers as KVM accepted them, read back after
    /// `KVM_SET_SREGS` (a host may drop what it cannot run: PVM clears
    /// CR0.PG without EFER.LME).
    pub accepted: kvm_sregs,
    /// The registers at the stop.
    pub regs: kvm_regs,
    /// The system registers at the stop.
    pub sregs: kvm_sregs,
    /// Time inside `KVM_RUN`.
    pub run_time: Duration,
    mem: GuestMemoryMmap,
}

impl FlatRun {
    /// `len` bytes of guest RAM at `gpa`.
    pub fn read(&self, gpa: u64, len: usize) -> Result<Vec<u8>, KvmError> {
        let mut b = vec![0u8; len];
        self.mem
            .read_slice(&mut b, GuestAddress(gpa))
            .map_err(|e| KvmError::GuestMemory {
                what: "reading back guest RAM",
                detail: format!("{len} bytes at {gpa:#x}: {e}"),
            })?;
        Ok(b)
    }
}

/// Load `chunks` (GPA, bytes), let `entry` write the entry state over the
/// vCPU's reset state (with a CPUID of what KVM supports already set), and
/// run to a [`Stop`]. Errors are the VM's failures (KVM unavailable, an
/// ioctl, a chunk outside RAM, the time limit), not the guest's: a guest
/// that faults or shuts down is a [`FlatRun`] with that stop.
pub fn run_flat<F>(cfg: &FlatConfig, chunks: &[(u64, &[u8])], entry: F) -> Result<FlatRun, KvmError>
where
    F: FnOnce(&mut kvm_regs, &mut kvm_sregs) + Send + 'static,
{
    available()?;
    if cfg.mem_size == 0 || !cfg.mem_size.is_multiple_of(4096) {
        return Err(KvmError::BadImage(format!(
            "flat guest RAM must be a non-zero multiple of 4 KiB, not {:#x} bytes",
            cfg.mem_size
        )));
    }
    let mem = super::guest_ram(cfg.mem_size)?;
    for (gpa, bytes) in chunks {
        mem.write_slice(bytes, GuestAddress(*gpa))
            .map_err(KvmError::guest_write("a flat image chunk", *gpa))?;
    }
    let cfg = cfg.clone();
    super::with_watchdog(cfg.timeout, move |timed_out| {
        run_vcpu(&cfg, mem, entry, timed_out)
    })
}

/// The VM's part, on the vCPU thread: create, enter, run.
fn run_vcpu<F>(
    cfg: &FlatConfig,
    mem: GuestMemoryMmap,
    entry: F,
    timed_out: &AtomicBool,
) -> Result<FlatRun, KvmError>
where
    F: FnOnce(&mut kvm_regs, &mut kvm_sregs),
{
    let io = KvmError::ioctl;
    // `vm` drops at the end of this function, before the mapping, which
    // moves into the returned FlatRun.
    let m = super::Machine::new(mem)?;
    let (vm, kvm) = (&m.vm, &m.kvm);
    let mut vcpu = vm.create_vcpu(0).map_err(io("KVM_CREATE_VCPU"))?;
    let mut cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(io("KVM_GET_SUPPORTED_CPUID"))?;
    if let Some(bits) = cfg.maxphyaddr {
        for e in cpuid.as_mut_slice() {
            if e.function == 0x8000_0008 {
                e.eax = e.eax & !0xff | u32::from(bits);
            }
        }
    }
    vcpu.set_cpuid2(&cpuid).map_err(io("KVM_SET_CPUID2"))?;
    let mut sregs = vcpu.get_sregs().map_err(io("KVM_GET_SREGS"))?;
    let mut regs = vcpu.get_regs().map_err(io("KVM_GET_REGS"))?;
    entry(&mut regs, &mut sregs);
    vcpu.set_sregs(&sregs).map_err(io("KVM_SET_SREGS"))?;
    vcpu.set_regs(&regs).map_err(io("KVM_SET_REGS"))?;
    let accepted = vcpu.get_sregs().map_err(io("KVM_GET_SREGS"))?;
    let (stop, outs, exits, run_time) = exit_loop(cfg, &mut vcpu, timed_out)?;
    let regs = vcpu.get_regs().map_err(io("KVM_GET_REGS"))?;
    let sregs = vcpu.get_sregs().map_err(io("KVM_GET_SREGS"))?;
    drop(vcpu);
    let super::Machine { vm, mem, .. } = m;
    drop(vm);
    Ok(FlatRun {
        stop,
        outs,
        exits,
        accepted,
        regs,
        sregs,
        run_time,
        mem,
    })
}

type Loop = (Stop, Vec<Out>, u64, Duration);

fn exit_loop(
    cfg: &FlatConfig,
    vcpu: &mut VcpuFd,
    timed_out: &AtomicBool,
) -> Result<Loop, KvmError> {
    let mut outs = Vec::new();
    let mut run_time = Duration::ZERO;
    for exits in 1..=cfg.max_exits {
        if timed_out.load(Ordering::SeqCst) {
            return Err(KvmError::Timeout {
                limit: cfg.timeout,
                text: format!(
                    "a flat guest, after {} exits and {} port writes",
                    exits - 1,
                    outs.len()
                ),
            });
        }
        let t = Instant::now();
        let r = vcpu.run();
        run_time += t.elapsed();
        let stop = match r {
            Ok(VcpuExit::IoOut(port, data)) => {
                let mut b = [0u8; 4];
                let n = data.len().min(4);
                b[..n].copy_from_slice(&data[..n]);
                let value = u32::from_le_bytes(b);
                if port == cfg.done_port {
                    Some(Stop::Done(value))
                } else {
                    outs.push(Out {
                        port,
                        value,
                        size: n as u8,
                    });
                    None
                }
            }
            Ok(VcpuExit::IoIn(_, data)) => {
                data.fill(0xff);
                None
            }
            Ok(VcpuExit::Hlt) => Some(Stop::Hlt),
            Ok(VcpuExit::Shutdown) => Some(Stop::Shutdown),
            Ok(VcpuExit::FailEntry(reason, _)) => Some(Stop::FailEntry(reason)),
            Ok(VcpuExit::InternalError) => Some(Stop::InternalError(internal_suberror(vcpu))),
            Ok(other) => Some(Stop::Other(format!("{other:?}"))),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => None,
            Err(e) => return Err(KvmError::ioctl("KVM_RUN")(e)),
        };
        if let Some(stop) = stop {
            return Ok((stop, outs, exits, run_time));
        }
    }
    Ok((Stop::ExitLimit, outs, cfg.max_exits, run_time))
}

fn internal_suberror(vcpu: &mut VcpuFd) -> u32 {
    let run = vcpu.get_kvm_run();
    // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, for which KVM
    // fills the `internal` member of the union (a plain-data read).
    unsafe { run.__bindgen_anon_1.internal.suberror }
}
