//! py-spy as an outside oracle: `py-spy dump` of a live process, parsed, and the one way
//! both its stacks and blockprobe's are cut before they are compared.

use std::path::PathBuf;
use std::process::Command;

/// One thread of a `py-spy dump`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpyThread {
    /// The thread's Python name (`MainThread`, `hog`).
    pub name: String,
    /// Its frames' function names, innermost first, as py-spy names them (`co_qualname`
    /// on 3.11+, `co_name` before, like blockprobe).
    pub functions: Vec<String>,
}

/// Where `cargo xtask setup` installs py-spy (PyPI `py-spy`): `pyspy/bin/py-spy` beside
/// the scripts' dependencies ([`crate::pydeps`], in `target/`).
pub fn pyspy_bin() -> PathBuf {
    let path = (crate::pydeps().parent())
        .expect("pydeps has a parent")
        .join("pyspy/bin/py-spy");
    assert!(
        path.is_file(),
        "py-spy not found at {}: run `cargo xtask setup`",
        path.display()
    );
    path
}

/// `py-spy dump --nonblocking` of process `pid`: its threads' stacks, read without
/// pausing it (a pause would be time the traced loop spends stopped, outside the
/// stall's causes).
pub fn dump(pid: u32) -> Result<Vec<SpyThread>, String> {
    let out = Command::new(pyspy_bin())
        .args(["dump", "--nonblocking", "--pid", &pid.to_string()])
        .output()
        .map_err(|e| format!("cannot run py-spy: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "py-spy dump exited with {}: {text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(parse(&text))
}

/// The threads of a `py-spy dump` text: a `Thread <id> (<state>): "<name>"` line, then
/// one indented `function (file:line)` line per frame, innermost first.
pub fn parse(text: &str) -> Vec<SpyThread> {
    let mut threads: Vec<SpyThread> = Vec::new();
    for line in text.lines() {
        if let Some(header) = line.strip_prefix("Thread ") {
            let name = header
                .split_once(": \"")
                .map_or("", |(_, name)| name.trim_end_matches('"'));
            threads.push(SpyThread {
                name: name.to_owned(),
                functions: Vec::new(),
            });
        } else if let (Some(frame), Some(thread)) = (line.strip_prefix("    "), threads.last_mut())
            // A function name has no " (" in it; a file name may.
            && let Some((function, _)) = frame.trim_start().split_once(" (")
        {
            thread.functions.push(function.to_owned());
        }
    }
    threads
}

/// The frames of a loop thread's stack that belong to what the loop was running:
/// innermost first, down to the frame asyncio's `Handle._run` (`_run` before 3.11)
/// called, the task's coroutine. The loop machinery below it (`_run_once`,
/// `run_forever`, `asyncio.run`, `<module>`) is left out on both sides: blockprobe and
/// py-spy agree on it, and it says nothing about the stall. A stack without that frame
/// (another thread's) is kept whole.
pub fn above_the_loop<S: AsRef<str>>(functions: &[S]) -> Vec<String> {
    functions
        .iter()
        .map(AsRef::as_ref)
        .take_while(|f| !matches!(*f, "Handle._run" | "_run"))
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_threads_and_frames() {
        let text = "Process 19088: python3 t.py\nPython v3.11.7 (/usr/bin/python3.11)\n\n\
            Thread 19088 (idle): \"MainThread\"\n    c (t1.py:2)\n    main (t1.py:7)\n\
            \x20   Handle._run (asyncio/events.py:80)\n    <module> (t1.py:8)\n\
            Thread 0x7F78ACBF0B80 (active): \"hog\"\n    crunch (x (1).py:3)\n";
        let threads = parse(text);
        assert_eq!(threads.len(), 2);
        assert_eq!(threads[0].name, "MainThread");
        assert_eq!(
            threads[0].functions,
            ["c", "main", "Handle._run", "<module>"]
        );
        assert_eq!(above_the_loop(&threads[0].functions), ["c", "main"]);
        assert_eq!(threads[1].name, "hog");
        assert_eq!(threads[1].functions, ["crunch"]);
    }
}
