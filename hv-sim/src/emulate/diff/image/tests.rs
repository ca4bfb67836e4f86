//! The guest image's hand-written encodings, decoded back (iced-x86),
//! and its page-table layout.

use super::*;
use iced_x86::{Decoder, DecoderOptions, Formatter, IntelFormatter};

fn listing(bytes: &[u8], ip: u32) -> Vec<String> {
    let mut d = Decoder::with_ip(32, bytes, u64::from(ip), DecoderOptions::NONE);
    let mut f = IntelFormatter::new();
    let mut out = Vec::new();
    for i in d.iter() {
        let mut s = String::new();
        f.format(&i, &mut s);
        out.push(s);
    }
    out
}

/// The hand-written encodings decode (iced-x86) to what they mean.
#[test]
fn encodings_decode_back() {
    let (t, stubs, rec, back) = text(Paging::Bits32);
    let l = listing(&t.bytes[..16], TEXT);
    assert_eq!(l[0], "mov ss:[10111Ch],eax");
    assert_eq!(l[1], "push 0");
    assert_eq!(l[2], "push 0");
    assert!(l[3].starts_with("jmp"), "{l:?}");
    assert_eq!(stubs[13] - stubs[12], 16);
    let r = listing(&t.bytes[(rec - TEXT) as usize..][..56], rec);
    assert_eq!(r[0], "mov edi,ss:[101110h]");
    assert_eq!(r[1], "mov eax,ss:[101140h]");
    assert_eq!(r[2], "mov ss:[edi+0Ch],eax");
    assert_eq!(r[4], "mov ss:[edi+10h],eax");
    assert_eq!(r[5], "sidt ss:[edi+14h]");
    assert_eq!(r[6], "str ax");
    assert_eq!(r[7], "mov ss:[edi+1Ch],ax");
    let b = listing(&t.bytes[(back - TEXT) as usize..], back);
    assert_eq!(
        b[..3],
        [
            "mov ss:[10111Ch],eax",
            "mov esp,70000h",
            "jmp dword ptr ss:[101120h]"
        ]
    );
    let mut a = Asm::new(0);
    a.load_sreg(3, 0x18)
        .store_imm(0x1234, 5)
        .load_dt(2, SCRATCH);
    assert_eq!(
        listing(&a.bytes, 0),
        [
            "mov ax,18h",
            "mov ds,ax",
            "mov dword ptr ss:[1234h],5",
            "lgdt ss:[101130h]"
        ]
    );
}

/// The runner's hand-written encodings decode to what they mean.
#[test]
fn runner_decodes_back() {
    let (a, after, after_saved) = runner(Paging::Bits32, SCENARIOS, 0x10_3000, 0x20_0000);
    let l = listing(&a.bytes, SCENARIOS);
    assert_eq!(l[0], "mov esp,70000h");
    assert_eq!(l[1], "mov esi,ss:[101128h]");
    assert_eq!(l[2], "mov eax,ss:[esi+0F0h]");
    for want in [
        "mov byte ptr ss:[10108Dh],89h",
        "ltr ax",
        "rep movsd [edi],[esi]",
        "mov ss:[101094h],eax",
        "and eax,0FFFFF7FFh",
        "or eax,ss:[esi+50h]",
        "mov cr4,eax",
        "mov fs,ax",
        "push dword ptr ss:[esi+24h]",
        "push dword ptr ss:[esi+14h]",
        "mov esi,ss:[esi+40h]",
        "iretd",
    ] {
        assert!(l.contains(&want.to_string()), "{want}: {l:?}");
    }
    let tail = listing(&a.bytes[(after - SCENARIOS) as usize..], after);
    assert_eq!(tail[0], "sgdt ss:[101140h]");
    assert_eq!(tail[1], format!("call 00103000h"));
    assert_eq!(after_saved, after + 8);
    assert_eq!(tail[2], "add dword ptr ss:[101128h],114h");
    assert_eq!(tail[3], "dec dword ptr ss:[10112Ch]");
    assert_eq!(tail[4], format!("jne {SCENARIOS:08X}h"));
    // PAE: the code page's entry's high half (xd_page) set before the
    // CR3 reload.
    let (a, _, _) = runner(Paging::Pae, SCENARIOS, 0x10_3000, 0x20_0000);
    let l = listing(&a.bytes, SCENARIOS);
    let k = l
        .iter()
        .position(|i| i == "mov ss:[eax],edx")
        .expect("the XD store");
    assert_eq!(l[k - 2], "mov eax,ss:[esi+64h]");
    assert_eq!(l[k - 1], "mov edx,ss:[esi+68h]");
    assert_eq!(l[k + 1], "mov eax,cr3");
}

