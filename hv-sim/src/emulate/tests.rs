//! Unit tests: each instruction form and each fault, against mock memory.

use super::mock::{MockCpu, MockMemory};
use super::*;
use pvops::{DescriptorTablePointer, Selector, SystemDescriptor};

const CODE: u64 = 0x40_0000;
const GDT: u64 = 0x1_0000;
const DATA: u64 = 0x2_0000;
const TSS_BASE: u64 = 0x3_0000;
const LDT_BASE: u64 = 0x3_1000;
const TSS_SEL: u16 = 0x40;
const LDT_SEL: u16 = 0x50;
const RAX: usize = 0;
const RCX: usize = 1;
const RBX: usize = 3;
const RSP: usize = 4;
const R8: usize = 8;
const R9: usize = 9;
const R10: usize = 10;

/// Memory with a 16-entry GDT (a TSS at 0x40, an LDT at 0x50, kernel code
/// and data at 0x10/0x18), a data page, and `code` at [`CODE`].
fn setup(code: &[u8]) -> (MockCpu, MockMemory) {
    let mem = MockMemory::new();
    mem.map(GDT, true).map(DATA, true).map(CODE, false);
    mem.poke(CODE, code);
    mem.poke_u64(GDT + 0x10, pvops::presets::KERNEL_CODE64.0);
    mem.poke_u64(GDT + 0x18, pvops::presets::KERNEL_DATA.0);
    let tss = SystemDescriptor::tss(TSS_BASE, 0x67).unwrap();
    mem.poke_u64(GDT + u64::from(TSS_SEL), tss.low);
    mem.poke_u64(GDT + u64::from(TSS_SEL) + 8, tss.high);
    let ldt = SystemDescriptor::ldt(LDT_BASE, 4).unwrap();
    mem.poke_u64(GDT + u64::from(LDT_SEL), ldt.low);
    mem.poke_u64(GDT + u64::from(LDT_SEL) + 8, ldt.high);
    let mut cpu = MockCpu {
        rip: CODE,
        ..MockCpu::default()
    };
    cpu.dt.gdtr = DescriptorTablePointer {
        limit: 16 * 8 - 1,
        base: GDT,
    };
    (cpu, mem)
}

fn run(code: &[u8], f: impl FnOnce(&mut MockCpu, &MockMemory)) -> (Outcome, MockCpu, MockMemory) {
    let (mut cpu, mem) = setup(code);
    f(&mut cpu, &mem);
    let o = emulate(&mut cpu, &mem);
    (o, cpu, mem)
}

fn emulated(o: &Outcome, insn: Insn, len: usize) {
    match o {
        Outcome::Emulated {
            insn: i, len: l, ..
        } => {
            assert_eq!((*i, *l), (insn, len), "{o:?}");
        }
        other => panic!("expected {insn} emulated, got {other:?}"),
    }
}

fn injected(o: &Outcome) -> Exception {
    match o {
        Outcome::Inject { exception, .. } => *exception,
        other => panic!("expected an exception, got {other:?}"),
    }
}

fn dtp(limit: u16, base: u64) -> Vec<u8> {
    let mut v = limit.to_le_bytes().to_vec();
    v.extend_from_slice(&base.to_le_bytes());
    v
}

// ---- LGDT / LIDT: every addressing form -----------------------------------

#[test]
fn lgdt_rip_relative() {
    // lgdt [rip + 0x1000]: 0f 01 15 disp32; the operand is at next-RIP + disp.
    let (o, cpu, mem) = run(&[0x0f, 0x01, 0x15, 0x00, 0x10, 0x00, 0x00], |_, m| {
        m.map(CODE + 7 + 0x1000, true);
        m.poke(CODE + 7 + 0x1000, &dtp(0x7f, 0xffff_8000_0000_1000));
    });
    emulated(&o, Insn::Lgdt, 7);
    assert_eq!(cpu.dt.gdtr.base, 0xffff_8000_0000_1000);
    assert_eq!(cpu.dt.gdtr.limit, 0x7f);
    assert!(mem.log().contains(&(CODE + 7 + 0x1000, 10, Access::Read)));
}

