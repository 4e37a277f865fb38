//! `blockprobe diff BEFORE AFTER`: what changed between two reports (a deploy, a fix),
//! per function and per service, sorted by impact, with an optional regression gate
//! (written as text by [`crate::render::diff`]).
//!
//! Functions are matched by function and stable file (so reports of other hosts or
//! paths compare), services by label. For each: stall count, total stall time, p50 and
//! p99 (estimated from the log2 buckets), cause mix, and the change of stall time.
//! Stall time is compared as totals by default: right for a fixed workload (a CI run of
//! the same scenario, whose run gets longer when it blocks more) and the same thing for
//! equal time windows. `normalize` compares stall time per second traced instead, for
//! windows of different lengths (e.g. one hour of `serve` against two). An entry whose
//! stall time grew by more than the gate's percentage, or that is new (absent before),
//! is a regression; vanished entries are improvements. Entries with fewer than
//! `min_count` stalls on both sides are left out (noise).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::histogram::Log2Histogram;
use crate::model::Cause;
use crate::report::Report;

/// The JSON schema of `blockprobe diff --format json`.
pub const DIFF_SCHEMA: &str = "blockprobe.diff/v1";

/// How to compare.
#[derive(Clone, Debug, PartialEq)]
pub struct DiffOptions {
    /// Fail (regression) when an entry's stall time grows by more than this many percent.
    pub fail_on_regression: Option<f64>,
    /// Leave out entries with fewer stalls than this on both sides.
    pub min_count: u64,
    /// Compare stall time per second traced (else totals).
    pub normalize: bool,
    /// Gate even when the reports were taken with different thresholds (see
    /// [`check_comparable`]).
    pub allow_threshold_mismatch: bool,
}

impl Default for DiffOptions {
    fn default() -> Self {
        DiffOptions {
            fail_on_regression: None,
            min_count: 1,
            normalize: false,
            allow_threshold_mismatch: false,
        }
    }
}

/// One side of the comparison.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Side {
    /// The report's file (as given).
    pub file: String,
    pub host: String,
    pub started_unix_ns: u64,
    pub duration_ns: u64,
    pub threshold_ns: u64,
    /// Stalls in the report.
    pub stalls: u64,
    /// Their total duration.
    pub total_ns: u64,
}

/// One entry's numbers on one side.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Stats {
    pub count: u64,
    pub total_ns: u64,
    /// Stall time per second traced (ns/s), when the report has a duration.
    pub ns_per_s: Option<f64>,
    pub max_ns: u64,
    /// Estimated from the buckets (within a factor of 2).
    pub p50_ns: Option<u64>,
    pub p99_ns: Option<u64>,
    /// Share of the stall time per cause (`running`: time no cause accounts for, in
    /// reports of versions that measured only blocking syscalls), 0..1.
    pub causes: BTreeMap<String, f64>,
    /// The cause mix as text (`sleep 75%, io 25%`).
    pub cause_mix: String,
}

/// An entry's change, AFTER minus BEFORE. A side without the entry counts as no
/// stalls; quantiles are `null` unless both sides have it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Delta {
    pub count: i64,
    pub total_ns: i64,
    pub p50_ns: Option<i64>,
    pub p99_ns: Option<i64>,
    /// Change of each cause's share of the stall time, in percentage points (a side
    /// without the entry has no shares); only causes with a share on either side.
    pub cause_share_pts: BTreeMap<String, f64>,
}

impl Delta {
    fn between(before: Option<&Stats>, after: Option<&Stats>) -> Delta {
        let signed = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let minus = |f: &dyn Fn(&Stats) -> u64| {
            signed(after.map_or(0, f)).saturating_sub(signed(before.map_or(0, f)))
        };
        let quantile = |f: &dyn Fn(&Stats) -> Option<u64>| {
            Some(signed(f(after?)?).saturating_sub(signed(f(before?)?)))
        };
        let share = |s: Option<&Stats>, cause: &str| {
            s.and_then(|s| s.causes.get(cause)).copied().unwrap_or(0.0)
        };
        let causes: BTreeSet<&String> = [before, after]
            .into_iter()
            .flatten()
            .flat_map(|s| s.causes.keys())
            .collect();
        Delta {
            count: minus(&|s| s.count),
            total_ns: minus(&|s| s.total_ns),
            p50_ns: quantile(&|s| s.p50_ns),
            p99_ns: quantile(&|s| s.p99_ns),
            cause_share_pts: causes
                .into_iter()
                .map(|c| (c.clone(), (share(after, c) - share(before, c)) * 100.0))
                .collect(),
        }
    }
}

