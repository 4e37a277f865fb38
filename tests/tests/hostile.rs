//! A target that corrupts its own frames and code objects, or recurses deeper than the
//! walk: blockprobe survives it, counts what it could not read, and marks what it cut.

use std::time::{Duration, Instant};

use blockprobe_tests::{
    ABOVE, BELOW, Blockprobe, Ctx, CtxRef, Frame, Proc, Python, Scenario, ScriptState, Stall,
    marker_line, nanos, python_matrix, read_json, require_root, run_sleep_scenario, script,
    unix_now_ns,
};
use nix::sys::signal::Signal;

python_matrix!(
    deep_recursion_is_truncated_and_marked,
    deep_recursion_blocking_before_its_process_is_traced,
    memory_that_never_answers_freezes_nothing,
    memory_that_never_answers_at_attach_freezes_nothing,
);

/// How many frames blockprobe walks (`blockprobe_common::stack::MAX_FRAMES`).
const WALK_DEPTH: usize = 127;

/// hostile_frames.py breaks, with ctypes, what blockprobe reads while it blocks: a code
/// object's name, a frame's link to its caller (to unmapped memory, then to the frame
/// itself). blockprobe neither hangs nor crashes, reports each stall with its right
/// duration and cause, and marks what it could not read: an unreadable code object is an
/// `<unreadable>` frame (the rest of the stack intact), a cut walk ends in `<unreadable>`,
/// a cycle is walked 127 frames deep and ends in `<truncated>`; the frames it could not
/// read are counted (`lost`, kind `unreadable_frame`), and nothing else is lost. The
/// process survives.
#[test]
fn corrupted_frames_and_code_are_survived() {
    require_root();
    let ctx = Ctx::new();
    let python = Python::pyenv("3.11.7");
    let script_path = script("hostile_frames.py");
    let bp = ctx.spawn(
        "blockprobe run hostile_frames.py",
        &mut Blockprobe::run(&python, &script_path, &[], &[]).steady(),
    );
    let (_, pid) = ctx.wait_live(&bp, "hostile_frames.py");
    let go = unix_now_ns();
    bp.send("GO");
    // The code object's name stays broken until the test has its stall.
    ctx.wait_for("the first stall and `DONE nameless`", || {
        let measured = bp.script_state().measured("nameless").is_some();
        (measured && !bp.stalls(pid).is_empty()).then_some(())
    });
    bp.send("RESTORE");
    ctx.wait_finished(&bp);
    ctx.wait_stalls(&bp, pid, 3);
    let seen = unix_now_ns();
    let status = ctx.quit_counting_losses(&bp);
    ctx.ensure(status.code() == Some(0), || {
        format!("blockprobe run exited with {status}: the hostile script should survive")
    });
    let unreadable = bp.lost("unreadable_frame");
    let all_lost = bp.lost_total();
    ctx.ensure(unreadable >= 2 && all_lost == unreadable, || {
        format!(
            "the unreadable code object and the cut walk should be counted as \
             unreadable_frame (counted {unreadable}), and be all that is lost ({all_lost})"
        )
    });

    let stalls = bp.stalls(pid);
    ctx.ensure(stalls.len() == 3, || {
        format!("expected three stalls, got {stalls:#?}")
    });
    let state = bp.script_state();
    let expect = |function: &'static str| {
        ctx.expect_sleep(
            &script_path,
            function,
            python.sleep_syscall(),
            &state,
            Duration::from_millis(100),
            (go, seen),
        )
    };
    // 1. Unreadable name: the frame is `<unreadable>`, and so is the culprit (the caller
    //    did not block; the function that did cannot be named); the walk goes on.
    let nameless = &stalls[0];
    let measured = expect("nameless").measured_ns;
    let high = measured + nanos(ABOVE) + ctx.stolen_ns();
    let (low, high) = (measured - nanos(BELOW), high);
    let unreadable_code = marker("<unreadable>", "<unknown>");
    let caller = Frame::new(
        "scenario",
        &script_path,
        marker_line(&script_path, "CALL nameless"),
    );
    ctx.ensure(
        (low..=high).contains(&nameless.duration_ns)
            && nameless.cause == "sleep"
            && nameless.stack.len() > 2
            && nameless.stack[0] == unreadable_code
            && nameless.stack[1] == caller
            && nameless.culprit.as_ref() == Some(&unreadable_code)
            && nameless
                .stack
                .last()
                .is_some_and(|f| f.function == "<module>"),
        || {
            format!(
                "the first stall should last [{low}, {high}] ns, be `sleep`, and its stack \
                 start with {unreadable_code:?} (also the culprit), then {caller:?}, and go on \
                 to <module>: {nameless:#?}"
            )
        },
    );

    // 2. A frame whose caller link points to unmapped memory: the walk stops there.
    let cut = &stalls[1];
    ctx.check_stall(cut, &expect("cut_victim"));
    let victim = cut.stack[0].clone();
    ctx.ensure(cut.stack == [victim, marker("<unreadable>", "")], || {
        format!("the cut stack should be the victim, then <unreadable>: {cut:#?}")
    });

    // 3. A frame that is its own caller: the walk is bounded.
    let cycle = &stalls[2];
    ctx.check_stall(cycle, &expect("cycle_victim"));
    let victim = &cycle.stack[0];
    ctx.ensure(
        cycle.stack.len() == WALK_DEPTH + 1
            && cycle.stack[..WALK_DEPTH].iter().all(|f| f == victim)
            && cycle.stack[WALK_DEPTH] == marker("<truncated>", ""),
        || {
            format!(
                "the cyclic stack should be the victim {WALK_DEPTH} times, then <truncated>; \
                 it has {} frames: {cycle:#?}",
                cycle.stack.len()
            )
        },
    );
}

