//! Faults around the tracer: targets that exec or fork, a reused pid, a binary replaced
//! on disk, and a full disk for the report. (Targets that corrupt their own frames:
//! hostile.rs; a user without the privileges: privileges.rs.)

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use blockprobe_tests::{
    Blockprobe, Ctx, CtxRef, Line, Proc, Python, Scenario, Stall, kind, read_json, require_root,
    run_scenario, script, unix_now_ns,
};
use serde_json::Value;

// ------------------------------------------------------------------ exec

/// `trace -p A -p B`: A execs into `/bin/sleep` with its loop off-await. blockprobe says
/// `detached` (reason `exec`) for A, reports no stall for it, and goes on tracing: B's
/// stall, after the exec, is found as usual.
#[test]
fn exec_into_non_python_detaches_and_tracing_goes_on() {
    let python = Python::pyenv("3.11.7");
    leaves_mid_iteration_and_tracing_goes_on(
        "exec_into.py -- /bin/sleep",
        python
            .command(&script("exec_into.py"))
            .args(["--", "/bin/sleep", "600"]),
        "exec",
        |ctx, a| {
            let comm =
                std::fs::read_to_string(format!("/proc/{}/comm", a.pid())).unwrap_or_default();
            ctx.ensure(comm.trim_end() == "sleep", || {
                format!(
                    "pid {} should now run /bin/sleep, its comm is {comm:?}",
                    a.pid()
                )
            });
        },
    );
}

/// `trace -p A -p B`: A's loop blocks in a 10 s `time.sleep` and another thread of A calls
/// `os._exit(0)` 100 ms into it (exit_mid_stall.py). blockprobe says `detached` (reason
/// `exit`) for A, reports no stall for it (the stall never ended), loses nothing, and goes
/// on tracing: B's stall, afterwards, is found as usual.
#[test]
fn exit_mid_stall_detaches_and_tracing_goes_on() {
    let python = Python::pyenv("3.11.7");
    leaves_mid_iteration_and_tracing_goes_on(
        "exit_mid_stall.py",
        &mut python.command(&script("exit_mid_stall.py")),
        "exit",
        |ctx, a| {
            let status = a.wait_exit();
            ctx.ensure(status.code() == Some(0), || {
                format!("exit_mid_stall.py should have called os._exit(0), it exited {status}")
            });
        },
    );
}

/// `trace -p A -p B`, A started by `command` (a scenario that leaves, on GO, with its loop
/// off-await), B sleep_in_coroutine.py: after GO, blockprobe says `detached` with
/// `reason` for A (then `gone` checks A), reports no stall for A, attaches to it once and
/// detaches once, and goes on tracing: B's stall, afterwards, is found as usual. trace
/// exits 0 with clean output.
fn leaves_mid_iteration_and_tracing_goes_on(
    name: &str,
    command: &mut Command,
    reason: &str,
    gone: impl FnOnce(&CtxRef, &Proc),
) {
    require_root();
    let ctx = Ctx::new();
    let python = Python::pyenv("3.11.7");
    let leaving = ctx.spawn(name, command);
    let other_script = script("sleep_in_coroutine.py");
    let other = ctx.spawn("sleep_in_coroutine.py", &mut python.command(&other_script));
    let leaving_loops = loop_tids(&ctx.wait_ready(&leaving));
    let other_loops = loop_tids(&ctx.wait_ready(&other));
    let (pid, other_pid) = (leaving.pid(), other.pid());
    let bp = ctx.spawn(
        "blockprobe trace -p -p",
        &mut Blockprobe::trace(&[pid, other_pid]),
    );
    ctx.wait_loops_live(&bp, pid, &leaving_loops);
    ctx.wait_loops_live(&bp, other_pid, &other_loops);

    leaving.may_exit();
    leaving.send("GO");
    let detached = ctx.wait_event(&bp, "detached", pid);
    ctx.ensure(detached["reason"] == reason, || {
        format!("expected a detached event with reason {reason:?}, got {detached}")
    });
    gone(&ctx, &leaving);

    // Tracing goes on after the detach.
    let go = unix_now_ns();
    other.send("GO");
    let state = ctx.wait_finished(&other);
    let stalls = ctx.wait_stalls(&bp, other_pid, 1);
    let seen = unix_now_ns();
    ctx.quit_script(&other);
    ctx.check_handler_sleep(
        &stalls[0],
        &other_script,
        python.sleep_syscall(),
        &state,
        (go, seen),
    );
    ctx.wait_event(&bp, "detached", other_pid);
    ctx.stop_trace(&bp);

    let leaving_stalls = bp.stalls(pid);
    ctx.ensure(leaving_stalls.is_empty(), || {
        format!("pid {pid} never ended a stall, yet: {leaving_stalls:#?}")
    });
    let attached = bp.events_of("attached", pid).len();
    let detached = bp.events_of("detached", pid).len();
    ctx.ensure(attached == 1 && detached == 1, || {
        format!(
            "expected one attached and one detached event for pid {pid}, got {attached} and \
             {detached} (`-p` does not follow execs)"
        )
    });
    ctx.ensure(bp.stalls(other_pid).len() == 1, || {
        format!("expected exactly one stall for pid {other_pid}")
    });
}