#[test]
fn lgdt_register_indirect() {
    let (o, cpu, _) = run(&[0x0f, 0x01, 0x10], |c, m| {
        c.gprs[RAX] = DATA + 8;
        m.poke(DATA + 8, &dtp(0xfff, 0x5000));
    });
    emulated(&o, Insn::Lgdt, 3);
    assert_eq!(
        cpu.dt.gdtr,
        DescriptorTablePointer {
            limit: 0xfff,
            base: 0x5000
        }
    );
}

#[test]
fn lgdt_base_index_scale_disp8() {
    // lgdt [rbx + rcx*4 + 0x10]: 0f 01 54 8b 10.
    let (o, cpu, _) = run(&[0x0f, 0x01, 0x54, 0x8b, 0x10], |c, m| {
        c.gprs[RBX] = DATA;
        c.gprs[RCX] = 3;
        m.poke(DATA + 12 + 0x10, &dtp(0x17, 0x6000));
    });
    emulated(&o, Insn::Lgdt, 5);
    assert_eq!(cpu.dt.gdtr.base, 0x6000);
}

#[test]
fn lgdt_extended_registers_disp32() {
    // lgdt [r8 + r9*8 + 0x100]: 43 0f 01 94 c8 00 01 00 00.
    let (o, cpu, _) = run(
        &[0x43, 0x0f, 0x01, 0x94, 0xc8, 0x00, 0x01, 0x00, 0x00],
        |c, m| {
            c.gprs[R8] = DATA;
            c.gprs[R9] = 2;
            m.poke(DATA + 16 + 0x100, &dtp(0x27, 0x7000));
        },
    );
    emulated(&o, Insn::Lgdt, 9);
    assert_eq!(cpu.dt.gdtr.base, 0x7000);
}

#[test]
fn lgdt_negative_displacement_and_fs_override() {
    // lgdt fs:[rax - 8]: 64 0f 01 50 f8; FS base + rax - 8.
    let (o, cpu, _) = run(&[0x64, 0x0f, 0x01, 0x50, 0xf8], |c, m| {
        c.fs_base = DATA;
        c.gprs[RAX] = 0x108;
        m.poke(DATA + 0x100, &dtp(0x37, 0x8000));
    });
    emulated(&o, Insn::Lgdt, 5);
    assert_eq!(cpu.dt.gdtr.base, 0x8000);
}

#[test]
fn lgdt_32bit_address_size_truncates() {
    // lgdt [eax]: 67 0f 01 10; only eax's 32 bits form the address.
    let (o, cpu, _) = run(&[0x67, 0x0f, 0x01, 0x10], |c, m| {
        c.gprs[RAX] = 0xdead_0000_0000_0000 | DATA;
        m.poke(DATA, &dtp(0x47, 0x9000));
    });
    emulated(&o, Insn::Lgdt, 4);
    assert_eq!(cpu.dt.gdtr.base, 0x9000);
}

#[test]
fn lidt_loads_idtr_only() {
    // lidt [rax]: 0f 01 18.
    let (o, cpu, _) = run(&[0x0f, 0x01, 0x18], |c, m| {
        c.gprs[RAX] = DATA;
        m.poke(DATA, &dtp(0xfff, 0xffff_8000_0000_2000));
    });
    emulated(&o, Insn::Lidt, 3);
    assert_eq!(
        cpu.dt.idtr,
        DescriptorTablePointer {
            limit: 0xfff,
            base: 0xffff_8000_0000_2000
        }
    );
    assert_eq!(cpu.dt.gdtr.base, GDT);
}

#[test]
fn lgdt_noncanonical_base_is_gp0_and_changes_nothing() {
    let (o, cpu, _) = run(&[0x0f, 0x01, 0x10], |c, m| {
        c.gprs[RAX] = DATA;
        m.poke(DATA, &dtp(0xfff, 0x0000_8000_0000_0000));
    });
    assert_eq!(injected(&o), Exception::Gp(0));
    assert_eq!(cpu.dt.gdtr.base, GDT);
}

#[test]
fn lidt_noncanonical_operand_address_is_gp0() {
    let (o, _, _) = run(&[0x0f, 0x01, 0x18], |c, _| {
        c.gprs[RAX] = 0x1234_0000_0000_0000
    });
    assert_eq!(injected(&o), Exception::Gp(0));
}

