//! `guardctl attach`.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context as _, Result};
use clap::Args;
use guard::{
    attach::{Guard, embedded_object},
    config, discovery,
    policy::{parse_allow, parse_protect},
    state::Options,
};

use crate::{Cli, output};

#[derive(Args, Clone)]
pub struct AttachArgs {
    /// The guest bridge (e.g. br-guest).
    pub bridge: String,
    /// Protect CIDR (drop guest frames to it), with an optional class name (management,
    /// storage, or your own). Repeatable. Without any, guard protects every network and
    /// address the host holds outside the bridge (link-local and multicast excepted).
    #[arg(long, value_name = "CIDR[=CLASS]")]
    pub protect: Vec<String>,
    /// Let guests reach CIDR even inside a protected range (longest prefix wins).
    #[arg(long, value_name = "CIDR[=CLASS]")]
    pub allow: Vec<String>,
    /// Read options for BRIDGE from this TOML file (flags add to it).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Hook: xdp (native; a port that refuses it falls back to generic XDP, then TCX, then
    /// tc, and says why), xdp-generic, tcx, or tc (a `cls_bpf` filter, for kernels before 6.6).
    #[arg(long, value_name = "HOOK")]
    pub hook: Option<String>,
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
    #[arg(long, value_name = "MAC")]
    pub host_mac: Vec<String>,
    /// Most drop events per second per port that the datapath describes to a reader
    /// (`guardctl events`, `top`); 0 turns events off. Default 100.
    #[arg(long, value_name = "N")]
    pub event_rate: Option<u32>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
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
        None => Options::default(),
    };
    if let Some(h) = &a.hook {
        o.hook.clone_from(h);
    }
    o.bridge_hook &= !a.no_bridge_hook;
    o.route_check &= !a.no_route_check;
    o.allow_tunnels |= a.allow_tunnels;
    o.tunnel_ports.extend(&a.tunnel_port);
    o.uplinks.extend(a.uplink.iter().cloned());
    o.monitor |= a.monitor;
    o.strict_mac |= a.strict_mac;
    o.monitor_ports.extend(a.monitor_port.iter().cloned());
    o.extra_macs.extend(a.host_mac.iter().cloned());
    if a.event_rate.is_some() {
        o.event_rate = a.event_rate;
    }
    for p in &a.protect {
        o.protect.push(parse_protect(p, "cli")?);
    }
    for p in &a.allow {
        o.allow.push(parse_allow(p, "cli")?);
    }
    Ok(o)
}

pub async fn attach(cli: &Cli, a: &AttachArgs) -> Result<Guard> {
    let loc = cli.location(&a.bridge);
    let opts = options(a)?;
    let handle = discovery::connect()?;
    let found = discovery::discover(&handle, &a.bridge)
        .await
        .with_context(|| format!("discovering bridge {:?}", a.bridge))?;
    let (guard, changes) = Guard::attach(&loc, opts, &found, embedded_object())
        .with_context(|| format!("attaching to bridge {:?}", a.bridge))?;
    for (port, mode, fallback) in &changes.hooked {
        if let Some(why) = fallback {
            eprintln!("guardctl: {port}: using {mode} ({why})");
        }
    }
    Ok(guard)
}

pub async fn run(cli: &Cli, a: &AttachArgs) -> Result<ExitCode> {
    let guard = attach(cli, a).await?;
    if a.json {
        output::print_json(&output::status_of(&guard.loc, &guard.state))?;
    } else {
        print!("{}", output::describe(&guard.loc, &guard.state));
    }
    Ok(ExitCode::SUCCESS)
}
