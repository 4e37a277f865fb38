//! Facts about the running kernel that the BPF programs need, read from its BTF.

use anyhow::{Context as _, anyhow, bail};
use blockprobe_common::config::FdPath;
use btf_rs::{Backend, Btf, Type};

/// The kernel's own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Kernel structure offsets the BPF programs read with, from the kernel's BTF.
#[derive(Clone, Copy, Debug)]
pub struct Offsets {
    /// Offset of `thread.fsbase` (the user thread pointer) in `struct task_struct`.
    pub task_fsbase: u64,
    /// Offset of `orig_ax` (the syscall number) in `struct pt_regs`.
    pub pt_regs_syscall_nr: u64,
    /// Offset of `di` (a syscall's first argument) in `struct pt_regs`.
    pub pt_regs_arg0: u64,
    /// Offset of `si` (a syscall's second argument) in `struct pt_regs`.
    pub pt_regs_arg1: u64,
    /// Offset of `sp` (the user stack pointer) in `struct pt_regs`.
    pub pt_regs_sp: u64,
    /// Offset of `pid` (the thread id) in `struct task_struct`.
    pub task_pid: u64,
    /// Offset of `tgid` (the process id) in `struct task_struct`.
    pub task_tgid: u64,
    /// Offset of the task state (`__state`, or `state` before 5.14) in `struct task_struct`.
    pub task_state: u64,
    /// Offset of `jobctl` (job control flags) in `struct task_struct`.
    pub task_jobctl: u64,
    /// The chain from a task to the type of one of its file descriptors.
    pub fd_path: FdPath,
}

/// Opens the kernel's BTF, for a few lookups.
pub fn open_btf() -> anyhow::Result<Btf> {
    // Mapped, not parsed whole: a few lookups need a few pages, where parsing every type
    // of the kernel would take 40 MB at start-up. Kernels that cannot map their BTF
    // (before 6.16) get the parsed copy, freed when dropped.
    (Btf::from_file_with_backend(VMLINUX_BTF, Backend::Mmap))
        .or_else(|_| Btf::from_file(VMLINUX_BTF))
        .with_context(|| {
            format!(
                "this kernel has no usable BTF ({VMLINUX_BTF}); blockprobe needs CONFIG_DEBUG_INFO_BTF"
            )
        })
}

/// Reads the offsets from `/sys/kernel/btf/vmlinux`.
pub fn offsets() -> anyhow::Result<Offsets> {
    let btf = open_btf()?;
    let regs = named_struct(&btf, "pt_regs")?;
    let task = named_struct(&btf, "task_struct")?;
    let task_state = member(&btf, &task, "__state").or_else(|_| member(&btf, &task, "state"))?;
    Ok(Offsets {
        task_pid: member(&btf, &task, "pid")?.0,
        task_tgid: member(&btf, &task, "tgid")?.0,
        task_state: task_state.0,
        task_jobctl: member(&btf, &task, "jobctl")?.0,
        task_fsbase: task_fsbase_offset(&btf)?,
        pt_regs_syscall_nr: member(&btf, &regs, "orig_ax")?.0,
        pt_regs_arg0: member(&btf, &regs, "di")?.0,
        pt_regs_arg1: member(&btf, &regs, "si")?.0,
        pt_regs_sp: member(&btf, &regs, "sp")?.0,
        fd_path: fd_path(&btf, &task)?,
    })
}

/// The offsets of `task->files->fdt->fd[n]->f_inode->i_mode`.
fn fd_path(btf: &Btf, task: &btf_rs::Struct) -> anyhow::Result<FdPath> {
    let offset = |parent: &btf_rs::Struct, name: &str| -> anyhow::Result<u32> {
        Ok(u32::try_from(member(btf, parent, name)?.0)?)
    };
    let files = named_struct(btf, "files_struct")?;
    let fdtable = named_struct(btf, "fdtable")?;
    let file = named_struct(btf, "file")?;
    let inode = named_struct(btf, "inode")?;
    Ok(FdPath {
        task_files: offset(task, "files")?,
        files_fdt: offset(&files, "fdt")?,
        fdt_max_fds: offset(&fdtable, "max_fds")?,
        fdt_fd: offset(&fdtable, "fd")?,
        file_inode: offset(&file, "f_inode")?,
        inode_mode: offset(&inode, "i_mode")?,
    })
}

