//! Replies to flows the protected side started (docs/datapath.md, step 10): a management
//! host that reaches a guest through the host gets its replies; a guest that starts a flow
//! toward the management network still gets nothing through.
//!
//! The NAT-host lab, with the management server routing the guest network via the host
//! (the host forwards between mgmt0 and br-guest; the guests' default route is the host).
//! The guest's replies are MAC-addressed to the host and IP-addressed to the management
//! network: without replies guard drops them (`deny_route`), as it did before this feature.
//!
//! For each hook: without guard both directions work (the negative control); attached,
//! connections from the management server to the guest work (TCP over IPv4 and IPv6, and
//! ICMP echo) and are counted as `reply`, while the same connections started by the guest
//! get nothing through; `--no-replies` makes the management side's connections fail too;
//! the lab's legitimate flows work throughout.
//!
//! Needs root, and `guardctl` built in the same profile first:
//!
//! ```text
//! cargo build --release -p guard-userspace --bin guardctl
//! cargo test --release -p guard-tests --test replies -- --nocapture
//! ```

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use guard_tests::lab::{
    Lab, Role, Variant, addr,
    attack::{Attacker, CaseResult, FireOptions},
    check,
    guardctl::{Guardctl, PinScope},
    harness::{finish, require_root_and_guardctl, serial},
    legit,
    sock::{PacketSocket, udp_bind, udp_collect},
};
use guard_tests::packet::{Eth, Ipv4};

const GUEST_PORT: u16 = 7022;
const MGMT_PORT: u16 = 7023;

fn require_root() -> Guardctl {
    require_root_and_guardctl("the reply tests need root (namespaces, bpf); not skipping")
}

/// The management server routes the guest network through the host.
fn route_guests_via_host(lab: &Lab) {
    let mgmt = lab.netns(Role::Mgmt);
    mgmt.ip(&[
        "route",
        "add",
        "192.168.50.0/24",
        "via",
        &addr::HOST_MGMT4.to_string(),
    ])
    .expect("mgmt: IPv4 route to the guests");
    mgmt.ip(&[
        "-6",
        "route",
        "add",
        "fd00:50::/64",
        "via",
        &addr::HOST_MGMT6.to_string(),
    ])
    .expect("mgmt: IPv6 route to the guests");
}

/// TCP from the management server to g1 and from g1 to the management server, IPv4 and
/// IPv6, and ICMP echo from the management server to g1.
fn flows(lab: &Lab, opts: FireOptions) -> (Vec<CaseResult>, Vec<CaseResult>) {
    let tcp = |name: &str, from: Role, to: Role, dst: IpAddr, src: IpAddr, port: u16| {
        let bind = SocketAddr::new(
            if dst.is_ipv4() {
                IpAddr::from([0, 0, 0, 0])
            } else {
                IpAddr::from([0u16; 8])
            },
            port,
        );
        legit::tcp_flow(
            lab,
            name,
            (from, to),
            (bind, SocketAddr::new(dst, port), src),
            opts,
        )
        .unwrap_or_else(|e| panic!("{name}: {e:#}"))
    };
    let g1_4 = IpAddr::V4(addr::G1_4);
    let g1_6 = IpAddr::V6(addr::G1_6);
    let m4 = IpAddr::V4(addr::MGMT_SERVER4);
    let m6 = IpAddr::V6(addr::MGMT_SERVER6);
    let from_mgmt = vec![
        tcp(
            "mgmt->g1 tcp v4",
            Role::Mgmt,
            Role::G1,
            g1_4,
            m4,
            GUEST_PORT,
        ),
        tcp(
            "mgmt->g1 tcp v6",
            Role::Mgmt,
            Role::G1,
            g1_6,
            m6,
            GUEST_PORT,
        ),
        legit::icmp_flow(lab, "mgmt->g1 ping v4", Role::Mgmt, g1_4, opts).expect("ping v4"),
        legit::icmp_flow(lab, "mgmt->g1 ping v6", Role::Mgmt, g1_6, opts).expect("ping v6"),
    ];
    let from_guest = vec![
        tcp("g1->mgmt tcp v4", Role::G1, Role::Mgmt, m4, g1_4, MGMT_PORT),
        tcp("g1->mgmt tcp v6", Role::G1, Role::Mgmt, m6, g1_6, MGMT_PORT),
        legit::icmp_flow(lab, "g1->mgmt ping v4", Role::G1, m4, opts).expect("ping v4"),
    ];
    (from_mgmt, from_guest)
}

const SPOOF_MGMT_PORT: u16 = 7161;
const SPOOF_GUEST_PORT: u16 = 7999;

