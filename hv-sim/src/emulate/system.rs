//! The architectural checks of LTR and LLDT (SDM vol. 2B "LTR—Load Task
//! Register", vol. 2A "LLDT—Load Local Descriptor Table Register"; vol. 3A
//! 3.5 "System descriptor types", 7.2.2/7.2.3 for the TSS descriptor and
//! 8.2.3 for its 16-byte IA-32e form), in one place for both of hv-sim's
//! CPU models: the instruction emulator ([`super::emulate`]) and
//! [`crate::softcpu::SoftCpu`] (issue 14: they used to carry a copy each).
//!
//! A load goes in two steps, with the descriptor read between them (the
//! caller reads through its own memory model):
//! 1. [`locate`]: a null selector (LTR: #GP(0); LLDT: empties LDTR), TI = 1
//!    (#GP(sel)), and the GDT limit, which must cover all 8 bytes of the
//!    descriptor (16 in IA-32e mode, compatibility mode included): else
//!    #GP(sel). The descriptor's linear address is GDTR.base + index × 8,
//!    wrapping at 4 GiB outside IA-32e mode.
//! 2. [`check`]: a code/data descriptor (S = 1) or the wrong type: #GP(sel).
//!    LTR takes an *available* TSS: types 1 (16-bit) and 9 (32-bit) in
//!    legacy protected mode, only 9 (64-bit TSS) in IA-32e mode; a busy one
//!    (3, 11) is #GP(sel). LLDT takes type 2. Not present: #NP(sel). In
//!    IA-32e mode, a non-zero type field in the upper 8 bytes (bits 12:8 of
//!    the upper dword) or a non-canonical base: #GP(sel).
//!
//! LTR then sets the busy bit: [`Checked::busy_byte`] is the new byte 5 of
//! the descriptor (the CPU's locked update of the type byte).
//!
//! The error code of #GP(sel)/#NP(sel) is the selector with its RPL
//! cleared (SDM 6.13 "Error code": index, TI, and EXT = 0).

use pvops::DescriptorTablePointer;

use super::Exception;
use super::segment::SegmentCache;

/// Which instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SystemLoad {
    /// LTR: an available TSS.
    Ltr,
    /// LLDT: an LDT.
    Lldt,
}

/// Where the descriptor is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Located {
    /// Its linear address.
    pub addr: u64,
    /// 16 in IA-32e mode, else 8.
    pub size: u64,
}

/// A descriptor that passed every check: what the register's hidden part
/// loads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checked {
    /// The base (64 bits in IA-32e mode).
    pub base: u64,
    /// The limit in bytes (G applied).
    pub limit: u32,
    /// LTR: the descriptor's byte 5 with the busy bit set, to be written at
    /// `addr + 5`. `None` for LLDT.
    pub busy_byte: Option<u8>,
}

fn selector_error(sel: u16) -> u16 {
    sel & 0xfffc
}

/// Step 1: the selector and the GDT limit. `Ok(None)`: LLDT of a null
/// selector (LDTR becomes unusable; nothing is read).
pub fn locate(
    kind: SystemLoad,
    sel: u16,
    gdtr: DescriptorTablePointer,
    ia32e: bool,
) -> Result<Option<Located>, Exception> {
    if sel & 0xfffc == 0 {
        return match kind {
            SystemLoad::Ltr => Err(Exception::Gp(0)),
            SystemLoad::Lldt => Ok(None),
        };
    }
    let ec = selector_error(sel);
    if sel & 4 != 0 {
        return Err(Exception::Gp(ec));
    }
    let size: u64 = if ia32e { 16 } else { 8 };
    let off = u64::from(sel >> 3) * 8;
    if off + size - 1 > u64::from(gdtr.limit) {
        return Err(Exception::Gp(ec));
    }
    let mut addr = gdtr.base.wrapping_add(off);
    if !ia32e {
        addr &= 0xffff_ffff;
    }
    Ok(Some(Located { addr, size }))
}

