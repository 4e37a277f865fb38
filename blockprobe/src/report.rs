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
//! `services`, `stacks`, `sources`) default when absent.
//! `services` and `stacks` cover every stall, like `functions` (see
//! [`crate::fleet::tables`]); `sources` is only filled by `blockprobe merge`.
//! `stalls` holds the longest stalls (at most the aggregator's `max_stalls`) in
//! chronological order; `stalls_dropped` counts the others. `functions` is sorted by
//! `total_ns`, descending, and covers every stall. `buckets` are described in
//! [`crate::histogram`].

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;

use anyhow::anyhow;
use serde::{Deserialize, Serialize};

use crate::aggregate::{FunctionKey, FunctionStats, ProcessInfo};
use crate::histogram::Log2Histogram;
use crate::model::{Cause, Stall};

/// The schema this build writes and reads.
pub const SCHEMA: &str = "blockprobe.report/v1";

/// Reports larger than this are refused by [`Report::load`] (256 MiB).
pub const MAX_REPORT_BYTES: u64 = 256 << 20;

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
    pub services: Vec<crate::fleet::tables::ServiceReport>,
    /// Blocking time per distinct stack (bounded), by total stall time.
    #[serde(default)]
    pub stacks: Vec<crate::fleet::tables::StackReport>,
    /// The runs a merged report was made of (`blockprobe merge`); empty for one run.
    #[serde(default)]
    pub sources: Vec<crate::fleet::merge::Source>,
    /// Processes whose stalls may be missing from this report, and why.
    #[serde(default)]
    pub warnings: Vec<ProcessWarning>,
}

/// The reasons a [`ProcessWarning`] gives.
pub mod warning {
    /// A Python thread of the process polls (epoll family) from native code, not
    /// through `selectors`, and no thread of the process was found to run an asyncio
    /// loop: an event loop blockprobe does not recognize may be running unwatched.
    pub const POLLS_WITHOUT_LOOP: &str = "polls_without_loop";

    /// What `reason` means, in a few words.
    pub fn describe(reason: &str) -> &str {
        match reason {
            POLLS_WITHOUT_LOOP => "polls (epoll), no asyncio loop found: stalls not seen",
            other => other,
        }
    }
}

/// A traced process whose stalls may be missing from the report.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ProcessWarning {
    /// Process id (host pid namespace).
    pub pid: u32,
    /// Why: a [`warning`] code.
    pub reason: String,
    /// Host the process ran on.
    #[serde(default)]
    pub host: String,
}

/// One function's aggregate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FunctionReport {
    /// Qualified name, or `<unknown>` / `<other>`.
    pub function: String,
    /// File name (empty for `<unknown>` / `<other>`).
    pub file: String,
    /// `file` relative to site-packages, the stdlib or the app root: the same on every
    /// host (see [`crate::fleet::identity::stable_file`]). Functions are compared and
    /// merged by `function` and `stable_file`.
    #[serde(default)]
    pub stable_file: String,
    /// Serialized inline as `count`, `total_ns`, `max_ns`, `buckets`.
    #[serde(flatten)]
    pub histogram: Log2Histogram,
    /// Stall time by cause, on CPU and off (sum of the stalls' `causes`).
    #[serde(default)]
    pub causes: BTreeMap<Cause, u64>,
}

impl FunctionReport {
    /// The report entry of one aggregated function.
    pub fn new(key: &FunctionKey, stats: &FunctionStats) -> Self {
        FunctionReport {
            function: key.function.clone(),
            file: key.file.clone(),
            stable_file: key.stable_file.clone(),
            histogram: stats.histogram.clone(),
            causes: stats.causes.clone(),
        }
    }

    /// The key functions are compared and merged by: the function and its stable file
    /// (derived from `file` for reports written before `stable_file` existed).
    pub fn stable_key(&self) -> (String, String) {
        let file = if self.stable_file.is_empty() {
            crate::fleet::identity::stable_file(&self.file, [])
        } else {
            self.stable_file.clone()
        };
        (self.function.clone(), file)
    }
}

