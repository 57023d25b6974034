//! What the kernel says about a bridge and the host, over rtnetlink.
//!
//! - the bridge's ports (links whose controller is the bridge);
//! - every MAC the host accepts on that bridge (../shared/docs/threat-model.md): the bridge's
//!   own MAC, the bridge's local FDB entries (each port's own MAC is a permanent local entry and
//!   frames to it go up to the host), and the MAC of every other local interface;
//! - every address the host holds, for the default protected set.

use std::{collections::BTreeMap, fmt, net::IpAddr};

use futures::TryStreamExt as _;
use netlink_packet_route::{
    AddressFamily,
    address::{AddressAttribute, AddressHeaderFlags, AddressMessage},
    link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
    neighbour::{NeighbourAttribute, NeighbourState},
};
use rtnetlink::Handle;
use serde::Serialize;

use crate::error::{GuardError, Result};

pub type Mac = [u8; 6];

/// A network interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Iface {
    pub index: u32,
    pub name: String,
    #[serde(serialize_with = "ser_mac_opt")]
    pub mac: Option<Mac>,
    /// The bridge (or other controller) it is enslaved to.
    pub controller: Option<u32>,
    pub is_bridge: bool,
    pub is_loopback: bool,
    pub up: bool,
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
    pub prefix_len: u8,
}

/// A snapshot of the bridge and the host.
#[derive(Clone, Debug, Serialize)]
pub struct Discovery {
    pub bridge: Iface,
    pub ports: Vec<Iface>,
    /// Each MAC once, with the first reason found (bridge, FDB, interface).
    #[serde(serialize_with = "ser_mac_map")]
    pub host_macs: BTreeMap<Mac, MacSource>,
    /// Every address on every interface (the bridge and loopback included: the policy
    /// decides what to protect).
    pub addrs: Vec<HostAddr>,
    pub ifaces: Vec<Iface>,
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
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => iface.name.clone_from(n),
            LinkAttribute::Address(a) => iface.mac = <Mac>::try_from(a.as_slice()).ok(),
            LinkAttribute::Controller(c) => iface.controller = Some(*c),
            LinkAttribute::LinkInfo(infos) => {
                iface.is_bridge = infos
                    .iter()
                    .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Bridge)));
            }
            _ => {}
        }
    }
    iface
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
    // IFA_LOCAL is the host's own address on point-to-point links; IFA_ADDRESS otherwise.
    let mut addr = None;
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(a) => addr = Some(*a),
            AddressAttribute::Address(a) if addr.is_none() => addr = Some(*a),
            _ => {}
        }
    }
    Some(HostAddr {
        ifindex: msg.header.index,
        ifname: name_of
            .get(&msg.header.index)
            .map_or_else(|| msg.header.index.to_string(), |n| (*n).to_owned()),
        addr: addr?,
        prefix_len: msg.header.prefix_len,
    })
}

/// The bridge's permanent (local) FDB entries: `(mac, port ifindex)`.
pub async fn local_fdb(handle: &Handle, bridge: u32) -> Result<Vec<(Mac, u32)>> {
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
                NeighbourAttribute::LinkLayerAddress(a) => mac = <Mac>::try_from(a.as_slice()).ok(),
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
    Ok(Discovery {
        bridge: br,
        ports,
        host_macs,
        addrs,
        ifaces,
    })
}

#[must_use]
pub fn fmt_mac(mac: &Mac) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]
    )
}

/// Parses `aa:bb:cc:dd:ee:ff`.
#[must_use]
pub fn parse_mac(s: &str) -> Option<Mac> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[expect(
    clippy::ref_option,
    clippy::trivially_copy_pass_by_ref,
    reason = "serde's serialize_with passes a reference"
)]
fn ser_mac_opt<S: serde::Serializer>(mac: &Option<Mac>, s: S) -> Result<S::Ok, S::Error> {
    match mac {
        Some(m) => s.serialize_str(&fmt_mac(m)),
        None => s.serialize_none(),
    }
}

fn ser_mac_map<S: serde::Serializer>(
    macs: &BTreeMap<Mac, MacSource>,
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap as _;
    let mut m = s.serialize_map(Some(macs.len()))?;
    for (mac, src) in macs {
        m.serialize_entry(&fmt_mac(mac), &src.to_string())?;
    }
    m.end()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trip() {
        let m = parse_mac("52:54:00:ab:CD:01").expect("valid");
        assert_eq!(fmt_mac(&m), "52:54:00:ab:cd:01");
        assert!(parse_mac("52:54:00:ab:cd").is_none());
        assert!(parse_mac("52:54:00:ab:cd:01:02").is_none());
        assert!(parse_mac("zz:54:00:ab:cd:01").is_none());
    }
}
