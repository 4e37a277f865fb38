//! The test context: the processes a test started, waiting on them, failing with all they
//! printed.

use std::fmt::{Display, Write as _};
use std::io::{BufRead as _, BufReader, Read, Write as _};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use crate::env::steal_ns;
use crate::{Line, ScriptState, Stall, field_u32, kind};

/// The longest any single wait may take.
pub const TIMEOUT: Duration = Duration::from_secs(20);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Wakes waiters whenever any process of a [`Ctx`] prints something or closes a stream.
#[derive(Default)]
struct Notify {
    generation: Mutex<u64>,
    changed: Condvar,
}

impl Notify {
    fn bump(&self) {
        *lock(&self.generation) += 1;
        self.changed.notify_all();
    }
}

struct ProcInner {
    name: String,
    pid: u32,
    child: Mutex<Child>,
    stdin: Mutex<Option<ChildStdin>>,
    stdout: Mutex<Vec<Line>>,
    stderr: Mutex<Vec<String>>,
    /// Streams (stdout, stderr) not yet at end of file.
    open_streams: Mutex<u8>,
    status: Mutex<Option<ExitStatus>>,
    /// The test expects this process to exit: its exit does not fail a wait.
    may_exit: AtomicBool,
}

impl ProcInner {
    fn try_status(&self) -> Option<ExitStatus> {
        let mut status = lock(&self.status);
        if status.is_none() {
            *status = lock(&self.child).try_wait().ok().flatten();
        }
        *status
    }
}

struct CtxInner {
    notify: Arc<Notify>,
    procs: Mutex<Vec<Arc<ProcInner>>>,
    /// Processes the test did not start itself (the script under `run`) but must not
    /// outlive it: pid and a piece of its command line, checked before killing.
    strays: Mutex<Vec<(u32, String)>>,
    started: Instant,
    /// The host's steal time when the test began ([`steal_ns`]).
    steal_at_start: u64,
}

/// The processes of one test. Dropping it kills them all. Its methods are [`CtxRef`]'s.
pub struct Ctx(CtxRef);

/// A handle to a test's [`Ctx`]: spawning, waiting, failing with everything seen so far.
#[derive(Clone)]
pub struct CtxRef(Arc<CtxInner>);

impl std::ops::Deref for Ctx {
    type Target = CtxRef;

    fn deref(&self) -> &CtxRef {
        &self.0
    }
}

/// A process started by [`CtxRef::spawn`]; its stdin, stdout and stderr are the test's.
#[derive(Clone)]
pub struct Proc {
    inner: Arc<ProcInner>,
    ctx: CtxRef,
}

impl Default for Ctx {
    fn default() -> Self {
        Self::new()
    }
}

impl Ctx {
    pub fn new() -> Ctx {
        Ctx(CtxRef(Arc::new(CtxInner {
            notify: Arc::default(),
            procs: Mutex::default(),
            strays: Mutex::default(),
            started: Instant::now(),
            steal_at_start: steal_ns(),
        })))
    }
}

