//! The differential battery: a seeded sequence of raw hypercalls, valid and
//! hostile mixed, with one line per call of what the guest can observe.
//! The same image runs it on the real Xen hypervisor and on hv-sim; the two
//! outputs must agree line for line (hv-sim's `differential` module
//! compares them).
//!
//! Command line: `battery seed=<u64> count=<n>`.
//!
//! Every call works on eight pages of this kernel's own memory (`P0`..`P7`)
//! and a few frames in other states: the L4 page table Xen built (`PT`), a
//! machine frame just past the domain's (`FOREIGN`), one far out of range
//! (`FAR`), and the live L1 entry that maps `P<i>` (`LIVE(P<i>)`, in the
//! L1 Xen's builder made). Lines name them symbolically, never by machine
//! address, so the two hypervisors' different frame numbers do not show:
//!
//! `b <i> <call and its arguments> = <result> d=<digest> p=<probes>`
//!
//! * result: the hypercall's return value (`multicall`: each entry's
//!   result too; the composite MMU calls print their steps' results in
//!   the line and `done` where they pass one);
//! * digest: FNV-1a over slots 0–31 of every page `P0`..`P7`, read
//!   directly (what Xen's fix-ups left in the guest's frames), with the
//!   accessed bit of present code/data descriptors left out (the CPU sets
//!   it when a probe loads the selector, not the hypervisor), and with a
//!   page-table entry's frame number replaced by the name of the frame
//!   (the pages above, `PT`, the live L1s, L2 and L3), as the two
//!   hypervisors give the same page different machine frame numbers;
//! * probes: loading FS from GDT slot `k` and from LDT slot `k` (for a `k`
//!   the sequence picks), each `ok` or the fault (`v<vector>:<error
//!   code>`), which shows the effective GDT and LDT, including the lazy
//!   LDT mapping and its fault.
//!
//! Four calls in ten are MMU calls (see [`mmu_step`]): page tables written
//! into the pages directly, pinned, unpinned, updated with `mmu_update`,
//! base pointers, the MULTI flushes, page commands. A store into a page
//! that is a pinned L1 does not always fault on Xen: Xen emulates it as a
//! validated entry update, and the line shows that.
//!
//! The sequence comes from SplitMix64 (Steele, Lea and Flood, 2014): the
//! same seed must give the same calls on every build, which a pinned
//! five-line generator guarantees and a general-purpose RNG crate's
//! version changes would not.

use core::arch::{asm, naked_asm};
use core::fmt::Write;
use core::sync::atomic::{AtomicU64, Ordering};

use pvops_xen::nr;

use crate::say;
use crate::xen::{self, hypercall3};

/// Pages the battery works on.
#[repr(C, align(4096))]
struct Pages([[u64; 512]; 8]);
static mut PAGES: Pages = Pages([[0; 512]; 8]);

/// Argument structures (frame lists, trap tables, multicall lists).
#[repr(C, align(4096))]
struct Args([u64; 512]);
static mut ARGS: Args = Args([0; 512]);
/// The MMU calls' arguments: `mmu_update` requests and `mmuext_op`s from
/// word 0, a vCPU bitmap at [`BITMAP`], `done` at [`DONE`].
static mut MMU_ARGS: Args = Args([0; 512]);
/// Word of [`MMU_ARGS`] holding the vCPU bitmap.
const BITMAP: usize = 480;
/// Word of [`MMU_ARGS`] `done` is written to.
const DONE: usize = 500;
/// What [`DONE`] holds before a call (so a partial write shows).
const DONE_BEFORE: u64 = 0x5555_5555_5555_5555;

/// `__HYPERVISOR_mmu_update`.
const MMU_UPDATE: u32 = 1;
/// MMUEXT commands (`public/xen.h`).
const PIN_L1_TABLE: u64 = 0;
const UNPIN_TABLE: u64 = 4;
const NEW_BASEPTR: u64 = 5;
const TLB_FLUSH_LOCAL: u64 = 6;
const INVLPG_LOCAL: u64 = 7;
const TLB_FLUSH_MULTI: u64 = 8;
const INVLPG_MULTI: u64 = 9;
const TLB_FLUSH_ALL: u64 = 10;
const INVLPG_ALL: u64 = 11;
const FLUSH_CACHE: u64 = 12;
const NEW_USER_BASEPTR: u64 = 15;
const CLEAR_PAGE: u64 = 16;
const COPY_PAGE: u64 = 17;
const FLUSH_CACHE_GLOBAL: u64 = 18;
/// DOMID_SELF, DOMID_IO, DOMID_XEN, DOMID_COW.
const DOMID_SELF: u64 = 0x7ff0;
const DOMID_IO: u64 = 0x7ff1;
const DOMID_XEN: u64 = 0x7ff2;
const DOMID_COW: u64 = 0x7ff3;
/// The frame-number bits of a page-table entry.
const PTE_FRAME: u64 = 0x000f_ffff_ffff_f000;

/// Where a probe resumes after a fault, and what the fault was
/// (`1 << 63 | vector << 32 | error code`, 0 for none).
static PROBE_RESUME: AtomicU64 = AtomicU64::new(0);
static PROBE_FAULT: AtomicU64 = AtomicU64::new(0);

macro_rules! probe_handler {
    ($name:ident, $vector:expr, $errcode:expr) => {
        /// A battery probe's fault: record it, resume at `PROBE_RESUME`.
        #[unsafe(naked)]
        pub extern "C" fn $name() {
            naked_asm!(
                "pop rcx",
                "pop r11",
                "push rax",
                "push rdx",
                // [rsp] = rdx, [rsp + 8] = rax, [rsp + 16] = error code
                // (if any), then rip.
                ".if {ec}",
                "mov eax, dword ptr [rsp + 16]",
                ".else",
                "xor eax, eax",
                ".endif",
                "mov edx, (1 << 31) | {v}",
                "shl rdx, 32",
                "or rax, rdx",
                "mov [rip + {f}], rax",
                "mov rax, [rip + {r}]",
                "mov [rsp + 16 + 8 * {ec}], rax",
                "pop rdx",
                "pop rax",
                ".if {ec}",
                "add rsp, 8",
                ".endif",
                "push 0",
                "jmp hypercall_page + 23 * 32",
                ec = const $errcode,
                v = const $vector,
                f = sym PROBE_FAULT,
                r = sym PROBE_RESUME,
            )
        }
    };
}

