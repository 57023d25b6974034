//! The holes of the tracker's issue 11: what reaches the host's management and storage side
//! around the snapshot that `guardctl attach` takes. Small scenario builders that add to a
//! built [`Lab`] (host interfaces into new namespaces, addresses, routes, tunnel devices,
//! sysctls), the attack cases that use them, and the changes a host goes through after a
//! one-shot attach (each with its revert).
//!
//! ```text
//!   class 1: networks that are not an address's own prefix
//!   host p2p0  10.31.0.1 peer 10.32.0.2/24, fd00:31::1 peer fd00:32::2/64 -- ns p2p (the peer)
//!   host onl0  10.41.0.1/32 + 10.41.0.0/24 dev onl0 (on-link route),
//!              fd00:41::1/128 (DHCPv6) + fd00:41::/64 dev onl0 proto ra  -- ns onlink .2
//!   host       10.61.0.0/24 via 10.10.0.2, fd00:61::/64 via fd00:10::2: the mgmt namespace
//!              routes them (forwarding on) to ns mgmtnet (.2) on its eth1
//!   host lo    10.71.0.1/32, fd00:71::1/128 (an L3-fabric host's management address)
//!   host bmc0  169.254.0.2/16 -- ns bmc 169.254.0.1/16 (a BMC's Redfish host interface)
//!   class 2: VXLAN devices vx0 (VNI 42, port 4789) and vx1 (VNI 43, port 8472), no `local`:
//!            they listen on every host address, the bridge's own included
//!   class 3: accept_source_route=1 and seg6_enabled=1 (all, br-guest, the servers' eth0)
//!   jumbo:   MTU 9000 on br-guest, its ports and the guests' and gw's eth0
//! ```
//!
//! Every address here is fixed ([`addr`]); like the lab's, the namespaces isolate labs.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context as _, Result, bail};

use super::{
    Lab, Role, addr as lab_addr,
    attack::{AttackCase, Carrier, DstMac, Expect, Probe},
    frame::{Mac, mac_to_string},
    up_with,
};
use crate::packet::{VXLAN_LINUX_PORT, VXLAN_PORT};

/// The holes' addressing plan.
pub mod addr {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::Mac;

