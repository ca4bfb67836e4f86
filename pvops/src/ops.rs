//! The descriptor-table ops: what a backend implements.
//!
//! [`DescriptorOps`] is pvops' counterpart of the descriptor-table members of
//! Linux's `struct pv_cpu_ops` (`arch/x86/include/asm/paravirt_types.h`). A
//! kernel calls these instead of executing `lgdt`, `ltr`, ... itself; the
//! backend is the native instruction on bare metal, a hypercall under Xen, a
//! call into the VMI option ROM under a VMI hypervisor.
//!
//! Each op's documentation names its Linux `pv_cpu_ops` member, the native
//! instruction, the Xen hypercall and the VMI (API 3.0) call.
//!
//! # Dispatch
//! * **Static**: write kernel code generic over `O: DescriptorOps` and pass a
//!   concrete backend. Calls are monomorphized and inlined, the same code as
//!   calling the backend's inherent methods (the `dispatch` benchmark
//!   measures direct, static and dynamic calls side by side).
//! * **Dynamic**: build an [`OpsTable`](crate::dispatch::OpsTable) (function
//!   pointers) from any backend and [`install`](crate::dispatch::install) it
//!   once at boot; [`Installed`](crate::dispatch::Installed) then forwards
//!   every op to it. This is how a kernel picks its backend at run time after
//!   [`detect_hypervisor`](crate::detect_hypervisor).
//!
//! # Errors
//! Every op returns [`Result`]. Table handles ([`Gdt`], [`Ldt`], [`Idt`]) are
//! validated when built; per-entry rules are checked by the handles' methods,
//! which every backend calls before touching memory. A hypervisor's refusal
//! comes back as [`PvError::Hypervisor`](crate::PvError::Hypervisor) with
//! its errno.
//!
//! # Safety
//! The load and write ops are `unsafe`: the caller promises the table memory
//! a handle names is valid, writable where written, and stays valid while the
//! CPU (or hypervisor) uses it, and that the new contents keep the kernel
//! running (a wrong code segment or IDT faults the CPU). "While loaded"
//! lasts until the next load of that table through the same backend: a
//! backend may read a table it loaded from a later op, including a safe one
//! (`store_ldt` reads the LDT descriptor in the loaded GDT).
//!
//! The store ops, the lazy-mode ops and [`DescriptorOps::name`] are safe:
//! whatever their arguments and whatever was loaded before, they cause no
//! undefined behaviour. What makes that hold in each backend is an
//! `unsafe trait` its environment implements (`pvops_native::Cpu`,
//! `pvops_xen::XenPlatform`, `pvops_vmi::VmiPlatform`), whose contract
//! covers every value a backend dereferences, or an `unsafe` constructor.
//!
//! Backends access table slots as whole 8-byte atomic words
//! ([`table::load_u64`](crate::table::load_u64) /
//! [`store_u64`](crate::table::store_u64)), so the safe
//! [`TableStorage::read`](crate::TableStorage::read) may run concurrently
//! with an op on another CPU.

use crate::descriptor::{Descriptor, GdtEntry};
use crate::error::Result;
use crate::gate::IdtGate;
use crate::pointer::DescriptorTablePointer;
use crate::selector::Selector;
use crate::table::{Gdt, Idt, Ldt};

/// Number of TLS descriptors a thread carries (Linux `GDT_ENTRY_TLS_ENTRIES`).
pub const TLS_ENTRIES: usize = 3;

/// Where the fixed GDT slots live, per kernel.
///
/// Backends need it for the ops that write the GDT on the kernel's behalf
/// (`load_tls`, and `load_ldt` in the native and VMI backends, which write
/// the LDT descriptor into the GDT).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GdtLayout {
    /// First of the three TLS slots.
    pub tls_first: u16,
    /// Slot of the LDT descriptor (two slots in long mode).
    pub ldt: u16,
    /// Slot of the TSS descriptor (two slots in long mode).
    pub tss: u16,
}

impl GdtLayout {
    /// Linux x86_64 (`asm/segment.h`): TSS 8, LDT 10, TLS 12..=14.
    pub const LINUX_X86_64: GdtLayout = GdtLayout {
        tls_first: 12,
        ldt: 10,
        tss: 8,
    };
    /// Linux i386 (`asm/segment.h`, `CONFIG_X86_32`): TLS 6..=8, TSS 16,
    /// LDT 17 (12..=15 are kernel code/data and user code/data).
    pub const LINUX_I386: GdtLayout = GdtLayout {
        tls_first: 6,
        ldt: 17,
        tss: 16,
    };

