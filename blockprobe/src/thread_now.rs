//! What a thread of another process is doing right now, and which epoll file
//! descriptors a process holds, from `/proc`: how the threads of a process that was
//! already running when tracing began are examined.

use blockprobe_common::syscalls::is_poller;

/// A thread's activity, from `/proc/PID/task/TID/syscall`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activity {
    /// On a CPU, running its own code.
    Running,
    /// Inside syscall `nr` with these first arguments.
    InSyscall { nr: u32, args: [u64; 2] },
    /// Off CPU outside any syscall (a page fault, stopped), or unknown.
    Other,
}

/// What thread `tid` of `pid` is doing now; `None` when it is gone. The kernel answers
/// from the thread's saved registers, never reading its memory: safe on the event pump.
pub fn activity(pid: u32, tid: u32) -> Option<Activity> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall")).ok()?;
    Some(parse_activity(&text))
}

/// The epoll fd thread `tid` of `pid` is polling now (in an epoll-family call), if any.
pub fn polled_fd(pid: u32, tid: u32) -> Option<u32> {
    activity(pid, tid)?.polled_fd()
}

impl Activity {
    /// The epoll fd polled, when in an epoll-family call.
    pub fn polled_fd(self) -> Option<u32> {
        match self {
            Activity::InSyscall { nr, args } if is_poller(u64::from(nr)) => Some(args[0] as u32),
            _ => None,
        }
    }
}

/// Parses the `syscall` file: `running`, `-1 SP PC`, or `NR ARG0 … ARG5 SP PC` (hex
/// arguments).
fn parse_activity(text: &str) -> Activity {
    let mut fields = text.split_whitespace();
    let first = fields.next().unwrap_or_default();
    if first == "running" {
        return Activity::Running;
    }
    let hex =
        |s: Option<&str>| s.and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok());
    match first.parse::<u32>() {
        Ok(nr) => match (hex(fields.next()), hex(fields.next())) {
            (Some(a0), Some(a1)) => Activity::InSyscall { nr, args: [a0, a1] },
            _ => Activity::Other,
        },
        Err(_) => Activity::Other,
    }
}

/// The epoll file descriptors process `pid` holds now, ascending.
pub fn epoll_fds(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let mut fds: Vec<u32> = entries
        .flatten()
        .filter(|e| {
            std::fs::read_link(e.path()).is_ok_and(|target| target.as_os_str() == EVENTPOLL)
        })
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    fds.sort_unstable();
    fds
}

/// What `/proc/PID/fd/N` links to for an epoll instance.
const EVENTPOLL: &str = "anon_inode:[eventpoll]";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_form_of_the_syscall_file() {
        assert_eq!(parse_activity("running\n"), Activity::Running);
        assert_eq!(parse_activity("-1 0x7ffd 0x7f00\n"), Activity::Other);
        assert_eq!(
            parse_activity("232 0x3 0x7f12 0x400 0xffffffff 0x0 0x0 0x7ffd 0x7f00\n"),
            Activity::InSyscall {
                nr: 232,
                args: [3, 0x7f12]
            }
        );
        assert_eq!(parse_activity(""), Activity::Other);
        assert_eq!(parse_activity("230 zz"), Activity::Other);
    }

    #[test]
    fn this_process_epoll_fds_are_found() {
        let before = epoll_fds(std::process::id());
        // SAFETY: creates a file descriptor this test owns and closes.
        let fd = unsafe { libc::epoll_create1(0) };
        assert!(fd >= 0, "an epoll instance");
        let after = epoll_fds(std::process::id());
        assert!(after.contains(&(fd as u32)), "{before:?} {after:?} {fd}");
        // SAFETY: the fd was opened above and is closed once.
        unsafe { libc::close(fd) };
    }

    #[test]
    fn a_sleeping_thread_is_in_its_syscall() {
        let (tx, rx) = std::sync::mpsc::channel();
        let sleeper = std::thread::spawn(move || {
            tx.send(nix::unistd::gettid().as_raw() as u32).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(300));
        });
        let tid = rx.recv().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        let nr = match activity(std::process::id(), tid) {
            Some(Activity::InSyscall { nr, .. }) => nr,
            other => panic!("the sleeping thread should be in a syscall: {other:?}"),
        };
        assert_eq!(nr, blockprobe_common::syscalls::nr::CLOCK_NANOSLEEP);
        assert_eq!(
            crate::proc_stat::thread_state(std::process::id(), tid),
            Some('S')
        );
        sleeper.join().unwrap();
        assert_eq!(activity(std::process::id(), tid), None);
    }
}
