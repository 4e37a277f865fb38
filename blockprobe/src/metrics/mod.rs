//! Prometheus metrics of a long-running session (`blockprobe serve`): the state the
//! live sink ([`sink::MetricsSink`]) updates, its text exposition ([`Metrics::render`],
//! format 0.0.4), the HTTP listener ([`http`]) and blockprobe's own CPU and memory
//! ([`process`]).
//!
//! # Metrics
//!
//! - `blockprobe_stall_duration_seconds{service,function,file}`: histogram of stall
//!   durations per service and culprit function (`file` is the stable file name).
//!   Buckets are the report's log2 buckets, `le` = (2^k - 1) ns in seconds, from the one
//!   holding the threshold up to ~69 s.
//! - `blockprobe_stalls_by_cause_total{service,cause}`: stalls by main cause.
//! - `blockprobe_blocked_seconds_total{service,cause}`: time blocked in syscalls during
//!   stalls, by cause.
//! - `blockprobe_event_loops{service}`, `blockprobe_traced_processes{service}`: gauges.
//! - `blockprobe_lost_events_total{kind}`: events lost (counts above may then be low).
//! - `blockprobe_threshold_seconds`, `blockprobe_build_info{version}`, and the standard
//!   `process_cpu_seconds_total`, `process_resident_memory_bytes`,
//!   `process_virtual_memory_bytes`, `process_open_fds`, `process_start_time_seconds`
//!   of blockprobe itself.
//!
//! # Cardinality
//!
//! Series are created as stalls arrive and never removed (counters stay monotonic). At
//! most `max_services` service labels and, per service, `max_functions` functions get
//! series of their own: the first ones seen. Stalls of later ones are counted under
//! `service="<other>"` or `function="<other>",file=""`. So the histogram has at most
//! `max_services × (max_functions + 1)` label sets.

pub mod http;
pub mod process;
pub mod sink;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

use crate::aggregate::{FunctionKey, OTHER_FUNCTION, ProcessInfo, UNKNOWN_FUNCTION};
use crate::fleet::identity::StableFiles;
use crate::histogram::{BUCKETS, Log2Histogram, bucket_index, bucket_le_ns};
use crate::model::Stall;

/// Highest bucket exposed: le = 2^36 - 1 ns (~68.7 s); longer stalls only count in +Inf.
const TOP_BUCKET: usize = 35;

/// Bounds and settings of the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricsConfig {
    /// The session's stall threshold.
    pub threshold_ns: u64,
    /// Functions per service with series of their own.
    pub max_functions: usize,
    /// Services with series of their own.
    pub max_services: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct SeriesKey {
    service: String,
    function: String,
    file: String,
}

#[derive(Debug, Default)]
struct Traced {
    service: String,
    app_root: String,
    loops: BTreeSet<u32>,
}

/// Everything `/metrics` shows.
#[derive(Debug)]
pub struct Metrics {
    config: MetricsConfig,
    histograms: BTreeMap<SeriesKey, Log2Histogram>,
    functions_per_service: HashMap<String, usize>,
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

    /// The label a service gets: itself, or `<other>` past the bound.
    fn service_label(&mut self, service: &str) -> String {
        let service = if service.is_empty() {
            UNKNOWN_FUNCTION
        } else {
            service
        };
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

    /// A process is now traced.
    pub fn attach(&mut self, info: &ProcessInfo) {
        let service = self.service_label(&info.service);
        self.processes.insert(
            info.pid,
            Traced {
                service,
                app_root: info.app_root.clone(),
                loops: BTreeSet::new(),
            },
        );
    }

    /// A thread of `pid` runs an event loop.
    pub fn loop_thread(&mut self, pid: u32, tid: u32) {
        if let Some(p) = self.processes.get_mut(&pid) {
            p.loops.insert(tid);
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
        let (service, root) = match self.processes.get(&stall.pid) {
            Some(p) => (p.service.clone(), p.app_root.clone()),
            None => (self.service_label(""), String::new()),
        };
        let function = FunctionKey::of_stall(stall, &root, &mut self.stable_files);
        let mut key = SeriesKey {
            service: service.clone(),
            function: function.function,
            file: function.stable_file,
        };
        if !self.histograms.contains_key(&key) {
            let n = self
                .functions_per_service
                .entry(service.clone())
                .or_default();
            if *n < self.config.max_functions {
                *n += 1;
            } else {
                key.function = OTHER_FUNCTION.to_owned();
                key.file = String::new();
            }
        }
        self.histograms
            .entry(key)
            .or_default()
            .record(stall.duration_ns);
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
                 and culprit function. Cardinality is capped: the first {} services and, per \
                 service, the first {} functions get their own series; later ones count \
                 under service=\"<other>\" / function=\"<other>\".",
                m.max_services, m.max_functions
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
            "Time event loops spent blocked in syscalls during stalls, by cause.",
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

        let mut loops: BTreeMap<&str, (u64, u64)> =
            self.services.iter().map(|s| (s.as_str(), (0, 0))).collect();
        for p in self.processes.values() {
            let e = loops.entry(p.service.as_str()).or_default();
            e.0 += p.loops.len() as u64;
            e.1 += 1;
        }
        header(
            &mut s,
            "blockprobe_event_loops",
            "gauge",
            "Event-loop threads currently traced.",
        );
        for (service, (n, _)) in &loops {
            let _ = writeln!(
                s,
                "blockprobe_event_loops{{service=\"{}\"}} {n}",
                label(service)
            );
        }
        header(
            &mut s,
            "blockprobe_traced_processes",
            "gauge",
            "Python processes currently traced.",
        );
        for (service, (_, n)) in &loops {
            let _ = writeln!(
                s,
                "blockprobe_traced_processes{{service=\"{}\"}} {n}",
                label(service)
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
    use crate::aggregate::tests::{frame, stall};

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
        m.attach(&proc(1, "a"));
        m.attach(&proc(2, "b"));
        m.attach(&proc(3, "c"));
        for f in ["f1", "f2", "f3", "f4", "f1"] {
            m.stall(&stall(1, 0, 20_000_000, Some(frame(f, "/srv/app/x.py", 1))));
        }
        m.stall(&stall(
            3,
            0,
            20_000_000,
            Some(frame("g", "/srv/app/x.py", 1)),
        ));
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
        assert_eq!(
            count("service=\"<other>\",function=\"g\",file=\"x.py\"").as_deref(),
            Some("1")
        );
        let series = text
            .lines()
            .filter(|l| l.starts_with("blockprobe_stall_duration_seconds_count"))
            .count();
        assert_eq!(series, 4);
        assert!(text.contains("the first 2 services"), "documented in HELP");
    }
}
