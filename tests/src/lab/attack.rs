//! The attack generator: every host-bound kind of frame of the threat model, sent as raw
//! frames out of guest `g1`, with delivery measured where it would land.
//!
//! Each case sends `count` frames with unique markers. UDP cases carry
//! `GLAB | nonce | case id | seq` and are counted by a UDP socket bound in the target namespace
//! (the storage or management server, or the host itself). ARP and NDP cases are counted by the
//! answers captured at `g1`: each request uses its own sender address (`198.18.0.0/15`, the
//! benchmarking range, for ARP; `fd00:50::cafe:0:<case>:<seq>` for NDP), so every reply names
//! the request it answers. Receivers are bound before the first frame is sent, and collection
//! ends when all `count` arrived or at a deadline: absence is only ever concluded from a
//! deadline, never from a sleep.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    Lab, Role, addr,
    frame::Mac,
    sock::{PacketSocket, udp_bind, udp_collect},
};
use crate::packet::{
    ARP_REPLY, Arp, BROADCAST, ETH_MIN_LEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_ARP, ETH_P_IPV6, Eth,
    ICMPV6_NEIGHBOUR_ADVERTISEMENT, Ipv4, Ipv6, VlanTag, ipv6_multicast_mac, solicited_node, vxlan,
};

/// Frames per case unless told otherwise.
pub const DEFAULT_COUNT: u32 = 20;
/// Most frames per case: ARP and NDP markers hold the sequence number in 10 bits.
pub const MAX_COUNT: u32 = 1024;
/// How long after the last frame receivers wait for stragglers (only a case that does not
/// deliver everything waits this long).
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(2);

const MAGIC: &[u8; 4] = b"GLAB";

/// What the stock kernel (no guard) does with a case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Every frame reaches its target: an attack that works (or a legit flow).
    Delivered,
    /// The kernel itself drops or ignores it, for the reason given. Kept as a measured
    /// boundary of the attack surface: should a kernel start delivering it, the negative
    /// control says so and the case becomes an attack.
    NotDelivered(&'static str),
}

/// The outcome of one case (attack or legit flow).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaseResult {
    pub name: String,
    pub sent: u32,
    pub delivered: u32,
    /// What the stock kernel does with it.
    pub expect: Expect,
}

impl CaseResult {
    #[must_use]
    pub fn all_delivered(&self) -> bool {
        self.sent > 0 && self.delivered == self.sent
    }

    /// Without guard: did the kernel do what [`Expect`] says (all delivered, or none)?
    #[must_use]
    pub fn as_expected_without_guard(&self) -> bool {
        match self.expect {
            Expect::Delivered => self.all_delivered(),
            Expect::NotDelivered(_) => self.sent > 0 && self.delivered == 0,
        }
    }

    /// Is this one of the attacks that work on a stock kernel?
    #[must_use]
    pub fn is_working_attack(&self) -> bool {
        self.expect == Expect::Delivered
    }
}

impl fmt::Display for CaseResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}/{}", self.name, self.delivered, self.sent)
    }
}

/// A run's marker payload: `GLAB`, nonce, case id, sequence number.
#[must_use]
pub fn marker(nonce: u32, id: u16, seq: u32) -> Vec<u8> {
    let mut p = MAGIC.to_vec();
    p.extend_from_slice(&nonce.to_be_bytes());
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p
}

/// The sequence number of a marker of this run and case, if `payload` is one.
#[must_use]
pub fn parse_marker(payload: &[u8], nonce: u32, id: u16) -> Option<u32> {
    let p = payload.get(..14)?;
    (p[..4] == *MAGIC && p[4..8] == nonce.to_be_bytes() && p[8..10] == id.to_be_bytes())
        .then(|| u32::from_be_bytes([p[10], p[11], p[12], p[13]]))
}

/// A per-run nonce, so that frames of an earlier run are never counted.
#[must_use]
pub fn new_nonce() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    t.subsec_nanos() ^ (t.as_secs() as u32).rotate_left(16) ^ std::process::id()
}

