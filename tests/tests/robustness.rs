//! blockprobe against a hostile environment: readers that go away, stopped processes,
//! files swapped under it, state that dead threads and processes leave behind.

use std::io::{BufRead as _, BufReader, Read as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use blockprobe_tests::{
    Blockprobe, Ctx, CtxRef, Python, Scenario, kind, nanos, python_env, read_json, require_root,
    run_scenario, script, wait_for_go,
};
use nix::sys::{ptrace, signal, wait};
use nix::unistd::Pid;
use serde_json::Value;

/// How long a test waits for blockprobe to exit before it fails.
const EXIT_PATIENCE: Duration = Duration::from_secs(60);

/// `blockprobe run -o r.json -- python3 app.py | head -1`: the reader of the live output
/// goes away after the first stall. The live output stops quietly, tracing goes on: the
/// report is written with every stall, including those after the pipe closed, and the
/// exit code is the command's (0).
#[test]
fn a_closed_pipe_keeps_the_report() {
    require_root();
    let python = Python::pyenv("3.11.7");
    let dir = tempfile::tempdir().expect("temporary directory");
    let report = dir.path().join("r.json");
    let go = dir.path().join("go");
    let mut cmd = Blockprobe::new(["run", "--threshold", "20ms", "-o"]);
    cmd.arg(&report)
        .arg("--")
        .arg(&python.path)
        .arg(script("closed_pipe.py"))
        .arg(&go)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    python_env(&mut cmd);
    let mut bp = cmd.spawn().expect("blockprobe starts");
    let mut stderr = bp.stderr.take().expect("stderr piped");
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    // Like `head`: read up to the first stall line, then go away.
    let mut out = BufReader::new(bp.stdout.take().expect("stdout piped"));
    let mut line = String::new();
    loop {
        line.clear();
        let read = out
            .read_line(&mut line)
            .expect("reading blockprobe's stdout");
        assert!(read > 0, "blockprobe's stdout ended before a stall line");
        if !line.starts_with("TIME") {
            break;
        }
    }
    assert!(line.contains("handler"), "not a stall of handler: {line:?}");
    drop(out);
    std::fs::write(&go, b"").expect("creating the go file");
    let since = Instant::now();
    let status = loop {
        if let Some(status) = bp.try_wait().expect("waiting for blockprobe") {
            break status;
        }
        if since.elapsed() > EXIT_PATIENCE {
            let _ = bp.kill();
            panic!("blockprobe did not exit {EXIT_PATIENCE:?} after its stdout closed");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = errors.join().expect("stderr reader");
    assert!(
        status.code() == Some(0),
        "blockprobe exited with {status}, the command with 0; stderr:\n{stderr}"
    );
    // No error (`blockprobe: error: …`, as a closed pipe used to give) and no panic; an
    // informational line may quote an OS error code ("(os error 1)") without failing.
    assert!(
        !stderr
            .lines()
            .any(|l| l.contains("error:") || l.contains("panicked")),
        "stderr:\n{stderr}"
    );
    let text = std::fs::read_to_string(&report).expect("the report was written");
    let report: Value = serde_json::from_str(&text).expect("the report is JSON");
    let stalls = report["stalls"].as_array().expect("stalls");
    let handler = |s: &&Value| s["culprit"]["function"] == "handler";
    // At least the one read, and the three after the pipe closed.
    assert!(
        stalls.iter().filter(handler).count() >= 4,
        "the report lacks the stalls after the pipe closed: {stalls:#?}"
    );
}

/// How long a stop lasts in the tests of stopped loops (past a second for SIGSTOP, when
/// a hang would be said stuck).
const SHORT_STOP: Duration = Duration::from_millis(800);
const LONG_STOP: Duration = Duration::from_millis(2500);

/// `kill -STOP`, 2.5 s, `kill -CONT` on an idle loop: one stall, cause `stopped`, no
/// culprit, no stack; no stuck notice while stopped; in the report under `<stopped>`,
/// never under a function.
#[test]
fn a_stopped_loop_is_stopped_time() {
    stopped_loop(LONG_STOP, |_, pid| {
        let pid = Pid::from_raw(pid as i32);
        signal::kill(pid, signal::Signal::SIGSTOP).expect("SIGSTOP");
        std::thread::sleep(LONG_STOP);
        signal::kill(pid, signal::Signal::SIGCONT).expect("SIGCONT");
    });
}

/// A debugger's attach (`PTRACE_ATTACH`, as gdb and `py-spy dump` do) holding the loop
/// thread in a ptrace stop for 0.8 s: stopped time, as above.
#[test]
fn a_ptrace_stop_is_stopped_time() {
    stopped_loop(SHORT_STOP, |ctx, pid| {
        let pid = Pid::from_raw(pid as i32);
        ptrace::attach(pid).unwrap_or_else(|e| ctx.fail(format!("PTRACE_ATTACH: {e}")));
        match wait::waitpid(pid, Some(wait::WaitPidFlag::__WALL)) {
            Ok(wait::WaitStatus::Stopped(..)) => {}
            other => ctx.fail(format!("the traced loop did not stop: {other:?}")),
        }
        std::thread::sleep(SHORT_STOP);
        ptrace::detach(pid, None).unwrap_or_else(|e| ctx.fail(format!("PTRACE_DETACH: {e}")));
    });
}

/// The cgroup v1 freezer (`freezer.state` FROZEN, 0.8 s, THAWED): stopped time.
#[test]
fn a_frozen_cgroup_v1_is_stopped_time() {
    frozen_cgroup("freezer", "freezer.state", ["FROZEN", "THAWED"]);
}

/// The cgroup v2 freezer (`cgroup.freeze` 1, 0.8 s, 0; what `docker pause` does on a
/// cgroup v2 host): stopped time.
#[test]
fn a_frozen_cgroup_v2_is_stopped_time() {
    frozen_cgroup("cgroup2", "cgroup.freeze", ["1", "0"]);
}

/// [`stopped_loop`], frozen for [`SHORT_STOP`] in a cgroup of the hierarchy `fs` (see
/// [`cgroup_root`]) by writing `[freeze, thaw]` to its `file`; skipped, saying so,
/// without that hierarchy.
fn frozen_cgroup(fs: &str, file: &str, [freeze, thaw]: [&str; 2]) {
    let Some(root) = cgroup_root(fs) else {
        eprintln!("skipped: no {fs} cgroup hierarchy on this host");
        return;
    };
    stopped_loop(SHORT_STOP, |ctx, pid| {
        let cgroup = Cgroup::new(ctx, &root, pid);
        cgroup.set(file, freeze);
        std::thread::sleep(SHORT_STOP);
        cgroup.set(file, thaw);
    });
}

/// Runs idle.py under `blockprobe run -o`, stops its loop from outside with `stop` (for
/// about `stopped`), and checks blockprobe's view: one stall about that long, cause
/// `stopped`, no culprit nor stack nor syscall, most of it `stopped` time; no stuck
/// notice; and in the report no function blamed for it.
fn stopped_loop(stopped: Duration, stop: impl FnOnce(&CtxRef, u32)) {
    require_root();
    let python = Python::pyenv("3.11.7");
    let dir = tempfile::tempdir().expect("temporary directory");
    let report = dir.path().join("report.json");
    let ctx = Ctx::new();
    let bp = ctx.spawn(
        "blockprobe run idle.py",
        &mut Blockprobe::run(
            &python,
            &script("idle.py"),
            &[],
            &["-o", &report.to_string_lossy()],
        )
        .steady(),
    );
    let (_, pid) = ctx.wait_live(&bp, "idle.py");
    stop(&ctx, pid);
    // A freezer takes effect a little after the write that asks for it.
    let long = |s: &&blockprobe_tests::Stall| s.duration_ns >= nanos(stopped) * 9 / 10;
    let stall = ctx.wait_for("the stall of the stopped loop", || {
        bp.stalls(pid).iter().find(long).cloned()
    });
    ctx.ensure(
        stall.cause == "stopped"
            && stall.culprit.is_none()
            && stall.stack.is_empty()
            && stall.syscall.is_none(),
        || format!("not a stall of a stopped loop: {stall:#?}"),
    );
    let stopped_ns = stall.causes.get("stopped").copied().unwrap_or(0);
    ctx.ensure(stopped_ns >= nanos(stopped) * 9 / 10, || {
        format!("the stop is not `stopped` time: {stall:#?}")
    });
    let stuck: Vec<Value> = (bp.events().into_iter())
        .filter(|e| kind(e) == "stuck")
        .collect();
    ctx.ensure(stuck.is_empty(), || {
        format!("a stopped loop was said stuck: {stuck:?}")
    });
    bp.send("GO");
    ctx.wait_finished(&bp);
    let status = ctx.quit(&bp);
    ctx.ensure(status.success(), || {
        format!("blockprobe run exited with {status}")
    });
    let report = read_json(&ctx, &report);
    let functions: Vec<&str> = (report["functions"].as_array().expect("functions").iter())
        .filter_map(|f| f["function"].as_str())
        .collect();
    ctx.ensure(functions == ["<stopped>"], || {
        format!("the stop was blamed on {functions:?}, not `<stopped>` alone")
    });
}

/// The mount point of the cgroup hierarchy of file system type `cgroup2`, or of the v1
/// hierarchy with controller `freezer` (`fs` names either).
fn cgroup_root(fs: &str) -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (dir, fstype, options) = (fields.get(1)?, fields.get(2)?, fields.get(3)?);
        let wanted = match fs {
            "cgroup2" => *fstype == "cgroup2",
            controller => *fstype == "cgroup" && options.split(',').any(|o| o == controller),
        };
        let dir = PathBuf::from(dir);
        (wanted && dir.join("cgroup.procs").exists()).then_some(dir)
    })
}

