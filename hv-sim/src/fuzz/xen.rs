//! Fuzz target: hv-sim's Xen PV domain, both ABIs.
//!
//! A case is a fresh small domain (16 or 24 pages, one or two vCPUs, either
//! Xen version, sometimes privileged or a debug build) and up to 48 steps,
//! each one of:
//! * guest memory written through the host (what a guest stores in its own
//!   RAM, including pages Xen has typed): single words, descriptors, trap
//!   tables, GDT frame lists, `mmu_update` requests naming the domain's
//!   page-table slots, `mmuext_op` lists, multicall lists (nested
//!   multicalls and iret entries among them), in the ABI's own layouts;
//! * a hypercall: any number (Xen's, and arbitrary ones), with arguments
//!   shaped for it (list VAs, frame counts at the boundaries, machine
//!   addresses of the domain's frames, PTEs naming them with every flag,
//!   selectors such as 0xe019/0xe02b/0xe033, descriptors shaped by
//!   `check_descriptor`'s rules) or arbitrary words;
//! * a lazy LDT fault (`touch_ldt_from`), a guest store through the page
//!   tables, or reads of the GDT/LDT the hardware would see.
//!
//! After every step: no panic; a hypercall returns 0, a positive count or
//! `-errno` with errno in 1..4095; `XenDomain::check_invariants` (no live
//! descriptor lets the guest run above its ring, no live descriptor frame
//! is writable-mapped, type and page-table counts right); and a failed
//! `set_gdt`, `update_descriptor`, `stack_switch` or `set_segment_base`
//! changed nothing observable (every vCPU's state, every frame's type
//! state, every PTE, and the word `update_descriptor` named), as on Xen,
//! where each of them checks everything before it writes.
//!
//! pv64 guest VAs are host addresses of the domain's RAM: only a word the
//! model takes as an address carries the direct map's base, so a case is a
//! function of its words wherever the host put the RAM (tested).

use super::{CaseStats, Source, descriptor, int, selector};
use crate::xen::domain::MFN_OFFSET;
use crate::xen::{Abi, FrameInfo, VcpuState, XenDomain, XenVersion, nr};

const PAGE: u64 = 4096;

/// The hypercall numbers worth aiming at, Xen's own first.
const CALLS: &[u64] = &[
    nr::SET_TRAP_TABLE,
    nr::MMU_UPDATE,
    nr::SET_GDT,
    nr::STACK_SWITCH,
    nr::UPDATE_DESCRIPTOR,
    nr::MULTICALL,
    nr::UPDATE_VA_MAPPING,
    nr::IRET,
    nr::SET_SEGMENT_BASE,
    nr::MMUEXT_OP,
    nr::CONSOLE_IO,
    nr::SCHED_OP,
    nr::VCPU_OP,
];

/// What the structured writers last left in guest memory, so a hypercall
/// can name it.
#[derive(Default, Clone, Copy)]
struct Lists {
    trap: Option<(u64, u64)>,
    frames: Option<(u64, u64)>,
    mmu: Option<(u64, u64)>,
    mmuext: Option<(u64, u64)>,
    multi: Option<(u64, u64)>,
}

struct Dom {
    d: XenDomain,
    abi: Abi,
    pages: u64,
    base: u64,
    vcpus: usize,
    lists: Lists,
}

impl Dom {
    fn va(&self, pfn: u64, off: u64) -> u64 {
        self.base.wrapping_add(pfn * PAGE).wrapping_add(off)
    }

    fn mfn(&self, pfn: u64) -> u64 {
        pfn * 3 + MFN_OFFSET
    }

    /// A page number: the domain's, sometimes one past its end.
    fn pfn(&self, s: &mut Source) -> u64 {
        if s.chance(1, 16) {
            self.pages + s.below(2)
        } else {
            s.below(self.pages)
        }
    }

    /// An offset in a page: mostly 8-byte aligned, often 0.
    fn off(s: &mut Source) -> u64 {
        match s.below(8) {
            0..=3 => 0,
            4..=6 => s.below(512) * 8,
            _ => s.below(PAGE),
        }
    }

