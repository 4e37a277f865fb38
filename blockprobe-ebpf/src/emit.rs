//! Sending events: reserve in the ring buffer, or count the loss.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    maps::ring_buf::RingBufEntry,
};
use blockprobe_common::{
    counters::Counter,
    event::{EventHeader, EventKind},
};

use crate::maps::{EVENTS, count};

/// The current process (tgid) and thread (tid) ids.
#[inline(always)]
pub fn current_ids() -> (u32, u32) {
    let id = bpf_get_current_pid_tgid();
    ((id >> 32) as u32, id as u32)
}

/// Monotonic clock, as used for every timestamp.
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// Reserves room for an event of type `T`; on a full ring buffer counts `lost` and
/// returns `None`.
#[inline(always)]
pub fn reserve<T: 'static>(lost: Counter) -> Option<RingBufEntry<T>> {
    let entry = EVENTS.reserve::<T>(0);
    if entry.is_none() {
        count(lost);
    }
    entry
}

/// A header for an event of the current thread.
#[inline(always)]
pub fn header(kind: EventKind, ts_ns: u64) -> EventHeader {
    let (pid, tid) = current_ids();
    EventHeader {
        kind: kind as u32,
        pid,
        tid,
        _pad: 0,
        ts_ns,
    }
}
