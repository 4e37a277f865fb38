//! What the tests demand of blockprobe's output and of the stalls it reports.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::{CtxRef, Frame, Proc, ScriptState, Stall, kind, marker_line, nanos};

/// How much shorter than the script's own measurement a stall may be (see the crate docs).
pub const BELOW: Duration = Duration::from_millis(1);
/// How much longer than the script's own measurement a stall may be (see the crate docs).
pub const ABOVE: Duration = Duration::from_millis(5);
/// How much less than the requested blocking time a stall's `causes[cause]` may be (see
/// the crate docs): one GIL switch interval.
pub const CAUSE_SLACK: Duration = Duration::from_millis(5);
/// How far a stall may lie outside the window in which the test knows it happened
/// (between sending `GO` and reading its event): clock conversion slack.
pub const WALL_SLACK: Duration = Duration::from_millis(2);

impl CtxRef {
    /// What every test demands of blockprobe's output: [`CtxRef::check_whole`], and no
    /// lost events (nothing but the load tests is busy enough to excuse losing any).
    #[track_caller]
    pub fn check_clean(&self, bp: &Proc) {
        self.check_whole(bp);
        let lost: Vec<Value> = bp
            .events()
            .into_iter()
            .filter(|e| kind(e) == "lost")
            .collect();
        self.ensure(lost.is_empty(), || {
            format!("blockprobe lost events: {lost:?}")
        });
    }

    /// What even a load test demands of blockprobe's output: whole lines, no panic.
    #[track_caller]
    pub fn check_whole(&self, bp: &Proc) {
        let garbled = bp.garbled();
        self.ensure(garbled.is_empty(), || {
            format!(
                "{} stdout line(s) are not whole (each JSONL line must be one write(2), or \
                 it mixes with the traced program's output): {garbled:?}",
                garbled.len()
            )
        });
        self.ensure(!bp.stderr().contains("panicked"), || {
            "blockprobe panicked".into()
        });
    }

    /// What the script behind `state` measured for `name` (its `DONE <name>` line); a
    /// failure when it printed none.
    #[track_caller]
    pub fn measured(&self, state: &ScriptState, name: &str) -> u64 {
        (state.measured(name))
            .unwrap_or_else(|| self.fail(format!("the script printed no `DONE {name}` line")))
    }

    /// Checks that `stall` is the one of sleep_in_coroutine.py (at `script`): `handler`
    /// sleeping 200 ms through `syscall`, as the script measured it (`state`), within
    /// `window_unix_ns`.
    #[track_caller]
    pub fn check_handler_sleep(
        &self,
        stall: &Stall,
        script: &Path,
        syscall: &str,
        state: &ScriptState,
        window_unix_ns: (u64, u64),
    ) {
        let expect = self.expect_sleep(
            script,
            "handler",
            syscall,
            state,
            Duration::from_millis(200),
            window_unix_ns,
        );
        self.check_stall(stall, &expect);
    }