/// Which destination MAC a case uses.
#[derive(Clone, Copy, Debug)]
pub enum DstMac {
    /// The bridge device's own MAC.
    Bridge,
    /// `ff:ff:ff:ff:ff:ff`.
    Broadcast,
    /// A fixed multicast MAC.
    Multicast(Mac),
    /// The attacker's own port on the host side (a permanent local FDB entry of the bridge).
    OwnPort,
    /// Another guest's port on the host side (also a local FDB entry).
    OtherPort,
    /// The solicited-node group of the NDP target.
    SolicitedNode,
    /// This unicast MAC: one the host took after guard was attached (a new bridge MAC, a
    /// macvlan, a port's new MAC).
    Exact(Mac),
}

/// How the probe is carried to the host.
#[derive(Clone, Copy, Debug, Default)]
pub enum Carrier {
    /// As it is.
    #[default]
    Plain,
    /// Inside VXLAN: a UDP datagram from the attacker to `outer` port `port` with VNI `vni`,
    /// whose inner Ethernet frame is addressed to `inner_mac` (the VXLAN device's).
    Vxlan {
        outer: Ipv4Addr,
        port: u16,
        vni: u32,
        inner_mac: Mac,
    },
    /// Source-routed: addressed to `outer` (a host address guard does not protect), with the
    /// probe's destination as the next and last hop: an IPv4 loose (`strict`: strict) source
    /// route, or an IPv6 segment routing header with one segment left.
    SourceRoute { outer: IpAddr, strict: bool },
}

/// The source MAC of the Ethernet frame inside an encapsulation: a MAC of no device, so that
/// VXLAN does not take it for its own looped-back frame.
pub const INNER_SRC_MAC: Mac = [0x02, 0x47, 0x4c, 0x00, 0x0e, 0x01];

/// What a case carries and where its delivery is counted.
#[derive(Clone, Copy, Debug)]
pub enum Probe {
    /// A UDP datagram to `dst`, counted by a socket bound on `dst` in `rx`.
    Udp { dst: IpAddr, rx: Role },
    /// An ARP request for `target`; counted: replies at the attacker.
    Arp { target: Ipv4Addr },
    /// A neighbour solicitation for `target` (to its solicited-node group, or with `unicast`
    /// to the target address itself); counted: advertisements at the attacker.
    Ndp { target: Ipv6Addr, unicast: bool },
}

/// One attack case.
#[derive(Clone, Debug)]
pub struct AttackCase {
    pub id: u16,
    pub name: &'static str,
    pub dst_mac: DstMac,
    /// VLAN tags, outermost first.
    pub tags: Vec<VlanTag>,
    pub probe: Probe,
    pub carrier: Carrier,
    pub expect: Expect,
}

const Q0: VlanTag = VlanTag::priority(ETH_P_8021Q);
const AD0: VlanTag = VlanTag::priority(ETH_P_8021AD);

/// Why the host sends no neighbour advertisement for its management/storage addresses.
const NDP_STRICT: &str = "ndisc_recv_ns() looks the target up with ipv6_get_ifaddr(net, \
    target, dev, strict=1): Linux answers a solicitation only for an address of the receiving \
    device, unlike ARP (arp_ignore=0 answers for any local address). Sent to the \
    solicited-node group it does not even get that far: br-guest has not joined the group";
const OTHER_PORT: &str = "the frame enters through g1's port with another port's MAC: \
    eth_type_trans() on the ingress veth marks it PACKET_OTHERHOST, the bridge passes it up \
    (local FDB entry) and ip_rcv_core() drops PACKET_OTHERHOST";
const BCAST_FWD: &str = "ip_forward()/ip6_forward() drop frames whose pkt_type is not \
    PACKET_HOST: an L2 broadcast only reaches the host's own addresses";
