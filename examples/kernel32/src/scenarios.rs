//! The 32-bit differential scenarios (hv-sim's `emulate::diff`), run on
//! this kernel's CPU.
//!
//! hv-sim passes a blob as the first PVH module (`hvm_start_info`'s
//! module list; QEMU's `-initrd`). It names, by physical address, where
//! the scenario tables go (a GDT, an IDT, a 64-byte data window, the
//! instruction's stub, the records), a 256-byte GDT image, and the
//! scenarios. For each one the kernel writes the GDT image and the
//! scenario's GDT slots, the window and a stub (the instruction, then
//! `mov ss:[eax slot], eax; jmp after`), then (in assembly) loads that
//! GDT, CS 0x08 and 0x10 elsewhere, the scenario IDT (32 interrupt gates
//! to this kernel's vector stubs), LDTR null, TR (the blob's TSS
//! selector), ES/DS/FS/GS, the test GDTR, EFLAGS 2 and the general
//! registers, and jumps to the stub. An exception enters a vector stub
//! (vector, error code, CR2); either way SGDT, SIDT, STR and SLDT are
//! taken, the scenario GDT reloaded and the kernel's stack restored. The
//! kernel then reloads its own GDT, IDT, TR and LDTR through
//! `NativeOps` and writes the record in the layout hv-sim's differential
//! image uses (220 bytes: vector, error code, EAX, GDTR, IDTR, TR,
//! LDTR, window, GDT slots 0x18..0x80, TR before, CR2, page-table entry
//! (0: paging is off), the EIP of the exception's frame).
//!
//! Blob layout (little-endian): header of [`HEADER`] bytes: magic
//! [`MAGIC`], version [`VERSION`], count, entry size ([`ENTRY`]), GDT,
//! IDT, IDT limit, window, stub, records (addresses), TSS selector (a
//! word) and record size (a word: [`RECORD`]); at 48 the GDT image. Each entry: instruction length (1..=15), its bytes
//! (15), EAX..EDI (8 dwords), ES/DS/FS/GS (4 words), the test GDTR
//! (limit word, pad word, base dword), GDT slots 3..=15 (13 qwords), the
//! window (64 bytes).
//!
//! The blob is trusted: it is hv-sim's (`emulate::diff::kernel32`). The
//! kernel refuses a malformed one (magic, version, sizes, counts,
//! instruction lengths, a TSS selector outside the image's GDT, regions
//! that overlap each other, the first MiB, the kernel or the blob), but
//! each scenario is ring-0 code and descriptors of the blob's choosing,
//! and the regions are not checked against the memory map: a hostile
//! blob is not contained.

use core::arch::{asm, global_asm};

use pvops::{DescriptorOps, GdtEntry};
use pvops_native::NativeOps;

use crate::Tally;
use crate::checks::{GDT, IDT, LAYOUT, TSS, TSS_SEL, reload_segments};

/// The blob's magic.
pub const MAGIC: [u8; 8] = *b"PVK32SCN";
/// The blob's version.
pub const VERSION: u32 = 1;
/// Header bytes (48 of fields, the 256-byte GDT image).
pub const HEADER: usize = 48 + GDT_BYTES;
/// Bytes per scenario entry.
pub const ENTRY: usize = 232;
/// Bytes per record.
pub const RECORD: usize = 220;
/// The scenario GDT's size (its runtime limit is this less one).
const GDT_BYTES: usize = 256;
/// The most scenarios one blob may hold.
const MAX_COUNT: u32 = 1 << 20;
/// Stub bytes: the instruction (at most 15), `mov ss:[abs], eax` (6),
/// `jmp rel32` (5).
const STUB_BYTES: u32 = 32;

