//! Reports on disk: [`Report::load`] reads and validates one, [`Report::write_atomic`]
//! writes one so that the target is never left half-written.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;

use anyhow::anyhow;
use serde::Deserialize;

use super::{Report, SCHEMA};

/// Reports larger than this are refused by [`Report::load`] (256 MiB).
pub const MAX_REPORT_BYTES: u64 = 256 << 20;

impl Report {
    /// Writes the report to `path` atomically: a temporary file in the same directory is
    /// written, flushed and fsynced, then renamed over `path`. On any error `path` is
    /// left as it was, the temporary file is removed, and the one-line error names
    /// `path`. The file gets the mode a plain `File::create` would give it.
    pub fn write_atomic(&self, path: &Path) -> anyhow::Result<()> {
        write_atomic_with(path, |w| {
            serde_json::to_writer(&mut *w, self).map_err(io::Error::from)?;
            w.write_all(b"\n")
        })
    }

    /// [`Report::write_atomic`], but first checks that the JSON is at most `max_bytes`
    /// (e.g. [`MAX_REPORT_BYTES`], over which [`Report::load`] would refuse it): a
    /// larger report is not written at all, and the one-line error names `path`.
    pub fn write_atomic_capped(&self, path: &Path, max_bytes: u64) -> anyhow::Result<()> {
        let mut bytes = serde_json::to_vec(self)
            .map_err(|e| anyhow!("cannot write report {}: {e}", path.display()))?;
        bytes.push(b'\n');
        if bytes.len() as u64 > max_bytes {
            return Err(anyhow!(
                "cannot write report {}: it would be {} bytes, over the {} limit for \
                 reports (blockprobe could not read it back); nothing was written",
                path.display(),
                bytes.len(),
                size_text(max_bytes)
            ));
        }
        write_atomic_with(path, |w| w.write_all(&bytes))
    }

    /// Reads and validates a report. Every error is one line naming `path`: missing or
    /// unreadable file, file over [`MAX_REPORT_BYTES`], empty, truncated or corrupt
    /// JSON, wrong or missing `schema`, or a v1 report with missing or invalid fields.
    pub fn load(path: &Path) -> anyhow::Result<Report> {
        let bytes = read_capped(path, MAX_REPORT_BYTES)?;
        Self::from_slice(&bytes).map_err(|e| anyhow!("report {}: {e}", path.display()))
    }

    /// Parses and validates a report held in memory (the checks of [`Report::load`]
    /// after reading). The error does not name a file.
    pub fn from_slice(bytes: &[u8]) -> Result<Report, String> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err("the file is empty".to_owned());
        }
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
        if first != Some(&b'{') {
            return Err(
                match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
                    Ok(_) => format!(
                        "not a blockprobe report: expected a JSON object, found {}",
                        json_kind(first.copied().unwrap_or(b'?'))
                    ),
                    Err(e) => json_syntax_error(&e),
                },
            );
        }
        // First only the schema, so that a report of another version is reported as
        // such rather than as a missing field.
        #[derive(Deserialize)]
        struct Probe {
            schema: Option<serde_json::Value>,
        }
        let probe: Probe = serde_json::from_slice(bytes).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => format!("not a blockprobe report ({e})"),
            _ => json_syntax_error(&e),
        })?;
        match probe.schema {
            None => {
                return Err(format!(
                    "not a blockprobe report: no \"schema\" field (expected {SCHEMA:?})"
                ));
            }
            Some(serde_json::Value::String(s)) if s == SCHEMA => {}
            Some(serde_json::Value::String(s)) => {
                let shown = shorten(&s, 80);
                let hint = if s.starts_with("blockprobe.report/") {
                    " (written by a different blockprobe version?)"
                } else {
                    ""
                };
                return Err(format!(
                    "unsupported schema {shown:?}; this blockprobe ({}) reads only {SCHEMA:?}{hint}",
                    env!("CARGO_PKG_VERSION")
                ));
            }
            Some(other) => {
                return Err(format!(
                    "not a blockprobe report: \"schema\" is {}, not a string",
                    shorten(&other.to_string(), 40)
                ));
            }
        }
        serde_json::from_slice(bytes).map_err(|e| format!("invalid {SCHEMA} report: {e}"))
    }
}

fn json_syntax_error(e: &serde_json::Error) -> String {
    match e.classify() {
        serde_json::error::Category::Eof => format!("truncated JSON ({e})"),
        _ => format!("corrupt JSON ({e})"),
    }
}

/// What a valid JSON document starting with `first` is.
fn json_kind(first: u8) -> &'static str {
    match first {
        b'[' => "an array",
        b'"' => "a string",
        b't' | b'f' => "a boolean",
        b'n' => "null",
        _ => "a number",
    }
}

fn shorten(s: &str, max_chars: usize) -> String {
    if s.chars().count() <= max_chars {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(max_chars).collect();
        out.push('…');
        out
    }
}

/// A byte limit as text: `256 MiB`, or `1000 bytes` below one MiB.
fn size_text(bytes: u64) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{bytes} bytes")
    }
}

