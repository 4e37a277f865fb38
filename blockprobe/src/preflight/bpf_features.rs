//! Kernel features found by trying them: a BPF trampoline (fentry), a BPF ring buffer,
//! and a task-clock perf event such as the CPU sampler uses.

use std::os::fd::{FromRawFd as _, OwnedFd};
use std::path::Path;

use aya::{maps::MapType, programs::ProgramType};

use super::{Finding, Verdict, is_permission_error};

/// Where securityfs is mounted.
const SECURITYFS: &str = "/sys/kernel/security";
/// The file, in securityfs, where the kernel says its lockdown mode
/// (`none [integrity] confidentiality`).
const LOCKDOWN: &str = "lockdown";

/// The fentry item: whether a tiny fentry program loads and attaches (aya's probe, on
/// `bpf_fentry_test1`), and the kernel's lockdown mode. Where it works, blockprobe hooks
/// the epoll syscalls with fentry/fexit, and no other syscall pays anything; else with
/// their tracepoints, which send every syscall down the kernel's traced path.
pub fn fentry() -> Finding {
    const ITEM: &str = "fentry";
    let lockdown = lockdown_mode();
    let refused = match aya::sys::is_program_supported(ProgramType::Tracing) {
        Ok(true) => {
            return Finding::ok(
                ITEM,
                format!(
                    "a test fentry program loads and attaches; lockdown: {lockdown}: the epoll syscalls are hooked by fentry"
                ),
            );
        }
        Ok(false) => "this kernel has no BPF trampolines".to_owned(),
        Err(e) => format!(
            "the kernel refused a test fentry program ({})",
            error_chain(&e)
        ),
    };
    Finding::new(
        ITEM,
        Verdict::Note,
        format!("{refused}; lockdown: {lockdown}"),
        "nothing to do: blockprobe hooks the epoll syscalls by their tracepoints instead (every syscall on the host then takes the kernel's slower traced path)",
    )
}

/// The lockdown mode in force (`integrity`), `none`, or why it is unknown. Read from
/// securityfs, looked into privately when it is not mounted.
fn lockdown_mode() -> String {
    let securityfs = Path::new(SECURITYFS);
    let read = |root: &Path| match std::fs::read_to_string(root.join(LOCKDOWN)) {
        Ok(text) => selected_mode(&text).unwrap_or("unknown").to_owned(),
        // Kernels without the lockdown LSM have no such file.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "none (no lockdown LSM)".to_owned(),
        Err(e) => format!("unknown ({SECURITYFS}/{LOCKDOWN}: {e})"),
    };
    if crate::private_mount::is_mounted("securityfs", securityfs) {
        return read(securityfs);
    }
    crate::private_mount::look_into("securityfs", securityfs, read)
        .unwrap_or_else(|why| format!("unknown (securityfs is not mounted, and {why})"))
}

/// The bracketed choice of a sysfs list such as `none [integrity] confidentiality`.
fn selected_mode(text: &str) -> Option<&str> {
    text.split_whitespace()
        .find_map(|word| word.strip_prefix('[')?.strip_suffix(']'))
}

/// The ring-buffer item: whether the kernel creates a BPF ring buffer (5.8+), which
/// carries all of blockprobe's events.
pub fn ring_buffers() -> Finding {
    const ITEM: &str = "ring buffers";
    match aya::sys::is_map_supported(MapType::RingBuf) {
        Ok(true) => Finding::ok(ITEM, "a test BPF ring buffer was created"),
        Ok(false) => Finding::new(
            ITEM,
            Verdict::Fail,
            "this kernel has no BPF ring buffers",
            "blockprobe needs Linux 5.8 or later (BPF_MAP_TYPE_RINGBUF)",
        ),
        Err(e) if is_permission_error(&e) => Finding::new(
            ITEM,
            Verdict::Warn,
            format!(
                "untested: the kernel refused to create a BPF map ({})",
                error_chain(&e)
            ),
            "run check with the capabilities it needs (see the capabilities line)",
        ),
        Err(e) => Finding::new(
            ITEM,
            Verdict::Fail,
            format!("a test BPF ring buffer failed: {}", error_chain(&e)),
            "blockprobe needs Linux 5.8 or later with BPF enabled (CONFIG_BPF_SYSCALL)",
        ),
    }
}

