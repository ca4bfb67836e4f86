//! Guest memory as the VMI personality reads and writes it: the trait and
//! its two in-crate implementations (this process's memory for a guest
//! kernel running in-process, and a block of simulated RAM).

use std::sync::Mutex;

/// Guest linear memory as the hypervisor reads and writes it.
///
/// A safe trait: callers get bytes and a bool back, nothing they
/// dereference (an implementation must be sound for every address itself).
pub trait GuestMemory {
    /// Read `buf.len()` bytes at `addr`; false if any is not accessible.
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool;
    /// Write `data` at `addr`, all of it or nothing: false, with no byte
    /// written, if any byte is not accessible. (The personality relies on
    /// it: a 16-byte descriptor or gate is one write, so a refused call
    /// never leaves half an entry in guest memory.)
    fn write(&self, addr: u64, data: &[u8]) -> bool;
}

/// This process's memory: guest linear address = host pointer, for a guest
/// kernel running in-process (its tables are its own memory). Addresses
/// below 64 KiB are refused, so a small bogus pointer gets -EFAULT.
#[derive(Debug)]
pub struct HostGuestMemory {
    _private: (),
}

impl HostGuestMemory {
    /// # Safety
    /// Every pointer the guest passes in a call (tables, DTR operands) must
    /// be valid host memory for what the call reads or writes, and a table
    /// it loads (SetGDT, SetIDT, an LDT) stays valid while loaded: the
    /// in-process backend reads the table GetGDT reports.
    pub unsafe fn new() -> HostGuestMemory {
        HostGuestMemory { _private: () }
    }

    fn ok(addr: u64, len: usize) -> bool {
        addr >= 0x1_0000 && addr.checked_add(len as u64).is_some()
    }
}

impl GuestMemory for HostGuestMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        if !Self::ok(addr, buf.len()) {
            return false;
        }
        for (i, b) in buf.iter_mut().enumerate() {
            // SAFETY: `new`'s contract: pointers the guest passes are valid.
            *b = unsafe { ((addr as usize + i) as *const u8).read_volatile() };
        }
        true
    }

    fn write(&self, addr: u64, data: &[u8]) -> bool {
        if !Self::ok(addr, data.len()) {
            return false;
        }
        for (i, &b) in data.iter().enumerate() {
            // SAFETY: as for `read`.
            unsafe { ((addr as usize + i) as *mut u8).write_volatile(b) };
        }
        true
    }
}

/// A window of this process's memory: guest linear address = host pointer,
/// as [`HostGuestMemory`], but only `[base, base + len)` is the guest's;
/// anything else gets -EFAULT. For in-process guests whose descriptors may
/// hold any base (a fuzzer, a hostile test): a table, TSS or LDT base
/// outside the window is refused instead of dereferenced.
#[derive(Debug)]
pub struct HostWindow {
    base: u64,
    len: u64,
}

impl HostWindow {
    /// # Safety
    /// `[base, base + len)` must be valid host memory for reads and writes
    /// (through volatile byte accesses) while the window is in use, and
    /// every table the guest loads must lie inside it (as for
    /// [`HostGuestMemory::new`]: the in-process backend reads the table
    /// GetGDT reports).
    pub unsafe fn new(base: *mut u8, len: usize) -> HostWindow {
        HostWindow {
            base: base as u64,
            len: len as u64,
        }
    }

    fn ok(&self, addr: u64, len: usize) -> bool {
        addr >= self.base
            && addr
                .checked_add(len as u64)
                .is_some_and(|end| end <= self.base.saturating_add(self.len))
    }
}

impl GuestMemory for HostWindow {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        if !self.ok(addr, buf.len()) {
            return false;
        }
        for (i, b) in buf.iter_mut().enumerate() {
            // SAFETY: inside the window, valid by `new`'s contract.
            *b = unsafe { ((addr as usize + i) as *const u8).read_volatile() };
        }
        true
    }

    fn write(&self, addr: u64, data: &[u8]) -> bool {
        if !self.ok(addr, data.len()) {
            return false;
        }
        for (i, &b) in data.iter().enumerate() {
            // SAFETY: as for `read`.
            unsafe { ((addr as usize + i) as *mut u8).write_volatile(b) };
        }
        true
    }
}

/// A block of simulated guest RAM at a chosen linear base (for 32-bit
/// guests and for tests that need exact addresses).
#[derive(Debug)]
pub struct RamMemory {
    base: u64,
    bytes: Mutex<Vec<u8>>,
}

impl RamMemory {
    /// `size` zeroed bytes at linear address `base`.
    pub fn new(base: u64, size: usize) -> RamMemory {
        RamMemory {
            base,
            bytes: Mutex::new(vec![0; size]),
        }
    }

    fn range(&self, addr: u64, len: usize) -> Option<std::ops::Range<usize>> {
        let off = usize::try_from(addr.checked_sub(self.base)?).ok()?;
        let end = off.checked_add(len)?;
        let size = self.bytes.lock().unwrap_or_else(|e| e.into_inner()).len();
        (end <= size).then_some(off..end)
    }

    /// Read a u64 (0 if outside).
    pub fn read_u64(&self, addr: u64) -> u64 {
        let mut b = [0; 8];
        self.read(addr, &mut b);
        u64::from_le_bytes(b)
    }

    /// Write a u64 (ignored if outside).
    pub fn write_u64(&self, addr: u64, v: u64) {
        self.write(addr, &v.to_le_bytes());
    }
}

impl GuestMemory for RamMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        let Some(r) = self.range(addr, buf.len()) else {
            return false;
        };
        buf.copy_from_slice(&self.bytes.lock().unwrap_or_else(|e| e.into_inner())[r]);
        true
    }

    fn write(&self, addr: u64, data: &[u8]) -> bool {
        let Some(r) = self.range(addr, data.len()) else {
            return false;
        };
        self.bytes.lock().unwrap_or_else(|e| e.into_inner())[r].copy_from_slice(data);
        true
    }
}
