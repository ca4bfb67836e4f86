//! The simulated PV domain: memory, frames, mappings, vCPUs, and the
//! hypercall handlers.

use std::sync::{Mutex, MutexGuard};

use super::descriptor_policy::{Abi, check_descriptor};
use super::mem::{FrameInfo, GuestRam, PAGE_SIZE, PageType};
use super::trace::{Change, ChangeIds, EntryVia, Trace, TraceEvent, decode_args, errno_name};
use super::*;

// Xen's page-table types, mmu_update and the page-table MMUEXT commands.
#[path = "pagetables.rs"]
mod pagetables;
use pagetables::PgOwner;
// Xen's copy of validated frames, and the audit for direct stores.
#[path = "shadow.rs"]
mod shadow;
pub use pagetables::guest_pf_error_code;
use shadow::Shadows;

/// First machine frame number of the domain (mfn = pfn * 3 + MFN_OFFSET).
pub const MFN_OFFSET: u64 = 0x1d0;
/// Machine frames above the domain's last one that are valid but owned by
/// someone else (Xen / other domains).
const FOREIGN_TAIL: u64 = 0x40;
/// The domain's own numeric id (naming it instead of DOMID_SELF gives -ESRCH).
pub const OWN_DOMID: u16 = 1;
/// pv32 guest virtual address of pfn 0 (Linux's PAGE_OFFSET for i386).
pub const PV32_VA_BASE: u64 = 0xC000_0000;

const PTE_P: u64 = 1;
const PTE_RW: u64 = 2;
const PTE_MFN_MASK: u64 = 0x000F_FFFF_FFFF_F000;
/// PTE bits a PV domU (no cache-flush permission) may not set in a present
/// L1 entry (`mm.c` `l1_disallow_mask` / `L1_DISALLOW_MASK`): the cache
/// attributes PWT, PCD and PAT, and, in debug builds of Xen only, bit 62
/// (`_PAGE_GNTTAB` is 0 in release builds: `asm/page.h`). The software
/// bits 9-11 and 52-61, G, A, D and NX are allowed (an NX-capable host is
/// assumed). A domain with I/O capabilities (the hardware domain) may set
/// the cache attributes.
const PAGE_CACHE_ATTRS: u64 = 0x98;
/// Bit 62: `_PAGE_GNTTAB` of a debug build.
const PTE_GNTTAB_DEBUG: u64 = 1 << 62;
/// `_PAGE_USER`.
const PTE_USER: u64 = 4;
/// `_PAGE_GLOBAL`.
const PTE_GLOBAL: u64 = 0x100;
/// `_PAGE_GUEST_KERNEL` (flag bit 12 = PTE bit 52, pv64 only).
const PTE_GUEST_KERNEL: u64 = 1 << 52;
/// The frame number `get_page_from_l1e` treats as INVALID_MFN
/// (`PADDR_MASK >> PAGE_SHIFT`, 52-bit physical addresses).
const INVALID_MFN: u64 = (1 << 40) - 1;

/// One virtual IDT entry (`trap_info`, native layout).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrapInfo {
    /// Exception vector.
    pub vector: u8,
    /// Bits 0-1: DPL; bit 2: mask events on entry.
    pub flags: u8,
    /// Code selector (RPL raised to krpl).
    pub cs: u16,
    /// Handler address (0 = no handler).
    pub address: u64,
}

/// A fault Xen would deliver to the guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestFault {
    /// Vector: 13 (#GP) or 14 (#PF).
    pub vector: u8,
    /// Error code.
    pub error_code: u32,
    /// CR2 for #PF.
    pub cr2: Option<u64>,
    /// Why, in plain words.
    pub reason: String,
}

impl core::fmt::Display for GuestFault {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let v = if self.vector == 14 { "#PF" } else { "#GP" };
        write!(f, "{v}({:#x})", self.error_code)?;
        if let Some(c) = self.cr2 {
            write!(f, " cr2={c:#x}")?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// Per-vCPU PV state (`struct pv_vcpu` subset).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VcpuState {
    /// Machine frames of the installed GDT (ceil(gdt_ents / 512) of them).
    pub gdt_frames: Vec<u64>,
    /// GDT entry count given to set_gdt.
    pub gdt_ents: u32,
    /// LDT linear base (ZERO_BLOCK_PTR when `ldt_ents` is 0 after SET_LDT).
    pub ldt_base: u64,
    /// LDT entry count.
    pub ldt_ents: u32,
    /// Machine frames mapped lazily into Xen's 16 LDT slots.
    pub ldt_mapped: [Option<u64>; 16],
    /// Virtual IDT (256 entries).
    pub trap_table: Vec<TrapInfo>,
    /// stack_switch: kernel SS.
    pub kernel_ss: u64,
    /// stack_switch: kernel SP.
    pub kernel_sp: u64,
    /// FS base.
    pub fs_base: u64,
    /// Kernel (active) GS base.
    pub gs_base_kernel: u64,
    /// User (inactive) GS base.
    pub gs_base_user: u64,
    /// User %gs selector loaded by SEGBASE_GS_USER_SEL.
    pub gs_user_sel: u16,
    /// Inside a multicall (MCSF_in_multicall).
    pub in_multicall: bool,
    /// Current page-table root (NEW_BASEPTR), if any.
    pub cr3: Option<u64>,
    /// Guest VA of this vCPU's scratch page.
    pub scratch_va: u64,
}

impl VcpuState {
    fn new(scratch_va: u64) -> VcpuState {
        VcpuState {
            gdt_frames: Vec::new(),
            gdt_ents: 0,
            ldt_base: 0,
            ldt_ents: 0,
            ldt_mapped: [None; 16],
            trap_table: vec![TrapInfo::default(); 256],
            kernel_ss: 0,
            kernel_sp: 0,
            fs_base: 0,
            gs_base_kernel: 0,
            gs_base_user: 0,
            gs_user_sel: 0,
            in_multicall: false,
            cr3: None,
            scratch_va,
        }
    }
}

/// A failed hypercall: errno (positive) and the rule, in words.
pub(crate) struct Fail {
    errno: i64,
    reason: String,
}

pub(crate) type Hc = Result<i64, Fail>;

pub(crate) fn fail(errno: i64, reason: impl Into<String>) -> Fail {
    Fail {
        errno,
        reason: reason.into(),
    }
}

/// 64-bit `__addr_ok`: below 2^47 or at/above the end of Xen's range.
pub fn addr_ok64(a: u64) -> bool {
    !((1 << 47)..0xFFFF_8800_0000_0000).contains(&a)
}

/// Canonical 48-bit address (bits 63..47 equal).
pub fn is_canonical(a: u64) -> bool {
    let top = (a as i64) >> 47;
    top == 0 || top == -1
}

/// Name of hypercall `nr` (`"?"` when Xen has none).
pub fn hypercall_name(nr: u64) -> &'static str {
    match nr {
        0 => "set_trap_table",
        1 => "mmu_update",
        2 => "set_gdt",
        3 => "stack_switch",
        4 => "set_callbacks",
        5 => "fpu_taskswitch",
        6 => "sched_op_compat",
        7 => "platform_op",
        8 => "set_debugreg",
        9 => "get_debugreg",
        10 => "update_descriptor",
        12 => "memory_op",
        13 => "multicall",
        14 => "update_va_mapping",
        15 => "set_timer_op",
        16 => "event_channel_op_compat",
        17 => "xen_version",
        18 => "console_io",
        19 => "physdev_op_compat",
        20 => "grant_table_op",
        21 => "vm_assist",
        22 => "update_va_mapping_otherdomain",
        23 => "iret",
        24 => "vcpu_op",
        25 => "set_segment_base",
        26 => "mmuext_op",
        27 => "xsm_op",
        28 => "nmi_op",
        29 => "sched_op",
        30 => "callback_op",
        32 => "event_channel_op",
        33 => "physdev_op",
        34 => "hvm_op",
        35 => "sysctl",
        36 => "domctl",
        37 => "kexec_op",
        39 => "argo_op",
        40 => "xenpmu_op",
        41 => "dm_op",
        42 => "hypfs_op",
        _ => "?",
    }
}

pub(crate) struct Inner {
    pub(crate) abi: Abi,
    pub(crate) ram: GuestRam,
    pub(crate) va_base: u64,
    /// Pages `0..reserved` of RAM belong to the hypervisor (hv-sim's KVM
    /// runner: page tables, real descriptor tables, start info), not to
    /// the domain: no machine frame of the domain names them.
    reserved: usize,
    frames: Vec<FrameInfo>,
    /// Guest L1 entries, one per VA page of the direct map.
    ptes: Vec<u64>,
    vcpus: Vec<VcpuState>,
    /// Contents of every typed frame as Xen validated/wrote them.
    shadows: Shadows,
    pub(crate) trace: Trace,
    seq: u64,
    /// The trace event whose changes [`Inner::note`] logs now (`None`:
    /// changes made outside any event are not kept).
    owner: Option<u64>,
    strict: bool,
    strict_failures: Vec<String>,
    next_free: usize,
    /// Modelled as a debug build of Xen (`debug=y`): bit 62 of an L1 entry
    /// is `_PAGE_GNTTAB` and refused. Debian's 4.17 is a release build.
    pub(crate) debug_build: bool,
    /// Which Xen's behaviour where 4.17 and 4.23-unstable differ
    /// (XEN-SEMANTICS §V.1).
    pub(crate) version: XenVersion,
    /// `console_io` output, bounded (see [`super::misc`]).
    pub(crate) console: super::misc::Console,
    /// The reason given to `SCHEDOP_shutdown`, once the domain shut down.
    pub(crate) shutdown: Option<u32>,
    /// The hardware domain (dom0): `console_io` is allowed.
    pub(crate) privileged: bool,
    /// Pins, linear counts, live L1s, user roots (`pagetables.rs`).
    pt: pagetables::PtState,
}