    /// A VA: in the direct map, at its edges, or anywhere.
    fn va_val(&self, s: &mut Source) -> u64 {
        self.va_word(s, true)
    }

    /// [`Dom::va_val`]'s choice as an address (`addr`), or else as a
    /// number: the offset from the direct map's base in its place. pv64
    /// VAs are host addresses of the RAM, so only a word the model takes
    /// as an address may carry the base: a run stays a function of its
    /// words wherever the host put the RAM.
    fn va_word(&self, s: &mut Source, addr: bool) -> u64 {
        let base = if addr { self.base } else { 0 };
        match s.below(8) {
            0..=5 => {
                let p = self.pfn(s);
                base.wrapping_add(p * PAGE).wrapping_add(Self::off(s))
            }
            6 => base.wrapping_sub(s.pick(&[8, PAGE, 1])),
            _ => int(s),
        }
    }

    /// A machine frame: the domain's, a neighbour of one, or anything.
    fn mfn_val(&self, s: &mut Source) -> u64 {
        match s.below(8) {
            0..=5 => {
                let p = self.pfn(s);
                self.mfn(p)
            }
            6 => {
                let p = self.pfn(s);
                self.mfn(p).wrapping_add(s.pick(&[1, 2, u64::MAX]))
            }
            _ => int(s),
        }
    }

    /// A PTE naming one of the domain's frames, with flags.
    fn pte_val(&self, s: &mut Source) -> u64 {
        let flags = match s.below(6) {
            0 => 0x1,
            1 => 0x3,
            2 => 0x63,
            3 => 0x67,
            4 => s.below(0x1000),
            _ => {
                s.pick(&[0x0, 0x5, 0x7, 0x81, 0x83, 0x101, 0x163])
                    | s.pick(&[0, 1 << 63, 1 << 52, 1 << 62])
            }
        };
        (self.mfn_val(s) << 12) | flags
    }

    /// A machine address: a frame's, at an 8-byte slot or anywhere.
    fn maddr_val(&self, s: &mut Source) -> u64 {
        (self.mfn_val(s) << 12).wrapping_add(Self::off(s))
    }

    /// Any argument: one of the domain's values, a descriptor, a selector
    /// or an integer; a VA only where `addr` (see [`Dom::va_word`]).
    fn arg(&self, s: &mut Source, addr: bool) -> u64 {
        match s.below(10) {
            0 | 1 => self.va_word(s, addr),
            2 => self.mfn_val(s),
            3 => self.maddr_val(s),
            4 => self.pte_val(s),
            5 => descriptor(s),
            6 => selector(s),
            _ => int(s),
        }
    }

    /// A count at the boundaries Xen checks.
    fn count(s: &mut Source) -> u64 {
        match s.below(6) {
            0..=2 => s.range(1, 8),
            3 => s.pick(&[0, 13, 14, 16, 511, 512, 513, 1024, 7168, 8192, 8193, 65536]),
            _ => int(s),
        }
    }

    fn list_or_va(&self, s: &mut Source, l: Option<(u64, u64)>) -> (u64, u64) {
        match l {
            Some(l) if s.chance(3, 4) => {
                let n = if s.chance(3, 4) { l.1 } else { Self::count(s) };
                (l.0, n)
            }
            _ => (self.va_val(s), Self::count(s)),
        }
    }