const VLAN_NONZERO: &str = "no 802.1Q device for the VLAN: __netif_receive_skb_core() marks a \
    frame with a non-zero VLAN ID PACKET_OTHERHOST";

/// Every host-bound kind and protocol of the threat model, as sent from guest `g1`, followed
/// by the measured boundaries ([`Expect::NotDelivered`]) next to them.
#[must_use]
#[expect(
    clippy::too_many_lines,
    reason = "a table of cases, one entry each; splitting it would only scatter it"
)]
pub fn attack_cases() -> Vec<AttackCase> {
    use DstMac::{Bridge, Broadcast, Multicast, OtherPort, OwnPort, SolicitedNode};
    let udp = |dst: IpAddr, rx: Role| Probe::Udp { dst, rx };
    let v4 = IpAddr::V4;
    let v6 = IpAddr::V6;
    let (st, mg, host) = (Role::Storage, Role::Mgmt, Role::Host);
    let cases: Vec<(&'static str, DstMac, Vec<VlanTag>, Probe)> = vec![
        // Forwarded by the host onto the storage/management networks.
        (
            "fwd-v4-storage",
            Bridge,
            vec![],
            udp(v4(addr::STORAGE_SERVER4), st),
        ),
        (
            "fwd-v4-mgmt",
            Bridge,
            vec![],
            udp(v4(addr::MGMT_SERVER4), mg),
        ),
        (
            "fwd-v6-storage",
            Bridge,
            vec![],
            udp(v6(addr::STORAGE_SERVER6), st),
        ),
        (
            "fwd-v6-mgmt",
            Bridge,
            vec![],
            udp(v6(addr::MGMT_SERVER6), mg),
        ),
        // Delivered locally to the host's own addresses (weak host model).
        (
            "local-v4-storage",
            Bridge,
            vec![],
            udp(v4(addr::HOST_STORAGE4), host),
        ),
        (
            "local-v4-mgmt",
            Bridge,
            vec![],
            udp(v4(addr::HOST_MGMT4), host),
        ),
        (
            "local-v6-storage",
            Bridge,
            vec![],
            udp(v6(addr::HOST_STORAGE6), host),
        ),
        (
            "local-v6-mgmt",
            Bridge,
            vec![],
            udp(v6(addr::HOST_MGMT6), host),
        ),
        // A unicast IP inside an L2 broadcast/multicast frame.
        (
            "bcast-local-v4-mgmt",
            Broadcast,
            vec![],
            udp(v4(addr::HOST_MGMT4), host),
        ),
        (
            "bcast-local-v6-storage",
            Broadcast,
            vec![],
            udp(v6(addr::HOST_STORAGE6), host),
        ),
        (
            "mcast-local-v4-storage",
            Multicast([0x01, 0x00, 0x5e, 0x00, 0x00, 0x01]),
            vec![],
            udp(v4(addr::HOST_STORAGE4), host),
        ),
        (
            "mcast-local-v6-mgmt",
            Multicast([0x33, 0x33, 0x00, 0x00, 0x00, 0x01]),
            vec![],
            udp(v6(addr::HOST_MGMT6), host),
        ),
        // The attacker's own port MAC (a local FDB entry of the bridge).
        (
            "portmac-fwd-v4-storage",
            OwnPort,
            vec![],
            udp(v4(addr::STORAGE_SERVER4), st),
        ),
        (
            "portmac-local-v6-mgmt",
            OwnPort,
            vec![],
            udp(v6(addr::HOST_MGMT6), host),
        ),
        // Priority tags (VLAN ID 0): the core strips them and routes the inner packet.
        (
            "vlan0-1q-fwd-v4-storage",
            Bridge,
            vec![Q0],
            udp(v4(addr::STORAGE_SERVER4), st),
        ),
        (
            "vlan0-1ad-fwd-v6-mgmt",
            Bridge,
            vec![AD0],
            udp(v6(addr::MGMT_SERVER6), mg),
        ),
        (
            "vlan0-qinq-local-v4-mgmt",
            Bridge,
            vec![AD0, Q0],
            udp(v4(addr::HOST_MGMT4), host),
        ),
        (
            "vlan0-1q-local-v6-storage",
            Bridge,
            vec![Q0],
            udp(v6(addr::HOST_STORAGE6), host),
        ),
        // Address resolution: the host answering tells the guest what to aim at.
        (
            "arp-host-mgmt",
            Broadcast,
            vec![],
            Probe::Arp {
                target: addr::HOST_MGMT4,
            },
        ),
        (
            "arp-host-storage",
            Broadcast,
            vec![],
            Probe::Arp {
                target: addr::HOST_STORAGE4,
            },
        ),
    ];
    let boundaries: Vec<(&'static str, DstMac, Vec<VlanTag>, Probe, &'static str)> = vec![
        (
            "ndp-host-mgmt",
            SolicitedNode,
            vec![],
            Probe::Ndp {
                target: addr::HOST_MGMT6,
                unicast: false,
            },
            NDP_STRICT,
        ),
        (
            "ndp-host-storage",
            SolicitedNode,
            vec![],
            Probe::Ndp {
                target: addr::HOST_STORAGE6,
                unicast: false,
            },
            NDP_STRICT,
        ),
        (
            "ndp-unicast-host-mgmt",
            Bridge,
            vec![],
            Probe::Ndp {
                target: addr::HOST_MGMT6,
                unicast: true,
            },
            NDP_STRICT,
        ),
        (
            "otherport-fwd-v4-storage",
            OtherPort,
            vec![],
            udp(v4(addr::STORAGE_SERVER4), st),
            OTHER_PORT,
        ),
        (
            "bcast-fwd-v4-storage",
            Broadcast,
            vec![],
            udp(v4(addr::STORAGE_SERVER4), st),
            BCAST_FWD,
        ),
        (
            "vlan5-1q-fwd-v4-storage",
            Bridge,
            vec![VlanTag {
                tpid: ETH_P_8021Q,
                tci: 5,
            }],
            udp(v4(addr::STORAGE_SERVER4), st),
            VLAN_NONZERO,
        ),
    ];
    let cases = cases
        .into_iter()
        .map(|(name, dst_mac, tags, probe)| (name, dst_mac, tags, probe, Expect::Delivered));
    let boundaries = boundaries
        .into_iter()
        .map(|(name, dst_mac, tags, probe, why)| {
            (name, dst_mac, tags, probe, Expect::NotDelivered(why))
        });
    cases
        .chain(boundaries)
        .zip(1u16..)
        .map(|((name, dst_mac, tags, probe, expect), id)| AttackCase {
            id,
            name,
            dst_mac,
            tags,
            probe,
            carrier: Carrier::Plain,
            expect,
        })
        .collect()
}

