//! Live tests: real interpreters, stopped at known places, walked exactly as BPF walks
//! them, and symbolized. They need root (or ptrace rights over children).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead as _, BufReader};
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};

use blockprobe_common::config::PyProcess;
use blockprobe_common::stack::{MAX_FRAMES, RawFrame, RawStack};
use blockprobe_common::walk::walk_thread;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;

use super::memory::ProcessMemory;
use super::origin::{Origin, classify};
use super::{Inspection, PythonProcess};
use crate::model::Frame;
use crate::model::fixtures::frame;

/// A child process killed and reaped when the test ends, even by a panic.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Guard {
    fn spawn(cmd: &mut Command) -> Self {
        Guard(
            cmd.spawn()
                .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}")),
        )
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Reads the child's first line of output.
    fn first_line(&mut self) -> String {
        let out: ChildStdout = self.0.stdout.take().expect("stdout is piped");
        let mut line = String::new();
        BufReader::new(out)
            .read_line(&mut line)
            .expect("read child output");
        line.trim_end().to_owned()
    }
}

/// Main thread: `<module>` → `outer` → `inner` sleeping; a worker thread sleeping in
/// `wörker` (a Latin-1 name); a watcher `watch_待つ` (a UCS-2 name) that prints `ready`
/// once both are on their sleep lines, then sleeps too. The file name is UCS-4.
const SCRIPT: &str = r#"import sys, threading, time

def inner():
    time.sleep(60)  # @inner

def outer():
    inner()  # @outer

def wörker():
    time.sleep(60)  # @worker

def watch_待つ(main_ident, worker):
    want = {main_ident: (inner.__code__, inner.__code__.co_firstlineno + 1),
            worker.ident: (wörker.__code__, wörker.__code__.co_firstlineno + 1)}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        frames = sys._current_frames()
        if all(i in frames and (frames[i].f_code, frames[i].f_lineno) == w
               for i, w in want.items()):
            print("ready", flush=True)
            time.sleep(60)  # @watch
        time.sleep(0.01)
    print("timeout", flush=True)

worker = threading.Thread(target=wörker, daemon=True)
worker.start()
threading.Thread(target=watch_待つ, args=(threading.get_ident(), worker), daemon=True).start()
outer()  # @module
"#;

/// The 1-based line of `SCRIPT` carrying `marker`.
fn line_of(marker: &str) -> u32 {
    let index = SCRIPT
        .lines()
        .position(|l| l.ends_with(marker))
        .expect(marker);
    index as u32 + 1
}

/// Walks one thread's stack with the BPF program's walk, from its thread pointer.
/// The frames of `stack`, symbolized by `process`'s reader.
fn symbolize(process: &mut PythonProcess, stack: &RawStack) -> Vec<Frame> {
    let mut symbolized = process.symbolize(vec![*stack]).unwrap();
    symbolized.stacks.remove(0)
}

fn bpf_walk(mem: &ProcessMemory, cfg: &PyProcess, fsbase: u64) -> RawStack {
    let mut stack = RawStack {
        len: 0,
        flags: 0,
        tstate: 0,
        task_name: 0,
        frames: [RawFrame::default(); MAX_FRAMES],
    };
    let tstate = mem
        .read_u64(fsbase.wrapping_add(cfg.tstate_slot_offset))
        .unwrap();
    walk_thread(mem, cfg, tstate, &mut stack);
    stack
}

fn inspect_ready(pid: u32) -> PythonProcess {
    match PythonProcess::inspect(pid).expect("inspect") {
        Inspection::Ready(p) => p,
        other => panic!("process {pid} not ready: {other:?}"),
    }
}

