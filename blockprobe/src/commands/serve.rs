//! `blockprobe serve --listen ADDR`: trace every Python process on the host, for as long
//! as it runs, and expose Prometheus metrics on `http://ADDR/metrics`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use blockprobe_common::config::Scope;

use crate::{
    cli::TraceOptions,
    commands::tracing,
    metrics::{Metrics, MetricsConfig, http, sink::MetricsSink},
};

/// What `serve` needs beyond the tracing options.
#[derive(Clone, Copy, Debug)]
pub struct ServeOptions {
    /// Where to listen.
    pub listen: SocketAddr,
    /// Functions per service with series of their own.
    pub max_functions: usize,
    /// Services with series of their own.
    pub max_services: usize,
}

/// Serves until a signal or `--duration`; writes the report (`-o`) at the end.
pub async fn run(options: TraceOptions, serve: ServeOptions) -> anyhow::Result<i32> {
    let listener = tokio::net::TcpListener::bind(serve.listen)
        .await
        .with_context(|| format!("cannot listen on {}", serve.listen))?;
    let addr = listener
        .local_addr()
        .context("reading the listening address")?;
    let threshold_ns = u64::try_from(options.threshold.as_nanos()).unwrap_or(u64::MAX);
    let metrics = Arc::new(Mutex::new(Metrics::new(MetricsConfig {
        threshold_ns,
        max_functions: serve.max_functions,
        max_services: serve.max_services,
    })));
    let for_sink = metrics.clone();
    let identity = options.identity();
    let mut prepared = tracing::prepare_with(&options, Scope::Host, move |inner| {
        Box::new(MetricsSink::new(for_sink, inner, identity))
    })?;
    prepared.session.attach_existing()?;
    let server = tokio::spawn(http::serve(listener, metrics));
    // Tracing is live: every Python process, including later ones, is followed.
    eprintln!("blockprobe: serving metrics on http://{addr}/metrics");
    let started = prepared.started();
    let run = prepared
        .session
        .run(prepared.ring, options.duration, None)
        .await;
    server.abort();
    run?;
    tracing::finish(prepared.session, &options, started)?;
    Ok(0)
}
