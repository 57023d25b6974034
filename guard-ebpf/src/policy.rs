//! Prefix lookups (longest prefix wins, allow holes inside deny ranges), the global
//! configuration, and the verdict of steps 8-9 of docs/datapath.md for a host-bound IP packet
//! that no deny prefix dropped.

use core::ptr::{read_volatile, write_volatile};

use aya_ebpf::maps::lpm_trie::Key;
use guard_common::{
    GLOBAL_FLAG_ALLOW_TUNNELS, GLOBAL_FLAG_NO_ROUTE_CHECK, RuleValue, TUNNEL_PROTOCOLS,
    VERDICT_CACHE_SLOTS, VerdictCacheEntry, reason,
};

use crate::{
    Outcome,
    frame::Frame,
    maps::{CONFIG, RULES_V4, RULES_V6, TUNNEL_PORTS, VERDICT_CACHE},
    route::Route,
};

/// The longest matching prefix rule of an address. A plain struct, not an enum with a
/// payload: LLVM leaves an absent payload undefined, and the verifier rejects a program that
/// spills an undefined register.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    kind: u32,
    /// The deny entry's rule id (0 unless `kind` is deny).
    id: u32,
}

const RULE_NONE: u32 = 0;
const RULE_ALLOW: u32 = 1;
const RULE_DENY: u32 = 2;

impl Rule {
    pub const NONE: Self = Self {
        kind: RULE_NONE,
        id: 0,
    };

    #[inline(always)]
    fn of(value: Option<&RuleValue>) -> Self {
        match value {
            None => Self::NONE,
            Some(r) if r.is_allow() => Self {
                kind: RULE_ALLOW,
                id: 0,
            },
            // Any action other than allow denies (fail closed on unknown values).
            Some(r) => Self {
                kind: RULE_DENY,
                id: r.rule_id,
            },
        }
    }

    #[inline(always)]
    pub fn is_none(self) -> bool {
        self.kind == RULE_NONE
    }

    #[inline(always)]
    pub fn is_allow(self) -> bool {
        self.kind == RULE_ALLOW
    }

    /// The rule id of a deny entry, if it is one.
    #[inline(always)]
    pub fn deny(self) -> Option<u32> {
        (self.kind == RULE_DENY).then_some(self.id)
    }

    /// The verdict of a rule alone: `deny_reason` for a deny entry, else a pass.
    #[inline(always)]
    pub fn outcome(self, deny_reason: u32) -> Outcome {
        match self.kind {
            RULE_NONE => Outcome::new(reason::HOST_PASS, 0),
            RULE_ALLOW => Outcome::new(reason::ALLOW, 0),
            _ => Outcome::new(deny_reason, self.id),
        }
    }
}

/// The longest prefix rule of an IPv4 address (network order).
#[inline(always)]
pub fn v4(addr: [u8; 4], cfg: Config) -> Rule {
    let a = u32::from_ne_bytes(addr);
    cached([a, 0, 0, 0], a, cfg.generation << 2 | 1, || {
        Rule::of(RULES_V4.get(Key::new(32, addr)))
    })
}

/// The longest prefix rule of an IPv6 address.
#[inline(always)]
pub fn v6(addr: [u8; 16], cfg: Config) -> Rule {
    let w = |i: usize| u32::from_ne_bytes([addr[i], addr[i + 1], addr[i + 2], addr[i + 3]]);
    let words = [w(0), w(4), w(8), w(12)];
    let mix = words[0] ^ words[1].rotate_left(8) ^ words[2].rotate_left(16) ^ words[3];
    cached(words, mix, cfg.generation << 2 | 3, || {
        Rule::of(RULES_V6.get(Key::new(128, addr)))
    })
}

