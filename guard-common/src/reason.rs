//! Reason codes: why a frame got its verdict. Every verdict bumps exactly one (port, reason)
//! counter slot.
//!
//! Append-only: a code, once released, keeps its number and meaning forever (counters pinned
//! by an older guardctl are read by a newer one). Add new codes at the end, below [`COUNT`].

/// Not addressed to the host: bridged to another guest or the real router (rule 1).
pub const NOT_HOST: u32 = 0;
/// Addressed to the host, no deny rule applies (rule 5): non-IP, or an unprotected address.
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
/// `MONITOR_x == x + MONITOR_OFFSET`.
pub const MONITOR_IPV4: u32 = 8;
pub const MONITOR_IPV6: u32 = 9;
pub const MONITOR_ARP: u32 = 10;
pub const MONITOR_NDP: u32 = 11;
pub const MONITOR_MALFORMED: u32 = 12;
/// Number of codes in use.
pub const COUNT: u32 = 13;

/// Distance from a drop reason to its monitor-mode twin.
pub const MONITOR_OFFSET: u32 = MONITOR_IPV4 - DENY_IPV4;

const _: () = assert!(MONITOR_IPV6 == DENY_IPV6 + MONITOR_OFFSET);
const _: () = assert!(MONITOR_ARP == DENY_ARP + MONITOR_OFFSET);
const _: () = assert!(MONITOR_NDP == DENY_NDP + MONITOR_OFFSET);
const _: () = assert!(MONITOR_MALFORMED == MALFORMED + MONITOR_OFFSET);

/// Is `reason` one whose verdict is a drop (in enforce mode)?
#[must_use]
pub const fn is_drop(reason: u32) -> bool {
    reason >= DENY_IPV4 && reason <= MALFORMED
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
        _ => "unknown",
    }
}

/// The code for a name given by [`name`].
#[must_use]
pub fn from_name(s: &str) -> Option<u32> {
    (0..COUNT).find(|r| name(*r) == s)
}
