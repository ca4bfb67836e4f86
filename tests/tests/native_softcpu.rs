//! The native backend's logic, run on the host against hv-sim's SoftCpu
//! instruction model: every op's effect on the CPU registers and on the
//! tables, and every error path. (The same code runs on a real vCPU with
//! `HardwareCpu` in the KVM tests.)

use hv_sim::softcpu::{CpuMode, HostMemory, SoftCpu};
use pvops::descriptor::SystemType;
use pvops::*;
use pvops_native::{Cpu, NativeOps};

struct Env {
    ops: &'static NativeOps<SoftCpu>,
    gdt_store: &'static DescriptorStorage<16>,
    idt_store: &'static IdtStorage<256>,
    ldt_store: &'static DescriptorStorage<8>,
    /// The TSS: 104 bytes (13 words), written by the backend (rsp0) and the
    /// CPU model through its address, so never behind a Rust reference.
    tss: &'static TssStorage<Tss64>,
    gdt: Gdt,
    idt: Idt,
    ldt: Ldt,
}

const LAYOUT: GdtLayout = GdtLayout::LINUX_X86_64;

fn env() -> Env {
    let gdt_store: &'static DescriptorStorage<16> =
        Box::leak(Box::new(DescriptorStorage::new(presets::LINUX_X86_64_GDT)));
    let idt_store: &'static IdtStorage<256> =
        Box::leak(Box::new(IdtStorage::new([IdtGate::MISSING; 256])));
    let ldt_store: &'static DescriptorStorage<8> =
        Box::leak(Box::new(DescriptorStorage::new([Descriptor::NULL; 8])));
    // SAFETY: the tests only give the CPU model addresses of these leaked,
    // 'static, aligned allocations.
    let mem = unsafe { HostMemory::new() };
    let ops = Box::leak(Box::new(NativeOps::with_cpu(
        SoftCpu::new(mem, CpuMode::Long),
        LAYOUT,
    )));
    Env {
        ops,
        gdt: gdt_store.gdt().unwrap(),
        idt: idt_store.idt().unwrap(),
        ldt: ldt_store.ldt().unwrap(),
        gdt_store,
        idt_store,
        ldt_store,
        tss: Box::leak(Box::new(TssStorage::new(Tss64::new()))),
    }
}

impl Env {
    fn tss_desc(&self) -> SystemDescriptor {
        self.tss.descriptor().unwrap()
    }
    fn tr(&self) -> Selector {
        Selector::gdt(LAYOUT.tss, Ring::Ring0)
    }
    /// load_gdt + TSS descriptor + load_tr.
    fn boot(&self) {
        // SAFETY: leaked 'static tables.
        unsafe {
            self.ops.load_gdt(&self.gdt).unwrap();
            self.ops
                .write_gdt_entry(&self.gdt, LAYOUT.tss as u32, self.tss_desc().into())
                .unwrap();
            self.ops.load_tr(self.tr()).unwrap();
        }
    }
}

#[test]
fn load_and_store_gdt_idt() {
    let e = env();
    // SAFETY: leaked 'static tables.
    unsafe {
        e.ops.load_gdt(&e.gdt).unwrap();
        e.ops.load_idt(&e.idt).unwrap();
    }
    let regs = e.ops.cpu().registers();
    assert_eq!(regs.gdtr, e.gdt.pointer());
    assert_eq!(regs.idtr, e.idt.pointer());
    assert_eq!(e.ops.store_gdt().unwrap(), e.gdt.pointer());
    assert_eq!(e.ops.store_idt().unwrap(), e.idt.pointer());
    assert_eq!(
        e.ops.cpu().log().iter().map(|r| r.insn).collect::<Vec<_>>(),
        ["lgdt", "lidt", "sgdt", "sidt"]
    );
}

