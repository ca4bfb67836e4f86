//! Per-CPU backends for SMP kernels.
//!
//! A backend instance carries per-CPU state: the native backend the TSS
//! that `load_tr` loaded (where `load_kernel_stack` writes `rsp0`), the GDT
//! and LDT it loaded and its lazy-mode flag; a Xen-style backend its vCPU's
//! multicall queue and scratch buffer; a VMI-style one its vCPU's lazy mode.
//! One instance shared by two CPUs would have the second CPU's
//! `load_kernel_stack` write the first CPU's `TSS.rsp0`.
//!
//! [`PerCpu`] holds one backend per CPU and is itself a backend: each op
//! asks the kernel's [`CpuIndex`] hook which CPU is executing and forwards
//! to that CPU's instance. It goes into the dynamic table like any other
//! backend, so the install stays one line:
//!
//! ```
//! use pvops::percpu::{CpuIndex, PerCpu};
//! use pvops::{DescriptorOps, OpsTable};
//! # struct Backend;
//! # impl DescriptorOps for Backend {
//! #     fn name(&self) -> &'static str { "demo" }
//! #     unsafe fn load_gdt(&self, _: &pvops::Gdt) -> pvops::Result<()> { Ok(()) }
//! #     fn store_gdt(&self) -> pvops::Result<pvops::DescriptorTablePointer> { unimplemented!() }
//! #     unsafe fn load_idt(&self, _: &pvops::Idt) -> pvops::Result<()> { Ok(()) }
//! #     fn store_idt(&self) -> pvops::Result<pvops::DescriptorTablePointer> { unimplemented!() }
//! #     unsafe fn load_tr(&self, _: pvops::Selector) -> pvops::Result<()> { Ok(()) }
//! #     fn store_tr(&self) -> pvops::Result<pvops::Selector> { unimplemented!() }
//! #     unsafe fn load_ldt(&self, _: Option<&pvops::Ldt>) -> pvops::Result<()> { Ok(()) }
//! #     fn store_ldt(&self) -> pvops::Result<Option<pvops::Ldt>> { Ok(None) }
//! #     unsafe fn write_gdt_entry(&self, _: &pvops::Gdt, _: u32, _: pvops::GdtEntry) -> pvops::Result<()> { Ok(()) }
//! #     unsafe fn write_ldt_entry(&self, _: &pvops::Ldt, _: u32, _: pvops::Descriptor) -> pvops::Result<()> { Ok(()) }
//! #     unsafe fn write_idt_entry(&self, _: &pvops::Idt, _: u8, _: pvops::IdtGate) -> pvops::Result<()> { Ok(()) }
//! #     unsafe fn load_tls(&self, _: &[pvops::Descriptor; 3]) -> pvops::Result<()> { Ok(()) }
//! #     unsafe fn alloc_ldt(&self, _: &pvops::Ldt) -> pvops::Result<()> { Ok(()) }
//! #     unsafe fn free_ldt(&self, _: &pvops::Ldt) -> pvops::Result<()> { Ok(()) }
//! #     unsafe fn load_kernel_stack(&self, _: u64) -> pvops::Result<()> { Ok(()) }
//! #     fn enter_lazy_cpu(&self) -> pvops::Result<()> { Ok(()) }
//! #     fn leave_lazy_cpu(&self) -> pvops::Result<()> { Ok(()) }
//! #     fn flush_lazy(&self) -> pvops::Result<()> { Ok(()) }
//! # }
//! /// The kernel's CPU numbering (here: one CPU; a kernel reads its
//! /// per-CPU area, or the local APIC ID, or its hypervisor's vCPU id).
//! struct ThisCpu;
//! // SAFETY: one CPU, so index 0 is always the executing CPU's own.
//! unsafe impl CpuIndex for ThisCpu {
//!     fn current() -> usize {
//!         0
//!     }
//! }
//!
//! static OPS: PerCpu<Backend, ThisCpu, 4> = PerCpu::new();
//!
//! // Each CPU registers its own backend as it comes up (the boot CPU here):
//! OPS.register_current(Backend).unwrap();
//! pvops::install(OpsTable::new(&OPS)).unwrap();
//! assert_eq!(pvops::Installed.name(), "demo");
//! // A CPU that has not registered is refused, never given another's:
//! assert!(OPS.get(1).is_none());
//! ```
//!
//! A uniprocessor kernel does not need any of this: it installs its one
//! backend (`pvops::install(OpsTable::new(&NATIVE))`).

