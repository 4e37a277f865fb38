//! Deciding from a thread's Python stack at a poll call whether it runs an asyncio loop.
//!
//! The syscall alone proves nothing: `selectors` in sync code and libraries in worker
//! threads poll too. asyncio's own frames do: the selector event loop polls from
//! `BaseEventLoop._run_once` in `asyncio/base_events.py`.

use crate::model::Frame;

/// Whether `stack` (innermost first) is an asyncio event loop's poll.
pub fn is_asyncio_loop(stack: &[Frame]) -> bool {
    stack.iter().any(|f| {
        f.function.ends_with("_run_once")
            && (f.file.ends_with("asyncio/base_events.py")
                || f.file.ends_with("asyncio\\base_events.py"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(function: &str, file: &str) -> Frame {
        Frame {
            function: function.into(),
            file: file.into(),
            line: 1,
        }
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
    fn sync_selectors_and_lookalikes_are_not() {
        let sync = [
            frame("EpollSelector.select", "/usr/lib/python3.11/selectors.py"),
            frame("serve_forever", "/usr/lib/python3.11/socketserver.py"),
        ];
        assert!(!is_asyncio_loop(&sync));
        let lookalike = [frame("Scheduler._run_once", "/app/sched.py")];
        assert!(!is_asyncio_loop(&lookalike));
        assert!(!is_asyncio_loop(&[]));
    }
}
