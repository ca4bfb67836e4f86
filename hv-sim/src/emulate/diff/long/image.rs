//! The long-mode guest: a flat multiboot image (loaded at [`LOAD`], entered
//! by QEMU in 32-bit protected mode, paging off) that turns on 4-level
//! paging and IA-32e mode and runs every scenario in 64-bit mode or in
//! compatibility mode (32- or 16-bit code), catching every exception
//! through a 64-bit IDT.
//!
//! Machine code written byte by byte (`Asm`, as the 32-bit guest's);
//! the unit tests decode it back with iced-x86. Layout (all identity
//! mapped; the same [`GDT`] and [`WIN`] addresses as the 32-bit guest, so
//! its scenario generator aims compatibility-mode operands here too):
//!
//! | address | what |
//! |---|---|
//! | [`LOAD`] | multiboot header, the 32-bit entry (CR4.PAE, CR3, EFER.LME/NXE, CR0.PG/WP, far jump to [`ENTRY64`]) |
//! | [`GDT`] | null, 0x08 64-bit code, 0x10 flat data, scenario slots 0x18–0x78, 0x80 32-bit code (compatibility mode), 0x88 16-bit code (its base set per scenario) |
//! | [`VARS`] | GDTR/IDTR images (10 bytes each), the saved GDTR/IDTR, the current record, vector, error code, RAX, R8, CR2, … |
//! | [`IDT`] | 32 64-bit interrupt gates (16 bytes) to the stubs |
//! | `TEXT` | the stubs, the common handler, the recorder, [`ENTRY64`] |
//! | [`WIN`] | the data window: its first 64 and last 16 bytes are compared |
//! | [`PML4`]… | 4-level paging: the first 1 GiB identity (the first 2 MiB through [`PT0`] in 4 KiB pages, supervisor, code read-only; the rest 2 MiB pages, read-only below [`RESULTS`]); the window page also at [`Window::TopLow`] (the last canonical low page) and [`Window::HighHalf`] (the first canonical high page) through [`PT_H`] |
//! | `SCENARIOS` | the runner, each scenario's stub, one data block per scenario |
//!
//! Every stub starts with `lgdt [SCRATCH]` (the test GDTR: entering
//! compatibility mode reads the runtime GDT's 0x80/0x88, beyond a test
//! limit) and ends by saving GDTR and IDTR; a compatibility-mode stub then
//! restores the runtime GDTR and IDTR before its far jump back to 64-bit
//! mode (an LGDT it ran may have loaded any base). An exception goes to
//! the common handler, which saves them too. The records go to
//! [`RESULTS`]; then `isa-debug-exit`.
//!
//! # Entering at [`ENTRY64`] (a VMM that cannot start in 32-bit mode)
//! Load the image at [`LOAD`] in guest-physical memory of at least
//! `RESULTS + n × RECORD` bytes (identity, 256 MiB will do), and start the
//! vCPU in 64-bit mode at CPL 0 with [`Entry64`]'s CR0, CR3, CR4 and EFER
//! (`Entry64::for_paging`), any flat 64-bit CS, RIP = [`ENTRY64`],
//! interrupts off. The image's page tables are in the image. The code at
//! [`ENTRY64`] loads its own stack, GDT, IDT, data segments and CS (by a
//! far jump), so no GDT or IDT need be set up. It ends with
//! `out 0xf4, eax` (eax 0) then `hlt`; the records are at [`RESULTS`].

use super::super::image::{Asm, LOAD, RESULTS, put};
use super::{CodeMode, LongPaging, LongScenario, RECORD, Window};

pub use super::super::image::{GDT, WIN};

