//! `guardctl status`.

use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::Args;
use guard::{
    pins::{self, Location},
    state::State,
};

use crate::{Cli, output};

#[derive(Args)]
pub struct StatusArgs {
    /// Only this bridge (default: every attached bridge in scope).
    pub bridge: Option<String>,
    /// Print JSON (an array of bridges).
    #[arg(long)]
    pub json: bool,
}

/// The attached bridges in the caller's scope (`--netns`, else the host's own namespace).
pub fn attached(cli: &Cli, bridge: Option<&str>) -> Result<Vec<Location>> {
    if let Some(b) = bridge {
        return Ok(vec![cli.location(b)]);
    }
    let root = std::path::Path::new(pins::BPFFS).join("guard");
    let scope = cli.netns.as_deref().unwrap_or(pins::HOST_SCOPE);
    Ok(pins::attached_bridges(&root)?
        .into_iter()
        .filter(|(s, _)| s == scope)
        .map(|(_, b)| cli.location(&b))
        .collect())
}

pub fn run(cli: &Cli, a: &StatusArgs) -> Result<ExitCode> {
    let mut views = Vec::new();
    for loc in attached(cli, a.bridge.as_deref())? {
        let state = State::load(&loc)
            .with_context(|| format!("reading the state of {:?}", loc.bridge))?
            .with_context(|| format!("bridge {:?} is not attached", loc.bridge))?;
        views.push((loc, state));
    }
    if a.json {
        let v: Vec<_> = views.iter().map(|(l, s)| output::status_of(l, s)).collect();
        output::print_json(&v)?;
    } else if views.is_empty() {
        println!("guard: no bridge attached");
    } else {
        for (l, s) in &views {
            print!("{}", output::describe(l, s));
        }
    }
    Ok(ExitCode::SUCCESS)
}
