//! Static and dynamic dispatch against a recording backend.
//!
//! The dynamic table is global and installed once per process, so the whole
//! install sequence is one test (this file is its own test binary).

use pvops::{DescriptorOps, Installed, OpsTable, PvError};
use pvops_tests::{ALL_OPS, Recorder, drive_all};

/// The function-pointer table must route each op to the same method with
/// the same arguments as a direct call: drive every op both ways and
/// compare what the backend saw (a miswired slot, or an argument swapped on
/// the way, shows as a difference).
#[test]
fn table_dispatch_reaches_the_matching_op_with_unchanged_arguments() {
    let direct = Recorder::new();
    let direct_results = drive_all(&direct);
    let r: &'static Recorder = Box::leak(Box::new(Recorder::new()));
    let table = OpsTable::new(r);
    let table_results = drive_all(&table);
    assert_eq!(table_results, direct_results);
    assert_eq!(r.ops(), ALL_OPS, "each op exactly once, in order");
    let (d, t) = (direct.calls(), r.calls());
    for (a, b) in d.iter().zip(&t) {
        assert_eq!((a.op, &a.args), (b.op, &b.args));
    }
    assert_eq!(d.len(), t.len());
}

#[test]
fn errors_propagate_unchanged() {
    let r = Recorder::failing(PvError::Hypervisor {
        call: "set_gdt",
        errno: pvops::Errno::EINVAL,
        at: pvops::Slot::None,
    });
    let table = OpsTable::new(Box::leak(Box::new(r)));
    for (op, res) in drive_all(&table) {
        let e = res.expect_err(op);
        assert_eq!(e.to_string(), "hypervisor rejected set_gdt: -EINVAL (-22)");
    }
}

#[test]
fn validation_errors_reach_the_caller_through_both_modes() {
    let gdt = pvops::Gdt::new(0x1000, 4).unwrap();
    let tss = pvops::SystemDescriptor::tss(0x5000, pvops::Tss64::LIMIT).unwrap();
    let r: &'static Recorder = Box::leak(Box::new(Recorder::new()));
    let table = OpsTable::new(r);
    // SAFETY: the recorder touches no memory.
    unsafe {
        let direct = r.write_gdt_entry(&gdt, 3, tss.into());
        let dynamic = table.write_gdt_entry(&gdt, 3, tss.into());
        assert_eq!(direct, dynamic);
        assert!(matches!(
            direct,
            Err(PvError::DoubleSlotPastEnd {
                index: 3,
                entries: 4,
                ..
            })
        ));
        assert!(matches!(
            table.write_gdt_entry(&gdt, 4, pvops::Descriptor::NULL.into()),
            Err(PvError::IndexOutOfRange { .. })
        ));
    }
    assert!(
        r.calls().is_empty(),
        "rejected writes must not reach the backend's store"
    );
}

#[test]
fn dynamic_install_sequence() {
    // Before install: every op is refused with NotInstalled, nothing runs.
    for (op, res) in drive_all(&Installed) {
        assert_eq!(res, Err(PvError::NotInstalled), "{op}");
    }
    assert_eq!(Installed.name(), "(none installed)");
    assert!(PvError::NotInstalled.to_string().contains("install"));

    let first: &'static Recorder = Box::leak(Box::new(Recorder::new()));
    pvops::install(OpsTable::new(first)).unwrap();
    assert_eq!(Installed.name(), "recorder");

    // A second install is refused and the first table stays.
    let second: &'static Recorder = Box::leak(Box::new(Recorder::new()));
    let err = pvops::install(OpsTable::new(second)).unwrap_err();
    assert_eq!(
        err,
        PvError::AlreadyInstalled {
            installed: "recorder"
        }
    );
    assert!(err.to_string().contains("already installed"));

    let results = drive_all(&Installed);
    assert!(results.iter().all(|(_, r)| r.is_ok()));
    assert_eq!(first.ops(), ALL_OPS);
    assert!(second.calls().is_empty());
    assert!(pvops::dispatch::installed().is_some());
}

/// Issue 12: tests install per thread with `with_installed`, so two tests
/// running at once each drive their own backend (the global table, which
/// `dynamic_install_sequence` sets meanwhile, is never used inside).
#[test]
fn scoped_installs_are_per_thread_and_nest() {
    let a: &'static Recorder = Box::leak(Box::new(Recorder::new()));
    let b: &'static Recorder = Box::leak(Box::new(Recorder::new()));
    let (ta, tb) = (OpsTable::new(a), OpsTable::new(b));
    std::thread::scope(|s| {
        for (table, n) in [(&ta, 1), (&tb, 2)] {
            s.spawn(move || {
                pvops::dispatch::with_installed(table, || {
                    for _ in 0..n {
                        Installed.store_tr().unwrap();
                    }
                })
            });
        }
    });
    assert_eq!(a.ops(), ["store_tr"]);
    assert_eq!(b.ops(), ["store_tr", "store_tr"]);

    // Nesting: the inner table inside, the outer one again after, also
    // when the inner closure panics.
    let inner: &'static Recorder = Box::leak(Box::new(Recorder::new()));
    let ti = OpsTable::new(inner);
    pvops::dispatch::with_installed(&ta, || {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pvops::dispatch::with_installed(&ti, || {
                Installed.flush_lazy().unwrap();
                panic!("test panics inside the inner install");
            })
        }));
        assert!(r.is_err());
        Installed.enter_lazy_cpu().unwrap();
    });
    assert_eq!(inner.ops(), ["flush_lazy"]);
    assert_eq!(a.ops(), ["store_tr", "enter_lazy_cpu"]);
}
