//! What Xen's PV domain builder (`xen/arch/x86/pv/dom0_build.c`, with
//! `xen/common/libelf/libelf-dominfo.c` for the notes) does before a 64-bit
//! PV kernel runs, as hv-sim repeats it: read the kernel's `.note.Xen` ELF
//! notes, lay out the p2m list, the start info, the bootstrap page tables
//! and the boot stack after the kernel, write Xen's `start_info_t`, and
//! fill the hypercall page.
//!
//! The ABI values here are hv-sim's own, transcribed from Xen's public
//! headers (`public/elfnote.h`, `public/xen.h`), not taken from the guest
//! crate, so a wrong constant on one side cannot pass on both.

use goblin::elf::Elf;
use goblin::elf::program_header::{PF_X, PT_LOAD};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::super::{KvmError, ports};

/// `XEN_ELFNOTE_ENTRY`: the entry point's virtual address.
pub const XEN_ELFNOTE_ENTRY: u32 = 1;
/// `XEN_ELFNOTE_HYPERCALL_PAGE`.
pub const XEN_ELFNOTE_HYPERCALL_PAGE: u32 = 2;
/// `XEN_ELFNOTE_VIRT_BASE`.
pub const XEN_ELFNOTE_VIRT_BASE: u32 = 3;
/// `XEN_ELFNOTE_PADDR_OFFSET`.
pub const XEN_ELFNOTE_PADDR_OFFSET: u32 = 4;
/// `XEN_ELFNOTE_XEN_VERSION`.
pub const XEN_ELFNOTE_XEN_VERSION: u32 = 5;
/// `XEN_ELFNOTE_GUEST_OS`.
pub const XEN_ELFNOTE_GUEST_OS: u32 = 6;
/// `XEN_ELFNOTE_LOADER`.
pub const XEN_ELFNOTE_LOADER: u32 = 8;

/// Size of one hypercall stub.
pub const STUB_SIZE: usize = 32;
/// `__HYPERVISOR_iret`.
pub const HYPERVISOR_IRET: u32 = 23;

/// What the kernel's Xen notes say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XenNotes {
    /// `XEN_ELFNOTE_ENTRY`, or the ELF entry point when there is none (as
    /// libelf falls back).
    pub entry: u64,
    /// `XEN_ELFNOTE_HYPERCALL_PAGE`.
    pub hypercall_page: u64,
    /// `XEN_ELFNOTE_LOADER`.
    pub loader: Option<String>,
    /// `XEN_ELFNOTE_GUEST_OS`.
    pub guest_os: Option<String>,
    /// `XEN_ELFNOTE_XEN_VERSION`.
    pub xen_version: Option<String>,
    /// `XEN_ELFNOTE_VIRT_BASE` (0 when absent).
    pub virt_base: u64,
    /// `XEN_ELFNOTE_PADDR_OFFSET` (0 when absent).
    pub paddr_offset: u64,
}

fn note_str(desc: &[u8]) -> String {
    let end = desc.iter().position(|&b| b == 0).unwrap_or(desc.len());
    String::from_utf8_lossy(&desc[..end]).into_owned()
}

fn note_u64(desc: &[u8]) -> Option<u64> {
    match desc.len() {
        8 => Some(u64::from_le_bytes(desc.try_into().ok()?)),
        4 => Some(u64::from(u32::from_le_bytes(desc.try_into().ok()?))),
        _ => None,
    }
}

