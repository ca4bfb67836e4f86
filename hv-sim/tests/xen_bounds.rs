//! A domain's memory is bounded by the calls' arguments, not by its
//! history: the trace keeps the last `TRACE_CAP` events and counts the
//! rest (issue 10/13: a million `stack_switch` calls used to add 335 MiB).

use hv_sim::xen::trace::TRACE_CAP;
use hv_sim::xen::*;

#[test]
fn the_trace_is_bounded_and_counts_what_it_dropped() {
    let d = XenDomain::pv64(16, 1);
    let n = TRACE_CAP as u64 + 10;
    for i in 0..n {
        assert_eq!(d.hypercall(0, nr::STACK_SWITCH, [0xe02b, i, 0, 0, 0, 0]), 0);
    }
    let t = d.trace();
    assert_eq!(t.events.len(), TRACE_CAP);
    assert_eq!(t.dropped, 10);
    // The newest event is the last call, complete (its result filled in).
    match t.events.back() {
        Some(TraceEvent::Call { args, result, .. }) => {
            assert_eq!(*result, 0);
            assert_eq!(args[1], n - 1, "{args:?}");
        }
        e => panic!("{e:?}"),
    }
    assert!(t.to_string().contains("10 earlier events dropped"));
    d.clear_trace();
    assert_eq!((d.trace().events.len(), d.trace().dropped), (0, 0));
}
