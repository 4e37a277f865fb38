//! The processes the benchmark starts: each in a process group of its own, killed whole
//! (a server py-spy started, blocksnoop's Austin), and none left running at the end.

use std::cell::RefCell;
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

/// A started process group: its leader, killed with the whole group on drop.
pub struct Group {
    pub child: Child,
}

impl Group {
    /// The group's id (its leader's pid).
    pub fn pgid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends `signal` to every process of the group.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own process group.
        unsafe { libc::kill(-self.pgid(), signal) };
    }
}

impl Drop for Group {
    /// Kills the group and waits (up to a few seconds) until none of it runs.
    fn drop(&mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
        let deadline = Instant::now() + Duration::from_secs(3);
        while !group_members(self.pgid()).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Every process group the benchmark started, to check at its end that none is left.
#[derive(Default)]
pub struct Started {
    groups: RefCell<Vec<i32>>,
}

impl Started {
    /// Spawns `cmd` as the leader of a new process group.
    pub fn spawn(&self, cmd: &mut Command) -> Result<Group> {
        let child = cmd
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {:?}", cmd.get_program()))?;
        self.groups.borrow_mut().push(child.id() as i32);
        Ok(Group { child })
    }

    /// Fails, after killing them, when processes the benchmark started are still
    /// running: a member of one of its groups, or any process running one of the
    /// benchmark's programs (`markers`: path prefixes of the program or of the script
    /// it runs), such as a process that left its group (blocksnoop starts Austin under
    /// `setsid` in some cases). The bench and its ancestors are not counted.
    pub fn check_none_left(&self, markers: &[String]) -> Result<()> {
        let groups = self.groups.borrow();
        // The bench itself and what started it (`cargo xtask bench --baseline PATH`)
        // name the same paths.
        let ancestors = ancestors();
        let mut left = Vec::new();
        for pid in all_pids() {
            if ancestors.contains(&pid) || is_zombie(pid) {
                continue;
            }
            let argv = argv(pid);
            let cmdline = argv.join(" ");
            let in_group = pgid(pid).is_some_and(|g| groups.contains(&g));
            // The program, or the script an interpreter runs.
            let ours =
                (argv.iter().take(2)).any(|a| markers.iter().any(|m| a.starts_with(m.as_str())));
            if in_group || ours {
                // SAFETY: kill(2); the process is one the benchmark started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                left.push(format!("{pid} ({cmdline})"));
            }
        }
        if !left.is_empty() {
            bail!(
                "processes the benchmark started were still running at its end (killed now): {}",
                left.join("; ")
            );
        }
        Ok(())
    }
}

/// The pids of the live processes of group `pgid` (zombies are gone but for their
/// parent's wait).
pub fn group_members(pgid: i32) -> Vec<i32> {
    all_pids()
        .filter(|&pid| self::pgid(pid) == Some(pgid) && !is_zombie(pid))
        .collect()
}

/// User + system CPU seconds of the processes of group `pgid` so far (those alive).
pub fn group_cpu_seconds(pgid: i32) -> f64 {
    group_members(pgid)
        .into_iter()
        .filter_map(stat_fields)
        .filter_map(|f| Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?))
        .map(|ticks| {
            // SAFETY: sysconf has no preconditions.
            ticks as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
        })
        .sum()
}

fn all_pids() -> impl Iterator<Item = i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
}

/// The fields of `/proc/PID/stat` after the command name (state first).
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = stat.rsplit_once(')')?.1;
    Some(after_comm.split_whitespace().map(str::to_owned).collect())
}

fn is_zombie(pid: i32) -> bool {
    stat_fields(pid).is_some_and(|f| f.first().is_some_and(|s| s == "Z"))
}

fn pgid(pid: i32) -> Option<i32> {
    stat_fields(pid)?.get(2)?.parse().ok()
}

fn argv(pid: i32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            (b.split(|&c| c == 0))
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// This process and its ancestors, up to init.
fn ancestors() -> Vec<i32> {
    let mut chain = vec![std::process::id() as i32];
    while let Some(parent) = stat_fields(*chain.last().expect("not empty"))
        .and_then(|f| f.get(1)?.parse::<i32>().ok())
        .filter(|&p| p > 0 && !chain.contains(&p))
    {
        chain.push(parent);
    }
    chain
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_is_killed_whole_and_checked() {
        let started = Started::default();
        // The shell's child stays in the group: killing the leader alone would leave it.
        let group = started
            .spawn(Command::new("sh").args(["-c", "sleep 1000 & wait"]))
            .unwrap();
        let pgid = group.pgid();
        let deadline = Instant::now() + Duration::from_secs(5);
        while group_members(pgid).len() < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(group_members(pgid).len(), 2);
        drop(group);
        started.check_none_left(&[]).unwrap();
        assert!(group_members(pgid).is_empty());
    }

    #[test]
    fn the_bench_and_its_ancestors_are_not_left_overs() {
        let me = std::env::current_exe().unwrap().display().to_string();
        Started::default().check_none_left(&[me]).unwrap();
        assert!(ancestors().len() >= 2);
    }

    #[test]
    fn what_is_left_is_killed_and_named() {
        let started = Started::default();
        let mut group = started.spawn(Command::new("sleep").arg("1001")).unwrap();
        let err = started.check_none_left(&[]).unwrap_err().to_string();
        assert!(err.contains("sleep 1001"), "{err}");
        let _ = group.child.wait();
    }
}
