//! `guardctl audit`: the host posture around a guest bridge.
//!
//! The seed article's advice is three settings (no address on the guest bridge, forwarding
//! off, reverse-path filter on). Several other kernel defaults open the same door, and guard
//! itself may be missing from a port. This module reads what the kernel says (sysctls from
//! `/proc/sys`, links and addresses over rtnetlink, XDP/TCX/`cls_bpf` hooks, guard's pins),
//! turns it into findings with a stable id, a severity, what was seen, how a guest uses it and
//! the exact fix, and can apply the fixes that are safe on any KVM host.
//!
//! `/proc/sys/net` shows the network namespace of the thread that opens it (the sysctl
//! tables are looked up through `current->nsproxy->net_ns`), so after `guardctl --netns NAME`
//! has called `setns` the same paths read that namespace's values.
//!
//! How the kernel combines `all` with the interface value differs per sysctl, and the
//! findings depend on it (`include/linux/inetdevice.h`, `IN_DEV_*` macros):
//! - `IN_DEV_MAXCONF` (max of `all` and the interface): `rp_filter`, `arp_ignore`,
//!   `arp_announce`;
//! - `IN_DEV_ORCONF` (either): `arp_filter`, `accept_local`, `proxy_arp`,
//!   `drop_unicast_in_l2_multicast`;
//! - `IN_DEV_ANDCONF` (both): `accept_source_route`; IPv6 `seg6_enabled` and
//!   `rpl_seg_enabled` are the minimum of `all` and the interface (`net/ipv6/exthdrs.c`);
//! - the interface value only: IPv4 `forwarding` (`IN_DEV_FORWARD`; writing
//!   `net.ipv4.ip_forward` copies the value to every interface and `default`,
//!   `net/ipv4/devinet.c` `inet_forward_change`), and the IPv6 per-interface settings
//!   `accept_ra`, `disable_ipv6`, `drop_unicast_in_l2_multicast` (`net/ipv6/ip6_input.c`
//!   `ip6_rcv_core` reads `idev->cnf` only);
//! - IPv6 forwarding is decided by `all.forwarding` (or the input interface's
//!   `force_forwarding`, 6.17+) in `net/ipv6/ip6_output.c` `ip6_forward`; `proxy_ndp` is
//!   `all || interface` and needs the interface's `forwarding` (`net/ipv6/ndisc.c`
//!   `ndisc_recv_ns`).

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt, fs, io,
    net::IpAddr,
    path::{Path, PathBuf},
};

use aya::programs::{ProgramError, ProgramInfo, SchedClassifier, TcAttachType};
use futures::TryStreamExt as _;
use netlink_packet_route::{
    link::{LinkAttribute, LinkXdp},
    tc::{TcAttribute, TcFilterBpfOption, TcOption},
};
use rtnetlink::Handle;
use serde::Serialize;
use thiserror::Error;

use crate::{
    discovery::{self, HostAddr, Iface},
    error::GuardError,
    pins::{self, Location},
    state::State,
};

/// Where the kernel's sysctls are.
pub const PROC_SYS: &str = "/proc/sys";

/// Exit statuses of `guardctl audit`.
pub const EXIT_CLEAN: u8 = 0;
pub const EXIT_MEDIUM: u8 = 1;
pub const EXIT_HIGH: u8 = 2;
/// The audit itself could not run (or `--fix` was refused).
pub const EXIT_ERROR: u8 = 3;

#[derive(Debug, Error)]
pub enum AuditError {
    #[error(transparent)]
    Guard(#[from] GuardError),
    #[error("reading {path}: {source}")]
    ReadSysctl {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: not an integer: {value:?}")]
    ParseSysctl { path: PathBuf, value: String },
    #[error("writing {value} to {path}: {source}")]
    WriteSysctl {
        path: PathBuf,
        value: i64,
        #[source]
        source: io::Error,
    },
    #[error("{path}: wrote {wanted} but it reads back {got}")]
    WriteIgnored {
        path: PathBuf,
        wanted: i64,
        got: i64,
    },
    #[error("querying the TCX programs of {port}: {source}")]
    Tcx {
        port: String,
        #[source]
        source: Box<ProgramError>,
    },
}

impl From<rtnetlink::Error> for AuditError {
    fn from(e: rtnetlink::Error) -> Self {
        Self::Guard(GuardError::Netlink(e))
    }
}

pub type Result<T, E = AuditError> = std::result::Result<T, E>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing; not exploitable as configured.
    Info,
    /// A guest gains something (information, a partial path) or one more change opens a hole.
    Medium,
    /// A guest reaches the host or the networks behind it now.
    High,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Self::Info => "info",
            Self::Medium => "medium",
            Self::High => "high",
        })
    }
}

/// One value the finding is based on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Observed {
    pub what: String,
    pub value: String,
}

/// A sysctl write that `--fix` may make.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct SysctlChange {
    /// The name `sysctl(8)` takes (`net.ipv4.conf.br-guest.rp_filter`).
    pub sysctl: String,
    /// Relative to `/proc/sys`.
    #[serde(skip)]
    pub path: String,
    pub value: i64,
}

impl SysctlChange {
    fn new(path: &str, value: i64) -> Self {
        Self {
            sysctl: sysctl_name(path),
            path: path.to_owned(),
            value,
        }
    }

    /// `sysctl -w name=value`.
    #[must_use]
    pub fn command(&self) -> String {
        format!("sysctl -w {}={}", self.sysctl, self.value)
    }
}

/// The `sysctl(8)` name of a `/proc/sys` path. An interface name with a dot in it
/// (`br0.100`) cannot be written with dots; sysctl(8) accepts `/` separators instead.
#[must_use]
pub fn sysctl_name(path: &str) -> String {
    if path.split('/').any(|c| c.contains('.')) {
        path.to_owned()
    } else {
        path.replace('/', ".")
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Stable identifier, for scripts and suppressions.
    pub id: &'static str,
    pub severity: Severity,
    /// The bridge it concerns (`None`: the whole namespace).
    pub bridge: Option<String>,
    pub title: String,
    pub observed: Vec<Observed>,
    /// How a guest uses it, for a host administrator.
    pub explanation: String,
    /// What to run (commands or sysctl lines), in order of preference.
    pub fix: Vec<String>,
    /// What `--fix` writes for this finding (empty: it changes nothing, see `fix_note`).
    pub auto_fix: Vec<SysctlChange>,
    /// Why `--fix` does or does not apply the fix.
    pub fix_note: String,
}

/// What the kernel says about one port of a guest bridge.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PortView {
    pub name: String,
    pub ifindex: u32,
    /// `IFLA_XDP` program id (any mode).
    pub xdp_prog: Option<u32>,
    /// Programs on the TCX ingress hook.
    pub tcx_progs: Vec<u32>,
    /// `cls_bpf` programs on the clsact ingress hook.
    pub tc_progs: Vec<u32>,
    /// Listed in guard's state file.
    pub in_state: bool,
}

/// guard's pinned state for a bridge.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GuardView {
    /// Ids of the pinned programs (`prog_xdp`, `prog_tc`).
    pub prog_ids: Vec<u32>,
    /// The state file under /run/guard exists.
    pub state_present: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BridgeView {
    pub name: String,
    pub ifindex: u32,
    pub ports: Vec<PortView>,
    /// `None`: nothing pinned for this bridge.
    pub guard: Option<GuardView>,
}

/// Everything the findings are computed from. Collected from the kernel by [`collect`], or
/// built by hand in tests.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    pub netns: Option<String>,
    /// `/proc/sys`-relative path -> value; a sysctl that does not exist is absent.
    pub sysctls: BTreeMap<String, i64>,
    pub addrs: Vec<HostAddr>,
    pub bridges: Vec<BridgeView>,
}