use core::marker::PhantomData;

use crate::descriptor::{Descriptor, GdtEntry};
use crate::error::{PvError, Result};
use crate::gate::IdtGate;
use crate::ops::{DescriptorOps, TLS_ENTRIES};
use crate::pointer::DescriptorTablePointer;
use crate::selector::Selector;
use crate::table::{Gdt, Idt, Ldt};

/// The kernel's hook that names the executing CPU.
///
/// # Safety
/// An implementation promises that [`CpuIndex::current`]:
/// * returns the index of the CPU executing the call, different for every
///   CPU that can run a pvops op at the same time as another;
/// * returns the same index for the whole of one op: the caller of an op
///   is not moved to another CPU in the middle (a kernel runs pvops ops
///   with preemption or migration disabled, as Linux does).
///
/// The backends' own contracts rest on this: the native backend's
/// `load_kernel_stack` writes the TSS that this CPU's `load_tr` loaded, and
/// a Xen- or VMI-style backend's platform (scratch buffer, multicall queue)
/// is used by one vCPU only.
///
/// Implementing it without `unsafe impl` does not compile:
///
/// ```compile_fail
/// struct Hook;
/// impl pvops::percpu::CpuIndex for Hook {
///     fn current() -> usize { 0 }
/// }
/// ```
pub unsafe trait CpuIndex {
    /// The executing CPU's index (0-based; need not be dense).
    fn current() -> usize;
}

/// One backend per CPU, chosen by the [`CpuIndex`] hook `H` on every op.
///
/// Up to `N` CPUs (indices `0..N`). Each CPU's backend is set once with
/// [`PerCpu::register`] (by that CPU, or by the CPU that starts it). An op on
/// a CPU whose index is out of range or which has no backend yet returns
/// [`PvError::PerCpu`], before anything runs.
pub struct PerCpu<B, H, const N: usize> {
    slots: [spin::Once<B>; N],
    _hook: PhantomData<fn() -> H>,
}

impl<B, H: CpuIndex, const N: usize> PerCpu<B, H, N> {
    /// No CPU registered yet.
    pub const fn new() -> Self {
        PerCpu {
            slots: [const { spin::Once::new() }; N],
            _hook: PhantomData,
        }
    }

    fn slot(&self, op: &'static str, cpu: usize) -> Result<&spin::Once<B>> {
        self.slots.get(cpu).ok_or(PvError::PerCpu {
            op,
            cpu,
            slots: N,
            rule: "is out of range",
        })
    }

    /// Set CPU `cpu`'s backend; returns it. Refused for an index out of
    /// range or a CPU that already has one (that one stays).
    pub fn register(&self, cpu: usize, backend: B) -> Result<&B> {
        let slot = self.slot("register", cpu)?;
        let mut ours = false;
        let b = slot.call_once(|| {
            ours = true;
            backend
        });
        if ours {
            Ok(b)
        } else {
            Err(PvError::PerCpu {
                op: "register",
                cpu,
                slots: N,
                rule: "already has a backend",
            })
        }
    }

    /// Set the executing CPU's backend ([`PerCpu::register`] with
    /// `H::current()`).
    pub fn register_current(&self, backend: B) -> Result<&B> {
        self.register(H::current(), backend)
    }

    /// CPU `cpu`'s backend, if registered.
    pub fn get(&self, cpu: usize) -> Option<&B> {
        self.slots.get(cpu)?.get()
    }

    /// The executing CPU's backend, or why there is none.
    pub fn current(&self) -> Result<&B> {
        self.this_cpu("current")
    }

    fn this_cpu(&self, op: &'static str) -> Result<&B> {
        let cpu = H::current();
        self.slot(op, cpu)?.get().ok_or(PvError::PerCpu {
            op,
            cpu,
            slots: N,
            rule: "has no backend registered",
        })
    }
}

