//! The runs a merged report was made of.

use serde::{Deserialize, Serialize};

use super::Report;

/// One run a merged report was made of.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Source {
    /// Wall-clock start, ns since the Unix epoch.
    pub started_unix_ns: u64,
    /// Wall-clock end.
    pub ended_unix_ns: u64,
    /// Host name.
    pub host: String,
    /// Version of the blockprobe that traced it.
    pub blockprobe_version: String,
    /// Kernel release of the host.
    pub kernel_release: String,
    /// Stalls in the run.
    pub stalls: u64,
}

impl Source {
    /// The sources of `report`: its own `sources` if it is a merge, else itself.
    pub fn of(report: &Report) -> Vec<Source> {
        if !report.sources.is_empty() {
            return report.sources.clone();
        }
        vec![Source {
            started_unix_ns: report.started_unix_ns,
            ended_unix_ns: end_of(report),
            host: report.host.clone(),
            blockprobe_version: report.blockprobe_version.clone(),
            kernel_release: report.kernel_release.clone(),
            stalls: report.stall_count(),
        }]
    }
}

/// The end of a run (computed for reports written before `ended_unix_ns` existed).
pub fn end_of(report: &Report) -> u64 {
    if report.ended_unix_ns != 0 {
        report.ended_unix_ns
    } else {
        report.started_unix_ns.saturating_add(report.duration_ns)
    }
}