#[test]
fn write_entries_land_in_memory() {
    let e = env();
    // SAFETY: leaked 'static tables.
    unsafe {
        e.ops
            .write_gdt_entry(&e.gdt, 7, presets::USER_CODE32.into())
            .unwrap();
        let tss = e.tss_desc();
        e.ops.write_gdt_entry(&e.gdt, 8, tss.into()).unwrap();
        e.ops
            .write_ldt_entry(&e.ldt, 7, presets::USER_DATA)
            .unwrap();
        let g = Gate64::interrupt(Selector(0x10), 0xffff_ffff_8123_4567, Ring::Ring0)
            .with_ist(1)
            .unwrap();
        e.ops.write_idt_entry(&e.idt, 255, g).unwrap();
        assert_eq!(e.idt_store.read(255), Some(g));
        assert_eq!(e.gdt_store.read(8), Some(Descriptor(tss.low)));
        assert_eq!(e.gdt_store.read(9), Some(Descriptor(tss.high)));
    }
    assert_eq!(e.gdt_store.read(7), Some(presets::USER_CODE32));
    assert_eq!(e.ldt_store.read(7), Some(presets::USER_DATA));
    assert!(
        e.ops.cpu().log().is_empty(),
        "entry writes are plain stores: no instruction"
    );
}

#[test]
fn entry_write_errors_touch_nothing() {
    let e = env();
    let before: Vec<_> = (0..16).map(|i| e.gdt_store.read(i)).collect();
    // SAFETY: leaked 'static tables.
    unsafe {
        assert!(matches!(
            e.ops.write_gdt_entry(&e.gdt, 16, Descriptor::NULL.into()),
            Err(PvError::IndexOutOfRange {
                table: TableKind::Gdt,
                index: 16,
                entries: 16
            })
        ));
        assert!(matches!(
            e.ops.write_gdt_entry(&e.gdt, 15, e.tss_desc().into()),
            Err(PvError::DoubleSlotPastEnd { index: 15, .. })
        ));
        assert!(matches!(
            e.ops.write_ldt_entry(&e.ldt, 8, Descriptor::NULL),
            Err(PvError::IndexOutOfRange {
                table: TableKind::Ldt,
                ..
            })
        ));
        let small = Idt::new(e.idt.base(), 32).unwrap();
        assert!(matches!(
            e.ops.write_idt_entry(&small, 32, IdtGate::MISSING),
            Err(PvError::IndexOutOfRange {
                table: TableKind::Idt,
                ..
            })
        ));
    }
    let after: Vec<_> = (0..16).map(|i| e.gdt_store.read(i)).collect();
    assert_eq!(before, after);
}

#[test]
fn load_tr_marks_busy_and_load_kernel_stack_writes_rsp0() {
    let e = env();
    e.boot();
    assert_eq!(e.ops.store_tr().unwrap(), e.tr());
    let d = e.gdt_store.read(LAYOUT.tss as usize).unwrap();
    assert_eq!(
        d.system_type(),
        SystemType::TssBusy,
        "LTR sets the busy bit in the GDT"
    );
    let regs = e.ops.cpu().registers();
    assert_eq!(regs.tr_base, e.tss.base());
    assert_eq!(regs.tr_limit, 0x67, "a 104-byte TSS (SDM 8.7)");
    // SAFETY: TSS is leaked 'static memory.
    unsafe { e.ops.load_kernel_stack(0xffff_c900_dead_b000).unwrap() };
    // SAFETY: nothing else writes this test's TSS.
    let tss = unsafe { e.tss.read() };
    // SAFETY: a Tss64 is 104 bytes of integers without padding.
    let bytes: [u8; 104] = unsafe { std::mem::transmute(tss) };
    assert_eq!(&bytes[4..12], &0xffff_c900_dead_b000u64.to_le_bytes());
    assert_eq!({ tss.rsp }[0], 0xffff_c900_dead_b000);
}