probe_handler!(probe_ud, 6, 0);
probe_handler!(probe_ts, 10, 1);
probe_handler!(probe_np, 11, 1);
probe_handler!(probe_ss, 12, 1);
probe_handler!(probe_gp, 13, 1);
probe_handler!(probe_pf, 14, 1);

/// Load FS with `sel` (then null): 0, or the fault.
fn probe_load_fs(sel: u16) -> u64 {
    PROBE_FAULT.store(0, Ordering::SeqCst);
    // SAFETY: a faulting load is caught by the probe handlers, which resume
    // at label 2; FS is reset to null either way.
    unsafe {
        asm!(
            "lea {t}, [rip + 2f]",
            "mov [rip + {r}], {t}",
            "mov fs, {s:x}",
            "2:",
            "xor {t:e}, {t:e}",
            "mov fs, {t:x}",
            t = out(reg) _,
            s = in(reg) sel,
            r = sym PROBE_RESUME,
            options(nostack)
        )
    };
    PROBE_FAULT.load(Ordering::SeqCst)
}

/// Store `v` at `addr`: 0, or the fault.
fn probe_store(addr: u64, v: u64) -> u64 {
    PROBE_FAULT.store(0, Ordering::SeqCst);
    // SAFETY: `addr` is one of the battery's pages (mapped, maybe
    // read-only); a fault is caught and resumes at label 2.
    unsafe {
        asm!(
            "lea {t}, [rip + 2f]",
            "mov [rip + {r}], {t}",
            "mov [{a}], {v}",
            "2:",
            t = out(reg) _,
            a = in(reg) addr,
            v = in(reg) v,
            r = sym PROBE_RESUME,
            options(nostack)
        )
    };
    PROBE_FAULT.load(Ordering::SeqCst)
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
}

/// A frame the calls can name.
#[derive(Clone, Copy)]
enum Frame {
    P(usize),
    Pt,
    Foreign,
    Far,
    /// The bootstrap L1 that maps `P<i>` (Xen's initial mapping).
    Live(usize),
}

struct Env {
    p2m: &'static [u64],
    pt_base: u64,
    foreign: u64,
    /// For each `P<i>`: the machine frame of the live L1 mapping it, and
    /// the slot.
    live: [(u64, u64); 8],
    /// The live L3 and L2 above `P0` (named in the digest only: a page
    /// copied from `PT` holds the L3's frame).
    upper: [u64; 2],
}

impl Env {
    fn va(i: usize) -> u64 {
        // SAFETY: only the address is taken.
        unsafe { core::ptr::addr_of!(PAGES.0[i]) as u64 }
    }
    fn mfn(&self, f: Frame) -> u64 {
        let of = |va: u64| self.p2m.get((va >> 12) as usize).copied().unwrap_or(0);
        match f {
            Frame::P(i) => of(Self::va(i)),
            Frame::Pt => of(self.pt_base),
            Frame::Foreign => self.foreign,
            Frame::Far => 1 << 36,
            Frame::Live(i) => self.live[i].0,
        }
    }

    /// The live L1 mapping `va` (machine frame, slot), found by walking the
    /// bootstrap tables from `pt_base` (each table is read where the
    /// initial mapping maps it: VA = pfn << 12).
    fn walk(&self, va: u64) -> Option<(u64, u64)> {
        self.walk_upper(va).map(|(l1, _)| (l1, (va >> 12) & 511))
    }

    /// The live L1 mapping `va` and the L3 and L2 above it.
    fn walk_upper(&self, va: u64) -> Option<(u64, [u64; 2])> {
        let mut table = self.pt_base;
        let mut mfn = 0;
        let mut upper = [0; 2];
        for level in [4u64, 3, 2] {
            let slot = (va >> (12 + 9 * (level - 1))) & 511;
            // SAFETY: `table` is a bootstrap page table, mapped read-only.
            let e = unsafe { core::ptr::read_volatile((table + slot * 8) as *const u64) };
            if e & 1 == 0 {
                return None;
            }
            mfn = (e & PTE_FRAME) >> 12;
            if level > 2 {
                upper[4 - level as usize] = mfn;
            }
            let pfn = self.p2m.iter().position(|&m| m == mfn)?;
            table = (pfn as u64) << 12;
        }
        Some((mfn, upper))
    }
}

struct Name(Frame);

impl core::fmt::Display for Name {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            Frame::P(i) => write!(f, "P{i}"),
            Frame::Pt => f.write_str("PT"),
            Frame::Foreign => f.write_str("FOREIGN"),
            Frame::Far => f.write_str("FAR"),
            Frame::Live(i) => write!(f, "LIVE(P{i})"),
        }
    }
}

/// Output, flushed to the console in large pieces.
struct Out {
    buf: [u8; 3072],
    len: usize,
}

impl Write for Out {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for &b in s.as_bytes() {
            if self.len == self.buf.len() {
                // A line longer than the buffer (never, with these calls).
                self.flush();
            }
            self.buf[self.len] = b;
            self.len += 1;
            // Hand Xen whole lines only, so its own messages never land in
            // the middle of one.
            if b == b'\n' && self.len > self.buf.len() - 512 {
                self.flush();
            }
        }
        Ok(())
    }
}

impl Out {
    fn flush(&mut self) {
        if self.len > 0 {
            xen::console_write(&self.buf[..self.len]);
            self.len = 0;
        }
    }
}

fn frame(r: &mut Rng) -> Frame {
    match r.below(16) {
        0 => Frame::Pt,
        1 => Frame::Foreign,
        2 => Frame::Far,
        _ => Frame::P(r.below(8) as usize),
    }
}

