//! Stalls in scenarios run under `blockprobe run`: what blocked, for how long, and where.
//!
//! Each scenario runs on every interpreter of the scenario matrix (`python_matrix!`: pyenv
//! 3.11.7, Debian's stripped 3.11 and sid 3.14 on every run, the others in the full matrix).

use std::time::Duration;

use blockprobe_tests::{
    Blockprobe, Python, Scenario, drive_scenario_after, field_u32, kind, python_matrix,
    require_root, run_scenario, run_sleep_scenario, script,
};

python_matrix!(
    sleep_in_coroutine,
    sync_chain,
    blocking_recv,
    two_loops,
    loop_replaced
);

/// The same scenarios with uvloop running the loop (libuv polls; Cython frames are no
/// Python frames): pyenv 3.11 with uvloop from PyPI, Debian sid 3.14 with its own.
mod uvloop {
    use blockprobe_tests::Python;

    fn py311() -> Python {
        Python::pyenv("3.11.7").with_uvloop()
    }

    fn py314() -> Python {
        Python::debian_sid("3.14").with_uvloop()
    }

    #[test]
    fn sleep_in_coroutine_3_11() {
        super::sleep_in_coroutine(&py311());
    }

    #[test]
    fn sync_chain_3_11() {
        super::sync_chain(&py311());
    }

    #[test]
    fn blocking_recv_3_11() {
        super::blocking_recv(&py311());
    }

    #[test]
    fn sleep_in_coroutine_3_14() {
        super::sleep_in_coroutine(&py314());
    }

    #[test]
    fn sync_chain_3_14() {
        super::sync_chain(&py314());
    }

    /// Loops run by `run_forever` (bptest's second loop) and `run_until_complete` from a
    /// Python frame: found from the interpreter's asyncio state (3.14+).
    #[test]
    fn two_loops_3_14() {
        super::two_loops(&py314());
    }

    #[test]
    fn sleep_in_coroutine_3_14_by_hand() {
        super::sleep_in_coroutine(&Python::debian_sid("3.14").with_uvloop_by_hand());
    }
}

/// (a) `time.sleep(0.2)` directly in `async def handler()`: one stall as long as the
/// sleep the script measured, in `clock_nanosleep` (`select()` before 3.11), culprit `handler`.
fn sleep_in_coroutine(python: &Python) {
    let (ran, stall) = run_sleep_scenario(
        &Scenario {
            python,
            script: "sleep_in_coroutine.py",
            script_args: &[],
            blockprobe_args: &[],
            stalls: 1,
        },
        "handler",
        Duration::from_millis(200),
    );
    ran.ctx.check_stack_prefix(
        &stall,
        &ran.script,
        &[("handler", "BLOCK handler"), ("scenario", "CALL scenario")],
    );
    ran.ctx.ensure(stall.tid == ran.pid, || {
        format!(
            "the loop runs in the main thread ({}), stall says tid {}",
            ran.pid, stall.tid
        )
    });
    ran.ctx.ensure(stall.comm == python.comm(), || {
        format!(
            "stall comm is {:?}, expected {:?}",
            stall.comm,
            python.comm()
        )
    });
    let attached = ran.bp.events_of("attached", ran.pid);
    let version = python.version();
    ran.ctx.ensure(
        attached.len() == 1
            && attached[0]["python_version"] == version.as_str()
            && attached[0]["comm"] == python.comm().as_str(),
        || {
            format!(
                "expected one `attached` event for pid {} with python_version {version:?} and \
                 comm {:?}, got {attached:?}",
                ran.pid,
                python.comm()
            )
        },
    );
}

/// (b) A coroutine calls `level1()` → `level2()` → `level3()`, which sleeps 100 ms: the
/// stack is level3, level2, level1, then the coroutine, each at the right line; the
/// culprit is `level3`.
fn sync_chain(python: &Python) {
    let (ran, stall) = run_sleep_scenario(
        &Scenario {
            python,
            script: "sync_chain.py",
            script_args: &[],
            blockprobe_args: &[],
            stalls: 1,
        },
        "level3",
        Duration::from_millis(100),
    );
    ran.ctx.check_stack_prefix(
        &stall,
        &ran.script,
        &[
            ("level3", "BLOCK level3"),
            ("level2", "CALL level2"),
            ("level1", "CALL level1"),
            ("handle_order", "CALL handle_order"),
        ],
    );
}