impl Snapshot {
    fn get(&self, path: &str) -> Option<i64> {
        self.sysctls.get(path).copied()
    }
    fn v4(&self, dev: &str, knob: &str) -> Option<i64> {
        self.get(&v4(dev, knob))
    }
    fn v6(&self, dev: &str, knob: &str) -> Option<i64> {
        self.get(&v6(dev, knob))
    }
    fn observed(&self, path: &str) -> Observed {
        Observed {
            what: sysctl_name(path),
            value: self
                .get(path)
                .map_or_else(|| "(absent)".to_owned(), |v| v.to_string()),
        }
    }
    fn bridge_addrs(&self, bridge: &BridgeView) -> impl Iterator<Item = &HostAddr> {
        self.addrs
            .iter()
            .filter(move |a| a.ifindex == bridge.ifindex)
    }
    /// IPv4 addresses on the bridge.
    fn bridge_v4(&self, bridge: &BridgeView) -> Vec<&HostAddr> {
        self.bridge_addrs(bridge)
            .filter(|a| a.addr.is_ipv4())
            .collect()
    }
    /// IPv6 addresses on the bridge other than link-local ones.
    fn bridge_v6_routable(&self, bridge: &BridgeView) -> Vec<&HostAddr> {
        self.bridge_addrs(bridge)
            .filter(|a| matches!(a.addr, IpAddr::V6(v6) if !v6.is_unicast_link_local()))
            .collect()
    }
    /// Addresses of this family that a guest could aim at through the bridge: on other
    /// interfaces, not loopback (the kernel treats 127/8 from outside as martian), not
    /// link-local (scoped to its own link).
    fn other_targets(&self, bridge: &BridgeView, v4: bool) -> Vec<&HostAddr> {
        self.addrs
            .iter()
            .filter(|a| a.ifindex != bridge.ifindex && a.addr.is_ipv4() == v4)
            .filter(|a| match a.addr {
                IpAddr::V4(x) => !x.is_loopback() && !x.is_link_local(),
                IpAddr::V6(x) => !x.is_loopback() && !x.is_unicast_link_local(),
            })
            .collect()
    }
    fn ipv6_on(&self, bridge: &str) -> bool {
        self.v6(bridge, "disable_ipv6") == Some(0)
    }
}

fn v4(dev: &str, knob: &str) -> String {
    format!("net/ipv4/conf/{dev}/{knob}")
}
fn v6(dev: &str, knob: &str) -> String {
    format!("net/ipv6/conf/{dev}/{knob}")
}

const IP_FORWARD: &str = "net/ipv4/ip_forward";
const NF_CALL_IPTABLES: &str = "net/bridge/bridge-nf-call-iptables";
const NF_CALL_IP6TABLES: &str = "net/bridge/bridge-nf-call-ip6tables";

const V4_KNOBS: &[&str] = &[
    "forwarding",
    "rp_filter",
    "arp_ignore",
    "arp_filter",
    "arp_announce",
    "drop_unicast_in_l2_multicast",
    "accept_local",
    "proxy_arp",
    "accept_source_route",
];
const V6_KNOBS: &[&str] = &[
    "forwarding",
    "force_forwarding",
    "disable_ipv6",
    "accept_ra",
    "proxy_ndp",
    "drop_unicast_in_l2_multicast",
    "seg6_enabled",
    "rpl_seg_enabled",
];

/// The sysctl paths the audit reads for these bridges.
#[must_use]
pub fn sysctl_paths(bridges: &[&str]) -> Vec<String> {
    let mut paths = vec![
        IP_FORWARD.to_owned(),
        NF_CALL_IPTABLES.to_owned(),
        NF_CALL_IP6TABLES.to_owned(),
    ];
    for dev in ["all", "default"].iter().chain(bridges) {
        paths.extend(V4_KNOBS.iter().map(|k| v4(dev, k)));
        paths.extend(V6_KNOBS.iter().map(|k| v6(dev, k)));
    }
    paths
}

/// Reads one integer sysctl; `None` when it does not exist (IPv6 off at boot, `br_netfilter`
/// not loaded, a knob newer than the kernel).
pub fn read_sysctl(root: &Path, path: &str) -> Result<Option<i64>> {
    let full = root.join(path);
    match fs::read_to_string(&full) {
        Ok(s) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| AuditError::ParseSysctl {
                path: full,
                value: s.trim().to_owned(),
            }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(AuditError::ReadSysctl { path: full, source }),
    }
}

pub fn read_sysctls(root: &Path, paths: &[String]) -> Result<BTreeMap<String, i64>> {
    let mut out = BTreeMap::new();
    for p in paths {
        if let Some(v) = read_sysctl(root, p)? {
            out.insert(p.clone(), v);
        }
    }
    Ok(out)
}

/// Which bridges to audit: the named ones (each must exist and be a bridge), else those guard
/// is attached to in this scope, else every bridge in the namespace.
pub fn select_bridges<'a>(
    ifaces: &'a [Iface],
    named: &[String],
    attached: &[String],
) -> Result<Vec<&'a Iface>> {
    if !named.is_empty() {
        return named
            .iter()
            .map(|n| {
                let i = ifaces
                    .iter()
                    .find(|i| &i.name == n)
                    .ok_or_else(|| GuardError::NoSuchInterface(n.clone()))?;
                if i.is_bridge {
                    Ok(i)
                } else {
                    Err(GuardError::NotABridge(n.clone()).into())
                }
            })
            .collect();
    }
    let bridges: Vec<&Iface> = ifaces.iter().filter(|i| i.is_bridge).collect();
    let guarded: Vec<&Iface> = bridges
        .iter()
        .copied()
        .filter(|b| attached.contains(&b.name))
        .collect();
    Ok(if guarded.is_empty() { bridges } else { guarded })
}

/// `IFLA_XDP` program id per ifindex.
pub async fn xdp_progs(handle: &Handle) -> Result<BTreeMap<u32, u32>> {
    let mut out = BTreeMap::new();
    let mut stream = handle.link().get().execute();
    while let Some(msg) = stream.try_next().await? {
        for attr in &msg.attributes {
            let LinkAttribute::Xdp(xdp) = attr else {
                continue;
            };
            // IFLA_XDP_PROG_ID is the single program in native/generic/offload mode;
            // the per-mode ids cover several at once.
            let id = xdp.iter().find_map(|x| match x {
                LinkXdp::ProgId(id) | LinkXdp::DrvProgId(id) | LinkXdp::SkbProgId(id)
                    if *id != 0 =>
                {
                    Some(*id)
                }
                _ => None,
            });
            if let Some(id) = id {
                out.insert(msg.header.index, id);
            }
        }
    }
    Ok(out)
}

