//! The VMI option ROM image hv-sim builds: the API 3.0 header, a PCI and a
//! PnP header, the license string, and one real x86-64 stub per call.
//!
//! # Layout (offsets in the image)
//! | off | size | what |
//! |---|---|---|
//! | 0x000 | 0x80 | header: 0xAA55, length (5 × 512), `retf` BIOS entry, `"cVmi"`, API 3.0, 128 jump slots, virtual_top, license/PCI/PnP offsets |
//! | 0x080 | 8 | VMI_Init stub |
//! | 0x088 | 8 | GetRelocationInfo stub |
//! | 0x090 | 24 | PCI data structure `"PCIR"`, vendor 0x15AD, device 0x0801 |
//! | 0x0A8 | 18 | PnP header `"$PnP"` (manufacturer, product) |
//! | 0x0C0 | 4 | license `"GPL\0"` |
//! | 0x0C8 | | manufacturer, product strings |
//! | 0x100 + 16·n | 16 | stub of call n (n < 128): `mov eax, n; out 0xE6, eax; ret`, then `int3` padding; undefined call numbers are all `int3` |
//! | 0x9FF | 1 | checksum byte: the 8-bit sum of the 0xA00 bytes is 0 |
//!
//! A stub is 8 bytes: `B8 n n n n` (mov eax, imm32), `E7 E6` (out 0xE6,
//! eax), `C3` (ret). The VMM handles the port exit (the port and the
//! pseudo-call values are [`abi::port`]; the 64-bit register convention is
//! the one `pvops-vmi`'s `platform` module documents: arguments in rdi, rsi,
//! rdx, rcx, result in rax, and rdx = the type for GetRelocationInfo).
//!
//! Every VMI value in the image (signatures, versions, header offsets, call
//! numbers) comes from hv-sim's own [`abi`], never from the guest crate.

use super::abi::{
    self, API_REV_MAJOR, API_REV_MINOR, PCI_DEVICE_ID_VMWARE_VMI, PCI_SIGNATURE,
    PCI_VENDOR_ID_VMWARE, PNP_SIGNATURE, ROM_SIGNATURE, VMI_SIGNATURE, header, pci_header,
    pnp_header,
    port::{PSEUDO_GET_RELOC, PSEUDO_INIT, VMI_PORT},
};

/// Size of the image in 512-byte units.
pub const ROM_UNITS: u8 = 5;
/// Size of the image in bytes.
pub const ROM_SIZE: usize = ROM_UNITS as usize * 512;
/// Offset of the PCI data structure.
pub const PCI_OFFS: u16 = 0x90;
/// Offset of the PnP header.
pub const PNP_OFFS: u16 = 0xA8;
/// Offset of the license string.
pub const LICENSE_OFFS: u16 = 0xC0;
/// Offset of the manufacturer string.
pub const MANUFACTURER_OFFS: u16 = 0xC8;
/// Offset of the product string.
pub const PRODUCT_OFFS: u16 = 0xD0;
/// Offset of call 0's stub.
pub const STUB_BASE: usize = 0x100;
/// Bytes per call stub slot.
pub const STUB_SLOT: usize = 16;
/// Number of call slots (call numbers 0..128).
pub const STUB_COUNT: usize = 128;
/// Bytes of one stub's code.
pub const STUB_LEN: usize = 8;
/// virtual_top declared in the header (the 32-bit guest reserves 4 MiB at
/// the top, as VMware's ROM did; a 64-bit guest ignores it).
pub const VIRTUAL_TOP: u32 = 0xFFC0_0000;

/// Offset of call `nr`'s stub, `None` if there is no slot for it.
pub const fn stub_offset(nr: u32) -> Option<usize> {
    if (nr as usize) < STUB_COUNT {
        Some(STUB_BASE + nr as usize * STUB_SLOT)
    } else {
        None
    }
}