/// Read and check the kernel's Xen notes as Xen's PV builder would:
/// exactly one 8-byte `HYPERCALL_PAGE` naming a page inside an executable
/// `PT_LOAD` segment; LOADER "generic" or GUEST_OS "linux" (Xen: "Will
/// only load images built for the generic loader or Linux images"); and,
/// as hv-sim lays guests out at their link addresses, VIRT_BASE and
/// PADDR_OFFSET 0. Notes come from `PT_NOTE` program headers, or note
/// sections when there are none.
pub fn xen_notes(image: &[u8]) -> Result<XenNotes, KvmError> {
    let hp = |why: String| {
        KvmError::BadImage(format!(
            "XEN_ELFNOTE_HYPERCALL_PAGE (Xen note type 2): {why}"
        ))
    };
    let elf = Elf::parse(image)?;
    let notes = elf
        .iter_note_headers(image)
        .or_else(|| elf.iter_note_sections(image, None));
    let mut pages = Vec::new();
    let mut n = XenNotes {
        entry: elf.entry,
        hypercall_page: 0,
        loader: None,
        guest_os: None,
        xen_version: None,
        virt_base: 0,
        paddr_offset: 0,
    };
    if let Some(it) = notes {
        for note in it {
            let note = note.map_err(|e| hp(format!("note table is malformed: {e}")))?;
            if note.name != "Xen" {
                continue;
            }
            let bad = |what: &str| {
                KvmError::BadImage(format!(
                    "Xen note {what} (type {}) has a {}-byte descriptor",
                    note.n_type,
                    note.desc.len()
                ))
            };
            match note.n_type {
                XEN_ELFNOTE_HYPERCALL_PAGE => pages.push(note.desc.to_vec()),
                XEN_ELFNOTE_ENTRY => n.entry = note_u64(note.desc).ok_or_else(|| bad("ENTRY"))?,
                XEN_ELFNOTE_VIRT_BASE => {
                    n.virt_base = note_u64(note.desc).ok_or_else(|| bad("VIRT_BASE"))?
                }
                XEN_ELFNOTE_PADDR_OFFSET => {
                    n.paddr_offset = note_u64(note.desc).ok_or_else(|| bad("PADDR_OFFSET"))?
                }
                XEN_ELFNOTE_LOADER => n.loader = Some(note_str(note.desc)),
                XEN_ELFNOTE_GUEST_OS => n.guest_os = Some(note_str(note.desc)),
                XEN_ELFNOTE_XEN_VERSION => n.xen_version = Some(note_str(note.desc)),
                _ => {}
            }
        }
    }
    let desc = match pages.as_slice() {
        [] => {
            return Err(hp(
                "the kernel has no such note; a Xen-style guest must name the page hv-sim fills with hypercall stubs".into(),
            ));
        }
        [d] => d,
        _ => return Err(hp(format!("{} such notes; expected one", pages.len()))),
    };
    let Ok(bytes) = <[u8; 8]>::try_from(desc.as_slice()) else {
        return Err(hp(format!(
            "descriptor is {} bytes; expected an 8-byte address",
            desc.len()
        )));
    };
    let page = u64::from_le_bytes(bytes);
    if !page.is_multiple_of(4096) {
        return Err(hp(format!("address {page:#x} is not page aligned")));
    }
    let exec = |a: u64, len: u64| {
        elf.program_headers.iter().any(|ph| {
            ph.p_type == PT_LOAD
                && ph.p_flags & PF_X != 0
                && a >= ph.p_vaddr
                && a.saturating_add(len) <= ph.p_vaddr.saturating_add(ph.p_memsz)
        })
    };
    if !exec(page, 4096) {
        return Err(hp(format!(
            "address {page:#x} is not a page inside an executable PT_LOAD segment"
        )));
    }
    n.hypercall_page = page;
    if n.loader.as_deref() != Some("generic") && n.guest_os.as_deref() != Some("linux") {
        return Err(KvmError::BadImage(format!(
            "Will only load images built for the generic loader or Linux images (Xen's refusal): LOADER {:?}, GUEST_OS {:?}",
            n.loader, n.guest_os
        )));
    }
    if n.virt_base != 0 || n.paddr_offset != 0 {
        return Err(KvmError::BadImage(format!(
            "hv-sim loads Xen guests with VIRT_BASE = PADDR_OFFSET = 0 (virtual = pseudo-physical), not {:#x}/{:#x}",
            n.virt_base, n.paddr_offset
        )));
    }
    if !exec(n.entry, 1) {
        return Err(KvmError::BadImage(format!(
            "Xen entry point {:#x} is not inside an executable PT_LOAD segment",
            n.entry
        )));
    }
    Ok(n)
}

/// Where the builder puts things, all virtual = pseudo-physical addresses
/// (VIRT_BASE 0), each region page aligned, in Xen's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dom0Layout {
    /// End of the kernel's image (page aligned up).
    pub kernel_end: u64,
    /// The p2m list (`start_info.mfn_list`): `nr_pages` u64s.
    pub p2m: u64,
    /// The start info.
    pub start_info: u64,
    /// The bootstrap page tables (`start_info.pt_base`: the L4 first).
    pub pt_base: u64,
    /// Their number (`start_info.nr_pt_frames`).
    pub nr_pt_frames: u64,
    /// Top of the one-page boot stack (rsp at entry).
    pub stack_top: u64,
    /// End of the initial mapping: everything from 0 to here is mapped,
    /// rounded up to 4 MiB with at least 128 KiB past the stack.
    pub total: u64,
}

