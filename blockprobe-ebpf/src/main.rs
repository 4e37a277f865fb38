//! blockprobe's kernel side.
//!
//! Raw tracepoints (no kprobes) and uprobes that fire once per loop run, never per
//! iteration (libuv's `uv_run`, asyncio's `_set_running_loop`): two raw syscall
//! tracepoints see the
//! epoll-family pollers, which time each asyncio loop thread's off-await intervals, blocking syscalls made inside those intervals are
//! reported with the Python stack that made them, and scheduler process events keep the
//! set of traced processes current. Knowledge of CPython lives in userspace, which hands
//! each process's stack-walk recipe to [`maps::PROCESSES`].
#![no_std]
#![no_main]

mod emit;
mod loop_run;
mod loop_thread;
mod maps;
mod process;
mod sched;
mod walk;

use aya_ebpf::{
    helpers::bpf_probe_read_kernel,
    macros::{perf_event, raw_tracepoint, uprobe, uretprobe},
    programs::{PerfEventContext, ProbeContext, RawTracePointContext, RetProbeContext},
};
use blockprobe_common::syscalls::{is_blocking, is_poller, nr::CLOSE};

/// `raw_syscalls:sys_enter` (raw): pollers start a loop wait, blocking calls of loop
/// threads are timed, and a loop closing its poller ends it. Every syscall on the host
/// passes here: anything but a poller costs a few compares and, for blocking calls and
/// `close`, one array load.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn sys_enter(ctx: RawTracePointContext) -> i32 {
    let nr: u64 = ctx.arg(1);
    if is_poller(nr) {
        loop_thread::on_poll_enter(nr as u32, ctx.arg(0));
    } else if is_blocking(nr) && maps::is_loop_thread(emit::current_ids().1) {
        loop_thread::on_block_enter(nr as u32, ctx.arg(0));
    } else if nr == u64::from(CLOSE) {
        let tid = emit::current_ids().1;
        if maps::is_loop_thread(tid) {
            loop_thread::on_close(tid, ctx.arg(0));
        }
    }
    0
}

/// `raw_syscalls:sys_exit` (raw): a loop leaves its poller, or a timed call returns.
/// Only loop threads get past the first check.
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit(ctx: RawTracePointContext) -> i32 {
    let tid = emit::current_ids().1;
    if !maps::is_loop_thread(tid) {
        return 0;
    }
    let Some(config) = maps::config() else {
        return 0;
    };
    let regs: *const u8 = ctx.arg(0);
    // SAFETY: `regs` is the kernel's pt_regs of the current syscall; the read is
    // fault-tolerant and the offset comes from the kernel's BTF.
    let nr = unsafe {
        bpf_probe_read_kernel(regs.add(config.pt_regs_syscall_nr_offset as usize) as *const u64)
    };
    match nr {
        Ok(nr) if is_poller(nr) => loop_thread::on_poll_exit(tid, ctx.arg(1), regs),
        Ok(nr) if is_blocking(nr) => loop_thread::on_block_exit(ctx.arg(1), regs),
        _ => {}
    }
    0
}

// The scheduler hooks are raw tracepoints: a classic tracepoint's program is skipped
// while any BPF map syscall holds the CPU's `bpf_prog_active` (userspace reads counters
// and writes maps), and a skipped switch would turn a sleep into CPU time.

/// `sched_switch` (raw): off-CPU time of loop threads, split into waiting and run queue.
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn sched_switch(ctx: RawTracePointContext) -> i32 {
    sched::on_switch(&ctx);
    0
}

/// `sched_wakeup` (raw): a sleeping loop thread becomes runnable.
#[raw_tracepoint(tracepoint = "sched_wakeup")]
pub fn sched_wakeup(ctx: RawTracePointContext) -> i32 {
    sched::on_wakeup(&ctx);
    0
}

/// Sampling timer (perf task clock, one per loop thread): the stack of a loop thread
/// running long off-await, for CPU-bound stalls.
#[perf_event]
pub fn cpu_sample(_ctx: PerfEventContext) -> u32 {
    loop_thread::on_cpu_sample();
    0
}

/// Uprobe on libuv's `uv_run` (uvloop): a loop written in C starts running.
#[uprobe]
pub fn loop_run_enter(_ctx: ProbeContext) -> u32 {
    loop_run::on_enter();
    0
}

/// Uretprobe on libuv's `uv_run`: the loop stopped running.
#[uretprobe]
pub fn loop_run_exit(_ctx: RetProbeContext) -> u32 {
    loop_run::on_stop();
    0
}

/// Uprobe on `_asyncio._set_running_loop`: an asyncio loop starts or stops running.
#[uprobe]
pub fn running_loop_set(_ctx: ProbeContext) -> u32 {
    loop_run::on_stop();
    0
}

/// `sched_process_fork` (raw): children of `blockprobe run`'s command join its family.
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn process_fork(ctx: RawTracePointContext) -> i32 {
    process::on_fork(&ctx);
    0
}

/// `sched_process_exec` (raw): a process's Python state is gone; maybe a new one comes.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn process_exec(ctx: RawTracePointContext) -> i32 {
    process::on_exec(&ctx);
    0
}

/// `sched_process_exit` (raw): forget the thread, and the process when it is the last.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn process_exit(ctx: RawTracePointContext) -> i32 {
    process::on_exit(&ctx);
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