/// A Python stack recursing 1,100 frames deep in a coroutine, blocking 200 ms in its
/// innermost call (deep_recursion.py): the stall is reported as usual, blamed on the
/// innermost `recurse` at its `time.sleep` line; its stack is cut at the walk's depth, the
/// innermost 127 frames (the blocking call, then 126 recursive calls), and marked as
/// truncated by a last `<truncated>` frame. Nothing hangs; the script exits 0.
fn deep_recursion_is_truncated_and_marked(python: &Python) {
    let (ran, stall) = run_sleep_scenario(
        &Scenario {
            python,
            script: "deep_recursion.py",
            script_args: &[],
            blockprobe_args: &[],
            stalls: 1,
        },
        "recurse",
        Duration::from_millis(200),
    );
    check_truncated(&ran.ctx, &ran.script, &stall);
}

/// deep_recursion.py blocking 1 s, started under a host-wide `trace` that is held
/// (SIGSTOP) until the script is inside its `time.sleep`: the kernel side times the call
/// from its start, before blockprobe traced the process (no stack could be walked there),
/// and the loop is not in the stack blockprobe walks from userspace once it does (the
/// stack is deeper than the walk). The stall is still the sleep, with its syscall, its
/// culprit and the truncated stack, walked while the call went on.
fn deep_recursion_blocking_before_its_process_is_traced(python: &Python) {
    require_root();
    let ctx = Ctx::new();
    let bp = ctx.spawn_trace_host();
    bp.signal(Signal::SIGSTOP);
    let name = "deep_recursion.py";
    let path = script(name);
    let mut cmd = python.command_at_once(&path);
    cmd.env("DEEP_SLEEP_S", "1");
    let started = unix_now_ns();
    let py = ctx.spawn(name, &mut cmd);
    let sleep_nr = python.sleep_syscall_nr().to_string();
    ctx.wait_for("the script's sleep", || {
        let syscall = std::fs::read_to_string(format!("/proc/{}/syscall", py.pid())).ok()?;
        (syscall.split(' ').next() == Some(sleep_nr.as_str())).then_some(())
    });
    bp.signal(Signal::SIGCONT);
    let state = ctx.wait_finished(&py);
    let finished = unix_now_ns();
    let _ = ctx.wait_stalls(&bp, py.pid(), 1);
    ctx.quit_script(&py);
    ctx.stop_trace(&bp);
    let stalls = bp.stalls(py.pid());
    ctx.ensure(stalls.len() == 1, || {
        format!("expected exactly one stall: {stalls:#?}")
    });
    let stall = &stalls[0];
    let expect = ctx.expect_sleep(
        &path,
        "recurse",
        python.sleep_syscall(),
        &state,
        Duration::from_secs(1),
        (started, finished),
    );
    ctx.check_stall(stall, &expect);
    check_truncated(&ctx, &path, stall);
}

/// `stall`'s stack is deep_recursion.py's blocking call, then recursive calls to the
/// walk's depth, then `<truncated>`.
#[track_caller]
fn check_truncated(ctx: &CtxRef, script: &std::path::Path, stall: &Stall) {
    let call = Frame::new("recurse", script, marker_line(script, "CALL recurse"));
    ctx.ensure(
        stall.stack.len() == WALK_DEPTH + 1
            && stall.stack[1..WALK_DEPTH].iter().all(|f| *f == call)
            && stall.stack[WALK_DEPTH] == marker("<truncated>", ""),
        || {
            format!(
                "the stack should be the blocking call, {} recursive calls ({call:?}), then \
                 <truncated>; it has {} frames: {stall:#?}",
                WALK_DEPTH - 1,
                stall.stack.len()
            )
        },
    );
}

