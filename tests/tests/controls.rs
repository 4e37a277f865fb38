//! (d) Waits that do not block the loop are not stalls.

use std::path::Path;
use std::time::Duration;

use blockprobe_tests::{Python, Ran, Scenario, nanos, python_matrix, read_json, run_scenario};
use serde_json::json;

python_matrix!(controls_do_not_stall);

/// `await asyncio.sleep(0.2)`, `await loop.run_in_executor(None, time.sleep, 0.2)` and
/// `await asyncio.to_thread(requests.get, url)` (a local server answering after 200 ms)
/// give no stall at a 10 ms threshold. The script ends with a deliberate 50 ms
/// `time.sleep` in `marker()`: it must be the only stall, which also proves tracing was
/// live all along. Meanwhile a worker thread polls with sync `selectors` (epoll, 5 ms
/// waits): it is never taken for a loop thread (no `loop` event for it; the report's
/// loop threads are the main loop's alone) and has no stall.
fn controls_do_not_stall(python: &Python) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let report = dir.path().join("report.json");
    let ran = run_scenario(&Scenario {
        python,
        script: "controls.py",
        script_args: &[],
        blockprobe_args: &["-o", &report.to_string_lossy()],
        stalls: 1,
    });
    ran.expect_success();
    // The controls really waited: 200 ms each, as the script measured.
    for control in ["asyncio_sleep", "executor_sleep", "to_thread_requests"] {
        let measured = ran.measured(control);
        ran.ctx
            .ensure(measured >= nanos(Duration::from_millis(195)), || {
                format!("control {control} took only {measured} ns")
            });
    }
    // Only the scenario is under test: asyncio.run's shutdown after QUIT joins the default
    // executor's thread, which under load is a real (GIL/lock) stall of its own.
    let (after, before) = ran.window_unix_ns;
    let stalls: Vec<_> = ran
        .stalls()
        .into_iter()
        .filter(|s| (after..=before).contains(&s.start_unix_ns))
        .collect();
    ran.ctx.ensure(
        stalls.len() == 1
            && stalls[0].culprit.as_ref().map(|f| f.function.as_str()) == Some("marker"),
        || format!("the only stall should be the marker's, got {stalls:#?}"),
    );
    ran.check_stall(
        &stalls[0],
        "marker",
        "sleep",
        python.sleep_syscall(),
        Duration::from_millis(50),
    );
    check_selector_worker(&ran, &report);
}

/// The selector worker of controls.py polled while traced, and is neither a loop thread
/// nor stalled, in the live stream and in the report (`report`).
fn check_selector_worker(ran: &Ran, report: &Path) {
    let ctx = &ran.ctx;
    let worker = ran
        .bp
        .texts()
        .iter()
        .find_map(|t| t.strip_prefix("WORKER selector ")?.parse::<u32>().ok())
        .unwrap_or_else(|| ctx.fail("the script printed no `WORKER selector` line"));
    let polls = ran.measured("selector_polls");
    ctx.ensure(polls >= 20, || {
        format!("the selector worker polled only {polls} times during the scenario")
    });
    let loops: Vec<u32> = (ran.bp.events_of("loop", ran.pid).iter())
        .filter_map(|e| e["tid"].as_u64().and_then(|t| u32::try_from(t).ok()))
        .collect();
    ctx.ensure(loops == [ran.pid], || {
        format!(
            "the only loop thread should be the main one ({}), the selector worker is {worker}; \
             `loop` events for {loops:?}",
            ran.pid
        )
    });
    let report = read_json(ctx, report);
    let loop_threads = report["processes"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["pid"] == ran.pid))
        .map(|p| p["loop_threads"].clone());
    ctx.ensure(loop_threads == Some(json!([ran.pid])), || {
        format!(
            "the report's loop threads should be [{}] (the selector worker is {worker}): {loop_threads:?}",
            ran.pid
        )
    });
    let stalls: Vec<_> = ran
        .stalls()
        .into_iter()
        .filter(|s| s.tid == worker)
        .collect();
    ctx.ensure(stalls.is_empty(), || {
        format!("the selector worker {worker} has stalls: {stalls:#?}")
    });
}
