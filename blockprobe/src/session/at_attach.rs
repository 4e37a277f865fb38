//! Loops that already run when tracing of their process begins. The kernel side learns
//! of a loop at a poll call, and a loop that is stuck (a hang, a long sync call) makes
//! none: the first thing an SRE traces would look idle. So each thread of a newly traced
//! process is examined once from userspace — its Python stack walked as for a hang, its
//! current syscall read from `/proc` — and
//! - a thread parked in its loop's poller becomes a loop thread at once, its next
//!   wake-up timed;
//! - a thread inside a running loop (`run_forever`, `_run_once`, a loop runner frame,
//!   the running-loop state on 3.14+) but away from its poller, in a callback (the
//!   innermost frame is not the loop's own), may be a loop stuck right now: a loop
//!   thread whose iteration is timed from this moment (a lower bound), said stuck as
//!   soon as that reaches a second, and reported as an ongoing stall if still stuck at
//!   stop (or as a stall, marked as begun before tracing, when it comes back).

use blockprobe_common::{
    cause,
    syscalls::{call_cause, is_blocking, is_poller},
    thread::{LoopTiming, NO_FD},
};

use super::{Session, Verdict, target_memory::marker};
use crate::{
    attribution::BlockedCall,
    classify,
    model::{Cause, Frame},
    proc_stat,
    python::PythonProcess,
    thread_now::{self, Activity},
};

/// One thread of a newly traced process, as it is now.
struct Examined {
    tid: u32,
    tstate: u64,
    activity: Activity,
    stack: Vec<Frame>,
    /// When its stack was walked (monotonic ns, just before).
    walked_ns: u64,
    /// On 3.14+, whether the loop it runs is one of asyncio's selector loops (`None`:
    /// none runs, or it cannot be told).
    selector_loop: Option<bool>,
}

impl Examined {
    /// The epoll fd it is polling now, if any.
    fn polled_fd(&self) -> Option<u32> {
        self.activity.polled_fd()
    }
}

impl Session {
    /// Finds the loops of `pid`, just traced, that already run: parked in their poller,
    /// or stuck away from it. Threads that cannot be read, or that polled since tracing
    /// began, are left to the kernel side.
    pub(super) fn find_running_loops(&mut self, pid: u32) -> anyhow::Result<()> {
        self.refresh_asyncio(pid)?;
        let examined = self.examine_threads(pid)?;
        for thread in &examined {
            if self.probes.classified(thread.tid) {
                // It polled since tracing began, and was classified then.
                continue;
            }
            let native = thread.selector_loop.map(|selector| !selector);
            let loop_poll = thread.polled_fd().is_some()
                && (classify::is_asyncio_loop(&thread.stack)
                    || native.is_some_and(|native| {
                        classify::is_c_loop_poll(&thread.stack, native, false)
                    }));
            let in_loop = classify::runs_loop(&thread.stack) || native.is_some();
            if let Some(timing) = self.probes.loop_timing(thread.tid) {
                // Timed since its first poll, which announced its process: a loop, timed
                // exactly, if it is inside one (a stack deeper than the walk does not
                // show it: its next poll tells).
                if loop_poll || in_loop {
                    let now = self.clock.monotonic_ns();
                    let fd = (thread.polled_fd())
                        .filter(|_| loop_poll)
                        .unwrap_or(timing.loop_fd);
                    self.probes.classify_thread(thread.tid, true, fd, now)?;
                    self.adopted(pid, thread)?;
                }
                self.walked_in_call(pid, thread, &timing);
            } else if loop_poll {
                let fd = thread.polled_fd().unwrap_or(NO_FD);
                let now = self.clock.monotonic_ns();
                self.probes.adopt_polling_loop(thread.tid, fd, now)?;
                self.adopted(pid, thread)?;
            } else if in_loop && !classify::is_asyncio_loop(&thread.stack) {
                // Inside a callback (a loop running its own code, innermost, is between
                // two polls and left to the kernel side).
                let timing = self.stuck_timing(pid, thread, &examined);
                self.probes.adopt_stuck_loop(thread.tid, timing)?;
                (self.stuck_at_attach).insert(thread.tid, (pid, timing.poll_exit_ns));
                self.adopted(pid, thread)?;
                self.blocked_before_tracing(pid, thread, &timing, timing.poll_exit_ns);
                self.await_stuck_notice(thread.tid);
            }
        }
        Ok(())
    }

