//! Who a report is about: per process command line, service label, cgroup and
//! container, and the host's kernel; and file names that are the same on every host.
//!
//! # Service label
//!
//! `--service NAME` labels every traced process. Without it the label is derived from
//! the command line ([`derive_service`]): the app of a known server runner
//! (`uvicorn app.main:app` → `app.main`), else the module of `python -m MOD`, else the
//! script's name (`python3 /srv/billing/worker.py` → `worker`; generic names such as
//! `main.py`, `app.py` or `__main__.py` take their directory's name:
//! `/srv/billing/main.py` → `billing`), else the program's name, else `comm`.
//!
//! # Stable file names
//!
//! `co_filename` is an absolute path that differs between hosts, virtualenvs and
//! Python versions. [`stable_file`] makes it relative to where Python imports it from:
//! `.../site-packages/aiohttp/web.py` → `aiohttp/web.py`,
//! `/usr/lib/python3.11/asyncio/events.py` → `asyncio/events.py`, and a first-party
//! `/srv/app-v2/api/db.py` with app root `/srv/app-v2` → `api/db.py`. Other paths are
//! kept as they are.

use foldhash::HashMap;
use std::sync::OnceLock;

use crate::aggregate::ProcessInfo;

/// How processes are labelled; set once per run by the command (see [`configure`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdentityOptions {
    /// `--service`: the service label of every process.
    pub service: Option<String>,
    /// `--redact-cmdline`: keep only argv[0] of command lines.
    pub redact_cmdline: bool,
}

static OPTIONS: OnceLock<IdentityOptions> = OnceLock::new();

/// Sets the identity options of this run (the first call wins; later ones are ignored).
pub fn configure(options: IdentityOptions) {
    let _ = OPTIONS.set(options);
}

fn options() -> IdentityOptions {
    OPTIONS.get().cloned().unwrap_or_default()
}

/// Longest service label kept (in characters).
const MAX_SERVICE_CHARS: usize = 64;

/// What blockprobe records about a traced process, read from `/proc/PID` now, with the
/// run's [`IdentityOptions`]. Missing pieces (the process may already be gone) are left
/// empty.
pub fn process_info(pid: u32, comm: String, python_version: String) -> ProcessInfo {
    let argv = read_cmdline(pid);
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map(|text| cgroup_path(&text))
        .unwrap_or_default();
    describe(&options(), pid, comm, python_version, &argv, &cwd, &cgroup)
}

/// [`process_info`] from what was read.
pub fn describe(
    options: &IdentityOptions,
    pid: u32,
    comm: String,
    python_version: String,
    argv: &[String],
    cwd: &str,
    cgroup: &str,
) -> ProcessInfo {
    let service = match &options.service {
        Some(s) => s.clone(),
        None => derive_service(argv, &comm),
    };
    let cmdline = if options.redact_cmdline {
        redact(argv)
    } else {
        argv.to_vec()
    };
    ProcessInfo {
        pid,
        ns_pid: None,
        comm,
        python_version,
        loop_threads: Vec::new(),
        cmdline,
        service,
        container_id: container_id(cgroup).unwrap_or_default(),
        cgroup: cgroup.to_owned(),
        app_root: app_root(argv, cwd),
        host: String::new(),
        // Traced from now on: not seen polling yet.
        polled: Some(false),
    }
}

/// The bytes of a command line kept (it is kept for each of up to 10,000 processes, and
/// a process may make its own megabytes long); a longer one ends in `…`.
const MAX_CMDLINE_BYTES: u64 = 4096;

/// The NUL-separated argv of `pid` (empty for kernel threads or a gone process), its
/// first [`MAX_CMDLINE_BYTES`].
fn read_cmdline(pid: u32) -> Vec<String> {
    use std::io::Read as _;
    let mut bytes = Vec::new();
    let read = std::fs::File::open(format!("/proc/{pid}/cmdline"))
        .and_then(|f| f.take(MAX_CMDLINE_BYTES + 1).read_to_end(&mut bytes));
    if read.is_err() {
        return Vec::new();
    }
    split_cmdline(&bytes)
}

