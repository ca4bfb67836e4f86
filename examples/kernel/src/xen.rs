//! Running as a 64-bit Xen PV guest: the ELF notes a Xen domain builder
//! needs, Xen's `start_info_t`, the console and shutdown hypercalls, the
//! exception handlers Xen bounces to, and the `XenOps` backend.
//!
//! The same image runs on the real Xen hypervisor (Debian's 4.17, as dom0
//! under QEMU) and under hv-sim's Xen personality, which loads it as Xen's
//! dom0 builder does:
//!
//! * **Notes** (`.note.Xen`, name "Xen"): GUEST_OS (6), LOADER (8)
//!   "generic", XEN_VERSION (5) "xen-3.0", VIRT_BASE (3) 0, PADDR_OFFSET (4)
//!   0, ENTRY (1) = [`xen_start`](crate::xen_start), HYPERCALL_PAGE (2).
//!   Xen refuses an image that has neither LOADER "generic" nor GUEST_OS
//!   "linux". With VIRT_BASE = PADDR_OFFSET = 0 every virtual address of
//!   the initial mapping equals its pseudo-physical address, so pfn = va >>
//!   12 and the p2m list (`start_info.mfn_list`) gives the machine frame.
//! * **Entry**: 64-bit mode, ring 3 on FLAT_KERNEL_CS/SS, rsi = the
//!   `start_info_t` Xen built ([`pvops_xen::abi::StartInfo`]).
//! * **Output**: `console_io(CONSOLEIO_write)`, one hypercall per line.
//!   Port 0xE9 is not used: a PV guest's `out` traps to Xen, which lets it
//!   through only with a virtual IOPL or I/O bitmap granted by
//!   `physdev_op` (and only to dom0), one trap per byte, while the console
//!   hypercall needs no privilege and takes a whole line.
//! * **Exit**: `sched_op(SCHEDOP_shutdown)` with reason poweroff (every
//!   check passed) or crash, after an `exit status N` line.
//! * **Exceptions** arrive as Xen delivers them (`create_bounce_frame` in
//!   Xen's `x86_64/entry.S`): on the kernel stack, rcx and r11 above the
//!   hardware-style frame (`[rcx, r11, (error code), rip, cs, rflags, rsp,
//!   ss]`, cs with its RPL cleared); the handler pops rcx and r11 and
//!   returns by jumping to the `iret` hypercall stub with a zero `flags`
//!   word pushed (Xen's `pv/iret.c`; Linux's `xen_iret`).

use core::arch::{global_asm, naked_asm};
use core::sync::atomic::AtomicU64;

use pvops::GdtLayout;
use pvops_xen::abi::{self, StartInfo};
use pvops_xen::{KernelPlatform, XenOps};

