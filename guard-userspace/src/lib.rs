//! guard's userspace library: discovery over netlink, the policy, the maps, attaching and
//! detaching bridges, and reading the counters. `guardctl` is a thin CLI over it.

pub mod attach;
pub mod audit;
pub mod config;
pub mod discovery;
pub mod droplog;
pub mod error;
pub mod events;
pub mod exception;
pub mod feed;
pub mod fou;
pub mod identity;
pub mod layout;
pub mod maps;
pub mod metrics;
pub mod netns;
pub mod options;
pub mod pcap;
pub mod pins;
pub mod policy;
pub mod rule;
pub mod state;
pub mod stats;
pub(crate) mod sys;

pub use error::{GuardError, Result};

/// The release build of the eBPF object (programs `guard_xdp`, `guard_tc`), built by
/// build.rs from guard-ebpf.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/guard"));
