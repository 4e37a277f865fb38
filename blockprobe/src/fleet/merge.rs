//! `blockprobe merge`: one report out of many (hosts, runs), exactly.
//!
//! - `functions` (by function and stable file), `services` and `stacks` add up exactly:
//!   their log2 buckets, counts, totals and cause times are sums, maxima are maxima.
//! - `stalls` keeps the `max_stalls` longest of all the reports' kept stalls (ties by
//!   start time, then pid, tid and content: a total order), chronologically;
//!   `stalls_dropped` counts every other stall.
//! - `processes` are listed with their host (at most `max_processes`, by host and pid);
//!   `lost` counters add up.
//! - `sources` lists every run that went in (a merged report's own sources, not itself),
//!   and `host`, `blockprobe_version`, `kernel_release`, start and end summarize them.
//!
//! Every part is a sum, a maximum, a minimum, a union or the top N of a total order, so
//! merging is associative and commutative: any grouping and order of the same reports
//! gives the same report. Reports of another schema, or taken with another threshold,
//! are refused.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::Serialize;

use crate::aggregate::Limits;
use crate::model::{Stall, add_causes};
use crate::report::{
    FunctionReport, ProcessInfo, ProcessWarning, Report, SCHEMA, ServiceReport, Source, StackKey,
    StackReport, sort_functions, sort_services, sort_stacks,
};

/// Bounds of a merged report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MergeLimits {
    /// Stalls kept (the longest).
    pub max_stalls: usize,
    /// Processes listed.
    pub max_processes: usize,
}

impl Default for MergeLimits {
    fn default() -> Self {
        let l = Limits::default();
        MergeLimits {
            max_stalls: l.max_stalls,
            max_processes: l.max_processes,
        }
    }
}

/// Hosts named in a merged report's `host` before it says "and N more".
const HOSTS_NAMED: usize = 4;