    /// Arguments for hypercall `n`, shaped for it most of the time. pv32
    /// splits 64-bit PTEs and addresses into two arguments.
    fn args_for(&self, s: &mut Source, n: u64) -> [u64; 6] {
        let mut a = [0u64; 6];
        if s.chance(1, 6) {
            for (i, x) in a.iter_mut().enumerate() {
                *x = self.arg(s, self.is_addr(n, i));
            }
            return a;
        }
        let pv32 = self.abi == Abi::Pv32;
        let split = |v: u64| (v & 0xffff_ffff, v >> 32);
        match n {
            nr::SET_TRAP_TABLE => {
                a[0] = match self.lists.trap {
                    Some((va, _)) if s.chance(3, 4) => va,
                    _ => {
                        if s.chance(1, 4) {
                            0
                        } else {
                            self.va_val(s)
                        }
                    }
                };
            }
            nr::MMU_UPDATE | nr::MMUEXT_OP => self.mmu_args(s, n, &mut a),
            nr::SET_GDT => self.set_gdt_args(s, &mut a),
            nr::STACK_SWITCH => {
                a[0] = selector(s);
                a[1] = self.va_val(s);
            }
            nr::UPDATE_DESCRIPTOR => {
                let pa = self.maddr_val(s);
                let d = descriptor(s);
                if pv32 {
                    (a[0], a[1]) = split(pa);
                    (a[2], a[3]) = split(d);
                } else {
                    a[0] = pa;
                    a[1] = d;
                }
            }
            nr::MULTICALL => {
                let (va, c) = self.list_or_va(s, self.lists.multi);
                a[0] = va;
                a[1] = c;
            }
            nr::UPDATE_VA_MAPPING => self.uvm_args(s, &mut a),
            nr::SET_SEGMENT_BASE => {
                a[0] = if s.chance(7, 8) { s.below(5) } else { int(s) };
                // SEGBASE_GS_USER_SEL (3) takes a selector, the others a base.
                let base = a[0] as u32 <= 2;
                a[1] = if s.chance(1, 2) {
                    self.va_word(s, base)
                } else {
                    int(s)
                };
            }
            nr::CONSOLE_IO => {
                a[0] = if s.chance(7, 8) { s.below(2) } else { int(s) };
                a[1] = Self::count(s);
                a[2] = self.va_val(s);
            }
            nr::SCHED_OP => {
                a[0] = if s.chance(7, 8) { s.below(4) } else { int(s) };
                a[1] = self.va_val(s);
            }
            _ => {
                for (i, x) in a.iter_mut().enumerate() {
                    *x = self.arg(s, self.is_addr(n, i));
                }
            }
        }
        a
    }

    /// Whether the model takes argument `i` of hypercall `n` as a guest
    /// address, whatever the others are (`set_segment_base`'s base is a
    /// selector for `SEGBASE_GS_USER_SEL`: shaped in [`Dom::args_for`]).
    fn is_addr(&self, n: u64, i: usize) -> bool {
        let uvm_flags = if self.abi == Abi::Pv32 { 3 } else { 2 };
        match n {
            nr::SET_TRAP_TABLE | nr::SET_GDT | nr::MULTICALL => i == 0,
            nr::UPDATE_VA_MAPPING => i == 0 || i == uvm_flags,
            nr::MMU_UPDATE | nr::MMUEXT_OP => i == 0 || i == 2,
            nr::STACK_SWITCH | nr::SCHED_OP => i == 1,
            nr::CONSOLE_IO | nr::VCPU_OP => i == 2,
            _ => false,
        }
    }

    /// mmu_update / mmuext_op: a list (or any address), its count, the
    /// done pointer and the foreign domain.
    fn mmu_args(&self, s: &mut Source, n: u64, a: &mut [u64; 6]) {
        let l = if n == nr::MMU_UPDATE {
            self.lists.mmu
        } else {
            self.lists.mmuext
        };
        let (va, c) = self.list_or_va(s, l);
        a[0] = va;
        a[1] = c;
        a[2] = if s.chance(1, 2) { 0 } else { self.va_val(s) };
        a[3] = if s.chance(3, 4) {
            0x7FF0
        } else {
            s.pick(&[0, 1, 2, 0x7FF1, 0x7FF2, 0x7FF3, 0x7FFF, 0xFFFF])
        };
    }

    /// set_gdt: the frame list written last (mostly), a count around its
    /// length.
    fn set_gdt_args(&self, s: &mut Source, a: &mut [u64; 6]) {
        let (va, c) = match self.lists.frames {
            Some((va, frames)) if s.chance(3, 4) => {
                let c = match s.below(4) {
                    0 => frames * 512,
                    1 => (frames * 512).saturating_sub(s.below(512)),
                    _ => Self::count(s),
                };
                (va, c)
            }
            _ => (self.va_val(s), Self::count(s)),
        };
        a[0] = va;
        a[1] = c;
    }

