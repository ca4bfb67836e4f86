//! Guest-physical layout of hv-sim's boot environment and the 64-bit entry
//! state it sets up.
//!
//! | GPA | contents |
//! |---|---|
//! | 0x0500 | boot GDT: null, 64-bit code (0x08), data (0x10) |
//! | 0x1000 | PML4 |
//! | 0x2000 | PDPT |
//! | 0x3000 | PD: 512 × 2 MiB pages, identity map of the first GiB |
//! | 0x7000–0x8000 | boot stack (rsp = 0x8000) |
//! | 0x100000+ | the kernel's `PT_LOAD` segments |

use super::KvmError;
use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Boot GDT address.
pub const BOOT_GDT: u64 = 0x500;
/// PML4 address (CR3).
pub const PML4: u64 = 0x1000;
/// Top of the boot stack.
pub const BOOT_STACK_TOP: u64 = 0x8000;
/// Lowest address a kernel segment may use.
pub const KERNEL_MIN: u64 = 0x10_0000;

const BOOT_GDT_ENTRIES: [u64; 3] = [
    0,
    pvops::presets::KERNEL_CODE64.0,
    pvops::presets::KERNEL_DATA.0,
];

/// First of the 4 KiB page tables the ring-3 personalities (Xen-style,
/// VMI-style, trap-and-emulate) use: one u64 entry per guest page.
pub const RING3_PT_BASE: u64 = 0x1_0000;
/// Pages below this one (1 MiB) are hv-sim's in the ring-3 personalities;
/// the guest kernel's own RAM starts here.
pub const RING3_RESERVED_PAGES: u64 = 0x100;
/// The one memory map of the ring-3 personalities (Xen-style, VMI-style,
/// trap-and-emulate): hv-sim's pages in the guest's first MiB, the real
/// descriptor tables the vCPU runs on, and the top GDT entries the VMI and
/// trap personalities reserve. Each personality re-exports what it uses.
///
/// | GPA | contents |
/// |---|---|
/// | 0x10000.. | page tables ([`ring3::MAX_PTS`] × 4 KiB, 2 MiB each) |
/// | 0x50000 | the real GDT |
/// | 0x60000 | the real IDT |
/// | 0x61000.. | the real LDT |
/// | 0x71000 | hv-sim's TSS |
/// | 0x72000 | the personality's own page (Xen and trap: exception stubs; VMI: the copy of the guest's TSS) |
/// | 0x100000.. | the guest's RAM |
pub mod ring3 {
    /// First page-table page.
    pub const PT_BASE: u64 = super::RING3_PT_BASE;
    /// Most page-table pages (each maps 2 MiB).
    pub const MAX_PTS: u64 = 64;
    /// The real GDT.
    pub const REAL_GDT: u64 = 0x5_0000;
    /// The real IDT.
    pub const REAL_IDT: u64 = 0x6_0000;
    /// The real LDT.
    pub const REAL_LDT: u64 = 0x6_1000;
    /// hv-sim's TSS (the TR the guest starts with).
    pub const HV_TSS: u64 = 0x7_1000;
    /// The personality's own page.
    pub const OWN_PAGE: u64 = 0x7_2000;
    /// Pages reserved for the hypervisor (the first MiB).
    pub const RESERVED_PAGES: u64 = super::RING3_RESERVED_PAGES;
    /// Entries of the real GDT in the VMI and trap personalities (the
    /// architectural maximum).
    pub const REAL_GDT_ENTRIES: u32 = 8192;
    /// hv-sim's first reserved entry at the top of the real GDT (VMI,
    /// trap).
    pub const FIRST_HV_GDT_ENTRY: u32 = 8184;
    /// hv-sim's ring-3 64-bit code segment: the guest kernel's CS.
    pub const KERNEL_CS: u16 = (FIRST_HV_GDT_ENTRY as u16) << 3 | 3;
    /// hv-sim's ring-3 flat data segment: the guest kernel's SS.
    pub const KERNEL_SS: u16 = (FIRST_HV_GDT_ENTRY as u16 + 1) << 3 | 3;
    /// hv-sim's TSS descriptor (16 bytes): TR at entry.
    pub const HV_TSS_SELECTOR: u16 = (FIRST_HV_GDT_ENTRY as u16 + 2) << 3;
}

