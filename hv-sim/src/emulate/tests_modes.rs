//! Unit tests outside 64-bit mode (and the mode rules): legacy protected
//! mode with 16- and 32-bit code, compatibility mode, segmentation of
//! fetches and operands, and the emulator over its own page walker. Each
//! test cites the SDM rule it checks (vol. 2 for the instructions, vol. 3A
//! chapters 3-6 for segmentation, paging, protection and exceptions).

use super::mock::{CODE16, CODE32, DATA32, MockCpu, MockMemory, MockPhys};
use super::paged::Paged;
use super::walk::{PagingMode, PhysicalMemory, Walker};
use super::*;
use pvops::{DescriptorTablePointer, Selector};

const CODE: u64 = 0x40_0000;
const GDT: u64 = 0x1_0000;
const DATA: u64 = 0x2_0000;
const TSS_SEL: u16 = 0x28;
const LDT_SEL: u16 = 0x30;
const EAX: usize = 0;
const EBX: usize = 3;
const ESP: usize = 4;
const EBP: usize = 5;
const ESI: usize = 6;

/// An 8-byte system or segment descriptor: base, 20-bit limit, access byte
/// (P, DPL, S, type) and flags nibble (G, D/B, L, AVL).
fn desc(base: u32, limit: u32, access: u8, flags: u8) -> u64 {
    let b = u64::from(base);
    let l = u64::from(limit);
    (l & 0xffff)
        | (b & 0xff_ffff) << 16
        | u64::from(access) << 40
        | (l >> 16 & 0xf) << 48
        | u64::from(flags & 0xf) << 52
        | (b >> 24) << 56
}

/// A 32-bit available TSS at 0x3000 and an LDT at 0x4000 in an 8-entry GDT
/// (8-byte system descriptors, as in legacy protected mode).
fn machine(mut cpu: MockCpu, code: &[u8]) -> (MockCpu, MockMemory) {
    let mem = MockMemory::new();
    mem.map(GDT, true).map(DATA, true).map(CODE, false);
    mem.poke(CODE, code);
    mem.poke_u64(GDT + u64::from(TSS_SEL), desc(0x3000, 0x67, 0x89, 0));
    mem.poke_u64(GDT + u64::from(LDT_SEL), desc(0x4000, 0x17, 0x82, 0));
    cpu.rip = CODE;
    let cs = cpu.seg_mut(Segment::Cs);
    if u64::from(cs.effective_limit()) < CODE {
        // 16-bit code: CS based at the code, IP 0.
        cs.base = CODE;
        cpu.rip = 0;
    }
    cpu.dt.gdtr = DescriptorTablePointer {
        limit: 8 * 8 - 1,
        base: GDT,
    };
    (cpu, mem)
}

fn emulated(o: &Outcome, insn: Insn, len: usize) {
    assert!(
        matches!(o, Outcome::Emulated { insn: i, len: l, .. } if *i == insn && *l == len),
        "expected {insn} ({len} bytes) emulated, got {o:?}"
    );
}

fn injected(o: &Outcome) -> Exception {
    match o {
        Outcome::Inject { exception, .. } => *exception,
        other => panic!("expected an exception, got {other:?}"),
    }
}

/// SDM vol. 3A 5.2.1 / vol. 1 3.6.1: the mode and default sizes come from
/// EFER.LMA, CS.L and CS.D.
#[test]
fn mode_from_lma_and_cs() {
    assert_eq!(Mode::of(&MockCpu::default()).bits, 64);
    let c = MockCpu::compat32();
    assert_eq!((Mode::of(&c).ia32e, Mode::of(&c).bits), (true, 32));
    let p = MockCpu::protected32();
    assert_eq!((Mode::of(&p).ia32e, Mode::of(&p).bits), (false, 32));
    assert_eq!(Mode::of(&MockCpu::protected16()).bits, 16);
}

