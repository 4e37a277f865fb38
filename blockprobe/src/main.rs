//! blockprobe: find what blocks Python asyncio event loops, system-wide, with eBPF.

mod aggregate;
mod attribution;
mod bpf_object;
mod classify;
mod cli;
mod clock;
mod commands;
mod deadline;
mod events;
mod evidence;
mod export;
mod fleet;
mod histogram;
mod hooks;
mod host;
mod identity;
mod kernel;
mod metrics;
mod model;
mod namespaces;
mod patience;
mod preflight;
mod private_mount;
mod probes;
mod proc_stat;
mod python;
mod render;
mod report;
mod session;
mod syscalls;
mod thread_now;
mod tracefs;

use clap::Parser as _;

use crate::cli::{Cli, Command};

fn main() {
    let cli = Cli::parse();
    match execute(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("blockprobe: error: {e:#}");
            std::process::exit(1);
        }
    }
}

/// Runs one subcommand; returns the process exit code.
fn execute(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Check => commands::check::run(),
        Command::Report {
            file,
            format,
            output,
        } => commands::report::run(&file, format, output.as_deref()).map(|()| 0),
        Command::Merge {
            files,
            output,
            max_stalls,
        } => commands::merge::run(
            &files,
            &output,
            fleet::merge::MergeLimits {
                max_stalls,
                ..Default::default()
            },
        )
        .map(|()| 0),
        Command::Diff {
            before,
            after,
            fail_on_regression,
            min_count,
            format,
            per_second,
            top,
            allow_threshold_mismatch,
        } => Ok(commands::diff::run(
            &before,
            &after,
            &fleet::diff::DiffOptions {
                fail_on_regression,
                min_count,
                normalize: per_second,
                allow_threshold_mismatch,
            },
            format,
            top,
        )),
        Command::Serve {
            options,
            listen,
            max_functions,
            max_services,
        } => runtime()?.block_on(commands::serve::run(
            options,
            commands::serve::ServeOptions {
                listen,
                max_functions,
                max_services,
            },
        )),
        Command::Run { options, command } => {
            runtime()?.block_on(commands::run::run(options, command))
        }
        Command::Trace { options, pids } => {
            runtime()?.block_on(commands::trace::run(options, pids))
        }
    }
}

/// A single-threaded runtime: blockprobe's userspace is one event pump.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context as _;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}
