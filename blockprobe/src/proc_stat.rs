//! What `/proc/PID/stat` says of a process: here, when it started, which tells a process
//! from a later one that reused its pid.

/// The start time of process `pid` (clock ticks after boot), `None` when it is gone.
pub fn start_time(pid: u32) -> Option<u64> {
    parse_start_time(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
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
    }
}
