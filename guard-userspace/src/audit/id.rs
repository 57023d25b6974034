//! The stable identifiers of the findings, for scripts and suppressions. docs/audit.md has
//! one row per id: what it checks, why it matters, what `--fix` does.

use std::fmt;

use serde::{Serialize, Serializer};

/// A finding's id. Serialized and printed as its kebab-case name (`ipv4-forwarding`), which
/// is part of the JSON output and must never change.
///
/// ```
/// use guard::audit::FindingId;
///
/// assert_eq!(FindingId::Ipv4DropUnicastInL2Multicast.as_str(), "ipv4-drop-unicast-in-l2-multicast");
/// assert_eq!(serde_json::to_string(&FindingId::RpFilter).unwrap(), r#""rp-filter""#);
/// assert_eq!(FindingId::ALL.len(), 21);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FindingId {
    /// The host routes IPv4 arriving on the bridge (its `forwarding`).
    Ipv4Forwarding,
    /// The bridge does not forward, but `ip_forward`/`conf.default.forwarding` would turn it
    /// on again.
    Ipv4ForwardingDefault,
    /// The reverse-path filter is off or loose on the bridge.
    RpFilter,
    /// The bridge holds an IPv4 or routable IPv6 address.
    BridgeAddress,
    /// The host routes IPv6 arriving on the bridge.
    Ipv6Forwarding,
    /// The host's IPv6 stack is reachable from the bridge (`disable_ipv6` is 0).
    BridgeIpv6,
    /// The host takes router advertisements from guests.
    Ipv6AcceptRa,
    /// IPv6 neighbour proxying is on for the bridge.
    ProxyNdp,
    /// The host answers ARP on the bridge for all its addresses.
    ArpIgnore,
    /// `arp_filter` is off on the bridge.
    ArpFilter,
    /// ARP requests on the bridge may carry the host's other addresses.
    ArpAnnounce,
    /// IPv4 unicast inside L2 broadcast/multicast frames is accepted.
    Ipv4DropUnicastInL2Multicast,
    /// IPv6 unicast inside L2 multicast frames is accepted.
    Ipv6DropUnicastInL2Multicast,
    /// The host accepts its own addresses as source on the bridge.
    AcceptLocal,
    /// Proxy ARP is on for the bridge.
    ProxyArp,
    /// The bridge accepts IPv4 source-routed packets.
    Ipv4SourceRoute,
    /// The bridge processes segment routing headers (`seg6_enabled`).
    Ipv6SegmentRouting,
    /// The bridge processes RPL source routing headers.
    Ipv6RplSourceRoute,
    /// guard is not attached to a bridge that has ports.
    GuardNotAttached,
    /// guard is attached, but a port carries no guard program (or the state file is gone).
    PortUnguarded,
    /// Bridged traffic goes through iptables and conntrack (`bridge-nf-call-*`).
    BridgeNfCall,
}

impl FindingId {
    /// Every id, in the order of docs/audit.md.
    pub const ALL: [Self; 21] = [
        Self::Ipv4Forwarding,
        Self::Ipv4ForwardingDefault,
        Self::RpFilter,
        Self::BridgeAddress,
        Self::Ipv6Forwarding,
        Self::BridgeIpv6,
        Self::Ipv6AcceptRa,
        Self::ProxyNdp,
        Self::ArpIgnore,
        Self::ArpFilter,
        Self::ArpAnnounce,
        Self::Ipv4DropUnicastInL2Multicast,
        Self::Ipv6DropUnicastInL2Multicast,
        Self::AcceptLocal,
        Self::ProxyArp,
        Self::Ipv4SourceRoute,
        Self::Ipv6SegmentRouting,
        Self::Ipv6RplSourceRoute,
        Self::GuardNotAttached,
        Self::PortUnguarded,
        Self::BridgeNfCall,
    ];

    /// The id as scripts see it.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ipv4Forwarding => "ipv4-forwarding",
            Self::Ipv4ForwardingDefault => "ipv4-forwarding-default",
            Self::RpFilter => "rp-filter",
            Self::BridgeAddress => "bridge-address",
            Self::Ipv6Forwarding => "ipv6-forwarding",
            Self::BridgeIpv6 => "bridge-ipv6",
            Self::Ipv6AcceptRa => "ipv6-accept-ra",
            Self::ProxyNdp => "proxy-ndp",
            Self::ArpIgnore => "arp-ignore",
            Self::ArpFilter => "arp-filter",
            Self::ArpAnnounce => "arp-announce",
            Self::Ipv4DropUnicastInL2Multicast => "ipv4-drop-unicast-in-l2-multicast",
            Self::Ipv6DropUnicastInL2Multicast => "ipv6-drop-unicast-in-l2-multicast",
            Self::AcceptLocal => "accept-local",
            Self::ProxyArp => "proxy-arp",
            Self::Ipv4SourceRoute => "ipv4-source-route",
            Self::Ipv6SegmentRouting => "ipv6-segment-routing",
            Self::Ipv6RplSourceRoute => "ipv6-rpl-source-route",
            Self::GuardNotAttached => "guard-not-attached",
            Self::PortUnguarded => "port-unguarded",
            Self::BridgeNfCall => "bridge-nf-call",
        }
    }
}

impl fmt::Display for FindingId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl Serialize for FindingId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn ids_are_unique_and_documented() {
        let names: BTreeSet<&str> = FindingId::ALL.iter().map(|i| i.as_str()).collect();
        assert_eq!(names.len(), FindingId::ALL.len());
        let doc = include_str!("../../../docs/audit.md");
        for id in FindingId::ALL {
            assert!(
                doc.contains(&format!("| `{id}` |")),
                "docs/audit.md lacks {id}"
            );
        }
    }
}