/// Splits NUL-separated `bytes` into arguments; more than [`MAX_CMDLINE_BYTES`] are cut,
/// the last argument kept ending in `…`.
fn split_cmdline(bytes: &[u8]) -> Vec<String> {
    let cut = bytes.len() as u64 > MAX_CMDLINE_BYTES;
    let bytes = &bytes[..bytes.len().min(MAX_CMDLINE_BYTES as usize)];
    let bytes = bytes.strip_suffix(b"\0").unwrap_or(bytes);
    if bytes.is_empty() {
        return Vec::new();
    }
    let mut argv: Vec<String> = bytes
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    if cut && let Some(last) = argv.last_mut() {
        last.push('…');
    }
    argv
}

/// A redacted command line: argv[0] and how many arguments were dropped.
pub fn redact(argv: &[String]) -> Vec<String> {
    match argv.split_first() {
        None => Vec::new(),
        Some((program, [])) => vec![program.clone()],
        Some((program, rest)) => vec![
            program.clone(),
            format!(
                "<{} argument{} redacted>",
                rest.len(),
                if rest.len() == 1 { "" } else { "s" }
            ),
        ],
    }
}

/// Server and worker runners whose app argument names the service.
const RUNNERS: &[&str] = &[
    "uvicorn",
    "gunicorn",
    "hypercorn",
    "daphne",
    "granian",
    "celery",
    "dramatiq",
    "arq",
    "faust",
    "sanic",
    "fastapi",
    "flask",
    "huey_consumer",
    "rq",
    "taskiq",
];

/// Script names that say nothing about the service: their directory's name is used.
const GENERIC_SCRIPTS: &[&str] = &[
    "__main__",
    "main",
    "app",
    "application",
    "server",
    "run",
    "manage",
    "wsgi",
    "asgi",
    "start",
    "index",
    "service",
    "entrypoint",
];

/// The service label of a process with command line `argv` (see the module docs).
pub fn derive_service(argv: &[String], comm: &str) -> String {
    let label = derive(argv).unwrap_or_else(|| comm.to_owned());
    let label = if label.is_empty() {
        "unknown".to_owned()
    } else {
        label
    };
    label.chars().take(MAX_SERVICE_CHARS).collect()
}

fn derive(argv: &[String]) -> Option<String> {
    let (program, args) = argv.split_first()?;
    let name = base_name(program);
    if is_python(name) {
        let mut i = 0;
        while i < args.len() {
            let a = args[i].as_str();
            if a == "-m" {
                let module = args.get(i + 1)?;
                return Some(runner_app(module, &args[i + 2..]));
            }
            if let Some(module) = a.strip_prefix("-m").filter(|_| !a.starts_with("--")) {
                return Some(runner_app(module, &args[i + 1..]));
            }
            if a == "-c" || (a.starts_with("-c") && !a.starts_with("--")) {
                return None;
            }
            if a == "-" || a == "--" {
                i += 1;
                continue;
            }
            if matches!(a, "-W" | "-X" | "--check-hash-based-pycs") {
                i += 2;
                continue;
            }
            if a.starts_with('-') {
                i += 1;
                continue;
            }
            // The script.
            let stem = base_name(a).trim_end_matches(".py");
            if RUNNERS.contains(&stem) {
                return Some(runner_app(stem, &args[i + 1..]));
            }
            return Some(script_label(a));
        }
        return None;
    }
    let stem = name.trim_end_matches(".py");
    if RUNNERS.contains(&stem) {
        return Some(runner_app(stem, args));
    }
    if program.ends_with(".py") {
        return Some(script_label(program));
    }
    Some(stem.to_owned())
}

/// `python`, `python3`, `python3.11`, `python3.13t`, `pypy3`, `python3-dbg`.
fn is_python(name: &str) -> bool {
    let rest = name
        .strip_prefix("python")
        .or_else(|| name.strip_prefix("pypy"));
    rest.is_some_and(|r| {
        r.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
    })
}

fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The app a runner serves (`app.main:app` → `app.main`, `-A proj` → `proj`), else the
/// runner (or module) itself.
fn runner_app(runner: &str, args: &[String]) -> String {
    if RUNNERS.contains(&runner) {
        let mut it = args.iter().peekable();
        while let Some(a) = it.next() {
            if let Some(v) = a.strip_prefix("--app=") {
                return app_module(v);
            }
            if (a == "-A" || a == "--app")
                && let Some(v) = it.peek()
            {
                return app_module(v);
            }
            if !a.starts_with('-') && is_app_spec(a) {
                return app_module(a);
            }
        }
        for a in args {
            if !a.starts_with('-') && a.ends_with(".py") {
                return script_label(a);
            }
        }
    }
    runner.to_owned()
}

/// `module:attr` (not `host:port`).
fn is_app_spec(arg: &str) -> bool {
    let Some((module, attr)) = arg.split_once(':') else {
        return false;
    };
    let ident = |s: &str| {
        s.starts_with(|c: char| c.is_alphabetic() || c == '_')
            && s.chars()
                .all(|c| c.is_alphanumeric() || c == '_' || c == '.')
    };
    ident(module) && (attr.is_empty() || attr.starts_with(|c: char| c.is_alphabetic() || c == '_'))
}

fn app_module(spec: &str) -> String {
    spec.split(':').next().unwrap_or(spec).to_owned()
}

/// A script's label: its name without `.py`, or its directory's name for generic names.
fn script_label(path: &str) -> String {
    let path = path.trim_end_matches('/');
    let mut parts = path.rsplit('/');
    let file = parts.next().unwrap_or(path);
    let stem = file.strip_suffix(".py").unwrap_or(file);
    if GENERIC_SCRIPTS.contains(&stem)
        && let Some(dir) = parts.next().filter(|d| !d.is_empty() && *d != ".")
    {
        return dir.to_owned();
    }
    stem.to_owned()
}

/// The directory first-party files are relative to: the script's directory when the
/// process runs a script, else its working directory. Never `/`.
pub fn app_root(argv: &[String], cwd: &str) -> String {
    let root = script_path(argv)
        .map(|script| {
            let full = if script.starts_with('/') {
                script.to_owned()
            } else {
                format!("{}/{}", cwd.trim_end_matches('/'), script)
            };
            match full.rsplit_once('/') {
                Some((dir, _)) => dir.to_owned(),
                None => String::new(),
            }
        })
        .unwrap_or_else(|| cwd.to_owned());
    let root = normalize_dir(&root);
    if root == "/" { String::new() } else { root }
}

/// The script a Python command line runs, if any.
fn script_path(argv: &[String]) -> Option<&str> {
    let (program, args) = argv.split_first()?;
    if !is_python(base_name(program)) {
        return None;
    }
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        if a.starts_with("-m") || a.starts_with("-c") || a == "-" {
            return None;
        }
        if matches!(a, "-W" | "-X" | "--check-hash-based-pycs") {
            i += 2;
            continue;
        }
        if a.starts_with('-') {
            i += 1;
            continue;
        }
        return Some(a);
    }
    None
}

/// Removes `.` components, resolves `..` lexically and drops a trailing slash.
fn normalize_dir(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            p => out.push(p),
        }
    }
    format!("/{}", out.join("/"))
}