#[test]
fn operand_straddling_the_canonical_hole_is_gp0() {
    // The first byte is canonical, the last is not.
    let (o, _, _) = run(&[0x0f, 0x01, 0x10], |c, _| {
        c.gprs[RAX] = 0x0000_7fff_ffff_fffa
    });
    assert_eq!(injected(&o), Exception::Gp(0));
}

#[test]
fn stack_relative_noncanonical_is_ss0() {
    // lgdt [rsp]: 0f 01 14 24.
    let (o, _, _) = run(&[0x0f, 0x01, 0x14, 0x24], |c, _| {
        c.gprs[RSP] = 0x8000_0000_0000_0000
    });
    assert_eq!(injected(&o), Exception::Ss(0));
}

#[test]
fn lgdt_unmapped_operand_is_pf_with_address() {
    let (o, cpu, _) = run(&[0x0f, 0x01, 0x10], |c, _| c.gprs[RAX] = 0x50_0000);
    assert_eq!(
        injected(&o),
        Exception::Pf(PageFault {
            addr: 0x50_0000,
            error_code: 0
        })
    );
    assert_eq!(cpu.dt.gdtr.base, GDT);
}

#[test]
fn operand_crossing_into_an_unmapped_page_is_pf_on_that_page() {
    let (o, _, _) = run(&[0x0f, 0x01, 0x10], |c, _| c.gprs[RAX] = DATA + 0xffc);
    assert_eq!(
        injected(&o),
        Exception::Pf(PageFault {
            addr: DATA + 0x1000,
            error_code: 0
        })
    );
}

#[test]
fn loads_at_cpl3_are_gp0() {
    for code in [
        &[0x0f, 0x01, 0x10][..],
        &[0x0f, 0x01, 0x18],
        &[0x0f, 0x00, 0xd8],
        &[0x0f, 0x00, 0xd0],
    ] {
        let (o, cpu, _) = run(code, |c, _| c.cpl = 3);
        assert_eq!(injected(&o), Exception::Gp(0), "{code:02x?}");
        assert_eq!(cpu.dt.gdtr.base, GDT);
    }
}

#[test]
fn lock_prefix_is_ud() {
    let (o, _, _) = run(&[0xf0, 0x0f, 0x01, 0x10], |c, m| {
        c.gprs[RAX] = DATA;
        m.poke(DATA, &dtp(0xfff, 0x5000));
    });
    assert_eq!(injected(&o), Exception::Ud);
}

// ---- SGDT / SIDT ------------------------------------------------------------

#[test]
fn sgdt_and_sidt_store_ten_bytes() {
    let (o, _, mem) = run(&[0x0f, 0x01, 0x00], |c, _| c.gprs[RAX] = DATA + 0x20);
    emulated(&o, Insn::Sgdt, 3);
    assert_eq!(mem.peek(DATA + 0x20, 10).unwrap(), dtp(16 * 8 - 1, GDT));
    let (o, _, mem) = run(&[0x0f, 0x01, 0x08], |c, _| {
        c.gprs[RAX] = DATA + 0x40;
        c.dt.idtr = DescriptorTablePointer {
            limit: 0xfff,
            base: 0xffff_ffff_ffff_f000,
        };
    });
    emulated(&o, Insn::Sidt, 3);
    assert_eq!(
        mem.peek(DATA + 0x40, 10).unwrap(),
        dtp(0xfff, 0xffff_ffff_ffff_f000)
    );
}

#[test]
fn sgdt_to_readonly_memory_is_pf_write() {
    let (o, _, _) = run(&[0x0f, 0x01, 0x00], |c, m| {
        m.map(0x60_0000, false);
        c.gprs[RAX] = 0x60_0000;
    });
    assert_eq!(
        injected(&o),
        Exception::Pf(PageFault {
            addr: 0x60_0000,
            error_code: 3
        })
    );
}

