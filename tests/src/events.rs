//! What blockprobe and the scripts print: JSON lines, stalls, frames, the scripts' protocol.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::CtxRef;

/// One symbolized Python frame of a stall.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    pub function: String,
    pub file: String,
    pub line: u32,
}

impl Frame {
    pub fn new(function: &str, file: &Path, line: u32) -> Frame {
        Frame {
            function: function.into(),
            file: file.to_string_lossy().into_owned(),
            line,
        }
    }
}

/// A `stall` event (and a report's stall): the fields the tests check.
#[derive(Clone, Debug, Deserialize)]
pub struct Stall {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub start_unix_ns: u64,
    pub duration_ns: u64,
    pub cause: String,
    pub syscall: Option<String>,
    pub causes: BTreeMap<String, u64>,
    pub stack: Vec<Frame>,
    pub culprit: Option<Frame>,
    /// Many short calls of the main cause that make its evidence.
    #[serde(default)]
    pub short_calls: Option<ShortCalls>,
    /// What `stack` and `culprit` come from (`evidence`, `last_seen`).
    #[serde(default)]
    pub culprit_from: Option<String>,
    /// The thread that held the GIL (`gil` stalls).
    #[serde(default)]
    pub gil_holder_tid: Option<u32>,
    /// The GIL holder's stack (`gil` stalls).
    #[serde(default)]
    pub gil_holder_stack: Vec<Frame>,
    /// Timer samples of the stall (`cpu`/`runqueue` stalls).
    #[serde(default)]
    pub cpu_samples: u32,
    /// Those of them with `stack`'s functions.
    #[serde(default)]
    pub stack_samples: u32,
    /// The asyncio task the loop was running (3.14+).
    #[serde(default)]
    pub task: Option<String>,
    /// What the blocking syscall's file descriptor was (file, socket, pipe, …).
    #[serde(default)]
    pub fd_kind: Option<String>,
    /// The loop was still stuck when tracing stopped.
    #[serde(default)]
    pub ongoing: bool,
    /// The loop was already stuck when tracing began (the duration is a lower bound).
    #[serde(default)]
    pub started_before_tracing: bool,
}

/// A stall's `short_calls`.
#[derive(Clone, Copy, Debug, Deserialize)]
pub struct ShortCalls {
    pub calls: u32,
    pub total_ns: u64,
}

impl Stall {
    /// The time this stall spent runnable but waiting for a CPU.
    pub fn runqueue_ns(&self) -> u64 {
        self.causes.get("runqueue").copied().unwrap_or(0)
    }

    /// Whether the host's CPU contention alone made this stall: mostly a run-queue wait,
    /// and not blamed on `script` (a loaded test machine delays any iteration of a loop,
    /// past the threshold too; such a stall is real, but no scenario's).
    pub fn made_by_contention(&self, script: &Path) -> bool {
        let file = script.to_string_lossy();
        self.cause == "runqueue" && self.culprit.as_ref().is_none_or(|c| c.file != file)
    }
}

/// One line of a process's stdout.
#[derive(Clone, Debug)]
pub enum Line {
    /// A line that starts with `{"event"`: one of blockprobe's JSONL events, parsed, and
    /// as it was written.
    Event(Value, String),
    /// A line that starts with `{"event"` but does not parse, or has `{"event"` inside it:
    /// two writers' output mixed up.
    Garbled(String),
    /// Any other line: the traced program's own output (under `run`), or a script's.
    Text(String),
}

impl Line {
    pub(crate) fn classify(text: String) -> Line {
        if text.starts_with("{\"event\"") {
            match serde_json::from_str::<Value>(&text) {
                Ok(value) if value.is_object() => Line::Event(value, text),
                _ => Line::Garbled(text),
            }
        } else if text.contains("{\"event\"") {
            Line::Garbled(text)
        } else {
            Line::Text(text)
        }
    }
}

/// The `event` field of a JSONL event.
pub fn kind(event: &Value) -> &str {
    event.get("event").and_then(Value::as_str).unwrap_or("")
}

