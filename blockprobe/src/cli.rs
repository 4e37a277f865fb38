//! Command-line interface.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::render::live::LiveFormat;

/// Find what blocks Python asyncio event loops — system-wide, on running processes,
/// with no code change and no restart.
#[derive(Debug, Parser)]
#[command(name = "blockprobe", version, about, after_help = EXAMPLES)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

const EXAMPLES: &str = "\
EXAMPLES:
    blockprobe run -- python3 app.py          # trace app.py and its children until it exits
    blockprobe trace -p 1234                  # trace a running process until Ctrl-C
    blockprobe trace --duration 30s -o r.json # every Python process on the host for 30 s
    blockprobe trace --threshold 500us        # report stalls of 0.5 ms and more
    blockprobe report r.json                  # render a saved report";

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a command and trace it and all its descendants until it exits.
    #[command(
        after_help = "EXAMPLES:\n    blockprobe run -- python3 app.py\n    blockprobe run -o report.json --threshold 50ms -- uvicorn app:main"
    )]
    Run {
        /// Tracing options.
        #[command(flatten)]
        options: TraceOptions,
        /// The command to run, and its arguments.
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Trace running processes (-p), or every Python process on the host.
    #[command(
        after_help = "EXAMPLES:\n    blockprobe trace -p 1234 -p 5678\n    blockprobe trace --duration 1m -o host.json"
    )]
    Trace {
        /// Tracing options.
        #[command(flatten)]
        options: TraceOptions,
        /// Process to trace (repeatable). Without -p: every Python process, including
        /// ones started later.
        #[arg(short = 'p', long = "pid", value_name = "PID")]
        pids: Vec<u32>,
    },
    /// Render a saved report.
    Report {
        /// The report file written with -o.
        file: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = crate::commands::report::ReportFormat::Text)]
        format: crate::commands::report::ReportFormat,
    },
}

/// Options shared by `run` and `trace`.
#[derive(Debug, Args, Clone)]
pub struct TraceOptions {
    /// Report loop iterations that stay off-await at least this long (e.g. 500us, 10ms, 1s).
    #[arg(long, default_value = "10ms", value_parser = parse_duration)]
    pub threshold: Duration,
    /// Stop after this long (e.g. 30s, 5m).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Write a JSON report here at exit (also on Ctrl-C/SIGTERM), atomically.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Format of the live stream on stdout.
    #[arg(long, value_enum, default_value_t = LiveFormat::Text)]
    pub format: LiveFormat,
    /// No live output and no summary; only errors and the report file.
    #[arg(short, long)]
    pub quiet: bool,
}

/// Parses `500us`, `10ms`, `1s`, `1m`, `1.5s`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text.trim())
        .map_err(|e| format!("invalid duration {text:?} ({e}); use e.g. 500us, 10ms, 1s"))?;
    if d.is_zero() {
        return Err(format!("duration {text:?} must be greater than zero"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500us").unwrap(), Duration::from_micros(500));
        assert_eq!(parse_duration("10ms").unwrap(), Duration::from_millis(10));
        assert_eq!(parse_duration("1s").unwrap(), Duration::from_secs(1));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(
            parse_duration("0ms")
                .unwrap_err()
                .contains("greater than zero")
        );
        assert!(parse_duration("ten").unwrap_err().contains("use e.g."));
        assert!(parse_duration("10").is_err());
    }

    #[test]
    fn run_takes_the_command_after_double_dash() {
        let cli = Cli::try_parse_from([
            "blockprobe",
            "run",
            "--threshold",
            "5ms",
            "--",
            "python3",
            "-c",
            "x",
        ])
        .unwrap();
        match cli.command {
            Command::Run { options, command } => {
                assert_eq!(options.threshold, Duration::from_millis(5));
                assert_eq!(command, ["python3", "-c", "x"]);
            }
            _ => panic!("not run"),
        }
        assert!(Cli::try_parse_from(["blockprobe", "run"]).is_err());
    }

    #[test]
    fn trace_takes_repeated_pids() {
        let cli = Cli::try_parse_from([
            "blockprobe",
            "trace",
            "-p",
            "1",
            "-p",
            "2",
            "--duration",
            "3s",
        ])
        .unwrap();
        match cli.command {
            Command::Trace { pids, options } => {
                assert_eq!(pids, [1, 2]);
                assert_eq!(options.duration, Some(Duration::from_secs(3)));
            }
            _ => panic!("not trace"),
        }
    }
}
