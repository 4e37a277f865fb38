//! The end-of-run text summary. It is rendered from a [`Report`] only, so the end of
//! `blockprobe run` and `blockprobe report FILE` print the same thing for the same run
//! (up to the local time zone of the stall times).
//!
//! ```text
//! blockprobe: 36 stalls >= 10.0 ms in 1m 0s on web-1
//!   processes: 1, loop threads watched: 1
//!     pid 4242 python3 (Python 3.11.7)
//!       loop threads: 4242
//!   lost events: 3 (ringbuf_stall 3); counts below may be low
//!
//! Top functions by total stall time:
//!
//!  1. Client.fetch_data (/srv/app/services/db.py)
//!     30 stalls, total 4935.0 ms, max 179.0 ms, p50 ~156.6 ms, p99 ~179.0 ms
//!     causes: sleep 75%, io 13%, running 12%
//!          msecs               : count    distribution
//!            134 -> 268        : 30       |************************************|
//!
//! Longest stalls:
//!
//!       179.0 ms  22:13:49.000  pid 4242 tid 4242  sleep clock_nanosleep
//!                 Client.fetch_data (services/db.py:42)
//! ```
//!
//! Histogram rows are the log2 buckets from the lowest to the highest non-empty one;
//! `lo -> hi` is the bucket `[lo, hi)` converted to the unit in the title (chosen so the
//! lowest bucket's bound is at least 1 of it). Every line of the summary fits in
//! [`WIDTH`] columns: names and files are shortened from the left, keeping the end that
//! identifies them, and any other line too long (a huge host name) is cut at the end
//! with `…`. Cause shares are of the function's total stall time (see
//! [`crate::model::cause_mix`]): `cpu` is running code, `runqueue` waiting for a CPU,
//! the others time off CPU by reason.

use std::fmt::Write as _;
use std::io::{self, Write};

use super::{
    culprit_label, escape, human_duration, local_clock, ms, no_culprit, short_path, truncate_left,
    truncate_right,
};
use crate::histogram::{BUCKETS, Log2Histogram, bucket_lower_ns};
use crate::model::{Frame, cause_mix};
use crate::report::{FunctionReport, Report, warning};

/// What the summary shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SummaryOptions {
    /// Functions listed (by total stall time).
    pub top_functions: usize,
    /// Longest stalls listed.
    pub top_stalls: usize,
    /// Processes listed in the header.
    pub max_processes: usize,
}

impl Default for SummaryOptions {
    fn default() -> Self {
        SummaryOptions {
            top_functions: 10,
            top_stalls: 5,
            max_processes: 10,
        }
    }
}

/// Width of the histogram bar, between the `|`s.
const BAR: usize = 36;

/// The widest line of the summary, in characters.
pub const WIDTH: usize = 80;

/// Indent of a longest stall's culprit, under its time of day.
const CULPRIT_INDENT: usize = 16;

/// Writes the summary of `report` to `out`.
pub fn write_summary(
    report: &Report,
    opts: &SummaryOptions,
    out: &mut dyn Write,
) -> io::Result<()> {
    out.write_all(summary(report, opts).as_bytes())?;
    out.flush()
}

/// The summary of `report` as text (ends with a newline), every line at most [`WIDTH`]
/// characters.
pub fn summary(report: &Report, opts: &SummaryOptions) -> String {
    let mut out = String::new();
    for line in unfitted(report, opts).lines() {
        out.push_str(&truncate_right(line, WIDTH));
        out.push('\n');
    }
    out
}

