//! A loop thread's blocking syscall, learned when the thread leaves the CPU in it.

use crate::{assert_size, event::BlockedCallEvent, user_pod};

/// Value of [`crate::maps::BLOCKING_CALLS`], written only by BPF: the blocking syscall a
/// loop thread is in, read from its saved registers when it left the CPU blocked, and
/// the event that reports it once it ends.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockingCall {
    /// The thread's off-CPU time in the current off-await interval when the call began:
    /// the call lasts the off-CPU time added since.
    pub off_cpu_at_start_ns: u64,
    /// The event sent when the call ends, its Python stack walked when it began.
    pub event: BlockedCallEvent,
}
assert_size!(BlockingCall, 8 + core::mem::size_of::<BlockedCallEvent>());

user_pod!(BlockingCall);
