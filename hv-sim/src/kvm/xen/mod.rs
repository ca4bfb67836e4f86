//! The Xen PV personality on a real vCPU: hv-sim loads a 64-bit PV kernel
//! the way Xen loads dom0, and runs it in ring 3 against the validating
//! handlers of [`crate::xen::XenDomain`].
//!
//! [`boot_xen`] takes the same ELF image that boots on the real Xen
//! hypervisor (see [`crate::realxen`]):
//!
//! * **Loading** ([`builder`]): the kernel's Xen notes (LOADER "generic" or
//!   GUEST_OS "linux", ENTRY, HYPERCALL_PAGE, VIRT_BASE = PADDR_OFFSET = 0);
//!   after the image, in Xen's order and with Xen's arithmetic, the p2m
//!   list, Xen's `start_info_t` (magic "xen-3.0-x86_64", `nr_pages`,
//!   `flags` = SIF_PRIVILEGED | SIF_INITDOMAIN as for dom0, `pt_base`,
//!   `nr_pt_frames`, `mfn_list`, `cmd_line`), the bootstrap page tables in
//!   machine frames (mapped read-only, the L4 typed and installed as the
//!   vCPU's root) and the boot stack. The kernel enters at ENTRY in ring 3
//!   on FLAT_KERNEL_CS/SS with rsi = the start info and rsp = the stack's
//!   top. What this host cannot run is said in the command line
//!   (`hvsim.flags=<hex>`, [`super::boot_flags`]).
//! * **Hypercalls**: the hypercall page's 32-byte stubs are `mov eax, nr;
//!   out 0xE8, eax; ret` (`vmcall` never reaches userspace here); on the
//!   port write hv-sim reads rax, rdi, rsi, rdx, r10, r8, runs
//!   [`XenDomain::hypercall`] over guest RAM (guest VA = GPA) and writes
//!   rax back, clobbering rcx and r11 as `syscall` does. `console_io` text
//!   becomes the boot's text; `sched_op(SCHEDOP_shutdown)` ends the boot.
//! * **Exceptions** (vectors 0–31) enter hv-sim's stubs
//!   ([`builder::exception_stub`]); hv-sim emulates the forced-emulation
//!   `cpuid` (`ud2; .ascii "xen"; cpuid`, answering Xen's leaves), and
//!   delivers every other exception as Xen does: a bounce frame on the
//!   kernel stack and a jump to the `set_trap_table` handler
//!   ([`crate::xen::traps`]). The kernel returns through the `iret`
//!   hypercall, whose stub completes the `iret_context` as Xen's does. An
//!   exception with no handler crashes the domain, as on Xen.
//! * **Effects**: after each hypercall hv-sim builds the real GDT (the
//!   guest frames' validated entries, then Xen's reserved entries from 7168
//!   on) and LDT, installs them through the vCPU's system registers
//!   ([`super::regs`]: no ioctl, and no write when nothing changed). LDT
//!   pages are mapped lazily, as on Xen: a real LDT page stays not present
//!   until the CPU touches it; the #PF comes to hv-sim, which maps
//!   (validates) the guest's page through the domain and retries, or
//!   delivers the #PF to the guest when the page cannot be a descriptor
//!   page. hv-sim applies `set_segment_base`, and mirrors the domain's L1
//!   entries into the real 4 KiB page tables (so a direct store into a live
//!   descriptor page faults, as on Xen). A mirror that changed any entry
//!   drops KVM's shadow page tables by re-registering the memory slot: the
//!   costliest step of a Xen boot here (5–11 ms each on PVM, an SRCU grace
//!   period), taken only when entries changed.
//! * **vCPUs** ([`XEN_VCPUS`]): when a hypercall brings vCPU n up
//!   (`VCPUOP_initialise` + `VCPUOP_up`, [`crate::xen::XenDomain`]'s
//!   `vcpu_op`), hv-sim creates a second KVM vCPU in the context's state
//!   (ring 3 at its rip/rsp on FLAT_KERNEL_CS/SS) and runs it until its
//!   `VCPUOP_down`; then the first resumes after its `VCPUOP_up` (they
//!   take turns, as the native runner's vCPUs do). The runner adds a
//!   [`VCPU_LINE_PREFIX`] line for each: KVM's TR, FS base and GDTR, and
//!   the kernel stack and first GDT frame the domain keeps for that vCPU.
//!   The real GDT/LDT are shared and rewritten from the running vCPU's
//!   frames when it resumes (Xen gives each vCPU its own GDT mapping).
//!
//! # Where this differs from Xen
//! * hv-sim's real page tables map guest-physical frames; the bootstrap
//!   tables at `pt_base` are Xen's image of the initial mapping (machine
//!   frames), typed L4..L1 as Xen types them. Their L1 entries are the
//!   domain's direct-map entries: `update_va_mapping`, `mmu_update` of
//!   such an entry and a store into such an L1 (emulated as Xen's writable
//!   page tables do, plain `mov` only) change the model, the image and the
//!   real tables. Other guest-built page tables are typed and counted,
//!   never walked.
//! * Pages below 1 MiB are hv-sim's (their p2m entries are `!0`); there is
//!   no shared-info page (`shared_info` is 0) and no event delivery.
//! * The vCPU's real IOPL is 3 (the stubs use `out`); bounce frames show
//!   the guest Xen's virtual IOPL 0.
//! * `iret` returns only to FLAT_KERNEL_CS/SS (kernel mode); PVM cannot
//!   run `int n`, so software interrupts other than through faults are
//!   not delivered (the kernel is told with `hvsim.flags`).
//!
//! # Guest-physical layout (pages below 1 MiB are the hypervisor's)
//! | GPA | contents | guest access |
//! |---|---|---|
//! | 0x1000 / 0x2000 / 0x3000 | PML4, PDPT, PD | none |
//! | 0x10000–0x50000 | page tables: 64 × 512 4 KiB entries (≤ 128 MiB RAM) | none |
//! | 0x50000–0x5f000 | the real GDT: 7680 entries (Xen's 7168 + 512 reserved) | none |
//! | 0x60000 | the real IDT (vectors 0–31 → hv-sim's exception stubs) | none |
//! | 0x61000–0x71000 | the real LDT | none |
//! | 0x71000 | Xen's TSS (selector 0xe040) | none |
//! | 0x72000 | hv-sim's exception stubs | read, execute (ring 3) |
//!
//! Above 1 MiB the pages are the domain's (pfn `i` = mfn `3i + 0x1d0`); the
//! domain's scratch page is pfn 0x100; the kernel and Xen's layout follow.

