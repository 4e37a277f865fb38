//! Command-line interface.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use blockprobe_common::maps::DEFAULT_RING_BYTES;
use clap::{Args, Parser, Subcommand};

use crate::host::IdentityOptions;
use crate::render::live::LiveFormat;

/// Find what blocks Python asyncio event loops — system-wide, on running processes,
/// with no code change and no restart.
#[derive(Debug, Parser)]
#[command(name = "blockprobe", version = VERSION, about, after_help = EXAMPLES)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// What `--version` prints after the name: the version, the git commit built and the
/// target triple (a static `x86_64-unknown-linux-musl` binary, or a glibc one).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("BLOCKPROBE_GIT_COMMIT"),
    ", ",
    env!("BLOCKPROBE_BUILD_TARGET"),
    ")"
);

const EXAMPLES: &str = "\
EXAMPLES:
    blockprobe run -- python3 app.py          # trace app.py and its children until it exits
    blockprobe trace -p 1234                  # trace a running process until Ctrl-C
    blockprobe trace --duration 30s -o r.json # every Python process on the host for 30 s
    blockprobe trace --threshold 500us        # report stalls of 0.5 ms and more
    blockprobe report r.json                  # render a saved report
    blockprobe merge web-*.json -o fleet.json # one report for many hosts
    blockprobe diff before.json after.json --fail-on-regression 20   # deploy gate
    blockprobe report r.json --format svg -o flame.svg               # flame graph
    blockprobe serve --listen 127.0.0.1:9464  # Prometheus metrics of the whole host
    blockprobe check                          # what this host allows, before rolling out";

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check what this host allows, one line per item (kernel, BTF, tracepoints, fentry
    /// and lockdown, ring buffers, the perf sampler, capabilities, tracefs, pid_max, the
    /// Python processes running now), each with what to do when it is not OK. Exits 1
    /// when tracing is impossible. Changes nothing on the host.
    #[command(after_help = CHECK_HELP)]
    Check,
    /// Run a command and trace it and all its descendants until it exits.
    #[command(
        after_help = "EXAMPLES:\n    blockprobe run -- python3 app.py\n    blockprobe run -o report.json --threshold 50ms -- uvicorn app:main"
    )]
    Run {
        /// Tracing options.
        #[command(flatten)]
        options: TraceOptions,
        /// The command to run, and its arguments.
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Trace running processes (-p), or every Python process on the host.
    #[command(
        after_help = "EXAMPLES:\n    blockprobe trace -p 1234 -p 5678\n    blockprobe trace --duration 1m -o host.json"
    )]
    Trace {
        /// Tracing options.
        #[command(flatten)]
        options: TraceOptions,
        /// Process to trace (repeatable). Without -p: every Python process, including
        /// ones started later.
        #[arg(short = 'p', long = "pid", value_name = "PID")]
        pids: Vec<u32>,
    },
    /// Render a saved report, or export it as folded stacks, an SVG flame graph or a
    /// pprof profile.
    #[command(after_help = REPORT_HELP)]
    Report {
        /// The report file written with -o.
        file: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
        format: ReportFormat,
        /// Write to this file (atomically) instead of stdout.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Merge reports of several hosts or runs into one: histograms, totals and stacks
    /// add up exactly; the longest stalls are kept.
    #[command(after_help = MERGE_HELP)]
    Merge {
        /// The reports to merge (written with -o by run, trace or serve, or by merge).
        #[arg(required = true, value_name = "REPORT")]
        files: Vec<PathBuf>,
        /// Where to write the merged report.
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
        /// How many of the longest stalls to keep individually (with their stacks).
        #[arg(long, default_value_t = 10_000, value_name = "N")]
        max_stalls: usize,
    },
    /// Compare two reports, e.g. before and after a deploy, per function and per service;
    /// with --fail-on-regression, a deploy or CI gate.
    #[command(after_help = DIFF_HELP)]
    Diff {
        /// The report from before.
        before: PathBuf,
        /// The report from after.
        after: PathBuf,
        /// Exit 1 when a function's or service's stall time grew by more than PCT percent,
        /// or a function or service appears that had no stalls before.
        #[arg(long, value_name = "PCT", value_parser = parse_percent)]
        fail_on_regression: Option<f64>,
        /// Leave out functions and services with fewer than N stalls in both reports.
        #[arg(long, default_value_t = 1, value_name = "N")]
        min_count: u64,
        /// Output format.
        #[arg(long, value_enum, default_value_t = DiffFormat::Text)]
        format: DiffFormat,
        /// Compare stall time per second traced instead of total stall time: for reports
        /// of time windows of different lengths (not for a fixed workload).
        #[arg(long)]
        per_second: bool,
        /// Entries listed per section in text output (JSON lists all).
        #[arg(long, default_value_t = 20, value_name = "N")]
        top: usize,
        /// Gate with --fail-on-regression even when the reports were taken with
        /// different thresholds (refused otherwise, exit 2: their stalls differ by
        /// construction).
        #[arg(long)]
        allow_threshold_mismatch: bool,
    },
    /// Trace every Python process on the host, for as long as it runs, and expose
    /// Prometheus metrics on http://LISTEN/metrics.
    #[command(after_help = SERVE_HELP)]
    Serve {
        /// Tracing options (-o writes a report when serve stops).
        #[command(flatten)]
        options: TraceOptions,
        /// Address to serve metrics on. Loopback by default; the endpoint has no
        /// authentication, so expose it only where scrapers need it.
        #[arg(long, default_value = "127.0.0.1:9464", value_name = "ADDR:PORT")]
        listen: SocketAddr,
        /// Functions per service with series of their own: the first N to stall; later
        /// ones count under function="<other>" until their stall time there outweighs
        /// the smallest series' (then they get one too, up to 2 x N in all).
        #[arg(long, default_value_t = 50, value_name = "N")]
        max_functions: usize,
        /// Services with series of their own: the first N to stall; later ones count
        /// under service="<other>".
        #[arg(long, default_value_t = 50, value_name = "N")]
        max_services: usize,
    },
}

