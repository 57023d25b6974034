//! The policy: protected (deny) and allowed prefixes with classes, the default protected set,
//! and the order in which a change is applied to the live tries without opening a window.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::IpAddr,
    str::FromStr,
};

use guard_common::{
    ACTION_ALLOW, ACTION_DENY, CLASS_GUEST_NETWORK, CLASS_HOST, CLASS_HOST_NETWORK,
    CLASS_HOST_ROUTE, CLASS_MANAGEMENT, CLASS_STORAGE, CLASS_UNSPECIFIED, CLASS_USER_FIRST,
    MAX_RULES, RuleValue,
};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::{
    discovery::Discovery,
    error::{GuardError, Result},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Deny,
    Allow,
}

impl Action {
    #[must_use]
    pub const fn code(self) -> u16 {
        match self {
            Self::Deny => ACTION_DENY,
            Self::Allow => ACTION_ALLOW,
        }
    }

    /// The kernel's reading of an action code: anything but allow denies.
    #[must_use]
    pub const fn from_code(code: u16) -> Self {
        if code == ACTION_ALLOW {
            Self::Allow
        } else {
            Self::Deny
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Self::Deny => "deny",
            Self::Allow => "allow",
        })
    }
}

/// One prefix of the policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleSpec {
    pub net: IpNet,
    pub action: Action,
    /// `management`, `storage`, `host`, `host-net`, `host-route`, `guest-net`, or a user's
    /// name.
    pub class: String,
    /// Where it came from (an interface for discovered prefixes, "cli", "config", "rules").
    #[serde(default)]
    pub source: String,
}

/// Parses a CIDR (`10.0.0.0/24`, `fd00::/64`) or a bare address (a host route). Host bits are
/// cleared: `10.0.0.1/24` means the network `10.0.0.0/24`.
pub fn parse_net(s: &str) -> Result<IpNet> {
    let s = s.trim();
    let net = if s.contains('/') {
        IpNet::from_str(s).map_err(|e| GuardError::Policy(format!("{s:?} is not a CIDR: {e}")))?
    } else {
        IpAddr::from_str(s)
            .map(IpNet::from)
            .map_err(|e| GuardError::Policy(format!("{s:?} is not an address or CIDR: {e}")))?
    };
    Ok(net.trunc())
}

/// Parses `CIDR[=CLASS]` (the `--protect` syntax); the class defaults to `protected`.
pub fn parse_protect(s: &str, source: &str) -> Result<RuleSpec> {
    let (cidr, class) = match s.split_once('=') {
        Some((c, class)) => (c, class.trim()),
        None => (s, "protected"),
    };
    if class.is_empty()
        || !class
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(GuardError::Policy(format!(
            "class {class:?} in {s:?}: use letters, digits, '-', '_' or '.'"
        )));
    }
    Ok(RuleSpec {
        net: parse_net(cidr)?,
        action: Action::Deny,
        class: class.to_owned(),
        source: source.to_owned(),
    })
}

pub fn parse_allow(s: &str, source: &str) -> Result<RuleSpec> {
    let (cidr, class) = match s.split_once('=') {
        Some((c, class)) => (c, class.trim().to_owned()),
        None => (s, "allowed".to_owned()),
    };
    Ok(RuleSpec {
        net: parse_net(cidr)?,
        action: Action::Allow,
        class,
        source: source.to_owned(),
    })
}

/// Addresses the default sets never name: loopback (127/8, `::1`: harmless, and on `lo`
/// only), the unspecified address, multicast, and IPv6 link-local (the kernel scopes
/// `fe80::/10` to the receiving device, so another interface's is unreachable from the bridge).
/// IPv4 link-local is protected: the kernel routes `169.254/16` like any network (a BMC's
/// Redfish host interface sits there).
fn never_protected_by_default(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => a.is_multicast() || a.is_unspecified() || a.is_loopback(),
        IpAddr::V6(a) => {
            a.is_unicast_link_local() || a.is_multicast() || a.is_unspecified() || a.is_loopback()
        }
    }
}

/// Interfaces whose addresses and routes are the guest side, not the host's: the guest bridge
/// and its ports.
fn guest_side(d: &Discovery) -> BTreeSet<u32> {
    std::iter::once(d.bridge.index)
        .chain(d.ports.iter().map(|p| p.index))
        .collect()
}

/// The default protected set: every network the host reaches through an interface other than
/// the guest bridge, and each of its own addresses as a host route:
/// - every address outside the guest side (loopback's too: an L3-fabric host keeps its
///   management /32 on `lo`), as a host route, and its network: the address's own prefix, or
///   the peer's on a point-to-point address;
/// - every unicast route of the main table out of such an interface that is not a default
///   route (on-link routes from router advertisements, subnets behind a gateway on the
///   management or storage side).
///
/// The route check of the datapath judges the same networks from the live FIB without this
/// snapshot; these prefixes add per-rule hit counters and cover kernels whose route lookup
/// cannot see an egress interface without a neighbour entry (docs/datapath.md).
#[must_use]
pub fn default_protected(d: &Discovery) -> Vec<RuleSpec> {
    let guest = guest_side(d);
    let name_of = |ifindex: u32| {
        d.iface(ifindex)
            .map_or_else(|| ifindex.to_string(), |i| i.name.clone())
    };
    let mut out: BTreeMap<IpNet, RuleSpec> = BTreeMap::new();
    let mut add = |net: IpNet, class: &str, source: &str| {
        out.entry(net).or_insert_with(|| RuleSpec {
            net,
            action: Action::Deny,
            class: class.to_owned(),
            source: source.to_owned(),
        });
    };
    for a in &d.addrs {
        if guest.contains(&a.ifindex) || never_protected_by_default(a.addr) {
            continue;
        }
        add(IpNet::from(a.addr), "host", &a.ifname);
        if let Some(net) = a.network()
            && !never_protected_by_default(net.addr())
        {
            add(net, "host-net", &a.ifname);
        }
    }
    for r in &d.routes {
        let Some(oif) = r.oif else { continue };
        if guest.contains(&oif)
            || r.dst.prefix_len() == 0
            || never_protected_by_default(r.dst.addr())
        {
            continue;
        }
        add(r.dst, "host-route", &name_of(oif));
    }
    out.into_values().collect()
}

