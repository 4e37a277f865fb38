//! The live sink of `blockprobe serve`: feeds [`Metrics`] and passes every event on to
//! the usual live output.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::Metrics;
use crate::deadline;
use crate::host::{self, IdentityOptions};
use crate::model::Stall;
use crate::session::sink::{StallSink, Status};

/// The longest the labels of a newly traced process are waited for: the session read
/// them just before, within its own deadline; a process that did not answer then is
/// labelled by its command name.
const IDENTITY_DEADLINE: Duration = Duration::from_secs(1);

/// Updates the metrics, then forwards to `inner`.
pub struct MetricsSink {
    metrics: Arc<Mutex<Metrics>>,
    inner: Box<dyn StallSink + Send>,
    /// How processes are labelled, as in the report.
    identity: IdentityOptions,
}

impl MetricsSink {
    /// A sink updating `metrics` and forwarding to `inner`, labelling processes as
    /// `identity` says.
    pub fn new(
        metrics: Arc<Mutex<Metrics>>,
        inner: Box<dyn StallSink + Send>,
        identity: IdentityOptions,
    ) -> Self {
        MetricsSink {
            metrics,
            inner,
            identity,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Metrics> {
        lock(&self.metrics)
    }
}

/// Locks the metrics, also after a panic elsewhere (they stay usable).
pub fn lock(m: &Mutex<Metrics>) -> MutexGuard<'_, Metrics> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl StallSink for MetricsSink {
    fn stall(&mut self, stall: &Stall) -> anyhow::Result<()> {
        self.lock().stall(stall);
        self.inner.stall(stall)
    }

    fn status(&mut self, status: &Status) -> anyhow::Result<()> {
        match status {
            Status::Attached {
                pid,
                comm,
                python_version,
                ..
            } => {
                // The process is alive now: read its identity as the report does, off this
                // thread (its command line is read from its memory).
                let (identity, pid) = (self.identity.clone(), *pid);
                let (comm, version) = (comm.clone(), python_version.clone());
                let (name, python) = (comm.clone(), version.clone());
                let read = deadline::run(
                    &format!("reading the command line of pid {pid}"),
                    IDENTITY_DEADLINE,
                    move || Ok(host::process_info(&identity, pid, name, python)),
                );
                let info = read.unwrap_or_else(|_| {
                    host::unread_process_info(&self.identity, pid, comm, version)
                });
                self.lock().attach(&info);
            }
            Status::Loop { pid, tid } => self.lock().loop_thread(*pid, *tid),
            Status::LoopGone { pid, tid } => self.lock().loop_gone(*pid, *tid),
            Status::Stuck { pid, tid, .. } => self.lock().stuck(*pid, *tid),
            Status::Detached { pid, .. } => self.lock().detach(*pid),
            Status::Lost { kind, count } => self.lock().lost(kind, *count),
            _ => {}
        }
        self.inner.status(status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::MetricsConfig;
    use crate::metrics::process::SelfStats;
    use crate::model::fixtures::{frame, stall};
    use crate::render::live::JsonlSink;

    #[test]
    fn updates_metrics_and_forwards() {
        let metrics = Arc::new(Mutex::new(Metrics::new(MetricsConfig {
            threshold_ns: 1_000_000,
            max_functions: 10,
            max_services: 10,
        })));
        let mut sink = MetricsSink::new(
            metrics.clone(),
            Box::new(JsonlSink::new(Vec::new())),
            IdentityOptions::default(),
        );
        let me = std::process::id();
        sink.status(&Status::Attached {
            pid: me,
            ns_pid: None,
            comm: "test".into(),
            python_version: "3.11.7".into(),
        })
        .unwrap();
        sink.status(&Status::Loop { pid: me, tid: me }).unwrap();
        sink.stall(&stall(me, 0, 5_000_000, Some(frame("f", "/x/f.py", 1))))
            .unwrap();
        sink.status(&Status::Lost {
            kind: "k".into(),
            count: 1,
        })
        .unwrap();
        let text = lock(&metrics).render(&SelfStats::default());
        assert!(
            text.contains(",function=\"f\",file=\"/x/f.py\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("blockprobe_lost_events_total{kind=\"k\"} 1\n"));
        assert!(text.contains("blockprobe_event_loops{service=\""), "{text}");
        sink.status(&Status::Detached {
            pid: me,
            reason: crate::session::sink::DetachReason::Exit,
        })
        .unwrap();
        let text = lock(&metrics).render(&SelfStats::default());
        assert!(
            text.contains("blockprobe_traced_processes{service=\""),
            "{text}"
        );
        assert!(!text.contains("blockprobe_traced_processes{service=\"<unknown>\"} 1"));
    }
}
