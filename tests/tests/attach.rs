//! `blockprobe trace`: attaching to a process that already runs (`-p PID`), and tracing
//! every Python process, including one started later (no `-p`).

use std::os::unix::net::UnixDatagram;

use blockprobe_tests::{
    Blockprobe, Ctx, Proc, Python, TIMEOUT, kind, python_matrix, require_root, script,
};

python_matrix!(
    trace_pid,
    trace_pid_while_the_gil_is_held,
    trace_all_catches_later_process
);

/// (f) `trace -p PID` on a script the test started itself, already running.
fn trace_pid(python: &Python) {
    let (ctx, bp, pid) = trace_running_script(python, &[]);
    let before: Vec<_> = (bp.stalls(pid).into_iter())
        .filter(|s| s.started_before_tracing)
        .collect();
    ctx.ensure(before.is_empty(), || {
        format!("an idle loop has no stall under way at attach: {before:#?}")
    });
}

/// `trace -p PID` on a single-threaded script busy in Python (holding the GIL) when the
/// tracer starts: while one thread holds the GIL, some interpreters (3.15) keep its thread
/// state in two thread-local variables, which blockprobe tells apart from the
/// interpreter's code (or, where it cannot, by waiting for a GIL release), never giving
/// up. The spin is its loop's: when blockprobe attaches during it, a stall under way,
/// reported as such (`started_before_tracing`), blamed on the spinning coroutine.
fn trace_pid_while_the_gil_is_held(python: &Python) {
    let (ctx, bp, pid) = trace_running_script(python, &["--spin-after-ready", "1.5"]);
    let spins: Vec<_> = (bp.stalls(pid).into_iter())
        .filter(|s| s.started_before_tracing)
        .collect();
    // Attached during the spin, or (on interpreters that keep the thread state apart
    // only once the GIL is released) right after it.
    ctx.ensure(
        spins.len() <= 1
            && spins.iter().all(|s| {
                s.syscall.is_none()
                    && (s.culprit.as_ref()).is_some_and(|c| c.file.ends_with("bptest.py"))
            }),
        || format!("at most one stall under way at attach, the spin in bptest.py: {spins:#?}"),
    );
}

/// Starts sleep_in_coroutine.py with `args`, then `trace -p` on it once it is READY, and
/// drives it through its stall; returns the test's context, blockprobe and the pid.
fn trace_running_script(python: &Python, args: &[&str]) -> (Ctx, Proc, u32) {
    require_root();
    let ctx = Ctx::new();
    let script = script("sleep_in_coroutine.py");
    let py = ctx.spawn(
        &format!("script ({})", python.label),
        python.command(&script).args(args),
    );
    let ready = ctx.wait_ready(&py);
    ctx.ensure(ready.pid == Some(py.pid()), || {
        format!(
            "READY says pid {:?}, the test started {}",
            ready.pid,
            py.pid()
        )
    });
    let bp = ctx.spawn("blockprobe trace -p", &mut Blockprobe::trace(&[py.pid()]));
    ctx.drive_traced_sleep(&bp, &py, python, &script);
    ctx.stop_trace(&bp);
    let pid = py.pid();
    (ctx, bp, pid)
}

/// `trace -p` tells a supervisor listening on `$NOTIFY_SOCKET` (systemd `Type=notify`,
/// the benchmark) `READY=1` once the process asked for is attached.
#[test]
fn notify_socket_hears_ready_once_attached() {
    require_root();
    let ctx = Ctx::new();
    let python = Python::pyenv("3.11.7");
    let py = ctx.spawn("idle.py", &mut python.command(&script("idle.py")));
    ctx.wait_ready(&py);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("notify");
    let socket = UnixDatagram::bind(&path).expect("binding a datagram socket");
    socket
        .set_read_timeout(Some(TIMEOUT))
        .expect("a read timeout");
    let bp = ctx.spawn(
        "blockprobe trace -p",
        Blockprobe::trace(&[py.pid()]).env("NOTIFY_SOCKET", &path),
    );
    let mut message = [0u8; 64];
    let n = (socket.recv(&mut message))
        .unwrap_or_else(|e| ctx.fail(format!("nothing on $NOTIFY_SOCKET: {e}")));
    ctx.ensure(&message[..n] == b"READY=1\n", || {
        format!(
            "expected READY=1 on $NOTIFY_SOCKET, got {:?}",
            String::from_utf8_lossy(&message[..n])
        )
    });
    ctx.wait_event(&bp, "attached", py.pid());
    py.send("GO");
    ctx.quit_script(&py);
    ctx.stop_trace(&bp);
}

