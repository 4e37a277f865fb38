//! Issue 3's acceptance tests: every kind of blocking call gets the right cause, culprit
//! and duration.
//!
//! Each scenario (`tests/scripts/cause_*.py`, and `sleep_in_coroutine.py`) blocks its loop
//! once per case, timing the blocking stretch itself. For every stall the test demands:
//!
//! - its duration within [`BELOW`] under and the larger of [`ABOVE`] and 5% (plus its
//!   run-queue time) over the script's measurement (why a stall is never shorter and only
//!   a little longer: see the harness's crate docs; the 5% is issue 3's own tolerance, for
//!   the longest stretches);
//! - its main `cause` and `syscall`, and its culprit (the first-party function to blame);
//! - `causes` adding up to its duration within 1 ms;
//! - no other stall (the controls: the scripts' set-up, their helper threads and their
//!   idle loops must not be reported).
//!
//! Each runs on every interpreter of the scenario matrix (`python_matrix!`: pyenv 3.11.7,
//! Debian's stripped 3.11 and sid 3.14 on every run, the others in the full matrix).

use std::ffi::OsString;
use std::time::Duration;

use blockprobe_tests::{
    ABOVE, BELOW, CAUSE_SLACK, Python, Ran, Stall, WALL_SLACK, drive_scenario, marker_line, nanos,
    pydeps, python_matrix, require_root, run_command, script, workspace_root,
};

python_matrix!(
    sleep,
    requests_get,
    pipe_read,
    selector_wait,
    fifo_open,
    fsync,
    thread_lock,
    gil_hog,
    gil_hog_high_threshold,
    subprocess_wait,
    cpu_bound,
    runqueue,
    many_short_sleeps,
);

/// How far `causes` may add up from the stall's duration.
const SUM_SLACK: Duration = Duration::from_millis(1);

/// The least run-queue share of a CPU-bound stall sharing its CPU with a busy loop: the
/// scheduler (CFS, EEVDF) shares one CPU about evenly between two runnable tasks of equal
/// weight, so the loop thread should wait about half the stall; 20% leaves room for the
/// loop thread's sleeper credit (it idled in `epoll_wait` before) and for timing noise,
/// while staying far above what an idle CPU gives (≈ 0).
const MIN_RUNQUEUE_SHARE: f64 = 0.20;

/// Runs `script` under `blockprobe run` through the whole protocol (like
/// `blockprobe_tests::run_scenario`), with `env` added to the script's environment, and
/// waits for `stalls` stalls.
#[track_caller]
fn run_case(python: &Python, name: &str, env: &[(&str, OsString)], stalls: usize) -> Ran {
    run_case_with(python, name, env, &[], stalls)
}

/// [`run_case`] with blockprobe options `opts`.
#[track_caller]
fn run_case_with(
    python: &Python,
    name: &str,
    env: &[(&str, OsString)],
    opts: &[&str],
    stalls: usize,
) -> Ran {
    require_root();
    let mut cmd = run_command(python, &script(name), &[], opts);
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    let ran = drive_scenario(python, name, &mut cmd, stalls);
    ran.expect_success();
    let all = ran.stalls();
    ran.ctx.ensure(all.len() == stalls, || {
        format!(
            "expected exactly {stalls} stall(s) for pid {} (nothing else blocks): {all:#?}",
            ran.pid
        )
    });
    ran
}

/// What one stall must be.
struct Expect<'a> {
    /// The script's `DONE` name for the blocking stretch.
    measured: &'a str,
    cause: &'a str,
    /// `None`: no syscall (CPU-bound stalls).
    syscall: Option<&'a str>,
    /// The culprit: the function, and its line (`None`: anywhere in the function).
    culprit: &'a str,
    culprit_line: Option<u32>,
}

