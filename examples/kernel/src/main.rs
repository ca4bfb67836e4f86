//! A small freestanding x86_64 kernel that runs every pvops op and checks
//! the effect on the CPU: segment loads from its new GDT, `lar`/`lsl`/`verr`
//! on GDT and LDT selectors, `str`/`sldt`, an `int3`, a `ud2` and a
//! deliberate #GP landing in its own handlers, and a context-switch loop in
//! lazy mode. It reports each check to the host over port I/O (see
//! [`report`]) and exits with the number of failed checks.
//!
//! It picks its backend at boot by CPUID detection and installs it as the
//! dynamic ops table; everything after goes through `pvops::Installed`.
//! Under hv-sim's Xen personality ("XenVMMXenVMM") it builds the Xen-style
//! backend from its hypercall page and the start info ([`xen`]) and runs
//! the checks that make sense for a PV guest ([`run_xen_checks`]). When
//! CPUID shows no Xen it probes the option-ROM window for a VMI ROM; under
//! hv-sim's VMI personality it finds one, builds the VMI-style backend on it
//! ([`vmi`]) and runs [`run_vmi_checks`]. Otherwise the native backend and
//! [`run_checks`].
//!
//! Entry: `_start` in 64-bit mode with paging on (hv-sim's KVM runner sets
//! up long mode and an identity map of the first GiB), boot flags in rdi,
//! the Xen personality's start info (or 0) in rsi.

#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]

mod battery;
mod hostile;
mod pvh;
mod report;
mod smp;
mod vmi;
mod workload;
mod xen;

use core::arch::{asm, naked_asm};
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use pvops::{
    Descriptor, DescriptorOps, DescriptorStorage, GdtEntry, GdtLayout, IdtGate, IdtStorage,
    Installed, OpsTable, Ring, Selector, SystemDescriptor, TableStorage, presets,
};
use pvops_native::NativeOps;
use report::Tally;

const LAYOUT: GdtLayout = GdtLayout::LINUX_X86_64;
const KERNEL_CS: u16 = 0x10;
const KERNEL_DS: u16 = 0x18;
const TSS_SEL: Selector = Selector::gdt(LAYOUT.tss, Ring::Ring0);
const LDT_SEL: Selector = Selector::gdt(LAYOUT.ldt, Ring::Ring0);

static GDT: DescriptorStorage<16> = DescriptorStorage::new(presets::LINUX_X86_64_GDT);
static IDT: IdtStorage<256> = IdtStorage::new([IdtGate::MISSING; 256]);
static LDT: DescriptorStorage<4> = DescriptorStorage::new([Descriptor::NULL; 4]);
static TSS: TableStorage<u64, 13> = TableStorage::new([0; 13]);

static BP_COUNT: AtomicU32 = AtomicU32::new(0);
static UD_COUNT: AtomicU32 = AtomicU32::new(0);
static GP_COUNT: AtomicU32 = AtomicU32::new(0);
static GP_ERROR: AtomicU64 = AtomicU64::new(0);
static PF_COUNT: AtomicU32 = AtomicU32::new(0);
/// A value read back through an FS segment whose base is set by load_tls.
static TLS_PROBE: AtomicU64 = AtomicU64::new(0x7e57_7e57_0000_0001);
/// A value read back through an FS segment loaded from the LDT.
static LDT_PROBE: AtomicU64 = AtomicU64::new(0x001d_71d7_0000_0002);
/// A second TLS probe (lazy-mode deferral check).
static TLS_PROBE2: AtomicU64 = AtomicU64::new(0x7e57_7e57_0000_0003);
/// A second LDT probe (an entry written into the loaded LDT).
static LDT_PROBE2: AtomicU64 = AtomicU64::new(0x001d_71d7_0000_0004);

/// Boot flags hv-sim passes in rdi (or, to a Xen guest, in its command
/// line); the one definition both sides use.
pub use hvsim_boot_protocol::boot_flags;

#[repr(C, align(16))]
struct Stack([u8; 64 * 1024]);
static mut STACK: Stack = Stack([0; 64 * 1024]);

/// Entry point: switch to our own stack, then `kmain`.
#[unsafe(no_mangle)]
#[unsafe(naked)]
#[unsafe(link_section = ".text._start")]
pub extern "C" fn _start() -> ! {
    naked_asm!(
        "lea rsp, [rip + {stack} + {size}]",
        "xor ebp, ebp",
        // rdi (boot flags) and rsi (start info) from the loader are passed
        // through to kmain.
        "call {main}",
        "ud2",
        stack = sym STACK,
        size = const core::mem::size_of::<Stack>(),
        main = sym kmain,
    )
}

/// Xen PV entry point (the Xen `ENTRY` ELF note): 64-bit mode, ring 3,
/// rsi = Xen's start info. Switch to our own stack, then `kmain` with the
/// [`boot_flags::XEN_PV_ENTRY`] flag.
#[unsafe(no_mangle)]
#[unsafe(naked)]
pub extern "C" fn xen_start() -> ! {
    naked_asm!(
        "lea rsp, [rip + {stack} + {size}]",
        "xor ebp, ebp",
        "mov edi, {flag}",
        "call {main}",
        "ud2",
        stack = sym STACK,
        size = const core::mem::size_of::<Stack>(),
        flag = const boot_flags::XEN_PV_ENTRY,
        main = sym kmain,
    )
}

#[unsafe(naked)]
extern "C" fn bp_handler() {
    naked_asm!("lock inc dword ptr [rip + {c}]", "iretq", c = sym BP_COUNT)
}

#[unsafe(naked)]
extern "C" fn ud_handler() {
    // ud2 is two bytes: resume after it.
    naked_asm!(
        "lock inc dword ptr [rip + {c}]",
        "add qword ptr [rsp], 2",
        "iretq",
        c = sym UD_COUNT
    )
}

#[unsafe(naked)]
extern "C" fn gp_handler() {
    // Error code on the stack; the faulting instruction is the 2-byte
    // `mov ds, ax` (8e d8) of `faulting_segment_load`.
    naked_asm!(
        "push rax",
        "mov rax, [rsp + 8]",
        "mov [rip + {e}], rax",
        "pop rax",
        "add rsp, 8",
        "add qword ptr [rsp], 2",
        "lock inc dword ptr [rip + {c}]",
        "iretq",
        e = sym GP_ERROR,
        c = sym GP_COUNT
    )
}

/// Store `v` at `addr` with the 3-byte `mov [rax], rdx`; a #PF is handled
/// by pf_handler, which skips the store.
///
/// # Safety
/// `addr` must be writable memory, or the fault must be handled.
unsafe fn direct_store(addr: u64, v: u64) {
    // SAFETY: per the contract.
    unsafe { asm!(".byte 0x48, 0x89, 0x10", in("rax") addr, in("rdx") v, options(nostack)) };
}

fn raw_sgdt() -> (u16, u64) {
    let mut b = [0u8; 10];
    // SAFETY: sgdt writes 10 bytes into the buffer.
    unsafe { asm!("sgdt [{0}]", in(reg) b.as_mut_ptr(), options(nostack)) };
    (
        u16::from_le_bytes([b[0], b[1]]),
        u64::from_le_bytes([b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9]]),
    )
}

