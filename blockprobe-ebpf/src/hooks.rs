//! Where the pollers are hooked: fentry/fexit on the epoll syscall functions where the
//! kernel allows BPF trampolines, else their per-syscall tracepoints (userspace picks
//! one set and loads only it). Either way no other syscall runs a blockprobe program;
//! `close` is hooked too, for a loop that closes its poller.

use aya_ebpf::{
    macros::{fentry, fexit, tracepoint},
    programs::{FEntryContext, FExitContext, TracePointContext},
};
use blockprobe_common::syscalls::nr::{EPOLL_PWAIT, EPOLL_PWAIT2, EPOLL_WAIT};

use crate::{
    blocking::{current_regs, untyped},
    emit::current_ids,
    loop_thread,
    maps::is_loop_thread,
};

/// Offset of `__syscall_nr` in a `syscalls:sys_enter_*`/`sys_exit_*` record.
const TP_SYSCALL_NR: usize = 8;
/// Offset of the first argument (`sys_enter_*`) or of `ret` (`sys_exit_*`).
const TP_FIRST_FIELD: usize = 16;

/// A thread enters poller `nr` (saved registers `regs`).
#[inline(always)]
fn poll_enter(nr: u32, regs: *const u8) -> i32 {
    loop_thread::on_poll_enter(nr, regs);
    0
}

/// A thread leaves a poller (return value `ret`); only flagged threads get past the
/// first check.
#[inline(always)]
fn poll_exit(ret: i64) -> i32 {
    let tid = current_ids().1;
    if is_loop_thread(tid) {
        loop_thread::on_poll_exit(tid, ret);
    }
    0
}

/// A thread enters `close` (saved registers `regs`): one array load for all but loop
/// threads.
#[inline(always)]
fn close_enter(regs: *const u8) -> i32 {
    let tid = current_ids().1;
    if is_loop_thread(tid) {
        loop_thread::on_close(tid, regs);
    }
    0
}

/// fentry on `epoll_wait`.
#[fentry(function = "__x64_sys_epoll_wait")]
pub fn ep_wait_in(ctx: FEntryContext) -> i32 {
    poll_enter(EPOLL_WAIT, untyped(ctx.arg(0)))
}

/// fentry on `epoll_pwait`.
#[fentry(function = "__x64_sys_epoll_pwait")]
pub fn ep_pwait_in(ctx: FEntryContext) -> i32 {
    poll_enter(EPOLL_PWAIT, untyped(ctx.arg(0)))
}

/// fentry on `epoll_pwait2`.
#[fentry(function = "__x64_sys_epoll_pwait2")]
pub fn ep_pwait2_in(ctx: FEntryContext) -> i32 {
    poll_enter(EPOLL_PWAIT2, untyped(ctx.arg(0)))
}

/// fexit on `epoll_wait`.
#[fexit(function = "__x64_sys_epoll_wait")]
pub fn ep_wait_out(ctx: FExitContext) -> i32 {
    poll_exit(ctx.arg(1))
}

/// fexit on `epoll_pwait`.
#[fexit(function = "__x64_sys_epoll_pwait")]
pub fn ep_pwait_out(ctx: FExitContext) -> i32 {
    poll_exit(ctx.arg(1))
}

/// fexit on `epoll_pwait2`.
#[fexit(function = "__x64_sys_epoll_pwait2")]
pub fn ep_pwait2_out(ctx: FExitContext) -> i32 {
    poll_exit(ctx.arg(1))
}

/// fentry on `close`.
#[fentry(function = "__x64_sys_close")]
pub fn close_in(ctx: FEntryContext) -> i32 {
    close_enter(untyped(ctx.arg(0)))
}

/// `syscalls:sys_enter_epoll_wait`, `…_epoll_pwait`, `…_epoll_pwait2`.
#[tracepoint]
pub fn tp_poll_in(ctx: TracePointContext) -> i32 {
    // SAFETY: the offset is that of `__syscall_nr` in every syscall record.
    match unsafe { ctx.read_at::<i32>(TP_SYSCALL_NR) } {
        Ok(nr) => poll_enter(nr as u32, current_regs()),
        Err(_) => 0,
    }
}

/// `syscalls:sys_exit_epoll_wait`, `…_epoll_pwait`, `…_epoll_pwait2`.
#[tracepoint]
pub fn tp_poll_out(ctx: TracePointContext) -> i32 {
    // SAFETY: the offset is that of `ret` in every syscall exit record.
    match unsafe { ctx.read_at::<i64>(TP_FIRST_FIELD) } {
        Ok(ret) => poll_exit(ret),
        Err(_) => 0,
    }
}

/// `syscalls:sys_enter_close`.
#[tracepoint]
pub fn tp_close_in(_ctx: TracePointContext) -> i32 {
    close_enter(current_regs())
}
