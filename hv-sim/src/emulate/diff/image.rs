//! The guest that runs the scenarios on a real (emulated) CPU: a flat
//! multiboot image (the a.out kludge, so QEMU's `-kernel` loads it at
//! [`LOAD`] and enters it in 32-bit protected mode, paging off, CPL 0).
//!
//! It is machine code hv-sim writes byte by byte (`Asm`); the encodings
//! are few and each is checked by decoding it back with iced-x86 in the
//! tests below. Layout (all inside the image):
//!
//! | address | what |
//! |---|---|
//! | [`LOAD`] | multiboot header, entry |
//! | [`GDT`] | the GDT: null, 0x08 flat code, 0x10 flat data, scenario slots 0x18–0x78, the runtime TSS ([`TSS_SEL`]), the scenario's code and stack ([`CODE_SEL`], [`STACK_SEL`]); the TSS itself (SS0:ESP0) |
//! | [`VARS`] | the GDTR/IDTR images, the current record, vector, error code, EAX, resume address, a scratch pseudo-descriptor |
//! | [`IDT`] | 32 interrupt gates to the stubs, [`BACK`]'s (DPL 3) |
//! | `TEXT` | the stubs, the common handler, the recorder, the output code |
//! | [`WIN`] | the data window the operands point into |
//! | [`PD`], [`PT`] | 32-bit paging (SDM vol. 3A 4.3): the first 4 MiB through [`PT`] (its directory entry user, so the window's entry, set by each scenario, decides; the other 4 KiB pages supervisor), the rest identity in 4 MiB pages; CR0.WP set; code read-only ([`pte`], [`pde`]) |
//! | `SCENARIOS` | the runner (one loop for all scenarios), each instruction's stub (CPL 0–2), one data block per scenario; from the next 4 MiB boundary, user pages: the CPL 3 stubs |
//!
//! Records go to [`RESULTS`] (outside the image); then `isa-debug-exit`.
//! The guest's RAM is a file (`memory-backend-file`, shared), so the host
//! reads the records from it once QEMU has exited (a byte at a time
//! through `isa-debugcon` cost a system call per byte: 29 s of 40 for
//! 100,000 scenarios).

use super::{DiffError, Paging, RECORD, Scenario, desc};

/// Where the image is loaded.
pub const LOAD: u32 = 0x10_0000;
/// The GDT.
pub const GDT: u32 = LOAD + 0x1000;
/// Variables.
pub const VARS: u32 = LOAD + 0x1100;
const RT_GDTR: u32 = VARS;
const RT_IDTR: u32 = VARS + 8;
const CUR_REC: u32 = VARS + 16;
const CUR_VEC: u32 = VARS + 20;
const CUR_ERR: u32 = VARS + 24;
const CUR_EAX: u32 = VARS + 28;
const RESUME: u32 = VARS + 32;
const CUR_CR2: u32 = VARS + 36;
const CUR_DATA: u32 = VARS + 40;
const LEFT: u32 = VARS + 44;
/// SGDT's answer, taken before anything restores the runtime GDTR (a
/// 16-bit stub restores it itself: its far jump back reads the GDT).
const SAVED_GDTR: u32 = VARS + 64;
/// The EIP in the last exception's frame.
const CUR_EIP: u32 = VARS + 72;
/// Where a scenario without [`super::Edges::xd_fetch`] writes its code
/// page's entry's high half (nowhere that matters).
const NO_XD: u32 = VARS + 76;
/// The runtime TSS: SS0:ESP0 for exceptions from rings 1–3.
const RT_TSS: u32 = LOAD + 0x1200;
/// The runtime TSS's selector (the runner loads TR with it before each
/// scenario).
pub const TSS_SEL: u16 = 0x88;
/// The scenario's code segment (ring N, 32- or 16-bit), written before
/// each scenario.
pub const CODE_SEL: u16 = 0x90;
/// The scenario's ring-N stack segment.
pub const STACK_SEL: u16 = 0x98;
/// The least test GDT limit that covers the runtime entries.
pub const RUNTIME_GDT_END: u16 = 0x9f;
/// The vector a stub at CPL > 0 returns to ring 0 through (a DPL 3 gate).
pub const BACK: u8 = 0x20;
/// The test GDTR image each scenario loads before its instruction.
pub const SCRATCH: u32 = VARS + 48;
/// The IDT.
pub const IDT: u32 = LOAD + 0x2000;
const TEXT: u32 = LOAD + 0x3000;
/// The data window (a page; scenarios write its first 64 bytes).
pub const WIN: u32 = LOAD + 0x4000;
/// The page directory.
pub const PD: u32 = LOAD + 0x5000;
/// The page table of the first 4 MiB.
pub const PT: u32 = LOAD + 0x6000;
/// PAE paging's page directory (its PDPT is at [`PD`], its page table of
/// the first 2 MiB at [`PT`]).
pub const PAE_PD: u32 = LOAD + 0x7000;

