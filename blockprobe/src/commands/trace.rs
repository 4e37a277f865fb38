//! `blockprobe trace`: trace running processes (-p) or every Python process on the host.

use std::time::{Duration, Instant};

use anyhow::bail;
use blockprobe_common::config::Scope;

use crate::{
    cli::TraceOptions,
    commands::tracing,
    patience::Patience,
    preflight,
    python::{Inspection, PythonProcess},
    session::StopReason,
};

/// The longest wall time `trace -p` waits for a process that is not traceable yet (one
/// stopped while holding the GIL uses no CPU time).
const WALL_PATIENCE: Duration = Duration::from_secs(10);

/// Traces `pids`, or the whole host when empty, until a signal or `--duration`.
pub async fn run(options: TraceOptions, pids: Vec<u32>) -> anyhow::Result<i32> {
    // Without the privileges, inspecting a pid would only say "permission denied": say
    // what is missing first.
    preflight::require_privileges()?;
    // Bad pids fail before any probe is loaded.
    for &pid in &pids {
        wait_until_traceable(pid).await?;
    }
    let scope = if pids.is_empty() {
        Scope::Host
    } else {
        Scope::Explicit
    };
    let mut prepared = tracing::prepare(&options, scope)?;
    let session = &mut prepared.session;
    if pids.is_empty() {
        session.attach_existing()?;
    }
    // Inspected again: loading the probes takes a while, and the process may have
    // exec'd or exited meanwhile.
    for &pid in &pids {
        let python = wait_until_traceable(pid).await?;
        session.trace_ready(pid, python)?;
    }
    let started = prepared.started();
    let reason = prepared
        .session
        .run(prepared.ring, options.duration, None)
        .await?;
    tracing::finish(prepared.session, &options, started)?;
    Ok(match reason {
        StopReason::Duration | StopReason::Signal(_) | StopReason::ChildExited(_) => 0,
    })
}

/// Inspects `pid` until it is a Python process ready to be traced. A process between two
/// states (a thread taking the GIL, a runtime still initializing) is retried with the same
/// patience as in system-wide tracing, and for at most [`WALL_PATIENCE`].
async fn wait_until_traceable(pid: u32) -> anyhow::Result<PythonProcess> {
    if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
        bail!("no process with pid {pid}");
    }
    let since = Instant::now();
    let mut patience: Option<Patience> = None;
    loop {
        let why = match PythonProcess::inspect(pid)? {
            Inspection::Ready(python) => return Ok(python),
            Inspection::NotPython => bail!(
                "pid {pid} is not a Python process (no libpython or python runtime in its memory map)"
            ),
            Inspection::NotReady(why) => why,
        };
        match &mut patience {
            None => patience = Some(Patience::new(pid, 1)),
            Some(p) if p.exhausted() || since.elapsed() > WALL_PATIENCE => bail!(
                "pid {pid} is a Python process that is still not traceable after {:.1} s ({why})",
                since.elapsed().as_secs_f64()
            ),
            Some(p) => p.failed_again(1),
        }
        let next = patience
            .as_ref()
            .map_or(Duration::ZERO, Patience::until_next_try);
        tokio::time::sleep(next).await;
    }
}