/// Merges `reports` (each with a name for error messages, such as its file).
pub fn merge(reports: &[(String, Report)], limits: MergeLimits) -> Result<Report, String> {
    let Some((first_name, first)) = reports.first() else {
        return Err("nothing to merge: no reports given".into());
    };
    for (name, r) in reports {
        if r.schema != SCHEMA {
            return Err(format!(
                "{name}: schema {:?} is not {SCHEMA:?}; cannot merge it",
                r.schema
            ));
        }
        if r.threshold_ns != first.threshold_ns {
            return Err(format!(
                "{name}: its threshold is {} but {first_name}'s is {}; only reports \
                 taken with the same --threshold can be merged (their histograms would \
                 not count the same stalls)",
                threshold_text(r.threshold_ns),
                threshold_text(first.threshold_ns)
            ));
        }
    }

    let mut sources: Vec<Source> = reports.iter().flat_map(|(_, r)| Source::of(r)).collect();
    sources.sort();
    let started = sources.iter().map(|s| s.started_unix_ns).min().unwrap_or(0);
    let ended = sources.iter().map(|s| s.ended_unix_ns).max().unwrap_or(0);

    let mut lost: BTreeMap<String, u64> = BTreeMap::new();
    let mut lost_events = 0u64;
    let mut stalls: Vec<Stall> = Vec::new();
    let mut stall_total = 0u64;
    let mut processes: Vec<ProcessInfo> = Vec::new();
    let mut process_total = 0u64;
    let mut warnings: Vec<ProcessWarning> = Vec::new();
    let mut functions: BTreeMap<(String, String), FunctionReport> = BTreeMap::new();
    let mut services: BTreeMap<String, ServiceReport> = BTreeMap::new();
    let mut stacks: BTreeMap<StackKey, (u64, u64)> = BTreeMap::new();

    for (_, r) in reports {
        lost_events = lost_events.saturating_add(r.lost_events);
        for (k, &v) in &r.lost {
            let slot = lost.entry(k.clone()).or_default();
            *slot = slot.saturating_add(v);
        }
        stall_total = stall_total
            .saturating_add(r.stalls.len() as u64)
            .saturating_add(r.stalls_dropped);
        stalls.extend(r.stalls.iter().cloned());
        process_total = process_total
            .saturating_add(r.processes.len() as u64)
            .saturating_add(r.processes_dropped);
        processes.extend(r.processes.iter().map(|p| {
            let mut p = p.clone();
            if p.host.is_empty() {
                p.host.clone_from(&r.host);
            }
            p
        }));
        warnings.extend(r.warnings.iter().map(|w| {
            let mut w = w.clone();
            if w.host.is_empty() {
                w.host.clone_from(&r.host);
            }
            w
        }));
        for f in &r.functions {
            let key = f.stable_key();
            match functions.get_mut(&key) {
                Some(into) => {
                    into.histogram.merge(&f.histogram);
                    add_causes(&mut into.causes, &f.causes);
                    if f.file < into.file {
                        into.file.clone_from(&f.file);
                    }
                }
                None => {
                    let mut f = f.clone();
                    f.stable_file = key.1.clone();
                    functions.insert(key, f);
                }
            }
        }
        for s in &r.services {
            match services.get_mut(&s.service) {
                Some(into) => {
                    into.histogram.merge(&s.histogram);
                    add_causes(&mut into.causes, &s.causes);
                }
                None => {
                    services.insert(s.service.clone(), s.clone());
                }
            }
        }
        for s in &r.stacks {
            let slot = stacks.entry(s.key()).or_default();
            slot.0 = slot.0.saturating_add(s.count);
            slot.1 = slot.1.saturating_add(s.total_ns);
        }
    }

    stalls.sort_by(worst_first);
    stalls.truncate(limits.max_stalls);
    stalls.sort_by(|a, b| {
        a.start_unix_ns
            .cmp(&b.start_unix_ns)
            .then_with(|| worst_first(a, b))
    });
    warnings.sort_by(|a, b| (&a.host, a.pid, &a.reason).cmp(&(&b.host, b.pid, &b.reason)));
    warnings.dedup();
    processes.sort_by(process_order);
    processes.truncate(limits.max_processes);

    let mut functions: Vec<FunctionReport> = functions.into_values().collect();
    sort_functions(&mut functions);
    let mut services: Vec<ServiceReport> = services.into_values().collect();
    sort_services(&mut services);
    let mut stacks: Vec<StackReport> = stacks
        .into_iter()
        .map(|(k, (count, total_ns))| StackReport {
            service: k.service,
            leaf: k.leaf,
            frames: k.frames,
            count,
            total_ns,
        })
        .collect();
    sort_stacks(&mut stacks);

    Ok(Report {
        schema: SCHEMA.to_owned(),
        blockprobe_version: summarize(sources.iter().map(|s| &s.blockprobe_version), "versions"),
        host: summarize(sources.iter().map(|s| &s.host), "hosts"),
        started_unix_ns: started,
        duration_ns: ended.saturating_sub(started),
        threshold_ns: first.threshold_ns,
        lost_events,
        lost,
        stalls_dropped: stall_total.saturating_sub(stalls.len() as u64),
        processes_dropped: process_total.saturating_sub(processes.len() as u64),
        processes,
        stalls,
        functions,
        ended_unix_ns: ended,
        kernel_release: summarize(sources.iter().map(|s| &s.kernel_release), "kernels"),
        poll_hook: common(reports.iter().map(|(_, r)| r.poll_hook.as_str())),
        services,
        stacks,
        sources,
        warnings,
    })
}

/// The value every run agrees on, else `mixed` (empty values are unknown ones).
fn common<'a>(values: impl Iterator<Item = &'a str>) -> String {
    let mut known = values.filter(|v| !v.is_empty());
    let Some(first) = known.next() else {
        return String::new();
    };
    if known.all(|v| v == first) {
        first.to_owned()
    } else {
        "mixed".to_owned()
    }
}

fn threshold_text(ns: u64) -> String {
    humantime::format_duration(std::time::Duration::from_nanos(ns)).to_string()
}