/// A cgroup of its own for one process, for the test's life: the process goes back to
/// the hierarchy's root cgroup, and the cgroup is removed, when dropped.
struct Cgroup<'a> {
    ctx: &'a CtxRef,
    root: PathBuf,
    dir: PathBuf,
    pid: u32,
}

impl<'a> Cgroup<'a> {
    fn new(ctx: &'a CtxRef, root: &Path, pid: u32) -> Self {
        let dir = root.join(format!("blockprobe-test-{pid}"));
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| ctx.fail(format!("creating {}: {e}", dir.display())));
        let cgroup = Cgroup {
            ctx,
            root: root.to_path_buf(),
            dir,
            pid,
        };
        cgroup.set("cgroup.procs", &pid.to_string());
        cgroup
    }

    fn set(&self, file: &str, value: &str) {
        let path = self.dir.join(file);
        std::fs::write(&path, value).unwrap_or_else(|e| {
            self.ctx
                .fail(format!("writing {value:?} to {}: {e}", path.display()))
        });
    }
}

impl Drop for Cgroup<'_> {
    fn drop(&mut self) {
        let _ = std::fs::write(self.root.join("cgroup.procs"), self.pid.to_string());
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// The interpreter's library, as the traced process maps it, has a FIFO bind-mounted
/// over it in the process's mount namespace (the path in `/proc/PID/maps` is unchanged
/// and not `(deleted)`): `trace -p` never opens the FIFO (an open that would block for
/// ever), reads the running image, attaches and reports the stall.
#[test]
fn a_fifo_over_the_interpreter_is_never_opened() {
    swapped_interpreter(|ctx, pid, lib_dir, spare| {
        mount_in(ctx, pid, &spare.join(FIFO), &lib_dir.join(LIBPYTHON));
    });
}

/// The directory of the interpreter's library is covered, in the process's mount
/// namespace, by one where the library is an absolute symlink to a FIFO: resolved
/// against blockprobe's root it would block for ever; `trace -p` attaches and reports
/// the stall.
#[test]
fn an_absolute_symlink_over_the_interpreter_is_never_followed() {
    swapped_interpreter(|ctx, pid, lib_dir, spare| {
        let cover = spare.join("cover");
        std::fs::create_dir(&cover).expect("cover directory");
        std::os::unix::fs::symlink(spare.join(FIFO), cover.join(LIBPYTHON)).expect("symlink");
        mount_in(ctx, pid, &cover, lib_dir);
    });
}

/// The library file of pyenv 3.11.7.
const LIBPYTHON: &str = "libpython3.11.so.1.0";
/// A FIFO without a writer in the spare directory of [`swapped_interpreter`].
const FIFO: &str = "fifo";

/// Runs sleep_in_coroutine.py on pyenv 3.11.7 with its library copied to a directory of
/// its own, in a mount namespace of its own; once it is READY, `swap(ctx, pid, lib_dir,
/// spare_dir)` changes what the library's path shows in that namespace (`spare_dir`
/// holds a [`FIFO`]); then `trace -p` must attach and report its stall as usual.
fn swapped_interpreter(swap: impl FnOnce(&CtxRef, u32, &Path, &Path)) {
    require_root();
    let python = Python::pyenv("3.11.7");
    let lib_dir = tempfile::tempdir().expect("temporary directory");
    let spare = tempfile::tempdir().expect("temporary directory");
    let lib = python.path.parent().expect("bin").parent().expect("prefix");
    std::fs::copy(
        lib.join("lib").join(LIBPYTHON),
        lib_dir.path().join(LIBPYTHON),
    )
    .expect("copying libpython");
    let ctx = Ctx::new();
    let script = script("sleep_in_coroutine.py");
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "--"])
        .arg(&python.path)
        .arg(&script)
        .env("LD_LIBRARY_PATH", lib_dir.path());
    python_env(&mut cmd);
    wait_for_go(&mut cmd);
    let py = ctx.spawn("sleep_in_coroutine.py in a mount namespace", &mut cmd);
    let pid = ctx.wait_ready(&py).pid.expect("READY has a pid");
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    ctx.ensure(
        maps.contains(
            &lib_dir
                .path()
                .join(LIBPYTHON)
                .to_string_lossy()
                .into_owned(),
        ),
        || format!("the script does not map the copied library:\n{maps}"),
    );
    nix::unistd::mkfifo(&spare.path().join(FIFO), nix::sys::stat::Mode::S_IRWXU)
        .unwrap_or_else(|e| ctx.fail(format!("mkfifo: {e}")));
    swap(&ctx, pid, lib_dir.path(), spare.path());
    let bp = ctx.spawn("blockprobe trace -p", &mut Blockprobe::trace(&[pid]));
    ctx.drive_traced_sleep(&bp, &py, &python, &script);
    ctx.stop_trace(&bp);
}

