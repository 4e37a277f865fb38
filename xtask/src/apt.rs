//! Installing Debian packages the tasks need, only when missing.

use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};

/// Makes sure the Debian `packages` are installed (for `why`); returns what it did.
pub fn ensure(packages: &[&str], why: &str) -> Result<String> {
    let missing = missing(packages)?;
    if missing.is_empty() {
        return Ok(format!("present ({})", packages.join(", ")));
    }
    if !crate::is_root() {
        bail!(
            "Debian packages missing for {why}: {0}. Installing them needs root: run \
             `apt-get update && apt-get install -y --no-install-recommends {0}` as root, \
             or run xtask as root",
            missing.join(" ")
        );
    }
    let apt = |args: &[&str]| -> Result<()> {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(std::io::stderr())
            .status()
            .context("running apt-get")?;
        if !status.success() {
            bail!("`apt-get {}` failed ({status})", args.join(" "));
        }
        Ok(())
    };
    apt(&["update", "-q"])?;
    let mut install = vec!["install", "-y", "-q", "--no-install-recommends"];
    install.extend(missing.iter().map(String::as_str));
    apt(&install)?;
    let still = self::missing(packages)?;
    if !still.is_empty() {
        bail!("still missing after apt-get install: {}", still.join(" "));
    }
    Ok(format!("installed {}", missing.join(" ")))
}

/// The `packages` that dpkg does not list as installed.
pub fn missing(packages: &[&str]) -> Result<Vec<String>> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${db:Status-Status}\\n"])
        .args(packages)
        .stderr(Stdio::null())
        .output()
        .context("dpkg-query not found: this setup supports Debian (bookworm) machines")?;
    // dpkg-query exits 1 when some package is unknown; the output still lists the others.
    let listed = String::from_utf8_lossy(&out.stdout);
    Ok(packages
        .iter()
        .filter(|pkg| {
            !listed.lines().any(|l| {
                let mut it = l.split_whitespace();
                it.next()
                    .is_some_and(|name| name == **pkg || name.starts_with(&format!("{pkg}:")))
                    && it.next() == Some("installed")
            })
        })
        .map(|pkg| (*pkg).to_string())
        .collect())
}