const CHECK_HELP: &str = "\
Each line is `VERDICT ITEM WHAT-WAS-FOUND`, then `-> WHAT-TO-DO` unless it is ok:
ok (as needed), note (not as it could be, not needed), warn (tracing works with less),
FAIL (tracing is impossible until mended).

EXIT STATUS: 0 this host can trace, 1 a FAIL line.

EXAMPLES:
    blockprobe check                    # as the user blockprobe will run as (root)
    ssh web-1 ./blockprobe check        # before rolling out";

const REPORT_HELP: &str = "\
Folded stacks, the flame graph and the pprof profile weigh each stack by its total stall
time. They cover every stall of the run (the report's `stacks` table, bounded to 10000
distinct stacks per run, the rest counted as `<other stacks>`); reports written before
that table existed only have their kept (longest) stalls, and say so. Each stack is the
service, the Python frames (function and stable file, outermost first), then the cause
and syscall that blocked the loop, e.g. `[sleep: clock_nanosleep]`.

EXAMPLES:
    blockprobe report r.json --format folded > r.folded   # inferno-flamegraph, speedscope
    blockprobe report r.json --format svg -o flame.svg
    blockprobe report r.json --format pprof -o r.pb && go tool pprof -top r.pb";

const MERGE_HELP: &str = "\
Functions are matched by qualified name and stable file (relative to site-packages, the
standard library or the app root), so the same code on different hosts and paths merges.
Merging is exact, associative and commutative. Reports of another schema version or taken
with another --threshold are refused.

EXAMPLES:
    blockprobe merge web-1.json web-2.json web-3.json -o fleet.json
    blockprobe merge fleet-monday.json fleet-tuesday.json -o week.json";

const DIFF_HELP: &str = "\
Entries are sorted by impact: the change in total stall time (right for the same
workload before and after, and for equal time windows), or in stall time per second
traced with --per-second (for time windows of different lengths). p50/p99 are estimated
from the log2 buckets (within a factor of 2).

Each entry's JSON has a `delta` object: AFTER minus BEFORE of count, total_ns, p50_ns,
p99_ns, and of each cause's share of the stall time in percentage points
(cause_share_pts); text shows the cause-mix shift in points.

EXIT STATUS: 0 no regression (or no gate), 1 a regression crossed the gate, 2 error
(including a gate over reports of different thresholds without
--allow-threshold-mismatch).

EXAMPLES:
    blockprobe diff before.json after.json
    blockprobe diff before.json after.json --fail-on-regression 25 --min-count 5
    blockprobe diff before.json after.json --format json | jq '.functions[0]'";

const SERVE_HELP: &str = "\
METRICS (Prometheus text format):
    blockprobe_stall_duration_seconds{service,function,file}  histogram (log2 buckets)
    blockprobe_stalls_by_cause_total{service,cause}           counter
    blockprobe_blocked_seconds_total{service,cause}           counter
    blockprobe_event_loops{service}, blockprobe_traced_processes{service}   gauges
    blockprobe_lost_events_total{kind}                        counter
    blockprobe_threshold_seconds, blockprobe_build_info{version}
    process_cpu_seconds_total, process_resident_memory_bytes, ... (blockprobe itself)