    /// update_va_mapping: a VA, a PTE (pv32: split in two) and flags.
    fn uvm_args(&self, s: &mut Source, a: &mut [u64; 6]) {
        let split = |v: u64| (v & 0xffff_ffff, v >> 32);
        let va = self.va_val(s);
        let pte = if s.chance(1, 8) {
            int(s)
        } else {
            self.pte_val(s)
        };
        let flags = if s.chance(3, 4) {
            s.below(4)
        } else {
            self.va_val(s) | s.below(4)
        };
        if self.abi == Abi::Pv32 {
            a[0] = va;
            (a[1], a[2]) = split(pte);
            a[3] = flags;
        } else {
            a[0] = va;
            a[1] = pte;
            a[2] = flags;
        }
    }

    /// Write `bytes` at `va` through the host (read-modify-write of the
    /// 8-byte words it touches); bytes outside RAM are dropped.
    fn write_bytes(&self, va: u64, bytes: &[u8]) {
        for (i, b) in bytes.iter().enumerate() {
            let a = va.wrapping_add(i as u64);
            let w = a & !7;
            if let Some(old) = self.d.host_read_u64(w) {
                let sh = (a & 7) * 8;
                let new = (old & !(0xff << sh)) | u64::from(*b) << sh;
                self.d.host_write_u64(w, new);
            }
        }
    }

    /// A place for a list: a page of the domain at an aligned offset
    /// (sometimes near the end of the page, so the list crosses it).
    fn list_place(&self, s: &mut Source) -> u64 {
        let p = self.pfn(s);
        let off = match s.below(6) {
            0..=3 => 0,
            4 => PAGE - 8 * s.range(1, 8),
            _ => s.below(512) * 8,
        };
        self.va(p, off)
    }

    fn push_word(&self, buf: &mut Vec<u8>, v: u64, wide: bool) {
        if wide {
            buf.extend_from_slice(&v.to_le_bytes());
        } else {
            buf.extend_from_slice(&(v as u32).to_le_bytes());
        }
    }
}

/// One structured memory write: a word, a run of descriptors, one of the
/// argument lists the calls then point at, or random bytes.
fn write_step(dm: &mut Dom, s: &mut Source) {
    match s.below(9) {
        0 | 1 => write_word(dm, s),
        2 => write_descriptor_run(dm, s),
        3 => write_trap_table(dm, s),
        4 => write_frame_list(dm, s),
        5 => write_mmu_list(dm, s),
        6 => write_mmuext_list(dm, s),
        7 => write_multicall_list(dm, s),
        _ => write_random_bytes(dm, s),
    }
}

/// A single word anywhere (including typed pages).
fn write_word(dm: &mut Dom, s: &mut Source) {
    let va = if s.chance(7, 8) {
        let p = dm.pfn(s);
        dm.va(p, s.below(512) * 8)
    } else {
        dm.va_val(s) & !7
    };
    let v = match s.below(3) {
        0 => descriptor(s),
        1 => dm.pte_val(s),
        _ => dm.arg(s, false),
    };
    dm.d.host_write_u64(va, v);
}

/// A run of descriptors (a GDT or LDT page).
fn write_descriptor_run(dm: &mut Dom, s: &mut Source) {
    let p = dm.pfn(s);
    let first = s.below(512);
    let n = s.range(1, 16);
    for i in 0..n {
        let slot = (first + i) % 512;
        dm.d.host_write_u64(dm.va(p, slot * 8), descriptor(s));
    }
}

/// A trap table: pv64 16-byte entries, pv32 8-byte.
fn write_trap_table(dm: &mut Dom, s: &mut Source) {
    let wide = dm.abi == Abi::Pv64;
    let va = dm.list_place(s);
    let n = s.range(1, 8);
    let mut b = Vec::new();
    for i in 0..n {
        let vector = if s.chance(3, 4) {
            s.below(32)
        } else {
            s.below(256)
        };
        let flags = s.below(8);
        let cs = selector(s);
        let addr = if i + 1 == n && s.chance(1, 2) {
            0
        } else {
            dm.arg(s, true)
        };
        b.push(vector as u8);
        b.push(flags as u8);
        b.extend_from_slice(&(cs as u16).to_le_bytes());
        if wide {
            b.extend_from_slice(&[0; 4]);
        }
        dm.push_word(&mut b, addr, wide);
    }
    dm.write_bytes(va, &b);
    dm.lists.trap = Some((va, n));
}

