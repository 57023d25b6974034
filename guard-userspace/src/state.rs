//! The desired state of one attached bridge, and what bpffs cannot hold about it: the options
//! it was attached with, the live edits made since (`guardctl rules add/del`), what was
//! discovered, class names, port slots and hook modes, what failed to apply, and the agent
//! that follows it. Written atomically (temp file + rename) after every change, and only by
//! the holder of the bridge's lock (`pins::BridgeLock`): every verb and the agent read it
//! afresh under that lock before they change anything, so nobody overwrites another's change.
//!
//! Precedence: the options are replaced by a re-`attach` (or a SIGHUP re-read of the
//! configuration file); the live edits stay until `guardctl rules del`/`rules reset`, a
//! `rules save` (which moves them into the configuration file) or `detach`. An edit overrides
//! a configured or discovered rule for the same prefix (it was refused at the time it was made
//! if it contradicted one, unless `--replace` said so).

use std::{collections::BTreeMap, fs, io};

use serde::{Deserialize, Serialize};

pub use crate::options::{Edits, HookMode, Options};
use crate::{
    error::{GuardError, Result},
    pins::Location,
    policy::{Classes, Policy},
};

/// One hooked interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortState {
    pub name: String,
    /// Counter slot (`1..MAX_PORT_SLOTS`).
    pub slot: u32,
    pub mode: HookMode,
    /// Why the mode is not the one asked for (a fallback), if so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
    /// The bridge device itself (`--bridge-hook`), not a port.
    #[serde(default)]
    pub is_bridge: bool,
}

/// The `guardctl run` process following a bridge. The start time tells a live agent from a
/// later process that reuses its pid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRecord {
    pub pid: u32,
    /// Field 22 of `/proc/<pid>/stat`: clock ticks after boot.
    pub start_time: u64,
}

impl AgentRecord {
    /// This process.
    #[must_use]
    pub fn current() -> Option<Self> {
        let pid = std::process::id();
        Some(Self {
            pid,
            start_time: process_start_time(pid)?,
        })
    }

    /// Is this agent still running (the same process, not a reused pid)?
    #[must_use]
    pub fn is_alive(&self) -> bool {
        process_start_time(self.pid) == Some(self.start_time)
    }
}

/// Field 22 (`starttime`) of `/proc/<pid>/stat`, `None` for a process that has exited. The command name (field 2) may hold spaces
/// and parentheses, so the fields are counted from its last `)`.
fn process_start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // Field 3, the state: a zombie (or dead) process has exited, though its parent has not
    // reaped it yet.
    if matches!(fields.next(), Some("Z" | "X" | "x")) {
        return None;
    }
    // Field 22 is the 19th after field 3.
    fields.nth(18)?.parse().ok()
}

/// What a reconcile applies, one item at a time: an item that fails is reported and the next
/// ones still run.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "item")]
pub enum Item {
    /// The global flags (monitor, strict MAC, event rate, the route check) and tunnel ports.
    GlobalConfig,
    /// The host MAC set.
    HostMacs,
    /// The prefixes in the tries.
    Policy,
    /// The exceptions (scoped allow rules) in their tries.
    Exceptions,
    /// One port's hook and port-table entry.
    Port { name: String, ifindex: u32 },
    /// The interfaces the route check lets guests be routed out of (bridge, uplinks).
    Egress,
    /// The reply recorder on the bridge's egress.
    Replies,
}

impl std::fmt::Display for Item {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::GlobalConfig => f.write_str("global config"),
            Self::HostMacs => f.write_str("host MAC set"),
            Self::Policy => f.write_str("policy"),
            Self::Exceptions => f.write_str("exceptions"),
            Self::Port { name, .. } => write!(f, "port {name}"),
            Self::Egress => f.write_str("uplinks"),
            Self::Replies => f.write_str("reply recorder"),
        }
    }
}