/// The perf-sampler item: whether a task-clock perf event opens on another process's
/// thread (pid 1), as the CPU sampler on each loop thread does. Without it, CPU-bound
/// stalls have no culprit.
pub fn perf_sampler() -> Finding {
    const ITEM: &str = "perf sampler";
    let paranoid = std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
        .map_or_else(|_| "unknown".to_owned(), |s| s.trim().to_owned());
    match open_task_clock(1) {
        Ok(_event) => Finding::ok(
            ITEM,
            format!("a task-clock perf event opened on pid 1 (perf_event_paranoid {paranoid})"),
        ),
        Err(e) => Finding::new(
            ITEM,
            Verdict::Warn,
            format!(
                "perf_event_open of a task clock on pid 1 failed: {e} (perf_event_paranoid {paranoid})"
            ),
            "grant CAP_PERFMON (or run as root); without it CPU-bound stalls have no culprit",
        ),
    }
}

/// The first fields of `struct perf_event_attr` (`PERF_ATTR_SIZE_VER0`, which every
/// kernel accepts).
#[repr(C)]
#[derive(Default)]
struct PerfEventAttr {
    kind: u32,
    size: u32,
    config: u64,
    sample_freq: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
}

const _: () = assert!(std::mem::size_of::<PerfEventAttr>() == 64);

/// `PERF_TYPE_SOFTWARE`, `PERF_COUNT_SW_TASK_CLOCK`.
const PERF_TYPE_SOFTWARE: u32 = 1;
const PERF_COUNT_SW_TASK_CLOCK: u64 = 1;
/// `PERF_FLAG_FD_CLOEXEC`: the new fd is close-on-exec.
const PERF_FLAG_FD_CLOEXEC: u64 = 1 << 3;
/// `attr.flags`: `disabled` (bit 0) and `freq` (bit 10).
const FLAG_DISABLED: u64 = 1;
const FLAG_FREQ: u64 = 1 << 10;

/// Opens a disabled task-clock event sampling at blockprobe's rate on every thread of
/// process `pid`, then closes it when the returned fd is dropped.
fn open_task_clock(pid: i32) -> std::io::Result<OwnedFd> {
    let attr = PerfEventAttr {
        kind: PERF_TYPE_SOFTWARE,
        size: std::mem::size_of::<PerfEventAttr>() as u32,
        config: PERF_COUNT_SW_TASK_CLOCK,
        sample_freq: crate::probes::SAMPLE_HZ,
        flags: FLAG_DISABLED | FLAG_FREQ,
        ..PerfEventAttr::default()
    };
    let cpu: i32 = -1;
    let group_fd: i32 = -1;
    // SAFETY: perf_event_open(2) reads `attr.size` bytes of `attr`, which lives for the
    // call; the other arguments are plain integers.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &raw const attr,
            pid,
            cpu,
            group_fd,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this new file descriptor, owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `err` and its sources, `: `-separated, in one line.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    std::iter::successors(Some(err), |e| e.source())
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_bracketed_lockdown_mode() {
        assert_eq!(
            selected_mode("none [integrity] confidentiality\n"),
            Some("integrity")
        );
        assert_eq!(
            selected_mode("[none] integrity confidentiality"),
            Some("none")
        );
        assert_eq!(selected_mode(""), None);
    }

    /// As root, the sampler's perf event opens on pid 1 (what blockprobe needs of it).
    #[test]
    fn opens_a_task_clock_on_pid_1_as_root() {
        if nix::unistd::geteuid().is_root() {
            open_task_clock(1).expect("perf_event_open as root");
        }
    }
}
