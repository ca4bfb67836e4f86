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
// One module per Xen source file (see each module's first line).
#[path = "callback.rs"]
mod callback;
#[path = "descriptor_tables.rs"]
mod descriptor_tables;
#[path = "guest_access.rs"]
mod guest_access;
#[path = "hypercall.rs"]
mod hypercall;
#[path = "invariants.rs"]
mod invariants;
#[path = "misc_hypercalls.rs"]
mod misc_hypercalls;
#[path = "mm.rs"]
mod mm;
#[path = "multicall.rs"]
mod multicall;
#[path = "pv_mm.rs"]
mod pv_mm;
#[path = "vcpu_op.rs"]
mod vcpu_op;
pub use hypercall::{CallCost, PREEMPT_BUDGET, hypercall_name};
pub use vcpu_op::{VCPU_GUEST_CONTEXT_SIZE, VcpuContext};
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

impl std::error::Error for GuestFault {}

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
    /// `is_initialised`: vCPU 0 by the domain builder, the others by
    /// `VCPUOP_initialise`.
    pub initialised: bool,
    /// Not `_VPF_down`: running (vCPU 0 from the start; the others after
    /// `VCPUOP_up`, or `VCPUOP_initialise` with `VGCF_online`).
    pub up: bool,
    /// The registers `VCPUOP_initialise` gave this vCPU (after Xen's
    /// fixups), for a runner that starts it.
    pub entry: Option<VcpuEntry>,
}

/// A vCPU's first registers, from `VCPUOP_initialise`'s `user_regs`
/// (selectors with their RPL raised, RFLAGS with IOPL cleared and IF set,
/// as `arch_set_info_guest` leaves them in Xen's saved registers; what the
/// vCPU then runs with is [`super::traps::exit_rflags`] of them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VcpuEntry {
    /// rip.
    pub rip: u64,
    /// rsp.
    pub rsp: u64,
    /// rflags.
    pub rflags: u64,
    /// rdi.
    pub rdi: u64,
    /// rsi.
    pub rsi: u64,
    /// cs.
    pub cs: u16,
    /// ss.
    pub ss: u16,
    /// The `flags` word (`VGCF_*`).
    pub flags: u64,
    /// The virtual IOPL (`v->arch.pv.iopl`): the context's RFLAGS.IOPL
    /// bits, in place (hv-sim models no I/O emulation or
    /// `VMASST_TYPE_architectural_iopl` that would read it).
    pub iopl: u64,
}

impl VcpuState {
    fn new(index: usize, scratch_va: u64) -> VcpuState {
        VcpuState {
            initialised: index == 0,
            up: index == 0,
            entry: None,
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

/// Canonical 48-bit address (bits 63..47 equal): pvops' definition.
pub use pvops::table::is_canonical;

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
    /// The running call was preempted (`hypercall_create_continuation`):
    /// the hypercall and arguments the guest re-executes.
    pub(crate) preempted: Option<(u64, [u64; 6])>,
    /// Units of work ([`PREEMPT_BUDGET`]'s) done since
    /// the guest last entered: Xen's `hypercall_preempt_check`.
    pub(crate) work: u64,
    /// The last hypercall's cost ([`XenDomain::last_call_cost`]).
    pub(crate) cost: CallCost,
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
            .map(|i| VcpuState::new(i, va_base + ((i + 1) * PAGE_SIZE) as u64))
            .collect();
        XenDomain::from_parts(abi, ram, va_base, 0, frames, ptes, vc, vcpus + 1)
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
            .map(|i| VcpuState::new(i, ((reserved + i) * PAGE_SIZE) as u64))
            .collect();
        XenDomain::from_parts(
            Abi::Pv64,
            ram,
            0,
            reserved,
            frames,
            ptes,
            vc,
            reserved + vcpus,
        )
    }

    /// The domain over `ram` with these frames, direct-map entries and
    /// vCPUs, in its start state (no trace, domU, release build, 4.17).
    #[allow(clippy::too_many_arguments)]
    fn from_parts(
        abi: Abi,
        ram: GuestRam,
        va_base: u64,
        reserved: usize,
        frames: Vec<FrameInfo>,
        ptes: Vec<u64>,
        vcpus: Vec<VcpuState>,
        next_free: usize,
    ) -> XenDomain {
        let pages = frames.len();
        XenDomain {
            inner: Mutex::new(Inner {
                abi,
                ram,
                va_base,
                reserved,
                frames,
                ptes,
                vcpus,
                shadows: Shadows::new(pages),
                trace: Trace::default(),
                seq: 0,
                owner: None,
                preempted: None,
                work: 0,
                cost: CallCost::default(),
                strict: false,
                strict_failures: Vec::new(),
                next_free,
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
    pub fn install_bootstrap_tables(
        &self,
        pfns: std::ops::Range<u64>,
    ) -> Result<(), crate::xen::error::BootstrapError> {
        let mut g = self.lock();
        g.install_bootstrap(pfns)?;
        Ok(g.invariants()?)
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

    // ----------------------------------------------------------------
    // Type system

    // ----------------------------------------------------------------
    // Dispatch

    // ----------------------------------------------------------------
    // Handlers
}
