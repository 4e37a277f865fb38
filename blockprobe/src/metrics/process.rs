//! blockprobe's own resource use, as the standard Prometheus `process_*` metrics.

use std::fmt::Write as _;

use crate::proc_stat;

/// A snapshot of this process's CPU time, memory and file descriptors.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SelfStats {
    /// User + system CPU time.
    pub cpu_seconds: f64,
    /// Resident set size.
    pub resident_bytes: u64,
    /// Virtual memory size.
    pub virtual_bytes: u64,
    /// Open file descriptors.
    pub open_fds: u64,
    /// Start time, seconds since the Unix epoch.
    pub start_time_seconds: f64,
}

impl SelfStats {
    /// Reads `/proc/self`; what cannot be read stays 0.
    pub fn read() -> SelfStats {
        let mut me = SelfStats::default();
        // SAFETY: sysconf only reads configuration values.
        let (ticks, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        let ticks = if ticks > 0 { ticks as f64 } else { 100.0 };
        let page = if page > 0 { page as u64 } else { 4096 };
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat")
            && let Some(f) = proc_stat::fields(&stat)
        {
            let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            me.cpu_seconds = (num(proc_stat::UTIME) + num(proc_stat::STIME)) as f64 / ticks;
            me.virtual_bytes = num(proc_stat::VSIZE);
            me.resident_bytes = num(proc_stat::RSS).saturating_mul(page);
            if let Some(boot) = boot_time() {
                me.start_time_seconds = boot as f64 + num(proc_stat::STARTTIME) as f64 / ticks;
            }
        }
        me.open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
        me
    }

    /// Appends the `process_*` metrics.
    pub fn render(&self, s: &mut String) {
        let rows: [(&str, &str, &str, String); 5] = [
            (
                "process_cpu_seconds_total",
                "counter",
                "Total user and system CPU time spent in seconds.",
                format!("{}", self.cpu_seconds),
            ),
            (
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory size in bytes.",
                self.resident_bytes.to_string(),
            ),
            (
                "process_virtual_memory_bytes",
                "gauge",
                "Virtual memory size in bytes.",
                self.virtual_bytes.to_string(),
            ),
            (
                "process_open_fds",
                "gauge",
                "Number of open file descriptors.",
                self.open_fds.to_string(),
            ),
            (
                "process_start_time_seconds",
                "gauge",
                "Start time of the process since unix epoch in seconds.",
                format!("{}", self.start_time_seconds),
            ),
        ];
        for (name, kind, help, value) in rows {
            let _ = writeln!(
                s,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
    }
}

fn boot_time() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_itself() {
        let me = SelfStats::read();
        assert!(me.resident_bytes > 1 << 20, "{me:?}");
        assert!(me.virtual_bytes >= me.resident_bytes, "{me:?}");
        assert!(me.open_fds >= 3, "{me:?}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            me.start_time_seconds > now - 3600.0 && me.start_time_seconds <= now + 1.0,
            "{me:?}"
        );
        let mut s = String::new();
        me.render(&mut s);
        assert!(s.contains("# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total "));
    }
}
