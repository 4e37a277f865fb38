//! `cargo xtask setup`: checks, and installs when missing, what building and testing
//! blockprobe needs.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, Result, bail};

use crate::{Workspace, apt, capture, checked, fmt_duration, pythons};

/// Debian packages: LLVM 22 (headers, libraries and llvm-config) that bpf-linker is built
/// against and links to at run time, what its build also needs, and the Debian interpreter
/// the integration tests run on.
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "python3.11",
    "bpftool",
];
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
/// The LLVM major version bpf-linker is built against; rustc nightly must emit bitcode
/// this LLVM can read.
const LLVM_MAJOR: u32 = 22;
/// Oldest bpf-linker that works with this project, and what `cargo install` asks for.
const BPF_LINKER_MIN: (u64, u64) = (0, 13);
const BPF_LINKER_REQ: &str = "^0.13";
/// The Python packages the integration tests import (see tests/scripts).
const PY_DEPS: &[&str] = &["requests"];
/// py-spy, the integration tests' outside oracle for stacks (a wheel with its binary).
const PY_SPY: &str = "py-spy==0.4.3";

impl Workspace {
    /// Every setup step, in order: each checks, and installs what is missing.
    pub fn setup(&self) -> Result<()> {
        let started = Instant::now();
        step("nightly toolchain", setup_nightly)?;
        step("stable rustfmt + clippy", setup_stable_components)?;
        step("LLVM 22 (apt)", setup_apt)?;
        step("bpf-linker", setup_bpf_linker)?;
        step("python test deps", || self.setup_pydeps())?;
        step("py-spy (PyPI, the stack tests' oracle)", || {
            self.setup_pyspy()
        })?;
        self.setup_pythons()?;
        step("prometheus (apt, for the metrics test)", setup_prometheus)?;
        eprintln!("setup: done in {}", fmt_duration(started.elapsed()));
        Ok(())
    }

    /// `cargo xtask pythons`, also part of setup: the test interpreters the host lacks,
    /// uvloop and the real servers' packages.
    pub fn setup_pythons(&self) -> Result<()> {
        step("test interpreters (Debian sid, private)", pythons::ensure)?;
        for minor in pythons::UVLOOP_PYENV {
            step(&format!("uvloop for {minor} (PyPI)"), || {
                pythons::ensure_uvloop(&self.target, minor)
            })?;
        }
        step("servers for 3.11 and 3.13 (PyPI)", || {
            pythons::ensure_servers(&self.target)
        })
    }

    fn setup_pydeps(&self) -> Result<String> {
        let dir = self.pydeps();
        let missing: Vec<&str> = PY_DEPS
            .iter()
            .copied()
            .filter(|dep| !dir.join(dep).join("__init__.py").is_file())
            .collect();
        if missing.is_empty() {
            return Ok(format!("present in {}", dir.display()));
        }
        let python = pyenv_311();
        if !python.is_file() {
            bail!(
                "{} not found: it installs the tests' Python dependencies",
                python.display()
            );
        }
        // Pure-Python wheels only (`--platform any --implementation py`), for the oldest
        // interpreter the tests run (3.9): the same directory then works on every test
        // interpreter. Without this pip picks charset-normalizer's CPython-3.11 build.
        pip_install(
            &python,
            &dir,
            PY_DEPS,
            &[
                "--only-binary=:all:",
                "--platform",
                "any",
                "--implementation",
                "py",
                "--python-version",
                "3.9",
            ],
        )?;
        Ok(format!(
            "installed {} into {}",
            PY_DEPS.join(" "),
            dir.display()
        ))
    }

    /// py-spy in `target/pyspy` (its binary in `bin/`), unless present.
    fn setup_pyspy(&self) -> Result<String> {
        let dir = self.target.join("pyspy");
        let bin = dir.join("bin/py-spy");
        if bin.is_file() {
            return Ok(format!("present at {}", bin.display()));
        }
        pip_install(&pyenv_311(), &dir, &[PY_SPY], &["--only-binary=:all:"])?;
        Ok(format!("installed {PY_SPY} into {}", dir.display()))
    }
}

/// Runs one setup step and prints one line for it.
pub fn step(name: &str, f: impl FnOnce() -> Result<String>) -> Result<()> {
    let started = Instant::now();
    match f() {
        Ok(what) => {
            eprintln!(
                "setup: {name}: {what} ({})",
                fmt_duration(started.elapsed())
            );
            Ok(())
        }
        Err(err) => Err(err.context(format!("setup step `{name}` failed"))),
    }
}

