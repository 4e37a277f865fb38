//! Events sent from BPF to userspace through [`crate::maps::EVENTS`].
//!
//! Every event starts with an [`EventHeader`]; its `kind` says which struct follows.

use crate::{assert_size, cause, stack::RawStack};

/// Values of [`EventHeader::kind`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// [`CandidateEvent`]: a process in scope may be Python; userspace should inspect it.
    Candidate = 1,
    /// [`ProcessGoneEvent`]: a traced process exited or exec'd.
    ProcessGone = 2,
    /// [`PollStackEvent`]: a thread of a traced process polled; is it an asyncio loop?
    PollStack = 3,
    /// [`BlockedCallEvent`]: a loop thread spent long in a blocking syscall off-await.
    BlockedCall = 4,
    /// [`StallEvent`]: a loop thread came back to its poller after a long off-await time.
    Stall = 5,
    /// [`CpuSampleEvent`]: a loop thread found running Python, off-await for a while.
    CpuSample = 6,
    /// [`GilWaitEvent`]: a loop thread waited long for the GIL; who held it.
    GilWait = 7,
}

impl EventKind {
    /// Decodes a header's kind.
    pub const fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::Candidate,
            2 => Self::ProcessGone,
            3 => Self::PollStack,
            4 => Self::BlockedCall,
            5 => Self::Stall,
            6 => Self::CpuSample,
            7 => Self::GilWait,
            _ => return None,
        })
    }
}

/// First bytes of every event.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EventHeader {
    /// An [`EventKind`] value.
    pub kind: u32,
    /// Process id (tgid) in the host's pid namespace.
    pub pid: u32,
    /// Thread id in the host's pid namespace.
    pub tid: u32,
    /// Padding, zero.
    pub _pad: u32,
    /// When the event happened (`bpf_ktime_get_ns`, CLOCK_MONOTONIC).
    pub ts_ns: u64,
}
assert_size!(EventHeader, 24);

/// Why a process became a candidate.
pub mod candidate_reason {
    /// It exec'd while in scope.
    pub const EXEC: u32 = 1;
    /// It called an epoll wait while in scope and not yet traced.
    pub const POLL: u32 = 2;
}

/// A process that userspace should inspect (and attach to if it is Python).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CandidateEvent {
    /// Common header.
    pub header: EventHeader,
    /// A [`candidate_reason`] value.
    pub reason: u32,
    /// Padding, zero.
    pub _pad: u32,
}
assert_size!(CandidateEvent, 32);

/// Why a traced process is gone.
pub mod gone_reason {
    /// The process exited.
    pub const EXIT: u32 = 1;
    /// The process replaced its image (its Python state is gone).
    pub const EXEC: u32 = 2;
}

/// A traced process exited or exec'd; its walk configuration was removed.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProcessGoneEvent {
    /// Common header.
    pub header: EventHeader,
    /// A [`gone_reason`] value.
    pub reason: u32,
    /// Padding, zero.
    pub _pad: u32,
}
assert_size!(ProcessGoneEvent, 32);

/// Why a [`PollStackEvent`] was sent.
pub mod poll_origin {
    /// A poll call of a thread not known as a loop thread.
    pub const THREAD: u32 = 0;
    /// A poll call of a loop thread on another fd than its loop's: a callback's sync
    /// selector, or a new loop replacing the old one.
    pub const FOREIGN: u32 = 1;
    /// A loop written in C started running (libuv's `uv_run` entered): the thread runs a
    /// loop; its poller is the fd of its next poll call.
    pub const LOOP_RUN: u32 = 2;
}

/// The Python stack of a thread at its poll call, for loop classification.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PollStackEvent {
    /// Common header.
    pub header: EventHeader,
    /// The epoll fd polled (the loop's poller when the stack says it is a loop's poll).
    pub poll_fd: u32,
    /// A [`poll_origin`] value.
    pub origin: u32,
    /// The thread's user stack pointer at the poll call (0 when not at a poll call): its
    /// native stack tells whether a loop written in C called the poll.
    pub user_sp: u64,
    /// The stack at the poll call.
    pub stack: RawStack,
}
assert_size!(PollStackEvent, 40 + core::mem::size_of::<RawStack>());

/// A blocking syscall made by a loop thread while off-await.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockedCallEvent {
    /// Common header (`ts_ns` is when the call returned).
    pub header: EventHeader,
    /// The syscall number (x86_64).
    pub syscall_nr: u32,
    /// The [`cause`] index blocking in it counts as.
    pub cause: u32,
    /// When the call was entered.
    pub start_ns: u64,
    /// The call's return value.
    pub ret: i64,
    /// The file descriptor it was made on (-1: the call takes none).
    pub fd: i32,
    /// The file type bits (`S_IFMT`) of that descriptor's inode; 0: unknown.
    pub fd_mode: u32,
    /// 0 for one long call; else the event stands for this many short calls of the same
    /// cause (each below the evidence minimum) in the same off-await interval, this one
    /// the last: their time reached the minimum together.
    pub short_calls: u32,
    /// Padding, zero.
    pub _pad: u32,
    /// With `short_calls`: their total time (else 0).
    pub short_ns: u64,
    /// The Python stack making the call (unchanged between entry and return).
    pub stack: RawStack,
}
assert_size!(BlockedCallEvent, 72 + core::mem::size_of::<RawStack>());

/// A loop iteration whose off-await time reached the threshold.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StallEvent {
    /// Common header (`ts_ns` is when the loop re-entered its poller).
    pub header: EventHeader,
    /// When the loop left its poller.
    pub start_ns: u64,
    /// Off-CPU time during the stall by [`cause`] index (the CPU entry is 0: on-CPU time
    /// is the rest of the stall).
    pub off_cpu_ns: [u64; cause::COUNT],
}
assert_size!(StallEvent, 32 + 8 * cause::COUNT);

/// The Python stack of a loop thread caught running by the sampling timer while it had
/// been off-await for a while (CPU-bound stalls have no blocking call to explain them).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CpuSampleEvent {
    /// Common header (`ts_ns` is the sample time).
    pub header: EventHeader,
    /// The stack being executed.
    pub stack: RawStack,
}
assert_size!(CpuSampleEvent, 24 + core::mem::size_of::<RawStack>());

/// A loop thread's long wait for the GIL: the stack of the thread that held it when the
/// wait began, and the loop thread's own stack, where it waited.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct GilWaitEvent {
    /// Common header (`ts_ns` is when the wait ended).
    pub header: EventHeader,
    /// When the wait began.
    pub start_ns: u64,
    /// Native tid of the holder inside the process's pid namespace (0: unknown);
    /// userspace turns it into a host tid.
    pub holder_tid: u32,
    /// Padding, zero.
    pub _pad: u32,
    /// The holder's Python stack when the wait began.
    pub holder_stack: RawStack,
    /// The waiting loop thread's own Python stack (unchanged while it waits).
    pub own_stack: RawStack,
}
assert_size!(GilWaitEvent, 40 + 2 * core::mem::size_of::<RawStack>());
