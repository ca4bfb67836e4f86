//! A second CPU (issue 9): each CPU loads its own GDT, TSS, TLS and kernel
//! stack through the installed pvops table, which reaches that CPU's own
//! native backend through [`pvops::percpu::PerCpu`] and the [`StackCpu`]
//! hook; then each CPU reads back, with the raw instructions, what it has:
//! `str`, the TSS that TR names in the GDT that `sgdt` names, that TSS's
//! `rsp0`, and the word at FS:0 (FS loaded from its TLS slot). The boot CPU
//! compares both CPUs' read-backs with what each loaded.
//!
//! How the second CPU starts:
//! * hv-sim's native KVM runner ([`boot_flags::START_AP_PORT`]): a write of
//!   [`ap_entry64`]'s address to [`hvsim_boot_protocol::ports::START_AP`];
//!   the runner starts vCPU 1 there in long mode and runs it until it halts.
//! * QEMU (`-smp 2`, PVH entry, no flags): INIT-SIPI-SIPI through the local
//!   APIC (xAPIC MMIO at 0xFEE00000, mapped here with an uncached 2 MiB
//!   page) to "all excluding self"; the AP starts in real mode at the
//!   trampoline copied to [`TRAMPOLINE`], which enters long mode directly
//!   (PAE, the boot CPU's CR3, EFER.LME, then CR0.PE|PG together) and jumps
//!   to [`ap_entry64`]. QEMU's fw_cfg (ports 0x510/0x511) gives the CPU
//!   count, so a 1-CPU QEMU skips the checks instead of waiting.

use core::arch::{asm, global_asm, naked_asm};
use core::sync::atomic::{AtomicU64, Ordering};

use pvops::percpu::{CpuIndex, PerCpu};
use pvops::{
    Descriptor, DescriptorOps, DescriptorStorage, GdtEntry, Installed, PvError, Ring, Selector,
    SystemDescriptor, TableStorage, presets,
};
use pvops_native::NativeOps;

use crate::cpu::{raw_sgdt, raw_str, read_fs0, reload_segments};
use crate::report::Tally;
use crate::{IDT, LAYOUT, TSS_SEL, boot_flags};

/// CPUs this kernel brings up.
pub const CPUS: usize = 2;

/// Where the real-mode trampoline is copied (SIPI vector 0x08).
pub const TRAMPOLINE: u64 = 0x8000;

/// One native backend per CPU; each CPU registers its own.
pub static NATIVE_CPUS: PerCpu<NativeOps, StackCpu, CPUS> = PerCpu::new();

const fn smp_gdt() -> [Descriptor; 16] {
    presets::LINUX_X86_64_GDT
}

/// Each CPU's own GDT, TSS, TLS block and ring-0 entry stack.
static GDTS: [DescriptorStorage<16>; CPUS] = [const { DescriptorStorage::new(smp_gdt()) }; CPUS];
static TSSS: [TableStorage<u64, 13>; CPUS] = [const { TableStorage::new([0; 13]) }; CPUS];
static TLS_BLOCKS: [AtomicU64; CPUS] = [
    AtomicU64::new(0x7e57_c900_0000_0000),
    AtomicU64::new(0x7e57_c900_0000_0001),
];

#[repr(C, align(16))]
struct Stack([u8; 16 * 1024]);
/// The ring-0 entry stacks whose tops go into each CPU's TSS.rsp0.
static mut RSP0_STACKS: [Stack; CPUS] = [const { Stack([0; 16 * 1024]) }; CPUS];
/// The stack CPU 1 runs on (the [`StackCpu`] hook tells CPUs apart by it).
static mut AP_STACK: Stack = Stack([0; 16 * 1024]);

fn rsp0_top(cpu: usize) -> u64 {
    let base = &raw const RSP0_STACKS as u64;
    base + ((cpu + 1) * core::mem::size_of::<Stack>()) as u64
}

