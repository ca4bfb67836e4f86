//! hv-sim's VMI option ROM against pvops-vmi's probe: the good ROM is
//! accepted with every field as the reference lays it out, each malformed
//! variant is refused with the rule it breaks, and the call stubs are real
//! x86-64 code (decoded with iced-x86).

use hv_sim::vmi::rom::RomBuilder;
use hv_sim::vmi::{GuestKind, RamMemory, RomError, VmiHypervisor};
use iced_x86::{Decoder, DecoderOptions, Formatter, IntelFormatter};
use pvops_vmi::rom::{
    License, ProbeRules, Refusal, check_rom, check_rom_with, probe, probe_strict,
};

fn hv_with(base: u64, b: &RomBuilder) -> VmiHypervisor<RamMemory> {
    let hv = VmiHypervisor::without_rom(GuestKind::Vmi64, RamMemory::new(0x10_0000, 0x1000));
    hv.place_rom(base, b).unwrap();
    hv
}

fn refused(b: RomBuilder) -> Refusal {
    let hv = hv_with(0xC8000, &b);
    let nf = probe(&hv).unwrap_err();
    let (base, why) = nf.refused.expect("a refused VMI ROM is reported");
    assert_eq!(base, 0xC8000);
    // The report names the rule.
    assert!(
        nf.to_string().contains("VMI ROM at 0xc8000 refused"),
        "{nf}"
    );
    why
}

#[test]
fn probe_accepts_hv_sims_rom() {
    let hv = VmiHypervisor::new(GuestKind::Vmi64, RamMemory::new(0x10_0000, 0x1000));
    let rom = probe(&hv).unwrap();
    // hv-sim's ROM is well-formed: the strict rules find the same ROM.
    assert_eq!(probe_strict(&hv), Ok(rom));
    assert_eq!(rom.base, 0xC8000);
    assert_eq!(rom.size, 5 * 512);
    assert_eq!((rom.api_major, rom.api_minor), (3, 0));
    assert_eq!((rom.vendor, rom.device), (0x15AD, 0x0801));
    assert!(!rom.unknown_vendor());
    assert_eq!(rom.license, License::Gpl);
    assert_eq!(rom.virtual_top, 0xFFC0_0000);
    assert_eq!(rom.jump_slots, 128);
    assert_eq!(rom.init_entry(), 0xC8080);
    assert_eq!(rom.reloc_entry(), 0xC8088);
}

#[test]
fn rom_bytes_as_the_reference_lays_them_out() {
    let img = RomBuilder::default().build();
    assert_eq!(u16::from_le_bytes([img[0], img[1]]), 0xAA55);
    assert_eq!(img[2] as usize * 512, img.len());
    assert_eq!(&img[8..12], b"cVmi");
    assert_eq!(
        u32::from_le_bytes([img[8], img[9], img[10], img[11]]),
        0x696d_5663
    );
    assert_eq!((img[0x0C], img[0x0D]), (0, 3));
    let pci = u16::from_le_bytes([img[0x18], img[0x19]]) as usize;
    assert_eq!(&img[pci..pci + 4], b"PCIR");
    assert_eq!(&img[pci + 4..pci + 8], &[0xAD, 0x15, 0x01, 0x08]);
    let lic = u16::from_le_bytes([img[0x16], img[0x17]]) as usize;
    assert_eq!(&img[lic..lic + 4], b"GPL\0");
    let pnp = u16::from_le_bytes([img[0x1A], img[0x1B]]) as usize;
    assert_eq!(&img[pnp..pnp + 4], b"$PnP");
    assert_eq!(img.iter().fold(0u8, |s, &b| s.wrapping_add(b)), 0);
}

fn disassemble(bytes: &[u8], ip: u64) -> Vec<String> {
    let mut d = Decoder::with_ip(64, bytes, ip, DecoderOptions::NONE);
    let mut f = IntelFormatter::new();
    let mut out = Vec::new();
    for insn in &mut d {
        let mut s = String::new();
        f.format(&insn, &mut s);
        out.push(s);
        if insn.mnemonic() == iced_x86::Mnemonic::Ret {
            break;
        }
    }
    out
}

/// An immediate as iced's Intel formatter prints it (9 and below in
/// decimal, else hex with an `h` suffix and a leading 0 before a letter).
fn masm_imm(v: u32) -> String {
    if v <= 9 {
        return v.to_string();
    }
    let h = format!("{v:X}h");
    if h.starts_with(|c: char| c.is_ascii_alphabetic()) {
        format!("0{h}")
    } else {
        h
    }
}

