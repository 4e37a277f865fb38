//! Loop threads: classification at poll calls, off-await timing, CPU samples.
//!
//! A thread of a traced process that polls (epoll family) is first `PENDING`: its stack at
//! the poll call goes to userspace, which decides from the Python frames whether it runs
//! an asyncio loop. Loop threads then get a [`LoopTiming`] entry: leaving the poller
//! starts an off-await interval, coming back ends it (a stall when it reached the
//! threshold); the blocking syscalls inside it are learned at `sched_switch`
//! ([`crate::blocking`]), except a poll of another epoll fd, timed here.

use blockprobe_common::{
    cause,
    config::Scope,
    counters::Counter,
    event::{
        BlockedCallEvent, CpuSampleEvent, EventKind, PollStackEvent, StallEvent, candidate_reason,
        poll_origin,
    },
    syscalls::cause_of,
    thread::{LoopTiming, NO_FD, ThreadClass, class},
};

use crate::{
    blocking,
    emit::{current_ids, header, now_ns, reserve},
    evidence::evidence,
    maps::{LOOP_TIMING, PROCESSES, THREAD_CLASS, config, count, is_loop_thread, mark_loop_thread},
    process::{Announce, announce_if_in_scope},
    regs::user_sp,
    walk,
};

/// A thread enters epoll_wait/epoll_pwait/epoll_pwait2 (syscall `nr`); `poll_fd` reads
/// the epoll fd it polls (only for the threads of traced processes), `regs` finds its
/// saved registers (only when its stack is sent).
///
/// A thread of a traced process is timed from its first poll call on, while userspace
/// decides from the stack sent here what it is ([`class::PENDING`]): a loop's first
/// iterations are often the ones that block. Userspace reads the stack before anything
/// the thread reports later, keeps that of a loop, drops that of any other thread, and
/// stops timing it. The first poll of a process not traced yet (host-wide tracing finds
/// Python processes by their polls) starts the timing too, as do the polls of a `run`
/// family member not traced yet; its stack is sent at the next poll, once userspace
/// traces the process.
#[inline(always)]
pub fn on_poll_enter(nr: u32, poll_fd: impl Fn() -> u32, regs: impl Fn() -> *const u8) {
    let (tgid, tid) = current_ids();
    let Some(config) = config() else { return };
    let now = now_ns();
    // A timed thread (every iteration of a busy loop): one array load, the one hash
    // lookup its timing needs and the read of its fd.
    if is_loop_thread(tid)
        && let Some(timing) = LOOP_TIMING.get_ptr_mut(tid)
    {
        // SAFETY: the pointer comes from a successful lookup in a map we own.
        let timing = unsafe { &mut *timing };
        let fd = poll_fd();
        if timing.loop_fd == NO_FD {
            // Timed from the start of a loop written in C: this is its first poll.
            timing.loop_fd = fd;
        }
        if timing.unclassified != 0 {
            // SAFETY: read-only lookup.
            if unsafe { PROCESSES.get(tgid) }.is_none() {
                // Not traced yet: its next iteration is timed afresh (userspace stops the
                // timing of a process it will not trace).
                timing.loop_fd = fd;
                timing.poll_exit_ns = 0;
                timing.syscall_enter_ns = 0;
                return;
            }
            if !send_pending(tgid, tid, now, fd, user_sp(config, regs())) {
                // The stack was lost (counted): examined afresh at the next poll.
                let _ = LOOP_TIMING.remove(tid);
                return;
            }
            timing.unclassified = 0;
        }
        // Whatever blocking call it made since has returned.
        blocking::finish(config, tid, timing, now);
        if fd == timing.loop_fd {
            end_off_await(timing, now, config.threshold_ns);
        } else if adopts(tid, fd) {
            // A new loop replaced the old one in this thread: the time in between
            // belongs to no loop.
            timing.loop_fd = fd;
            end_off_await(timing, now, u64::MAX);
        } else {
            begin_foreign_poll(timing, nr, now);
            if timing.foreign_fd != fd
                && send_poll_stack(tgid, now, fd, poll_origin::FOREIGN, user_sp(config, regs()))
            {
                timing.foreign_fd = fd;
            }
        }
        return;
    }
    // SAFETY: map values are only read here; userspace writes whole values.
    if unsafe { PROCESSES.get(tgid) }.is_none() {
        // A process found by this poll, or one of `run`'s family not traced yet (its
        // interpreter was still starting up when it was announced at its exec): its
        // loop may be in its first iterations.
        let announce = announce_if_in_scope(tgid, candidate_reason::POLL);
        if announce == Announce::Now
            || (announce == Announce::Before && config.scope == Scope::Family as u32)
        {
            start_timing(tid, poll_fd(), 1, 0);
        }
        return;
    }
    // SAFETY: read-only access to a value userspace writes whole.
    match unsafe { THREAD_CLASS.get(tid) } {
        None => {
            let fd = poll_fd();
            if send_pending(tgid, tid, now, fd, user_sp(config, regs())) {
                start_timing(tid, fd, 0, 0);
            }
        }
        Some(thread)
            if thread.class == class::NOT_LOOP
                && now.saturating_sub(thread.since_ns) >= config.reclassify_after_ns =>
        {
            let fd = poll_fd();
            if send_pending(tgid, tid, now, fd, user_sp(config, regs())) {
                start_timing(tid, fd, 0, 0);
            }
        }
        Some(thread) if thread.class == class::NOT_LOOP => {}
        // A loop whose timing was not started (the timing map was full, counted).
        Some(_) => mark_loop_thread(tid, true),
    }
}