/// Page-table entry bits.
pub const PTE_P: u64 = 1;
/// Writable.
pub const PTE_RW: u64 = 2;
/// User (ring-3) accessible.
pub const PTE_U: u64 = 4;

/// Identity paging with 4 KiB pages for a guest that runs in ring 3:
/// PML4 -> PDPT -> PD -> tables at [`RING3_PT_BASE`], U on the upper levels.
/// Pages from [`RING3_RESERVED_PAGES`] up are the kernel's (present,
/// writable, user); `low_page(addr)` gives the entry of each hv-sim page
/// below (0 = not present).
pub fn write_ring3_page_tables(
    mem: &GuestMemoryMmap,
    mem_size: usize,
    low_page: impl Fn(u64) -> u64,
) -> Result<(), KvmError> {
    let w = |addr: u64, v: u64| put(mem, "the ring-3 page tables", addr, v);
    let pages = (mem_size / 4096) as u64;
    w(PML4, 0x2000 | PTE_P | PTE_RW | PTE_U)?;
    w(0x2000, 0x3000 | PTE_P | PTE_RW | PTE_U)?;
    for i in 0..pages.div_ceil(512) {
        w(
            0x3000 + i * 8,
            (RING3_PT_BASE + i * 4096) | PTE_P | PTE_RW | PTE_U,
        )?;
    }
    for pfn in 0..pages {
        let a = pfn << 12;
        let e = if pfn >= RING3_RESERVED_PAGES {
            a | PTE_P | PTE_RW | PTE_U
        } else {
            low_page(a)
        };
        w(RING3_PT_BASE + pfn * 8, e)?;
    }
    Ok(())
}

/// Write the boot GDT and page tables.
pub fn write_boot_tables(mem: &GuestMemoryMmap) -> Result<(), KvmError> {
    let w = |addr: u64, v: u64| put(mem, "the boot tables", addr, v);
    for (i, d) in BOOT_GDT_ENTRIES.iter().enumerate() {
        w(BOOT_GDT + i as u64 * 8, *d)?;
    }
    const P_RW: u64 = 0b11;
    const PS: u64 = 1 << 7;
    w(PML4, 0x2000 | P_RW)?;
    w(0x2000, 0x3000 | P_RW)?;
    for i in 0..512u64 {
        w(0x3000 + i * 8, (i << 21) | P_RW | PS)?;
    }
    Ok(())
}

/// A flat (base 0, 4 GiB) segment register state: 64-bit code or data at
/// privilege `dpl`, as every personality's entry state uses.
pub fn flat_segment(selector: u16, code: bool, dpl: u8) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_: if code { 0xb } else { 0x3 },
        present: 1,
        dpl,
        db: u8::from(!code),
        s: 1,
        l: u8::from(code),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// A present system-segment register state (TR or LDTR).
pub fn system_segment(selector: u16, base: u64, limit: u32, type_: u8) -> kvm_segment {
    kvm_segment {
        base,
        limit,
        selector,
        type_,
        present: 1,
        ..Default::default()
    }
}

/// hv-sim's own tables for a ring-3 personality's entry state.
pub struct Ring3Tables {
    /// Ring-3 flat code selector.
    pub cs: u16,
    /// Ring-3 flat stack/data selector.
    pub ss: u16,
    /// Real GDT address and entry count.
    pub gdt: (u64, u64),
    /// Real IDT address (256 16-byte gates).
    pub idt: u64,
    /// hv-sim's TSS: selector and address.
    pub tss: (u16, u64),
}

