//! Interoperation with the [`x86_64`] crate (feature `x86_64`).
//!
//! A blog_os-style kernel builds its tables with `x86_64`'s
//! [`GlobalDescriptorTable`], [`InterruptDescriptorTable`] and
//! [`TaskStateSegment`]. This module converts between that crate's types and
//! pvops' and says which of its tables pvops can use as they are.
//!
//! # Conversions
//!
//! | `x86_64` | pvops | how |
//! |---|---|---|
//! | [`SegmentSelector`] | [`Selector`] | `From` both ways (same bits) |
//! | [`PrivilegeLevel`] | [`Ring`] | [`ring`], [`privilege_level`] (both types are foreign to pvops, so no `From`) |
//! | [`VirtAddr`] | `u64` | `VirtAddr::as_u64`; back with [`virt_addr`] (refuses a non-canonical address) |
//! | [`structures::DescriptorTablePointer`](X86DescriptorTablePointer) | [`DescriptorTablePointer`] | `From`; `TryFrom` back (the base must be canonical) |
//! | [`gdt::Descriptor`](X86Descriptor) | [`GdtEntry`] | `From` both ways (`UserSegment` = one slot, `SystemSegment` = two) |
//! | [`TaskStateSegment`] | [`SystemDescriptor`] | [`tss_descriptor`] (the descriptor `x86_64`'s `Descriptor::tss_segment` makes) |
//! | IST index of [`EntryOptions::set_stack_index`] and [`TaskStateSegment::interrupt_stack_table`] | IST of [`Gate64::with_ist`] | [`ist_from_stack_index`], [`stack_index_from_ist`] |
//! | [`idt::Entry`] | [`Gate64`] | [`gate`] |
//!
//! **The IST index is numbered differently.** `x86_64` counts interrupt
//! stacks from 0: `set_stack_index(0)` selects
//! `interrupt_stack_table[0]`, which the CPU calls IST1, and the gate's IST
//! field holds 1. pvops uses the CPU's numbering: [`Gate64::with_ist`]`(1)`
//! is IST1 and 0 means "no stack switch". So blog_os's
//! `DOUBLE_FAULT_IST_INDEX = 0` is pvops' IST 1: convert with
//! [`ist_from_stack_index`] rather than by hand.
//!
//! # Which `x86_64` tables pvops can use as they are
//!
//! pvops' load and store ops (`load_gdt`, `load_idt`, `load_tr`, `store_*`)
//! only read a table, so they work on `x86_64`'s tables where they are:
//! [`gdt_handle`] and [`idt_handle`] give the [`Gdt`] and [`Idt`] handles
//! the ops take, and `load_tr` takes the TSS selector that
//! `GlobalDescriptorTable::append` returned (`.into()`). On the native
//! backend that is the whole of it (`lgdt`, `lidt`, `ltr`).
//!
//! The write ops (`write_gdt_entry`, `write_idt_entry`, `write_ldt_entry`,
//! `load_tls`, `load_ldt`, which writes the LDT descriptor into the GDT, and
//! `load_kernel_stack`, which writes rsp0 into the TSS) write into the table
//! through a raw pointer while the kernel holds a shared reference to it.
//! That is undefined behaviour unless the memory is inside an
//! [`UnsafeCell`](core::cell::UnsafeCell):
//! * `x86_64`'s [`InterruptDescriptorTable`] and [`TaskStateSegment`] are
//!   plain integer fields: writing them through a pointer derived from
//!   `&'static` (what `load(&'static self)` wants, or a `Lazy`'s deref) is
//!   UB.
//! * Its [`GlobalDescriptorTable`] keeps its entries in a private field.
//!   Version 0.15 makes them `AtomicU64` when its `instructions` feature is
//!   on and the target is x86_64 (so that the CPU may set the accessed and
//!   busy bits), plain `u64` otherwise, and 0.14 always plain `u64`; the
//!   crate promises neither. pvops does not build on that detail: treat an
//!   `x86_64` GDT as read-only too.
//!
//! Paravirtual backends write the tables as well: Xen copies and validates
//! the GDT frames it is given and makes them read-only to the guest, so the
//! tables a Xen guest loads must be pvops storage anyway.
//!
//! # Moving the tables into pvops storage
//!
//! Keep building the tables with `x86_64` (its builders are fine), add one
//! [`DescriptorStorage`] and one [`IdtStorage`] static, and replace the load
//! calls: [`copy_gdt`] and [`copy_idt`] copy the built tables into the
//! storage and return the handles to load. From then on the storage is the
//! live table, and every op (the write ops included) works on it; the
//! `x86_64` values are only the initial contents. Selectors from `append`
//! stay valid: the copy keeps every slot where it was.
//!
//! ```text
//! // before                                   // after
//! GDT.0.load();                               let gdt = unsafe { copy_gdt(&GDT.0, &GDT_LIVE) }?;
//!                                             unsafe { OPS.load_gdt(&gdt) }?;
//! unsafe { CS::set_reg(GDT.1.code) };         unsafe { CS::set_reg(GDT.1.code) };
//! unsafe { load_tss(GDT.1.tss) };             unsafe { OPS.load_tr(GDT.1.tss.into()) }?;
//! IDT.load();                                 let idt = unsafe { copy_idt(&IDT, &IDT_LIVE) }?;
//!                                             unsafe { OPS.load_idt(&idt) }?;
//! ```
//!
//! `examples/blog-os-kernel` is a kernel written this way, booted in CI.
//! A TSS whose rsp0 pvops must update (`load_kernel_stack`) belongs in
//! memory inside an `UnsafeCell` (or a `static mut` only pvops writes), not
//! in an immutable static.
//!
//! [`SegmentSelector`]: ::x86_64::structures::gdt::SegmentSelector
//! [`PrivilegeLevel`]: ::x86_64::PrivilegeLevel
//! [`VirtAddr`]: ::x86_64::VirtAddr
//! [`GlobalDescriptorTable`]: ::x86_64::structures::gdt::GlobalDescriptorTable
//! [`InterruptDescriptorTable`]: ::x86_64::structures::idt::InterruptDescriptorTable
//! [`TaskStateSegment`]: ::x86_64::structures::tss::TaskStateSegment
//! [`TaskStateSegment::interrupt_stack_table`]: ::x86_64::structures::tss::TaskStateSegment::interrupt_stack_table
//! [`EntryOptions::set_stack_index`]: ::x86_64::structures::idt::EntryOptions::set_stack_index
//! [`idt::Entry`]: ::x86_64::structures::idt::Entry
//! [`Gdt`]: crate::Gdt
//! [`Idt`]: crate::Idt
//! [`DescriptorStorage`]: crate::DescriptorStorage
//! [`IdtStorage`]: crate::IdtStorage

