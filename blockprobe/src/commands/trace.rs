//! `blockprobe trace`: trace running processes (-p) or every Python process on the host.

use anyhow::bail;
use blockprobe_common::config::Scope;

use crate::{
    cli::TraceOptions,
    commands::tracing,
    preflight,
    python::{Inspection, PythonProcess},
    session::{Attach, StopReason},
};

/// Traces `pids`, or the whole host when empty, until a signal or `--duration`.
pub async fn run(options: TraceOptions, pids: Vec<u32>) -> anyhow::Result<i32> {
    // Without root, inspecting a pid would only say "permission denied": say why first.
    preflight::require_root()?;
    // Bad pids fail before any probe is loaded.
    for &pid in &pids {
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            bail!("no process with pid {pid}");
        }
        match PythonProcess::inspect(pid)? {
            Inspection::Ready(_) => {}
            Inspection::NotPython => bail!(
                "pid {pid} is not a Python process (no libpython or python runtime in its memory map)"
            ),
            Inspection::NotReady(why) => bail!(
                "pid {pid} is a Python process that cannot be traced yet ({why}); try again in a moment"
            ),
        }
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
    for pid in pids {
        match session.attach(pid)? {
            Attach::Attached => {}
            // Checked above; only an exec or exit in between gets here.
            Attach::NotPython | Attach::Waiting => {
                bail!("pid {pid} changed while blockprobe attached to it")
            }
        }
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