/// `cls_bpf` program ids on the ingress hook of `ifindex` (guard's `--hook tc`).
pub async fn tc_progs(handle: &Handle, ifindex: u32) -> Result<Vec<u32>> {
    let Ok(index) = i32::try_from(ifindex) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    let mut stream = handle.traffic_filter(index).get().ingress().execute();
    loop {
        match stream.try_next().await {
            Ok(Some(msg)) => {
                for attr in &msg.attributes {
                    if let TcAttribute::Options(opts) = attr {
                        out.extend(opts.iter().filter_map(|o| match o {
                            TcOption::Bpf(TcFilterBpfOption::ProgId(id)) => Some(*id),
                            _ => None,
                        }));
                    }
                }
            }
            Ok(None) => break,
            // No clsact/ingress qdisc: the kernel answers EINVAL, meaning no filters.
            Err(rtnetlink::Error::NetlinkError(e))
                if e.raw_code() == -libc::EINVAL || e.raw_code() == -libc::ENOENT =>
            {
                break;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}

/// TCX ingress program ids of `port`.
pub fn tcx_progs(port: &str) -> Result<Vec<u32>> {
    match SchedClassifier::query_tcx(port, TcAttachType::Ingress) {
        Ok((_, progs)) => Ok(progs.iter().map(ProgramInfo::id).collect()),
        Err(e) => Err(AuditError::Tcx {
            port: port.to_owned(),
            source: Box::new(e),
        }),
    }
}

fn guard_view(loc: &Location) -> Result<Option<(GuardView, Option<State>)>> {
    if !loc.is_attached() {
        return Ok(None);
    }
    let prog_ids = ["xdp", "tc", "bridge"]
        .iter()
        .filter_map(|h| ProgramInfo::from_pin(loc.prog_pin(h)).ok())
        .map(|i| i.id())
        .collect();
    let state = State::load(loc)?;
    Ok(Some((
        GuardView {
            prog_ids,
            state_present: state.is_some(),
        },
        state,
    )))
}

/// Reads everything the audit needs, in the current network namespace. `netns` is the
/// `--netns` name (the scope of guard's pins).
pub async fn collect(handle: &Handle, netns: Option<&str>, named: &[String]) -> Result<Snapshot> {
    let ifaces = discovery::links(handle).await?;
    let scope = netns.unwrap_or(pins::HOST_SCOPE);
    let attached: Vec<String> = pins::attached_bridges(&Path::new(pins::BPFFS).join("guard"))?
        .into_iter()
        .filter(|(s, _)| s == scope)
        .map(|(_, b)| b)
        .collect();
    let selected = select_bridges(&ifaces, named, &attached)?;
    let xdp = xdp_progs(handle).await?;
    let mut bridges = Vec::new();
    for br in selected {
        let loc = Location::new(netns, &br.name);
        let (guard, state) = match guard_view(&loc)? {
            Some((g, s)) => (Some(g), s),
            None => (None, None),
        };
        let mut ports = Vec::new();
        for p in ifaces.iter().filter(|i| i.controller == Some(br.index)) {
            ports.push(PortView {
                name: p.name.clone(),
                ifindex: p.index,
                xdp_prog: xdp.get(&p.index).copied(),
                tcx_progs: tcx_progs(&p.name)?,
                tc_progs: tc_progs(handle, p.index).await?,
                in_state: state
                    .as_ref()
                    .is_some_and(|s| s.ports.contains_key(&p.index)),
            });
        }
        bridges.push(BridgeView {
            name: br.name.clone(),
            ifindex: br.index,
            ports,
            guard,
        });
    }
    let bridge_names: Vec<&str> = bridges.iter().map(|b| b.name.as_str()).collect();
    let sysctls = read_sysctls(Path::new(PROC_SYS), &sysctl_paths(&bridge_names))?;
    let addrs = discovery::addresses(handle, &ifaces).await?;
    Ok(Snapshot {
        netns: netns.map(str::to_owned),
        sysctls,
        addrs,
        bridges,
    })
}

/// The findings, worst first (stable order within a severity).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub netns: Option<String>,
    pub bridges: Vec<String>,
    pub findings: Vec<Finding>,
}

impl Report {
    #[must_use]
    pub fn worst(&self) -> Option<Severity> {
        self.findings.iter().map(|f| f.severity).max()
    }

    /// 0 clean (info only), 1 medium, 2 high.
    #[must_use]
    pub fn exit_status(&self) -> u8 {
        match self.worst() {
            Some(Severity::High) => EXIT_HIGH,
            Some(Severity::Medium) => EXIT_MEDIUM,
            Some(Severity::Info) | None => EXIT_CLEAN,
        }
    }

    /// Every change `--fix` would make, each sysctl once.
    #[must_use]
    pub fn safe_changes(&self) -> Vec<SysctlChange> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for c in self.findings.iter().flat_map(|f| &f.auto_fix) {
            if seen.insert(c.path.clone()) {
                out.push(c.clone());
            }
        }
        out
    }
}

/// One `--fix` write, with the value before and after.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Applied {
    pub sysctl: String,
    pub before: Option<i64>,
    pub after: i64,
}

/// Writes the changes under `root` (`/proc/sys`), reading each value back.
pub fn apply(root: &Path, changes: &[SysctlChange]) -> Result<Vec<Applied>> {
    let mut out = Vec::new();
    for c in changes {
        let before = read_sysctl(root, &c.path)?;
        let full = root.join(&c.path);
        if before != Some(c.value) {
            fs::write(&full, format!("{}\n", c.value)).map_err(|source| {
                AuditError::WriteSysctl {
                    path: full.clone(),
                    value: c.value,
                    source,
                }
            })?;
        }
        let after = read_sysctl(root, &c.path)?.unwrap_or(i64::MIN);
        if after != c.value {
            return Err(AuditError::WriteIgnored {
                path: full,
                wanted: c.value,
                got: after,
            });
        }
        out.push(Applied {
            sysctl: c.sysctl.clone(),
            before,
            after,
        });
    }
    Ok(out)
}

/// Builds the report from a snapshot.
#[must_use]
pub fn evaluate(snap: &Snapshot) -> Report {
    let mut findings = Vec::new();
    for br in &snap.bridges {
        bridge_findings(snap, br, &mut findings);
    }
    bridge_nf(snap, &mut findings);
    if let Some(ns) = &snap.netns {
        for f in &mut findings {
            for fix in &mut f.fix {
                *fix = in_netns(fix, ns);
            }
        }
    }
    // Worst first; the sort is stable, so the order of the checks stays within a severity.
    findings.sort_by_key(|f| std::cmp::Reverse(f.severity));
    Report {
        netns: snap.netns.clone(),
        bridges: snap.bridges.iter().map(|b| b.name.clone()).collect(),
        findings,
    }
}

/// A fix command as it must be typed from the host for a bridge in the named network
/// namespace `ns` (the audit ran with `--netns`): `ip -n NS ...`, `ip netns exec NS sysctl ...`,
/// `guardctl --netns NS ...`. `systemctl` units run in the host's namespace: the agent for a
/// bridge in a namespace is `guardctl --netns NS run BRIDGE`.
#[must_use]
pub fn in_netns(fix: &str, ns: &str) -> String {
    if let Some(rest) = fix.strip_prefix("ip ") {
        format!("ip -n {ns} {rest}")
    } else if let Some(rest) = fix.strip_prefix("guardctl ") {
        if rest.starts_with("--netns ") {
            fix.to_owned()
        } else {
            format!("guardctl --netns {ns} {rest}")
        }
    } else if let Some(rest) = fix.strip_prefix("systemctl enable --now guardctl@") {
        let bridge = rest.split_whitespace().next().unwrap_or(rest);
        format!(
            "guardctl --netns {ns} run {bridge} (the agent; the unit runs in the host's namespace)"
        )
    } else if fix.starts_with("sysctl ") || fix.starts_with("echo ") || fix.starts_with("bridge ") {
        format!("ip netns exec {ns} {fix}")
    } else {
        fix.to_owned()
    }
}

struct Ctx<'a> {
    snap: &'a Snapshot,
    br: &'a BridgeView,
    has_v4: bool,
    has_v6_routable: bool,
    fwd4: bool,
    out: &'a mut Vec<Finding>,
}

impl Ctx<'_> {
    fn name(&self) -> &str {
        &self.br.name
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one call per finding reads best flat"
    )]
    fn push(
        &mut self,
        id: &'static str,
        severity: Severity,
        title: String,
        observed: Vec<Observed>,
        explanation: &str,
        fix: Vec<String>,
        auto_fix: Vec<SysctlChange>,
        fix_note: &str,
    ) {
        self.out.push(Finding {
            id,
            severity,
            bridge: Some(self.br.name.clone()),
            title,
            observed,
            explanation: explanation.to_owned(),
            fix,
            auto_fix,
            fix_note: fix_note.to_owned(),
        });
    }

    fn obs(&self, paths: &[String]) -> Vec<Observed> {
        paths.iter().map(|p| self.snap.observed(p)).collect()
    }
}

const NOT_AUTO_ALL: &str = "not applied: it would change every interface of the host, \
     not only the guest bridge";

fn bridge_findings(snap: &Snapshot, br: &BridgeView, out: &mut Vec<Finding>) {
    let mut c = Ctx {
        snap,
        br,
        has_v4: !snap.bridge_v4(br).is_empty(),
        has_v6_routable: !snap.bridge_v6_routable(br).is_empty(),
        fwd4: snap.v4(&br.name, "forwarding") == Some(1),
        out,
    };
    ipv4_forwarding(&mut c);
    rp_filter(&mut c);
    bridge_address(&mut c);
    ipv6(&mut c);
    accept_ra(&mut c);
    proxy_ndp(&mut c);
    arp_ignore(&mut c);
    arp_filter(&mut c);
    arp_announce(&mut c);
    unicast_in_l2_multicast(&mut c);
    accept_local(&mut c);
    proxy(&mut c);
    source_route(&mut c);
    segment_routing(&mut c);
    guard_hooks(&mut c);
}

