//! `cargo xtask bench`: what blockprobe costs, measured — not asserted.
//!
//! Every workload runs bare and under each mode, the modes alternating within each
//! repetition (A/B/A/B…) so that drifts of the machine hit them all alike. Reported:
//! medians, min–max and the ratio to bare; the tracer's own CPU time and peak RSS; the
//! kernel-side run time of each BPF program (`kernel.bpf_stats_enabled`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader, ErrorKind, Write as _};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

/// PyPI packages of the workloads and of the peers blockprobe is compared with.
const BENCH_PY_DEPS: &[&str] = &[
    "aiohttp",
    "py-spy",
    "aiodebug",
    "asyncio-event-loop-monitor",
];
/// How long wrk loads the HTTP server per run.
const HTTP_SECONDS: u32 = 4;
/// How long a tracer or server may take to get ready.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// One way of running a workload.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Mode {
    Bare,
    TracePid,
    TraceHost,
    Serve,
    /// The `raw_syscalls` tracepoints on, with no BPF program and nothing recorded: the
    /// floor any tracer hooked there pays (this kernel has no kprobes or trampolines).
    SyscallHooksOnly,
    AsyncioDebug,
    LoopMonitor,
    Aiodebug,
    PySpy,
}

impl Mode {
    const ALL: [Mode; 9] = [
        Mode::Bare,
        Mode::TracePid,
        Mode::TraceHost,
        Mode::Serve,
        Mode::SyscallHooksOnly,
        Mode::AsyncioDebug,
        Mode::LoopMonitor,
        Mode::Aiodebug,
        Mode::PySpy,
    ];

    fn name(self) -> &'static str {
        match self {
            Mode::Bare => "bare",
            Mode::TracePid => "blockprobe trace -p PID --quiet",
            Mode::TraceHost => "blockprobe trace --quiet (host)",
            Mode::Serve => "blockprobe serve --quiet",
            Mode::SyscallHooksOnly => {
                "floor: raw_syscalls tracepoints, no BPF (ftrace, recording off)"
            }
            Mode::AsyncioDebug => "asyncio debug mode",
            Mode::LoopMonitor => "asyncio-event-loop-monitor",
            Mode::Aiodebug => "aiodebug slow callbacks",
            Mode::PySpy => "py-spy record -r 100",
        }
    }

    fn is_blockprobe(self) -> bool {
        matches!(self, Mode::TracePid | Mode::TraceHost | Mode::Serve)
    }

    /// The peer wrapper's name in `bench/workloads/peer.py`, for in-process peers.
    fn peer(self) -> &'static str {
        match self {
            Mode::AsyncioDebug => "asyncio-debug",
            Mode::LoopMonitor => "loop-monitor",
            Mode::Aiodebug => "aiodebug",
            _ => "none",
        }
    }
}

/// What a workload measures, and how.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Workload {
    /// aiohttp "hello" under wrk: requests/s (and p99 latency).
    Http,
    /// 200k asyncio.Queue ping-pongs: seconds.
    Queue,
    /// list(map(pyfunc, …)) and sorted(key=lambda): seconds.
    MapPyfunc,
    /// dd with 1-byte blocks, not Python: seconds.
    Syscalls,
    /// An asyncio loop stalling 1,000 times a second: what the tracer itself costs then.
    StallRate,
}

impl Workload {
    const ALL: [Workload; 5] = [
        Workload::Http,
        Workload::Queue,
        Workload::MapPyfunc,
        Workload::Syscalls,
        Workload::StallRate,
    ];

