//! The emulator's own page walker: linear → physical through 32-bit
//! (non-PAE), PAE and 4-level paging, with the CPU's permission checks,
//! reserved-bit checks and accessed/dirty updates (SDM vol. 3A, chapter 4,
//! "Paging"). Issue 11: a trap-and-emulate hypervisor must fetch the
//! faulting instruction and its operand through the guest's paging in
//! every mode; this is that walk, over any [`PhysicalMemory`].
//!
//! What is modelled, by SDM section:
//! * 4.3 32-bit paging: 4-byte entries, PDE.PS with CR4.PSE (4 MiB pages,
//!   PSE-36 high bits 13–20 used up to `maxphyaddr`), no NX.
//! * 4.4 PAE paging: the four PDPTEs (read from memory at CR3 & ~0x1F at
//!   each walk; the CPU caches them at CR3 load, see [`Walker::pdptes`]),
//!   8-byte entries, 2 MiB pages, NX with EFER.NXE.
//! * 4.5 4-level paging: PML4E, PDPTE (1 GiB pages), PDE (2 MiB pages),
//!   PTE; canonical addresses.
//! * 4.6 access rights: user pages only for user accesses (U/S at every
//!   level), writes need R/W at every level for user accesses and, with
//!   CR0.WP, for supervisor ones; fetches from XD pages (EFER.NXE) fault;
//!   CR4.SMEP (supervisor fetch from a user page) and CR4.SMAP (supervisor
//!   data access to a user page, unless the access is implicit or EFLAGS.AC
//!   is set for an explicit one).
//! * 4.7 page-fault error codes: P, W/R, U/S, RSVD, I/D (I/D only when
//!   NXE or SMEP is on, as the CPU reports it).
//! * 4.8 accessed and dirty flags: A in every entry used, D in the entry
//!   that maps the page, on a write. hv-sim sets them only when the whole
//!   translation succeeds (a CPU may also set A in entries it used before a
//!   fault; software can't rely on either).
//!
//! Not modelled: protection keys, 5-level paging, HLAT, the TLB (every walk
//! reads memory), and the PDPTE caching of PAE (see above).

/// Physical memory as the page walker reads and updates it.
pub trait PhysicalMemory {
    /// Read a little-endian u32 at `pa`; `None` if no memory is there.
    fn read_u32(&self, pa: u64) -> Option<u32>;
    /// Read a little-endian u64 at `pa`.
    fn read_u64(&self, pa: u64) -> Option<u64>;
    /// Write a u32 at `pa` (the CPU's locked A/D update).
    fn write_u32(&self, pa: u64, v: u32) -> Option<()>;
    /// Write a u64 at `pa`.
    fn write_u64(&self, pa: u64, v: u64) -> Option<()>;
    /// Read `buf.len()` bytes at `pa` (within one page).
    fn read_bytes(&self, pa: u64, buf: &mut [u8]) -> Option<()>;
    /// Write `data` at `pa` (within one page).
    fn write_bytes(&self, pa: u64, data: &[u8]) -> Option<()>;
}

/// The paging mode (CR0.PG, CR4.PAE, EFER.LME).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PagingMode {
    /// CR0.PG = 0: linear = physical (32-bit addresses).
    Off,
    /// 32-bit paging (CR4.PAE = 0).
    Bits32,
    /// PAE paging (CR4.PAE = 1, EFER.LMA = 0).
    Pae,
    /// 4-level paging (EFER.LMA = 1).
    Level4,
}

/// How the memory is accessed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalkAccess {
    /// Data read.
    Read,
    /// Data write.
    Write,
    /// Instruction fetch.
    Fetch,
}

