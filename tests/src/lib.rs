//! Harness for blockprobe's integration tests: the real binary, real BPF, real Pythons.
//!
//! Run them with `cargo xtask test` (as root). Directly:
//! `BLOCKPROBE_BIN=$PWD/target/debug/blockprobe BLOCKPROBE_PYDEPS=$PWD/target/pydeps
//! cargo test -p blockprobe-tests -- --test-threads=1` (both default to those paths).
//! Tests of a missing full-matrix interpreter (see `blockprobe_pythons`) skip, saying why,
//! unless `BLOCKPROBE_FULL_MATRIX=1`, which `cargo xtask test` sets when all are there.
//!
//! # How a test talks to a scenario script
//!
//! The scripts in `tests/scripts` follow the protocol of `tests/scripts/bptest.py`: each
//! starts its loop(s), prints `LOOP <name> <tid>` per loop and `READY <pid>`, and runs its
//! scenario at once, as real programs block whenever they like. A test about a steady
//! state marks it by starting the script with `BPTEST_GO=1` ([`Python::command`] and
//! [`run_command`] do; [`run_scenario`] does not): the script then waits for `GO` on
//! stdin, which the test sends once blockprobe has reported a `loop` event for every
//! thread the script listed. The script runs its scenario, timing each blocking call itself
//! (`DONE <name> <ns>`), prints `FINISHED`, and stays alive until `QUIT` or the end of its
//! stdin. The test sends `QUIT` only after blockprobe has reported the stalls it expects:
//! blockprobe symbolizes a stall by reading the process's memory, which needs the process.
//!
//! Under `blockprobe run` the script inherits blockprobe's stdin and stdout, so the test
//! writes `GO`/`QUIT` to blockprobe's stdin, and reads the script's lines from
//! blockprobe's stdout: lines that start with `{"event"` are blockprobe's, the others the
//! script's. That only works if every line reaches the pipe in one `write(2)`; a line that
//! is not whole (JSON that does not parse, or `{"event"` inside another line) fails the
//! test.
//!
//! # Waiting
//!
//! Tests never sleep for a fixed time and are never retried. Every wait is for a condition
//! ([`CtxRef::wait_for`]), bounded by [`TIMEOUT`], and fails at once if a process the test
//! still needs exits. A failure message carries everything seen so far: the stdout and
//! stderr of every process the test started. Processes are killed when the test's [`Ctx`]
//! is dropped, also when the test fails.
//!
//! # How long a stall is
//!
//! blockprobe's stall is the off-await part of one loop iteration: from the loop leaving
//! its poller (`epoll_wait` returning) to it coming back. The script's own measurement,
//! `time.monotonic_ns()` taken just before and just after the blocking call, lies inside
//! that interval and reads the same clock (CLOCK_MONOTONIC), so a stall cannot be shorter
//! than it: [`BELOW`] (1 ms) only covers the two sides taking their timestamps at slightly
//! different points (syscall boundaries vs Python calls). A stall is longer only by the few
//! Python lines around the call in the same iteration, and by waiting for the GIL after
//! `epoll_wait` returns when another thread holds it, which the interpreter bounds by its
//! switch interval (5 ms): hence [`ABOVE`] (5 ms), plus the time the stall spent waiting
//! for a CPU (its `runqueue` share, as blockprobe measured it): on a busy machine the loop
//! may be preempted anywhere in the interval, also outside the script's measurement. On a
//! virtual machine the hypervisor may also stop a CPU for a while (steal time), which
//! neither side sees as such: the loop looks on CPU. The test adds the steal time the
//! host reported while it ran ([`CtxRef::stolen_ns`], 0 on a quiet host).
//!
//! So a script times the whole synchronous stretch of its blocking coroutine when that
//! stretch releases the GIL more than once (blocking_recv.py: connect, send, recv).
//!
//! The time a stall spent blocked for its cause (`causes[cause]`) is checked against what
//! the script asked for instead (a 200 ms sleep, a server's 150 ms delay), less
//! [`CAUSE_SLACK`]: the kernel never ends a sleep early, but a server's delay starts when
//! it reads the request, a little before the client enters `recv()` (the client may first
//! wait up to a switch interval for the GIL); and the scheduling delay after a wake-up,
//! which the script's measurement includes, may be accounted to another cause.

use std::collections::BTreeMap;
use std::fmt::{Display, Write as _};
use std::io::{BufRead as _, BufReader, Read, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use blockprobe_pythons::{Interpreter, MATRIX, Source};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub mod pyspy;

/// The longest any single wait may take.
pub const TIMEOUT: Duration = Duration::from_secs(20);
/// The stall threshold every test passes to blockprobe.
pub const THRESHOLD: &str = "10ms";
/// How much shorter than the script's own measurement a stall may be (see the crate docs).
pub const BELOW: Duration = Duration::from_millis(1);
/// How much longer than the script's own measurement a stall may be (see the crate docs).
pub const ABOVE: Duration = Duration::from_millis(5);

/// CPU time the hypervisor took from this machine's CPUs so far (`steal` in /proc/stat,
/// all CPUs; 0 where it is not reported).
fn steal_ns() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("cpu "))
        .and_then(|fields| fields.split_whitespace().nth(7))
        .and_then(|steal| steal.parse().ok())
        .unwrap_or(0);
    // In USER_HZ ticks (100 a second on Linux for every architecture blockprobe runs on).
    ticks * 10_000_000
}
/// How much less than the requested blocking time a stall's `causes[cause]` may be (see
/// the crate docs): one GIL switch interval.
pub const CAUSE_SLACK: Duration = Duration::from_millis(5);
/// How far a stall may lie outside the window in which the test knows it happened
/// (between sending `GO` and reading its event): clock conversion slack.
pub const WALL_SLACK: Duration = Duration::from_millis(2);

// ------------------------------------------------------------------ paths and environment

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The blockprobe binary under test: `$BLOCKPROBE_BIN`, else `target/debug/blockprobe`.
pub fn blockprobe_bin() -> PathBuf {
    let path = match std::env::var_os("BLOCKPROBE_BIN") {
        Some(path) => PathBuf::from(path),
        None => workspace_root().join("target/debug/blockprobe"),
    };
    assert!(
        path.is_file(),
        "blockprobe binary not found at {}: run `cargo xtask test`, or build it \
         (`cargo build -p blockprobe`) and set BLOCKPROBE_BIN",
        path.display()
    );
    path
}

