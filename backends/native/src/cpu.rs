//! The descriptor-table instructions, behind a trait.
//!
//! [`HardwareCpu`] executes them. A CPU model implements [`Cpu`] to run the
//! native backend's logic where ring 0 is not available (hv-sim's `SoftCpu`);
//! its methods may report the fault the instruction would raise, which real
//! hardware delivers as an exception instead (so [`HardwareCpu`] always
//! returns `Ok`).
//!
//! The `x86` crate (0.52) provides the wrappers used here, except `ltr`: its
//! `x86::task::load_tr` is declared `nomem`, but LTR *writes* the busy bit of
//! the TSS descriptor in the GDT, so the compiler could reorder or elide GDT
//! accesses around it. [`HardwareCpu::ltr`] is our own `asm!` without
//! `nomem`.

use pvops::{DescriptorTablePointer, Result, Selector};

/// Descriptor-table register instructions.
///
/// # Safety
/// [`NativeOps`](crate::NativeOps) dereferences what these methods return,
/// including from its safe ops (`store_ldt` reads the LDT descriptor in the
/// GDT that [`sgdt`](Cpu::sgdt) names). An implementation must therefore
/// guarantee, for as long as the value is used:
///
/// * [`sgdt`](Cpu::sgdt) returns base 0 and limit 0 (nothing loaded yet), or
///   the pointer of the GDT currently loaded, which was loaded by
///   [`lgdt`](Cpu::lgdt) on this value, or by other code that made the same
///   promise as `lgdt`'s caller: the table is valid for reads and writes at
///   that linear address of this address space while loaded;
/// * [`sidt`](Cpu::sidt) likewise for the IDT and [`lidt`](Cpu::lidt);
/// * [`str`](Cpu::str) and [`sldt`](Cpu::sldt) return null or a selector
///   that [`ltr`](Cpu::ltr) / [`lldt`](Cpu::lldt) (or equally vouched-for
///   code) loaded, so the TSS or LDT its descriptor names is the memory the
///   loader promised;
/// * the `unsafe` methods touch no memory other than the tables their
///   arguments name (`ltr` writes the busy bit of the TSS descriptor).
///
/// A CPU model keeps this by construction when its getters return what its
/// setters stored (hv-sim's `SoftCpu`); [`HardwareCpu`] keeps it because
/// its constructor is `unsafe` and requires ring 0.
///
/// Implementing it without `unsafe impl` does not compile:
///
/// ```compile_fail
/// use pvops::{DescriptorTablePointer, Result, Selector};
/// struct Liar;
/// impl pvops_native::Cpu for Liar {
///     unsafe fn lgdt(&self, _: &DescriptorTablePointer) -> Result<()> { Ok(()) }
///     // Issue 9: a GDTR pointing nowhere made the safe `store_ldt` segfault.
///     fn sgdt(&self) -> DescriptorTablePointer {
///         DescriptorTablePointer { limit: 0xffff, base: 0x10 }
///     }
///     unsafe fn lidt(&self, _: &DescriptorTablePointer) -> Result<()> { Ok(()) }
///     fn sidt(&self) -> DescriptorTablePointer { DescriptorTablePointer::default() }
///     unsafe fn ltr(&self, _: Selector) -> Result<()> { Ok(()) }
///     fn str(&self) -> Selector { Selector::NULL }
///     unsafe fn lldt(&self, _: Selector) -> Result<()> { Ok(()) }
///     fn sldt(&self) -> Selector { Selector::gdt(10, pvops::Ring::Ring0) }
/// }
/// ```
pub unsafe trait Cpu {
    /// `lgdt`.
    ///
    /// # Safety
    /// The table must be valid (readable and writable) while loaded; ring 0.
    unsafe fn lgdt(&self, p: &DescriptorTablePointer) -> Result<()>;
    /// `sgdt`: the GDT last loaded (see the trait's contract).
    fn sgdt(&self) -> DescriptorTablePointer;
    /// `lidt`.
    ///
    /// # Safety
    /// The table must be valid while loaded; ring 0.
    unsafe fn lidt(&self, p: &DescriptorTablePointer) -> Result<()>;
    /// `sidt`: the IDT last loaded (see the trait's contract).
    fn sidt(&self) -> DescriptorTablePointer;
    /// `ltr` (marks the TSS descriptor busy in the GDT).
    ///
    /// # Safety
    /// `sel` must name an available TSS whose memory stays valid; ring 0.
    unsafe fn ltr(&self, sel: Selector) -> Result<()>;
    /// `str`.
    fn str(&self) -> Selector;
    /// `lldt`.
    ///
    /// # Safety
    /// `sel` must be null or name an LDT descriptor whose LDT stays valid
    /// while loaded; ring 0.
    unsafe fn lldt(&self, sel: Selector) -> Result<()>;
    /// `sldt`.
    fn sldt(&self) -> Selector;
}

