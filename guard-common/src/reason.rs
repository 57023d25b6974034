//! Reason codes: why a frame got its verdict. Every verdict bumps exactly one (port, reason)
//! counter slot.
//!
//! Append-only: a code, once released, keeps its number and meaning forever (counters pinned
//! by an older guardctl are read by a newer one). Add new codes at the end, below [`COUNT`].
//! Every drop reason has a monitor-mode twin ([`monitor_of`]): the first block of drop reasons
//! (3..=7) has its twins at 8..=12, the second block (13..=16) at 17..=20.

/// Not addressed to the host: bridged to another guest or the real router (rule 1).
pub const NOT_HOST: u32 = 0;
/// Addressed to the host, no deny rule applies (rule 5): non-IP, or an address the kernel
/// would forward to the guest side or an uplink.
pub const HOST_PASS: u32 = 1;
/// Addressed to the host, the longest matching prefix is an allow hole.
pub const ALLOW: u32 = 2;
/// IPv4 destination in a deny prefix (rule 2).
pub const DENY_IPV4: u32 = 3;
/// IPv6 destination in a deny prefix (rule 2).
pub const DENY_IPV6: u32 = 4;
/// ARP target or sender protocol address in a deny prefix (rule 3).
pub const DENY_ARP: u32 = 5;
/// IPv6 neighbour solicitation for a target in a deny prefix (rule 3).
pub const DENY_NDP: u32 = 6;
/// Addressed to the host but the parser could not finish: fail closed (rule 4).
pub const MALFORMED: u32 = 7;
/// Monitor mode: the `DENY_*`/`MALFORMED` verdict above, counted but passed.
pub const MONITOR_IPV4: u32 = 8;
pub const MONITOR_IPV6: u32 = 9;
pub const MONITOR_ARP: u32 = 10;
pub const MONITOR_NDP: u32 = 11;
pub const MONITOR_MALFORMED: u32 = 12;
/// The kernel's routing decision (`bpf_fib_lookup`, the bridge as input device) would
/// forward the packet out of a protected interface: any interface but the guest bridge and
/// the uplinks.
pub const DENY_ROUTE: u32 = 13;
/// The kernel would not forward the packet: it is for one of the host's own addresses that
/// is not on the guest side (or for no route at all).
pub const DENY_LOCAL: u32 = 14;
/// A tunnel encapsulation (GRE, IPIP, SIT, UDP to a tunnel port, ...) the host would
/// decapsulate itself.
pub const DENY_TUNNEL: u32 = 15;
/// Source routing: an IPv4 LSRR/SSRR option or an IPv6 routing header with segments left.
pub const DENY_SRCROUTE: u32 = 16;
pub const MONITOR_ROUTE: u32 = 17;
pub const MONITOR_LOCAL: u32 = 18;
pub const MONITOR_TUNNEL: u32 = 19;
pub const MONITOR_SRCROUTE: u32 = 20;
/// Would be denied (a prefix or the route check), but an exception lets it through: an allow
/// rule scoped to the port (or all) that matches the protocol and destination port.
pub const EXCEPTION: u32 = 21;
/// Would be denied, but it is a reply to a flow the protected side started (`GUARD_FLOWS`).
pub const REPLY: u32 = 22;
/// Number of codes in use.
pub const COUNT: u32 = 23;

/// Distance from a drop reason of the first block (`DENY_IPV4..=MALFORMED`) to its twin.
const MONITOR_OFFSET_1: u32 = MONITOR_IPV4 - DENY_IPV4;
/// Distance from a drop reason of the second block (`DENY_ROUTE..=DENY_SRCROUTE`) to its twin.
const MONITOR_OFFSET_2: u32 = MONITOR_ROUTE - DENY_ROUTE;

const _: () = assert!(MONITOR_MALFORMED == MALFORMED + MONITOR_OFFSET_1);
const _: () = assert!(MONITOR_SRCROUTE == DENY_SRCROUTE + MONITOR_OFFSET_2);
const _: () = assert!(COUNT == REPLY + 1);

/// Is `reason` one whose verdict is a drop (in enforce mode)?
#[inline(always)]
#[must_use]
pub const fn is_drop(reason: u32) -> bool {
    (reason >= DENY_IPV4 && reason <= MALFORMED)
        || (reason >= DENY_ROUTE && reason <= DENY_SRCROUTE)
}

/// Is `reason` a monitor-mode twin of a drop reason?
#[must_use]
pub const fn is_monitor(reason: u32) -> bool {
    (reason >= MONITOR_IPV4 && reason <= MONITOR_MALFORMED)
        || (reason >= MONITOR_ROUTE && reason <= MONITOR_SRCROUTE)
}

/// The monitor-mode twin of a drop reason (callers check [`is_drop`] first).
#[inline(always)]
#[must_use]
pub const fn monitor_of(drop_reason: u32) -> u32 {
    if drop_reason < DENY_ROUTE {
        drop_reason.wrapping_add(MONITOR_OFFSET_1)
    } else {
        drop_reason.wrapping_add(MONITOR_OFFSET_2)
    }
}

/// Short stable names, used in `guardctl stats`, JSON and metrics labels.
#[must_use]
pub const fn name(reason: u32) -> &'static str {
    match reason {
        NOT_HOST => "not_host",
        HOST_PASS => "host_pass",
        ALLOW => "allow",
        DENY_IPV4 => "deny_ipv4",
        DENY_IPV6 => "deny_ipv6",
        DENY_ARP => "deny_arp",
        DENY_NDP => "deny_ndp",
        MALFORMED => "malformed",
        MONITOR_IPV4 => "monitor_ipv4",
        MONITOR_IPV6 => "monitor_ipv6",
        MONITOR_ARP => "monitor_arp",
        MONITOR_NDP => "monitor_ndp",
        MONITOR_MALFORMED => "monitor_malformed",
        DENY_ROUTE => "deny_route",
        DENY_LOCAL => "deny_local",
        DENY_TUNNEL => "deny_tunnel",
        DENY_SRCROUTE => "deny_srcroute",
        MONITOR_ROUTE => "monitor_route",
        MONITOR_LOCAL => "monitor_local",
        MONITOR_TUNNEL => "monitor_tunnel",
        MONITOR_SRCROUTE => "monitor_srcroute",
        EXCEPTION => "exception",
        REPLY => "reply",
        _ => "unknown",
    }
}

/// The code for a name given by [`name`].
#[must_use]
pub fn from_name(s: &str) -> Option<u32> {
    (0..COUNT).find(|r| name(*r) == s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_drop_reason_has_one_distinct_monitor_twin() {
        let mut drops = 0;
        for r in 0..COUNT {
            assert_eq!(from_name(name(r)), Some(r));
            assert_ne!(name(r), "unknown");
            if is_drop(r) {
                drops += 1;
                let twin = monitor_of(r);
                assert!(is_monitor(twin) && !is_drop(twin), "{r} -> {twin}");
            }
        }
        assert_eq!(drops, 9);
        assert_eq!((0..COUNT).filter(|r| is_monitor(*r)).count(), drops);
        assert_eq!(monitor_of(DENY_IPV4), MONITOR_IPV4);
        assert_eq!(monitor_of(DENY_ROUTE), MONITOR_ROUTE);
    }
}