/// The static build's tarball (`cargo xtask dist`): `$BLOCKPROBE_DIST_TARBALL`, else
/// `dist/blockprobe-VERSION-x86_64-unknown-linux-musl.tar.gz` in the workspace.
pub fn dist_tarball() -> PathBuf {
    let path = match std::env::var_os("BLOCKPROBE_DIST_TARBALL").filter(|p| !p.is_empty()) {
        Some(path) => PathBuf::from(path),
        None => workspace_root().join(format!(
            "dist/blockprobe-{}-x86_64-unknown-linux-musl.tar.gz",
            env!("CARGO_PKG_VERSION")
        )),
    };
    assert!(
        path.is_file(),
        "the static build's tarball is not at {}: run `cargo xtask test`, or `cargo xtask dist` \
         and set BLOCKPROBE_DIST_TARBALL",
        path.display()
    );
    path
}

/// Where `cargo xtask setup` installs the scripts' Python dependencies (`requests`):
/// `$BLOCKPROBE_PYDEPS`, else `target/pydeps`.
pub fn pydeps() -> PathBuf {
    let path = match std::env::var_os("BLOCKPROBE_PYDEPS") {
        Some(path) => PathBuf::from(path),
        None => workspace_root().join("target/pydeps"),
    };
    assert!(
        path.join("requests").is_dir(),
        "Python test dependencies not found in {}: run `cargo xtask setup`",
        path.display()
    );
    path
}

/// The absolute path of a scenario script in `tests/scripts`.
pub fn script(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name);
    assert!(path.is_file(), "no scenario script {}", path.display());
    path
}

/// The 1-based number of the line of `script` that carries the comment `# <marker>`, e.g.
/// `BLOCK handler` for the line of `handler`'s blocking call.
pub fn marker_line(script: &Path, marker: &str) -> u32 {
    let text = std::fs::read_to_string(script).expect("script is readable");
    let tag = format!("# {marker}");
    let found: Vec<usize> = text
        .lines()
        .enumerate()
        .filter(|(_, line)| line.trim_end().ends_with(&tag))
        .map(|(i, _)| i + 1)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "{} must have exactly one line marked `{tag}`",
        script.display()
    );
    u32::try_from(found[0]).expect("line number fits u32")
}

/// Fails the test unless it runs as root: the tests load BPF programs.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the integration tests must run as root (they load BPF programs): `sudo -E cargo xtask test`"
    );
}

/// Wall-clock time now, in nanoseconds since the Unix epoch.
pub fn unix_now_ns() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    u64::try_from(since.as_nanos()).expect("fits u64")
}

// ------------------------------------------------------------------ interpreters

/// A Python interpreter the scenarios run on.
#[derive(Clone, Debug)]
pub struct Python {
    /// For messages: "pyenv 3.11.7", "debian 3.11".
    pub label: String,
    pub path: PathBuf,
    /// Extra environment for the scripts (after [`python_env`]'s).
    pub env: Vec<(String, String)>,
}

impl Python {
    /// A test interpreter of [`blockprobe_pythons::MATRIX`]; fails the test unless it is
    /// installed.
    #[track_caller]
    pub fn of(interpreter: &Interpreter) -> Python {
        let python = Python {
            label: interpreter.label(),
            path: interpreter.path(),
            env: Vec::new(),
        };
        python.check();
        python
    }

    /// The matrix interpreter `id` (`pyenv_3_11`), unless it may be skipped (see
    /// [`blockprobe_pythons::require`], which prints why).
    #[track_caller]
    pub fn matrix(id: &str) -> Option<Python> {
        let interpreter = blockprobe_pythons::by_id(id);
        blockprobe_pythons::require(interpreter).map(|_| Python::of(interpreter))
    }

    /// The pyenv build of `version` (`"3.11.7"`), under `$PYENV_ROOT`.
    #[track_caller]
    pub fn pyenv(version: &str) -> Python {
        Python::find(|i| i.source == Source::Pyenv && i.version == version)
    }

    /// Debian's own (stripped) `/usr/bin/python3.11`.
    #[track_caller]
    pub fn debian() -> Python {
        Python::find(|i| matches!(i.source, Source::System(_)))
    }

    /// Debian sid's `python3.X` unpacked by `cargo xtask pythons` (3.14, 3.15) into
    /// `$BLOCKPROBE_PYTHONS` (default `~/.cache/blockprobe/pythons`).
    #[track_caller]
    pub fn debian_sid(minor: &str) -> Python {
        Python::find(|i| i.source == Source::Sid && i.minor() == minor)
    }

    /// The one matrix interpreter `which` picks.
    #[track_caller]
    fn find(which: impl Fn(&Interpreter) -> bool) -> Python {
        let found: Vec<&Interpreter> = MATRIX.iter().filter(|i| which(i)).collect();
        assert_eq!(found.len(), 1, "not one test interpreter: {found:?}");
        Python::of(found[0])
    }

    /// The same interpreter with bptest's loops run by uvloop (`BPTEST_UVLOOP=1`): from
    /// `target/pyuvloop/3.X` (PyPI, `cargo xtask pythons`) when there, else the
    /// interpreter's own (Debian sid's `python3-uvloop` for 3.14).
    pub fn with_uvloop(self) -> Python {
        self.with_uvloop_mode("1", " + uvloop")
    }

    /// [`Python::with_uvloop`], the main loop run by `run_until_complete` from the script's
    /// own frame (`BPTEST_UVLOOP=by-hand`), as servers start uvloop.
    pub fn with_uvloop_by_hand(self) -> Python {
        self.with_uvloop_mode("by-hand", " + uvloop by hand")
    }

    fn with_uvloop_mode(mut self, mode: &str, label: &str) -> Python {
        self.env.push(("BPTEST_UVLOOP".into(), mode.into()));
        self.label.push_str(label);
        self.with_packages("pyuvloop", &["uvloop"], "cargo xtask pythons")
    }

    /// The same interpreter with the real servers' packages (FastAPI, uvicorn with
    /// uvloop and httptools, gunicorn, aiohttp) from `target/pyservers/3.X`
    /// (`cargo xtask setup`, for pyenv 3.11 and 3.13); fails the test without them.
    pub fn with_servers(self) -> Python {
        let modules = ["fastapi", "uvicorn", "gunicorn", "aiohttp", "uvloop"];
        self.with_packages("pyservers", &modules, "cargo xtask setup")
    }

