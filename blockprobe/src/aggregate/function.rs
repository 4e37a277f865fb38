//! The per-function aggregate: what identifies a culprit function, and what is known
//! about it.

use std::collections::BTreeMap;

use crate::histogram::Log2Histogram;
use crate::identity::StableFiles;
use crate::model::{Cause, Stall, add_causes};
use crate::report::{FunctionReport, STOPPED_FUNCTION, UNKNOWN_FUNCTION};

/// Identifies a culprit function: its qualified name, its file, and the file's stable
/// name in the stalling process.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FunctionKey {
    /// `co_qualname` (or [`UNKNOWN_FUNCTION`], [`STOPPED_FUNCTION`], [`crate::report::OTHER_FUNCTION`]).
    pub function: String,
    /// `co_filename` (empty for the two special keys).
    pub file: String,
    /// `file` made stable with the app root of the process that stalled (see
    /// [`crate::identity::stable_file`]); empty for the special keys.
    pub stable_file: String,
}

impl FunctionKey {
    /// The key a stall of a process whose app root is `app_root` is aggregated under
    /// (before any bound). The report, its stacks and the metrics all take their
    /// stable file names from here or from the same `files`, with the same root, so a
    /// function has one key everywhere.
    pub fn of_stall(stall: &Stall, app_root: &str, files: &mut StableFiles) -> Self {
        match &stall.culprit {
            Some(f) => FunctionKey {
                function: f.function.clone(),
                file: f.file.clone(),
                stable_file: files.get(&f.file, app_root),
            },
            None if stall.cause == Cause::Stopped => Self::special(STOPPED_FUNCTION),
            None => Self::special(UNKNOWN_FUNCTION),
        }
    }

    /// Whether this is the key of no function: [`UNKNOWN_FUNCTION`] or
    /// [`STOPPED_FUNCTION`] (which never count against `max_functions`).
    pub(super) fn is_nobody(&self) -> bool {
        self.file.is_empty()
            && (self.function == UNKNOWN_FUNCTION || self.function == STOPPED_FUNCTION)
    }

    /// The key of [`UNKNOWN_FUNCTION`], [`STOPPED_FUNCTION`] or [`crate::report::OTHER_FUNCTION`].
    pub fn special(name: &str) -> Self {
        FunctionKey {
            function: name.to_owned(),
            file: String::new(),
            stable_file: String::new(),
        }
    }
}

/// What is known about one culprit function.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FunctionStats {
    /// Stall durations.
    pub histogram: Log2Histogram,
    /// Stall time by cause, on CPU and off (sum of `Stall::causes`).
    pub causes: BTreeMap<Cause, u64>,
}

impl FunctionStats {
    /// The report entry of this function, named by `key`.
    pub fn report(&self, key: &FunctionKey) -> FunctionReport {
        FunctionReport {
            function: key.function.clone(),
            file: key.file.clone(),
            stable_file: key.stable_file.clone(),
            histogram: self.histogram.clone(),
            causes: self.causes.clone(),
        }
    }

    /// Adds one stall.
    pub fn record(&mut self, stall: &Stall) {
        self.histogram.record(stall.duration_ns);
        add_causes(&mut self.causes, &stall.causes);
    }
}
