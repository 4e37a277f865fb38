//! Lost events, on one path: every loss, whether a kernel-side counter grew or
//! userspace dropped an event it could not decode, is counted in the report (the
//! aggregator's `lost`) and announced to the live sink as a [`Status::Lost`] (the live
//! warning, and `serve`'s `blockprobe_lost_events_total`), by [`Losses::lost`].

use std::collections::HashMap;

use blockprobe_common::counters::Counter;

use super::sink::{StallSink, Status};
use crate::aggregate::Aggregator;

/// Loss name of events dropped in userspace because they could not be decoded.
pub const UNDECODABLE_EVENT: &str = "undecodable_event";
/// Loss name of BPF program runs the kernel skipped (`recursion_misses`): a poll hook on
/// a classic tracepoint does not run while a BPF map syscall holds its CPU.
pub const SKIPPED_RUN: &str = "skipped_run";
/// Loss name of Python frames that could not be read (a frame pointer in the kernel's
/// walk, or a code object when symbolizing): the stack keeps an `<unreadable>` frame.
pub const UNREADABLE_FRAME: &str = "unreadable_frame";

/// Loss name of stacks left unread because their process's memory did not answer in
/// time (or was not read: it had not answered an earlier read): the stack keeps
/// `<unreadable>` frames.
pub const MEMORY_TIMEOUT: &str = "memory_timeout";

/// Loss name of looks at a traced process's files given up because they did not answer
/// in time: its command line is unknown, or its loops' runs are found only at their polls.
pub const FILE_TIMEOUT: &str = "file_timeout";

/// What has been reported of the kernel's cumulative loss counters.
#[derive(Debug, Default)]
pub struct Losses {
    reported: HashMap<&'static str, u64>,
}

impl Losses {
    /// The kernel counter `counter` now totals `total` (BPF counters are cumulative):
    /// its increase since the last reading is lost.
    pub fn counter_total(
        &mut self,
        counter: Counter,
        total: u64,
        aggregator: &mut Aggregator,
        sink: &mut dyn StallSink,
    ) -> anyhow::Result<()> {
        self.total(counter.name(), total, aggregator, sink)
    }

    /// The cumulative loss counter `name` now totals `total`: its increase since the
    /// last reading is lost.
    pub fn total(
        &mut self,
        name: &'static str,
        total: u64,
        aggregator: &mut Aggregator,
        sink: &mut dyn StallSink,
    ) -> anyhow::Result<()> {
        let reported = self.reported.entry(name).or_default();
        let new = total.saturating_sub(*reported);
        *reported = (*reported).max(total);
        Self::lost(name, new, aggregator, sink)
    }

    /// `count` events of kind `kind` were lost: counted in the report and announced.
    pub fn lost(
        kind: &str,
        count: u64,
        aggregator: &mut Aggregator,
        sink: &mut dyn StallSink,
    ) -> anyhow::Result<()> {
        if count == 0 {
            return Ok(());
        }
        aggregator.add_lost(kind, count);
        sink.status(&Status::Lost {
            kind: kind.to_owned(),
            count,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::RunInfo;
    use crate::render::live::JsonlSink;

    #[test]
    fn kernel_and_userspace_losses_reach_the_report_and_the_sink() {
        let mut losses = Losses::default();
        let mut aggregator = Aggregator::default();
        let mut sink = JsonlSink::new(Vec::new());
        for total in [3, 3, 5] {
            losses
                .counter_total(Counter::LostStall, total, &mut aggregator, &mut sink)
                .unwrap();
        }
        Losses::lost(UNDECODABLE_EVENT, 1, &mut aggregator, &mut sink).unwrap();
        Losses::lost(UNDECODABLE_EVENT, 0, &mut aggregator, &mut sink).unwrap();
        let events: Vec<Status> = String::from_utf8(sink.into_inner())
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let lost = |kind: &str, count| Status::Lost {
            kind: kind.into(),
            count,
        };
        assert_eq!(
            events,
            [
                lost("ringbuf_stall", 3),
                lost("ringbuf_stall", 2),
                lost(UNDECODABLE_EVENT, 1)
            ]
        );
        let report = aggregator.report(RunInfo {
            host: String::new(),
            started_unix_ns: 0,
            duration_ns: 1,
            threshold_ns: 1,
        });
        assert_eq!(report.lost_events, 6);
        assert_eq!(report.lost["ringbuf_stall"], 5);
        assert_eq!(report.lost[UNDECODABLE_EVENT], 1);
    }
}