/// The executing CPU. Every method needs CPL 0 (`sgdt`/`sidt`/`str`/`sldt`
/// also work at CPL 3 without UMIP; with UMIP the kernel traps and emulates
/// them, returning dummy values).
///
/// Built only with the `unsafe` [`HardwareCpu::new`]: in user space the
/// GDTR names the host kernel's GDT, which the native backend must not read.
///
/// ```compile_fail
/// // Issue 9: safe code could build the hardware backend in user space.
/// let cpu = pvops_native::HardwareCpu::new();
/// ```
#[derive(Clone, Copy, Debug)]
pub struct HardwareCpu {
    _ring0: (),
}

impl HardwareCpu {
    /// The CPU this code runs on.
    ///
    /// # Safety
    /// The code using it runs at CPL 0 (or in a guest whose hypervisor
    /// emulates these instructions against the guest's own tables), and
    /// every GDT, IDT, TSS and LDT loaded into this CPU's registers, by
    /// pvops or by any other code, stays valid memory while loaded. That is
    /// the [`Cpu`] contract for the real registers.
    pub const unsafe fn new() -> HardwareCpu {
        HardwareCpu { _ring0: () }
    }
}

type X86Ptr = x86::dtables::DescriptorTablePointer<u64>;

fn to_x86(p: &DescriptorTablePointer) -> X86Ptr {
    X86Ptr {
        limit: p.limit,
        base: p.base as usize as *const u64,
    }
}

fn from_x86(p: &X86Ptr) -> DescriptorTablePointer {
    let base = p.base;
    DescriptorTablePointer {
        limit: p.limit,
        base: base as usize as u64,
    }
}

// SAFETY: `HardwareCpu::new`'s contract: ring 0, and every table in the
// registers was loaded by code that promised it stays valid while loaded;
// the getters return the registers themselves.
unsafe impl Cpu for HardwareCpu {
    unsafe fn lgdt(&self, p: &DescriptorTablePointer) -> Result<()> {
        // SAFETY: the caller guarantees the table and the privilege level.
        unsafe { x86::dtables::lgdt(&to_x86(p)) };
        Ok(())
    }

    fn sgdt(&self) -> DescriptorTablePointer {
        let mut p = X86Ptr::default();
        // SAFETY: sgdt only writes the 6/10-byte operand we own.
        unsafe { x86::dtables::sgdt(&mut p) };
        from_x86(&p)
    }

    unsafe fn lidt(&self, p: &DescriptorTablePointer) -> Result<()> {
        // SAFETY: the caller guarantees the table and the privilege level.
        unsafe { x86::dtables::lidt(&to_x86(p)) };
        Ok(())
    }

    fn sidt(&self) -> DescriptorTablePointer {
        let mut p = X86Ptr::default();
        // SAFETY: sidt only writes the operand we own.
        unsafe { x86::dtables::sidt(&mut p) };
        from_x86(&p)
    }

    unsafe fn ltr(&self, sel: Selector) -> Result<()> {
        // SAFETY: the caller guarantees an available TSS and ring 0. No
        // `nomem`: LTR writes the busy bit into the GDT.
        unsafe {
            core::arch::asm!("ltr {0:x}", in(reg) sel.bits(), options(nostack, preserves_flags));
        }
        Ok(())
    }

    fn str(&self) -> Selector {
        // SAFETY: `str` reads the task register into a register; no memory.
        Selector::from(unsafe { x86::task::tr() })
    }

    unsafe fn lldt(&self, sel: Selector) -> Result<()> {
        // SAFETY: the caller guarantees a null or LDT selector and ring 0.
        unsafe { x86::dtables::load_ldtr(sel.into()) };
        Ok(())
    }

    fn sldt(&self) -> Selector {
        // SAFETY: `sldt` reads LDTR's selector into a register.
        Selector::from(unsafe { x86::dtables::ldtr() })
    }
}
