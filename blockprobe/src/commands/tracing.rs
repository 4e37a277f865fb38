//! What `run` and `trace` share: checking the host, attaching the probes, choosing the
//! live output, and finishing with a report and a summary.

use std::time::SystemTime;

use anyhow::Context as _;
use blockprobe_common::config::Scope;

use crate::{
    aggregate::{Aggregator, Limits, RunInfo},
    cli::TraceOptions,
    host, preflight,
    probes::{Probes, Settings},
    render::live::LiveFormat,
    render::{live, summary},
    session::{
        Session,
        sink::{StallSink, Status},
    },
};

/// A session ready to run, with what is needed to finish it.
pub struct Prepared {
    /// The session.
    pub session: Session,
    /// The event ring buffer, read by the session.
    pub ring: aya::maps::RingBuf<aya::maps::MapData>,
    started: SystemTime,
}

/// Checks the host, loads and attaches the probes for `scope`, and opens the live output.
pub fn prepare(options: &TraceOptions, scope: Scope) -> anyhow::Result<Prepared> {
    prepare_with(options, scope, |sink| sink)
}

/// [`prepare`], with the live output wrapped by `wrap` (e.g. to also feed metrics).
pub fn prepare_with(
    options: &TraceOptions,
    scope: Scope,
    wrap: impl FnOnce(Box<dyn StallSink + Send>) -> Box<dyn StallSink + Send>,
) -> anyhow::Result<Prepared> {
    let tracefs = preflight::check()?;
    let threshold_ns =
        u64::try_from(options.threshold.as_nanos()).context("threshold too large")?;
    let settings = Settings {
        scope,
        threshold_ns,
        // Calls shorter than a tenth of the threshold cannot explain a stall on their own.
        min_block_ns: threshold_ns / 10,
        ring_bytes: options.ring_buffer_kib * 1024,
    };
    let mut probes = Probes::attach(&tracefs, &settings)?;
    let ring = probes
        .take_events()
        .context("the event ring buffer was already taken")?;
    let sink = if options.quiet {
        live::quiet_sink()
    } else {
        live::sink_for(options.format)
    };
    let mut sink = wrap(sink);
    sink.status(&Status::Ready {
        poll_hook: probes.poll_hook().hook,
        fentry_refused: probes.poll_hook().fentry_refused.clone(),
    })?;
    Ok(Prepared {
        session: Session::new(
            probes,
            sink,
            Aggregator::new(Limits::default()),
            options.identity(),
        )?,
        ring,
        started: SystemTime::now(),
    })
}

/// Ends a session: writes the report file if asked, then prints the summary.
pub fn finish(session: Session, options: &TraceOptions, started: SystemTime) -> anyhow::Result<()> {
    let poll_hook = session.poll_hook();
    let (aggregator, _sink, _clock) = session.into_parts();
    let nanos = |d: std::time::Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    let mut report = aggregator.report(RunInfo {
        host: host::host_name(),
        started_unix_ns: nanos(
            started
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default(),
        ),
        duration_ns: nanos(started.elapsed().unwrap_or_default()),
        threshold_ns: nanos(options.threshold),
    });
    report.kernel_release = host::kernel_release();
    report.poll_hook = poll_hook.name().to_owned();
    if let Some(path) = &options.output {
        report.write_atomic(path)?;
    }
    if !options.quiet && options.format == LiveFormat::Text {
        // After `| head -1` nobody reads it any more: that is no error.
        let mut out = live::UntilClosed::new(std::io::stdout());
        summary::write_summary(&report, &summary::SummaryOptions::default(), &mut out)
            .context("printing the summary")?;
    }
    Ok(())
}

impl Prepared {
    /// When the session started.
    pub fn started(&self) -> SystemTime {
        self.started
    }
}
