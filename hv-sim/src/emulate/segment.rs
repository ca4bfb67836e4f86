//! Segmentation as the CPU applies it to a memory access outside 64-bit
//! mode (SDM vol. 3A chapter 5 "Protection", sections 5.3 "Limit
//! checking" and 5.4–5.6 "Type checking"; vol. 1 3.4.2 "Segment
//! registers"): the emulator's check of an operand or an instruction fetch
//! against the segment register's hidden part before the linear address
//! goes to the page walker ([`super::walk`]). Issue 11: fetching and
//! reading through CS, DS, SS... with limits, expand-down segments, type
//! checks and wrap-around is part of what trap-and-emulate must do.
//!
//! * A null selector in DS, ES, FS or GS loads an unusable segment: any
//!   access through it is #GP(0). (SS and CS cannot be null outside 64-bit
//!   mode.)
//! * Type: a write needs a writable data segment; a read, a readable
//!   segment (data, or code with R); a fetch, a code segment. Else #GP(0)
//!   (#SS(0) for SS).
//! * Limit (5.3): expand-up, every byte of `offset..offset + size` at or
//!   below the effective limit (limit × 4 KiB + 0xFFF with G); expand-down,
//!   every byte above the limit and at or below 0xFFFF (B = 0) or
//!   0xFFFF_FFFF (B = 1). A violation is #GP(0), or #SS(0) through SS.
//! * The linear address is base + offset, truncated to 32 bits (the
//!   address space of protected and compatibility mode's legacy segments
//!   wraps at 4 GiB).
//! * In 64-bit mode only FS and GS bases apply; no limit or type checks
//!   (the caller checks canonicality).

use super::{Exception, Segment};

/// A segment register's hidden part (the descriptor cache).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegmentCache {
    /// Base address.
    pub base: u64,
    /// The descriptor's 20-bit limit field.
    pub limit: u32,
    /// The type field (bits 43:40 of the descriptor).
    pub typ: u8,
    /// S: a code or data segment (not a system one).
    pub s: bool,
    /// DPL.
    pub dpl: u8,
    /// P.
    pub present: bool,
    /// D/B: 32-bit default size / big expand-down bound.
    pub db: bool,
    /// G: the limit counts 4 KiB units.
    pub g: bool,
    /// L: 64-bit code.
    pub l: bool,
    /// Loaded from a null selector (unusable).
    pub unusable: bool,
}

impl SegmentCache {
    /// The hidden part a descriptor loads (`desc` is the 8-byte
    /// descriptor).
    pub fn from_descriptor(desc: u64) -> SegmentCache {
        SegmentCache {
            base: ((desc >> 16) & 0xFF_FFFF) | ((desc >> 32) & 0xFF00_0000),
            limit: ((desc & 0xFFFF) | ((desc >> 32) & 0xF_0000)) as u32,
            typ: ((desc >> 40) & 0xF) as u8,
            s: desc & (1 << 44) != 0,
            dpl: ((desc >> 45) & 3) as u8,
            present: desc & (1 << 47) != 0,
            db: desc & (1 << 54) != 0,
            g: desc & (1 << 55) != 0,
            l: desc & (1 << 53) != 0,
            unusable: false,
        }
    }

    /// The limit in bytes (G scales it: limit × 4096 + 4095).
    pub fn effective_limit(&self) -> u32 {
        if self.g {
            (self.limit << 12) | 0xFFF
        } else {
            self.limit
        }
    }

    fn is_code(&self) -> bool {
        self.typ & 8 != 0
    }

    fn expand_down(&self) -> bool {
        !self.is_code() && self.typ & 4 != 0
    }
}

/// How the segment is used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegAccess {
    /// Data read.
    Read,
    /// Data write.
    Write,
    /// Instruction fetch (through CS).
    Fetch,
}

