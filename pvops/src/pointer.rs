//! Descriptor-table pointers: the `lgdt`/`lidt` memory operand.
//!
//! The CPU reads a 16-bit limit followed by the base: 4 bytes in 32-bit mode
//! (a 6-byte operand) and 8 bytes in 64-bit mode (a 10-byte operand).
//! [`DescriptorTablePointer`] is the mode-independent value; [`DtPtr32`] and
//! [`DtPtr64`] are the exact packed operands, usable on any host (hv-sim
//! decodes 32-bit guests' operands from a 64-bit process).
//!
//! The `x86` crate's `dtables::DescriptorTablePointer<T>` is the same packed
//! layout for the *compiling* mode only (its base is a pointer); the native
//! backend converts to it at the `lgdt` call.

use static_assertions::const_assert_eq;

/// A table pointer: base address and limit (size in bytes minus one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct DescriptorTablePointer {
    /// Size of the table in bytes, minus one.
    pub limit: u16,
    /// Linear address of the table.
    pub base: u64,
}

impl DescriptorTablePointer {
    /// Number of whole `entry_size`-byte entries covered by the limit (0 for
    /// an `entry_size` of 0).
    pub const fn entries(&self, entry_size: u32) -> u32 {
        match (self.limit as u32 + 1).checked_div(entry_size) {
            Some(n) => n,
            None => 0,
        }
    }

    /// The packed 32-bit operand (base truncated to 32 bits).
    pub const fn to_packed32(self) -> DtPtr32 {
        DtPtr32 {
            limit: self.limit,
            base: self.base as u32,
        }
    }

    /// The packed 64-bit operand.
    pub const fn to_packed64(self) -> DtPtr64 {
        DtPtr64 {
            limit: self.limit,
            base: self.base,
        }
    }
}

/// The 6-byte operand of `lgdt`/`lidt`/`sgdt`/`sidt` in 32-bit mode.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C, packed)]
pub struct DtPtr32 {
    /// Limit.
    pub limit: u16,
    /// Base.
    pub base: u32,
}

/// The 10-byte operand of `lgdt`/`lidt`/`sgdt`/`sidt` in 64-bit mode.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C, packed)]
pub struct DtPtr64 {
    /// Limit.
    pub limit: u16,
    /// Base.
    pub base: u64,
}

const_assert_eq!(core::mem::size_of::<DtPtr32>(), 6);
const_assert_eq!(core::mem::size_of::<DtPtr64>(), 10);

impl DtPtr32 {
    /// The operand as the CPU reads it from memory.
    pub const fn to_bytes(self) -> [u8; 6] {
        let l = self.limit.to_le_bytes();
        let b = self.base.to_le_bytes();
        [l[0], l[1], b[0], b[1], b[2], b[3]]
    }

    /// Parse the 6 bytes the CPU reads.
    pub const fn from_bytes(b: [u8; 6]) -> DtPtr32 {
        DtPtr32 {
            limit: u16::from_le_bytes([b[0], b[1]]),
            base: u32::from_le_bytes([b[2], b[3], b[4], b[5]]),
        }
    }
}

impl DtPtr64 {
    /// The operand as the CPU reads it from memory.
    pub const fn to_bytes(self) -> [u8; 10] {
        let l = self.limit.to_le_bytes();
        let b = self.base.to_le_bytes();
        [l[0], l[1], b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]
    }

    /// Parse the 10 bytes the CPU reads.
    pub const fn from_bytes(b: [u8; 10]) -> DtPtr64 {
        DtPtr64 {
            limit: u16::from_le_bytes([b[0], b[1]]),
            base: u64::from_le_bytes([b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9]]),
        }
    }
}

impl From<DtPtr32> for DescriptorTablePointer {
    fn from(p: DtPtr32) -> Self {
        DescriptorTablePointer {
            limit: p.limit,
            base: p.base as u64,
        }
    }
}

impl From<DtPtr64> for DescriptorTablePointer {
    fn from(p: DtPtr64) -> Self {
        DescriptorTablePointer {
            limit: p.limit,
            base: p.base,
        }
    }
}

/// The packed operand of the mode pvops is compiled for.
#[cfg(target_arch = "x86_64")]
pub type NativeDtPtr = DtPtr64;
/// The packed operand of the mode pvops is compiled for.
#[cfg(not(target_arch = "x86_64"))]
pub type NativeDtPtr = DtPtr32;

/// Size of the native `lgdt` operand (10 on x86_64, 6 on i686).
pub const NATIVE_DTPTR_SIZE: usize = core::mem::size_of::<NativeDtPtr>();

#[cfg(target_arch = "x86_64")]
const_assert_eq!(
    NATIVE_DTPTR_SIZE,
    core::mem::size_of::<x86::dtables::DescriptorTablePointer<u64>>()
);
#[cfg(target_arch = "x86")]
const_assert_eq!(
    NATIVE_DTPTR_SIZE,
    core::mem::size_of::<x86::dtables::DescriptorTablePointer<u64>>()
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operand_bytes() {
        let p = DescriptorTablePointer {
            limit: 0x7f,
            base: 0xffff_8000_0012_3000,
        };
        assert_eq!(
            p.to_packed64().to_bytes(),
            [0x7f, 0, 0x00, 0x30, 0x12, 0x00, 0x00, 0x80, 0xff, 0xff]
        );
        assert_eq!(
            DescriptorTablePointer::from(DtPtr64::from_bytes(p.to_packed64().to_bytes())),
            p
        );
        let q = DescriptorTablePointer {
            limit: 0xff,
            base: 0xc000_1000,
        };
        assert_eq!(q.to_packed32().to_bytes(), [0xff, 0, 0, 0x10, 0, 0xc0]);
        assert_eq!(
            DescriptorTablePointer::from(DtPtr32::from_bytes(q.to_packed32().to_bytes())),
            q
        );
        assert_eq!(q.entries(8), 32);
        assert_eq!(q.entries(0), 0, "no panic on a zero entry size");
    }
}
