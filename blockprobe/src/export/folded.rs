//! Folded stacks (Brendan Gregg's "collapsed" format): one line per stack,
//! `service;outermost;…;innermost;[leaf] NANOSECONDS`, the weight being the total stall
//! time of that stack. inferno, flamegraph.pl and speedscope read it.
//!
//! Frame names are made safe for the format: control characters are escaped as in
//! text output, and `;` (the frame separator) becomes `:`.

use std::collections::BTreeMap;

use super::{export_frames, weighted_stacks};
use crate::render::escape;
use crate::report::Report;

/// The folded lines of `report` (each without newline), sorted, identical stacks
/// combined.
pub fn folded_lines(report: &Report) -> Vec<String> {
    let (stacks, _) = weighted_stacks(report);
    let mut lines: BTreeMap<String, u64> = BTreeMap::new();
    for s in &stacks {
        if s.total_ns == 0 && s.count == 0 {
            continue;
        }
        let text = export_frames(s)
            .iter()
            .map(|f| sanitize(f))
            .collect::<Vec<_>>()
            .join(";");
        let slot = lines.entry(text).or_default();
        *slot = slot.saturating_add(s.total_ns);
    }
    lines
        .into_iter()
        .map(|(stack, ns)| format!("{stack} {ns}"))
        .collect()
}

/// The folded text (one line per stack, newline-terminated).
pub fn folded(report: &Report) -> String {
    let mut out = String::new();
    for line in folded_lines(report) {
        out.push_str(&line);
        out.push('\n');
    }
    out
}

fn sanitize(frame: &str) -> String {
    let s = escape(frame).replace(';', ":");
    if s.is_empty() { "?".to_owned() } else { s }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::sample_report;

    #[test]
    fn folded_stacks_of_the_sample() {
        let r = sample_report();
        let text = folded(&r);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        // Every stall's time is in there, exactly.
        let total: u64 = lines
            .iter()
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum();
        let fn_total: u64 = r.functions.iter().map(|f| f.histogram.total_ns()).sum();
        assert_eq!(total, fn_total);
        let fetch = lines
            .iter()
            .find(|l| l.contains("Client.fetch_data"))
            .unwrap();
        assert!(
            fetch.starts_with("<unknown>;Client.fetch_data (/srv/app/services/db.py);sleep (time.py);[sleep: clock_nanosleep] "),
            "{fetch}"
        );
        for l in &lines {
            assert!(!l.chars().any(char::is_control), "{l:?}");
            // One count, after the last space; frames separated by `;`.
            let (stack, n) = l.rsplit_once(' ').unwrap();
            assert!(n.parse::<u64>().is_ok(), "{l}");
            assert!(!stack.is_empty());
        }
        assert!(text.contains("bad\\x1b[31mname\\n"), "escaped: {text}");
    }

    #[test]
    fn semicolons_cannot_split_frames() {
        assert_eq!(sanitize("a;b"), "a:b");
        assert_eq!(sanitize(""), "?");
    }

    #[test]
    fn old_reports_fall_back_to_kept_stalls() {
        let mut r = sample_report();
        r.stacks.clear();
        let text = folded(&r);
        let total: u64 = text
            .lines()
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum();
        let kept: u64 = r.stalls.iter().map(|s| s.duration_ns).sum();
        assert_eq!(total, kept);
    }
}
