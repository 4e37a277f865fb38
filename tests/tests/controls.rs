//! (d) Waits that do not block the loop are not stalls.

use blockprobe_tests::{Python, Scenario, nanos, python_matrix, run_scenario};
use std::time::Duration;

python_matrix!(controls_do_not_stall);

/// `await asyncio.sleep(0.2)`, `await loop.run_in_executor(None, time.sleep, 0.2)` and
/// `await asyncio.to_thread(requests.get, url)` (a local server answering after 200 ms)
/// give no stall at a 10 ms threshold. The script ends with a deliberate 50 ms
/// `time.sleep` in `marker()`: it must be the only stall, which also proves tracing was
/// live all along.
fn controls_do_not_stall(python: &Python) {
    let ran = run_scenario(&Scenario {
        python,
        script: "controls.py",
        script_args: &[],
        blockprobe_args: &[],
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
}