    fn name(self) -> &'static str {
        match self {
            Workload::Http => "aiohttp hello under wrk (req/s)",
            Workload::Queue => "asyncio.Queue ping-pong 200k (s)",
            Workload::MapPyfunc => "list(map(pyfunc)) 4M + sorted(key) (s)",
            Workload::Syscalls => "dd bs=1 count=2M, not Python (s)",
            Workload::StallRate => "1,000 stalls/s for 5 s, --threshold 500us (s)",
        }
    }

    /// The `--threshold` blockprobe runs with: the stall generator's stalls last 0.6 ms.
    fn threshold(self) -> &'static str {
        match self {
            Workload::StallRate => "500us",
            _ => "10ms",
        }
    }

    /// The most blockprobe may cost this workload, as a ratio to bare (issue 5).
    fn budget(self) -> Option<f64> {
        match self {
            Workload::Http => Some(1.01),
            Workload::Queue => Some(1.03),
            Workload::MapPyfunc => Some(1.05),
            Workload::Syscalls => Some(1.01),
            Workload::StallRate => None,
        }
    }

    /// Whether a larger number is better (throughput) rather than worse (time).
    fn higher_is_better(self) -> bool {
        self == Workload::Http
    }

    fn modes(self) -> Vec<Mode> {
        match self {
            // Not Python: only the system-wide modes say what it costs everyone else.
            Workload::Syscalls => vec![
                Mode::Bare,
                Mode::TraceHost,
                Mode::Serve,
                Mode::SyscallHooksOnly,
            ],
            // The tracer's own CPU and memory under load: blockprobe's modes only.
            Workload::StallRate => vec![Mode::Bare, Mode::TracePid, Mode::TraceHost, Mode::Serve],
            // No event loop: the asyncio peers do not apply.
            Workload::MapPyfunc => vec![
                Mode::Bare,
                Mode::TracePid,
                Mode::TraceHost,
                Mode::Serve,
                Mode::SyscallHooksOnly,
                Mode::PySpy,
            ],
            _ => Mode::ALL.to_vec(),
        }
    }
}

/// One measurement.
struct Sample {
    value: f64,
    /// p99 latency in ms (HTTP only).
    p99_ms: Option<f64>,
    tracer: Option<TracerCost>,
}

/// What the tracer itself cost during one run.
#[derive(Clone, Default)]
struct TracerCost {
    cpu_s: f64,
    wall_s: f64,
    peak_rss_kb: u64,
    /// Resident set size at the end of the workload (the peak is start-up's).
    rss_kb: u64,
    /// BPF program name → (run count, run time ns).
    bpf: BTreeMap<String, (u64, u64)>,
}

/// Options of `cargo xtask bench`.
pub struct BenchOptions {
    /// Repetitions of every workload × mode.
    pub reps: usize,
}

/// Runs the benchmark and writes `bench/results/latest.md`.
pub fn run(root: &Path, blockprobe: &Path, opts: &BenchOptions) -> Result<()> {
    let deps = root.join("target/benchdeps");
    install_py_deps(&deps)?;
    crate::apt::ensure(&["wrk", "bpftool"], "the benchmark")?;
    let stats = BpfStats::take()?;
    stats.set(false)?;
    let bench = Bench {
        root: root.to_path_buf(),
        blockprobe: blockprobe.to_path_buf(),
        deps,
    };
    let started = Instant::now();
    let measure = |workload: Workload, mode: Mode, pass: &str| {
        eprintln!("bench: {pass} {} / {}", workload.name(), mode.name());
        bench
            .measure(workload, mode)
            .with_context(|| format!("{} under {}", workload.name(), mode.name()))
    };
    let mut samples: BTreeMap<(Workload, Mode), Vec<Sample>> = BTreeMap::new();
    for rep in 1..=opts.reps {
        for workload in Workload::ALL {
            for mode in workload.modes() {
                let sample = measure(workload, mode, &format!("rep {rep}/{}", opts.reps))?;
                samples.entry((workload, mode)).or_default().push(sample);
            }
        }
    }
    // One more run per blockprobe mode, with statistics on, for the kernel-side table.
    stats.set(true)?;
    let mut bpf_runs: BTreeMap<(Workload, Mode), Sample> = BTreeMap::new();
    for workload in Workload::ALL {
        for mode in workload.modes().into_iter().filter(|m| m.is_blockprobe()) {
            bpf_runs.insert((workload, mode), measure(workload, mode, "BPF statistics")?);
        }
    }
    drop(stats);
    let report = render(&samples, &bpf_runs, opts.reps, started.elapsed())?;
    print!("{report}");
    let dir = root.join("bench/results");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("latest.md");
    std::fs::write(&path, &report).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("bench: written to {}", path.display());
    Ok(())
}