/// What the assembly runner reads and writes; field offsets are named
/// below for the assembly (a `repr(C)` layout of dwords and words).
#[repr(C)]
struct Ctx {
    saved_esp: u32,
    vector: u32,
    error: u32,
    eax: u32,
    cr2: u32,
    tr_before: u32,
    tr: u32,
    ldtr: u32,
    stub: u32,
    tss_sel: u32,
    sels: [u32; 4],
    regs: [u32; 8],
    rt_gdtr: [u16; 4],
    rt_idtr: [u16; 4],
    test_gdtr: [u16; 4],
    gdtr_after: [u16; 4],
    idtr_after: [u16; 4],
    eip: u32,
}

const C_SAVED_ESP: usize = 0;
const C_VECTOR: usize = 4;
const C_ERROR: usize = 8;
const C_EAX: usize = 12;
const C_CR2: usize = 16;
const C_TR_BEFORE: usize = 20;
const C_TR: usize = 24;
const C_LDTR: usize = 28;
const C_STUB: usize = 32;
const C_TSS_SEL: usize = 36;
const C_SELS: usize = 40;
const C_REGS: usize = 56;
const C_RT_GDTR: usize = 88;
const C_RT_IDTR: usize = 96;
const C_TEST_GDTR: usize = 104;
const C_GDTR_AFTER: usize = 112;
const C_IDTR_AFTER: usize = 120;
const C_EIP: usize = 128;
const _: () = {
    assert!(core::mem::offset_of!(Ctx, vector) == C_VECTOR);
    assert!(core::mem::offset_of!(Ctx, error) == C_ERROR);
    assert!(core::mem::offset_of!(Ctx, eax) == C_EAX);
    assert!(core::mem::offset_of!(Ctx, cr2) == C_CR2);
    assert!(core::mem::offset_of!(Ctx, tr_before) == C_TR_BEFORE);
    assert!(core::mem::offset_of!(Ctx, tr) == C_TR);
    assert!(core::mem::offset_of!(Ctx, ldtr) == C_LDTR);
    assert!(core::mem::offset_of!(Ctx, stub) == C_STUB);
    assert!(core::mem::offset_of!(Ctx, tss_sel) == C_TSS_SEL);
    assert!(core::mem::offset_of!(Ctx, sels) == C_SELS);
    assert!(core::mem::offset_of!(Ctx, regs) == C_REGS);
    assert!(core::mem::offset_of!(Ctx, rt_gdtr) == C_RT_GDTR);
    assert!(core::mem::offset_of!(Ctx, rt_idtr) == C_RT_IDTR);
    assert!(core::mem::offset_of!(Ctx, test_gdtr) == C_TEST_GDTR);
    assert!(core::mem::offset_of!(Ctx, gdtr_after) == C_GDTR_AFTER);
    assert!(core::mem::offset_of!(Ctx, idtr_after) == C_IDTR_AFTER);
    assert!(core::mem::offset_of!(Ctx, eip) == C_EIP);
    assert!(core::mem::size_of::<Ctx>() == 132);
};

static mut CTX: Ctx = Ctx {
    saved_esp: 0,
    vector: 0,
    error: 0,
    eax: 0,
    cr2: 0,
    tr_before: 0,
    tr: 0,
    ldtr: 0,
    stub: 0,
    tss_sel: 0,
    sels: [0; 4],
    regs: [0; 8],
    rt_gdtr: [0; 4],
    rt_idtr: [0; 4],
    test_gdtr: [0; 4],
    gdtr_after: [0; 4],
    idtr_after: [0; 4],
    eip: 0,
};