/// Reads a whole file, refusing (before reading) one larger than `cap` bytes.
fn read_capped(path: &Path, cap: u64) -> anyhow::Result<Vec<u8>> {
    let p = path.display();
    let file = File::open(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => anyhow!("report {p}: no such file"),
        _ => anyhow!("report {p}: cannot open: {e}"),
    })?;
    let meta = file
        .metadata()
        .map_err(|e| anyhow!("report {p}: cannot stat: {e}"))?;
    if meta.is_dir() {
        return Err(anyhow!("report {p}: is a directory, not a report file"));
    }
    let too_big = |size: &str| {
        anyhow!(
            "report {p}: {size} bytes is over the {} limit for reports; refusing to read it",
            size_text(cap)
        )
    };
    if meta.len() > cap {
        return Err(too_big(&meta.len().to_string()));
    }
    // Also bounds what is read from a file that grows, or a pipe.
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(cap + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| anyhow!("report {p}: cannot read: {e}"))?;
    if bytes.len() as u64 > cap {
        return Err(too_big("more than"));
    }
    Ok(bytes)
}

/// The mechanism of [`Report::write_atomic`], with the content written by `write`.
pub fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;

    let p = path.display();
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| anyhow!("cannot write report {p}: not a file path"))?;
    let mut prefix = std::ffi::OsString::from(".");
    prefix.push(name);
    prefix.push(".");
    let mut tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".tmp")
        // Subject to the umask, like File::create.
        .permissions(std::fs::Permissions::from_mode(0o666))
        .tempfile_in(dir)
        .map_err(|e| {
            anyhow!(
                "cannot write report {p}: cannot create a temporary file in {}: {e}",
                dir.display()
            )
        })?;
    let written = (|| {
        let mut w = BufWriter::new(tmp.as_file_mut());
        write(&mut w)?;
        w.flush()?;
        drop(w);
        tmp.as_file().sync_all()
    })();
    if let Err(e) = written {
        // Dropping `tmp` removes the temporary file.
        return Err(anyhow!("cannot write report {p}: {e}"));
    }
    tmp.persist(path).map_err(|e| {
        anyhow!(
            "cannot write report {p}: cannot rename into place: {}",
            e.error
        )
    })?;
    // Make the rename itself durable; the report is complete either way.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::sample_report;

    #[test]
    fn round_trip_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.json");
        let r = sample_report();
        r.write_atomic(&path).unwrap();
        let back = Report::load(&path).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.stall_count(), 36);
        // Nothing but the report is left in the directory.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("r.json")]);
        // Overwrite in place.
        let mut r2 = r.clone();
        r2.host = "web-2".into();
        r2.write_atomic(&path).unwrap();
        assert_eq!(Report::load(&path).unwrap().host, "web-2");
    }

    fn write(dir: &Path, name: &str, content: &[u8]) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, content).unwrap();
        p
    }

    fn load_err(path: &Path) -> String {
        let e = Report::load(path).unwrap_err().to_string();
        assert!(!e.contains('\n'), "one line: {e}");
        assert!(
            e.contains(&path.display().to_string()),
            "names the path: {e}"
        );
        e
    }

    #[test]
    fn load_errors_are_clear() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let good = serde_json::to_vec(&sample_report()).unwrap();

        let e = load_err(&d.join("nope.json"));
        assert!(e.contains("no such file"), "{e}");

        let e = load_err(&write(d, "empty.json", b"  \n"));
        assert!(e.contains("empty"), "{e}");

        let e = load_err(&write(d, "trunc.json", &good[..good.len() / 2]));
        assert!(e.contains("truncated"), "{e}");

        // A structural byte (not one inside a string) a third of the way in.
        let mut corrupt = good.clone();
        // A colon, never inside a string: always a syntax error.
        let third = good.len() / 3;
        let colon = third + good[third..].iter().position(|&b| b == b':').unwrap();
        corrupt[colon] = b'#';
        let e = load_err(&write(d, "corrupt.json", &corrupt));
        assert!(e.contains("corrupt"), "{e}");

        let e = load_err(&write(d, "garbage.json", b"\x7fELF\x02\x01"));
        assert!(e.contains("corrupt"), "{e}");

        let e = load_err(&write(d, "array.json", b"[1,2,3]"));
        assert!(
            e.contains("not a blockprobe report: expected a JSON object, found an array"),
            "{e}"
        );
        let e = load_err(&write(d, "array_trunc.json", b"[1,2,"));
        assert!(e.contains("truncated"), "{e}");

        let e = load_err(&write(d, "noschema.json", br#"{"host":"x"}"#));
        assert!(e.contains("no \"schema\""), "{e}");

        let v2 = String::from_utf8(good.clone())
            .unwrap()
            .replace("blockprobe.report/v1", "blockprobe.report/v2");
        let e = load_err(&write(d, "v2.json", v2.as_bytes()));
        assert!(
            e.contains("\"blockprobe.report/v2\""),
            "says what was found: {e}"
        );
        assert!(
            e.contains("reads only \"blockprobe.report/v1\""),
            "says what is supported: {e}"
        );

        let e = load_err(&write(d, "other.json", br#"{"schema":"something/else"}"#));
        assert!(e.contains("unsupported schema \"something/else\""), "{e}");

        let e = load_err(&write(d, "numschema.json", br#"{"schema":3}"#));
        assert!(e.contains("not a string"), "{e}");

        let e = load_err(&write(
            d,
            "missing.json",
            br#"{"schema":"blockprobe.report/v1","host":"h"}"#,
        ));
        assert!(e.contains("missing field `duration_ns`"), "{e}");

        let bad_hist = br#"{"schema":"blockprobe.report/v1","host":"h","duration_ns":5,"threshold_ns":1,"lost_events":0,
            "processes":[],"stalls":[],
            "functions":[{"function":"f","file":"a.py","count":3,"total_ns":9,"max_ns":6,"buckets":[{"le_ns":7,"count":1}]}]}"#;
        let e = load_err(&write(d, "badhist.json", bad_hist));
        assert!(e.contains("add up to 1, but count is 3"), "{e}");

        let e = load_err(d);
        assert!(e.contains("directory"), "{e}");
    }

    #[test]
    fn refuses_oversize_files_without_reading_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("huge.json");
        let f = File::create(&path).unwrap();
        // Sparse: no disk space used.
        f.set_len(MAX_REPORT_BYTES + 1).unwrap();
        let e = load_err(&path);
        assert!(e.contains("over the 256 MiB limit"), "{e}");
        assert!(e.contains(&(MAX_REPORT_BYTES + 1).to_string()), "{e}");
        // Exactly at the cap is read (and then found corrupt: it is all NULs).
        f.set_len(10).unwrap();
        let e = read_capped(&path, 9).unwrap_err().to_string();
        assert!(e.contains("over the"), "{e}");
        assert_eq!(read_capped(&path, 10).unwrap().len(), 10);
    }

    fn assert_untouched(path: &Path, old: &[u8]) {
        assert_eq!(std::fs::read(path).unwrap(), old, "old file intact");
        let dir = path.parent().unwrap();
        let leftovers: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    }

    #[test]
    fn failed_write_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "r.json", b"old report");
        let e = write_atomic_with(&path, |w| {
            w.write_all(&[b'x'; 100_000])?;
            Err(io::Error::other("disk on fire"))
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("disk on fire"), "{e}");
        assert!(e.contains(&path.display().to_string()), "{e}");
        assert_untouched(&path, b"old report");
    }

    #[test]
    fn failed_rename_keeps_the_target() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("r.json");
        std::fs::create_dir(&target).unwrap();
        write(&target, "inside", b"keep me");
        let e = sample_report()
            .write_atomic(&target)
            .unwrap_err()
            .to_string();
        assert!(e.contains("rename"), "{e}");
        assert!(e.contains(&target.display().to_string()), "{e}");
        assert_eq!(std::fs::read(target.join("inside")).unwrap(), b"keep me");
        assert_untouched(&target.join("inside"), b"keep me");
    }

    #[test]
    fn missing_directory_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no/such/dir/r.json");
        let e = sample_report().write_atomic(&path).unwrap_err().to_string();
        assert!(e.contains(&path.display().to_string()), "{e}");
        assert!(e.contains("temporary file"), "{e}");
    }

    /// Drops the capabilities that let root ignore file permissions, for the calling
    /// thread only (capabilities are per thread on Linux).
    fn drop_dac_override_in_this_thread() {
        // CAP_DAC_OVERRIDE (1), CAP_DAC_READ_SEARCH (2), CAP_FOWNER (3).
        crate::preflight::ThreadCapabilities::get()
            .and_then(|caps| caps.drop_effective((1 << 1) | (1 << 2) | (1 << 3)))
            .unwrap();
    }

    #[test]
    fn unwritable_directory_keeps_the_old_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "r.json", b"old report");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o555)).unwrap();
        let p = path.clone();
        let result = std::thread::spawn(move || {
            drop_dac_override_in_this_thread();
            sample_report().write_atomic(&p).map_err(|e| e.to_string())
        })
        .join()
        .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = result.unwrap_err();
        assert!(e.contains(&path.display().to_string()), "{e}");
        assert!(e.contains("Permission denied"), "{e}");
        assert_untouched(&path, b"old report");
    }

    #[test]
    fn written_file_mode_follows_umask_not_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.json");
        sample_report().write_atomic(&path).unwrap();
        let reference = dir.path().join("ref");
        File::create(&reference).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), mode(&reference));
    }

    proptest::proptest! {
        /// Arbitrary bytes, and valid reports cut or corrupted at any point, are refused
        /// with an error or loaded, never a panic.
        #[test]
        fn loading_never_panics(garbage in proptest::collection::vec(proptest::num::u8::ANY, 0..512), cut in 0usize..2000, flip in 0usize..2000) {
            let _ = Report::from_slice(&garbage);
            let valid = serde_json::to_vec(&sample_report()).unwrap();
            let _ = Report::from_slice(&valid[..cut.min(valid.len())]);
            let mut corrupt = valid.clone();
            let i = flip % corrupt.len();
            corrupt[i] = corrupt[i].wrapping_add(1);
            let _ = Report::from_slice(&corrupt);
        }
    }
}
