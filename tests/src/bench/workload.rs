//! What the bench feeds the programs: the frames of each path, and synthetic policies of any
//! size that keep those frames' verdicts fixed.
//!
//! The prefix rules follow the lab ([`crate::lab::addr`]): guests in 192.168.50.0/24, the
//! host's management network `10.10.0.0/24` and `fd00:10::/64` protected, the bridge MAC
//! host-bound. What no prefix decides goes to the route check, which looks routes up in the
//! routing world of the thread that runs the programs ([`crate::route_world`]): the paths that
//! reach it aim at that world's addresses (the uplink's default route, a network behind the
//! protected interface, a loopback address, the bridge's own address).

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use guard_common::model::{Policy, Rule};
use guard_common::{ACTION_DENY, CLASS_USER_FIRST};

use crate::cases::{BRIDGE_V4, LOCAL_LO, ROUTED_PROT, UNPROTECTED, VXLAN_PORT};
use crate::lab::addr;
use crate::packet::{Arp, Eth, Ipv4, Ipv6};
use crate::rng::Rng;
use crate::route_world;

/// The host's MAC (the bridge MAC of the lab): frames to it are host-bound.
pub const HOST_MAC: [u8; 6] = addr::BRIDGE_MAC;
/// The sending guest.
pub const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x00, 0x00, 0x11];
/// Another guest: frames to it are not addressed to the host.
pub const OTHER_GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x00, 0x00, 0x12];

/// The protected target of the prefix drop paths (covered by the /24 and /64 of the policy;
/// the peer gets the exact address, which is all xdp-filter can express).
pub const TARGET4: Ipv4Addr = addr::MGMT_SERVER4;
pub const TARGET6: Ipv6Addr = addr::MGMT_SERVER6;
/// Host-bound but unprotected: a guest's traffic the host routes to the internet (the routing
/// world's default route, out of the uplink).
pub const UNPROTECTED4: Ipv4Addr = Ipv4Addr::new(
    UNPROTECTED[0],
    UNPROTECTED[1],
    UNPROTECTED[2],
    UNPROTECTED[3],
);

/// Shortest Ethernet frame on the wire (without FCS): every frame is padded to it.
const MIN_FRAME: usize = 60;

/// The path whose xdp-filter drop the paths it cannot drop are compared with.
pub const PEER_REFERENCE: &str = "drop_ipv4";

/// One frame class of the micro bench, with the verdict each contender must give.
#[derive(Clone, Debug)]
pub struct Path {
    pub name: &'static str,
    pub what: &'static str,
    pub frame: Vec<u8>,
    /// guard drops it: the default datapath, prefix rules and the route check (every hook).
    pub guard_drops: bool,
    /// guard drops it with prefix rules only (`GLOBAL_FLAG_NO_ROUTE_CHECK`).
    pub prefix_only_drops: bool,
    /// Debian's xdp-filter 1.3.1 drops it (with the exact target addresses in its maps). Another
    /// object (`--peer`) may differ: that is reported, not fatal.
    pub peer_drops: bool,
    /// guard's port programs look its route up (`bpf_fib_lookup`; the bridge device's program
    /// also looks up `not_host`, which is host-bound there).
    pub route_lookup: bool,
}

/// The paths, in table order: issue 7's six, then one per check of the route-check datapath.
#[must_use]
pub fn paths() -> Vec<Path> {
    let udp4 = |dst: Ipv4Addr| Ipv4::new(addr::G1_4, dst).udp(40_000, 9, b"guard-bench");
    let to = |dst: [u8; 6]| Eth::new(dst, GUEST_MAC);
    let path =
        |name, what, eth: Eth, [guard_drops, prefix_only_drops, peer_drops]: [bool; 3]| Path {
            name,
            what,
            frame: eth.pad_to(MIN_FRAME).build(),
            guard_drops,
            prefix_only_drops,
            peer_drops,
            route_lookup: [
                "host_unprotected",
                "drop_route",
                "drop_local",
                "drop_tunnel",
            ]
            .contains(&name),
        };
    // Verdicts: [guard, prefix rules only, xdp-filter]; true drops.
    vec![
        path(
            "not_host",
            "unicast to another guest",
            to(OTHER_GUEST_MAC).ipv4(udp4(addr::G2_4)),
            [false, false, false],
        ),
        path(
            "host_unprotected",
            "host MAC, IPv4 the host routes out of the uplink (route lookup, pass)",
            to(HOST_MAC).ipv4(udp4(UNPROTECTED4)),
            [false, false, false],
        ),
        path(
            "drop_ipv4",
            "host MAC, IPv4 UDP to the management network",
            to(HOST_MAC).ipv4(udp4(TARGET4)),
            [true, true, true],
        ),
        path(
            "drop_ipv6",
            "host MAC, IPv6 UDP to the management network",
            to(HOST_MAC).ipv6(Ipv6::new(addr::G1_6, TARGET6).udp(40_000, 9, b"guard-bench")),
            [true, true, true],
        ),
        path(
            "drop_vlan",
            "as drop_ipv4, behind an 802.1Q tag",
            to(HOST_MAC).vlan(100).ipv4(udp4(TARGET4)),
            [true, true, true],
        ),
        path(
            "drop_arp",
            "broadcast ARP request for a management address",
            to([0xff; 6]).arp(Arp::request(GUEST_MAC, addr::G1_4, TARGET4)),
            // xdp-filter 1.3.1's IP filter does not parse ARP (1.5.7 does).
            [true, true, false],
        ),
        path(
            "drop_route",
            "host MAC, IPv4 routed out of the protected interface, no prefix rule",
            to(HOST_MAC).ipv4(udp4(ROUTED_PROT.into())),
            [true, false, false],
        ),
        path(
            "drop_local",
            "host MAC, IPv4 to a host address on lo, no prefix rule",
            to(HOST_MAC).ipv4(udp4(LOCAL_LO.into())),
            [true, false, false],
        ),
        path(
            "drop_tunnel",
            "host MAC, VXLAN to the bridge's own address",
            to(HOST_MAC).ipv4(Ipv4::new(addr::G1_4, BRIDGE_V4).udp(
                40_000,
                VXLAN_PORT,
                b"guard-bench",
            )),
            // Without the route check every tunnel is dropped; xdp-filter's IP filter has no
            // ports.
            [true, true, false],
        ),
        path(
            "drop_srcroute",
            "host MAC, IPv4 with a loose source route (LSRR) to an unprotected address",
            to(HOST_MAC).ipv4(udp4(UNPROTECTED4).options(&[0x83, 7, 4, 203, 0, 113, 1, 0])),
            [true, true, false],
        ),
    ]
}

