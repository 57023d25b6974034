//! Human and JSON renderings shared by the verbs. Every JSON document (and every JSON line)
//! carries a `schema` field, `guardctl.<verb>.v<N>`: docs/cli.md describes each shape.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result};
use aya::programs::{
    SchedClassifier, Xdp,
    links::{FdLink, PinnedLink},
};
use guard::{
    attach::{XdpProgram, foreign_xdp},
    discovery::{self, Discovery},
    identity,
    pins::Location,
    policy::Action,
    state::{Failure, State},
};
use serde::Serialize;

mod text;

pub use self::text::{describe, exception_line};

/// The version of every JSON shape guardctl prints; bump it for a verb whose shape changes
/// incompatibly (a field removed or changing meaning; new fields are compatible).
pub const SCHEMA_VERSION: u32 = 1;

/// A JSON document of `verb`: `{"schema": "guardctl.<verb>.v1", ...body}`.
#[derive(Serialize)]
pub struct Schema<'a, T: Serialize> {
    pub schema: String,
    #[serde(flatten)]
    pub body: &'a T,
}

impl<'a, T: Serialize> Schema<'a, T> {
    pub fn new(verb: &str, body: &'a T) -> Self {
        Self {
            schema: schema_name(verb),
            body,
        }
    }
}

#[must_use]
pub fn schema_name(verb: &str) -> String {
    format!("guardctl.{verb}.v{SCHEMA_VERSION}")
}

/// One port of the bridge as `status` shows it: every port the bridge has now, hooked or not.
#[derive(Serialize)]
pub struct PortView {
    pub name: String,
    pub ifindex: u32,
    /// The libvirt domain that owns the tap, when libvirt names one.
    pub vm: Option<String>,
    /// How guard hooks it (`xdp-native`, `xdp-generic`, `tcx`, `tc`), `None` when it does not.
    pub hook: Option<String>,
    /// `enforce` or `monitor` (count and report, but pass).
    pub mode: &'static str,
    /// A guard program is on the port's ingress hook in the kernel.
    pub guarded: bool,
    /// Why the hook is not the one asked for.
    pub fallback: Option<String>,
    /// Why the last reconcile could not hook it.
    pub failure: Option<String>,
    pub slot: Option<u32>,
    pub bridge_device: bool,
    /// Kernel id of the bpf link (None for `cls_bpf` filters, which are not links).
    pub link_id: Option<u32>,
    pub program_id: Option<u32>,
    /// Another program on the port's XDP hook (`{id, name, libxdp_dispatcher}`), which runs
    /// before guard's TC hook; `None` when the XDP hook is free or guard's.
    pub shared_xdp: Option<XdpProgram>,
}

#[derive(Serialize)]
pub struct PrefixView {
    pub prefix: String,
    pub class: String,
    pub source: String,
    /// Added live (`guardctl rules add`).
    pub live: bool,
}

/// One exception (a scoped allow rule with protocol and port) as `status` and `rules list`
/// show it.
#[derive(Serialize)]
pub struct ExceptionView {
    pub prefix: String,
    /// `all`, `vm` or `iface`.
    pub scope: &'static str,
    pub vm: Option<String>,
    pub iface: Option<String>,
    /// `tcp`, `udp`, `icmp`, `icmpv6`, `any` or a number.
    pub proto: String,
    /// The destination port, `None` for any.
    pub dport: Option<u16>,
    pub class: String,
    pub source: String,
    pub rule_id: u32,
    /// Hits on its entries (`None` when the counters cannot be read).
    pub hits: Option<u64>,
    /// Added live (`guardctl rules add`).
    pub live: bool,
    /// Installed for at least one port (a VM or port with no port on the bridge: false).
    pub resolved: bool,
    /// The interfaces its entries are scoped to (the bridge's backstop included).
    pub ports: Vec<String>,
    pub ifindexes: Vec<u32>,
    /// `not resolved (no port)` when it is not.
    pub note: Option<String>,
}