/// `run`: the command execs, with its loop off-await, into another Python scenario
/// (sleep_in_coroutine.py) in the same process. blockprobe detaches (`exec`), attaches to
/// the new image, classifies its loop anew (a `loop` event after the detach), and reports
/// the new image's stall and nothing else: the interval left open by the exec is not a
/// stall of the new image.
#[test]
fn exec_into_python_is_followed_under_run() {
    require_root();
    let ctx = Ctx::new();
    let python = Python::pyenv("3.11.7");
    let next = script("sleep_in_coroutine.py");
    let bp = ctx.spawn(
        "blockprobe run exec_into.py -- sleep_in_coroutine.py",
        &mut Blockprobe::run_exec_into(&python, &next),
    );
    let (_, pid) = ctx.wait_live(&bp, "sleep_in_coroutine.py");
    bp.send("GO");

    let detached = ctx.wait_event(&bp, "detached", pid);
    ctx.ensure(detached["reason"] == "exec", || {
        format!("expected a detached event with reason \"exec\", got {detached}")
    });
    // The new image: its READY, then its `attached` and `loop` events (in either order).
    ctx.wait_for("the new image's READY, `attached` and `loop` events", || {
        let after = after_detach(&bp, pid);
        let ready = after
            .iter()
            .any(|l| matches!(l, Line::Text(t) if *t == format!("READY {pid}")));
        let event = |name: &str| {
            after.iter().any(|l| {
                matches!(l, Line::Event(e, _) if kind(e) == name && e["pid"] == pid && (name != "loop" || e["tid"] == pid))
            })
        };
        (ready && event("attached") && event("loop")).then_some(())
    });
    let go = unix_now_ns();
    bp.send("GO");
    let state = ctx.wait_finished(&bp);
    ctx.wait_stalls(&bp, pid, 1);
    let seen = unix_now_ns();
    ctx.quit_ok(&bp, "");

    let reasons: Vec<Value> = bp
        .events_of("detached", pid)
        .iter()
        .map(|e| e["reason"].clone())
        .collect();
    ctx.ensure(reasons == ["exec", "exit"], || {
        format!("expected detached events for exec, then exit; got reasons {reasons:?}")
    });
    let version = python.version();
    let attached = bp.events_of("attached", pid);
    ctx.ensure(
        attached.len() == 2 && attached.iter().all(|e| e["python_version"] == version),
        || format!("expected two attached events (one per image), got {attached:?}"),
    );
    let loops = bp.events_of("loop", pid).len();
    ctx.ensure(loops == 2, || {
        format!("expected one `loop` event per image, got {loops}")
    });
    let stalls = bp.stalls(pid);
    ctx.ensure(stalls.len() == 1, || {
        format!("expected only the new image's stall, got {stalls:#?}")
    });
    ctx.check_handler_sleep(
        &stalls[0],
        &next,
        python.sleep_syscall(),
        &state,
        (go, seen),
    );
}

/// `bp`'s stdout lines after its first `detached` event for `pid`.
fn after_detach(bp: &Proc, pid: u32) -> Vec<Line> {
    bp.lines()
        .into_iter()
        .skip_while(|l| !matches!(l, Line::Event(e, _) if kind(e) == "detached" && e["pid"] == pid))
        .skip(1)
        .collect()
}

// ------------------------------------------------------------------ pid reuse

