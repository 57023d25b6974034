//! The few frame builders the lab's attack generator needs.
//!
//! Kept local to the lab (the shared builder in `tests/src/packet.rs` is written in parallel);
//! they may be merged later. Everything is built into plain byte vectors, network byte order.

use std::net::{Ipv4Addr, Ipv6Addr};

/// An Ethernet MAC address.
pub type Mac = [u8; 6];

pub const BROADCAST_MAC: Mac = [0xff; 6];
pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMPV6: u8 = 58;
pub const ICMPV6_NEIGHBOR_SOLICIT: u8 = 135;
pub const ICMPV6_NEIGHBOR_ADVERT: u8 = 136;
pub const ARP_REQUEST: u16 = 1;
pub const ARP_REPLY: u16 = 2;

/// Shortest Ethernet frame without FCS; shorter frames are padded like a NIC would.
const ETH_MIN_LEN: usize = 60;

/// One 802.1Q (TPID 0x8100) or 802.1ad (TPID 0x88a8) tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VlanTag {
    pub tpid: u16,
    /// Priority (3 bits), DEI (1 bit), VLAN ID (12 bits).
    pub tci: u16,
}

impl VlanTag {
    /// A priority tag: VLAN ID 0, priority 0 (IEEE 802.1Q "priority-tagged frame").
    #[must_use]
    pub const fn priority(tpid: u16) -> Self {
        Self { tpid, tci: 0 }
    }
}