/// The cases of [`attack_cases`] with these names, in the order named.
pub fn cases_named(names: &[&str]) -> Result<Vec<AttackCase>> {
    let all = attack_cases();
    names
        .iter()
        .map(|n| {
            all.iter()
                .find(|c| c.name == *n)
                .cloned()
                .with_context(|| format!("no attack case named {n}"))
        })
        .collect()
}

/// The sender address that marks ARP request `seq` of case `id`.
#[must_use]
pub fn arp_marker(id: u16, seq: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + (u32::from(id) << 10) + (seq & 0x3ff))
}

/// The sender address that marks neighbour solicitation `seq` of case `id`.
#[must_use]
pub fn ndp_marker(id: u16, seq: u32) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0xcafe, 0, id, seq as u16)
}

/// Where a case's answers are counted.
enum Receiver {
    Udp(UdpSocket),
    Capture(PacketSocket),
}

/// A case with its receiver bound and ready.
struct Armed<'a> {
    case: &'a AttackCase,
    receiver: Receiver,
    port: u16,
}

/// Options of a run.
#[derive(Clone, Copy, Debug)]
pub struct FireOptions {
    pub count: u32,
    pub deadline: Duration,
}

impl Default for FireOptions {
    fn default() -> Self {
        Self {
            count: DEFAULT_COUNT,
            deadline: DEFAULT_DEADLINE,
        }
    }
}

