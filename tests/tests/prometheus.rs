//! `blockprobe serve` scraped by a real Prometheus (Debian's `prometheus`, installed by
//! `cargo xtask setup`), all on loopback: after a blocking scenario, Prometheus' HTTP API
//! returns the culprit's stall histogram with the right count and buckets.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use blockprobe_tests::{Blockprobe, CtxRef, Proc, Python, THRESHOLD, require_root, script};
use nix::sys::signal::Signal;
use serde_json::Value;

/// How long Prometheus gets to start, and to show a scraped value.
const PROMETHEUS_WAIT: Duration = Duration::from_secs(60);
/// How often Prometheus is polled.
const POLL: Duration = Duration::from_millis(250);

/// A GET over a fresh loopback connection; `None` when nothing answers.
fn http_get(addr: SocketAddr, path_and_query: &str) -> Option<(u16, String)> {
    assert!(addr.ip().is_loopback(), "tests only talk to loopback");
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path_and_query} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A free loopback port (bound and released: the caller binds it right away).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// Polls `check` every [`POLL`] for up to [`PROMETHEUS_WAIT`]; fails with `what`, the last
/// thing seen, and everything the test's processes printed.
#[track_caller]
fn poll<T>(ctx: &CtxRef, what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + PROMETHEUS_WAIT;
    loop {
        let last = match check() {
            Ok(found) => return found,
            Err(last) => last,
        };
        if Instant::now() >= deadline {
            ctx.fail(format!(
                "timed out after {PROMETHEUS_WAIT:?} waiting for {what}; last: {last}"
            ));
        }
        std::thread::sleep(POLL);
    }
}

/// The value of an instant query that must return exactly one series.
fn query_one(prometheus: SocketAddr, promql: &str) -> Result<f64, String> {
    let path = format!("/api/v1/query?query={}", url_encode(promql));
    let (status, body) = http_get(prometheus, &path).ok_or("no answer from Prometheus")?;
    if status != 200 {
        return Err(format!("HTTP {status}: {body}"));
    }
    let v: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
    let result = v["data"]["result"]
        .as_array()
        .ok_or(format!("no result: {body}"))?;
    match result.as_slice() {
        [one] => one["value"][1]
            .as_str()
            .and_then(|s| s.parse().ok())
            .ok_or(format!("no value: {body}")),
        _ => Err(format!("{} series for {promql}: {body}", result.len())),
    }
}

fn prometheus_bin() -> &'static str {
    let bin = "/usr/bin/prometheus";
    assert!(
        Path::new(bin).is_file(),
        "{bin} not found: run `cargo xtask setup` (it installs Debian's `prometheus`)"
    );
    bin
}

/// `blockprobe serve` (JSON lines, the tests' threshold) on a loopback port of its
/// choosing, and the address it serves on.
fn spawn_serve(ctx: &CtxRef) -> (Proc, SocketAddr) {
    let bp = ctx.spawn(
        "blockprobe serve",
        &mut Blockprobe::new([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--format",
            "jsonl",
            "--threshold",
            THRESHOLD,
        ]),
    );
    let addr = serve_address(ctx, &bp);
    (bp, addr)
}

/// The address `blockprobe serve` says it serves on.
#[track_caller]
fn serve_address(ctx: &CtxRef, bp: &Proc) -> SocketAddr {
    ctx.wait_for("blockprobe serve to say where it serves", || {
        bp.stderr().lines().find_map(|l| {
            l.strip_prefix("blockprobe: serving metrics on http://")
                .and_then(|rest| rest.strip_suffix("/metrics"))
                .and_then(|addr| addr.parse().ok())
        })
    })
}

