//! A loop that never comes back to its poller (a deadlock, a call that never returns, an
//! endless loop): its stall has no end for the kernel side to report, so blockprobe says
//! live that the loop is stuck, and reports the stall when tracing stops, marked
//! `ongoing`, blamed on where it is stuck.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use blockprobe_tests::{
    Ctx, Proc, Python, Stall, kind, marker_line, nanos, python_matrix, read_json, require_root,
    script, trace_command, unix_now_ns,
};
use nix::sys::signal::Signal;

python_matrix!(
    stuck_loop_is_reported_at_stop,
    spinning_loop_is_reported_at_stop,
    stuck_in_sleep_before_tracing,
    stuck_on_a_lock_before_tracing,
    spinning_before_tracing
);

impl Hang<'_> {
    /// Whether a stall's main cause `cause` is the hang's. A spinning loop (in no
    /// syscall) wants the CPU all along: on a busy host it may wait for it more than it
    /// runs.
    fn cause_fits(&self, cause: &str) -> bool {
        cause == self.cause || (self.syscall.is_none() && cause == "runqueue")
    }

    /// Whether `stall` is this hang's: its cause and syscall, blamed on its function at
    /// `line` of `script`.
    fn blames(&self, stall: &Stall, script: &Path, line: u32) -> bool {
        let culprit_ok = stall.culprit.as_ref().is_some_and(|c| {
            c.function == self.function && c.file == script.to_string_lossy() && c.line == line
        });
        self.cause_fits(&stall.cause) && stall.syscall.as_deref() == self.syscall && culprit_ok
    }
}

/// Stops blockprobe (`bp`) with SIGTERM, checks it exits 0 with clean output, then
/// kills the stuck script `py`.
fn stop_tracing_then_script(ctx: &Ctx, bp: &Proc, py: &Proc) {
    bp.signal(Signal::SIGTERM);
    let status = bp.wait_exit();
    ctx.check_clean(bp);
    ctx.ensure(status.code() == Some(0), || {
        format!("blockprobe trace exited with {status} after SIGTERM, expected 0")
    });
    py.may_exit();
    py.signal(Signal::SIGKILL);
}