/// The CPU-index hook: CPU 1 runs on [`AP_STACK`], every other stack is
/// CPU 0's (the way i386 Linux found its `thread_info` from `esp`).
pub struct StackCpu;

// SAFETY: CPU 1 runs only on AP_STACK (ap_entry64 switches to it before
// any Rust code; no IST, and its exceptions stay on the same stack) and
// CPU 0 never does; a CPU's stack does not change in the middle of an op.
unsafe impl CpuIndex for StackCpu {
    fn current() -> usize {
        let sp: u64;
        // SAFETY: reads rsp.
        unsafe { asm!("mov {}, rsp", out(reg) sp, options(nomem, nostack)) };
        let lo = &raw const AP_STACK as u64;
        usize::from((lo..lo + core::mem::size_of::<Stack>() as u64).contains(&sp))
    }
}

/// What a CPU read back: [done, tr, tss base, rsp0, fs:0, gdt base, error].
static REPORT: [[AtomicU64; 7]; CPUS] = [const { [const { AtomicU64::new(0) }; 7] }; CPUS];
const DONE: usize = 0;
const TR: usize = 1;
const TSS_BASE: usize = 2;
const RSP0: usize = 3;
const FS0: usize = 4;
const GDT_BASE: usize = 5;
const ERROR: usize = 6;

/// Load this CPU's own GDT, TSS (and TR), kernel stack, TLS and the shared
/// IDT through `ops`.
fn cpu_up<O: DescriptorOps>(ops: &O, cpu: usize) -> Result<(), PvError> {
    let gdt = GDTS[cpu].gdt()?;
    let tss = SystemDescriptor::tss(TSSS[cpu].base(), pvops::Tss64::LIMIT)?;
    let tls = [
        Descriptor::data_segment(
            &TLS_BLOCKS[cpu] as *const AtomicU64 as u32,
            0xfff,
            Ring::Ring0,
        )?,
        Descriptor::NULL,
        Descriptor::NULL,
    ];
    // SAFETY: static per-CPU tables and stacks; the GDT has the kernel's
    // code and data segments at KERNEL_CS/KERNEL_DS.
    unsafe {
        ops.load_gdt(&gdt)?;
        reload_segments();
        ops.write_gdt_entry(&gdt, LAYOUT.tss as u32, GdtEntry::Double(tss))?;
        ops.load_tr(TSS_SEL)?;
        ops.load_kernel_stack(rsp0_top(cpu))?;
        ops.load_tls(&tls)?;
        ops.load_idt(&IDT.idt()?)?;
    }
    Ok(())
}

/// Read back, with the raw instructions, what this CPU has loaded.
fn read_back(cpu: usize) {
    let r = &REPORT[cpu];
    let tr = raw_str();
    let (_, gdt_base) = raw_sgdt();
    let slot = gdt_base + (tr as u64 & !7);
    // SAFETY: slot and slot+8 are the TSS descriptor TR names, inside the
    // static GDT this CPU loaded (cpu_up succeeded).
    let (low, high) = unsafe {
        (
            core::ptr::read_volatile(slot as *const u64),
            core::ptr::read_volatile((slot + 8) as *const u64),
        )
    };
    let tss_base = (Descriptor(low).base() as u64) | (high << 32);
    // SAFETY: the TSS TR names is a static 104-byte TSS; rsp0 at offset 4.
    let rsp0 = unsafe { core::ptr::read_unaligned((tss_base + 4) as *const u64) };
    let tls_sel = Selector::gdt(LAYOUT.tls_first, Ring::Ring0).bits();
    r[TR].store(tr as u64, Ordering::Relaxed);
    r[TSS_BASE].store(tss_base, Ordering::Relaxed);
    r[RSP0].store(rsp0, Ordering::Relaxed);
    r[FS0].store(read_fs0(tls_sel), Ordering::Relaxed);
    r[GDT_BASE].store(gdt_base, Ordering::Relaxed);
}

