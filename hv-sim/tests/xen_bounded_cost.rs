//! Every hypercall's worst case over the largest domain the tests build
//! (4,096 pages, 16 MiB) does work and allocates memory bounded by its
//! arguments, never by RAM size (issue 10): each case runs at two domain
//! sizes, 1,024 and 4,096 pages, and the largest cost of any one invocation
//! (the call or a continuation the guest re-executes, `CallCost`) must be
//! under a fixed bound and the same at both sizes, while only the number
//! of invocations may grow with the work the guest asked for.
//!
//! Deterministic: work is counted in units (entries, requests, ops
//! examined) and in words of guest RAM touched (every access of the
//! model, `GuestRam`), memory with a counting allocator; nothing is timed.
//! Wall-clock figures for the same cases are in `hv-sim bench`-style rows
//! of `benches/xen_worst_case.rs`.

#[path = "common/xen.rs"]
mod xen_helpers;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use hv_sim::xen::domain::{CallCost, PREEMPT_BUDGET};
use hv_sim::xen::fixtures::spanning_tree;
use hv_sim::xen::*;
use xen_helpers::{hc, map, mfn};

struct Counting;

thread_local! {
    /// Whether this thread's allocations are being counted.
    static COUNTED: Cell<bool> = const { Cell::new(false) };
    /// Bytes this thread allocated while counted (cumulative, frees not
    /// subtracted): per thread, so tests running in parallel do not count
    /// each other's allocations.
    static ALLOCATED: Cell<u64> = const { Cell::new(0) };
}