    /// Point-to-point: the host's local address and its peer, in another network (the
    /// prefix length is the peer's: the kernel routes the peer's /24 and /64 to the link).
    pub const HOST_P2P4: Ipv4Addr = Ipv4Addr::new(10, 31, 0, 1);
    pub const PEER_P2P4: Ipv4Addr = Ipv4Addr::new(10, 32, 0, 2);
    pub const HOST_P2P6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x31, 0, 0, 0, 0, 0, 1);
    pub const PEER_P2P6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x32, 0, 0, 0, 0, 0, 2);

    /// A /32 (and a `DHCPv6` /128) whose network comes from an on-link route.
    pub const HOST_ONLINK4: Ipv4Addr = Ipv4Addr::new(10, 41, 0, 1);
    pub const ONLINK_SERVER4: Ipv4Addr = Ipv4Addr::new(10, 41, 0, 2);
    pub const HOST_ONLINK6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x41, 0, 0, 0, 0, 0, 1);
    pub const ONLINK_SERVER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x41, 0, 0, 0, 0, 0, 2);

    /// A subnet the host reaches through a router on its management network.
    pub const MGMT_ROUTER_LAN4: Ipv4Addr = Ipv4Addr::new(10, 61, 0, 1);
    pub const ROUTED_SERVER4: Ipv4Addr = Ipv4Addr::new(10, 61, 0, 2);
    pub const MGMT_ROUTER_LAN6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x61, 0, 0, 0, 0, 0, 1);
    pub const ROUTED_SERVER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x61, 0, 0, 0, 0, 0, 2);

    /// Management addresses on `lo`.
    pub const HOST_LO4: Ipv4Addr = Ipv4Addr::new(10, 71, 0, 1);
    pub const HOST_LO6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x71, 0, 0, 0, 0, 0, 1);

    /// IPv4 link-local toward a BMC.
    pub const HOST_BMC4: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 2);
    pub const BMC4: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 1);

    /// The VXLAN devices: VNI, UDP port (set below from the packet builder's), MAC.
    pub const VX0_VNI: u32 = 42;
    pub const VX0_MAC: Mac = [0x02, 0x47, 0x4c, 0x00, 0x0a, 0x01];
    pub const VX1_VNI: u32 = 43;
    pub const VX1_MAC: Mac = [0x02, 0x47, 0x4c, 0x00, 0x0a, 0x02];

    /// Class 4: the MACs the host takes after attach.
    /// A new port's MAC, lower than every port of a [`crate::lab::BridgeMac::Auto`] lab.
    pub const NEW_PORT_MAC: Mac = [0x02, 0x47, 0x4c, 0x00, 0x00, 0x01];
    /// `ip link set br-guest address` to this.
    pub const SET_BRIDGE_MAC: Mac = [0x02, 0x47, 0x4c, 0x00, 0x00, 0xfd];
    /// `vg2`'s new MAC: above `vg1`'s, so the automatic bridge MAC stays `vg1`'s.
    pub const NEW_VG2_MAC: Mac = [0x02, 0x47, 0x4c, 0x00, 0x02, 0x02];
    /// A macvlan on br-guest.
    pub const MACVLAN_MAC: Mac = [0x02, 0x47, 0x4c, 0x00, 0x0b, 0x01];
    /// A management network added after attach.
    pub const HOST_NEW_MGMT4: Ipv4Addr = Ipv4Addr::new(10, 12, 0, 1);
    pub const NEW_MGMT_SERVER4: Ipv4Addr = Ipv4Addr::new(10, 12, 0, 2);
    pub const HOST_NEW_MGMT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x12, 0, 0, 0, 0, 0, 1);
    pub const NEW_MGMT_SERVER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x12, 0, 0, 0, 0, 0, 2);

    /// The new guest of class 4 and 5.
    pub const G3_4: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 13);
    pub const G3_6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, 0, 0x13);
}

/// Namespaces the builders add.
pub const P2P: Role = Role::Extra("p2p");
pub const ONLINK: Role = Role::Extra("onlink");
pub const MGMTNET: Role = Role::Extra("mgmtnet");
pub const BMC: Role = Role::Extra("bmc");
/// The new guest (class 4 and 5).
pub const G3: Role = Role::Extra("g3");

/// The MTU of [`jumbo`].
pub const JUMBO_MTU: u32 = 9000;

fn v4(a: Ipv4Addr, len: u8) -> String {
    format!("{a}/{len}")
}

fn v6(a: Ipv6Addr, len: u8) -> String {
    format!("{a}/{len}")
}

/// A host interface `host_if` and the namespace `role` behind it (its end is `eth0`), both
/// up, with `host_lines` and `peer_lines` run in the host and in `role`.
fn host_link(
    lab: &mut Lab,
    role: Role,
    host_if: &str,
    host_lines: Vec<String>,
    peer_lines: Vec<String>,
) -> Result<()> {
    let Role::Extra(suffix) = role else {
        bail!("{role:?} is not a scenario namespace");
    };
    lab.add_netns(suffix, false)?;
    lab.add_veth((Role::Host, host_if), (role, "eth0"))?;
    let mut h = vec![format!("link set {host_if} up")];
    h.extend(host_lines);
    lab.netns(Role::Host).ip_batch(&h)?;
    let mut p = vec!["link set eth0 up".to_owned()];
    p.extend(peer_lines);
    lab.netns(role).ip_batch(&p)
}

/// A point-to-point address (`ip addr add A peer P/len`): the prefix belongs to the peer
/// (`IFA_ADDRESS`), the host holds only `A`, and the peer's network is another one than
/// `A`'s (as on a PPP or WireGuard-style link). The peer namespace holds `P` (peer `A`).
pub fn p2p(lab: &mut Lab) -> Result<()> {
    use addr::{HOST_P2P4, HOST_P2P6, PEER_P2P4, PEER_P2P6};
    host_link(
        lab,
        P2P,
        "p2p0",
        vec![
            format!(
                "address add {HOST_P2P4} peer {} dev p2p0",
                v4(PEER_P2P4, 24)
            ),
            format!(
                "address add {HOST_P2P6} peer {} dev p2p0 nodad",
                v6(PEER_P2P6, 64)
            ),
        ],
        vec![
            format!("address add {PEER_P2P4} peer {HOST_P2P4}/32 dev eth0"),
            format!("address add {PEER_P2P6} peer {HOST_P2P6}/128 dev eth0 nodad"),
        ],
    )
}