fn bring_up_and_report(cpu: usize) {
    let done = match cpu_up(&Installed, cpu) {
        Ok(()) => {
            read_back(cpu);
            1
        }
        Err(e) => {
            // The error's op, as an index into a short list, for the BSP.
            REPORT[cpu][ERROR].store(error_code(&e), Ordering::Relaxed);
            2
        }
    };
    REPORT[cpu][DONE].store(done, Ordering::Release);
}

fn error_code(e: &PvError) -> u64 {
    match e {
        PvError::PerCpu { .. } => 1,
        PvError::CpuFault { vector, .. } => 0x100 | *vector as u64,
        PvError::Invalid { .. } => 2,
        _ => 3,
    }
}

/// CPU 1's 64-bit entry: its own stack, then [`ap_main`]. rdi: boot flags,
/// rsi: CPU index (from the runner or the trampoline).
#[unsafe(naked)]
pub extern "C" fn ap_entry64() -> ! {
    naked_asm!(
        "lea rsp, [rip + {stack} + {size}]",
        "xor ebp, ebp",
        "call {main}",
        "ud2",
        stack = sym AP_STACK,
        size = const core::mem::size_of::<Stack>(),
        main = sym ap_main,
    )
}

extern "C" fn ap_main(_flags: u64, _cpu: u64) -> ! {
    // SAFETY: ring 0 (QEMU, or hv-sim's native KVM runner); every table
    // this CPU loads is a static.
    let native = unsafe { NativeOps::new(LAYOUT) };
    match NATIVE_CPUS.register_current(native) {
        Ok(_) => bring_up_and_report(1),
        Err(e) => {
            REPORT[1][ERROR].store(error_code(&e), Ordering::Relaxed);
            REPORT[1][DONE].store(2, Ordering::Release);
        }
    }
    loop {
        // SAFETY: this CPU's work is done; halting with interrupts off
        // ends it (the KVM runner returns to the boot CPU on the HLT).
        unsafe { asm!("cli; hlt", options(nomem, nostack)) };
    }
}

global_asm!(
    r#"
    .pushsection .text.ap_tramp, "ax"
    .code16
    .globl ap_tramp_start
ap_tramp_start:
    cli
    cld
    xorw %ax, %ax
    movw %ax, %ds
    lgdtl {base} + (ap_tramp_gdt_ptr - ap_tramp_start)
    movl %cr4, %eax
    orl $0x20, %eax              /* PAE */
    movl %eax, %cr4
    movl {base} + (ap_tramp_cr3 - ap_tramp_start), %eax
    movl %eax, %cr3
    movl $0xC0000080, %ecx       /* EFER.LME */
    rdmsr
    orl $0x100, %eax
    wrmsr
    movl %cr0, %eax
    orl $0x80000001, %eax        /* PG | PE: real mode straight to long mode */
    movl %eax, %cr0
    ljmpl $0x10, ${base} + (ap_tramp_64 - ap_tramp_start)
    .code64
ap_tramp_64:
    movw $0x18, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorl %eax, %eax
    movw %ax, %fs
    movw %ax, %gs
    xorl %edi, %edi              /* boot flags: none */
    movl $1, %esi                /* CPU 1 */
    movabsq ${entry}, %rax
    jmp *%rax
    .balign 8
ap_tramp_gdt:
    .quad 0
    .quad 0
    .quad 0x00af9b000000ffff     /* 0x10: 64-bit code */
    .quad 0x00cf93000000ffff     /* 0x18: data */
ap_tramp_gdt_ptr:
    .word 31
    .long {base} + (ap_tramp_gdt - ap_tramp_start)
    .balign 4
    .globl ap_tramp_cr3
ap_tramp_cr3:
    .long 0
    .globl ap_tramp_end
ap_tramp_end:
    .popsection
"#,
    base = const TRAMPOLINE,
    entry = sym ap_entry64,
    options(att_syntax)
);

unsafe extern "C" {
    static ap_tramp_start: u8;
    static ap_tramp_cr3: u8;
    static ap_tramp_end: u8;
}

