//! Patience with a Python process that is not traceable yet: retries with a doubling
//! interval, bounded by the CPU time the process itself spends meanwhile.

use std::time::{Duration, Instant};

use crate::proc_stat::cpu_time;

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

#[cfg(test)]
mod tests {
    use super::*;

    /// Tries are retried after 5 ms, the interval doubling up to 200 ms.
    #[test]
    fn backs_off_from_5_ms_to_200_ms() {
        let mut patience = Patience::new(std::process::id());
        assert!(patience.until_next_try() <= FIRST_RETRY);
        assert!(!patience.due(Instant::now() - Duration::from_millis(1)));
        assert!(patience.due(Instant::now() + FIRST_RETRY));
        let mut intervals = vec![patience.backoff];
        for _ in 0..6 {
            patience.failed_again();
            intervals.push(patience.backoff);
        }
        let ms: Vec<u128> = intervals.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [10, 20, 40, 80, 160, 200, 200]);
    }

    /// Patience runs out on the process's own CPU time, not on wall time: a process that
    /// used (almost) none since its first try, or that is gone, is never given up on.
    #[test]
    fn counts_the_process_cpu_time_not_wall_time() {
        let mut idle = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep runs");
        let mut patience = Patience::new(idle.id());
        patience.cpu_at_first_try = Duration::ZERO;
        assert!(!patience.exhausted());
        patience.pid = u32::MAX;
        assert!(!patience.exhausted());
        let _ = idle.kill();
        let _ = idle.wait();
    }
}
