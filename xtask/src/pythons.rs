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
//! 3.14 (with the libraries and uvloop) and 3.15 are fetched one after the other: every
//! test run needs 3.14, so failing to fetch it fails; only the full matrix needs 3.15
//! ("if it runs"), so failing to fetch it is a warning and its tests skip.
//!
//! The cache is [`blockprobe_pythons::cache_dir`]; interpreters are
//! `root/usr/bin/python3.X` in it. A stamp file lists what was unpacked: what it lists
//! (and runs) is not downloaded again.
//!
//! uvloop for pyenv's 3.11 and 3.13 comes from PyPI into `target/pyuvloop/3.X` (add it to
//! PYTHONPATH); the tests find it there.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};
use blockprobe_pythons::{cache_dir, sid_root};

use crate::{capture, checked};

/// The Debian suite the interpreters come from.
const SOURCE: &str = "deb [trusted=yes] http://deb.debian.org/debian sid main";
/// The interpreter every test run needs: fetched first, with [`SHARED`]; failing fails.
const REQUIRED: &str = "3.14";
/// The interpreter only the full matrix needs: fetched second; failing is a warning.
const OPTIONAL: &str = "3.15";
/// Both, in the stamp's order.
const MINORS: &[&str] = &[REQUIRED, OPTIONAL];
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

/// Debian's packages of interpreter `minor`.
fn minor_packages(minor: &str) -> Vec<String> {
    PER_MINOR.iter().map(|p| p.replace("{v}", minor)).collect()
}

/// What the stamp file holds once `minors` are unpacked (with [`SHARED`]).
fn stamp_text(minors: &[&str]) -> String {
    let mut packages: Vec<String> = MINORS
        .iter()
        .filter(|v| minors.contains(v))
        .flat_map(|v| minor_packages(v))
        .collect();
    packages.extend(SHARED.iter().map(|s| s.to_string()));
    format!("recipe {RECIPE}\n{}\n", packages.join("\n"))
}

/// The interpreters a stamp file says are unpacked.
fn stamped(stamp: &str) -> Vec<&'static str> {
    let mut lines = stamp.lines();
    if lines.next() != Some(format!("recipe {RECIPE}").as_str()) {
        return Vec::new();
    }
    let listed: BTreeSet<&str> = lines.collect();
    if !SHARED.iter().all(|p| listed.contains(p)) {
        return Vec::new();
    }
    MINORS
        .iter()
        .copied()
        .filter(|v| {
            minor_packages(v)
                .iter()
                .all(|p| listed.contains(p.as_str()))
        })
        .collect()
}

/// Fetches the interpreters into the cache unless they are there; returns what it did.
/// Fails only when 3.14 cannot be had.
pub fn ensure() -> Result<String> {
    let dir = cache_dir();
    let root = sid_root();
    let stamp = dir.join("stamp");
    let mut have: Vec<&str> = std::fs::read_to_string(&stamp)
        .map(|s| stamped(&s))
        .unwrap_or_default()
        .into_iter()
        .filter(|v| runs(&root, v).is_ok())
        .collect();
    let mut apt = SidApt {
        dir: dir.join("apt"),
        updated: false,
    };
    let mut done = Vec::new();
    if !have.contains(&REQUIRED) {
        let mut packages = minor_packages(REQUIRED);
        packages.extend(SHARED.iter().map(|s| s.to_string()));
        let debs = apt.download(&packages)?;
        // Unpack into a fresh root and move it into place: an interrupted run never looks
        // complete.
        let staging = dir.join("root.tmp");
        if staging.exists() {
            std::fs::remove_dir_all(&staging)?;
        }
        std::fs::create_dir_all(&staging)?;
        unpack(&debs, &staging)?;
        let _ = std::fs::remove_file(&stamp);
        if root.exists() {
            std::fs::remove_dir_all(&root)?;
        }
        std::fs::rename(&staging, &root)?;
        point_at_root(&root, REQUIRED)?;
        runs(&root, REQUIRED)?;
        have = vec![REQUIRED];
        std::fs::write(&stamp, stamp_text(&have))?;
        done.push(format!("unpacked {} packages", packages.len()));
    }
    if !have.contains(&OPTIONAL) {
        let added = apt.download(&minor_packages(OPTIONAL)).and_then(|debs| {
            unpack(&debs, &root)?;
            point_at_root(&root, OPTIONAL)?;
            runs(&root, OPTIONAL)
        });
        match added {
            Ok(_) => {
                have.push(OPTIONAL);
                std::fs::write(&stamp, stamp_text(&have))?;
                done.push(format!("added {OPTIONAL}"));
            }
            Err(err) => eprintln!(
                "setup: warning: no Python {OPTIONAL} from Debian sid ({err:#}): its tests \
                 skip unless the full matrix is asked for (`cargo xtask test --long`)"
            ),
        }
    }
    let versions: Vec<String> = have.iter().map(|v| runs(&root, v)).collect::<Result<_>>()?;
    if done.is_empty() {
        done.push("present".into());
    }
    Ok(format!(
        "{} in {}: {}",
        done.join(", "),
        root.display(),
        versions.join(", ")
    ))
}

