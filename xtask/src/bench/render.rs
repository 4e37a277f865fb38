//! The results as Markdown: budgets, every workload side by side, every measurement,
//! and the run time per call of each BPF program.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::Command;
use std::time::Duration;

use anyhow::Result;

use super::plan::{Mode, Workload};
use super::runner::{LOAD_CPU, Sample, TracerCost, WORKLOAD_CPU};

/// The most CPU the tracer may use at 1,000 stalls/s, in % of one core.
const TRACER_CPU_BUDGET: f64 = 1.0;
/// The most memory the tracer may hold at 1,000 stalls/s, in MB.
const TRACER_RSS_BUDGET_MB: f64 = 30.0;

/// Every sample of the run, by workload and mode.
pub type Samples = BTreeMap<(Workload, Mode), Vec<Sample>>;

/// What the report is made of.
pub struct Results<'a> {
    pub samples: &'a Samples,
    /// One run per tracer mode with BPF statistics on.
    pub bpf_runs: &'a BTreeMap<(Workload, Mode), Sample>,
    pub reps: usize,
    pub elapsed: Duration,
    /// The baseline binary measured as well, if any.
    pub baseline: Option<String>,
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// One workload × mode, summarized over its repetitions.
struct Row {
    median: f64,
    min: f64,
    max: f64,
    /// Cost relative to bare (time ratio, or bare/traced for throughput).
    ratio: f64,
    p99_ms: Option<f64>,
    /// The tracer's CPU (% of a core), RSS and peak RSS (MB).
    tracer: Option<(f64, f64, f64)>,
}

type Rows = BTreeMap<(Workload, Mode), Row>;

fn summarize(samples: &Samples) -> Rows {
    let mut rows = BTreeMap::new();
    for (&(workload, mode), runs) in samples {
        let Some(bare) = samples.get(&(workload, Mode::Bare)) else {
            continue;
        };
        let bare_median = median(&mut bare.iter().map(|x| x.value).collect::<Vec<_>>());
        let mut values: Vec<f64> = runs.iter().map(|x| x.value).collect();
        let med = median(&mut values);
        let ratio = if workload.higher_is_better() {
            bare_median / med
        } else {
            med / bare_median
        };
        let mut p99: Vec<f64> = runs.iter().filter_map(|x| x.p99_ms).collect();
        let costs: Vec<&TracerCost> = runs.iter().filter_map(|x| x.tracer.as_ref()).collect();
        let tracer = (!costs.is_empty()).then(|| {
            let mut cpu: Vec<f64> = costs
                .iter()
                .map(|c| 100.0 * c.cpu_s / c.wall_s.max(1e-9))
                .collect();
            let mb = |kb: u64| kb as f64 / 1024.0;
            let rss = costs.iter().map(|c| c.rss_kb).max().unwrap_or(0);
            let peak = costs.iter().map(|c| c.peak_rss_kb).max().unwrap_or(0);
            (median(&mut cpu), mb(rss), mb(peak))
        });
        rows.insert(
            (workload, mode),
            Row {
                median: med,
                min: values[0],
                max: values[values.len() - 1],
                ratio,
                p99_ms: (!p99.is_empty()).then(|| median(&mut p99)),
                tracer,
            },
        );
    }
    rows
}

/// The report.
pub fn render(results: &Results<'_>) -> Result<String> {
    let rows = summarize(results.samples);
    let mut s = String::new();
    writeln!(s, "# blockprobe benchmark\n")?;
    writeln!(s, "{}\n", machine_info(results.baseline.as_deref()))?;
    writeln!(
        s,
        "{} repetitions, modes alternating within each; {:.0} s in all. Ratio: the \
         workload's cost relative to bare (time ratio, or bare/traced for throughput), so \
         1.05 means 5% slower.\n",
        results.reps,
        results.elapsed.as_secs_f64()
    )?;
    render_budgets(&mut s, &rows)?;
    render_side_by_side(&mut s, &rows)?;
    render_rows(&mut s, &rows)?;
    render_bpf(&mut s, results.bpf_runs)?;
    Ok(s)
}