/// A GDT frame list.
fn write_frame_list(dm: &mut Dom, s: &mut Source) {
    let wide = dm.abi == Abi::Pv64;
    let va = dm.list_place(s);
    let n = s.range(1, 16);
    let mut b = Vec::new();
    for _ in 0..n {
        let m = dm.mfn_val(s);
        dm.push_word(&mut b, m, wide);
    }
    dm.write_bytes(va, &b);
    dm.lists.frames = Some((va, n));
}

/// mmu_update requests: (ptr | cmd, val), 16 bytes in both ABIs.
fn write_mmu_list(dm: &mut Dom, s: &mut Source) {
    let va = dm.list_place(s);
    let n = s.range(1, 6);
    let mut b = Vec::new();
    for _ in 0..n {
        let cmd = if s.chance(7, 8) {
            s.below(4)
        } else {
            s.below(8)
        };
        let ptr = if s.chance(1, 8) {
            int(s)
        } else {
            (dm.maddr_val(s) & !7) | cmd
        };
        let val = match s.below(4) {
            0 => dm.pfn(s),
            1 => int(s),
            _ => dm.pte_val(s),
        };
        b.extend_from_slice(&ptr.to_le_bytes());
        b.extend_from_slice(&val.to_le_bytes());
    }
    dm.write_bytes(va, &b);
    dm.lists.mmu = Some((va, n));
}

/// An mmuext_op list: pv64 {u32 cmd, pad, u64 arg1, u64 arg2}; pv32 {u32 cmd, u32 arg1, u32 arg2}.
fn write_mmuext_list(dm: &mut Dom, s: &mut Source) {
    let wide = dm.abi == Abi::Pv64;
    let va = dm.list_place(s);
    let n = s.range(1, 6);
    let mut b = Vec::new();
    for _ in 0..n {
        let cmd = if s.chance(7, 8) { s.below(21) } else { int(s) };
        // arg1 is a linear address for INVLPG_LOCAL/MULTI/ALL and SET_LDT,
        // arg2 the vcpumask's for TLB_FLUSH_MULTI and INVLPG_MULTI.
        let arg1 = match s.below(3) {
            0 => dm.mfn_val(s),
            1 => dm.va_word(s, matches!(cmd, 7 | 9 | 11 | 13)),
            _ => int(s),
        };
        let arg2 = match s.below(3) {
            0 => Dom::count(s),
            1 => dm.mfn_val(s),
            _ => dm.va_word(s, matches!(cmd, 8 | 9)),
        };
        b.extend_from_slice(&(cmd as u32).to_le_bytes());
        if wide {
            b.extend_from_slice(&[0; 4]);
        }
        dm.push_word(&mut b, arg1, wide);
        dm.push_word(&mut b, arg2, wide);
    }
    dm.write_bytes(va, &b);
    dm.lists.mmuext = Some((va, n));
}

/// A multicall list: pv64 {op, result, args[6]} of u64, pv32 of u32; nested multicalls and iret entries included.
fn write_multicall_list(dm: &mut Dom, s: &mut Source) {
    let wide = dm.abi == Abi::Pv64;
    let va = dm.list_place(s);
    let n = s.range(1, 6);
    let mut b = Vec::new();
    for _ in 0..n {
        let op = match s.below(10) {
            0 => nr::MULTICALL,
            1 => nr::IRET,
            2 => int(s),
            _ => s.pick(CALLS),
        };
        let args = if op == nr::MULTICALL && s.chance(1, 2) {
            // Nested: point it at this very list.
            [va, n, 0, 0, 0, 0]
        } else {
            dm.args_for(s, op)
        };
        dm.push_word(&mut b, op, wide);
        dm.push_word(&mut b, 0x5555, wide);
        for x in args {
            dm.push_word(&mut b, x, wide);
        }
    }
    dm.write_bytes(va, &b);
    dm.lists.multi = Some((va, n));
}