    /// What the stall of `function` of `script` sleeping `nominal` through `syscall`
    /// should be: as long as the script measured it (`state`), within `window_unix_ns`.
    #[track_caller]
    pub fn expect_sleep<'a>(
        &self,
        script: &'a Path,
        function: &'a str,
        syscall: &'a str,
        state: &ScriptState,
        nominal: Duration,
        window_unix_ns: (u64, u64),
    ) -> ExpectStall<'a> {
        ExpectStall {
            script,
            function,
            cause: "sleep",
            syscall,
            measured_ns: self.measured(state, function),
            nominal,
            window_unix_ns: Some(window_unix_ns),
        }
    }

    /// Checks one stall against what the script measured and where it blocked.
    #[track_caller]
    pub fn check_stall(&self, stall: &Stall, expect: &ExpectStall<'_>) {
        let measured = expect.measured_ns;
        let low = measured.saturating_sub(nanos(BELOW));
        let high = measured + nanos(ABOVE) + stall.runqueue_ns() + self.stolen_ns();
        self.ensure((low..=high).contains(&stall.duration_ns), || {
            format!(
                "stall lasted {} ns; the script measured {measured} ns for `{}`, so it \
                     must be within [{low}, {high}] ns: {stall:#?}",
                stall.duration_ns, expect.function
            )
        });
        self.ensure(stall.cause == expect.cause, || {
            format!(
                "stall cause is {:?}, expected {:?}: {stall:#?}",
                stall.cause, expect.cause
            )
        });
        self.ensure(stall.syscall.as_deref() == Some(expect.syscall), || {
            format!(
                "stall syscall is {:?}, expected {:?}: {stall:#?}",
                stall.syscall, expect.syscall
            )
        });
        // The time blocked for the cause: the largest share, and about what the script
        // asked for (see CAUSE_SLACK).
        let blocked = stall.causes.get(expect.cause).copied().unwrap_or(0);
        let nominal = nanos(expect.nominal);
        let largest = stall.causes.values().copied().max().unwrap_or(0);
        self.ensure(
            blocked + nanos(CAUSE_SLACK) >= nominal
                && blocked <= stall.duration_ns
                && blocked == largest,
            || {
                format!(
                    "causes[{:?}] is {blocked} ns; expected the largest share, at least the \
                     requested {nominal} ns (- {} ns) and at most the stall's {} ns: {stall:#?}",
                    expect.cause,
                    nanos(CAUSE_SLACK),
                    stall.duration_ns
                )
            },
        );
        let culprit = Frame::new(
            expect.function,
            expect.script,
            marker_line(expect.script, &format!("BLOCK {}", expect.function)),
        );
        self.ensure(stall.culprit.as_ref() == Some(&culprit), || {
            format!(
                "culprit is {:?}, expected {culprit:?}: {stall:#?}",
                stall.culprit
            )
        });
        // The blocking call is a C function: the innermost Python frame is the culprit's.
        self.ensure(stall.stack.first() == Some(&culprit), || {
            format!("innermost frame is not {culprit:?}: {stall:#?}")
        });
        if let Some(window) = expect.window_unix_ns {
            self.check_window(stall, window);
        }
    }

    /// Checks that `stall` lies within the window in which the test knows it happened
    /// (Unix ns), give or take [`WALL_SLACK`].
    #[track_caller]
    pub fn check_window(&self, stall: &Stall, (after, before): (u64, u64)) {
        let slack = nanos(WALL_SLACK);
        let end = stall.start_unix_ns + stall.duration_ns;
        self.ensure(
            stall.start_unix_ns + slack >= after && end <= before + slack,
            || {
                format!(
                    "stall [{}, {end}] (Unix ns) is not within the window in which it \
                     happened, [{after}, {before}] (± {slack} ns): {stall:#?}",
                    stall.start_unix_ns
                )
            },
        );
    }

    /// Checks what the stall's blocking syscall waited on (`None`: it takes no fd).
    #[track_caller]
    pub fn check_fd_kind(&self, stall: &Stall, expected: Option<&str>) {
        self.ensure(stall.fd_kind.as_deref() == expected, || {
            format!(
                "fd_kind is {:?}, expected {expected:?}: {stall:#?}",
                stall.fd_kind
            )
        });
    }

    /// Checks that `stack` holds `expected` frames (function, marker of its line)
    /// contiguously from its innermost frame on.
    #[track_caller]
    pub fn check_stack_prefix(&self, stall: &Stall, script: &Path, expected: &[(&str, &str)]) {
        let want: Vec<Frame> = expected
            .iter()
            .map(|(function, marker)| Frame::new(function, script, marker_line(script, marker)))
            .collect();
        self.ensure(stall.stack.starts_with(&want), || {
            format!("stack does not start with {want:#?}: {stall:#?}")
        });
    }
}

/// What a stall should look like, from the script's point of view.
pub struct ExpectStall<'a> {
    pub script: &'a Path,
    /// The culprit function; its blocking call is the line marked `# BLOCK <function>`.
    pub function: &'a str,
    pub cause: &'a str,
    pub syscall: &'a str,
    /// What the script measured (its `DONE` line).
    pub measured_ns: u64,
    /// What the script asked for: the sleep's length, or the server's delay.
    pub nominal: Duration,
    /// Unix-ns bounds the stall must lie within: sending `GO` .. reading its event (not
    /// `FINISHED`, which the script prints before its loop is back in the poller).
    pub window_unix_ns: Option<(u64, u64)>,
}
