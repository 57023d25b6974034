//! `guardctl detach`.

use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::Args;

use crate::Cli;

#[derive(Args)]
pub struct DetachArgs {
    /// The bridge to detach from. An agent following it (`guardctl run`) is stopped first.
    pub bridge: String,
}

pub fn run(cli: &Cli, a: &DetachArgs) -> Result<ExitCode> {
    let loc = cli.location(&a.bridge);
    let done =
        guard::attach::detach(&loc).with_context(|| format!("detaching bridge {:?}", a.bridge))?;
    match done.agent {
        Some((pid, true)) => println!("guard: stopped the agent of {} (pid {pid})", a.bridge),
        Some((pid, false)) => println!(
            "guard: the agent of {} (pid {pid}) did not exit within {:?}; it exits when it \
             next wakes up and finds the bridge detached",
            a.bridge,
            guard::attach::AGENT_EXIT_TIMEOUT
        ),
        None => {}
    }
    if done.was_attached {
        println!("guard: detached {} ({})", a.bridge, loc.scope());
    } else {
        println!("guard: {} was not attached ({})", a.bridge, loc.scope());
    }
    Ok(ExitCode::SUCCESS)
}