fn ipv4_forwarding(c: &mut Ctx<'_>) {
    let br = c.name().to_owned();
    let paths = [
        IP_FORWARD.to_owned(),
        v4("default", "forwarding"),
        v4(&br, "forwarding"),
    ];
    let note_persist = "Writing net.ipv4.ip_forward=1 (libvirt does so when it starts a \
        network) sets forwarding on every interface again, the bridge included; make the \
        bridge value part of how the bridge is created (for example IPForward=no in its \
        systemd-networkd .network file) rather than a one-off sysctl.";
    if c.fwd4 {
        let change = SysctlChange::new(&v4(&br, "forwarding"), 0);
        let (auto, note) = if c.has_v4 {
            (
                Vec::new(),
                "not applied: the bridge holds an IPv4 address, so the host may \
                 route for these guests on purpose (a libvirt NAT or routed network), and \
                 turning forwarding off would cut them off; remove the address or protect \
                 the bridge with guard",
            )
        } else {
            (
                vec![change.clone()],
                "applied: the bridge holds no IPv4 address, so no guest can use the \
                 host as its configured router and nothing legitimate is routed from it; \
                 forwarding between the host's other interfaces is left as it is",
            )
        };
        let explanation = format!(
            "The host routes IPv4 packets that arrive on {br}. A guest sets the host's MAC \
             (the bridge's, or any port's own MAC) as the destination of a frame whose IP \
             destination is on the storage or management network, and the host forwards it \
             there: to another guest's disk images, the storage array, the management \
             plane. The bridge needs no IP address for this, and a one-way packet (a forged \
             DHCP, DNS or iSCSI request) is damage enough. The kernel decides per input \
             interface (IN_DEV_FORWARD in net/ipv4/route.c ip_route_input_slow), so turning \
             it off on the bridge stops this without touching the host's other routing. \
             {note_persist}"
        );
        c.push(
            "ipv4-forwarding",
            Severity::High,
            format!("the host routes IPv4 packets from guests on {br}"),
            c.obs(&paths),
            &explanation,
            vec![
                change.command(),
                "sysctl -w net.ipv4.ip_forward=0 (only if this host routes nothing at all)"
                    .to_owned(),
            ],
            auto,
            note,
        );
    } else if c.snap.get(IP_FORWARD) == Some(1) || c.snap.v4("default", "forwarding") == Some(1) {
        let explanation = format!(
            "{br} does not forward IPv4 now, but forwarding is on for the host \
             (net.ipv4.ip_forward or conf.default.forwarding is 1). {note_persist} A bridge \
             created anew also starts with the default value."
        );
        c.push(
            "ipv4-forwarding-default",
            Severity::Info,
            format!("{br} does not forward, but a restart of the network may turn it on"),
            c.obs(&paths),
            &explanation,
            vec![format!(
                "make {} part of the bridge's configuration",
                SysctlChange::new(&v4(&br, "forwarding"), 0).sysctl
            )],
            Vec::new(),
            "nothing to apply now",
        );
    }
}

fn rp_filter(c: &mut Ctx<'_>) {
    let br = c.name().to_owned();
    let all = c.snap.v4("all", "rp_filter").unwrap_or(0);
    let dev = c.snap.v4(&br, "rp_filter").unwrap_or(0);
    // IN_DEV_RPFILTER is IN_DEV_MAXCONF: max(all, interface).
    let eff = all.max(dev);
    if eff == 1 {
        return;
    }
    let severity = match eff {
        0 => Severity::High,
        _ if c.has_v4 => Severity::Medium,
        _ => Severity::Info,
    };
    let mode = match eff {
        0 => "off",
        2 => "loose",
        _ => "unknown",
    };
    let change = SysctlChange::new(&v4(&br, "rp_filter"), 1);
    let (auto, note, fix) = if all <= 1 {
        (
            vec![change.clone()],
            "applied: only the bridge's value changes; guests that use addresses \
             routed through the bridge (a libvirt NAT network) still pass",
            vec![change.command()],
        )
    } else {
        (
            Vec::new(),
            "not applied: conf.all.rp_filter=2 keeps the bridge loose whatever its \
             own value (the kernel uses the larger one); lowering `all` changes every \
             interface and breaks hosts with asymmetric routes",
            vec![
                "sysctl -w net.ipv4.conf.all.rp_filter=1 (check asymmetric routes first)"
                    .to_owned(),
                change.command(),
            ],
        )
    };
    let explanation = format!(
        "Reverse-path filtering is {mode} on {br} (the kernel uses the larger of \
         conf.all.rp_filter and the interface's value). With it on, the host drops a packet \
         from the bridge unless the route back to its source leads out of the bridge; for a \
         bridge without an IPv4 address that is every packet a guest aims at the host's \
         own addresses or through the host (net/ipv4/fib_frontend.c __fib_validate_source: \
         no address on the device means rejection in both strict and loose mode). It also \
         stops the host answering ordinary ARP requests from guests for its other \
         addresses. With it off, a guest's packet to the host's MAC with a storage or \
         management destination is delivered to the host's services (weak host model) or \
         routed on. Loose mode accepts any source the host can route at all, so once the \
         bridge has an address it filters nothing."
    );
    c.push(
        "rp-filter",
        severity,
        format!("reverse-path filter {mode} on {br}"),
        c.obs(&[v4("all", "rp_filter"), v4(&br, "rp_filter")]),
        &explanation,
        fix,
        auto,
        note,
    );
}

fn bridge_address(c: &mut Ctx<'_>) {
    let br = c.name().to_owned();
    let fwd6 = c.snap.v6("all", "forwarding") == Some(1);
    let v4s = c.snap.bridge_v4(c.br);
    let v6s = c.snap.bridge_v6_routable(c.br);
    if v4s.is_empty() && v6s.is_empty() {
        return;
    }
    let routed = (!v4s.is_empty() && c.fwd4) || (!v6s.is_empty() && fwd6);
    let observed: Vec<Observed> = v4s
        .iter()
        .chain(&v6s)
        .map(|a| Observed {
            what: format!("address on {br}"),
            value: format!("{}/{}", a.addr, a.prefix_len),
        })
        .collect();
    let fix = v4s
        .iter()
        .chain(&v6s)
        .map(|a| format!("ip address del {}/{} dev {br}", a.addr, a.prefix_len))
        .collect();
    let explanation = format!(
        "The host holds an address on the guest bridge {br}, the article's open barn door. \
         Every guest reaches the host's services on it directly, the reverse-path filter \
         accepts guest sources in that subnet, arp_ignore=1 still answers for it, and with \
         forwarding on the host is a ready-made router from the guest network into the \
         storage and management networks. A bridge that only switches guests needs no \
         address; if the host must serve these guests (a libvirt NAT network), attach \
         guard to the bridge so frames aimed at the protected networks are dropped."
    );
    c.push(
        "bridge-address",
        if routed {
            Severity::High
        } else {
            Severity::Medium
        },
        format!("{br} holds an IP address"),
        observed,
        &explanation,
        fix,
        Vec::new(),
        "not applied: removing an address is not a sysctl and would cut off \
         guests that use the host on purpose",
    );
}

fn ipv6(c: &mut Ctx<'_>) {
    let br = c.name().to_owned();
    if !c.snap.ipv6_on(&br) {
        return;
    }
    let fwd_all = c.snap.v6("all", "forwarding") == Some(1);
    let force = c.snap.v6(&br, "force_forwarding") == Some(1);
    let targets6 = !c.snap.other_targets(c.br, false).is_empty();
    let disable = SysctlChange::new(&v6(&br, "disable_ipv6"), 1);
    let (disable_auto, disable_note) = if c.has_v6_routable {
        (
            Vec::new(),
            "not applied: the bridge holds a routable IPv6 address, so the host \
             may serve these guests over IPv6 on purpose",
        )
    } else {
        (
            vec![disable.clone()],
            "applied: the bridge holds no routable IPv6 address, so no guest can use \
             the host over IPv6 on purpose; bridging of the guests' own IPv6 traffic is \
             layer 2 and continues",
        )
    };

    if fwd_all || force {
        let explanation = format!(
            "The host routes IPv6 packets that arrive on {br}. IPv6 forwarding is one switch \
             for the whole host (conf.all.forwarding, or the input interface's \
             force_forwarding; net/ipv6/ip6_output.c ip6_forward), there is no reverse-path \
             filter for IPv6 in sysctl, and the bridge needs no address: a guest sends a \
             frame to the host's MAC with an IPv6 destination on the storage or management \
             network and the host forwards it. Turning IPv6 off on the bridge keeps guest \
             packets out of the host's IPv6 stack while the host keeps routing elsewhere."
        );
        c.push(
            "ipv6-forwarding",
            Severity::High,
            format!("the host routes IPv6 packets from guests on {br}"),
            c.obs(&[
                v6("all", "forwarding"),
                v6("default", "forwarding"),
                v6(&br, "forwarding"),
                v6(&br, "force_forwarding"),
            ]),
            &explanation,
            vec![
                disable.command(),
                "sysctl -w net.ipv6.conf.all.forwarding=0 (only if this host routes no IPv6)"
                    .to_owned(),
            ],
            disable_auto.clone(),
            disable_note,
        );
    }

    let explanation = format!(
        "IPv6 is enabled on {br}: the host has a link-local address there that every guest \
         can reach (sshd and anything else listening on ::), and it takes IPv6 packets that \
         guests address to its MAC. Linux is a weak host for IPv6 too, so a packet to one of \
         the host's storage or management IPv6 addresses is delivered to the host's \
         services even though it came from the guest bridge. No sysctl filters that for \
         IPv6; disable_ipv6 on the bridge makes the host drop IPv6 from the bridge entirely \
         (net/ipv6/ip6_input.c ip6_rcv_core) without affecting the guests' own IPv6, which \
         the bridge switches at layer 2."
    );
    c.push(
        "bridge-ipv6",
        if targets6 || fwd_all || force {
            Severity::High
        } else {
            Severity::Medium
        },
        format!("the host's IPv6 stack is reachable from guests on {br}"),
        c.obs(&[v6(&br, "disable_ipv6")]),
        &explanation,
        vec![disable.command()],
        disable_auto,
        disable_note,
    );
}