/// Which Xen's behaviour the domain models where versions differ on its
/// surface (XEN-SEMANTICS §V.1; each difference cites both sources).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum XenVersion {
    /// Xen 4.17.7 (`RELEASE-4.17.7`), what CI runs: `multicall`'s count is
    /// 32 bits wide; an entry's result is one 8-byte store (all or
    /// nothing); hypercall 31 (`xenoprof_op`) exists.
    #[default]
    V4_17,
    /// 4.23-unstable (master `c447b73`): `multicall`'s count is 64 bits;
    /// a misaligned result is copied byte by byte (the bytes before a
    /// fault are written); no hypercall 31.
    Unstable,
}

/// A simulated Xen PV domain. All methods take `&self`; the state is behind
/// a mutex.
pub struct XenDomain {
    pub(crate) inner: Mutex<Inner>,
}

impl XenDomain {
    /// A domain with `pages` pages of RAM and `vcpus` vCPUs (each gets one
    /// scratch page). pv64 guest VAs are host addresses of the RAM
    /// allocation; pv32 guest VAs start at [`PV32_VA_BASE`].
    ///
    /// # Panics
    /// If `vcpus` is 0, or RAM is too small for the scratch pages, or (pv32)
    /// RAM would reach `0xF5800000`.
    pub fn new(abi: Abi, pages: usize, vcpus: usize) -> XenDomain {
        assert!(vcpus > 0, "a domain needs at least one vCPU");
        assert!(pages > vcpus, "RAM too small for {vcpus} scratch pages");
        let ram = GuestRam::new(pages);
        let va_base = match abi {
            Abi::Pv64 => ram.host_addr(0) as u64,
            Abi::Pv32 => {
                assert!(
                    PV32_VA_BASE + (pages * PAGE_SIZE) as u64 <= 0xF580_0000,
                    "pv32 RAM must stay below the hypervisor hole"
                );
                PV32_VA_BASE
            }
        };
        let ptes = (0..pages)
            .map(|p| (p as u64 * 3 + MFN_OFFSET) << 12 | PTE_P | PTE_RW)
            .collect();
        let frames = vec![
            FrameInfo {
                typ: PageType::Writable,
                type_count: 1,
                validated: false,
                refs: 1,
            };
            pages
        ];
        let vc = (0..vcpus)
            .map(|i| VcpuState::new(va_base + ((i + 1) * PAGE_SIZE) as u64))
            .collect();
        XenDomain {
            inner: Mutex::new(Inner {
                abi,
                ram,
                va_base,
                reserved: 0,
                frames,
                ptes,
                vcpus: vc,
                shadows: Shadows::new(pages),
                trace: Trace::default(),
                seq: 0,
                owner: None,
                strict: false,
                strict_failures: Vec::new(),
                next_free: vcpus + 1,
                debug_build: false,
                version: XenVersion::default(),
                console: Default::default(),
                shutdown: None,
                privileged: false,
                pt: Default::default(),
            }),
        }
    }

    /// A pv64 domain over RAM the caller owns (a KVM guest's memory), with
    /// guest virtual address = guest-physical address (direct map at VA 0,
    /// pfn `i` at host address `ram + i * 4096`).
    ///
    /// Pages `0..reserved` are the hypervisor's: they are not the domain's
    /// frames (no mfn maps to them, [`XenDomain::pfn_to_mfn`] answers
    /// `None`), the guest's L1 entries for them are not present, so
    /// hypercalls cannot read, write or map them. The vCPUs' scratch pages
    /// follow them and [`XenDomain::alloc_pages`] starts after those.
    ///
    /// # Safety
    /// `ram` must be page aligned and valid for reads and writes of
    /// `pages * 4096` bytes for the domain's whole life. The guest (a vCPU)
    /// may write it, but not while a method of the domain runs.
    ///
    /// # Panics
    /// If `vcpus` is 0 or RAM cannot hold the reserved and scratch pages.
    pub unsafe fn pv64_external(
        ram: std::ptr::NonNull<u8>,
        pages: usize,
        vcpus: usize,
        reserved: usize,
    ) -> XenDomain {
        assert!(vcpus > 0, "a domain needs at least one vCPU");
        assert!(
            pages > reserved + vcpus,
            "RAM too small for {reserved} reserved and {vcpus} scratch pages"
        );
        // SAFETY: forwarded from this function's contract.
        let ram = unsafe { GuestRam::external(ram, pages) };
        let ptes = (0..pages)
            .map(|p| {
                if p < reserved {
                    0
                } else {
                    (p as u64 * 3 + MFN_OFFSET) << 12 | PTE_P | PTE_RW
                }
            })
            .collect();
        let frames = (0..pages)
            .map(|p| FrameInfo {
                typ: if p < reserved {
                    PageType::None
                } else {
                    PageType::Writable
                },
                type_count: u32::from(p >= reserved),
                validated: false,
                refs: u32::from(p >= reserved),
            })
            .collect();
        let vc = (0..vcpus)
            .map(|i| VcpuState::new(((reserved + i) * PAGE_SIZE) as u64))
            .collect();
        XenDomain {
            inner: Mutex::new(Inner {
                abi: Abi::Pv64,
                ram,
                va_base: 0,
                reserved,
                frames,
                ptes,
                vcpus: vc,
                shadows: Shadows::new(pages),
                trace: Trace::default(),
                seq: 0,
                owner: None,
                strict: false,
                strict_failures: Vec::new(),
                next_free: reserved + vcpus,
                debug_build: false,
                version: XenVersion::default(),
                console: Default::default(),
                shutdown: None,
                privileged: false,
                pt: Default::default(),
            }),
        }
    }

    /// Every guest L1 entry of the direct map, in page order (entry `i`
    /// maps VA `va_base + i * 4096`).
    pub fn direct_map_ptes(&self) -> Vec<u64> {
        self.lock().ptes.clone()
    }

    /// Model Xen 4.17.7 (the default: what CI runs) or 4.23-unstable where
    /// they differ on this surface (XEN-SEMANTICS §V.1).
    pub fn set_version(&self, version: XenVersion) {
        self.lock().version = version;
    }

    /// The Xen version modelled.
    pub fn version(&self) -> XenVersion {
        self.lock().version
    }

    /// Model a debug build of Xen (`debug=y`, bit 62 of an L1 entry refused)
    /// or a release build (the default, as Debian's 4.17).
    pub fn set_debug_build(&self, debug: bool) {
        self.lock().debug_build = debug;
    }

    /// Make the domain the hardware domain (dom0, id 0, with I/O
    /// capabilities) or a domU (id [`OWN_DOMID`], the default). dom0 may
    /// use `console_io` and set cache attributes in its L1 entries; a domU
    /// gets -EPERM and -EINVAL.
    pub fn set_privileged(&self, privileged: bool) {
        self.lock().privileged = privileged;
    }

    /// What Xen's domain builder does to the bootstrap page tables it
    /// wrote into the domain's pages `pfns` (the first is the L4;
    /// `mark_pv_pt_pages_rdonly`): map them read-only, type each by its
    /// level (found by walking from the L4), validated and with one
    /// reference from its parent's entry; the L4 pinned and made vCPU 0's
    /// root (`guest_table`). Their L1s become the live ones: an entry of
    /// theirs is the direct-map entry of the address it maps.
    ///
    /// # Errors
    /// A pfn outside the domain's own RAM, a frame already in use (the
    /// domain's invariants would break), a table entry naming a frame
    /// outside `pfns`, or a frame the walk does not reach.
    pub fn install_bootstrap_tables(&self, pfns: std::ops::Range<u64>) -> Result<(), String> {
        let mut g = self.lock();
        g.install_bootstrap(pfns)?;
        g.invariants()
    }

    /// Take the console text written so far (and the count of bytes
    /// dropped past [`super::misc::CONSOLE_CAP`]).
    pub fn take_console(&self) -> super::misc::Console {
        std::mem::take(&mut self.lock().console)
    }

    /// The `SCHEDOP_shutdown` reason, once the domain has shut down.
    pub fn shutdown_reason(&self) -> Option<u32> {
        self.lock().shutdown
    }

    /// A pv64 domain.
    pub fn pv64(pages: usize, vcpus: usize) -> XenDomain {
        XenDomain::new(Abi::Pv64, pages, vcpus)
    }

