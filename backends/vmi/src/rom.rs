//! The VMI option ROM: header layout, the checks a guest applies before it
//! trusts a ROM, and the probe of the option-ROM window.
//!
//! Layout and rules follow Linux's `vmi_32.c` / `asm/vmi.h` (API 3.0):
//!
//! | off | field | |
//! |---|---|---|
//! | 0x00 | u16 rom_signature | 0xAA55 |
//! | 0x02 | u8 rom_length | size in 512-byte units |
//! | 0x03 | u8 rom_entry\[4\] | 16-bit BIOS entry |
//! | 0x08 | u32 vrom_signature | `"cVmi"` (0x696d5663 little-endian) |
//! | 0x0C | u8 api_version_min | |
//! | 0x0D | u8 api_version_maj | 3 |
//! | 0x0E | u8 jump_slots | |
//! | 0x10 | u32 virtual_top | start of the hypervisor's reserved VA range |
//! | 0x16 | u16 license_offs | NUL-terminated license string |
//! | 0x18 | u16 pci_header_offs | `"PCIR"` header: vendor at +4, device at +6 |
//! | 0x1A | u16 pnp_header_offs | optional `"$PnP"` header |
//! | 0x80 | u8 vmi_init\[8\] | jump point: VMI_Init |
//! | 0x88 | u8 get_reloc\[8\] | jump point: GetRelocationInfo |
//!
//! # Probe rules
//! [`ProbeRules::Linux`], the default ([`check_rom`], [`probe`]), is what
//! Linux's `check_vmi_rom` checked, in its order: the option-ROM signature
//! is 0xAA55; the VMI signature is `"cVmi"`; the API major version is 3
//! (any minor version is accepted: minor bumps are compatible extensions);
//! `pci_header_offs` is not 0; the license string at `license_offs` is
//! `"GPL"` or `"GPL v2"` (an unspecified license, offset 0, is refused). A
//! vendor/device other than VMware's 0x15AD/0x0801 is accepted with a
//! warning, as Linux did ([`VmiRom::unknown_vendor`]). Like Linux, the
//! default rules do **not** check the ROM checksum, the `"PCIR"` signature
//! of the PCI header, `rom_length`, or whether the PCI header and the
//! license lie inside the `rom_length * 512` bytes: a ROM Linux would use is
//! found. The license is read until its NUL, at most [`LICENSE_MAX`] bytes
//! (a longer string cannot be `"GPL"` or `"GPL v2"`, so Linux's `strcmp`
//! refused it too).
//!
//! [`ProbeRules::Strict`] ([`check_rom_with`], [`probe_strict`]) is an
//! opt-in for a kernel that wants a well-formed ROM, not only one Linux
//! would run: on top of Linux's rules, `rom_length` is not 0, the 8-bit sum
//! of all `rom_length * 512` bytes is 0 (the option-ROM specification's
//! rule), the PCI header lies inside the ROM and starts with `"PCIR"`, and
//! the license string is NUL-terminated inside the ROM.
//!
//! Under both rules every address is `base + offset` computed with checked
//! arithmetic: a ROM whose header, PCI header or license would run past the
//! top of the address space ([`ADDR_MAX`]) is refused with
//! [`Refusal::AddressOverflow`] instead of wrapping around (or panicking in
//! a debug build).

use core::fmt;

use crate::platform::ReadPhys;

/// First address scanned (inclusive).
pub const SCAN_START: u64 = 0xC0000;
/// End of the scan window (exclusive).
pub const SCAN_END: u64 = 0xE0000;
/// Scan step: option ROMs start on 2 KiB boundaries.
pub const SCAN_STEP: u64 = 2048;