/// A descriptor from the shapes that matter: code/data of every kind and
/// DPL, system types, call gates to every kind of selector.
fn descriptor(r: &mut Rng) -> u64 {
    let base_limit = |r: &mut Rng| {
        let x = r.next() & 0xffff_ffff;
        let base = r.pick(&[0u64, 0x1000, 0xdead_b000, x]);
        let x = r.next() & 0xfffff;
        let limit = r.pick(&[0xfffffu64, 0xfff, 0, x]);
        (limit & 0xffff)
            | (base & 0xff_ffff) << 16
            | ((limit >> 16) & 0xf) << 48
            | (base >> 24) << 56
    };
    match r.below(10) {
        0 => 0,
        1 => r.next(),
        2..=5 => {
            // Code/data: type, S, DPL, P, AVL/L/D/G.
            let typ = r.below(16);
            let dpl = r.below(4);
            let p = u64::from(r.below(8) != 0);
            let x = r.below(16);
            let flags = r.pick(&[0xcu64, 0xa, 0x4, 0x8, 0xe, x]);
            base_limit(r) | (typ | 0x10 | dpl << 5 | p << 7) << 40 | flags << 52
        }
        6 => {
            // System descriptor of any type.
            let typ = r.below(16);
            let dpl = r.below(4);
            base_limit(r) | (typ | dpl << 5 | 0x80) << 40
        }
        _ => {
            // Call gate (low half): selector, DPL, params, P.
            let sel = r.pick(&[
                0xe033u64, 0xe030, 0xe008, 0xe019, 0x10, 0x13, 0x1c, 0x1f, 0x7f8, 0xdff8, 0xe000,
                0xfff8, 0x4,
            ]);
            let sel = if r.below(4) == 0 {
                r.below(0x10000)
            } else {
                sel
            };
            let dpl = r.below(4);
            let params = r.pick(&[0u64, 0, 0, 1, 31]);
            let p = u64::from(r.below(8) != 0);
            let off = r.next() & 0xffff_0000_ffff;
            off | sel << 16 | params << 32 | (0xc | dpl << 5 | p << 7) << 40
        }
    }
}

/// The maddr for `(frame, slot)`, sometimes misaligned.
fn slot_maddr(e: &Env, r: &mut Rng, f: Frame) -> (u64, u64, bool) {
    let slot = r.below(32);
    let mis = r.below(24) == 0;
    (
        (e.mfn(f) << 12) | (slot * 8) | if mis { 3 } else { 0 },
        slot,
        mis,
    )
}

/// `v` with a frame number the battery can name (P0..P7, PT, FOREIGN,
/// FAR, the live L1s, the live L3 and L2) replaced by that name's number:
/// page-table entries hold machine frame numbers, which differ between the
/// two hypervisors.
fn symbolic(e: &Env, v: u64) -> u64 {
    let f = (v & PTE_FRAME) >> 12;
    let names = (0..8)
        .map(Frame::P)
        .chain([Frame::Pt, Frame::Foreign, Frame::Far])
        .chain((0..8).map(Frame::Live));
    for (k, n) in names.enumerate() {
        if e.mfn(n) == f {
            return (v & !PTE_FRAME) | (0xf_ffff_ff00 + k as u64) << 12;
        }
    }
    for (k, m) in e.upper.iter().enumerate() {
        if *m == f {
            return (v & !PTE_FRAME) | (0xf_ffff_ff80 + k as u64) << 12;
        }
    }
    v
}

fn digest(e: &Env) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for i in 0..8 {
        for s in 0..32 {
            // SAFETY: the battery's pages are always mapped readable.
            let v = unsafe { core::ptr::read_volatile(core::ptr::addr_of!(PAGES.0[i][s])) };
            let v = symbolic(e, v);
            // The accessed bit of a present code/data descriptor is the
            // CPU's (set when a selector is loaded), not the hypervisor's.
            let v = if v & (1 << 44 | 1 << 47) == 1 << 44 | 1 << 47 {
                v & !(1 << 40)
            } else {
                v
            };
            for b in v.to_le_bytes() {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x100_0000_01b3);
            }
        }
    }
    h
}

struct Fault(u64);

impl core::fmt::Display for Fault {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        if self.0 == 0 {
            f.write_str("ok")
        } else {
            write!(f, "v{}:{:x}", (self.0 >> 32) & 0xff, self.0 as u32)
        }
    }
}

/// Fill one `multicall_entry` at `ARGS[8 * k]` with a random sub-call and
/// describe it.
fn mc_entry(e: &Env, r: &mut Rng, out: &mut Out, k: usize) {
    let (op, a): (u64, [u64; 4]) = match r.below(6) {
        0 => {
            let f = frame(r);
            let (m, s, mis) = slot_maddr(e, r, f);
            let d = descriptor(r);
            let _ = write!(
                out,
                " update_descriptor({}[{s}]{} {d:#x})",
                Name(f),
                if mis { "+3" } else { "" }
            );
            (nr::UPDATE_DESCRIPTOR as u64, [m, d, 0, 0])
        }
        1 => {
            let i = r.below(8) as usize;
            let rw = r.below(2);
            let _ = write!(out, " update_va_mapping(P{i} rw={rw})");
            (
                nr::UPDATE_VA_MAPPING as u64,
                [Env::va(i), e.mfn(Frame::P(i)) << 12 | 1 | rw << 1 | 4, 0, 0],
            )
        }
        2 => {
            let ss = r.pick(&[0xe02bu64, 0x18, 0]);
            let _ = write!(out, " stack_switch({ss:#x})");
            (nr::STACK_SWITCH as u64, [ss, 0x20_0000, 0, 0])
        }
        3 => {
            let _ = write!(out, " multicall(nested)");
            (nr::MULTICALL as u64, [0, 0, 0, 0])
        }
        4 => {
            let _ = write!(out, " hypercall(999)");
            (999, [0; 4])
        }
        _ => {
            let which = r.below(4);
            let _ = write!(out, " set_segment_base({which} 0)");
            (nr::SET_SEGMENT_BASE as u64, [which, 0, 0, 0])
        }
    };
    // SAFETY: ARGS is this vCPU's argument area; k < 4 keeps it in bounds.
    unsafe {
        let w = core::ptr::addr_of_mut!(ARGS.0[k * 8]);
        for (j, v) in [op, 0, a[0], a[1], a[2], a[3], 0, 0]
            .into_iter()
            .enumerate()
        {
            w.add(j).write_volatile(v);
        }
    }
}