/// The distinct values, sorted: one is shown as is, a few joined with `, `, many as the
/// first few and how many more.
fn summarize<'a>(values: impl Iterator<Item = &'a String>, what: &str) -> String {
    let mut distinct: Vec<&String> = values.filter(|v| !v.is_empty()).collect();
    distinct.sort();
    distinct.dedup();
    if distinct.len() <= HOSTS_NAMED {
        return distinct
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", ");
    }
    let named: Vec<&str> = distinct[..HOSTS_NAMED].iter().map(|s| s.as_str()).collect();
    format!(
        "{} and {} more {what}",
        named.join(", "),
        distinct.len() - HOSTS_NAMED
    )
}

/// Longest first; ties by start, pid, tid, then content: a total order on stalls.
fn worst_first(a: &Stall, b: &Stall) -> Ordering {
    b.duration_ns
        .cmp(&a.duration_ns)
        .then(a.start_unix_ns.cmp(&b.start_unix_ns))
        .then(a.pid.cmp(&b.pid))
        .then(a.tid.cmp(&b.tid))
        .then_with(|| content(a).cmp(&content(b)))
}

/// By host and pid, then content: a total order on processes.
fn process_order(a: &ProcessInfo, b: &ProcessInfo) -> Ordering {
    a.host
        .cmp(&b.host)
        .then(a.pid.cmp(&b.pid))
        .then_with(|| content(a).cmp(&content(b)))
}

