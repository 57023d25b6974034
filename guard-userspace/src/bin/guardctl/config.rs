//! `guardctl config check`.

use std::{path::PathBuf, process::ExitCode};

use clap::{Args, Subcommand};

#[derive(Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    command: ConfigCommand,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a configuration file; errors give <file:line:column>.
    Check {
        /// The TOML file.
        file: PathBuf,
    },
}

pub fn run(a: &ConfigArgs) -> ExitCode {
    match &a.command {
        ConfigCommand::Check { file } => match guard::config::load(file) {
            Ok(cfg) => {
                println!("{}: ok ({} bridge(s))", file.display(), cfg.bridges.len());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
    }
}
