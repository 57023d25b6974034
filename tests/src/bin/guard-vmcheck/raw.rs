//! Raw frames on a link (`AF_PACKET`, through the lab's [`PacketSocket`]), in a named network
//! namespace or the caller's own.
//!
//! The frames are written byte for byte, tags included: the guests here have no VLAN devices
//! and must send exactly the frames an attacker would.

use std::{
    collections::BTreeMap,
    thread,
    time::{Duration, Instant},
};

use anyhow::Result;
use guard_tests::lab::sock::PacketSocket;

use crate::plan::find_marker;

/// The calling thread's own network namespace, as a name the lab's sockets take: they open
/// `Path::new("/run/netns").join(name)`, and joining an absolute path replaces the base.
const OWN_NETNS: &str = "/proc/thread-self/ns/net";

/// Sends each frame on `iface` inside `netns` (`None`: the caller's namespace), pausing
/// `gap` between frames so a slow (TCG) receiver keeps up.
pub fn send(netns: Option<&str>, iface: &str, frames: &[Vec<u8>], gap: Duration) -> Result<()> {
    // Protocol 0: a send-only socket, which never queues frames.
    let sock = PacketSocket::open(netns.unwrap_or(OWN_NETNS), iface, 0)?;
    for f in frames {
        sock.send(f)?;
        thread::sleep(gap);
    }
    Ok(())
}

/// A bound packet socket whose queue (4 MiB) holds the frames that arrive on an interface
/// until [`Receiver::finish`] counts the marked ones.
pub struct Receiver(PacketSocket);

impl Receiver {
    /// Starts listening on `iface` in `netns`; returns once the socket is bound, so nothing
    /// sent afterwards can be missed.
    pub fn start(netns: Option<&str>, iface: &str) -> Result<Self> {
        PacketSocket::open(netns.unwrap_or(OWN_NETNS), iface, libc::ETH_P_ALL as u16).map(Self)
    }

    /// Reads what arrived until `settle` has passed (frames still in flight arrive), returns
    /// the count of marked frames per case id.
    pub fn finish(self, settle: Duration) -> Result<BTreeMap<u16, u32>> {
        let deadline = Instant::now() + settle;
        let mut counts = BTreeMap::new();
        while let Some(c) = self.0.recv(deadline)? {
            // Frames this host sends out of the interface are seen too: only arrivals count.
            if c.pkttype != libc::PACKET_OUTGOING
                && let Some((case, _)) = find_marker(&c.bytes)
            {
                *counts.entry(case).or_insert(0) += 1;
            }
        }
        Ok(counts)
    }
}