fn outw(port: u16, v: u16) {
    // SAFETY: fw_cfg selector write; no memory effects.
    unsafe { asm!("out dx, ax", in("dx") port, in("ax") v, options(nomem, nostack)) };
}

fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: fw_cfg data read; no memory effects.
    unsafe { asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack)) };
    v
}

/// The CPU count from QEMU's fw_cfg (`FW_CFG_NB_CPUS`), if this is QEMU.
fn qemu_cpu_count() -> Option<u16> {
    outw(0x510, 0x0000); // FW_CFG_SIGNATURE
    let sig = [inb(0x511), inb(0x511), inb(0x511), inb(0x511)];
    if &sig != b"QEMU" {
        return None;
    }
    outw(0x510, 0x0005); // FW_CFG_NB_CPUS
    Some(u16::from_le_bytes([inb(0x511), inb(0x511)]))
}

const LAPIC: u64 = 0xfee0_0000;

#[repr(C, align(4096))]
struct PageTable([AtomicU64; 512]);
static LAPIC_PD: PageTable = PageTable([const { AtomicU64::new(0) }; 512]);

/// Map the local APIC's page (the 4th GiB of the PVH entry's page tables,
/// an uncached 2 MiB page), unless something is mapped there already.
fn map_lapic() {
    let cr3: u64;
    // SAFETY: reads CR3.
    unsafe { asm!("mov {}, cr3", out(reg) cr3, options(nomem, nostack)) };
    let pml4 = (cr3 & 0x000f_ffff_ffff_f000) as *const AtomicU64;
    // SAFETY: the PVH entry's PML4 and PDPT, identity mapped (first GiB);
    // entries are written with atomic 8-byte stores, as the CPU reads them.
    unsafe {
        let pdpt = ((*pml4).load(Ordering::Relaxed) & 0x000f_ffff_ffff_f000) as *const AtomicU64;
        let third = &*pdpt.add(3);
        if third.load(Ordering::Relaxed) & 1 == 0 {
            let idx = ((LAPIC - (3 << 30)) >> 21) as usize;
            // P | RW | PWT | PCD | PS
            LAPIC_PD.0[idx].store(LAPIC | 0x9b, Ordering::Relaxed);
            third.store(&LAPIC_PD as *const PageTable as u64 | 3, Ordering::Relaxed);
            asm!("mov cr3, {}", in(reg) cr3, options(nostack));
        }
    }
}

fn lapic_write(off: u64, v: u32) {
    // SAFETY: the local APIC's MMIO page, mapped by map_lapic.
    unsafe { core::ptr::write_volatile((LAPIC + off) as *mut u32, v) };
}

fn lapic_read(off: u64) -> u32 {
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile((LAPIC + off) as *const u32) }
}

fn spin(n: u32) {
    for _ in 0..n {
        core::hint::spin_loop();
    }
}

/// INIT, then two STARTUPs (vector = trampoline page), to every other CPU.
fn init_sipi_sipi() {
    // SAFETY: the trampoline's bytes to low memory that nothing else uses
    // (identity mapped); the CR3 slot in the copy, 4-aligned.
    unsafe {
        let start = &raw const ap_tramp_start;
        let len = (&raw const ap_tramp_end).offset_from(start) as usize;
        core::ptr::copy_nonoverlapping(start, TRAMPOLINE as *mut u8, len);
        let cr3: u64;
        asm!("mov {}, cr3", out(reg) cr3, options(nomem, nostack));
        let at = TRAMPOLINE + (&raw const ap_tramp_cr3).offset_from(start) as u64;
        core::ptr::write_volatile(at as *mut u32, cr3 as u32);
    }
    map_lapic();
    let wait_idle = || {
        for _ in 0..1_000_000 {
            if lapic_read(0x300) & (1 << 12) == 0 {
                break;
            }
            core::hint::spin_loop();
        }
    };
    // Destination shorthand "all excluding self" (bits 18-19), level
    // assert (bit 14); delivery mode INIT (5) or STARTUP (6).
    lapic_write(0x310, 0);
    lapic_write(0x300, 0x000c_4500);
    wait_idle();
    spin(100_000);
    for _ in 0..2 {
        lapic_write(0x300, 0x000c_4600 | (TRAMPOLINE >> 12) as u32);
        wait_idle();
        spin(10_000);
    }
}

