//! `cargo xtask bench [--quick]`: guard against the floor (an empty program), a real peer
//! (xdp-filter's own object) and nftables, side by side in one run (`guard-bench`, method and
//! latest results in docs/bench.md). Writes `target/bench/guard-bench-<UTC>.json` and
//! `latest.json`. `cargo xtask test` runs the quick form as a smoke test.
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context as _;

use crate::{build, cmd, setup};

#[derive(clap::Args)]
pub struct Options {
    /// A smoke run: few repeats, a small policy, a short flood (under a minute).
    #[arg(long)]
    pub quick: bool,
    /// xdp-filter's `xdpfilt_alw_ip.o` to bench as the peer instead of Debian's (a newer
    /// xdp-filter; where its verdicts differ, the bench reports it).
    #[arg(long, value_name = "FILE")]
    pub peer: Option<PathBuf>,
}

pub fn run(options: &Options) -> anyhow::Result<()> {
    if !setup::is_root() {
        anyhow::bail!(
            "cargo xtask bench needs root: it loads XDP/TC programs and floods a namespace lab"
        );
    }
    let env = setup::run()?;
    // guard-bench runs in the workspace root: resolve a relative path from here.
    let peer = options
        .peer
        .as_deref()
        .map(|p| std::path::absolute(p).with_context(|| format!("--peer {}", p.display())))
        .transpose()?;
    let built = build::build(&env, true)?;
    bench(&built, options.quick, peer.as_deref())
}

/// Runs the built `guard-bench` (release), with `guardctl` beside it.
pub fn bench(built: &build::Built, quick: bool, peer: Option<&Path>) -> anyhow::Result<()> {
    let bin = built.workspace.target_dir.join("release");
    let mut bench = Command::new(bin.join("guard-bench"));
    bench
        .current_dir(&built.workspace.root)
        .env("GUARDCTL", bin.join("guardctl"))
        .arg("--out")
        .arg(built.workspace.target_dir.join("bench"));
    if quick {
        bench.arg("--quick");
    }
    if let Some(p) = peer {
        bench.arg("--peer").arg(p);
    }
    cmd::run(&mut bench).context("guard-bench")
}
