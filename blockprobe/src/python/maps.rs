//! A process's memory map, `/proc/PID/maps`: the files it maps, and where. Read once per
//! look at a process and handed to each finder that searches its files.

use std::collections::HashSet;

use anyhow::Context as _;

/// One line of `/proc/PID/maps` that maps a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// First address of the mapping.
    pub start: u64,
    /// One past the last address of the mapping.
    pub end: u64,
    /// Offset in the file of the byte mapped at `start`.
    pub offset: u64,
    /// Major and minor number of the device holding the file.
    pub dev: (u64, u64),
    /// Inode number of the file.
    pub inode: u64,
    /// Path of the file as the process sees it (may end in ` (deleted)`).
    pub path: String,
}

/// The file-backed mappings of a process, in address order, as one read of its
/// `/proc/PID/maps` found them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Maps(Vec<Mapping>);

impl Maps {
    /// Reads the mappings of process `pid`: the kernel's list of them (it holds the
    /// process's map lock a moment), never a read of its memory or files, so it may be
    /// read on the event pump.
    pub fn read(pid: u32) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/maps"))
            .with_context(|| format!("cannot read /proc/{pid}/maps"))?;
        Ok(Self::parse(&text))
    }

    /// The file-backed mappings listed in `text`, the contents of a `/proc/PID/maps`;
    /// anonymous and pseudo (`[heap]`) mappings are left out.
    pub fn parse(text: &str) -> Self {
        Maps(text.lines().filter_map(parse_line).collect())
    }

    /// Every mapping.
    pub fn iter(&self) -> impl Iterator<Item = &Mapping> {
        self.0.iter()
    }

    /// Each mapped file once: its first mapping.
    pub fn files(&self) -> impl Iterator<Item = &Mapping> {
        let mut seen = HashSet::new();
        self.0.iter().filter(move |m| seen.insert(m.path.as_str()))
    }
}

/// Parses a `/proc/PID/maps` line; `None` for anonymous and pseudo mappings.
fn parse_line(line: &str) -> Option<Mapping> {
    let mut fields = line.splitn(6, ' ');
    let (start, end) = fields.next()?.split_once('-')?;
    let _perms = fields.next()?;
    let offset = fields.next()?;
    let (major, minor) = fields.next()?.split_once(':')?;
    let inode = fields.next()?;
    let path = fields.next()?.trim_start();
    if !path.starts_with('/') {
        return None;
    }
    Some(Mapping {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        offset: u64::from_str_radix(offset, 16).ok()?,
        dev: (
            u64::from_str_radix(major, 16).ok()?,
            u64::from_str_radix(minor, 16).ok()?,
        ),
        inode: inode.parse().ok()?,
        path: path.to_owned(),
    })
}

/// The last component of a mapped path, without a ` (deleted)` suffix.
pub fn file_name(path: &str) -> &str {
    let path = path.strip_suffix(" (deleted)").unwrap_or(path);
    path.rsplit('/').next().unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `/proc/PID/maps` of a python whose libpython was replaced on disk, with a module
    /// under a directory with spaces, the heap, an anonymous mapping and the stack.
    const MAPS: &str = "\
55d0c8a00000-55d0c8a01000 r--p 00000000 fe:01 1311000                    /root/.pyenv/versions/3.11.7/bin/python3.11
55d0c9e3b000-55d0ca0f6000 rw-p 00000000 00:00 0                          [heap]
7f0e2c400000-7f0e2c4a6000 r--p 00000000 fe:01 1312321                    /root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0 (deleted)
7f0e2c4a6000-7f0e2c6c4000 r-xp 000a6000 fe:01 1312321                    /root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0 (deleted)
7f0e2d000000-7f0e2d100000 rw-p 00000000 00:00 0 
7f0e2e000000-7f0e2e001000 r-xp 00002000 08:01 42                         /opt/my app/uvloop/loop.cpython-311-x86_64-linux-gnu.so
7ffd1000-7ffd2000 rw-p 00000000 00:00 0                                  [stack]
";

    #[test]
    fn parses_file_mappings_only() {
        let maps = Maps::parse(MAPS);
        let paths: Vec<&str> = maps.iter().map(|m| m.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/root/.pyenv/versions/3.11.7/bin/python3.11",
                "/root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0 (deleted)",
                "/root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0 (deleted)",
                "/opt/my app/uvloop/loop.cpython-311-x86_64-linux-gnu.so",
            ]
        );
        assert_eq!(
            maps.iter().nth(2),
            Some(&Mapping {
                start: 0x7f0e_2c4a_6000,
                end: 0x7f0e_2c6c_4000,
                offset: 0xa_6000,
                dev: (0xfe, 0x01),
                inode: 1_312_321,
                path: "/root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0 (deleted)".into(),
            })
        );
        let spaced = maps.iter().last().unwrap();
        assert_eq!(
            (spaced.dev, spaced.inode, spaced.offset),
            ((8, 1), 42, 0x2000)
        );
    }

    #[test]
    fn each_file_once() {
        let maps = Maps::parse(MAPS);
        let names: Vec<&str> = maps.files().map(|m| file_name(&m.path)).collect();
        assert_eq!(
            names,
            [
                "python3.11",
                "libpython3.11.so.1.0",
                "loop.cpython-311-x86_64-linux-gnu.so"
            ]
        );
        // The first mapping of a file stands for it.
        assert_eq!(maps.files().nth(1).map(|m| m.offset), Some(0));
    }

    #[test]
    fn malformed_lines_are_left_out() {
        let maps = Maps::parse("not a mapping\nzz-10 r--p 0 fe:01 1 /x\n10-20 r--p 0 fe01 1 /x\n");
        assert_eq!(maps, Maps::default());
    }

    #[test]
    fn reads_this_process() {
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let maps = Maps::read(std::process::id()).unwrap();
        assert!(maps.files().any(|m| std::path::Path::new(&m.path) == exe));
    }
}
