//! What this host allows: each thing blockprobe needs of the kernel and of its own
//! privileges, checked one by one. `trace`, `run` and `serve` stop at the first one
//! missing with its one line; `blockprobe check` shows them all.

mod bpf_features;
mod capabilities;

use std::{fmt, path::Path};

use anyhow::anyhow;

use bpf_features::{fentry, perf_sampler, ring_buffers};
#[cfg(test)]
pub(crate) use capabilities::ThreadCapabilities;
pub use capabilities::require_privileges;

/// A per-syscall tracepoint every kernel with `CONFIG_FTRACE_SYSCALLS` has.
const SYSCALL_TRACEPOINT: &str = "sys_enter_epoll_wait";
/// The oldest kernel blockprobe is known to run on.
const OLDEST_KERNEL: (u32, u32) = (5, 17);

/// How one item of the host stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    /// As blockprobe needs it.
    Ok,
    /// Not as it could be, and not needed (e.g. fentry, for which tracepoints stand in).
    Note,
    /// Tracing works, with less (e.g. no culprits for CPU-bound stalls).
    Warn,
    /// Tracing is impossible until this is mended.
    Fail,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Ok => "ok",
            Verdict::Note => "note",
            Verdict::Warn => "warn",
            Verdict::Fail => "FAIL",
        })
    }
}

/// One item checked: what was found and, unless it is as needed, what to do about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// The item, e.g. `btf`.
    pub item: &'static str,
    /// How it stands.
    pub verdict: Verdict,
    /// What was found, in one line.
    pub detail: String,
    /// What to do about it (for any verdict but `Ok`).
    pub advice: Option<String>,
}

impl Finding {
    /// An item as blockprobe needs it.
    pub fn ok(item: &'static str, detail: impl Into<String>) -> Self {
        Finding {
            item,
            verdict: Verdict::Ok,
            detail: detail.into(),
            advice: None,
        }
    }

    /// An item that is not as needed, with what to do about it.
    pub fn new(
        item: &'static str,
        verdict: Verdict,
        detail: impl Into<String>,
        advice: impl Into<String>,
    ) -> Self {
        Finding {
            item,
            verdict,
            detail: detail.into(),
            advice: Some(advice.into()),
        }
    }

    /// Fails with the finding's one line (what was found, then what to do) when tracing
    /// is impossible without it.
    pub fn required(self) -> anyhow::Result<()> {
        if self.verdict < Verdict::Fail {
            return Ok(());
        }
        Err(match self.advice {
            Some(advice) => anyhow!("{}: {advice}", self.detail),
            None => anyhow!("{}", self.detail),
        })
    }
}

impl fmt::Display for Finding {
    /// `ok    btf           /sys/kernel/btf/vmlinux (5.2 MiB)`, with ` -> ADVICE` when
    /// there is something to do.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<5} {:<13} {}",
            self.verdict.to_string(),
            self.item,
            self.detail
        )?;
        if let Some(advice) = &self.advice {
            write!(f, " -> {advice}")?;
        }
        Ok(())
    }
}

/// Everything a tracing command needs before loading BPF: privileges, BTF, tracefs with
/// the syscall tracepoints, and the locked-memory limit (older kernels charge BPF maps to
/// RLIMIT_MEMLOCK). Fails with the first item missing, in one line. Returns where
/// tracefs is (mounted by this call when it was not).
pub fn check() -> anyhow::Result<std::path::PathBuf> {
    require_privileges()?;
    btf(Path::new(crate::kernel::VMLINUX_BTF)).required()?;
    let tracefs = crate::tracefs::ensure_mounted()?;
    syscall_tracepoints(&tracefs).required()?;
    raise_memlock_limit();
    Ok(tracefs)
}

/// Every item of `blockprobe check` but the Python processes, in the order shown.
/// Changes nothing on the host (tracefs, when unmounted, is tried in a private mount
/// namespace of a child process).
pub fn host_findings() -> Vec<Finding> {
    let capabilities = capabilities::finding().unwrap_or_else(|e| {
        Finding::new(
            "capabilities",
            Verdict::Fail,
            format!("{e:#}"),
            "blockprobe cannot tell which privileges it holds; run it as root",
        )
    });
    let (tracefs, syscalls) = tracefs();
    vec![
        kernel_release(&crate::host::kernel_release(), std::env::consts::ARCH),
        btf(Path::new(crate::kernel::VMLINUX_BTF)),
        raw_tracepoints(),
        syscalls,
        fentry(),
        ring_buffers(),
        perf_sampler(),
        capabilities,
        tracefs,
        pid_max(),
    ]
}