/// An IPv4 /32 with an on-link route for its network, and an IPv6 /128 (as `DHCPv6` gives it)
/// with the on-link /64 a router advertisement gives (`proto ra`).
pub fn onlink(lab: &mut Lab) -> Result<()> {
    use addr::{HOST_ONLINK4, HOST_ONLINK6, ONLINK_SERVER4, ONLINK_SERVER6};
    let mut server = Vec::new();
    up_with(
        &mut server,
        "eth0",
        &[v4(ONLINK_SERVER4, 24), v6(ONLINK_SERVER6, 64)],
    );
    host_link(
        lab,
        ONLINK,
        "onl0",
        vec![
            format!("address add {} dev onl0", v4(HOST_ONLINK4, 32)),
            "route add 10.41.0.0/24 dev onl0".to_owned(),
            format!("address add {} dev onl0 nodad", v6(HOST_ONLINK6, 128)),
            "route add fd00:41::/64 dev onl0 proto ra".to_owned(),
        ],
        server,
    )
}

/// A subnet behind a router on the management network: the mgmt namespace forwards to
/// `mgmtnet` on its `eth1`, and the host routes the subnet via the mgmt server's address.
pub fn routed_behind_mgmt(lab: &mut Lab) -> Result<()> {
    use addr::{MGMT_ROUTER_LAN4, MGMT_ROUTER_LAN6, ROUTED_SERVER4, ROUTED_SERVER6};
    let Role::Extra(suffix) = MGMTNET else {
        bail!("MGMTNET is a scenario namespace");
    };
    lab.add_netns(suffix, false)?;
    lab.add_veth((Role::Mgmt, "eth1"), (MGMTNET, "eth0"))?;
    let mgmt = lab.netns(Role::Mgmt);
    mgmt.sysctl(&[
        ("net.ipv4.ip_forward", "1"),
        ("net.ipv6.conf.all.forwarding", "1"),
    ])?;
    let mut l = Vec::new();
    up_with(
        &mut l,
        "eth1",
        &[v4(MGMT_ROUTER_LAN4, 24), v6(MGMT_ROUTER_LAN6, 64)],
    );
    mgmt.ip_batch(&l)?;
    let mut l = Vec::new();
    up_with(
        &mut l,
        "eth0",
        &[v4(ROUTED_SERVER4, 24), v6(ROUTED_SERVER6, 64)],
    );
    lab.netns(MGMTNET).ip_batch(&l)?;
    lab.wait_settled()?;
    lab.netns(MGMTNET).ip_batch(&[
        format!("route add default via {MGMT_ROUTER_LAN4}"),
        format!("route add ::/0 via {MGMT_ROUTER_LAN6}"),
    ])?;
    lab.netns(Role::Host).ip_batch(&[
        format!("route add 10.61.0.0/24 via {}", lab_addr::MGMT_SERVER4),
        format!("route add fd00:61::/64 via {}", lab_addr::MGMT_SERVER6),
    ])
}

/// Management addresses on `lo`, as an L3-fabric (BGP to the host) host keeps them.
pub fn lo_addresses(lab: &Lab) -> Result<()> {
    lab.netns(Role::Host).ip_batch(&[
        format!("address add {} dev lo", v4(addr::HOST_LO4, 32)),
        format!("address add {} dev lo nodad", v6(addr::HOST_LO6, 128)),
    ])
}

/// IPv4 link-local 169.254/16 on a non-guest interface toward a BMC (a Redfish host
/// interface).
pub fn bmc_link_local(lab: &mut Lab) -> Result<()> {
    host_link(
        lab,
        BMC,
        "bmc0",
        vec![format!("address add {} dev bmc0", v4(addr::HOST_BMC4, 16))],
        vec![format!("address add {} dev eth0", v4(addr::BMC4, 16))],
    )
}