/// Variables (in the GDT's page).
pub const VARS: u32 = GDT + 0x100;
const RT_GDTR: u32 = VARS;
const RT_IDTR: u32 = VARS + 16;
const SAVED_GDTR: u32 = VARS + 32;
const SAVED_IDTR: u32 = VARS + 48;
const CUR_REC: u32 = VARS + 64;
const CUR_VEC: u32 = VARS + 72;
const CUR_ERR: u32 = VARS + 80;
const CUR_RAX: u32 = VARS + 88;
const CUR_R8: u32 = VARS + 96;
const CUR_CR2: u32 = VARS + 104;
const CUR_DATA: u32 = VARS + 112;
const CUR_PTE_AT: u32 = VARS + 120;
const RESUME: u32 = VARS + 128;
const LEFT: u32 = VARS + 136;
const JUMP: u32 = VARS + 144;
const ENTRY_JUMP: u32 = VARS + 152;
/// The test GDTR image each stub loads (10 bytes).
pub const SCRATCH: u32 = VARS + 160;
/// The exception frame's RIP, RFLAGS and RSP (0 when none was taken).
const CUR_FRAME: u32 = VARS + 176;
/// The IDT (32 16-byte gates).
pub const IDT: u32 = LOAD + 0x2000;
const TEXT: u32 = LOAD + 0x3000;
/// The PML4 (CR3).
pub const PML4: u32 = LOAD + 0x5000;
/// The page table of the first 2 MiB.
pub const PT0: u32 = LOAD + 0x6000;
/// The page directory of the first 1 GiB.
pub const PD0: u32 = LOAD + 0x7000;
/// The PDPT of the first 512 GiB.
pub const PDPT0: u32 = LOAD + 0x8000;
/// The high windows' PDPT (PML4 entries 255 and 256), directory and page
/// table (each used through entries 0 and 511).
pub const PDPT_H: u32 = LOAD + 0x9000;
/// See [`PDPT_H`].
pub const PD_H: u32 = LOAD + 0xa000;
/// See [`PDPT_H`].
pub const PT_H: u32 = LOAD + 0xb000;
const SCENARIOS: u32 = LOAD + 0xc000;
/// The guest's stack: RSP while a scenario's instruction runs.
pub const STACK_TOP: u32 = 0x7_0000;
/// The IDT's limit (32 16-byte gates).
pub const IDT_LIMIT: u16 = 32 * 16 - 1;
/// The runtime GDT's limit.
pub const GDT_LIMIT: u16 = 0x8f;
/// 64-bit code (L = 1).
pub const CODE64: u64 = 0x00af_9b00_0000_ffff;
/// Flat data.
pub const DATA: u64 = 0x00cf_9300_0000_ffff;
/// 32-bit code (L = 0, D = 1): compatibility mode.
pub const CODE32: u64 = 0x00cf_9b00_0000_ffff;
/// The 16-bit code selector (its descriptor's base is the stub's).
pub const SEL_CODE16: u16 = 0x88;
/// The 32-bit code selector.
pub const SEL_CODE32: u16 = 0x80;
/// The code at which a 64-bit VMM enters the image (see the module docs).
pub const ENTRY64: u32 = TEXT + 0xc00;

/// The control registers [`ENTRY64`] expects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry64 {
    /// CR0: PE, WP, PG (ET too).
    pub cr0: u64,
    /// CR3: [`PML4`].
    pub cr3: u64,
    /// CR4: PAE (and SMEP, SMAP under [`LongPaging::Smap`]).
    pub cr4: u64,
    /// EFER: LME, LMA, NXE.
    pub efer: u64,
    /// RIP: [`ENTRY64`].
    pub rip: u64,
}

impl Entry64 {
    /// The state for an image of `paging`'s scenarios.
    pub fn for_paging(paging: LongPaging) -> Entry64 {
        Entry64 {
            cr0: 0x8001_0011,
            cr3: u64::from(PML4),
            cr4: u64::from(cr4(paging)),
            efer: 0xd00,
            rip: u64::from(ENTRY64),
        }
    }
}

fn cr4(paging: LongPaging) -> u32 {
    match paging {
        LongPaging::Plain => 0x20,
        LongPaging::Smap => 0x20 | 1 << 20 | 1 << 21,
    }
}