/// Installs the workloads' and peers' Python packages into `dir` (once).
fn install_py_deps(dir: &Path) -> Result<()> {
    // pip_install moves the directory into place only once complete.
    if dir.is_dir() {
        return Ok(());
    }
    crate::pip_install(&crate::pyenv_311(), dir, BENCH_PY_DEPS, &[])?;
    Ok(())
}

/// Kernel BPF run-time statistics (`kernel.bpf_stats_enabled`), restored on drop. They
/// cost every program run two clock reads, so they stay off while the workloads are timed.
struct BpfStats {
    previous: String,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    fn take() -> Result<Self> {
        let previous = std::fs::read_to_string(BPF_STATS).context("reading bpf_stats_enabled")?;
        Ok(BpfStats { previous })
    }

    fn set(&self, on: bool) -> Result<()> {
        std::fs::write(BPF_STATS, if on { "1" } else { "0" })
            .context("switching BPF statistics (needs root)")
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(BPF_STATS, self.previous.trim());
    }
}

/// The `raw_syscalls` trace events enabled with tracing off: every syscall on the host
/// takes the kernel's traced path and runs the tracepoint, which records nothing.
/// Restored on drop.
struct SyscallHooks {
    tracing_was: String,
}

const TRACEFS: &str = "/sys/kernel/tracing";
const SYSCALL_EVENTS: [&str; 2] = ["raw_syscalls/sys_enter", "raw_syscalls/sys_exit"];

impl SyscallHooks {
    fn enable() -> Result<Self> {
        if !Path::new(TRACEFS).join("events").is_dir() {
            let status = Command::new("mount")
                .args(["-t", "tracefs", "nodev", TRACEFS])
                .status()
                .context("mounting tracefs")?;
            if !status.success() {
                bail!("mounting tracefs at {TRACEFS} failed: {status}");
            }
        }
        let tracefs = Path::new(TRACEFS);
        let tracing_was =
            std::fs::read_to_string(tracefs.join("tracing_on")).context("reading tracing_on")?;
        // Built before the writes, so that a failure half-way still restores what was set.
        let hooks = SyscallHooks { tracing_was };
        std::fs::write(tracefs.join("tracing_on"), "0").context("turning tracing off")?;
        for event in SYSCALL_EVENTS {
            let enable = tracefs.join("events").join(event).join("enable");
            std::fs::write(&enable, "1")
                .with_context(|| format!("writing {}", enable.display()))?;
        }
        Ok(hooks)
    }
}

impl Drop for SyscallHooks {
    fn drop(&mut self) {
        let tracefs = Path::new(TRACEFS);
        for event in SYSCALL_EVENTS {
            let _ = std::fs::write(tracefs.join("events").join(event).join("enable"), "0");
        }
        let _ = std::fs::write(tracefs.join("tracing_on"), self.tracing_was.trim());
    }
}

struct Bench {
    root: PathBuf,
    blockprobe: PathBuf,
    deps: PathBuf,
}

/// The CPU the measured workload runs on, and the one its load generator (wrk) runs on:
/// pinned, because on a small machine where the scheduler happens to put the server and
/// its client (same CPU or not) moves requests/s by ±15% from run to run, bare or traced.
/// The tracer is not pinned.
const WORKLOAD_CPU: usize = 0;
/// See [`WORKLOAD_CPU`].
const LOAD_CPU: usize = 1;

/// `program` pinned to `cpu` with taskset, when the machine has more than one CPU.
fn on_cpu(cpu: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores < 2 {
        return Command::new(program);
    }
    let mut cmd = Command::new("taskset");
    cmd.arg("-c").arg(cpu.to_string()).arg(program);
    cmd
}

