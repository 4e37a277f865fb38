//! The live stream: one line per stall as it happens, plus status events.
//!
//! Everything the tracer shows while running goes to a session's [`StallSink`]; the
//! live output implements it:
//! - [`TextSink`]: stalls as aligned text lines on stdout (a header first), status
//!   events as `blockprobe: ...` lines on stderr, names escaped;
//! - [`JsonlSink`]: one JSON object per line on stdout for both, field `event` first:
//!   `{"event":"stall",...}` (the stall object exactly as in the report) and the
//!   [`Status`] events;
//! - [`QuietSink`]: no stalls; only warnings and losses, on stderr.
//!
//! Every sink flushes after each event, so a pipe reader sees events as they happen.
//! The sinks of [`sink_for`] and [`quiet_sink`] write through [`UntilClosed`]: a reader
//! that goes away (`| head -1`) silences that stream and nothing else. Other write
//! errors are returned.
//!
//! Its length: about 400 lines of code; the rest are the tests of every sink's exact
//! output, text and JSON, which belong beside it.

use std::collections::HashMap;
use std::io::{self, Write};

use serde::Serialize;

use super::{culprit_label, escape, human_duration, local_clock, ms, no_culprit, short_path};
use crate::model::{Frame, Stall, cause_mix};
use crate::session::sink::{DetachReason, StallSink, Status};

/// Live output format as chosen on the command line. `json` and `jsonl` are the same:
/// one JSON object per line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LiveFormat {
    /// Aligned text lines.
    #[default]
    Text,
    /// One JSON object per line (same as `jsonl`).
    Json,
    /// One JSON object per line.
    Jsonl,
}

/// The sink for `format`, writing to this process's stdout and stderr.
pub fn sink_for(format: LiveFormat) -> Box<dyn StallSink + Send> {
    match format {
        LiveFormat::Text => Box::new(TextSink::new(
            UntilClosed::new(io::stdout()),
            UntilClosed::new(io::stderr()),
        )),
        LiveFormat::Json | LiveFormat::Jsonl => {
            Box::new(JsonlSink::new(UntilClosed::new(io::stdout())))
        }
    }
}

/// A sink that shows nothing but warnings and losses (on stderr).
pub fn quiet_sink() -> Box<dyn StallSink + Send> {
    Box::new(QuietSink::new(UntilClosed::new(io::stderr())))
}

/// A writer that stops writing, quietly, once its reader has gone away: the first
/// broken pipe closes it, and every later write is accepted and dropped. Tracing, the
/// report file and the other stream go on (Rust ignores SIGPIPE, so the closed pipe is
/// only ever this error).
pub struct UntilClosed<W: Write> {
    inner: W,
    closed: bool,
}

impl<W: Write> UntilClosed<W> {
    /// `inner`, open.
    pub fn new(inner: W) -> Self {
        UntilClosed {
            inner,
            closed: false,
        }
    }

    /// Runs `op` on the writer unless closed; a broken pipe closes it.
    fn guard<T>(&mut self, done: T, op: impl FnOnce(&mut W) -> io::Result<T>) -> io::Result<T> {
        if self.closed {
            return Ok(done);
        }
        match op(&mut self.inner) {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(done)
            }
            result => result,
        }
    }
}

impl<W: Write> Write for UntilClosed<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.guard(buf.len(), |w| w.write(buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.guard((), Write::flush)
    }
}

/// Whether an error returned by a sink is a closed pipe (the reader went away): the
/// tracer may then stop printing without reporting an error.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
    })
}

/// The header line of the text stream (no newline).
pub fn text_header() -> String {
    format!(
        "{:<12} {:>7} {:<15} {:>7} {:>8} {:<CAUSES$} {:<15} {}",
        "TIME", "PID", "COMM", "TID", "STALL_MS", "CAUSES", "SYSCALL", "CULPRIT"
    )
}

/// Width of the CAUSES column: `cpu 60%, gil 40%` fits; a longer mix pushes the rest
/// of its line right.
const CAUSES: usize = 16;

/// One stall as a text line (no newline), in the local time zone: the stall's cause
/// breakdown (as in the summary, e.g. `sleep 100%` or `cpu 60%, gil 40%`), its longest
/// syscall, then the culprit, never cut (files are shown by their last two components).
/// Names are escaped.
pub fn stall_line(stall: &Stall) -> String {
    stall_line_at(stall, &local_clock(stall.start_unix_ns))
}

