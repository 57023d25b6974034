//! Everything the findings are computed from: the sysctls, the host's addresses, and each
//! bridge's ports with the programs on their hooks.

use std::{collections::BTreeMap, net::IpAddr};

use serde::Serialize;

use super::{Observed, sysctl_name};
use crate::discovery::HostAddr;

/// What the kernel says about one port of a guest bridge.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PortView {
    pub name: String,
    pub ifindex: u32,
    /// `IFLA_XDP` program id (any mode).
    pub xdp_prog: Option<u32>,
    /// Programs on the TCX ingress hook.
    pub tcx_progs: Vec<u32>,
    /// `cls_bpf` programs on the clsact ingress hook.
    pub tc_progs: Vec<u32>,
    /// Listed in guard's state file.
    pub in_state: bool,
}

/// guard's pinned state for a bridge.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GuardView {
    /// Ids of the pinned programs (`prog_xdp`, `prog_tc`).
    pub prog_ids: Vec<u32>,
    /// The state file under /run/guard exists.
    pub state_present: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BridgeView {
    pub name: String,
    pub ifindex: u32,
    pub ports: Vec<PortView>,
    /// `None`: nothing pinned for this bridge.
    pub guard: Option<GuardView>,
}

/// Everything the findings are computed from. Collected from the kernel by [`collect`](super::collect), or
/// built by hand in tests.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    pub netns: Option<String>,
    /// `/proc/sys`-relative path -> value; a sysctl that does not exist is absent.
    pub sysctls: BTreeMap<String, i64>,
    pub addrs: Vec<HostAddr>,
    pub bridges: Vec<BridgeView>,
}

impl Snapshot {
    pub(super) fn get(&self, path: &str) -> Option<i64> {
        self.sysctls.get(path).copied()
    }
    pub(super) fn v4(&self, dev: &str, knob: &str) -> Option<i64> {
        self.get(&v4(dev, knob))
    }
    pub(super) fn v6(&self, dev: &str, knob: &str) -> Option<i64> {
        self.get(&v6(dev, knob))
    }
    pub(super) fn observed(&self, path: &str) -> Observed {
        Observed {
            what: sysctl_name(path),
            value: self
                .get(path)
                .map_or_else(|| "(absent)".to_owned(), |v| v.to_string()),
        }
    }
    fn bridge_addrs(&self, bridge: &BridgeView) -> impl Iterator<Item = &HostAddr> {
        self.addrs
            .iter()
            .filter(move |a| a.ifindex == bridge.ifindex)
    }
    /// IPv4 addresses on the bridge.
    pub(super) fn bridge_v4(&self, bridge: &BridgeView) -> Vec<&HostAddr> {
        self.bridge_addrs(bridge)
            .filter(|a| a.addr.is_ipv4())
            .collect()
    }
    /// IPv6 addresses on the bridge other than link-local ones.
    pub(super) fn bridge_v6_routable(&self, bridge: &BridgeView) -> Vec<&HostAddr> {
        self.bridge_addrs(bridge)
            .filter(|a| matches!(a.addr, IpAddr::V6(v6) if !v6.is_unicast_link_local()))
            .collect()
    }
    /// Addresses of this family that a guest could aim at through the bridge: on other
    /// interfaces, not loopback (the kernel treats 127/8 from outside as martian), not
    /// link-local (scoped to its own link).
    pub(super) fn other_targets(&self, bridge: &BridgeView, v4: bool) -> Vec<&HostAddr> {
        self.addrs
            .iter()
            .filter(|a| a.ifindex != bridge.ifindex && a.addr.is_ipv4() == v4)
            .filter(|a| match a.addr {
                IpAddr::V4(x) => !x.is_loopback() && !x.is_link_local(),
                IpAddr::V6(x) => !x.is_loopback() && !x.is_unicast_link_local(),
            })
            .collect()
    }
    pub(super) fn ipv6_on(&self, bridge: &str) -> bool {
        self.v6(bridge, "disable_ipv6") == Some(0)
    }
}

pub(super) fn v4(dev: &str, knob: &str) -> String {
    format!("net/ipv4/conf/{dev}/{knob}")
}
pub(super) fn v6(dev: &str, knob: &str) -> String {
    format!("net/ipv6/conf/{dev}/{knob}")
}

pub(super) const IP_FORWARD: &str = "net/ipv4/ip_forward";
pub(super) const NF_CALL_IPTABLES: &str = "net/bridge/bridge-nf-call-iptables";
pub(super) const NF_CALL_IP6TABLES: &str = "net/bridge/bridge-nf-call-ip6tables";

const V4_KNOBS: &[&str] = &[
    "forwarding",
    "rp_filter",
    "arp_ignore",
    "arp_filter",
    "arp_announce",
    "drop_unicast_in_l2_multicast",
    "accept_local",
    "proxy_arp",
    "accept_source_route",
];
const V6_KNOBS: &[&str] = &[
    "forwarding",
    "force_forwarding",
    "disable_ipv6",
    "accept_ra",
    "proxy_ndp",
    "drop_unicast_in_l2_multicast",
    "seg6_enabled",
    "rpl_seg_enabled",
];

/// The sysctl paths the audit reads for these bridges.
#[must_use]
pub fn sysctl_paths(bridges: &[&str]) -> Vec<String> {
    let mut paths = vec![
        IP_FORWARD.to_owned(),
        NF_CALL_IPTABLES.to_owned(),
        NF_CALL_IP6TABLES.to_owned(),
    ];
    for dev in ["all", "default"].iter().chain(bridges) {
        paths.extend(V4_KNOBS.iter().map(|k| v4(dev, k)));
        paths.extend(V6_KNOBS.iter().map(|k| v6(dev, k)));
    }
    paths
}
