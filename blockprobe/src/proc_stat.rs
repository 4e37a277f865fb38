//! What `/proc/PID/stat` says of a process or thread: when it started (which tells a
//! process from a later one that reused its pid), and whether it still runs.

/// The start time of process `pid` (clock ticks after boot), `None` when it is gone.
pub fn start_time(pid: u32) -> Option<u64> {
    parse_start_time(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Whether thread `tid` of process `pid` still exists and is no zombie.
pub fn thread_lives(pid: u32, tid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat"))
        .is_ok_and(|stat| parse_state(&stat).is_some_and(|s| s != "Z" && s != "X"))
}

/// Field 3 (the state letter) of a `stat` line.
fn parse_state(stat: &str) -> Option<&str> {
    stat.rsplit_once(')')?.1.split_whitespace().next()
}

/// Field 22 (`starttime`) of a `stat` line. The command name (field 2) is in
/// parentheses and may hold anything, spaces and parentheses too: fields are counted
/// from the last `)`.
fn parse_start_time(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    // `rest` starts with field 3 (the state).
    rest.split_whitespace().nth(22 - 3)?.parse().ok()
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
        assert_eq!(parse_state(line), Some("S"));
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
