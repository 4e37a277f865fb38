//! Decoding the raw records of the event ring buffer into typed events.
//!
//! The kernel side is trusted to write well-formed records, but a decoder that reads
//! memory by size must still check sizes: a short or unknown record is an error.

use std::mem::size_of;

use anyhow::{anyhow, bail};
use blockprobe_common::{
    cause,
    event::{
        BlockedCallEvent, CandidateEvent, CpuSampleEvent, EventHeader, EventKind, GilWaitEvent,
        PollStackEvent, ProcessGoneEvent, StallEvent, candidate_reason, gone_reason,
    },
    stack::{MAX_FRAMES, RawStack},
};

impl Event {
    /// The process and thread of an event a loop thread's timing produced (a stall or
    /// evidence of what happened in one).
    pub fn loop_evidence(&self) -> Option<(u32, u32)> {
        match *self {
            Event::BlockedCall { pid, tid, .. }
            | Event::GilWait { pid, tid, .. }
            | Event::CpuSample { pid, tid, .. }
            | Event::Stall { pid, tid, .. } => Some((pid, tid)),
            Event::Candidate { .. } | Event::ProcessGone { .. } | Event::PollStack { .. } => None,
        }
    }
}

/// One decoded event.
pub enum Event {
    /// A process in scope that may be Python.
    Candidate {
        /// Process id.
        pid: u32,
        /// The thread whose system call announced it.
        tid: u32,
        /// Whether it was announced by a poll call (the thread may run a loop).
        by_poll: bool,
    },
    /// A traced process exited (`exec == false`) or exec'd.
    ProcessGone {
        /// Process id.
        pid: u32,
        /// It exec'd rather than exited.
        exec: bool,
    },
    /// A thread's stack at a poll call, for classification.
    PollStack {
        /// Process id.
        pid: u32,
        /// Thread id.
        tid: u32,
        /// The epoll fd polled.
        poll_fd: u32,
        /// Why it was sent: a [`blockprobe_common::event::poll_origin`] value.
        origin: u32,
        /// The thread's user stack pointer at the poll call (0: not at a poll call).
        user_sp: u64,
        /// The Python stack at the poll call.
        stack: Box<RawStack>,
    },
    /// A long blocking syscall on a loop thread, off-await.
    BlockedCall {
        /// Process id.
        pid: u32,
        /// Thread id.
        tid: u32,
        /// Syscall number.
        nr: u32,
        /// A `blockprobe_common::cause` index.
        cause: usize,
        /// Entry time (monotonic ns).
        start_ns: u64,
        /// Return time (monotonic ns).
        end_ns: u64,
        /// The file type bits of the descriptor it waited on (0: none, unknown).
        fd_mode: u32,
        /// 0 for one long call; else how many short calls of the cause it stands for.
        short_calls: u32,
        /// With `short_calls`: their total time.
        short_ns: u64,
        /// The Python stack that made the call.
        stack: Box<RawStack>,
    },
    /// A loop iteration that reached the threshold.
    Stall {
        /// Process id.
        pid: u32,
        /// Thread id.
        tid: u32,
        /// When the loop left its poller (monotonic ns).
        start_ns: u64,
        /// When it came back (monotonic ns).
        end_ns: u64,
        /// Off-CPU time during the stall by `blockprobe_common::cause` index.
        off_cpu_ns: [u64; cause::COUNT],
    },
    /// A loop thread caught running long off-await by the sampling timer.
    CpuSample {
        /// Process id.
        pid: u32,
        /// Thread id.
        tid: u32,
        /// Sample time (monotonic ns).
        ts_ns: u64,
        /// The stack being executed.
        stack: Box<RawStack>,
    },
    /// A loop thread's long wait for the GIL.
    GilWait {
        /// Process id.
        pid: u32,
        /// The waiting loop thread.
        tid: u32,
        /// When the wait began (monotonic ns).
        start_ns: u64,
        /// When it ended (monotonic ns).
        end_ns: u64,
        /// The holder's native tid (0: unknown).
        holder_tid: u32,
        /// The holder's stack when the wait began.
        holder_stack: Box<RawStack>,
        /// The waiting thread's own stack.
        own_stack: Box<RawStack>,
    },
}

