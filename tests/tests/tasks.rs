//! Task identity: on 3.14+ each stall names the asyncio task the loop was running, read
//! by the kernel side from the interpreter's running-task state.

use std::time::Duration;

use blockprobe_tests::{Python, Scenario, run_sleep_scenario};

/// A stall inside a task named `checkout-42` carries that name (3.14+), and none before.
fn named_task(python: &Python, expect_name: bool) {
    let (ran, stall) = run_sleep_scenario(
        &Scenario {
            python,
            script: "named_task.py",
            script_args: &[],
            blockprobe_args: &[],
            stalls: 1,
        },
        "checkout",
        Duration::from_millis(100),
    );
    let want = expect_name.then(|| "checkout-42".to_owned());
    ran.ctx.ensure(stall.task == want, || {
        format!("the stall's task should be {want:?}, is {:?}", stall.task)
    });
}

#[test]
fn debian_3_14() {
    named_task(&Python::debian_sid("3.14"), true);
}

#[test]
fn debian_3_15() {
    if let Some(python) = Python::matrix("debian_3_15") {
        named_task(&python, true);
    }
}

#[test]
fn pyenv_3_11_has_no_task_state() {
    named_task(&Python::pyenv("3.11.7"), false);
}
