//! Whether a blocking call that ended is evidence to report: long enough on its own, or
//! the one that brought the short calls of its cause, summed per off-await interval, to
//! the reporting minimum.

use blockprobe_common::{
    cause,
    thread::{LoopTiming, ShortCalls},
};

use crate::maps::SHORT_CALLS;

/// Whether loop thread `tid`'s call that just ended, after `took` ns, is evidence to
/// report now: `(0, 0)` when it lasted `min_ns` on its own; the sums (calls, ns) of the
/// short calls of its cause when it made them reach `min_ns`; `None` otherwise.
#[inline(always)]
pub fn evidence(tid: u32, timing: &LoopTiming, took: u64, min_ns: u64) -> Option<(u32, u64)> {
    if took >= min_ns {
        return Some((0, 0));
    }
    let cause = timing.syscall_cause as usize;
    add_short_call(tid, timing.poll_exit_ns, cause, took, min_ns)
}

/// Adds a short call (`took` ns, of cause index `cause`) of loop thread `tid` in its
/// off-await interval `interval_ns` to the thread's sums. When the cause's sum reaches
/// `min_ns`, returns it (calls, ns) to be reported with this call's stack, and starts
/// it afresh.
#[inline(always)]
fn add_short_call(
    tid: u32,
    interval_ns: u64,
    cause: usize,
    took: u64,
    min_ns: u64,
) -> Option<(u32, u64)> {
    if cause >= cause::COUNT {
        return None;
    }
    let sums = match SHORT_CALLS.get_ptr_mut(tid) {
        Some(sums) => sums,
        None => {
            let fresh = ShortCalls {
                interval_ns,
                ..ShortCalls::default()
            };
            let _ = SHORT_CALLS.insert(tid, fresh, 0);
            SHORT_CALLS.get_ptr_mut(tid)?
        }
    };
    // SAFETY: the pointer comes from a successful lookup in a map we own.
    let sums = unsafe { &mut *sums };
    if sums.interval_ns != interval_ns {
        *sums = ShortCalls {
            interval_ns,
            ..ShortCalls::default()
        };
    }
    sums.blocked_ns[cause] += took;
    sums.calls[cause] += 1;
    if sums.blocked_ns[cause] < min_ns {
        return None;
    }
    let reported = (sums.calls[cause], sums.blocked_ns[cause]);
    sums.blocked_ns[cause] = 0;
    sums.calls[cause] = 0;
    Some(reported)
}
