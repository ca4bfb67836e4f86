//! Running a real guest kernel in a KVM virtual machine.
//!
//! [`boot`] creates a VM with one vCPU (kvm-ioctls), loads an ELF kernel's
//! `PT_LOAD` segments at their physical addresses, enters it in 64-bit mode
//! (hv-sim builds the boot page tables and GDT, see [`layout`]) and serves
//! its port I/O until it writes its exit status. A watchdog stops a guest
//! that runs past the time limit.
//!
//! Port protocol (the example kernel's `report` module is the other side;
//! the ports are those of QEMU's isa-debugcon and isa-debug-exit, so the
//! same kernel reports under QEMU too):
//! * [`ports::TEXT`] (0xE9), byte writes: text lines; `check <pass|fail|skip>
//!   <name>: <detail>` lines are collected as checks;
//! * [`ports::TEXT_BUFFER`] (0xE0), dword writes: the same text a line per
//!   exit, read from guest memory (`hvsim_boot_protocol::text_buffer`); the
//!   runner offers it with [`boot_flags::REPORT_BUFFER`] in rdi, so the
//!   report costs an exit per line, not per byte (QEMU sees only 0xE9);
//! * [`ports::EXIT`] (0xF4), dword write: exit status; the VM stops.
//!
//! [`xen::boot_xen`] boots the same kernel with the Xen-style personality
//! (hypercall page, CPUID "XenVMMXenVMM", hypercalls on
//! [`ports::HYPERCALL`] run by [`crate::xen::XenDomain`]), and
//! [`vmi::boot_vmi`] with the VMI-style one (option ROM at 0xC0000, ROM
//! calls on [`ports::VMI`] run by [`crate::vmi::VmiHypervisor`]), and
//! [`trap::boot_trap`] boots the native-backend kernel deprivileged, with
//! its descriptor-table instructions trapped (#GP to hv-sim's stub, port
//! [`ports::TRAP`]) and emulated by [`crate::emulate`].
//!
//! # Exit cost
//! Each exit costs one `KVM_RUN`: the registers come and go through
//! [`regs`] (KVM's sync regs in `kvm_run`), not through register ioctls,
//! and [`BootReport::ioctls`] counts what a boot issued.

mod capped;
pub mod diff;
pub mod diff32;
mod error;
pub mod escape_audit;
pub mod flat;
pub mod layout;
mod machine;
pub mod paging;
mod personality;
pub mod regs;
mod smp;
pub mod trap;
pub mod vmi;
pub mod xen;

#[cfg(test)]
mod exit_cost_tests;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use goblin::elf::{Elf, program_header::PT_LOAD};
use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub use capped::Capped;
pub(crate) use error::panic_message;
pub use error::{Crash, KvmError, PortError, Unavailable};
pub(crate) use machine::{Machine, guest_ram, reload_slot, with_watchdog};
use personality::{Personality, PortAction, PortWrite};
pub use regs::VcpuIoctls;
use regs::{RegCache, Vcpu};

/// The I/O ports of hv-sim's guest protocol (shared with the example
/// kernel through `hvsim-boot-protocol`), and the VMI ROM stubs' port.
pub mod ports {
    pub use hvsim_boot_protocol::ports::*;
    /// VMI personality: a ROM stub's dword write (`out 0xE6, eax`, eax =
    /// the call number; hv-sim's own stub protocol, [`crate::vmi::abi`]).
    pub const VMI: u16 = crate::vmi::abi::port::VMI_PORT as u16;
}

/// Can this process use KVM? `Err(reason)` says why not. Setting
/// `HV_SIM_NO_KVM` in the environment makes it answer no (to exercise the
/// paths that run without KVM).
pub fn available() -> Result<(), Unavailable> {
    if std::env::var_os("HV_SIM_NO_KVM").is_some() {
        return Err(Unavailable::Disabled("HV_SIM_NO_KVM"));
    }
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => Ok(()),
        Err(source) => Err(Unavailable::Device {
            path: "/dev/kvm",
            source,
        }),
    }
}

/// Boot configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Guest RAM in bytes (from guest-physical 0).
    pub mem_size: usize,
    /// Wall-clock limit for the guest.
    pub timeout: Duration,
    /// Signature to return from CPUID leaf 0x4000_0000 (`None`: KVM's own).
    pub cpuid_signature: Option<[u8; 12]>,
    /// Boot flags passed to the kernel in rdi (see [`boot_flags`]).
    pub boot_flags: u64,
    /// The Xen personality's guest command line (`start_info.cmd_line`,
    /// after hv-sim's own `hvsim.flags=`), e.g. `battery seed=1 count=100`.
    pub guest_cmdline: String,
}