CARDINALITY: series are never removed, so counters stay monotonic. The first
--max-services services to stall get series of their own (a process that never stalls
takes no slot); later ones count under service=\"<other>\". Per service, the first
--max-functions functions to stall get series of their own; later ones count under
function=\"<other>\", and one whose stall time there outweighs the smallest series'
gets its own from then on, up to 2 x --max-functions. The <other> series come on top:
with the defaults the stall histogram has at most (50 + 1) x (100 + 1) label sets.

EXAMPLES:
    blockprobe serve                                   # http://127.0.0.1:9464/metrics
    blockprobe serve --listen 0.0.0.0:9464 --threshold 50ms -q   # in a DaemonSet
    blockprobe serve -o /var/lib/blockprobe/host.json  # also write a report at exit";

/// Options shared by `run` and `trace`.
#[derive(Debug, Args, Clone)]
pub struct TraceOptions {
    /// Report loop iterations that stay off-await at least this long (e.g. 500us, 10ms, 1s).
    #[arg(long, default_value = "10ms", value_parser = parse_duration)]
    pub threshold: Duration,
    /// Stop after this long (e.g. 30s, 5m).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Write a JSON report here at exit (also on Ctrl-C/SIGTERM), atomically.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Format of the live stream on stdout.
    #[arg(long, value_enum, default_value_t = LiveFormat::Text)]
    pub format: LiveFormat,
    /// No live output and no summary; only errors and the report file.
    #[arg(short, long)]
    pub quiet: bool,
    /// Size of the kernel-to-user event buffer in KiB (a power of two, at least 4).
    /// Events that do not fit are counted and reported as lost, never dropped silently.
    #[arg(long, value_name = "KIB", default_value_t = DEFAULT_RING_BYTES / 1024, value_parser = parse_ring_kib)]
    pub ring_buffer_kib: u32,
    /// Service label of every traced process. Default: derived from each command line
    /// (`uvicorn app.main:app` → app.main, `python3 /srv/billing/worker.py` → worker,
    /// `python3 /srv/billing/main.py` → billing).
    #[arg(long, value_name = "NAME")]
    pub service: Option<String>,
    /// Record only the program (argv[0]) of each traced command line in the report. The
    /// process's app_root and its service label (derived from the full command line
    /// unless --service is given) are still recorded.
    #[arg(long)]
    pub redact_cmdline: bool,
}

impl TraceOptions {
    /// How the run labels the processes it traces.
    pub fn identity(&self) -> IdentityOptions {
        IdentityOptions {
            service: self.service.clone(),
            redact_cmdline: self.redact_cmdline,
        }
    }
}

/// Parses a percentage (a finite number >= 0).
fn parse_percent(text: &str) -> Result<f64, String> {
    let v: f64 = text
        .trim()
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("invalid percentage {text:?}; use e.g. 20 or 12.5"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("percentage {text:?} must be a number >= 0"));
    }
    Ok(v)
}

/// Parses a ring buffer size in KiB: a power of two from 4 (one page) to 1 GiB.
fn parse_ring_kib(text: &str) -> Result<u32, String> {
    let kib: u32 = text
        .parse()
        .map_err(|_| format!("invalid size {text:?}: give KiB as a whole number, e.g. 4096"))?;
    if !kib.is_power_of_two() || !(4..=1 << 20).contains(&kib) {
        return Err(format!(
            "ring buffer size {kib} KiB must be a power of two from 4 to 1048576"
        ));
    }
    Ok(kib)
}