// The runner (`sc_run`, called with the C convention, no arguments),
// the way back (`sc_after`, where each stub jumps and every exception
// goes), and the 32 vector stubs (16 bytes apart from `sc_vectors`).
// After the scenario's DS is loaded every access goes through SS (flat,
// 0x10 of the scenario GDT). Nothing from `sc_run`'s segment loads to
// `sc_after`'s `lgdt` may fault but the scenario's own instruction: an
// exception there would be recorded as the instruction's.
global_asm!(
    ".pushsection .text.sc_run, \"ax\"",
    ".globl sc_run",
    "sc_run:",
    "push ebp",
    "push ebx",
    "push esi",
    "push edi",
    "mov [{ctx} + {saved_esp}], esp",
    "lgdt [{ctx} + {rt_gdtr}]",
    "push 0x08",
    "lea eax, [2f]",
    "push eax",
    "retf",
    "2:",
    "mov eax, 0x10",
    "mov ss, eax",
    "mov ds, eax",
    "mov es, eax",
    "mov fs, eax",
    "mov gs, eax",
    "lidt [{ctx} + {rt_idtr}]",
    "xor eax, eax",
    "lldt ax",
    "ltr word ptr [{ctx} + {tss_sel}]",
    "str ax",
    "movzx eax, ax",
    "mov [{ctx} + {tr_before}], eax",
    "mov dword ptr [{ctx} + {vector}], 0xffffffff",
    "mov dword ptr [{ctx} + {error}], 0",
    "mov dword ptr [{ctx} + {cr2}], 0",
    "mov dword ptr [{ctx} + {eip}], 0",
    "mov eax, [{ctx} + {sels}]",
    "mov es, eax",
    "mov eax, [{ctx} + {sels} + 8]",
    "mov fs, eax",
    "mov eax, [{ctx} + {sels} + 12]",
    "mov gs, eax",
    "mov eax, [{ctx} + {sels} + 4]",
    "mov ds, eax",
    "push 2",
    "popfd",
    "lgdt ss:[{ctx} + {test_gdtr}]",
    "mov eax, ss:[{ctx} + {regs}]",
    "mov ecx, ss:[{ctx} + {regs} + 4]",
    "mov edx, ss:[{ctx} + {regs} + 8]",
    "mov ebx, ss:[{ctx} + {regs} + 12]",
    "mov ebp, ss:[{ctx} + {regs} + 20]",
    "mov esi, ss:[{ctx} + {regs} + 24]",
    "mov edi, ss:[{ctx} + {regs} + 28]",
    "jmp dword ptr ss:[{ctx} + {stub}]",
    ".globl sc_after",
    "sc_after:",
    "sgdt ss:[{ctx} + {gdtr_after}]",
    "sidt ss:[{ctx} + {idtr_after}]",
    "str ax",
    "movzx eax, ax",
    "mov ss:[{ctx} + {tr}], eax",
    "sldt ax",
    "movzx eax, ax",
    "mov ss:[{ctx} + {ldtr}], eax",
    "lgdt ss:[{ctx} + {rt_gdtr}]",
    "mov eax, 0x10",
    "mov ss, eax",
    "mov ds, eax",
    "mov es, eax",
    "mov fs, eax",
    "mov gs, eax",
    "cld",
    "mov esp, [{ctx} + {saved_esp}]",
    "pop edi",
    "pop esi",
    "pop ebx",
    "pop ebp",
    "ret",
    "sc_common:",
    "pop eax",
    "mov ss:[{ctx} + {vector}], eax",
    "pop eax",
    "mov ss:[{ctx} + {error}], eax",
    "mov eax, cr2",
    "mov ss:[{ctx} + {cr2}], eax",
    "mov eax, ss:[esp]",
    "mov ss:[{ctx} + {eip}], eax",
    "jmp sc_after",
    ".balign 16, 0xcc",
    ".globl sc_vectors",
    "sc_vectors:",
    ".irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31",
    ".balign 16, 0xcc",
    "mov ss:[{ctx} + {eax}], eax",
    ".if (\\v == 8) || ((\\v >= 10) && (\\v <= 14)) || (\\v == 17)",
    ".else",
    "push 0",
    ".endif",
    "push \\v",
    "jmp sc_common",
    ".endr",
    ".popsection",
    ctx = sym CTX,
    saved_esp = const C_SAVED_ESP,
    vector = const C_VECTOR,
    error = const C_ERROR,
    eax = const C_EAX,
    cr2 = const C_CR2,
    tr_before = const C_TR_BEFORE,
    tr = const C_TR,
    ldtr = const C_LDTR,
    stub = const C_STUB,
    tss_sel = const C_TSS_SEL,
    sels = const C_SELS,
    regs = const C_REGS,
    rt_gdtr = const C_RT_GDTR,
    rt_idtr = const C_RT_IDTR,
    test_gdtr = const C_TEST_GDTR,
    gdtr_after = const C_GDTR_AFTER,
    idtr_after = const C_IDTR_AFTER,
    eip = const C_EIP,
);