/// Run the battery: `count` calls from `seed`.
pub fn run(seed: u64, count: u64, dump: bool, p2m: &'static [u64], pt_base: u64) -> u64 {
    let foreign = p2m
        .iter()
        .copied()
        .filter(|&m| m != u64::MAX)
        .max()
        .unwrap_or(0)
        + 1;
    let mut e = Env {
        p2m,
        pt_base,
        foreign,
        live: [(0, 0); 8],
        upper: [0; 2],
    };
    for i in 0..8 {
        e.live[i] = e.walk(Env::va(i)).unwrap_or((0, 0));
    }
    e.upper = e.walk_upper(Env::va(0)).map_or([0; 2], |(_, u)| u);
    // The probe handlers, through a trap table of our own.
    let handlers: [(u8, extern "C" fn()); 6] = [
        (6, probe_ud),
        (10, probe_ts),
        (11, probe_np),
        (12, probe_ss),
        (13, probe_gp),
        (14, probe_pf),
    ];
    let mut ti = [0u64; 2 * 7];
    for (k, (v, h)) in handlers.iter().enumerate() {
        ti[2 * k] = u64::from(*v) | (0x33u64 << 16);
        ti[2 * k + 1] = *h as usize as u64;
    }
    // SAFETY: a trap_info list ending with a zero address.
    let r = unsafe { hypercall3(nr::SET_TRAP_TABLE, ti.as_ptr() as u64, 0, 0) };
    say!("battery: seed {seed} count {count}: probe handlers {r}\n");
    let mut rng = Rng(seed);
    let mut out = Out {
        buf: [0; 3072],
        len: 0,
    };
    let mut agree_hash: u64 = 0xcbf2_9ce4_8422_2325;
    for i in 0..count {
        let _ = write!(out, "b {i}");
        let result = step(&e, &mut rng, &mut out);
        let k = 1 + rng.below(31) as u16;
        let pg = probe_load_fs(k << 3 | 3);
        let pl = probe_load_fs(k << 3 | 7);
        let d = digest(&e);
        let _ = writeln!(
            out,
            " = {result} d={d:016x} p={k}:{},{}",
            Fault(pg),
            Fault(pl)
        );
        agree_hash = (agree_hash ^ d ^ pg ^ pl.rotate_left(17) ^ result as u64)
            .wrapping_mul(0x100_0000_01b3);
    }
    if dump {
        for p in 0..8 {
            for s in 0..32 {
                // SAFETY: the battery's pages are always mapped readable.
                let v = unsafe { core::ptr::read_volatile(core::ptr::addr_of!(PAGES.0[p][s])) };
                let v = symbolic(&e, v);
                if v != 0 {
                    let _ = writeln!(out, "dump P{p}[{s}] = {v:#018x}");
                }
            }
        }
    }
    out.flush();
    agree_hash
}

