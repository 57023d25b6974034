//! What the operator asked for: the options of an attach (from the command line or the
//! configuration file), the live edits made since, and the hook request.
//!
//! [`Options`] is the stored form (the state file and `status --json` show it as written);
//! [`Options::settings`] checks and parses the parts that are not plain values (the hook, the
//! extra host MACs, the monitored ports) once, into [`Settings`], which is what a reconcile
//! applies.

use std::{collections::BTreeSet, fmt, path::PathBuf, str::FromStr};

use guard_common::Mac;
use serde::{Deserialize, Serialize};

use crate::{
    error::{GuardError, Result},
    rule::RuleSpec,
};

/// The hook asked for on the command line or in the configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Xdp,
    XdpGeneric,
    Tc,
    Tcx,
}

impl Hook {
    /// `xdp` (or empty), `xdp-generic`, `tc` or `tcx`.
    ///
    /// ```
    /// use guard::options::{Hook, HookMode};
    ///
    /// let hook: Hook = "xdp".parse().unwrap();
    /// // A port that refuses native XDP falls back to generic XDP, then TCX, then tc.
    /// assert_eq!(hook.candidates()[..2], [HookMode::XdpNative, HookMode::XdpGeneric]);
    /// assert!("ebpf".parse::<Hook>().is_err());
    /// ```
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "" | "xdp" => Ok(Self::Xdp),
            "xdp-generic" => Ok(Self::XdpGeneric),
            "tc" => Ok(Self::Tc),
            "tcx" => Ok(Self::Tcx),
            other => Err(GuardError::Policy(format!(
                "unknown hook {other:?}: use xdp, xdp-generic, tc or tcx"
            ))),
        }
    }

    /// The modes tried for a port, best first. A port that refuses one falls back to the
    /// next (and `status` says why).
    #[must_use]
    pub fn candidates(self) -> &'static [HookMode] {
        match self {
            Self::Xdp => &[
                HookMode::XdpNative,
                HookMode::XdpGeneric,
                HookMode::Tcx,
                HookMode::Tc,
            ],
            Self::XdpGeneric => &[HookMode::XdpGeneric, HookMode::Tcx, HookMode::Tc],
            Self::Tcx => &[HookMode::Tcx, HookMode::Tc],
            Self::Tc => &[HookMode::Tc],
        }
    }
}

impl FromStr for Hook {
    type Err = GuardError;

    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Xdp => "xdp",
            Self::XdpGeneric => "xdp-generic",
            Self::Tc => "tc",
            Self::Tcx => "tcx",
        })
    }
}

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

impl fmt::Display for HookMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Self::XdpNative => "xdp-native",
            Self::XdpGeneric => "xdp-generic",
            Self::Tcx => "tcx",
            Self::Tc => "tc",
        })
    }
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
    /// Let replies to flows the protected side started through (`guard_reply` on the
    /// bridge's TC egress; on unless turned off).
    #[serde(default = "yes")]
    pub replies: bool,
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
    /// Protect the discovered set (every network and address the host holds outside the
    /// bridge) as well; `None`: only when `protect` is empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discover: Option<bool>,
    /// Prefixes taken out of the discovered set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<ipnet::IpNet>,
    /// Only read, from state files of earlier versions, which kept the live edits here:
    /// [`State::load`](crate::state::State::load) moves them into
    /// [`State::edits`](crate::state::State::edits). Always empty otherwise.
    #[serde(default, skip_serializing)]
    pub added: Vec<RuleSpec>,
    /// Like `added`.
    #[serde(default, skip_serializing)]
    pub removed: Vec<ipnet::IpNet>,
    /// Allow rules scoped to a VM, a port or all, with a protocol and port (`exception`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exceptions: Vec<crate::exception::ExceptionSpec>,
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
            replies: true,
            tunnel_ports: Vec::new(),
            uplinks: Vec::new(),
            monitor: false,
            strict_mac: false,
            protect: Vec::new(),
            allow: Vec::new(),
            discover: None,
            exclude: Vec::new(),
            added: Vec::new(),
            removed: Vec::new(),
            exceptions: Vec::new(),
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

impl Options {
    /// Does the policy include the discovered set?
    #[must_use]
    pub fn discovers(&self) -> bool {
        self.discover.unwrap_or(self.protect.is_empty())
    }
}

/// Live changes to the policy (`guardctl rules`), on top of the options and the discovered set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Edits {
    /// Rules added (with their class and source); each replaces any other rule for its prefix.
    #[serde(default)]
    pub added: Vec<RuleSpec>,
    /// Prefixes removed, also from the configured and the discovered set.
    #[serde(default)]
    pub removed: Vec<ipnet::IpNet>,
    /// Exceptions added; each replaces a configured one with its identity.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exceptions: Vec<crate::exception::ExceptionSpec>,
    /// Configured exceptions removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed_exceptions: Vec<crate::exception::ExceptionSpec>,
}

impl Edits {
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.exceptions.is_empty()
            && self.removed_exceptions.is_empty()
    }
}

/// The options, checked and parsed: what a reconcile applies.
///
/// ```
/// use guard::options::{Hook, Options};
///
/// let options = Options {
///     hook: "tcx".to_owned(),
///     extra_macs: vec!["52:54:00:12:34:56".to_owned()],
///     monitor_ports: vec!["vnet7".to_owned()],
///     ..Options::default()
/// };
/// let s = options.settings().unwrap();
/// assert_eq!(s.hook, Hook::Tcx);
/// assert_eq!(s.extra_macs[0].to_string(), "52:54:00:12:34:56");
/// assert!(s.monitors("vnet7", false) && !s.monitors("vnet8", false));
/// // The bridge's backstop monitors while any port does.
/// assert!(s.monitors("br-guest", true));
///
/// let bad = Options { extra_macs: vec!["52:54:00".to_owned()], ..Options::default() };
/// assert!(bad.settings().is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub hook: Hook,
    /// MACs added to the discovered host set.
    pub extra_macs: Vec<Mac>,
    /// Ports in monitor mode while the rest enforce.
    pub monitor_ports: BTreeSet<String>,
}

impl Options {
    /// Checks and parses the options (see [`Settings`]).
    pub fn settings(&self) -> Result<Settings> {
        let hook = Hook::parse(&self.hook)?;
        let extra_macs = self
            .extra_macs
            .iter()
            .map(|m| {
                m.parse::<Mac>()
                    .map_err(|_| GuardError::Policy(format!("{m:?} is not a MAC address")))
            })
            .collect::<Result<_>>()?;
        Ok(Settings {
            hook,
            extra_macs,
            monitor_ports: self.monitor_ports.iter().cloned().collect(),
        })
    }
}

impl Settings {
    /// Does this interface only monitor? A port does when it is listed. The bridge device's
    /// backstop cannot tell which port a frame came through: while any port only monitors, it
    /// monitors too, or it would drop what that port let through.
    #[must_use]
    pub fn monitors(&self, name: &str, is_bridge: bool) -> bool {
        self.monitor_ports.contains(name) || (is_bridge && !self.monitor_ports.is_empty())
    }
}
