//! A report in the formats of other tools: folded stacks ([`folded`], for inferno,
//! flamegraph.pl and speedscope), an SVG flame graph ([`svg`]) and a pprof profile
//! ([`pprof`], for `go tool pprof`, Pyroscope and Grafana).
//!
//! All three are built from the same weighted stacks ([`weighted_stacks`]): the
//! report's `stacks` table, which covers every stall of the run; reports written before
//! that table existed fall back to their kept stalls (the longest ones only).

pub mod folded;
pub mod pprof;
pub mod svg;

use crate::identity::stable_file;
use crate::report::Report;
use crate::report::UNKNOWN_FUNCTION;
use crate::report::{StackFrame, StackReport, leaf_of};

/// The stacks to export and whether they cover every stall (`false`: only the kept
/// stalls of an older report).
pub fn weighted_stacks(report: &Report) -> (Vec<StackReport>, bool) {
    if !report.stacks.is_empty() || report.stall_count() == 0 {
        return (report.stacks.clone(), true);
    }
    let stacks = report
        .stalls
        .iter()
        .map(|s| {
            let process = report.processes.iter().find(|p| p.pid == s.pid);
            let service = process
                .map(|p| p.service.clone())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| s.comm.clone());
            let root = process.map_or("", |p| p.app_root.as_str());
            StackReport {
                service: if service.is_empty() {
                    UNKNOWN_FUNCTION.to_owned()
                } else {
                    service
                },
                leaf: leaf_of(s),
                frames: s
                    .stack
                    .iter()
                    .map(|f| StackFrame {
                        function: f.function.clone(),
                        file: stable_file(&f.file, [root]),
                    })
                    .collect(),
                count: 1,
                total_ns: s.duration_ns,
            }
        })
        .collect();
    (stacks, false)
}

/// A frame's name in exports: `function (file)`, or the function alone.
pub fn frame_name(f: &StackFrame) -> String {
    if f.file.is_empty() {
        f.function.clone()
    } else {
        format!("{} ({})", f.function, f.file)
    }
}

/// The frames of a stack, outermost first, as exported: the service, the Python
/// frames (`<unknown>` when none were read), and the leaf (`[sleep: clock_nanosleep]`).
pub fn export_frames(s: &StackReport) -> Vec<String> {
    let mut out = Vec::with_capacity(s.frames.len() + 2);
    out.push(s.service.clone());
    if s.frames.is_empty() {
        out.push(UNKNOWN_FUNCTION.to_owned());
    }
    out.extend(s.frames.iter().rev().map(frame_name));
    if !s.leaf.is_empty() {
        out.push(format!("[{}]", s.leaf));
    }
    out
}
