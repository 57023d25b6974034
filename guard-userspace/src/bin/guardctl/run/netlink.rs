//! The rtnetlink event stream the agent follows, which of its messages matter, and when a
//! burst of them has settled.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    neighbour::{NeighbourMessage, NeighbourState},
};
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload};
use rtnetlink::sys::AsyncSocket as _;

// rtnetlink multicast groups (linux/rtnetlink.h).
const RTNLGRP_LINK: u32 = 1;
const RTNLGRP_NEIGH: u32 = 3;
const RTNLGRP_IPV4_IFADDR: u32 = 5;
const RTNLGRP_IPV4_ROUTE: u32 = 7;
const RTNLGRP_IPV6_IFADDR: u32 = 9;
const RTNLGRP_IPV6_ROUTE: u32 = 11;

/// Quiet time after a relevant event before the reconcile (a VM start brings a link, its
/// enslavement and its local FDB entry within a few milliseconds).
pub const SETTLE: Duration = Duration::from_millis(5);
/// The longest a burst of relevant events may delay a reconcile.
pub const MAX_DELAY: Duration = Duration::from_millis(20);
/// A reconcile without any event, as a safety net (a detach that could not signal the
/// agent, an overrun the kernel did not report).
pub const RESYNC: Duration = Duration::from_secs(30);
/// The socket's receive buffer: room for a burst of FDB learning between two reads.
const RX_BUFFER: usize = 4 << 20;

/// The rtnetlink event stream.
pub type Events = futures::channel::mpsc::UnboundedReceiver<(
    NetlinkMessage<RouteNetlinkMessage>,
    rtnetlink::sys::SocketAddr,
)>;

/// Opens the event socket, subscribed to every group guard follows, and a request handle.
pub fn subscribe() -> Result<(rtnetlink::Handle, Events)> {
    let (mut conn, handle, events) =
        rtnetlink::new_connection().context("opening the rtnetlink event socket")?;
    let sock = conn.socket_mut().socket_mut();
    // Bind first: an unbound netlink socket has port id 0, and the kernel skips a listener
    // whose port id equals the notification's (netlink.c do_one_broadcast(): `nlk->portid ==
    // p->portid`), which is 0 for every notification not echoed to a requester, that is for
    // every `ip link set ... master` of another process. Unbound, the agent heard nothing.
    sock.bind_auto()
        .context("binding the rtnetlink event socket")?;
    // Best effort: a larger buffer only makes an overrun (then a full resync) rarer.
    let _ = sock.set_rx_buf_sz(RX_BUFFER);
    for group in [
        RTNLGRP_LINK,
        RTNLGRP_NEIGH,
        RTNLGRP_IPV4_IFADDR,
        RTNLGRP_IPV6_IFADDR,
        RTNLGRP_IPV4_ROUTE,
        RTNLGRP_IPV6_ROUTE,
    ] {
        sock.add_membership(group)
            .with_context(|| format!("joining rtnetlink group {group}"))?;
    }
    tokio::spawn(conn);
    Ok((handle, events))
}

/// Does this notification change anything guard derives from the kernel? Links (ports,
/// MACs), addresses and routes do; of the neighbour group only the bridge's permanent (local)
/// FDB entries, which are host MACs. Learned FDB entries, ARP and NDP entries do not. An
/// overrun (the kernel dropped notifications) does: only a full reconcile can catch up.
pub fn relevant(msg: &NetlinkMessage<RouteNetlinkMessage>) -> bool {
    match &msg.payload {
        NetlinkPayload::InnerMessage(m) => match m {
            RouteNetlinkMessage::NewLink(_)
            | RouteNetlinkMessage::DelLink(_)
            | RouteNetlinkMessage::SetLink(_)
            | RouteNetlinkMessage::NewAddress(_)
            | RouteNetlinkMessage::DelAddress(_)
            | RouteNetlinkMessage::NewRoute(_)
            | RouteNetlinkMessage::DelRoute(_) => true,
            RouteNetlinkMessage::NewNeighbour(n) | RouteNetlinkMessage::DelNeighbour(n) => {
                local_fdb(n)
            }
            _ => false,
        },
        NetlinkPayload::Overrun(_) => true,
        _ => false,
    }
}

fn local_fdb(n: &NeighbourMessage) -> bool {
    n.header.family == AddressFamily::Bridge && n.header.state == NeighbourState::Permanent
}

/// When the pending reconcile is due: `SETTLE` after the last relevant event, at most
/// `MAX_DELAY` after the first.
#[derive(Default)]
pub struct Pending {
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Pending {
    pub fn note(&mut self, now: Instant) {
        self.first.get_or_insert(now);
        self.last = Some(now);
    }

    pub fn due(&self) -> Option<Instant> {
        Some((self.last? + SETTLE).min(self.first? + MAX_DELAY))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_route::{
        address::AddressMessage, link::LinkMessage, route::RouteMessage,
    };

    fn msg(m: RouteNetlinkMessage) -> NetlinkMessage<RouteNetlinkMessage> {
        NetlinkMessage::from(m)
    }

    fn neigh(family: AddressFamily, state: NeighbourState) -> NeighbourMessage {
        let mut n = NeighbourMessage::default();
        n.header.family = family;
        n.header.state = state;
        n
    }

    #[test]
    fn only_events_guard_derives_from_are_relevant() {
        let fdb = |state| {
            msg(RouteNetlinkMessage::NewNeighbour(neigh(
                AddressFamily::Bridge,
                state,
            )))
        };
        // A learned FDB entry (what a busy bridge makes hundreds of per second): irrelevant.
        assert!(!relevant(&fdb(NeighbourState::Reachable)));
        assert!(!relevant(&fdb(NeighbourState::Stale)));
        // A local (permanent) FDB entry is a host MAC.
        assert!(relevant(&fdb(NeighbourState::Permanent)));
        assert!(relevant(&msg(RouteNetlinkMessage::DelNeighbour(neigh(
            AddressFamily::Bridge,
            NeighbourState::Permanent
        )))));
        // ARP and NDP entries: irrelevant.
        assert!(!relevant(&msg(RouteNetlinkMessage::NewNeighbour(neigh(
            AddressFamily::Inet,
            NeighbourState::Permanent
        )))));
        for m in [
            RouteNetlinkMessage::NewLink(LinkMessage::default()),
            RouteNetlinkMessage::DelLink(LinkMessage::default()),
            RouteNetlinkMessage::NewAddress(AddressMessage::default()),
            RouteNetlinkMessage::DelAddress(AddressMessage::default()),
            RouteNetlinkMessage::NewRoute(RouteMessage::default()),
            RouteNetlinkMessage::DelRoute(RouteMessage::default()),
        ] {
            assert!(relevant(&msg(m.clone())), "{m:?}");
        }
        let overrun: NetlinkMessage<RouteNetlinkMessage> = NetlinkMessage::new(
            rtnetlink::packet_core::NetlinkHeader::default(),
            NetlinkPayload::Overrun(Vec::new()),
        );
        assert!(relevant(&overrun), "an overrun needs a full reconcile");
    }

    #[test]
    fn a_burst_is_bounded() {
        let t0 = Instant::now();
        let mut p = Pending::default();
        assert!(p.due().is_none());
        p.note(t0);
        assert_eq!(p.due(), Some(t0 + SETTLE));
        // Relevant events every 2 ms for a second: the reconcile is still due MAX_DELAY after
        // the first.
        for i in 1..500 {
            p.note(t0 + Duration::from_millis(2 * i));
        }
        assert_eq!(p.due(), Some(t0 + MAX_DELAY));
    }
}