/// Bring up CPU 1 and check that each CPU's TR, TSS.rsp0, FS base and GDT
/// are its own.
pub fn run(t: &mut Tally, flags: u64) {
    const NAME: &str = "smp 2 CPUs, each with its own GDT, TR/TSS, TSS.rsp0 and FS base";
    if flags & boot_flags::DEPRIVILEGED != 0 {
        t.skip(NAME, "the trap-and-emulate runner starts one vCPU");
        return;
    }
    let port = flags & boot_flags::START_AP_PORT != 0;
    let qemu = if port { None } else { qemu_cpu_count() };
    if !port {
        match qemu {
            Some(n) if n >= 2 => {}
            Some(_) => return t.skip(NAME, "QEMU started one CPU (-smp 1)"),
            None => {
                return t.skip(
                    NAME,
                    "no way to start a CPU here (no START_AP port, not QEMU)",
                );
            }
        }
    }
    bring_up_and_report(0);
    if port {
        // The runner runs CPU 1 to its halt before the write returns.
        crate::report::outl(
            hvsim_boot_protocol::ports::START_AP,
            ap_entry64 as *const () as u64 as u32,
        );
    } else {
        init_sipi_sipi();
    }
    let mut waited = 0u64;
    while REPORT[1][DONE].load(Ordering::Acquire) == 0 && waited < 500_000_000 {
        core::hint::spin_loop();
        waited += 1;
    }
    let how = if port {
        "runner's START_AP port"
    } else {
        "INIT-SIPI-SIPI"
    };
    let mut ok = true;
    for cpu in 0..CPUS {
        let r = &REPORT[cpu];
        let get = |i: usize| r[i].load(Ordering::Acquire);
        let want = [
            TSS_SEL.bits() as u64,
            TSSS[cpu].base(),
            rsp0_top(cpu),
            TLS_BLOCKS[cpu].load(Ordering::Relaxed),
            GDTS[cpu].base(),
        ];
        let got = [get(TR), get(TSS_BASE), get(RSP0), get(FS0), get(GDT_BASE)];
        let this = get(DONE) == 1 && got == want;
        ok &= this;
        crate::say!(
            "smp cpu {cpu}: done={} err={:#x} tr={:#x} tss={:#x} rsp0={:#x} fs:0={:#x} gdt={:#x} (want tss={:#x} rsp0={:#x} fs:0={:#x} gdt={:#x})\n",
            get(DONE),
            get(ERROR),
            got[0],
            got[1],
            got[2],
            got[3],
            got[4],
            want[1],
            want[2],
            want[3],
            want[4]
        );
    }
    // CPU 1's load_kernel_stack went to its own TSS: CPU 0's is unchanged.
    let rsp0_cpu0 = (TSSS[0].read(0).unwrap_or(0) >> 32) | (TSSS[0].read(1).unwrap_or(0) << 32);
    ok &= rsp0_cpu0 == rsp0_top(0) && TSSS[0].base() != TSSS[1].base();
    t.check(
        NAME,
        ok,
        format_args!(
            "started by {how}; CPU 0 TSS.rsp0 after CPU 1's load_kernel_stack {rsp0_cpu0:#x}"
        ),
    );
}

// ---- Xen PV: vCPU 1 through VCPUOP_initialise and VCPUOP_up ----------------

/// One Xen backend per vCPU; each vCPU registers its own.
pub static XEN_CPUS: PerCpu<pvops_xen::XenOps<pvops_xen::KernelPlatform>, StackCpu, CPUS> =
    PerCpu::new();

