//! Scheduler events on loop threads: where off-CPU time goes during a stall.
//!
//! A loop thread that leaves the CPU off-await is either preempted (runnable: run-queue
//! time) or blocked (its current syscall says why: sleep, I/O, lock, GIL, child wait).
//! A wakeup turns blocked time into run-queue time until the thread runs again.
//!
//! The kernel does not always report a switch-in (this kernel was seen to resume a
//! sleeping thread from a hard interrupt with neither `sched_wakeup` nor `sched_switch`
//! reaching BPF or tracefs). So the poll programs and the next switch-out of a loop
//! thread also close a period left open: its sleep is not lost.

use aya_ebpf::{helpers::bpf_probe_read_kernel, programs::RawTracePointContext};
use blockprobe_common::{cause, config::GlobalConfig};

use crate::{
    blocking,
    emit::now_ns,
    maps::{LOOP_TIMING, config, is_loop_thread},
    task::task_tid,
};

/// Mask of the task-state bits; 0 means runnable.
const TASK_STATE_MASK: u32 = 0xff;
/// Task states of a task stopped from outside (`include/linux/sched.h`, 6.x):
/// `__TASK_STOPPED` (a stop signal), `__TASK_TRACED` (a ptrace stop) and `TASK_FROZEN`
/// (the cgroup v1 and system freezer's refrigerator).
const STOPPED_STATES: u32 = 0x4 | 0x8 | 0x8000;
/// `JOBCTL_TRAP_FREEZE` (`include/linux/sched/jobctl.h`): the cgroup v2 freezer traps a
/// task with this bit, in an ordinary interruptible sleep.
const JOBCTL_TRAP_FREEZE: u64 = 1 << 23;

/// `sched_switch(preempt, prev, next)`: the previous task leaves the CPU, the next one
/// takes it.
#[inline(always)]
pub fn on_switch(ctx: &RawTracePointContext) {
    let Some(config) = config() else { return };
    let preempt: u64 = ctx.arg(0);
    let prev: *const u8 = ctx.arg(1);
    let next: *const u8 = ctx.arg(2);
    let now = now_ns();
    if let Some(prev_tid) = task_tid(config, prev)
        && is_loop_thread(prev_tid)
        && let Some(timing) = LOOP_TIMING.get_ptr_mut(prev_tid)
    {
        // SAFETY: the pointer comes from a successful lookup in a map we own.
        let timing = unsafe { &mut *timing };
        // A switch-in the kernel did not report: the thread ran until now.
        timing.close_period(now);
        if timing.poll_exit_ns != 0 {
            // SAFETY: `prev` is the task being switched out; the read is fault-tolerant.
            let state = unsafe {
                bpf_probe_read_kernel(prev.add(config.task_state_offset as usize) as *const u32)
            }
            .unwrap_or(0);
            let off_cpu_cause = if preempt & 1 != 0 {
                cause::RUNQUEUE as u32
            } else if stopped(config, prev, state) {
                cause::STOPPED as u32
            } else if state & TASK_STATE_MASK == 0 {
                cause::RUNQUEUE as u32
            } else {
                blocking::on_blocked(config, prev_tid, timing, now)
            };
            timing.off_cpu_since_ns = now;
            timing.off_cpu_cause = off_cpu_cause;
        }
    }
    if let Some(next_tid) = task_tid(config, next)
        && is_loop_thread(next_tid)
        && let Some(timing) = LOOP_TIMING.get_ptr_mut(next_tid)
    {
        // SAFETY: as above.
        unsafe { &mut *timing }.close_period(now);
    }
}

/// Whether `task`, leaving the CPU in `state`, is stopped from outside (see
/// [`cause::STOPPED`]) rather than blocked by its own code.
#[inline(always)]
fn stopped(config: &GlobalConfig, task: *const u8, state: u32) -> bool {
    if state & STOPPED_STATES != 0 {
        return true;
    }
    // SAFETY: `task` is the task being switched out; the read is fault-tolerant.
    let jobctl = unsafe {
        bpf_probe_read_kernel(task.add(config.task_jobctl_offset as usize) as *const u64)
    }
    .unwrap_or(0);
    jobctl & JOBCTL_TRAP_FREEZE != 0
}

/// `sched_wakeup(task)`: a blocked loop thread becomes runnable; from now on it waits
/// for a CPU.
#[inline(always)]
pub fn on_wakeup(ctx: &RawTracePointContext) {
    let Some(config) = config() else { return };
    let Some(tid) = task_tid(config, ctx.arg(0)) else {
        return;
    };
    if !is_loop_thread(tid) {
        return;
    }
    let Some(timing) = LOOP_TIMING.get_ptr_mut(tid) else {
        return;
    };
    // SAFETY: the pointer comes from a successful lookup in a map we own.
    let timing = unsafe { &mut *timing };
    if timing.off_cpu_since_ns == 0 || timing.off_cpu_cause == cause::RUNQUEUE as u32 {
        return;
    }
    let now = now_ns();
    timing.close_period(now);
    timing.off_cpu_since_ns = now;
    timing.off_cpu_cause = cause::RUNQUEUE as u32;
}