/// One call; returns its result and writes its description.
fn step(e: &Env, r: &mut Rng, out: &mut Out) -> i64 {
    let args = |k: usize| {
        // SAFETY: only the address is taken.
        unsafe { core::ptr::addr_of_mut!(ARGS.0[k]) }
    };
    let zero_args = || {
        for k in 0..512 {
            // SAFETY: ARGS is this vCPU's argument area.
            unsafe { args(k).write_volatile(0) };
        }
    };
    // Four calls in ten are the MMU calls.
    if r.below(10) < 4 {
        return mmu_step(e, r, out);
    }
    // SAFETY (all hypercalls below): their pointer arguments name ARGS or
    // the battery's pages, which stay mapped; the hypervisor validates
    // everything else, which is what the battery tests.
    match r.below(100) {
        0..=29 => {
            let f = frame(r);
            let (m, s, mis) = slot_maddr(e, r, f);
            let d = descriptor(r);
            let _ = write!(
                out,
                " update_descriptor({}[{s}]{} {d:#018x})",
                Name(f),
                if mis { "+3" } else { "" }
            );
            unsafe { hypercall3(nr::UPDATE_DESCRIPTOR, m, d, 0) }
        }
        30..=39 => {
            // A direct store into a page (faults if it is read-only).
            let i = r.below(8) as usize;
            let s = r.below(32);
            let d = descriptor(r);
            let _ = write!(out, " store(P{i}[{s}] {d:#018x})");
            // An update_va_mapping without a flush may leave a stale
            // writable TLB entry: the CPU's business, not the
            // hypervisor's. Flush this page first (MMUEXT_INVLPG_LOCAL), as
            // a guest that relies on the new mapping must.
            zero_args();
            unsafe {
                args(0).write_volatile(7);
                args(1).write_volatile(Env::va(i));
                pvops_xen::hypercall_page::call(
                    xen::page(),
                    nr::MMUEXT_OP,
                    [args(0) as u64, 1, 0, pvops_xen::abi::DOMID_SELF, 0],
                )
            };
            let f = probe_store(Env::va(i) + s * 8, d);
            if f == 0 {
                0
            } else {
                -((f >> 32) as i64 & 0xff)
            }
        }
        40..=49 => {
            zero_args();
            let n = 1 + r.below(2);
            let _ = write!(out, " set_gdt([");
            for k in 0..n {
                let f = frame(r);
                let _ = write!(out, "{}{}", if k > 0 { " " } else { "" }, Name(f));
                // SAFETY: in bounds.
                unsafe { args(k as usize).write_volatile(e.mfn(f)) };
            }
            let x = 1 + r.below(1024);
            let ents = r.pick(&[0u64, 1, 16, 32, 512, 513, 1024, 7168, 7169, x]);
            let _ = write!(out, "] {ents})");
            unsafe { hypercall3(nr::SET_GDT, args(0) as u64, ents, 0) }
        }
        50..=57 => {
            zero_args();
            let i = r.below(8);
            let linear = match r.below(8) {
                0 => 8 + Env::va(i as usize),
                1 => 0xffff_8000_0000_0000,
                2 => 0x8000_0000_0000,
                3 => 0,
                _ => Env::va(i as usize),
            };
            let ents = r.pick(&[0u64, 1, 16, 32, 512, 513, 8192, 8193]);
            let what = match linear {
                0 => "0",
                0xffff_8000_0000_0000 => "XEN",
                0x8000_0000_0000 => "NONCANON",
                a if a & 0xfff != 0 => "P+8",
                _ => "P",
            };
            // foreigndom: DOMID_SELF, or a numeric id (0 is dom0's own).
            let dom = r.pick(&[
                pvops_xen::abi::DOMID_SELF,
                pvops_xen::abi::DOMID_SELF,
                pvops_xen::abi::DOMID_SELF,
                0,
                1,
            ]);
            let _ = write!(
                out,
                " set_ldt({what}{} {ents} dom={dom:#x})",
                if what.starts_with('P') { i } else { 0 }
            );
            // mmuext_op { cmd, arg1, arg2 }.
            unsafe {
                args(0).write_volatile(u64::from(pvops_xen::abi::MMUEXT_SET_LDT));
                args(1).write_volatile(linear);
                args(2).write_volatile(ents);
                pvops_xen::hypercall_page::call(
                    xen::page(),
                    nr::MMUEXT_OP,
                    [args(0) as u64, 1, 0, dom, 0],
                )
            }
        }
        58..=71 => {
            let i = r.below(8) as usize;
            let bits = r.pick(&[
                0x7u64,
                0x5,
                0x7,
                0x5,
                0x27,
                0x67,
                0x15,
                0x1d,
                0x107,
                1 << 62 | 7,
                1 << 63 | 7,
                1 << 52 | 7,
            ]);
            let flags = r.pick(&[0u64, 1, 2]);
            let _ = write!(out, " update_va_mapping(P{i} {bits:#x} {flags})");
            let pte = e.mfn(Frame::P(i)) << 12 | bits;
            // The 4th argument of the 64-bit ABI is r10: unused here.
            unsafe { hypercall3(nr::UPDATE_VA_MAPPING, Env::va(i), pte, flags) }
        }
        72..=79 => {
            zero_args();
            let n = 1 + r.below(4) as usize;
            let _ = write!(out, " multicall(");
            for k in 0..n {
                mc_entry(e, r, out, k);
            }
            let res = unsafe { hypercall3(nr::MULTICALL, args(0) as u64, n as u64, 0) };
            let _ = write!(out, " ) results");
            for k in 0..n {
                // SAFETY: in bounds.
                let v = unsafe { args(k * 8 + 1).read_volatile() } as i64;
                let _ = write!(out, " {v}");
            }
            res
        }
        80..=87 => {
            zero_args();
            let n = r.below(3) as usize;
            let _ = write!(out, " set_trap_table(");
            for k in 0..n {
                let v = r.pick(&[0u64, 1, 2, 5, 7, 9, 16, 17, 18, 19, 0x20, 0x80, 0xff]);
                let cs = r.pick(&[0x10u64, 0xe033, 0xe030, 0xe008, 0]);
                let fl = r.below(8);
                let a = r.pick(&[
                    0x20_1000u64,
                    0x8000_0000_0000,
                    0xffff_8000_0000_1000,
                    0x20_2000,
                ]);
                let _ = write!(out, " {v}/{cs:#x}/{fl}/{a:#x}");
                // SAFETY: in bounds.
                unsafe {
                    args(2 * k).write_volatile(v | fl << 8 | cs << 16);
                    args(2 * k + 1).write_volatile(a);
                }
            }
            let _ = write!(out, " )");
            unsafe { hypercall3(nr::SET_TRAP_TABLE, args(0) as u64, 0, 0) }
        }
        88..=93 => {
            let ss = r.pick(&[0xe02bu64, 0xe02b, 0x18, 0x1b, 0, 0xe033]);
            let sp = r.pick(&[0x20_0000u64, 0x8000_0000_0000, 0]);
            let _ = write!(out, " stack_switch({ss:#x} {sp:#x})");
            unsafe { hypercall3(nr::STACK_SWITCH, ss, sp, 0) }
        }
        _ => {
            let which = r.below(5);
            let base = r.pick(&[0u64, 0x1000, 0x8000_0000_0000, 0xffff_8800_0000_0000, 0x1b]);
            let _ = write!(out, " set_segment_base({which} {base:#x})");
            unsafe { hypercall3(nr::SET_SEGMENT_BASE, which, base, 0) }
        }
    }
}

// ---------------------------------------------------------------------------
// The MMU calls: guest-built page tables, pins, mmu_update, base pointers,
// the MULTI flushes, page commands.
//
// None of them may take the kernel's mappings away: `mmu_update` of a live
// L1 entry (`LIVE(P<i>)`) only ever maps `P<i>`'s own frame again, the live
// L4 (`PT`) is only written at slots other than 0 (which maps the kernel),
// and a battery page is only offered as an L4 (PIN_L4_TABLE, NEW_BASEPTR,
// NEW_USER_BASEPTR) right after it was mapped writable, so Xen must refuse
// it: no battery page ever becomes a root (and none gets Xen's own L4 slots
// written into it).

/// Word `k` of [`MMU_ARGS`].
fn mmu_word(k: usize) -> *mut u64 {
    // SAFETY: only the address is taken.
    unsafe { core::ptr::addr_of_mut!(MMU_ARGS.0[k]) }
}

/// `mmuext_op(ops, n, pdone, dom)` with `ops` (cmd, arg1, arg2) written to
/// [`MMU_ARGS`].
fn mmuext(ops: &[(u64, u64, u64)], pdone: u64, dom: u64) -> i64 {
    for (k, &(cmd, a1, a2)) in ops.iter().enumerate() {
        // SAFETY: in bounds (a few ops).
        unsafe {
            mmu_word(3 * k).write_volatile(cmd);
            mmu_word(3 * k + 1).write_volatile(a1);
            mmu_word(3 * k + 2).write_volatile(a2);
        }
    }
    // SAFETY: the ops and `done` are in MMU_ARGS; the hypervisor checks the
    // rest.
    unsafe {
        pvops_xen::hypercall_page::call(
            xen::page(),
            nr::MMUEXT_OP,
            [mmu_word(0) as u64, ops.len() as u64, pdone, dom, 0],
        )
    }
}

