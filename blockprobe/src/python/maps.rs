//! A process's memory map, `/proc/PID/maps`: the files it maps, and where.

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

/// Reads the file-backed mappings of process `pid`.
pub fn mappings(pid: u32) -> anyhow::Result<Vec<Mapping>> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .with_context(|| format!("cannot read /proc/{pid}/maps"))?;
    Ok(maps.lines().filter_map(parse_mapping).collect())
}

/// Parses a `/proc/PID/maps` line; `None` for anonymous and pseudo (`[heap]`) mappings.
fn parse_mapping(line: &str) -> Option<Mapping> {
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

    #[test]
    fn parses_maps_lines() {
        let line = "7f0e2c400000-7f0e2c4a6000 r--p 00001000 fe:01 1312321                    /root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0";
        assert_eq!(
            parse_mapping(line),
            Some(Mapping {
                start: 0x7f0e_2c40_0000,
                end: 0x7f0e_2c4a_6000,
                offset: 0x1000,
                dev: (0xfe, 0x01),
                inode: 1_312_321,
                path: "/root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0".into(),
            })
        );
        let spaced = "00400000-00401000 r-xp 00000000 08:01 42 /opt/my app/python3 (deleted)";
        let m = parse_mapping(spaced).unwrap();
        assert_eq!(m.path, "/opt/my app/python3 (deleted)");
        assert_eq!(file_name(&m.path), "python3");
        assert_eq!(
            parse_mapping("7ffd1000-7ffd2000 rw-p 00000000 00:00 0   [stack]"),
            None
        );
        assert_eq!(
            parse_mapping("7ffd1000-7ffd2000 rw-p 00000000 00:00 0"),
            None
        );
    }
}
