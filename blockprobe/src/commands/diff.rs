//! `blockprobe diff BEFORE AFTER`: compare two reports; a deploy or CI gate.
//!
//! Exit status: 0 when no regression crossed `--fail-on-regression` (or none was
//! given), 1 when one did, 2 when the reports cannot be read or cannot be gated on
//! (different thresholds without `--allow-threshold-mismatch`).

use std::io::Write as _;
use std::path::Path;

use crate::cli::DiffFormat;
use crate::fleet::diff::{DiffOptions, diff};
use crate::render::{diff::render_text, ms};
use crate::report::Report;

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

/// Whether the reports may be compared with `options`: a regression gate over reports
/// taken with different thresholds (whose stall counts differ by construction) is
/// refused unless `allow_threshold_mismatch` is set.
pub fn check_comparable(
    before: &Report,
    after: &Report,
    options: &DiffOptions,
) -> Result<(), String> {
    if options.fail_on_regression.is_some()
        && before.threshold_ns != after.threshold_ns
        && !options.allow_threshold_mismatch
    {
        return Err(format!(
            "the reports were taken with different thresholds ({} ms before, {} ms after), \
             so their stalls are not comparable; refusing to gate on them \
             (--allow-threshold-mismatch to gate anyway)",
            ms(before.threshold_ns),
            ms(after.threshold_ns)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::diff::tests::gate;
    use crate::report::tests::sample_report;

    #[test]
    fn gating_reports_of_other_thresholds_needs_a_flag() {
        let before = sample_report();
        let mut after = before.clone();
        after.threshold_ns = 5_000_000;
        let e = check_comparable(&before, &after, &gate(10.0)).unwrap_err();
        assert!(
            e.contains("different thresholds (10.0 ms before, 5.0 ms after)"),
            "{e}"
        );
        assert!(e.contains("--allow-threshold-mismatch"), "{e}");
        assert!(check_comparable(&before, &after, &DiffOptions::default()).is_ok());
        let allowed = DiffOptions {
            allow_threshold_mismatch: true,
            ..gate(10.0)
        };
        assert!(check_comparable(&before, &after, &allowed).is_ok());
        assert!(check_comparable(&before, &before, &gate(10.0)).is_ok());
    }
}
