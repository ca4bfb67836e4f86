//! A mock vCPU and a mock guest memory for the emulator's tests and
//! benchmarks.
//!
//! [`MockMemory`] is a sparse set of 4 KiB pages, each present or not and
//! writable or not, with the #PF error codes a supervisor access would get
//! (P = protection violation, W = write, I = instruction fetch).
//! [`MockCpu`] holds sixteen registers, RIP, the segment caches, EFER.LMA,
//! FS/GS bases, a virtual CPL and UMIP, and the descriptor-table registers;
//! its default is 64-bit mode. [`MockPhys`] is sparse physical memory for
//! the page walker ([`super::walk`], [`super::paged`]).

use std::cell::RefCell;
use std::collections::BTreeMap;

use super::segment::SegmentCache;
use super::walk::PhysicalMemory;
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

/// A flat 4 GiB segment's descriptor: 64-bit code (L).
pub const CODE64: u64 = 0x00af_9b00_0000_ffff;
/// A flat 4 GiB 32-bit code segment (D, readable).
pub const CODE32: u64 = 0x00cf_9b00_0000_ffff;
/// A 64 KiB 16-bit code segment (readable), base 0.
pub const CODE16: u64 = 0x0000_9b00_0000_ffff;
/// A flat 4 GiB writable data segment (B, G).
pub const DATA32: u64 = 0x00cf_9300_0000_ffff;

/// A mock vCPU (64-bit mode by default: EFER.LMA, CS.L).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MockCpu {
    /// rax … r15.
    pub gprs: [u64; 16],
    /// RIP of the instruction being emulated.
    pub rip: u64,
    /// FS base (all modes; overrides `segs`' FS base).
    pub fs_base: u64,
    /// GS base (all modes; overrides `segs`' GS base).
    pub gs_base: u64,
    /// ES, CS, SS, DS, FS, GS hidden parts.
    pub segs: [SegmentCache; 6],
    /// EFER.LMA.
    pub lma: bool,
    /// Virtual CPL.
    pub cpl: u8,
    /// Virtual CR4.UMIP.
    pub umip: bool,
    /// Descriptor-table registers.
    pub dt: DtRegisters,
}

impl Default for MockCpu {
    fn default() -> MockCpu {
        MockCpu::with_segments(true, CODE64, DATA32)
    }
}

impl MockCpu {
    /// A vCPU with CS loaded from `code`, SS/DS/ES/FS/GS from `data`.
    pub fn with_segments(lma: bool, code: u64, data: u64) -> MockCpu {
        let d = SegmentCache::from_descriptor(data);
        let mut segs = [d; 6];
        segs[Segment::Cs as usize] = SegmentCache::from_descriptor(code);
        MockCpu {
            gprs: [0; 16],
            rip: 0,
            fs_base: 0,
            gs_base: 0,
            segs,
            lma,
            cpl: 0,
            umip: false,
            dt: DtRegisters::default(),
        }
    }

    /// Legacy protected mode, flat 32-bit code and data.
    pub fn protected32() -> MockCpu {
        MockCpu::with_segments(false, CODE32, DATA32)
    }

    /// Legacy protected mode, 16-bit code (64 KiB, base 0), flat data.
    pub fn protected16() -> MockCpu {
        MockCpu::with_segments(false, CODE16, DATA32)
    }

    /// Compatibility mode (EFER.LMA, CS.L = 0, CS.D = 1).
    pub fn compat32() -> MockCpu {
        MockCpu::with_segments(true, CODE32, DATA32)
    }

    /// A segment's hidden part, mutable.
    pub fn seg_mut(&mut self, seg: Segment) -> &mut SegmentCache {
        &mut self.segs[seg as usize]
    }
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

    fn segment(&self, seg: Segment) -> SegmentCache {
        let mut c = self.segs[seg as usize];
        match seg {
            Segment::Fs => c.base = self.fs_base,
            Segment::Gs => c.base = self.gs_base,
            _ => {}
        }
        c
    }

    fn long_mode_active(&self) -> bool {
        self.lma
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

/// Sparse physical memory: 4 KiB pages that exist once written.
#[derive(Default)]
pub struct MockPhys {
    pages: RefCell<BTreeMap<u64, Box<[u8; 4096]>>>,
    /// Addresses of u32/u64 writes (A/D updates), in order.
    writes: RefCell<Vec<u64>>,
}

impl MockPhys {
    /// Store bytes (creating pages).
    pub fn put(&self, pa: u64, data: &[u8]) {
        let mut p = self.pages.borrow_mut();
        for (k, b) in data.iter().enumerate() {
            let a = pa.wrapping_add(k as u64);
            p.entry(a & !0xFFF).or_insert_with(|| Box::new([0; 4096]))[(a & 0xFFF) as usize] = *b;
        }
    }
    /// Store a u32.
    pub fn put_u32(&self, pa: u64, v: u32) {
        self.put(pa, &v.to_le_bytes());
    }
    /// Store a u64.
    pub fn put_u64(&self, pa: u64, v: u64) {
        self.put(pa, &v.to_le_bytes());
    }
    /// Read a u64 (0 where nothing is).
    pub fn get_u64(&self, pa: u64) -> u64 {
        self.read_u64(pa).unwrap_or(0)
    }
    /// The addresses of u32/u64 writes so far (the walker's A/D updates).
    pub fn writes(&self) -> Vec<u64> {
        self.writes.borrow().clone()
    }
}

impl PhysicalMemory for MockPhys {
    fn read_u32(&self, pa: u64) -> Option<u32> {
        let mut b = [0u8; 4];
        self.read_bytes(pa, &mut b)?;
        Some(u32::from_le_bytes(b))
    }
    fn read_u64(&self, pa: u64) -> Option<u64> {
        let mut b = [0u8; 8];
        self.read_bytes(pa, &mut b)?;
        Some(u64::from_le_bytes(b))
    }
    fn write_u32(&self, pa: u64, v: u32) -> Option<()> {
        self.read_u32(pa)?;
        self.writes.borrow_mut().push(pa);
        self.put_u32(pa, v);
        Some(())
    }
    fn write_u64(&self, pa: u64, v: u64) -> Option<()> {
        self.read_u64(pa)?;
        self.writes.borrow_mut().push(pa);
        self.put_u64(pa, v);
        Some(())
    }
    fn read_bytes(&self, pa: u64, buf: &mut [u8]) -> Option<()> {
        let p = self.pages.borrow();
        for (k, b) in buf.iter_mut().enumerate() {
            let a = pa.checked_add(k as u64)?;
            *b = p.get(&(a & !0xFFF))?[(a & 0xFFF) as usize];
        }
        Some(())
    }
    fn write_bytes(&self, pa: u64, data: &[u8]) -> Option<()> {
        let mut b = vec![0u8; data.len()];
        self.read_bytes(pa, &mut b)?;
        self.put(pa, data);
        Some(())
    }
}
