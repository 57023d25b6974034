//! Builds guard-ebpf for the BPF target and leaves the object in `OUT_DIR`, where the library
//! embeds it (`include_bytes_aligned!`). The aya-template wiring, unchanged in substance.
use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

fn main() -> anyhow::Result<()> {
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("MetadataCommand::exec")?;
    let ebpf = packages
        .into_iter()
        .find(|p| p.name.as_str() == "guard-ebpf")
        .ok_or_else(|| anyhow!("guard-ebpf package not found"))?;
    let root = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    // `cargo xtask` sets GUARD_EBPF_TOOLCHAIN when the machine has no `nightly` toolchain (it
    // then uses stable): aya-build runs `rustup run <toolchain> cargo build ...` and defaults to
    // nightly. On stable it also sets RUSTC_BOOTSTRAP=1, which aya-build 0.2.0 reads from this
    // script's environment (adding `-Z build-std=core`) and its nested cargo inherits.
    println!("cargo:rerun-if-env-changed=GUARD_EBPF_TOOLCHAIN");
    println!("cargo:rerun-if-env-changed=RUSTC_BOOTSTRAP");
    let toolchain = std::env::var("GUARD_EBPF_TOOLCHAIN").ok();
    aya_build::build_ebpf(
        [aya_build::Package {
            name: ebpf.name.as_str(),
            root_dir: root.as_str(),
            ..Default::default()
        }],
        toolchain
            .as_deref()
            .filter(|name| !name.is_empty())
            .map_or_else(Toolchain::default, Toolchain::Custom),
    )
}
