//! What bpffs cannot hold about an attached bridge: options, class names, port slots and hook
//! modes, since when. Written atomically (temp file + rename) after every change.

use std::{collections::BTreeMap, fs, io, path::PathBuf};

use serde::{Deserialize, Serialize};

use crate::{
    error::{GuardError, Result},
    pins::Location,
    policy::{Classes, Policy, RuleSpec},
};

/// How a port is hooked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HookMode {
    /// XDP in the driver.
    XdpNative,
    /// XDP in the core (`XDP_FLAGS_SKB_MODE`): works on any device.
    XdpGeneric,
    /// TC ingress through a TCX link (kernel 6.6+).
    Tcx,
    /// TC ingress through a `cls_bpf` filter on the clsact qdisc (any kernel).
    Tc,
}

impl HookMode {
    /// The name used in link pins (`link_<pin_name>_<ifindex>`).
    #[must_use]
    pub const fn pin_name(self) -> &'static str {
        match self {
            Self::XdpNative | Self::XdpGeneric => "xdp",
            Self::Tcx => "tcx",
            Self::Tc => "tc",
        }
    }

    #[must_use]
    pub const fn is_xdp(self) -> bool {
        matches!(self, Self::XdpNative | Self::XdpGeneric)
    }
}

impl std::fmt::Display for HookMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            Self::XdpNative => "xdp-native",
            Self::XdpGeneric => "xdp-generic",
            Self::Tcx => "tcx",
            Self::Tc => "tc",
        })
    }
}

/// One hooked interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortState {
    pub name: String,
    /// Counter slot (`1..MAX_PORT_SLOTS`).
    pub slot: u32,
    pub mode: HookMode,
    /// Why the mode is not the one asked for (a fallback), if so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
    /// The bridge device itself (`--bridge-hook`), not a port.
    #[serde(default)]
    pub is_bridge: bool,
}

/// The options an attach was made with (re-applied by the agent, re-read on SIGHUP).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Options {
    /// Requested hook: `xdp`, `xdp-generic`, `tc` or `tcx`.
    pub hook: String,
    /// The backstop on the bridge device's own TC ingress (on unless turned off).
    #[serde(default = "yes")]
    pub bridge_hook: bool,
    /// Judge what no prefix rule decides by the kernel's route lookup (on unless turned off).
    #[serde(default = "yes")]
    pub route_check: bool,
    /// Let tunnel encapsulations addressed to the host through.
    #[serde(default)]
    pub allow_tunnels: bool,
    /// UDP ports of tunnels, on top of the defaults and the tunnel devices discovered.
    #[serde(default)]
    pub tunnel_ports: Vec<u16>,
    /// Interfaces guests may be routed out of besides the bridge; empty: those that carry a
    /// default route (discovered).
    #[serde(default)]
    pub uplinks: Vec<String>,
    pub monitor: bool,
    pub strict_mac: bool,
    /// Protected prefixes as given (empty: the default protected set, re-discovered).
    pub protect: Vec<RuleSpec>,
    pub allow: Vec<RuleSpec>,
    /// Rules added live with `guardctl rules add`, on top of the protected/allowed sets.
    #[serde(default)]
    pub added: Vec<RuleSpec>,
    /// Prefixes removed live with `guardctl rules del` (also from the discovered set).
    #[serde(default)]
    pub removed: Vec<ipnet::IpNet>,
    /// MACs added to the discovered host set.
    pub extra_macs: Vec<String>,
    /// Ports in monitor mode while the rest enforce.
    pub monitor_ports: Vec<String>,
    /// Most drop events per second per port; `None` is the default
    /// (`guard_common::event::DEFAULT_EVENT_RATE`), 0 turns events off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_rate: Option<u32>,
    pub config_file: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            hook: "xdp".to_owned(),
            bridge_hook: true,
            route_check: true,
            allow_tunnels: false,
            tunnel_ports: Vec::new(),
            uplinks: Vec::new(),
            monitor: false,
            strict_mac: false,
            protect: Vec::new(),
            allow: Vec::new(),
            added: Vec::new(),
            removed: Vec::new(),
            extra_macs: Vec::new(),
            monitor_ports: Vec::new(),
            event_rate: None,
            config_file: None,
        }
    }
}

const fn yes() -> bool {
    true
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub bridge: String,
    pub netns: Option<String>,
    /// Unix seconds of the first attach.
    pub since: u64,
    /// Unix seconds of the last change.
    pub updated: u64,
    /// Identifies the eBPF object the pinned programs came from.
    pub object_id: String,
    pub options: Options,
    /// The policy in force (explicit or discovered).
    pub policy: Policy,
    pub classes: Classes,
    /// Hooked interfaces by ifindex.
    pub ports: BTreeMap<u32, PortState>,
    /// The host MACs in force, with why (`aa:bb:..` -> reason).
    pub host_macs: BTreeMap<String, String>,
    /// Interfaces marked as allowed egress of the route check (the bridge and the uplinks),
    /// by ifindex, with their names.
    #[serde(default)]
    pub egress: BTreeMap<u32, String>,
    /// The UDP tunnel ports in force.
    #[serde(default)]
    pub tunnel_ports: Vec<u16>,
}

impl State {
    pub fn load(loc: &Location) -> Result<Option<Self>> {
        let path = loc.state_file();
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| GuardError::StateFormat { path, source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(GuardError::State { path, source }),
        }
    }

    pub fn save(&self, loc: &Location) -> Result<()> {
        let path = loc.state_file();
        let err = |source| GuardError::State {
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(err)?;
        }
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(self).map_err(|source| GuardError::StateFormat {
            path: path.clone(),
            source,
        })?;
        fs::write(&tmp, bytes).map_err(err)?;
        fs::rename(&tmp, &path).map_err(err)
    }
}

#[must_use]
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