#[test]
fn stores_at_cpl3_fault_only_under_umip() {
    let (o, _, _) = run(&[0x0f, 0x01, 0x00], |c, _| {
        c.cpl = 3;
        c.gprs[RAX] = DATA;
    });
    emulated(&o, Insn::Sgdt, 3);
    let (o, _, _) = run(&[0x0f, 0x01, 0x00], |c, _| {
        c.cpl = 3;
        c.umip = true;
        c.gprs[RAX] = DATA;
    });
    assert_eq!(injected(&o), Exception::Gp(0));
}

// ---- LTR ----------------------------------------------------------------------

fn tss_type(mem: &MockMemory) -> u64 {
    (mem.peek_u64(GDT + u64::from(TSS_SEL)).unwrap() >> 40) & 0xf
}

#[test]
fn ltr_register_sets_busy_and_tr() {
    // ltr ax: 0f 00 d8.
    let (o, cpu, mem) = run(&[0x0f, 0x00, 0xd8], |c, _| c.gprs[RAX] = u64::from(TSS_SEL));
    emulated(&o, Insn::Ltr, 3);
    assert_eq!(cpu.dt.tr, Selector(TSS_SEL));
    assert_eq!((cpu.dt.tr_base, cpu.dt.tr_limit), (TSS_BASE, 0x67));
    assert_eq!(tss_type(&mem), 0xb);
    // The busy bit is a one-byte implicit write to the type byte.
    assert!(
        mem.log()
            .contains(&(GDT + u64::from(TSS_SEL) + 5, 1, Access::ImplicitWrite))
    );
}

#[test]
fn ltr_memory_operand_and_high_register() {
    // ltr [rax]: 0f 00 18.
    let (o, cpu, _) = run(&[0x0f, 0x00, 0x18], |c, m| {
        c.gprs[RAX] = DATA;
        m.poke(DATA, &TSS_SEL.to_le_bytes());
    });
    emulated(&o, Insn::Ltr, 3);
    assert_eq!(cpu.dt.tr, Selector(TSS_SEL));
    // ltr r10w (41 0f 00 da): only the low 16 bits count.
    let (o, cpu, _) = run(&[0x41, 0x0f, 0x00, 0xda], |c, _| {
        c.gprs[R10] = 0xffff_0000_0000_0000 | u64::from(TSS_SEL);
    });
    emulated(&o, Insn::Ltr, 4);
    assert_eq!(cpu.dt.tr, Selector(TSS_SEL));
}

#[test]
fn ltr_faults() {
    let sel = |s: u16| move |c: &mut MockCpu, _: &MockMemory| c.gprs[RAX] = u64::from(s);
    let ltr = [0x0f, 0x00, 0xd8];
    // Null selector: #GP(0).
    assert_eq!(injected(&run(&ltr, sel(0x3)).0), Exception::Gp(0));
    // TI = 1 (LDT): #GP(selector).
    assert_eq!(injected(&run(&ltr, sel(0x44)).0), Exception::Gp(0x44));
    // Past the GDT limit (16 bytes must fit): #GP(selector).
    assert_eq!(injected(&run(&ltr, sel(0x78)).0), Exception::Gp(0x78));
    // A code segment: #GP(selector), RPL dropped from the error code.
    assert_eq!(injected(&run(&ltr, sel(0x13)).0), Exception::Gp(0x10));
    // An LDT descriptor: #GP(selector).
    assert_eq!(injected(&run(&ltr, sel(LDT_SEL)).0), Exception::Gp(LDT_SEL));
    // A busy TSS: #GP(selector), nothing changes.
    let (o, cpu, _) = run(&ltr, |c, m| {
        c.gprs[RAX] = u64::from(TSS_SEL);
        let d = m.peek_u64(GDT + u64::from(TSS_SEL)).unwrap();
        m.poke_u64(GDT + u64::from(TSS_SEL), d | 2 << 40);
    });
    assert_eq!(injected(&o), Exception::Gp(TSS_SEL));
    assert_eq!(cpu.dt.tr, Selector(0));
    // Not present: #NP(selector), busy bit not written.
    let (o, _, mem) = run(&ltr, |c, m| {
        c.gprs[RAX] = u64::from(TSS_SEL);
        let d = m.peek_u64(GDT + u64::from(TSS_SEL)).unwrap();
        m.poke_u64(GDT + u64::from(TSS_SEL), d & !(1 << 47));
    });
    assert_eq!(injected(&o), Exception::Np(TSS_SEL));
    assert_eq!(tss_type(&mem), 0x9);
    // Upper half with a non-zero type field: #GP(selector).
    let (o, _, _) = run(&ltr, |c, m| {
        c.gprs[RAX] = u64::from(TSS_SEL);
        m.poke_u64(GDT + u64::from(TSS_SEL) + 8, 0x0000_0100_0000_0000);
    });
    assert_eq!(injected(&o), Exception::Gp(TSS_SEL));
    // Non-canonical base (upper half 0x0000_8000): #GP(selector).
    let (o, _, _) = run(&ltr, |c, m| {
        c.gprs[RAX] = u64::from(TSS_SEL);
        m.poke_u64(GDT + u64::from(TSS_SEL) + 8, 0x0000_8000);
    });
    assert_eq!(injected(&o), Exception::Gp(TSS_SEL));
    // The GDT page not mapped: #PF on the implicit read.
    let (o, _, _) = run(&ltr, |c, m| {
        c.gprs[RAX] = u64::from(TSS_SEL);
        m.unmap(GDT);
    });
    assert_eq!(
        injected(&o),
        Exception::Pf(PageFault {
            addr: GDT + u64::from(TSS_SEL),
            error_code: 0
        })
    );
}