/// A file name that is the same on every host (see the module docs). `roots` are app
/// roots; the longest one that contains `file` is used.
pub fn stable_file<'a>(file: &'a str, roots: impl IntoIterator<Item = &'a str>) -> String {
    if file.is_empty() || file.starts_with('<') || !file.contains('/') {
        return file.to_owned();
    }
    let parts: Vec<&str> = file.split('/').collect();
    if let Some(i) = parts
        .iter()
        .rposition(|p| *p == "site-packages" || *p == "dist-packages")
        && i + 1 < parts.len()
    {
        return parts[i + 1..].join("/");
    }
    if let Some(i) = parts
        .windows(2)
        .rposition(|w| (w[0] == "lib" || w[0] == "lib64") && is_python_dir(w[1]))
        && i + 2 < parts.len()
    {
        return parts[i + 2..].join("/");
    }
    let best = roots
        .into_iter()
        .filter(|r| !r.is_empty() && *r != "/")
        .filter_map(|r| {
            let r = r.trim_end_matches('/');
            file.strip_prefix(r)
                .and_then(|rest| rest.strip_prefix('/'))
                .filter(|rest| !rest.is_empty())
                .map(|rest| (r.len(), rest))
        })
        .max_by_key(|(len, _)| *len);
    match best {
        Some((_, rest)) => rest.to_owned(),
        None => file.to_owned(),
    }
}

/// (App root, file) pairs remembered by [`StableFiles`] before it starts over.
const MAX_REMEMBERED_FILES: usize = 16 * 1024;

/// [`stable_file`] with a memory: a session sees the same few files in every stall.
#[derive(Debug, Default)]
pub struct StableFiles {
    by_root: HashMap<String, HashMap<String, String>>,
    remembered: usize,
}

impl StableFiles {
    /// The stable name of `file` in a process whose app root is `app_root`.
    pub fn get(&mut self, file: &str, app_root: &str) -> String {
        if let Some(stable) = self.by_root.get(app_root).and_then(|files| files.get(file)) {
            return stable.clone();
        }
        let stable = stable_file(file, [app_root]);
        if self.remembered >= MAX_REMEMBERED_FILES {
            self.by_root.clear();
            self.remembered = 0;
        }
        self.remembered += 1;
        (self.by_root.entry(app_root.to_owned()).or_default())
            .insert(file.to_owned(), stable.clone());
        stable
    }
}

fn is_python_dir(dir: &str) -> bool {
    dir.strip_prefix("python3.").is_some_and(|minor| {
        minor.starts_with(|c: char| c.is_ascii_digit())
            && minor.chars().all(|c| c.is_ascii_alphanumeric())
    })
}

