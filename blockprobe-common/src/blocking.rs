//! A loop thread's blocking syscall, learned when the thread leaves the CPU in it.

use crate::{assert_size, event::BlockedCallEvent, user_pod};

/// Value of [`crate::maps::BLOCKING_CALLS`], written only by BPF: the blocking syscall a
/// loop thread is in, read from its saved registers at its first switch-out inside it,
/// and the event that reports it once it ends.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockingCall {
    /// The call's first two arguments: with its number, what tells a later switch-out
    /// inside the same call from one inside the next.
    pub args: [u64; 2],
    /// The thread's off-CPU time in the current off-await interval when the call began:
    /// the call lasts the off-CPU time added since.
    pub off_cpu_at_start_ns: u64,
    /// The event sent when the call ends, its Python stack walked at the first switch-out.
    pub event: BlockedCallEvent,
}
assert_size!(BlockingCall, 24 + core::mem::size_of::<BlockedCallEvent>());

user_pod!(BlockingCall);
