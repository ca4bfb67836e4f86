//! Regression tests named after the Xen security advisories that apply to
//! trap-and-emulate: hv-sim's emulator (`hv_sim::emulate`) is the part of a
//! hypervisor those advisories were about (Xen's x86 emulator and its PV
//! privileged-op emulation). The advisories that apply to the hypercalls
//! are in `xen_xsa.rs`; the README's "Security advisories" list says which
//! apply where and why the others don't.

use hv_sim::emulate::mock::{MockCpu, MockMemory};
use hv_sim::emulate::{Access, Exception, Insn, NotEmulated, Outcome, emulate};
use pvops::{DescriptorTablePointer, Selector, SystemDescriptor};

const CODE: u64 = 0x40_0000;
const GDT: u64 = 0x1_0000;
const DATA: u64 = 0x2_0000;
const TSS_SEL: u16 = 0x40;

/// A vCPU at virtual CPL `cpl` with a 16-entry GDT holding an available
/// 64-bit TSS at 0x40, and `code` at RIP.
fn machine(code: &[u8], cpl: u8) -> (MockCpu, MockMemory) {
    let mem = MockMemory::new();
    mem.map(GDT, true).map(DATA, true).map(CODE, false);
    mem.poke(CODE, code);
    let tss = SystemDescriptor::tss(0x3_0000, pvops::Tss64::LIMIT).unwrap();
    mem.poke_u64(GDT + u64::from(TSS_SEL), tss.low);
    mem.poke_u64(GDT + u64::from(TSS_SEL) + 8, tss.high);
    let mut cpu = MockCpu {
        rip: CODE,
        cpl,
        ..MockCpu::default()
    };
    cpu.dt.gdtr = DescriptorTablePointer {
        limit: 16 * 8 - 1,
        base: GDT,
    };
    (cpu, mem)
}

fn injected(o: &Outcome) -> Exception {
    match o {
        Outcome::Inject { exception, .. } => *exception,
        other => panic!("expected an exception, got {other:?}"),
    }
}

/// XSA-105: LGDT/LIDT emulation without a CPL check. A guest's user mode
/// (virtual CPL 3) executing `lgdt`/`lidt` gets #GP(0) and the tables stay
/// as they were, whatever the operand.
#[test]
fn xsa105_lgdt_lidt_need_cpl0() {
    // lgdt [rax]; lidt [rax]
    for code in [[0x0f, 0x01, 0x10], [0x0f, 0x01, 0x18]] {
        let (mut cpu, mem) = machine(&code, 3);
        cpu.gprs[0] = DATA;
        mem.poke(DATA, &[0xff, 0x0f, 0, 0, 0x66, 0, 0, 0, 0, 0]);
        let before = cpu.dt;
        assert_eq!(injected(&emulate(&mut cpu, &mem)), Exception::Gp(0));
        assert_eq!(cpu.dt, before);
    }
    // ltr / lldt from user mode too.
    for code in [[0x0f, 0x00, 0xd8], [0x0f, 0x00, 0xd0]] {
        let (mut cpu, mem) = machine(&code, 3);
        cpu.gprs[0] = u64::from(TSS_SEL);
        assert_eq!(injected(&emulate(&mut cpu, &mem)), Exception::Gp(0));
        assert_eq!(cpu.dt.tr, Selector(0));
    }
}

/// XSA-110: far branches loaded CS without privilege checks. The emulator
/// emulates only the eight descriptor-table instructions: a far `jmp`,
/// `call`, `ret` or `iretq` is not emulated, so the guest gets its
/// original fault and no CS is ever loaded by hv-sim.
#[test]
fn xsa110_far_branches_are_never_emulated() {
    for code in [
        &[0xff, 0x28][..],       // jmp far [rax]
        &[0xff, 0x18][..],       // call far [rax]
        &[0x48, 0xff, 0x28][..], // rex.w jmp far [rax]
        &[0xcb][..],             // retf
        &[0x48, 0xcf][..],       // iretq
    ] {
        let (mut cpu, mem) = machine(code, 0);
        cpu.gprs[0] = DATA;
        let before = cpu.clone();
        match emulate(&mut cpu, &mem) {
            Outcome::NotEmulated(NotEmulated::Other(_) | NotEmulated::Undecodable) => {}
            o => panic!("{code:02x?}: {o:?}"),
        }
        assert_eq!(cpu, before, "{code:02x?}");
    }
}

/// XSA-123: a segment override on an instruction with a register operand
/// made Xen's emulator write memory. `ltr`/`str` with an FS or GS prefix
/// and a register operand act on the register alone: no data access.
#[test]
fn xsa123_segment_override_on_a_register_operand() {
    // fs ltr ax; gs str eax
    let (mut cpu, mem) = machine(&[0x64, 0x0f, 0x00, 0xd8], 0);
    cpu.gprs[0] = u64::from(TSS_SEL);
    cpu.fs_base = DATA;
    match emulate(&mut cpu, &mem) {
        Outcome::Emulated { insn, len, .. } => assert_eq!((insn, len), (Insn::Ltr, 4)),
        o => panic!("{o:?}"),
    }
    assert_eq!(cpu.dt.tr, Selector(TSS_SEL));
    let data: Vec<_> = mem
        .log()
        .into_iter()
        .filter(|(_, _, a)| matches!(a, Access::Read | Access::Write))
        .collect();
    assert!(data.is_empty(), "operand accesses: {data:x?}");

    let (mut cpu, mem) = machine(&[0x65, 0x0f, 0x00, 0xc8], 0);
    cpu.dt.tr = Selector(TSS_SEL);
    cpu.gprs[0] = 0xdead_beef_dead_beef;
    cpu.gs_base = DATA;
    match emulate(&mut cpu, &mem) {
        Outcome::Emulated { insn, .. } => assert_eq!(insn, Insn::Str),
        o => panic!("{o:?}"),
    }
    assert_eq!(cpu.gprs[0], u64::from(TSS_SEL));
    assert!(
        mem.log()
            .iter()
            .all(|(_, _, a)| !matches!(a, Access::Read | Access::Write))
    );
}