/// The checks every stall gets (see the module docs); returns the measured duration.
#[track_caller]
fn check(ran: &Ran, stall: &Stall, expect: &Expect<'_>) -> u64 {
    let ctx = &ran.ctx;
    let measured = ran.measured(expect.measured);
    let low = measured.saturating_sub(nanos(BELOW));
    let high = measured + nanos(ABOVE).max(measured / 20) + stall.runqueue_ns() + ctx.stolen_ns();
    ctx.ensure((low..=high).contains(&stall.duration_ns), || {
        format!(
            "stall lasted {} ns; the script measured {measured} ns for `{}`, so it must be \
             within [{low}, {high}] ns: {stall:#?}",
            stall.duration_ns, expect.measured
        )
    });
    ctx.ensure(stall.cause == expect.cause, || {
        format!(
            "stall cause is {:?}, expected {:?}: {stall:#?}",
            stall.cause, expect.cause
        )
    });
    ctx.ensure(stall.syscall.as_deref() == expect.syscall, || {
        format!(
            "stall syscall is {:?}, expected {:?}: {stall:#?}",
            stall.syscall, expect.syscall
        )
    });
    let sum: u64 = stall.causes.values().sum();
    ctx.ensure(sum.abs_diff(stall.duration_ns) <= nanos(SUM_SLACK), || {
        format!(
            "causes add up to {sum} ns, the stall lasted {} ns: {stall:#?}",
            stall.duration_ns
        )
    });
    let largest = stall.causes.values().copied().max().unwrap_or(0);
    ctx.ensure(
        stall.causes.get(stall.cause.as_str()) == Some(&largest),
        || format!("the main cause is not the largest share: {stall:#?}"),
    );
    let file = ran.script.to_string_lossy();
    ctx.ensure(
        stall.culprit.as_ref().is_some_and(|c| {
            c.function == expect.culprit
                && c.file == file
                && expect.culprit_line.is_none_or(|line| c.line == line)
        }),
        || {
            format!(
                "culprit is {:?}, expected {} in {file} (line {:?}): {stall:#?}",
                stall.culprit, expect.culprit, expect.culprit_line
            )
        },
    );
    let (after, before) = ran.window_unix_ns;
    let slack = nanos(WALL_SLACK);
    let end = stall.start_unix_ns + stall.duration_ns;
    ctx.ensure(
        stall.start_unix_ns + slack >= after && end <= before + slack,
        || {
            format!(
                "stall [{}, {end}] (Unix ns) is not within [{after}, {before}] (± {slack} ns), \
                 when it happened: {stall:#?}",
                stall.start_unix_ns
            )
        },
    );
    eprintln!(
        "{}: measured {:.1} ms, stall {:.1} ms, cause {}, causes {:?}",
        expect.measured,
        measured as f64 / 1e6,
        stall.duration_ns as f64 / 1e6,
        stall.cause,
        stall.causes
    );
    measured
}

/// `causes[cause]`: at least `nominal` (what the script asked for) less [`CAUSE_SLACK`].
#[track_caller]
fn check_blocked_at_least(ran: &Ran, stall: &Stall, cause: &str, nominal: Duration) {
    let blocked = stall.causes.get(cause).copied().unwrap_or(0);
    ran.ctx
        .ensure(blocked + nanos(CAUSE_SLACK) >= nanos(nominal), || {
            format!(
                "causes[{cause:?}] is {blocked} ns, expected at least {} ns less {} ns: \
                 {stall:#?}",
                nanos(nominal),
                nanos(CAUSE_SLACK)
            )
        });
}

/// The line of `script` marked `# <marker>`.
fn line(ran: &Ran, marker: &str) -> u32 {
    marker_line(&ran.script, marker)
}

/// The `HOG <name> <id> …` line a script printed: the id.
#[track_caller]
fn hog_id(ran: &Ran, name: &str) -> u32 {
    ran.bp
        .texts()
        .iter()
        .find_map(|text| {
            let words: Vec<&str> = text.split_whitespace().collect();
            match words.as_slice() {
                ["HOG", n, id, ..] if *n == name => id.parse().ok(),
                _ => None,
            }
        })
        .unwrap_or_else(|| {
            ran.ctx
                .fail(format!("the script printed no `HOG {name}` line"))
        })
}