fn page_up(a: u64) -> u64 {
    a.div_ceil(4096) * 4096
}

impl Dom0Layout {
    /// Xen's arithmetic for dom0 (`dom0_construct`): p2m after the kernel,
    /// then the start info (dom0's console info follows it in the same
    /// page), then as many page-table frames (at least 2) as mapping
    /// `[0, total)` with 4 KiB pages takes (L4, L3s, L2s, L1s), then the
    /// boot stack; `total` is the stack's end rounded up to 4 MiB, plus 4
    /// MiB when that leaves less than 512 KiB of padding.
    pub fn new(kernel_end: u64, nr_pages: u64) -> Dom0Layout {
        let p2m = page_up(kernel_end);
        let start_info = page_up(p2m + nr_pages * 8);
        let pt_base = page_up(start_info + START_INFO_SIZE);
        let mut nr = 2;
        loop {
            let stack_top = pt_base + (nr + 1) * 4096;
            let mut total = (stack_top + (1 << 22) - 1) & !((1 << 22) - 1);
            if total - stack_top < 512 << 10 {
                total += 1 << 22;
            }
            let l1 = total.div_ceil(1 << 21);
            let l2 = total.div_ceil(1 << 30);
            let l3 = total.div_ceil(1 << 39);
            if 1 + l3 + l2 + l1 <= nr {
                return Dom0Layout {
                    kernel_end: p2m,
                    p2m,
                    start_info,
                    pt_base,
                    nr_pt_frames: nr,
                    stack_top,
                    total,
                };
            }
            nr += 1;
        }
    }
}

/// Size of `start_info_t` (64-bit).
pub const START_INFO_SIZE: u64 = 1168;

/// `start_info_t` field offsets (64-bit), from `public/xen.h`.
pub mod si {
    /// `char magic[32]`.
    pub const MAGIC: u64 = 0;
    /// `unsigned long nr_pages`.
    pub const NR_PAGES: u64 = 32;
    /// `unsigned long shared_info`.
    pub const SHARED_INFO: u64 = 40;
    /// `uint32_t flags`.
    pub const FLAGS: u64 = 48;
    /// `xen_pfn_t store_mfn`.
    pub const STORE_MFN: u64 = 56;
    /// `uint32_t store_evtchn`.
    pub const STORE_EVTCHN: u64 = 64;
    /// `console` union (8-byte aligned).
    pub const CONSOLE: u64 = 72;
    /// `unsigned long pt_base`.
    pub const PT_BASE: u64 = 88;
    /// `unsigned long nr_pt_frames`.
    pub const NR_PT_FRAMES: u64 = 96;
    /// `unsigned long mfn_list`.
    pub const MFN_LIST: u64 = 104;
    /// `unsigned long mod_start`.
    pub const MOD_START: u64 = 112;
    /// `unsigned long mod_len`.
    pub const MOD_LEN: u64 = 120;
    /// `int8_t cmd_line[MAX_GUEST_CMDLINE]`.
    pub const CMD_LINE: u64 = 128;
    /// `MAX_GUEST_CMDLINE`.
    pub const MAX_GUEST_CMDLINE: usize = 1024;
    /// `unsigned long first_p2m_pfn`.
    pub const FIRST_P2M_PFN: u64 = 1152;
    /// `unsigned long nr_p2m_frames`.
    pub const NR_P2M_FRAMES: u64 = 1160;
    /// `SIF_PRIVILEGED`.
    pub const SIF_PRIVILEGED: u32 = 1;
    /// `SIF_INITDOMAIN`.
    pub const SIF_INITDOMAIN: u32 = 2;
    /// `SIF_PM_MASK` bits (8-15, `xen_processor_pmbits`) as Xen 4.17 set
    /// them for dom0 on QEMU (observed: flags 0x303).
    pub const SIF_PM_XEN_4_17: u32 = 0x3 << 8;
    /// The magic of a 64-bit PV guest's start info.
    pub const MAGIC_PV64: &[u8] = b"xen-3.0-x86_64";
}