impl<B, H: CpuIndex, const N: usize> Default for PerCpu<B, H, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<B: DescriptorOps, H: CpuIndex, const N: usize> DescriptorOps for PerCpu<B, H, N> {
    /// The executing CPU's backend's name, else the first registered one's,
    /// else `"per-cpu (none registered)"`.
    fn name(&self) -> &'static str {
        match self.this_cpu("name") {
            Ok(b) => b.name(),
            Err(_) => self
                .slots
                .iter()
                .find_map(|s| s.get())
                .map_or("per-cpu (none registered)", |b| b.name()),
        }
    }
    unsafe fn load_gdt(&self, gdt: &Gdt) -> Result<()> {
        // SAFETY: forwarded contract, to the executing CPU's backend.
        unsafe { self.this_cpu("load_gdt")?.load_gdt(gdt) }
    }
    fn store_gdt(&self) -> Result<DescriptorTablePointer> {
        self.this_cpu("store_gdt")?.store_gdt()
    }
    unsafe fn load_idt(&self, idt: &Idt) -> Result<()> {
        // SAFETY: forwarded contract.
        unsafe { self.this_cpu("load_idt")?.load_idt(idt) }
    }
    fn store_idt(&self) -> Result<DescriptorTablePointer> {
        self.this_cpu("store_idt")?.store_idt()
    }
    unsafe fn load_tr(&self, tss: Selector) -> Result<()> {
        // SAFETY: forwarded contract.
        unsafe { self.this_cpu("load_tr")?.load_tr(tss) }
    }
    fn store_tr(&self) -> Result<Selector> {
        self.this_cpu("store_tr")?.store_tr()
    }
    unsafe fn load_ldt(&self, ldt: Option<&Ldt>) -> Result<()> {
        // SAFETY: forwarded contract.
        unsafe { self.this_cpu("load_ldt")?.load_ldt(ldt) }
    }
    fn store_ldt(&self) -> Result<Option<Ldt>> {
        self.this_cpu("store_ldt")?.store_ldt()
    }
    unsafe fn write_gdt_entry(&self, gdt: &Gdt, index: u32, entry: GdtEntry) -> Result<()> {
        // SAFETY: forwarded contract.
        unsafe {
            self.this_cpu("write_gdt_entry")?
                .write_gdt_entry(gdt, index, entry)
        }
    }
    unsafe fn write_ldt_entry(&self, ldt: &Ldt, index: u32, entry: Descriptor) -> Result<()> {
        // SAFETY: forwarded contract.
        unsafe {
            self.this_cpu("write_ldt_entry")?
                .write_ldt_entry(ldt, index, entry)
        }
    }
    unsafe fn write_idt_entry(&self, idt: &Idt, vector: u8, gate: IdtGate) -> Result<()> {
        // SAFETY: forwarded contract.
        unsafe {
            self.this_cpu("write_idt_entry")?
                .write_idt_entry(idt, vector, gate)
        }
    }
    unsafe fn load_tls(&self, tls: &[Descriptor; TLS_ENTRIES]) -> Result<()> {
        // SAFETY: forwarded contract.
        unsafe { self.this_cpu("load_tls")?.load_tls(tls) }
    }
    unsafe fn alloc_ldt(&self, ldt: &Ldt) -> Result<()> {
        // SAFETY: forwarded contract.
        unsafe { self.this_cpu("alloc_ldt")?.alloc_ldt(ldt) }
    }
    unsafe fn free_ldt(&self, ldt: &Ldt) -> Result<()> {
        // SAFETY: forwarded contract.
        unsafe { self.this_cpu("free_ldt")?.free_ldt(ldt) }
    }
    unsafe fn load_kernel_stack(&self, sp0: u64) -> Result<()> {
        // SAFETY: forwarded contract.
        unsafe { self.this_cpu("load_kernel_stack")?.load_kernel_stack(sp0) }
    }
    fn enter_lazy_cpu(&self) -> Result<()> {
        self.this_cpu("enter_lazy_cpu")?.enter_lazy_cpu()
    }
    fn leave_lazy_cpu(&self) -> Result<()> {
        self.this_cpu("leave_lazy_cpu")?.leave_lazy_cpu()
    }
    fn flush_lazy(&self) -> Result<()> {
        self.this_cpu("flush_lazy")?.flush_lazy()
    }
}
