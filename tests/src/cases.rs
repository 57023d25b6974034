//! The datapath case table: named frames, each with the verdict, reason and rule id the
//! contract (docs/datapath.md) requires under one of four policies, and the runner that checks
//! them against the reference model and guard's programs (`BPF_PROG_TEST_RUN`) with exact
//! counter deltas.
//!
//! Step 10 (exceptions and replies) has its own policies ([`Setup::Step10`] and its
//! variants): [`step10_policy`] adds exceptions and open flows to the base policy.
//!
//! Shared by tests/tests/datapath.rs (on the build host, release and debug objects) and
//! `guard-vmcheck matrix` (inside the test VMs, on other kernels).

use std::net::Ipv6Addr;

use anyhow::{Context as _, Result};
use guard_common::model::{Decision, Exception, Flow, Policy, Rule, Scope, classify};
use guard_common::{
    ACTION_ALLOW, ACTION_DENY, CLASS_GUEST_NETWORK, CLASS_HOST, CLASS_MANAGEMENT, CLASS_STORAGE,
    reason,
};

use crate::datapath::{
    Datapath, Hook, MIN_FRAME, TEST_IFINDEX, expected_run, hex, skb_test_run_refuses,
};
use crate::packet::{
    Arp, BROADCAST, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IPV4, ETH_P_IPV6, ETH_P_LLDP, Eth, Ext,
    IPPROTO_FRAGMENT, IPPROTO_HOPOPTS, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_NONE, IPPROTO_ROUTING,
    IPPROTO_TCP, IPPROTO_UDP, Ipv4, Ipv6, ipv6_multicast_mac, solicited_node,
};
use crate::route_world;

// ---------------------------------------------------------------------------------------------
// The policy every case starts from.

pub const BRIDGE_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0xbb, 0x00, 0x01];
/// A bridge port's own MAC (a permanent local FDB entry).
pub const PORT_MAC: [u8; 6] = [0xfe, 0x54, 0x00, 0x00, 0x00, 0x07];
/// Another local interface the bridge may deliver to.
pub const OTHER_IF_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0xcc, 0x00, 0x02];
pub const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
pub const PEER_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x65, 0x43, 0x21];
pub const IPV4_MCAST_MAC: [u8; 6] = [0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb];
pub const LLDP_MAC: [u8; 6] = [0x01, 0x80, 0xc2, 0x00, 0x00, 0x0e];

pub const GUEST_V4: [u8; 4] = [172, 16, 0, 10];
pub const STORAGE: [u8; 4] = [10, 0, 0, 1];
pub const HOLE: [u8; 4] = [10, 1, 2, 3];
pub const DENY_IN_HOLE: [u8; 4] = [10, 1, 2, 200];
pub const NEAR_HOLE: [u8; 4] = [10, 1, 3, 1];
pub const MGMT_NET: [u8; 4] = [192, 168, 100, 7];
pub const MGMT_HOST: [u8; 4] = [192, 168, 100, 1];
pub const UNPROTECTED: [u8; 4] = [8, 8, 8, 8];
/// Routed out of the protected interface through a gateway (no prefix rule covers it).
pub const ROUTED_PROT: [u8; 4] = [198, 18, 5, 5];
/// On a connected subnet of the protected interface (no neighbour entry).
pub const CONNECTED_PROT: [u8; 4] = [100, 64, 0, 9];
/// A host address on loopback that no prefix rule covers.
pub const LOCAL_LO: [u8; 4] = [192, 0, 2, 1];
/// The guest bridge's own address (a local address inside the allowed guest network).
pub const BRIDGE_V4: [u8; 4] = [172, 16, 0, 1];
/// Another guest, routed back into the bridge.
pub const HAIRPIN_V4: [u8; 4] = [172, 16, 0, 20];
/// Behind an unreachable route, and a blackhole route.
pub const UNREACHABLE_V4: [u8; 4] = [198, 51, 100, 7];
pub const BLACKHOLE_V4: [u8; 4] = [198, 51, 101, 7];
/// The protected interface's subnet broadcast (a local-table entry).
pub const PROT_BROADCAST: [u8; 4] = [100, 64, 0, 255];
/// UDP to VXLAN's port.
pub const VXLAN_PORT: u16 = 4789;

#[must_use]
pub fn v6(s: &str) -> Ipv6Addr {
    s.parse().expect("test address")
}

#[must_use]
pub fn guest_v6() -> Ipv6Addr {
    v6("fe80::5054:ff:fe12:3456")
}

#[must_use]
pub fn rule(addr: &str, prefix_len: u8, action: u16, rule_id: u32, class: u16) -> Rule {
    Rule {
        addr: addr.parse().expect("test address"),
        prefix_len,
        action,
        rule_id,
        class,
    }
}

/// The base policy: prefix rules, and the route check as attach configures it in the routing
/// world ([`route_world::as_attached`]).
#[must_use]
pub fn base_policy() -> Policy {
    route_world::as_attached(Policy {
        host_macs: vec![BRIDGE_MAC, PORT_MAC, OTHER_IF_MAC],
        rules: vec![
            rule("10.0.0.0", 8, ACTION_DENY, 1, CLASS_STORAGE),
            rule("10.1.2.0", 24, ACTION_ALLOW, 2, CLASS_STORAGE),
            rule("10.1.2.128", 25, ACTION_DENY, 3, CLASS_STORAGE),
            rule("192.168.100.0", 24, ACTION_DENY, 4, CLASS_MANAGEMENT),
            rule("192.168.100.1", 32, ACTION_DENY, 5, CLASS_HOST),
            rule("fd00::", 16, ACTION_DENY, 6, CLASS_STORAGE),
            rule("fd00:1::", 32, ACTION_ALLOW, 7, CLASS_STORAGE),
            rule("fd00:1:0:1::", 64, ACTION_DENY, 8, CLASS_STORAGE),
            rule("2001:db8:100::1", 128, ACTION_DENY, 9, CLASS_HOST),
            // The guest bridge's own networks, as attach allows them by default.
            rule("172.16.0.0", 24, ACTION_ALLOW, 10, CLASS_GUEST_NETWORK),
            rule("2001:db8:50::", 64, ACTION_ALLOW, 11, CLASS_GUEST_NETWORK),
        ],
        ingress_ifindex: TEST_IFINDEX,
        ..Policy::default()
    })
}

/// Another port's ifindex, for exceptions scoped to it (never a test run's).
pub const OTHER_PORT: u32 = 7;
/// A guest's ports and echo identifiers of the open flows of [`step10_policy`].
pub const GUEST_SSH: u16 = 22;
pub const PEER_PORT: u16 = 50000;
pub const GUEST_UDP: u16 = 5353;
pub const ECHO_ID: u16 = 77;
pub const ECHO_ID_V6: u16 = 9;

#[must_use]
pub fn exception(
    scope: Scope,
    proto: u8,
    dport: u16,
    addr: &str,
    prefix_len: u8,
    rule_id: u32,
) -> Exception {
    Exception {
        scope,
        proto,
        dport,
        addr: addr.parse().expect("test address"),
        prefix_len,
        rule_id,
    }
}

#[must_use]
pub fn flow(guest: &str, guest_port: u16, peer: &str, peer_port: u16, proto: u8) -> Flow {
    Flow {
        guest: guest.parse().expect("test address"),
        guest_port,
        peer: peer.parse().expect("test address"),
        peer_port,
        proto,
    }
}

