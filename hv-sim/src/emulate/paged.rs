//! The guest's linear memory through the emulator's own page walker
//! ([`super::walk`]): a [`GuestMemory`] over any [`PhysicalMemory`], for
//! every paging mode (off, 32-bit, PAE, 4-level).
//!
//! An access is split at page boundaries and each page is translated with
//! the access's kind and privilege (SDM vol. 3A 4.6: a data access at CPL
//! 3 is a user access; the CPU's own descriptor-table accesses are
//! supervisor accesses whatever the CPL, 4.6.1 "implicit supervisor-mode
//! accesses"). Every page of an access is translated before any byte is
//! written, so a write that faults on its second page changes no byte
//! (the CPU checks a split store's pages before committing it). The #PF
//! reports the first byte of the page that failed (CR2) and the walker's
//! error code.

use super::walk::{PhysicalMemory, WalkAccess, Walker};
use super::{Access, GuestMemory, PageFault};

/// Linear memory through `walker` over `phys`, for a vCPU at `cpl`.
pub struct Paged<'a, P: PhysicalMemory> {
    /// The physical memory.
    pub phys: &'a P,
    /// The paging mode and control bits.
    pub walker: Walker,
    /// The (virtual) CPL whose explicit accesses these are.
    pub cpl: u8,
}

/// The pieces of an access: (linear, physical, length), at most two pages
/// for the ≤ 16-byte accesses the emulator makes, more in general.
fn pieces<P: PhysicalMemory>(
    m: &Paged<'_, P>,
    addr: u64,
    len: usize,
    access: Access,
) -> Result<Vec<(u64, u64, usize)>, PageFault> {
    let (kind, implicit) = match access {
        Access::Fetch => (WalkAccess::Fetch, false),
        Access::Read => (WalkAccess::Read, false),
        Access::Write => (WalkAccess::Write, false),
        Access::ImplicitRead => (WalkAccess::Read, true),
        Access::ImplicitWrite => (WalkAccess::Write, true),
    };
    let mut out = Vec::new();
    let mut done = 0usize;
    while done < len {
        let la = addr.wrapping_add(done as u64);
        let la = if m.walker.mode == super::walk::PagingMode::Level4 {
            la
        } else {
            la & 0xffff_ffff
        };
        let n = ((4096 - (la & 0xfff)) as usize).min(len - done);
        let t = m
            .walker
            .translate(m.phys, la, kind, m.cpl, implicit)
            .map_err(|f| PageFault {
                addr: f.addr,
                error_code: f.error_code,
            })?;
        out.push((la, t.pa, n));
        done += n;
    }
    Ok(out)
}

impl<P: PhysicalMemory> GuestMemory for Paged<'_, P> {
    fn read(&self, addr: u64, buf: &mut [u8], access: Access) -> Result<(), PageFault> {
        let mut off = 0;
        for (la, pa, n) in pieces(self, addr, buf.len(), access)? {
            self.phys
                .read_bytes(pa, &mut buf[off..off + n])
                .ok_or(PageFault {
                    addr: la,
                    error_code: 0,
                })?;
            off += n;
        }
        Ok(())
    }

    fn write(&self, addr: u64, data: &[u8], access: Access) -> Result<(), PageFault> {
        let mut off = 0;
        for (la, pa, n) in pieces(self, addr, data.len(), access)? {
            self.phys
                .write_bytes(pa, &data[off..off + n])
                .ok_or(PageFault {
                    addr: la,
                    error_code: 0,
                })?;
            off += n;
        }
        Ok(())
    }
}