/// How an entry changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Only in AFTER.
    New,
    /// Only in BEFORE.
    Vanished,
    /// In both.
    Changed,
}

/// What a [`Change`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Function,
    Service,
    Total,
}

/// One function's, service's or the whole report's change.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Change {
    pub kind: Kind,
    /// Function qualname, service label, or `total`.
    pub name: String,
    /// Stable file (functions only).
    pub file: String,
    pub status: Status,
    pub before: Option<Stats>,
    pub after: Option<Stats>,
    /// The change of every number, explicitly.
    pub delta: Delta,
    /// Change of the compared stall time (per second traced, or total), in percent;
    /// `null` when it was zero before.
    pub change_pct: Option<f64>,
    /// Change of the compared stall time, in ns per second traced (or ns): what entries
    /// are sorted by (largest absolute value first).
    pub impact: f64,
    /// Whether it crossed the regression gate.
    pub regression: bool,
}

/// The whole comparison (`--format json` serializes it).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Diff {
    pub schema: &'static str,
    pub before: Side,
    pub after: Side,
    /// Whether stall times are compared per second traced.
    pub normalized: bool,
    pub fail_on_regression_pct: Option<f64>,
    pub min_count: u64,
    pub total: Change,
    pub functions: Vec<Change>,
    pub services: Vec<Change>,
    /// Entries left out by `min_count`.
    pub below_min_count: u64,
    /// Whether any entry crossed the gate: `blockprobe diff` then exits 1.
    pub regressed: bool,
}

/// Compares `before` with `after` (named for the output, e.g. by their files).
pub fn diff(before: (&str, &Report), after: (&str, &Report), options: &DiffOptions) -> Diff {
    let (bname, b) = before;
    let (aname, a) = after;
    let normalized = options.normalize && b.duration_ns > 0 && a.duration_ns > 0;
    let ctx = Ctx {
        options,
        normalized,
        before_s: b.duration_ns as f64 / 1e9,
        after_s: a.duration_ns as f64 / 1e9,
    };

    let bf = functions_by_key(b);
    let af = functions_by_key(a);
    let keys: BTreeSet<&(String, String)> = bf.keys().chain(af.keys()).collect();
    let mut below = 0;
    let mut functions = Vec::new();
    for key in keys {
        match ctx.change(Kind::Function, &key.0, &key.1, bf.get(key), af.get(key)) {
            Some(c) => functions.push(c),
            None => below += 1,
        }
    }

    let bs = services_by_name(b);
    let as_ = services_by_name(a);
    let names: BTreeSet<&String> = bs.keys().chain(as_.keys()).collect();
    let mut services = Vec::new();
    for name in names {
        match ctx.change(Kind::Service, name, "", bs.get(name), as_.get(name)) {
            Some(c) => services.push(c),
            None => below += 1,
        }
    }
    for list in [&mut functions, &mut services] {
        list.sort_by(|x, y| {
            y.impact
                .abs()
                .total_cmp(&x.impact.abs())
                .then_with(|| x.name.cmp(&y.name))
                .then_with(|| x.file.cmp(&y.file))
        });
    }

    let whole = |r: &Report| {
        let mut h = Log2Histogram::new();
        let mut causes = BTreeMap::new();
        for f in &r.functions {
            h.merge(&f.histogram);
            for (&c, &ns) in &f.causes {
                let slot: &mut u64 = causes.entry(c).or_default();
                *slot = slot.saturating_add(ns);
            }
        }
        (h, causes)
    };
    let (bh, bc) = whole(b);
    let (ah, ac) = whole(a);
    let no_gate = DiffOptions {
        min_count: 0,
        fail_on_regression: None,
        ..options.clone()
    };
    let total = Ctx {
        options: &no_gate,
        ..ctx
    }
    .change(
        Kind::Total,
        "total",
        "",
        Some(&(bh.clone(), bc)),
        Some(&(ah.clone(), ac)),
    )
    .expect("min_count 0 keeps everything");

    let regressed = functions.iter().chain(&services).any(|c| c.regression);
    let side = |name: &str, r: &Report, h: &Log2Histogram| Side {
        file: name.to_owned(),
        host: r.host.clone(),
        started_unix_ns: r.started_unix_ns,
        duration_ns: r.duration_ns,
        threshold_ns: r.threshold_ns,
        stalls: h.count(),
        total_ns: h.total_ns(),
    };
    Diff {
        schema: DIFF_SCHEMA,
        before: side(bname, b, &bh),
        after: side(aname, a, &ah),
        normalized,
        fail_on_regression_pct: options.fail_on_regression,
        min_count: options.min_count,
        total,
        functions,
        services,
        below_min_count: below,
        regressed,
    }
}