pub mod builder;
mod exception;
mod sync;

use std::collections::BTreeMap;
use std::ptr::NonNull;

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};
use kvm_ioctls::VmFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::regs::Vcpu;
use super::{BootReport, Config, Crash, KvmError, PortError, layout};
use crate::xen::traps::{self, Interrupted};
use crate::xen::{Trace, TraceEvent, VcpuState, XenDomain, ZERO_BLOCK_PTR};
pub use builder::{
    Dom0Layout, EXCEPTION_MARKER, STUB_SIZE, XEN_ELFNOTE_HYPERCALL_PAGE, XenNotes, hypercall_stub,
    xen_notes,
};

/// CPUID 0x4000_0000 signature.
pub const CPUID_SIGNATURE: [u8; 12] = *b"XenVMMXenVMM";
pub use super::layout::ring3::{MAX_PTS, REAL_GDT, REAL_IDT, REAL_LDT};
/// Xen's TSS.
pub const REAL_TSS: u64 = layout::ring3::HV_TSS;
/// hv-sim's exception stubs (16 bytes per vector).
pub const TRAP_TEXT: u64 = layout::ring3::OWN_PAGE;
/// Xen version reported by CPUID 0x4000_0001: 4.17, the version CI runs.
pub const XEN_VERSION: u32 = (4 << 16) | 17;
/// Pages reserved for the hypervisor (the first MiB).
pub const RESERVED_PAGES: usize = layout::ring3::RESERVED_PAGES as usize;

/// vCPUs of the domain: vCPU 0 runs from the builder's entry; the kernel
/// may bring up the others with `VCPUOP_initialise` + `VCPUOP_up`.
pub const XEN_VCPUS: usize = 2;

