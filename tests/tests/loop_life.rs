//! A loop's whole life: stalls from its first iteration (under `run` and under a
//! host-wide `trace` started before the process), a new loop per unit of work, uvloop run
//! by hand, a loop stopped between two runs, a loop that blocks in its first iteration
//! after `trace -p` attached, and a stall that ends just before the process exits.
//!
//! No script here waits for the tracer: each blocks when a real program would.

use std::path::Path;

use blockprobe_tests::{
    Blockprobe, Ctx, CtxRef, Frame, Line, Python, Ran, ScriptState, Stall, drive_scenario, kind,
    marker_line, python_matrix, require_root, script,
};

python_matrix!(
    first_sleep_under_run,
    first_cpu_under_run,
    first_pipe_read_under_run,
    first_sleep_host_wide,
    first_cpu_host_wide,
    first_pipe_read_host_wide,
    three_stalls_from_the_first_iteration,
    a_loop_per_unit_of_work,
    a_stopped_loop_is_not_blocked,
    first_iteration_after_attach,
    stall_just_before_exit,
);

/// How far a stall may be from the script's own measurement, as a fraction of it (plus
/// the stall's run-queue time and the host's steal time while the test ran).
const MEASUREMENT_SHARE: f64 = 0.05;

/// What a first-iteration stall of first_block.py looks like for `mode`.
struct FirstBlock {
    mode: &'static str,
    cause: &'static str,
    /// `None`: the interpreter's sleep syscall.
    syscall: Option<Option<&'static str>>,
}

const SLEEP: FirstBlock = FirstBlock {
    mode: "sleep",
    cause: "sleep",
    syscall: None,
};
const CPU: FirstBlock = FirstBlock {
    mode: "cpu",
    cause: "cpu",
    syscall: Some(None),
};
const PIPE: FirstBlock = FirstBlock {
    mode: "pipe",
    cause: "io",
    syscall: Some(Some("read")),
};

fn first_sleep_under_run(python: &Python) {
    first_block_under_run(python, &SLEEP);
}

fn first_cpu_under_run(python: &Python) {
    first_block_under_run(python, &CPU);
}

fn first_pipe_read_under_run(python: &Python) {
    first_block_under_run(python, &PIPE);
}

fn first_sleep_host_wide(python: &Python) {
    first_block_host_wide(python, &SLEEP);
}

fn first_cpu_host_wide(python: &Python) {
    first_block_host_wide(python, &CPU);
}

fn first_pipe_read_host_wide(python: &Python) {
    first_block_host_wide(python, &PIPE);
}

/// first_block.py `mode` under `blockprobe run`: its one stall, from the loop's first
/// iteration.
fn first_block_under_run(python: &Python, block: &FirstBlock) {
    require_root();
    let name = "first_block.py";
    let mut cmd = Blockprobe::run(python, &script(name), &[block.mode], &[]);
    let ran = drive_scenario(python, name, &mut cmd, 1);
    ran.expect_success();
    let stalls = scripts_stalls(&ran.stalls(), &ran.script);
    ran.ctx.ensure(stalls.len() == 1, || {
        format!("expected exactly one stall: {stalls:#?}")
    });
    let measured = ran.ctx.measured(&ran.state, "handler");
    check_first_block(&ran.ctx, python, &stalls[0], block, measured);
}

/// first_block.py `mode` started after a host-wide `blockprobe trace`: the process is
/// found by its loop's first poll, and that iteration's stall is reported.
fn first_block_host_wide(python: &Python, block: &FirstBlock) {
    require_root();
    let ctx = Ctx::new();
    let bp = ctx.spawn_trace_host();
    let name = "first_block.py";
    let mut cmd = python.command_at_once(&script(name));
    cmd.arg(block.mode);
    let py = ctx.spawn(name, &mut cmd);
    let state = ctx.wait_finished(&py);
    let _ = ctx.wait_stalls(&bp, py.pid(), 1);
    ctx.quit_script(&py);
    ctx.stop_trace(&bp);
    let stalls = scripts_stalls(&bp.stalls(py.pid()), &script(name));
    ctx.ensure(stalls.len() == 1, || {
        format!("expected exactly one stall: {stalls:#?}")
    });
    let measured = ctx.measured(&state, "handler");
    check_first_block(&ctx, python, &stalls[0], block, measured);
}

