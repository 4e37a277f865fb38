//! `cargo xtask pythons`: the test interpreters the host does not have, fetched without
//! touching the system.
//!
//! CPython 3.14 and 3.15 come from Debian sid: a private apt configuration (its own
//! sources list, package lists and cache, all under the cache folder, no dpkg status)
//! downloads the interpreter packages, sid's glibc and the few libraries they need;
//! `dpkg-deb -x` unpacks them into one root; `patchelf` points each `python3.X` at the
//! unpacked loader and libraries, so `/proc/PID/exe` is python itself and it starts
//! children normally. sid's `python3-uvloop` (for 3.14) comes along.
//!
//! The cache is `$BLOCKPROBE_PYTHONS`, else `$XDG_CACHE_HOME/blockprobe/pythons`, else
//! `~/.cache/blockprobe/pythons`; interpreters are `root/usr/bin/python3.X` in it. A
//! stamp file records what was unpacked: when it matches, nothing is downloaded.
//!
//! uvloop for pyenv's 3.11 comes from PyPI into `target/pyuvloop/3.11` (add it to
//! PYTHONPATH); the tests find it there.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::{capture, checked};

/// The Debian suite the interpreters come from.
const SOURCE: &str = "deb [trusted=yes] http://deb.debian.org/debian sid main";
/// The interpreters fetched (minor versions).
pub const MINORS: &[&str] = &["3.14", "3.15"];
/// Per interpreter: Debian's packages for it.
const PER_MINOR: &[&str] = &[
    "python{v}-minimal",
    "libpython{v}-minimal",
    "libpython{v}-stdlib",
    "python{v}",
];
/// What the interpreters link to, from sid (the host's glibc is older than they need),
/// and uvloop (built for sid's default python3, 3.14) with libuv.
const SHARED: &[&str] = &[
    "libc6",
    "libgcc-s1",
    "libexpat1",
    "zlib1g",
    "libssl3t64",
    "libffi8",
    "libzstd1",
    "libbz2-1.0",
    "liblzma5",
    "libuuid1",
    "libsqlite3-0",
    "libuv1t64",
    "python3-uvloop",
];
/// Bump to make every cache refetch (e.g. when the recipe changes).
const RECIPE: u32 = 1;
/// The interpreter that installs uvloop from PyPI for 3.11.
const UVLOOP_311: &str = "/root/.pyenv/versions/3.11.7/bin/python3.11";

/// The cache folder.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("BLOCKPROBE_PYTHONS") {
        return dir.into();
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
            PathBuf::from(home).join(".cache")
        });
    base.join("blockprobe/pythons")
}

/// The full package list, in order.
fn packages() -> Vec<String> {
    let mut all: Vec<String> = MINORS
        .iter()
        .flat_map(|v| PER_MINOR.iter().map(move |p| p.replace("{v}", v)))
        .collect();
    all.extend(SHARED.iter().map(|s| s.to_string()));
    all
}

/// What the stamp file holds once `root` is complete.
fn stamp_text(packages: &[String]) -> String {
    format!("recipe {RECIPE}\n{}\n", packages.join("\n"))
}

/// Fetches the interpreters into the cache unless they are there; returns what it did.
pub fn ensure() -> Result<String> {
    let dir = cache_dir();
    let root = dir.join("root");
    let stamp = dir.join("stamp");
    let packages = packages();
    let want = stamp_text(&packages);
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == want) && all_run(&root).is_ok() {
        return Ok(format!("present in {}", root.display()));
    }
    crate::apt::ensure(&["patchelf"], "`cargo xtask pythons`")?;
    let apt_dir = dir.join("apt");
    for sub in ["etc", "lists/partial", "cache/archives/partial", "debs"] {
        std::fs::create_dir_all(apt_dir.join(sub))
            .with_context(|| format!("cannot create {}", apt_dir.join(sub).display()))?;
    }
    std::fs::write(apt_dir.join("etc/sources.list"), format!("{SOURCE}\n"))?;
    checked(apt(&apt_dir).args(["update", "-q"]))?;
    let debs = apt_dir.join("debs");
    for old in std::fs::read_dir(&debs)? {
        std::fs::remove_file(old?.path())?;
    }
    checked(
        apt(&apt_dir)
            .arg("download")
            .args(&packages)
            .current_dir(&debs),
    )?;
    // Unpack into a fresh root and move it into place: an interrupted run never looks
    // complete.
    let staging = dir.join("root.tmp");
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    std::fs::create_dir_all(&staging)?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(&debs)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.sort();
    for deb in &files {
        checked(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&staging))?;
    }
    let _ = std::fs::remove_file(&stamp);
    if root.exists() {
        std::fs::remove_dir_all(&root)?;
    }
    std::fs::rename(&staging, &root)?;
    let lib = root.join("usr/lib/x86_64-linux-gnu");
    for v in MINORS {
        checked(
            Command::new("patchelf")
                .arg("--set-interpreter")
                .arg(lib.join("ld-linux-x86-64.so.2"))
                // DT_RPATH, not RUNPATH: it also applies to what extension modules load.
                .arg("--force-rpath")
                .arg("--set-rpath")
                .arg(&lib)
                .arg(root.join(format!("usr/bin/python{v}"))),
        )?;
    }
    let versions = all_run(&root)?;
    std::fs::write(&stamp, want)?;
    Ok(format!(
        "unpacked {} packages into {}: {versions}",
        packages.len(),
        root.display()
    ))
}

/// Runs every interpreter once (asyncio imported; uvloop on 3.14); their versions.
fn all_run(root: &Path) -> Result<String> {
    let mut versions = Vec::new();
    for v in MINORS {
        let python = root.join(format!("usr/bin/python{v}"));
        let imports = if *v == "3.14" {
            "import asyncio, ssl, ctypes, uvloop"
        } else {
            "import asyncio, ssl, ctypes"
        };
        let code = format!("{imports}; import platform; print(platform.python_version())");
        let out = capture(Command::new(&python).args(["-c", &code]))
            .with_context(|| format!("{} does not run", python.display()))?;
        versions.push(out.trim().to_owned());
    }
    Ok(versions.join(", "))
}

/// apt-get with a configuration that reads and writes only below `apt_dir`.
fn apt(apt_dir: &Path) -> Command {
    let mut cmd = Command::new("apt-get");
    let d = apt_dir.display();
    for opt in [
        format!("Dir::Etc::SourceList={d}/etc/sources.list"),
        "Dir::Etc::SourceParts=/dev/null".into(),
        format!("Dir::State::Lists={d}/lists"),
        format!("Dir::Cache={d}/cache"),
        "Dir::State::Status=/dev/null".into(),
        "Debug::NoLocking=1".into(),
        "APT::Sandbox::User=root".into(),
    ] {
        cmd.arg("-o").arg(opt);
    }
    cmd
}

/// uvloop from PyPI for pyenv's 3.11 in `target/pyuvloop/3.11`, unless present.
pub fn ensure_uvloop_311(target: &Path) -> Result<String> {
    let dir = target.join("pyuvloop/3.11");
    if dir.join("uvloop/__init__.py").is_file() {
        return Ok(format!("present in {}", dir.display()));
    }
    if !Path::new(UVLOOP_311).is_file() {
        bail!("{UVLOOP_311} not found: it is the uvloop test interpreter");
    }
    crate::pip_install(
        Path::new(UVLOOP_311),
        &dir,
        &["uvloop"],
        &["--only-binary=:all:"],
    )?;
    Ok(format!("installed uvloop into {}", dir.display()))
}
