//! blockprobe against a hostile environment: readers that go away, stopped processes,
//! files swapped under it, state that dead threads and processes leave behind.

use std::io::{BufRead as _, BufReader, Read as _};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use blockprobe_tests::{Python, blockprobe_bin, python_env, require_root, script};
use serde_json::Value;

/// How long a test waits for blockprobe to exit before it fails.
const EXIT_PATIENCE: Duration = Duration::from_secs(60);

/// `blockprobe run -o r.json -- python3 app.py | head -1`: the reader of the live output
/// goes away after the first stall. The live output stops quietly, tracing goes on: the
/// report is written with every stall, including those after the pipe closed, and the
/// exit code is the command's (0).
#[test]
fn a_closed_pipe_keeps_the_report() {
    require_root();
    let python = Python::pyenv("3.11.7");
    let dir = tempfile::tempdir().expect("temporary directory");
    let report = dir.path().join("r.json");
    let go = dir.path().join("go");
    let mut cmd = Command::new(blockprobe_bin());
    cmd.args(["run", "--threshold", "20ms", "-o"])
        .arg(&report)
        .arg("--")
        .arg(&python.path)
        .arg(script("closed_pipe.py"))
        .arg(&go)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    python_env(&mut cmd);
    let mut bp = cmd.spawn().expect("blockprobe starts");
    let mut stderr = bp.stderr.take().expect("stderr piped");
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    // Like `head`: read up to the first stall line, then go away.
    let mut out = BufReader::new(bp.stdout.take().expect("stdout piped"));
    let mut line = String::new();
    loop {
        line.clear();
        let read = out
            .read_line(&mut line)
            .expect("reading blockprobe's stdout");
        assert!(read > 0, "blockprobe's stdout ended before a stall line");
        if !line.starts_with("TIME") {
            break;
        }
    }
    assert!(line.contains("handler"), "not a stall of handler: {line:?}");
    drop(out);
    std::fs::write(&go, b"").expect("creating the go file");
    let since = Instant::now();
    let status = loop {
        if let Some(status) = bp.try_wait().expect("waiting for blockprobe") {
            break status;
        }
        if since.elapsed() > EXIT_PATIENCE {
            let _ = bp.kill();
            panic!("blockprobe did not exit {EXIT_PATIENCE:?} after its stdout closed");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = errors.join().expect("stderr reader");
    assert!(
        status.code() == Some(0),
        "blockprobe exited with {status}, the command with 0; stderr:\n{stderr}"
    );
    assert!(
        !stderr.contains("error") && !stderr.contains("panicked"),
        "stderr:\n{stderr}"
    );
    let text = std::fs::read_to_string(&report).expect("the report was written");
    let report: Value = serde_json::from_str(&text).expect("the report is JSON");
    let stalls = report["stalls"].as_array().expect("stalls");
    let handler = |s: &&Value| s["culprit"]["function"] == "handler";
    // At least the one read, and the three after the pipe closed.
    assert!(
        stalls.iter().filter(handler).count() >= 4,
        "the report lacks the stalls after the pipe closed: {stalls:#?}"
    );
}
