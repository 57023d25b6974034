//! What the kernel says about a bridge and the host, over rtnetlink.
//!
//! - the bridge's ports (links whose controller is the bridge);
//! - every MAC the host accepts on that bridge (docs/threat-model.md): the bridge's
//!   own MAC, the bridge's local FDB entries (each port's own MAC is a permanent local entry and
//!   frames to it go up to the host), and the MAC of every other local interface;
//! - every address the host holds, for the default protected set (with the peer prefix of a
//!   point-to-point address);
//! - the routes of the main table: the networks the host reaches through its other
//!   interfaces, and which interfaces carry a default route (the uplinks);
//! - the UDP ports of the tunnel devices the host has (VXLAN, GENEVE).

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use futures::TryStreamExt as _;
use ipnet::IpNet;
use netlink_packet_route::{
    AddressFamily,
    address::{AddressAttribute, AddressHeaderFlags, AddressMessage},
    link::{
        InfoData, InfoGeneve, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
        LinkXdp,
    },
    neighbour::{NeighbourAttribute, NeighbourState},
    route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteType},
};
use rtnetlink::{Handle, RouteMessageBuilder};
use serde::Serialize;

use guard_common::Mac;

use crate::error::{GuardError, Result};

/// A MAC as netlink gives it. The fields below keep the raw octets (callers build these
/// structs by hand); [`guard_common::Mac`] parses and prints them.
pub type RawMac = [u8; 6];

/// A network interface.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Iface {
    pub index: u32,
    pub name: String,
    #[serde(serialize_with = "ser_mac_opt")]
    pub mac: Option<RawMac>,
    /// The bridge (or other controller) it is enslaved to.
    pub controller: Option<u32>,
    pub is_bridge: bool,
    pub is_loopback: bool,
    pub up: bool,
    /// The UDP port a VXLAN or GENEVE device listens on (on every address unless bound).
    pub tunnel_port: Option<u16>,
    /// The program on its XDP hook (`IFLA_XDP_PROG_ID`, any mode), guard's or another's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xdp_prog: Option<u32>,
}

/// Why a MAC is in the host set.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "of")]
pub enum MacSource {
    /// The bridge device's own MAC.
    Bridge,
    /// A permanent (local) FDB entry of the bridge, on this port.
    LocalFdb(String),
    /// Another local interface.
    Interface(String),
    /// Named in the configuration.
    Config,
}

impl fmt::Display for MacSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bridge => f.write_str("bridge"),
            Self::LocalFdb(port) => write!(f, "local fdb ({port})"),
            Self::Interface(name) => write!(f, "interface {name}"),
            Self::Config => f.write_str("config"),
        }
    }
}

/// An address the host holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HostAddr {
    pub ifindex: u32,
    pub ifname: String,
    pub addr: IpAddr,
    /// The prefix length: of `addr`'s network, or of the peer's on a point-to-point address.
    pub prefix_len: u8,
    /// The peer of a point-to-point address (`ip addr add A peer P/len`: `IFA_ADDRESS`
    /// differs from `IFA_LOCAL`, and `prefix_len` belongs to it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<IpAddr>,
}

impl HostAddr {
    /// The network this address reaches: the peer's prefix on a point-to-point address,
    /// else the address's own.
    #[must_use]
    pub fn network(&self) -> Option<IpNet> {
        IpNet::new(self.peer.unwrap_or(self.addr), self.prefix_len)
            .ok()
            .map(|n| n.trunc())
    }
}

/// A unicast route of the main table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HostRoute {
    pub dst: IpNet,
    /// The output interface (the first next hop's for a multipath route).
    pub oif: Option<u32>,
    pub gateway: Option<IpAddr>,
}

/// A snapshot of the bridge and the host.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Discovery {
    pub bridge: Iface,
    pub ports: Vec<Iface>,
    /// Each MAC once, with the first reason found (bridge, FDB, interface).
    #[serde(serialize_with = "ser_mac_map")]
    pub host_macs: BTreeMap<RawMac, MacSource>,
    /// Every address on every interface (the bridge and loopback included: the policy
    /// decides what to protect).
    pub addrs: Vec<HostAddr>,
    pub ifaces: Vec<Iface>,
    /// The unicast routes of the main table.
    pub routes: Vec<HostRoute>,
    /// The ports of the host's foo-over-UDP receivers (`ip fou add`).
    pub fou_ports: Vec<u16>,
}

