//! Looking into a file system that is not mounted, without mounting it for the host: a
//! child process mounts it in a private mount namespace of its own, reads what is asked,
//! and exits; the host's mounts stay as they were.

use std::io::{Read as _, Write as _};
use std::path::Path;

use nix::mount::{MsFlags, mount};

/// Mounts a file system of type `fstype` at `target` in a child process's own mount
/// namespace, runs `look` on it there and returns what `look` returned, or why the
/// mount failed. Call it only while this process has a single thread (it forks).
pub fn look_into(
    fstype: &str,
    target: &Path,
    look: impl FnOnce(&Path) -> String,
) -> Result<String, String> {
    let (reader, writer) = nix::unistd::pipe().map_err(|e| format!("cannot make a pipe: {e}"))?;
    // SAFETY: the caller has one thread, so the child has a consistent copy of the
    // process; it mounts, writes to a pipe and leaves with `_exit`.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {
            drop(reader);
            let answer = match mount_privately(fstype, target) {
                Ok(()) => format!("+{}", look(target)),
                Err(errno) => format!("-mounting {fstype} failed: {}", errno.desc()),
            };
            let _ = std::fs::File::from(writer).write_all(answer.as_bytes());
            // SAFETY: _exit ends the child without running the parent's exit handlers.
            unsafe { libc::_exit(0) }
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            drop(writer);
            let mut answer = String::new();
            let read = std::fs::File::from(reader).read_to_string(&mut answer);
            let _ = nix::sys::wait::waitpid(child, None);
            read.map_err(|e| format!("cannot read the trial mount's answer: {e}"))?;
            match answer.split_at_checked(1) {
                Some(("+", looked)) => Ok(looked.to_owned()),
                Some(("-", why)) => Err(why.to_owned()),
                _ => Err(format!("the trial mount of {fstype} gave no answer")),
            }
        }
        Err(errno) => Err(format!("cannot fork a trial mount: {errno}")),
    }
}

/// Mounts `fstype` at `target` in a new mount namespace, privately: the mount does not
/// propagate back to the host's namespace.
fn mount_privately(fstype: &str, target: &Path) -> Result<(), nix::errno::Errno> {
    // SAFETY: unshare(2) with CLONE_NEWNS only moves this process to a new mount namespace.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        return Err(nix::errno::Errno::last());
    }
    // The nearest mount above `target` (EINVAL for a directory that is not a mount point,
    // as `/` is in a chroot) holds the new mount: made private, it shares nothing.
    let private = |at: &Path| {
        mount(
            None::<&str>,
            at,
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
    };
    target
        .ancestors()
        .map(private)
        .find(|made| *made != Err(nix::errno::Errno::EINVAL))
        .unwrap_or(Err(nix::errno::Errno::EINVAL))?;
    mount(
        Some(fstype),
        target,
        Some(fstype),
        MsFlags::empty(),
        None::<&str>,
    )
}

/// Whether a file system of type `fstype` is mounted at `target` (from this process's
/// mount table).
pub fn is_mounted(fstype: &str, target: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .is_ok_and(|table| mountinfo_has(&table, fstype, target))
}

/// Whether the `mountinfo` table has a file system of type `fstype` mounted at `target`.
fn mountinfo_has(mountinfo: &str, fstype: &str, target: &Path) -> bool {
    mountinfo.lines().any(|line| {
        let mount_point = line.split(' ').nth(4);
        let fs_type = line
            .split_once(" - ")
            .and_then(|(_, rest)| rest.split(' ').next());
        mount_point.is_some_and(|p| Path::new(p) == target) && fs_type == Some(fstype)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_mounts_in_mountinfo() {
        let table = "\
22 28 0:20 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 22 0:12 / /sys/kernel/tracing rw,nosuid,nodev,noexec,relatime shared:13 - tracefs tracefs rw
";
        let tracing = Path::new("/sys/kernel/tracing");
        assert!(mountinfo_has(table, "tracefs", tracing));
        assert!(!mountinfo_has(table, "sysfs", tracing));
        assert!(!mountinfo_has(
            table,
            "tracefs",
            Path::new("/sys/kernel/debug/tracing")
        ));
        assert!(!mountinfo_has(&table[..80], "tracefs", tracing));
    }

    /// As root, a file system mounted in the child is seen there and not here.
    #[test]
    fn looks_into_a_private_mount_and_leaves_none() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let looked = look_into("tmpfs", dir.path(), |target| {
            std::fs::write(target.join("mark"), b"x")
                .map_or_else(|e| e.to_string(), |()| "written".into())
        });
        assert_eq!(looked.as_deref(), Ok("written"));
        assert!(
            !dir.path().join("mark").exists(),
            "the mount leaked to the host"
        );
        assert!(!is_mounted("tmpfs", dir.path()));
    }
}
