//! The attack plan: the frames a guest sends through a bridge port, attacks and legitimate
//! traffic, each with where it would arrive and what guard must count. Shared by the
//! namespace test inside the guests and the real guest on a tap.

use std::net::{Ipv4Addr, Ipv6Addr};

use guard_tests::lab::frame::Mac;
use guard_tests::packet::{
    Arp, BROADCAST, ETH_P_ARP, Eth, ICMPV6_NEIGHBOUR_SOLICITATION, Ipv4, Ipv6, ipv6_multicast_mac,
    solicited_node,
};
use serde::{Deserialize, Serialize};

/// The host's address on the guest bridge: not protected (guests may use it).
pub const BRIDGE_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
pub const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
pub const PEER_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 3);
/// What guardctl is told to protect (`--protect`).
pub const PROTECT: [&str; 2] = ["192.0.2.0/24=storage", "2001:db8:99::/48=management"];
const STORAGE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const MGMT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x99, 0, 0, 0, 0, 0x10);
const GUEST6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2);

/// Copies of each case: enough to tell "all" from "some" on the counters, few enough for
/// a TCG guest.
pub const COPIES: u16 = 4;

/// IP protocol 253 is reserved for experiments (RFC 3692): nothing on the path acts on it.
const IPPROTO_EXPERIMENT: u8 = 253;

/// Marker magic; the frame's case id and sequence number follow it. Every frame of the plan
/// carries one, so a receiver can tell them from the kernel's own traffic (IPv6 DAD, MLD) on
/// the same link.
pub const MARKER: &[u8; 4] = b"GVMK";

