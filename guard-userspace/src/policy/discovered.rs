//! The prefixes found on the host rather than configured: the default protected set and the
//! guest bridge's own networks.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use ipnet::IpNet;

use crate::{
    discovery::Discovery,
    rule::{Action, RuleSpec},
};

/// Addresses the default sets never name: loopback (127/8, `::1`: harmless, and on `lo`
/// only), the unspecified address, multicast, and IPv6 link-local (the kernel scopes
/// `fe80::/10` to the receiving device, so another interface's is unreachable from the bridge).
/// IPv4 link-local is protected: the kernel routes `169.254/16` like any network (a BMC's
/// Redfish host interface sits there).
fn never_protected_by_default(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => a.is_multicast() || a.is_unspecified() || a.is_loopback(),
        IpAddr::V6(a) => {
            a.is_unicast_link_local() || a.is_multicast() || a.is_unspecified() || a.is_loopback()
        }
    }
}

/// Interfaces whose addresses and routes are the guest side, not the host's: the guest bridge
/// and its ports.
fn guest_side(d: &Discovery) -> BTreeSet<u32> {
    std::iter::once(d.bridge.index)
        .chain(d.ports.iter().map(|p| p.index))
        .collect()
}

/// The default protected set: every network the host reaches through an interface other than
/// the guest bridge, and each of its own addresses as a host route:
/// - every address outside the guest side (loopback's too: an L3-fabric host keeps its
///   management /32 on `lo`), as a host route, and its network: the address's own prefix, or
///   the peer's on a point-to-point address;
/// - every unicast route of the main table out of such an interface that is not a default
///   route (on-link routes from router advertisements, subnets behind a gateway on the
///   management or storage side).
///
/// The route check of the datapath judges the same networks from the live FIB without this
/// snapshot; these prefixes add per-rule hit counters and cover kernels whose route lookup
/// cannot see an egress interface without a neighbour entry (docs/datapath.md).
#[must_use]
pub fn default_protected(d: &Discovery) -> Vec<RuleSpec> {
    let guest = guest_side(d);
    let name_of = |ifindex: u32| {
        d.iface(ifindex)
            .map_or_else(|| ifindex.to_string(), |i| i.name.clone())
    };
    let mut out: BTreeMap<IpNet, RuleSpec> = BTreeMap::new();
    let mut add = |net: IpNet, class: &str, source: &str| {
        out.entry(net).or_insert_with(|| RuleSpec {
            net,
            action: Action::Deny,
            class: class.to_owned(),
            source: source.to_owned(),
        });
    };
    for a in &d.addrs {
        if guest.contains(&a.ifindex) || never_protected_by_default(a.addr) {
            continue;
        }
        add(IpNet::from(a.addr), "host", &a.ifname);
        if let Some(net) = a.network()
            && !never_protected_by_default(net.addr())
        {
            add(net, "host-net", &a.ifname);
        }
    }
    for r in &d.routes {
        let Some(oif) = r.oif else { continue };
        if guest.contains(&oif)
            || r.dst.prefix_len() == 0
            || never_protected_by_default(r.dst.addr())
        {
            continue;
        }
        add(r.dst, "host-route", &name_of(oif));
    }
    out.into_values().collect()
}

/// The guest bridge's own networks (the prefixes of its addresses), allowed by default:
/// guests reach the bridge's address (DNS, DHCP, the host as their router) and each other
/// through the host, which the route check would otherwise judge as local delivery.
#[must_use]
pub fn guest_networks(d: &Discovery) -> Vec<RuleSpec> {
    let mut out: BTreeMap<IpNet, RuleSpec> = BTreeMap::new();
    for a in d.addrs.iter().filter(|a| a.ifindex == d.bridge.index) {
        if never_protected_by_default(a.addr) {
            continue;
        }
        if let Some(net) = a.network() {
            out.entry(net).or_insert_with(|| RuleSpec {
                net,
                action: Action::Allow,
                class: "guest-net".to_owned(),
                source: a.ifname.clone(),
            });
        }
    }
    out.into_values().collect()
}
