//! # pvops-native — the bare-metal backend
//!
//! Every [`DescriptorOps`] op carried out with the real instruction (`lgdt`,
//! `sgdt`, `lidt`, `sidt`, `ltr`, `str`, `lldt`, `sldt`) or the plain store
//! Linux's `native_*` functions do. Use it on bare metal and under hardware
//! virtualization (KVM, Xen HVM), where these instructions run at full speed.
//!
//! The privileged instructions sit behind the [`Cpu`] trait: [`HardwareCpu`]
//! executes them (ring 0 only), and a CPU model — hv-sim's `SoftCpu` —
//! can stand in for it, so everything this backend does around the
//! instructions (validating selectors, writing the LDT and TSS descriptors,
//! setting `TSS.sp0`) is tested on the host without ring 0. The KVM tests
//! run the same code on a real vCPU with [`HardwareCpu`].
//!
//! Before any instruction or store, every op runs the rules of
//! [`pvops::validate`] with this backend's view of the tables: the GDT and
//! LDT it loaded (its own record; `load_tr` falls back to `sgdt` when no
//! GDT was loaded through it). So a gate whose selector names a data
//! segment, a non-canonical handler, a TSS limit below 0x67 or an LDT
//! selector for `ltr` come back as errors naming the op, the slot and the
//! rule, instead of a #GP/#NP (or a triple fault) later. IST is honoured
//! by the CPU ([`IstSupport::Honoured`]).
//!
//! ```no_run
//! use pvops::{DescriptorOps, GdtLayout};
//! use pvops_native::NativeOps;
//!
//! // SAFETY: a ring-0 kernel whose loaded tables stay valid while loaded.
//! static NATIVE: NativeOps = unsafe { NativeOps::new(GdtLayout::LINUX) };
//! // In a ring-0 kernel:
//! // unsafe { NATIVE.load_gdt(&GDT.gdt()?)? };
//! // pvops::install(pvops::OpsTable::new(&NATIVE))?;
//! # let _ = &NATIVE;
//! ```

#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod cpu;

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

#[cfg(not(target_arch = "x86_64"))]
use pvops::descriptor::SystemType;
use pvops::table::TableRecord;
use pvops::validate::{self, IstSupport, MemoryView};
use pvops::{
    Descriptor, DescriptorOps, DescriptorTablePointer, Gdt, GdtEntry, GdtLayout, Idt, IdtGate, Ldt,
    PvError, Result, Ring, Selector, TLS_ENTRIES, TableIndicator,
};

pub use cpu::{Cpu, HardwareCpu};

/// Bytes of a GDT entry for a TSS or LDT descriptor in this mode.
const SYSTEM_DESC_SLOTS: u32 = if cfg!(target_arch = "x86_64") { 2 } else { 1 };

/// The native backend over CPU `C` (the real one by default).
pub struct NativeOps<C = HardwareCpu> {
    cpu: C,
    layout: GdtLayout,
    /// Linear address of the TSS loaded by the last `load_tr` (0 = unknown).
    tss_base: AtomicU64,
    /// Inside enter_lazy_cpu .. leave_lazy_cpu. Native has nothing to batch,
    /// but it enforces the same pairing rule as the paravirt backends so a
    /// kernel tested on bare metal does not break under a hypervisor.
    lazy: AtomicBool,
    /// The GDT last loaded through this backend (its view for the
    /// validation layer: no `sgdt` needed).
    gdt: TableRecord,
    /// The LDT last loaded through this backend.
    ldt: TableRecord,
    /// The IDT last loaded through this backend (`load_gdt` re-checks its
    /// gates against the new GDT).
    idt: TableRecord,
}

impl NativeOps<HardwareCpu> {
    /// The native backend on the executing CPU.
    ///
    /// # Safety
    /// As [`HardwareCpu::new`]: ring 0, and every table loaded into the
    /// CPU's registers stays valid while loaded (the safe `store_ldt`
    /// reads the GDT the GDTR names).
    pub const unsafe fn new(layout: GdtLayout) -> Self {
        // SAFETY: forwarded contract.
        NativeOps::with_cpu(unsafe { HardwareCpu::new() }, layout)
    }
}

