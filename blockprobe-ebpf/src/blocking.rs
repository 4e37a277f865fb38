//! Blocking calls of loop threads, learned at `sched_switch`.
//!
//! No syscall but the pollers runs a blockprobe program. When a loop thread off-await
//! leaves the CPU blocked, its saved user registers say which syscall it is in and on
//! what (in the raw `sched_switch` tracepoint the task switched out is still `current`).
//! Each blocked switch-out starts a call: its Python stack is walked then (the frames
//! cannot change while the thread is inside the call) and the type of its file
//! descriptor read. It ends at the thread's next blocked switch-out or its next poll,
//! and lasts the off-CPU time it accumulated meanwhile (blocked, then waiting for a CPU
//! once woken); it is reported then when long enough, or added to the short calls of its
//! cause. Nothing on the saved registers tells two consecutive identical calls (a
//! `time.sleep` in a loop) from one call that blocked twice, so the rare call that
//! blocks more than once (a spurious wake-up, a page fault inside it) counts as several.

use aya_ebpf::helpers::bpf_probe_read_kernel;
use blockprobe_common::{
    blocking::BlockingCall,
    cause,
    config::GlobalConfig,
    counters::Counter,
    event::{BlockedCallEvent, EventKind},
    stack::flags as stack_flags,
    syscalls::{cause_of, fd_count_arg, is_blocking, is_futex, is_poller, takes_fd},
    thread::LoopTiming,
};

use crate::{
    emit::{current_ids, header},
    evidence::evidence,
    gil::{remember_gil_holder, send_gil_wait, waits_for_gil},
    maps::{BLOCKING_CALLS, BLOCKING_SCRATCH, EVENTS, GIL_WAITS, PROCESSES, count},
    regs::{current_regs, syscall_arg},
    task::fd_mode,
    walk,
};

/// Loop thread `tid` (the current task), off-await, leaves the CPU blocked at `now`: the
/// cause its off-CPU period counts as, from the syscall it is in.
#[inline(always)]
pub fn on_blocked(config: &GlobalConfig, tid: u32, timing: &mut LoopTiming, now: u64) -> u32 {
    let regs = current_regs();
    // SAFETY: the offset comes from BTF; the read is fault-tolerant.
    let nr = unsafe {
        bpf_probe_read_kernel(regs.add(config.pt_regs_syscall_nr_offset as usize) as *const i64)
    }
    .unwrap_or(-1);
    // A callback's own poll, timed by the poll hooks.
    if is_poller(nr as u64) {
        return if timing.syscall_enter_ns != 0 {
            timing.syscall_cause
        } else {
            cause::IO as u32
        };
    }
    finish(config, tid, timing, now);
    if nr < 0 || !is_blocking(nr as u64) {
        return cause::OTHER as u32;
    }
    begin(config, tid, timing, nr as u32, regs, now)
}

/// Starts blocking call `nr` (saved registers `regs`) of loop thread `tid` at `now`;
/// returns its cause.
#[inline(always)]
fn begin(
    config: &GlobalConfig,
    tid: u32,
    timing: &mut LoopTiming,
    nr: u32,
    regs: *const u8,
    now: u64,
) -> u32 {
    let (tgid, _) = current_ids();
    // SAFETY: read-only lookup; userspace writes whole values.
    let process = unsafe { PROCESSES.get(tgid) };
    let mut syscall_cause = cause_of(nr) as u32;
    if let Some(arg) = fd_count_arg(nr)
        && syscall_arg(config, regs, arg) == Some(0)
    {
        syscall_cause = cause::SLEEP as u32;
    }
    if is_futex(u64::from(nr))
        && let Some(process) = process
        && waits_for_gil(nr, config, process, regs)
    {
        syscall_cause = cause::GIL as u32;
        remember_gil_holder(config, process, tid, now);
    }
    timing.syscall_enter_ns = now;
    timing.syscall_nr = nr;
    timing.syscall_cause = syscall_cause;
    let Some(call) = entry(tid) else {
        count(Counter::LostBlockedCall);
        return syscall_cause;
    };
    // SAFETY: the pointer comes from a successful lookup in a map only this thread's
    // programs write.
    let call = unsafe { &mut *call };
    call.off_cpu_at_start_ns = off_cpu_total(timing);
    let event = &mut call.event;
    // Kind 0: nothing to report (a GIL wait is reported with its holder's stack).
    event.header.kind = 0;
    if syscall_cause == cause::GIL as u32 {
        return syscall_cause;
    }
    event.header.kind = EventKind::BlockedCall as u32;
    event.syscall_nr = nr;
    event.cause = syscall_cause;
    event.start_ns = now;
    event.ret = 0;
    event.fd = -1;
    event.fd_mode = 0;
    if takes_fd(nr)
        && let Some(fd) = syscall_arg(config, regs, 0)
    {
        event.fd = fd as i32;
        event.fd_mode = fd_mode(config, fd as u32).unwrap_or(0);
    }
    match process {
        Some(process) => walk::capture(config, process, &mut event.stack),
        None => {
            // Its process is being inspected: no walk recipe yet. The call is still
            // reported, without a stack; userspace walks the threads it finds blocked
            // once it traces the process, and gives the call that stack.
            let stack = &mut event.stack;
            stack.len = 0;
            stack.flags = stack_flags::NO_PROCESS;
            stack.tstate = 0;
            stack.task_name = 0;
        }
    }
    syscall_cause
}