fn content<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::{Aggregator, RunInfo};
    use crate::histogram::Log2Histogram;
    use crate::model::Cause;
    use crate::model::Frame;
    use crate::model::fixtures::{frame, stall};
    use proptest::prelude::*;

    /// One synthetic stall: (pid, start, duration, function index or none, cause).
    type Spec = (u32, u64, u64, Option<u8>, u8);

    fn culprit(i: u8) -> Frame {
        // Two hosts' paths of the same code: they must merge under one key.
        let file = if i.is_multiple_of(2) {
            format!("/srv/a/lib/python3.11/site-packages/pkg/m{}.py", i % 3)
        } else {
            format!("/opt/venv/lib/python3.11/site-packages/pkg/m{}.py", i % 3)
        };
        frame(&format!("f{}", i % 5), &file, u32::from(i))
    }

    fn make_stall(spec: &Spec) -> Stall {
        let (pid, start, dur, f, cause) = *spec;
        let mut s = stall(pid, start, dur, f.map(culprit));
        s.cause = [Cause::Sleep, Cause::Io, Cause::Lock, Cause::Other][usize::from(cause % 4)];
        s.causes = [(s.cause, dur / 2)].into_iter().collect();
        s
    }

    fn report_of(host: &str, started: u64, specs: &[Spec], max_stalls: usize) -> Report {
        let mut a = Aggregator::new(Limits {
            max_stalls,
            ..Limits::default()
        });
        for pid in [1, 2, 3] {
            a.register_process(ProcessInfo {
                pid,
                comm: "python3".into(),
                python_version: "3.11.7".into(),
                service: format!("svc{}", pid % 2),
                ..Default::default()
            });
        }
        for spec in specs {
            a.record(make_stall(spec));
        }
        a.add_lost("ringbuf_stall", specs.len() as u64 % 3);
        let mut r = a.report(RunInfo {
            host: host.into(),
            started_unix_ns: started,
            duration_ns: 1_000,
            threshold_ns: 10,
        });
        r.kernel_release = "6.1.0".into();
        r
    }

    fn named(reports: &[&Report]) -> Vec<(String, Report)> {
        reports
            .iter()
            .enumerate()
            .map(|(i, r)| (format!("r{i}.json"), (*r).clone()))
            .collect()
    }

    fn m(reports: &[&Report], max_stalls: usize) -> Report {
        merge(
            &named(reports),
            MergeLimits {
                max_stalls,
                max_processes: 4,
            },
        )
        .unwrap()
    }

    fn specs() -> impl Strategy<Value = Vec<Spec>> {
        prop::collection::vec(
            (
                1u32..4,
                0u64..1_000,
                prop_oneof![10u64..100, 10u64..10_000_000_000, Just(50u64)],
                prop::option::of(0u8..12),
                0u8..4,
            ),
            0..25,
        )
    }

    /// What one aggregator fed every stall says, per key.
    fn sums(all: &[Spec]) -> (BTreeMap<(String, String), Log2Histogram>, u64) {
        let r = report_of("x", 0, all, 0);
        let mut by_key: BTreeMap<(String, String), Log2Histogram> = BTreeMap::new();
        for f in &r.functions {
            by_key
                .entry(f.stable_key())
                .or_default()
                .merge(&f.histogram);
        }
        (by_key, r.stall_count())
    }

    proptest! {
        #[test]
        fn merge_is_commutative(a in specs(), b in specs(), c in specs(), n in 0usize..6) {
            let (ra, rb, rc) = (report_of("h1", 5, &a, 4), report_of("h2", 3, &b, 4), report_of("h1", 9, &c, 4));
            let abc = m(&[&ra, &rb, &rc], n);
            prop_assert_eq!(&m(&[&rc, &ra, &rb], n), &abc);
            prop_assert_eq!(&m(&[&rb, &rc, &ra], n), &abc);
        }

        #[test]
        fn merge_is_associative(a in specs(), b in specs(), c in specs(), n in 0usize..6) {
            let (ra, rb, rc) = (report_of("h1", 5, &a, 4), report_of("h2", 3, &b, 4), report_of("h3", 9, &c, 4));
            let left = m(&[&m(&[&ra, &rb], n), &rc], n);
            let right = m(&[&ra, &m(&[&rb, &rc], n)], n);
            prop_assert_eq!(&left, &right);
            prop_assert_eq!(&left, &m(&[&ra, &rb, &rc], n));
        }

        #[test]
        fn merge_is_the_sum(a in specs(), b in specs(), c in specs()) {
            let parts = [report_of("h1", 5, &a, 3), report_of("h2", 3, &b, 3), report_of("h3", 9, &c, 3)];
            let merged = m(&[&parts[0], &parts[1], &parts[2]], 1000);
            let all: Vec<Spec> = a.iter().chain(&b).chain(&c).copied().collect();
            let (want, count) = sums(&all);
            let got: BTreeMap<(String, String), Log2Histogram> = merged
                .functions
                .iter()
                .map(|f| (f.stable_key(), f.histogram.clone()))
                .collect();
            prop_assert_eq!(got.len(), merged.functions.len(), "one entry per key");
            prop_assert_eq!(&got, &want);
            prop_assert_eq!(merged.stall_count(), count);
            // Services and stacks add up too.
            let services: u64 = merged.services.iter().map(|s| s.histogram.count()).sum();
            let stacks: u64 = merged.stacks.iter().map(|s| s.count).sum();
            let stack_ns: u64 = merged.stacks.iter().map(|s| s.total_ns).sum();
            let fn_ns: u64 = merged.functions.iter().map(|f| f.histogram.total_ns()).sum();
            prop_assert_eq!(services, count);
            prop_assert_eq!(stacks, count);
            prop_assert_eq!(stack_ns, fn_ns);
            // Every stall is kept or counted as dropped.
            prop_assert_eq!(merged.stalls.len() as u64 + merged.stalls_dropped, count);
            let kept: u64 = parts.iter().map(|p| p.stalls.len() as u64).sum();
            prop_assert_eq!(merged.stalls.len() as u64, kept);
            let lost: u64 = parts.iter().map(|p| p.lost_events).sum();
            prop_assert_eq!(merged.lost_events, lost);
            prop_assert_eq!(merged.sources.len(), 3);
            prop_assert_eq!(merged.started_unix_ns, 3);
            prop_assert_eq!(merged.ended_unix_ns, 1009);
        }

        #[test]
        fn merged_stalls_are_the_longest(a in specs(), b in specs(), n in 0usize..8) {
            let (ra, rb) = (report_of("h1", 0, &a, 100), report_of("h2", 0, &b, 100));
            let merged = m(&[&ra, &rb], n);
            let mut all: Vec<u64> = a.iter().chain(&b).map(|s| s.2).collect();
            all.sort_unstable_by(|x, y| y.cmp(x));
            all.truncate(n);
            let mut got: Vec<u64> = merged.stalls.iter().map(|s| s.duration_ns).collect();
            let starts: Vec<u64> = merged.stalls.iter().map(|s| s.start_unix_ns).collect();
            prop_assert!(starts.windows(2).all(|w| w[0] <= w[1]), "chronological");
            got.sort_unstable_by(|x, y| y.cmp(x));
            prop_assert_eq!(got, all);
        }
    }

    #[test]
    fn same_code_on_two_hosts_is_one_function() {
        let ra = report_of("web-1", 0, &[(1, 0, 20, Some(0), 0)], 10);
        let rb = report_of("web-2", 0, &[(1, 0, 30, Some(1), 0)], 10);
        // f0 in m0.py (host a's path) and f1 in m1.py: different functions. Make b's the
        // same function at its own path.
        let mut rb2 = rb.clone();
        rb2.functions[0].function = "f0".into();
        rb2.functions[0].file = "/opt/venv/lib/python3.11/site-packages/pkg/m0.py".into();
        rb2.functions[0].stable_file.clear(); // as in an older report
        let merged = m(&[&ra, &rb2], 10);
        assert_eq!(merged.functions.len(), 1, "{:#?}", merged.functions);
        let f = &merged.functions[0];
        assert_eq!(f.stable_file, "pkg/m0.py");
        assert_eq!(
            f.file, "/opt/venv/lib/python3.11/site-packages/pkg/m0.py",
            "smallest raw file"
        );
        assert_eq!(f.histogram.count(), 2);
        assert_eq!(f.histogram.total_ns(), 50);
        assert_eq!(merged.host, "web-1, web-2");
        assert_eq!(merged.processes.len(), 4, "bounded");
        assert_eq!(merged.processes_dropped, 2);
        assert_eq!(merged.processes[0].host, "web-1");
    }

    #[test]
    fn refuses_other_thresholds_and_schemas() {
        let a = report_of("h", 0, &[], 1);
        let mut b = a.clone();
        b.threshold_ns = 5_000_000;
        let e = merge(&named(&[&a, &b]), MergeLimits::default()).unwrap_err();
        assert!(
            e.contains("r1.json: its threshold is 5ms but r0.json's is 10ns"),
            "{e}"
        );
        assert!(e.contains("same --threshold"), "{e}");
        let mut c = a.clone();
        c.schema = "blockprobe.report/v2".into();
        let e = merge(&named(&[&a, &c]), MergeLimits::default()).unwrap_err();
        assert!(
            e.contains("r1.json: schema \"blockprobe.report/v2\""),
            "{e}"
        );
        assert!(merge(&[], MergeLimits::default()).is_err());
    }

    #[test]
    fn many_hosts_are_summarized() {
        let reports: Vec<Report> = (0..7)
            .map(|i| report_of(&format!("h{i}"), i, &[], 1))
            .collect();
        let refs: Vec<&Report> = reports.iter().collect();
        let merged = m(&refs, 1);
        assert_eq!(merged.host, "h0, h1, h2, h3 and 3 more hosts");
        assert_eq!(merged.kernel_release, "6.1.0");
        assert_eq!(common(["fentry", "", "fentry"].into_iter()), "fentry");
        assert_eq!(common(["fentry", "tracepoint"].into_iter()), "mixed");
        assert_eq!(common(["mixed", "fentry"].into_iter()), "mixed");
        assert_eq!(common(std::iter::empty()), "");
        assert_eq!(merged.sources.len(), 7);
        // A merged report goes through a file and back unchanged.
        let json = serde_json::to_vec(&merged).unwrap();
        assert_eq!(Report::from_slice(&json).unwrap(), merged);
    }
}