impl CtxRef {
    /// Starts `cmd` with piped stdin, stdout and stderr, read line by line in the
    /// background. `name` identifies it in failure messages.
    pub fn spawn(&self, name: &str, cmd: &mut Command) -> Proc {
        let mut child = cmd
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| self.fail(format!("cannot start {name} ({cmd:?}): {err}")));
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let inner = Arc::new(ProcInner {
            name: name.to_string(),
            pid: child.id(),
            stdin: Mutex::new(child.stdin.take()),
            child: Mutex::new(child),
            stdout: Mutex::default(),
            stderr: Mutex::default(),
            open_streams: Mutex::new(2),
            status: Mutex::default(),
            may_exit: AtomicBool::new(false),
        });
        lock(&self.0.procs).push(inner.clone());
        spawn_reader(
            stdout,
            inner.clone(),
            self.0.notify.clone(),
            |proc, text| {
                lock(&proc.stdout).push(Line::classify(text));
            },
        );
        spawn_reader(
            stderr,
            inner.clone(),
            self.0.notify.clone(),
            |proc, text| {
                lock(&proc.stderr).push(text);
            },
        );
        Proc {
            inner,
            ctx: self.clone(),
        }
    }

    /// How much longer a stall may be for the CPU time the hypervisor took while the test
    /// ran (see the crate docs): the steal time since it began, plus a tick per CPU for
    /// the rounding of the counters; 0 when there was none.
    pub fn stolen_ns(&self) -> u64 {
        match steal_ns().saturating_sub(self.0.steal_at_start) {
            0 => 0,
            stolen => {
                let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
                stolen + cpus * 10_000_000
            }
        }
    }

    /// Kills `pid` when the test ends, if it still runs `tag` (a piece of its command
    /// line: guards against a reused pid).
    pub fn adopt(&self, pid: u32, tag: &str) {
        lock(&self.0.strays).push((pid, tag.to_string()));
    }

    /// Waits until `check` returns `Some`, and returns that. Fails after [`TIMEOUT`], or
    /// as soon as a process exits that the test did not expect to exit.
    #[track_caller]
    pub fn wait_for<T>(&self, what: &str, check: impl FnMut() -> Option<T>) -> T {
        self.wait_up_to(TIMEOUT, what, check)
    }

    /// [`CtxRef::wait_for`] with another time limit, for steps whose time grows with a
    /// load the test chose (starting hundreds of processes).
    #[track_caller]
    pub fn wait_up_to<T>(
        &self,
        limit: Duration,
        what: &str,
        mut check: impl FnMut() -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + limit;
        let notify = self.0.notify.clone();
        let mut generation = lock(&notify.generation);
        loop {
            if let Some(found) = check() {
                return found;
            }
            if let Some((name, status)) = self.unexpected_exit() {
                drop(generation);
                // Give the readers what the process wrote before it went away.
                self.drain(&name);
                if let Some(found) = check() {
                    return found;
                }
                self.fail(format!("{name} exited ({status}) while waiting for {what}"));
            }
            let now = Instant::now();
            if now >= deadline {
                drop(generation);
                self.fail(format!("timed out after {limit:?} waiting for {what}"));
            }
            // Wake on output, and at least every 50 ms to notice a silent exit.
            let slice = (deadline - now).min(Duration::from_millis(50));
            generation = notify
                .changed
                .wait_timeout(generation, slice)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }

    fn unexpected_exit(&self) -> Option<(String, ExitStatus)> {
        let procs = lock(&self.0.procs).clone();
        procs.iter().find_map(|proc| {
            if proc.may_exit.load(Ordering::SeqCst) {
                return None;
            }
            proc.try_status().map(|status| (proc.name.clone(), status))
        })
    }

    /// Waits (at most 2 s) for a process's stdout and stderr to reach end of file: when
    /// it has exited, what it wrote is then all read. Its children may hold them open
    /// longer; that is not an error.
    fn drain(&self, name: &str) {
        let procs = lock(&self.0.procs).clone();
        let Some(proc) = procs.iter().find(|p| p.name == name) else {
            return;
        };
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut generation = lock(&self.0.notify.generation);
        while *lock(&proc.open_streams) > 0 {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            generation = self
                .0
                .notify
                .changed
                .wait_timeout(generation, deadline - now)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }

    /// Fails the test with `message` and everything the test's processes printed. The
    /// message comes again after the dump: CI logs are often read from the tail.
    #[track_caller]
    pub fn fail(&self, message: impl Display) -> ! {
        panic!(
            "{message}\n{}\n======== the failure, again: {message}",
            self.dump()
        );
    }

    /// Fails the test with `message` (and the dump) unless `condition` holds.
    #[track_caller]
    pub fn ensure(&self, condition: bool, message: impl FnOnce() -> String) {
        if !condition {
            self.fail(message());
        }
    }

    /// Everything the test's processes printed so far, for failure messages.
    pub fn dump(&self) -> String {
        const MAX_LINES: usize = 300;
        let mut out = format!(
            "\n======== what the test saw ({:.1} s into the test)",
            self.0.started.elapsed().as_secs_f64()
        );
        for proc in lock(&self.0.procs).iter() {
            let status = match *lock(&proc.status) {
                Some(status) => status.to_string(),
                None => "running".into(),
            };
            let _ = write!(
                out,
                "\n---- {} (pid {}, {status}) stdout:",
                proc.name, proc.pid
            );
            let stdout = lock(&proc.stdout);
            let skip = stdout.len().saturating_sub(MAX_LINES);
            if skip > 0 {
                let _ = write!(out, "\n[{skip} earlier lines not shown]");
            }
            for line in stdout.iter().skip(skip) {
                let (tag, text) = match line {
                    Line::Event(_, raw) => ("", raw.clone()),
                    Line::Garbled(text) => ("GARBLED ", text.clone()),
                    Line::Text(text) => ("", text.clone()),
                };
                let _ = write!(out, "\n  {tag}{text}");
            }
            let _ = write!(out, "\n---- {} stderr:", proc.name);
            let stderr = lock(&proc.stderr);
            let skip = stderr.len().saturating_sub(MAX_LINES);
            if skip > 0 {
                let _ = write!(out, "\n[{skip} earlier lines not shown]");
            }
            for line in stderr.iter().skip(skip) {
                let _ = write!(out, "\n  {line}");
            }
        }
        out.push_str("\n======== end");
        out
    }
}

impl Drop for Ctx {
    fn drop(&mut self) {
        let inner = &(self.0).0;
        for proc in lock(&inner.procs).iter() {
            drop(lock(&proc.stdin).take());
            let mut child = lock(&proc.child);
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        for (pid, tag) in lock(&inner.strays).iter() {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(tag.as_str()) {
                let _ = signal::kill(pid_of(*pid), Signal::SIGKILL);
            }
        }
    }
}

/// A process group killed (SIGKILL) when this is dropped: a server and every worker it
/// forked go with the test, also when the test fails.
pub struct ProcessGroup(pub u32);

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        let _ = signal::killpg(pid_of(self.0), Signal::SIGKILL);
    }
}

fn pid_of(pid: u32) -> Pid {
    Pid::from_raw(i32::try_from(pid).expect("pid fits i32"))
}

