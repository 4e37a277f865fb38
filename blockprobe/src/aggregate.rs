//! Aggregation of stalls into per-function histograms, with bounded memory.
//!
//! The [`Aggregator`] is fed every [`Stall`] of a run and keeps:
//! - one [`FunctionStats`] (a [`Log2Histogram`] of stall durations plus the time per
//!   cause) per culprit function, keyed by [`FunctionKey`]; stalls without a culprit go
//!   under [`UNKNOWN_FUNCTION`], stalls of a stopped loop under [`STOPPED_FUNCTION`]
//!   (never under a function of theirs). At most `max_functions` distinct keys are
//!   kept; stalls of further functions are folded into the [`OTHER_FUNCTION`] key.
//! - the `max_stalls` longest stalls themselves (ties keep the earlier stall), and the
//!   number of stalls dropped to stay under that bound;
//! - the processes registered by the caller (bounded by `max_processes`);
//! - the loss counters reported by the caller.
//!
//! [`Aggregator::report`] turns all of it into a [`Report`].

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use foldhash::HashMap;

use serde::{Deserialize, Serialize};

use crate::fleet::identity::StableFiles;
use crate::histogram::Log2Histogram;
use crate::model::{Cause, Stall};
use crate::report::{FunctionReport, ProcessWarning, Report};

/// Function name used for stalls that have no culprit frame.
pub const UNKNOWN_FUNCTION: &str = "<unknown>";
/// Function name of stalls whose main cause is `stopped` (SIGSTOP, a ptrace stop, the
/// freezer): the time is nobody's code's.
pub const STOPPED_FUNCTION: &str = "<stopped>";
/// Function name under which stalls of functions past `max_functions` are folded.
pub const OTHER_FUNCTION: &str = "<other>";

/// Identifies a culprit function: its qualified name, its file, and the file's stable
/// name in the stalling process.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FunctionKey {
    /// `co_qualname` (or [`UNKNOWN_FUNCTION`], [`STOPPED_FUNCTION`], [`OTHER_FUNCTION`]).
    pub function: String,
    /// `co_filename` (empty for the two special keys).
    pub file: String,
    /// `file` made stable with the app root of the process that stalled (see
    /// [`crate::fleet::identity::stable_file`]); empty for the special keys.
    pub stable_file: String,
}

impl FunctionKey {
    /// The key a stall of a process whose app root is `app_root` is aggregated under
    /// (before any bound). The report, its stacks and the metrics all take their
    /// stable file names from here or from the same `files`, with the same root, so a
    /// function has one key everywhere.
    pub fn of_stall(stall: &Stall, app_root: &str, files: &mut StableFiles) -> Self {
        match &stall.culprit {
            Some(f) => FunctionKey {
                function: f.function.clone(),
                file: f.file.clone(),
                stable_file: files.get(&f.file, app_root),
            },
            None if stall.cause == Cause::Stopped => Self::special(STOPPED_FUNCTION),
            None => Self::special(UNKNOWN_FUNCTION),
        }
    }

    /// Whether this is the key of no function: [`UNKNOWN_FUNCTION`] or
    /// [`STOPPED_FUNCTION`] (which never count against `max_functions`).
    fn is_nobody(&self) -> bool {
        self.file.is_empty()
            && (self.function == UNKNOWN_FUNCTION || self.function == STOPPED_FUNCTION)
    }

    /// The key of [`UNKNOWN_FUNCTION`], [`STOPPED_FUNCTION`] or [`OTHER_FUNCTION`].
    pub fn special(name: &str) -> Self {
        FunctionKey {
            function: name.to_owned(),
            file: String::new(),
            stable_file: String::new(),
        }
    }
}

/// What is known about one culprit function.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FunctionStats {
    /// Stall durations.
    pub histogram: Log2Histogram,
    /// Stall time by cause, on CPU and off (sum of `Stall::causes`).
    pub causes: BTreeMap<Cause, u64>,
}

impl FunctionStats {
    /// Adds one stall.
    pub fn record(&mut self, stall: &Stall) {
        self.histogram.record(stall.duration_ns);
        add_causes(&mut self.causes, &stall.causes);
    }

    /// Adds every stall of `other`. Exact, associative and commutative.
    #[allow(dead_code)] // For merging reports of several hosts.
    pub fn merge(&mut self, other: &FunctionStats) {
        self.histogram.merge(&other.histogram);
        add_causes(&mut self.causes, &other.causes);
    }
}

