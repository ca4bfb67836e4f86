//! The in-process runs `hv-sim demo` falls back to without KVM: every check
//! passes for the native, Xen-style and VMI-style backends.

#[test]
fn in_process_runs_pass() {
    for report in [
        hv_sim::demo::run_native_in_process(),
        hv_sim::demo::run_xen_in_process(),
        hv_sim::demo::run_vmi_in_process(),
    ] {
        let failed: Vec<_> = report.checks.iter().filter(|c| !c.passed).collect();
        assert!(failed.is_empty(), "{}: {failed:#?}", report.backend);
        assert!(report.checks.len() >= 5, "{}", report.backend);
    }
    assert!(hv_sim::demo::run_xen_in_process().hypercalls > 0);
    assert!(hv_sim::demo::run_vmi_in_process().hypercalls > 0);
}
