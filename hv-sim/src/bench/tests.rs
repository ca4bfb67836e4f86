//! The table renders (no timed assertions: figures are made up).

use super::*;

fn sample() -> Table {
    let mut s = Section::figures("Dispatch");
    s.floor("plain store", Figure::Ns(0.5))
        .against("direct", Figure::Ns(1.25), "store", Figure::Ns(0.5))
        .missing("installed", "another table | installed")
        .note("a note");
    let mut m = Section::with_columns("Exits", &["operation", "native", "Xen-style"]);
    m.row(["IDT load", "0", "2"]);
    Table {
        machine: Machine {
            cpu: "Test CPU".into(),
            cpus: 2,
            kvm: "PVM".into(),
            load_before: "1.00 0.50 0.25".into(),
            load_after: "2.00 1.00 0.50".into(),
            umip: true,
        },
        sections: vec![s, m],
        goals: vec![
            Goal::new("update_descriptor ≤ 50 ns", Some(true), "40 ns"),
            Goal::new("1 exit per IDT", Some(false), "two calls: scratch page"),
            Goal::new("trap", None, "no KVM"),
        ],
        elapsed: Duration::from_millis(1500),
    }
}

#[test]
fn table_renders_machine_figures_ratios_and_goals() {
    let text = sample().to_string();
    for want in [
        "CPU: Test CPU (2 CPUs online)",
        "/dev/kvm: PVM",
        "1.00 0.50 0.25 at the start, 2.00 1.00 0.50 at the end",
        "### Dispatch",
        "| plain store ",
        "| 0.50 ns ",
        "| store 0.50 ns ",
        "| 2.50× ",
        "another table / installed",
        "- a note",
        "### Exits",
        "| IDT load  | 0      | 2         |",
        "| update_descriptor ≤ 50 ns | met ",
        "| NOT met ",
        "| not measured ",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    // Every table line of a section has the same width (padded columns).
    let dispatch: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("### Dispatch"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .collect();
    assert_eq!(dispatch.len(), 5);
    let w = dispatch[0].chars().count();
    assert!(
        dispatch.iter().all(|l| l.chars().count() == w),
        "{dispatch:#?}"
    );
}

#[test]
fn figures_and_ratios_format() {
    assert_eq!(Figure::Ns(2.71).to_string(), "2.71 ns");
    assert_eq!(Figure::Ns(42.42).to_string(), "42.4 ns");
    assert_eq!(Figure::Ns(25_500.0).to_string(), "25.5 µs");
    assert_eq!(Figure::Us(9.0).to_string(), "9 µs");
    assert_eq!(Figure::Count(1000.0).to_string(), "1000");
    assert_eq!(ratio(10.0, 4.0), "2.50×");
    assert_eq!(ratio(1.0, 0.0), "-");
    assert_eq!(ratio(f64::NAN, 1.0), "-");
    assert_eq!(median(&mut []), 0.0);
    assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
}