    /// A pv32 domain.
    pub fn pv32(pages: usize, vcpus: usize) -> XenDomain {
        XenDomain::new(Abi::Pv32, pages, vcpus)
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        // A strict-mode panic happens after the guard is dropped, so the
        // mutex is only poisoned by bugs; recover the state anyway.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The guest ABI.
    pub fn abi(&self) -> Abi {
        self.lock().abi
    }

    /// Strict mode: a rejected hypercall, a failed lazy LDT mapping or a
    /// violation panics with the trace and the rule.
    pub fn set_strict(&self, strict: bool) {
        self.lock().strict = strict;
    }

    /// Number of vCPUs.
    pub fn vcpu_count(&self) -> usize {
        self.lock().vcpus.len()
    }

    /// Number of RAM pages.
    pub fn pages(&self) -> usize {
        self.lock().ram.pages()
    }

    /// Guest VA of pfn 0 (the direct map's base).
    pub fn va_base(&self) -> u64 {
        self.lock().va_base
    }

    /// Machine frame of pseudo-physical frame `pfn` (the p2m).
    pub fn pfn_to_mfn(&self, pfn: u64) -> Option<u64> {
        let g = self.lock();
        (pfn < g.ram.pages() as u64 && pfn >= g.reserved as u64).then(|| pfn * 3 + MFN_OFFSET)
    }

    /// Pseudo-physical frame of machine frame `mfn` (the m2p), if the
    /// domain owns it.
    pub fn mfn_to_pfn(&self, mfn: u64) -> Option<u64> {
        self.lock().m2p(mfn).map(|p| p as u64)
    }

    /// The kernel's `virt_to_mfn`: direct-map arithmetic plus the p2m (does
    /// not look at the page tables).
    pub fn virt_to_mfn(&self, va: u64) -> Option<u64> {
        let g = self.lock();
        let off = va.checked_sub(g.va_base)?;
        let pfn = off / PAGE_SIZE as u64;
        (pfn < g.ram.pages() as u64 && pfn >= g.reserved as u64).then(|| pfn * 3 + MFN_OFFSET)
    }

    /// Reserve `n` zeroed, contiguous pages of guest RAM (bump allocator);
    /// returns the guest VA of the first. They stay mapped writable.
    ///
    /// # Panics
    /// When RAM is exhausted (a test-setup error).
    pub fn alloc_pages(&self, n: usize) -> u64 {
        let mut g = self.lock();
        assert!(
            g.next_free + n <= g.ram.pages(),
            "hv-sim: guest RAM exhausted ({} pages)",
            g.ram.pages()
        );
        let pfn = g.next_free;
        g.next_free += n;
        g.va_base + (pfn * PAGE_SIZE) as u64
    }

    /// The guest L1 entry for `va` (None if `va` is outside the direct map).
    pub fn pte(&self, va: u64) -> Option<u64> {
        let g = self.lock();
        g.va_page(va).map(|i| g.ptes[i])
    }

    /// Type-system state of frame `mfn` (None if the domain does not own it).
    pub fn frame(&self, mfn: u64) -> Option<FrameInfo> {
        let g = self.lock();
        g.m2p(mfn).map(|p| g.frames[p])
    }

    /// A snapshot of vCPU `v`'s state.
    ///
    /// # Panics
    /// If `v` is not a vCPU.
    pub fn vcpu(&self, v: usize) -> VcpuState {
        self.lock().vcpus[v].clone()
    }

    /// The descriptor the hardware would see at GDT index `idx` of vCPU `v`
    /// (0 for slots not backed by a guest frame, including Xen's entries).
    pub fn gdt_entry(&self, v: usize, idx: u32) -> u64 {
        let mut g = self.lock();
        let d = g.gdt_entry(v, idx);
        g.audit_if_suspect();
        d
    }

    /// The descriptor at LDT index `idx` of vCPU `v` if its page is mapped
    /// (see [`XenDomain::touch_ldt`]).
    pub fn ldt_entry(&self, v: usize, idx: u32) -> Option<u64> {
        let mut g = self.lock();
        let d = g.ldt_entry_mapped(v, idx);
        g.audit_if_suspect();
        d
    }

    /// A guest store of 8 bytes at `va` through its page tables: needs a
    /// present, writable mapping (else the #PF the CPU would raise). The
    /// bytes land in the mapped frame.
    pub fn guest_write_u64(&self, va: u64, value: u64) -> Result<(), GuestFault> {
        let g = self.lock();
        g.store_bytes(va, &value.to_le_bytes(), true)
            .map_err(|()| GuestFault {
                vector: 14,
                error_code: 0x3,
                cr2: Some(va),
                reason: format!("no writable mapping for va {va:#x}"),
            })
    }

    /// A guest load of 8 bytes at `va` through its page tables.
    pub fn guest_read_u64(&self, va: u64) -> Option<u64> {
        let g = self.lock();
        let mut b = [0u8; 8];
        g.load_bytes(va, &mut b).ok()?;
        Some(u64::from_le_bytes(b))
    }

    /// Write 8 bytes at `va` straight into the host memory of the direct
    /// map, bypassing the guest's page tables (what a buggy in-process
    /// kernel does when it writes a table it made read-only). Returns false
    /// if `va` is outside RAM or unaligned.
    pub fn host_write_u64(&self, va: u64, value: u64) -> bool {
        let g = self.lock();
        match g.va_page(va) {
            Some(p) if va.is_multiple_of(8) => {
                g.ram.write_u64(p, (va as usize) & (PAGE_SIZE - 1), value);
                true
            }
            _ => false,
        }
    }

    /// Read 8 bytes from the host memory of the direct map at `va`.
    pub fn host_read_u64(&self, va: u64) -> Option<u64> {
        let g = self.lock();
        match g.va_page(va) {
            Some(p) if va.is_multiple_of(8) => {
                Some(g.ram.read_u64(p, (va as usize) & (PAGE_SIZE - 1)))
            }
            _ => None,
        }
    }

    /// A copy of the trace.
    pub fn trace(&self) -> Trace {
        let mut g = self.lock();
        g.audit();
        g.trace.clone()
    }

    /// Keep the last `limit` events and the last `limit` changes of the
    /// trace (the default is [`TRACE_CAP`](super::trace::TRACE_CAP)), or
    /// everything (`None`: memory then grows with the domain's history).
    /// The trace starts afresh.
    pub fn set_trace_limit(&self, limit: Option<usize>) {
        self.lock().trace = Trace::with_limit(limit);
    }

    /// Forget the trace.
    pub fn clear_trace(&self) {
        self.lock().trace.clear();
    }

    /// The violations recorded so far.
    pub fn violations(&self) -> Vec<String> {
        let mut g = self.lock();
        g.audit();
        let mut v: Vec<String> = g
            .trace
            .events
            .iter()
            .filter_map(|e| match e {
                TraceEvent::Violation { message } => Some(message.clone()),
                _ => None,
            })
            .collect();
        if g.trace.dropped_violations > 0 {
            v.insert(
                0,
                format!(
                    "{} earlier violations dropped from the bounded trace",
                    g.trace.dropped_violations
                ),
            );
        }
        v
    }

    /// Issue hypercall `nr` on vCPU `vcpu`. pv64: 64-bit number and
    /// arguments (rdi, rsi, rdx, r10, r8, r9). pv32: 32-bit values (ebx, ecx,
    /// edx, esi, edi); upper bits are ignored. Returns 0/positive or -errno.
    ///
    /// # Panics
    /// If `vcpu` is not a vCPU of this domain; in strict mode, on any
    /// rejection or violation (by design).
    pub fn hypercall(&self, vcpu: usize, nr: u64, args: [u64; 6]) -> i64 {
        let mut g = self.lock();
        assert!(vcpu < g.vcpus.len(), "hv-sim: no vCPU {vcpu}");
        g.strict_failures.clear();
        g.enter();
        let (nr, args) = match g.abi {
            Abi::Pv64 => (nr, args),
            Abi::Pv32 => (nr & 0xFFFF_FFFF, args.map(|a| a & 0xFFFF_FFFF)),
        };
        let r = g.dispatch(vcpu, nr, args, 0);
        g.audit_if_suspect();
        g.finish_strict().map_or(r, |msg| {
            drop(g);
            panic!("{msg}")
        })
    }

    /// The guest touched LDT entry `index` on vCPU `v` from kernel mode (a
    /// fault in Xen's LDT area): validate and map its page lazily as Xen
    /// does. Returns the descriptor, or the fault Xen would inject.
    pub fn touch_ldt(&self, v: usize, index: u32) -> Result<u64, GuestFault> {
        self.touch_ldt_from(v, index, false)
    }

    /// [`XenDomain::touch_ldt`] with the guest's mode at the time of the
    /// access (`user_mode` sets the U bit of an injected #PF).
    pub fn touch_ldt_from(&self, v: usize, index: u32, user_mode: bool) -> Result<u64, GuestFault> {
        let mut g = self.lock();
        assert!(v < g.vcpus.len(), "hv-sim: no vCPU {v}");
        g.strict_failures.clear();
        g.enter();
        let from = g.trace.next_change();
        let id = g.trace.push(TraceEvent::LdtFault {
            vcpu: v,
            index,
            fault: None,
            changes: ChangeIds::default(),
        });
        g.owner = Some(id);
        let r = g.map_ldt(v, index, user_mode);
        g.owner = None;
        let to = g.trace.next_change();
        if let Some(TraceEvent::LdtFault { fault, changes, .. }) = g.trace.get_mut(id) {
            *fault = r.as_ref().err().map(|f| f.to_string());
            *changes = ChangeIds {
                owner: id,
                ids: from..to,
            };
        }
        g.audit_if_suspect();
        if let Err(f) = &r {
            let m = format!("LDT entry {index} on vcpu{v}: Xen would inject {f}");
            g.strict_failures.push(m);
        }
        if let Some(msg) = g.finish_strict() {
            drop(g);
            panic!("{msg}");
        }
        r
    }

    /// Check the model's invariants: every present code/data descriptor in a
    /// live GDT or mapped LDT page has DPL >= krpl; no seg_desc frame in use
    /// has a writable mapping; type counts match the mappings. Err = what
    /// is wrong.
    ///
    /// Like every entry point, it first looks for direct guest writes to
    /// descriptor frames (recording and undoing them as violations).
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut g = self.lock();
        g.audit();
        g.invariants()
    }
}