/// Who sends and with which addresses.
pub struct Attacker {
    pub role: Role,
    pub ns: String,
    pub ifname: String,
    pub mac: Mac,
    pub own_port_mac: Mac,
    /// The host side of another guest's port.
    pub other_port_mac: Mac,
    pub bridge_mac: Mac,
    pub ip4: Ipv4Addr,
    pub ip6: Ipv6Addr,
}

impl Attacker {
    /// Guest `g1` of `lab`.
    pub fn g1(lab: &Lab) -> Result<Self> {
        Self::guest(lab, Role::G1)
    }

    /// Guest `g1` or `g2` of `lab` (the other one's port is "another guest's port").
    pub fn guest(lab: &Lab, role: Role) -> Result<Self> {
        let (ip4, ip6, other) = match role {
            Role::G1 => (addr::G1_4, addr::G1_6, Role::G2),
            Role::G2 => (addr::G2_4, addr::G2_6, Role::G1),
            _ => bail!("{role:?} is not a guest of the lab"),
        };
        let port = lab.port(role)?;
        Ok(Self {
            role,
            ns: port.guest.ns.clone(),
            ifname: port.guest.name.clone(),
            mac: port.guest.mac,
            own_port_mac: port.host.mac,
            other_port_mac: lab.port(other)?.host.mac,
            bridge_mac: lab.bridge.mac,
            ip4,
            ip6,
        })
    }
}

fn arm<'a>(lab: &Lab, att: &Attacker, case: &'a AttackCase) -> Result<Armed<'a>> {
    let port = 40_000 + case.id;
    let receiver = match case.probe {
        Probe::Udp { dst, rx } => Receiver::Udp(udp_bind(lab.ns(rx), SocketAddr::new(dst, port))?),
        Probe::Arp { .. } => {
            Receiver::Capture(PacketSocket::open(&att.ns, &att.ifname, ETH_P_ARP)?)
        }
        Probe::Ndp { .. } => {
            Receiver::Capture(PacketSocket::open(&att.ns, &att.ifname, ETH_P_IPV6)?)
        }
    };
    Ok(Armed {
        case,
        receiver,
        port,
    })
}

