//! A small builder for the frames guard judges: Ethernet with any number of 802.1Q/802.1ad
//! tags, IPv4 (options, source routes, fragments, header-field overrides), IPv6
//! (extension-header chains, segment routing), ICMPv6 neighbour discovery, ARP, arbitrary
//! EtherTypes, tunnel encapsulations (VXLAN, GENEVE, GRE; IPIP, SIT and FOU need only a
//! payload), and truncation.
//!
//! Frames come out byte-exact and, unless a field is overridden on purpose, well-formed:
//! lengths are computed, and the IPv4 header, UDP, TCP, ICMP and ICMPv6 checksums are correct,
//! so the same frames can be sent into a real host stack (the attack generator) and not be
//! dropped there for a bad checksum. Overrides (`version`, `ihl`, `tot_len`, `payload_len`,
//! `next_header`, ...) exist to build the malformed frames the datapath must fail closed on.
//!
//! ```
//! use guard_tests::packet::{Eth, Ipv4};
//! let frame = Eth::new([0x02, 0, 0, 0, 0, 1], [0x52, 0x54, 0, 0, 0, 2])
//!     .vlan(100)
//!     .ipv4(Ipv4::new([192, 168, 0, 2], [10, 0, 0, 1]).udp(5000, 53, b"x"))
//!     .build();
//! assert_eq!(frame.len(), 14 + 4 + 20 + 8 + 1);
//! ```

use std::net::{Ipv4Addr, Ipv6Addr};

/// EtherTypes.
pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
pub const ETH_P_LLDP: u16 = 0x88cc;

/// IP protocol / IPv6 next-header numbers.
pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_ICMP: u8 = 1;
/// IPv4 in IPv4 (IPIP, and what a FOU port carries for `ipproto 4`).
pub const IPPROTO_IPIP: u8 = 4;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
/// IPv6 in IPv4 (SIT).
pub const IPPROTO_IPV6: u8 = 41;
pub const IPPROTO_GRE: u8 = 47;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_AH: u8 = 51;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_NONE: u8 = 59;
pub const IPPROTO_DSTOPTS: u8 = 60;

/// IPv4 option types (RFC 791 3.1): no-operation, loose and strict source route.
pub const IPOPT_NOP: u8 = 1;
pub const IPOPT_LSRR: u8 = 0x83;
pub const IPOPT_SSRR: u8 = 0x89;

/// IPv6 routing header type of segment routing (RFC 8754).
pub const IPV6_SRCRT_TYPE_SEG6: u8 = 4;

/// UDP ports of the tunnels: VXLAN (IANA, RFC 7348), VXLAN as Linux numbers it when no
/// `dstport` is given, GENEVE (RFC 8926).
pub const VXLAN_PORT: u16 = 4789;
pub const VXLAN_LINUX_PORT: u16 = 8472;
pub const GENEVE_PORT: u16 = 6081;
/// Transparent Ethernet bridging: the protocol type of an Ethernet frame inside GRE or GENEVE.
pub const ETH_P_TEB: u16 = 0x6558;

/// ICMPv6 types.
pub const ICMPV6_ECHO_REQUEST: u8 = 128;
pub const ICMPV6_NEIGHBOUR_SOLICITATION: u8 = 135;
pub const ICMPV6_NEIGHBOUR_ADVERTISEMENT: u8 = 136;

/// ARP operations.
pub const ARP_REQUEST: u16 = 1;
pub const ARP_REPLY: u16 = 2;

/// Shortest Ethernet frame without FCS (what a NIC pads to).
pub const ETH_MIN_LEN: usize = 60;

pub const BROADCAST: [u8; 6] = [0xff; 6];

/// The Ethernet multicast MAC of an IPv6 multicast address (RFC 2464: `33:33` + low 32 bits).
#[must_use]
pub fn ipv6_multicast_mac(addr: Ipv6Addr) -> [u8; 6] {
    let o = addr.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}

/// The solicited-node multicast address of `target` (RFC 4291 2.7.1: `ff02::1:ffXX:XXXX`).
#[must_use]
pub fn solicited_node(target: Ipv6Addr) -> Ipv6Addr {
    let o = target.octets();
    Ipv6Addr::from([
        0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, o[13], o[14], o[15],
    ])
}

/// A VXLAN header (RFC 7348: flags with the I bit, 24-bit VNI) followed by `inner`, an
/// Ethernet frame: the payload of a UDP datagram to [`VXLAN_PORT`] (or [`VXLAN_LINUX_PORT`]).
#[must_use]
pub fn vxlan(vni: u32, inner: &[u8]) -> Vec<u8> {
    let mut b = vec![0x08, 0, 0, 0];
    b.extend_from_slice(&(vni << 8).to_be_bytes());
    b.extend_from_slice(inner);
    b
}

/// A GENEVE header without options (RFC 8926: version 0, 24-bit VNI) carrying `inner` of
/// protocol type `proto` ([`ETH_P_TEB`] for an Ethernet frame): the payload of a UDP datagram
/// to [`GENEVE_PORT`].
#[must_use]
pub fn geneve(vni: u32, proto: u16, inner: &[u8]) -> Vec<u8> {
    let mut b = vec![0, 0];
    b.extend_from_slice(&proto.to_be_bytes());
    b.extend_from_slice(&(vni << 8).to_be_bytes());
    b.extend_from_slice(inner);
    b
}

/// A GRE header (RFC 2784: no checksum, key or sequence number) carrying `inner` of protocol
/// type `proto` (`ETH_P_IPV4` for an IP packet, [`ETH_P_TEB`] for an Ethernet frame): the
/// payload of IP protocol [`IPPROTO_GRE`].
#[must_use]
pub fn gre(proto: u16, inner: &[u8]) -> Vec<u8> {
    let mut b = vec![0, 0];
    b.extend_from_slice(&proto.to_be_bytes());
    b.extend_from_slice(inner);
    b
}