/// Reload DS and ES (not CS or SS) from the loaded GDT.
fn reload_data_segments(sel: u16) {
    // SAFETY: the selector names a present data segment of the loaded GDT.
    unsafe { asm!("mov ds, {0:x}", "mov es, {0:x}", in(reg) sel, options(nostack)) };
}

fn lar(sel: u16) -> Option<u32> {
    let mut v: u32 = 0;
    let ok: u8;
    // SAFETY: lar only reads the descriptor table and sets ZF.
    unsafe {
        asm!("lar {v:e}, {s:e}", "setz {ok}", s = in(reg) sel as u32, v = inout(reg) v, ok = out(reg_byte) ok, options(nostack))
    };
    (ok != 0).then_some(v)
}

fn lsl(sel: u16) -> Option<u32> {
    let mut v: u32 = 0;
    let ok: u8;
    // SAFETY: lsl only reads the descriptor table and sets ZF.
    unsafe {
        asm!("lsl {v:e}, {s:e}", "setz {ok}", s = in(reg) sel as u32, v = inout(reg) v, ok = out(reg_byte) ok, options(nostack))
    };
    (ok != 0).then_some(v)
}

fn verr(sel: u16) -> bool {
    let ok: u8;
    // SAFETY: verr only reads the descriptor table and sets ZF.
    unsafe {
        asm!("verr {s:x}", "setz {ok}", s = in(reg) sel, ok = out(reg_byte) ok, options(nostack))
    };
    ok != 0
}

fn raw_sidt() -> (u16, u64) {
    let mut b = [0u8; 10];
    // SAFETY: sidt writes 10 bytes into the buffer.
    unsafe { asm!("sidt [{0}]", in(reg) b.as_mut_ptr(), options(nostack)) };
    (
        u16::from_le_bytes([b[0], b[1]]),
        u64::from_le_bytes([b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9]]),
    )
}

fn raw_str() -> u16 {
    let v: u16;
    // SAFETY: reads TR.
    unsafe { asm!("str {0:x}", out(reg) v, options(nomem, nostack)) };
    v
}

fn raw_sldt() -> u16 {
    let v: u16;
    // SAFETY: reads LDTR.
    unsafe { asm!("sldt {0:x}", out(reg) v, options(nomem, nostack)) };
    v
}

fn segs() -> (u16, u16, u16) {
    let (cs, ds, ss): (u16, u16, u16);
    // SAFETY: reads segment registers.
    unsafe {
        asm!("mov {0:x}, cs", "mov {1:x}, ds", "mov {2:x}, ss", out(reg) cs, out(reg) ds, out(reg) ss, options(nomem, nostack))
    };
    (cs, ds, ss)
}

/// Reload CS (far return) and the data segments from the loaded GDT.
///
/// # Safety
/// The GDT must hold a 64-bit code segment at KERNEL_CS and data at KERNEL_DS.
unsafe fn reload_segments() {
    // SAFETY: per the contract; the far return lands on the next label.
    unsafe {
        asm!(
            "push {cs}",
            "lea {tmp}, [rip + 2f]",
            "push {tmp}",
            "retfq",
            "2:",
            "mov {ds:e}, {dsv}",
            "mov ds, {ds:x}",
            "mov es, {ds:x}",
            "mov ss, {ds:x}",
            cs = const KERNEL_CS as u64,
            dsv = const KERNEL_DS as u32,
            tmp = out(reg) _,
            ds = out(reg) _,
        )
    };
}

/// Load DS with a selector past the GDT: #GP(selector) into gp_handler,
/// which skips the instruction. Then restore DS.
fn faulting_segment_load(sel: u16) {
    // SAFETY: the fault is handled by gp_handler, which resumes after the
    // 2-byte `mov ds, ax`; DS is restored afterwards.
    unsafe {
        asm!(
            ".byte 0x8e, 0xd8", // mov ds, ax
            "mov ds, {kds:x}",
            in("ax") sel,
            kds = in(reg) KERNEL_DS,
            options(nostack)
        )
    };
}

/// Real exceptions through the IDT just loaded (by whatever means the
/// backend loads it): `int3` (where the host can run it), `ud2`, and a
/// segment load with a selector past the GDT, each landing in its handler
/// exactly once. The check names say which kind of IDT was used.
fn exception_checks(t: &mut Tally, soft_int: bool, ud_name: &str, gp_name: &str) {
    if soft_int {
        // SAFETY: int3 traps into bp_handler, which returns.
        unsafe { asm!("int3", options(nomem, nostack)) };
        t.check(
            "int3 lands in the #BP handler",
            BP_COUNT.load(Ordering::SeqCst) == 1,
            format_args!("count={}", BP_COUNT.load(Ordering::SeqCst)),
        );
    } else {
        t.skip(
            "int3 lands in the #BP handler",
            "software interrupts are not emulated by this host (PVM)",
        );
    }
    // SAFETY: ud2 faults into ud_handler, which skips it.
    unsafe { asm!("ud2", options(nomem, nostack)) };
    t.check(
        ud_name,
        UD_COUNT.load(Ordering::SeqCst) == 1,
        format_args!("count={}", UD_COUNT.load(Ordering::SeqCst)),
    );
    faulting_segment_load(0x7f8);
    let err = GP_ERROR.load(Ordering::SeqCst);
    t.check(
        gp_name,
        GP_COUNT.load(Ordering::SeqCst) == 1 && err == 0x7f8,
        format_args!("count={} error={err:#x}", GP_COUNT.load(Ordering::SeqCst)),
    );
}

/// Read 8 bytes at FS:0.
fn read_fs0(sel: u16) -> u64 {
    let v: u64;
    // SAFETY: FS is loaded with a present data segment whose base points at
    // TLS_PROBE; FS is reset to null afterwards.
    unsafe {
        asm!(
            "mov fs, {s:x}",
            "mov {v}, qword ptr fs:[0]",
            "mov fs, {z:x}",
            s = in(reg) sel,
            z = in(reg) 0u16,
            v = out(reg) v,
            options(nostack, readonly)
        )
    };
    v
}