/// Every class 1 builder, then waits until the links are up and the addresses usable.
pub fn class1(lab: &mut Lab) -> Result<()> {
    p2p(lab)?;
    onlink(lab)?;
    routed_behind_mgmt(lab)?;
    lo_addresses(lab)?;
    bmc_link_local(lab)?;
    lab.wait_settled()
}

/// Two VXLAN devices on the host with no `local` (they listen on every host address): `vx0`
/// on the IANA port, `vx1` on the port Linux uses when none is given. Learning is off and
/// the MACs are fixed, so an inner frame to the device's MAC is the host's own.
pub fn vxlan(lab: &Lab) -> Result<()> {
    let host = lab.netns(Role::Host);
    host.ip_batch(&[
        format!(
            "link add vx0 address {} type vxlan id {} dstport {VXLAN_PORT} nolearning",
            mac_to_string(&addr::VX0_MAC),
            addr::VX0_VNI
        ),
        format!(
            "link add vx1 address {} type vxlan id {} dstport {VXLAN_LINUX_PORT} nolearning",
            mac_to_string(&addr::VX1_MAC),
            addr::VX1_VNI
        ),
        "link set vx0 up".to_owned(),
        "link set vx1 up".to_owned(),
    ])
    .context("VXLAN devices (the kernel needs CONFIG_VXLAN)")?;
    lab.wait_settled()
}

/// Source routing accepted: `accept_source_route=1` (IPv4 LSRR/SSRR) and `seg6_enabled=1`
/// (IPv6 segment routing header) on `all` and `br-guest` of the host, where a guest's
/// source-routed frame arrives, and on `all` and `eth0` of the management and storage
/// servers: Linux drops a packet that still carries either header at any receiver without
/// them (`ip_rcv_options`, `ipv6_srh_rcv`), also once its route is used up, so the servers
/// accept them to count the deliveries.
pub fn source_routing(lab: &Lab) -> Result<()> {
    let on = |dev: &'static str| {
        [
            (format!("net.ipv4.conf.{dev}.accept_source_route"), "1"),
            (format!("net.ipv6.conf.{dev}.seg6_enabled"), "1"),
        ]
    };
    for (role, dev) in [
        (Role::Host, lab_addr::BRIDGE),
        (Role::Storage, "eth0"),
        (Role::Mgmt, "eth0"),
    ] {
        let mut s: Vec<(String, &str)> = on("all").to_vec();
        s.extend(on(dev));
        let refs: Vec<(&str, &str)> = s.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        lab.netns(role).sysctl(&refs)?;
    }
    Ok(())
}

/// MTU 9000 on the guest segment: `br-guest`, its ports, and `eth0` of g1, g2 and gw. The
/// legit flows then add jumbo datagrams (guest to guest, guest to the bridge address).
pub fn jumbo(lab: &Lab) -> Result<()> {
    let mtu = |dev: &str| format!("link set {dev} mtu {JUMBO_MTU}");
    let mut host: Vec<String> = lab.ports.iter().map(|p| mtu(&p.host.name)).collect();
    host.push(mtu(lab_addr::BRIDGE));
    lab.netns(Role::Host).ip_batch(&host)?;
    for p in &lab.ports {
        lab.netns(p.role).ip_batch(&[mtu(&p.guest.name)])?;
    }
    lab.wait_settled()
}

/// A UDP case from a guest to the bridge MAC.
fn udp(name: &'static str, dst: IpAddr, rx: Role, carrier: Carrier) -> AttackCase {
    AttackCase {
        id: 0,
        name,
        dst_mac: DstMac::Bridge,
        tags: Vec::new(),
        probe: Probe::Udp { dst, rx },
        carrier,
        expect: Expect::Delivered,
    }
}