/// Offset of `thread.fsbase` in `struct task_struct`.
fn task_fsbase_offset(btf: &Btf) -> anyhow::Result<u64> {
    let task = named_struct(btf, "task_struct")?;
    let (thread_offset, thread_type) = member(btf, &task, "thread")?;
    let Type::Struct(thread) = thread_type else {
        bail!("task_struct.thread is not a struct in this kernel's BTF");
    };
    let (fsbase_offset, _) = member(btf, &thread, "fsbase")?;
    Ok(thread_offset + fsbase_offset)
}

/// The struct called `name`.
fn named_struct(btf: &Btf, name: &str) -> anyhow::Result<btf_rs::Struct> {
    btf.resolve_types_by_name(name)
        .with_context(|| format!("no type {name} in the kernel's BTF"))?
        .into_iter()
        .find_map(|t| match t {
            Type::Struct(s) => Some(s),
            _ => None,
        })
        .ok_or_else(|| anyhow!("{name} is not a struct in the kernel's BTF"))
}

/// Byte offset and (typedef-resolved) type of the member `name` of `parent`.
fn member(btf: &Btf, parent: &btf_rs::Struct, name: &str) -> anyhow::Result<(u64, Type)> {
    for m in &parent.members {
        if btf.resolve_name(m).ok().as_deref() == Some(name) {
            let mut ty = btf.resolve_chained_type(m)?;
            while let Type::Typedef(_) | Type::Volatile(_) | Type::Const(_) = ty {
                let inner = ty.as_btf_type().context("unresolvable BTF type chain")?;
                ty = btf.resolve_chained_type(inner)?;
            }
            return Ok((u64::from(m.bit_offset() / 8), ty));
        }
    }
    bail!("no member {name} in a struct of the kernel's BTF")
}

#[cfg(test)]
mod tests {
    #[test]
    fn offsets_are_plausible() {
        let offsets = super::offsets().expect("kernel BTF readable");
        // `thread` comes late in task_struct; fsbase is 8-byte aligned.
        let fsbase = offsets.task_fsbase;
        assert!(
            fsbase > 1000 && fsbase < 16384,
            "implausible offset {fsbase}"
        );
        assert_eq!(fsbase % 8, 0, "fsbase must be 8-byte aligned");
        // x86_64 pt_regs: r15 … di, then orig_ax as the 16th register.
        assert_eq!(offsets.pt_regs_syscall_nr, 15 * 8);
        assert_eq!(offsets.pt_regs_arg0, 14 * 8);
        assert_eq!(offsets.pt_regs_arg1, 13 * 8);
        // The state is near the start of task_struct, the pid well inside it.
        assert!(offsets.task_state < 64, "state at {}", offsets.task_state);
        let jobctl = offsets.task_jobctl;
        assert!(
            jobctl > 512 && jobctl < fsbase && jobctl.is_multiple_of(8),
            "jobctl at {jobctl}"
        );
        assert!(offsets.task_pid > 512 && offsets.task_pid < fsbase);
        // `tgid` follows `pid`.
        assert_eq!(offsets.task_tgid, offsets.task_pid + 4);
        // `i_mode` opens struct inode; `fdt` and `fd` sit early in their structs.
        let fd = offsets.fd_path;
        assert_eq!(fd.inode_mode, 0);
        assert!(
            fd.files_fdt < 64 && fd.fdt_fd < 64 && fd.fdt_max_fds < 64,
            "{fd:?}"
        );
        assert!(fd.task_files > 512 && fd.task_files < 16384, "{fd:?}");
    }
}