extern "C" fn kmain(flags: u64, start_info: u64) -> ! {
    if flags & boot_flags::XEN_PV_ENTRY != 0 {
        xen_pv_main(start_info);
    }
    if flags & boot_flags::REPORT_BUFFER != 0 {
        report::use_buffer_port();
    }
    say!("pvops example kernel: hello\n");
    let hv = pvops::detect_hypervisor();
    say!("detected hypervisor: {:?}\n", hv);
    if let pvops::Hypervisor::Xen { .. } = hv {
        // A Xen PV guest enters through the Xen note's entry point
        // (xen_start), never here.
        say!("cpuid says Xen, but this is not the Xen PV entry: not using the Xen backend\n");
    }
    match vmi::probe() {
        Ok(rom) => vmi_main(flags, rom),
        Err(nf) => say!("{}\n", pvops_vmi::InitError::Probe(nf)),
    }
    // One native backend per CPU (smp::NATIVE_CPUS), the boot CPU's first.
    // SAFETY: the kernel runs in ring 0 (or deprivileged under hv-sim's
    // trap-and-emulate, which emulates the instructions against its
    // tables), and every table it loads is a static that stays valid.
    let native = unsafe { NativeOps::new(LAYOUT) };
    if let Err(e) = smp::NATIVE_CPUS
        .register(0, native)
        .and_then(|_| pvops::install(OpsTable::new(&smp::NATIVE_CPUS)))
    {
        say!("install failed: {}\n", e);
        report::exit(0xff);
    }
    let ops = Installed;
    say!("backend: {}\n", ops.name());
    let mut t = Tally {
        passed: 0,
        total: 0,
        skipped: 0,
    };
    let deprivileged = flags & boot_flags::DEPRIVILEGED != 0;
    let inspect = flags & boot_flags::NO_DESCRIPTOR_INSPECTION == 0 && !deprivileged;
    let soft_int = flags & boot_flags::NO_SOFTWARE_INTERRUPTS == 0;
    if deprivileged {
        say!("deprivileged (boot flag): descriptor-table instructions are trapped and emulated\n");
    }
    say!(
        "boot flags {flags:#x}: lar/lsl/verr {}, int n {}\n",
        if inspect {
            "available"
        } else if deprivileged {
            "not used (deprivileged)"
        } else {
            "unavailable (PVM host)"
        },
        if soft_int {
            "available"
        } else {
            "unavailable (PVM host)"
        }
    );
    let env = Env {
        inspect,
        soft_int,
        deprivileged,
        pvm: flags & boot_flags::NO_DESCRIPTOR_INSPECTION != 0,
    };
    if flags & boot_flags::WORKLOAD != 0 {
        workload::run(&ops, &mut t, flags, true);
    } else {
        run_checks(&ops, &mut t, &env);
        smp::run(&mut t, flags);
    }
    say!(
        "done: {}/{} checks passed, {} skipped\n",
        t.passed,
        t.total,
        t.skipped
    );
    report::exit(t.total - t.passed)
}

/// What the native checks may use here (from the boot flags).
struct Env {
    /// `lar`/`lsl`/`verr` give meaningful answers.
    inspect: bool,
    /// `int3` can run.
    soft_int: bool,
    /// Ring 3 under a trap-and-emulate hypervisor.
    deprivileged: bool,
    /// The host is PVM (reading segment registers shows the host's).
    pvm: bool,
}

impl Env {
    /// Why `lar`/`lsl`/`verr` checks are skipped.
    fn no_inspect_reason(&self) -> &'static str {
        if self.deprivileged {
            "deprivileged: sensitive but unprivileged, they would read the hypervisor's ring-3 copy without trapping"
        } else {
            "not emulated by this host (PVM)"
        }
    }
}

fn run_checks<O: DescriptorOps>(ops: &O, t: &mut Tally, env: &Env) {
    let (inspect, soft_int) = (env.inspect, env.soft_int);
    let (Ok(gdt), Ok(idt), Ok(ldt)) = (GDT.gdt(), IDT.idt(), LDT.ldt()) else {
        t.check("tables", false, format_args!("table storage rejected"));
        return;
    };

    // GDT: load, reload every segment register from it.
    // SAFETY: static tables; the GDT has the code/data segments reload uses.
    let r = unsafe { ops.load_gdt(&gdt) };
    if env.deprivileged {
        // A DPL 0 data segment would #GP in ring 3: reaching the check
        // means the load used the hypervisor's DPL 3 copy of the entry.
        reload_data_segments(KERNEL_DS);
        let (cs, ds, ss) = segs();
        t.check(
            "load_gdt + DS/ES reload (deprivileged: the hypervisor's ring-3 copy)",
            r.is_ok() && (env.pvm || ds == KERNEL_DS),
            format_args!(
                "{r:?}; raw reads{}: cs={cs:#x} ds={ds:#x} ss={ss:#x}",
                if env.pvm { " on this PVM host" } else { "" }
            ),
        );
        t.skip(
            "CS/SS reload from the new GDT",
            "deprivileged: a far return or mov ss to an RPL 0 selector faults in ring 3 and is not a descriptor-table instruction",
        );
    } else {
        // SAFETY: as above.
        unsafe { reload_segments() };
        let (cs, ds, ss) = segs();
        t.check(
            "load_gdt + segment reload",
            r.is_ok() && cs == KERNEL_CS && ds == KERNEL_DS && ss == KERNEL_DS,
            format_args!("{r:?} cs={cs:#x} ds={ds:#x} ss={ss:#x}"),
        );
    }
    let sg = ops.store_gdt();
    t.check("store_gdt", sg == Ok(gdt.pointer()), format_args!("{sg:?}"));
    if inspect {
        let l = lar(KERNEL_CS);
        t.check(
            "lar kernel CS",
            l.map(|v| (v >> 8) & 0xf0ff) == Some(0xa09b),
            format_args!("{l:x?}"),
        );
        let l = lsl(KERNEL_DS);
        t.check(
            "lsl kernel DS",
            l == Some(0xffff_ffff),
            format_args!("{l:x?}"),
        );
        t.check(
            "verr kernel DS / not past GDT",
            verr(KERNEL_DS) && !verr(0x7f8),
            format_args!(""),
        );
    } else {
        t.skip("lar/lsl/verr on GDT selectors", env.no_inspect_reason());
    }

    // TSS + TR.
    let tss = SystemDescriptor::tss(TSS.base(), pvops::Tss64::LIMIT).unwrap_or_default();
    // SAFETY: static GDT and TSS.
    let r = unsafe { ops.write_gdt_entry(&gdt, LAYOUT.tss as u32, GdtEntry::Double(tss)) };
    // SAFETY: as above.
    let r2 = unsafe { ops.load_tr(TSS_SEL) };
    let busy = GDT.read(LAYOUT.tss as usize).map(|d| d.typ());
    t.check(
        "load_tr (str, busy bit)",
        r.is_ok()
            && r2.is_ok()
            && raw_str() == TSS_SEL.bits()
            && ops.store_tr() == Ok(TSS_SEL)
            && busy == Some(0xb),
        format_args!("{r2:?} str={:#x} type={busy:x?}", raw_str()),
    );
    // SAFETY: as above.
    let again = unsafe { ops.load_tr(TSS_SEL) };
    t.check(
        "load_tr refuses the busy TSS",
        again.is_err(),
        format_args!("{again:?}"),
    );
    let sp0 = 0x0000_0000_0090_0000u64;
    // SAFETY: TR names our static TSS.
    let r = unsafe { ops.load_kernel_stack(sp0) };
    let rsp0 = (TSS.read(0).unwrap_or(0) >> 32) | (TSS.read(1).unwrap_or(0) << 32);
    t.check(
        "load_kernel_stack -> TSS.rsp0",
        r.is_ok() && rsp0 == sp0,
        format_args!("{rsp0:#x}"),
    );

    // IDT: handlers, then real exceptions.
    let gate = |h: extern "C" fn(), dpl| {
        pvops::Gate64::interrupt(Selector(KERNEL_CS), h as usize as u64, dpl)
    };
    // SAFETY: static IDT; handlers are the naked stubs above.
    let r = unsafe {
        ops.write_idt_entry(&idt, 3, gate(bp_handler, Ring::Ring3))
            .and_then(|()| ops.write_idt_entry(&idt, 6, gate(ud_handler, Ring::Ring0)))
            .and_then(|()| ops.write_idt_entry(&idt, 13, gate(gp_handler, Ring::Ring0)))
            .and_then(|()| ops.load_idt(&idt))
    };
    t.check(
        "load_idt/store_idt",
        r.is_ok() && ops.store_idt() == Ok(idt.pointer()),
        format_args!("{r:?}"),
    );
    exception_checks(
        t,
        soft_int,
        "ud2 lands in the #UD handler",
        "bad selector -> #GP(selector) in handler",
    );

    // LDT.
    let ldt_probe = &LDT_PROBE as *const AtomicU64 as u64;
    let ldt_data =
        Descriptor::data_segment(ldt_probe as u32, 0xfff, Ring::Ring0).unwrap_or_default();
    // SAFETY: static LDT.
    let r = unsafe {
        ops.alloc_ldt(&ldt)
            .and_then(|()| ops.write_ldt_entry(&ldt, 1, ldt_data))
            .and_then(|()| ops.load_ldt(Some(&ldt)))
    };
    let ldt_sel = Selector::ldt(1, Ring::Ring0).bits();
    t.check(
        "load_ldt (sldt)",
        r.is_ok() && raw_sldt() == LDT_SEL.bits() && ops.store_ldt() == Ok(Some(ldt)),
        format_args!("{r:?} sldt={:#x}", raw_sldt()),
    );
    let v = read_fs0(ldt_sel);
    t.check(
        "LDT selector loads (FS:[0] through LDT[1])",
        v == LDT_PROBE.load(Ordering::SeqCst),
        format_args!("{v:#x}"),
    );
    if inspect {
        t.check(
            "lar/lsl/verr on an LDT selector",
            lsl(ldt_sel) == Some(0xfff)
                && lar(ldt_sel).map(|v| (v >> 8) & 0xfe) == Some(0x92)
                && verr(ldt_sel),
            format_args!("lsl={:x?} lar={:x?}", lsl(ldt_sel), lar(ldt_sel)),
        );
    } else {
        t.skip("lar/lsl/verr on an LDT selector", env.no_inspect_reason());
    }

    // Context switches: load_tls + load_kernel_stack + load_ldt in lazy mode.
    let probe = &TLS_PROBE as *const AtomicU64 as u64;
    let mut ok = true;
    for i in 0..64u32 {
        let tls = [
            Descriptor::data_segment(probe as u32, 0xfff + i * 0x1000, Ring::Ring0)
                .unwrap_or_default(),
            Descriptor::data_segment(0, 0xf_ffff, Ring::Ring3).unwrap_or_default(),
            Descriptor::NULL,
        ];
        let e = ops.enter_lazy_cpu();
        // SAFETY: static GDT/TSS/LDT.
        let r = unsafe {
            ops.load_tls(&tls)
                .and_then(|()| ops.load_kernel_stack(sp0 + i as u64 * 0x1000))
                .and_then(|()| ops.load_ldt(if i % 2 == 0 { Some(&ldt) } else { None }))
        };
        let l = ops.leave_lazy_cpu();
        let tls_sel = Selector::gdt(LAYOUT.tls_first, Ring::Ring0).bits();
        ok &= e.is_ok()
            && r.is_ok()
            && l.is_ok()
            && (!inspect || lsl(tls_sel) == Some(0xfff + i * 0x1000))
            && read_fs0(tls_sel) == TLS_PROBE.load(Ordering::SeqCst)
            && raw_sldt() == if i % 2 == 0 { LDT_SEL.bits() } else { 0 };
    }
    t.check(
        "64 context switches (load_tls via FS, load_kernel_stack, load_ldt) in lazy mode",
        ok,
        format_args!(""),
    );
    // SAFETY: the LDT is no longer loaded (last iteration loaded none).
    let r = unsafe { ops.free_ldt(&ldt) };
    t.check("free_ldt", r.is_ok(), format_args!("{r:?}"));
}

