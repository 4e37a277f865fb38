//! The kernel's side of the benchmark: BPF run-time statistics, the floor's tracepoints,
//! and the run time of each BPF program a tracer loaded.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use super::procs;

/// Kernel BPF run-time statistics (`kernel.bpf_stats_enabled`), restored on drop. They
/// cost every program run two clock reads, so they stay off while the workloads are timed.
pub struct BpfStats {
    previous: String,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    pub fn take() -> Result<Self> {
        let previous = std::fs::read_to_string(BPF_STATS).context("reading bpf_stats_enabled")?;
        Ok(BpfStats { previous })
    }

    pub fn set(&self, on: bool) -> Result<()> {
        std::fs::write(BPF_STATS, if on { "1" } else { "0" })
            .context("switching BPF statistics (needs root)")
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(BPF_STATS, self.previous.trim());
    }
}

const TRACEFS: &str = "/sys/kernel/tracing";
/// The trace events of the tracepoints blockprobe attaches to when fentry is refused.
const FLOOR_EVENTS: [&str; 7] = [
    "syscalls/sys_enter_epoll_wait",
    "syscalls/sys_exit_epoll_wait",
    "syscalls/sys_enter_epoll_pwait",
    "syscalls/sys_exit_epoll_pwait",
    "syscalls/sys_enter_epoll_pwait2",
    "syscalls/sys_exit_epoll_pwait2",
    "syscalls/sys_enter_close",
];

/// Mounts tracefs at its usual place, and debugfs (libbpf before 1.0, as blocksnoop's
/// sidecar bundles, looks for the tracepoints under `/sys/kernel/debug/tracing`).
pub fn mount_tracing() -> Result<()> {
    for (fs, dir, probe) in [
        ("tracefs", TRACEFS, "events"),
        ("debugfs", "/sys/kernel/debug", "tracing"),
    ] {
        if Path::new(dir).join(probe).exists() {
            continue;
        }
        let status = Command::new("mount")
            .args(["-t", fs, "nodev", dir])
            .status()
            .with_context(|| format!("mounting {fs}"))?;
        if !status.success() {
            bail!("mounting {fs} at {dir} failed: {status}");
        }
    }
    Ok(())
}

/// The floor: the tracepoints blockprobe hooks, enabled as ftrace events with tracing
/// off. Any enabled syscall tracepoint sends every syscall on the host down the kernel's
/// traced path, where the others are dismissed without running anything. Restored on
/// drop.
pub struct Floor {
    tracing_was: String,
}

impl Floor {
    pub fn enable() -> Result<Self> {
        mount_tracing()?;
        let tracefs = Path::new(TRACEFS);
        let tracing_was =
            std::fs::read_to_string(tracefs.join("tracing_on")).context("reading tracing_on")?;
        // Built before the writes, so that a failure half-way still restores what was set.
        let floor = Floor { tracing_was };
        std::fs::write(tracefs.join("tracing_on"), "0").context("turning tracing off")?;
        for event in FLOOR_EVENTS {
            let enable = tracefs.join("events").join(event).join("enable");
            std::fs::write(&enable, "1")
                .with_context(|| format!("writing {}", enable.display()))?;
        }
        Ok(floor)
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        let tracefs = Path::new(TRACEFS);
        for event in FLOOR_EVENTS {
            let _ = std::fs::write(tracefs.join("events").join(event).join("enable"), "0");
        }
        let _ = std::fs::write(tracefs.join("tracing_on"), self.tracing_was.trim());
    }
}

/// Run statistics of one BPF program (or of all the programs of one name).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgStats {
    pub runs: u64,
    pub run_time_ns: u64,
    /// Runs the kernel skipped (`recursion_misses`).
    pub skipped: u64,
}

/// The BPF programs the processes of group `pgid` hold, by name: every program a tracer
/// loaded, whatever it calls them (read from its file descriptors' `fdinfo`).
pub fn programs_of_group(pgid: i32) -> Result<BTreeMap<String, ProgStats>> {
    let mut by_id: BTreeMap<u64, ProgStats> = BTreeMap::new();
    for pid in procs::group_members(pgid) {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(info) = std::fs::read_to_string(fd.path()) else {
                continue;
            };
            if let Some((id, stats)) = parse_prog_fdinfo(&info) {
                by_id.insert(id, stats);
            }
        }
    }
    let names = program_names()?;
    let mut by_name: BTreeMap<String, ProgStats> = BTreeMap::new();
    for (id, stats) in by_id {
        let name = names
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("id {id}"));
        let entry = by_name.entry(name).or_default();
        entry.runs += stats.runs;
        entry.run_time_ns += stats.run_time_ns;
        entry.skipped += stats.skipped;
    }
    Ok(by_name)
}

/// A BPF program's id and statistics from the `fdinfo` text of its file descriptor
/// (a link's names its program too, without statistics: not taken).
fn parse_prog_fdinfo(info: &str) -> Option<(u64, ProgStats)> {
    let field = |key: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    Some((
        field("prog_id")?,
        ProgStats {
            runs: field("run_cnt")?,
            run_time_ns: field("run_time_ns").unwrap_or(0),
            skipped: field("recursion_misses").unwrap_or(0),
        },
    ))
}

/// Every loaded BPF program's name, by id (`bpftool prog show`).
fn program_names() -> Result<BTreeMap<u64, String>> {
    let out = Command::new("bpftool")
        .args(["prog", "show"])
        .output()
        .context("running bpftool")?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.lines().filter_map(parse_prog_line).collect())
}

/// `123: tracepoint  name tp_poll_in  tag …` → (123, "tp_poll_in").
fn parse_prog_line(line: &str) -> Option<(u64, String)> {
    let (id, rest) = line.split_once(':')?;
    let id = id.trim().parse().ok()?;
    let mut words = rest.split_whitespace();
    words.find(|w| *w == "name")?;
    Some((id, words.next()?.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_programs_fdinfo() {
        let info = "pos:\t0\nflags:\t02000002\nmnt_id:\t16\nino:\t1057\nprog_type:\t5\n\
                    prog_jited:\t1\nprog_tag:\tccdf696dba62ba7f\nmemlock:\t20480\nprog_id:\t9301\n\
                    run_time_ns:\t5000\nrun_cnt:\t50\nrecursion_misses:\t2\nverified_insns:\t900\n";
        assert_eq!(
            parse_prog_fdinfo(info),
            Some((
                9301,
                ProgStats {
                    runs: 50,
                    run_time_ns: 5000,
                    skipped: 2
                }
            ))
        );
        assert_eq!(parse_prog_fdinfo("pos:\t0\nflags:\t02\nmap_id:\t4\n"), None);
        let link =
            "pos:\t0\nlink_type:\traw_tracepoint\nlink_id:\t5\nprog_tag:\tccdf\nprog_id:\t9301\n";
        assert_eq!(parse_prog_fdinfo(link), None);
    }

    #[test]
    fn reads_bpftools_program_lines() {
        let line = "9301: raw_tracepoint  name sched_switch  tag ccdf696dba62ba7f  gpl";
        assert_eq!(parse_prog_line(line), Some((9301, "sched_switch".into())));
        assert_eq!(
            parse_prog_line("\tloaded_at 2026-12-04T14:00:00+0000  uid 0"),
            None
        );
    }
}