impl Inner {
    /// `l1_disallow_mask(d)`: the hardware domain (I/O capabilities) may set
    /// cache attributes; bit 62 only in a debug build.
    fn l1_disallow_mask(&self) -> u64 {
        let cache = if self.privileged { 0 } else { PAGE_CACHE_ATTRS };
        let gnttab = if self.debug_build {
            PTE_GNTTAB_DEBUG
        } else {
            0
        };
        cache | gnttab
    }

    /// The domain's numeric id: 0 for the hardware domain, else
    /// [`OWN_DOMID`].
    pub(crate) fn own_domid(&self) -> u16 {
        if self.privileged { 0 } else { OWN_DOMID }
    }

    fn pages(&self) -> usize {
        self.ram.pages()
    }

    pub(crate) fn m2p(&self, mfn: u64) -> Option<usize> {
        let m = mfn.checked_sub(MFN_OFFSET)?;
        (m % 3 == 0 && m / 3 < self.pages() as u64 && m / 3 >= self.reserved as u64)
            .then_some((m / 3) as usize)
    }

    fn mfn(&self, pfn: usize) -> u64 {
        pfn as u64 * 3 + MFN_OFFSET
    }

    fn mfn_valid(&self, mfn: u64) -> bool {
        mfn < self.mfn(self.pages() - 1) + FOREIGN_TAIL
    }

    fn addr_ok(&self, a: u64) -> bool {
        match self.abi {
            Abi::Pv64 => addr_ok64(a),
            Abi::Pv32 => true,
        }
    }

    pub(crate) fn va_page(&self, va: u64) -> Option<usize> {
        let off = va.checked_sub(self.va_base)?;
        let p = off / PAGE_SIZE as u64;
        (p < self.pages() as u64).then_some(p as usize)
    }

    /// Guest VA → (pfn, offset) through the guest mappings.
    fn translate(&self, va: u64, write: bool) -> Option<(usize, usize)> {
        if !self.addr_ok(va) {
            return None;
        }
        if self.abi == Abi::Pv32 && va > 0xFFFF_FFFF {
            return None;
        }
        let pte = self.ptes[self.va_page(va)?];
        if pte & PTE_P == 0 || (write && pte & PTE_RW == 0) {
            return None;
        }
        let pfn = self.m2p((pte & PTE_MFN_MASK) >> 12)?;
        Some((pfn, (va as usize) & (PAGE_SIZE - 1)))
    }

    /// The guest-virtual range `va..va + len` as (pfn, offset, length)
    /// pieces, one per page, through the guest mappings; `Err(done)` with
    /// the bytes before the first unmapped (or, `write`, read-only) one.
    fn pieces(
        &self,
        va: u64,
        len: usize,
        write: bool,
        mut each: impl FnMut(usize, usize, usize, usize),
    ) -> Result<(), usize> {
        let mut done = 0;
        while done < len {
            let t = va
                .checked_add(done as u64)
                .and_then(|a| self.translate(a, write));
            let Some((pfn, off)) = t else {
                return Err(done);
            };
            let n = (PAGE_SIZE - off).min(len - done);
            each(done, pfn, off, n);
            done += n;
        }
        Ok(())
    }

    /// Bytes `off..off + out.len()` of frame `pfn` as Xen's memory holds
    /// them (a typed frame's shadow).
    fn read_frame(&self, pfn: usize, off: usize, out: &mut [u8]) {
        self.ram.read_bytes(pfn, off, out);
        if self.shadows.contains_key(pfn) {
            for (i, b) in out.iter_mut().enumerate() {
                let a = off + i;
                let w = self.slot(pfn, a / 8).to_le_bytes();
                *b = w[a % 8];
            }
        }
    }

    /// Xen's `copy_from_guest`: all of `buf`, a page at a time, or `Err`.
    pub(crate) fn load_bytes(&self, va: u64, buf: &mut [u8]) -> Result<(), ()> {
        let len = buf.len();
        self.pieces(va, len, false, |at, pfn, off, n| {
            self.read_frame(pfn, off, &mut buf[at..at + n]);
        })
        .map_err(|_| ())
    }

    /// Store through the guest mappings.
    ///
    /// `guest = true`: a CPU store by the guest, all or nothing (a store
    /// that faults on any byte writes none). `guest = false`: Xen's
    /// `copy_to_guest` (`rep movsb` with an exception fix-up,
    /// `lib/copy-guest.c`): bytes before the first faulting one are written.
    fn store_bytes(&self, va: u64, data: &[u8], guest: bool) -> Result<(), ()> {
        if guest && self.pieces(va, data.len(), true, |_, _, _, _| {}).is_err() {
            return Err(());
        }
        self.pieces(va, data.len(), true, |at, pfn, off, n| {
            self.ram.write_bytes(pfn, off, &data[at..at + n]);
        })
        .map_err(|_| ())
    }

    /// Xen's `copy_from_guest` into `buf`: on a fault the bytes read so far
    /// are kept and the rest is zero-filled (`copy_from_guest_pv`).
    fn load_bytes_padded(&self, va: u64, buf: &mut [u8]) -> Result<(), ()> {
        let len = buf.len();
        let r = self.pieces(va, len, false, |at, pfn, off, n| {
            self.read_frame(pfn, off, &mut buf[at..at + n]);
        });
        match r {
            Ok(()) => Ok(()),
            Err(done) => {
                buf[done..].fill(0);
                Err(())
            }
        }
    }