/// The window's page-table entry: 4 bytes (32-bit paging) or 8 (PAE);
/// with paging off, where 32-bit paging's would be (unused).
pub const fn win_pte(paging: Paging) -> u32 {
    match paging {
        Paging::Bits32 | Paging::Off => PT + (WIN >> 12) * 4,
        Paging::Pae => PT + (WIN >> 12) * 8,
    }
}
/// The window's entry while no scenario runs: present, read/write.
pub const WIN_PTE_RW: u32 = WIN | 3;
/// How many 4 MiB the paging maps.
pub const MAPPED_4M: u32 = 64;
const SCENARIOS: u32 = LOAD + 0x8000;
/// Where the records go (past the image: the guest has 256 MiB).
pub const RESULTS: u32 = 0x800_0000;
const STACK_TOP: u32 = 0x7_0000;
/// The IDT's limit (32 exception gates and [`BACK`]).
pub const IDT_LIMIT: u16 = 33 * 8 - 1;
/// The runtime GDT's limit.
pub const GDT_LIMIT: u16 = 0xff;

/// The linear addresses below this map the window's page ([`pte`]).
pub const LOW_ALIAS: u32 = 0x1_0000;

/// The first 4 MiB's page-table entry for `page` (its address): present,
/// identity, writable only where the guest writes (below [`LOAD`]: the
/// stack; the GDT and variables, the window, the page tables), read-only
/// elsewhere: the code, the IDT. With CR0.WP, a store that QEMU lets
/// through an unchecked segment faults there instead of rewriting the
/// code of a later scenario.
///
/// The first 64 KiB are read-only aliases of the window's page: where
/// QEMU, not checking a null segment, puts a 16-bit address (base 0), so
/// that it reads memory the harness holds (the window, or the zeros past
/// it, which nothing writes: a store through an alias faults) instead of
/// RAM whose contents the harness can't know.
pub fn pte(page: u32) -> u32 {
    if page < LOW_ALIAS {
        return WIN | 1;
    }
    let writable = page < LOAD || [GDT, WIN, PD, PT, PAE_PD].contains(&(page & !0xfff));
    page & !0xfff | 1 | u32::from(writable) << 1
}

/// The page-directory entry `k` (1 ≤ k < [`MAPPED_4M`]; PAE: 2 MiB
/// pages, 1 ≤ k < 2 × [`MAPPED_4M`]): a large page, identity, writable
/// only from [`RESULTS`] on (the records), user from `user_from` (4 MiB
/// aligned: the ring-3 stubs) up to [`RESULTS`].
pub fn pde(paging: Paging, k: u32, user_from: u32) -> u32 {
    let shift = match paging {
        Paging::Bits32 | Paging::Off => 22,
        Paging::Pae => 21,
    };
    let at = k << shift;
    at | 0x81 | u32::from(at >= RESULTS) << 1 | u32::from(at >= user_from && at < RESULTS) << 2
}

/// The scenario's code segment descriptor (at [`CODE_SEL`]), its
/// instruction at linear `at`: flat 32-bit code, or 16-bit code based so
/// that the instruction sits at its offset; DPL the scenario's CPL.
/// A conforming one ([`super::Edges::conforming`]) has its own DPL.
pub fn code_descriptor(s: &Scenario, at: u32) -> u64 {
    let access = match s.edges.conforming {
        Some(dpl) => 0x9f | dpl << 5,
        None => 0x9b | s.cpl << 5,
    };
    match s.code16 {
        Some(ip) => desc(at.wrapping_sub(u32::from(ip)), s.cs_limit, access, 0),
        None => desc(0, 0xf_ffff, access, 0xc),
    }
}

/// The scenario's stack segment descriptor (at [`STACK_SEL`]): flat,
/// DPL the scenario's CPL, or [`super::Edges::stack`].
pub fn stack_descriptor(s: &Scenario) -> u64 {
    s.edges
        .stack
        .unwrap_or_else(|| desc(0, 0xf_ffff, 0x93 | s.cpl << 5, 0xc))
}

/// The ESP the runner's IRET gives an outer ring: the scenario's
/// (`regs[4]`: 0, which nothing uses, unless an operand goes through
/// ESP; a CPL 0 scenario keeps the runner's).
pub fn ring_esp(s: &Scenario) -> u32 {
    s.regs[4]
}

/// The runtime TSS's descriptor (busy once TR holds it).
pub fn tss_descriptor(busy: bool) -> u64 {
    desc(RT_TSS, 0x67, if busy { 0x8b } else { 0x89 }, 0)
}

