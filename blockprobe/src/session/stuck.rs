//! Loops stuck off-await right now. A hang never returns to its poller, so the kernel
//! side never reports its stall: the session looks at each loop's current iteration
//! itself, says live that a loop is stuck (after a second, then each time the time
//! doubles), and reports the stall so far, marked ongoing, when tracing stops. A loop
//! found stuck as tracing began is timed from then (a lower bound, said so), and is said
//! stuck as soon as that reaches a second.

use std::collections::{HashMap, HashSet};

use blockprobe_common::thread::LoopTiming;

use super::Session;
use crate::{
    attribution::{BlockedCall, StallWindow, culprit},
    model::{Cause, Frame},
    proc_stat,
    session::sink::Status,
    syscalls,
};

/// How long a loop is stuck before it is said live (unless the threshold is longer).
const FIRST_NOTICE_NS: u64 = 1_000_000_000;

/// When each stuck loop thread is to be said stuck next.
#[derive(Debug, Default)]
pub(super) struct Notices {
    /// By tid: when the iteration began, and how long stuck it is said next.
    next: HashMap<u32, (u64, u64)>,
    /// Loop threads found stuck as tracing began, not said stuck yet.
    awaited: HashSet<u32>,
}

/// A loop thread off-await for a while now.
struct StuckLoop {
    pid: u32,
    tid: u32,
    tstate: u64,
    timing: LoopTiming,
}

impl Session {
    /// The loop threads that have been off-await at least `min_ns` at `now`. A thread
    /// that is gone (exited, maybe not reaped yet) is not stuck: its process's last
    /// iteration simply never came back to its poller.
    fn stuck_loops(&self, now: u64, min_ns: u64) -> Vec<StuckLoop> {
        (self.loop_tstates.iter())
            .filter_map(|(&tid, &(pid, tstate))| {
                let timing = self.probes.loop_timing(tid)?;
                let start = timing.poll_exit_ns;
                (start != 0 && now.saturating_sub(start) >= min_ns).then_some(StuckLoop {
                    pid,
                    tid,
                    tstate,
                    timing,
                })
            })
            // Only the few stuck ones cost a read of /proc.
            .filter(|s| {
                self.processes.contains_key(&s.pid) && proc_stat::thread_lives(s.pid, s.tid)
            })
            .collect()
    }

    /// Says which loops are stuck, for how long and where, at the times they are due.
    pub(super) fn notice_stuck(&mut self) -> anyhow::Result<()> {
        let now = self.clock.monotonic_ns();
        let first = FIRST_NOTICE_NS.max(self.probes.threshold_ns());
        let mut stuck = self.stuck_loops(now, first);
        // A stopped loop (SIGSTOP, a debugger, the freezer) is not hung: nothing to say.
        stuck.retain(|s| !s.timing.stopped_now());
        (self.notices.next).retain(|tid, _| stuck.iter().any(|s| s.tid == *tid));
        // Awaited until said, or until it is clear it will not be: back to its poller,
        // or gone.
        let awaited = std::mem::take(&mut self.notices.awaited);
        self.notices.awaited = (awaited.into_iter())
            .filter(|&tid| {
                let timing = self.probes.loop_timing(tid);
                let start = timing.map_or(0, |t| t.poll_exit_ns);
                self.started_before_tracing(tid, start) && now.saturating_sub(start) < 2 * first
            })
            .collect();
        for s in stuck {
            let start = s.timing.poll_exit_ns;
            let stuck_ns = now.saturating_sub(start);
            let due = self.notices.next.entry(s.tid).or_insert((start, first));
            if due.0 != start {
                *due = (start, first);
            }
            if stuck_ns < due.1 {
                continue;
            }
            while due.1 <= stuck_ns {
                due.1 = due.1.saturating_mul(2);
            }
            self.notices.awaited.remove(&s.tid);
            self.say_stuck(&s, stuck_ns)?;
        }
        Ok(())
    }

    /// Says that loop `s` has been stuck for `stuck_ns`, where and in which call.
    fn say_stuck(&mut self, s: &StuckLoop, stuck_ns: u64) -> anyhow::Result<()> {
        let in_syscall = s.timing.blocked_in_call();
        // A blocked thread's frames hold still; a running one's are read from its
        // latest sample, not raced (walked now only before its first sample).
        let sample = (!in_syscall)
            .then(|| self.attributor.latest_sample(s.tid).map(<[Frame]>::to_vec))
            .flatten();
        let stack = match sample {
            Some(stack) => stack,
            None => self.walk_now(s.pid, s.tstate)?.unwrap_or_default(),
        };
        let at_least = self.started_before_tracing(s.tid, s.timing.poll_exit_ns);
        self.sink.status(&Status::Stuck {
            pid: s.pid,
            tid: s.tid,
            stuck_ns,
            at_least,
            syscall: in_syscall
                .then(|| syscalls::name(s.timing.syscall_nr).map(str::to_owned))
                .flatten(),
            culprit: culprit(&stack),
        })
    }

    /// Loop thread `tid`, found stuck as tracing began, is to be said stuck as soon as it
    /// has been for a second: until then the session looks more often than once a second.
    pub(super) fn await_stuck_notice(&mut self, tid: u32) {
        self.notices.awaited.insert(tid);
    }

    /// Whether a loop found stuck as tracing began may be due to be said stuck soon.
    pub(super) fn awaits_stuck_notice(&self) -> bool {
        !self.notices.awaited.is_empty()
    }

    /// Whether the iteration of loop thread `tid` that began at `start_ns` (monotonic)
    /// was already under way when tracing began (it is timed from then).
    pub(super) fn started_before_tracing(&self, tid: u32, start_ns: u64) -> bool {
        self.stuck_at_attach
            .get(&tid)
            .is_some_and(|&(_, start)| start == start_ns)
    }

    /// Reports the loops still stuck now that tracing stops (a hang is the stall that
    /// matters most, and it never returns to its poller): the stall so far, marked
    /// ongoing, blamed on the call it is stuck in, whose stack is walked now.
    pub(super) fn report_ongoing(&mut self) -> anyhow::Result<()> {
        let now = self.clock.monotonic_ns();
        for s in self.stuck_loops(now, self.probes.threshold_ns()) {
            let timing = s.timing;
            let mut off_cpu_ns = timing.off_cpu_ns;
            if timing.off_cpu_since_ns != 0
                && let Some(slot) = off_cpu_ns.get_mut(timing.off_cpu_cause as usize)
            {
                *slot += now.saturating_sub(timing.off_cpu_since_ns);
            }
            if timing.blocked_in_call() {
                let call = BlockedCall {
                    task: None,
                    nr: timing.syscall_nr,
                    cause: Cause::from_index(timing.syscall_cause as usize),
                    start_ns: timing.syscall_enter_ns,
                    end_ns: now,
                    fd_kind: None,
                    stack: self.walk_now(s.pid, s.tstate)?.unwrap_or_default(),
                    short: None,
                };
                self.attributor.blocked_call(s.pid, s.tid, call);
            }
            let mut stall = self.close_stall(StallWindow {
                pid: s.pid,
                tid: s.tid,
                comm: self.comm(s.pid),
                start_ns: timing.poll_exit_ns,
                end_ns: now,
                off_cpu_ns,
            });
            stall.ongoing = true;
            stall.started_before_tracing = self.started_before_tracing(s.tid, timing.poll_exit_ns);
            self.sink.stall(&stall)?;
            self.aggregator.record(stall);
        }
        Ok(())
    }
}
