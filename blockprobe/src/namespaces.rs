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

/// The threads of process `pid` as `(id in its own pid namespace, host tid)`.
fn thread_ids(pid: u32) -> impl Iterator<Item = (u32, u32)> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(move |tid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status"));
            Some((innermost_id(&status.ok()?)?, tid))
        })
}

/// Most thread ids [`HostTids`] remembers; past it, it starts afresh.
const MAX_REMEMBERED: usize = 1 << 16;

/// Host tids of namespaced threads, remembered: a GIL wait names its holder by namespace
/// id, and reading every `/proc/PID/task/*/status` for each wait would cost far more
/// than the wait's event. A miss (a new thread, or a reused id) reads the process's
/// threads afresh.
#[derive(Default)]
pub struct HostTids {
    by_ns_tid: std::collections::HashMap<(u32, u32), u32>,
}

impl HostTids {
    /// The host tid of the thread of process `pid` whose id in the process's own pid
    /// namespace is `ns_tid` (from memory while it is still that thread); `None` when no
    /// thread of it has that id (any more).
    pub fn get(&mut self, pid: u32, ns_tid: u32) -> Option<u32> {
        if let Some(&tid) = self.by_ns_tid.get(&(pid, ns_tid))
            && std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status"))
                .is_ok_and(|status| innermost_id(&status) == Some(ns_tid))
        {
            return Some(tid);
        }
        self.forget_process(pid);
        if self.by_ns_tid.len() >= MAX_REMEMBERED {
            self.by_ns_tid.clear();
        }
        self.by_ns_tid
            .extend(thread_ids(pid).map(|(ns, tid)| ((pid, ns), tid)));
        self.by_ns_tid.get(&(pid, ns_tid)).copied()
    }

    /// Forgets the threads of process `pid`.
    pub fn forget_process(&mut self, pid: u32) {
        self.by_ns_tid.retain(|&(p, _), _| p != pid);
    }
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
        let mut host_tids = HostTids::default();
        assert_eq!(host_tids.get(pid, tid), Some(tid));
        assert_eq!(host_tids.get(pid, tid), Some(tid), "remembered");
        assert_eq!(host_tids.get(pid, u32::MAX), None);
        host_tids.forget_process(pid);
        assert!(host_tids.by_ns_tid.is_empty());
    }
}
