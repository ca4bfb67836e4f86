//! Drawing long-mode scenarios. 64-bit mode: an instruction form (REX,
//! 0x66, 0x67, a segment override, a register, base + index × scale +
//! displacement, an absolute disp32 or RIP-relative), a target linear
//! address (the window through one of its three aliases, the window
//! page's end, a page crossing, a non-canonical or unmapped address) and
//! the FS/GS base and registers that put the operand there.
//! Compatibility mode: the 32-bit guest's scenarios (`diff::generate_in`),
//! their 0x66/0x67 prefixes flipped for 16-bit code. Both: 16-byte system
//! descriptors in the GDT, the window's 4-level entry, EFLAGS.AC.

use iced_x86::{Decoder, DecoderOptions};

use super::super::scenarios::{FLAT, segment_for, system_slot};
use super::super::{Paging, Rng};
use super::image::{GDT, WIN};
use super::{CodeMode, Kind, LongPaging, LongScenario, Window};

/// `n` scenarios of `kind` from `seed` under `paging`.
pub fn generate(n: usize, seed: u64, kind: Kind, paging: LongPaging) -> Vec<LongScenario> {
    let mut r = Rng(seed ^ 0x10_6e5e);
    match kind {
        Kind::Bits64 => (0..n).map(|_| scenario64(&mut r, paging)).collect(),
        Kind::Compat => super::super::generate_in(n, seed, Paging::Pae)
            .into_iter()
            .map(|s| compat(&mut r, s, paging))
            .collect(),
    }
}

/// The window page's entry: present read/write or read-only, not present,
/// user (SMAP), XD (no effect on data), reserved address bits (at and
/// above MAXPHYADDR, 40 under QEMU TCG: SDM vol. 3A table 4-19), bits
/// 52–62 (ignored in 4-level paging without protection keys: table 4-19).
fn window_pte(r: &mut Rng) -> u64 {
    let w = u64::from(WIN);
    r.pick(&[
        w | 3,
        w | 3,
        w | 1,
        w | 1,
        w | 2,
        w | 7,
        w | 5,
        0,
        1 << 63 | w | 3,
        1 << 63 | w | 1,
        1 << 45 | w | 3,
        1 << 40 | w | 1,
        1 << 51 | w | 3,
        1 << 52 | w | 3,
        0x7ff0 << 48 | w | 3,
        1 << 59 | w | 7,
        w | 0x163,
    ])
}

/// The upper half of a 16-byte system descriptor: base bits 63:32
/// (canonical or not with the low half's bit 31) and, now and then, a
/// non-zero type field (bits 12:8 of its upper dword: SDM vol. 3A figure
/// 8-4, must be 0) or other reserved bits.
fn upper_half(r: &mut Rng) -> u64 {
    let any = r.next() as u32;
    let hi = r.pick(&[
        0u32,
        0,
        0,
        0x7fff,
        0xffff_8000,
        0xffff_ffff,
        0x8000,
        0xffff_7fff,
        any,
    ]);
    let mut top = 0u32;
    if r.below(6) == 0 {
        top |= (1 + r.below(31) as u32) << 8;
    }
    if r.below(6) == 0 {
        top |= r.next() as u32 & 0xffff_e0ff;
    }
    u64::from(hi) | u64::from(top) << 32
}

/// GDT slots 4..=12 (0x38..0x78): system descriptors, most followed by an
/// upper half (a 16-byte descriptor), some alone (their upper half is the
/// next descriptor, or at 0x78 the runtime's 32-bit code).
fn system_slots(r: &mut Rng, slots: &mut [u64; 13]) {
    let mut k = 4;
    while k < 13 {
        slots[k] = system_slot(r);
        if k + 1 < 13 && r.below(4) != 0 {
            slots[k + 1] = upper_half(r);
            k += 2;
        } else {
            k += 1;
        }
    }
}

/// LTR/LLDT's selector: a slot, with edges (RPL, TI, beyond the table).
fn selector(r: &mut Rng) -> u16 {
    r.pick(&[
        0x38u16, 0x40, 0x48, 0x50, 0x58, 0x60, 0x68, 0x70, 0x78, 0x08, 0x18, 0, 3, 0x80, 0xf8,
    ]) | r.below(4) as u16
        | if r.below(10) == 0 { 4 } else { 0 }
}