/// Xen's first reserved GDT entry.
pub const FIRST_RESERVED_GDT_ENTRY: u32 = 7168;
/// Entries of the real GDT.
pub const REAL_GDT_ENTRIES: u32 = FIRST_RESERVED_GDT_ENTRY + 512;
/// `__HYPERVISOR_CS` (ring 0, 64-bit).
pub const HYPERVISOR_CS: u16 = 0xe008;
/// `__HYPERVISOR_DS32`.
pub const HYPERVISOR_DS: u16 = 0xe010;
/// `FLAT_RING3_CS32`.
pub const FLAT_USER_CS32: u16 = 0xe023;
/// `FLAT_RING3_DS32` = `FLAT_KERNEL_SS` / `FLAT_KERNEL_DS` for pv64.
pub const FLAT_KERNEL_SS: u16 = 0xe02b;
/// `FLAT_RING3_CS64` = `FLAT_KERNEL_CS` for pv64.
pub const FLAT_KERNEL_CS: u16 = 0xe033;
/// `TSS_ENTRY << 3`.
pub const TSS_SELECTOR: u16 = 0xe040;
/// `LDT_ENTRY << 3`.
pub const LDT_SELECTOR: u16 = 0xe050;

use layout::{PTE_P, PTE_RW, PTE_U};
const PTE_AD: u64 = 0x60;
const PTE_MFN_MASK: u64 = 0x000F_FFFF_FFFF_F000;

/// The address in the kernel's `XEN_ELFNOTE_HYPERCALL_PAGE` note, checked
/// with the rest of its Xen notes ([`xen_notes`]).
pub fn hypercall_page_note(image: &[u8]) -> Result<u64, KvmError> {
    xen_notes(image).map(|n| n.hypercall_page)
}

/// What `run_vm` needs to set up the personality.
pub(crate) struct XenSetup {
    notes: XenNotes,
    layout: Dom0Layout,
}

/// What the personality did, handed back with the boot report.
pub(crate) struct XenOutcome {
    hypercalls: u64,
    trace: Trace,
    vcpu: VcpuState,
    violations: Vec<String>,
    invariants: Result<(), crate::xen::InvariantError>,
    pte_flushes: u64,
    emulated_cpuids: u64,
    bounced: BTreeMap<u8, u64>,
    irets: u64,
    lazy_ldt_maps: u64,
    shutdown: Option<u32>,
    final_segments: Option<FinalSegments>,
    layout: Dom0Layout,
}

/// The vCPU's segment registers when the guest shut down, as
/// `KVM_GET_SREGS` reports them (on PVM a ring-3 guest reading its own
/// selectors with `mov r, cs` sees the host's instead).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FinalSegments {
    /// CS selector.
    pub cs: u16,
    /// CPL (CS.DPL).
    pub cpl: u8,
    /// SS selector.
    pub ss: u16,
    /// DS selector.
    pub ds: u16,
    /// ES selector.
    pub es: u16,
    /// DS descriptor's DPL.
    pub ds_dpl: u8,
}

impl FinalSegments {
    /// The segments in `s` (`KVM_GET_SREGS`).
    pub(crate) fn of(s: &kvm_sregs) -> FinalSegments {
        FinalSegments {
            cs: s.cs.selector,
            cpl: s.cs.dpl,
            ss: s.ss.selector,
            ds: s.ds.selector,
            es: s.es.selector,
            ds_dpl: s.ds.dpl,
        }
    }
}

