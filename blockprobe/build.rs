//! Builds the kernel side (blockprobe-ebpf) for the BPF target with the nightly toolchain
//! and bpf-linker; the object lands in `OUT_DIR` and is embedded in the binary.

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
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
