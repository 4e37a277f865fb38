//! Walking a thread's Python stack, following the recipe userspace wrote for its process.
//!
//! No uprobe is needed: the thread's `PyThreadState*` sits in a glibc pthread TSS slot at
//! a fixed offset from the thread pointer (`fs_base`), readable even while the thread has
//! released the GIL — which is exactly when it blocks.

use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel, bpf_probe_read_user};
use blockprobe_common::{
    config::{GlobalConfig, PyProcess},
    stack::{RawFrame, RawStack, flags},
};

/// Reads a user-space u64; `None` on a fault.
#[inline(always)]
pub fn read_user_u64(addr: u64) -> Option<u64> {
    // SAFETY: bpf_probe_read_user is fault-tolerant; a bad address yields an error.
    unsafe { bpf_probe_read_user(addr as *const u64) }.ok()
}

/// The current thread's `fs_base`, from its `task_struct`.
#[inline(always)]
fn thread_pointer(config: &GlobalConfig) -> Option<u64> {
    if config.task_fsbase_offset == 0 {
        return None;
    }
    // SAFETY: the current task is valid while we run; the read is fault-tolerant.
    unsafe {
        let task = bpf_get_current_task() as *const u8;
        bpf_probe_read_kernel(task.add(config.task_fsbase_offset as usize) as *const u64).ok()
    }
}

/// The innermost frame pointer of `tstate`.
#[inline(always)]
fn innermost_frame(process: &PyProcess, tstate: u64) -> Option<u64> {
    let mut frame = read_user_u64(tstate + process.frame_path[0] as u64)?;
    if process.frame_path_len == 2 && frame != 0 {
        frame = read_user_u64(frame + process.frame_path[1] as u64)?;
    }
    Some(frame)
}

/// Fills `out` with the current thread's Python stack, innermost frame first.
#[inline(always)]
pub fn capture(config: &GlobalConfig, process: &PyProcess, out: &mut RawStack) {
    let tstate = thread_pointer(config)
        .and_then(|fsbase| read_user_u64(fsbase + process.tstate_slot_offset))
        .unwrap_or(0);
    capture_thread(process, tstate, out);
}

/// Fills `out` with the Python stack of the thread whose `PyThreadState*` is `tstate`.
#[inline(always)]
pub fn capture_thread(process: &PyProcess, tstate: u64, out: &mut RawStack) {
    out.len = 0;
    out.flags = 0;
    out.tstate = 0;
    out.task_name = 0;
    if tstate == 0 {
        out.flags = flags::NO_THREAD_STATE;
        return;
    }
    out.tstate = tstate;
    if process.running_task_offset != 0 {
        let task = read_user_u64(tstate + process.running_task_offset as u64).unwrap_or(0);
        if task != 0 {
            out.task_name = read_user_u64(task + process.task_name_offset as u64).unwrap_or(0);
        }
    }
    let Some(mut frame) = innermost_frame(process, tstate) else {
        out.flags = flags::UNREADABLE_FRAME;
        return;
    };
    // One slot per frame examined, shim frames included (their code is stored as 0 and
    // userspace skips them): the slot index is the loop counter, which keeps the verifier's
    // state count linear in the stack depth.
    let mut len = 0usize;
    for slot in out.frames.iter_mut() {
        if frame == 0 {
            break;
        }
        let (Some(code), Some(instr), Some(previous)) = (
            read_user_u64(frame + process.frame_code as u64),
            read_user_u64(frame + process.frame_instr as u64),
            read_user_u64(frame + process.frame_previous as u64),
        ) else {
            out.flags |= flags::UNREADABLE_FRAME;
            break;
        };
        let shim = process.owner_skip_min != 0 && {
            // SAFETY: fault-tolerant read of one byte.
            let owner =
                unsafe { bpf_probe_read_user((frame + process.frame_owner as u64) as *const u8) };
            owner.map_or(true, |o| o as u32 >= process.owner_skip_min)
        };
        *slot = RawFrame {
            code: if shim { 0 } else { code & process.code_mask },
            instr,
        };
        len += 1;
        frame = previous;
    }
    if frame != 0 && out.flags == 0 {
        out.flags = flags::TRUNCATED;
    }
    out.len = len as u32;
}
