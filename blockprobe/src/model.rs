//! What blockprobe reports, independent of how it was measured or rendered.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The name of a frame that could not be read (a frame pointer or a code object).
pub const UNREADABLE: &str = "<unreadable>";

/// One symbolized Python frame.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Frame {
    /// The code object's qualified name (`co_qualname`, or `co_name` before 3.11).
    pub function: String,
    /// The code object's file name (`co_filename`).
    pub file: String,
    /// The line being executed (0 when unknown).
    pub line: u32,
}

impl Frame {
    /// A frame whose code object could not be read: `<unreadable>` in `<unknown>`.
    pub fn unreadable() -> Frame {
        Frame {
            function: UNREADABLE.into(),
            file: "<unknown>".into(),
            line: 0,
        }
    }
}

/// Why a loop was stuck.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Cause {
    /// Running on a CPU (Python or C code).
    Cpu,
    /// Runnable but waiting for a CPU (CPU contention, cgroup throttling).
    Runqueue,
    /// Sleeping (`time.sleep`, nanosleep).
    Sleep,
    /// Blocking I/O on a file, pipe or socket.
    Io,
    /// Waiting on a lock (a futex that is not the GIL).
    Lock,
    /// Waiting to take the GIL while another thread held it.
    Gil,
    /// Waiting for a child process.
    Wait,
    /// Off CPU for another reason, or not known.
    Other,
    /// Stopped from outside (SIGSTOP, a ptrace stop, the cgroup freezer): never blamed
    /// on code.
    Stopped,
}

/// Adds the stall time by cause of `from` to `into` (saturating): exact, associative
/// and commutative.
pub fn add_causes(into: &mut BTreeMap<Cause, u64>, from: &BTreeMap<Cause, u64>) {
    for (&cause, &ns) in from {
        let slot = into.entry(cause).or_insert(0);
        *slot = slot.saturating_add(ns);
    }
}

/// The cause mix of stall time `total_ns` with time per cause `causes` (a function's,
/// or one stall's in the live stream): shares of the stall time, largest first, e.g.
/// `sleep 75%, io 13%, running 12%` (`-` when nothing is known). `running` is time no
/// cause accounts for (reports of blockprobe versions that measured only blocking
/// syscalls). The shares add up to 100% (largest-remainder rounding); those that round
/// to 0% are left out.
pub fn cause_mix(total_ns: u64, causes: &BTreeMap<Cause, u64>) -> String {
    let total = total_ns as u128;
    let blocked: u128 = causes.values().map(|&v| v as u128).sum();
    let denom = total.max(blocked);
    if denom == 0 {
        return "-".into();
    }
    let mut shares: Vec<(&str, u128)> = causes
        .iter()
        .map(|(c, &ns)| (c.as_str(), ns as u128))
        .collect();
    shares.push(("running", denom - blocked));
    // (percent, remainder, name): floors first, then the points left go to the largest
    // remainders (ties in cause order, "running" last).
    let mut parts: Vec<(u128, u128, &str)> = shares
        .iter()
        .map(|&(name, ns)| (ns * 100 / denom, ns * 100 % denom, name))
        .collect();
    let left = 100u128.saturating_sub(parts.iter().map(|p| p.0).sum());
    let mut order: Vec<usize> = (0..parts.len()).collect();
    order.sort_by(|&a, &b| parts[b].1.cmp(&parts[a].1));
    for &i in order.iter().take(left as usize) {
        parts[i].0 += 1;
    }
    parts.retain(|p| p.0 > 0);
    // Largest first; ties in cause order ("running" last).
    parts.sort_by_key(|p| std::cmp::Reverse(p.0));
    if parts.is_empty() {
        return "-".into();
    }
    parts
        .iter()
        .map(|(p, _, name)| format!("{name} {p}%"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Cause {
    /// Every cause, indexed like `blockprobe_common::cause`.
    pub const ALL: [Cause; blockprobe_common::cause::COUNT] = [
        Cause::Cpu,
        Cause::Runqueue,
        Cause::Sleep,
        Cause::Io,
        Cause::Lock,
        Cause::Gil,
        Cause::Wait,
        Cause::Other,
        Cause::Stopped,
    ];

    /// The cause at `blockprobe_common::cause` index `index` (`Other` when out of range).
    pub fn from_index(index: usize) -> Cause {
        Cause::ALL.get(index).copied().unwrap_or(Cause::Other)
    }

    /// The name used in reports and live output.
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Cpu => "cpu",
            Cause::Runqueue => "runqueue",
            Cause::Sleep => "sleep",
            Cause::Io => "io",
            Cause::Lock => "lock",
            Cause::Gil => "gil",
            Cause::Wait => "wait",
            Cause::Other => "other",
            Cause::Stopped => "stopped",
        }
    }
}

/// What a file descriptor a blocking call waited on is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FdKind {
    /// A regular file.
    File,
    /// A socket.
    Socket,
    /// A pipe or FIFO.
    Pipe,
    /// A character device (a terminal, `/dev/…`).
    Char,
    /// A block device.
    Block,
    /// A directory.
    Dir,
}