/// What a Xen PV boot did.
#[derive(Clone, Debug)]
pub struct XenBootReport {
    /// The guest's text, checks and exits.
    pub boot: BootReport,
    /// Hypercalls the guest issued through its hypercall page (multicall
    /// sub-calls and `iret` not counted).
    pub hypercalls: u64,
    /// Every hypercall as the domain ran it.
    pub trace: Trace,
    /// vCPU 0's Xen state at the end.
    pub vcpu: VcpuState,
    /// Direct writes to live descriptor frames the domain detected.
    pub violations: Vec<String>,
    /// The domain's invariants at the end.
    pub invariants: Result<(), crate::xen::InvariantError>,
    /// Times the real page tables changed and KVM's shadow copies were
    /// dropped (memory slot re-registered).
    pub pte_flushes: u64,
    /// The kernel's Xen notes.
    pub notes: XenNotes,
    /// Where the builder put the p2m, start info, page tables and stack.
    pub layout: Dom0Layout,
    /// `cpuid`s emulated through Xen's forced-emulation prefix.
    pub emulated_cpuids: u64,
    /// Exceptions bounced to the guest's handlers, by vector.
    pub bounced: BTreeMap<u8, u64>,
    /// `iret` hypercalls.
    pub irets: u64,
    /// LDT pages mapped on the CPU's first access (Xen's lazy LDT).
    pub lazy_ldt_maps: u64,
    /// The `SCHEDOP_shutdown` reason (`None`: the guest stopped otherwise).
    pub shutdown: Option<u32>,
    /// The vCPU's segments at the guest's shutdown.
    pub final_segments: Option<FinalSegments>,
}

impl XenBootReport {
    /// Hypercalls by name: (issued directly, run inside a multicall).
    pub fn calls_by_name(&self) -> BTreeMap<&'static str, (usize, usize)> {
        let mut m: BTreeMap<&'static str, (usize, usize)> = BTreeMap::new();
        for e in &self.trace.events {
            if let TraceEvent::Call { name, depth, .. } = e {
                let c = m.entry(name).or_default();
                if *depth == 0 {
                    c.0 += 1;
                } else {
                    c.1 += 1;
                }
            }
        }
        m
    }

    /// The rejected hypercalls: (name, result, reason).
    pub fn rejected(&self) -> Vec<(&'static str, i64, String)> {
        self.trace
            .events
            .iter()
            .filter_map(|e| match e {
                TraceEvent::Call {
                    name,
                    result,
                    reason,
                    ..
                } if *result < 0 => Some((*name, *result, reason.clone().unwrap_or_default())),
                _ => None,
            })
            .collect()
    }

    /// The one-line summary.
    pub fn summary(&self) -> String {
        self.boot.summary_line("xen", self.hypercalls)
    }
}

