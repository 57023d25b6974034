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
    state::{Edits, Options},
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

/// A prefix or class that does not parse. Argument validation: `guardctl` reports these as
/// usage errors (exit 64).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    #[error("{input:?} is not an address or CIDR")]
    NotAnAddress { input: String },
    #[error("{input:?} is not a CIDR: {addr:?} is not an IPv4 or IPv6 address")]
    BadAddress { input: String, addr: String },
    #[error("{input:?} is not a CIDR: prefix length {len:?} is not a number")]
    BadLength { input: String, len: String },
    #[error(
        "{input:?} is not a CIDR: the prefix length /{len} is too long for {family} (at most /{max})"
    )]
    TooLong {
        input: String,
        len: u32,
        family: &'static str,
        max: u8,
    },
    #[error("class {class:?} in {input:?}: use letters, digits, '-', '_' or '.'")]
    BadClass { input: String, class: String },
}

/// Parses a CIDR (`10.0.0.0/24`, `fd00::/64`) or a bare address (a host route). Host bits are
/// cleared: `10.0.0.1/24` means the network `10.0.0.0/24`.
pub fn parse_net(s: &str) -> Result<IpNet, PrefixError> {
    let input = s.trim();
    let Some((addr, len)) = input.split_once('/') else {
        return IpAddr::from_str(input)
            .map(IpNet::from)
            .map_err(|_| PrefixError::NotAnAddress {
                input: input.to_owned(),
            });
    };
    let ip = IpAddr::from_str(addr).map_err(|_| PrefixError::BadAddress {
        input: input.to_owned(),
        addr: addr.to_owned(),
    })?;
    let len: u32 = len.parse().map_err(|_| PrefixError::BadLength {
        input: input.to_owned(),
        len: len.to_owned(),
    })?;
    let (family, max) = if ip.is_ipv4() {
        ("IPv4", 32)
    } else {
        ("IPv6", 128)
    };
    let too_long = || PrefixError::TooLong {
        input: input.to_owned(),
        len,
        family,
        max,
    };
    let len = u8::try_from(len).map_err(|_| too_long())?;
    IpNet::new(ip, len)
        .map(|n| n.trunc())
        .map_err(|_| too_long())
}

/// `CIDR[=CLASS]` as given on the command line: the class is `None` when not given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleArg {
    pub net: IpNet,
    pub class: Option<String>,
}

impl FromStr for RuleArg {
    type Err = PrefixError;

    fn from_str(s: &str) -> Result<Self, PrefixError> {
        let (cidr, class) = match s.split_once('=') {
            Some((c, class)) => (c, Some(class.trim())),
            None => (s, None),
        };
        if let Some(class) = class
            && (class.is_empty()
                || !class
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)))
        {
            return Err(PrefixError::BadClass {
                input: s.to_owned(),
                class: class.to_owned(),
            });
        }
        Ok(Self {
            net: parse_net(cidr)?,
            class: class.map(str::to_owned),
        })
    }
}

impl RuleArg {
    /// The rule, with the default class of its action when none was given.
    #[must_use]
    pub fn rule(&self, action: Action, source: &str) -> RuleSpec {
        RuleSpec {
            net: self.net,
            action,
            class: self
                .class
                .clone()
                .unwrap_or_else(|| default_class(action).to_owned()),
            source: source.to_owned(),
        }
    }
}

/// The class of a rule given without one.
#[must_use]
pub const fn default_class(action: Action) -> &'static str {
    match action {
        Action::Deny => "protected",
        Action::Allow => "allowed",
    }
}

/// Parses `CIDR[=CLASS]` (the `--protect` syntax); the class defaults to `protected`.
pub fn parse_protect(s: &str, source: &str) -> Result<RuleSpec, PrefixError> {
    Ok(RuleArg::from_str(s)?.rule(Action::Deny, source))
}

/// Parses `CIDR[=CLASS]` (the `--allow` syntax); the class defaults to `allowed`.
pub fn parse_allow(s: &str, source: &str) -> Result<RuleSpec, PrefixError> {
    Ok(RuleArg::from_str(s)?.rule(Action::Allow, source))
}

/// Where a rule came from, for messages: `source` is an interface name for discovered rules.
#[must_use]
pub fn origin(source: &str) -> String {
    match source {
        "cli" => "given to attach".to_owned(),
        "config" => "from the configuration file".to_owned(),
        "rules" => "added with `rules add`".to_owned(),
        "" => "of unknown origin".to_owned(),
        iface => format!("discovered on {iface}"),
    }
}

