//! A tracing session: attaches to Python processes, turns kernel events into stalls,
//! and feeds them to the live output and the aggregate report.
//!
//! Its length: every handler of the event pump reads and writes the one [`Session`]
//! state, so they stand together; attaching to a process (from `attach` to
//! `attach_quietly`) is the part that could stand in a module of its own.

use std::{
    collections::{HashMap, HashSet, hash_map::Entry},
    os::unix::fs::MetadataExt as _,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use blockprobe_common::{
    event::poll_origin,
    stack::{RawStack, flags as stack_flags},
};
use tokio::io::unix::AsyncFd;

use self::losses::{Losses, UNDECODABLE_EVENT, UNREADABLE_FRAME};
use crate::{
    aggregate::Aggregator,
    attribution::{Attributor, BlockedCall, CpuSample, GilWait, StallWindow},
    classify,
    clock::Clock,
    deadline,
    events::{self, Event},
    host::{self, IdentityOptions},
    model::{Cause, FdKind, Frame, ShortCalls, Stall, UNREADABLE},
    namespaces,
    patience::{ATTACH_PATIENCE, FIRST_RETRY, Patience},
    probes::Probes,
    proc_stat,
    python::{Inspection, PythonProcess, memory::ProcessMemory, running_loop, uvloop},
    report::ProcessInfo,
    session::sink::{DetachReason, StallSink, Status},
    thread_now,
};

mod at_attach;
mod losses;
pub mod sink;
mod stuck;
mod unwatched;

/// A Python process not traceable yet (its runtime is still initializing).
struct Starting {
    /// Why it is not traceable yet.
    why: String,
    /// When to try again, and when to give up.
    patience: Patience,
    /// Its threads the kernel side times since a poll announced the process: their
    /// iteration under way is a stall once the process is traced, and their timing
    /// stops if it never is.
    timed: Vec<u32>,
}

/// Under load, how long events gather in the ring buffer after a read before the next
/// one: the tracer wakes up at most once per interval, not once per event (a wake-up
/// costs more than handling the event). The live output lags by at most this much; the
/// ring holds far more than one interval's events even in a stall storm, and any that do
/// not fit are counted as lost.
const READ_BATCH: Duration = Duration::from_millis(50);
/// Events per counter interval from which the tracer batches its reads. Below it, each
/// event is handled as it comes: its stack is symbolized while the process still lives
/// (a process that stalls and exits at once would leave only `<unreadable>` frames).
const BUSY_EVENTS: u64 = 50;
/// How often the kernel-side loss counters are read.
const COUNTER_INTERVAL: Duration = Duration::from_secs(1);
/// How often traced processes are checked to still be there: their exit is normally
/// told by the kernel side, but that event may be lost (counted) when its buffer is full.
const SWEEP_INTERVAL: Duration = Duration::from_secs(10);
/// How often a loop found stuck as tracing began is looked at until it is said stuck.
const STUCK_CHECK: Duration = Duration::from_millis(100);

/// A Python process being traced.
struct Traced {
    python: PythonProcess,
    /// When it started: a later process on its pid is another one.
    start_time: Option<u64>,
    comm: String,
    /// Its pid in its own pid namespace, when not the host's.
    ns_pid: Option<u32>,
    /// Where libuv's `uv_run` lies in each uvloop module it has mapped (found at attach
    /// or at a later poll).
    uv_runs: Vec<std::ops::Range<u64>>,
}

/// What happened when blockprobe tried to attach to a process.
pub enum Attach {
    /// Now traced.
    Attached,
    /// Not a Python process.
    NotPython,
    /// Python, but not ready to be traced yet; retried on ticks.
    Waiting,
}

/// Why the event loop of a session ended.
pub enum StopReason {
    /// `--duration` elapsed.
    Duration,
    /// SIGINT or SIGTERM, with the signal number.
    Signal(i32),
    /// The command of `blockprobe run` exited, with its wait status.
    ChildExited(std::process::ExitStatus),
}

/// A running session.
pub struct Session {
    probes: Probes,
    /// How traced processes are labelled.
    identity: IdentityOptions,
    processes: HashMap<u32, Traced>,
    /// Python processes not ready to trace yet: since when, and why.
    starting: HashMap<u32, Starting>,
    given_up: HashSet<u32>,
    attributor: Attributor,
    aggregator: Aggregator,
    sink: Box<dyn StallSink + Send>,
    clock: Clock,
    losses: Losses,
    /// Whether an undecodable event was already shown with its error.
    undecodable_shown: bool,
    last_counter_read: Instant,
    last_sweep: Instant,
    last_tick: tokio::time::Instant,
    own_pid: u32,
    /// Each loop thread's `PyThreadState` address, with its pid, by tid: to walk the
    /// stack of a loop still stuck when tracing stops.
    loop_tstates: HashMap<u32, (u32, u64)>,
    /// The live loop threads (sampled, shown in the metrics), by tid, with their pid.
    /// A thread leaves when it or its process is gone, or its process exec'd.
    loop_threads: HashMap<u32, u32>,
    /// Frames of reported stalls that could not be read so far (reported with the loss
    /// counters).
    unreadable_frames: u64,
    /// When each stuck loop was last said to be stuck.
    notices: stuck::Notices,
    /// Loop threads found stuck as tracing of their process began, by tid: their pid
    /// and the monotonic time their iteration is timed from (a lower bound of its start).
    stuck_at_attach: HashMap<u32, (u32, u64)>,
    /// Processes that poll without a loop found in them.
    unwatched: unwatched::Unwatched,
    /// Events read since the loss counters were last read (once a second).
    events_this_interval: u64,
    /// Host tids of the threads of namespaced processes (GIL holders).
    host_tids: namespaces::HostTids,
    /// Files (device, inode) already searched for asyncio's `_set_running_loop`.
    asyncio_files: HashSet<(u64, u64)>,
    /// What each polling thread was last found to be, by tid: the kernel side times a
    /// polling thread before it is classified, and only a loop's reports are kept.
    verdicts: HashMap<u32, Verdict>,
}

/// What a polling thread was found to be at its last classification.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Verdict {
    /// Its process.
    pid: u32,
    /// Whether it runs an event loop.
    is_loop: bool,
}

