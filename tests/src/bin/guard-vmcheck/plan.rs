//! The attack plan: the frames a guest sends through a bridge port, attacks and legitimate
//! traffic, each with where it would arrive and what guard must count. Shared by the
//! namespace test inside the guests and the real guest on a tap.

use std::net::{Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use crate::frames::{
    BROADCAST, ETH_P_8021Q, ETH_P_ARP, ETH_P_IPV4, ETH_P_IPV6, Mac, arp_request, cat, eth, ipv4,
    ipv6, ipv6_plain, marker, ndp_ns, solicited_node,
};

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
/// with MAC `peer`.
#[must_use]
#[expect(
    clippy::too_many_lines,
    reason = "a table of cases, one entry each, read top to bottom"
)]
pub fn plan(bridge: Mac, guest: Mac, peer: Mac) -> Vec<Case> {
    let (sn_ip, sn_mac) = solicited_node(MGMT6);
    let specs: Vec<(u16, &'static str, Expect, Build)> = vec![
        (
            1,
            "ipv4 to bridge MAC, storage address",
            Expect::Drop("deny_ipv4"),
            Box::new(move |m| {
                cat(
                    eth(bridge, guest, &[], ETH_P_IPV4),
                    &ipv4(GUEST_IP, STORAGE, m),
                )
            }),
        ),
        (
            2,
            "ipv4 in L2 broadcast, storage address",
            Expect::Drop("deny_ipv4"),
            Box::new(move |m| {
                cat(
                    eth(BROADCAST, guest, &[], ETH_P_IPV4),
                    &ipv4(GUEST_IP, STORAGE, m),
                )
            }),
        ),
        (
            3,
            "ipv4 in 802.1Q tag, storage address",
            Expect::Drop("deny_ipv4"),
            Box::new(move |m| {
                cat(
                    eth(bridge, guest, &[(ETH_P_8021Q, 10)], ETH_P_IPV4),
                    &ipv4(GUEST_IP, STORAGE, m),
                )
            }),
        ),
        (
            4,
            "arp who-has storage address",
            Expect::Drop("deny_arp"),
            Box::new(move |m| {
                let mut f = cat(
                    eth(BROADCAST, guest, &[], ETH_P_ARP),
                    &arp_request(guest, GUEST_IP, STORAGE),
                );
                f.extend_from_slice(m);
                f
            }),
        ),
        (
            5,
            "ipv6 to bridge MAC, management address",
            Expect::Drop("deny_ipv6"),
            Box::new(move |m| {
                cat(
                    eth(bridge, guest, &[], ETH_P_IPV6),
                    &ipv6_plain(GUEST6, MGMT6, m),
                )
            }),
        ),
        (
            6,
            "ndp solicitation for management address",
            Expect::Drop("deny_ndp"),
            Box::new(move |m| {
                cat(
                    eth(sn_mac, guest, &[], ETH_P_IPV6),
                    &ipv6(GUEST6, sn_ip, 58, &ndp_ns(MGMT6, m)),
                )
            }),
        ),
        (
            101,
            "ipv4 to bridge MAC, bridge's own unprotected address",
            Expect::Host,
            Box::new(move |m| {
                cat(
                    eth(bridge, guest, &[], ETH_P_IPV4),
                    &ipv4(GUEST_IP, BRIDGE_IP, m),
                )
            }),
        ),
        (
            102,
            "ipv4 to the peer guest",
            Expect::Peer,
            Box::new(move |m| {
                cat(
                    eth(peer, guest, &[], ETH_P_IPV4),
                    &ipv4(GUEST_IP, PEER_IP, m),
                )
            }),
        ),
        (
            103,
            "arp who-has bridge address",
            Expect::HostAndPeer,
            Box::new(move |m| {
                let mut f = cat(
                    eth(BROADCAST, guest, &[], ETH_P_ARP),
                    &arp_request(guest, GUEST_IP, BRIDGE_IP),
                );
                f.extend_from_slice(m);
                f
            }),
        ),
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

    use super::{COPIES, Expect, judge, plan};
    use crate::frames::find_marker;

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