/// Runs `SCRIPT` with the test interpreter `id` (unless [`blockprobe_pythons::require`]
/// skips it), then checks version, walk configuration, the threads and the symbolized
/// stack of each thread.
fn check_interpreter(id: &str) {
    let interpreter = blockprobe_pythons::by_id(id);
    let Some(python) = blockprobe_pythons::require(interpreter) else {
        return;
    };
    let python = python.to_str().expect("UTF-8 path");
    let dir = tempfile::tempdir().unwrap();
    let script: PathBuf = dir.path().join("stall_😴.py");
    std::fs::write(&script, SCRIPT).unwrap();
    let file = script.to_str().unwrap();
    let mut child = Guard::spawn(
        Command::new(python)
            .arg(&script)
            .env_remove("PYTHONPATH")
            .stdout(Stdio::piped()),
    );
    assert_eq!(child.first_line(), "ready");
    let pid = child.pid();

    let mut process = inspect_ready(pid);
    let version = process.version();
    assert_eq!(version.to_string(), interpreter.version);
    let minor = version.minor;
    let cfg = process.walk_config();
    if minor >= 15 {
        // A static-TLS variable just below the thread pointer.
        assert!(cfg.tstate_slot_offset.wrapping_neg() <= 0x1000, "{cfg:?}");
    } else {
        // glibc's own slot for the key, not a scanned one.
        assert!(
            cfg.tstate_slot_offset >= 0x318 && (cfg.tstate_slot_offset - 0x318).is_multiple_of(16)
        );
    }
    eprintln!("{python}: Python {version}, walk config {cfg:?}");
    // The GIL state was found (its switch interval read back as 5000 µs) and its last
    // holder is one of the process's threads.
    assert_ne!(cfg.gil_addr, 0, "GIL state not located");
    let gil_state = ProcessMemory::new(pid);
    let holder = gil_state
        .read_u64(cfg.gil_addr + blockprobe_common::config::GIL_LAST_HOLDER)
        .unwrap();
    assert_eq!(gil_state.read_u64(cfg.gil_addr).unwrap(), 5000);
    assert_eq!(cfg.tstate_native_tid != 0, minor >= 11);

    let threads = process.threads().unwrap();
    assert_eq!(threads.len(), 3, "{threads:?}");
    assert!(
        threads.iter().any(|t| t.tstate == holder),
        "GIL last holder {holder:#x} is no thread"
    );
    let tids: BTreeSet<u32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap())
        .collect();
    if minor >= 11 {
        let native: BTreeSet<u32> = threads.iter().map(|t| t.native_id.unwrap()).collect();
        assert_eq!(native, tids);
    } else {
        assert!(threads.iter().all(|t| t.native_id.is_none()));
    }
    // Each thread's tid, also before 3.11 (from glibc's `struct pthread`), with its own
    // thread state and its stack walked now.
    let states = process.threads_now().unwrap();
    let state_tids: BTreeSet<u32> = states.iter().map(|t| t.tid).collect();
    assert_eq!(state_tids, tids, "{states:?}");
    assert!(
        states
            .iter()
            .all(|t| { threads.iter().any(|s| s.tstate == t.tstate) && !t.frames.is_empty() })
    );

    let mem = ProcessMemory::new(pid);
    let mut stacks = BTreeMap::new();
    for t in &threads {
        let raw = bpf_walk(&mem, &cfg, t.thread_id);
        assert_eq!(
            raw.tstate, t.tstate,
            "the slot holds the thread's own state"
        );
        let frames = symbolize(&mut process, &raw);
        assert_eq!(
            symbolize(&mut process, &raw),
            frames,
            "cached lookups agree"
        );
        stacks.insert(frames[0].function.clone(), frames);
    }
    assert_eq!(
        stacks.keys().map(String::as_str).collect::<Vec<_>>(),
        ["inner", "watch_待つ", "wörker"]
    );
    assert_eq!(
        stacks["inner"],
        [
            frame("inner", file, line_of("# @inner")),
            frame("outer", file, line_of("# @outer")),
            frame("<module>", file, line_of("# @module")),
        ]
    );
    let worker = &stacks["wörker"];
    assert_eq!(worker[0], frame("wörker", file, line_of("# @worker")));
    let names: Vec<&str> = worker[1..].iter().map(|f| f.function.as_str()).collect();
    let want = if minor >= 11 {
        ["Thread.run", "Thread._bootstrap_inner", "Thread._bootstrap"]
    } else {
        ["run", "_bootstrap_inner", "_bootstrap"]
    };
    assert_eq!(names, want);
    for f in &worker[1..] {
        assert!(f.file.ends_with("/threading.py") && f.line > 0, "{f:?}");
        assert_eq!(classify(&f.file), Origin::Stdlib, "{f:?}");
    }
    assert_eq!(classify(file), Origin::FirstParty);
    let watcher = &stacks["watch_待つ"][0];
    assert_eq!(watcher.file, file);

    // Garbage frames become <unreadable>; a bad instruction pointer only loses the line.
    let main_code = bpf_walk(&mem, &cfg, threads.last().unwrap().thread_id).frames[0].code;
    let mut raw = bpf_walk(&mem, &cfg, threads[0].thread_id);
    raw.len = 4;
    raw.frames[..4].copy_from_slice(&[
        RawFrame {
            code: 0x10,
            instr: 0,
        },
        RawFrame {
            code: u64::MAX - 8,
            instr: 0,
        },
        RawFrame {
            code: raw.tstate,
            instr: 0,
        },
        RawFrame {
            code: main_code,
            instr: 0x7fff_0000_0000,
        },
    ]);
    let frames = symbolize(&mut process, &raw);
    for f in &frames[..3] {
        assert_eq!(*f, frame("<unreadable>", "<unknown>", 0));
    }
    assert_eq!(frames[3].file, file);
}

