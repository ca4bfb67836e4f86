//! Xen's `check_descriptor`: which 8-byte GDT/LDT slots a PV guest may
//! install, and how Xen rewrites the ones it accepts.
//!
//! This is a pure function of the guest ABI and the 8 bytes, so the VMI
//! personality and the `hv-sim check-descriptor` command reuse it. The rules
//! are those of `XEN-SEMANTICS.md` §1 (current Xen, `pv/descriptor-tables.c`),
//! implemented from that description.

use core::fmt;

/// Which PV ABI a guest uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Abi {
    /// 64-bit PV guest: kernel in ring 3 (krpl 3).
    Pv64,
    /// 32-bit PV guest on 64-bit Xen (compat ABI): kernel in ring 1 (krpl 1).
    Pv32,
}

impl Abi {
    /// The guest kernel's ring (`GUEST_KERNEL_RPL`): 3 for pv64, 1 for pv32.
    pub const fn krpl(self) -> u32 {
        match self {
            Abi::Pv64 => 3,
            Abi::Pv32 => 1,
        }
    }

    /// The flat kernel code selector a call gate may name (exact value,
    /// RPL included): 0xe033 for pv64, 0xe019 for pv32.
    pub const fn flat_kernel_cs(self) -> u16 {
        match self {
            Abi::Pv64 => 0xe033,
            Abi::Pv32 => 0xe019,
        }
    }

    /// Short name (`pv64` / `pv32`).
    pub const fn name(self) -> &'static str {
        match self {
            Abi::Pv64 => "pv64",
            Abi::Pv32 => "pv32",
        }
    }
}

impl fmt::Display for Abi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// First GDT entry reserved for Xen (guest GDT indices are below it).
pub const FIRST_RESERVED_GDT_ENTRY: u32 = 7168;

/// Default top of the pv32 guest-visible address space
/// (`__HYPERVISOR_COMPAT_VIRT_START`); flat segments reaching past it are
/// extended to 4 GiB.
pub const HV_COMPAT_VSTART: u32 = 0xF580_0000;

/// Why Xen refuses a descriptor; `Display` names the rule in plain words.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reject {
    /// pv32: a code/data descriptor with the L (64-bit code) bit set.
    LongModeSegmentOnPv32,
    /// A present system descriptor of a type other than call gate (0xC)
    /// or 0 (upper half of a 16-byte gate).
    SystemType {
        /// The 4-bit system type.
        typ: u8,
    },
    /// A call gate whose target selector is none of: a guest GDT selector
    /// (index < 7168), an LDT selector (TI set), the exact flat kernel CS.
    GateSelector {
        /// The raw target selector.
        selector: u16,
        /// The ABI (decides which flat kernel CS is allowed).
        abi: Abi,
    },
    /// A call gate with reserved bits set in its high dword (after the
    /// rewrite): pv64 needs bits 0-7 clear (parameter count 0), pv32 bits 5-7.
    GateReservedBits {
        /// The high dword after the rewrite.
        high: u32,
        /// The ABI.
        abi: Abi,
    },
}

/// The name of a 4-bit system descriptor type (S = 0).
pub const fn system_type_name(typ: u8) -> &'static str {
    match typ & 0xF {
        0x0 => "reserved/upper half",
        0x1 => "16-bit TSS (available)",
        0x2 => "LDT",
        0x3 => "16-bit TSS (busy)",
        0x4 => "16-bit call gate",
        0x5 => "task gate",
        0x6 => "16-bit interrupt gate",
        0x7 => "16-bit trap gate",
        0x8 => "reserved type 8",
        0x9 => "TSS (available)",
        0xA => "reserved type 0xA",
        0xB => "TSS (busy)",
        0xC => "call gate",
        0xD => "reserved type 0xD",
        0xE => "interrupt gate",
        _ => "trap gate",
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Reject::LongModeSegmentOnPv32 => f.write_str(
                "L bit set in a code/data descriptor: a 32-bit PV guest may not install 64-bit segments",
            ),
            Reject::SystemType { typ } => write!(
                f,
                "present system descriptor of type {typ:#x} ({}): a PV guest may only install call gates (type 0xc) and type-0 upper halves",
                system_type_name(typ)
            ),
            Reject::GateSelector { selector, abi } => write!(
                f,
                "call gate target selector {selector:#06x} is not a guest GDT selector (index < 7168), not an LDT selector and not the {abi} flat kernel CS {:#06x}",
                abi.flat_kernel_cs()
            ),
            Reject::GateReservedBits { high, abi } => match abi {
                Abi::Pv64 => write!(
                    f,
                    "call gate reserved bits set (high dword {high:#010x}): pv64 gates need bits 0-7 clear (parameter count 0)"
                ),
                Abi::Pv32 => write!(
                    f,
                    "call gate reserved bits set (high dword {high:#010x}): pv32 gates need bits 5-7 clear"
                ),
            },
        }
    }
}

