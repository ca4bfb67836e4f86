//! What the demo found, and how it is printed: a section per boot (its
//! checks and figures, printed in full with `--verbose`), a summary table
//! with a row per boot, and one verdict line last.
//!
//! By default the output fits a screen: at most [`WIDTH`] columns a line;
//! the sections are left out except for the checks that failed (at most
//! [`MAX_FAILED_LINES`] of them), so the table and the verdict carry the
//! run.

/// The widest line printed by default.
pub const WIDTH: usize = 100;

/// Most failed-check lines printed without `--verbose`.
pub const MAX_FAILED_LINES: usize = 12;

/// One check's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It passed.
    Pass,
    /// It failed.
    Fail,
    /// This host cannot run it (said in the detail).
    Skip,
}

impl Outcome {
    fn tag(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Fail => "FAIL",
            Outcome::Skip => "skip",
        }
    }
}

/// One check of a boot.
#[derive(Clone, Debug)]
pub struct Check {
    /// Its name.
    pub name: String,
    /// Its outcome.
    pub outcome: Outcome,
    /// What was seen (may be empty: then only the name is printed).
    pub detail: String,
}

/// How one boot ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// It ran; `ok` is false when something beside its checks failed (an
    /// exit status, an invariant), said in the row's figures.
    Ran {
        /// Whether everything but the checks held too.
        ok: bool,
    },
    /// It could not run here (the reason).
    Skipped(String),
    /// It failed before reporting its checks (the error).
    Error(String),
}

/// One boot: a section of the verbose output and a row of the summary.
#[derive(Clone, Debug)]
pub struct Boot {
    /// The row's label, e.g. `KVM xen`.
    pub label: String,
    /// The section's title (what ran, with which backend).
    pub title: String,
    /// Its checks.
    pub checks: Vec<Check>,
    /// The row's figures, e.g. `hypercalls 103, exits 112`.
    pub figures: String,
    /// More lines for the verbose section (calls by kind, refusals, ...).
    pub details: Vec<String>,
    /// How it ended.
    pub status: Status,
}

impl Boot {
    /// A boot that ran, with its checks.
    pub fn ran(label: &str, title: &str, checks: Vec<Check>, ok: bool) -> Boot {
        Boot {
            label: label.into(),
            title: title.into(),
            checks,
            figures: String::new(),
            details: Vec::new(),
            status: Status::Ran { ok },
        }
    }

    /// A boot that did not run here.
    pub fn skipped(label: &str, title: &str, why: impl Into<String>) -> Boot {
        Boot {
            status: Status::Skipped(why.into()),
            ..Boot::ran(label, title, Vec::new(), true)
        }
    }

    /// A boot that failed before it reported.
    pub fn error(label: &str, title: &str, error: impl Into<String>) -> Boot {
        Boot {
            status: Status::Error(error.into()),
            ..Boot::ran(label, title, Vec::new(), true)
        }
    }

    fn count(&self, o: Outcome) -> usize {
        self.checks.iter().filter(|c| c.outcome == o).count()
    }

    /// Whether this boot counts against the verdict.
    pub fn failed(&self) -> bool {
        match &self.status {
            Status::Ran { ok } => !ok || self.count(Outcome::Fail) > 0,
            Status::Skipped(_) => false,
            Status::Error(_) => true,
        }
    }

    /// The result column: `pass 18/18`, `FAIL 17/18`, `pass 12/12, 3 skip`,
    /// `SKIPPED`, `ERROR`.
    fn result(&self) -> String {
        match &self.status {
            Status::Skipped(_) => "SKIPPED".into(),
            Status::Error(_) => "ERROR".into(),
            Status::Ran { .. } => {
                let (p, f, s) = (
                    self.count(Outcome::Pass),
                    self.count(Outcome::Fail),
                    self.count(Outcome::Skip),
                );
                let tag = if self.failed() { "FAIL" } else { "pass" };
                let mut r = format!("{tag} {p}/{}", p + f);
                if s > 0 {
                    r.push_str(&format!(", {s} skip"));
                }
                r
            }
        }
    }

    /// The figures column: the figures, or why it was skipped or failed.
    fn row_note(&self) -> String {
        match &self.status {
            Status::Skipped(why) => why.clone(),
            Status::Error(e) => e.clone(),
            Status::Ran { .. } => self.figures.clone(),
        }
    }
}

/// Everything the demo found.
#[derive(Clone, Debug, Default)]
pub struct Demo {
    /// The boots, in the order they ran.
    pub boots: Vec<Boot>,
    /// Notes printed above the verdict (e.g. what this host cannot run).
    pub notes: Vec<String>,
}

