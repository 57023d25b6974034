//! Step 10 of docs/datapath.md: the last word on an IP packet a prefix or the route check
//! denies. An exception (an allow rule scoped to the ingress port or to all, matching the
//! protocol and destination port) or a flow the protected side started (`guard_reply`)
//! lets it through; nothing else does. Asked only on that deny path, and only when
//! userspace says there is something to find (`GLOBAL_FLAG_EXCEPTIONS`, `_REPLIES`).
//!
//! The upper layer is read right behind the IP header: an IPv6 packet with extension
//! headers, or an IPv4 fragment after the first, matches only exceptions for any protocol,
//! and is never a reply.

use aya_ebpf::{helpers::bpf_ktime_get_ns, maps::lpm_trie::Key};
use guard_common::{
    EXCEPTION_FIXED_BITS, Exception4, Exception6, FLOW_IDLE_ICMP_NS, FLOW_IDLE_TCP_NS,
    FLOW_IDLE_UDP_NS, FLOW_REFRESH_NS, FlowKey, FlowValue, GLOBAL_FLAG_EXCEPTIONS,
    GLOBAL_FLAG_REPLIES, RuleValue, SCOPE_ALL, flow_hint_slot, reason,
};
use network_types::ip::{Ipv4Hdr, Ipv6Hdr};

use crate::{
    Outcome,
    frame::Frame,
    maps::{EXCEPTIONS_V4, EXCEPTIONS_V6, FLOW_HINTS, FLOWS},
    policy::Config,
};

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;
const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_ECHO_REQUEST: u8 = 8;
const ICMPV6_ECHO_REPLY: u8 = 129;
pub const ICMPV6_ECHO_REQUEST: u8 = 128;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;
/// The fragment offset bits of the IPv4 flags-and-offset field.
const IP_OFFSET: u16 = 0x1fff;
const FAMILY_V4: u8 = 4;
const FAMILY_V6: u8 = 6;

/// Is step 10 on (exceptions installed, or replies on)? The classifiers mark the denies it
/// may lift (`Outcome::liftable`) only then: a deny by destination prefix whose packet no
/// source route, tunnel or malformed header would have dropped, and the route check's
/// `deny_route`/`deny_local`. Tunnels, source routing, ARP/NDP and malformed frames stay
/// denied whatever the rules say.
#[inline(always)]
pub fn enabled(cfg: Config) -> bool {
    cfg.flags & (GLOBAL_FLAG_EXCEPTIONS | GLOBAL_FLAG_REPLIES) != 0
}

/// What an IP packet says about itself, read behind its IP header (`l3`). Ports in network
/// order; `ports` false when there is no upper-layer header to read them from (also for ICMP:
/// a later IPv4 fragment has no type or identifier, so it is no echo reply).
#[derive(Clone, Copy)]
pub struct Packet {
    pub v6: bool,
    pub src: [u32; 4],
    pub dst: [u32; 4],
    pub proto: u8,
    pub ports: bool,
    pub sport: u16,
    pub dport: u16,
    /// TCP flags, or the ICMP type.
    pub flags: u8,
}

#[inline(always)]
fn words4(a: [u8; 4]) -> [u32; 4] {
    [u32::from_ne_bytes(a), 0, 0, 0]
}

#[inline(always)]
fn words16(a: &[u8; 16]) -> [u32; 4] {
    let w = |i: usize| u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
    [w(0), w(4), w(8), w(12)]
}

