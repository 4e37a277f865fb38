//! Builds the kernel side (blockprobe-ebpf) for the BPF target with the nightly toolchain
//! and bpf-linker; the object lands in `OUT_DIR` and is embedded in the binary. Also
//! records what `blockprobe --version` says: the git commit and the build target.

use std::{path::Path, process::Command};

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    record_build_identity(crate_dir)?;
    let root = crate_dir
        .parent()
        .context("blockprobe crate has no parent directory")?
        .join("blockprobe-ebpf");
    let root = root.to_str().context("non-UTF-8 path to blockprobe-ebpf")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "blockprobe-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}

/// Sets `BLOCKPROBE_GIT_COMMIT` (the checkout's commit, `unknown` outside git) and
/// `BLOCKPROBE_BUILD_TARGET` (the target triple) for the crate, and has cargo run this
/// script again when the checkout moves to another commit.
fn record_build_identity(crate_dir: &Path) -> anyhow::Result<()> {
    let git = |args: &[&str]| -> Option<String> {
        let output = Command::new("git")
            .args(args)
            .current_dir(crate_dir)
            .output()
            .ok()?;
        let text = String::from_utf8(output.stdout).ok()?;
        (output.status.success() && !text.trim().is_empty()).then(|| text.trim().to_owned())
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    // HEAD names the branch; the branch's ref (loose or packed) names the commit.
    let mut watched = vec!["HEAD".to_owned(), "packed-refs".to_owned()];
    watched.extend(git(&["symbolic-ref", "-q", "HEAD"]));
    for name in watched {
        // Only files that exist: cargo reruns the script every time for a missing one.
        let path = git(&["rev-parse", "--path-format=absolute", "--git-path", &name]);
        if let Some(path) = path.filter(|p| Path::new(p).exists()) {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    let target = std::env::var("TARGET").context("cargo did not set TARGET")?;
    println!("cargo:rustc-env=BLOCKPROBE_GIT_COMMIT={commit}");
    println!("cargo:rustc-env=BLOCKPROBE_BUILD_TARGET={target}");
    Ok(())
}