/// XSA-186: addresses truncated (or not) at the address-size boundary.
/// With a 32-bit address size (`0x67`) the operand's address wraps at
/// 4 GiB as the CPU computes it; with 64-bit addressing it wraps at 2^64.
/// (Instruction fetches that run off the top of the address space are left
/// out: what the CPU does there is not pinned down here.)
#[test]
fn xsa186_operand_addresses_wrap_at_the_address_size() {
    // addr32 lgdt [eax + 0x10]: 67 0f 01 50 10, eax = 0xffff_fff8: the
    // address is 0x0000_0008 (wrapped at 32 bits), not 0x1_0000_0008.
    let (mut cpu, mem) = machine(&[0x67, 0x0f, 0x01, 0x50, 0x10], 0);
    cpu.gprs[0] = 0xffff_fff8;
    mem.map(0, true);
    mem.poke(8, &[0x7f, 0, 0, 0x50, 0, 0, 0, 0, 0, 0]);
    match emulate(&mut cpu, &mem) {
        Outcome::Emulated { insn, len, .. } => assert_eq!((insn, len), (Insn::Lgdt, 5)),
        o => panic!("{o:?}"),
    }
    assert_eq!(cpu.dt.gdtr.base, 0x5000);
    assert_eq!(cpu.dt.gdtr.limit, 0x7f);

    // 64-bit address size: the address wraps at 2^64, the CPU's modular
    // arithmetic (lgdt [rax + 0x10] with rax = 2^64 - 8 reads address 8).
    let (mut cpu, mem) = machine(&[0x0f, 0x01, 0x50, 0x10], 0);
    cpu.gprs[0] = 0xffff_ffff_ffff_fff8;
    mem.map(0, true);
    mem.poke(8, &[0x3f, 0, 0, 0x60, 0, 0, 0, 0, 0, 0]);
    match emulate(&mut cpu, &mem) {
        Outcome::Emulated { insn, len, .. } => assert_eq!((insn, len), (Insn::Lgdt, 4)),
        o => panic!("{o:?}"),
    }
    assert_eq!((cpu.dt.gdtr.limit, cpu.dt.gdtr.base), (0x3f, 0x6000));
}

/// XSA-191: null selectors and a null LDTR treated as usable. `lldt` with
/// any null selector (index 0, any RPL) empties LDTR; a TI=1 selector for
/// `ltr` or `lldt` is #GP(selector) whatever LDTR holds; `ltr` with a null
/// selector is #GP(0).
#[test]
fn xsa191_null_selectors_and_null_ldtr() {
    // lldt ax with 0x3: LDTR empty, not a fault.
    let (mut cpu, mem) = machine(&[0x0f, 0x00, 0xd0], 0);
    cpu.gprs[0] = 3;
    cpu.dt.ldtr = Selector(0x50);
    match emulate(&mut cpu, &mem) {
        Outcome::Emulated { insn, .. } => assert_eq!(insn, Insn::Lldt),
        o => panic!("{o:?}"),
    }
    assert_eq!(cpu.dt.ldtr.0 & !3, 0, "LDTR names no descriptor");
    assert_eq!(cpu.dt.ldtr_base, 0);
    // With LDTR null, TI=1 selectors are not looked up anywhere.
    for (code, sel) in [([0x0f, 0x00, 0xd8], 0x44u16), ([0x0f, 0x00, 0xd0], 0x4c)] {
        let (mut cpu, mem) = machine(&code, 0);
        cpu.gprs[0] = u64::from(sel);
        assert_eq!(
            injected(&emulate(&mut cpu, &mem)),
            Exception::Gp(sel & !3),
            "{code:02x?}"
        );
    }
    // ltr with a null selector: #GP(0).
    let (mut cpu, mem) = machine(&[0x0f, 0x00, 0xd8], 0);
    cpu.gprs[0] = 2;
    assert_eq!(injected(&emulate(&mut cpu, &mem)), Exception::Gp(0));
}

/// XSA-298 (emulator side): descriptor lookups respect the GDT limit. A
/// 16-byte TSS descriptor whose upper half lies past the limit is
/// #GP(selector), even though the memory is there.
#[test]
fn xsa298_gdt_limit_is_honoured() {
    let (mut cpu, mem) = machine(&[0x0f, 0x00, 0xd8], 0);
    cpu.gprs[0] = u64::from(TSS_SEL);
    cpu.dt.gdtr.limit = TSS_SEL + 8 - 1 + 4; // the upper half is cut
    assert_eq!(injected(&emulate(&mut cpu, &mem)), Exception::Gp(TSS_SEL));
    assert_eq!(cpu.dt.tr, Selector(0));
}