/// The page whose PAE entry is execute-disable during `s` (its
/// instruction at linear `at`): under [`super::Edges::xd_fetch`], the
/// page of the instruction's last byte (the first page's too unless the
/// instruction crosses into the next), where [`PT`] maps it (below 2 MiB:
/// the stubs of CPL 0–2). SDM vol. 3A 4.6: an instruction fetch from it
/// is a #PF with I/D set.
pub fn xd_page(s: &Scenario, at: u32) -> Option<u32> {
    let page = at.wrapping_add(s.insn.len() as u32 - 1) & !0xfff;
    (s.edges.xd_fetch && s.paging == Paging::Pae && (LOAD..0x20_0000).contains(&page))
        .then_some(page)
}

/// Where the runner's IRET enters the scenario: (CS, EIP). CPL 0 with
/// 32-bit code keeps the runtime's 0x08 (within every test GDT limit).
pub fn entry_point(s: &Scenario, at: u32) -> (u16, u32) {
    match s.code16 {
        Some(ip) => (CODE_SEL | u16::from(s.cpl), u32::from(ip)),
        None if s.cpl == 0 && s.edges.conforming.is_none() => (0x08, at),
        None => (CODE_SEL | u16::from(s.cpl), at),
    }
}

/// A byte buffer at a known load address.
pub(crate) struct Asm {
    pub(crate) bytes: Vec<u8>,
    base: u32,
}

impl Asm {
    pub(crate) fn new(base: u32) -> Asm {
        Asm {
            bytes: Vec::new(),
            base,
        }
    }
    pub(crate) fn here(&self) -> u32 {
        self.base + self.bytes.len() as u32
    }
    pub(crate) fn b(&mut self, b: &[u8]) -> &mut Self {
        self.bytes.extend_from_slice(b);
        self
    }
    pub(crate) fn d(&mut self, v: u32) -> &mut Self {
        self.b(&v.to_le_bytes())
    }
    /// `mov r32, imm32` (r: 0 eax … 7 edi).
    pub(crate) fn mov_r_imm(&mut self, r: u8, v: u32) -> &mut Self {
        self.b(&[0xb8 + r]).d(v)
    }
    /// `mov dword ss:[abs], imm32`.
    fn store_imm(&mut self, abs: u32, v: u32) -> &mut Self {
        self.b(&[0x36, 0xc7, 0x05]).d(abs).d(v)
    }
    /// `mov ss:[abs], eax`.
    fn store_eax(&mut self, abs: u32) -> &mut Self {
        self.b(&[0x36, 0xa3]).d(abs)
    }
    /// `mov eax, ss:[abs]`.
    fn load_eax(&mut self, abs: u32) -> &mut Self {
        self.b(&[0x36, 0xa1]).d(abs)
    }
    /// `mov r32, ss:[esi+disp32]`.
    fn load_esi(&mut self, r: u8, disp: u32) -> &mut Self {
        self.b(&[0x36, 0x8b, 0x86 | r << 3]).d(disp)
    }
    /// `mov ss:[edi+disp32], eax` (or `ax` with `word`).
    fn store_edi(&mut self, disp: u32, word: bool) -> &mut Self {
        if word {
            self.b(&[0x36, 0x66, 0x89, 0x87]).d(disp)
        } else {
            self.b(&[0x36, 0x89, 0x87]).d(disp)
        }
    }
    /// `mov ax, sel` then `mov sreg, ax` (sreg: 0 ES, 2 SS, 3 DS, 4 FS, 5 GS).
    pub(crate) fn load_sreg(&mut self, sreg: u8, sel: u16) -> &mut Self {
        self.b(&[0x66, 0xb8])
            .b(&sel.to_le_bytes())
            .b(&[0x8e, 0xc0 | sreg << 3])
    }
    /// `lgdt ss:[abs]` (reg 2) / `lidt` (3).
    fn load_dt(&mut self, reg: u8, abs: u32) -> &mut Self {
        self.b(&[0x36, 0x0f, 0x01, 0x05 | reg << 3]).d(abs)
    }
    /// `mov eax, cr3; mov cr3, eax` (flushes the TLB).
    pub(crate) fn reload_cr3(&mut self) -> &mut Self {
        self.b(&[0x0f, 0x20, 0xd8, 0x0f, 0x22, 0xd8])
    }
    /// `jmp rel32` to `to`.
    pub(crate) fn jmp(&mut self, to: u32) -> &mut Self {
        let rel = to.wrapping_sub(self.here() + 5);
        self.b(&[0xe9]).d(rel)
    }
    /// `call rel32` to `to`.
    pub(crate) fn call(&mut self, to: u32) -> &mut Self {
        let rel = to.wrapping_sub(self.here() + 5);
        self.b(&[0xe8]).d(rel)
    }
}