impl Session {
    /// A session over attached probes, reporting to `sink` and aggregating into
    /// `aggregator`, labelling the processes it traces as `identity` says.
    pub fn new(
        probes: Probes,
        sink: Box<dyn StallSink + Send>,
        aggregator: Aggregator,
        identity: IdentityOptions,
    ) -> Self {
        Session {
            probes,
            identity,
            processes: HashMap::new(),
            starting: HashMap::new(),
            given_up: HashSet::new(),
            attributor: Attributor::default(),
            aggregator,
            sink,
            clock: Clock::now(),
            losses: Losses::default(),
            undecodable_shown: false,
            last_counter_read: Instant::now(),
            last_sweep: Instant::now(),
            last_tick: tokio::time::Instant::now(),
            loop_tstates: HashMap::new(),
            loop_threads: HashMap::new(),
            unreadable_frames: 0,
            notices: stuck::Notices::default(),
            stuck_at_attach: HashMap::new(),
            unwatched: unwatched::Unwatched::default(),
            events_this_interval: 0,
            host_tids: namespaces::HostTids::default(),
            verdicts: HashMap::new(),
            asyncio_files: HashSet::new(),
            own_pid: std::process::id(),
        }
    }

    /// The probes, e.g. to add the `run` command to the family.
    pub fn probes_mut(&mut self) -> &mut Probes {
        &mut self.probes
    }

    /// Tries to trace `pid`: Python processes are attached (or retried while starting).
    pub fn attach(&mut self, pid: u32) -> anyhow::Result<Attach> {
        if pid == self.own_pid {
            return Ok(Attach::Attached);
        }
        if self.processes.contains_key(&pid) {
            match self.departure(pid) {
                None => return Ok(Attach::Attached),
                // Its exit or exec event was lost: this is a new process or image.
                Some(reason) => self.process_gone(pid, reason)?,
            }
        }
        let inspected = match PythonProcess::inspect(pid) {
            // Other processes' reads are hung, not this one's: a Python is tried again.
            Err(e) if e.is::<deadline::Refused>() && looks_like_python(pid) => {
                Inspection::NotReady(format!("{e:#}"))
            }
            inspected => inspected?,
        };
        match inspected {
            Inspection::NotPython => {
                self.give_up_starting(pid);
                Ok(Attach::NotPython)
            }
            Inspection::NotReady(why) => {
                let count = self.starting.len() + usize::from(!self.starting.contains_key(&pid));
                match self.starting.entry(pid) {
                    Entry::Occupied(mut starting) => {
                        let starting = starting.get_mut();
                        starting.why = why;
                        starting.patience.failed_again(count);
                    }
                    Entry::Vacant(vacant) => {
                        vacant.insert(Starting {
                            why,
                            patience: Patience::new(pid, count),
                            timed: Vec::new(),
                        });
                    }
                }
                Ok(Attach::Waiting)
            }
            Inspection::Ready(python) => self.trace_ready(pid, python).map(|()| Attach::Attached),
        }
    }