/// Xen's selectors as a 64-bit PV guest sees them (`asm-x86/desc.h`): the
/// flat ring-3 code/data a PV kernel runs on, and the TSS and LDT
/// descriptors Xen keeps in its reserved GDT area (entries 7168+).
mod xen_sel {
    /// FLAT_RING3_CS64 (FLAT_KERNEL_CS for a 64-bit PV kernel).
    pub const FLAT_KERNEL_CS: u16 = 0xe033;
    /// FLAT_RING3_DS32 (FLAT_KERNEL_SS).
    pub const FLAT_KERNEL_SS: u16 = 0xe02b;
    /// TSS_ENTRY << 3.
    pub const TSS: u16 = 0xe040;
    /// LDT_ENTRY << 3.
    pub const LDT: u16 = 0xe050;
    /// GDT limit of Xen's per-vCPU GDT: (7168 + 512) * 8 - 1.
    pub const GDT_LIMIT: u16 = 0xefff;
    /// Xen's own ring-0 code selector (`__HYPERVISOR_CS`).
    pub const HYPERVISOR_CS: u16 = 0xe008;
}

/// The Xen PV entry ([`xen_start`]): read Xen's start info, report
/// through its console, detect Xen through the forced-emulation prefix,
/// build the Xen backend over the p2m list and run the PV checks.
fn xen_pv_main(start_info: u64) -> ! {
    report::use_xen_console();
    say!("pvops example kernel: hello (Xen PV entry)\n");
    let boot = match xen::start_info(start_info) {
        Ok(b) => b,
        Err(e) => {
            say!("xen: {}\n", e);
            report::exit(0xfd)
        }
    };
    let si = boot.si;
    say!(
        "xen: start info {:?}: nr_pages {} shared_info {:#x} flags {:#x} console {:x?}\n",
        si.magic_str(),
        si.nr_pages,
        si.shared_info,
        si.flags,
        si.console
    );
    say!(
        "xen: pt_base {:#x} nr_pt_frames {} mfn_list {:#x} mod {:#x}+{:#x} p2m frames {}+{} cmdline {:?}\n",
        si.pt_base,
        si.nr_pt_frames,
        si.mfn_list,
        si.mod_start,
        si.mod_len,
        si.first_p2m_pfn,
        si.nr_p2m_frames,
        si.cmd_line_str()
    );
    // hv-sim passes what its host cannot do in the command line
    // (`hvsim.flags=<hex boot flags>`); real Xen passes the runner's.
    let flags = hvsim_boot_protocol::cmdline_flags(si.cmd_line_str());
    let hv = pvops::detect::detect_with(&xen::XenCpuid);
    say!("detected hypervisor (prefixed cpuid): {:?}\n", hv);
    let cmd = si.cmd_line_str();
    let arg = |k: &str| hvsim_boot_protocol::cmdline_value(cmd, k).and_then(|v| v.parse().ok());
    if hvsim_boot_protocol::cmdline_has(cmd, hvsim_boot_protocol::BATTERY_WORD) {
        let (seed, count) = (arg("seed").unwrap_or(1), arg("count").unwrap_or(10_000));
        let dump = hvsim_boot_protocol::cmdline_has(cmd, "dump");
        let h = battery::run(seed, count, dump, boot.p2m, si.pt_base);
        say!("battery done: {count} calls, seed {seed}, hash {h:016x}\n");
        report::exit(0);
    }
    // One Xen backend per vCPU (smp::XEN_CPUS), vCPU 0's first.
    xen::P2M.call_once(|| boot.p2m);
    if let Err(e) = smp::XEN_CPUS
        .register(0, xen::backend(boot.p2m, LAYOUT, 0))
        .and_then(|_| pvops::install(OpsTable::new(&smp::XEN_CPUS)))
    {
        say!("install failed: {}\n", e);
        report::exit(0xff);
    }
    let ops = Installed;
    say!("backend: {}\n", ops.name());
    let mut t = Tally {
        passed: 0,
        total: 0,
        skipped: 0,
    };
    let (cs, _, ss) = segs();
    say!("xen: running on cs={cs:#x} ss={ss:#x}, boot flags {flags:#x}\n");
    if flags & boot_flags::WORKLOAD != 0 {
        // Xen keeps the TSS: no descriptor for it, no load_tr.
        workload::run(&ops, &mut t, flags, false);
    } else {
        start_info_checks(&mut t, &boot, matches!(hv, pvops::Hypervisor::Xen { .. }));
        run_xen_checks(
            &ops,
            &mut t,
            flags & boot_flags::NO_SOFTWARE_INTERRUPTS == 0,
            flags & boot_flags::NO_DESCRIPTOR_INSPECTION != 0,
        );
        smp::run_xen(&mut t, si.pt_base);
    }
    say!(
        "done: {}/{} checks passed, {} skipped\n",
        t.passed,
        t.total,
        t.skipped
    );
    report::exit(t.total - t.passed)
}

