//! Dynamic dispatch: a table of function pointers built from any backend,
//! installed once at boot.
//!
//! This is the shape of Linux's `pv_ops`: the kernel detects where it runs,
//! builds the table for that backend and installs it; every later call goes
//! through the table. [`OpsTable::new`] monomorphizes one small trampoline
//! per op for the backend type, so the table is a plain `const`-buildable
//! struct of `fn` pointers plus a context pointer (the backend itself).
//!
//! * A second [`install`] is refused with
//!   [`PvError::AlreadyInstalled`]; the first table stays.
//! * Before [`install`], every op through [`Installed`] returns
//!   [`PvError::NotInstalled`] (nothing is executed).
//! * An SMP kernel installs a [`PerCpu`](crate::percpu::PerCpu) backend:
//!   one instance per CPU, picked by the kernel's CPU-index hook on every
//!   op.
//!
//! # Tests
//! The global table is one per process, and a test binary runs its tests
//! on several threads: a second test's [`install`] is refused, and a test
//! that ignored that would drive the first test's backend. Tests use
//! `with_installed` instead (feature `std`): the table is installed for
//! the calling thread, for the duration of a closure, and [`Installed`] on
//! that thread uses it ahead of any global table. Each test builds its own
//! backend and its own tables (a table shared by parallel tests sees the
//! other test's loads: the TSS busy bit, for one).

use crate::descriptor::{Descriptor, GdtEntry};
use crate::error::{PvError, Result};
use crate::gate::IdtGate;
use crate::ops::{DescriptorOps, TLS_ENTRIES};
use crate::pointer::DescriptorTablePointer;
use crate::selector::Selector;
use crate::table::{Gdt, Idt, Ldt};

type Ctx = *const ();

/// A backend's ops as function pointers (Linux's `pv_ops`, for descriptor
/// tables).
pub struct OpsTable {
    ctx: Ctx,
    name: unsafe fn(Ctx) -> &'static str,
    load_gdt: unsafe fn(Ctx, &Gdt) -> Result<()>,
    store_gdt: unsafe fn(Ctx) -> Result<DescriptorTablePointer>,
    load_idt: unsafe fn(Ctx, &Idt) -> Result<()>,
    store_idt: unsafe fn(Ctx) -> Result<DescriptorTablePointer>,
    load_tr: unsafe fn(Ctx, Selector) -> Result<()>,
    store_tr: unsafe fn(Ctx) -> Result<Selector>,
    load_ldt: unsafe fn(Ctx, Option<&Ldt>) -> Result<()>,
    store_ldt: unsafe fn(Ctx) -> Result<Option<Ldt>>,
    write_gdt_entry: unsafe fn(Ctx, &Gdt, u32, GdtEntry) -> Result<()>,
    write_ldt_entry: unsafe fn(Ctx, &Ldt, u32, Descriptor) -> Result<()>,
    write_idt_entry: unsafe fn(Ctx, &Idt, u8, IdtGate) -> Result<()>,
    load_tls: unsafe fn(Ctx, &[Descriptor; TLS_ENTRIES]) -> Result<()>,
    alloc_ldt: unsafe fn(Ctx, &Ldt) -> Result<()>,
    free_ldt: unsafe fn(Ctx, &Ldt) -> Result<()>,
    load_kernel_stack: unsafe fn(Ctx, u64) -> Result<()>,
    enter_lazy_cpu: unsafe fn(Ctx) -> Result<()>,
    leave_lazy_cpu: unsafe fn(Ctx) -> Result<()>,
    flush_lazy: unsafe fn(Ctx) -> Result<()>,
}

// SAFETY: `ctx` is a `&'static B` with `B: Sync` (enforced by `OpsTable::new`),
// so sharing and sending the table only shares that `&'static B`.
unsafe impl Sync for OpsTable {}
// SAFETY: as above; a `&'static B` with `B: Sync` is `Send`.
unsafe impl Send for OpsTable {}