/// The exceptions of a state, with hits from `maps` when given.
pub fn exception_views(s: &State, maps: Option<&guard::maps::GuardMaps>) -> Vec<ExceptionView> {
    s.exceptions
        .iter()
        .map(|e| {
            let spec = &e.spec;
            let scope = match spec.scope() {
                guard::exception::Scope::All => "all",
                guard::exception::Scope::Vm(_) => "vm",
                guard::exception::Scope::Iface(_) => "iface",
            };
            let resolved = e.resolved();
            ExceptionView {
                prefix: spec.net.to_string(),
                scope,
                vm: spec.vm.clone(),
                iface: spec.iface.clone(),
                proto: guard::exception::proto_name(spec.proto),
                dport: (spec.dport != 0).then_some(spec.dport),
                class: spec.class.clone(),
                source: spec.source.clone(),
                rule_id: e.rule_id,
                hits: maps.and_then(|m| m.rule_hits(e.rule_id).ok()),
                live: s.edits.exceptions.iter().any(|x| x.id() == spec.id()),
                resolved,
                ports: e.ports.clone(),
                ifindexes: e.scopes.clone(),
                note: (!resolved).then(|| "not resolved (no port)".to_owned()),
            }
        })
        .collect()
}

/// How healthy a bridge (or a whole `status` run) is; the worst wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Every port guarded and enforcing.
    Ok,
    /// Every port guarded, some only monitor.
    Monitored,
    /// A port without a guard hook, an item not applied, or the bridge not attached.
    Unguarded,
}

impl Health {
    #[must_use]
    pub const fn exit_code(self) -> u8 {
        match self {
            Self::Ok => 0,
            Self::Monitored => crate::exit::MONITORED,
            Self::Unguarded => crate::exit::UNGUARDED,
        }
    }
}

#[derive(Serialize)]
pub struct StatusView {
    pub bridge: String,
    pub netns: Option<String>,
    pub attached: bool,
    pub health: Health,
    pub since: u64,
    pub updated: u64,
    /// `enforce` or `monitor` for the whole bridge.
    pub mode: &'static str,
    pub strict_mac: bool,
    /// The hook asked for.
    pub hook: String,
    pub bridge_hook: bool,
    /// The kernel's route lookup judges what no prefix rule decides.
    pub route_check: bool,
    pub allow_tunnels: bool,
    /// Replies to flows the protected side started pass (`guard_reply` on the bridge's
    /// egress).
    pub replies: bool,
    /// Interfaces guests may be routed out of besides the bridge.
    pub uplinks: Vec<String>,
    /// UDP ports treated as tunnels.
    pub tunnel_ports: Vec<u16>,
    /// The running agent (`guardctl run`), if any.
    pub agent_pid: Option<u32>,
    pub detaching: bool,
    pub program_ids: ProgramIds,
    pub ports: Vec<PortView>,
    pub protected: Vec<PrefixView>,
    pub allowed: Vec<PrefixView>,
    /// Prefixes taken out live (`guardctl rules del`).
    pub removed: Vec<String>,
    /// Allow rules scoped to a VM, a port or all, with a protocol and destination port.
    pub exceptions: Vec<ExceptionView>,
    pub host_macs: BTreeMap<String, String>,
    /// What the last reconcile could not apply.
    pub failures: Vec<Failure>,
}

#[derive(Clone, Copy, Serialize)]
pub struct ProgramIds {
    pub xdp: Option<u32>,
    pub tc: Option<u32>,
    /// The bridge device's backstop (`guard_bridge`).
    pub bridge: Option<u32>,
}

fn link_ids(loc: &Location, hook: &str, ifindex: u32) -> (Option<u32>, Option<u32>) {
    let Ok(pinned) = PinnedLink::from_pin(loc.link_pin(hook, ifindex)) else {
        return (None, None);
    };
    let fd = FdLink::from(pinned);
    match fd.info() {
        Ok(info) => (Some(info.id()), Some(info.program_id())),
        Err(_) => (None, None),
    }
}

