//! Prometheus metrics of a long-running session (`blockprobe serve`): the state the
//! live sink ([`sink::MetricsSink`]) updates, its text exposition ([`Metrics::render`],
//! format 0.0.4), the HTTP listener ([`http`]) and blockprobe's own CPU and memory
//! ([`process`]).
//!
//! # Metrics
//!
//! - `blockprobe_stall_duration_seconds{service,function,file}`: histogram of stall
//!   durations per service and culprit function (`file` is the stable file name);
//!   stalls of a stopped loop (cause `stopped`) are left out: no code made them.
//!   Buckets are the report's log2 buckets, `le` = (2^k - 1) ns in seconds, from the one
//!   holding the threshold up to ~69 s.
//! - `blockprobe_stalls_by_cause_total{service,cause}`: stalls by main cause.
//! - `blockprobe_blocked_seconds_total{service,cause}`: stall time by cause (`cpu`,
//!   `runqueue` and the off-CPU reasons).
//! - `blockprobe_event_loops{service}`, `blockprobe_traced_processes{service}`: gauges.
//! - `blockprobe_stuck_event_loops{service}`: loops off-await for a second or more right
//!   now, a hang in progress (its stall is only counted once it ends): alert on it.
//! - `blockprobe_lost_events_total{kind}`: events lost (counts above may then be low).
//! - `blockprobe_threshold_seconds`, `blockprobe_build_info{version}`, and the standard
//!   `process_cpu_seconds_total`, `process_resident_memory_bytes`,
//!   `process_virtual_memory_bytes`, `process_open_fds`, `process_start_time_seconds`
//!   of blockprobe itself.
//!
//! # Cardinality
//!
//! Series are created as stalls arrive and never removed (counters stay monotonic).
//! - Services: the first `max_services` service labels to stall get series of their
//!   own (a traced process that never stalls takes no slot); stalls of later ones count
//!   under `service="<other>"`.
//! - Functions, per service: the first `max_functions` to stall get series of their
//!   own; later ones count under `function="<other>",file=""`. A pooled function whose
//!   stall time while pooled comes to exceed the smallest series' total then gets a
//!   series of its own (from that stall on; its earlier stalls stay in `<other>`), up to
//!   a hard ceiling of 2 × `max_functions` series per service. Pooled stall time is
//!   tracked for at most [`POOLED_CANDIDATES`] functions per service (the smallest is
//!   forgotten first).
//!
//! So the histogram has at most `(max_services + 1) × (2 × max_functions + 1)` label
//! sets: the `<other>` service and `<other>` function series come on top of the caps.
//! The per-service gauges show at most `max_services + 1` labels (services that have
//! not stalled yet share the labels left, then `<other>`).
//!
//! Its length: about 570 lines of code (one bounded state that every metric family
//! shares); the rest are the tests of the exposition text.

pub mod http;
pub mod process;
pub mod sink;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

use crate::aggregate::FunctionKey;
use crate::histogram::{BUCKETS, Log2Histogram, bucket_index, bucket_le_ns};
use crate::identity::StableFiles;
use crate::model::{Cause, Stall};
use crate::report::{OTHER_FUNCTION, ProcessInfo, UNKNOWN_FUNCTION};

/// Functions per service whose pooled stall time is tracked for promotion.
pub const POOLED_CANDIDATES: usize = 256;

/// Highest bucket exposed: le = 2^36 - 1 ns (~68.7 s); longer stalls only count in +Inf.
const TOP_BUCKET: usize = 35;

/// Bounds and settings of the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricsConfig {
    /// The session's stall threshold.
    pub threshold_ns: u64,
    /// Functions per service with series of their own at first (the ceiling is twice
    /// this; see the module docs).
    pub max_functions: usize,
    /// Services with series of their own.
    pub max_services: usize,
}