macro_rules! tramp {
    ($name:ident, ($($arg:ident : $ty:ty),*) -> $ret:ty, unsafe) => {
        /// # Safety
        /// `ctx` must be the `&'static B` the table was built from; the op's
        /// own contract applies.
        pub(super) unsafe fn $name<B: DescriptorOps>(ctx: Ctx, $($arg: $ty),*) -> $ret {
            // SAFETY: `ctx` came from a `&'static B` in `OpsTable::new`, and
            // the caller upholds the op's contract.
            unsafe { (*ctx.cast::<B>()).$name($($arg),*) }
        }
    };
    ($name:ident, ($($arg:ident : $ty:ty),*) -> $ret:ty) => {
        /// # Safety
        /// `ctx` must be the `&'static B` the table was built from.
        pub(super) unsafe fn $name<B: DescriptorOps>(ctx: Ctx, $($arg: $ty),*) -> $ret {
            // SAFETY: `ctx` came from a `&'static B` in `OpsTable::new`.
            unsafe { (*ctx.cast::<B>()).$name($($arg),*) }
        }
    };
}

mod tramps {
    use super::*;
    tramp!(name, () -> &'static str);
    tramp!(load_gdt, (gdt: &Gdt) -> Result<()>, unsafe);
    tramp!(store_gdt, () -> Result<DescriptorTablePointer>);
    tramp!(load_idt, (idt: &Idt) -> Result<()>, unsafe);
    tramp!(store_idt, () -> Result<DescriptorTablePointer>);
    tramp!(load_tr, (sel: Selector) -> Result<()>, unsafe);
    tramp!(store_tr, () -> Result<Selector>);
    tramp!(load_ldt, (ldt: Option<&Ldt>) -> Result<()>, unsafe);
    tramp!(store_ldt, () -> Result<Option<Ldt>>);
    tramp!(write_gdt_entry, (gdt: &Gdt, index: u32, entry: GdtEntry) -> Result<()>, unsafe);
    tramp!(write_ldt_entry, (ldt: &Ldt, index: u32, entry: Descriptor) -> Result<()>, unsafe);
    tramp!(write_idt_entry, (idt: &Idt, vector: u8, gate: IdtGate) -> Result<()>, unsafe);
    tramp!(load_tls, (tls: &[Descriptor; TLS_ENTRIES]) -> Result<()>, unsafe);
    tramp!(alloc_ldt, (ldt: &Ldt) -> Result<()>, unsafe);
    tramp!(free_ldt, (ldt: &Ldt) -> Result<()>, unsafe);
    tramp!(load_kernel_stack, (sp0: u64) -> Result<()>, unsafe);
    tramp!(enter_lazy_cpu, () -> Result<()>);
    tramp!(leave_lazy_cpu, () -> Result<()>);
    tramp!(flush_lazy, () -> Result<()>);
}

impl OpsTable {
    /// Build the table for `backend`.
    pub const fn new<B: DescriptorOps + Sync>(backend: &'static B) -> OpsTable {
        OpsTable {
            ctx: (backend as *const B).cast(),
            name: tramps::name::<B>,
            load_gdt: tramps::load_gdt::<B>,
            store_gdt: tramps::store_gdt::<B>,
            load_idt: tramps::load_idt::<B>,
            store_idt: tramps::store_idt::<B>,
            load_tr: tramps::load_tr::<B>,
            store_tr: tramps::store_tr::<B>,
            load_ldt: tramps::load_ldt::<B>,
            store_ldt: tramps::store_ldt::<B>,
            write_gdt_entry: tramps::write_gdt_entry::<B>,
            write_ldt_entry: tramps::write_ldt_entry::<B>,
            write_idt_entry: tramps::write_idt_entry::<B>,
            load_tls: tramps::load_tls::<B>,
            alloc_ldt: tramps::alloc_ldt::<B>,
            free_ldt: tramps::free_ldt::<B>,
            load_kernel_stack: tramps::load_kernel_stack::<B>,
            enter_lazy_cpu: tramps::enter_lazy_cpu::<B>,
            leave_lazy_cpu: tramps::leave_lazy_cpu::<B>,
            flush_lazy: tramps::flush_lazy::<B>,
        }
    }
}

// Every call below passes `self.ctx`, which `OpsTable::new` built from the
// `&'static B` the matching trampoline expects.
impl DescriptorOps for OpsTable {
    fn name(&self) -> &'static str {
        // SAFETY: ctx/trampoline pair from `new`.
        unsafe { (self.name)(self.ctx) }
    }
    unsafe fn load_gdt(&self, gdt: &Gdt) -> Result<()> {
        // SAFETY: ctx/trampoline pair from `new`; caller upholds the op contract.
        unsafe { (self.load_gdt)(self.ctx, gdt) }
    }
    fn store_gdt(&self) -> Result<DescriptorTablePointer> {
        // SAFETY: ctx/trampoline pair from `new`.
        unsafe { (self.store_gdt)(self.ctx) }
    }
    unsafe fn load_idt(&self, idt: &Idt) -> Result<()> {
        // SAFETY: ctx/trampoline pair from `new`; caller upholds the op contract.
        unsafe { (self.load_idt)(self.ctx, idt) }
    }
    fn store_idt(&self) -> Result<DescriptorTablePointer> {
        // SAFETY: ctx/trampoline pair from `new`.
        unsafe { (self.store_idt)(self.ctx) }
    }
    unsafe fn load_tr(&self, tss: Selector) -> Result<()> {
        // SAFETY: ctx/trampoline pair from `new`; caller upholds the op contract.
        unsafe { (self.load_tr)(self.ctx, tss) }
    }
    fn store_tr(&self) -> Result<Selector> {
        // SAFETY: ctx/trampoline pair from `new`.
        unsafe { (self.store_tr)(self.ctx) }
    }
    unsafe fn load_ldt(&self, ldt: Option<&Ldt>) -> Result<()> {
        // SAFETY: ctx/trampoline pair from `new`; caller upholds the op contract.
        unsafe { (self.load_ldt)(self.ctx, ldt) }
    }
    fn store_ldt(&self) -> Result<Option<Ldt>> {
        // SAFETY: ctx/trampoline pair from `new`.
        unsafe { (self.store_ldt)(self.ctx) }
    }
    unsafe fn write_gdt_entry(&self, gdt: &Gdt, index: u32, entry: GdtEntry) -> Result<()> {
        // SAFETY: ctx/trampoline pair from `new`; caller upholds the op contract.
        unsafe { (self.write_gdt_entry)(self.ctx, gdt, index, entry) }
    }
    unsafe fn write_ldt_entry(&self, ldt: &Ldt, index: u32, entry: Descriptor) -> Result<()> {
        // SAFETY: ctx/trampoline pair from `new`; caller upholds the op contract.
        unsafe { (self.write_ldt_entry)(self.ctx, ldt, index, entry) }
    }
    unsafe fn write_idt_entry(&self, idt: &Idt, vector: u8, gate: IdtGate) -> Result<()> {
        // SAFETY: ctx/trampoline pair from `new`; caller upholds the op contract.
        unsafe { (self.write_idt_entry)(self.ctx, idt, vector, gate) }
    }
    unsafe fn load_tls(&self, tls: &[Descriptor; TLS_ENTRIES]) -> Result<()> {
        // SAFETY: ctx/trampoline pair from `new`; caller upholds the op contract.
        unsafe { (self.load_tls)(self.ctx, tls) }
    }
    unsafe fn alloc_ldt(&self, ldt: &Ldt) -> Result<()> {
        // SAFETY: ctx/trampoline pair from `new`; caller upholds the op contract.
        unsafe { (self.alloc_ldt)(self.ctx, ldt) }
    }
    unsafe fn free_ldt(&self, ldt: &Ldt) -> Result<()> {
        // SAFETY: ctx/trampoline pair from `new`; caller upholds the op contract.
        unsafe { (self.free_ldt)(self.ctx, ldt) }
    }
    unsafe fn load_kernel_stack(&self, sp0: u64) -> Result<()> {
        // SAFETY: ctx/trampoline pair from `new`; caller upholds the op contract.
        unsafe { (self.load_kernel_stack)(self.ctx, sp0) }
    }
    fn enter_lazy_cpu(&self) -> Result<()> {
        // SAFETY: ctx/trampoline pair from `new`.
        unsafe { (self.enter_lazy_cpu)(self.ctx) }
    }
    fn leave_lazy_cpu(&self) -> Result<()> {
        // SAFETY: ctx/trampoline pair from `new`.
        unsafe { (self.leave_lazy_cpu)(self.ctx) }
    }
    fn flush_lazy(&self) -> Result<()> {
        // SAFETY: ctx/trampoline pair from `new`.
        unsafe { (self.flush_lazy)(self.ctx) }
    }
}