/// Bind-mounts `source` over `target` in the mount namespace of process `pid`.
fn mount_in(ctx: &CtxRef, pid: u32, source: &Path, target: &Path) {
    let out = Command::new("nsenter")
        .args([
            "--target",
            &pid.to_string(),
            "--mount",
            "--",
            "mount",
            "--bind",
        ])
        .arg(source)
        .arg(target)
        .output()
        .unwrap_or_else(|e| ctx.fail(format!("nsenter: {e}")));
    ctx.ensure(out.status.success(), || {
        format!(
            "mounting {} over {}: {}",
            source.display(),
            target.display(),
            String::from_utf8_lossy(&out.stderr)
        )
    });
}

/// asgiref's `async_to_sync`: a thread and a loop per call, 20 calls. Each call's loop
/// is found (a `loop` event) and its stall reported, blamed on `handler`; each thread's
/// exit is noticed (a `loop_gone` event): its sampler, evidence and gauge go with it.
#[test]
fn short_lived_loop_threads_leave_nothing_behind() {
    require_root();
    let python = Python::pyenv("3.11.7");
    let ctx = Ctx::new();
    let bp = ctx.spawn(
        "blockprobe run short_lived_loops.py",
        &mut Blockprobe::run(&python, &script("short_lived_loops.py"), &[], &[]).steady(),
    );
    let (_, pid) = ctx.wait_live(&bp, "short_lived_loops.py");
    bp.send("GO");
    ctx.wait_finished(&bp);
    let calls: Vec<u32> = (bp.texts().iter())
        .filter_map(|t| t.strip_prefix("CALL ")?.parse().ok())
        .collect();
    ctx.ensure(calls.len() == 20, || {
        format!("expected 20 calls, got {calls:?}")
    });
    let tids_of = |event: &str| -> Vec<u32> {
        (bp.events_of(event, pid).iter())
            .filter_map(|e| e["tid"].as_u64())
            .map(|t| t as u32)
            .collect()
    };
    ctx.wait_for(
        "a `loop` and a `loop_gone` event for every call's thread",
        || {
            let (found, gone) = (tids_of("loop"), tids_of("loop_gone"));
            calls
                .iter()
                .all(|t| found.contains(t) && gone.contains(t))
                .then_some(())
        },
    );
    // A loop that blocks within milliseconds of its first poll may block before it is
    // classified (the old binary misses such a stall in some runs too): most calls'
    // stalls, and every one found blamed on `handler`.
    let stalls: Vec<_> = (bp.stalls(pid).into_iter())
        .filter(|s| calls.contains(&s.tid))
        .collect();
    ctx.ensure(stalls.len() >= 15, || {
        format!(
            "only {} of 20 calls' stalls reported: {stalls:#?}",
            stalls.len()
        )
    });
    for stall in &stalls {
        let culprit = stall.culprit.as_ref().map(|f| f.function.as_str());
        ctx.ensure(culprit == Some("handler"), || {
            format!("a call's stall not blamed on handler: {stall:#?}")
        });
    }
    let status = ctx.quit(&bp);
    ctx.ensure(status.success(), || {
        format!("blockprobe run exited with {status}")
    });
}

