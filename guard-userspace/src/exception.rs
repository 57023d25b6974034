//! Exceptions: allow rules scoped to a VM, a port or every port, for one protocol and
//! destination port (`guardctl rules add --allow CIDR --vm NAME --proto tcp --dport 3260`).
//! Step 10 of docs/datapath.md looks them up for IP packets a prefix or the route check denies.
//!
//! A rule names its VM or port by name, never by ifindex: it is resolved at every reconcile
//! (the bridge's ports now, and libvirt's runtime state for the VM that owns each tap), so a
//! VM that restarts or migrates back gets its holes on its new tap at the agent's next
//! reconcile. A VM with no port on the bridge keeps its rule, unresolved, with no entry.
//!
//! Every port-scoped entry is also installed with the bridge's own ifindex as scope: the
//! bridge device's backstop (`guard_bridge`) judges a frame again after its port's hook let it
//! through, and it cannot tell the ports apart. So on the backstop a port's hole is the union
//! of the holes of every port; a frame from a guarded port was already judged exactly by it.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    str::FromStr,
};

use guard_common::{ACTION_ALLOW, Exception4, Exception6, MAX_RULES, RuleValue, SCOPE_ALL};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::{
    error::{GuardError, Result},
    identity::GuestNic,
    options::{Edits, Options},
    policy::Classes,
};

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

/// An exception argument that does not validate. `guardctl` reports these as usage errors
/// (exit 64), naming the argument.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExceptionError {
    #[error("--proto {0:?}: use tcp, udp, icmp, icmpv6, any or a protocol number (0-255)")]
    BadProto(String),
    #[error("--dport {0:?}: a port is a number from 1 to 65535")]
    BadPort(String),
    #[error("--dport {port} needs --proto tcp or --proto udp (not {proto})")]
    PortWithoutTcpUdp { port: u16, proto: String },
    #[error("--vm and --iface name one scope each: give only one")]
    TwoScopes,
    #[error("{flag} {name:?}: not a name (1 to {max} characters, no '/' or spaces)")]
    BadName {
        flag: &'static str,
        name: String,
        max: usize,
    },
    #[error("--vm, --iface, --proto and --dport only go with --allow (a hole), not --protect")]
    ProtectScoped,
}

/// `--proto`: `tcp`, `udp`, `icmp`, `icmpv6`, `any` (0) or a number.
pub fn parse_proto(s: &str) -> std::result::Result<u8, ExceptionError> {
    match s.trim().to_ascii_lowercase().as_str() {
        "any" | "all" => Ok(0),
        "tcp" => Ok(IPPROTO_TCP),
        "udp" => Ok(IPPROTO_UDP),
        "icmp" => Ok(IPPROTO_ICMP),
        "icmpv6" | "ipv6-icmp" => Ok(IPPROTO_ICMPV6),
        n => n
            .parse()
            .map_err(|_| ExceptionError::BadProto(s.to_owned())),
    }
}

/// `--dport`: 1 to 65535.
pub fn parse_dport(s: &str) -> std::result::Result<u16, ExceptionError> {
    match s.trim().parse::<u16>() {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(ExceptionError::BadPort(s.to_owned())),
    }
}

/// The protocol as `--proto` takes it.
#[must_use]
pub fn proto_name(proto: u8) -> String {
    match proto {
        0 => "any".to_owned(),
        IPPROTO_TCP => "tcp".to_owned(),
        IPPROTO_UDP => "udp".to_owned(),
        IPPROTO_ICMP => "icmp".to_owned(),
        IPPROTO_ICMPV6 => "icmpv6".to_owned(),
        n => n.to_string(),
    }
}

/// Who an exception is for.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// Every port (and the backstop).
    All,
    /// The ports of a libvirt domain.
    Vm(String),
    /// One port, by interface name.
    Iface(String),
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::All => f.write_str("all ports"),
            Self::Vm(v) => write!(f, "VM {v}"),
            Self::Iface(i) => write!(f, "port {i}"),
        }
    }
}

/// One exception as the operator wrote it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExceptionSpec {
    pub net: IpNet,
    /// The libvirt domain it is for (`None` with `iface` `None`: every port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<String>,
    /// The port (interface name) it is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iface: Option<String>,
    /// IP protocol number, 0 for any.
    #[serde(default)]
    pub proto: u8,
    /// Destination port (TCP or UDP only), 0 for any.
    #[serde(default)]
    pub dport: u16,
    pub class: String,
    /// "cli", "config" or "rules".
    #[serde(default)]
    pub source: String,
}