    fn load_u64(&self, va: u64) -> Result<u64, ()> {
        let mut b = [0u8; 8];
        self.load_bytes(va, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn load_u32(&self, va: u64) -> Result<u32, ()> {
        let mut b = [0u8; 4];
        self.load_bytes(va, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// Guest "long" (8 bytes pv64, 4 bytes pv32).
    fn long_size(&self) -> u64 {
        match self.abi {
            Abi::Pv64 => 8,
            Abi::Pv32 => 4,
        }
    }

    fn load_long(&self, va: u64) -> Result<u64, ()> {
        match self.abi {
            Abi::Pv64 => self.load_u64(va),
            Abi::Pv32 => self.load_u32(va).map(u64::from),
        }
    }

    /// Record change `c` for the event running now.
    #[inline]
    pub(crate) fn note(&mut self, c: Change) {
        if let Some(owner) = self.owner {
            self.trace.log(owner, c);
        }
    }

    // ----------------------------------------------------------------
    // Strict mode, shadows, invariants

    fn finish_strict(&mut self) -> Option<String> {
        if !self.strict || self.strict_failures.is_empty() {
            return None;
        }
        let rules = self.strict_failures.join("\n  ");
        Some(format!(
            "hv-sim (Xen {}, strict): guest did something Xen refuses:\n  {rules}\n{}",
            self.abi, self.trace
        ))
    }

    fn writable_vas(&self, mfn: u64) -> Vec<u64> {
        self.ptes
            .iter()
            .enumerate()
            .filter(|(_, p)| {
                **p & (PTE_P | PTE_RW) == PTE_P | PTE_RW && (**p & PTE_MFN_MASK) >> 12 == mfn
            })
            .map(|(i, _)| self.va_base + (i * PAGE_SIZE) as u64)
            .collect()
    }

    fn gdt_entry(&self, v: usize, idx: u32) -> u64 {
        let vc = &self.vcpus[v];
        match vc.gdt_frames.get((idx / 512) as usize) {
            Some(&mfn) if idx < 7168 => match self.m2p(mfn) {
                Some(pfn) => self.slot(pfn, idx as usize % 512),
                None => 0,
            },
            _ => 0,
        }
    }

    fn ldt_entry_mapped(&self, v: usize, idx: u32) -> Option<u64> {
        let vc = &self.vcpus[v];
        let off = idx as usize * 8;
        let mfn = (*vc.ldt_mapped.get(off / PAGE_SIZE)?)?;
        let pfn = self.m2p(mfn)?;
        Some(self.slot(pfn, (off % PAGE_SIZE) / 8))
    }

    fn invariants(&self) -> Result<(), String> {
        let krpl = u64::from(self.abi.krpl());
        let check = |what: String, d: u64| -> Result<(), String> {
            let present = d & (1 << 47) != 0;
            let s = d & (1 << 44) != 0;
            if present && s && (d >> 45) & 3 < krpl {
                return Err(format!(
                    "{what} = {d:#018x} has DPL {} < krpl {krpl}",
                    (d >> 45) & 3
                ));
            }
            Ok(())
        };
        for (v, vc) in self.vcpus.iter().enumerate() {
            for idx in 0..(vc.gdt_frames.len() as u32 * 512) {
                check(format!("vcpu{v} GDT[{idx}]"), self.gdt_entry(v, idx))?;
            }
            for (slot, m) in vc.ldt_mapped.iter().enumerate() {
                if let Some(mfn) = m {
                    let pfn = self.m2p(*mfn).ok_or("LDT slot maps a foreign frame")?;
                    for i in 0..512 {
                        check(
                            format!("vcpu{v} LDT[{}]", slot * 512 + i),
                            self.ram.read_u64(pfn, i * 8),
                        )?;
                    }
                }
            }
        }
        // Type counts against mappings and users.
        let mut rw = vec![0u32; self.pages()];
        let mut mapped = vec![0u32; self.pages()];
        for p in &self.ptes {
            if p & PTE_P != 0
                && let Some(pfn) = self.m2p((p & PTE_MFN_MASK) >> 12)
            {
                mapped[pfn] += 1;
                if p & PTE_RW != 0 {
                    rw[pfn] += 1;
                }
            }
        }
        let mut seg = vec![0u32; self.pages()];
        for vc in &self.vcpus {
            for m in vc.gdt_frames.iter().chain(vc.ldt_mapped.iter().flatten()) {
                if let Some(pfn) = self.m2p(*m) {
                    seg[pfn] += 1;
                }
            }
        }
        // Page-table entries, pins and roots (pagetables.rs).
        let pt = self.pt_users()?;
        for (pfn, r) in rw.iter_mut().enumerate() {
            *r += pt.rw[pfn];
        }
        for (pfn, fi) in self.frames.iter().enumerate() {
            let mfn = self.mfn(pfn);
            let want = match fi.typ {
                PageType::Writable => rw[pfn],
                PageType::SegDesc => seg[pfn],
                PageType::L1 | PageType::L2 | PageType::L3 | PageType::L4 => pt.typed[pfn],
                PageType::None => 0,
            };
            if fi.type_count != want {
                return Err(format!(
                    "mfn {mfn:#x}: type {} count {} but {want} users",
                    fi.typ.name(),
                    fi.type_count
                ));
            }
            if fi.typ != PageType::Writable && rw[pfn] > 0 {
                return Err(format!(
                    "mfn {mfn:#x} has type {} but is mapped writable",
                    fi.typ.name()
                ));
            }
            if fi.refs != mapped[pfn] + seg[pfn] + pt.refs[pfn] {
                return Err(format!("mfn {mfn:#x}: refs {} wrong", fi.refs));
            }
            if fi.typ == PageType::SegDesc && !self.shadows.contains_key(pfn) {
                return Err(format!("mfn {mfn:#x}: seg_desc without shadow"));
            }
        }
        self.pt_invariants()
    }

    // ----------------------------------------------------------------
    // Type system

    fn frame_reason(&self, mfn: u64) -> String {
        if self.mfn_valid(mfn) {
            format!("mfn {mfn:#x} is not owned by this domain")
        } else {
            format!("mfn {mfn:#x} is not a valid machine frame")
        }
    }

    /// get_page_and_type(PGT_seg_desc_page); validates on a type change.
    fn get_segdesc(&mut self, mfn: u64) -> Result<(), String> {
        let pfn = self.m2p(mfn).ok_or_else(|| self.frame_reason(mfn))?;
        let fi = self.frames[pfn];
        if fi.typ == PageType::SegDesc {
            let f = &mut self.frames[pfn];
            f.type_count += 1;
            f.refs += 1;
            return Ok(());
        }
        if fi.type_count > 0 {
            return Err(match fi.typ {
                PageType::Writable => {
                    let vas: Vec<String> = self
                        .writable_vas(mfn)
                        .iter()
                        .map(|v| format!("{v:#x}"))
                        .collect();
                    format!(
                        "frame {mfn:#x} is mapped writable at va {}; Xen requires descriptor pages to have no writable mapping",
                        if vas.is_empty() {
                            "?".to_string()
                        } else {
                            vas.join(", ")
                        }
                    )
                }
                t => format!(
                    "frame {mfn:#x} is in use as a {} page; it cannot become a descriptor page",
                    t.name()
                ),
            });
        }
        // Type change: validate all 512 slots in place, stop at the first bad.
        for i in 0..512 {
            let d = self.ram.read_u64(pfn, i * 8);
            match check_descriptor(self.abi, d) {
                Ok(n) => {
                    if n != d {
                        self.ram.write_u64(pfn, i * 8, n);
                    }
                }
                Err(r) => {
                    let f = &mut self.frames[pfn];
                    f.typ = PageType::None;
                    f.validated = false;
                    self.shadows.remove(pfn);
                    return Err(format!(
                        "validating frame {mfn:#x}: slot {i} = {d:#018x} rejected: {r} (slots 0..{i} were already rewritten in place)"
                    ));
                }
            }
        }
        let f = &mut self.frames[pfn];
        f.typ = PageType::SegDesc;
        f.validated = true;
        f.type_count = 1;
        f.refs += 1;
        self.shadows.insert(pfn, self.ram.page_slots(pfn));
        self.note(Change::Typed {
            mfn,
            typ: PageType::SegDesc,
        });
        Ok(())
    }

    fn put_type(&mut self, mfn: u64) {
        if let Some(pfn) = self.m2p(mfn) {
            let f = &mut self.frames[pfn];
            f.type_count = f.type_count.saturating_sub(1);
            f.refs = f.refs.saturating_sub(1);
        }
    }

    /// get_page_type(PGT_writable_page) (no general ref).
    fn get_writable_type(&mut self, pfn: usize) -> Result<(), String> {
        let mfn = self.mfn(pfn);
        let f = self.frames[pfn];
        if f.typ != PageType::Writable {
            if f.type_count > 0 {
                return Err(match f.typ {
                    PageType::SegDesc => format!(
                        "frame {mfn:#x} is a live descriptor page (seg_desc, {} users); Xen refuses writable mappings of GDT/LDT frames",
                        f.type_count
                    ),
                    t => format!("frame {mfn:#x} is in use as a {} page", t.name()),
                });
            }
            if f.typ == PageType::SegDesc {
                self.shadows.remove(pfn);
                self.note(Change::SegDescLost { mfn });
            }
            let fm = &mut self.frames[pfn];
            fm.typ = PageType::Writable;
            fm.validated = false;
        }
        self.frames[pfn].type_count += 1;
        Ok(())
    }

    fn destroy_ldt(&mut self, v: usize) {
        let slots = self.vcpus[v].ldt_mapped;
        for (i, s) in slots.iter().enumerate() {
            if let Some(mfn) = s {
                self.put_type(*mfn);
                self.note(Change::LdtUnmapped { slot: i, mfn: *mfn });
            }
        }
        self.vcpus[v].ldt_mapped = [None; 16];
    }

    fn map_ldt(&mut self, v: usize, index: u32, user: bool) -> Result<u64, GuestFault> {
        let vc = &self.vcpus[v];
        let off = u64::from(index) * 8;
        let gp = |reason: String| GuestFault {
            vector: 13,
            error_code: ((off as u32) & !3) | 4,
            cr2: None,
            reason,
        };
        if index >= vc.ldt_ents {
            return Err(gp(format!(
                "LDT index {index} is beyond the LDT limit ({} entries)",
                vc.ldt_ents
            )));
        }
        if let Some(d) = self.ldt_entry_mapped(v, index) {
            return Ok(d);
        }
        let mut linear = vc.ldt_base.wrapping_add(off);
        if self.abi == Abi::Pv32 {
            linear &= 0xFFFF_FFFF;
        }
        if self.abi == Abi::Pv64 && !is_canonical(linear) {
            return Err(gp(format!("LDT address {linear:#x} is non-canonical")));
        }
        let pf = |reason: String| GuestFault {
            vector: 14,
            error_code: if user { 4 } else { 0 },
            cr2: Some(linear),
            reason,
        };
        let page_va = linear & !0xFFF;
        let pte = if self.addr_ok(linear) {
            self.va_page(page_va).map(|i| self.ptes[i]).unwrap_or(0)
        } else {
            0
        };
        if pte & PTE_P == 0 {
            return Err(pf(format!("LDT page at va {page_va:#x} is not mapped")));
        }
        let mfn = (pte & PTE_MFN_MASK) >> 12;
        if let Err(r) = self.get_segdesc(mfn) {
            return Err(pf(format!("LDT page at va {page_va:#x}: {r}")));
        }
        let slot = (off as usize) / PAGE_SIZE;
        self.vcpus[v].ldt_mapped[slot] = Some(mfn);
        self.note(Change::LdtMapped { slot, mfn });
        Ok(self.ldt_entry_mapped(v, index).unwrap_or(0))
    }

    // ----------------------------------------------------------------
    // Dispatch

    pub(crate) fn dispatch(&mut self, v: usize, nr: u64, a: [u64; 6], depth: u32) -> i64 {
        let seq = self.seq;
        self.seq += 1;
        // The event goes in first (a multicall's sub-calls follow it); its
        // result and changes are filled in when it returns.
        let from = self.trace.next_change();
        let id = self.trace.push(TraceEvent::Call {
            seq,
            vcpu: v,
            depth,
            nr,
            name: hypercall_name(nr),
            abi: self.abi,
            args: a,
            result: 0,
            reason: None,
            changes: ChangeIds::default(),
        });
        let outer = self.owner.replace(id);
        let r = self.run(v, nr, a, depth);
        self.owner = outer;
        let to = self.trace.next_change();
        let (res, why) = match r {
            Ok(x) => (x, None),
            Err(f) => {
                let res = -f.errno;
                if self.strict {
                    self.strict_failures.push(format!(
                        "{}({}) = -{} ({res}): {}",
                        hypercall_name(nr),
                        decode_args(nr, self.abi, &a),
                        errno_name(res),
                        f.reason
                    ));
                }
                (res, Some(f.reason))
            }
        };
        if let Some(TraceEvent::Call {
            result,
            reason,
            changes,
            ..
        }) = self.trace.get_mut(id)
        {
            *result = res;
            *reason = why;
            *changes = ChangeIds {
                owner: id,
                ids: from..to,
            };
        }
        res
    }

    fn run(&mut self, v: usize, nr: u64, a: [u64; 6], depth: u32) -> Hc {
        match nr {
            0 => self.set_trap_table(v, a[0]),
            1 => self.mmu_update(a[0], a[1] as u32, a[2], a[3] as u32),
            2 => self.set_gdt(v, a[0], a[1] as u32),
            3 => self.stack_switch(v, a[0], a[1]),
            10 => match self.abi {
                Abi::Pv64 => self.update_descriptor(a[0], a[1]),
                Abi::Pv32 => self.update_descriptor(a[0] | a[1] << 32, a[2] | a[3] << 32),
            },
            13 => self.multicall(v, a[0], a[1], depth),
            14 => match self.abi {
                Abi::Pv64 => self.update_va_mapping(a[0], a[1], a[2]),
                Abi::Pv32 => self.update_va_mapping(a[0], a[1] | a[2] << 32, a[3]),
            },
            25 => self.set_segment_base(v, a[0] as u32, a[1]),
            26 => self.mmuext_op(v, a[0], a[1] as u32, a[2], a[3] as u32),
            18 => self.console_io(a[0] as u32, a[1] as u32, a[2]),
            29 => self.sched_op(a[0] as u32, a[1]),
            31 if self.version == XenVersion::V4_17 => Err(fail(
                ENOSYS,
                "hv-sim does not model hypercall 31 (xenoprof_op); Xen 4.17 has a handler for it",
            )),
            _ if hypercall_name(nr) != "?" => Err(fail(
                ENOSYS,
                format!(
                    "hv-sim does not model hypercall {nr} ({}); Xen has a handler for it",
                    hypercall_name(nr)
                ),
            )),
            _ => Err(fail(ENOSYS, format!("Xen has no hypercall number {nr:#x}"))),
        }
    }

    // ----------------------------------------------------------------
    // Handlers

    fn set_trap_table(&mut self, v: usize, table: u64) -> Hc {
        if table == 0 {
            self.vcpus[v].trap_table = vec![TrapInfo::default(); 256];
            self.note(Change::TrapTableCleared);
            return Ok(0);
        }
        let size = match self.abi {
            Abi::Pv64 => 16,
            Abi::Pv32 => 8,
        };
        let krpl = self.abi.krpl() as u16;
        let mut i: u64 = 0;
        loop {
            let va = table.wrapping_add(i * size);
            let mut b = [0u8; 16];
            if self.load_bytes(va, &mut b[..size as usize]).is_err() {
                return Err(fail(
                    EFAULT,
                    format!(
                        "trap_info entry {i} at {va:#x} cannot be read ({i} entries installed)"
                    ),
                ));
            }
            let vector = b[0];
            let flags = b[1];
            let mut cs = u16::from_le_bytes([b[2], b[3]]);
            let address = match self.abi {
                Abi::Pv64 => u64::from_le_bytes(b[8..16].try_into().unwrap_or([0; 8])),
                Abi::Pv32 => u64::from(u32::from_le_bytes(b[4..8].try_into().unwrap_or([0; 4]))),
            };
            if address == 0 {
                return Ok(0);
            }
            if self.abi == Abi::Pv64 && !is_canonical(address) {
                return Err(fail(
                    EINVAL,
                    format!(
                        "trap_info entry {i} (vector {vector}) has non-canonical address {address:#x} ({i} entries installed)"
                    ),
                ));
            }
            if cs & 3 < krpl {
                cs = (cs & !3) | krpl;
            }
            let t = TrapInfo {
                vector,
                flags,
                cs,
                address,
            };
            self.vcpus[v].trap_table[vector as usize] = t;
            self.note(Change::Trap {
                vector,
                cs,
                address,
                flags,
            });
            i += 1;
        }
    }

    fn set_gdt(&mut self, v: usize, list: u64, entries: u32) -> Hc {
        if entries > 7168 {
            return Err(fail(
                EINVAL,
                format!("{entries} entries: a guest GDT has at most 7168 (14 frames)"),
            ));
        }
        let nr = entries.div_ceil(512) as u64;
        let mut frames = Vec::new();
        if nr > 0 && !self.addr_ok(list) {
            return Err(fail(
                EFAULT,
                format!("frame list {list:#x} is not a guest address"),
            ));
        }
        for i in 0..nr {
            let va = list.wrapping_add(i * self.long_size());
            match self.load_long(va) {
                Ok(m) => frames.push(m),
                Err(()) => {
                    return Err(fail(
                        EFAULT,
                        format!("frame list entry {i} at {va:#x} cannot be read"),
                    ));
                }
            }
        }
        for (i, &mfn) in frames.iter().enumerate() {
            if let Err(r) = self.get_segdesc(mfn) {
                for &m in frames[..i].iter().rev() {
                    self.put_type(m);
                }
                return Err(fail(
                    EINVAL,
                    format!("set_gdt frame {i}: {r}; the old GDT stays installed"),
                ));
            }
        }
        let old = std::mem::take(&mut self.vcpus[v].gdt_frames);
        for m in old {
            self.put_type(m);
        }
        self.note(Change::Gdt {
            entries,
            frames: frames.as_slice().into(),
        });
        let vc = &mut self.vcpus[v];
        vc.gdt_frames = frames;
        vc.gdt_ents = entries;
        Ok(0)
    }

    fn stack_switch(&mut self, v: usize, ss: u64, sp: u64) -> Hc {
        let krpl = u64::from(self.abi.krpl());
        let ss = if ss & 3 < krpl { (ss & !3) | krpl } else { ss };
        let vc = &mut self.vcpus[v];
        vc.kernel_ss = ss;
        vc.kernel_sp = sp;
        self.note(Change::KernelStack { ss, sp });
        Ok(0)
    }

    fn update_descriptor(&mut self, maddr: u64, desc: u64) -> Hc {
        if !maddr.is_multiple_of(8) {
            return Err(fail(
                EINVAL,
                format!("machine address {maddr:#x} is not 8-byte aligned"),
            ));
        }
        let stored = check_descriptor(self.abi, desc)
            .map_err(|r| fail(EINVAL, format!("descriptor {desc:#018x}: {r}")))?;
        let mfn = maddr >> 12;
        let Some(pfn) = self.m2p(mfn) else {
            return Err(fail(EINVAL, self.frame_reason(mfn)));
        };
        let off = (maddr & 0xFFF) as usize;
        if self.frames[pfn].typ == PageType::SegDesc {
            self.set_slot(pfn, off / 8, stored);
        } else {
            self.get_writable_type(pfn).map_err(|r| fail(EINVAL, r))?;
            self.ram.write_u64(pfn, off, stored);
            self.frames[pfn].type_count -= 1;
        }
        self.note(Change::Descriptor {
            maddr,
            value: stored,
        });
        Ok(0)
    }

    fn update_va_mapping(&mut self, va: u64, pte: u64, flags: u64) -> Hc {
        let idx = match self.va_page(va) {
            Some(i) if self.addr_ok(va) => i,
            _ => {
                return Err(fail(
                    EINVAL,
                    format!("no guest L1 page table covers va {va:#x}"),
                ));
            }
        };
        let old = self.ptes[idx];
        if pte & PTE_P != 0 {
            let disallow = self.l1_disallow_mask();
            if pte & disallow != 0 {
                return Err(fail(
                    EINVAL,
                    format!("pte {pte:#x} sets disallowed bits {:#x}", pte & disallow),
                ));
            }
            let mfn = (pte & PTE_MFN_MASK) >> 12;
            let Some(pfn) = self.m2p(mfn) else {
                return Err(if self.mfn_valid(mfn) {
                    fail(EBUSY, format!("mfn {mfn:#x} belongs to another domain"))
                } else if mfn == INVALID_MFN {
                    fail(EINVAL, format!("mfn {mfn:#x} is INVALID_MFN"))
                } else {
                    fail(
                        EPERM,
                        format!("mfn {mfn:#x} is not RAM (MMIO without permission)"),
                    )
                });
            };
            if pte & PTE_RW != 0 {
                self.get_writable_type(pfn).map_err(|r| fail(EBUSY, r))?;
            }
            self.frames[pfn].refs += 1;
        }
        if old & PTE_P != 0
            && let Some(opfn) = self.m2p((old & PTE_MFN_MASK) >> 12)
        {
            let f = &mut self.frames[opfn];
            f.refs -= 1;
            if old & PTE_RW != 0 {
                f.type_count -= 1;
            }
        }
        // pv64 (`pv/mm.h` `adjust_guest_l1e`): a present entry always gets
        // _PAGE_USER (the kernel runs in ring 3); one the guest did not mark
        // user also gets _PAGE_GUEST_KERNEL, and one without
        // _PAGE_GUEST_KERNEL gets _PAGE_GLOBAL.
        let mut pte = pte;
        if self.abi == Abi::Pv64 && pte & PTE_P != 0 {
            if pte & PTE_USER == 0 {
                pte |= PTE_GUEST_KERNEL | PTE_USER;
            }
            if pte & PTE_GUEST_KERNEL == 0 {
                pte |= PTE_GLOBAL | PTE_USER;
            }
        }
        self.ptes[idx] = pte;
        self.live_l1_written(idx);
        let page_va = self.va_base + (idx * PAGE_SIZE) as u64;
        self.note(Change::Pte {
            va: page_va,
            old,
            new: pte,
        });
        let kind = flags & 3;
        let target = flags & !3;
        if (kind == 1 || kind == 2) && target != 0 && target != 4 {
            self.read_vcpu_bitmap(target)?;
        }
        Ok(0)
    }

    /// `vcpumask_to_pcpumask`: reads the guest's vCPU bitmap one long (8
    /// bytes pv64, 4 pv32) at a time while the word's first vCPU exists,
    /// and stops early at a set bit naming a vCPU beyond the last. A read
    /// fault is -EFAULT.
    fn read_vcpu_bitmap(&self, bmap: u64) -> Hc {
        let bits = self.long_size() * 8;
        let nvcpus = self.vcpus.len() as u64;
        let mut offs = 0u64;
        loop {
            let bias = offs * bits;
            if bias >= nvcpus {
                return Ok(0);
            }
            let va = bmap.wrapping_add(offs * self.long_size());
            let Ok(word) = self.load_long(va) else {
                return Err(fail(
                    EFAULT,
                    format!(
                        "vCPU bitmap word {offs} at {va:#x} cannot be read (the PTE was already written)"
                    ),
                ));
            };
            // Set bits are visited upwards; one beyond the last vCPU ends
            // the walk, so the highest set bit decides.
            if word != 0 && bias + u64::from(63 - word.leading_zeros()) >= nvcpus {
                return Ok(0);
            }
            offs += 1;
        }
    }

    fn set_segment_base(&mut self, v: usize, which: u32, base: u64) -> Hc {
        if self.abi == Abi::Pv32 {
            return Err(fail(
                ENOSYS,
                "set_segment_base does not exist for 32-bit PV guests",
            ));
        }
        match which {
            0..=2 => {
                if !is_canonical(base) {
                    return Err(fail(EINVAL, format!("base {base:#x} is not canonical")));
                }
                let vc = &mut self.vcpus[v];
                let what = match which {
                    0 => {
                        vc.fs_base = base;
                        "fs_base"
                    }
                    1 => {
                        vc.gs_base_user = base;
                        "gs_base_user"
                    }
                    _ => {
                        vc.gs_base_kernel = base;
                        "gs_base_kernel"
                    }
                };
                self.note(Change::SegmentBase { which: what, base });
                Ok(0)
            }
            3 => {
                let mut sel = base as u16;
                if sel > 3 {
                    sel |= 3;
                }
                match self.load_data_selector(v, sel) {
                    Ok(b) => {
                        // gs_base_user is re-read from the segment register
                        // in every case; a NUL selector leaves base 0 (Intel
                        // clears it, and on AMD Xen loads a flat selector
                        // first).
                        let vc = &mut self.vcpus[v];
                        vc.gs_user_sel = sel;
                        vc.gs_base_user = b;
                        self.note(Change::UserGs { sel, base: b });
                    }
                    Err(r) => {
                        let vc = &mut self.vcpus[v];
                        vc.gs_user_sel = 0;
                        vc.gs_base_user = 0;
                        self.note(Change::UserGsFaulted { sel, why: r });
                    }
                }
                Ok(0)
            }
            _ => Err(fail(
                EINVAL,
                format!("unknown segment base selector which={which}"),
            )),
        }
    }

    /// Load a data selector into %gs the way Xen does for
    /// SEGBASE_GS_USER_SEL: a `mov` at CPL 0 with the selector's RPL forced
    /// to 3 for non-NUL selectors, so the usual data-segment rules apply with
    /// max(CPL, RPL) = 3. Returns the segment base. On success the CPU sets
    /// the descriptor's accessed bit, which lands in the guest's frame (Xen
    /// maps GDT/LDT frames read-write in its own area).
    fn load_data_selector(&mut self, v: usize, sel: u16) -> Result<u64, String> {
        if sel & !3 == 0 {
            return Ok(0);
        }
        let idx = u32::from(sel >> 3);
        // Where the descriptor lives: (pfn, byte offset), for the A bit.
        let (d, loc) = if sel & 4 != 0 {
            let d = self.map_ldt(v, idx, false).map_err(|f| f.to_string())?;
            let off = idx as usize * 8;
            let loc = self.vcpus[v].ldt_mapped[off / PAGE_SIZE]
                .and_then(|m| self.m2p(m))
                .map(|pfn| (pfn, off % PAGE_SIZE));
            (d, loc)
        } else if idx >= 7168 {
            // Xen's per-CPU GDT page for 64-bit PV vCPUs (`desc.c`
            // `boot_gdt`): 0xe023 (ring-3 compat code, readable), 0xe02b
            // (ring-3 data) and 0xe033 (ring-3 64-bit code, readable) are
            // DPL 3, present, already accessed, base 0. Everything else there
            // is DPL 0, a system descriptor or empty.
            return if matches!(sel, 0xe023 | 0xe02b | 0xe033) {
                Ok(0)
            } else {
                Err(format!(
                    "Xen-reserved selector {sel:#x} is not loadable at RPL 3"
                ))
            };
        } else {
            let loc = self.vcpus[v]
                .gdt_frames
                .get((idx / 512) as usize)
                .and_then(|&m| self.m2p(m))
                .map(|pfn| (pfn, (idx as usize % 512) * 8));
            (self.gdt_entry(v, idx), loc)
        };
        let present = d & (1 << 47) != 0;
        let s = d & (1 << 44) != 0;
        let typ = (d >> 40) & 0xF;
        let code = typ & 8 != 0;
        let readable = typ & 2 != 0;
        let conforming = typ & 4 != 0;
        let dpl = (d >> 45) & 3;
        if !s || (code && !readable) {
            return Err(format!(
                "selector {sel:#x} names a non-data descriptor {d:#018x}"
            ));
        }
        if !(code && conforming) && dpl < 3 {
            return Err(format!("selector {sel:#x}: DPL {dpl} < RPL 3"));
        }
        if !present {
            return Err(format!("selector {sel:#x} names a non-present descriptor"));
        }
        if d & (1 << 40) == 0
            && let Some((pfn, off)) = loc
        {
            let nd = d | (1 << 40);
            self.set_slot(pfn, off / 8, nd);
            self.note(Change::AccessedBit { sel, desc: nd });
        }
        Ok(((d >> 16) & 0xFF_FFFF) | (((d >> 56) & 0xFF) << 24))
    }

    fn multicall(&mut self, v: usize, list: u64, nr: u64, depth: u32) -> Hc {
        if self.vcpus[v].in_multicall {
            return Err(fail(EINVAL, "multicall inside a multicall"));
        }
        let esize: u64 = match self.abi {
            Abi::Pv64 => 64,
            Abi::Pv32 => 32,
        };
        // 4.17: `do_multicall(..., uint32_t nr_calls)`: the count is cut to
        // 32 bits (master widened it to unsigned long, d2bbb0d455).
        let nr = match self.version {
            XenVersion::V4_17 => nr & 0xffff_ffff,
            XenVersion::Unstable => nr,
        };
        if !(nr < u64::MAX / esize && self.addr_ok(list)) {
            return Err(fail(
                EFAULT,
                format!("multicall list {list:#x} x {nr} is not a guest range"),
            ));
        }
        self.vcpus[v].in_multicall = true;
        let r = self.multicall_body(v, list, nr, depth, esize);
        self.vcpus[v].in_multicall = false;
        r
    }

    fn multicall_body(&mut self, v: usize, list: u64, nr: u64, depth: u32, esize: u64) -> Hc {
        for i in 0..nr {
            let va = list.wrapping_add(i * esize);
            let mut b = [0u8; 64];
            if self.load_bytes(va, &mut b[..esize as usize]).is_err() {
                return Err(fail(
                    EFAULT,
                    format!("multicall entry {i} at {va:#x} cannot be read"),
                ));
            }
            let w = |k: usize| -> u64 {
                match esize {
                    64 => u64::from_le_bytes(b[k * 8..k * 8 + 8].try_into().unwrap_or([0; 8])),
                    _ => u64::from(u32::from_le_bytes(
                        b[k * 4..k * 4 + 4].try_into().unwrap_or([0; 4]),
                    )),
                }
            };
            let op = w(0);
            // args[5] is ignored by Xen.
            let args = [w(2), w(3), w(4), w(5), w(6), 0];
            let result = self.dispatch(v, op, args, depth + 1);
            // The result field: 4.17 writes it with one 8-byte store (a
            // fault writes nothing); master does so only when it is 8-byte
            // aligned and otherwise copies bytes up to the fault (67a8e5721e).
            let whole = match self.version {
                XenVersion::V4_17 => true,
                XenVersion::Unstable => (va + 8).is_multiple_of(8),
            };
            let ok = match self.abi {
                Abi::Pv64 => self.store_bytes(va + 8, &result.to_le_bytes(), whole),
                Abi::Pv32 => self.store_bytes(va + 4, &(result as i32).to_le_bytes(), false),
            };
            // XSA-213: an iret sub-call ends the multicall; its result
            // (written back best effort) becomes the multicall's own.
            if op == nr::IRET {
                let rc = match self.abi {
                    Abi::Pv64 => result,
                    Abi::Pv32 => i64::from(result as i32),
                };
                self.note(Change::MulticallIret { entry: i, rc });
                return Ok(rc);
            }
            if ok.is_err() {
                return Err(fail(
                    EFAULT,
                    format!(
                        "result of multicall entry {i} cannot be written to {:#x} (the call took effect)",
                        va + esize / 8
                    ),
                ));
            }
        }
        Ok(0)
    }

    fn mmuext_op(&mut self, v: usize, ops: u64, count: u32, pdone: u64, foreigndom: u32) -> Hc {
        // The final-status continuation (`count == MMU_UPDATE_PREEMPTED`
        // with a NULL ops handle) hands `foreigndom` back as the result
        // (`do_mmuext_op`; `compat_mmuext_op` forwards it unchanged).
        if count == 0x8000_0000 && ops == 0 {
            let rc = i64::from(foreigndom as i32);
            self.note(Change::PreemptedStatus { what: "ops", rc });
            return Ok(rc);
        }
        let preempted = count & 0x8000_0000 != 0;
        let count = count & !0x8000_0000;
        // pv32 (`compat_mmuext_op`): ops are translated in chunks and only a
        // non-empty chunk reaches `do_mmuext_op`, so with count 0 nothing
        // else (foreigndom, pdone) is looked at.
        if self.abi == Abi::Pv32 && count == 0 {
            return Ok(0);
        }
        // A continuation resumes counting from *pdone; read errors are
        // ignored (the unread part reads as 0). A NULL pdone means 0.
        let mut done: u32 = 0;
        if preempted && pdone != 0 {
            let mut b = [0u8; 4];
            let _ = self.load_bytes_padded(pdone, &mut b);
            done = u32::from_le_bytes(b);
        }
        let esize: u64 = match self.abi {
            Abi::Pv64 => 24,
            Abi::Pv32 => 12,
        };
        if !self.addr_ok(ops) {
            return Err(fail(EFAULT, format!("ops {ops:#x} is not a guest address")));
        }
        let dom = foreigndom as u16;
        let pg = match dom {
            DOMID_SELF => PgOwner::Current,
            d if d == self.own_domid() => {
                return Err(fail(
                    ESRCH,
                    format!("foreigndom {d} is the caller's own id; use DOMID_SELF"),
                ));
            }
            // dom_io / dom_xen exist and are PV, and so does dom0 for a
            // domU (`get_pg_owner` finds it), but the default XSM policy
            // (XSM_TARGET) lets only the domain itself or a control domain
            // act on another: a domU is refused, the hardware domain not.
            DOMID_IO | DOMID_XEN | 0 if !self.privileged => {
                return Err(fail(
                    EPERM,
                    format!(
                        "foreigndom {dom:#x}: the default XSM policy refuses an unprivileged domain acting on another (no op runs)"
                    ),
                ));
            }
            DOMID_IO => PgOwner::Io,
            DOMID_XEN => PgOwner::Xen,
            d => return Err(fail(ESRCH, format!("no domain {d:#x}"))),
        };
        let mut i: u32 = 0;
        let mut rc = Ok(0);
        while i < count {
            let va = ops.wrapping_add(u64::from(i) * esize);
            let mut b = [0u8; 24];
            if self.load_bytes(va, &mut b[..esize as usize]).is_err() {
                rc = Err(fail(
                    EFAULT,
                    format!("mmuext_op {i} at {va:#x} cannot be read"),
                ));
                break;
            }
            let cmd = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            let (arg1, arg2) = match self.abi {
                Abi::Pv64 => (
                    u64::from_le_bytes(b[8..16].try_into().unwrap_or([0; 8])),
                    u64::from_le_bytes(b[16..24].try_into().unwrap_or([0; 8])),
                ),
                Abi::Pv32 => (
                    u64::from(u32::from_le_bytes([b[4], b[5], b[6], b[7]])),
                    u64::from(u32::from_le_bytes([b[8], b[9], b[10], b[11]])),
                ),
            };
            if let Err(f) = self.mmuext_one(v, cmd, arg1, arg2, pg) {
                rc = Err(fail(f.errno, format!("op {i} (cmd {cmd}): {}", f.reason)));
                break;
            }
            i += 1;
        }
        if pdone != 0 {
            let _ = self.store_bytes(pdone, &(done.wrapping_add(i)).to_le_bytes(), false);
        }
        rc
    }

    fn mmuext_one(&mut self, v: usize, cmd: u32, arg1: u64, arg2: u64, pg: PgOwner) -> Hc {
        let foreign = pg != PgOwner::Current;
        match cmd {
            MMUEXT_SET_LDT => {
                if foreign {
                    return Err(fail(EPERM, "SET_LDT with a foreign page owner"));
                }
                let ents = arg2 as u32;
                if ents > 8192 {
                    return Err(fail(EINVAL, format!("{ents} LDT entries: at most 8192")));
                }
                let base = if ents > 0 {
                    if arg1 & 0xFFF != 0 {
                        return Err(fail(
                            EINVAL,
                            format!("LDT base {arg1:#x} is not page aligned"),
                        ));
                    }
                    if !self.addr_ok(arg1) {
                        return Err(fail(
                            EINVAL,
                            format!("LDT base {arg1:#x} is not a guest address"),
                        ));
                    }
                    arg1
                } else {
                    ZERO_BLOCK_PTR
                };
                let vc = &self.vcpus[v];
                if vc.ldt_base == base && vc.ldt_ents == ents {
                    return Ok(0);
                }
                self.destroy_ldt(v);
                let vc = &mut self.vcpus[v];
                vc.ldt_base = base;
                vc.ldt_ents = ents;
                self.note(Change::Ldt {
                    base,
                    entries: u64::from(ents),
                });
                Ok(0)
            }
            MMUEXT_TLB_FLUSH_LOCAL
            | MMUEXT_TLB_FLUSH_ALL
            | MMUEXT_INVLPG_LOCAL
            | MMUEXT_INVLPG_ALL => {
                if foreign {
                    return Err(fail(
                        EPERM,
                        format!("TLB flush with a foreign page owner ({pg:?})"),
                    ));
                }
                Ok(0)
            }
            MMUEXT_NEW_USER_BASEPTR if self.abi == Abi::Pv32 => Err(fail(
                EINVAL,
                "NEW_USER_BASEPTR does not exist for 32-bit PV guests",
            )),
            MMUEXT_MARK_SUPER | MMUEXT_UNMARK_SUPER => {
                Err(fail(EOPNOTSUPP, "superpage marking is not supported"))
            }
            0..=5 | 8 | 9 | 12 | 15..=18 => self.mmuext_pt(v, cmd, arg1, arg2, pg),
            _ => Err(fail(ENOSYS, format!("unknown MMUEXT command {cmd}"))),
        }
    }
}
