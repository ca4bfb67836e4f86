//! The guest's linear memory through its page tables, as hv-sim's
//! instruction emulator ([`crate::emulate`]) reads and writes it on a real
//! vCPU (the trap-and-emulate personality, [`super::trap`]).

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{PTE_P, PTE_RW, PTE_U};
use crate::emulate::{Access, GuestMemory, PageFault};

const PTE_PS: u64 = 1 << 7;
const PTE_ADDR: u64 = 0x000F_FFFF_FFFF_F000;

/// The guest's linear memory through the page tables the vCPU runs on
/// (CR3), as the emulator reads and writes it. Every access the guest can
/// make is a user access in reality (it runs in ring 3), so a page is
/// reachable only with U set at every level — hv-sim's own pages (the real
/// tables, the page tables) are not, whatever address the guest names.
/// Writes need RW at every level (CR0.WP). A failure is a #PF with P, W and
/// I/D set as the CPU would for a supervisor access (the guest believes it
/// runs in ring 0).
pub struct PagingMemory<'a> {
    mem: &'a GuestMemoryMmap,
    cr3: u64,
}

impl<'a> PagingMemory<'a> {
    /// Guest memory through the paging rooted at `cr3`.
    pub fn new(mem: &'a GuestMemoryMmap, cr3: u64) -> Self {
        PagingMemory { mem, cr3 }
    }

    /// Translate `va` for `access`: the guest-physical address.
    pub fn translate(&self, va: u64, access: Access) -> Result<u64, PageFault> {
        let write = access.is_write();
        let fault = |present: bool| PageFault {
            addr: va,
            error_code: u32::from(present)
                | u32::from(write) << 1
                | u32::from(access == Access::Fetch) << 4,
        };
        if !pvops::table::is_canonical(va) {
            return Err(fault(false));
        }
        let mut table = self.cr3 & PTE_ADDR;
        for level in (0..4u32).rev() {
            let idx = (va >> (12 + 9 * level)) & 511;
            let e: u64 = self
                .mem
                .read_obj(GuestAddress(table + idx * 8))
                .map_err(|_| fault(false))?;
            if e & PTE_P == 0 {
                return Err(fault(false));
            }
            // hv-sim's own write protection (PTE_HV_WP) is not the guest's:
            // the page is writable as the guest sees it.
            let writable = e & PTE_RW != 0 || (level == 0 && e & super::trap::PTE_HV_WP != 0);
            if e & PTE_U == 0 || (write && !writable) {
                return Err(fault(true));
            }
            if level == 0 || (level <= 2 && e & PTE_PS != 0) {
                let size_bits = 12 + 9 * level;
                let mask = (1u64 << size_bits) - 1;
                return Ok((e & PTE_ADDR & !mask) | (va & mask));
            }
            table = e & PTE_ADDR;
        }
        Err(fault(false))
    }

    /// `n` u64s at `base` as an implicit (descriptor-table) read: one
    /// translation and one copy per page; a page that cannot be read reads
    /// as zeros (not present).
    pub fn read_u64s_or_zero(&self, base: u64, n: u64) -> Vec<u64> {
        let len = (n * 8) as usize;
        let mut bytes = vec![0u8; len];
        let mut done = 0usize;
        while done < len {
            let va = base.wrapping_add(done as u64);
            let k = ((4096 - (va & 0xfff)) as usize).min(len - done);
            if let Ok(pa) = self.translate(va, Access::ImplicitRead)
                && self
                    .mem
                    .read_slice(&mut bytes[done..done + k], GuestAddress(pa))
                    .is_err()
            {
                bytes[done..done + k].fill(0);
            }
            done += k;
        }
        bytes
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
            .collect()
    }

    fn chunks(
        &self,
        addr: u64,
        len: usize,
        access: Access,
        mut f: impl FnMut(u64, usize, usize) -> bool,
    ) -> Result<(), PageFault> {
        let mut done = 0usize;
        while done < len {
            let va = addr.wrapping_add(done as u64);
            let n = ((4096 - (va & 0xfff)) as usize).min(len - done);
            let pa = self.translate(va, access)?;
            if !f(pa, done, n) {
                return Err(PageFault {
                    addr: va,
                    error_code: u32::from(access.is_write()) << 1,
                });
            }
            done += n;
        }
        Ok(())
    }
}

impl GuestMemory for PagingMemory<'_> {
    fn read(&self, addr: u64, buf: &mut [u8], access: Access) -> Result<(), PageFault> {
        let len = buf.len();
        self.chunks(addr, len, access, |pa, off, n| {
            self.mem
                .read_slice(&mut buf[off..off + n], GuestAddress(pa))
                .is_ok()
        })
    }

    fn write(&self, addr: u64, data: &[u8], access: Access) -> Result<(), PageFault> {
        // Translate every page first: nothing is written if any page faults.
        self.chunks(addr, data.len(), access, |_, _, _| true)?;
        self.chunks(addr, data.len(), access, |pa, off, n| {
            self.mem
                .write_slice(&data[off..off + n], GuestAddress(pa))
                .is_ok()
        })
    }
}
