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
pub trait Cpu {
    /// `lgdt`.
    ///
    /// # Safety
    /// The table must be valid while loaded; ring 0.
    unsafe fn lgdt(&self, p: &DescriptorTablePointer) -> Result<()>;
    /// `sgdt`.
    fn sgdt(&self) -> DescriptorTablePointer;
    /// `lidt`.
    ///
    /// # Safety
    /// The table must be valid while loaded; ring 0.
    unsafe fn lidt(&self, p: &DescriptorTablePointer) -> Result<()>;
    /// `sidt`.
    fn sidt(&self) -> DescriptorTablePointer;
    /// `ltr` (marks the TSS descriptor busy in the GDT).
    ///
    /// # Safety
    /// `sel` must name an available TSS; ring 0.
    unsafe fn ltr(&self, sel: Selector) -> Result<()>;
    /// `str`.
    fn str(&self) -> Selector;
    /// `lldt`.
    ///
    /// # Safety
    /// `sel` must be null or name an LDT descriptor; ring 0.
    unsafe fn lldt(&self, sel: Selector) -> Result<()>;
    /// `sldt`.
    fn sldt(&self) -> Selector;
}

/// The executing CPU. Every method needs CPL 0 (`sgdt`/`sidt`/`str`/`sldt`
/// also work at CPL 3 without UMIP; with UMIP the kernel traps and emulates
/// them, returning dummy values).
#[derive(Clone, Copy, Debug, Default)]
pub struct HardwareCpu;

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

impl Cpu for HardwareCpu {
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