/// The control-register state a walk depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Walker {
    /// The mode.
    pub mode: PagingMode,
    /// CR3.
    pub cr3: u64,
    /// CR0.WP: supervisor writes honour R/W.
    pub wp: bool,
    /// CR4.PSE: 4 MiB pages in 32-bit paging.
    pub pse: bool,
    /// EFER.NXE: bit 63 is XD (else it is reserved).
    pub nxe: bool,
    /// CR4.SMEP.
    pub smep: bool,
    /// CR4.SMAP.
    pub smap: bool,
    /// EFLAGS.AC (SMAP's override for explicit supervisor accesses).
    pub ac: bool,
    /// MAXPHYADDR (bits of physical address).
    pub maxphyaddr: u32,
}

/// The page fault a walk raises (SDM 4.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalkFault {
    /// CR2.
    pub addr: u64,
    /// The error code.
    pub error_code: u32,
}

/// Error-code bits.
pub mod pf {
    /// The fault was a protection violation (the page was present).
    pub const P: u32 = 1;
    /// A write.
    pub const W: u32 = 2;
    /// A user-mode access.
    pub const U: u32 = 4;
    /// A reserved bit was set in a paging-structure entry.
    pub const RSVD: u32 = 8;
    /// An instruction fetch (reported when NXE or SMEP is on).
    pub const ID: u32 = 16;
}

/// A successful translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// The physical address.
    pub pa: u64,
    /// The page's size in bytes (4 KiB, 2 MiB, 4 MiB or 1 GiB).
    pub page_size: u64,
}

const P: u64 = 1;
const RW: u64 = 2;
const US: u64 = 4;
const PS: u64 = 1 << 7;
const A: u64 = 1 << 5;
const D: u64 = 1 << 6;
const XD: u64 = 1 << 63;

/// One entry the walk used: where it is, its width, its value.
#[derive(Clone, Copy)]
struct Used {
    pa: u64,
    wide: bool,
    value: u64,
}

impl Walker {
    /// A walker for `mode` at `cr3` with WP on, PSE on, NXE on, no SMEP or
    /// SMAP, and a 52-bit physical address width.
    pub fn new(mode: PagingMode, cr3: u64) -> Walker {
        Walker {
            mode,
            cr3,
            wp: true,
            pse: true,
            nxe: true,
            smep: false,
            smap: false,
            ac: false,
            maxphyaddr: 52,
        }
    }

    /// The physical-address bits an entry may set (below bit 52): bits at
    /// or above MAXPHYADDR are reserved.
    fn addr_mask(&self) -> u64 {
        let bits = self.maxphyaddr.clamp(32, 52);
        ((1u64 << bits) - 1) & !0xFFF
    }

    /// The reserved bits of an 8-byte entry that maps a page of
    /// `page_size` (or, `page_size == 0`, references a table), at `level`
    /// (PAE PDPTE: level 3 in PAE mode is special).
    fn reserved_wide(&self, page_size: u64) -> u64 {
        let mut r = !self.addr_mask() & 0x000F_FFFF_FFFF_F000;
        if !self.nxe {
            r |= XD;
        }
        // PAE entries: bits 62:M are reserved, 62:52 included (SDM vol. 3A
        // tables 4-9, 4-10, 4-11); 4-level paging ignores 62:52 (tables
        // 4-15 to 4-20). Found by the QEMU differential (PAE scenarios).
        if self.mode == PagingMode::Pae {
            r |= 0x7FF0_0000_0000_0000;
        }
        // Large pages: the bits between 12 (PAT at bit 12) and the page's
        // alignment are reserved.
        if page_size > 4096 {
            r |= (page_size - 1) & !0x1FFF;
        }
        r
    }

    /// The four PDPTEs of PAE paging, as the CPU loads them at a CR3 load.
    /// `None` if memory is missing; `Err` with the index of one whose
    /// reserved bits are set (the CPU raises #GP at the MOV to CR3).
    pub fn pdptes<M: PhysicalMemory>(&self, mem: &M) -> Option<Result<[u64; 4], usize>> {
        let base = self.cr3 & 0xFFFF_FFE0;
        let mut out = [0u64; 4];
        for (i, e) in out.iter_mut().enumerate() {
            *e = mem.read_u64(base + i as u64 * 8)?;
            // SDM 4.4.1 and table 4-8: bits 2:1, 8:5 and 63:M are reserved.
            let rsvd = 0x1E6 | (!self.addr_mask() & 0xFFFF_FFFF_FFFF_F000);
            if *e & P != 0 && *e & rsvd != 0 {
                return Some(Err(i));
            }
        }
        Some(Ok(out))
    }

