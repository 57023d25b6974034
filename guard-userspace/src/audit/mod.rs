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
//!
//! Layout: `snapshot` (what the findings are computed from), `collect` (reading it from the
//! kernel), `checks` (one function per topic, turning a snapshot into findings), `id` (the
//! stable finding ids, documented in docs/audit.md), `apply` (`--fix`).

mod apply;
mod checks;
mod collect;
mod id;
mod snapshot;
#[cfg(test)]
mod tests;

use std::{collections::BTreeSet, fmt, io, path::PathBuf};

use aya::programs::ProgramError;
use serde::Serialize;
use thiserror::Error;

pub use self::{
    apply::{Applied, apply},
    collect::{collect, read_sysctl, read_sysctls, select_bridges, tc_progs, tcx_progs, xdp_progs},
    id::FindingId,
    snapshot::{BridgeView, GuardView, PortView, Snapshot, sysctl_paths},
};
use crate::error::GuardError;

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
    pub id: FindingId,
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

/// Builds the report from a snapshot.
#[must_use]
pub fn evaluate(snap: &Snapshot) -> Report {
    let mut findings = Vec::new();
    for br in &snap.bridges {
        checks::bridge_findings(snap, br, &mut findings);
    }
    checks::bridge_nf(snap, &mut findings);
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