#[test]
fn prometheus_scrapes_the_stall_histogram() {
    require_root();
    let prometheus_path = prometheus_bin();
    let python = Python::pyenv("3.11.7");
    let ctx = blockprobe_tests::Ctx::new();
    let dir = tempfile::tempdir().expect("temp dir");

    let (bp, metrics_addr) = spawn_serve(&ctx);
    ctx.ensure(metrics_addr.ip().is_loopback(), || {
        format!("serves on {metrics_addr}, not loopback")
    });

    // Prometheus scraping it every second, storing into the temp dir.
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: blockprobe\n    static_configs:\n      - targets: ['{metrics_addr}']\n"
        ),
    )
    .expect("write prometheus.yml");
    let prometheus_addr: SocketAddr = format!("127.0.0.1:{}", free_port())
        .parse()
        .expect("address");
    let _prometheus = ctx.spawn(
        "prometheus",
        Command::new(prometheus_path)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={prometheus_addr}"))
            .arg("--log.level=warn"),
    );
    poll(
        &ctx,
        "Prometheus to be ready (/-/ready)",
        || match http_get(prometheus_addr, "/-/ready") {
            Some((200, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    poll(
        &ctx,
        "Prometheus to scrape blockprobe (up == 1)",
        || match query_one(prometheus_addr, "up{job=\"blockprobe\"}")? {
            1.0 => Ok(()),
            v => Err(format!("up is {v}")),
        },
    );

    // The scenario: fleet_handler blocks 3 times for 40 ms, steady once for 15 ms.
    let script = script("fleet_blocking.py");
    let py = ctx.spawn(
        "fleet_blocking.py",
        python
            .command(&script)
            .args(["--block-ms", "40", "--times", "3"]),
    );
    let ready = ctx.wait_ready(&py);
    let pid = ready.pid.expect("READY has a pid");
    let tids: Vec<u32> = ready.loops.iter().map(|(_, tid)| *tid).collect();
    ctx.wait_loops_live(&bp, pid, &tids);
    py.send("GO");
    ctx.wait_finished(&py);
    ctx.wait_stalls(&bp, pid, 4);

    let series = "service=\"fleet_blocking\",function=\"fleet_handler\",file=\"fleet_blocking.py\"";
    let count = format!("blockprobe_stall_duration_seconds_count{{{series}}}");
    poll(
        &ctx,
        &format!("Prometheus to show {count} == 3"),
        || match query_one(prometheus_addr, &count)? {
            3.0 => Ok(()),
            v => Err(format!("{count} is {v}")),
        },
    );
    // 40 ms stalls (up to 45 ms with the harness's slack) lie in [2^25, 2^26) ns.
    let bucket = |le: &str| {
        query_one(
            prometheus_addr,
            &format!("blockprobe_stall_duration_seconds_bucket{{{series},le=\"{le}\"}}"),
        )
        .unwrap_or_else(|e| ctx.fail(format!("bucket le={le}: {e}")))
    };
    ctx.ensure(bucket("0.033554431") == 0.0, || {
        "no stall under 33.5 ms".into()
    });
    ctx.ensure(bucket("0.067108863") == 3.0, || {
        "3 stalls under 67.1 ms".into()
    });
    ctx.ensure(bucket("+Inf") == 3.0, || "+Inf bucket is the count".into());
    let sum = query_one(
        prometheus_addr,
        &format!("blockprobe_stall_duration_seconds_sum{{{series}}}"),
    )
    .unwrap_or_else(|e| ctx.fail(e));
    let measured: u64 = py
        .script_state()
        .done
        .iter()
        .filter(|(name, _)| name == "fleet_handler")
        .map(|(_, ns)| ns)
        .sum();
    let measured_s = measured as f64 / 1e9;
    ctx.ensure(
        sum >= measured_s - 0.003 && sum <= measured_s + 0.015,
        || format!("stall sum {sum} s; the script measured {measured_s} s"),
    );
    let steady = query_one(
        prometheus_addr,
        "blockprobe_stall_duration_seconds_count{service=\"fleet_blocking\",function=\"steady\"}",
    )
    .unwrap_or_else(|e| ctx.fail(e));
    ctx.ensure(steady == 1.0, || format!("steady count {steady}"));
    let by_cause = query_one(
        prometheus_addr,
        "blockprobe_stalls_by_cause_total{service=\"fleet_blocking\",cause=\"sleep\"}",
    )
    .unwrap_or_else(|e| ctx.fail(e));
    ctx.ensure(by_cause == 4.0, || format!("sleep stalls {by_cause}"));
    for self_metric in [
        "process_resident_memory_bytes{job=\"blockprobe\"}",
        "process_cpu_seconds_total{job=\"blockprobe\"}",
    ] {
        let v = query_one(prometheus_addr, self_metric).unwrap_or_else(|e| ctx.fail(e));
        ctx.ensure(v > 0.0, || format!("{self_metric} is {v}"));
    }

    // The Grafana dashboard of deploy/ runs on these metrics: every query parses, and
    // the stall panels show the scenario.
    let dashboard_path = blockprobe_tests::workspace_root().join("deploy/grafana-dashboard.json");
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(&dashboard_path).expect("read the dashboard"),
    )
    .unwrap_or_else(|e| ctx.fail(format!("{} is not JSON: {e}", dashboard_path.display())));
    let mut queried = 0;
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let Some(expr) = target["expr"].as_str() else {
                continue;
            };
            let promql = expr
                .replace("$__rate_interval", "1m")
                .replace("$__range", "5m")
                .replace("$job", ".*")
                .replace("$service", ".*");
            // Rates need two samples of a series: poll (bounded) until there is data.
            let wants_data = expr.contains("blockprobe_stall_duration_seconds");
            let what = format!("dashboard panel {:?}: {promql}", panel["title"]);
            poll(&ctx, &what, || {
                let path = format!("/api/v1/query?query={}", url_encode(&promql));
                let (status, body) = http_get(prometheus_addr, &path)
                    .ok_or_else(|| "no answer from Prometheus".to_owned())?;
                if status != 200 || !body.contains("\"status\":\"success\"") {
                    return Err(format!("query fails: {status} {body}"));
                }
                if wants_data
                    && (body.contains("\"result\":[]")
                        || (expr.contains("by (service") && !body.contains("fleet_blocking")))
                {
                    return Err(format!("no data for the scenario yet: {body}"));
                }
                Ok(())
            });
            queried += 1;
        }
    }
    ctx.ensure(queried >= 10, || {
        format!("only {queried} dashboard queries found")
    });

    py.send("QUIT");
    py.wait_exit();
    bp.signal(Signal::SIGINT);
    let status = bp.wait_exit();
    ctx.ensure(status.success(), || {
        format!("blockprobe serve exited with {status}")
    });
    ctx.ensure(!bp.stderr().contains("panicked"), || {
        "blockprobe panicked".into()
    });
}

