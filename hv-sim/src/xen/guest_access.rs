//! Guest memory as Xen's `copy_from_guest` / `copy_to_guest` see it
//! (`arch/x86/usercopy.c`, `include/xen/guest_access.h`): guest virtual
//! addresses through the domain's mappings, a page at a time, with Xen's
//! partial-copy rules on a fault.

use super::*;

impl Inner {
    pub(super) fn addr_ok(&self, a: u64) -> bool {
        match self.abi {
            Abi::Pv64 => addr_ok64(a),
            Abi::Pv32 => true,
        }
    }

    pub(crate) fn va_page(&self, va: u64) -> Option<usize> {
        let off = va.checked_sub(self.va_base)?;
        let p = off / PAGE_SIZE as u64;
        (p < self.pages() as u64).then_some(p as usize)
    }

    /// Guest VA → (pfn, offset) through the guest mappings.
    pub(super) fn translate(&self, va: u64, write: bool) -> Option<(usize, usize)> {
        if !self.addr_ok(va) {
            return None;
        }
        if self.abi == Abi::Pv32 && va > 0xFFFF_FFFF {
            return None;
        }
        let pte = self.ptes[self.va_page(va)?];
        if pte & PTE_P == 0 || (write && pte & PTE_RW == 0) {
            return None;
        }
        let pfn = self.m2p((pte & PTE_MFN_MASK) >> 12)?;
        Some((pfn, (va as usize) & (PAGE_SIZE - 1)))
    }

    /// The guest-virtual range `va..va + len` as (pfn, offset, length)
    /// pieces, one per page, through the guest mappings; `Err(done)` with
    /// the bytes before the first unmapped (or, `write`, read-only) one.
    pub(super) fn pieces(
        &self,
        va: u64,
        len: usize,
        write: bool,
        mut each: impl FnMut(usize, usize, usize, usize),
    ) -> Result<(), usize> {
        let mut done = 0;
        while done < len {
            let t = va
                .checked_add(done as u64)
                .and_then(|a| self.translate(a, write));
            let Some((pfn, off)) = t else {
                return Err(done);
            };
            let n = (PAGE_SIZE - off).min(len - done);
            each(done, pfn, off, n);
            done += n;
        }
        Ok(())
    }

    /// Bytes `off..off + out.len()` of frame `pfn` as Xen's memory holds
    /// them (a typed frame's shadow).
    pub(super) fn read_frame(&self, pfn: usize, off: usize, out: &mut [u8]) {
        self.ram.read_bytes(pfn, off, out);
        if self.shadows.contains_key(pfn) {
            for (i, b) in out.iter_mut().enumerate() {
                let a = off + i;
                let w = self.slot(pfn, a / 8).to_le_bytes();
                *b = w[a % 8];
            }
        }
    }

    /// Xen's `copy_from_guest`: all of `buf`, a page at a time, or `Err`.
    pub(crate) fn load_bytes(&self, va: u64, buf: &mut [u8]) -> Result<(), ()> {
        let len = buf.len();
        self.pieces(va, len, false, |at, pfn, off, n| {
            self.read_frame(pfn, off, &mut buf[at..at + n]);
        })
        .map_err(|_| ())
    }

    /// Store through the guest mappings.
    ///
    /// `guest = true`: a CPU store by the guest, all or nothing (a store
    /// that faults on any byte writes none). `guest = false`: Xen's
    /// `copy_to_guest` (`rep movsb` with an exception fix-up,
    /// `lib/copy-guest.c`): bytes before the first faulting one are written.
    pub(super) fn store_bytes(&self, va: u64, data: &[u8], guest: bool) -> Result<(), ()> {
        if guest && self.pieces(va, data.len(), true, |_, _, _, _| {}).is_err() {
            return Err(());
        }
        self.pieces(va, data.len(), true, |at, pfn, off, n| {
            self.ram.write_bytes(pfn, off, &data[at..at + n]);
        })
        .map_err(|_| ())
    }

    /// Xen's `copy_from_guest` into `buf`: on a fault the bytes read so far
    /// are kept and the rest is zero-filled (`copy_from_guest_pv`).
    pub(super) fn load_bytes_padded(&self, va: u64, buf: &mut [u8]) -> Result<(), ()> {
        let len = buf.len();
        let r = self.pieces(va, len, false, |at, pfn, off, n| {
            self.read_frame(pfn, off, &mut buf[at..at + n]);
        });
        match r {
            Ok(()) => Ok(()),
            Err(done) => {
                buf[done..].fill(0);
                Err(())
            }
        }
    }

    pub(super) fn load_u64(&self, va: u64) -> Result<u64, ()> {
        let mut b = [0u8; 8];
        self.load_bytes(va, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    pub(super) fn load_u32(&self, va: u64) -> Result<u32, ()> {
        let mut b = [0u8; 4];
        self.load_bytes(va, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// Guest "long" (8 bytes pv64, 4 bytes pv32).
    pub(super) fn long_size(&self) -> u64 {
        match self.abi {
            Abi::Pv64 => 8,
            Abi::Pv32 => 4,
        }
    }

    pub(super) fn load_long(&self, va: u64) -> Result<u64, ()> {
        match self.abi {
            Abi::Pv64 => self.load_u64(va),
            Abi::Pv32 => self.load_u32(va).map(u64::from),
        }
    }
}

impl XenDomain {
    /// A guest store of 8 bytes at `va` through its page tables: needs a
    /// present, writable mapping (else the #PF the CPU would raise). The
    /// bytes land in the mapped frame.
    pub fn guest_write_u64(&self, va: u64, value: u64) -> Result<(), GuestFault> {
        let g = self.lock();
        g.store_bytes(va, &value.to_le_bytes(), true)
            .map_err(|()| GuestFault {
                vector: 14,
                error_code: 0x3,
                cr2: Some(va),
                reason: format!("no writable mapping for va {va:#x}"),
            })
    }

    /// A guest load of 8 bytes at `va` through its page tables.
    pub fn guest_read_u64(&self, va: u64) -> Option<u64> {
        let g = self.lock();
        let mut b = [0u8; 8];
        g.load_bytes(va, &mut b).ok()?;
        Some(u64::from_le_bytes(b))
    }

    /// Write 8 bytes at `va` straight into the host memory of the direct
    /// map, bypassing the guest's page tables (what a buggy in-process
    /// kernel does when it writes a table it made read-only). Returns false
    /// if `va` is outside RAM or unaligned.
    pub fn host_write_u64(&self, va: u64, value: u64) -> bool {
        let g = self.lock();
        match g.va_page(va) {
            Some(p) if va.is_multiple_of(8) => {
                g.ram.write_u64(p, (va as usize) & (PAGE_SIZE - 1), value);
                true
            }
            _ => false,
        }
    }

    /// Read 8 bytes from the host memory of the direct map at `va`.
    pub fn host_read_u64(&self, va: u64) -> Option<u64> {
        let g = self.lock();
        match g.va_page(va) {
            Some(p) if va.is_multiple_of(8) => {
                Some(g.ram.read_u64(p, (va as usize) & (PAGE_SIZE - 1)))
            }
            _ => None,
        }
    }
}