/// Under `run`, a loop process execs into another Python whose loop is CPU-bound: the
/// new image's loop thread (the same tid, the pid) gets a CPU sampler again, so its CPU
/// stalls are blamed on the functions that spun, from timer samples.
#[test]
fn exec_into_python_keeps_cpu_samples() {
    require_root();
    let ctx = Ctx::new();
    let python = Python::pyenv("3.11.7");
    let next = script("cause_cpu.py");
    let bp = ctx.spawn(
        "blockprobe run exec_into.py -- cause_cpu.py",
        &mut Blockprobe::run_exec_into(&python, &next),
    );
    let (_, pid) = ctx.wait_live(&bp, "cause_cpu.py");
    bp.send("GO");
    ctx.wait_event(&bp, "detached", pid);
    ctx.wait_for("the new image's `loop` event", || {
        (bp.events_of("loop", pid).len() == 2).then_some(())
    });
    bp.send("GO");
    ctx.wait_finished(&bp);
    let stalls = ctx.wait_stalls(&bp, pid, 2);
    for stall in &stalls {
        let culprit = stall.culprit.as_ref().map(|f| f.function.as_str());
        ctx.ensure(
            stall.cpu_samples > 0 && matches!(culprit, Some("hash_password" | "spin")),
            || format!("a CPU stall of the new image without samples: {stall:#?}"),
        );
    }
    ctx.quit_ok(&bp, "");
}

/// One stall holding 300 blocking calls, each 126 frames deep in functions with
/// 4,000-character names (about 1 MB of names per call): the evidence kept per thread
/// is bounded by bytes, so blockprobe's peak RSS stays under 64 MiB; the stall is
/// reported, blamed on `sleeper`.
#[test]
fn evidence_of_huge_stacks_is_bounded_by_bytes() {
    let python = Python::pyenv("3.11.7");
    let ran = run_scenario(&Scenario {
        python: &python,
        script: "inflate.py",
        script_args: &[],
        blockprobe_args: &[],
        stalls: 1,
    });
    ran.expect_success();
    let stall = ran.only_stall();
    let culprit = stall.culprit.as_ref().map(|f| f.function.as_str());
    ran.ctx.ensure(culprit == Some("sleeper"), || {
        format!("expected the stall blamed on sleeper, got {culprit:?}")
    });
    eprintln!("blockprobe's peak RSS: {} KiB", ran.bp_peak_rss_kib);
    ran.ctx.ensure(ran.bp_peak_rss_kib < 64 * 1024, || {
        format!("blockprobe's peak RSS is {} KiB", ran.bp_peak_rss_kib)
    });
}