impl Discovery {
    /// Interfaces that carry a default route (IPv4 or IPv6) of the main table: the guests'
    /// way to the outside when the host routes for them.
    #[must_use]
    pub fn uplinks(&self) -> BTreeSet<u32> {
        self.routes
            .iter()
            .filter(|r| r.dst.prefix_len() == 0)
            .filter_map(|r| r.oif)
            .collect()
    }

    /// UDP ports the host decapsulates on: its VXLAN and GENEVE devices' and its fou
    /// receivers'.
    #[must_use]
    pub fn tunnel_ports(&self) -> BTreeSet<u16> {
        self.ifaces
            .iter()
            .filter_map(|i| i.tunnel_port)
            .chain(self.fou_ports.iter().copied())
            .collect()
    }

    #[must_use]
    pub fn iface(&self, index: u32) -> Option<&Iface> {
        self.ifaces.iter().find(|i| i.index == index)
    }
}

/// Opens an rtnetlink connection on the current thread's network namespace and drives it on
/// the current tokio runtime.
pub fn connect() -> Result<Handle> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(GuardError::NetlinkSocket)?;
    tokio::spawn(conn);
    Ok(handle)
}

pub async fn links(handle: &Handle) -> Result<Vec<Iface>> {
    let mut out = Vec::new();
    let mut stream = handle.link().get().execute();
    while let Some(msg) = stream.try_next().await? {
        out.push(iface_of(&msg));
    }
    out.sort_by_key(|i| i.index);
    Ok(out)
}

fn iface_of(msg: &LinkMessage) -> Iface {
    let mut iface = Iface {
        index: msg.header.index,
        name: String::new(),
        mac: None,
        controller: None,
        is_bridge: false,
        is_loopback: msg.header.flags.contains(LinkFlags::Loopback),
        up: msg.header.flags.contains(LinkFlags::Up),
        tunnel_port: None,
        xdp_prog: None,
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => iface.name.clone_from(n),
            LinkAttribute::Address(a) => iface.mac = <RawMac>::try_from(a.as_slice()).ok(),
            LinkAttribute::Controller(c) => iface.controller = Some(*c),
            LinkAttribute::Xdp(xdp) => iface.xdp_prog = xdp_prog_id(xdp),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(InfoKind::Bridge) => iface.is_bridge = true,
                        LinkInfo::Data(InfoData::Vxlan(v)) => {
                            iface.tunnel_port = v.iter().find_map(|a| match a {
                                InfoVxlan::Port(p) => Some(*p),
                                _ => None,
                            });
                        }
                        LinkInfo::Data(InfoData::Geneve(g)) => {
                            iface.tunnel_port = g.iter().find_map(|a| match a {
                                InfoGeneve::Port(p) => Some(*p),
                                _ => None,
                            });
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    iface
}

/// The program id of an `IFLA_XDP` attribute: `IFLA_XDP_PROG_ID` names the one program in
/// native, generic or offload mode; the per-mode ids only matter with several at once.
#[must_use]
pub fn xdp_prog_id(xdp: &[LinkXdp]) -> Option<u32> {
    xdp.iter().find_map(|x| match x {
        LinkXdp::ProgId(id) | LinkXdp::DrvProgId(id) | LinkXdp::SkbProgId(id) if *id != 0 => {
            Some(*id)
        }
        _ => None,
    })
}

pub async fn addresses(handle: &Handle, ifaces: &[Iface]) -> Result<Vec<HostAddr>> {
    let name_of: BTreeMap<u32, &str> = ifaces.iter().map(|i| (i.index, i.name.as_str())).collect();
    let mut out = Vec::new();
    let mut stream = handle.address().get().execute();
    while let Some(msg) = stream.try_next().await? {
        if let Some(a) = host_addr_of(&msg, &name_of) {
            out.push(a);
        }
    }
    Ok(out)
}

fn host_addr_of(msg: &AddressMessage, name_of: &BTreeMap<u32, &str>) -> Option<HostAddr> {
    if msg.header.flags.contains(AddressHeaderFlags::Dadfailed) {
        return None;
    }
    // IFA_LOCAL is the host's own address; IFA_ADDRESS is the same address, or the peer on a
    // point-to-point address (and then the prefix length is the peer's). IPv6 sends only
    // IFA_ADDRESS unless a peer is set.
    let (mut local, mut address) = (None, None);
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(a) => local = Some(*a),
            AddressAttribute::Address(a) => address = Some(*a),
            _ => {}
        }
    }
    let addr = local.or(address)?;
    Some(HostAddr {
        ifindex: msg.header.index,
        ifname: name_of
            .get(&msg.header.index)
            .map_or_else(|| msg.header.index.to_string(), |n| (*n).to_owned()),
        addr,
        prefix_len: msg.header.prefix_len,
        peer: address.filter(|a| *a != addr),
    })
}

