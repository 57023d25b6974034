//! Class ids, and the order in which a policy change is written to the live tries.

use std::collections::{BTreeMap, BTreeSet};

use guard_common::{
    CLASS_GUEST_NETWORK, CLASS_HOST, CLASS_HOST_NETWORK, CLASS_HOST_ROUTE, CLASS_MANAGEMENT,
    CLASS_STORAGE, CLASS_UNSPECIFIED, CLASS_USER_FIRST, MAX_RULES, RuleValue,
};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::Policy;
use crate::{
    error::{GuardError, Result},
    rule::Action,
};

/// Class names and their ids in the tries. Built-in names have fixed ids; user names get ids
/// from `CLASS_USER_FIRST` up, remembered in the bridge's state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Classes {
    pub user: BTreeMap<String, u16>,
}

impl Classes {
    pub fn id(&mut self, name: &str) -> u16 {
        match name {
            "management" => CLASS_MANAGEMENT,
            "storage" => CLASS_STORAGE,
            "host" => CLASS_HOST,
            "host-net" => CLASS_HOST_NETWORK,
            "host-route" => CLASS_HOST_ROUTE,
            "guest-net" => CLASS_GUEST_NETWORK,
            "" => CLASS_UNSPECIFIED,
            _ => {
                if let Some(id) = self.user.get(name) {
                    return *id;
                }
                let id = self
                    .user
                    .values()
                    .max()
                    .map_or(CLASS_USER_FIRST, |m| m.saturating_add(1));
                self.user.insert(name.to_owned(), id);
                id
            }
        }
    }

    #[must_use]
    pub fn name(&self, id: u16) -> String {
        match id {
            CLASS_MANAGEMENT => "management".to_owned(),
            CLASS_STORAGE => "storage".to_owned(),
            CLASS_HOST => "host".to_owned(),
            CLASS_HOST_NETWORK => "host-net".to_owned(),
            CLASS_HOST_ROUTE => "host-route".to_owned(),
            CLASS_GUEST_NETWORK => "guest-net".to_owned(),
            CLASS_UNSPECIFIED => String::new(),
            _ => self
                .user
                .iter()
                .find(|(_, v)| **v == id)
                .map_or_else(|| format!("class-{id}"), |(k, _)| k.clone()),
        }
    }
}

/// One step of a policy change on the live tries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Upsert(IpNet, RuleValue),
    Delete(IpNet),
}

/// The steps that turn the live entries `current` into `desired`, ordered so that no
/// intermediate state lets through a frame that both the old and the new policy drop:
///
/// 1. insert or update every entry whose new action is deny;
/// 2. insert or update every entry whose new action is allow;
/// 3. delete the old allow entries that go away;
/// 4. delete the old deny entries that go away.
///
/// (Adding a deny only narrows; an allow added in step 2 is the longest match only for
/// addresses the new policy allows, because every longer new deny is already in; deleting an
/// allow only narrows; deleting a deny after all old allows are gone leaves each address with
/// a longest match that is a new entry or another old deny.) `policy::tests` checks this on
/// random policies against a model of longest-prefix match.
///
/// Rule ids are kept for prefixes that stay (their hit counters keep counting) and new ones
/// take the lowest free ids.
///
/// ```
/// use std::collections::BTreeMap;
/// use guard::policy::{Classes, Op, Policy, parse_allow, parse_protect, plan};
///
/// let mut classes = Classes::default();
/// let old = Policy::from_rules([parse_allow("10.1.0.0/16", "cli")?])?;
/// let mut live = BTreeMap::new();
/// for op in plan(&live, &old, &mut classes)? {
///     if let Op::Upsert(net, value) = op {
///         live.insert(net, value);
///     }
/// }
/// // Swap the allow for a protected /8: the deny goes in before the allow comes out, so no
/// // address the old and the new policy both drop passes in between.
/// let new = Policy::from_rules([parse_protect("10.0.0.0/8=storage", "cli")?])?;
/// let ops = plan(&live, &new, &mut classes)?;
/// assert!(matches!(ops[..], [Op::Upsert(..), Op::Delete(..)]));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn plan(
    current: &BTreeMap<IpNet, RuleValue>,
    desired: &Policy,
    classes: &mut Classes,
) -> Result<Vec<Op>> {
    plan_reserving(current, desired, classes, &BTreeSet::new())
}

