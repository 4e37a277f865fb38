//! The per-function entries of a report, and the special function names.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::histogram::Log2Histogram;
use crate::model::Cause;

/// Function name used for stalls that have no culprit frame.
pub const UNKNOWN_FUNCTION: &str = "<unknown>";
/// Function name of stalls whose main cause is `stopped` (SIGSTOP, a ptrace stop, the
/// freezer): the time is nobody's code's.
pub const STOPPED_FUNCTION: &str = "<stopped>";
/// Function name under which stalls of functions past the aggregator's `max_functions`
/// are folded.
pub const OTHER_FUNCTION: &str = "<other>";

/// One function's aggregate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FunctionReport {
    /// Qualified name, or `<unknown>` / `<other>`.
    pub function: String,
    /// File name (empty for `<unknown>` / `<other>`).
    pub file: String,
    /// `file` relative to site-packages, the stdlib or the app root: the same on every
    /// host (see [`crate::identity::stable_file`]). Functions are compared and
    /// merged by `function` and `stable_file`.
    #[serde(default)]
    pub stable_file: String,
    /// Serialized inline as `count`, `total_ns`, `max_ns`, `buckets`.
    #[serde(flatten)]
    pub histogram: Log2Histogram,
    /// Stall time by cause, on CPU and off (sum of the stalls' `causes`).
    #[serde(default)]
    pub causes: BTreeMap<Cause, u64>,
}

impl FunctionReport {
    /// The key functions are compared and merged by: the function and its stable file
    /// (derived from `file` for reports written before `stable_file` existed).
    pub fn stable_key(&self) -> (String, String) {
        let file = if self.stable_file.is_empty() {
            crate::identity::stable_file(&self.file, [])
        } else {
            self.stable_file.clone()
        };
        (self.function.clone(), file)
    }
}

/// Sorts functions as the report lists them: total stall time descending, then count
/// descending, then function and file ascending.
pub fn sort_functions(functions: &mut [FunctionReport]) {
    functions.sort_by(|a, b| {
        b.histogram
            .total_ns()
            .cmp(&a.histogram.total_ns())
            .then(b.histogram.count().cmp(&a.histogram.count()))
            .then_with(|| a.function.cmp(&b.function))
            .then_with(|| a.file.cmp(&b.file))
    });
}