/// `__HYPERVISOR_vcpu_op` and its commands (`public/xen.h`, `public/vcpu.h`).
const VCPU_OP: u32 = 24;
const VCPUOP_INITIALISE: u64 = 0;
const VCPUOP_UP: u64 = 1;
const VCPUOP_DOWN: u64 = 2;
const VCPUOP_IS_UP: u64 = 3;
/// `VGCF_in_kernel`.
const VGCF_IN_KERNEL: u64 = 1 << 2;
/// `FLAT_KERNEL_CS` for a 64-bit PV guest (`FLAT_RING3_CS64`).
const FLAT_KERNEL_CS: u64 = 0xe033;
/// Offsets in the 64-bit `vcpu_guest_context` (`public/arch-x86/xen.h`,
/// `xen-x86_64.h`): flags, then `cpu_user_regs` (rip at word 16 .. ss at
/// word 20), trap_ctxt[256] of 16 bytes, ldt_base/ents, gdt_frames[16],
/// gdt_ents, kernel_ss/sp, ctrlreg[8], debugreg[8], the callbacks,
/// vm_assist and the segment bases: 5168 bytes.
mod ctx {
    pub const FLAGS: usize = 512;
    pub const RIP: usize = 520 + 16 * 8;
    pub const CS: usize = 520 + 17 * 8;
    pub const RFLAGS: usize = 520 + 18 * 8;
    pub const RSP: usize = 520 + 19 * 8;
    pub const SS: usize = 520 + 20 * 8;
    pub const GDT_FRAMES: usize = 4832;
    pub const GDT_ENTS: usize = 4960;
    pub const KERNEL_SS: usize = 4968;
    pub const KERNEL_SP: usize = 4976;
    pub const CR3: usize = 4984 + 3 * 8;
    pub const SIZE: usize = 5168;
}

#[repr(C, align(4096))]
struct Context([AtomicU64; 1024]);
/// vCPU 1's `vcpu_guest_context` (two pages; Xen copies it in).
static CONTEXT: Context = Context([const { AtomicU64::new(0) }; 1024]);

fn xen_hc(nr: u32, a1: u64, a2: u64, a3: u64) -> i64 {
    // SAFETY: every call below passes either no pointer or the address of
    // a static this kernel owns for the call.
    unsafe { crate::xen::hypercall3(nr, a1, a2, a3) }
}

/// Map the page at `va` read-only (Xen takes a GDT frame only when no
/// writable mapping of it is left), as Linux's `make_lowmem_page_readonly`.
fn make_read_only(p2m: &[u64], va: u64) -> Result<(), i64> {
    let mfn = *p2m.get((va >> 12) as usize).ok_or(-22i64)?;
    let pte = mfn << 12 | pvops_xen::abi::PTE_PRESENT;
    match xen_hc(
        pvops_xen::nr::UPDATE_VA_MAPPING,
        va,
        pte,
        pvops_xen::abi::UVMF_INVLPG,
    ) {
        0 => Ok(()),
        e => Err(e),
    }
}

/// Each vCPU's Xen-side bring-up through the installed table: its GDT, its
/// kernel stack (stack_switch), its TLS; then FS:0 through its TLS slot.
fn xen_cpu_up(cpu: usize) {
    let r = &REPORT[cpu];
    let tls = Descriptor::data_segment(
        &TLS_BLOCKS[cpu] as *const AtomicU64 as u32,
        0xfff,
        Ring::Ring0,
    );
    let res = GDTS[cpu].gdt().and_then(|gdt| {
        let tls = [tls?, Descriptor::NULL, Descriptor::NULL];
        // SAFETY: static per-CPU tables; under Xen the GDT is only used
        // through the hypervisor's copy of its frames.
        unsafe {
            Installed.load_gdt(&gdt)?;
            Installed.load_kernel_stack(rsp0_top(cpu))?;
            Installed.load_tls(&tls)?;
        }
        Ok(Installed.store_gdt()?.base)
    });
    match res {
        Ok(gdt) => {
            let tls_sel = Selector::gdt(LAYOUT.tls_first, Ring::Ring0).bits();
            r[FS0].store(read_fs0(tls_sel), Ordering::Relaxed);
            // FS stays loaded from this vCPU's TLS slot, so that a runner
            // can read the base the CPU took (hv-sim's KVM runner does).
            // SAFETY: the TLS slot holds a present data segment (read_fs0
            // just loaded it); nothing here uses FS.
            unsafe { asm!("mov fs, {0:x}", in(reg) tls_sel, options(nomem, nostack)) };
            r[GDT_BASE].store(gdt, Ordering::Relaxed);
            r[DONE].store(1, Ordering::Release);
        }
        Err(e) => {
            r[ERROR].store(error_code(&e), Ordering::Relaxed);
            r[DONE].store(2, Ordering::Release);
        }
    }
}