/// The budgets against blockprobe's worst mode beyond the floor, with blocksnoop's cost
/// for comparison.
fn render_budgets(s: &mut String, rows: &Rows) -> Result<()> {
    writeln!(
        s,
        "## Budgets\n\nFloor: the tracepoints blockprobe hooks (the epoll syscalls' and \
         `close`'s `syscalls:` tracepoints; fentry is refused on this kernel) turned on \
         with nothing attached (ftrace, recording off): with any syscall tracepoint on, \
         every syscall on the host takes the kernel's traced path, whoever listens. Beyond \
         the floor: a ratio divided by the floor's, what the tool's own programs and \
         process add.\n"
    )?;
    writeln!(
        s,
        "| workload | budget beyond the floor | blockprobe, worst mode | floor | blockprobe beyond the floor | within budget | blocksnoop (beyond the floor) |"
    )?;
    writeln!(s, "|---|---|---|---|---|---|---|")?;
    let verdict = |ok: bool| if ok { "yes" } else { "no" };
    for workload in Workload::ALL {
        let Some(budget) = workload.budget() else {
            continue;
        };
        let worst = (rows.iter())
            .filter(|((w, m), _)| *w == workload && m.is_blockprobe())
            .map(|((_, m), row)| (row.ratio, *m))
            .max_by(|a, b| a.0.total_cmp(&b.0));
        let Some((worst, mode)) = worst else {
            continue;
        };
        let floor = rows.get(&(workload, Mode::Floor)).map_or(1.0, |r| r.ratio);
        let beyond = worst / floor;
        let blocksnoop = rows
            .get(&(workload, Mode::Blocksnoop))
            .map_or("—".into(), |r| {
                format!("{:.3} ({:.3})", r.ratio, r.ratio / floor)
            });
        writeln!(
            s,
            "| {} | {budget:.2} | {worst:.3} ({}) | {floor:.3} | {beyond:.3} | {} | {blocksnoop} |",
            workload.name(),
            mode.name(),
            verdict(beyond <= budget),
        )?;
    }
    let stalls = |pick: fn(Mode) -> bool| {
        (rows.iter())
            .filter(|((w, m), _)| *w == Workload::StallRate && pick(*m))
            .filter_map(|(_, row)| row.tracer)
            .fold((0.0f64, 0.0f64, 0.0f64), |acc, t| {
                (acc.0.max(t.0), acc.1.max(t.1), acc.2.max(t.2))
            })
    };
    let (cpu, rss, peak) = stalls(Mode::is_blockprobe);
    let (snoop_cpu, snoop_rss, _) = stalls(|m| m == Mode::Blocksnoop);
    writeln!(
        s,
        "| tracer CPU at 1,000 stalls/s (% of a core) | {TRACER_CPU_BUDGET:.1} | {cpu:.1} | — | — | {} | {snoop_cpu:.1} |",
        verdict(cpu <= TRACER_CPU_BUDGET)
    )?;
    writeln!(
        s,
        "| tracer RSS at 1,000 stalls/s, MB (start-up peak) | {TRACER_RSS_BUDGET_MB:.0} | {rss:.1} ({peak:.1}) | — | — | {} | {snoop_rss:.1} |",
        verdict(peak.max(rss) <= TRACER_RSS_BUDGET_MB)
    )?;
    Ok(())
}