#[test]
fn load_tr_errors() {
    let e = env();
    // SAFETY: leaked 'static tables.
    unsafe {
        // No GDT loaded yet.
        assert!(matches!(
            e.ops.load_tr(e.tr()),
            Err(PvError::NoTableLoaded { .. })
        ));
        e.ops.load_gdt(&e.gdt).unwrap();
        assert!(matches!(
            e.ops.load_tr(Selector::NULL),
            Err(PvError::BadSelector { .. })
        ));
        assert!(matches!(
            e.ops.load_tr(Selector::ldt(8, Ring::Ring0)),
            Err(PvError::BadSelector { .. })
        ));
        assert!(matches!(
            e.ops.load_tr(Selector::gdt(16, Ring::Ring0)),
            Err(PvError::IndexOutOfRange { .. })
        ));
        assert!(matches!(
            e.ops.load_tr(Selector::gdt(15, Ring::Ring0)),
            Err(PvError::DoubleSlotPastEnd { .. })
        ));
        // A code segment is not a TSS.
        let err = e.ops.load_tr(Selector::gdt(2, Ring::Ring0)).unwrap_err();
        assert!(
            err.to_string().contains("expected an available TSS"),
            "{err}"
        );
        // Not present.
        let mut f = e.tss_desc().fields();
        f.present = false;
        e.ops
            .write_gdt_entry(&e.gdt, 8, SystemDescriptor::from_fields(f).unwrap().into())
            .unwrap();
        let err = e.ops.load_tr(e.tr()).unwrap_err();
        assert!(err.to_string().contains("P is clear"), "{err}");
        // Busy after a successful load.
        e.ops
            .write_gdt_entry(&e.gdt, 8, e.tss_desc().into())
            .unwrap();
        e.ops.load_tr(e.tr()).unwrap();
        let err = e.ops.load_tr(e.tr()).unwrap_err();
        assert!(err.to_string().contains("busy"), "{err}");
        // Rewriting the descriptor (clearing busy) makes it loadable again.
        e.ops
            .write_gdt_entry(&e.gdt, 8, e.tss_desc().into())
            .unwrap();
        e.ops.load_tr(e.tr()).unwrap();
    }
    // Only the two successful loads reached the CPU.
    assert_eq!(
        e.ops.cpu().log().iter().filter(|r| r.insn == "ltr").count(),
        2
    );
}

#[test]
fn load_kernel_stack_needs_tr() {
    let e = env();
    // SAFETY: nothing is written when it fails.
    let err = unsafe { e.ops.load_kernel_stack(0x1000) }.unwrap_err();
    assert!(err.to_string().contains("load_tr must run first"), "{err}");
}

#[test]
fn load_ldt_writes_descriptor_and_lldt() {
    let e = env();
    e.boot();
    // SAFETY: leaked 'static tables.
    unsafe {
        e.ops.alloc_ldt(&e.ldt).unwrap();
        e.ops.load_ldt(Some(&e.ldt)).unwrap();
    }
    let low = e.gdt_store.read(LAYOUT.ldt as usize).unwrap();
    let high = e.gdt_store.read(LAYOUT.ldt as usize + 1).unwrap();
    let d = SystemDescriptor {
        low: low.0,
        high: high.0,
    };
    assert_eq!(d.system_type(), SystemType::Ldt);
    assert_eq!(d.base(), e.ldt.base());
    assert_eq!(d.effective_limit(), 8 * 8 - 1);
    let regs = e.ops.cpu().registers();
    assert_eq!(regs.ldtr, Selector::gdt(LAYOUT.ldt, Ring::Ring0));
    assert_eq!(regs.ldtr_base, e.ldt.base());
    assert_eq!(e.ops.store_ldt().unwrap(), Some(e.ldt));
    // SAFETY: as above.
    unsafe {
        e.ops.load_ldt(None).unwrap();
        e.ops.free_ldt(&e.ldt).unwrap();
    }
    assert_eq!(e.ops.cpu().registers().ldtr, Selector::NULL);
    assert_eq!(e.ops.store_ldt().unwrap(), None);
}

