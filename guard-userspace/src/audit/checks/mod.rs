//! The checks: one function per topic, each turning what the snapshot says about one
//! bridge into findings (`forwarding`: IPv4 routing and what the host accepts on the
//! bridge; `ipv6`; `link`: ARP and L2 multicast; `guard`: guard's own hooks).

mod forwarding;
mod guard;
mod ipv6;
mod link;

use super::{
    Finding, FindingId, Observed, Severity, SysctlChange,
    snapshot::{BridgeView, NF_CALL_IP6TABLES, NF_CALL_IPTABLES, Snapshot},
};

struct Ctx<'a> {
    snap: &'a Snapshot,
    br: &'a BridgeView,
    has_v4: bool,
    has_v6_routable: bool,
    fwd4: bool,
    out: &'a mut Vec<Finding>,
}

impl Ctx<'_> {
    fn name(&self) -> &str {
        &self.br.name
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one call per finding reads best flat"
    )]
    fn push(
        &mut self,
        id: FindingId,
        severity: Severity,
        title: String,
        observed: Vec<Observed>,
        explanation: &str,
        fix: Vec<String>,
        auto_fix: Vec<SysctlChange>,
        fix_note: &str,
    ) {
        self.out.push(Finding {
            id,
            severity,
            bridge: Some(self.br.name.clone()),
            title,
            observed,
            explanation: explanation.to_owned(),
            fix,
            auto_fix,
            fix_note: fix_note.to_owned(),
        });
    }

    fn obs(&self, paths: &[String]) -> Vec<Observed> {
        paths.iter().map(|p| self.snap.observed(p)).collect()
    }
}

pub(super) const NOT_AUTO_ALL: &str = "not applied: it would change every interface of the host, \
     not only the guest bridge";

pub(super) fn bridge_findings(snap: &Snapshot, br: &BridgeView, out: &mut Vec<Finding>) {
    let mut c = Ctx {
        snap,
        br,
        has_v4: !snap.bridge_v4(br).is_empty(),
        has_v6_routable: !snap.bridge_v6_routable(br).is_empty(),
        fwd4: snap.v4(&br.name, "forwarding") == Some(1),
        out,
    };
    forwarding::ipv4_forwarding(&mut c);
    forwarding::rp_filter(&mut c);
    forwarding::bridge_address(&mut c);
    ipv6::ipv6(&mut c);
    ipv6::accept_ra(&mut c);
    ipv6::proxy_ndp(&mut c);
    link::arp_ignore(&mut c);
    link::arp_filter(&mut c);
    link::arp_announce(&mut c);
    link::unicast_in_l2_multicast(&mut c);
    forwarding::accept_local(&mut c);
    forwarding::proxy(&mut c);
    forwarding::source_route(&mut c);
    ipv6::segment_routing(&mut c);
    guard::guard_hooks(&mut c);
}

pub(super) fn bridge_nf(snap: &Snapshot, out: &mut Vec<Finding>) {
    let v4 = snap.get(NF_CALL_IPTABLES);
    let v6 = snap.get(NF_CALL_IP6TABLES);
    // The files exist only while br_netfilter is loaded.
    if v4 != Some(1) && v6 != Some(1) {
        return;
    }
    out.push(Finding {
        id: FindingId::BridgeNfCall,
        severity: Severity::Medium,
        bridge: None,
        title: "bridged guest traffic goes through the host's iptables and conntrack".to_owned(),
        observed: vec![
            snap.observed(NF_CALL_IPTABLES),
            snap.observed(NF_CALL_IP6TABLES),
        ],
        explanation: "br_netfilter is loaded and bridge-nf-call-iptables/ip6tables is 1: \
            every IPv4/IPv6 frame the bridge switches between guests passes the host's \
            iptables chains and connection tracking as if the host routed it. Guests share \
            the host's conntrack table and can fill it (the host then drops new \
            connections, storage sessions included), and NAT rules written for the host \
            (DNAT of published ports, masquerading) apply to guest traffic and can steer a \
            guest's frames into the host."
            .to_owned(),
        fix: vec![
            "sysctl -w net.bridge.bridge-nf-call-iptables=0".to_owned(),
            "sysctl -w net.bridge.bridge-nf-call-ip6tables=0".to_owned(),
        ],
        auto_fix: Vec::new(),
        fix_note: "not applied: libvirt's nwfilter, Docker and Kubernetes need it \
            on; turn it off only if nothing on this host filters bridged traffic with \
            iptables"
            .to_owned(),
    });
}