static INSTALLED: spin::Once<OpsTable> = spin::Once::new();

/// Install the boot-time ops table. Only the first call succeeds; later
/// calls return [`PvError::AlreadyInstalled`] naming the installed backend.
pub fn install(table: OpsTable) -> Result<()> {
    let mut ours = false;
    let t = INSTALLED.call_once(|| {
        ours = true;
        table
    });
    if ours {
        Ok(())
    } else {
        Err(PvError::AlreadyInstalled {
            installed: t.name(),
        })
    }
}

/// The installed (global) table, if any.
pub fn installed() -> Option<&'static OpsTable> {
    INSTALLED.get()
}

#[cfg(any(test, feature = "std"))]
mod scoped {
    extern crate std;
    use super::OpsTable;
    use core::cell::Cell;

    std::thread_local! {
        /// The table [`with_installed`] set on this thread (null: none).
        static SCOPED: Cell<*const OpsTable> = const { Cell::new(core::ptr::null()) };
    }

    /// Run `f` with `table` installed for the calling thread only:
    /// [`Installed`](super::Installed) on this thread forwards to `table`
    /// (ahead of the global table) until `f` returns or unwinds; other
    /// threads do not see it. Calls nest: the inner table is used inside,
    /// the outer one again after. Feature `std` (for host tests).
    ///
    /// tests/tests/dispatch.rs shows two threads, each with its own table.
    pub fn with_installed<R>(table: &OpsTable, f: impl FnOnce() -> R) -> R {
        /// Puts the previous table back, also when `f` unwinds.
        struct Restore(*const OpsTable);
        impl Drop for Restore {
            fn drop(&mut self) {
                SCOPED.with(|c| c.set(self.0));
            }
        }
        let _restore = Restore(SCOPED.with(|c| c.replace(table)));
        f()
    }

