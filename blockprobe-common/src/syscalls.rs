//! The x86_64 syscalls the kernel side reacts to, shared so both sides agree.

/// Syscall numbers (x86_64).
pub mod nr {
    #![allow(missing_docs)]
    pub const READ: u32 = 0;
    pub const WRITE: u32 = 1;
    pub const CLOSE: u32 = 3;
    pub const POLL: u32 = 7;
    pub const PREAD64: u32 = 17;
    pub const READV: u32 = 19;
    pub const WRITEV: u32 = 20;
    pub const SELECT: u32 = 23;
    pub const NANOSLEEP: u32 = 35;
    pub const CONNECT: u32 = 42;
    pub const WAIT4: u32 = 61;
    pub const ACCEPT: u32 = 43;
    pub const SENDTO: u32 = 44;
    pub const RECVFROM: u32 = 45;
    pub const SENDMSG: u32 = 46;
    pub const RECVMSG: u32 = 47;
    pub const FSYNC: u32 = 74;
    pub const FDATASYNC: u32 = 75;
    pub const FUTEX: u32 = 202;
    pub const CLOCK_NANOSLEEP: u32 = 230;
    pub const EPOLL_WAIT: u32 = 232;
    pub const PSELECT6: u32 = 270;
    pub const PPOLL: u32 = 271;
    pub const WAITID: u32 = 247;
    pub const EPOLL_PWAIT: u32 = 281;
    pub const ACCEPT4: u32 = 288;
    pub const RECVMMSG: u32 = 299;
    pub const EPOLL_PWAIT2: u32 = 441;
    pub const FUTEX_WAITV: u32 = 449;
    pub const FUTEX_WAIT: u32 = 455;
    pub const OPEN: u32 = 2;
    pub const PWRITE64: u32 = 18;
    pub const SENDFILE: u32 = 40;
    pub const FCNTL: u32 = 72;
    pub const FLOCK: u32 = 73;
    pub const OPENAT: u32 = 257;
    pub const SPLICE: u32 = 275;
    pub const SYNC_FILE_RANGE: u32 = 277;
    pub const PREADV: u32 = 295;
    pub const PWRITEV: u32 = 296;
    pub const SYNCFS: u32 = 306;
    pub const SENDMMSG: u32 = 307;
    pub const COPY_FILE_RANGE: u32 = 326;
    pub const PREADV2: u32 = 327;
    pub const PWRITEV2: u32 = 328;
    pub const OPENAT2: u32 = 437;
}

/// Whether `nr` is one of the epoll-family pollers an asyncio loop parks in.
pub const fn is_poller(nr: u64) -> bool {
    nr <= u32::MAX as u64
        && matches!(
            nr as u32,
            nr::EPOLL_WAIT | nr::EPOLL_PWAIT | nr::EPOLL_PWAIT2
        )
}

/// Whether `nr` is a futex wait (a lock, a condition, or the GIL).
pub const fn is_futex(nr: u64) -> bool {
    nr <= u32::MAX as u64 && matches!(nr as u32, nr::FUTEX | nr::FUTEX_WAITV | nr::FUTEX_WAIT)
}

/// Whether futex operation `op` (the `futex` syscall's second argument) makes the caller
/// wait: `FUTEX_WAIT` (what glibc's mutexes use) or `FUTEX_WAIT_BITSET` (its condition
/// variables, so CPython's GIL), with or without the private and realtime-clock flags.
/// A wake never blocks.
pub const fn futex_op_waits(op: u32) -> bool {
    /// `FUTEX_PRIVATE_FLAG | FUTEX_CLOCK_REALTIME`.
    const FLAGS: u32 = 128 | 256;
    /// `FUTEX_WAIT`.
    const WAIT: u32 = 0;
    /// `FUTEX_WAIT_BITSET`.
    const WAIT_BITSET: u32 = 9;
    matches!(op & !FLAGS, WAIT | WAIT_BITSET)
}

/// What blocking in syscall `nr` counts as (a [`crate::cause`] index); futex waits on
/// the GIL are told apart by address, by the caller.
pub const fn cause_of(nr: u32) -> usize {
    match nr {
        nr::NANOSLEEP | nr::CLOCK_NANOSLEEP => crate::cause::SLEEP,
        nr::FUTEX | nr::FUTEX_WAITV | nr::FUTEX_WAIT => crate::cause::LOCK,
        // fcntl blocks only to take a record lock (F_SETLKW); flock to take a file lock.
        nr::FCNTL | nr::FLOCK => crate::cause::LOCK,
        nr::WAIT4 | nr::WAITID => crate::cause::WAIT,
        // A poll that is not the loop's own (a callback's sync selector) waits on fds.
        _ if is_blocking(nr as u64) || is_poller(nr as u64) => crate::cause::IO,
        _ => crate::cause::OTHER,
    }
}

