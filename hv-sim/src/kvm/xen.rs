//! The Xen-style personality on a real vCPU.
//!
//! [`boot_xen`] boots a kernel that names a hypercall page in its
//! `XEN_ELFNOTE_HYPERCALL_PAGE` ELF note. hv-sim:
//!
//! * answers CPUID 0x4000_0000 with "XenVMMXenVMM" (max leaf 0x4000_0002 at
//!   least), so `pvops::detect()` picks the Xen-style backend;
//! * fills the hypercall page with 32-byte stubs `mov eax, nr; out 0xE8,
//!   eax; ret` (`vmcall` would be #UD here, and KVM never forwards it to
//!   userspace), then int3 padding;
//! * on each write to [`ports::HYPERCALL`] reads rax (= the number, checked
//!   against the port data), rdi, rsi, rdx, r10 and r8, runs the *same*
//!   validating handlers as in-process ([`XenDomain::hypercall`], over the
//!   guest's RAM with guest VA = GPA) and writes the result to rax;
//! * after each hypercall makes the domain's state take effect on the vCPU:
//!   it builds the real GDT (the guest frames' validated entries, then
//!   Xen's reserved entries from 7168 on), LDT (the guest's LDT pages,
//!   mapped and validated through the domain) and IDT (one gate per
//!   trap-table entry) in hv-sim's own memory, installs them with
//!   `KVM_SET_SREGS`, applies `set_segment_base`, and mirrors the domain's
//!   L1 entries (`update_va_mapping`) into the real 4 KiB page tables.
//!
//! # CPUID
//! Where the guest's `cpuid` is not trapped (PVM: ring 3, no CPUID
//! faulting on this CPU) a plain `cpuid` returns the host's leaves. As on
//! Xen, the kernel then uses the forced-emulation prefix `ud2; .ascii
//! "xen"; cpuid` (boot flag [`super::boot_flags::CPUID_NEEDS_XEN_PREFIX`]).
//! Vector 6 of the real IDT always enters hv-sim's [`TRAP_TEXT`] stub
//! (`push rax; mov eax, UD_MARKER; out 0xE8, eax; pop rax; iretq`). On its
//! port write hv-sim looks at the faulting instruction: the prefix is
//! emulated (the leaves set with `KVM_SET_CPUID2`, Xen's 0x4000_0000..2)
//! and skipped; any other #UD is bounced to the handler the guest
//! registered with `set_trap_table` (rip = handler, the exception frame
//! unchanged), as Xen's #UD path does.
//!
//! # Ring
//! The guest kernel runs where a 64-bit PV kernel runs on Xen: **ring 3**,
//! on `FLAT_KERNEL_CS` 0xe033 / `FLAT_KERNEL_SS` 0xe02b from Xen's reserved
//! GDT entries, with RFLAGS.IOPL = 3 (so its `out`s to the report ports and
//! hypercall stubs work) and the U bit on every page of its RAM. Its
//! descriptors are DPL 3 after Xen's fix-ups, so it loads DS/ES/FS/GS from
//! its own GDT and LDT; exceptions go through DPL-`flags & 3` gates whose
//! code selector is the trap table's (RPL raised to 3), so handlers run in
//! ring 3 on the same stack — where Xen would build a bounce frame on the
//! kernel stack instead.
//!
//! # Guest-physical layout (pages below 1 MiB are the hypervisor's)
//! | GPA | contents | guest access |
//! |---|---|---|
//! | 0x1000 / 0x2000 / 0x3000 | PML4, PDPT, PD | none |
//! | 0x7000–0x8000 | boot stack (rsp at entry) | read/write |
//! | 0x9000 | [`StartInfo`] (address in rsi at entry) | read-only |
//! | 0x10000–0x50000 | page tables: 64 × 512 4 KiB entries (≤ 128 MiB RAM) | none |
//! | 0x50000–0x5f000 | the real GDT: 7680 entries (Xen's 7168 + 512 reserved) | none |
//! | 0x60000 | the real IDT | none |
//! | 0x61000–0x71000 | the real LDT | none |
//! | 0x71000 | Xen's TSS (selector 0xe040) | none |
//! | 0x72000 | hv-sim's #UD entry ([`TRAP_TEXT`]) | execute (ring 3) |
//! | 0x80000–0xc0000 | p2m list: one u64 mfn per pfn, `u64::MAX` for hypervisor pages | read-only |
//!
//! Above 1 MiB the pages are the domain's (pfn `i` = mfn `3i + 0x1d0`);
//! the domain's scratch page is pfn 0x100.