/// A running child killed on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Bench {
    fn workload_script(&self, name: &str) -> PathBuf {
        self.root.join("bench/workloads").join(name)
    }

    /// A Python command for `script`, wrapped for in-process peers and py-spy, on CPU 0.
    fn python(&self, mode: Mode, script: &str, args: &[&str]) -> Command {
        let mut cmd = if mode == Mode::PySpy {
            let mut c = on_cpu(WORKLOAD_CPU, self.deps.join("bin/py-spy"));
            c.args([
                "record",
                "-r",
                "100",
                "--nonblocking",
                "-f",
                "raw",
                "-o",
                "/dev/null",
                "--",
            ]);
            c.arg(crate::pyenv_311());
            c
        } else {
            on_cpu(WORKLOAD_CPU, crate::pyenv_311())
        };
        cmd.arg(self.workload_script("peer.py"))
            .arg(mode.peer())
            .arg(self.workload_script(script))
            .args(args)
            .env("PYTHONPATH", &self.deps)
            .env("BENCH_WAIT", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        cmd
    }

    fn measure(&self, workload: Workload, mode: Mode) -> Result<Sample> {
        let threshold = workload.threshold();
        // System-wide tracers start first and must be ready before the workload starts.
        let mut tracer = match mode {
            Mode::TraceHost => Some(self.start_tracer(&[], threshold)?),
            Mode::Serve => Some(self.start_serve(threshold)?),
            _ => None,
        };
        let _hooks = (mode == Mode::SyscallHooksOnly)
            .then(SyscallHooks::enable)
            .transpose()?;
        let (value, p99_ms, pid_tracer) = match workload {
            Workload::Syscalls => (self.run_dd()?, None, None),
            Workload::Queue => {
                self.run_python_timed(mode, "queue_pingpong.py", &["200000"], threshold)?
            }
            Workload::MapPyfunc => {
                self.run_python_timed(mode, "map_pyfunc.py", &["4000000"], threshold)?
            }
            Workload::StallRate => {
                self.run_python_timed(mode, "stall_rate.py", &["5", "1000"], threshold)?
            }
            Workload::Http => self.run_http(mode)?,
        };
        if let Some(t) = pid_tracer {
            tracer = Some(t);
        }
        let cost = tracer.map(Tracer::stop).transpose()?;
        Ok(Sample {
            value,
            p99_ms,
            tracer: cost,
        })
    }

    /// Starts `blockprobe trace ARGS --quiet` (the mode an SRE leaves running).
    fn start_tracer(&self, args: &[&str], threshold: &str) -> Result<Tracer> {
        let mut all = vec!["trace", "--quiet", "--threshold", threshold];
        all.extend_from_slice(args);
        self.start_blockprobe(&all)
    }

    fn start_serve(&self, threshold: &str) -> Result<Tracer> {
        let listen = format!("127.0.0.1:{}", free_port()?);
        // As deployed (deploy/daemonset.yaml): metrics only, no stall lines on stdout.
        let args = [
            "serve",
            "--quiet",
            "--listen",
            &listen,
            "--threshold",
            threshold,
        ];
        self.start_blockprobe(&args)
    }

    /// Starts blockprobe with `args` and waits until it says `READY=1` on the
    /// `$NOTIFY_SOCKET` it is given (what systemd's `Type=notify` listens to): every
    /// process asked for is attached and events flow.
    fn start_blockprobe(&self, args: &[&str]) -> Result<Tracer> {
        let dir = tempfile::tempdir().context("creating a directory for the notify socket")?;
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).context("binding the notify socket")?;
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        let mut child = Running(
            Command::new(&self.blockprobe)
                .args(args)
                .env("NOTIFY_SOCKET", &path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting blockprobe")?,
        );
        let started = Instant::now();
        let mut message = [0u8; 256];
        loop {
            match socket.recv(&mut message) {
                Ok(n) if message[..n].split(|&b| b == b'\n').any(|l| l == b"READY=1") => break,
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => return Err(e).context("reading the notify socket"),
            }
            if let Some(status) = child.0.try_wait()? {
                bail!(
                    "blockprobe {} exited before it was ready: {status}",
                    args.join(" ")
                );
            }
            if started.elapsed() > READY_TIMEOUT {
                bail!(
                    "blockprobe {} not ready after {READY_TIMEOUT:?}",
                    args.join(" ")
                );
            }
        }
        Ok(Tracer {
            cpu_at_start_s: cpu_seconds(child.0.id())?,
            child,
            started: Instant::now(),
        })
    }

    /// Waits for the workload's READY line, starts `trace -p` on it in [`Mode::TracePid`],
    /// then lets it go.
    fn trace_then_go(
        &self,
        mode: Mode,
        workload: &mut Running,
        out: &mut BufReader<ChildStdout>,
        threshold: &str,
    ) -> Result<Option<Tracer>> {
        wait_for_line(out, "READY")?;
        let tracer = if mode == Mode::TracePid {
            let pid = workload.0.id().to_string();
            Some(self.start_tracer(&["-p", &pid], threshold)?)
        } else {
            None
        };
        writeln!(workload.0.stdin.as_mut().context("no stdin")?, "GO")?;
        Ok(tracer)
    }

    /// Runs a timing workload script: it prints READY, waits for a line, then prints the
    /// elapsed seconds of its measured part.
    fn run_python_timed(
        &self,
        mode: Mode,
        script: &str,
        args: &[&str],
        threshold: &str,
    ) -> Result<(f64, Option<f64>, Option<Tracer>)> {
        let mut child = Running(
            self.python(mode, script, args)
                .spawn()
                .context("starting python")?,
        );
        let mut out = BufReader::new(child.0.stdout.take().context("no stdout")?);
        let tracer = self.trace_then_go(mode, &mut child, &mut out, threshold)?;
        // py-spy prints its own lines on the same stdout: take the first number.
        let seconds = loop {
            if let Ok(value) = read_line(&mut out)?.trim().parse::<f64>() {
                break value;
            }
        };
        let _ = child.0.wait();
        Ok((seconds, None, tracer))
    }

    fn run_dd(&self) -> Result<f64> {
        let started = Instant::now();
        let status = on_cpu(WORKLOAD_CPU, "dd")
            .args(["if=/dev/zero", "of=/dev/null", "bs=1", "count=2000000"])
            .stderr(Stdio::null())
            .status()?;
        if !status.success() {
            bail!("dd failed: {status}");
        }
        Ok(started.elapsed().as_secs_f64())
    }

    fn run_http(&self, mode: Mode) -> Result<(f64, Option<f64>, Option<Tracer>)> {
        let port = free_port()?.to_string();
        let mut server = Running(
            self.python(mode, "http_server.py", &[&port])
                .spawn()
                .context("starting the aiohttp server")?,
        );
        let mut out = BufReader::new(server.0.stdout.take().context("no stdout")?);
        let tracer = self.trace_then_go(mode, &mut server, &mut out, Workload::Http.threshold())?;
        wait_for_line(&mut out, "LISTENING")?;
        let wrk = on_cpu(LOAD_CPU, "wrk")
            .args(["-t1", "-c16", &format!("-d{HTTP_SECONDS}s"), "--latency"])
            .arg(format!("http://127.0.0.1:{port}/"))
            .output()
            .context("running wrk")?;
        let text = String::from_utf8_lossy(&wrk.stdout);
        let rps = text
            .lines()
            .find_map(|l| l.strip_prefix("Requests/sec:"))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .with_context(|| format!("no Requests/sec in wrk output:\n{text}"))?;
        let p99 = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("99%"))
            .and_then(|v| parse_latency_ms(v.trim()));
        Ok((rps, p99, tracer))
    }
}