/// What identifies an exception (the class and source do not).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ExceptionId {
    pub net: IpNet,
    pub scope: Scope,
    pub proto: u8,
    pub dport: u16,
}

fn check_name(
    flag: &'static str,
    name: &str,
    max: usize,
) -> std::result::Result<(), ExceptionError> {
    if name.is_empty()
        || name.len() > max
        || name.contains('/')
        || name.chars().any(char::is_whitespace)
    {
        return Err(ExceptionError::BadName {
            flag,
            name: name.to_owned(),
            max,
        });
    }
    Ok(())
}

impl ExceptionSpec {
    /// A checked exception: one scope at most, a port only with TCP or UDP, names that can be
    /// interface (15 characters) or domain names.
    pub fn new(
        net: IpNet,
        vm: Option<String>,
        iface: Option<String>,
        proto: u8,
        dport: u16,
        class: String,
        source: &str,
    ) -> std::result::Result<Self, ExceptionError> {
        let spec = Self {
            net,
            vm,
            iface,
            proto,
            dport,
            class,
            source: source.to_owned(),
        };
        spec.check()?;
        Ok(spec)
    }

    /// The checks of [`new`](Self::new), for specs read from a file.
    pub fn check(&self) -> std::result::Result<(), ExceptionError> {
        if self.vm.is_some() && self.iface.is_some() {
            return Err(ExceptionError::TwoScopes);
        }
        if let Some(v) = &self.vm {
            check_name("--vm", v, 255)?;
        }
        if let Some(i) = &self.iface {
            check_name("--iface", i, 15)?;
        }
        if self.dport != 0 && !matches!(self.proto, IPPROTO_TCP | IPPROTO_UDP) {
            return Err(ExceptionError::PortWithoutTcpUdp {
                port: self.dport,
                proto: proto_name(self.proto),
            });
        }
        Ok(())
    }

    #[must_use]
    pub fn scope(&self) -> Scope {
        match (&self.vm, &self.iface) {
            (Some(v), _) => Scope::Vm(v.clone()),
            (None, Some(i)) => Scope::Iface(i.clone()),
            (None, None) => Scope::All,
        }
    }

    #[must_use]
    pub fn id(&self) -> ExceptionId {
        ExceptionId {
            net: self.net,
            scope: self.scope(),
            proto: self.proto,
            dport: self.dport,
        }
    }

    /// `tcp/3260`, `udp`, `any`.
    #[must_use]
    pub fn what(&self) -> String {
        if self.dport == 0 {
            proto_name(self.proto)
        } else {
            format!("{}/{}", proto_name(self.proto), self.dport)
        }
    }
}

impl fmt::Display for ExceptionSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} from {} (allowed, class {}, {})",
            self.net,
            self.what(),
            self.scope(),
            self.class,
            crate::rule::origin(&self.source)
        )
    }
}

impl fmt::Display for ExceptionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = if self.dport == 0 {
            proto_name(self.proto)
        } else {
            format!("{}/{}", proto_name(self.proto), self.dport)
        };
        write!(f, "{} {what} from {}", self.net, self.scope)
    }
}

/// The exceptions in force: the configured ones less those removed live, then the live ones
/// (a live one replaces a configured one with the same identity).
#[must_use]
pub fn desired(options: &Options, edits: &Edits) -> Vec<ExceptionSpec> {
    let mut by: BTreeMap<ExceptionId, ExceptionSpec> = BTreeMap::new();
    let removed: BTreeSet<ExceptionId> = edits
        .removed_exceptions
        .iter()
        .map(ExceptionSpec::id)
        .collect();
    for e in &options.exceptions {
        if !removed.contains(&e.id()) {
            by.insert(e.id(), e.clone());
        }
    }
    for e in &edits.exceptions {
        by.insert(e.id(), e.clone());
    }
    by.into_values().collect()
}

/// `rules add` of exceptions: each replaces the live or configured one with its identity.
pub fn add_exceptions(edits: &mut Edits, new: &[ExceptionSpec]) {
    for e in new {
        let id = e.id();
        edits.removed_exceptions.retain(|x| x.id() != id);
        edits.exceptions.retain(|x| x.id() != id);
        edits.exceptions.push(e.clone());
    }
}