/// Checks first_block.py's stall: as long as the script measured (± 5%), its cause and
/// syscall, its culprit on the marked line, and its stack.
#[track_caller]
fn check_first_block(
    ctx: &CtxRef,
    python: &Python,
    stall: &Stall,
    block: &FirstBlock,
    measured: u64,
) {
    let script = script("first_block.py");
    check_duration(ctx, stall, measured);
    // A spinning thread that shares its CPU with others' work waits for it too.
    let cause_ok = stall.cause == block.cause || (block.mode == "cpu" && stall.cause == "runqueue");
    ctx.ensure(cause_ok, || {
        format!(
            "cause {:?}, expected {:?}: {stall:#?}",
            stall.cause, block.cause
        )
    });
    let syscall = block.syscall.unwrap_or(Some(python.sleep_syscall()));
    ctx.ensure(stall.syscall.as_deref() == syscall, || {
        format!(
            "syscall {:?}, expected {syscall:?}: {stall:#?}",
            stall.syscall
        )
    });
    let line = marker_line(&script, &format!("BLOCK {}", block.mode));
    let culprit = Frame::new("handler", &script, line);
    let at_block = |f: &Frame| {
        // A spin's samples land on the loop's condition or its body.
        f.function == "handler" && f.file == culprit.file && (line..=line + 1).contains(&f.line)
    };
    ctx.ensure(stall.culprit.as_ref().is_some_and(at_block), || {
        format!("culprit is not {culprit:?}: {stall:#?}")
    });
    ctx.ensure(stall.stack.first().is_some_and(at_block), || {
        format!("innermost frame is not {culprit:?}: {stall:#?}")
    });
    let caller = Frame::new("scenario", &script, marker_line(&script, "CALL scenario"));
    ctx.ensure(stall.stack.get(1) == Some(&caller), || {
        format!("the second frame is not {caller:?}: {stall:#?}")
    });
}

/// Checks that `stall` lasted what the script measured (`measured` ns), ± 5%.
#[track_caller]
fn check_duration(ctx: &CtxRef, stall: &Stall, measured: u64) {
    let slack = (measured as f64 * MEASUREMENT_SHARE) as u64;
    let low = measured - slack;
    let high = measured + slack + stall.runqueue_ns() + ctx.stolen_ns();
    ctx.ensure((low..=high).contains(&stall.duration_ns), || {
        format!(
            "stall lasted {} ns; the script measured {measured} ns, so it must be within \
             [{low}, {high}] ns: {stall:#?}",
            stall.duration_ns
        )
    });
}

/// The stalls of `stalls` that are the script's: all but those the host's CPU contention
/// alone made (see [`Stall::made_by_contention`]).
fn scripts_stalls(stalls: &[Stall], script: &Path) -> Vec<Stall> {
    (stalls.iter())
        .filter(|s| !s.made_by_contention(script))
        .cloned()
        .collect()
}

/// Checks `stalls` against the script's measurements `names`, in order, each blamed on
/// `function` at its `# BLOCK function` line of `script` (see [`scripts_stalls`]).
#[track_caller]
fn check_measured_stalls(
    ctx: &CtxRef,
    stalls: &[Stall],
    state: &ScriptState,
    names: &[&str],
    script: &Path,
    function: &str,
) {
    let stalls = scripts_stalls(stalls, script);
    ctx.ensure(stalls.len() == names.len(), || {
        format!("expected exactly {} stalls: {stalls:#?}", names.len())
    });
    let culprit = Frame::new(
        function,
        script,
        marker_line(script, &format!("BLOCK {function}")),
    );
    for (stall, name) in stalls.iter().zip(names) {
        check_duration(ctx, stall, ctx.measured(state, name));
        ctx.ensure(stall.culprit.as_ref() == Some(&culprit), || {
            format!("culprit is not {culprit:?}: {stall:#?}")
        });
        ctx.ensure(stall.stack.first() == Some(&culprit), || {
            format!("innermost frame is not {culprit:?}: {stall:#?}")
        });
    }
}

/// The first example: `asyncio.run(main())`, `main` sleeping 0.11, 0.22 and
/// 0.33 s with `await asyncio.sleep(0.1)` between: all three stalls. A uvloop loop runs
/// its first callbacks before its first poll, so its first iteration is seen only when
/// blockprobe attached before the loop began running (its `attached` event before the
/// script's `RUN main` line); attached later, the first stall may be missing (a limit
/// the README states), and the other two must be there. An asyncio loop polls first:
/// all three, always.
fn three_stalls_from_the_first_iteration(python: &Python) {
    require_root();
    let (name, function) = ("first_steps.py", "main");
    let all = ["step1", "step2", "step3"];
    let least = if python.runs_uvloop() { 2 } else { 3 };
    let mut cmd = Blockprobe::run(python, &script(name), &[], &[]);
    let ran = drive_scenario(python, name, &mut cmd, least);
    ran.expect_success();
    let stalls = ran.stalls();
    let seen_all = scripts_stalls(&stalls, &ran.script).len() == all.len();
    let names = if least == all.len() || attached_before_run(&ran) || seen_all {
        &all[..]
    } else {
        eprintln!("attached after the loop began running: its first iteration was not seen");
        &all[1..]
    };
    check_measured_stalls(&ran.ctx, &stalls, &ran.state, names, &ran.script, function);
}

