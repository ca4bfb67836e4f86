//! Validated descriptor-table handles ([`Gdt`], [`Ldt`], [`Idt`]) and static
//! storage for tables ([`TableStorage`]).
//!
//! A handle is a base address and an entry count that have passed every
//! architectural rule: at least one entry, at most 64 KiB (8192 descriptors,
//! 256 gates), 8-byte aligned, a valid linear address for this CPU, no
//! wrap-around. Backends receive handles, so they never see a malformed
//! table; the per-entry checks (index in range, a 16-byte descriptor not in
//! the last slot) are methods here that every backend calls, so the rules
//! and their error messages live in one place.
//!
//! Handles hold addresses, not references: a loaded table is read by the CPU
//! (and, under a hypervisor, by the hypervisor) behind the compiler's back,
//! so the memory must not be covered by a Rust `&`/`&mut` while ops write
//! it. [`TableStorage`] gives a kernel a `static` that is safe to hand out.

use core::cell::UnsafeCell;

use crate::descriptor::{Descriptor, GdtEntry};
use crate::error::{PvError, Result, TableKind};
use crate::gate::{IDT_ENTRY_SIZE, IdtGate};
use crate::pointer::DescriptorTablePointer;

/// Most descriptors a GDT or LDT can hold (64 KiB / 8).
pub const MAX_DESCRIPTORS: u32 = 8192;
/// Most gates an IDT can usefully hold.
pub const MAX_GATES: u32 = 256;
/// Required alignment of a table base, in bytes.
pub const TABLE_ALIGN: u64 = 8;

/// Is `addr` a valid linear address for the CPU mode pvops is compiled for?
/// 64-bit: canonical with 48 implemented bits. 32-bit: below 4 GiB.
pub const fn is_valid_linear(addr: u64) -> bool {
    if cfg!(target_arch = "x86_64") {
        let top = addr >> 47;
        top == 0 || top == 0x1_ffff
    } else {
        addr <= u32::MAX as u64
    }
}

const fn check_table(
    table: TableKind,
    base: u64,
    entries: u32,
    entry_size: u32,
    max: u32,
) -> Result<()> {
    if entries == 0 {
        return Err(PvError::EmptyTable { table });
    }
    if entries > max {
        return Err(PvError::TableTooLarge {
            table,
            entries,
            max,
        });
    }
    if !base.is_multiple_of(TABLE_ALIGN) {
        return Err(PvError::MisalignedTable {
            table,
            base,
            align: TABLE_ALIGN,
        });
    }
    let last = match base.checked_add((entries * entry_size) as u64 - 1) {
        Some(l) => l,
        None => return Err(PvError::BadTableBase { table, base }),
    };
    // Both ends valid and on the same side of the canonical hole.
    if !is_valid_linear(base) || !is_valid_linear(last) || (base >> 47) != (last >> 47) {
        return Err(PvError::BadTableBase { table, base });
    }
    Ok(())
}

const fn entries_from_limit(table: TableKind, limit: u16, entry_size: u32) -> Result<u32> {
    let bytes = limit as u32 + 1;
    if !bytes.is_multiple_of(entry_size) {
        return Err(PvError::LimitNotWhole {
            table,
            limit,
            entry_size: entry_size as u8,
        });
    }
    Ok(bytes / entry_size)
}

const fn index_check(table: TableKind, index: u32, entries: u32) -> Result<()> {
    if index >= entries {
        Err(PvError::IndexOutOfRange {
            table,
            index,
            entries,
        })
    } else {
        Ok(())
    }
}

/// A validated global descriptor table: base and entry count (1..=8192).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Gdt {
    base: u64,
    entries: u32,
}

impl Gdt {
    /// Validate a GDT of `entries` 8-byte slots at `base`.
    pub const fn new(base: u64, entries: u32) -> Result<Gdt> {
        match check_table(TableKind::Gdt, base, entries, 8, MAX_DESCRIPTORS) {
            Ok(()) => Ok(Gdt { base, entries }),
            Err(e) => Err(e),
        }
    }

    /// Validate an `lgdt`-style pointer (limit must be `8n - 1`).
    pub const fn from_pointer(p: DescriptorTablePointer) -> Result<Gdt> {
        match entries_from_limit(TableKind::Gdt, p.limit, 8) {
            Ok(n) => Gdt::new(p.base, n),
            Err(e) => Err(e),
        }
    }

    /// The `lgdt` operand.
    pub const fn pointer(&self) -> DescriptorTablePointer {
        DescriptorTablePointer {
            limit: (self.entries * 8 - 1) as u16,
            base: self.base,
        }
    }

    /// Base address.
    pub const fn base(&self) -> u64 {
        self.base
    }

    /// Number of 8-byte slots.
    pub const fn entries(&self) -> u32 {
        self.entries
    }

    /// Address of slot `index`, checking it is inside the table.
    pub const fn slot_addr(&self, index: u32) -> Result<u64> {
        match index_check(TableKind::Gdt, index, self.entries) {
            Ok(()) => Ok(self.base + index as u64 * 8),
            Err(e) => Err(e),
        }
    }