    /// Traces `pid`, which `python` describes (an inspection that found it ready).
    pub fn trace_ready(&mut self, pid: u32, python: PythonProcess) -> anyhow::Result<()> {
        self.starting.remove(&pid);
        // The recipe first, and the timing and sampling of polling threads: the first
        // iteration of a loop that started meanwhile is timed already, and is a stall
        // only if it ends after the kernel side can walk its stack (what follows takes
        // tens of milliseconds, more on a busy host).
        self.probes.trace_process(pid, python.walk_config())?;
        self.time_threads_at_attach(pid)?;
        let comm = host::comm(pid);
        let version = python.version().to_string();
        let ns_pid = namespaces::ns_pid(pid);
        self.aggregator.register_process(ProcessInfo {
            ns_pid,
            ..host::process_info(&self.identity, pid, comm.clone(), version.clone())
        });
        self.processes.insert(
            pid,
            Traced {
                python,
                start_time: proc_stat::start_time(pid),
                comm: comm.clone(),
                ns_pid,
                uv_runs: Vec::new(),
            },
        );
        // A loop that stops before these probes are in place stays off-await until its
        // next poll, as one timed since the poll that announced its process does: a
        // short window, against a first iteration lost while they attach.
        self.probe_running_loop_set(pid)?;
        self.probe_importable_uvloop(pid)?;
        self.probe_mapped_uvloop(pid)?;
        // Said once everything is in place: what the process does from now on is seen.
        self.sink.status(&Status::Attached {
            pid,
            ns_pid,
            comm,
            python_version: version,
        })?;
        self.find_running_loops(pid)
    }