/// The window page's default entry (present, writable).
pub const WIN_PTE_RW: u32 = WIN | 3;

/// The first 2 MiB's page-table entry for `page`: present, supervisor,
/// identity, writable only where the guest writes (the stack below
/// [`LOAD`], the GDT and variables, the window, the page tables it
/// changes).
pub fn pte(page: u32) -> u64 {
    let writable = page < LOAD || [GDT, WIN, PT0, PT_H].contains(&(page & !0xfff));
    u64::from(page & !0xfff | 1 | u32::from(writable) << 1)
}

/// The first 1 GiB's directory entry `k` (1 ≤ k < 512): a 2 MiB page,
/// identity, writable from [`RESULTS`] on.
pub fn pde(k: u32) -> u64 {
    super::super::image::pde(super::super::Paging::Pae, k, super::super::image::RESULTS).into()
}

/// The page tables: `(physical address, entry)`, every non-zero entry.
pub fn page_table_entries() -> Vec<(u32, u64)> {
    let mut v = vec![
        (PML4, u64::from(PDPT0 | 7)),
        (PML4 + 255 * 8, u64::from(PDPT_H | 7)),
        (PML4 + 256 * 8, u64::from(PDPT_H | 7)),
        (PDPT0, u64::from(PD0 | 7)),
        (PD0, u64::from(PT0 | 7)),
    ];
    for hi in [PDPT_H, PD_H] {
        let next = if hi == PDPT_H { PD_H } else { PT_H };
        v.push((hi, u64::from(next | 7)));
        v.push((hi + 511 * 8, u64::from(next | 7)));
    }
    for w in [Window::TopLow, Window::HighHalf] {
        v.push((w.pte_at(), u64::from(WIN_PTE_RW)));
    }
    v
}

/// `mov`-like instruction `op` with a ModRM `reg` field and an absolute
/// 32-bit address (ModRM 00 reg 100, SIB 0x25: no base, no index).
fn abs<'a>(a: &'a mut Asm, op: &[u8], reg: u8, at: u32) -> &'a mut Asm {
    a.b(op).b(&[0x04 | (reg & 7) << 3, 0x25]).d(at)
}

fn store_rax(a: &mut Asm, at: u32) -> &mut Asm {
    abs(a, &[0x48, 0x89], 0, at)
}

fn load_rax(a: &mut Asm, at: u32) -> &mut Asm {
    abs(a, &[0x48, 0x8b], 0, at)
}

/// `mov qword [at], imm32` (sign-extended).
fn store_imm(a: &mut Asm, at: u32, v: u32) -> &mut Asm {
    abs(a, &[0x48, 0xc7], 0, at).d(v)
}

/// `mov r64, [rsi+disp32]`.
fn load_rsi(a: &mut Asm, r: u8, disp: u32) -> &mut Asm {
    a.b(&[0x48 | (r >> 3) << 2, 0x8b, 0x86 | (r & 7) << 3])
        .d(disp)
}

/// `mov [rdi+disp32], rax` (`ax` with `word`).
fn store_rdi(a: &mut Asm, disp: u32, word: bool) -> &mut Asm {
    a.b(if word {
        &[0x66, 0x89, 0x87]
    } else {
        &[0x48, 0x89, 0x87]
    })
    .d(disp)
}

/// `lgdt`/`lidt`/`sgdt`/`sidt` (ModRM reg 2/3/0/1) at `at`, 64-bit mode.
fn dt64(a: &mut Asm, reg: u8, at: u32) -> &mut Asm {
    abs(a, &[0x0f, 0x01], reg, at)
}

/// The same in compatibility mode, through SS (flat), 32-bit addressing;
/// in 16-bit code with 0x66 and 0x67 (a 32-bit operand and address).
fn dt_compat(a: &mut Asm, reg: u8, at: u32, d16: bool) -> &mut Asm {
    a.b(&[0x36]);
    if d16 {
        a.b(&[0x66, 0x67]);
    }
    a.b(&[0x0f, 0x01, 0x05 | reg << 3]).d(at)
}