/// The frame of request `seq` of a case.
#[must_use]
pub fn build_frame(att: &Attacker, case: &AttackCase, nonce: u32, seq: u32) -> Vec<u8> {
    let port = 40_000 + case.id;
    let sport = 50_000 + case.id;
    let dst = match (case.dst_mac, case.probe) {
        (DstMac::Bridge, _) => att.bridge_mac,
        (DstMac::Multicast(m) | DstMac::Exact(m), _) => m,
        (DstMac::OwnPort, _) => att.own_port_mac,
        (DstMac::OtherPort, _) => att.other_port_mac,
        (DstMac::SolicitedNode, Probe::Ndp { target, .. }) => {
            ipv6_multicast_mac(solicited_node(target))
        }
        (DstMac::Broadcast | DstMac::SolicitedNode, _) => BROADCAST,
    };
    let eth = Eth {
        tags: case.tags.clone(),
        ..Eth::new(dst, att.mac)
    };
    // As a host stack sends IPv4: no fragment id, DF.
    let host_like = |p: Ipv4| Ipv4 {
        id: 0,
        dont_fragment: true,
        ..p
    };
    let data = marker(nonce, case.id, seq);
    let eth = match (case.probe, case.carrier) {
        (
            Probe::Udp { dst, .. },
            Carrier::Vxlan {
                outer,
                port: vxlan_port,
                vni,
                inner_mac,
            },
        ) => {
            let inner = Eth::new(inner_mac, INNER_SRC_MAC);
            let inner = match dst {
                IpAddr::V4(d) => {
                    inner.ipv4(host_like(Ipv4::new(att.ip4, d).udp(sport, port, &data)))
                }
                IpAddr::V6(d) => inner.ipv6(Ipv6::new(att.ip6, d).udp(sport, port, &data)),
            };
            eth.ipv4(host_like(Ipv4::new(att.ip4, outer).udp(
                sport,
                vxlan_port,
                &vxlan(vni, &inner.build()),
            )))
        }
        (
            Probe::Udp {
                dst: IpAddr::V4(d), ..
            },
            Carrier::SourceRoute {
                outer: IpAddr::V4(o),
                strict,
            },
        ) => eth.ipv4(host_like(
            Ipv4::new(att.ip4, o)
                .source_route(&[d], strict)
                .udp(sport, port, &data),
        )),
        (
            Probe::Udp {
                dst: IpAddr::V6(d), ..
            },
            Carrier::SourceRoute {
                outer: IpAddr::V6(o),
                ..
            },
        ) => eth.ipv6(
            Ipv6::new(att.ip6, o)
                .segment_route(&[d])
                .udp(sport, port, &data),
        ),
        (
            Probe::Udp {
                dst: IpAddr::V4(d), ..
            },
            _,
        ) => eth.ipv4(host_like(Ipv4::new(att.ip4, d).udp(sport, port, &data))),
        (
            Probe::Udp {
                dst: IpAddr::V6(d), ..
            },
            _,
        ) => eth.ipv6(Ipv6::new(att.ip6, d).udp(sport, port, &data)),
        (Probe::Arp { target }, _) => {
            eth.arp(Arp::request(att.mac, arp_marker(case.id, seq), target))
        }
        (Probe::Ndp { target, unicast }, _) => {
            let ns = Ipv6::new(ndp_marker(case.id, seq), target)
                .neighbour_solicitation(target, Some(att.mac));
            // To the solicited-node group, or with `unicast` to the target itself.
            eth.ipv6(if unicast {
                Ipv6 { dst: target, ..ns }
            } else {
                ns
            })
        }
    };
    eth.pad_to(ETH_MIN_LEN).build()
}

/// The sequence number an ARP reply answers, if it answers a request of case `id` for `target`.
fn arp_reply_seq(f: &[u8], id: u16, target: Ipv4Addr) -> Option<u32> {
    let a = f.get(14..42)?;
    if f[12..14] != ETH_P_ARP.to_be_bytes()
        || a[6..8] != ARP_REPLY.to_be_bytes()
        || a[14..18] != target.octets()
    {
        return None;
    }
    let tpa = Ipv4Addr::new(a[24], a[25], a[26], a[27]);
    let seq = u32::from(tpa).wrapping_sub(u32::from(arp_marker(id, 0)));
    (seq < MAX_COUNT).then_some(seq)
}

/// The sequence number a neighbour advertisement answers, if it answers case `id`.
fn ndp_advert_seq(f: &[u8], id: u16, target: Ipv6Addr) -> Option<u32> {
    let ip = f.get(14..54)?;
    let icmp = f.get(54..78)?;
    if f[12..14] != ETH_P_IPV6.to_be_bytes()
        || ip[6] != 58
        || icmp[0] != ICMPV6_NEIGHBOUR_ADVERTISEMENT
        || icmp[8..24] != target.octets()
    {
        return None;
    }
    let mut dst = [0u8; 16];
    dst.copy_from_slice(&ip[24..40]);
    let dst = Ipv6Addr::from(dst);
    let base = ndp_marker(id, 0).segments();
    let seg = dst.segments();
    (seg[..7] == base[..7]).then_some(u32::from(seg[7]))
}