unsafe extern "C" {
    fn sc_run();
    fn sc_after();
    fn sc_vectors();
}

/// `hvm_start_info` fields (Xen's `arch-x86/hvm/start_info.h`): the
/// module count and list address; a list entry's address and size.
const SI_NR_MODULES: usize = 12;
const SI_MODLIST: usize = 16;

/// The blob's header, checked.
struct Header {
    count: u32,
    gdt: u32,
    idt: u32,
    idt_limit: u16,
    window: u32,
    stub: u32,
    records: u32,
    tss_sel: u16,
    /// The record size the host expects.
    record: u32,
    /// Where the entries start, and the blob's GDT image.
    entries: u32,
    gdt_image: u32,
}

/// The first module of `start_info`: (address, size), if there is one
/// below 4 GiB.
///
/// # Safety
/// `start_info` is the loader's `hvm_start_info` (magic checked).
unsafe fn first_module(start_info: u32) -> Option<(u32, u32)> {
    let at = start_info as usize;
    // SAFETY: the loader's hvm_start_info (checked by its magic before
    // this is called); paging is off, so its fields are readable at their
    // physical addresses.
    let (n, list) = unsafe {
        (
            ((at + SI_NR_MODULES) as *const u32).read_unaligned(),
            ((at + SI_MODLIST) as *const u64).read_unaligned(),
        )
    };
    if n == 0 || list > u64::from(u32::MAX) - 16 {
        return None;
    }
    // SAFETY: the module list the loader wrote (an array of n entries of
    // paddr, size, cmdline, reserved: 4 qwords each).
    let (paddr, size) = unsafe {
        let e = list as usize as *const u64;
        (e.read_unaligned(), e.add(1).read_unaligned())
    };
    if paddr.checked_add(size)? > u64::from(u32::MAX) {
        return None;
    }
    Some((paddr as u32, size as u32))
}

/// The dword at physical `at`.
///
/// # Safety
/// `at..at+4` is RAM (here: inside the module, checked against its size
/// first).
unsafe fn rd32(at: u32) -> u32 {
    // SAFETY: per the contract; paging is off.
    unsafe { (at as usize as *const u32).read_unaligned() }
}

/// The kernel image's extent (linker.ld).
fn kernel_extent() -> (u32, u32) {
    unsafe extern "C" {
        static __kernel_start: u8;
        static __kernel_end: u8;
    }
    (
        (&raw const __kernel_start) as u32,
        (&raw const __kernel_end) as u32,
    )
}