/// The test GDT limit: the runtime's, an edge of the selector's 8 or 16
/// bytes, or any (never below 0x0f: exception delivery reads 0x08).
fn gdt_limit(r: &mut Rng, sel: u16) -> u16 {
    let edge = (sel & 0xfff8).wrapping_add(r.pick(&[6u16, 7, 8, 14, 15, 16]));
    let any = 0x0f + r.below(0x81) as u16;
    r.pick(&[super::image::GDT_LIMIT, edge.max(0x0f), any])
}

fn canonical(a: u64) -> bool {
    pvops::table::is_canonical(a)
}

/// A compatibility-mode scenario from a 32-bit one: 16-bit code one time
/// in three (0x66 and 0x67 flipped, CS overrides as SS: the 16-bit code
/// segment is based at the stub), the IA-32e parts drawn anew.
fn compat(r: &mut Rng, s: super::super::Scenario, paging: LongPaging) -> LongScenario {
    let d16 = r.below(3) == 0;
    let mut insn = s.insn.clone();
    if d16 {
        let opcode = insn.iter().position(|&b| b == 0x0f).unwrap_or(0);
        let mut p: Vec<u8> = insn[..opcode]
            .iter()
            .filter(|&&b| b != 0x66 && b != 0x67)
            .map(|&b| if b == 0x2e { 0x36 } else { b })
            .collect();
        for flip in [0x66, 0x67] {
            if !insn[..opcode].contains(&flip) {
                p.insert(0, flip);
            }
        }
        p.extend_from_slice(&insn[opcode..]);
        insn = p;
    }
    let mut regs = [0u64; 16];
    for (k, v) in s.regs.iter().enumerate() {
        regs[k] = u64::from(*v) | (r.next() & 0xffff_ffff_0000_0000);
    }
    for v in regs[8..].iter_mut() {
        *v = r.next();
    }
    let mut gdt_slots = s.gdt_slots;
    system_slots(r, &mut gdt_slots);
    let sel_of = |k: usize| s.sels[k];
    let base = |k: usize| {
        let sel = sel_of(k);
        if sel & 0xfffc == 0 {
            0
        } else {
            let d = gdt_slots[usize::from(sel >> 3) - 3];
            (d >> 16 & 0xff_ffff) | (d >> 56) << 24
        }
    };
    // The upper 32 bits of FS/GS base now and then: compatibility mode
    // ignores them (SDM vol. 3A 3.4.4).
    let hi = |r: &mut Rng| {
        if r.below(3) == 0 {
            r.next() & 0x7fff_0000_0000
        } else {
            0
        }
    };
    let mut window_tail = [0u8; 16];
    window_tail.fill_with(|| r.next() as u8);
    let sel = selector_in(&s);
    LongScenario {
        mode: if d16 {
            CodeMode::Compat16
        } else {
            CodeMode::Compat32
        },
        paging,
        insn,
        rip_rel: None,
        regs,
        sels: s.sels,
        fs_base: base(2) | hi(r),
        gs_base: base(3) | hi(r),
        gdt_slots,
        window: s.window,
        window_tail,
        test_gdtr: (gdt_limit(r, sel), u64::from(GDT)),
        win: Window::Low,
        win_pte: window_pte(r),
        ac: paging == LongPaging::Smap && r.below(2) == 0,
    }
}

/// The selector a 32-bit scenario's LTR/LLDT loads (from its register
/// or the window), for the GDT limit's edge; 0 if none.
fn selector_in(s: &super::super::Scenario) -> u16 {
    let mut d = Decoder::new(32, &s.insn, DecoderOptions::NO_INVALID_CHECK);
    let i = d.decode();
    if i.op0_kind() == iced_x86::OpKind::Register {
        return s.regs[0] as u16;
    }
    // The generator puts the selector at the window offset the operand
    // lands on; any slot is fine for an edge.
    u16::from_le_bytes([s.window[0], s.window[1]])
}

/// The operand's form in 64-bit mode.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Form {
    /// ModRM register (STR/SLDT/LTR/LLDT).
    Register(u8),
    /// [base + index × scale + disp].
    Based,
    /// [disp32] through a SIB byte.
    Absolute,
    /// [rip + disp32].
    RipRelative,
}