/// Sorts functions as the report lists them: total stall time descending, then count
/// descending, then function and file ascending.
pub fn sort_functions(functions: &mut [FunctionReport]) {
    functions.sort_by(|a, b| {
        b.histogram
            .total_ns()
            .cmp(&a.histogram.total_ns())
            .then(b.histogram.count().cmp(&a.histogram.count()))
            .then_with(|| a.function.cmp(&b.function))
            .then_with(|| a.file.cmp(&b.file))
    });
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

    /// Writes the report to `path` atomically: a temporary file in the same directory is
    /// written, flushed and fsynced, then renamed over `path`. On any error `path` is
    /// left as it was, the temporary file is removed, and the one-line error names
    /// `path`. The file gets the mode a plain `File::create` would give it.
    pub fn write_atomic(&self, path: &Path) -> anyhow::Result<()> {
        write_atomic_with(path, |w| {
            serde_json::to_writer(&mut *w, self).map_err(io::Error::from)?;
            w.write_all(b"\n")
        })
    }

    /// [`Report::write_atomic`], but first checks that the JSON is at most `max_bytes`
    /// (e.g. [`MAX_REPORT_BYTES`], over which [`Report::load`] would refuse it): a
    /// larger report is not written at all, and the one-line error names `path`.
    pub fn write_atomic_capped(&self, path: &Path, max_bytes: u64) -> anyhow::Result<()> {
        let mut bytes = serde_json::to_vec(self)
            .map_err(|e| anyhow!("cannot write report {}: {e}", path.display()))?;
        bytes.push(b'\n');
        if bytes.len() as u64 > max_bytes {
            return Err(anyhow!(
                "cannot write report {}: it would be {} bytes, over the {} limit for \
                 reports (blockprobe could not read it back); nothing was written",
                path.display(),
                bytes.len(),
                size_text(max_bytes)
            ));
        }
        write_atomic_with(path, |w| w.write_all(&bytes))
    }

    /// Reads and validates a report. Every error is one line naming `path`: missing or
    /// unreadable file, file over [`MAX_REPORT_BYTES`], empty, truncated or corrupt
    /// JSON, wrong or missing `schema`, or a v1 report with missing or invalid fields.
    pub fn load(path: &Path) -> anyhow::Result<Report> {
        let bytes = read_capped(path, MAX_REPORT_BYTES)?;
        Self::from_slice(&bytes).map_err(|e| anyhow!("report {}: {e}", path.display()))
    }

    /// Parses and validates a report held in memory (the checks of [`Report::load`]
    /// after reading). The error does not name a file.
    pub fn from_slice(bytes: &[u8]) -> Result<Report, String> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err("the file is empty".to_owned());
        }
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
        if first != Some(&b'{') {
            return Err(
                match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
                    Ok(_) => format!(
                        "not a blockprobe report: expected a JSON object, found {}",
                        json_kind(first.copied().unwrap_or(b'?'))
                    ),
                    Err(e) => json_syntax_error(&e),
                },
            );
        }
        // First only the schema, so that a report of another version is reported as
        // such rather than as a missing field.
        #[derive(Deserialize)]
        struct Probe {
            schema: Option<serde_json::Value>,
        }
        let probe: Probe = serde_json::from_slice(bytes).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => format!("not a blockprobe report ({e})"),
            _ => json_syntax_error(&e),
        })?;
        match probe.schema {
            None => {
                return Err(format!(
                    "not a blockprobe report: no \"schema\" field (expected {SCHEMA:?})"
                ));
            }
            Some(serde_json::Value::String(s)) if s == SCHEMA => {}
            Some(serde_json::Value::String(s)) => {
                let shown = shorten(&s, 80);
                let hint = if s.starts_with("blockprobe.report/") {
                    " (written by a different blockprobe version?)"
                } else {
                    ""
                };
                return Err(format!(
                    "unsupported schema {shown:?}; this blockprobe ({}) reads only {SCHEMA:?}{hint}",
                    env!("CARGO_PKG_VERSION")
                ));
            }
            Some(other) => {
                return Err(format!(
                    "not a blockprobe report: \"schema\" is {}, not a string",
                    shorten(&other.to_string(), 40)
                ));
            }
        }
        serde_json::from_slice(bytes).map_err(|e| format!("invalid {SCHEMA} report: {e}"))
    }
}

