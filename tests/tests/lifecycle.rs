//! blockprobe's own life: exit codes under `run`, the report file written at exit (also on
//! SIGTERM), and `blockprobe report`.

use std::path::Path;
use std::time::Duration;

use blockprobe_tests::{
    ABOVE, BELOW, Blockprobe, Ctx, CtxRef, Python, Scenario, ScriptState, Stall, nanos,
    python_matrix, read_json, require_root, run_scenario, run_sleep_scenario, script,
};
use nix::sys::signal::Signal;
use serde_json::Value;

python_matrix!(run_propagates_exit_code, sigterm_writes_report, report_file);

/// (h) The traced script exits 3: so does `blockprobe run`, after a `detached` event.
fn run_propagates_exit_code(python: &Python) {
    let ran = run_scenario(&Scenario {
        python,
        script: "idle.py",
        script_args: &["--exit-code", "3"],
        blockprobe_args: &[],
        stalls: 0,
    });
    ran.ctx.ensure(ran.status.code() == Some(3), || {
        format!(
            "blockprobe run exited with {}, the script with 3",
            ran.status
        )
    });
    let stalls = ran.stalls();
    ran.ctx.ensure(stalls.is_empty(), || {
        format!("an idle loop stalled: {stalls:#?}")
    });
    let detached = ran.bp.events_of("detached", ran.pid);
    ran.ctx.ensure(
        detached.len() == 1 && detached[0]["reason"] == "exit",
        || format!("expected one `detached` event with reason \"exit\", got {detached:?}"),
    );
}

/// `run` propagates a non-Python command's exit code too.
#[test]
fn run_propagates_exit_code_of_any_command() {
    require_root();
    let ctx = Ctx::new();
    let (status, _, stderr) = Blockprobe::new(["run", "--", "sh", "-c", "exit 7"])
        .output(&ctx, "blockprobe run -- sh -c 'exit 7'");
    ctx.ensure(status.code() == Some(7), || {
        format!("blockprobe run exited with {status}, the command with 7")
    });
    ctx.ensure(!stderr.contains("panicked"), || {
        "blockprobe panicked".into()
    });
}

/// (i) SIGTERM to `blockprobe run -o report.json` while the script still runs: blockprobe
/// forwards it to the script, which dies of it, and exits with the script's status as a
/// shell gives it (128 + 15); the report is written, and holds the process, the stall
/// that already happened and `handler`'s histogram.
fn sigterm_writes_report(python: &Python) {
    require_root();
    let ctx = Ctx::new();
    let dir = tempfile::tempdir().expect("temporary directory");
    let report = dir.path().join("report.json");
    let script = script("sleep_in_coroutine.py");
    let bp = ctx.spawn(
        &format!("blockprobe run -o ({})", python.label),
        &mut Blockprobe::run(python, &script, &[], &["-o", &report.to_string_lossy()]).steady(),
    );
    let (_, pid) = ctx.wait_live(&bp, "sleep_in_coroutine.py");
    bp.send("GO");
    let state = ctx.wait_finished(&bp);
    let live = ctx.wait_stalls(&bp, pid, 1);

    bp.may_exit();
    bp.signal(Signal::SIGTERM);
    ctx.wait_for("blockprobe to exit after SIGTERM", || bp.exited());
    // Now let the script go (end of its stdin; QUIT could hit a closed pipe if blockprobe
    // took the script down with it), so that blockprobe's stdout reaches its end.
    bp.close_stdin();
    let status = bp.wait_exit();
    ctx.check_clean(&bp);
    ctx.ensure(status.code() == Some(128 + Signal::SIGTERM as i32), || {
        format!(
            "blockprobe run exited with {status}; the script died of the forwarded SIGTERM, \
             so expected exit code {}",
            128 + Signal::SIGTERM as i32
        )
    });
    check_complete_report(&ctx, &report, &state, &live, python, &script);
}

/// SIGTERM to `blockprobe trace -p PID -o report.json` after a stall: exit code 0 and a
/// complete report (header, process, the stall, `handler`'s histogram).
#[test]
fn sigterm_ends_trace_with_a_complete_report() {
    signal_ends_trace_with_a_complete_report(Signal::SIGTERM);
}