/// Numbers the cases from `first` (their UDP ports are `40000 + id`).
fn numbered(cases: Vec<AttackCase>, first: u16) -> Vec<AttackCase> {
    cases
        .into_iter()
        .zip(first..)
        .map(|(c, id)| AttackCase { id, ..c })
        .collect()
}

/// Class 1: to networks that are not an address's own prefix (needs [`class1`]).
#[must_use]
pub fn class1_cases() -> Vec<AttackCase> {
    use addr::{
        BMC4, HOST_BMC4, HOST_LO4, HOST_LO6, ONLINK_SERVER4, ONLINK_SERVER6, PEER_P2P4, PEER_P2P6,
        ROUTED_SERVER4, ROUTED_SERVER6,
    };
    let p = Carrier::Plain;
    let (a4, a6) = (IpAddr::V4, IpAddr::V6);
    numbered(
        vec![
            udp("p2p-peer-fwd-v4", a4(PEER_P2P4), P2P, p),
            udp("p2p-peer-fwd-v6", a6(PEER_P2P6), P2P, p),
            udp("onlink32-fwd-v4", a4(ONLINK_SERVER4), ONLINK, p),
            udp("dhcp6-128-ra64-fwd-v6", a6(ONLINK_SERVER6), ONLINK, p),
            udp("routed-via-mgmt-fwd-v4", a4(ROUTED_SERVER4), MGMTNET, p),
            udp("routed-via-mgmt-fwd-v6", a6(ROUTED_SERVER6), MGMTNET, p),
            udp("lo-addr-local-v4", a4(HOST_LO4), Role::Host, p),
            udp("lo-addr-local-v6", a6(HOST_LO6), Role::Host, p),
            udp("bmc-linklocal-fwd-v4", a4(BMC4), BMC, p),
            udp("bmc-linklocal-local-v4", a4(HOST_BMC4), Role::Host, p),
        ],
        300,
    )
}

/// Class 2: VXLAN to the bridge's own address, the inner packet routed to storage or
/// management or delivered to a host address (needs [`vxlan`] and a bridge address).
#[must_use]
pub fn class2_cases() -> Vec<AttackCase> {
    let vx0 = Carrier::Vxlan {
        outer: lab_addr::BRIDGE4,
        port: VXLAN_PORT,
        vni: addr::VX0_VNI,
        inner_mac: addr::VX0_MAC,
    };
    let vx1 = Carrier::Vxlan {
        outer: lab_addr::BRIDGE4,
        port: VXLAN_LINUX_PORT,
        vni: addr::VX1_VNI,
        inner_mac: addr::VX1_MAC,
    };
    let (a4, a6) = (IpAddr::V4, IpAddr::V6);
    numbered(
        vec![
            udp(
                "vxlan-fwd-v4-storage",
                a4(lab_addr::STORAGE_SERVER4),
                Role::Storage,
                vx0,
            ),
            udp(
                "vxlan-local-v4-mgmt",
                a4(lab_addr::HOST_MGMT4),
                Role::Host,
                vx0,
            ),
            udp(
                "vxlan8472-fwd-v6-mgmt",
                a6(lab_addr::MGMT_SERVER6),
                Role::Mgmt,
                vx1,
            ),
            udp(
                "vxlan8472-local-v6-storage",
                a6(lab_addr::HOST_STORAGE6),
                Role::Host,
                vx1,
            ),
        ],
        320,
    )
}

/// Class 3: addressed to the bridge's own address with a source route whose last hop is a
/// protected address (needs [`source_routing`] and a bridge address).
#[must_use]
pub fn class3_cases() -> Vec<AttackCase> {
    let via = |outer: IpAddr, strict: bool| Carrier::SourceRoute { outer, strict };
    let (b4, b6) = (IpAddr::V4(lab_addr::BRIDGE4), IpAddr::V6(lab_addr::BRIDGE6));
    let (a4, a6) = (IpAddr::V4, IpAddr::V6);
    numbered(
        vec![
            udp(
                "lsrr-local-v4-storage",
                a4(lab_addr::HOST_STORAGE4),
                Role::Host,
                via(b4, false),
            ),
            udp(
                "lsrr-fwd-v4-storage",
                a4(lab_addr::STORAGE_SERVER4),
                Role::Storage,
                via(b4, false),
            ),
            udp(
                "ssrr-fwd-v4-mgmt",
                a4(lab_addr::MGMT_SERVER4),
                Role::Mgmt,
                via(b4, true),
            ),
            udp(
                "srh-local-v6-mgmt",
                a6(lab_addr::HOST_MGMT6),
                Role::Host,
                via(b6, false),
            ),
            udp(
                "srh-fwd-v6-storage",
                a6(lab_addr::STORAGE_SERVER6),
                Role::Storage,
                via(b6, false),
            ),
        ],
        340,
    )
}