/// The stubs, the common handler, the recorder and [`BACK`]'s handler,
/// at [`TEXT`]: returns the code, the stubs' addresses, the recorder's
/// and [`BACK`]'s handler's addresses.
fn text(paging: Paging) -> (Asm, Vec<u32>, u32, u32) {
    let win_pte = win_pte(paging);
    let mut a = Asm::new(TEXT);
    // Common handler: save EAX, pop vector and error code, reset the
    // stack, resume at the runner's recorder call.
    let common = TEXT + 32 * 16;
    let mut stubs = Vec::new();
    for v in 0..32u8 {
        let start = a.here();
        stubs.push(start);
        a.store_eax(CUR_EAX);
        if !matches!(v, 8 | 10..=14 | 17) {
            a.b(&[0x6a, 0x00]); // push 0
        }
        a.b(&[0x6a, v]); // push v
        a.jmp(common);
        while a.here() < start + 16 {
            a.b(&[0xcc]);
        }
    }
    debug_assert_eq!(a.here(), common);
    a.b(&[0x58]).store_eax(CUR_VEC); // pop eax
    a.b(&[0x58]).store_eax(CUR_ERR);
    a.b(&[0x8b, 0x04, 0x24]).store_eax(CUR_EIP); // mov eax, [esp]
    a.b(&[0x0f, 0x20, 0xd0]).store_eax(CUR_CR2); // mov eax, cr2
    a.mov_r_imm(4, STACK_TOP);
    a.b(&[0x36, 0xff, 0x25]).d(RESUME); // jmp ss:[resume]
    // The recorder.
    let rec = a.here();
    a.b(&[0x36, 0x8b, 0x3d]).d(CUR_REC); // mov edi, ss:[cur_rec]
    a.load_eax(SAVED_GDTR).store_edi(12, false);
    a.load_eax(SAVED_GDTR + 4).store_edi(16, false);
    a.b(&[0x36, 0x0f, 0x01, 0x8f]).d(20); // sidt ss:[edi+20]
    a.b(&[0x66, 0x0f, 0x00, 0xc8]).store_edi(28, true); // str ax
    a.b(&[0x66, 0x0f, 0x00, 0xc0]).store_edi(30, true); // sldt ax
    a.load_dt(2, RT_GDTR).load_dt(3, RT_IDTR);
    for s in [0, 3, 4, 5] {
        a.load_sreg(s, 0x10);
    }
    for (abs, off) in [
        (CUR_VEC, 0),
        (CUR_ERR, 4),
        (CUR_EAX, 8),
        (CUR_CR2, 204),
        (CUR_EIP, 216),
    ] {
        a.load_eax(abs).store_edi(off, false);
    }
    if paging == Paging::Off {
        // No page-table entry: the record's is 0.
        a.b(&[0x31, 0xc0])
            .store_edi(208, false)
            .store_edi(212, false); // xor eax, eax
    } else {
        a.load_eax(win_pte).store_edi(208, false);
        // The window present and writable again before it is read.
        a.store_imm(win_pte, WIN_PTE_RW);
        if paging == Paging::Pae {
            a.load_eax(win_pte + 4).store_edi(212, false);
            a.store_imm(win_pte + 4, 0);
            // The code page executable again (mov esi, ss:[cur_data];
            // mov eax, ss:[esi+xd]; mov dword ss:[eax], 0).
            a.b(&[0x36, 0x8b, 0x35]).d(CUR_DATA);
            a.load_esi(0, 104 + 64 + D_XD);
            a.b(&[0x36, 0xc7, 0x00]).d(0);
        }
        a.reload_cr3();
    }
    for k in 0..16 {
        a.load_eax(WIN + 4 * k).store_edi(32 + 4 * k, false);
    }
    for k in 0..26 {
        a.load_eax(GDT + 0x18 + 4 * k).store_edi(96 + 4 * k, false);
    }
    a.b(&[0xc3]); // ret
    // BACK: a stub at CPL > 0 is done; save EAX, no exception.
    let back = a.here();
    a.store_eax(CUR_EAX).mov_r_imm(4, STACK_TOP);
    a.b(&[0x36, 0xff, 0x25]).d(RESUME); // jmp ss:[resume]
    (a, stubs, rec, back)
}

/// Bytes of one scenario's data block (see [`runner`]).
const DATA: u32 = 276;
/// Offsets in a data block: GDT slots (104 bytes) and window (64) first,
/// for `rep movsd`; then, relative to where those leave ESI: the window's
/// entry, the test GDTR image (8), ES/DS/FS/GS (4 words), the IRET frame
/// (EIP, CS, EFLAGS, ESP, SS), EAX…EDI (8 dwords), the record's address,
/// the entry's high half, CR4.UMIP, the code and stack descriptors, the
/// address and value of the code page's entry's high half ([`xd_page`]).
const D_PTE: u32 = 0;
const D_GDTR: u32 = 4;
const D_SELS: u32 = 12;
const D_FRAME: u32 = 20;
const D_REGS: u32 = 40;
const D_REC: u32 = 72;
const D_PTE_HIGH: u32 = 76;
const D_CR4: u32 = 80;
const D_CSD: u32 = 84;
const D_SSD: u32 = 92;
const D_XD: u32 = 100;
const D_XD_HIGH: u32 = 104;