    /// Puts `target/<dir>/3.X` on PYTHONPATH after the pydeps, when there, and checks
    /// that `modules` import (`how` installs them).
    fn with_packages(mut self, dir: &str, modules: &[&str], how: &str) -> Python {
        let (major, minor) = self.major_minor();
        let dir = pydeps()
            .parent()
            .expect("pydeps has a parent")
            .join(format!("{dir}/{major}.{minor}"));
        if dir.is_dir() {
            let path = format!("{}:{}", pydeps().display(), dir.display());
            self.env.push(("PYTHONPATH".into(), path));
        }
        let out = self
            .command(Path::new("-c"))
            .arg(format!("import {}", modules.join(", ")))
            .output()
            .expect("interpreter runs");
        assert!(
            out.status.success(),
            "{} missing for {} (run `{how}`): {}",
            modules.join(", "),
            self.label,
            String::from_utf8_lossy(&out.stderr)
        );
        self
    }

    fn check(&self) {
        assert!(
            self.path.is_file(),
            "interpreter {} not found at {}",
            self.label,
            self.path.display()
        );
    }

    /// The kernel's command name for a process of this interpreter.
    pub fn comm(&self) -> String {
        let name = self
            .path
            .file_name()
            .expect("interpreter has a file name")
            .to_string_lossy();
        name.chars().take(15).collect()
    }

    /// The interpreter's version, as `platform.python_version()` says ("3.11.7").
    pub fn version(&self) -> String {
        let out = Command::new(&self.path)
            .args(["-c", "import platform; print(platform.python_version())"])
            .output()
            .expect("interpreter runs");
        assert!(out.status.success(), "{} failed to start", self.label);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `(major, minor)` of [`Python::version`].
    pub fn major_minor(&self) -> (u32, u32) {
        let version = self.version();
        let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
    }

    /// The syscall `time.sleep()` blocks in: `clock_nanosleep` since 3.11, `select()`
    /// (glibc's `pselect6`) before.
    pub fn sleep_syscall(&self) -> &'static str {
        if self.major_minor() >= (3, 11) {
            "clock_nanosleep"
        } else {
            "pselect6"
        }
    }

    /// A command that runs a scenario script on this interpreter, with the scripts'
    /// environment (see [`python_env`]), for a test about a steady state: the script
    /// waits for `GO` before its scenario (`BPTEST_GO=1`).
    pub fn command(&self, script: &Path) -> Command {
        let mut cmd = self.command_at_once(script);
        cmd.env("BPTEST_GO", "1");
        cmd
    }

    /// [`Python::command`] for a script that runs its scenario at once, without waiting
    /// for the tracer.
    pub fn command_at_once(&self, script: &Path) -> Command {
        let mut cmd = Command::new(&self.path);
        cmd.arg(script);
        python_env(&mut cmd);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }
}

/// The environment for the scenario scripts (also set on blockprobe under `run`, whose
/// child inherits it): `requests` on PYTHONPATH, no `__pycache__` in the source tree.
pub fn python_env(cmd: &mut Command) {
    cmd.env("PYTHONPATH", pydeps())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("PYTHONHOME")
        .env_remove("PYTHONASYNCIODEBUG");
}

/// Generates one test per matrix interpreter for each scenario function
/// `fn name(&Python)`: `name::pyenv_3_11`, `name::debian_3_14`, … (see
/// [`blockprobe_pythons::MATRIX`]). Tests of full-matrix interpreters skip, saying so,
/// when theirs is missing and the full matrix is off.
#[macro_export]
macro_rules! python_matrix {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            $crate::with_matrix_ids!(matrix_tests!($scenario;));
        }
    )*};
}

/// Calls this crate's `callback!(args… ids…)` with the ids of
/// [`blockprobe_pythons::MATRIX`] as identifiers (a unit test checks that they agree).
#[doc(hidden)]
#[macro_export]
macro_rules! with_matrix_ids {
    ($callback:ident!($($args:tt)*)) => {
        $crate::$callback! {
            $($args)* pyenv_3_11 debian_3_11 debian_3_14 pyenv_3_9 pyenv_3_10 pyenv_3_12
            pyenv_3_13 debian_3_15
        }
    };
}

/// One test of `scenario` per id.
#[doc(hidden)]
#[macro_export]
macro_rules! matrix_tests {
    ($scenario:ident; $($id:ident)*) => {$(
        #[test]
        fn $id() {
            if let Some(python) = $crate::Python::matrix(stringify!($id)) {
                super::$scenario(&python);
            }
        }
    )*};
}

/// The ids as strings.
#[doc(hidden)]
#[macro_export]
macro_rules! matrix_id_strings {
    ($($id:ident)*) => { &[$(stringify!($id)),*] };
}

/// The ids `python_matrix!` generates tests for, in order.
pub const MATRIX_TEST_IDS: &[&str] = with_matrix_ids!(matrix_id_strings!());

// ------------------------------------------------------------------ what blockprobe says

/// One symbolized Python frame of a stall.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    pub function: String,
    pub file: String,
    pub line: u32,
}

impl Frame {
    pub fn new(function: &str, file: &Path, line: u32) -> Frame {
        Frame {
            function: function.into(),
            file: file.to_string_lossy().into_owned(),
            line,
        }
    }
}

/// A `stall` event (and a report's stall): the fields the tests check.
#[derive(Clone, Debug, Deserialize)]
pub struct Stall {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub start_unix_ns: u64,
    pub duration_ns: u64,
    pub cause: String,
    pub syscall: Option<String>,
    pub causes: BTreeMap<String, u64>,
    pub stack: Vec<Frame>,
    pub culprit: Option<Frame>,
    /// Many short calls of the main cause that make its evidence.
    #[serde(default)]
    pub short_calls: Option<ShortCalls>,
    /// What `stack` and `culprit` come from (`evidence`, `last_seen`).
    #[serde(default)]
    pub culprit_from: Option<String>,
    /// The thread that held the GIL (`gil` stalls).
    #[serde(default)]
    pub gil_holder_tid: Option<u32>,
    /// The GIL holder's stack (`gil` stalls).
    #[serde(default)]
    pub gil_holder_stack: Vec<Frame>,
    /// Timer samples of the stall (`cpu`/`runqueue` stalls).
    #[serde(default)]
    pub cpu_samples: u32,
    /// Those of them with `stack`'s functions.
    #[serde(default)]
    pub stack_samples: u32,
    /// The asyncio task the loop was running (3.14+).
    #[serde(default)]
    pub task: Option<String>,
    /// What the blocking syscall's file descriptor was (file, socket, pipe, …).
    #[serde(default)]
    pub fd_kind: Option<String>,
    /// The loop was still stuck when tracing stopped.
    #[serde(default)]
    pub ongoing: bool,
    /// The loop was already stuck when tracing began (the duration is a lower bound).
    #[serde(default)]
    pub started_before_tracing: bool,
}