#[test]
fn pyenv_3_9() {
    check_interpreter("pyenv_3_9");
}

#[test]
fn pyenv_3_10() {
    check_interpreter("pyenv_3_10");
}

#[test]
fn pyenv_3_11() {
    check_interpreter("pyenv_3_11");
}

/// Debian's python3.11 is stripped (only `.dynsym`, no `.symtab`): everything blockprobe
/// needs from it comes from the dynamic symbols and the live process.
#[test]
fn debian_3_11() {
    assert_stripped("/usr/bin/python3.11");
    check_interpreter("debian_3_11");
}

/// Fails unless the ELF file at `path` has dynamic symbols and no symbol table.
fn assert_stripped(path: &str) {
    use object::Object as _;
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    let elf = object::File::parse(&*data).unwrap_or_else(|e| panic!("{path} is no ELF: {e}"));
    assert!(
        elf.section_by_name(".symtab").is_none(),
        "{path} has a .symtab: not the stripped build these tests are about"
    );
    assert!(
        elf.section_by_name(".dynsym").is_some(),
        "{path} has no .dynsym"
    );
}

#[test]
fn pyenv_3_12() {
    check_interpreter("pyenv_3_12");
}

#[test]
fn pyenv_3_13() {
    check_interpreter("pyenv_3_13");
}

#[test]
fn debian_3_14() {
    check_interpreter("debian_3_14");
}

#[test]
fn debian_3_15() {
    check_interpreter("debian_3_15");
}

/// A process whose only thread holds the GIL from its start (it spins in Python) is
/// ready: on 3.15, where the attached and the bound thread state are two TLS variables
/// that both hold the state then, the bound one is told by the interpreter's code.
#[test]
fn gil_held_from_the_start() {
    for id in ["debian_3_11", "pyenv_3_13", "debian_3_14", "debian_3_15"] {
        let Some(python) = blockprobe_pythons::require(blockprobe_pythons::by_id(id)) else {
            continue;
        };
        let mut child = Guard::spawn(
            Command::new(&python)
                .args(["-c", "print('ready', flush=True)\nwhile True: pass"])
                .stdout(Stdio::piped()),
        );
        assert_eq!(child.first_line(), "ready");
        let process = inspect_ready(child.pid());
        let mem = ProcessMemory::new(child.pid());
        let threads = process.threads().unwrap();
        assert_eq!(threads.len(), 1, "{id}: {threads:?}");
        let cfg = process.walk_config();
        let slot = threads[0].thread_id.wrapping_add(cfg.tstate_slot_offset);
        assert_eq!(mem.read_u64(slot).unwrap(), threads[0].tstate, "{id}");
    }
}

#[test]
fn not_python() {
    let child = Guard::spawn(Command::new("sleep").arg("60"));
    let inspection = PythonProcess::inspect(child.pid()).unwrap();
    assert!(
        matches!(inspection, Inspection::NotPython),
        "{inspection:?}"
    );
}

/// Python 3.8 is refused, with its version named.
#[test]
fn pyenv_3_8_refused() {
    let Some(python) = blockprobe_pythons::require(&blockprobe_pythons::REFUSED) else {
        return;
    };
    let mut child = Guard::spawn(
        Command::new(python)
            .args([
                "-c",
                "import time; print('ready', flush=True); time.sleep(60)",
            ])
            .stdout(Stdio::piped()),
    );
    assert_eq!(child.first_line(), "ready");
    let err = PythonProcess::inspect(child.pid()).unwrap_err().to_string();
    let want = format!(
        "Python {} is not supported",
        blockprobe_pythons::REFUSED.version
    );
    assert!(err.contains(&want), "{err}");
}

/// Right after exec (stopped by ptrace before the dynamic loader ran), a Python process
/// is not ready: libpython is not mapped yet, or the runtime is not initialized.
#[test]
fn just_execed_is_not_ready() {
    for id in ["debian_3_11", "pyenv_3_11", "pyenv_3_13"] {
        let Some(python) = blockprobe_pythons::require(blockprobe_pythons::by_id(id)) else {
            continue;
        };
        let mut cmd = Command::new(&python);
        cmd.args(["-c", "pass"]);
        // SAFETY: only an async-signal-safe system call runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = Guard::spawn(&mut cmd);
        let status = waitpid(Pid::from_raw(child.pid() as i32), None).unwrap();
        assert!(matches!(status, WaitStatus::Stopped(_, _)), "{status:?}");
        let inspection = PythonProcess::inspect(child.pid()).unwrap();
        assert!(
            matches!(inspection, Inspection::NotReady(_)),
            "{}: {inspection:?}",
            python.display()
        );
        eprintln!("{} after exec: {inspection:?}", python.display());
    }
}