/// The process's cgroup from `/proc/PID/cgroup`: the v2 path (`0::/…`), else the path of
/// the first v1 hierarchy.
pub fn cgroup_path(text: &str) -> String {
    let mut first = None;
    for line in text.lines() {
        let mut it = line.splitn(3, ':');
        let (Some(id), Some(_controllers), Some(path)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        if id == "0" {
            return path.to_owned();
        }
        first.get_or_insert(path);
    }
    first.unwrap_or_default().to_owned()
}

/// The container id in a cgroup path: a 64-hex-digit component, optionally wrapped as
/// `docker-<id>.scope`, `cri-containerd-<id>.scope`, `crio-<id>.scope`,
/// `libpod-<id>.scope` (the innermost one wins).
pub fn container_id(cgroup: &str) -> Option<String> {
    cgroup.rsplit('/').find_map(|part| {
        let part = part.strip_suffix(".scope").unwrap_or(part);
        let id = part.rsplit(['-', ':']).next().unwrap_or(part);
        (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| id.to_ascii_lowercase())
    })
}

/// The host name reports carry: `$BLOCKPROBE_HOST` when set (e.g. the node name in a
/// Kubernetes pod, whose own host name is the pod's), else the machine's host name.
pub fn host_name() -> String {
    match std::env::var("BLOCKPROBE_HOST") {
        Ok(host) if !host.trim().is_empty() => host.trim().to_owned(),
        _ => crate::report::local_hostname(),
    }
}

/// The running kernel's release (`uname -r`), empty if unknown.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn remembered_stable_files_are_per_app_root() {
        let mut files = StableFiles::default();
        for _ in 0..2 {
            assert_eq!(
                files.get("/srv/app/api/views.py", "/srv/app"),
                "api/views.py"
            );
            assert_eq!(
                files.get("/srv/app/api/views.py", "/srv"),
                "app/api/views.py"
            );
            assert_eq!(
                files.get("/srv/app/api/views.py", ""),
                "/srv/app/api/views.py"
            );
        }
        for i in 0..=MAX_REMEMBERED_FILES {
            files.get(&format!("/x/{i}.py"), "/x");
        }
        assert!(files.remembered <= MAX_REMEMBERED_FILES, "bounded");
        assert_eq!(files.get("/x/7.py", "/x"), "7.py");
    }

    #[test]
    fn services_from_command_lines() {
        let cases = [
            ("python3 /srv/billing/worker.py --port 80", "worker"),
            ("/usr/bin/python3.11 -u /srv/billing/main.py", "billing"),
            ("python3 app.py", "app"),
            ("python3 ./checkout/__main__.py", "checkout"),
            (
                "python -m uvicorn app.main:app --host 0.0.0.0 --port 8000",
                "app.main",
            ),
            (
                "python -m uvicorn --host 0.0.0.0:80 orders.api:create_app",
                "orders.api",
            ),
            (
                "/app/.venv/bin/python3 /app/.venv/bin/gunicorn -k uvicorn.workers.UvicornWorker shop.wsgi:application",
                "shop.wsgi",
            ),
            ("/app/.venv/bin/uvicorn payments:app", "payments"),
            ("celery -A proj worker -l info", "proj"),
            ("celery --app=tasks.celery worker", "tasks.celery"),
            ("python3 -m mypkg.server --debug", "mypkg.server"),
            ("python3 -mhttp.server 8000", "http.server"),
            ("python3 -X dev -W error script.py", "script"),
            ("uvicorn --reload", "uvicorn"),
            ("/usr/local/bin/my-daemon --x", "my-daemon"),
            ("pypy3 bench.py", "bench"),
        ];
        for (cmd, want) in cases {
            assert_eq!(derive_service(&argv(cmd), "comm"), want, "{cmd}");
        }
        assert_eq!(
            derive_service(&argv("python3 -c print(1)"), "python3"),
            "python3"
        );
        assert_eq!(derive_service(&argv("python3"), "python3"), "python3");
        assert_eq!(derive_service(&[], "kworker"), "kworker");
        assert_eq!(derive_service(&[], ""), "unknown");
        let long = format!("python3 /x/{}.py", "a".repeat(100));
        assert_eq!(
            derive_service(&argv(&long), "c").chars().count(),
            MAX_SERVICE_CHARS
        );
    }

    #[test]
    fn redaction_keeps_only_the_program() {
        assert_eq!(
            redact(&argv("python3 app.py --token s3cr3t")),
            ["python3", "<3 arguments redacted>"]
        );
        assert_eq!(
            redact(&argv("python3 x")),
            ["python3", "<1 argument redacted>"]
        );
        assert_eq!(redact(&argv("python3")), ["python3"]);
        assert!(redact(&[]).is_empty());
        let opts = IdentityOptions {
            service: None,
            redact_cmdline: true,
        };
        let p = describe(
            &opts,
            1,
            "python3".into(),
            "3.11.7".into(),
            &argv("python3 /srv/api/server.py --password hunter2"),
            "/",
            "",
        );
        assert_eq!(p.service, "api", "derived before redaction");
        assert!(!p.cmdline.join(" ").contains("hunter2"));
        let opts = IdentityOptions {
            service: Some("checkout".into()),
            redact_cmdline: false,
        };
        let p = describe(
            &opts,
            1,
            "python3".into(),
            "3.11.7".into(),
            &argv("python3 a.py"),
            "/",
            "",
        );
        assert_eq!(p.service, "checkout");
        assert_eq!(p.cmdline, ["python3", "a.py"]);
    }

    #[test]
    fn cmdline_bytes() {
        assert_eq!(
            split_cmdline(b"python3\0a b.py\0\0x\0"),
            ["python3", "a b.py", "", "x"]
        );
        assert!(split_cmdline(b"").is_empty());
        // A command line of megabytes: its first 4 KiB, the cut marked.
        let huge: Vec<u8> = [b"python3\0app.py\0".as_slice(), &[b'x'; 1 << 20]].concat();
        let argv = split_cmdline(&huge[..=MAX_CMDLINE_BYTES as usize]);
        assert_eq!(argv[..2], ["python3", "app.py"]);
        assert!(
            argv[2].ends_with('…') && argv[2].len() < 4096,
            "{}",
            argv[2].len()
        );
    }

    #[test]
    fn app_roots() {
        assert_eq!(app_root(&argv("python3 /srv/app/main.py"), "/"), "/srv/app");
        assert_eq!(
            app_root(&argv("python3 -u sub/../svc/x.py"), "/home/me/"),
            "/home/me/svc"
        );
        assert_eq!(app_root(&argv("python3 -m app"), "/srv/app"), "/srv/app");
        assert_eq!(app_root(&argv("uvicorn app:app"), "/code"), "/code");
        assert_eq!(app_root(&argv("python3 /x.py"), "/srv"), "");
        assert_eq!(app_root(&argv("uvicorn a:b"), "/"), "");
    }

    #[test]
    fn stable_files() {
        let roots = ["/srv/app-v2", "/srv", ""];
        let cases = [
            (
                "/app/.venv/lib/python3.12/site-packages/aiohttp/web.py",
                "aiohttp/web.py",
            ),
            (
                "/usr/lib/python3/dist-packages/yaml/reader.py",
                "yaml/reader.py",
            ),
            (
                "/usr/lib/python3.11/asyncio/base_events.py",
                "asyncio/base_events.py",
            ),
            (
                "/root/.pyenv/versions/3.13.0/lib/python3.13/threading.py",
                "threading.py",
            ),
            ("/srv/app-v2/api/db.py", "api/db.py"),
            ("/srv/other/x.py", "other/x.py"),
            ("/home/me/x.py", "/home/me/x.py"),
            (
                "<frozen importlib._bootstrap>",
                "<frozen importlib._bootstrap>",
            ),
            ("<string>", "<string>"),
            ("main.py", "main.py"),
            ("", ""),
            ("/srv/app-v2", "app-v2"),
        ];
        for (file, want) in cases {
            assert_eq!(stable_file(file, roots), want, "{file}");
        }
        // The same code on two hosts.
        assert_eq!(
            stable_file("/opt/a/venv/lib/python3.11/site-packages/x/y.py", []),
            stable_file("/usr/local/lib/python3.11/site-packages/x/y.py", [])
        );
        assert_eq!(
            stable_file("/srv/releases/41/handlers.py", ["/srv/releases/41"]),
            stable_file("/srv/releases/42/handlers.py", ["/srv/releases/42"])
        );
    }

    #[test]
    fn cgroups_and_containers() {
        let v2 = "0::/system.slice/docker-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.scope\n";
        let path = cgroup_path(v2);
        assert!(path.starts_with("/system.slice/docker-"), "{path}");
        assert_eq!(
            container_id(&path).as_deref(),
            Some("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
        );
        let k8s = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice/cri-containerd-ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef0123456789.scope";
        assert_eq!(
            container_id(k8s).as_deref(),
            Some("abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789")
        );
        let v1 = "12:pids:/docker/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n11:cpu:/x\n";
        assert_eq!(
            cgroup_path(v1),
            "/docker/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        );
        assert!(container_id(&cgroup_path(v1)).is_some());
        assert_eq!(
            container_id("/user.slice/user-0.slice/session-1.scope"),
            None
        );
        assert_eq!(cgroup_path(""), "");
    }

    #[test]
    fn this_process() {
        let me = std::process::id();
        let p = process_info(me, "test".into(), "3".into());
        assert!(!p.cmdline.is_empty());
        assert!(!p.service.is_empty());
        assert!(p.cgroup.starts_with('/'), "{:?}", p.cgroup);
        assert!(!kernel_release().is_empty());
    }
}