/// SIGINT (Ctrl-C) to `blockprobe trace -p PID -o report.json` after a stall: as SIGTERM.
#[test]
fn sigint_ends_trace_with_a_complete_report() {
    signal_ends_trace_with_a_complete_report(Signal::SIGINT);
}

fn signal_ends_trace_with_a_complete_report(signal: Signal) {
    require_root();
    let ctx = Ctx::new();
    let python = Python::pyenv("3.11.7");
    let dir = tempfile::tempdir().expect("temporary directory");
    let report = dir.path().join("report.json");
    let script = script("sleep_in_coroutine.py");
    let target = ctx.spawn("sleep_in_coroutine.py", &mut python.command(&script));
    let ready = ctx.wait_ready(&target);
    let pid = target.pid();
    let bp = ctx.spawn(
        &format!("blockprobe trace -p -o (ended by {signal})"),
        Blockprobe::trace(&[pid]).arg("-o").arg(&report),
    );
    let tids: Vec<u32> = ready.loops.iter().map(|(_, t)| *t).collect();
    ctx.wait_loops_live(&bp, pid, &tids);
    target.send("GO");
    let state = ctx.wait_finished(&target);
    let live = ctx.wait_stalls(&bp, pid, 1);
    // The target still runs: the signal, not its exit, ends tracing.
    ctx.stop_trace_with(&bp, signal);
    check_complete_report(&ctx, &report, &state, &live, &python, &script);
    ctx.quit_script(&target);
}

/// Checks the report blockprobe wrote at `path` when a signal stopped it while it traced
/// sleep_in_coroutine.py (`script`, which said `state`): its header and process, exactly
/// the one stall seen live, and `handler`'s `functions` entry with its histogram.
fn check_complete_report(
    ctx: &CtxRef,
    path: &Path,
    state: &ScriptState,
    live: &[Stall],
    python: &Python,
    script: &Path,
) {
    let report = read_json(ctx, path);
    let pid = state.pid.expect("the script said READY");
    let tids: Vec<u32> = state.loops.iter().map(|(_, t)| *t).collect();
    check_report_header(ctx, &report, pid, &tids, python);
    let stalls = report_stalls(ctx, &report, pid);
    ctx.ensure(
        stalls.len() == 1
            && stalls[0].start_unix_ns == live[0].start_unix_ns
            && stalls[0].duration_ns == live[0].duration_ns
            && stalls[0].culprit == live[0].culprit,
        || {
            format!(
                "the report should hold the live stall {:#?}, has {stalls:#?}",
                live[0]
            )
        },
    );
    check_handler_function(ctx, &report, script, ctx.measured(state, "handler"));
}

/// (j) The report of scenario (a) via `-o`: a `functions` entry for `handler` (count 1,
/// total ≈ the measured sleep); `blockprobe report FILE` renders it as text and as JSON.
fn report_file(python: &Python) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("report.json");
    let path_arg = path.to_string_lossy().into_owned();
    let (ran, stall) = run_sleep_scenario(
        &Scenario {
            python,
            script: "sleep_in_coroutine.py",
            script_args: &[],
            blockprobe_args: &["-o", &path_arg],
            stalls: 1,
        },
        "handler",
        Duration::from_millis(200),
    );
    let ctx = &ran.ctx;
    let report = read_json(ctx, &path);
    let tids = [ran.pid];
    check_report_header(ctx, &report, ran.pid, &tids, python);
    let stalls = report_stalls(ctx, &report, ran.pid);
    ctx.ensure(
        stalls.len() == 1 && stalls[0].duration_ns == stall.duration_ns,
        || format!("the report's stalls should be the live one, {stall:#?}, got {stalls:#?}"),
    );
    check_handler_function(ctx, &report, &ran.script, ran.measured("handler"));

    let (status, text, stderr) =
        Blockprobe::new(["report", &path_arg]).output(ctx, "blockprobe report");
    ctx.ensure(status.success() && text.contains("handler"), || {
        format!("`blockprobe report` exited {status}, stdout:\n{text}\nstderr:\n{stderr}")
    });
    let (status, json, stderr) = Blockprobe::new(["report", &path_arg, "--format", "json"])
        .output(ctx, "blockprobe report --format json");
    let rendered: Value = serde_json::from_str(&json).unwrap_or_else(|err| {
        ctx.fail(format!(
            "`blockprobe report --format json` ({status}) is not JSON ({err}):\n{json}\n{stderr}"
        ))
    });
    ctx.ensure(
        status.success()
            && rendered["schema"] == "blockprobe.report/v1"
            && rendered["stalls"] == report["stalls"]
            && rendered["functions"] == report["functions"],
        || format!("`blockprobe report --format json` should render the file: {rendered}"),
    );
}