/// A guest forges the start of a flow: a UDP datagram "from" the management server to its
/// own address, MAC-addressed to the host, which routes it back into the bridge (through
/// `guard_reply`'s hook). Then the guest sends to the management server as if replying.
/// Returns whether the forged datagram came back (the host did route it) and how many of
/// the "replies" reached the management server.
fn forged_flow(lab: &Lab, opts: FireOptions) -> (bool, u32) {
    let att = Attacker::g1(lab).expect("g1");
    let guest = udp_bind(
        &att.ns,
        SocketAddr::new(IpAddr::V4(addr::G1_4), SPOOF_GUEST_PORT),
    )
    .expect("g1 socket");
    let server = udp_bind(
        lab.ns(Role::Mgmt),
        SocketAddr::new(IpAddr::V4(addr::MGMT_SERVER4), SPOOF_MGMT_PORT),
    )
    .expect("mgmt socket");
    let raw = PacketSocket::open(&att.ns, &att.ifname, 0).expect("g1 packet socket");
    let forged = Eth::new(att.bridge_mac, att.mac)
        .ipv4(Ipv4::new(addr::MGMT_SERVER4, addr::G1_4).udp(
            SPOOF_MGMT_PORT,
            SPOOF_GUEST_PORT,
            b"forged",
        ))
        .build();
    raw.send(&forged).expect("send the forged datagram");
    let back = udp_collect(
        &guest,
        1,
        Instant::now() + Duration::from_secs(2),
        |d, peer| (d == b"forged" && peer.ip() == IpAddr::V4(addr::MGMT_SERVER4)).then_some(0),
    )
    .expect("receive the forged datagram")
        == 1;
    let dst = SocketAddr::new(IpAddr::V4(addr::MGMT_SERVER4), SPOOF_MGMT_PORT);
    for seq in 0..opts.count {
        guest
            .send_to(format!("reply {seq}").as_bytes(), dst)
            .expect("send");
    }
    let got = udp_collect(
        &server,
        opts.count,
        Instant::now() + opts.deadline,
        |d, _| {
            std::str::from_utf8(d)
                .ok()?
                .strip_prefix("reply ")?
                .parse()
                .ok()
        },
    )
    .expect("count at the management server");
    (back, got)
}

fn table(t: &mut String, label: &str, rows: &[CaseResult]) {
    for r in rows {
        let _ = writeln!(
            t,
            "  {label:<28} {:<20} {:>3} of {}",
            r.name, r.delivered, r.sent
        );
    }
}

fn replies(hook: &str) {
    let _serial = serial();
    let gctl = require_root();
    let lab = Lab::build(Variant::NatHost).expect("build the lab");
    route_guests_via_host(&lab);
    let host = lab.ns(Role::Host).to_owned();
    let pins = PinScope::new(&host).expect("pin scope");
    let opts = FireOptions::default();
    let mut problems = Vec::new();
    let mut t = format!("replies, hook {hook}:\n");

    // 1. The negative control: both directions work without guard.
    let (mgmt0, guest0) = flows(&lab, opts);
    let (back0, forged0) = forged_flow(&lab, opts);
    let _ = writeln!(
        t,
        "  without guard                forged flow: routed back {back0}, {forged0} of {} \
         \"replies\" delivered",
        opts.count
    );
    assert!(
        back0 && forged0 == opts.count,
        "the forged flow must work without guard"
    );
    let legit_without = legit::run_all(&lab, opts).expect("legit flows without guard");
    table(&mut t, "without guard", &mgmt0);
    table(&mut t, "without guard", &guest0);
    for r in mgmt0.iter().chain(&guest0) {
        assert_eq!(r.delivered, r.sent, "{}: must work without guard", r.name);
    }

    // 2. Attached (replies on by default): the management side's flows work, the guest's
    // do not.
    check::attach(&gctl, &host, addr::BRIDGE, Some(hook)).expect("attach");
    let before = gctl.stats(&host, addr::BRIDGE).expect("stats");
    let (mgmt1, guest1) = flows(&lab, opts);
    let after = gctl.stats(&host, addr::BRIDGE).expect("stats");
    let legit_with = legit::run_all(&lab, opts).expect("legit flows with guard");
    let after_legit = gctl.stats(&host, addr::BRIDGE).expect("stats");
    table(&mut t, "attached", &mgmt1);
    table(&mut t, "attached", &guest1);
    for r in &mgmt1 {
        if r.delivered != r.sent {
            problems.push(format!(
                "{hook}: {} {} of {} with guard",
                r.name, r.delivered, r.sent
            ));
        }
    }
    for r in &guest1 {
        if r.delivered != 0 {
            problems.push(format!(
                "{hook}: {} (guest-initiated) {} of {} got through",
                r.name, r.delivered, r.sent
            ));
        }
    }
    // A guest cannot open a flow for itself by forging the protected side's first packet:
    // guard_reply ignores what the host routes back from the guest side.
    let (back1, forged1) = forged_flow(&lab, opts);
    let _ = writeln!(
        t,
        "  attached                     forged flow: routed back {back1}, {forged1} of {} \
         \"replies\" delivered",
        opts.count
    );
    if !back1 {
        problems.push(format!(
            "{hook}: the host did not route the forged datagram back"
        ));
    }
    if forged1 != 0 {
        problems.push(format!(
            "{hook}: {forged1} replies to a forged flow got through"
        ));
    }
    let reply = after
        .reason_deltas(&before, None)
        .get("reply")
        .copied()
        .unwrap_or(0);
    let _ = writeln!(t, "  replies counted: {reply}");
    if reply == 0 {
        problems.push(format!("{hook}: no frame counted as reply"));
    }
    let drops = after_legit.total_dropped() - after.total_dropped();
    check::legit_report(&mut t, &mut problems, (&legit_without, &legit_with), drops);

    // 3. Without replies the management side's flows are dropped (what guard did before).
    gctl.ok(
        Some(&host),
        &["attach", addr::BRIDGE, "--hook", hook, "--no-replies"],
    )
    .expect("attach --no-replies");
    let (mgmt2, _) = flows(&lab, opts);
    table(&mut t, "attached --no-replies", &mgmt2);
    for r in &mgmt2 {
        if r.delivered != 0 {
            problems.push(format!(
                "{hook}: {} {} of {} with --no-replies",
                r.name, r.delivered, r.sent
            ));
        }
    }
    gctl.ok(Some(&host), &["detach", addr::BRIDGE])
        .expect("detach");
    finish(&t, pins, lab, &problems);
}

#[test]
fn replies_xdp() {
    replies("xdp");
}

#[test]
fn replies_tc() {
    replies("tc");
}

#[test]
fn replies_tcx() {
    replies("tcx");
}
