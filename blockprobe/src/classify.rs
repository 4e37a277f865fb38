//! Deciding from a thread's Python stack at a poll call whether it runs an asyncio loop.
//!
//! The syscall alone proves nothing: `selectors` in sync code and libraries in worker
//! threads poll too. asyncio's own frames do: the selector event loop polls from
//! `BaseEventLoop._run_once` in `asyncio/base_events.py`.
//!
//! A loop written in C (uvloop: Cython over libuv) has no Python frame of its own: while
//! it polls, the innermost Python frame is the one that started it. When that frame is
//! an entry point that does nothing but run a loop (`asyncio.run`, `asyncio.Runner.run`,
//! `uvloop.run`), the poll is that loop's.

use crate::model::Frame;

/// Whether `stack` (innermost first) is an asyncio event loop's poll: the frame that
/// called into `selectors` (or into C, for uvloop) is the loop itself. A callback running
/// sync `selectors` code under `_run_once` polls too, and that poll is not the loop's.
pub fn is_asyncio_loop(stack: &[Frame]) -> bool {
    stack
        .iter()
        .find(|f| !path_ends_with(&f.file, "selectors.py"))
        .is_some_and(|caller| is_run_once(caller) || is_loop_runner(caller))
}

/// Whether a poll with Python stack `stack` is the poll of a loop written in C that a
/// frame started with `run_forever`/`run_until_complete` (no Python frame of its own
/// says so), from the interpreter's asyncio state at the poll (3.14+): the running loop
/// is `native` (it polls from C, as `uvloop.Loop`), no task is running (a loop
/// polls between task steps, while a task's own C call that polls runs inside its
/// task), and `selectors` did not make the call.
pub fn is_c_loop_poll(stack: &[Frame], native: bool, task_running: bool) -> bool {
    !task_running
        && native
        && !stack
            .first()
            .is_some_and(|f| path_ends_with(&f.file, "selectors.py"))
}

/// Whether a poll with Python stack `stack` (innermost first) was made by native code a
/// Python thread called, not through `selectors` (sync code polls through it): an event
/// loop written in C, or hand-written epoll code. A thread without Python frames is none.
pub fn polls_natively(stack: &[Frame]) -> bool {
    stack
        .first()
        .is_some_and(|f| !path_ends_with(&f.file, "selectors.py"))
}

/// Whether a thread with Python stack `stack` (innermost first), caught at any moment, is
/// inside a running loop: asyncio's `BaseEventLoop.run_forever` or `_run_once`, or a
/// frame that only runs a loop (`asyncio.run`, `Runner.run`, `uvloop.run`), is on it.
pub fn runs_loop(stack: &[Frame]) -> bool {
    stack
        .iter()
        .any(|f| is_run_once(f) || is_run_forever(f) || is_loop_runner(f))
}

/// `BaseEventLoop.run_forever`: a selector event loop runs (between or in iterations).
fn is_run_forever(f: &Frame) -> bool {
    f.function.ends_with("run_forever") && path_ends_with(&f.file, "asyncio/base_events.py")
}

/// Whether a poll with Python stack `stack`, made by a thread whose native stack runs
/// libuv's `uv_run` (`in_uv_run`), is a uvloop loop's: `selectors` did not make it (a
/// callback's sync selector runs under `uv_run` too).
pub fn is_uvloop_poll(stack: &[Frame], in_uv_run: bool) -> bool {
    in_uv_run
        && !stack
            .first()
            .is_some_and(|f| path_ends_with(&f.file, "selectors.py"))
}

/// `BaseEventLoop._run_once`: the selector event loop's iteration.
fn is_run_once(f: &Frame) -> bool {
    f.function.ends_with("_run_once") && path_ends_with(&f.file, "asyncio/base_events.py")
}

/// `asyncio.run` / `asyncio.Runner.run` (3.11+) / `uvloop.run`: frames that call a loop's
/// `run_until_complete` directly.
fn is_loop_runner(f: &Frame) -> bool {
    (matches!(f.function.as_str(), "run" | "Runner.run")
        && path_ends_with(&f.file, "asyncio/runners.py"))
        || (f.function == "run" && path_ends_with(&f.file, "uvloop/__init__.py"))
}