/// The summary, lines laid out to fit [`WIDTH`] except for freak names.
fn unfitted(report: &Report, opts: &SummaryOptions) -> String {
    let mut s = String::new();
    header(&mut s, report, opts);

    let mut functions: Vec<&FunctionReport> = report.functions.iter().collect();
    // The report is already in this order; sorting (stably) makes hand-edited or merged
    // files render the same way.
    functions.sort_by_key(|f| std::cmp::Reverse(f.histogram.total_ns()));

    if !functions.is_empty() && opts.top_functions > 0 {
        s.push_str("\nTop functions by total stall time:\n");
        for (i, f) in functions.iter().take(opts.top_functions).enumerate() {
            s.push('\n');
            function_block(&mut s, i + 1, f);
        }
        if functions.len() > opts.top_functions {
            let rest = &functions[opts.top_functions..];
            let count: u64 = rest.iter().map(|f| f.histogram.count()).sum();
            let total = rest
                .iter()
                .fold(0u64, |a, f| a.saturating_add(f.histogram.total_ns()));
            let _ = writeln!(
                s,
                "\n... and {} more function{} ({count} stalls, {} ms total)",
                rest.len(),
                plural(rest.len() as u64),
                ms(total)
            );
        }
    }

    if !report.stalls.is_empty() && opts.top_stalls > 0 {
        let mut stalls: Vec<_> = report.stalls.iter().collect();
        stalls.sort_by(|a, b| {
            b.duration_ns
                .cmp(&a.duration_ns)
                .then(a.start_unix_ns.cmp(&b.start_unix_ns))
        });
        let _ = writeln!(s, "\nLongest stalls:\n");
        let width = WIDTH - CULPRIT_INDENT;
        for st in stalls.iter().take(opts.top_stalls) {
            let at = |f: &Frame| format!("{}:{}", escape(short_path(&f.file)), f.line);
            let label = culprit_label(st);
            let culprit = match (&st.culprit, st.stack.first()) {
                (Some(f), _) => labelled(&label, &escape(&f.function), &at(f), width),
                (None, Some(f)) => labelled("<unknown> in ", &escape(&f.function), &at(f), width),
                (None, None) => no_culprit(st).to_owned(),
            };
            let syscall = st
                .syscall
                .as_deref()
                .map(|c| format!(" {}", escape(c)))
                .unwrap_or_default();
            let _ = writeln!(
                s,
                "  {:>9} ms  {}  pid {} tid {}  {}{syscall}\n{:CULPRIT_INDENT$}{culprit}",
                ms(st.duration_ns),
                local_clock(st.start_unix_ns),
                st.pid,
                st.tid,
                st.cause.as_str(),
                "",
            );
            if !st.gil_holder_stack.is_empty() {
                for (label, stack) in [
                    ("holder stack", &st.gil_holder_stack),
                    ("loop stack", &st.stack),
                ] {
                    let _ = writeln!(
                        s,
                        "{:CULPRIT_INDENT$}{}",
                        "",
                        stack_line(label, stack, width)
                    );
                }
            }
        }
    }
    s
}

/// `label: f < g < h`, a stack's functions innermost first, cut to `width` characters.
fn stack_line(label: &str, stack: &[Frame], width: usize) -> String {
    let functions: Vec<_> = stack.iter().map(|f| escape(&f.function)).collect();
    let line = format!("{label}: {}", functions.join(" < "));
    truncate_right(&line, width).into_owned()
}