#[test]
fn stubs_are_real_x86_64_code() {
    let img = RomBuilder::default().build();
    // VMI API 3.0's descriptor calls and SetLazyMode (`asm/vmi.h`).
    for nr in [3u32, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 73] {
        let off = 0x100 + 16 * nr as usize;
        let code = disassemble(&img[off..off + 16], 0xC8000 + off as u64);
        assert_eq!(
            code,
            vec![
                format!("mov eax,{}", masm_imm(nr)),
                "out 0E6h,eax".into(),
                "ret".into()
            ],
            "call {nr}"
        );
    }
    let init = disassemble(&img[0x80..0x88], 0xC8080);
    assert_eq!(init, ["mov eax,0FFFF0000h", "out 0E6h,eax", "ret"]);
    let reloc = disassemble(&img[0x88..0x90], 0xC8088);
    assert_eq!(reloc, ["mov eax,0FFFF0001h", "out 0E6h,eax", "ret"]);
    // An undefined call's slot is int3 only.
    let off = 0x100 + 16 * 50;
    assert_eq!(disassemble(&img[off..off + 1], 0), ["int3"]);
}

#[test]
fn bad_option_rom_signature_is_not_a_rom() {
    let b = RomBuilder {
        signature: 0xAA56,
        ..RomBuilder::default()
    };
    let hv = hv_with(0xC8000, &b);
    let nf = probe(&hv).unwrap_err();
    assert_eq!(nf.refused, None);
    assert_eq!(nf.other_roms, 0);
    assert_eq!(
        check_rom(&hv, 0xC8000),
        Err(Refusal::NoOptionRom { found: 0xAA56 })
    );
}

#[test]
fn bad_vmi_signature_is_another_option_rom() {
    let b = RomBuilder {
        vmi_signature: u32::from_le_bytes(*b"cVmI"),
        ..RomBuilder::default()
    };
    let hv = hv_with(0xC8000, &b);
    let nf = probe(&hv).unwrap_err();
    assert_eq!(nf.refused, None);
    assert_eq!(nf.other_roms, 1);
    assert!(matches!(
        check_rom(&hv, 0xC8000),
        Err(Refusal::NotVmi { .. })
    ));
    assert!(nf.to_string().contains("1 other option ROM"), "{nf}");
}

#[test]
fn major_version_other_than_3_refused() {
    for major in [2, 4, 13] {
        let why = refused(RomBuilder {
            api_major: major,
            ..RomBuilder::default()
        });
        assert_eq!(why, Refusal::ApiVersion { major, minor: 0 });
        assert!(why.to_string().contains("needs major version 3"));
    }
}

#[test]
fn minor_version_bump_accepted() {
    let hv = hv_with(
        0xC8000,
        &RomBuilder {
            api_minor: 7,
            ..RomBuilder::default()
        },
    );
    let rom = probe(&hv).unwrap();
    assert_eq!((rom.api_major, rom.api_minor), (3, 7));
}

#[test]
fn missing_pci_header_refused() {
    let why = refused(RomBuilder {
        pci_header: false,
        ..RomBuilder::default()
    });
    assert_eq!(why, Refusal::NoPciHeader);
    assert!(why.to_string().contains("PCI header"));
}

#[test]
fn other_vendor_accepted_with_warning() {
    let hv = hv_with(
        0xC8000,
        &RomBuilder {
            vendor: 0x8086,
            ..RomBuilder::default()
        },
    );
    let rom = probe(&hv).unwrap();
    assert!(rom.unknown_vendor());
}

#[test]
fn non_gpl_license_refused() {
    for lic in [&b"BSD"[..], b"GPL v3", b"Proprietary", b"gpl"] {
        let why = refused(RomBuilder {
            license: Some(lic.to_vec()),
            ..RomBuilder::default()
        });
        assert!(
            matches!(why, Refusal::NonGplLicense { .. }),
            "{lic:?}: {why}"
        );
        let text = why.to_string();
        assert!(text.contains(std::str::from_utf8(lic).unwrap()), "{text}");
        assert!(text.contains("only \"GPL\" or \"GPL v2\""), "{text}");
    }
    assert_eq!(
        refused(RomBuilder {
            license: None,
            ..RomBuilder::default()
        }),
        Refusal::NoLicense
    );
    // "GPL v2" is accepted too.
    let hv = hv_with(
        0xC8000,
        &RomBuilder {
            license: Some(b"GPL v2".to_vec()),
            ..RomBuilder::default()
        },
    );
    assert_eq!(probe(&hv).unwrap().license, License::GplV2);
}