    /// Linux's layout for the mode pvops is compiled for.
    #[cfg(target_arch = "x86_64")]
    pub const LINUX: GdtLayout = GdtLayout::LINUX_X86_64;
    /// Linux's layout for the mode pvops is compiled for.
    #[cfg(not(target_arch = "x86_64"))]
    pub const LINUX: GdtLayout = GdtLayout::LINUX_I386;
}

/// The descriptor-table ops a backend implements.
///
/// See the [module documentation](self) for dispatch, errors and safety.
pub trait DescriptorOps {
    /// Backend name for logs (`"native"`, `"xen"`, `"vmi"`, ...).
    fn name(&self) -> &'static str;

    /// Load the GDT register.
    ///
    /// Linux `load_gdt` · native `lgdt` · Xen `set_gdt(frames, entries)`
    /// after making each GDT page read-only · VMI `SetGDT` (3).
    ///
    /// # Safety
    /// `gdt` must stay valid while loaded and describe segments the kernel
    /// is currently using (CS/SS/DS... are not reloaded).
    unsafe fn load_gdt(&self, gdt: &Gdt) -> Result<()>;

    /// Read the GDT register, as the guest set it.
    ///
    /// Linux `store_gdt` (removed from pv_ops in 2017: unused) · native
    /// `sgdt` · Xen: the backend's shadow (a PV `sgdt` shows Xen's table) ·
    /// VMI `GetGDT` (7).
    fn store_gdt(&self) -> Result<DescriptorTablePointer>;

    /// Load the IDT register.
    ///
    /// Linux `load_idt` · native `lidt` · Xen `set_trap_table` with every
    /// interrupt/trap gate converted to a `trap_info` · VMI `SetIDT` (5).
    ///
    /// # Safety
    /// `idt` must stay valid while loaded and its gates must point at
    /// handlers, through selectors that name the handlers' code segments in
    /// every GDT loaded while this IDT is (a later GDT load, including the
    /// safe [`DescriptorStorage::load_gdt`](crate::TableStorage::load_gdt),
    /// must keep them).
    unsafe fn load_idt(&self, idt: &Idt) -> Result<()>;

    /// Read the IDT register, as the guest set it.
    ///
    /// Linux `store_idt` (removed in 2017) · native `sidt` · Xen: shadow ·
    /// VMI `GetIDT` (9).
    fn store_idt(&self) -> Result<DescriptorTablePointer>;

    /// Load the task register.
    ///
    /// Linux `load_tr_desc` · native `ltr` (which sets the TSS descriptor's
    /// busy bit: the GDT must be writable at that moment) · Xen: no-op (the
    /// hypervisor owns the TSS) · VMI `SetTR` (6).
    ///
    /// # Safety
    /// `tss` must name an available TSS descriptor in the loaded GDT whose
    /// TSS memory stays valid.
    unsafe fn load_tr(&self, tss: Selector) -> Result<()>;

    /// Read the task register.
    ///
    /// Linux `store_tr` · native `str` · Xen: the selector last given to
    /// `load_tr` (0 if none) · VMI `GetTR` (10).
    fn store_tr(&self) -> Result<Selector>;

    /// Load the LDT: `Some(ldt)` installs it, `None` means no LDT.
    ///
    /// Linux `set_ldt(addr, entries)` · native: write an LDT descriptor
    /// into the GDT at [`GdtLayout::ldt`], then `lldt` (or `lldt 0`) · Xen
    /// `mmuext_op(MMUEXT_SET_LDT, linear_addr, nr_ents)` · VMI: write the
    /// descriptor with `WriteGDTEntry` (11), then `SetLDT` (4).
    ///
    /// # Safety
    /// The LDT memory must stay valid while loaded.
    unsafe fn load_ldt(&self, ldt: Option<&Ldt>) -> Result<()>;

    /// The LDT last loaded, `None` if none.
    ///
    /// Linux: no pv op (`sldt` / `store_ldt` macro) · native `sldt` and the
    /// GDT descriptor it names · Xen: shadow · VMI `GetLDT` (8).
    fn store_ldt(&self) -> Result<Option<Ldt>>;

    /// Write one GDT entry (8 bytes, or 16 for a long-mode TSS/LDT).
    ///
    /// Linux `write_gdt_entry(gdt, n, desc, type)` · native: store · Xen
    /// `update_descriptor(machine address of the slot, desc)` (TSS/LDT
    /// descriptors are ignored, as Linux does: Xen refuses them) · VMI
    /// `WriteGDTEntry` (11).
    ///
    /// # Safety
    /// `gdt` must be valid writable memory; the entry must not pull a live
    /// segment from under the kernel.
    unsafe fn write_gdt_entry(&self, gdt: &Gdt, index: u32, entry: GdtEntry) -> Result<()>;