    /// Times the threads of newly traced process `pid` that are parked in a poll call
    /// (an idle loop waits there for its next iteration, which may be a stall), and
    /// samples those the kernel side times already since a poll announced the process
    /// (a first iteration under way may be CPU-bound: its samples name the culprit).
    fn time_threads_at_attach(&mut self, pid: u32) -> anyhow::Result<()> {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return Ok(());
        };
        for task in tasks.flatten() {
            let Some(tid) = task
                .file_name()
                .to_str()
                .and_then(|t| t.parse::<u32>().ok())
            else {
                continue;
            };
            if thread_now::polled_fd(pid, tid).is_some() {
                self.probes.time_parked_thread(tid)?;
            } else if self.probes.loop_timing(tid).is_some() {
                self.sample(pid, tid)?;
            }
        }
        Ok(())
    }

    /// Probes asyncio's `_set_running_loop` in the files of traced process `pid` that may
    /// hold it (each file once): an asyncio loop's off-await time then ends when the loop
    /// stops running. A file that holds `_asyncio` but whose function cannot be found or
    /// probed is a warning: its loops' time between two runs counts until their next poll.
    fn probe_running_loop_set(&mut self, pid: u32) -> anyhow::Result<()> {
        let Some(traced) = self.processes.get(&pid) else {
            return Ok(());
        };
        let python = &traced.python;
        for path in running_loop::candidate_files(pid, python.binary_path(), python.version()) {
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if !self.asyncio_files.insert((meta.dev(), meta.ino())) {
                continue;
            }
            let probed = running_loop::file_offset(&path).and_then(|offset| match offset {
                Some(offset) => self.probes.probe_running_loop_set(&path, offset).map(Some),
                None => Ok(None),
            });
            if let Err(e) = probed {
                self.warn(format!(
                    "pid {pid}: asyncio loops stopped between runs count as blocked until their next poll: {e:#}"
                ))?;
            }
        }
        Ok(())
    }

    /// Probes the uvloop modules traced process `pid` may import, before it maps them: a
    /// loop imported after tracing started is seen from its first run's start.
    fn probe_importable_uvloop(&mut self, pid: u32) -> anyhow::Result<()> {
        let Some(traced) = self.processes.get(&pid) else {
            return Ok(());
        };
        let python = &traced.python;
        for path in uvloop::importable(pid, python.binary_path(), python.version()) {
            self.probe_loop_runs(pid, &path)?;
        }
        Ok(())
    }

    /// Probes the uvloop modules traced process `pid` has mapped, once it has any, and
    /// remembers where their `uv_run` lies.
    fn probe_mapped_uvloop(&mut self, pid: u32) -> anyhow::Result<()> {
        if !self
            .processes
            .get(&pid)
            .is_some_and(|t| t.uv_runs.is_empty())
        {
            return Ok(());
        }
        // A process that exited meanwhile has nothing to probe.
        let Ok(modules) = uvloop::mapped(pid) else {
            return Ok(());
        };
        for module in modules {
            self.probe_loop_runs(pid, &module.path)?;
            if let Some(traced) = self.processes.get_mut(&pid) {
                traced.uv_runs.push(module.run);
            }
        }
        Ok(())
    }

    /// Probes `uv_run` in uvloop module `path` of process `pid`; a failure is a warning.
    fn probe_loop_runs(&mut self, pid: u32, path: &std::path::Path) -> anyhow::Result<()> {
        if let Err(e) = self.probes.probe_loop_runs(path, uvloop::RUN_FUNCTION) {
            self.warn(format!(
                "pid {pid}: uvloop loops of {} are found only at their polls: {e:#}",
                path.display()
            ))?;
        }
        Ok(())
    }

    /// Whether the native stack of a thread of traced process `pid` at stack pointer `sp`
    /// runs a uvloop loop (`uv_run`).
    fn runs_uvloop(&self, pid: u32, sp: u64) -> bool {
        let Some(traced) = self.processes.get(&pid) else {
            return false;
        };
        let memory = ProcessMemory::new(pid);
        (traced.uv_runs.iter()).any(|run| uvloop::stack_runs(&memory, sp, run))
    }

    /// Attaches to every Python process already running on the host.
    pub fn attach_existing(&mut self) -> anyhow::Result<()> {
        for entry in std::fs::read_dir("/proc").context("listing /proc")? {
            let Some(pid) = entry?
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            self.attach_quietly(pid)?;
        }
        Ok(())
    }

    /// Attaches to `pid` if it is Python; an error becomes one warning, not a failure.
    fn attach_quietly(&mut self, pid: u32) -> anyhow::Result<()> {
        if let Err(e) = self.attach(pid) {
            self.give_up_starting(pid);
            // A process that exited meanwhile (a pyenv shim) or that does not even look
            // like Python (an init we may not read) is no news.
            if looks_like_python(pid) && self.given_up.insert(pid) {
                self.warn(format!("not tracing pid {pid}: {e:#}"))?;
            }
        }
        Ok(())
    }

    /// Runs until `stop` says so, reading events as they come.
    pub async fn run(
        &mut self,
        ring: RingBuf<MapData>,
        duration: Option<Duration>,
        mut child: Option<&mut tokio::process::Child>,
    ) -> anyhow::Result<StopReason> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
        let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
        let deadline = duration.map(|d| tokio::time::Instant::now() + d);
        // SAFETY: the AsyncFd owns the ring buffer, so its fd stays open while registered.
        let mut ring = unsafe { AsyncFd::register(ring) }
            .map_err(|e| anyhow::anyhow!("polling the BPF ring buffer: {e}"))?;
        // Every process asked for is attached: tell a supervisor listening on
        // $NOTIFY_SOCKET (systemd `Type=notify`, the benchmark) that tracing runs.
        if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
            self.warn(format!(
                "cannot notify $NOTIFY_SOCKET that tracing runs: {e}"
            ))?;
        }
        let mut next_read = tokio::time::Instant::now();
        let reason = loop {
            tokio::select! {
                ready = async {
                    tokio::time::sleep_until(next_read).await;
                    ring.readable_mut().await
                } => {
                    let mut guard = ready.context("waiting on the BPF ring buffer")?;
                    self.drain(guard.get_inner_mut())?;
                    guard.clear_ready();
                    if self.events_this_interval >= BUSY_EVENTS {
                        next_read = tokio::time::Instant::now() + READ_BATCH;
                    }
                }
                _ = sigint.recv() => break StopReason::Signal(libc::SIGINT),
                _ = sigterm.recv() => break StopReason::Signal(libc::SIGTERM),
                _ = sleep_until(deadline) => break StopReason::Duration,
                status = wait_child(&mut child) => break StopReason::ChildExited(status?),
                _ = tokio::time::sleep_until(self.last_tick + self.tick_interval()) => {
                    self.last_tick = tokio::time::Instant::now();
                    self.tick()?;
                }
            }
        };
        self.drain(ring.get_mut())?;
        self.report_ongoing()?;
        self.read_counters()?;
        Ok(reason)
    }

    /// The command name of traced process `pid`.
    fn comm(&self, pid: u32) -> String {
        self.processes
            .get(&pid)
            .map(|p| p.comm.clone())
            .unwrap_or_default()
    }

    /// The stall of `window`, from the evidence gathered inside it.
    ///
    /// Frames of its stack that could not be read are counted: evidence that never makes
    /// a stall (a sample of a process that exits at once) is not.
    fn close_stall(&mut self, window: StallWindow) -> Stall {
        let clock = self.clock;
        let stall = self.attributor.close(window, |t| clock.to_unix_ns(t));
        let unreadable = stall.stack.iter().filter(|f| f.function == UNREADABLE);
        self.unreadable_frames += unreadable.count() as u64;
        stall
    }

    /// Handles every event waiting in the ring buffer.
    fn drain(&mut self, ring: &mut RingBuf<MapData>) -> anyhow::Result<()> {
        while let Some(item) = ring.next() {
            self.events_this_interval += 1;
            match events::decode(&item) {
                Ok(event) => {
                    drop(item);
                    self.handle(event)?;
                }
                Err(e) => {
                    drop(item);
                    if !std::mem::replace(&mut self.undecodable_shown, true) {
                        self.warn(format!(
                            "dropped an undecodable event: {e:#}; such events are counted as lost ({UNDECODABLE_EVENT})"
                        ))?;
                    }
                    Losses::lost(UNDECODABLE_EVENT, 1, &mut self.aggregator, &mut self.sink)?;
                }
            }
        }
        Ok(())
    }

    /// Handles one kernel event.
    fn handle(&mut self, event: Event) -> anyhow::Result<()> {
        if let Some((pid, tid)) = event.loop_evidence()
            && !self.keeps_evidence(pid, tid)
        {
            return Ok(());
        }
        match event {
            Event::Candidate { pid, tid, by_poll } => self.candidate(pid, tid, by_poll)?,
            Event::ProcessGone { pid, exec } => {
                let reason = if exec {
                    DetachReason::Exec
                } else {
                    DetachReason::Exit
                };
                self.process_gone(pid, reason)?;
            }
            Event::PollStack {
                pid,
                tid,
                poll_fd,
                origin,
                user_sp,
                stack,
            } => self.poll_stack(pid, tid, poll_fd, origin, user_sp, &stack)?,
            Event::BlockedCall {
                pid,
                tid,
                nr,
                cause,
                start_ns,
                end_ns,
                fd_mode,
                short_calls,
                short_ns,
                stack,
            } => {
                let task = self.task_name(pid, &stack);
                let stack = self.symbolize(pid, &stack).unwrap_or_default();
                let call = BlockedCall {
                    task,
                    nr,
                    cause: Cause::from_index(cause),
                    start_ns,
                    end_ns,
                    fd_kind: FdKind::from_mode(fd_mode),
                    stack,
                    short: (short_calls != 0).then_some(ShortCalls {
                        calls: short_calls,
                        total_ns: short_ns,
                    }),
                };
                self.attributor.blocked_call(pid, tid, call);
            }
            Event::GilWait {
                pid,
                tid,
                start_ns,
                end_ns,
                holder_tid,
                holder_stack,
                own_stack,
            } => {
                let task = self.task_name(pid, &own_stack);
                let holder_stack = self.symbolize(pid, &holder_stack).unwrap_or_default();
                let own_stack = self.symbolize(pid, &own_stack).unwrap_or_default();
                // The interpreter records the holder's id in the process's namespace.
                let namespaced = self.processes.get(&pid).is_some_and(|p| p.ns_pid.is_some());
                let holder_tid = match holder_tid {
                    0 => None,
                    t if namespaced => self.host_tids.get(pid, t),
                    t => Some(t),
                };
                let wait = GilWait {
                    start_ns,
                    end_ns,
                    holder_tid,
                    holder_stack,
                    own_stack,
                    task,
                };
                self.attributor.gil_wait(pid, tid, wait);
            }
            Event::CpuSample {
                pid,
                tid,
                ts_ns,
                stack,
            } => {
                let task = self.task_name(pid, &stack);
                let stack = self.symbolize(pid, &stack).unwrap_or_default();
                let sample = CpuSample { ts_ns, stack, task };
                self.attributor.cpu_sample(pid, tid, sample);
            }
            Event::Stall {
                pid,
                tid,
                start_ns,
                end_ns,
                off_cpu_ns,
            } => {
                if !self.is_classified_loop(pid, tid) {
                    // Timed while userspace decided: not a loop after all.
                    self.attributor.forget_thread(tid);
                    return Ok(());
                }
                let mut stall = self.close_stall(StallWindow {
                    pid,
                    tid,
                    comm: self.comm(pid),
                    start_ns,
                    end_ns,
                    off_cpu_ns,
                });
                stall.started_before_tracing = self.started_before_tracing(tid, start_ns);
                self.sink.stall(&stall)?;
                self.aggregator.record(stall);
            }
        }
        Ok(())
    }

    /// Forgets process `pid`, which exited or exec'd; says so when it was traced.
    fn process_gone(&mut self, pid: u32, reason: DetachReason) -> anyhow::Result<()> {
        self.starting.remove(&pid);
        self.given_up.remove(&pid);
        self.loop_tstates.retain(|_, (p, _)| *p != pid);
        self.loop_threads.retain(|_, p| *p != pid);
        self.verdicts.retain(|_, v| v.pid != pid);
        self.stuck_at_attach.retain(|_, (p, _)| *p != pid);
        self.forget_unwatched(pid);
        self.attributor.forget_process(pid);
        self.host_tids.forget_process(pid);
        self.probes.forget_process(pid);
        if self.processes.remove(&pid).is_some() {
            self.sink.status(&Status::Detached { pid, reason })?;
        }
        Ok(())
    }

    /// Whether traced process `pid` has left without the kernel side's event saying so
    /// (lost when its buffer was full): the kernel no longer walks it, and it exited
    /// (its pid is gone, or another process's) or exec'd.
    fn departure(&self, pid: u32) -> Option<DetachReason> {
        let traced = self.processes.get(&pid)?;
        let same_process = proc_stat::start_time(pid) == traced.start_time;
        departure(
            same_process,
            self.probes.is_tracing(pid),
            // A zombie: exited, its exit event maybe still on its way.
            !proc_stat::thread_lives(pid, pid),
        )
    }

    /// Forgets the loop threads that exited (or are zombies): their sampler, evidence
    /// and thread state go, and the metrics stop counting them. Short-lived loop threads
    /// (a thread and a loop per call, as asgiref's `async_to_sync`) leave nothing behind.
    fn sweep_loop_threads(&mut self) -> anyhow::Result<()> {
        let gone: Vec<(u32, u32)> = (self.loop_threads.iter())
            .filter(|&(&tid, &pid)| !proc_stat::thread_lives(pid, tid))
            .map(|(&tid, &pid)| (tid, pid))
            .collect();
        for (tid, pid) in gone {
            self.loop_threads.remove(&tid);
            self.loop_tstates.remove(&tid);
            self.attributor.forget_thread(tid);
            self.probes.stop_sampling_thread(tid);
            self.sink.status(&Status::LoopGone { pid, tid })?;
        }
        Ok(())
    }

    /// Forgets the traced processes that left without the kernel side saying so.
    fn sweep_gone(&mut self) -> anyhow::Result<()> {
        self.last_sweep = Instant::now();
        let gone: Vec<(u32, DetachReason)> = (self.processes.keys())
            .filter_map(|&pid| Some((pid, self.departure(pid)?)))
            .collect();
        for (pid, reason) in gone {
            self.process_gone(pid, reason)?;
        }
        self.given_up
            .retain(|&pid| proc_stat::start_time(pid).is_some());
        Ok(())
    }

    /// Classifies thread `tid` of `pid` from its stack at a poll on epoll fd `poll_fd`
    /// (user stack pointer `user_sp`), or at a loop's start; `origin` says which
    /// ([`poll_origin`]).
    fn poll_stack(
        &mut self,
        pid: u32,
        tid: u32,
        poll_fd: u32,
        origin: u32,
        user_sp: u64,
        stack: &RawStack,
    ) -> anyhow::Result<()> {
        let foreign = origin == poll_origin::FOREIGN;
        if origin == poll_origin::THREAD {
            self.probe_mapped_uvloop(pid)?;
        }
        let frames = self.symbolize(pid, stack);
        let mut is_loop = origin == poll_origin::LOOP_RUN
            || frames.as_deref().is_some_and(|frames| {
                classify::is_asyncio_loop(frames)
                    || (!foreign
                        && classify::is_uvloop_poll(frames, self.runs_uvloop(pid, user_sp)))
            });
        if !is_loop
            && !foreign
            && let Some(frames) = &frames
        {
            if self.refresh_asyncio(pid)? {
                // This stack was walked without the running task: look at the thread
                // again at its next poll, walked with it.
                self.verdicts.remove(&tid);
                return self.probes.reexamine_thread(tid);
            }
            is_loop = (self.processes.get(&pid))
                .and_then(|t| t.python.running_loop_is_selector_loop(stack.tstate))
                .is_some_and(|selector_loop| {
                    classify::is_c_loop_poll(frames, !selector_loop, stack.task_name != 0)
                });
        }
        // A loop thread polling another fd: a new loop it now runs is adopted; a
        // callback's own selector leaves the thread a loop.
        if is_loop || !foreign {
            self.probes
                .classify_thread(tid, is_loop, poll_fd, self.clock.monotonic_ns())?;
            self.note_poll(pid, tid, frames.as_deref().unwrap_or_default(), is_loop);
            self.verdicts.insert(tid, Verdict { pid, is_loop });
        }
        if !is_loop && !foreign {
            // What it reported while it was timed is no loop's.
            self.attributor.forget_thread(tid);
            self.probes.stop_sampling_thread(tid);
        }
        if is_loop {
            self.loop_found(pid, tid, stack.tstate)?;
        }
        Ok(())
    }

    /// A process in scope that may be Python, announced by thread `tid` (`by_poll`: at a
    /// poll call, which the kernel side times already: the thread may run a loop whose
    /// first iteration is running now). Such a thread of a process now traced is sampled
    /// at once, so a CPU-bound first iteration has its culprit; it stops being sampled if
    /// it turns out not to run a loop.
    fn candidate(&mut self, pid: u32, tid: u32, by_poll: bool) -> anyhow::Result<()> {
        self.attach_quietly(pid)?;
        if !by_poll {
            return Ok(());
        }
        if let Some(starting) = self.starting.get_mut(&pid) {
            // Still starting: timed on, so that an iteration under way when it becomes
            // traceable is a stall (its stack is sent at its next poll).
            starting.timed.push(tid);
            return Ok(());
        }
        if !self.processes.contains_key(&pid) {
            self.probes.stop_timing(tid);
            return Ok(());
        }
        self.sample(pid, tid)
    }

    /// Stops retrying `pid`, which will not be traced: its threads timed meanwhile are
    /// timed no more. Why it was not traceable, if it was starting.
    fn give_up_starting(&mut self, pid: u32) -> Option<String> {
        let starting = self.starting.remove(&pid)?;
        for tid in starting.timed {
            self.probes.stop_timing(tid);
        }
        Some(starting.why)
    }

    /// Whether the reports of thread `tid` of `pid` are kept: it was not found to be
    /// anything but a loop.
    fn keeps_evidence(&self, pid: u32, tid: u32) -> bool {
        self.verdicts
            .get(&tid)
            .is_none_or(|v| v.pid != pid || v.is_loop)
    }

    /// Whether thread `tid` of `pid` was found to run a loop at its last classification.
    fn is_classified_loop(&self, pid: u32, tid: u32) -> bool {
        self.verdicts.get(&tid) == Some(&Verdict { pid, is_loop: true })
    }

    /// Starts sampling thread `tid` of `pid`; a failure is a warning.
    fn sample(&mut self, pid: u32, tid: u32) -> anyhow::Result<()> {
        // Without samples, only this thread's CPU-bound stalls lose their culprit:
        // say so, keep tracing.
        if let Err(e) = self.probes.sample_loop_thread(pid, tid) {
            self.warn(format!(
                "pid {pid} thread {tid}: no CPU samples, its CPU-bound stalls will have no culprit: {e:#}"
            ))?;
        }
        Ok(())
    }

    /// Looks for `pid`'s asyncio task offsets (3.14+) if not known yet, and hands them to
    /// the stack walk when found; whether they were just found.
    fn refresh_asyncio(&mut self, pid: u32) -> anyhow::Result<bool> {
        let Some(traced) = self.processes.get_mut(&pid) else {
            return Ok(false);
        };
        if !traced.python.refresh_asyncio() {
            return Ok(false);
        }
        let recipe = traced.python.walk_config();
        self.probes.trace_process(pid, recipe)?;
        Ok(true)
    }

    /// Thread `tid` of `pid` (thread state `tstate`) runs an event loop: said every time
    /// one is found (a thread may close its loop and run another); the first time, its
    /// sampler is attached.
    fn loop_found(&mut self, pid: u32, tid: u32, tstate: u64) -> anyhow::Result<()> {
        if tstate != 0 {
            self.loop_tstates.insert(tid, (pid, tstate));
        }
        self.note_loop(pid);
        if self.loop_threads.insert(tid, pid) != Some(pid) {
            // A running loop means asyncio is imported: its task offsets (3.14+) can
            // now be found.
            self.refresh_asyncio(pid)?;
            self.sample(pid, tid)?;
            self.aggregator.add_loop_thread(pid, tid);
        }
        self.sink.status(&Status::Loop { pid, tid })
    }

    /// Shows a warning.
    fn warn(&mut self, message: String) -> anyhow::Result<()> {
        self.sink.status(&Status::Warning { pid: None, message })
    }

    /// Symbolizes a raw stack of process `pid`; `None` when the process is not traced.
    /// The name of the asyncio task a stack was captured in (3.14+), if known.
    fn task_name(&self, pid: u32, stack: &RawStack) -> Option<String> {
        self.processes.get(&pid)?.python.task_name(stack.task_name)
    }

    /// An incomplete walk ends in a marker frame, so a cut stack is never taken for a
    /// whole one: `<truncated>` (deeper than the kernel side walks) or `<unreadable>`
    /// (a frame pointer could not be read: the process changed or corrupted it).
    fn symbolize(&mut self, pid: u32, stack: &RawStack) -> Option<Vec<Frame>> {
        let mut frames = self.processes.get_mut(&pid)?.python.symbolize(stack);
        let marker = if stack.flags & stack_flags::TRUNCATED != 0 {
            Some("<truncated>")
        } else if stack.flags & stack_flags::UNREADABLE_FRAME != 0 {
            Some(UNREADABLE)
        } else {
            None
        };
        frames.extend(marker.map(|m| Frame {
            function: m.to_owned(),
            file: String::new(),
            line: 0,
        }));
        Some(frames)
    }

    /// Periodic work: retry processes that were starting up, read the loss counters.
    /// Retries of starting processes need a fast tick, and so, less fast, does a loop
    /// found stuck as tracing began; otherwise only the loss counters are due, once a
    /// second, and an idle tracer stays asleep until then.
    fn tick_interval(&self) -> Duration {
        if !self.starting.is_empty() {
            FIRST_RETRY
        } else if self.awaits_stuck_notice() {
            STUCK_CHECK
        } else {
            COUNTER_INTERVAL
        }
    }

    fn tick(&mut self) -> anyhow::Result<()> {
        let now = Instant::now();
        let due: Vec<u32> = (self.starting.iter())
            .filter(|(_, s)| s.patience.due(now))
            .map(|(&pid, _)| pid)
            .collect();
        for pid in due {
            if (self.starting.get(&pid)).is_some_and(|s| s.patience.exhausted()) {
                let why = self.give_up_starting(pid).unwrap_or_default();
                self.warn(format!(
                    "pid {pid} is Python but still not traceable after {ATTACH_PATIENCE:?} of its CPU time ({why}); not traced"
                ))?;
                continue;
            }
            self.attach_quietly(pid)?;
        }
        if now.duration_since(self.last_counter_read) >= COUNTER_INTERVAL {
            self.clock.refresh();
            self.read_counters()?;
            self.sweep_loop_threads()?;
            self.notice_stuck()?;
            self.warn_unwatched()?;
        } else if self.awaits_stuck_notice() {
            self.notice_stuck()?;
        }
        if now.duration_since(self.last_sweep) >= SWEEP_INTERVAL {
            self.sweep_gone()?;
        }
        Ok(())
    }

    /// Reads the kernel-side loss counters and reports any increase.
    fn read_counters(&mut self) -> anyhow::Result<()> {
        self.last_counter_read = Instant::now();
        self.events_this_interval = 0;
        for (counter, total) in self.probes.counters()? {
            (self.losses).counter_total(counter, total, &mut self.aggregator, &mut self.sink)?;
        }
        let unreadable = self.unreadable_frames;
        (self.losses).total(
            UNREADABLE_FRAME,
            unreadable,
            &mut self.aggregator,
            &mut self.sink,
        )
    }

    /// Ends the session: the aggregate so far and the sink, for the summary.
    pub fn into_parts(self) -> (Aggregator, Box<dyn StallSink + Send>, Clock) {
        (self.aggregator, self.sink, self.clock)
    }
}