/// Reads the packet at `l3` (IPv6 if `v6`). `None` when the headers cannot be read (the
/// caller keeps its verdict).
#[inline(always)]
pub fn read<F: Frame>(f: &F, l3: usize, v6: bool) -> Option<Packet> {
    let (src, dst, proto, l4, upper) = if v6 {
        let h: &Ipv6Hdr = f.at(l3).ok()?;
        (
            words16(&h.src_addr),
            words16(&h.dst_addr),
            h.next_hdr,
            l3 + Ipv6Hdr::LEN,
            true,
        )
    } else {
        let h: &Ipv4Hdr = f.at(l3).ok()?;
        let hlen = usize::from(h.vihl & 0x0f) * 4;
        let first = u16::from_be_bytes(h.frags) & IP_OFFSET == 0;
        (
            words4(h.src_addr),
            words4(h.dst_addr),
            h.proto,
            l3 + hlen,
            first,
        )
    };
    let mut p = Packet {
        v6,
        src,
        dst,
        proto,
        ports: false,
        sport: 0,
        dport: 0,
        flags: 0,
    };
    if !upper {
        return Some(p);
    }
    match proto {
        IPPROTO_TCP => {
            let t: &[u8; 14] = f.at(l4).ok()?;
            p.sport = u16::from_ne_bytes([t[0], t[1]]);
            p.dport = u16::from_ne_bytes([t[2], t[3]]);
            p.flags = t[13];
            p.ports = true;
        }
        IPPROTO_UDP => {
            let u: &[u8; 4] = f.at(l4).ok()?;
            p.sport = u16::from_ne_bytes([u[0], u[1]]);
            p.dport = u16::from_ne_bytes([u[2], u[3]]);
            p.ports = true;
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            // Type, code, checksum, and for echo the identifier (as `sport`).
            let i: &[u8; 6] = f.at(l4).ok()?;
            p.flags = i[0];
            p.sport = u16::from_ne_bytes([i[4], i[5]]);
            // `dport` stays 0: exceptions see no port for ICMP.
            p.ports = true;
        }
        _ => {}
    }
    Some(p)
}

/// Step 10: `outcome` (a deny the classifier marked liftable) for the packet at `l3` of a frame that
/// arrived on `ifindex`, or the pass an exception or a reply gives it.
#[inline(always)]
pub fn lift<F: Frame>(f: &F, l3: usize, v6: bool, cfg: Config, outcome: Outcome) -> Outcome {
    let Some(p) = read(f, l3, v6) else {
        return outcome;
    };
    if cfg.flags & GLOBAL_FLAG_EXCEPTIONS != 0 {
        let id = exception(&p, f.ingress_ifindex());
        if id != 0 {
            return Outcome::new(reason::EXCEPTION, id);
        }
    }
    if cfg.flags & GLOBAL_FLAG_REPLIES != 0 && is_reply(&p) {
        return Outcome::new(reason::REPLY, 0);
    }
    outcome
}

/// The id of the first exception that matches, most specific scope and match first; 0 for
/// none. An exception's rule id is never 0.
#[inline(always)]
fn exception(p: &Packet, ifindex: u32) -> u32 {
    // (scope, protocol, port): the port's own rules, then those for all ports; each with the
    // packet's port, any port of its protocol, any protocol.
    let dport = if p.ports { p.dport } else { 0 };
    let tries: [(u32, u8, u16); 6] = [
        (ifindex, p.proto, dport),
        (ifindex, p.proto, 0),
        (ifindex, 0, 0),
        (SCOPE_ALL, p.proto, dport),
        (SCOPE_ALL, p.proto, 0),
        (SCOPE_ALL, 0, 0),
    ];
    let mut i = 0;
    while i < tries.len() {
        let (scope, proto, port) = tries[i];
        let id = if p.v6 {
            lookup6(p, scope, proto, port)
        } else {
            lookup4(p, scope, proto, port)
        };
        if id != 0 {
            return id;
        }
        i += 1;
    }
    0
}

#[inline(always)]
fn id_of(v: Option<&RuleValue>) -> u32 {
    match v {
        Some(r) if r.is_allow() => r.rule_id,
        _ => 0,
    }
}