fn count(bytes: usize) {
    if COUNTED.with(Cell::get) {
        ALLOCATED.with(|a| a.set(a.get() + bytes as u64));
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments,
// which keeps `GlobalAlloc`'s contract; the counter has no effect on the
// memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        count(l.size());
        // SAFETY: forwarded from the caller.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: forwarded from the caller.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        count(new);
        // SAFETY: forwarded from the caller.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static A: Counting = Counting;

/// The two domain sizes; the larger is the largest any test builds.
const SIZES: [usize; 2] = [1024, 4096];

/// Units one invocation may do: the budget, plus what must run before the
/// first preemption point (one L1 table, and the first slot of each level
/// above it), plus the unit that found the budget spent.
const MAX_UNITS: u64 = PREEMPT_BUDGET + 512 + 8;

/// Words of guest RAM one invocation may touch: a few per unit (read an
/// entry, write it back, read its frame) plus a 512-word snapshot of each
/// table validated (at most `MAX_UNITS / 496 + 4` tables, each examining
/// at least 496 slots, or the first slot of each level).
const MAX_WORDS: u64 = 4 * MAX_UNITS + 512 * (MAX_UNITS / 496 + 4);

/// Heap bytes one invocation may allocate: the trace events it adds
/// (bounded: `TRACE_CAP`), the snapshots of the tables it validated, and
/// the strings of a refusal.
const MAX_BYTES_PER_INVOCATION: u64 = 64 * 1024;

const P: u64 = 1;
const RW: u64 = 2;

/// The cost of one hypercall and the bytes it allocated.
#[derive(Debug, Clone, Copy)]
struct Measured {
    cost: CallCost,
    bytes: u64,
    /// Bytes of state the model keeps for what the arguments name, allowed
    /// on top of the per-invocation bound (set_gdt: a shadow page and its
    /// bookkeeping per frame).
    arg_bytes: u64,
}

fn measure(d: &XenDomain, f: impl FnOnce() -> i64) -> (i64, Measured) {
    COUNTED.with(|c| c.set(true));
    let before = ALLOCATED.with(Cell::get);
    let r = f();
    let bytes = ALLOCATED.with(Cell::get) - before;
    COUNTED.with(|c| c.set(false));
    (
        r,
        Measured {
            cost: d.last_call_cost(),
            bytes,
            arg_bytes: 0,
        },
    )
}

/// A page of the domain mapped read-only (to become a table): (va, mfn).
fn ro_page(d: &XenDomain) -> (u64, u64) {
    let va = d.alloc_pages(1);
    assert_eq!(map(d, va, false), 0);
    (va, mfn(d, va))
}

/// One mmuext op `(cmd, arg1)` in a fresh page.
fn ext(d: &XenDomain, list: u64, cmd: u32, arg1: u64) -> i64 {
    assert!(d.host_write_u64(list, u64::from(cmd)));
    assert!(d.host_write_u64(list + 8, arg1));
    hc(d, nr::MMUEXT_OP, &[list, 1, 0, u64::from(DOMID_SELF)])
}

/// A page-table tree over the domain's free pages but `spare`
/// (`hv_sim::xen::fixtures::spanning_tree`, the one the worst-case
/// benchmark measures): (L4 mfn, L3 mfn, tables).
fn tree(d: &XenDomain, pages: usize, spare: usize) -> (u64, u64, usize) {
    assert_eq!(d.pages(), pages);
    let t = spanning_tree(d, spare).unwrap();
    (t.l4, t.l3, t.tables)
}

/// One invocation's work, RAM words and heap bytes under the bounds.
fn check(what: &str, pages: usize, m: Measured) {
    let c = m.cost;
    println!(
        "{what:36} {pages:5} pages: {:6} invocations, max {:5} units, {:6} RAM words, {:9} bytes",
        c.invocations, c.max_units, c.max_ram_words, m.bytes
    );
    assert!(
        c.max_units <= MAX_UNITS,
        "{what} ({pages} pages): {} units in one invocation (bound {MAX_UNITS}): {m:?}",
        c.max_units
    );
    assert!(
        c.max_ram_words <= MAX_WORDS,
        "{what} ({pages} pages): {} RAM words in one invocation (bound {MAX_WORDS}): {m:?}",
        c.max_ram_words
    );
    assert!(
        m.bytes <= c.invocations * MAX_BYTES_PER_INVOCATION + m.arg_bytes,
        "{what} ({pages} pages): {} bytes over {} invocations: {m:?}",
        m.bytes,
        c.invocations
    );
}

/// Each invocation's cost is the same at both sizes (within the slack of
/// where the budget happens to fall), so it does not grow with RAM.
fn same_at_both_sizes(what: &str, small: Measured, large: Measured) {
    let (s, l) = (small.cost, large.cost);
    assert!(
        l.max_units <= s.max_units + 520 && l.max_ram_words <= s.max_ram_words + 4 * 1024,
        "{what}: one invocation's cost grew with RAM: {small:?} at {} pages, {large:?} at {} pages",
        SIZES[0],
        SIZES[1]
    );
}

/// Run `case` on a fresh pv64 domain of each size in [`SIZES`] with
/// `vcpus` vCPUs: it makes its calls and returns each measured one by
/// name. Each is [`check`]ed, the domain's invariants hold afterwards, and
/// each call's cost is [`same_at_both_sizes`].
fn for_each_size(vcpus: usize, case: impl Fn(&XenDomain, usize) -> Vec<(&'static str, Measured)>) {
    let runs = SIZES.map(|pages| {
        let d = XenDomain::pv64(pages, vcpus);
        let runs = case(&d, pages);
        d.check_invariants().unwrap();
        for &(what, m) in &runs {
            check(what, pages, m);
        }
        runs
    });
    assert_eq!(runs[0].len(), runs[1].len());
    for (&(what, small), &(_, large)) in runs[0].iter().zip(&runs[1]) {
        same_at_both_sizes(what, small, large);
    }
}

/// MMUEXT_PIN_L4_TABLE of a tree spanning the domain validates every table
/// in it (`promote_l4_table` recursing down to each L1): preempted, it
/// continues where it stopped, and ends pinned with every table validated,
/// exactly as one long call would.
#[test]
fn pinning_a_tree_that_spans_ram_is_preempted() {
    for_each_size(1, |d, pages| {
        let list = d.alloc_pages(1);
        let (l4, l3, tables) = tree(d, pages, 0);
        let (r, m) = measure(d, || ext(d, list, MMUEXT_PIN_L4_TABLE, l4));
        assert_eq!(r, 0);
        assert!(d.is_pinned(l4));
        assert!(d.frame(l3).unwrap().validated);
        // Each table needs at least 496 units, so the work spans many
        // invocations at the larger size.
        assert!(m.cost.invocations as usize >= tables * 496 / MAX_UNITS as usize);
        d.check_invariants().unwrap();
        // UNPIN drops the last type reference: every table in the tree is
        // demoted (`demote_l*_table` via `old_guest_table`), preemptibly.
        let (r, u) = measure(d, || ext(d, list, MMUEXT_UNPIN_TABLE, l4));
        assert_eq!(r, 0);
        assert!(!d.is_pinned(l4));
        for m in [l4, l3] {
            let f = d.frame(m).unwrap();
            // The one reference left is the direct map's read-only entry.
            assert_eq!((f.type_count, f.validated, f.refs), (0, false, 1), "{f:?}");
        }
        assert!(u.cost.invocations as usize >= tables * 496 / MAX_UNITS as usize);
        d.check_invariants().unwrap();
        // Pinned again: the same validation as the first time.
        assert_eq!(ext(d, list, MMUEXT_PIN_L4_TABLE, l4), 0);
        assert_eq!(d.last_call_cost().invocations, m.cost.invocations);
        vec![("PIN_L4_TABLE", m), ("UNPIN_TABLE", u)]
    });
}

/// MMUEXT_NEW_BASEPTR (`new_guest_cr3`) to an unvalidated tree spanning the
/// domain: the same preemptible validation.
#[test]
fn loading_a_tree_that_spans_ram_as_cr3_is_preempted() {
    for_each_size(1, |d, pages| {
        let list = d.alloc_pages(1);
        // An empty L4 to switch back to.
        let (_, boot) = ro_page(d);
        let (l4, _, _) = tree(d, pages, 0);
        let (r, m) = measure(d, || ext(d, list, MMUEXT_NEW_BASEPTR, l4));
        assert_eq!(r, 0);
        assert_eq!(d.vcpu(0).cr3, Some(l4));
        d.check_invariants().unwrap();
        // To the empty root: the tree loses its last reference.
        let (r, back) = measure(d, || ext(d, list, MMUEXT_NEW_BASEPTR, boot));
        assert_eq!(r, 0);
        assert_eq!(d.frame(l4).unwrap().type_count, 0);
        vec![("NEW_BASEPTR", m), ("NEW_BASEPTR (old root demoted)", back)]
    });
}

/// mmu_update writing an L4 entry that names an unvalidated L3 spanning the
/// domain (`mod_l4_entry` → `get_page_from_l4e`, preemptible): the request
/// is re-executed until the L3 is validated, then written once.
#[test]
fn an_mmu_update_promoting_a_subtree_that_spans_ram_is_preempted() {
    for_each_size(1, |d, pages| {
        let list = d.alloc_pages(1);
        let (top_va, top) = ro_page(d);
        assert_eq!(ext(d, list, MMUEXT_PIN_L4_TABLE, top), 0);
        let (_, l3, _) = tree(d, pages, 0);
        assert!(d.host_write_u64(list + 1024, top << 12));
        assert!(d.host_write_u64(list + 1032, l3 << 12 | P | RW));
        let done = list + 2048;
        let update = || {
            hc(
                d,
                nr::MMU_UPDATE,
                &[list + 1024, 1, done, u64::from(DOMID_SELF)],
            )
        };
        let (r, m) = measure(d, update);
        assert_eq!(r, 0);
        assert_eq!(d.host_read_u64(done), Some(1));
        assert_eq!(d.host_read_u64(top_va).unwrap() & !0xfff, l3 << 12);
        assert!(d.frame(l3).unwrap().validated);
        d.check_invariants().unwrap();
        // Clearing the entry drops the subtree (`put_page_from_l4e` with
        // PTF_defer: `old_guest_table`).
        assert!(d.host_write_u64(list + 1032, 0));
        let (r, clear) = measure(d, update);
        assert_eq!(r, 0);
        assert_eq!(d.host_read_u64(done), Some(1));
        assert_eq!(d.frame(l3).unwrap().type_count, 0);
        vec![
            ("mmu_update(L4 entry)", m),
            ("mmu_update(L4 entry cleared)", clear),
        ]
    });
}

/// Long batches: an mmuext_op and an mmu_update whose lists fill most of
/// the domain's RAM are cut into invocations of at most the budget, `done`
/// counting on across them.
#[test]
fn batches_as_long_as_ram_are_preempted() {
    for_each_size(1, |d, pages| {
        let ops = (pages as u64 - 64) * 4096 / 24;
        let list = d.alloc_pages(pages - 64);
        let done = d.alloc_pages(1);
        for i in 0..ops {
            assert!(d.host_write_u64(list + i * 24, u64::from(MMUEXT_TLB_FLUSH_LOCAL)));
        }
        let (r, m) = measure(d, || {
            hc(d, nr::MMUEXT_OP, &[list, ops, done, u64::from(DOMID_SELF)])
        });
        assert_eq!(r, 0);
        assert_eq!(d.host_read_u64(done).map(|x| x as u32), Some(ops as u32));
        assert_eq!(m.cost.invocations, ops.div_ceil(PREEMPT_BUDGET));
        // mmu_update: MMU_MACHPHYS_UPDATE requests for one frame.
        let reqs = (pages as u64 - 64) * 4096 / 16;
        let m0 = mfn(d, done);
        for i in 0..reqs {
            assert!(d.host_write_u64(list + i * 16, m0 << 12 | 1));
            assert!(d.host_write_u64(list + i * 16 + 8, i));
        }
        let (r, m2) = measure(d, || {
            hc(
                d,
                nr::MMU_UPDATE,
                &[list, reqs, done, u64::from(DOMID_SELF)],
            )
        });
        assert_eq!(r, 0);
        assert_eq!(d.host_read_u64(done).map(|x| x as u32), Some(reqs as u32));
        assert_eq!(d.machphys_entry(m0), Some(reqs - 1));
        assert_eq!(m2.cost.invocations, reqs.div_ceil(PREEMPT_BUDGET));
        vec![
            ("mmuext_op(TLB_FLUSH_LOCAL × RAM)", m),
            ("mmu_update(MACHPHYS × RAM)", m2),
        ]
    });
}

/// A multicall whose entries pin trees spanning the domain: each preempted
/// sub-call rewrites its entry and the multicall resumes there.
#[test]
fn a_multicall_of_pins_is_preempted_inside_its_entries() {
    for_each_size(1, |d, pages| {
        let list = d.alloc_pages(1);
        let mc = d.alloc_pages(1);
        // Two trees, each half the domain.
        let (a, _, _) = tree(d, pages, pages / 2);
        let (b, _, _) = tree(d, pages, 0);
        for (k, m) in [a, b].into_iter().enumerate() {
            let ops = list + 64 * k as u64;
            assert!(d.host_write_u64(ops, u64::from(MMUEXT_PIN_L4_TABLE)));
            assert!(d.host_write_u64(ops + 8, m));
            let e = mc + 64 * k as u64;
            assert!(d.host_write_u64(e, nr::MMUEXT_OP));
            assert!(d.host_write_u64(e + 16, ops));
            assert!(d.host_write_u64(e + 24, 1));
            assert!(d.host_write_u64(e + 40, u64::from(DOMID_SELF)));
        }
        let (r, m) = measure(d, || hc(d, nr::MULTICALL, &[mc, 2]));
        assert_eq!(r, 0);
        assert_eq!(d.host_read_u64(mc + 8), Some(0));
        assert_eq!(d.host_read_u64(mc + 64 + 8), Some(0));
        assert!(d.is_pinned(a) && d.is_pinned(b));
        vec![("multicall(PIN_L4 × 2)", m)]
    });
}

/// The calls whose size the arguments fix, at their largest: set_gdt of 14
/// frames (7,168 descriptors, up to `FIRST_RESERVED_GDT_ENTRY`, every one
/// validated) and set_trap_table
/// filling most of RAM (its terminator the zeroes after it).
#[test]
fn the_largest_fixed_size_calls_are_bounded() {
    for_each_size(1, |d, pages| {
        let frames: Vec<u64> = (0..14).map(|_| ro_page(d).1).collect();
        let (r, mut gdt) = measure(d, || xen_helpers::set_gdt(d, &frames, 7168));
        assert_eq!(r, 0);
        // 14 frames: the model keeps a 4 KiB shadow of each (xen/shadow.rs),
        // so the call may allocate in proportion to its frame list.
        gdt.arg_bytes = 14 * 8192;
        let n = (pages as u64 - 64) * 4096 / 16;
        let t = d.alloc_pages(pages - 64);
        for i in 0..n {
            assert!(d.host_write_u64(t + i * 16, (i % 256) | 0xe033 << 16));
            assert!(d.host_write_u64(t + i * 16 + 8, 0xffff_8000_0000_0000 + i));
        }
        let (r, tt) = measure(d, || hc(d, nr::SET_TRAP_TABLE, &[t]));
        assert_eq!(r, 0);
        assert_eq!(tt.cost.invocations, (n + 1).div_ceil(PREEMPT_BUDGET));
        vec![("set_gdt(7168)", gdt), ("set_trap_table(RAM)", tt)]
    });
}

/// A preempted validation that fails at the last entry of the last L1,
/// after many invocations: the call fails as one long call would, and
/// every reference the earlier invocations took is released again
/// (preemptibly) before it returns.
#[test]
fn a_validation_failing_after_many_invocations_releases_everything() {
    let pages = SIZES[1];
    let d = XenDomain::pv64(pages, 1);
    let list = d.alloc_pages(1);
    let (l4, l3, _) = tree(&d, pages, 0);
    // The last L1 is the last page the tree took.
    let last_l1 = d.alloc_pages(0) - 4096;
    let l1 = mfn(&d, last_l1);
    let before: Vec<FrameInfo> = [l4, l3, l1].map(|m| d.frame(m).unwrap()).to_vec();
    assert!(d.host_write_u64(last_l1 + 511 * 8, 0xdead_0000 << 12 | P));
    let (r, m) = measure(&d, || ext(&d, list, MMUEXT_PIN_L4_TABLE, l4));
    assert!(r < 0, "{r}");
    assert!(m.cost.invocations > 1000, "{m:?}");
    check("PIN_L4_TABLE failing at the end", pages, m);
    assert!(!d.is_pinned(l4));
    for (m, b) in [l4, l3, l1].into_iter().zip(before) {
        let f = d.frame(m).unwrap();
        assert_eq!(
            (f.type_count, f.validated, f.refs),
            (0, false, b.refs),
            "{f:?}"
        );
    }
    d.check_invariants().unwrap();
}

/// VCPUOP_initialise whose root (`ctrlreg[3]`) is a tree spanning the
/// domain: `arch_set_info_guest` takes the root type preemptibly and
/// `do_vcpu_op` re-executes the call with the same arguments
/// (`hypercall_create_continuation(__HYPERVISOR_vcpu_op, "iih", ...)`),
/// until the vCPU is initialised on the validated root.
#[test]
fn vcpu_initialise_on_a_root_that_spans_ram_is_preempted() {
    // Offsets in the 64-bit `vcpu_guest_context` (public/arch-x86/xen.h,
    // xen-x86_64.h): the common ones tests/xen_vcpu_op.rs uses.
    use xen_helpers::vcpu_ctx::{
        CS, CTRLREG, FLAGS, KERNEL_SS, RIP, RSP, SS, VCPU_OP, VGCF_IN_KERNEL,
    };
    for_each_size(2, |d, pages| {
        let ctx = d.alloc_pages(2);
        let (l4, _, _) = tree(d, pages, 0);
        for (off, v) in [
            (FLAGS, VGCF_IN_KERNEL),
            (RIP, 0xffff_ffff_8100_1000),
            (RSP, 0xffff_ffff_8120_0000),
            (CS, 0xe033),
            (SS, 0xe02b),
            (KERNEL_SS, 0xe02b),
            (CTRLREG + 3 * 8, l4 << 12),
        ] {
            assert!(d.host_write_u64(ctx + off, v));
        }
        let (r, m) = measure(d, || hc(d, VCPU_OP, &[0, 1, ctx]));
        assert_eq!(r, 0);
        let v = d.vcpu(1);
        assert!(v.initialised);
        assert_eq!(v.cr3, Some(l4));
        assert!(m.cost.invocations > 100, "{m:?}");
        vec![("vcpu_op(VCPUOP_initialise)", m)]
    });
}