/// `rules del` of exceptions: each must be in force (`in_force`, from [`desired`]); nothing
/// changes when one is not. A configured one (in `configured`) stays out until `rules reset`.
pub fn del_exceptions(
    edits: &mut Edits,
    configured: &[ExceptionSpec],
    in_force: &[ExceptionSpec],
    ids: &[ExceptionId],
) -> Result<()> {
    if let Some(id) = ids
        .iter()
        .find(|id| !in_force.iter().any(|e| &e.id() == *id))
    {
        return Err(GuardError::ExceptionNotInForce(id.to_string()));
    }
    for id in ids {
        edits.exceptions.retain(|x| &x.id() != id);
        if let Some(e) = configured.iter().find(|e| &e.id() == id)
            && !edits.removed_exceptions.iter().any(|x| &x.id() == id)
        {
            edits.removed_exceptions.push(e.clone());
        }
    }
    Ok(())
}

/// One exception as a reconcile left it: its rule id (in the prefix rules' id space: they
/// share `GUARD_RULE_HITS`) and the scopes (ifindexes, or [`SCOPE_ALL`]) it resolved to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExceptionState {
    #[serde(flatten)]
    pub spec: ExceptionSpec,
    pub rule_id: u32,
    /// Empty: not resolved (the VM or port has no port on the bridge now).
    pub scopes: Vec<u32>,
    /// The ports it resolved to, by name (the bridge device's backstop included).
    #[serde(default)]
    pub ports: Vec<String>,
}

impl ExceptionState {
    #[must_use]
    pub fn resolved(&self) -> bool {
        !self.scopes.is_empty()
    }
}

/// One key of the exception tries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ExcKey {
    pub scope: u32,
    pub proto: u8,
    pub dport: u16,
    pub net: IpNet,
}

impl ExcKey {
    /// The trie key's prefix length: the fixed part, then the address prefix.
    #[must_use]
    pub fn prefix_len(&self) -> u32 {
        guard_common::EXCEPTION_FIXED_BITS + u32::from(self.net.prefix_len())
    }

    /// The key data of an IPv4 key (`None` for IPv6).
    #[must_use]
    pub fn v4(&self) -> Option<Exception4> {
        match self.net {
            IpNet::V4(n) => Some(Exception4 {
                scope: self.scope,
                proto: self.proto,
                pad: 0,
                // Network order, as the datapath reads it from the packet.
                dport: self.dport.to_be_bytes(),
                addr: n.addr().octets(),
            }),
            IpNet::V6(_) => None,
        }
    }

    #[must_use]
    pub fn v6(&self) -> Option<Exception6> {
        match self.net {
            IpNet::V6(n) => Some(Exception6 {
                scope: self.scope,
                proto: self.proto,
                pad: 0,
                dport: self.dport.to_be_bytes(),
                addr: n.addr().octets(),
            }),
            IpNet::V4(_) => None,
        }
    }
}

/// A port of the bridge, for resolving scopes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortRef {
    pub ifindex: u32,
    pub name: String,
}

/// The scopes `spec` resolves to: [`SCOPE_ALL`] for every port; else the ifindexes of the
/// matching ports and, when there is one, the bridge's own (the backstop judges again what
/// the port let through). Empty: no port now.
#[must_use]
pub fn resolve(
    spec: &ExceptionSpec,
    ports: &[PortRef],
    taps: &BTreeMap<String, GuestNic>,
    bridge: &PortRef,
) -> Vec<PortRef> {
    let matching: Vec<PortRef> = match spec.scope() {
        Scope::All => {
            return vec![PortRef {
                ifindex: SCOPE_ALL,
                name: "*".to_owned(),
            }];
        }
        Scope::Vm(vm) => ports
            .iter()
            .filter(|p| taps.get(&p.name).is_some_and(|n| n.domain == vm))
            .cloned()
            .collect(),
        Scope::Iface(name) => ports.iter().filter(|p| p.name == name).cloned().collect(),
    };
    if matching.is_empty() {
        return matching;
    }
    let mut out = matching;
    out.push(bridge.clone());
    out
}