/// One VLAN tag as it sits in the frame: TPID, then TCI (PCP, DEI, VLAN ID).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VlanTag {
    pub tpid: u16,
    pub tci: u16,
}

impl VlanTag {
    /// A priority tag: VLAN ID 0, priority 0 (IEEE 802.1Q "priority-tagged frame").
    #[must_use]
    pub const fn priority(tpid: u16) -> Self {
        Self { tpid, tci: 0 }
    }
}

/// What follows the Ethernet header (and its tags).
#[derive(Clone, Debug)]
pub enum Body {
    Ipv4(Ipv4),
    Ipv6(Ipv6),
    Arp(Arp),
    /// Any EtherType with opaque bytes.
    Raw {
        ethertype: u16,
        bytes: Vec<u8>,
    },
}

impl Body {
    fn ethertype(&self) -> u16 {
        match self {
            Body::Ipv4(_) => ETH_P_IPV4,
            Body::Ipv6(_) => ETH_P_IPV6,
            Body::Arp(_) => ETH_P_ARP,
            Body::Raw { ethertype, .. } => *ethertype,
        }
    }

    fn encode(&self) -> Vec<u8> {
        match self {
            Body::Ipv4(p) => p.build(),
            Body::Ipv6(p) => p.build(),
            Body::Arp(p) => p.build(),
            Body::Raw { bytes, .. } => bytes.clone(),
        }
    }
}

/// An Ethernet frame: destination, source, tags (outermost first), body.
#[derive(Clone, Debug)]
pub struct Eth {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub tags: Vec<VlanTag>,
    /// Replaces the EtherType after the last tag (the body's own by default).
    pub ethertype: Option<u16>,
    pub body: Body,
    /// Zero bytes appended until the frame has this length (the 60-byte Ethernet minimum a NIC
    /// pads to, say). Applied before truncation.
    pub pad_to: Option<usize>,
    /// Keep only the first `n` bytes.
    pub truncate: Option<usize>,
}

impl Eth {
    /// A frame with an empty body of EtherType 0x88b5 (IEEE local experimental); pick a body
    /// with [`Eth::ipv4`], [`Eth::ipv6`], [`Eth::arp`] or [`Eth::raw`].
    #[must_use]
    pub fn new(dst: [u8; 6], src: [u8; 6]) -> Self {
        Self {
            dst,
            src,
            tags: Vec::new(),
            ethertype: None,
            body: Body::Raw {
                ethertype: 0x88b5,
                bytes: Vec::new(),
            },
            pad_to: None,
            truncate: None,
        }
    }

    #[must_use]
    pub fn dst(mut self, mac: [u8; 6]) -> Self {
        self.dst = mac;
        self
    }

    #[must_use]
    pub fn src(mut self, mac: [u8; 6]) -> Self {
        self.src = mac;
        self
    }

    /// Appends (inside the tags so far) an 802.1Q tag with VLAN ID `vid` (0 = priority tag).
    #[must_use]
    pub fn vlan(self, vid: u16) -> Self {
        self.tag(ETH_P_8021Q, vid & 0x0fff)
    }

    /// Appends an 802.1ad (S-tag, the outer tag of Q-in-Q) tag with VLAN ID `vid`.
    #[must_use]
    pub fn svlan(self, vid: u16) -> Self {
        self.tag(ETH_P_8021AD, vid & 0x0fff)
    }

    /// Appends a tag with any TPID and TCI.
    #[must_use]
    pub fn tag(mut self, tpid: u16, tci: u16) -> Self {
        self.tags.push(VlanTag { tpid, tci });
        self
    }

    /// Overrides the EtherType after the tags (a mismatch with the body on purpose).
    #[must_use]
    pub fn ethertype(mut self, ethertype: u16) -> Self {
        self.ethertype = Some(ethertype);
        self
    }

    #[must_use]
    pub fn ipv4(mut self, p: Ipv4) -> Self {
        self.body = Body::Ipv4(p);
        self
    }

    #[must_use]
    pub fn ipv6(mut self, p: Ipv6) -> Self {
        self.body = Body::Ipv6(p);
        self
    }

    #[must_use]
    pub fn arp(mut self, p: Arp) -> Self {
        self.body = Body::Arp(p);
        self
    }

    /// A body of EtherType `ethertype` holding `bytes` as they are.
    #[must_use]
    pub fn raw(mut self, ethertype: u16, bytes: &[u8]) -> Self {
        self.body = Body::Raw {
            ethertype,
            bytes: bytes.to_vec(),
        };
        self
    }

    #[must_use]
    pub fn pad_to(mut self, n: usize) -> Self {
        self.pad_to = Some(n);
        self
    }

    /// Keeps only the first `n` bytes of the built frame (no effect if it is shorter).
    #[must_use]
    pub fn truncate(mut self, n: usize) -> Self {
        self.truncate = Some(n);
        self
    }

    /// Offset of the body (the L3 header): 14 plus 4 per tag.
    #[must_use]
    pub fn l3_offset(&self) -> usize {
        14 + 4 * self.tags.len()
    }

    /// The frame's bytes.
    #[must_use]
    pub fn build(&self) -> Vec<u8> {
        let mut f = Vec::with_capacity(64);
        f.extend_from_slice(&self.dst);
        f.extend_from_slice(&self.src);
        for t in &self.tags {
            f.extend_from_slice(&t.tpid.to_be_bytes());
            f.extend_from_slice(&t.tci.to_be_bytes());
        }
        let ethertype = self.ethertype.unwrap_or_else(|| self.body.ethertype());
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(&self.body.encode());
        if let Some(n) = self.pad_to
            && f.len() < n
        {
            f.resize(n, 0);
        }
        if let Some(n) = self.truncate {
            f.truncate(n);
        }
        f
    }
}