/// `update_va_mapping` of `P<i>` to its own frame with `bits`, flushing
/// that address (UVMF_INVLPG).
fn remap(e: &Env, i: usize, bits: u64) -> i64 {
    // SAFETY: P<i>'s address keeps mapping P<i>'s frame.
    unsafe {
        hypercall3(
            nr::UPDATE_VA_MAPPING,
            Env::va(i),
            e.mfn(Frame::P(i)) << 12 | bits,
            2,
        )
    }
}

/// A `foreigndom` for `mmuext_op`: mostly DOMID_SELF.
fn foreigndom(r: &mut Rng) -> u64 {
    match r.below(16) {
        0 => DOMID_IO,
        1 => DOMID_XEN,
        2 => 0,
        3 => 1,
        4 => DOMID_COW,
        _ => DOMID_SELF,
    }
}

/// Flags of an L1 entry: kernel/user, read-only/writable, the cache
/// attributes, G, NX, software bits, not present.
fn l1_flags(r: &mut Rng) -> u64 {
    r.pick(&[
        0x1u64,
        0x3,
        0x5,
        0x7,
        0x25,
        0x67,
        0x11,
        0x81,
        0x101,
        0x203,
        1 << 63 | 0x5,
        1 << 62 | 0x5,
        1 << 52 | 0x7,
        0x2,
        0x0,
    ])
}

/// Flags of an upper-level entry: read-only (a linear map when it names a
/// table of the same level), writable, PSE, G, NX, not present.
fn ln_flags(r: &mut Rng) -> u64 {
    r.pick(&[
        0x7u64,
        0x67,
        0x5,
        0x25,
        0x1,
        0x83,
        0x105,
        0x3 | 1 << 63,
        0x3,
        0x4,
        0x0,
    ])
}

/// `done` before the call, and its name for the line.
fn pdone_kind(r: &mut Rng) -> (u64, &'static str) {
    // SAFETY: in bounds.
    unsafe { mmu_word(DONE).write_volatile(DONE_BEFORE) };
    match r.below(4) {
        0 => (0, "-"),
        1 => (0x4000_0000_0000, "unmapped"),
        _ => (mmu_word(DONE) as u64, "d"),
    }
}

fn print_done(out: &mut Out, kind: &str) {
    if kind == "d" {
        // SAFETY: in bounds.
        let v = unsafe { mmu_word(DONE).read_volatile() };
        let _ = write!(out, " done={v:#x}");
    }
}

/// One of the MMU calls; returns its result and writes its description.
fn mmu_step(e: &Env, r: &mut Rng, out: &mut Out) -> i64 {
    match r.below(23) {
        0..=4 => table_op(e, r, out),
        20 | 21 => tree_op(e, r, out),
        22 => {
            // Unpin every battery page (one call each): frees what earlier
            // calls left pinned.
            let _ = write!(out, " unpin_all(");
            for i in 0..8 {
                let rc = mmuext(&[(UNPIN_TABLE, e.mfn(Frame::P(i)), 0)], 0, DOMID_SELF);
                let _ = write!(out, "{}{rc}", if i > 0 { " " } else { "" });
            }
            let _ = write!(out, ")");
            0
        }
        5..=8 => {
            // Pin a frame as an L1..L3 (mostly read-only first; sometimes
            // writable first), or as an L4 (writable first, so that Xen
            // must refuse it).
            let level = r.pick(&[1u64, 1, 1, 2, 2, 3, 4]);
            let f = frame(r);
            let dom = foreigndom(r);
            let pre = match (f, r.below(8)) {
                (Frame::P(i), _) if level == 4 => Some((i, 7)),
                (Frame::P(i), 0) => Some((i, 7)),
                (Frame::P(_), 1) => None,
                (Frame::P(i), _) => Some((i, 5)),
                _ => None,
            };
            let _ = write!(out, " pin(L{level} {} dom={dom:#x})", Name(f));
            if let Some((i, bits)) = pre {
                let rc = remap(e, i, bits);
                let _ = write!(out, " {}={rc}", if bits & 2 != 0 { "rw" } else { "ro" });
            }
            mmuext(&[(PIN_L1_TABLE + level - 1, e.mfn(f), 0)], 0, dom)
        }
        9..=10 => {
            let f = frame(r);
            let dom = foreigndom(r);
            let _ = write!(out, " unpin({} dom={dom:#x})", Name(f));
            mmuext(&[(UNPIN_TABLE, e.mfn(f), 0)], 0, dom)
        }
        11 => {
            // Pin twice, or pin and unpin twice, in one call: `done` shows
            // where it stopped.
            let level = r.pick(&[1u64, 1, 2]);
            let f = frame(r);
            let kind = r.below(3);
            let (pd, pk) = pdone_kind(r);
            let pin = (PIN_L1_TABLE + level - 1, e.mfn(f), 0);
            let unpin = (UNPIN_TABLE, e.mfn(f), 0);
            let ops: &[(u64, u64, u64)] = match kind {
                0 => &[pin, pin],
                1 => &[pin, unpin, unpin],
                _ => &[unpin, pin, pin],
            };
            let names = ["pin pin", "pin unpin unpin", "unpin pin pin"];
            let _ = write!(
                out,
                " batch({} L{level} {} done={pk})",
                names[kind as usize],
                Name(f)
            );
            if let Frame::P(i) = f {
                let rc = remap(e, i, 5);
                let _ = write!(out, " ro={rc}");
            }
            let rc = mmuext(ops, pd, DOMID_SELF);
            print_done(out, pk);
            rc
        }
        12..=15 => mmu_update_op(e, r, out),
        16 => {
            // NEW_BASEPTR to a root Xen must refuse (or the current one).
            let f = match r.below(5) {
                0 => Frame::Pt,
                1 => Frame::Foreign,
                2 => Frame::Far,
                _ => Frame::P(r.below(8) as usize),
            };
            let dom = foreigndom(r);
            let _ = write!(out, " new_baseptr({} dom={dom:#x})", Name(f));
            if let Frame::P(i) = f {
                let rc = remap(e, i, 7);
                let _ = write!(out, " rw={rc}");
            }
            mmuext(&[(NEW_BASEPTR, e.mfn(f), 0)], 0, dom)
        }
        17 => {
            let f = match r.below(6) {
                0 => None,
                1 => Some(Frame::Pt),
                2 => Some(Frame::Foreign),
                3 => Some(Frame::Far),
                _ => Some(Frame::P(r.below(8) as usize)),
            };
            let dom = foreigndom(r);
            let mfn = f.map_or(0, |f| e.mfn(f));
            match f {
                Some(f) => {
                    let _ = write!(out, " new_user_baseptr({} dom={dom:#x})", Name(f));
                }
                None => {
                    let _ = write!(out, " new_user_baseptr(0 dom={dom:#x})");
                }
            }
            if let Some(Frame::P(i)) = f {
                let rc = remap(e, i, 7);
                let _ = write!(out, " rw={rc}");
            }
            mmuext(&[(NEW_USER_BASEPTR, mfn, 0)], 0, dom)
        }
        18 => {
            // TLB_FLUSH_MULTI / INVLPG_MULTI with a good or bad vCPU bitmap.
            let cmd = r.pick(&[TLB_FLUSH_MULTI, INVLPG_MULTI]);
            let (bm, bname) = match r.below(7) {
                0 => (0x4000_0000_0000u64, "unmapped"),
                1 => (0x8000_0000_0000, "noncanonical"),
                2 => (0xffff_8000_0000_0000, "xen"),
                k => {
                    let (w, n) =
                        [(1u64, "v0"), (0, "none"), (2, "v1"), (1 << 63, "v63")][k as usize - 3];
                    // SAFETY: in bounds.
                    unsafe { mmu_word(BITMAP).write_volatile(w) };
                    (mmu_word(BITMAP) as u64, n)
                }
            };
            let i = r.below(8) as usize;
            let (lin, lname) = match r.below(3) {
                0 => (0x8000_0000_0000u64, "noncanonical"),
                _ => (Env::va(i), "P"),
            };
            let dom = foreigndom(r);
            let what = if cmd == TLB_FLUSH_MULTI {
                "tlb_flush_multi"
            } else {
                "invlpg_multi"
            };
            let _ = write!(
                out,
                " {what}({lname}{} {bname} dom={dom:#x})",
                if lname == "P" { i } else { 0 }
            );
            mmuext(&[(cmd, lin, bm)], 0, dom)
        }
        _ => {
            let dom = foreigndom(r);
            match r.below(4) {
                0 => {
                    let f = frame(r);
                    let _ = write!(out, " clear_page({} dom={dom:#x})", Name(f));
                    mmuext(&[(CLEAR_PAGE, e.mfn(f), 0)], 0, dom)
                }
                1 => {
                    let (d, s) = (frame(r), frame(r));
                    let _ = write!(out, " copy_page({} <- {} dom={dom:#x})", Name(d), Name(s));
                    mmuext(&[(COPY_PAGE, e.mfn(d), e.mfn(s))], 0, dom)
                }
                _ => {
                    let cmd = r.pick(&[
                        FLUSH_CACHE,
                        FLUSH_CACHE_GLOBAL,
                        TLB_FLUSH_LOCAL,
                        TLB_FLUSH_ALL,
                        INVLPG_LOCAL,
                        INVLPG_ALL,
                    ]);
                    let _ = write!(out, " mmuext({cmd} dom={dom:#x})");
                    mmuext(&[(cmd, Env::va(0), 0)], 0, dom)
                }
            }
        }
    }
}