#[test]
fn ltr_busy_bit_write_to_readonly_gdt_is_pf_write() {
    let (mut cpu, _) = setup(&[0x0f, 0x00, 0xd8]);
    cpu.gprs[RAX] = u64::from(TSS_SEL);
    // A read-only GDT page with the same contents.
    let ro = MockMemory::new();
    ro.map(CODE, false);
    ro.poke(CODE, &[0x0f, 0x00, 0xd8]);
    ro.map(GDT, false);
    let tss = SystemDescriptor::tss(TSS_BASE, 0x67).unwrap();
    // poke writes through whatever the page's permission.
    ro.poke_u64(GDT + u64::from(TSS_SEL), tss.low);
    ro.poke_u64(GDT + u64::from(TSS_SEL) + 8, tss.high);
    let o = emulate(&mut cpu, &ro);
    assert_eq!(
        injected(&o),
        Exception::Pf(PageFault {
            addr: GDT + u64::from(TSS_SEL) + 5,
            error_code: 3
        })
    );
    assert_eq!(cpu.dt.tr, Selector(0));
}

// ---- LLDT ---------------------------------------------------------------------

#[test]
fn lldt_register_and_memory() {
    // lldt ax: 0f 00 d0.
    let (o, cpu, _) = run(&[0x0f, 0x00, 0xd0], |c, _| c.gprs[RAX] = u64::from(LDT_SEL));
    emulated(&o, Insn::Lldt, 3);
    assert_eq!(
        (cpu.dt.ldtr, cpu.dt.ldtr_base, cpu.dt.ldtr_limit),
        (Selector(LDT_SEL), LDT_BASE, 31)
    );
    // lldt [rbx + 2]: 0f 00 53 02.
    let (o, cpu, _) = run(&[0x0f, 0x00, 0x53, 0x02], |c, m| {
        c.gprs[RBX] = DATA;
        m.poke(DATA + 2, &LDT_SEL.to_le_bytes());
    });
    emulated(&o, Insn::Lldt, 4);
    assert_eq!(cpu.dt.ldtr, Selector(LDT_SEL));
}

#[test]
fn lldt_null_empties_ldtr() {
    let (o, cpu, _) = run(&[0x0f, 0x00, 0xd0], |c, _| {
        c.gprs[RAX] = 0;
        c.dt.ldtr = Selector(LDT_SEL);
        c.dt.ldtr_base = LDT_BASE;
        c.dt.ldtr_limit = 31;
    });
    emulated(&o, Insn::Lldt, 3);
    assert_eq!(
        (cpu.dt.ldtr, cpu.dt.ldtr_base, cpu.dt.ldtr_limit),
        (Selector(0), 0, 0)
    );
}