/// A blockprobe process being measured.
struct Tracer {
    child: Running,
    /// When it became ready, and its CPU time then: start-up (BPF verification) is not
    /// what a long-running tracer costs, so it is left out.
    started: Instant,
    cpu_at_start_s: f64,
}

impl Tracer {
    /// Reads its cost, then stops it with SIGINT and waits.
    fn stop(mut self) -> Result<TracerCost> {
        let pid = self.child.0.id();
        let cost = TracerCost {
            cpu_s: cpu_seconds(pid)? - self.cpu_at_start_s,
            wall_s: self.started.elapsed().as_secs_f64(),
            peak_rss_kb: status_kb(pid, "VmHWM")?,
            rss_kb: status_kb(pid, "VmRSS")?,
            bpf: bpf_programs()?,
        };
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(pid as i32, libc::SIGINT) };
        let _ = self.child.0.wait();
        Ok(cost)
    }
}

fn wait_for_line(out: &mut BufReader<ChildStdout>, want: &str) -> Result<()> {
    let started = Instant::now();
    loop {
        if started.elapsed() > READY_TIMEOUT {
            bail!("no {want} line after {READY_TIMEOUT:?}");
        }
        if read_line(out)?.trim() == want {
            return Ok(());
        }
    }
}

fn read_line(out: &mut BufReader<ChildStdout>) -> Result<String> {
    let mut line = String::new();
    if out.read_line(&mut line)? == 0 {
        bail!("the workload exited early");
    }
    Ok(line)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `1.23ms`, `456.00us`, `1.2s` → milliseconds.
fn parse_latency_ms(text: &str) -> Option<f64> {
    let (number, unit) = text.split_at(text.find(|c: char| c.is_ascii_alphabetic())?);
    let n: f64 = number.parse().ok()?;
    Some(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        _ => return None,
    })
}

