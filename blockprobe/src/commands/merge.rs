//! `blockprobe merge A.json B.json … -o fleet.json`: one report out of many.

use std::path::{Path, PathBuf};

use anyhow::anyhow;

use crate::fleet::merge::{MergeLimits, merge};
use crate::report::{MAX_REPORT_BYTES, Report};

/// Loads `files`, merges them and writes the result to `output` atomically, unless it
/// would be larger than reports may be ([`MAX_REPORT_BYTES`]).
pub fn run(files: &[PathBuf], output: &Path, limits: MergeLimits) -> anyhow::Result<()> {
    run_capped(files, output, limits, MAX_REPORT_BYTES)
}

/// [`run`] with the largest output allowed, in bytes.
fn run_capped(
    files: &[PathBuf],
    output: &Path,
    limits: MergeLimits,
    max_bytes: u64,
) -> anyhow::Result<()> {
    let mut reports = Vec::with_capacity(files.len());
    for f in files {
        reports.push((f.display().to_string(), Report::load(f)?));
    }
    let merged = merge(&reports, limits).map_err(|e| anyhow!("cannot merge: {e}"))?;
    merged.write_atomic_capped(output, max_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::sample_report;

    #[test]
    fn merges_files() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.json");
        let b = dir.path().join("b.json");
        let out = dir.path().join("fleet.json");
        let r = sample_report();
        r.write_atomic(&a).unwrap();
        let mut r2 = r.clone();
        r2.host = "web-2".into();
        r2.write_atomic(&b).unwrap();
        run(&[a.clone(), b.clone()], &out, MergeLimits::default()).unwrap();
        let merged = Report::load(&out).unwrap();
        assert_eq!(merged.stall_count(), 2 * r.stall_count());
        assert_eq!(merged.host, "web-1, web-2");

        let mut r3 = r.clone();
        r3.threshold_ns = 1;
        r3.write_atomic(&b).unwrap();
        let e = format!(
            "{:#}",
            run(&[a, b.clone()], &out, MergeLimits::default()).unwrap_err()
        );
        assert!(
            e.contains(&format!("{}: its threshold is 1ns", b.display())),
            "{e}"
        );
        let e = format!(
            "{:#}",
            run(
                &[dir.path().join("none.json")],
                &out,
                MergeLimits::default()
            )
            .unwrap_err()
        );
        assert!(e.contains("no such file"), "{e}");
    }

    #[test]
    fn refuses_to_write_a_report_too_large_to_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.json");
        let out = dir.path().join("fleet.json");
        sample_report().write_atomic(&a).unwrap();
        let size = std::fs::metadata(&a).unwrap().len();
        let e = format!(
            "{:#}",
            run_capped(&[a.clone(), a.clone()], &out, MergeLimits::default(), size).unwrap_err()
        );
        assert!(e.contains("over the "), "{e}");
        assert!(e.contains(&format!("{size} bytes limit")), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "no output, no temporary file: {left:?}");
        // Under the limit it is written, and reads back.
        run_capped(&[a.clone(), a], &out, MergeLimits::default(), 4 * size).unwrap();
        assert!(Report::load(&out).is_ok());
    }
}