/// `time.sleep(0.2)` in a coroutine: `sleep` in `clock_nanosleep` (`select()` before
/// 3.11), culprit the coroutine.
fn sleep(python: &Python) {
    let ran = run_case(python, "sleep_in_coroutine.py", &[], 1);
    let stall = ran.only_stall();
    check(
        &ran,
        &stall,
        &Expect {
            measured: "handler",
            cause: "sleep",
            syscall: Some(python.sleep_syscall()),
            culprit: "handler",
            culprit_line: Some(line(&ran, "BLOCK handler")),
        },
    );
    check_blocked_at_least(&ran, &stall, "sleep", Duration::from_millis(200));
}

/// `requests.get` on a local server that answers after 150 ms, with `requests` installed
/// in a `site-packages` directory: `io` in `poll` (a socket with a timeout, as requests
/// uses here, waits in poll() before it reads), culprit the coroutine (the
/// innermost first-party frame), the innermost frame in the standard library's socket or
/// http code.
fn requests_get(python: &Python) {
    // An installed package lives in site-packages: give the test's dependencies that name.
    let site = tempfile::tempdir().expect("a temporary directory");
    let packages = site.path().join("site-packages");
    std::os::unix::fs::symlink(pydeps(), &packages).expect("symlink site-packages");
    let ran = run_case(
        python,
        "cause_requests.py",
        &[("PYTHONPATH", packages.clone().into_os_string())],
        1,
    );
    let stall = ran.only_stall();
    check(
        &ran,
        &stall,
        &Expect {
            measured: "fetch_profile",
            cause: "io",
            syscall: Some("poll"),
            culprit: "fetch_profile",
            culprit_line: Some(line(&ran, "BLOCK fetch_profile")),
        },
    );
    check_blocked_at_least(&ran, &stall, "io", Duration::from_millis(150));
    let leaf = stall.stack.first();
    ran.ctx.ensure(
        leaf.is_some_and(|f| f.file.ends_with("/socket.py") || f.file.ends_with("/http/client.py")),
        || format!("the innermost frame is not in socket.py or http/client.py: {stall:#?}"),
    );
    let packages = packages.to_string_lossy();
    ran.ctx.ensure(
        stall
            .stack
            .iter()
            .any(|f| f.file.starts_with(&*packages) && f.file.contains("/requests/")),
        || format!("the stack should go through requests (in {packages}): {stall:#?}"),
    );
}

/// `os.read` of a pipe whose writer (a thread) writes 150 ms later: `io` in `read`.
fn pipe_read(python: &Python) {
    let ran = run_case(python, "cause_pipe.py", &[], 1);
    let stall = ran.only_stall();
    check(
        &ran,
        &stall,
        &Expect {
            measured: "read_message",
            cause: "io",
            syscall: Some("read"),
            culprit: "read_message",
            culprit_line: Some(line(&ran, "BLOCK read_message")),
        },
    );
    ran.ctx.check_fd_kind(&stall, Some("pipe"));
    check_blocked_at_least(&ran, &stall, "io", Duration::from_millis(150));
}

/// A coroutine's own sync selector (epoll, the loop's poller's syscall) waiting 150 ms
/// for a pipe: a blocking call inside the stall, not the loop coming back to its poller:
/// `io` in `epoll_wait`.
fn selector_wait(python: &Python) {
    let ran = run_case(python, "cause_selector.py", &[], 1);
    let stall = ran.only_stall();
    check(
        &ran,
        &stall,
        &Expect {
            measured: "wait_for_device",
            cause: "io",
            syscall: Some("epoll_wait"),
            culprit: "wait_for_device",
            culprit_line: Some(line(&ran, "BLOCK wait_for_device")),
        },
    );
    // An epoll fd is no file, socket or pipe: the call is named, its fd is not.
    ran.ctx.check_fd_kind(&stall, None);
    check_blocked_at_least(&ran, &stall, "io", Duration::from_millis(150));
}

