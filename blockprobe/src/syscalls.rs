//! Names of the syscalls the kernel side times (numbers in `blockprobe_common::syscalls`).

use blockprobe_common::syscalls::nr;

/// Name of every timed syscall (pollers too: a callback's own selector), by x86_64 number.
const NAMES: [(u32, &str); 45] = [
    (nr::NANOSLEEP, "nanosleep"),
    (nr::CLOCK_NANOSLEEP, "clock_nanosleep"),
    (nr::READ, "read"),
    (nr::PREAD64, "pread64"),
    (nr::READV, "readv"),
    (nr::WRITE, "write"),
    (nr::WRITEV, "writev"),
    (nr::RECVFROM, "recvfrom"),
    (nr::RECVMSG, "recvmsg"),
    (nr::RECVMMSG, "recvmmsg"),
    (nr::SENDTO, "sendto"),
    (nr::SENDMSG, "sendmsg"),
    (nr::CONNECT, "connect"),
    (nr::ACCEPT, "accept"),
    (nr::ACCEPT4, "accept4"),
    (nr::POLL, "poll"),
    (nr::PPOLL, "ppoll"),
    (nr::SELECT, "select"),
    (nr::PSELECT6, "pselect6"),
    (nr::FSYNC, "fsync"),
    (nr::FDATASYNC, "fdatasync"),
    (nr::FUTEX, "futex"),
    (nr::FUTEX_WAITV, "futex_waitv"),
    (nr::FUTEX_WAIT, "futex_wait"),
    (nr::WAIT4, "wait4"),
    (nr::WAITID, "waitid"),
    (nr::EPOLL_WAIT, "epoll_wait"),
    (nr::EPOLL_PWAIT, "epoll_pwait"),
    (nr::EPOLL_PWAIT2, "epoll_pwait2"),
    (nr::OPEN, "open"),
    (nr::OPENAT, "openat"),
    (nr::OPENAT2, "openat2"),
    (nr::PWRITE64, "pwrite64"),
    (nr::PREADV, "preadv"),
    (nr::PWRITEV, "pwritev"),
    (nr::PREADV2, "preadv2"),
    (nr::PWRITEV2, "pwritev2"),
    (nr::SENDFILE, "sendfile"),
    (nr::SENDMMSG, "sendmmsg"),
    (nr::SPLICE, "splice"),
    (nr::COPY_FILE_RANGE, "copy_file_range"),
    (nr::SYNC_FILE_RANGE, "sync_file_range"),
    (nr::SYNCFS, "syncfs"),
    (nr::FCNTL, "fcntl"),
    (nr::FLOCK, "flock"),
];

/// The name of timed syscall `nr`.
pub fn name(nr: u32) -> Option<&'static str> {
    NAMES.iter().find(|(n, _)| *n == nr).map(|(_, name)| *name)
}

#[cfg(test)]
mod tests {
    use blockprobe_common::syscalls::{cause_of, is_blocking, is_poller};

    use super::*;

    #[test]
    fn every_timed_syscall_has_its_libc_name() {
        let timed = |n: u64| is_blocking(n) || is_poller(n);
        let count = (0..1024).filter(|&n| timed(n)).count();
        assert_eq!(count, NAMES.len(), "a timed syscall has no name");
        for (nr, name) in NAMES {
            assert!(timed(u64::from(nr)), "{name} is named but not timed");
        }
        assert_eq!(
            name(libc::SYS_clock_nanosleep as u32),
            Some("clock_nanosleep")
        );
        assert_eq!(name(libc::SYS_recvfrom as u32), Some("recvfrom"));
        assert_eq!(name(libc::SYS_futex as u32), Some("futex"));
        assert_eq!(name(libc::SYS_waitid as u32), Some("waitid"));
        assert_eq!(
            name(libc::SYS_copy_file_range as u32),
            Some("copy_file_range")
        );
        assert_eq!(name(libc::SYS_openat2 as u32), Some("openat2"));
        assert_eq!(name(libc::SYS_getpid as u32), None);
    }

    #[test]
    fn causes_of_syscalls() {
        use blockprobe_common::cause;
        assert_eq!(cause_of(libc::SYS_nanosleep as u32), cause::SLEEP);
        assert_eq!(cause_of(libc::SYS_recvmsg as u32), cause::IO);
        assert_eq!(cause_of(libc::SYS_fsync as u32), cause::IO);
        assert_eq!(cause_of(libc::SYS_futex as u32), cause::LOCK);
        assert_eq!(cause_of(libc::SYS_wait4 as u32), cause::WAIT);
        assert_eq!(cause_of(libc::SYS_epoll_wait as u32), cause::IO);
        assert_eq!(cause_of(libc::SYS_openat as u32), cause::IO);
        assert_eq!(cause_of(libc::SYS_flock as u32), cause::LOCK);
        assert_eq!(cause_of(libc::SYS_getpid as u32), cause::OTHER);
    }

    #[test]
    fn causes_of_calls_by_their_arguments() {
        use blockprobe_common::{cause, syscalls::call_cause};
        let gil = 0x1000;
        let select = libc::SYS_select as u32;
        assert_eq!(call_cause(select, [0, 0], gil), cause::SLEEP);
        assert_eq!(call_cause(select, [4, 0], gil), cause::IO);
        let poll = libc::SYS_poll as u32;
        assert_eq!(call_cause(poll, [0x7f00, 0], gil), cause::SLEEP);
        let futex = libc::SYS_futex as u32;
        assert_eq!(call_cause(futex, [gil + 8, 0], gil), cause::GIL);
        assert_eq!(call_cause(futex, [gil + 4096, 0], gil), cause::LOCK);
        assert_eq!(call_cause(futex, [gil + 8, 0], 0), cause::LOCK);
        assert_eq!(
            call_cause(libc::SYS_clock_nanosleep as u32, [0, 0], gil),
            cause::SLEEP
        );
    }
}
