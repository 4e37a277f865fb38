//! An SVG flame graph of blocking time, rendered in-process by inferno from the folded
//! stacks ([`super::folded`]): each box is a frame, its width the stall time spent under
//! it; the root level is the service, the top of each tower the cause and syscall.

use std::io::{self, Write};

use inferno::flamegraph::{self, Options, Palette, color::MultiPalette};

use super::folded::folded_lines;
use super::weighted_stacks;
use crate::render::{human_duration, ms};
use crate::report::Report;

/// Writes the flame graph of `report` to `out`.
pub fn write_svg(report: &Report, out: &mut dyn Write) -> io::Result<()> {
    let lines = folded_lines(report);
    let (_, complete) = weighted_stacks(report);
    let mut opts = Options::default();
    opts.title = "blockprobe: what blocked the asyncio event loops".to_owned();
    let mut subtitle = format!(
        "{} stalls >= {} ms in {}",
        report.stall_count(),
        ms(report.threshold_ns),
        human_duration(report.duration_ns)
    );
    if !report.host.is_empty() {
        subtitle.push_str(" on ");
        subtitle.push_str(&report.host);
    }
    if !complete {
        subtitle.push_str(" (longest stalls only: report without a stacks table)");
    }
    opts.subtitle = Some(subtitle);
    opts.count_name = "ns".to_owned();
    opts.name_type = "Frame:".to_owned();
    opts.colors = Palette::Multi(MultiPalette::Python);
    opts.deterministic = true;
    opts.hash = true;
    if lines.is_empty() {
        return write_empty(&opts, out);
    }
    flamegraph::from_lines(&mut opts, lines.iter().map(String::as_str), out)
}

/// inferno refuses empty input; an empty report still gets a valid SVG.
fn write_empty(opts: &Options<'_>, out: &mut dyn Write) -> io::Result<()> {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    write!(
        out,
        "<?xml version=\"1.0\" standalone=\"no\"?>\n\
         <svg version=\"1.1\" width=\"1200\" height=\"90\" xmlns=\"http://www.w3.org/2000/svg\">\
         <text x=\"600\" y=\"24\" text-anchor=\"middle\" font-size=\"17\" font-family=\"Verdana\">{}</text>\
         <text x=\"600\" y=\"60\" text-anchor=\"middle\" font-size=\"12\" font-family=\"Verdana\">{}: no stalls</text>\
         </svg>\n",
        esc(&opts.title),
        esc(opts.subtitle.as_deref().unwrap_or(""))
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::{Aggregator, RunInfo};
    use crate::report::tests::sample_report;

    fn svg_of(r: &Report) -> String {
        let mut out = Vec::new();
        write_svg(r, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn flame_graph_names_the_culprit() {
        let svg = svg_of(&sample_report());
        assert!(svg.starts_with("<?xml"), "{}", &svg[..100]);
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("Client.fetch_data"), "culprit in the SVG");
        assert!(svg.contains("[sleep: clock_nanosleep]"));
        assert!(!svg.contains('\u{1b}'), "names are escaped");
        assert!(svg.contains("36 stalls &gt;= 10.0 ms") || svg.contains("36 stalls >= 10.0 ms"));
    }

    #[test]
    fn empty_report_is_still_an_svg() {
        let r = Aggregator::default().report(RunInfo {
            host: "h<&>".into(),
            started_unix_ns: 0,
            duration_ns: 1,
            threshold_ns: 1,
        });
        let svg = svg_of(&r);
        assert!(
            svg.contains("<svg") && svg.trim_end().ends_with("</svg>"),
            "{svg}"
        );
        assert!(svg.contains("h&lt;&amp;&gt;: no stalls"), "{svg}");
    }
}