/// The stubs, the common handler, the recorder and [`ENTRY64`], at
/// `TEXT`: the code, the stubs' addresses, the recorder's address, and
/// where [`ENTRY64`]'s far jump lands.
fn text(after_entry: u32) -> (Asm, Vec<u32>, u32, u32) {
    let mut a = Asm::new(TEXT);
    let common = TEXT + 32 * 32;
    let mut stubs = Vec::new();
    for v in 0..32u8 {
        let start = a.here();
        stubs.push(start);
        store_rax(&mut a, CUR_RAX);
        if !matches!(v, 8 | 10..=14 | 17 | 21 | 29 | 30) {
            a.b(&[0x6a, 0x00]); // push 0
        }
        a.b(&[0x6a, v]).jmp(common); // push v
        while a.here() < start + 32 {
            a.b(&[0xcc]);
        }
    }
    debug_assert_eq!(a.here(), common);
    a.b(&[0x58]); // pop rax
    store_rax(&mut a, CUR_VEC).b(&[0x58]);
    store_rax(&mut a, CUR_ERR).b(&[0x0f, 0x20, 0xd0]); // mov rax, cr2
    store_rax(&mut a, CUR_CR2);
    // The frame: RIP at [rsp], RFLAGS at [rsp+16], RSP at [rsp+24].
    for (k, disp) in [0u8, 16, 24].into_iter().enumerate() {
        a.b(&[0x48, 0x8b, 0x44, 0x24, disp]); // mov rax, [rsp+disp]
        store_rax(&mut a, CUR_FRAME + 8 * k as u32);
    }
    dt64(&mut a, 0, SAVED_GDTR);
    dt64(&mut a, 1, SAVED_IDTR);
    a.mov_r_imm(4, STACK_TOP); // mov esp (zero-extends)
    abs(&mut a, &[0xff], 4, RESUME); // jmp [resume]
    let rec = a.here();
    recorder(&mut a);
    while a.here() < ENTRY64 {
        a.b(&[0xcc]);
    }
    // ENTRY64: stack, GDT, IDT, data segments, CS by a far jump.
    a.mov_r_imm(4, STACK_TOP);
    dt64(&mut a, 2, RT_GDTR);
    dt64(&mut a, 3, RT_IDTR);
    for s in [0, 2, 3, 4, 5] {
        a.load_sreg(s, 0x10);
    }
    abs(&mut a, &[0xff], 5, ENTRY_JUMP); // jmp far [entry_jump]
    let cont = a.here();
    a.jmp(after_entry);
    (a, stubs, rec, cont)
}