/// PID reuse under host-wide `trace`: process A (sleep_in_coroutine.py) stalls in
/// `handler` and exits; B (sync_chain.py) is then started with A's pid (set through
/// `/proc/sys/kernel/ns_last_pid`) and stalls in `level3`. blockprobe detaches A, attaches
/// B afresh, finds B's loop again, and blames `level3` with B's file: nothing of A (its
/// classification, timing, symbols or evidence) carries over to B.
#[test]
fn a_reused_pid_is_a_new_process() {
    require_root();
    let ctx = Ctx::new();
    let python = Python::pyenv("3.11.7");
    let bp = ctx.spawn_trace_host();

    let first = script("sleep_in_coroutine.py");
    let a = ctx.spawn("A: sleep_in_coroutine.py", &mut python.command(&first));
    let ready = ctx.wait_ready(&a);
    let pid = a.pid();
    let tids: Vec<u32> = ready.loops.iter().map(|(_, t)| *t).collect();
    ctx.wait_loops_live(&bp, pid, &tids);
    let go_a = unix_now_ns();
    a.send("GO");
    let state_a = ctx.wait_finished(&a);
    let stall_a = ctx.wait_stalls(&bp, pid, 1).remove(0);
    let seen_a = unix_now_ns();
    ctx.quit_script(&a);
    ctx.wait_event(&bp, "detached", pid);

    // The next process forked gets pid `pid`, unless another one is forked meanwhile.
    std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string())
        .unwrap_or_else(|e| ctx.fail(format!("cannot write ns_last_pid: {e}")));
    let second = script("sync_chain.py");
    let b = ctx.spawn("B: sync_chain.py", &mut python.command(&second));
    ctx.ensure(b.pid() == pid, || {
        format!(
            "B got pid {}, not A's {pid}: another process was forked in between",
            b.pid()
        )
    });
    ctx.wait_ready(&b);
    // A loop may be said more than once (found at attach and at its poll): B's is the one
    // said after the second `attached`.
    ctx.wait_for(
        "a second `attached` event, then a `loop` event, for the reused pid",
        || {
            let events = bp.events();
            let of_pid = |e: &&Value| e["pid"].as_u64() == Some(u64::from(pid));
            let mut attached = events
                .iter()
                .filter(of_pid)
                .enumerate()
                .filter(|(_, e)| kind(e) == "attached");
            let (second, _) = attached.nth(1)?;
            (events
                .iter()
                .filter(of_pid)
                .skip(second)
                .any(|e| kind(e) == "loop"))
            .then_some(())
        },
    );
    let go_b = unix_now_ns();
    b.send("GO");
    let state_b = ctx.wait_finished(&b);
    let stalls = ctx.wait_stalls(&bp, pid, 2);
    let seen_b = unix_now_ns();
    ctx.quit_script(&b);
    ctx.stop_trace(&bp);
    ctx.ensure(stalls.len() == 2, || {
        format!("expected A's stall and B's, got {stalls:#?}")
    });
    ctx.check_handler_sleep(
        &stall_a,
        &first,
        python.sleep_syscall(),
        &state_a,
        (go_a, seen_a),
    );
    let expect = ctx.expect_sleep(
        &second,
        "level3",
        python.sleep_syscall(),
        &state_b,
        Duration::from_millis(100),
        (go_b, seen_b),
    );
    ctx.check_stall(&stalls[1], &expect);
}

// ------------------------------------------------------------------ upgrade

/// Python upgraded on disk while it runs: a copy of Debian's static python3.11 runs
/// sleep_in_coroutine.py, then another program is renamed over the copy (a new inode, as
/// a package upgrade does; `/proc/PID/maps` now says `(deleted)`). `trace -p` attached
/// after that reads the interpreter the process really runs (through
/// `/proc/PID/map_files`), not the file now at its path: it finds the loop and reports
/// the stall as usual.
#[test]
fn python_replaced_on_disk_is_read_from_the_running_image() {
    require_root();
    let ctx = Ctx::new();
    let dir = tempfile::tempdir().expect("temporary directory");
    let binary = dir.path().join("python3.11");
    std::fs::copy("/usr/bin/python3.11", &binary).expect("copying /usr/bin/python3.11");
    let python = Python {
        label: "debian 3.11 (a copy, replaced on disk)".into(),
        path: binary.clone(),
        env: Vec::new(),
    };
    let script_path = script("sleep_in_coroutine.py");
    let py = ctx.spawn(
        "script (replaced python)",
        &mut python.command(&script_path),
    );
    let ready = ctx.wait_ready(&py);
    let upgrade = dir.path().join("python3.11.new");
    std::fs::copy("/bin/sleep", &upgrade).expect("copying /bin/sleep");
    std::fs::rename(&upgrade, &binary).expect("renaming over the running python");
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", py.pid())).unwrap_or_default();
    ctx.ensure(maps.contains("python3.11 (deleted)"), || {
        format!("the running python's mapping should show as deleted:\n{maps}")
    });
    let bp = ctx.spawn(
        "blockprobe trace -p (replaced python)",
        &mut Blockprobe::trace(&[py.pid()]),
    );
    let tids: Vec<u32> = ready.loops.iter().map(|(_, t)| *t).collect();
    ctx.wait_loops_live(&bp, py.pid(), &tids);
    let go = unix_now_ns();
    py.send("GO");
    let state = ctx.wait_finished(&py);
    let stalls = ctx.wait_stalls(&bp, py.pid(), 1);
    let seen = unix_now_ns();
    ctx.quit_script(&py);
    ctx.stop_trace(&bp);
    ctx.ensure(stalls.len() == 1, || {
        format!("expected exactly one stall, got {stalls:#?}")
    });
    ctx.check_handler_sleep(
        &stalls[0],
        &script_path,
        // The file at `python.path` is no Python any more: ask the original.
        Python::debian().sleep_syscall(),
        &state,
        (go, seen),
    );
}