    /// Check that `entry` fits at `index` (both slots of a 16-byte
    /// descriptor inside the table; 16-byte descriptors only in long mode)
    /// and return the slot's address.
    pub const fn entry_addr(&self, index: u32, entry: &GdtEntry) -> Result<u64> {
        let addr = match self.slot_addr(index) {
            Ok(a) => a,
            Err(e) => return Err(e),
        };
        if let GdtEntry::Double(_) = entry {
            if !cfg!(target_arch = "x86_64") {
                return Err(PvError::DoubleSlotUnsupported);
            }
            if index + 1 >= self.entries {
                return Err(PvError::DoubleSlotPastEnd {
                    table: TableKind::Gdt,
                    index,
                    entries: self.entries,
                });
            }
        }
        Ok(addr)
    }
}

/// A validated local descriptor table: base and entry count (1..=8192).
/// "No LDT" is `Option::<Ldt>::None` in the ops.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ldt {
    base: u64,
    entries: u32,
}

impl Ldt {
    /// Validate an LDT of `entries` 8-byte slots at `base`.
    pub const fn new(base: u64, entries: u32) -> Result<Ldt> {
        match check_table(TableKind::Ldt, base, entries, 8, MAX_DESCRIPTORS) {
            Ok(()) => Ok(Ldt { base, entries }),
            Err(e) => Err(e),
        }
    }

    /// Base address.
    pub const fn base(&self) -> u64 {
        self.base
    }

    /// Number of entries.
    pub const fn entries(&self) -> u32 {
        self.entries
    }

    /// The limit an LDT descriptor for this table carries.
    pub const fn limit(&self) -> u32 {
        self.entries * 8 - 1
    }

    /// Address of entry `index`, checking it is inside the table.
    pub const fn slot_addr(&self, index: u32) -> Result<u64> {
        match index_check(TableKind::Ldt, index, self.entries) {
            Ok(()) => Ok(self.base + index as u64 * 8),
            Err(e) => Err(e),
        }
    }
}

/// A validated interrupt descriptor table of native-size gates (1..=256).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Idt {
    base: u64,
    entries: u32,
}

impl Idt {
    /// Validate an IDT of `entries` gates at `base`.
    pub const fn new(base: u64, entries: u32) -> Result<Idt> {
        match check_table(
            TableKind::Idt,
            base,
            entries,
            IDT_ENTRY_SIZE as u32,
            MAX_GATES,
        ) {
            Ok(()) => Ok(Idt { base, entries }),
            Err(e) => Err(e),
        }
    }

    /// Validate an `lidt`-style pointer.
    pub const fn from_pointer(p: DescriptorTablePointer) -> Result<Idt> {
        match entries_from_limit(TableKind::Idt, p.limit, IDT_ENTRY_SIZE as u32) {
            Ok(n) => Idt::new(p.base, n),
            Err(e) => Err(e),
        }
    }

    /// The `lidt` operand.
    pub const fn pointer(&self) -> DescriptorTablePointer {
        DescriptorTablePointer {
            limit: (self.entries * IDT_ENTRY_SIZE as u32 - 1) as u16,
            base: self.base,
        }
    }

    /// Base address.
    pub const fn base(&self) -> u64 {
        self.base
    }

    /// Number of gates.
    pub const fn entries(&self) -> u32 {
        self.entries
    }

    /// Address of the gate for `vector`, checking it is inside the table.
    pub const fn slot_addr(&self, vector: u8) -> Result<u64> {
        match index_check(TableKind::Idt, vector as u32, self.entries) {
            Ok(()) => Ok(self.base + vector as u64 * IDT_ENTRY_SIZE as u64),
            Err(e) => Err(e),
        }
    }
}

/// Page-aligned static storage for a descriptor table of `N` entries.
///
/// The contents sit in an `UnsafeCell`, so the CPU, a hypervisor and the
/// ops may all write them while the kernel holds `&'static TableStorage`.
/// Page alignment lets a paravirtual backend hand whole frames to the
/// hypervisor (Xen requires GDT frames to be pages of their own).
#[repr(C, align(4096))]
pub struct TableStorage<T, const N: usize> {
    slots: UnsafeCell<[T; N]>,
}

// SAFETY: the storage is only accessed through raw pointers by the ops, the
// CPU and the hypervisor, which is the contract of a descriptor table; no
// Rust reference to the contents is handed out (reads are volatile copies).
unsafe impl<T: Send, const N: usize> Sync for TableStorage<T, N> {}

/// Storage for a GDT or LDT.
pub type DescriptorStorage<const N: usize> = TableStorage<Descriptor, N>;
/// Storage for an IDT of native gates.
pub type IdtStorage<const N: usize> = TableStorage<IdtGate, N>;

impl<T: Copy, const N: usize> TableStorage<T, N> {
    /// Storage with initial contents.
    pub const fn new(init: [T; N]) -> Self {
        TableStorage {
            slots: UnsafeCell::new(init),
        }
    }

    /// Address of entry 0.
    pub const fn as_mut_ptr(&self) -> *mut T {
        self.slots.get().cast()
    }