/// Class 4: a change the host goes through after a one-shot `attach`, with what reverts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// A new VM's port whose MAC is lower than every other port's: a bridge without a set MAC
    /// takes it (needs a [`crate::lab::BridgeMac::Auto`] lab).
    NewPortLowersBridgeMac,
    /// `ip link set vg2 address X` (above `vg1`'s, so the bridge MAC stays).
    PortMac,
    /// A macvlan on br-guest with its own MAC.
    Macvlan,
    /// A management address and subnet added on `mgmt0` (and the mgmt server in it).
    NewMgmtNetwork,
    /// `ip link set br-guest address X`. Last: a set MAC stays set (`NET_ADDR_SET`), the
    /// bridge no longer follows its ports.
    BridgeAddress,
}

impl Change {
    pub const ALL: [Self; 5] = [
        Self::NewPortLowersBridgeMac,
        Self::PortMac,
        Self::Macvlan,
        Self::NewMgmtNetwork,
        Self::BridgeAddress,
    ];

    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::NewPortLowersBridgeMac => "new port lowers the bridge MAC",
            Self::PortMac => "a port's MAC changes",
            Self::Macvlan => "a macvlan on br-guest",
            Self::NewMgmtNetwork => "a new management network",
            Self::BridgeAddress => "ip link set br-guest address",
        }
    }

    /// The guest that attacks after this change (its own port's MAC is the one a port MAC
    /// change gives it: Linux takes a frame to another port's MAC for another host).
    #[must_use]
    pub fn attacker(self) -> Role {
        match self {
            Self::PortMac => Role::G2,
            _ => Role::G1,
        }
    }

    /// The attack cases after the change.
    #[must_use]
    pub fn cases(self) -> Vec<AttackCase> {
        let to = |name, mac: Mac, dst: IpAddr, rx| AttackCase {
            dst_mac: DstMac::Exact(mac),
            ..udp(name, dst, rx, Carrier::Plain)
        };
        let (st4, st6) = (
            IpAddr::V4(lab_addr::STORAGE_SERVER4),
            IpAddr::V6(lab_addr::STORAGE_SERVER6),
        );
        let (mg4, mg6) = (
            IpAddr::V4(lab_addr::HOST_MGMT4),
            IpAddr::V6(lab_addr::HOST_MGMT6),
        );
        let (st, host) = (Role::Storage, Role::Host);
        let cases = match self {
            Self::NewPortLowersBridgeMac => vec![
                to("newport-brmac-fwd-v4-storage", addr::NEW_PORT_MAC, st4, st),
                to("newport-brmac-local-v6-mgmt", addr::NEW_PORT_MAC, mg6, host),
            ],
            Self::PortMac => vec![
                to("portmac-new-fwd-v6-storage", addr::NEW_VG2_MAC, st6, st),
                to("portmac-new-local-v4-mgmt", addr::NEW_VG2_MAC, mg4, host),
            ],
            Self::Macvlan => vec![
                to("macvlan-fwd-v4-storage", addr::MACVLAN_MAC, st4, st),
                to("macvlan-local-v6-mgmt", addr::MACVLAN_MAC, mg6, host),
            ],
            Self::NewMgmtNetwork => vec![
                udp(
                    "newmgmt-local-v4",
                    IpAddr::V4(addr::HOST_NEW_MGMT4),
                    host,
                    Carrier::Plain,
                ),
                udp(
                    "newmgmt-fwd-v6",
                    IpAddr::V6(addr::NEW_MGMT_SERVER6),
                    Role::Mgmt,
                    Carrier::Plain,
                ),
                udp(
                    "newmgmt-fwd-v4",
                    IpAddr::V4(addr::NEW_MGMT_SERVER4),
                    Role::Mgmt,
                    Carrier::Plain,
                ),
            ],
            Self::BridgeAddress => vec![
                to("setbrmac-fwd-v6-storage", addr::SET_BRIDGE_MAC, st6, st),
                to("setbrmac-local-v4-mgmt", addr::SET_BRIDGE_MAC, mg4, host),
            ],
        };
        numbered(cases, 360 + 10 * (self as u16))
    }

    /// Makes the change and waits until the kernel shows it.
    pub fn apply(self, lab: &mut Lab) -> Result<()> {
        match self {
            Self::NewPortLowersBridgeMac => {
                add_guest_port(lab, "vg3", Some(addr::NEW_PORT_MAC))?;
                enslave(lab, "vg3")?;
                wait_bridge_mac(lab, addr::NEW_PORT_MAC)
            }
            Self::PortMac => set_mac(lab, "vg2", addr::NEW_VG2_MAC),
            Self::Macvlan => lab.netns(Role::Host).ip_batch(&[
                format!(
                    "link add mv0 link {} address {} type macvlan mode bridge",
                    lab_addr::BRIDGE,
                    mac_to_string(&addr::MACVLAN_MAC)
                ),
                "link set mv0 up".to_owned(),
            ]),
            Self::NewMgmtNetwork => {
                lab.netns(Role::Host).ip_batch(&[
                    format!("address add {} dev mgmt0", v4(addr::HOST_NEW_MGMT4, 24)),
                    format!(
                        "address add {} dev mgmt0 nodad",
                        v6(addr::HOST_NEW_MGMT6, 64)
                    ),
                ])?;
                lab.netns(Role::Mgmt).ip_batch(&[
                    format!("address add {} dev eth0", v4(addr::NEW_MGMT_SERVER4, 24)),
                    format!(
                        "address add {} dev eth0 nodad",
                        v6(addr::NEW_MGMT_SERVER6, 64)
                    ),
                ])?;
                lab.wait_settled()
            }
            Self::BridgeAddress => set_mac(lab, lab_addr::BRIDGE, addr::SET_BRIDGE_MAC),
        }
    }

    /// Undoes [`Change::apply`] and waits until the kernel shows it.
    pub fn revert(self, lab: &mut Lab) -> Result<()> {
        match self {
            Self::NewPortLowersBridgeMac => {
                lab.netns(Role::Host).ip(&["link", "del", "vg3"])?;
                wait_bridge_mac(lab, lab_addr::AUTO_PORT_MACS[0])
            }
            Self::PortMac => set_mac(lab, "vg2", lab_addr::AUTO_PORT_MACS[1]),
            Self::Macvlan => lab.netns(Role::Host).ip(&["link", "del", "mv0"]).map(drop),
            Self::NewMgmtNetwork => {
                lab.netns(Role::Host).ip_batch(&[
                    format!("address del {} dev mgmt0", v4(addr::HOST_NEW_MGMT4, 24)),
                    format!("address del {} dev mgmt0", v6(addr::HOST_NEW_MGMT6, 64)),
                ])?;
                lab.netns(Role::Mgmt).ip_batch(&[
                    format!("address del {} dev eth0", v4(addr::NEW_MGMT_SERVER4, 24)),
                    format!("address del {} dev eth0", v6(addr::NEW_MGMT_SERVER6, 64)),
                ])
            }
            Self::BridgeAddress => set_mac(lab, lab_addr::BRIDGE, lab.bridge.mac),
        }
    }
}