/// `os.open` of a FIFO whose writer (a thread) opens it 150 ms later: `io` in `openat`.
fn fifo_open(python: &Python) {
    let ran = run_case(python, "cause_fifo.py", &[], 1);
    let stall = ran.only_stall();
    check(
        &ran,
        &stall,
        &Expect {
            measured: "open_feed",
            cause: "io",
            syscall: Some("openat"),
            culprit: "open_feed",
            culprit_line: Some(line(&ran, "BLOCK open_feed")),
        },
    );
    check_blocked_at_least(&ran, &stall, "io", Duration::from_millis(150));
}

/// `os.fsync` of a file on the workspace's disk (`target/`: never tmpfs, where fsync
/// returns at once) into which 64 MB were written before the loop started (writing is
/// CPU, copying into the page cache, and faster than the device: in the stall it would
/// outweigh the fsync). The fsync waits for the device in an uninterruptible sleep inside
/// the syscall: `io` in `fsync`. The kernel's own writeback work inside fsync (walking
/// and submitting 64 MB of dirty pages) is on-CPU time, and on a fast virtual disk it can
/// outweigh the wait (36 ms of CPU against 15 ms of `io` was seen): then the stall says
/// `cpu`, still in `fsync`, with its `io` share; both are the truth and both pass.
fn fsync(python: &Python) {
    let dir = tempfile::Builder::new()
        .prefix("causes-fsync-")
        .tempdir_in(workspace_root().join("target"))
        .expect("a directory under target/");
    let ran = run_case(
        python,
        "cause_fsync.py",
        &[("BPTEST_DISK_DIR", dir.path().as_os_str().to_owned())],
        1,
    );
    let stall = ran.only_stall();
    let waited = stall.causes.get("io").copied().unwrap_or(0);
    ran.ctx.ensure(waited >= 1_000_000, || {
        format!("an fsync of 64 MB should wait for the device (io) at least 1 ms: {stall:#?}")
    });
    check(
        &ran,
        &stall,
        &Expect {
            measured: "save_snapshot",
            cause: if stall.cause == "cpu" { "cpu" } else { "io" },
            syscall: Some("fsync"),
            culprit: "save_snapshot",
            culprit_line: Some(line(&ran, "BLOCK save_snapshot")),
        },
    );
    ran.ctx.check_fd_kind(&stall, Some("file"));
}

/// A `threading.Lock` another thread holds for 150 more ms: `lock` in `futex`.
fn thread_lock(python: &Python) {
    let ran = run_case(python, "cause_lock.py", &[], 1);
    let stall = ran.only_stall();
    check(
        &ran,
        &stall,
        &Expect {
            measured: "update_cache",
            cause: "lock",
            syscall: Some("futex"),
            culprit: "update_cache",
            culprit_line: Some(line(&ran, "BLOCK update_cache")),
        },
    );
    check_blocked_at_least(&ran, &stall, "lock", Duration::from_millis(150));
}

/// Another thread holds the GIL in one long `re.match` (≥ 150 ms) while the loop sleeps
/// 20 ms: `gil`, `gil_holder_tid` the hog thread's native id (3.11+), culprit the hog thread's
/// function `crunch`, at its `re.match` line; `stack` the loop's own (in `handle_ping`),
/// `gil_holder_stack` the hog's.
fn gil_hog(python: &Python) {
    check_gil_hog(&run_case(python, "cause_gil.py", &[], 1), python);
}

/// [`gil_hog`] at `--threshold 100ms`: the interpreter waits for the GIL in slices of
/// its 5 ms switch interval, each far below the threshold; the holder is still found.
fn gil_hog_high_threshold(python: &Python) {
    let ran = run_case_with(python, "cause_gil.py", &[], &["--threshold", "100ms"], 1);
    check_gil_hog(&ran, python);
}