/// Thread `tid`'s entry in [`BLOCKING_CALLS`], created when missing.
#[inline(always)]
fn entry(tid: u32) -> Option<*mut BlockingCall> {
    if let Some(call) = BLOCKING_CALLS.get_ptr_mut(tid) {
        return Some(call);
    }
    let scratch = BLOCKING_SCRATCH.get_ptr(0)?;
    // SAFETY: per-CPU scratch entry. Its contents do not matter: every field used is
    // written before it is read.
    let value: &BlockingCall = unsafe { &*scratch };
    // By reference: the value does not fit the 512-byte BPF stack.
    BLOCKING_CALLS.insert(tid, value, 0).ok()?;
    BLOCKING_CALLS.get_ptr_mut(tid)
}

/// The blocking call loop thread `tid` was in, if any, has ended (at `now` or before):
/// reported when it lasted at least `min_block_ns`. A callback's own poll is left to the
/// poll hooks.
#[inline(always)]
pub fn finish(config: &GlobalConfig, tid: u32, timing: &mut LoopTiming, now: u64) {
    let start = timing.syscall_enter_ns;
    if start == 0 || is_poller(u64::from(timing.syscall_nr)) {
        return;
    }
    timing.close_period(now);
    timing.syscall_enter_ns = 0;
    if timing.syscall_cause == cause::GIL as u32 {
        // The interpreter waits for the GIL in slices of its switch interval (5 ms),
        // each shorter than `min_block_ns` at high thresholds: what counts is how long
        // the loop has been away.
        if now.saturating_sub(timing.poll_exit_ns) >= config.min_block_ns {
            send_gil_wait(tid, now);
        }
        let _ = GIL_WAITS.remove(tid);
        return;
    }
    let Some(call) = BLOCKING_CALLS.get_ptr_mut(tid) else {
        return;
    };
    // SAFETY: the pointer comes from a successful lookup in a map only this thread's
    // programs write.
    let call = unsafe { &mut *call };
    if call.event.header.kind != EventKind::BlockedCall as u32 {
        return;
    }
    let took = off_cpu_total(timing).saturating_sub(call.off_cpu_at_start_ns);
    let Some((short_calls, short_ns)) = evidence(tid, timing, took, config.min_block_ns) else {
        return;
    };
    let event = &mut call.event;
    event.header = header(EventKind::BlockedCall, event.start_ns + took);
    event.short_calls = short_calls;
    event._pad = 0;
    event.short_ns = short_ns;
    if EVENTS.output::<BlockedCallEvent>(event, 0).is_err() {
        count(Counter::LostBlockedCall);
    }
}

/// The off-CPU time of the thread's current off-await interval so far (closed periods).
#[inline(always)]
fn off_cpu_total(timing: &LoopTiming) -> u64 {
    let mut total = 0u64;
    for ns in timing.off_cpu_ns {
        total += ns;
    }
    total
}