/// Step 2: the descriptor's low 8 bytes `low` and, in IA-32e mode, its
/// upper 8 bytes `high` (ignored otherwise).
pub fn check(
    kind: SystemLoad,
    sel: u16,
    low: u64,
    high: u64,
    ia32e: bool,
) -> Result<Checked, Exception> {
    let ec = selector_error(sel);
    let cache = SegmentCache::from_descriptor(low);
    let type_ok = match (kind, ia32e) {
        (SystemLoad::Ltr, true) => cache.typ == 9,
        (SystemLoad::Ltr, false) => cache.typ == 1 || cache.typ == 9,
        (SystemLoad::Lldt, _) => cache.typ == 2,
    };
    if cache.s || !type_ok {
        return Err(Exception::Gp(ec));
    }
    if !cache.present {
        return Err(Exception::Np(ec));
    }
    let mut base = cache.base;
    if ia32e {
        if (high >> 40) & 0x1f != 0 {
            return Err(Exception::Gp(ec));
        }
        base |= high << 32;
        if !pvops::table::is_canonical(base) {
            return Err(Exception::Gp(ec));
        }
    }
    Ok(Checked {
        base,
        limit: cache.effective_limit(),
        busy_byte: (kind == SystemLoad::Ltr).then_some((low >> 40) as u8 | 2),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GDTR: DescriptorTablePointer = DescriptorTablePointer {
        limit: 0x7f,
        base: 0x1_0000,
    };
    /// An available 32-bit TSS at 0x3000, limit 0x67 (SDM 7.2.2 layout).
    const TSS32: u64 = 0x0000_8900_3000_0067;

    /// SDM vol. 2 LTR/LLDT: null selector, TI, GDT limit (8 or 16 bytes).
    #[test]
    fn locate_rules() {
        assert_eq!(
            locate(SystemLoad::Ltr, 3, GDTR, true),
            Err(Exception::Gp(0))
        );
        assert_eq!(locate(SystemLoad::Lldt, 2, GDTR, true), Ok(None));
        assert_eq!(
            locate(SystemLoad::Lldt, 0x0c, GDTR, false),
            Err(Exception::Gp(0x0c))
        );
        // Index 15 (0x78): 8 bytes fit below limit 0x7f, 16 do not.
        assert_eq!(
            locate(SystemLoad::Ltr, 0x7b, GDTR, false),
            Ok(Some(Located {
                addr: 0x1_0078,
                size: 8
            }))
        );
        assert_eq!(
            locate(SystemLoad::Ltr, 0x7b, GDTR, true),
            Err(Exception::Gp(0x78))
        );
        // Outside IA-32e mode the address wraps at 4 GiB.
        let high = DescriptorTablePointer {
            limit: 0xffff,
            base: 0xffff_fff0,
        };
        assert_eq!(
            locate(SystemLoad::Ltr, 0x20, high, false).map(|l| l.map(|l| l.addr)),
            Ok(Some(0x10))
        );
    }

    /// SDM vol. 2 LTR: available TSS types by mode, busy refused, #NP.
    #[test]
    fn ltr_types_by_mode() {
        let ok = check(SystemLoad::Ltr, 0x28, TSS32, 0, false).unwrap();
        assert_eq!(
            (ok.base, ok.limit, ok.busy_byte),
            (0x3000, 0x67, Some(0x8b))
        );
        // 16-bit available TSS: legacy only.
        let tss16 = TSS32 & !(0xf << 40) | (1 << 40);
        assert!(check(SystemLoad::Ltr, 0x28, tss16, 0, false).is_ok());
        assert_eq!(
            check(SystemLoad::Ltr, 0x28, tss16, 0, true),
            Err(Exception::Gp(0x28))
        );
        // Busy: #GP(sel).
        assert_eq!(
            check(SystemLoad::Ltr, 0x2b, TSS32 | 2 << 40, 0, false),
            Err(Exception::Gp(0x28))
        );
        // Not present: #NP(sel), after the type check.
        assert_eq!(
            check(SystemLoad::Ltr, 0x28, TSS32 & !(1 << 47), 0, false),
            Err(Exception::Np(0x28))
        );
        // A data segment with type 9's bits: S = 1 is #GP.
        assert_eq!(
            check(SystemLoad::Ltr, 0x28, TSS32 | 1 << 44, 0, false),
            Err(Exception::Gp(0x28))
        );
    }

    /// SDM vol. 3A 8.2.3 / LTR, LLDT in 64-bit mode: the upper half.
    #[test]
    fn ia32e_upper_half() {
        let ldt = TSS32 & !(0xf << 40) | (2 << 40);
        let c = check(SystemLoad::Lldt, 0x30, ldt, 0x7fff, true).unwrap();
        assert_eq!((c.base, c.busy_byte), (0x7fff_0000_3000, None));
        assert_eq!(
            check(SystemLoad::Lldt, 0x30, ldt, 0x8000, true),
            Err(Exception::Gp(0x30))
        );
        assert_eq!(
            check(SystemLoad::Lldt, 0x30, ldt, 1 << 40, true),
            Err(Exception::Gp(0x30))
        );
        // Outside IA-32e mode the upper half is not read.
        assert!(check(SystemLoad::Lldt, 0x30, ldt, 1 << 40, false).is_ok());
    }
}