/// The 8 bytes of a stub that exits to the VMM with `eax = value`.
pub const fn stub(value: u32) -> [u8; STUB_LEN] {
    let v = value.to_le_bytes();
    [0xB8, v[0], v[1], v[2], v[3], 0xE7, VMI_PORT, 0xC3]
}

/// Decode the stub at `off` of `image`: the eax value it exits with, or
/// `None` if the bytes there are not a stub.
pub fn decode_stub(image: &[u8], off: usize) -> Option<u32> {
    let b = image.get(off..off.checked_add(STUB_LEN)?)?;
    if b[0] == 0xB8 && b[5] == 0xE7 && b[6] == VMI_PORT && b[7] == 0xC3 {
        Some(u32::from_le_bytes([b[1], b[2], b[3], b[4]]))
    } else {
        None
    }
}

/// Parameters of the image; [`RomBuilder::default`] is a correct ROM and
/// each field can be broken to test a guest's probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RomBuilder {
    /// Option-ROM signature (0xAA55).
    pub signature: u16,
    /// VMI signature (`"cVmi"`).
    pub vmi_signature: u32,
    /// API major version (3).
    pub api_major: u8,
    /// API minor version (0).
    pub api_minor: u8,
    /// Write a PCI header (and its offset).
    pub pci_header: bool,
    /// PCI vendor id.
    pub vendor: u16,
    /// PCI device id.
    pub device: u16,
    /// License string without its NUL; `None` leaves license_offs 0.
    pub license: Option<Vec<u8>>,
    /// Set the checksum byte so the image sums to 0.
    pub fix_checksum: bool,
    /// Call numbers that get a stub (all defined API 3.0 numbers below 128
    /// by default).
    pub stubs: Vec<u32>,
}

impl Default for RomBuilder {
    fn default() -> Self {
        RomBuilder {
            signature: ROM_SIGNATURE,
            vmi_signature: VMI_SIGNATURE,
            api_major: API_REV_MAJOR,
            api_minor: API_REV_MINOR,
            pci_header: true,
            vendor: PCI_VENDOR_ID_VMWARE,
            device: PCI_DEVICE_ID_VMWARE_VMI,
            license: Some(b"GPL".to_vec()),
            fix_checksum: true,
            stubs: (0..STUB_COUNT as u32)
                .filter(|&n| abi::call::name(n).is_some())
                .collect(),
        }
    }
}

fn put(b: &mut [u8], off: usize, data: &[u8]) {
    b[off..off + data.len()].copy_from_slice(data);
}