/// unanswered_memory.py points a code object's name into a page registered with
/// userfaultfd whose faults nobody serves (a read of it waits until the process exits),
/// and blocks in that function; then it blocks three times in an intact one. Traced by
/// `trace -p`, blockprobe gives up reading within its deadline and goes on: every stall
/// is reported live, with its duration, cause and syscall, its stack `<unreadable>`
/// frames (the process is slow: its memory is not read again while the read hangs); a
/// `warning` names the pid and says its memory did not answer in time; the stacks left
/// unread are counted as lost (`memory_timeout`). SIGTERM, with that read still hung
/// (the process lives on), ends tracing at once with exit code 0 and the report written.
fn memory_that_never_answers_freezes_nothing(python: &Python) {
    require_root();
    let ctx = Ctx::new();
    let dir = tempfile::tempdir().expect("temporary directory");
    let report_path = dir.path().join("report.json");
    let script_path = script("unanswered_memory.py");
    let target = ctx.spawn(
        &format!("unanswered_memory.py ({})", python.label),
        &mut python.command(&script_path),
    );
    let ready = ctx.wait_ready(&target);
    let pid = target.pid();
    let bp = ctx.spawn(
        "blockprobe trace -p -o",
        Blockprobe::trace(&[pid]).arg("-o").arg(&report_path),
    );
    let tids: Vec<u32> = ready.loops.iter().map(|(_, t)| *t).collect();
    ctx.wait_loops_live(&bp, pid, &tids);
    target.send("GO");
    // The name stays unreadable until blockprobe has reported the stall.
    ctx.wait_for("the stall of `poisoned`, reported live", || {
        let measured = target.script_state().measured("poisoned").is_some();
        (measured && !bp.stalls(pid).is_empty()).then_some(())
    });
    target.send("RESTORE");
    let state = ctx.wait_finished(&target);
    let stalls = ctx.wait_stalls(&bp, pid, 4);
    let unread = marker("<unreadable>", "<unknown>");
    for (stall, function) in stalls
        .iter()
        .zip(["poisoned", "steady0", "steady1", "steady2"])
    {
        let measured = ctx.measured(&state, function);
        let low = measured - nanos(BELOW);
        let high = measured + nanos(ABOVE) + stall.runqueue_ns() + ctx.stolen_ns();
        ctx.ensure(
            (low..=high).contains(&stall.duration_ns)
                && stall.cause == "sleep"
                && stall.syscall.as_deref() == Some(python.sleep_syscall())
                && !stall.stack.is_empty()
                && stall.stack.iter().all(|f| *f == unread)
                && stall.culprit.as_ref() == Some(&unread),
            || {
                format!(
                    "the stall of `{function}` should last [{low}, {high}] ns, be a `sleep` in \
                     {}, and its stack be <unreadable> frames only: {stall:#?}",
                    python.sleep_syscall()
                )
            },
        );
    }
    ctx.ensure(said_memory_did_not_answer(&bp, pid), || {
        format!(
            "a warning about pid {pid} should say that its memory did not answer: {:#?}",
            bp.events_of("warning", pid)
        )
    });
    stop_at_once(&ctx, &bp);
    let timed_out = bp.lost("memory_timeout");
    let unreadable = bp.lost("unreadable_frame");
    let all_lost = bp.lost_total();
    ctx.ensure(timed_out >= 4 && all_lost == timed_out + unreadable, || {
        format!(
            "the four stacks left unread should be counted as memory_timeout ({timed_out}), \
             their frames as unreadable_frame ({unreadable}), and be all that is lost ({all_lost})"
        )
    });
    let report = read_json(&ctx, &report_path);
    let reported = (report["stalls"].as_array().into_iter().flatten())
        .filter(|s| s["pid"].as_u64() == Some(u64::from(pid)))
        .count();
    ctx.ensure(
        reported == 4 && report["lost"]["memory_timeout"].as_u64() >= Some(4),
        || {
            format!(
                "the report should hold the four stalls and the memory_timeout losses: {report:#}"
            )
        },
    );
    // The process, whose page blockprobe's read still waits for, lives on.
    ctx.quit_script(&target);
}