/// A stall's `short_calls`.
#[derive(Clone, Copy, Debug, Deserialize)]
pub struct ShortCalls {
    pub calls: u32,
    pub total_ns: u64,
}

impl Stall {
    /// The time this stall spent runnable but waiting for a CPU.
    pub fn runqueue_ns(&self) -> u64 {
        self.causes.get("runqueue").copied().unwrap_or(0)
    }
}

/// One line of a process's stdout.
#[derive(Clone, Debug)]
pub enum Line {
    /// A line that starts with `{"event"`: one of blockprobe's JSONL events, parsed, and
    /// as it was written.
    Event(Value, String),
    /// A line that starts with `{"event"` but does not parse, or has `{"event"` inside it:
    /// two writers' output mixed up.
    Garbled(String),
    /// Any other line: the traced program's own output (under `run`), or a script's.
    Text(String),
}

impl Line {
    fn classify(text: String) -> Line {
        if text.starts_with("{\"event\"") {
            match serde_json::from_str::<Value>(&text) {
                Ok(value) if value.is_object() => Line::Event(value, text),
                _ => Line::Garbled(text),
            }
        } else if text.contains("{\"event\"") {
            Line::Garbled(text)
        } else {
            Line::Text(text)
        }
    }
}

/// The `event` field of a JSONL event.
pub fn kind(event: &Value) -> &str {
    event.get("event").and_then(Value::as_str).unwrap_or("")
}

/// Field `name` of a JSON event, as a u32.
pub fn field_u32(event: &Value, name: &str) -> Option<u32> {
    event
        .get(name)
        .and_then(Value::as_u64)
        .and_then(|n| u32::try_from(n).ok())
}

/// What a scenario script said so far (see `tests/scripts/bptest.py`).
#[derive(Clone, Debug, Default)]
pub struct ScriptState {
    /// From `READY <pid>`.
    pub pid: Option<u32>,
    /// From `LOOP <name> <tid>`, in order.
    pub loops: Vec<(String, u32)>,
    /// From `DONE <name> <ns>`, in order.
    pub done: Vec<(String, u64)>,
    /// `FINISHED` was printed.
    pub finished: bool,
}

impl ScriptState {
    fn parse<'a>(lines: impl IntoIterator<Item = &'a str>) -> ScriptState {
        let mut state = ScriptState::default();
        for line in lines {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["READY", pid] => state.pid = pid.parse().ok(),
                ["LOOP", name, tid] => {
                    if let Ok(tid) = tid.parse() {
                        state.loops.push(((*name).to_string(), tid));
                    }
                }
                ["DONE", name, ns] => {
                    if let Ok(ns) = ns.parse() {
                        state.done.push(((*name).to_string(), ns));
                    }
                }
                ["FINISHED"] => state.finished = true,
                _ => {}
            }
        }
        state
    }

    /// The thread id of the loop called `name`.
    pub fn loop_tid(&self, name: &str) -> Option<u32> {
        self.loops.iter().find(|(n, _)| n == name).map(|(_, t)| *t)
    }

    /// The duration the script measured for `name`.
    pub fn measured(&self, name: &str) -> Option<u64> {
        self.done.iter().find(|(n, _)| n == name).map(|(_, ns)| *ns)
    }
}