fn accept_ra(c: &mut Ctx<'_>) {
    let br = c.name().to_owned();
    if !c.snap.ipv6_on(&br) {
        return;
    }
    let ra = c.snap.v6(&br, "accept_ra").unwrap_or(0);
    let fwd_dev = c.snap.v6(&br, "forwarding") == Some(1);
    // ipv6_accept_ra(): a router (forwarding) only takes RAs with accept_ra=2.
    if (ra == 1 && !fwd_dev) || ra >= 2 {
        let change = SysctlChange::new(&v6(&br, "accept_ra"), 0);
        c.push(
            "ipv6-accept-ra",
            Severity::Medium,
            format!("the host accepts router advertisements from guests on {br}"),
            c.obs(&[v6(&br, "accept_ra"), v6(&br, "forwarding")]),
            &format!(
                "The host listens to IPv6 router advertisements on {br}. Any guest can send \
                 one: the host then installs a default route through that guest (its IPv6 \
                 traffic, updates and DNS included, flows to the guest) and, with autoconf, \
                 gives the bridge a global address, which makes the bridge reachable and \
                 routable like an address configured by hand. A host does not need router \
                 advertisements from its guests."
            ),
            vec![change.command()],
            vec![change],
            "applied: the host takes no configuration from its guests",
        );
    }
}

fn proxy_ndp(c: &mut Ctx<'_>) {
    let br = c.name().to_owned();
    if !c.snap.ipv6_on(&br) {
        return;
    }
    let fwd_dev = c.snap.v6(&br, "forwarding") == Some(1);
    let proxy_all = c.snap.v6("all", "proxy_ndp") == Some(1);
    let proxy_dev = c.snap.v6(&br, "proxy_ndp") == Some(1);
    if proxy_all || proxy_dev {
        let change = SysctlChange::new(&v6(&br, "proxy_ndp"), 0);
        let (auto, note) = if proxy_all {
            (Vec::new(), NOT_AUTO_ALL)
        } else {
            (
                vec![change.clone()],
                "applied: only the bridge's value changes",
            )
        };
        c.push(
            "proxy-ndp",
            if fwd_dev {
                Severity::Medium
            } else {
                Severity::Info
            },
            format!("IPv6 neighbour proxying is on for {br}"),
            c.obs(&[v6("all", "proxy_ndp"), v6(&br, "proxy_ndp")]),
            &format!(
                "With proxy_ndp (conf.all or {br}) and forwarding on the bridge, the host \
                 answers neighbour solicitations from guests for every address in its proxy \
                 table with its own MAC (net/ipv6/ndisc.c ndisc_recv_ns), inviting guests \
                 to send traffic for those addresses, which may sit on the storage or \
                 management networks, into the host."
            ),
            vec![
                change.command(),
                "sysctl -w net.ipv6.conf.all.proxy_ndp=0".to_owned(),
            ],
            auto,
            note,
        );
    }
}

/// A good `arp_ignore`: 1 and 2 answer only for addresses on the incoming interface, 8 never
/// answers. 0, 3 (scope host only: storage addresses are global) and the reserved 4..7
/// answer for every address of the host (`net/ipv4/arp.c` `arp_ignore`).
const fn arp_ignore_ok(v: i64) -> bool {
    matches!(v, 1 | 2 | 8)
}

fn arp_ignore(c: &mut Ctx<'_>) {
    let br = c.name().to_owned();
    let targets = c.snap.other_targets(c.br, true);

    let all = c.snap.v4("all", "arp_ignore").unwrap_or(0);
    let dev = c.snap.v4(&br, "arp_ignore").unwrap_or(0);
    let eff = all.max(dev); // IN_DEV_ARP_IGNORE is IN_DEV_MAXCONF
    if !arp_ignore_ok(eff) {
        // The interface value can only raise the effective one.
        let target = [1, 8]
            .into_iter()
            .find(|t| arp_ignore_ok(all.max(*t)) && (*t != 8 || !c.has_v4));
        let (auto, note, fix) = match target {
            Some(t) => {
                let ch = SysctlChange::new(&v4(&br, "arp_ignore"), t);
                (
                    vec![ch.clone()],
                    "applied: the host still answers ARP for addresses on the \
                     bridge itself, so guests that use the host on purpose keep working",
                    vec![ch.command()],
                )
            }
            None => (
                Vec::new(),
                "not applied: conf.all.arp_ignore is larger than any value that \
                 keeps the bridge's own address answering; lowering `all` changes every \
                 interface",
                vec!["sysctl -w net.ipv4.conf.all.arp_ignore=1".to_owned()],
            ),
        };
        let mut observed = c.obs(&[v4("all", "arp_ignore"), v4(&br, "arp_ignore")]);
        observed.extend(targets.iter().map(|a| Observed {
            what: "answered for".to_owned(),
            value: format!("{} ({})", a.addr, a.ifname),
        }));
        c.push(
            "arp-ignore",
            if targets.is_empty() {
                Severity::Info
            } else {
                Severity::High
            },
            format!("the host answers ARP on {br} for all its addresses"),
            observed,
            &format!(
                "arp_ignore is {eff} on {br} (the larger of conf.all and the interface): the \
                 host answers an ARP request arriving on the guest bridge for any of its \
                 addresses on any interface. A guest asks who has the storage or \
                 management address and learns that the host is there and which MAC to \
                 aim at. An ARP probe (sender address 0.0.0.0) is answered even when the \
                 reverse-path filter would refuse an ordinary request (net/ipv4/arp.c \
                 arp_process). With 1 the host answers only for addresses on the bridge \
                 itself."
            ),
            fix,
            auto,
            note,
        );
    }
}

fn arp_filter(c: &mut Ctx<'_>) {
    let br = c.name().to_owned();
    // IN_DEV_ARPFILTER is IN_DEV_ORCONF.
    let filt = c.snap.v4("all", "arp_filter") == Some(1) || c.snap.v4(&br, "arp_filter") == Some(1);
    if !filt {
        let ch = SysctlChange::new(&v4(&br, "arp_filter"), 1);
        c.push(
            "arp-filter",
            Severity::Info,
            format!("arp_filter is off on {br}"),
            c.obs(&[v4("all", "arp_filter"), v4(&br, "arp_filter")]),
            &format!(
                "With arp_filter the host answers an ARP request on {br} only if it would \
                 route its reply to the asker out of the bridge (net/ipv4/arp.c \
                 arp_filter). It is a second line behind arp_ignore: a guest whose source \
                 address is not routed through the bridge gets no answer at all."
            ),
            vec![ch.command()],
            vec![ch],
            "applied: only the bridge's value changes, and guests in a subnet \
             routed through the bridge are still answered",
        );
    }
}