// ------------------------------------------------------------------ fork

/// `run`: a loop process forks without exec and the child runs a new loop of its own
/// (fork_child.py). Both block 50 ms in a coroutine: the child's stall is reported with
/// the child's pid and tid and blames `child_handler`; the parent's blames
/// `parent_handler`; neither process is blamed for the other's.
#[test]
fn forked_child_loop_is_traced_under_run() {
    child_loop_is_traced_under_run("fork");
}

/// [`forked_child_loop_is_traced_under_run`] with a `multiprocessing` forkserver child:
/// a grandchild of `run`'s command, forked by the fork server the command exec'd.
#[test]
fn forkserver_grandchild_loop_is_traced_under_run() {
    child_loop_is_traced_under_run("forkserver");
}

/// fork_child.py `--start start`, checked as said above.
fn child_loop_is_traced_under_run(start: &str) {
    require_root();
    let ctx = Ctx::new();
    let python = Python::pyenv("3.11.7");
    let script_path = script("fork_child.py");
    let bp = ctx.spawn(
        &format!("blockprobe run fork_child.py --start {start}"),
        &mut Blockprobe::run(&python, &script_path, &["--start", start], &[]).steady(),
    );
    let (_, pid) = ctx.wait_live(&bp, "fork_child.py");
    bp.send("GO");

    let child = ctx.wait_for("the child's CHILD line", || {
        bp.texts()
            .iter()
            .find_map(|t| t.strip_prefix("CHILD ")?.parse::<u32>().ok())
    });
    ctx.adopt(child, "fork_child.py");
    let child_tid = ctx.wait_for("the child's LOOP line", || {
        bp.script_state().loop_tid("child")
    });
    ctx.ensure(child_tid == child && child != pid, || {
        format!("the child (pid {child}) should run its loop on its main thread, not {child_tid}")
    });
    ctx.wait_loops_live(&bp, child, &[child_tid]);

    let go = unix_now_ns();
    bp.send("BLOCK");
    let blames = |stall: &Stall, function: &str| {
        stall
            .culprit
            .as_ref()
            .is_some_and(|c| c.function == function)
    };
    ctx.wait_for("both processes' stalls", || {
        let parent = bp.stalls(pid).iter().any(|s| blames(s, "parent_handler"));
        let child = !bp.stalls(child).is_empty();
        (parent && child).then_some(())
    });
    let seen = unix_now_ns();
    bp.send("RELEASE");
    ctx.wait_finished(&bp);
    ctx.quit_ok(&bp, " (the child exits 0 too)");

    let state = bp.script_state();
    let expect = |function: &'static str| {
        ctx.expect_sleep(
            &script_path,
            function,
            python.sleep_syscall(),
            &state,
            Duration::from_millis(50),
            (go, seen),
        )
    };
    let child_stalls = bp.stalls(child);
    ctx.ensure(
        child_stalls.len() == 1
            && child_stalls[0].tid == child_tid
            && child_stalls[0].comm == python.comm(),
        || format!("expected one stall of the child's loop thread {child_tid}: {child_stalls:#?}"),
    );
    ctx.check_stall(&child_stalls[0], &expect("child_handler"));
    let parent_stalls = bp.stalls(pid);
    let parents: Vec<&Stall> = parent_stalls
        .iter()
        .filter(|s| blames(s, "parent_handler"))
        .collect();
    ctx.ensure(parents.len() == 1 && parents[0].tid == pid, || {
        format!(
            "expected one stall of the parent's loop blaming parent_handler: {parent_stalls:#?}"
        )
    });
    ctx.check_stall(parents[0], &expect("parent_handler"));
    ctx.ensure(
        !parent_stalls.iter().any(|s| blames(s, "child_handler")),
        || format!("a parent stall blames the child's function: {parent_stalls:#?}"),
    );
    let attached = bp.events_of("attached", child);
    ctx.ensure(
        attached.len() == 1 && attached[0]["python_version"] == python.version(),
        || format!("expected one attached event for the child, got {attached:?}"),
    );
    let detached = bp.events_of("detached", child);
    ctx.ensure(
        detached.len() == 1 && detached[0]["reason"] == "exit",
        || format!("expected the child to be detached at its exit, got {detached:?}"),
    );
}