/// The entry state every ring-3 personality (Xen-style, VMI-style,
/// trap-and-emulate) shares: IOPL 3 so the stubs' `out`s work, flat ring-3
/// segments, hv-sim's GDT/IDT/TSS, no LDT.
pub fn ring3_entry(regs: &mut kvm_regs, sregs: &mut kvm_sregs, t: &Ring3Tables) {
    regs.rflags = 0x3002;
    sregs.cs = flat_segment(t.cs, true, 3);
    let ds = flat_segment(t.ss, false, 3);
    sregs.ds = ds;
    sregs.es = ds;
    sregs.fs = ds;
    sregs.gs = ds;
    sregs.ss = ds;
    sregs.gdt.base = t.gdt.0;
    sregs.gdt.limit = (t.gdt.1 * 8 - 1) as u16;
    sregs.idt.base = t.idt;
    sregs.idt.limit = 256 * 16 - 1;
    sregs.tr = system_segment(t.tss.0, t.tss.1, 0x67, 0xb);
    sregs.ldt = kvm_segment {
        unusable: 1,
        ..Default::default()
    };
}

/// Set `sregs` for 64-bit mode with paging through [`PML4`].
pub fn long_mode_sregs(sregs: &mut kvm_sregs) {
    sregs.cs = flat_segment(0x08, true, 0);
    let data = flat_segment(0x10, false, 0);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.gdt.base = BOOT_GDT;
    sregs.gdt.limit = (BOOT_GDT_ENTRIES.len() * 8 - 1) as u16;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cr3 = PML4;
    sregs.cr4 = 1 << 5; // PAE
    sregs.cr0 = 0x8005_0033; // PG | WP | NE | ET | MP | PE
    sregs.efer = 0x500; // LME | LMA
}

/// Write `v` at `addr` of guest memory on hv-sim's behalf (`what` names it
/// in the error).
pub(crate) fn put(
    mem: &GuestMemoryMmap,
    what: &'static str,
    addr: u64,
    v: u64,
) -> Result<(), KvmError> {
    mem.write_obj(v, GuestAddress(addr))
        .map_err(KvmError::guest_write(what, addr))
}

/// A flat ring-3 64-bit code descriptor (DPL 3, L, accessed).
pub const RING3_CODE64: u64 = 0x00af_fb00_0000_ffff;
/// A flat ring-3 data descriptor (DPL 3, D/B, G, accessed).
pub const RING3_DATA: u64 = 0x00cf_f300_0000_ffff;
/// A TSS descriptor's busy bit (TR is loaded with it).
pub const TSS_BUSY: u64 = 2 << 40;

/// Write `entries` (index, descriptor) into the GDT at `gdt`; a TSS at
/// `tss` (limit 0x67, busy) at index `tss_index` and the one after.
pub(crate) fn write_gdt_entries(
    mem: &GuestMemoryMmap,
    gdt: u64,
    entries: &[(u32, u64)],
    (tss_index, tss): (u32, u64),
) -> Result<(), KvmError> {
    let sd = pvops::SystemDescriptor::tss(tss, 0x67)?;
    let tss = [(tss_index, sd.low | TSS_BUSY), (tss_index + 1, sd.high)];
    for (i, d) in entries.iter().chain(&tss) {
        put(mem, "hv-sim's GDT entries", gdt + u64::from(*i) * 8, *d)?;
    }
    Ok(())
}

/// hv-sim's copy of a guest descriptor in the real tables the vCPU runs
/// on: a present code/data descriptor gets the accessed bit (the CPU must
/// not need to write hv-sim's tables) and `dpl` ORed into its DPL (3: ring
/// compression); other entries are unchanged.
pub fn real_descriptor(d: u64, dpl: u8) -> u64 {
    const S: u64 = 1 << 44;
    const P: u64 = 1 << 47;
    if d & (S | P) == S | P {
        d | u64::from(dpl & 3) << 45 | 1 << 40
    } else {
        d
    }
}

