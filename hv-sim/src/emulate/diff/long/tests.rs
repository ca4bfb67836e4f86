//! The long-mode guest's hand-written encodings decode (iced-x86) to what
//! they mean; the records parse; the emulator side agrees with itself.

use iced_x86::{Decoder, DecoderOptions, Formatter, IntelFormatter};

use super::super::super::Outcome;
use super::image::{self, ENTRY64, IDT, WIN};
use super::*;

fn listing(bits: u32, bytes: &[u8], ip: u64) -> Vec<String> {
    let mut d = Decoder::with_ip(bits, bytes, ip, DecoderOptions::NONE);
    let mut f = IntelFormatter::new();
    d.iter()
        .map(|i| {
            let mut s = String::new();
            f.format(&i, &mut s);
            s
        })
        .collect()
}

fn at(img: &[u8], addr: u32, len: usize) -> &[u8] {
    let o = (addr - 0x10_0000) as usize;
    &img[o..o + len]
}

fn one(mode: CodeMode) -> LongScenario {
    let kind = if mode == CodeMode::Bits64 {
        Kind::Bits64
    } else {
        Kind::Compat
    };
    generate(50, 3, kind, LongPaging::Plain)
        .into_iter()
        .find(|s| s.mode == mode)
        .expect("a scenario of that mode")
}

/// The 32-bit entry, [`ENTRY64`], an exception stub, the common handler
/// and the recorder decode to what they mean.
#[test]
fn entry_handler_recorder_decode_back() {
    let (img, _) = image::build(&[]).unwrap();
    let e = listing(32, at(&img, 0x10_0020, 64), 0x10_0020);
    assert_eq!(e[0], "cli");
    assert!(e.contains(&"mov cr3,eax".to_string()), "{e:?}");
    assert!(e.contains(&"wrmsr".to_string()), "{e:?}");
    assert!(
        e.iter().any(|l| l == &format!("jmp far {ENTRY64:08X}h,8")),
        "{e:?}"
    );
    let x = listing(64, at(&img, ENTRY64, 64), u64::from(ENTRY64));
    assert_eq!(x[0], "mov esp,70000h");
    assert!(
        x[1].starts_with("lgdt [") && x[2].starts_with("lidt ["),
        "{x:?}"
    );
    assert!(x.contains(&"mov ss,ax".to_string()), "{x:?}");
    assert!(
        x.iter().any(|l| l.starts_with("jmp far fword ptr [")),
        "{x:?}"
    );
    // The #PF gate and its stub.
    let g = at(&img, IDT + 14 * 16, 16);
    let lo = u64::from_le_bytes(g[..8].try_into().unwrap());
    let h = (lo & 0xffff) as u32 | ((lo >> 48) as u32) << 16;
    assert_eq!((lo >> 16 & 0xffff, lo >> 40 & 0xff), (8, 0x8e));
    let s = listing(64, at(&img, h, 32), u64::from(h));
    assert!(
        s[0].starts_with("mov [") && s[0].ends_with("],rax"),
        "{s:?}"
    );
    assert_eq!(s[1], "push 0Eh", "#PF pushes its own error code: {s:?}");
    assert!(s[2].starts_with("jmp"), "{s:?}");
    let s0 = listing(64, at(&img, h - 14 * 32, 32), u64::from(h));
    assert_eq!(s0[1], "push 0");
}

/// A scenario's stub in each mode and the runner decode back: the test
/// LGDT, the instruction, the saves, the way back to 64-bit mode.
#[test]
fn stubs_decode_back() {
    for (mode, bits) in [
        (CodeMode::Bits64, 64),
        (CodeMode::Compat32, 32),
        (CodeMode::Compat16, 16),
    ] {
        let s = one(mode);
        let (img, ats) = image::build(std::slice::from_ref(&s)).unwrap();
        let start = ats[0] - image::insn_offset(mode);
        let ip = if mode == CodeMode::Compat16 {
            0
        } else {
            u64::from(start)
        };
        let l = listing(bits, at(&img, start, 80), ip);
        assert!(
            l[0].starts_with("lgdt ") && l[0].contains(':') == (bits != 64),
            "{l:?}"
        );
        let insn = listing(
            bits,
            &s.insn_at(u64::from(ats[0])),
            ip + 8 + u64::from(bits == 16) * 2,
        );
        assert_eq!(l[1], insn[0], "{mode:?}");
        let back = l.iter().position(|x| x.contains("jmp")).unwrap();
        if bits == 64 {
            assert!(l[2].ends_with("],rax") && l[3].ends_with("],r8"), "{l:?}");
        } else {
            assert!(l[2].ends_with("],eax"), "{l:?}");
            assert!(l[back - 4].starts_with("sgdt ") && l[back - 3].starts_with("sidt "));
            assert!(
                l[back].contains("jmp far ") && l[back].ends_with(",8"),
                "{l:?}"
            );
            assert!(l[back - 2].starts_with("lgdt ") && l[back - 1].starts_with("lidt "));
        }
    }
}