/// Write L1 or L2 entries into `P<i>` directly: map it writable, store
/// (after zeroing slots 0-31 for a fresh table), maybe map it read-only
/// again so that it can be pinned. Result: the stores' fault, or 0.
fn table_op(e: &Env, r: &mut Rng, out: &mut Out) -> i64 {
    let i = r.below(8) as usize;
    let level = if r.below(3) == 0 { 2 } else { 1 };
    let fresh = r.below(2) == 0;
    let n = 1 + r.below(4) as usize;
    let mut entries = [(0u64, 0u64); 4];
    let _ = write!(
        out,
        " table(P{i} L{level}{}",
        if fresh { " fresh" } else { "" }
    );
    for ent in entries.iter_mut().take(n) {
        let slot = r.below(32);
        let f = frame(r);
        let flags = if level == 1 { l1_flags(r) } else { ln_flags(r) };
        let _ = write!(out, " {slot}={}/{flags:#x}", Name(f));
        *ent = (slot, e.mfn(f) << 12 | flags);
    }
    let ro_after = r.below(4) != 0;
    let _ = write!(out, ")");
    let rw = remap(e, i, 7);
    let va = Env::va(i);
    // A live-L1 update (mmu_update) flushes nothing: drop any stale
    // translation before storing, as a guest relying on the new one must.
    mmuext(&[(INVLPG_LOCAL, va, 0)], 0, DOMID_SELF);
    let mut fault = 0;
    if fresh {
        for s in 0..32 {
            fault = probe_store(va + s * 8, 0);
            if fault != 0 {
                break;
            }
        }
    }
    if fault == 0 {
        for &(slot, v) in &entries[..n] {
            fault = probe_store(va + slot * 8, v);
            if fault != 0 {
                break;
            }
        }
    }
    let _ = write!(out, " rw={rw}");
    if ro_after {
        let rc = remap(e, i, 5);
        let _ = write!(out, " ro={rc}");
    }
    if fault == 0 {
        0
    } else {
        -((fault >> 32) as i64 & 0xff)
    }
}