/// User + system CPU seconds of `pid` so far.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after_comm = stat.rsplit_once(')').context("odd /proc/pid/stat")?.1;
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks as f64 / hz)
}

/// Field `name` of `/proc/PID/status` (VmHWM: peak RSS, VmRSS: RSS), in KiB.
fn status_kb(pid: u32, name: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {name} in /proc/{pid}/status"))
}

/// Run count and time of every loaded BPF program named like blockprobe's.
fn bpf_programs() -> Result<BTreeMap<String, (u64, u64)>> {
    const OURS: &[&str] = &[
        "sys_enter",
        "sys_exit",
        "sched_switch",
        "sched_wakeup",
        "cpu_sample",
        "process_fork",
        "process_exec",
        "process_exit",
    ];
    let out = Command::new("bpftool").args(["prog", "show"]).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut programs = BTreeMap::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let value = |key: &str| {
            words
                .iter()
                .position(|w| *w == key)
                .and_then(|i| words.get(i + 1))
                .and_then(|v| v.parse::<u64>().ok())
        };
        let Some(name) = words
            .iter()
            .position(|w| *w == "name")
            .and_then(|i| words.get(i + 1))
        else {
            continue;
        };
        if OURS.contains(name) {
            let entry = programs.entry((*name).to_owned()).or_insert((0, 0));
            entry.0 += value("run_cnt").unwrap_or(0);
            entry.1 += value("run_time_ns").unwrap_or(0);
        }
    }
    Ok(programs)
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

/// The results as Markdown.
/// The most CPU the tracer may use at 1,000 stalls/s, in % of one core (issue 5).
const TRACER_CPU_BUDGET: f64 = 1.0;
/// The most memory the tracer may hold at 1,000 stalls/s, in MB (issue 5).
const TRACER_RSS_BUDGET_MB: f64 = 30.0;

/// One workload × mode, summarized over its repetitions.
struct Row {
    median: f64,
    min: f64,
    max: f64,
    /// Cost relative to bare (see [`render`]).
    ratio: f64,
    p99_ms: Option<f64>,
    /// The tracer's CPU (% of a core), RSS and peak RSS (MB), for blockprobe's modes.
    tracer: Option<(f64, f64, f64)>,
}

