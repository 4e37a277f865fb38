//! The versioned JSON report (`blockprobe.report/v1`): what `run --output` writes and
//! `blockprobe report FILE` reads.
//!
//! ```text
//! {"schema":"blockprobe.report/v1","blockprobe_version":str,"host":str,
//!  "started_unix_ns":int,"duration_ns":int,"threshold_ns":int,
//!  "lost_events":int,"lost":{counter_name:int},"stalls_dropped":int,"processes_dropped":int,
//!  "ended_unix_ns":int,"kernel_release":str,"poll_hook":str,
//!  "processes":[{"pid":int,"comm":str,"python_version":str,"loop_threads":[int],
//!                "cmdline":[str],"service":str,"cgroup":str,"container_id":str,
//!                "app_root":str,"host":str}],
//!  "stalls":[{"pid":int,"tid":int,"comm":str,"start_unix_ns":int,"duration_ns":int,
//!             "cause":str,"syscall":str|null,"causes":{cause:int},
//!             "stack":[{"function":str,"file":str,"line":int}],
//!             "culprit":{"function":str,"file":str,"line":int}|null}],
//!  "functions":[{"function":str,"file":str,"stable_file":str,"count":int,"total_ns":int,
//!                "max_ns":int,"buckets":[{"le_ns":int,"count":int}],"causes":{cause:int}}],
//!  "services":[{"service":str,"count":int,"total_ns":int,"max_ns":int,"buckets":[…],
//!               "causes":{cause:int}}],
//!  "stacks":[{"service":str,"leaf":str,"frames":[{"function":str,"file":str}],
//!             "count":int,"total_ns":int}],
//!  "sources":[{"host":str,"started_unix_ns":int,"ended_unix_ns":int,
//!              "blockprobe_version":str,"kernel_release":str,"stalls":int}]}
//! ```
//!
//! Compatibility rules: fields are only ever added, never renamed or removed; readers
//! ignore fields they do not know. The fields beyond the original v1 list
//! (`blockprobe_version`, `started_unix_ns`, `lost`, `stalls_dropped`,
//! `processes_dropped`, per-function `causes`, and the fleet fields: `ended_unix_ns`,
//! `kernel_release`, `poll_hook`, the per-process identity after `loop_threads`, `stable_file`,
//! `services`, `stacks`, `sources`) default when absent. `services` and `stacks` cover
//! every stall, like `functions` (see [`crate::aggregate::tables`]); `sources` is only
//! filled by `blockprobe merge`. `stalls` holds the longest stalls (at most the
//! aggregator's `max_stalls`) in chronological order; `stalls_dropped` counts the
//! others. `functions` is sorted by `total_ns`, descending, and covers every stall.
//! `buckets` are described in [`crate::histogram`].
//!
//! This module is the schema's one home: the report and its entries, the special
//! names and the sort orders; [`file`] loads and writes reports. Reports are built by
//! [`crate::aggregate`] and combined by [`crate::fleet`].

mod file;
mod function;
mod process;
mod source;
mod tables;

pub use file::{MAX_REPORT_BYTES, write_atomic_with};
pub use function::{
    FunctionReport, OTHER_FUNCTION, STOPPED_FUNCTION, UNKNOWN_FUNCTION, sort_functions,
};
pub use process::{ProcessInfo, ProcessWarning, warning};
pub use source::Source;
pub use tables::{
    OTHER_STACKS, ServiceReport, StackFrame, StackKey, StackReport, leaf_of, sort_services,
    sort_stacks,
};

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::Stall;

/// The schema this build writes and reads.
pub const SCHEMA: &str = "blockprobe.report/v1";