#[test]
fn load_tls_and_lazy_mode() {
    let e = env();
    // SAFETY: the failing call writes nothing.
    let r = unsafe { e.ops.load_tls(&[Descriptor::NULL; 3]) };
    assert!(matches!(r, Err(PvError::NoTableLoaded { .. })));
    e.boot();
    let tls = [
        Descriptor::data_segment(0x7000_0000, 0xfff, Ring::Ring3).unwrap(),
        Descriptor::NULL,
        Descriptor::data_segment(0x7100_0000, 0xffff_ffff, Ring::Ring3).unwrap(),
    ];
    e.ops.enter_lazy_cpu().unwrap();
    assert_eq!(
        e.ops.enter_lazy_cpu(),
        Err(PvError::LazyModeMismatch {
            op: "enter_lazy_cpu"
        })
    );
    // SAFETY: leaked 'static tables.
    unsafe { e.ops.load_tls(&tls).unwrap() };
    e.ops.flush_lazy().unwrap();
    e.ops.leave_lazy_cpu().unwrap();
    assert_eq!(
        e.ops.leave_lazy_cpu(),
        Err(PvError::LazyModeMismatch {
            op: "leave_lazy_cpu"
        })
    );
    for (i, t) in tls.iter().enumerate() {
        assert_eq!(e.gdt_store.read(LAYOUT.tls_first as usize + i), Some(*t));
    }
    // A GDT too small for the TLS slots: refused before any slot is written.
    let small = Gdt::new(e.gdt.base(), 13).unwrap();
    // SAFETY: leaked 'static tables.
    unsafe { e.ops.load_gdt(&small).unwrap() };
    let before = e.gdt_store.read(12);
    // SAFETY: as above.
    let r = unsafe { e.ops.load_tls(&[presets::USER_DATA; 3]) };
    assert!(matches!(r, Err(PvError::IndexOutOfRange { index: 14, .. })));
    assert_eq!(e.gdt_store.read(12), before, "all or nothing");
}

#[test]
fn soft_cpu_faults_like_hardware() {
    let e = env();
    let cpu = e.ops.cpu();
    // SAFETY: leaked 'static tables; the faults are modelled, not taken.
    unsafe {
        let bad = DescriptorTablePointer {
            limit: 7,
            base: 0x0000_8000_0000_0000,
        };
        assert!(matches!(
            cpu.lgdt(&bad),
            Err(PvError::CpuFault {
                insn: "lgdt",
                vector: 13,
                error_code: 0
            })
        ));
        cpu.lgdt(&e.gdt.pointer()).unwrap();
        // LTR on a code segment: #GP(selector).
        assert!(matches!(
            cpu.ltr(Selector(0x10)),
            Err(PvError::CpuFault {
                vector: 13,
                error_code: 0x10,
                ..
            })
        ));
        // LTR on the null selector: #GP(0).
        assert!(matches!(
            cpu.ltr(Selector(0)),
            Err(PvError::CpuFault {
                vector: 13,
                error_code: 0,
                ..
            })
        ));
        // Not-present LDT descriptor: #NP(selector).
        let mut f = SystemDescriptor::ldt(e.ldt.base(), 8).unwrap().fields();
        f.present = false;
        e.ops
            .write_gdt_entry(&e.gdt, 10, SystemDescriptor::from_fields(f).unwrap().into())
            .unwrap();
        assert!(matches!(
            cpu.lldt(Selector(0x50)),
            Err(PvError::CpuFault {
                vector: 11,
                error_code: 0x50,
                ..
            })
        ));
        // Past the GDT limit (16-byte descriptor at the last slot).
        assert!(matches!(
            cpu.lldt(Selector(15 << 3)),
            Err(PvError::CpuFault { vector: 13, .. })
        ));
    }
    let faults = cpu.log().iter().filter(|r| r.fault.is_some()).count();
    assert_eq!(faults, 5);
}

