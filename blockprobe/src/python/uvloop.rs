//! uvloop's extension module (`uvloop/loop.cpython-*.so`), which exports libuv's
//! `uv_run`: where it is on disk, mapped or not yet, and whether a thread runs it.
//!
//! A uvloop loop has no Python frame of its own; `uv_run` is entered once per
//! `run_forever`/`run_until_complete` and returns when the loop stops. Its probes are
//! attached per file, to a file a process has mapped or one it may still import (found in
//! its `PYTHONPATH`, its virtualenv and its interpreter's package directories, so the
//! first run of a loop imported after tracing started is seen from its start). A loop
//! already inside `uv_run` when the probes were attached is recognized from its thread's
//! native stack: a return address inside `uv_run`.

use std::{
    ops::Range,
    path::{Path, PathBuf},
};

use super::elf;
use super::maps::{Maps, file_name};
use super::memory::ProcessMemory;
use super::probe_site::ProbeSite;
use super::version::Version;

/// libuv's function that runs a loop.
pub const RUN_FUNCTION: &str = "uv_run";

/// How much of a polling thread's native stack is scanned for a return into `uv_run`:
/// libuv's `uv__io_poll` keeps a 12 KiB array of epoll events on its frame.
const STACK_SCAN_BYTES: usize = 64 << 10;

/// A uvloop extension module (or libuv) mapped by a process.
#[derive(Debug)]
pub struct MappedModule {
    /// `uv_run` in the file (the file mapped, open).
    pub site: ProbeSite,
    /// Where `uv_run` lies in the process's memory.
    pub run: Range<u64>,
}

/// Whether `path` (a mapped file) is a uvloop extension module.
fn is_loop_module(path: &str) -> bool {
    let name = file_name(path);
    name.starts_with("loop.")
        && name.ends_with(".so")
        && Path::new(path)
            .parent()
            .and_then(Path::file_name)
            .is_some_and(|dir| dir == "uvloop")
}

/// Whether `path` (a mapped file) is a shared libuv, which a uvloop built against the
/// system's libuv (Debian's `python3-uvloop`) runs its loops in.
fn is_libuv(path: &str) -> bool {
    file_name(path).starts_with("libuv.so")
}

/// The uvloop modules (or shared libuv) among the files process `pid` maps (`maps`) that
/// define `uv_run`.
pub fn mapped(pid: u32, maps: &Maps) -> anyhow::Result<Vec<MappedModule>> {
    let mut found: Vec<MappedModule> = Vec::new();
    for m in (maps.files()).filter(|m| is_loop_module(&m.path) || is_libuv(&m.path)) {
        if let Some((run, site)) = elf::mapped_function(pid, maps, m, RUN_FUNCTION)? {
            found.push(MappedModule { site, run });
        }
    }
    Ok(found)
}

/// `uv_run` in the uvloop modules process `pid` (Python `version`, interpreter in
/// `binary`) may import: `uvloop/loop.*.so` under its `PYTHONPATH` entries, its
/// `VIRTUAL_ENV` and its interpreter's package directories, that define `uv_run`, or for
/// a uvloop built against a shared libuv, that libuv. Its environment (`environ`, a read
/// of its memory) and files are read here: off the event pump.
pub fn importable(pid: u32, binary: &str, version: Version) -> Vec<ProbeSite> {
    let lib = format!("python{}.{}", version.major, version.minor);
    let mut dirs: Vec<PathBuf> = Vec::new();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    for var in environ.split(|&b| b == 0) {
        let var = String::from_utf8_lossy(var);
        if let Some(paths) = var.strip_prefix("PYTHONPATH=") {
            dirs.extend(paths.split(':').map(PathBuf::from));
        } else if let Some(venv) = var.strip_prefix("VIRTUAL_ENV=") {
            dirs.push(Path::new(venv).join("lib").join(&lib).join("site-packages"));
        }
    }
    if let Some(prefix) = elf::install_prefix(binary) {
        dirs.push(prefix.join("lib").join(&lib).join("site-packages"));
        dirs.push(prefix.join("lib/python3/dist-packages"));
        dirs.push(prefix.join("local/lib").join(&lib).join("dist-packages"));
    }
    let mut found: Vec<ProbeSite> = Vec::new();
    let mut shared_libuv = false;
    for dir in dirs.iter().filter(|d| d.is_absolute()) {
        let uvloop = dir.join("uvloop");
        let Ok(entries) = std::fs::read_dir(elf::host_path(pid, &uvloop.to_string_lossy())) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = uvloop
                .join(entry.file_name())
                .to_string_lossy()
                .into_owned();
            if !is_loop_module(&path) || found.iter().any(|site| site.path == path) {
                continue;
            }
            match elf::exported_function(pid, &path, RUN_FUNCTION) {
                Some(site) => found.push(site),
                None => shared_libuv = true,
            }
        }
    }
    if shared_libuv {
        found.extend(system_libuv(pid, binary));
    }
    found
}

/// The shared libuv a uvloop built against the system's libuv (Debian's
/// `python3-uvloop`) loads: `uv_run` in `libuv.so.1` of the interpreter's or the
/// system's library directories.
fn system_libuv(pid: u32, binary: &str) -> Option<ProbeSite> {
    let prefix = elf::install_prefix(binary).unwrap_or(Path::new("/usr"));
    let dirs = [
        prefix.join("lib/x86_64-linux-gnu"),
        prefix.join("lib"),
        PathBuf::from("/usr/lib/x86_64-linux-gnu"),
        PathBuf::from("/lib/x86_64-linux-gnu"),
    ];
    dirs.iter().find_map(|dir| {
        let path = dir.join("libuv.so.1");
        elf::exported_function(pid, &path.to_string_lossy(), RUN_FUNCTION)
    })
}

/// Whether the native stack of a thread of the process behind `memory`, from stack
/// pointer `sp` up, holds a return address inside `run` (`uv_run`): the thread polls
/// from inside a running uvloop loop.
pub fn stack_runs(memory: &ProcessMemory, sp: u64, run: &Range<u64>) -> bool {
    if sp == 0 {
        return false;
    }
    let mut stack = vec![0u8; STACK_SCAN_BYTES];
    let Ok(len) = memory.read_prefix(sp, &mut stack) else {
        return false;
    };
    holds_address_in(&stack[..len], run)
}

/// Whether the 8-byte aligned words of `stack` include an address inside `range`.
fn holds_address_in(stack: &[u8], range: &Range<u64>) -> bool {
    stack
        .chunks_exact(8)
        .map(|w| u64::from_le_bytes(w.try_into().expect("8-byte chunk")))
        .any(|word| range.contains(&word))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loop_modules_are_told_by_name() {
        assert!(is_loop_module(
            "/x/site-packages/uvloop/loop.cpython-311-x86_64-linux-gnu.so"
        ));
        assert!(!is_loop_module("/x/site-packages/uvloop/__init__.py"));
        assert!(!is_loop_module(
            "/x/site-packages/other/loop.cpython-311.so"
        ));
    }

    #[test]
    fn a_return_into_the_range_is_found() {
        let run = 0x7f00_0000_1000..0x7f00_0000_1400;
        let mut stack = vec![0u8; 64];
        assert!(!holds_address_in(&stack, &run));
        stack[40..48].copy_from_slice(&0x7f00_0000_1234u64.to_le_bytes());
        assert!(holds_address_in(&stack, &run));
        assert!(!holds_address_in(
            &stack,
            &(0x7f00_0000_1400..0x7f00_0000_1500)
        ));
    }
}