/// The recorder: the saved GDTR/IDTR, TR, LDTR into the record; the
/// runtime tables and segments back; vector, error code, RAX, R8, CR2,
/// the exception frame's RIP, RFLAGS and RSP, the
/// window's entry (then every window entry present and writable again),
/// the window and the GDT's scenario slots.
fn recorder(a: &mut Asm) {
    abs(a, &[0x48, 0x8b], 7, CUR_REC); // mov rdi, [cur_rec]
    for (k, from) in [SAVED_GDTR, SAVED_GDTR + 8, SAVED_IDTR, SAVED_IDTR + 8]
        .into_iter()
        .enumerate()
    {
        load_rax(a, from);
        store_rdi(a, 32 + 8 * k as u32, false);
    }
    a.b(&[0x66, 0x0f, 0x00, 0xc8]); // str ax
    store_rdi(a, 64, true);
    a.b(&[0x66, 0x0f, 0x00, 0xc0]); // sldt ax
    store_rdi(a, 66, true);
    dt64(a, 2, RT_GDTR);
    dt64(a, 3, RT_IDTR);
    for s in [0, 3, 4, 5] {
        a.load_sreg(s, 0x10);
    }
    for (from, off) in [
        (CUR_VEC, 0),
        (CUR_ERR, 8),
        (CUR_RAX, 16),
        (CUR_R8, 24),
        (CUR_CR2, 72),
        (CUR_FRAME, 272),
        (CUR_FRAME + 8, 280),
        (CUR_FRAME + 16, 288),
    ] {
        load_rax(a, from);
        store_rdi(a, off, false);
    }
    abs(a, &[0x48, 0x8b], 2, CUR_PTE_AT); // mov rdx, [cur_pte_at]
    a.b(&[0x48, 0x8b, 0x02]); // mov rax, [rdx]
    store_rdi(a, 80, false);
    for w in [Window::Low, Window::TopLow, Window::HighHalf] {
        store_imm(a, w.pte_at(), WIN_PTE_RW);
    }
    a.reload_cr3();
    a.b(&[0x48, 0x81, 0xc7]).d(88); // add rdi, 88
    a.b(&[0xfc]); // cld
    for (from, qwords) in [(WIN, 8), (WIN + 0xff0, 2), (GDT + 0x18, 13)] {
        a.b(&[0xbe]).d(from); // mov esi, from
        a.mov_r_imm(1, qwords).b(&[0xf3, 0x48, 0xa5]); // rep movsq
    }
    a.b(&[0xc3]); // ret
}

/// Bytes of one scenario's data block: GDT slots (104), window (64 + 16),
/// then (offsets from where those leave RSI): the window's entry and its
/// address, the test GDTR (16), ES/DS/FS/GS, FS and GS bases, the far
/// jump (offset, selector), the 16-bit code descriptor, the record's
/// address, RFLAGS.AC, 16 registers.
const BLOCK: u32 = 184 + 216;
const D_PTE: u32 = 0;
const D_PTE_AT: u32 = 8;
const D_GDTR: u32 = 16;
const D_SELS: u32 = 32;
const D_FS: u32 = 40;
const D_GS: u32 = 48;
const D_JUMP: u32 = 56;
const D_CODE16: u32 = 64;
const D_REC: u32 = 72;
const D_AC: u32 = 80;
const D_REGS: u32 = 88;

/// One scenario's data block; `stub` is its stub's address.
fn data(i: usize, s: &LongScenario, stub: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(BLOCK as usize);
    for w in s.gdt_slots {
        v.extend_from_slice(&w.to_le_bytes());
    }
    v.extend_from_slice(&s.window);
    v.extend_from_slice(&s.window_tail);
    let q = |v: &mut Vec<u8>, x: u64| v.extend_from_slice(&x.to_le_bytes());
    q(&mut v, s.win_pte);
    q(&mut v, u64::from(s.win.pte_at()));
    v.extend_from_slice(&s.test_gdtr.0.to_le_bytes());
    q(&mut v, s.test_gdtr.1);
    v.extend_from_slice(&[0; 6]);
    for sel in s.sels {
        v.extend_from_slice(&sel.to_le_bytes());
    }
    q(&mut v, s.fs_base);
    q(&mut v, s.gs_base);
    let (off, sel) = match s.mode {
        CodeMode::Bits64 => (stub, 0x08),
        CodeMode::Compat32 => (stub, SEL_CODE32),
        CodeMode::Compat16 => (0, SEL_CODE16),
    };
    q(&mut v, u64::from(off) | u64::from(sel) << 32);
    q(&mut v, super::super::desc(stub, 0xffff, 0x9b, 0));
    q(&mut v, u64::from(RESULTS) + (i * RECORD) as u64);
    q(&mut v, u64::from(s.ac));
    for r in s.regs {
        q(&mut v, r);
    }
    debug_assert_eq!(v.len(), BLOCK as usize);
    v
}

