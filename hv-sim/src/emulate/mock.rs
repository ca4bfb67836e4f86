//! A mock vCPU and a mock guest memory for the emulator's tests and
//! benchmarks.
//!
//! [`MockMemory`] is a sparse set of 4 KiB pages, each present or not and
//! writable or not, with the #PF error codes a supervisor access would get
//! (P = protection violation, W = write, I = instruction fetch).
//! [`MockCpu`] holds sixteen registers, RIP, FS/GS bases, a virtual CPL
//! and UMIP, and the descriptor-table registers.

use std::cell::RefCell;
use std::collections::BTreeMap;

use super::{Access, CpuState, DtRegisters, GuestMemory, PageFault, Segment};

/// A 4 KiB page of mock memory.
#[derive(Clone)]
struct Page {
    bytes: Box<[u8; 4096]>,
    writable: bool,
}

/// Sparse guest memory.
#[derive(Default)]
pub struct MockMemory {
    pages: RefCell<BTreeMap<u64, Page>>,
    /// Every access, in order: (address, length, access).
    log: RefCell<Vec<(u64, usize, Access)>>,
    /// Don't record accesses (benchmarks).
    quiet: bool,
}

impl MockMemory {
    /// No pages.
    pub fn new() -> MockMemory {
        MockMemory::default()
    }

    /// No pages, and no access log (for benchmarks: the log would grow).
    pub fn quiet() -> MockMemory {
        MockMemory {
            quiet: true,
            ..MockMemory::default()
        }
    }

    /// Map the zeroed page containing `addr`.
    pub fn map(&self, addr: u64, writable: bool) -> &Self {
        self.pages.borrow_mut().insert(
            addr & !0xfff,
            Page {
                bytes: Box::new([0; 4096]),
                writable,
            },
        );
        self
    }

    /// Unmap the page containing `addr`.
    pub fn unmap(&self, addr: u64) {
        self.pages.borrow_mut().remove(&(addr & !0xfff));
    }

    /// Store bytes directly (mapping pages as needed, writable).
    pub fn poke(&self, addr: u64, data: &[u8]) {
        for (k, b) in data.iter().enumerate() {
            let a = addr.wrapping_add(k as u64);
            let mut pages = self.pages.borrow_mut();
            let p = pages.entry(a & !0xfff).or_insert_with(|| Page {
                bytes: Box::new([0; 4096]),
                writable: true,
            });
            p.bytes[(a & 0xfff) as usize] = *b;
        }
    }

    /// Store a little-endian u64 directly.
    pub fn poke_u64(&self, addr: u64, v: u64) {
        self.poke(addr, &v.to_le_bytes());
    }

    /// Read bytes directly (`None` if a page is missing).
    pub fn peek(&self, addr: u64, len: usize) -> Option<Vec<u8>> {
        let pages = self.pages.borrow();
        (0..len)
            .map(|k| {
                let a = addr.wrapping_add(k as u64);
                pages
                    .get(&(a & !0xfff))
                    .map(|p| p.bytes[(a & 0xfff) as usize])
            })
            .collect()
    }

    /// Read a little-endian u64 directly.
    pub fn peek_u64(&self, addr: u64) -> Option<u64> {
        let b = self.peek(addr, 8)?;
        Some(u64::from_le_bytes(b.try_into().ok()?))
    }

    /// The accesses made through [`GuestMemory`] so far.
    pub fn log(&self) -> Vec<(u64, usize, Access)> {
        self.log.borrow().clone()
    }

    fn record(&self, addr: u64, len: usize, access: Access) {
        if !self.quiet {
            self.log.borrow_mut().push((addr, len, access));
        }
    }

    fn check(&self, addr: u64, len: usize, access: Access) -> Result<(), PageFault> {
        let pages = self.pages.borrow();
        let code = |p: bool| {
            u32::from(p)
                | u32::from(access.is_write()) << 1
                | u32::from(access == Access::Fetch) << 4
        };
        for k in 0..len as u64 {
            let a = addr.wrapping_add(k);
            match pages.get(&(a & !0xfff)) {
                None => {
                    return Err(PageFault {
                        addr: a,
                        error_code: code(false),
                    });
                }
                Some(p) if access.is_write() && !p.writable => {
                    return Err(PageFault {
                        addr: a,
                        error_code: code(true),
                    });
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

impl GuestMemory for MockMemory {
    fn read(&self, addr: u64, buf: &mut [u8], access: Access) -> Result<(), PageFault> {
        self.record(addr, buf.len(), access);
        self.check(addr, buf.len(), access)?;
        let pages = self.pages.borrow();
        for (k, b) in buf.iter_mut().enumerate() {
            let a = addr.wrapping_add(k as u64);
            *b = pages
                .get(&(a & !0xfff))
                .map_or(0, |p| p.bytes[(a & 0xfff) as usize]);
        }
        Ok(())
    }

    fn write(&self, addr: u64, data: &[u8], access: Access) -> Result<(), PageFault> {
        self.record(addr, data.len(), access);
        self.check(addr, data.len(), access)?;
        let mut pages = self.pages.borrow_mut();
        for (k, b) in data.iter().enumerate() {
            let a = addr.wrapping_add(k as u64);
            if let Some(p) = pages.get_mut(&(a & !0xfff)) {
                p.bytes[(a & 0xfff) as usize] = *b;
            }
        }
        Ok(())
    }
}

/// A mock vCPU.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MockCpu {
    /// rax … r15.
    pub gprs: [u64; 16],
    /// RIP of the instruction being emulated.
    pub rip: u64,
    /// FS base.
    pub fs_base: u64,
    /// GS base.
    pub gs_base: u64,
    /// Virtual CPL.
    pub cpl: u8,
    /// Virtual CR4.UMIP.
    pub umip: bool,
    /// Descriptor-table registers.
    pub dt: DtRegisters,
}

impl CpuState for MockCpu {
    fn gpr(&self, n: u8) -> u64 {
        self.gprs.get(usize::from(n)).copied().unwrap_or(0)
    }

    fn set_gpr(&mut self, n: u8, value: u64) {
        if let Some(r) = self.gprs.get_mut(usize::from(n)) {
            *r = value;
        }
    }

    fn rip(&self) -> u64 {
        self.rip
    }

    fn segment_base(&self, seg: Segment) -> u64 {
        match seg {
            Segment::Fs => self.fs_base,
            Segment::Gs => self.gs_base,
            _ => 0,
        }
    }

    fn cpl(&self) -> u8 {
        self.cpl
    }

    fn umip(&self) -> bool {
        self.umip
    }

    fn descriptor_tables(&self) -> DtRegisters {
        self.dt
    }

    fn set_descriptor_tables(&mut self, dt: DtRegisters) {
        self.dt = dt;
    }
}
