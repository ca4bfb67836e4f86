//! Guest pseudo-physical memory: one page-aligned, zeroed host allocation
//! (pfn `i` = page `i`), plus the per-frame bookkeeping of Xen's type system.

use std::alloc::{Layout, alloc_zeroed, dealloc, handle_alloc_error};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

/// Size of a guest page.
pub const PAGE_SIZE: usize = 4096;

/// The host allocation backing a domain's RAM.
pub(crate) struct GuestRam {
    ptr: NonNull<u8>,
    pages: usize,
    /// The allocation's layout; `None` for RAM owned by someone else
    /// ([`GuestRam::external`]), which is never freed here.
    layout: Option<Layout>,
    /// Words read or written so far: the model's work measure (see
    /// [`super::domain::CallCost`]). Updated with a plain load and store
    /// (the domain's lock serialises its accesses), so it costs what a
    /// `Cell` would.
    accesses: AtomicU64,
}

// SAFETY: GuestRam owns its allocation (or borrows it for its lifetime, see
// `external`); all accesses are relaxed atomic 8-byte words, which have no
// thread affinity. The domain serialises its own accesses behind a Mutex.
unsafe impl Send for GuestRam {}
// SAFETY: as above; shared references only permit the same atomic
// accesses, never plain references into the allocation.
unsafe impl Sync for GuestRam {}

impl GuestRam {
    /// Allocate `pages` zeroed pages (at least one).
    pub(crate) fn new(pages: usize) -> GuestRam {
        let pages = pages.max(1);
        let layout = Layout::from_size_align(pages * PAGE_SIZE, PAGE_SIZE)
            .expect("guest RAM size overflows the address space");
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            handle_alloc_error(layout)
        };
        GuestRam {
            ptr,
            pages,
            layout: Some(layout),
            accesses: AtomicU64::new(0),
        }
    }

    /// RAM owned by the caller (a KVM guest's memory): `pages` pages at
    /// `ptr`, never freed by this value.
    ///
    /// # Safety
    /// `ptr` must be page aligned and valid for reads and writes of
    /// `pages * PAGE_SIZE` bytes for as long as this value lives. Other
    /// writers (a vCPU) may change the bytes, but not while a method of the
    /// domain runs.
    pub(crate) unsafe fn external(ptr: NonNull<u8>, pages: usize) -> GuestRam {
        assert!(
            (ptr.as_ptr() as usize).is_multiple_of(PAGE_SIZE),
            "external guest RAM must be page aligned"
        );
        GuestRam {
            ptr,
            pages,
            layout: None,
            accesses: AtomicU64::new(0),
        }
    }

    /// Number of pages.
    pub(crate) fn pages(&self) -> usize {
        self.pages
    }

    /// Words of RAM read or written so far.
    pub(crate) fn accesses(&self) -> u64 {
        self.accesses.load(Ordering::Relaxed)
    }

    /// Host address of page `pfn`'s first byte.
    pub(crate) fn host_addr(&self, pfn: usize) -> usize {
        self.ptr.as_ptr() as usize + pfn * PAGE_SIZE
    }

    /// The aligned 8-byte word at `off & !7` of page `pfn`, as an atomic.
    ///
    /// Every access to guest RAM goes through such words (relaxed loads
    /// and stores compile to plain moves), so hv-sim's reads never race in
    /// the language's sense with a guest backend or vCPU thread that
    /// writes the same RAM with 8-byte atomics (`pvops::table::store_u64`)
    /// or the hardware.
    fn word(&self, pfn: usize, off: usize) -> &AtomicU64 {
        let n = self.accesses.load(Ordering::Relaxed);
        self.accesses.store(n.wrapping_add(1), Ordering::Relaxed);
        assert!(
            pfn < self.pages && off < PAGE_SIZE,
            "GuestRam index out of range"
        );
        let p = self.ptr.as_ptr().wrapping_add(pfn * PAGE_SIZE + (off & !7));
        // SAFETY: pfn < pages and off < PAGE_SIZE, so the word lies inside
        // the allocation, which lives as long as `self`; the base is page
        // aligned, so the word is 8-byte aligned. All accesses to guest RAM
        // are atomic words of this size (see above), so no non-atomic
        // access overlaps it.
        unsafe { AtomicU64::from_ptr(p.cast::<u64>()) }
    }

    /// Read an aligned 8-byte slot (`off` must be a multiple of 8).
    pub(crate) fn read_u64(&self, pfn: usize, off: usize) -> u64 {
        assert!(off.is_multiple_of(8));
        self.word(pfn, off).load(Ordering::Relaxed)
    }

    /// Write an aligned 8-byte slot with one store.
    pub(crate) fn write_u64(&self, pfn: usize, off: usize, v: u64) {
        assert!(off.is_multiple_of(8));
        self.word(pfn, off).store(v, Ordering::Relaxed)
    }

    /// Read `out.len()` bytes from `off` in page `pfn` (within the page),
    /// a word at a time.
    pub(crate) fn read_bytes(&self, pfn: usize, off: usize, out: &mut [u8]) {
        assert!(off + out.len() <= PAGE_SIZE, "read crosses a page");
        let mut i = 0;
        while i < out.len() {
            let a = off + i;
            let w = self.word(pfn, a).load(Ordering::Relaxed).to_le_bytes();
            let n = (8 - a % 8).min(out.len() - i);
            out[i..i + n].copy_from_slice(&w[a % 8..a % 8 + n]);
            i += n;
        }
    }

    /// Write `data` at `off` in page `pfn` (within the page), a word at a
    /// time: whole words with one store, partial words by merging into the
    /// word atomically (the other bytes are kept even if a vCPU writes them
    /// meanwhile).
    pub(crate) fn write_bytes(&self, pfn: usize, off: usize, data: &[u8]) {
        assert!(off + data.len() <= PAGE_SIZE, "write crosses a page");
        let mut i = 0;
        while i < data.len() {
            let a = off + i;
            let n = (8 - a % 8).min(data.len() - i);
            let word = self.word(pfn, a);
            if n == 8 {
                let v = u64::from_le_bytes(data[i..i + 8].try_into().unwrap_or([0; 8]));
                word.store(v, Ordering::Relaxed);
            } else {
                let merge = |old: u64| {
                    let mut b = old.to_le_bytes();
                    b[a % 8..a % 8 + n].copy_from_slice(&data[i..i + n]);
                    Some(u64::from_le_bytes(b))
                };
                let _ = word.fetch_update(Ordering::Relaxed, Ordering::Relaxed, merge);
            }
            i += n;
        }
    }

    /// Copy of one page as 512 slots.
    pub(crate) fn page_slots(&self, pfn: usize) -> Box<[u64; 512]> {
        let mut out = Box::new([0u64; 512]);
        for (i, s) in out.iter_mut().enumerate() {
            *s = self.read_u64(pfn, i * 8);
        }
        out
    }
}