use ::x86_64::PrivilegeLevel;
use ::x86_64::VirtAddr;
use ::x86_64::addr::VirtAddrNotValid;
use ::x86_64::structures::DescriptorTablePointer as X86DescriptorTablePointer;
use ::x86_64::structures::gdt::{
    Descriptor as X86Descriptor, GlobalDescriptorTable, SegmentSelector,
};
use ::x86_64::structures::idt::{Entry, InterruptDescriptorTable};
use ::x86_64::structures::tss::TaskStateSegment;

use crate::table::store_u64;
use crate::{
    Descriptor, DescriptorTablePointer, Gate64, GdtEntry, PvError, Result, Ring, Selector,
    SystemDescriptor, TableKind, TableStorage,
};
use crate::{Gdt, Idt};

impl From<SegmentSelector> for Selector {
    fn from(s: SegmentSelector) -> Self {
        Selector(s.0)
    }
}

impl From<Selector> for SegmentSelector {
    fn from(s: Selector) -> Self {
        SegmentSelector(s.0)
    }
}

/// pvops' [`Ring`] for an `x86_64` [`PrivilegeLevel`].
pub const fn ring(level: PrivilegeLevel) -> Ring {
    match level {
        PrivilegeLevel::Ring0 => Ring::Ring0,
        PrivilegeLevel::Ring1 => Ring::Ring1,
        PrivilegeLevel::Ring2 => Ring::Ring2,
        PrivilegeLevel::Ring3 => Ring::Ring3,
    }
}

