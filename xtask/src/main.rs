//! `cargo xtask`: blockprobe's development tasks.
//!
//! A fresh machine needs more than `cargo` to build blockprobe: the eBPF crate is compiled
//! by aya-build with the nightly toolchain (plus `rust-src`, for `-Z build-std=core`) and
//! linked by `bpf-linker`, which is built against Debian's LLVM 22. The integration tests
//! also need `requests` for the test interpreters, and py-spy as the stack tests' oracle.
//! `cargo xtask setup` checks and installs all of it; every other task runs it first. When
//! everything is present it only looks, and takes well under a second.
//!
//! All of xtask's own messages go to stderr, so `cargo xtask run -- … --format jsonl`
//! leaves blockprobe's stdout untouched.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

mod apt;
mod bench;
mod dist;
mod image;
mod offsets;
mod pythons;

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

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "blockprobe's development tasks",
    long_about = "blockprobe's development tasks. Every task first runs `setup`, \
                  which installs what is missing and is quick when nothing is."
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Check, and install when missing: nightly rust-src and clippy, LLVM 22, bpf-linker,
    /// the tests' Python dependencies. Idempotent.
    Setup,
    /// Fetch the test interpreters the host lacks (CPython 3.14 and 3.15 from Debian sid,
    /// unpacked into a private cache, uvloop for pyenv 3.11 and 3.13 from PyPI). Idempotent; part of setup.
    Pythons,
    /// Set up, then `cargo build -p blockprobe`.
    Build {
        /// Build with the release profile.
        #[arg(long)]
        release: bool,
    },
    /// Set up, then build the static x86_64 musl binary (stripped, BPF object embedded) and
    /// write dist/blockprobe-VERSION-x86_64-unknown-linux-musl.tar.gz and its .sha256.
    Dist,
    /// `dist`, then build the container image of deploy/Containerfile with podman or
    /// docker (whichever works here).
    Image {
        /// Image tag (default blockprobe:VERSION).
        #[arg(long)]
        tag: Option<String>,
    },
    /// Set up, build blockprobe (release unless --debug), then run it with ARGS.
    ///
    /// Example: `cargo xtask run -- run -- python3 examples/blocking_sleep.py`.
    /// The exit code is blockprobe's.
    Run {
        /// Build and run the debug binary instead of the release one.
        #[arg(long)]
        debug: bool,
        /// Arguments for blockprobe (put them after `--`).
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "ARGS"
        )]
        args: Vec<OsString>,
    },
    /// rustfmt check, clippy on the host crates and clippy on the eBPF crate for the BPF
    /// target; warnings are errors.
    Lint,
    /// Regenerate blockprobe/src/python/header_offsets.rs (CPython 3.9–3.12 struct
    /// offsets) from the pyenv interpreters' own headers, with the C compiler.
    GenOffsets,
    /// Set up, build blockprobe (release), and measure its overhead on real workloads,
    /// side by side with peer tools; writes bench/results/latest.md (needs root).
    Bench {
        /// Repetitions of every workload under every mode.
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// Only this workload (repeatable): http, queue, map, dd, stalls; the results
        /// then go to bench/results/partial.md.
        #[arg(long = "workload", value_name = "KEY")]
        workloads: Vec<String>,
        /// Also measure this blockprobe binary host-wide (e.g. the previous release), in
        /// the same run.
        #[arg(long, value_name = "BIN")]
        baseline: Option<PathBuf>,
    },
    /// Set up, lint, unit tests, build the debug and the static (`dist`) binaries, then the
    /// integration tests against them and real Pythons (needs root). The full matrix (every test on pyenv 3.9, 3.10, 3.12,
    /// 3.13 and Debian sid 3.15 too) runs when all its interpreters are installed; else
    /// the tests of the missing ones skip.
    Test {
        /// Insist on the full matrix: the tests of a missing interpreter fail.
        #[arg(long)]
        long: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.task) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(task: Task) -> Result<ExitCode> {
    let ws = Workspace::locate()?;
    ws.extend_path()?;
    match task {
        Task::Setup => {
            ws.setup()?;
        }
        Task::Pythons => {
            step("test interpreters (Debian sid, private)", pythons::ensure)?;
            for minor in pythons::UVLOOP_PYENV {
                step(&format!("uvloop for {minor} (PyPI)"), || {
                    pythons::ensure_uvloop(&ws.target, minor)
                })?;
            }
            step("servers for 3.11 and 3.13 (PyPI)", || {
                pythons::ensure_servers(&ws.target)
            })?;
        }
        Task::Build { release } => {
            ws.setup()?;
            ws.build(release)?;
        }
        Task::Run { debug, args } => {
            ws.setup()?;
            ws.build(!debug)?;
            let bin = ws.binary(!debug);
            let mut cmd = Command::new(&bin);
            cmd.args(&args);
            // Cargo's own variables for xtask are no business of blockprobe's or of the
            // program it traces.
            for (key, _) in std::env::vars_os() {
                if key.to_string_lossy().starts_with("CARGO_") {
                    cmd.env_remove(key);
                }
            }
            // `exec` only returns on failure; on success blockprobe takes over this
            // process, so signals, stdin and the exit code are its own.
            let err = cmd.exec();
            bail!("cannot run {}: {err}", bin.display());
        }
        Task::Dist => {
            ws.setup()?;
            ws.dist()?;
        }
        Task::Image { tag } => {
            ws.setup()?;
            ws.image(tag.as_deref())?;
        }
        Task::Lint => {
            ws.lint()?;
        }
        Task::Test { long } => {
            return ws.test(long);
        }
        Task::GenOffsets => {
            let path = offsets::generate(&ws.root)?;
            eprintln!("gen-offsets: wrote {}", path.display());
        }
        Task::Bench {
            reps,
            workloads,
            baseline,
        } => {
            if !is_root() {
                bail!("the benchmark loads BPF programs and needs root");
            }
            ws.setup()?;
            ws.build(true)?;
            let options = bench::BenchOptions {
                reps,
                workloads,
                baseline,
            };
            bench::run(&ws.root, &ws.target, &ws.binary(true), &options)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

struct Workspace {
    root: PathBuf,
    target: PathBuf,
    /// The cargo that runs xtask (stable toolchain).
    cargo: OsString,
}

impl Workspace {
    fn locate() -> Result<Self> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("xtask has no parent directory")?
            .to_path_buf();
        let target = match std::env::var_os("CARGO_TARGET_DIR") {
            Some(dir) => {
                let dir = PathBuf::from(dir);
                if dir.is_absolute() {
                    dir
                } else {
                    std::env::current_dir()?.join(dir)
                }
            }
            None => root.join("target"),
        };
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        Ok(Self {
            root,
            target,
            cargo,
        })
    }

    /// Puts `$CARGO_HOME/bin` on PATH for everything xtask starts: that is where
    /// `cargo install` puts bpf-linker, and aya-build finds it through PATH.
    fn extend_path(&self) -> Result<()> {
        let bin = cargo_home().join("bin");
        let path = std::env::var_os("PATH").unwrap_or_default();
        if std::env::split_paths(&path).any(|p| p == bin) {
            return Ok(());
        }
        let joined = std::env::join_paths(std::iter::once(bin).chain(std::env::split_paths(&path)))
            .context("cannot extend PATH")?;
        // SAFETY: xtask is single-threaded; nothing reads the environment concurrently.
        unsafe { std::env::set_var("PATH", joined) };
        Ok(())
    }

    fn cargo(&self) -> Command {
        let mut cmd = Command::new(&self.cargo);
        cmd.current_dir(&self.root);
        cmd
    }

    /// `cargo +nightly …` through the rustup proxy (the `CARGO` xtask runs under is the
    /// stable toolchain's own binary, which does not understand `+toolchain`).
    fn cargo_nightly(&self) -> Command {
        let mut cmd = Command::new("cargo");
        cmd.arg("+nightly").current_dir(&self.root);
        cmd
    }

    fn binary(&self, release: bool) -> PathBuf {
        self.target
            .join(if release { "release" } else { "debug" })
            .join("blockprobe")
    }

    fn pydeps(&self) -> PathBuf {
        self.target.join("pydeps")
    }

    // ---------------------------------------------------------------- setup

    fn setup(&self) -> Result<()> {
        let started = Instant::now();
        step("nightly toolchain", setup_nightly)?;
        step("stable rustfmt + clippy", setup_stable_components)?;
        step("LLVM 22 (apt)", setup_apt)?;
        step("bpf-linker", setup_bpf_linker)?;
        step("python test deps", || self.setup_pydeps())?;
        step("py-spy (PyPI, the stack tests' oracle)", || {
            self.setup_pyspy()
        })?;
        step("test interpreters (Debian sid, private)", pythons::ensure)?;
        for minor in pythons::UVLOOP_PYENV {
            step(&format!("uvloop for {minor} (PyPI)"), || {
                pythons::ensure_uvloop(&self.target, minor)
            })?;
        }
        step("servers for 3.11 and 3.13 (PyPI)", || {
            pythons::ensure_servers(&self.target)
        })?;
        step("prometheus (apt, for the metrics test)", setup_prometheus)?;
        eprintln!("setup: done in {}", fmt_duration(started.elapsed()));
        Ok(())
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

    // ---------------------------------------------------------------- build

    fn build(&self, release: bool) -> Result<()> {
        let mut cmd = self.cargo();
        cmd.args(["build", "-p", "blockprobe"]);
        if release {
            cmd.arg("--release");
        }
        checked(&mut cmd)
    }

    // ---------------------------------------------------------------- lint

    fn lint(&self) -> Result<()> {
        checked(self.cargo().args(["fmt", "--all", "--check"]))?;
        checked(self.cargo().args([
            "clippy",
            "--workspace",
            "--exclude",
            "blockprobe-ebpf",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
        // The eBPF crate for its real target. (Not on the host, above: built in one
        // invocation with blockprobe, its blockprobe-common dependency gets the `user`
        // feature, hence aya and std, whose panic handler clashes with the crate's own.)
        checked(self.cargo_nightly().args([
            "clippy",
            "-p",
            "blockprobe-ebpf",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ]))
    }

    // ---------------------------------------------------------------- test

    /// `long`: insist on the full matrix (see [`matrix_mode`]).
    fn test(&self, long: bool) -> Result<ExitCode> {
        if !is_root() {
            bail!(
                "`cargo xtask test` must run as root: the integration tests load BPF \
                 programs and read other processes' memory (try `sudo -E cargo xtask test`)"
            );
        }
        let bin = self.binary(false);
        let pydeps = self.pydeps();
        let mut summary = Summary::default();
        // Setup first: it fetches interpreters.
        let set_up = summary.run("setup", || plain(self.setup()));
        let missing: Vec<String> = blockprobe_pythons::missing_full_matrix()
            .iter()
            .map(|i| i.label())
            .collect();
        let (full, mode) = matrix_mode(long, &missing);
        let mut tarball = None;
        eprintln!("test: {mode}");
        let full_env = (
            blockprobe_pythons::FULL_MATRIX_ENV,
            if full { "1" } else { "0" },
        );
        let ok = set_up
            && summary.run("lint", || plain(self.lint()))
            && summary.run("unit tests", || {
                cargo_test(
                    self.cargo()
                        .args([
                            "test",
                            "--workspace",
                            "--exclude",
                            "blockprobe-tests",
                            // A BPF-target crate (see `lint`).
                            "--exclude",
                            "blockprobe-ebpf",
                            "--no-fail-fast",
                        ])
                        .env(full_env.0, full_env.1),
                )
            })
            && summary.run("build blockprobe (debug)", || plain(self.build(false)))
            && summary.run("build the static binary (dist)", || {
                plain(self.dist().map(|dist| tarball = Some(dist.tarball)))
            })
            && summary.run(
                if full {
                    "integration tests (full matrix)"
                } else {
                    "integration tests"
                },
                || {
                    let mut cmd = self.cargo();
                    // Every test binary runs, so that one run reports every failure.
                    cmd.args([
                        "test",
                        "-p",
                        "blockprobe-tests",
                        "--no-fail-fast",
                        "--",
                        "--test-threads=1",
                    ]);
                    cmd.env("BLOCKPROBE_BIN", &bin)
                        .env(
                            "BLOCKPROBE_DIST_TARBALL",
                            tarball.as_deref().unwrap_or(Path::new("")),
                        )
                        .env("BLOCKPROBE_PYDEPS", &pydeps)
                        .env(full_env.0, full_env.1);
                    cargo_test(&mut cmd)
                },
            );
        summary.print();
        Ok(if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    }
}

// -------------------------------------------------------------------- setup steps

/// Runs one setup step and prints one line for it.
fn step(name: &str, f: impl FnOnce() -> Result<String>) -> Result<()> {
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

// -------------------------------------------------------------------- helpers

fn cargo_home() -> PathBuf {
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        return home.into();
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    Path::new(&home).join(".cargo")
}

/// `pip install`s `packages` for `python` into `dir`: into a fresh staging directory
/// first, moved into place when complete, so an interrupted install never looks done.
fn pip_install(python: &Path, dir: &Path, packages: &[&str], extra: &[&str]) -> Result<()> {
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
fn pyenv_311() -> PathBuf {
    blockprobe_pythons::by_id("pyenv_3_11").path()
}

/// Whether `xtask test` runs the full matrix, given `--long` and the labels of the
/// full-matrix interpreters that are `missing`; and a line saying so.
fn matrix_mode(long: bool, missing: &[String]) -> (bool, String) {
    if missing.is_empty() {
        return (
            true,
            "full matrix: every test interpreter is installed".into(),
        );
    }
    let missing = missing.join(", ");
    if long {
        (
            true,
            format!("full matrix (--long): {missing} missing: their tests fail"),
        )
    } else {
        (
            false,
            format!(
                "not the full matrix: {missing} missing: their tests skip (`--long` makes \
                 them fail)"
            ),
        )
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A `key: value` line of `rustc -vV`.
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(str::trim)
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// Runs a command with inherited stdio (its output goes to the terminal, stdout moved to
/// stderr so xtask's stdout stays clean); fails if it does not exit 0.
fn checked(cmd: &mut Command) -> Result<()> {
    let line = describe(cmd);
    eprintln!("$ {line}");
    let status = cmd
        .stdout(std::io::stderr())
        .status()
        .with_context(|| format!("cannot start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Runs a command quietly and returns its trimmed stdout; fails if it does not exit 0.
fn capture(cmd: &mut Command) -> Result<String> {
    let line = describe(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("cannot start `{line}`"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Test counts read off cargo test's `test result:` lines, and the tests that skipped a
/// missing interpreter (which cargo counts as passed).
#[derive(Default, Clone, Copy)]
struct Counts {
    passed: u64,
    failed: u64,
    ignored: u64,
    skipped: u64,
}

impl Counts {
    fn add(&mut self, other: Counts) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.ignored += other.ignored;
        self.skipped += other.skipped;
    }
}

/// How one stage of `xtask test` went.
struct Outcome {
    counts: Option<Counts>,
    error: Option<String>,
}

fn plain(result: Result<()>) -> Outcome {
    Outcome {
        counts: None,
        error: result.err().map(|e| format!("{e:#}")),
    }
}

/// Runs `cargo test …`, echoing its stdout to ours and adding up its result lines.
fn cargo_test(cmd: &mut Command) -> Outcome {
    let line = describe(cmd);
    eprintln!("$ {line}");
    let mut counts = Counts::default();
    let mut child = match cmd.stdout(Stdio::piped()).spawn() {
        Ok(child) => child,
        Err(err) => {
            return Outcome {
                counts: None,
                error: Some(format!("cannot start `{line}`: {err}")),
            };
        }
    };
    if let Some(stdout) = child.stdout.take() {
        for text in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("{text}");
            counts.add(parse_test_result(&text));
        }
        counts.passed = counts.passed.saturating_sub(counts.skipped);
    }
    let error = match child.wait() {
        Ok(status) if status.success() => None,
        Ok(status) => Some(format!("`{line}` failed ({status})")),
        Err(err) => Some(format!("cannot wait for `{line}`: {err}")),
    };
    Outcome {
        counts: Some(counts),
        error,
    }
}

/// Reads "test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; …",
/// and counts a line about a skipped interpreter.
fn parse_test_result(line: &str) -> Counts {
    let mut counts = Counts::default();
    if line.contains(blockprobe_pythons::SKIP_MARK) {
        counts.skipped = 1;
    }
    let Some(rest) = line.trim().strip_prefix("test result: ") else {
        return counts;
    };
    for part in rest.split(';') {
        let mut words = part.split_whitespace().rev();
        let (Some(what), Some(n)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(n) = n.parse::<u64>() else { continue };
        match what {
            "passed" => counts.passed += n,
            "failed" => counts.failed += n,
            "ignored" => counts.ignored += n,
            _ => {}
        }
    }
    counts
}

#[derive(Default)]
struct Summary {
    rows: Vec<(String, Duration, Outcome)>,
}

impl Summary {
    /// Runs one stage of `xtask test`; returns whether it succeeded.
    fn run(&mut self, name: &str, f: impl FnOnce() -> Outcome) -> bool {
        eprintln!("\n==> {name}");
        let started = Instant::now();
        let outcome = f();
        let ok = outcome.error.is_none();
        self.rows
            .push((name.to_string(), started.elapsed(), outcome));
        ok
    }

    fn print(&self) {
        let mut total = Counts::default();
        eprintln!("\n==> summary");
        for (name, took, outcome) in &self.rows {
            let counts = outcome.counts.map_or(String::new(), |c| {
                total.add(c);
                format!(
                    ": {} passed, {} failed, {} ignored, {} skipped",
                    c.passed, c.failed, c.ignored, c.skipped
                )
            });
            match &outcome.error {
                None => eprintln!("  ok    {name} ({}){counts}", fmt_duration(*took)),
                Some(err) => eprintln!(
                    "  FAIL  {name} ({}){counts}\n        {err}",
                    fmt_duration(*took)
                ),
            }
        }
        let failed = self.rows.iter().any(|(_, _, o)| o.error.is_some());
        // One plain closing line: "<verdict>: N passed, N failed, N skipped".
        println!(
            "{}: {} passed, {} failed, {} skipped",
            if failed { "FAILED" } else { "ok" },
            total.passed,
            total.failed,
            total.ignored + total.skipped
        );
    }
}

fn fmt_duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_args(argv: &[&str]) -> (bool, Vec<String>) {
        match Cli::try_parse_from(argv).expect("parses").task {
            Task::Run { debug, args } => (
                debug,
                args.iter()
                    .map(|a| a.to_string_lossy().into_owned())
                    .collect(),
            ),
            _ => panic!("not the run task"),
        }
    }

    #[test]
    fn run_passes_everything_after_the_separator() {
        assert_eq!(
            run_args(&["xtask", "run", "--", "run", "--", "python3", "x.py"]),
            (
                false,
                vec!["run".into(), "--".into(), "python3".into(), "x.py".into()]
            )
        );
        assert_eq!(
            run_args(&[
                "xtask", "run", "--debug", "--", "trace", "-p", "1", "--debug"
            ]),
            (
                true,
                vec!["trace".into(), "-p".into(), "1".into(), "--debug".into()]
            )
        );
        assert_eq!(
            run_args(&["xtask", "run", "--", "--help"]),
            (false, vec!["--help".into()])
        );
    }

    #[test]
    fn reads_cargo_test_result_lines() {
        let c = parse_test_result(
            "test result: FAILED. 3 passed; 1 failed; 2 ignored; 0 measured; 0 filtered out; finished in 0.01s",
        );
        assert_eq!((c.passed, c.failed, c.ignored), (3, 1, 2));
        let c = parse_test_result("running 3 tests");
        assert_eq!((c.passed, c.failed, c.ignored), (0, 0, 0));
        let c = parse_test_result(&format!(
            "test x::pyenv_3_9 ... {} pyenv 3.9.18: … not found",
            blockprobe_pythons::SKIP_MARK
        ));
        assert_eq!((c.passed, c.skipped), (0, 1));
    }

    #[test]
    fn the_full_matrix_runs_when_nothing_is_missing_or_with_long() {
        let missing = ["Debian sid 3.15".to_string()];
        assert!(matrix_mode(false, &[]).0);
        assert!(matrix_mode(true, &[]).0);
        let (full, line) = matrix_mode(false, &missing);
        assert!(!full && line.contains("Debian sid 3.15 missing: their tests skip"));
        let (full, line) = matrix_mode(true, &missing);
        assert!(full && line.contains("their tests fail"));
    }

    #[test]
    fn reads_rustc_version_fields() {
        let v = "rustc 1.97.0-nightly\nrelease: 1.97.0-nightly\nLLVM version: 22.1.4\n";
        assert_eq!(field(v, "LLVM version"), Some("22.1.4"));
        assert_eq!(field(v, "release"), Some("1.97.0-nightly"));
        assert_eq!(field(v, "commit-date"), None);
    }
}