/// The base policy with step 10 on: exceptions over the denied prefixes and the route
/// check's denials, and flows the protected side started toward the guest.
#[must_use]
pub fn step10_policy() -> Policy {
    let here = Scope::Ifindex(TEST_IFINDEX);
    let all = Scope::All;
    let (tcp, udp) = (IPPROTO_TCP, IPPROTO_UDP);
    Policy {
        exceptions: true,
        replies: true,
        exception_table: vec![
            // iSCSI from this port to storage; the port's scope comes first.
            exception(here, tcp, 3260, "10.0.0.0", 8, 101),
            exception(all, udp, 53, "192.168.100.0", 24, 102),
            exception(Scope::Ifindex(OTHER_PORT), 0, 0, "10.1.3.0", 24, 103),
            exception(all, udp, 2049, "fd00::", 16, 104),
            exception(all, 0, 0, "fd00:1:0:1::", 64, 105),
            exception(all, tcp, 443, "198.18.0.0", 16, 106),
            exception(all, 0, 0, "192.0.2.1", 32, 107),
            exception(all, 0, 0, "172.16.0.1", 32, 108),
            exception(all, 0, 0, "10.1.2.200", 32, 109),
            exception(here, tcp, 0, "192.168.100.0", 24, 110),
            exception(here, tcp, 22, "2001:db8:300::", 48, 111),
        ],
        flows: vec![
            flow("172.16.0.10", GUEST_SSH, "10.0.0.1", PEER_PORT, tcp),
            flow("172.16.0.10", GUEST_UDP, "198.18.5.5", 40000, udp),
            flow("172.16.0.10", ECHO_ID, "10.0.0.1", 0, IPPROTO_ICMP),
            flow(
                "2001:db8:50::10",
                ECHO_ID_V6,
                "2001:db8:300::5",
                0,
                IPPROTO_ICMPV6,
            ),
            // Both an exception (101) and a flow: the exception comes first.
            flow("172.16.0.10", GUEST_SSH, "10.0.0.1", 3260, tcp),
            // Echo identifier 0: what a later fragment (no ICMP header) must not be taken for.
            flow("172.16.0.10", 0, "192.168.100.7", 0, IPPROTO_ICMP),
        ],
        ..base_policy()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setup {
    Base,
    Strict,
    Monitor,
    PortMonitor,
    /// Prefix rules only (`--route-check off`).
    NoRouteCheck,
    /// Tunnels to the host let through.
    AllowTunnels,
    /// Step 10: exceptions and replies on ([`step10_policy`]).
    Step10,
    /// The same tables, only exceptions on.
    ExceptionsOnly,
    /// The same tables, only replies on.
    RepliesOnly,
    /// Step 10 and the global monitor flag.
    Step10Monitor,
}

impl Setup {
    pub const ALL: [Setup; 10] = [
        Setup::Base,
        Setup::Strict,
        Setup::Monitor,
        Setup::PortMonitor,
        Setup::NoRouteCheck,
        Setup::AllowTunnels,
        Setup::Step10,
        Setup::ExceptionsOnly,
        Setup::RepliesOnly,
        Setup::Step10Monitor,
    ];

    #[must_use]
    pub fn policy(self) -> Policy {
        let mut p = match self {
            Setup::Step10 | Setup::ExceptionsOnly | Setup::RepliesOnly | Setup::Step10Monitor => {
                step10_policy()
            }
            _ => base_policy(),
        };
        match self {
            Setup::Base | Setup::Step10 => {}
            Setup::Strict => p.strict_mac = true,
            Setup::Monitor | Setup::Step10Monitor => p.monitor = true,
            Setup::PortMonitor => p.port_monitor = true,
            Setup::NoRouteCheck => p.route_check = false,
            Setup::AllowTunnels => p.allow_tunnels = true,
            Setup::ExceptionsOnly => p.replies = false,
            Setup::RepliesOnly => p.exceptions = false,
        }
        p
    }
}

// ---------------------------------------------------------------------------------------------
// The table.

pub struct Case {
    pub name: &'static str,
    pub frame: Vec<u8>,
    pub setup: Setup,
    pub drop: bool,
    pub reason: u32,
    pub rule_id: u32,
}

/// Frame builders for the common shapes.
#[must_use]
pub fn to(dst: [u8; 6]) -> Eth {
    Eth::new(dst, GUEST_MAC)
}

#[must_use]
pub fn udp4(dst: [u8; 4]) -> Ipv4 {
    Ipv4::new(GUEST_V4, dst).udp(40000, 3260, b"iscsi?")
}

/// A guest's global IPv6 address (inside the guest network `2001:db8:50::/64`): the kernel
/// never forwards a packet with a link-local source, so routed cases use this one.
#[must_use]
pub fn guest_global_v6() -> Ipv6Addr {
    v6("2001:db8:50::10")
}

#[must_use]
pub fn udp6(dst: &str) -> Ipv6 {
    Ipv6::new(guest_global_v6(), v6(dst)).udp(40000, 2049, b"nfs?")
}

#[must_use]
pub fn ns(target: &str) -> Ipv6 {
    Ipv6::new(guest_v6(), Ipv6Addr::UNSPECIFIED).neighbour_solicitation(v6(target), Some(GUEST_MAC))
}

/// An NS frame to the target's solicited-node multicast MAC, with extension headers `exts`.
#[must_use]
pub fn ns_frame(target: &str, exts: &[Ext]) -> Eth {
    let mut p = ns(target);
    for e in exts {
        p = p.ext(e.clone());
    }
    to(ipv6_multicast_mac(solicited_node(v6(target)))).ipv6(p)
}

#[must_use]
pub fn hbh() -> Ext {
    Ext::HopByHop { len_units: 0 }
}

// One case per line reads as a table; rustfmt would spread each over eight lines.
#[rustfmt::skip]
#[expect(clippy::too_many_lines, reason = "one line per case reads best as one list")]
#[must_use]
pub fn cases() -> Vec<Case> {
    use Setup::{Base, Monitor, PortMonitor, Strict};
    use Setup::{AllowTunnels, NoRouteCheck};
    use Setup::{ExceptionsOnly, RepliesOnly, Step10, Step10Monitor};
    use reason::{
        ALLOW, DENY_ARP, DENY_IPV4, DENY_IPV6, DENY_LOCAL, DENY_NDP, DENY_ROUTE, DENY_SRCROUTE,
        DENY_TUNNEL, EXCEPTION, HOST_PASS, MALFORMED, REPLY, MONITOR_ARP, MONITOR_IPV4, MONITOR_IPV6, MONITOR_LOCAL,
        MONITOR_MALFORMED, MONITOR_NDP, MONITOR_ROUTE, MONITOR_SRCROUTE, MONITOR_TUNNEL, NOT_HOST,
    };
    // A connected route of the protected interface has no neighbour entry: kernels before 6.3
    // give no egress interface for it (docs/datapath.md, `R`), and the route check passes.
    let (no_neigh_drop, no_neigh_reason) = if base_policy().fib_egress_without_neigh {
        (true, DENY_ROUTE)
    } else {
        (false, HOST_PASS)
    };
    let lsrr = |dst| udp4(dst).options(&[0x83, 7, 4, 203, 0, 113, 1, 0]);
    let vxlan4 = |dst: [u8; 4]| Ipv4::new(GUEST_V4, dst).udp(40000, VXLAN_PORT, &[8, 0, 0, 0, 0, 0, 1, 0]);
    let vxlan6 = |dst: &str| Ipv6::new(guest_global_v6(), v6(dst)).udp(40000, VXLAN_PORT, &[8, 0, 0, 0, 0, 0, 1, 0]);
    // A routing header of `kind` with `left` segments left and one 16-byte segment.
    let rh = |kind: u8, left: u8| {
        let mut rest = vec![2, kind, left, 0, 0, 0, 0];
        rest.extend_from_slice(&v6("fd00:20::2").octets());
        Ext::Raw { code: IPPROTO_ROUTING, rest }
    };
    let c = |name, frame: Eth, setup, drop, reason, rule_id| Case {
        name,
        frame: frame.build(),
        setup,
        drop,
        reason,
        rule_id,
    };
    let arp_req = |spa: [u8; 4], tpa: [u8; 4]| to(BROADCAST).arp(Arp::request(GUEST_MAC, spa, tpa));
    let tcp4 = |dst: [u8; 4], sport, dport, flags| to(BRIDGE_MAC).ipv4(Ipv4::new(GUEST_V4, dst).tcp(sport, dport, flags));
    // An ICMP echo reply (type 0) with identifier `id`; the datapath reads no checksum.
    let echo_reply4 = |dst: [u8; 4], id: u16| { let [hi, lo] = id.to_be_bytes(); to(BRIDGE_MAC).ipv4(Ipv4::new(GUEST_V4, dst).payload(IPPROTO_ICMP, &[0, 0, 0, 0, hi, lo, 0, 1])) };
    let later_fragment4 = |dst: [u8; 4], proto: u8| to(BRIDGE_MAC).ipv4(Ipv4::new(GUEST_V4, dst).payload(proto, &[0; 16]).fragment(185, false));
    let (syn, syn_ack, ack) = (0x02, 0x12, 0x10);
    let seven: Vec<Ext> = (0..7).map(|_| hbh()).collect();
    let six: Vec<Ext> = (0..6).map(|_| hbh()).collect();
    vec![
        // Rule 1: not addressed to the host, never looked at further.
        c("not_host_to_peer_guest", to(PEER_MAC).ipv4(udp4(STORAGE)), Base, false, NOT_HOST, 0),
        c("not_host_ignores_bad_ihl", to(PEER_MAC).ipv4(udp4(STORAGE).ihl(3)), Base, false, NOT_HOST, 0),
        c("not_host_tagged", to(PEER_MAC).vlan(100).ipv4(udp4(STORAGE)), Base, false, NOT_HOST, 0),
        c("not_host_three_tags", to(PEER_MAC).vlan(1).vlan(2).vlan(3).ipv4(udp4(STORAGE)), Base, false, NOT_HOST, 0),
        c("not_host_truncated", to(PEER_MAC).ipv4(udp4(STORAGE)).truncate(20), Base, false, NOT_HOST, 0),
        // Host-bound kinds, rule 2.
        c("bridge_mac_deny_ipv4", to(BRIDGE_MAC).ipv4(udp4(STORAGE)), Base, true, DENY_IPV4, 1),
        c("port_mac_deny_ipv4", to(PORT_MAC).ipv4(udp4(STORAGE)), Base, true, DENY_IPV4, 1),
        c("other_host_mac_deny_ipv4", to(OTHER_IF_MAC).ipv4(udp4(STORAGE)), Base, true, DENY_IPV4, 1),
        c("broadcast_deny_ipv4", to(BROADCAST).ipv4(udp4(STORAGE)), Base, true, DENY_IPV4, 1),
        c("ipv4_multicast_mac_deny_ipv4", to(IPV4_MCAST_MAC).ipv4(udp4(STORAGE)), Base, true, DENY_IPV4, 1),
        c("ipv6_multicast_mac_deny_ipv6", to([0x33, 0x33, 0, 0, 0, 1]).ipv6(udp6("fd00::1")), Base, true, DENY_IPV6, 6),
        c("strict_broadcast_not_host", to(BROADCAST).ipv4(udp4(STORAGE)), Strict, false, NOT_HOST, 0),
        c("strict_multicast_not_host", to(IPV4_MCAST_MAC).ipv4(udp4(STORAGE)), Strict, false, NOT_HOST, 0),
        c("strict_bridge_mac_deny_ipv4", to(BRIDGE_MAC).ipv4(udp4(STORAGE)), Strict, true, DENY_IPV4, 1),
        c("strict_port_mac_deny_ipv4", to(PORT_MAC).ipv4(udp4(STORAGE)), Strict, true, DENY_IPV4, 1),
        c("strict_broadcast_arp_not_host", to(BROADCAST).arp(Arp::request(GUEST_MAC, GUEST_V4, STORAGE)), Strict, false, NOT_HOST, 0),
        // Prefixes: longest wins, holes both ways.
        c("ipv4_unprotected_host_pass", to(BRIDGE_MAC).ipv4(udp4(UNPROTECTED)), Base, false, HOST_PASS, 0),
        c("ipv4_mgmt_net_deny", to(BRIDGE_MAC).ipv4(udp4(MGMT_NET)), Base, true, DENY_IPV4, 4),
        c("ipv4_host_route_beats_net", to(BRIDGE_MAC).ipv4(udp4(MGMT_HOST)), Base, true, DENY_IPV4, 5),
        c("ipv4_allow_hole_inside_deny", to(BRIDGE_MAC).ipv4(udp4(HOLE)), Base, false, ALLOW, 0),
        c("ipv4_deny_inside_allow_hole", to(BRIDGE_MAC).ipv4(udp4(DENY_IN_HOLE)), Base, true, DENY_IPV4, 3),
        c("ipv4_deny_next_to_hole", to(BRIDGE_MAC).ipv4(udp4(NEAR_HOLE)), Base, true, DENY_IPV4, 1),
        c("ipv4_tcp_syn_deny", to(BRIDGE_MAC).ipv4(Ipv4::new(GUEST_V4, MGMT_HOST).tcp(40000, 22, 0x02)), Base, true, DENY_IPV4, 5),
        c("ipv4_icmp_echo_deny", to(BRIDGE_MAC).ipv4(Ipv4::new(GUEST_V4, STORAGE).icmp_echo(1, 1)), Base, true, DENY_IPV4, 1),
        c("ipv6_deny", to(BRIDGE_MAC).ipv6(udp6("fd00::1")), Base, true, DENY_IPV6, 6),
        c("ipv6_allow_hole_inside_deny", to(BRIDGE_MAC).ipv6(udp6("fd00:1::5")), Base, false, ALLOW, 0),
        c("ipv6_deny_inside_allow_hole", to(BRIDGE_MAC).ipv6(udp6("fd00:1:0:1::9")), Base, true, DENY_IPV6, 8),
        c("ipv6_host_route_deny", to(BRIDGE_MAC).ipv6(udp6("2001:db8:100::1")), Base, true, DENY_IPV6, 9),
        c("ipv6_next_to_host_route_pass", to(BRIDGE_MAC).ipv6(udp6("2001:db8:100::2")), NoRouteCheck, false, HOST_PASS, 0),
        // ... but the host's network it sits in is protected by the route check.
        c("ipv6_next_to_host_route_deny_route", to(BRIDGE_MAC).ipv6(udp6("2001:db8:100::2")), Base, true, DENY_ROUTE, 0),
        c("ipv6_tcp_deny", to(BRIDGE_MAC).ipv6(Ipv6::new(guest_v6(), v6("fd00::22")).tcp(1, 22, 0x02)), Base, true, DENY_IPV6, 6),
        // IPv4 header handling.
        c("ipv4_options_deny", to(BRIDGE_MAC).ipv4(udp4(STORAGE).options(&[0x94, 4, 0, 0, 1, 1, 1, 0])), Base, true, DENY_IPV4, 1),
        c("ipv4_options_host_pass", to(BRIDGE_MAC).ipv4(udp4(UNPROTECTED).options(&[0x07, 7, 4, 0, 0, 0, 0])), Base, false, HOST_PASS, 0),
        c("ipv4_first_fragment_deny", to(BRIDGE_MAC).ipv4(udp4(STORAGE).fragment(0, true)), Base, true, DENY_IPV4, 1),
        c("ipv4_later_fragment_deny", to(BRIDGE_MAC).ipv4(Ipv4::new(GUEST_V4, STORAGE).payload(IPPROTO_UDP, &[7; 16]).fragment(185, false)), Base, true, DENY_IPV4, 1),
        c("ipv4_ihl_4_malformed", to(BRIDGE_MAC).ipv4(udp4(UNPROTECTED).ihl(4)), Base, true, MALFORMED, 0),
        c("ipv4_ihl_0_malformed", to(BRIDGE_MAC).ipv4(udp4(UNPROTECTED).ihl(0)), Base, true, MALFORMED, 0),
        c("ipv4_ihl_past_frame_malformed", to(BRIDGE_MAC).ipv4(udp4(UNPROTECTED).ihl(15)), Base, true, MALFORMED, 0),
        c("ipv4_version_6_malformed", to(BRIDGE_MAC).ipv4(udp4(UNPROTECTED).version(6)), Base, true, MALFORMED, 0),
        c("ipv4_tot_len_too_big_malformed", to(BRIDGE_MAC).ipv4(udp4(UNPROTECTED).tot_len(1000)), Base, true, MALFORMED, 0),
        c("ipv4_tot_len_below_header_malformed", to(BRIDGE_MAC).ipv4(udp4(UNPROTECTED).tot_len(19)), Base, true, MALFORMED, 0),
        c("ipv4_ethernet_padding_ok", to(BRIDGE_MAC).ipv4(Ipv4::new(GUEST_V4, STORAGE).payload(IPPROTO_TCP, &[])).pad_to(60), Base, true, DENY_IPV4, 1),
        // Truncation at every header boundary (a frame below 14 bytes cannot be test-run: the
        // model's unit tests cover it).
        c("trunc_after_ethernet", to(BRIDGE_MAC).ipv4(udp4(UNPROTECTED)).truncate(14), Base, true, MALFORMED, 0),
        c("trunc_inside_vlan_tag", to(BRIDGE_MAC).vlan(5).ipv4(udp4(UNPROTECTED)).truncate(16), Base, true, MALFORMED, 0),
        c("trunc_after_vlan_tag", to(BRIDGE_MAC).vlan(5).ipv4(udp4(UNPROTECTED)).truncate(18), Base, true, MALFORMED, 0),
        c("trunc_inside_ipv4_header", to(BRIDGE_MAC).ipv4(udp4(STORAGE)).truncate(14 + 19), Base, true, MALFORMED, 0),
        c("trunc_ipv4_options", to(BRIDGE_MAC).ipv4(udp4(UNPROTECTED).options(&[1; 8])).truncate(14 + 24), Base, true, MALFORMED, 0),
        c("trunc_ipv4_payload", to(BRIDGE_MAC).ipv4(udp4(UNPROTECTED)).truncate(14 + 20 + 4), Base, true, MALFORMED, 0),
        c("trunc_inside_ipv6_header", to(BRIDGE_MAC).ipv6(udp6("2001:db8::1")).truncate(14 + 39), Base, true, MALFORMED, 0),
        c("trunc_ipv6_payload", to(BRIDGE_MAC).ipv6(udp6("2001:db8::1")).truncate(14 + 40 + 4), Base, true, MALFORMED, 0),
        c("trunc_ipv6_ext_header", to(BRIDGE_MAC).ipv6(udp6("2001:db8::1").next_header(IPPROTO_HOPOPTS).payload_len(0)).truncate(14 + 41), Base, true, MALFORMED, 0),
        c("trunc_ipv6_fragment_header", to(BRIDGE_MAC).ipv6(Ipv6::new(guest_v6(), v6("2001:db8::1")).next_header(IPPROTO_FRAGMENT).payload(IPPROTO_FRAGMENT, &[17, 0, 0, 0, 0, 0, 0])), Base, true, MALFORMED, 0),
        c("trunc_icmpv6_header", to(BRIDGE_MAC).ipv6(Ipv6::new(guest_v6(), v6("2001:db8::1")).payload(IPPROTO_ICMPV6, &[135, 0, 0])), Base, true, MALFORMED, 0),
        c("trunc_ns_target", to(BRIDGE_MAC).ipv6(Ipv6::new(guest_v6(), v6("2001:db8::1")).payload(IPPROTO_ICMPV6, &[135, 0, 0, 0, 0, 0, 0, 0, 0xfd, 0, 0, 0])), Base, true, MALFORMED, 0),
        c("trunc_arp", arp_req(GUEST_V4, UNPROTECTED).truncate(14 + 27), Base, true, MALFORMED, 0),
        // VLAN shapes.
        c("vlan_8021q_deny", to(BRIDGE_MAC).vlan(100).ipv4(udp4(STORAGE)), Base, true, DENY_IPV4, 1),
        c("vlan_8021ad_deny", to(BRIDGE_MAC).svlan(100).ipv4(udp4(STORAGE)), Base, true, DENY_IPV4, 1),
        c("vlan_qinq_deny", to(BRIDGE_MAC).svlan(100).vlan(200).ipv4(udp4(STORAGE)), Base, true, DENY_IPV4, 1),
        c("vlan_double_8021q_deny", to(BRIDGE_MAC).vlan(100).vlan(200).ipv6(udp6("fd00::1")), Base, true, DENY_IPV6, 6),
        c("vlan_id0_priority_tag_deny", to(BRIDGE_MAC).tag(ETH_P_8021Q, 0xa000).ipv4(udp4(STORAGE)), Base, true, DENY_IPV4, 1),
        c("vlan_id0_twice_deny", to(BRIDGE_MAC).vlan(0).vlan(0).ipv4(udp4(MGMT_HOST)), Base, true, DENY_IPV4, 5),
        c("vlan_three_tags_malformed", to(BRIDGE_MAC).svlan(1).vlan(2).vlan(3).ipv4(udp4(UNPROTECTED)), Base, true, MALFORMED, 0),
        c("vlan_three_tags_vid0_malformed", to(BRIDGE_MAC).vlan(0).vlan(0).vlan(0).ipv4(udp4(HOLE)), Base, true, MALFORMED, 0),
        c("vlan_tagged_host_pass", to(BRIDGE_MAC).vlan(7).ipv4(udp4(UNPROTECTED)), Base, false, HOST_PASS, 0),
        c("vlan_tagged_arp_deny", to(BROADCAST).vlan(7).arp(Arp::request(GUEST_MAC, GUEST_V4, STORAGE)), Base, true, DENY_ARP, 1),
        c("vlan_qinq_ns_deny", ns_frame("fd00::1", &[]).svlan(1).vlan(2), Base, true, DENY_NDP, 6),
        c("vlan_inner_lldp_host_pass", to(BRIDGE_MAC).tag(ETH_P_8021AD, 9).raw(ETH_P_LLDP, &[0; 32]), Base, false, HOST_PASS, 0),
        // ARP.
        c("arp_request_target_protected", arp_req(GUEST_V4, STORAGE), Base, true, DENY_ARP, 1),
        c("arp_request_target_host_route", arp_req(GUEST_V4, MGMT_HOST), Base, true, DENY_ARP, 5),
        c("arp_request_unprotected", arp_req(GUEST_V4, [192, 0, 2, 77]), Base, false, HOST_PASS, 0),
        c("arp_request_guest_network", arp_req(GUEST_V4, [172, 16, 0, 1]), Base, false, ALLOW, 0),
        c("arp_request_target_in_hole", arp_req(GUEST_V4, HOLE), Base, false, ALLOW, 0),
        c("arp_sender_protected", arp_req(STORAGE, [172, 16, 0, 1]), Base, true, DENY_ARP, 1),
        c("arp_target_hole_sender_protected", arp_req(DENY_IN_HOLE, HOLE), Base, true, DENY_ARP, 3),
        c("arp_gratuitous_protected", arp_req(MGMT_HOST, MGMT_HOST), Base, true, DENY_ARP, 5),
        c("arp_reply_target_protected", to(BRIDGE_MAC).arp(Arp::reply(GUEST_MAC, GUEST_V4, BRIDGE_MAC, MGMT_NET)), Base, true, DENY_ARP, 4),
        c("arp_reply_sender_protected", to(BRIDGE_MAC).arp(Arp::reply(GUEST_MAC, MGMT_HOST, BRIDGE_MAC, GUEST_V4)), Base, true, DENY_ARP, 5),
        c("arp_bad_hlen_malformed", to(BROADCAST).arp(Arp::request(GUEST_MAC, GUEST_V4, UNPROTECTED).hlen(8)), Base, true, MALFORMED, 0),
        c("arp_bad_plen_malformed", to(BROADCAST).arp(Arp::request(GUEST_MAC, GUEST_V4, UNPROTECTED).plen(16)), Base, true, MALFORMED, 0),
        c("arp_bad_htype_malformed", to(BROADCAST).arp(Arp::request(GUEST_MAC, GUEST_V4, UNPROTECTED).htype(6)), Base, true, MALFORMED, 0),
        c("arp_bad_ptype_malformed", to(BROADCAST).arp(Arp::request(GUEST_MAC, GUEST_V4, UNPROTECTED).ptype(ETH_P_IPV6)), Base, true, MALFORMED, 0),
        // NDP.
        c("ns_protected_target", ns_frame("fd00::1", &[]), Base, true, DENY_NDP, 6),
        c("ns_host_route_target", ns_frame("2001:db8:100::1", &[]), Base, true, DENY_NDP, 9),
        c("ns_unprotected_target", ns_frame("2001:db8:200::1", &[]), Base, false, HOST_PASS, 0),
        c("ns_target_in_allow_hole", ns_frame("fd00:1::1", &[]), Base, false, HOST_PASS, 0),
        c("ns_unicast_to_bridge_mac", to(BRIDGE_MAC).ipv6(Ipv6::new(guest_v6(), v6("fe80::1")).neighbour_solicitation(v6("fd00::1"), None)), Base, true, DENY_NDP, 6),
        c("ns_behind_hop_by_hop", ns_frame("fd00::1", &[hbh()]), Base, true, DENY_NDP, 6),
        c("ns_behind_hbh_routing_dstopts", ns_frame("fd00::1", &[hbh(), Ext::Routing { len_units: 2 }, Ext::DestOpts { len_units: 1 }]), Base, true, DENY_NDP, 6),
        c("ns_behind_first_fragment", ns_frame("fd00::1", &[Ext::Fragment { offset_units: 0, more: true, id: 1 }]), Base, true, DENY_NDP, 6),
        c("ns_behind_ah", ns_frame("fd00::1", &[Ext::Ah { len: 4 }]), Base, true, DENY_NDP, 6),
        c("ns_behind_six_headers", ns_frame("fd00::1", &six), Base, true, DENY_NDP, 6),
        c("ns_behind_seven_headers_malformed", ns_frame("2001:db8:200::1", &seven), Base, true, MALFORMED, 0),
        c("ns_in_later_fragment_not_seen", ns_frame("fd00::1", &[Ext::Fragment { offset_units: 1, more: false, id: 1 }]), Base, false, HOST_PASS, 0),
        c("na_protected_target_host_pass", to([0x33, 0x33, 0, 0, 0, 1]).ipv6(Ipv6::new(guest_v6(), v6("ff02::1")).neighbour_advertisement(v6("fd00::1"), GUEST_MAC)), Base, false, HOST_PASS, 0),
        // IPv6 extension-header chains.
        c("ipv6_six_ext_headers_udp", to(BRIDGE_MAC).ipv6(udp6("2001:db8::1").hop_by_hop().dest_opts().routing().fragment(0, false).ah().dest_opts()), Base, false, HOST_PASS, 0),
        c("ipv6_seven_ext_headers_malformed", to(BRIDGE_MAC).ipv6(udp6("2001:db8::1").hop_by_hop().dest_opts().routing().fragment(0, false).ah().dest_opts().dest_opts()), Base, true, MALFORMED, 0),
        c("ipv6_seven_ext_headers_protected_dst", to(BRIDGE_MAC).ipv6(udp6("fd00::1").hop_by_hop().dest_opts().routing().fragment(0, false).ah().dest_opts().dest_opts()), Base, true, DENY_IPV6, 6),
        c("ipv6_later_fragment_host_pass", to(BRIDGE_MAC).ipv6(udp6("2001:db8::1").fragment(3, false)), Base, false, HOST_PASS, 0),
        c("ipv6_later_fragment_in_hole", to(BRIDGE_MAC).ipv6(udp6("fd00:1::1").hop_by_hop().fragment(3, true)), Base, false, ALLOW, 0),
        c("ipv6_no_next_header", to(BRIDGE_MAC).ipv6(Ipv6::new(guest_global_v6(), v6("2001:db8::1")).payload(IPPROTO_NONE, &[])), Base, false, HOST_PASS, 0),
        c("ipv6_unknown_ext_is_upper_layer", to(BRIDGE_MAC).ipv6(Ipv6::new(guest_global_v6(), v6("2001:db8::1")).payload(135, &[0; 8])), Base, false, HOST_PASS, 0),
        c("ipv6_version_4_malformed", to(BRIDGE_MAC).ipv6(udp6("2001:db8::1").version(4)), Base, true, MALFORMED, 0),
        c("ipv6_payload_len_too_big_malformed", to(BRIDGE_MAC).ipv6(udp6("2001:db8::1").payload_len(500)), Base, true, MALFORMED, 0),
        c("ipv6_ext_then_icmpv6_echo", to(BRIDGE_MAC).ipv6(Ipv6::new(guest_global_v6(), v6("2001:db8::1")).hop_by_hop().icmpv6(128, 0, &[0; 4])), Base, false, HOST_PASS, 0),
        // Non-IP and odd EtherTypes.
        c("lldp_multicast_host_pass", to(LLDP_MAC).raw(ETH_P_LLDP, &[0x02, 0x07, 0x04, 0, 0, 0, 0, 0, 1]), Base, false, HOST_PASS, 0),
        c("lldp_strict_not_host", to(LLDP_MAC).raw(ETH_P_LLDP, &[0x02, 0x07, 0x04, 0, 0, 0, 0, 0, 1]), Strict, false, NOT_HOST, 0),
        c("unknown_ethertype_host_pass", to(BRIDGE_MAC).raw(0x9000, &[0; 46]), Base, false, HOST_PASS, 0),
        c("ipv4_ethertype_ipv6_body_malformed", to(BRIDGE_MAC).ipv6(udp6("2001:db8::1")).ethertype(ETH_P_IPV4), Base, true, MALFORMED, 0),
        c("ipv6_ethertype_ipv4_body_malformed", to(BRIDGE_MAC).ipv4(udp4(UNPROTECTED).options(&[0; 20])).ethertype(ETH_P_IPV6), Base, true, MALFORMED, 0),
        // Monitor mode, global and per port.
        c("monitor_ipv4", to(BRIDGE_MAC).ipv4(udp4(STORAGE)), Monitor, false, MONITOR_IPV4, 1),
        c("monitor_ipv6", to(BRIDGE_MAC).ipv6(udp6("fd00:1:0:1::1")), Monitor, false, MONITOR_IPV6, 8),
        c("monitor_arp", arp_req(GUEST_V4, MGMT_HOST), Monitor, false, MONITOR_ARP, 5),
        c("monitor_ndp", ns_frame("fd00::1", &[]), Monitor, false, MONITOR_NDP, 6),
        c("monitor_malformed", to(BRIDGE_MAC).ipv4(udp4(STORAGE).ihl(4)), Monitor, false, MONITOR_MALFORMED, 0),
        c("monitor_allow_unchanged", to(BRIDGE_MAC).ipv4(udp4(HOLE)), Monitor, false, ALLOW, 0),
        c("monitor_not_host_unchanged", to(PEER_MAC).ipv4(udp4(STORAGE)), Monitor, false, NOT_HOST, 0),
        c("port_monitor_ipv4", to(PORT_MAC).ipv4(udp4(MGMT_NET)), PortMonitor, false, MONITOR_IPV4, 4),
        c("port_monitor_ipv6", to(BRIDGE_MAC).ipv6(udp6("2001:db8:100::1")), PortMonitor, false, MONITOR_IPV6, 9),
        c("port_monitor_arp", arp_req(DENY_IN_HOLE, GUEST_V4), PortMonitor, false, MONITOR_ARP, 3),
        c("port_monitor_ndp", ns_frame("fd00::7", &[hbh()]), PortMonitor, false, MONITOR_NDP, 6),
        c("port_monitor_malformed", to(BRIDGE_MAC).svlan(1).vlan(2).vlan(3).ipv4(udp4(STORAGE)), PortMonitor, false, MONITOR_MALFORMED, 0),
        c("port_monitor_host_pass_unchanged", to(BRIDGE_MAC).ipv4(udp4(UNPROTECTED)), PortMonitor, false, HOST_PASS, 0),
        // The route check (steps 8-9): what no prefix rule decided, the kernel's FIB does.
        c("route_gatewayed_protected_deny_route", to(BRIDGE_MAC).ipv4(udp4(ROUTED_PROT)), Base, true, DENY_ROUTE, 0),
        c("route_connected_protected", to(BRIDGE_MAC).ipv4(udp4(CONNECTED_PROT)), Base, no_neigh_drop, no_neigh_reason, 0),
        c("route_loopback_address_deny_local", to(BRIDGE_MAC).ipv4(udp4(LOCAL_LO)), Base, true, DENY_LOCAL, 0),
        c("route_127_deny_local", to(BRIDGE_MAC).ipv4(udp4([127, 0, 0, 1])), Base, true, DENY_LOCAL, 0),
        c("route_subnet_broadcast_deny_local", to(BROADCAST).ipv4(udp4(PROT_BROADCAST)), Base, true, DENY_LOCAL, 0),
        c("route_unreachable_host_pass", to(BRIDGE_MAC).ipv4(udp4(UNREACHABLE_V4)), Base, false, HOST_PASS, 0),
        c("route_blackhole_host_pass", to(BRIDGE_MAC).ipv4(udp4(BLACKHOLE_V4)), Base, false, HOST_PASS, 0),
        c("route_uplink_tagged_host_pass", to(BRIDGE_MAC).vlan(0).ipv4(udp4([1, 1, 1, 1])), Base, false, HOST_PASS, 0),
        c("route_later_fragment_deny_route", to(BRIDGE_MAC).ipv4(udp4(ROUTED_PROT).fragment(3, false)), Base, true, DENY_ROUTE, 0),
        c("route_bridge_address_allowed", to(BRIDGE_MAC).ipv4(udp4(BRIDGE_V4)), Base, false, ALLOW, 0),
        c("route_dns_to_bridge_allowed", to(BRIDGE_MAC).ipv4(Ipv4::new(GUEST_V4, BRIDGE_V4).udp(40000, 53, b"dns?")), Base, false, ALLOW, 0),
        c("route_limited_broadcast_host_pass", to(BROADCAST).ipv4(Ipv4::new([0, 0, 0, 0], [255; 4]).udp(68, 67, b"dhcp")), Base, false, HOST_PASS, 0),
        c("route_ipv4_multicast_host_pass", to(IPV4_MCAST_MAC).ipv4(udp4([224, 0, 0, 251])), Base, false, HOST_PASS, 0),
        c("route_ipv6_gatewayed_protected_deny_route", to(BRIDGE_MAC).ipv6(udp6("2001:db8:300::5")), Base, true, DENY_ROUTE, 0),
        c("route_ipv6_connected_protected", to(BRIDGE_MAC).ipv6(udp6("2001:db8:100::9")), Base, no_neigh_drop, no_neigh_reason, 0),
        c("route_ipv6_loopback_address_deny_local", to(BRIDGE_MAC).ipv6(udp6("2001:db8:1::1")), Base, true, DENY_LOCAL, 0),
        c("route_ipv6_subnet_anycast_deny_local", to(BRIDGE_MAC).ipv6(udp6("2001:db8:100::")), Base, true, DENY_LOCAL, 0),
        c("route_ipv6_localhost_deny_local", to(BRIDGE_MAC).ipv6(udp6("::1")), Base, true, DENY_LOCAL, 0),
        c("route_ipv6_unreachable_host_pass", to(BRIDGE_MAC).ipv6(udp6("2001:db8:dead::1")), Base, false, HOST_PASS, 0),
        c("route_ipv6_bridge_address_allowed", to(BRIDGE_MAC).ipv6(udp6("2001:db8:50::1")), Base, false, ALLOW, 0),
        c("route_ipv6_link_local_host_pass", to(BRIDGE_MAC).ipv6(udp6("fe80::1")), Base, false, HOST_PASS, 0),
        c("route_ipv6_multicast_host_pass", to([0x33, 0x33, 0, 0, 0, 0xfb]).ipv6(udp6("ff02::fb")), Base, false, HOST_PASS, 0),
        c("route_ipv6_later_fragment_deny_route", to(BRIDGE_MAC).ipv6(udp6("2001:db8:300::5").fragment(2, false)), Base, true, DENY_ROUTE, 0),
        c("route_check_off_routed_host_pass", to(BRIDGE_MAC).ipv4(udp4(ROUTED_PROT)), NoRouteCheck, false, HOST_PASS, 0),
        c("route_check_off_local_host_pass", to(BRIDGE_MAC).ipv6(udp6("2001:db8:1::1")), NoRouteCheck, false, HOST_PASS, 0),
        // Source routing.
        c("srcroute_ipv4_lsrr", to(BRIDGE_MAC).ipv4(lsrr(UNPROTECTED)), Base, true, DENY_SRCROUTE, 0),
        c("srcroute_ipv4_ssrr", to(BRIDGE_MAC).ipv4(udp4(BRIDGE_V4).options(&[0x89, 7, 4, 10, 0, 0, 1, 0])), Base, true, DENY_SRCROUTE, 0),
        c("srcroute_ipv4_lsrr_behind_nops", to(BRIDGE_MAC).ipv4(udp4(BRIDGE_V4).options(&[1, 1, 1, 0x83, 7, 4, 10, 0, 0, 1, 0, 0])), Base, true, DENY_SRCROUTE, 0),
        c("srcroute_ipv4_lsrr_after_record_route", to(BRIDGE_MAC).ipv4(udp4(BRIDGE_V4).options(&[7, 7, 4, 0, 0, 0, 0, 0x83, 7, 4, 10, 0, 0, 1, 0, 0])), Base, true, DENY_SRCROUTE, 0),
        c("srcroute_ipv4_after_end_of_list_ignored", to(BRIDGE_MAC).ipv4(udp4(BRIDGE_V4).options(&[0, 0x83, 7, 4, 10, 0, 0, 1])), Base, false, ALLOW, 0),
        c("srcroute_ipv4_router_alert_allowed", to(BRIDGE_MAC).ipv4(udp4(BRIDGE_V4).options(&[0x94, 4, 0, 0])), Base, false, ALLOW, 0),
        c("srcroute_ipv4_option_length_1_malformed", to(BRIDGE_MAC).ipv4(udp4(BRIDGE_V4).options(&[0x44, 1, 0, 0])), Base, true, MALFORMED, 0),
        c("srcroute_ipv4_option_overruns_header_malformed", to(BRIDGE_MAC).ipv4(udp4(BRIDGE_V4).options(&[7, 12, 4, 0])), Base, true, MALFORMED, 0),
        c("srcroute_ipv4_denied_dst_first", to(BRIDGE_MAC).ipv4(lsrr(STORAGE)), Base, true, DENY_IPV4, 1),
        c("srcroute_ipv4_route_check_off", to(BRIDGE_MAC).ipv4(lsrr(UNPROTECTED)), NoRouteCheck, true, DENY_SRCROUTE, 0),
        c("srcroute_ipv4_multicast_dst", to(IPV4_MCAST_MAC).ipv4(lsrr([224, 0, 0, 9])), Base, true, DENY_SRCROUTE, 0),
        c("srcroute_ipv6_srh_segments_left", to(BRIDGE_MAC).ipv6(udp6("2001:db8:50::1").ext(rh(4, 1))), Base, true, DENY_SRCROUTE, 0),
        c("srcroute_ipv6_rh0_segments_left", to(BRIDGE_MAC).ipv6(udp6("2001:db8:50::1").hop_by_hop().ext(rh(0, 1))), Base, true, DENY_SRCROUTE, 0),
        c("srcroute_ipv6_srh_no_segments_left", to(BRIDGE_MAC).ipv6(udp6("2001:db8:50::1").ext(rh(4, 0))), Base, false, ALLOW, 0),
        c("srcroute_ipv6_denied_dst_first", to(BRIDGE_MAC).ipv6(udp6("fd00::1").ext(rh(4, 1))), Base, true, DENY_IPV6, 6),
        c("srcroute_ipv6_before_ns", ns_frame("2001:db8:200::1", &[rh(4, 1)]), Base, true, DENY_SRCROUTE, 0),
        c("srcroute_ipv6_truncated_routing_header_malformed", to(BRIDGE_MAC).ipv6(Ipv6::new(guest_v6(), v6("2001:db8:50::1")).payload(IPPROTO_ROUTING, &[17, 0, 4])), Base, true, MALFORMED, 0),
        // Tunnels the host would decapsulate.
        c("tunnel_vxlan_to_bridge_address", to(BRIDGE_MAC).ipv4(vxlan4(BRIDGE_V4)), Base, true, DENY_TUNNEL, 0),
        c("tunnel_vxlan_to_loopback_address", to(BRIDGE_MAC).ipv4(vxlan4(LOCAL_LO)), Base, true, DENY_TUNNEL, 0),
        c("tunnel_vxlan_broadcast_mac", to(BROADCAST).ipv4(vxlan4(BRIDGE_V4)), Base, true, DENY_TUNNEL, 0),
        c("tunnel_geneve_to_bridge_address", to(BRIDGE_MAC).ipv4(Ipv4::new(GUEST_V4, BRIDGE_V4).udp(40000, 6081, &[0; 8])), Base, true, DENY_TUNNEL, 0),
        c("tunnel_gre_to_bridge_address", to(BRIDGE_MAC).ipv4(Ipv4::new(GUEST_V4, BRIDGE_V4).payload(47, &[0, 0, 8, 0])), Base, true, DENY_TUNNEL, 0),
        c("tunnel_ipip_to_bridge_address", to(BRIDGE_MAC).ipv4(Ipv4::new(GUEST_V4, BRIDGE_V4).payload(4, &[0x45, 0, 0, 20])), Base, true, DENY_TUNNEL, 0),
        c("tunnel_sit_to_bridge_address", to(BRIDGE_MAC).ipv4(Ipv4::new(GUEST_V4, BRIDGE_V4).payload(41, &[0x60, 0, 0, 0])), Base, true, DENY_TUNNEL, 0),
        c("tunnel_vxlan_forwarded_to_uplink", to(BRIDGE_MAC).ipv4(vxlan4(UNPROTECTED)), Base, false, HOST_PASS, 0),
        c("tunnel_gre_forwarded_to_protected", to(BRIDGE_MAC).ipv4(Ipv4::new(GUEST_V4, ROUTED_PROT).payload(47, &[0, 0, 8, 0])), Base, true, DENY_ROUTE, 0),
        c("tunnel_gre_to_allow_hole_forwarded", to(BRIDGE_MAC).ipv4(Ipv4::new(GUEST_V4, HOLE).payload(47, &[0, 0, 8, 0])), Base, false, ALLOW, 0),
        c("tunnel_vxlan_later_fragment_not_seen", to(BRIDGE_MAC).ipv4(vxlan4(BRIDGE_V4).fragment(2, false)), Base, false, ALLOW, 0),
        c("tunnel_udp_header_cut_short_not_a_tunnel", to(BRIDGE_MAC).ipv4(Ipv4::new(GUEST_V4, BRIDGE_V4).payload(17, &[0x9c, 0x40, 0x12])), Base, false, ALLOW, 0),
        c("tunnel_ipv6_vxlan_to_bridge_address", to(BRIDGE_MAC).ipv6(vxlan6("2001:db8:50::1")), Base, true, DENY_TUNNEL, 0),
        c("tunnel_ipv6_ipip_behind_hbh", to(BRIDGE_MAC).ipv6(Ipv6::new(guest_global_v6(), v6("2001:db8:50::1")).hop_by_hop().payload(4, &[0x45, 0, 0, 20])), Base, true, DENY_TUNNEL, 0),
        c("tunnel_ipv6_gre_to_loopback_address", to(BRIDGE_MAC).ipv6(Ipv6::new(guest_global_v6(), v6("2001:db8:1::1")).payload(47, &[0, 0, 0x86, 0xdd])), Base, true, DENY_TUNNEL, 0),
        c("route_ipv6_link_local_source_not_forwarded", to(BRIDGE_MAC).ipv6(Ipv6::new(guest_v6(), v6("2001:db8::1")).udp(40000, 2049, b"nfs?")), Base, true, DENY_LOCAL, 0),
        c("tunnel_ipv6_later_fragment_not_seen", to(BRIDGE_MAC).ipv6(vxlan6("2001:db8:50::1").fragment(2, false)), Base, false, ALLOW, 0),
        c("tunnel_allowed_by_flag", to(BRIDGE_MAC).ipv4(vxlan4(BRIDGE_V4)), AllowTunnels, false, ALLOW, 0),
        c("tunnel_allowed_by_flag_local_still_denied", to(BRIDGE_MAC).ipv6(Ipv6::new(guest_global_v6(), v6("2001:db8:1::1")).payload(47, &[0, 0, 0x86, 0xdd])), AllowTunnels, true, DENY_LOCAL, 0),
        c("tunnel_route_check_off_any_destination", to(BRIDGE_MAC).ipv4(vxlan4(UNPROTECTED)), NoRouteCheck, true, DENY_TUNNEL, 0),
        // Monitor twins of the route check's reasons.
        c("monitor_route", to(BRIDGE_MAC).ipv4(udp4(ROUTED_PROT)), Monitor, false, MONITOR_ROUTE, 0),
        c("monitor_local", to(BRIDGE_MAC).ipv6(udp6("2001:db8:1::1")), Monitor, false, MONITOR_LOCAL, 0),
        c("monitor_tunnel", to(BRIDGE_MAC).ipv4(vxlan4(BRIDGE_V4)), PortMonitor, false, MONITOR_TUNNEL, 0),
        c("monitor_srcroute", to(BRIDGE_MAC).ipv4(lsrr(BRIDGE_V4)), Monitor, false, MONITOR_SRCROUTE, 0),
        // Step 10, exceptions: scope, protocol and port, then the address by prefix.
        c("exc_port_scope_tcp_port", tcp4(STORAGE, 40000, 3260, syn), Step10, false, EXCEPTION, 101),
        c("exc_neighbour_port_denied", tcp4(STORAGE, 40000, 3261, syn), Step10, true, DENY_IPV4, 1),
        c("exc_udp_same_port_denied", to(BRIDGE_MAC).ipv4(udp4(STORAGE)), Step10, true, DENY_IPV4, 1),
        c("exc_all_scope_udp_port", to(BRIDGE_MAC).ipv4(Ipv4::new(GUEST_V4, MGMT_NET).udp(40000, 53, b"dns?")), Step10, false, EXCEPTION, 102),
        c("exc_other_port_scope_denied", to(BRIDGE_MAC).ipv4(udp4(NEAR_HOLE)), Step10, true, DENY_IPV4, 1),
        c("exc_proto_any_tcp", tcp4(DENY_IN_HOLE, 40000, 80, syn), Step10, false, EXCEPTION, 109),
        c("exc_proto_any_icmp", to(BRIDGE_MAC).ipv4(Ipv4::new(GUEST_V4, DENY_IN_HOLE).icmp_echo(1, 1)), Step10, false, EXCEPTION, 109),
        c("exc_tcp_any_port", tcp4(MGMT_NET, 40000, 8080, syn), Step10, false, EXCEPTION, 110),
        c("exc_tcp_any_port_udp_denied", to(BRIDGE_MAC).ipv4(Ipv4::new(GUEST_V4, MGMT_NET).udp(40000, 8080, b"x")), Step10, true, DENY_IPV4, 4),
        c("exc_later_fragment_proto_entry", later_fragment4(MGMT_NET, IPPROTO_TCP), Step10, false, EXCEPTION, 110),
        c("exc_later_fragment_port_entry_denied", later_fragment4(STORAGE, IPPROTO_TCP), Step10, true, DENY_IPV4, 1),
        c("exc_later_fragment_proto_any", later_fragment4(DENY_IN_HOLE, IPPROTO_UDP), Step10, false, EXCEPTION, 109),
        c("exc_ipv6_udp_port", to(BRIDGE_MAC).ipv6(udp6("fd00::1")), Step10, false, EXCEPTION, 104),
        c("exc_ipv6_ext_header_port_entry_denied", to(BRIDGE_MAC).ipv6(udp6("fd00::1").hop_by_hop()), Step10, true, DENY_IPV6, 6),
        // A deny entry's verdict is lifted only for a packet judged by its destination alone:
        // an extension header, a source route or a tunnel keeps it (docs/datapath.md step 10).
        c("exc_ipv6_ext_header_not_lifted", to(BRIDGE_MAC).ipv6(udp6("fd00:1:0:1::9").hop_by_hop()), Step10, true, DENY_IPV6, 8),
        c("exc_ipv6_no_ext_header_proto_any", to(BRIDGE_MAC).ipv6(Ipv6::new(guest_global_v6(), v6("fd00:1:0:1::9")).tcp(40000, 80, syn)), Step10, false, EXCEPTION, 105),
        c("exc_lsrr_to_excepted_not_lifted", to(BRIDGE_MAC).ipv4(lsrr(DENY_IN_HOLE)), Step10, true, DENY_IPV4, 3),
        c("exc_vxlan_to_excepted_not_lifted", to(BRIDGE_MAC).ipv4(vxlan4(DENY_IN_HOLE)), Step10, true, DENY_IPV4, 3),
        c("exc_ipv6_vxlan_to_excepted_not_lifted", to(BRIDGE_MAC).ipv6(Ipv6::new(guest_global_v6(), v6("fd00:1:0:1::9")).udp(40000, VXLAN_PORT, &[0; 16])), Step10, true, DENY_IPV6, 8),
        c("exc_lifts_deny_route", tcp4(ROUTED_PROT, 40000, 443, syn), Step10, false, EXCEPTION, 106),
        c("exc_lifts_deny_local", to(BRIDGE_MAC).ipv4(udp4(LOCAL_LO)), Step10, false, EXCEPTION, 107),
        c("exc_ipv6_lifts_deny_route", to(BRIDGE_MAC).ipv6(Ipv6::new(guest_global_v6(), v6("2001:db8:300::5")).tcp(40000, 22, syn)), Step10, false, EXCEPTION, 111),
        c("exc_ipv6_other_port_deny_route", to(BRIDGE_MAC).ipv6(Ipv6::new(guest_global_v6(), v6("2001:db8:300::5")).tcp(40000, 23, syn)), Step10, true, DENY_ROUTE, 0),
        c("exc_tcp_header_cut_short_denied", to(BRIDGE_MAC).ipv4(Ipv4::new(GUEST_V4, DENY_IN_HOLE).payload(IPPROTO_TCP, &[0x9c, 0x40, 0, 80, 0, 0, 0, 0, 0, 0, 0, 0, 0x50])), Step10, true, DENY_IPV4, 3),
        c("exc_not_tunnel", to(BRIDGE_MAC).ipv4(vxlan4(BRIDGE_V4)), Step10, true, DENY_TUNNEL, 0),
        c("exc_not_srcroute", to(BRIDGE_MAC).ipv4(lsrr(LOCAL_LO)), Step10, true, DENY_SRCROUTE, 0),
        c("exc_not_arp", arp_req(GUEST_V4, DENY_IN_HOLE), Step10, true, DENY_ARP, 3),
        c("exc_not_malformed", to(BRIDGE_MAC).ipv4(udp4(DENY_IN_HOLE).tot_len(1000)), Step10, true, MALFORMED, 0),
        c("exc_flag_off_entries_present", tcp4(STORAGE, 40000, 3260, syn), RepliesOnly, true, DENY_IPV4, 1),
        c("exc_monitor_stays_exception", tcp4(STORAGE, 40000, 3260, syn), Step10Monitor, false, EXCEPTION, 101),
        c("exc_monitor_no_match_monitored", tcp4(STORAGE, 40000, 3261, syn), Step10Monitor, false, MONITOR_IPV4, 1),
        // Step 10, replies to flows the protected side started.
        c("reply_tcp_syn_ack", tcp4(STORAGE, GUEST_SSH, PEER_PORT, syn_ack), Step10, false, REPLY, 0),
        c("reply_tcp_ack", tcp4(STORAGE, GUEST_SSH, PEER_PORT, ack), Step10, false, REPLY, 0),
        c("reply_tcp_syn_not_reply", tcp4(STORAGE, GUEST_SSH, PEER_PORT, syn), Step10, true, DENY_IPV4, 1),
        c("reply_tcp_other_peer_port", tcp4(STORAGE, GUEST_SSH, PEER_PORT + 1, ack), Step10, true, DENY_IPV4, 1),
        c("reply_udp_lifts_deny_route", to(BRIDGE_MAC).ipv4(Ipv4::new(GUEST_V4, ROUTED_PROT).udp(GUEST_UDP, 40000, b"answer")), Step10, false, REPLY, 0),
        c("reply_udp_key_is_not_tcp", tcp4(ROUTED_PROT, GUEST_UDP, 40000, ack), Step10, true, DENY_ROUTE, 0),
        c("reply_icmp_echo_reply", echo_reply4(STORAGE, ECHO_ID), Step10, false, REPLY, 0),
        c("reply_icmp_echo_request_not_reply", to(BRIDGE_MAC).ipv4(Ipv4::new(GUEST_V4, STORAGE).icmp_echo(ECHO_ID, 1)), Step10, true, DENY_IPV4, 1),
        c("reply_icmp_other_id", echo_reply4(STORAGE, ECHO_ID + 1), Step10, true, DENY_IPV4, 1),
        c("reply_icmp_later_fragment_not_reply", later_fragment4(MGMT_NET, IPPROTO_ICMP), Step10, true, DENY_IPV4, 4),
        c("reply_icmpv6_echo_reply", to(BRIDGE_MAC).ipv6(Ipv6::new(guest_global_v6(), v6("2001:db8:300::5")).icmpv6(129, 0, &[0, 9, 0, 1])), Step10, false, REPLY, 0),
        c("reply_icmpv6_echo_request_not_reply", to(BRIDGE_MAC).ipv6(Ipv6::new(guest_global_v6(), v6("2001:db8:300::5")).icmpv6(128, 0, &[0, 9, 0, 1])), Step10, true, DENY_ROUTE, 0),
        c("reply_flag_off", tcp4(STORAGE, GUEST_SSH, PEER_PORT, syn_ack), ExceptionsOnly, true, DENY_IPV4, 1),
        c("reply_monitor_stays_reply", tcp4(STORAGE, GUEST_SSH, PEER_PORT, ack), Step10Monitor, false, REPLY, 0),
        c("reply_exception_first", tcp4(STORAGE, GUEST_SSH, 3260, ack), Step10, false, EXCEPTION, 101),
    ]
}

impl Case {
    /// What the table says guard must decide.
    #[must_use]
    pub const fn decision(&self) -> Decision {
        Decision {
            drop: self.drop,
            reason: self.reason,
            rule_id: self.rule_id,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The runner.

/// What checking the table on one object found.
#[derive(Clone, Debug, Default)]
pub struct TableReport {
    /// Cases in the table.
    pub cases: usize,
    /// Cases that passed every check: the model and every hook run.
    pub passed: usize,
    /// Kernel runs compared with the table (verdict and exact counter deltas).
    pub checked: usize,
    /// TC runs that `bpf_prog_test_run_skb` refused as [`skb_test_run_refuses`] predicts
    /// (the refusal itself is checked; the case is covered by its XDP run).
    pub refused: usize,
    /// One line per failed check, with the frame in hex where a kernel run disagreed.
    pub failures: Vec<String>,
}

/// Checks every case against the model, then against the programs of `object` for `hooks`
/// (only those programs are loaded, so a verifier rejection of one does not hide the other's
/// results). `label` names the object in failure lines. An error is a load failure (for a
/// rejected program it carries the verifier log); anything the table finds is in the report.
pub fn run_table(object: &[u8], hooks: &[Hook], label: &str) -> Result<TableReport> {
    let cases = cases();
    let mut report = TableReport {
        cases: cases.len(),
        ..TableReport::default()
    };
    for setup in Setup::ALL {
        let policy = setup.policy();
        let dp = Datapath::load_hooks(object, &policy, hooks)
            .with_context(|| format!("{label}: loading with {setup:?} policy"))?;
        for case in cases.iter().filter(|c| c.setup == setup) {
            let failed_before = report.failures.len();
            check_case(&dp, &policy, case, hooks, label, &mut report);
            if report.failures.len() == failed_before {
                report.passed += 1;
            }
        }
    }
    Ok(report)
}

/// One case: the model, then each hook's run (or the skb test run's refusal).
fn check_case(
    dp: &Datapath,
    policy: &Policy,
    case: &Case,
    hooks: &[Hook],
    label: &str,
    report: &mut TableReport,
) {
    if case.frame.len() < MIN_FRAME {
        report
            .failures
            .push(format!("{}: frame too short to run", case.name));
        return;
    }
    let want = case.decision();
    let model = classify(&case.frame, 0, policy);
    if model != want {
        report.failures.push(format!(
            "{}: model says {model:?}, table {want:?}",
            case.name
        ));
    }
    let expected = expected_run(&want, case.frame.len());
    for &hook in hooks {
        // The table's verdicts are for a port's hooks; the bridge device's hook judges every
        // frame as host-bound, and the model says what that gives.
        let expected = if hook == Hook::Bridge {
            expected_run(
                &classify(&case.frame, 0, &hook.model_policy(policy)),
                case.frame.len(),
            )
        } else {
            expected.clone()
        };
        if hook.is_tc() && skb_test_run_refuses(&case.frame) {
            // Not a skip: the refusal itself is asserted (see skb_test_run_refuses).
            if dp.verdict(hook, &case.frame).is_ok() {
                report.failures.push(format!(
                    "{} [{label} Tc]: the kernel ran a frame it was expected to refuse; \
                     update skb_test_run_refuses",
                    case.name
                ));
            }
            report.refused += 1;
            continue;
        }
        match dp.run(hook, &case.frame) {
            Ok(got) if got == expected => {}
            Ok(got) => report.failures.push(format!(
                "{} [{label} {hook:?}]: got {got:?}, want {expected:?}\n{}",
                case.name,
                hex(&case.frame)
            )),
            Err(e) => report
                .failures
                .push(format!("{} [{label} {hook:?}]: {e:#}", case.name)),
        }
        report.checked += 1;
    }
}
