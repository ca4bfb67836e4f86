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
//! machine frame just past the domain's (`FOREIGN`), and one far out of
//! range (`FAR`). Lines name them symbolically, never by machine address,
//! so the two hypervisors' different frame numbers do not show:
//!
//! `b <i> <call and its arguments> = <result> d=<digest> p=<probes>`
//!
//! * result: the hypercall's return value (`multicall`: each entry's
//!   result too);
//! * digest: FNV-1a over slots 0–31 of every page `P0`..`P7`, read
//!   directly (what Xen's fix-ups left in the guest's frames), with the
//!   accessed bit of present code/data descriptors left out (the CPU sets
//!   it when a probe loads the selector, not the hypervisor);
//! * probes: loading FS from GDT slot `k` and from LDT slot `k` (for a `k`
//!   the sequence picks), each `ok` or the fault (`v<vector>:<error
//!   code>`), which shows the effective GDT and LDT, including the lazy
//!   LDT mapping and its fault.
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
}

struct Env {
    p2m: &'static [u64],
    pt_base: u64,
    foreign: u64,
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
        }
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

fn digest() -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for i in 0..8 {
        for s in 0..32 {
            // SAFETY: the battery's pages are always mapped readable.
            let v = unsafe { core::ptr::read_volatile(core::ptr::addr_of!(PAGES.0[i][s])) };
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
    let e = Env {
        p2m,
        pt_base,
        foreign,
    };
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
        let d = digest();
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