fn arp_announce(c: &mut Ctx<'_>) {
    let br = c.name().to_owned();
    let all = c.snap.v4("all", "arp_announce").unwrap_or(0);
    let dev = c.snap.v4(&br, "arp_announce").unwrap_or(0);
    let eff = all.max(dev); // IN_DEV_ARP_ANNOUNCE is IN_DEV_MAXCONF
    if eff < 2 {
        let ch = SysctlChange::new(&v4(&br, "arp_announce"), 2);
        c.push(
            "arp-announce",
            if c.has_v4 {
                Severity::Medium
            } else {
                Severity::Info
            },
            format!("ARP requests on {br} may carry the host's other addresses"),
            c.obs(&[v4("all", "arp_announce"), v4(&br, "arp_announce")]),
            &format!(
                "arp_announce is {eff} on {br}: when the host resolves a guest's address it \
                 may put the source of the packet that triggered it, any of its addresses, \
                 into the ARP request (net/ipv4/arp.c arp_solicit). Guests see the storage \
                 or management address in it and learn what to aim at. With 2 the host uses \
                 an address of the bridge's own subnet. This only happens while the host \
                 sends IPv4 on the bridge, which needs an address or a route there."
            ),
            vec![ch.command()],
            vec![ch],
            "applied: it only chooses which of the host's addresses goes into ARP \
             requests on the bridge",
        );
    }
}

fn unicast_in_l2_multicast(c: &mut Ctx<'_>) {
    let br = c.name().to_owned();
    let text = |fam: &str, src: &str| {
        format!(
            "The host accepts a unicast {fam} packet that arrives in an L2 broadcast or \
             multicast frame on {br}. Such a frame reaches the host whatever MAC filtering \
             sits in front of it: a guest sends its packet for the host's storage or \
             management address to ff:ff:ff:ff:ff:ff and the host delivers or routes it. \
             RFC 1122 3.3.6 says to drop these, and the kernel does with \
             drop_unicast_in_l2_multicast ({src})."
        )
    };
    // IPv4: IN_DEV_ORCONF(DROP_UNICAST_IN_L2_MULTICAST) in ip_rcv_finish_core.
    let on4 = c.snap.v4("all", "drop_unicast_in_l2_multicast") == Some(1)
        || c.snap.v4(&br, "drop_unicast_in_l2_multicast") == Some(1);
    if !on4 {
        let ch = SysctlChange::new(&v4(&br, "drop_unicast_in_l2_multicast"), 1);
        c.push(
            "ipv4-drop-unicast-in-l2-multicast",
            Severity::Medium,
            format!("IPv4 unicast inside L2 broadcast is accepted on {br}"),
            c.obs(&[
                v4("all", "drop_unicast_in_l2_multicast"),
                v4(&br, "drop_unicast_in_l2_multicast"),
            ]),
            &text("IPv4", "conf.all or the interface, net/ipv4/ip_input.c"),
            vec![ch.command()],
            vec![ch],
            "applied: legitimate senders never wrap unicast IP in broadcast frames",
        );
    }
    // IPv6 reads the interface's value only (ip6_rcv_core), `all` does not count.
    if c.snap.ipv6_on(&br) && c.snap.v6(&br, "drop_unicast_in_l2_multicast") != Some(1) {
        let ch = SysctlChange::new(&v6(&br, "drop_unicast_in_l2_multicast"), 1);
        c.push(
            "ipv6-drop-unicast-in-l2-multicast",
            Severity::Medium,
            format!("IPv6 unicast inside L2 multicast is accepted on {br}"),
            c.obs(&[v6(&br, "drop_unicast_in_l2_multicast")]),
            &text(
                "IPv6",
                "the interface's value only, conf.all does not count, net/ipv6/ip6_input.c",
            ),
            vec![ch.command()],
            vec![ch],
            "applied: legitimate senders never wrap unicast IP in multicast frames",
        );
    }
}

fn accept_local(c: &mut Ctx<'_>) {
    let br = c.name().to_owned();
    let all = c.snap.v4("all", "accept_local") == Some(1);
    let dev = c.snap.v4(&br, "accept_local") == Some(1);
    if !(all || dev) {
        return;
    }
    let ch = SysctlChange::new(&v4(&br, "accept_local"), 0);
    let (auto, note) = if all {
        (Vec::new(), NOT_AUTO_ALL)
    } else {
        (vec![ch.clone()], "applied: only the bridge's value changes")
    };
    c.push(
        "accept-local",
        Severity::Medium,
        format!("the host accepts its own addresses as source on {br}"),
        c.obs(&[v4("all", "accept_local"), v4(&br, "accept_local")]),
        &format!(
            "accept_local (conf.all or {br}; IN_DEV_ACCEPT_LOCAL is IN_DEV_ORCONF) lets a \
             packet from the guest bridge carry one of the host's own addresses as its \
             source (net/ipv4/fib_frontend.c fib_validate_source). A guest forges the \
             host's storage or management address and passes checks that trust the host \
             itself: service ACLs, firewall rules written for local traffic."
        ),
        vec![
            ch.command(),
            "sysctl -w net.ipv4.conf.all.accept_local=0".to_owned(),
        ],
        auto,
        note,
    );
}

fn proxy(c: &mut Ctx<'_>) {
    let br = c.name().to_owned();
    let all = c.snap.v4("all", "proxy_arp") == Some(1);
    let dev = c.snap.v4(&br, "proxy_arp") == Some(1);
    if !(all || dev) {
        return;
    }
    let ch = SysctlChange::new(&v4(&br, "proxy_arp"), 0);
    let (auto, note) = if all {
        (Vec::new(), NOT_AUTO_ALL)
    } else {
        (vec![ch.clone()], "applied: only the bridge's value changes")
    };
    c.push(
        "proxy-arp",
        if c.fwd4 {
            Severity::High
        } else {
            Severity::Info
        },
        format!("proxy ARP is on for {br}"),
        c.obs(&[
            v4("all", "proxy_arp"),
            v4(&br, "proxy_arp"),
            v4(&br, "forwarding"),
        ]),
        &format!(
            "With proxy_arp (conf.all or {br}) and forwarding on the bridge, the host \
             answers ARP from guests with its own MAC for every address it routes through \
             another interface (net/ipv4/arp.c arp_fwd_proxy), the storage and management \
             networks included. Guests are told to send that traffic to the host, which \
             routes it: no guessing of MACs needed. Without forwarding it has no effect."
        ),
        vec![
            ch.command(),
            "sysctl -w net.ipv4.conf.all.proxy_arp=0".to_owned(),
        ],
        auto,
        note,
    );
}

fn source_route(c: &mut Ctx<'_>) {
    let br = c.name().to_owned();
    let all = c.snap.v4("all", "accept_source_route") == Some(1);
    let dev = c.snap.v4(&br, "accept_source_route") == Some(1);
    if !(all && dev) {
        return;
    }
    let ch = SysctlChange::new(&v4(&br, "accept_source_route"), 0);
    c.push(
        "ipv4-source-route",
        if c.fwd4 {
            Severity::High
        } else {
            Severity::Medium
        },
        format!("{br} accepts IPv4 source-routed packets"),
        c.obs(&[
            v4("all", "accept_source_route"),
            v4(&br, "accept_source_route"),
        ]),
        &format!(
            "accept_source_route is on in conf.all and on {br} (IN_DEV_SOURCE_ROUTE is \
             IN_DEV_ANDCONF): a guest sends a packet to an address of the host it may reach \
             (the bridge's own) with a loose or strict source route option naming a storage \
             or management address, and the host rewrites the destination and forwards it \
             there (net/ipv4/ip_options.c ip_options_rcv_srr). guard drops such packets \
             (deny_srcroute); turning the option off closes it without guard."
        ),
        vec![
            ch.command(),
            "sysctl -w net.ipv4.conf.all.accept_source_route=0".to_owned(),
        ],
        vec![ch],
        "applied: the bridge's value alone turns it off (both must be on)",
    );
}