/// SDM vol. 2A LGDT: outside 64-bit mode the operand is 6 bytes (m16&32),
/// the 32-bit base loaded whole with a 32-bit operand size.
#[test]
fn lgdt_32bit_reads_six_bytes() {
    // lgdt [eax]
    let (mut cpu, mem) = machine(MockCpu::protected32(), &[0x0f, 0x01, 0x10]);
    cpu.gprs[EAX] = DATA;
    mem.poke(DATA, &[0x7f, 0x00, 0x00, 0x50, 0x34, 0xc2, 0xee, 0xee]);
    emulated(&emulate(&mut cpu, &mem), Insn::Lgdt, 3);
    assert_eq!(cpu.dt.gdtr.base, 0xc234_5000);
    assert_eq!(cpu.dt.gdtr.limit, 0x7f);
    assert_eq!(mem.log().iter().filter(|l| l.2 == Access::Read).count(), 1);
    assert!(mem.log().contains(&(DATA, 6, Access::Read)));
}

/// SDM vol. 2A LGDT/LIDT: a 16-bit operand size loads a 24-bit base
/// ("IDTR(Base) ← SRC[16:47] AND 00FFFFFFH").
#[test]
fn lidt_16bit_operand_size_truncates_the_base_to_24_bits() {
    // o16 lidt [eax]
    let (mut cpu, mem) = machine(MockCpu::protected32(), &[0x66, 0x0f, 0x01, 0x18]);
    cpu.gprs[EAX] = DATA;
    mem.poke(DATA, &[0xff, 0x07, 0x00, 0x50, 0x34, 0xc2]);
    emulated(&emulate(&mut cpu, &mem), Insn::Lidt, 4);
    assert_eq!(cpu.dt.idtr.base, 0x34_5000);
    // The same in 16-bit code without the prefix: lidt [bx].
    let (mut cpu, mem) = machine(MockCpu::protected16(), &[0x0f, 0x01, 0x1f]);
    cpu.gprs[EBX] = 0x1_0000_0000 | 0x80; // only BX counts
    mem.map(0x80, true);
    mem.poke(0x80, &[0xff, 0x07, 0x00, 0x50, 0x34, 0xc2]);
    emulated(&emulate(&mut cpu, &mem), Insn::Lidt, 3);
    assert_eq!(cpu.dt.idtr.base, 0x34_5000);
    // ... and 32-bit operand size in 16-bit code: the whole base.
    let (mut cpu, mem) = machine(MockCpu::protected16(), &[0x66, 0x0f, 0x01, 0x1f]);
    cpu.gprs[EBX] = 0x80;
    mem.map(0x80, true);
    mem.poke(0x80, &[0xff, 0x07, 0x00, 0x50, 0x34, 0xc2]);
    emulated(&emulate(&mut cpu, &mem), Insn::Lidt, 4);
    assert_eq!(cpu.dt.idtr.base, 0xc234_5000);
}

/// SDM vol. 2A 2.1.5 (16-bit addressing, Table 2-1) and vol. 3A 5.3: a
/// 16-bit effective address wraps at 64 KiB; `[bp+si]` uses SS, and a
/// limit violation through SS is #SS(0).
#[test]
fn sixteen_bit_addressing_wraps_and_bp_uses_ss() {
    // lgdt [bx+si]: 0xfff0 + 0x20 wraps to 0x10.
    let (mut cpu, mem) = machine(MockCpu::protected16(), &[0x0f, 0x01, 0x10]);
    cpu.gprs[EBX] = 0xfff0;
    cpu.gprs[ESI] = 0x20;
    mem.map(0x10, true);
    mem.poke(0x10, &[0x0f, 0, 0, 0x60, 0, 0]);
    emulated(&emulate(&mut cpu, &mem), Insn::Lgdt, 3);
    assert_eq!(cpu.dt.gdtr.base, 0x6000);
    // lgdt [bp+si] with SS limited to 0xff: offset 0x100 is past it.
    let (mut cpu, mem) = machine(MockCpu::protected16(), &[0x0f, 0x01, 0x12]);
    cpu.gprs[EBP] = 0x100;
    cpu.seg_mut(Segment::Ss).limit = 0xff;
    cpu.seg_mut(Segment::Ss).g = false;
    assert_eq!(injected(&emulate(&mut cpu, &mem)), Exception::Ss(0));
}