/// The guest bridge's own networks (the prefixes of its addresses), allowed by default:
/// guests reach the bridge's address (DNS, DHCP, the host as their router) and each other
/// through the host, which the route check would otherwise judge as local delivery.
#[must_use]
pub fn guest_networks(d: &Discovery) -> Vec<RuleSpec> {
    let mut out: BTreeMap<IpNet, RuleSpec> = BTreeMap::new();
    for a in d.addrs.iter().filter(|a| a.ifindex == d.bridge.index) {
        if never_protected_by_default(a.addr) {
            continue;
        }
        if let Some(net) = a.network() {
            out.entry(net).or_insert_with(|| RuleSpec {
                net,
                action: Action::Allow,
                class: "guest-net".to_owned(),
                source: a.ifname.clone(),
            });
        }
    }
    out.into_values().collect()
}

/// A validated policy: at most one rule per prefix.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub rules: Vec<RuleSpec>,
}

impl Policy {
    /// Builds the policy from the options: the protected prefixes (the default protected set
    /// from `discovery` when none are given), the allowed ones, and the live additions and
    /// removals.
    pub fn build(options: &crate::state::Options, discovery: &Discovery) -> Result<Self> {
        let protect = if options.protect.is_empty() {
            default_protected(discovery)
        } else {
            options.protect.clone()
        };
        // The guest networks' allows give way to any rule for the same prefix (a protect of
        // the bridge's own network is an operator's choice, and fails closed).
        let named: BTreeSet<IpNet> = protect
            .iter()
            .chain(&options.allow)
            .chain(&options.added)
            .map(|r| r.net)
            .chain(options.removed.iter().copied())
            .collect();
        let guest: Vec<RuleSpec> = guest_networks(discovery)
            .into_iter()
            .filter(|r| !named.contains(&r.net))
            .collect();
        // Rules added live replace a base rule for the same prefix; removed prefixes go.
        let added: BTreeSet<IpNet> = options.added.iter().map(|r| r.net).collect();
        let base = protect
            .into_iter()
            .chain(options.allow.iter().cloned())
            .chain(guest)
            .filter(|r| !added.contains(&r.net));
        let mut policy = Self::from_rules(base.chain(options.added.iter().cloned()))?;
        policy.rules.retain(|r| !options.removed.contains(&r.net));
        Ok(policy)
    }

    /// Checks for contradictions: one prefix both denied and allowed, or given twice with
    /// different classes.
    pub fn from_rules(rules: impl IntoIterator<Item = RuleSpec>) -> Result<Self> {
        let mut by_net: BTreeMap<IpNet, RuleSpec> = BTreeMap::new();
        for r in rules {
            if let Some(prev) = by_net.get(&r.net) {
                if prev.action != r.action {
                    return Err(GuardError::Policy(format!(
                        "{} is both protected and allowed",
                        r.net
                    )));
                }
                if prev.class != r.class {
                    return Err(GuardError::Policy(format!(
                        "{} is given twice, as class {:?} and {:?}",
                        r.net, prev.class, r.class
                    )));
                }
                continue;
            }
            by_net.insert(r.net, r);
        }
        Ok(Self {
            rules: by_net.into_values().collect(),
        })
    }

    #[must_use]
    pub fn get(&self, net: &IpNet) -> Option<&RuleSpec> {
        self.rules.iter().find(|r| &r.net == net)
    }
}

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
pub fn plan(
    current: &BTreeMap<IpNet, RuleValue>,
    desired: &Policy,
    classes: &mut Classes,
) -> Result<Vec<Op>> {
    let mut used: BTreeSet<u32> = current.values().map(|v| v.rule_id).collect();
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
    use super::*;
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
    fn parsing_and_contradictions() {
        assert_eq!(
            parse_net("10.0.0.1/24").expect("ok").to_string(),
            "10.0.0.0/24"
        );
        assert_eq!(parse_net("fd00::1").expect("ok").to_string(), "fd00::1/128");
        assert!(parse_net("10.0.0.0/33").is_err());
        assert!(parse_net("nonsense").is_err());
        assert!(parse_protect("10.0.0.0/8=bad class", "t").is_err());
        let r = parse_protect("10.20.0.0/24=storage", "t").expect("ok");
        assert_eq!(r.class, "storage");
        let both = Policy::from_rules([
            parse_protect("10.0.0.0/8", "t").expect("ok"),
            parse_allow("10.0.0.0/8", "t").expect("ok"),
        ]);
        assert!(both.is_err());
    }
}