fn add_causes(into: &mut BTreeMap<Cause, u64>, from: &BTreeMap<Cause, u64>) {
    for (&cause, &ns) in from {
        let slot = into.entry(cause).or_insert(0);
        *slot = slot.saturating_add(ns);
    }
}

/// A traced Python process, as registered by the caller.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    /// Process id (host pid namespace).
    pub pid: u32,
    /// Its pid in its own pid namespace (a container), when that is not the host's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ns_pid: Option<u32>,
    /// Command name.
    pub comm: String,
    /// Interpreter version, e.g. `"3.11.7"`.
    pub python_version: String,
    /// Thread ids of the threads running an asyncio event loop, ascending.
    pub loop_threads: Vec<u32>,
    /// Command line (argv); only argv[0] with `--redact-cmdline`.
    #[serde(default)]
    pub cmdline: Vec<String>,
    /// Service label: `--service`, else derived from the command line
    /// (see [`crate::fleet::identity`]).
    #[serde(default)]
    pub service: String,
    /// The process's cgroup path (cgroup v2, else the first v1 hierarchy's).
    #[serde(default)]
    pub cgroup: String,
    /// Container id found in the cgroup path (empty when not in a container).
    #[serde(default)]
    pub container_id: String,
    /// Directory first-party files are made relative to (empty: none).
    #[serde(default)]
    pub app_root: String,
    /// Host the process ran on.
    #[serde(default)]
    pub host: String,
    /// Whether a thread of it polled (epoll family) while traced; `None` in reports
    /// of versions that did not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub polled: Option<bool>,
}

/// Memory bounds of an [`Aggregator`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Distinct culprit functions kept; later ones are folded into [`OTHER_FUNCTION`]
    /// (which, with [`UNKNOWN_FUNCTION`] if present, comes on top of this number).
    pub max_functions: usize,
    /// Stalls kept for the report: the longest ones.
    pub max_stalls: usize,
    /// Processes kept for the report; later registrations are counted and dropped.
    pub max_processes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_functions: 10_000,
            max_stalls: 10_000,
            max_processes: 10_000,
        }
    }
}

/// Run-level facts the aggregator does not know; see [`Aggregator::report`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunInfo {
    /// Host name.
    pub host: String,
    /// Wall-clock start of the run, nanoseconds since the Unix epoch.
    pub started_unix_ns: u64,
    /// Length of the run.
    pub duration_ns: u64,
    /// Stall threshold the run used.
    pub threshold_ns: u64,
}

/// A kept stall, ordered so that the heap's top is the first one to drop:
/// the shortest, and among equally short ones the latest.
struct Kept {
    seq: u64,
    stall: Stall,
}

impl Kept {
    fn rank(&self) -> (u64, Reverse<u64>) {
        (self.stall.duration_ns, Reverse(self.seq))
    }
}

impl PartialEq for Kept {
    fn eq(&self, other: &Self) -> bool {
        self.rank() == other.rank()
    }
}
impl Eq for Kept {}
impl PartialOrd for Kept {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Kept {
    fn cmp(&self, other: &Self) -> Ordering {
        self.rank().cmp(&other.rank())
    }
}

/// Collects the stalls of a run.
pub struct Aggregator {
    limits: Limits,
    functions: HashMap<FunctionKey, FunctionStats>,
    /// Stalls of functions past `max_functions`.
    other: FunctionStats,
    /// Min-heap (via `Reverse`) of the longest stalls.
    stalls: BinaryHeap<Reverse<Kept>>,
    seq: u64,
    stalls_dropped: u64,
    processes: BTreeMap<u32, ProcessInfo>,
    processes_dropped: u64,
    lost: BTreeMap<String, u64>,
    /// Processes whose stalls may be missing, and why.
    warnings: BTreeSet<(u32, String)>,
    /// Per-service and per-stack aggregates.
    tables: crate::fleet::tables::Tables,
    /// Stable file names, for function keys and stacks alike.
    stable_files: StableFiles,
}

impl Default for Aggregator {
    fn default() -> Self {
        Self::new(Limits::default())
    }
}

impl Aggregator {
    /// An empty aggregator with the given bounds.
    pub fn new(limits: Limits) -> Self {
        Aggregator {
            limits,
            functions: HashMap::default(),
            other: FunctionStats::default(),
            stalls: BinaryHeap::new(),
            seq: 0,
            stalls_dropped: 0,
            processes: BTreeMap::new(),
            processes_dropped: 0,
            lost: BTreeMap::new(),
            warnings: BTreeSet::new(),
            tables: Default::default(),
            stable_files: StableFiles::default(),
        }
    }

