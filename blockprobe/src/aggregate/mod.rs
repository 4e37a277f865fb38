//! Aggregation of stalls into per-function histograms, with bounded memory.
//!
//! The [`Aggregator`] is fed every [`Stall`] of a run and keeps:
//! - one [`FunctionStats`] (a [`crate::histogram::Log2Histogram`] of stall durations plus the time per
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

use crate::identity::StableFiles;
use crate::model::Stall;
use crate::report::{
    FunctionReport, OTHER_FUNCTION, ProcessInfo, ProcessWarning, Report, STOPPED_FUNCTION,
    UNKNOWN_FUNCTION,
};

mod function;
pub mod tables;

pub use function::{FunctionKey, FunctionStats};

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
    tables: crate::aggregate::tables::Tables,
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

    /// Adds to a loss counter by name (the session's losses, one path for all of them).
    pub fn add_lost(&mut self, name: &str, count: u64) {
        if count == 0 {
            return;
        }
        let slot = self.lost.entry(name.to_owned()).or_insert(0);
        *slot = slot.saturating_add(count);
    }
}

/// Read access to the aggregate, for tests.
#[cfg(test)]
impl Aggregator {
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
}

impl Aggregator {
    /// Builds the report: functions by total stall time (descending; ties by count,
    /// then name and file), kept stalls in chronological order.
    pub fn report(&self, run: RunInfo) -> Report {
        let mut functions: Vec<FunctionReport> =
            self.functions.iter().map(|(k, s)| s.report(k)).collect();
        if !self.other.histogram.is_empty() {
            functions.push(self.other.report(&FunctionKey::special(OTHER_FUNCTION)));
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
mod tests;
