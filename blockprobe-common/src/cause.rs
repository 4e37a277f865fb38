//! Where a stalled loop thread's time went, as indices into per-stall time arrays.

/// On CPU (running Python or C code). Computed by userspace as the remainder.
pub const CPU: usize = 0;
/// Runnable but waiting for a CPU (preempted, or woken and not yet running).
pub const RUNQUEUE: usize = 1;
/// Sleeping in nanosleep/clock_nanosleep.
pub const SLEEP: usize = 2;
/// Blocked in file, pipe or socket I/O (or select/poll on them).
pub const IO: usize = 3;
/// Blocked on a futex that is not the GIL (threading locks, queues, conditions).
pub const LOCK: usize = 4;
/// Waiting to take the GIL (a futex inside the interpreter's GIL state).
pub const GIL: usize = 5;
/// Waiting for a child process (wait4/waitid).
pub const WAIT: usize = 6;
/// Off CPU for any other reason (page faults, untracked syscalls).
pub const OTHER: usize = 7;
/// Stopped from outside: a stop signal (SIGSTOP, SIGTSTP), a ptrace stop (a debugger,
/// `strace -p`, `py-spy dump`) or the cgroup freezer (`docker pause`). Time the code did
/// not spend, never blamed on it.
pub const STOPPED: usize = 8;
/// Number of causes.
pub const COUNT: usize = 9;