/// A loop hanging (stuck_loop.py sleeps 30 s in a coroutine) under `blockprobe serve`:
/// once blockprobe says it is stuck, `/metrics` shows it in
/// `blockprobe_stuck_event_loops` for its service, before its stall ever ends; when the
/// process is gone, its loop is no longer counted.
#[test]
fn a_hang_shows_in_the_stuck_gauge() {
    require_root();
    let python = Python::pyenv("3.11.7");
    let ctx = blockprobe_tests::Ctx::new();
    let (bp, metrics_addr) = spawn_serve(&ctx);
    let py = ctx.spawn(
        "stuck_loop.py",
        &mut python.command(&script("stuck_loop.py")),
    );
    let ready = ctx.wait_ready(&py);
    let pid = ready.pid.expect("READY has a pid");
    let tids: Vec<u32> = ready.loops.iter().map(|(_, tid)| *tid).collect();
    ctx.wait_loops_live(&bp, pid, &tids);
    py.send("GO");
    ctx.wait_event(&bp, "stuck", pid);
    let stuck = || {
        let (status, body) = http_get(metrics_addr, "/metrics").expect("blockprobe answers");
        assert_eq!(status, 200, "{body}");
        body.lines()
            .find_map(|l| l.strip_prefix("blockprobe_stuck_event_loops{service=\"stuck_loop\"} "))
            .map(str::to_owned)
    };
    let now = stuck();
    ctx.ensure(now.as_deref() == Some("1"), || {
        format!("blockprobe_stuck_event_loops for stuck_loop is {now:?} while it hangs, expected 1")
    });
    py.may_exit();
    py.signal(Signal::SIGKILL);
    ctx.wait_event(&bp, "detached", pid);
    let after = stuck();
    ctx.ensure(after.as_deref() != Some("1"), || {
        format!("the killed process's loop is still counted as stuck: {after:?}")
    });
    bp.may_exit();
    bp.signal(Signal::SIGINT);
    bp.wait_exit();
}
