//! GIL waits of loop threads: telling a futex wait on the GIL from any other, capturing
//! the holder's stack as the wait begins, and sending the wait when it ends.

use blockprobe_common::{
    config::{GIL_LAST_HOLDER, GIL_STATE_SIZE, GlobalConfig, PyProcess},
    counters::Counter,
    event::{EventKind, GilWaitEvent},
    syscalls::{futex_op_waits, nr},
    walk::{UserMemory, walk_thread},
};

use crate::{
    emit::header,
    maps::{EVENTS, GIL_SCRATCH, GIL_WAITS, count},
    regs::syscall_arg,
    walk::{self, CurrentUser},
};

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
