//! `guardctl attach`.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context as _, Result};
use clap::Args;
use guard::{
    attach::{Changes, Guard, embedded_object},
    config,
    discovery::{self, Discovery},
    options::{Hook, Options},
    rule::{Action, RuleArg, parse_net},
};
use guard_common::Mac;
use ipnet::IpNet;

use crate::{Cli, exit, output};

#[derive(Args, Clone)]
pub struct AttachArgs {
    /// The guest bridge (e.g. br-guest).
    pub bridge: String,
    /// Protect CIDR (drop guest frames to it), with an optional class name (management,
    /// storage, or your own). Repeatable. Without any, guard protects every network and
    /// address the host holds outside the bridge (link-local and multicast excepted).
    #[arg(long, value_name = "CIDR[=CLASS]")]
    pub protect: Vec<RuleArg>,
    /// Let guests reach CIDR even inside a protected range (longest prefix wins).
    #[arg(long, value_name = "CIDR[=CLASS]")]
    pub allow: Vec<RuleArg>,
    /// Protect the discovered set as well as the --protect prefixes (the default when no
    /// --protect is given).
    #[arg(long)]
    pub discover: bool,
    /// Take CIDR out of the discovered set (repeatable).
    #[arg(long, value_name = "CIDR", value_parser = parse_net)]
    pub exclude: Vec<IpNet>,
    /// Read options for BRIDGE from this TOML file (flags add to it).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Hook: xdp (native; a port that refuses it falls back to generic XDP, then TCX, then
    /// tc, and says why), xdp-generic, tcx, or tc (a `cls_bpf` filter, for kernels before 6.6).
    #[arg(long, value_name = "HOOK")]
    pub hook: Option<Hook>,
    /// Do not hook the bridge device itself. By default a backstop on its TC ingress judges
    /// every frame the bridge passes up to the host, whatever its MAC, so a port that is not
    /// hooked yet, a changed bridge or port MAC, or a macvlan leave no gap.
    #[arg(long)]
    pub no_bridge_hook: bool,
    /// Judge by prefix rules only. By default what no rule decides is judged by the kernel's
    /// own route lookup: routed out of any interface but the bridge and the uplinks, or
    /// delivered to a host address not on the bridge, is dropped.
    #[arg(long)]
    pub no_route_check: bool,
    /// Let tunnel encapsulations (GRE, IPIP, SIT, VXLAN, GENEVE, ...) addressed to the host
    /// through; by default the host never decapsulates what a guest sends it.
    #[arg(long)]
    pub allow_tunnels: bool,
    /// Drop replies to flows the protected side started, too. By default a flow that the
    /// host or a host on a protected network starts toward a guest (a TCP SYN, a UDP
    /// datagram, an ICMP echo request, seen on the bridge's TC egress) has its replies let
    /// through; a flow a guest starts never is.
    #[arg(long)]
    pub no_replies: bool,
    /// Also treat UDP PORT as a tunnel port (repeatable; e.g. a FOU receiver's).
    #[arg(long, value_name = "PORT")]
    pub tunnel_port: Vec<u16>,
    /// An interface guests may be routed out of (repeatable). Default: the interfaces that
    /// carry a default route.
    #[arg(long, value_name = "IFACE")]
    pub uplink: Vec<String>,
    /// Count and report would-drop frames, but pass them.
    #[arg(long)]
    pub monitor: bool,
    /// Monitor mode only on this port (repeatable).
    #[arg(long, value_name = "PORT")]
    pub monitor_port: Vec<String>,
    /// Only unicast host MACs are host-bound (broadcast/multicast frames are not judged).
    #[arg(long)]
    pub strict_mac: bool,
    /// Treat this MAC as the host's too (repeatable).
    #[arg(long, value_name = "MAC", value_parser = parse_mac_arg)]
    pub host_mac: Vec<String>,
    /// Most drop events per second per port that the datapath describes to a reader
    /// (`guardctl events`, `top`); 0 turns events off. Default 100.
    #[arg(long, value_name = "N")]
    pub event_rate: Option<u32>,
    /// Print the result as JSON (`run`: one JSON object per line for each agent event).
    #[arg(long)]
    pub json: bool,
}

/// `--host-mac`: a MAC is validated like any other argument (a usage error).
fn parse_mac_arg(s: &str) -> Result<String, String> {
    s.parse::<Mac>()
        .map(|m| m.to_string())
        .map_err(|_| format!("{s:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"))
}