/// One scenario's data block (its instruction at `at`).
fn data(i: usize, s: &Scenario, at: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(DATA as usize);
    for w in s.gdt_slots {
        v.extend_from_slice(&w.to_le_bytes());
    }
    v.extend_from_slice(&s.window);
    v.extend_from_slice(&(s.win_pte as u32).to_le_bytes());
    let g = s.test_gdtr;
    v.extend_from_slice(&g.0.to_le_bytes());
    v.extend_from_slice(&g.1.to_le_bytes());
    v.extend_from_slice(&[0, 0]);
    for sel in s.sels {
        v.extend_from_slice(&sel.to_le_bytes());
    }
    let (cs, eip) = entry_point(s, at);
    let ss = if s.cpl == 0 {
        0x10
    } else {
        STACK_SEL | u16::from(s.cpl)
    };
    let eflags = 2 | u32::from(s.edges.tf) << 8 | u32::from(s.ac) << 18;
    for w in [eip, u32::from(cs), eflags, ring_esp(s), u32::from(ss)] {
        v.extend_from_slice(&w.to_le_bytes());
    }
    for r in s.regs {
        v.extend_from_slice(&r.to_le_bytes());
    }
    v.extend_from_slice(&(RESULTS + (i * RECORD) as u32).to_le_bytes());
    v.extend_from_slice(&((s.win_pte >> 32) as u32).to_le_bytes());
    v.extend_from_slice(&(u32::from(s.umip) << 11).to_le_bytes());
    v.extend_from_slice(&code_descriptor(s, at).to_le_bytes());
    v.extend_from_slice(&stack_descriptor(s).to_le_bytes());
    let xd = xd_page(s, at).map(|p| (PT + (p >> 12) * 8 + 4, 1 << 31));
    let (xd_at, xd_high) = xd.unwrap_or((NO_XD, 0));
    v.extend_from_slice(&xd_at.to_le_bytes());
    v.extend_from_slice(&(xd_high as u32).to_le_bytes());
    debug_assert_eq!(v.len(), DATA as usize);
    v
}