// ------------------------------------------------------------------ processes

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

    // -------------------------------------------------------------- protocol steps

    /// Waits for a script's `READY <pid>` among `out`'s lines (the script's own stdout, or
    /// blockprobe's under `run`) and returns what it said.
    #[track_caller]
    pub fn wait_ready(&self, out: &Proc) -> ScriptState {
        self.wait_for("the script to print READY", || {
            let state = out.script_state();
            state.pid.is_some().then_some(state)
        })
    }

    /// Waits until blockprobe (`bp`) reported a `loop` event for each of `tids` in `pid`:
    /// tracing of those loops is live.
    #[track_caller]
    pub fn wait_loops_live(&self, bp: &Proc, pid: u32, tids: &[u32]) {
        self.ensure(!tids.is_empty(), || {
            "the script listed no loop thread".into()
        });
        let what = format!("blockprobe's `loop` events for pid {pid}, threads {tids:?}");
        self.wait_for(&what, || {
            let events = bp.events();
            tids.iter()
                .all(|tid| {
                    events.iter().any(|e| {
                        kind(e) == "loop"
                            && field_u32(e, "pid") == Some(pid)
                            && field_u32(e, "tid") == Some(*tid)
                    })
                })
                .then_some(())
        });
    }

    /// Waits for the script's `FINISHED` (all its `DONE` lines are then in).
    #[track_caller]
    pub fn wait_finished(&self, out: &Proc) -> ScriptState {
        self.wait_for("the script to print FINISHED", || {
            let state = out.script_state();
            state.finished.then_some(state)
        })
    }

    /// Waits until the script `name` that `bp` runs is READY and blockprobe found each of
    /// the loops it listed; adopts the script's process. Returns what it said and its pid.
    #[track_caller]
    pub fn wait_live(&self, bp: &Proc, name: &str) -> (ScriptState, u32) {
        let ready = self.wait_ready(bp);
        let pid = ready.pid.expect("READY has a pid");
        self.adopt(pid, name);
        let tids: Vec<u32> = ready.loops.iter().map(|(_, tid)| *tid).collect();
        self.wait_loops_live(bp, pid, &tids);
        (ready, pid)
    }

    /// Starts host-wide `blockprobe trace` ([`trace_command`] with no pid) and waits for
    /// its `ready` event: its probes are attached.
    #[track_caller]
    pub fn spawn_trace_host(&self) -> Proc {
        let bp = self.spawn("blockprobe trace (host)", &mut trace_command(&[]));
        self.wait_for("blockprobe's `ready` event", || {
            bp.events().into_iter().find(|e| kind(e) == "ready")
        });
        bp
    }

    /// Runs sleep_in_coroutine.py (`script`, run by `py` on `python`, already READY)
    /// through the protocol while `bp` (`blockprobe trace`) traces it, lets it exit, and
    /// checks blockprobe's view of it: attached, its one stall besides any under way when
    /// blockprobe attached (see
    /// [`CtxRef::check_handler_sleep`]), detached at its exit.
    #[track_caller]
    pub fn drive_traced_sleep(&self, bp: &Proc, py: &Proc, python: &Python, script: &Path) {
        let pid = py.pid();
        let tids: Vec<u32> = py.script_state().loops.iter().map(|(_, t)| *t).collect();
        self.wait_loops_live(bp, pid, &tids);
        let go = unix_now_ns();
        py.send("GO");
        let state = self.wait_finished(py);
        self.wait_stalls(bp, pid, 1);
        // The stall is over by now: blockprobe reports it when the loop is back.
        let seen = unix_now_ns();
        self.quit_script(py);
        let detached = self.wait_event(bp, "detached", pid);
        self.ensure(detached["reason"] == "exit", || {
            format!("expected a detached event with reason \"exit\", got {detached}")
        });
        self.ensure(!bp.events_of("attached", pid).is_empty(), || {
            format!("no `attached` event for pid {pid}")
        });
        // A stall under way when the tracer attached (the script was busy) is the
        // caller's to check.
        let stalls: Vec<Stall> = (bp.stalls(pid).into_iter())
            .filter(|s| !s.started_before_tracing)
            .collect();
        self.ensure(stalls.len() == 1, || {
            format!("expected exactly one stall for pid {pid}, got {stalls:#?}")
        });
        self.check_handler_sleep(
            &stalls[0],
            script,
            python.sleep_syscall(),
            &state,
            (go, seen),
        );
    }

    /// Stops `blockprobe trace` with SIGINT (unless it already stopped by itself) and
    /// checks it exits 0 with clean output.
    #[track_caller]
    pub fn stop_trace(&self, bp: &Proc) {
        self.stop_trace_with(bp, Signal::SIGINT);
    }

    /// [`CtxRef::stop_trace`] with `signal` (SIGINT or SIGTERM: both end tracing cleanly).
    #[track_caller]
    pub fn stop_trace_with(&self, bp: &Proc, signal: Signal) {
        bp.may_exit();
        if bp.exited().is_none() {
            bp.signal(signal);
        }
        let status = bp.wait_exit();
        self.check_clean(bp);
        self.ensure(status.code() == Some(0), || {
            format!("blockprobe trace stopped by {signal} with {status}, expected exit code 0")
        });
    }

    /// Ends a script the test started itself (traced with `trace`): sends QUIT, closes
    /// its stdin and fails unless it exits 0.
    #[track_caller]
    pub fn quit_script(&self, script: &Proc) {
        script.send("QUIT");
        script.close_stdin();
        let status = script.wait_exit();
        self.ensure(status.success(), || {
            format!("the script exited with {status}")
        });
    }

    /// Ends a `blockprobe run` whose script waits for QUIT: sends QUIT, closes stdin,
    /// waits for blockprobe to exit and checks its output ([`CtxRef::check_clean`]).
    #[track_caller]
    pub fn quit(&self, bp: &Proc) -> ExitStatus {
        let status = self.quit_counting_losses(bp);
        self.check_clean(bp);
        status
    }

    /// [`CtxRef::quit`] for a load test: blockprobe may have lost events, as long as it
    /// counted them; checks [`CtxRef::check_whole`] only.
    #[track_caller]
    pub fn quit_counting_losses(&self, bp: &Proc) -> ExitStatus {
        bp.send("QUIT");
        bp.close_stdin();
        let status = bp.wait_exit();
        self.check_whole(bp);
        status
    }

    /// [`CtxRef::quit`], and fails unless blockprobe exited 0 (`why`: what a 0 says).
    #[track_caller]
    pub fn quit_ok(&self, bp: &Proc, why: &str) {
        let status = self.quit(bp);
        self.ensure(status.code() == Some(0), || {
            format!("blockprobe run exited with {status}, expected 0{why}")
        });
    }

    /// Waits until blockprobe reported at least `count` stalls for `pid`.
    #[track_caller]
    pub fn wait_stalls(&self, bp: &Proc, pid: u32, count: usize) -> Vec<Stall> {
        let what = format!("{count} stall event(s) for pid {pid}");
        self.wait_for(&what, || {
            let stalls = bp.stalls(pid);
            (stalls.len() >= count).then_some(stalls)
        })
    }

    /// Waits until blockprobe reported at least `count` stalls for `pid`, or fewer and
    /// counted the others as lost ([`Proc::lost`] `ringbuf_stall`, which names no pid: the
    /// test must trace only the processes it counts): every stall reported or counted.
    #[track_caller]
    pub fn wait_stalls_or_lost(&self, bp: &Proc, pid: u32, count: usize) -> Vec<Stall> {
        let what = format!("{count} stall event(s) for pid {pid}, or `lost` counts for them");
        self.wait_for(&what, || {
            let stalls = bp.stalls(pid);
            let lost = usize::try_from(bp.lost("ringbuf_stall")).unwrap_or(usize::MAX);
            (stalls.len().saturating_add(lost) >= count).then_some(stalls)
        })
    }

    /// Waits until blockprobe reported `event` (e.g. `attached`, `detached`) for `pid`.
    #[track_caller]
    pub fn wait_event(&self, bp: &Proc, event: &str, pid: u32) -> Value {
        let what = format!("a `{event}` event for pid {pid}");
        self.wait_for(&what, || bp.events_of(event, pid).into_iter().next())
    }

    // -------------------------------------------------------------- common assertions

    /// What every test demands of blockprobe's output: [`CtxRef::check_whole`], and no
    /// lost events (nothing but the load tests is busy enough to excuse losing any).
    #[track_caller]
    pub fn check_clean(&self, bp: &Proc) {
        self.check_whole(bp);
        let lost: Vec<Value> = bp
            .events()
            .into_iter()
            .filter(|e| kind(e) == "lost")
            .collect();
        self.ensure(lost.is_empty(), || {
            format!("blockprobe lost events: {lost:?}")
        });
    }

    /// What even a load test demands of blockprobe's output: whole lines, no panic.
    #[track_caller]
    pub fn check_whole(&self, bp: &Proc) {
        let garbled = bp.garbled();
        self.ensure(garbled.is_empty(), || {
            format!(
                "{} stdout line(s) are not whole (each JSONL line must be one write(2), or \
                 it mixes with the traced program's output): {garbled:?}",
                garbled.len()
            )
        });
        self.ensure(!bp.stderr().contains("panicked"), || {
            "blockprobe panicked".into()
        });
    }

    /// What the script behind `state` measured for `name` (its `DONE <name>` line); a
    /// failure when it printed none.
    #[track_caller]
    pub fn measured(&self, state: &ScriptState, name: &str) -> u64 {
        (state.measured(name))
            .unwrap_or_else(|| self.fail(format!("the script printed no `DONE {name}` line")))
    }

    /// Checks that `stall` is the one of sleep_in_coroutine.py (at `script`): `handler`
    /// sleeping 200 ms through `syscall`, as the script measured it (`state`), within
    /// `window_unix_ns`.
    #[track_caller]
    pub fn check_handler_sleep(
        &self,
        stall: &Stall,
        script: &Path,
        syscall: &str,
        state: &ScriptState,
        window_unix_ns: (u64, u64),
    ) {
        self.check_stall(
            stall,
            &ExpectStall {
                script,
                function: "handler",
                cause: "sleep",
                syscall,
                measured_ns: self.measured(state, "handler"),
                nominal: Duration::from_millis(200),
                window_unix_ns: Some(window_unix_ns),
            },
        );
    }

    /// Checks one stall against what the script measured and where it blocked.
    #[track_caller]
    pub fn check_stall(&self, stall: &Stall, expect: &ExpectStall<'_>) {
        let measured = expect.measured_ns;
        let low = measured.saturating_sub(nanos(BELOW));
        let high = measured + nanos(ABOVE) + stall.runqueue_ns() + self.stolen_ns();
        self.ensure((low..=high).contains(&stall.duration_ns), || {
            format!(
                "stall lasted {} ns; the script measured {measured} ns for `{}`, so it \
                     must be within [{low}, {high}] ns: {stall:#?}",
                stall.duration_ns, expect.function
            )
        });
        self.ensure(stall.cause == expect.cause, || {
            format!(
                "stall cause is {:?}, expected {:?}: {stall:#?}",
                stall.cause, expect.cause
            )
        });
        self.ensure(stall.syscall.as_deref() == Some(expect.syscall), || {
            format!(
                "stall syscall is {:?}, expected {:?}: {stall:#?}",
                stall.syscall, expect.syscall
            )
        });
        // The time blocked for the cause: the largest share, and about what the script
        // asked for (see CAUSE_SLACK).
        let blocked = stall.causes.get(expect.cause).copied().unwrap_or(0);
        let nominal = nanos(expect.nominal);
        let largest = stall.causes.values().copied().max().unwrap_or(0);
        self.ensure(
            blocked + nanos(CAUSE_SLACK) >= nominal
                && blocked <= stall.duration_ns
                && blocked == largest,
            || {
                format!(
                    "causes[{:?}] is {blocked} ns; expected the largest share, at least the \
                     requested {nominal} ns (- {} ns) and at most the stall's {} ns: {stall:#?}",
                    expect.cause,
                    nanos(CAUSE_SLACK),
                    stall.duration_ns
                )
            },
        );
        let culprit = Frame::new(
            expect.function,
            expect.script,
            marker_line(expect.script, &format!("BLOCK {}", expect.function)),
        );
        self.ensure(stall.culprit.as_ref() == Some(&culprit), || {
            format!(
                "culprit is {:?}, expected {culprit:?}: {stall:#?}",
                stall.culprit
            )
        });
        // The blocking call is a C function: the innermost Python frame is the culprit's.
        self.ensure(stall.stack.first() == Some(&culprit), || {
            format!("innermost frame is not {culprit:?}: {stall:#?}")
        });
        if let Some((after, before)) = expect.window_unix_ns {
            let slack = nanos(WALL_SLACK);
            let end = stall.start_unix_ns + stall.duration_ns;
            self.ensure(
                stall.start_unix_ns + slack >= after && end <= before + slack,
                || {
                    format!(
                        "stall [{}, {end}] (Unix ns) is not within the window in which it \
                         happened, [{after}, {before}] (± {slack} ns): {stall:#?}",
                        stall.start_unix_ns
                    )
                },
            );
        }
    }

    /// Checks what the stall's blocking syscall waited on (`None`: it takes no fd).
    #[track_caller]
    pub fn check_fd_kind(&self, stall: &Stall, expected: Option<&str>) {
        self.ensure(stall.fd_kind.as_deref() == expected, || {
            format!(
                "fd_kind is {:?}, expected {expected:?}: {stall:#?}",
                stall.fd_kind
            )
        });
    }

    /// Checks that `stack` holds `expected` frames (function, marker of its line)
    /// contiguously from its innermost frame on.
    #[track_caller]
    pub fn check_stack_prefix(&self, stall: &Stall, script: &Path, expected: &[(&str, &str)]) {
        let want: Vec<Frame> = expected
            .iter()
            .map(|(function, marker)| Frame::new(function, script, marker_line(script, marker)))
            .collect();
        self.ensure(stall.stack.starts_with(&want), || {
            format!("stack does not start with {want:#?}: {stall:#?}")
        });
    }
}

