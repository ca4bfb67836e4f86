//! Long hypercalls are preempted with continuations, as on Xen
//! (`hypercall_preempt_check` / `hypercall_create_continuation`), so that
//! each invocation does a bounded amount of work whatever the guest's
//! memory holds (issue 10): a trap table or a multicall list the guest
//! makes as long as its RAM is processed in invocations of at most
//! `PREEMPT_BUDGET` units, with the same final result as one long call.

#[path = "common/xen.rs"]
mod xen_helpers;

use hv_sim::xen::domain::PREEMPT_BUDGET;
use hv_sim::xen::*;
use xen_helpers::hc;

/// (name, changes) of every call in the trace.
fn calls(d: &XenDomain) -> Vec<(&'static str, Vec<Change>)> {
    let t = d.trace();
    t.calls()
        .map(|e| match e {
            TraceEvent::Call { name, .. } => (*name, t.changes(e).cloned().collect()),
            _ => unreachable!(),
        })
        .collect()
}

fn traps(changes: &[Change]) -> usize {
    changes
        .iter()
        .filter(|c| matches!(c, Change::Trap { .. }))
        .count()
}

/// pv32: a trap table that runs to the end of the domain's RAM (4,096
/// pages, 2 million 8-byte entries, none a terminator) ends with -EFAULT
/// at the first unmapped byte, as on Xen, after about 1,000 invocations
/// of at most `PREEMPT_BUDGET` entries each; the vIDT holds the last entry
/// written for each vector.
#[test]
fn a_trap_table_as_long_as_ram_is_cut_into_bounded_invocations() {
    let d = XenDomain::pv32(4096, 1);
    let base = d.alloc_pages(1);
    let end = d.va_base() + 4096 * 4096;
    let n = (end - base) / 8;
    for i in 0..n {
        // vector i % 256, flags 0, cs 0xe019 (the flat kernel CS), address.
        let address = 0x1000 + i;
        assert!(d.host_write_u64(base + i * 8, (i % 256) | 0xe019 << 16 | address << 32));
    }
    d.set_trace_limit(None);
    assert_eq!(hc(&d, nr::SET_TRAP_TABLE, &[base]), -EFAULT);
    let c = calls(&d);
    let invocations = n.div_ceil(PREEMPT_BUDGET) as usize;
    assert_eq!(c.len(), invocations);
    assert!(c.iter().all(|(name, _)| *name == "set_trap_table"));
    assert!(c.iter().all(|(_, ch)| traps(ch) <= PREEMPT_BUDGET as usize));
    assert_eq!(c.iter().map(|(_, ch)| traps(ch) as u64).sum::<u64>(), n);
    // Every invocation but the last ends with a continuation to the next
    // entry.
    for (k, (_, ch)) in c[..c.len() - 1].iter().enumerate() {
        let next = base + (k as u64 + 1) * PREEMPT_BUDGET * 8;
        assert!(
            ch.contains(&Change::Preempted {
                op: nr::SET_TRAP_TABLE,
                args: [next, 0, 0, 0, 0, 0]
            }),
            "invocation {k}: {ch:?}"
        );
    }
    let vidt = d.vcpu(0).trap_table;
    for v in 0..256u64 {
        let last = (n - 1) - ((n - 1 - v) % 256);
        assert_eq!(vidt[v as usize].address, 0x1000 + last, "vector {v}");
    }
    d.check_invariants().unwrap();
}

/// pv64: a 3,000-entry trap table with a terminator: result 0, exactly as
/// without preemption, in two invocations.
#[test]
fn a_preempted_trap_table_ends_as_an_unpreempted_one() {
    let d = XenDomain::pv64(64, 1);
    let t = d.alloc_pages(12);
    for i in 0..3000u64 {
        assert!(d.host_write_u64(t + i * 16, (i % 256) | 0xe033 << 16));
        assert!(d.host_write_u64(t + i * 16 + 8, 0xffff_8000_0000_0000 + i));
    }
    assert_eq!(hc(&d, nr::SET_TRAP_TABLE, &[t]), 0);
    assert_eq!(calls(&d).len(), 2);
    let vidt = d.vcpu(0).trap_table;
    assert_eq!(vidt[0].address, 0xffff_8000_0000_0000 + 2816);
    assert_eq!(vidt[200].address, 0xffff_8000_0000_0000 + 2760);
    assert_eq!(vidt[255].address, 0xffff_8000_0000_0000 + 2815);
}