/// Field `name` of a JSON event, as a u32.
pub fn field_u32(event: &Value, name: &str) -> Option<u32> {
    event
        .get(name)
        .and_then(Value::as_u64)
        .and_then(|n| u32::try_from(n).ok())
}

/// What a scenario script said so far (see `tests/scripts/bptest.py`).
#[derive(Clone, Debug, Default)]
pub struct ScriptState {
    /// From `READY <pid>`.
    pub pid: Option<u32>,
    /// From `LOOP <name> <tid>`, in order.
    pub loops: Vec<(String, u32)>,
    /// From `DONE <name> <ns>`, in order.
    pub done: Vec<(String, u64)>,
    /// `FINISHED` was printed.
    pub finished: bool,
}

impl ScriptState {
    pub(crate) fn parse<'a>(lines: impl IntoIterator<Item = &'a str>) -> ScriptState {
        let mut state = ScriptState::default();
        for line in lines {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["READY", pid] => state.pid = pid.parse().ok(),
                ["LOOP", name, tid] => {
                    if let Ok(tid) = tid.parse() {
                        state.loops.push(((*name).to_string(), tid));
                    }
                }
                ["DONE", name, ns] => {
                    if let Ok(ns) = ns.parse() {
                        state.done.push(((*name).to_string(), ns));
                    }
                }
                ["FINISHED"] => state.finished = true,
                _ => {}
            }
        }
        state
    }

    /// The thread id of the loop called `name`.
    pub fn loop_tid(&self, name: &str) -> Option<u32> {
        self.loops.iter().find(|(n, _)| n == name).map(|(_, t)| *t)
    }

    /// The duration the script measured for `name`.
    pub fn measured(&self, name: &str) -> Option<u64> {
        self.done.iter().find(|(n, _)| n == name).map(|(_, ns)| *ns)
    }
}

/// Reads and parses a JSON file blockprobe wrote.
#[track_caller]
pub fn read_json(ctx: &CtxRef, path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|err| ctx.fail(format!("cannot read {}: {err}", path.display())));
    serde_json::from_str(&text)
        .unwrap_or_else(|err| ctx.fail(format!("{} is not JSON ({err}): {text}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_lines() {
        assert!(matches!(
            Line::classify(r#"{"event":"loop","pid":1,"tid":1}"#.into()),
            Line::Event(..)
        ));
        assert!(matches!(
            Line::classify(r#"{"event":"stall","pid":1"#.into()),
            Line::Garbled(_)
        ));
        assert!(matches!(
            Line::classify(r#"DONE handler 1{"event":"stall"}"#.into()),
            Line::Garbled(_)
        ));
        assert!(matches!(Line::classify("READY 12".into()), Line::Text(_)));
    }

    #[test]
    fn parses_the_script_protocol() {
        let state = ScriptState::parse([
            "LOOP worker 11",
            "LOOP main 10",
            "READY 10",
            "DONE handler 200000000",
            "something else",
            "FINISHED",
        ]);
        assert_eq!(state.pid, Some(10));
        assert_eq!(state.loop_tid("worker"), Some(11));
        assert_eq!(state.loop_tid("main"), Some(10));
        assert_eq!(state.measured("handler"), Some(200_000_000));
        assert!(state.finished);
    }

    #[test]
    fn parses_a_stall_event() {
        let event = r#"{"event":"stall","pid":1,"tid":1,"comm":"python3.11","start_unix_ns":5,
            "duration_ns":200,"cause":"sleep","syscall":"clock_nanosleep","causes":{"sleep":190},
            "stack":[{"function":"handler","file":"/x.py","line":9}],
            "culprit":{"function":"handler","file":"/x.py","line":9}}"#;
        let stall: Stall = serde_json::from_str(event).unwrap();
        assert_eq!(
            stall.culprit,
            Some(Frame::new("handler", Path::new("/x.py"), 9))
        );
        assert_eq!(stall.causes["sleep"], 190);
    }
}