/// `prefix function (location)` in at most `width` characters: whole when it fits, else
/// the location cut to half the width and the function to the rest, both from the left
/// (their ends identify them).
fn labelled(prefix: &str, function: &str, location: &str, width: usize) -> String {
    let whole = format!("{prefix}{function} ({location})");
    if whole.chars().count() <= width {
        return whole;
    }
    let location = truncate_left(location, width / 2);
    let room = width.saturating_sub(prefix.chars().count() + location.chars().count() + 3);
    format!("{prefix}{} ({location})", truncate_left(function, room))
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// ` on HOST` when `host` is named and is not the report's own `report_host`.
fn elsewhere(host: &str, report_host: &str) -> String {
    if host.is_empty() || host == report_host {
        String::new()
    } else {
        format!(" on {}", escape(host))
    }
}

fn header(s: &mut String, r: &Report, opts: &SummaryOptions) {
    let stalls = r.stall_count();
    let _ = write!(
        s,
        "blockprobe: {stalls} stall{} >= {} ms in {}",
        plural(stalls),
        ms(r.threshold_ns),
        human_duration(r.duration_ns)
    );
    if !r.host.is_empty() {
        let _ = write!(s, " on {}", escape(&r.host));
    }
    s.push('\n');
    let procs = r.processes.len() as u64 + r.processes_dropped;
    let threads = r.loop_thread_count() as u64;
    let _ = writeln!(
        s,
        "  processes: {procs}, loop threads watched: {threads}{}",
        if r.processes_dropped > 0 {
            " (or more)"
        } else {
            ""
        }
    );
    for p in r.processes.iter().take(opts.max_processes) {
        let threads: Vec<String> = p.loop_threads.iter().map(u32::to_string).collect();
        let warned = r
            .warnings
            .iter()
            .any(|w| w.pid == p.pid && w.host == p.host);
        let threads = match (threads.is_empty(), p.polled) {
            (false, _) => threads.join(", "),
            (true, _) if warned => "none found (see the warning below)".to_owned(),
            (true, Some(true)) => {
                "none (it polls, but through selectors: no asyncio loop)".to_owned()
            }
            (true, Some(false)) => "none (it never polled while traced: no loop ran)".to_owned(),
            (true, None) => "none seen".to_owned(),
        };
        let service = if p.service.is_empty() {
            String::new()
        } else {
            format!(", service {}", escape(&p.service))
        };
        let host = elsewhere(&p.host, &r.host);
        let _ = writeln!(
            s,
            "    pid {} {} (Python {}{service}){host}",
            p.pid,
            escape(&p.comm),
            escape(&p.python_version),
        );
        let label = "      loop threads: ";
        let room = WIDTH - label.len();
        let _ = writeln!(s, "{label}{}", truncate_left(&threads, room));
    }
    let unlisted =
        r.processes.len().saturating_sub(opts.max_processes) as u64 + r.processes_dropped;
    if unlisted > 0 {
        let _ = writeln!(s, "    ... and {unlisted} more");
    }
    for w in &r.warnings {
        let host = elsewhere(&w.host, &r.host);
        let line = format!(
            "  warning: pid {}{host} {}",
            w.pid,
            escape(warning::describe(&w.reason))
        );
        let _ = writeln!(s, "{}", truncate_right(&line, WIDTH));
    }
    if r.lost_events > 0 {
        let kinds: Vec<String> = r
            .lost
            .iter()
            .map(|(k, v)| format!("{} {v}", escape(k)))
            .collect();
        let _ = writeln!(
            s,
            "  lost events: {}{}; counts below may be low",
            r.lost_events,
            if kinds.is_empty() {
                String::new()
            } else {
                format!(" ({})", kinds.join(", "))
            }
        );
    }
    if r.stalls_dropped > 0 {
        let _ = writeln!(
            s,
            "  {} shorter stall{} not kept individually (all are counted per function)",
            r.stalls_dropped,
            plural(r.stalls_dropped)
        );
    }
    if stalls == 0 {
        let caveat = match (threads, r.warnings.is_empty()) {
            (0, _) => " (no loop was watched)",
            (_, false) => " (in the loops watched; see the warnings)",
            _ => "",
        };
        let _ = writeln!(s, "\nNo stalls at or above the threshold{caveat}.");
    }
}

fn function_block(s: &mut String, rank: usize, f: &FunctionReport) {
    let h = &f.histogram;
    let rank = format!("{rank:>2}. ");
    if f.file.is_empty() {
        let _ = writeln!(s, "{rank}{}", escape(&f.function));
    } else {
        let label = labelled(&rank, &escape(&f.function), &escape(&f.file), WIDTH);
        let _ = writeln!(s, "{label}");
    }
    let est = |q: f64| h.quantile(q).map(ms).unwrap_or_else(|| "-".into());
    let _ = writeln!(
        s,
        "    {} stall{}, total {} ms, max {} ms, p50 ~{} ms, p99 ~{} ms",
        h.count(),
        plural(h.count()),
        ms(h.total_ns()),
        ms(h.max_ns()),
        est(0.5),
        est(0.99)
    );
    let _ = writeln!(s, "    causes: {}", cause_mix(h.total_ns(), &f.causes));
    for line in histogram_lines(h) {
        let _ = writeln!(s, "{line}");
    }
}

/// The bcc-style rows of a histogram (title first), each under 80 columns; empty for an
/// empty histogram.
pub fn histogram_lines(h: &Log2Histogram) -> Vec<String> {
    let Some((lo, hi)) = h.bucket_range() else {
        return Vec::new();
    };
    // The unit: the largest in which the lowest shown bound is at least 1.
    let lowest = bucket_lower_ns(lo).max(1);
    let (unit, div) = if lowest >= 1_000_000 {
        ("msecs", 1e6)
    } else if lowest >= 1_000 {
        ("usecs", 1e3)
    } else {
        ("nsecs", 1.0)
    };
    let peak = (lo..=hi)
        .map(|i| h.bucket_count(i))
        .max()
        .unwrap_or(0)
        .max(1);
    // The unit right-aligned over the lower bounds, as bcc does.
    let mut lines = vec![format!(
        "    {unit:>10}{:15}: {:<8} distribution",
        "", "count"
    )];
    for i in lo..=hi {
        let count = h.bucket_count(i);
        let from = bucket_lower_ns(i) as f64 / div;
        let to = if i + 1 < BUCKETS {
            bucket_lower_ns(i + 1) as f64
        } else {
            2f64.powi(64)
        } / div;
        let stars = if count == 0 {
            0
        } else {
            ((count as u128 * BAR as u128).div_ceil(peak as u128) as usize).clamp(1, BAR)
        };
        lines.push(format!(
            "    {:>10} -> {:<10} : {:<8} |{:<BAR$}|",
            bound(from),
            bound(to),
            count,
            "*".repeat(stars)
        ));
    }
    lines
}

/// A bucket bound with three significant digits (`1.05`, `16.8`, `134`, `2147`).
fn bound(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v < 10.0 {
        format!("{v:.2}")
    } else if v < 100.0 {
        format!("{v:.1}")
    } else if v < 1e10 {
        format!("{v:.0}")
    } else {
        format!("{v:.2e}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::{Aggregator, Limits, RunInfo};
    use crate::model::Cause;
    use crate::model::fixtures::{frame, stall};
    use crate::report::tests::sample_report;

    #[test]
    fn summary_of_a_sample_report() {
        let r = sample_report();
        let text = summary(&r, &SummaryOptions::default());
        assert!(
            text.starts_with("blockprobe: 36 stalls >= 10.0 ms in 1m 0s on web-1\n"),
            "{text}"
        );
        assert!(
            text.contains("  processes: 1, loop threads watched: 1\n"),
            "{text}"
        );
        assert!(
            text.contains("    pid 4242 python3 (Python 3.11.7)\n      loop threads: 4242\n"),
            "{text}"
        );
        assert!(text.contains("lost events: 3 (ringbuf_stall 3)"), "{text}");
        assert!(
            text.contains(" 1. Client.fetch_data (/srv/app/services/db.py)\n"),
            "{text}"
        );
        assert!(
            text.contains("    30 stalls, total 4935.0 ms, max 179.0 ms, p50 ~"),
            "{text}"
        );
        assert!(
            text.contains("    causes: sleep 75%, io 13%, running 12%\n"),
            "{text}"
        );
        // The escaped evil name, and the unknown bucket.
        assert!(
            text.contains("bad\\x1b[31mname\\n (/srv/app/x\\ty.py)"),
            "{text}"
        );
        assert!(text.contains("<unknown>\n"), "{text}");
        assert!(text.contains("causes: io 100%"), "{text}");
        // Rank order follows total time: 4935 ms, 60 ms, 20 ms.
        let pos = |needle: &str| {
            text.find(needle)
                .unwrap_or_else(|| panic!("{needle}: {text}"))
        };
        assert!(pos(" 1. Client.fetch_data") < pos(" 2. bad"));
        assert!(pos(" 2. bad") < pos(" 3. <unknown>"));
        assert!(text.contains("Longest stalls:"), "{text}");
        assert!(text.contains("      179.0 ms  "), "{text}");
        for line in text.lines() {
            assert!(!line.chars().any(|c| c.is_control()), "{line:?}");
        }
        assert!(!text.contains('\u{1b}'));
    }

    #[test]
    fn every_line_fits_even_with_huge_names() {
        let mut a = Aggregator::default();
        let long = "x".repeat(120);
        a.register_process(crate::report::ProcessInfo {
            pid: 4_194_304,
            comm: "\u{1b}".repeat(15),
            python_version: "3.11.7".into(),
            loop_threads: (4_000_000..4_000_040).collect(),
            service: long.clone(),
            host: format!("other-{long}"),
            ..Default::default()
        });
        let function = format!("Outer.{long}.handler");
        let file = format!("/srv/{long}/app/db.py");
        a.record(stall(
            4_194_304,
            0,
            300_000_000,
            Some(frame(&function, &file, 1234)),
        ));
        let mut unknown = stall(4_194_304, 1, 200_000_000, None);
        unknown.stack = vec![frame(&function, &file, 99)];
        a.record(unknown);
        let mut info = run();
        info.host = format!("host-{long}");
        let text = summary(&a.report(info), &SummaryOptions::default());
        for line in text.lines() {
            assert!(line.chars().count() <= WIDTH, "{line}");
        }
        // What identifies a frame survives: the end of its name, its file and line.
        assert!(text.contains("xx.handler (…xx"), "{text}");
        assert!(text.contains("xx/app/db.py)\n"), "{text}");
        assert!(text.contains("xx.handler (app/db.py:1234)\n"), "{text}");
        assert!(text.contains("<unknown> in …"), "{text}");
        assert!(text.contains("      loop threads: …"), "{text}");
        assert!(text.contains(", 4000039, 4194305\n"), "{text}");
        assert!(text.starts_with("blockprobe: 2 stalls >= 1.0 ms in 1.50 s on host-xx"));
    }

    #[test]
    fn histograms_fit_80_columns() {
        let mut h = Log2Histogram::new();
        for v in [0, 1, 999, 1_000_000, 123_456_789, u64::MAX / 3, u64::MAX] {
            for _ in 0..(v % 7 + 1) {
                h.record(v);
            }
        }
        h.record_n(5_000_000, 99_999_999);
        let lines = histogram_lines(&h);
        assert_eq!(lines.len(), 1 + 64, "title + every bucket from 0 to 63");
        for l in &lines {
            assert!(l.chars().count() <= 80, "{} cols: {l}", l.chars().count());
        }
        let bar = |l: &str| l.split('|').nth(1).unwrap().to_owned();
        let row_of_5ms = lines.iter().find(|l| l.contains(": 99999999 ")).unwrap();
        assert_eq!(bar(row_of_5ms), "*".repeat(BAR), "the peak fills the bar");
        let row_of_1 = &lines[1];
        assert!(row_of_1.contains("0 -> 2.00"), "{row_of_1}");
        assert_eq!(
            bar(row_of_1).trim_end(),
            "*",
            "a non-empty bucket shows a star"
        );
        let empty = lines.iter().find(|l| l.contains(": 0 ")).unwrap();
        assert_eq!(bar(empty).trim(), "");
    }

    #[test]
    fn histogram_rows_and_units() {
        let mut h = Log2Histogram::new();
        for _ in 0..4 {
            h.record(1_500_000); // bucket [2^20, 2^21) ns = [1.05, 2.10) ms
        }
        h.record(5_000_000); // bucket [2^22, 2^23) = [4.19, 8.39) ms
        let lines = histogram_lines(&h);
        assert_eq!(
            lines,
            vec![
                "         msecs               : count    distribution".to_owned(),
                format!(
                    "          1.05 -> 2.10       : 4        |{}|",
                    "*".repeat(BAR)
                ),
                format!(
                    "          2.10 -> 4.19       : 0        |{}|",
                    " ".repeat(BAR)
                ),
                format!(
                    "          4.19 -> 8.39       : 1        |{:<BAR$}|",
                    "*********"
                ),
            ]
        );
        let mut us = Log2Histogram::new();
        us.record(3_000);
        assert!(histogram_lines(&us)[0].contains("usecs"));
        assert!(
            histogram_lines(&us)[1].contains("2.05 -> 4.10"),
            "{:?}",
            histogram_lines(&us)
        );
        assert!(histogram_lines(&Log2Histogram::new()).is_empty());
    }

    fn run() -> RunInfo {
        RunInfo {
            host: String::new(),
            started_unix_ns: 0,
            duration_ns: 1_500_000_000,
            threshold_ns: 1_000_000,
        }
    }

    #[test]
    fn empty_report() {
        let r = Aggregator::default().report(run());
        let text = summary(&r, &SummaryOptions::default());
        assert_eq!(
            text,
            "blockprobe: 0 stalls >= 1.0 ms in 1.50 s\n  processes: 0, loop threads watched: 0\n\nNo stalls at or above the threshold (no loop was watched).\n"
        );
    }

    #[test]
    fn limits_and_dropped_counts() {
        let mut a = Aggregator::new(Limits {
            max_stalls: 2,
            ..Limits::default()
        });
        for i in 0..12u64 {
            a.record(stall(
                1,
                i,
                1_000_000 * (i + 1),
                Some(frame(&format!("f{i}"), "m.py", 1)),
            ));
        }
        let r = a.report(run());
        let text = summary(
            &r,
            &SummaryOptions {
                top_functions: 3,
                top_stalls: 1,
                max_processes: 10,
            },
        );
        assert!(text.contains(" 1. f11 (m.py)"), "{text}");
        assert!(text.contains(" 3. f9 (m.py)"), "{text}");
        assert!(!text.contains(" 4. "), "{text}");
        assert!(
            text.contains("... and 9 more functions (9 stalls, 45.0 ms total)"),
            "{text}"
        );
        assert!(
            text.contains("10 shorter stalls not kept individually"),
            "{text}"
        );
        let longest = text.split("Longest stalls:\n\n").nth(1).unwrap();
        assert_eq!(
            longest.lines().count(),
            2,
            "one stall, culprit below: {longest}"
        );
        assert!(
            longest.contains("12.0 ms") && longest.contains("f11 (m.py:1)"),
            "{longest}"
        );
    }

    #[test]
    fn same_text_after_a_round_trip() {
        let r = sample_report();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.json");
        r.write_atomic(&path).unwrap();
        let loaded = Report::load(&path).unwrap();
        let opts = SummaryOptions::default();
        assert_eq!(summary(&loaded, &opts), summary(&r, &opts));
    }

    #[test]
    fn a_gil_stall_shows_the_holders_stack_and_the_loops() {
        let mut a = Aggregator::default();
        let mut st = stall(
            1,
            10,
            300_000_000,
            Some(frame("crunch", "/app/worker.py", 9)),
        );
        st.cause = Cause::Gil;
        st.gil_holder_tid = Some(77);
        st.gil_holder_stack = vec![
            frame("crunch", "/app/worker.py", 9),
            frame("Thread.run", "/usr/lib/python3.11/threading.py", 975),
        ];
        st.stack = vec![frame("handle_ping", "/app/svc.py", 30)];
        a.record(st);
        let text = summary(&a.report(run()), &SummaryOptions::default());
        let longest = text.split("Longest stalls:\n\n").nth(1).unwrap();
        assert!(
            longest.contains("GIL holder 77: crunch (app/worker.py:9)"),
            "{text}"
        );
        assert!(
            longest.contains("holder stack: crunch < Thread.run\n"),
            "{text}"
        );
        assert!(longest.contains("loop stack: handle_ping\n"), "{text}");
    }
}
