//! Pids as a traced process sees them. A process in a pid namespace of its own (a
//! container) has a pid and thread ids there besides the host's: blockprobe reports host
//! ids, and says which pid the process knows itself by; ids the interpreter records
//! (`threading.get_native_id()`) are namespace ids, turned into host ids.

/// The pid process `pid` (host pid namespace) has in its own pid namespace, when that
/// is not the host's.
pub fn ns_pid(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    innermost_id(&status).filter(|&ns| ns != pid)
}

/// The host tid of the thread of process `pid` whose id in the process's own pid
/// namespace is `ns_tid`; `None` when no thread of it has that id (any more).
pub fn host_tid(pid: u32, ns_tid: u32) -> Option<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .find(|tid| {
            std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status"))
                .is_ok_and(|status| innermost_id(&status) == Some(ns_tid))
        })
}

/// The id in the innermost pid namespace, from the `NSpid:` line of a `/proc` status
/// file (host first, innermost last).
fn innermost_id(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("NSpid:"))?
        .split_whitespace()
        .last()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn innermost_ids_come_last() {
        let nested = "Name:\tpython3\nNSpid:\t4242\t17\t1\nNSsid:\t1\n";
        assert_eq!(innermost_id(nested), Some(1));
        assert_eq!(innermost_id("NSpid:\t77\n"), Some(77));
        assert_eq!(innermost_id("Name:\tx\n"), None);
    }

    #[test]
    fn a_host_process_has_no_ids_of_its_own() {
        let pid = std::process::id();
        let tid = nix::unistd::gettid().as_raw() as u32;
        assert_eq!(ns_pid(pid), None);
        assert_eq!(host_tid(pid, tid), Some(tid));
        assert_eq!(host_tid(pid, u32::MAX), None);
    }
}
