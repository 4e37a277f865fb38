//! Loop threads: classification at poll calls, off-await timing, blocking calls.
//!
//! A thread of a traced process that polls (epoll family) is first `PENDING`: its stack at
//! the poll call goes to userspace, which decides from the Python frames whether it runs
//! an asyncio loop. Loop threads then get a [`LoopTiming`] entry: leaving the poller
//! starts an off-await interval, coming back ends it (a stall when it reached the
//! threshold), and blocking syscalls inside it are reported with their Python stack.

use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel};
use blockprobe_common::{
    cause,
    config::{GIL_LAST_HOLDER, GIL_STATE_SIZE, GlobalConfig, PyProcess, Scope},
    counters::Counter,
    event::{
        BlockedCallEvent, CpuSampleEvent, EventKind, GilWaitEvent, PollStackEvent, StallEvent,
        candidate_reason, poll_origin,
    },
    syscalls::{S_IFMT, cause_of, futex_op_waits, nr},
    thread::{LoopTiming, NO_FD, ShortCalls, ThreadClass, class},
    walk::{UserMemory, walk_thread},
};

use crate::{
    blocking,
    emit::{current_ids, header, now_ns, reserve},
    maps::{
        EVENTS, GIL_SCRATCH, GIL_WAITS, LOOP_TIMING, PROCESSES, SHORT_CALLS, THREAD_CLASS, config,
        count, is_loop_thread, mark_loop_thread,
    },
    process::{Announce, announce_if_in_scope},
    sched::close_period,
    walk::{self, CurrentUser},
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
    close_period(timing, now);
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

/// The user stack pointer saved in the current syscall's registers `regs`.
#[inline(always)]
fn user_sp(config: &GlobalConfig, regs: *const u8) -> u64 {
    // SAFETY: `regs` is the current syscall's pt_regs; the offset comes from BTF; the
    // read is fault-tolerant.
    unsafe { bpf_probe_read_kernel(regs.add(config.pt_regs_sp_offset as usize) as *const u64) }
        .unwrap_or(0)
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
    close_period(timing, now);
    timing.syscall_enter_ns = now;
    timing.syscall_nr = nr;
    timing.syscall_cause = cause_of(nr) as u32;
}

/// Argument `index` (0 or 1) of the current syscall, from its saved registers.
#[inline(always)]
pub fn syscall_arg(config: &GlobalConfig, regs: *const u8, index: usize) -> Option<u64> {
    let offset = match index {
        0 => config.pt_regs_arg0_offset,
        _ => config.pt_regs_arg1_offset,
    };
    // SAFETY: `regs` is the current syscall's pt_regs; the offset comes from BTF; the
    // read is fault-tolerant.
    unsafe { bpf_probe_read_kernel(regs.add(offset as usize) as *const u64) }.ok()
}

/// Whether the current futex syscall `nr` waits on a futex inside the process's GIL
/// state (a wake on it does not wait).
#[inline(always)]
pub fn waits_for_gil(nr: u32, config: &GlobalConfig, process: &PyProcess, regs: *const u8) -> bool {
    if process.gil_addr == 0 {
        return false;
    }
    let on_gil = matches!(syscall_arg(config, regs, 0),
        Some(a) if a >= process.gil_addr && a < process.gil_addr + GIL_STATE_SIZE);
    // futex_wait(2) only waits; futex(2) says what it does in its operation.
    on_gil
        && (nr != nr::FUTEX
            || syscall_arg(config, regs, 1).is_some_and(|op| futex_op_waits(op as u32)))
}

/// Captures the GIL holder's stack for the GIL wait the current thread `tid` begins
/// now, and the thread's own stack, where it waits (unchanged while it waits).
#[inline(always)]
pub fn remember_gil_holder(config: &GlobalConfig, process: &PyProcess, tid: u32, now: u64) {
    let Some(scratch) = GIL_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU scratch entry, ours for the duration of this program.
    let wait = unsafe { &mut *scratch };
    let holder = CurrentUser
        .read_u64(process.gil_addr + GIL_LAST_HOLDER)
        .unwrap_or(0);
    wait.start_ns = now;
    wait.holder_tid = if holder != 0 && process.tstate_native_tid != 0 {
        CurrentUser
            .read_u64(holder + process.tstate_native_tid as u64)
            .unwrap_or(0) as u32
    } else {
        0
    };
    wait._pad = 0;
    walk_thread(&CurrentUser, process, holder, &mut wait.holder_stack);
    walk::capture(config, process, &mut wait.own_stack);
    // By reference: the 4 KiB value does not fit the 512-byte BPF stack.
    let wait: &GilWaitEvent = wait;
    if GIL_WAITS.insert(tid, wait, 0).is_err() {
        count(Counter::LostGilWait);
    }
}

/// The loop thread's poll of another epoll fd returns `ret`: reported when long, with
/// its stack (the frames cannot change while the thread is inside the call).
#[inline(always)]
fn end_foreign_poll(timing: &mut LoopTiming, ret: i64, now: u64) {
    let start = timing.syscall_enter_ns;
    timing.syscall_enter_ns = 0;
    close_period(timing, now);
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

/// The file type bits (`S_IFMT`) of the current task's file descriptor `fd`.
#[inline(always)]
pub fn fd_mode(config: &GlobalConfig, fd: u32) -> Option<u32> {
    let path = &config.fd_path;
    // SAFETY: every read is fault-tolerant; the offsets come from the kernel's BTF and
    // the index is bounded by the table's own size.
    unsafe {
        let task = bpf_get_current_task() as *const u8;
        let files: *const u8 =
            bpf_probe_read_kernel(task.add(path.task_files as usize) as _).ok()?;
        let fdt: *const u8 = bpf_probe_read_kernel(files.add(path.files_fdt as usize) as _).ok()?;
        let max_fds: u32 = bpf_probe_read_kernel(fdt.add(path.fdt_max_fds as usize) as _).ok()?;
        if fd >= max_fds {
            return None;
        }
        let table: *const *const u8 =
            bpf_probe_read_kernel(fdt.add(path.fdt_fd as usize) as _).ok()?;
        let file = bpf_probe_read_kernel(table.add(fd as usize)).ok()?;
        if file.is_null() {
            return None;
        }
        let inode: *const u8 =
            bpf_probe_read_kernel(file.add(path.file_inode as usize) as _).ok()?;
        let mode: u16 = bpf_probe_read_kernel(inode.add(path.inode_mode as usize) as _).ok()?;
        Some(u32::from(mode) & S_IFMT)
    }
}

/// Sends the GIL wait of thread `tid` that ended by `now`.
#[inline(always)]
pub fn send_gil_wait(tid: u32, now: u64) {
    let Some(wait) = GIL_WAITS.get_ptr_mut(tid) else {
        count(Counter::LostGilWait);
        return;
    };
    // SAFETY: the pointer comes from a successful lookup in a map we own.
    let wait = unsafe { &mut *wait };
    wait.header = header(EventKind::GilWait, now);
    if EVENTS.output::<GilWaitEvent>(&*wait, 0).is_err() {
        count(Counter::LostGilWait);
    }
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
