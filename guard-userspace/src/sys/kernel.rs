//! What the running kernel supports, where a feature test would be unsafe or impossible.

use std::fs;

/// Does this kernel take `BPF_FIB_LOOKUP_SKIP_NEIGH` (Linux 6.3, which also made the route
/// lookup report the egress interface of a next hop without a neighbour entry)? An unknown
/// flag fails every lookup with `EINVAL` (and guard then drops every routed frame), so
/// anything that cannot be read says no.
#[must_use]
pub fn fib_skips_neigh() -> bool {
    let Ok(release) = fs::read_to_string("/proc/sys/kernel/osrelease") else {
        return false;
    };
    let mut parts = release.trim().split(['.', '-']);
    let mut next = || parts.next().and_then(|p| p.parse::<u32>().ok());
    matches!((next(), next()), (Some(major), Some(minor)) if (major, minor) >= (6, 3))
}