/// The stalls of `pid` in blockprobe's live stream (`bp`) and in its report at `report`.
fn live_and_saved(
    ctx: &Ctx,
    bp: &Proc,
    report: &Path,
    pid: u32,
) -> [(&'static str, Vec<Stall>); 2] {
    let saved = read_json(ctx, report)["stalls"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["pid"] == pid)
        .map(|s| serde_json::from_value(s.clone()))
        .collect::<Result<Vec<Stall>, _>>()
        .unwrap_or_else(|err| ctx.fail(format!("report stalls do not match the schema: {err}")));
    [("live stream", bp.stalls(pid)), ("report", saved)]
}

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
    stop_tracing_then_script(&ctx, &bp, &py);
    let stopped = unix_now_ns();

    for (source, stalls) in live_and_saved(&ctx, &bp, &report, pid) {
        ctx.ensure(stalls.len() == 1, || {
            format!("the {source} should hold exactly one stall, has {stalls:#?}")
        });
        let stall = &stalls[0];
        ctx.ensure(
            stall.ongoing && stall.tid == tids[0] && hang.blames(stall, &script, line),
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

/// How long already_stuck.py's loop is stuck before the tracer starts.
const STUCK_BEFORE_TRACING: Duration = Duration::from_secs(10);
/// How soon after the `attached` event the `stuck` event must come: once the loop has
/// been stuck a second since blockprobe attached, and the tracer looks every 100 ms.
const NOTICE_AT_ATTACH: Duration = Duration::from_millis(1500);

/// already_stuck.py's loop sleeping (`sleeper`) on `python`.
fn sleeping(python: &Python) -> Hang<'static> {
    Hang {
        args: &["sleep"],
        function: "sleeper",
        cause: "sleep",
        syscall: Some(python.sleep_syscall()),
    }
}

/// The loop sleeps (`sleeper`) from its first iteration, 10 s before `trace -p`.
fn stuck_in_sleep_before_tracing(python: &Python) {
    check_stuck_before_tracing(python, &sleeping(python), false);
}

/// The loop waits for a `threading.Lock` another thread holds (`waiter`, in futex).
fn stuck_on_a_lock_before_tracing(python: &Python) {
    let hang = Hang {
        args: &["lock"],
        function: "waiter",
        cause: "lock",
        syscall: Some("futex"),
    };
    check_stuck_before_tracing(python, &hang, false);
}

/// The loop runs pure Python (`spinner`, on CPU, in no syscall).
fn spinning_before_tracing(python: &Python) {
    let hang = Hang {
        args: &["spin"],
        function: "spinner",
        cause: "cpu",
        syscall: None,
    };
    check_stuck_before_tracing(python, &hang, false);
}

/// Host-wide `trace` started while a loop sleeps since 10 s finds it as `trace -p` does.
#[test]
fn stuck_before_host_wide_tracing() {
    let python = Python::pyenv("3.11.7");
    check_stuck_before_tracing(&python, &sleeping(&python), true);
}

/// already_stuck.py blocks in its loop's first iteration and stays stuck; 10 s later
/// `blockprobe trace -o FILE` (`-p PID`, or host-wide) starts. About a second after its
/// `attached` event, a `stuck` event names the loop thread, says its time (a second) is
/// a lower bound, and where it is stuck (function, line, syscall); stopped by SIGTERM, the live
/// stream and the report hold one ongoing stall, started before tracing, of the hang's
/// cause and syscall, blamed on its function at its line, lasting no longer than
/// blockprobe ran.
fn check_stuck_before_tracing(python: &Python, hang: &Hang<'_>, host_wide: bool) {
    require_root();
    let ctx = Ctx::new();
    let script = script("already_stuck.py");
    let py = ctx.spawn(
        &format!("already_stuck.py {:?} ({})", hang.args, python.label),
        python.command(&script).args(hang.args),
    );
    let pid = py.pid();
    let tid: u32 = ctx.wait_for("the script's STUCK line", || {
        py.texts()
            .iter()
            .find_map(|t| t.strip_prefix("STUCK ")?.parse().ok())
    });
    std::thread::sleep(STUCK_BEFORE_TRACING);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let report = dir.path().join("report.json");
    let pids = if host_wide { vec![] } else { vec![pid] };
    let started = Instant::now();
    let bp = ctx.spawn(
        "blockprobe trace -o",
        trace_command(&pids).args(["-o", &report.to_string_lossy()]),
    );
    let attached = ctx.wait_for("blockprobe's `attached` event", || {
        (!bp.events_of("attached", pid).is_empty()).then(Instant::now)
    });
    let notice = ctx.wait_for("a live `stuck` event", || {
        bp.events_of("stuck", pid).into_iter().next()
    });
    let noticed = Instant::now();
    let line = marker_line(&script, &format!("BLOCK {}", hang.function));
    ctx.ensure(noticed - attached <= NOTICE_AT_ATTACH, || {
        format!(
            "the stuck event came {:?} after the attached event, expected within {NOTICE_AT_ATTACH:?}",
            noticed - attached
        )
    });
    ctx.ensure(
        notice["tid"] == tid
            && notice["at_least"] == true
            && notice["stuck_ns"].as_u64() >= Some(nanos(FIRST_NOTICE))
            && notice["syscall"].as_str() == hang.syscall
            && notice["culprit"]["function"] == hang.function
            && notice["culprit"]["line"] == line,
        || {
            format!(
                "the stuck event should name the loop thread {tid}, at least {FIRST_NOTICE:?} \
                 (at_least), syscall {:?} and {} at line {line}: {notice}",
                hang.syscall, hang.function
            )
        },
    );
    std::thread::sleep(Duration::from_millis(500));
    let stopping = Instant::now();
    stop_tracing_then_script(&ctx, &bp, &py);
    let ran = started.elapsed();

    for (source, stalls) in live_and_saved(&ctx, &bp, &report, pid) {
        ctx.ensure(stalls.len() == 1, || {
            format!("the {source} should hold exactly one stall of pid {pid}, has {stalls:#?}")
        });
        let stall = &stalls[0];
        ctx.ensure(
            stall.ongoing
                && stall.started_before_tracing
                && stall.tid == tid
                && hang.blames(stall, &script, line),
            || {
                format!(
                    "the {source}'s stall should be ongoing, started before tracing, in the \
                     loop thread {tid}, {} in {:?}, culprit {} at line {line}: {stall:#?}",
                    hang.cause, hang.syscall, hang.function
                )
            },
        );
        let (low, high) = (nanos(stopping - noticed), nanos(ran));
        ctx.ensure((low..=high).contains(&stall.duration_ns), || {
            format!(
                "the {source}'s stall lasted {} ns: blockprobe saw the loop stuck at least \
                 {low} ns, and ran {high} ns: {stall:#?}",
                stall.duration_ns
            )
        });
    }
}
