//! `cargo xtask <verb>`: set-up, build, test and the lab, one module per verb.
//!
//! This crate must not depend on guard-userspace, guard-ebpf or guard-tests: building them
//! needs bpf-linker, which `setup` installs.
mod bench;
mod build;
mod cmd;
mod demo;
mod lint;
mod setup;
mod test;
mod vm;
mod vmtest;
mod workspace;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(bin_name = "cargo xtask", about = "guard's developer tasks")]
struct Cli {
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Subcommand)]
enum Verb {
    /// Check, and install what is missing: toolchain, rust-src, bpf-linker, bpffs, packages.
    Setup,
    /// Set up, then build the host crates and the debug eBPF object.
    Build(build::Options),
    /// rustfmt --check, clippy for the host crates and for the eBPF crate (no root needed).
    Lint,
    /// Set up, build, then fmt, clippy, unit and privileged tests, as CI runs them (root).
    Test(test::Options),
    /// Set up, build, then the attack lab: every attack without guard, then with `guardctl
    /// attach br-guest`, and the legitimate flows; fails unless guard stops every attack (root).
    Demo,
    /// Set up, build, then measure guard against an empty program, xdp-filter and nftables.
    Bench(bench::Options),
    /// Datapath checks inside VMs on Debian's 6.1 and 6.12 kernels, and a real guest
    /// attacking through a tap (root; qemu TCG).
    Vmtest(vm::VmtestArgs),
}

fn main() -> ExitCode {
    let result = match Cli::parse().verb {
        Verb::Setup => setup::run().map(drop),
        Verb::Build(options) => build::run(&options),
        Verb::Lint => lint::run(),
        Verb::Test(options) => test::run(&options),
        Verb::Demo => demo::run(),
        Verb::Bench(options) => bench::run(&options),
        Verb::Vmtest(args) => vmtest::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The chain on one line, without the backtrace anyhow's `Termination` would add when
        // RUST_BACKTRACE is set: every error here already names the command or file at fault.
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