impl Demo {
    /// The lines to print, each at most [`WIDTH`] columns: with `verbose`,
    /// every section with every check and figure (wrapped), then the
    /// summary and the verdict; without, the failed checks, the summary and
    /// the verdict.
    pub fn render(&self, verbose: bool) -> Vec<String> {
        let mut out = Vec::new();
        if verbose {
            for b in &self.boots {
                self.section(b, &mut out);
            }
        } else {
            self.failures(&mut out);
        }
        out.push("== summary".into());
        out.extend(self.table());
        for n in &self.notes {
            out.extend(wrap(&format!("note: {n}"), WIDTH, "  "));
        }
        out.push(self.verdict());
        out.into_iter().map(|l| fit(&l, WIDTH)).collect()
    }

    fn section(&self, b: &Boot, out: &mut Vec<String>) {
        out.extend(wrap(&format!("== {}: {}", b.label, b.title), WIDTH, "   "));
        match &b.status {
            Status::Skipped(why) => out.extend(wrap(&format!("  SKIPPED: {why}"), WIDTH, "    ")),
            Status::Error(e) => out.extend(wrap(&format!("  ERROR: {e}"), WIDTH, "    ")),
            Status::Ran { .. } => {}
        }
        for c in &b.checks {
            out.extend(wrap(&check_line(c), WIDTH, "         "));
        }
        for d in &b.details {
            out.extend(wrap(&format!("  {d}"), WIDTH, "    "));
        }
    }

    /// The failed checks and boot errors, for the default output.
    fn failures(&self, out: &mut Vec<String>) {
        let mut lines = Vec::new();
        for b in &self.boots {
            if let Status::Error(e) = &b.status {
                lines.push(format!("  {}: ERROR: {e}", b.label));
            }
            for c in b.checks.iter().filter(|c| c.outcome == Outcome::Fail) {
                lines.push(format!("  {}: {}", b.label, check_line(c).trim_start()));
            }
        }
        if lines.is_empty() {
            return;
        }
        out.push("== failed (hv-sim demo --verbose shows every check)".into());
        let n = lines.len();
        out.extend(lines.into_iter().take(MAX_FAILED_LINES));
        if n > MAX_FAILED_LINES {
            out.push(format!("  ... and {} more", n - MAX_FAILED_LINES));
        }
    }

    /// The summary: a row per boot.
    fn table(&self) -> Vec<String> {
        let w0 = self
            .boots
            .iter()
            .map(|b| b.label.len())
            .max()
            .unwrap_or(0)
            .max(4);
        let results: Vec<String> = self.boots.iter().map(Boot::result).collect();
        let w1 = results.iter().map(String::len).max().unwrap_or(0).max(6);
        let mut rows = vec![format!("{:<w0$}  {:<w1$}  figures", "boot", "result")];
        for (b, r) in self.boots.iter().zip(&results) {
            let line = format!("{:<w0$}  {:<w1$}  {}", b.label, r, b.row_note());
            rows.push(line.trim_end().to_string());
        }
        rows
    }

    /// The last line: `verdict: PASSED ...` or `verdict: FAILED: ...`.
    pub fn verdict(&self) -> String {
        let failed: Vec<&Boot> = self.boots.iter().filter(|b| b.failed()).collect();
        let ran = self
            .boots
            .iter()
            .filter(|b| matches!(b.status, Status::Ran { .. }))
            .count();
        let skipped = self.boots.len()
            - ran
            - failed
                .iter()
                .filter(|b| !matches!(b.status, Status::Ran { .. }))
                .count();
        if failed.is_empty() {
            let checks: usize = self.boots.iter().map(|b| b.count(Outcome::Pass)).sum();
            let mut v = format!("verdict: PASSED: {ran} boots, {checks} checks passed");
            if skipped > 0 {
                v.push_str(&format!(", {skipped} boot(s) skipped"));
            }
            return v;
        }
        let what: Vec<String> = failed
            .iter()
            .map(|b| match &b.status {
                Status::Error(_) => format!("{} (error)", b.label),
                _ => match b.count(Outcome::Fail) {
                    0 => format!("{} (figures)", b.label),
                    n => format!("{} ({n} check{})", b.label, if n == 1 { "" } else { "s" }),
                },
            })
            .collect();
        format!("verdict: FAILED: {}", what.join(", "))
    }
}

fn check_line(c: &Check) -> String {
    if c.detail.trim().is_empty() {
        format!("  [{}] {}", c.outcome.tag(), c.name)
    } else {
        format!("  [{}] {}: {}", c.outcome.tag(), c.name, c.detail.trim())
    }
}

/// `line` cut to `width` characters, the last one `…` when cut.
fn fit(line: &str, width: usize) -> String {
    if line.chars().count() <= width {
        return line.to_string();
    }
    let mut s: String = line.chars().take(width - 1).collect();
    s.push('…');
    s
}