#[test]
fn lldt_faults() {
    let sel = |s: u16| move |c: &mut MockCpu, _: &MockMemory| c.gprs[RAX] = u64::from(s);
    let lldt = [0x0f, 0x00, 0xd0];
    assert_eq!(injected(&run(&lldt, sel(0x54)).0), Exception::Gp(0x54));
    assert_eq!(injected(&run(&lldt, sel(0x78)).0), Exception::Gp(0x78));
    assert_eq!(injected(&run(&lldt, sel(0x18)).0), Exception::Gp(0x18));
    assert_eq!(
        injected(&run(&lldt, sel(TSS_SEL)).0),
        Exception::Gp(TSS_SEL)
    );
    let (o, cpu, _) = run(&lldt, |c, m| {
        c.gprs[RAX] = u64::from(LDT_SEL);
        let d = m.peek_u64(GDT + u64::from(LDT_SEL)).unwrap();
        m.poke_u64(GDT + u64::from(LDT_SEL), d & !(1 << 47));
    });
    assert_eq!(injected(&o), Exception::Np(LDT_SEL));
    assert_eq!(cpu.dt.ldtr, Selector(0));
    let (o, _, _) = run(&lldt, |c, m| {
        c.gprs[RAX] = u64::from(LDT_SEL);
        m.poke_u64(GDT + u64::from(LDT_SEL) + 8, 0x0001_0000);
    });
    assert_eq!(injected(&o), Exception::Gp(LDT_SEL));
}

// ---- STR / SLDT -----------------------------------------------------------------

#[test]
fn str_and_sldt_register_widths() {
    let prime = |c: &mut MockCpu, _: &MockMemory| {
        c.dt.tr = Selector(TSS_SEL);
        c.dt.ldtr = Selector(LDT_SEL);
        c.gprs[RAX] = 0xaaaa_bbbb_cccc_dddd;
        c.gprs[R9] = 0x1111_2222_3333_4444;
        c.gprs[R10] = 0x5555_6666_7777_8888;
    };
    // str ax (66 0f 00 c8): bits 63:16 kept.
    let (o, cpu, _) = run(&[0x66, 0x0f, 0x00, 0xc8], prime);
    emulated(&o, Insn::Str, 4);
    assert_eq!(cpu.gprs[RAX], 0xaaaa_bbbb_cccc_0000 | u64::from(TSS_SEL));
    // str eax (0f 00 c8): zero-extended.
    let (o, cpu, _) = run(&[0x0f, 0x00, 0xc8], prime);
    emulated(&o, Insn::Str, 3);
    assert_eq!(cpu.gprs[RAX], u64::from(TSS_SEL));
    // str rax (48 0f 00 c8): zero-extended.
    let (o, cpu, _) = run(&[0x48, 0x0f, 0x00, 0xc8], prime);
    emulated(&o, Insn::Str, 4);
    assert_eq!(cpu.gprs[RAX], u64::from(TSS_SEL));
    // str r9w (66 41 0f 00 c9).
    let (o, cpu, _) = run(&[0x66, 0x41, 0x0f, 0x00, 0xc9], prime);
    emulated(&o, Insn::Str, 5);
    assert_eq!(cpu.gprs[R9], 0x1111_2222_3333_0000 | u64::from(TSS_SEL));
    // sldt r10 (49 0f 00 c2).
    let (o, cpu, _) = run(&[0x49, 0x0f, 0x00, 0xc2], prime);
    emulated(&o, Insn::Sldt, 4);
    assert_eq!(cpu.gprs[R10], u64::from(LDT_SEL));
    // sldt ax (66 0f 00 c0).
    let (o, cpu, _) = run(&[0x66, 0x0f, 0x00, 0xc0], prime);
    emulated(&o, Insn::Sldt, 4);
    assert_eq!(cpu.gprs[RAX], 0xaaaa_bbbb_cccc_0000 | u64::from(LDT_SEL));
}