/// `ip link set DEV address MAC` in the host, then waits until the kernel reports it.
pub fn set_mac(lab: &Lab, dev: &str, mac: Mac) -> Result<()> {
    lab.netns(Role::Host)
        .ip(&["link", "set", dev, "address", &mac_to_string(&mac)])?;
    poll_until(&format!("{dev} takes {}", mac_to_string(&mac)), || {
        Ok(lab.iface(Role::Host, dev)?.mac == mac)
    })
}

/// Waits until br-guest's MAC is `mac`.
pub fn wait_bridge_mac(lab: &Lab, mac: Mac) -> Result<()> {
    poll_until(&format!("br-guest takes {}", mac_to_string(&mac)), || {
        Ok(lab.iface(Role::Host, lab_addr::BRIDGE)?.mac == mac)
    })
}

/// Polls `f` until it is true, for at most the lab's settle time.
fn poll_until(what: &str, mut f: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = std::time::Instant::now() + super::SETTLE_TIMEOUT;
    loop {
        if f()? {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            bail!("not within {:?}: {what}", super::SETTLE_TIMEOUT);
        }
        std::thread::sleep(super::POLL_INTERVAL);
    }
}

/// A new VM: the namespace [`G3`] (created once) with `eth0` up and addressed, and its port
/// `host_if` in the host (with `mac` if given), not yet enslaved and down.
pub fn add_guest_port(lab: &mut Lab, host_if: &str, mac: Option<Mac>) -> Result<()> {
    if !lab.namespace_names().iter().any(|n| n.ends_with("-g3")) {
        let Role::Extra(suffix) = G3 else {
            bail!("G3 is a scenario namespace");
        };
        lab.add_netns(suffix, false)?;
    }
    lab.add_veth((Role::Host, host_if), (G3, "eth0"))?;
    if let Some(m) = mac {
        lab.netns(Role::Host)
            .ip(&["link", "set", host_if, "address", &mac_to_string(&m)])?;
    }
    let mut l = Vec::new();
    up_with(&mut l, "eth0", &[v4(addr::G3_4, 24), v6(addr::G3_6, 64)]);
    lab.netns(G3).ip_batch(&l)
}