/// The Internet checksum (RFC 1071) of `chunks`, as if concatenated.
fn checksum(chunks: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    let mut odd: Option<u8> = None;
    for chunk in chunks {
        for &b in *chunk {
            match odd.take() {
                Some(hi) => sum += u32::from(u16::from_be_bytes([hi, b])),
                None => odd = Some(b),
            }
        }
    }
    if let Some(hi) = odd {
        sum += u32::from(u16::from_be_bytes([hi, 0]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An upper-layer payload of IPv4 or IPv6, with its checksum computed at build time.
#[derive(Clone, Debug)]
pub enum Upper {
    Udp {
        sport: u16,
        dport: u16,
        data: Vec<u8>,
    },
    /// A 20-byte TCP header (no options) with `flags` (0x02 = SYN) and `data`.
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
        data: Vec<u8>,
    },
    /// ICMP (on IPv4) or ICMPv6 (on IPv6): type, code, then `body` after the checksum.
    Icmp { kind: u8, code: u8, body: Vec<u8> },
    /// Opaque bytes with protocol number `proto`; no checksum is touched.
    Raw { proto: u8, bytes: Vec<u8> },
}

/// An ICMP echo request message on its own, as a raw ICMP socket sends it: IPv4 type 8 with
/// its checksum, or `ICMPv6` type 128, whose checksum the kernel fills in for raw `ICMPv6`
/// sockets (RFC 3542 3.1).
#[must_use]
pub fn icmp_echo(v6: bool, id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let no_pseudo_header = |_: u8, _: usize| Vec::new();
    Upper::echo_request(v6, id, seq, payload).encode((!v6).then_some(no_pseudo_header), v6)
}

impl Default for Upper {
    /// An empty UDP datagram from port 40000 to 9 (discard).
    fn default() -> Self {
        Upper::Udp {
            sport: 40000,
            dport: 9,
            data: Vec::new(),
        }
    }
}

/// The setters [`Ipv4`] and [`Ipv6`] share: the upper layer, and the version override.
macro_rules! shared_ip_setters {
    () => {
        /// A UDP datagram.
        #[must_use]
        pub fn udp(mut self, sport: u16, dport: u16, data: &[u8]) -> Self {
            self.upper = Upper::Udp {
                sport,
                dport,
                data: data.to_vec(),
            };
            self
        }

        /// A TCP segment; `flags` 0x02 is a SYN.
        #[must_use]
        pub fn tcp(mut self, sport: u16, dport: u16, flags: u8) -> Self {
            self.upper = Upper::Tcp {
                sport,
                dport,
                flags,
                data: Vec::new(),
            };
            self
        }

        /// Opaque upper layer with protocol (IPv6: next-header) number `proto`.
        #[must_use]
        pub fn payload(mut self, proto: u8, bytes: &[u8]) -> Self {
            self.upper = Upper::Raw {
                proto,
                bytes: bytes.to_vec(),
            };
            self
        }

        /// Overrides the version nibble.
        #[must_use]
        pub fn version(mut self, v: u8) -> Self {
            self.version = Some(v);
            self
        }
    };
}

impl Upper {
    /// An ICMP (or, with `v6`, `ICMPv6`) echo request.
    fn echo_request(v6: bool, id: u16, seq: u16, payload: &[u8]) -> Self {
        let mut body = id.to_be_bytes().to_vec();
        body.extend_from_slice(&seq.to_be_bytes());
        body.extend_from_slice(payload);
        Upper::Icmp {
            kind: if v6 { ICMPV6_ECHO_REQUEST } else { 8 },
            code: 0,
            body,
        }
    }

    fn proto(&self, v6: bool) -> u8 {
        match self {
            Upper::Udp { .. } => IPPROTO_UDP,
            Upper::Tcp { .. } => IPPROTO_TCP,
            Upper::Icmp { .. } if v6 => IPPROTO_ICMPV6,
            Upper::Icmp { .. } => IPPROTO_ICMP,
            Upper::Raw { proto, .. } => *proto,
        }
    }

    /// Encodes the payload; `pseudo` is the pseudo-header for UDP, TCP and ICMPv6 (ICMP on
    /// IPv4 has none) or `None` to leave checksums at zero (a fragment of a larger datagram).
    fn encode(&self, pseudo: Option<impl Fn(u8, usize) -> Vec<u8>>, v6: bool) -> Vec<u8> {
        let (mut b, csum_at) = match self {
            Upper::Udp { sport, dport, data } => {
                let mut b = Vec::with_capacity(8 + data.len());
                b.extend_from_slice(&sport.to_be_bytes());
                b.extend_from_slice(&dport.to_be_bytes());
                b.extend_from_slice(&((8 + data.len()) as u16).to_be_bytes());
                b.extend_from_slice(&[0, 0]);
                b.extend_from_slice(data);
                (b, Some(6))
            }
            Upper::Tcp {
                sport,
                dport,
                flags,
                data,
            } => {
                let mut b = Vec::with_capacity(20 + data.len());
                b.extend_from_slice(&sport.to_be_bytes());
                b.extend_from_slice(&dport.to_be_bytes());
                b.extend_from_slice(&1u32.to_be_bytes()); // sequence
                b.extend_from_slice(&0u32.to_be_bytes()); // acknowledgement
                b.extend_from_slice(&[5 << 4, *flags]);
                b.extend_from_slice(&64240u16.to_be_bytes()); // window
                b.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
                b.extend_from_slice(data);
                (b, Some(16))
            }
            Upper::Icmp { kind, code, body } => {
                let mut b = vec![*kind, *code, 0, 0];
                b.extend_from_slice(body);
                (b, Some(2))
            }
            Upper::Raw { bytes, .. } => (bytes.clone(), None),
        };
        if let Some(at) = csum_at {
            let proto = self.proto(v6);
            let ph = match pseudo {
                // ICMP on IPv4 covers only its own bytes.
                Some(_) if proto == IPPROTO_ICMP => Some(Vec::new()),
                Some(f) => Some(f(proto, b.len())),
                None => None,
            };
            if let Some(ph) = ph {
                let mut c = checksum(&[&ph, &b]);
                if c == 0 && proto == IPPROTO_UDP {
                    // RFC 768: a computed zero is sent as all ones (zero means "none").
                    c = 0xffff;
                }
                b[at..at + 2].copy_from_slice(&c.to_be_bytes());
            }
        }
        b
    }
}

/// An IPv4 packet.
#[derive(Clone, Debug)]
pub struct Ipv4 {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    pub id: u16,
    pub dont_fragment: bool,
    pub more_fragments: bool,
    /// Fragment offset in 8-byte units.
    pub frag_offset: u16,
    /// Options, padded with zero (end-of-options) to a multiple of 4 bytes.
    pub options: Vec<u8>,
    pub upper: Upper,
    pub version: Option<u8>,
    pub ihl: Option<u8>,
    pub tot_len: Option<u16>,
    pub proto: Option<u8>,
    /// The destination the upper-layer checksum is computed with, when it is not `dst`: the
    /// final destination of a source route (set by [`Ipv4::source_route`]).
    pub pseudo_dst: Option<Ipv4Addr>,
}

impl Ipv4 {
    shared_ip_setters!();

    /// A UDP packet with no data from `src` to `dst` (change it with the payload methods).
    #[must_use]
    pub fn new(src: impl Into<Ipv4Addr>, dst: impl Into<Ipv4Addr>) -> Self {
        Self {
            src: src.into(),
            dst: dst.into(),
            ttl: 64,
            id: 0x1234,
            dont_fragment: false,
            more_fragments: false,
            frag_offset: 0,
            options: Vec::new(),
            upper: Upper::default(),
            version: None,
            ihl: None,
            tot_len: None,
            proto: None,
            pseudo_dst: None,
        }
    }

    /// An ICMP echo request.
    #[must_use]
    pub fn icmp_echo(mut self, id: u16, seq: u16) -> Self {
        self.upper = Upper::echo_request(false, id, seq, &[]);
        self
    }

    /// Header options (padded to a multiple of 4 bytes at build time).
    #[must_use]
    pub fn options(mut self, options: &[u8]) -> Self {
        self.options = options.to_vec();
        self
    }

    /// A loose (or, with `strict`, strict) source route (RFC 791 3.1), as `ping -R`-style tools
    /// send it: a no-operation byte, then the option, so the addresses sit on 4-byte
    /// boundaries. `dst` stays the first hop; `route` lists the hops after it, the final
    /// destination last. The upper-layer checksum uses that final destination: it is the
    /// destination field the receiver sees once the route is used up (RFC 768, RFC 1122 3.2.1.8).
    /// Replaces any other options.
    #[must_use]
    pub fn source_route(mut self, route: &[Ipv4Addr], strict: bool) -> Self {
        let kind = if strict { IPOPT_SSRR } else { IPOPT_LSRR };
        let mut o = vec![IPOPT_NOP, kind, (3 + 4 * route.len()) as u8, 4];
        for hop in route {
            o.extend_from_slice(&hop.octets());
        }
        self.options = o;
        self.pseudo_dst = route.last().copied();
        self
    }

    /// Makes this a fragment: offset in 8-byte units, and the more-fragments flag. A non-first
    /// fragment's upper-layer checksum is left as the bytes say (it is not a whole datagram).
    #[must_use]
    pub fn fragment(mut self, offset_units: u16, more: bool) -> Self {
        self.frag_offset = offset_units & 0x1fff;
        self.more_fragments = more;
        self
    }

    /// Overrides the IHL nibble (header length in 32-bit words).
    #[must_use]
    pub fn ihl(mut self, ihl: u8) -> Self {
        self.ihl = Some(ihl);
        self
    }

    /// Overrides the total-length field.
    #[must_use]
    pub fn tot_len(mut self, len: u16) -> Self {
        self.tot_len = Some(len);
        self
    }

    /// Overrides the protocol field.
    #[must_use]
    pub fn proto(mut self, proto: u8) -> Self {
        self.proto = Some(proto);
        self
    }

    /// The packet's bytes (header, options, payload).
    #[must_use]
    pub fn build(&self) -> Vec<u8> {
        let mut options = self.options.clone();
        options.resize(options.len().div_ceil(4) * 4, 0);
        let hlen = 20 + options.len();
        let (src, dst) = (self.src.octets(), self.dst.octets());
        let pseudo_dst = self.pseudo_dst.map_or(dst, |a| a.octets());
        let proto = self.proto.unwrap_or_else(|| self.upper.proto(false));
        let pseudo = |proto: u8, len: usize| {
            let mut p = Vec::with_capacity(12);
            p.extend_from_slice(&src);
            p.extend_from_slice(&pseudo_dst);
            p.extend_from_slice(&[0, proto]);
            p.extend_from_slice(&(len as u16).to_be_bytes());
            p
        };
        let first = self.frag_offset == 0;
        let payload = self.upper.encode(first.then_some(pseudo), false);
        let total = self.tot_len.unwrap_or((hlen + payload.len()) as u16);
        let ihl = self.ihl.unwrap_or((hlen / 4) as u8);
        let version = self.version.unwrap_or(4);
        let mut flags_frag = self.frag_offset & 0x1fff;
        if self.dont_fragment {
            flags_frag |= 0x4000;
        }
        if self.more_fragments {
            flags_frag |= 0x2000;
        }
        let mut h = Vec::with_capacity(hlen + payload.len());
        h.push((version << 4) | (ihl & 0xf));
        h.push(0); // DSCP/ECN
        h.extend_from_slice(&total.to_be_bytes());
        h.extend_from_slice(&self.id.to_be_bytes());
        h.extend_from_slice(&flags_frag.to_be_bytes());
        h.extend_from_slice(&[self.ttl, proto, 0, 0]);
        h.extend_from_slice(&src);
        h.extend_from_slice(&dst);
        h.extend_from_slice(&options);
        let c = checksum(&[&h]);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h.extend_from_slice(&payload);
        h
    }
}

/// One IPv6 extension header.
#[derive(Clone, Debug)]
pub enum Ext {
    /// Hop-by-hop options: `len_units` is the Hdr Ext Len field (size `8 * (len + 1)`),
    /// filled with `PadN`.
    HopByHop { len_units: u8 },
    /// Routing header type 0-like filler of `8 * (len + 1)` bytes, segments left 0.
    Routing { len_units: u8 },
    /// Destination options, like hop-by-hop.
    DestOpts { len_units: u8 },
    /// Fragment header: offset in 8-byte units and the M flag.
    Fragment {
        offset_units: u16,
        more: bool,
        id: u32,
    },
    /// Authentication header: Payload Len field `len` (size `4 * (len + 2)`).
    Ah { len: u8 },
    /// Segment routing header (routing type 4, RFC 8754): `segments` in header order (the
    /// final segment first), `segments_left` the index of the active one.
    SegmentRouting {
        segments_left: u8,
        segments: Vec<Ipv6Addr>,
    },
    /// Any header: its next-header code (as the previous header names it) and its bytes from
    /// the length byte on (the builder writes the first byte, the next header).
    Raw { code: u8, rest: Vec<u8> },
}

impl Ext {
    fn code(&self) -> u8 {
        match self {
            Ext::HopByHop { .. } => IPPROTO_HOPOPTS,
            Ext::Routing { .. } | Ext::SegmentRouting { .. } => IPPROTO_ROUTING,
            Ext::DestOpts { .. } => IPPROTO_DSTOPTS,
            Ext::Fragment { .. } => IPPROTO_FRAGMENT,
            Ext::Ah { .. } => IPPROTO_AH,
            Ext::Raw { code, .. } => *code,
        }
    }

    fn encode(&self, next: u8) -> Vec<u8> {
        match self {
            Ext::HopByHop { len_units } | Ext::DestOpts { len_units } => {
                let size = 8 * (usize::from(*len_units) + 1);
                let mut b = vec![next, *len_units];
                // Padding options covering the rest (RFC 8200 4.2): PadN of at most 255 data
                // bytes each, Pad1 for a single leftover byte.
                let mut left = size - 2;
                while left > 0 {
                    if left == 1 {
                        b.push(0);
                        left = 0;
                    } else {
                        let n = (left - 2).min(255);
                        b.extend_from_slice(&[1, n as u8]);
                        b.resize(b.len() + n, 0);
                        left -= n + 2;
                    }
                }
                b
            }
            Ext::Routing { len_units } => {
                let size = 8 * (usize::from(*len_units) + 1);
                // Routing type 4 (segment routing) with segments left 0: ignored by receivers.
                let mut b = vec![next, *len_units, 4, 0];
                b.resize(size, 0);
                b
            }
            Ext::Fragment {
                offset_units,
                more,
                id,
            } => {
                let field = (offset_units << 3) | u16::from(*more);
                let mut b = vec![next, 0];
                b.extend_from_slice(&field.to_be_bytes());
                b.extend_from_slice(&id.to_be_bytes());
                b
            }
            Ext::Ah { len } => {
                let size = 4 * (usize::from(*len) + 2);
                let mut b = vec![next, *len, 0, 0];
                b.extend_from_slice(&0x100u32.to_be_bytes()); // SPI
                b.resize(size.max(8), 0);
                b.truncate(size);
                b
            }
            Ext::SegmentRouting {
                segments_left,
                segments,
            } => {
                let n = segments.len();
                // Hdr Ext Len (8-byte units after the first 8), type, Segments Left, Last
                // Entry, flags, tag.
                let mut b = vec![
                    next,
                    (2 * n) as u8,
                    IPV6_SRCRT_TYPE_SEG6,
                    *segments_left,
                    n.saturating_sub(1) as u8,
                    0,
                    0,
                    0,
                ];
                for s in segments {
                    b.extend_from_slice(&s.octets());
                }
                b
            }
            Ext::Raw { rest, .. } => {
                let mut b = vec![next];
                b.extend_from_slice(rest);
                b
            }
        }
    }
}

/// An IPv6 packet: fixed header, extension headers in order, upper layer.
#[derive(Clone, Debug)]
pub struct Ipv6 {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub hop_limit: u8,
    pub exts: Vec<Ext>,
    pub upper: Upper,
    pub version: Option<u8>,
    pub payload_len: Option<u16>,
    /// Overrides the fixed header's next-header field.
    pub next_header: Option<u8>,
}

impl Ipv6 {
    shared_ip_setters!();

    /// A UDP packet with no data from `src` to `dst`.
    #[must_use]
    pub fn new(src: impl Into<Ipv6Addr>, dst: impl Into<Ipv6Addr>) -> Self {
        Self {
            src: src.into(),
            dst: dst.into(),
            hop_limit: 64,
            exts: Vec::new(),
            upper: Upper::default(),
            version: None,
            payload_len: None,
            next_header: None,
        }
    }

    /// A neighbour solicitation for `target`, as a host sends it: to the solicited-node
    /// multicast address, hop limit 255, with a source link-layer address option when `sll`
    /// is given. Replaces the destination.
    #[must_use]
    pub fn neighbour_solicitation(mut self, target: Ipv6Addr, sll: Option<[u8; 6]>) -> Self {
        self.dst = solicited_node(target);
        self.hop_limit = 255;
        let mut body = vec![0; 4]; // reserved
        body.extend_from_slice(&target.octets());
        if let Some(mac) = sll {
            body.extend_from_slice(&[1, 1]);
            body.extend_from_slice(&mac);
        }
        self.upper = Upper::Icmp {
            kind: ICMPV6_NEIGHBOUR_SOLICITATION,
            code: 0,
            body,
        };
        self
    }

    /// A neighbour advertisement for `target` (solicited and override flags set) with a
    /// target link-layer address option.
    #[must_use]
    pub fn neighbour_advertisement(mut self, target: Ipv6Addr, tll: [u8; 6]) -> Self {
        self.hop_limit = 255;
        let mut body = vec![0x60, 0, 0, 0];
        body.extend_from_slice(&target.octets());
        body.extend_from_slice(&[2, 1]);
        body.extend_from_slice(&tll);
        self.upper = Upper::Icmp {
            kind: ICMPV6_NEIGHBOUR_ADVERTISEMENT,
            code: 0,
            body,
        };
        self
    }

    #[must_use]
    pub fn icmpv6(mut self, kind: u8, code: u8, body: &[u8]) -> Self {
        self.upper = Upper::Icmp {
            kind,
            code,
            body: body.to_vec(),
        };
        self
    }

    /// Appends an extension header (after those so far).
    #[must_use]
    pub fn ext(mut self, ext: Ext) -> Self {
        self.exts.push(ext);
        self
    }

    #[must_use]
    pub fn hop_by_hop(self) -> Self {
        self.ext(Ext::HopByHop { len_units: 0 })
    }

    #[must_use]
    pub fn routing(self) -> Self {
        self.ext(Ext::Routing { len_units: 0 })
    }

    #[must_use]
    pub fn dest_opts(self) -> Self {
        self.ext(Ext::DestOpts { len_units: 0 })
    }

    #[must_use]
    pub fn fragment(self, offset_units: u16, more: bool) -> Self {
        self.ext(Ext::Fragment {
            offset_units,
            more,
            id: 0x0bad_cafe,
        })
    }

    #[must_use]
    pub fn ah(self) -> Self {
        self.ext(Ext::Ah { len: 1 })
    }

    /// A segment routing header (RFC 8754) as a source sends it: `dst` stays the active (first)
    /// segment and `via` lists the segments after it, the final destination last. The header
    /// holds them in reverse order with Segments Left pointing at `dst`; the upper-layer
    /// checksum uses the final destination (RFC 8200 8.1).
    #[must_use]
    pub fn segment_route(self, via: &[Ipv6Addr]) -> Self {
        let mut segments: Vec<Ipv6Addr> = via.iter().rev().copied().collect();
        segments.push(self.dst);
        self.ext(Ext::SegmentRouting {
            segments_left: via.len() as u8,
            segments,
        })
    }

    #[must_use]
    pub fn payload_len(mut self, len: u16) -> Self {
        self.payload_len = Some(len);
        self
    }

    #[must_use]
    pub fn next_header(mut self, nh: u8) -> Self {
        self.next_header = Some(nh);
        self
    }

    /// The packet's bytes.
    #[must_use]
    pub fn build(&self) -> Vec<u8> {
        let (src, dst) = (self.src.octets(), self.dst.octets());
        // With a routing header that still has segments to visit, the pseudo-header holds the
        // final destination (RFC 8200 8.1): the first entry of a segment list.
        let final_dst = self
            .exts
            .iter()
            .find_map(|e| match e {
                Ext::SegmentRouting {
                    segments_left,
                    segments,
                } if *segments_left > 0 => segments.first().map(Ipv6Addr::octets),
                _ => None,
            })
            .unwrap_or(dst);
        let pseudo = |proto: u8, len: usize| {
            let mut p = Vec::with_capacity(40);
            p.extend_from_slice(&src);
            p.extend_from_slice(&final_dst);
            p.extend_from_slice(&(len as u32).to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, proto]);
            p
        };
        // A non-first fragment carries a piece of a datagram: no checksum of its own.
        let first = !self
            .exts
            .iter()
            .any(|e| matches!(e, Ext::Fragment { offset_units, .. } if *offset_units != 0));
        let upper = self.upper.encode(first.then_some(pseudo), true);
        let mut rest = Vec::new();
        for (i, e) in self.exts.iter().enumerate() {
            let next = self
                .exts
                .get(i + 1)
                .map_or_else(|| self.upper.proto(true), Ext::code);
            rest.extend_from_slice(&e.encode(next));
        }
        rest.extend_from_slice(&upper);
        let first_nh = self.next_header.unwrap_or_else(|| {
            self.exts
                .first()
                .map_or_else(|| self.upper.proto(true), Ext::code)
        });
        let version = self.version.unwrap_or(6);
        let mut h = Vec::with_capacity(40 + rest.len());
        h.extend_from_slice(&[version << 4, 0, 0, 0]);
        h.extend_from_slice(&self.payload_len.unwrap_or(rest.len() as u16).to_be_bytes());
        h.extend_from_slice(&[first_nh, self.hop_limit]);
        h.extend_from_slice(&src);
        h.extend_from_slice(&dst);
        h.extend_from_slice(&rest);
        h
    }
}

/// An ARP packet (Ethernet/IPv4 unless the fields are overridden).
#[derive(Clone, Debug)]
pub struct Arp {
    pub htype: u16,
    pub ptype: u16,
    pub hlen: u8,
    pub plen: u8,
    /// 1 request, 2 reply.
    pub op: u16,
    pub sha: [u8; 6],
    pub spa: Ipv4Addr,
    pub tha: [u8; 6],
    pub tpa: Ipv4Addr,
}

impl Arp {
    /// "Who has `tpa`? Tell `spa` (at `sha`)".
    #[must_use]
    pub fn request(sha: [u8; 6], spa: impl Into<Ipv4Addr>, tpa: impl Into<Ipv4Addr>) -> Self {
        Self {
            htype: 1,
            ptype: ETH_P_IPV4,
            hlen: 6,
            plen: 4,
            op: ARP_REQUEST,
            sha,
            spa: spa.into(),
            tha: [0; 6],
            tpa: tpa.into(),
        }
    }

    /// "`spa` is at `sha`", to `tpa` at `tha`.
    #[must_use]
    pub fn reply(
        sha: [u8; 6],
        spa: impl Into<Ipv4Addr>,
        tha: [u8; 6],
        tpa: impl Into<Ipv4Addr>,
    ) -> Self {
        Self {
            op: ARP_REPLY,
            tha,
            ..Self::request(sha, spa, tpa)
        }
    }

    /// Overrides the hardware address length field (the addresses stay 6 bytes).
    #[must_use]
    pub fn hlen(mut self, hlen: u8) -> Self {
        self.hlen = hlen;
        self
    }

    #[must_use]
    pub fn htype(mut self, htype: u16) -> Self {
        self.htype = htype;
        self
    }

    #[must_use]
    pub fn ptype(mut self, ptype: u16) -> Self {
        self.ptype = ptype;
        self
    }

    #[must_use]
    pub fn plen(mut self, plen: u8) -> Self {
        self.plen = plen;
        self
    }

    /// The 28 bytes.
    #[must_use]
    pub fn build(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(28);
        b.extend_from_slice(&self.htype.to_be_bytes());
        b.extend_from_slice(&self.ptype.to_be_bytes());
        b.extend_from_slice(&[self.hlen, self.plen]);
        b.extend_from_slice(&self.op.to_be_bytes());
        b.extend_from_slice(&self.sha);
        b.extend_from_slice(&self.spa.octets());
        b.extend_from_slice(&self.tha);
        b.extend_from_slice(&self.tpa.octets());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
    const B: [u8; 6] = [0x52, 0x54, 0, 0, 0, 2];

    #[test]
    fn ipv4_udp_layout_and_checksums() {
        let f = Eth::new(A, B)
            .ipv4(Ipv4::new([192, 0, 2, 1], [198, 51, 100, 2]).udp(1, 2, b"abc"))
            .build();
        assert_eq!(&f[12..14], &[0x08, 0x00]);
        assert_eq!(f[14], 0x45);
        assert_eq!(u16::from_be_bytes([f[16], f[17]]), 31);
        // A correct header sums to zero.
        assert_eq!(checksum(&[&f[14..34]]), 0);
        // So does UDP with its pseudo-header.
        let mut ph = f[26..34].to_vec();
        ph.extend_from_slice(&[0, 17, 0, 11]);
        assert_eq!(checksum(&[&ph, &f[34..]]), 0);
    }

    #[test]
    fn tags_options_and_overrides() {
        let f = Eth::new(A, B)
            .svlan(10)
            .vlan(0)
            .ipv4(
                Ipv4::new([1, 1, 1, 1], [2, 2, 2, 2])
                    .options(&[1, 1, 1])
                    .fragment(3, true)
                    .tot_len(999)
                    .ihl(4),
            )
            .build();
        assert_eq!(&f[12..22], &[0x88, 0xa8, 0, 10, 0x81, 0, 0, 0, 0x08, 0]);
        assert_eq!(f[22], 0x44);
        assert_eq!(u16::from_be_bytes([f[24], f[25]]), 999);
        assert_eq!(u16::from_be_bytes([f[28], f[29]]), 0x2003);
        assert_eq!(f.len(), 22 + 24 + 8);
    }

    #[test]
    fn ipv6_chain_and_ns() {
        let target: Ipv6Addr = "fd00::1:2".parse().expect("addr");
        let p = Ipv6::new(Ipv6Addr::UNSPECIFIED, Ipv6Addr::UNSPECIFIED)
            .hop_by_hop()
            .ah()
            .fragment(0, true)
            .neighbour_solicitation(target, Some(B));
        let b = p.build();
        assert_eq!(b[6], IPPROTO_HOPOPTS);
        assert_eq!(&b[24..40], &solicited_node(target).octets());
        assert_eq!(b[40], IPPROTO_AH);
        assert_eq!(b[48], IPPROTO_FRAGMENT);
        assert_eq!(b[60], IPPROTO_ICMPV6);
        assert_eq!(b[68], ICMPV6_NEIGHBOUR_SOLICITATION);
        assert_eq!(&b[76..92], &target.octets());
        assert_eq!(usize::from(u16::from_be_bytes([b[4], b[5]])), b.len() - 40);
        // ICMPv6 checksum over the pseudo-header verifies.
        let mut ph = b[8..40].to_vec();
        ph.extend_from_slice(&((b.len() - 68) as u32).to_be_bytes());
        ph.extend_from_slice(&[0, 0, 0, 58]);
        assert_eq!(checksum(&[&ph, &b[68..]]), 0);
    }

    #[test]
    fn ipv4_header_checksum_verifies() {
        let p = Ipv4::new([192, 168, 50, 11], [10, 10, 0, 2])
            .udp(1, 2, b"x")
            .build();
        assert_eq!(checksum(&[&p[..20]]), 0);
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
    fn tagged_frame_layout() {
        let f = Eth {
            tags: vec![
                VlanTag::priority(ETH_P_8021AD),
                VlanTag::priority(ETH_P_8021Q),
            ],
            ..Eth::new(BROADCAST, [2, 0, 0, 0, 0, 1])
        }
        .raw(ETH_P_IPV4, &[0x45])
        .pad_to(ETH_MIN_LEN)
        .build();
        assert_eq!(&f[12..14], &[0x88, 0xa8]);
        assert_eq!(&f[16..18], &[0x81, 0x00]);
        assert_eq!(&f[20..22], &[0x08, 0x00]);
        assert_eq!(f.len(), 60);
    }

    #[test]
    fn loose_source_route_layout_and_final_destination_checksum() {
        let hop = Ipv4Addr::new(10, 20, 0, 2);
        let p = Ipv4::new([192, 168, 50, 11], [192, 168, 50, 254])
            .source_route(&[hop], false)
            .udp(1, 2, b"abc")
            .build();
        // IHL 7: 20 bytes, then NOP and the 7-byte option (type, length, pointer, one hop).
        assert_eq!(p[0], 0x47);
        assert_eq!(&p[20..28], &[1, 0x83, 7, 4, 10, 20, 0, 2]);
        assert_eq!(&p[16..20], &[192, 168, 50, 254]);
        assert_eq!(checksum(&[&p[..28]]), 0);
        // UDP verifies against the final destination, not the first hop.
        let mut ph = p[12..16].to_vec();
        ph.extend_from_slice(&hop.octets());
        ph.extend_from_slice(&[0, 17, 0, 11]);
        assert_eq!(checksum(&[&ph, &p[28..]]), 0);
        let s = Ipv4::new([1, 1, 1, 1], [2, 2, 2, 2])
            .source_route(&[hop, Ipv4Addr::new(10, 0, 0, 9)], true)
            .build();
        assert_eq!(s[0], 0x48);
        assert_eq!(&s[21..24], &[0x89, 11, 4]);
    }

    #[test]
    fn segment_routing_header_layout_and_final_destination_checksum() {
        let first: Ipv6Addr = "fd00:50::254".parse().expect("literal");
        let last: Ipv6Addr = "fd00:20::1".parse().expect("literal");
        let src: Ipv6Addr = "fd00:50::11".parse().expect("literal");
        let b = Ipv6::new(src, first)
            .segment_route(&[last])
            .udp(1, 2, b"x")
            .build();
        assert_eq!(b[6], IPPROTO_ROUTING);
        // Next header UDP, length 4 (two segments), type 4, segments left 1, last entry 1.
        assert_eq!(&b[40..48], &[IPPROTO_UDP, 4, 4, 1, 1, 0, 0, 0]);
        assert_eq!(&b[48..64], &last.octets());
        assert_eq!(&b[64..80], &first.octets());
        assert_eq!(&b[24..40], &first.octets());
        let mut ph = src.octets().to_vec();
        ph.extend_from_slice(&last.octets());
        ph.extend_from_slice(&9u32.to_be_bytes());
        ph.extend_from_slice(&[0, 0, 0, IPPROTO_UDP]);
        assert_eq!(checksum(&[&ph, &b[80..]]), 0);
        assert_eq!(usize::from(u16::from_be_bytes([b[4], b[5]])), b.len() - 40);
    }

    #[test]
    fn tunnel_headers() {
        let inner = Eth::new(A, B).raw(0x88b5, b"in").build();
        let v = vxlan(0x00ab_cdef, &inner);
        assert_eq!(&v[..8], &[0x08, 0, 0, 0, 0xab, 0xcd, 0xef, 0]);
        assert_eq!(&v[8..], &inner[..]);
        let g = geneve(42, ETH_P_TEB, &inner);
        assert_eq!(&g[..8], &[0, 0, 0x65, 0x58, 0, 0, 42, 0]);
        let r = gre(ETH_P_IPV4, b"ip");
        assert_eq!(r, [0, 0, 8, 0, b'i', b'p']);
        // A whole VXLAN frame: outer UDP to 4789 whose checksum covers the encapsulation.
        let f = Eth::new(A, B)
            .ipv4(Ipv4::new([192, 168, 50, 11], [192, 168, 50, 254]).udp(40000, VXLAN_PORT, &v))
            .build();
        assert_eq!(u16::from_be_bytes([f[36], f[37]]), VXLAN_PORT);
        let mut ph = f[26..34].to_vec();
        ph.extend_from_slice(&[0, 17]);
        ph.extend_from_slice(&((f.len() - 34) as u16).to_be_bytes());
        assert_eq!(checksum(&[&ph, &f[34..]]), 0);
    }

    #[test]
    fn arp_and_truncate() {
        let f = Eth::new(BROADCAST, B)
            .arp(Arp::request(B, [10, 0, 0, 2], [10, 0, 0, 1]).hlen(8))
            .pad_to(60)
            .build();
        assert_eq!(f.len(), 60);
        assert_eq!(&f[14..22], &[0, 1, 8, 0, 8, 4, 0, 1]);
        assert_eq!(&f[38..42], &[10, 0, 0, 1]);
        let t = Eth::new(BROADCAST, B)
            .raw(ETH_P_LLDP, &[0; 40])
            .truncate(20)
            .build();
        assert_eq!(t.len(), 20);
    }
}