/// `text` broken at spaces into lines of at most `width` characters, the
/// later ones indented by `indent` (a word longer than a line is cut).
fn wrap(text: &str, width: usize, indent: &str) -> Vec<String> {
    let body = text.trim_start();
    let mut lines = Vec::new();
    let mut cur = text[..text.len() - body.len()].to_string();
    let mut fresh = true;
    for word in body.split(' ').filter(|w| !w.is_empty()) {
        let len = cur.chars().count();
        if !fresh && len + 1 + word.chars().count() > width {
            lines.push(fit(&cur, width));
            cur = indent.to_string();
            fresh = true;
        }
        if !fresh {
            cur.push(' ');
        }
        cur.push_str(word);
        fresh = false;
    }
    if !fresh {
        lines.push(fit(&cur, width));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &str, outcome: Outcome, detail: &str) -> Check {
        Check {
            name: name.into(),
            outcome,
            detail: detail.into(),
        }
    }

    /// A demo with every kind of boot, long details and many checks.
    fn sample(fail: bool) -> Demo {
        let long = "x".repeat(150);
        let mut boots = Vec::new();
        for (label, n) in [
            ("in-process native", 9),
            ("in-process xen", 10),
            ("in-process vmi", 10),
            ("KVM native", 12),
            ("KVM xen", 18),
            ("KVM vmi", 17),
            ("KVM trap-and-emulate", 12),
            ("QEMU native", 19),
            ("real Xen 4.17 dom0", 19),
        ] {
            let checks = (0..n)
                .map(|i| {
                    let o = if i == 3 { Outcome::Skip } else { Outcome::Pass };
                    check(&format!("check {i} of {label}"), o, &long)
                })
                .collect();
            let mut b = Boot::ran(label, &format!("{label}, {long}"), checks, true);
            b.figures = format!("hypercalls 103, exits 112, {long}");
            b.details = vec![long.clone(), String::new()];
            boots.push(b);
        }
        boots.push(Boot::skipped(
            "differential",
            "real Xen vs hv-sim",
            "KVM is not available",
        ));
        if fail {
            boots[4].checks[5].outcome = Outcome::Fail;
            boots.push(Boot::error("QEMU 2 CPUs", "smp", "boot failed: timed out"));
        }
        Demo {
            boots,
            notes: vec![format!("/dev/kvm is PVM: {long}")],
        }
    }

    #[test]
    fn default_output_fits_a_screen_and_ends_with_the_verdict() {
        let lines = sample(false).render(false);
        assert!(
            lines.len() <= 50,
            "{} lines:\n{}",
            lines.len(),
            lines.join("\n")
        );
        for l in &lines {
            assert!(l.chars().count() <= WIDTH, "too wide: {l}");
            assert!(
                !l.contains("Some(") && !l.contains("Err("),
                "Debug text: {l}"
            );
        }
        let last = lines.last().unwrap();
        assert!(last.starts_with("verdict: PASSED: 9 boots, "), "{last}");
        assert!(last.contains("1 boot(s) skipped"), "{last}");
        // Every boot has its row.
        for b in &sample(false).boots {
            assert!(lines.iter().any(|l| l.starts_with(&b.label)), "{}", b.label);
        }
    }

    #[test]
    fn a_failed_check_makes_the_verdict_failed_and_is_shown() {
        let lines = sample(true).render(false);
        let last = lines.last().unwrap();
        assert_eq!(
            last,
            "verdict: FAILED: KVM xen (1 check), QEMU 2 CPUs (error)"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("  KVM xen: [FAIL] check 5 of KVM xen"))
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("KVM xen") && l.contains("FAIL 16/17"))
        );
        assert!(lines.len() <= 50);
        // A boot whose checks passed but whose run did not (an exit status).
        let mut d = sample(false);
        d.boots[0].status = Status::Ran { ok: false };
        assert!(
            d.verdict()
                .starts_with("verdict: FAILED: in-process native (figures)")
        );
    }

    #[test]
    fn verbose_shows_every_check_wrapped() {
        let d = sample(false);
        let lines = d.render(true);
        let checks: usize = d.boots.iter().map(|b| b.checks.len()).sum();
        assert!(lines.len() > checks);
        for l in &lines {
            assert!(l.chars().count() <= WIDTH, "too wide: {l}");
        }
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("  [skip] check 3 of KVM vmi:"))
        );
        assert!(lines.last().unwrap().starts_with("verdict: PASSED"));
    }

    #[test]
    fn empty_details_print_the_name_alone() {
        assert_eq!(check_line(&check("a", Outcome::Pass, " ")), "  [pass] a");
        assert_eq!(wrap("a b c", 3, " "), vec!["a b", " c"]);
        assert_eq!(fit("abcdef", 4), "abc…");
    }
}