/// The `x86_64` [`PrivilegeLevel`] for pvops' [`Ring`].
pub const fn privilege_level(ring: Ring) -> PrivilegeLevel {
    match ring {
        Ring::Ring0 => PrivilegeLevel::Ring0,
        Ring::Ring1 => PrivilegeLevel::Ring1,
        Ring::Ring2 => PrivilegeLevel::Ring2,
        Ring::Ring3 => PrivilegeLevel::Ring3,
    }
}

/// A pvops linear address as an `x86_64` [`VirtAddr`]; `Err` names the
/// address when it is not canonical (bits 48..64 must repeat bit 47), which
/// `VirtAddr` cannot hold. The other way is `VirtAddr::as_u64`.
pub const fn virt_addr(addr: u64) -> core::result::Result<VirtAddr, VirtAddrNotValid> {
    VirtAddr::try_new(addr)
}

impl From<X86DescriptorTablePointer> for DescriptorTablePointer {
    fn from(p: X86DescriptorTablePointer) -> Self {
        DescriptorTablePointer {
            limit: p.limit,
            base: p.base.as_u64(),
        }
    }
}

impl TryFrom<DescriptorTablePointer> for X86DescriptorTablePointer {
    /// The base is not canonical.
    type Error = VirtAddrNotValid;

    fn try_from(p: DescriptorTablePointer) -> core::result::Result<Self, Self::Error> {
        Ok(X86DescriptorTablePointer {
            limit: p.limit,
            base: VirtAddr::try_new(p.base)?,
        })
    }
}

impl From<X86Descriptor> for GdtEntry {
    fn from(d: X86Descriptor) -> Self {
        match d {
            X86Descriptor::UserSegment(v) => GdtEntry::Single(Descriptor(v)),
            X86Descriptor::SystemSegment(low, high) => {
                GdtEntry::Double(SystemDescriptor { low, high })
            }
        }
    }
}

impl From<GdtEntry> for X86Descriptor {
    fn from(e: GdtEntry) -> Self {
        match e {
            GdtEntry::Single(d) => X86Descriptor::UserSegment(d.0),
            GdtEntry::Double(s) => X86Descriptor::SystemSegment(s.low, s.high),
        }
    }
}

impl From<Descriptor> for X86Descriptor {
    fn from(d: Descriptor) -> Self {
        X86Descriptor::UserSegment(d.0)
    }
}

impl From<SystemDescriptor> for X86Descriptor {
    fn from(s: SystemDescriptor) -> Self {
        X86Descriptor::SystemSegment(s.low, s.high)
    }
}

/// Size of `x86_64`'s [`TaskStateSegment`]: the 104-byte 64-bit TSS, no I/O
/// bitmap.
pub const TSS_SIZE: u32 = core::mem::size_of::<TaskStateSegment>() as u32;
const _: () = assert!(TSS_SIZE == 104);

/// The 16-byte available-TSS descriptor for `tss` (limit 103: no I/O
/// bitmap), equal to what `x86_64`'s `Descriptor::tss_segment` builds.
pub fn tss_descriptor(tss: &'static TaskStateSegment) -> Result<SystemDescriptor> {
    SystemDescriptor::tss(tss as *const TaskStateSegment as usize as u64, TSS_SIZE - 1)
}

/// pvops' IST number (1..=7, as [`Gate64::with_ist`] takes it) for an
/// `x86_64` stack index (0..=6, as `EntryOptions::set_stack_index` and
/// `TaskStateSegment::interrupt_stack_table[index]` take it): `index + 1`.
/// Err([`PvError::BadIst`]) for an index above 6.
pub const fn ist_from_stack_index(index: u16) -> Result<u8> {
    if index > 6 {
        return Err(PvError::BadIst {
            ist: if index > 0xfe { 0xff } else { index as u8 + 1 },
        });
    }
    Ok(index as u8 + 1)
}

