//! The descriptor-write workload (issue 11, seed 2), run instead of the
//! checks when the boot flags carry [`crate::boot_flags::WORKLOAD`]: load a GDT, TR
//! and IDT laid out as [`Layout`] says, then N times a context switch
//! (`load_kernel_stack` + `load_tls` in lazy mode, as a kernel's switch
//! does, two threads alternating) followed by a load of FS from the new TLS
//! slot (the real GDT must not be stale: FS:[0] must read the thread's
//! probe), and a timer-style update of a variable (`ticks += 1`: a
//! relaxed load and store, which the release build compiles to one
//! `inc qword` on memory). Prints one `workload …` line with the TSC cycles
//! the loop took, and one check.

use core::arch::naked_asm;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use hvsim_boot_protocol::workload::{self, Layout};
use pvops::{
    Descriptor, DescriptorOps, DescriptorStorage, Gdt, Idt, IdtGate, Ring, Selector,
    SystemDescriptor, TableStorage, presets,
};

use crate::cpu::{direct_store, read_fs0};
use crate::report::Tally;
use crate::{KERNEL_CS, LAYOUT, TSS, TSS_SEL, boot_flags, say};

/// Gates in the workload's IDT (2 KiB: the exceptions and more).
const GATES: usize = 128;

/// Layout (b): the GDT and hot data in one page.
#[repr(C, align(4096))]
struct GdtAndHotData {
    gdt: UnsafeCell<[Descriptor; 16]>,
    hot: AtomicU64,
}

/// Layout (c): the IDT, then the start of BSS, in one page.
#[repr(C, align(4096))]
struct IdtAndBss {
    idt: UnsafeCell<[IdtGate; GATES]>,
    bss_start: AtomicU64,
}

// SAFETY: the tables are only accessed through raw pointers by the ops, the
// CPU and the hypervisor (the descriptor-table contract); the variable is
// atomic.
unsafe impl Sync for GdtAndHotData {}
// SAFETY: as above.
unsafe impl Sync for IdtAndBss {}

static GDT_A: DescriptorStorage<16> = DescriptorStorage::new(presets::LINUX_X86_64_GDT);
static IDT_A: TableStorage<IdtGate, GATES> = TableStorage::new([IdtGate::MISSING; GATES]);
static TICKS_A: AtomicU64 = AtomicU64::new(0);
static PAGE_B: GdtAndHotData = GdtAndHotData {
    gdt: UnsafeCell::new(presets::LINUX_X86_64_GDT),
    hot: AtomicU64::new(0),
};
static PAGE_C: IdtAndBss = IdtAndBss {
    idt: UnsafeCell::new([IdtGate::MISSING; GATES]),
    bss_start: AtomicU64::new(0),
};
/// What each thread's FS:[0] must read.
static PROBES: [AtomicU64; 2] = [
    AtomicU64::new(0x7e57_0000_0000_00a0),
    AtomicU64::new(0x7e57_0000_0000_00a1),
];

/// #PFs taken by [`pf_skip`].
static PF_TAKEN: AtomicU32 = AtomicU32::new(0);
/// The error code of the last one.
static PF_ERROR: AtomicU64 = AtomicU64::new(u64::MAX);
/// A page no guest access reaches under the trap-and-emulate personality
/// (hv-sim's page tables: not present).
const UNMAPPED_UNDER_TRAP: u64 = 0x2_0000;

/// #PF (native frame): count it, keep its error code and resume after
/// the 3-byte store of [`direct_store`].
#[unsafe(naked)]
extern "C" fn pf_skip() {
    naked_asm!(
        "push rax",
        "mov rax, [rsp + 8]",
        "mov [rip + {e}], rax",
        "pop rax",
        "add rsp, 8",
        "add qword ptr [rsp], 3",
        "lock inc dword ptr [rip + {c}]",
        "iretq",
        c = sym PF_TAKEN,
        e = sym PF_ERROR,
    )
}

