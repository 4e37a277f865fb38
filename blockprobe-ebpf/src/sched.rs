//! Scheduler events on loop threads: where off-CPU time goes during a stall.
//!
//! A loop thread that leaves the CPU off-await is either preempted (runnable: run-queue
//! time) or blocked (its current syscall says why: sleep, I/O, lock, GIL, child wait).
//! A wakeup turns blocked time into run-queue time until the thread runs again.

use aya_ebpf::programs::TracePointContext;
use blockprobe_common::cause;

use crate::{
    emit::now_ns,
    maps::{LOOP_TIMING, config},
};

/// Mask of the task-state bits in `prev_state`; 0 means runnable (preempted).
const TASK_STATE_MASK: u64 = 0xff;

/// Adds the open off-CPU period of `timing` to its cause, as of `now`.
#[inline(always)]
fn close_period(timing: &mut blockprobe_common::thread::LoopTiming, now: u64) {
    let since = timing.off_cpu_since_ns;
    if since == 0 {
        return;
    }
    if let Some(slot) = timing.off_cpu_ns.get_mut(timing.off_cpu_cause as usize) {
        *slot += now.saturating_sub(since);
    }
    timing.off_cpu_since_ns = 0;
}

/// `sched_switch`: the previous task leaves the CPU, the next one takes it.
#[inline(always)]
pub fn on_switch(ctx: &TracePointContext) {
    let Some(config) = config() else { return };
    // SAFETY: userspace read these offsets from the tracepoint's format file.
    let (prev, state, next) = unsafe {
        (
            ctx.read_at::<i32>(config.switch_prev_pid_offset as usize),
            ctx.read_at::<u64>(config.switch_prev_state_offset as usize),
            ctx.read_at::<i32>(config.switch_next_pid_offset as usize),
        )
    };
    let now = now_ns();
    if let (Ok(prev), Ok(state)) = (prev, state)
        && let Some(timing) = LOOP_TIMING.get_ptr_mut(prev as u32)
    {
        // SAFETY: the pointer comes from a successful lookup in a map we own.
        let timing = unsafe { &mut *timing };
        if timing.poll_exit_ns != 0 {
            timing.off_cpu_since_ns = now;
            timing.off_cpu_cause = if state & TASK_STATE_MASK == 0 {
                cause::RUNQUEUE as u32
            } else if timing.syscall_enter_ns != 0 {
                timing.syscall_cause
            } else {
                cause::OTHER as u32
            };
        }
    }
    if let Ok(next) = next
        && let Some(timing) = LOOP_TIMING.get_ptr_mut(next as u32)
    {
        // SAFETY: as above.
        close_period(unsafe { &mut *timing }, now);
    }
}

/// `sched_wakeup`: a blocked loop thread becomes runnable; from now on it waits for a CPU.
#[inline(always)]
pub fn on_wakeup(ctx: &TracePointContext) {
    let Some(config) = config() else { return };
    // SAFETY: userspace read this offset from the tracepoint's format file.
    let Ok(pid) = (unsafe { ctx.read_at::<i32>(config.wakeup_pid_offset as usize) }) else {
        return;
    };
    let Some(timing) = LOOP_TIMING.get_ptr_mut(pid as u32) else {
        return;
    };
    // SAFETY: the pointer comes from a successful lookup in a map we own.
    let timing = unsafe { &mut *timing };
    if timing.off_cpu_since_ns == 0 || timing.off_cpu_cause == cause::RUNQUEUE as u32 {
        return;
    }
    let now = now_ns();
    close_period(timing, now);
    timing.off_cpu_since_ns = now;
    timing.off_cpu_cause = cause::RUNQUEUE as u32;
}