/// unanswered_memory.py --stuck: the loop is stuck from its first iteration, 30 s in a
/// function whose name points into a page nobody serves, when `trace -p` starts. The
/// look at its threads at attach (their stacks walked and named from userspace) gives up
/// within its deadline: a `warning` names the pid and says its memory did not answer,
/// the read left undone is counted (`memory_timeout`), and SIGTERM ends tracing at once,
/// exit code 0, the report written with the process in it.
fn memory_that_never_answers_at_attach_freezes_nothing(python: &Python) {
    require_root();
    let ctx = Ctx::new();
    let dir = tempfile::tempdir().expect("temporary directory");
    let report_path = dir.path().join("report.json");
    let target = ctx.spawn(
        &format!("unanswered_memory.py --stuck ({})", python.label),
        python
            .command_at_once(&script("unanswered_memory.py"))
            .arg("--stuck"),
    );
    let pid = target.pid();
    ctx.wait_for("the script's STUCK line", || {
        (target.texts().iter())
            .any(|t| t.starts_with("STUCK "))
            .then_some(())
    });
    let bp = ctx.spawn(
        "blockprobe trace -p -o",
        Blockprobe::trace(&[pid]).arg("-o").arg(&report_path),
    );
    ctx.wait_event(&bp, "attached", pid);
    ctx.wait_for("a warning that its memory did not answer", || {
        said_memory_did_not_answer(&bp, pid).then_some(())
    });
    stop_at_once(&ctx, &bp);
    let timed_out = bp.lost("memory_timeout");
    let report = read_json(&ctx, &report_path);
    let listed = (report["processes"].as_array().into_iter().flatten())
        .any(|p| p["pid"].as_u64() == Some(u64::from(pid)));
    ctx.ensure(
        timed_out >= 1 && report["lost"]["memory_timeout"].as_u64() == Some(timed_out) && listed,
        || {
            format!(
                "the read left undone should be counted as memory_timeout ({timed_out} live), \
                 and the report list pid {pid} and the same count: {report:#}"
            )
        },
    );
    ctx.ensure(target.exited().is_none(), || {
        "the stuck process should live on".into()
    });
}

/// hostile_files.py points its argument and environment areas into a page registered
/// with userfaultfd that nobody serves, and binds a FIFO over its `_asyncio` module's
/// file in a mount namespace of its own, before `trace -p`: attaching (its command line,
/// the files its loops run from) waits for neither. A `warning` names the pid and what
/// its module now is; its loop is found; its three stalls are reported with their
/// durations, blamed on `blocked`; the report lists it with its command line unknown
/// (empty); SIGTERM ends tracing at once with exit code 0.
#[test]
fn files_that_never_answer_freeze_nothing() {
    check_files_that_never_answer(false);
}

/// [`files_that_never_answer_freeze_nothing`], traced host-wide (`trace` without `-p`).
#[test]
fn files_that_never_answer_freeze_nothing_host_wide() {
    check_files_that_never_answer(true);
}

/// hostile_files.py traced by `trace -o` (host-wide when `host_wide`, else `-p`).
fn check_files_that_never_answer(host_wide: bool) {
    let ctx = Ctx::new();
    let python = Python::pyenv("3.11.7");
    let mut command = python.command(&script("hostile_files.py"));
    trace_hostile_files(&ctx, &mut command, host_wide, &["_asyncio", "FIFO"]);
}

/// hostile_files.py --hung-fuse mounts, on its `$VIRTUAL_ENV`, a FUSE file system whose
/// daemon never answers, before `trace -p`: the look at its files at attach (among them
/// its virtualenv, where a uvloop it may import would be) gives up after its deadline, a
/// `warning` names the pid, the miss is counted (`file_timeout`), and the process is
/// traced all the same: its loop found, its three stalls reported, blamed on `blocked`;
/// the report lists it with its command line unknown (empty) and the count; SIGTERM,
/// with that look still hung, ends tracing at once with exit code 0.
#[test]
fn a_hung_fuse_mount_freezes_nothing() {
    let ctx = Ctx::new();
    let python = Python::pyenv("3.11.7");
    let venv = tempfile::tempdir().expect("temporary directory");
    let mut command = python.command(&script("hostile_files.py"));
    command.arg("--hung-fuse").env("VIRTUAL_ENV", venv.path());
    let warned = ["no answer after", "file_timeout"];
    let (bp, report) = trace_hostile_files(&ctx, &mut command, false, &warned);
    ctx.ensure(
        bp.lost("file_timeout") >= 1 && report["lost"]["file_timeout"].as_u64() >= Some(1),
        || format!("the look given up should be counted as file_timeout: {report:#}"),
    );
}