impl<C: Cpu> NativeOps<C> {
    /// The native backend over any [`Cpu`] (a CPU model in tests).
    pub const fn with_cpu(cpu: C, layout: GdtLayout) -> Self {
        NativeOps {
            cpu,
            layout,
            tss_base: AtomicU64::new(0),
            lazy: AtomicBool::new(false),
            gdt: TableRecord::new(),
            ldt: TableRecord::new(),
            idt: TableRecord::new(),
        }
    }

    /// The tables loaded through this backend, as the validation layer
    /// sees them.
    fn view(&self) -> MemoryView {
        // SAFETY: both records hold tables loaded through this backend's
        // unsafe load ops, valid until the next load through it (the ops'
        // contract); a new load replaces the record.
        unsafe { MemoryView::new(self.gdt.get(), self.ldt.get()) }
    }

    /// The CPU this backend drives.
    pub fn cpu(&self) -> &C {
        &self.cpu
    }

    /// The GDT layout it was built with.
    pub fn layout(&self) -> GdtLayout {
        self.layout
    }

    fn current_gdt(&self, op: &'static str) -> Result<Gdt> {
        if let Some((base, entries)) = self.gdt.get() {
            return Gdt::new(base, entries);
        }
        let p = self.cpu.sgdt();
        if p.base == 0 && p.limit == 0 {
            return Err(PvError::NoTableLoaded {
                op,
                table: pvops::TableKind::Gdt,
            });
        }
        Gdt::from_pointer(p)
    }

    /// Read the descriptor `sel` names in the loaded GDT, requiring a GDT
    /// selector that is not null and whose system descriptor (both halves in
    /// long mode) lies inside the GDT. Returns (slot address, low half).
    fn system_descriptor(&self, op: &'static str, sel: Selector) -> Result<(u64, Descriptor)> {
        if sel.is_null() {
            return Err(PvError::BadSelector {
                op,
                selector: sel,
                rule: "is null; a TSS/LDT selector must name a GDT entry",
            });
        }
        if sel.ti() != TableIndicator::Gdt {
            return Err(PvError::BadSelector {
                op,
                selector: sel,
                rule: "has TI=1 (LDT); TSS and LDT descriptors live in the GDT",
            });
        }
        let gdt = self.current_gdt(op)?;
        let index = sel.index() as u32;
        let addr = gdt.slot_addr(index)?;
        if SYSTEM_DESC_SLOTS == 2 && index + 1 >= gdt.entries() {
            return Err(PvError::DoubleSlotPastEnd {
                table: pvops::TableKind::Gdt,
                index,
                entries: gdt.entries(),
            });
        }
        // SAFETY: `addr` is inside the GDT `Cpu::sgdt` names (checked
        // above), which the `Cpu` contract makes a GDT whose loader promised
        // it is valid memory while loaded; slots are 8-byte aligned.
        let low = Descriptor(unsafe { read_u64(addr) });
        Ok((addr, low))
    }

    fn system_base(addr: u64, low: Descriptor) -> u64 {
        let mut base = low.base() as u64;
        if SYSTEM_DESC_SLOTS == 2 {
            // SAFETY: `system_descriptor` checked that slot+1 is in the GDT.
            base |= unsafe { read_u64(addr + 8) } << 32;
        }
        base
    }

    /// Write a GDT entry (no privilege needed: a store).
    ///
    /// # Safety
    /// `gdt` must be valid writable memory.
    unsafe fn store_gdt_entry(gdt: &Gdt, index: u32, entry: GdtEntry) -> Result<()> {
        let addr = gdt.entry_addr(index, &entry)?;
        match entry {
            // SAFETY: `entry_addr` checked the slot is inside `gdt`.
            GdtEntry::Single(d) => unsafe { write_u64(addr, d.0) },
            GdtEntry::Double(d) => {
                // High half first, so the descriptor only becomes present
                // (P lives in the low half) once it is complete.
                // SAFETY: `entry_addr` checked both slots are inside `gdt`.
                unsafe {
                    write_u64(addr + 8, d.high);
                    write_u64(addr, d.low);
                }
            }
        }
        Ok(())
    }
}