/// The loop that runs every scenario from its data block: set up (window,
/// its entry, GDT slots, segments, FS/GS bases, RFLAGS.AC, registers), far
/// jump to the stub, record, next. Returns the code and `after`'s address
/// (where a stub and the exception handler resume).
fn runner(at: u32, recorder: u32, output: u32) -> (Asm, u32) {
    let mut a = Asm::new(at);
    let next = a.here();
    abs(&mut a, &[0x48, 0x8b], 6, CUR_DATA); // mov rsi, [cur_data]
    load_rsi(&mut a, 0, 184 + D_REC);
    store_rax(&mut a, CUR_REC);
    store_imm(&mut a, CUR_VEC, u32::MAX);
    for at in [
        CUR_ERR,
        CUR_CR2,
        CUR_RAX,
        CUR_R8,
        CUR_FRAME,
        CUR_FRAME + 8,
        CUR_FRAME + 16,
    ] {
        store_imm(&mut a, at, 0);
    }
    for k in 0..4 {
        store_imm(&mut a, SAVED_GDTR + 8 * k, 0);
    }
    a.b(&[0x31, 0xc0, 0x0f, 0x00, 0xd0]); // xor eax, eax; lldt ax
    a.b(&[0x66, 0x0f, 0x00, 0xc8]); // str ax
    abs(&mut a, &[0x48, 0x8b], 7, CUR_REC); // mov rdi, [cur_rec]
    store_rdi(&mut a, 68, true);
    a.b(&[0xfc]); // cld
    for (to, qwords) in [(GDT + 0x18, 13), (WIN, 8), (WIN + 0xff0, 2)] {
        a.b(&[0xbf]).d(to); // mov edi, to
        a.mov_r_imm(1, qwords).b(&[0xf3, 0x48, 0xa5]); // rep movsq
    }
    load_rsi(&mut a, 0, D_PTE);
    load_rsi(&mut a, 2, D_PTE_AT);
    abs(&mut a, &[0x48, 0x89], 2, CUR_PTE_AT); // mov [cur_pte_at], rdx
    a.b(&[0x48, 0x89, 0x02]); // mov [rdx], rax
    a.reload_cr3();
    for (from, to) in [(D_GDTR, SCRATCH), (D_GDTR + 8, SCRATCH + 8), (D_JUMP, JUMP)] {
        load_rsi(&mut a, 0, from);
        store_rax(&mut a, to);
    }
    load_rsi(&mut a, 0, D_CODE16);
    store_rax(&mut a, GDT + u32::from(SEL_CODE16));
    for (k, sreg) in [0u8, 3, 4, 5].into_iter().enumerate() {
        a.b(&[0x66, 0x8b, 0x86]).d(D_SELS + 2 * k as u32); // mov ax, [rsi+d]
        a.b(&[0x8e, 0xc0 | sreg << 3]);
    }
    for (msr, from) in [(0xc000_0100u32, D_FS), (0xc000_0101, D_GS)] {
        a.mov_r_imm(1, msr);
        a.b(&[0x8b, 0x86]).d(from); // mov eax, [rsi+d]
        a.b(&[0x8b, 0x96]).d(from + 4); // mov edx, [rsi+d+4]
        a.b(&[0x0f, 0x30]); // wrmsr
    }
    // RFLAGS.AC as the block says, through popfq: KVM's instruction
    // emulator, which runs this code under PVM, has no clac/stac.
    a.b(&[0x9c, 0x81, 0x24, 0x24]).d(!(1 << 18)); // pushfq; and dword [rsp], !AC
    a.b(&[0x83, 0xbe]).d(D_AC).b(&[0x00]); // cmp dword [rsi+d], 0
    a.b(&[0x74, 0x07, 0x81, 0x0c, 0x24]).d(1 << 18); // je +7; or dword [rsp], AC
    a.b(&[0x9d]); // popfq
    for r in (0u8..16).filter(|&r| r != 4 && r != 6).chain([6]) {
        load_rsi(&mut a, r, D_REGS + 8 * u32::from(r));
    }
    abs(&mut a, &[0xff], 5, JUMP); // jmp far [jump]
    let after = a.here();
    a.call(recorder);
    abs(&mut a, &[0x48, 0x81], 0, CUR_DATA).d(BLOCK); // add qword [cur_data], BLOCK
    abs(&mut a, &[0xff], 1, LEFT); // dec dword [left]
    let rel = next.wrapping_sub(a.here() + 6);
    a.b(&[0x0f, 0x85]).d(rel); // jnz next
    a.jmp(output);
    (a, after)
}

