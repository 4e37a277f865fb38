//! Patience with a Python process that is not traceable yet: retries with a doubling
//! interval, bounded by the CPU time the process itself spends meanwhile.

use std::time::{Duration, Instant};

use crate::metrics::process::cpu_time;

/// How much CPU time a Python process that is not traceable yet may use before blockprobe
/// gives up on it. CPU time, not wall time: on a loaded host (two hundred interpreters
/// starting on two CPUs) a start-up can take many seconds of waiting for a CPU.
pub const ATTACH_PATIENCE: Duration = Duration::from_secs(5);
/// The first interval between two tries; it doubles with each try up to [`MAX_RETRY`].
pub const FIRST_RETRY: Duration = Duration::from_millis(5);
/// The longest interval between two tries.
const MAX_RETRY: Duration = Duration::from_millis(200);

/// The retry state of one process.
pub struct Patience {
    pid: u32,
    /// Its CPU time when it was first tried.
    cpu_at_first_try: Duration,
    /// When to try it again.
    next_try: Instant,
    /// How long to wait after the next try.
    backoff: Duration,
}

impl Patience {
    /// Starts counting for `pid`, whose first try just failed.
    pub fn new(pid: u32) -> Self {
        let mut patience = Patience {
            pid,
            cpu_at_first_try: cpu_time(pid).unwrap_or_default(),
            next_try: Instant::now(),
            backoff: FIRST_RETRY,
        };
        patience.failed_again();
        patience
    }

    /// Records one more failed try: the next one is due after a longer interval.
    pub fn failed_again(&mut self) {
        self.next_try = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_RETRY);
    }

    /// Whether the next try is due at `now`.
    pub fn due(&self, now: Instant) -> bool {
        self.next_try <= now
    }

    /// How long until the next try is due.
    pub fn until_next_try(&self) -> Duration {
        self.next_try.saturating_duration_since(Instant::now())
    }

    /// Whether the process has used up [`ATTACH_PATIENCE`] of CPU time since its first try
    /// (a process that exited meanwhile has not: its next try says so).
    pub fn exhausted(&self) -> bool {
        cpu_time(self.pid)
            .is_some_and(|cpu| cpu.saturating_sub(self.cpu_at_first_try) > ATTACH_PATIENCE)
    }
}