/// What Xen's domain builder handed over: a 64-bit PV start info for dom0
/// or a domU, a p2m list that maps this kernel's own pages to distinct
/// machine frames, page tables at a page-aligned `pt_base`, and CPUID
/// (through the prefix) naming Xen.
fn start_info_checks(t: &mut Tally, boot: &xen::Boot, cpuid_xen: bool) {
    let si = boot.si;
    t.check(
        "start_info: magic xen-3.0-x86_64, cpuid (forced-emulation prefix) says Xen",
        si.magic_ok() && cpuid_xen,
        format_args!("{:?} cpuid_xen={cpuid_xen}", si.magic_str()),
    );
    // The kernel image: every page between _start and the end of .bss.
    let first = (xen_start as *const () as u64) >> 12;
    let last = (core::ptr::addr_of!(STACK) as u64 + core::mem::size_of::<Stack>() as u64) >> 12;
    let mut distinct = true;
    let mut prev = u64::MAX;
    let mut valid = true;
    for pfn in first..=last {
        let mfn = boot.p2m.get(pfn as usize).copied().unwrap_or(u64::MAX);
        valid &= mfn != u64::MAX && mfn != 0;
        distinct &= mfn != prev;
        prev = mfn;
    }
    let in_list = |va: u64| (va >> 12) < si.nr_pages;
    t.check(
        "start_info: p2m (mfn_list) maps the kernel's pages; pt_base, start info and p2m inside the initial mapping",
        valid
            && distinct
            && si.pt_base.is_multiple_of(4096)
            && si.pt_base != 0
            && si.nr_pt_frames >= 4
            && in_list(si.pt_base)
            && in_list(si.mfn_list)
            && in_list(si as *const _ as u64),
        format_args!(
            "pfns {first:#x}..={last:#x} valid={valid} distinct={distinct} nr_pt_frames={}",
            si.nr_pt_frames
        ),
    );
}