#[inline(always)]
fn lookup4(p: &Packet, scope: u32, proto: u8, port: u16) -> u32 {
    let data = Exception4 {
        scope,
        proto,
        pad: 0,
        dport: port.to_ne_bytes(),
        addr: p.dst[0].to_ne_bytes(),
    };
    id_of(EXCEPTIONS_V4.get(Key::new(EXCEPTION_FIXED_BITS + 32, data)))
}

#[inline(always)]
fn lookup6(p: &Packet, scope: u32, proto: u8, port: u16) -> u32 {
    // SAFETY: four u32 words are sixteen bytes, in memory order: the address as read.
    let addr: [u8; 16] = unsafe { core::mem::transmute(p.dst) };
    let data = Exception6 {
        scope,
        proto,
        pad: 0,
        dport: port.to_ne_bytes(),
        addr,
    };
    id_of(EXCEPTIONS_V6.get(Key::new(EXCEPTION_FIXED_BITS + 128, data)))
}

/// The flow key of a packet the guest sends (`toward_guest` false) or one the protected side
/// sends to a guest (`toward_guest` true), both keyed as the guest's reply sees the flow.
/// `None` for what cannot be a tracked flow.
#[inline(always)]
pub fn flow_key(p: &Packet, toward_guest: bool) -> Option<FlowKey> {
    let (guest, peer, guest_port, peer_port) = if toward_guest {
        (p.dst, p.src, p.dport, p.sport)
    } else {
        (p.src, p.dst, p.sport, p.dport)
    };
    let (guest_port, peer_port) = match p.proto {
        IPPROTO_TCP | IPPROTO_UDP if p.ports => (guest_port, peer_port),
        // Echo: the identifier, carried in `sport` whichever way the packet goes. Without
        // `ports` (a later fragment) `flags` reads 0, an echo reply's type: no key then.
        IPPROTO_ICMP | IPPROTO_ICMPV6 if p.ports => (p.sport, 0),
        _ => return None,
    };
    Some(FlowKey {
        guest,
        peer,
        guest_port,
        peer_port,
        proto: p.proto,
        family: if p.v6 { FAMILY_V6 } else { FAMILY_V4 },
        pad: [0; 2],
    })
}

/// How long a flow of `proto` stays open without traffic.
#[inline(always)]
pub fn idle_ns(proto: u8) -> u64 {
    match proto {
        IPPROTO_TCP => FLOW_IDLE_TCP_NS,
        IPPROTO_UDP => FLOW_IDLE_UDP_NS,
        _ => FLOW_IDLE_ICMP_NS,
    }
}

/// Is the guest's packet `p` a reply to a flow the protected side started (and still open)?
/// A TCP SYN without ACK starts a flow, so it never is; for ICMP only an echo reply is.
#[inline(always)]
fn is_reply(p: &Packet) -> bool {
    match p.proto {
        IPPROTO_TCP if p.flags & (TCP_SYN | TCP_ACK) == TCP_SYN => return false,
        IPPROTO_ICMP if p.flags != ICMP_ECHO_REPLY => return false,
        IPPROTO_ICMPV6 if p.flags != ICMPV6_ECHO_REPLY => return false,
        _ => {}
    }
    let Some(key) = flow_key(p, false) else {
        return false;
    };
    // No flow was ever recorded between these two addresses: no lookup.
    if FLOW_HINTS.get(flow_hint_slot(&key)).is_none_or(|h| *h == 0) {
        return false;
    }
    let Some(v) = FLOWS.get_ptr_mut(key) else {
        return false;
    };
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: `v` points at the live value of the entry; a racing refresh from another CPU
    // writes a time just as valid.
    let seen = unsafe { (*v).seen_ns };
    // A refresh on another CPU may have written a time a little after `now`: age 0.
    let age = now.saturating_sub(seen);
    if age > idle_ns(p.proto) {
        return false;
    }
    if age > FLOW_REFRESH_NS {
        // SAFETY: as above.
        unsafe { *v = FlowValue { seen_ns: now } };
    }
    true
}
