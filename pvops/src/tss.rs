//! Task-state segments: the 64-bit TSS ([`Tss64`]), the 32-bit TSS
//! ([`Tss32`]) and [`TssStorage`], a `static` the CPU and the backends may
//! write.
//!
//! Both layouts are 104 bytes, so a TSS descriptor's limit is
//! [`Tss64::LIMIT`] = [`Tss32::LIMIT`] = 0x67 (103), the smallest the CPU
//! accepts ([`validate::MIN_TSS_LIMIT`](crate::validate::MIN_TSS_LIMIT)).
//! The offsets are the SDM's (vol. 3, figure 8-11 for the 64-bit TSS, 8-2
//! for the 32-bit one) and are checked at compile time below.
//!
//! IST slots are numbered 1..=7 here, as in a gate's IST field
//! ([`Gate64::with_ist`](crate::Gate64::with_ist)) and the SDM: `ist[0]` is
//! IST1. (The `x86_64` crate's `interrupt_stack_table` index and its
//! `set_stack_index` are 0-based: its index 0 is IST1.)
//!
//! ```
//! use pvops::tss::{Tss64, TssStorage};
//!
//! static TSS: TssStorage<Tss64> = TssStorage::new(Tss64::new());
//!
//! let desc = TSS.descriptor().unwrap(); // 16-byte available-TSS descriptor
//! assert_eq!(desc.base(), TSS.base());
//! assert_eq!(desc.effective_limit(), Tss64::LIMIT);
//! assert_eq!(Tss64::LIMIT, 0x67);
//!
//! let tss = Tss64::new().with_rsp0(0xffff_8000_0001_0000);
//! let tss = tss.with_ist(1, 0xffff_8000_0002_0000).unwrap();
//! assert_eq!({ tss.ist }[0], 0xffff_8000_0002_0000); // IST1
//! assert!(Tss64::new().with_ist(8, 0).is_err());
//! ```

use core::cell::UnsafeCell;
use core::mem::{offset_of, size_of};

use static_assertions::const_assert_eq;

use crate::descriptor::{Descriptor, SystemDescriptor, SystemType};
use crate::error::{PvError, Result};
use crate::selector::Ring;

/// The 64-bit task-state segment (SDM vol. 3, 8.7): the stacks the CPU
/// switches to on a privilege change (`rsp`) or through an IST gate (`ist`),
/// and the I/O permission bitmap offset.
///
/// `packed(4)`, as the CPU lays it out: `rsp0` is at offset 4, so the `u64`
/// fields are only 4-byte aligned (copy a field out, `{ tss.rsp }[0]`,
/// rather than borrowing it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[repr(C, packed(4))]
pub struct Tss64 {
    reserved0: u32,
    /// `rsp[n]`: the stack pointer loaded on entry to ring `n` (RSP0..RSP2).
    pub rsp: [u64; 3],
    reserved1: u64,
    /// `ist[n]`: interrupt stack `n + 1` (IST1..IST7).
    pub ist: [u64; 7],
    reserved2: u64,
    reserved3: u16,
    /// Offset of the I/O permission bitmap from the TSS base. An offset at
    /// or past the limit means "no bitmap": every `in`/`out` from CPL >
    /// IOPL faults.
    pub iomap_base: u16,
}

const_assert_eq!(size_of::<Tss64>(), 104);
const_assert_eq!(offset_of!(Tss64, rsp), 0x04);
const_assert_eq!(offset_of!(Tss64, ist), 0x24);
const_assert_eq!(offset_of!(Tss64, iomap_base), 0x66);

impl Tss64 {
    /// Size in bytes (104).
    pub const SIZE: usize = size_of::<Tss64>();
    /// The descriptor limit of a TSS without an I/O bitmap: size - 1 = 0x67.
    pub const LIMIT: u32 = Self::SIZE as u32 - 1;

    /// All stacks zero and no I/O bitmap (`iomap_base` = 104).
    pub const fn new() -> Tss64 {
        Tss64 {
            reserved0: 0,
            rsp: [0; 3],
            reserved1: 0,
            ist: [0; 7],
            reserved2: 0,
            reserved3: 0,
            iomap_base: Self::SIZE as u16,
        }
    }