/// Enslaves `host_if` to br-guest and brings it up (one `ip` process: the port forwards at
/// once, STP is off), then waits until the guest's link is up.
pub fn enslave(lab: &Lab, host_if: &str) -> Result<()> {
    lab.netns(Role::Host).ip_batch(&[
        format!("link set {host_if} master {}", lab_addr::BRIDGE),
        format!("link set {host_if} up"),
    ])?;
    wait_guest_up(lab)
}

/// Waits until [`G3`]'s `eth0` is up (its port in the host is up).
pub fn wait_guest_up(lab: &Lab) -> Result<()> {
    poll_until("g3's eth0 comes up", || {
        let v = lab.netns(G3).ip_json(&["link", "show", "dev", "eth0"])?;
        Ok(v[0]["operstate"].as_str() == Some("UP"))
    })
}

/// The attacker on [`G3`]'s `eth0` (after [`add_guest_port`]).
pub fn g3_attacker(lab: &Lab, host_if: &str) -> Result<super::attack::Attacker> {
    let guest = lab.iface(G3, "eth0")?;
    let port = lab.iface(Role::Host, host_if)?;
    Ok(super::attack::Attacker {
        role: G3,
        ns: guest.ns,
        ifname: guest.name,
        mac: guest.mac,
        own_port_mac: port.mac,
        other_port_mac: lab.port(Role::G1)?.host.mac,
        bridge_mac: lab.bridge.mac,
        ip4: addr::G3_4,
        ip6: addr::G3_6,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_ids_and_names_are_unique() {
        let mut all = class1_cases();
        all.extend(class2_cases());
        all.extend(class3_cases());
        for c in Change::ALL {
            all.extend(c.cases());
        }
        let mut ids: Vec<u16> = all.iter().map(|c| c.id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), all.len());
        let mut names: Vec<&str> = all.iter().map(|c| c.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all.len());
        assert!(names.iter().all(|n| n.len() <= 28), "{names:?}");
    }

    #[test]
    fn new_port_mac_is_below_every_auto_port_mac() {
        assert!(
            lab_addr::AUTO_PORT_MACS
                .iter()
                .all(|m| addr::NEW_PORT_MAC < *m)
        );
        assert!(addr::NEW_VG2_MAC > lab_addr::AUTO_PORT_MACS[0]);
    }
}