/// What a stall should look like, from the script's point of view.
pub struct ExpectStall<'a> {
    pub script: &'a Path,
    /// The culprit function; its blocking call is the line marked `# BLOCK <function>`.
    pub function: &'a str,
    pub cause: &'a str,
    pub syscall: &'a str,
    /// What the script measured (its `DONE` line).
    pub measured_ns: u64,
    /// What the script asked for: the sleep's length, or the server's delay.
    pub nominal: Duration,
    /// Unix-ns bounds the stall must lie within: sending `GO` .. reading its event (not
    /// `FINISHED`, which the script prints before its loop is back in the poller).
    pub window_unix_ns: Option<(u64, u64)>,
}

pub fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).expect("fits u64")
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

// ------------------------------------------------------------------ scenarios under `run`

/// A scenario script run under `blockprobe run`, driven through the whole protocol.
pub struct Scenario<'a> {
    pub python: &'a Python,
    /// File name in `tests/scripts`.
    pub script: &'a str,
    pub script_args: &'a [&'a str],
    /// More blockprobe options (after `run --format jsonl --threshold 10ms`).
    pub blockprobe_args: &'a [&'a str],
    /// How many stalls to wait for before letting the script exit.
    pub stalls: usize,
}

/// A scenario that ran to the end: blockprobe and the script have exited.
pub struct Ran {
    pub ctx: Ctx,
    pub bp: Proc,
    pub script: PathBuf,
    pub pid: u32,
    /// The script's final state: its loops and its measurements.
    pub state: ScriptState,
    pub status: ExitStatus,
    /// Unix ns when the test sent `GO`, and when it had read the stalls it waited for.
    pub window_unix_ns: (u64, u64),
    /// blockprobe's peak resident set size ([`peak_rss_kib`]) once the stalls were in.
    pub bp_peak_rss_kib: u64,
}