/// The nightly toolchain builds the eBPF crate (`-Z build-std=core` needs `rust-src`)
/// and lints it (`clippy`).
fn setup_nightly() -> Result<String> {
    let toolchains = capture(Command::new("rustup").args(["toolchain", "list"]))
        .context("rustup is needed to manage the nightly toolchain")?;
    let mut installed = String::new();
    if !toolchains.lines().any(|l| l.starts_with("nightly-")) {
        // A new nightly may be unreachable from some machines: say so plainly.
        checked(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src,clippy",
        ]))
        .context("no nightly toolchain, and `rustup toolchain install nightly` failed")?;
        installed.push_str("installed nightly; ");
    }
    let sysroot = PathBuf::from(capture(
        Command::new("rustc").args(["+nightly", "--print", "sysroot"]),
    )?);
    let mut missing = Vec::new();
    if !sysroot
        .join("lib/rustlib/src/rust/library/core/Cargo.toml")
        .is_file()
    {
        missing.push("rust-src");
    }
    if !sysroot.join("bin/cargo-clippy").is_file() {
        missing.push("clippy");
    }
    if !missing.is_empty() {
        checked(
            Command::new("rustup")
                .args(["component", "add", "--toolchain", "nightly"])
                .args(&missing),
        )?;
        let _ = write!(installed, "added {}; ", missing.join(" "));
    }
    let version = capture(Command::new("rustc").args(["+nightly", "-vV"]))?;
    let release = field(&version, "release").unwrap_or("?");
    let date = field(&version, "commit-date").unwrap_or("?");
    let llvm = field(&version, "LLVM version").unwrap_or("?");
    let llvm_major: Option<u32> = llvm.split('.').next().and_then(|m| m.parse().ok());
    if llvm_major != Some(LLVM_MAJOR) {
        eprintln!(
            "setup: warning: rustc nightly uses LLVM {llvm}, bpf-linker is built against LLVM \
             {LLVM_MAJOR}; linking the eBPF object may fail. Use a nightly built on LLVM \
             {LLVM_MAJOR} (e.g. `rustup toolchain install nightly-2026-05-19`) or rebuild \
             bpf-linker for LLVM {}.",
            llvm_major.map_or("?".to_string(), |m| m.to_string())
        );
    }
    Ok(format!(
        "{installed}rustc {release} ({date}, LLVM {llvm}) with rust-src, clippy"
    ))
}

fn setup_stable_components() -> Result<String> {
    // The active toolchain: the one that runs xtask.
    let sysroot = PathBuf::from(capture(Command::new("rustc").args(["--print", "sysroot"]))?);
    let mut missing = Vec::new();
    if !sysroot.join("bin/rustfmt").is_file() {
        missing.push("rustfmt");
    }
    if !sysroot.join("bin/cargo-clippy").is_file() {
        missing.push("clippy");
    }
    if missing.is_empty() {
        return Ok("present".into());
    }
    checked(
        Command::new("rustup")
            .args(["component", "add"])
            .args(&missing),
    )?;
    Ok(format!("added {}", missing.join(" ")))
}

fn setup_apt() -> Result<String> {
    let done = apt::ensure(APT_PACKAGES, "building blockprobe and its tests")?;
    let llvm_config = Path::new(LLVM_PREFIX).join("bin/llvm-config");
    if !llvm_config.is_file() {
        bail!(
            "{} is missing although its packages are installed; reinstall llvm-22-dev",
            llvm_config.display()
        );
    }
    Ok(done)
}

/// Debian's Prometheus server: `tests/tests/prometheus.rs` starts one on loopback to
/// scrape `blockprobe serve`.
fn setup_prometheus() -> Result<String> {
    apt::ensure(&["prometheus"], "the Prometheus integration test")
}

fn setup_bpf_linker() -> Result<String> {
    if let Some(version) = bpf_linker_version() {
        if version >= BPF_LINKER_MIN {
            return Ok(format!("present ({}.{})", version.0, version.1));
        }
        eprintln!(
            "setup: bpf-linker {}.{} is older than {}.{}: reinstalling",
            version.0, version.1, BPF_LINKER_MIN.0, BPF_LINKER_MIN.1
        );
    }
    checked(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_REQ,
                "--locked",
                "--force",
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", LLVM_PREFIX),
    )
    .context("cannot install bpf-linker")?;
    match bpf_linker_version() {
        Some(v) if v >= BPF_LINKER_MIN => Ok(format!("installed ({}.{})", v.0, v.1)),
        _ => bail!("bpf-linker still not usable after `cargo install`"),
    }
}

/// `bpf-linker --version` as (major, minor), looked up on PATH (which includes
/// `$CARGO_HOME/bin`, see [`Workspace::extend_path`]).
fn bpf_linker_version() -> Option<(u64, u64)> {
    let out = capture(Command::new("bpf-linker").arg("--version")).ok()?;
    // "bpf-linker 0.13.0"
    let version = out.split_whitespace().nth(1)?;
    let mut parts = version.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// `pip install`s `packages` for `python` into `dir`: into a fresh staging directory
/// first, moved into place when complete, so an interrupted install never looks done.
pub fn pip_install(python: &Path, dir: &Path, packages: &[&str], extra: &[&str]) -> Result<()> {
    // Next to `dir`, named after all of it (`with_extension` would take `3.tmp` for both
    // `3.11` and `3.13`).
    let mut staging = dir.as_os_str().to_owned();
    staging.push(".tmp");
    let staging = PathBuf::from(staging);
    for stale in [&staging, dir] {
        if stale.exists() {
            std::fs::remove_dir_all(stale)
                .with_context(|| format!("cannot remove {}", stale.display()))?;
        }
    }
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)?;
    }
    checked(
        Command::new(python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-input",
                "--no-compile",
            ])
            .args(extra)
            .arg("--target")
            .arg(&staging)
            .args(packages)
            .env("PIP_ROOT_USER_ACTION", "ignore"),
    )?;
    std::fs::rename(&staging, dir)
        .with_context(|| format!("cannot move {} into place", staging.display()))
}

/// pyenv's 3.11: it installs the tests' Python dependencies (pure Python, so they work
/// on every test interpreter through PYTHONPATH) and uvloop, and runs the benchmarks.
pub fn pyenv_311() -> PathBuf {
    blockprobe_pythons::by_id("pyenv_3_11").path()
}

/// A `key: value` line of `rustc -vV`.
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rustc_version_fields() {
        let v = "rustc 1.97.0-nightly\nrelease: 1.97.0-nightly\nLLVM version: 22.1.4\n";
        assert_eq!(field(v, "LLVM version"), Some("22.1.4"));
        assert_eq!(field(v, "release"), Some("1.97.0-nightly"));
        assert_eq!(field(v, "commit-date"), None);
    }
}