/// Random bytes.
fn write_random_bytes(dm: &mut Dom, s: &mut Source) {
    let va = dm.va_val(s);
    let n = s.range(1, 32);
    let b: Vec<u8> = (0..n).map(|_| s.word() as u8).collect();
    dm.write_bytes(va, &b);
}

/// What a failed atomic hypercall must leave alone.
#[derive(PartialEq, Eq, Debug)]
struct Snapshot {
    vcpus: Vec<VcpuState>,
    frames: Vec<Option<FrameInfo>>,
    ptes: Vec<Option<u64>>,
    word: Option<u64>,
}

fn snapshot(dm: &Dom, word_at: Option<u64>) -> Snapshot {
    Snapshot {
        vcpus: (0..dm.vcpus).map(|v| dm.d.vcpu(v)).collect(),
        // A frame whose type count is 0 has no type a guest can observe
        // (Xen keeps the last type, and its validated bit, until the next
        // get_page_type changes it): compare the counts only then.
        frames: (0..dm.pages)
            .map(|p| {
                dm.d.frame(dm.mfn(p)).map(|mut f| {
                    if f.type_count == 0 {
                        f.typ = crate::xen::PageType::Writable;
                        f.validated = false;
                    }
                    f
                })
            })
            .collect(),
        ptes: (0..dm.pages).map(|p| dm.d.pte(dm.va(p, 0))).collect(),
        word: word_at.and_then(|va| dm.d.host_read_u64(va)),
    }
}

/// What differs between two snapshots, briefly.
fn snapshot_diff(a: &Snapshot, b: &Snapshot) -> String {
    let mut out = Vec::new();
    for (v, (x, y)) in a.vcpus.iter().zip(&b.vcpus).enumerate() {
        if x != y {
            let mut x = x.clone();
            let mut y = y.clone();
            if x.trap_table == y.trap_table {
                x.trap_table.clear();
                y.trap_table.clear();
            }
            out.push(format!("vcpu{v}: {x:x?} -> {y:x?}"));
        }
    }
    for (p, (x, y)) in a.frames.iter().zip(&b.frames).enumerate() {
        if x != y {
            out.push(format!("pfn {p}: {x:x?} -> {y:x?}"));
        }
    }
    for (p, (x, y)) in a.ptes.iter().zip(&b.ptes).enumerate() {
        if x != y {
            out.push(format!("pte of pfn {p}: {x:x?} -> {y:x?}"));
        }
    }
    if a.word != b.word {
        out.push(format!(
            "the descriptor word: {:x?} -> {:x?}",
            a.word, b.word
        ));
    }
    out.join("; ")
}

/// The VA of the 8-byte word at machine address `pa` (aligned down), if it
/// is the domain's.
fn word_of_maddr(dm: &Dom, pa: u64) -> Option<u64> {
    let pfn = dm.d.mfn_to_pfn(pa >> 12)?;
    Some(dm.va(pfn, pa & 0xff8))
}

/// A fresh domain for a case.
fn domain(abi: Abi, s: &mut Source) -> Dom {
    let pages = if s.chance(3, 4) { 16 } else { 24 };
    let vcpus = if s.chance(3, 4) { 1 } else { 2 };
    let d = XenDomain::new(abi, pages, vcpus);
    if s.chance(1, 4) {
        d.set_version(XenVersion::Unstable);
    }
    if s.chance(1, 8) {
        d.set_debug_build(true);
    }
    if s.chance(1, 8) {
        d.set_privileged(true);
    }
    let base = d.va_base();
    Dom {
        d,
        abi,
        pages: pages as u64,
        base,
        vcpus,
        lists: Lists::default(),
    }
}

/// One case (see the module documentation).
pub(crate) fn case(abi: Abi, s: &mut Source, st: &mut CaseStats) -> Result<(), String> {
    let mut dm = domain(abi, s);
    steps(&mut dm, s, st)
}