    /// The table [`with_installed`] set on this thread, if any.
    pub(super) fn get<R>(f: impl FnOnce(Option<&OpsTable>) -> R) -> R {
        let p = SCOPED.with(Cell::get);
        // SAFETY: a non-null pointer was set by `with_installed` on this
        // thread from a `&OpsTable` borrowed for the whole of its closure,
        // and is reset (by `Restore`, on return or unwind) before that
        // borrow ends; `f` runs inside the closure, and the pointer never
        // leaves this thread.
        f(unsafe { p.as_ref() })
    }
}

#[cfg(any(test, feature = "std"))]
pub use scoped::with_installed;

/// Run `f` on the table in force on this thread: the one
/// `with_installed` set (feature `std`), else the global one.
fn with_table<R>(f: impl FnOnce(&OpsTable) -> Result<R>) -> Result<R> {
    #[cfg(any(test, feature = "std"))]
    {
        scoped::get(|t| match t.or_else(|| INSTALLED.get()) {
            Some(t) => f(t),
            None => Err(PvError::NotInstalled),
        })
    }
    #[cfg(not(any(test, feature = "std")))]
    {
        f(INSTALLED.get().ok_or(PvError::NotInstalled)?)
    }
}

/// The installed table as a backend: every op forwards to it, or returns
/// [`PvError::NotInstalled`] before [`install`]. On a thread inside
/// `with_installed` (feature `std`), it forwards to that table instead.
#[derive(Clone, Copy, Debug, Default)]
pub struct Installed;