/// Where the instruction sits in its stub (after the test LGDT).
pub fn insn_offset(mode: CodeMode) -> u32 {
    match mode {
        CodeMode::Bits64 | CodeMode::Compat32 => 8,
        CodeMode::Compat16 => 10,
    }
}

/// One scenario's stub at `at`: the test LGDT, the instruction (`insn`,
/// already placed), RAX (and R8) saved, GDTR and IDTR saved; in
/// compatibility mode the runtime GDTR and IDTR back and a far jump to
/// `after` in 64-bit mode, in 64-bit mode a near one.
fn stub(a: &mut Asm, mode: CodeMode, insn: &[u8], after: u32) {
    match mode {
        CodeMode::Bits64 => {
            dt64(a, 2, SCRATCH).b(insn);
            store_rax(a, CUR_RAX);
            abs(a, &[0x4c, 0x89], 0, CUR_R8); // mov [cur_r8], r8
            dt64(a, 0, SAVED_GDTR);
            dt64(a, 1, SAVED_IDTR).jmp(after);
        }
        CodeMode::Compat32 | CodeMode::Compat16 => {
            let d16 = mode == CodeMode::Compat16;
            dt_compat(a, 2, SCRATCH, d16).b(insn);
            // mov ss:[cur_rax], eax
            a.b(if d16 {
                &[0x36, 0x66, 0x67, 0xa3]
            } else {
                &[0x36, 0xa3]
            })
            .d(CUR_RAX);
            dt_compat(a, 0, SAVED_GDTR, d16);
            dt_compat(a, 1, SAVED_IDTR, d16);
            dt_compat(a, 2, RT_GDTR, d16);
            dt_compat(a, 3, RT_IDTR, d16);
            if d16 {
                a.b(&[0x66]);
            }
            a.b(&[0xea]).d(after).b(&[0x08, 0x00]); // jmp far 0x08:after
        }
    }
}

/// The 32-bit entry at `LOAD + 32`: stack, GDT, CR4.PAE (SMEP, SMAP),
/// CR3, EFER.LME and NXE, CR0.PG and WP, far jump to [`ENTRY64`].
fn entry32(paging: LongPaging) -> Asm {
    let mut e = Asm::new(LOAD + 32);
    e.b(&[0xfa]).mov_r_imm(4, STACK_TOP);
    e.b(&[0x0f, 0x01, 0x15]).d(RT_GDTR); // lgdt [rt_gdtr]
    e.b(&[0x0f, 0x20, 0xe0, 0x0d])
        .d(cr4(paging))
        .b(&[0x0f, 0x22, 0xe0]);
    e.mov_r_imm(0, PML4).b(&[0x0f, 0x22, 0xd8]); // mov cr3, eax
    // mov ecx, IA32_EFER; rdmsr; or eax, LME | NXE; wrmsr
    e.mov_r_imm(1, 0xc000_0080)
        .b(&[0x0f, 0x32, 0x0d])
        .d(0x900)
        .b(&[0x0f, 0x30]);
    e.b(&[0x0f, 0x20, 0xc0, 0x0d])
        .d(0x8001_0001)
        .b(&[0x0f, 0x22, 0xc0]);
    e.b(&[0xea]).d(ENTRY64).b(&[0x08, 0x00]); // jmp far 0x08:entry64
    e
}