    /// Adds one stall. If its process is registered, its thread is added to the
    /// process's loop threads.
    pub fn record(&mut self, stall: Stall) {
        self.seq += 1;
        if let Some(p) = self.processes.get_mut(&stall.pid) {
            insert_sorted(&mut p.loop_threads, stall.tid);
        }
        let (service, root) = self
            .processes
            .get(&stall.pid)
            .map_or(("", ""), |p| (p.service.as_str(), p.app_root.as_str()));
        let key = FunctionKey::of_stall(&stall, root, &mut self.stable_files);
        self.tables
            .record(&stall, service, root, &mut self.stable_files);
        let special = key.is_nobody();
        if let Some(stats) = self.functions.get_mut(&key) {
            stats.record(&stall);
        } else if special || self.real_function_keys() < self.limits.max_functions {
            self.functions.entry(key).or_default().record(&stall);
        } else {
            self.other.record(&stall);
        }

        let kept = Kept {
            seq: self.seq,
            stall,
        };
        if self.stalls.len() < self.limits.max_stalls {
            self.stalls.push(Reverse(kept));
        } else {
            self.stalls_dropped += 1;
            if let Some(mut shortest) = self.stalls.peek_mut()
                && kept > shortest.0
            {
                shortest.0 = kept;
            }
        }
    }

    fn real_function_keys(&self) -> usize {
        let nobody = [UNKNOWN_FUNCTION, STOPPED_FUNCTION]
            .into_iter()
            .filter(|&name| self.functions.contains_key(&FunctionKey::special(name)))
            .count();
        self.functions.len() - nobody
    }

    /// Whether registered process `pid` has a loop thread.
    pub fn has_loop_thread(&self, pid: u32) -> bool {
        self.processes
            .get(&pid)
            .is_some_and(|p| !p.loop_threads.is_empty())
    }

    /// Notes that a thread of registered process `pid` polled.
    pub fn mark_polled(&mut self, pid: u32) {
        if let Some(p) = self.processes.get_mut(&pid) {
            p.polled = Some(true);
        }
    }

    /// Records that the stalls of process `pid` may be missing, for `reason` (a
    /// [`crate::report::warning`] code); `false` undoes it (the reason no longer holds).
    pub fn set_warning(&mut self, pid: u32, reason: &str, holds: bool) {
        let key = (pid, reason.to_owned());
        if holds {
            self.warnings.insert(key);
        } else {
            self.warnings.remove(&key);
        }
    }

    /// Registers a process, or updates it: loop threads are merged, everything else is
    /// replaced.
    pub fn register_process(&mut self, info: ProcessInfo) {
        let mut info = info;
        info.loop_threads.sort_unstable();
        info.loop_threads.dedup();
        if let Some(p) = self.processes.get_mut(&info.pid) {
            let mut threads = std::mem::take(&mut p.loop_threads);
            for tid in std::mem::take(&mut info.loop_threads) {
                insert_sorted(&mut threads, tid);
            }
            *p = ProcessInfo {
                loop_threads: threads,
                ..info
            };
        } else if self.processes.len() < self.limits.max_processes {
            self.processes.insert(info.pid, info);
        } else {
            self.processes_dropped += 1;
        }
    }

    /// Records that thread `tid` of registered process `pid` runs an event loop.
    /// Ignored if the process is not registered.
    pub fn add_loop_thread(&mut self, pid: u32, tid: u32) {
        if let Some(p) = self.processes.get_mut(&pid) {
            insert_sorted(&mut p.loop_threads, tid);
        }
    }

    /// Adds to a loss counter by name (see [`crate::losses`]).
    pub fn add_lost(&mut self, name: &str, count: u64) {
        if count == 0 {
            return;
        }
        let slot = self.lost.entry(name.to_owned()).or_insert(0);
        *slot = slot.saturating_add(count);
    }
}

/// Read access to the aggregate while it runs.
#[allow(dead_code)] // For the tracer's status display and for tests.
impl Aggregator {
    /// Number of stalls recorded.
    pub fn stall_count(&self) -> u64 {
        self.seq
    }

    /// Number of stalls not kept for the report.
    pub fn stalls_dropped(&self) -> u64 {
        self.stalls_dropped
    }

    /// The stats of one function key, if it has any.
    pub fn function(&self, key: &FunctionKey) -> Option<&FunctionStats> {
        if key.function == OTHER_FUNCTION && key.file.is_empty() && !self.other.histogram.is_empty()
        {
            return Some(&self.other);
        }
        self.functions.get(key)
    }

