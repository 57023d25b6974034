//! `cargo xtask demo`: the attack lab. Builds everything, builds a libvirt-like host from
//! namespaces (guests on `br-guest`, management and storage networks behind the host, a real
//! router), fires every attack of docs/threat-model.md without guard, attaches guard
//! with `guardctl attach br-guest` (no flags), fires them again, checks the legitimate flows,
//! prints both tables side by side and tears the lab down. Exits non-zero unless every attack
//! was stopped and every legitimate flow worked.
use std::process::Command;

use anyhow::Context as _;

use crate::{build, cmd, setup};

pub fn run() -> anyhow::Result<()> {
    if !setup::is_root() {
        anyhow::bail!(
            "cargo xtask demo needs root: the lab creates network namespaces, bridges and veths \
             and attaches XDP programs. Run it as root (e.g. `sudo -E cargo xtask demo`)."
        );
    }
    let env = setup::run()?;
    let built = build::build(&env, true)?;
    let bin = built.workspace.target_dir.join("release");
    let mut lab = Command::new(bin.join("guard-lab"));
    lab.arg("demo").env("GUARDCTL", bin.join("guardctl"));
    cmd::run(&mut lab).context("the attack lab (guard-lab demo)")
}