impl FdKind {
    /// The kind of an inode from its file type bits (`S_IFMT` of `st_mode`); `None` for
    /// 0 (unknown) and anything else.
    pub fn from_mode(mode: u32) -> Option<FdKind> {
        Some(match mode & blockprobe_common::syscalls::S_IFMT {
            0o100_000 => FdKind::File,
            0o140_000 => FdKind::Socket,
            0o010_000 => FdKind::Pipe,
            0o020_000 => FdKind::Char,
            0o060_000 => FdKind::Block,
            0o040_000 => FdKind::Dir,
            _ => return None,
        })
    }

    /// The name used in reports and live output.
    pub fn as_str(self) -> &'static str {
        match self {
            FdKind::File => "file",
            FdKind::Socket => "socket",
            FdKind::Pipe => "pipe",
            FdKind::Char => "char",
            FdKind::Block => "block",
            FdKind::Dir => "dir",
        }
    }
}

/// What a stall's `stack` and `culprit` come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CulpritFrom {
    /// Evidence of the main cause: the stack with the most time in its blocking calls
    /// (long ones, and short ones added up), the commonest stack of the CPU samples, or
    /// the GIL holder's stack.
    Evidence,
    /// No evidence of the main cause: the latest stack seen of the loop in the stall
    /// (a blocking call or a sample of a lesser cause), where the loop was last known
    /// to be before the stall ended.
    LastSeen,
}

/// Blocking calls of one cause, each too short to be evidence alone (below a tenth of
/// the threshold), that add up to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShortCalls {
    /// How many calls.
    pub calls: u32,
    /// Their total time.
    pub total_ns: u64,
}

/// One stall: a loop iteration whose off-await time reached the threshold.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stall {
    /// Process id (host pid namespace).
    pub pid: u32,
    /// Thread id of the loop thread.
    pub tid: u32,
    /// The process's command name.
    pub comm: String,
    /// Wall-clock time the stall began, nanoseconds since the Unix epoch.
    pub start_unix_ns: u64,
    /// Off-await time: from leaving the poller to coming back.
    pub duration_ns: u64,
    /// The main reason (largest share of the stall).
    pub cause: Cause,
    /// The blocking syscall that took longest, if any.
    pub syscall: Option<String>,
    /// What that syscall's file descriptor was (file, socket, pipe, …), when it takes one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fd_kind: Option<FdKind>,
    /// The stall's duration split by cause: on CPU (`cpu`), runnable but waiting for a
    /// CPU (`runqueue`), and off CPU by reason; the parts add up to `duration_ns`.
    pub causes: std::collections::BTreeMap<Cause, u64>,
    /// The loop thread's own Python stack while stalled, innermost first: where it made
    /// the longest blocking call of the main cause, where it waited for the GIL, or its
    /// commonest sampled stack when running (see `culprit_from` for stalls without
    /// evidence of their main cause).
    pub stack: Vec<Frame>,
    /// Who is to blame: the innermost first-party frame (not stdlib, not site-packages)
    /// of `stack`, or of `gil_holder_stack` for GIL stalls, if any.
    pub culprit: Option<Frame>,
    /// When the main cause's evidence includes many short calls (each below a tenth of
    /// the threshold, summed in the kernel): how many were reported and their total
    /// time. The stack blamed is the one with the most time in the cause's calls, long
    /// and short.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub short_calls: Option<ShortCalls>,
    /// What `stack` and `culprit` come from; absent when there was nothing to go on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub culprit_from: Option<CulpritFrom>,
    /// For GIL stalls: the thread that held the GIL, by host tid like `tid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gil_holder_tid: Option<u32>,
    /// For GIL stalls: the holder's Python stack when the wait began, innermost first
    /// (its first-party frame is the culprit).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gil_holder_stack: Vec<Frame>,
    /// The asyncio task the loop was running (3.14+, from the interpreter's running-task
    /// state), as `Task.get_name()` would say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// For CPU and run-queue stalls: how many timer samples found the loop running.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cpu_samples: u32,
    /// How many of those samples had `stack`'s sequence of functions (the commonest).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub stack_samples: u32,
    /// The loop was still stuck when tracing stopped: the stall lasted at least this
    /// long, and its stack is where the loop was stuck then.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ongoing: bool,
    /// The loop was already off-await when tracing began: the stall began at least as
    /// early as `start_unix_ns`, so `duration_ns` is a lower bound.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub started_before_tracing: bool,
}