/// The linear address of `size` bytes at `offset` through segment `seg`
/// with hidden part `cache`, or the fault the CPU raises. `long_mode`: the
/// code runs in 64-bit mode (no limits, only FS/GS bases).
pub fn linear(
    seg: Segment,
    cache: &SegmentCache,
    offset: u64,
    size: u32,
    access: SegAccess,
    long_mode: bool,
) -> Result<u64, Exception> {
    let _p = super::profile::enter(super::profile::Phase::Segmentation);
    if long_mode {
        let base = match seg {
            Segment::Fs | Segment::Gs => cache.base,
            _ => 0,
        };
        return Ok(base.wrapping_add(offset));
    }
    let fault = if seg == Segment::Ss {
        Exception::Ss(0)
    } else {
        Exception::Gp(0)
    };
    if cache.unusable || !cache.present || !cache.s {
        return Err(fault);
    }
    let ok_type = match access {
        SegAccess::Fetch => cache.is_code(),
        SegAccess::Read => !cache.is_code() || cache.typ & 2 != 0,
        SegAccess::Write => !cache.is_code() && cache.typ & 2 != 0,
    };
    if !ok_type {
        return Err(fault);
    }
    let offset = offset & 0xFFFF_FFFF;
    let size = u64::from(size.max(1));
    let last = offset + size - 1;
    let limit = u64::from(cache.effective_limit());
    let within = if cache.expand_down() {
        let upper: u64 = if cache.db { 0xFFFF_FFFF } else { 0xFFFF };
        offset > limit && last <= upper
    } else {
        last <= limit
    };
    if !within {
        return Err(fault);
    }
    Ok(cache.base.wrapping_add(offset) & 0xFFFF_FFFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A flat 4 GiB data segment (writable, G, B).
    const FLAT_DATA: u64 = 0x00cf_9300_0000_ffff;
    /// A flat 32-bit code segment (readable).
    const FLAT_CODE: u64 = 0x00cf_9b00_0000_ffff;

    fn data(limit: u32, typ: u8) -> SegmentCache {
        SegmentCache {
            base: 0x1000,
            limit,
            typ,
            s: true,
            present: true,
            ..SegmentCache::default()
        }
    }

    /// SDM 3.4.5: the descriptor's fields as the hidden part holds them.
    #[test]
    fn descriptor_fields() {
        let c = SegmentCache::from_descriptor(0x12cf_9345_6789_ffff);
        assert_eq!(c.base, 0x1245_6789);
        assert_eq!(c.limit, 0xf_ffff);
        assert_eq!(c.effective_limit(), 0xffff_ffff);
        assert!(c.g && c.db && c.present && c.s && !c.l);
        assert_eq!((c.typ, c.dpl), (3, 0));
    }

    /// SDM 5.3: expand-up limit, every byte of the access.
    #[test]
    fn expand_up_limit_checks_the_last_byte() {
        let c = data(0xFFF, 3);
        assert_eq!(
            linear(Segment::Ds, &c, 0xFF8, 8, SegAccess::Read, false),
            Ok(0x1FF8)
        );
        assert_eq!(
            linear(Segment::Ds, &c, 0xFF9, 8, SegAccess::Read, false),
            Err(Exception::Gp(0))
        );
        // Through SS: #SS(0).
        assert_eq!(
            linear(Segment::Ss, &c, 0x1000, 1, SegAccess::Write, false),
            Err(Exception::Ss(0))
        );
    }

    /// SDM 5.3: G scales the limit to 4 KiB units (+ 0xFFF).
    #[test]
    fn granularity() {
        let mut c = data(0x1, 3);
        c.g = true;
        assert!(linear(Segment::Ds, &c, 0x1FFF, 1, SegAccess::Read, false).is_ok());
        assert!(linear(Segment::Ds, &c, 0x2000, 1, SegAccess::Read, false).is_err());
    }

    /// SDM 5.3: expand-down: valid offsets are above the limit, up to
    /// 0xFFFF (B = 0) or 0xFFFF_FFFF (B = 1).
    #[test]
    fn expand_down() {
        let c = data(0x0FFF, 7); // data, expand-down, writable
        assert!(linear(Segment::Ss, &c, 0x0FFF, 1, SegAccess::Write, false).is_err());
        assert!(linear(Segment::Ss, &c, 0x1000, 1, SegAccess::Write, false).is_ok());
        assert!(linear(Segment::Ss, &c, 0xFFFF, 1, SegAccess::Write, false).is_ok());
        assert_eq!(
            linear(Segment::Ss, &c, 0xFFFE, 4, SegAccess::Write, false),
            Err(Exception::Ss(0))
        );
        let mut big = c;
        big.db = true;
        assert!(linear(Segment::Ss, &big, 0xFFFE, 4, SegAccess::Write, false).is_ok());
        assert!(linear(Segment::Ss, &big, 0xFFFF_FFFC, 4, SegAccess::Write, false).is_ok());
    }

    /// SDM 5.4: writes need a writable data segment, reads a readable one,
    /// fetches a code segment.
    #[test]
    fn type_checks() {
        let ro = data(0xFFFF, 1); // read-only data
        assert!(linear(Segment::Ds, &ro, 0, 4, SegAccess::Read, false).is_ok());
        assert_eq!(
            linear(Segment::Ds, &ro, 0, 4, SegAccess::Write, false),
            Err(Exception::Gp(0))
        );
        let code = SegmentCache::from_descriptor(FLAT_CODE);
        assert!(linear(Segment::Cs, &code, 0x1234, 15, SegAccess::Fetch, false).is_ok());
        assert!(linear(Segment::Ds, &code, 0x1234, 4, SegAccess::Read, false).is_ok());
        assert!(linear(Segment::Ds, &code, 0x1234, 4, SegAccess::Write, false).is_err());
        let exec_only = SegmentCache { typ: 0x8, ..code };
        assert!(linear(Segment::Es, &exec_only, 0, 1, SegAccess::Read, false).is_err());
        let flat = SegmentCache::from_descriptor(FLAT_DATA);
        assert!(linear(Segment::Cs, &flat, 0, 1, SegAccess::Fetch, false).is_err());
    }

    /// SDM 3.4.2 / 5.4.1: a null selector loads an unusable segment; any
    /// access through it is #GP(0). A not-present or system descriptor
    /// can't be used either.
    #[test]
    fn null_and_unusable_segments() {
        let null = SegmentCache {
            unusable: true,
            ..SegmentCache::from_descriptor(FLAT_DATA)
        };
        assert_eq!(
            linear(Segment::Fs, &null, 0, 1, SegAccess::Read, false),
            Err(Exception::Gp(0))
        );
        let np = SegmentCache {
            present: false,
            ..SegmentCache::from_descriptor(FLAT_DATA)
        };
        assert!(linear(Segment::Ds, &np, 0, 1, SegAccess::Read, false).is_err());
    }

    /// Protected mode: base + offset wraps at 4 GiB.
    #[test]
    fn linear_addresses_wrap_at_4_gib() {
        let c = SegmentCache {
            base: 0xFFFF_F000,
            ..SegmentCache::from_descriptor(FLAT_DATA)
        };
        assert_eq!(
            linear(Segment::Ds, &c, 0x2000, 4, SegAccess::Read, false),
            Ok(0x1000)
        );
    }

    /// 64-bit mode: no limits or types; only FS and GS have a base.
    #[test]
    fn long_mode_uses_only_fs_and_gs_bases() {
        let c = SegmentCache {
            base: 0x7000,
            unusable: true,
            ..SegmentCache::default()
        };
        assert_eq!(
            linear(Segment::Ds, &c, 0x10, 8, SegAccess::Write, true),
            Ok(0x10)
        );
        assert_eq!(
            linear(Segment::Gs, &c, 0x10, 8, SegAccess::Write, true),
            Ok(0x7010)
        );
    }
}
