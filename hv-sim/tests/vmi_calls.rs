//! hv-sim's VMI personality driven call by call through the ROM's stubs,
//! for a 32-bit (original VMI) guest: 6-byte DTRs, descriptors as two
//! 32-bit words, the kernel compressed to ring 1. Every call 3–14 and
//! SetLazyMode (73), with the guest's view and the effective state asserted.

use hv_sim::vmi::machine::{EFFECTIVE_GDT_32, EFFECTIVE_IDT_32};
use hv_sim::vmi::{GuestKind, RamMemory, VmiEvent, VmiHypervisor};
use pvops::descriptor::SystemType;
use pvops::{Descriptor, Gate32, Ring, Selector, presets};

/// VMI API 3.0 call numbers: literals from Linux `asm/vmi.h` (not either
/// crate's constants, so a wrong number on either side fails here).
mod call {
    pub const SET_GDT: u32 = 3;
    pub const SET_LDT: u32 = 4;
    pub const SET_IDT: u32 = 5;
    pub const SET_TR: u32 = 6;
    pub const GET_GDT: u32 = 7;
    pub const GET_LDT: u32 = 8;
    pub const GET_IDT: u32 = 9;
    pub const GET_TR: u32 = 10;
    pub const WRITE_GDT_ENTRY: u32 = 11;
    pub const WRITE_LDT_ENTRY: u32 = 12;
    pub const WRITE_IDT_ENTRY: u32 = 13;
    pub const UPDATE_KERNEL_STACK: u32 = 14;
    pub const SET_LAZY_MODE: u32 = 73;
}

const RAM: u64 = 0xC100_0000;
const GDT: u64 = RAM;
const IDT: u64 = RAM + 0x1000;
const LDT: u64 = RAM + 0x2000;
const TSS: u64 = RAM + 0x3000;
const DTR: u64 = RAM + 0x4000;
const OUT: u64 = RAM + 0x4100;

type Hv = VmiHypervisor<RamMemory>;

fn machine() -> Hv {
    let hv = VmiHypervisor::new(GuestKind::Vmi32, RamMemory::new(RAM, 0x10000));
    // hv-sim's ROM is at 0xC8000; VMI_Init is its jump point at +0x80
    // (`struct vrom_header`). (The guest's probe is tested in vmi_rom.rs;
    // nothing here runs guest-crate code; `call_entry` and `reloc_query`
    // are the `VmiPlatform` transport.)
    assert_eq!(hv.call_entry(0xC8080, [0; 4]), 0);
    hv
}

/// Call `nr` through the entry its relocation answer names.
fn c(hv: &Hv, nr: u32, args: [u64; 4]) -> i64 {
    let (eip, typ) = hv.reloc_query(0xC8088, nr);
    assert_eq!(typ, 1, "call {nr} is CALL_REL");
    assert_eq!(eip, 0xC8000 + 0x100 + 16 * nr as u64, "call {nr}'s stub");
    let r = hv.call_entry(eip, args) as i64;
    if let Err(e) = hv.check_invariants() {
        panic!("invariant broken after call {nr}: {e}\n{}", hv.trace());
    }
    r
}

fn words(d: u64) -> (u64, u64) {
    (d & 0xffff_ffff, d >> 32)
}

fn dtr(hv: &Hv, at: u64, limit: u16, base: u32) {
    let mut b = [0u8; 6];
    b[..2].copy_from_slice(&limit.to_le_bytes());
    b[2..].copy_from_slice(&base.to_le_bytes());
    for (i, x) in b.iter().enumerate() {
        let a = at + i as u64;
        let old = hv.memory().read_u64(a & !7);
        let sh = (a & 7) * 8;
        hv.memory()
            .write_u64(a & !7, (old & !(0xff << sh)) | ((*x as u64) << sh));
    }
}

fn read_dtr(hv: &Hv, at: u64) -> (u16, u32) {
    let lo = hv.memory().read_u64(at);
    ((lo & 0xffff) as u16, (lo >> 16) as u32)
}

fn reason(hv: &Hv) -> String {
    hv.trace().last_call().unwrap().1.unwrap_or("").to_string()
}