/// The start info hv-sim writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartInfoFields {
    /// `nr_pages`.
    pub nr_pages: u64,
    /// `shared_info` (a machine address).
    pub shared_info: u64,
    /// `flags`.
    pub flags: u32,
    /// `pt_base`.
    pub pt_base: u64,
    /// `nr_pt_frames`.
    pub nr_pt_frames: u64,
    /// `mfn_list`.
    pub mfn_list: u64,
    /// `cmd_line` (cut to 1023 bytes).
    pub cmd_line: String,
    /// `first_p2m_pfn` (Xen 4.17 gave dom0 the first pfn past the initial
    /// mapping, with `nr_p2m_frames` 0).
    pub first_p2m_pfn: u64,
}

/// Write `f` as a `start_info_t` at `addr` (the rest of the page zeroed).
pub fn write_start_info(
    mem: &GuestMemoryMmap,
    addr: u64,
    f: &StartInfoFields,
) -> Result<(), KvmError> {
    let err = KvmError::guest_write("the start info", addr);
    mem.write_slice(&[0u8; 4096], GuestAddress(addr))
        .map_err(err)?;
    mem.write_slice(si::MAGIC_PV64, GuestAddress(addr + si::MAGIC))
        .map_err(err)?;
    let q = |off: u64, v: u64| mem.write_obj(v, GuestAddress(addr + off)).map_err(err);
    q(si::NR_PAGES, f.nr_pages)?;
    q(si::SHARED_INFO, f.shared_info)?;
    mem.write_obj(f.flags, GuestAddress(addr + si::FLAGS))
        .map_err(err)?;
    q(si::PT_BASE, f.pt_base)?;
    q(si::NR_PT_FRAMES, f.nr_pt_frames)?;
    q(si::MFN_LIST, f.mfn_list)?;
    let cmd = f.cmd_line.as_bytes();
    let cmd = &cmd[..cmd.len().min(si::MAX_GUEST_CMDLINE - 1)];
    mem.write_slice(cmd, GuestAddress(addr + si::CMD_LINE))
        .map_err(err)?;
    q(si::FIRST_P2M_PFN, f.first_p2m_pfn)?;
    Ok(())
}

/// Page-table entry flags Xen's builder uses for a 64-bit PV guest
/// (`L1_PROT`: present, writable, accessed, user; the upper levels add
/// dirty).
pub const L1_PROT: u64 = 0x1 | 0x2 | 0x20 | 0x4;
/// `L2_PROT` = `L3_PROT` = `L4_PROT`.
pub const LN_PROT: u64 = L1_PROT | 0x40;

/// The bootstrap page tables as Xen builds them, in machine frames: L4 at
/// `pt_base`, then one L3, the L2s and the L1s mapping `[0, total)` with 4
/// KiB pages. `mfn(pfn)` is the p2m (`None`: not the domain's page, left
/// not present). The page-table frames themselves are mapped read-only.
/// Returns the (address, value) of every entry to write.
pub fn bootstrap_page_tables(l: &Dom0Layout, mfn: impl Fn(u64) -> Option<u64>) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let l1s = l.total.div_ceil(1 << 21);
    let l2s = l.total.div_ceil(1 << 30);
    let l3 = l.pt_base + 4096;
    let l2 = l3 + 4096;
    let l1 = l2 + l2s * 4096;
    let frame = |va: u64| mfn(va >> 12).map(|m| m << 12);
    let pt_end = l.pt_base + l.nr_pt_frames * 4096;
    if let Some(m) = frame(l3) {
        out.push((l.pt_base, m | LN_PROT));
    }
    for i in 0..l2s {
        if let Some(m) = frame(l2 + i * 4096) {
            out.push((l3 + i * 8, m | LN_PROT));
        }
    }
    for i in 0..l1s {
        if let Some(m) = frame(l1 + i * 4096) {
            out.push((l2 + i * 8, m | LN_PROT));
        }
    }
    for pfn in 0..l.total / 4096 {
        let va = pfn << 12;
        if let Some(m) = frame(va) {
            let rw = if (l.pt_base..pt_end).contains(&va) {
                !0x2
            } else {
                !0
            };
            out.push((l1 + pfn * 8, (m | L1_PROT) & rw));
        }
    }
    out
}