/// Runs hostile_files.py as `command` says and traces it with `trace -o` (host-wide when
/// `host_wide`, else `-p`); fails unless its loop is found, a `warning` about it holds
/// each of `warned`, its three stalls are reported (see [`check_blocked_stalls`]),
/// SIGTERM ends tracing at once, and the report lists it with an unknown (empty) command
/// line. Returns blockprobe and its report.
fn trace_hostile_files(
    ctx: &Ctx,
    command: &mut std::process::Command,
    host_wide: bool,
    warned: &[&str],
) -> (Proc, serde_json::Value) {
    require_root();
    let dir = tempfile::tempdir().expect("temporary directory");
    let report_path = dir.path().join("report.json");
    let target = ctx.spawn("hostile_files.py", command);
    let ready = ctx.wait_ready(&target);
    let pid = target.pid();
    let pids = if host_wide { vec![] } else { vec![pid] };
    let bp = ctx.spawn(
        "blockprobe trace -o",
        Blockprobe::trace(&pids).arg("-o").arg(&report_path),
    );
    let tids: Vec<u32> = ready.loops.iter().map(|(_, t)| *t).collect();
    ctx.wait_loops_live(&bp, pid, &tids);
    ctx.ensure(
        (bp.events_of("warning", pid).iter())
            .filter_map(|w| w["message"].as_str())
            .any(|m| warned.iter().all(|w| m.contains(w))),
        || {
            format!(
                "a warning about pid {pid} should say {warned:?}: {:#?}",
                bp.events_of("warning", pid)
            )
        },
    );
    target.send("GO");
    let state = ctx.wait_finished(&target);
    let stalls = ctx.wait_stalls(&bp, pid, 3);
    check_blocked_stalls(ctx, &state, &stalls);
    stop_at_once(ctx, &bp);
    let report = read_json(ctx, &report_path);
    check_listed_without_cmdline(ctx, &report, pid);
    ctx.quit_script(&target);
    (bp, report)
}

/// Fails unless `stalls` are hostile_files.py's three, each lasting what the script
/// measured, a `sleep` blamed on `blocked`.
fn check_blocked_stalls(ctx: &Ctx, state: &ScriptState, stalls: &[Stall]) {
    for (n, stall) in stalls.iter().enumerate() {
        let measured = ctx.measured(state, &format!("blocked{n}"));
        let low = measured - nanos(BELOW);
        let high = measured + nanos(ABOVE) + stall.runqueue_ns() + ctx.stolen_ns();
        ctx.ensure(
            (low..=high).contains(&stall.duration_ns)
                && stall.cause == "sleep"
                && stall.culprit.as_ref().map(|f| f.function.as_str()) == Some("blocked"),
            || {
                format!(
                    "stall {n} should last [{low}, {high}] ns, a `sleep` in `blocked`: {stall:#?}"
                )
            },
        );
    }
}

/// Fails unless `report` lists `pid` with an unknown (empty) command line.
fn check_listed_without_cmdline(ctx: &Ctx, report: &serde_json::Value, pid: u32) {
    let process = (report["processes"].as_array().into_iter().flatten())
        .find(|p| p["pid"].as_u64() == Some(u64::from(pid)));
    ctx.ensure(
        process.is_some_and(|p| p["cmdline"].as_array().is_some_and(Vec::is_empty)),
        || format!("the report should list pid {pid} with an unknown (empty) command line: {process:#?}"),
    );
}

/// Whether blockprobe warned that the memory of `pid` did not answer in time.
fn said_memory_did_not_answer(bp: &Proc, pid: u32) -> bool {
    (bp.events_of("warning", pid).iter())
        .filter_map(|w| w["message"].as_str())
        .any(|m| m.contains("did not answer"))
}

/// Stops `blockprobe trace` with SIGTERM and fails unless it exits 0 within a few
/// seconds with whole output (it may have counted losses).
#[track_caller]
fn stop_at_once(ctx: &Ctx, bp: &Proc) {
    bp.may_exit();
    let signalled = Instant::now();
    bp.signal(Signal::SIGTERM);
    let status = bp.wait_exit();
    let took = signalled.elapsed();
    ctx.check_whole(bp);
    ctx.ensure(
        status.code() == Some(0) && took < Duration::from_secs(5),
        || format!("blockprobe took {took:?} to end after SIGTERM, with {status}; expected 0"),
    );
}

/// A marker frame blockprobe puts in a stack for what it could not walk or name
/// (`<truncated>`, `<unreadable>`): line 0.
fn marker(function: &str, file: &str) -> Frame {
    Frame {
        function: function.into(),
        file: file.into(),
        line: 0,
    }
}