/// The time-stamp counter.
fn rdtsc() -> u64 {
    // SAFETY: rdtsc has no memory effects; CR4.TSD is clear.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Thread `k`'s three TLS descriptors: FS's base at its probe.
fn tls(k: usize) -> [Descriptor; 3] {
    let probe = &PROBES[k] as *const AtomicU64 as u64;
    [
        Descriptor::data_segment(probe as u32, 0xfff, Ring::Ring0).unwrap_or_default(),
        Descriptor::data_segment(0, 0xf_ffff, Ring::Ring3).unwrap_or_default(),
        Descriptor::NULL,
    ]
}

/// The layout's (GDT, IDT, timer variable).
fn tables(layout: Layout) -> Option<(Gdt, Idt, &'static AtomicU64)> {
    let gdt_a = GDT_A.gdt().ok()?;
    let idt_a = Idt::new(IDT_A.base(), GATES as u32).ok()?;
    Some(match layout {
        Layout::Separate => (gdt_a, idt_a, &TICKS_A),
        Layout::GdtSharesHotData => (
            Gdt::new(PAGE_B.gdt.get() as u64, 16).ok()?,
            idt_a,
            &PAGE_B.hot,
        ),
        Layout::IdtSharesBss => (
            gdt_a,
            Idt::new(PAGE_C.idt.get() as u64, GATES as u32).ok()?,
            &PAGE_C.bss_start,
        ),
    })
}

/// Run the workload the boot flags describe; `tss`: the kernel has a TSS
/// of its own to describe and load (not under Xen).
pub fn run<O: DescriptorOps>(ops: &O, t: &mut Tally, flags: u64, tss: bool) {
    let layout = Layout::from_flags(flags);
    let n = workload::switches(flags);
    let Some((gdt, idt, ticks)) = tables(layout) else {
        t.check("workload tables", false, format_args!("rejected"));
        return;
    };
    // Before the tables are loaded (so before anything protects them): the
    // TSS descriptor, and thread 1's TLS so that thread 0's first switch
    // changes it.
    let tss_desc = SystemDescriptor::tss(TSS.base(), pvops::Tss64::LIMIT).unwrap_or_default();
    let slot = |i: u32| gdt.base() + u64::from(i) * 8;
    // SAFETY: slots inside the static GDT the layout names, not loaded yet.
    unsafe {
        if tss {
            pvops::table::store_u64(slot(LAYOUT.tss as u32), tss_desc.low);
            pvops::table::store_u64(slot(LAYOUT.tss as u32 + 1), tss_desc.high);
        }
        for (i, d) in tls(1).iter().enumerate() {
            pvops::table::store_u64(slot(LAYOUT.tls_first as u32 + i as u32), d.0);
        }
    }
    // The #PF gate, also before the IDT is loaded.
    let pf = IdtGate::interrupt_handler(Selector(KERNEL_CS), pf_skip, Ring::Ring0);
    // SAFETY: slot 14 of the static IDT the layout names, not loaded yet.
    unsafe {
        pvops::table::store_u64(idt.base() + 14 * 16, pf.low);
        pvops::table::store_u64(idt.base() + 14 * 16 + 8, pf.high);
    }
    // SAFETY: static tables and TSS that stay valid for the kernel's life.
    let r = unsafe {
        ops.load_gdt(&gdt)
            .and_then(|()| if tss { ops.load_tr(TSS_SEL) } else { Ok(()) })
            .and_then(|()| ops.load_idt(&idt))
            .and_then(|()| ops.load_kernel_stack(0x90_0000))
    };
    if let Err(e) = r {
        t.check("workload tables", false, format_args!("{e:?}"));
        return;
    }
    let tls_sel = Selector::gdt(LAYOUT.tls_first, Ring::Ring0).bits();
    let threads = [tls(0), tls(1)];
    let (mut mismatches, mut errors) = (0u32, 0u32);
    let start = rdtsc();
    for i in 0..n {
        let k = (i % 2) as usize;
        let e = ops.enter_lazy_cpu();
        // SAFETY: the TSS and GDT loaded above.
        let r = unsafe {
            ops.load_kernel_stack(0x90_0000 + k as u64 * 0x1000)
                .and_then(|()| ops.load_tls(&threads[k]))
        };
        let l = ops.leave_lazy_cpu();
        errors += u32::from(e.is_err() || r.is_err() || l.is_err());
        mismatches += u32::from(read_fs0(tls_sel) != PROBES[k].load(Ordering::Relaxed));
        // A timer tick, as `jiffies++` (one `inc qword` on memory).
        ticks.store(ticks.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }
    let cycles = rdtsc().wrapping_sub(start);
    let done = ticks.load(Ordering::Relaxed);
    say!(
        "{}layout={} switches={n} ticks={done} fs_mismatches={mismatches} errors={errors} cycles={cycles}\n",
        workload::LINE_PREFIX,
        layout.letter(),
    );
    if flags & boot_flags::DEPRIVILEGED != 0 {
        // A fault outside the protected pages still reaches the kernel.
        // SAFETY: the store faults (not present) into pf_skip, which skips it.
        unsafe { direct_store(UNMAPPED_UNDER_TRAP, 1) };
        let n = PF_TAKEN.load(Ordering::SeqCst);
        t.check(
            "workload #PF outside the table pages reaches the kernel's handler",
            n == 1,
            format_args!("#PF count={n}"),
        );
        split_store(ops, t, &idt);
    }
    t.check(
        "workload FS reads its thread's TLS after every switch",
        mismatches == 0 && errors == 0 && done == u64::from(n),
        format_args!("mismatches={mismatches} errors={errors} ticks={done}"),
    );
}

/// Under the trap personality: a 16-gate IDT at the end of the boot-stack
/// page (0x7000, the kernel's own RAM there), whose next page (0x8000) is
/// not mapped.
const SPLIT_IDT: u64 = 0x7f00;

/// An 8-byte store that starts in the IDT's page (write-protected by
/// hv-sim's write-protect mode) and continues into the not-present page:
/// as on a CPU, the kernel's handler gets #PF for the second page (error
/// code W, not P: 2) and neither page is written (SDM vol. 3A 6.15: the
/// faulting instruction is not executed). Then the workload's IDT again.
/// U (4) is not compared: without write protection the #PF comes straight
/// from the CPU, which runs the kernel in ring 3.
fn split_store<O: DescriptorOps>(ops: &O, t: &mut Tally, idt: &Idt) {
    const NAME: &str = "workload store from a table page into a not-present page";
    const PATTERN: u64 = 0x5a5a_5a5a_5a5a_5a5a;
    let pf = IdtGate::interrupt_handler(Selector(KERNEL_CS), pf_skip, Ring::Ring0);
    let gate = |v: u64| SPLIT_IDT + v * 16;
    // SAFETY: the boot-stack page is the kernel's RAM, unused once it runs
    // on its own stack; nothing has loaded it as a table yet.
    unsafe {
        for v in 0..16 {
            pvops::table::store_u64(gate(v), 0);
            pvops::table::store_u64(gate(v) + 8, 0);
        }
        pvops::table::store_u64(gate(14), pf.low);
        pvops::table::store_u64(gate(14) + 8, pf.high);
        // Gate 15's upper half (not present: its lower half is 0): what
        // the store would overwrite in this page.
        pvops::table::store_u64(gate(15) + 8, PATTERN);
    }
    let before = PF_TAKEN.load(Ordering::SeqCst);
    let r = Idt::new(SPLIT_IDT, 16).and_then(|split| {
        // SAFETY: a valid IDT (gate 14 present) while the store runs, the
        // workload's own one back after it.
        unsafe {
            ops.load_idt(&split)?;
            direct_store(gate(15) + 12, 0x1122_3344_5566_7788);
            ops.load_idt(idt)
        }
    });
    let taken = PF_TAKEN.load(Ordering::SeqCst) - before;
    let err = PF_ERROR.load(Ordering::SeqCst);
    // SAFETY: reading the kernel's own RAM.
    let kept = unsafe { core::ptr::read_volatile((gate(15) + 8) as *const u64) };
    t.check(
        NAME,
        r.is_ok() && taken == 1 && err & !4 == 2 && kept == PATTERN,
        format_args!(
            "#PF, nothing written: {r:?} #PF count={taken} error code={err:#x} first page {kept:#x}"
        ),
    );
}
