//! Opening the file behind a mapping of a process blockprobe does not trust, or a file
//! of its mount namespace by path.
//!
//! The path in `/proc/PID/maps` is only a hint: between reading it and opening it, the
//! process (or anyone) may rename a FIFO over it (an open that blocks for ever), an
//! absolute symlink (which `/proc/PID/root/...` would resolve against blockprobe's own
//! root), or another file. So the file is opened through `/proc/PID/map_files` (the very
//! file mapped, whatever its path says now); where that is refused (it needs
//! CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE), through the path, resolved inside the
//! process's root (`RESOLVE_IN_ROOT`), never following a last symlink. Either way it is
//! opened non-blocking and must be a regular file with the device and inode of the
//! mapping.

use std::fs::{File, Metadata};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::Path;

use anyhow::{Context as _, bail};
use nix::errno::Errno;
use nix::fcntl::{self, OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::{Mode, major, minor};

use super::maps::Mapping;

/// Flags of every open: read-only, and never blocking on a FIFO or a device.
const FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_CLOEXEC)
    .union(OFlag::O_NONBLOCK)
    .union(OFlag::O_NOCTTY);

/// Opens the file mapped by `m` in process `pid`, checked to be what is mapped.
pub fn open(pid: u32, m: &Mapping) -> anyhow::Result<File> {
    let image = format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end);
    let file = match fcntl::open(Path::new(&image), FLAGS, Mode::empty()) {
        Ok(fd) => File::from(fd),
        Err(Errno::EPERM | Errno::EACCES) if !m.path.ends_with(" (deleted)") => {
            open_in_root(Path::new(&format!("/proc/{pid}/root")), &m.path)?
        }
        Err(e) => return Err(e).with_context(|| format!("cannot open {image}")),
    };
    check_is_mapped(&file, m)?;
    Ok(file)
}

/// Opens file `path` (absolute, as process `pid` sees it) inside the process's root, as
/// a mapping's path is opened: never following a last symlink, never blocking, and only
/// a regular file.
pub fn open_path(pid: u32, path: &str) -> anyhow::Result<File> {
    let file = open_in_root(Path::new(&format!("/proc/{pid}/root")), path)?;
    check_regular(&file, path)?;
    Ok(file)
}

/// Opens `path` (absolute, as the process sees it) inside the root directory `root`:
/// symlinks on the way resolve inside it, a symlink as last component is refused.
fn open_in_root(root: &Path, path: &str) -> anyhow::Result<File> {
    let dir = fcntl::open(root, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty())
        .with_context(|| format!("cannot open {}", root.display()))?;
    let how = OpenHow::new()
        .flags(FLAGS | OFlag::O_NOFOLLOW)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = openat2(dir.as_fd(), path.trim_start_matches('/'), how)
        .with_context(|| format!("cannot open {path} in {}", root.display()))?;
    Ok(File::from(fd))
}

/// Fails unless `file` is a regular file with the device and inode of mapping `m`.
fn check_is_mapped(file: &File, m: &Mapping) -> anyhow::Result<()> {
    let meta = check_regular(file, &m.path)?;
    let dev = (major(meta.dev()), minor(meta.dev()));
    if (dev, meta.ino()) != (m.dev, m.inode) {
        bail!(
            "{} is now another file (device {:x}:{:x} inode {}) than the one the process maps (device {:x}:{:x} inode {})",
            m.path,
            dev.0,
            dev.1,
            meta.ino(),
            m.dev.0,
            m.dev.1,
            m.inode
        );
    }
    Ok(())
}

/// The metadata of `file` (opened as `path`); fails unless it is a regular file.
fn check_regular(file: &File, path: &str) -> anyhow::Result<Metadata> {
    let meta = file
        .metadata()
        .with_context(|| format!("cannot stat {path}"))?;
    if !meta.file_type().is_file() {
        let kind = match meta.file_type() {
            t if t.is_fifo() => "a FIFO",
            t if t.is_dir() => "a directory",
            t if t.is_char_device() || t.is_block_device() => "a device",
            t if t.is_socket() => "a socket",
            _ => "not a regular file",
        };
        bail!("{path} is now {kind}, not a file a process maps");
    }
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A mapping of `path` as `/proc/PID/maps` would show it, with `path`'s identity.
    fn mapping_of(path: &Path) -> Mapping {
        let meta = std::fs::metadata(path).unwrap();
        Mapping {
            start: 0,
            end: 0x1000,
            offset: 0,
            dev: (major(meta.dev()), minor(meta.dev())),
            inode: meta.ino(),
            path: path.to_string_lossy().into_owned(),
        }
    }

    #[test]
    fn opens_the_mapped_file_and_refuses_anything_else() {
        let dir = tempfile::tempdir().unwrap();
        let lib = dir.path().join("libpython3.11.so");
        std::fs::write(&lib, b"\x7fELF").unwrap();
        let mapped = mapping_of(&lib);
        let root = Path::new("/");
        let file = open_in_root(root, &mapped.path).unwrap();
        check_is_mapped(&file, &mapped).unwrap();

        // Another file renamed over it.
        let other = dir.path().join("other");
        std::fs::write(&other, b"\x7fELF").unwrap();
        std::fs::rename(&other, &lib).unwrap();
        let file = open_in_root(root, &mapped.path).unwrap();
        let err = check_is_mapped(&file, &mapped).unwrap_err().to_string();
        assert!(err.contains("is now another file"), "{err}");

        // A FIFO without a writer: opened at once, never read, refused.
        std::fs::remove_file(&lib).unwrap();
        nix::unistd::mkfifo(&lib, Mode::S_IRUSR | Mode::S_IWUSR).unwrap();
        let file = open_in_root(root, &mapped.path).unwrap();
        let err = check_is_mapped(&file, &mapped).unwrap_err().to_string();
        assert!(err.contains("is now a FIFO"), "{err}");

        // A symlink as last component is not followed.
        std::fs::remove_file(&lib).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", &lib).unwrap();
        let err = format!("{:#}", open_in_root(root, &mapped.path).unwrap_err());
        assert!(err.contains("symbolic links"), "{err}");
    }

    #[test]
    fn absolute_symlinks_resolve_inside_the_process_root() {
        // A process whose root is `root`: its /usr/lib is a symlink to /opt/lib (its
        // own), and blockprobe's /opt/lib must never be the one read.
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("opt/lib")).unwrap();
        std::fs::create_dir_all(root.path().join("usr")).unwrap();
        std::os::unix::fs::symlink("/opt/lib", root.path().join("usr/lib")).unwrap();
        let inside = root.path().join("opt/lib/libpython3.11.so");
        std::fs::write(&inside, b"inside").unwrap();
        let file = open_in_root(root.path(), "/usr/lib/libpython3.11.so").unwrap();
        let meta = file.metadata().unwrap();
        assert_eq!(meta.ino(), std::fs::metadata(&inside).unwrap().ino());
        // Dot-dots stop at the process's root too.
        let file = open_in_root(root.path(), "/../../opt/lib/libpython3.11.so").unwrap();
        assert_eq!(file.metadata().unwrap().ino(), meta.ino());
    }

    #[test]
    fn the_running_image_is_opened_whatever_the_path_is_now() {
        // This test's own executable, through map_files.
        let pid = std::process::id();
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let maps = super::super::maps::Maps::read(pid).unwrap();
        let m = maps
            .iter()
            .find(|m| Path::new(&m.path) == exe)
            .expect("the test binary is mapped");
        let file = super::open(pid, m).unwrap();
        assert!(file.metadata().unwrap().len() > 0);
    }
}
