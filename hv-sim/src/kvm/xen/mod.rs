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

use std::collections::BTreeMap;
use std::ptr::NonNull;

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};
use kvm_ioctls::VmFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::regs::Vcpu;
use super::{BootReport, Config, KvmError, layout, parse_elf};
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
    invariants: Result<(), String>,
    pte_flushes: u64,
    emulated_cpuids: u64,
    bounced: BTreeMap<u8, u64>,
    irets: u64,
    lazy_ldt_maps: u64,
    shutdown: Option<u32>,
    final_segments: Option<FinalSegments>,
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
    pub invariants: Result<(), String>,
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
    super::available().map_err(KvmError::Unavailable)?;
    let (_, segs) = parse_elf(image)?;
    let notes = xen_notes(image)?;
    super::check_ring3_ram("Xen", cfg.mem_size, MAX_PTS)?;
    super::check_segments_fit(&segs, cfg.mem_size)?;
    let kernel_end = segs.iter().map(|(a, _, m)| a + m).max().unwrap_or(0);
    let layout = Dom0Layout::new(kernel_end, (cfg.mem_size / 4096) as u64);
    if layout.total > cfg.mem_size as u64 {
        return Err(KvmError::BadImage(format!(
            "the initial mapping (kernel, p2m, start info, page tables, stack) ends at {:#x}, past guest RAM",
            layout.total
        )));
    }
    let (boot, outcome) = super::launch(
        notes.entry,
        &segs,
        cfg,
        super::Setup::Xen(XenSetup {
            notes: notes.clone(),
            layout,
        }),
    )?;
    let Some(super::Outcome::Xen(o)) = outcome else {
        return Err(KvmError::Ioctl("xen personality", "no outcome".into()));
    };
    let o = *o;
    Ok(XenBootReport {
        boot,
        hypercalls: o.hypercalls,
        trace: o.trace,
        vcpu: o.vcpu,
        violations: o.violations,
        invariants: o.invariants,
        pte_flushes: o.pte_flushes,
        notes,
        layout,
        emulated_cpuids: o.emulated_cpuids,
        bounced: o.bounced,
        irets: o.irets,
        lazy_ldt_maps: o.lazy_ldt_maps,
        shutdown: o.shutdown,
        final_segments: o.final_segments,
    })
}

/// Set the accessed bit of a present code/data descriptor (the real tables
/// are hv-sim's copies: the CPU must not need to write them).
fn accessed(d: u64) -> u64 {
    if d & (1 << 47) != 0 && d & (1 << 44) != 0 {
        d | (1 << 40)
    } else {
        d
    }
}

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
    fs_base: u64,
    gs_base: u64,
    pte_flushes: u64,
    region: kvm_bindings::kvm_userspace_memory_region,
    cpuid: Vec<kvm_bindings::kvm_cpuid_entry2>,
    emulated_cpuids: u64,
    bounced: BTreeMap<u8, u64>,
    irets: u64,
    lazy_ldt_maps: u64,
    /// vCPU 0's `evtchn_upcall_mask` (1 at dom0's start: `dom0_build.c`).
    upcall_mask: u8,
    shutdown: Option<u32>,
    final_segments: Option<FinalSegments>,
    start_info: u64,
    stack_top: u64,
}