global_asm!(
    r#"
    .pushsection .note.Xen, "a", @note
    .balign 4
    .long 4, 14, 6             /* GUEST_OS */
    .asciz "Xen"
    .asciz "pvops-example"
    .balign 4
    .long 4, 8, 8              /* LOADER */
    .asciz "Xen"
    .asciz "generic"
    .balign 4
    .long 4, 8, 5              /* XEN_VERSION */
    .asciz "Xen"
    .asciz "xen-3.0"
    .balign 4
    .long 4, 8, 3              /* VIRT_BASE */
    .asciz "Xen"
    .quad 0
    .balign 4
    .long 4, 8, 4              /* PADDR_OFFSET */
    .asciz "Xen"
    .quad 0
    .balign 4
    .long 4, 8, 1              /* ENTRY */
    .asciz "Xen"
    .quad xen_start
    .balign 4
    .long 4, 8, 2              /* HYPERCALL_PAGE */
    .asciz "Xen"
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

/// The hypercall page's address.
pub fn page() -> u64 {
    core::ptr::addr_of!(hypercall_page) as u64
}

/// CPUID through Xen's forced-emulation prefix (`ud2; .ascii "xen";
/// cpuid`, Linux's `XEN_EMULATE_PREFIX`): the #UD reaches the hypervisor,
/// which recognises the prefix, emulates `cpuid` with the guest's view and
/// resumes after it. A PV guest always asks this way, as Linux's
/// `xen_cpuid` does: in ring 3 a plain `cpuid` answers with the CPU's own
/// leaves unless the CPU can fault it.
pub struct XenCpuid;

impl pvops::detect::CpuidSource for XenCpuid {
    fn cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4] {
        let (a, b, c, d): (u32, u64, u32, u32);
        // SAFETY: a Xen PV guest's hypervisor emulates the prefixed cpuid
        // (registers only); rbx is saved around it because LLVM reserves it.
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

/// Hypercall `nr` with up to three arguments.
///
/// # Safety
/// The arguments must be valid for hypercall `nr` (pointers to readable or
/// writable memory as it requires).
pub unsafe fn hypercall3(nr: u32, a1: u64, a2: u64, a3: u64) -> i64 {
    // SAFETY: the page is the one the note names, filled by the hypervisor
    // before entry; the caller vouches for the arguments.
    unsafe { pvops_xen::hypercall_page::call(page(), nr, [a1, a2, a3, 0, 0]) }
}

/// Print `bytes` with `console_io(CONSOLEIO_write)`.
pub fn console_write(bytes: &[u8]) {
    // SAFETY: the buffer is readable for its length; Xen only reads it.
    unsafe {
        hypercall3(
            pvops_xen::nr::CONSOLE_IO,
            abi::CONSOLEIO_WRITE,
            bytes.len() as u64,
            bytes.as_ptr() as u64,
        )
    };
}

/// `sched_op(SCHEDOP_shutdown, reason)`; Xen does not return from it.
pub fn shutdown(reason: u32) -> ! {
    let r = reason;
    // SAFETY: `r` lives on this stack for the call; Xen only reads it.
    unsafe {
        hypercall3(
            pvops_xen::nr::SCHED_OP,
            abi::SCHEDOP_SHUTDOWN,
            &r as *const u32 as u64,
            0,
        )
    };
    loop {
        core::hint::spin_loop();
    }
}

/// What the kernel took from Xen's start info.
pub struct Boot {
    /// The start info itself (Xen keeps it mapped for the kernel's life).
    pub si: &'static StartInfo,
    /// The p2m list.
    pub p2m: &'static [u64],
}

/// Read and check the `start_info_t` at `addr` (rsi at entry).
pub fn start_info(addr: u64) -> Result<Boot, &'static str> {
    if addr == 0 || !addr.is_multiple_of(8) {
        return Err("no start info (rsi is 0 or misaligned)");
    }
    // SAFETY: Xen passes the address of its start_info_t in rsi, mapped
    // readable in the initial mapping for the kernel's life; the magic is
    // checked before any other field is trusted.
    let si = unsafe { &*(addr as *const StartInfo) };
    if !si.magic_ok() {
        return Err("start info magic is not \"xen-3.0-x86_64\"");
    }
    if si.mfn_list == 0
        || !si.mfn_list.is_multiple_of(8)
        || si.nr_pages == 0
        || si.nr_pages > 1 << 24
    {
        return Err("start info p2m list (mfn_list, nr_pages) is malformed");
    }
    // SAFETY: Xen maps the p2m list (nr_pages u64 machine frames) in the
    // initial mapping; nothing writes it while the kernel reads it.
    let p2m: &'static [u64] =
        unsafe { core::slice::from_raw_parts(si.mfn_list as *const u64, si.nr_pages as usize) };
    Ok(Boot { si, p2m })
}

#[repr(C, align(4096))]
struct Scratch([u8; 4096]);
/// Argument structures for hypercalls: one page per vCPU (each vCPU's
/// backend uses its own, as the `XenPlatform` contract asks).
static mut SCRATCH: [Scratch; crate::smp::CPUS] = [const { Scratch([0; 4096]) }; crate::smp::CPUS];

/// The p2m list, for the backends of vCPUs that start later.
pub static P2M: spin::Once<&'static [u64]> = spin::Once::new();

/// vCPU `cpu`'s Xen backend over the p2m list (direct map at 0: the
/// initial mapping has va = pseudo-physical address), with its own scratch
/// page. Each vCPU builds (and registers) its own once.
pub fn backend(p2m: &'static [u64], layout: GdtLayout, cpu: usize) -> XenOps<KernelPlatform> {
    let base = core::ptr::addr_of!(SCRATCH) as u64;
    let scratch = (base + 4096 * cpu.min(crate::smp::CPUS - 1) as u64, 4096);
    // SAFETY: `page()` is the hypercall page Xen filled (our ELF note names
    // it); the scratch page is vCPU `cpu`'s own page-aligned static page
    // (the caller builds one backend per vCPU), at the same VA for Xen (we
    // run on Xen's initial mapping); Xen touches only what hypercall
    // arguments name.
    let platform = unsafe { KernelPlatform::new(page(), p2m, 0, scratch) };
    XenOps::new(platform, layout)
}

/// The `iret` hypercall stub: jumped to with `[flags, rip, cs, rflags,
/// rsp, ss]` on the stack; it pushes rcx, r11 and rax.
macro_rules! xen_iret {
    () => {
        "push 0\n jmp hypercall_page + 23 * 32"
    };
}

/// #BP (int3) as Xen bounces it: `[rcx, r11, rip, cs, rflags, rsp, ss]`.
#[unsafe(naked)]
pub extern "C" fn bp_handler() {
    naked_asm!(
        "pop rcx",
        "pop r11",
        "lock inc dword ptr [rip + {c}]",
        xen_iret!(),
        c = sym crate::cpu::BP_COUNT
    )
}

/// The first #UD bounce frame as the handler found it: the cs word
/// (selector and saved event mask), rflags, ss, and the frame's address.
pub static UD_FRAME: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];

