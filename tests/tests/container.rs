//! A Python process in its own mount and pid namespaces, as in a container: its
//! interpreter is bind-mounted at a path that exists only inside (blockprobe must open it
//! through `/proc/PID/root`), and its pids are not the host's.

use std::path::Path;

use blockprobe_tests::{
    Blockprobe, Ctx, Proc, THRESHOLD, kind, python_env, require_root, script, unix_now_ns,
};

#[test]
fn unshare_mount_and_pid_namespaces() {
    let ctx = Ctx::new();
    let script = script("sleep_in_coroutine.py");
    let (bp, pid) = run_in_namespaces(&ctx, &script);
    let go = unix_now_ns();
    bp.send("GO");
    let finished = ctx.wait_finished(&bp);
    let stalls = ctx.wait_stalls(&bp, pid, 1);
    let seen = unix_now_ns();
    ctx.quit_ok(&bp, "");
    let stall = &stalls[0];
    ctx.ensure(stall.tid == pid, || {
        format!(
            "stall in thread {}, expected the main thread {pid}",
            stall.tid
        )
    });
    ctx.check_handler_sleep(stall, &script, "clock_nanosleep", &finished, (go, seen));
}

/// A GIL stall in a pid namespace: the interpreter names the holder by its namespace id;
/// blockprobe reports the host's, with the holder's stack.
#[test]
fn gil_holder_in_a_pid_namespace() {
    let ctx = Ctx::new();
    let (bp, pid) = run_in_namespaces(&ctx, &script("cause_gil.py"));
    // The hog thread says its id before READY, and ends after its one long match.
    let ns_tid: u32 = bp
        .texts()
        .iter()
        .find_map(|t| t.strip_prefix("HOG crunch ")?.parse().ok())
        .unwrap_or_else(|| ctx.fail("the script printed no `HOG crunch` line"));
    let host_tid = host_tid(pid, ns_tid)
        .unwrap_or_else(|| ctx.fail(format!("no thread of {pid} is {ns_tid} in its namespace")));
    bp.send("GO");
    ctx.wait_finished(&bp);
    let stalls = ctx.wait_stalls(&bp, pid, 1);
    ctx.quit_ok(&bp, "");
    let stall = &stalls[0];
    ctx.ensure(
        stall.cause == "gil"
            && stall.gil_holder_tid == Some(host_tid)
            && stall
                .gil_holder_stack
                .first()
                .is_some_and(|f| f.function == "crunch"),
        || {
            format!(
                "expected a gil stall held by host tid {host_tid} (namespace tid {ns_tid}) in \
                 crunch: {stall:#?}"
            )
        },
    );
}

/// Starts `blockprobe run` of `script` on Debian's python3.11 in new mount and pid
/// namespaces (`unshare -fpm`), its interpreter bind-mounted at a path that exists only
/// inside, and waits until its loop is traced. Checks what blockprobe says of the
/// process's pids; returns blockprobe and the script's host pid.
#[track_caller]
fn run_in_namespaces(ctx: &Ctx, script: &Path) -> (Proc, u32) {
    require_root();
    // An empty file on the host; Debian's static, stripped python3.11 is bind-mounted on it
    // inside the new mount namespace only.
    let dir = tempfile::tempdir().unwrap();
    let inside = dir.path().join("python3.11");
    std::fs::write(&inside, b"").unwrap();
    let mut cmd =
        Blockprobe::new(["run", "--format", "jsonl", "--threshold", THRESHOLD, "--"]).steady();
    cmd.args(["unshare", "-fpm", "--mount-proc", "sh", "-c"])
        .arg(r#"mount --bind /usr/bin/python3.11 "$1" && exec "$1" "$2""#)
        .arg("sh")
        .arg(&inside)
        .arg(script);
    python_env(&mut cmd);
    let bp = ctx.spawn("blockprobe run (unshare -fpm)", &mut cmd);
    let ready = ctx.wait_ready(&bp);
    let ns_pid = ready.pid.expect("READY has a pid");
    // The script is pid 1 of its namespace; blockprobe reports host pids.
    let attached = ctx.wait_for("an `attached` event for python3.11", || {
        bp.events()
            .into_iter()
            .find(|e| kind(e) == "attached" && e["comm"] == "python3.11")
    });
    let pid = attached["pid"].as_u64().expect("pid") as u32;
    ctx.adopt(pid, "python3.11 (in namespaces)");
    ctx.ensure(ns_pid == 1 && pid != ns_pid, || {
        format!("namespace pid {ns_pid}, host pid {pid}: expected 1 and another")
    });
    ctx.ensure(
        attached["python_version"] == "3.11.2" && attached["ns_pid"] == ns_pid,
        || format!("attached should say Python 3.11.2 and namespace pid {ns_pid}: {attached}"),
    );
    ctx.wait_loops_live(&bp, pid, &[pid]);
    (bp, pid)
}

/// The host tid of process `pid`'s thread `ns_tid` of its own pid namespace, from the
/// `NSpid:` lines of its threads' status files.
fn host_tid(pid: u32, ns_tid: u32) -> Option<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|tid| {
            std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).is_ok_and(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("NSpid:"))
                    .and_then(|ids| ids.split_whitespace().last()?.parse().ok())
                    == Some(ns_tid)
            })
        })
}