/// Boot flags passed to the guest in rdi (the Xen personality passes them
/// in the start info's command line instead, `hvsim.flags=<hex>`); defined
/// once for both sides in `hvsim-boot-protocol`.
pub use hvsim_boot_protocol::boot_flags;

/// Is /dev/kvm provided by PVM (`kvm_pvm`) rather than hardware
/// virtualization?
pub fn host_is_pvm() -> bool {
    std::path::Path::new("/sys/module/kvm_pvm").exists()
}

/// The boot flags this host needs.
pub fn host_boot_flags() -> u64 {
    if host_is_pvm() {
        boot_flags::NO_DESCRIPTOR_INSPECTION | boot_flags::NO_SOFTWARE_INTERRUPTS
    } else {
        0
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            mem_size: 64 << 20,
            timeout: Duration::from_secs(20),
            cpuid_signature: None,
            boot_flags: host_boot_flags(),
            guest_cmdline: String::new(),
        }
    }
}

/// One check the guest reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestCheck {
    /// Name.
    pub name: String,
    /// Passed? (false for failed and skipped checks)
    pub passed: bool,
    /// Not run in this environment (the detail says why).
    pub skipped: bool,
    /// Detail text.
    pub detail: String,
}

/// VM exits by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitCounts {
    /// Port I/O exits.
    pub io: u64,
    /// MMIO exits.
    pub mmio: u64,
    /// HLT exits.
    pub hlt: u64,
    /// Anything else (interrupted runs, ...).
    pub other: u64,
}

impl ExitCounts {
    /// All exits.
    pub fn total(&self) -> u64 {
        self.io + self.mmio + self.hlt + self.other
    }
}

/// What a guest did (the default: an empty report, no exit status).
#[derive(Clone, Debug, Default)]
pub struct BootReport {
    /// Status written to the exit port (`None` if it halted instead).
    pub exit_status: Option<u32>,
    /// What it printed: the first [`TEXT_CAP`] bytes.
    pub text: String,
    /// Bytes it printed past [`TEXT_CAP`] (counted, not kept).
    pub text_dropped: u64,
    /// Checks parsed from the text.
    pub checks: Vec<GuestCheck>,
    /// VM exits.
    pub exits: ExitCounts,
    /// Writes to ports outside the protocol, (port, first byte): the
    /// first [`Capped::DEFAULT_CAP`] kept, all counted.
    pub stray_io: Capped<(u16, u8)>,
    /// The vCPU ioctls the boot issued (all zero where no vCPU ran).
    pub ioctls: VcpuIoctls,
    /// Time spent in `KVM_RUN` (the guest running, the exits themselves).
    pub run_time: Duration,
    /// Time spent between runs: hv-sim handling the exits, register
    /// ioctls included.
    pub handle_time: Duration,
}

/// How a guest's reported checks came out: one set of counts for every
/// report that holds them (a KVM or QEMU boot's [`BootReport`], a real-Xen
/// boot's `RealXenReport`).
pub trait CheckSummary {
    /// The checks the guest reported.
    fn checks(&self) -> &[GuestCheck];

    /// Checks passed.
    fn passed(&self) -> usize {
        self.checks().iter().filter(|c| c.passed).count()
    }

    /// Checks that ran (passed or failed; skipped ones excluded).
    fn ran(&self) -> usize {
        self.checks().iter().filter(|c| !c.skipped).count()
    }

    /// Checks reported as skipped (not runnable on this host).
    fn skipped(&self) -> usize {
        self.checks().iter().filter(|c| c.skipped).count()
    }

    /// Checks that failed.
    fn failed(&self) -> Vec<&GuestCheck> {
        self.checks()
            .iter()
            .filter(|c| !c.passed && !c.skipped)
            .collect()
    }

    /// ` skipped=N` for a summary line when checks were skipped, so the
    /// `checks=passed/ran` figure never hides them; empty otherwise.
    fn skipped_suffix(&self) -> String {
        match self.skipped() {
            0 => String::new(),
            n => format!(" skipped={n}"),
        }
    }
}