/// (g) `trace` with no `-p`, then a script started afterwards: its stall is caught.
///
/// blockprobe has no "ready" event of its own, so the test first starts a sentinel (an
/// idle loop) and waits for its `loop` event: blockprobe is then fully up, and the
/// scenario script, started after that, is a new process to it.
fn trace_all_catches_later_process(python: &Python) {
    require_root();
    let ctx = Ctx::new();
    let bp = ctx.spawn("blockprobe trace (all)", &mut Blockprobe::trace(&[]));
    let sentinel = ctx.spawn(
        &format!("sentinel idle.py ({})", python.label),
        &mut python.command(&script("idle.py")),
    );
    let sentinel_ready = ctx.wait_ready(&sentinel);
    let sentinel_tids: Vec<u32> = sentinel_ready.loops.iter().map(|(_, t)| *t).collect();
    ctx.wait_loops_live(&bp, sentinel.pid(), &sentinel_tids);

    let script = script("sleep_in_coroutine.py");
    let py = ctx.spawn(
        &format!("script ({})", python.label),
        &mut python.command(&script),
    );
    ctx.wait_ready(&py);
    ctx.drive_traced_sleep(&bp, &py, python, &script);

    sentinel.send("GO");
    sentinel.send("QUIT");
    ctx.ensure(sentinel.wait_exit().success(), || {
        "the sentinel failed".into()
    });
    ctx.stop_trace(&bp);
    let idle_stalls = bp.stalls(sentinel.pid());
    ctx.ensure(idle_stalls.is_empty(), || {
        format!("the idle sentinel never blocks, yet: {idle_stalls:#?}")
    });
}

/// Host-wide `trace` while a pyenv 3.8.18 process (a version blockprobe does not support)
/// and a 3.11 one each block their loop 200 ms in sleep_in_coroutine.py: exactly one
/// warning names 3.8.18, for that process, which is never attached nor reported; the
/// 3.11 process's stall is reported as usual. Needs pyenv 3.8.18 (full matrix).
#[test]
fn an_unsupported_python_is_one_warning_and_the_others_are_traced() {
    require_root();
    let Some(old) = Python::matrix("pyenv_3_8_refused") else {
        return;
    };
    let ctx = Ctx::new();
    let python = Python::pyenv("3.11.7");
    let bp = ctx.spawn_trace_host();
    let script = script("sleep_in_coroutine.py");
    let unsupported = ctx.spawn(
        "sleep_in_coroutine.py (pyenv 3.8.18)",
        &mut old.command(&script),
    );
    ctx.wait_ready(&unsupported);
    let pid = unsupported.pid();
    let about = |bp: &Proc| -> Vec<String> {
        bp.events()
            .iter()
            .filter(|e| kind(e) == "warning")
            .filter_map(|e| e["message"].as_str().map(str::to_owned))
            .filter(|m| m.contains("3.8.18") || m.contains(&format!("pid {pid}:")))
            .collect()
    };
    ctx.wait_for("a warning about the 3.8.18 process", || {
        (!about(&bp).is_empty()).then_some(())
    });
    // Its loop blocks while the other process is traced: never a stall of its own.
    unsupported.send("GO");
    ctx.wait_finished(&unsupported);

    let py = ctx.spawn(
        "sleep_in_coroutine.py (pyenv 3.11.7)",
        &mut python.command(&script),
    );
    ctx.wait_ready(&py);
    ctx.drive_traced_sleep(&bp, &py, &python, &script);
    ctx.quit_script(&unsupported);
    ctx.stop_trace(&bp);

    let warnings = about(&bp);
    ctx.ensure(
        warnings.len() == 1
            && warnings[0].contains(&format!("pid {pid}:"))
            && warnings[0].contains("3.8.18"),
        || format!("expected one warning naming pid {pid} and 3.8.18, got {warnings:#?}"),
    );
    for event in ["attached", "loop", "stall"] {
        let events = bp.events_of(event, pid);
        ctx.ensure(events.is_empty(), || {
            format!("the unsupported process has `{event}` events: {events:?}")
        });
    }
}