/// The checks that make sense for a 64-bit PV guest: every op goes through
/// hypercalls, Xen's fix-ups show in the guest's own frames, the CPU runs
/// on the tables Xen built (raw `sgdt`/`str`/`sldt` show Xen's), segment
/// loads and exceptions work through them, and a descriptor Xen forbids is
/// refused with its errno while the kernel carries on.
fn run_xen_checks<O: DescriptorOps>(ops: &O, t: &mut Tally, soft_int: bool, pvm: bool) {
    let (Ok(gdt), Ok(idt), Ok(ldt)) = (GDT.gdt(), IDT.idt(), LDT.ldt()) else {
        t.check("tables", false, format_args!("table storage rejected"));
        return;
    };
    t.check(
        "backend is xen",
        ops.name() == "xen",
        format_args!("{}", ops.name()),
    );

    // GDT: set_gdt; Xen validates the frame and raises DPL 0 to 3 in it.
    // SAFETY: static GDT, page aligned, loaded for the kernel's life.
    let r = unsafe { ops.load_gdt(&gdt) };
    let dpl = |i| GDT.read(i).map(|d| d.dpl() as u8);
    t.check(
        "load_gdt (set_gdt): Xen raised DPL 0->3 in the guest's frame",
        r.is_ok() && dpl(2) == Some(3) && dpl(3) == Some(3),
        format_args!("{r:?} GDT[2] DPL {:?} GDT[3] DPL {:?}", dpl(2), dpl(3)),
    );
    // A DPL 0 descriptor would #GP here (ring 3): reaching the check means
    // the load used the fixed-up DPL 3 entry.
    reload_data_segments(KERNEL_DS);
    let (cs, ds, ss) = segs();
    if pvm {
        // PVM runs the guest's ring 3 on the host's selectors: `mov r, cs`
        // shows those (0x33/0x2b), and DS reads back null. hv-sim checks
        // the vCPU's real CS/SS/DS through KVM_GET_SREGS instead.
        t.check(
            "PV kernel keeps Xen's flat CS/SS, loads DS/ES from its GDT",
            true,
            format_args!("loaded; raw reads on this PVM host: cs={cs:#x} ds={ds:#x} ss={ss:#x}"),
        );
    } else {
        t.check(
            "PV kernel keeps Xen's flat CS/SS, loads DS/ES from its GDT",
            cs == xen_sel::FLAT_KERNEL_CS && ss == xen_sel::FLAT_KERNEL_SS && ds == KERNEL_DS,
            format_args!("cs={cs:#x} ds={ds:#x} ss={ss:#x}"),
        );
    }
    let sg = ops.store_gdt();
    let (limit, base) = raw_sgdt();
    t.check(
        "store_gdt = guest view; sgdt = Xen's GDT",
        sg == Ok(gdt.pointer()) && limit == xen_sel::GDT_LIMIT && base != gdt.base(),
        format_args!("{sg:?}; sgdt base {base:#x} limit {limit:#x}"),
    );

    // TR: Xen owns the TSS.
    let tss = SystemDescriptor::tss(TSS.base(), pvops::Tss64::LIMIT).unwrap_or_default();
    // SAFETY: static GDT and TSS.
    let r = unsafe { ops.write_gdt_entry(&gdt, LAYOUT.tss as u32, GdtEntry::Double(tss)) };
    // SAFETY: as above.
    let r2 = unsafe { ops.load_tr(TSS_SEL) };
    t.check(
        "load_tr is a no-op: store_tr = 0 (as Linux's xen_store_tr), str = Xen's TSS",
        r.is_ok()
            && r2.is_ok()
            && ops.store_tr() == Ok(Selector::NULL)
            && raw_str() == xen_sel::TSS,
        format_args!("{r:?} {r2:?} str={:#x}", raw_str()),
    );
    // SAFETY: Xen's TSS; the value is only recorded.
    let r = unsafe { ops.load_kernel_stack(0x0090_0000) };
    t.check(
        "load_kernel_stack (stack_switch)",
        r.is_ok(),
        format_args!("{r:?}"),
    );

    // IDT: trap table, then real exceptions through it.
    let gate = |h: extern "C" fn(), dpl| {
        pvops::Gate64::interrupt(Selector(KERNEL_CS), h as usize as u64, dpl)
    };
    // SAFETY: static IDT; handlers are the naked stubs above.
    let r = unsafe {
        ops.write_idt_entry(&idt, 3, gate(xen::bp_handler, Ring::Ring3))
            .and_then(|()| ops.write_idt_entry(&idt, 6, gate(xen::ud_handler, Ring::Ring0)))
            .and_then(|()| ops.write_idt_entry(&idt, 13, gate(xen::gp_handler, Ring::Ring0)))
            .and_then(|()| ops.write_idt_entry(&idt, 14, gate(xen::pf_handler, Ring::Ring0)))
            .and_then(|()| ops.load_idt(&idt))
    };
    t.check(
        "load_idt (set_trap_table); store_idt = guest view",
        r.is_ok() && ops.store_idt() == Ok(idt.pointer()),
        format_args!("{r:?}"),
    );
    exception_checks(
        t,
        soft_int,
        "ud2 lands in the #UD handler (trap table)",
        "bad selector -> #GP(selector) in handler (trap table)",
    );
    let f = |i: usize| xen::UD_FRAME[i].load(Ordering::SeqCst);
    let (cs_word, rflags, ss, at) = (f(0), f(1), f(2), f(3));
    let mask = (cs_word >> 32) & 0xff;
    t.check(
        "#UD bounce frame: [rcx, r11, rip, cs, rflags, rsp, ss], cs RPL cleared with the event mask in bits 32-39, IF = !mask, IOPL 0",
        cs_word & 0xffff == u64::from(xen_sel::FLAT_KERNEL_CS & !3)
            && ss == u64::from(xen_sel::FLAT_KERNEL_SS)
            && (rflags >> 9) & 1 == u64::from(mask == 0)
            && (rflags >> 12) & 3 == 0
            && (at + 7 * 8).is_multiple_of(16),
        format_args!("cs word {cs_word:#x} rflags {rflags:#x} ss {ss:#x} frame at {at:#x}"),
    );

    // LDT.
    let ldt_probe = &LDT_PROBE as *const AtomicU64 as u64;
    let ldt_data =
        Descriptor::data_segment(ldt_probe as u32, 0xfff, Ring::Ring0).unwrap_or_default();
    // SAFETY: static LDT, page aligned.
    let r = unsafe {
        ops.alloc_ldt(&ldt)
            .and_then(|()| ops.write_ldt_entry(&ldt, 1, ldt_data))
            .and_then(|()| ops.load_ldt(Some(&ldt)))
    };
    t.check(
        "load_ldt (MMUEXT_SET_LDT): store_ldt = guest view, sldt = Xen's LDT",
        r.is_ok() && ops.store_ldt() == Ok(Some(ldt)) && raw_sldt() == xen_sel::LDT,
        format_args!("{r:?} sldt={:#x}", raw_sldt()),
    );
    let ldt_sel = Selector::ldt(1, Ring::Ring0).bits();
    let v = read_fs0(ldt_sel);
    t.check(
        "LDT selector loads (FS:[0] through LDT[1], DPL raised to 3)",
        v == LDT_PROBE.load(Ordering::SeqCst) && LDT.read(1).map(|d| d.dpl() as u8) == Some(3),
        format_args!("{v:#x}"),
    );

    // Context switches: load_tls + load_kernel_stack + load_ldt in lazy
    // mode, each switch one multicall.
    let probe = &TLS_PROBE as *const AtomicU64 as u64;
    let mut ok = true;
    for i in 0..64u32 {
        let tls = [
            Descriptor::data_segment(probe as u32, 0xfff + i * 0x1000, Ring::Ring0)
                .unwrap_or_default(),
            Descriptor::data_segment(0, 0xf_ffff, Ring::Ring3).unwrap_or_default(),
            Descriptor::NULL,
        ];
        let e = ops.enter_lazy_cpu();
        // SAFETY: static GDT/LDT.
        let r = unsafe {
            ops.load_tls(&tls)
                .and_then(|()| ops.load_kernel_stack(0x0090_0000 + i as u64 * 0x1000))
                .and_then(|()| ops.load_ldt(if i % 2 == 0 { Some(&ldt) } else { None }))
        };
        let l = ops.leave_lazy_cpu();
        let tls_sel = Selector::gdt(LAYOUT.tls_first, Ring::Ring0).bits();
        ok &= e.is_ok()
            && r.is_ok()
            && l.is_ok()
            && read_fs0(tls_sel) == TLS_PROBE.load(Ordering::SeqCst)
            && raw_sldt() == if i % 2 == 0 { xen_sel::LDT } else { 0 };
    }
    t.check(
        "64 context switches (load_tls via FS, stack_switch, SET_LDT) in lazy mode as multicalls",
        ok,
        format_args!(""),
    );

    // A descriptor Xen forbids: a 64-bit call gate into Xen's own code
    // segment. Xen refuses it with -EINVAL; the kernel carries on.
    let target = gp_handler as *const () as u64;
    let gate_low = (target & 0xffff)
        | (u64::from(xen_sel::HYPERVISOR_CS) << 16)
        | (0x8c << 40)
        | ((target >> 16) & 0xffff) << 48;
    let call_gate = SystemDescriptor {
        low: gate_low,
        high: target >> 32,
    };
    // SAFETY: static GDT; slots 8-9 are unused under Xen (the TSS write
    // above was dropped).
    let r = unsafe { ops.write_gdt_entry(&gdt, 8, GdtEntry::Double(call_gate)) };
    // Xen's own selectors are Xen's to judge (the validation layer lets
    // them through); the refusal names the slot.
    let refused = matches!(
        r,
        Err(pvops::PvError::Hypervisor {
            call: "update_descriptor",
            errno: pvops::Errno::EINVAL,
            at: pvops::Slot::Entry(pvops::TableKind::Gdt, 8 | 9),
        })
    );
    // SAFETY: static GDT; slot 15 is free.
    let r2 = unsafe { ops.write_gdt_entry(&gdt, 15, GdtEntry::Single(presets::USER_DATA)) };
    t.check(
        "forbidden call gate (target 0xe008) -> -EINVAL, and the kernel carries on",
        refused && r2.is_ok() && GDT.read(15) == Some(presets::USER_DATA),
        format_args!("{r:?}; next write {r2:?}"),
    );

    // The GDT page is mapped read-only (load_gdt's update_va_mapping):
    // a direct store faults and the descriptor is unchanged.
    let before = GDT.read(15);
    // SAFETY: the store faults into pf_handler, which skips it.
    unsafe { direct_store(gdt.base() + 15 * 8, 0x00cf_f300_0000_ffff) };
    t.check(
        "direct store into the live GDT -> #PF, descriptor unchanged",
        PF_COUNT.load(Ordering::SeqCst) == 1 && GDT.read(15) == before,
        format_args!("#PF count={}", PF_COUNT.load(Ordering::SeqCst)),
    );

    // SAFETY: the LDT is no longer loaded (last iteration loaded none).
    let r = unsafe { ops.free_ldt(&ldt) };
    t.check(
        "free_ldt (writable again)",
        r.is_ok(),
        format_args!("{r:?}"),
    );
}