/// SDM vol. 3A 5.3 (limit checking), 3.4.3 (segment base): the operand's
/// linear address is base + offset, and every byte must be within the
/// limit: #GP(0), or #SS(0) through SS (here an ESP-based SIB operand).
#[test]
fn operand_segment_base_and_limit() {
    // lgdt [eax] with DS base DATA - 0x100 and limit 0x105: 6 bytes at
    // 0x100 end at 0x105 (inside); at 0x101, one byte past.
    let (mut cpu, mem) = machine(MockCpu::protected32(), &[0x0f, 0x01, 0x10]);
    *cpu.seg_mut(Segment::Ds) = SegmentCache {
        base: DATA - 0x100,
        limit: 0x105,
        g: false,
        ..SegmentCache::from_descriptor(DATA32)
    };
    cpu.gprs[EAX] = 0x100;
    mem.poke(DATA, &[0x0f, 0, 0, 0x60, 0, 0]);
    emulated(&emulate(&mut cpu, &mem), Insn::Lgdt, 3);
    assert_eq!(cpu.dt.gdtr.base, 0x6000);
    cpu.gprs[EAX] = 0x101;
    assert_eq!(injected(&emulate(&mut cpu, &mem)), Exception::Gp(0));
    // lgdt [esp] with SS's limit below ESP: #SS(0).
    let (mut cpu, mem) = machine(MockCpu::protected32(), &[0x0f, 0x01, 0x14, 0x24]);
    cpu.gprs[ESP] = 0x2000;
    cpu.seg_mut(Segment::Ss).g = false;
    cpu.seg_mut(Segment::Ss).limit = 0xfff;
    assert_eq!(injected(&emulate(&mut cpu, &mem)), Exception::Ss(0));
}

/// SDM vol. 3A 5.3 (expand-down) with SDM vol. 2B SGDT: a store through an
/// expand-down SS is valid above the limit only; a read-only segment or a
/// code segment refuses the store (#GP(0), 5.4.1 type checks); an
/// unusable (null) ES refuses any access (3.4.2).
#[test]
fn store_segment_types_and_expand_down() {
    // sgdt [esp] through an expand-down, writable SS with limit 0x1fff.
    let (mut cpu, mem) = machine(MockCpu::protected32(), &[0x0f, 0x01, 0x04, 0x24]);
    *cpu.seg_mut(Segment::Ss) = SegmentCache {
        base: 0,
        typ: 7,
        limit: 0x1fff,
        g: false,
        ..SegmentCache::from_descriptor(DATA32)
    };
    cpu.gprs[ESP] = DATA;
    emulated(&emulate(&mut cpu, &mem), Insn::Sgdt, 4);
    cpu.gprs[ESP] = 0x1ffc;
    assert_eq!(injected(&emulate(&mut cpu, &mem)), Exception::Ss(0));
    // sgdt [eax] with DS read-only: #GP(0); cs: override (code): #GP(0).
    let (mut cpu, mem) = machine(MockCpu::protected32(), &[0x0f, 0x01, 0x00]);
    cpu.gprs[EAX] = DATA;
    cpu.seg_mut(Segment::Ds).typ = 1;
    assert_eq!(injected(&emulate(&mut cpu, &mem)), Exception::Gp(0));
    let (mut cpu, mem) = machine(MockCpu::protected32(), &[0x2e, 0x0f, 0x01, 0x00]);
    cpu.gprs[EAX] = DATA;
    assert_eq!(injected(&emulate(&mut cpu, &mem)), Exception::Gp(0));
    // ... but lgdt cs:[eax] reads through a readable code segment.
    let (mut cpu, mem) = machine(MockCpu::protected32(), &[0x2e, 0x0f, 0x01, 0x10]);
    cpu.gprs[EAX] = DATA;
    emulated(&emulate(&mut cpu, &mem), Insn::Lgdt, 4);
    // es: override with ES unusable.
    let (mut cpu, mem) = machine(MockCpu::protected32(), &[0x26, 0x0f, 0x01, 0x10]);
    cpu.gprs[EAX] = DATA;
    cpu.seg_mut(Segment::Es).unusable = true;
    assert_eq!(injected(&emulate(&mut cpu, &mem)), Exception::Gp(0));
    assert!(mem.log().iter().all(|l| l.2 == Access::Fetch));
}

