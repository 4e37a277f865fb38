//! Running one workload under one mode, and what it and its tracer cost.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, ErrorKind, Read, Write as _};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use super::kernel::{Floor, ProgStats, programs_of_group};
use super::peers::Peers;
use super::plan::{Mode, Workload};
use super::procs::{Group, Started, group_cpu_seconds};

/// How long wrk loads the HTTP server per run.
const HTTP_SECONDS: u32 = 4;
/// How long a tracer or server may take to get ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a tracer may take to exit once interrupted, before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// What blocksnoop logs (with `-v`) once Austin samples; its eBPF side is started right
/// after, so the workload is let go a moment later.
const BLOCKSNOOP_READY: &str = "first sample received";
/// See [`BLOCKSNOOP_READY`].
const BLOCKSNOOP_SETTLE: Duration = Duration::from_secs(1);

/// The CPU the measured workload runs on, and the one its load generator (wrk) runs on:
/// pinned, because on a small machine where the scheduler happens to put the server and
/// its client (same CPU or not) moves requests/s by ±15% from run to run, bare or traced.
/// The tracer is not pinned.
pub const WORKLOAD_CPU: usize = 0;
/// See [`WORKLOAD_CPU`].
pub const LOAD_CPU: usize = 1;

/// One measurement.
pub struct Sample {
    pub value: f64,
    /// p99 latency in ms (HTTP only).
    pub p99_ms: Option<f64>,
    pub tracer: Option<TracerCost>,
}

/// What the tracer itself cost during one run.
#[derive(Clone, Default)]
pub struct TracerCost {
    pub cpu_s: f64,
    pub wall_s: f64,
    pub peak_rss_kb: u64,
    /// Resident set size at the end of the workload (the peak is start-up's).
    pub rss_kb: u64,
    /// BPF program name → its run statistics.
    pub bpf: BTreeMap<String, ProgStats>,
}

/// The benchmark's programs and what it started.
pub struct Bench {
    pub root: PathBuf,
    pub blockprobe: PathBuf,
    pub baseline: Option<PathBuf>,
    pub peers: Peers,
    pub started: Started,
}

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

impl Bench {
    /// What the end-of-run check looks for in command lines: the benchmark's programs.
    pub fn markers(&self) -> Vec<String> {
        let mut markers = vec![
            self.workload_script("").display().to_string(),
            self.blockprobe.display().to_string(),
            self.peers.blocksnoop.display().to_string(),
        ];
        markers.extend(self.baseline.iter().map(|b| b.display().to_string()));
        markers
    }

    fn workload_script(&self, name: &str) -> PathBuf {
        self.root.join("bench/workloads").join(name)
    }