/// Option-ROM signature (bytes 0x55, 0xAA).
pub const ROM_SIGNATURE: u16 = 0xAA55;
/// VMI signature: `"cVmi"` read as a little-endian u32.
pub const VMI_SIGNATURE: u32 = 0x696d_5663;
/// The API major version this backend speaks.
pub const API_MAJOR: u8 = 3;
/// The lowest API minor version accepted.
pub const API_MINOR: u8 = 0;
/// VMware's PCI vendor id.
pub const PCI_VENDOR_VMWARE: u16 = 0x15AD;
/// The VMI device id.
pub const PCI_DEVICE_VMI: u16 = 0x0801;
/// Signature of the PCI data structure.
pub const PCI_SIGNATURE: [u8; 4] = *b"PCIR";
/// Size of the PCI data structure (`struct pci_header`).
pub const PCI_HEADER_LEN: usize = 24;
/// Longest license string read (a longer one is refused as unterminated).
pub const LICENSE_MAX: usize = 32;

/// The highest address a [`ReadPhys`] can be asked to read: `u64::MAX`
/// on x86_64, `u32::MAX` on 32-bit x86, where a kernel's platform turns the
/// address into a pointer. A ROM that would reach past it is refused
/// ([`Refusal::AddressOverflow`]).
pub const ADDR_MAX: u64 = usize::MAX as u64;

/// Which checks [`check_rom_with`] applies (see the
/// [module documentation](self#probe-rules)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ProbeRules {
    /// Linux's `check_vmi_rom`: signatures, API 3.x, a PCI header offset,
    /// a GPL license. No checksum, no `"PCIR"` signature, no length or
    /// bounds checks. The default.
    #[default]
    Linux,
    /// Linux's rules plus: `rom_length` not 0, checksum 0, the PCI header
    /// inside the ROM and starting with `"PCIR"`, the license terminated
    /// inside the ROM.
    Strict,
}

/// Byte offsets in the ROM header.
pub mod offset {
    /// u16 rom_signature.
    pub const ROM_SIGNATURE: usize = 0x00;
    /// u8 rom_length (512-byte units).
    pub const ROM_LENGTH: usize = 0x02;
    /// u8 rom_entry\[4\].
    pub const ROM_ENTRY: usize = 0x03;
    /// u32 vrom_signature.
    pub const VROM_SIGNATURE: usize = 0x08;
    /// u8 api_version_min.
    pub const API_MINOR: usize = 0x0C;
    /// u8 api_version_maj.
    pub const API_MAJOR: usize = 0x0D;
    /// u8 jump_slots.
    pub const JUMP_SLOTS: usize = 0x0E;
    /// u32 virtual_top.
    pub const VIRTUAL_TOP: usize = 0x10;
    /// u16 license_offs.
    pub const LICENSE_OFFS: usize = 0x16;
    /// u16 pci_header_offs.
    pub const PCI_HEADER_OFFS: usize = 0x18;
    /// u16 pnp_header_offs.
    pub const PNP_HEADER_OFFS: usize = 0x1A;
    /// VMI_Init jump point (8 bytes).
    pub const VMI_INIT: usize = 0x80;
    /// GetRelocationInfo jump point (8 bytes).
    pub const GET_RELOC: usize = 0x88;
    /// Size of the header.
    pub const HEADER_SIZE: usize = 0x90;
    /// In the PCI header: u16 vendor id.
    pub const PCI_VENDOR: usize = 4;
    /// In the PCI header: u16 device id.
    pub const PCI_DEVICE: usize = 6;
}

/// The license a ROM declares (only GPL ones are used).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum License {
    /// `"GPL"`.
    Gpl,
    /// `"GPL v2"`.
    GplV2,
}

/// A ROM that passed the probe's checks ([`ProbeRules`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VmiRom {
    /// Guest-physical address of byte 0.
    pub base: u64,
    /// Size in bytes (`rom_length * 512`; under Linux's rules it may be 0
    /// or not cover the PCI header and license, which Linux never checked).
    pub size: u32,
    /// API major version (3).
    pub api_major: u8,
    /// API minor version.
    pub api_minor: u8,
    /// Number of jump slots the ROM declares.
    pub jump_slots: u8,
    /// Start of the hypervisor's reserved virtual range.
    pub virtual_top: u32,
    /// PCI vendor id.
    pub vendor: u16,
    /// PCI device id.
    pub device: u16,
    /// Declared license.
    pub license: License,
}