/// SDM vol. 2B SGDT: outside 64-bit mode 6 bytes, limit then the full
/// 32-bit base, with a 16- or a 32-bit operand size alike.
#[test]
fn sgdt_32bit_stores_six_bytes() {
    for code in [&[0x0f, 0x01, 0x00][..], &[0x66, 0x0f, 0x01, 0x00]] {
        let (mut cpu, mem) = machine(MockCpu::protected32(), code);
        cpu.gprs[EAX] = DATA;
        cpu.dt.gdtr = DescriptorTablePointer {
            limit: 0x3f,
            base: 0xc123_4000,
        };
        mem.poke(DATA, &[0xaa; 8]);
        emulated(&emulate(&mut cpu, &mem), Insn::Sgdt, code.len());
        assert_eq!(
            mem.peek(DATA, 8).unwrap(),
            [0x3f, 0, 0, 0x40, 0x23, 0xc1, 0xaa, 0xaa]
        );
    }
}

/// SDM vol. 2B LTR, vol. 3A 7.2.2: in legacy protected mode the TSS
/// descriptor is 8 bytes; LTR sets its busy bit; the GDT limit must
/// cover 8 bytes (not 16).
#[test]
fn ltr_and_lldt_in_protected_mode() {
    // ltr ax; the GDT limit ends right at the TSS descriptor's 8 bytes.
    let (mut cpu, mem) = machine(MockCpu::protected32(), &[0x0f, 0x00, 0xd8]);
    cpu.gprs[EAX] = u64::from(TSS_SEL);
    cpu.dt.gdtr.limit = TSS_SEL + 7;
    emulated(&emulate(&mut cpu, &mem), Insn::Ltr, 3);
    assert_eq!(
        (cpu.dt.tr, cpu.dt.tr_base, cpu.dt.tr_limit),
        (Selector(TSS_SEL), 0x3000, 0x67)
    );
    assert_eq!(mem.peek(GDT + u64::from(TSS_SEL) + 5, 1).unwrap(), [0x8b]);
    // Again: now busy, #GP(sel).
    assert_eq!(injected(&emulate(&mut cpu, &mem)), Exception::Gp(TSS_SEL));
    // lldt [eax]
    let (mut cpu, mem) = machine(MockCpu::protected32(), &[0x0f, 0x00, 0x10]);
    cpu.gprs[EAX] = DATA;
    mem.poke(DATA, &LDT_SEL.to_le_bytes());
    emulated(&emulate(&mut cpu, &mem), Insn::Lldt, 3);
    assert_eq!((cpu.dt.ldtr_base, cpu.dt.ldtr_limit), (0x4000, 0x17));
}

/// SDM vol. 3A 8.2.3 / vol. 2B LTR: compatibility mode is IA-32e mode:
/// 16-byte system descriptors (the limit must cover them), yet 6-byte
/// LGDT operands (32-bit code).
#[test]
fn compatibility_mode_mixes_both() {
    let (mut cpu, mem) = machine(MockCpu::compat32(), &[0x0f, 0x00, 0xd8]);
    cpu.gprs[EAX] = u64::from(TSS_SEL);
    cpu.dt.gdtr.limit = TSS_SEL + 7;
    assert_eq!(injected(&emulate(&mut cpu, &mem)), Exception::Gp(TSS_SEL));
    cpu.dt.gdtr.limit = TSS_SEL + 15;
    mem.poke_u64(GDT + u64::from(TSS_SEL) + 8, 0x1234);
    emulated(&emulate(&mut cpu, &mem), Insn::Ltr, 3);
    assert_eq!(cpu.dt.tr_base, 0x1234_0000_3000);
    // lgdt [eax]: 6 bytes, the upper base bits zero.
    let (mut cpu, mem) = machine(MockCpu::compat32(), &[0x0f, 0x01, 0x10]);
    cpu.gprs[EAX] = DATA;
    mem.poke(
        DATA,
        &[0x7f, 0, 0, 0x50, 0x34, 0xc2, 0xff, 0xff, 0xff, 0xff],
    );
    emulated(&emulate(&mut cpu, &mem), Insn::Lgdt, 3);
    assert_eq!(cpu.dt.gdtr.base, 0xc234_5000);
}