fn stall_line_at(stall: &Stall, clock: &str) -> String {
    let comm: String = escape(&stall.comm).chars().take(15).collect();
    let syscall = match (stall.syscall.as_deref(), stall.fd_kind) {
        (None, _) => "-".into(),
        (Some(name), None) => escape(name),
        (Some(name), Some(fd)) => format!("{}({})", escape(name), fd.as_str()).into(),
    };
    // A loop still stuck when tracing stopped, or already stuck when it began: it
    // lasted at least this long.
    let at_least = if stall.ongoing || stall.started_before_tracing {
        ">"
    } else {
        ""
    };
    let head = format!(
        "{clock:<12} {:>7} {comm:<15} {:>7} {:>8} {:<CAUSES$} {:<15} ",
        stall.pid,
        stall.tid,
        format!("{at_least}{}", ms(stall.duration_ns)),
        cause_mix(stall.duration_ns, &stall.causes),
        syscall,
    );
    // The culprit is never cut: a line that wraps beats a name that misleads.
    let culprit = match (&stall.culprit, stall.stack.first()) {
        (Some(f), _) => frame_text(f),
        (None, None) => no_culprit(stall).to_owned(),
        (None, Some(innermost)) => format!("<unknown> in {}", frame_text(innermost)),
    };
    let task = stall
        .task
        .as_deref()
        .map_or(String::new(), |t| format!(" [task {}]", escape(t)));
    head + &culprit_label(stall) + &culprit + &gil_waiter(stall) + &task
}

/// For a GIL stall, where the loop itself waited: its innermost frame.
fn gil_waiter(stall: &Stall) -> String {
    match stall.stack.first() {
        Some(f) if !stall.gil_holder_stack.is_empty() => {
            format!("; loop waiting in {}", frame_text(f))
        }
        _ => String::new(),
    }
}

/// `function (dir/file.py:line)`, the file shortened to its last two components.
fn frame_text(f: &Frame) -> String {
    format!(
        "{} ({}:{})",
        escape(&f.function),
        escape(short_path(&f.file)),
        f.line
    )
}

/// A status event as a text line (no newline), `blockprobe: ...`, names escaped.
pub fn status_line(status: &Status) -> String {
    let text = match status {
        Status::Attached {
            pid,
            ns_pid,
            comm,
            python_version,
        } => format!(
            "attached to pid {pid} ({}, Python {}{})",
            escape(comm),
            escape(python_version),
            ns_pid.map_or(String::new(), |ns| format!(", pid {ns} in its namespace"))
        ),
        Status::Loop { pid, tid } => format!("event loop in pid {pid}, thread {tid}"),
        Status::LoopGone { pid, tid } => format!("loop thread {tid} of pid {pid} exited"),
        Status::Detached { pid, reason } => format!(
            "detached from pid {pid} ({})",
            match reason {
                DetachReason::Exit => "process exited",
                DetachReason::Exec => "process called exec",
            }
        ),
        Status::Lost { kind, count } => {
            let s = if *count == 1 { "" } else { "s" };
            format!("lost {count} event{s} ({})", escape(kind))
        }
        Status::Warning { message, .. } => format!("warning: {}", escape(message)),
        Status::Stuck {
            pid,
            tid,
            stuck_ns,
            at_least,
            syscall,
            culprit,
        } => format!(
            "loop of pid {pid} thread {tid} stuck {}{} so far{}{}",
            if *at_least {
                "since before tracing began, for at least "
            } else {
                "for "
            },
            human_duration(*stuck_ns),
            syscall
                .as_deref()
                .map_or(String::new(), |s| format!(", in {}", escape(s))),
            culprit
                .as_ref()
                .map_or(String::new(), |f| format!(", at {}", frame_text(f)))
        ),
        Status::Ready {
            poll_hook,
            fentry_refused,
        } => format!(
            "probes attached (epoll hooked by {}{}), tracing",
            poll_hook.name(),
            fentry_refused
                .as_deref()
                .map_or(String::new(), |why| format!(
                    "; fentry refused: {}",
                    escape(why)
                ))
        ),
    };
    format!("blockprobe: {text}")
}

