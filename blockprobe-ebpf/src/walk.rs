//! Walking the current thread's Python stack, from the kernel.
//!
//! No uprobe is needed: the thread's `PyThreadState*` sits in a glibc pthread TSS slot at
//! a fixed offset from the thread pointer (`fs_base`), readable even while the thread has
//! released the GIL — which is exactly when it blocks. The walk itself is shared with
//! userspace ([`blockprobe_common::walk`]).

use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel, bpf_probe_read_user};
use blockprobe_common::{
    config::{GlobalConfig, PyProcess},
    stack::RawStack,
    walk::{UserMemory, walk_thread},
};

/// The current process's memory, read with `bpf_probe_read_user`.
pub struct CurrentUser;

impl UserMemory for CurrentUser {
    #[inline(always)]
    fn read_u64(&self, addr: u64) -> Option<u64> {
        // SAFETY: bpf_probe_read_user is fault-tolerant; a bad address yields an error.
        unsafe { bpf_probe_read_user(addr as *const u64) }.ok()
    }

    #[inline(always)]
    fn read_u8(&self, addr: u64) -> Option<u8> {
        // SAFETY: as above.
        unsafe { bpf_probe_read_user(addr as *const u8) }.ok()
    }
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

/// Fills `out` with the current thread's Python stack, innermost frame first.
#[inline(always)]
pub fn capture(config: &GlobalConfig, process: &PyProcess, out: &mut RawStack) {
    let tstate = thread_pointer(config)
        .and_then(|fsbase| CurrentUser.read_u64(fsbase + process.tstate_slot_offset))
        .unwrap_or(0);
    walk_thread(&CurrentUser, process, tstate, out);
}
