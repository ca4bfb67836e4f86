//! [`KvmDepartures::dst_read_first`](super::KvmDepartures::dst_read_first):
//! KVM's instruction emulator reads STR's and SLDT's memory destination
//! before it stores to it.
//!
//! Linux's `arch/x86/kvm/emulate.c` (v6.18, the host's 6.18.44) declares
//! both in `group6` as `DstMem` without `Mov`, so `x86_emulate_insn` reads
//! the destination first ("optimisation - avoid slow emulated read if
//! Mov"): `segmented_read` of `dst.bytes` (the operand size: 2, 4, or 8
//! with REX.W) through `__linearize` with read access (the segment's type
//! and limit outside 64-bit mode; in 64-bit mode the first byte's
//! canonical form), then the pages, a #PF there with W set in its error
//! code (`PFERR_WRITE_MASK`). Only then does `em_sldt`/`em_str` store 2
//! bytes (8 with REX.W: [`KvmDepartures::wide_store`](super::KvmDepartures::wide_store)).
//! The SDM's STR/SLDT (vol. 2B) store 2 bytes and read nothing: their
//! checks are a write's, on 2 bytes.
//!
//! So where the read's 4 or 8 bytes pass the segment limit or reach a
//! page the 2-byte store does not, KVM raises #GP(0)/#SS(0) or a #PF
//! the SDM does not; and its read walk sets the accessed flag of a page
//! the store then faults on. Measured on PVM: the compatibility-mode
//! STR/SLDT whose 4-byte read ends past the data segment's limit raise
//! #GP(0) exactly where this model says, so KVM applies the scenario's
//! data-segment limits (an independent check of them; QEMU TCG does not
//! check them).

use iced_x86::{Instruction, OpKind, Register};

use crate::emulate::SegmentCache;
use crate::emulate::diff::long::{CodeMode, LongPaging, LongScenario, image};
use crate::emulate::mock::MockPhys;
use crate::emulate::segment::{self, SegAccess};
use crate::emulate::walk::{PagingMode, WalkAccess, Walker};
use crate::emulate::{Exception, Segment, segment_of};

/// What KVM's read of the destination did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum DstRead {
    /// It faulted: vector, error code, CR2 (a #PF's), the window's entry
    /// after the walk.
    Fault(u8, u64, u64, u64),
    /// It passed; the window's entry after its walk.
    Passed(u64),
}

/// KVM's read of `s`'s STR/SLDT memory destination (its instruction `i`
/// at linear `at`); `None` for another instruction or a register operand.
pub(super) fn dst_read(s: &LongScenario, at: u32, i: &Instruction) -> Option<DstRead> {
    use iced_x86::Mnemonic;
    if !matches!(i.mnemonic(), Mnemonic::Str | Mnemonic::Sldt) || i.op0_kind() != OpKind::Memory {
        return None;
    }
    Some(read_pieces(s, at, i, &[(0, operand_size(s))], 2))
}

/// KVM's read of a compatibility-mode LGDT/LIDT's pseudo-descriptor
/// ([`KvmDepartures::dt_pieces`](super::KvmDepartures::dt_pieces)):
/// Linux's `read_descriptor` reads the limit's 2 bytes, then the base's
/// 4 (3 with a 16-bit operand size), each a `segmented_read_std` with its
/// own segment and page checks. `None` for another instruction or mode.
pub(super) fn dt_read(s: &LongScenario, at: u32, i: &Instruction) -> Option<DstRead> {
    use iced_x86::Mnemonic;
    if s.mode == CodeMode::Bits64
        || !matches!(i.mnemonic(), Mnemonic::Lgdt | Mnemonic::Lidt)
        || i.op0_kind() != OpKind::Memory
    {
        return None;
    }
    let base = if operand_size(s) == 2 { 3 } else { 4 };
    Some(read_pieces(s, at, i, &[(0, 2), (2, base)], 0))
}

/// KVM's reads of `pieces` (offset from the operand, bytes) in order,
/// each its segment check then its pages; a #PF's error code with
/// `w_bit` or'ed in.
fn read_pieces(
    s: &LongScenario,
    at: u32,
    i: &Instruction,
    pieces: &[(u64, u64)],
    w_bit: u32,
) -> DstRead {
    let phys = page_tables(s);
    let pte = |phys: &MockPhys| phys.get_u64(u64::from(s.win.pte_at()));
    for &(skip, n) in pieces {
        let la = match linear(s, at, i, skip, n) {
            Ok(la) => la,
            Err(e) => {
                return DstRead::Fault(
                    e.vector(),
                    u64::from(e.error_code().unwrap_or(0)),
                    0,
                    pte(&phys),
                );
            }
        };
        if let Some((error, cr2)) = walk(s, &phys, la, n, WalkAccess::Read) {
            return DstRead::Fault(14, error | u64::from(w_bit), cr2, pte(&phys));
        }
    }
    DstRead::Passed(pte(&phys))
}

