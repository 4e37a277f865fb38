//! `blockprobe run -- CMD…`: run a command and trace it and its descendants.

use std::{os::unix::process::ExitStatusExt as _, time::Duration};

use anyhow::Context as _;
use blockprobe_common::config::Scope;

use crate::{cli::TraceOptions, commands::tracing, session::StopReason};

/// How long the command gets to exit after blockprobe forwarded a signal to it.
const SIGNAL_GRACE: Duration = Duration::from_secs(3);

/// Runs `command` under tracing; returns the command's exit code.
pub async fn run(options: TraceOptions, command: Vec<String>) -> anyhow::Result<i32> {
    let (program, args) = command.split_first().context("no command given")?;
    // A command that cannot run fails before any probe is loaded.
    which::which(program).with_context(|| format!("cannot run {program:?}"))?;
    let mut prepared = tracing::prepare(&options, Scope::Family)?;

    // blockprobe joins its own family for the instant of the fork, so the child is in it
    // (in the kernel, at fork time) before it execs; blockprobe then leaves.
    let own_pid = std::process::id();
    prepared.session.probes_mut().add_to_family(own_pid)?;
    let spawned = tokio::process::Command::new(program).args(args).spawn();
    prepared.session.probes_mut().remove_from_family(own_pid)?;
    let mut child = spawned.with_context(|| format!("cannot run {program:?}"))?;
    let pid = child
        .id()
        .context("the command exited before it could be traced")?;

    let started = prepared.started();
    let mut reason = prepared
        .session
        .run(prepared.ring, options.duration, Some(&mut child))
        .await?;
    let forward = match reason {
        StopReason::Signal(signal) => Some(signal),
        StopReason::Duration => Some(libc::SIGTERM),
        StopReason::ChildExited(_) => None,
    };
    if let Some(signal) = forward {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(pid as i32, signal) };
        if let Ok(Ok(status)) = tokio::time::timeout(SIGNAL_GRACE, child.wait()).await {
            reason = StopReason::ChildExited(status);
        }
    }
    tracing::finish(prepared.session, &options, started)?;
    Ok(match reason {
        StopReason::ChildExited(status) => status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
        StopReason::Signal(signal) => 128 + signal,
        StopReason::Duration => 0,
    })
}