/// Linux's check_vmi_rom never summed the ROM: the default probe finds a
/// ROM with a bad checksum; the strict rules refuse it.
#[test]
fn bad_checksum_found_by_default_refused_by_strict() {
    let b = RomBuilder {
        fix_checksum: false,
        ..RomBuilder::default()
    };
    let hv = hv_with(0xC8000, &b);
    assert_eq!(probe(&hv).unwrap().base, 0xC8000);
    let nf = probe_strict(&hv).unwrap_err();
    let (base, why) = nf.refused.expect("a refused VMI ROM is reported");
    assert_eq!(base, 0xC8000);
    assert!(
        matches!(why, Refusal::Checksum { sum } if sum != 0),
        "{why}"
    );
    assert!(nf.to_string().contains("checksum"), "{nf}");
}

/// Each well-formedness rule Linux did not have: a ROM breaking it is found
/// by the default probe (Linux would have used it) and refused by the
/// strict one with that rule.
#[test]
fn rules_linux_did_not_check_are_strict_only() {
    const BASE: u64 = 0xC8000;
    let pci = hv_sim::vmi::rom::PCI_OFFS as u64;
    /// What is broken, the bytes placed over the good ROM, the strict rule.
    type Case = (&'static str, Vec<(u64, Vec<u8>)>, fn(&Refusal) -> bool);
    let cases: [Case; 4] = [
        (
            "no \"PCIR\" signature",
            vec![(BASE + pci, b"XXXX".to_vec())],
            |r| matches!(r, Refusal::PciSignature { found } if found == b"XXXX"),
        ),
        ("rom_length 0", vec![(BASE + 2, vec![0])], |r| {
            *r == Refusal::EmptyRom
        }),
        (
            "PCI header past the ROM's 0xA00 bytes",
            vec![
                (BASE + 0x18, 0xC00u16.to_le_bytes().to_vec()),
                (BASE + 0xC00, b"PCIR\xad\x15\x01\x08".to_vec()),
            ],
            |r| *r == Refusal::PciHeaderOutside { offs: 0xC00 },
        ),
        (
            "license past the ROM's 0xA00 bytes",
            vec![
                (BASE + 0x16, 0xB00u16.to_le_bytes().to_vec()),
                (BASE + 0xB00, b"GPL v2\0".to_vec()),
            ],
            |r| *r == Refusal::LicenseUnterminated { offs: 0xB00 },
        ),
    ];
    for (what, bytes, strict_rule) in cases {
        let hv = hv_with(BASE, &RomBuilder::default());
        for (at, b) in &bytes {
            hv.place_bytes(*at, b).unwrap();
        }
        // Keep the checksum right, so the strict probe names this rule.
        let mut img = vec![0u8; hv_sim::vmi::rom::ROM_SIZE];
        assert!(hv.read_phys(BASE, &mut img));
        let sum = img.iter().fold(0u8, |s, &b| s.wrapping_add(b));
        let last = img[img.len() - 1].wrapping_sub(sum);
        hv.place_bytes(BASE + img.len() as u64 - 1, &[last])
            .unwrap();
        let rom = probe(&hv).unwrap_or_else(|nf| panic!("{what}: {nf}"));
        assert_eq!(rom.base, BASE, "{what}");
        assert_eq!(check_rom_with(&hv, BASE, ProbeRules::Linux), Ok(rom));
        let why = check_rom_with(&hv, BASE, ProbeRules::Strict).unwrap_err();
        assert!(strict_rule(&why), "{what}: {why}");
        let nf = probe_strict(&hv).unwrap_err();
        assert_eq!(nf.refused, Some((BASE, why)), "{what}");
    }
}

/// What Linux read where the header points: the PCI header's ids and the
/// license, outside the declared length as much as inside.
#[test]
fn default_probe_reads_what_linux_read() {
    let hv = hv_with(0xC8000, &RomBuilder::default());
    hv.place_bytes(0xC8000 + 0x18, &0xC00u16.to_le_bytes())
        .unwrap();
    hv.place_bytes(0xC8000 + 0xC00, b"PCIR\x86\x80\x34\x12")
        .unwrap();
    hv.place_bytes(0xC8000 + 0x16, &0xB00u16.to_le_bytes())
        .unwrap();
    hv.place_bytes(0xC8000 + 0xB00, b"GPL v2\0").unwrap();
    let rom = probe(&hv).unwrap();
    assert_eq!((rom.vendor, rom.device), (0x8086, 0x1234));
    assert!(rom.unknown_vendor());
    assert_eq!(rom.license, License::GplV2);
    // A license Linux's strcmp refused is still refused, wherever it is.
    hv.place_bytes(0xC8000 + 0xB00, b"GPL v3\0").unwrap();
    assert!(matches!(
        probe(&hv).unwrap_err().refused,
        Some((0xC8000, Refusal::NonGplLicense { .. }))
    ));
}

#[test]
fn rom_outside_the_scan_window_not_found() {
    for base in [0xE0000u64, 0xE8000, 0xF0000] {
        let hv = hv_with(base, &RomBuilder::default());
        // The ROM is intact where it is...
        assert!(check_rom(&hv, base).is_ok(), "{base:#x}");
        // ...but the probe never looks there.
        let nf = probe(&hv).unwrap_err();
        assert_eq!(nf.refused, None);
        assert_eq!(nf.other_roms, 0);
    }
    // hv-sim refuses to build such a machine through the checked constructor.
    let mem = RamMemory::new(0x10_0000, 0x1000);
    let err = VmiHypervisor::with_rom(GuestKind::Vmi64, mem, 0xE0000, &RomBuilder::default())
        .err()
        .unwrap();
    assert!(
        matches!(err, RomError::OutsideWindow { base: 0xE0000, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("option-ROM window"), "{err}");
}

#[test]
fn rom_not_on_a_2k_boundary_not_found() {
    for base in [0xC8200u64, 0xC8400, 0xC8001] {
        let hv = hv_with(base, &RomBuilder::default());
        assert!(check_rom(&hv, base).is_ok());
        let nf = probe(&hv).unwrap_err();
        assert_eq!(nf.refused, None, "{base:#x}");
    }
    let mem = RamMemory::new(0x10_0000, 0x1000);
    let err = VmiHypervisor::with_rom(GuestKind::Vmi64, mem, 0xC8400, &RomBuilder::default())
        .err()
        .unwrap();
    assert_eq!(err, RomError::Misaligned { base: 0xC8400 }, "{err}");
}

#[test]
fn probe_skips_other_roms_and_refused_ones() {
    // A VGA-BIOS-like ROM at 0xC0000, a refused VMI ROM at 0xC8000, a good
    // one at 0xD0000: the good one wins and the scan went past the others.
    let hv = VmiHypervisor::without_rom(GuestKind::Vmi64, RamMemory::new(0x10_0000, 0x1000));
    hv.place_bytes(0xC0000, &[0x55, 0xAA, 64]).unwrap();
    hv.place_rom(
        0xC8000,
        &RomBuilder {
            license: Some(b"BSD".to_vec()),
            ..RomBuilder::default()
        },
    )
    .unwrap();
    hv.place_rom(0xD0000, &RomBuilder::default()).unwrap();
    assert_eq!(probe(&hv).unwrap().base, 0xD0000);
    // Every placement in the window on a 2 KiB boundary is found.
    for base in [0xC0000u64, 0xC0800, 0xDF000 - 0x800] {
        let hv = VmiHypervisor::with_rom(
            GuestKind::Vmi64,
            RamMemory::new(0x10_0000, 0x1000),
            base,
            &RomBuilder::default(),
        )
        .unwrap();
        assert_eq!(probe(&hv).unwrap().base, base);
    }
}

#[test]
fn no_rom_at_all() {
    let hv = VmiHypervisor::without_rom(GuestKind::Vmi64, RamMemory::new(0x10_0000, 0x1000));
    let nf = probe(&hv).unwrap_err();
    assert_eq!(nf.refused, None);
    assert!(
        nf.to_string()
            .starts_with("no usable VMI option ROM in 0xc0000..0xe0000")
    );
}

#[test]
fn corrupting_a_byte_breaks_the_checksum() {
    let hv = VmiHypervisor::new(GuestKind::Vmi64, RamMemory::new(0x10_0000, 0x1000));
    hv.place_bytes(0xC8000 + 0x500, &[0x90]).unwrap();
    let nf = probe_strict(&hv).unwrap_err();
    assert!(matches!(
        nf.refused,
        Some((0xC8000, Refusal::Checksum { .. }))
    ));
    // Linux's rules never look at the sum.
    assert_eq!(probe(&hv).unwrap().base, 0xC8000);
}