/// The bridge's permanent (local) FDB entries: `(mac, port ifindex)`.
pub async fn local_fdb(handle: &Handle, bridge: u32) -> Result<Vec<(RawMac, u32)>> {
    let mut out = Vec::new();
    let mut stream = handle
        .neighbours()
        .get()
        .set_address_family(AddressFamily::Bridge)
        .execute();
    while let Some(msg) = stream.try_next().await? {
        // `bridge fdb` shows these as "permanent": the kernel's local entries (a port's own
        // address, the bridge's), which deliver to the host.
        if msg.header.state != NeighbourState::Permanent {
            continue;
        }
        let mut mac = None;
        let mut controller = None;
        for attr in &msg.attributes {
            match attr {
                NeighbourAttribute::LinkLayerAddress(a) => {
                    mac = <RawMac>::try_from(a.as_slice()).ok();
                }
                NeighbourAttribute::Controller(c) => controller = Some(*c),
                _ => {}
            }
        }
        if (controller == Some(bridge) || msg.header.ifindex == bridge)
            && let Some(mac) = mac
        {
            out.push((mac, msg.header.ifindex));
        }
    }
    Ok(out)
}

/// The unicast routes of the main table, both families.
pub async fn routes(handle: &Handle) -> Result<Vec<HostRoute>> {
    let mut out = Vec::new();
    for request in [
        RouteMessageBuilder::<Ipv4Addr>::new().build(),
        RouteMessageBuilder::<Ipv6Addr>::new().build(),
    ] {
        let mut stream = handle.route().get(request).execute();
        while let Some(msg) = stream.try_next().await? {
            if let Some(r) = host_route_of(&msg) {
                out.push(r);
            }
        }
    }
    Ok(out)
}

fn host_route_of(msg: &RouteMessage) -> Option<HostRoute> {
    if msg.header.kind != RouteType::Unicast {
        return None;
    }
    let mut table = u32::from(msg.header.table);
    let (mut dst, mut oif, mut gateway) = (None, None, None);
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(a) => dst = ip_of(a),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Gateway(a) => gateway = ip_of(a),
            RouteAttribute::MultiPath(hops) => {
                if let Some(h) = hops.first() {
                    oif = oif.or(Some(h.interface_index));
                }
            }
            _ => {}
        }
    }
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
        return None;
    }
    let dst = match dst {
        Some(a) => a,
        None if msg.header.address_family == AddressFamily::Inet6 => Ipv6Addr::UNSPECIFIED.into(),
        None => Ipv4Addr::UNSPECIFIED.into(),
    };
    Some(HostRoute {
        dst: IpNet::new(dst, msg.header.destination_prefix_length)
            .ok()?
            .trunc(),
        oif,
        gateway,
    })
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some((*v4).into()),
        RouteAddress::Inet6(v6) => Some((*v6).into()),
        _ => None,
    }
}