fn segment_routing(c: &mut Ctx<'_>) {
    let br = c.name().to_owned();
    if !c.snap.ipv6_on(&br) {
        return;
    }
    for (knob, what, id) in [
        (
            "seg6_enabled",
            "segment routing headers (SRv6)",
            "ipv6-segment-routing",
        ),
        (
            "rpl_seg_enabled",
            "RPL source routing headers",
            "ipv6-rpl-source-route",
        ),
    ] {
        let all = c.snap.v6("all", knob) == Some(1);
        let dev = c.snap.v6(&br, knob) == Some(1);
        if !(all && dev) {
            continue;
        }
        let ch = SysctlChange::new(&v6(&br, knob), 0);
        c.push(
            id,
            Severity::High,
            format!("{br} processes IPv6 {what}"),
            c.obs(&[v6("all", knob), v6(&br, knob)]),
            &format!(
                "{knob} is on in conf.all and on {br} (the kernel takes the minimum of the \
                 two, net/ipv6/exthdrs.c): a guest sends a packet to an address of the host \
                 it may reach with a routing header whose next segment is a storage or \
                 management address, and the host rewrites the destination and forwards it. \
                 guard drops routing headers with segments left (deny_srcroute); turning \
                 the option off closes it without guard."
            ),
            vec![
                ch.command(),
                format!("sysctl -w net.ipv6.conf.all.{knob}=0"),
            ],
            vec![ch],
            "applied: the bridge's value alone turns it off (both must be on)",
        );
    }
}

fn guard_hooks(c: &mut Ctx<'_>) {
    let br = c.name().to_owned();
    let ns = c
        .snap
        .netns
        .as_deref()
        .map_or(String::new(), |n| format!("--netns {n} "));
    let Some(guard) = &c.br.guard else {
        if c.br.ports.is_empty() {
            return;
        }
        let observed =
            c.br.ports
                .iter()
                .map(|p| Observed {
                    what: "unguarded port".to_owned(),
                    value: p.name.clone(),
                })
                .collect();
        c.push(
            "guard-not-attached",
            Severity::Medium,
            format!("guard is not attached to {br}"),
            observed,
            &format!(
                "Nothing judges the guests' frames before the host stack sees them. The \
                 sysctls above narrow what the host accepts, but a guest can still reach \
                 the host's services on any address the bridge holds, and every setting \
                 here is one `sysctl -w` or libvirt restart away from being undone. guard \
                 drops frames aimed at the host's MACs whose destination is in the \
                 management or storage networks on every port of {br}."
            ),
            vec![
                format!("guardctl {ns}attach {br}"),
                format!("systemctl enable --now guardctl@{br} (the agent follows new ports)"),
            ],
            Vec::new(),
            "not applied: attaching is not a sysctl; run the command",
        );
        return;
    };
    let ids: BTreeSet<u32> = guard.prog_ids.iter().copied().collect();
    let mut observed = Vec::new();
    for p in &c.br.ports {
        let hooked = p
            .xdp_prog
            .iter()
            .chain(&p.tcx_progs)
            .chain(&p.tc_progs)
            .any(|id| ids.contains(id));
        if hooked {
            continue;
        }
        let why = if p.in_state {
            "listed in guard's state, but no guard program is on its XDP, TCX or tc hook"
        } else {
            "not in guard's state and no guard program on it (it joined after the attach)"
        };
        observed.push(Observed {
            what: p.name.clone(),
            value: why.to_owned(),
        });
    }
    if !guard.state_present {
        observed.push(Observed {
            what: "state file".to_owned(),
            value: "missing: pins exist but /run/guard has no state (reboot of /run?)".to_owned(),
        });
    }
    if observed.is_empty() {
        return;
    }
    c.push(
        "port-unguarded",
        Severity::High,
        format!("guard is attached to {br}, but not on every port"),
        observed,
        &format!(
            "guard's pinned state for {br} exists, so the bridge looks protected, but the \
             ports listed carry no guard program: a guest behind them is judged by nobody. \
             This happens when a VM starts after `guardctl attach` and the agent is not \
             running, or when someone removed the hook by hand."
        ),
        vec![
            format!("guardctl {ns}attach {br} (hooks the missing ports, keeps the rest)"),
            format!("systemctl enable --now guardctl@{br}"),
        ],
        Vec::new(),
        "not applied: attaching is not a sysctl; run the command",
    );
}

