//! `guardctl rules`: the policy of an attached bridge, changed live (no reattach, no window:
//! see `guard::policy::plan` for the order of the map writes).

use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{Args, Subcommand};
use guard::{
    attach::{Guard, embedded_object},
    discovery,
    policy::{parse_allow, parse_net, parse_protect},
};

use crate::{Cli, output};

#[derive(Args)]
pub struct RulesArgs {
    #[command(subcommand)]
    command: RulesCommand,
}

#[derive(Subcommand)]
enum RulesCommand {
    /// List the prefixes in force, with class, source and hits.
    List {
        bridge: String,
        #[arg(long)]
        json: bool,
    },
    /// Add protected or allowed prefixes. To narrow a protected range safely, add the allow
    /// hole: it is in place before anything else changes.
    Add {
        bridge: String,
        #[arg(long, value_name = "CIDR[=CLASS]")]
        protect: Vec<String>,
        #[arg(long, value_name = "CIDR[=CLASS]")]
        allow: Vec<String>,
    },
    /// Remove prefixes (also from the discovered default set).
    Del {
        bridge: String,
        #[arg(value_name = "CIDR", required = true)]
        prefixes: Vec<String>,
    },
}

pub async fn run(cli: &Cli, a: &RulesArgs) -> Result<ExitCode> {
    match &a.command {
        RulesCommand::List { bridge, json } => {
            let loc = cli.location(bridge);
            let counters = guard::stats::collect(&loc)
                .with_context(|| format!("reading the rules of {bridge:?}"))?;
            let state = guard::state::State::load(&loc)?.unwrap_or_default();
            if *json {
                output::print_json(&counters.rules)?;
            } else {
                println!(
                    "{:<28} {:<6} {:<14} {:<12} {:>10}",
                    "PREFIX", "ACTION", "CLASS", "SOURCE", "HITS"
                );
                for r in &counters.rules {
                    let source = parse_net(&r.prefix)
                        .ok()
                        .and_then(|n| state.policy.get(&n))
                        .map_or("", |s| s.source.as_str());
                    println!(
                        "{:<28} {:<6} {:<14} {:<12} {:>10}",
                        r.prefix, r.action, r.class, source, r.hits
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        RulesCommand::Add {
            bridge,
            protect,
            allow,
        } => {
            if protect.is_empty() && allow.is_empty() {
                anyhow::bail!("nothing to add: give --protect or --allow");
            }
            let mut new = Vec::new();
            for p in protect {
                new.push(parse_protect(p, "rules")?);
            }
            for p in allow {
                new.push(parse_allow(p, "rules")?);
            }
            change(cli, bridge, |o| {
                for r in new {
                    o.removed.retain(|n| *n != r.net);
                    o.added.retain(|x| x.net != r.net);
                    o.added.push(r);
                }
            })
            .await
        }
        RulesCommand::Del { bridge, prefixes } => {
            let mut nets = Vec::new();
            for p in prefixes {
                nets.push(parse_net(p)?);
            }
            change(cli, bridge, |o| {
                for n in nets {
                    o.added.retain(|x| x.net != n);
                    o.protect.retain(|x| x.net != n);
                    o.allow.retain(|x| x.net != n);
                    if !o.removed.contains(&n) {
                        o.removed.push(n);
                    }
                }
            })
            .await
        }
    }
}

async fn change(
    cli: &Cli,
    bridge: &str,
    edit: impl FnOnce(&mut guard::state::Options),
) -> Result<ExitCode> {
    let loc = cli.location(bridge);
    let mut g = Guard::adopt(&loc, embedded_object())
        .with_context(|| format!("opening bridge {bridge:?}"))?;
    let before = g.state.policy.clone();
    edit(&mut g.state.options);
    let handle = discovery::connect()?;
    let found = discovery::discover(&handle, bridge)
        .await
        .with_context(|| format!("discovering bridge {bridge:?}"))?;
    let changes = g
        .reconcile(&found)
        .with_context(|| format!("updating the policy of {bridge:?}"))?;
    let added = g
        .state
        .policy
        .rules
        .iter()
        .filter(|r| !before.rules.contains(r))
        .count();
    let removed = before
        .rules
        .iter()
        .filter(|r| !g.state.policy.rules.contains(r))
        .count();
    println!(
        "guard: {bridge}: {added} prefix(es) added, {removed} removed ({} map writes)",
        changes.rule_writes
    );
    Ok(ExitCode::SUCCESS)
}