impl Stall {
    /// A stall of loop thread `tid` of `pid` (`comm`), from `start_unix_ns` for
    /// `duration_ns`, split by cause as `causes` (`cause` the main one), with nothing
    /// blamed yet: no syscall, stack, culprit, GIL holder, task or samples.
    pub fn unblamed(
        pid: u32,
        tid: u32,
        comm: String,
        start_unix_ns: u64,
        duration_ns: u64,
        cause: Cause,
        causes: BTreeMap<Cause, u64>,
    ) -> Self {
        Stall {
            pid,
            tid,
            comm,
            start_unix_ns,
            duration_ns,
            cause,
            syscall: None,
            fd_kind: None,
            causes,
            stack: Vec::new(),
            culprit: None,
            short_calls: None,
            culprit_from: None,
            gil_holder_tid: None,
            gil_holder_stack: Vec::new(),
            task: None,
            cpu_samples: 0,
            stack_samples: 0,
            ongoing: false,
            started_before_tracing: false,
        }
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The frames and stalls the tests of every module build on.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::{Cause, CulpritFrom, Frame, Stall};

    /// Frame `function` at `file:line`.
    pub(crate) fn frame(function: &str, file: &str, line: u32) -> Frame {
        Frame {
            function: function.into(),
            file: file.into(),
            line,
        }
    }

    /// A mostly sleeping stall of `dur` from `start` in `pid` (thread `pid + 1`), blamed on
    /// `culprit` from evidence when given.
    pub(crate) fn stall(pid: u32, start: u64, dur: u64, culprit: Option<Frame>) -> Stall {
        let causes = [(Cause::Sleep, dur / 4 * 3), (Cause::Io, dur / 8)];
        Stall {
            syscall: Some("clock_nanosleep".into()),
            stack: culprit.iter().cloned().collect(),
            culprit_from: culprit.is_some().then_some(CulpritFrom::Evidence),
            culprit,
            ..Stall::unblamed(
                pid,
                pid.wrapping_add(1),
                "python3".into(),
                start,
                dur,
                Cause::Sleep,
                causes.into_iter().collect(),
            )
        }
    }

    /// A stall of a loop stopped from outside (no culprit, cause `stopped`).
    pub(crate) fn stopped_stall(pid: u32, dur: u64) -> Stall {
        Stall {
            cause: Cause::Stopped,
            causes: [(Cause::Stopped, dur)].into_iter().collect(),
            syscall: None,
            ..stall(pid, 0, dur, None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{BTreeMap, Cause, FdKind, cause_mix};

    #[test]
    fn cause_mix_shares() {
        let causes = |c: &[(Cause, u64)]| c.iter().copied().collect::<BTreeMap<_, _>>();
        assert_eq!(
            cause_mix(100, &causes(&[(Cause::Sleep, 98), (Cause::Io, 1)])),
            "sleep 98%, io 1%, running 1%"
        );
        assert_eq!(cause_mix(100, &causes(&[])), "running 100%");
        // More blocked time than stall time (clock skew): shares stay within 100%.
        assert_eq!(
            cause_mix(100, &causes(&[(Cause::Lock, 150), (Cause::Wait, 50)])),
            "lock 75%, wait 25%"
        );
    }

    #[test]
    fn descriptor_kinds_from_inode_modes() {
        // st_mode values as stat(2) gives them, permission bits included.
        assert_eq!(FdKind::from_mode(0o100_644), Some(FdKind::File));
        assert_eq!(FdKind::from_mode(0o140_777), Some(FdKind::Socket));
        assert_eq!(FdKind::from_mode(0o010_600), Some(FdKind::Pipe));
        assert_eq!(FdKind::from_mode(0o020_620), Some(FdKind::Char));
        assert_eq!(FdKind::from_mode(0o060_660), Some(FdKind::Block));
        assert_eq!(FdKind::from_mode(0o040_755), Some(FdKind::Dir));
        assert_eq!(
            FdKind::from_mode(0o120_777),
            None,
            "a symlink is never an open fd"
        );
        assert_eq!(FdKind::from_mode(0), None);
    }
}
