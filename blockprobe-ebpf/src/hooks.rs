//! Where the pollers are hooked: fentry/fexit on the epoll syscall functions where the
//! kernel allows BPF trampolines, else their per-syscall tracepoints (userspace picks
//! one set and loads only it). Either way no other syscall runs a blockprobe program;
//! `close` is hooked too, for a loop that closes its poller.

use aya_ebpf::{
    EbpfContext as _,
    macros::{fentry, fexit, tracepoint},
    programs::{FEntryContext, FExitContext, TracePointContext},
};
use blockprobe_common::syscalls::nr::{EPOLL_PWAIT, EPOLL_PWAIT2, EPOLL_WAIT};

use crate::{
    emit::current_ids,
    loop_thread,
    maps::{config, is_loop_thread},
    regs::{current_regs, syscall_arg, untyped},
};

/// Offset of `__syscall_nr` in a `syscalls:sys_enter_*`/`sys_exit_*` record.
const TP_SYSCALL_NR: usize = 8;
/// Offset of the first argument (`sys_enter_*`) or of `ret` (`sys_exit_*`).
const TP_FIRST_FIELD: usize = 16;

/// The first argument of the syscall whose saved registers are `regs` (fentry's), as a
/// file descriptor.
#[inline(always)]
fn fd_arg(regs: *const u8) -> u32 {
    config()
        .and_then(|config| syscall_arg(config, regs, 0))
        .unwrap_or(u64::MAX) as u32
}

/// Field `T` at `offset` of a syscall tracepoint's record (a plain load: the verifier
/// allows reads inside the record).
#[inline(always)]
fn tp_field<T: Copy>(ctx: &TracePointContext, offset: usize) -> T {
    // SAFETY: `offset` lies inside every syscall record (see the constants above).
    unsafe { *(ctx.as_ptr() as *const u8).add(offset).cast::<T>() }
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

/// A thread enters `close` on descriptor `fd()`: one array load for all but loop threads.
#[inline(always)]
fn close_enter(fd: impl Fn() -> u32) -> i32 {
    let tid = current_ids().1;
    if is_loop_thread(tid) {
        loop_thread::on_close(tid, fd());
    }
    0
}

/// fentry on `epoll_wait`.
#[fentry(function = "__x64_sys_epoll_wait")]
pub fn ep_wait_in(ctx: FEntryContext) -> i32 {
    let regs = untyped(ctx.arg(0));
    loop_thread::on_poll_enter(EPOLL_WAIT, || fd_arg(regs), || regs);
    0
}

/// fentry on `epoll_pwait`.
#[fentry(function = "__x64_sys_epoll_pwait")]
pub fn ep_pwait_in(ctx: FEntryContext) -> i32 {
    let regs = untyped(ctx.arg(0));
    loop_thread::on_poll_enter(EPOLL_PWAIT, || fd_arg(regs), || regs);
    0
}

/// fentry on `epoll_pwait2`.
#[fentry(function = "__x64_sys_epoll_pwait2")]
pub fn ep_pwait2_in(ctx: FEntryContext) -> i32 {
    let regs = untyped(ctx.arg(0));
    loop_thread::on_poll_enter(EPOLL_PWAIT2, || fd_arg(regs), || regs);
    0
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
    let regs = untyped(ctx.arg(0));
    close_enter(|| fd_arg(regs))
}

/// `syscalls:sys_enter_epoll_wait`, `…_epoll_pwait`, `…_epoll_pwait2`.
#[tracepoint]
pub fn tp_poll_in(ctx: TracePointContext) -> i32 {
    let nr: i32 = tp_field(&ctx, TP_SYSCALL_NR);
    let fd = || tp_field::<u64>(&ctx, TP_FIRST_FIELD) as u32;
    loop_thread::on_poll_enter(nr as u32, fd, current_regs);
    0
}

/// `syscalls:sys_exit_epoll_wait`, `…_epoll_pwait`, `…_epoll_pwait2`.
#[tracepoint]
pub fn tp_poll_out(ctx: TracePointContext) -> i32 {
    poll_exit(tp_field(&ctx, TP_FIRST_FIELD))
}

/// `syscalls:sys_enter_close`.
#[tracepoint]
pub fn tp_close_in(ctx: TracePointContext) -> i32 {
    close_enter(|| tp_field::<u64>(&ctx, TP_FIRST_FIELD) as u32)
}
