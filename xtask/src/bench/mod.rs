//! `cargo xtask bench`: what blockprobe costs, measured — not asserted.
//!
//! Every workload runs bare and under each mode, the modes alternating within each
//! repetition (A/B/A/B…) so that drifts of the machine hit them all alike: blockprobe's
//! modes, the floor (the tracepoints it hooks, with nothing attached), blocksnoop, and
//! in-process peers. Reported: medians, min–max and the ratio to bare; the tracers' own
//! CPU time and RSS; the kernel-side run time of each of their BPF programs
//! (`kernel.bpf_stats_enabled`). Every process the bench starts runs in a process group
//! of its own, killed whole; at the end, none may be left running.

mod kernel;
mod peers;
mod plan;
mod procs;
mod render;
mod runner;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context as _, Result, bail};

use plan::{Mode, Workload};
use render::{Results, Samples};
use runner::Bench;

/// Options of `cargo xtask bench`.
pub struct BenchOptions {
    /// Repetitions of every workload × mode.
    pub reps: usize,
    /// Only these workloads (`--workload` keys); all when empty.
    pub workloads: Vec<String>,
    /// A baseline blockprobe binary to measure host-wide in the same run.
    pub baseline: Option<PathBuf>,
}

/// Runs the benchmark and writes `bench/results/latest.md` (a partial run, with
/// `--workload`, writes `bench/results/partial.md`).
pub fn run(root: &Path, target: &Path, blockprobe: &Path, opts: &BenchOptions) -> Result<()> {
    let workloads = selected(&opts.workloads)?;
    let peers = peers::Peers::ensure(target)?;
    crate::apt::ensure(&["wrk", "bpftool"], "the benchmark")?;
    kernel::mount_tracing()?;
    let stats = kernel::BpfStats::take()?;
    stats.set(false)?;
    let bench = Bench {
        root: root.to_path_buf(),
        blockprobe: blockprobe.to_path_buf(),
        baseline: opts.baseline.clone(),
        peers,
        started: procs::Started::default(),
    };
    let measured = measure_all(&bench, &stats, &workloads, opts);
    let left = bench.started.check_none_left(&bench.markers());
    drop(stats);
    let (samples, bpf_runs, elapsed) = measured?;
    left?;
    let report = render::render(&Results {
        samples: &samples,
        bpf_runs: &bpf_runs,
        reps: opts.reps,
        elapsed,
        baseline: opts.baseline.as_ref().map(|b| b.display().to_string()),
    })?;
    print!("{report}");
    let dir = root.join("bench/results");
    std::fs::create_dir_all(&dir)?;
    let name = if workloads.len() == Workload::ALL.len() {
        "latest.md"
    } else {
        "partial.md"
    };
    let path = dir.join(name);
    std::fs::write(&path, &report).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("bench: written to {}", path.display());
    Ok(())
}

/// The workloads `keys` name (all when empty).
fn selected(keys: &[String]) -> Result<Vec<Workload>> {
    if keys.is_empty() {
        return Ok(Workload::ALL.to_vec());
    }
    keys.iter()
        .map(|k| {
            Workload::by_key(k).with_context(|| {
                let known: Vec<&str> = Workload::ALL.iter().map(|w| w.key()).collect();
                format!("no workload {k:?} (known: {})", known.join(", "))
            })
        })
        .collect()
}

type Measured = (
    Samples,
    BTreeMap<(Workload, Mode), runner::Sample>,
    std::time::Duration,
);

/// The timed repetitions, then one run per tracer mode with BPF statistics on.
fn measure_all(
    bench: &Bench,
    stats: &kernel::BpfStats,
    workloads: &[Workload],
    opts: &BenchOptions,
) -> Result<Measured> {
    if opts.reps == 0 {
        bail!("--reps must be at least 1");
    }
    let baseline = opts.baseline.is_some();
    let started = Instant::now();
    let measure = |workload: Workload, mode: Mode, pass: &str| {
        eprintln!("bench: {pass} {} / {}", workload.name(), mode.name());
        bench
            .measure(workload, mode)
            .with_context(|| format!("{} under {}", workload.name(), mode.name()))
    };
    let mut samples: Samples = BTreeMap::new();
    for rep in 1..=opts.reps {
        for &workload in workloads {
            for mode in workload.modes(baseline) {
                let sample = measure(workload, mode, &format!("rep {rep}/{}", opts.reps))?;
                samples.entry((workload, mode)).or_default().push(sample);
            }
        }
    }
    stats.set(true)?;
    let mut bpf_runs = BTreeMap::new();
    for &workload in workloads {
        for mode in workload
            .modes(baseline)
            .into_iter()
            .filter(|m| m.has_tracer())
        {
            bpf_runs.insert((workload, mode), measure(workload, mode, "BPF statistics")?);
        }
    }
    stats.set(false)?;
    Ok((samples, bpf_runs, started.elapsed()))
}
