//! blockprobe's kernel side.
//!
//! Tracepoints only (no kprobes, no uprobes): the epoll-family syscalls time each asyncio
//! loop thread's off-await intervals, blocking syscalls made inside those intervals are
//! reported with the Python stack that made them, and scheduler process events keep the
//! set of traced processes current. Knowledge of CPython lives in userspace, which hands
//! each process's stack-walk recipe to [`maps::PROCESSES`].
#![no_std]
#![no_main]

mod emit;
mod loop_thread;
mod maps;
mod process;
mod walk;

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};

/// Offset of `__syscall_nr` in every `syscalls:sys_{enter,exit}_*` record.
const SYSCALL_NR_OFFSET: usize = 8;

/// `syscalls:sys_enter_epoll_{wait,pwait,pwait2}`: a loop thread goes back to its poller.
#[tracepoint]
pub fn poll_enter(ctx: TracePointContext) -> u32 {
    loop_thread::on_poll_enter(&ctx);
    0
}

/// `syscalls:sys_exit_epoll_{wait,pwait,pwait2}`: a loop thread leaves its poller.
#[tracepoint]
pub fn poll_exit(_ctx: TracePointContext) -> u32 {
    loop_thread::on_poll_exit();
    0
}

/// `syscalls:sys_enter_*` of blocking syscalls (sleep, read, recv, connect, futex, wait…).
#[tracepoint]
pub fn block_enter(ctx: TracePointContext) -> u32 {
    // SAFETY: every syscall tracepoint record has `int __syscall_nr` at this offset.
    if let Ok(nr) = unsafe { ctx.read_at::<i32>(SYSCALL_NR_OFFSET) } {
        loop_thread::on_block_enter(nr as u32);
    }
    0
}

/// `syscalls:sys_exit_*` of the same blocking syscalls.
#[tracepoint]
pub fn block_exit(ctx: TracePointContext) -> u32 {
    loop_thread::on_block_exit(&ctx);
    0
}

/// `sched:sched_process_fork`: children of `blockprobe run`'s command join its family.
#[tracepoint]
pub fn process_fork(ctx: TracePointContext) -> u32 {
    process::on_fork(&ctx);
    0
}

/// `sched:sched_process_exec`: a process's Python state is gone; maybe a new one comes.
#[tracepoint]
pub fn process_exec(ctx: TracePointContext) -> u32 {
    process::on_exec(&ctx);
    0
}

/// `sched:sched_process_exit`: forget the thread, and the process when it is the last.
#[tracepoint]
pub fn process_exit(ctx: TracePointContext) -> u32 {
    process::on_exit(&ctx);
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