impl core::error::Error for Reject {}

/// Xen's `check_descriptor` with the default pv32 address-space top.
///
/// Returns the 8 bytes Xen would store (DPL raised to krpl, pv32 flat
/// limits extended, call gates rewritten) or the rule that rejects it.
pub fn check_descriptor(abi: Abi, desc: u64) -> Result<u64, Reject> {
    check_descriptor_with(abi, HV_COMPAT_VSTART, desc)
}

/// [`check_descriptor`] with an explicit pv32 `hv_compat_vstart`.
pub fn check_descriptor_with(abi: Abi, compat_vstart: u32, desc: u64) -> Result<u64, Reject> {
    let mut a = desc as u32;
    let mut b = (desc >> 32) as u32;

    // 1. Not present: anything goes, nothing is rewritten.
    if b & (1 << 15) == 0 {
        return Ok(desc);
    }

    // 2. DPL fix-up (written back only on the good path).
    let mut dpl = (b >> 13) & 3;
    if dpl < abi.krpl() {
        dpl = abi.krpl();
        b = (b & !(3 << 13)) | (dpl << 13);
    }

    if b & (1 << 12) != 0 {
        // 3. Code or data.
        if abi == Abi::Pv32 {
            if b & (1 << 21) != 0 {
                return Err(Reject::LongModeSegmentOnPv32);
            }
            let base = (b & 0xFF00_0000) | ((b & 0xFF) << 16) | (a >> 16);
            let mut lim = u64::from((b & 0x000F_0000) | (a & 0xFFFF)) + 1;
            if b & (1 << 23) != 0 {
                lim <<= 12;
            }
            if base == 0 && lim > u64::from(compat_vstart) {
                a |= 0x0000_FFFF;
                b |= 0x000F_0000;
            }
        }
        return Ok(u64::from(a) | (u64::from(b) << 32));
    }

    let typ = ((b >> 8) & 0xF) as u8;
    // 4. Upper half of a 16-byte gate: accepted untouched (DPL not raised).
    if typ == 0 {
        return Ok(desc);
    }
    // 5. Only call gates among the system types.
    if typ != 0xC {
        return Err(Reject::SystemType { typ });
    }
    // 6a. Target selector (raw, RPL and TI included).
    let cs = (a >> 16) as u16;
    let ok =
        u32::from(cs >> 3) < FIRST_RESERVED_GDT_ENTRY || cs == abi.flat_kernel_cs() || cs & 4 != 0;
    if !ok {
        return Err(Reject::GateSelector { selector: cs, abi });
    }
    // 6b. Gate DPL to 0, the real DPL travels in the selector's RPL.
    b &= !(3 << 13);
    a = (a & !(3 << 16)) | (dpl << 16);
    // 6c. Reserved bits after the rewrite.
    let reserved = match abi {
        Abi::Pv64 => 0xFF,
        Abi::Pv32 => 0xE0,
    };
    if b & reserved != 0 {
        return Err(Reject::GateReservedBits { high: b, abi });
    }
    Ok(u64::from(a) | (u64::from(b) << 32))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KCODE64: u64 = 0x00af_9b00_0000_ffff; // DPL0 64-bit code
    const KDATA: u64 = 0x00cf_9300_0000_ffff; // DPL0 flat data, G=1

    #[test]
    fn not_present_untouched() {
        for abi in [Abi::Pv64, Abi::Pv32] {
            // A non-present TSS with junk everywhere.
            let d = 0xffff_7fff_ffff_ffffu64 & !(1u64 << 47);
            assert_eq!(check_descriptor(abi, d), Ok(d));
            assert_eq!(check_descriptor(abi, 0), Ok(0));
        }
    }

    #[test]
    fn dpl_raised_pv64_to_3() {
        let out = check_descriptor(Abi::Pv64, KCODE64).unwrap();
        assert_eq!(out, KCODE64 | (3 << 45));
        let out = check_descriptor(Abi::Pv64, KDATA).unwrap();
        assert_eq!(out, 0x00cf_f300_0000_ffff);
    }

    #[test]
    fn dpl_raised_pv32_only_from_0() {
        let code32 = 0x00cf_9b00_0000_ffffu64;
        assert_eq!(
            check_descriptor(Abi::Pv32, code32).unwrap(),
            0x00cf_bb00_0000_ffff
        );
        // DPL 2 stays.
        let d2 = 0x00cf_db00_0000_ffffu64;
        assert_eq!(check_descriptor(Abi::Pv32, d2).unwrap(), d2);
    }

    #[test]
    fn pv32_rejects_long_mode() {
        assert_eq!(
            check_descriptor(Abi::Pv32, KCODE64),
            Err(Reject::LongModeSegmentOnPv32)
        );
    }

    #[test]
    fn pv32_limit_extension() {
        // base 0, G=1, raw limit 0xF5800 -> extended to 0xFFFFF.
        let d = 0x00cf_b300_0000_5800u64;
        let out = check_descriptor(Abi::Pv32, d).unwrap();
        assert_eq!(out, 0x00cf_b300_0000_ffff);
        // raw limit 0xF57FF: untouched.
        let d = 0x00cf_b300_0000_57ffu64;
        assert_eq!(check_descriptor(Abi::Pv32, d).unwrap(), d);
        // Non-zero base: untouched.
        let d = 0x00cf_b300_1000_5800u64;
        assert_eq!(check_descriptor(Abi::Pv32, d).unwrap(), d);
        // pv64 never extends.
        let d = 0x00cf_f300_0000_5800u64;
        assert_eq!(check_descriptor(Abi::Pv64, d).unwrap(), d);
    }

    #[test]
    fn system_types() {
        for typ in 1u64..16 {
            let d = (1u64 << 47) | (typ << 40);
            let r = check_descriptor(Abi::Pv64, d);
            if typ == 0xC {
                assert!(r.is_ok(), "call gate {r:?}");
            } else {
                assert_eq!(r, Err(Reject::SystemType { typ: typ as u8 }));
            }
        }
        // Type 0 upper half: untouched even with DPL 0.
        let d = 1u64 << 47;
        assert_eq!(check_descriptor(Abi::Pv64, d), Ok(d));
    }

    fn gate(sel: u16, dpl: u64, params: u64) -> u64 {
        (1 << 47) | (0xC << 40) | (dpl << 45) | (params << 32) | (u64::from(sel) << 16) | 0x1234
    }

    #[test]
    fn call_gate_rewrite() {
        let out = check_descriptor(Abi::Pv64, gate(0x10, 0, 0)).unwrap();
        // DPL cleared, RPL 3 in selector.
        assert_eq!(out, (1 << 47) | (0xC << 40) | (0x13u64 << 16) | 0x1234);
        let out = check_descriptor(Abi::Pv32, gate(0x10, 2, 5)).unwrap();
        assert_eq!(
            out,
            (1 << 47) | (0xC << 40) | (5 << 32) | (0x12u64 << 16) | 0x1234
        );
    }

    #[test]
    fn call_gate_selectors() {
        assert!(check_descriptor(Abi::Pv64, gate(0xe033, 3, 0)).is_ok());
        assert!(check_descriptor(Abi::Pv64, gate(0xe030, 3, 0)).is_err());
        assert!(check_descriptor(Abi::Pv64, gate(0xe019, 3, 0)).is_err());
        assert!(check_descriptor(Abi::Pv32, gate(0xe019, 1, 0)).is_ok());
        assert!(check_descriptor(Abi::Pv32, gate(0xe033, 1, 0)).is_err());
        // LDT selector in the reserved range: fine.
        assert!(check_descriptor(Abi::Pv64, gate(0xe034, 3, 0)).is_ok());
        // Null selector: index 0 < 7168.
        assert!(check_descriptor(Abi::Pv64, gate(0, 3, 0)).is_ok());
        // Index 7167 ok, 7168 not.
        assert!(check_descriptor(Abi::Pv64, gate(7167 << 3, 3, 0)).is_ok());
        assert!(check_descriptor(Abi::Pv64, gate(7168 << 3, 3, 0)).is_err());
    }

    #[test]
    fn call_gate_reserved() {
        assert!(matches!(
            check_descriptor(Abi::Pv64, gate(0x10, 3, 1)),
            Err(Reject::GateReservedBits { .. })
        ));
        assert!(check_descriptor(Abi::Pv32, gate(0x10, 3, 31)).is_ok());
        assert!(matches!(
            check_descriptor(Abi::Pv32, gate(0x10, 3, 0x20)),
            Err(Reject::GateReservedBits { .. })
        ));
    }
}
