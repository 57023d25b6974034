//! IPv6 on the bridge: forwarding, the stack's reachability, router advertisements,
//! neighbour proxying, routing headers.

use super::{Ctx, NOT_AUTO_ALL};
use crate::audit::{FindingId, Severity, SysctlChange, snapshot::v6};

pub(super) fn ipv6(c: &mut Ctx<'_>) {
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
            FindingId::Ipv6Forwarding,
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
        FindingId::BridgeIpv6,
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

pub(super) fn accept_ra(c: &mut Ctx<'_>) {
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
            FindingId::Ipv6AcceptRa,
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

pub(super) fn proxy_ndp(c: &mut Ctx<'_>) {
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
            FindingId::ProxyNdp,
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

pub(super) fn segment_routing(c: &mut Ctx<'_>) {
    let br = c.name().to_owned();
    if !c.snap.ipv6_on(&br) {
        return;
    }
    for (knob, what, id) in [
        (
            "seg6_enabled",
            "segment routing headers (SRv6)",
            FindingId::Ipv6SegmentRouting,
        ),
        (
            "rpl_seg_enabled",
            "RPL source routing headers",
            FindingId::Ipv6RplSourceRoute,
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