/// Formats a MAC the way `ip link` prints it.
#[must_use]
pub fn mac_to_string(mac: &Mac) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff`.
#[must_use]
pub fn parse_mac(s: &str) -> Option<Mac> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// An Ethernet frame: header, `tags` outermost first, then `ethertype` and `payload`, padded
/// to the 60-byte minimum.
#[must_use]
pub fn ethernet(dst: Mac, src: Mac, tags: &[VlanTag], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(ETH_MIN_LEN.max(14 + 4 * tags.len() + payload.len()));
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    for tag in tags {
        f.extend_from_slice(&tag.tpid.to_be_bytes());
        f.extend_from_slice(&tag.tci.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    if f.len() < ETH_MIN_LEN {
        f.resize(ETH_MIN_LEN, 0);
    }
    f
}

/// The Internet checksum (RFC 1071) over `data`, continuing from a partial `sum`.
fn checksum_add(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

fn checksum_fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn udp_header(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let len = (8 + payload.len()) as u16;
    let mut u = Vec::with_capacity(usize::from(len));
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&len.to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

/// An IPv4 packet (no options, TTL 64, DF) carrying a UDP datagram with a valid checksum.
#[must_use]
pub fn ipv4_udp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut udp = udp_header(sport, dport, payload);
    let udp_len = udp.len() as u16;
    let mut sum = checksum_add(0, &src.octets());
    sum = checksum_add(sum, &dst.octets());
    sum += u32::from(IPPROTO_UDP) + u32::from(udp_len);
    let mut csum = checksum_fold(checksum_add(sum, &udp));
    if csum == 0 {
        csum = 0xffff;
    }
    udp[6..8].copy_from_slice(&csum.to_be_bytes());

    let total = 20 + udp_len;
    let mut ip = Vec::with_capacity(usize::from(total));
    ip.extend_from_slice(&[0x45, 0]);
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0x40, 0, 64, IPPROTO_UDP, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let hcsum = checksum_fold(checksum_add(0, &ip));
    ip[10..12].copy_from_slice(&hcsum.to_be_bytes());
    ip.extend_from_slice(&udp);
    ip
}

fn ipv6_header(src: Ipv6Addr, dst: Ipv6Addr, next: u8, hop_limit: u8, payload_len: u16) -> Vec<u8> {
    let mut ip = Vec::with_capacity(40 + usize::from(payload_len));
    ip.extend_from_slice(&[0x60, 0, 0, 0]);
    ip.extend_from_slice(&payload_len.to_be_bytes());
    ip.push(next);
    ip.push(hop_limit);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    ip
}

fn ipv6_pseudo_sum(src: Ipv6Addr, dst: Ipv6Addr, next: u8, len: u16) -> u32 {
    let sum = checksum_add(0, &src.octets());
    let sum = checksum_add(sum, &dst.octets());
    sum + u32::from(next) + u32::from(len)
}

/// An IPv6 packet (hop limit 64) carrying a UDP datagram with its mandatory checksum.
#[must_use]
pub fn ipv6_udp(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut udp = udp_header(sport, dport, payload);
    let len = udp.len() as u16;
    let mut csum = checksum_fold(checksum_add(
        ipv6_pseudo_sum(src, dst, IPPROTO_UDP, len),
        &udp,
    ));
    if csum == 0 {
        csum = 0xffff;
    }
    udp[6..8].copy_from_slice(&csum.to_be_bytes());
    let mut ip = ipv6_header(src, dst, IPPROTO_UDP, 64, len);
    ip.extend_from_slice(&udp);
    ip
}

/// An ARP request (Ethernet/IPv4) body: who has `tpa`, tell `spa` at `sha`.
#[must_use]
pub fn arp_request(sha: Mac, spa: Ipv4Addr, tpa: Ipv4Addr) -> Vec<u8> {
    let mut a = Vec::with_capacity(28);
    a.extend_from_slice(&1u16.to_be_bytes());
    a.extend_from_slice(&ETH_P_IPV4.to_be_bytes());
    a.extend_from_slice(&[6, 4]);
    a.extend_from_slice(&ARP_REQUEST.to_be_bytes());
    a.extend_from_slice(&sha);
    a.extend_from_slice(&spa.octets());
    a.extend_from_slice(&[0; 6]);
    a.extend_from_slice(&tpa.octets());
    a
}

/// The solicited-node multicast address of `addr` (RFC 4291 2.7.1).
#[must_use]
pub fn solicited_node(addr: Ipv6Addr) -> Ipv6Addr {
    let o = addr.octets();
    Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(o[13]),
        u16::from_be_bytes([o[14], o[15]]),
    )
}

/// The Ethernet multicast MAC of an IPv6 multicast address (RFC 2464 7).
#[must_use]
pub fn ipv6_multicast_mac(group: Ipv6Addr) -> Mac {
    let o = group.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}

/// An IPv6 neighbour solicitation for `target` from `src` (hop limit 255) with a source
/// link-layer address option, sent to `dst`: the target's solicited-node group
/// ([`solicited_node`], address resolution) or the target itself (unicast, as in neighbour
/// unreachability detection).
#[must_use]
pub fn ndp_solicit(src: Ipv6Addr, src_mac: Mac, target: Ipv6Addr, dst: Ipv6Addr) -> Vec<u8> {
    let mut icmp = Vec::with_capacity(32);
    icmp.extend_from_slice(&[ICMPV6_NEIGHBOR_SOLICIT, 0, 0, 0, 0, 0, 0, 0]);
    icmp.extend_from_slice(&target.octets());
    icmp.extend_from_slice(&[1, 1]);
    icmp.extend_from_slice(&src_mac);
    let len = icmp.len() as u16;
    let csum = checksum_fold(checksum_add(
        ipv6_pseudo_sum(src, dst, IPPROTO_ICMPV6, len),
        &icmp,
    ));
    icmp[2..4].copy_from_slice(&csum.to_be_bytes());
    let mut ip = ipv6_header(src, dst, IPPROTO_ICMPV6, 255, len);
    ip.extend_from_slice(&icmp);
    ip
}

/// An ICMP echo request body (IPv4 type 8 with checksum, or `ICMPv6` type 128 whose checksum
/// the kernel fills in for raw `ICMPv6` sockets, RFC 3542 3.1).
#[must_use]
pub fn icmp_echo(v6: bool, id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(8 + payload.len());
    m.extend_from_slice(&[if v6 { 128 } else { 8 }, 0, 0, 0]);
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(payload);
    if !v6 {
        let csum = checksum_fold(checksum_add(0, &m));
        m[2..4].copy_from_slice(&csum.to_be_bytes());
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_checksum_verifies() {
        let p = ipv4_udp(
            Ipv4Addr::new(192, 168, 50, 11),
            Ipv4Addr::new(10, 10, 0, 2),
            1,
            2,
            b"x",
        );
        assert_eq!(checksum_fold(checksum_add(0, &p[..20])), 0);
        assert_eq!(p.len(), 29);
    }

    #[test]
    fn solicited_node_matches_rfc_example() {
        let a: Ipv6Addr = "fd00:10::1".parse().expect("literal");
        assert_eq!(
            solicited_node(a),
            "ff02::1:ff00:1".parse::<Ipv6Addr>().expect("literal")
        );
        assert_eq!(
            ipv6_multicast_mac(solicited_node(a)),
            [0x33, 0x33, 0xff, 0, 0, 1]
        );
    }

    #[test]
    fn mac_round_trip() {
        let m = [0x02, 0x47, 0x4c, 0, 0xab, 1];
        assert_eq!(parse_mac(&mac_to_string(&m)), Some(m));
        assert_eq!(parse_mac("02:00"), None);
    }

    #[test]
    fn tagged_frame_layout() {
        let f = ethernet(
            BROADCAST_MAC,
            [2, 0, 0, 0, 0, 1],
            &[
                VlanTag::priority(ETH_P_8021AD),
                VlanTag::priority(ETH_P_8021Q),
            ],
            ETH_P_IPV4,
            &[0x45],
        );
        assert_eq!(&f[12..14], &[0x88, 0xa8]);
        assert_eq!(&f[16..18], &[0x81, 0x00]);
        assert_eq!(&f[20..22], &[0x08, 0x00]);
        assert_eq!(f.len(), 60);
    }
}
