//! Loop threads: classification at poll calls, off-await timing, blocking calls.
//!
//! A thread of a traced process that polls (epoll family) is first `PENDING`: its stack at
//! the poll call goes to userspace, which decides from the Python frames whether it runs
//! an asyncio loop. Loop threads then get a [`LoopTiming`] entry: leaving the poller
//! starts an off-await interval, coming back ends it (a stall when it reached the
//! threshold), and blocking syscalls inside it are reported with their Python stack.

use blockprobe_common::{
    counters::Counter,
    event::{BlockedCallEvent, EventKind, PollStackEvent, StallEvent},
    thread::{LoopTiming, ThreadClass, class},
};

use crate::{
    emit::{current_ids, header, now_ns, reserve},
    maps::{LOOP_TIMING, PROCESSES, THREAD_CLASS, config, count},
    process::announce_if_in_scope,
    walk,
};

/// A thread enters epoll_wait/epoll_pwait/epoll_pwait2.
#[inline(always)]
pub fn on_poll_enter() {
    let (tgid, tid) = current_ids();
    // SAFETY: map values are only read here; userspace writes whole values.
    if unsafe { PROCESSES.get(tgid) }.is_none() {
        announce_if_in_scope(tgid, blockprobe_common::event::candidate_reason::POLL);
        return;
    }
    let Some(config) = config() else { return };
    let now = now_ns();
    let Some(thread) = THREAD_CLASS.get_ptr_mut(tid) else {
        let pending = ThreadClass {
            class: class::PENDING,
            _pad: 0,
            since_ns: now,
        };
        if THREAD_CLASS.insert(tid, pending, 0).is_err() {
            count(Counter::ThreadMapFull);
            return;
        }
        send_poll_stack(tgid, now);
        return;
    };
    // SAFETY: the pointer comes from a successful lookup in a map we own.
    let thread = unsafe { &mut *thread };
    match thread.class {
        class::LOOP => end_off_await(tid, now, config.threshold_ns),
        class::NOT_LOOP if now.saturating_sub(thread.since_ns) >= config.reclassify_after_ns => {
            thread.class = class::PENDING;
            thread.since_ns = now;
            send_poll_stack(tgid, now);
        }
        _ => {}
    }
}

/// Closes the loop thread's off-await interval; reports it when it reached the threshold.
#[inline(always)]
fn end_off_await(tid: u32, now: u64, threshold_ns: u64) {
    let Some(timing) = LOOP_TIMING.get_ptr_mut(tid) else { return };
    // SAFETY: the pointer comes from a successful lookup in a map we own.
    let timing = unsafe { &mut *timing };
    let left = timing.poll_exit_ns;
    timing.poll_exit_ns = 0;
    timing.syscall_enter_ns = 0;
    if left == 0 || now.saturating_sub(left) < threshold_ns {
        return;
    }
    if let Some(mut entry) = reserve::<StallEvent>(Counter::LostStall) {
        entry.write(StallEvent {
            header: header(EventKind::Stall, now),
            start_ns: left,
        });
        entry.submit(0);
    }
}

/// Sends the thread's stack at a poll call so userspace can classify the thread.
#[inline(always)]
fn send_poll_stack(tgid: u32, now: u64) {
    let (Some(config), Some(process)) = (config(), unsafe { PROCESSES.get(tgid) }) else {
        return;
    };
    let Some(mut entry) = reserve::<PollStackEvent>(Counter::LostPollStack) else {
        return;
    };
    // SAFETY: the entry is ours until submitted; every field is written below.
    let event = unsafe { &mut *entry.as_mut_ptr() };
    event.header = header(EventKind::PollStack, now);
    walk::capture(config, process, &mut event.stack);
    entry.submit(0);
}

/// A thread leaves its poller.
#[inline(always)]
pub fn on_poll_exit() {
    let (_, tid) = current_ids();
    // SAFETY: read-only access to a value userspace writes whole.
    let Some(thread) = (unsafe { THREAD_CLASS.get(tid) }) else {
        return;
    };
    if thread.class != class::LOOP {
        return;
    }
    let now = now_ns();
    match LOOP_TIMING.get_ptr_mut(tid) {
        // SAFETY: the pointer comes from a successful lookup in a map we own.
        Some(timing) => unsafe { (*timing).poll_exit_ns = now },
        None => {
            let timing = LoopTiming {
                poll_exit_ns: now,
                ..LoopTiming::default()
            };
            if LOOP_TIMING.insert(tid, timing, 0).is_err() {
                count(Counter::ThreadMapFull);
            }
        }
    }
}

/// A thread enters a blocking syscall: remembered when it is a loop thread off-await.
#[inline(always)]
pub fn on_block_enter(nr: u32) {
    let (_, tid) = current_ids();
    let Some(timing) = LOOP_TIMING.get_ptr_mut(tid) else { return };
    // SAFETY: the pointer comes from a successful lookup in a map we own.
    let timing = unsafe { &mut *timing };
    if timing.poll_exit_ns != 0 {
        timing.syscall_enter_ns = now_ns();
        timing.syscall_nr = nr;
    }
}

/// A thread returns from a blocking syscall: long ones are reported with their stack. The
/// Python frames cannot change while the thread is inside the syscall, so the stack
/// walked at return is the stack that made the call.
#[inline(always)]
pub fn on_block_exit(ret: i64) {
    let (tgid, tid) = current_ids();
    let Some(timing) = LOOP_TIMING.get_ptr_mut(tid) else { return };
    // SAFETY: the pointer comes from a successful lookup in a map we own.
    let timing = unsafe { &mut *timing };
    let start = timing.syscall_enter_ns;
    if start == 0 {
        return;
    }
    timing.syscall_enter_ns = 0;
    let now = now_ns();
    let (Some(config), Some(process)) = (config(), unsafe { PROCESSES.get(tgid) }) else {
        return;
    };
    if now.saturating_sub(start) < config.min_block_ns {
        return;
    }
    let Some(mut entry) = reserve::<BlockedCallEvent>(Counter::LostBlockedCall) else {
        return;
    };
    // SAFETY: the entry is ours until submitted; every field is written below.
    let event = unsafe { &mut *entry.as_mut_ptr() };
    event.header = header(EventKind::BlockedCall, now);
    event.syscall_nr = timing.syscall_nr;
    event._pad = 0;
    event.start_ns = start;
    event.ret = ret;
    walk::capture(config, process, &mut event.stack);
    entry.submit(0);
}