/// The RIP-relative displacement is set for the instruction's address.
#[test]
fn rip_relative_is_patched() {
    let s = generate(2000, 5, Kind::Bits64, LongPaging::Plain)
        .into_iter()
        .find(|s| s.rip_rel.is_some())
        .unwrap();
    let rip = 0x12_3456u64;
    let b = s.insn_at(rip);
    let mut d = Decoder::with_ip(64, &b, rip, DecoderOptions::NONE);
    let i = d.decode();
    assert!(i.is_ip_rel_memory_operand(), "{b:02x?}");
    let want = s.rip_rel.unwrap().1;
    let got = i.ip_rel_memory_address();
    let mask = if b.contains(&0x67) {
        0xffff_ffff
    } else {
        u64::MAX
    };
    assert_eq!(got & mask, want & mask);
}

/// The emulator side: a 64-bit SGDT to the window stores the 10-byte
/// pseudo-descriptor (SDM vol. 2B SGDT: 64-bit mode, 8-byte base).
#[test]
fn emulated_sgdt_in_64_bit_mode() {
    let mut s = one(CodeMode::Bits64);
    s.insn = vec![0x0f, 0x01, 0x04, 0x25];
    s.insn.extend_from_slice(&WIN.to_le_bytes());
    s.rip_rel = None;
    s.win = Window::Low;
    s.win_pte = u64::from(WIN | 3);
    s.test_gdtr = (0x7f, u64::from(image::GDT));
    let (r, o) = emulate_long(&s, 0x10_d000, 0x40, LongDepartures::default());
    assert!(matches!(o, Outcome::Emulated { .. }), "{o:?}");
    assert_eq!(r.window[..10], [0x7f, 0, 0x00, 0x10, 0x10, 0, 0, 0, 0, 0]);
    assert_eq!(r.pte & 0x60, 0x60, "A and D set");
}

/// The QEMU departure search can fail: a record that differs from the
/// SDM's in a way no modelled departure makes (an error code bit no fault
/// sets, an IDTR limit off by one, CR2 off by 16 after a #PF, a fault
/// reported at the next instruction) is never
/// explained, so an emulator bug that shows that way stays unexplained.
#[test]
fn no_qemu_departure_explains_a_difference_it_does_not_make() {
    for kind in [Kind::Bits64, Kind::Compat] {
        let scenarios = generate(40, crate::emulate::diff::SEED, kind, LongPaging::Plain);
        let (_, at) = image::build(&scenarios).expect("the image");
        for (i, s) in scenarios.iter().enumerate() {
            let (e, _) = emulate_long(s, at[i], 0, LongDepartures::default());
            let mut perturbed = Vec::new();
            if e.vector.is_some() {
                let mut q = e.clone();
                q.error ^= 0x4000_0000;
                perturbed.push(("error code", q));
            }
            let mut q = e.clone();
            q.idtr.0 ^= 1;
            perturbed.push(("IDTR limit", q));
            if e.vector.is_some() {
                let mut q = e.clone();
                q.frame.0 = q.frame.0.wrapping_add(s.insn.len() as u64);
                perturbed.push(("frame RIP (the next instruction's)", q));
            }
            if e.vector == Some(14) {
                let mut q = e.clone();
                q.cr2 ^= 0x10;
                perturbed.push(("CR2", q));
            }
            for (what, q) in perturbed {
                if let Some(d) = LongDepartures::all(s.mode)
                    .into_iter()
                    .find(|&d| differences(s.mode, &q, &emulate_long(s, at[i], 0, d).0).is_empty())
                {
                    panic!("{kind:?} #{i}: {d} explains a changed {what}");
                }
            }
        }
    }
}