fn bridge_nf(snap: &Snapshot, out: &mut Vec<Finding>) {
    let v4 = snap.get(NF_CALL_IPTABLES);
    let v6 = snap.get(NF_CALL_IP6TABLES);
    // The files exist only while br_netfilter is loaded.
    if v4 != Some(1) && v6 != Some(1) {
        return;
    }
    out.push(Finding {
        id: "bridge-nf-call",
        severity: Severity::Medium,
        bridge: None,
        title: "bridged guest traffic goes through the host's iptables and conntrack".to_owned(),
        observed: vec![
            snap.observed(NF_CALL_IPTABLES),
            snap.observed(NF_CALL_IP6TABLES),
        ],
        explanation: "br_netfilter is loaded and bridge-nf-call-iptables/ip6tables is 1: \
            every IPv4/IPv6 frame the bridge switches between guests passes the host's \
            iptables chains and connection tracking as if the host routed it. Guests share \
            the host's conntrack table and can fill it (the host then drops new \
            connections, storage sessions included), and NAT rules written for the host \
            (DNAT of published ports, masquerading) apply to guest traffic and can steer a \
            guest's frames into the host."
            .to_owned(),
        fix: vec![
            "sysctl -w net.bridge.bridge-nf-call-iptables=0".to_owned(),
            "sysctl -w net.bridge.bridge-nf-call-ip6tables=0".to_owned(),
        ],
        auto_fix: Vec::new(),
        fix_note: "not applied: libvirt's nwfilter, Docker and Kubernetes need it \
            on; turn it off only if nothing on this host filters bridged traffic with \
            iptables"
            .to_owned(),
    });
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use super::*;

    const BR: &str = "br-guest";

    /// A fresh libvirt-like namespace: kernel defaults, forwarding on, `br_netfilter` loaded.
    fn fresh(bridge_addr: Option<IpAddr>) -> Snapshot {
        let mut s = Snapshot::default();
        for p in sysctl_paths(&[BR]) {
            s.sysctls.insert(p, 0);
        }
        // libvirt turns both forwarding switches on; IPv6's `all` is copied to every
        // interface (addrconf_fixup_forwarding), which makes accept_ra=1 inert there.
        for dev in ["all", "default", BR] {
            s.sysctls.insert(v4(dev, "forwarding"), 1);
            s.sysctls.insert(v6(dev, "forwarding"), 1);
            s.sysctls.insert(v6(dev, "accept_ra"), 1);
        }
        s.sysctls.insert(IP_FORWARD.into(), 1);
        s.sysctls.insert(NF_CALL_IPTABLES.into(), 1);
        s.sysctls.insert(NF_CALL_IP6TABLES.into(), 1);
        s.addrs
            .push(addr(3, "st0", IpAddr::V4(Ipv4Addr::new(10, 77, 0, 1)), 24));
        s.addrs
            .push(addr(1, "lo", IpAddr::V4(Ipv4Addr::LOCALHOST), 8));
        s.addrs.push(addr(
            2,
            BR,
            IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1)),
            64,
        ));
        if let Some(a) = bridge_addr {
            s.addrs.push(addr(2, BR, a, 24));
        }
        s.bridges.push(BridgeView {
            name: BR.into(),
            ifindex: 2,
            ports: vec![PortView {
                name: "vg0".into(),
                ifindex: 4,
                ..PortView::default()
            }],
            guard: None,
        });
        s
    }

    fn addr(ifindex: u32, ifname: &str, addr: IpAddr, prefix_len: u8) -> HostAddr {
        HostAddr {
            ifindex,
            ifname: ifname.into(),
            addr,
            prefix_len,
            peer: None,
        }
    }

    fn ids(r: &Report) -> BTreeSet<&'static str> {
        r.findings.iter().map(|f| f.id).collect()
    }

    fn find<'a>(r: &'a Report, id: &str) -> &'a Finding {
        r.findings
            .iter()
            .find(|f| f.id == id)
            .unwrap_or_else(|| panic!("no finding {id} in {:?}", ids(r)))
    }

    fn apply_to(s: &mut Snapshot, changes: &[SysctlChange]) {
        for c in changes {
            s.sysctls.insert(c.path.clone(), c.value);
        }
    }

    #[test]
    fn source_routing_needs_both_values_and_the_bridge_fix_suffices() {
        let mut s = fresh(None);
        s.sysctls.insert(v4("all", "accept_source_route"), 1);
        s.sysctls.insert(v4(BR, "accept_source_route"), 0);
        s.sysctls.insert(v6("all", "seg6_enabled"), 1);
        assert!(!ids(&evaluate(&s)).contains("ipv4-source-route"));
        assert!(!ids(&evaluate(&s)).contains("ipv6-segment-routing"));
        s.sysctls.insert(v4(BR, "accept_source_route"), 1);
        s.sysctls.insert(v6(BR, "seg6_enabled"), 1);
        let r = evaluate(&s);
        assert_eq!(find(&r, "ipv4-source-route").severity, Severity::High);
        assert_eq!(find(&r, "ipv6-segment-routing").severity, Severity::High);
        let mut fixed = s.clone();
        apply_to(&mut fixed, &find(&r, "ipv4-source-route").auto_fix);
        apply_to(&mut fixed, &find(&r, "ipv6-segment-routing").auto_fix);
        let after = ids(&evaluate(&fixed));
        assert!(!after.contains("ipv4-source-route") && !after.contains("ipv6-segment-routing"));
    }

    #[test]
    fn fresh_host_findings_and_exit_status() {
        let r = evaluate(&fresh(None));
        let expect = [
            "ipv4-forwarding",
            "rp-filter",
            "bridge-ipv6",
            "ipv6-forwarding",
            "arp-ignore",
            "arp-filter",
            "arp-announce",
            "ipv4-drop-unicast-in-l2-multicast",
            "ipv6-drop-unicast-in-l2-multicast",
            "guard-not-attached",
            "bridge-nf-call",
        ];
        assert_eq!(ids(&r), expect.into_iter().collect());
        assert_eq!(r.exit_status(), EXIT_HIGH);
        assert_eq!(find(&r, "arp-ignore").severity, Severity::High);
        // No address on the bridge: forwarding off there is safe and applied.
        assert_eq!(
            find(&r, "ipv4-forwarding").auto_fix,
            vec![SysctlChange::new(&v4(BR, "forwarding"), 0)]
        );
        // Findings come worst first.
        assert!(
            r.findings
                .windows(2)
                .all(|w| w[0].severity >= w[1].severity)
        );
    }

    #[test]
    fn safe_fixes_leave_only_what_needs_a_person() {
        let mut s = fresh(None);
        let r = evaluate(&s);
        apply_to(&mut s, &r.safe_changes());
        let after = evaluate(&s);
        assert_eq!(
            ids(&after),
            [
                "ipv4-forwarding-default",
                "guard-not-attached",
                "bridge-nf-call"
            ]
            .into_iter()
            .collect()
        );
        assert_eq!(after.exit_status(), EXIT_MEDIUM);
        // `all` is never written.
        assert!(r.safe_changes().iter().all(|c| c.path.contains(BR)));
    }

    #[test]
    fn bridge_with_address_keeps_forwarding() {
        let mut s = fresh(Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))));
        let r = evaluate(&s);
        assert_eq!(find(&r, "bridge-address").severity, Severity::High);
        assert!(find(&r, "ipv4-forwarding").auto_fix.is_empty());
        apply_to(&mut s, &r.safe_changes());
        let after = evaluate(&s);
        assert!(ids(&after).contains("ipv4-forwarding"));
        assert!(!ids(&after).contains("arp-ignore"));
        assert_eq!(after.exit_status(), EXIT_HIGH);
    }

    #[test]
    fn max_and_or_combinations() {
        // rp_filter: all=2 keeps the bridge loose whatever its value, so no auto-fix.
        let mut s = fresh(None);
        s.sysctls.insert(v4("all", "rp_filter"), 2);
        s.sysctls.insert(v4(BR, "rp_filter"), 1);
        let f = find(&evaluate(&s), "rp-filter").clone();
        assert_eq!(f.severity, Severity::Info); // loose without an address drops too
        assert!(f.auto_fix.is_empty());
        // all=1 is strict for the bridge even with the bridge at 0.
        s.sysctls.insert(v4("all", "rp_filter"), 1);
        s.sysctls.insert(v4(BR, "rp_filter"), 0);
        assert!(!ids(&evaluate(&s)).contains("rp-filter"));

        // arp_ignore: all=1 covers the bridge; all=3 answers for global addresses and
        // only 8 on the bridge (which has no address) fixes it.
        s.sysctls.insert(v4("all", "arp_ignore"), 1);
        assert!(!ids(&evaluate(&s)).contains("arp-ignore"));
        s.sysctls.insert(v4("all", "arp_ignore"), 3);
        let f = find(&evaluate(&s), "arp-ignore").clone();
        assert_eq!(
            f.auto_fix,
            vec![SysctlChange::new(&v4(BR, "arp_ignore"), 8)]
        );

        // arp_filter and accept_local are OR: `all` alone turns them on.
        s.sysctls.insert(v4("all", "arp_filter"), 1);
        assert!(!ids(&evaluate(&s)).contains("arp-filter"));
        s.sysctls.insert(v4("all", "accept_local"), 1);
        let f = find(&evaluate(&s), "accept-local").clone();
        assert!(f.auto_fix.is_empty(), "only `all` can undo it");

        // IPv6 drop_unicast_in_l2_multicast: `all` does not count.
        s.sysctls
            .insert(v6("all", "drop_unicast_in_l2_multicast"), 1);
        assert!(ids(&evaluate(&s)).contains("ipv6-drop-unicast-in-l2-multicast"));
    }

    #[test]
    fn accept_ra_only_counts_where_the_kernel_honours_it() {
        let mut s = fresh(None);
        assert!(!ids(&evaluate(&s)).contains("ipv6-accept-ra"));
        s.sysctls.insert(v6(BR, "accept_ra"), 2);
        assert!(ids(&evaluate(&s)).contains("ipv6-accept-ra"));
        for dev in ["all", BR] {
            s.sysctls.insert(v6(dev, "forwarding"), 0);
        }
        s.sysctls.insert(v6(BR, "accept_ra"), 1);
        let r = evaluate(&s);
        assert!(ids(&r).contains("ipv6-accept-ra"));
        assert!(!ids(&r).contains("ipv6-forwarding"));
        // IPv6 off on the bridge: none of the IPv6 findings apply.
        s.sysctls.insert(v6(BR, "disable_ipv6"), 1);
        let r = evaluate(&s);
        assert!(ids(&r).iter().all(|id| !id.contains("ipv6")));
    }

    #[test]
    fn guard_ports() {
        let mut s = fresh(None);
        s.bridges[0].guard = Some(GuardView {
            prog_ids: vec![7, 8],
            state_present: true,
        });
        s.bridges[0].ports[0].xdp_prog = Some(7);
        s.bridges[0].ports.push(PortView {
            name: "vg1".into(),
            ifindex: 5,
            xdp_prog: Some(99), // someone else's program
            ..PortView::default()
        });
        s.bridges[0].ports.push(PortView {
            name: "vg2".into(),
            ifindex: 6,
            tc_progs: vec![8],
            ..PortView::default()
        });
        let r = evaluate(&s);
        assert!(!ids(&r).contains("guard-not-attached"));
        let f = find(&r, "port-unguarded");
        assert_eq!(f.severity, Severity::High);
        let ports: Vec<&str> = f.observed.iter().map(|o| o.what.as_str()).collect();
        assert_eq!(ports, ["vg1"]);
    }

    #[test]
    fn sysctl_names() {
        assert_eq!(
            sysctl_name("net/ipv4/conf/br-guest/rp_filter"),
            "net.ipv4.conf.br-guest.rp_filter"
        );
        assert_eq!(
            sysctl_name("net/ipv4/conf/br0.100/rp_filter"),
            "net/ipv4/conf/br0.100/rp_filter"
        );
    }

    #[test]
    fn reads_and_applies_under_a_root() {
        let root = std::env::temp_dir().join(format!("guard-audit-unit-{}", std::process::id()));
        let path = v4(BR, "arp_ignore");
        fs::create_dir_all(root.join(&path).parent().expect("parent")).expect("mkdir");
        fs::write(root.join(&path), "0\n").expect("write");
        assert_eq!(read_sysctl(&root, &path).expect("read"), Some(0));
        assert_eq!(read_sysctl(&root, "net/nope").expect("read"), None);
        let applied = apply(&root, &[SysctlChange::new(&path, 1)]).expect("apply");
        assert_eq!(applied[0].before, Some(0));
        assert_eq!(applied[0].after, 1);
        fs::write(root.join(&path), "x\n").expect("write");
        assert!(matches!(
            read_sysctl(&root, &path),
            Err(AuditError::ParseSysctl { .. })
        ));
        fs::remove_dir_all(&root).expect("cleanup");
    }
}