    /// Number of function keys, including the special ones that are in use.
    pub fn function_count(&self) -> usize {
        self.functions.len() + usize::from(!self.other.histogram.is_empty())
    }

    /// Builds the report: functions by total stall time (descending; ties by count,
    /// then name and file), kept stalls in chronological order.
    pub fn report(&self, run: RunInfo) -> Report {
        let mut functions: Vec<FunctionReport> = self
            .functions
            .iter()
            .map(|(k, s)| FunctionReport::new(k, s))
            .collect();
        if !self.other.histogram.is_empty() {
            functions.push(FunctionReport::new(
                &FunctionKey::special(OTHER_FUNCTION),
                &self.other,
            ));
        }
        crate::report::sort_functions(&mut functions);

        let mut kept: Vec<&Kept> = self.stalls.iter().map(|r| &r.0).collect();
        kept.sort_by_key(|k| (k.stall.start_unix_ns, k.seq));
        let stalls = kept.into_iter().map(|k| k.stall.clone()).collect();

        let lost_events = self.lost.values().fold(0u64, |a, &b| a.saturating_add(b));
        Report {
            schema: crate::report::SCHEMA.to_owned(),
            blockprobe_version: env!("CARGO_PKG_VERSION").to_owned(),
            host: run.host.clone(),
            started_unix_ns: run.started_unix_ns,
            duration_ns: run.duration_ns,
            threshold_ns: run.threshold_ns,
            lost_events,
            lost: self.lost.clone(),
            stalls_dropped: self.stalls_dropped,
            processes_dropped: self.processes_dropped,
            ended_unix_ns: run.started_unix_ns.saturating_add(run.duration_ns),
            kernel_release: String::new(),
            poll_hook: String::new(),
            processes: self
                .processes
                .values()
                .map(|p| ProcessInfo {
                    host: run.host.clone(),
                    ..p.clone()
                })
                .collect(),
            warnings: (self.warnings.iter())
                .map(|(pid, reason)| ProcessWarning {
                    pid: *pid,
                    reason: reason.clone(),
                    host: run.host.clone(),
                })
                .collect(),
            stalls,
            functions,
            services: self.tables.services(),
            stacks: self.tables.stacks(),
            sources: Vec::new(),
        }
    }
}

/// Loop threads listed per process in the report: a process that starts a thread and a
/// loop per call would list thousands.
pub const MAX_LISTED_LOOP_THREADS: usize = 256;

/// Adds loop thread `x` to the sorted list `v`, unless it holds
/// [`MAX_LISTED_LOOP_THREADS`] already.
fn insert_sorted(v: &mut Vec<u32>, x: u32) {
    if let Err(pos) = v.binary_search(&x)
        && v.len() < MAX_LISTED_LOOP_THREADS
    {
        v.insert(pos, x);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::{CulpritFrom, Frame};
    use blockprobe_common::counters::Counter;

    pub(crate) fn frame(function: &str, file: &str, line: u32) -> Frame {
        Frame {
            function: function.into(),
            file: file.into(),
            line,
        }
    }

    pub(crate) fn stall(pid: u32, start: u64, dur: u64, culprit: Option<Frame>) -> Stall {
        let mut causes = BTreeMap::new();
        causes.insert(Cause::Sleep, dur / 4 * 3);
        causes.insert(Cause::Io, dur / 8);
        Stall {
            pid,
            tid: pid.wrapping_add(1),
            comm: "python3".into(),
            start_unix_ns: start,
            duration_ns: dur,
            cause: Cause::Sleep,
            syscall: Some("clock_nanosleep".into()),
            fd_kind: None,
            causes,
            stack: culprit.iter().cloned().collect(),
            short_calls: None,
            culprit_from: culprit.is_some().then_some(CulpritFrom::Evidence),
            culprit,
            gil_holder_tid: None,
            gil_holder_stack: Vec::new(),
            task: None,
            cpu_samples: 0,
            stack_samples: 0,
            ongoing: false,
            started_before_tracing: false,
        }
    }

    fn run() -> RunInfo {
        RunInfo {
            host: "h".into(),
            started_unix_ns: 1,
            duration_ns: 2,
            threshold_ns: 3,
        }
    }

    /// A stall of a loop stopped from outside (no culprit, cause `stopped`).
    pub(crate) fn stopped_stall(pid: u32, dur: u64) -> Stall {
        Stall {
            cause: Cause::Stopped,
            causes: [(Cause::Stopped, dur)].into_iter().collect(),
            syscall: None,
            ..stall(pid, 0, dur, None)
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
}