/// The loop that runs every scenario from its data block (one piece of
/// code, translated once by QEMU; only each instruction's stub is new
/// code): set up, load the runtime TSS into TR (exceptions from rings 1–3
/// take SS0:ESP0 from it), the test GDTR, IRET to the stub at the
/// scenario's CPL and code segment, record, next. A stub at CPL 0 comes
/// back by a jump (32-bit code) or, having restored the runtime GDTR, a
/// far jump (16-bit code); above CPL 0 by `int` [`BACK`]; an exception
/// by its gate. Returns the code, `after` (SGDT into [`SAVED_GDTR`], then
/// `after_saved`) and `after_saved`'s address.
fn runner(paging: Paging, at: u32, recorder: u32, output: u32) -> (Asm, u32, u32) {
    let mut a = Asm::new(at);
    let next = a.here();
    a.mov_r_imm(4, STACK_TOP);
    a.b(&[0x36, 0x8b, 0x35]).d(CUR_DATA); // mov esi, ss:[cur_data]
    a.b(&[0x36, 0x8b, 0x86]).d(104 + 64 + D_REC); // mov eax, ss:[esi+rec]
    a.store_eax(CUR_REC)
        .store_imm(CUR_VEC, u32::MAX)
        .store_imm(CUR_ERR, 0)
        .store_imm(CUR_CR2, 0);
    a.b(&[0x31, 0xc0, 0x0f, 0x00, 0xd0]); // xor eax, eax; lldt ax
    // TR: the runtime TSS, made available again (mov byte [type], 0x89).
    a.b(&[0x36, 0xc6, 0x05])
        .d(GDT + u32::from(TSS_SEL) + 5)
        .b(&[0x89]);
    a.b(&[0x66, 0xb8])
        .b(&TSS_SEL.to_le_bytes())
        .b(&[0x0f, 0x00, 0xd8]); // mov ax, TSS_SEL; ltr ax
    a.b(&[0x66, 0x0f, 0x00, 0xc8]); // str ax
    a.b(&[0x36, 0x8b, 0x3d]).d(CUR_REC); // mov edi, ss:[cur_rec]
    a.store_edi(200, true);
    a.b(&[0xfc]); // cld
    a.mov_r_imm(7, GDT + 0x18).mov_r_imm(1, 26).b(&[0xf3, 0xa5]); // rep movsd
    a.mov_r_imm(7, WIN).mov_r_imm(1, 16).b(&[0xf3, 0xa5]);
    let win_pte = win_pte(paging);
    if paging != Paging::Off {
        a.load_esi(0, D_PTE).store_eax(win_pte);
        if paging == Paging::Pae {
            a.load_esi(0, D_PTE_HIGH).store_eax(win_pte + 4);
            // The code page's XD: mov edx, ss:[esi+xd_high]; mov ss:[eax], edx.
            a.load_esi(0, D_XD).load_esi(2, D_XD_HIGH);
            a.b(&[0x36, 0x89, 0x10]);
        }
        a.reload_cr3();
    }
    a.load_esi(0, D_GDTR).store_eax(SCRATCH);
    a.load_esi(0, D_GDTR + 4).store_eax(SCRATCH + 4);
    for (d, sel) in [(D_CSD, CODE_SEL), (D_SSD, STACK_SEL)] {
        for h in [0, 4] {
            a.load_esi(0, d + h).store_eax(GDT + u32::from(sel) + h);
        }
    }
    // CR4.UMIP as the scenario says: mov eax, cr4; and eax, ~UMIP;
    // or eax, ss:[esi+cr4]; mov cr4, eax.
    a.b(&[0x0f, 0x20, 0xe0, 0x25]).d(!0x800);
    a.b(&[0x36, 0x0b, 0x86]).d(D_CR4).b(&[0x0f, 0x22, 0xe0]);
    for (k, sreg) in [0u8, 3, 4, 5].into_iter().enumerate() {
        a.b(&[0x36, 0x66, 0x8b, 0x86]).d(D_SELS + 2 * k as u32); // mov ax, ss:[esi+d]
        a.b(&[0x8e, 0xc0 | sreg << 3]);
    }
    // The IRET frame: push SS, ESP, EFLAGS, CS, EIP (push dword ss:[esi+d]).
    for k in (0..5).rev() {
        a.b(&[0x36, 0xff, 0xb6]).d(D_FRAME + 4 * k);
    }
    for r in [0u8, 1, 2, 3, 5, 7, 6] {
        a.load_esi(r, D_REGS + 4 * u32::from(r));
    }
    a.load_dt(2, SCRATCH);
    if paging == Paging::Off {
        // Paging off: a CPL 0, flat 32-bit scenario (CS 0x08, EFLAGS 2)
        // is entered by RET, not IRET (PVM stops at a protected-mode
        // IRET): cmp dword ss:[esp+4], 8; jne iret; cmp dword
        // ss:[esp+8], 2; jne iret; ret.
        a.b(&[0x36, 0x83, 0x7c, 0x24, 0x04, 0x08, 0x75, 0x09]);
        a.b(&[0x36, 0x83, 0x7c, 0x24, 0x08, 0x02, 0x75, 0x01, 0xc3]);
    }
    a.b(&[0xcf]); // iretd
    let after = a.here();
    a.b(&[0x36, 0x0f, 0x01, 0x05]).d(SAVED_GDTR); // sgdt ss:[saved]
    let after_saved = a.here();
    a.call(recorder);
    a.b(&[0x36, 0x81, 0x05]).d(CUR_DATA).d(DATA); // add dword ss:[cur_data], DATA
    a.b(&[0x36, 0xff, 0x0d]).d(LEFT); // dec dword ss:[left]
    let rel = next.wrapping_sub(a.here() + 6);
    a.b(&[0x0f, 0x85]).d(rel); // jnz next
    a.jmp(output);
    (a, after, after_saved)
}

/// A scenario's stub: its instruction, then the way back (see
/// [`runner`]); returns its address. A stub whose instruction crosses
/// offset 0xFFFF of its 16-bit code segment is kept within one page:
/// QEMU, which fetches past the limit ([`super::Departures`]), fetched
/// some such bytes wrapped to offset 0 where a page boundary intervened
/// (scenario 16,677 of the rings run), and only the SDM's answer there
/// is compared.
fn stub(a: &mut Asm, s: &Scenario, after: u32, after_saved: u32) -> u32 {
    let tail = match (s.cpl, s.code16) {
        (0, None) => 11,
        (0, Some(_)) => 36,
        _ => 2,
    };
    let len = s.insn.len() as u32 + tail;
    let straddles = s
        .code16
        .is_some_and(|ip| u32::from(ip) + s.insn.len() as u32 > 0x1_0000);
    if straddles && (a.here() & 0xfff) + len > 0x1000 {
        while a.here() & 0xfff != 0 {
            a.b(&[0xcc]);
        }
    }
    let at = a.here();
    a.b(&s.insn);
    match (s.cpl, s.code16) {
        (0, None) => {
            a.store_eax(CUR_EAX).jmp(after);
        }
        (0, Some(_)) => {
            // 16-bit code, 0x66/0x67 for EAX and 32-bit addresses: mov
            // ss:[cur_eax], eax; sgdt ss:[saved]; lgdt ss:[rt_gdtr]; jmp
            // far 0x08:after_saved.
            a.b(&[0x66, 0x67, 0x36, 0xa3]).d(CUR_EAX);
            a.b(&[0x66, 0x67, 0x36, 0x0f, 0x01, 0x05]).d(SAVED_GDTR);
            a.b(&[0x66, 0x67, 0x36, 0x0f, 0x01, 0x15]).d(RT_GDTR);
            a.b(&[0x66, 0xea]).d(after_saved).b(&[0x08, 0x00]);
        }
        _ => {
            a.b(&[0xcd, BACK]);
        }
    }
    debug_assert_eq!(a.here(), at + len);
    at
}