/// The `x86_64` stack index (0..=6) for pvops' IST number: `ist - 1`, or
/// `None` for IST 0 (no stack switch, which `x86_64` expresses by not
/// calling `set_stack_index`). Err([`PvError::BadIst`]) above 7.
pub const fn stack_index_from_ist(ist: u8) -> Result<Option<u16>> {
    match ist {
        0 => Ok(None),
        1..=7 => Ok(Some(ist as u16 - 1)),
        _ => Err(PvError::BadIst { ist }),
    }
}

// `Entry<F>` is `#[repr(C)]`: the 16-byte hardware gate (offset 15:0,
// selector, IST/type/DPL/P, offset 31:16, offset 63:32, reserved), which is
// what `x86_64` hands to `lidt`. These hold for every `F` (a PhantomData).
const _: () = assert!(core::mem::size_of::<Entry<()>>() == 16);
const _: () = assert!(core::mem::size_of::<InterruptDescriptorTable>() == 256 * 16);

/// The gate an `x86_64` IDT entry holds, bit for bit (a missing entry is a
/// not-present gate).
pub fn gate<F>(entry: &Entry<F>) -> Gate64 {
    const { assert!(core::mem::size_of::<Entry<F>>() == 16) };
    let p = entry as *const Entry<F> as *const [u32; 4];
    // SAFETY: `Entry<F>` is repr(C) with fields u16, (u16, u16), u16, u32,
    // u32 and a zero-sized PhantomData: 16 initialized bytes, no padding,
    // 4-byte aligned (asserted above), so reading it as [u32; 4] through a
    // live shared reference is a valid read of initialized memory.
    let w = unsafe { p.read() };
    Gate64 {
        low: w[0] as u64 | (w[1] as u64) << 32,
        high: w[2] as u64 | (w[3] as u64) << 32,
    }
}

/// Every gate of an `x86_64` IDT, vector by vector.
pub fn gates(idt: &InterruptDescriptorTable) -> impl Iterator<Item = Gate64> + '_ {
    let first = idt as *const InterruptDescriptorTable as *const Entry<()>;
    (0..256).map(move |v| {
        // SAFETY: `InterruptDescriptorTable` is repr(C) and consists of 256
        // 16-byte `Entry<_>` fields in vector order (asserted size, no
        // padding between repr(C) fields of equal size and alignment), so
        // entry `v` is inside the live `idt`.
        gate(unsafe { &*first.add(v) })
    })
}

/// The 8-byte words of an `x86_64` GDT's used entries (a system descriptor
/// is two of them, low half first), slot by slot.
pub fn gdt_words<const M: usize>(gdt: &GlobalDescriptorTable<M>) -> impl Iterator<Item = u64> + '_ {
    gdt.entries().iter().map(|e| e.raw())
}

/// A [`Gdt`] handle for an `x86_64` GDT where it is (its used entries), for
/// pvops' load and store ops only: see the [module documentation](self)
/// for why the write ops must not be used on it.
pub fn gdt_handle<const M: usize>(gdt: &'static GlobalDescriptorTable<M>) -> Result<Gdt> {
    let entries = gdt.entries();
    Gdt::new(entries.as_ptr() as usize as u64, entries.len() as u32)
}

/// An [`Idt`] handle (256 vectors) for an `x86_64` IDT where it is, for
/// pvops' load and store ops only: see the [module documentation](self).
pub fn idt_handle(idt: &'static InterruptDescriptorTable) -> Result<Idt> {
    Idt::new(idt as *const InterruptDescriptorTable as usize as u64, 256)
}

/// Copy an `x86_64` GDT's used entries into pvops storage, slot for slot
/// (selectors from `append` stay valid), zero the rest of the storage, and
/// return the handle for the whole storage. Err([`PvError::TableTooLarge`])
/// if the entries do not fit; nothing is written then.
///
/// # Safety
/// `into` is not the GDT loaded in any CPU's GDTR (copy before loading it):
/// a CPU using it could see half of the copy.
pub unsafe fn copy_gdt<const M: usize, const N: usize>(
    from: &GlobalDescriptorTable<M>,
    into: &'static TableStorage<Descriptor, N>,
) -> Result<Gdt> {
    let used = from.entries().len();
    if used > N {
        return Err(PvError::TableTooLarge {
            table: TableKind::Gdt,
            entries: used as u32,
            max: N as u32,
        });
    }
    let gdt = into.gdt()?;
    let words = gdt_words(from).chain(core::iter::repeat(0)).take(N);
    for (i, w) in words.enumerate() {
        // SAFETY: slot i < N of the 'static, page-aligned storage; its
        // contents are in an UnsafeCell and every access to them is an
        // atomic word access (TableStorage's contract).
        unsafe { store_u64(into.base() + 8 * i as u64, w) };
    }
    Ok(gdt)
}