/// How a traced process left, if it did: `same_process` when its pid still has the
/// start time it had when attached, `kernel_tracing` when the kernel side still walks it,
/// `leader_dead` when its main thread is gone or a zombie.
fn departure(same_process: bool, kernel_tracing: bool, leader_dead: bool) -> Option<DetachReason> {
    match (same_process, kernel_tracing, leader_dead) {
        (false, _, _) => Some(DetachReason::Exit),
        (true, true, _) => None,
        (true, false, true) => Some(DetachReason::Exit),
        (true, false, false) => Some(DetachReason::Exec),
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Waits for the child to exit, or forever without one.
async fn wait_child(
    child: &mut Option<&mut tokio::process::Child>,
) -> anyhow::Result<std::process::ExitStatus> {
    match child {
        Some(c) => c.wait().await.context("waiting for the traced command"),
        None => std::future::pending().await,
    }
}

/// Whether `pid` still runs an executable whose name says Python (`python3.11`,
/// `python`, `pypy3`…): inspection failures of other processes are not worth a warning.
fn looks_like_python(pid: u32) -> bool {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .and_then(|exe| exe.file_name().map(|n| n.to_string_lossy().to_lowercase()))
        .is_some_and(|name| name.contains("py"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_whose_exit_or_exec_was_lost_is_told_apart() {
        // Still walked: still there (its main thread may have exited before the others).
        assert_eq!(departure(true, true, false), None);
        assert_eq!(departure(true, true, true), None);
        // The kernel forgot it and the process runs on: it exec'd.
        assert_eq!(departure(true, false, false), Some(DetachReason::Exec));
        // The kernel forgot it and it is a zombie: it exited.
        assert_eq!(departure(true, false, true), Some(DetachReason::Exit));
        // Another start time (or none): it exited, maybe another process has its pid.
        assert_eq!(departure(false, true, false), Some(DetachReason::Exit));
        assert_eq!(departure(false, false, true), Some(DetachReason::Exit));
    }
}