    /// Same TSS with `rsp0`, the ring-0 stack (what
    /// [`DescriptorOps::load_kernel_stack`](crate::DescriptorOps::load_kernel_stack)
    /// sets later).
    pub const fn with_rsp0(self, rsp0: u64) -> Tss64 {
        let mut t = self;
        let mut rsp = t.rsp;
        rsp[0] = rsp0;
        t.rsp = rsp;
        t
    }

    /// Same TSS with interrupt stack `ist` (1..=7, as in a gate) at `top`,
    /// or [`PvError::BadIst`] naming the index.
    pub const fn with_ist(self, ist: u8, top: u64) -> Result<Tss64> {
        if ist == 0 || ist > 7 {
            return Err(PvError::BadIst { ist });
        }
        let mut t = self;
        let mut stacks = t.ist;
        stacks[ist as usize - 1] = top;
        t.ist = stacks;
        Ok(t)
    }
}

/// The 32-bit task-state segment (SDM vol. 3, 8.2.1): the ring 0..2 stacks,
/// the register image a hardware task switch saves and loads, the LDT
/// selector, the debug-trap flag and the I/O bitmap offset. Each 16-bit
/// selector field is followed by 16 reserved bits, kept as zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[repr(C)]
#[allow(missing_docs)] // the register fields are named as the SDM names them
pub struct Tss32 {
    /// Previous task link (selector of the task that called this one).
    pub link: u16,
    reserved_link: u16,
    /// Ring-0 stack pointer.
    pub esp0: u32,
    /// Ring-0 stack segment.
    pub ss0: u16,
    reserved_ss0: u16,
    pub esp1: u32,
    pub ss1: u16,
    reserved_ss1: u16,
    pub esp2: u32,
    pub ss2: u16,
    reserved_ss2: u16,
    pub cr3: u32,
    pub eip: u32,
    pub eflags: u32,
    pub eax: u32,
    pub ecx: u32,
    pub edx: u32,
    pub ebx: u32,
    pub esp: u32,
    pub ebp: u32,
    pub esi: u32,
    pub edi: u32,
    pub es: u16,
    reserved_es: u16,
    pub cs: u16,
    reserved_cs: u16,
    pub ss: u16,
    reserved_ss: u16,
    pub ds: u16,
    reserved_ds: u16,
    pub fs: u16,
    reserved_fs: u16,
    pub gs: u16,
    reserved_gs: u16,
    /// LDT selector loaded on a task switch.
    pub ldt: u16,
    reserved_ldt: u16,
    /// Bit 0: T, raise #DB on a switch to this task.
    pub trap: u16,
    /// Offset of the I/O permission bitmap (at or past the limit: none).
    pub iomap_base: u16,
}

const_assert_eq!(size_of::<Tss32>(), 104);
const_assert_eq!(offset_of!(Tss32, esp0), 0x04);
const_assert_eq!(offset_of!(Tss32, ss0), 0x08);
const_assert_eq!(offset_of!(Tss32, esp2), 0x14);
const_assert_eq!(offset_of!(Tss32, cr3), 0x1c);
const_assert_eq!(offset_of!(Tss32, eip), 0x20);
const_assert_eq!(offset_of!(Tss32, edi), 0x44);
const_assert_eq!(offset_of!(Tss32, es), 0x48);
const_assert_eq!(offset_of!(Tss32, gs), 0x5c);
const_assert_eq!(offset_of!(Tss32, ldt), 0x60);
const_assert_eq!(offset_of!(Tss32, trap), 0x64);
const_assert_eq!(offset_of!(Tss32, iomap_base), 0x66);
// The `x86_64` crate's TSS has the same layout (an independent encoding).
#[cfg(feature = "x86_64")]
mod x86_64_layout {
    use ::x86_64::structures::tss::TaskStateSegment as X;
    use core::mem::{offset_of, size_of};
    static_assertions::const_assert_eq!(size_of::<X>(), size_of::<super::Tss64>());
    static_assertions::const_assert_eq!(offset_of!(X, privilege_stack_table), 0x04);
    static_assertions::const_assert_eq!(offset_of!(X, interrupt_stack_table), 0x24);
    static_assertions::const_assert_eq!(offset_of!(X, iomap_base), 0x66);
}
// Both TSS forms: the one limit the validation layer requires.
const_assert_eq!(Tss64::LIMIT, crate::validate::MIN_TSS_LIMIT);
const_assert_eq!(Tss32::LIMIT, crate::validate::MIN_TSS_LIMIT);