impl Ran {
    /// blockprobe's stalls for the script's process (all of them: it has exited).
    pub fn stalls(&self) -> Vec<Stall> {
        self.bp.stalls(self.pid)
    }

    /// What the script measured for `name`.
    #[track_caller]
    pub fn measured(&self, name: &str) -> u64 {
        self.state.measured(name).unwrap_or_else(|| {
            self.ctx
                .fail(format!("the script printed no `DONE {name}` line"))
        })
    }

    /// The one stall of the run: fails unless there is exactly one for the script.
    #[track_caller]
    pub fn only_stall(&self) -> Stall {
        let stalls = self.stalls();
        self.ctx.ensure(stalls.len() == 1, || {
            format!(
                "expected exactly one stall for pid {}, got {stalls:#?}",
                self.pid
            )
        });
        stalls.into_iter().next().expect("one stall")
    }

    /// Fails unless blockprobe exited 0 having reported exactly one stall, a
    /// `time.sleep` of `nominal` in `function` under `python` ([`Ran::check_stall`]).
    #[track_caller]
    pub fn only_sleep_stall(&self, python: &Python, function: &str, nominal: Duration) -> Stall {
        self.expect_success();
        let stall = self.only_stall();
        self.check_stall(&stall, function, "sleep", python.sleep_syscall(), nominal);
        stall
    }

    /// Checks a stall against the script's measurement of `function`, its `# BLOCK`
    /// line, the blocking time the script asked for (`nominal`), and the time window of
    /// the scenario.
    #[track_caller]
    pub fn check_stall(
        &self,
        stall: &Stall,
        function: &str,
        cause: &str,
        syscall: &str,
        nominal: Duration,
    ) {
        self.ctx.check_stall(
            stall,
            &ExpectStall {
                script: &self.script,
                function,
                cause,
                syscall,
                measured_ns: self.measured(function),
                nominal,
                window_unix_ns: Some(self.window_unix_ns),
            },
        );
    }

    /// Fails unless blockprobe exited 0 (what the script returned).
    #[track_caller]
    pub fn expect_success(&self) {
        self.ctx.ensure(self.status.code() == Some(0), || {
            format!("blockprobe run exited with {}, expected 0", self.status)
        });
    }
}

/// The command line of `blockprobe trace` with JSON lines and the tests' threshold, on
/// `pids` (none: every Python process on the host).
pub fn trace_command(pids: &[u32]) -> Command {
    let mut cmd = Command::new(blockprobe_bin());
    cmd.args(["trace", "--format", "jsonl", "--threshold", THRESHOLD]);
    for pid in pids {
        cmd.arg("-p").arg(pid.to_string());
    }
    cmd
}

/// The command line of `blockprobe run` for a scenario (with the tests' threshold unless
/// `opts` sets one), for a test about a steady state: the script waits for `GO`
/// (`BPTEST_GO=1`).
pub fn run_command(python: &Python, script: &Path, script_args: &[&str], opts: &[&str]) -> Command {
    let mut cmd = run_command_at_once(python, script, script_args, opts);
    cmd.env("BPTEST_GO", "1");
    cmd
}

/// [`run_command`] for a script that runs its scenario at once, without waiting for the
/// tracer.
pub fn run_command_at_once(
    python: &Python,
    script: &Path,
    script_args: &[&str],
    opts: &[&str],
) -> Command {
    let mut cmd = Command::new(blockprobe_bin());
    cmd.args(["run", "--format", "jsonl"]);
    if !opts.contains(&"--threshold") {
        cmd.args(["--threshold", THRESHOLD]);
    }
    cmd.args(opts)
        .arg("--")
        .arg(&python.path)
        .arg(script)
        .args(script_args);
    python_env(&mut cmd);
    cmd.envs(python.env.iter().map(|(k, v)| (k, v)));
    cmd
}

/// Runs a scenario under `blockprobe run`, the script running it at once: waits for the
/// script's READY and blockprobe's `loop` events, for FINISHED and the expected stalls,
/// sends QUIT, and waits for blockprobe to exit. Checks [`CtxRef::check_clean`].
#[track_caller]
pub fn run_scenario(scenario: &Scenario<'_>) -> Ran {
    drive(scenario, Losses::Forbidden)
}

/// Runs a scenario whose one stall is a `time.sleep` of `nominal` in `function` (its
/// `# BLOCK function` line) with [`run_scenario`], and fails unless blockprobe exited 0
/// having reported exactly that stall ([`Ran::check_stall`]). Returns the run and the
/// stall, for more checks.
#[track_caller]
pub fn run_sleep_scenario(
    scenario: &Scenario<'_>,
    function: &str,
    nominal: Duration,
) -> (Ran, Stall) {
    let ran = run_scenario(scenario);
    let stall = ran.only_sleep_stall(scenario.python, function, nominal);
    (ran, stall)
}

/// [`run_scenario`] for a load test, where the machine may not keep up: blockprobe may
/// lose events as long as it counts them. Waits until each expected stall is reported or
/// counted as lost (`ringbuf_stall`), and checks [`CtxRef::check_whole`].
#[track_caller]
pub fn run_load_scenario(scenario: &Scenario<'_>) -> Ran {
    drive(scenario, Losses::Counted)
}

/// Whether a test allows blockprobe to lose (and count) events.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Losses {
    Forbidden,
    Counted,
}

#[track_caller]
fn drive(scenario: &Scenario<'_>, losses: Losses) -> Ran {
    require_root();
    let mut cmd = run_command_at_once(
        scenario.python,
        &script(scenario.script),
        scenario.script_args,
        scenario.blockprobe_args,
    );
    drive_command(
        scenario.python,
        scenario.script,
        &mut cmd,
        scenario.stalls,
        losses,
        |_, _| {},
    )
}

/// Starts `cmd` (a `blockprobe run` of tests/scripts/`name`, see [`run_command`]) and
/// takes it through the protocol of [`run_scenario`].
#[track_caller]
pub fn drive_scenario(python: &Python, name: &str, cmd: &mut Command, stalls: usize) -> Ran {
    drive_command(python, name, cmd, stalls, Losses::Forbidden, |_, _| {})
}

/// [`drive_scenario`] for a script with steps of its own before its READY: `prelude`
/// takes it through them.
#[track_caller]
pub fn drive_scenario_after(
    python: &Python,
    name: &str,
    cmd: &mut Command,
    stalls: usize,
    prelude: impl FnOnce(&CtxRef, &Proc),
) -> Ran {
    drive_command(python, name, cmd, stalls, Losses::Forbidden, prelude)
}