impl XenGuest {
    /// Lay out hv-sim's pages and Xen's, fill the hypercall page, create
    /// the domain.
    pub(crate) fn new(
        mem: &GuestMemoryMmap,
        cfg: &Config,
        setup: &XenSetup,
    ) -> Result<XenGuest, KvmError> {
        let w = |addr: u64, v: u64| {
            mem.write_obj(v, GuestAddress(addr))
                .map_err(|e| KvmError::BadImage(format!("writing {addr:#x}: {e}")))
        };
        let pages = cfg.mem_size / 4096;
        layout::write_ring3_page_tables(mem, cfg.mem_size, |a| {
            if a == TRAP_TEXT {
                a | PTE_P | PTE_U
            } else if (REAL_GDT..REAL_TSS + 0x1000).contains(&a) {
                // Supervisor only: the CPU's implicit accesses.
                a | PTE_P | PTE_RW
            } else {
                0
            }
        })
        .map_err(KvmError::BadImage)?;
        // Hypercall page and exception stubs.
        let mut stubs = vec![0u8; 4096];
        for (nr, s) in stubs.chunks_mut(STUB_SIZE).enumerate() {
            s.copy_from_slice(&hypercall_stub(nr as u32));
        }
        mem.write_slice(&stubs, GuestAddress(setup.notes.hypercall_page))
            .map_err(|e| KvmError::BadImage(format!("filling the hypercall page: {e}")))?;
        for v in 0..32u8 {
            let at = TRAP_TEXT + u64::from(v) * builder::EXCEPTION_STUB_SIZE;
            mem.write_slice(&builder::exception_stub(v), GuestAddress(at))
                .map_err(|e| KvmError::BadImage(format!("writing exception stub {v}: {e}")))?;
            // Interrupt gates into the stubs; #BP and #OF may be raised by
            // `int3`/`into` in ring 3, as Xen's IDT allows.
            let dpl: u64 = if v == 3 || v == 4 { 3 } else { 0 };
            let low = (at & 0xffff)
                | (u64::from(FLAT_KERNEL_CS) << 16)
                | ((0x8e | dpl << 5) << 40)
                | ((at >> 16) & 0xffff) << 48;
            w(REAL_IDT + u64::from(v) * 16, low)?;
            w(REAL_IDT + u64::from(v) * 16 + 8, at >> 32)?;
        }
        // Xen's reserved GDT entries.
        let gdt = |idx: u32, d: u64| w(REAL_GDT + u64::from(idx) * 8, d);
        gdt(u32::from(HYPERVISOR_CS >> 3), 0x00af_9b00_0000_ffff)?;
        gdt(u32::from(HYPERVISOR_DS >> 3), 0x00cf_9300_0000_ffff)?;
        gdt(u32::from(FLAT_USER_CS32 >> 3), 0x00cf_fb00_0000_ffff)?;
        gdt(u32::from(FLAT_KERNEL_SS >> 3), 0x00cf_f300_0000_ffff)?;
        gdt(u32::from(FLAT_KERNEL_CS >> 3), 0x00af_fb00_0000_ffff)?;
        let tss = pvops::SystemDescriptor::tss(REAL_TSS, 0x67)
            .map_err(|e| KvmError::BadImage(e.to_string()))?;
        // Busy: TR is loaded with it.
        gdt(u32::from(TSS_SELECTOR >> 3), tss.low | (0x2 << 40))?;
        gdt(u32::from(TSS_SELECTOR >> 3) + 1, tss.high)?;
        // The domain over the guest's RAM.
        let host = mem
            .get_host_address(GuestAddress(0))
            .map_err(|e| KvmError::Ioctl("guest memory", e.to_string()))?;
        let host =
            NonNull::new(host).ok_or_else(|| KvmError::Ioctl("guest memory", "null".into()))?;
        // SAFETY: `host` is the start of the page-aligned mmap of `pages`
        // pages owned by `mem`; the XenGuest keeps a clone of `mem` (same
        // mapping, reference counted) for as long as the domain lives, and
        // the vCPU only runs while no domain method does (the vCPU thread
        // calls both).
        let dom = unsafe { XenDomain::pv64_external(host, pages, 1, RESERVED_PAGES) };
        dom.set_privileged(true);
        let l = setup.layout;
        // The p2m list, the bootstrap page tables, the start info.
        for pfn in 0..pages as u64 {
            w(l.p2m + pfn * 8, dom.pfn_to_mfn(pfn).unwrap_or(u64::MAX))?;
        }
        for (a, v) in builder::bootstrap_page_tables(&l, |pfn| dom.pfn_to_mfn(pfn)) {
            w(a, v)?;
        }
        dom.install_bootstrap_tables(l.pt_base >> 12..(l.pt_base >> 12) + l.nr_pt_frames)
            .map_err(|e| KvmError::BadImage(format!("bootstrap page tables: {e}")))?;
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
            fs_base: 0,
            gs_base: 0,
            pte_flushes: 0,
            region: kvm_bindings::kvm_userspace_memory_region {
                slot: 0,
                guest_phys_addr: 0,
                memory_size: cfg.mem_size as u64,
                userspace_addr: host.as_ptr() as u64,
                flags: 0,
            },
            cpuid: Vec::new(),
            emulated_cpuids: 0,
            bounced: BTreeMap::new(),
            irets: 0,
            lazy_ldt_maps: 0,
            upcall_mask: 1,
            shutdown: None,
            final_segments: None,
            start_info: l.start_info,
            stack_top: l.stack_top,
        })
    }

    /// The guest shut down: record the vCPU's segments.
    pub(crate) fn at_exit(&mut self, vcpu: &mut Vcpu<'_>) {
        if let Ok(s) = vcpu.sregs() {
            self.final_segments = Some(FinalSegments {
                cs: s.cs.selector,
                cpl: s.cs.dpl,
                ss: s.ss.selector,
                ds: s.ds.selector,
                es: s.es.selector,
                ds_dpl: s.ds.dpl,
            });
        }
    }

    /// The CPUID leaves the vCPU was given (what emulated `cpuid` answers).
    pub(crate) fn set_cpuid(&mut self, entries: &[kvm_bindings::kvm_cpuid_entry2]) {
        self.cpuid = entries.to_vec();
    }

    fn emulate_cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4] {
        let sig = |i: usize| {
            u32::from_le_bytes([
                CPUID_SIGNATURE[i],
                CPUID_SIGNATURE[i + 1],
                CPUID_SIGNATURE[i + 2],
                CPUID_SIGNATURE[i + 3],
            ])
        };
        match leaf {
            0x4000_0000 => [0x4000_0002, sig(0), sig(4), sig(8)],
            // Version; hypercall pages (1) and the MSR that would write one.
            0x4000_0001 => [XEN_VERSION, 0, 0, 0],
            0x4000_0002 => [1, 0x4000_0000, 0, 0],
            _ => self
                .cpuid
                .iter()
                .find(|e| {
                    e.function == leaf
                        && (e.flags & kvm_bindings::KVM_CPUID_FLAG_SIGNIFCANT_INDEX == 0
                            || e.index == subleaf)
                })
                .map_or([0; 4], |e| [e.eax, e.ebx, e.ecx, e.edx]),
        }
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
        regs.rsi = self.start_info;
        regs.rdi = 0;
        regs.rsp = self.stack_top;
    }

    /// A stub's port write: a hypercall, `iret`, or an exception entry.
    /// `Ok(Some(reason))`: the domain shut down. `Err`: the guest broke the
    /// stub protocol, or did what makes Xen crash the domain.
    pub(crate) fn port(
        &mut self,
        vm: &VmFd,
        vcpu: &mut Vcpu<'_>,
        data: u32,
        len: usize,
        text: &mut Vec<u8>,
    ) -> Result<Option<u32>, String> {
        let mut regs = vcpu.regs()?;
        if len != 4 || regs.rax != u64::from(data) {
            return Err(format!(
                "hypercall port {:#x} written with {len} bytes {data:#x} while rax = {:#x} (rip {:#x}); only hv-sim's stubs may use it",
                super::ports::HYPERCALL,
                regs.rax,
                regs.rip
            ));
        }
        if let Some(v) = data.checked_sub(EXCEPTION_MARKER).filter(|v| *v < 32) {
            return self.exception(vm, vcpu, regs, v as u8).map(|()| None);
        }
        if data == builder::HYPERVISOR_IRET {
            return self.iret(vcpu, regs).map(|()| None);
        }
        self.hypercalls += 1;
        let args = [regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, 0];
        let r = self.dom.hypercall(0, regs.rax, args);
        regs.rax = r as u64;
        // Syscall-style clobbers of a real PV hypercall.
        regs.rcx = 0;
        regs.r11 = 0;
        vcpu.set_regs(&regs);
        text.extend_from_slice(&self.dom.take_console().text);
        if let Some(reason) = self.dom.shutdown_reason() {
            self.shutdown = Some(reason);
            return Ok(Some(reason));
        }
        self.sync(vm, vcpu).map(|()| None)
    }

    /// An exception stub's port write: the stub pushed rax above the
    /// hardware frame. Emulate a forced-emulation `cpuid`, or bounce.
    fn exception(
        &mut self,
        vm: &VmFd,
        vcpu: &mut Vcpu<'_>,
        mut regs: kvm_regs,
        v: u8,
    ) -> Result<(), String> {
        const PREFIX: [u8; 7] = [0x0f, 0x0b, b'x', b'e', b'n', 0x0f, 0xa2];
        let saved_rax = self.read(regs.rsp)?;
        let mut p = regs.rsp + 8;
        let error_code = if traps::has_error_code(v) {
            p += 8;
            Some(self.read(p - 8)? as u32)
        } else {
            None
        };
        // The kernel runs in ring 3, so the CPU sets a #PF's user bit; Xen
        // hands a fault taken in guest kernel mode on with it clear.
        let error_code = if v == 14 {
            error_code.map(|c| crate::xen::domain::guest_pf_error_code(c, true))
        } else {
            error_code
        };
        let at = Interrupted {
            rip: self.read(p)?,
            cs: self.read(p + 8)? as u16,
            rflags: self.read(p + 16)?,
            rsp: self.read(p + 24)?,
            ss: self.read(p + 32)? as u16,
            rcx: regs.rcx,
            r11: regs.r11,
        };
        let mut insn = [0u8; 7];
        if v == 6 && self.mem.read_slice(&mut insn, GuestAddress(at.rip)).is_ok() && insn == PREFIX
        {
            let r = self.emulate_cpuid(saved_rax as u32, regs.rcx as u32);
            regs.rax = u64::from(r[0]);
            regs.rbx = u64::from(r[1]);
            regs.rcx = u64::from(r[2]);
            regs.rdx = u64::from(r[3]);
            regs.rip = at.rip + PREFIX.len() as u64;
            regs.rsp = at.rsp;
            regs.rflags = at.rflags;
            self.emulated_cpuids += 1;
            vcpu.set_regs(&regs);
            return Ok(());
        }
        if v == 14 {
            let cr2 = vcpu.sregs()?.cr2;
            if (REAL_LDT..REAL_LDT + 16 * 4096).contains(&cr2) {
                // The CPU touched a page of the LDT not mapped yet: map it
                // now as Xen does on this fault (`handle_ldt_mapping_fault`)
                // and retry the instruction; if the guest's page cannot be
                // mapped, the #PF goes to the guest.
                let index = ((cr2 - REAL_LDT) / 8) as u32;
                if self.dom.touch_ldt(0, index).is_ok() {
                    regs.rax = saved_rax;
                    regs.rip = at.rip;
                    regs.rsp = at.rsp;
                    regs.rflags = at.rflags;
                    self.lazy_ldt_maps += 1;
                    vcpu.set_regs(&regs);
                    return self.sync(vm, vcpu);
                }
            }
            // A write to a read-only mapping (present, write; no reserved
            // bit or fetch): Xen emulates a store into an L1 page table in
            // use as a validated entry update (`pv_ro_page_fault`) and
            // resumes after the instruction.
            if error_code.is_some_and(|c| c & 0x1b == 0x3) {
                let mut insn = [0u8; 15];
                let _ = self.mem.read_slice(&mut insn, GuestAddress(at.rip));
                let gpr = [
                    saved_rax, regs.rcx, regs.rdx, regs.rbx, at.rsp, regs.rbp, regs.rsi, regs.rdi,
                    regs.r8, regs.r9, regs.r10, regs.r11, regs.r12, regs.r13, regs.r14, regs.r15,
                ];
                if let Some(next) = self.dom.ptwr_fault(cr2, &insn, at.rip, &gpr) {
                    regs.rax = saved_rax;
                    regs.rip = next;
                    regs.rsp = at.rsp;
                    regs.rflags = at.rflags;
                    vcpu.set_regs(&regs);
                    return self.sync(vm, vcpu);
                }
            }
        }
        let t = self.dom.vcpu(0).trap_table[usize::from(v)];
        if t.address == 0 {
            return Err(format!(
                "exception {v} (error code {error_code:x?}) at rip {:#x} and the guest registered no handler for it: Xen crashes the domain",
                at.rip
            ));
        }
        let bf = traps::bounce_frame(&at, error_code, self.upcall_mask, t.flags & 4 != 0);
        for (i, word) in bf.words.iter().enumerate() {
            self.dom
                .guest_write_u64(bf.rsp + i as u64 * 8, *word)
                .map_err(|f| {
                    format!("bounce frame for exception {v}: {f}; Xen crashes the domain")
                })?;
        }
        self.upcall_mask = bf.upcall_mask;
        regs.rax = saved_rax;
        regs.rsp = bf.rsp;
        regs.rip = t.address;
        regs.rflags = bf.rflags;
        *self.bounced.entry(v).or_default() += 1;
        vcpu.set_regs(&regs);
        Ok(())
    }

    /// The `iret` stub's port write: the `iret_context` is at rsp.
    fn iret(&mut self, vcpu: &mut Vcpu<'_>, mut regs: kvm_regs) -> Result<(), String> {
        let mut ctx = [0u64; 9];
        for (i, w) in ctx.iter_mut().enumerate() {
            let a = regs.rsp.wrapping_add(i as u64 * 8);
            *w = self
                .dom
                .guest_read_u64(a)
                .ok_or_else(|| traps::IretError::Unreadable(a).to_string())?;
        }
        let r = traps::iret(ctx).map_err(|e| format!("{e}; Xen crashes the domain"))?;
        if r.cs != FLAT_KERNEL_CS || r.ss != FLAT_KERNEL_SS {
            return Err(format!(
                "iret to cs {:#x} ss {:#x}: hv-sim returns only to FLAT_KERNEL_CS/SS",
                r.cs, r.ss
            ));
        }
        regs.rax = r.rax;
        regs.rip = r.rip;
        regs.rsp = r.rsp;
        // The real IOPL stays 3: hv-sim's stubs use `out`.
        regs.rflags = r.rflags | traps::RFLAGS_IOPL;
        if let Some((rcx, r11)) = r.rcx_r11 {
            regs.rcx = rcx;
            regs.r11 = r11;
        }
        self.upcall_mask = r.upcall_mask;
        self.irets += 1;
        vcpu.set_regs(&regs);
        Ok(())
    }

    /// Install the initial real tables before the guest runs.
    pub(crate) fn initial_tables(&mut self, vm: &VmFd, vcpu: &mut Vcpu<'_>) -> Result<(), String> {
        self.sync(vm, vcpu)?;
        // Nothing ran yet: KVM had no shadow copies to drop.
        self.pte_flushes = 0;
        Ok(())
    }

    fn read(&self, addr: u64) -> Result<u64, String> {
        self.mem
            .read_obj(GuestAddress(addr))
            .map_err(|e| format!("reading guest memory at {addr:#x}: {e}"))
    }

    fn write(&self, addr: u64, v: u64) -> Result<(), String> {
        self.mem
            .write_obj(v, GuestAddress(addr))
            .map_err(|e| format!("writing hv-sim page {addr:#x}: {e}"))
    }

    /// Make the domain's state real on the vCPU.
    fn sync(&mut self, vm: &VmFd, vcpu: &mut Vcpu<'_>) -> Result<(), String> {
        let vc = self.dom.vcpu(0);
        let mut sregs = vcpu.sregs()?;

        // GDT: every slot of the guest's frames, as Xen validated them.
        let n = (vc.gdt_frames.len() as u32 * 512).min(FIRST_RESERVED_GDT_ENTRY);
        let gdt: Vec<u64> = (0..n).map(|i| accessed(self.dom.gdt_entry(0, i))).collect();
        if gdt != self.last_gdt {
            for i in 0..n.max(self.gdt_written) {
                let d = gdt.get(i as usize).copied().unwrap_or(0);
                if self.last_gdt.get(i as usize) != Some(&d) {
                    self.write(REAL_GDT + u64::from(i) * 8, d)?;
                }
            }
            self.gdt_written = n;
            self.last_gdt = gdt;
        }

        // LDT, mapped lazily as Xen maps it: a page of the real LDT is
        // present only once the domain has mapped (validated) the guest's
        // page, which happens on the CPU's first access to it
        // ([`XenGuest::ldt_fault`]); entries past `ldt_ents` read as 0.
        let (base, ents) = (vc.ldt_base, vc.ldt_ents);
        let mut ldt = Vec::new();
        let mut present = [false; 16];
        if ents > 0 && base != ZERO_BLOCK_PTR {
            for idx in 0..ents {
                let e = self.dom.ldt_entry(0, idx);
                present[(idx / 512) as usize] |= e.is_some();
                ldt.push(accessed(e.unwrap_or(0)));
            }
        }
        let ldt_state = (base, ents, ldt);
        if ldt_state != self.last_ldt {
            let (_, _, ref entries) = ldt_state;
            for (i, d) in entries.iter().enumerate() {
                self.write(REAL_LDT + i as u64 * 8, *d)?;
            }
            let sel_idx = u64::from(LDT_SELECTOR >> 3);
            if entries.is_empty() {
                self.write(REAL_GDT + sel_idx * 8, 0)?;
                self.write(REAL_GDT + sel_idx * 8 + 8, 0)?;
                sregs.ldt = kvm_segment {
                    unusable: 1,
                    ..Default::default()
                };
            } else {
                let limit = entries.len() as u32 * 8 - 1;
                let sd = pvops::SystemDescriptor::ldt(REAL_LDT, entries.len() as u32)
                    .map_err(|e| format!("LDT descriptor: {e}"))?;
                self.write(REAL_GDT + sel_idx * 8, sd.low)?;
                self.write(REAL_GDT + sel_idx * 8 + 8, sd.high)?;
                sregs.ldt = kvm_segment {
                    base: REAL_LDT,
                    limit,
                    selector: LDT_SELECTOR,
                    type_: 2,
                    present: 1,
                    ..Default::default()
                };
            }
            self.last_ldt = ldt_state;
        }
        let mut ldt_ptes_changed = false;
        for (j, p) in present.iter().enumerate() {
            let page = REAL_LDT + j as u64 * 4096;
            let at = layout::RING3_PT_BASE + (page >> 12) * 8;
            let want = if *p { page | PTE_P | PTE_RW } else { 0 };
            ldt_ptes_changed |= self.set_real_pte(at, want)?;
        }

        // set_segment_base.
        if vc.fs_base != self.fs_base {
            sregs.fs.base = vc.fs_base;
            self.fs_base = vc.fs_base;
        }
        if vc.gs_base_kernel != self.gs_base {
            sregs.gs.base = vc.gs_base_kernel;
            self.gs_base = vc.gs_base_kernel;
        }
        sregs.gdt.base = REAL_GDT;
        sregs.gdt.limit = (REAL_GDT_ENTRIES * 8 - 1) as u16;
        vcpu.set_sregs(&sregs);

        // The domain's L1 entries, mirrored into the real page tables (only
        // when some changed since the last look).
        let ptes = self.dom.direct_map_ptes();
        let mut changed = ldt_ptes_changed;
        if ptes != self.last_ptes {
            debug_assert_eq!(ptes.len(), self.pages);
            for (pfn, pte) in ptes.iter().enumerate().skip(RESERVED_PAGES) {
                let want = if pte & PTE_P != 0 {
                    let mfn = (pte & PTE_MFN_MASK) >> 12;
                    match self.dom.mfn_to_pfn(mfn) {
                        Some(target) => (target << 12) | PTE_P | PTE_U | (pte & PTE_RW),
                        None => 0,
                    }
                } else {
                    0
                };
                changed |= self.set_real_pte(layout::RING3_PT_BASE + pfn as u64 * 8, want)?;
            }
            self.last_ptes = ptes;
        }
        if changed {
            self.flush_shadow_mmu(vm)?;
        }
        Ok(())
    }

    /// Write the real page-table entry at `at` if it differs from `want`;
    /// the accessed/dirty bits the CPU sets are not a difference. Returns
    /// whether it wrote.
    fn set_real_pte(&self, at: u64, want: u64) -> Result<bool, String> {
        if self.read(at)? & !PTE_AD == want {
            return Ok(false);
        }
        self.write(at, want)?;
        Ok(true)
    }

    /// hv-sim wrote page-table entries behind KVM's back: KVM's shadow
    /// copies (PVM shadows the guest's tables) are stale. Re-registering the
    /// memory slot drops them; the guest's next accesses rebuild them.
    fn flush_shadow_mmu(&mut self, vm: &VmFd) -> Result<(), String> {
        let mut gone = self.region;
        gone.memory_size = 0;
        // SAFETY: deletes slot 0 and re-adds it with the same host range
        // (the mmap owned by `self.mem`, alive as long as the VM); the vCPU
        // is stopped in this thread while this runs.
        unsafe {
            vm.set_user_memory_region(gone)
                .map_err(|e| format!("KVM_SET_USER_MEMORY_REGION (delete): {e}"))?;
            vm.set_user_memory_region(self.region)
                .map_err(|e| format!("KVM_SET_USER_MEMORY_REGION (re-add): {e}"))?;
        }
        self.pte_flushes += 1;
        Ok(())
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

    fn initial_tables(&mut self, vm: &VmFd, vcpu: &mut Vcpu<'_>) -> Result<(), String> {
        XenGuest::initial_tables(self, vm, vcpu).map_err(|e| format!("xen personality setup: {e}"))
    }

    fn port(
        &mut self,
        vm: &VmFd,
        vcpu: &mut Vcpu<'_>,
        port: u16,
        data: u32,
        len: usize,
        text: &mut Vec<u8>,
    ) -> Option<Result<super::personality::PortAction, String>> {
        use super::personality::PortAction;
        if port != super::ports::HYPERCALL {
            return None;
        }
        Some(match XenGuest::port(self, vm, vcpu, data, len, text) {
            Ok(Some(reason)) => {
                XenGuest::at_exit(self, vcpu);
                Ok(PortAction::Exit(exit_status(
                    &String::from_utf8_lossy(text),
                    reason,
                )))
            }
            Ok(None) => Ok(PortAction::Handled),
            Err(e) => Err(e),
        })
    }

    fn at_exit(&mut self, vcpu: &mut Vcpu<'_>) {
        XenGuest::at_exit(self, vcpu)
    }

    fn finish(self: Box<Self>) -> Option<super::Outcome> {
        Some(super::Outcome::Xen(Box::new(XenGuest::finish(*self))))
    }
}
