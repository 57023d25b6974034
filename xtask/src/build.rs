//! `cargo xtask build [--release]`: the host crates (which embed the release eBPF object
//! through guard-userspace/build.rs) and the debug eBPF object the datapath tests also load.
use std::{ffi::OsString, path::PathBuf, time::Instant};

use anyhow::{Context as _, bail};

use crate::{cmd, setup, workspace::Workspace};

pub const EBPF_TARGET: &str = "bpfel-unknown-none";

/// Tells test processes where the debug eBPF object is (an absolute path).
pub const DEBUG_OBJECT_ENV: &str = "GUARD_EBPF_DEBUG_OBJECT";

#[derive(clap::Args)]
pub struct Options {
    /// Build the host crates with the release profile (the embedded eBPF object is always
    /// a release build; the separate debug object is always built).
    #[arg(long)]
    release: bool,
}

pub struct Built {
    pub workspace: Workspace,
    /// `target/bpfel-unknown-none/debug/guard`, absolute.
    pub debug_object: PathBuf,
}

pub fn run(options: &Options) -> anyhow::Result<()> {
    let env = setup::run()?;
    build(&env, options.release)?;
    Ok(())
}

/// The flags aya-build 0.2.0 gives the eBPF build (`build_ebpf`), so the debug object is built
/// the way the embedded release one is: the target arch for aya-ebpf's cfgs, and BTF
/// (../shared/docs/toolchain.md: BTF needs both `-C debuginfo=2` and `--btf`).
pub fn ebpf_rustflags() -> OsString {
    let arch = std::env::consts::ARCH;
    OsString::from(
        [
            format!("--cfg=bpf_target_arch=\"{arch}\""),
            "-Cdebuginfo=2".to_owned(),
            "-Clink-arg=--btf".to_owned(),
        ]
        .join("\x1f"),
    )
}

pub fn build(env: &setup::Env, release: bool) -> anyhow::Result<Built> {
    let start = Instant::now();
    let workspace = Workspace::load()?;

    let mut host = env.host_cargo();
    host.current_dir(&workspace.root)
        .args(["build", "--workspace", "--exclude", "guard-ebpf"]);
    if release {
        host.arg("--release");
    }
    cmd::run_cargo(&mut host).context(
        "building the host crates (guard-userspace/build.rs builds the release eBPF object)",
    )?;

    let mut ebpf = env.ebpf_cargo();
    ebpf.current_dir(&workspace.root)
        .args([
            "build",
            "-p",
            "guard-ebpf",
            "--bins",
            "--target",
            EBPF_TARGET,
        ])
        .args(["-Z", "build-std=core"])
        .env("CARGO_ENCODED_RUSTFLAGS", ebpf_rustflags());
    cmd::run(&mut ebpf).context("building the debug eBPF object")?;

    let debug_object = workspace
        .target_dir
        .join(EBPF_TARGET)
        .join("debug")
        .join("guard");
    if !debug_object.is_file() {
        bail!(
            "the eBPF build succeeded but {} is not there",
            debug_object.display()
        );
    }
    println!(
        "build: done in {:.1}s; debug eBPF object {}",
        start.elapsed().as_secs_f64(),
        debug_object.display()
    );
    Ok(Built {
        workspace,
        debug_object,
    })
}