/// [`plan`], with new rule ids also avoiding `reserved`: the ids of the exceptions, which
/// share the hit counters (`GUARD_RULE_HITS`) and so the id space with the prefix rules.
pub fn plan_reserving(
    current: &BTreeMap<IpNet, RuleValue>,
    desired: &Policy,
    classes: &mut Classes,
    reserved: &BTreeSet<u32>,
) -> Result<Vec<Op>> {
    let mut used: BTreeSet<u32> = current.values().map(|v| v.rule_id).collect();
    used.extend(reserved);
    let mut next_free = 1u32;
    let mut alloc = |used: &mut BTreeSet<u32>| -> Result<u32> {
        while used.contains(&next_free) {
            next_free += 1;
        }
        if next_free >= MAX_RULES {
            return Err(GuardError::Policy(format!(
                "more than {} rules",
                MAX_RULES - 1
            )));
        }
        used.insert(next_free);
        Ok(next_free)
    };
    let mut deny_ups = Vec::new();
    let mut allow_ups = Vec::new();
    for r in &desired.rules {
        let class = classes.id(&r.class);
        let value = match current.get(&r.net) {
            Some(old) => RuleValue {
                rule_id: old.rule_id,
                action: r.action.code(),
                class,
            },
            None => RuleValue {
                rule_id: alloc(&mut used)?,
                action: r.action.code(),
                class,
            },
        };
        if current.get(&r.net) == Some(&value) {
            continue;
        }
        match r.action {
            Action::Deny => deny_ups.push(Op::Upsert(r.net, value)),
            Action::Allow => allow_ups.push(Op::Upsert(r.net, value)),
        }
    }
    let wanted: BTreeSet<IpNet> = desired.rules.iter().map(|r| r.net).collect();
    let (mut allow_dels, mut deny_dels) = (Vec::new(), Vec::new());
    for (net, v) in current {
        if wanted.contains(net) {
            continue;
        }
        if v.is_allow() {
            allow_dels.push(Op::Delete(*net));
        } else {
            deny_dels.push(Op::Delete(*net));
        }
    }
    Ok(deny_ups
        .into_iter()
        .chain(allow_ups)
        .chain(allow_dels)
        .chain(deny_dels)
        .collect())
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::rule::{RuleSpec, parse_allow, parse_net, parse_protect};
    use rand::{Rng as _, SeedableRng as _, rngs::SmallRng};

    fn lpm(entries: &BTreeMap<IpNet, RuleValue>, addr: IpAddr) -> bool {
        // true = allowed (pass), false = denied.
        entries
            .iter()
            .filter(|(n, _)| n.contains(&addr))
            .max_by_key(|(n, _)| n.prefix_len())
            .is_none_or(|(_, v)| v.is_allow())
    }

    fn random_policy(rng: &mut SmallRng) -> Policy {
        let mut rules = Vec::new();
        for _ in 0..rng.random_range(0..8) {
            let len = [8u8, 16, 24, 28, 32][rng.random_range(0..5)];
            let addr = IpAddr::from([
                10,
                rng.random_range(0..2),
                rng.random_range(0..2),
                rng.random_range(0..4),
            ]);
            let net = IpNet::new(addr, len).expect("valid").trunc();
            let action = if rng.random_bool(0.5) {
                Action::Deny
            } else {
                Action::Allow
            };
            rules.push(RuleSpec {
                net,
                action,
                class: "c".into(),
                source: String::new(),
            });
        }
        let mut by: BTreeMap<IpNet, RuleSpec> = BTreeMap::new();
        for r in rules {
            by.insert(r.net, r);
        }
        Policy {
            rules: by.into_values().collect(),
        }
    }

    fn apply(state: &mut BTreeMap<IpNet, RuleValue>, op: &Op) {
        match op {
            Op::Upsert(n, v) => {
                state.insert(*n, *v);
            }
            Op::Delete(n) => {
                state.remove(n);
            }
        }
    }

    #[test]
    fn no_intermediate_state_opens_a_window() {
        let mut rng = SmallRng::seed_from_u64(7);
        let probes: Vec<IpAddr> = (0..2u8)
            .flat_map(|b| {
                (0..2u8).flat_map(move |c| (0..6u8).map(move |d| IpAddr::from([10, b, c, d])))
            })
            .collect();
        for _ in 0..3000 {
            let (p, q) = (random_policy(&mut rng), random_policy(&mut rng));
            let mut classes = Classes::default();
            let mut state = BTreeMap::new();
            for op in plan(&BTreeMap::new(), &p, &mut classes).expect("plan") {
                apply(&mut state, &op);
            }
            let old = state.clone();
            let ops = plan(&old, &q, &mut classes).expect("plan");
            let mut target = BTreeMap::new();
            for op in plan(&BTreeMap::new(), &q, &mut Classes::default()).expect("plan") {
                apply(&mut target, &op);
            }
            for op in &ops {
                apply(&mut state, op);
                for a in &probes {
                    let (now, before, after) = (lpm(&state, *a), lpm(&old, *a), lpm(&target, *a));
                    assert!(
                        !now || before || after,
                        "{a} passes mid-change but both policies drop it: {p:?} -> {q:?}, at {op:?}"
                    );
                }
            }
            // The end state has exactly the new prefixes and actions.
            let got: BTreeMap<IpNet, u16> = state.iter().map(|(n, v)| (*n, v.action)).collect();
            let want: BTreeMap<IpNet, u16> =
                q.rules.iter().map(|r| (r.net, r.action.code())).collect();
            assert_eq!(got, want);
        }
    }

    #[test]
    fn rule_ids_survive_a_change() {
        let mut classes = Classes::default();
        let p = Policy::from_rules([parse_protect("10.0.0.0/8=storage", "t").expect("ok")])
            .expect("ok");
        let mut state = BTreeMap::new();
        for op in plan(&state.clone(), &p, &mut classes).expect("plan") {
            apply(&mut state, &op);
        }
        let id = state.values().next().expect("one").rule_id;
        let q = Policy::from_rules([
            parse_protect("10.0.0.0/8=storage", "t").expect("ok"),
            parse_allow("10.1.0.0/16", "t").expect("ok"),
        ])
        .expect("ok");
        let ops = plan(&state, &q, &mut classes).expect("plan");
        assert_eq!(ops.len(), 1, "only the new allow is written: {ops:?}");
        for op in &ops {
            apply(&mut state, op);
        }
        assert_eq!(state[&parse_net("10.0.0.0/8").expect("ok")].rule_id, id);
    }

    #[test]
    fn new_prefix_ids_skip_the_exceptions_ids() {
        let p = Policy::from_rules([
            parse_protect("10.0.0.0/8=storage", "t").expect("ok"),
            parse_allow("10.1.0.0/16", "t").expect("ok"),
        ])
        .expect("ok");
        let ops = plan_reserving(
            &BTreeMap::new(),
            &p,
            &mut Classes::default(),
            &[1, 2].into(),
        )
        .expect("plan");
        let ids: BTreeSet<u32> = ops
            .iter()
            .filter_map(|op| match op {
                Op::Upsert(_, v) => Some(v.rule_id),
                Op::Delete(_) => None,
            })
            .collect();
        assert_eq!(ids, [3, 4].into());
    }
}