/// Where a 64-bit scenario's operand goes: the linear address, and
/// whether it is the window (`Some(offset)`), so the selector can be put
/// there.
fn target(r: &mut Rng, size: u64) -> (u64, Window, Option<usize>) {
    let win = r.pick(&[Window::Low, Window::Low, Window::TopLow, Window::HighHalf]);
    let page = win.linear();
    match r.below(20) {
        0..=13 => {
            let t = r.below(64 - size + 1) as usize;
            (page + t as u64, win, Some(t))
        }
        14 => {
            let t = 0xff0 + r.below(16 - size + 1) as usize;
            (page + t as u64, win, Some(t - 0xff0 + 64))
        }
        15 | 16 => {
            // Across the page's end: into the next page (read-only,
            // non-canonical, or not present).
            let t = 0x1000 - 1 - r.below(size - 1);
            (page + t, win, None)
        }
        _ => {
            let any = r.next();
            let edge = r.pick(&[
                0x0000_8000_0000_0000u64,
                0xffff_7fff_ffff_fff8,
                0xffff_7fff_ffff_fffc,
                0x0000_7fff_ffff_e000,
                0x4000_0000,
                0x1_0000_0000,
                0xffff_ffff_ffff_f000,
                0xffff_8000_0000_1000,
                any,
            ]);
            (edge.wrapping_add(r.below(8)), win, None)
        }
    }
}

/// A FS/GS base that puts `target` at an effective address the form
/// can express (`fits`). Canonical (WRMSR faults otherwise).
fn segment_base(r: &mut Rng, target: u64, fits: impl Fn(u64) -> bool) -> Option<u64> {
    let tries = [
        target.wrapping_sub(r.below(1 << 30)),
        target.wrapping_sub(r.below(1 << 16)),
        0x7fff_ffff_f000u64.wrapping_sub(r.below(1 << 20) << 12),
        0xffff_8000_0000_0000 + (r.below(1 << 30) << 4),
        r.next() & 0x7fff_ffff_ffff,
    ];
    tries
        .into_iter()
        .find(|&b| canonical(b) && fits(target.wrapping_sub(b)))
}

/// One 64-bit-mode scenario.
fn scenario64(r: &mut Rng, paging: LongPaging) -> LongScenario {
    let (op, reg) = r.pick(&[
        (1u8, 2u8),
        (1, 3),
        (1, 0),
        (1, 1),
        (0, 3),
        (0, 2),
        (0, 1),
        (0, 0),
    ]);
    let size: u64 = if op == 1 { 10 } else { 2 };
    let mut s = blank64(r, paging);
    let a32 = r.below(4) == 0;
    let mut prefixes = Vec::new();
    if r.below(30) == 0 {
        prefixes.push(0xf0);
    }
    if r.below(5) == 0 {
        prefixes.push(0x66);
    }
    if a32 {
        prefixes.push(0x67);
    }
    let seg = if r.below(10) < 4 {
        let p = r.pick(&[0x26u8, 0x2e, 0x36, 0x3e, 0x64, 0x65, 0x64, 0x65]);
        prefixes.push(p);
        p
    } else {
        0
    };
    // Shuffle the legacy prefixes (their order is free).
    for k in (1..prefixes.len()).rev() {
        prefixes.swap(k, r.below(k as u64 + 1) as usize);
    }
    let form = if op == 0 && r.below(4) == 0 {
        // Any register but RSP (the guest's stack: STR/SLDT would move it).
        Form::Register(r.pick(&[0u8, 1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]))
    } else {
        r.pick(&[
            Form::Based,
            Form::Based,
            Form::Based,
            Form::Absolute,
            Form::RipRelative,
        ])
    };
    let (mut t, win, mut at) = target(r, size);
    s.win = win;
    // The effective addresses each form can give: 32-bit addressing only
    // the low 4 GiB; an absolute disp32 (sign-extended) ±2 GiB; RIP-
    // relative, near the code (the low 1 GiB).
    let fits = |ea: u64| match form {
        Form::Register(_) => true,
        Form::Absolute if !a32 => ea < 1 << 31 || ea >= 0u64.wrapping_sub(1 << 31),
        Form::RipRelative if !a32 => ea < 0x4000_0000,
        _ => !a32 || ea >> 32 == 0,
    };
    let fsgs = matches!(seg, 0x64 | 0x65);
    let mut base = if fsgs {
        segment_base(r, t, fits).unwrap_or(0)
    } else {
        0
    };
    if !fits(t.wrapping_sub(base)) {
        (t, at, s.win, base) = (u64::from(WIN) + 8, Some(8), Window::Low, 0);
    }
    let ea = t.wrapping_sub(base);
    if seg == 0x64 {
        s.fs_base = base;
    } else if seg == 0x65 {
        s.gs_base = base;
    }
    let w = r.below(3) == 0;
    let (modrm, tail, rex_xb, rip_rel) = encode(r, &mut s, form, reg, ea, a32);
    let rex = u8::from(w) << 3 | rex_xb | u8::from(r.below(8) == 0) << 2;
    let mut insn = prefixes;
    if rex != 0 || r.below(8) == 0 {
        insn.push(0x40 | rex);
    }
    insn.extend_from_slice(&[0x0f, op, modrm]);
    let k = insn.len();
    insn.extend_from_slice(&tail);
    s.rip_rel = rip_rel.map(|ea| (k, ea));
    s.insn = insn;
    let sel = selector(r);
    match (form, at) {
        (Form::Register(n), _) => {
            let v = &mut s.regs[usize::from(n)];
            *v = *v & !0xffff | u64::from(sel);
        }
        (_, Some(t)) if t < 64 => s.window[t..t + 2].copy_from_slice(&sel.to_le_bytes()),
        (_, Some(t)) => s.window_tail[t - 64..t - 62].copy_from_slice(&sel.to_le_bytes()),
        _ => {}
    }
    s.test_gdtr = (gdt_limit(r, sel), u64::from(GDT));
    s
}