/// The kernel release item: `release` (e.g. `6.18.0-1-amd64`) of a kernel running on
/// `arch`, older than blockprobe is known to run on or not.
fn kernel_release(release: &str, arch: &str) -> Finding {
    const ITEM: &str = "kernel";
    if arch != "x86_64" {
        return Finding::new(
            ITEM,
            Verdict::Fail,
            format!("{release} on {arch}"),
            "blockprobe supports x86_64 only",
        );
    }
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().ok());
    let version = (numbers.next().flatten(), numbers.next().flatten());
    match version {
        (Some(major), Some(minor)) if (major, minor) >= OLDEST_KERNEL => {
            Finding::ok(ITEM, format!("{release} {arch}"))
        }
        _ => Finding::new(
            ITEM,
            Verdict::Warn,
            format!(
                "{release} {arch}: older than {}.{}, or unrecognized",
                OLDEST_KERNEL.0, OLDEST_KERNEL.1
            ),
            format!(
                "blockprobe is known to run on {}.{} and later; the lines below say what this kernel refuses",
                OLDEST_KERNEL.0, OLDEST_KERNEL.1
            ),
        ),
    }
}

/// The BTF item: the kernel's type information at `path`, which blockprobe reads its
/// offsets from.
fn btf(path: &Path) -> Finding {
    match std::fs::metadata(path) {
        Ok(meta) => Finding::ok(
            "btf",
            format!(
                "{} ({:.1} MiB)",
                path.display(),
                meta.len() as f64 / f64::from(1 << 20)
            ),
        ),
        Err(_) => Finding::new(
            "btf",
            Verdict::Fail,
            format!("this kernel has no BTF ({} is missing)", path.display()),
            "blockprobe needs a kernel built with CONFIG_DEBUG_INFO_BTF=y (and /sys mounted)",
        ),
    }
}

/// The raw tracepoints blockprobe attaches to, as the kernel's BTF lists them
/// (`btf_trace_NAME`, one per tracepoint, whether or not tracefs is mounted).
fn raw_tracepoints() -> Finding {
    const ITEM: &str = "tracepoints";
    let btf = match crate::kernel::open_btf() {
        Ok(btf) => btf,
        Err(e) => {
            return Finding::new(
                ITEM,
                Verdict::Fail,
                format!("cannot read the kernel's BTF to list its tracepoints: {e:#}"),
                "see the btf line",
            );
        }
    };
    let names: Vec<&str> = crate::probes::RAW_TRACEPOINTS
        .iter()
        .map(|(_, tracepoint)| *tracepoint)
        .collect();
    let missing: Vec<&str> = (names.iter().copied())
        .filter(|name| {
            btf.resolve_types_by_name(&format!("btf_trace_{name}"))
                .is_err()
        })
        .collect();
    if missing.is_empty() {
        Finding::ok(ITEM, format!("raw tracepoints {}", names.join(", ")))
    } else {
        Finding::new(
            ITEM,
            Verdict::Fail,
            format!(
                "this kernel lacks the raw tracepoints {}",
                missing.join(", ")
            ),
            "blockprobe needs a kernel with the syscall and scheduler tracepoints (CONFIG_FTRACE_SYSCALLS, CONFIG_TRACEPOINTS)",
        )
    }
}

/// Whether tracefs at `root` has the per-syscall tracepoints (`syscalls:*`).
fn has_syscall_tracepoints(root: &Path) -> bool {
    crate::tracefs::has_tracepoint(root, "syscalls", SYSCALL_TRACEPOINT)
}

/// The per-syscall tracepoints item, from tracefs at `root`.
fn syscall_tracepoints(root: &Path) -> Finding {
    syscall_finding(Some(has_syscall_tracepoints(root)))
}

/// The per-syscall tracepoints item: `present` says whether tracefs has them (`None`:
/// unknown, tracefs could not be read).
fn syscall_finding(present: Option<bool>) -> Finding {
    const ITEM: &str = "syscalls";
    match present {
        Some(true) => Finding::ok(ITEM, "per-syscall tracepoints syscalls:* present"),
        Some(false) => Finding::new(
            ITEM,
            Verdict::Fail,
            "this kernel has no syscall tracepoints (CONFIG_FTRACE_SYSCALLS): blockprobe cannot see event loops",
            "use a kernel built with CONFIG_FTRACE_SYSCALLS=y",
        ),
        None => Finding::new(
            ITEM,
            Verdict::Warn,
            "per-syscall tracepoints syscalls:* unknown: tracefs cannot be read",
            "see the tracefs line",
        ),
    }
}

