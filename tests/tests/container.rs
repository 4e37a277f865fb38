//! A Python process in its own mount and pid namespaces, as in a container: its
//! interpreter is bind-mounted at a path that exists only inside (blockprobe must open it
//! through `/proc/PID/root`), and its pids are not the host's.

use std::process::Command;

use blockprobe_tests::{
    Ctx, THRESHOLD, blockprobe_bin, kind, python_env, require_root, script, unix_now_ns,
};

#[test]
fn unshare_mount_and_pid_namespaces() {
    require_root();
    let ctx = Ctx::new();
    let script = script("sleep_in_coroutine.py");
    // An empty file on the host; Debian's static, stripped python3.11 is bind-mounted on it
    // inside the new mount namespace only.
    let dir = tempfile::tempdir().unwrap();
    let inside = dir.path().join("python3.11");
    std::fs::write(&inside, b"").unwrap();
    let mut cmd = Command::new(blockprobe_bin());
    cmd.args(["run", "--format", "jsonl", "--threshold", THRESHOLD, "--"])
        .args(["unshare", "-fpm", "--mount-proc", "sh", "-c"])
        .arg(r#"mount --bind /usr/bin/python3.11 "$1" && exec "$1" "$2""#)
        .arg("sh")
        .arg(&inside)
        .arg(&script);
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
    ctx.adopt(pid, "sleep_in_coroutine.py (in namespaces)");
    ctx.ensure(ns_pid == 1 && pid != ns_pid, || {
        format!("namespace pid {ns_pid}, host pid {pid}: expected 1 and another")
    });
    ctx.ensure(
        attached["python_version"] == "3.11.2" && attached["ns_pid"] == ns_pid,
        || format!("attached should say Python 3.11.2 and namespace pid {ns_pid}: {attached}"),
    );
    ctx.wait_loops_live(&bp, pid, &[pid]);
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