/// Parses `500us`, `10ms`, `1s`, `1m`, `1.5s`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text.trim())
        .map_err(|e| format!("invalid duration {text:?} ({e}); use e.g. 500us, 10ms, 1s"))?;
    if d.is_zero() {
        return Err(format!("duration {text:?} must be greater than zero"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_buffer_sizes() {
        assert_eq!(parse_ring_kib("4"), Ok(4));
        assert_eq!(parse_ring_kib("4096"), Ok(4096));
        assert!(parse_ring_kib("3").unwrap_err().contains("power of two"));
        assert!(parse_ring_kib("2").is_err());
        assert!(
            parse_ring_kib("4096k")
                .unwrap_err()
                .contains("whole number")
        );
        assert!(parse_ring_kib("2097152").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500us").unwrap(), Duration::from_micros(500));
        assert_eq!(parse_duration("10ms").unwrap(), Duration::from_millis(10));
        assert_eq!(parse_duration("1s").unwrap(), Duration::from_secs(1));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(
            parse_duration("0ms")
                .unwrap_err()
                .contains("greater than zero")
        );
        assert!(parse_duration("ten").unwrap_err().contains("use e.g."));
        assert!(parse_duration("10").is_err());
    }

    /// `serve` binds loopback unless told otherwise: its endpoint has no authentication.
    #[test]
    fn serve_listens_on_loopback_unless_told_otherwise() {
        let listen = |args: &[&str]| match Cli::try_parse_from(args).unwrap().command {
            Command::Serve { listen, .. } => listen,
            _ => panic!("not serve"),
        };
        let default = listen(&["blockprobe", "serve"]);
        assert!(default.ip().is_loopback(), "{default}");
        assert_eq!(default.port(), 9464);
        let told = listen(&["blockprobe", "serve", "--listen", "0.0.0.0:9000"]);
        assert_eq!(told.to_string(), "0.0.0.0:9000");
    }

    #[test]
    fn run_takes_the_command_after_double_dash() {
        let cli = Cli::try_parse_from([
            "blockprobe",
            "run",
            "--threshold",
            "5ms",
            "--",
            "python3",
            "-c",
            "x",
        ])
        .unwrap();
        match cli.command {
            Command::Run { options, command } => {
                assert_eq!(options.threshold, Duration::from_millis(5));
                assert_eq!(command, ["python3", "-c", "x"]);
            }
            _ => panic!("not run"),
        }
        assert!(Cli::try_parse_from(["blockprobe", "run"]).is_err());
    }

    #[test]
    fn fleet_commands() {
        let cli = Cli::try_parse_from([
            "blockprobe",
            "diff",
            "a.json",
            "b.json",
            "--fail-on-regression",
            "12.5%",
            "--min-count",
            "3",
        ])
        .unwrap();
        match cli.command {
            Command::Diff {
                fail_on_regression,
                min_count,
                per_second,
                ..
            } => {
                assert_eq!(fail_on_regression, Some(12.5));
                assert_eq!(min_count, 3);
                assert!(!per_second);
            }
            _ => panic!("not diff"),
        }
        assert!(
            Cli::try_parse_from(["blockprobe", "diff", "a", "b", "--fail-on-regression", "-1"])
                .is_err()
        );
        assert!(
            Cli::try_parse_from(["blockprobe", "merge", "a.json"]).is_err(),
            "-o required"
        );
        let cli = Cli::try_parse_from(["blockprobe", "merge", "a", "b", "-o", "c"]).unwrap();
        assert!(matches!(cli.command, Command::Merge { ref files, .. } if files.len() == 2));
        let cli = Cli::try_parse_from(["blockprobe", "serve", "--service", "api"]).unwrap();
        match cli.command {
            Command::Serve {
                listen,
                options,
                max_functions,
                ..
            } => {
                assert!(listen.ip().is_loopback(), "loopback by default");
                assert_eq!(listen.port(), 9464);
                assert_eq!(options.service.as_deref(), Some("api"));
                assert_eq!(max_functions, 50);
            }
            _ => panic!("not serve"),
        }
        let cli = Cli::try_parse_from([
            "blockprobe",
            "report",
            "r.json",
            "--format",
            "pprof",
            "-o",
            "p",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Report {
                output: Some(_),
                ..
            }
        ));
    }

    #[test]
    fn trace_takes_repeated_pids() {
        let cli = Cli::try_parse_from([
            "blockprobe",
            "trace",
            "-p",
            "1",
            "-p",
            "2",
            "--duration",
            "3s",
        ])
        .unwrap();
        match cli.command {
            Command::Trace { pids, options } => {
                assert_eq!(pids, [1, 2]);
                assert_eq!(options.duration, Some(Duration::from_secs(3)));
            }
            _ => panic!("not trace"),
        }
    }
}

/// Output format of `blockprobe report`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    /// The same summary `blockprobe run` prints at the end.
    #[default]
    Text,
    /// The validated report as pretty-printed JSON (`blockprobe.report/v1`).
    Json,
    /// Folded stacks of blocking time (`service;outer;…;inner;[cause: syscall] NS`), for
    /// inferno, flamegraph.pl or speedscope.
    Folded,
    /// An SVG flame graph of blocking time.
    Svg,
    /// A pprof profile (protobuf; sample types stalls/count and delay/nanoseconds), for
    /// `go tool pprof`, Pyroscope or Grafana.
    Pprof,
}

/// Output format of `blockprobe diff`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum DiffFormat {
    /// Entries by impact, for people.
    #[default]
    Text,
    /// Everything, as one JSON object (`blockprobe.diff/v1`).
    Json,
}
