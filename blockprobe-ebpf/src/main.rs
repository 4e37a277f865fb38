//! blockprobe's kernel side.
//!
//! No kprobes: the epoll-family pollers, hooked on their own ([`hooks`]), time each
//! asyncio loop thread's off-await intervals; uprobes that fire once per loop run, never
//! per iteration (libuv's `uv_run`, asyncio's `_set_running_loop`), see loops start and
//! stop; the scheduler tracepoints split the intervals by cause and learn the blocking
//! syscalls made inside them, reported with the Python stack that made them
//! ([`blocking`]); and process events keep the set of traced processes current.
//! Knowledge of CPython lives in userspace, which hands
//! each process's stack-walk recipe to [`maps::PROCESSES`].
#![no_std]
#![no_main]

mod blocking;
mod emit;
mod evidence;
mod gil;
mod hooks;
mod loop_run;
mod loop_thread;
mod maps;
mod process;
mod regs;
mod sched;
mod task;
mod walk;

use aya_ebpf::{
    macros::{perf_event, raw_tracepoint, uprobe, uretprobe},
    programs::{PerfEventContext, ProbeContext, RawTracePointContext, RetProbeContext},
};

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