/// One stall as a JSON line (no newline): `{"event":"stall", <the report's stall fields>}`.
pub fn stall_json(stall: &Stall) -> String {
    #[derive(Serialize)]
    struct StallEvent<'a> {
        event: &'static str,
        #[serde(flatten)]
        stall: &'a Stall,
    }
    serde_json::to_string(&StallEvent {
        event: "stall",
        stall,
    })
    .expect("a stall always serializes")
}

/// One status event as a JSON line (no newline), `event` first.
pub fn status_json(status: &Status) -> String {
    serde_json::to_string(status).expect("a status always serializes")
}

/// Writes `line` and its newline with a single write, so lines never interleave with
/// the output of a traced command sharing the terminal or pipe.
fn write_line(w: &mut dyn Write, line: &str) -> io::Result<()> {
    let mut bytes = Vec::with_capacity(line.len() + 1);
    bytes.extend_from_slice(line.as_bytes());
    bytes.push(b'\n');
    w.write_all(&bytes)?;
    w.flush()
}

/// Event loop lines shown per process: a program that starts a thread and a loop per
/// call (asgiref's `async_to_sync`) would print one per call.
const LOOP_LINES_PER_PROCESS: u32 = 8;

/// Text: stalls on `out` (after a header), status on `err`.
pub struct TextSink<O: Write, E: Write> {
    out: O,
    err: E,
    header: bool,
    /// Event loop lines shown so far, by pid.
    loop_lines: HashMap<u32, u32>,
}

impl<O: Write, E: Write> TextSink<O, E> {
    /// A text sink printing a header before the first stall.
    pub fn new(out: O, err: E) -> Self {
        TextSink {
            out,
            err,
            header: true,
            loop_lines: HashMap::new(),
        }
    }

    /// Whether to print the header before the first stall (default: yes).
    #[cfg(test)]
    pub fn with_header(mut self, header: bool) -> Self {
        self.header = header;
        self
    }

    /// The writers back.
    #[cfg(test)]
    pub fn into_inner(self) -> (O, E) {
        (self.out, self.err)
    }
}

impl<O: Write, E: Write> StallSink for TextSink<O, E> {
    fn stall(&mut self, stall: &Stall) -> anyhow::Result<()> {
        if std::mem::take(&mut self.header) {
            write_line(&mut self.out, &text_header())?;
        }
        write_line(&mut self.out, &stall_line(stall))?;
        Ok(())
    }

    fn status(&mut self, status: &Status) -> anyhow::Result<()> {
        match status {
            Status::LoopGone { .. } => return Ok(()),
            Status::Detached { pid, .. } => drop(self.loop_lines.remove(pid)),
            Status::Loop { pid, .. } => {
                let shown = self.loop_lines.entry(*pid).or_default();
                *shown = shown.saturating_add(1);
                if *shown == LOOP_LINES_PER_PROCESS + 1 {
                    let line = format!(
                        "blockprobe: pid {pid} keeps starting event loops: the next ones are not shown"
                    );
                    write_line(&mut self.err, &line)?;
                }
                if *shown > LOOP_LINES_PER_PROCESS {
                    return Ok(());
                }
            }
            _ => {}
        }
        write_line(&mut self.err, &status_line(status))?;
        Ok(())
    }
}

/// JSON lines: stalls and status on `out`.
pub struct JsonlSink<O: Write> {
    out: O,
}

impl<O: Write> JsonlSink<O> {
    /// A JSON-lines sink.
    pub fn new(out: O) -> Self {
        JsonlSink { out }
    }

    /// The writer back.
    #[cfg(test)]
    pub fn into_inner(self) -> O {
        self.out
    }
}

impl<O: Write> StallSink for JsonlSink<O> {
    fn stall(&mut self, stall: &Stall) -> anyhow::Result<()> {
        write_line(&mut self.out, &stall_json(stall))?;
        Ok(())
    }

    fn status(&mut self, status: &Status) -> anyhow::Result<()> {
        write_line(&mut self.out, &status_json(status))?;
        Ok(())
    }
}

/// No live stream: stalls and routine status are dropped; warnings and losses are
/// still shown on `err` as `blockprobe: ...` lines.
pub struct QuietSink<E: Write> {
    err: E,
}

