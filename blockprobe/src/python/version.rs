//! A CPython version, as `PY_VERSION_HEX` or an interpreter's file name tells it.

use std::fmt;

/// A CPython version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Version {
    /// Major version (3).
    pub major: u8,
    /// Minor version: selects the memory layout.
    pub minor: u8,
    /// Patch level; `None` when only the file name told the version (before 3.11).
    pub patch: Option<u8>,
}

impl Version {
    /// Decodes a `PY_VERSION_HEX` value (`0xMMmmpp..`).
    pub fn from_hex(hex: u32) -> Self {
        let [major, minor, patch, _release] = hex.to_be_bytes();
        Self {
            major,
            minor,
            patch: Some(patch),
        }
    }

    /// Reads the version from a file name such as `python3.10` or `libpython3.9d.so.1.0`.
    pub fn from_file_name(name: &str) -> Option<Self> {
        let rest = name
            .strip_prefix("libpython")
            .or_else(|| name.strip_prefix("python"))?;
        let (major, rest) = rest.split_once('.')?;
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        Some(Self {
            major: major.parse().ok()?,
            minor: rest[..digits].parse().ok()?,
            patch: None,
        })
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)?;
        match self.patch {
            Some(patch) => write!(f, ".{patch}"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_hex_and_file_names() {
        let v = Version::from_hex(0x030b_07f0);
        assert_eq!((v.major, v.minor, v.patch), (3, 11, Some(7)));
        assert_eq!(v.to_string(), "3.11.7");
        let v = Version::from_file_name("libpython3.10.so.1.0").unwrap();
        assert_eq!((v.major, v.minor, v.patch), (3, 10, None));
        assert_eq!(v.to_string(), "3.10");
        assert_eq!(Version::from_file_name("python3.9").unwrap().minor, 9);
        assert_eq!(
            Version::from_file_name("libpython3.13t.so").unwrap().minor,
            13
        );
        assert_eq!(Version::from_file_name("python3"), None);
        assert_eq!(Version::from_file_name("pythonista"), None);
    }
}