impl CheckSummary for BootReport {
    fn checks(&self) -> &[GuestCheck] {
        &self.checks
    }
}

impl BootReport {
    /// The demo's summary line for this boot:
    /// `backend=<name> checks=<passed>/<ran> hypercalls=<n> exits=<n>[ skipped=<n>]`.
    pub fn summary_line(&self, backend: &str, hypercalls: u64) -> String {
        format!(
            "backend={backend} checks={}/{} hypercalls={hypercalls} exits={}{}",
            self.passed(),
            self.ran(),
            self.exits.total(),
            self.skipped_suffix()
        )
    }
}

/// Collect the `check <pass|fail|skip> <name>: <detail>` lines of a guest's text.
pub fn parse_checks(text: &str) -> Vec<GuestCheck> {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(hvsim_boot_protocol::CHECK_PREFIX)?;
            let (verdict, rest) = rest.split_once(' ')?;
            let (name, detail) = rest.split_once(": ").unwrap_or((rest, ""));
            Some(GuestCheck {
                name: name.to_string(),
                passed: verdict == "pass",
                skipped: verdict == "skip",
                detail: detail.to_string(),
            })
        })
        .collect()
}

/// Refuse a kernel whose segments are not inside guest RAM above
/// [`layout::KERNEL_MIN`] (below is hv-sim's).
pub(crate) fn check_segments_fit(segs: &[Segment<'_>], mem_size: usize) -> Result<(), KvmError> {
    for (paddr, _, memsz) in segs {
        if *paddr < layout::KERNEL_MIN || paddr.saturating_add(*memsz) > mem_size as u64 {
            return Err(KvmError::BadImage(format!(
                "segment {paddr:#x}+{memsz:#x} is outside guest RAM above {:#x}",
                layout::KERNEL_MIN
            )));
        }
    }
    Ok(())
}

/// The guest RAM sizes the ring-3 personalities support: their page tables
/// hold at most `max_pts` 4 KiB tables (2 MiB each).
pub(crate) fn check_ring3_ram(
    personality: &str,
    mem_size: usize,
    max_pts: u64,
) -> Result<(), KvmError> {
    if mem_size as u64 > max_pts * (2 << 20) || mem_size < 4 << 20 {
        return Err(KvmError::BadImage(format!(
            "the {personality} personality supports 4 MiB to {} MiB of guest RAM, not {mem_size:#x} bytes",
            max_pts * 2
        )));
    }
    Ok(())
}

/// A loadable segment: physical address, bytes from the file, size in memory.
pub type Segment<'a> = (u64, &'a [u8], u64);

/// Parse an ELF64 x86-64 kernel: entry point and loadable segments.
pub fn parse_elf(image: &[u8]) -> Result<(u64, Vec<Segment<'_>>), KvmError> {
    let elf = Elf::parse(image)?;
    if !elf.is_64 || elf.header.e_machine != goblin::elf::header::EM_X86_64 {
        return Err(KvmError::BadImage(
            "not an ELF64 x86-64 executable".to_string(),
        ));
    }
    let mut segs = Vec::new();
    for ph in elf.program_headers.iter().filter(|p| p.p_type == PT_LOAD) {
        let start = ph.p_offset as usize;
        let end = start
            .checked_add(ph.p_filesz as usize)
            .filter(|&e| e <= image.len())
            .ok_or_else(|| {
                KvmError::BadImage(format!("segment at {:#x} runs past the file", ph.p_paddr))
            })?;
        if ph.p_memsz < ph.p_filesz {
            return Err(KvmError::BadImage(format!(
                "segment at {:#x}: memsz < filesz",
                ph.p_paddr
            )));
        }
        segs.push((ph.p_paddr, &image[start..end], ph.p_memsz));
    }
    if segs.is_empty() {
        return Err(KvmError::BadImage("no PT_LOAD segments".to_string()));
    }
    Ok((elf.entry, segs))
}

/// Boot `image` (an ELF kernel) and run it to its exit.
pub fn boot(image: &[u8], cfg: &Config) -> Result<BootReport, KvmError> {
    available()?;
    let (entry, segs) = parse_elf(image)?;
    check_segments_fit(&segs, cfg.mem_size)?;
    launch(entry, &segs, cfg, Setup::Native).map(|(r, _)| r)
}