/// Ratios to bare, a column per mode (what the README shows).
fn render_side_by_side(s: &mut String, rows: &Rows) -> Result<()> {
    let modes: Vec<Mode> = {
        let mut modes: Vec<Mode> = rows.keys().map(|&(_, m)| m).collect();
        modes.sort();
        modes.dedup();
        modes.retain(|&m| m != Mode::Bare);
        modes
    };
    writeln!(
        s,
        "\n## Side by side\n\nRatio to bare per workload and mode (medians; — where a \
         mode does not apply).\n"
    )?;
    let header: Vec<&str> = modes.iter().map(|m| m.name()).collect();
    writeln!(s, "| workload | {} |", header.join(" | "))?;
    writeln!(s, "|---|{}", "---|".repeat(modes.len()))?;
    for workload in Workload::ALL {
        if !rows.contains_key(&(workload, Mode::Bare)) {
            continue;
        }
        let cells: Vec<String> = modes
            .iter()
            .map(|&m| {
                rows.get(&(workload, m))
                    .map_or("—".into(), |r| format!("{:.3}", r.ratio))
            })
            .collect();
        writeln!(s, "| {} | {} |", workload.name(), cells.join(" | "))?;
    }
    Ok(())
}

fn render_rows(s: &mut String, rows: &Rows) -> Result<()> {
    writeln!(
        s,
        "\n## Every workload and mode\n\nTracer CPU %: the user+system time of the \
         tracer's processes while the workload ran (after start-up), as a share of one \
         core. Tracer RSS: of its main process at the end of the workload (the largest over \
         the runs), and its peak, which start-up sets.\n"
    )?;
    writeln!(
        s,
        "| workload | mode | median | min–max | ratio | p99 ms | tracer CPU % | tracer RSS MB (peak) |"
    )?;
    writeln!(s, "|---|---|---|---|---|---|---|---|")?;
    for ((workload, mode), row) in rows {
        let p99 = row.p99_ms.map_or(String::new(), |p| format!("{p:.2}"));
        let (cpu, rss) = row
            .tracer
            .map_or((String::new(), String::new()), |(cpu, rss, peak)| {
                (format!("{cpu:.1}"), format!("{rss:.1} ({peak:.1})"))
            });
        writeln!(
            s,
            "| {} | {} | {:.3} | {:.3}–{:.3} | {:.3} | {p99} | {cpu} | {rss} |",
            workload.name(),
            mode.name(),
            row.median,
            row.min,
            row.max,
            row.ratio,
        )?;
    }
    Ok(())
}

fn render_bpf(s: &mut String, bpf_runs: &BTreeMap<(Workload, Mode), Sample>) -> Result<()> {
    writeln!(
        s,
        "\n## BPF programs (kernel side), per tracer mode\n\nFrom one more run of each \
         workload × tracer mode with `kernel.bpf_stats_enabled=1`, which is off during the \
         timed runs above (the statistics add two clock reads to every program run): every \
         program the tracer's processes hold. Skipped: runs the kernel did not make \
         (`recursion_misses`).\n"
    )?;
    writeln!(s, "| workload | mode | program | runs | ns/run | skipped |")?;
    writeln!(s, "|---|---|---|---|---|---|")?;
    for ((workload, mode), run) in bpf_runs {
        for (name, stats) in run.tracer.iter().flat_map(|cost| &cost.bpf) {
            let per = if stats.runs == 0 {
                0.0
            } else {
                stats.run_time_ns as f64 / stats.runs as f64
            };
            writeln!(
                s,
                "| {} | {} | {name} | {} | {per:.0} | {} |",
                workload.name(),
                mode.name(),
                stats.runs,
                stats.skipped,
            )?;
        }
    }
    Ok(())
}

fn machine_info(baseline: Option<&str>) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let rev = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let baseline = baseline.map_or(String::new(), |b| format!("; baseline binary {b}"));
    format!(
        "Machine: {cores} cores, {cpu}, Linux {}; Python: {}; blockprobe at {rev} (release build){baseline}. \
         Workloads run on CPU {WORKLOAD_CPU}, wrk on CPU {LOAD_CPU} (taskset, with 2+ cores); the tracer is not pinned.",
        kernel.trim(),
        crate::pyenv_311().display()
    )
}