/// Kernel ids of the pinned programs, where they can be read.
pub fn prog_ids(loc: &Location) -> ProgramIds {
    let xdp = Xdp::from_pin(loc.prog_pin("xdp"), aya_obj_xdp())
        .ok()
        .and_then(|p| p.info().ok())
        .map(|i| i.id());
    let tc_id = |pin: &str| {
        SchedClassifier::from_pin(loc.prog_pin(pin))
            .ok()
            .and_then(|p| p.info().ok())
            .map(|i| i.id())
    };
    ProgramIds {
        xdp,
        tc: tc_id("tc"),
        bridge: tc_id("bridge"),
    }
}

/// The program ids on each of `ifaces`' ingress hooks (XDP, TCX, `cls_bpf`), from the
/// kernel, and the XDP program of each on its own. An interface whose hooks cannot be read
/// has none.
async fn kernel_hooks(ifaces: &[(u32, String)]) -> (BTreeMap<u32, Vec<u32>>, BTreeMap<u32, u32>) {
    let mut out: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    let Ok(handle) = discovery::connect() else {
        return (out, BTreeMap::new());
    };
    let xdp = guard::audit::xdp_progs(&handle).await.unwrap_or_default();
    for (ifindex, name) in ifaces {
        let ids = out.entry(*ifindex).or_default();
        ids.extend(xdp.get(ifindex));
        ids.extend(guard::audit::tcx_progs(name).unwrap_or_default());
        ids.extend(
            guard::audit::tc_progs(&handle, *ifindex)
                .await
                .unwrap_or_default(),
        );
    }
    (out, xdp)
}

/// What `status` says about `loc`: its state (`None`: not attached) against the bridge's
/// ports now (`found`, or discovered here when `None`; a bridge that does not exist has
/// only the ports the state names) and the hooks the kernel reports on them.
pub async fn status_of(
    loc: &Location,
    state: Option<&State>,
    found: Option<&Discovery>,
) -> StatusView {
    let discovered = if found.is_none() {
        match discovery::connect() {
            Ok(h) => discovery::discover(&h, &loc.bridge).await.ok(),
            Err(_) => None,
        }
    } else {
        None
    };
    let found = found.or(discovered.as_ref());
    let default_state = State::default();
    let s = state.unwrap_or(&default_state);
    let o = &s.options;
    let program_ids = prog_ids(loc);
    let ours: Vec<u32> = [program_ids.xdp, program_ids.tc, program_ids.bridge]
        .into_iter()
        .flatten()
        .collect();
    let ports = port_views(loc, state.is_some(), s, found, &ours).await;
    let view = |action: Action| {
        s.policy
            .rules
            .iter()
            .filter(|r| r.action == action)
            .map(|r| PrefixView {
                prefix: r.net.to_string(),
                class: r.class.clone(),
                source: r.source.clone(),
                live: s.edits.added.contains(r),
            })
            .collect()
    };
    let attached = state.is_some() && loc.is_attached();
    let health = if !attached || !s.failures.is_empty() || ports.iter().any(|p| !p.guarded) {
        Health::Unguarded
    } else if o.monitor || ports.iter().any(|p| p.mode == "monitor") {
        Health::Monitored
    } else {
        Health::Ok
    };
    StatusView {
        bridge: loc.bridge.clone(),
        netns: loc.netns.clone(),
        attached,
        health,
        since: s.since,
        updated: s.updated,
        mode: if o.monitor { "monitor" } else { "enforce" },
        strict_mac: o.strict_mac,
        hook: o.hook.clone(),
        bridge_hook: o.bridge_hook,
        agent_pid: s.live_agent().map(|a| a.pid),
        detaching: s.detaching,
        program_ids,
        route_check: o.route_check,
        allow_tunnels: o.allow_tunnels,
        replies: o.replies,
        uplinks: s
            .egress
            .iter()
            .filter(|(i, _)| found.is_none_or(|f| f.bridge.index != **i))
            .map(|(_, n)| n.clone())
            .collect(),
        tunnel_ports: s.tunnel_ports.clone(),
        ports,
        protected: view(Action::Deny),
        allowed: view(Action::Allow),
        removed: s.edits.removed.iter().map(ToString::to_string).collect(),
        exceptions: exception_views(
            s,
            guard::maps::GuardMaps::open(loc)
                .ok()
                .filter(|_| attached)
                .as_ref(),
        ),
        host_macs: s.host_macs.clone(),
        failures: s.failures.clone(),
    }
}