/// The ModRM byte, the SIB/displacement bytes, REX.X/REX.B, and a
/// RIP-relative target; sets the registers so the effective address
/// is `ea` (`a32`: its low 32 bits; the registers' upper halves random).
fn encode(
    r: &mut Rng,
    s: &mut LongScenario,
    form: Form,
    reg: u8,
    ea: u64,
    a32: bool,
) -> (u8, Vec<u8>, u8, Option<u64>) {
    let m = |md: u8, rm: u8| md << 6 | reg << 3 | (rm & 7);
    match form {
        Form::Register(n) => (m(3, n), vec![], n >> 3, None),
        Form::RipRelative => (m(0, 5), vec![0; 4], 0, Some(ea)),
        Form::Absolute => {
            let mut v = vec![0x25];
            v.extend_from_slice(&(ea as u32).to_le_bytes());
            (m(0, 4), v, 0, None)
        }
        Form::Based => {
            let regs: Vec<u8> = (0..16).filter(|&x| x != 4).collect();
            let b = r.pick(&regs);
            let index = if r.below(2) == 0 {
                let others: Vec<u8> = regs.iter().copied().filter(|&x| x != b).collect();
                Some(r.pick(&others))
            } else {
                None
            };
            let md = if b & 7 == 5 {
                1 + r.below(2) as u8
            } else {
                r.below(3) as u8
            };
            let disp: u64 = match md {
                1 => r.next() as i8 as u64,
                2 => r.next() as i32 as u64,
                _ => 0,
            };
            let mut rest = ea.wrapping_sub(disp);
            let mut tail = Vec::new();
            let sib = index.is_some() || b & 7 == 4 || r.below(4) == 0;
            let scale = r.below(4) as u8;
            if let Some(x) = index {
                let k = r.below(0x40);
                s.regs[usize::from(x)] = k | ((r.next() & 0xffff_ffff_0000_0000) * u64::from(a32));
                rest = rest.wrapping_sub(k << scale);
            }
            let hi = if a32 { r.next() & !0xffff_ffff } else { 0 };
            s.regs[usize::from(b)] = if a32 { rest & 0xffff_ffff | hi } else { rest };
            let rm = if sib {
                tail.push(scale << 6 | index.map_or(4, |x| x & 7) << 3 | (b & 7));
                4
            } else {
                b
            };
            match md {
                1 => tail.push(disp as u8),
                2 => tail.extend_from_slice(&(disp as u32).to_le_bytes()),
                _ => {}
            }
            let xb = index.map_or(0, |x| x >> 3) << 1 | b >> 3;
            (m(md, rm), tail, xb, None)
        }
    }
}