/// Which argument of syscall `nr` is its number of file descriptors, when waiting on no
/// file descriptor makes it a plain sleep (`select(0, …)`, `poll(NULL, 0, …)`: how
/// `time.sleep` sleeps before Python 3.11).
pub const fn fd_count_arg(nr: u32) -> Option<usize> {
    match nr {
        nr::SELECT | nr::PSELECT6 => Some(0),
        nr::POLL | nr::PPOLL => Some(1),
        _ => None,
    }
}

/// The file type bits of an inode's mode (`S_IFMT`).
pub const S_IFMT: u32 = 0o170_000;

/// Whether the first argument of timed syscall `nr` is the file descriptor it waits on.
pub const fn takes_fd(nr: u32) -> bool {
    matches!(
        nr,
        nr::READ
            | nr::WRITE
            | nr::PREAD64
            | nr::READV
            | nr::WRITEV
            | nr::CONNECT
            | nr::ACCEPT
            | nr::SENDTO
            | nr::RECVFROM
            | nr::SENDMSG
            | nr::RECVMSG
            | nr::FSYNC
            | nr::FDATASYNC
            | nr::ACCEPT4
            | nr::RECVMMSG
            | nr::PWRITE64
            | nr::SENDFILE
            | nr::FCNTL
            | nr::FLOCK
            | nr::SPLICE
            | nr::SYNC_FILE_RANGE
            | nr::PREADV
            | nr::PWRITEV
            | nr::SYNCFS
            | nr::SENDMMSG
            | nr::COPY_FILE_RANGE
            | nr::PREADV2
            | nr::PWRITEV2
    )
}

/// Whether `nr` is a syscall whose blocking is timed when a loop thread makes it off-await.
pub const fn is_blocking(nr: u64) -> bool {
    nr <= u32::MAX as u64
        && (takes_fd(nr as u32)
            || matches!(
                nr as u32,
                nr::WAIT4
                    | nr::WAITID
                    | nr::FUTEX
                    | nr::FUTEX_WAITV
                    | nr::FUTEX_WAIT
                    | nr::POLL
                    | nr::SELECT
                    | nr::NANOSLEEP
                    | nr::CLOCK_NANOSLEEP
                    | nr::PSELECT6
                    | nr::PPOLL
                    | nr::OPEN
                    | nr::OPENAT
                    | nr::OPENAT2
            ))
}

/// What blocking call `nr` with first arguments `args` counts as (a [`crate::cause`]
/// index) in a process whose GIL state is at `gil_addr` (0: unknown): a select/poll on no
/// file descriptor sleeps, a futex wait inside the GIL state waits for the GIL.
pub const fn call_cause(nr: u32, args: [u64; 2], gil_addr: u64) -> usize {
    if let Some(arg) = fd_count_arg(nr)
        && args[arg] == 0
    {
        return crate::cause::SLEEP;
    }
    if is_futex(nr as u64)
        && futex_op_waits(args[1] as u32)
        && gil_addr != 0
        && args[0] >= gil_addr
        && args[0] < gil_addr + crate::config::GIL_STATE_SIZE
    {
        return crate::cause::GIL;
    }
    cause_of(nr)
}

#[cfg(test)]
mod tests {
    use super::futex_op_waits;

    #[test]
    fn only_futex_waits_wait() {
        // FUTEX_WAIT, FUTEX_WAIT_PRIVATE, FUTEX_WAIT_BITSET_PRIVATE (glibc's condition
        // variables), with FUTEX_CLOCK_REALTIME.
        for op in [0, 128, 9 | 128, 9 | 128 | 256] {
            assert!(futex_op_waits(op), "{op}");
        }
        // FUTEX_WAKE(_PRIVATE), FUTEX_WAKE_BITSET_PRIVATE, FUTEX_REQUEUE, FUTEX_WAKE_OP.
        for op in [1, 129, 10 | 128, 3, 5 | 128] {
            assert!(!futex_op_waits(op), "{op}");
        }
    }
}