/// SetGDT with kernel/user code and data at 12..=15 (Linux i386 style
/// slots are elsewhere; any works) and 32 entries.
fn boot_gdt(hv: &Hv) {
    let m = hv.memory();
    m.write_u64(GDT + 12 * 8, presets::I386_KERNEL_CODE.0);
    m.write_u64(GDT + 13 * 8, presets::I386_KERNEL_DATA.0);
    m.write_u64(GDT + 14 * 8, presets::I386_USER_CODE.0);
    m.write_u64(GDT + 15 * 8, presets::I386_USER_DATA.0);
    dtr(hv, DTR, 32 * 8 - 1, GDT as u32);
    assert_eq!(c(hv, call::SET_GDT, [DTR, 0, 0, 0]), 0, "{}", reason(hv));
}

#[test]
fn set_and_get_gdt_ring1_compression() {
    let hv = machine();
    // A 64-bit code segment is refused for a 32-bit guest.
    hv.memory().write_u64(GDT + 8, presets::KERNEL_CODE64.0);
    dtr(&hv, DTR, 32 * 8 - 1, GDT as u32);
    assert_eq!(c(&hv, call::SET_GDT, [DTR, 0, 0, 0]), -22);
    assert!(reason(&hv).contains("GDT[1]: L bit set"), "{}", reason(&hv));
    assert_eq!(hv.guest().gdtr, None);
    hv.memory().write_u64(GDT + 8, 0);
    boot_gdt(&hv);
    let g = hv.guest().gdtr.unwrap();
    assert_eq!((g.limit, g.base), (255, GDT));
    let e = hv.effective();
    assert_eq!(e.gdt_base, EFFECTIVE_GDT_32);
    assert_eq!(e.gdt.len(), 34);
    let kc = Descriptor(e.gdt[12]);
    assert_eq!(kc.dpl(), Ring::Ring1);
    assert!(kc.segment_type().contains(pvops::SegmentType::ACCESSED));
    assert_eq!(Descriptor(e.gdt[15]).dpl(), Ring::Ring3);
    // The guest's table is untouched.
    assert_eq!(
        hv.memory().read_u64(GDT + 12 * 8),
        presets::I386_KERNEL_CODE.0
    );
    // GetGDT: the 6-byte guest view.
    assert_eq!(c(&hv, call::GET_GDT, [OUT, 0, 0, 0]), 0);
    assert_eq!(read_dtr(&hv, OUT), (255, GDT as u32));
    // A bad pointer: -EFAULT.
    assert_eq!(c(&hv, call::GET_GDT, [0x10, 0, 0, 0]), -14);
    // A limit that is not 8n-1.
    dtr(&hv, DTR, 100, GDT as u32);
    assert_eq!(c(&hv, call::SET_GDT, [DTR, 0, 0, 0]), -22);
    assert!(reason(&hv).contains("not 8n-1"));
}

#[test]
fn tss_tr_and_kernel_stack() {
    let hv = machine();
    boot_gdt(&hv);
    let tss = Descriptor::system32(SystemType::Tss, TSS as u32, 0x67, Ring::Ring0).unwrap();
    let (lo, hi) = words(tss.0);
    assert_eq!(c(&hv, call::WRITE_GDT_ENTRY, [GDT, 16, lo, hi]), 0);
    assert_eq!(hv.memory().read_u64(GDT + 16 * 8), tss.0);
    assert_eq!(hv.effective().gdt[16], tss.0);
    // UpdateKernelStack naming the TSS before SetTR is refused: it is not
    // the loaded TR, and not a data segment either.
    assert_eq!(
        c(&hv, call::UPDATE_KERNEL_STACK, [0x80, RAM + 0x8000, 0, 0]),
        -22
    );
    assert!(
        reason(&hv).contains("GDT[16] = ") && reason(&hv).contains("writable data segment"),
        "{}",
        reason(&hv)
    );
    assert_eq!(c(&hv, call::SET_TR, [0x80, 0, 0, 0]), 0, "{}", reason(&hv));
    assert_eq!(hv.guest().tr, Selector(0x80));
    let e = hv.effective();
    assert_eq!((e.tr, e.tss_base, e.tss_limit), (Selector(0x80), TSS, 0x67));
    assert_eq!(Descriptor(e.gdt[16]).system_type(), SystemType::TssBusy);
    assert_eq!(
        Descriptor(hv.memory().read_u64(GDT + 16 * 8)).system_type(),
        SystemType::Tss
    );
    assert_eq!(c(&hv, call::GET_TR, [0; 4]), 0x80);
    assert_eq!(
        c(&hv, call::UPDATE_KERNEL_STACK, [0x80, RAM + 0x8000, 0, 0]),
        0
    );
    assert_eq!(
        hv.guest().kernel_stack,
        Some((Selector(0x80), RAM + 0x8000))
    );
    assert_eq!(hv.effective().sp0, RAM + 0x8000);
    // sp0 beyond 4 GiB, or another TSS selector.
    assert_eq!(
        c(&hv, call::UPDATE_KERNEL_STACK, [0x80, 1 << 32, 0, 0]),
        -22
    );
    assert_eq!(c(&hv, call::UPDATE_KERNEL_STACK, [0x88, RAM, 0, 0]), -22);
    assert!(reason(&hv).contains("is not the loaded TR"));
    assert!(reason(&hv).contains("not a present writable data segment"));
    // SetTR on a data segment.
    assert_eq!(c(&hv, call::SET_TR, [13 << 3, 0, 0, 0]), -22);
    assert!(reason(&hv).contains("expected an available TSS"));
}

