//! guard's XDP and TC programs against the contract (docs/datapath.md), in the real kernel.
//!
//! - `table_*`: named cases, each with its expected verdict, reason and rule id, checked against
//!   the reference model and against both programs, with exact counter deltas;
//! - `differential_*`: a few hundred thousand seeded random and mutated frames through the
//!   kernel and the model; any difference fails with the frame in hex and the seed.
//!
//! Both run for the release object (embedded in guard-userspace) and the debug object (built by
//! `cargo xtask build`, path in `GUARD_EBPF_DEBUG_OBJECT`): the verifier sees different code.
//! Needs root; there are no mocks.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use guard_common::model::{Decision, Policy, Rule, classify};
use guard_common::{
    ACTION_ALLOW, ACTION_DENY, CLASS_HOST, CLASS_MANAGEMENT, CLASS_STORAGE, reason,
};
use guard_tests::datapath::{
    Datapath, Hook, MIN_FRAME, Run, expected_run, hex, skb_test_run_refuses,
};
use guard_tests::packet::{
    Arp, BROADCAST, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IPV4, ETH_P_IPV6, ETH_P_LLDP, Eth, Ext,
    IPPROTO_AH, IPPROTO_DSTOPTS, IPPROTO_FRAGMENT, IPPROTO_HOPOPTS, IPPROTO_ICMPV6, IPPROTO_NONE,
    IPPROTO_ROUTING, IPPROTO_TCP, IPPROTO_UDP, Ipv4, Ipv6, ipv6_multicast_mac, solicited_node,
};

// ---------------------------------------------------------------------------------------------
// The objects.

const DEBUG_OBJECT_ENV: &str = "GUARD_EBPF_DEBUG_OBJECT";

fn release_object() -> &'static [u8] {
    guard::EBPF_OBJECT
}

/// The debug build, or a loud failure that says how to get it: a skipped debug run is not a
/// passed one.
fn debug_object() -> Vec<u8> {
    let Ok(path) = std::env::var(DEBUG_OBJECT_ENV) else {
        panic!(
            "{DEBUG_OBJECT_ENV} is not set: the datapath tests must also run the debug eBPF \
             object. Build it with `cargo xtask build` (or, by hand, `RUSTFLAGS= \
             CARGO_ENCODED_RUSTFLAGS=$(printf -- '--cfg=bpf_target_arch=\"x86_64\"\\x1f-Cdebuginfo=2\\x1f-Clink-arg=--btf') \
             cargo +nightly build -p guard-ebpf --bins --target bpfel-unknown-none -Z build-std=core`) \
             and set {DEBUG_OBJECT_ENV}=<worktree>/target/bpfel-unknown-none/debug/guard"
        )
    };
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {DEBUG_OBJECT_ENV}={path}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// The policy every case starts from.

const BRIDGE_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0xbb, 0x00, 0x01];
/// A bridge port's own MAC (a permanent local FDB entry).
const PORT_MAC: [u8; 6] = [0xfe, 0x54, 0x00, 0x00, 0x00, 0x07];
/// Another local interface the bridge may deliver to.
const OTHER_IF_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0xcc, 0x00, 0x02];
const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const PEER_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x65, 0x43, 0x21];
const IPV4_MCAST_MAC: [u8; 6] = [0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb];
const LLDP_MAC: [u8; 6] = [0x01, 0x80, 0xc2, 0x00, 0x00, 0x0e];

const GUEST_V4: [u8; 4] = [172, 16, 0, 10];
const STORAGE: [u8; 4] = [10, 0, 0, 1];
const HOLE: [u8; 4] = [10, 1, 2, 3];
const DENY_IN_HOLE: [u8; 4] = [10, 1, 2, 200];
const NEAR_HOLE: [u8; 4] = [10, 1, 3, 1];
const MGMT_NET: [u8; 4] = [192, 168, 100, 7];
const MGMT_HOST: [u8; 4] = [192, 168, 100, 1];
const UNPROTECTED: [u8; 4] = [8, 8, 8, 8];

fn v6(s: &str) -> Ipv6Addr {
    s.parse().expect("test address")
}