impl Tss32 {
    /// Size in bytes (104).
    pub const SIZE: usize = size_of::<Tss32>();
    /// The descriptor limit of a TSS without an I/O bitmap: size - 1 = 0x67.
    pub const LIMIT: u32 = Self::SIZE as u32 - 1;

    /// Everything zero and no I/O bitmap (`iomap_base` = 104).
    pub const fn new() -> Tss32 {
        Tss32 {
            link: 0,
            reserved_link: 0,
            esp0: 0,
            ss0: 0,
            reserved_ss0: 0,
            esp1: 0,
            ss1: 0,
            reserved_ss1: 0,
            esp2: 0,
            ss2: 0,
            reserved_ss2: 0,
            cr3: 0,
            eip: 0,
            eflags: 0,
            eax: 0,
            ecx: 0,
            edx: 0,
            ebx: 0,
            esp: 0,
            ebp: 0,
            esi: 0,
            edi: 0,
            es: 0,
            reserved_es: 0,
            cs: 0,
            reserved_cs: 0,
            ss: 0,
            reserved_ss: 0,
            ds: 0,
            reserved_ds: 0,
            fs: 0,
            reserved_fs: 0,
            gs: 0,
            reserved_gs: 0,
            ldt: 0,
            reserved_ldt: 0,
            trap: 0,
            iomap_base: Self::SIZE as u16,
        }
    }

    /// Same TSS with the ring-0 stack `ss0:esp0`.
    pub const fn with_stack0(self, ss0: u16, esp0: u32) -> Tss32 {
        let mut t = self;
        t.ss0 = ss0;
        t.esp0 = esp0;
        t
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::Tss64 {}
    impl Sealed for super::Tss32 {}
}

/// A TSS layout [`TssStorage`] can hold: [`Tss64`] or [`Tss32`] (sealed:
/// plain integers, any bit pattern valid).
pub trait TssLayout: Copy + sealed::Sealed {}
impl TssLayout for Tss64 {}
impl TssLayout for Tss32 {}

/// Static storage for a TSS that the CPU, a hypervisor and the backends may
/// write while the kernel holds `&'static TssStorage`.
///
/// A TSS is written behind the compiler's back: the native backend's
/// [`load_kernel_stack`](crate::DescriptorOps::load_kernel_stack) stores
/// `rsp0`, and a 32-bit task switch saves registers into it. A plain
/// `static TSS: Tss64` may sit in read-only memory and must not be written
/// that way; this type keeps the TSS in an `UnsafeCell`. It is aligned to
/// 128 bytes, so the 104 bytes never cross a page boundary.
#[repr(C, align(128))]
pub struct TssStorage<T: TssLayout> {
    tss: UnsafeCell<T>,
}

// SAFETY: safe code only reads the address (`base`, `descriptor`); the
// contents are read and written through raw pointers (by the CPU, a
// hypervisor, a backend, or `read`/`as_mut_ptr` under their own unsafe
// contracts), so sharing the storage between threads creates no reference
// to them. `T` is plain integers (sealed), hence `Send`.
unsafe impl<T: TssLayout> Sync for TssStorage<T> {}

const_assert_eq!(size_of::<TssStorage<Tss64>>(), 128);

impl<T: TssLayout> TssStorage<T> {
    /// Storage with initial contents.
    pub const fn new(tss: T) -> Self {
        TssStorage {
            tss: UnsafeCell::new(tss),
        }
    }

    /// Address of the TSS.
    pub const fn as_mut_ptr(&self) -> *mut T {
        self.tss.get()
    }

    /// Address of the TSS as a linear address (the descriptor's base).
    pub fn base(&self) -> u64 {
        self.as_mut_ptr() as usize as u64
    }

