//! Human and JSON renderings shared by the verbs.

use std::fmt::Write as _;

use anyhow::{Context as _, Result};
use aya::programs::{
    SchedClassifier, Xdp,
    links::{FdLink, PinnedLink},
};
use guard::{pins::Location, policy::Action, state::State};
use serde::Serialize;

#[derive(Serialize)]
pub struct PortView {
    pub name: String,
    pub ifindex: u32,
    pub mode: String,
    pub fallback: Option<String>,
    pub slot: u32,
    pub monitor: bool,
    pub bridge_device: bool,
    /// Kernel id of the bpf link (None for `cls_bpf` filters, which are not links).
    pub link_id: Option<u32>,
    pub program_id: Option<u32>,
}

#[derive(Serialize)]
pub struct PrefixView {
    pub prefix: String,
    pub class: String,
    pub source: String,
}

#[derive(Serialize)]
pub struct StatusView {
    pub bridge: String,
    pub netns: Option<String>,
    pub since: u64,
    pub updated: u64,
    pub mode: &'static str,
    pub strict_mac: bool,
    pub hook: String,
    pub bridge_hook: bool,
    pub program_ids: ProgramIds,
    pub ports: Vec<PortView>,
    pub protected: Vec<PrefixView>,
    pub allowed: Vec<PrefixView>,
    pub host_macs: std::collections::BTreeMap<String, String>,
}

#[derive(Serialize)]
pub struct ProgramIds {
    pub xdp: Option<u32>,
    pub tc: Option<u32>,
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

/// Kernel ids of the pinned XDP and TC programs, where they can be read.
pub fn prog_ids(loc: &Location) -> (Option<u32>, Option<u32>) {
    let xdp = Xdp::from_pin(loc.prog_pin("xdp"), aya_obj_xdp())
        .ok()
        .and_then(|p| p.info().ok())
        .map(|i| i.id());
    let tc = SchedClassifier::from_pin(loc.prog_pin("tc"))
        .ok()
        .and_then(|p| p.info().ok())
        .map(|i| i.id());
    (xdp, tc)
}

pub fn status_of(loc: &Location, state: &State) -> StatusView {
    let (xdp, tc) = prog_ids(loc);
    let o = &state.options;
    let ports = state
        .ports
        .iter()
        .map(|(ifindex, p)| {
            let (link_id, program_id) = link_ids(loc, p.mode.pin_name(), *ifindex);
            PortView {
                name: p.name.clone(),
                ifindex: *ifindex,
                mode: p.mode.to_string(),
                fallback: p.fallback.clone(),
                slot: p.slot,
                monitor: o.monitor || o.monitor_ports.contains(&p.name),
                bridge_device: p.is_bridge,
                link_id,
                program_id,
            }
        })
        .collect();
    let view = |action: Action| {
        state
            .policy
            .rules
            .iter()
            .filter(|r| r.action == action)
            .map(|r| PrefixView {
                prefix: r.net.to_string(),
                class: r.class.clone(),
                source: r.source.clone(),
            })
            .collect()
    };
    StatusView {
        bridge: state.bridge.clone(),
        netns: state.netns.clone(),
        since: state.since,
        updated: state.updated,
        mode: if o.monitor { "monitor" } else { "enforce" },
        strict_mac: o.strict_mac,
        hook: o.hook.clone(),
        bridge_hook: o.bridge_hook,
        program_ids: ProgramIds { xdp, tc },
        ports,
        protected: view(Action::Deny),
        allowed: view(Action::Allow),
        host_macs: state.host_macs.clone(),
    }
}

fn aya_obj_xdp() -> aya_obj::programs::XdpAttachType {
    aya_obj::programs::XdpAttachType::Interface
}

/// The human summary printed by `attach` and `status`.
pub fn describe(loc: &Location, state: &State) -> String {
    let v = status_of(loc, state);
    let mut s = String::new();
    let ns = v
        .netns
        .as_deref()
        .map_or(String::new(), |n| format!(" in netns {n}"));
    // Two lines: namespace names can be long and the output must fit 80 columns.
    let _ = writeln!(s, "guard: {}{ns}", v.bridge);
    let _ = writeln!(
        s,
        "  {} mode, {} port(s), hook {}, since {}",
        v.mode,
        v.ports.len(),
        v.hook,
        fmt_time(v.since)
    );
    for p in &v.ports {
        let fb = p
            .fallback
            .as_deref()
            .map_or(String::new(), |f| format!(" ({f})"));
        let what = if p.bridge_device {
            " [bridge device]"
        } else {
            ""
        };
        let _ = writeln!(s, "  port {:<16} {}{what}{fb}", p.name, p.mode);
    }
    let _ = writeln!(s, "  protects {} prefix(es):", v.protected.len());
    for r in &v.protected {
        let _ = writeln!(s, "    {:<24} {:<12} {}", r.prefix, r.class, r.source);
    }
    if !v.allowed.is_empty() {
        let _ = writeln!(s, "  allows {} prefix(es):", v.allowed.len());
        for r in &v.allowed {
            let _ = writeln!(s, "    {:<24} {:<12} {}", r.prefix, r.class, r.source);
        }
    }
    let _ = writeln!(s, "  host MACs: {}", v.host_macs.len());
    s
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
