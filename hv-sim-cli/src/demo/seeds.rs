//! The two seeds' figures (issue 11): the write-protect table (seed 2:
//! N context switches and N timer ticks in three layouts, traps per 1000
//! switches, true and false sharing, and what they cost) and the
//! paravirt vs trap-and-emulate comparison (seed 1: the same switches
//! through Xen-style hypercalls, VMI-style ROM calls, and trapped stores,
//! with where hv-sim's emulation time goes). One boot row in the summary
//! carries the structural checks, so a wrong count fails the demo.

use hv_sim::kvm::trap::TrapMode;
use hv_sim::kvm::trap::workload::{Layout, Way, compare, run_workload, tsc_hz};

use super::report::{Boot, Check, Demo, Outcome};

/// Context switches per layout run.
const N: u16 = 1000;
/// Runs per layout (the fastest is shown).
const REPEAT: usize = 3;
/// Context switches per comparison boot (and twice as many).
const N_COMPARE: u16 = 200;

fn check(name: String, ok: bool, detail: String) -> Check {
    Check {
        name,
        outcome: if ok { Outcome::Pass } else { Outcome::Fail },
        detail,
    }
}

fn layout_name(l: Layout) -> &'static str {
    match l {
        Layout::Separate => "a: each table alone in its page",
        Layout::GdtSharesHotData => "b: GDT page shares hot data",
        Layout::IdtSharesBss => "c: IDT page shares BSS start",
    }
}

/// Run both; the lines to print, and a boot row for the summary.
pub fn run(demo: &mut Demo) -> Vec<String> {
    let (label, title) = (
        "KVM seeds (issue 11)",
        "write-protected tables in three layouts; paravirt vs trap-and-emulate",
    );
    if let Err(why) = hv_sim::kvm::available() {
        demo.boots.push(Boot::skipped(
            label,
            title,
            format!("KVM is not available ({why})"),
        ));
        return Vec::new();
    }
    let image = match hv_sim::testing::example_kernel_image() {
        Ok(i) => i,
        Err(e) => {
            demo.boots.push(Boot::error(label, title, e.to_string()));
            return Vec::new();
        }
    };
    let cfg = hv_sim::kvm::Config::default();
    let hz = tsc_hz();
    let cpu = crate::fuzz::cpu_model();
    let mut checks = Vec::new();
    let mut out = vec![
        format!(
            "seed 2, write-protected descriptor tables: {N} context switches (load_kernel_stack + load_tls) \
             + {N} timer ticks, trap-and-emulate [{cpu}, TSC {:.2} GHz]",
            hz / 1e9
        ),
        format!(
            "  {:<34} {:>6} {:>6} {:>6} {:>11} {:>10}",
            "layout", "traps", "true", "false", "µs/switch", "µs/trap"
        ),
    ];
    for layout in Layout::ALL {
        // The fastest of REPEAT runs (the counts are the same in each).
        let runs: Result<Vec<_>, _> = (0..REPEAT)
            .map(|_| run_workload(&image, &cfg, layout, N, TrapMode::WriteProtect))
            .collect();
        let best = runs.map(|mut v| {
            v.sort_by_key(|r| r.guest_cycles);
            let same = v.windows(2).all(|w| {
                (w[0].true_traps, w[0].false_traps) == (w[1].true_traps, w[1].false_traps)
            });
            (v.swap_remove(0), same)
        });
        match best {
            Ok((r, same)) => {
                let traps = r.true_traps + r.false_traps;
                let us = r.guest_cycles as f64 / hz * 1e6 / r.switches.max(1) as f64;
                out.push(format!(
                    "  {:<34} {:>6.0} {:>6.0} {:>6.0} {:>11.1} {:>10.1}",
                    layout_name(layout),
                    r.per_1000(traps),
                    r.per_1000(r.true_traps),
                    r.per_1000(r.false_traps),
                    us,
                    r.median_handler_us(),
                ));
                let want_false = if layout == Layout::Separate {
                    0
                } else {
                    r.switches
                };
                checks.push(check(
                    format!(
                        "{}: 3 true traps per switch, {want_false} false, FS never stale",
                        layout_name(layout)
                    ),
                    same && r.true_traps == 3 * r.switches
                        && r.false_traps == want_false
                        && r.fs_mismatches == 0
                        && r.errors == 0,
                    format!(
                        "true {} false {} stale {} errors {}",
                        r.true_traps, r.false_traps, r.fs_mismatches, r.errors
                    ),
                ));
            }
            Err(e) => checks.push(check(layout_name(layout).into(), false, e.to_string())),
        }
    }
    out.push(
        "  (traps per 1000 switches; µs/switch: the guest's TSC over its loop, exits included, \
         fastest of 3 boots; µs/trap: hv-sim's handling only, median)"
            .into(),
    );
    compare_ways(&image, &cfg, hz, &mut out, &mut checks);
    let ok = checks.iter().all(|c| c.outcome != Outcome::Fail);
    let mut b = Boot::ran(label, title, checks, ok);
    b.figures = format!(
        "{N} switches × 3 layouts; 5 ways × {N_COMPARE}+{} switches",
        2 * N_COMPARE
    );
    demo.boots.push(b);
    out
}

/// The paravirt vs trap-and-emulate lines.
fn compare_ways(
    image: &[u8],
    cfg: &hv_sim::kvm::Config,
    hz: f64,
    out: &mut Vec<String>,
    checks: &mut Vec<Check>,
) {
    out.push(format!(
        "seed 1, the same lazy context switches each way (layout a; exits: a {}-switch boot less a {N_COMPARE}-switch one):",
        2 * N_COMPARE
    ));
    out.push(format!(
        "  {:<34} {:>12} {:>11} {:>6}",
        "way", "exits/switch", "µs/switch", "stale"
    ));
    for way in Way::ALL {
        let c = match compare(image, cfg, way, N_COMPARE, hz) {
            Ok(c) => c,
            Err(e) => {
                checks.push(check(way.name().into(), false, e.to_string()));
                continue;
            }
        };
        out.push(format!(
            "  {:<34} {:>12.2} {:>11.1} {:>6}",
            way.name(),
            c.exits_per_switch,
            c.us_per_switch,
            c.stale
        ));
        if let (Some(p), Some(h)) = (&c.phases_us, c.handler_us) {
            let parts: Vec<String> = p
                .iter()
                .filter(|(_, us)| *us > 0.0)
                .map(|(ph, us)| format!("{} {:.2}", ph.name(), us))
                .collect();
            out.push(format!(
                "    hv-sim per trap (medians, µs): handling {h:.1}; emulating the store: {}",
                parts.join(", ")
            ));
        }
        let (want, stale) = match way {
            Way::Native | Way::TrapShadow => (
                Some(0.0),
                if way == Way::TrapShadow {
                    u64::from(N_COMPARE)
                } else {
                    0
                },
            ),
            Way::TrapWriteProtect => (Some(3.0), 0),
            Way::Xen | Way::Vmi => (None, 0),
        };
        checks.push(check(
            format!(
                "{}: exits/switch {}, stale FS reads {stale}",
                way.name(),
                want.map_or("≥ 1".into(), |w| format!("{w}"))
            ),
            want.map_or(c.exits_per_switch >= 1.0, |w| c.exits_per_switch == w) && c.stale == stale,
            format!("{:.2} exits/switch, {} stale", c.exits_per_switch, c.stale),
        ));
    }
}
