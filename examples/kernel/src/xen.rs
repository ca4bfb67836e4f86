//! Running as a Xen-style PV guest: the hypercall page, the start info
//! hv-sim hands over, and the `XenOps` backend built from them.
//!
//! * The hypercall page is one 4 KiB page of `.text`, filled with `int3`
//!   here and named by a `XEN_ELFNOTE_HYPERCALL_PAGE` (2) ELF note (name
//!   "Xen", descriptor = its 8-byte address, as Linux's `xen-head.S`). The
//!   hypervisor fills it with 32-byte stubs before the kernel runs;
//!   hypercall `nr` is a `call` to `page + nr * 32`.
//! * The start info (address in rsi at entry, like Xen's `start_info`) is
//!   [`StartInfo`]: hv-sim's own small layout, not Xen's `start_info_t`.
//! * The backend is `XenOps<KernelPlatform>` over the p2m list from the
//!   start info (the kernel is identity-mapped: direct map at 0) and a
//!   static scratch page, kept in a `spin::Once` so it can be installed as
//!   the `'static` ops table.

use core::arch::global_asm;

use pvops::GdtLayout;
use pvops_xen::{KernelPlatform, XenOps};

global_asm!(
    r#"
    .pushsection .note.Xen, "a", @note
    .balign 4
    .long 4            /* namesz: "Xen\0" */
    .long 8            /* descsz */
    .long 2            /* XEN_ELFNOTE_HYPERCALL_PAGE */
    .asciz "Xen"
    .balign 4
    .quad hypercall_page
    .balign 4
    .popsection

    .pushsection .text.hypercall_page, "ax"
    .balign 4096
    .globl hypercall_page
hypercall_page:
    .fill 4096, 1, 0xcc
    .popsection
"#,
    options(att_syntax)
);

unsafe extern "C" {
    /// The hypercall page (filled by the hypervisor).
    static hypercall_page: [u8; 4096];
}

/// CPUID through Xen's forced-emulation prefix (`ud2; .ascii "xen";
/// cpuid`, Linux's `XEN_EMULATE_PREFIX`): the #UD reaches the hypervisor,
/// which recognises the prefix, emulates `cpuid` with the guest's view and
/// resumes after it. A PV guest needs it where the CPU cannot trap `cpuid`
/// in ring 3 (no CPUID faulting): there a plain `cpuid` answers with the
/// host's leaves. hv-sim says so with the `CPUID_NEEDS_XEN_PREFIX` boot
/// flag; only a Xen-style hypervisor may set it.
pub struct XenCpuid;

impl pvops::detect::CpuidSource for XenCpuid {
    fn cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4] {
        let (a, b, c, d): (u32, u64, u32, u32);
        // SAFETY: the hypervisor that set the boot flag emulates the
        // prefixed cpuid (registers only); rbx is saved around it because
        // LLVM reserves it.
        unsafe {
            core::arch::asm!(
                "mov {t}, rbx",
                "ud2",
                ".ascii \"xen\"",
                "cpuid",
                "xchg {t}, rbx",
                t = out(reg) b,
                inout("eax") leaf => a,
                inout("ecx") subleaf => c,
                out("edx") d,
                options(nostack)
            )
        };
        [a, b as u32, c, d]
    }
}

/// `StartInfo::magic`: "hvsimxen" as a little-endian u64.
pub const START_INFO_MAGIC: u64 = u64::from_le_bytes(*b"hvsimxen");

/// What hv-sim's Xen personality passes in rsi at entry (all fields u64,
/// little endian; hv-sim's `kvm::xen::StartInfo` is the other side):
///
/// | offset | field |
/// |---|---|
/// | 0 | `magic` = "hvsimxen" |
/// | 8 | `hypercall_page`: the page hv-sim filled (the note's address) |
/// | 16 | `p2m`: address of the p2m list, one u64 mfn per pfn (`u64::MAX` for frames that are not the domain's) |
/// | 24 | `nr_pages`: entries in the p2m list |
/// | 32 | `flags`: [`SIF_RO_MIRRORED`] |
#[repr(C)]
pub struct StartInfo {
    /// [`START_INFO_MAGIC`].
    pub magic: u64,
    /// Address of the filled hypercall page.
    pub hypercall_page: u64,
    /// Address of the p2m list.
    pub p2m: u64,
    /// Number of p2m entries.
    pub nr_pages: u64,
    /// [`SIF_RO_MIRRORED`].
    pub flags: u64,
}

/// `StartInfo::flags`: the hypervisor mirrors the domain's read-only
/// mappings (`update_va_mapping`) into the real page tables, so a direct
/// store into a live descriptor page faults (#PF) as on Xen.
pub const SIF_RO_MIRRORED: u64 = 1 << 0;

#[repr(C, align(4096))]
struct Scratch([u8; 4096]);
/// Argument structures for hypercalls (this vCPU only).
static mut SCRATCH: Scratch = Scratch([0; 4096]);

static XEN: spin::Once<XenOps<KernelPlatform>> = spin::Once::new();

/// Build the Xen backend from the start info at `start_info` (rsi at entry).
pub fn init(
    start_info: u64,
    layout: GdtLayout,
) -> Result<(&'static XenOps<KernelPlatform>, u64), &'static str> {
    if start_info == 0 || !start_info.is_multiple_of(8) {
        return Err("no start info (rsi is 0 or misaligned)");
    }
    // SAFETY: the hypervisor passes the address of a StartInfo in rsi,
    // mapped readable for the kernel's life; the magic is checked before
    // any other field is trusted.
    let si = unsafe { &*(start_info as *const StartInfo) };
    if si.magic != START_INFO_MAGIC {
        return Err("start info has the wrong magic");
    }
    let page = core::ptr::addr_of!(hypercall_page) as u64;
    if si.hypercall_page != page {
        return Err("the hypervisor filled another page than the note names");
    }
    if si.p2m == 0 || !si.p2m.is_multiple_of(8) || si.nr_pages == 0 || si.nr_pages > 1 << 24 {
        return Err("start info p2m list is malformed");
    }
    // SAFETY: the start info names a p2m list of nr_pages u64s that the
    // hypervisor keeps mapped (read-only) and unchanged for the kernel's
    // life.
    let p2m: &'static [u64] =
        unsafe { core::slice::from_raw_parts(si.p2m as *const u64, si.nr_pages as usize) };
    let scratch = (core::ptr::addr_of!(SCRATCH) as u64, 4096);
    let ops = XEN.call_once(|| XenOps::new(KernelPlatform::new(page, p2m, 0, scratch), layout));
    Ok((ops, si.flags))
}
