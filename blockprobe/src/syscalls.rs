//! The syscalls blockprobe watches on loop threads, and what blocking in each means.

use blockprobe_common::syscalls::nr;

use crate::model::Cause;

/// A syscall whose blocking stalls an event loop.
#[derive(Clone, Copy, Debug)]
pub struct BlockingSyscall {
    /// Name, as in the `syscalls:sys_enter_<name>` tracepoint.
    pub name: &'static str,
    /// x86_64 syscall number.
    pub nr: u32,
    /// What time blocked in it counts as.
    pub cause: Cause,
}

const fn call(name: &'static str, nr: u32, cause: Cause) -> BlockingSyscall {
    BlockingSyscall { name, nr, cause }
}

/// Names and causes of the syscalls the kernel side times (`blockprobe_common::syscalls`).
pub const BLOCKING: [BlockingSyscall; 21] = [
    call("nanosleep", nr::NANOSLEEP, Cause::Sleep),
    call("clock_nanosleep", nr::CLOCK_NANOSLEEP, Cause::Sleep),
    call("read", nr::READ, Cause::Io),
    call("pread64", nr::PREAD64, Cause::Io),
    call("readv", nr::READV, Cause::Io),
    call("write", nr::WRITE, Cause::Io),
    call("writev", nr::WRITEV, Cause::Io),
    call("recvfrom", nr::RECVFROM, Cause::Io),
    call("recvmsg", nr::RECVMSG, Cause::Io),
    call("recvmmsg", nr::RECVMMSG, Cause::Io),
    call("sendto", nr::SENDTO, Cause::Io),
    call("sendmsg", nr::SENDMSG, Cause::Io),
    call("connect", nr::CONNECT, Cause::Io),
    call("accept", nr::ACCEPT, Cause::Io),
    call("accept4", nr::ACCEPT4, Cause::Io),
    call("poll", nr::POLL, Cause::Io),
    call("ppoll", nr::PPOLL, Cause::Io),
    call("select", nr::SELECT, Cause::Io),
    call("pselect6", nr::PSELECT6, Cause::Io),
    call("fsync", nr::FSYNC, Cause::Io),
    call("fdatasync", nr::FDATASYNC, Cause::Io),
];

/// The watched syscall with number `nr`.
pub fn by_nr(nr: u32) -> Option<&'static BlockingSyscall> {
    BLOCKING.iter().find(|s| s.nr == nr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_unique_and_match_libc() {
        for (i, a) in BLOCKING.iter().enumerate() {
            assert!(
                BLOCKING[i + 1..].iter().all(|b| b.nr != a.nr),
                "{} twice",
                a.name
            );
        }
        assert_eq!(
            by_nr(libc::SYS_clock_nanosleep as u32).unwrap().name,
            "clock_nanosleep"
        );
        assert_eq!(by_nr(libc::SYS_recvfrom as u32).unwrap().name, "recvfrom");
        assert_eq!(by_nr(libc::SYS_pselect6 as u32).unwrap().name, "pselect6");
        assert_eq!(by_nr(libc::SYS_fdatasync as u32).unwrap().cause, Cause::Io);
        assert!(by_nr(libc::SYS_getpid as u32).is_none());
        for s in BLOCKING {
            assert!(
                blockprobe_common::syscalls::is_blocking(u64::from(s.nr)),
                "{}",
                s.name
            );
        }
        let timed = (0..512)
            .filter(|&n| blockprobe_common::syscalls::is_blocking(n))
            .count();
        assert_eq!(
            timed,
            BLOCKING.len(),
            "kernel side times a syscall without a name"
        );
        assert!(blockprobe_common::syscalls::is_poller(
            libc::SYS_epoll_pwait as u64
        ));
        assert!(!blockprobe_common::syscalls::is_poller(
            libc::SYS_poll as u64
        ));
    }
}