/// An item the last reconcile could not apply; what was in force before stays.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    #[serde(flatten)]
    pub item: Item,
    pub error: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub bridge: String,
    pub netns: Option<String>,
    /// Unix seconds of the first attach.
    pub since: u64,
    /// Unix seconds of the last change.
    pub updated: u64,
    /// Identifies the eBPF object the pinned programs came from.
    pub object_id: String,
    pub options: Options,
    /// Live edits, kept across reconciles, agent restarts and re-attaches.
    #[serde(default)]
    pub edits: Edits,
    /// The policy in force (explicit or discovered).
    pub policy: Policy,
    pub classes: Classes,
    /// Hooked interfaces by ifindex.
    pub ports: BTreeMap<u32, PortState>,
    /// The host MACs in force, with why (`aa:bb:..` -> reason).
    pub host_macs: BTreeMap<String, String>,
    /// What the last reconcile could not apply.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<Failure>,
    /// `guardctl detach` is removing this bridge: the agent must not reconcile again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub detaching: bool,
    /// The agent following this bridge, while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentRecord>,
    /// Interfaces marked as allowed egress of the route check (the bridge and the uplinks),
    /// by ifindex, with their names.
    #[serde(default)]
    pub egress: BTreeMap<u32, String>,
    /// The UDP tunnel ports in force.
    #[serde(default)]
    pub tunnel_ports: Vec<u16>,
    /// The exceptions in force, as the last reconcile resolved them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exceptions: Vec<crate::exception::ExceptionState>,
    /// The reply recorder's hook on the bridge's egress, when replies are on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_hook: Option<ReplyHook>,
}

/// Where `guard_reply` is hooked: the bridge's TC egress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyHook {
    pub ifindex: u32,
    pub name: String,
    /// TCX, or `tc` (a `cls_bpf` filter) before Linux 6.6.
    pub mode: HookMode,
}

impl State {
    pub fn load(loc: &Location) -> Result<Option<Self>> {
        let path = loc.state_file();
        match fs::read(&path) {
            Ok(bytes) => {
                let mut state: Self = serde_json::from_slice(&bytes)
                    .map_err(|source| GuardError::StateFormat { path, source })?;
                // Live edits of a state written by an earlier version.
                let o = &mut state.options;
                state.edits.added.append(&mut o.added);
                state.edits.removed.append(&mut o.removed);
                Ok(Some(state))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(GuardError::State { path, source }),
        }
    }

    /// The agent recorded in the state, if it is still running.
    #[must_use]
    pub fn live_agent(&self) -> Option<AgentRecord> {
        self.agent.filter(AgentRecord::is_alive)
    }

    pub fn save(&self, loc: &Location) -> Result<()> {
        let path = loc.state_file();
        let err = |source| GuardError::State {
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(err)?;
        }
        // Per process: two writers never share a temp file (the lock makes that moot for
        // well-behaved callers, but a crash leaves no file another writer would clobber).
        let tmp = path.with_extension(format!("json.{}.tmp", std::process::id()));
        let bytes = serde_json::to_vec_pretty(self).map_err(|source| GuardError::StateFormat {
            path: path.clone(),
            source,
        })?;
        fs::write(&tmp, bytes).map_err(err)?;
        fs::rename(&tmp, &path).map_err(err)
    }
}

#[must_use]
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_changed_start_time_is_not() {
        let me = AgentRecord::current().expect("/proc/self/stat");
        assert!(me.is_alive());
        let reused = AgentRecord {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!reused.is_alive(), "a reused pid is not the agent");
    }

    #[test]
    fn edits_of_an_earlier_state_file_are_migrated() {
        let root = std::env::temp_dir().join(format!("guard-state-{}", std::process::id()));
        let loc = Location::with_roots(None, "br-t", root.join("bpf"), root.join("run"));
        fs::create_dir_all(loc.run_dir()).expect("dir");
        fs::write(
            loc.state_file(),
            r#"{"bridge":"br-t","netns":null,"since":1,"updated":1,"object_id":"x",
                "options":{"hook":"xdp","bridge_hook":false,"monitor":false,"strict_mac":false,
                  "protect":[],"allow":[],"extra_macs":[],"monitor_ports":[],"config_file":null,
                  "added":[{"net":"10.20.0.5/32","action":"allow","class":"portal","source":"rules"}],
                  "removed":["10.30.0.0/24"]},
                "policy":{"rules":[]},"classes":{"user":{}},"ports":{},"host_macs":{}}"#,
        )
        .expect("write");
        let s = State::load(&loc).expect("load").expect("present");
        let _ = fs::remove_dir_all(&root);
        assert_eq!(s.edits.added.len(), 1);
        assert_eq!(s.edits.removed[0].to_string(), "10.30.0.0/24");
        assert!(s.options.added.is_empty() && s.options.removed.is_empty());
    }
}
