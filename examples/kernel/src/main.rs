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
//! the checks with the Xen [`checks::Personality`]. When CPUID shows no Xen
//! it probes the option-ROM window for a VMI ROM; under hv-sim's VMI
//! personality it finds one, builds the VMI-style backend on it ([`vmi`])
//! and runs the checks with the VMI personality. Otherwise the native
//! backend. The checks themselves live in [`checks`], one module per
//! concern, shared by every backend.
//!
//! Entry: `_start` in 64-bit mode with paging on (hv-sim's KVM runner sets
//! up long mode and an identity map of the first GiB), boot flags in rdi,
//! the Xen personality's start info (or 0) in rsi.

#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]

mod battery;
mod checks;
mod cpu;
mod hostile;
mod pvh;
mod report;
mod smp;
mod vmi;
mod workload;
mod xen;

use core::arch::naked_asm;
use core::sync::atomic::AtomicU64;

use pvops::{
    Descriptor, DescriptorOps, DescriptorStorage, GdtLayout, IdtGate, IdtStorage, Installed,
    OpsTable, Ring, Selector, TableStorage, presets,
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
    let mut t = Tally::new();
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
    let p = checks::Personality {
        backend: checks::Backend::Native,
        soft_int,
        inspect,
        deprivileged,
        pvm: flags & boot_flags::NO_DESCRIPTOR_INSPECTION != 0,
    };
    if flags & boot_flags::WORKLOAD != 0 {
        workload::run(&ops, &mut t, flags, true);
    } else {
        checks::run(&ops, &mut t, &p);
        smp::run(&mut t, flags);
    }
    t.finish()
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
    let mut t = Tally::new();
    let (cs, _, ss) = cpu::segs();
    say!("xen: running on cs={cs:#x} ss={ss:#x}, boot flags {flags:#x}\n");
    if flags & boot_flags::WORKLOAD != 0 {
        // Xen keeps the TSS: no descriptor for it, no load_tr.
        workload::run(&ops, &mut t, flags, false);
    } else {
        start_info_checks(&mut t, &boot, matches!(hv, pvops::Hypervisor::Xen { .. }));
        let p = checks::Personality {
            backend: checks::Backend::Xen,
            soft_int: flags & boot_flags::NO_SOFTWARE_INTERRUPTS == 0,
            inspect: false,
            deprivileged: false,
            pvm: flags & boot_flags::NO_DESCRIPTOR_INSPECTION != 0,
        };
        checks::run(&ops, &mut t, &p);
        smp::run_xen(&mut t, si.pt_base);
    }
    t.finish()
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
    let mut t = Tally::new();
    let soft_int = flags & boot_flags::NO_SOFTWARE_INTERRUPTS == 0;
    let pvm = flags & boot_flags::NO_DESCRIPTOR_INSPECTION != 0;
    let (cs, _, ss) = cpu::segs();
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
        let p = checks::Personality {
            backend: checks::Backend::Vmi,
            soft_int,
            inspect: false,
            deprivileged: false,
            pvm,
        };
        checks::run(&ops, &mut t, &p);
    }
    if flags & boot_flags::HOSTILE != 0 {
        hostile::run(vmi, &mut t, pvm);
    }
    t.finish()
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    say!("panic: {}\n", info);
    report::exit(0xfe)
}