    /// Write one LDT entry.
    ///
    /// Linux `write_ldt_entry` · native: store · Xen `update_descriptor` ·
    /// VMI `WriteLDTEntry` (12).
    ///
    /// # Safety
    /// As [`DescriptorOps::write_gdt_entry`].
    unsafe fn write_ldt_entry(&self, ldt: &Ldt, index: u32, entry: Descriptor) -> Result<()>;

    /// Write one IDT gate.
    ///
    /// Linux `write_idt_entry` · native: store · Xen: store, and if `idt`
    /// is the loaded IDT, `set_trap_table` with that one vector · VMI
    /// `WriteIDTEntry` (13).
    ///
    /// # Safety
    /// `idt` must be valid writable memory; the gate must point at a handler.
    unsafe fn write_idt_entry(&self, idt: &Idt, vector: u8, gate: IdtGate) -> Result<()>;

    /// Write an interrupt gate (DPL 0, IST 0) for `handler` at `vector`: a
    /// [`write_idt_entry`](DescriptorOps::write_idt_entry) of
    /// [`Gate64::interrupt_handler`](crate::Gate64::interrupt_handler) (or
    /// the [`Gate32`](crate::Gate32) form), so no function-to-integer cast
    /// is needed. `vector` may be an [`Exception`](crate::Exception).
    ///
    /// # Safety
    /// As [`write_idt_entry`](DescriptorOps::write_idt_entry): `handler`
    /// must be an interrupt entry point (an assembly stub or a naked
    /// function that ends in `iret`), `cs` its code segment.
    unsafe fn set_handler(
        &self,
        idt: &Idt,
        vector: impl Into<u8>,
        cs: Selector,
        handler: unsafe extern "C" fn(),
    ) -> Result<()>
    where
        Self: Sized,
    {
        #[cfg(target_arch = "x86_64")]
        let gate = crate::gate::Gate64::interrupt_handler(cs, handler, crate::Ring::Ring0);
        #[cfg(not(target_arch = "x86_64"))]
        let gate = crate::gate::Gate32::interrupt_handler(cs, handler, crate::Ring::Ring0)?;
        // SAFETY: the caller's contract is write_idt_entry's.
        unsafe { self.write_idt_entry(idt, vector.into(), gate) }
    }

    /// Install a thread's three TLS descriptors in the loaded GDT, at
    /// [`GdtLayout::tls_first`].
    ///
    /// Linux `load_tls(thread, cpu)` · native: three stores · Xen
    /// `update_descriptor` for each slot that changed (shadow copies) · VMI
    /// `WriteGDTEntry` for each slot that changed.
    ///
    /// # Safety
    /// A GDT must have been loaded through this backend and be writable.
    unsafe fn load_tls(&self, tls: &[Descriptor; TLS_ENTRIES]) -> Result<()>;

    /// An LDT was allocated: prepare its pages.
    ///
    /// Linux `alloc_ldt` · native: nothing · Xen: make the LDT pages
    /// read-only (`update_va_mapping`) · VMI: nothing.
    ///
    /// The default does nothing and returns `Ok(())`, which is right for a
    /// backend that does not protect LDT pages (native, VMI).
    ///
    /// # Safety
    /// `ldt` must be valid memory owned by the caller.
    unsafe fn alloc_ldt(&self, ldt: &Ldt) -> Result<()> {
        let _ = ldt;
        Ok(())
    }

    /// An LDT is about to be freed: give its pages back.
    ///
    /// Linux `free_ldt` · native: nothing · Xen: make the pages writable
    /// again · VMI: nothing.
    ///
    /// The default does nothing and returns `Ok(())`, like
    /// [`alloc_ldt`](DescriptorOps::alloc_ldt)'s.
    ///
    /// # Safety
    /// `ldt` must not be loaded.
    unsafe fn free_ldt(&self, ldt: &Ldt) -> Result<()> {
        let _ = ldt;
        Ok(())
    }

    /// Set the stack the CPU switches to on entry to ring 0 (TSS `sp0`).
    ///
    /// Linux `load_sp0` · native: write `TSS.rsp0`/`esp0` · Xen
    /// `stack_switch(kernel ss, sp)` · VMI `UpdateKernelStack` (14).
    ///
    /// # Safety
    /// `sp0` must be the top of a valid kernel stack. The TSS in TR (native)
    /// is this CPU's: nothing else reads or writes it meanwhile (its `sp0`
    /// is written with one unaligned store).
    unsafe fn load_kernel_stack(&self, sp0: u64) -> Result<()>;