type Entry = (Log2Histogram, BTreeMap<Cause, u64>);

fn functions_by_key(r: &Report) -> BTreeMap<(String, String), Entry> {
    let mut out: BTreeMap<(String, String), Entry> = BTreeMap::new();
    for f in &r.functions {
        let e = out.entry(f.stable_key()).or_default();
        e.0.merge(&f.histogram);
        for (&c, &ns) in &f.causes {
            let slot = e.1.entry(c).or_default();
            *slot = slot.saturating_add(ns);
        }
    }
    out
}

fn services_by_name(r: &Report) -> BTreeMap<String, Entry> {
    r.services
        .iter()
        .map(|s| (s.service.clone(), (s.histogram.clone(), s.causes.clone())))
        .collect()
}

#[derive(Clone, Copy)]
struct Ctx<'a> {
    options: &'a DiffOptions,
    normalized: bool,
    before_s: f64,
    after_s: f64,
}

impl Ctx<'_> {
    fn stats(&self, e: &Entry, seconds: f64) -> Stats {
        let (h, causes) = e;
        Stats {
            count: h.count(),
            total_ns: h.total_ns(),
            ns_per_s: (seconds > 0.0).then(|| h.total_ns() as f64 / seconds),
            max_ns: h.max_ns(),
            p50_ns: h.quantile(0.5),
            p99_ns: h.quantile(0.99),
            causes: cause_shares(h.total_ns(), causes),
            cause_mix: crate::model::cause_mix(h.total_ns(), causes),
        }
    }

    /// The compared value: stall time per second traced, or the total.
    fn value(&self, s: Option<&Stats>) -> f64 {
        match s {
            None => 0.0,
            Some(s) if self.normalized => s.ns_per_s.unwrap_or(0.0),
            Some(s) => s.total_ns as f64,
        }
    }

    fn change(
        &self,
        kind: Kind,
        name: &str,
        file: &str,
        before: Option<&Entry>,
        after: Option<&Entry>,
    ) -> Option<Change> {
        let before = before.map(|e| self.stats(e, self.before_s));
        let after = after.map(|e| self.stats(e, self.after_s));
        let count = |s: &Option<Stats>| s.as_ref().map_or(0, |s| s.count);
        if count(&before).max(count(&after)) < self.options.min_count {
            return None;
        }
        let status = match (&before, &after) {
            (None, _) => Status::New,
            (_, None) => Status::Vanished,
            _ => Status::Changed,
        };
        let (bv, av) = (self.value(before.as_ref()), self.value(after.as_ref()));
        let change_pct = (bv > 0.0).then(|| (av - bv) / bv * 100.0);
        let regression = match self.options.fail_on_regression {
            None => false,
            Some(gate) => match status {
                Status::New => count(&after) >= self.options.min_count.max(1),
                Status::Vanished => false,
                Status::Changed => match change_pct {
                    Some(pct) => pct > gate,
                    None => av > 0.0,
                },
            },
        };
        Some(Change {
            kind,
            name: name.to_owned(),
            file: file.to_owned(),
            status,
            delta: Delta::between(before.as_ref(), after.as_ref()),
            before,
            after,
            change_pct,
            impact: av - bv,
            regression,
        })
    }
}

