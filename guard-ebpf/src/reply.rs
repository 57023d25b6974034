//! `guard_reply`, on the bridge device's TC egress: every packet the host sends or routes
//! into the guest side passes it (bridged guest-to-guest traffic does not). It records the
//! flows the protected side starts, so that step 10 lets their replies through: a TCP SYN
//! without ACK, any UDP datagram, an ICMP echo request, made by the host or received on an
//! interface that is neither the bridge nor an uplink. It never drops and never changes a
//! packet.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use guard_common::{
    FLOW_REFRESH_NS, FlowValue, GLOBAL_FLAG_REPLIES, PORT_FLAG_EGRESS_OK, flow_hint_slot,
};

use crate::{
    eth::{self, ETH_HLEN, P_IPV4, P_IPV6},
    exception::{
        self, ICMP_ECHO_REQUEST, ICMPV6_ECHO_REQUEST, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP,
        IPPROTO_UDP, TCP_ACK, TCP_SYN,
    },
    frame::Frame,
    maps::{FLOW_HINTS, FLOWS, PORTS},
    policy::Config,
};

/// Records the flow of the packet in `f` if it starts (or keeps alive) one toward a guest.
/// `from` is the interface the packet was received on (0: the host made it). What arrived
/// from the guest side (the bridge) or from an interface guests may be routed out of (an
/// uplink) starts nothing: a guest could otherwise forge the protected side's first packet
/// and have the host route it back to itself.
#[inline(always)]
pub fn record<F: Frame>(f: &F, from: u32) {
    let cfg = Config::load();
    if cfg.flags & GLOBAL_FLAG_REPLIES == 0 {
        return;
    }
    if from != 0
        && (from == cfg.bridge_ifindex
            || PORTS
                .get(from)
                .is_some_and(|p| p.flags & PORT_FLAG_EGRESS_OK != 0))
    {
        return;
    }
    let Ok(eth) = f.at::<[u8; ETH_HLEN]>(0) else {
        return;
    };
    let Ok((proto, off)) = eth::skip_vlans(f, eth, f.tags_stripped()) else {
        return;
    };
    let v6 = match proto {
        P_IPV4 => false,
        P_IPV6 => true,
        _ => return,
    };
    let Some(p) = exception::read(f, off, v6) else {
        return;
    };
    let starts = match p.proto {
        IPPROTO_TCP => p.flags & (TCP_SYN | TCP_ACK) == TCP_SYN,
        IPPROTO_UDP => p.ports,
        IPPROTO_ICMP => p.flags == ICMP_ECHO_REQUEST,
        IPPROTO_ICMPV6 => p.flags == ICMPV6_ECHO_REQUEST,
        _ => false,
    };
    if !starts {
        return;
    }
    let Some(key) = exception::flow_key(&p, true) else {
        return;
    };
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if p.proto != IPPROTO_TCP
        && let Some(v) = FLOWS.get_ptr(key)
        // SAFETY: `v` points at the live value of the entry.
        && now.saturating_sub(unsafe { (*v).seen_ns }) <= FLOW_REFRESH_NS
    {
        // Fresh enough: a lookup per datagram, not a write.
        return;
    }
    // A full table evicts its least recently used flow; a failed insert only means that
    // flow's replies are judged like any other packet. The hint goes first: a reply that
    // races the insert finds the hint and then looks the flow up.
    let slot = flow_hint_slot(&key);
    if let Some(h) = FLOW_HINTS.get_ptr_mut(slot)
        // SAFETY: `h` points at the live array element; a racing writer writes the same 1.
        && unsafe { *h } == 0
    {
        // SAFETY: as above.
        unsafe { *h = 1 };
    }
    let _ = FLOWS.insert(key, FlowValue { seen_ns: now }, 0);
}