impl RomBuilder {
    /// Build the image ([`ROM_SIZE`] bytes).
    pub fn build(&self) -> Vec<u8> {
        let mut b = vec![0u8; ROM_SIZE];
        put(&mut b, header::ROM_SIGNATURE, &self.signature.to_le_bytes());
        b[header::ROM_LENGTH] = ROM_UNITS;
        // 16-bit BIOS entry: `retf` (nothing to initialize in real mode).
        put(&mut b, header::ROM_ENTRY, &[0xCB, 0x90, 0x90, 0x90]);
        put(
            &mut b,
            header::VROM_SIGNATURE,
            &self.vmi_signature.to_le_bytes(),
        );
        b[header::API_VERSION_MIN] = self.api_minor;
        b[header::API_VERSION_MAJ] = self.api_major;
        b[header::JUMP_SLOTS] = STUB_COUNT as u8;
        put(&mut b, header::VIRTUAL_TOP, &VIRTUAL_TOP.to_le_bytes());
        put(&mut b, header::PNP_HEADER_OFFS, &PNP_OFFS.to_le_bytes());
        put(&mut b, header::VMI_INIT, &stub(PSEUDO_INIT));
        put(&mut b, header::GET_RELOC, &stub(PSEUDO_GET_RELOC));
        if self.pci_header {
            put(&mut b, header::PCI_HEADER_OFFS, &PCI_OFFS.to_le_bytes());
            let p = PCI_OFFS as usize;
            put(&mut b, p + pci_header::SIG, &PCI_SIGNATURE);
            put(
                &mut b,
                p + pci_header::VENDOR_ID,
                &self.vendor.to_le_bytes(),
            );
            put(
                &mut b,
                p + pci_header::DEVICE_ID,
                &self.device.to_le_bytes(),
            );
            let len = pci_header::LEN as u16;
            put(&mut b, p + pci_header::SIZE, &len.to_le_bytes());
            b[p + pci_header::CLASS] = 0x08; // system peripheral
            b[p + pci_header::SUBCLASS] = 0x80; // other
            let units = u16::from(ROM_UNITS);
            put(&mut b, p + pci_header::CHUNKS, &units.to_le_bytes()); // image length
            b[p + pci_header::ROM_VERSION_MAJ] = 1; // ROM version 1.0
            b[p + pci_header::CODETYPE] = 0; // x86
            b[p + pci_header::LAST_ROM] = 0x80; // last image
        }
        let n = PNP_OFFS as usize;
        put(&mut b, n + pnp_header::SIG, &PNP_SIGNATURE);
        b[n + pnp_header::REV] = 1;
        b[n + pnp_header::SIZE] = 2; // in 16-byte units
        let (m, pr) = (MANUFACTURER_OFFS, PRODUCT_OFFS);
        put(
            &mut b,
            n + pnp_header::MANUFACTURER_OFFSET,
            &m.to_le_bytes(),
        );
        put(&mut b, n + pnp_header::PRODUCT_OFFSET, &pr.to_le_bytes());
        put(&mut b, MANUFACTURER_OFFS as usize, b"hv-sim\0");
        put(&mut b, PRODUCT_OFFS as usize, b"VMI-style 64-bit ROM\0");
        if let Some(l) = &self.license {
            put(&mut b, header::LICENSE_OFFS, &LICENSE_OFFS.to_le_bytes());
            let l = &l[..l.len().min(0x1F)];
            // A long license string runs over the strings after it; tests
            // only use short ones and unterminated ones end at 0x1F bytes.
            put(&mut b, LICENSE_OFFS as usize, l);
            b[LICENSE_OFFS as usize + l.len()] = 0;
        }
        for s in &mut b[STUB_BASE..STUB_BASE + STUB_COUNT * STUB_SLOT] {
            *s = 0xCC;
        }
        for &nr in &self.stubs {
            if let Some(off) = stub_offset(nr) {
                put(&mut b, off, &stub(nr));
            }
        }
        if self.fix_checksum {
            let sum = b[..ROM_SIZE - 1]
                .iter()
                .fold(0u8, |s, &x| s.wrapping_add(x));
            b[ROM_SIZE - 1] = sum.wrapping_neg();
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_image_sums_to_zero_and_has_stubs() {
        let img = RomBuilder::default().build();
        assert_eq!(img.len(), ROM_SIZE);
        assert_eq!(img.iter().fold(0u8, |s, &x| s.wrapping_add(x)), 0);
        assert_eq!(&img[0..2], &[0x55, 0xAA]);
        assert_eq!(&img[8..12], b"cVmi");
        assert_eq!(decode_stub(&img, 0x80), Some(PSEUDO_INIT));
        assert_eq!(decode_stub(&img, 0x88), Some(PSEUDO_GET_RELOC));
        assert_eq!(decode_stub(&img, stub_offset(3).unwrap()), Some(3));
        assert_eq!(decode_stub(&img, stub_offset(73).unwrap()), Some(73));
        // 49..=60 and 72 are undefined: int3 only.
        assert_eq!(decode_stub(&img, stub_offset(50).unwrap()), None);
        assert_eq!(img[stub_offset(50).unwrap()], 0xCC);
        // Misaligned entry: not a stub.
        assert_eq!(decode_stub(&img, stub_offset(3).unwrap() + 1), None);
        assert_eq!(
            stub(3),
            [0xB8, 3, 0, 0, 0, 0xE7, 0xE6, 0xC3],
            "mov eax, 3; out 0xe6, eax; ret"
        );
    }
}