    /// A copy of the TSS.
    ///
    /// # Safety
    /// Nothing may write the TSS during the call: no other CPU running
    /// [`load_kernel_stack`](crate::DescriptorOps::load_kernel_stack) or a
    /// task switch on it meanwhile.
    pub unsafe fn read(&self) -> T {
        // SAFETY: the storage holds an initialized `T` for as long as
        // `self` lives, and the caller excludes concurrent writes.
        unsafe { self.as_mut_ptr().read_volatile() }
    }
}

impl TssStorage<Tss64> {
    /// The present, available 16-byte TSS descriptor for this storage (base
    /// [`base`](TssStorage::base), limit [`Tss64::LIMIT`]), to write into
    /// the GDT before `load_tr`. `&'static`: the CPU uses the TSS for as
    /// long as TR names it. Errors only if the base cannot be encoded.
    pub fn descriptor(&'static self) -> Result<SystemDescriptor> {
        SystemDescriptor::tss(self.base(), Tss64::LIMIT)
    }
}

impl TssStorage<Tss32> {
    /// The present, available 8-byte 32-bit TSS descriptor for this storage
    /// (limit [`Tss32::LIMIT`]). Errors if the base is above 4 GiB.
    pub fn descriptor(&'static self) -> Result<Descriptor> {
        let base = self.base();
        if base > u32::MAX as u64 {
            return Err(PvError::FieldOutOfRange {
                field: "32-bit TSS base",
                value: base,
                max: u32::MAX as u64,
            });
        }
        Descriptor::system32(SystemType::Tss, base as u32, Tss32::LIMIT, Ring::Ring0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tss64_bytes_match_the_sdm_offsets() {
        let t = Tss64::new()
            .with_rsp0(0x1111_2222_3333_4444)
            .with_ist(7, 0x5555_6666_7777_8888)
            .unwrap();
        // SAFETY: Tss64 is 104 bytes of plain integers (packed: no padding).
        let b: [u8; 104] = unsafe { core::mem::transmute(t) };
        assert_eq!(&b[4..12], &0x1111_2222_3333_4444u64.to_le_bytes());
        assert_eq!(
            &b[0x24 + 6 * 8..0x24 + 7 * 8],
            &0x5555_6666_7777_8888u64.to_le_bytes()
        );
        assert_eq!(&b[0x66..0x68], &104u16.to_le_bytes());
        assert_eq!(Tss64::new().with_ist(0, 1), Err(PvError::BadIst { ist: 0 }));
        assert_eq!(Tss64::new().with_ist(8, 1), Err(PvError::BadIst { ist: 8 }));
    }

    #[test]
    fn tss32_stack0() {
        let t = Tss32::new().with_stack0(0x18, 0xc000_2000);
        // SAFETY: Tss32 is 104 bytes of integers with no implicit padding.
        let b: [u8; 104] = unsafe { core::mem::transmute(t) };
        assert_eq!(&b[4..8], &0xc000_2000u32.to_le_bytes());
        assert_eq!(&b[8..10], &0x18u16.to_le_bytes());
        assert_eq!(&b[0x66..0x68], &104u16.to_le_bytes());
    }

    static TSS: TssStorage<Tss64> = TssStorage::new(Tss64::new());
    static TSS32: TssStorage<Tss32> = TssStorage::new(Tss32::new());

    #[test]
    fn storage_descriptors() {
        let d = TSS.descriptor().unwrap();
        assert_eq!(d.base(), TSS.base());
        assert_eq!(d.effective_limit(), 0x67);
        assert_eq!(d.system_type(), SystemType::Tss);
        assert_eq!(TSS.base() % 128, 0);
        // SAFETY: nothing writes TSS in this test binary.
        assert_eq!(unsafe { TSS.read() }, Tss64::new());
        match TSS32.descriptor() {
            Ok(d) => {
                assert_eq!(d.base() as u64, TSS32.base());
                assert_eq!(d.effective_limit(), 0x67);
                assert_eq!(d.system_type(), SystemType::Tss);
            }
            Err(e) => assert!(TSS32.base() > u32::MAX as u64, "{e}"),
        }
    }
}
