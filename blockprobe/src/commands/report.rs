//! `blockprobe report FILE [--format text|json]`: show a saved report.

use std::io::{self, Write};
use std::path::Path;

use crate::render::summary::{SummaryOptions, write_summary};
use crate::report::Report;

/// Output format of `blockprobe report`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    /// The same summary `blockprobe run` prints at the end.
    #[default]
    Text,
    /// The validated report as pretty-printed JSON (`blockprobe.report/v1`).
    Json,
}

/// Loads the report at `path` and prints it to stdout. A closed stdout (e.g. piped into
/// `head`) is not an error.
pub fn run(path: &Path, format: ReportFormat) -> anyhow::Result<()> {
    let stdout = io::stdout();
    let mut out = stdout.lock();
    match render(path, format, &mut out) {
        Err(e) if crate::render::live::is_broken_pipe(&e) => Ok(()),
        other => other,
    }
}

/// [`run`], writing to `out`.
pub fn render(path: &Path, format: ReportFormat, out: &mut dyn Write) -> anyhow::Result<()> {
    let report = Report::load(path)?;
    let written = match format {
        ReportFormat::Text => write_summary(&report, &SummaryOptions::default(), out),
        ReportFormat::Json => serde_json::to_writer_pretty(&mut *out, &report)
            .map_err(io::Error::from)
            .and_then(|()| writeln!(out))
            .and_then(|()| out.flush()),
    };
    // Keep the io::Error in the chain so that a broken pipe is recognisable.
    written.map_err(|e| anyhow::Error::new(e).context("writing report to stdout"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::summary::summary;
    use crate::report::tests::sample_report;

    #[test]
    fn text_is_the_run_summary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.json");
        let r = sample_report();
        r.write_atomic(&path).unwrap();
        let mut out = Vec::new();
        render(&path, ReportFormat::Text, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            summary(&r, &SummaryOptions::default())
        );
    }

    #[test]
    fn json_is_the_report() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.json");
        let r = sample_report();
        r.write_atomic(&path).unwrap();
        let mut out = Vec::new();
        render(&path, ReportFormat::Json, &mut out).unwrap();
        assert!(out.ends_with(b"}\n"));
        assert_eq!(Report::from_slice(&out).unwrap(), r);
    }

    #[test]
    fn load_errors_pass_through() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing.json");
        let e = render(&path, ReportFormat::Text, &mut Vec::new()).unwrap_err();
        assert!(format!("{e:#}").contains("no such file"), "{e:#}");
    }

    #[test]
    fn format_values() {
        use clap::ValueEnum;
        assert_eq!(
            ReportFormat::from_str("text", false),
            Ok(ReportFormat::Text)
        );
        assert_eq!(
            ReportFormat::from_str("json", false),
            Ok(ReportFormat::Json)
        );
        assert!(ReportFormat::from_str("yaml", false).is_err());
    }
}
