//! `cargo xtask image`: the container image of `deploy/Containerfile`, built with podman
//! or docker around the static binary of `cargo xtask dist`.

use std::process::Command;

use anyhow::{Result, bail};

use crate::{Workspace, checked};

/// The container engines tried, in order.
const ENGINES: &[&str] = &["podman", "docker"];

impl Workspace {
    /// Builds the static binary and the image `tag` (default `blockprobe:VERSION`) from
    /// it; fails, saying so, when neither podman nor docker works here.
    pub fn image(&self, tag: Option<&str>) -> Result<()> {
        let Some(engine) = ENGINES.iter().copied().find(|e| works(e)) else {
            bail!(
                "neither podman nor docker can build images here (tried `podman info`, `docker info`); \
                 `cargo xtask dist` makes the tarball, whose directory is the build context of \
                 deploy/Containerfile on any machine that has one"
            );
        };
        let dist = self.dist()?;
        let tag = tag.map_or_else(
            || format!("blockprobe:{}", env!("CARGO_PKG_VERSION")),
            str::to_owned,
        );
        checked(
            Command::new(engine)
                .args(["build", "-t", &tag, "-f"])
                .arg(self.root.join("deploy/Containerfile"))
                .arg(&dist.staging),
        )?;
        eprintln!("image: built {tag} with {engine}");
        Ok(())
    }
}

/// Whether container engine `engine` is installed and can reach its daemon or store.
fn works(engine: &str) -> bool {
    Command::new(engine)
        .arg("info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