/// The #PF (error code, CR2) of KVM's `n`-byte `access` at `la` page by
/// page through `s`'s page tables in `phys` (A and D set there as the
/// walks go), or `None`.
fn walk(
    s: &LongScenario,
    phys: &MockPhys,
    la: u64,
    n: u64,
    access: WalkAccess,
) -> Option<(u64, u64)> {
    let smap = s.paging == LongPaging::Smap;
    let mut walker = Walker::new(PagingMode::Level4, u64::from(image::PML4));
    (walker.smep, walker.smap, walker.ac, walker.maxphyaddr) = (smap, smap, s.ac, 40);
    let mut done = 0u64;
    while done < n {
        let piece = la.wrapping_add(done);
        // Outside 64-bit mode the linear address wraps at 4 GiB; in 64-bit
        // mode KVM's walk uses bits 47:0 of an address past the canonical
        // hole (its canonical check was the first byte's).
        let walked = if s.mode == CodeMode::Bits64 {
            ((piece << 16) as i64 >> 16) as u64
        } else {
            piece & 0xffff_ffff
        };
        if let Err(f) = walker.translate(phys, walked, access, 0, false) {
            return Some((u64::from(f.error_code), piece));
        }
        done += (0x1000 - (piece & 0xfff)).min(n - done);
    }
    None
}

/// The #PF (error code, CR2) of KVM's `n`-byte store at 64-bit-mode linear
/// `la` (page by page: the first page's part is written before the next
/// page is translated), or `None`.
pub(super) fn store_fault(s: &LongScenario, la: u64, n: u64) -> Option<(u64, u64)> {
    walk(s, &page_tables(s), la, n, WalkAccess::Write)
}

/// KVM's `op_bytes`: 4 in 64-bit and 32-bit code, 2 in 16-bit code, 0x66
/// toggling 2 and 4, REX.W 8.
pub(super) fn operand_size(s: &LongScenario) -> u64 {
    let opcode = s.insn.iter().position(|&b| b == 0x0f).unwrap_or(0);
    let prefixes = &s.insn[..opcode];
    if s.mode == CodeMode::Bits64 && prefixes.last().is_some_and(|b| b & 0xf8 == 0x48) {
        return 8;
    }
    let base = if s.mode == CodeMode::Compat16 { 2 } else { 4 };
    if prefixes.contains(&0x66) {
        6 - base
    } else {
        base
    }
}

/// The operand's linear address as KVM's `__linearize` forms it for an
/// `n`-byte read, or the fault it raises.
fn linear(s: &LongScenario, at: u32, i: &Instruction, skip: u64, n: u64) -> Result<u64, Exception> {
    let offset = i
        .virtual_address(0, 0, |reg, _, _| {
            if segment_of(reg).is_some() {
                return Some(0);
            }
            let (q, e) = (reg as usize, Register::RAX as usize);
            let (d, d0) = (reg as usize, Register::EAX as usize);
            let (w, w0) = (reg as usize, Register::AX as usize);
            Some(if (e..e + 16).contains(&q) {
                s.regs[q - e]
            } else if (d0..d0 + 16).contains(&d) {
                s.regs[d - d0] & 0xffff_ffff
            } else if (w0..w0 + 16).contains(&w) {
                s.regs[w - w0] & 0xffff
            } else {
                return None;
            })
        })
        .ok_or(Exception::Gp(0))?
        .wrapping_add(skip);
    let seg = segment_of(i.memory_segment()).ok_or(Exception::Gp(0))?;
    if s.mode == CodeMode::Bits64 {
        let base = match seg {
            Segment::Fs => s.fs_base,
            Segment::Gs => s.gs_base,
            _ => 0,
        };
        let la = base.wrapping_add(offset);
        return if pvops::table::is_canonical(la) {
            Ok(la)
        } else if seg == Segment::Ss {
            Err(Exception::Ss(0))
        } else {
            Err(Exception::Gp(0))
        };
    }
    let cache = segment_cache(s, at, seg);
    segment::linear(seg, &cache, offset, n as u32, SegAccess::Read, false)
}

/// The hidden part of `seg` in the scenario's compatibility-mode code.
fn segment_cache(s: &LongScenario, at: u32, seg: Segment) -> SegmentCache {
    let desc = |sel: u16| {
        let slot = usize::from(sel >> 3).checked_sub(3);
        match slot.and_then(|k| s.gdt_slots.get(k)) {
            Some(&d) if sel & 0xfffc != 0 => SegmentCache::from_descriptor(d),
            _ => SegmentCache {
                unusable: true,
                ..SegmentCache::default()
            },
        }
    };
    match seg {
        Segment::Es => desc(s.sels[0]),
        Segment::Ds => desc(s.sels[1]),
        Segment::Fs => desc(s.sels[2]),
        Segment::Gs => desc(s.sels[3]),
        Segment::Ss => SegmentCache::from_descriptor(image::DATA),
        // A CS override: the 32-bit code segment (readable); 16-bit code's
        // is the same type with a 64 KiB limit, based at the stub.
        Segment::Cs if s.mode == CodeMode::Compat16 => SegmentCache {
            base: u64::from(at - image::insn_offset(s.mode)),
            ..SegmentCache::from_descriptor(0x0000_9b00_0000_ffff)
        },
        Segment::Cs => SegmentCache::from_descriptor(image::CODE32),
    }
}

/// The image's page tables as the guest has them for `s` (the first 1 GiB
/// identity, the window's aliases, the window's entry as `s` sets it).
fn page_tables(s: &LongScenario) -> MockPhys {
    let phys = MockPhys::default();
    for k in 0..512u32 {
        phys.put_u64(u64::from(image::PT0 + 8 * k), image::pte(k << 12));
    }
    for k in 1..512u32 {
        phys.put_u64(u64::from(image::PD0 + 8 * k), image::pde(k));
    }
    for (pa, e) in image::page_table_entries() {
        phys.put_u64(u64::from(pa), e);
    }
    phys.put_u64(u64::from(s.win.pte_at()), s.win_pte);
    phys
}