fn guest_v6() -> Ipv6Addr {
    v6("fe80::5054:ff:fe12:3456")
}

fn rule(addr: &str, prefix_len: u8, action: u16, rule_id: u32, class: u16) -> Rule {
    Rule {
        addr: addr.parse().expect("test address"),
        prefix_len,
        action,
        rule_id,
        class,
    }
}

fn base_policy() -> Policy {
    Policy {
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
        ],
        ..Policy::default()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Setup {
    Base,
    Strict,
    Monitor,
    PortMonitor,
}

impl Setup {
    const ALL: [Setup; 4] = [
        Setup::Base,
        Setup::Strict,
        Setup::Monitor,
        Setup::PortMonitor,
    ];

    fn policy(self) -> Policy {
        let mut p = base_policy();
        match self {
            Setup::Base => {}
            Setup::Strict => p.strict_mac = true,
            Setup::Monitor => p.monitor = true,
            Setup::PortMonitor => p.port_monitor = true,
        }
        p
    }
}

// ---------------------------------------------------------------------------------------------
// The table.

struct Case {
    name: &'static str,
    frame: Vec<u8>,
    setup: Setup,
    drop: bool,
    reason: u32,
    rule_id: u32,
}

/// Frame builders for the common shapes.
fn to(dst: [u8; 6]) -> Eth {
    Eth::new(dst, GUEST_MAC)
}

fn udp4(dst: [u8; 4]) -> Ipv4 {
    Ipv4::new(GUEST_V4, dst).udp(40000, 3260, b"iscsi?")
}

fn udp6(dst: &str) -> Ipv6 {
    Ipv6::new(guest_v6(), v6(dst)).udp(40000, 2049, b"nfs?")
}

fn ns(target: &str) -> Ipv6 {
    Ipv6::new(guest_v6(), Ipv6Addr::UNSPECIFIED).neighbour_solicitation(v6(target), Some(GUEST_MAC))
}

/// An NS frame to the target's solicited-node multicast MAC, with extension headers `exts`.
fn ns_frame(target: &str, exts: &[Ext]) -> Eth {
    let mut p = ns(target);
    for e in exts {
        p = p.ext(e.clone());
    }
    to(ipv6_multicast_mac(solicited_node(v6(target)))).ipv6(p)
}

fn hbh() -> Ext {
    Ext::HopByHop { len_units: 0 }
}

// One case per line reads as a table; rustfmt would spread each over eight lines.
#[rustfmt::skip]
#[expect(clippy::too_many_lines, reason = "one line per case reads best as one list")]
fn cases() -> Vec<Case> {
    use Setup::{Base, Monitor, PortMonitor, Strict};
    use reason::{
        ALLOW, DENY_ARP, DENY_IPV4, DENY_IPV6, DENY_NDP, HOST_PASS, MALFORMED, MONITOR_ARP,
        MONITOR_IPV4, MONITOR_IPV6, MONITOR_MALFORMED, MONITOR_NDP, NOT_HOST,
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
        c("ipv6_next_to_host_route_pass", to(BRIDGE_MAC).ipv6(udp6("2001:db8:100::2")), Base, false, HOST_PASS, 0),
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
        c("arp_request_unprotected", arp_req(GUEST_V4, [172, 16, 0, 1]), Base, false, HOST_PASS, 0),
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
        c("ipv6_no_next_header", to(BRIDGE_MAC).ipv6(Ipv6::new(guest_v6(), v6("2001:db8::1")).payload(IPPROTO_NONE, &[])), Base, false, HOST_PASS, 0),
        c("ipv6_unknown_ext_is_upper_layer", to(BRIDGE_MAC).ipv6(Ipv6::new(guest_v6(), v6("2001:db8::1")).payload(135, &[0; 8])), Base, false, HOST_PASS, 0),
        c("ipv6_version_4_malformed", to(BRIDGE_MAC).ipv6(udp6("2001:db8::1").version(4)), Base, true, MALFORMED, 0),
        c("ipv6_payload_len_too_big_malformed", to(BRIDGE_MAC).ipv6(udp6("2001:db8::1").payload_len(500)), Base, true, MALFORMED, 0),
        c("ipv6_ext_then_icmpv6_echo", to(BRIDGE_MAC).ipv6(Ipv6::new(guest_v6(), v6("2001:db8::1")).hop_by_hop().icmpv6(128, 0, &[0; 4])), Base, false, HOST_PASS, 0),
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
    ]
}

/// Checks every case against the model, then against both programs of `object`.
fn run_table(object: &[u8], label: &str) {
    let cases = cases();
    let mut failures = Vec::new();
    let (mut checked, mut refused) = (0, 0);
    for setup in Setup::ALL {
        let policy = setup.policy();
        let dp = Datapath::load(object, &policy)
            .unwrap_or_else(|e| panic!("{label}: loading with {setup:?} policy: {e:?}"));
        for case in cases.iter().filter(|c| c.setup == setup) {
            assert!(
                case.frame.len() >= MIN_FRAME,
                "{}: frame too short to run",
                case.name
            );
            let want = Decision {
                drop: case.drop,
                reason: case.reason,
                rule_id: case.rule_id,
            };
            let model = classify(&case.frame, 0, &policy);
            if model != want {
                failures.push(format!(
                    "{}: model says {model:?}, table {want:?}",
                    case.name
                ));
            }
            let expected = expected_run(&want, case.frame.len());
            for hook in Hook::ALL {
                if hook == Hook::Tc && skb_test_run_refuses(&case.frame) {
                    // Not a skip: the refusal itself is asserted (see skb_test_run_refuses).
                    if dp.verdict(hook, &case.frame).is_ok() {
                        failures.push(format!(
                            "{} [{label} Tc]: the kernel ran a frame it was expected to refuse; \
                             update skb_test_run_refuses",
                            case.name
                        ));
                    }
                    refused += 1;
                    continue;
                }
                match dp.run(hook, &case.frame) {
                    Ok(got) if got == expected => {}
                    Ok(got) => failures.push(format!(
                        "{} [{label} {hook:?}]: got {got:?}, want {expected:?}\n{}",
                        case.name,
                        hex(&case.frame)
                    )),
                    Err(e) => failures.push(format!("{} [{label} {hook:?}]: {e:#}", case.name)),
                }
                checked += 1;
            }
        }
    }
    println!(
        "{label}: {} cases, {checked} kernel runs; {refused} TC runs refused by \
         bpf_prog_test_run_skb (short L3 header), checked on XDP only",
        cases.len()
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn table_has_enough_distinct_cases() {
    let cases = cases();
    assert!(cases.len() >= 60, "only {} cases", cases.len());
    let mut names: Vec<_> = cases.iter().map(|c| c.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), cases.len(), "duplicate case names");
    // Every reason code is exercised by some case.
    for r in 0..reason::COUNT {
        assert!(
            cases.iter().any(|c| c.reason == r),
            "no case for reason {}",
            reason::name(r)
        );
    }
}

#[test]
fn table_release() {
    run_table(release_object(), "release");
}

#[test]
fn table_debug() {
    run_table(&debug_object(), "debug");
}

// ---------------------------------------------------------------------------------------------
// The differential test.

/// `SplitMix64`: tiny, seedable, good enough to spread frames; no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0; the modulo bias is irrelevant here).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

const MACS: [[u8; 6]; 8] = [
    BRIDGE_MAC,
    PORT_MAC,
    OTHER_IF_MAC,
    BROADCAST,
    IPV4_MCAST_MAC,
    LLDP_MAC,
    PEER_MAC,
    GUEST_MAC,
];

fn random_v4(rng: &mut Rng) -> Ipv4Addr {
    let base = rng.pick(&[
        STORAGE,
        HOLE,
        DENY_IN_HOLE,
        NEAR_HOLE,
        MGMT_NET,
        MGMT_HOST,
        UNPROTECTED,
        GUEST_V4,
        [10, 1, 2, 127],
        [10, 1, 2, 128],
        [11, 0, 0, 0],
        [9, 255, 255, 255],
    ]);
    let mut a = base;
    if rng.chance(30) {
        a[3] = rng.byte();
    }
    if rng.chance(10) {
        a = [rng.byte(), rng.byte(), rng.byte(), rng.byte()];
    }
    Ipv4Addr::from(a)
}

fn random_v6(rng: &mut Rng) -> Ipv6Addr {
    let base = v6(rng.pick(&[
        "fd00::1",
        "fd00:1::5",
        "fd00:1:0:1::9",
        "fd00:1:0:2::9",
        "2001:db8:100::1",
        "2001:db8:100::2",
        "2001:db8::1",
        "fe80::1",
        "ff02::1:ff00:1",
        "fcff:ffff::1",
    ]));
    let mut o = base.octets();
    if rng.chance(30) {
        o[15] = rng.byte();
    }
    if rng.chance(10) {
        o[rng.below(16)] = rng.byte();
    }
    Ipv6Addr::from(o)
}

fn random_ext(rng: &mut Rng) -> Ext {
    match rng.below(6) {
        0 => Ext::HopByHop {
            len_units: rng.pick(&[0, 0, 1, 3]),
        },
        1 => Ext::Routing {
            len_units: rng.pick(&[0, 2]),
        },
        2 => Ext::DestOpts {
            len_units: rng.pick(&[0, 1]),
        },
        3 => Ext::Fragment {
            offset_units: if rng.chance(60) {
                0
            } else {
                rng.below(8) as u16
            },
            more: rng.chance(50),
            id: 7,
        },
        4 => Ext::Ah {
            len: rng.pick(&[0, 1, 4]),
        },
        _ => Ext::Raw {
            code: rng.pick(&[IPPROTO_HOPOPTS, IPPROTO_DSTOPTS, IPPROTO_ROUTING]),
            rest: vec![rng.pick(&[0, 0, 1, 255]); 7],
        },
    }
}

/// A structurally plausible random frame.
fn random_frame(rng: &mut Rng) -> Vec<u8> {
    let mut eth = Eth::new(rng.pick(&MACS), GUEST_MAC);
    if rng.chance(3) {
        eth.dst = [rng.byte(), rng.byte(), 0, 0, rng.byte(), rng.byte()];
    }
    let tags = rng.pick(&[0, 0, 0, 1, 1, 2, 3]);
    for _ in 0..tags {
        let tpid = rng.pick(&[ETH_P_8021Q, ETH_P_8021AD, ETH_P_8021Q]);
        let vid = if rng.chance(30) {
            0
        } else {
            rng.below(4096) as u16
        };
        eth = eth.tag(tpid, vid);
    }
    eth = match rng.below(10) {
        0..=2 => {
            let mut p = Ipv4::new(GUEST_V4, random_v4(rng)).udp(1, 2, &[0; 6]);
            if rng.chance(20) {
                p = p.options(&vec![1; rng.below(41)]);
            }
            if rng.chance(20) {
                p = p.fragment(rng.below(3) as u16, rng.chance(50));
            }
            if rng.chance(10) {
                p = p.ihl(rng.below(16) as u8);
            }
            if rng.chance(10) {
                p = p.tot_len(rng.below(120) as u16);
            }
            eth.ipv4(p)
        }
        3..=6 => {
            let mut p = if rng.chance(50) {
                ns(&random_v6(rng).to_string())
            } else {
                Ipv6::new(guest_v6(), random_v6(rng)).udp(1, 2, &[0; 4])
            };
            if rng.chance(50) {
                p.dst = random_v6(rng);
            }
            for _ in 0..rng.pick(&[0, 0, 1, 2, 3, 5, 6, 7, 8]) {
                p = p.ext(random_ext(rng));
            }
            if rng.chance(10) {
                p = p.payload_len(rng.below(200) as u16);
            }
            eth.ipv6(p)
        }
        7..=8 => {
            let mut a = Arp::request(GUEST_MAC, random_v4(rng), random_v4(rng));
            if rng.chance(20) {
                a.op = 2;
            }
            if rng.chance(5) {
                a = a.hlen(rng.byte());
            }
            if rng.chance(5) {
                a = a.ptype(rng.pick(&[ETH_P_IPV6, 0x0801, ETH_P_IPV4]));
            }
            eth.arp(a)
        }
        _ => {
            let len = rng.below(64);
            let bytes: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
            eth.raw(
                rng.pick(&[ETH_P_LLDP, 0x9000, 0x0000, 0x88cc, 0x8847]),
                &bytes,
            )
        }
    };
    if rng.chance(15) {
        eth = eth.truncate(MIN_FRAME + rng.below(80));
    }
    if rng.chance(10) {
        eth = eth.pad_to(60);
    }
    eth.build()
}

/// One to four random edits of `f`.
fn mutate(rng: &mut Rng, f: &mut Vec<u8>) {
    for _ in 0..=rng.below(4) {
        match rng.below(9) {
            // Flip bits of a byte, mostly in the headers.
            0 | 1 => {
                let span = f.len().min(if rng.chance(80) { 96 } else { usize::MAX });
                let i = rng.below(span);
                f[i] ^= 1 << rng.below(8);
            }
            2 => {
                let i = rng.below(f.len());
                let any = rng.byte();
                f[i] = rng.pick(&[0, 1, 4, 5, 6, 0x45, 0x60, 0x81, 0x88, 0xa8, 0xff, any]);
            }
            // Cut the frame.
            3 => {
                let n = MIN_FRAME + rng.below(f.len().saturating_sub(MIN_FRAME) + 1);
                f.truncate(n);
            }
            // Insert a VLAN tag right after the MACs.
            4 => {
                let tpid = rng.pick(&[ETH_P_8021Q, ETH_P_8021AD]).to_be_bytes();
                let vid = if rng.chance(40) { 0 } else { rng.byte() };
                f.splice(12..12, [tpid[0], tpid[1], 0, vid]);
            }
            // Remove four bytes after the MACs (a tag, if there is one).
            5 => {
                if f.len() >= 16 + MIN_FRAME {
                    f.drain(12..16);
                }
            }
            // A random or interesting EtherType at the innermost position we can guess.
            6 => {
                let mut o = 12;
                while o + 6 <= f.len()
                    && matches!(u16::from_be_bytes([f[o], f[o + 1]]), 0x8100 | 0x88a8)
                {
                    o += 4;
                }
                let t = if rng.chance(70) {
                    rng.pick(&[
                        ETH_P_IPV4,
                        ETH_P_IPV6,
                        0x0806,
                        ETH_P_8021Q,
                        ETH_P_8021AD,
                        ETH_P_LLDP,
                    ])
                } else {
                    rng.next() as u16
                };
                f[o..o + 2].copy_from_slice(&t.to_be_bytes());
            }
            // A random next header at a likely IPv6 next-header position.
            7 => {
                let candidates = [20, 24, 28, 54, 58, 62, 62 + 8];
                let i = rng.pick(&candidates);
                if i < f.len() {
                    let any = rng.byte();
                    f[i] = rng.pick(&[
                        IPPROTO_HOPOPTS,
                        IPPROTO_ROUTING,
                        IPPROTO_FRAGMENT,
                        IPPROTO_AH,
                        IPPROTO_DSTOPTS,
                        IPPROTO_ICMPV6,
                        IPPROTO_UDP,
                        IPPROTO_NONE,
                        any,
                    ]);
                }
            }
            // Grow it with random bytes.
            _ => {
                for _ in 0..rng.below(40) {
                    f.push(rng.byte());
                }
            }
        }
    }
    if f.len() < MIN_FRAME {
        f.resize(MIN_FRAME, 0);
    }
}

/// Seed and frame count: `GUARD_DIFF_SEED`, `GUARD_DIFF_FRAMES` override the defaults.
fn diff_params(default_frames: usize) -> (u64, usize) {
    let seed = std::env::var("GUARD_DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x6775_6172_6421);
    let frames = std::env::var("GUARD_DIFF_FRAMES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default_frames);
    (seed, frames)
}

/// Runs `frames` frames per policy through XDP (and every `tc_every`-th through TC too) and the
/// model; panics on the first difference with everything needed to reproduce it.
fn differential(object: &[u8], label: &str, frames_total: usize, tc_every: usize) {
    let (seed, frames_total) = diff_params(frames_total);
    let corpus: Vec<Vec<u8>> = cases().into_iter().map(|c| c.frame).collect();
    let start = Instant::now();
    let (mut xdp_checked, mut tc_checked, mut tc_refused) = (0usize, 0usize, 0usize);
    let per_setup = frames_total.div_ceil(Setup::ALL.len());
    for (s, setup) in Setup::ALL.into_iter().enumerate() {
        let policy = setup.policy();
        let dp = Datapath::load(object, &policy)
            .unwrap_or_else(|e| panic!("{label}: loading with {setup:?} policy: {e:?}"));
        let setup_seed = seed ^ ((s as u64 + 1) << 56);
        let mut rng = Rng(setup_seed);
        let mut before = dp.snapshot().expect("snapshot");
        for i in 0..per_setup {
            let mut frame = if rng.chance(40) {
                random_frame(&mut rng)
            } else {
                corpus[rng.below(corpus.len())].clone()
            };
            if rng.chance(85) {
                mutate(&mut rng, &mut frame);
            }
            let want = expected_run(&classify(&frame, 0, &policy), frame.len());
            let hooks: &[Hook] = if i % tc_every == 0 {
                &Hook::ALL
            } else {
                &[Hook::Xdp]
            };
            for &hook in hooks {
                if hook == Hook::Tc && skb_test_run_refuses(&frame) {
                    assert!(
                        dp.verdict(hook, &frame).is_err(),
                        "{label}: the kernel ran a frame skb_test_run_refuses predicted it would \
                         refuse\n{}",
                        hex(&frame)
                    );
                    tc_refused += 1;
                    continue;
                }
                let drop = dp.verdict(hook, &frame).unwrap_or_else(|e| {
                    panic!(
                        "{label} {hook:?} frame {i} (seed {setup_seed:#x}): {e:?}\n{}",
                        hex(&frame)
                    )
                });
                let after = dp.snapshot().expect("snapshot");
                let (counters, rule_hits) = after.since(&before);
                before = after;
                let got = Run {
                    drop,
                    counters,
                    rule_hits,
                };
                assert!(
                    got == want,
                    "{label} {hook:?} {setup:?}: kernel and model disagree on frame {i} \
                     (GUARD_DIFF_SEED={seed}, setup seed {setup_seed:#x}, {} bytes)\n\
                     kernel: {got:?}\nmodel:  {want:?} ({:?})\n{}",
                    frame.len(),
                    classify(&frame, 0, &policy),
                    hex(&frame)
                );
                match hook {
                    Hook::Xdp => xdp_checked += 1,
                    Hook::Tc => tc_checked += 1,
                }
            }
        }
    }
    println!(
        "{label}: {xdp_checked} frames checked on XDP, {tc_checked} on TC ({tc_refused} more \
         refused by bpf_prog_test_run_skb), seed {seed}, {:.1} s",
        start.elapsed().as_secs_f64()
    );
}

#[test]
fn differential_release() {
    differential(release_object(), "release", 200_000, 4);
}

#[test]
fn differential_debug() {
    differential(&debug_object(), "debug", 40_000, 4);
}

/// The kernel's ns/run for three typical frames (printed; run with `--nocapture`).
#[test]
fn ns_per_run_release() {
    let dp = Datapath::load(release_object(), &base_policy()).expect("load");
    let frames = [
        (
            "not addressed to the host",
            to(PEER_MAC).ipv4(udp4(STORAGE)).pad_to(60).build(),
        ),
        (
            "host-bound, unprotected",
            to(BRIDGE_MAC).ipv4(udp4(UNPROTECTED)).pad_to(60).build(),
        ),
        (
            "dropped (deny_ipv4)",
            to(BRIDGE_MAC).ipv4(udp4(STORAGE)).pad_to(60).build(),
        ),
    ];
    for hook in Hook::ALL {
        for (what, frame) in &frames {
            let ns = dp.ns_per_run(hook, frame, 1_000_000).expect("test run");
            println!("{hook:?} {what}: {ns} ns/run");
        }
    }
}
