//! Loss and health counters kept by BPF, per CPU (summed by userspace).

/// Index into [`crate::maps::COUNTERS`]. Nothing is lost silently: every place where
/// the kernel side has to drop something counts it here.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// A candidate-process event did not fit in the ring buffer.
    LostCandidate = 0,
    /// A poll-stack (loop classification) event did not fit in the ring buffer.
    LostPollStack = 1,
    /// A blocking-call event did not fit in the ring buffer.
    LostBlockedCall = 2,
    /// A stall event did not fit in the ring buffer.
    LostStall = 3,
    /// A process-gone event did not fit in the ring buffer.
    LostProcessGone = 4,
    /// A thread could not be recorded because a thread map was full.
    ThreadMapFull = 5,
    /// A process could not join the `run` family because the map was full.
    FamilyMapFull = 6,
    /// A CPU sample did not fit in the ring buffer.
    LostCpuSample = 7,
    /// A GIL-wait event did not fit in the ring buffer (or its holder stack was lost).
    LostGilWait = 8,
}

impl Counter {
    /// Number of counters (size of the map).
    pub const COUNT: u32 = 9;
    /// Every counter, in index order.
    pub const ALL: [Counter; Self::COUNT as usize] = [
        Counter::LostCandidate,
        Counter::LostPollStack,
        Counter::LostBlockedCall,
        Counter::LostStall,
        Counter::LostProcessGone,
        Counter::ThreadMapFull,
        Counter::FamilyMapFull,
        Counter::LostCpuSample,
        Counter::LostGilWait,
    ];

    /// Stable name used in reports and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::LostCandidate => "ringbuf_candidate",
            Counter::LostPollStack => "ringbuf_poll_stack",
            Counter::LostBlockedCall => "ringbuf_blocked_call",
            Counter::LostStall => "ringbuf_stall",
            Counter::LostProcessGone => "ringbuf_process_gone",
            Counter::ThreadMapFull => "thread_map_full",
            Counter::FamilyMapFull => "family_map_full",
            Counter::LostCpuSample => "ringbuf_cpu_sample",
            Counter::LostGilWait => "ringbuf_gil_wait",
        }
    }
}