/// Whether `file` ends with the `/`-separated `suffix` (either separator in `file`).
fn path_ends_with(file: &str, suffix: &str) -> bool {
    file.ends_with(suffix) || file.ends_with(&suffix.replace('/', "\\"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixtures;

    /// Frame `function` of `file`, at line 1.
    fn frame(function: &str, file: &str) -> Frame {
        fixtures::frame(function, file, 1)
    }

    #[test]
    fn selector_loop_is_a_loop() {
        let stack = [
            frame("EpollSelector.select", "/usr/lib/python3.11/selectors.py"),
            frame(
                "BaseEventLoop._run_once",
                "/usr/lib/python3.11/asyncio/base_events.py",
            ),
            frame(
                "BaseEventLoop.run_forever",
                "/usr/lib/python3.11/asyncio/base_events.py",
            ),
        ];
        assert!(is_asyncio_loop(&stack));
        // Before 3.11 frames carry co_name only.
        let old = [frame(
            "_run_once",
            "/x/lib/python3.9/asyncio/base_events.py",
        )];
        assert!(is_asyncio_loop(&old));
    }

    #[test]
    fn c_loops_are_loops() {
        // uvloop.run on 3.11+: polling from libuv, below Runner.run.
        let uvloop = [
            frame("Runner.run", "/usr/lib/python3.14/asyncio/runners.py"),
            frame("run", "/x/site-packages/uvloop/__init__.py"),
            frame("<module>", "/app/main.py"),
        ];
        assert!(is_asyncio_loop(&uvloop));
        // uvloop.run on 3.9/3.10 and asyncio.run with uvloop's policy.
        assert!(is_asyncio_loop(&uvloop[1..]));
        assert!(is_asyncio_loop(&[frame(
            "run",
            "/x/lib/python3.9/asyncio/runners.py"
        )]));
        // A runner frame further out with Python code polling inside is not a loop.
        let sync_in_main = [
            frame("poll_things", "/app/main.py"),
            frame("Runner.run", "/usr/lib/python3.14/asyncio/runners.py"),
        ];
        assert!(!is_asyncio_loop(&sync_in_main));
    }

    #[test]
    fn c_loops_run_forever_are_loops_by_their_state() {
        let caller = [
            frame("serve", "/app/main.py"),
            frame("<module>", "/app/main.py"),
        ];
        assert!(is_c_loop_poll(&caller, true, false));
        // A task's C call polling, a Python loop class, a sync selector: not the loop.
        assert!(!is_c_loop_poll(&caller, true, true));
        assert!(!is_c_loop_poll(&caller, false, false));
        let selector = [
            frame("EpollSelector.select", "/usr/lib/python3.14/selectors.py"),
            frame("callback", "/app/main.py"),
        ];
        assert!(!is_c_loop_poll(&selector, true, false));
    }

    #[test]
    fn native_polls_are_not_through_selectors() {
        let hand_written = [frame("Reactor.run", "/app/reactor.py")];
        assert!(polls_natively(&hand_written));
        let sync = [
            frame("EpollSelector.select", "/usr/lib/python3.11/selectors.py"),
            frame("serve_forever", "/usr/lib/python3.11/socketserver.py"),
        ];
        assert!(!polls_natively(&sync));
        assert!(!polls_natively(&[]));
    }

    #[test]
    fn a_thread_anywhere_inside_a_loop_runs_it() {
        let in_callback = [
            frame("handler", "/app/handlers.py"),
            frame("Handle._run", "/usr/lib/python3.11/asyncio/events.py"),
            frame(
                "BaseEventLoop._run_once",
                "/usr/lib/python3.11/asyncio/base_events.py",
            ),
        ];
        assert!(runs_loop(&in_callback));
        // uvloop by hand has no frame of its own; under asyncio.run it has the runner's.
        let uvloop = [
            frame("handler", "/app/handlers.py"),
            frame("run", "/x/lib/python3.9/asyncio/runners.py"),
        ];
        assert!(runs_loop(&uvloop));
        // Sync work between two runs of one loop, and sync selectors.
        let between = [
            frame("work", "/app/cli.py"),
            frame("<module>", "/app/cli.py"),
        ];
        assert!(!runs_loop(&between));
        let sync = [
            frame("EpollSelector.select", "/usr/lib/python3.11/selectors.py"),
            frame("serve_forever", "/usr/lib/python3.11/socketserver.py"),
        ];
        assert!(!runs_loop(&sync));
    }

    #[test]
    fn uvloop_polls_under_uv_run_are_loops() {
        let by_hand = [frame("<module>", "/app/main.py")];
        assert!(is_uvloop_poll(&by_hand, true));
        assert!(!is_uvloop_poll(&by_hand, false));
        let selector = [
            frame("EpollSelector.select", "/usr/lib/python3.11/selectors.py"),
            frame("callback", "/app/main.py"),
        ];
        assert!(!is_uvloop_poll(&selector, true));
    }

    #[test]
    fn sync_selectors_and_lookalikes_are_not() {
        let sync = [
            frame("EpollSelector.select", "/usr/lib/python3.11/selectors.py"),
            frame("serve_forever", "/usr/lib/python3.11/socketserver.py"),
        ];
        assert!(!is_asyncio_loop(&sync));
        // A callback's own selector, called under the loop's iteration.
        let in_callback = [
            frame("EpollSelector.select", "/usr/lib/python3.11/selectors.py"),
            frame("wait_for_device", "/app/handlers.py"),
            frame("handler", "/app/handlers.py"),
            frame("Handle._run", "/usr/lib/python3.11/asyncio/events.py"),
            frame(
                "BaseEventLoop._run_once",
                "/usr/lib/python3.11/asyncio/base_events.py",
            ),
        ];
        assert!(!is_asyncio_loop(&in_callback));
        let lookalike = [frame("Scheduler._run_once", "/app/sched.py")];
        assert!(!is_asyncio_loop(&lookalike));
        assert!(!is_asyncio_loop(&[]));
    }
}
