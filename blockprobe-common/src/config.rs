//! Configuration written by userspace, read by the BPF programs.

use crate::{assert_size, user_pod};

/// Which processes the kernel side announces as candidates for tracing.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Only the processes userspace attached explicitly (`trace -p`).
    Explicit = 0,
    /// The process tree rooted at the command of `blockprobe run` ([`crate::maps::FAMILY`]).
    Family = 1,
    /// Every process on the host (`trace` without `-p`).
    Host = 2,
}

/// Global settings: entry 0 of [`crate::maps::CONFIG`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GlobalConfig {
    /// Off-await time from which a loop iteration is reported as a stall.
    pub threshold_ns: u64,
    /// Blocking syscalls on a loop thread shorter than this are not reported.
    pub min_block_ns: u64,
    /// Offset of `thread.fsbase` in the kernel's `task_struct` (from BTF).
    pub task_fsbase_offset: u64,
    /// Offset of `orig_ax` (the syscall number) in the kernel's `struct pt_regs` (from BTF).
    pub pt_regs_syscall_nr_offset: u64,
    /// Offset of `di` (a syscall's first argument) in the kernel's `struct pt_regs`.
    pub pt_regs_arg0_offset: u64,
    /// Offset of `si` (a syscall's second argument) in the kernel's `struct pt_regs`.
    pub pt_regs_arg1_offset: u64,
    /// Offset of `sp` (the user stack pointer) in the kernel's `struct pt_regs`.
    pub pt_regs_sp_offset: u64,
    /// Re-examine a thread found not to be a loop after this long.
    pub reclassify_after_ns: u64,
    /// A [`Scope`] value.
    pub scope: u32,
    /// Offset of `pid` (the thread id) in the kernel's `task_struct` (from BTF).
    pub task_pid_offset: u32,
    /// Offset of the task state in the kernel's `task_struct` (from BTF).
    pub task_state_offset: u32,
    /// Offset of `jobctl` in the kernel's `task_struct` (from BTF): the cgroup v2 freezer
    /// traps a task with a bit there, in an ordinary sleep state.
    pub task_jobctl_offset: u32,
    /// 1 when the `sched_process_exit` tracepoint passes `group_dead` (its second
    /// argument); 0 on kernels without it (then a process is gone when its leader exits).
    pub exit_has_group_dead: u32,
    /// How to find the inode mode of a file descriptor of the current task.
    pub fd_path: FdPath,
    /// Offset of `tgid` (the process id) in the kernel's `task_struct` (from BTF).
    pub task_tgid_offset: u32,
}
assert_size!(GlobalConfig, 112);

/// Offsets (from BTF) of the chain from a task to the type of a file descriptor:
/// `task->files->fdt`, bounded by `fdt->max_fds`, `fdt->fd[n]->f_inode->i_mode`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FdPath {
    /// Offset of `files` in `struct task_struct`.
    pub task_files: u32,
    /// Offset of `fdt` in `struct files_struct`.
    pub files_fdt: u32,
    /// Offset of `max_fds` in `struct fdtable`.
    pub fdt_max_fds: u32,
    /// Offset of `fd` (the `struct file *` array) in `struct fdtable`.
    pub fdt_fd: u32,
    /// Offset of `f_inode` in `struct file`.
    pub file_inode: u32,
    /// Offset of `i_mode` in `struct inode`.
    pub inode_mode: u32,
}
assert_size!(FdPath, 24);

/// How to find and walk the Python stack of a thread of one process
/// (value of [`crate::maps::PROCESSES`]). Every offset is in bytes.
///
/// The walk, done by BPF:
/// `tstate = *(fsbase + tstate_slot_offset)`;
/// `frame = *(tstate + frame_path[0])`, then `frame = *(frame + frame_path[1])` when
/// `frame_path_len == 2`; then for each frame: `code = *(frame + frame_code) & code_mask`,
/// `instr = *(frame + frame_instr)`, skip it when `owner_skip_min != 0` and
/// `*(u8*)(frame + frame_owner) >= owner_skip_min`, and go on with `*(frame + frame_previous)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PyProcess {
    /// Offset from the thread pointer (`fs_base`, glibc's `struct pthread`) to the
    /// pthread TSS slot that holds this thread's `PyThreadState*`.
    pub tstate_slot_offset: u64,
    /// Mask applied to the code pointer read from a frame (3.14 tags its low bits).
    pub code_mask: u64,
    /// Offsets of the pointer chain from the thread state to the innermost frame.
    pub frame_path: [u32; 2],
    /// How many entries of `frame_path` to follow (1 or 2).
    pub frame_path_len: u32,
    /// Offset of the code object pointer in a frame.
    pub frame_code: u32,
    /// Offset of the previous (outer) frame pointer in a frame.
    pub frame_previous: u32,
    /// Offset of the instruction pointer (or index) in a frame.
    pub frame_instr: u32,
    /// Offset of the one-byte `owner` field in a frame.
    pub frame_owner: u32,
    /// Frames whose owner is at least this are interpreter shims and skipped; 0: none.
    pub owner_skip_min: u32,
    /// Address of the interpreter's `struct _gil_runtime_state` (0: unknown). A futex
    /// wait inside it is a wait for the GIL; its `last_holder` is the thread holding it.
    pub gil_addr: u64,
    /// Offset of `native_thread_id` in a thread state (0: the version has none).
    pub tstate_native_tid: u32,
    /// Offset of the running asyncio task (`asyncio_running_task`, 3.14+) in a thread
    /// state; 0 when unknown (older versions, or `_asyncio` not loaded yet).
    pub running_task_offset: u32,
    /// Offset of the name object (`task_name`) in an asyncio task (with the above).
    pub task_name_offset: u32,
    /// Padding, zero.
    pub _pad: u32,
}
assert_size!(PyProcess, 72);

/// Size of CPython's `struct _gil_runtime_state` (3.9–3.13).
pub const GIL_STATE_SIZE: u64 = 208;
/// Offset of `last_holder` (a `PyThreadState*`) in `struct _gil_runtime_state`.
pub const GIL_LAST_HOLDER: u64 = 8;

user_pod!(GlobalConfig, PyProcess);