#[track_caller]
fn drive_command(
    python: &Python,
    name: &str,
    cmd: &mut Command,
    stalls: usize,
    losses: Losses,
    prelude: impl FnOnce(&CtxRef, &Proc),
) -> Ran {
    let ctx = Ctx::new();
    let script = script(name);
    let go = unix_now_ns();
    let steady = cmd.get_envs().any(|(k, v)| k == "BPTEST_GO" && v.is_some());
    let bp = ctx.spawn(&format!("blockprobe run {name} ({})", python.label), cmd);
    prelude(&ctx, &bp);
    let (_, pid) = ctx.wait_live(&bp, name);
    let go = if steady {
        let go = unix_now_ns();
        bp.send("GO");
        go
    } else {
        go
    };
    let _ = ctx.wait_finished(&bp);
    match losses {
        Losses::Forbidden => drop(ctx.wait_stalls(&bp, pid, stalls)),
        Losses::Counted => drop(ctx.wait_stalls_or_lost(&bp, pid, stalls)),
    }
    // The stalls are over by now: blockprobe reports a stall when the loop is back.
    let seen = unix_now_ns();
    let bp_peak_rss_kib = peak_rss_kib(bp.pid());
    let status = match losses {
        Losses::Forbidden => ctx.quit(&bp),
        Losses::Counted => ctx.quit_counting_losses(&bp),
    };
    let state = bp.script_state();
    Ran {
        ctx,
        bp,
        script,
        pid,
        state,
        status,
        window_unix_ns: (go, seen),
        bp_peak_rss_kib,
    }
}

/// The peak resident set size (`VmHWM`) of process `pid` so far, in KiB; `u64::MAX` when
/// it cannot be read (so that any bound on it fails).
pub fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(u64::MAX)
}

/// Reads and parses a JSON file blockprobe wrote.
#[track_caller]
pub fn read_json(ctx: &CtxRef, path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|err| ctx.fail(format!("cannot read {}: {err}", path.display())));
    serde_json::from_str(&text)
        .unwrap_or_else(|err| ctx.fail(format!("{} is not JSON ({err}): {text}", path.display())))
}

/// Runs `blockprobe ARGS` to completion (bounded by [`TIMEOUT`]) and returns its exit
/// status, stdout and stderr.
#[track_caller]
pub fn run_blockprobe(ctx: &CtxRef, name: &str, args: &[&str]) -> (ExitStatus, String, String) {
    let proc = ctx.spawn(name, Command::new(blockprobe_bin()).args(args));
    proc.close_stdin();
    let status = proc.wait_exit();
    let stdout = proc
        .lines()
        .iter()
        .map(|line| match line {
            Line::Event(_, text) | Line::Garbled(text) | Line::Text(text) => text.clone(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    (status, stdout, proc.stderr())
}

// ------------------------------------------------------------------ privileges

/// What `setpriv` options make of blockprobe's privileges: another user (nobody) and the
/// capabilities it keeps or loses across the exec.
pub const AS_NOBODY: &[&str] = &["--reuid=65534", "--regid=65534", "--clear-groups"];

/// Starts `blockprobe ARGS` through `setpriv SETPRIV… --`, from a copy of the binary any
/// user may run (the build's directory may be private), in a temporary directory that
/// must live as long as the process.
pub fn spawn_privileged<'a>(
    ctx: &CtxRef,
    name: &str,
    setpriv: &[&str],
    args: impl IntoIterator<Item = &'a std::ffi::OsStr>,
) -> (tempfile::TempDir, Proc) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let bin = dir.path().join("blockprobe");
    let copied = std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .and_then(|()| std::fs::copy(blockprobe_bin(), &bin))
        .and_then(|_| std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)));
    if let Err(err) = copied {
        ctx.fail(format!(
            "cannot copy blockprobe to {}: {err}",
            bin.display()
        ));
    }
    let bp = ctx.spawn(
        name,
        Command::new("setpriv")
            .args(setpriv)
            .arg("--")
            .arg(&bin)
            .args(args),
    );
    (dir, bp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_matrix_tests_are_those_of_the_interpreter_list() {
        let ids: Vec<&str> = MATRIX.iter().map(|i| i.id).collect();
        assert_eq!(MATRIX_TEST_IDS, ids);
    }

    #[test]
    fn classifies_lines() {
        assert!(matches!(
            Line::classify(r#"{"event":"loop","pid":1,"tid":1}"#.into()),
            Line::Event(..)
        ));
        assert!(matches!(
            Line::classify(r#"{"event":"stall","pid":1"#.into()),
            Line::Garbled(_)
        ));
        assert!(matches!(
            Line::classify(r#"DONE handler 1{"event":"stall"}"#.into()),
            Line::Garbled(_)
        ));
        assert!(matches!(Line::classify("READY 12".into()), Line::Text(_)));
    }

    #[test]
    fn parses_the_script_protocol() {
        let state = ScriptState::parse([
            "LOOP worker 11",
            "LOOP main 10",
            "READY 10",
            "DONE handler 200000000",
            "something else",
            "FINISHED",
        ]);
        assert_eq!(state.pid, Some(10));
        assert_eq!(state.loop_tid("worker"), Some(11));
        assert_eq!(state.loop_tid("main"), Some(10));
        assert_eq!(state.measured("handler"), Some(200_000_000));
        assert!(state.finished);
    }

    #[test]
    fn finds_marker_lines() {
        let script = script("sleep_in_coroutine.py");
        let line = marker_line(&script, "BLOCK handler");
        let text = std::fs::read_to_string(&script).unwrap();
        let at = text.lines().nth(line as usize - 1).unwrap();
        assert!(at.contains("time.sleep(0.2)"), "{at}");
    }

    #[test]
    fn parses_a_stall_event() {
        let event = r#"{"event":"stall","pid":1,"tid":1,"comm":"python3.11","start_unix_ns":5,
            "duration_ns":200,"cause":"sleep","syscall":"clock_nanosleep","causes":{"sleep":190},
            "stack":[{"function":"handler","file":"/x.py","line":9}],
            "culprit":{"function":"handler","file":"/x.py","line":9}}"#;
        let stall: Stall = serde_json::from_str(event).unwrap();
        assert_eq!(
            stall.culprit,
            Some(Frame::new("handler", Path::new("/x.py"), 9))
        );
        assert_eq!(stall.causes["sleep"], 190);
    }
}