/// A case's steps on its domain.
fn steps(dm: &mut Dom, s: &mut Source, st: &mut CaseStats) -> Result<(), String> {
    let steps = s.range(1, 48);
    for step in 0..steps {
        let kind = s.weighted(&[4, 7, 1, 1, 1]);
        let what = match kind {
            0 => {
                write_step(dm, s);
                continue;
            }
            1 => hypercall_step(dm, s, st)?,
            2 => {
                let v = s.below(dm.vcpus as u64) as usize;
                let index = if s.chance(3, 4) {
                    s.below(64) as u32
                } else {
                    s.word() as u32
                };
                let user = s.chance(1, 4);
                st.calls += 1;
                let r = dm.d.touch_ldt_from(v, index, user);
                st.outcome(0x1000, i64::from(r.is_ok()));
                format!("touch_ldt_from({v}, {index}, {user}) = {r:?}")
            }
            3 => {
                let va = dm.va_val(s);
                let v = dm.arg(s, false);
                st.calls += 1;
                let r = dm.d.guest_write_u64(va, v);
                st.outcome(0x1001, i64::from(r.is_ok()));
                format!("guest_write_u64({va:#x}, {v:#x}) = {r:?}")
            }
            _ => {
                let v = s.below(dm.vcpus as u64) as usize;
                let idx = if s.chance(3, 4) {
                    s.below(1024) as u32
                } else {
                    s.word() as u32
                };
                st.calls += 2;
                let g = dm.d.gdt_entry(v, idx);
                let l = dm.d.ldt_entry(v, idx);
                let _ = dm.d.guest_read_u64(dm.va_val(s));
                format!("gdt_entry/ldt_entry({v}, {idx}) = {g:#x}, {l:x?}")
            }
        };
        st.checks += 1;
        dm.d.check_invariants()
            .map_err(|e| format!("step {step}: after {what}: invariant broken: {e}"))?;
    }
    Ok(())
}

/// A hypercall step; returns its description.
fn hypercall_step(dm: &mut Dom, s: &mut Source, st: &mut CaseStats) -> Result<String, String> {
    let n = match s.below(16) {
        0 => int(s),
        1 => s.below(64),
        _ => s.pick(CALLS),
    };
    let args = dm.args_for(s, n);
    let v = s.below(dm.vcpus as u64) as usize;
    // pv32 passes 32-bit registers: what the model sees.
    let (n32, a32) = match dm.abi {
        Abi::Pv64 => (n, args),
        Abi::Pv32 => (n & 0xffff_ffff, args.map(|x| x & 0xffff_ffff)),
    };
    let atomic = matches!(
        n32,
        nr::SET_GDT | nr::UPDATE_DESCRIPTOR | nr::STACK_SWITCH | nr::SET_SEGMENT_BASE
    );
    let before = atomic.then(|| {
        let pa = match dm.abi {
            Abi::Pv64 => a32[0],
            Abi::Pv32 => a32[0] | a32[1] << 32,
        };
        let word = (n32 == nr::UPDATE_DESCRIPTOR)
            .then(|| word_of_maddr(dm, pa))
            .flatten();
        (snapshot(dm, word), word)
    });
    st.calls += 1;
    let r = dm.d.hypercall(v, n, args);
    st.outcome(n32.min(64), r);
    let what = format!("hypercall {n:#x} (vcpu{v}, {args:x?}) = {r}");
    // Xen's final-status continuation: mmu_update/mmuext_op with count
    // MMU_UPDATE_PREEMPTED and a NULL list return foreigndom as an int.
    // (hv-sim models mmu_update for pv64 only: -ENOSYS on pv32.)
    let status = (n32 == nr::MMUEXT_OP || (n32 == nr::MMU_UPDATE && dm.abi == Abi::Pv64))
        && a32[1] as u32 == 0x8000_0000
        && a32[0] == 0;
    if status {
        if r != i64::from(a32[3] as u32 as i32) {
            return Err(format!(
                "{what}: the final-status continuation returns foreigndom"
            ));
        }
    } else if r < -4095 {
        return Err(format!("{what}: not 0, a count or -errno"));
    }
    if let Some((snap, word)) = before
        && r < 0
    {
        st.checks += 1;
        let after = snapshot(dm, word);
        if after != snap {
            return Err(format!(
                "{what}: failed but changed {}",
                snapshot_diff(&snap, &after)
            ));
        }
    }
    Ok(what)
}

#[cfg(test)]
#[path = "xen_tests.rs"]
mod tests;