/// The trie's answer for `addr` from this CPU's verdict cache, or from `lookup` (then kept).
/// A slot holds one address; it counts only under its tag (the configuration's generation,
/// which userspace bumps after every trie write, and the family), so a changed policy is never
/// answered from the cache. Only trie answers are kept: the route check asks the kernel every
/// time (the FIB changes without guard).
///
/// The sequence count makes the slot safe against a program run that nests on this CPU: a
/// reader that sees it odd (a write under way) or changed (a write in between) asks the trie;
/// a writer that sees it odd leaves the slot alone.
#[inline(always)]
fn cached(addr: [u32; 4], mix: u32, tag: u32, lookup: impl FnOnce() -> Rule) -> Rule {
    let slot = mix.wrapping_mul(0x9e37_79b1) >> (32 - VERDICT_CACHE_SLOTS.trailing_zeros());
    let Some(e) = VERDICT_CACHE.get_ptr_mut(slot) else {
        return lookup();
    };
    // SAFETY: `e` is this CPU's live slot; volatile accesses keep the order the sequence count
    // needs against a run that nests on this CPU (no other CPU touches it).
    unsafe {
        let seq = read_volatile(&raw const (*e).seq);
        if seq & 1 == 0
            && read_volatile(&raw const (*e).tag) == tag
            && read_volatile(&raw const (*e).addr) == addr
        {
            // Rebuilt from constants, as `Rule::of` makes them: a hit then leaves the verifier
            // the same three states as a trie answer (fewer states to verify after it).
            let hit = match read_volatile(&raw const (*e).kind) {
                RULE_DENY => Rule {
                    kind: RULE_DENY,
                    id: read_volatile(&raw const (*e).rule_id),
                },
                RULE_ALLOW => Rule {
                    kind: RULE_ALLOW,
                    id: 0,
                },
                _ => Rule::NONE,
            };
            if read_volatile(&raw const (*e).seq) == seq {
                return hit;
            }
        }
    }
    let rule = lookup();
    // SAFETY: as above.
    unsafe {
        let seq = read_volatile(&raw const (*e).seq);
        if seq & 1 == 0 {
            write_volatile(&raw mut (*e).seq, seq.wrapping_add(1));
            write_volatile(
                e,
                VerdictCacheEntry {
                    seq: seq.wrapping_add(1),
                    tag,
                    addr,
                    kind: rule.kind,
                    rule_id: rule.id,
                },
            );
            write_volatile(&raw mut (*e).seq, seq.wrapping_add(2));
        }
    }
    rule
}

/// The global configuration a host-bound frame is judged with (read once per frame).
#[derive(Clone, Copy)]
pub struct Config {
    pub flags: u32,
    pub bridge_ifindex: u32,
    /// The policy generation the verdict cache is valid for.
    pub generation: u32,
}

impl Config {
    #[inline(always)]
    pub fn load() -> Self {
        // Index 0 of a one-entry array always exists; all zero is the strictest reading.
        CONFIG.get(0).map_or(
            Self {
                flags: 0,
                bridge_ifindex: 0,
                generation: 0,
            },
            |c| Self {
                flags: c.flags,
                bridge_ifindex: c.bridge_ifindex,
                generation: c.generation,
            },
        )
    }

    #[inline(always)]
    pub fn route_check(self) -> bool {
        self.flags & GLOBAL_FLAG_NO_ROUTE_CHECK == 0
    }

    #[inline(always)]
    pub fn tunnels_allowed(self) -> bool {
        self.flags & GLOBAL_FLAG_ALLOW_TUNNELS != 0
    }
}

const IPPROTO_UDP: u8 = 17;

/// Is the upper layer `proto` at offset `l4` a tunnel encapsulation: one of the tunnel IP
/// protocols, or UDP to a port in the tunnel port set? A UDP header too short to hold its
/// destination port is not (the kernel drops it before any tunnel sees it).
#[inline(always)]
pub fn is_tunnel<F: Frame>(f: &F, proto: u8, l4: usize) -> bool {
    if proto == IPPROTO_UDP {
        let Ok(udp) = f.at::<[u8; 4]>(l4) else {
            return false;
        };
        let port = u16::from_be_bytes([udp[2], udp[3]]);
        return TUNNEL_PORTS.get(0).is_some_and(|set| set.contains(port));
    }
    let mut i = 0;
    while i < TUNNEL_PROTOCOLS.len() {
        if TUNNEL_PROTOCOLS[i] == proto {
            return true;
        }
        i += 1;
    }
    false
}

/// Does the verdict of steps 8-9 need the route of the packet? Only when the route check is
/// on and either no prefix rule decides alone or a tunnel must be placed.
#[inline(always)]
pub fn needs_route(cfg: Config, rule: Rule, tunnel: bool) -> bool {
    cfg.route_check() && (tunnel || rule.is_none())
}

/// Steps 8-9 for a host-bound IP packet whose destination no deny prefix matched: `rule` is
/// the destination's longest prefix rule (`None` or `Allow`), `tunnel` whether it is a tunnel
/// encapsulation (always false when tunnels are allowed), `route` its route when
/// [`needs_route`] said so (else `Route::NONE`).
#[inline(always)]
pub fn judge_ip(cfg: Config, rule: Rule, tunnel: bool, route: Route) -> Outcome {
    if !route.is_none() {
        if tunnel && route.delivered_locally() {
            return Outcome::new(reason::DENY_TUNNEL, 0);
        }
        if rule.is_none() {
            return route.outcome();
        }
    } else if tunnel && !cfg.route_check() {
        return Outcome::new(reason::DENY_TUNNEL, 0);
    }
    if rule.is_allow() {
        Outcome::new(reason::ALLOW, 0)
    } else {
        Outcome::new(reason::HOST_PASS, 0)
    }
}
