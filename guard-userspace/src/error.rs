//! The library's error type. Every variant names the interface, map or file at fault and keeps
//! its source; the binary adds context with `anyhow` at its edge.

use std::{io, path::PathBuf};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum GuardError {
    #[error("network namespace {name:?} (/run/netns/{name})")]
    Netns {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("netlink request failed")]
    Netlink(#[from] rtnetlink::Error),
    #[error("opening a netlink socket")]
    NetlinkSocket(#[source] io::Error),
    #[error("interface {0:?} does not exist")]
    NoSuchInterface(String),
    #[error("interface {0:?} is not a bridge")]
    NotABridge(String),
    #[error("bpffs: {}", path.display())]
    Bpffs {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("loading the eBPF object")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("program {name}")]
    Program {
        name: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error("pinning {}", path.display())]
    Pin {
        path: PathBuf,
        #[source]
        source: Box<aya::pin::PinError>,
    },
    #[error("link {}", path.display())]
    Link {
        path: PathBuf,
        #[source]
        source: Box<aya::programs::links::LinkError>,
    },
    #[error("port {port}: no hook could be attached ({reasons})")]
    PortRefused { port: String, reasons: String },
    /// The hook asked for is XDP and another program holds the XDP hook of these ports.
    #[error("{}", crate::sys::xdp_peer::refusal_message(.0))]
    SharedXdpHook(Vec<crate::sys::xdp_peer::SharedXdp>),
    /// An XDP attach was refused because the hook is taken (`EBUSY`/`EEXIST`): another
    /// program got there after discovery looked. Not a reason to fall back to TC silently.
    #[error(
        "port {port}: its XDP hook is taken ({reason}); guard does not replace another \
         program's XDP hook: use --hook tcx (or tc) to run after it, or remove it"
    )]
    XdpHookBusy { port: String, reason: String },
    #[error("host MAC table full: more than {0} MACs, or too many collisions")]
    MacTableFull(usize),
    #[error("policy: {0}")]
    Policy(String),
    #[error("bridge {0:?} is not attached (no pinned state)")]
    NotAttached(String),
    #[error("state file {}", path.display())]
    State {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("state file {} is not valid", path.display())]
    StateFormat {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("permission denied: {0} (guardctl needs root, or CAP_BPF + CAP_NET_ADMIN)")]
    Permission(String),
    #[error(
        "bpffs is not mounted at /sys/fs/bpf here, but guard state exists ({}): its pins \
         live in the bpffs of another mount namespace (`ip netns exec` gives a command a \
         fresh /sys), so guardctl would create a second, invisible guard. {hint}",
        state.display()
    )]
    BpffsHidden { state: PathBuf, hint: String },
    #[error("lock {}", path.display())]
    Lock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("drop log {}", path.display())]
    DropLog {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("event socket {}", path.display())]
    EventSocket {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{new} contradicts the rule in force {existing}: add --replace to override it")]
    Contradiction { new: String, existing: String },
    #[error("{0} is not in force on this bridge (`guardctl rules list` shows what is)")]
    NotInForce(ipnet::IpNet),
    #[error(
        "the exception {0} is not in force on this bridge (`guardctl rules list` shows what is)"
    )]
    ExceptionNotInForce(String),
    #[error(transparent)]
    Exception(#[from] crate::exception::ExceptionError),
    #[error("{0} has no live edit (`guardctl rules list` marks them)")]
    NoEdit(ipnet::IpNet),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("the bridge was attached without a configuration file: name one with --config FILE")]
    NoConfigFile,
    #[error(transparent)]
    Prefix(#[from] crate::rule::PrefixError),
}

pub type Result<T, E = GuardError> = std::result::Result<T, E>;

impl GuardError {
    pub(crate) fn map(name: &'static str, source: aya::maps::MapError) -> Self {
        Self::Map {
            name,
            source: Box::new(source),
        }
    }
    pub(crate) fn program(name: &'static str, source: aya::programs::ProgramError) -> Self {
        Self::Program {
            name,
            source: Box::new(source),
        }
    }
}

/// An error and its sources on one line, without the repetition some of aya's errors have
/// (a syscall error's message already ends with its `io::Error`, which is also its source).
#[must_use]
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = vec![e.to_string()];
    let mut src = e.source();
    while let Some(inner) = src {
        let text = inner.to_string();
        match parts.last_mut() {
            Some(last) if text.starts_with(last.as_str()) => *last = text,
            Some(last) if last.contains(&text) => {}
            _ => parts.push(text),
        }
        src = inner.source();
    }
    parts.join(": ")
}