/// The checks of [`gil_hog`].
#[track_caller]
fn check_gil_hog(ran: &Ran, python: &Python) {
    let stall = ran.only_stall();
    let measured = check(
        ran,
        &stall,
        &Expect {
            measured: "handle_ping",
            cause: "gil",
            syscall: Some("futex"),
            culprit: "crunch",
            culprit_line: Some(line(ran, "HOG crunch")),
        },
    );
    let hog = hog_id(ran, "crunch");
    // blockprobe reads the holder's `PyThreadState.native_thread_id` only on 3.11+ (its
    // layouts for 3.9/3.10 do not record the field): there, no tid rather than a wrong one.
    let expected = (python.major_minor() >= (3, 11)).then_some(hog);
    ran.ctx.ensure(stall.gil_holder_tid == expected, || {
        format!(
            "gil_holder_tid is {:?}, expected {expected:?} (the hog thread is {hog}): \
             {stall:#?}",
            stall.gil_holder_tid
        )
    });
    // The stall's stack is the loop's own, where it waited; the holder's is beside it.
    let innermost = |stack: &[blockprobe_tests::Frame]| stack.first().map(|f| f.function.clone());
    ran.ctx.ensure(
        innermost(&stall.stack).as_deref() == Some("handle_ping")
            && innermost(&stall.gil_holder_stack).as_deref() == Some("crunch"),
        || format!("expected the loop in handle_ping, the holder in crunch: {stall:#?}"),
    );
    // The loop slept 20 ms of it and waited for the GIL for most of the rest.
    let gil = stall.causes.get("gil").copied().unwrap_or(0);
    ran.ctx.ensure(gil * 2 >= measured, || {
        format!("causes[gil] is {gil} ns, less than half the {measured} ns stall: {stall:#?}")
    });
}

/// 40 `time.sleep(0.0005)` calls from `fetch_row`, each below the evidence minimum
/// (1 ms at the tests' 10 ms threshold): `sleep`, blamed on `fetch_row` from the calls
/// added up, `short_calls` counting them (but the last sum below the minimum, and any
/// call that took 1 ms or more) and their time within the stall's.
fn many_short_sleeps(python: &Python) {
    let ran = run_case(python, "cause_short_calls.py", &[], 1);
    let stall = ran.only_stall();
    check(
        &ran,
        &stall,
        &Expect {
            measured: "load_page",
            cause: "sleep",
            syscall: Some(python.sleep_syscall()),
            culprit: "fetch_row",
            culprit_line: Some(line(&ran, "BLOCK fetch_row")),
        },
    );
    let short = stall.short_calls.unwrap_or_else(|| {
        ran.ctx.fail(format!(
            "no short_calls in a stall of short sleeps: {stall:#?}"
        ))
    });
    // Each report sums calls until they reach 1 ms: less than 1 ms of them (two calls)
    // is left at the end. A call slowed past 1 ms by a busy machine is a long one.
    ran.ctx.ensure((10..=40).contains(&short.calls), || {
        format!(
            "short_calls counts {} calls, expected 10..=40: {stall:#?}",
            short.calls
        )
    });
    let sleep = stall.causes.get("sleep").copied().unwrap_or(0);
    ran.ctx.ensure(
        short.total_ns >= short.calls as u64 * 500_000 && short.total_ns <= stall.duration_ns,
        || {
            format!(
                "short calls took {} ns (sleep {sleep} ns): {stall:#?}",
                short.total_ns
            )
        },
    );
}

/// `subprocess.run(["sleep", "0.2"])`: `wait` in `wait4`, culprit the coroutine.
fn subprocess_wait(python: &Python) {
    let ran = run_case(python, "cause_subprocess.py", &[], 1);
    let stall = ran.only_stall();
    check(
        &ran,
        &stall,
        &Expect {
            measured: "run_tool",
            cause: "wait",
            syscall: Some("wait4"),
            culprit: "run_tool",
            culprit_line: Some(line(&ran, "BLOCK run_tool")),
        },
    );
    check_blocked_at_least(&ran, &stall, "wait", Duration::from_millis(200));
}