/// Issue 9: `load_gdt` re-checks the loaded IDT's gates against the new
/// GDT. A GDT whose slot 2 (the gates' `__KERNEL_CS`) is a data segment is
/// refused, naming the gate, and the GDTR keeps the old table.
#[test]
fn load_gdt_rechecks_the_loaded_idts_gates() {
    let e = env();
    e.boot();
    let g = Gate64::interrupt(Selector(0x10), 0xffff_ffff_8123_4567, Ring::Ring0);
    // SAFETY: leaked 'static tables.
    unsafe {
        e.ops.write_idt_entry(&e.idt, 14, g).unwrap();
        e.ops.load_idt(&e.idt).unwrap();
    }
    let mut bad = [Descriptor::NULL; 16];
    bad[2] = presets::KERNEL_DATA;
    let bad_store: &'static DescriptorStorage<16> =
        Box::leak(Box::new(DescriptorStorage::new(bad)));
    // SAFETY: leaked 'static table.
    let err = unsafe { e.ops.load_gdt(&bad_store.gdt().unwrap()) }.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with("load_gdt: IDT vector 14 (#PF): selector 0x0010"),
        "{msg}"
    );
    assert_eq!(
        e.ops.cpu().registers().gdtr,
        e.gdt.pointer(),
        "GDTR unchanged"
    );
    // A GDT with the same code segment loads.
    let mut good = [Descriptor::NULL; 16];
    good[2] = presets::KERNEL_CODE64;
    let good_store: &'static DescriptorStorage<16> =
        Box::leak(Box::new(DescriptorStorage::new(good)));
    // SAFETY: leaked 'static table.
    unsafe { e.ops.load_gdt(&good_store.gdt().unwrap()).unwrap() };
}

mod per_cpu {
    //! Issue 9: one native backend per CPU behind `PerCpu`, each "CPU" a
    //! thread with its own SoftCpu, GDT and TSS, chosen by a CPU-index hook.
    use super::*;
    use pvops::percpu::{CpuIndex, PerCpu};
    use std::cell::Cell;

