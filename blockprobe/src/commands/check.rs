//! `blockprobe check`: what this host allows, one line per item, each with what to do
//! about it when it is not as blockprobe needs it. Exits 1 when tracing is impossible.

use std::io::Write as _;

use anyhow::Context as _;

use crate::preflight::{self, Finding, Verdict, is_permission_error};
use crate::python::survey::{Support, Survey, survey};

/// Checks the host and prints one line per item; returns the exit code: 1 when an item
/// makes tracing impossible, else 0. Must run before any other thread is started.
pub fn run() -> anyhow::Result<i32> {
    let mut findings = preflight::host_findings();
    findings.extend(python_processes());
    let failed = findings
        .iter()
        .filter(|f| f.verdict == Verdict::Fail)
        .count();
    let mut out = std::io::stdout().lock();
    for finding in &findings {
        writeln!(out, "{finding}").context("writing to stdout")?;
    }
    if failed > 0 {
        writeln!(
            out,
            "blockprobe cannot trace on this host: mend the {failed} FAIL line(s) above"
        )
        .context("writing to stdout")?;
        Ok(1)
    } else {
        writeln!(out, "blockprobe can trace on this host").context("writing to stdout")?;
        Ok(0)
    }
}

/// One `python` line per Python process running now, with its version and whether
/// blockprobe can trace it; one line for the processes it could not read.
fn python_processes() -> Vec<Finding> {
    const ITEM: &str = "python";
    let own = std::process::id();
    let mut findings = Vec::new();
    let mut unreadable = Vec::new();
    for pid in pids().into_iter().filter(|&pid| pid != own) {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .map(|s| s.trim_end().to_owned())
            .unwrap_or_default();
        let finding = match survey(pid) {
            Ok(Survey::NotPython) => continue,
            Ok(Survey::Starting) => Finding::ok(
                ITEM,
                format!("pid {pid} {comm}: Python starting (its libpython is not loaded yet)"),
            ),
            Ok(Survey::Python { version, support }) => python_finding(pid, &comm, version, support),
            Ok(Survey::VersionUnreadable(e)) | Err(e) if is_permission_error(e.as_ref()) => {
                unreadable.push(pid);
                continue;
            }
            Ok(Survey::VersionUnreadable(e)) => Finding::new(
                ITEM,
                Verdict::Warn,
                format!("pid {pid} {comm}: Python, but its version cannot be read: {e:#}"),
                "blockprobe will skip it with a warning",
            ),
            // Gone meanwhile, or not a process blockprobe could make sense of.
            Err(_) if !comm.contains("python") => continue,
            Err(e) => Finding::new(
                ITEM,
                Verdict::Warn,
                format!("pid {pid} {comm}: cannot inspect it: {e:#}"),
                "blockprobe will skip it with a warning",
            ),
        };
        findings.push(finding);
    }
    if !unreadable.is_empty() {
        findings.push(unreadable_finding(&unreadable));
    }
    if findings.is_empty() {
        findings.push(Finding::ok(
            ITEM,
            "no Python process runs now (`trace` without -p also traces those started later)",
        ));
    }
    findings
}

/// The line of a Python process `pid` (`comm`) running `version`.
fn python_finding(
    pid: u32,
    comm: &str,
    version: crate::python::version::Version,
    support: Support,
) -> Finding {
    const ITEM: &str = "python";
    match support {
        Support::Supported => Finding::ok(
            ITEM,
            format!("pid {pid} {comm}: Python {version}, supported"),
        ),
        Support::NotReady(why) => Finding::ok(
            ITEM,
            format!(
                "pid {pid} {comm}: Python {version}, supported; not inspectable yet ({why}), tracing retries"
            ),
        ),
        Support::Unsupported(why) => Finding::new(
            ITEM,
            Verdict::Warn,
            // Most reasons name the version already.
            if why.contains(&version.to_string()) {
                format!("pid {pid} {comm}: {why}")
            } else {
                format!("pid {pid} {comm}: Python {version}, not supported: {why}")
            },
            "blockprobe traces CPython 3.9 to 3.15 (GIL builds) and skips this process with a warning",
        ),
    }
}

/// The line for the processes whose memory map could not be read (`pids`): the
/// capability to ask for, or, as root, that they are closed even to root.
fn unreadable_finding(pids: &[u32]) -> Finding {
    const SHOWN: usize = 10;
    let mut listed: Vec<String> = pids.iter().take(SHOWN).map(u32::to_string).collect();
    if pids.len() > SHOWN {
        listed.push("…".into());
    }
    let detail = format!(
        "{} process{} could not be read (permission denied): pid {}",
        pids.len(),
        if pids.len() == 1 { "" } else { "es" },
        listed.join(", ")
    );
    if nix::unistd::geteuid().is_root() {
        Finding::new(
            "python",
            Verdict::Note,
            detail,
            "closed even to root (another user namespace, or a security module): if Python, blockprobe cannot trace them",
        )
    } else {
        Finding::new(
            "python",
            Verdict::Warn,
            detail,
            "run check as root (or with CAP_SYS_PTRACE) to see which are Python",
        )
    }
}

/// The pids in `/proc`, ascending.
fn pids() -> Vec<u32> {
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    pids
}