/// SDM vol. 2B STR/SLDT: a 32-bit register destination gets the selector
/// zero-extended, a 16-bit one keeps its upper bits; memory: 2 bytes.
#[test]
fn str_sldt_register_widths_in_32bit_code() {
    let (mut cpu, mem) = machine(MockCpu::protected32(), &[0x0f, 0x00, 0xc8]);
    cpu.dt.tr = Selector(TSS_SEL);
    cpu.gprs[EAX] = 0xdead_beef;
    emulated(&emulate(&mut cpu, &mem), Insn::Str, 3);
    assert_eq!(cpu.gprs[EAX], u64::from(TSS_SEL));
    let (mut cpu, mem) = machine(MockCpu::protected32(), &[0x66, 0x0f, 0x00, 0xc0]);
    cpu.dt.ldtr = Selector(LDT_SEL);
    cpu.gprs[EAX] = 0xdead_beef;
    emulated(&emulate(&mut cpu, &mem), Insn::Sldt, 4);
    assert_eq!(cpu.gprs[EAX], 0xdead_0000 | u64::from(LDT_SEL));
    // 16-bit code: sldt ax is the 16-bit form, o32 sldt eax the 32-bit one.
    let (mut cpu, mem) = machine(MockCpu::protected16(), &[0x66, 0x0f, 0x00, 0xc0]);
    cpu.dt.ldtr = Selector(LDT_SEL);
    cpu.gprs[EAX] = 0xdead_beef;
    emulated(&emulate(&mut cpu, &mem), Insn::Sldt, 4);
    assert_eq!(cpu.gprs[EAX], u64::from(LDT_SEL));
    // str [eax] with a 16-bit operand size: 2 bytes.
    let (mut cpu, mem) = machine(MockCpu::protected32(), &[0x66, 0x0f, 0x00, 0x08]);
    cpu.dt.tr = Selector(TSS_SEL);
    cpu.gprs[EAX] = DATA;
    mem.poke(DATA, &[0xaa; 4]);
    emulated(&emulate(&mut cpu, &mem), Insn::Str, 4);
    assert_eq!(mem.peek(DATA, 4).unwrap(), [TSS_SEL as u8, 0, 0xaa, 0xaa]);
}

/// SDM vol. 3A 5.3: every instruction byte must be within CS's limit
/// (#GP(0)); the linear address is CS.base + EIP; an instruction ending on
/// the limit's last byte is fetched whole.
#[test]
fn fetch_through_cs_base_and_limit() {
    let (mut cpu, mem) = machine(MockCpu::protected32(), &[0x0f, 0x01, 0x10]);
    *cpu.seg_mut(Segment::Cs) = SegmentCache {
        base: CODE - 0x1000,
        limit: 0x1002,
        g: false,
        ..SegmentCache::from_descriptor(CODE32)
    };
    cpu.rip = 0x1000;
    cpu.gprs[EAX] = DATA;
    emulated(&emulate(&mut cpu, &mem), Insn::Lgdt, 3);
    cpu.seg_mut(Segment::Cs).limit = 0x1001;
    let o = emulate(&mut cpu, &mem);
    assert_eq!(
        o,
        Outcome::NotEmulated(NotEmulated::Fetch(Exception::Gp(0)))
    );
    // The whole instruction past the limit, likewise.
    cpu.rip = 0x2000;
    let o = emulate(&mut cpu, &mem);
    assert_eq!(
        o,
        Outcome::NotEmulated(NotEmulated::Fetch(Exception::Gp(0)))
    );
}

/// SDM vol. 3A 5.3 / 3.4.5: a 16-bit CS with limit 0xffff: IP + k past it
/// is #GP(0) (no wrap to 0 within the segment), a 4 GiB CS wraps its
/// offsets at 4 GiB (linear addresses are 32 bits outside IA-32e mode).
#[test]
fn fetch_wraps_and_limits() {
    let (mut cpu, mem) = machine(MockCpu::protected16(), &[]);
    *cpu.seg_mut(Segment::Cs) = SegmentCache {
        base: CODE,
        ..SegmentCache::from_descriptor(CODE16)
    };
    cpu.rip = 0xfffe;
    mem.poke(CODE + 0xfffe, &[0x0f, 0x01]);
    let o = emulate(&mut cpu, &mem);
    assert_eq!(
        o,
        Outcome::NotEmulated(NotEmulated::Fetch(Exception::Gp(0)))
    );
    // 32-bit flat CS at EIP 0xffff_fffe: the third byte is at linear 0.
    let (mut cpu, mem) = machine(MockCpu::protected32(), &[]);
    cpu.rip = 0xffff_fffe;
    mem.poke(0xffff_fffe, &[0x0f, 0x01]);
    mem.poke(0, &[0x10]);
    cpu.gprs[EAX] = DATA;
    emulated(&emulate(&mut cpu, &mem), Insn::Lgdt, 3);
}

