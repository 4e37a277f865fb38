//! `blockprobe report FILE [--format text|json|folded|svg|pprof] [-o OUT]`: show a saved
//! report, or export it for flame graph and profiling tools.

use std::io::{self, IsTerminal as _, Write};
use std::path::Path;

use crate::cli::ReportFormat;
use crate::render::summary::{SummaryOptions, write_summary};
use crate::report::Report;

/// Loads the report at `path` and prints it to stdout, or writes it to `output`
/// atomically. A closed stdout (e.g. piped into `head`) is not an error.
pub fn run(path: &Path, format: ReportFormat, output: Option<&Path>) -> anyhow::Result<()> {
    if let Some(output) = output {
        let report = Report::load(path)?;
        return crate::report::write_atomic_with(output, |w| write_format(&report, format, w));
    }
    if format == ReportFormat::Pprof && io::stdout().is_terminal() {
        anyhow::bail!("a pprof profile is binary: write it with -o FILE or redirect stdout");
    }
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
    let written = write_format(&report, format, out);
    // Keep the io::Error in the chain so that a broken pipe is recognisable.
    written.map_err(|e| anyhow::Error::new(e).context("writing report to stdout"))
}

/// Writes `report` in `format` to `out`.
fn write_format(report: &Report, format: ReportFormat, out: &mut dyn Write) -> io::Result<()> {
    use crate::export::{folded, pprof, svg};
    match format {
        ReportFormat::Text => write_summary(report, &SummaryOptions::default(), out),
        ReportFormat::Json => serde_json::to_writer_pretty(&mut *out, report)
            .map_err(io::Error::from)
            .and_then(|()| writeln!(out))
            .and_then(|()| out.flush()),
        ReportFormat::Folded => out
            .write_all(folded::folded(report).as_bytes())
            .and_then(|()| out.flush()),
        ReportFormat::Svg => svg::write_svg(report, out).and_then(|()| out.flush()),
        ReportFormat::Pprof => out
            .write_all(&pprof::encode(report))
            .and_then(|()| out.flush()),
    }
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
    fn exports_to_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.json");
        let r = sample_report();
        r.write_atomic(&path).unwrap();
        for (format, check) in [
            (ReportFormat::Folded, b"<unknown>;".as_slice()),
            (ReportFormat::Svg, b"<?xml".as_slice()),
            (ReportFormat::Json, b"{".as_slice()),
        ] {
            let out = dir.path().join("out");
            run(&path, format, Some(&out)).unwrap();
            let bytes = std::fs::read(&out).unwrap();
            assert!(bytes.starts_with(check), "{format:?}");
        }
        let out = dir.path().join("p.pb");
        run(&path, ReportFormat::Pprof, Some(&out)).unwrap();
        let p = <crate::export::pprof::proto::Profile as prost::Message>::decode(
            std::fs::read(&out).unwrap().as_slice(),
        )
        .unwrap();
        assert_eq!(p.sample.iter().map(|s| s.value[0]).sum::<i64>(), 36);
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
        for name in ["folded", "svg", "pprof"] {
            assert!(ReportFormat::from_str(name, false).is_ok(), "{name}");
        }
        assert!(ReportFormat::from_str("yaml", false).is_err());
    }
}