/// Shares of the stall time per cause, with any rest no cause accounts for as
/// `running` (0..1).
fn cause_shares(total_ns: u64, causes: &BTreeMap<Cause, u64>) -> BTreeMap<String, f64> {
    let blocked: u128 = causes.values().map(|&v| u128::from(v)).sum();
    let denom = u128::from(total_ns).max(blocked);
    if denom == 0 {
        return BTreeMap::new();
    }
    let mut out: BTreeMap<String, f64> = causes
        .iter()
        .filter(|(_, ns)| **ns > 0)
        .map(|(c, &ns)| (c.as_str().to_owned(), ns as f64 / denom as f64))
        .collect();
    let running = denom - blocked;
    if running > 0 {
        out.insert("running".into(), running as f64 / denom as f64);
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::aggregate::{Aggregator, RunInfo};
    use crate::model::fixtures::{frame, stall};
    use crate::render::diff::render_text;
    use crate::report::ProcessInfo;

    /// A report with `n` stalls of `ms` for each (function, ms, n).
    fn report(duration_s: u64, entries: &[(&str, u64, u64)]) -> Report {
        let mut a = Aggregator::default();
        a.register_process(ProcessInfo {
            pid: 1,
            service: "api".into(),
            ..Default::default()
        });
        for &(f, ms, n) in entries {
            for i in 0..n {
                let mut s = stall(1, i, ms * 1_000_000, Some(frame(f, "/srv/app/h.py", 1)));
                if f == "io_fn" {
                    s.cause = Cause::Io;
                    s.causes = [(Cause::Io, ms * 1_000_000)].into_iter().collect();
                }
                a.record(s);
            }
        }
        a.report(RunInfo {
            host: "web-1".into(),
            started_unix_ns: 0,
            duration_ns: duration_s * 1_000_000_000,
            threshold_ns: 10_000_000,
        })
    }

    /// Options gating at `pct` percent.
    pub(crate) fn gate(pct: f64) -> DiffOptions {
        DiffOptions {
            fail_on_regression: Some(pct),
            ..DiffOptions::default()
        }
    }

    #[test]
    fn names_the_regressed_function_first() {
        let before = report(60, &[("slow", 20, 3), ("steady", 15, 10), ("gone", 30, 2)]);
        let after = report(60, &[("slow", 60, 3), ("steady", 15, 10), ("io_fn", 12, 1)]);
        let d = diff(("b.json", &before), ("a.json", &after), &gate(50.0));
        assert!(d.regressed);
        let first = &d.functions[0];
        assert_eq!(first.name, "slow");
        assert_eq!(first.file, "/srv/app/h.py");
        assert_eq!(first.status, Status::Changed);
        assert!((first.change_pct.unwrap() - 200.0).abs() < 1e-9);
        assert!(first.regression);
        let by = |n: &str| d.functions.iter().find(|c| c.name == n).unwrap();
        assert!(!by("steady").regression);
        assert_eq!(by("steady").change_pct, Some(0.0));
        assert_eq!(by("gone").status, Status::Vanished);
        assert!(!by("gone").regression);
        assert_eq!(by("io_fn").status, Status::New);
        assert!(by("io_fn").regression, "new culprits are regressions");
        assert_eq!(by("io_fn").after.as_ref().unwrap().cause_mix, "io 100%");
        // Sorted by absolute impact.
        let impacts: Vec<f64> = d.functions.iter().map(|c| c.impact.abs()).collect();
        assert!(impacts.windows(2).all(|w| w[0] >= w[1]), "{impacts:?}");
        let slow_before = by("slow").before.as_ref().unwrap();
        assert_eq!(slow_before.count, 3);
        assert_eq!(bucket(slow_before.p50_ns.unwrap()), bucket(20_000_000));
        assert_eq!(
            bucket(by("slow").after.as_ref().unwrap().p99_ns.unwrap()),
            bucket(60_000_000)
        );
        assert_eq!(d.services.len(), 1);
        assert_eq!(d.services[0].name, "api");

        let text = render_text(&d, 20);
        assert!(
            text.contains("   +200%  slow (/srv/app/h.py)  REGRESSION\n"),
            "{text}"
        );
        assert!(text.contains("Regression gate (+50%): FAILED"), "{text}");
        assert!(
            text.contains("  function slow (/srv/app/h.py): stall time +200%"),
            "{text}"
        );
        assert!(text.contains("NEW  io_fn"), "{text}");
        assert!(text.contains("GONE  gone"), "{text}");
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(json["schema"], DIFF_SCHEMA);
        assert_eq!(json["functions"][0]["name"], "slow");
        assert_eq!(json["functions"][0]["status"], "changed");
        assert_eq!(json["regressed"], true);
    }

    fn bucket(ns: u64) -> usize {
        crate::histogram::bucket_index(ns)
    }

    #[test]
    fn gate_passes_below_the_threshold_and_without_a_gate() {
        let before = report(60, &[("f", 20, 10)]);
        let after = report(60, &[("f", 24, 10)]);
        let d = diff(("b", &before), ("a", &after), &gate(50.0));
        assert!(!d.regressed);
        assert!(render_text(&d, 5).contains("Regression gate (+50%): passed"));
        let d = diff(("b", &before), ("a", &after), &DiffOptions::default());
        assert!(!d.regressed);
        assert!(!render_text(&d, 5).contains("Regression gate"));
    }

    #[test]
    fn rates_make_runs_of_other_lengths_comparable() {
        // Twice the stalls in twice the time: no change per second.
        let before = report(30, &[("f", 20, 10)]);
        let after = report(60, &[("f", 20, 20)]);
        let per_second = DiffOptions {
            normalize: true,
            ..gate(10.0)
        };
        let d = diff(("b", &before), ("a", &after), &per_second);
        assert!(d.normalized);
        assert_eq!(d.functions[0].change_pct, Some(0.0));
        assert!(!d.regressed);
        assert!(render_text(&d, 5).contains("(6.7 -> 6.7 ms per s traced)"));
        // Totals by default.
        let d = diff(("b", &before), ("a", &after), &gate(10.0));
        assert!(!d.normalized);
        assert_eq!(d.functions[0].change_pct, Some(100.0));
        assert!(d.regressed);
        assert!(render_text(&d, 5).contains("--per-second"), "hint");
    }

    #[test]
    fn min_count_hides_noise() {
        let before = report(60, &[("f", 20, 10), ("rare", 20, 1)]);
        let after = report(60, &[("f", 20, 10), ("rare", 200, 2), ("blip", 50, 1)]);
        let opts = DiffOptions {
            min_count: 3,
            ..gate(50.0)
        };
        let d = diff(("b", &before), ("a", &after), &opts);
        let names: Vec<&str> = d.functions.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["f"]);
        assert_eq!(d.below_min_count, 2);
        assert!(d.regressed, "the service total still grew a lot");
        assert!(!d.functions[0].regression);
        assert!(render_text(&d, 5).contains("2 entries with fewer than 3 stalls"));
    }

    #[test]
    fn delta_and_cause_shift() {
        let before = report(60, &[("f", 20, 4)]);
        let mut after = report(60, &[("f", 40, 4), ("io_fn", 12, 1)]);
        let f = after
            .functions
            .iter_mut()
            .find(|f| f.function == "f")
            .unwrap();
        f.causes = [(Cause::Cpu, 96_000_000), (Cause::Sleep, 64_000_000)]
            .into_iter()
            .collect();
        let d = diff(("b", &before), ("a", &after), &DiffOptions::default());
        let by = |n: &str| d.functions.iter().find(|c| c.name == n).unwrap();
        let delta = &by("f").delta;
        assert_eq!(delta.count, 0);
        assert_eq!(delta.total_ns, 80_000_000);
        assert!(delta.p50_ns.is_some_and(|p| p > 0), "{delta:?}");
        assert!(delta.p99_ns.is_some_and(|p| p > 0), "{delta:?}");
        let pts = |c: &str| delta.cause_share_pts[c];
        assert!((pts("cpu") - 60.0).abs() < 1e-9, "{delta:?}");
        assert!((pts("sleep") + 35.0).abs() < 1e-9, "{delta:?}");
        assert!((pts("io") + 12.5).abs() < 1e-9, "{delta:?}");
        assert!((pts("running") + 12.5).abs() < 1e-9, "{delta:?}");
        let new = &by("io_fn").delta;
        assert_eq!((new.count, new.total_ns), (1, 12_000_000));
        assert_eq!((new.p50_ns, new.p99_ns), (None, None), "one side only");
        assert!((new.cause_share_pts["io"] - 100.0).abs() < 1e-9);

        let text = render_text(&d, 20);
        assert!(
            text.contains(
                "causes sleep 75%, io 13%, running 12% -> cpu 60%, sleep 40% \
                 (cpu +60, sleep -35, io -13, running -13 pts)\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("causes - -> io 100%\n"),
            "no shift for new entries: {text}"
        );
        let json = serde_json::to_value(&d).unwrap();
        let f = json["functions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "f")
            .unwrap();
        assert_eq!(f["delta"]["count"], 0);
        assert_eq!(f["delta"]["total_ns"], 80_000_000);
        assert_eq!(f["delta"]["cause_share_pts"]["cpu"], 60.0);
        assert!(f["delta"]["p99_ns"].is_i64());
    }

    #[test]
    fn cause_shares_add_up() {
        let causes = [(Cause::Sleep, 60), (Cause::Io, 20)].into_iter().collect();
        let shares = cause_shares(100, &causes);
        assert_eq!(shares["sleep"], 0.6);
        assert_eq!(shares["io"], 0.2);
        assert!((shares["running"] - 0.2).abs() < 1e-12);
        assert!(cause_shares(0, &BTreeMap::new()).is_empty());
    }
}