/// Unpacks the packages `debs` into `root`.
fn unpack(debs: &[PathBuf], root: &Path) -> Result<()> {
    for deb in debs {
        checked(Command::new("dpkg-deb").arg("-x").arg(deb).arg(root))?;
    }
    Ok(())
}

/// Makes `python{minor}` in `root` use the unpacked loader and libraries.
fn point_at_root(root: &Path, minor: &str) -> Result<()> {
    use_glibc_of(root, &root.join(format!("usr/bin/python{minor}")))
}

/// Makes the program `binary` use the loader and libraries (glibc) unpacked in `root`.
pub fn use_glibc_of(root: &Path, binary: &Path) -> Result<()> {
    let lib = root.join("usr/lib/x86_64-linux-gnu");
    checked(
        Command::new("patchelf")
            .arg("--set-interpreter")
            .arg(lib.join("ld-linux-x86-64.so.2"))
            // DT_RPATH, not RUNPATH: it also applies to what extension modules load.
            .arg("--force-rpath")
            .arg("--set-rpath")
            .arg(&lib)
            .arg(binary),
    )
}

/// Runs interpreter `minor` once (asyncio imported; uvloop on 3.14); its version.
fn runs(root: &Path, minor: &str) -> Result<String> {
    let python = root.join(format!("usr/bin/python{minor}"));
    let imports = if minor == REQUIRED {
        "import asyncio, ssl, ctypes, uvloop"
    } else {
        "import asyncio, ssl, ctypes"
    };
    let code = format!("{imports}; import platform; print(platform.python_version())");
    let out = capture(Command::new(&python).args(["-c", &code]))
        .with_context(|| format!("{} does not run", python.display()))?;
    Ok(out.trim().to_owned())
}

/// Debian sid through a private apt configuration in `dir`, updated on first use.
struct SidApt {
    dir: PathBuf,
    updated: bool,
}

