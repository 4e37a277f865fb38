//! Per-thread state kept by BPF for polling threads.

use crate::{assert_size, cause, user_pod};

/// What userspace (or BPF, for `PENDING`) decided a polling thread is.
pub mod class {
    /// BPF sent its stack at a poll call; userspace has not answered yet. The thread is
    /// timed meanwhile as if it were a loop: userspace keeps what it reports once it
    /// finds a loop, and drops it otherwise.
    pub const PENDING: u32 = 1;
    /// The thread runs an asyncio event loop: its off-await time is measured.
    pub const LOOP: u32 = 2;
    /// The thread polls for another reason (sync selectors, …): ignored.
    pub const NOT_LOOP: u32 = 3;
}

/// Value of [`crate::maps::THREAD_CLASS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ThreadClass {
    /// One of the [`class`] constants.
    pub class: u32,
    /// The epoll fd of the poll call the class was decided at: a loop's own poller.
    pub poll_fd: u32,
    /// When the class was set (monotonic ns); NOT_LOOP threads are re-examined later.
    pub since_ns: u64,
}
assert_size!(ThreadClass, 16);

/// Value of [`crate::maps::LOOP_TIMING`], written only by BPF.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct LoopTiming {
    /// When the loop thread last returned from its poller; 0 while it is polling.
    pub poll_exit_ns: u64,
    /// When the current blocking syscall began; 0 when none is in progress.
    pub syscall_enter_ns: u64,
    /// Number of the current blocking syscall.
    pub syscall_nr: u32,
    /// The [`cause`] index of the current blocking syscall (GIL futexes told apart).
    pub syscall_cause: u32,
    /// When the thread went off CPU during the current off-await interval; 0 when on CPU.
    pub off_cpu_since_ns: u64,
    /// The [`cause`] index the current off-CPU period counts as.
    pub off_cpu_cause: u32,
    /// 1 when `off_cpu_ns` holds any time: a busy loop's iterations rarely leave the CPU,
    /// and clearing the array at every poll exit would cost each of them a memset.
    pub has_off_cpu: u32,
    /// The epoll fd of the loop's poller: polls on other fds (sync `selectors` code run by
    /// a callback) are blocking calls inside the interval, not the loop coming back.
    pub loop_fd: u32,
    /// The other epoll fd whose poll stack was last sent for classification
    /// ([`NO_FD`]: none), so a callback polling one fd over and over sends it once.
    pub foreign_fd: u32,
    /// 1 while the thread is timed from a poll made before its process was traced: its
    /// stack goes to userspace at its next poll, before the interval it ends is reported.
    pub unclassified: u32,
    /// Padding.
    pub _pad: u32,
    /// Off-CPU time of the current off-await interval, by [`cause`] index (CPU unused).
    pub off_cpu_ns: [u64; cause::COUNT],
}
assert_size!(LoopTiming, 56 + 8 * cause::COUNT);

impl LoopTiming {
    /// Whether the thread is off CPU right now because it was stopped from outside
    /// ([`cause::STOPPED`]): a stopped loop is not stuck.
    pub fn stopped_now(&self) -> bool {
        self.off_cpu_since_ns != 0 && self.off_cpu_cause == cause::STOPPED as u32
    }
}

/// Value of [`crate::maps::SHORT_CALLS`], written only by BPF: a loop thread's blocking
/// calls too short to report one by one (below the evidence minimum), summed by cause
/// until their time reaches the minimum; then one event reports them, with the stack of
/// the call that made the sum reach it (a sample weighted by time).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ShortCalls {
    /// The off-await interval the sums belong to (its `LoopTiming::poll_exit_ns`).
    pub interval_ns: u64,
    /// Time in short calls not reported yet, by [`cause`] index.
    pub blocked_ns: [u64; cause::COUNT],
    /// Their number, by [`cause`] index.
    pub calls: [u32; cause::COUNT],
}
assert_size!(ShortCalls, (8 + 12 * cause::COUNT).next_multiple_of(8));

/// No file descriptor (in [`LoopTiming::foreign_fd`]).
pub const NO_FD: u32 = u32::MAX;

impl LoopTiming {
    /// Whether the thread is blocked in its current syscall right now. The kernel side
    /// learns a call when the thread leaves the CPU in it and lets it go only at the
    /// thread's next switch-out or poll: the call is still on, not merely remembered,
    /// while the thread is off CPU for it.
    pub fn blocked_in_call(&self) -> bool {
        self.syscall_enter_ns != 0
            && self.off_cpu_since_ns != 0
            && self.off_cpu_cause == self.syscall_cause
    }

    /// Adds the open off-CPU period to its cause, as of `now`. The kernel side calls it
    /// when it sees the thread running: at switch-in, switch-out and in its own poll and
    /// blocking-call programs.
    #[inline(always)]
    pub fn close_period(&mut self, now: u64) {
        let since = self.off_cpu_since_ns;
        if since == 0 {
            return;
        }
        if let Some(slot) = self.off_cpu_ns.get_mut(self.off_cpu_cause as usize) {
            *slot += now.saturating_sub(since);
            self.has_off_cpu = 1;
        }
        self.off_cpu_since_ns = 0;
    }
}

user_pod!(ThreadClass, LoopTiming);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closing_a_period_adds_it_to_its_cause_once() {
        let mut timing = LoopTiming {
            off_cpu_since_ns: 100,
            off_cpu_cause: cause::SLEEP as u32,
            ..LoopTiming::default()
        };
        timing.close_period(350);
        timing.close_period(900);
        assert_eq!(timing.off_cpu_ns[cause::SLEEP], 250);
        assert_eq!(timing.has_off_cpu, 1);
        assert_eq!(timing.off_cpu_since_ns, 0);
    }
}