/// Rule ids for `specs`: the id an exception had before (`previous`) when it is not taken by
/// a prefix rule (`prefix_ids`), else the lowest id free in both spaces. Returns the ids, in
/// the order of `specs`, and the ids that are new (whose hit counters start from zero).
pub fn assign_ids(
    specs: &[ExceptionSpec],
    previous: &[ExceptionState],
    prefix_ids: &BTreeSet<u32>,
) -> Result<(Vec<u32>, BTreeSet<u32>)> {
    let mut used: BTreeSet<u32> = prefix_ids.clone();
    let mut ids = vec![0u32; specs.len()];
    for (i, s) in specs.iter().enumerate() {
        if let Some(p) = previous.iter().find(|p| p.spec.id() == s.id())
            && p.rule_id != 0
            && !used.contains(&p.rule_id)
        {
            ids[i] = p.rule_id;
            used.insert(p.rule_id);
        }
    }
    let mut fresh = BTreeSet::new();
    let mut next = 1u32;
    for id in &mut ids {
        if *id != 0 {
            continue;
        }
        while used.contains(&next) {
            next += 1;
        }
        if next >= MAX_RULES {
            return Err(GuardError::Policy(format!(
                "more than {} rules (prefixes and exceptions together)",
                MAX_RULES - 1
            )));
        }
        *id = next;
        used.insert(next);
        fresh.insert(next);
    }
    Ok((ids, fresh))
}

/// The trie entries of resolved exceptions (`(spec, rule id, scopes)`). Two exceptions that
/// give the same key (a VM's and its port's, or two VMs' backstop entries) share the entry
/// of the first.
#[must_use]
pub fn entries<'a>(
    resolved: impl IntoIterator<Item = (&'a ExceptionSpec, u32, &'a [u32])>,
    classes: &mut Classes,
) -> BTreeMap<ExcKey, RuleValue> {
    let mut out = BTreeMap::new();
    for (spec, rule_id, scopes) in resolved {
        let class = classes.id(&spec.class);
        for &scope in scopes {
            let key = ExcKey {
                scope,
                proto: spec.proto,
                dport: spec.dport,
                net: spec.net,
            };
            out.entry(key).or_insert(RuleValue {
                rule_id,
                action: ACTION_ALLOW,
                class,
            });
        }
    }
    out
}

/// One write to the exception tries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExcOp {
    Upsert(ExcKey, RuleValue),
    Delete(ExcKey),
}

/// The writes that turn `current` into `desired` without a window: every new or changed
/// entry first, then the stale ones go (an exception only ever lets more through, so the
/// entries both sets hold are never missing in between, and what neither holds is never in).
#[must_use]
pub fn plan(
    current: &BTreeMap<ExcKey, RuleValue>,
    desired: &BTreeMap<ExcKey, RuleValue>,
) -> Vec<ExcOp> {
    let ups = desired
        .iter()
        .filter(|(k, v)| current.get(k) != Some(v))
        .map(|(k, v)| ExcOp::Upsert(*k, *v));
    let dels = current
        .keys()
        .filter(|k| !desired.contains_key(k))
        .map(|k| ExcOp::Delete(*k));
    ups.chain(dels).collect()
}

/// `--allow` arguments and their selectors, checked: the specs of a `rules add`.
pub fn specs_of(
    allow: &[crate::rule::RuleArg],
    vm: Option<&str>,
    iface: Option<&str>,
    proto: u8,
    dport: u16,
    source: &str,
) -> std::result::Result<Vec<ExceptionSpec>, ExceptionError> {
    allow
        .iter()
        .map(|a| {
            ExceptionSpec::new(
                a.net,
                vm.map(str::to_owned),
                iface.map(str::to_owned),
                proto,
                dport,
                a.class.clone().unwrap_or_else(|| {
                    crate::rule::default_class(crate::rule::Action::Allow).to_owned()
                }),
                source,
            )
        })
        .collect()
}

impl FromStr for Scope {
    type Err = ExceptionError;

