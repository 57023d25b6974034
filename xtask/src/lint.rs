//! `cargo xtask lint`: rustfmt, clippy for the host crates and clippy for the eBPF crate, the
//! checks `cargo xtask test` starts with. Needs no root: only the toolchain part of the set-up
//! runs (clippy on guard-userspace runs its build.rs, which builds the eBPF object, so
//! bpf-linker is still needed). Every check runs even after one fails.
use std::process::Command;

use anyhow::bail;

use crate::{
    build::{self, EBPF_TARGET},
    cmd,
    setup::{self, Env},
    workspace::Workspace,
};

pub fn run() -> anyhow::Result<()> {
    let env = setup::toolchain()?;
    let workspace = Workspace::load()?;
    let failed = check(&env, &workspace);
    if !failed.is_empty() {
        bail!("cargo xtask lint failed: {}", failed.join(", "));
    }
    println!("lint: ok");
    Ok(())
}

/// Runs every check in the workspace root; returns the names of those that failed.
pub fn check(env: &Env, workspace: &Workspace) -> Vec<&'static str> {
    let mut failed = Vec::new();
    for (name, mut command) in checks(env) {
        println!("lint: {name}");
        command.current_dir(&workspace.root);
        if let Err(err) = cmd::run_cargo(&mut command) {
            println!("lint: {name} FAILED: {err:#}");
            failed.push(name);
        }
    }
    failed
}

/// The checks, in the order CI runs them.
fn checks(env: &Env) -> Vec<(&'static str, Command)> {
    let mut fmt = Command::new("cargo");
    fmt.args(["fmt", "--all", "--", "--check"]);

    let mut host = env.host_cargo();
    host.args([
        "clippy",
        "--workspace",
        "--exclude",
        "guard-ebpf",
        "--all-targets",
    ])
    .args(["--", "-D", "warnings"]);

    let mut ebpf = env.ebpf_cargo();
    ebpf.args(["clippy", "-p", "guard-ebpf", "--target", EBPF_TARGET])
        .args(["-Z", "build-std=core", "--", "-D", "warnings"])
        .env("CARGO_ENCODED_RUSTFLAGS", build::ebpf_rustflags());

    vec![
        ("rustfmt", fmt),
        ("clippy (host crates)", host),
        ("clippy (guard-ebpf)", ebpf),
    ]
}