/// The stub for hypercall `nr`: `mov eax, nr; out 0xE8, eax; ret` (hv-sim's
/// port transport in place of Xen's `syscall`), int3 padding. The `iret`
/// stub is jumped to, not called: like Xen's it pushes rcx, r11 and rax to
/// complete the `iret_context`, then `mov eax, 23; out 0xE8, eax; ud2`.
pub fn hypercall_stub(nr: u32) -> [u8; STUB_SIZE] {
    let mut s = [0xccu8; STUB_SIZE];
    let port = ports::HYPERCALL as u8;
    if nr == HYPERVISOR_IRET {
        let code = [
            0x51, 0x41, 0x53, 0x50, 0xb8, 23, 0, 0, 0, 0xe7, port, 0x0f, 0x0b,
        ];
        s[..code.len()].copy_from_slice(&code);
        return s;
    }
    s[0] = 0xb8;
    s[1..5].copy_from_slice(&nr.to_le_bytes());
    s[5] = 0xe7;
    s[6] = port;
    s[7] = 0xc3;
    s
}

/// Written to the hypercall port by the exception entry of vector `v`:
/// `EXCEPTION_MARKER + v` (no hypercall has such a number).
pub const EXCEPTION_MARKER: u32 = 0xffff_ff00;
/// Bytes per exception entry stub.
pub const EXCEPTION_STUB_SIZE: u64 = 16;

/// hv-sim's entry for exception vector `v` (0..32): `push rax; mov eax,
/// EXCEPTION_MARKER + v; out 0xE8, eax; ud2`. hv-sim reads the hardware
/// frame, and either emulates (the forced-emulation `cpuid`) or bounces
/// the exception to the guest's handler as Xen does; the `ud2` is never
/// reached.
pub fn exception_stub(v: u8) -> [u8; EXCEPTION_STUB_SIZE as usize] {
    let mut s = [0xccu8; EXCEPTION_STUB_SIZE as usize];
    s[0] = 0x50;
    s[1] = 0xb8;
    s[2..6].copy_from_slice(&(EXCEPTION_MARKER + u32::from(v)).to_le_bytes());
    s[6] = 0xe7;
    s[7] = ports::HYPERCALL as u8;
    s[8] = 0x0f;
    s[9] = 0x0b;
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout Xen 4.17 printed for the example kernel (64 MiB dom0,
    /// image ending at 0x2382e0): "Phys-Mach map 0x239000->0x259000, Start
    /// info 0x259000->0x2594b8, Page tables 0x25a000->0x25f000, Boot stack
    /// 0x25f000->0x260000, TOTAL 0->0x400000".
    #[test]
    fn layout_matches_xen_4_17() {
        let l = Dom0Layout::new(0x2382e0, 16384);
        assert_eq!(l.p2m, 0x239000);
        assert_eq!(l.start_info, 0x259000);
        assert_eq!(l.pt_base, 0x25a000);
        assert_eq!(l.nr_pt_frames, 5);
        assert_eq!(l.stack_top, 0x260000);
        assert_eq!(l.total, 0x400000);
    }

    #[test]
    fn iret_stub_completes_the_context() {
        let s = hypercall_stub(23);
        // push rcx; push r11; push rax; mov eax, 23; out 0xe8, eax; ud2
        assert_eq!(
            s[..13],
            [
                0x51, 0x41, 0x53, 0x50, 0xb8, 23, 0, 0, 0, 0xe7, 0xe8, 0x0f, 0x0b
            ]
        );
        assert_eq!(
            hypercall_stub(13)[..8],
            [0xb8, 13, 0, 0, 0, 0xe7, 0xe8, 0xc3]
        );
    }

    #[test]
    fn bootstrap_tables_map_everything_and_protect_themselves() {
        let l = Dom0Layout::new(0x2382e0, 16384);
        let e = bootstrap_page_tables(&l, |pfn| Some(pfn + 0x1000));
        let at = |a: u64| e.iter().find(|(x, _)| *x == a).map(|(_, v)| *v);
        assert_eq!(
            at(l.pt_base),
            Some(((l.pt_base >> 12) + 1 + 0x1000) << 12 | LN_PROT)
        );
        let l1 = l.pt_base + 3 * 4096;
        // The kernel's first page: writable; the L4 itself: read-only.
        assert_eq!(at(l1 + 0x200 * 8), Some((0x200 + 0x1000) << 12 | L1_PROT));
        assert_eq!(
            at(l1 + (l.pt_base >> 12) * 8),
            Some(((l.pt_base >> 12) + 0x1000) << 12 | (L1_PROT & !2))
        );
        assert_eq!(e.len() as u64, 1 + 1 + 2 + 1024);
    }
}