/// The status a Xen guest reported: its last `exit status N` line, else 0
/// for a poweroff and `0x100 + reason` for any other shutdown.
pub fn exit_status(text: &str, shutdown_reason: u32) -> u32 {
    text.lines()
        .rev()
        .find_map(|l| {
            l.trim()
                .strip_prefix(hvsim_boot_protocol::EXIT_STATUS_PREFIX)?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(if shutdown_reason == 0 {
            0
        } else {
            0x100 + shutdown_reason
        })
}

/// Boot `image` as a Xen PV guest (dom0).
pub fn boot_xen(image: &[u8], cfg: &Config) -> Result<XenBootReport, KvmError> {
    let notes = xen_notes(image)?;
    let (boot, o) = super::personality::launch_ring3(
        "Xen",
        image,
        cfg,
        |_, segs| {
            let kernel_end = segs.iter().map(|(a, _, m)| a + m).max().unwrap_or(0);
            let layout = Dom0Layout::new(kernel_end, (cfg.mem_size / 4096) as u64);
            if layout.total > cfg.mem_size as u64 {
                return Err(KvmError::BadImage(format!(
                    "the initial mapping (kernel, p2m, start info, page tables, stack) ends at {:#x}, past guest RAM",
                    layout.total
                )));
            }
            let notes = notes.clone();
            Ok((notes.entry, super::Setup::Xen(XenSetup { notes, layout })))
        },
        |o| match o {
            super::Outcome::Xen(o) => Some(*o),
            _ => None,
        },
    )?;
    Ok(XenBootReport {
        boot,
        hypercalls: o.hypercalls,
        trace: o.trace,
        vcpu: o.vcpu,
        violations: o.violations,
        invariants: o.invariants,
        pte_flushes: o.pte_flushes,
        notes,
        layout: o.layout,
        emulated_cpuids: o.emulated_cpuids,
        bounced: o.bounced,
        irets: o.irets,
        lazy_ldt_maps: o.lazy_ldt_maps,
        shutdown: o.shutdown,
        final_segments: o.final_segments,
    })
}

/// The real tables' copy of a validated descriptor: accessed, DPL as Xen
/// left it ([`layout::real_descriptor`]).
fn accessed(d: u64) -> u64 {
    layout::real_descriptor(d, 0)
}

/// hv-sim's pages below 1 MiB: the real page tables, the hypercall page's
/// stubs, the exception stubs with their IDT gates, and Xen's reserved GDT
/// entries.
fn write_hv_pages(mem: &GuestMemoryMmap, cfg: &Config, setup: &XenSetup) -> Result<(), KvmError> {
    let w = |addr: u64, v: u64| layout::put(mem, "hv-sim's pages", addr, v);
    // The exception stubs' page (TRAP_TEXT) is the guest's to run.
    layout::write_ring3_map(
        mem,
        cfg.mem_size,
        layout::LowMap {
            boot_stack: false,
            rom_window: false,
            own_page_user: true,
        },
    )?;
    // Hypercall page and exception stubs.
    let mut stubs = vec![0u8; 4096];
    for (nr, s) in stubs.chunks_mut(STUB_SIZE).enumerate() {
        s.copy_from_slice(&hypercall_stub(nr as u32));
    }
    mem.write_slice(&stubs, GuestAddress(setup.notes.hypercall_page))
        .map_err(KvmError::guest_write(
            "the hypercall page",
            setup.notes.hypercall_page,
        ))?;
    for v in 0..32u8 {
        let at = TRAP_TEXT + u64::from(v) * builder::EXCEPTION_STUB_SIZE;
        mem.write_slice(&builder::exception_stub(v), GuestAddress(at))
            .map_err(KvmError::guest_write("an exception stub", at))?;
        // Interrupt gates into the stubs; #BP and #OF may be raised by
        // `int3`/`into` in ring 3, as Xen's IDT allows.
        let dpl: u64 = if v == 3 || v == 4 { 3 } else { 0 };
        let (low, high) = layout::gate(at, FLAT_KERNEL_CS, 0x8e | dpl << 5);
        w(REAL_IDT + u64::from(v) * 16, low)?;
        w(REAL_IDT + u64::from(v) * 16 + 8, high)?;
    }
    // Xen's reserved GDT entries, its TSS.
    let idx = |sel: u16| u32::from(sel >> 3);
    layout::write_gdt_entries(
        mem,
        REAL_GDT,
        &[
            (idx(HYPERVISOR_CS), 0x00af_9b00_0000_ffff),
            (idx(HYPERVISOR_DS), 0x00cf_9300_0000_ffff),
            (idx(FLAT_USER_CS32), 0x00cf_fb00_0000_ffff),
            (idx(FLAT_KERNEL_SS), layout::RING3_DATA),
            (idx(FLAT_KERNEL_CS), layout::RING3_CODE64),
        ],
        (idx(TSS_SELECTOR), REAL_TSS),
    )
}

/// What a port write did beyond running the hypercall.
pub(crate) enum XenPort {
    /// The domain shut down with this reason.
    Shutdown(u32),
    /// vCPU n came up (`VCPUOP_up`).
    Start(u64),
    /// The running vCPU went down (`VCPUOP_down`).
    Down,
}

/// The runner's line for a Xen vCPU: `hv-sim: xen vCPU <n>: ...`.
pub const VCPU_LINE_PREFIX: &str = "hv-sim: xen vCPU ";

/// The personality's state during a boot.
pub(crate) struct XenGuest {
    dom: XenDomain,
    mem: GuestMemoryMmap,
    pages: usize,
    hypercalls: u64,
    /// Entries of the real GDT last written from guest frames.
    gdt_written: u32,
    /// What the real GDT/LDT hold (to skip unchanged work).
    last_gdt: Vec<u64>,
    last_ldt: (u64, u32, Vec<u64>),
    /// The domain's L1 entries when last mirrored.
    last_ptes: Vec<u64>,
    /// The vCPU running now (the others wait their turn).
    cur: usize,
    /// Per vCPU: the FS and kernel GS bases last applied from the domain.
    bases: Vec<(u64, u64)>,
    pte_flushes: u64,
    cpuid: Vec<kvm_bindings::kvm_cpuid_entry2>,
    emulated_cpuids: u64,
    bounced: BTreeMap<u8, u64>,
    irets: u64,
    lazy_ldt_maps: u64,
    /// vCPU 0's `evtchn_upcall_mask` (1 at dom0's start: `dom0_build.c`).
    upcall_mask: u8,
    shutdown: Option<u32>,
    final_segments: Option<FinalSegments>,
    layout: Dom0Layout,
}

impl XenGuest {
    /// Lay out hv-sim's pages and Xen's, fill the hypercall page, create
    /// the domain.
    pub(crate) fn new(
        mem: &GuestMemoryMmap,
        cfg: &Config,
        setup: &XenSetup,
    ) -> Result<XenGuest, KvmError> {
        let w = |addr: u64, v: u64| layout::put(mem, "hv-sim's pages", addr, v);
        let pages = cfg.mem_size / 4096;
        write_hv_pages(mem, cfg, setup)?;
        // The domain over the guest's RAM.
        let host = super::machine::slot0(mem)
            .map_err(|e| KvmError::GuestMemory {
                what: "host address",
                detail: e.to_string(),
            })?
            .userspace_addr as *mut u8;
        let host = NonNull::new(host).ok_or_else(|| KvmError::GuestMemory {
            what: "host address",
            detail: "null".into(),
        })?;
        // SAFETY: `host` is the start of the page-aligned mmap of `pages`
        // pages owned by `mem`; the XenGuest keeps a clone of `mem` (same
        // mapping, reference counted) for as long as the domain lives, and
        // the vCPU only runs while no domain method does (the vCPU thread
        // calls both).
        let dom = unsafe { XenDomain::pv64_external(host, pages, XEN_VCPUS, RESERVED_PAGES) };
        dom.set_privileged(true);
        let l = setup.layout;
        // The p2m list, the bootstrap page tables, the start info.
        for pfn in 0..pages as u64 {
            w(l.p2m + pfn * 8, dom.pfn_to_mfn(pfn).unwrap_or(u64::MAX))?;
        }
        for (a, v) in builder::bootstrap_page_tables(&l, |pfn| dom.pfn_to_mfn(pfn)) {
            w(a, v)?;
        }
        dom.install_bootstrap_tables(l.pt_base >> 12..(l.pt_base >> 12) + l.nr_pt_frames)?;
        builder::write_start_info(
            mem,
            l.start_info,
            &builder::StartInfoFields {
                nr_pages: pages as u64,
                shared_info: 0,
                flags: builder::si::SIF_PRIVILEGED
                    | builder::si::SIF_INITDOMAIN
                    | builder::si::SIF_PM_XEN_4_17,
                pt_base: l.pt_base,
                nr_pt_frames: l.nr_pt_frames,
                mfn_list: l.p2m,
                cmd_line: format!(
                    "{}={:#x} {}",
                    hvsim_boot_protocol::XEN_FLAGS_KEY,
                    cfg.boot_flags,
                    cfg.guest_cmdline
                )
                .trim_end()
                .to_string(),
                first_p2m_pfn: l.total >> 12,
            },
        )?;
        Ok(XenGuest {
            dom,
            mem: mem.clone(),
            pages,
            hypercalls: 0,
            gdt_written: 0,
            last_gdt: Vec::new(),
            last_ldt: (0, 0, Vec::new()),
            last_ptes: Vec::new(),
            cur: 0,
            bases: vec![(0, 0); XEN_VCPUS],
            pte_flushes: 0,
            cpuid: Vec::new(),
            emulated_cpuids: 0,
            bounced: BTreeMap::new(),
            irets: 0,
            lazy_ldt_maps: 0,
            upcall_mask: 1,
            shutdown: None,
            final_segments: None,
            layout: l,
        })
    }

    /// The guest shut down: record the vCPU's segments.
    pub(crate) fn at_exit(&mut self, vcpu: &mut Vcpu<'_>) {
        self.final_segments = vcpu.sregs().ok().map(|s| FinalSegments::of(&s));
    }

    /// The CPUID leaves the vCPU was given (what emulated `cpuid` answers).
    pub(crate) fn set_cpuid(&mut self, entries: &[kvm_bindings::kvm_cpuid_entry2]) {
        self.cpuid = entries.to_vec();
    }

    /// The entry state of a PV kernel as Xen's builder leaves it: ring 3 on
    /// Xen's flat selectors at the ENTRY note, rsp = the boot stack's top,
    /// rsi = the start info; hv-sim's GDT/IDT/TR, IOPL 3 for its stubs.
    pub(crate) fn entry_state(&mut self, regs: &mut kvm_regs, sregs: &mut kvm_sregs) {
        layout::ring3_entry(
            regs,
            sregs,
            &layout::Ring3Tables {
                cs: FLAT_KERNEL_CS,
                ss: FLAT_KERNEL_SS,
                gdt: (REAL_GDT, REAL_GDT_ENTRIES as u64),
                idt: REAL_IDT,
                tss: (TSS_SELECTOR, REAL_TSS),
            },
        );
        match self.dom.vcpu(self.cur).entry.filter(|_| self.cur != 0) {
            // A vCPU brought up with VCPUOP_initialise: its context's
            // registers (Xen raised the selectors' RPL and set IF), the
            // flags as Xen's iretq to the guest leaves them (never a bad
            // RFLAGS for KVM); the real IOPL 3 is hv-sim's.
            Some(e) => {
                regs.rip = e.rip;
                regs.rsp = e.rsp;
                regs.rdi = e.rdi;
                regs.rsi = e.rsi;
                regs.rflags = traps::exit_rflags(e.rflags, false) | traps::RFLAGS_IOPL;
            }
            None => {
                regs.rsi = self.layout.start_info;
                regs.rdi = 0;
                regs.rsp = self.layout.stack_top;
            }
        }
    }

    /// A stub's port write: a hypercall, `iret`, or an exception entry.
    /// `Ok(Some(..))`: the domain shut down, or a vCPU came up or went
    /// down. `Err`: the guest broke the stub protocol, or did what makes
    /// Xen crash the domain.
    pub(crate) fn port(
        &mut self,
        vm: &VmFd,
        vcpu: &mut Vcpu<'_>,
        data: u32,
        len: usize,
        text: &mut Vec<u8>,
    ) -> Result<Option<XenPort>, PortError> {
        let mut regs = vcpu.regs()?;
        if len != 4 || regs.rax != u64::from(data) {
            return Err(Crash::NotFromStub {
                name: "hypercall",
                port: super::ports::HYPERCALL,
                len,
                data,
                rax: regs.rax,
                rip: regs.rip,
                owner: "hv-sim's stubs",
                why: None,
            }
            .into());
        }
        if let Some(v) = data.checked_sub(EXCEPTION_MARKER).filter(|v| *v < 32) {
            return self.exception(vm, vcpu, regs, v as u8).map(|()| None);
        }
        if data == builder::HYPERVISOR_IRET {
            return self.iret(vcpu, regs).map(|()| None);
        }
        self.hypercalls += 1;
        let args = [regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, 0];
        let was_up = self.up_vcpus(regs.rax);
        let r = self.dom.hypercall(self.cur, regs.rax, args);
        regs.rax = r as u64;
        // Syscall-style clobbers of a real PV hypercall.
        regs.rcx = 0;
        regs.r11 = 0;
        vcpu.set_regs(&regs);
        text.extend_from_slice(&self.dom.take_console().text);
        if let Some(reason) = self.dom.shutdown_reason() {
            self.shutdown = Some(reason);
            return Ok(Some(XenPort::Shutdown(reason)));
        }
        self.sync(vm, vcpu)?;
        self.vcpu_changes(was_up)
    }

    /// Which vCPUs run, before a hypercall that may change it (`vcpu_op`,
    /// or one inside a multicall); `None` for the others.
    fn up_vcpus(&self, nr: u64) -> Option<Vec<bool>> {
        (nr == 24 || nr == 13).then(|| (0..XEN_VCPUS).map(|v| self.dom.vcpu(v).up).collect())
    }

    /// After a hypercall that may have brought a vCPU up or this one down:
    /// what the runner does next.
    fn vcpu_changes(&self, was_up: Option<Vec<bool>>) -> Result<Option<XenPort>, PortError> {
        let Some(was_up) = was_up else {
            return Ok(None);
        };
        if !self.dom.vcpu(self.cur).up {
            return Ok(Some(XenPort::Down));
        }
        let Some(next) = (0..XEN_VCPUS).find(|&v| !was_up[v] && self.dom.vcpu(v).up) else {
            return Ok(None);
        };
        let e = self.dom.vcpu(next).entry.unwrap_or_default();
        if e.cs != FLAT_KERNEL_CS || e.ss != FLAT_KERNEL_SS {
            return Err(Crash::XenVcpuMode {
                vcpu: next,
                cs: e.cs,
                ss: e.ss,
            }
            .into());
        }
        Ok(Some(XenPort::Start(next as u64)))
    }
    /// The outcome, once the guest has stopped.
    pub(crate) fn finish(self) -> XenOutcome {
        XenOutcome {
            hypercalls: self.hypercalls,
            trace: self.dom.trace(),
            vcpu: self.dom.vcpu(0),
            violations: self.dom.violations(),
            invariants: self.dom.check_invariants(),
            pte_flushes: self.pte_flushes,
            emulated_cpuids: self.emulated_cpuids,
            bounced: self.bounced,
            irets: self.irets,
            lazy_ldt_maps: self.lazy_ldt_maps,
            shutdown: self.shutdown,
            final_segments: self.final_segments,
            layout: self.layout,
        }
    }
}

impl super::personality::Personality for XenGuest {
    fn cpuid_signature(&self, _: &Config) -> Option<[u8; 12]> {
        Some(CPUID_SIGNATURE)
    }

    fn adjust_cpuid(&mut self, entries: &mut [kvm_bindings::kvm_cpuid_entry2]) {
        for e in entries.iter_mut().filter(|e| e.function == 0x4000_0000) {
            // Max leaf: Xen answers at least base + 2 (detect() and Linux
            // require it).
            e.eax = e.eax.max(0x4000_0002);
        }
        self.set_cpuid(entries);
    }

    fn entry_state(&mut self, regs: &mut kvm_regs, sregs: &mut kvm_sregs) {
        XenGuest::entry_state(self, regs, sregs)
    }

    fn initial_tables(&mut self, vm: &VmFd, vcpu: &mut Vcpu<'_>) -> Result<(), PortError> {
        XenGuest::initial_tables(self, vm, vcpu)
    }

    fn port(
        &mut self,
        w: super::personality::PortWrite<'_, '_>,
    ) -> Option<Result<super::personality::PortAction, PortError>> {
        use super::personality::PortAction;
        if w.port != super::ports::HYPERCALL {
            return None;
        }
        Some(
            match XenGuest::port(self, w.vm, w.vcpu, w.data, w.len, w.text) {
                Ok(Some(XenPort::Start(next))) => Ok(PortAction::StartVcpu(next)),
                Ok(Some(XenPort::Down)) => Ok(PortAction::VcpuDown),
                Ok(Some(XenPort::Shutdown(reason))) => {
                    XenGuest::at_exit(self, w.vcpu);
                    Ok(PortAction::Exit(exit_status(
                        &String::from_utf8_lossy(w.text),
                        reason,
                    )))
                }
                Ok(None) => Ok(PortAction::Handled),
                Err(e) => Err(e),
            },
        )
    }

    fn at_exit(&mut self, vcpu: &mut Vcpu<'_>) {
        XenGuest::at_exit(self, vcpu)
    }

    fn select_vcpu(&mut self, id: u64) {
        self.cur = id as usize;
    }

    fn resume(&mut self, vm: &VmFd, vcpu: &mut Vcpu<'_>) -> Result<(), PortError> {
        // The real GDT and LDT are shared by the vCPUs, which take turns:
        // rewrite them from this vCPU's frames.
        self.last_gdt.clear();
        self.last_ldt = (u64::MAX, 0, Vec::new());
        self.sync(vm, vcpu)
    }

    fn vcpu_report(&self, id: u64, sregs: &kvm_sregs) -> Option<String> {
        Some(self.vcpu_line(id as usize, sregs))
    }

    fn finish(self: Box<Self>) -> Option<super::Outcome> {
        Some(super::Outcome::Xen(Box::new(XenGuest::finish(*self))))
    }
}