/// Check the blob at `at` (`size` bytes): its magic, version, entry size,
/// count, and that no region it names overlaps another, the kernel, the
/// blob or the first MiB.
///
/// # Safety
/// `at..at+size` is the loader's module, in RAM.
unsafe fn parse(at: u32, size: u32) -> Result<Header, &'static str> {
    if (size as usize) < HEADER {
        return Err("blob shorter than its header");
    }
    // SAFETY: at..at+8 is inside the module (size >= HEADER).
    let magic = unsafe { (at as usize as *const [u8; 8]).read_unaligned() };
    if magic != MAGIC {
        return Err("bad magic (want PVK32SCN)");
    }
    // SAFETY: the header's fields lie inside the module (size >= HEADER).
    let rd = |o: u32| unsafe { rd32(at + o) };
    if rd(8) != VERSION {
        return Err("unknown version (want 1)");
    }
    let count = rd(12);
    if rd(16) as usize != ENTRY {
        return Err("entry size is not 232");
    }
    if count == 0 || count > MAX_COUNT {
        return Err("count is 0 or above 2^20");
    }
    if (size as u64) < HEADER as u64 + u64::from(count) * ENTRY as u64 {
        return Err("blob shorter than its entries");
    }
    let idt_limit = rd(28);
    let h = Header {
        count,
        gdt: rd(20),
        idt: rd(24),
        idt_limit: idt_limit as u16,
        window: rd(32),
        stub: rd(36),
        records: rd(40),
        tss_sel: rd(44) as u16,
        record: rd(44) >> 16,
        entries: at + HEADER as u32,
        gdt_image: at + 48,
    };
    if !(32 * 8 - 1..=0xffff).contains(&idt_limit) {
        return Err("IDT limit below 32 gates or above 0xffff");
    }
    if h.record as usize != RECORD {
        return Err("record size is not 220");
    }
    if h.tss_sel & 7 != 0 || usize::from(h.tss_sel) + 8 > GDT_BYTES {
        return Err("TSS selector not a GDT slot of the image");
    }
    for i in 0..count {
        // SAFETY: entry i lies inside the module (size checked above).
        let len = unsafe { *((h.entries + i * ENTRY as u32) as usize as *const u8) };
        if !(1..=15).contains(&len) {
            return Err("an entry's instruction is not 1 to 15 bytes");
        }
    }
    let (k0, k1) = kernel_extent();
    let regions = [
        (h.gdt as u64, GDT_BYTES as u64),
        // write_idt writes whole gates: idt_limit / 8 + 1 of them.
        (h.idt as u64, (u64::from(idt_limit) / 8 + 1) * 8),
        (h.window as u64, 64),
        (h.stub as u64, u64::from(STUB_BYTES)),
        (h.records as u64, u64::from(count) * RECORD as u64),
    ];
    let fixed = [
        (0, 0x10_0000),
        (u64::from(k0), u64::from(k1 - k0)),
        (u64::from(at), u64::from(size)),
    ];
    let overlap = |(a, n): (u64, u64), (b, m): (u64, u64)| a < b + m && b < a + n;
    for (i, &r) in regions.iter().enumerate() {
        if r.0 + r.1 > 0xc000_0000 {
            return Err("a region reaches past 3 GiB");
        }
        if fixed.iter().any(|&f| overlap(r, f)) {
            return Err("a region overlaps the first MiB, the kernel or the blob");
        }
        if regions[..i].iter().any(|&q| overlap(r, q)) {
            return Err("two regions overlap");
        }
    }
    Ok(h)
}

/// Copy `len` bytes from `from` to `to` (physical addresses), a byte at
/// a time (volatile: the Linux target's `core` would call a `memcpy`
/// this freestanding kernel does not have).
///
/// # Safety
/// Both ranges are RAM the kernel may use and do not overlap.
unsafe fn copy(from: u32, to: u32, len: usize) {
    for k in 0..len {
        // SAFETY: per the contract; paging is off.
        unsafe {
            let b = ((from as usize + k) as *const u8).read_volatile();
            ((to as usize + k) as *mut u8).write_volatile(b);
        }
    }
}

/// Write the dword `v` at physical `at`.
///
/// # Safety
/// `at..at+4` is RAM the kernel may use.
unsafe fn wr32(at: u32, v: u32) {
    // SAFETY: per the contract; paging is off.
    unsafe { (at as usize as *mut u32).write_unaligned(v) };
}

/// Write the scenario IDT: 32 interrupt gates (selector 0x08, DPL 0) to
/// the vector stubs; the rest of its limit zero.
///
/// # Safety
/// `h.idt..+(idt_limit / 8 + 1) * 8` is free RAM (checked by [`parse`]).
unsafe fn write_idt(h: &Header) {
    let base = sc_vectors as *const () as usize as u32;
    for v in 0..=u32::from(h.idt_limit) / 8 {
        let gate = if v < 32 {
            let o = base + 16 * v;
            u64::from(o & 0xffff) | 0x08 << 16 | 0x8e00u64 << 32 | u64::from(o >> 16) << 48
        } else {
            0
        };
        // SAFETY: slot v lies inside the IDT region (per the contract).
        unsafe { ((h.idt + 8 * v) as usize as *mut u64).write_unaligned(gate) };
    }
}

