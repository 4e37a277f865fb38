//! Checks that this host can run blockprobe, with one clear line when it cannot.

use anyhow::bail;

/// Everything a tracing command needs before loading BPF: privileges, BTF, tracefs
/// and the locked-memory limit (older kernels charge BPF maps to RLIMIT_MEMLOCK).
pub fn check() -> anyhow::Result<std::path::PathBuf> {
    require_root()?;
    if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        bail!(
            "this kernel has no BTF (/sys/kernel/btf/vmlinux is missing): blockprobe needs CONFIG_DEBUG_INFO_BTF=y"
        );
    }
    let tracefs = crate::tracefs::ensure_mounted()?;
    if !crate::tracefs::has_tracepoint(&tracefs, "syscalls", "sys_enter_epoll_wait") {
        bail!(
            "this kernel has no syscall tracepoints (CONFIG_FTRACE_SYSCALLS): blockprobe cannot see event loops"
        );
    }
    raise_memlock_limit();
    Ok(tracefs)
}

/// Fails with one line saying what is missing unless blockprobe runs as root. Checked
/// first by every step that needs the privileges, such as reading a `-p` process's memory
/// map, so that a user without them is told so rather than that access was denied.
pub fn require_root() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "blockprobe needs root (CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE to read Python memory): run it with sudo"
        );
    }
    Ok(())
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; newer ones use memory cgroups
/// and may forbid raising the limit, which is then harmless to skip.
fn raise_memlock_limit() {
    use nix::sys::resource::{RLIM_INFINITY, Resource, getrlimit, setrlimit};
    if setrlimit(Resource::RLIMIT_MEMLOCK, RLIM_INFINITY, RLIM_INFINITY).is_err()
        && let Ok((_, hard)) = getrlimit(Resource::RLIMIT_MEMLOCK)
    {
        let _ = setrlimit(Resource::RLIMIT_MEMLOCK, hard, hard);
    }
}