/// Copy every gate of an `x86_64` IDT into pvops storage, vector for vector
/// (missing entries become not-present gates), and return the handle for
/// the storage's 256 vectors.
///
/// # Safety
/// `into` is not the IDT loaded in any CPU's IDTR (copy before loading it):
/// an interrupt meanwhile could use a half-copied gate.
pub unsafe fn copy_idt(
    from: &InterruptDescriptorTable,
    into: &'static TableStorage<Gate64, 256>,
) -> Result<Idt> {
    let idt = into.idt()?;
    for (v, g) in gates(from).enumerate() {
        let at = into.base() + 16 * v as u64;
        // SAFETY: vector v < 256 of the 'static, page-aligned storage, in an
        // UnsafeCell, accessed only by atomic word accesses.
        unsafe {
            store_u64(at, g.low);
            store_u64(at + 8, g.high);
        }
    }
    Ok(idt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DescriptorStorage, GateKind, IdtStorage, presets};
    use ::x86_64::structures::gdt::DescriptorFlags;

    #[test]
    fn selectors_round_trip_every_value() {
        for bits in 0..=u16::MAX {
            let x = SegmentSelector(bits);
            let p: Selector = x.into();
            assert_eq!(p.bits(), bits);
            assert_eq!(p.index(), x.index());
            assert_eq!(ring(x.rpl()), p.rpl());
            assert_eq!(SegmentSelector::from(p).0, bits);
        }
        // x86_64's constructor and pvops' agree on GDT selectors.
        let x = SegmentSelector::new(5, PrivilegeLevel::Ring3);
        assert_eq!(Selector::from(x), Selector::gdt(5, Ring::Ring3));
    }

    #[test]
    fn privilege_levels_round_trip() {
        for (x, r) in [
            (PrivilegeLevel::Ring0, Ring::Ring0),
            (PrivilegeLevel::Ring1, Ring::Ring1),
            (PrivilegeLevel::Ring2, Ring::Ring2),
            (PrivilegeLevel::Ring3, Ring::Ring3),
        ] {
            assert_eq!(ring(x), r);
            assert_eq!(privilege_level(r), x);
            assert_eq!(x as u8, r as u8);
        }
    }

    #[test]
    fn virtual_addresses() {
        assert_eq!(virt_addr(0x20_0000).unwrap().as_u64(), 0x20_0000);
        assert_eq!(
            virt_addr(0xffff_8000_0000_0000).unwrap().as_u64(),
            0xffff_8000_0000_0000
        );
        let e = virt_addr(0x0000_8000_0000_0000).unwrap_err();
        assert_eq!(e.0, 0x0000_8000_0000_0000);
    }

    #[test]
    fn table_pointers() {
        let x = X86DescriptorTablePointer {
            limit: 0x67,
            base: VirtAddr::new(0xffff_8000_1234_5000),
        };
        let p = DescriptorTablePointer::from(x);
        assert_eq!(
            p,
            DescriptorTablePointer {
                limit: 0x67,
                base: 0xffff_8000_1234_5000
            }
        );
        let back = X86DescriptorTablePointer::try_from(p).unwrap();
        assert_eq!({ back.limit }, 0x67);
        assert_eq!({ back.base }, VirtAddr::new(0xffff_8000_1234_5000));
        let bad = DescriptorTablePointer {
            limit: 7,
            base: 0x1234_5678_9abc_def0,
        };
        assert_eq!(
            X86DescriptorTablePointer::try_from(bad).unwrap_err().0,
            0x1234_5678_9abc_def0
        );
        // Both are the 10-byte operand.
        assert_eq!(core::mem::size_of::<X86DescriptorTablePointer>(), 10);
        assert_eq!(core::mem::size_of::<crate::DtPtr64>(), 10);
    }

    #[test]
    fn segment_descriptors_match_pvops_presets() {
        // x86_64's kernel code is pvops' 64-bit kernel code but for the
        // accessed bit, which x86_64 presets (so the CPU needn't write it).
        let kc = GdtEntry::from(X86Descriptor::kernel_code_segment());
        assert_eq!(kc, GdtEntry::Single(presets::KERNEL_CODE64.with_accessed()));
        let kd = GdtEntry::from(X86Descriptor::kernel_data_segment());
        assert_eq!(kd, GdtEntry::Single(presets::KERNEL_DATA.with_accessed()));
        let GdtEntry::Single(uc) = X86Descriptor::user_code_segment().into() else {
            panic!("user code is one slot")
        };
        assert!(uc.is_code() && uc.long_mode() && uc.present());
        assert_eq!(uc.dpl(), Ring::Ring3);
        // And back.
        for d in [presets::KERNEL_CODE64, presets::USER_DATA, Descriptor::NULL] {
            let X86Descriptor::UserSegment(v) = X86Descriptor::from(d) else {
                panic!("one slot")
            };
            assert_eq!(v, d.0);
            assert_eq!(
                GdtEntry::from(X86Descriptor::from(GdtEntry::Single(d))),
                GdtEntry::Single(d)
            );
        }
        assert_eq!(
            DescriptorFlags::KERNEL_CODE64.bits(),
            presets::KERNEL_CODE64.with_accessed().0
        );
    }

    static TSS: TaskStateSegment = TaskStateSegment::new();

    #[test]
    fn tss_descriptors_agree() {
        let ours = tss_descriptor(&TSS).unwrap();
        let theirs = GdtEntry::from(X86Descriptor::tss_segment(&TSS));
        assert_eq!(theirs, GdtEntry::Double(ours));
        assert_eq!(ours.base(), &TSS as *const _ as u64);
        assert_eq!(ours.effective_limit(), 103);
        assert_eq!(ours.system_type(), crate::SystemType::Tss);
        let GdtEntry::Double(d) = theirs else {
            panic!("two slots")
        };
        assert_eq!(
            X86Descriptor::from(d).dpl(),
            X86Descriptor::tss_segment(&TSS).dpl()
        );
    }

    #[test]
    fn ist_numbering() {
        for index in 0..=6u16 {
            let ist = ist_from_stack_index(index).unwrap();
            assert_eq!(ist, index as u8 + 1);
            assert_eq!(stack_index_from_ist(ist), Ok(Some(index)));
        }
        assert_eq!(stack_index_from_ist(0), Ok(None));
        assert_eq!(ist_from_stack_index(7), Err(PvError::BadIst { ist: 8 }));
        assert_eq!(
            ist_from_stack_index(u16::MAX),
            Err(PvError::BadIst { ist: 0xff })
        );
        assert_eq!(stack_index_from_ist(8), Err(PvError::BadIst { ist: 8 }));
    }

    #[test]
    fn idt_gates_bit_for_bit() {
        let mut idt = InterruptDescriptorTable::new();
        use ::x86_64::instructions::segmentation::{CS, Segment};
        let cs = CS::get_reg();
        let handler = 0xffff_8000_dead_beefu64;
        // SAFETY: the table is never loaded; the address is only data here.
        unsafe {
            idt.double_fault
                .set_handler_addr(VirtAddr::new(handler))
                .set_stack_index(0)
                .set_privilege_level(PrivilegeLevel::Ring0);
            idt.breakpoint
                .set_handler_addr(VirtAddr::new(0x20_1234))
                .set_privilege_level(PrivilegeLevel::Ring3);
            idt[0x80]
                .set_handler_addr(VirtAddr::new(0x20_5678))
                .disable_interrupts(false);
        }
        let all: [Gate64; 256] = {
            let mut a = [Gate64::MISSING; 256];
            for (v, g) in gates(&idt).enumerate() {
                a[v] = g;
            }
            a
        };
        // x86_64's stack index 0 is the CPU's IST1.
        let df = all[8];
        assert_eq!(df, gate(&idt.double_fault));
        assert_eq!(
            df,
            Gate64::interrupt(cs.into(), handler, Ring::Ring0)
                .with_ist(ist_from_stack_index(0).unwrap())
                .unwrap()
        );
        assert_eq!(df.ist(), 1);
        assert_eq!(all[3], Gate64::interrupt(cs.into(), 0x20_1234, Ring::Ring3));
        assert_eq!(all[0x80].kind(), Some(GateKind::Trap));
        assert_eq!(all[0x80].offset(), 0x20_5678);
        // Missing entries are not present (x86_64 sets the type bits).
        for v in [0usize, 13, 14, 31, 32, 255] {
            assert!(!all[v].present(), "vector {v}");
        }
    }

    #[test]
    fn copy_tables_into_storage() {
        static X_TSS: TaskStateSegment = TaskStateSegment::new();
        static X_GDT: spin::Once<(GlobalDescriptorTable, SegmentSelector, SegmentSelector)> =
            spin::Once::new();
        let (x_gdt, code, tss) = X_GDT.call_once(|| {
            let mut g = GlobalDescriptorTable::new();
            let code = g.append(X86Descriptor::kernel_code_segment());
            let tss = g.append(X86Descriptor::tss_segment(&X_TSS));
            (g, code, tss)
        });
        static LIVE: DescriptorStorage<8> = DescriptorStorage::new([presets::KERNEL_DATA; 8]);
        // SAFETY: LIVE is never loaded.
        let gdt = unsafe { copy_gdt(x_gdt, &LIVE) }.unwrap();
        assert_eq!(gdt.entries(), 8);
        assert_eq!(LIVE.read(0), Some(Descriptor::NULL));
        assert_eq!(
            LIVE.read(Selector::from(*code).index() as usize),
            Some(presets::KERNEL_CODE64.with_accessed())
        );
        let t = Selector::from(*tss).index() as usize;
        let want = tss_descriptor(&X_TSS).unwrap();
        assert_eq!(LIVE.read(t), Some(Descriptor(want.low)));
        assert_eq!(LIVE.read(t + 1), Some(Descriptor(want.high)));
        for i in t + 2..8 {
            assert_eq!(LIVE.read(i), Some(Descriptor::NULL), "slot {i} zeroed");
        }
        // In place: the used entries only.
        let here = gdt_handle(x_gdt).unwrap();
        assert_eq!(here.entries(), 4);
        assert_eq!(here.base(), x_gdt.entries().as_ptr() as u64);

        static SMALL: DescriptorStorage<2> = DescriptorStorage::new([Descriptor::NULL; 2]);
        // SAFETY: SMALL is never loaded.
        let err = unsafe { copy_gdt(x_gdt, &SMALL) }.unwrap_err();
        assert_eq!(
            err,
            PvError::TableTooLarge {
                table: TableKind::Gdt,
                entries: 4,
                max: 2
            }
        );

        static X_IDT: spin::Once<InterruptDescriptorTable> = spin::Once::new();
        let x_idt = X_IDT.call_once(|| {
            let mut i = InterruptDescriptorTable::new();
            // SAFETY: never loaded; the address is only data.
            unsafe { i.breakpoint.set_handler_addr(VirtAddr::new(0x20_1000)) };
            i
        });
        static IDT_LIVE: IdtStorage<256> = IdtStorage::new([Gate64::MISSING; 256]);
        // SAFETY: IDT_LIVE is never loaded.
        let idt = unsafe { copy_idt(x_idt, &IDT_LIVE) }.unwrap();
        assert_eq!(idt.entries(), 256);
        assert_eq!(IDT_LIVE.read(3).unwrap().offset(), 0x20_1000);
        assert!(IDT_LIVE.read(3).unwrap().present());
        assert!(!IDT_LIVE.read(4).unwrap().present());
        let here = idt_handle(x_idt).unwrap();
        assert_eq!(here.pointer().limit, 4095);
        assert_eq!(here.base(), x_idt as *const _ as u64);
    }
}