/// Copy `b` into the image at guest-physical `at`.
pub(crate) fn put(img: &mut [u8], at: u32, b: &[u8]) {
    let o = (at - LOAD) as usize;
    img[o..o + b.len()].copy_from_slice(b);
}

/// The identity-mapped page tables for `paging` (32-bit or PAE), user
/// pages from `user_from` on.
fn page_tables(img: &mut [u8], paging: Paging, user_from: u32) {
    match paging {
        Paging::Off => {}
        Paging::Bits32 => {
            for k in 0..1024u32 {
                put(img, PT + 4 * k, &pte(k << 12).to_le_bytes());
            }
            put(img, PD, &(PT | 7).to_le_bytes());
            for k in 1..MAPPED_4M {
                put(img, PD + 4 * k, &pde(paging, k, user_from).to_le_bytes());
            }
        }
        Paging::Pae => {
            // SDM vol. 3A 4.4: a PDPTE has P and the address only.
            put(img, PD, &u64::from(PAE_PD | 1).to_le_bytes());
            for k in 0..512u32 {
                put(img, PT + 8 * k, &u64::from(pte(k << 12)).to_le_bytes());
            }
            put(img, PAE_PD, &u64::from(PT | 7).to_le_bytes());
            for k in 1..2 * MAPPED_4M {
                put(
                    img,
                    PAE_PD + 8 * k,
                    &u64::from(pde(paging, k, user_from)).to_le_bytes(),
                );
            }
        }
    }
}

/// The entry (stack, GDT with a far jump, IDT, paging on) and the
/// multiboot header; it jumps to the first scenario, or to `output` if
/// there is none (`any` false).
fn entry(img: &mut [u8], paging: Paging, any: bool, output: u32) {
    // The entry: stack, our GDT (reloading CS by a far jump), IDT.
    let mut e = Asm::new(LOAD + 32);
    e.b(&[0xfa]).mov_r_imm(4, STACK_TOP).load_dt(2, RT_GDTR);
    let far = e.here() + 7;
    e.b(&[0xea]).d(far).b(&[0x08, 0x00]); // jmp 0x08:far
    for s in [0, 2, 3, 4, 5] {
        e.load_sreg(s, 0x10);
    }
    e.load_dt(3, RT_IDTR);
    if paging == Paging::Off {
        e.jmp(if any { SCENARIOS } else { output });
        put(img, LOAD + 32, &e.bytes);
        multiboot_header(img, LOAD + 32);
        return;
    }
    // Paging: CR3, CR4.PSE (32-bit) or CR4.PAE, SMEP and SMAP and
    // EFER.NXE (PAE), then CR0.PG and CR0.WP.
    e.mov_r_imm(0, PD).b(&[0x0f, 0x22, 0xd8]);
    let cr4 = match paging {
        Paging::Off => 0,
        Paging::Bits32 => 0x10,
        Paging::Pae => {
            // mov ecx, IA32_EFER; rdmsr; or eax, NXE; wrmsr
            e.mov_r_imm(1, 0xc000_0080)
                .b(&[0x0f, 0x32, 0x0d])
                .d(0x800)
                .b(&[0x0f, 0x30]);
            0x20 | 1 << 20 | 1 << 21
        }
    };
    e.b(&[0x0f, 0x20, 0xe0, 0x0d]).d(cr4).b(&[0x0f, 0x22, 0xe0]);
    e.b(&[0x0f, 0x20, 0xc0, 0x0d])
        .d(0x8001_0000)
        .b(&[0x0f, 0x22, 0xc0]);
    e.jmp(if any { SCENARIOS } else { output });
    put(img, LOAD + 32, &e.bytes);
    multiboot_header(img, LOAD + 32);
}

/// The multiboot header at [`LOAD`] (the a.out kludge: magic, flags bit
/// 16, checksum, header, load start, load end, bss end, `entry`), for an
/// image that ends where `img` does.
pub(crate) fn multiboot_header(img: &mut [u8], entry: u32) {
    let (magic, flags) = (0x1bad_b002u32, 0x0001_0000u32);
    let end = LOAD + img.len() as u32;
    let mut h = Vec::new();
    for v in [
        magic,
        flags,
        0u32.wrapping_sub(magic + flags),
        LOAD,
        LOAD,
        end,
        end,
        entry,
    ] {
        h.extend_from_slice(&v.to_le_bytes());
    }
    put(img, LOAD, &h);
}