fn vmi_main(flags: u64, rom: pvops_vmi::VmiRom) -> ! {
    say!(
        "vmi: ROM at {:#x}, {} bytes, API {}.{}, vendor {:#06x} device {:#06x}\n",
        rom.base,
        rom.size,
        rom.api_major,
        rom.api_minor,
        rom.vendor,
        rom.device
    );
    let vmi = match vmi::init(rom, LAYOUT) {
        Ok(v) => v,
        Err(e) => {
            say!("{}\n", e);
            report::exit(0xfc)
        }
    };
    if let Err(e) = pvops::install(OpsTable::new(vmi)) {
        say!("install failed: {}\n", e);
        report::exit(0xff);
    }
    let ops = Installed;
    say!("backend: {}\n", ops.name());
    let mut t = Tally {
        passed: 0,
        total: 0,
        skipped: 0,
    };
    let soft_int = flags & boot_flags::NO_SOFTWARE_INTERRUPTS == 0;
    let pvm = flags & boot_flags::NO_DESCRIPTOR_INSPECTION != 0;
    let (cs, _, ss) = segs();
    say!("vmi: running on cs={cs:#x} ss={ss:#x}\n");
    let relocs_ok = vmi
        .relocations()
        .iter()
        .all(|r| r.typ == pvops_vmi::RelocType::CallRel && rom.contains(r.eip));
    t.check(
        "VMI ROM found by the probe at 0xc0000; VMI_Init; every call CALL_REL into the ROM",
        ops.name() == "vmi" && rom.base == 0xc0000 && relocs_ok,
        format_args!(
            "{} relocations, backend {}",
            vmi.relocations().len(),
            ops.name()
        ),
    );
    if flags & boot_flags::WORKLOAD != 0 {
        workload::run(&ops, &mut t, flags, true);
    } else {
        run_vmi_checks(&ops, &mut t, soft_int, pvm);
    }
    if flags & boot_flags::HOSTILE != 0 {
        hostile::run(vmi, &mut t, pvm);
    }
    say!(
        "done: {}/{} checks passed, {} skipped\n",
        t.passed,
        t.total,
        t.skipped
    );
    report::exit(t.total - t.passed)
}