/// vCPU 1's entry under Xen (ring 3, the context's rsp = its stack's top).
#[unsafe(naked)]
extern "C" fn xen_ap_entry() -> ! {
    naked_asm!(
        "pushfq",
        "pop rdi",
        "xor ebp, ebp",
        "call {main}",
        "ud2",
        main = sym xen_ap_main
    )
}

/// The RFLAGS vCPU 1's context asks for: IOPL 1 and IF clear (as Linux's
/// `cpu_initialize_context` passes, 0x1000), ID (21, which `iretq` loads),
/// and bits Xen must not let reach the CPU: VM (17), reserved bits 3, 5,
/// 15, 22 and 63, bit 1 clear.
const AP_CONTEXT_RFLAGS: u64 =
    0x1000 | 1 << 21 | 1 << 17 | 1 << 3 | 1 << 5 | 1 << 15 | 1 << 22 | 1 << 63;
/// The RFLAGS vCPU 1 found at its first instruction.
static AP_ENTRY_RFLAGS: AtomicU64 = AtomicU64::new(0);

/// What Xen's exit to the guest leaves of [`AP_CONTEXT_RFLAGS`]
/// (`iret_exit_to_guest` clears IOPL and VM and sets IF; `iretq` loads ID,
/// not the reserved bits, and bit 1 reads as 1): ID, IF and bit 1. IOPL is
/// not compared (hv-sim's real IOPL is 3).
fn ap_entry_rflags_ok(f: u64) -> bool {
    f & !(3 << 12) == 1 << 21 | 1 << 9 | 1 << 1
}

extern "C" fn xen_ap_main(entry_rflags: u64) -> ! {
    AP_ENTRY_RFLAGS.store(entry_rflags, Ordering::Relaxed);
    match crate::xen::P2M.get() {
        Some(p2m) => match XEN_CPUS.register_current(crate::xen::backend(p2m, LAYOUT, 1)) {
            Ok(_) => xen_cpu_up(1),
            Err(e) => {
                REPORT[1][ERROR].store(error_code(&e), Ordering::Relaxed);
                REPORT[1][DONE].store(2, Ordering::Release);
            }
        },
        None => REPORT[1][DONE].store(2, Ordering::Release),
    }
    // This vCPU is done: take it down (VCPUOP_down on itself).
    xen_hc(VCPU_OP, VCPUOP_DOWN, 1, 0);
    loop {
        core::hint::spin_loop();
    }
}