/// `r` changed, in each field on which it differs from `e`, to a value
/// neither record has: the field a departure explains, changed in a way
/// that departure does not make.
fn perturb_each_field(
    mode: CodeMode,
    e: &LongRecord,
    r: &LongRecord,
) -> Vec<(&'static str, LongRecord)> {
    let mut out = Vec::new();
    let byte_off = |a: &[u8], b: &[u8]| a.iter().zip(b).position(|(x, y)| x != y);
    // A mask that takes `r`'s byte to a value `e`'s is not.
    let flip = |r: u8, e: u8| if r ^ e == 0x80 { 0x40 } else { 0x80 };
    for field in differences(mode, e, r) {
        let mut q = r.clone();
        match field {
            // An error code no instruction here makes (a selector
            // beyond every GDT limit the scenarios load, or bit 30).
            "exception" if q.vector.is_some() => q.error ^= 0xfff0,
            "exception" => q.vector = Some(13),
            "rax" => q.rax ^= 0x8000_0001,
            "r8" => q.r8 ^= 0x8000_0001,
            "cr2" => q.cr2 ^= 0x10,
            "frame rip/rsp" => q.frame.0 ^= 2,
            "frame rflags.ac" => q.frame.1 ^= 1 << 18,
            // D where the departure sets A only, or no D where it sets it.
            "pte" => q.pte ^= 0x40,
            "gdtr" => q.gdtr.1 ^= 0x1000_0000,
            "idtr" => q.idtr.1 ^= 0x1000_0000,
            "tr" => q.tr ^= 0x8,
            "ldtr" => q.ldtr ^= 0x8,
            "memory" => {
                let k = byte_off(&e.window, &r.window).expect("a differing byte");
                q.window[k] ^= flip(r.window[k], e.window[k]);
            }
            "gdt" => {
                let k = byte_off(&e.gdt, &r.gdt).expect("a differing byte");
                q.gdt[k] ^= flip(r.gdt[k], e.gdt[k]);
            }
            other => panic!("no perturbation for {other}"),
        }
        out.push((field, q));
    }
    out
}

/// Per departure (issue 11, deliverable 5): for each [`LongDepartures`]
/// flag, scenarios on which that flag alone changes the emulator's record,
/// that record then changed in the field the flag explains but in a way
/// it does not (a different error code, D where only A is set, another
/// byte stored, another base loaded, another busy bit, …): no set of
/// departures explains the result, so an emulator or QEMU difference that
/// only looks like a departure stays unexplained. Every flag must be
/// exercised by the scenarios drawn.
#[test]
fn each_departure_explains_only_the_change_it_makes() {
    const PER_FLAG: usize = 3;
    let mut found = [0usize; model::FLAGS as usize];
    for kind in [Kind::Bits64, Kind::Compat] {
        for paging in [LongPaging::Plain, LongPaging::Smap] {
            let scenarios = generate(3000, crate::emulate::diff::SEED, kind, paging);
            let (_, at) = image::build(&scenarios).expect("the image");
            for (i, s) in scenarios.iter().enumerate() {
                let all = LongDepartures::all(s.mode);
                let (e, _) = emulate_long(s, at[i], 0, LongDepartures::default());
                for k in 0..model::FLAGS {
                    let d = LongDepartures::from_bits(1 << k);
                    if found[k as usize] >= PER_FLAG || !all.contains(&d) {
                        continue;
                    }
                    let (r, _) = emulate_long(s, at[i], 0, d);
                    if r.outside || differences(s.mode, &e, &r).is_empty() {
                        continue;
                    }
                    found[k as usize] += 1;
                    for (what, q) in perturb_each_field(s.mode, &e, &r) {
                        if let Some(x) = all.iter().find(|&&x| {
                            differences(s.mode, &q, &emulate_long(s, at[i], 0, x).0).is_empty()
                        }) {
                            panic!(
                                "{kind:?} {paging:?} #{i}: flag {k} ({d}): {x} explains a changed {what}"
                            );
                        }
                    }
                }
            }
        }
    }
    for (k, n) in found.iter().enumerate() {
        let d = LongDepartures::from_bits(1 << k);
        assert!(
            *n > 0,
            "flag {k} ({d}) changes no record of the scenarios drawn"
        );
    }
}