impl SidApt {
    /// Downloads `packages` into a fresh `debs` folder; their files, sorted.
    fn download(&mut self, packages: &[String]) -> Result<Vec<PathBuf>> {
        let debs = self.dir.join("debs");
        if !self.updated {
            crate::apt::ensure(&["patchelf"], "`cargo xtask pythons`")?;
            for sub in ["etc", "lists/partial", "cache/archives/partial", "debs"] {
                std::fs::create_dir_all(self.dir.join(sub))
                    .with_context(|| format!("cannot create {}", self.dir.join(sub).display()))?;
            }
            std::fs::write(self.dir.join("etc/sources.list"), format!("{SOURCE}\n"))?;
            checked(apt(&self.dir).args(["update", "-q"]))?;
            self.updated = true;
        }
        for old in std::fs::read_dir(&debs)? {
            std::fs::remove_file(old?.path())?;
        }
        checked(
            apt(&self.dir)
                .arg("download")
                .args(packages)
                .current_dir(&debs),
        )?;
        let mut files: Vec<PathBuf> = std::fs::read_dir(&debs)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        files.sort();
        Ok(files)
    }
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

/// The pyenv interpreters that get uvloop from PyPI (`target/pyuvloop/<minor>`): the
/// uvloop tests run there, by `uvloop.run` and by hand.
pub const UVLOOP_PYENV: [&str; 2] = ["3.11", "3.13"];

/// uvloop from PyPI for pyenv's `minor` (one of [`UVLOOP_PYENV`]) in
/// `target/pyuvloop/<minor>`, unless present.
pub fn ensure_uvloop(target: &Path, minor: &str) -> Result<String> {
    let id = format!("pyenv_{}", minor.replace('.', "_"));
    let dir = target.join("pyuvloop").join(minor);
    ensure_pypi(&id, &dir, &["uvloop"], &["uvloop"])
}

/// What the real-server tests run: FastAPI under gunicorn with uvicorn workers
/// (uvicorn's `standard` extra brings uvloop and httptools), and aiohttp.
const SERVER_PACKAGES: &[&str] = &["fastapi", "uvicorn[standard]", "gunicorn", "aiohttp"];
/// The modules that say [`SERVER_PACKAGES`] are installed.
const SERVER_MODULES: &[&str] = &[
    "fastapi",
    "uvicorn",
    "gunicorn",
    "aiohttp",
    "uvloop",
    "httptools",
];
/// The interpreters (matrix ids) the real-server tests run on, with their directories
/// under `target/pyservers`.
pub const SERVER_PYTHONS: &[(&str, &str)] = &[("pyenv_3_11", "3.11"), ("pyenv_3_13", "3.13")];

/// The real-server packages from PyPI for each of [`SERVER_PYTHONS`] in
/// `target/pyservers/3.X`, unless present.
pub fn ensure_servers(target: &Path) -> Result<String> {
    let mut done = Vec::new();
    for (id, dir) in SERVER_PYTHONS {
        let dir = target.join("pyservers").join(dir);
        done.push(ensure_pypi(id, &dir, SERVER_PACKAGES, SERVER_MODULES)?);
    }
    Ok(done.join("; "))
}

/// `packages` from PyPI (binary wheels only) for matrix interpreter `id` in `dir`,
/// unless each of `modules` is there already.
fn ensure_pypi(id: &str, dir: &Path, packages: &[&str], modules: &[&str]) -> Result<String> {
    if modules
        .iter()
        .all(|m| dir.join(m).join("__init__.py").is_file())
    {
        return Ok(format!("present in {}", dir.display()));
    }
    let python = blockprobe_pythons::by_id(id).path();
    if !python.is_file() {
        bail!(
            "{} not found: it is the interpreter of {}",
            python.display(),
            packages.join(", ")
        );
    }
    crate::pip_install(&python, dir, packages, &["--only-binary=:all:"])?;
    Ok(format!(
        "installed {} into {}",
        packages.join(", "),
        dir.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stamp_lists_each_interpreter_fetched() {
        assert_eq!(stamped(&stamp_text(&[REQUIRED])), [REQUIRED]);
        assert_eq!(stamped(&stamp_text(&[OPTIONAL, REQUIRED])), MINORS);
        // Written in one order whatever the order of fetching: the same as when both
        // were fetched together.
        assert!(stamp_text(MINORS).starts_with(
            "recipe 1\npython3.14-minimal\nlibpython3.14-minimal\nlibpython3.14-stdlib\n\
             python3.14\npython3.15-minimal\n"
        ));
        assert!(stamp_text(MINORS).ends_with("\npython3-uvloop\n"));
        assert!(stamped(&stamp_text(MINORS).replace("recipe 1", "recipe 0")).is_empty());
        assert!(stamped(&stamp_text(MINORS).replace("libc6\n", "")).is_empty());
        assert!(stamped("").is_empty());
    }
}