impl VmiRom {
    /// Address of the VMI_Init jump point.
    pub const fn init_entry(&self) -> u64 {
        self.base + offset::VMI_INIT as u64
    }

    /// Address of the GetRelocationInfo jump point.
    pub const fn reloc_entry(&self) -> u64 {
        self.base + offset::GET_RELOC as u64
    }

    /// Is `addr` inside the ROM image?
    pub const fn contains(&self, addr: u64) -> bool {
        addr >= self.base && addr - self.base < self.size as u64
    }

    /// Not VMware's vendor/device pair: accepted, but worth a warning in
    /// the boot log (Linux: "ROM from unknown manufacturer").
    pub const fn unknown_vendor(&self) -> bool {
        self.vendor != PCI_VENDOR_VMWARE || self.device != PCI_DEVICE_VMI
    }
}

/// Why a ROM is refused; `Display` names the rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The header could not be read.
    Unreadable {
        /// Address that could not be read.
        addr: u64,
    },
    /// `base + offset` (and the `len` bytes read there) would run past the
    /// top of the address space ([`ADDR_MAX`]).
    AddressOverflow {
        /// The ROM's base.
        base: u64,
        /// Offset of the read in the ROM.
        offset: u64,
        /// Bytes to read there.
        len: u64,
    },
    /// No option ROM here: the first u16 is not 0xAA55.
    NoOptionRom {
        /// The u16 found.
        found: u16,
    },
    /// An option ROM, but not a VMI one.
    NotVmi {
        /// The u32 found at offset 8.
        found: u32,
    },
    /// API major version is not 3 (a minor version below 0 cannot exist).
    ApiVersion {
        /// Major version found.
        major: u8,
        /// Minor version found.
        minor: u8,
    },
    /// `rom_length` is 0.
    EmptyRom,
    /// The 8-bit sum of the ROM bytes is not 0.
    Checksum {
        /// The sum found.
        sum: u8,
    },
    /// `pci_header_offs` is 0.
    NoPciHeader,
    /// The PCI header does not lie inside the ROM.
    PciHeaderOutside {
        /// Its offset.
        offs: u16,
    },
    /// The PCI header does not start with `"PCIR"`.
    PciSignature {
        /// The four bytes found.
        found: [u8; 4],
    },
    /// `license_offs` is 0: the license is unspecified.
    NoLicense,
    /// The license string is not NUL-terminated inside the ROM within
    /// [`LICENSE_MAX`] bytes.
    LicenseUnterminated {
        /// Its offset.
        offs: u16,
    },
    /// A license other than `"GPL"` / `"GPL v2"`.
    NonGplLicense {
        /// The license bytes (first `len` are valid).
        text: [u8; LICENSE_MAX],
        /// Length of the license string.
        len: u8,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Refusal::Unreadable { addr } => write!(f, "ROM bytes at {addr:#x} cannot be read"),
            Refusal::AddressOverflow { base, offset, len } => write!(
                f,
                "ROM at {base:#x}: {len} byte(s) at offset {offset:#x} would run past the top of the address space ({ADDR_MAX:#x})"
            ),
            Refusal::NoOptionRom { found } => write!(
                f,
                "no option ROM: signature {found:#06x}, an option ROM starts with 0xaa55"
            ),
            Refusal::NotVmi { found } => write!(
                f,
                "option ROM without the VMI signature: {found:#010x} at offset 8, expected 0x696d5663 (\"cVmi\")"
            ),
            Refusal::ApiVersion { major, minor } => write!(
                f,
                "API version {major}.{minor}: this backend needs major version {API_MAJOR} (minor >= {API_MINOR})"
            ),
            Refusal::EmptyRom => f.write_str("rom_length is 0: a ROM has at least one 512-byte unit"),
            Refusal::Checksum { sum } => write!(
                f,
                "checksum: the 8-bit sum of the rom_length*512 bytes is {sum:#04x}, it must be 0"
            ),
            Refusal::NoPciHeader => f.write_str(
                "ROM does not contain a PCI header (pci_header_offs is 0); the VMI signature alone is not trusted",
            ),
            Refusal::PciHeaderOutside { offs } => write!(
                f,
                "PCI header at offset {offs:#x} does not fit inside the ROM"
            ),
            Refusal::PciSignature { found } => write!(
                f,
                "PCI header signature is {found:?}, expected \"PCIR\""
            ),
            Refusal::NoLicense => f.write_str(
                "license unspecified (license_offs is 0): only \"GPL\" or \"GPL v2\" ROMs are used",
            ),
            Refusal::LicenseUnterminated { offs } => write!(
                f,
                "license string at offset {offs:#x} is not NUL-terminated inside the ROM within {LICENSE_MAX} bytes"
            ),
            Refusal::NonGplLicense { text, len } => {
                f.write_str("non-GPL license `")?;
                for &b in &text[..(len as usize).min(LICENSE_MAX)] {
                    if b.is_ascii_graphic() || b == b' ' {
                        write!(f, "{}", b as char)?;
                    } else {
                        write!(f, "\\x{b:02x}")?;
                    }
                }
                f.write_str("`: only \"GPL\" or \"GPL v2\" ROMs are used (no binary-only shims)")
            }
        }
    }
}