use std::collections::BTreeMap;
use std::ptr::NonNull;

use goblin::elf::Elf;
use goblin::elf::program_header::{PF_X, PT_LOAD};
use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};
use kvm_ioctls::{VcpuFd, VmFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::{BootReport, Config, KvmError, layout, parse_elf, ports};
use crate::xen::{Trace, TraceEvent, VcpuState, XenDomain, ZERO_BLOCK_PTR};

/// CPUID 0x4000_0000 signature.
pub const CPUID_SIGNATURE: [u8; 12] = *b"XenVMMXenVMM";
/// `XEN_ELFNOTE_HYPERCALL_PAGE`.
pub const XEN_ELFNOTE_HYPERCALL_PAGE: u32 = 2;
/// Size of one hypercall stub.
pub const STUB_SIZE: usize = 32;

/// Start info address (rsi at entry).
pub const START_INFO: u64 = 0x9000;
/// `StartInfo::magic`: "hvsimxen".
pub const START_INFO_MAGIC: u64 = u64::from_le_bytes(*b"hvsimxen");
/// `StartInfo::flags`: read-only mappings are mirrored into the real page
/// tables (a direct store into a live descriptor page faults).
pub const SIF_RO_MIRRORED: u64 = 1 << 0;
/// First page-table page.
pub const PT_BASE: u64 = layout::RING3_PT_BASE;
/// Most page-table pages (each maps 2 MiB).
pub const MAX_PTS: u64 = 64;
/// The real GDT.
pub const REAL_GDT: u64 = 0x5_0000;
/// The real IDT.
pub const REAL_IDT: u64 = 0x6_0000;
/// The real LDT.
pub const REAL_LDT: u64 = 0x6_1000;
/// Xen's TSS.
pub const REAL_TSS: u64 = 0x7_1000;
/// The p2m list.
pub const P2M: u64 = 0x8_0000;
/// hv-sim's #UD entry page.
pub const TRAP_TEXT: u64 = 0x7_2000;
/// Written to the hypercall port by the #UD entry (no hypercall has it).
pub const UD_MARKER: u32 = 0xffff_ff06;
/// Xen version reported by CPUID 0x4000_0001 (4.19).
pub const XEN_VERSION: u32 = (4 << 16) | 19;
/// Pages reserved for the hypervisor (the first MiB).
pub const RESERVED_PAGES: usize = 0x100;

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

/// The hypercall stub for `nr`: `mov eax, nr; out 0xE8, eax; ret`, then
/// int3 up to 32 bytes.
pub fn hypercall_stub(nr: u32) -> [u8; STUB_SIZE] {
    let mut s = [0xccu8; STUB_SIZE];
    s[0] = 0xb8;
    s[1..5].copy_from_slice(&nr.to_le_bytes());
    s[5] = 0xe7;
    s[6] = ports::HYPERCALL as u8;
    s[7] = 0xc3;
    s
}

/// The address in the kernel's `XEN_ELFNOTE_HYPERCALL_PAGE` note, checked:
/// exactly one such note, an 8-byte descriptor, a page-aligned address
/// inside an executable `PT_LOAD` segment. Notes are read from `PT_NOTE`
/// program headers, or from note sections when there are none.
pub fn hypercall_page_note(image: &[u8]) -> Result<u64, KvmError> {
    let bad = |why: String| {
        KvmError::BadImage(format!(
            "XEN_ELFNOTE_HYPERCALL_PAGE (Xen note type 2): {why}"
        ))
    };
    let elf = Elf::parse(image).map_err(|e| KvmError::BadImage(e.to_string()))?;
    let notes = elf
        .iter_note_headers(image)
        .or_else(|| elf.iter_note_sections(image, None));
    let mut found = Vec::new();
    if let Some(it) = notes {
        for n in it {
            let n = n.map_err(|e| bad(format!("note table is malformed: {e}")))?;
            if n.name == "Xen" && n.n_type == XEN_ELFNOTE_HYPERCALL_PAGE {
                found.push(n.desc.to_vec());
            }
        }
    }
    let desc = match found.as_slice() {
        [] => {
            return Err(bad(
                "the kernel has no such note; a Xen-style guest must name the page hv-sim fills with hypercall stubs".into(),
            ));
        }
        [d] => d,
        _ => return Err(bad(format!("{} such notes; expected one", found.len()))),
    };
    let Ok(bytes) = <[u8; 8]>::try_from(desc.as_slice()) else {
        return Err(bad(format!(
            "descriptor is {} bytes; expected an 8-byte address",
            desc.len()
        )));
    };
    let page = u64::from_le_bytes(bytes);
    if !page.is_multiple_of(4096) {
        return Err(bad(format!("address {page:#x} is not page aligned")));
    }
    let inside = elf.program_headers.iter().any(|ph| {
        ph.p_type == PT_LOAD
            && ph.p_flags & PF_X != 0
            && page >= ph.p_vaddr
            && page + 4096 <= ph.p_vaddr + ph.p_memsz
    });
    if !inside {
        return Err(bad(format!(
            "address {page:#x} is not a page inside an executable PT_LOAD segment"
        )));
    }
    Ok(page)
}

/// What `run_vm` needs to set up the personality.
pub(crate) struct XenSetup {
    hypercall_page: u64,
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
    bounced_uds: u64,
    final_segments: Option<FinalSegments>,
}

/// The vCPU's segment registers when the guest wrote its exit status, as
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

/// hv-sim's start info (rsi at entry); the example kernel's
/// `xen::StartInfo` is the other side. All fields u64, little endian.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StartInfo {
    /// [`START_INFO_MAGIC`].
    pub magic: u64,
    /// The filled hypercall page (the note's address).
    pub hypercall_page: u64,
    /// Address of the p2m list.
    pub p2m: u64,
    /// Entries in the p2m list.
    pub nr_pages: u64,
    /// [`SIF_RO_MIRRORED`].
    pub flags: u64,
}

