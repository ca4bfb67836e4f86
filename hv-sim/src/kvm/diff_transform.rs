//! The record transforms of the LTR/LLDT and store departures of
//! [`KvmDepartures`](super::KvmDepartures): each re-runs the emulator on a
//! changed scenario, or rewrites a record, the way PVM's answer differs
//! from the SDM's.

use crate::emulate::diff::long::{self, LongDepartures, LongRecord, LongScenario, emulate_long};

use super::{decode, operand_ea};

/// [`KvmDepartures::compat_8byte_descriptors`](super::KvmDepartures::compat_8byte_descriptors): the LTR/LLDT that faulted
/// on selector `sel` (`r`'s error code) again with the descriptor's upper
/// half a zero one and inside the limit, its bytes in the record as they
/// were.
pub(super) fn eight_byte(
    t: &LongScenario,
    at: u32,
    tr_before: u16,
    model: LongDepartures,
    r: LongRecord,
) -> LongRecord {
    let sel = (r.error & 0xfff8) as usize;
    if !(0x18..=0x78).contains(&sel) || usize::from(t.test_gdtr.0) < sel + 7 {
        return r;
    }
    // The last slot's upper half would be the runtime GDT's 0x80 (the
    // 32-bit code descriptor), outside the scenario: there the descriptor
    // moves down two slots and the GDT base 16 bytes, so the selector
    // still reaches it, its upper half a zero slot.
    let shift = usize::from(sel == 0x78) * 2;
    let lower = (sel >> 3) - 3 - shift;
    let upper = lower + 1;
    let mut u = t.clone();
    if shift > 0 {
        u.gdt_slots[lower] = t.gdt_slots[12];
        u.test_gdtr.1 -= 16;
    }
    u.gdt_slots[upper] = 0;
    u.test_gdtr.0 = u.test_gdtr.0.max(sel as u16 + 15);
    let (mut r2, _) = emulate_long(&u, at, tr_before, model);
    if r2.gdtr == u.test_gdtr {
        r2.gdtr = t.test_gdtr;
    }
    if shift > 0 {
        let moved: Vec<u8> = r2.gdt[8 * lower..8 * lower + 8].to_vec();
        r2.gdt[96..104].copy_from_slice(&moved);
        r2.gdt[8 * lower..8 * lower + 8].copy_from_slice(&t.gdt_slots[lower].to_le_bytes());
    }
    r2.gdt[8 * upper..8 * upper + 8].copy_from_slice(&t.gdt_slots[upper].to_le_bytes());
    r2
}

/// [`KvmDepartures::dst_read_first`](super::KvmDepartures::dst_read_first), [`KvmDepartures::dt_pieces`](super::KvmDepartures::dt_pieces): the
/// record of an instruction (at `at`) whose read of its operand faulted
/// (nothing stored or loaded; the window's entry as the read's walk left
/// it; the fault's frame), from the SDM's record `r`.
pub(super) fn unstored(
    s: &LongScenario,
    at: u32,
    mut r: LongRecord,
    vector: u8,
    error: u64,
    cr2: u64,
    pte: u64,
) -> LongRecord {
    (r.vector, r.error, r.cr2, r.pte) = (Some(vector), error, cr2, pte);
    r.window = [&s.window[..], &s.window_tail[..]].concat();
    r.gdt = s.gdt_slots.iter().flat_map(|d| d.to_le_bytes()).collect();
    r.frame = long::fault_frame(s, at);
    r
}

/// [`KvmDepartures::upper_type_unchecked`](super::KvmDepartures::upper_type_unchecked): the 64-bit-mode LTR/LLDT that
/// faulted with #GP(`sel`) (`r`'s error code) again with the type field
/// of its descriptor's upper half zeroed, that half's bytes in the record
/// as they were.
pub(super) fn upper_type_zeroed(
    t: &LongScenario,
    at: u32,
    tr_before: u16,
    model: LongDepartures,
    r: LongRecord,
) -> LongRecord {
    let sel = (r.error & 0xfff8) as usize;
    let Some(upper) = (sel >> 3).checked_sub(2).filter(|&k| k < 13 && sel >= 0x18) else {
        return r;
    };
    if t.gdt_slots[upper] >> 40 & 0x1f == 0 {
        return r;
    }
    let mut u = t.clone();
    u.gdt_slots[upper] &= !(0x1f << 40);
    let (mut r2, _) = emulate_long(&u, at, tr_before, model);
    r2.gdt[8 * upper..8 * upper + 8].copy_from_slice(&t.gdt_slots[upper].to_le_bytes());
    r2
}

/// [`KvmDepartures::first_byte_canonical`](super::KvmDepartures::first_byte_canonical): the instruction whose memory
/// operand starts at `ea` in the last 16 bytes below the canonical hole
/// again with its operand moved down inside the same page (a base or
/// index register, or the FS/GS base, lowered; none of the operand past
/// `0x7fff_ffff_ffff`): its #PF on that page, CR2 moved back, or `None`
/// where it does not fault there (or the operand cannot be moved).
pub(super) fn first_page_fault(
    t: &LongScenario,
    at: u32,
    tr_before: u16,
    model: LongDepartures,
) -> Option<LongRecord> {
    use iced_x86::{OpKind, Register};
    const TOP: u64 = 0x7fff_ffff_ffff;
    let insn = decode(t, at);
    if insn.op_count() == 0 || insn.op0_kind() != OpKind::Memory {
        return None;
    }
    let ea = operand_ea(t, &insn)?;
    if !(TOP - 15..=TOP).contains(&ea) {
        return None;
    }
    let mut u = t.clone();
    let lowered = |v: &mut u64, scale: u64| {
        let delta = (ea - (TOP - 23)).div_ceil(scale) * scale;
        *v = v.wrapping_sub(delta / scale);
        delta
    };
    let gpr = |r: Register| -> Option<usize> {
        let (q, e) = (r as usize, Register::RAX as usize);
        (e..e + 16).contains(&q).then(|| q - e)
    };
    let (delta, reg) = if let Some(n) = gpr(insn.memory_base()) {
        (lowered(&mut u.regs[n], 1), Some(n))
    } else if let Some(n) = gpr(insn.memory_index()) {
        let scale = u64::from(insn.memory_index_scale());
        (lowered(&mut u.regs[n], scale), Some(n))
    } else if insn.memory_segment() == Register::FS {
        (lowered(&mut u.fs_base, 1), None)
    } else if insn.memory_segment() == Register::GS {
        (lowered(&mut u.gs_base, 1), None)
    } else {
        return None;
    };
    let (mut r, _) = emulate_long(&u, at, tr_before, model);
    if r.vector != Some(14) || r.cr2 & !0xfff != ea & !0xfff {
        return None;
    }
    r.cr2 = r.cr2.wrapping_add(delta);
    match reg {
        Some(0) => r.rax = t.regs[0],
        Some(8) => r.r8 = t.regs[8],
        _ => {}
    }
    Some(r)
}