// ------------------------------------------------------------------ full disk

/// A tmpfs mounted for one test; unmounted (lazily, should a process still use it) when
/// dropped, also when the test fails.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().expect("temporary directory");
        nix::mount::mount(
            Some("tmpfs"),
            dir.path(),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(format!("size={size},mode=0755").as_str()),
        )
        .unwrap_or_else(|err| panic!("cannot mount a tmpfs on {}: {err}", dir.path().display()));
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(self.dir.path(), nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Fills the file system of `dir` with a file until the space runs out.
fn fill(ctx: &CtxRef, dir: &Path) {
    use std::io::Write as _;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path)
        .unwrap_or_else(|err| ctx.fail(format!("cannot create {}: {err}", path.display())));
    let block = [0u8; 4096];
    loop {
        match file.write(&block) {
            Ok(0) => break,
            Ok(_) => {}
            Err(err) if err.raw_os_error() == Some(nix::errno::Errno::ENOSPC as i32) => break,
            Err(err) => ctx.fail(format!("cannot fill {}: {err}", path.display())),
        }
    }
}

/// `-o` into a full 64 KiB tmpfs that holds the report of an earlier run: blockprobe
/// traces as usual, then fails with one line naming the report and the cause, exits
/// non-zero, leaves the old report byte for byte, and leaves no temporary file.
#[test]
fn report_on_a_full_disk_fails_and_keeps_the_old_one() {
    require_root();
    let ctx = Ctx::new();
    let python = Python::pyenv("3.11.7");
    let tmpfs = Tmpfs::mount("64k");
    let report = tmpfs.path().join("report.json");
    let report_arg = report.to_string_lossy().into_owned();
    let (status, _, stderr) = Blockprobe::new(["run", "-q", "-o", &report_arg, "--", "true"])
        .output(&ctx, "blockprobe run -o (the old report)");
    ctx.ensure(status.success(), || {
        format!("the old report could not be written ({status}): {stderr}")
    });
    let old_report = read_json(&ctx, &report);
    ctx.ensure(old_report["schema"] == "blockprobe.report/v1", || {
        format!("the old report is not a report: {old_report}")
    });
    let old = std::fs::read(&report).expect("the old report is readable");
    fill(&ctx, tmpfs.path());

    let ran = run_scenario(&Scenario {
        python: &python,
        script: "sleep_in_coroutine.py",
        script_args: &[],
        blockprobe_args: &["-o", &report_arg],
        stalls: 1,
    });
    let stall = ran.only_stall();
    ran.check_stall(
        &stall,
        "handler",
        "sleep",
        python.sleep_syscall(),
        Duration::from_millis(200),
    );
    let ctx = &ran.ctx;
    ctx.ensure(ran.status.code().is_some_and(|c| c != 0), || {
        format!(
            "blockprobe run exited with {}: a report it could not write must fail it",
            ran.status
        )
    });
    let stderr = ran.bp.stderr();
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    ctx.ensure(
        lines.len() == 1
            && lines[0].contains(&report_arg)
            && lines[0].contains("No space left on device"),
        || {
            format!(
                "expected one line on stderr naming {report_arg} and the full disk, got:\n{stderr}"
            )
        },
    );
    let now = std::fs::read(&report).unwrap_or_default();
    ctx.ensure(now == old, || {
        format!(
            "the old report changed ({} bytes, now {}): {}",
            old.len(),
            now.len(),
            String::from_utf8_lossy(&now)
        )
    });
    let names: BTreeSet<String> = std::fs::read_dir(tmpfs.path())
        .expect("the tmpfs is readable")
        .map(|e| {
            e.expect("directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    ctx.ensure(
        names == BTreeSet::from(["filler".to_string(), "report.json".to_string()]),
        || format!("the tmpfs should hold only the filler and the old report: {names:?}"),
    );
}

// ------------------------------------------------------------------ helpers

fn loop_tids(state: &blockprobe_tests::ScriptState) -> Vec<u32> {
    state.loops.iter().map(|(_, tid)| *tid).collect()
}