impl<E: Write> QuietSink<E> {
    /// A quiet sink.
    pub fn new(err: E) -> Self {
        QuietSink { err }
    }

    /// The writer back.
    #[cfg(test)]
    pub fn into_inner(self) -> E {
        self.err
    }
}

impl<E: Write> StallSink for QuietSink<E> {
    fn stall(&mut self, _stall: &Stall) -> anyhow::Result<()> {
        Ok(())
    }

    fn status(&mut self, status: &Status) -> anyhow::Result<()> {
        if matches!(
            status,
            Status::Warning { .. } | Status::Lost { .. } | Status::Stuck { .. }
        ) {
            write_line(&mut self.err, &status_line(status))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hooks::PollHook;
    use crate::model::fixtures::{frame, stall};
    use crate::model::{Cause, CulpritFrom, FdKind};

    fn sample() -> Stall {
        let mut s = stall(4242, 1_700_000_000_123_456_789, 152_340_000, None);
        s.tid = 4250;
        s.culprit = Some(frame("Client.fetch_data", "/srv/app/services/db.py", 42));
        s.cause = Cause::Cpu;
        s.causes = [(Cause::Cpu, 91_404_000), (Cause::Gil, 60_936_000)]
            .into_iter()
            .collect();
        s.stack = vec![
            frame("sleep", "/usr/lib/python3.11/asyncio/x.py", 3),
            frame("Client.fetch_data", "/srv/app/services/db.py", 42),
        ];
        s
    }

    #[test]
    fn text_line_layout() {
        let line = stall_line_at(&sample(), "22:13:20.123");
        assert_eq!(
            line,
            "22:13:20.123    4242 python3            4250    152.3 cpu 60%, gil 40% clock_nanosleep Client.fetch_data (services/db.py:42)"
        );
        let header = text_header();
        // The header's columns line up with the line's.
        assert_eq!(header.find("CULPRIT"), line.find("Client"));
        assert_eq!(header.find("CAUSES"), line.find("cpu"));
        assert_eq!(header.find("SYSCALL"), line.find("clock_"));
        // A one-cause stall, as most are.
        let mut s = sample();
        s.causes = [(Cause::Sleep, s.duration_ns)].into_iter().collect();
        let line = stall_line_at(&s, "22:13:20.123");
        assert!(
            line.contains(" 152.3 sleep 100%       clock_nanosleep Client"),
            "{line}"
        );
    }

    #[test]
    fn text_line_of_a_gil_stall_shows_the_holder_and_the_waiting_loop() {
        let mut s = sample();
        s.cause = Cause::Gil;
        s.gil_holder_tid = Some(77);
        s.gil_holder_stack = vec![frame("crunch", "/srv/app/worker.py", 9)];
        s.culprit = Some(frame("crunch", "/srv/app/worker.py", 9));
        let line = stall_line_at(&s, "22:13:20.123");
        assert!(
            line.ends_with(
                " GIL holder 77: crunch (app/worker.py:9); loop waiting in sleep (asyncio/x.py:3)"
            ),
            "{line}"
        );
    }

    #[test]
    fn text_line_counts_short_calls() {
        let mut s = sample();
        s.short_calls = Some(crate::model::ShortCalls {
            calls: 40,
            total_ns: 20_100_000,
        });
        let line = stall_line_at(&s, "22:13:20.123");
        assert!(
            line.ends_with(" 40 short calls (20.1 ms) in Client.fetch_data (services/db.py:42)"),
            "{line}"
        );
    }

    #[test]
    fn text_line_says_when_the_culprit_is_only_where_the_loop_was_last_seen() {
        let mut s = sample();
        s.culprit_from = Some(CulpritFrom::LastSeen);
        let line = stall_line_at(&s, "22:13:20.123");
        assert!(
            line.ends_with(" last seen: Client.fetch_data (services/db.py:42)"),
            "{line}"
        );
    }

    #[test]
    fn text_line_keeps_long_names_whole() {
        let mut s = sample();
        s.comm = "a_very_long_command_name".into();
        s.culprit = Some(frame(
            &format!("{}.handler", "Outer".repeat(30)),
            &format!("/srv/app/{}/module.py", "d".repeat(60)),
            123456,
        ));
        let line = stall_line_at(&s, "22:13:20.123");
        let function = format!("{}.handler", "Outer".repeat(30));
        assert!(line.contains(&format!(" {function} (")), "{line}");
        assert!(
            line.ends_with(&format!(" ({}/module.py:123456)", "d".repeat(60))),
            "{line}"
        );
        assert!(line.contains(" a_very_long_com "), "{line}");
    }

    #[test]
    fn text_line_without_culprit() {
        let mut s = sample();
        s.culprit = None;
        s.syscall = None;
        s.cause = Cause::Other;
        s.causes = [(Cause::Other, s.duration_ns)].into_iter().collect();
        let line = stall_line_at(&s, "x");
        assert!(
            line.ends_with(" <unknown> in sleep (asyncio/x.py:3)"),
            "{line}"
        );
        assert!(line.contains(" other 100%       -  "), "{line}");
        s.stack.clear();
        assert!(stall_line_at(&s, "x").ends_with(" <unknown>"));
    }

    #[test]
    fn short_lived_loops_are_not_shown_one_by_one() {
        let mut sink = TextSink::new(Vec::new(), Vec::new());
        for tid in 0..100 {
            sink.status(&Status::Loop { pid: 7, tid }).unwrap();
            sink.status(&Status::LoopGone { pid: 7, tid }).unwrap();
        }
        sink.status(&Status::Loop { pid: 8, tid: 8 }).unwrap();
        let (_, err) = sink.into_inner();
        let err = String::from_utf8(err).unwrap();
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 8 + 1 + 1, "{err}");
        assert_eq!(lines[7], "blockprobe: event loop in pid 7, thread 7");
        assert_eq!(
            lines[8],
            "blockprobe: pid 7 keeps starting event loops: the next ones are not shown"
        );
        assert_eq!(lines[9], "blockprobe: event loop in pid 8, thread 8");
    }

    #[test]
    fn text_line_of_a_stopped_loop() {
        let s = crate::model::fixtures::stopped_stall(4242, 702_000_000);
        let line = stall_line_at(&s, "x");
        assert!(
            line.ends_with(" stopped 100%     -               <stopped>"),
            "{line}"
        );
    }

    #[test]
    fn text_escapes_names_but_json_keeps_them() {
        let mut s = sample();
        s.comm = "py\u{1b}[2J".into();
        s.culprit = Some(frame("evil\n\u{1b}[31mfn", "/a/b\rc.py", 1));
        s.syscall = Some("read\u{7}".into());
        let line = stall_line(&s);
        assert!(!line.chars().any(|c| c.is_control()), "{line:?}");
        assert!(line.contains("py\\x1b[2J"), "{line}");
        assert!(line.contains("evil\\n\\x1b[31mfn (a/b\\rc.py:1)"), "{line}");
        assert!(line.contains("read\\x07"), "{line}");

        let json = stall_json(&s);
        assert!(!json.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["comm"], "py\u{1b}[2J");
        assert_eq!(v["culprit"]["function"], "evil\n\u{1b}[31mfn");
        assert_eq!(v["syscall"], "read\u{7}");
    }

    #[test]
    fn an_ongoing_stall_lasted_at_least() {
        let mut s = sample();
        s.ongoing = true;
        assert!(stall_line(&s).contains(" >"), "{}", stall_line(&s));
        assert_eq!(stall_json_value(&s)["ongoing"], true);
        s.ongoing = false;
        assert!(stall_json_value(&s).get("ongoing").is_none());
        s.started_before_tracing = true;
        assert!(stall_line(&s).contains(" >"), "{}", stall_line(&s));
        assert_eq!(stall_json_value(&s)["started_before_tracing"], true);
    }

    #[test]
    fn a_loop_stuck_before_tracing_is_stuck_at_least() {
        let stuck = |at_least| Status::Stuck {
            pid: 7,
            tid: 8,
            stuck_ns: 2_000_000_000,
            at_least,
            syscall: Some("futex".into()),
            culprit: None,
        };
        let line = status_line(&stuck(true));
        assert!(
            line.contains("stuck since before tracing began, for at least 2.00 s so far, in futex"),
            "{line}"
        );
        assert_eq!(serde_json::to_value(stuck(true)).unwrap()["at_least"], true);
        assert!(
            serde_json::to_value(stuck(false))
                .unwrap()
                .get("at_least")
                .is_none()
        );
    }

    fn stall_json_value(s: &Stall) -> serde_json::Value {
        serde_json::from_str(&stall_json(s)).unwrap()
    }

    #[test]
    fn the_descriptor_kind_follows_the_syscall() {
        let mut s = sample();
        s.syscall = Some("read".into());
        s.fd_kind = Some(FdKind::Pipe);
        assert!(
            stall_line(&s).contains(" read(pipe) "),
            "{}",
            stall_line(&s)
        );
        let v: serde_json::Value = serde_json::from_str(&stall_json(&s)).unwrap();
        assert_eq!(
            (&v["syscall"], &v["fd_kind"]),
            (&"read".into(), &"pipe".into())
        );
    }

    #[test]
    fn json_stall_is_the_report_stall_with_event_first() {
        let s = sample();
        let json = stall_json(&s);
        assert!(
            json.starts_with(r#"{"event":"stall","pid":4242,"#),
            "{json}"
        );
        let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
        v.as_object_mut().unwrap().remove("event");
        assert_eq!(v, serde_json::to_value(&s).unwrap());
        let back: Stall = serde_json::from_value(v).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn status_json_shapes() {
        let cases = [
            (
                Status::Attached {
                    pid: 1,
                    ns_pid: None,
                    comm: "python3".into(),
                    python_version: "3.11.7".into(),
                },
                r#"{"event":"attached","pid":1,"comm":"python3","python_version":"3.11.7"}"#,
            ),
            (
                Status::Attached {
                    pid: 4242,
                    ns_pid: Some(1),
                    comm: "python3".into(),
                    python_version: "3.11.2".into(),
                },
                r#"{"event":"attached","pid":4242,"ns_pid":1,"comm":"python3","python_version":"3.11.2"}"#,
            ),
            (
                Status::Loop { pid: 1, tid: 2 },
                r#"{"event":"loop","pid":1,"tid":2}"#,
            ),
            (
                Status::Detached {
                    pid: 1,
                    reason: DetachReason::Exit,
                },
                r#"{"event":"detached","pid":1,"reason":"exit"}"#,
            ),
            (
                Status::Detached {
                    pid: 1,
                    reason: DetachReason::Exec,
                },
                r#"{"event":"detached","pid":1,"reason":"exec"}"#,
            ),
            (
                Status::Lost {
                    kind: "ringbuf_stall".into(),
                    count: 3,
                },
                r#"{"event":"lost","kind":"ringbuf_stall","count":3}"#,
            ),
            (
                Status::Warning {
                    pid: None,
                    message: "m\n".into(),
                },
                r#"{"event":"warning","message":"m\n"}"#,
            ),
            (
                Status::Warning {
                    pid: Some(7),
                    message: "m".into(),
                },
                r#"{"event":"warning","pid":7,"message":"m"}"#,
            ),
            (
                Status::Stuck {
                    pid: 1,
                    tid: 2,
                    stuck_ns: 3,
                    at_least: false,
                    syscall: None,
                    culprit: None,
                },
                r#"{"event":"stuck","pid":1,"tid":2,"stuck_ns":3}"#,
            ),
        ];
        for (status, want) in cases {
            assert_eq!(status_json(&status), want);
            assert_eq!(serde_json::from_str::<Status>(want).unwrap(), status);
        }
    }

    #[test]
    fn status_text_lines() {
        assert_eq!(
            status_line(&Status::Attached {
                pid: 7,
                ns_pid: Some(1),
                comm: "py\u{1b}".into(),
                python_version: "3.12.1".into()
            }),
            "blockprobe: attached to pid 7 (py\\x1b, Python 3.12.1, pid 1 in its namespace)"
        );
        assert_eq!(
            status_line(&Status::Loop { pid: 7, tid: 9 }),
            "blockprobe: event loop in pid 7, thread 9"
        );
        assert_eq!(
            status_line(&Status::Stuck {
                pid: 7,
                tid: 9,
                stuck_ns: 4_000_000_000,
                at_least: false,
                syscall: Some("futex".into()),
                culprit: Some(frame("update", "/srv/app/cache.py", 12)),
            }),
            "blockprobe: loop of pid 7 thread 9 stuck for 4.00 s so far, in futex, at update \
             (app/cache.py:12)"
        );
        assert_eq!(
            status_line(&Status::Detached {
                pid: 7,
                reason: DetachReason::Exec
            }),
            "blockprobe: detached from pid 7 (process called exec)"
        );
        assert_eq!(
            status_line(&Status::Lost {
                kind: "ringbuf_stall".into(),
                count: 1
            }),
            "blockprobe: lost 1 event (ringbuf_stall)"
        );
        assert_eq!(
            status_line(&Status::Warning {
                pid: None,
                message: "line1\nline2".into()
            }),
            "blockprobe: warning: line1\\nline2"
        );
    }

    #[test]
    fn text_sink_splits_stdout_and_stderr() {
        let mut sink = TextSink::new(Vec::new(), Vec::new());
        sink.status(&Status::Loop { pid: 1, tid: 2 }).unwrap();
        sink.stall(&sample()).unwrap();
        sink.stall(&sample()).unwrap();
        let (out, err) = sink.into_inner();
        let out = String::from_utf8(out).unwrap();
        let err = String::from_utf8(err).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(lines[0].starts_with("TIME "), "{out}");
        assert!(lines[1].contains("Client.fetch_data"));
        assert_eq!(err, "blockprobe: event loop in pid 1, thread 2\n");

        let mut sink = TextSink::new(Vec::new(), Vec::new()).with_header(false);
        sink.stall(&sample()).unwrap();
        assert_eq!(
            String::from_utf8(sink.into_inner().0)
                .unwrap()
                .lines()
                .count(),
            1
        );
    }

    #[test]
    fn jsonl_sink_writes_one_object_per_line() {
        let mut sink = JsonlSink::new(Vec::new());
        sink.status(&Status::Loop { pid: 1, tid: 2 }).unwrap();
        let mut s = sample();
        s.culprit = Some(frame("multi\nline", "f.py", 1));
        sink.stall(&s).unwrap();
        let out = String::from_utf8(sink.into_inner()).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        for l in &lines {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert!(v["event"].is_string());
        }
        assert!(lines[1].starts_with(r#"{"event":"stall""#));
    }

    #[test]
    fn quiet_sink_shows_only_warnings_and_losses() {
        let mut sink = QuietSink::new(Vec::new());
        sink.stall(&sample()).unwrap();
        sink.status(&Status::Loop { pid: 1, tid: 2 }).unwrap();
        sink.status(&Status::Warning {
            pid: None,
            message: "w".into(),
        })
        .unwrap();
        sink.status(&Status::Lost {
            kind: "k".into(),
            count: 2,
        })
        .unwrap();
        let err = String::from_utf8(sink.into_inner()).unwrap();
        assert_eq!(
            err,
            "blockprobe: warning: w\nblockprobe: lost 2 events (k)\n"
        );
    }

    struct ClosedPipe;
    impl Write for ClosedPipe {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A pipe whose reader goes away after `open` writes; counts the writes it got.
    struct ClosingPipe {
        open: usize,
        written: Vec<u8>,
    }
    impl Write for ClosingPipe {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.open == 0 {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            self.open -= 1;
            self.written.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_closed_pipe_silences_its_stream_only() {
        let out = UntilClosed::new(ClosingPipe {
            open: 1,
            written: Vec::new(),
        });
        let mut sink = TextSink::new(out, Vec::new());
        for _ in 0..3 {
            sink.stall(&sample()).unwrap();
            sink.status(&Status::Ready {
                poll_hook: PollHook::Tracepoint,
                fentry_refused: None,
            })
            .unwrap();
        }
        let (out, err) = sink.into_inner();
        assert_eq!(
            out.inner.written,
            format!("{}\n", text_header()).into_bytes()
        );
        assert!(out.closed);
        assert_eq!(String::from_utf8(err).unwrap().lines().count(), 3);
        // Errors other than a closed pipe still surface.
        let mut other = UntilClosed::new(io::Cursor::new([0u8; 0]));
        assert!(other.write_all(b"x").is_err());
    }

    #[test]
    fn broken_pipe_is_recognisable() {
        let mut sink = JsonlSink::new(ClosedPipe);
        let err = sink.stall(&sample()).unwrap_err();
        assert!(is_broken_pipe(&err));
        assert!(!is_broken_pipe(&anyhow::anyhow!("other")));
    }
}