    /// A timed `thread` of `pid` may be blocked in a call it entered before its process
    /// was traced: the kernel side learned the call without a walk recipe and reports it,
    /// when it ends, without a stack. Its stack, walked while it blocks, is the call's.
    fn walked_in_call(&mut self, pid: u32, thread: &Examined, timing: &LoopTiming) {
        if timing.syscall_enter_ns != 0
            && !is_poller(u64::from(timing.syscall_nr))
            && timing.syscall_enter_ns < thread.walked_ns
        {
            let (start, stack) = (timing.syscall_enter_ns, thread.stack.clone());
            self.attributor.walked_call(pid, thread.tid, start, stack);
        }
    }

    /// A loop `thread` of `pid` found stuck at attach may be blocked in a call it entered
    /// before its process was traced, which the kernel side never saw begin. Its stack,
    /// walked now while it blocks, is the call's; the call counts as evidence up to `now`
    /// (a lower bound).
    fn blocked_before_tracing(
        &mut self,
        pid: u32,
        thread: &Examined,
        timing: &LoopTiming,
        now: u64,
    ) {
        if !timing.blocked_in_call() || is_poller(u64::from(timing.syscall_nr)) {
            return;
        }
        let call = BlockedCall {
            nr: timing.syscall_nr,
            cause: Cause::from_index(timing.syscall_cause as usize),
            start_ns: timing.syscall_enter_ns,
            end_ns: now,
            fd_kind: None,
            stack: thread.stack.clone(),
            task: None,
            short: None,
        };
        self.attributor.blocked_call(pid, thread.tid, call);
    }

    /// `thread` of `pid` was made a loop thread: its reports are a loop's.
    fn adopted(&mut self, pid: u32, thread: &Examined) -> anyhow::Result<()> {
        (self.verdicts).insert(thread.tid, Verdict { pid, is_loop: true });
        self.loop_found(pid, thread.tid, thread.tstate)
    }

    /// Each Python thread of `pid` now: its host tid, activity and stack (none when its
    /// memory did not answer in time).
    fn examine_threads(&mut self, pid: u32) -> anyhow::Result<Vec<Examined>> {
        let Some(namespaced) = self.processes.get(&pid).map(|t| t.ns_pid.is_some()) else {
            return Ok(Vec::new());
        };
        let walked_ns = self.clock.monotonic_ns();
        let threads = (self.read_memory(pid, 1, PythonProcess::threads_now)?).unwrap_or_default();
        let mut examined = Vec::with_capacity(threads.len());
        for thread in threads {
            let tid = if namespaced {
                self.host_tids.get(pid, thread.tid)
            } else {
                Some(thread.tid)
            };
            let Some(tid) = tid else { continue };
            let Some(activity) = thread_now::activity(pid, tid) else {
                continue;
            };
            let mut stack = thread.frames;
            stack.extend(marker(thread.flags));
            examined.push(Examined {
                tid,
                tstate: thread.tstate,
                activity,
                stack,
                walked_ns,
                selector_loop: thread.selector_loop,
            });
        }
        Ok(examined)
    }

    /// The kernel-side timing of `thread`, stuck now: off-await since now, in the
    /// blocking call it is making (since now too), off CPU since now when asleep. Its
    /// loop's epoll fd is the one epoll fd of the process that no other examined thread
    /// polls now and that it does not poll itself (a callback's selector); when that
    /// is not one fd, its next poll tells.
    fn stuck_timing(&self, pid: u32, thread: &Examined, all: &[Examined]) -> LoopTiming {
        let now = self.clock.monotonic_ns();
        let gil_addr = (self.processes.get(&pid)).map_or(0, |p| p.python.walk_config().gil_addr);
        let call = match thread.activity {
            Activity::InSyscall { nr, args }
                if is_blocking(u64::from(nr)) || is_poller(u64::from(nr)) =>
            {
                Some((nr, call_cause(nr, args, gil_addr) as u32))
            }
            _ => None,
        };
        let asleep = matches!(proc_stat::thread_state(pid, thread.tid), Some('S' | 'D'));
        let candidates: Vec<u32> = (thread_now::epoll_fds(pid).into_iter())
            .filter(|&fd| all.iter().all(|t| t.polled_fd() != Some(fd)))
            .collect();
        let loop_fd = match candidates[..] {
            [fd] => fd,
            _ => NO_FD,
        };
        LoopTiming {
            poll_exit_ns: now,
            syscall_enter_ns: if call.is_some() { now } else { 0 },
            syscall_nr: call.map_or(0, |(nr, _)| nr),
            syscall_cause: call.map_or(0, |(_, cause)| cause),
            off_cpu_since_ns: if asleep { now } else { 0 },
            off_cpu_cause: call.map_or(cause::OTHER as u32, |(_, cause)| cause),
            loop_fd,
            foreign_fd: thread.polled_fd().unwrap_or(NO_FD),
            ..LoopTiming::default()
        }
    }
}