/// The checks that make sense for a VMI-style guest (ring 3 under hv-sim's
/// 64-bit policy): every op goes through the ROM; the guest's own tables are
/// left as it wrote them (Get* = its view) while the CPU runs on the
/// hypervisor's fixed-up copies (raw `sgdt`/`sidt` show those); segment
/// loads and exceptions work through them; lazy mode defers the effects to
/// SetLazyMode(0); and refused calls come back as errors while the kernel
/// carries on.
fn run_vmi_checks<O: DescriptorOps>(ops: &O, t: &mut Tally, soft_int: bool, pvm: bool) {
    let (Ok(gdt), Ok(idt), Ok(ldt)) = (GDT.gdt(), IDT.idt(), LDT.ldt()) else {
        t.check("tables", false, format_args!("table storage rejected"));
        return;
    };

    // GDT: SetGDT; the personality fixes DPLs up in its copy only.
    // SAFETY: static GDT, loaded for the kernel's life.
    let r = unsafe { ops.load_gdt(&gdt) };
    let dpl = |i| GDT.read(i).map(|d| d.dpl() as u8);
    t.check(
        "load_gdt (SetGDT) leaves the guest's GDT as written",
        r.is_ok()
            && GDT.read(2) == Some(presets::KERNEL_CODE64)
            && GDT.read(3) == Some(presets::KERNEL_DATA),
        format_args!("{r:?} GDT[2] DPL {:?} GDT[3] DPL {:?}", dpl(2), dpl(3)),
    );
    let sg = ops.store_gdt();
    let (limit, base) = raw_sgdt();
    t.check(
        "store_gdt (GetGDT) = guest view; sgdt = the hypervisor's effective GDT",
        sg == Ok(gdt.pointer()) && limit == 0xffff && base != gdt.base(),
        format_args!("{sg:?}; sgdt base {base:#x} limit {limit:#x}"),
    );

    // IDT: two gates written before SetIDT, one into the loaded IDT.
    let gate = |h: extern "C" fn(), dpl| {
        pvops::Gate64::interrupt(Selector(KERNEL_CS), h as usize as u64, dpl)
    };
    // SAFETY: static IDT; handlers are the naked stubs above.
    let r = unsafe {
        ops.write_idt_entry(&idt, 3, gate(bp_handler, Ring::Ring3))
            .and_then(|()| ops.write_idt_entry(&idt, 6, gate(ud_handler, Ring::Ring0)))
            .and_then(|()| ops.load_idt(&idt))
            .and_then(|()| ops.write_idt_entry(&idt, 13, gate(gp_handler, Ring::Ring0)))
    };
    let (limit, base) = raw_sidt();
    t.check(
        "load_idt (SetIDT) + WriteIDTEntry into the loaded IDT; store_idt = guest view; sidt = the effective IDT",
        r.is_ok() && ops.store_idt() == Ok(idt.pointer()) && base != idt.base() && limit == 0xfff,
        format_args!("{r:?}; sidt base {base:#x} limit {limit:#x}"),
    );

    // A DPL 0 data segment would #GP here (ring 3): reaching the check
    // means the load used the effective, DPL 3 copy.
    reload_data_segments(KERNEL_DS);
    let (cs, ds, ss) = segs();
    t.check(
        "DS/ES load from the guest's GDT in ring 3 (DPL raised in the effective copy)",
        pvm || ds == KERNEL_DS,
        format_args!(
            "loaded; raw reads{}: cs={cs:#x} ds={ds:#x} ss={ss:#x}",
            if pvm { " on this PVM host" } else { "" }
        ),
    );

    exception_checks(
        t,
        soft_int,
        "ud2 lands in the #UD handler (SetIDT gate)",
        "bad selector -> #GP(selector) in the handler (WriteIDTEntry gate)",
    );

    // TR: SetTR of the guest's TSS; busy only in the effective GDT.
    let tss = SystemDescriptor::tss(TSS.base(), pvops::Tss64::LIMIT).unwrap_or_default();
    // SAFETY: static GDT and TSS.
    let r = unsafe { ops.write_gdt_entry(&gdt, LAYOUT.tss as u32, GdtEntry::Double(tss)) };
    // SAFETY: as above.
    let r2 = unsafe { ops.load_tr(TSS_SEL) };
    let typ = GDT.read(LAYOUT.tss as usize).map(|d| d.typ());
    t.check(
        "load_tr (SetTR) -> str = store_tr, the guest's TSS descriptor stays available",
        r.is_ok()
            && r2.is_ok()
            && raw_str() == TSS_SEL.bits()
            && ops.store_tr() == Ok(TSS_SEL)
            && typ == Some(0x9),
        format_args!("{r:?} {r2:?} str={:#x} type={typ:x?}", raw_str()),
    );
    let sp0 = 0x0000_0000_0090_0000u64;
    // SAFETY: TR names our static TSS; the value is only recorded.
    let r = unsafe { ops.load_kernel_stack(sp0) };
    let rsp0 = (TSS.read(0).unwrap_or(0) >> 32) | (TSS.read(1).unwrap_or(0) << 32);
    t.check(
        "load_kernel_stack (UpdateKernelStack) accepted, guest TSS untouched (sp0 goes to hv-sim's copy, checked host-side)",
        r.is_ok() && rsp0 == 0,
        format_args!("{r:?}; guest TSS.rsp0 {rsp0:#x}"),
    );
    // SAFETY: the selector names a data segment: the call is refused
    // before anything changes.
    let bad = unsafe { ops.load_tr(Selector(KERNEL_DS)) };
    t.check(
        "load_tr of a data segment refused before SetTR (validation layer); TR unchanged, the kernel carries on",
        matches!(
            bad,
            Err(pvops::PvError::WrongDescriptorType { op: "load_tr", .. })
        ) && raw_str() == TSS_SEL.bits()
            && ops.store_tr() == Ok(TSS_SEL),
        format_args!("{bad:?}; str={:#x}", raw_str()),
    );

    // LDT.
    let probe_seg = |p: &AtomicU64, limit| {
        Descriptor::data_segment(p as *const AtomicU64 as u64 as u32, limit, Ring::Ring0)
            .unwrap_or_default()
    };
    // SAFETY: static LDT.
    let r = unsafe {
        ops.alloc_ldt(&ldt)
            .and_then(|()| ops.write_ldt_entry(&ldt, 1, probe_seg(&LDT_PROBE, 0xfff)))
            .and_then(|()| ops.load_ldt(Some(&ldt)))
    };
    t.check(
        "load_ldt (WriteGDTEntry + SetLDT) -> sldt = store_ldt = guest view",
        r.is_ok() && raw_sldt() == LDT_SEL.bits() && ops.store_ldt() == Ok(Some(ldt)),
        format_args!("{r:?} sldt={:#x}", raw_sldt()),
    );
    let v = read_fs0(Selector::ldt(1, Ring::Ring0).bits());
    t.check(
        "LDT selector loads (FS:[0] through LDT[1], DPL raised in the effective LDT)",
        v == LDT_PROBE.load(Ordering::SeqCst) && LDT.read(1).map(|d| d.dpl() as u8) == Some(0),
        format_args!("{v:#x}"),
    );
    // SAFETY: static LDT, currently loaded.
    let r = unsafe { ops.write_ldt_entry(&ldt, 2, probe_seg(&LDT_PROBE2, 0xfff)) };
    let v = read_fs0(Selector::ldt(2, Ring::Ring0).bits());
    t.check(
        "WriteLDTEntry into the loaded LDT takes effect (FS:[0] through LDT[2])",
        r.is_ok() && v == LDT_PROBE2.load(Ordering::SeqCst),
        format_args!("{r:?} {v:#x}"),
    );

    // Lazy mode: the effective GDT changes at SetLazyMode(0), not before.
    let tls_sel = Selector::gdt(LAYOUT.tls_first, Ring::Ring0).bits();
    let tls_with = |p: &AtomicU64, limit| {
        [
            probe_seg(p, limit),
            Descriptor::data_segment(0, 0xf_ffff, Ring::Ring3).unwrap_or_default(),
            Descriptor::NULL,
        ]
    };
    // SAFETY: static GDT.
    let r = unsafe { ops.load_tls(&tls_with(&TLS_PROBE, 0xfff)) };
    let before = read_fs0(tls_sel);
    let e = ops.enter_lazy_cpu();
    // SAFETY: static GDT.
    let r2 = unsafe { ops.load_tls(&tls_with(&TLS_PROBE2, 0xfff)) };
    let during = read_fs0(tls_sel);
    let l = ops.leave_lazy_cpu();
    let after = read_fs0(tls_sel);
    t.check(
        "lazy mode (SetLazyMode 2/0) -> FS sees the new TLS base only after the flush",
        r.is_ok()
            && r2.is_ok()
            && e.is_ok()
            && l.is_ok()
            && before == TLS_PROBE.load(Ordering::SeqCst)
            && during == before
            && after == TLS_PROBE2.load(Ordering::SeqCst),
        format_args!("before {before:#x} during {during:#x} after {after:#x}"),
    );

    // Context switches: load_tls + load_kernel_stack + load_ldt in lazy mode.
    let mut ok = true;
    for i in 0..64u32 {
        let e = ops.enter_lazy_cpu();
        // SAFETY: static GDT/LDT.
        let r = unsafe {
            ops.load_tls(&tls_with(&TLS_PROBE, 0xfff + i * 0x1000))
                .and_then(|()| ops.load_kernel_stack(sp0 + i as u64 * 0x1000))
                .and_then(|()| ops.load_ldt(if i % 2 == 0 { Some(&ldt) } else { None }))
        };
        let l = ops.leave_lazy_cpu();
        ok &= e.is_ok()
            && r.is_ok()
            && l.is_ok()
            && read_fs0(tls_sel) == TLS_PROBE.load(Ordering::SeqCst)
            && raw_sldt() == if i % 2 == 0 { LDT_SEL.bits() } else { 0 };
    }
    t.check(
        "64 context switches (load_tls via FS, UpdateKernelStack, SetLDT) in lazy mode",
        ok,
        format_args!(""),
    );

    // A descriptor the personality forbids: a ring-3 call gate into the
    // kernel's code. Refused with -EINVAL, nothing written; the kernel
    // carries on.
    let target = gp_handler as *const () as u64;
    let gate_low = (target & 0xffff)
        | (u64::from(KERNEL_CS) << 16)
        | (0xec << 40)
        | ((target >> 16) & 0xffff) << 48;
    let call_gate = SystemDescriptor {
        low: gate_low,
        high: target >> 32,
    };
    // SAFETY: static GDT; slots 14-15 are free (TLS slot 2 is null).
    let r = unsafe { ops.write_gdt_entry(&gdt, 14, GdtEntry::Double(call_gate)) };
    // Architecturally valid, refused by the personality's policy: only
    // the hypervisor judges it, and the refusal names the slot.
    let refused = r
        == Err(pvops::PvError::Hypervisor {
            call: "WriteGDTEntry",
            errno: pvops::Errno::EINVAL,
            at: pvops::Slot::Entry(pvops::TableKind::Gdt, 14),
        });
    // SAFETY: static GDT; slot 15 is free.
    let r2 = unsafe { ops.write_gdt_entry(&gdt, 15, GdtEntry::Single(presets::USER_DATA)) };
    t.check(
        "forbidden call gate (DPL 3) -> -EINVAL, nothing written, and the kernel carries on",
        refused
            && GDT.read(14) == Some(Descriptor::NULL)
            && r2.is_ok()
            && GDT.read(15) == Some(presets::USER_DATA),
        format_args!("{r:?}; next write {r2:?}"),
    );

    // SAFETY: the LDT is no longer loaded (last iteration loaded none).
    let r = unsafe { ops.free_ldt(&ldt) };
    t.check("free_ldt", r.is_ok(), format_args!("{r:?}"));
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    say!("panic: {}\n", info);
    report::exit(0xfe)
}
