//! The 64-bit-mode stores of [`KvmDepartures::wide_store`](super::KvmDepartures::wide_store)
//! and [`KvmDepartures::partial_store`](super::KvmDepartures::partial_store):
//! which bytes KVM's SGDT/SIDT/STR/SLDT store, put into a record's window.

use crate::emulate::diff::long::{CodeMode, LongRecord, LongScenario};

use super::{decode, operand_ea};

/// A 64-bit-mode store instruction's memory operand (SGDT, SIDT, STR,
/// SLDT), for the store departures.
pub(super) struct Store {
    pub(super) ea: u64,
    pub(super) rex_w: bool,
    /// STR or SLDT (else SGDT or SIDT).
    pub(super) selector: bool,
    ldtr_or_idtr: bool,
}

impl Store {
    pub(super) fn of(s: &LongScenario, at: u32) -> Option<Store> {
        use iced_x86::{Mnemonic, OpKind};
        if s.mode != CodeMode::Bits64 {
            return None;
        }
        let bytes = s.insn_at(u64::from(at));
        let opcode = bytes.iter().position(|&b| b == 0x0f).unwrap_or(0);
        let rex_w = opcode > 0 && bytes[opcode - 1] & 0xf8 == 0x48;
        let insn = decode(s, at);
        let (selector, ldtr_or_idtr) = match insn.mnemonic() {
            Mnemonic::Str => (true, false),
            Mnemonic::Sldt => (true, true),
            Mnemonic::Sgdt => (false, false),
            Mnemonic::Sidt => (false, true),
            _ => return None,
        };
        if insn.op0_kind() != OpKind::Memory {
            return None;
        }
        let ea = operand_ea(s, &insn)?;
        Some(Store {
            ea,
            rex_w,
            selector,
            ldtr_or_idtr,
        })
    }

    /// The bytes the instruction stores (the record's registers).
    fn value(&self, r: &LongRecord, wide: bool) -> Vec<u8> {
        if self.selector {
            let sel = if self.ldtr_or_idtr { r.ldtr } else { r.tr };
            let mut v = u64::from(sel).to_le_bytes().to_vec();
            v.truncate(if wide && self.rex_w { 8 } else { 2 });
            v
        } else {
            let (limit, base) = if self.ldtr_or_idtr { r.idtr } else { r.gdtr };
            let mut v = limit.to_le_bytes().to_vec();
            v.extend_from_slice(&base.to_le_bytes());
            v
        }
    }

    /// The 8-byte store into the record's window, where it falls in the
    /// window page without crossing it.
    pub(super) fn put_wide(&self, s: &LongScenario, r: &mut LongRecord) {
        let v = self.value(r, true);
        let off = self.ea.wrapping_sub(s.win.linear());
        if off.saturating_add(v.len() as u64) > 4096 {
            return;
        }
        for (k, b) in (off..).zip(v) {
            window_put(r, k, b);
        }
    }

    /// The first page's part of a page-split store.
    pub(super) fn partial(&self, s: &LongScenario, r: &mut LongRecord, wide: bool) {
        let v = self.value(r, wide);
        let off = self.ea.wrapping_sub(s.win.linear());
        if off >= 4096 {
            return;
        }
        for (k, b) in (off..4096).zip(v) {
            window_put(r, k, b);
        }
    }
}

/// Byte `k` of the window page into the record (its first 64 and last 16
/// bytes are recorded).
fn window_put(r: &mut LongRecord, k: u64, b: u8) {
    let at = match k {
        0..64 => k as usize,
        0xff0..0x1000 => 64 + (k - 0xff0) as usize,
        _ => return,
    };
    r.window[at] = b;
}