/// Set up scenario `i` (GDT image and slots, window, stub, context).
///
/// # Safety
/// `h` came from [`parse`]; the kernel's own GDT is loaded.
unsafe fn set_up(h: &Header, i: u32) {
    let e = h.entries + i * ENTRY as u32;
    // SAFETY: parse checked the regions are free RAM inside no other.
    unsafe {
        copy(h.gdt_image, h.gdt, GDT_BYTES);
        copy(e + 64, h.gdt + 0x18, 104);
        copy(e + 168, h.window, 64);
    }
    // SAFETY: e..e+ENTRY is inside the blob (parse).
    let len = usize::from(unsafe { *(e as usize as *const u8) });
    let stub = h.stub as usize as *mut u8;
    // SAFETY: the stub region holds STUB_BYTES >= 15 + 6 + 5 bytes.
    unsafe {
        copy(e + 1, h.stub, len);
        let tail = stub.add(len);
        tail.write(0x36);
        tail.add(1).write(0xa3);
        let eax = ((&raw const CTX) as u32) + C_EAX as u32;
        (tail.add(2) as *mut u32).write_unaligned(eax);
        tail.add(6).write(0xe9);
        let next = h.stub + len as u32 + 11;
        let rel = (sc_after as *const () as usize as u32).wrapping_sub(next);
        (tail.add(7) as *mut u32).write_unaligned(rel);
    }
    // SAFETY: entry i lies inside the blob (parse).
    let rd = |o: u32| unsafe { rd32(e + o) };
    let mut regs = [0u32; 8];
    for (k, r) in regs.iter_mut().enumerate() {
        *r = rd(16 + 4 * k as u32);
    }
    let mut sels = [0u32; 4];
    for (k, v) in sels.iter_mut().enumerate() {
        *v = rd(48 + 2 * k as u32) & 0xffff;
    }
    let limit = rd(56) & 0xffff;
    let c = &raw mut CTX;
    // SAFETY: only this code and the runner (not running now) touch CTX.
    unsafe {
        (*c).stub = h.stub;
        (*c).tss_sel = u32::from(h.tss_sel);
        (*c).regs = regs;
        (*c).sels = sels;
        (*c).test_gdtr = pointer(limit as u16, rd(60));
        (*c).rt_gdtr = pointer(GDT_BYTES as u16 - 1, h.gdt);
        (*c).rt_idtr = pointer(h.idt_limit, h.idt);
    }
}

/// A 6-byte `lgdt`/`lidt` operand (and a pad word).
fn pointer(limit: u16, base: u32) -> [u16; 4] {
    [limit, base as u16, (base >> 16) as u16, 0]
}

/// The kernel's own tables again, through `NativeOps`: GDT (and CS, DS,
/// ES, SS; FS and GS null), IDT, TR (its TSS descriptor made available
/// first: LTR wants it so) and LDTR null.
fn restore(ops: &NativeOps) -> Result<(), pvops::PvError> {
    let gdt = GDT.gdt()?;
    let idt = IDT.idt()?;
    let tss = TSS.descriptor()?;
    // SAFETY: the kernel's static tables, as at boot (checks.rs); the
    // GDT has flat code and data at KERNEL_CS/DS.
    unsafe {
        ops.load_gdt(&gdt)?;
        reload_segments();
        asm!("mov fs, {z:e}", "mov gs, {z:e}", z = in(reg) 0u32, options(nostack, nomem));
        ops.load_idt(&idt)?;
        ops.write_gdt_entry(&gdt, u32::from(LAYOUT.tss), GdtEntry::Single(tss))?;
        ops.load_tr(TSS_SEL)?;
        ops.load_ldt(None)?;
    }
    Ok(())
}