/// #UD: record the frame, resume after the 2-byte `ud2`.
#[unsafe(naked)]
pub extern "C" fn ud_handler() {
    naked_asm!(
        "mov [rip + {f} + 24], rsp",
        "pop rcx",
        "pop r11",
        "push rax",
        "mov rax, [rsp + 16]",
        "mov [rip + {f}], rax",
        "mov rax, [rsp + 24]",
        "mov [rip + {f} + 8], rax",
        "mov rax, [rsp + 40]",
        "mov [rip + {f} + 16], rax",
        "pop rax",
        "lock inc dword ptr [rip + {c}]",
        "add qword ptr [rsp], 2",
        xen_iret!(),
        c = sym crate::cpu::UD_COUNT,
        f = sym UD_FRAME
    )
}

/// #GP: `[rcx, r11, error code, rip, ...]`; records the error code and
/// resumes after the 2-byte `mov ds, ax` of `faulting_segment_load`.
#[unsafe(naked)]
pub extern "C" fn gp_handler() {
    naked_asm!(
        "pop rcx",
        "pop r11",
        "push rax",
        "mov rax, [rsp + 8]",
        "mov [rip + {e}], rax",
        "pop rax",
        "add rsp, 8",
        "add qword ptr [rsp], 2",
        "lock inc dword ptr [rip + {c}]",
        xen_iret!(),
        e = sym crate::cpu::GP_ERROR,
        c = sym crate::cpu::GP_COUNT
    )
}

/// #PF: resumes after the 3-byte `mov [rax], rdx` of `direct_store`.
#[unsafe(naked)]
pub extern "C" fn pf_handler() {
    naked_asm!(
        "pop rcx",
        "pop r11",
        "add rsp, 8",
        "add qword ptr [rsp], 3",
        "lock inc dword ptr [rip + {c}]",
        xen_iret!(),
        c = sym crate::cpu::PF_COUNT
    )
}