/// `mmu_update` with one to three requests on the battery's pages, the
/// live L4 (slots other than 0), the live L1s (their own frame again),
/// frames not the domain's; every command; every kind of `foreigndom`.
fn mmu_update_op(e: &Env, r: &mut Rng, out: &mut Out) -> i64 {
    let n = 1 + r.below(3) as usize;
    let dom = r.pick(&[
        DOMID_SELF,
        DOMID_SELF,
        DOMID_SELF,
        DOMID_SELF,
        DOMID_SELF,
        DOMID_IO,
        DOMID_XEN,
        0,
        1,
        1 << 16 | DOMID_SELF,
        2 << 16 | DOMID_SELF,
    ]);
    let (pd, pk) = pdone_kind(r);
    let _ = write!(out, " mmu_update(dom={dom:#x} done={pk}");
    for k in 0..n {
        let tbl = match r.below(16) {
            0 => Frame::Pt,
            1 => Frame::Foreign,
            2 => Frame::Far,
            3..=5 => Frame::Live(r.below(8) as usize),
            _ => Frame::P(r.below(8) as usize),
        };
        let cmd = r.pick(&[0u64, 0, 0, 0, 0, 2, 2, 3, 1, 7]);
        let slot = match tbl {
            Frame::Pt => r.pick(&[1u64, 5, 255, 256, 258, 271, 272, 511]),
            Frame::Live(i) => e.live[i].1,
            _ => r.below(32),
        };
        let (val, what) = if cmd == 1 {
            // MMU_MACHPHYS_UPDATE: the frame's own pfn again.
            let pfn = match tbl {
                Frame::P(i) => Env::va(i) >> 12,
                Frame::Pt => e.pt_base >> 12,
                Frame::Live(i) => e
                    .p2m
                    .iter()
                    .position(|&m| m == e.live[i].0)
                    .map_or(0x1234, |p| p as u64),
                _ => 0x1234,
            };
            (pfn, Frame::P(0))
        } else if let Frame::Live(i) = tbl {
            let flags = r.pick(&[
                0x27u64,
                0x25,
                0x67,
                0x65,
                0x35,
                0x125,
                0x7 | 1 << 63,
                0x27 | 1 << 52,
            ]);
            (e.mfn(Frame::P(i)) << 12 | flags, Frame::P(i))
        } else {
            let f = frame(r);
            let flags = match r.below(8) {
                0 => 0,
                1 => r.next() & 0xfff0_0000_0000_0fff,
                2..=4 => l1_flags(r),
                _ => ln_flags(r),
            };
            let v = if flags == 0 {
                0
            } else {
                e.mfn(f) << 12 | flags
            };
            (v, f)
        };
        let _ = write!(out, " {}[{slot}]/{cmd}=", Name(tbl));
        if cmd == 1 {
            let _ = write!(out, "pfn");
        } else if val == 0 {
            let _ = write!(out, "0");
        } else {
            let _ = write!(out, "{}/{:#x}", Name(what), val & !PTE_FRAME);
        }
        // SAFETY: in bounds.
        unsafe {
            mmu_word(2 * k).write_volatile((e.mfn(tbl) << 12) | (slot * 8) | cmd);
            mmu_word(2 * k + 1).write_volatile(val);
        }
    }
    let _ = write!(out, ")");
    // SAFETY: the requests and `done` are in MMU_ARGS.
    let rc = unsafe {
        pvops_xen::hypercall_page::call(
            xen::page(),
            MMU_UPDATE,
            [mmu_word(0) as u64, n as u64, pd, dom, 0],
        )
    };
    print_done(out, pk);
    rc
}

/// Build a two- or three-level tree of fresh tables in distinct battery
/// pages (an L1 with a few entries, an L2 naming it, maybe an L3 naming
/// the L2, sometimes a read-only self entry: a linear map), each written
/// while mapped writable and then mapped read-only, and pin the top.
/// Result: the pin's.
fn tree_op(e: &Env, r: &mut Rng, out: &mut Out) -> i64 {
    let levels = if r.below(3) == 0 { 3 } else { 2 };
    let a = r.below(8) as usize;
    let b = (a + 1 + r.below(7) as usize) % 8;
    let start = r.below(8) as usize;
    let c = (0..8)
        .map(|k| (start + k) % 8)
        .find(|&k| k != a && k != b)
        .unwrap_or(0);
    let pages = [a, b, c];
    // Entries per level: (slot, value).
    let mut tables = [[(0u64, 0u64); 4]; 3];
    let mut counts = [0usize; 3];
    let _ = write!(out, " tree(");
    for lvl in 0..levels {
        let p = pages[lvl];
        let _ = write!(out, "{}L{} P{p}:", if lvl > 0 { " " } else { "" }, lvl + 1);
        let n = if lvl == 0 { 1 + r.below(3) as usize } else { 1 };
        for entry in tables[lvl].iter_mut().take(n) {
            let slot = r.below(32);
            let (f, flags) = if lvl == 0 {
                (
                    Frame::P(r.below(8) as usize),
                    r.pick(&[0x5u64, 0x25, 0x1, 0x7, 0x67]),
                )
            } else {
                (Frame::P(pages[lvl - 1]), r.pick(&[0x7u64, 0x5, 0x67, 0x25]))
            };
            let _ = write!(out, " {slot}={}/{flags:#x}", Name(f));
            *entry = (slot, e.mfn(f) << 12 | flags);
        }
        counts[lvl] = n;
        if lvl > 0 && r.below(4) == 0 {
            // A read-only entry naming the table itself.
            let slot = r.below(32);
            let _ = write!(out, " {slot}=P{p}/0x5");
            tables[lvl][n] = (slot, e.mfn(Frame::P(p)) << 12 | 0x5);
            counts[lvl] = n + 1;
        }
    }
    let _ = write!(out, ")");
    for lvl in 0..levels {
        let p = pages[lvl];
        let va = Env::va(p);
        let rw = remap(e, p, 7);
        mmuext(&[(INVLPG_LOCAL, va, 0)], 0, DOMID_SELF);
        let mut fault = 0;
        for s in 0..32 {
            if fault == 0 {
                fault = probe_store(va + s * 8, 0);
            }
        }
        for &(slot, v) in &tables[lvl][..counts[lvl]] {
            if fault == 0 {
                fault = probe_store(va + slot * 8, v);
            }
        }
        let ro = remap(e, p, 5);
        let _ = write!(out, " P{p}:{rw}/{}/{ro}", Fault(fault));
    }
    let top = pages[levels - 1];
    mmuext(
        &[(PIN_L1_TABLE + levels as u64 - 1, e.mfn(Frame::P(top)), 0)],
        0,
        DOMID_SELF,
    )
}