/// SDM vol. 2A LGDT "Protected Mode Exceptions": #GP(0) at CPL > 0 comes
/// before any operand check; a LOCK prefix is #UD (vol. 2A 2.1.1).
#[test]
fn cpl_and_lock_in_protected_mode() {
    let (mut cpu, mem) = machine(MockCpu::protected32(), &[0x0f, 0x01, 0x10]);
    cpu.cpl = 3;
    cpu.seg_mut(Segment::Ds).unusable = true;
    assert_eq!(injected(&emulate(&mut cpu, &mem)), Exception::Gp(0));
    let (mut cpu, mem) = machine(MockCpu::protected16(), &[0xf0, 0x0f, 0x00, 0xd8]);
    assert_eq!(injected(&emulate(&mut cpu, &mem)), Exception::Ud);
}

// ---- through the page walker ------------------------------------------------

/// 32-bit paging tables mapping linear page `la` to physical `pa` with
/// `flags` (4.3), in `m` at page directory 0x1000.
fn map32(m: &MockPhys, la: u64, pa: u64, flags: u64) {
    let pd = 0x1000u64;
    let pt = 0x10_0000 + (la >> 22) * 0x1000;
    m.put_u32(pd + (la >> 22) * 4, (pt | 7) as u32);
    m.put_u32(pt + ((la >> 12) & 0x3ff) * 4, (pa | flags) as u32);
    m.put(pa, &[0; 1]);
}

/// SDM vol. 3A 4.3 and 4.7: LGDT in 32-bit code through 32-bit paging; an
/// instruction crossing into a not-present page is a fetch #PF (CR2 = that
/// page, error code I/D with NXE) that only counts if the decoder needs
/// the byte; a store to a read-only page at CPL 3 under no UMIP is #PF
/// P|W|U; 4.8: A and D set.
#[test]
fn protected_mode_through_32bit_paging() {
    let phys = MockPhys::default();
    map32(&phys, 0x40_0000, 0x50_0000, 0x5); // code: user, read-only
    map32(&phys, 0x40_1000, 0x50_1000, 0x5);
    map32(&phys, 0x80_0000, 0x60_0000, 0x5); // data: read-only
    phys.put(0x50_0ffe, &[0x0f, 0x01]);
    phys.put(0x50_1000, &[0x10]);
    phys.put(0x60_0000, &[0x7f, 0, 0, 0x20, 0, 0]);
    let mut w = Walker::new(PagingMode::Bits32, 0x1000);
    w.nxe = false;
    let mem = Paged {
        phys: &phys,
        walker: w,
        cpl: 0,
    };
    let mut cpu = MockCpu::protected32();
    cpu.rip = 0x40_0ffe;
    cpu.gprs[EAX] = 0x80_0000;
    emulated(&emulate(&mut cpu, &mem), Insn::Lgdt, 3);
    assert_eq!(cpu.dt.gdtr.base, 0x2000);
    let pte = |la: u64| phys.read_u32(0x10_0000 + (la >> 22) * 0x1000 + ((la >> 12) & 0x3ff) * 4);
    assert_eq!(pte(0x80_0000).map(|v| v & 0x60), Some(0x20), "A, not D");
    // The second code page not present.
    phys.put_u32(0x10_1000 + 4, 0);
    let o = emulate(&mut cpu, &mem);
    assert_eq!(
        o,
        Outcome::NotEmulated(NotEmulated::Fetch(Exception::Pf(PageFault {
            addr: 0x40_1000,
            error_code: 0
        })))
    );
    // sgdt [eax] at CPL 3 (UMIP off) to the read-only page: P|W|U.
    let mem = Paged { cpl: 3, ..mem };
    phys.put(0x50_0000, &[0x0f, 0x01, 0x00]);
    cpu.rip = 0x40_0000;
    cpu.cpl = 3;
    assert_eq!(
        injected(&emulate(&mut cpu, &mem)),
        Exception::Pf(PageFault {
            addr: 0x80_0000,
            error_code: 7
        })
    );
}