/// (c) A blocking `sock.recv()` on a connection to a server that answers after 150 ms:
/// cause `io` (recvfrom), culprit the helper doing the recv, called from the coroutine.
fn blocking_recv(python: &Python) {
    let ran = run_scenario(&Scenario {
        python,
        script: "blocking_recv.py",
        script_args: &[],
        blockprobe_args: &[],
        stalls: 1,
    });
    ran.expect_success();
    let stall = ran.only_stall();
    ran.check_stall(
        &stall,
        "read_reply",
        "io",
        "recvfrom",
        Duration::from_millis(150),
    );
    ran.ctx.check_fd_kind(&stall, Some("socket"));
    ran.ctx.check_stack_prefix(
        &stall,
        &ran.script,
        &[
            ("read_reply", "BLOCK read_reply"),
            ("fetch_status", "CALL fetch_status"),
        ],
    );
}

/// (e) Two threads, each with its own loop; only the worker's blocks (150 ms): the stall
/// is the worker thread's, with the worker's stack, and the main loop has none.
fn two_loops(python: &Python) {
    let ran = run_scenario(&Scenario {
        python,
        script: "two_loops.py",
        script_args: &[],
        blockprobe_args: &[],
        stalls: 1,
    });
    ran.expect_success();
    let worker = ran.state.loop_tid("worker");
    let main = ran.state.loop_tid("main");
    ran.ctx
        .ensure(worker.is_some() && main.is_some() && worker != main, || {
            format!(
                "the script should list two loop threads: {:?}",
                ran.state.loops
            )
        });
    let stall = ran.only_stall();
    ran.ctx.ensure(Some(stall.tid) == worker, || {
        format!(
            "the stall should be the worker thread's ({worker:?}), not the main loop's \
             ({main:?}): {stall:#?}"
        )
    });
    ran.check_stall(
        &stall,
        "blocking_handler",
        "sleep",
        python.sleep_syscall(),
        Duration::from_millis(150),
    );
    // The worker thread's own stack: nothing of the main thread's coroutines.
    ran.ctx.ensure(
        !stall.stack.iter().any(|f| f.function == "scenario"),
        || format!("the stall's stack has the main thread's frames: {stall:#?}"),
    );
}

/// A loop found while parked in its poller, whose very next wake-up is the stall
/// (idle_first_wakeup.py: no ticker; its first poll call after blockprobe attached parks
/// it until GO): the stall is reported. (The kernel side must see that poll call's exit
/// although userspace decided the thread is a loop only while it was parked in it.)
#[test]
fn first_wakeup_of_an_idle_loop() {
    blockprobe_tests::require_root();
    let ctx = blockprobe_tests::Ctx::new();
    let python = Python::pyenv("3.11.7");
    let name = "idle_first_wakeup.py";
    let bp = ctx.spawn(
        "blockprobe run idle_first_wakeup.py",
        &mut Blockprobe::run(&python, &blockprobe_tests::script(name), &[], &[]).steady(),
    );
    let ready = ctx.wait_ready(&bp);
    let pid = ready.pid.expect("READY has a pid");
    ctx.adopt(pid, name);
    ctx.wait_event(&bp, "attached", pid);
    bp.send("ATTACHED");
    ctx.wait_loops_live(&bp, pid, &[pid]);
    let go = blockprobe_tests::unix_now_ns();
    bp.send("GO");
    let state = ctx.wait_finished(&bp);
    let stalls = ctx.wait_stalls(&bp, pid, 1);
    let seen = blockprobe_tests::unix_now_ns();
    ctx.quit_ok(&bp, "");
    ctx.ensure(stalls.len() == 1, || {
        format!("expected exactly one stall, got {stalls:#?}")
    });
    let script = blockprobe_tests::script(name);
    let expect = ctx.expect_sleep(
        &script,
        "handler",
        python.sleep_syscall(),
        &state,
        Duration::from_millis(50),
        (go, seen),
    );
    ctx.check_stall(&stalls[0], &expect);
}

/// A loop closed and replaced by a new one in the same thread: the 300 ms between them
/// belong to no loop (no stall), and the new loop is found again and its 200 ms stall
/// attributed.
fn loop_replaced(python: &Python) {
    require_root();
    let name = "loop_replaced.py";
    let mut cmd = Blockprobe::run(python, &script(name), &[], &[]).steady();
    let ran = drive_scenario_after(python, name, &mut cmd, 1, |ctx, bp| {
        let tid: u32 = ctx.wait_for("the script's FIRST line", || {
            bp.texts().iter().find_map(|text| {
                text.strip_prefix("FIRST ")
                    .and_then(|id| id.trim().parse().ok())
            })
        });
        let loops_found = || {
            bp.events()
                .iter()
                .filter(|e| kind(e) == "loop" && field_u32(e, "tid") == Some(tid))
                .count()
        };
        ctx.wait_for("blockprobe's `loop` event for the first loop", || {
            (loops_found() >= 1).then_some(())
        });
        bp.send("NEXT");
        ctx.wait_for("blockprobe's `loop` event for the second loop", || {
            (loops_found() >= 2).then_some(())
        });
    });
    ran.only_sleep_stall(python, "handler", Duration::from_millis(200));
}
