//! `blockprobe diff BEFORE AFTER`: compare two reports; a deploy or CI gate.
//!
//! Exit status: 0 when no regression crossed `--fail-on-regression` (or none was
//! given), 1 when one did, 2 when the reports cannot be read or cannot be gated on
//! (different thresholds without `--allow-threshold-mismatch`).

use std::io::Write as _;
use std::path::Path;

use crate::fleet::diff::{DiffOptions, check_comparable, diff, render_text};
use crate::report::Report;

/// Output format of `blockprobe diff`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum DiffFormat {
    /// Entries by impact, for people.
    #[default]
    Text,
    /// Everything, as one JSON object (`blockprobe.diff/v1`).
    Json,
}

/// Exit status when a regression crossed the gate.
pub const EXIT_REGRESSION: i32 = 1;
/// Exit status when the comparison could not be made.
pub const EXIT_ERROR: i32 = 2;

/// Compares the reports and prints the result; returns the exit status.
pub fn run(
    before: &Path,
    after: &Path,
    options: &DiffOptions,
    format: DiffFormat,
    top: usize,
) -> i32 {
    let loaded = Report::load(before).and_then(|b| Ok((b, Report::load(after)?)));
    let (b, a) = match loaded {
        Ok(pair) => pair,
        Err(e) => {
            eprintln!("blockprobe: error: {e:#}");
            return EXIT_ERROR;
        }
    };
    if let Err(e) = check_comparable(&b, &a, options) {
        eprintln!("blockprobe: error: {e}");
        return EXIT_ERROR;
    }
    let d = diff(
        (&before.display().to_string(), &b),
        (&after.display().to_string(), &a),
        options,
    );
    let text = match format {
        DiffFormat::Text => render_text(&d, top),
        DiffFormat::Json => {
            let mut t = serde_json::to_string_pretty(&d).expect("a diff always serializes");
            t.push('\n');
            t
        }
    };
    let mut out = std::io::stdout().lock();
    // A closed stdout is not an error; the exit status still tells the verdict.
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
    if d.regressed { EXIT_REGRESSION } else { 0 }
}