fn collect(armed: &Armed<'_>, nonce: u32, count: u32, deadline: Instant) -> Result<u32> {
    let case = armed.case;
    match (&armed.receiver, case.probe) {
        (Receiver::Udp(sock), _) => {
            // Any sender: a forged source address does not make a delivery less real.
            udp_collect(sock, count, deadline, |p, _| {
                parse_marker(p, nonce, case.id)
            })
        }
        (Receiver::Capture(cap), probe) => {
            let mut seen = std::collections::BTreeSet::new();
            while (seen.len() as u32) < count {
                let Some(f) = cap.recv(deadline)? else { break };
                if f.pkttype == libc::PACKET_OUTGOING {
                    continue;
                }
                let seq = match probe {
                    Probe::Arp { target } => arp_reply_seq(&f.bytes, case.id, target),
                    Probe::Ndp { target, .. } => ndp_advert_seq(&f.bytes, case.id, target),
                    Probe::Udp { .. } => None,
                };
                if let Some(s) = seq.filter(|s| *s < count) {
                    seen.insert(s);
                }
            }
            Ok(seen.len() as u32)
        }
    }
}

/// Fires `cases` from `attacker`: binds every receiver, sends every frame, then counts what
/// arrived (all cases share one deadline, so a run where nothing arrives costs one deadline,
/// not one per case).
pub fn fire(
    lab: &Lab,
    attacker: &Attacker,
    cases: &[AttackCase],
    opts: FireOptions,
) -> Result<Vec<CaseResult>> {
    fire_with(lab, attacker, cases, opts, |_| Ok(()))
}

/// [`fire`], calling `after_case` once each case's frames are sent and before the next
/// case's are (the end-to-end tests read guard's counters there, to attribute each counter
/// change to one case). Delivery is still counted for all cases at the end, under one
/// deadline.
pub fn fire_with(
    lab: &Lab,
    attacker: &Attacker,
    cases: &[AttackCase],
    opts: FireOptions,
    mut after_case: impl FnMut(&AttackCase) -> Result<()>,
) -> Result<Vec<CaseResult>> {
    if opts.count == 0 || opts.count > MAX_COUNT {
        bail!(
            "frames per case must be 1..={MAX_COUNT}, not {}",
            opts.count
        );
    }
    let nonce = new_nonce();
    let armed = cases
        .iter()
        .map(|c| arm(lab, attacker, c).with_context(|| format!("arming case {}", c.name)))
        .collect::<Result<Vec<_>>>()?;
    let sender = PacketSocket::open(&attacker.ns, &attacker.ifname, 0)?;
    for a in &armed {
        for seq in 0..opts.count {
            sender
                .send(&build_frame(attacker, a.case, nonce, seq))
                .with_context(|| format!("case {} (UDP port {})", a.case.name, a.port))?;
        }
        after_case(a.case)?;
    }
    let deadline = Instant::now() + opts.deadline;
    armed
        .iter()
        .map(|a| {
            Ok(CaseResult {
                name: a.case.name.to_owned(),
                sent: opts.count,
                delivered: collect(a, nonce, opts.count, deadline)
                    .with_context(|| format!("counting case {}", a.case.name))?,
                expect: a.case.expect,
            })
        })
        .collect()
}

/// Fires every attack case from `g1`.
pub fn fire_all(lab: &Lab, opts: FireOptions) -> Result<Vec<CaseResult>> {
    fire(lab, &Attacker::g1(lab)?, &attack_cases(), opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_names_are_unique_and_fit_the_table() {
        let cases = attack_cases();
        let mut names: Vec<_> = cases.iter().map(|c| c.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), cases.len());
        assert!(names.iter().all(|n| n.len() <= 28));
    }

    #[test]
    fn markers_round_trip() {
        let m = marker(7, 3, 19);
        assert_eq!(parse_marker(&m, 7, 3), Some(19));
        assert_eq!(parse_marker(&m, 8, 3), None);
        assert_eq!(parse_marker(&m, 7, 4), None);
        assert_eq!(u32::from(arp_marker(2, 5)) - u32::from(arp_marker(2, 0)), 5);
    }
}