fn json_syntax_error(e: &serde_json::Error) -> String {
    match e.classify() {
        serde_json::error::Category::Eof => format!("truncated JSON ({e})"),
        _ => format!("corrupt JSON ({e})"),
    }
}

/// What a valid JSON document starting with `first` is.
fn json_kind(first: u8) -> &'static str {
    match first {
        b'[' => "an array",
        b'"' => "a string",
        b't' | b'f' => "a boolean",
        b'n' => "null",
        _ => "a number",
    }
}

fn shorten(s: &str, max_chars: usize) -> String {
    if s.chars().count() <= max_chars {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(max_chars).collect();
        out.push('…');
        out
    }
}

/// A byte limit as text: `256 MiB`, or `1000 bytes` below one MiB.
fn size_text(bytes: u64) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{bytes} bytes")
    }
}

/// Reads a whole file, refusing (before reading) one larger than `cap` bytes.
fn read_capped(path: &Path, cap: u64) -> anyhow::Result<Vec<u8>> {
    let p = path.display();
    let file = File::open(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => anyhow!("report {p}: no such file"),
        _ => anyhow!("report {p}: cannot open: {e}"),
    })?;
    let meta = file
        .metadata()
        .map_err(|e| anyhow!("report {p}: cannot stat: {e}"))?;
    if meta.is_dir() {
        return Err(anyhow!("report {p}: is a directory, not a report file"));
    }
    let too_big = |size: &str| {
        anyhow!(
            "report {p}: {size} bytes is over the {} limit for reports; refusing to read it",
            size_text(cap)
        )
    };
    if meta.len() > cap {
        return Err(too_big(&meta.len().to_string()));
    }
    // Also bounds what is read from a file that grows, or a pipe.
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(cap + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| anyhow!("report {p}: cannot read: {e}"))?;
    if bytes.len() as u64 > cap {
        return Err(too_big("more than"));
    }
    Ok(bytes)
}

/// The mechanism of [`Report::write_atomic`], with the content written by `write`.
pub(crate) fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;

    let p = path.display();
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| anyhow!("cannot write report {p}: not a file path"))?;
    let mut prefix = std::ffi::OsString::from(".");
    prefix.push(name);
    prefix.push(".");
    let mut tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".tmp")
        // Subject to the umask, like File::create.
        .permissions(std::fs::Permissions::from_mode(0o666))
        .tempfile_in(dir)
        .map_err(|e| {
            anyhow!(
                "cannot write report {p}: cannot create a temporary file in {}: {e}",
                dir.display()
            )
        })?;
    let written = (|| {
        let mut w = BufWriter::new(tmp.as_file_mut());
        write(&mut w)?;
        w.flush()?;
        drop(w);
        tmp.as_file().sync_all()
    })();
    if let Err(e) = written {
        // Dropping `tmp` removes the temporary file.
        return Err(anyhow!("cannot write report {p}: {e}"));
    }
    tmp.persist(path).map_err(|e| {
        anyhow!(
            "cannot write report {p}: cannot rename into place: {}",
            e.error
        )
    })?;
    // Make the rename itself durable; the report is complete either way.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// This machine's host name (empty if it cannot be read).
