//! What a session says while it runs: stalls as they end and status events, to a
//! [`StallSink`] (the live output, the metrics, or both).

use serde::{Deserialize, Serialize};

use crate::hooks::PollHook;
use crate::model::{Frame, Stall};

/// Why the tracer stopped following a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DetachReason {
    /// The process exited.
    Exit,
    /// The process called exec (it is no longer the same program).
    Exec,
}

/// A status event of the tracer. In JSON lines:
/// `{"event":"attached","pid":..,"comm":..,"python_version":".."}`,
/// `{"event":"loop","pid":..,"tid":..}`, `{"event":"loop_gone","pid":..,"tid":..}`,
/// `{"event":"detached","pid":..,"reason":"exit"|"exec"}`,
/// `{"event":"lost","kind":..,"count":..}`,
/// `{"event":"warning","pid":..,"message":..}` (`pid` when about one process), `{"event":"ready","poll_hook":"fentry"|"tracepoint","fentry_refused":..}`,
/// `{"event":"stuck","pid":..,"tid":..,"stuck_ns":..,"at_least":true,"syscall":..,"culprit":{..}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum Status {
    /// A Python process is now traced.
    Attached {
        pid: u32,
        /// Its pid in its own pid namespace (a container), when not the host's.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ns_pid: Option<u32>,
        comm: String,
        python_version: String,
    },
    /// A thread of a traced process runs an asyncio event loop.
    Loop { pid: u32, tid: u32 },
    /// A loop thread exited (JSON lines only: a text line each would flood the terminal
    /// of a program that starts a thread and a loop per call).
    #[serde(rename = "loop_gone")]
    LoopGone { pid: u32, tid: u32 },
    /// A process is no longer traced.
    Detached { pid: u32, reason: DetachReason },
    /// Events were lost: `kind` is a loss counter name (`Counter::name()`), `count` the
    /// number newly lost since the previous `lost` event of that kind.
    Lost { kind: String, count: u64 },
    /// Something the user should know; `pid` names the process it is about, if one.
    Warning {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pid: Option<u32>,
        message: String,
    },
    /// A loop has been stuck off-await this long and still is (a hang: its stall is only
    /// reported once it ends, or when tracing stops); said after a second, then each
    /// time the time doubles.
    Stuck {
        pid: u32,
        tid: u32,
        stuck_ns: u64,
        /// `stuck_ns` is a lower bound: the loop was already stuck when tracing began,
        /// and is timed from then.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        at_least: bool,
        /// The syscall it is in, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        syscall: Option<String>,
        /// Where: the innermost first-party frame of the stack it is stuck in (walked now
        /// when blocked, the latest CPU sample when running).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        culprit: Option<Frame>,
    },
    /// The probes are attached: from now on, loops that start polling are seen.
    Ready {
        /// How the epoll syscalls are hooked.
        poll_hook: PollHook,
        /// Why fentry could not be used, when it could not.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fentry_refused: Option<String>,
    },
}

/// Where live events go. Implementations must be usable from the tracer's event loop:
/// each call writes and flushes one event.
pub trait StallSink {
    /// One stall.
    fn stall(&mut self, stall: &Stall) -> anyhow::Result<()>;
    /// One status event.
    fn status(&mut self, status: &Status) -> anyhow::Result<()>;
}

impl<S: StallSink + ?Sized> StallSink for Box<S> {
    fn stall(&mut self, stall: &Stall) -> anyhow::Result<()> {
        (**self).stall(stall)
    }
    fn status(&mut self, status: &Status) -> anyhow::Result<()> {
        (**self).status(status)
    }
}
