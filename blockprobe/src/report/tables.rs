//! The per-service and per-stack entries of a report: `services` (one histogram per
//! service label) and `stacks` (blocking time per distinct stack, for flame graphs and
//! pprof). Both cover every stall, not only the kept ones, and add up exactly when
//! reports are merged.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::histogram::Log2Histogram;
use crate::model::{Cause, Stall};

/// The frame of the stack that collects the stacks past the aggregator's bound
/// ([`crate::aggregate::tables::MAX_STACKS`]).
pub const OTHER_STACKS: &str = "<other stacks>";

/// One service's aggregate: `{"service":str,"count":int,"total_ns":int,"max_ns":int,
/// "buckets":[…],"causes":{cause:int}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceReport {
    /// The service label ([`super::UNKNOWN_FUNCTION`] for stalls of unregistered processes).
    pub service: String,
    /// Stall durations, inline as in `functions`.
    #[serde(flatten)]
    pub histogram: Log2Histogram,
    /// Stall time by cause, on CPU and off (sum of the stalls' `causes`).
    #[serde(default)]
    pub causes: BTreeMap<Cause, u64>,
}

/// A frame of an aggregated stack: function and stable file (no line, so that stacks
/// stay the same across small code changes and hosts).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StackFrame {
    /// Qualified name.
    pub function: String,
    /// Stable file name (see [`crate::identity::stable_file`]).
    pub file: String,
}

/// What identifies an aggregated stack.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StackKey {
    /// Service label.
    pub service: String,
    /// What the loop was doing at the top of the stack: the stall's main cause and, if
    /// any, its longest blocking syscall (`sleep: clock_nanosleep`).
    pub leaf: String,
    /// Python frames, innermost first.
    pub frames: Vec<StackFrame>,
}

/// Blocking time of one distinct stack: `{"service":str,"leaf":str,
/// "frames":[{"function":str,"file":str}],"count":int,"total_ns":int}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackReport {
    /// Service label.
    pub service: String,
    /// Cause and syscall (see [`StackKey::leaf`]); empty for [`OTHER_STACKS`].
    pub leaf: String,
    /// Python frames, innermost first (empty when the stack was not read).
    pub frames: Vec<StackFrame>,
    /// Stalls with this stack.
    pub count: u64,
    /// Their total duration.
    pub total_ns: u64,
}

impl StackReport {
    /// The key it is aggregated (and merged) under.
    pub fn key(&self) -> StackKey {
        StackKey {
            service: self.service.clone(),
            leaf: self.leaf.clone(),
            frames: self.frames.clone(),
        }
    }
}

/// The leaf of a stall's stack (see [`StackKey::leaf`]).
pub fn leaf_of(stall: &Stall) -> String {
    match &stall.syscall {
        Some(syscall) => format!("{}: {syscall}", stall.cause.as_str()),
        None => stall.cause.as_str().to_owned(),
    }
}

/// Sorts services as reports list them.
pub fn sort_services(services: &mut [ServiceReport]) {
    services.sort_by(|a, b| {
        b.histogram
            .total_ns()
            .cmp(&a.histogram.total_ns())
            .then(b.histogram.count().cmp(&a.histogram.count()))
            .then_with(|| a.service.cmp(&b.service))
    });
}

/// Sorts stacks as reports list them.
pub fn sort_stacks(stacks: &mut [StackReport]) {
    stacks.sort_by(|a, b| {
        b.total_ns
            .cmp(&a.total_ns)
            .then(b.count.cmp(&a.count))
            .then_with(|| a.key().cmp(&b.key()))
    });
}
