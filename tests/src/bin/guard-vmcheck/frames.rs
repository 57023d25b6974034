//! Frame builders for the checks: Ethernet (with 802.1Q/802.1ad tags), IPv4, IPv6, ARP and
//! neighbour solicitation, each able to carry a marker so a receiver can tell our frames from
//! the kernel's own traffic (IPv6 DAD, MLD) on the same link.

use std::net::{Ipv4Addr, Ipv6Addr};

pub type Mac = [u8; 6];

pub const BROADCAST: Mac = [0xff; 6];
pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
/// IP protocol 253 is reserved for experiments (RFC 3692): nothing on the path acts on it.
const IPPROTO_EXPERIMENT: u8 = 253;

/// Marker magic; the frame's case id and sequence number follow it.
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

/// The Ethernet header: destination, source, then each tag `(TPID, TCI)`, then `ethertype`.
#[must_use]
pub fn eth(dst: Mac, src: Mac, tags: &[(u16, u16)], ethertype: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(64);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    for (tpid, tci) in tags {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&tci.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for pair in bytes.chunks(2) {
        let word = u16::from_be_bytes([pair[0], pair.get(1).copied().unwrap_or(0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 header (IHL 5, valid checksum) with `payload`.
#[must_use]
pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let total = (20 + payload.len()) as u16;
    let mut h = vec![0x45, 0];
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&[0, 0, 0x40, 0, 64, IPPROTO_EXPERIMENT, 0, 0]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    let c = checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

/// An IPv6 header with `next_header` and `payload`.
#[must_use]
pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    h.extend_from_slice(&[next_header, 255]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h.extend_from_slice(payload);
    h
}

/// IPv6 carrying the experiment protocol and `payload`.
#[must_use]
pub fn ipv6_plain(src: Ipv6Addr, dst: Ipv6Addr, payload: &[u8]) -> Vec<u8> {
    ipv6(src, dst, IPPROTO_EXPERIMENT, payload)
}

/// An `ICMPv6` neighbour solicitation for `target` (checksum left zero: guard does not read
/// it, and the host stack, which would, is never meant to get these frames), then `extra`.
#[must_use]
pub fn ndp_ns(target: Ipv6Addr, extra: &[u8]) -> Vec<u8> {
    let mut m = vec![135, 0, 0, 0, 0, 0, 0, 0];
    m.extend_from_slice(&target.octets());
    m.extend_from_slice(extra);
    m
}

/// The solicited-node multicast address of `target` and its Ethernet group address.
#[must_use]
pub fn solicited_node(target: Ipv6Addr) -> (Ipv6Addr, Mac) {
    let o = target.octets();
    let ip = Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(o[13]),
        u16::from_be_bytes([o[14], o[15]]),
    );
    (ip, [0x33, 0x33, 0xff, o[13], o[14], o[15]])
}

/// An ARP request (Ethernet/IPv4) from `sha`/`spa` asking for `tpa`.
#[must_use]
pub fn arp_request(sha: Mac, spa: Ipv4Addr, tpa: Ipv4Addr) -> Vec<u8> {
    let mut a = vec![0, 1, 0x08, 0, 6, 4, 0, 1];
    a.extend_from_slice(&sha);
    a.extend_from_slice(&spa.octets());
    a.extend_from_slice(&[0; 6]);
    a.extend_from_slice(&tpa.octets());
    a
}

/// `header` followed by `body`.
#[must_use]
pub fn cat(header: Vec<u8>, body: &[u8]) -> Vec<u8> {
    let mut f = header;
    f.extend_from_slice(body);
    f
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> anyhow::Result<Mac> {
    let parts: Vec<u8> = s
        .trim()
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("{s:?} is not a MAC address: {e}"))?;
    <Mac>::try_from(parts.as_slice()).map_err(|_| anyhow::anyhow!("{s:?} is not a MAC address"))
}

#[must_use]
pub fn fmt_mac(m: Mac) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
