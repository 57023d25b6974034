//! `guardctl status`: a health gate as well as a report. Every port the bridge has now is
//! listed, hooked or not; the exit code is the worst health over the bridges shown (0 every
//! port guarded and enforcing, 2 some only monitor, 3 one is unguarded or the bridge is not
//! attached).

use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::Args;
use guard::{
    pins::{self, Location},
    state::State,
};
use serde::Serialize;

use crate::{
    Cli,
    output::{self, Health, StatusView},
};

#[derive(Args)]
pub struct StatusArgs {
    /// Only this bridge (default: every attached bridge in scope). A bridge named here that
    /// is not attached is reported as unguarded.
    pub bridge: Option<String>,
    /// Print JSON (`guardctl.status.v1`, docs/cli.md).
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

#[derive(Serialize)]
struct StatusJson<'a> {
    health: Health,
    exit_status: u8,
    bridges: &'a [StatusView],
}

pub async fn run(cli: &Cli, a: &StatusArgs) -> Result<ExitCode> {
    let mut views = Vec::new();
    for loc in attached(cli, a.bridge.as_deref())? {
        let state =
            State::load(&loc).with_context(|| format!("reading the state of {:?}", loc.bridge))?;
        views.push(output::status_of(&loc, state.as_ref(), None).await);
    }
    // Nothing attached is nothing guarded.
    let health = views
        .iter()
        .map(|v| v.health)
        .max()
        .unwrap_or(Health::Unguarded);
    if a.json {
        output::print_json(&output::Schema::new(
            "status",
            &StatusJson {
                health,
                exit_status: health.exit_code(),
                bridges: &views,
            },
        ))?;
    } else if views.is_empty() {
        println!(
            "guard: no bridge attached ({})",
            cli.netns.as_deref().unwrap_or(pins::HOST_SCOPE)
        );
    } else {
        for v in &views {
            print!("{}", output::describe(v));
        }
    }
    Ok(ExitCode::from(health.exit_code()))
}
