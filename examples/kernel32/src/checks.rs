//! Every descriptor-table op through pvops' native backend in 32-bit
//! protected mode, each effect read back with the raw instruction.

use core::arch::asm;
use core::sync::atomic::{AtomicU32, Ordering};

use pvops::{
    Descriptor, DescriptorOps, DescriptorStorage, Gate32, GdtEntry, GdtLayout, IdtStorage, PvError,
    Ring, Selector, SystemDescriptor, Tss32, TssStorage, presets,
};
use pvops_native::NativeOps;

use crate::{
    BP_COUNT, ENTRY_ESP, ENTRY_SS, FRAME_CS, FRAME_ESP, FRAME_SS, GP_COUNT, GP_CS, GP_EFLAGS,
    GP_ERROR, RESUME, SAVED_ESP, Tally, UD_COUNT, bp_handler, gp_handler, int80_handler,
    ud_handler,
};

/// Linux i386's GDT layout (`asm/segment.h`): TLS 6..=8, kernel code and
/// data 12 and 13, user code and data 14 and 15, TSS 16, LDT 17.
pub(crate) const LAYOUT: GdtLayout = GdtLayout::LINUX_I386;
const KERNEL_CS: u16 = 12 << 3;
/// Linux i386's `__KERNEL_DS`.
pub const KERNEL_DS: u16 = 13 << 3;
const USER_CS: u16 = (14 << 3) | 3;
const USER_DS: u16 = (15 << 3) | 3;
pub(crate) const TSS_SEL: Selector = Selector::gdt(LAYOUT.tss, Ring::Ring0);
const LDT_SEL: Selector = Selector::gdt(LAYOUT.ldt, Ring::Ring0);
/// A slot Linux i386 leaves unused, for a 64-bit code segment a 32-bit gate
/// must not target.
const SPARE: u32 = 2;
/// Linux i386's `GDT_ENTRIES`.
const GDT_ENTRIES: usize = 32;

const fn initial_gdt() -> [Descriptor; GDT_ENTRIES] {
    let mut g = [Descriptor::NULL; GDT_ENTRIES];
    g[12] = presets::I386_KERNEL_CODE;
    g[13] = presets::I386_KERNEL_DATA;
    g[14] = presets::I386_USER_CODE;
    g[15] = presets::I386_USER_DATA;
    g
}

pub(crate) static GDT: DescriptorStorage<GDT_ENTRIES> = DescriptorStorage::new(initial_gdt());
pub(crate) static IDT: IdtStorage<256> = IdtStorage::new([Gate32::MISSING; 256]);
static LDT: DescriptorStorage<4> = DescriptorStorage::new([Descriptor::NULL; 4]);
pub(crate) static TSS: TssStorage<Tss32> = TssStorage::new(Tss32::new().with_stack0(KERNEL_DS, 0));

/// The stacks of the ring-3 round trip: ring 3's, and the ring-0 stack
/// `load_kernel_stack` names in TSS.esp0.
#[repr(C, align(16))]
struct SmallStack([u8; 4096]);
static mut USER_STACK: SmallStack = SmallStack([0; 4096]);
static mut RING0_STACK: SmallStack = SmallStack([0; 4096]);

/// What `FS:[0]` / `GS:[0]` read through the LDT and TLS segments.
static LDT_PROBE: AtomicU32 = AtomicU32::new(0x1d7_0b1e);
static TLS_PROBE: AtomicU32 = AtomicU32::new(0x7150_0b1e);

