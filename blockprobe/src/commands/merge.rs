//! `blockprobe merge A.json B.json … -o fleet.json`: one report out of many.

use std::path::{Path, PathBuf};

use anyhow::anyhow;

use crate::fleet::merge::{MergeLimits, merge};
use crate::report::Report;

/// Loads `files`, merges them and writes the result to `output` atomically.
pub fn run(files: &[PathBuf], output: &Path, limits: MergeLimits) -> anyhow::Result<()> {
    let mut reports = Vec::with_capacity(files.len());
    for f in files {
        reports.push((f.display().to_string(), Report::load(f)?));
    }
    let merged = merge(&reports, limits).map_err(|e| anyhow!("cannot merge: {e}"))?;
    merged.write_atomic(output)
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
}