/// Checks the CPU samples of a `cpu`/`runqueue` stall: at least half of the 997 Hz
/// sampler's expected count over its on-CPU time.
#[track_caller]
fn check_samples(ran: &Ran, stall: &Stall) {
    let on_cpu = stall.causes.get("cpu").copied().unwrap_or(0);
    let expected = on_cpu as f64 * 997.0 / 1e9;
    ran.ctx
        .ensure(f64::from(stall.cpu_samples) >= expected / 2.0, || {
            format!(
                "{} CPU samples for {on_cpu} ns on CPU, expected about {expected:.0}: \
                 {stall:#?}",
                stall.cpu_samples
            )
        });
}

/// `hashlib.pbkdf2_hmac` (one C call) sized to about 200 ms, then a pure-Python loop
/// spinning 200 ms: two `cpu` stalls without a syscall, culprits the function making the
/// C call (at that line) and the spinning function (anywhere in it).
fn cpu_bound(python: &Python) {
    let ran = run_case(python, "cause_cpu.py", &[], 2);
    let stalls = ran.stalls();
    let expects = [
        Expect {
            measured: "hash_password",
            cause: "cpu",
            syscall: None,
            culprit: "hash_password",
            culprit_line: Some(line(&ran, "BLOCK hash_password")),
        },
        Expect {
            measured: "crunch_numbers",
            cause: "cpu",
            syscall: None,
            culprit: "spin",
            culprit_line: None,
        },
    ];
    for (stall, expect) in stalls.iter().zip(&expects) {
        check(&ran, stall, expect);
        check_samples(&ran, stall);
    }
    let spin = stalls[1].culprit.as_ref().map_or(0, |f| f.line);
    let (first, last) = (line(&ran, "FIRST spin"), line(&ran, "LAST spin"));
    ran.ctx.ensure((first..=last).contains(&spin), || {
        format!(
            "the spin culprit's line {spin} is not in spin() (lines {first}..={last}): {:#?}",
            stalls[1]
        )
    });
}

/// A fixed amount of pure-Python work (about 100 ms alone) while a busy loop runs on the
/// same CPU: culprit `busy_work`, and a run-queue share of at least
/// [`MIN_RUNQUEUE_SHARE`] of the stall.
fn runqueue(python: &Python) {
    let ran = run_case(python, "cause_runqueue.py", &[], 1);
    let stall = ran.only_stall();
    let main = stall.cause.clone();
    ran.ctx.ensure(main == "cpu" || main == "runqueue", || {
        format!("a CPU-bound stall's main cause is cpu or runqueue: {stall:#?}")
    });
    check(
        &ran,
        &stall,
        &Expect {
            measured: "compute_report",
            cause: &main,
            syscall: None,
            culprit: "busy_work",
            culprit_line: Some(line(&ran, "BLOCK busy_work")),
        },
    );
    check_samples(&ran, &stall);
    let queued = stall.causes.get("runqueue").copied().unwrap_or(0);
    let share = queued as f64 / stall.duration_ns as f64;
    eprintln!("runqueue share {:.1}%", share * 100.0);
    ran.ctx.ensure(share >= MIN_RUNQUEUE_SHARE, || {
        format!(
            "runqueue is {:.1}% of the stall, expected at least {:.0}% with a busy loop on \
             the same CPU: {stall:#?}",
            share * 100.0,
            MIN_RUNQUEUE_SHARE * 100.0
        )
    });
    let cpu = stall.causes.get("cpu").copied().unwrap_or(0);
    ran.ctx
        .ensure(cpu + queued + nanos(SUM_SLACK) >= stall.duration_ns, || {
            format!("a CPU-bound stall is all cpu and runqueue: {stall:#?}")
        });
}