    /// Translate `la` for `access` at CPL `cpl` (3 = user), setting A and
    /// D as the CPU does. `implicit`: a supervisor access the CPU makes on
    /// its own (a descriptor-table read), which SMAP checks whatever
    /// EFLAGS.AC says.
    pub fn translate<M: PhysicalMemory>(
        &self,
        mem: &M,
        la: u64,
        access: WalkAccess,
        cpl: u8,
        implicit: bool,
    ) -> Result<Translation, WalkFault> {
        let user = cpl == 3 && !implicit;
        let write = access == WalkAccess::Write;
        let fetch = access == WalkAccess::Fetch;
        let base_code = (if write { pf::W } else { 0 })
            | (if user { pf::U } else { 0 })
            | (if fetch && (self.nxe || self.smep) {
                pf::ID
            } else {
                0
            });
        let fault = |bits: u32| WalkFault {
            addr: la,
            error_code: base_code | bits,
        };
        let mut used: [Option<Used>; 4] = [None; 4];
        let (pa, page_size, rw, us, xd) = match self.mode {
            PagingMode::Off => {
                return Ok(Translation {
                    pa: la & 0xFFFF_FFFF,
                    page_size: 4096,
                });
            }
            PagingMode::Bits32 => self.walk32(mem, la, &mut used, &fault)?,
            PagingMode::Pae | PagingMode::Level4 => self.walk_wide(mem, la, &mut used, &fault)?,
        };
        // SDM 4.6: access rights, the combination of every level.
        if user {
            if !us {
                return Err(fault(pf::P));
            }
            if write && !rw {
                return Err(fault(pf::P));
            }
        } else {
            if write && !rw && self.wp {
                return Err(fault(pf::P));
            }
            if us && fetch && self.smep {
                return Err(fault(pf::P));
            }
            if us && !fetch && self.smap && (implicit || !self.ac) {
                return Err(fault(pf::P));
            }
        }
        if fetch && xd && self.nxe {
            return Err(fault(pf::P));
        }
        // SDM 4.8: A in every entry used, D in the one that maps the page.
        let last = used.iter().rposition(Option::is_some);
        for (i, u) in used.iter().enumerate() {
            let Some(u) = u else { continue };
            let mut v = u.value | A;
            if write && Some(i) == last {
                v |= D;
            }
            if v != u.value {
                let ok = if u.wide {
                    mem.write_u64(u.pa, v)
                } else {
                    mem.write_u32(u.pa, v as u32)
                };
                if ok.is_none() {
                    return Err(fault(0));
                }
            }
        }
        Ok(Translation {
            pa: pa | (la & (page_size - 1)),
            page_size,
        })
    }