    /// Address of entry 0 as a linear address.
    pub fn base(&self) -> u64 {
        self.as_mut_ptr() as usize as u64
    }

    /// A copy of entry `index`, read volatile (the CPU or hypervisor may
    /// have changed it), or `None` past the end.
    pub fn read(&self, index: usize) -> Option<T> {
        if index >= N {
            return None;
        }
        // SAFETY: index < N, so the pointer is inside the array; the storage
        // lives as long as `self`; a volatile read tolerates concurrent
        // writers of whole entries by the CPU/hypervisor.
        Some(unsafe { self.as_mut_ptr().add(index).read_volatile() })
    }
}

impl<const N: usize> TableStorage<Descriptor, N> {
    /// A GDT handle for the whole storage.
    pub fn gdt(&'static self) -> Result<Gdt> {
        Gdt::new(self.base(), N as u32)
    }

    /// An LDT handle for the whole storage.
    pub fn ldt(&'static self) -> Result<Ldt> {
        Ldt::new(self.base(), N as u32)
    }
}

impl<const N: usize> TableStorage<IdtGate, N> {
    /// An IDT handle for the whole storage.
    pub fn idt(&'static self) -> Result<Idt> {
        Idt::new(self.base(), N as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::descriptor::SystemDescriptor;

    #[test]
    fn gdt_rules() {
        assert_eq!(
            Gdt::new(0x1000, 0),
            Err(PvError::EmptyTable {
                table: TableKind::Gdt
            })
        );
        assert!(Gdt::new(0x1000, 8192).is_ok());
        assert_eq!(
            Gdt::new(0x1000, 8193),
            Err(PvError::TableTooLarge {
                table: TableKind::Gdt,
                entries: 8193,
                max: 8192
            })
        );
        assert_eq!(
            Gdt::new(0x1004, 4),
            Err(PvError::MisalignedTable {
                table: TableKind::Gdt,
                base: 0x1004,
                align: 8
            })
        );
        let g = Gdt::new(0x2000, 16).unwrap();
        assert_eq!(g.pointer().limit, 127);
        assert_eq!(Gdt::from_pointer(g.pointer()), Ok(g));
        assert_eq!(g.slot_addr(15), Ok(0x2000 + 120));
        assert!(matches!(
            g.slot_addr(16),
            Err(PvError::IndexOutOfRange {
                index: 16,
                entries: 16,
                ..
            })
        ));
        let tss = GdtEntry::Double(SystemDescriptor::tss(0x5000, 0x67).unwrap());
        assert_eq!(g.entry_addr(14, &tss), Ok(0x2000 + 112));
        assert_eq!(
            g.entry_addr(15, &tss),
            Err(PvError::DoubleSlotPastEnd {
                table: TableKind::Gdt,
                index: 15,
                entries: 16
            })
        );
        assert!(matches!(
            Gdt::from_pointer(DescriptorTablePointer {
                limit: 8,
                base: 0x2000
            }),
            Err(PvError::LimitNotWhole { .. })
        ));
    }

    #[test]
    fn bases() {
        assert!(matches!(
            Gdt::new(0x0000_8000_0000_0000, 1),
            Err(PvError::BadTableBase { .. })
        ));
        assert!(Gdt::new(0xffff_8000_0000_0000, 1).is_ok());
        // A table straddling the canonical hole.
        assert!(matches!(
            Gdt::new(0x0000_7fff_ffff_fff8, 2),
            Err(PvError::BadTableBase { .. })
        ));
        assert!(matches!(
            Gdt::new(u64::MAX - 7, 2),
            Err(PvError::BadTableBase { .. })
        ));
    }

    #[test]
    fn ldt_and_idt_rules() {
        assert!(Ldt::new(0x3000, 8192).is_ok());
        assert!(matches!(
            Ldt::new(0x3000, 8193),
            Err(PvError::TableTooLarge {
                table: TableKind::Ldt,
                ..
            })
        ));
        assert_eq!(Ldt::new(0x3000, 4).unwrap().limit(), 31);
        let idt = Idt::new(0x4000, 256).unwrap();
        assert_eq!(idt.pointer().limit as usize, 256 * IDT_ENTRY_SIZE - 1);
        assert_eq!(Idt::from_pointer(idt.pointer()), Ok(idt));
        assert!(matches!(
            Idt::new(0x4000, 257),
            Err(PvError::TableTooLarge {
                table: TableKind::Idt,
                ..
            })
        ));
        let small = Idt::new(0x4000, 32).unwrap();
        assert!(small.slot_addr(31).is_ok());
        assert!(matches!(
            small.slot_addr(32),
            Err(PvError::IndexOutOfRange {
                table: TableKind::Idt,
                ..
            })
        ));
    }

    static STORE: DescriptorStorage<4> = DescriptorStorage::new([Descriptor::NULL; 4]);

    #[test]
    fn storage_is_page_aligned() {
        let g = STORE.gdt().unwrap();
        assert_eq!(g.base() % 4096, 0);
        assert_eq!(g.entries(), 4);
        assert_eq!(STORE.read(3), Some(Descriptor::NULL));
        assert_eq!(STORE.read(4), None);
    }
}
