//! `hv-sim demo`'s in-process runs: every descriptor op, run and checked
//! (moved here from hv-sim's library, which holds the models and runners
//! only; issue 14).
//!
//! [`run_native_in_process`] runs the native backend in-process against
//! [`SoftCpu`], the instruction model, through the dynamic ops table (as a
//! kernel that picked its backend at boot would), and checks each op's
//! effect on the CPU model's registers and on the tables in memory.
//! [`run_xen_in_process`] and [`run_vmi_in_process`] do the same for the
//! paravirtual backends against hv-sim's personalities: what `demo` shows
//! where there is no KVM. The KVM and QEMU boots are `hv_sim::kvm` and
//! `hv_sim::qemu`.

use pvops::descriptor::SystemType;
use pvops::{
    Descriptor, DescriptorOps, DescriptorStorage, GdtEntry, GdtLayout, IdtGate, IdtStorage,
    OpsTable, PvError, Ring, Selector, SystemDescriptor, Tss64, TssStorage, presets,
};
use pvops_native::NativeOps;

use hv_sim::softcpu::{CpuMode, HostMemory, SoftCpu};

/// One named check and whether it passed.
#[derive(Clone, Debug)]
pub struct Check {
    /// Name.
    pub name: &'static str,
    /// Passed?
    pub passed: bool,
    /// What was observed.
    pub detail: String,
}

/// What the demo did.
pub struct DemoReport {
    /// Backend name.
    pub backend: &'static str,
    /// Checks in order.
    pub checks: Vec<Check>,
    /// Instructions the CPU model executed, formatted.
    pub instructions: Vec<String>,
    /// Hypercalls / ROM calls the simulated hypervisor handled.
    pub hypercalls: u64,
}

const LAYOUT: GdtLayout = GdtLayout::LINUX_X86_64;
/// The kernel stack the demo's TSS checks record.
const SP0: u64 = 0xffff_c900_0001_0000;

/// `ok`, or the error's text.
fn res<T, E: core::fmt::Display>(r: &Result<T, E>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => e.to_string(),
    }
}

/// A table register: base and limit in hex.
fn dtr(p: pvops::DescriptorTablePointer) -> String {
    format!("base {:#x} limit {:#x}", p.base, p.limit)
}

fn check(checks: &mut Vec<Check>, name: &'static str, passed: bool, detail: String) {
    checks.push(Check {
        name,
        passed,
        detail,
    });
}

/// The demo's tables: leaked, 'static host memory the CPU model reads
/// through [`HostMemory`].
struct Leaked {
    gdt_store: &'static DescriptorStorage<16>,
    idt_store: &'static IdtStorage<256>,
    ldt_store: &'static DescriptorStorage<4>,
    /// The backend writes rsp0 into it through its address: TssStorage
    /// keeps it in an UnsafeCell.
    tss: &'static TssStorage<Tss64>,
    gdt: pvops::Gdt,
    idt: pvops::Idt,
    ldt: pvops::Ldt,
}

impl Leaked {
    /// Fresh tables (Linux's GDT, an empty IDT and LDT, a TSS), or `None`
    /// if the storage is refused.
    fn new() -> Option<Leaked> {
        let gdt_store: &'static DescriptorStorage<16> =
            Box::leak(Box::new(DescriptorStorage::new(presets::LINUX_X86_64_GDT)));
        let idt_store: &'static IdtStorage<256> =
            Box::leak(Box::new(IdtStorage::new([IdtGate::MISSING; 256])));
        let ldt_store: &'static DescriptorStorage<4> =
            Box::leak(Box::new(DescriptorStorage::new([Descriptor::NULL; 4])));
        let tss: &'static TssStorage<Tss64> = Box::leak(Box::new(TssStorage::new(Tss64::new())));
        Some(Leaked {
            gdt: gdt_store.gdt().ok()?,
            idt: idt_store.idt().ok()?,
            ldt: ldt_store.ldt().ok()?,
            gdt_store,
            idt_store,
            ldt_store,
            tss,
        })
    }
}

