//! A tracing session: attaches to Python processes, turns kernel events into stalls,
//! and feeds them to the live output and the aggregate report.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use blockprobe_common::{event::poll_origin, stack::RawStack};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{Signal, SignalKind, signal},
};

use self::losses::{
    FILE_TIMEOUT, Losses, MEMORY_TIMEOUT, SKIPPED_RUN, UNDECODABLE_EVENT, UNREADABLE_FRAME,
};
use crate::{
    aggregate::Aggregator,
    attribution::{Attributor, BlockedCall, CpuSample, GilWait, StallWindow},
    classify,
    clock::Clock,
    events::{self, Event},
    host::IdentityOptions,
    model::{Cause, FdKind, ShortCalls, Stall, UNREADABLE},
    namespaces,
    patience::{ATTACH_PATIENCE, FIRST_RETRY},
    probes::Probes,
    python::PythonProcess,
    session::sink::{DetachReason, StallSink, Status},
};

mod at_attach;
mod losses;
mod processes;
pub mod sink;
mod stuck;
mod target_files;
mod target_memory;
mod unwatched;

use processes::Starting;

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
    /// Stacks left unread so far because their process's memory did not answer in time
    /// (reported with the loss counters).
    unanswered_stacks: u64,
    /// Looks at traced processes' files given up so far because they did not answer in
    /// time (reported with the loss counters).
    unanswered_files: u64,
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
    /// SIGINT and SIGTERM, caught since the session began, until it runs.
    stop_signals: Option<StopSignals>,
    /// What each polling thread was last found to be, by tid: the kernel side times a
    /// polling thread before it is classified, and only a loop's reports are kept.
    verdicts: HashMap<u32, Verdict>,
}

/// What a polling thread was found to be at its last classification.
/// SIGINT and SIGTERM, caught from the moment the session exists: one that comes while
/// processes are still being attached (a slow inspection, a process whose memory does not
/// answer) ends tracing cleanly, report written, as soon as the event pump runs.
struct StopSignals {
    interrupt: Signal,
    terminate: Signal,
}

impl StopSignals {
    /// Catches both signals (inside the tokio runtime).
    fn catch() -> anyhow::Result<Self> {
        Ok(StopSignals {
            interrupt: signal(SignalKind::interrupt()).context("installing SIGINT handler")?,
            terminate: signal(SignalKind::terminate()).context("installing SIGTERM handler")?,
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct Verdict {
    /// Its process.
    pid: u32,
    /// Whether it runs an event loop.
    is_loop: bool,
}

impl Session {
    /// A session over attached probes, reporting to `sink` and aggregating into
    /// `aggregator`, labelling the processes it traces as `identity` says. From now on,
    /// SIGINT and SIGTERM end it (see [`Session::run`]).
    pub fn new(
        probes: Probes,
        sink: Box<dyn StallSink + Send>,
        aggregator: Aggregator,
        identity: IdentityOptions,
    ) -> anyhow::Result<Self> {
        Ok(Session {
            stop_signals: Some(StopSignals::catch()?),
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
            unanswered_stacks: 0,
            unanswered_files: 0,
            notices: stuck::Notices::default(),
            stuck_at_attach: HashMap::new(),
            unwatched: unwatched::Unwatched::default(),
            events_this_interval: 0,
            host_tids: namespaces::HostTids::default(),
            verdicts: HashMap::new(),
            asyncio_files: HashSet::new(),
            own_pid: std::process::id(),
        })
    }

    /// The probes, e.g. to add the `run` command to the family.
    pub fn probes_mut(&mut self) -> &mut Probes {
        &mut self.probes
    }

    /// Whether the native stack of a thread of traced process `pid` at stack pointer `sp`
    /// runs a uvloop loop (`uv_run`); `None` when its memory did not answer in time.
    fn runs_uvloop(&mut self, pid: u32, sp: u64) -> anyhow::Result<Option<bool>> {
        let Some(runs) = self.processes.get(&pid).map(|t| t.uv_runs.clone()) else {
            return Ok(Some(false));
        };
        if runs.is_empty() {
            return Ok(Some(false));
        }
        self.read_memory(pid, 1, |python| python.stack_runs(sp, runs))
    }

    /// Runs until `stop` says so, reading events as they come.
    pub async fn run(
        &mut self,
        ring: RingBuf<MapData>,
        duration: Option<Duration>,
        mut child: Option<&mut tokio::process::Child>,
    ) -> anyhow::Result<StopReason> {
        let StopSignals {
            interrupt: mut sigint,
            terminate: mut sigterm,
        } = match self.stop_signals.take() {
            Some(signals) => signals,
            None => StopSignals::catch()?,
        };
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
            } => self.poll_stack(pid, tid, poll_fd, origin, user_sp, stack)?,
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
                let (stack, task) = self.symbolize_one(pid, stack)?;
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
                let symbolized = self.symbolize(pid, vec![*own_stack, *holder_stack])?;
                let task = symbolized.task;
                let [own_stack, holder_stack] = <[_; 2]>::try_from(symbolized.stacks)
                    .unwrap_or_else(|_| [Vec::new(), Vec::new()]);
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
                let (stack, task) = self.symbolize_one(pid, stack)?;
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
        stack: Box<RawStack>,
    ) -> anyhow::Result<()> {
        let foreign = origin == poll_origin::FOREIGN;
        if origin == poll_origin::THREAD {
            self.probe_newly_mapped_uvloop(pid)?;
        }
        let (tstate, has_task) = (stack.tstate, stack.task_name != 0);
        let loop_run = origin == poll_origin::LOOP_RUN;
        let traced = self.processes.contains_key(&pid);
        let frames = (self.try_symbolize(pid, vec![*stack])?).and_then(|mut s| s.stacks.pop());
        if traced && frames.is_none() && !loop_run {
            // Its memory did not answer: the thread stays as it was found last.
            return Ok(());
        }
        let asyncio_loop = frames.as_deref().is_some_and(classify::is_asyncio_loop);
        let uvloop_poll = match &frames {
            Some(frames) if !asyncio_loop && !foreign && classify::is_uvloop_poll(frames, true) => {
                self.runs_uvloop(pid, user_sp)?.unwrap_or(false)
            }
            _ => false,
        };
        let mut is_loop = loop_run || asyncio_loop || uvloop_poll;
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
            let selector_loop = (self.read_memory(pid, 1, |python| {
                python.running_loop_is_selector_loop(tstate)
            })?)
            .flatten();
            is_loop = selector_loop.is_some_and(|selector_loop| {
                classify::is_c_loop_poll(frames, !selector_loop, has_task)
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
            self.loop_found(pid, tid, tstate)?;
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
        for (name, total) in [
            (SKIPPED_RUN, self.probes.skipped_runs()?),
            (UNREADABLE_FRAME, self.unreadable_frames),
            (MEMORY_TIMEOUT, self.unanswered_stacks),
            (FILE_TIMEOUT, self.unanswered_files),
        ] {
            (self.losses).total(name, total, &mut self.aggregator, &mut self.sink)?;
        }
        Ok(())
    }

    /// How the kernel side hooks the epoll syscalls.
    pub fn poll_hook(&self) -> crate::hooks::PollHook {
        self.probes.poll_hook().hook
    }

    /// Ends the session: the aggregate so far and the sink, for the summary.
    pub fn into_parts(self) -> (Aggregator, Box<dyn StallSink + Send>, Clock) {
        (self.aggregator, self.sink, self.clock)
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
