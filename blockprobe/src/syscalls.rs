//! The syscalls blockprobe watches on loop threads, and what blocking in each means.

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

/// The epoll-family pollers an asyncio loop (selector or uvloop) parks in.
pub const POLLERS: [&str; 3] = ["epoll_wait", "epoll_pwait", "epoll_pwait2"];

/// Syscalls timed when a loop thread makes them off-await (x86_64 numbers).
pub const BLOCKING: [BlockingSyscall; 21] = [
    call("nanosleep", 35, Cause::Sleep),
    call("clock_nanosleep", 230, Cause::Sleep),
    call("read", 0, Cause::Io),
    call("pread64", 17, Cause::Io),
    call("readv", 19, Cause::Io),
    call("write", 1, Cause::Io),
    call("writev", 20, Cause::Io),
    call("recvfrom", 45, Cause::Io),
    call("recvmsg", 47, Cause::Io),
    call("recvmmsg", 299, Cause::Io),
    call("sendto", 44, Cause::Io),
    call("sendmsg", 46, Cause::Io),
    call("connect", 42, Cause::Io),
    call("accept", 43, Cause::Io),
    call("accept4", 288, Cause::Io),
    call("poll", 7, Cause::Io),
    call("ppoll", 271, Cause::Io),
    call("select", 23, Cause::Io),
    call("pselect6", 270, Cause::Io),
    call("fsync", 74, Cause::Io),
    call("fdatasync", 75, Cause::Io),
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
            assert!(BLOCKING[i + 1..].iter().all(|b| b.nr != a.nr), "{} twice", a.name);
        }
        assert_eq!(by_nr(libc::SYS_clock_nanosleep as u32).unwrap().name, "clock_nanosleep");
        assert_eq!(by_nr(libc::SYS_recvfrom as u32).unwrap().name, "recvfrom");
        assert_eq!(by_nr(libc::SYS_pselect6 as u32).unwrap().name, "pselect6");
        assert_eq!(by_nr(libc::SYS_fdatasync as u32).unwrap().cause, Cause::Io);
        assert!(by_nr(libc::SYS_getpid as u32).is_none());
    }
}
