//! `guardctl rules`: the policy of an attached bridge, changed live (no reattach, no window:
//! see `guard::policy::plan` for the order of the map writes).
//!
//! Every change goes through `Guard::update`: under the bridge's lock, on the state as it is
//! on disk, so the agent picks it up instead of overwriting it.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context as _, Result};
use clap::{Args, Subcommand};
use guard::{
    attach::{Guard, embedded_object},
    policy::{self, Action, RuleArg, default_protected, parse_net},
    state::State,
};
use ipnet::IpNet;
use serde::Serialize;

use crate::{Cli, attach::discover, exit, output};

#[derive(Args)]
#[command(after_help = "\
Live edits last: the agent's reconciles, a restart of `guardctl run` and a re-`attach` keep \
them, until `rules del`, `rules reset` or `detach`. `rules save` writes them into the \
configuration file (they then survive a reboot too).")]
pub struct RulesArgs {
    #[command(subcommand)]
    command: RulesCommand,
}

#[derive(Subcommand)]
enum RulesCommand {
    /// List the prefixes in force, with class, source, hits, and which are live edits.
    List {
        bridge: String,
        /// Print JSON (`guardctl.rules.v1`).
        #[arg(long)]
        json: bool,
    },
    /// Add protected or allowed prefixes, live and kept (see below). A prefix whose rule in
    /// force has the other action is refused unless --replace. To narrow a protected range
    /// safely, add an allow hole: it is in place before anything else changes.
    #[command(group(clap::ArgGroup::new("rules").required(true).multiple(true).args(["protect", "allow"])))]
    Add {
        bridge: String,
        /// Protect CIDR; without a class, a prefix already protected keeps its class.
        #[arg(long, value_name = "CIDR[=CLASS]")]
        protect: Vec<RuleArg>,
        #[arg(long, value_name = "CIDR[=CLASS]")]
        allow: Vec<RuleArg>,
        /// Override a rule in force with the other action (a discovered protected prefix
        /// turned into an allowed one, for instance).
        #[arg(long)]
        replace: bool,
    },
    /// Remove prefixes in force (also from the configured and the discovered set), until
    /// `rules reset`. A prefix not in force is an error.
    Del {
        bridge: String,
        #[arg(value_name = "CIDR", required = true, value_parser = parse_net)]
        prefixes: Vec<IpNet>,
    },
    /// Forget live edits (of the prefixes given, else all): the configured and discovered
    /// rules apply again.
    Reset {
        bridge: String,
        #[arg(value_name = "CIDR", value_parser = parse_net)]
        prefixes: Vec<IpNet>,
    },
    /// Write the bridge's options and live edits into its [[bridge]] table of the
    /// configuration file (the one it was attached with, or --config), keeping the rest of
    /// the file; the edits then become part of the configuration.
    Save {
        bridge: String,
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

#[derive(Serialize)]
struct RuleView {
    prefix: String,
    action: Action,
    class: String,
    source: String,
    rule_id: u32,
    hits: u64,
    live: bool,
}

#[derive(Serialize)]
struct RulesJson<'a> {
    bridge: &'a str,
    rules: Vec<RuleView>,
    removed: Vec<String>,
}

pub async fn run(cli: &Cli, a: &RulesArgs) -> Result<ExitCode> {
    match &a.command {
        RulesCommand::List { bridge, json } => list(cli, bridge, *json),
        RulesCommand::Add {
            bridge,
            protect,
            allow,
            replace,
        } => {
            let new: Vec<(RuleArg, Action)> = protect
                .iter()
                .map(|r| (r.clone(), Action::Deny))
                .chain(allow.iter().map(|r| (r.clone(), Action::Allow)))
                .collect();
            let mut added = Vec::new();
            let code = change(cli, bridge, |s| {
                added = policy::add_rules(&mut s.edits, &s.policy, &new, *replace)?;
                Ok(())
            })
            .await?;
            for r in &added {
                println!("guard: {bridge}: in force: {r}");
            }
            Ok(code)
        }
        RulesCommand::Del { bridge, prefixes } => {
            change(cli, bridge, |s| {
                policy::del_rules(&mut s.edits, &s.policy, prefixes)
            })
            .await
        }
        RulesCommand::Reset { bridge, prefixes } => {
            let mut n = 0;
            let code = change(cli, bridge, |s| {
                n = policy::reset_edits(&mut s.edits, prefixes)?;
                Ok(())
            })
            .await?;
            println!("guard: {bridge}: {n} live edit(s) dropped");
            Ok(code)
        }
        RulesCommand::Save { bridge, config } => save(cli, bridge, config.as_ref()).await,
    }
}

fn list(cli: &Cli, bridge: &str, json: bool) -> Result<ExitCode> {
    let loc = cli.location(bridge);
    let counters =
        guard::stats::collect(&loc).with_context(|| format!("reading the rules of {bridge:?}"))?;
    let state = State::load(&loc)?.unwrap_or_default();
    let rules: Vec<RuleView> = counters
        .rules
        .iter()
        .map(|r| {
            let spec = parse_net(&r.prefix).ok().and_then(|n| state.policy.get(&n));
            RuleView {
                prefix: r.prefix.clone(),
                action: r.action,
                class: r.class.clone(),
                source: spec.map_or_else(String::new, |s| s.source.clone()),
                rule_id: r.rule_id,
                hits: r.hits,
                live: spec.is_some_and(|s| state.edits.added.contains(s)),
            }
        })
        .collect();
    let removed: Vec<String> = state
        .edits
        .removed
        .iter()
        .map(ToString::to_string)
        .collect();
    if json {
        output::print_json(&output::Schema::new(
            "rules",
            &RulesJson {
                bridge,
                rules,
                removed,
            },
        ))?;
    } else {
        println!(
            "{:<28} {:<6} {:<14} {:<12} {:>10}",
            "PREFIX", "ACTION", "CLASS", "SOURCE", "HITS"
        );
        for r in &rules {
            let live = if r.live { "  (live)" } else { "" };
            println!(
                "{:<28} {:<6} {:<14} {:<12} {:>10}{live}",
                r.prefix, r.action, r.class, r.source, r.hits
            );
        }
        if !removed.is_empty() {
            println!("removed live: {}", removed.join(", "));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Applies `edit` to the bridge's state and brings the kernel in line, under the lock.
async fn change(
    cli: &Cli,
    bridge: &str,
    edit: impl FnOnce(&mut State) -> guard::Result<()>,
) -> Result<ExitCode> {
    let loc = cli.location(bridge);
    let found = discover(bridge).await?;
    let mut g = Guard::adopt(&loc, embedded_object())
        .with_context(|| format!("opening bridge {bridge:?}"))?;
    let before = g.state().policy.clone();
    let changes = g
        .update(&found, edit)
        .with_context(|| format!("changing the policy of {bridge:?}"))?;
    crate::attach::report_failures(bridge, &changes);
    let added = g
        .state()
        .policy
        .rules
        .iter()
        .filter(|r| !before.rules.contains(r))
        .count();
    let removed = before
        .rules
        .iter()
        .filter(|r| !g.state().policy.rules.contains(r))
        .count();
    println!(
        "guard: {bridge}: {added} prefix(es) added, {removed} removed ({} map writes); \
         live edits persist until `rules del`/`rules reset`/`detach` (`rules save` keeps them \
         in the configuration file)",
        changes.rule_writes
    );
    Ok(if changes.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(exit::ERROR)
    })
}

/// `rules save`: writes options + edits to the file, then makes them the bridge's options
/// (with no edits left), so the state and the file agree.
async fn save(cli: &Cli, bridge: &str, config: Option<&PathBuf>) -> Result<ExitCode> {
    let loc = cli.location(bridge);
    let found = discover(bridge).await?;
    let mut g = Guard::adopt(&loc, embedded_object())
        .with_context(|| format!("opening bridge {bridge:?}"))?;
    let mut written = None;
    let changes = g.update(&found, |s| {
        let path = config
            .cloned()
            .or_else(|| s.options.config_file.clone())
            .ok_or(guard::GuardError::NoConfigFile)?;
        let mut o = policy::options_with_edits(&s.options, &s.edits, &default_protected(&found));
        o.config_file = Some(path.clone());
        guard::config::save_bridge(&path, bridge, &o)?;
        s.options = o;
        s.edits = guard::options::Edits::default();
        written = Some(path);
        Ok(())
    })?;
    crate::attach::report_failures(bridge, &changes);
    if let Some(path) = written {
        println!(
            "guard: {bridge}: options and live edits written to {}",
            path.display()
        );
    }
    Ok(if changes.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(exit::ERROR)
    })
}
