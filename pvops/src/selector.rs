//! Segment selectors: index, table indicator (TI) and requested privilege
//! level (RPL).
//!
//! [`Selector`] is a plain `u16` newtype with typed accessors. It converts to
//! and from [`x86::segmentation::SegmentSelector`] (which the native backend
//! hands to the `x86` crate's instruction wrappers) and uses [`x86::Ring`] for
//! privilege levels. We keep our own type because the `x86` type is a
//! `bitflags` set whose `contains(RPL_0)` is always true and which has no TI
//! accessor; a selector is a number with three fields, not a flag set.

use core::fmt;

pub use x86::Ring;

/// Decode a 2-bit privilege level.
pub const fn ring_from_bits(bits: u8) -> Ring {
    match bits & 3 {
        0 => Ring::Ring0,
        1 => Ring::Ring1,
        2 => Ring::Ring2,
        _ => Ring::Ring3,
    }
}

/// Table indicator of a selector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TableIndicator {
    /// TI = 0: the global descriptor table.
    Gdt,
    /// TI = 1: the local descriptor table.
    Ldt,
}

/// A segment selector: `index << 3 | TI << 2 | RPL`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(transparent)]
pub struct Selector(pub u16);

impl Selector {
    /// The null selector (GDT index 0, RPL 0).
    pub const NULL: Selector = Selector(0);

    /// Build a selector from its three fields. `index` must be below 8192;
    /// larger values are truncated to 13 bits (use [`Selector::try_new`] to
    /// get an error instead).
    pub const fn new(index: u16, ti: TableIndicator, rpl: Ring) -> Selector {
        let ti = match ti {
            TableIndicator::Gdt => 0,
            TableIndicator::Ldt => 4,
        };
        Selector(((index & 0x1fff) << 3) | ti | rpl as u16)
    }

    /// Build a selector, refusing an index of 8192 or more.
    pub const fn try_new(index: u16, ti: TableIndicator, rpl: Ring) -> crate::Result<Selector> {
        if index > 0x1fff {
            return Err(crate::PvError::FieldOutOfRange {
                field: "selector index",
                value: index as u64,
                max: 0x1fff,
            });
        }
        Ok(Selector::new(index, ti, rpl))
    }

    /// A GDT selector.
    pub const fn gdt(index: u16, rpl: Ring) -> Selector {
        Selector::new(index, TableIndicator::Gdt, rpl)
    }

    /// An LDT selector.
    pub const fn ldt(index: u16, rpl: Ring) -> Selector {
        Selector::new(index, TableIndicator::Ldt, rpl)
    }

    /// The descriptor index (0..8192).
    pub const fn index(self) -> u16 {
        self.0 >> 3
    }

    /// The table indicator.
    pub const fn ti(self) -> TableIndicator {
        if self.0 & 4 != 0 {
            TableIndicator::Ldt
        } else {
            TableIndicator::Gdt
        }
    }

    /// The requested privilege level.
    pub const fn rpl(self) -> Ring {
        ring_from_bits(self.0 as u8)
    }

    /// Same selector with another RPL.
    pub const fn with_rpl(self, rpl: Ring) -> Selector {
        Selector((self.0 & !3) | rpl as u16)
    }

    /// True for the null selectors (GDT index 0, any RPL), which the CPU
    /// treats as "no segment".
    pub const fn is_null(self) -> bool {
        self.0 & !3 == 0
    }

    /// The raw value.
    pub const fn bits(self) -> u16 {
        self.0
    }
}

impl From<x86::segmentation::SegmentSelector> for Selector {
    fn from(s: x86::segmentation::SegmentSelector) -> Self {
        Selector(s.bits())
    }
}

impl From<Selector> for x86::segmentation::SegmentSelector {
    fn from(s: Selector) -> Self {
        x86::segmentation::SegmentSelector::from_raw(s.0)
    }
}

impl fmt::Debug for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Selector({self})")
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = match self.ti() {
            TableIndicator::Gdt => "GDT",
            TableIndicator::Ldt => "LDT",
        };
        write!(
            f,
            "{:#06x} ({t}[{}] RPL{})",
            self.0,
            self.index(),
            self.rpl() as u8
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_every_value() {
        for raw in 0..=u16::MAX {
            let s = Selector(raw);
            assert_eq!(Selector::new(s.index(), s.ti(), s.rpl()), s);
            let x: x86::segmentation::SegmentSelector = s.into();
            assert_eq!(Selector::from(x), s);
            assert_eq!(x.index(), s.index());
        }
    }

    #[test]
    fn linux_selectors() {
        // Linux x86_64: __KERNEL_CS = 0x10, __USER_CS = 0x33, __USER_DS = 0x2b.
        assert_eq!(Selector::gdt(2, Ring::Ring0).bits(), 0x10);
        assert_eq!(Selector::gdt(6, Ring::Ring3).bits(), 0x33);
        assert_eq!(Selector::gdt(5, Ring::Ring3).bits(), 0x2b);
        assert_eq!(Selector::ldt(1, Ring::Ring3).bits(), 0x0f);
        assert!(Selector(3).is_null());
        assert!(!Selector(4).is_null());
    }

    #[test]
    fn try_new_rejects_large_index() {
        assert!(Selector::try_new(8192, TableIndicator::Gdt, Ring::Ring0).is_err());
        assert!(Selector::try_new(8191, TableIndicator::Gdt, Ring::Ring0).is_ok());
    }
}