    /// A Python command for `script`, wrapped for in-process peers and py-spy, on CPU 0.
    fn python(&self, mode: Mode, script: &str, args: &[&str]) -> Command {
        let mut cmd = if mode == Mode::PySpy {
            let mut c = on_cpu(WORKLOAD_CPU, self.peers.deps.join("bin/py-spy"));
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
            .env("PYTHONPATH", &self.peers.deps)
            .env("BENCH_WAIT", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        cmd
    }

    pub fn measure(&self, workload: Workload, mode: Mode) -> Result<Sample> {
        // System-wide tracers start first and must be ready before the workload starts.
        let mut tracer = match mode {
            Mode::TraceHost => Some(self.start_blockprobe(&self.blockprobe, &[], workload)?),
            Mode::BaselineTraceHost => {
                let baseline = self.baseline.as_ref().context("no baseline binary")?;
                Some(self.start_blockprobe(baseline, &[], workload)?)
            }
            Mode::Serve => Some(self.start_serve(workload)?),
            _ => None,
        };
        let _floor = (mode == Mode::Floor).then(Floor::enable).transpose()?;
        let (value, p99_ms, pid_tracer) = match workload {
            Workload::Syscalls => (self.run_dd()?, None, None),
            Workload::Queue => {
                self.run_python_timed(mode, "queue_pingpong.py", &["200000"], workload)?
            }
            Workload::MapPyfunc => {
                self.run_python_timed(mode, "map_pyfunc.py", &["4000000"], workload)?
            }
            Workload::StallRate => {
                self.run_python_timed(mode, "stall_rate.py", &["5", "1000"], workload)?
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

    fn start_serve(&self, workload: Workload) -> Result<Tracer> {
        let listen = format!("127.0.0.1:{}", free_port()?);
        // As deployed (deploy/daemonset.yaml): metrics only, no stall lines on stdout.
        let args = ["--listen", listen.as_str()];
        self.start_blockprobe_cmd(&self.blockprobe, "serve", &args, workload)
    }

    /// Starts `BINARY trace --quiet ARGS` (the mode an SRE leaves running).
    fn start_blockprobe(&self, binary: &Path, args: &[&str], workload: Workload) -> Result<Tracer> {
        self.start_blockprobe_cmd(binary, "trace", args, workload)
    }

    /// Starts blockprobe's `command --quiet --threshold T ARGS` and waits until it says
    /// `READY=1` on the `$NOTIFY_SOCKET` it is given (what systemd's `Type=notify` listens
    /// to): every process asked for is attached and events flow.
    fn start_blockprobe_cmd(
        &self,
        binary: &Path,
        command: &str,
        args: &[&str],
        workload: Workload,
    ) -> Result<Tracer> {
        let dir = tempfile::tempdir().context("creating a directory for the notify socket")?;
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).context("binding the notify socket")?;
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        let threshold = workload.threshold();
        let mut group = self.started.spawn(
            Command::new(binary)
                .args([command, "--quiet", "--threshold", &threshold])
                .args(args)
                .env("NOTIFY_SOCKET", &path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )?;
        let started = Instant::now();
        let mut message = [0u8; 256];
        loop {
            match socket.recv(&mut message) {
                Ok(n) if message[..n].split(|&b| b == b'\n').any(|l| l == b"READY=1") => break,
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => return Err(e).context("reading the notify socket"),
            }
            if let Some(status) = group.child.try_wait()? {
                bail!("blockprobe {command} exited before it was ready: {status}");
            }
            if started.elapsed() > READY_TIMEOUT {
                bail!("blockprobe {command} not ready after {READY_TIMEOUT:?}");
            }
        }
        Tracer::ready(group)
    }

    /// Starts blocksnoop on process `pid` and waits until it samples it.
    fn start_blocksnoop(&self, pid: u32, workload: Workload) -> Result<Tracer> {
        let mut group = self.started.spawn(
            Command::new(self.peers.blocksnoop_bin())
                .arg("-v")
                .arg("--summary-only")
                .arg("-t")
                .arg(workload.threshold_ms().to_string())
                .arg(pid.to_string())
                .env("PATH", self.peers.blocksnoop_path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped()),
        )?;
        let stderr = group.child.stderr.take().context("no stderr")?;
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads its log to the end (so it never blocks on a full pipe), saying when ready.
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stderr).lines();
            let mut told = false;
            let mut log = String::new();
            for line in lines.by_ref().map_while(Result::ok) {
                if !told && line.contains(BLOCKSNOOP_READY) {
                    told = tx.send(Ok(())).is_ok();
                } else if !told {
                    log.push_str(&line);
                    log.push('\n');
                }
            }
            if !told {
                let _ = tx.send(Err(log));
            }
        });
        match rx.recv_timeout(READY_TIMEOUT) {
            Ok(Ok(())) => {}
            Ok(Err(log)) => bail!("blocksnoop exited before it was ready:\n{log}"),
            Err(_) => bail!("blocksnoop not ready after {READY_TIMEOUT:?}"),
        }
        std::thread::sleep(BLOCKSNOOP_SETTLE);
        Tracer::ready(group)
    }

    /// Waits for the workload's READY line, starts the per-pid tracer of `mode` on it,
    /// then lets it go.
    fn trace_then_go(
        &self,
        mode: Mode,
        workload: Workload,
        process: &mut Group,
        out: &mut BufReader<impl Read>,
    ) -> Result<Option<Tracer>> {
        wait_for_line(out, "READY")?;
        let pid = process.child.id();
        let tracer = match mode {
            Mode::TracePid => {
                let pid = pid.to_string();
                Some(self.start_blockprobe(&self.blockprobe, &["-p", &pid], workload)?)
            }
            Mode::Blocksnoop => Some(self.start_blocksnoop(pid, workload)?),
            _ => None,
        };
        writeln!(process.child.stdin.as_mut().context("no stdin")?, "GO")?;
        Ok(tracer)
    }

    /// Runs a timing workload script: it prints READY, waits for a line, then prints the
    /// elapsed seconds of its measured part.
    fn run_python_timed(
        &self,
        mode: Mode,
        script: &str,
        args: &[&str],
        workload: Workload,
    ) -> Result<(f64, Option<f64>, Option<Tracer>)> {
        let mut process = self.started.spawn(&mut self.python(mode, script, args))?;
        let mut out = BufReader::new(process.child.stdout.take().context("no stdout")?);
        let tracer = self.trace_then_go(mode, workload, &mut process, &mut out)?;
        // py-spy prints its own lines on the same stdout: take the first number.
        let seconds = loop {
            if let Ok(value) = read_line(&mut out)?.trim().parse::<f64>() {
                break value;
            }
        };
        let _ = process.child.wait();
        Ok((seconds, None, tracer))
    }

    fn run_dd(&self) -> Result<f64> {
        let started = Instant::now();
        let mut dd = self.started.spawn(
            on_cpu(WORKLOAD_CPU, "dd")
                .args(["if=/dev/zero", "of=/dev/null", "bs=1", "count=2000000"])
                .stderr(Stdio::null()),
        )?;
        let status = dd.child.wait()?;
        if !status.success() {
            bail!("dd failed: {status}");
        }
        Ok(started.elapsed().as_secs_f64())
    }

    fn run_http(&self, mode: Mode) -> Result<(f64, Option<f64>, Option<Tracer>)> {
        let port = free_port()?.to_string();
        let mut server = self
            .started
            .spawn(&mut self.python(mode, "http_server.py", &[&port]))?;
        let mut out = BufReader::new(server.child.stdout.take().context("no stdout")?);
        let tracer = self.trace_then_go(mode, Workload::Http, &mut server, &mut out)?;
        wait_for_line(&mut out, "LISTENING")?;
        let mut wrk = self.started.spawn(
            on_cpu(LOAD_CPU, "wrk")
                .args(["-t1", "-c16", &format!("-d{HTTP_SECONDS}s"), "--latency"])
                .arg(format!("http://127.0.0.1:{port}/"))
                .stdout(Stdio::piped()),
        )?;
        let mut text = String::new();
        (wrk.child.stdout.take().context("no stdout")?)
            .read_to_string(&mut text)
            .context("running wrk")?;
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

/// A tracer being measured.
pub struct Tracer {
    group: Group,
    /// When it became ready, and its CPU time then: start-up (BPF verification) is not
    /// what a long-running tracer costs, so it is left out.
    started: Instant,
    cpu_at_start_s: f64,
}

impl Tracer {
    fn ready(group: Group) -> Result<Self> {
        Ok(Tracer {
            cpu_at_start_s: group_cpu_seconds(group.pgid()),
            group,
            started: Instant::now(),
        })
    }

    /// Reads its cost, then stops it with SIGINT (killed after [`STOP_TIMEOUT`]).
    fn stop(mut self) -> Result<TracerCost> {
        let pid = self.group.child.id();
        let cost = TracerCost {
            cpu_s: group_cpu_seconds(self.group.pgid()) - self.cpu_at_start_s,
            wall_s: self.started.elapsed().as_secs_f64(),
            peak_rss_kb: status_kb(pid, "VmHWM")?,
            rss_kb: status_kb(pid, "VmRSS")?,
            bpf: programs_of_group(self.group.pgid())?,
        };
        self.group.signal(libc::SIGINT);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while self.group.child.try_wait()?.is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        // Dropping the group kills what is left of it.
        Ok(cost)
    }
}

fn wait_for_line(out: &mut BufReader<impl Read>, want: &str) -> Result<()> {
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

fn read_line(out: &mut BufReader<impl Read>) -> Result<String> {
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

/// Field `name` of `/proc/PID/status` (VmHWM: peak RSS, VmRSS: RSS), in KiB.
fn status_kb(pid: u32, name: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {name} in /proc/{pid}/status"))
}
