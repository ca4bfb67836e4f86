//! [`GdtBuilder`]: lay out a GDT entry by entry and get each entry's
//! selector back, in a `const` or at run time.
//!
//! Each push returns the [`Selector`] of the slot it used: GDT (TI = 0),
//! the slot's index, and an RPL equal to the descriptor's DPL for code and
//! data segments (a ring-3 segment is loaded with RPL 3) and 0 for system
//! descriptors. Slot 0 is the null descriptor. A 16-byte system descriptor
//! (long-mode TSS, LDT or call gate) takes two slots.
//!
//! ```
//! use pvops::{DescriptorStorage, GdtBuilder, Ring, Selector, presets};
//!
//! // In a const: a full table is a compile error through the `match`.
//! const fn ok(r: pvops::Result<Selector>) -> Selector {
//!     match r {
//!         Ok(s) => s,
//!         Err(_) => panic!("GDT full"),
//!     }
//! }
//! const BUILT: (GdtBuilder<8>, Selector, Selector) = {
//!     let mut b = GdtBuilder::new();
//!     let cs = ok(b.push(presets::KERNEL_CODE64));
//!     let user_ds = ok(b.push(presets::USER_DATA));
//!     (b, cs, user_ds)
//! };
//! static GDT: DescriptorStorage<8> = DescriptorStorage::new(BUILT.0.build());
//!
//! assert_eq!(BUILT.1, Selector::gdt(1, Ring::Ring0)); // 0x08
//! assert_eq!(BUILT.2.bits(), 0x13); // index 2, RPL 3
//! assert_eq!(GDT.read(1), Some(presets::KERNEL_CODE64));
//!
//! // At run time: a TSS descriptor needs the TSS's address.
//! let mut b = BUILT.0;
//! let tss = pvops::SystemDescriptor::tss(0x5000, pvops::tss::Tss64::LIMIT).unwrap();
//! let tss = b.push_system(tss);
//! assert_eq!(tss, Ok(Selector::gdt(3, Ring::Ring0)));
//! assert_eq!(b.len(), 5); // null, code, data, TSS (2 slots)
//!
//! // A long-mode call gate is 16 bytes too: `From<Gate64> for GdtEntry`.
//! let gate = pvops::Gate64::call(BUILT.1, 0xffff_8000_0000_1000, Ring::Ring3);
//! assert_eq!(b.push_entry(gate.into()), Ok(Selector::gdt(5, Ring::Ring0)));
//! assert!(b.push_entry(gate.into()).is_err()); // slots 7 and 8: past the end
//! assert_eq!(b.len(), 7);
//! ```

use crate::descriptor::{Descriptor, GdtEntry, SystemDescriptor};
use crate::error::{PvError, Result, TableKind};
use crate::selector::{Ring, Selector};
use crate::table::MAX_DESCRIPTORS;

/// A GDT of `N` slots being laid out; see the [module docs](self).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GdtBuilder<const N: usize> {
    entries: [Descriptor; N],
    next: usize,
}

impl<const N: usize> Default for GdtBuilder<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> GdtBuilder<N> {
    /// A table holding only the null descriptor in slot 0 (every slot is
    /// null until pushed).
    pub const fn new() -> Self {
        GdtBuilder {
            entries: [Descriptor::NULL; N],
            next: 1,
        }
    }

    /// Slots used so far, the null descriptor included.
    pub const fn len(&self) -> usize {
        self.next
    }

    /// True while only the null descriptor is there.
    pub const fn is_empty(&self) -> bool {
        self.next <= 1
    }

    /// Reserve `slots` null slots (for entries written later through the
    /// ops, such as TLS slots), returning the selector of the first, RPL 0.
    pub const fn reserve(&mut self, slots: usize) -> Result<Selector> {
        let index = match self.take(slots) {
            Ok(i) => i,
            Err(e) => return Err(e),
        };
        Ok(Selector::gdt(index as u16, Ring::Ring0))
    }

    /// Put `entry` in the next free slot(s) and return its selector.
    ///
    /// Errors with [`PvError::TableTooLarge`] (the slots the table would
    /// need, and `N`) when it does not fit; the builder is unchanged then.
    pub const fn push_entry(&mut self, entry: GdtEntry) -> Result<Selector> {
        match entry {
            GdtEntry::Single(d) => {
                let index = match self.take(1) {
                    Ok(i) => i,
                    Err(e) => return Err(e),
                };
                self.entries[index] = d;
                let rpl = if d.is_code_or_data() {
                    d.dpl()
                } else {
                    Ring::Ring0
                };
                Ok(Selector::gdt(index as u16, rpl))
            }
            GdtEntry::Double(sd) => {
                let index = match self.take(2) {
                    Ok(i) => i,
                    Err(e) => return Err(e),
                };
                self.entries[index] = Descriptor(sd.low);
                self.entries[index + 1] = Descriptor(sd.high);
                Ok(Selector::gdt(index as u16, Ring::Ring0))
            }
        }
    }