pub fn local_hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for `buf.len()` bytes; gethostname NUL-terminates
    // unless truncated, and we stop at the first NUL or the end either way.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::aggregate::tests::{frame, stall};
    use crate::aggregate::{Aggregator, RunInfo};
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
    fn round_trip_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.json");
        let r = sample_report();
        r.write_atomic(&path).unwrap();
        let back = Report::load(&path).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.stall_count(), 36);
        // Nothing but the report is left in the directory.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("r.json")]);
        // Overwrite in place.
        let mut r2 = r.clone();
        r2.host = "web-2".into();
        r2.write_atomic(&path).unwrap();
        assert_eq!(Report::load(&path).unwrap().host, "web-2");
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

    fn write(dir: &Path, name: &str, content: &[u8]) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, content).unwrap();
        p
    }

    fn load_err(path: &Path) -> String {
        let e = Report::load(path).unwrap_err().to_string();
        assert!(!e.contains('\n'), "one line: {e}");
        assert!(
            e.contains(&path.display().to_string()),
            "names the path: {e}"
        );
        e
    }

    #[test]
    fn load_errors_are_clear() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let good = serde_json::to_vec(&sample_report()).unwrap();

        let e = load_err(&d.join("nope.json"));
        assert!(e.contains("no such file"), "{e}");

        let e = load_err(&write(d, "empty.json", b"  \n"));
        assert!(e.contains("empty"), "{e}");

        let e = load_err(&write(d, "trunc.json", &good[..good.len() / 2]));
        assert!(e.contains("truncated"), "{e}");

        // A structural byte (not one inside a string) a third of the way in.
        let mut corrupt = good.clone();
        // A colon, never inside a string: always a syntax error.
        let third = good.len() / 3;
        let colon = third + good[third..].iter().position(|&b| b == b':').unwrap();
        corrupt[colon] = b'#';
        let e = load_err(&write(d, "corrupt.json", &corrupt));
        assert!(e.contains("corrupt"), "{e}");

        let e = load_err(&write(d, "garbage.json", b"\x7fELF\x02\x01"));
        assert!(e.contains("corrupt"), "{e}");

        let e = load_err(&write(d, "array.json", b"[1,2,3]"));
        assert!(
            e.contains("not a blockprobe report: expected a JSON object, found an array"),
            "{e}"
        );
        let e = load_err(&write(d, "array_trunc.json", b"[1,2,"));
        assert!(e.contains("truncated"), "{e}");

        let e = load_err(&write(d, "noschema.json", br#"{"host":"x"}"#));
        assert!(e.contains("no \"schema\""), "{e}");

        let v2 = String::from_utf8(good.clone())
            .unwrap()
            .replace("blockprobe.report/v1", "blockprobe.report/v2");
        let e = load_err(&write(d, "v2.json", v2.as_bytes()));
        assert!(
            e.contains("\"blockprobe.report/v2\""),
            "says what was found: {e}"
        );
        assert!(
            e.contains("reads only \"blockprobe.report/v1\""),
            "says what is supported: {e}"
        );

        let e = load_err(&write(d, "other.json", br#"{"schema":"something/else"}"#));
        assert!(e.contains("unsupported schema \"something/else\""), "{e}");

        let e = load_err(&write(d, "numschema.json", br#"{"schema":3}"#));
        assert!(e.contains("not a string"), "{e}");

        let e = load_err(&write(
            d,
            "missing.json",
            br#"{"schema":"blockprobe.report/v1","host":"h"}"#,
        ));
        assert!(e.contains("missing field `duration_ns`"), "{e}");

        let bad_hist = br#"{"schema":"blockprobe.report/v1","host":"h","duration_ns":5,"threshold_ns":1,"lost_events":0,
            "processes":[],"stalls":[],
            "functions":[{"function":"f","file":"a.py","count":3,"total_ns":9,"max_ns":6,"buckets":[{"le_ns":7,"count":1}]}]}"#;
        let e = load_err(&write(d, "badhist.json", bad_hist));
        assert!(e.contains("add up to 1, but count is 3"), "{e}");

        let e = load_err(d);
        assert!(e.contains("directory"), "{e}");
    }

    #[test]
    fn refuses_oversize_files_without_reading_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("huge.json");
        let f = File::create(&path).unwrap();
        // Sparse: no disk space used.
        f.set_len(MAX_REPORT_BYTES + 1).unwrap();
        let e = load_err(&path);
        assert!(e.contains("over the 256 MiB limit"), "{e}");
        assert!(e.contains(&(MAX_REPORT_BYTES + 1).to_string()), "{e}");
        // Exactly at the cap is read (and then found corrupt: it is all NULs).
        f.set_len(10).unwrap();
        let e = read_capped(&path, 9).unwrap_err().to_string();
        assert!(e.contains("over the"), "{e}");
        assert_eq!(read_capped(&path, 10).unwrap().len(), 10);
    }

    fn assert_untouched(path: &Path, old: &[u8]) {
        assert_eq!(std::fs::read(path).unwrap(), old, "old file intact");
        let dir = path.parent().unwrap();
        let leftovers: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    }

    #[test]
    fn failed_write_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "r.json", b"old report");
        let e = write_atomic_with(&path, |w| {
            w.write_all(&[b'x'; 100_000])?;
            Err(io::Error::other("disk on fire"))
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("disk on fire"), "{e}");
        assert!(e.contains(&path.display().to_string()), "{e}");
        assert_untouched(&path, b"old report");
    }

    #[test]
    fn failed_rename_keeps_the_target() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("r.json");
        std::fs::create_dir(&target).unwrap();
        write(&target, "inside", b"keep me");
        let e = sample_report()
            .write_atomic(&target)
            .unwrap_err()
            .to_string();
        assert!(e.contains("rename"), "{e}");
        assert!(e.contains(&target.display().to_string()), "{e}");
        assert_eq!(std::fs::read(target.join("inside")).unwrap(), b"keep me");
        assert_untouched(&target.join("inside"), b"keep me");
    }

    #[test]
    fn missing_directory_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no/such/dir/r.json");
        let e = sample_report().write_atomic(&path).unwrap_err().to_string();
        assert!(e.contains(&path.display().to_string()), "{e}");
        assert!(e.contains("temporary file"), "{e}");
    }

    /// Drops the capabilities that let root ignore file permissions, for the calling
    /// thread only (capabilities are per thread on Linux).
    fn drop_dac_override_in_this_thread() {
        // CAP_DAC_OVERRIDE (1), CAP_DAC_READ_SEARCH (2), CAP_FOWNER (3).
        crate::preflight::ThreadCapabilities::get()
            .and_then(|caps| caps.drop_effective((1 << 1) | (1 << 2) | (1 << 3)))
            .unwrap();
    }

    #[test]
    fn unwritable_directory_keeps_the_old_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "r.json", b"old report");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o555)).unwrap();
        let p = path.clone();
        let result = std::thread::spawn(move || {
            drop_dac_override_in_this_thread();
            sample_report().write_atomic(&p).map_err(|e| e.to_string())
        })
        .join()
        .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = result.unwrap_err();
        assert!(e.contains(&path.display().to_string()), "{e}");
        assert!(e.contains("Permission denied"), "{e}");
        assert_untouched(&path, b"old report");
    }

    #[test]
    fn written_file_mode_follows_umask_not_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.json");
        sample_report().write_atomic(&path).unwrap();
        let reference = dir.path().join("ref");
        File::create(&reference).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), mode(&reference));
    }

    proptest::proptest! {
        /// Arbitrary bytes, and valid reports cut or corrupted at any point, are refused
        /// with an error or loaded, never a panic.
        #[test]
        fn loading_never_panics(garbage in proptest::collection::vec(proptest::num::u8::ANY, 0..512), cut in 0usize..2000, flip in 0usize..2000) {
            let _ = Report::from_slice(&garbage);
            let valid = serde_json::to_vec(&sample_report()).unwrap();
            let _ = Report::from_slice(&valid[..cut.min(valid.len())]);
            let mut corrupt = valid.clone();
            let i = flip % corrupt.len();
            corrupt[i] = corrupt[i].wrapping_add(1);
            let _ = Report::from_slice(&corrupt);
        }
    }
}