#[test]
fn str_and_sldt_memory_store_two_bytes() {
    let prime = |c: &mut MockCpu, m: &MockMemory| {
        c.dt.tr = Selector(TSS_SEL);
        c.dt.ldtr = Selector(LDT_SEL);
        c.gprs[RAX] = DATA;
        m.poke(DATA, &[0xee; 4]);
    };
    // str [rax] (0f 00 08), even with REX.W (48 0f 00 08).
    for code in [&[0x0f, 0x00, 0x08][..], &[0x48, 0x0f, 0x00, 0x08]] {
        let (o, _, mem) = run(code, prime);
        emulated(&o, Insn::Str, code.len());
        assert_eq!(mem.peek(DATA, 4).unwrap(), [TSS_SEL as u8, 0, 0xee, 0xee]);
    }
    // sldt [rax] (0f 00 00).
    let (o, _, mem) = run(&[0x0f, 0x00, 0x00], prime);
    emulated(&o, Insn::Sldt, 3);
    assert_eq!(mem.peek(DATA, 4).unwrap(), [LDT_SEL as u8, 0, 0xee, 0xee]);
}

#[test]
fn str_sldt_fault_under_umip_at_cpl3_and_on_bad_memory() {
    let (o, cpu, _) = run(&[0x0f, 0x00, 0xc8], |c, _| {
        c.cpl = 3;
        c.umip = true;
        c.gprs[RAX] = 7;
    });
    assert_eq!(injected(&o), Exception::Gp(0));
    assert_eq!(cpu.gprs[RAX], 7);
    let (o, _, _) = run(&[0x0f, 0x00, 0x00], |c, _| c.gprs[RAX] = 0x70_0000);
    assert_eq!(
        injected(&o),
        Exception::Pf(PageFault {
            addr: 0x70_0000,
            error_code: 2
        })
    );
}

// ---- not ours -----------------------------------------------------------------

#[test]
fn other_instructions_are_not_emulated() {
    // mov ds, ax (the kernel's deliberate #GP): delivered as it was.
    let (o, _, _) = run(&[0x8e, 0xd8], |_, _| {});
    assert_eq!(o, Outcome::NotEmulated(NotEmulated::Other("Mov".into())));
    // mov rax, cr4; lar; int3; garbage.
    for code in [&[0x0f, 0x20, 0xe0][..], &[0x0f, 0x02, 0xc0], &[0xcc]] {
        let (o, _, _) = run(code, |_, _| {});
        assert!(
            matches!(o, Outcome::NotEmulated(NotEmulated::Other(_))),
            "{o:?}"
        );
    }
    let (o, _, _) = run(&[0x0f, 0xff, 0xff, 0xff], |_, _| {});
    assert!(matches!(o, Outcome::NotEmulated(_)), "{o:?}");
}

#[test]
fn unfetchable_rip_is_not_emulated() {
    let (mut cpu, mem) = setup(&[]);
    cpu.rip = 0x90_0000;
    let o = emulate(&mut cpu, &mem);
    assert!(
        matches!(o, Outcome::NotEmulated(NotEmulated::Fetch(Exception::Pf(pf))) if pf.addr == 0x90_0000 && pf.error_code == 0x10)
    );
}

#[test]
fn instruction_straddling_a_page_boundary() {
    // lgdt [rax] with its last byte on the next page.
    let (mut cpu, mem) = setup(&[]);
    mem.map(CODE + 0x1000, false);
    mem.poke(CODE + 0xffe, &[0x0f, 0x01, 0x10]);
    cpu.rip = CODE + 0xffe;
    cpu.gprs[RAX] = DATA;
    mem.poke(DATA, &dtp(0x7, 0x1000));
    emulated(&emulate(&mut cpu, &mem), Insn::Lgdt, 3);
    // The same with the next page missing: the fetch of the last byte
    // faults, on the next page (SDM vol. 3A 4.7: CR2 is that byte's
    // address; I/D set).
    mem.unmap(CODE + 0x1000);
    let o = emulate(&mut cpu, &mem);
    assert!(
        matches!(o, Outcome::NotEmulated(NotEmulated::Fetch(Exception::Pf(pf))) if pf.addr == CODE + 0x1000 && pf.error_code == 0x10),
        "{o:?}"
    );
}

#[test]
fn truncated_and_empty_bytes_never_panic() {
    let (mut cpu, mem) = setup(&[]);
    for n in 0..4 {
        let _ = emulate_bytes(&mut cpu, &mem, &[0x0f, 0x01, 0x15, 0x00][..n]);
    }
}