    std::thread_local! {
        static CPU: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    struct ThreadIsCpu;
    // SAFETY: each test thread sets its own index before any op and never
    // shares it; an op runs on the thread that called it.
    unsafe impl CpuIndex for ThreadIsCpu {
        fn current() -> usize {
            CPU.with(Cell::get)
        }
    }

    type Ops = PerCpu<&'static NativeOps<SoftCpu>, ThreadIsCpu, 2>;

    /// What one CPU read back after bringing itself up.
    #[derive(Debug, PartialEq)]
    struct ReadBack {
        tr: Selector,
        tr_base: u64,
        rsp0: u64,
        gdtr: DescriptorTablePointer,
    }

    fn bring_up(ops: &'static Ops, cpu: usize, rsp0: u64) -> (ReadBack, Env) {
        CPU.with(|c| c.set(cpu));
        // This CPU's own tables and CPU model; `env` builds a fresh set.
        let e = env();
        let mine = *ops.register_current(e.ops).unwrap();
        // SAFETY: leaked 'static tables, this thread's own.
        unsafe {
            ops.load_gdt(&e.gdt).unwrap();
            ops.write_gdt_entry(&e.gdt, LAYOUT.tss as u32, e.tss_desc().into())
                .unwrap();
            ops.load_tr(e.tr()).unwrap();
            ops.load_kernel_stack(rsp0).unwrap();
        }
        let regs = mine.cpu().registers();
        // SAFETY: this thread's own TSS; its ops have returned.
        let rsp = unsafe { e.tss.read() }.rsp;
        let back = ReadBack {
            tr: ops.store_tr().unwrap(),
            tr_base: regs.tr_base,
            rsp0: rsp[0],
            gdtr: ops.store_gdt().unwrap(),
        };
        (back, e)
    }

    #[test]
    fn each_cpu_loads_its_own_gdt_tss_and_kernel_stack() {
        let ops: &'static Ops = Box::leak(Box::new(Ops::new()));
        let table: &'static OpsTable = Box::leak(Box::new(OpsTable::new(ops)));
        let stacks = [0xffff_c900_0000_a000u64, 0xffff_c900_0000_b000];
        let results: Vec<(ReadBack, Env)> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..2)
                .map(|cpu| {
                    s.spawn(move || {
                        // Through the dynamic table, as a kernel would.
                        let (back, e) = bring_up(ops, cpu, stacks[cpu]);
                        assert_eq!(table.store_gdt().unwrap(), back.gdtr);
                        (back, e)
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (cpu, (back, e)) in results.iter().enumerate() {
            assert_eq!(back.tr, e.tr(), "CPU {cpu} TR");
            assert_eq!(
                back.tr_base,
                e.tss.base(),
                "CPU {cpu}: TR names its own TSS"
            );
            assert_eq!(back.rsp0, stacks[cpu], "CPU {cpu}: its own TSS.rsp0");
            assert_eq!(back.gdtr, e.gdt.pointer(), "CPU {cpu}: its own GDT");
        }
        assert_ne!(results[0].1.tss.base(), results[1].1.tss.base());
        // Each backend's lazy state is its own: CPU 0 in lazy mode does not
        // put CPU 1 there.
        CPU.with(|c| c.set(0));
        ops.enter_lazy_cpu().unwrap();
        CPU.with(|c| c.set(1));
        ops.enter_lazy_cpu().unwrap();
        ops.leave_lazy_cpu().unwrap();
        CPU.with(|c| c.set(0));
        ops.leave_lazy_cpu().unwrap();
    }

    #[test]
    fn a_cpu_without_a_backend_is_refused_not_given_another() {
        let ops: &'static Ops = Box::leak(Box::new(Ops::new()));
        let e = env();
        ops.register(0, e.ops).unwrap();
        CPU.with(|c| c.set(1));
        let err = ops.store_tr().unwrap_err();
        assert_eq!(
            err.to_string(),
            "store_tr: CPU index 1 (of 2 per-CPU slots) has no backend registered"
        );
        CPU.with(|c| c.set(7));
        // SAFETY: refused before anything runs.
        let err = unsafe { ops.load_gdt(&e.gdt) }.unwrap_err();
        assert_eq!(
            err.to_string(),
            "load_gdt: CPU index 7 (of 2 per-CPU slots) is out of range"
        );
        let again = ops.register(0, env().ops);
        assert!(matches!(again, Err(PvError::PerCpu { cpu: 0, .. })));
        assert!(e.ops.cpu().log().is_empty());
    }
}

/// The typed conveniences on a real backend: a safe GDT load of `'static`
/// storage, `set_handler` with a function, the TSS storage's descriptor,
/// and the default `alloc_ldt`/`free_ldt` of the trait.
#[test]
fn typed_conveniences_through_the_native_backend() {
    static GDT: DescriptorStorage<16> = DescriptorStorage::new(presets::LINUX_X86_64_GDT);
    static TSS: TssStorage<Tss64> = TssStorage::new(Tss64::new());
    extern "C" fn isr_page_fault() {} // stands in for an entry stub
    // One fn pointer for the gate and the check: two coercions of the same
    // function need not give one address (under Miri they do not).
    let isr_page_fault: unsafe extern "C" fn() = isr_page_fault;
    let e = env();
    let gdt = GDT.load_gdt(e.ops).unwrap();
    let regs = e.ops.cpu().registers();
    assert_eq!(regs.gdtr, gdt.pointer());
    assert_eq!(regs.gdtr.base, GDT.base());
    // SAFETY: static TSS and this test's leaked IDT.
    unsafe {
        e.ops
            .write_gdt_entry(&gdt, LAYOUT.tss.into(), TSS.descriptor().unwrap().into())
            .unwrap();
        e.ops.load_tr(presets::TSS_SELECTOR).unwrap();
        e.ops
            .set_handler(
                &e.idt,
                Exception::PageFault,
                presets::KERNEL_CS,
                isr_page_fault,
            )
            .unwrap();
        e.ops.load_idt(&e.idt).unwrap();
    }
    let regs = e.ops.cpu().registers();
    assert_eq!((regs.tr, regs.tr_base), (presets::TSS_SELECTOR, TSS.base()));
    let gate = e.idt_store.read(14).unwrap();
    assert_eq!(gate.offset(), isr_page_fault as *const () as usize as u64);
    assert_eq!(gate.selector(), Selector(0x10));
    assert_eq!(gate.kind(), Some(GateKind::Interrupt));
    // The native backend's own alloc_ldt/free_ldt and a backend using the
    // trait's defaults (VMI, in vmi_backend.rs) both accept any LDT.
    // SAFETY: this test's leaked LDT, not loaded.
    unsafe {
        e.ops.alloc_ldt(&e.ldt).unwrap();
        e.ops.free_ldt(&e.ldt).unwrap();
    }
}