/// Which personality a boot runs.
pub(crate) enum Setup {
    /// None: the boot tables of [`layout`], ring 0.
    Native,
    /// Xen-style ([`xen`]).
    Xen(xen::XenSetup),
    /// VMI-style ([`vmi`]) with this ROM image.
    Vmi(crate::vmi::RomBuilder),
    /// Trap-and-emulate ([`trap`]), keeping the real tables current this
    /// way.
    Trap(trap::TrapMode),
}

/// What a personality did.
pub(crate) enum Outcome {
    Xen(Box<xen::XenOutcome>),
    Vmi(Box<vmi::VmiOutcome>),
    Trap(Box<trap::TrapBootReport>),
}

/// Load `segs` and run the VM on a thread under the watchdog.
fn launch(
    entry: u64,
    segs: &[Segment<'_>],
    cfg: &Config,
    setup: Setup,
) -> Result<(BootReport, Option<Outcome>), KvmError> {
    let owned: Vec<(u64, Vec<u8>)> = segs.iter().map(|(a, b, _)| (*a, b.to_vec())).collect();
    let cfg = cfg.clone();
    machine::with_watchdog(cfg.timeout, move |timed_out| {
        run_vm(entry, &owned, &cfg, timed_out, setup)
    })
}

/// One VM exit, copied out of the vCPU's run structure.
enum Exit {
    Out(u16, [u8; 4], usize),
    In,
    Mmio,
    Hlt,
    Shutdown,
    Interrupted,
    Other(String),
}

/// Create the VM and its RAM, and load `segs`.
fn create_vm(cfg: &Config, segs: &[(u64, Vec<u8>)]) -> Result<Machine, KvmError> {
    let m = Machine::new(machine::guest_ram(cfg.mem_size)?)?;
    for (paddr, bytes) in segs {
        m.mem
            .write_slice(bytes, GuestAddress(*paddr))
            .map_err(KvmError::guest_write("a kernel segment", *paddr))?;
    }
    Ok(m)
}

/// Create vCPU `id` with the personality's CPUID and entry state, and let
/// it install its initial tables.
fn setup_vcpu(
    m: &Machine,
    guest: &mut dyn Personality,
    entry: u64,
    cfg: &Config,
    id: u64,
) -> Result<(VcpuFd, RegCache), KvmError> {
    let io = KvmError::ioctl;
    let mut vcpu = m.vm.create_vcpu(id).map_err(io("KVM_CREATE_VCPU"))?;
    let mut cache = RegCache::new(&mut vcpu, regs::sync_regs_available(&m.kvm));
    let mut cpuid = m
        .kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(io("KVM_GET_SUPPORTED_CPUID"))?;
    if let Some(sig) = guest.cpuid_signature(cfg) {
        for e in cpuid.as_mut_slice() {
            if e.function == 0x4000_0000 {
                e.ebx = u32::from_le_bytes([sig[0], sig[1], sig[2], sig[3]]);
                e.ecx = u32::from_le_bytes([sig[4], sig[5], sig[6], sig[7]]);
                e.edx = u32::from_le_bytes([sig[8], sig[9], sig[10], sig[11]]);
            }
        }
    }
    guest.adjust_cpuid(cpuid.as_mut_slice());
    vcpu.set_cpuid2(&cpuid).map_err(io("KVM_SET_CPUID2"))?;
    let setup_err =
        |stage: &'static str| move |source: PortError| KvmError::VcpuSetup { stage, source };
    let mut sregs = cache.sregs(&vcpu).map_err(setup_err("entry state"))?;
    layout::long_mode_sregs(&mut sregs);
    let mut regs = cache.regs(&vcpu).map_err(setup_err("entry state"))?;
    regs.rip = entry;
    regs.rflags = 2;
    regs.rsp = layout::BOOT_STACK_TOP;
    // The runner serves the text-buffer port: the kernel may report a line
    // per exit (a Xen guest reports through console_io instead).
    regs.rdi = cfg.boot_flags | boot_flags::REPORT_BUFFER | guest.ap_start_flag();
    regs.rsi = id;
    guest.entry_state(&mut regs, &mut sregs);
    cache.set_sregs(&sregs);
    cache.set_regs(&regs);
    // With ioctls, so that what the personalities read next is what KVM
    // accepted (the trap personality checks CR4.UMIP).
    cache
        .write_back_now(&vcpu)
        .map_err(setup_err("entry state"))?;
    guest
        .initial_tables(&m.vm, &mut Vcpu::new(&vcpu, &mut cache))
        .map_err(setup_err("personality setup"))?;
    Ok((vcpu, cache))
}

fn run_vm(
    entry: u64,
    segs: &[(u64, Vec<u8>)],
    cfg: &Config,
    timed_out: &AtomicBool,
    setup: Setup,
) -> Result<(BootReport, Option<Outcome>), KvmError> {
    let m = create_vm(cfg, segs)?;
    let mut guest = personality::create(&setup, &m.mem, cfg)?;
    let (mut vcpu, mut cache) = setup_vcpu(&m, guest.as_mut(), entry, cfg, 0)?;
    let mut run = Run::default();
    let exit_status = exit_loop(
        &m,
        guest.as_mut(),
        &mut vcpu,
        &mut cache,
        cfg,
        timed_out,
        &mut run,
        0,
    )?;
    run.bound_text();
    let text = String::from_utf8_lossy(&run.text).into_owned();
    Ok((
        BootReport {
            exit_status,
            checks: parse_checks(&text),
            text,
            text_dropped: run.text_dropped,
            exits: run.exits,
            stray_io: run.stray_io,
            ioctls: {
                let mut all = cache.counts();
                if run.aps > 0 {
                    all.add(run.ap_ioctls);
                }
                all
            },
            run_time: run.run_time,
            handle_time: run.handle_time,
        },
        guest.finish(),
    ))
}

/// What the exit loop gathers.
#[derive(Default)]
struct Run {
    /// At most [`TEXT_CAP`] bytes between exits ([`Run::bound_text`]).
    text: Vec<u8>,
    text_dropped: u64,
    exits: ExitCounts,
    stray_io: Capped<(u16, u8)>,
    run_time: Duration,
    handle_time: Duration,
    /// Secondary vCPUs started: through [`ports::START_AP`] (native) or a
    /// hypercall (`VCPUOP_up`, Xen-style).
    aps: u64,
    /// Their vCPU ioctls.
    ap_ioctls: VcpuIoctls,
    /// vCPUs a personality started ([`PortAction::StartVcpu`]), by index.
    started: u64,
}

/// Most bytes of a guest's text a boot report keeps (the Xen model's
/// console buffer is as large: [`crate::xen::misc::CONSOLE_CAP`]).
pub const TEXT_CAP: usize = 1 << 20;

impl Run {
    /// Keep the first [`TEXT_CAP`] bytes of the text, counting the rest
    /// (once per exit: one exit adds at most a text buffer or a console's
    /// worth).
    fn bound_text(&mut self) {
        if self.text.len() > TEXT_CAP {
            self.text_dropped += (self.text.len() - TEXT_CAP) as u64;
            self.text.truncate(TEXT_CAP);
        }
    }

    /// The guest's run stopped with `e` ([`KvmError::stopped`]), with the
    /// text it printed (`run`'s).
    fn stopped(&self, e: impl Into<PortError>) -> KvmError {
        KvmError::stopped(e.into(), &self.text)
    }
}

/// Run vCPU `id` to the guest's exit: `Some(status)` when it reported
/// one, `None` when it halted or went down.
#[allow(clippy::too_many_arguments)]
fn exit_loop(
    m: &Machine,
    guest: &mut dyn Personality,
    vcpu: &mut VcpuFd,
    cache: &mut RegCache,
    cfg: &Config,
    timed_out: &AtomicBool,
    run: &mut Run,
    id: u64,
) -> Result<Option<u32>, KvmError> {
    loop {
        run.bound_text();
        if timed_out.load(Ordering::SeqCst) {
            return Err(KvmError::Timeout {
                limit: cfg.timeout,
                text: String::from_utf8_lossy(&run.text).into_owned(),
            });
        }
        cache.before_run(vcpu).map_err(|e| run.stopped(e))?;
        let t_run = Instant::now();
        let exit = next_exit(vcpu)?;
        let t_handle = Instant::now();
        run.run_time += t_handle - t_run;
        cache.after_run(vcpu);
        let mut cpu = Vcpu::new(vcpu, cache);
        match exit {
            Exit::Out(port, b, len) => {
                run.exits.io += 1;
                match port {
                    ports::TEXT => run.text.extend_from_slice(&b[..len.min(4)]),
                    ports::TEXT_BUFFER => read_text_buffer(&m.mem, b, len, &mut run.text)
                        .map_err(|e| run.stopped(e))?,
                    ports::EXIT => {
                        guest.at_exit(&mut cpu);
                        return Ok(Some(u32::from_le_bytes(b)));
                    }
                    ports::START_AP if guest.ap_start_flag() != 0 => {
                        if let Some(status) = smp::start_ap(m, guest, cfg, timed_out, run, b, len)?
                        {
                            return Ok(Some(status));
                        }
                    }
                    p => {
                        let data = u32::from_le_bytes(b);
                        let w = PortWrite {
                            vm: &m.vm,
                            vcpu: &mut cpu,
                            port: p,
                            data,
                            len,
                            text: &mut run.text,
                        };
                        match guest.port(w) {
                            Some(Ok(PortAction::Handled)) => {}
                            Some(Ok(PortAction::Exit(status))) => return Ok(Some(status)),
                            Some(Ok(PortAction::StartVcpu(next))) => {
                                let started = smp::start_vcpu(
                                    m, guest, cfg, timed_out, run, &mut cpu, id, next,
                                )?;
                                if let Some(status) = started {
                                    return Ok(Some(status));
                                }
                            }
                            Some(Ok(PortAction::VcpuDown)) => return Ok(None),
                            Some(Err(e)) => return Err(run.stopped(e)),
                            None => run.stray_io.push((p, b[0])),
                        }
                    }
                }
            }
            Exit::In => run.exits.io += 1,
            Exit::Mmio => run.exits.mmio += 1,
            Exit::Hlt => {
                run.exits.hlt += 1;
                return Ok(None);
            }
            Exit::Shutdown => {
                let rip = cpu.regs().map(|r| r.rip).unwrap_or(0);
                return Err(run.stopped(Crash::TripleFault { rip }));
            }
            Exit::Other(what) => {
                let rip = cpu.regs().map(|r| r.rip).unwrap_or(0);
                let mut bytes = [0u8; 16];
                let _ = m.mem.read_slice(&mut bytes, GuestAddress(rip));
                return Err(run.stopped(Crash::UnexpectedExit {
                    exit: what,
                    at: Some((rip, bytes)),
                }));
            }
            Exit::Interrupted => run.exits.other += 1,
        }
        run.handle_time += t_handle.elapsed();
    }
}

/// One `KVM_RUN`, its exit copied out of the run structure.
fn next_exit(vcpu: &mut VcpuFd) -> Result<Exit, KvmError> {
    Ok(match vcpu.run() {
        Ok(VcpuExit::IoOut(port, data)) => {
            let mut b = [0u8; 4];
            let n = data.len().min(4);
            b[..n].copy_from_slice(&data[..n]);
            Exit::Out(port, b, data.len())
        }
        Ok(VcpuExit::IoIn(_, data)) => {
            data.fill(0xff);
            Exit::In
        }
        Ok(VcpuExit::MmioRead(_, data)) => {
            data.fill(0xff);
            Exit::Mmio
        }
        Ok(VcpuExit::MmioWrite(..)) => Exit::Mmio,
        Ok(VcpuExit::Hlt) => Exit::Hlt,
        Ok(VcpuExit::Shutdown) => Exit::Shutdown,
        Ok(other) => Exit::Other(format!("unexpected VM exit {other:?}")),
        Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Exit::Interrupted,
        Err(e) => return Err(KvmError::ioctl("KVM_RUN")(e)),
    })
}

/// A dword write to [`ports::TEXT_BUFFER`]: append the line it names
/// (`hvsim_boot_protocol::text_buffer`) to `text`.
fn read_text_buffer(
    mem: &GuestMemoryMmap,
    b: [u8; 4],
    len: usize,
    text: &mut Vec<u8>,
) -> Result<(), Crash> {
    let word = u32::from_le_bytes(b);
    let port = ports::TEXT_BUFFER;
    if len != 4 {
        return Err(Crash::PortWidth {
            name: "text-buffer",
            port,
            len,
            protocol: "the buffer's address | its length",
        });
    }
    let (gpa, n) = hvsim_boot_protocol::text_buffer::split(word);
    let at = text.len();
    text.resize(at + n, 0);
    mem.read_slice(&mut text[at..], GuestAddress(gpa))
        .map_err(|source| Crash::TextBuffer {
            port,
            word,
            gpa,
            len: n,
            source,
        })
        .inspect_err(|_| text.truncate(at))
}
