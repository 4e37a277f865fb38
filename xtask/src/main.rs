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
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};

mod apt;
mod bench;
mod build;
mod dist;
mod image;
mod lint;
mod offsets;
mod process;
mod pythons;
mod setup;
mod test;
mod workspace;

use process::{capture, checked, describe, fmt_duration, is_root};
use setup::{pip_install, pyenv_311};
use workspace::Workspace;

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
            ws.setup_pythons()?;
        }
        Task::Build { release } => {
            ws.setup()?;
            ws.build(release)?;
        }
        Task::Run { debug, args } => {
            ws.setup()?;
            ws.build(!debug)?;
            return Err(ws.exec(!debug, &args));
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
}