/// Linux i386's order and arguments: cpu_init calls load_sp0 before
/// set_tss_desc/load_TR_desc, and vmi_load_sp0 passes `__KERNEL_DS`
/// (GDT_ENTRY_KERNEL_DS 13 * 8 = 0x68), not the TSS, to UpdateKernelStack.
#[test]
fn update_kernel_stack_as_linux_calls_it() {
    const KERNEL_DS: u64 = 13 << 3;
    let hv = machine();
    // Before SetGDT there is no stack segment to name.
    assert_eq!(
        c(
            &hv,
            call::UPDATE_KERNEL_STACK,
            [KERNEL_DS, RAM + 0x8000, 0, 0]
        ),
        -22
    );
    assert!(reason(&hv).contains("SetGDT first"), "{}", reason(&hv));
    boot_gdt(&hv);
    // cpu_init: load_sp0, then the TSS descriptor, then SetTR.
    assert_eq!(
        c(
            &hv,
            call::UPDATE_KERNEL_STACK,
            [KERNEL_DS, RAM + 0x8000, 0, 0]
        ),
        0,
        "{}",
        reason(&hv)
    );
    assert_eq!(
        hv.guest().kernel_stack,
        Some((Selector(KERNEL_DS as u16), RAM + 0x8000))
    );
    assert_eq!(hv.effective().sp0, RAM + 0x8000);
    let tss = Descriptor::system32(SystemType::Tss, TSS as u32, 0x67, Ring::Ring0).unwrap();
    let (lo, hi) = words(tss.0);
    assert_eq!(c(&hv, call::WRITE_GDT_ENTRY, [GDT, 16, lo, hi]), 0);
    assert_eq!(c(&hv, call::SET_TR, [0x80, 0, 0, 0]), 0, "{}", reason(&hv));
    assert_eq!(hv.effective().sp0, RAM + 0x8000, "kept across SetTR");
    // __switch_to: the next task's stack, in a lazy CPU batch.
    assert_eq!(c(&hv, call::SET_LAZY_MODE, [2, 0, 0, 0]), 0);
    assert_eq!(
        c(
            &hv,
            call::UPDATE_KERNEL_STACK,
            [KERNEL_DS, RAM + 0xA000, 0, 0]
        ),
        0
    );
    assert_eq!(hv.effective().sp0, RAM + 0x8000, "deferred");
    assert_eq!(c(&hv, call::SET_LAZY_MODE, [0, 0, 0, 0]), 0);
    assert_eq!(hv.effective().sp0, RAM + 0xA000);
    // The RPL is not part of the rule (a stack segment's RPL is the ring's).
    assert_eq!(
        c(
            &hv,
            call::UPDATE_KERNEL_STACK,
            [KERNEL_DS | 1, RAM + 0xB000, 0, 0]
        ),
        0
    );
    // Still refused: not a selector, sp0 past 4 GiB, and selectors that
    // cannot be a stack segment: kernel code, null, TI=1, a not-present
    // slot, and past the guest's 32 entries (the hypervisor's reserved
    // entries 32 and 33 follow them).
    let refused = [
        (1 << 16, RAM, "is not a selector"),
        (KERNEL_DS, 1 << 32, "not a valid vmi32 address"),
        (12 << 3, RAM, "not a present writable data segment"),
        (0, RAM, "not null, TI=0"),
        (KERNEL_DS | 4, RAM, "not null, TI=0"),
        (20 << 3, RAM, "not a present writable data segment"),
        (32 << 3, RAM, "past the guest's 32 entries"),
        (33 << 3, RAM, "past the guest's 32 entries"),
    ];
    for (sel, sp0, why) in refused {
        assert_eq!(
            c(&hv, call::UPDATE_KERNEL_STACK, [sel, sp0, 0, 0]),
            -22,
            "{sel:#x}, {sp0:#x}"
        );
        assert!(reason(&hv).contains(why), "{sel:#x}: {}", reason(&hv));
    }
    assert_eq!(
        hv.guest().kernel_stack,
        Some((Selector(KERNEL_DS as u16 | 1), RAM + 0xB000)),
        "a refused call changes nothing"
    );
    assert_eq!(hv.effective().sp0, RAM + 0xB000);
}