/// SDM vol. 3A 4.4 (PAE), 4.6.1 and 4.7: LTR's descriptor read and
/// busy-bit write are implicit supervisor accesses; with CR0.WP a
/// read-only GDT page refuses the busy-bit write (#PF P|W, CR2 the type
/// byte) and nothing is loaded.
#[test]
fn pae_paging_implicit_accesses() {
    let phys = MockPhys::default();
    // PDPT at 0x1000, PD at 0x2000, PT at 0x3000; identity for the first
    // 2 MiB, GDT page read-only.
    phys.put_u64(0x1000, 0x2001);
    phys.put_u64(0x2000, 0x3007);
    for p in 0..512u64 {
        let flags = if p == GDT >> 12 { 0x1 } else { 0x3 };
        phys.put_u64(0x3000 + p * 8, p << 12 | flags);
    }
    phys.put(CODE & 0xfffff, &[0x0f, 0x00, 0xd8]); // ltr ax
    phys.put_u64(GDT + u64::from(TSS_SEL), desc(0x3000, 0x67, 0x89, 0));
    let mem = Paged {
        phys: &phys,
        walker: Walker::new(PagingMode::Pae, 0x1000),
        cpl: 0,
    };
    let mut cpu = MockCpu::protected32();
    cpu.rip = CODE & 0xfffff;
    cpu.gprs[EAX] = u64::from(TSS_SEL);
    cpu.dt.gdtr = DescriptorTablePointer {
        limit: 0x3f,
        base: GDT,
    };
    assert_eq!(
        injected(&emulate(&mut cpu, &mem)),
        Exception::Pf(PageFault {
            addr: GDT + u64::from(TSS_SEL) + 5,
            error_code: 3
        })
    );
    assert_eq!(cpu.dt.tr, Selector(0), "nothing loaded");
    phys.put_u64(0x3000 + (GDT >> 12) * 8, GDT | 0x3);
    emulated(&emulate(&mut cpu, &mem), Insn::Ltr, 3);
    assert_eq!(phys.get_u64(GDT + u64::from(TSS_SEL)) >> 40 & 0xff, 0x8b);
}

/// Scenarios where QEMU 7.2 TCG departs from the SDM (found by the
/// differential, `emulate::diff`), kept with the SDM's answer:
/// * SDM vol. 2B LTR: "#GP(0) If the source operand contains a NULL
///   segment selector" (QEMU loads an unusable TR), here `ltr ax` with
///   ax = 3 (index 0, RPL 3) in 16-bit address-size code;
/// * SDM vol. 2B SIDT: "#UD If the LOCK prefix is used" (QEMU stores);
/// * SDM vol. 3A 5.3: an operand past DS's limit is #GP(0) (QEMU TCG does
///   not check data-segment limits and stores).
#[test]
fn qemu_departures_keep_the_sdm_answer() {
    let (mut cpu, mem) = machine(MockCpu::protected32(), &[0x67, 0x64, 0x0f, 0x00, 0xd8]);
    cpu.gprs[EAX] = 0xc8ce_0003;
    assert_eq!(injected(&emulate(&mut cpu, &mem)), Exception::Gp(0));
    assert_eq!(cpu.dt.tr, Selector(0));
    let (mut cpu, mem) = machine(
        MockCpu::protected32(),
        &[0xf0, 0x67, 0x26, 0x0f, 0x01, 0x0d],
    );
    assert_eq!(injected(&emulate(&mut cpu, &mem)), Exception::Ud);
    // sldt [0x28803057] with DS based at DATA - 0x2880_3057, limit 0x1000.
    let (mut cpu, mem) = machine(
        MockCpu::protected32(),
        &[0x0f, 0x00, 0x05, 0x57, 0x30, 0x80, 0x28],
    );
    *cpu.seg_mut(Segment::Ds) = SegmentCache {
        base: DATA.wrapping_sub(0x2880_3057) & 0xffff_ffff,
        limit: 0x1000,
        g: false,
        ..SegmentCache::from_descriptor(DATA32)
    };
    mem.poke(DATA, &[0xaa, 0xaa]);
    assert_eq!(injected(&emulate(&mut cpu, &mem)), Exception::Gp(0));
    assert_eq!(mem.peek(DATA, 2).unwrap(), [0xaa, 0xaa]);
}