fn check_report_header(ctx: &CtxRef, report: &Value, pid: u32, tids: &[u32], python: &Python) {
    ctx.ensure(report["schema"] == "blockprobe.report/v1", || {
        format!(
            "report schema is {}, expected \"blockprobe.report/v1\"",
            report["schema"]
        )
    });
    ctx.ensure(report["threshold_ns"] == 10_000_000, || {
        format!(
            "report threshold_ns is {}, expected 10000000",
            report["threshold_ns"]
        )
    });
    ctx.ensure(report["lost_events"] == 0, || {
        format!("report lost_events is {}", report["lost_events"])
    });
    ctx.ensure(
        report["host"].is_string() && report["duration_ns"].as_u64().is_some_and(|d| d > 0),
        || format!("report host / duration_ns missing: {report}"),
    );
    let process = report["processes"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["pid"] == pid))
        .unwrap_or_else(|| ctx.fail(format!("the report lists no process {pid}: {report}")));
    let version = python.version();
    let loop_threads: Vec<u64> = process["loop_threads"]
        .as_array()
        .map(|ts| ts.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    ctx.ensure(
        process["comm"] == python.comm().as_str()
            && process["python_version"] == version.as_str()
            && tids.iter().all(|t| loop_threads.contains(&u64::from(*t))),
        || {
            format!(
                "report process should be comm {:?}, python {version:?}, loop threads \
                 {tids:?}: {process}",
                python.comm()
            )
        },
    );
}

fn report_stalls(ctx: &CtxRef, report: &Value, pid: u32) -> Vec<Stall> {
    let stalls: Vec<Stall> = serde_json::from_value(report["stalls"].clone())
        .unwrap_or_else(|err| ctx.fail(format!("report stalls do not match the schema: {err}")));
    stalls.into_iter().filter(|s| s.pid == pid).collect()
}

fn check_handler_function(ctx: &CtxRef, report: &Value, script: &Path, measured: u64) {
    let file = script.to_string_lossy();
    let entry = report["functions"]
        .as_array()
        .and_then(|fs| {
            fs.iter()
                .find(|f| f["function"] == "handler" && f["file"] == file.as_ref())
        })
        .unwrap_or_else(|| {
            ctx.fail(format!(
                "the report has no `functions` entry for handler in {file}: {}",
                report["functions"]
            ))
        });
    let total = entry["total_ns"].as_u64().unwrap_or(0);
    // As for any stall, its run-queue time may come on top (a loaded host).
    let runqueue = entry["causes"]["runqueue"].as_u64().unwrap_or(0);
    let high = measured + nanos(ABOVE) + runqueue + ctx.stolen_ns();
    let (low, high) = (measured - nanos(BELOW), high);
    ctx.ensure(
        entry["count"] == 1 && (low..=high).contains(&total) && entry["max_ns"] == total,
        || {
            format!(
                "handler's entry should have count 1 and total = max within [{low}, {high}] \
                 ns: {entry}"
            )
        },
    );
    // Some bucket covers the stall.
    let covered = entry["buckets"].as_array().is_some_and(|bs| {
        bs.iter().any(|b| {
            b["le_ns"].as_u64().is_some_and(|le| le >= total)
                && b["count"].as_u64().is_some_and(|c| c >= 1)
        })
    });
    ctx.ensure(covered, || {
        format!("no histogram bucket holds the stall: {entry}")
    });
}
