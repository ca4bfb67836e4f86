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
use core::sync::atomic::{AtomicU64, Ordering};

use static_assertions::const_assert_eq;

use crate::descriptor::{Descriptor, GdtEntry};
use crate::error::{PvError, Result, TableKind};
use crate::gate::{IDT_ENTRY_SIZE, IdtGate};
use crate::ops::DescriptorOps;
use crate::pointer::DescriptorTablePointer;

/// Most descriptors a GDT or LDT can hold (64 KiB / 8).
pub const MAX_DESCRIPTORS: u32 = 8192;
/// Most gates an IDT can usefully hold.
pub const MAX_GATES: u32 = 256;
/// Required alignment of a table base, in bytes.
pub const TABLE_ALIGN: u64 = 8;

/// Is `addr` canonical with 48 implemented linear-address bits (bits 63:47
/// all equal)? The one definition the workspace uses (hv-sim's models
/// included), whatever the target.
pub const fn is_canonical(addr: u64) -> bool {
    let top = addr >> 47;
    top == 0 || top == 0x1_ffff
}

/// Is `addr` a valid linear address for the CPU mode pvops is compiled for?
/// 64-bit: canonical with 48 implemented bits. 32-bit: below 4 GiB.
pub const fn is_valid_linear(addr: u64) -> bool {
    if cfg!(target_arch = "x86_64") {
        is_canonical(addr)
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

/// Read the aligned 8-byte word at linear address `addr` with one relaxed
/// atomic load (a plain `mov` on x86).
///
/// This is how every pvops backend reads a descriptor-table slot, and how
/// [`TableStorage::read`] reads one: because all of them access slots only
/// as whole atomic words, a safe `read` racing an op's write on another
/// CPU sees the old or the new word, never undefined behaviour.
///
/// # Safety
/// `addr` must be 8-byte aligned and valid for an 8-byte read for the
/// duration of the call. Other accesses to the word that may run at the same
/// time (other threads, other CPUs) must be 8-byte atomic accesses too (this
/// function, [`store_u64`], or the CPU's and hypervisor's own descriptor
/// accesses).
pub unsafe fn load_u64(addr: u64) -> u64 {
    // SAFETY: the caller guarantees an aligned, valid word whose concurrent
    // accesses are all atomic; `from_ptr` needs exactly that.
    unsafe { AtomicU64::from_ptr(addr as usize as *mut u64) }.load(Ordering::Relaxed)
}

/// Write the aligned 8-byte word at linear address `addr` with one relaxed
/// atomic store (a plain `mov` on x86: the CPU never sees half a
/// descriptor). The counterpart of [`load_u64`].
///
/// # Safety
/// `addr` must be 8-byte aligned and valid for an 8-byte write for the
/// duration of the call; concurrent accesses to the word must be atomic, as
/// for [`load_u64`].
pub unsafe fn store_u64(addr: u64, value: u64) {
    // SAFETY: as for `load_u64`.
    unsafe { AtomicU64::from_ptr(addr as usize as *mut u64) }.store(value, Ordering::Relaxed)
}

/// A table's (base, entries) kept in one atomic word, so a backend can
/// record the table it loaded and read the pair back untorn from a later op
/// (its [`validate::TableView`](crate::validate::TableView)).
///
/// The base is a valid linear address (canonical: bits 48..64 repeat bit
/// 47) and 8-byte aligned; the entry count (at most 8192, 0 for none) is
/// stored in bits 48..62 and the base's upper bits are rebuilt from bit 47.
#[derive(Debug, Default)]
pub struct TableRecord(AtomicU64);

impl TableRecord {
    /// No table recorded.
    pub const fn new() -> TableRecord {
        TableRecord(AtomicU64::new(0))
    }

    /// Record a table (`entries` 1..=8192), or none.
    pub fn set(&self, table: Option<(u64, u32)>) {
        let v = match table {
            Some((base, entries)) if entries > 0 && entries <= MAX_DESCRIPTORS => {
                (base & 0x0000_ffff_ffff_ffff) | ((entries as u64) << 48)
            }
            _ => 0,
        };
        self.0.store(v, Ordering::Relaxed);
    }

    /// The table recorded: (base, entries).
    pub fn get(&self) -> Option<(u64, u32)> {
        let v = self.0.load(Ordering::Relaxed);
        let entries = (v >> 48) as u32;
        if entries == 0 {
            return None;
        }
        let low = v & 0x0000_ffff_ffff_ffff;
        let base = if low & (1 << 47) != 0 {
            low | 0xffff_0000_0000_0000
        } else {
            low
        };
        Some((base, entries))
    }
}

mod sealed {
    pub trait Sealed {}
}

/// A type [`TableStorage`] can hold: one or two 8-byte words, any bit
/// pattern valid ([`Descriptor`], [`Gate32`](crate::Gate32),
/// [`Gate64`](crate::Gate64), `u64`). Sealed: the storage reads entries as
/// atomic words, which is only right for these layouts.
pub trait TableEntry: Copy + sealed::Sealed {
    /// Number of 8-byte words (1 or 2).
    #[doc(hidden)]
    const WORDS: usize;
    /// Rebuild an entry from its words (the second is ignored when
    /// `WORDS == 1`).
    #[doc(hidden)]
    fn from_words(words: [u64; 2]) -> Self;
}

impl sealed::Sealed for u64 {}
impl TableEntry for u64 {
    const WORDS: usize = 1;
    fn from_words(w: [u64; 2]) -> Self {
        w[0]
    }
}

impl sealed::Sealed for Descriptor {}
impl TableEntry for Descriptor {
    const WORDS: usize = 1;
    fn from_words(w: [u64; 2]) -> Self {
        Descriptor(w[0])
    }
}

impl sealed::Sealed for crate::gate::Gate32 {}
impl TableEntry for crate::gate::Gate32 {
    const WORDS: usize = 1;
    fn from_words(w: [u64; 2]) -> Self {
        crate::gate::Gate32(w[0])
    }
}

impl sealed::Sealed for crate::gate::Gate64 {}
impl TableEntry for crate::gate::Gate64 {
    const WORDS: usize = 2;
    fn from_words(w: [u64; 2]) -> Self {
        crate::gate::Gate64 {
            low: w[0],
            high: w[1],
        }
    }
}

// Every entry is whole 8-byte words, so `TableStorage`'s words are aligned
// (the storage is page aligned) and `read` covers the entry exactly.
const_assert_eq!(core::mem::size_of::<Descriptor>(), 8);
const_assert_eq!(core::mem::size_of::<crate::gate::Gate32>(), 8);
const_assert_eq!(core::mem::size_of::<crate::gate::Gate64>(), 16);

/// Page-aligned static storage for a descriptor table of `N` entries.
///
/// The contents sit in an `UnsafeCell`, so the CPU, a hypervisor and the
/// ops may all write them while the kernel holds `&'static TableStorage`.
/// Page alignment lets a paravirtual backend hand whole frames to the
/// hypervisor (Xen requires GDT frames to be pages of their own).
///
/// # Concurrency
/// The slots are atomic words: [`read`](TableStorage::read) loads each
/// 8-byte word with a relaxed atomic load, and every pvops backend writes
/// slots with relaxed atomic stores ([`store_u64`]; on x86 both are the same
/// `mov`s a volatile access compiles to). So a safe `read` on one CPU while
/// an op writes the table on another is not a data race: it returns the old
/// or the new value of each word (a 16-byte gate being rewritten may be seen
/// half old, half new). Code that writes through
/// [`as_mut_ptr`](TableStorage::as_mut_ptr) itself must do the same, or
/// make sure nothing reads the storage meanwhile.
///
/// ```
/// use pvops::{Descriptor, DescriptorStorage, presets};
///
/// static GDT: DescriptorStorage<4> = DescriptorStorage::new([Descriptor::NULL; 4]);
/// let t = std::thread::spawn(|| GDT.read(1)); // races the write below: fine
/// // SAFETY: slot 1 of the static storage, written as one atomic word.
/// unsafe { pvops::table::store_u64(GDT.base() + 8, presets::KERNEL_DATA.0) };
/// let seen = t.join().unwrap();
/// assert!(seen == Some(Descriptor::NULL) || seen == Some(presets::KERNEL_DATA));
/// ```
#[repr(C, align(4096))]
pub struct TableStorage<T, const N: usize> {
    slots: UnsafeCell<[T; N]>,
}

// SAFETY: the storage is only accessed through raw pointers by the ops, the
// CPU and the hypervisor, which is the contract of a descriptor table; no
// Rust reference to the contents is handed out. Shared accesses from safe
// code (`read`) are atomic word loads, and the backends write with atomic
// word stores, so sharing across threads introduces no data race. `T:
// TableEntry` is plain words, so it is `Send`.
unsafe impl<T: TableEntry, const N: usize> Sync for TableStorage<T, N> {}

/// Storage for a GDT or LDT.
pub type DescriptorStorage<const N: usize> = TableStorage<Descriptor, N>;
/// Storage for an IDT of native gates.
pub type IdtStorage<const N: usize> = TableStorage<IdtGate, N>;

impl<T: TableEntry, const N: usize> TableStorage<T, N> {
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

    /// A copy of entry `index`, or `None` past the end. Each 8-byte word is
    /// one relaxed atomic load (see [Concurrency](TableStorage#concurrency)):
    /// the CPU, the hypervisor or an op on another CPU may be writing it.
    pub fn read(&self, index: usize) -> Option<T> {
        if index >= N {
            return None;
        }
        // SAFETY: index < N, so the entry is inside the array.
        let entry = unsafe { self.as_mut_ptr().add(index) } as usize as u64;
        let mut words = [0u64; 2];
        for (i, w) in words.iter_mut().enumerate().take(T::WORDS) {
            // SAFETY: word i of the entry is inside the array (T is WORDS
            // words), 8-byte aligned (page-aligned storage, entries of whole
            // words), lives as long as `self`, and every concurrent access
            // pvops makes to it is atomic (the type's concurrency contract).
            *w = unsafe { load_u64(entry + 8 * i as u64) };
        }
        Some(T::from_words(words))
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

    /// Load this storage as the GDT through `ops`, safely: the
    /// counterpart of the `x86_64` crate's `GlobalDescriptorTable::load`.
    /// Returns the handle the write ops take.
    ///
    /// Like `lgdt`, this changes no segment register: reload CS, SS and the
    /// data segments yourself if the new table moves them. For storage that
    /// is not `'static` (a table in memory you manage), use the `unsafe`
    /// [`DescriptorOps::load_gdt`] with [`Gdt::new`].
    ///
    /// # Why this is safe
    /// `load_gdt`'s contract has two halves. The memory half (the table
    /// stays valid while loaded) holds because the storage is `'static`
    /// and never freed, and because its slots sit in an `UnsafeCell` that
    /// the CPU (accessed and busy bits), the hypervisor and the ops may
    /// write while Rust code holds `&'static` to it. The descriptor half
    /// (the segments in use stay described) is not at stake when the
    /// register is loaded: `lgdt` reloads no segment register, so the code
    /// running keeps its cached segments. Descriptors are read again only
    /// when a selector is loaded, which pvops does only in `unsafe` ops
    /// (`load_tr`, `load_idt`'s gates, the segment loads a kernel writes
    /// itself), whose contracts cover the GDT loaded at that time; this is
    /// the `x86_64` crate's argument for its safe `load`. The native backend
    /// also checks it: its `load_gdt` refuses a GDT in which a gate of the
    /// loaded IDT no longer names a present code segment of the right width.
    ///
    /// ```
    /// use pvops::{DescriptorOps, DescriptorStorage, presets};
    /// # use pvops::{DescriptorTablePointer, Gdt, Idt, Ldt, Selector, Result, Descriptor, GdtEntry, IdtGate};
    /// # struct Recorder(std::cell::Cell<u64>);
    /// # impl DescriptorOps for Recorder {
    /// #     fn name(&self) -> &'static str { "recorder" }
    /// #     unsafe fn load_gdt(&self, g: &Gdt) -> Result<()> { self.0.set(g.base()); Ok(()) }
    /// #     fn store_gdt(&self) -> Result<DescriptorTablePointer> { unimplemented!() }
    /// #     unsafe fn load_idt(&self, _: &Idt) -> Result<()> { Ok(()) }
    /// #     fn store_idt(&self) -> Result<DescriptorTablePointer> { unimplemented!() }
    /// #     unsafe fn load_tr(&self, _: Selector) -> Result<()> { Ok(()) }
    /// #     fn store_tr(&self) -> Result<Selector> { unimplemented!() }
    /// #     unsafe fn load_ldt(&self, l: Option<&Ldt>) -> Result<()> { self.0.set(l.map_or(0, |l| l.base())); Ok(()) }
    /// #     fn store_ldt(&self) -> Result<Option<Ldt>> { Ok(None) }
    /// #     unsafe fn write_gdt_entry(&self, _: &Gdt, _: u32, _: GdtEntry) -> Result<()> { Ok(()) }
    /// #     unsafe fn write_ldt_entry(&self, _: &Ldt, _: u32, _: Descriptor) -> Result<()> { Ok(()) }
    /// #     unsafe fn write_idt_entry(&self, _: &Idt, _: u8, _: IdtGate) -> Result<()> { Ok(()) }
    /// #     unsafe fn load_tls(&self, _: &[Descriptor; 3]) -> Result<()> { Ok(()) }
    /// #     unsafe fn load_kernel_stack(&self, _: u64) -> Result<()> { Ok(()) }
    /// #     fn enter_lazy_cpu(&self) -> Result<()> { Ok(()) }
    /// #     fn leave_lazy_cpu(&self) -> Result<()> { Ok(()) }
    /// #     fn flush_lazy(&self) -> Result<()> { Ok(()) }
    /// # }
    /// # let ops = Recorder(std::cell::Cell::new(0));
    /// static GDT: DescriptorStorage<16> = DescriptorStorage::new(presets::LINUX_X86_64_GDT);
    /// static LDT: DescriptorStorage<8> = DescriptorStorage::new([pvops::Descriptor::NULL; 8]);
    ///
    /// let gdt = GDT.load_gdt(&ops).unwrap(); // no `unsafe`: the storage is 'static
    /// assert_eq!(gdt.base(), GDT.base());
    /// # assert_eq!(ops.0.get(), GDT.base());
    /// let ldt = LDT.load_ldt(&ops).unwrap();
    /// assert_eq!(ldt.entries(), 8);
    /// # assert_eq!(ops.0.get(), LDT.base());
    /// ```
    pub fn load_gdt<O: DescriptorOps + ?Sized>(&'static self, ops: &O) -> Result<Gdt> {
        let gdt = self.gdt()?;
        // SAFETY: the handle covers exactly this storage, which is 'static
        // (valid for as long as it can be loaded) and interior-mutable (the
        // CPU, the hypervisor and the ops may write it behind `&'static`).
        // Loading GDTR changes no segment register; every later use of the
        // descriptors is an `unsafe` op whose contract covers the GDT then
        // loaded (see "Why this is safe" above).
        unsafe { ops.load_gdt(&gdt)? };
        Ok(gdt)
    }

    /// Load this storage as the LDT through `ops`, safely (see
    /// [`load_gdt`](TableStorage::load_gdt); the `unsafe` form is
    /// [`DescriptorOps::load_ldt`] with [`Ldt::new`]). The backend writes
    /// the LDT descriptor into the loaded GDT and loads LDTR; no segment
    /// register changes, and LDT descriptors are used only when an LDT
    /// selector is loaded, which safe code cannot do.
    pub fn load_ldt<O: DescriptorOps + ?Sized>(&'static self, ops: &O) -> Result<Ldt> {
        let ldt = self.ldt()?;
        // SAFETY: as in `load_gdt`: 'static, interior-mutable storage, and
        // loading LDTR reloads no segment register.
        unsafe { ops.load_ldt(Some(&ldt))? };
        Ok(ldt)
    }
}

impl<const N: usize> TableStorage<IdtGate, N> {
    /// An IDT handle for the whole storage.
    ///
    /// Loading it stays `unsafe` ([`DescriptorOps::load_idt`]), unlike
    /// [`load_gdt`](TableStorage::load_gdt): loading the IDT turns its gates'
    /// offsets into control flow at the next interrupt, and any gate, with
    /// any offset, can be built in safe code and put in the storage by
    /// [`TableStorage::new`]. (The `x86_64` crate's IDT can be loaded safely
    /// because its entries take typed handler functions only.)
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
        let tss = GdtEntry::Double(SystemDescriptor::tss(0x5000, crate::Tss64::LIMIT).unwrap());
        if cfg!(target_arch = "x86_64") {
            assert_eq!(g.entry_addr(14, &tss), Ok(0x2000 + 112));
            assert_eq!(
                g.entry_addr(15, &tss),
                Err(PvError::DoubleSlotPastEnd {
                    table: TableKind::Gdt,
                    index: 15,
                    entries: 16
                })
            );
        } else {
            // 32-bit mode has no 16-byte descriptors: any slot refuses one.
            assert_eq!(g.entry_addr(14, &tss), Err(PvError::DoubleSlotUnsupported));
        }
        assert!(matches!(
            Gdt::from_pointer(DescriptorTablePointer {
                limit: 8,
                base: 0x2000
            }),
            Err(PvError::LimitNotWhole { .. })
        ));
    }

    #[test]
    fn record_round_trips() {
        let r = TableRecord::new();
        assert_eq!(r.get(), None);
        for (base, n) in [
            (0x1000u64, 1u32),
            (0xffff_8000_0000_1000, 8192),
            (0x7fff_ffff_f000, 16),
        ] {
            r.set(Some((base, n)));
            assert_eq!(r.get(), Some((base, n)));
        }
        r.set(None);
        assert_eq!(r.get(), None);
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
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

    /// 32-bit mode: linear addresses are 32 bits; a table must end at or
    /// below 4 GiB (pvops refuses one that would wrap around to 0).
    #[test]
    #[cfg(not(target_arch = "x86_64"))]
    fn bases_32() {
        assert!(Gdt::new(0xffff_fff8, 1).is_ok());
        for (base, n) in [
            (0xffff_fff8u64, 2u32),
            (1 << 32, 1),
            (0xffff_8000_0000_0000, 1),
        ] {
            assert!(
                matches!(Gdt::new(base, n), Err(PvError::BadTableBase { .. })),
                "{base:#x} x {n}"
            );
        }
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

    static RACED: DescriptorStorage<4> = DescriptorStorage::new([Descriptor::NULL; 4]);
    static RACED_IDT: IdtStorage<4> = IdtStorage::new([IdtGate::MISSING; 4]);

    /// Issue 9: a safe `read` while an op writes the slot on another thread
    /// (the ops write with `store_u64`). Miri reported a data race when
    /// `read` was a volatile read and the ops' writes volatile stores; run
    /// `cargo +nightly miri test -p pvops` to check it stays race-free.
    #[test]
    fn concurrent_read_and_op_write_do_not_race() {
        extern crate std;
        let d = crate::presets::KERNEL_CODE64;
        let writer = std::thread::spawn(move || {
            for i in 0..4u64 {
                // SAFETY: slot i of the static storage, aligned; the other
                // thread only reads it atomically.
                unsafe { store_u64(RACED.base() + 8 * i, d.0) };
                // SAFETY: as above, both words of IDT gate i.
                unsafe {
                    store_u64(RACED_IDT.base() + (IDT_ENTRY_SIZE as u64) * i, 0x8e00);
                }
            }
        });
        for _ in 0..8 {
            for i in 0..4 {
                let seen = RACED.read(i);
                assert!(seen == Some(Descriptor::NULL) || seen == Some(d));
                assert!(RACED_IDT.read(i).is_some());
            }
        }
        writer.join().unwrap();
        assert_eq!(RACED.read(3), Some(d));
        // SAFETY: the writer has finished.
        assert_eq!(unsafe { load_u64(RACED.base() + 8) }, d.0);
    }
}