/// Marks thread `tid` pending and sends its stack at a poll on epoll fd `fd` (user
/// stack pointer `user_sp`) to userspace; whether it was sent. Unsent (the ring buffer
/// was full, counted), the thread is examined afresh at its next poll rather than left
/// pending for ever.
#[inline(always)]
fn send_pending(tgid: u32, tid: u32, now: u64, fd: u32, user_sp: u64) -> bool {
    send_pending_as(tgid, tid, now, fd, poll_origin::THREAD, user_sp)
}

/// [`send_pending`], for a stack sent because of `origin` ([`poll_origin`]).
#[inline(always)]
pub fn send_pending_as(tgid: u32, tid: u32, now: u64, fd: u32, origin: u32, user_sp: u64) -> bool {
    let pending = ThreadClass {
        class: class::PENDING,
        poll_fd: fd,
        since_ns: now,
    };
    if THREAD_CLASS.insert(tid, pending, 0).is_err() {
        count(Counter::ThreadMapFull);
        return false;
    }
    if send_poll_stack(tgid, now, fd, origin, user_sp) {
        return true;
    }
    let _ = THREAD_CLASS.remove(tid);
    false
}

/// Starts timing thread `tid` as a loop polling epoll fd `fd` ([`NO_FD`]: its next
/// poll's), off-await since `since_ns` (0: from the exit of the poll it enters;
/// `unclassified`: its stack was not sent yet).
#[inline(always)]
pub fn start_timing(tid: u32, fd: u32, unclassified: u32, since_ns: u64) {
    let timing = LoopTiming {
        poll_exit_ns: since_ns,
        loop_fd: fd,
        foreign_fd: NO_FD,
        unclassified,
        ..LoopTiming::default()
    };
    if LOOP_TIMING.insert(tid, timing, 0).is_err() {
        count(Counter::ThreadMapFull);
        return;
    }
    mark_loop_thread(tid, true);
}

/// Whether userspace found epoll fd `fd` of loop thread `tid` to be a new loop's poller.
#[inline(always)]
fn adopts(tid: u32, fd: u32) -> bool {
    // SAFETY: read-only access to a value userspace writes whole.
    unsafe { THREAD_CLASS.get(tid) }.is_some_and(|c| c.class == class::LOOP && c.poll_fd == fd)
}

/// Opens the loop thread's off-await interval at `now`.
#[inline(always)]
pub fn begin_off_await(timing: &mut LoopTiming, now: u64) {
    timing.poll_exit_ns = now;
    timing.syscall_enter_ns = 0;
    timing.off_cpu_since_ns = 0;
    if timing.has_off_cpu != 0 {
        timing.off_cpu_ns = [0; cause::COUNT];
        timing.has_off_cpu = 0;
    }
}

/// Closes the loop thread's off-await interval at `now`, reporting it when it reached
/// `threshold_ns`.
#[inline(always)]
pub fn end_off_await(timing: &mut LoopTiming, now: u64, threshold_ns: u64) {
    timing.close_period(now);
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
            off_cpu_ns: timing.off_cpu_ns,
        });
        entry.submit(0);
    }
}

/// Sends the thread's stack to userspace so it can classify the thread: at a poll call
/// on epoll fd `fd` (user stack pointer `user_sp`), or at a loop's start; `origin` says
/// which ([`poll_origin`]). Whether it was sent.
#[inline(always)]
fn send_poll_stack(tgid: u32, now: u64, fd: u32, origin: u32, user_sp: u64) -> bool {
    let (Some(config), Some(process)) = (config(), unsafe { PROCESSES.get(tgid) }) else {
        return false;
    };
    let Some(mut entry) = reserve::<PollStackEvent>(Counter::LostPollStack) else {
        return false;
    };
    // SAFETY: the entry is ours until submitted; every field is written below.
    let event = unsafe { &mut *entry.as_mut_ptr() };
    event.header = header(EventKind::PollStack, now);
    event.poll_fd = fd;
    event.origin = origin;
    event.user_sp = user_sp;
    walk::capture(config, process, &mut event.stack);
    entry.submit(0);
    true
}

