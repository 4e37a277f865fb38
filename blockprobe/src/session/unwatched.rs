//! Never a silent all-clear. A process whose loop blockprobe does not recognize would
//! report no stall at all, exactly like a healthy one. So a Python thread that polls
//! (epoll family) from native code — not through `selectors`, which sync code uses —
//! and is not found to be a loop makes its process suspect: when, a second later, no
//! thread of it is a loop thread, a warning names the process, live and in the report.
//! Pollers through `selectors` (sync servers, a selector in a worker thread) never warn.

use std::collections::{HashMap, HashSet};

use super::Session;
use crate::{classify, model::Frame, render::live::Status, report::warning::POLLS_WITHOUT_LOOP};

/// How long a process that polls natively has to show a loop before the warning.
const LOOP_GRACE_NS: u64 = 1_000_000_000;

/// Processes seen polling natively without a loop.
#[derive(Debug, Default)]
pub(super) struct Unwatched {
    /// By pid: the thread that polled, and when it was first seen.
    suspects: HashMap<u32, (u32, u64)>,
    /// Processes warned about (once each, until a loop is found in them).
    warned: HashSet<u32>,
}

impl Session {
    /// Thread `tid` of `pid` polled with Python stack `frames` (innermost first) and was
    /// found (`is_loop`) to be a loop or not.
    pub(super) fn note_poll(&mut self, pid: u32, tid: u32, frames: &[Frame], is_loop: bool) {
        self.aggregator.mark_polled(pid);
        if is_loop {
            self.note_loop(pid);
        } else if classify::polls_natively(frames) && !self.aggregator.has_loop_thread(pid) {
            let now = self.clock.monotonic_ns();
            self.unwatched.suspects.entry(pid).or_insert((tid, now));
        }
    }

    /// A loop was found in `pid`: it is watched.
    pub(super) fn note_loop(&mut self, pid: u32) {
        self.aggregator.mark_polled(pid);
        self.unwatched.suspects.remove(&pid);
        if self.unwatched.warned.remove(&pid) {
            self.aggregator.set_warning(pid, POLLS_WITHOUT_LOOP, false);
        }
    }

    /// Process `pid` is gone: nothing more to say about it (a warning stays reported).
    pub(super) fn forget_unwatched(&mut self, pid: u32) {
        self.unwatched.suspects.remove(&pid);
        self.unwatched.warned.remove(&pid);
    }

    /// Warns about the processes that polled natively a while ago and still have no
    /// loop thread.
    pub(super) fn warn_unwatched(&mut self) -> anyhow::Result<()> {
        let now = self.clock.monotonic_ns();
        let due: Vec<(u32, u32)> = (self.unwatched.suspects.iter())
            .filter(|(_, (_, since))| now.saturating_sub(*since) >= LOOP_GRACE_NS)
            .map(|(&pid, &(tid, _))| (pid, tid))
            .collect();
        for (pid, tid) in due {
            self.unwatched.suspects.remove(&pid);
            if self.aggregator.has_loop_thread(pid)
                || !self.processes.contains_key(&pid)
                || !self.unwatched.warned.insert(pid)
            {
                continue;
            }
            self.aggregator.set_warning(pid, POLLS_WITHOUT_LOOP, true);
            let message = format!(
                "pid {pid} ({}): thread {tid} polls (epoll) from native code, not through \
                 selectors, but no asyncio loop was found in this process: if it runs an \
                 event loop blockprobe does not recognize, its stalls are not seen",
                self.comm(pid),
            );
            self.sink.status(&Status::Warning {
                pid: Some(pid),
                message,
            })?;
        }
        Ok(())
    }
}