    /// `all`, `vm:NAME` or `iface:NAME` (the text form in messages and tests).
    fn from_str(s: &str) -> std::result::Result<Self, ExceptionError> {
        match s.split_once(':') {
            None if s == "all" => Ok(Self::All),
            Some(("vm", v)) => check_name("--vm", v, 255).map(|()| Self::Vm(v.to_owned())),
            Some(("iface", i)) => check_name("--iface", i, 15).map(|()| Self::Iface(i.to_owned())),
            _ => Err(ExceptionError::BadName {
                flag: "scope",
                name: s.to_owned(),
                max: 255,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{identity::parse_domain_xml, rule::parse_net};

    fn spec(
        net: &str,
        vm: Option<&str>,
        iface: Option<&str>,
        proto: u8,
        dport: u16,
    ) -> ExceptionSpec {
        ExceptionSpec::new(
            parse_net(net).expect("net"),
            vm.map(str::to_owned),
            iface.map(str::to_owned),
            proto,
            dport,
            "allowed".to_owned(),
            "rules",
        )
        .expect("valid")
    }

    #[test]
    fn parsing_and_validation_name_the_argument() {
        assert_eq!(parse_proto("tcp"), Ok(6));
        assert_eq!(parse_proto("UDP"), Ok(17));
        assert_eq!(parse_proto("icmpv6"), Ok(58));
        assert_eq!(parse_proto("any"), Ok(0));
        assert_eq!(parse_proto("132"), Ok(132));
        let e = parse_proto("sctpx").expect_err("bad").to_string();
        assert!(e.starts_with("--proto \"sctpx\""), "{e}");
        assert!(parse_proto("256").is_err());
        assert_eq!(parse_dport("3260"), Ok(3260));
        for bad in ["0", "65536", "-1", "x"] {
            let e = parse_dport(bad).expect_err("bad port").to_string();
            assert!(e.starts_with("--dport"), "{e}");
        }
        let net = parse_net("10.20.0.5").expect("net");
        let e = ExceptionSpec::new(net, None, None, IPPROTO_ICMP, 80, "a".into(), "rules")
            .expect_err("icmp with a port")
            .to_string();
        assert!(
            e.contains("--dport 80 needs --proto tcp or --proto udp (not icmp)"),
            "{e}"
        );
        assert!(ExceptionSpec::new(net, None, None, 0, 80, "a".into(), "rules").is_err());
        assert!(
            ExceptionSpec::new(
                net,
                Some("a".into()),
                Some("b".into()),
                6,
                1,
                "a".into(),
                "r"
            )
            .is_err()
        );
        assert!(
            ExceptionSpec::new(
                net,
                None,
                Some("a-very-long-interface".into()),
                6,
                1,
                "a".into(),
                "r"
            )
            .is_err()
        );
        assert_eq!(
            "vm:backup01".parse::<Scope>(),
            Ok(Scope::Vm("backup01".into()))
        );
    }

    #[test]
    fn plan_resolves_vm_and_port_scopes_with_the_backstop() {
        let xml = "<domstatus><domain><name>backup01</name><devices>\
                   <interface><target dev='vnet3'/></interface>\
                   <interface><target dev='vnet4'/></interface></devices></domain></domstatus>";
        let taps: BTreeMap<_, _> = parse_domain_xml(xml).expect("xml").into_iter().collect();
        let ports = vec![
            PortRef {
                ifindex: 13,
                name: "vnet3".into(),
            },
            PortRef {
                ifindex: 14,
                name: "vnet4".into(),
            },
            PortRef {
                ifindex: 15,
                name: "vnet5".into(),
            },
        ];
        let bridge = PortRef {
            ifindex: 2,
            name: "br-guest".into(),
        };
        let by_vm = spec("10.20.0.5/32", Some("backup01"), None, IPPROTO_TCP, 3260);
        let by_port = spec("10.20.0.0/24", None, Some("vnet5"), IPPROTO_UDP, 0);
        let all = spec("10.20.0.1", None, None, IPPROTO_UDP, 123);
        let gone = spec("10.20.0.9", Some("web01"), None, 0, 0);
        let scopes = |s: &ExceptionSpec| -> Vec<u32> {
            resolve(s, &ports, &taps, &bridge)
                .iter()
                .map(|p| p.ifindex)
                .collect()
        };
        assert_eq!(scopes(&by_vm), [13, 14, 2]);
        assert_eq!(scopes(&by_port), [15, 2]);
        assert_eq!(scopes(&all), [SCOPE_ALL]);
        assert!(scopes(&gone).is_empty(), "no port: not resolved, no entry");

        let specs = [by_vm.clone(), by_port.clone(), all.clone(), gone.clone()];
        // Prefix rules hold ids 1 and 3: exceptions take 2, 4, 5, 6.
        let prefix_ids: BTreeSet<u32> = [1, 3].into();
        let (ids, fresh) = assign_ids(&specs, &[], &prefix_ids).expect("ids");
        assert_eq!(ids, [2, 4, 5, 6]);
        assert_eq!(fresh.len(), 4);
        let resolved: Vec<Vec<u32>> = specs.iter().map(scopes).collect();
        let mut classes = Classes::default();
        let e = entries(
            specs
                .iter()
                .zip(&ids)
                .zip(&resolved)
                .map(|((s, id), sc)| (s, *id, sc.as_slice())),
            &mut classes,
        );
        // 3 for the VM (two taps and the backstop), 2 for the port, 1 for all; none for web01.
        assert_eq!(e.len(), 6);
        let k = ExcKey {
            scope: 13,
            proto: IPPROTO_TCP,
            dport: 3260,
            net: by_vm.net,
        };
        assert_eq!(e[&k].rule_id, 2);
        assert_eq!(e[&k].action, ACTION_ALLOW);
        let d = k.v4().expect("v4");
        assert_eq!(d.dport, [0x0c, 0xbc], "network order");
        assert_eq!(k.prefix_len(), 64 + 32);
        assert_eq!(
            e[&ExcKey {
                scope: 2,
                proto: IPPROTO_UDP,
                dport: 0,
                net: by_port.net
            }]
                .rule_id,
            4
        );
    }

    #[test]
    fn a_restart_moves_entries_and_keeps_ids() {
        let k = ExcKey {
            scope: 13,
            proto: IPPROTO_TCP,
            dport: 3260,
            net: parse_net("10.20.0.5/32").expect("net"),
        };
        let specs = [spec(
            "10.20.0.5/32",
            Some("backup01"),
            None,
            IPPROTO_TCP,
            3260,
        )];
        let (ids, _) = assign_ids(&specs, &[], &[1, 3].into()).expect("ids");
        let e: BTreeMap<ExcKey, RuleValue> = [(
            k,
            RuleValue {
                rule_id: ids[0],
                action: ACTION_ALLOW,
                class: 0,
            },
        )]
        .into();
        let prefix_ids: BTreeSet<u32> = [1, 3].into();
        // The VM restarts on a new tap (ifindex 23): its entries move, its rule id stays, and
        // the new entry goes in before the old one comes out.
        let previous: Vec<ExceptionState> = specs
            .iter()
            .zip(&ids)
            .map(|(s, id)| ExceptionState {
                spec: s.clone(),
                rule_id: *id,
                scopes: Vec::new(),
                ports: Vec::new(),
            })
            .collect();
        let (again, fresh) = assign_ids(&specs, &previous, &prefix_ids).expect("ids");
        assert_eq!(again, ids);
        assert!(fresh.is_empty());
        let mut moved = e.clone();
        moved.remove(&k);
        moved.insert(ExcKey { scope: 23, ..k }, e[&k]);
        let ops = plan(&e, &moved);
        assert_eq!(
            ops,
            [
                ExcOp::Upsert(ExcKey { scope: 23, ..k }, e[&k]),
                ExcOp::Delete(k)
            ]
        );
        assert!(plan(&e, &e).is_empty());

        // A prefix rule that took an exception's old id pushes the exception to a free one.
        let (ids3, fresh3) = assign_ids(&specs, &previous, &[1, 2, 3].into()).expect("ids");
        assert_eq!(ids3[0], 4);
        assert_eq!(fresh3, [4].into());
    }

    #[test]
    fn live_edits_add_replace_and_delete() {
        let mut options = Options::default();
        let configured = ExceptionSpec {
            source: "config".into(),
            ..spec("10.20.0.1", None, None, IPPROTO_UDP, 123)
        };
        options.exceptions.push(configured.clone());
        let mut edits = Edits::default();
        let live = spec("10.20.0.5", Some("backup01"), None, IPPROTO_TCP, 3260);
        add_exceptions(&mut edits, std::slice::from_ref(&live));
        let now = desired(&options, &edits);
        assert_eq!(now.len(), 2);
        let other = spec("10.20.0.5", Some("web01"), None, IPPROTO_TCP, 3260).id();
        assert!(matches!(
            del_exceptions(&mut edits, &options.exceptions, &now, &[other]),
            Err(GuardError::ExceptionNotInForce(_))
        ));
        del_exceptions(
            &mut edits,
            &options.exceptions,
            &now,
            &[live.id(), configured.id()],
        )
        .expect("in force");
        assert!(desired(&options, &edits).is_empty());
        assert!(edits.exceptions.is_empty());
        assert_eq!(
            edits.removed_exceptions.len(),
            1,
            "the configured one stays out"
        );
        add_exceptions(&mut edits, std::slice::from_ref(&configured));
        assert_eq!(desired(&options, &edits).len(), 1);
        assert!(edits.removed_exceptions.is_empty());
    }
}