    /// Start batching CPU-state ops (a context switch).
    ///
    /// Linux `start_context_switch` / `paravirt_start_context_switch` ·
    /// native: nothing · Xen: queue calls for one `multicall` · VMI
    /// `SetLazyMode(2)` (73).
    fn enter_lazy_cpu(&self) -> Result<()>;

    /// Stop batching and send what was queued.
    ///
    /// Linux `end_context_switch` · native: nothing · Xen: flush the
    /// multicall · VMI `SetLazyMode(0)`. An error names the first queued call
    /// the hypervisor refused; the others were still executed (a Xen
    /// multicall runs every entry and reports each result separately).
    fn leave_lazy_cpu(&self) -> Result<()>;

    /// Send what is queued now without leaving lazy mode.
    ///
    /// Linux `arch_flush_lazy_cpu_mode` · native: nothing · Xen: flush the
    /// multicall · VMI `SetLazyMode(0)` then `SetLazyMode(2)`.
    fn flush_lazy(&self) -> Result<()>;
}

/// Forwarding through references, so `&B` is a backend when `B` is.
impl<T: DescriptorOps + ?Sized> DescriptorOps for &T {
    fn name(&self) -> &'static str {
        (**self).name()
    }
    unsafe fn load_gdt(&self, gdt: &Gdt) -> Result<()> {
        // SAFETY: forwarded contract.
        unsafe { (**self).load_gdt(gdt) }
    }
    fn store_gdt(&self) -> Result<DescriptorTablePointer> {
        (**self).store_gdt()
    }
    unsafe fn load_idt(&self, idt: &Idt) -> Result<()> {
        // SAFETY: forwarded contract.
        unsafe { (**self).load_idt(idt) }
    }
    fn store_idt(&self) -> Result<DescriptorTablePointer> {
        (**self).store_idt()
    }
    unsafe fn load_tr(&self, tss: Selector) -> Result<()> {
        // SAFETY: forwarded contract.
        unsafe { (**self).load_tr(tss) }
    }
    fn store_tr(&self) -> Result<Selector> {
        (**self).store_tr()
    }
    unsafe fn load_ldt(&self, ldt: Option<&Ldt>) -> Result<()> {
        // SAFETY: forwarded contract.
        unsafe { (**self).load_ldt(ldt) }
    }
    fn store_ldt(&self) -> Result<Option<Ldt>> {
        (**self).store_ldt()
    }
    unsafe fn write_gdt_entry(&self, gdt: &Gdt, index: u32, entry: GdtEntry) -> Result<()> {
        // SAFETY: forwarded contract.
        unsafe { (**self).write_gdt_entry(gdt, index, entry) }
    }
    unsafe fn write_ldt_entry(&self, ldt: &Ldt, index: u32, entry: Descriptor) -> Result<()> {
        // SAFETY: forwarded contract.
        unsafe { (**self).write_ldt_entry(ldt, index, entry) }
    }
    unsafe fn write_idt_entry(&self, idt: &Idt, vector: u8, gate: IdtGate) -> Result<()> {
        // SAFETY: forwarded contract.
        unsafe { (**self).write_idt_entry(idt, vector, gate) }
    }
    unsafe fn load_tls(&self, tls: &[Descriptor; TLS_ENTRIES]) -> Result<()> {
        // SAFETY: forwarded contract.
        unsafe { (**self).load_tls(tls) }
    }
    unsafe fn alloc_ldt(&self, ldt: &Ldt) -> Result<()> {
        // SAFETY: forwarded contract.
        unsafe { (**self).alloc_ldt(ldt) }
    }
    unsafe fn free_ldt(&self, ldt: &Ldt) -> Result<()> {
        // SAFETY: forwarded contract.
        unsafe { (**self).free_ldt(ldt) }
    }
    unsafe fn load_kernel_stack(&self, sp0: u64) -> Result<()> {
        // SAFETY: forwarded contract.
        unsafe { (**self).load_kernel_stack(sp0) }
    }
    fn enter_lazy_cpu(&self) -> Result<()> {
        (**self).enter_lazy_cpu()
    }
    fn leave_lazy_cpu(&self) -> Result<()> {
        (**self).leave_lazy_cpu()
    }
    fn flush_lazy(&self) -> Result<()> {
        (**self).flush_lazy()
    }
}