fn summarize(samples: &BTreeMap<(Workload, Mode), Vec<Sample>>) -> BTreeMap<(Workload, Mode), Row> {
    let mut rows = BTreeMap::new();
    for workload in Workload::ALL {
        let Some(bare) = samples.get(&(workload, Mode::Bare)) else {
            continue;
        };
        let bare_median = median(&mut bare.iter().map(|x| x.value).collect::<Vec<_>>());
        for mode in workload.modes() {
            let Some(runs) = samples.get(&(workload, mode)) else {
                continue;
            };
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
    }
    rows
}

/// The budgets of issue 5 against the worst blockprobe mode, and the floor: what the
/// `raw_syscalls` tracepoints alone cost, which no program hooked there can go below.
fn render_budgets(s: &mut String, rows: &BTreeMap<(Workload, Mode), Row>) -> Result<()> {
    writeln!(
        s,
        "## Budgets\n\nFloor: the `raw_syscalls` tracepoints turned on with nothing attached \
         (ftrace, recording off), i.e. what any tool hooked there pays: every syscall on the \
         host then takes the kernel's traced path. blockprobe hooks the epoll and blocking \
         syscalls there because this kernel offers nothing cheaper (no kprobes; BPF \
         trampolines on the syscall functions are refused). Beyond the floor: blockprobe's \
         worst ratio divided by the floor, what its own programs and tracer add.\n"
    )?;
    writeln!(
        s,
        "| workload | budget | blockprobe, worst mode | floor: tracepoints alone | blockprobe beyond the floor | within budget |"
    )?;
    writeln!(s, "|---|---|---|---|---|---|")?;
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
        let floor = rows
            .get(&(workload, Mode::SyscallHooksOnly))
            .map(|r| r.ratio);
        writeln!(
            s,
            "| {} | {budget:.2} | {worst:.3} ({}) | {} | {} | {} |",
            workload.name(),
            mode.name(),
            floor.map_or("—".into(), |f| format!("{f:.3}")),
            floor.map_or("—".into(), |f| format!("{:.3}", worst / f)),
            verdict(worst <= budget),
        )?;
    }
    let tracer = (rows.iter())
        .filter(|((w, _), _)| *w == Workload::StallRate)
        .filter_map(|(_, row)| row.tracer);
    let (cpu, rss, peak) = tracer.fold((0.0f64, 0.0f64, 0.0f64), |acc, t| {
        (acc.0.max(t.0), acc.1.max(t.1), acc.2.max(t.2))
    });
    writeln!(
        s,
        "| tracer CPU at 1,000 stalls/s (% of a core) | {TRACER_CPU_BUDGET:.1} | {cpu:.1} | — | — | {} |",
        verdict(cpu <= TRACER_CPU_BUDGET)
    )?;
    writeln!(
        s,
        "| tracer RSS at 1,000 stalls/s, MB (start-up peak) | {TRACER_RSS_BUDGET_MB:.0} | {rss:.1} ({peak:.1}) | — | — | {} |",
        verdict(peak.max(rss) <= TRACER_RSS_BUDGET_MB)
    )?;
    Ok(())
}

fn render(
    samples: &BTreeMap<(Workload, Mode), Vec<Sample>>,
    bpf_runs: &BTreeMap<(Workload, Mode), Sample>,
    reps: usize,
    elapsed: Duration,
) -> Result<String> {
    let rows = summarize(samples);
    let mut s = String::new();
    writeln!(s, "# blockprobe benchmark\n")?;
    writeln!(s, "{}\n", machine_info())?;
    writeln!(
        s,
        "{reps} repetitions, modes alternating within each; {:.0} s in all. Ratio: the \
         workload's cost relative to bare (time ratio, or bare/traced for throughput), so \
         1.05 means 5% slower.\n",
        elapsed.as_secs_f64()
    )?;
    render_budgets(&mut s, &rows)?;
    writeln!(
        s,
        "\n## Every workload and mode\n\nTracer CPU %: its user+system time while the \
         workload ran (after start-up), as a share of one core. Tracer RSS: at the end of \
         the workload (the largest over the runs), and its peak, which start-up sets.\n"
    )?;
    writeln!(
        s,
        "| workload | mode | median | min–max | ratio | p99 ms | tracer CPU % | tracer RSS MB (peak) |"
    )?;
    writeln!(s, "|---|---|---|---|---|---|---|---|")?;
    for ((workload, mode), row) in &rows {
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
    writeln!(
        s,
        "\n## BPF programs (kernel side), per blockprobe mode\n\nFrom one more run of each \
         workload × blockprobe mode with `kernel.bpf_stats_enabled=1`, which is off during the \
         timed runs above: the statistics add two clock reads to every program run.\n"
    )?;
    writeln!(s, "| workload | mode | program | runs | ns/run |")?;
    writeln!(s, "|---|---|---|---|---|")?;
    for ((workload, mode), run) in bpf_runs {
        for (name, &(cnt, ns)) in run.tracer.iter().flat_map(|cost| &cost.bpf) {
            let per = if cnt == 0 {
                0.0
            } else {
                ns as f64 / cnt as f64
            };
            writeln!(
                s,
                "| {} | {} | {name} | {cnt} | {per:.0} |",
                workload.name(),
                mode.name()
            )?;
        }
    }
    Ok(s)
}

fn machine_info() -> String {
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
    format!(
        "Machine: {cores} cores, {cpu}, Linux {}; Python: {}; blockprobe at {rev} (release build). \
         Workloads run on CPU {WORKLOAD_CPU}, wrk on CPU {LOAD_CPU} (taskset, with 2+ cores); the tracer is not pinned.",
        kernel.trim(),
        crate::pyenv_311().display()
    )
}
