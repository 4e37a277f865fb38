//! A loop that never comes back to its poller (a deadlock, a call that never returns, an
//! endless loop): its stall has no end for the kernel side to report, so blockprobe says
//! live that the loop is stuck, and reports the stall when tracing stops, marked
//! `ongoing`, blamed on where it is stuck.

use std::time::Duration;

use blockprobe_tests::{
    Ctx, Python, kind, marker_line, nanos, python_matrix, read_json, require_root, script,
    trace_command, unix_now_ns,
};
use nix::sys::signal::Signal;

python_matrix!(
    stuck_loop_is_reported_at_stop,
    spinning_loop_is_reported_at_stop
);

/// The first `stuck` event comes after this long.
const FIRST_NOTICE: Duration = Duration::from_secs(1);

/// Where a hang is, and what kind it is.
struct Hang<'a> {
    /// Options of stuck_loop.py.
    args: &'a [&'a str],
    /// The culprit, at its `# BLOCK <function>` line.
    function: &'a str,
    cause: &'a str,
    /// `None`: not in a syscall (running Python).
    syscall: Option<&'a str>,
}

/// The loop sleeps its 30 s (`handler`, in the sleep syscall).
fn stuck_loop_is_reported_at_stop(python: &Python) {
    check_hang(
        python,
        &Hang {
            args: &[],
            function: "handler",
            cause: "sleep",
            syscall: Some(python.sleep_syscall()),
        },
    );
}

/// The loop runs pure Python for ever (`spin_forever`, on CPU: the culprit comes from
/// the timer samples).
fn spinning_loop_is_reported_at_stop(python: &Python) {
    check_hang(
        python,
        &Hang {
            args: &["--spin"],
            function: "spin_forever",
            cause: "cpu",
            syscall: None,
        },
    );
}

/// `trace -p PID -o FILE` on stuck_loop.py: after a second, a live `stuck` event says
/// where the loop is stuck; stopped by SIGTERM, the live stream and the report hold one
/// ongoing stall of the hang's cause and syscall, blamed on its function at its line, as
/// long as the loop had been stuck.
fn check_hang(python: &Python, hang: &Hang<'_>) {
    require_root();
    let ctx = Ctx::new();
    let script = script("stuck_loop.py");
    let py = ctx.spawn(
        &format!("stuck_loop.py {:?} ({})", hang.args, python.label),
        python.command(&script).args(hang.args),
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
    let line = marker_line(&script, &format!("BLOCK {}", hang.function));
    let notice = ctx.wait_for("a live `stuck` event", || {
        bp.events().into_iter().find(|e| kind(e) == "stuck")
    });
    ctx.ensure(
        notice["pid"] == pid
            && notice["tid"] == tids[0]
            && notice["stuck_ns"].as_u64() >= Some(nanos(FIRST_NOTICE))
            && notice["syscall"].as_str() == hang.syscall
            && notice["culprit"]["function"] == hang.function
            && notice["culprit"]["line"] == line,
        || {
            format!(
                "the stuck event should name the loop thread {}, at least {FIRST_NOTICE:?}, \
                 syscall {:?} and {} at line {line}: {notice}",
                tids[0], hang.syscall, hang.function
            )
        },
    );
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
        let culprit_ok = stall.culprit.as_ref().is_some_and(|c| {
            c.function == hang.function && c.file == script.to_string_lossy() && c.line == line
        });
        ctx.ensure(
            stall.ongoing
                && stall.tid == tids[0]
                && stall.cause == hang.cause
                && stall.syscall.as_deref() == hang.syscall
                && culprit_ok,
            || {
                format!(
                    "the {source}'s stall should be ongoing, in the loop thread {}, {} in \
                     {:?}, culprit {} at line {line}: {stall:#?}",
                    tids[0], hang.cause, hang.syscall, hang.function
                )
            },
        );
        let (low, high) = (nanos(FIRST_NOTICE), stopped - go);
        ctx.ensure((low..=high).contains(&stall.duration_ns), || {
            format!(
                "the {source}'s stall lasted {} ns: the loop was stuck at least {low} ns, \
                 and at most the {high} ns from GO to blockprobe's exit: {stall:#?}",
                stall.duration_ns
            )
        });
    }
}
