//! A loop that never comes back to its poller (a deadlock, a call that never returns):
//! its stall has no end for the kernel side to report, so blockprobe reports it when
//! tracing stops, marked `ongoing`, blamed on the call it is stuck in.

use std::time::Duration;

use blockprobe_tests::{
    Ctx, Python, marker_line, nanos, python_matrix, read_json, require_root, script, trace_command,
    unix_now_ns,
};
use nix::sys::signal::Signal;

python_matrix!(stuck_loop_is_reported_at_stop);

/// How long the script's loop has been stuck when it prints STUCK.
const STUCK_FOR: Duration = Duration::from_millis(300);

/// `trace -p PID -o FILE` stopped by SIGTERM while the loop sleeps its 30 s: the live
/// stream and the report hold one ongoing `sleep` stall, culprit `handler` at its sleep,
/// as long as the loop had been stuck.
fn stuck_loop_is_reported_at_stop(python: &Python) {
    require_root();
    let ctx = Ctx::new();
    let script = script("stuck_loop.py");
    let py = ctx.spawn(
        &format!("stuck_loop.py ({})", python.label),
        &mut python.command(&script),
    );
    let ready = ctx.wait_ready(&py);
    let pid = py.pid();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let report = dir.path().join("report.json");
    let bp = ctx.spawn(
        "blockprobe trace -p -o",
        trace_command(&[pid]).args(["-o", &report.to_string_lossy()]),
    );
    let tids: Vec<u32> = ready.loops.iter().map(|(_, t)| *t).collect();
    ctx.wait_loops_live(&bp, pid, &tids);
    let go = unix_now_ns();
    py.send("GO");
    ctx.wait_for("the script's STUCK line", || {
        py.texts().iter().any(|t| t == "STUCK").then_some(())
    });
    bp.signal(Signal::SIGTERM);
    let status = bp.wait_exit();
    let stopped = unix_now_ns();
    ctx.check_clean(&bp);
    ctx.ensure(status.code() == Some(0), || {
        format!("blockprobe trace exited with {status} after SIGTERM, expected 0")
    });
    py.may_exit();
    py.signal(Signal::SIGKILL);

    let live = bp.stalls(pid);
    let report = read_json(&ctx, &report);
    let saved: Vec<blockprobe_tests::Stall> = serde_json::from_value(report["stalls"].clone())
        .unwrap_or_else(|err| ctx.fail(format!("report stalls do not match the schema: {err}")));
    for (source, stalls) in [("live stream", live), ("report", saved)] {
        ctx.ensure(stalls.len() == 1, || {
            format!("the {source} should hold exactly one stall, has {stalls:#?}")
        });
        let stall = &stalls[0];
        let line = marker_line(&script, "BLOCK handler");
        let culprit_ok = stall.culprit.as_ref().is_some_and(|c| {
            c.function == "handler" && c.file == script.to_string_lossy() && c.line == line
        });
        ctx.ensure(
            stall.ongoing
                && stall.tid == tids[0]
                && stall.cause == "sleep"
                && stall.syscall.as_deref() == Some(python.sleep_syscall())
                && culprit_ok,
            || {
                format!(
                    "the {source}'s stall should be ongoing, in the loop thread {}, sleep in \
                     {}, culprit handler at line {line}: {stall:#?}",
                    tids[0],
                    python.sleep_syscall()
                )
            },
        );
        let (low, high) = (nanos(STUCK_FOR), stopped - go);
        ctx.ensure((low..=high).contains(&stall.duration_ns), || {
            format!(
                "the {source}'s stall lasted {} ns: the loop was stuck at least {low} ns, \
                 and at most the {high} ns from GO to blockprobe's exit: {stall:#?}",
                stall.duration_ns
            )
        });
    }
}