/// Whether blockprobe said its process was attached before the script's `RUN main`.
fn attached_before_run(ran: &Ran) -> bool {
    let attached = |line: &Line| matches!(line, Line::Event(e, _) if kind(e) == "attached");
    let run = |line: &Line| matches!(line, Line::Text(t) if t == "RUN main");
    let lines = ran.bp.lines();
    match (lines.iter().position(attached), lines.iter().position(run)) {
        (Some(attached), Some(run)) => attached < run,
        _ => false,
    }
}

/// `asyncio.run` five times in one process, each unit blocking at once: five stalls.
fn a_loop_per_unit_of_work(python: &Python) {
    let units = ["unit0", "unit1", "unit2", "unit3", "unit4"];
    run_and_check(python, "loop_per_unit.py", &units, "unit");
}

/// One loop run three times with `run_until_complete`, sync work between the runs and
/// 2.2 s of it after the last: the one stall inside a run only, and no stuck notice.
fn a_stopped_loop_is_not_blocked(python: &Python) {
    let ran = run_and_check(python, "loop_runs.py", &["work"], "work");
    let stuck = ran.bp.events_of("stuck", ran.pid);
    ran.ctx.ensure(stuck.is_empty(), || {
        format!("a stopped loop was said to be stuck: {stuck:#?}")
    });
}

/// Runs script `name` under `blockprobe run`, the script blocking when it likes, and
/// checks its stalls against its measurements `names`, each blamed on `function`.
fn run_and_check(python: &Python, name: &str, names: &[&str], function: &str) -> Ran {
    require_root();
    let mut cmd = Blockprobe::run(python, &script(name), &[], &[]);
    let ran = drive_scenario(python, name, &mut cmd, names.len());
    ran.expect_success();
    check_measured_stalls(
        &ran.ctx,
        &ran.stalls(),
        &ran.state,
        names,
        &ran.script,
        function,
    );
    ran
}

/// `trace -p` on an idle loop parked in its poller; the iteration right after the attach
/// blocks: that stall is reported.
fn first_iteration_after_attach(python: &Python) {
    require_root();
    let ctx = Ctx::new();
    let name = "idle_then_block.py";
    let py = ctx.spawn(name, &mut python.command_at_once(&script(name)));
    let _ = ctx.wait_ready(&py);
    let pid = py.pid();
    let bp = ctx.spawn("blockprobe trace -p", &mut Blockprobe::trace(&[pid]));
    ctx.wait_for("blockprobe's `attached` event", || {
        bp.events().into_iter().find(|e| kind(e) == "attached")
    });
    py.send("BLOCK");
    let state = ctx.wait_finished(&py);
    let stalls = ctx.wait_stalls(&bp, pid, 1);
    ctx.quit_script(&py);
    ctx.stop_trace(&bp);
    check_measured_stalls(
        &ctx,
        &stalls,
        &state,
        &["on_stdin"],
        &script(name),
        "on_stdin",
    );
}

/// The last callback blocks, then the process calls `os._exit` as soon as its loop is
/// back: the stall is reported with its stack.
fn stall_just_before_exit(python: &Python) {
    require_root();
    let ctx = Ctx::new();
    let name = "stall_before_exit.py";
    let mut cmd = Blockprobe::run(python, &script(name), &[], &[]);
    let bp = ctx.spawn(name, &mut cmd);
    bp.may_exit();
    let status = bp.wait_exit();
    ctx.check_clean(&bp);
    ctx.ensure(status.code() == Some(0), || {
        format!("blockprobe run exited with {status}, expected 0")
    });
    let state = bp.script_state();
    let pid = state
        .pid
        .unwrap_or_else(|| ctx.fail("the script printed no READY"));
    check_measured_stalls(
        &ctx,
        &bp.stalls(pid),
        &state,
        &["last_callback"],
        &script(name),
        "last_callback",
    );
}

/// uvloop run by hand (`uvloop.new_event_loop()`, `run_until_complete`), which has no
/// Python frame of its own: stalls from the first iteration, and a stopped loop is not
/// blocked.
mod uvloop {
    use blockprobe_tests::Python;

    #[test]
    fn three_stalls_from_the_first_iteration_3_11() {
        super::three_stalls_from_the_first_iteration(
            &Python::pyenv("3.11.7").with_uvloop_by_hand(),
        );
    }

    #[test]
    fn three_stalls_from_the_first_iteration_3_13() {
        super::three_stalls_from_the_first_iteration(
            &Python::pyenv("3.13.0").with_uvloop_by_hand(),
        );
    }

    #[test]
    fn a_stopped_loop_is_not_blocked_3_11() {
        super::a_stopped_loop_is_not_blocked(&Python::pyenv("3.11.7").with_uvloop_by_hand());
    }

    #[test]
    fn a_stopped_loop_is_not_blocked_3_13() {
        super::a_stopped_loop_is_not_blocked(&Python::pyenv("3.13.0").with_uvloop_by_hand());
    }
}