/// Write scenario `i`'s record from the context and the tables.
///
/// # Safety
/// `h` came from [`parse`]; the runner has just run scenario `i`.
unsafe fn record(h: &Header, i: u32) {
    // SAFETY: the runner is done with CTX.
    let c = unsafe { (&raw const CTX).read() };
    let at = h.records + i * RECORD as u32;
    let word = |w: u16, hi: u16| u32::from(w) | u32::from(hi) << 16;
    let (g, d) = (c.gdtr_after, c.idtr_after);
    // SAFETY: parse checked the regions; the window and GDT slots are
    // read after the runner, the record written inside its region.
    unsafe {
        wr32(at, c.vector);
        wr32(at + 4, c.error);
        wr32(at + 8, c.eax);
        // GDTR and IDTR as SGDT/SIDT stored them: limit, base (6 bytes),
        // then two zero bytes.
        wr32(at + 12, word(g[0], g[1]));
        wr32(at + 16, word(g[2], 0));
        wr32(at + 20, word(d[0], d[1]));
        wr32(at + 24, word(d[2], 0));
        wr32(at + 28, word(c.tr as u16, c.ldtr as u16));
        copy(h.window, at + 32, 64);
        copy(h.gdt + 0x18, at + 96, 104);
        wr32(at + 200, c.tr_before & 0xffff);
        wr32(at + 204, c.cr2);
        // The page-table entry: none, paging is off.
        wr32(at + 208, 0);
        wr32(at + 212, 0);
        // The frame's EIP (0 without an exception).
        wr32(at + 216, c.eip);
    }
}

/// Run the blob's scenarios if `start_info` names one as its first
/// module: `check pass scenarios: N run`, or `check fail scenarios:` and
/// why. No module: nothing (the boot checks only).
///
/// # Safety
/// `start_info` is the address the loader passed in EBX (its
/// `hvm_start_info`), the kernel's own tables loaded (the boot checks).
pub unsafe fn run(t: &mut Tally, start_info: u32) {
    // SAFETY: as in checks::run: the loader's hvm_start_info, readable
    // at its physical address.
    let magic = unsafe { (start_info as usize as *const u32).read_volatile() };
    if magic != 0x336e_c578 {
        return;
    }
    // SAFETY: the magic is the loader's: its hvm_start_info.
    let Some((at, size)) = (unsafe { first_module(start_info) }) else {
        return;
    };
    // SAFETY: the loader's module.
    let h = match unsafe { parse(at, size) } {
        Ok(h) => h,
        Err(why) => {
            t.check(
                "scenarios",
                false,
                format_args!("blob at {at:#x} ({size} bytes) refused: {why}"),
            );
            return;
        }
    };
    // SAFETY: ring 0; the kernel's static tables stay valid while loaded.
    let ops = unsafe { NativeOps::new(LAYOUT) };
    // SAFETY: parse checked the IDT region.
    unsafe { write_idt(&h) };
    for i in 0..h.count {
        // SAFETY: h from parse; the kernel's GDT is loaded (boot checks,
        // or `restore` after the previous scenario).
        unsafe { set_up(&h, i) };
        // SAFETY: the runner loads the scenario tables set up above and
        // returns on the kernel's stack with the scenario GDT loaded
        // (flat 0x08/0x10) and interrupts off; `restore` reloads ours.
        unsafe { sc_run() };
        if let Err(e) = restore(&ops) {
            t.check(
                "scenarios",
                false,
                format_args!("scenario {i}: restoring the kernel's tables: {e:?}"),
            );
            return;
        }
        // SAFETY: h from parse; scenario i just ran.
        unsafe { record(&h, i) };
    }
    t.check(
        "scenarios",
        true,
        format_args!(
            "{} run, records at {:#x} (blob at {at:#x}, {size} bytes)",
            h.count, h.records
        ),
    );
}