#[test]
fn ldt_calls() {
    let hv = machine();
    boot_gdt(&hv);
    let ldt = Descriptor::system32(SystemType::Ldt, LDT as u32, 8 * 8 - 1, Ring::Ring0).unwrap();
    let (lo, hi) = words(ldt.0);
    assert_eq!(c(&hv, call::WRITE_GDT_ENTRY, [GDT, 17, lo, hi]), 0);
    hv.memory().write_u64(LDT + 8, presets::I386_USER_CODE.0);
    assert_eq!(
        c(&hv, call::SET_LDT, [17 << 3, 0, 0, 0]),
        0,
        "{}",
        reason(&hv)
    );
    assert_eq!(hv.guest().ldtr, Selector(17 << 3));
    assert_eq!(hv.guest().ldt, Some((LDT, 8)));
    let e = hv.effective();
    assert_eq!((e.ldt_base, e.ldt.len()), (LDT, 8));
    assert_eq!(c(&hv, call::GET_LDT, [0; 4]), 17 << 3);
    // WriteLDTEntry into the loaded LDT: DPL 0 -> 1 in the effective copy.
    let (lo, hi) = words(presets::I386_KERNEL_DATA.0);
    assert_eq!(c(&hv, call::WRITE_LDT_ENTRY, [LDT, 2, lo, hi]), 0);
    assert_eq!(hv.memory().read_u64(LDT + 16), presets::I386_KERNEL_DATA.0);
    assert_eq!(Descriptor(hv.effective().ldt[2]).dpl(), Ring::Ring1);
    // Past the loaded LDT.
    assert_eq!(c(&hv, call::WRITE_LDT_ENTRY, [LDT, 8, lo, hi]), -22);
    // SetLDT on something that is not an LDT descriptor.
    assert_eq!(c(&hv, call::SET_LDT, [12 << 3, 0, 0, 0]), -22);
    assert!(reason(&hv).contains("expected an LDT"));
    // SetLDT(0): no LDT.
    assert_eq!(c(&hv, call::SET_LDT, [0, 0, 0, 0]), 0);
    assert_eq!(c(&hv, call::GET_LDT, [0; 4]), 0);
    assert!(hv.effective().ldt.is_empty());
}

