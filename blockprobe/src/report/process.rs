//! The traced processes a report lists, and the warnings about them.

use serde::{Deserialize, Serialize};

/// A traced Python process.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    /// Process id (host pid namespace).
    pub pid: u32,
    /// Its pid in its own pid namespace (a container), when that is not the host's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ns_pid: Option<u32>,
    /// Command name.
    pub comm: String,
    /// Interpreter version, e.g. `"3.11.7"`.
    pub python_version: String,
    /// Thread ids of the threads running an asyncio event loop, ascending.
    pub loop_threads: Vec<u32>,
    /// Command line (argv); only argv[0] with `--redact-cmdline`.
    #[serde(default)]
    pub cmdline: Vec<String>,
    /// Service label: `--service`, else derived from the command line
    /// (see [`crate::identity`]).
    #[serde(default)]
    pub service: String,
    /// The process's cgroup path (cgroup v2, else the first v1 hierarchy's).
    #[serde(default)]
    pub cgroup: String,
    /// Container id found in the cgroup path (empty when not in a container).
    #[serde(default)]
    pub container_id: String,
    /// Directory first-party files are made relative to (empty: none).
    #[serde(default)]
    pub app_root: String,
    /// Host the process ran on.
    #[serde(default)]
    pub host: String,
    /// Whether a thread of it polled (epoll family) while traced; `None` in reports
    /// of versions that did not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub polled: Option<bool>,
}

/// The reasons a [`ProcessWarning`] gives.
pub mod warning {
    /// A Python thread of the process polls (epoll family) from native code, not
    /// through `selectors`, and no thread of the process was found to run an asyncio
    /// loop: an event loop blockprobe does not recognize may be running unwatched.
    pub const POLLS_WITHOUT_LOOP: &str = "polls_without_loop";

    /// What `reason` means, in a few words.
    pub fn describe(reason: &str) -> &str {
        match reason {
            POLLS_WITHOUT_LOOP => "polls (epoll), no asyncio loop found: stalls not seen",
            other => other,
        }
    }
}

/// A traced process whose stalls may be missing from the report.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ProcessWarning {
    /// Process id (host pid namespace).
    pub pid: u32,
    /// Why: a [`warning`] code.
    pub reason: String,
    /// Host the process ran on.
    #[serde(default)]
    pub host: String,
}