/// An interrupt or trap gate's two halves: `offset` in `selector`,
/// `type_attr` its byte 5 (P, DPL, type).
pub fn gate(offset: u64, selector: u16, type_attr: u64) -> (u64, u64) {
    let low = (offset & 0xffff)
        | (u64::from(selector) << 16)
        | (type_attr << 40)
        | ((offset >> 16) & 0xffff) << 48;
    (low, offset >> 32)
}

/// What a ring-3 personality maps in hv-sim's first MiB, besides the real
/// descriptor tables and its TSS (supervisor-only: the CPU's implicit
/// accesses).
#[derive(Clone, Copy)]
pub(crate) struct LowMap {
    /// The boot stack (0x7000–0x8000), read/write for the guest.
    pub(crate) boot_stack: bool,
    /// The option-ROM window (0xC0000 up), read-only for the guest.
    pub(crate) rom_window: bool,
    /// The personality's own page ([`ring3::OWN_PAGE`]): the guest's
    /// (read, execute: stubs) rather than supervisor-only (a TSS copy).
    pub(crate) own_page_user: bool,
}

/// [`write_ring3_page_tables`] with hv-sim's pages as `map` says; the
/// rest of the first MiB is not present.
pub(crate) fn write_ring3_map(
    mem: &GuestMemoryMmap,
    mem_size: usize,
    map: LowMap,
) -> Result<(), KvmError> {
    use ring3::{OWN_PAGE, REAL_GDT};
    write_ring3_page_tables(mem, mem_size, |a| {
        if map.boot_stack && (0x7000..BOOT_STACK_TOP).contains(&a) {
            a | PTE_P | PTE_RW | PTE_U
        } else if (map.rom_window && a >= crate::vmi::abi::scan::START)
            || (map.own_page_user && a == OWN_PAGE)
        {
            a | PTE_P | PTE_U
        } else if (REAL_GDT..OWN_PAGE + 0x1000).contains(&a) {
            a | PTE_P | PTE_RW
        } else {
            0
        }
    })
}

/// hv-sim's own ring-3 tables (VMI-style, trap-and-emulate): its flat
/// selectors at the top of the real GDT, the real IDT, its TSS.
pub const HV_RING3: Ring3Tables = Ring3Tables {
    cs: ring3::KERNEL_CS,
    ss: ring3::KERNEL_SS,
    gdt: (ring3::REAL_GDT, ring3::REAL_GDT_ENTRIES as u64),
    idt: ring3::REAL_IDT,
    tss: (ring3::HV_TSS_SELECTOR, ring3::HV_TSS),
};

/// hv-sim's pages of a personality that runs the guest on its own ring-3
/// selectors ([`HV_RING3`]: VMI-style, trap-and-emulate): the page tables
/// with the boot stack, the option-ROM window and the own page (the
/// guest's with `own_page_user`) mapped, and its GDT entries (ring-3 code, data, its TSS) from
/// [`ring3::FIRST_HV_GDT_ENTRY`].
pub(crate) fn write_hv_ring3(
    mem: &GuestMemoryMmap,
    mem_size: usize,
    own_page_user: bool,
) -> Result<(), KvmError> {
    use ring3::FIRST_HV_GDT_ENTRY as FIRST;
    let map = LowMap {
        boot_stack: true,
        rom_window: true,
        own_page_user,
    };
    write_ring3_map(mem, mem_size, map)?;
    write_gdt_entries(
        mem,
        ring3::REAL_GDT,
        &[(FIRST, RING3_CODE64), (FIRST + 1, RING3_DATA)],
        (FIRST + 2, ring3::HV_TSS),
    )
}

/// The entry state on hv-sim's own ring-3 selectors ([`HV_RING3`]); on a
/// PVM host the boot flag that says the guest's `cpuid` shows the host's
/// leaves (ring 3 there has no CPUID faulting).
pub(crate) fn hv_ring3_entry(regs: &mut kvm_regs, sregs: &mut kvm_sregs) {
    if super::host_is_pvm() {
        regs.rdi |= super::boot_flags::CPUID_SHOWS_HOST;
    }
    ring3_entry(regs, sregs, &HV_RING3);
}
