//! `cargo xtask <verb>`.

mod vm;

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
    /// Datapath checks inside VMs on Debian's 6.1 and 6.12 kernels, and a real guest
    /// attacking through a tap (root; qemu TCG).
    Vmtest(vm::VmtestArgs),
}

fn main() -> ExitCode {
    let result = match Cli::parse().verb {
        Verb::Vmtest(args) => vm::vmtest(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
