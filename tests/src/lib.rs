//! Shared helpers for the integration tests: a recording backend.

use std::sync::Mutex;

use pvops::{
    Descriptor, DescriptorOps, DescriptorTablePointer, Gdt, GdtEntry, Idt, IdtGate, Ldt, PvError,
    Result, Selector, TLS_ENTRIES,
};

/// One recorded call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    /// Op name.
    pub op: &'static str,
    /// Arguments, formatted.
    pub args: String,
}

/// A backend that records every call and answers from fixed state. It
/// validates like a real backend (through the table handles), so error
/// paths of the ops layer are visible through it.
#[derive(Default)]
pub struct Recorder {
    calls: Mutex<Vec<Call>>,
    /// If set, every op returns this error (after recording).
    pub fail_with: Option<PvError>,
}

impl Recorder {
    /// A recorder that succeeds.
    pub fn new() -> Self {
        Self::default()
    }

    /// A recorder whose every op fails with `e`.
    pub fn failing(e: PvError) -> Self {
        Recorder {
            fail_with: Some(e),
            ..Self::default()
        }
    }

    /// Calls so far.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// Op names so far.
    pub fn ops(&self) -> Vec<&'static str> {
        self.calls().iter().map(|c| c.op).collect()
    }

    fn rec(&self, op: &'static str, args: String) -> Result<()> {
        self.calls.lock().unwrap().push(Call { op, args });
        match self.fail_with {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl DescriptorOps for Recorder {
    fn name(&self) -> &'static str {
        "recorder"
    }
    unsafe fn load_gdt(&self, gdt: &Gdt) -> Result<()> {
        self.rec("load_gdt", format!("{:#x}+{}", gdt.base(), gdt.entries()))
    }
    fn store_gdt(&self) -> Result<DescriptorTablePointer> {
        self.rec("store_gdt", String::new())?;
        Ok(DescriptorTablePointer {
            limit: 7,
            base: 0x1000,
        })
    }
    unsafe fn load_idt(&self, idt: &Idt) -> Result<()> {
        self.rec("load_idt", format!("{:#x}+{}", idt.base(), idt.entries()))
    }
    fn store_idt(&self) -> Result<DescriptorTablePointer> {
        self.rec("store_idt", String::new())?;
        Ok(DescriptorTablePointer {
            limit: 15,
            base: 0x2000,
        })
    }
    unsafe fn load_tr(&self, tss: Selector) -> Result<()> {
        self.rec("load_tr", format!("{:#x}", tss.bits()))
    }
    fn store_tr(&self) -> Result<Selector> {
        self.rec("store_tr", String::new())?;
        Ok(Selector(0x40))
    }
    unsafe fn load_ldt(&self, ldt: Option<&Ldt>) -> Result<()> {
        self.rec(
            "load_ldt",
            format!("{:?}", ldt.map(|l| (l.base(), l.entries()))),
        )
    }
    fn store_ldt(&self) -> Result<Option<Ldt>> {
        self.rec("store_ldt", String::new())?;
        Ok(None)
    }
    unsafe fn write_gdt_entry(&self, gdt: &Gdt, index: u32, entry: GdtEntry) -> Result<()> {
        gdt.entry_addr(index, &entry)?;
        self.rec("write_gdt_entry", format!("{index} {entry:?}"))
    }
    unsafe fn write_ldt_entry(&self, ldt: &Ldt, index: u32, entry: Descriptor) -> Result<()> {
        ldt.slot_addr(index)?;
        self.rec("write_ldt_entry", format!("{index} {entry:?}"))
    }
    unsafe fn write_idt_entry(&self, idt: &Idt, vector: u8, gate: IdtGate) -> Result<()> {
        idt.slot_addr(vector)?;
        self.rec("write_idt_entry", format!("{vector} {gate:?}"))
    }
    unsafe fn load_tls(&self, tls: &[Descriptor; TLS_ENTRIES]) -> Result<()> {
        self.rec("load_tls", format!("{tls:?}"))
    }
    unsafe fn alloc_ldt(&self, ldt: &Ldt) -> Result<()> {
        self.rec("alloc_ldt", format!("{:#x}", ldt.base()))
    }
    unsafe fn free_ldt(&self, ldt: &Ldt) -> Result<()> {
        self.rec("free_ldt", format!("{:#x}", ldt.base()))
    }
    unsafe fn load_kernel_stack(&self, sp0: u64) -> Result<()> {
        self.rec("load_kernel_stack", format!("{sp0:#x}"))
    }
    fn enter_lazy_cpu(&self) -> Result<()> {
        self.rec("enter_lazy_cpu", String::new())
    }
    fn leave_lazy_cpu(&self) -> Result<()> {
        self.rec("leave_lazy_cpu", String::new())
    }
    fn flush_lazy(&self) -> Result<()> {
        self.rec("flush_lazy", String::new())
    }
}

/// Every op once, in a fixed order, through any backend; returns each op's
/// result as `Ok`/`Err` text. The tables are fake addresses: only backends
/// that do not touch memory (the recorder) may be driven with it.
pub fn drive_all<O: DescriptorOps>(ops: &O) -> Vec<(&'static str, Result<()>)> {
    let gdt = Gdt::new(0x10_0000, 16).unwrap();
    let idt = Idt::new(0x20_0000, 256).unwrap();
    let ldt = Ldt::new(0x30_0000, 4).unwrap();
    let mut out = Vec::new();
    // SAFETY: only used with backends that record instead of touching memory.
    unsafe {
        out.push(("load_gdt", ops.load_gdt(&gdt)));
        out.push(("store_gdt", ops.store_gdt().map(|_| ())));
        out.push(("load_idt", ops.load_idt(&idt)));
        out.push(("store_idt", ops.store_idt().map(|_| ())));
        out.push(("load_tr", ops.load_tr(Selector(0x40))));
        out.push(("store_tr", ops.store_tr().map(|_| ())));
        out.push(("load_ldt", ops.load_ldt(Some(&ldt))));
        out.push(("store_ldt", ops.store_ldt().map(|_| ())));
        out.push((
            "write_gdt_entry",
            ops.write_gdt_entry(&gdt, 1, pvops::presets::KERNEL_CODE64.into()),
        ));
        out.push((
            "write_ldt_entry",
            ops.write_ldt_entry(&ldt, 1, pvops::presets::USER_DATA),
        ));
        out.push((
            "write_idt_entry",
            ops.write_idt_entry(&idt, 3, IdtGate::MISSING),
        ));
        out.push(("load_tls", ops.load_tls(&[Descriptor::NULL; 3])));
        out.push(("alloc_ldt", ops.alloc_ldt(&ldt)));
        out.push(("free_ldt", ops.free_ldt(&ldt)));
        out.push(("load_kernel_stack", ops.load_kernel_stack(0xdead_0000)));
        out.push(("enter_lazy_cpu", ops.enter_lazy_cpu()));
        out.push(("flush_lazy", ops.flush_lazy()));
        out.push(("leave_lazy_cpu", ops.leave_lazy_cpu()));
    }
    out
}

/// The op names [`drive_all`] calls, in order.
pub const ALL_OPS: [&str; 18] = [
    "load_gdt",
    "store_gdt",
    "load_idt",
    "store_idt",
    "load_tr",
    "store_tr",
    "load_ldt",
    "store_ldt",
    "write_gdt_entry",
    "write_ldt_entry",
    "write_idt_entry",
    "load_tls",
    "alloc_ldt",
    "free_ldt",
    "load_kernel_stack",
    "enter_lazy_cpu",
    "flush_lazy",
    "leave_lazy_cpu",
];