/// Only the pages the guest writes are writable (SDM vol. 3A 4.6: with
/// CR0.WP, supervisor writes to read-only pages fault).
#[test]
fn code_is_read_only() {
    for page in [LOAD, IDT, TEXT, SCENARIOS, 0x3f_f000] {
        assert_eq!(pte(page) & 3, 1, "{page:#x}");
    }
    for page in [0x6_f000, GDT, WIN, PD, PT] {
        assert_eq!(pte(page) & 3, 3, "{page:#x}");
    }
    let b = Paging::Bits32;
    let u = 0x80_0000;
    assert_eq!(pde(b, 1, u) & 0x87, 0x81);
    assert_eq!(pde(b, 2, u) & 0x87, 0x85);
    assert_eq!(pde(b, MAPPED_4M - 1, u) & 0x87, 0x83);
    assert_eq!(pde(b, RESULTS >> 22, u) & 0x87, 0x83);
    assert_eq!(pde(b, (RESULTS >> 22) - 1, u) & 0x87, 0x85);
    assert_eq!(pde(b, (RESULTS >> 22) - 1, RESULTS) & 0x87, 0x81);
    let p = Paging::Pae;
    assert_eq!(pde(p, 1, RESULTS), 1 << 21 | 0x81);
    assert_eq!(pde(p, 4, u), 4 << 21 | 0x85);
    assert_eq!(pde(p, RESULTS >> 21, u) & 0x87, 0x83);
    assert_eq!(pde(p, (RESULTS >> 21) - 1, RESULTS) & 0x87, 0x81);
}

/// The runner's `after_saved`, from the built image.
fn after_saved(img: &[u8]) -> u32 {
    let o = (RESUME - LOAD) as usize;
    u32::from_le_bytes(img[o..o + 4].try_into().unwrap()) + 8
}

/// Ring scenarios: CPL 3 stubs in the user pages (from a 4 MiB
/// boundary past the data blocks, SDM vol. 3A 4.6: a user-mode fetch
/// needs U/S at every level), the others below; a 16-bit CPL 0 stub
/// decodes at 16 bits to the instruction and its way back, a stub
/// above CPL 0 to the instruction and `int 20h`.
#[test]
fn ring_stubs_decode_back() {
    let all = super::super::generate_rings(400, super::super::SEED, Paging::Bits32);
    let (img, at) = build(&all).unwrap();
    let user_from = at
        .iter()
        .zip(&all)
        .filter(|(_, s)| s.cpl == 3)
        .map(|(a, _)| *a)
        .min()
        .unwrap();
    assert_eq!(user_from % 0x40_0000, 0);
    let pd = |a: u32| {
        let o = (PD + 4 * (a >> 22) - LOAD) as usize;
        u32::from_le_bytes(img[o..o + 4].try_into().unwrap())
    };
    for (s, &a) in all.iter().zip(&at) {
        assert_eq!(s.cpl == 3, a >= user_from, "{a:#x}");
        // The first 4 MiB go through PT, supervisor pages ([`pte`]).
        let user = if a >> 22 == 0 {
            pte(a) & 4 != 0
        } else {
            pd(a) & 4 != 0
        };
        assert_eq!(user, s.cpl == 3, "{a:#x}");
    }
    let stub_at = |k: usize| &img[(at[k] - LOAD) as usize..][..all[k].insn.len() + 36];
    let k = all
        .iter()
        .position(|s| s.cpl == 0 && s.code16.is_some())
        .unwrap();
    let mut d = Decoder::with_ip(16, stub_at(k), 0, DecoderOptions::NO_INVALID_CHECK);
    let mut f = IntelFormatter::new();
    let mut l = Vec::new();
    for i in d.iter().take(5) {
        let mut s = String::new();
        f.format(&i, &mut s);
        l.push(s);
    }
    assert_eq!(
        l[1..],
        [
            "addr32 mov ss:[10111Ch],eax",
            "sgdt ss:[101140h]",
            "lgdt ss:[101100h]",
            &format!("data32 jmp far {:08X}h,8", after_saved(&img)),
        ],
        "{l:?}"
    );
    let k = all
        .iter()
        .position(|s| s.cpl == 2 && s.code16.is_none())
        .unwrap();
    let l = listing(stub_at(k), at[k]);
    assert_eq!(l[1], "int 20h", "{l:?}");
    assert_eq!(entry_point(&all[k], at[k]), (CODE_SEL | 2, at[k]));
}

/// Paging off: the runner enters a CPL 0, flat 32-bit scenario by RET
/// (CS 0x08 and EFLAGS 2 on the frame), any other by IRET, and touches
/// no page-table entry; the entry sets no CR0.PG.
#[test]
fn paging_off_enters_by_ret() {
    let (a, after, _) = runner(Paging::Off, SCENARIOS, 0x10_3000, 0x20_0000);
    let l = listing(&a.bytes, SCENARIOS);
    let k = l.iter().position(|i| i == "iretd").unwrap();
    let jne = format!("jne short {:08X}h", after - 1);
    assert_eq!(
        l[k - 5..=k],
        [
            "cmp dword ptr [esp+4],8",
            jne.as_str(),
            "cmp dword ptr [esp+8],2",
            jne.as_str(),
            "ret",
            "iretd"
        ]
        .map(String::from),
        "{l:?}"
    );
    assert!(!l.iter().any(|i| i.contains("cr3")), "{l:?}");
    let (b, _, _) = runner(Paging::Bits32, SCENARIOS, 0x10_3000, 0x20_0000);
    assert!(!listing(&b.bytes, SCENARIOS).iter().any(|i| i == "ret"));
    let all = super::super::generate_in(20, super::super::SEED, Paging::Off);
    let (img, _) = build(&all).unwrap();
    let e = listing(&img[32..120], LOAD + 32);
    assert!(!e.iter().any(|i| i.contains("cr0")), "{e:?}");
}