/// Every port to show: the bridge's ports now and the bridge device when guard hooks it
/// (without `found`, the ports the state names), each checked against the kernel: guarded
/// when one of `ours` (guard's program ids) is on its ingress.
async fn port_views(
    loc: &Location,
    attached: bool,
    s: &State,
    found: Option<&Discovery>,
    ours: &[u32],
) -> Vec<PortView> {
    let o = &s.options;
    let mut ifaces: BTreeMap<u32, (String, bool)> = BTreeMap::new();
    if let Some(f) = found {
        for p in &f.ports {
            ifaces.insert(p.index, (p.name.clone(), false));
        }
        if o.bridge_hook {
            ifaces.insert(f.bridge.index, (f.bridge.name.clone(), true));
        }
    }
    if found.is_none() {
        // The bridge is gone (or unreadable): what the state names is all there is to show.
        for (i, p) in &s.ports {
            ifaces.insert(*i, (p.name.clone(), p.is_bridge));
        }
    }
    let list: Vec<(u32, String)> = ifaces.iter().map(|(i, (n, _))| (*i, n.clone())).collect();
    let (hooks, xdp) = kernel_hooks(&list).await;
    let taps = identity::libvirt_taps(&identity::libvirt_run_dir());
    let failure_of = |name: &str| {
        s.failures.iter().find_map(|f| match &f.item {
            guard::state::Item::Port { name: n, .. } if n == name => Some(f.error.clone()),
            _ => None,
        })
    };
    ifaces
        .into_iter()
        .map(|(ifindex, (name, is_bridge))| {
            let p = s.ports.get(&ifindex);
            let (link_id, program_id) =
                p.map_or((None, None), |p| link_ids(loc, p.mode.pin_name(), ifindex));
            let guarded = attached
                && hooks
                    .get(&ifindex)
                    .is_some_and(|ids| ids.iter().any(|id| ours.contains(id)));
            PortView {
                vm: taps.get(&name).map(|n| n.domain.clone()),
                hook: p.map(|p| p.mode.to_string()),
                mode: if o.monitor
                    || o.monitor_ports.contains(&name)
                    || (is_bridge && !o.monitor_ports.is_empty())
                {
                    "monitor"
                } else {
                    "enforce"
                },
                guarded,
                fallback: p.and_then(|p| p.fallback.clone()),
                failure: failure_of(&name),
                slot: p.map(|p| p.slot),
                bridge_device: is_bridge,
                link_id,
                program_id,
                shared_xdp: xdp
                    .get(&ifindex)
                    .filter(|id| !ours.contains(id))
                    .and_then(|id| foreign_xdp(*id)),
                name,
                ifindex,
            }
        })
        .collect()
}

fn aya_obj_xdp() -> aya_obj::programs::XdpAttachType {
    aya_obj::programs::XdpAttachType::Interface
}

/// `guardctl`, with `--netns NS` when the bridge is in a named namespace: how hints name a
/// command the operator can type as shown.
#[must_use]
pub fn guardctl_for(netns: Option<&str>) -> String {
    netns.map_or_else(
        || "guardctl".to_owned(),
        |n| format!("guardctl --netns {n}"),
    )
}

pub fn fmt_time(unix: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix))
        .to_string()
}

pub fn print_json<T: Serialize>(v: &T) -> Result<()> {
    let s = serde_json::to_string_pretty(v).context("serialising JSON")?;
    println!("{s}");
    Ok(())
}