/// Flagged thread `tid` leaves a poller (return value `ret`): a loop starts an
/// off-await interval; a thread found not to be a loop loses its flag.
#[inline(always)]
pub fn on_poll_exit(tid: u32, ret: i64) {
    let now = now_ns();
    if let Some(timing) = LOOP_TIMING.get_ptr_mut(tid) {
        // SAFETY: the pointer comes from a successful lookup in a map we own.
        let timing = unsafe { &mut *timing };
        // The loop's own poll cleared the call at entry: this is another fd's poll,
        // unless userspace meanwhile found it to be a new loop's.
        if timing.syscall_enter_ns != 0 {
            if !adopts(tid, timing.foreign_fd) {
                end_foreign_poll(timing, ret, now);
                return;
            }
            timing.loop_fd = timing.foreign_fd;
        }
        begin_off_await(timing, now);
        return;
    }
    // SAFETY: read-only access to a value userspace writes whole.
    match unsafe { THREAD_CLASS.get(tid) } {
        Some(thread) if thread.class == class::LOOP => {
            let timing = LoopTiming {
                poll_exit_ns: now,
                loop_fd: thread.poll_fd,
                foreign_fd: NO_FD,
                ..LoopTiming::default()
            };
            if LOOP_TIMING.insert(tid, timing, 0).is_err() {
                count(Counter::ThreadMapFull);
            }
        }
        Some(thread) if thread.class == class::PENDING => {}
        _ => mark_loop_thread(tid, false),
    }
}

/// Loop thread `tid` closes a file descriptor: when it is its loop's poller, the loop is
/// gone, and the thread is classified afresh at its next poll.
#[inline(always)]
pub fn on_close(tid: u32, fd: u32) {
    // SAFETY: read-only lookup; the entry is removed, not written.
    let Some(timing) = (unsafe { LOOP_TIMING.get(tid) }) else {
        return;
    };
    if fd == timing.loop_fd {
        let _ = LOOP_TIMING.remove(tid);
        let _ = THREAD_CLASS.remove(tid);
    }
}

/// A loop thread polls another epoll fd than its loop's (sync `selectors` code run by
/// a callback) with syscall `nr`: while off-await, a blocking call inside the interval,
/// timed by the poll hooks themselves.
#[inline(always)]
fn begin_foreign_poll(timing: &mut LoopTiming, nr: u32, now: u64) {
    if timing.poll_exit_ns == 0 {
        return;
    }
    timing.close_period(now);
    timing.syscall_enter_ns = now;
    timing.syscall_nr = nr;
    timing.syscall_cause = cause_of(nr) as u32;
}

/// The loop thread's poll of another epoll fd returns `ret`: reported when long, with
/// its stack (the frames cannot change while the thread is inside the call).
#[inline(always)]
fn end_foreign_poll(timing: &mut LoopTiming, ret: i64, now: u64) {
    let start = timing.syscall_enter_ns;
    timing.syscall_enter_ns = 0;
    timing.close_period(now);
    let (tgid, tid) = current_ids();
    let (Some(config), Some(process)) = (config(), unsafe { PROCESSES.get(tgid) }) else {
        return;
    };
    let Some((short_calls, short_ns)) =
        evidence(tid, timing, now.saturating_sub(start), config.min_block_ns)
    else {
        return;
    };
    let Some(mut entry) = reserve::<BlockedCallEvent>(Counter::LostBlockedCall) else {
        return;
    };
    // SAFETY: the entry is ours until submitted; every field is written below.
    let event = unsafe { &mut *entry.as_mut_ptr() };
    event.header = header(EventKind::BlockedCall, now);
    event.syscall_nr = timing.syscall_nr;
    event.cause = timing.syscall_cause;
    event.start_ns = start;
    event.ret = ret;
    event.fd = -1;
    event.fd_mode = 0;
    event.short_calls = short_calls;
    event._pad = 0;
    event.short_ns = short_ns;
    walk::capture(config, process, &mut event.stack);
    entry.submit(0);
}

/// The sampling timer fired: a loop thread running long off-await sends its stack.
#[inline(always)]
pub fn on_cpu_sample() {
    let (tgid, tid) = current_ids();
    if !is_loop_thread(tid) {
        return;
    }
    // SAFETY: read-only lookup. This NMI may interrupt a scheduler program updating the
    // same entry, so it must not write.
    let Some(timing) = (unsafe { LOOP_TIMING.get(tid) }) else {
        return;
    };
    if timing.poll_exit_ns == 0 {
        return;
    }
    let Some(config) = config() else { return };
    let now = now_ns();
    if now.saturating_sub(timing.poll_exit_ns) < config.min_block_ns {
        return;
    }
    let Some(process) = (unsafe { PROCESSES.get(tgid) }) else {
        return;
    };
    let Some(mut entry) = reserve::<CpuSampleEvent>(Counter::LostCpuSample) else {
        return;
    };
    // SAFETY: the entry is ours until submitted; every field is written below.
    let event = unsafe { &mut *entry.as_mut_ptr() };
    event.header = header(EventKind::CpuSample, now);
    walk::capture(config, process, &mut event.stack);
    entry.submit(0);
}
