//! Loop runs: a loop starts running (libuv's `uv_run` entered, for uvloop) and stops
//! (`uv_run` returns; asyncio's `_asyncio._set_running_loop` is called, which
//! `run_forever` does when it starts and when it stops).
//!
//! uvloop runs its ready callbacks before its first poll, and a loop stopped between two
//! `run_until_complete` calls runs nothing: its thread is off-await from the start of a
//! run (uvloop) or its first poll exit (asyncio) to the stop, never between two runs. The
//! probes fire once per run, never per iteration, in every process that maps the file:
//! only traced processes get past the first check.

use blockprobe_common::{
    event::poll_origin,
    thread::{NO_FD, class},
};

use crate::{
    emit::{current_ids, now_ns},
    loop_thread::{begin_off_await, end_off_await, send_pending_as, start_timing},
    maps::{LOOP_TIMING, PROCESSES, THREAD_CLASS, config, is_loop_thread},
};

/// A thread enters `uv_run`: a loop starts running. A thread known to run a loop goes
/// off-await now (its poller is that of its next poll: maybe another loop's); any
/// other thread's stack goes to userspace, which learns it runs a loop, and it is timed
/// from now.
#[inline(always)]
pub fn on_enter() {
    let (tgid, tid) = current_ids();
    // SAFETY: read-only lookups of values userspace or BPF writes whole.
    if unsafe { PROCESSES.get(tgid) }.is_none() {
        return;
    }
    let now = now_ns();
    let known = unsafe { THREAD_CLASS.get(tid) }.is_some_and(|c| c.class == class::LOOP);
    if known
        && is_loop_thread(tid)
        && let Some(timing) = LOOP_TIMING.get_ptr_mut(tid)
    {
        // SAFETY: the pointer comes from a successful lookup in a map we own.
        let timing = unsafe { &mut *timing };
        timing.loop_fd = NO_FD;
        begin_off_await(timing, now);
        return;
    }
    if send_pending_as(tgid, tid, now, NO_FD, poll_origin::LOOP_RUN, 0) {
        start_timing(tid, NO_FD, 0, now);
    }
}

/// A thread's loop stopped running, or starts: the off-await interval ends here (a stall
/// when it reached the threshold: the last callback before the stop blocked), and none
/// is open until the loop's next poll exit (asyncio) or run (uvloop).
#[inline(always)]
pub fn on_stop() {
    let (_, tid) = current_ids();
    if !is_loop_thread(tid) {
        return;
    }
    let (Some(config), Some(timing)) = (config(), LOOP_TIMING.get_ptr_mut(tid)) else {
        return;
    };
    // SAFETY: the pointer comes from a successful lookup in a map we own.
    end_off_await(unsafe { &mut *timing }, now_ns(), config.threshold_ns);
}