/// Read an aligned table slot at linear address `addr` (one relaxed atomic
/// load: the CPU, a hypervisor or another CPU's op may write it, and
/// [`pvops::TableStorage::read`] may read it concurrently).
///
/// # Safety
/// `addr` must be 8-byte aligned and valid for an 8-byte read (table bases
/// are 8-byte aligned, so every slot is).
unsafe fn read_u64(addr: u64) -> u64 {
    // SAFETY: forwarded contract; concurrent accesses to table slots are
    // atomic (TableStorage's concurrency contract).
    unsafe { pvops::table::load_u64(addr) }
}

/// Read the IDT gate at `addr` (its words one atomic load each).
///
/// # Safety
/// As [`read_u64`], for the gate's 8 or 16 bytes.
unsafe fn read_gate(addr: u64) -> IdtGate {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: forwarded contract: both words of the gate.
    unsafe {
        IdtGate {
            low: read_u64(addr),
            high: read_u64(addr + 8),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    // SAFETY: forwarded contract.
    unsafe {
        pvops::Gate32(read_u64(addr))
    }
}

/// Write an aligned table slot at linear address `addr` (one relaxed atomic
/// store, a single `mov`: the CPU never sees half a descriptor).
///
/// # Safety
/// `addr` must be 8-byte aligned and valid for an 8-byte write.
unsafe fn write_u64(addr: u64, v: u64) {
    // SAFETY: as for `read_u64`.
    unsafe { pvops::table::store_u64(addr, v) }
}

impl<C: Cpu> DescriptorOps for NativeOps<C> {
    fn name(&self) -> &'static str {
        "native"
    }

    unsafe fn load_gdt(&self, gdt: &Gdt) -> Result<()> {
        // The loaded IDT's gates were checked against the old GDT: check
        // them against the new one, so a GDT that leaves a gate's selector
        // without its code segment is refused here, not by a #GP at the
        // next interrupt.
        if let Some((base, entries)) = self.idt.get() {
            // SAFETY: `gdt` is valid (op contract); the LDT record is the
            // LDT loaded through this backend, valid while loaded.
            let view =
                unsafe { MemoryView::new(Some((gdt.base(), gdt.entries())), self.ldt.get()) };
            validate::idt(
                "load_gdt",
                entries,
                // SAFETY: v < entries: gate v is inside the IDT loaded
                // through this backend, valid while loaded (op contract).
                |v| unsafe { read_gate(base + v as u64 * pvops::gate::IDT_ENTRY_SIZE as u64) },
                IstSupport::Honoured,
                "native",
                &view,
            )?;
        }
        // SAFETY: forwarded contract: the table is valid while loaded.
        unsafe { self.cpu.lgdt(&gdt.pointer())? };
        self.gdt.set(Some((gdt.base(), gdt.entries())));
        Ok(())
    }

    fn store_gdt(&self) -> Result<DescriptorTablePointer> {
        Ok(self.cpu.sgdt())
    }

    unsafe fn load_idt(&self, idt: &Idt) -> Result<()> {
        validate::idt(
            "load_idt",
            idt.entries(),
            // SAFETY: v < entries: gate v is inside the IDT, valid memory
            // by the op contract.
            |v| unsafe { read_gate(idt.base() + v as u64 * pvops::gate::IDT_ENTRY_SIZE as u64) },
            IstSupport::Honoured,
            "native",
            &self.view(),
        )?;
        // SAFETY: forwarded contract: the table is valid while loaded.
        unsafe { self.cpu.lidt(&idt.pointer())? };
        self.idt.set(Some((idt.base(), idt.entries())));
        Ok(())
    }

    fn store_idt(&self) -> Result<DescriptorTablePointer> {
        Ok(self.cpu.sidt())
    }

    unsafe fn load_tr(&self, tss: Selector) -> Result<()> {
        // The GDT loaded through this backend, else the one `sgdt` names
        // (a GDT loaded by boot code).
        let gdt = if tss.is_null() || tss.ti() != TableIndicator::Gdt {
            None
        } else {
            Some(self.current_gdt("load_tr")?)
        };
        // SAFETY: `current_gdt` is the recorded GDT or the one `Cpu::sgdt`
        // names, which the `Cpu` contract makes a table valid while loaded.
        let view = unsafe { MemoryView::new(gdt.map(|g| (g.base(), g.entries())), None) };
        let base = validate::tss_selector("load_tr", tss, &view)?;
        // SAFETY: the descriptor was checked to be a present available TSS
        // in the loaded GDT; the caller promised the TSS memory is valid.
        unsafe { self.cpu.ltr(tss)? };
        self.tss_base.store(base, Ordering::Relaxed);
        Ok(())
    }

    fn store_tr(&self) -> Result<Selector> {
        Ok(self.cpu.str())
    }

    unsafe fn load_ldt(&self, ldt: Option<&Ldt>) -> Result<()> {
        let Some(ldt) = ldt else {
            // SAFETY: loading the null selector disables the LDT.
            unsafe { self.cpu.lldt(Selector::NULL)? };
            self.ldt.set(None);
            return Ok(());
        };
        let gdt = self.current_gdt("load_ldt")?;
        let index = self.layout.ldt as u32;
        #[cfg(target_arch = "x86_64")]
        let entry = GdtEntry::Double(pvops::SystemDescriptor::ldt(ldt.base(), ldt.entries())?);
        #[cfg(not(target_arch = "x86_64"))]
        let entry = GdtEntry::Single(Descriptor::system32(
            SystemType::Ldt,
            ldt.base() as u32,
            ldt.limit(),
            Ring::Ring0,
        )?);
        // SAFETY: the loaded GDT is valid writable memory (load op contract).
        unsafe { Self::store_gdt_entry(&gdt, index, entry)? };
        let sel = Selector::gdt(self.layout.ldt, Ring::Ring0);
        // SAFETY: the descriptor just written is a present LDT descriptor
        // for memory the caller promised stays valid.
        unsafe { self.cpu.lldt(sel)? };
        self.ldt.set(Some((ldt.base(), ldt.entries())));
        Ok(())
    }

    /// Reads the LDT descriptor from the GDT last loaded through this
    /// backend (valid until the next load through it, the load ops'
    /// contract), else from the one `Cpu::sgdt` names: sound because
    /// [`Cpu`] is an `unsafe trait` whose contract makes that the GDT last
    /// loaded by code (`load_gdt` / `Cpu::lgdt`) that promised it stays
    /// valid while loaded.
    fn store_ldt(&self) -> Result<Option<Ldt>> {
        let sel = self.cpu.sldt();
        if sel.is_null() {
            return Ok(None);
        }
        let (addr, low) = self.system_descriptor("store_ldt", sel)?;
        let base = Self::system_base(addr, low);
        let bytes = low.effective_limit() as u64 + 1;
        Ok(Some(Ldt::new(
            base,
            (bytes / 8).min(u32::MAX as u64) as u32,
        )?))
    }

    unsafe fn write_gdt_entry(&self, gdt: &Gdt, index: u32, entry: GdtEntry) -> Result<()> {
        gdt.entry_addr(index, &entry)?;
        validate::gdt_entry("write_gdt_entry", index, entry, &self.view())?;
        // SAFETY: forwarded contract.
        unsafe { Self::store_gdt_entry(gdt, index, entry) }
    }

    unsafe fn write_ldt_entry(&self, ldt: &Ldt, index: u32, entry: Descriptor) -> Result<()> {
        let addr = ldt.slot_addr(index)?;
        // TI=1 targets resolve in the LDT being written.
        // SAFETY: `ldt` is valid memory (op contract) for this call.
        let view = unsafe { self.view().with_ldt(Some((ldt.base(), ldt.entries()))) };
        validate::ldt_entry("write_ldt_entry", index, entry, &view)?;
        // SAFETY: `slot_addr` checked the slot is inside `ldt`, valid per contract.
        unsafe { write_u64(addr, entry.0) };
        Ok(())
    }

    unsafe fn write_idt_entry(&self, idt: &Idt, vector: u8, gate: IdtGate) -> Result<()> {
        let addr = idt.slot_addr(vector)?;
        validate::idt_gate(
            "write_idt_entry",
            vector,
            gate,
            IstSupport::Honoured,
            "native",
            &self.view(),
        )?;
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `slot_addr` checked the 16-byte slot is inside `idt`. High
        // half first: P lives in the low half.
        unsafe {
            write_u64(addr + 8, gate.high);
            write_u64(addr, gate.low);
        }
        #[cfg(not(target_arch = "x86_64"))]
        // SAFETY: `slot_addr` checked the slot is inside `idt`.
        unsafe {
            write_u64(addr, gate.0)
        };
        Ok(())
    }

    unsafe fn load_tls(&self, tls: &[Descriptor; TLS_ENTRIES]) -> Result<()> {
        validate::tls("load_tls", self.layout.tls_first as u32, tls)?;
        let gdt = self.current_gdt("load_tls")?;
        // Check all three slots before writing any: all or nothing.
        gdt.slot_addr(self.layout.tls_first as u32 + TLS_ENTRIES as u32 - 1)?;
        for (i, d) in tls.iter().enumerate() {
            // SAFETY: the loaded GDT is valid writable memory (contract).
            unsafe {
                Self::store_gdt_entry(
                    &gdt,
                    self.layout.tls_first as u32 + i as u32,
                    GdtEntry::Single(*d),
                )?
            };
        }
        Ok(())
    }

    unsafe fn alloc_ldt(&self, _ldt: &Ldt) -> Result<()> {
        Ok(())
    }

    unsafe fn free_ldt(&self, _ldt: &Ldt) -> Result<()> {
        Ok(())
    }

    unsafe fn load_kernel_stack(&self, sp0: u64) -> Result<()> {
        validate::kernel_stack("load_kernel_stack", sp0)?;
        let mut tss = self.tss_base.load(Ordering::Relaxed);
        if tss == 0 {
            let tr = self.cpu.str();
            if tr.is_null() {
                return Err(PvError::BadSelector {
                    op: "load_kernel_stack",
                    selector: tr,
                    rule: "(the task register) is null: load_tr must run first",
                });
            }
            let (addr, low) = self.system_descriptor("load_kernel_stack", tr)?;
            tss = Self::system_base(addr, low);
            self.tss_base.store(tss, Ordering::Relaxed);
        }
        // 64-bit TSS: rsp0 at offset 4 (unaligned). 32-bit TSS: esp0 at 4.
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the TSS loaded in TR is valid memory (load_tr contract).
        unsafe {
            ((tss + 4) as usize as *mut u64).write_unaligned(sp0)
        };
        #[cfg(not(target_arch = "x86_64"))]
        // SAFETY: the TSS loaded in TR is valid memory (load_tr contract).
        unsafe {
            ((tss + 4) as usize as *mut u32).write_volatile(sp0 as u32)
        };
        Ok(())
    }

    fn enter_lazy_cpu(&self) -> Result<()> {
        if self.lazy.swap(true, Ordering::Relaxed) {
            return Err(PvError::LazyModeMismatch {
                op: "enter_lazy_cpu",
            });
        }
        Ok(())
    }

    fn leave_lazy_cpu(&self) -> Result<()> {
        if !self.lazy.swap(false, Ordering::Relaxed) {
            return Err(PvError::LazyModeMismatch {
                op: "leave_lazy_cpu",
            });
        }
        Ok(())
    }

    fn flush_lazy(&self) -> Result<()> {
        Ok(())
    }
}
