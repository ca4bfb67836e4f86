//! The raw instructions the checks use (descriptor-table reads, segment
//! loads, `lar`/`lsl`/`verr`) and the exception handlers with their counters.

use core::arch::{asm, naked_asm};
use core::sync::atomic::{AtomicU32, AtomicU64};

use crate::{KERNEL_CS, KERNEL_DS};

pub(crate) static BP_COUNT: AtomicU32 = AtomicU32::new(0);
pub(crate) static UD_COUNT: AtomicU32 = AtomicU32::new(0);
pub(crate) static GP_COUNT: AtomicU32 = AtomicU32::new(0);
pub(crate) static GP_ERROR: AtomicU64 = AtomicU64::new(0);
pub(crate) static PF_COUNT: AtomicU32 = AtomicU32::new(0);

#[unsafe(naked)]
pub(crate) extern "C" fn bp_handler() {
    naked_asm!("lock inc dword ptr [rip + {c}]", "iretq", c = sym BP_COUNT)
}

#[unsafe(naked)]
pub(crate) extern "C" fn ud_handler() {
    // ud2 is two bytes: resume after it.
    naked_asm!(
        "lock inc dword ptr [rip + {c}]",
        "add qword ptr [rsp], 2",
        "iretq",
        c = sym UD_COUNT
    )
}

#[unsafe(naked)]
pub(crate) extern "C" fn gp_handler() {
    // Error code on the stack; the faulting instruction is the 2-byte
    // `mov ds, ax` (8e d8) of `faulting_segment_load`.
    naked_asm!(
        "push rax",
        "mov rax, [rsp + 8]",
        "mov [rip + {e}], rax",
        "pop rax",
        "add rsp, 8",
        "add qword ptr [rsp], 2",
        "lock inc dword ptr [rip + {c}]",
        "iretq",
        e = sym GP_ERROR,
        c = sym GP_COUNT
    )
}

/// Store `v` at `addr` with the 3-byte `mov [rax], rdx`; a #PF is handled
/// by pf_handler, which skips the store.
///
/// # Safety
/// `addr` must be writable memory, or the fault must be handled.
pub(crate) unsafe fn direct_store(addr: u64, v: u64) {
    // SAFETY: per the contract.
    unsafe { asm!(".byte 0x48, 0x89, 0x10", in("rax") addr, in("rdx") v, options(nostack)) };
}

pub(crate) fn raw_sgdt() -> (u16, u64) {
    let mut b = [0u8; 10];
    // SAFETY: sgdt writes 10 bytes into the buffer.
    unsafe { asm!("sgdt [{0}]", in(reg) b.as_mut_ptr(), options(nostack)) };
    (
        u16::from_le_bytes([b[0], b[1]]),
        u64::from_le_bytes([b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9]]),
    )
}

/// Reload DS and ES (not CS or SS) from the loaded GDT.
pub(crate) fn reload_data_segments(sel: u16) {
    // SAFETY: the selector names a present data segment of the loaded GDT.
    unsafe { asm!("mov ds, {0:x}", "mov es, {0:x}", in(reg) sel, options(nostack)) };
}

pub(crate) fn lar(sel: u16) -> Option<u32> {
    let mut v: u32 = 0;
    let ok: u8;
    // SAFETY: lar only reads the descriptor table and sets ZF.
    unsafe {
        asm!("lar {v:e}, {s:e}", "setz {ok}", s = in(reg) sel as u32, v = inout(reg) v, ok = out(reg_byte) ok, options(nostack))
    };
    (ok != 0).then_some(v)
}

pub(crate) fn lsl(sel: u16) -> Option<u32> {
    let mut v: u32 = 0;
    let ok: u8;
    // SAFETY: lsl only reads the descriptor table and sets ZF.
    unsafe {
        asm!("lsl {v:e}, {s:e}", "setz {ok}", s = in(reg) sel as u32, v = inout(reg) v, ok = out(reg_byte) ok, options(nostack))
    };
    (ok != 0).then_some(v)
}

pub(crate) fn verr(sel: u16) -> bool {
    let ok: u8;
    // SAFETY: verr only reads the descriptor table and sets ZF.
    unsafe {
        asm!("verr {s:x}", "setz {ok}", s = in(reg) sel, ok = out(reg_byte) ok, options(nostack))
    };
    ok != 0
}

pub(crate) fn raw_sidt() -> (u16, u64) {
    let mut b = [0u8; 10];
    // SAFETY: sidt writes 10 bytes into the buffer.
    unsafe { asm!("sidt [{0}]", in(reg) b.as_mut_ptr(), options(nostack)) };
    (
        u16::from_le_bytes([b[0], b[1]]),
        u64::from_le_bytes([b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9]]),
    )
}

pub(crate) fn raw_str() -> u16 {
    let v: u16;
    // SAFETY: reads TR.
    unsafe { asm!("str {0:x}", out(reg) v, options(nomem, nostack)) };
    v
}

pub(crate) fn raw_sldt() -> u16 {
    let v: u16;
    // SAFETY: reads LDTR.
    unsafe { asm!("sldt {0:x}", out(reg) v, options(nomem, nostack)) };
    v
}

pub(crate) fn segs() -> (u16, u16, u16) {
    let (cs, ds, ss): (u16, u16, u16);
    // SAFETY: reads segment registers.
    unsafe {
        asm!("mov {0:x}, cs", "mov {1:x}, ds", "mov {2:x}, ss", out(reg) cs, out(reg) ds, out(reg) ss, options(nomem, nostack))
    };
    (cs, ds, ss)
}

/// Reload CS (far return) and the data segments from the loaded GDT.
///
/// # Safety
/// The GDT must hold a 64-bit code segment at KERNEL_CS and data at KERNEL_DS.
pub(crate) unsafe fn reload_segments() {
    // SAFETY: per the contract; the far return lands on the next label.
    unsafe {
        asm!(
            "push {cs}",
            "lea {tmp}, [rip + 2f]",
            "push {tmp}",
            "retfq",
            "2:",
            "mov {ds:e}, {dsv}",
            "mov ds, {ds:x}",
            "mov es, {ds:x}",
            "mov ss, {ds:x}",
            cs = const KERNEL_CS as u64,
            dsv = const KERNEL_DS as u32,
            tmp = out(reg) _,
            ds = out(reg) _,
        )
    };
}

/// Load DS with a selector past the GDT: #GP(selector) into gp_handler,
/// which skips the instruction. Then restore DS.
pub(crate) fn faulting_segment_load(sel: u16) {
    // SAFETY: the fault is handled by gp_handler, which resumes after the
    // 2-byte `mov ds, ax`; DS is restored afterwards.
    unsafe {
        asm!(
            ".byte 0x8e, 0xd8", // mov ds, ax
            "mov ds, {kds:x}",
            in("ax") sel,
            kds = in(reg) KERNEL_DS,
            options(nostack)
        )
    };
}

/// Read 8 bytes at FS:0.
pub(crate) fn read_fs0(sel: u16) -> u64 {
    let v: u64;
    // SAFETY: FS is loaded with a present data segment whose base points at
    // TLS_PROBE; FS is reset to null afterwards.
    unsafe {
        asm!(
            "mov fs, {s:x}",
            "mov {v}, qword ptr fs:[0]",
            "mov fs, {z:x}",
            s = in(reg) sel,
            z = in(reg) 0u16,
            v = out(reg) v,
            options(nostack, readonly)
        )
    };
    v
}