fn spawn_reader(
    stream: impl Read + Send + 'static,
    proc: Arc<ProcInner>,
    notify: Arc<Notify>,
    store: fn(&ProcInner, String),
) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if buf.last() == Some(&b'\n') {
                        buf.pop();
                    }
                    store(&proc, String::from_utf8_lossy(&buf).into_owned());
                    notify.bump();
                }
            }
        }
        *lock(&proc.open_streams) -= 1;
        notify.bump();
    });
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.inner.pid
    }

    #[track_caller]
    fn fail(&self, message: impl Display) -> ! {
        self.ctx.fail(message)
    }

    /// Writes `line` and a newline to the process's stdin.
    #[track_caller]
    pub fn send(&self, line: &str) {
        let mut stdin = lock(&self.inner.stdin);
        let Some(pipe) = stdin.as_mut() else {
            drop(stdin);
            self.fail(format!(
                "cannot send {line:?} to {}: stdin closed",
                self.inner.name
            ));
        };
        let result = pipe
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| pipe.flush());
        drop(stdin);
        if let Err(err) = result {
            self.fail(format!(
                "cannot send {line:?} to {}: {err}",
                self.inner.name
            ));
        }
    }

    /// Closes the process's stdin (end of file for it, and for a script under `run`).
    pub fn close_stdin(&self) {
        drop(lock(&self.inner.stdin).take());
    }

    /// Sends `sig` to the process.
    pub fn signal(&self, sig: Signal) {
        if let Err(err) = signal::kill(pid_of(self.inner.pid), sig) {
            self.fail(format!("cannot send {sig} to {}: {err}", self.inner.name));
        }
    }

    /// Marks the process as expected to exit: its exit no longer fails a wait.
    pub fn may_exit(&self) {
        self.inner.may_exit.store(true, Ordering::SeqCst);
    }

    /// Whether it has exited (without waiting).
    pub fn exited(&self) -> Option<ExitStatus> {
        self.inner.try_status()
    }

    /// Waits (bounded) for the process to exit, and for its output to be read.
    #[track_caller]
    pub fn wait_exit(&self) -> ExitStatus {
        self.may_exit();
        let what = format!("{} to exit", self.inner.name);
        let status = self.ctx.wait_for(&what, || self.inner.try_status());
        self.ctx.drain(&self.inner.name);
        status
    }

    /// All of its stdout lines so far.
    pub fn lines(&self) -> Vec<Line> {
        lock(&self.inner.stdout).clone()
    }

    /// Its JSONL events so far.
    pub fn events(&self) -> Vec<Value> {
        lock(&self.inner.stdout)
            .iter()
            .filter_map(|line| match line {
                Line::Event(value, _) => Some(value.clone()),
                _ => None,
            })
            .collect()
    }

    /// Its events of kind `event` (`attached`, `loop`, `stall`, …) for `pid`.
    pub fn events_of(&self, event: &str, pid: u32) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| kind(e) == event && field_u32(e, "pid") == Some(pid))
            .collect()
    }

    /// Its `stall` events for `pid`, parsed.
    pub fn stalls(&self, pid: u32) -> Vec<Stall> {
        self.events_of("stall", pid)
            .into_iter()
            .map(|event| {
                serde_json::from_value(event.clone()).unwrap_or_else(|err| {
                    self.fail(format!(
                        "stall event does not match the schema ({err}): {event}"
                    ))
                })
            })
            .collect()
    }

    /// How many events of any kind its `lost` events counted so far.
    pub fn lost_total(&self) -> u64 {
        self.lost_counted(|_| true)
    }

    /// How many events of `kind` (`ringbuf_stall`, …) its `lost` events counted so far.
    pub fn lost(&self, counter: &str) -> u64 {
        self.lost_counted(|kind| *kind == counter)
    }

    /// The counts of its `lost` events whose kind passes `of`, added up.
    fn lost_counted(&self, of: impl Fn(&Value) -> bool) -> u64 {
        self.events()
            .iter()
            .filter(|e| kind(e) == "lost" && of(&e["kind"]))
            .filter_map(|e| e["count"].as_u64())
            .sum()
    }

    /// Its stdout lines that are not blockprobe's events.
    pub fn texts(&self) -> Vec<String> {
        lock(&self.inner.stdout)
            .iter()
            .filter_map(|line| match line {
                Line::Text(text) => Some(text.clone()),
                _ => None,
            })
            .collect()
    }

    /// Its stdout lines that are neither events nor other whole lines.
    pub fn garbled(&self) -> Vec<String> {
        lock(&self.inner.stdout)
            .iter()
            .filter_map(|line| match line {
                Line::Garbled(text) => Some(text.clone()),
                _ => None,
            })
            .collect()
    }

    /// What a scenario script printed so far among its stdout lines.
    pub fn script_state(&self) -> ScriptState {
        let texts = self.texts();
        ScriptState::parse(texts.iter().map(String::as_str))
    }

    /// Its stderr so far.
    pub fn stderr(&self) -> String {
        lock(&self.inner.stderr).join("\n")
    }
}
