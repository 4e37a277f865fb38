//! Patience with a Python process that is not traceable yet: retries with a doubling
//! interval, bounded by the CPU time the process itself spends meanwhile.

use std::time::{Duration, Instant};

use crate::proc_stat::cpu_time;

/// How much CPU time a Python process that is not traceable yet may use before blockprobe
/// gives up on it. CPU time, not wall time: on a loaded host (two hundred interpreters
/// starting on two CPUs) a start-up can take many seconds of waiting for a CPU.
pub const ATTACH_PATIENCE: Duration = Duration::from_secs(5);
/// The first interval between two tries; it doubles with each try up to [`max_retry`].
pub const FIRST_RETRY: Duration = Duration::from_millis(5);
/// The longest interval between two tries while few processes are starting: a start-up
/// that becomes traceable is traced within it, before the program's first steps (a
/// coroutine that blocks at once, a loop whose first run has no poll before its first
/// callback).
const FEW_RETRY: Duration = Duration::from_millis(20);
/// The longest interval between two tries when many processes are starting at once.
const MAX_RETRY: Duration = Duration::from_millis(200);
/// The interval added to the longest one per process starting: tries of all of them
/// together stay at about one per this interval.
const RETRY_PER_PROCESS: Duration = Duration::from_millis(5);

/// The longest interval between two tries of a process while `starting` processes are
/// not traceable yet: [`FEW_RETRY`] for a few, growing with their number up to
/// [`MAX_RETRY`], so that the tracer's work on them stays bounded.
pub fn max_retry(starting: usize) -> Duration {
    (RETRY_PER_PROCESS * u32::try_from(starting).unwrap_or(u32::MAX)).clamp(FEW_RETRY, MAX_RETRY)
}

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
    /// Starts counting for `pid`, whose first try just failed, while `starting`
    /// processes (it too) are not traceable yet.
    pub fn new(pid: u32, starting: usize) -> Self {
        let mut patience = Patience {
            pid,
            cpu_at_first_try: cpu_time(pid).unwrap_or_default(),
            next_try: Instant::now(),
            backoff: FIRST_RETRY,
        };
        patience.failed_again(starting);
        patience
    }

    /// Records one more failed try while `starting` processes (it too) are not
    /// traceable yet: the next one is due after a longer interval, up to
    /// [`max_retry`]`(starting)`.
    pub fn failed_again(&mut self, starting: usize) {
        self.next_try = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(max_retry(starting));
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

    /// Tries are retried after 5 ms, the interval doubling up to 200 ms with many
    /// processes starting.
    #[test]
    fn backs_off_from_5_ms_to_200_ms() {
        let many = 100;
        let mut patience = Patience::new(std::process::id(), many);
        assert!(patience.until_next_try() <= FIRST_RETRY);
        assert!(!patience.due(Instant::now() - Duration::from_millis(1)));
        assert!(patience.due(Instant::now() + FIRST_RETRY));
        let mut intervals = vec![patience.backoff];
        for _ in 0..6 {
            patience.failed_again(many);
            intervals.push(patience.backoff);
        }
        let ms: Vec<u128> = intervals.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [10, 20, 40, 80, 160, 200, 200]);
    }

    /// With one process starting, tries stay 20 ms apart at most; the cap grows with the
    /// number of processes starting.
    #[test]
    fn few_starting_are_retried_often() {
        let mut patience = Patience::new(std::process::id(), 1);
        for _ in 0..6 {
            patience.failed_again(1);
        }
        assert_eq!(patience.backoff, Duration::from_millis(20));
        assert_eq!(max_retry(0), Duration::from_millis(20));
        assert_eq!(max_retry(10), Duration::from_millis(50));
        assert_eq!(max_retry(usize::MAX), MAX_RETRY);
    }

    /// Patience runs out on the process's own CPU time, not on wall time: a process that
    /// used (almost) none since its first try, or that is gone, is never given up on.
    #[test]
    fn counts_the_process_cpu_time_not_wall_time() {
        let mut idle = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep runs");
        let mut patience = Patience::new(idle.id(), 1);
        patience.cpu_at_first_try = Duration::ZERO;
        assert!(!patience.exhausted());
        patience.pid = u32::MAX;
        assert!(!patience.exhausted());
        let _ = idle.kill();
        let _ = idle.wait();
    }
}