/// Run every op through `ops` (which must drive `cpu`), checking effects.
fn exercise<O: DescriptorOps>(ops: &O, cpu: &SoftCpu<HostMemory>) -> Vec<Check> {
    let mut c = Vec::new();
    let Some(l) = Leaked::new() else {
        check(&mut c, "tables", false, "table storage rejected".into());
        return c;
    };
    descriptor_tables(ops, cpu, &l, &mut c);
    let Ok(tss_desc) = l.tss.descriptor() else {
        check(&mut c, "tables", false, "TSS descriptor refused".into());
        return c;
    };
    task_register(ops, cpu, &l, tss_desc, &mut c);
    ldt_and_switch(ops, cpu, &l, &mut c);
    refusals(ops, &l, tss_desc, &mut c);
    c
}

/// load_gdt, load_idt and an IDT gate.
fn descriptor_tables<O: DescriptorOps>(
    ops: &O,
    cpu: &SoftCpu<HostMemory>,
    l: &Leaked,
    c: &mut Vec<Check>,
) {
    // SAFETY: all tables are leaked 'static host memory ([`Leaked`]); the
    // CPU model reads them through HostMemory, whose contract this
    // satisfies.
    unsafe {
        let r = ops.load_gdt(&l.gdt);
        let seen = ops.store_gdt();
        check(
            c,
            "load_gdt/store_gdt",
            r.is_ok() && seen == Ok(l.gdt.pointer()) && cpu.registers().gdtr == l.gdt.pointer(),
            format!("{}, GDTR {}", res(&r), dtr(cpu.registers().gdtr)),
        );

        let r = ops.load_idt(&l.idt);
        check(
            c,
            "load_idt/store_idt",
            r.is_ok() && ops.store_idt() == Ok(l.idt.pointer()),
            format!("{}, IDTR {}", res(&r), dtr(cpu.registers().idtr)),
        );

        let handler = 0xffff_ffff_8100_0000u64;
        let gate = pvops::Gate64::trap(Selector::gdt(2, Ring::Ring0), handler, Ring::Ring3);
        let r = ops.write_idt_entry(&l.idt, 3, gate);
        check(
            c,
            "write_idt_entry (int3, DPL3 trap gate)",
            r.is_ok() && l.idt_store.read(3) == Some(gate),
            format!(
                "{}, IDT[3] {}",
                res(&r),
                l.idt_store
                    .read(3)
                    .map_or("unreadable".into(), |g| g.to_string())
            ),
        );
    }
}

/// The TSS descriptor, load_tr (busy bit, refused when busy) and
/// load_kernel_stack.
fn task_register<O: DescriptorOps>(
    ops: &O,
    cpu: &SoftCpu<HostMemory>,
    l: &Leaked,
    tss_desc: SystemDescriptor,
    c: &mut Vec<Check>,
) {
    // SAFETY: as in [`descriptor_tables`].
    unsafe {
        let r = ops.write_gdt_entry(&l.gdt, LAYOUT.tss as u32, GdtEntry::Double(tss_desc));
        let tr = Selector::gdt(LAYOUT.tss, Ring::Ring0);
        let r2 = ops.load_tr(tr);
        let busy = l
            .gdt_store
            .read(LAYOUT.tss as usize)
            .map(|d| d.system_type() == SystemType::TssBusy);
        check(
            c,
            "load_tr sets TR and the busy bit",
            r.is_ok() && r2.is_ok() && ops.store_tr() == Ok(tr) && busy == Some(true),
            format!(
                "write {}, ltr {}, TR {}, busy {}",
                res(&r),
                res(&r2),
                cpu.registers().tr,
                busy.map_or("unreadable", |b| if b { "yes" } else { "no" })
            ),
        );

        let again = ops.load_tr(tr);
        check(
            c,
            "load_tr refuses a busy TSS",
            matches!(again, Err(PvError::WrongDescriptorType { .. })),
            again
                .as_ref()
                .map_or_else(|e| e.to_string(), |_| "accepted".into()),
        );

        let r = ops.load_kernel_stack(SP0);
        // One thread: the op that wrote the TSS has returned, so nothing
        // writes it during `read` (the enclosing block's SAFETY covers it).
        let stored = l.tss.read().rsp[0];
        check(
            c,
            "load_kernel_stack writes TSS.rsp0",
            r.is_ok() && stored == SP0,
            format!("{}, rsp0 {stored:#x}", res(&r)),
        );
    }
}

