//! IPv4 routing from the bridge, the bridge's own addresses, and what the host accepts on
//! the bridge (reverse-path filter, local sources, proxy ARP, source routes).

use super::{Ctx, NOT_AUTO_ALL};
use crate::audit::{
    FindingId, Observed, Severity, SysctlChange,
    snapshot::{IP_FORWARD, v4},
};

pub(super) fn ipv4_forwarding(c: &mut Ctx<'_>) {
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
            FindingId::Ipv4Forwarding,
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
            FindingId::Ipv4ForwardingDefault,
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

pub(super) fn rp_filter(c: &mut Ctx<'_>) {
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
        FindingId::RpFilter,
        severity,
        format!("reverse-path filter {mode} on {br}"),
        c.obs(&[v4("all", "rp_filter"), v4(&br, "rp_filter")]),
        &explanation,
        fix,
        auto,
        note,
    );
}

pub(super) fn bridge_address(c: &mut Ctx<'_>) {
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
        FindingId::BridgeAddress,
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

pub(super) fn accept_local(c: &mut Ctx<'_>) {
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
        FindingId::AcceptLocal,
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

pub(super) fn proxy(c: &mut Ctx<'_>) {
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
        FindingId::ProxyArp,
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

pub(super) fn source_route(c: &mut Ctx<'_>) {
    let br = c.name().to_owned();
    let all = c.snap.v4("all", "accept_source_route") == Some(1);
    let dev = c.snap.v4(&br, "accept_source_route") == Some(1);
    if !(all && dev) {
        return;
    }
    let ch = SysctlChange::new(&v4(&br, "accept_source_route"), 0);
    c.push(
        FindingId::Ipv4SourceRoute,
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