impl Drop for GuestRam {
    fn drop(&mut self) {
        if let Some(layout) = self.layout {
            // SAFETY: allocated in `new` with exactly this layout, freed once.
            unsafe { dealloc(self.ptr.as_ptr(), layout) }
        }
    }
}

/// The type of a frame in Xen's type system (the subset this model needs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PageType {
    /// No type.
    None,
    /// Writable: type count = number of writable guest mappings (plus
    /// transient references).
    Writable,
    /// Segment-descriptor page (GDT/LDT frame).
    SegDesc,
    /// `PGT_l1_page_table`: every entry maps a frame (`get_page_from_l1e`).
    L1,
    /// `PGT_l2_page_table`: every entry names an L1 (or, read-only, an L2:
    /// a linear page table).
    L2,
    /// `PGT_l3_page_table` (also a 32-bit PV guest's root).
    L3,
    /// `PGT_l4_page_table`, `PGT_root_page_table` of a 64-bit PV guest.
    L4,
}

impl PageType {
    /// The root type of a 64-bit PV guest (`PGT_root_page_table`), the name
    /// older hv-sim code used for it.
    #[allow(non_upper_case_globals)]
    pub const PageTable: PageType = PageType::L4;

    /// Xen's name for the type.
    pub const fn name(self) -> &'static str {
        match self {
            PageType::None => "none",
            PageType::Writable => "writable",
            PageType::SegDesc => "seg_desc",
            PageType::L1 => "l1_page_table",
            PageType::L2 => "l2_page_table",
            PageType::L3 => "l3_page_table",
            PageType::L4 => "l4_page_table",
        }
    }

    /// The page-table level (1-4), or `None` for the other types.
    pub const fn level(self) -> Option<u8> {
        match self {
            PageType::L1 => Some(1),
            PageType::L2 => Some(2),
            PageType::L3 => Some(3),
            PageType::L4 => Some(4),
            _ => None,
        }
    }

    /// The page-table type of level `level` (1-4).
    pub const fn table(level: u8) -> Option<PageType> {
        match level {
            1 => Some(PageType::L1),
            2 => Some(PageType::L2),
            3 => Some(PageType::L3),
            4 => Some(PageType::L4),
            _ => None,
        }
    }
}

/// Type-system state of one frame owned by the domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameInfo {
    /// Current type. Kept when the type count drops to zero.
    pub typ: PageType,
    /// Type references.
    pub type_count: u32,
    /// Whether the contents were validated for the current type (page
    /// tables lose it when their type count drops to zero).
    pub validated: bool,
    /// General references (mappings + type users).
    pub refs: u32,
}
