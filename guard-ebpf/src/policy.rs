//! Prefix lookups: longest prefix wins, allow holes inside deny ranges.

use aya_ebpf::maps::lpm_trie::Key;
use guard_common::{RuleValue, reason};

use crate::{
    Outcome,
    maps::{RULES_V4, RULES_V6},
};

#[inline(always)]
fn judge(rule: Option<&RuleValue>, deny_reason: u32) -> Outcome {
    match rule {
        None => Outcome::new(reason::HOST_PASS, 0),
        Some(r) if r.is_allow() => Outcome::new(reason::ALLOW, 0),
        // Any action other than allow denies (fail closed on unknown values).
        Some(r) => Outcome::new(deny_reason, r.rule_id),
    }
}

/// The verdict for an IPv4 address: `deny_reason` with the rule id if a deny prefix is the
/// longest match, `ALLOW` if an allow prefix is, else `HOST_PASS`.
#[inline(always)]
pub fn judge_v4(addr: [u8; 4], deny_reason: u32) -> Outcome {
    judge(RULES_V4.get(Key::new(32, addr)), deny_reason)
}

#[inline(always)]
pub fn judge_v6(addr: [u8; 16], deny_reason: u32) -> Outcome {
    judge(RULES_V6.get(Key::new(128, addr)), deny_reason)
}
