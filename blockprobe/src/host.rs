//! Facts of this host and of the processes on it, read from the system: the host name,
//! the kernel release, and what a traced process is (`/proc/PID`), named by
//! [`crate::identity`].

use crate::identity::{app_root, cgroup_path, container_id, derive_service, redact};
use crate::report::ProcessInfo;

/// How processes are labelled: the run's `--service` and `--redact-cmdline`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdentityOptions {
    /// `--service`: the service label of every process.
    pub service: Option<String>,
    /// `--redact-cmdline`: keep only argv[0] of command lines.
    pub redact_cmdline: bool,
}

/// The command name of process `pid` (empty when gone).
pub fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim_end().to_owned())
        .unwrap_or_default()
}

/// What blockprobe records about a traced process, read from `/proc/PID` now, with the
/// run's `options`. Missing pieces (the process may already be gone) are left
/// empty. Its command line is read from the process's memory by the kernel: call it off
/// the event pump, within a deadline.
pub fn process_info(
    options: &IdentityOptions,
    pid: u32,
    comm: String,
    python_version: String,
) -> ProcessInfo {
    let argv = read_cmdline(pid);
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map(|text| cgroup_path(&text))
        .unwrap_or_default();
    describe(options, pid, comm, python_version, &argv, &cwd, &cgroup)
}

/// What is known of process `pid` when its files could not be read in time: its command
/// line unknown (empty), so its service named after `comm`.
pub fn unread_process_info(
    options: &IdentityOptions,
    pid: u32,
    comm: String,
    python_version: String,
) -> ProcessInfo {
    describe(options, pid, comm, python_version, &[], "", "")
}

/// [`process_info`] from what was read.
pub fn describe(
    options: &IdentityOptions,
    pid: u32,
    comm: String,
    python_version: String,
    argv: &[String],
    cwd: &str,
    cgroup: &str,
) -> ProcessInfo {
    let service = match &options.service {
        Some(s) => s.clone(),
        None => derive_service(argv, &comm),
    };
    let cmdline = if options.redact_cmdline {
        redact(argv)
    } else {
        argv.to_vec()
    };
    ProcessInfo {
        pid,
        ns_pid: None,
        comm,
        python_version,
        loop_threads: Vec::new(),
        cmdline,
        service,
        container_id: container_id(cgroup).unwrap_or_default(),
        cgroup: cgroup.to_owned(),
        app_root: app_root(argv, cwd),
        host: String::new(),
        // Traced from now on: not seen polling yet.
        polled: Some(false),
    }
}

/// The bytes of a command line kept (it is kept for each of up to 10,000 processes, and
/// a process may make its own megabytes long); a longer one ends in `…`.
const MAX_CMDLINE_BYTES: u64 = 4096;

/// The NUL-separated argv of `pid` (empty for kernel threads or a gone process), its
/// first [`MAX_CMDLINE_BYTES`].
fn read_cmdline(pid: u32) -> Vec<String> {
    use std::io::Read as _;
    let mut bytes = Vec::new();
    let read = std::fs::File::open(format!("/proc/{pid}/cmdline"))
        .and_then(|f| f.take(MAX_CMDLINE_BYTES + 1).read_to_end(&mut bytes));
    if read.is_err() {
        return Vec::new();
    }
    split_cmdline(&bytes)
}

/// Splits NUL-separated `bytes` into arguments; more than [`MAX_CMDLINE_BYTES`] are cut,
/// the last argument kept ending in `…`.
fn split_cmdline(bytes: &[u8]) -> Vec<String> {
    let cut = bytes.len() as u64 > MAX_CMDLINE_BYTES;
    let bytes = &bytes[..bytes.len().min(MAX_CMDLINE_BYTES as usize)];
    let bytes = bytes.strip_suffix(b"\0").unwrap_or(bytes);
    if bytes.is_empty() {
        return Vec::new();
    }
    let mut argv: Vec<String> = bytes
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    if cut && let Some(last) = argv.last_mut() {
        last.push('…');
    }
    argv
}

/// The host name reports carry: `$BLOCKPROBE_HOST` when set (e.g. the node name in a
/// Kubernetes pod, whose own host name is the pod's), else the machine's host name.
pub fn host_name() -> String {
    match std::env::var("BLOCKPROBE_HOST") {
        Ok(host) if !host.trim().is_empty() => host.trim().to_owned(),
        _ => local_hostname(),
    }
}

/// The running kernel's release (`uname -r`), empty if unknown.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// This machine's host name (empty if it cannot be read).
fn local_hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for `buf.len()` bytes; gethostname NUL-terminates
    // unless truncated, and we stop at the first NUL or the end either way.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::tests::argv;

    #[test]
    fn redaction_keeps_only_the_program() {
        assert_eq!(
            redact(&argv("python3 app.py --token s3cr3t")),
            ["python3", "<3 arguments redacted>"]
        );
        assert_eq!(
            redact(&argv("python3 x")),
            ["python3", "<1 argument redacted>"]
        );
        assert_eq!(redact(&argv("python3")), ["python3"]);
        assert!(redact(&[]).is_empty());
        let opts = IdentityOptions {
            service: None,
            redact_cmdline: true,
        };
        let p = describe(
            &opts,
            1,
            "python3".into(),
            "3.11.7".into(),
            &argv("python3 /srv/api/server.py --password hunter2"),
            "/",
            "",
        );
        assert_eq!(p.service, "api", "derived before redaction");
        assert!(!p.cmdline.join(" ").contains("hunter2"));
        let opts = IdentityOptions {
            service: Some("checkout".into()),
            redact_cmdline: false,
        };
        let p = describe(
            &opts,
            1,
            "python3".into(),
            "3.11.7".into(),
            &argv("python3 a.py"),
            "/",
            "",
        );
        assert_eq!(p.service, "checkout");
        assert_eq!(p.cmdline, ["python3", "a.py"]);
    }

    #[test]
    fn cmdline_bytes() {
        assert_eq!(
            split_cmdline(b"python3\0a b.py\0\0x\0"),
            ["python3", "a b.py", "", "x"]
        );
        assert!(split_cmdline(b"").is_empty());
        // A command line of megabytes: its first 4 KiB, the cut marked.
        let huge: Vec<u8> = [b"python3\0app.py\0".as_slice(), &[b'x'; 1 << 20]].concat();
        let argv = split_cmdline(&huge[..=MAX_CMDLINE_BYTES as usize]);
        assert_eq!(argv[..2], ["python3", "app.py"]);
        assert!(
            argv[2].ends_with('…') && argv[2].len() < 4096,
            "{}",
            argv[2].len()
        );
    }

    #[test]
    fn this_process() {
        let me = std::process::id();
        let p = process_info(&IdentityOptions::default(), me, "test".into(), "3".into());
        assert!(!p.cmdline.is_empty());
        assert!(!p.service.is_empty());
        assert!(p.cgroup.starts_with('/'), "{:?}", p.cgroup);
        assert!(!kernel_release().is_empty());
    }
}