/// `sgdt`/`sidt` into a 10-byte buffer pre-filled with 0xAA: (limit, base,
/// bytes 6..10). In protected mode the operand is 6 bytes, so the last four
/// stay 0xAA.
fn raw_sxdt(idt: bool) -> (u16, u32, [u8; 4]) {
    let mut b = [0xaau8; 10];
    // SAFETY: sgdt/sidt write at most 10 bytes into the buffer.
    unsafe {
        if idt {
            asm!("sidt [{0}]", in(reg) b.as_mut_ptr(), options(nostack));
        } else {
            asm!("sgdt [{0}]", in(reg) b.as_mut_ptr(), options(nostack));
        }
    }
    (
        u16::from_le_bytes([b[0], b[1]]),
        u32::from_le_bytes([b[2], b[3], b[4], b[5]]),
        [b[6], b[7], b[8], b[9]],
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

fn lsl(sel: u16) -> Option<u32> {
    let mut v: u32 = 0;
    let ok: u8;
    // SAFETY: lsl only reads the descriptor table and sets ZF.
    unsafe {
        asm!("lsl {v}, {s}", "setz {ok}", s = in(reg) sel as u32, v = inout(reg) v, ok = out(reg_byte) ok, options(nostack))
    };
    (ok != 0).then_some(v)
}

/// Reload CS (far jump) and DS, ES, SS from the loaded GDT.
///
/// # Safety
/// The loaded GDT must hold a 32-bit code segment at KERNEL_CS and a data
/// segment at KERNEL_DS, both flat.
pub(crate) unsafe fn reload_segments() {
    // SAFETY: per the contract; the far return lands on the next label.
    unsafe {
        asm!(
            "push {cs}",
            "lea {tmp}, [2f]",
            "push {tmp}",
            "retf",
            "2:",
            "mov {ds:e}, {dsv}",
            "mov ds, {ds:x}",
            "mov es, {ds:x}",
            "mov ss, {ds:x}",
            cs = const KERNEL_CS as u32,
            dsv = const KERNEL_DS as u32,
            tmp = out(reg) _,
            ds = out(reg) _,
        )
    };
}

/// Load DS with a selector past the GDT: #GP(selector) into gp_handler,
/// which skips the 2-byte `mov ds, ax`. Then restore DS.
fn faulting_segment_load(sel: u16) {
    // SAFETY: the fault is handled by gp_handler, which resumes after the
    // faulting instruction; DS is restored afterwards.
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

/// Read the dword at `FS:[0]` (`gs == false`) or `GS:[0]` through `sel`, then
/// load the null selector again.
fn read_seg0(sel: u16, gs: bool) -> u32 {
    let v: u32;
    // SAFETY: `sel` names a present data segment whose base points at a
    // probe word; the register is reset to null afterwards.
    unsafe {
        if gs {
            asm!("mov gs, {s:x}", "mov {v}, dword ptr gs:[0]", "mov gs, {z:x}",
                s = in(reg) sel, z = in(reg) 0u16, v = out(reg) v, options(nostack, readonly));
        } else {
            asm!("mov fs, {s:x}", "mov {v}, dword ptr fs:[0]", "mov fs, {z:x}",
                s = in(reg) sel, z = in(reg) 0u16, v = out(reg) v, options(nostack, readonly));
        }
    }
    v
}

fn cr0() -> u32 {
    let v: u32;
    // SAFETY: reading CR0 has no side effects (ring 0).
    unsafe { asm!("mov {}, cr0", out(reg) v, options(nomem, nostack)) };
    v
}

/// Run every check on the native backend.
pub fn run(t: &mut Tally, start_info: u32) {
    let cr0 = cr0();
    t.check(
        "protected mode, paging off",
        cr0 & 1 != 0 && cr0 & (1 << 31) == 0 && size_of::<usize>() == 4,
        format_args!(
            "CR0 {cr0:#x} (PE bit 0, PG bit 31), usize {} bytes",
            size_of::<usize>()
        ),
    );
    // SAFETY: QEMU's PVH loader passed the hvm_start_info's address in ebx;
    // paging is off, so it is readable at that address.
    let magic = unsafe { (start_info as usize as *const u32).read_volatile() };
    t.check(
        "pvh start info",
        magic == pvops_pvh_magic(),
        format_args!("at {start_info:#x}, magic {magic:#x}"),
    );
    // SAFETY: ring 0, and every table loaded below is a static that stays
    // valid while loaded.
    let ops = unsafe { NativeOps::new(LAYOUT) };
    tables(&ops, t);
    idt(&ops, t);
    ring3_round_trip(&ops, t);
    ldt_and_tls(&ops, t);
    refusals(&ops, t);
}

/// `XEN_HVM_START_MAGIC_VALUE` (Xen's `arch-x86/hvm/start_info.h`).
const fn pvops_pvh_magic() -> u32 {
    0x336e_c578
}

/// GDT (6-byte operands), TSS (8-byte descriptor), TR, TSS.esp0.
fn tables(ops: &NativeOps, t: &mut Tally) {
    let gdt = GDT.gdt().expect("a static GDT is a valid table");
    // SAFETY: static GDT with flat 32-bit code and data at KERNEL_CS/DS.
    let r = unsafe { ops.load_gdt(&gdt) };
    // SAFETY: as above.
    unsafe { reload_segments() };
    let (cs, ds, ss) = segs();
    t.check(
        "load_gdt + segment reload",
        r.is_ok() && cs == KERNEL_CS && ds == KERNEL_DS && ss == KERNEL_DS,
        format_args!("{r:?} cs={cs:#x} ds={ds:#x} ss={ss:#x}"),
    );
    let (limit, base, rest) = raw_sxdt(false);
    let sg = ops.store_gdt();
    t.check(
        "store_gdt (6-byte sgdt)",
        sg == Ok(gdt.pointer())
            && u64::from(base) == gdt.base()
            && limit == (GDT_ENTRIES * 8 - 1) as u16
            && rest == [0xaa; 4],
        format_args!("{sg:x?}; raw limit {limit:#x} base {base:#x}, bytes 6..10 {rest:x?}"),
    );

    let desc = TSS.descriptor().expect("the TSS lies below 4 GiB");
    // SAFETY: static GDT and TSS.
    let r = unsafe { ops.write_gdt_entry(&gdt, LAYOUT.tss as u32, GdtEntry::Single(desc)) };
    // SAFETY: as above.
    let r2 = unsafe { ops.load_tr(TSS_SEL) };
    let slot = GDT.read(LAYOUT.tss as usize).unwrap_or_default();
    let next = GDT.read(LAYOUT.tss as usize + 1).unwrap_or_default();
    t.check(
        "write_gdt_entry + load_tr (8-byte 32-bit TSS descriptor, busy)",
        r.is_ok()
            && r2.is_ok()
            && raw_str() == TSS_SEL.bits()
            && ops.store_tr() == Ok(TSS_SEL)
            && slot.typ() == 0xb
            && u64::from(slot.base()) == TSS.base()
            && slot.effective_limit() == Tss32::LIMIT
            && next == Descriptor::NULL,
        format_args!(
            "{r:?} {r2:?} str={:#x} slot {:#018x} (type {:#x}), next slot {:#x}",
            raw_str(),
            slot.0,
            slot.typ(),
            next.0
        ),
    );
    // SAFETY: as above.
    let again = unsafe { ops.load_tr(TSS_SEL) };
    t.check(
        "load_tr refuses the busy TSS",
        again.is_err(),
        format_args!("{again:?}"),
    );
    let sp0 = 0x0090_0000u64;
    // SAFETY: TR names our static TSS.
    let r = unsafe { ops.load_kernel_stack(sp0) };
    // SAFETY: nothing else writes the TSS now (one CPU, no task switch).
    let tss = unsafe { TSS.read() };
    t.check(
        "load_kernel_stack -> TSS.esp0",
        r.is_ok() && u64::from(tss.esp0) == sp0 && tss.ss0 == KERNEL_DS,
        format_args!("{r:?} esp0={:#x} ss0={:#x}", tss.esp0, tss.ss0),
    );
}

/// 32-bit gates, `lidt`/`sidt`, exceptions delivered through them.
fn idt(ops: &NativeOps, t: &mut Tally) {
    let idt = IDT.idt().expect("a static IDT is a valid table");
    let cs = Selector(KERNEL_CS);
    let gate = |h: extern "C" fn(), dpl| Gate32::interrupt(cs, h as usize as u32, dpl);
    // SAFETY: static IDT; the handlers are the naked stubs in main.rs.
    let r = unsafe {
        ops.write_idt_entry(&idt, 3, gate(bp_handler, Ring::Ring3))
            .and_then(|()| ops.write_idt_entry(&idt, 6, gate(ud_handler, Ring::Ring0)))
            .and_then(|()| ops.write_idt_entry(&idt, 13, gate(gp_handler, Ring::Ring0)))
            .and_then(|()| ops.load_idt(&idt))
    };
    let (limit, base, rest) = raw_sxdt(true);
    let gp = IDT.read(13).unwrap_or_default();
    t.check(
        "write_idt_entry + load_idt/store_idt (32-bit gates, 6-byte sidt)",
        r.is_ok()
            && ops.store_idt() == Ok(idt.pointer())
            && limit == 256 * 8 - 1
            && u64::from(base) == idt.base()
            && rest == [0xaa; 4]
            && gp.offset() == gp_handler as extern "C" fn() as usize as u32
            && gp.selector() == cs,
        format_args!(
            "{r:?}; raw limit {limit:#x} base {base:#x}, bytes 6..10 {rest:x?}; gate 13 {:#018x}",
            gp.0
        ),
    );
    // SAFETY: int3 traps into bp_handler, which returns.
    unsafe { asm!("int3", options(nomem, nostack)) };
    let n = BP_COUNT.load(Ordering::SeqCst);
    t.check(
        "int3 lands in the #BP handler (32-bit gate)",
        n == 1,
        format_args!("count={n}"),
    );
    // SAFETY: ud2 faults into ud_handler, which skips it.
    unsafe { asm!("ud2", options(nomem, nostack)) };
    let n = UD_COUNT.load(Ordering::SeqCst);
    t.check(
        "ud2 lands in the #UD handler (32-bit gate)",
        n == 1,
        format_args!("count={n}"),
    );
    faulting_segment_load(0x7f8);
    let (n, err) = (
        GP_COUNT.load(Ordering::SeqCst),
        GP_ERROR.load(Ordering::SeqCst),
    );
    let (fcs, fl) = (
        GP_CS.load(Ordering::SeqCst),
        GP_EFLAGS.load(Ordering::SeqCst),
    );
    // A 32-bit frame: error code, EIP, CS (zero-extended), EFLAGS (bit 1
    // always set), four bytes each.
    t.check(
        "bad selector -> #GP(selector) through a 32-bit gate, 32-bit frame",
        n == 1 && err == 0x7f8 && fcs == u32::from(KERNEL_CS) && fl & 2 != 0,
        format_args!("count={n} error={err:#x} frame cs={fcs:#x} eflags={fl:#x}"),
    );
}

/// `iretd` to ring 3 (user code and data of the GDT), `int 0x80` through
/// a DPL 3 32-bit gate: the CPU takes the ring-0 stack from the 32-bit TSS
/// (`load_kernel_stack` wrote esp0) and pushes a 5-dword frame on it.
fn ring3_round_trip(ops: &NativeOps, t: &mut Tally) {
    let idt = IDT.idt().expect("a static IDT is a valid table");
    let top0 = (&raw const RING0_STACK) as u32 + size_of::<SmallStack>() as u32;
    let top3 = (&raw const USER_STACK) as u32 + size_of::<SmallStack>() as u32;
    let gate = Gate32::interrupt(
        Selector(KERNEL_CS),
        int80_handler as extern "C" fn() as usize as u32,
        Ring::Ring3,
    );
    // SAFETY: static IDT and TSS; the handler is the naked stub in main.rs.
    let r = unsafe {
        ops.write_idt_entry(&idt, 0x80, gate)
            .and_then(|()| ops.load_kernel_stack(u64::from(top0)))
    };
    if r.is_ok() {
        // SAFETY: the user segments are flat and present (DPL 3), paging is
        // off, so ring 3 may run this code on USER_STACK; `int 0x80` enters
        // int80_handler on RING0_STACK, which restores the saved ESP and
        // jumps to label 4. ebx, esi and ebp are saved on the kernel stack
        // and restored; every other register is declared clobbered.
        unsafe {
            asm!(
                "push ebp",
                "push esi",
                "push ebx",
                "lea eax, [4f]",
                "mov [{resume}], eax",
                "mov [{saved}], esp",
                "push {uds}",
                "push ecx",
                "pushfd",
                "push {ucs}",
                "lea eax, [3f]",
                "push eax",
                "iretd",
                "3:",
                "int 0x80",
                "ud2",
                "4:",
                "mov eax, {kds}",
                "mov ds, eax",
                "mov es, eax",
                "pop ebx",
                "pop esi",
                "pop ebp",
                resume = sym RESUME,
                saved = sym SAVED_ESP,
                uds = const USER_DS as u32,
                ucs = const USER_CS as u32,
                kds = const KERNEL_DS as u32,
                in("ecx") top3,
                out("eax") _,
                out("edx") _,
                out("edi") _,
            )
        };
    }
    let (esp, ss) = (
        ENTRY_ESP.load(Ordering::SeqCst),
        ENTRY_SS.load(Ordering::SeqCst),
    );
    let (cs3, esp3, ss3) = (
        FRAME_CS.load(Ordering::SeqCst),
        FRAME_ESP.load(Ordering::SeqCst),
        FRAME_SS.load(Ordering::SeqCst),
    );
    t.check(
        "ring 3 -> int 0x80 enters on TSS.ss0:esp0 (32-bit inter-privilege frame)",
        r.is_ok()
            && esp == top0 - 20
            && ss == u32::from(KERNEL_DS)
            && cs3 & 0xffff == u32::from(USER_CS)
            && esp3 == top3
            && ss3 & 0xffff == u32::from(USER_DS),
        format_args!(
            "{r:?}; esp0 {top0:#x}, handler esp {esp:#x} ss {ss:#x}; frame cs {cs3:#x} esp {esp3:#x} ss {ss3:#x}"
        ),
    );
}

/// LDT (8-byte descriptor in the GDT), TLS, and context switches.
fn ldt_and_tls(ops: &NativeOps, t: &mut Tally) {
    let Ok(ldt) = LDT.ldt() else {
        t.check("tables", false, format_args!("table storage rejected"));
        return;
    };
    let probe = &LDT_PROBE as *const AtomicU32 as u32;
    let data = Descriptor::data_segment(probe, 0xfff, Ring::Ring0).unwrap_or_default();
    // SAFETY: static LDT and GDT.
    let r = unsafe {
        ops.alloc_ldt(&ldt)
            .and_then(|()| ops.write_ldt_entry(&ldt, 1, data))
            .and_then(|()| ops.load_ldt(Some(&ldt)))
    };
    let slot = GDT.read(LAYOUT.ldt as usize).unwrap_or_default();
    let next = GDT.read(LAYOUT.ldt as usize + 1).unwrap_or_default();
    t.check(
        "write_ldt_entry + load_ldt (8-byte LDT descriptor, sldt, store_ldt)",
        r.is_ok()
            && raw_sldt() == LDT_SEL.bits()
            && ops.store_ldt() == Ok(Some(ldt))
            && slot.typ() == 0x2
            && u64::from(slot.base()) == ldt.base()
            && next == Descriptor::NULL,
        format_args!(
            "{r:?} sldt={:#x} slot {:#018x}, next slot {:#x}",
            raw_sldt(),
            slot.0,
            next.0
        ),
    );
    let ldt_sel = Selector::ldt(1, Ring::Ring0).bits();
    let v = read_seg0(ldt_sel, false);
    t.check(
        "LDT selector loads (FS:[0] through LDT[1])",
        v == LDT_PROBE.load(Ordering::SeqCst) && lsl(ldt_sel) == Some(0xfff),
        format_args!("{v:#x} lsl={:x?}", lsl(ldt_sel)),
    );

    // Context switches: load_tls + load_kernel_stack + load_ldt, lazy.
    let probe = &TLS_PROBE as *const AtomicU32 as u32;
    let tls_sel = Selector::gdt(LAYOUT.tls_first, Ring::Ring0).bits();
    let mut ok = true;
    for i in 0..64u32 {
        let tls = [
            Descriptor::data_segment(probe, 0xfff + i * 0x1000, Ring::Ring0).unwrap_or_default(),
            Descriptor::data_segment(0, 0xf_ffff, Ring::Ring3).unwrap_or_default(),
            Descriptor::NULL,
        ];
        let sp0 = 0x0090_0000 + i * 0x1000;
        let e = ops.enter_lazy_cpu();
        // SAFETY: static GDT/TSS/LDT.
        let r = unsafe {
            ops.load_tls(&tls)
                .and_then(|()| ops.load_kernel_stack(u64::from(sp0)))
                .and_then(|()| ops.load_ldt(if i % 2 == 0 { Some(&ldt) } else { None }))
        };
        let l = ops.leave_lazy_cpu();
        // SAFETY: one CPU, no task switch: nothing writes the TSS now.
        let esp0 = unsafe { TSS.read() }.esp0;
        ok &= e.is_ok()
            && r.is_ok()
            && l.is_ok()
            && lsl(tls_sel) == Some(0xfff + i * 0x1000)
            && read_seg0(tls_sel, true) == TLS_PROBE.load(Ordering::SeqCst)
            && esp0 == sp0
            && raw_sldt() == if i % 2 == 0 { LDT_SEL.bits() } else { 0 };
    }
    t.check(
        "64 context switches (load_tls via GS, load_kernel_stack, load_ldt) in lazy mode",
        ok,
        format_args!(""),
    );
    // SAFETY: the LDT is no longer loaded (the last iteration loaded none).
    let r = unsafe { ops.free_ldt(&ldt) };
    t.check("free_ldt", r.is_ok(), format_args!("{r:?}"));
}

/// What 32-bit mode forbids, refused before anything is written.
fn refusals(ops: &NativeOps, t: &mut Tally) {
    let (Ok(gdt), Ok(idt)) = (GDT.gdt(), IDT.idt()) else {
        t.check("tables", false, format_args!("table storage rejected"));
        return;
    };
    let before = GDT.read(LAYOUT.tss as usize + 1);
    let wide = SystemDescriptor::tss(TSS.base(), Tss32::LIMIT).expect("a TSS below 4 GiB");
    // SAFETY: refused before any store (checked below).
    let r = unsafe { ops.write_gdt_entry(&gdt, LAYOUT.tss as u32 + 1, GdtEntry::Double(wide)) };
    t.check(
        "write_gdt_entry refuses a 16-byte descriptor",
        matches!(r, Err(PvError::DoubleSlotUnsupported))
            && GDT.read(LAYOUT.tss as usize + 1) == before,
        format_args!("{r:?}"),
    );

    // A 64-bit code segment in a spare slot: a 32-bit gate may not use it.
    // SAFETY: static GDT; the slot is unused.
    let w = unsafe { ops.write_gdt_entry(&gdt, SPARE, GdtEntry::Single(presets::KERNEL_CODE64)) };
    let before = IDT.read(0);
    let g = Gate32::interrupt(
        Selector::gdt(SPARE as u16, Ring::Ring0),
        0x10_0000,
        Ring::Ring0,
    );
    // SAFETY: refused before any store (checked below).
    let r = unsafe { ops.write_idt_entry(&idt, 0, g) };
    t.check(
        "write_idt_entry refuses a 32-bit gate to a 64-bit code segment",
        w.is_ok() && r.is_err() && IDT.read(0) == before,
        format_args!("{w:?}; {r:?}"),
    );

    // SAFETY: refused before any store (checked below).
    let r = unsafe { ops.load_kernel_stack(1 << 32) };
    // SAFETY: one CPU, no task switch.
    let esp0 = unsafe { TSS.read() }.esp0;
    t.check(
        "load_kernel_stack refuses a stack above 4 GiB",
        r.is_err() && esp0 == 0x0090_0000 + 63 * 0x1000,
        format_args!("{r:?} esp0={esp0:#x}"),
    );
}
