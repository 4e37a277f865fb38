//! What `/proc/PID/stat` says of a process or thread: its state, when it started (which
//! tells a process from a later one that reused its pid), whether it still runs, and the
//! CPU time it used. The kernel's own record of the task, never a read of its memory or
//! files: read on the event pump.

/// Index of the state letter among [`fields`].
const STATE: usize = 0;
/// Index of `utime` among [`fields`] (clock ticks in user mode).
pub const UTIME: usize = 11;
/// Index of `stime` among [`fields`] (clock ticks in kernel mode).
pub const STIME: usize = 12;
/// Index of `starttime` among [`fields`] (clock ticks after boot).
pub const STARTTIME: usize = 19;
/// Index of `vsize` among [`fields`] (bytes).
pub const VSIZE: usize = 20;
/// Index of `rss` among [`fields`] (pages).
pub const RSS: usize = 21;

/// The fields of a `stat` line from the 3rd (the state) on. The command name (field 2)
/// is in parentheses and may hold anything, spaces and parentheses too: fields are
/// counted from the last `)`.
pub fn fields(stat: &str) -> Option<Vec<&str>> {
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().collect())
}

/// The start time of process `pid` (clock ticks after boot), `None` when it is gone.
pub fn start_time(pid: u32) -> Option<u64> {
    parse_start_time(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The scheduler state letter of thread `tid` of `pid` (`R` runnable, `S`/`D` asleep,
/// `Z` zombie…); `None` when it is gone.
pub fn thread_state(pid: u32, tid: u32) -> Option<char> {
    parse_state(&std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?)
}

/// Whether thread `tid` of process `pid` still exists and is no zombie.
pub fn thread_lives(pid: u32, tid: u32) -> bool {
    thread_state(pid, tid).is_some_and(|s| s != 'Z' && s != 'X')
}

/// The CPU time (user + system) process `pid` has used.
pub fn cpu_time(pid: u32) -> Option<std::time::Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f = fields(&stat)?;
    let ticks = f.get(UTIME)?.parse::<u64>().ok()? + f.get(STIME)?.parse::<u64>().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .ok()?
        .max(1);
    Some(std::time::Duration::from_millis(ticks * 1000 / hz))
}

/// The state letter of a `stat` line.
fn parse_state(stat: &str) -> Option<char> {
    fields(stat)?.get(STATE)?.chars().next()
}

/// `starttime` of a `stat` line.
fn parse_start_time(stat: &str) -> Option<u64> {
    fields(stat)?.get(STARTTIME)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_start_time_after_any_command_name() {
        let line = "4242 (a) (b c) S 1 4242 4242 0 -1 4194560 700 0 0 0 5 3 0 0 20 0 1 0 987654 10000 100 18446744073709551615";
        assert_eq!(parse_start_time(line), Some(987_654));
        assert_eq!(parse_start_time("4242 (x) S 1"), None);
        let own = start_time(std::process::id()).unwrap();
        assert!(own > 0);
        assert_eq!(start_time(std::process::id()), Some(own));
        assert_eq!(start_time(u32::MAX), None);
        assert_eq!(parse_state(line), Some('S'));
    }

    #[test]
    fn this_thread_lives_and_an_exited_one_does_not() {
        let pid = std::process::id();
        assert!(thread_lives(pid, nix::unistd::gettid().as_raw() as u32));
        let exited = std::thread::spawn(|| nix::unistd::gettid().as_raw() as u32)
            .join()
            .unwrap();
        assert!(!thread_lives(pid, exited));
        assert!(!thread_lives(pid, u32::MAX));
    }
}