/// A 64-bit scenario's state before its instruction is drawn: random
/// registers and window, loadable data segments (or null) in ES/DS/FS/GS,
/// their bases as the descriptors give them, system descriptors.
fn blank64(r: &mut Rng, paging: LongPaging) -> LongScenario {
    let mut gdt_slots = [FLAT; 13];
    for (k, slot) in gdt_slots[..4].iter_mut().enumerate() {
        // ES and DS: based at 0 or at 1 GiB and above, where nothing is
        // mapped: QEMU, which adds their base to an ES/DS-overridden
        // operand (LongDepartures::legacy_override_base), then faults
        // instead of writing over the guest.
        let (o, any) = (r.next() as u32, r.next() as u32);
        let base = if k < 2 && r.below(4) != 0 {
            0x4000_0000 | any
        } else if k < 2 {
            0
        } else {
            any
        };
        *slot = segment_for(r, o, 2, base, 0);
    }
    system_slots(r, &mut gdt_slots);
    let mut sels = [0x18, 0x20, 0x28, 0x30];
    for s in sels.iter_mut() {
        if r.below(6) == 0 {
            *s = r.pick(&[0u16, 1, 3]);
        }
    }
    let mut regs = [0u64; 16];
    regs.fill_with(|| r.next());
    let mut window = [0u8; 64];
    window.fill_with(|| r.next() as u8);
    let mut window_tail = [0u8; 16];
    window_tail.fill_with(|| r.next() as u8);
    let base = |k: usize| {
        let d = gdt_slots[k];
        if sels[k] & 0xfffc == 0 {
            0
        } else {
            (d >> 16 & 0xff_ffff) | (d >> 56) << 24
        }
    };
    LongScenario {
        mode: CodeMode::Bits64,
        paging,
        insn: Vec::new(),
        rip_rel: None,
        regs,
        sels,
        fs_base: base(2),
        gs_base: base(3),
        gdt_slots,
        window,
        window_tail,
        test_gdtr: (super::image::GDT_LIMIT, u64::from(GDT)),
        win: Window::Low,
        win_pte: window_pte(r),
        ac: paging == LongPaging::Smap && r.below(2) == 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{OpKind, Register};

    /// Where a 64-bit scenario's operand lands (iced-x86's effective
    /// address with the scenario's registers and FS/GS bases).
    fn linear(s: &LongScenario, rip: u64) -> Option<u64> {
        let insn = s.insn_at(rip);
        let mut d = Decoder::with_ip(64, &insn, rip, DecoderOptions::NO_INVALID_CHECK);
        let i = d.decode();
        if i.op0_kind() != OpKind::Memory {
            return None;
        }
        i.virtual_address(0, 0, |reg, _, _| match reg {
            Register::FS => Some(s.fs_base),
            Register::GS => Some(s.gs_base),
            Register::ES | Register::CS | Register::SS | Register::DS => Some(0),
            r => {
                let (n, size) = crate::emulate::exec::gpr(r)?;
                let v = s.regs[usize::from(n)];
                Some(if size == 4 { v & 0xffff_ffff } else { v })
            }
        })
    }

    /// Every 64-bit operand aimed at the window lands on it (iced-x86
    /// decodes the instruction and computes the address); the FS/GS bases
    /// are canonical (the runner's WRMSR would fault).
    #[test]
    fn operands_land_where_aimed() {
        let all = generate(20_000, 7, Kind::Bits64, LongPaging::Plain);
        let mut on_window = 0;
        for (k, s) in all.iter().enumerate() {
            assert!(canonical(s.fs_base) && canonical(s.gs_base), "{k}");
            let Some(a) = linear(s, 0x20_0000) else {
                continue;
            };
            let page = s.win.linear();
            if (page..page + 64).contains(&a) {
                on_window += 1;
            }
        }
        assert!(on_window > 10_000, "{on_window}");
    }
}