/// Reads a `T` from the start of `bytes`, which must be at least that long.
fn read<T: Copy>(bytes: &[u8]) -> anyhow::Result<T> {
    if bytes.len() < size_of::<T>() {
        bail!(
            "event record of {} bytes is shorter than {} ({} bytes)",
            bytes.len(),
            std::any::type_name::<T>(),
            size_of::<T>()
        );
    }
    // SAFETY: length checked above; T is a plain `#[repr(C)]` type valid for any bits.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// Reads a stack-carrying event into a heap box (the stacks are 2 KiB).
fn read_boxed<T: Copy>(bytes: &[u8]) -> anyhow::Result<Box<T>> {
    read::<T>(bytes).map(Box::new)
}

/// Clamps a stack's length to what it can hold.
fn sane(mut stack: RawStack) -> Box<RawStack> {
    stack.len = stack.len.min(MAX_FRAMES as u32);
    Box::new(stack)
}

/// Decodes one ring buffer record.
pub fn decode(bytes: &[u8]) -> anyhow::Result<Event> {
    let header: EventHeader = read(bytes)?;
    let kind = EventKind::from_u32(header.kind)
        .ok_or_else(|| anyhow!("unknown event kind {}", header.kind))?;
    let (pid, tid) = (header.pid, header.tid);
    Ok(match kind {
        EventKind::Candidate => {
            let e: CandidateEvent = read(bytes)?;
            Event::Candidate {
                pid,
                tid,
                by_poll: e.reason == candidate_reason::POLL,
            }
        }
        EventKind::ProcessGone => {
            let e: ProcessGoneEvent = read(bytes)?;
            Event::ProcessGone {
                pid,
                exec: e.reason == gone_reason::EXEC,
            }
        }
        EventKind::PollStack => {
            let e = read_boxed::<PollStackEvent>(bytes)?;
            Event::PollStack {
                pid,
                tid,
                poll_fd: e.poll_fd,
                origin: e.origin,
                user_sp: e.user_sp,
                stack: sane(e.stack),
            }
        }
        EventKind::BlockedCall => {
            let e = read_boxed::<BlockedCallEvent>(bytes)?;
            Event::BlockedCall {
                pid,
                tid,
                nr: e.syscall_nr,
                cause: e.cause as usize,
                start_ns: e.start_ns,
                end_ns: header.ts_ns,
                fd_mode: e.fd_mode,
                short_calls: e.short_calls,
                short_ns: e.short_ns,
                stack: sane(e.stack),
            }
        }
        EventKind::Stall => {
            let e: StallEvent = read(bytes)?;
            Event::Stall {
                pid,
                tid,
                start_ns: e.start_ns,
                end_ns: header.ts_ns,
                off_cpu_ns: e.off_cpu_ns,
            }
        }
        EventKind::CpuSample => {
            let e = read_boxed::<CpuSampleEvent>(bytes)?;
            Event::CpuSample {
                pid,
                tid,
                ts_ns: header.ts_ns,
                stack: sane(e.stack),
            }
        }
        EventKind::GilWait => {
            let e = read_boxed::<GilWaitEvent>(bytes)?;
            Event::GilWait {
                pid,
                tid,
                start_ns: e.start_ns,
                end_ns: header.ts_ns,
                holder_tid: e.holder_tid,
                holder_stack: sane(e.holder_stack),
                own_stack: sane(e.own_stack),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of<T>(value: &T) -> Vec<u8> {
        // SAFETY: reading the bytes of a plain `#[repr(C)]` value.
        unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
            .to_vec()
    }

    fn header(kind: EventKind) -> EventHeader {
        EventHeader {
            kind: kind as u32,
            pid: 10,
            tid: 11,
            _pad: 0,
            ts_ns: 5_000,
        }
    }

    #[test]
    fn decodes_a_stall() {
        let e = StallEvent {
            header: header(EventKind::Stall),
            start_ns: 1_000,
            off_cpu_ns: [0; cause::COUNT],
        };
        match decode(&bytes_of(&e)).unwrap() {
            Event::Stall {
                pid,
                tid,
                start_ns,
                end_ns,
                ..
            } => assert_eq!((pid, tid, start_ns, end_ns), (10, 11, 1_000, 5_000)),
            _ => panic!("wrong kind"),
        }
    }

    #[test]
    fn clamps_stack_length() {
        let mut e: PollStackEvent = unsafe { std::mem::zeroed() };
        e.header = header(EventKind::PollStack);
        e.stack.len = 100_000;
        match decode(&bytes_of(&e)).unwrap() {
            Event::PollStack { stack, .. } => assert_eq!(stack.len as usize, MAX_FRAMES),
            _ => panic!("wrong kind"),
        }
    }

    #[test]
    fn rejects_short_and_unknown_records() {
        let e = StallEvent {
            header: header(EventKind::Stall),
            start_ns: 1,
            off_cpu_ns: [0; cause::COUNT],
        };
        let bytes = bytes_of(&e);
        assert!(decode(&bytes[..20]).is_err());
        assert!(
            decode(&bytes[..30])
                .err()
                .unwrap()
                .to_string()
                .contains("shorter")
        );
        let mut unknown = bytes.clone();
        unknown[0] = 99;
        assert!(
            decode(&unknown)
                .err()
                .unwrap()
                .to_string()
                .contains("unknown event kind 99")
        );
        let blocked = BlockedCallEvent {
            header: header(EventKind::BlockedCall),
            ..unsafe { std::mem::zeroed() }
        };
        assert!(decode(&bytes_of(&blocked)[..100]).is_err());
    }

    proptest::proptest! {
        /// Any bytes, including valid headers followed by garbage or truncation, decode
        /// to an event or an error, never a panic.
        #[test]
        fn decoding_never_panics(kind in 0u32..9, len in 0usize..3000, fill in proptest::num::u8::ANY) {
            let mut bytes = vec![fill; len];
            if len >= 4 {
                bytes[..4].copy_from_slice(&kind.to_ne_bytes());
            }
            let _ = decode(&bytes);
        }
    }
}
