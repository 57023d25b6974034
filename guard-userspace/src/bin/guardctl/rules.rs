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
    exception::{self, ExceptionSpec, parse_dport, parse_proto},
    policy::{self, Action, RuleArg, default_protected, parse_net},
    state::State,
};
use ipnet::IpNet;
use serde::Serialize;

use crate::{Cli, attach::discover, exit, output};

/// The selectors that turn an `--allow` into an exception: an allow scoped to a VM or a
/// port, for one protocol and destination port. Without any of them, `--allow` is a prefix
/// allow rule as before.
#[derive(Args, Clone, Default)]
struct Selectors {
    /// Only for the ports of this libvirt domain (resolved at every reconcile: a restarted
    /// or migrated VM gets its holes on its new tap).
    #[arg(long, value_name = "NAME", conflicts_with = "iface")]
    vm: Option<String>,
    /// Only for this bridge port (interface name, resolved at every reconcile).
    #[arg(long, value_name = "PORT")]
    iface: Option<String>,
    /// Only this IP protocol: tcp, udp, icmp, icmpv6, any, or a number.
    #[arg(long, value_name = "PROTO", value_parser = parse_proto)]
    proto: Option<u8>,
    /// Only this destination port (1-65535; needs --proto tcp or udp).
    #[arg(long, value_name = "PORT", value_parser = parse_dport)]
    dport: Option<u16>,
}

impl Selectors {
    fn any(&self) -> bool {
        self.vm.is_some() || self.iface.is_some() || self.proto.is_some() || self.dport.is_some()
    }

    /// The exceptions these selectors make of `allow` (usage errors name the argument).
    fn specs(&self, allow: &[RuleArg]) -> Result<Vec<ExceptionSpec>> {
        exception::specs_of(
            allow,
            self.vm.as_deref(),
            self.iface.as_deref(),
            self.proto.unwrap_or(0),
            self.dport.unwrap_or(0),
            "rules",
        )
        .map_err(|e| exit::Usage(e.to_string()).into())
    }
}

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
    /// safely, add an allow hole: it is in place before anything else changes. With --vm,
    /// --iface, --proto or --dport, each --allow is an exception instead: a hole for that VM
    /// or port (else every port), protocol and destination port only, e.g.
    /// `--allow 10.20.0.5/32 --vm backup01 --proto tcp --dport 3260`.
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
        #[command(flatten)]
        selectors: Selectors,
    },
    /// Remove prefixes in force (also from the configured and the discovered set), until
    /// `rules reset`. A prefix not in force is an error. With --vm, --iface, --proto or
    /// --dport: remove the exceptions with exactly these selectors instead.
    Del {
        bridge: String,
        #[arg(value_name = "CIDR", required = true, value_parser = parse_net)]
        prefixes: Vec<IpNet>,
        #[command(flatten)]
        selectors: Selectors,
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
    exceptions: Vec<output::ExceptionView>,
}

pub async fn run(cli: &Cli, a: &RulesArgs) -> Result<ExitCode> {
    match &a.command {
        RulesCommand::List { bridge, json } => list(cli, bridge, *json),
        RulesCommand::Add {
            bridge,
            protect,
            allow,
            replace,
            selectors,
        } if selectors.any() => add_scoped(cli, bridge, protect, allow, selectors).await,
        RulesCommand::Add {
            bridge,
            protect,
            allow,
            replace,
            ..
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
        RulesCommand::Del {
            bridge,
            prefixes,
            selectors,
        } if selectors.any() => del_scoped(cli, bridge, prefixes, selectors).await,
        RulesCommand::Del {
            bridge, prefixes, ..
        } => {
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

/// `rules add` with selectors: exceptions.
async fn add_scoped(
    cli: &Cli,
    bridge: &str,
    protect: &[RuleArg],
    allow: &[RuleArg],
    selectors: &Selectors,
) -> Result<ExitCode> {
    if !protect.is_empty() {
        return Err(exit::Usage(exception::ExceptionError::ProtectScoped.to_string()).into());
    }
    if allow.is_empty() {
        return Err(exit::Usage(
            "--vm, --iface, --proto and --dport need an --allow CIDR".to_owned(),
        )
        .into());
    }
    let specs = selectors.specs(allow)?;
    let code = change(cli, bridge, |s| {
        exception::add_exceptions(&mut s.edits, &specs);
        Ok(())
    })
    .await?;
    let state = State::load(&cli.location(bridge))?.unwrap_or_default();
    for v in output::exception_views(&state, None)
        .iter()
        .filter(|v| specs.iter().any(|s| s.net.to_string() == v.prefix))
    {
        println!("guard: {bridge}: in force: {}", output::exception_line(v));
    }
    Ok(code)
}

/// `rules del` with selectors: the exceptions with exactly these selectors.
async fn del_scoped(
    cli: &Cli,
    bridge: &str,
    prefixes: &[IpNet],
    selectors: &Selectors,
) -> Result<ExitCode> {
    let args: Vec<RuleArg> = prefixes
        .iter()
        .map(|n| RuleArg {
            net: *n,
            class: None,
        })
        .collect();
    let ids: Vec<_> = selectors
        .specs(&args)?
        .iter()
        .map(ExceptionSpec::id)
        .collect();
    change(cli, bridge, |s| {
        let in_force = exception::desired(&s.options, &s.edits);
        let configured = s.options.exceptions.clone();
        exception::del_exceptions(&mut s.edits, &configured, &in_force, &ids)
    })
    .await
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
    let maps = guard::maps::GuardMaps::open(&loc).ok();
    let exceptions = output::exception_views(&state, maps.as_ref());
    if json {
        output::print_json(&output::Schema::new(
            "rules",
            &RulesJson {
                bridge,
                rules,
                removed,
                exceptions,
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
        if !exceptions.is_empty() {
            println!("exceptions:");
            for e in &exceptions {
                println!("  {}", output::exception_line(e));
            }
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
    let before_exc: Vec<_> = g.state().exceptions.iter().map(|e| e.spec.id()).collect();
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
    let after_exc: Vec<_> = g.state().exceptions.iter().map(|e| e.spec.id()).collect();
    let exc_added = after_exc.iter().filter(|e| !before_exc.contains(e)).count();
    let exc_removed = before_exc.iter().filter(|e| !after_exc.contains(e)).count();
    if exc_added + exc_removed > 0 {
        println!("guard: {bridge}: {exc_added} exception(s) added, {exc_removed} removed");
    }
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