impl core::error::Error for Refusal {}

/// The address of `len` bytes at `offset` in the ROM at `base`, if none of
/// them lies past [`ADDR_MAX`].
fn span(base: u64, offset: u64, len: usize) -> Result<u64, Refusal> {
    let overflow = Refusal::AddressOverflow {
        base,
        offset,
        len: len as u64,
    };
    let addr = base.checked_add(offset).ok_or(overflow)?;
    let last = addr
        .checked_add((len as u64).saturating_sub(1))
        .ok_or(overflow)?;
    // Always false on x86_64, where ADDR_MAX is u64::MAX.
    #[allow(clippy::absurd_extreme_comparisons)]
    if last > ADDR_MAX {
        return Err(overflow);
    }
    Ok(addr)
}

/// Read `buf.len()` bytes at `offset` in the ROM at `base`.
fn read<P: ReadPhys + ?Sized>(
    p: &P,
    base: u64,
    offset: u64,
    buf: &mut [u8],
) -> Result<(), Refusal> {
    let addr = span(base, offset, buf.len())?;
    if p.read_phys(addr, buf) {
        Ok(())
    } else {
        Err(Refusal::Unreadable { addr })
    }
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

/// Check the ROM at guest-physical `base` with Linux's rules
/// ([`ProbeRules::Linux`], see the [module documentation](self#probe-rules)).
pub fn check_rom<P: ReadPhys + ?Sized>(p: &P, base: u64) -> Result<VmiRom, Refusal> {
    check_rom_with(p, base, ProbeRules::Linux)
}

/// Check the ROM at guest-physical `base` with `rules`; the first rule
/// broken is returned.
pub fn check_rom_with<P: ReadPhys + ?Sized>(
    p: &P,
    base: u64,
    rules: ProbeRules,
) -> Result<VmiRom, Refusal> {
    let strict = rules == ProbeRules::Strict;
    let mut h = [0u8; offset::HEADER_SIZE];
    read(p, base, 0, &mut h)?;
    let sig = u16_at(&h, offset::ROM_SIGNATURE);
    if sig != ROM_SIGNATURE {
        return Err(Refusal::NoOptionRom { found: sig });
    }
    let vsig = u32_at(&h, offset::VROM_SIGNATURE);
    if vsig != VMI_SIGNATURE {
        return Err(Refusal::NotVmi { found: vsig });
    }
    let (major, minor) = (h[offset::API_MAJOR], h[offset::API_MINOR]);
    // `minor < API_MINOR` is impossible while API_MINOR is 0; kept so the
    // rule reads as the reference states it.
    #[allow(clippy::absurd_extreme_comparisons)]
    if major != API_MAJOR || minor < API_MINOR {
        return Err(Refusal::ApiVersion { major, minor });
    }
    let size = h[offset::ROM_LENGTH] as u32 * 512;
    if strict {
        if size == 0 {
            return Err(Refusal::EmptyRom);
        }
        // Checksum over the whole image, read in chunks.
        let mut sum = 0u8;
        let mut chunk = [0u8; 256];
        let mut off = 0u32;
        while off < size {
            let n = ((size - off) as usize).min(chunk.len());
            read(p, base, off as u64, &mut chunk[..n])?;
            sum = chunk[..n].iter().fold(sum, |s, &b| s.wrapping_add(b));
            off += n as u32;
        }
        if sum != 0 {
            return Err(Refusal::Checksum { sum });
        }
    }
    let pci_offs = u16_at(&h, offset::PCI_HEADER_OFFS);
    if pci_offs == 0 {
        return Err(Refusal::NoPciHeader);
    }
    if strict && pci_offs as u32 + PCI_HEADER_LEN as u32 > size {
        return Err(Refusal::PciHeaderOutside { offs: pci_offs });
    }
    // Linux reads the header's fields wherever the offset points.
    let mut pci = [0u8; PCI_HEADER_LEN];
    read(p, base, pci_offs as u64, &mut pci)?;
    let psig = [pci[0], pci[1], pci[2], pci[3]];
    if strict && psig != PCI_SIGNATURE {
        return Err(Refusal::PciSignature { found: psig });
    }
    let lic_offs = u16_at(&h, offset::LICENSE_OFFS);
    if lic_offs == 0 {
        return Err(Refusal::NoLicense);
    }
    let avail = if strict {
        if lic_offs as u32 >= size {
            return Err(Refusal::LicenseUnterminated { offs: lic_offs });
        }
        ((size - lic_offs as u32) as usize).min(LICENSE_MAX)
    } else {
        LICENSE_MAX
    };
    // Byte by byte up to the NUL, as `strcmp` reads it: nothing past the
    // terminator is touched.
    let mut text = [0u8; LICENSE_MAX];
    let mut len = None;
    for i in 0..avail {
        read(p, base, lic_offs as u64 + i as u64, &mut text[i..i + 1])?;
        if text[i] == 0 {
            len = Some(i);
            break;
        }
    }
    let Some(len) = len else {
        return Err(Refusal::LicenseUnterminated { offs: lic_offs });
    };
    let license = match &text[..len] {
        b"GPL" => License::Gpl,
        b"GPL v2" => License::GplV2,
        _ => {
            return Err(Refusal::NonGplLicense {
                text,
                len: len as u8,
            });
        }
    };
    Ok(VmiRom {
        base,
        size,
        api_major: major,
        api_minor: minor,
        jump_slots: h[offset::JUMP_SLOTS],
        virtual_top: u32_at(&h, offset::VIRTUAL_TOP),
        vendor: u16_at(&pci, offset::PCI_VENDOR),
        device: u16_at(&pci, offset::PCI_DEVICE),
        license,
    })
}

/// The probe found no usable VMI ROM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotFound {
    /// Option ROMs (0xAA55) seen that are not VMI ROMs.
    pub other_roms: u32,
    /// The first VMI ROM (0xAA55 and `"cVmi"`) that was refused, and why.
    pub refused: Option<(u64, Refusal)>,
}