/// Everything guard needs to know about `bridge` and the host.
pub async fn discover(handle: &Handle, bridge: &str) -> Result<Discovery> {
    let ifaces = links(handle).await?;
    let br = ifaces
        .iter()
        .find(|i| i.name == bridge)
        .ok_or_else(|| GuardError::NoSuchInterface(bridge.to_owned()))?
        .clone();
    if !br.is_bridge {
        return Err(GuardError::NotABridge(bridge.to_owned()));
    }
    let ports: Vec<Iface> = ifaces
        .iter()
        .filter(|i| i.controller == Some(br.index))
        .cloned()
        .collect();
    let name_of: BTreeMap<u32, &str> = ifaces.iter().map(|i| (i.index, i.name.as_str())).collect();

    let mut host_macs = BTreeMap::new();
    if let Some(mac) = br.mac {
        host_macs.insert(mac, MacSource::Bridge);
    }
    for (mac, port) in local_fdb(handle, br.index).await? {
        let port = name_of
            .get(&port)
            .map_or_else(|| port.to_string(), |n| (*n).to_owned());
        host_macs.entry(mac).or_insert(MacSource::LocalFdb(port));
    }
    for iface in &ifaces {
        if let Some(mac) = iface.mac
            && !iface.is_loopback
            && mac != [0; 6]
        {
            host_macs
                .entry(mac)
                .or_insert_with(|| MacSource::Interface(iface.name.clone()));
        }
    }
    let addrs = addresses(handle, &ifaces).await?;
    let routes = routes(handle).await?;
    // A fou receiver that cannot be read is a tunnel guard does not know: say so, and judge
    // with what is known (the default tunnel ports, the devices').
    let fou_ports = crate::fou::ports().unwrap_or_else(|e| {
        log::warn!("reading the fou receivers (generic netlink): {e}");
        Vec::new()
    });
    Ok(Discovery {
        bridge: br,
        ports,
        host_macs,
        addrs,
        ifaces,
        routes,
        fou_ports,
    })
}

/// `aa:bb:cc:dd:ee:ff` (kept for callers of the raw octets; see [`Mac`]'s `Display`).
#[must_use]
pub fn fmt_mac(mac: &RawMac) -> String {
    Mac(*mac).to_string()
}

/// Parses `aa:bb:cc:dd:ee:ff` (kept for callers of the raw octets; see [`Mac`]'s `FromStr`).
///
/// ```
/// use guard::discovery::{fmt_mac, parse_mac};
/// use guard_common::Mac;
///
/// let raw = parse_mac("52:54:00:AB:cd:01").unwrap();
/// assert_eq!(Mac(raw), "52:54:00:ab:cd:01".parse::<Mac>().unwrap());
/// assert_eq!(fmt_mac(&raw), Mac(raw).to_string());
/// assert_eq!(parse_mac("52:54:00:ab:cd"), None);
/// ```
#[must_use]
pub fn parse_mac(s: &str) -> Option<RawMac> {
    s.parse::<Mac>().ok().map(Mac::octets)
}

#[expect(
    clippy::ref_option,
    clippy::trivially_copy_pass_by_ref,
    reason = "serde's serialize_with passes a reference"
)]
fn ser_mac_opt<S: serde::Serializer>(mac: &Option<RawMac>, s: S) -> Result<S::Ok, S::Error> {
    match mac {
        Some(m) => s.collect_str(&Mac(*m)),
        None => s.serialize_none(),
    }
}

fn ser_mac_map<S: serde::Serializer>(
    macs: &BTreeMap<RawMac, MacSource>,
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap as _;
    let mut m = s.serialize_map(Some(macs.len()))?;
    for (mac, src) in macs {
        m.serialize_entry(&Mac(*mac).to_string(), &src.to_string())?;
    }
    m.end()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trip_through_the_raw_wrappers() {
        let m = parse_mac("52:54:00:ab:CD:01").expect("valid");
        assert_eq!(fmt_mac(&m), "52:54:00:ab:cd:01");
        assert!(parse_mac("52:54:00:ab:cd").is_none());
        assert!(parse_mac("52:54:00:ab:cd:01:02").is_none());
        assert!(parse_mac("zz:54:00:ab:cd:01").is_none());
    }
}