impl MetricsConfig {
    /// The most function series a service gets, `<other>` not included.
    pub fn function_ceiling(&self) -> usize {
        self.max_functions.saturating_mul(2)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct SeriesKey {
    service: String,
    function: String,
    file: String,
}

/// The function series of one service.
#[derive(Debug, Default)]
struct ServiceFunctions {
    /// Function series of its own (not `<other>`).
    series: usize,
    /// Stall time of pooled functions since they were pooled, by (function, file).
    pooled: HashMap<(String, String), u64>,
}

#[derive(Debug, Default)]
struct Traced {
    service: String,
    app_root: String,
    loops: BTreeSet<u32>,
    /// Loop threads stuck right now (said stuck, their stall not ended yet).
    stuck: BTreeSet<u32>,
}

/// Per service: event loops, traced processes, stuck loops.
#[derive(Clone, Copy, Debug, Default)]
struct Gauges {
    loops: u64,
    processes: u64,
    stuck: u64,
}

/// Everything `/metrics` shows.
#[derive(Debug)]
pub struct Metrics {
    config: MetricsConfig,
    histograms: BTreeMap<SeriesKey, Log2Histogram>,
    functions_per_service: HashMap<String, ServiceFunctions>,
    services: BTreeSet<String>,
    stalls_by_cause: BTreeMap<(String, String), u64>,
    blocked_ns_by_cause: BTreeMap<(String, String), u64>,
    processes: HashMap<u32, Traced>,
    lost: BTreeMap<String, u64>,
    stable_files: StableFiles,
}

impl Metrics {
    /// No stalls yet.
    pub fn new(config: MetricsConfig) -> Self {
        Metrics {
            config,
            histograms: BTreeMap::new(),
            functions_per_service: HashMap::new(),
            services: BTreeSet::new(),
            stalls_by_cause: BTreeMap::new(),
            blocked_ns_by_cause: BTreeMap::new(),
            processes: HashMap::new(),
            lost: BTreeMap::new(),
            stable_files: StableFiles::default(),
        }
    }

    /// The label of a stalling service: itself (taking a slot at its first stall), or
    /// `<other>` once the slots are taken.
    fn service_label(&mut self, service: &str) -> String {
        let service = service_name(service);
        if self.services.contains(service) {
            return service.to_owned();
        }
        if self.services.len() < self.config.max_services {
            self.services.insert(service.to_owned());
            return service.to_owned();
        }
        self.services.insert(OTHER_FUNCTION.to_owned());
        OTHER_FUNCTION.to_owned()
    }

    /// A process is now traced. Its service takes a slot only when it first stalls.
    pub fn attach(&mut self, info: &ProcessInfo) {
        self.processes.insert(
            info.pid,
            Traced {
                service: service_name(&info.service).to_owned(),
                app_root: info.app_root.clone(),
                loops: BTreeSet::new(),
                stuck: BTreeSet::new(),
            },
        );
    }

    /// A thread of `pid` runs an event loop.
    pub fn loop_thread(&mut self, pid: u32, tid: u32) {
        if let Some(p) = self.processes.get_mut(&pid) {
            p.loops.insert(tid);
        }
    }

    /// Loop thread `tid` of `pid` exited.
    pub fn loop_gone(&mut self, pid: u32, tid: u32) {
        if let Some(p) = self.processes.get_mut(&pid) {
            p.loops.remove(&tid);
            p.stuck.remove(&tid);
        }
    }

    /// Loop thread `tid` of `pid` is stuck, until its stall ends.
    pub fn stuck(&mut self, pid: u32, tid: u32) {
        if let Some(p) = self.processes.get_mut(&pid) {
            p.stuck.insert(tid);
        }
    }

    /// A process is no longer traced.
    pub fn detach(&mut self, pid: u32) {
        self.processes.remove(&pid);
    }

    /// Events were lost.
    pub fn lost(&mut self, kind: &str, count: u64) {
        let slot = self.lost.entry(kind.to_owned()).or_default();
        *slot = slot.saturating_add(count);
    }

    /// One stall.
    pub fn stall(&mut self, stall: &Stall) {
        let (service, root) = match self.processes.get_mut(&stall.pid) {
            Some(p) => {
                // A stuck loop's stall ends its hang.
                p.stuck.remove(&stall.tid);
                (p.service.clone(), p.app_root.clone())
            }
            None => (String::new(), String::new()),
        };
        let service = self.service_label(&service);
        // A stopped loop (SIGSTOP, a debugger, `docker pause`) is no code's stall: it
        // counts by cause only, never in the duration histograms alerts are built on.
        if stall.cause != Cause::Stopped {
            let function = FunctionKey::of_stall(stall, &root, &mut self.stable_files);
            let key = self.series_key(service.clone(), function, stall.duration_ns);
            self.histograms
                .entry(key)
                .or_default()
                .record(stall.duration_ns);
        }
        let cause = stall.cause.as_str().to_owned();
        *self
            .stalls_by_cause
            .entry((service.clone(), cause))
            .or_default() += 1;
        for (c, &ns) in &stall.causes {
            let slot = self
                .blocked_ns_by_cause
                .entry((service.clone(), c.as_str().to_owned()))
                .or_default();
            *slot = slot.saturating_add(ns);
        }
    }

    /// The series a stall of `duration_ns` in `function` of `service` counts in: its
    /// own, a new one (a free slot, or a pooled function promoted), or `<other>`.
    fn series_key(
        &mut self,
        service: String,
        function: FunctionKey,
        duration_ns: u64,
    ) -> SeriesKey {
        let key = SeriesKey {
            service,
            function: function.function,
            file: function.stable_file,
        };
        if self.histograms.contains_key(&key) {
            return key;
        }
        let fs = self
            .functions_per_service
            .entry(key.service.clone())
            .or_default();
        if fs.series < self.config.max_functions {
            fs.series += 1;
            return key;
        }
        // Past the first slots: a pooled function may outweigh the smallest series.
        let smallest = self.smallest_series_ns(&key.service);
        let ceiling = self.config.function_ceiling();
        let fs = self
            .functions_per_service
            .entry(key.service.clone())
            .or_default();
        let name = (key.function.clone(), key.file.clone());
        let pooled = fs
            .pooled
            .get(&name)
            .copied()
            .unwrap_or(0)
            .saturating_add(duration_ns);
        if fs.series < ceiling && smallest.is_some_and(|min| pooled > min) {
            fs.series += 1;
            fs.pooled.remove(&name);
            return key;
        }
        if !fs.pooled.contains_key(&name)
            && fs.pooled.len() >= POOLED_CANDIDATES
            && let Some(least) = fs
                .pooled
                .iter()
                .min_by_key(|(k, ns)| (**ns, (*k).clone()))
                .map(|(k, _)| k.clone())
        {
            fs.pooled.remove(&least);
        }
        fs.pooled.insert(name, pooled);
        SeriesKey {
            service: key.service,
            function: OTHER_FUNCTION.to_owned(),
            file: String::new(),
        }
    }

    /// The smallest total stall time of `service`'s own function series.
    fn smallest_series_ns(&self, service: &str) -> Option<u64> {
        let from = SeriesKey {
            service: service.to_owned(),
            function: String::new(),
            file: String::new(),
        };
        self.histograms
            .range(from..)
            .take_while(|(k, _)| k.service == service)
            .filter(|(k, _)| !(k.function == OTHER_FUNCTION && k.file.is_empty()))
            .map(|(_, h)| h.total_ns())
            .min()
    }

    /// Event loops and processes traced, by gauge label: services with stall series,
    /// then other traced services while there are fewer than `max_services` labels,
    /// then `<other>`.
    fn gauges(&self) -> BTreeMap<&str, Gauges> {
        let mut out: BTreeMap<&str, Gauges> = (self.services.iter())
            .map(|s| (s.as_str(), Gauges::default()))
            .collect();
        let mut quiet: BTreeMap<&str, Gauges> = BTreeMap::new();
        for p in self.processes.values() {
            let service = p.service.as_str();
            let e = if out.contains_key(service) {
                out.entry(service)
            } else {
                quiet.entry(service)
            }
            .or_default();
            e.loops += p.loops.len() as u64;
            e.processes += 1;
            e.stuck += p.stuck.len() as u64;
        }
        for (service, g) in quiet {
            let label = if out.len() < self.config.max_services {
                service
            } else {
                OTHER_FUNCTION
            };
            let e = out.entry(label).or_default();
            e.loops += g.loops;
            e.processes += g.processes;
            e.stuck += g.stuck;
        }
        out
    }

    /// The buckets exposed: from the one holding the threshold to [`TOP_BUCKET`].
    fn bucket_range(&self) -> std::ops::RangeInclusive<usize> {
        let lo = bucket_index(self.config.threshold_ns).min(TOP_BUCKET);
        lo..=TOP_BUCKET
    }

    /// The text exposition (format 0.0.4), with `me` as the process metrics.
    pub fn render(&self, me: &process::SelfStats) -> String {
        let mut s = String::new();
        let m = &self.config;
        header(
            &mut s,
            "blockprobe_stall_duration_seconds",
            "histogram",
            &format!(
                "Stalls (event-loop iterations off-await at least the threshold) by service \
                 and culprit function. Cardinality is capped: the first {} services to \
                 stall get their own series, later ones count under service=\"<other>\"; \
                 per service, the first {} functions to stall do, later ones count under \
                 function=\"<other>\" until their stall time there exceeds the smallest \
                 series' (at most {} function series per service). The <other> series \
                 come on top of these caps.",
                m.max_services,
                m.max_functions,
                m.function_ceiling()
            ),
        );
        for (k, h) in &self.histograms {
            let labels = format!(
                "service=\"{}\",function=\"{}\",file=\"{}\"",
                label(&k.service),
                label(&k.function),
                label(&k.file)
            );
            let mut cumulative = 0u64;
            let range = self.bucket_range();
            for i in 0..BUCKETS {
                cumulative = cumulative.saturating_add(h.bucket_count(i));
                if range.contains(&i) {
                    let _ = writeln!(
                        s,
                        "blockprobe_stall_duration_seconds_bucket{{{labels},le=\"{}\"}} {cumulative}",
                        seconds(bucket_le_ns(i))
                    );
                }
            }
            let _ = writeln!(
                s,
                "blockprobe_stall_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                h.count()
            );
            let _ = writeln!(
                s,
                "blockprobe_stall_duration_seconds_sum{{{labels}}} {}",
                seconds(h.total_ns())
            );
            let _ = writeln!(
                s,
                "blockprobe_stall_duration_seconds_count{{{labels}}} {}",
                h.count()
            );
        }

        header(
            &mut s,
            "blockprobe_stalls_by_cause_total",
            "counter",
            "Stalls by their main cause.",
        );
        for ((service, cause), n) in &self.stalls_by_cause {
            let _ = writeln!(
                s,
                "blockprobe_stalls_by_cause_total{{service=\"{}\",cause=\"{}\"}} {n}",
                label(service),
                label(cause)
            );
        }
        header(
            &mut s,
            "blockprobe_blocked_seconds_total",
            "counter",
            "Stall time of event loops by cause: on CPU (cpu), waiting for a CPU (runqueue), \
             or off CPU by reason.",
        );
        for ((service, cause), ns) in &self.blocked_ns_by_cause {
            let _ = writeln!(
                s,
                "blockprobe_blocked_seconds_total{{service=\"{}\",cause=\"{}\"}} {}",
                label(service),
                label(cause),
                seconds(*ns)
            );
        }

        let loops = self.gauges();
        header(
            &mut s,
            "blockprobe_event_loops",
            "gauge",
            "Event-loop threads currently traced.",
        );
        for (service, g) in &loops {
            let _ = writeln!(
                s,
                "blockprobe_event_loops{{service=\"{}\"}} {}",
                label(service),
                g.loops
            );
        }
        header(
            &mut s,
            "blockprobe_traced_processes",
            "gauge",
            "Python processes currently traced.",
        );
        for (service, g) in &loops {
            let _ = writeln!(
                s,
                "blockprobe_traced_processes{{service=\"{}\"}} {}",
                label(service),
                g.processes
            );
        }
        header(
            &mut s,
            "blockprobe_stuck_event_loops",
            "gauge",
            "Event loops off-await for a second or more right now: a hang in progress.",
        );
        for (service, g) in &loops {
            let _ = writeln!(
                s,
                "blockprobe_stuck_event_loops{{service=\"{}\"}} {}",
                label(service),
                g.stuck
            );
        }
        header(
            &mut s,
            "blockprobe_lost_events_total",
            "counter",
            "Events lost, by kind; while this grows, the counts above may be low.",
        );
        for (kind, n) in &self.lost {
            let _ = writeln!(
                s,
                "blockprobe_lost_events_total{{kind=\"{}\"}} {n}",
                label(kind)
            );
        }
        header(
            &mut s,
            "blockprobe_threshold_seconds",
            "gauge",
            "The stall threshold.",
        );
        let _ = writeln!(
            s,
            "blockprobe_threshold_seconds {}",
            seconds(m.threshold_ns)
        );
        header(
            &mut s,
            "blockprobe_build_info",
            "gauge",
            "blockprobe's version.",
        );
        let _ = writeln!(
            s,
            "blockprobe_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        me.render(&mut s);
        s
    }
}

/// A service label: the service, or `<unknown>` when it has none.
fn service_name(service: &str) -> &str {
    if service.is_empty() {
        UNKNOWN_FUNCTION
    } else {
        service
    }
}

fn header(s: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(
        s,
        "# HELP {name} {}",
        help.replace('\\', "\\\\").replace('\n', "\\n")
    );
    let _ = writeln!(s, "# TYPE {name} {kind}");
}

/// A label value escaped for the text format (`\\`, `\"`, `\n`).
pub fn label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Nanoseconds as exact decimal seconds (`1.5`, `0.016777215`, `0`).
pub fn seconds(ns: u64) -> String {
    let whole = ns / 1_000_000_000;
    let frac = ns % 1_000_000_000;
    if frac == 0 {
        return whole.to_string();
    }
    let digits = format!("{frac:09}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixtures::{frame, stall};

    fn metrics(max_functions: usize, max_services: usize) -> Metrics {
        Metrics::new(MetricsConfig {
            threshold_ns: 10_000_000,
            max_functions,
            max_services,
        })
    }

    fn proc(pid: u32, service: &str) -> ProcessInfo {
        ProcessInfo {
            pid,
            service: service.into(),
            app_root: "/srv/app".into(),
            ..Default::default()
        }
    }

    fn value(text: &str, series: &str) -> Option<String> {
        text.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .map(|l| l.rsplit(' ').next().unwrap().to_owned())
    }

    #[test]
    fn exact_seconds() {
        assert_eq!(seconds(0), "0");
        assert_eq!(seconds(1_500_000_000), "1.5");
        assert_eq!(seconds(16_777_215), "0.016777215");
        assert_eq!(seconds(u64::MAX), "18446744073.709551615");
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn histogram_series() {
        let mut m = metrics(50, 10);
        m.attach(&proc(1, "api"));
        m.loop_thread(1, 1);
        m.loop_thread(1, 2);
        for dur in [20_000_000, 20_000_000, 70_000_000] {
            m.stall(&stall(
                1,
                0,
                dur,
                Some(frame("handler", "/srv/app/h.py", 3)),
            ));
        }
        m.stall(&stall(9, 0, 12_000_000, None));
        m.lost("ringbuf_stall", 2);
        let text = m.render(&process::SelfStats::default());
        let l = "service=\"api\",function=\"handler\",file=\"h.py\"";
        assert_eq!(
            value(
                &text,
                &format!("blockprobe_stall_duration_seconds_count{{{l}}}")
            )
            .as_deref(),
            Some("3")
        );
        assert_eq!(
            value(
                &text,
                &format!("blockprobe_stall_duration_seconds_sum{{{l}}}")
            )
            .as_deref(),
            Some("0.11")
        );
        // 20 ms is in [2^24, 2^25) ns: le 0.033554431 holds 2, then 70 ms at le 0.134217727.
        assert_eq!(
            value(
                &text,
                &format!("blockprobe_stall_duration_seconds_bucket{{{l},le=\"0.016777215\"}}")
            )
            .as_deref(),
            Some("0")
        );
        assert_eq!(
            value(
                &text,
                &format!("blockprobe_stall_duration_seconds_bucket{{{l},le=\"0.033554431\"}}")
            )
            .as_deref(),
            Some("2")
        );
        assert_eq!(
            value(
                &text,
                &format!("blockprobe_stall_duration_seconds_bucket{{{l},le=\"0.134217727\"}}")
            )
            .as_deref(),
            Some("3")
        );
        assert_eq!(
            value(
                &text,
                &format!("blockprobe_stall_duration_seconds_bucket{{{l},le=\"+Inf\"}}")
            )
            .as_deref(),
            Some("3")
        );
        // The first bucket is the threshold's: 10 ms is in [2^23, 2^24).
        assert!(text.contains("le=\"0.016777215\""));
        assert!(!text.contains("le=\"0.008388607\""));
        assert!(text.contains("le=\"68.719476735\""));
        assert_eq!(
            value(&text, "blockprobe_stall_duration_seconds_count{service=\"<unknown>\",function=\"<unknown>\",file=\"\"}").as_deref(),
            Some("1")
        );
        assert_eq!(
            value(
                &text,
                "blockprobe_stalls_by_cause_total{service=\"api\",cause=\"sleep\"}"
            )
            .as_deref(),
            Some("3")
        );
        assert!(
            text.contains(
                "blockprobe_blocked_seconds_total{service=\"api\",cause=\"sleep\"} 0.0825\n"
            ),
            "{text}"
        );
        assert_eq!(
            value(&text, "blockprobe_event_loops{service=\"api\"}").as_deref(),
            Some("2")
        );
        assert_eq!(
            value(&text, "blockprobe_traced_processes{service=\"api\"}").as_deref(),
            Some("1")
        );
        assert_eq!(
            value(
                &text,
                "blockprobe_lost_events_total{kind=\"ringbuf_stall\"}"
            )
            .as_deref(),
            Some("2")
        );
        assert_eq!(
            value(&text, "blockprobe_threshold_seconds").as_deref(),
            Some("0.01")
        );
        m.detach(1);
        let text = m.render(&process::SelfStats::default());
        assert_eq!(
            value(&text, "blockprobe_event_loops{service=\"api\"}").as_deref(),
            Some("0")
        );
        // Every sample line is `name{labels} value` or `name value`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (series, v) = line.rsplit_once(' ').unwrap();
            assert!(v.parse::<f64>().is_ok() || v == "+Inf", "{line}");
            assert!(!series.is_empty());
        }
    }

    #[test]
    fn a_stopped_loop_counts_by_cause_only() {
        let mut m = metrics(50, 10);
        m.attach(&proc(1, "api"));
        m.stall(&crate::model::fixtures::stopped_stall(1, 700_000_000));
        let text = m.render(&process::SelfStats::default());
        assert!(
            !text.contains("blockprobe_stall_duration_seconds_count"),
            "{text}"
        );
        let by_cause = "{service=\"api\",cause=\"stopped\"}";
        let stalls = format!("blockprobe_stalls_by_cause_total{by_cause}");
        let seconds = format!("blockprobe_blocked_seconds_total{by_cause}");
        assert_eq!(value(&text, &stalls).as_deref(), Some("1"));
        assert_eq!(value(&text, &seconds).as_deref(), Some("0.7"));
    }

    #[test]
    fn a_stuck_loop_counts_until_its_stall_ends() {
        let mut m = metrics(50, 10);
        m.attach(&proc(1, "api"));
        m.loop_thread(1, 7);
        let stuck = |m: &Metrics| {
            let text = m.render(&process::SelfStats::default());
            value(&text, "blockprobe_stuck_event_loops{service=\"api\"}")
        };
        assert_eq!(stuck(&m).as_deref(), Some("0"));
        m.stuck(1, 7);
        m.stuck(1, 7);
        assert_eq!(stuck(&m).as_deref(), Some("1"));
        let mut ended = stall(
            1,
            0,
            5_000_000_000,
            Some(frame("handler", "/srv/app/h.py", 3)),
        );
        ended.tid = 7;
        m.stall(&ended);
        assert_eq!(stuck(&m).as_deref(), Some("0"));
    }

    /// The metric names in a PromQL expression.
    fn metric_names(expr: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut rest = expr;
        while let Some(i) = rest.find(|c: char| c.is_ascii_lowercase()) {
            let word: String = rest[i..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            rest = &rest[i + word.len()..];
            if word.starts_with("blockprobe_") || word.starts_with("process_") {
                out.push(word);
            }
        }
        out
    }

    /// Every metric the Grafana dashboard in deploy/ queries is one blockprobe exposes.
    #[test]
    fn dashboard_queries_exposed_metrics() {
        let dashboard: serde_json::Value =
            serde_json::from_str(include_str!("../../../deploy/grafana-dashboard.json")).unwrap();
        let mut m = metrics(5, 5);
        m.attach(&proc(1, "api"));
        m.stall(&stall(
            1,
            0,
            20_000_000,
            Some(frame("f", "/srv/app/x.py", 1)),
        ));
        m.lost("k", 1);
        let text = m.render(&process::SelfStats::default());
        let mut exprs: Vec<String> = Vec::new();
        let mut stack = vec![&dashboard];
        while let Some(v) = stack.pop() {
            match v {
                serde_json::Value::Object(o) => {
                    for (k, v) in o {
                        match (k.as_str(), v) {
                            ("expr" | "definition", serde_json::Value::String(e)) => {
                                exprs.push(e.clone())
                            }
                            _ => stack.push(v),
                        }
                    }
                }
                serde_json::Value::Array(a) => stack.extend(a),
                _ => {}
            }
        }
        assert!(exprs.len() >= 10, "{exprs:?}");
        for expr in &exprs {
            let names = metric_names(expr);
            assert!(!names.is_empty(), "{expr}");
            for name in names {
                assert!(
                    text.lines().any(|l| l.starts_with(&format!("{name}{{"))
                        || l.starts_with(&format!("{name} "))),
                    "{name} (in {expr}) is not exposed"
                );
            }
        }
    }

    #[test]
    fn cardinality_is_capped() {
        let mut m = metrics(2, 2);
        for (pid, service) in [(1, "a"), (2, "quiet"), (3, "c"), (4, "d")] {
            m.attach(&proc(pid, service));
        }
        for f in ["f1", "f2", "f3", "f4", "f1"] {
            m.stall(&stall(1, 0, 20_000_000, Some(frame(f, "/srv/app/x.py", 1))));
        }
        for pid in [3, 4] {
            m.stall(&stall(
                pid,
                0,
                20_000_000,
                Some(frame("g", "/srv/app/x.py", 1)),
            ));
        }
        let text = m.render(&process::SelfStats::default());
        let count = |l: &str| {
            value(
                &text,
                &format!("blockprobe_stall_duration_seconds_count{{{l}}}"),
            )
        };
        assert_eq!(
            count("service=\"a\",function=\"f1\",file=\"x.py\"").as_deref(),
            Some("2")
        );
        assert_eq!(
            count("service=\"a\",function=\"f2\",file=\"x.py\"").as_deref(),
            Some("1")
        );
        assert_eq!(
            count("service=\"a\",function=\"<other>\",file=\"\"").as_deref(),
            Some("2")
        );
        // "quiet" never stalled: it took no slot, so "c" has one and "d" is <other>.
        assert_eq!(
            count("service=\"c\",function=\"g\",file=\"x.py\"").as_deref(),
            Some("1")
        );
        assert_eq!(
            count("service=\"<other>\",function=\"g\",file=\"x.py\"").as_deref(),
            Some("1")
        );
        assert!(!text.contains("service=\"quiet\",function"), "{text}");
        let series = text
            .lines()
            .filter(|l| l.starts_with("blockprobe_stall_duration_seconds_count"))
            .count();
        assert_eq!(series, 5);
        // Gauges: the two stalled services, then <other> for the rest (quiet and d).
        assert_eq!(
            value(&text, "blockprobe_traced_processes{service=\"<other>\"}").as_deref(),
            Some("2")
        );
        assert!(
            text.contains("the first 2 services to stall"),
            "documented in HELP"
        );
        assert!(
            text.contains("at most 4 function series per service"),
            "{text}"
        );
    }

    #[test]
    fn pooled_functions_that_outweigh_a_series_get_their_own() {
        let mut m = metrics(2, 5);
        m.attach(&proc(1, "api"));
        let at = |m: &mut Metrics, f: &str, ms: u64| {
            m.stall(&stall(
                1,
                0,
                ms * 1_000_000,
                Some(frame(f, "/srv/app/x.py", 1)),
            ));
        };
        at(&mut m, "small", 20);
        at(&mut m, "big", 60);
        // Pooled 15 ms is not more than small's 20 ms: it stays in <other>.
        at(&mut m, "hot", 15);
        // Pooled 30 ms is: hot gets its own series from this stall on.
        at(&mut m, "hot", 15);
        at(&mut m, "hot", 15);
        let text = m.render(&process::SelfStats::default());
        let count = |text: &str, f: &str| {
            let file = if f == "<other>" { "" } else { "x.py" };
            value(
                text,
                &format!(
                    "blockprobe_stall_duration_seconds_count{{service=\"api\",function=\"{f}\",file=\"{file}\"}}"
                ),
            )
        };
        assert_eq!(count(&text, "hot").as_deref(), Some("2"), "{text}");
        assert_eq!(count(&text, "<other>").as_deref(), Some("1"));
        assert_eq!(count(&text, "small").as_deref(), Some("1"), "never removed");
        // The ceiling: 2 x 2 function series, whatever outweighs them later.
        for f in ["w1", "w2", "w3", "w4"] {
            for _ in 0..3 {
                at(&mut m, f, 100);
            }
        }
        let text = m.render(&process::SelfStats::default());
        let own: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("blockprobe_stall_duration_seconds_count"))
            .filter(|l| !l.contains("function=\"<other>\""))
            .collect();
        assert_eq!(own.len(), 4, "{own:#?}");
        assert_eq!(
            count(&text, "w1").as_deref(),
            Some("3"),
            "100 ms > 20 ms at once"
        );
        assert_eq!(count(&text, "w2"), None);
        assert_eq!(count(&text, "<other>").as_deref(), Some("10"));
    }
}