impl fmt::Display for RuleSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.action {
            Action::Deny => "protected",
            Action::Allow => "allowed",
        };
        write!(
            f,
            "{} ({what}, class {}, {})",
            self.net,
            self.class,
            origin(&self.source)
        )
    }
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
    /// Builds the desired policy: the discovered set (when the options use it, less the
    /// excluded prefixes), overridden by the configured prefixes, then the live edits: removed
    /// prefixes go, added rules replace any other rule for their prefix.
    ///
    /// A configured rule whose action contradicts a discovered rule for the same prefix is an
    /// error, like two contradicting configured rules: `exclude` takes a prefix out of the
    /// discovered set on purpose. The guest bridge's own networks are allowed where no other
    /// rule names the prefix (a protect of the bridge's own network is an operator's choice,
    /// and fails closed).
    pub fn build(options: &Options, edits: &Edits, discovery: &Discovery) -> Result<Self> {
        let explicit = Self::from_rules(options.protect.iter().chain(&options.allow).cloned())?;
        let mut by_net: BTreeMap<IpNet, RuleSpec> = BTreeMap::new();
        if options.discovers() {
            for r in default_protected(discovery) {
                if !options.exclude.contains(&r.net) {
                    by_net.insert(r.net, r);
                }
            }
        }
        for r in explicit.rules {
            if let Some(d) = by_net.get(&r.net)
                && d.action != r.action
            {
                return Err(GuardError::Policy(format!(
                    "{} is both protected and allowed: {d} and {r}; exclude it from the \
                     discovered set (--exclude, `exclude = [...]`) to allow it",
                    r.net
                )));
            }
            by_net.insert(r.net, r);
        }
        for r in guest_networks(discovery) {
            if !options.exclude.contains(&r.net) {
                by_net.entry(r.net).or_insert(r);
            }
        }
        for n in &edits.removed {
            by_net.remove(n);
        }
        for r in &edits.added {
            by_net.insert(r.net, r.clone());
        }
        Ok(Self {
            rules: by_net.into_values().collect(),
        })
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

/// `guardctl rules add`: adds `new` (with their actions) to the live edits. `in_force` is the
/// policy in force before the change.
///
/// A rule whose action contradicts the rule in force for the same prefix (discovered,
/// configured or added earlier) is refused unless `replace`. A rule given without a class for
/// a prefix already in force with the same action keeps that rule's class and source.
/// Nothing is changed when any rule is refused. Returns the rules added.
pub fn add_rules(
    edits: &mut Edits,
    in_force: &Policy,
    new: &[(RuleArg, Action)],
    replace: bool,
) -> Result<Vec<RuleSpec>> {
    // Contradictions within the request itself.
    Policy::from_rules(new.iter().map(|(a, action)| a.rule(*action, "rules")))?;
    let mut rules = Vec::new();
    for (arg, action) in new {
        let rule = match in_force.get(&arg.net) {
            Some(e) if e.action != *action && !replace => {
                return Err(GuardError::Contradiction {
                    new: arg.rule(*action, "rules").to_string(),
                    existing: e.to_string(),
                });
            }
            Some(e) if e.action == *action && arg.class.is_none() => e.clone(),
            _ => arg.rule(*action, "rules"),
        };
        rules.push(rule);
    }
    for r in &rules {
        edits.removed.retain(|n| *n != r.net);
        edits.added.retain(|x| x.net != r.net);
        edits.added.push(r.clone());
    }
    Ok(rules)
}

/// `guardctl rules del`: takes `nets` out of the policy (also from the configured and the
/// discovered set) until `rules reset` or `rules add`. Each must be in force; nothing is
/// changed when one is not.
pub fn del_rules(edits: &mut Edits, in_force: &Policy, nets: &[IpNet]) -> Result<()> {
    if let Some(n) = nets.iter().find(|n| in_force.get(n).is_none()) {
        return Err(GuardError::NotInForce(*n));
    }
    for n in nets {
        edits.added.retain(|x| x.net != *n);
        if !edits.removed.contains(n) {
            edits.removed.push(*n);
        }
    }
    Ok(())
}

/// `guardctl rules reset`: forgets the live edits of `nets` (all of them when empty), so the
/// configured and discovered rules apply again. Each named prefix must have an edit.
pub fn reset_edits(edits: &mut Edits, nets: &[IpNet]) -> Result<usize> {
    if nets.is_empty() {
        let n = edits.added.len() + edits.removed.len();
        *edits = Edits::default();
        return Ok(n);
    }
    if let Some(n) = nets
        .iter()
        .find(|n| !edits.removed.contains(n) && !edits.added.iter().any(|r| r.net == **n))
    {
        return Err(GuardError::NoEdit(*n));
    }
    let before = edits.added.len() + edits.removed.len();
    edits.added.retain(|r| !nets.contains(&r.net));
    edits.removed.retain(|n| !nets.contains(n));
    Ok(before - edits.added.len() - edits.removed.len())
}

/// The options that give, with no live edits, the same policy as `options` with `edits`:
/// what `guardctl rules save` writes to the configuration file. `discovered` is the
/// discovered set now (it decides which added allow rules must also be excluded from it).
#[must_use]
pub fn options_with_edits(options: &Options, edits: &Edits, discovered: &[RuleSpec]) -> Options {
    let mut o = options.clone();
    let discovers = o.discovers();
    o.discover = Some(discovers);
    let exclude = |o: &mut Options, n: IpNet| {
        if discovers && !o.exclude.contains(&n) {
            o.exclude.push(n);
        }
    };
    for n in &edits.removed {
        o.protect.retain(|r| r.net != *n);
        o.allow.retain(|r| r.net != *n);
        exclude(&mut o, *n);
    }
    for r in &edits.added {
        o.protect.retain(|x| x.net != r.net);
        o.allow.retain(|x| x.net != r.net);
        if discovered
            .iter()
            .any(|d| d.net == r.net && d.action != r.action)
        {
            exclude(&mut o, r.net);
        }
        let mut r = r.clone();
        "config".clone_into(&mut r.source);
        match r.action {
            Action::Deny => o.protect.push(r),
            Action::Allow => o.allow.push(r),
        }
    }
    o
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

    fn arg(s: &str) -> RuleArg {
        s.parse().expect("valid")
    }

    #[test]
    fn edits_refuse_contradictions_and_keep_classes() {
        let discovered = Policy::from_rules([
            parse_protect("10.20.0.0/24=host-net", "stor0").expect("ok"),
            parse_protect("10.20.0.1/32=host", "stor0").expect("ok"),
        ])
        .expect("ok");
        let mut edits = Edits::default();
        let e = add_rules(
            &mut edits,
            &discovered,
            &[(arg("10.20.0.0/24"), Action::Allow)],
            false,
        )
        .expect_err("contradiction");
        let text = e.to_string();
        assert!(
            text.contains("10.20.0.0/24 (allowed")
                && text.contains("10.20.0.0/24 (protected, class host-net, discovered on stor0)"),
            "{text}"
        );
        assert!(edits.is_empty(), "nothing changed on a refusal");
        // Without a class, a prefix protected already keeps its class and source.
        let added = add_rules(
            &mut edits,
            &discovered,
            &[(arg("10.20.0.1"), Action::Deny)],
            false,
        )
        .expect("same action");
        assert_eq!(
            (added[0].class.as_str(), added[0].source.as_str()),
            ("host", "stor0")
        );
        // --replace overrides; del of a prefix not in force fails; reset forgets.
        add_rules(
            &mut edits,
            &discovered,
            &[(arg("10.20.0.0/24=portal"), Action::Allow)],
            true,
        )
        .expect("replace");
        let options = Options::default();
        let d = Discovery {
            bridge: crate::discovery::Iface {
                index: 1,
                name: "br".into(),
                mac: None,
                controller: None,
                is_bridge: true,
                is_loopback: false,
                up: true,
                tunnel_port: None,
            },
            ports: Vec::new(),
            host_macs: BTreeMap::new(),
            addrs: vec![crate::discovery::HostAddr {
                ifindex: 2,
                ifname: "stor0".into(),
                addr: "10.20.0.1".parse().expect("ok"),
                prefix_len: 24,
                peer: None,
            }],
            ifaces: Vec::new(),
            routes: Vec::new(),
            fou_ports: Vec::new(),
        };
        let p = Policy::build(&options, &edits, &d).expect("build");
        assert_eq!(
            p.get(&parse_net("10.20.0.0/24").expect("ok"))
                .map(|r| r.action),
            Some(Action::Allow)
        );
        assert!(matches!(
            del_rules(&mut edits, &p, &[parse_net("10.99.0.0/16").expect("ok")]),
            Err(GuardError::NotInForce(_))
        ));
        del_rules(&mut edits, &p, &[parse_net("10.20.0.1/32").expect("ok")]).expect("in force");
        let p = Policy::build(&options, &edits, &d).expect("build");
        assert!(
            p.get(&parse_net("10.20.0.1/32").expect("ok")).is_none(),
            "removed stays removed"
        );

        // What `rules save` writes gives the same policy with no edits.
        let saved = options_with_edits(&options, &edits, &default_protected(&d));
        let again = Policy::build(&saved, &Edits::default(), &d).expect("saved options build");
        let key = |p: &Policy| -> Vec<(IpNet, Action)> {
            p.rules.iter().map(|r| (r.net, r.action)).collect()
        };
        assert_eq!(key(&again), key(&p));
        assert!(
            saved
                .exclude
                .contains(&parse_net("10.20.0.0/24").expect("ok"))
        );

        assert_eq!(reset_edits(&mut edits, &[]).expect("reset"), 2);
        assert!(edits.is_empty());
    }

    #[test]
    fn prefix_errors_say_what_is_wrong() {
        let e = parse_net("10.0.0.0/33").expect_err("too long").to_string();
        assert!(
            e.contains("prefix length /33 is too long for IPv4 (at most /32)"),
            "{e}"
        );
        let e = parse_net("fd00::/129").expect_err("too long").to_string();
        assert!(e.contains("too long for IPv6 (at most /128)"), "{e}");
        let e = parse_net("10.0.0.300/24")
            .expect_err("bad address")
            .to_string();
        assert!(e.contains("\"10.0.0.300/24\" is not a CIDR"), "{e}");
        let e = parse_net("10.0.0.0/x").expect_err("bad length").to_string();
        assert!(e.contains("is not a number"), "{e}");
        assert!("10.0.0.0/8=".parse::<RuleArg>().is_err());
        assert_eq!(arg("10.0.0.0/8").class, None);
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
