//! `guardctl detach`.

use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::Args;

use crate::Cli;

#[derive(Args)]
pub struct DetachArgs {
    /// The bridge to detach from.
    pub bridge: String,
}

pub fn run(cli: &Cli, a: &DetachArgs) -> Result<ExitCode> {
    let loc = cli.location(&a.bridge);
    let was =
        guard::attach::detach(&loc).with_context(|| format!("detaching bridge {:?}", a.bridge))?;
    if was {
        println!("guard: detached {} ({})", a.bridge, loc.scope());
    } else {
        println!("guard: {} was not attached ({})", a.bridge, loc.scope());
    }
    Ok(ExitCode::SUCCESS)
}