/// A whole report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Always [`SCHEMA`].
    pub schema: String,
    /// Version of the blockprobe that wrote the report.
    #[serde(default)]
    pub blockprobe_version: String,
    /// Host name.
    pub host: String,
    /// Wall-clock start of the run, nanoseconds since the Unix epoch.
    #[serde(default)]
    pub started_unix_ns: u64,
    /// Length of the run.
    pub duration_ns: u64,
    /// Stall threshold.
    pub threshold_ns: u64,
    /// Total of `lost`.
    pub lost_events: u64,
    /// Lost events by kind (non-zero counters only; names from `Counter::name()` and
    /// userspace loss names).
    #[serde(default)]
    pub lost: BTreeMap<String, u64>,
    /// Stalls counted in `functions` but not listed in `stalls`.
    #[serde(default)]
    pub stalls_dropped: u64,
    /// Processes not listed in `processes` because of the aggregator's bound.
    #[serde(default)]
    pub processes_dropped: u64,
    /// Traced processes, by pid.
    pub processes: Vec<ProcessInfo>,
    /// The longest stalls, chronologically.
    pub stalls: Vec<Stall>,
    /// Per culprit function, by total stall time.
    pub functions: Vec<FunctionReport>,
    /// Wall-clock end of the run (of the last run, in a merged report).
    #[serde(default)]
    pub ended_unix_ns: u64,
    /// Kernel release of the host (`uname -r`).
    #[serde(default)]
    pub kernel_release: String,
    /// How the epoll syscalls were hooked: `fentry` or `tracepoint` (`mixed` in a merged
    /// report whose runs differ; empty when unknown).
    #[serde(default)]
    pub poll_hook: String,
    /// Per service label, by total stall time.
    #[serde(default)]
    pub services: Vec<ServiceReport>,
    /// Blocking time per distinct stack (bounded), by total stall time.
    #[serde(default)]
    pub stacks: Vec<StackReport>,
    /// The runs a merged report was made of (`blockprobe merge`); empty for one run.
    #[serde(default)]
    pub sources: Vec<Source>,
    /// Processes whose stalls may be missing from this report, and why.
    #[serde(default)]
    pub warnings: Vec<ProcessWarning>,
}

impl Report {
    /// Number of stalls in the run (every stall is counted in exactly one function).
    pub fn stall_count(&self) -> u64 {
        self.functions
            .iter()
            .fold(0u64, |a, f| a.saturating_add(f.histogram.count()))
    }