/// `MARKER`, case id, sequence number: 8 bytes.
#[must_use]
pub fn marker(case: u16, seq: u16) -> Vec<u8> {
    let mut m = MARKER.to_vec();
    m.extend_from_slice(&case.to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m
}

/// The (case id, sequence) of the first marker in `frame`, if any.
#[must_use]
pub fn find_marker(frame: &[u8]) -> Option<(u16, u16)> {
    let at = frame.windows(MARKER.len()).position(|w| w == MARKER)?;
    let rest = frame.get(at + 4..at + 8)?;
    Some((
        u16::from_be_bytes([rest[0], rest[1]]),
        u16::from_be_bytes([rest[2], rest[3]]),
    ))
}

/// Builds one copy of a case's frame around its marker.
type Build = Box<dyn Fn(&[u8]) -> Vec<u8>>;

/// Where a frame of the case should end up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Expect {
    /// An attack: guard drops it at the port and counts it under this reason.
    Drop(&'static str),
    /// Legitimate, host-bound: reaches the bridge device.
    Host,
    /// Legitimate guest-to-guest: reaches the peer guest.
    Peer,
    /// Legitimate broadcast: reaches both.
    HostAndPeer,
}

#[derive(Clone, Debug, Serialize)]
pub struct Case {
    pub id: u16,
    pub name: &'static str,
    pub expect: Expect,
    #[serde(skip)]
    pub frames: Vec<Vec<u8>>,
}

/// The plan for a guest with MAC `guest` on a bridge with MAC `bridge`, next to a guest
/// with MAC `peer`. Marked frames carry the marker as their IP payload (protocol 253), after
/// the ARP body, or after the solicitation's target address.
#[must_use]
pub fn plan(bridge: Mac, guest: Mac, peer: Mac) -> Vec<Case> {
    let ipv4_to = move |dst: Mac, vlan: Option<u16>, ip: Ipv4Addr| -> Build {
        Box::new(move |m| {
            let eth = Eth::new(dst, guest);
            let eth = vlan.map_or(eth.clone(), |vid| eth.vlan(vid));
            eth.ipv4(Ipv4::new(GUEST_IP, ip).payload(IPPROTO_EXPERIMENT, m))
                .build()
        })
    };
    let arp_for = move |tpa: Ipv4Addr| -> Build {
        Box::new(move |m| {
            let arp = Arp::request(guest, GUEST_IP, tpa).build();
            Eth::new(BROADCAST, guest)
                .raw(ETH_P_ARP, &[arp.as_slice(), m].concat())
                .build()
        })
    };
    let ipv6_to_mgmt: Build = Box::new(move |m| {
        Eth::new(bridge, guest)
            .ipv6(Ipv6::new(GUEST6, MGMT6).payload(IPPROTO_EXPERIMENT, m))
            .build()
    });
    let ns_for_mgmt: Build = Box::new(move |m| {
        // Reserved word, target, then the marker where options would be.
        let body = [&[0; 4][..], &MGMT6.octets(), m].concat();
        let mut p = Ipv6::new(GUEST6, solicited_node(MGMT6)).icmpv6(
            ICMPV6_NEIGHBOUR_SOLICITATION,
            0,
            &body,
        );
        p.hop_limit = 255;
        Eth::new(ipv6_multicast_mac(p.dst), guest).ipv6(p).build()
    });
    let deny = Expect::Drop;
    // One case per line reads as a table.
    #[rustfmt::skip]
    let specs: Vec<(u16, &'static str, Expect, Build)> = vec![
        (1, "ipv4 to bridge MAC, storage address", deny("deny_ipv4"), ipv4_to(bridge, None, STORAGE)),
        (2, "ipv4 in L2 broadcast, storage address", deny("deny_ipv4"), ipv4_to(BROADCAST, None, STORAGE)),
        (3, "ipv4 in 802.1Q tag, storage address", deny("deny_ipv4"), ipv4_to(bridge, Some(10), STORAGE)),
        (4, "arp who-has storage address", deny("deny_arp"), arp_for(STORAGE)),
        (5, "ipv6 to bridge MAC, management address", deny("deny_ipv6"), ipv6_to_mgmt),
        (6, "ndp solicitation for management address", deny("deny_ndp"), ns_for_mgmt),
        (101, "ipv4 to bridge MAC, bridge's own unprotected address", Expect::Host, ipv4_to(bridge, None, BRIDGE_IP)),
        (102, "ipv4 to the peer guest", Expect::Peer, ipv4_to(peer, None, PEER_IP)),
        (103, "arp who-has bridge address", Expect::HostAndPeer, arp_for(BRIDGE_IP)),
    ];
    specs
        .into_iter()
        .map(|(id, name, expect, build)| Case {
            id,
            name,
            expect,
            frames: (0..COPIES).map(|seq| build(&marker(id, seq))).collect(),
        })
        .collect()
}

/// Every frame of the plan, interleaved case by case (an attack never runs alone in a burst).
#[must_use]
pub fn all_frames(plan: &[Case]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for seq in 0..usize::from(COPIES) {
        for c in plan {
            out.push(c.frames[seq].clone());
        }
    }
    out
}

/// What came of a plan: the numbers in the report table, and every mismatch spelled out.
#[derive(Debug, Default, Serialize)]
pub struct Verdict {
    pub attacks_sent: u32,
    /// Attack frames that reached neither the bridge device nor the peer.
    pub attacks_blocked: u32,
    pub legit_sent: u32,
    /// Legitimate frames that reached every place they should.
    pub legit_ok: u32,
    /// guard's drop counters on the port equal the attacks sent, reason by reason.
    pub counters_ok: bool,
    pub errors: Vec<String>,
}

/// Checks arrivals (marked frames per case id at the bridge device and at the peer) and the
/// port's counters (`reason name -> packets`) against `plan`.
#[must_use]
pub fn judge(
    plan: &[Case],
    at_bridge: &std::collections::BTreeMap<u16, u32>,
    at_peer: &std::collections::BTreeMap<u16, u32>,
    counters: &std::collections::BTreeMap<String, u64>,
) -> Verdict {
    let mut v = Verdict {
        counters_ok: true,
        ..Verdict::default()
    };
    let sent = u32::from(COPIES);
    let mut want_drops: std::collections::BTreeMap<&str, u64> = std::collections::BTreeMap::new();
    for c in plan {
        let b = at_bridge.get(&c.id).copied().unwrap_or(0);
        let p = at_peer.get(&c.id).copied().unwrap_or(0);
        match c.expect {
            Expect::Drop(reason) => {
                v.attacks_sent += sent;
                *want_drops.entry(reason).or_insert(0) += u64::from(sent);
                let leaked = b.max(p).min(sent);
                v.attacks_blocked += sent - leaked;
                if leaked > 0 {
                    v.errors.push(format!(
                        "attack case {} ({}): {b} reached the bridge, {p} the peer",
                        c.id, c.name
                    ));
                }
            }
            Expect::Host | Expect::Peer | Expect::HostAndPeer => {
                v.legit_sent += sent;
                let got = match c.expect {
                    Expect::Host => b,
                    Expect::Peer => p,
                    _ => b.min(p),
                };
                v.legit_ok += got.min(sent);
                if got < sent {
                    v.errors.push(format!(
                        "legit case {} ({}): {b}/{sent} reached the bridge, {p}/{sent} the peer",
                        c.id, c.name
                    ));
                }
            }
        }
    }
    for reason in [
        "deny_ipv4",
        "deny_ipv6",
        "deny_arp",
        "deny_ndp",
        "malformed",
    ] {
        let want = want_drops.get(reason).copied().unwrap_or(0);
        let got = counters.get(reason).copied().unwrap_or(0);
        if want != got {
            v.counters_ok = false;
            v.errors
                .push(format!("counter {reason}: {got} packets, want {want}"));
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::{COPIES, Expect, find_marker, judge, plan};

    const B: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const G: [u8; 6] = [2, 0, 0, 0, 0, 2];
    const P: [u8; 6] = [2, 0, 0, 0, 0, 3];

    #[test]
    fn every_frame_carries_its_marker() {
        for c in plan(B, G, P) {
            for (seq, f) in c.frames.iter().enumerate() {
                assert_eq!(find_marker(f), Some((c.id, seq as u16)), "{}", c.name);
            }
        }
    }

    #[test]
    fn judge_needs_counters_and_arrivals() {
        let p = plan(B, G, P);
        let n = u32::from(COPIES);
        let mut at_bridge = BTreeMap::new();
        let mut at_peer = BTreeMap::new();
        let mut counters = BTreeMap::new();
        for c in &p {
            match c.expect {
                Expect::Drop(r) => *counters.entry(r.to_owned()).or_insert(0) += u64::from(n),
                Expect::Host => {
                    at_bridge.insert(c.id, n);
                }
                Expect::Peer => {
                    at_peer.insert(c.id, n);
                }
                Expect::HostAndPeer => {
                    at_bridge.insert(c.id, n);
                    at_peer.insert(c.id, n);
                }
            }
        }
        let v = judge(&p, &at_bridge, &at_peer, &counters);
        assert!(v.counters_ok && v.errors.is_empty(), "{:?}", v.errors);
        assert_eq!(v.attacks_blocked, v.attacks_sent);
        assert_eq!(v.legit_ok, v.legit_sent);

        // One attack frame leaks and the counter is one short: both are reported.
        at_bridge.insert(1, 1);
        *counters.get_mut("deny_ipv4").expect("deny_ipv4") -= 1;
        let v = judge(&p, &at_bridge, &at_peer, &counters);
        assert!(!v.counters_ok);
        assert_eq!(v.attacks_blocked, v.attacks_sent - 1);
        assert_eq!(v.errors.len(), 2);
    }
}