/// What a Xen-style boot did.
#[derive(Clone, Debug)]
pub struct XenBootReport {
    /// The guest's text, checks and exits.
    pub boot: BootReport,
    /// Hypercalls the guest issued through its hypercall page (multicall
    /// sub-calls not counted).
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
    /// The hypercall page hv-sim filled.
    pub hypercall_page: u64,
    /// `cpuid`s emulated through Xen's forced-emulation prefix.
    pub emulated_cpuids: u64,
    /// Other #UDs bounced to the guest's handler.
    pub bounced_uds: u64,
    /// The vCPU's segments at the guest's exit.
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

/// Boot `image` with the Xen-style personality.
pub fn boot_xen(image: &[u8], cfg: &Config) -> Result<XenBootReport, KvmError> {
    super::available().map_err(KvmError::Unavailable)?;
    let (entry, segs) = parse_elf(image)?;
    let hypercall_page = hypercall_page_note(image)?;
    super::check_ring3_ram("Xen", cfg.mem_size, MAX_PTS)?;
    super::check_segments_fit(&segs, cfg.mem_size)?;
    let (boot, outcome) = super::launch(
        entry,
        &segs,
        cfg,
        super::Setup::Xen(XenSetup { hypercall_page }),
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
        hypercall_page,
        emulated_cpuids: o.emulated_cpuids,
        bounced_uds: o.bounced_uds,
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
    /// What the real GDT/LDT/IDT hold (to skip unchanged work).
    last_gdt: Vec<u64>,
    last_ldt: (u64, u32, Vec<u64>),
    last_idt: Vec<(u64, u64)>,
    fs_base: u64,
    gs_base: u64,
    pte_flushes: u64,
    region: kvm_bindings::kvm_userspace_memory_region,
    cpuid: Vec<kvm_bindings::kvm_cpuid_entry2>,
    emulated_cpuids: u64,
    bounced_uds: u64,
    final_segments: Option<FinalSegments>,
}

impl XenGuest {
    /// Lay out hv-sim's pages, fill the hypercall page, create the domain.
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
            if a == START_INFO || (P2M..P2M + 0x4_0000).contains(&a) {
                a | PTE_P | PTE_U
            } else if (0x7000..0x8000).contains(&a) || a == TRAP_TEXT {
                a | PTE_P | PTE_RW | PTE_U
            } else if (REAL_GDT..REAL_TSS + 0x1000).contains(&a) {
                // Supervisor only: the CPU's implicit accesses.
                a | PTE_P | PTE_RW
            } else {
                0
            }
        })
        .map_err(KvmError::BadImage)?;
        // Hypercall page.
        let mut stubs = vec![0u8; 4096];
        for (nr, s) in stubs.chunks_mut(STUB_SIZE).enumerate() {
            s.copy_from_slice(&hypercall_stub(nr as u32));
        }
        mem.write_slice(&stubs, GuestAddress(setup.hypercall_page))
            .map_err(|e| KvmError::BadImage(format!("filling the hypercall page: {e}")))?;
        // The #UD entry.
        let mut ud = vec![0x50u8, 0xb8];
        ud.extend_from_slice(&UD_MARKER.to_le_bytes());
        ud.extend_from_slice(&[0xe7, ports::HYPERCALL as u8, 0x58, 0x48, 0xcf]);
        mem.write_slice(&ud, GuestAddress(TRAP_TEXT))
            .map_err(|e| KvmError::BadImage(format!("writing the #UD entry: {e}")))?;
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
        // p2m list and start info.
        for pfn in 0..pages as u64 {
            let mfn = dom.pfn_to_mfn(pfn).unwrap_or(u64::MAX);
            w(P2M + pfn * 8, mfn)?;
        }
        let si = StartInfo {
            magic: START_INFO_MAGIC,
            hypercall_page: setup.hypercall_page,
            p2m: P2M,
            nr_pages: pages as u64,
            flags: SIF_RO_MIRRORED,
        };
        for (i, v) in [si.magic, si.hypercall_page, si.p2m, si.nr_pages, si.flags]
            .into_iter()
            .enumerate()
        {
            w(START_INFO + i as u64 * 8, v)?;
        }
        Ok(XenGuest {
            dom,
            mem: mem.clone(),
            pages,
            hypercalls: 0,
            gdt_written: 0,
            last_gdt: Vec::new(),
            last_ldt: (0, 0, Vec::new()),
            last_idt: vec![(0, 0); 256],
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
            bounced_uds: 0,
            final_segments: None,
        })
    }

    /// The guest wrote its exit status: record the vCPU's segments.
    pub(crate) fn at_exit(&mut self, vcpu: &VcpuFd) {
        if let Ok(s) = vcpu.get_sregs() {
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

    /// hv-sim's #UD entry wrote the port: emulate a prefixed `cpuid` or
    /// bounce the #UD to the guest's handler.
    fn invalid_opcode(&mut self, vcpu: &VcpuFd, mut regs: kvm_regs) -> Result<(), String> {
        const PREFIX: [u8; 7] = [0x0f, 0x0b, b'x', b'e', b'n', 0x0f, 0xa2];
        let saved_rax = self.read(regs.rsp)?;
        let rip = self.read(regs.rsp + 8)?;
        let mut insn = [0u8; 7];
        let prefixed = self.mem.read_slice(&mut insn, GuestAddress(rip)).is_ok() && insn == PREFIX;
        if prefixed {
            let r = self.emulate_cpuid(saved_rax as u32, regs.rcx as u32);
            self.write(regs.rsp, u64::from(r[0]))?;
            self.write(regs.rsp + 8, rip + PREFIX.len() as u64)?;
            regs.rbx = u64::from(r[1]);
            regs.rcx = u64::from(r[2]);
            regs.rdx = u64::from(r[3]);
            self.emulated_cpuids += 1;
        } else {
            let handler = self.dom.vcpu(0).trap_table[6];
            if handler.address == 0 {
                return Err(format!(
                    "#UD at rip {rip:#x} (bytes {insn:02x?}) and the guest registered no handler for vector 6"
                ));
            }
            // Undo the entry's push; the exception frame stays as the CPU
            // built it.
            regs.rax = saved_rax;
            regs.rsp += 8;
            regs.rip = handler.address;
            self.bounced_uds += 1;
        }
        vcpu.set_regs(&regs)
            .map_err(|e| format!("KVM_SET_REGS: {e}"))
    }

    /// The entry state of a PV kernel: ring 3 on Xen's flat selectors,
    /// IOPL 3, start info in rsi, hv-sim's GDT/IDT/TR.
    pub(crate) fn entry_state(&mut self, regs: &mut kvm_regs, sregs: &mut kvm_sregs) {
        regs.rsi = START_INFO;
        if super::host_is_pvm() {
            regs.rdi |= super::boot_flags::CPUID_NEEDS_XEN_PREFIX;
        }
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
    }

    /// A hypercall stub's port write: run the hypercall, write rax back,
    /// make its effects real. `Err` = the guest broke the stub protocol.
    pub(crate) fn hypercall(
        &mut self,
        vm: &VmFd,
        vcpu: &VcpuFd,
        data: u32,
        len: usize,
    ) -> Result<(), String> {
        let mut regs = vcpu.get_regs().map_err(|e| format!("KVM_GET_REGS: {e}"))?;
        if len == 4 && data == UD_MARKER && regs.rax == u64::from(data) {
            return self.invalid_opcode(vcpu, regs);
        }
        if len != 4 || regs.rax != u64::from(data) {
            return Err(format!(
                "hypercall port {:#x} written with {len} bytes {data:#x} while rax = {:#x} (rip {:#x}); only the stubs of the hypercall page may use it",
                ports::HYPERCALL,
                regs.rax,
                regs.rip
            ));
        }
        self.hypercalls += 1;
        let args = [regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, 0];
        let r = self.dom.hypercall(0, regs.rax, args);
        regs.rax = r as u64;
        // Syscall-style clobbers of a real PV hypercall.
        regs.rcx = 0;
        regs.r11 = 0;
        vcpu.set_regs(&regs)
            .map_err(|e| format!("KVM_SET_REGS: {e}"))?;
        self.sync(vm, vcpu)
    }

    /// Write the initial real IDT (the #UD entry) before the guest runs.
    pub(crate) fn initial_tables(&mut self, vm: &VmFd, vcpu: &VcpuFd) -> Result<(), String> {
        self.sync(vm, vcpu)
    }

    fn write(&self, addr: u64, v: u64) -> Result<(), String> {
        self.mem
            .write_obj(v, GuestAddress(addr))
            .map_err(|e| format!("writing hv-sim page {addr:#x}: {e}"))
    }

    fn read(&self, addr: u64) -> Result<u64, String> {
        self.mem
            .read_obj(GuestAddress(addr))
            .map_err(|e| format!("reading hv-sim page {addr:#x}: {e}"))
    }

    /// Make the domain's state real on the vCPU.
    fn sync(&mut self, vm: &VmFd, vcpu: &VcpuFd) -> Result<(), String> {
        let vc = self.dom.vcpu(0);
        let mut sregs = vcpu
            .get_sregs()
            .map_err(|e| format!("KVM_GET_SREGS: {e}"))?;

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

        // LDT: map (validate) the guest's LDT pages through the domain, copy.
        let (base, ents) = (vc.ldt_base, vc.ldt_ents);
        let mut ldt = Vec::new();
        if ents > 0 && base != ZERO_BLOCK_PTR {
            for idx in 0..ents {
                if idx % 512 == 0 && self.dom.ldt_entry(0, idx).is_none() {
                    // Xen maps LDT pages on first use; hv-sim maps them as
                    // soon as they are in the LDT (a failure leaves the
                    // page's entries not present).
                    let _ = self.dom.touch_ldt(0, idx);
                }
                ldt.push(accessed(self.dom.ldt_entry(0, idx).unwrap_or(0)));
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

        // IDT: one gate per trap-table entry.
        for (v, t) in vc.trap_table.iter().enumerate() {
            let gate = if v == 6 {
                // hv-sim's #UD entry (ring 3, interrupt gate, DPL 0).
                let a = TRAP_TEXT;
                let low = (a & 0xffff)
                    | (u64::from(FLAT_KERNEL_CS) << 16)
                    | (0x8e << 40)
                    | ((a >> 16) & 0xffff) << 48;
                (low, a >> 32)
            } else if t.address == 0 {
                (0, 0)
            } else {
                let typ: u64 = if t.flags & 4 != 0 { 0xe } else { 0xf };
                let a = t.address;
                let low = (a & 0xffff)
                    | (u64::from(t.cs) << 16)
                    | ((typ | u64::from(t.flags & 3) << 5 | 0x80) << 40)
                    | ((a >> 16) & 0xffff) << 48;
                (low, a >> 32)
            };
            if self.last_idt[v] != gate {
                self.write(REAL_IDT + v as u64 * 16, gate.0)?;
                self.write(REAL_IDT + v as u64 * 16 + 8, gate.1)?;
                self.last_idt[v] = gate;
            }
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
        vcpu.set_sregs(&sregs)
            .map_err(|e| format!("KVM_SET_SREGS: {e}"))?;

        // The domain's L1 entries, mirrored into the real page tables.
        let ptes = self.dom.direct_map_ptes();
        let mut changed = false;
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
            let at = PT_BASE + pfn as u64 * 8;
            // The CPU sets accessed/dirty in the real entries: not a change.
            if self.read(at)? & !PTE_AD != want {
                self.write(at, want)?;
                changed = true;
            }
        }
        debug_assert_eq!(ptes.len(), self.pages);
        if changed {
            self.flush_shadow_mmu(vm)?;
        }
        Ok(())
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
            bounced_uds: self.bounced_uds,
            final_segments: self.final_segments,
        }
    }
}
