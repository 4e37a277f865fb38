//! Reading the kernel's task: ids, and the type of a file descriptor of the current
//! task, at offsets userspace found in BTF.

use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel};
use blockprobe_common::{config::GlobalConfig, syscalls::S_IFMT};

/// The thread id of `task`, read at the offset userspace found in BTF.
#[inline(always)]
pub fn task_tid(config: &GlobalConfig, task: *const u8) -> Option<u32> {
    // SAFETY: `task` is a task_struct the tracepoint passed us; the read is fault-tolerant.
    unsafe { bpf_probe_read_kernel(task.add(config.task_pid_offset as usize) as *const i32) }
        .ok()
        .map(|pid| pid as u32)
}

/// The process id of `task`, read at the offset userspace found in BTF.
#[inline(always)]
pub fn task_tgid(config: &GlobalConfig, task: *const u8) -> Option<u32> {
    // SAFETY: as in `task_tid`.
    unsafe { bpf_probe_read_kernel(task.add(config.task_tgid_offset as usize) as *const i32) }
        .ok()
        .map(|pid| pid as u32)
}

/// The file type bits (`S_IFMT`) of the current task's file descriptor `fd`.
#[inline(always)]
pub fn fd_mode(config: &GlobalConfig, fd: u32) -> Option<u32> {
    let path = &config.fd_path;
    // SAFETY: every read is fault-tolerant; the offsets come from the kernel's BTF and
    // the index is bounded by the table's own size.
    unsafe {
        let task = bpf_get_current_task() as *const u8;
        let files: *const u8 =
            bpf_probe_read_kernel(task.add(path.task_files as usize) as _).ok()?;
        let fdt: *const u8 = bpf_probe_read_kernel(files.add(path.files_fdt as usize) as _).ok()?;
        let max_fds: u32 = bpf_probe_read_kernel(fdt.add(path.fdt_max_fds as usize) as _).ok()?;
        if fd >= max_fds {
            return None;
        }
        let table: *const *const u8 =
            bpf_probe_read_kernel(fdt.add(path.fdt_fd as usize) as _).ok()?;
        let file = bpf_probe_read_kernel(table.add(fd as usize)).ok()?;
        if file.is_null() {
            return None;
        }
        let inode: *const u8 =
            bpf_probe_read_kernel(file.add(path.file_inode as usize) as _).ok()?;
        let mode: u16 = bpf_probe_read_kernel(inode.add(path.inode_mode as usize) as _).ok()?;
        Some(u32::from(mode) & S_IFMT)
    }
}
