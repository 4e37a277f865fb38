//! Tests of the aggregator.

use super::*;
use crate::model::Cause;
use crate::model::fixtures::{frame, stall, stopped_stall};
use blockprobe_common::counters::Counter;

fn run() -> RunInfo {
    RunInfo {
        host: "h".into(),
        started_unix_ns: 1,
        duration_ns: 2,
        threshold_ns: 3,
    }
}

#[test]
fn stopped_loops_are_under_stopped_and_take_no_function_slot() {
    let mut a = Aggregator::new(Limits {
        max_functions: 1,
        ..Limits::default()
    });
    a.record(stopped_stall(1, 700_000_000));
    a.record(stall(1, 10, 5_000_000, None));
    a.record(stall(1, 20, 1_000_000, Some(frame("f", "a.py", 1))));
    let names: Vec<(String, u64)> = (a.report(run()).functions.iter())
        .map(|f| (f.function.clone(), f.histogram.total_ns()))
        .collect();
    assert_eq!(
        names,
        [
            (STOPPED_FUNCTION.to_owned(), 700_000_000),
            (UNKNOWN_FUNCTION.to_owned(), 5_000_000),
            ("f".to_owned(), 1_000_000),
        ]
    );
}

#[test]
fn loop_threads_listed_are_bounded() {
    let mut a = Aggregator::default();
    a.register_process(ProcessInfo {
        pid: 7,
        ..ProcessInfo::default()
    });
    for tid in (0..10_000).rev() {
        a.add_loop_thread(7, tid);
    }
    let listed = &a.report(run()).processes[0].loop_threads;
    assert_eq!(listed.len(), MAX_LISTED_LOOP_THREADS);
    assert!(listed.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn groups_by_function_and_file() {
    let mut a = Aggregator::default();
    a.record(stall(1, 10, 1_000_000, Some(frame("f", "a.py", 1))));
    a.record(stall(1, 20, 3_000_000, Some(frame("f", "a.py", 7))));
    a.record(stall(1, 30, 2_000_000, Some(frame("f", "b.py", 1))));
    a.record(stall(1, 40, 5_000_000, None));
    let key = |f: &str, file: &str| FunctionKey {
        function: f.into(),
        file: file.into(),
        stable_file: file.into(),
    };
    let fa = a.function(&key("f", "a.py")).unwrap();
    assert_eq!(fa.histogram.count(), 2);
    assert_eq!(fa.histogram.total_ns(), 4_000_000);
    assert_eq!(fa.histogram.max_ns(), 3_000_000);
    assert_eq!(fa.causes[&Cause::Sleep], 3_000_000);
    assert_eq!(fa.causes[&Cause::Io], 500_000);
    assert_eq!(a.function(&key("f", "b.py")).unwrap().histogram.count(), 1);
    let unknown = a.function(&key(UNKNOWN_FUNCTION, "")).unwrap();
    assert_eq!(unknown.histogram.total_ns(), 5_000_000);
    assert_eq!(a.function_count(), 3);

    let r = a.report(run());
    let names: Vec<(&str, &str, u64)> = r
        .functions
        .iter()
        .map(|f| (f.function.as_str(), f.file.as_str(), f.histogram.total_ns()))
        .collect();
    assert_eq!(
        names,
        vec![
            ("<unknown>", "", 5_000_000),
            ("f", "a.py", 4_000_000),
            ("f", "b.py", 2_000_000),
        ]
    );
    assert_eq!(r.stall_count(), 4);
}

/// A host whose processes are rooted at /srv and /srv/app, and a host with only the
/// /srv one: a stall of the /srv process in /srv/app/h.py has one key in the
/// functions, the stacks and the metrics, the same on both hosts, so merge adds it
/// up and diff compares it.
#[test]
fn nested_app_roots_give_a_function_one_key_everywhere() {
    use crate::fleet::diff::{DiffOptions, Status, diff};
    use crate::fleet::merge::{MergeLimits, merge};
    use crate::metrics::{Metrics, MetricsConfig, process::SelfStats};

    let process = |pid: u32, root: &str| ProcessInfo {
        pid,
        service: "api".into(),
        app_root: root.into(),
        ..Default::default()
    };
    let handler = stall(1, 0, 20_000_000, Some(frame("handler", "/srv/app/h.py", 3)));
    let host = |roots: &[(u32, &str)]| {
        let mut a = Aggregator::default();
        let mut m = Metrics::new(MetricsConfig {
            threshold_ns: 10_000_000,
            max_functions: 10,
            max_services: 10,
        });
        for &(pid, root) in roots {
            a.register_process(process(pid, root));
            m.attach(&process(pid, root));
        }
        a.record(handler.clone());
        m.stall(&handler);
        (a.report(run()), m.render(&SelfStats::default()))
    };
    let (nested, nested_metrics) = host(&[(1, "/srv"), (2, "/srv/app")]);
    let (alone, alone_metrics) = host(&[(1, "/srv")]);
    for (r, metrics) in [(&nested, &nested_metrics), (&alone, &alone_metrics)] {
        assert_eq!(r.functions[0].stable_file, "app/h.py", "{:?}", r.functions);
        assert_eq!(r.stacks[0].frames[0].file, "app/h.py");
        assert!(
            metrics.contains("function=\"handler\",file=\"app/h.py\""),
            "{metrics}"
        );
    }
    let merged = merge(
        &[("a".into(), nested.clone()), ("b".into(), alone.clone())],
        MergeLimits::default(),
    )
    .unwrap();
    assert_eq!(merged.functions.len(), 1, "{:?}", merged.functions);
    assert_eq!(merged.functions[0].histogram.count(), 2);
    let gate = DiffOptions {
        fail_on_regression: Some(10.0),
        ..DiffOptions::default()
    };
    let d = diff(("a", &alone), ("b", &nested), &gate);
    assert_eq!(d.functions.len(), 1, "{:?}", d.functions);
    assert_eq!(d.functions[0].status, Status::Changed);
    assert!(!d.regressed);
}

#[test]
fn folds_functions_past_the_limit_into_other() {
    let mut a = Aggregator::new(Limits {
        max_functions: 2,
        ..Limits::default()
    });
    a.record(stall(1, 0, 100, None));
    for (i, name) in ["a", "b", "c", "d", "a"].iter().enumerate() {
        a.record(stall(
            1,
            i as u64,
            1000 + i as u64,
            Some(frame(name, "x.py", 1)),
        ));
    }
    let r = a.report(run());
    let mut names: Vec<&str> = r.functions.iter().map(|f| f.function.as_str()).collect();
    names.sort();
    assert_eq!(names, vec!["<other>", "<unknown>", "a", "b"]);
    let other = r
        .functions
        .iter()
        .find(|f| f.function == "<other>")
        .unwrap();
    assert_eq!(other.histogram.count(), 2, "c and d");
    let a_stats = r.functions.iter().find(|f| f.function == "a").unwrap();
    assert_eq!(
        a_stats.histogram.count(),
        2,
        "a keeps its key after the limit"
    );
    let total: u64 = r.functions.iter().map(|f| f.histogram.count()).sum();
    assert_eq!(total, 6, "nothing lost");
}

#[test]
fn keeps_the_longest_stalls_in_time_order() {
    let mut a = Aggregator::new(Limits {
        max_stalls: 3,
        ..Limits::default()
    });
    let durations = [5, 1, 9, 3, 7, 9, 2];
    for (i, d) in durations.iter().enumerate() {
        a.record(stall(1, 100 - i as u64, *d, None));
    }
    assert_eq!(a.stalls_dropped(), 4);
    let r = a.report(run());
    assert_eq!(r.stalls_dropped, 4);
    let kept: Vec<(u64, u64)> = r
        .stalls
        .iter()
        .map(|s| (s.start_unix_ns, s.duration_ns))
        .collect();
    // The two 9s and the 7, sorted by start time.
    assert_eq!(kept, vec![(95, 9), (96, 7), (98, 9)]);
    // All of them still count in the histogram.
    assert_eq!(r.functions[0].histogram.count(), 7);
}

#[test]
fn equal_durations_keep_the_earliest() {
    let mut a = Aggregator::new(Limits {
        max_stalls: 2,
        ..Limits::default()
    });
    for i in 0..5 {
        a.record(stall(1, i, 10, None));
    }
    let r = a.report(run());
    let starts: Vec<u64> = r.stalls.iter().map(|s| s.start_unix_ns).collect();
    assert_eq!(starts, vec![0, 1]);
}

#[test]
fn zero_stall_limit_keeps_none() {
    let mut a = Aggregator::new(Limits {
        max_stalls: 0,
        ..Limits::default()
    });
    a.record(stall(1, 0, 10, None));
    assert_eq!(a.report(run()).stalls.len(), 0);
    assert_eq!(a.stalls_dropped(), 1);
}

#[test]
fn processes_and_loss_counters() {
    let mut a = Aggregator::new(Limits {
        max_processes: 2,
        ..Limits::default()
    });
    a.register_process(ProcessInfo {
        pid: 7,
        comm: "old".into(),
        python_version: "3.10.1".into(),
        loop_threads: vec![9, 8, 9],
        ..Default::default()
    });
    a.register_process(ProcessInfo {
        pid: 7,
        comm: "python3".into(),
        python_version: "3.11.7".into(),
        loop_threads: vec![10],
        ..Default::default()
    });
    a.register_process(ProcessInfo {
        pid: 3,
        comm: "x".into(),
        python_version: "3.12.0".into(),
        loop_threads: vec![],
        ..Default::default()
    });
    a.register_process(ProcessInfo {
        pid: 4,
        comm: "y".into(),
        python_version: "3.12.0".into(),
        loop_threads: vec![],
        ..Default::default()
    });
    a.add_loop_thread(3, 5);
    a.add_loop_thread(99, 5);
    a.record(stall(7, 0, 10, None)); // tid 8, already known
    a.record(stall(3, 0, 10, None)); // tid 4
    a.add_lost(Counter::LostStall.name(), 5);
    a.add_lost(Counter::LostStall.name(), 1);
    a.add_lost(Counter::ThreadMapFull.name(), 0);
    a.add_lost("userspace_decode", 2);
    a.add_lost("userspace_decode", 1);
    let r = a.report(run());
    assert_eq!(
        r.processes,
        vec![
            ProcessInfo {
                pid: 3,
                comm: "x".into(),
                python_version: "3.12.0".into(),
                loop_threads: vec![4, 5],
                host: "h".into(),
                ..Default::default()
            },
            ProcessInfo {
                pid: 7,
                comm: "python3".into(),
                python_version: "3.11.7".into(),
                loop_threads: vec![8, 9, 10],
                host: "h".into(),
                ..Default::default()
            },
        ]
    );
    assert_eq!(r.processes_dropped, 1);
    assert_eq!(r.lost_events, 9);
    assert_eq!(r.lost.get("ringbuf_stall"), Some(&6));
    assert_eq!(r.lost.get("userspace_decode"), Some(&3));
    assert!(!r.lost.contains_key("thread_map_full"));
}

/// Every counter the kernel side keeps (a full ring buffer per event kind, a full map)
/// reaches the report under its own name, and `lost_events` is their sum.
#[test]
fn every_kernel_counter_reaches_the_report() {
    use blockprobe_common::counters::Counter;
    let mut a = Aggregator::new(Limits::default());
    for (i, counter) in Counter::ALL.into_iter().enumerate() {
        a.add_lost(counter.name(), i as u64 + 1);
    }
    let r = a.report(run());
    let n = Counter::ALL.len() as u64;
    assert_eq!(
        r.lost.len(),
        Counter::ALL.len(),
        "names are distinct: {:?}",
        r.lost
    );
    for (i, counter) in Counter::ALL.into_iter().enumerate() {
        assert_eq!(
            r.lost.get(counter.name()),
            Some(&(i as u64 + 1)),
            "{counter:?}"
        );
    }
    assert_eq!(r.lost_events, n * (n + 1) / 2);
}
