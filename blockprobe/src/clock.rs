//! Converting the kernel's monotonic timestamps to wall-clock time.
//!
//! The offset between the two clocks changes when the wall clock is stepped (chrony,
//! `date -s`, a VM resumed): a long session measures it again every second
//! ([`Clock::refresh`]), so a step shifts the timestamps of at most that second.

use nix::time::{ClockId, clock_gettime};

/// The offset between CLOCK_MONOTONIC (what BPF timestamps use) and CLOCK_REALTIME.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    realtime_minus_monotonic_ns: i128,
}

fn read_ns(id: ClockId) -> i128 {
    let t = clock_gettime(id).expect("clock_gettime on a standard clock cannot fail");
    i128::from(t.tv_sec()) * 1_000_000_000 + i128::from(t.tv_nsec())
}

impl Clock {
    /// Measures the offset now: the wall clock read between two monotonic readings,
    /// against their midpoint.
    pub fn now() -> Self {
        let before = read_ns(ClockId::CLOCK_MONOTONIC);
        let real = read_ns(ClockId::CLOCK_REALTIME);
        let after = read_ns(ClockId::CLOCK_MONOTONIC);
        Clock {
            realtime_minus_monotonic_ns: real - (before + after) / 2,
        }
    }

    /// Measures the offset again (the wall clock may have been stepped since).
    pub fn refresh(&mut self) {
        *self = Clock::now();
    }

    /// The current monotonic time in nanoseconds (the BPF clock).
    pub fn monotonic_ns(self) -> u64 {
        read_ns(ClockId::CLOCK_MONOTONIC) as u64
    }

    /// Wall-clock nanoseconds since the Unix epoch for a monotonic timestamp.
    pub fn to_unix_ns(self, monotonic_ns: u64) -> u64 {
        (i128::from(monotonic_ns) + self.realtime_minus_monotonic_ns).max(0) as u64
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn converts_now_to_now() {
        let clock = super::Clock::now();
        let unix = clock.to_unix_ns(clock.monotonic_ns());
        let system = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        assert!(unix.abs_diff(system) < 50_000_000, "{unix} vs {system}");
    }

    #[test]
    fn a_refresh_follows_a_step_of_the_wall_clock() {
        // A clock measured before the wall clock was stepped back an hour.
        let now = super::Clock::now();
        let mut stale = super::Clock {
            realtime_minus_monotonic_ns: now.realtime_minus_monotonic_ns + 3_600_000_000_000,
        };
        let t = now.monotonic_ns();
        assert_eq!(stale.to_unix_ns(t) - now.to_unix_ns(t), 3_600_000_000_000);
        stale.refresh();
        assert!(stale.to_unix_ns(t).abs_diff(now.to_unix_ns(t)) < 50_000_000);
    }
}