    /// Push an 8-byte descriptor: code, data, or a 32-bit-mode system
    /// descriptor ([`push_entry`](GdtBuilder::push_entry)).
    pub const fn push(&mut self, d: Descriptor) -> Result<Selector> {
        self.push_entry(GdtEntry::Single(d))
    }

    /// Push a 16-byte long-mode TSS or LDT descriptor (two slots).
    pub const fn push_system(&mut self, d: SystemDescriptor) -> Result<Selector> {
        self.push_entry(GdtEntry::Double(d))
    }

    /// The table: pushed entries, null elsewhere. Put it in a
    /// [`DescriptorStorage`](crate::DescriptorStorage).
    pub const fn build(self) -> [Descriptor; N] {
        self.entries
    }

    /// The first of `slots` free slots, marked used.
    const fn take(&mut self, slots: usize) -> Result<usize> {
        let index = self.next;
        let end = index + slots;
        if end > N || end > MAX_DESCRIPTORS as usize {
            let max = if N < MAX_DESCRIPTORS as usize {
                N as u32
            } else {
                MAX_DESCRIPTORS
            };
            return Err(PvError::TableTooLarge {
                table: TableKind::Gdt,
                entries: if end > u32::MAX as usize {
                    u32::MAX
                } else {
                    end as u32
                },
                max,
            });
        }
        self.next = end;
        Ok(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presets;

    #[test]
    fn selectors_carry_index_ti_and_rpl() {
        let mut b = GdtBuilder::<6>::new();
        assert!(b.is_empty());
        assert_eq!(b.push(presets::KERNEL_CODE64), Ok(Selector(0x08)));
        assert_eq!(b.push(presets::USER_CODE64), Ok(Selector(0x13)));
        let tss = SystemDescriptor::tss(0x5000, 0x67).unwrap();
        assert_eq!(b.push_system(tss), Ok(Selector(0x18)));
        // Slot 5 is the last one: a 16-byte entry no longer fits, and the
        // builder is unchanged by the refusal.
        assert_eq!(
            b.push_system(tss),
            Err(PvError::TableTooLarge {
                table: TableKind::Gdt,
                entries: 7,
                max: 6
            })
        );
        assert_eq!(b.len(), 5);
        assert_eq!(b.reserve(1), Ok(Selector(0x28)));
        assert!(b.push(presets::KERNEL_DATA).is_err());
        let t = b.build();
        assert_eq!(t[0], Descriptor::NULL);
        assert_eq!(t[1], presets::KERNEL_CODE64);
        assert_eq!((t[3].0, t[4].0), (tss.low, tss.high));
        assert_eq!(t[5], Descriptor::NULL);
    }

    #[test]
    fn empty_table_refuses_everything() {
        let mut b = GdtBuilder::<0>::new();
        assert!(b.push(presets::KERNEL_DATA).is_err());
        assert_eq!(b.build(), []);
        let mut b = GdtBuilder::<1>::new();
        assert!(b.reserve(1).is_err());
        assert_eq!(b.reserve(0), Ok(Selector(0x08)));
    }

    #[test]
    fn gates_in_the_gdt() {
        let call64 = crate::Gate64::call(Selector(0x10), 0xffff_8000_0000_1000, Ring::Ring3);
        assert_eq!(
            GdtEntry::from(call64),
            GdtEntry::Double(SystemDescriptor {
                low: call64.low,
                high: call64.high
            })
        );
        let call32 = crate::Gate32::call(Selector(0x60), 0x1000, Ring::Ring3, 2).unwrap();
        let e = GdtEntry::from(call32);
        assert_eq!(e, GdtEntry::Single(Descriptor(call32.0)));
        let mut b = GdtBuilder::<4>::new();
        // A call gate is a system descriptor: RPL 0 whatever its DPL.
        assert_eq!(b.push_entry(e), Ok(Selector(0x08)));
        assert_eq!(b.push_entry(call64.into()), Ok(Selector(0x10)));
    }
}