impl DescriptorOps for Installed {
    fn name(&self) -> &'static str {
        with_table(|t| Ok(t.name())).unwrap_or("(none installed)")
    }
    unsafe fn load_gdt(&self, gdt: &Gdt) -> Result<()> {
        // SAFETY: forwarded contract.
        with_table(|t| unsafe { t.load_gdt(gdt) })
    }
    fn store_gdt(&self) -> Result<DescriptorTablePointer> {
        with_table(|t| t.store_gdt())
    }
    unsafe fn load_idt(&self, idt: &Idt) -> Result<()> {
        // SAFETY: forwarded contract.
        with_table(|t| unsafe { t.load_idt(idt) })
    }
    fn store_idt(&self) -> Result<DescriptorTablePointer> {
        with_table(|t| t.store_idt())
    }
    unsafe fn load_tr(&self, tss: Selector) -> Result<()> {
        // SAFETY: forwarded contract.
        with_table(|t| unsafe { t.load_tr(tss) })
    }
    fn store_tr(&self) -> Result<Selector> {
        with_table(|t| t.store_tr())
    }
    unsafe fn load_ldt(&self, ldt: Option<&Ldt>) -> Result<()> {
        // SAFETY: forwarded contract.
        with_table(|t| unsafe { t.load_ldt(ldt) })
    }
    fn store_ldt(&self) -> Result<Option<Ldt>> {
        with_table(|t| t.store_ldt())
    }
    unsafe fn write_gdt_entry(&self, gdt: &Gdt, index: u32, entry: GdtEntry) -> Result<()> {
        // SAFETY: forwarded contract.
        with_table(|t| unsafe { t.write_gdt_entry(gdt, index, entry) })
    }
    unsafe fn write_ldt_entry(&self, ldt: &Ldt, index: u32, entry: Descriptor) -> Result<()> {
        // SAFETY: forwarded contract.
        with_table(|t| unsafe { t.write_ldt_entry(ldt, index, entry) })
    }
    unsafe fn write_idt_entry(&self, idt: &Idt, vector: u8, gate: IdtGate) -> Result<()> {
        // SAFETY: forwarded contract.
        with_table(|t| unsafe { t.write_idt_entry(idt, vector, gate) })
    }
    unsafe fn load_tls(&self, tls: &[Descriptor; TLS_ENTRIES]) -> Result<()> {
        // SAFETY: forwarded contract.
        with_table(|t| unsafe { t.load_tls(tls) })
    }
    unsafe fn alloc_ldt(&self, ldt: &Ldt) -> Result<()> {
        // SAFETY: forwarded contract.
        with_table(|t| unsafe { t.alloc_ldt(ldt) })
    }
    unsafe fn free_ldt(&self, ldt: &Ldt) -> Result<()> {
        // SAFETY: forwarded contract.
        with_table(|t| unsafe { t.free_ldt(ldt) })
    }
    unsafe fn load_kernel_stack(&self, sp0: u64) -> Result<()> {
        // SAFETY: forwarded contract.
        with_table(|t| unsafe { t.load_kernel_stack(sp0) })
    }
    fn enter_lazy_cpu(&self) -> Result<()> {
        with_table(|t| t.enter_lazy_cpu())
    }
    fn leave_lazy_cpu(&self) -> Result<()> {
        with_table(|t| t.leave_lazy_cpu())
    }
    fn flush_lazy(&self) -> Result<()> {
        with_table(|t| t.flush_lazy())
    }
}