impl fmt::Display for NotFound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no usable VMI option ROM in {SCAN_START:#x}..{SCAN_END:#x} (2 KiB steps); {} other option ROM(s)",
            self.other_roms
        )?;
        if let Some((base, why)) = self.refused {
            write!(f, "; VMI ROM at {base:#x} refused: {why}")?;
        }
        Ok(())
    }
}

impl core::error::Error for NotFound {}

/// Scan the option-ROM window for a VMI ROM with Linux's rules, as Linux's
/// `probe_vmi_rom`: every 2 KiB from [`SCAN_START`] up to [`SCAN_END`], the
/// first ROM that passes [`check_rom`] wins. A refused VMI ROM does not stop
/// the scan; the first refusal is reported if nothing is found.
pub fn probe<P: ReadPhys + ?Sized>(p: &P) -> Result<VmiRom, NotFound> {
    probe_with(p, ProbeRules::Linux)
}

/// [`probe`] with [`ProbeRules::Strict`]: only a well-formed ROM (length,
/// checksum, `"PCIR"`, everything inside the image) is used.
pub fn probe_strict<P: ReadPhys + ?Sized>(p: &P) -> Result<VmiRom, NotFound> {
    probe_with(p, ProbeRules::Strict)
}

/// [`probe`] with the given rules.
pub fn probe_with<P: ReadPhys + ?Sized>(p: &P, rules: ProbeRules) -> Result<VmiRom, NotFound> {
    let mut nf = NotFound {
        other_roms: 0,
        refused: None,
    };
    let mut base = SCAN_START;
    while base < SCAN_END {
        match check_rom_with(p, base, rules) {
            Ok(rom) => return Ok(rom),
            // Nothing readable here: no ROM. (An unreadable PCI header or
            // license of a VMI ROM is reported below.)
            Err(Refusal::NoOptionRom { .. }) => {}
            Err(Refusal::Unreadable { addr }) if addr == base => {}
            Err(Refusal::NotVmi { .. }) => nf.other_roms += 1,
            Err(why) => {
                if nf.refused.is_none() {
                    nf.refused = Some((base, why));
                }
            }
        }
        base += SCAN_STEP;
    }
    Err(nf)
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use std::string::ToString;
    use std::vec::Vec;

    /// A platform with one ROM image at `base` (any address, up to the top
    /// of the address space); every other byte is unreadable. Its own
    /// arithmetic is checked, so only the probe's can overflow.
    struct At {
        base: u64,
        img: Vec<u8>,
    }

    impl ReadPhys for At {
        fn read_phys(&self, addr: u64, buf: &mut [u8]) -> bool {
            let Some(off) = addr.checked_sub(self.base) else {
                return false;
            };
            let Ok(off) = usize::try_from(off) else {
                return false;
            };
            match off.checked_add(buf.len()) {
                Some(end) if end <= self.img.len() => {
                    buf.copy_from_slice(&self.img[off..end]);
                    true
                }
                _ => false,
            }
        }
    }

    /// `len` bytes of a VMI ROM header declaring 5 × 512 bytes, with a PCI
    /// header at 0x90 and `"GPL"` at `license`.
    fn image(len: usize, license: u16) -> Vec<u8> {
        let mut b = std::vec![0u8; len.max(0x200)];
        b[0..2].copy_from_slice(&ROM_SIGNATURE.to_le_bytes());
        b[offset::ROM_LENGTH] = 5;
        b[8..12].copy_from_slice(&VMI_SIGNATURE.to_le_bytes());
        b[offset::API_MAJOR] = API_MAJOR;
        b[offset::LICENSE_OFFS..][..2].copy_from_slice(&license.to_le_bytes());
        b[offset::PCI_HEADER_OFFS..][..2].copy_from_slice(&0x90u16.to_le_bytes());
        b[0x90..0x94].copy_from_slice(&PCI_SIGNATURE);
        b[0x94..0x96].copy_from_slice(&PCI_VENDOR_VMWARE.to_le_bytes());
        b[0x96..0x98].copy_from_slice(&PCI_DEVICE_VMI.to_le_bytes());
        let l = license as usize;
        b[l..l + 3].copy_from_slice(b"GPL");
        b.truncate(len);
        b
    }

    /// A ROM in the last 256 bytes of the address space (u64::MAX on
    /// x86_64, u32::MAX on 32-bit x86). The old strict-only `check_rom`
    /// computed `base + off` for the checksum's second chunk and panicked in
    /// a debug build ("attempt to add with overflow"); now each rule refuses
    /// with the offset that does not fit.
    #[test]
    fn rom_at_the_top_of_the_address_space_is_refused_not_an_overflow() {
        let base = ADDR_MAX - 0xFF;
        // "GPL\0" in the last four bytes: everything Linux reads fits, so
        // Linux's rules accept it; the checksum needs 5 × 512 bytes.
        let p = At {
            base,
            img: image(0x100, 0xFC),
        };
        let rom = check_rom(&p, base).unwrap();
        assert_eq!((rom.base, rom.license), (base, License::Gpl));
        assert_eq!(rom.reloc_entry(), base + 0x88);
        let err = check_rom_with(&p, base, ProbeRules::Strict).unwrap_err();
        assert_eq!(
            err,
            Refusal::AddressOverflow {
                base,
                offset: 0x100,
                len: 256
            }
        );
        assert!(
            err.to_string()
                .contains("past the top of the address space"),
            "{err}"
        );
        // The license string crosses the top: its third byte has no address.
        let p = At {
            base,
            img: image(0x100, 0xFE),
        };
        assert_eq!(
            check_rom(&p, base),
            Err(Refusal::AddressOverflow {
                base,
                offset: 0x100,
                len: 1
            })
        );
        // The header itself does not fit.
        let base = ADDR_MAX - 0x7F;
        let p = At {
            base,
            img: image(0x80, 0xC0),
        };
        for rules in [ProbeRules::Linux, ProbeRules::Strict] {
            assert_eq!(
                check_rom_with(&p, base, rules),
                Err(Refusal::AddressOverflow {
                    base,
                    offset: 0,
                    len: offset::HEADER_SIZE as u64
                })
            );
        }
        assert_eq!(
            check_rom(&p, u64::MAX),
            Err(Refusal::AddressOverflow {
                base: u64::MAX,
                offset: 0,
                len: offset::HEADER_SIZE as u64
            })
        );
    }

    /// A ROM straddling 4 GiB: an ordinary address on x86_64, past the top
    /// of a 32-bit kernel's address space.
    #[test]
    fn rom_straddling_4_gib() {
        let base = u32::MAX as u64 - 0xFF;
        let p = At {
            base,
            img: image(0x200, 0x1C0),
        };
        let r = check_rom(&p, base);
        #[cfg(target_pointer_width = "64")]
        assert_eq!(r.map(|rom| rom.base), Ok(base));
        #[cfg(target_pointer_width = "32")]
        assert_eq!(
            r,
            Err(Refusal::AddressOverflow {
                base,
                offset: 0x1C0,
                len: 1
            })
        );
    }

    #[test]
    fn strict_rules_are_linux_rules_plus_the_well_formedness_checks() {
        // No checksum fix, no "PCIR": Linux's rules accept, strict refuses.
        let base = 0xC8000;
        let mut img = image(5 * 512, 0xC0);
        let p = At {
            base,
            img: img.clone(),
        };
        assert!(check_rom(&p, base).is_ok());
        assert!(matches!(
            check_rom_with(&p, base, ProbeRules::Strict),
            Err(Refusal::Checksum { .. })
        ));
        let sum = img.iter().fold(0u8, |s, &b| s.wrapping_add(b));
        img[0x1FF] = 0u8.wrapping_sub(sum);
        let p = At {
            base,
            img: img.clone(),
        };
        assert!(check_rom_with(&p, base, ProbeRules::Strict).is_ok());
        // "PCIR" broken (and the sum kept 0).
        img[0x90] = b'X';
        img[0x1FF] = img[0x1FF].wrapping_add(b'P').wrapping_sub(b'X');
        let p = At { base, img };
        assert!(check_rom(&p, base).is_ok());
        assert_eq!(
            check_rom_with(&p, base, ProbeRules::Strict),
            Err(Refusal::PciSignature { found: *b"XCIR" })
        );
    }
}
