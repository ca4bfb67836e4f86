//! Steady-state memory per hypercall is 0 bytes with the default (bounded)
//! trace (issue 13): once the trace holds `TRACE_CAP` events and changes,
//! further calls allocate nothing that outlives them. Measured with a
//! counting global allocator (live bytes), so it is exact, not timed.
//!
//! Only the test's own thread is counted.

#[path = "common/xen.rs"]
mod xen_helpers;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicI64, Ordering};

use hv_sim::xen::*;
use xen_helpers::hc;

struct Counting;

static LIVE: AtomicI64 = AtomicI64::new(0);

thread_local! {
    /// Count this thread's allocations (only the test's thread sets it, so
    /// the harness's own threads add no noise).
    static COUNTED: Cell<bool> = const { Cell::new(false) };
}

fn count(bytes: i64) {
    if COUNTED.with(Cell::get) {
        LIVE.fetch_add(bytes, Ordering::Relaxed);
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments,
// which keeps `GlobalAlloc`'s contract; the counter has no effect on the
// memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        count(l.size() as i64);
        // SAFETY: forwarded from the caller.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        count(-(l.size() as i64));
        // SAFETY: forwarded from the caller.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        count(new as i64 - l.size() as i64);
        // SAFETY: forwarded from the caller.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static A: Counting = Counting;

/// The trace bound the test uses (the default, `TRACE_CAP`, behaves the
/// same but takes longer to fill).
const LIMIT: usize = 4096;

/// Live heap bytes that `calls` more rounds of `f` leave behind, after a
/// fresh trace and `warm` rounds that fill it.
fn growth(d: &XenDomain, warm: usize, calls: usize, mut f: impl FnMut()) -> i64 {
    d.set_trace_limit(Some(LIMIT));
    for _ in 0..warm {
        f();
    }
    COUNTED.with(|c| c.set(true));
    let before = LIVE.load(Ordering::Relaxed);
    for _ in 0..calls {
        f();
    }
    let g = LIVE.load(Ordering::Relaxed) - before;
    COUNTED.with(|c| c.set(false));
    g
}

#[test]
fn steady_state_memory_per_hypercall_is_zero() {
    const UCODE64: u64 = 0x00af_fb00_0000_ffff;
    let d = XenDomain::pv64(64, 1);
    let gdt = d.alloc_pages(1);
    let m = d.virt_to_mfn(gdt).unwrap();
    assert_eq!(hc(&d, nr::UPDATE_VA_MAPPING, &[gdt, m << 12 | 1, 0]), 0);
    let list = d.alloc_pages(1);
    assert!(d.host_write_u64(list, m));
    assert_eq!(hc(&d, nr::SET_GDT, &[list, 512]), 0);

    // The default bound is the documented one.
    assert!(d.trace().is_bounded());

    // update_descriptor: one event and one change each.
    let mut i = 0u64;
    let g = growth(&d, LIMIT + 10, 20_000, || {
        i = (i + 1) % 512;
        assert_eq!(
            hc(&d, nr::UPDATE_DESCRIPTOR, &[(m << 12) | (i * 8), UCODE64]),
            0
        );
    });
    assert_eq!(g, 0, "update_descriptor: {g} bytes kept by 20,000 calls");

    // A rejected call (its reason is a String): still bounded.
    let g = growth(&d, LIMIT + 10, 20_000, || {
        assert!(hc(&d, nr::UPDATE_DESCRIPTOR, &[m << 12 | 1, UCODE64]) < 0);
    });
    assert_eq!(g, 0, "rejected update_descriptor: {g} bytes kept");

    // set_trap_table of 256 entries: 256 changes a call.
    let t = d.alloc_pages(2);
    for v in 0..256u64 {
        assert!(d.host_write_u64(t + v * 16, v | 0xe033 << 16));
        assert!(d.host_write_u64(t + v * 16 + 8, 0xffff_8000_0000_1000 + v));
    }
    let g = growth(&d, LIMIT + 10, 1_000, || {
        assert_eq!(hc(&d, nr::SET_TRAP_TABLE, &[t]), 0);
    });
    assert_eq!(g, 0, "set_trap_table(256): {g} bytes kept by 1,000 calls");

    // A multicall of 64 update_descriptors.
    let mc = d.alloc_pages(1);
    for k in 0..64u64 {
        assert!(d.host_write_u64(mc + k * 64, nr::UPDATE_DESCRIPTOR));
        assert!(d.host_write_u64(mc + k * 64 + 16, (m << 12) | (k * 8)));
        assert!(d.host_write_u64(mc + k * 64 + 24, UCODE64));
    }
    let g = growth(&d, LIMIT / 64 + 10, 1_000, || {
        assert_eq!(hc(&d, nr::MULTICALL, &[mc, 64]), 0);
    });
    assert_eq!(g, 0, "multicall(64): {g} bytes kept by 1,000 calls");
    d.check_invariants().unwrap();
}
