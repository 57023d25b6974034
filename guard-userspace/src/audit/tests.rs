//! The checks on hand-made snapshots, and `--fix` under a fake `/proc/sys`.

use std::{
    collections::BTreeSet,
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use super::{
    snapshot::{IP_FORWARD, NF_CALL_IP6TABLES, NF_CALL_IPTABLES, v4, v6},
    *,
};
use crate::discovery::HostAddr;

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
    r.findings.iter().map(|f| f.id.as_str()).collect()
}

fn find<'a>(r: &'a Report, id: &str) -> &'a Finding {
    r.findings
        .iter()
        .find(|f| f.id.as_str() == id)
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
