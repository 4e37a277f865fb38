//! Where things are and what the host says: paths, root, clocks, steal time, memory.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The blockprobe binary under test: `$BLOCKPROBE_BIN`, else `target/debug/blockprobe`.
pub fn blockprobe_bin() -> PathBuf {
    let path = match std::env::var_os("BLOCKPROBE_BIN") {
        Some(path) => PathBuf::from(path),
        None => workspace_root().join("target/debug/blockprobe"),
    };
    assert!(
        path.is_file(),
        "blockprobe binary not found at {}: run `cargo xtask test`, or build it \
         (`cargo build -p blockprobe`) and set BLOCKPROBE_BIN",
        path.display()
    );
    path
}

/// The static build's tarball (`cargo xtask dist`): `$BLOCKPROBE_DIST_TARBALL`, else
/// `dist/blockprobe-VERSION-x86_64-unknown-linux-musl.tar.gz` in the workspace.
pub fn dist_tarball() -> PathBuf {
    let path = match std::env::var_os("BLOCKPROBE_DIST_TARBALL").filter(|p| !p.is_empty()) {
        Some(path) => PathBuf::from(path),
        None => workspace_root().join(format!(
            "dist/blockprobe-{}-x86_64-unknown-linux-musl.tar.gz",
            env!("CARGO_PKG_VERSION")
        )),
    };
    assert!(
        path.is_file(),
        "the static build's tarball is not at {}: run `cargo xtask test`, or `cargo xtask dist` \
         and set BLOCKPROBE_DIST_TARBALL",
        path.display()
    );
    path
}

/// Where `cargo xtask setup` installs the scripts' Python dependencies (`requests`):
/// `$BLOCKPROBE_PYDEPS`, else `target/pydeps`.
pub fn pydeps() -> PathBuf {
    let path = match std::env::var_os("BLOCKPROBE_PYDEPS") {
        Some(path) => PathBuf::from(path),
        None => workspace_root().join("target/pydeps"),
    };
    assert!(
        path.join("requests").is_dir(),
        "Python test dependencies not found in {}: run `cargo xtask setup`",
        path.display()
    );
    path
}

/// The absolute path of a scenario script in `tests/scripts`.
pub fn script(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name);
    assert!(path.is_file(), "no scenario script {}", path.display());
    path
}

/// The 1-based number of the line of `script` that carries the comment `# <marker>`, e.g.
/// `BLOCK handler` for the line of `handler`'s blocking call.
pub fn marker_line(script: &Path, marker: &str) -> u32 {
    let text = std::fs::read_to_string(script).expect("script is readable");
    let tag = format!("# {marker}");
    let found: Vec<usize> = text
        .lines()
        .enumerate()
        .filter(|(_, line)| line.trim_end().ends_with(&tag))
        .map(|(i, _)| i + 1)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "{} must have exactly one line marked `{tag}`",
        script.display()
    );
    u32::try_from(found[0]).expect("line number fits u32")
}

/// Fails the test unless it runs as root: the tests load BPF programs.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the integration tests must run as root (they load BPF programs): `sudo -E cargo xtask test`"
    );
}

/// Wall-clock time now, in nanoseconds since the Unix epoch.
pub fn unix_now_ns() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    u64::try_from(since.as_nanos()).expect("fits u64")
}

/// CPU time the hypervisor took from this machine's CPUs so far (`steal` in /proc/stat,
/// all CPUs; 0 where it is not reported).
pub(crate) fn steal_ns() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("cpu "))
        .and_then(|fields| fields.split_whitespace().nth(7))
        .and_then(|steal| steal.parse().ok())
        .unwrap_or(0);
    // In USER_HZ ticks (100 a second on Linux for every architecture blockprobe runs on).
    ticks * 10_000_000
}

pub fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).expect("fits u64")
}

/// The peak resident set size (`VmHWM`) of process `pid` so far, in KiB; `u64::MAX` when
/// it cannot be read (so that any bound on it fails).
pub fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_marker_lines() {
        let script = script("sleep_in_coroutine.py");
        let line = marker_line(&script, "BLOCK handler");
        let text = std::fs::read_to_string(&script).unwrap();
        let at = text.lines().nth(line as usize - 1).unwrap();
        assert!(at.contains("time.sleep(0.2)"), "{at}");
    }
}