/// alloc_ldt, an LDT entry, load_ldt, and a context switch in lazy mode.
fn ldt_and_switch<O: DescriptorOps>(
    ops: &O,
    cpu: &SoftCpu<HostMemory>,
    l: &Leaked,
    c: &mut Vec<Check>,
) {
    // SAFETY: as in [`descriptor_tables`].
    unsafe {
        let r0 = ops.alloc_ldt(&l.ldt);
        let code = presets::USER_CODE32;
        let r1 = ops.write_ldt_entry(&l.ldt, 1, code);
        let r2 = ops.load_ldt(Some(&l.ldt));
        let regs = cpu.registers();
        check(
            c,
            "load_ldt installs the LDT",
            r0.is_ok()
                && r1.is_ok()
                && r2.is_ok()
                && l.ldt_store.read(1) == Some(code)
                && ops.store_ldt() == Ok(Some(l.ldt))
                && regs.ldtr == Selector::gdt(LAYOUT.ldt, Ring::Ring0)
                && regs.ldtr_base == l.ldt.base(),
            format!(
                "{}, LDTR {} base {:#x}",
                res(&r2),
                regs.ldtr,
                regs.ldtr_base
            ),
        );

        let tls = [
            Descriptor::data_segment(0x1000, 0xfff, Ring::Ring3).unwrap_or_default(),
            Descriptor::data_segment(0x2000, 0xfff, Ring::Ring3).unwrap_or_default(),
            Descriptor::NULL,
        ];
        let e = ops.enter_lazy_cpu();
        let a = ops.load_tls(&tls);
        let b = ops.load_kernel_stack(SP0 + 0x4000);
        let d = ops.load_ldt(None);
        let left = ops.leave_lazy_cpu();
        let slots: Vec<_> = (0..3)
            .map(|i| l.gdt_store.read(LAYOUT.tls_first as usize + i))
            .collect();
        check(
            c,
            "context switch in lazy mode (load_tls, load_kernel_stack, load_ldt)",
            [e, a, b, d, left].iter().all(Result::is_ok)
                && slots == tls.iter().map(|t| Some(*t)).collect::<Vec<_>>()
                && ops.store_ldt() == Ok(None),
            format!(
                "TLS slots {}",
                slots
                    .iter()
                    .map(|d| d.map_or("unreadable".into(), |d| format!("{:#018x}", d.0)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
    }
}

/// Bad writes and a bad load_tr are refused with the rule broken.
fn refusals<O: DescriptorOps>(ops: &O, l: &Leaked, tss_desc: SystemDescriptor, c: &mut Vec<Check>) {
    // SAFETY: as in [`descriptor_tables`].
    unsafe {
        let past = ops.write_gdt_entry(&l.gdt, 16, GdtEntry::Single(Descriptor::NULL));
        let last = ops.write_gdt_entry(&l.gdt, 15, GdtEntry::Double(tss_desc));
        check(
            c,
            "bad writes are refused (index past GDT, 16-byte entry in last slot)",
            matches!(past, Err(PvError::IndexOutOfRange { .. }))
                && matches!(last, Err(PvError::DoubleSlotPastEnd { .. })),
            format!(
                "{}; {}",
                past.as_ref()
                    .map_or_else(|e| e.to_string(), |_| "accepted".into()),
                last.as_ref()
                    .map_or_else(|e| e.to_string(), |_| "accepted".into())
            ),
        );

        let bad = ops.load_tr(Selector::ldt(1, Ring::Ring0));
        check(
            c,
            "load_tr refuses an LDT selector",
            matches!(bad, Err(PvError::BadSelector { .. })),
            bad.as_ref()
                .map_or_else(|e| e.to_string(), |_| "accepted".into()),
        );
    }
}

/// Run the in-process native demo through the dynamic ops table.
pub fn run_native_in_process() -> DemoReport {
    // SAFETY: the demo only hands the CPU model addresses of leaked,
    // 'static, 8-byte-aligned host allocations.
    let mem = unsafe { HostMemory::new() };
    let backend: &'static NativeOps<SoftCpu> = Box::leak(Box::new(NativeOps::with_cpu(
        SoftCpu::new(mem, CpuMode::Long),
        LAYOUT,
    )));
    let table = OpsTable::new(backend);
    let checks = exercise(&table, backend.cpu());
    let instructions = backend
        .cpu()
        .log()
        .iter()
        .map(|r| match r.fault {
            None => format!("{} {:#x}", r.insn, r.operand),
            Some((v, ec)) => format!(
                "{} {:#x} -> {}({ec:#x})",
                r.insn,
                r.operand,
                pvops::error::vector_name(v)
            ),
        })
        .collect();
    DemoReport {
        backend: "native",
        checks,
        instructions,
        hypercalls: 0,
    }
}

/// The Xen-style backend in-process against hv-sim's Xen PV domain: what
/// `demo` runs where there is no KVM to boot the kernel with.
pub fn run_xen_in_process() -> DemoReport {
    use hv_sim::xen::XenDomain;
    use pvops::{Gdt, Idt, Ldt};
    let mut c = Vec::new();
    let dom = XenDomain::pv64(64, 1);
    let (gdt_va, idt_va, ldt_va) = (dom.alloc_pages(1), dom.alloc_pages(1), dom.alloc_pages(1));
    for (i, d) in presets::LINUX_X86_64_GDT.iter().enumerate() {
        dom.host_write_u64(gdt_va + 8 * i as u64, d.0);
    }
    let (Ok(gdt), Ok(idt), Ok(ldt)) = (
        Gdt::new(gdt_va, 16),
        Idt::new(idt_va, 256),
        Ldt::new(ldt_va, 8),
    ) else {
        check(&mut c, "tables", false, "table handles rejected".into());
        return DemoReport {
            backend: "xen",
            checks: c,
            instructions: Vec::new(),
            hypercalls: 0,
        };
    };
    let ops = pvops_xen::XenOps::new(dom.vcpu_handle(0), LAYOUT);
    xen_gdt(&ops, &dom, &gdt, &mut c);
    xen_idt_ldt_switch(&ops, &dom, &idt, &ldt, &mut c);
    let hypercalls = dom.trace().calls().count() as u64;
    DemoReport {
        backend: "xen",
        checks: c,
        instructions: Vec::new(),
        hypercalls,
    }
}

/// The Xen demo's GDT checks: set_gdt, the guest's view, a refused call
/// gate, update_descriptor.
fn xen_gdt<O: DescriptorOps>(
    ops: &O,
    dom: &hv_sim::xen::XenDomain,
    gdt: &pvops::Gdt,
    c: &mut Vec<Check>,
) {
    // SAFETY: the GDT is in the domain's RAM, which outlives `ops`.
    unsafe {
        let r = ops.load_gdt(gdt);
        let v = dom.vcpu(0);
        let cs = Descriptor(dom.gdt_entry(0, 2));
        check(
            c,
            "load_gdt -> set_gdt (machine frames, DPL 0 raised to 3)",
            r.is_ok() && v.gdt_ents == 16 && cs.dpl() == Ring::Ring3,
            format!(
                "{}, frames {}",
                res(&r),
                v.gdt_frames
                    .iter()
                    .map(|f| format!("{f:#x}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
        check(
            c,
            "store_gdt is the guest's view",
            ops.store_gdt() == Ok(gdt.pointer()),
            format!("GDTR {}", dtr(gdt.pointer())),
        );
        let gate = pvops::Gate64::call(Selector(0xe008), 0x1000, Ring::Ring0);
        let bad = ops.write_gdt_entry(
            gdt,
            12,
            GdtEntry::Double(SystemDescriptor {
                low: gate.low,
                high: gate.high,
            }),
        );
        check(
            c,
            "a call gate to a Xen selector is refused with -EINVAL",
            matches!(
                bad,
                Err(PvError::Hypervisor {
                    errno: pvops::Errno::EINVAL,
                    ..
                })
            ),
            bad.as_ref()
                .map_or_else(|e| e.to_string(), |_| "accepted".into()),
        );
        let r = ops.write_gdt_entry(gdt, 7, GdtEntry::Single(presets::USER_DATA));
        check(
            c,
            "write_gdt_entry -> update_descriptor at the slot's machine address",
            r.is_ok() && dom.gdt_entry(0, 7) == presets::USER_DATA.0,
            res(&r),
        );
    }
}

/// The Xen demo's trap table, LDT and a lazy-mode context switch (one
/// multicall).
fn xen_idt_ldt_switch<O: DescriptorOps>(
    ops: &O,
    dom: &hv_sim::xen::XenDomain,
    idt: &pvops::Idt,
    ldt: &pvops::Ldt,
    c: &mut Vec<Check>,
) {
    use hv_sim::xen::XenDomain;
    use pvops::Gate64;
    // SAFETY: the tables are in the domain's RAM, which outlives `ops`.
    unsafe {
        let pf = 0xffff_ffff_8100_0100u64;
        let r = ops
            .write_idt_entry(idt, 14, Gate64::interrupt(Selector(0x10), pf, Ring::Ring0))
            .and_then(|()| ops.load_idt(idt));
        let t = dom.vcpu(0).trap_table[14];
        check(
            c,
            "load_idt -> set_trap_table (interrupt gate: events masked)",
            r.is_ok() && t.address == pf && t.flags & 4 == 4,
            res(&r),
        );
        let r = ops.alloc_ldt(ldt).and_then(|()| ops.load_ldt(Some(ldt)));
        let v = dom.vcpu(0);
        check(
            c,
            "load_ldt -> MMUEXT_SET_LDT",
            r.is_ok() && v.ldt_base == ldt.base() && v.ldt_ents == 8,
            res(&r),
        );
        let direct = |d: &XenDomain| {
            d.trace()
                .calls()
                .filter(|e| matches!(e, hv_sim::xen::TraceEvent::Call { depth: 0, .. }))
                .count()
        };
        let before = direct(dom);
        let tls = [presets::USER_DATA, Descriptor::NULL, Descriptor::NULL];
        let r = ops
            .enter_lazy_cpu()
            .and_then(|()| ops.load_tls(&tls))
            .and_then(|()| ops.load_kernel_stack(0xffff_c900_0000_8000))
            .and_then(|()| ops.load_ldt(None))
            .and_then(|()| ops.leave_lazy_cpu());
        let sent = direct(dom) - before;
        check(
            c,
            "context switch in lazy mode is one multicall",
            r.is_ok()
                && sent == 1
                && dom.vcpu(0).kernel_sp == 0xffff_c900_0000_8000
                && dom.vcpu(0).ldt_ents == 0,
            format!("{}, {sent} direct hypercall(s)", res(&r)),
        );
    }
}

/// The VMI-style backend in-process against hv-sim's VMI personality.
pub fn run_vmi_in_process() -> DemoReport {
    use hv_sim::vmi::{GuestKind, HostGuestMemory, VmiHypervisor};
    let mut c = Vec::new();
    // SAFETY: the backend only passes pointers to the leaked tables below and
    // to DTR operands on its own stack.
    let hv: &'static VmiHypervisor<HostGuestMemory> =
        Box::leak(Box::new(VmiHypervisor::new(GuestKind::Vmi64, unsafe {
            HostGuestMemory::new()
        })));
    let rom = match pvops_vmi::rom::probe(hv) {
        Ok(r) => r,
        Err(e) => {
            check(&mut c, "probe finds hv-sim's ROM", false, e.to_string());
            return DemoReport {
                backend: "vmi",
                checks: c,
                instructions: Vec::new(),
                hypercalls: 0,
            };
        }
    };
    check(
        &mut c,
        "probe finds hv-sim's ROM",
        true,
        format!("at {:#x}", rom.base),
    );
    // SAFETY: the CPU model only sees the leaked tables.
    let native = NativeOps::with_cpu(
        SoftCpu::new(unsafe { HostMemory::new() }, CpuMode::Long),
        LAYOUT,
    );
    // SAFETY: the ROM passed the probe.
    let ops = match unsafe { pvops_vmi::VmiOps::init(hv, rom, LAYOUT, native) } {
        Ok(o) => o,
        Err(e) => {
            check(
                &mut c,
                "VMI_Init and relocation queries",
                false,
                e.to_string(),
            );
            return DemoReport {
                backend: "vmi",
                checks: c,
                instructions: Vec::new(),
                hypercalls: 0,
            };
        }
    };
    check(
        &mut c,
        "VMI_Init and relocation queries",
        true,
        format!("ROM at {:#x} initialised", rom.base),
    );
    let gdt_store: &'static DescriptorStorage<16> =
        Box::leak(Box::new(DescriptorStorage::new(presets::LINUX_X86_64_GDT)));
    let ldt_store: &'static DescriptorStorage<8> =
        Box::leak(Box::new(DescriptorStorage::new([Descriptor::NULL; 8])));
    let (Ok(gdt), Ok(ldt)) = (gdt_store.gdt(), ldt_store.ldt()) else {
        check(&mut c, "tables", false, "table storage rejected".into());
        return DemoReport {
            backend: "vmi",
            checks: c,
            instructions: Vec::new(),
            hypercalls: 0,
        };
    };
    // SAFETY: leaked 'static tables.
    unsafe {
        let r = ops.load_gdt(&gdt);
        let eff = hv.effective();
        check(
            &mut c,
            "SetGDT: GetGDT answers the guest's view, the effective GDT is fixed up elsewhere",
            r.is_ok()
                && ops.store_gdt() == Ok(gdt.pointer())
                && eff.gdt_base != gdt.base()
                && eff
                    .gdt
                    .get(2)
                    .is_some_and(|d| Descriptor(*d).dpl() == Ring::Ring3),
            format!("{}, effective GDT at {:#x}", res(&r), eff.gdt_base),
        );
        let r = ops
            .write_ldt_entry(&ldt, 1, presets::USER_DATA)
            .and_then(|()| ops.load_ldt(Some(&ldt)));
        check(
            &mut c,
            "load_ldt: WriteGDTEntry of the LDT descriptor, then SetLDT",
            r.is_ok() && ops.store_ldt() == Ok(Some(ldt)) && hv.effective().ldt_base == ldt.base(),
            res(&r),
        );
        let tls = [presets::USER_DATA, Descriptor::NULL, Descriptor::NULL];
        let r = ops
            .enter_lazy_cpu()
            .and_then(|()| ops.load_tls(&tls))
            .and_then(|()| ops.leave_lazy_cpu());
        check(
            &mut c,
            "load_tls in lazy mode (SetLazyMode 2 .. 0)",
            r.is_ok() && hv.effective().gdt.get(12) == Some(&presets::USER_DATA.0),
            res(&r),
        );
    }
    let hypercalls = hv.trace().call_numbers().len() as u64;
    DemoReport {
        backend: "vmi",
        checks: c,
        instructions: Vec::new(),
        hypercalls,
    }
}

#[cfg(test)]
mod tests {
    /// The in-process runs pass every check (no KVM needed).
    #[test]
    fn every_in_process_backend_passes() {
        for report in [
            super::run_native_in_process(),
            super::run_xen_in_process(),
            super::run_vmi_in_process(),
        ] {
            let failed: Vec<_> = report.checks.iter().filter(|c| !c.passed).collect();
            assert!(failed.is_empty(), "{}: {failed:#?}", report.backend);
            assert!(report.checks.len() >= 5, "{}", report.backend);
        }
        assert!(super::run_xen_in_process().hypercalls > 0);
        assert!(super::run_vmi_in_process().hypercalls > 0);
    }
}