/// One prefix of a synthetic policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

/// The prefixes every synthetic policy starts with: what guard's discovery would protect on
/// the lab host (the management network and the host's own addresses on it).
#[must_use]
pub fn base_prefixes() -> Vec<Prefix> {
    vec![
        Prefix {
            addr: IpAddr::V4(Ipv4Addr::new(10, 10, 0, 0)),
            len: 24,
        },
        Prefix {
            addr: IpAddr::V4(addr::HOST_MGMT4),
            len: 32,
        },
        Prefix {
            addr: IpAddr::V6(Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 0, 0)),
            len: 64,
        },
        Prefix {
            addr: IpAddr::V6(addr::HOST_MGMT6),
            len: 128,
        },
    ]
}

/// Realistic lengths, weighted toward what operators write: many /24-/32 and /48-/64 and host
/// routes, few short prefixes.
const V4_LENS: [u8; 18] = [
    8, 12, 16, 16, 20, 22, 24, 24, 24, 24, 26, 28, 29, 30, 32, 32, 32, 32,
];
const V6_LENS: [u8; 19] = [
    32, 40, 44, 48, 48, 48, 56, 56, 64, 64, 64, 64, 96, 112, 120, 127, 128, 128, 128,
];

fn mask_v4(a: u32, len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        a & (u32::MAX << (32 - u32::from(len)))
    }
}

fn mask_v6(a: u128, len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        a & (u128::MAX << (128 - u32::from(len)))
    }
}

/// `n` distinct deny prefixes (at least the [`base_prefixes`]), about half IPv4 and half IPv6.
/// The random ones stay out of 0/8-10/8, 127/8, 172/8, 192/8, 198/8, 203/8 and multicast (so
/// they never cover a bench frame's address, the routing world's included, and never change a
/// verdict), and out of `fc00::/7` for IPv6.
#[must_use]
pub fn prefixes(n: usize) -> Vec<Prefix> {
    let mut out = base_prefixes();
    let mut seen: HashSet<Prefix> = out.iter().copied().collect();
    let mut rng = Rng(0x6775_6172_6462_656e ^ n as u64);
    while out.len() < n {
        let p = if out.len().is_multiple_of(2) {
            let len = rng.pick(&V4_LENS);
            let a = loop {
                let a = rng.next_u64() as u32;
                let first = a >> 24;
                if (11..224).contains(&first) && ![127, 172, 192, 198, 203].contains(&first) {
                    break a;
                }
            };
            Prefix {
                addr: IpAddr::V4(Ipv4Addr::from(mask_v4(a, len))),
                len,
            }
        } else {
            let len = rng.pick(&V6_LENS);
            // Global unicast, 2000::/3.
            let a = (u128::from(rng.next_u64()) << 64 | u128::from(rng.next_u64())) >> 3
                | (1u128 << 125);
            Prefix {
                addr: IpAddr::V6(Ipv6Addr::from(mask_v6(a, len))),
                len,
            }
        };
        if seen.insert(p) {
            out.push(p);
        }
    }
    out.truncate(n.max(base_prefixes().len()));
    out
}

/// The policy guard's kernel harness loads: the host MAC and `prefixes` as deny rules, and the
/// route check as `guardctl attach` configures it ([`route_world::as_attached`]): the default
/// datapath.
#[must_use]
pub fn guard_policy(prefixes: &[Prefix]) -> Policy {
    route_world::as_attached(Policy {
        host_macs: vec![HOST_MAC],
        rules: prefixes
            .iter()
            .enumerate()
            .map(|(i, p)| Rule {
                addr: p.addr,
                prefix_len: p.len,
                action: ACTION_DENY,
                rule_id: i as u32 + 1,
                class: CLASS_USER_FIRST,
            })
            .collect(),
        ..Policy::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_distinct_and_sized() {
        for n in [4, 10, 1000] {
            let p = prefixes(n);
            assert_eq!(p.len(), n);
            let set: HashSet<_> = p.iter().collect();
            assert_eq!(set.len(), n);
        }
    }

    #[test]
    fn random_prefixes_never_cover_bench_addresses() {
        for p in prefixes(5000).into_iter().skip(base_prefixes().len()) {
            match p.addr {
                IpAddr::V4(a) => {
                    for t in [
                        TARGET4,
                        UNPROTECTED4,
                        addr::G2_4,
                        ROUTED_PROT.into(),
                        LOCAL_LO.into(),
                        BRIDGE_V4.into(),
                    ] {
                        assert_ne!(
                            mask_v4(u32::from(t), p.len),
                            u32::from(a),
                            "{a}/{} covers {t}",
                            p.len
                        );
                    }
                }
                IpAddr::V6(a) => assert_eq!(u128::from(a) >> 125, 1, "{a} not in 2000::/3"),
            }
        }
    }
}
