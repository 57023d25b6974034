//! Link-layer exposure: ARP answers and announcements, unicast IP in L2 multicast.

use super::Ctx;
use crate::audit::{
    FindingId, Observed, Severity, SysctlChange,
    snapshot::{v4, v6},
};

/// A good `arp_ignore`: 1 and 2 answer only for addresses on the incoming interface, 8 never
/// answers. 0, 3 (scope host only: storage addresses are global) and the reserved 4..7
/// answer for every address of the host (`net/ipv4/arp.c` `arp_ignore`).
const fn arp_ignore_ok(v: i64) -> bool {
    matches!(v, 1 | 2 | 8)
}

pub(super) fn arp_ignore(c: &mut Ctx<'_>) {
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
            FindingId::ArpIgnore,
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

pub(super) fn arp_filter(c: &mut Ctx<'_>) {
    let br = c.name().to_owned();
    // IN_DEV_ARPFILTER is IN_DEV_ORCONF.
    let filt = c.snap.v4("all", "arp_filter") == Some(1) || c.snap.v4(&br, "arp_filter") == Some(1);
    if !filt {
        let ch = SysctlChange::new(&v4(&br, "arp_filter"), 1);
        c.push(
            FindingId::ArpFilter,
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

pub(super) fn arp_announce(c: &mut Ctx<'_>) {
    let br = c.name().to_owned();
    let all = c.snap.v4("all", "arp_announce").unwrap_or(0);
    let dev = c.snap.v4(&br, "arp_announce").unwrap_or(0);
    let eff = all.max(dev); // IN_DEV_ARP_ANNOUNCE is IN_DEV_MAXCONF
    if eff < 2 {
        let ch = SysctlChange::new(&v4(&br, "arp_announce"), 2);
        c.push(
            FindingId::ArpAnnounce,
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

pub(super) fn unicast_in_l2_multicast(c: &mut Ctx<'_>) {
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
            FindingId::Ipv4DropUnicastInL2Multicast,
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
            FindingId::Ipv6DropUnicastInL2Multicast,
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