/// The tracefs item, and the per-syscall tracepoints item read from it: mounted, or
/// mountable (tried without changing the host's mounts: see `tracefs::availability`).
fn tracefs() -> (Finding, Finding) {
    use crate::tracefs::{Availability, TRACEFS};
    const ITEM: &str = "tracefs";
    match crate::tracefs::availability(has_syscall_tracepoints) {
        Availability::Mounted { readable: true } => (
            Finding::ok(ITEM, format!("mounted at {TRACEFS}")),
            syscall_tracepoints(Path::new(TRACEFS)),
        ),
        Availability::Mounted { readable: false } => (
            Finding::new(
                ITEM,
                Verdict::Fail,
                format!("mounted at {TRACEFS}, but closed to this user"),
                "run as root, or grant CAP_DAC_READ_SEARCH",
            ),
            syscall_finding(None),
        ),
        Availability::Mountable { passed } => (
            Finding::ok(
                ITEM,
                format!("not mounted; mountable (trace, run and serve mount it at {TRACEFS})"),
            ),
            syscall_finding(Some(passed)),
        ),
        Availability::Unavailable(why) => (
            Finding::new(
                ITEM,
                Verdict::Fail,
                format!("not mounted at {TRACEFS}, and {why}"),
                format!(
                    "mount it (mount -t tracefs nodev {TRACEFS}), or run blockprobe as root (CAP_SYS_ADMIN mounts it)"
                ),
            ),
            syscall_finding(None),
        ),
    }
}

/// The `pid_max` item: the loop-thread flags (one byte per thread id) are sized to
/// `pid_max` when tracing starts; a thread id beyond it (`pid_max` raised later) is
/// counted as lost, not traced.
fn pid_max() -> Finding {
    const ITEM: &str = "pid_max";
    let (pid_max, read) = crate::probes::pid_max();
    let covered = u64::from(crate::probes::loop_thread_words(pid_max)) * 8;
    let detail = format!(
        "{pid_max}{}: loop-thread flags cover thread ids below {covered} ({} KiB of kernel memory)",
        if read { "" } else { " (assumed)" },
        covered.div_ceil(1024)
    );
    if !read {
        return Finding::new(
            ITEM,
            Verdict::Warn,
            detail,
            "mount /proc: /proc/sys/kernel/pid_max could not be read, so the flags take the kernel's limit",
        );
    }
    Finding::ok(
        ITEM,
        format!("{detail}; raising pid_max later needs a restart of blockprobe"),
    )
}

/// Whether `err` (or an error it wraps) is the kernel refusing access (EPERM, EACCES).
pub fn is_permission_error(err: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(err), |e| e.source()).any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::PermissionDenied)
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_without_btf_or_syscall_tracepoints_is_one_line() {
        let err = btf(Path::new("/nonexistent/vmlinux"))
            .required()
            .unwrap_err()
            .to_string();
        assert!(
            !err.contains('\n') && err.contains("no BTF (/nonexistent/vmlinux"),
            "{err}"
        );
        let tracefs = tempfile::tempdir().unwrap();
        let err = syscall_tracepoints(tracefs.path())
            .required()
            .unwrap_err()
            .to_string();
        assert!(
            !err.contains('\n') && err.contains("no syscall tracepoints"),
            "{err}"
        );
        let event = tracefs.path().join("events/syscalls/sys_enter_epoll_wait");
        std::fs::create_dir_all(event).unwrap();
        syscall_tracepoints(tracefs.path()).required().unwrap();
    }

    #[test]
    fn permission_errors_are_found_under_context() {
        for errno in [libc::EPERM, libc::EACCES] {
            let err = anyhow::Error::from(std::io::Error::from_raw_os_error(errno))
                .context("reading /proc/1/maps");
            assert!(is_permission_error(err.as_ref()), "{err:#}");
        }
        let gone = anyhow::Error::from(std::io::Error::from_raw_os_error(libc::ENOENT));
        assert!(!is_permission_error(gone.context("x").as_ref()));
    }

    #[test]
    fn kernel_releases_are_judged_by_version_and_arch() {
        assert_eq!(
            kernel_release("6.18.0-1-amd64", "x86_64").verdict,
            Verdict::Ok
        );
        assert_eq!(kernel_release("5.17.0", "x86_64").verdict, Verdict::Ok);
        let old = kernel_release("4.18.0-553.el8_10.x86_64", "x86_64");
        assert_eq!(old.verdict, Verdict::Warn);
        assert!(old.advice.unwrap().contains("5.17"));
        assert_eq!(kernel_release("weird", "x86_64").verdict, Verdict::Warn);
        assert_eq!(kernel_release("6.18.0", "aarch64").verdict, Verdict::Fail);
    }

    /// Each line names its item and, when not OK, says what to do after the arrow.
    #[test]
    fn findings_print_as_one_line_each() {
        let ok = Finding::ok("btf", "/sys/kernel/btf/vmlinux (5.2 MiB)");
        assert_eq!(
            ok.to_string(),
            "ok    btf           /sys/kernel/btf/vmlinux (5.2 MiB)"
        );
        let fail = Finding::new("btf", Verdict::Fail, "no BTF", "rebuild the kernel");
        assert_eq!(
            fail.to_string(),
            "FAIL  btf           no BTF -> rebuild the kernel"
        );
        assert_eq!(
            fail.required().unwrap_err().to_string(),
            "no BTF: rebuild the kernel"
        );
        Finding::new("fentry", Verdict::Note, "refused", "nothing")
            .required()
            .unwrap();
    }
}