    /// 32-bit paging (SDM 4.3): (page base, size, R/W, U/S, XD).
    fn walk32<M: PhysicalMemory>(
        &self,
        mem: &M,
        la: u64,
        used: &mut [Option<Used>; 4],
        fault: &dyn Fn(u32) -> WalkFault,
    ) -> Result<(u64, u64, bool, bool, bool), WalkFault> {
        let la = la & 0xFFFF_FFFF;
        let pde_pa = (self.cr3 & 0xFFFF_F000) | ((la >> 22) << 2);
        let pde = u64::from(mem.read_u32(pde_pa).ok_or(fault(0))?);
        if pde & P == 0 {
            return Err(fault(0));
        }
        used[0] = Some(Used {
            pa: pde_pa,
            wide: false,
            value: pde,
        });
        if pde & PS != 0 && self.pse {
            // 4 MiB page: bits 31:22, and PSE-36 bits 20:13 → 39:32.
            let high = (pde >> 13) & 0xFF;
            let limit = self.maxphyaddr.clamp(32, 40);
            if high >> (limit - 32) != 0 || pde & (1 << 21) != 0 {
                return Err(fault(pf::P | pf::RSVD));
            }
            let pa = (pde & 0xFFC0_0000) | high << 32;
            return Ok((pa, 4 << 20, pde & RW != 0, pde & US != 0, false));
        }
        let pte_pa = (pde & 0xFFFF_F000) | (((la >> 12) & 0x3FF) << 2);
        let pte = u64::from(mem.read_u32(pte_pa).ok_or(fault(0))?);
        if pte & P == 0 {
            return Err(fault(0));
        }
        used[1] = Some(Used {
            pa: pte_pa,
            wide: false,
            value: pte,
        });
        let rw = pde & RW != 0 && pte & RW != 0;
        let us = pde & US != 0 && pte & US != 0;
        Ok((pte & 0xFFFF_F000, 4096, rw, us, false))
    }

    /// PAE and 4-level paging (SDM 4.4, 4.5).
    fn walk_wide<M: PhysicalMemory>(
        &self,
        mem: &M,
        la: u64,
        used: &mut [Option<Used>; 4],
        fault: &dyn Fn(u32) -> WalkFault,
    ) -> Result<(u64, u64, bool, bool, bool), WalkFault> {
        let (mut table, top_level) = match self.mode {
            PagingMode::Level4 => {
                if !pvops::table::is_canonical(la) {
                    // Non-canonical: #GP (or #SS), not a page fault; the
                    // caller checks canonicality first. Report a not-present
                    // fault rather than walk with a wrapped index.
                    return Err(fault(0));
                }
                (self.cr3 & self.addr_mask(), 3u32)
            }
            _ => {
                let la32 = la & 0xFFFF_FFFF;
                let pdpte = match self.pdptes(mem) {
                    None => return Err(fault(0)),
                    Some(Err(_)) => return Err(fault(pf::P | pf::RSVD)),
                    Some(Ok(p)) => p[(la32 >> 30) as usize],
                };
                if pdpte & P == 0 {
                    return Err(fault(0));
                }
                // PDPTEs are not accessed-flagged (they are loaded at CR3).
                (pdpte & self.addr_mask(), 1u32)
            }
        };
        let la = if self.mode == PagingMode::Pae {
            la & 0xFFFF_FFFF
        } else {
            la
        };
        let (mut rw, mut us, mut xd) = (true, true, false);
        for level in (0..=top_level).rev() {
            let idx = (la >> (12 + 9 * level)) & 511;
            let at = table + idx * 8;
            let e = mem.read_u64(at).ok_or(fault(0))?;
            if e & P == 0 {
                return Err(fault(0));
            }
            let slot = (top_level - level) as usize;
            used[slot] = Some(Used {
                pa: at,
                wide: true,
                value: e,
            });
            rw &= e & RW != 0;
            us &= e & US != 0;
            xd |= e & XD != 0 && self.nxe;
            let large = e & PS != 0;
            // PS is reserved in a PML4E (level 3 of 4-level paging).
            if large && level == 3 {
                return Err(fault(pf::P | pf::RSVD));
            }
            let page_size = match level {
                0 => 4096,
                1 if large => 2 << 20,
                2 if large => 1 << 30,
                _ => 0,
            };
            if e & self.reserved_wide(page_size) != 0 {
                return Err(fault(pf::P | pf::RSVD));
            }
            if page_size != 0 {
                let pa = e & self.addr_mask() & !(page_size - 1);
                return Ok((pa, page_size, rw, us, xd));
            }
            table = e & self.addr_mask();
        }
        Err(fault(0))
    }
}

#[cfg(test)]
mod tests;