/// The options for an attach: the configuration file's entry for the bridge, if any, with
/// the flags added.
pub fn options(a: &AttachArgs) -> Result<Options> {
    let mut o = match &a.config {
        Some(path) => {
            let cfg = config::load(path)?;
            cfg.bridge(&a.bridge).cloned().with_context(|| {
                format!("{} has no [[bridge]] named {:?}", path.display(), a.bridge)
            })?
        }
        None => Options {
            hook: Hook::Xdp.to_string(),
            ..Options::default()
        },
    };
    if let Some(h) = a.hook {
        o.hook = h.to_string();
    }
    o.bridge_hook &= !a.no_bridge_hook;
    o.route_check &= !a.no_route_check;
    o.allow_tunnels |= a.allow_tunnels;
    o.replies &= !a.no_replies;
    o.tunnel_ports.extend(&a.tunnel_port);
    o.uplinks.extend(a.uplink.iter().cloned());
    o.monitor |= a.monitor;
    o.strict_mac |= a.strict_mac;
    o.monitor_ports.extend(a.monitor_port.iter().cloned());
    o.extra_macs.extend(a.host_mac.iter().cloned());
    if a.event_rate.is_some() {
        o.event_rate = a.event_rate;
    }
    if a.discover {
        o.discover = Some(true);
    }
    o.exclude.extend(a.exclude.iter().copied());
    o.protect
        .extend(a.protect.iter().map(|r| r.rule(Action::Deny, "cli")));
    o.allow
        .extend(a.allow.iter().map(|r| r.rule(Action::Allow, "cli")));
    Ok(o)
}

/// Discovers `bridge` in the current network namespace.
pub async fn discover(bridge: &str) -> Result<Discovery> {
    let handle = discovery::connect()?;
    discovery::discover(&handle, bridge)
        .await
        .with_context(|| format!("discovering bridge {bridge:?}"))
}

/// What an attach in an XDP mode does about a port whose XDP hook another program holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SharedXdpPolicy {
    /// `guardctl attach`: refuse the whole attach, before anything changes.
    Refuse,
    /// The agent: that port fails on its own, the rest is guarded.
    FailPort,
}

/// Attaches with the options of `a`, discovered as `found`. Fallbacks and failures go to
/// stderr.
pub fn attach_with(
    cli: &Cli,
    a: &AttachArgs,
    found: &Discovery,
    shared_xdp: SharedXdpPolicy,
) -> Result<(Guard, Changes)> {
    let loc = cli.location(&a.bridge);
    let opts = options(a)?;
    let attach = match shared_xdp {
        SharedXdpPolicy::Refuse => Guard::attach,
        SharedXdpPolicy::FailPort => Guard::attach_per_port,
    };
    let (guard, changes) = attach(&loc, opts, found, embedded_object())
        .with_context(|| format!("attaching to bridge {:?}", a.bridge))?;
    for (port, mode, fallback) in &changes.hooked {
        if let Some(why) = fallback {
            eprintln!("guardctl: {port}: using {mode} ({why})");
        }
    }
    report_failures(&a.bridge, &changes);
    if !guard.state().edits.is_empty() {
        eprintln!(
            "guardctl: {}: {} live rule edit(s) kept (`{} rules list {}`; `rules reset` \
             drops them, `rules save` writes them to the configuration file)",
            a.bridge,
            guard.state().edits.added.len() + guard.state().edits.removed.len(),
            output::guardctl_for(cli.netns.as_deref()),
            a.bridge
        );
    }
    Ok((guard, changes))
}

/// Prints what a reconcile could not apply, one line per item, on stderr.
pub fn report_failures(bridge: &str, changes: &Changes) {
    for (item, e) in &changes.failures {
        eprintln!(
            "guardctl: {bridge}: {item} not applied: {}",
            guard::attach::error_chain(e)
        );
    }
}

pub async fn run(cli: &Cli, a: &AttachArgs) -> Result<ExitCode> {
    let found = discover(&a.bridge).await?;
    let (guard, changes) = attach_with(cli, a, &found, SharedXdpPolicy::Refuse)?;
    let view = output::status_of(guard.loc(), Some(guard.state()), Some(&found)).await;
    if a.json {
        output::print_json(&output::Schema::new("attach", &view))?;
    } else {
        print!("{}", output::describe(&view));
    }
    Ok(if changes.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(exit::ERROR)
    })
}