/// Under Xen: start vCPU 1 as Linux's `xen_cpu_up` does (its GDT page
/// read-only, `VCPUOP_initialise` with the running root page table and
/// the AP's stack, `VCPUOP_up`), then check that each vCPU reads its own
/// TLS block through the same selector (so each has its own GDT), and that
/// each one's GDT, kernel stack and TLS loads went through its own backend.
pub fn run_xen(t: &mut Tally, pt_base: u64) {
    const NAME: &str = "smp 2 vCPUs (Xen), each with its own GDT, kernel stack and TLS";
    let is_up = xen_hc(VCPU_OP, VCPUOP_IS_UP, 1, 0);
    if is_up < 0 {
        crate::say!("xen smp: VCPUOP_is_up(1) = {is_up}\n");
        return t.skip(NAME, "the domain has one vCPU (VCPUOP_is_up(1) refused)");
    }
    let Some(p2m) = crate::xen::P2M.get() else {
        return t.skip(NAME, "no p2m list");
    };
    xen_cpu_up(0);
    let gdt1 = GDTS[1].base();
    let root = p2m.get((pt_base >> 12) as usize).copied().unwrap_or(0);
    let stack_top = &raw const AP_STACK as u64 + core::mem::size_of::<Stack>() as u64;
    let fields: [(usize, u64); 10] = [
        (ctx::FLAGS, VGCF_IN_KERNEL),
        (ctx::RIP, xen_ap_entry as *const () as u64),
        (ctx::CS, FLAT_KERNEL_CS),
        (ctx::RFLAGS, AP_CONTEXT_RFLAGS),
        (ctx::RSP, stack_top),
        (ctx::SS, pvops_xen::abi::FLAT_KERNEL_SS),
        (
            ctx::GDT_FRAMES,
            p2m.get((gdt1 >> 12) as usize).copied().unwrap_or(0),
        ),
        (ctx::GDT_ENTS, 16),
        (ctx::KERNEL_SS, pvops_xen::abi::FLAT_KERNEL_SS),
        (ctx::CR3, root << 12),
    ];
    for (off, v) in fields {
        CONTEXT.0[off / 8].store(v, Ordering::Relaxed);
    }
    CONTEXT.0[ctx::KERNEL_SP / 8].store(rsp0_top(1), Ordering::Relaxed);
    debug_assert!(ctx::SIZE <= core::mem::size_of::<Context>());
    let ro = make_read_only(p2m, gdt1);
    let init = xen_hc(
        VCPU_OP,
        VCPUOP_INITIALISE,
        1,
        &CONTEXT as *const Context as u64,
    );
    let up = xen_hc(VCPU_OP, VCPUOP_UP, 1, 0);
    crate::say!(
        "xen smp: read-only GDT page {ro:?}, VCPUOP_initialise(1) = {init}, VCPUOP_up(1) = {up}\n"
    );
    let mut waited = 0u64;
    while init == 0
        && up == 0
        && REPORT[1][DONE].load(Ordering::Acquire) == 0
        && waited < 2_000_000_000
    {
        core::hint::spin_loop();
        waited += 1;
    }
    let mut ok = init == 0 && up == 0;
    for cpu in 0..CPUS {
        let r = &REPORT[cpu];
        let get = |i: usize| r[i].load(Ordering::Acquire);
        let want = (TLS_BLOCKS[cpu].load(Ordering::Relaxed), GDTS[cpu].base());
        let this = get(DONE) == 1 && (get(FS0), get(GDT_BASE)) == want;
        ok &= this;
        crate::say!(
            "xen smp vcpu {cpu}: done={} err={:#x} fs:0={:#x} gdt={:#x} (want fs:0={:#x} gdt={:#x}) tls={:#x} kstack={:#x}\n",
            get(DONE),
            get(ERROR),
            get(FS0),
            get(GDT_BASE),
            want.0,
            want.1,
            &TLS_BLOCKS[cpu] as *const AtomicU64 as u64,
            rsp0_top(cpu)
        );
    }
    let f = AP_ENTRY_RFLAGS.load(Ordering::Relaxed);
    ok &= ap_entry_rflags_ok(f);
    crate::say!(
        "xen smp vcpu 1 entry rflags {f:#x} (context {AP_CONTEXT_RFLAGS:#x}): {}\n",
        if ap_entry_rflags_ok(f) {
            "ID, IF and bit 1 set, VM and reserved bits clear"
        } else {
            "WRONG: want ID, IF and bit 1 (IOPL aside)"
        }
    );
    t.check(
        NAME,
        ok,
        format_args!("started by VCPUOP_initialise + VCPUOP_up: {init}, {up}"),
    );
}