/// The fixed part: GDT, GDTR/IDTR images, page tables, IDT.
fn tables(img: &mut [u8]) {
    for (sel, d) in [(0x08, CODE64), (0x10, DATA), (SEL_CODE32, CODE32)] {
        put(img, GDT + u32::from(sel), &d.to_le_bytes());
    }
    for (at, limit, base) in [(RT_GDTR, GDT_LIMIT, GDT), (RT_IDTR, IDT_LIMIT, IDT)] {
        let mut dtr = limit.to_le_bytes().to_vec();
        dtr.extend_from_slice(&u64::from(base).to_le_bytes());
        put(img, at, &dtr);
    }
    for k in 0..512u32 {
        put(img, PT0 + 8 * k, &pte(k << 12).to_le_bytes());
    }
    for k in 1..512u32 {
        put(img, PD0 + 8 * k, &pde(k).to_le_bytes());
    }
    for (at, e) in page_table_entries() {
        put(img, at, &e.to_le_bytes());
    }
}

/// The whole image, and each scenario's instruction address (its RIP in
/// 64-bit and 32-bit code; in 16-bit code CS.base is the stub's address
/// and IP is [`insn_offset`]). One image runs one [`LongPaging`]: mixed
/// scenarios are refused.
pub fn build(scenarios: &[LongScenario]) -> Result<(Vec<u8>, Vec<u32>), super::super::DiffError> {
    let paging = scenarios.first().map_or(LongPaging::Plain, |s| s.paging);
    if let Some(index) = scenarios.iter().position(|s| s.paging != paging) {
        return Err(super::super::DiffError::MixedPaging { index });
    }
    let mut img = vec![0u8; (SCENARIOS - LOAD) as usize];
    tables(&mut img);
    let runner_len = runner(SCENARIOS, 0, 0).0.bytes.len() as u32;
    let output = SCENARIOS + runner_len;
    let mut o = Asm::new(output);
    // mov dx, 0xf4; xor eax, eax; out dx, eax; hlt; jmp $-1
    o.b(&[0x66, 0xba, 0xf4, 0x00, 0x31, 0xc0, 0xef, 0xf4, 0xeb, 0xfd]);
    let first = if scenarios.is_empty() {
        output
    } else {
        SCENARIOS
    };
    let (t, stubs, recorder, cont) = text(first);
    put(&mut img, TEXT, &t.bytes);
    put(
        &mut img,
        ENTRY_JUMP,
        &(u64::from(cont) | 0x08 << 32).to_le_bytes(),
    );
    for (v, h) in stubs.iter().enumerate() {
        // 64-bit interrupt gate, selector 0x08, DPL 0, present, IST 0.
        let gate = u64::from(h & 0xffff) | 0x08 << 16 | 0x8e00u64 << 32 | u64::from(h >> 16) << 48;
        put(&mut img, IDT + 16 * v as u32, &gate.to_le_bytes());
    }
    let (run, after) = runner(SCENARIOS, recorder, output);
    let mut a = Asm::new(o.here());
    let mut at = Vec::new();
    let mut stub_at = Vec::new();
    for s in scenarios {
        let start = a.here();
        stub_at.push(start);
        let rip = start + insn_offset(s.mode);
        let insn = s.insn_at(u64::from(rip));
        stub(&mut a, s.mode, &insn, after);
        at.push(rip);
    }
    while !a.here().is_multiple_of(8) {
        a.b(&[0xcc]);
    }
    let blocks = a.here();
    for (i, s) in scenarios.iter().enumerate() {
        a.b(&data(i, s, stub_at[i]));
    }
    img.extend_from_slice(&run.bytes);
    img.extend_from_slice(&o.bytes);
    img.extend_from_slice(&a.bytes);
    put(&mut img, RESUME, &u64::from(after).to_le_bytes());
    put(&mut img, CUR_DATA, &u64::from(blocks).to_le_bytes());
    put(&mut img, LEFT, &(scenarios.len() as u32).to_le_bytes());
    put(&mut img, LOAD + 32, &entry32(paging).bytes);
    super::super::image::multiboot_header(&mut img, LOAD + 32);
    Ok((img, at))
}