    /// Number of distinct loop threads over all processes.
    pub fn loop_thread_count(&self) -> usize {
        self.processes.iter().map(|p| p.loop_threads.len()).sum()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::aggregate::{Aggregator, RunInfo};
    use crate::model::Cause;
    use crate::model::fixtures::{frame, stall};
    use blockprobe_common::counters::Counter;

    /// A report with a bit of everything, including names that need escaping.
    pub(crate) fn sample_report() -> Report {
        let mut a = Aggregator::default();
        a.register_process(ProcessInfo {
            pid: 4242,
            comm: "python3".into(),
            python_version: "3.11.7".into(),
            loop_threads: vec![4242],
            ..Default::default()
        });
        let fetch = frame("Client.fetch_data", "/srv/app/services/db.py", 42);
        let evil = frame("bad\u{1b}[31mname\n", "/srv/app/x\ty.py", 7);
        let t0 = 1_700_000_000_000_000_000;
        for i in 0..30u64 {
            let mut s = stall(
                4242,
                t0 + i * 1_000_000_000,
                150_000_000 + i * 1_000_000,
                Some(fetch.clone()),
            );
            s.tid = 4242;
            s.stack = vec![
                frame("sleep", "/usr/lib/python3.11/time.py", 1),
                fetch.clone(),
            ];
            a.record(s);
        }
        for i in 0..5u64 {
            let mut s = stall(4242, t0 + 500 + i, 12_000_000, Some(evil.clone()));
            s.tid = 4242;
            s.cause = Cause::Io;
            s.syscall = None;
            s.causes = [(Cause::Io, 12_000_000)].into_iter().collect();
            a.record(s);
        }
        let mut s = stall(4242, t0 + 900, 20_000_000, None);
        s.tid = 4242;
        s.stack.clear();
        a.record(s);
        a.add_lost(Counter::LostStall.name(), 3);
        a.report(RunInfo {
            host: "web-1".into(),
            started_unix_ns: t0,
            duration_ns: 60_000_000_000,
            threshold_ns: 10_000_000,
        })
    }

    #[test]
    fn schema_field_names() {
        let r = sample_report();
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(v["schema"], "blockprobe.report/v1");
        for k in [
            "host",
            "duration_ns",
            "threshold_ns",
            "lost_events",
            "processes",
            "stalls",
            "functions",
            "lost",
            "blockprobe_version",
            "started_unix_ns",
            "stalls_dropped",
        ] {
            assert!(v.get(k).is_some(), "missing {k}");
        }
        assert_eq!(v["lost_events"], 3);
        assert_eq!(v["lost"]["ringbuf_stall"], 3);
        let p = &v["processes"][0];
        assert_eq!(p["pid"], 4242);
        assert_eq!(p["comm"], "python3");
        assert_eq!(p["python_version"], "3.11.7");
        assert_eq!(p["loop_threads"], serde_json::json!([4242]));
        let s = &v["stalls"][0];
        for k in [
            "pid",
            "tid",
            "duration_ns",
            "cause",
            "syscall",
            "stack",
            "culprit",
            "comm",
            "start_unix_ns",
            "causes",
        ] {
            assert!(s.get(k).is_some(), "stall missing {k}");
        }
        assert_eq!(s["cause"], "sleep");
        assert_eq!(s["syscall"], "clock_nanosleep");
        assert_eq!(s["culprit"]["function"], "Client.fetch_data");
        assert_eq!(s["culprit"]["line"], 42);
        assert_eq!(s["stack"][0]["file"], "/usr/lib/python3.11/time.py");
        assert!(s["causes"]["sleep"].is_u64());
        let unknown = v["stalls"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["culprit"].is_null());
        assert!(unknown.is_some(), "culprit null when absent");
        let f = &v["functions"][0];
        assert_eq!(f["function"], "Client.fetch_data");
        assert_eq!(f["file"], "/srv/app/services/db.py");
        assert_eq!(f["count"], 30);
        assert!(f["total_ns"].is_u64() && f["max_ns"].is_u64());
        assert!(f["causes"]["sleep"].is_u64());
        let b = &f["buckets"][0];
        assert!(b["le_ns"].is_u64() && b["count"].is_u64());
        // Sorted by total_ns descending.
        let totals: Vec<u64> = v["functions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["total_ns"].as_u64().unwrap())
            .collect();
        assert!(totals.windows(2).all(|w| w[0] >= w[1]), "{totals:?}");
    }

    #[test]
    fn extreme_values_round_trip() {
        let mut a = Aggregator::default();
        let mut s = stall(u32::MAX, u64::MAX, u64::MAX, Some(frame("f", "", u32::MAX)));
        s.causes = [(Cause::Other, u64::MAX), (Cause::Wait, 0)]
            .into_iter()
            .collect();
        a.record(s.clone());
        s.duration_ns = 0;
        a.record(s);
        let r = a.report(RunInfo {
            host: String::new(),
            started_unix_ns: u64::MAX,
            duration_ns: u64::MAX,
            threshold_ns: 0,
        });
        let json = serde_json::to_vec(&r).unwrap();
        let back = Report::from_slice(&json).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.functions[0].histogram.max_ns(), u64::MAX);
        assert_eq!(back.functions[0].histogram.total_ns(), u64::MAX);
    }

    #[test]
    fn loads_a_minimal_v1_report() {
        let json = r#"{"schema":"blockprobe.report/v1","host":"h","duration_ns":5,"threshold_ns":1,"lost_events":0,
            "processes":[{"pid":1,"comm":"c","python_version":"3.12.1","loop_threads":[1]}],
            "stalls":[],
            "functions":[{"function":"f","file":"a.py","count":2,"total_ns":9,"max_ns":6,
                          "buckets":[{"le_ns":3,"count":1},{"le_ns":7,"count":1}]}],
            "some_future_field":{"x":1}}"#;
        let r = Report::from_slice(json.as_bytes()).unwrap();
        assert_eq!(r.functions[0].histogram.count(), 2);
        assert_eq!(r.stall_count(), 2);
        assert!(r.lost.is_empty());
    }
}