#[test]
fn idt_calls() {
    let hv = machine();
    boot_gdt(&hv);
    for v in 0..32u64 {
        let g = Gate32::interrupt(Selector(12 << 3), 0xC010_0000 + v as u32 * 16, Ring::Ring0);
        hv.memory().write_u64(IDT + v * 8, g.0);
    }
    // i386 Linux's double-fault task gate.
    hv.memory()
        .write_u64(IDT + 8 * 8, Gate32::task(Selector(0xF8), Ring::Ring0).0);
    dtr(&hv, DTR, 256 * 8 - 1, IDT as u32);
    assert_eq!(c(&hv, call::SET_IDT, [DTR, 0, 0, 0]), 0, "{}", reason(&hv));
    let e = hv.effective();
    assert_eq!(e.idt_base, EFFECTIVE_IDT_32);
    assert_eq!(e.idt.len(), 256);
    assert_eq!(Gate32(e.idt[3].0).selector(), Selector((12 << 3) | 1));
    assert_eq!(Gate32(e.idt[8].0).selector(), Selector(0xF8));
    assert_eq!(c(&hv, call::GET_IDT, [OUT, 0, 0, 0]), 0);
    assert_eq!(read_dtr(&hv, OUT), (2047, IDT as u32));
    let sys = Gate32::trap(Selector(12 << 3), 0xC010_8000, Ring::Ring3);
    let (lo, hi) = words(sys.0);
    assert_eq!(c(&hv, call::WRITE_IDT_ENTRY, [IDT, 0x80, lo, hi]), 0);
    assert_eq!(hv.memory().read_u64(IDT + 0x80 * 8), sys.0);
    let eg = Gate32(hv.effective().idt[0x80].0);
    assert_eq!((eg.offset(), eg.dpl()), (0xC010_8000, Ring::Ring3));
    // A call gate is not accepted in the IDT.
    let cg = Gate32::call(Selector(12 << 3), 0, Ring::Ring0, 0).unwrap();
    let (lo, hi) = words(cg.0);
    assert_eq!(c(&hv, call::WRITE_IDT_ENTRY, [IDT, 0x81, lo, hi]), -22);
    assert!(reason(&hv).contains("IDT[129]"), "{}", reason(&hv));
}

#[test]
fn lazy_mode_defers_and_flushes() {
    let hv = machine();
    boot_gdt(&hv);
    assert_eq!(c(&hv, call::SET_LAZY_MODE, [2, 0, 0, 0]), 0);
    assert_eq!(c(&hv, call::SET_LAZY_MODE, [1, 0, 0, 0]), -22);
    assert!(reason(&hv).contains("already in lazy mode 2"));
    let tls = Descriptor::data_segment(0x1000, 0xfff, Ring::Ring3).unwrap();
    let (lo, hi) = words(tls.0);
    assert_eq!(c(&hv, call::WRITE_GDT_ENTRY, [GDT, 6, lo, hi]), 0);
    // Guest view now, effective later.
    assert_eq!(hv.memory().read_u64(GDT + 48), tls.0);
    assert_eq!(hv.effective().gdt[6], 0);
    assert_eq!(
        hv.pending(),
        [format!(
            "effective GDT[6] = {:#018x}",
            tls.with_accessed().0
        )]
    );
    // A refused call is refused at once, even in lazy mode.
    let (lo, hi) = words(presets::KERNEL_CODE64.0);
    assert_eq!(c(&hv, call::WRITE_GDT_ENTRY, [GDT, 7, lo, hi]), -22);
    assert_eq!(c(&hv, call::SET_LAZY_MODE, [0, 0, 0, 0]), 0);
    assert_eq!(hv.effective().gdt[6], tls.with_accessed().0);
    let t = hv.trace();
    assert!(
        t.events
            .iter()
            .any(|e| matches!(e, VmiEvent::Flush { applied } if applied.len() == 1))
    );
    assert!(t.to_string().contains("deferred: effective GDT[6]"), "{t}");
    assert_eq!(c(&hv, call::SET_LAZY_MODE, [3, 0, 0, 0]), -22);
}

#[test]
fn unimplemented_and_undefined_calls() {
    let hv = machine();
    // SetCR0 (15) has a stub in the ROM but the answer is NONE: trap the
    // native instruction. Called anyway, it is refused.
    assert_eq!(hv.reloc_query(0xC8088, 15), (0, 0));
    assert_eq!(hv.reloc_query(0xC8088, 65), (0, 3));
    assert_eq!(hv.vmi_call(15, [0; 4]) as i64, -38);
    assert!(reason(&hv).contains("SetCR0"), "{}", reason(&hv));
    // An undefined call's slot holds int3 only: not a stub.
    let r = hv.call_entry(0xC8000 + 0x100 + 16 * 50, [0; 4]);
    assert_eq!(r as i64, -14);
    assert!(matches!(
        hv.trace().events.back(),
        Some(VmiEvent::BadEntry { .. })
    ));
}