/// A multicall of 3,000 stack_switch entries: every result written, the
/// multicall returns 0, in two invocations (the second starts at entry
/// `PREEMPT_BUDGET`).
#[test]
fn a_long_multicall_continues_where_it_was_preempted() {
    for abi in [Abi::Pv64, Abi::Pv32] {
        let d = XenDomain::new(abi, 256, 1);
        let esize: u64 = if abi == Abi::Pv64 { 64 } else { 32 };
        let list = d.alloc_pages(3000 * esize as usize / 4096 + 1);
        for i in 0..3000u64 {
            let e = list + i * esize;
            if abi == Abi::Pv64 {
                assert!(d.host_write_u64(e, nr::STACK_SWITCH));
                assert!(d.host_write_u64(e + 8, 0x5555));
                assert!(d.host_write_u64(e + 16, 0xe02b));
                assert!(d.host_write_u64(e + 24, 0x1000 + i));
            } else {
                assert!(d.host_write_u64(e, nr::STACK_SWITCH | 0x5555 << 32));
                assert!(d.host_write_u64(e + 8, 0xe021 | (0x1000 + i) << 32));
            }
        }
        assert_eq!(hc(&d, nr::MULTICALL, &[list, 3000]), 0, "{abi}");
        for i in [0u64, 2047, 2048, 2999] {
            let e = list + i * esize;
            let result = if abi == Abi::Pv64 {
                d.host_read_u64(e + 8).unwrap()
            } else {
                d.host_read_u64(e).unwrap() >> 32
            };
            assert_eq!(result, 0, "{abi}: entry {i}");
        }
        assert_eq!(d.vcpu(0).kernel_sp, 0x1000 + 2999, "{abi}");
        let t = d.trace();
        let multicalls: Vec<_> = t
            .calls()
            .filter_map(|e| match e {
                TraceEvent::Call { depth: 0, args, .. } => Some((args[0], args[1])),
                _ => None,
            })
            .collect();
        assert_eq!(
            multicalls,
            [
                (list, 3000),
                (list + PREEMPT_BUDGET * esize, 3000 - PREEMPT_BUDGET)
            ],
            "{abi}"
        );
    }
}

/// A sub-call preempted inside a multicall: Xen copies the continuation's
/// arguments into the entry (with the result field holding the
/// hypercall's number), and the multicall continues from that entry; the
/// entry's final result is the call's own.
#[test]
fn a_preempted_sub_call_rewrites_its_entry_and_the_multicall_resumes_there() {
    let d = XenDomain::pv64(64, 1);
    let t = d.alloc_pages(12);
    for i in 0..3000u64 {
        assert!(d.host_write_u64(t + i * 16, (i % 256) | 0xe033 << 16));
        assert!(d.host_write_u64(t + i * 16 + 8, 0xffff_8000_0000_0000 + i));
    }
    let list = d.alloc_pages(1);
    // Entry 0: stack_switch; entry 1: set_trap_table(t); entry 2:
    // stack_switch.
    for (k, (op, a0, a1)) in [
        (nr::STACK_SWITCH, 0xe02b, 0x1000),
        (nr::SET_TRAP_TABLE, t, 0),
        (nr::STACK_SWITCH, 0xe02b, 0x2000),
    ]
    .into_iter()
    .enumerate()
    {
        let e = list + k as u64 * 64;
        assert!(d.host_write_u64(e, op));
        assert!(d.host_write_u64(e + 8, 0x5555));
        assert!(d.host_write_u64(e + 16, a0));
        assert!(d.host_write_u64(e + 24, a1));
    }
    assert_eq!(hc(&d, nr::MULTICALL, &[list, 3]), 0);
    // The entry now names where the table continued (Xen leaves it so).
    let cont = t + (PREEMPT_BUDGET - 2) * 16;
    assert_eq!(d.host_read_u64(list + 64 + 16), Some(cont));
    assert_eq!(d.host_read_u64(list + 64 + 8), Some(0));
    assert_eq!(d.host_read_u64(list + 128 + 8), Some(0));
    assert_eq!(d.vcpu(0).kernel_sp, 0x2000);
    assert_eq!(
        d.vcpu(0).trap_table[0].address,
        0xffff_8000_0000_0000 + 2816
    );
    // Two multicall invocations: the second starts at entry 1.
    let t2 = d.trace();
    let top: Vec<_> = t2
        .calls()
        .filter_map(|e| match e {
            TraceEvent::Call { depth: 0, args, .. } => Some((args[0], args[1])),
            _ => None,
        })
        .collect();
    assert_eq!(top, [(list, 3), (list + 64, 2)]);
    d.check_invariants().unwrap();
}