/// The whole image, and each scenario's instruction address.
/// One image runs one paging mode: scenarios that mix them are refused
/// ([`DiffError::MixedPaging`]). The stubs of CPL 0–2 come first, then
/// the data blocks, then (from a 4 MiB boundary on: user pages) the
/// stubs of CPL 3.
pub fn build(scenarios: &[Scenario]) -> Result<(Vec<u8>, Vec<u32>), DiffError> {
    let paging = scenarios.first().map_or(Paging::Bits32, |s| s.paging);
    if let Some(index) = scenarios.iter().position(|s| s.paging != paging) {
        return Err(DiffError::MixedPaging { index });
    }
    let mut img = vec![0u8; (SCENARIOS - LOAD) as usize];
    // GDT: null, flat code, flat data, the runtime TSS.
    put(&mut img, GDT + 8, &0x00cf_9b00_0000_ffffu64.to_le_bytes());
    put(&mut img, GDT + 16, &0x00cf_9300_0000_ffffu64.to_le_bytes());
    let tss = tss_descriptor(false).to_le_bytes();
    put(&mut img, GDT + u32::from(TSS_SEL), &tss);
    put(&mut img, RT_TSS + 4, &STACK_TOP.to_le_bytes()); // ESP0
    put(&mut img, RT_TSS + 8, &0x10u32.to_le_bytes()); // SS0
    let mut dtr = GDT_LIMIT.to_le_bytes().to_vec();
    dtr.extend_from_slice(&GDT.to_le_bytes());
    put(&mut img, RT_GDTR, &dtr);
    let mut dtr = IDT_LIMIT.to_le_bytes().to_vec();
    dtr.extend_from_slice(&IDT.to_le_bytes());
    put(&mut img, RT_IDTR, &dtr);
    let (text, mut handlers, recorder, back) = text(paging);
    put(&mut img, TEXT, &text.bytes);
    handlers.push(back);
    for (v, h) in handlers.iter().enumerate() {
        // 32-bit interrupt gate, selector 0x08, present; DPL 0, BACK's 3.
        let dpl3 = if v == usize::from(BACK) { 0x6000 } else { 0 };
        let gate = u64::from(h & 0xffff)
            | 0x08 << 16
            | (0x8e00u64 | dpl3) << 32
            | u64::from(h >> 16) << 48;
        put(&mut img, IDT + 8 * v as u32, &gate.to_le_bytes());
    }
    // The runner, the output, each instruction's stub, the data blocks.
    let runner_len = runner(paging, SCENARIOS, recorder, 0).0.bytes.len() as u32;
    let output = SCENARIOS + runner_len;
    let mut o = Asm::new(output);
    o.b(&[0x66, 0xba, 0xf4, 0x00, 0x31, 0xc0, 0xef]) // mov dx, 0xf4; xor eax, eax; out dx, eax
        .b(&[0xf4, 0xeb, 0xfd]); // hlt; jmp $-1
    let (run, after, after_saved) = runner(paging, SCENARIOS, recorder, output);
    let mut a = Asm::new(o.here());
    // The stubs from a page of their own: an execute-disable stub page
    // ([`xd_page`]) never holds the runner.
    while a.here() & 0xfff != 0 {
        a.b(&[0xcc]);
    }
    let mut at = vec![0; scenarios.len()];
    for (i, s) in scenarios.iter().enumerate().filter(|(_, s)| s.cpl < 3) {
        at[i] = stub(&mut a, s, after, after_saved);
    }
    while !a.here().is_multiple_of(4) {
        a.b(&[0xcc]);
    }
    let data_end = a.here() + DATA * scenarios.len() as u32;
    let user_from = if scenarios.iter().any(|s| s.cpl == 3) {
        data_end.next_multiple_of(0x40_0000)
    } else {
        RESULTS
    };
    let mut u = Asm::new(user_from);
    for (i, s) in scenarios.iter().enumerate().filter(|(_, s)| s.cpl == 3) {
        at[i] = stub(&mut u, s, after, after_saved);
    }
    for (i, s) in scenarios.iter().enumerate() {
        let d = data(i, s, at[i]);
        a.b(&d);
    }
    img.extend_from_slice(&run.bytes);
    img.extend_from_slice(&o.bytes);
    img.extend_from_slice(&a.bytes);
    if !u.bytes.is_empty() {
        img.resize((user_from - LOAD) as usize, 0);
        img.extend_from_slice(&u.bytes);
    }
    page_tables(&mut img, paging, user_from);
    put(&mut img, RESUME, &after.to_le_bytes());
    put(
        &mut img,
        CUR_DATA,
        &(data_end - DATA * scenarios.len() as u32).to_le_bytes(),
    );
    put(&mut img, LEFT, &(scenarios.len() as u32).to_le_bytes());
    entry(&mut img, paging, !scenarios.is_empty(), output);
    Ok((img, at))
}

#[cfg(test)]
mod tests;
