//! `guardctl` acceptance (issue 3), in the namespace lab: attach with no flags, detach,
//! re-attach and an agent killed with SIGKILL under a continuous attack stream, ports that
//! come and go while the agent runs, the error cases, `config check`, and the measurements
//! (64-port attach, enslave to first drop, the agent's resident memory).
//!
//! Needs root, and `guardctl` built in the same profile first (cargo does not build other
//! packages' binaries for these tests):
//!
//! ```text
//! cargo build --release -p guard-userspace --bin guardctl
//! cargo test --release -p guard-tests --test guardctl -- --nocapture
//! ```
//!
//! A test that cannot run (not root, no guardctl) fails; it never skips. Every test removes
//! its namespaces, pins and state, also when it fails (`Lab`, `NetNs` and `PinScope` clean up
//! on drop; `Agent` and `Stream` stop on drop).

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use guard::{
    GuardError,
    attach::{Guard, embedded_object},
    discovery::{Discovery, HostAddr, Iface as GIface, MacSource},
    pins::Location,
    state::Options,
};
use guard_tests::lab::{
    Lab, NetNs, Role, Variant, addr,
    attack::{self, Attacker, FireOptions},
    frame::parse_mac,
    guardctl::{Agent, Guardctl, PinScope, pin_scope_dir, poll, state_scope_dir},
    harness::{assert_no_namespaces_left, own_prefix, require_root_and_guardctl, serial},
    netns::run_cmd,
    stream::Stream,
};

fn require_root() -> Guardctl {
    require_root_and_guardctl("the guardctl tests need root (namespaces, veth, bpf); not skipping")
}

/// In-process counters of a bridge (the library `guardctl stats` prints): cheap enough to
/// poll every few milliseconds.
fn counters(netns: &str, bridge: &str) -> Option<guard::stats::BridgeStats> {
    guard::stats::collect(&Location::new(Some(netns), bridge)).ok()
}

/// IPv4 and IPv6 denials on one port.
fn denied(netns: &str, port: &str) -> u64 {
    counters(netns, addr::BRIDGE).map_or(0, |s| {
        s.ports
            .iter()
            .filter(|p| p.name == port)
            .map(|p| p.reasons["deny_ipv4"].packets + p.reasons["deny_ipv6"].packets)
            .sum()
    })
}

/// Does the interface carry an XDP program?
fn has_xdp(ns: &NetNs, dev: &str) -> bool {
    ns.ip_json(&["-details", "link", "show", "dev", dev])
        .ok()
        .and_then(|v| v.get(0).map(|l| l.get("xdp").is_some()))
        .unwrap_or(false)
}

/// The bridge's ports in `status --json`, by name (the bridge device's backstop apart: see
/// [`status_backstop`]).
fn status_ports(status: &serde_json::Value) -> BTreeMap<String, serde_json::Value> {
    status["ports"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|p| p["bridge_device"] != true)
                .map(|p| (p["name"].as_str().unwrap_or("?").to_owned(), p.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// The bridge device's own entry in `status --json` (its backstop hook), if hooked.
fn status_backstop(status: &serde_json::Value) -> Option<serde_json::Value> {
    status["ports"]
        .as_array()?
        .iter()
        .find(|p| p["bridge_device"] == true)
        .cloned()
}

/// Kernel ids of the maps pinned for a bridge, by name.
fn map_ids(loc: &Location) -> BTreeMap<&'static str, u32> {
    guard_common::map_names::ALL
        .iter()
        .filter_map(|n| {
            aya::maps::MapInfo::from_pin(loc.map_pin(n))
                .ok()
                .map(|i| (*n, i.id()))
        })
        .collect()
}

/// Starts the lab's attack stream with the named cases of [`attack::attack_cases`].
fn stream(lab: &Lab, attacker: Attacker, names: &[&str], gap: Duration) -> Stream {
    let cases = attack::cases_named(names).expect("stream cases");
    Stream::start(lab, attacker, cases, gap).expect("start the stream")
}

// ---------------------------------------------------------------------------------------------

/// `attach` with no flags protects both networks and the host's own addresses, hooks every
/// port and drops the attacks; `detach` restores the negative control, removes every pin and
/// the state, is idempotent, and leaves another bridge and another namespace alone.
#[test]
#[expect(clippy::too_many_lines, reason = "one scenario, told in order")]
fn attach_without_flags_then_detach() {
    let _serial = serial();
    let gctl = require_root();
    let lab = Lab::build(Variant::Base).expect("build the lab");
    let host_ns = lab.netns(Role::Host);
    let host = host_ns.name().to_owned();
    // Another bridge in the same namespace, and a bridge of the same name in another one.
    host_ns
        .ip_batch(&[
            "link add br-other type bridge".into(),
            "link add vo1 type veth peer name vo1p".into(),
            "link set vo1 master br-other".into(),
            "link set vo1 up".into(),
            "link set vo1p up".into(),
            "link set br-other up".into(),
        ])
        .expect("add br-other");
    let other = NetNs::create(&format!("{}other", lab.prefix())).expect("other namespace");
    other
        .ip_batch(&[
            "link set lo up".into(),
            format!("link add {} type bridge", addr::BRIDGE),
            "link add vx1 type veth peer name vx1p".into(),
            format!("link set vx1 master {}", addr::BRIDGE),
            "link set vx1 up".into(),
            "link set vx1p up".into(),
            format!("link set {} up", addr::BRIDGE),
            "link add d0 type veth peer name d0p".into(),
            "link set d0p up".into(),
            "address add 10.99.0.1/24 dev d0".into(),
            "link set d0 up".into(),
        ])
        .expect("configure the other namespace");
    let pins = PinScope::new(&host).expect("pin scope");
    let other_pins = PinScope::new(other.name()).expect("pin scope");

    gctl.ok(Some(&host), &["attach", "br-other"])
        .expect("attach br-other");
    gctl.ok(Some(other.name()), &["attach", addr::BRIDGE])
        .expect("attach br-guest in the other namespace");
    let out = gctl
        .ok(Some(&host), &["attach", addr::BRIDGE])
        .expect("attach br-guest with no flags");
    eprintln!("guardctl attach br-guest:\n{out}");

    // status --json: both networks and the host's own addresses, every port hooked.
    let status = gctl.status(&host, addr::BRIDGE).expect("status");
    let protected: BTreeMap<String, String> = status["protected"]
        .as_array()
        .expect("protected list")
        .iter()
        .map(|r| {
            (
                r["prefix"].as_str().unwrap_or("?").to_owned(),
                r["class"].as_str().unwrap_or("?").to_owned(),
            )
        })
        .collect();
    for (prefix, class) in [
        ("10.10.0.0/24", "host-net"),
        ("10.20.0.0/24", "host-net"),
        ("fd00:10::/64", "host-net"),
        ("fd00:20::/64", "host-net"),
        ("10.10.0.1/32", "host"),
        ("10.20.0.1/32", "host"),
        ("fd00:10::1/128", "host"),
        ("fd00:20::1/128", "host"),
    ] {
        assert_eq!(
            protected.get(prefix).map(String::as_str),
            Some(class),
            "{prefix} not protected as {class}: {protected:?}"
        );
    }
    let ports = status_ports(&status);
    let xdp_prog = status["program_ids"]["xdp"].as_u64();
    assert!(xdp_prog.is_some(), "no XDP program id: {status:#}");
    for p in &lab.ports {
        let e = ports
            .get(&p.host.name)
            .unwrap_or_else(|| panic!("{} not hooked: {status:#}", p.host.name));
        assert!(
            e["hook"].as_str().is_some_and(|m| m.starts_with("xdp")),
            "{e}"
        );
        assert_eq!(e["mode"], "enforce", "{e}");
        assert_eq!(e["guarded"], true, "{e}");
        assert!(e["link_id"].as_u64().is_some(), "{e}");
        assert_eq!(e["program_id"].as_u64(), xdp_prog, "{e}");
        assert!(has_xdp(host_ns, &p.host.name), "no XDP on {}", p.host.name);
    }
    assert_eq!(ports.len(), lab.ports.len(), "{ports:?}");
    // The backstop on the bridge device: TC, running guard_bridge.
    let backstop = status_backstop(&status).expect("the bridge device's backstop in status");
    assert_eq!(backstop["guarded"], true, "{backstop}");
    assert_eq!(
        backstop["program_id"].as_u64(),
        status["program_ids"]["bridge"].as_u64(),
        "{backstop}"
    );

    // Frames dropped.
    let opts = FireOptions::default();
    let with = attack::fire_all(&lab, opts).expect("fire with guard");
    let leaked: Vec<_> = with.iter().filter(|r| r.delivered > 0).collect();
    assert!(leaked.is_empty(), "leaked with guard: {leaked:?}");

    // detach: negative control back, no pin, no state, no hook; twice.
    let out = gctl
        .ok(Some(&host), &["detach", addr::BRIDGE])
        .expect("detach");
    assert!(out.contains("detached"), "{out}");
    let pin_dir = pin_scope_dir(Some(&host)).join(addr::BRIDGE);
    let state_dir = state_scope_dir(Some(&host)).join(addr::BRIDGE);
    assert!(!pin_dir.exists(), "{} still there", pin_dir.display());
    assert!(!state_dir.exists(), "{} still there", state_dir.display());
    for p in &lab.ports {
        assert!(
            !has_xdp(host_ns, &p.host.name),
            "XDP left on {}",
            p.host.name
        );
    }
    let without = attack::fire_all(&lab, opts).expect("fire after detach");
    let invalid: Vec<_> = without
        .iter()
        .filter(|r| !r.as_expected_without_guard())
        .collect();
    assert!(
        invalid.is_empty(),
        "negative control not restored after detach: {invalid:?}"
    );
    let again = gctl
        .ok(Some(&host), &["detach", addr::BRIDGE])
        .expect("second detach");
    assert!(again.contains("was not attached"), "{again}");

    // The other bridge and the other namespace are untouched.
    let st = gctl.status(&host, "br-other").expect("status br-other");
    let e = status_ports(&st);
    assert!(
        e.get("vo1")
            .is_some_and(|p| p["link_id"].as_u64().is_some()),
        "br-other lost its hook: {st:#}"
    );
    assert!(has_xdp(host_ns, "vo1"), "XDP gone from br-other's port");
    let st = gctl
        .status(other.name(), addr::BRIDGE)
        .expect("status in the other namespace");
    assert!(
        status_ports(&st)
            .get("vx1")
            .is_some_and(|p| p["link_id"].as_u64().is_some()),
        "the other namespace's br-guest lost its hook: {st:#}"
    );
    assert!(has_xdp(&other, "vx1"));

    gctl.ok(Some(&host), &["detach", "br-other"])
        .expect("detach br-other");
    gctl.ok(Some(other.name()), &["detach", addr::BRIDGE])
        .expect("detach in the other namespace");
    assert_eq!(pins.leftovers(), Vec::<std::path::PathBuf>::new());
    assert_eq!(other_pins.leftovers(), Vec::<std::path::PathBuf>::new());
    drop((pins, other_pins));
    other.delete().expect("delete the other namespace");
    teardown(lab);
}

/// The UDP cases the streams send: forwarded and local, IPv4 and IPv6, unicast and broadcast.
const STREAM_CASES: [&str; 4] = [
    "fwd-v4-storage",
    "local-v6-mgmt",
    "bcast-local-v4-mgmt",
    "fwd-v6-storage",
];
const STREAM_GAP: Duration = Duration::from_micros(200);

/// Waits until the denial counter of `port` passed `at_least`; returns it.
fn wait_denied(host: &str, port: &str, at_least: u64, what: &str) -> u64 {
    poll(Duration::from_secs(5), || {
        let d = denied(host, port);
        (d >= at_least).then_some(d)
    })
    .unwrap_or_else(|| {
        panic!(
            "{what}: denials on {port} stayed at {} (wanted {at_least})",
            denied(host, port)
        )
    })
}

/// Where the stream tests start: the base lab, its host namespace, a pin scope there, g1's
/// host-side port, and the bridge's pin location.
fn stream_lab() -> (Lab, String, PinScope, String, Location) {
    let lab = Lab::build(Variant::Base).expect("build the lab");
    let host = lab.ns(Role::Host).to_owned();
    let pins = PinScope::new(&host).expect("pin scope");
    let port = lab.port(Role::G1).expect("g1").host.name.clone();
    let loc = Location::new(Some(&host), addr::BRIDGE);
    (lab, host, pins, port, loc)
}

/// Stops `stream` and checks that none of its frames was delivered (else `leaked`) and that
/// the denials on `port` in `host` rose by exactly the frames sent (else `misjudged`), from
/// `base` before the stream.
fn finish_stream(
    stream: Stream,
    (host, port, base): (&str, &str, u64),
    leaked: &str,
    misjudged: &str,
) {
    let done = stream.finish().expect("finish the stream");
    let (sent, delivered) = (done.sent, done.delivered);
    let counted = wait_denied(host, port, base + sent, "after the stream").saturating_sub(base);
    eprintln!("stream: sent {sent}, delivered {delivered}, counted as denied {counted}");
    assert_eq!(delivered, 0, "{leaked}");
    assert_eq!(counted, sent, "{misjudged}");
}

/// Detaches the lab's bridge in `host`, checks that no pin is left, and drops `pins`.
fn detach_leaving_nothing(gctl: &Guardctl, host: &str, pins: PinScope) {
    gctl.ok(Some(host), &["detach", addr::BRIDGE])
        .expect("detach");
    assert!(pins.leftovers().is_empty(), "{:?}", pins.leftovers());
    drop(pins);
}

/// Tears `lab` down and checks that no namespace of this process is left.
fn teardown(lab: Lab) {
    lab.teardown().expect("tear down");
    assert_no_namespaces_left();
}

/// Re-running `attach` (same options, and with `--hook` given unchanged) while g1 attacks
/// continuously: not one frame delivered, every frame counted, the counters never go back,
/// programs, links and maps are reused.
#[test]
fn reattach_under_attack_stream() {
    let _serial = serial();
    let gctl = require_root();
    let (lab, host, pins, port, loc) = stream_lab();

    gctl.ok(Some(&host), &["attach", addr::BRIDGE])
        .expect("attach");
    let first = gctl.status(&host, addr::BRIDGE).expect("status");
    let first_maps = map_ids(&loc);
    assert_eq!(first_maps.len(), guard_common::map_names::ALL.len());
    let base = denied(&host, &port);

    let stream = stream(
        &lab,
        Attacker::g1(&lab).expect("attacker"),
        &STREAM_CASES,
        STREAM_GAP,
    );
    let mut last = wait_denied(&host, &port, base + 100, "stream start");
    let runs: [&[&str]; 6] = [&[], &[], &["--hook", "xdp"], &[], &["--hook", "xdp"], &[]];
    for extra in runs {
        let mut args = vec!["attach", addr::BRIDGE];
        args.extend_from_slice(extra);
        let t = Instant::now();
        gctl.ok(Some(&host), &args).expect("re-attach");
        let took = t.elapsed();
        let now = wait_denied(&host, &port, last + 1, "after a re-attach");
        eprintln!(
            "re-attach {:<14} {took:>8.1?}: denials {last} -> {now} (stream sent {})",
            extra.join(" "),
            stream.sent()
        );
        assert!(now >= last, "counters went back: {last} -> {now}");
        last = now;
        let st = gctl.status(&host, addr::BRIDGE).expect("status");
        assert_eq!(st["program_ids"], first["program_ids"], "programs replaced");
        assert_eq!(st["since"], first["since"], "since reset");
        for (name, p) in status_ports(&first) {
            let q = &status_ports(&st)[&name];
            assert_eq!(p["link_id"], q["link_id"], "{name}: link re-created");
            assert_eq!(p["slot"], q["slot"], "{name}: slot moved");
        }
        assert_eq!(map_ids(&loc), first_maps, "maps re-created");
    }
    finish_stream(
        stream,
        (&host, &port, base),
        "attack frames delivered during re-attach",
        "frames not judged (or judged twice)",
    );

    detach_leaving_nothing(&gctl, &host, pins);
    teardown(lab);
}

/// `guardctl run` killed with SIGKILL during an attack stream: nothing leaks; restarted, it
/// adopts the pinned programs, links and maps (same kernel ids), and the counters go on.
/// Also measures the agent's resident memory.
#[test]
fn agent_survives_sigkill_and_adopts() {
    let _serial = serial();
    let gctl = require_root();
    let (lab, host, pins, port, loc) = stream_lab();

    let mut agent = Agent::start(&gctl, &host, addr::BRIDGE, &[]);
    let rss = agent.rss_kib();
    eprintln!("MEASURED: guardctl run resident memory after attach: {rss} KiB (VmRSS)");
    let before = gctl.status(&host, addr::BRIDGE).expect("status");
    let before_maps = map_ids(&loc);
    let base = denied(&host, &port);

    let stream = stream(
        &lab,
        Attacker::g1(&lab).expect("attacker"),
        &STREAM_CASES,
        STREAM_GAP,
    );
    wait_denied(&host, &port, base + 100, "stream start");
    agent.signal(libc::SIGKILL);
    let status = agent.child.wait().expect("wait for the agent");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    let at_kill = denied(&host, &port);
    // Enforcement outlives the agent: the stream keeps being dropped.
    wait_denied(&host, &port, at_kill + 500, "after SIGKILL");

    let mut agent = Agent::start(&gctl, &host, addr::BRIDGE, &[]);
    let after = gctl.status(&host, addr::BRIDGE).expect("status");
    assert_eq!(
        after["program_ids"], before["program_ids"],
        "programs re-created"
    );
    assert_eq!(after["since"], before["since"], "state re-created");
    for (name, p) in status_ports(&before) {
        let q = &status_ports(&after)[&name];
        assert_eq!(p["link_id"], q["link_id"], "{name}: link re-created");
        assert_eq!(p["program_id"], q["program_id"], "{name}: program swapped");
    }
    assert_eq!(map_ids(&loc), before_maps, "maps re-created");
    let restarted = denied(&host, &port);
    assert!(
        restarted >= at_kill,
        "counters reset: {at_kill} -> {restarted}"
    );
    wait_denied(&host, &port, restarted + 100, "after the restart");

    finish_stream(
        stream,
        (&host, &port, base),
        "attack frames leaked around the SIGKILL",
        "frames not judged",
    );

    // SIGTERM: the agent exits 0 and leaves enforcement in place.
    agent.signal(libc::SIGTERM);
    let status = agent.child.wait().expect("wait for the agent");
    assert!(status.success(), "agent exit after SIGTERM: {status}");
    assert!(loc.is_attached(), "SIGTERM removed the pins");
    detach_leaving_nothing(&gctl, &host, pins);
    teardown(lab);
}

/// A third guest appears while the agent runs: its port is guarded within a second of being
/// enslaved (time to its first dropped attack frame, measured); when it leaves the bridge,
/// or disappears, no link pin and no state entry stay behind.
#[test]
#[expect(clippy::too_many_lines, reason = "one scenario, told in order")]
fn agent_follows_ports() {
    let _serial = serial();
    let gctl = require_root();
    let lab = Lab::build(Variant::Base).expect("build the lab");
    let host_ns = lab.netns(Role::Host);
    let host = host_ns.name().to_owned();
    let g3 = NetNs::create(&format!("{}g3", lab.prefix())).expect("g3 namespace");
    let pins = PinScope::new(&host).expect("pin scope");
    let loc = Location::new(Some(&host), addr::BRIDGE);
    let mut agent = Agent::start(&gctl, &host, addr::BRIDGE, &[]);

    run_cmd(
        Command::new("ip").args([
            "link",
            "add",
            "name",
            "vg3",
            "netns",
            &host,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            g3.name(),
        ]),
        None,
    )
    .expect("create vg3");
    g3.ip_batch(&[
        "link set lo up".into(),
        "link set eth0 up".into(),
        "address add 192.168.50.13/24 dev eth0".into(),
        "address add fd00:50::13/64 dev eth0 nodad".into(),
    ])
    .expect("configure g3");
    host_ns.ip(&["link", "set", "vg3", "up"]).expect("vg3 up");
    poll(Duration::from_secs(10), || {
        let v = g3.ip_json(&["link", "show", "dev", "eth0"]).ok()?;
        (v[0]["operstate"].as_str() == Some("UP")).then_some(())
    })
    .expect("g3's eth0 comes up");
    let mac = |ns: &NetNs, dev: &str| {
        let v = ns.ip_json(&["link", "show", "dev", dev]).expect("ip link");
        parse_mac(v[0]["address"].as_str().expect("address")).expect("MAC")
    };
    let vg3_mac = mac(host_ns, "vg3");
    let vg3_index = u32::try_from(
        host_ns
            .ip_json(&["link", "show", "dev", "vg3"])
            .expect("ip link")[0]["ifindex"]
            .as_u64()
            .expect("ifindex"),
    )
    .expect("ifindex fits");
    let attacker = Attacker {
        role: Role::G1,
        ns: g3.name().to_owned(),
        ifname: "eth0".to_owned(),
        mac: mac(&g3, "eth0"),
        own_port_mac: vg3_mac,
        other_port_mac: lab.port(Role::G2).expect("g2").host.mac,
        bridge_mac: lab.bridge.mac,
        ip4: Ipv4Addr::new(192, 168, 50, 13),
        ip6: Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, 0, 0x13),
    };

    // Enslave under a steady stream; time until guard drops the first frame from vg3.
    let stream = stream(
        &lab,
        attacker,
        &["fwd-v4-storage"],
        Duration::from_micros(100),
    );
    let first_drop = |timeout| {
        poll(timeout, || {
            counters(&host, addr::BRIDGE).and_then(|s| {
                s.ports
                    .iter()
                    .find(|p| p.name == "vg3" && p.reasons["deny_ipv4"].packets > 0)
                    .map(|_| ())
            })
        })
    };
    let t0 = Instant::now();
    host_ns
        .ip(&["link", "set", "vg3", "master", addr::BRIDGE])
        .expect("enslave vg3");
    let guarded = first_drop(Duration::from_secs(5)).map(|()| t0.elapsed());
    let sent = stream.finish().expect("finish the stream").sent;
    let guarded = guarded.expect("vg3 not guarded within 5 s");
    eprintln!(
        "MEASURED: enslave -> first dropped attack frame from the new port: {guarded:.1?} \
         ({sent} frames sent)"
    );
    assert!(
        guarded < Duration::from_secs(1),
        "new port guarded after {guarded:?}"
    );
    agent.wait_for("hooked vg3", Duration::from_secs(1));
    let st = gctl.status(&host, addr::BRIDGE).expect("status");
    assert!(
        status_ports(&st)
            .get("vg3")
            .is_some_and(|p| p["link_id"].as_u64().is_some()),
        "{st:#}"
    );

    // Leaves the bridge: released, no pin, no state entry.
    let gone = |what: &str| {
        let t = Instant::now();
        poll(Duration::from_secs(5), || {
            let pinned = loc
                .link_pins()
                .ok()?
                .iter()
                .any(|(_, idx, _)| *idx == vg3_index);
            let st = guard::state::State::load(&loc).ok()??;
            (!pinned && !st.ports.contains_key(&vg3_index)).then_some(())
        })
        .unwrap_or_else(|| {
            panic!(
                "{what}: vg3 still pinned or in the state: {:?}",
                loc.link_pins()
            )
        });
        eprintln!("{what}: vg3 released after {:.1?}", t.elapsed());
    };
    host_ns
        .ip(&["link", "set", "vg3", "nomaster"])
        .expect("release vg3");
    gone("nomaster");
    assert!(!has_xdp(host_ns, "vg3"), "XDP left on vg3 after nomaster");

    // Back in, then deleted (a VM that stops takes its tap with it).
    host_ns
        .ip(&["link", "set", "vg3", "master", addr::BRIDGE])
        .expect("enslave vg3 again");
    agent.wait_for("hooked vg3", Duration::from_secs(2));
    host_ns.ip(&["link", "del", "vg3"]).expect("delete vg3");
    gone("deleted");

    drop(agent);
    detach_leaving_nothing(&gctl, &host, pins);
    g3.delete().expect("delete g3");
    teardown(lab);
}

/// Runs a failing guardctl and checks its exit, its message, and that nothing is left.
fn assert_fails(mut cmd: Command, what: &str, needle: &str, pins: &PinScope) {
    let out = cmd.output().expect("run guardctl");
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!("{what}: exit {:?}: {}", out.status.code(), err.trim());
    assert!(!out.status.success(), "{what}: exit 0");
    assert!(err.contains(needle), "{what}: {err:?} lacks {needle:?}");
    let left = pins.leftovers();
    assert!(left.is_empty(), "{what}: left behind {left:?}");
}

/// Every error case exits non-zero with its message and leaves no pins, state or hooks.
#[test]
#[expect(clippy::too_many_lines, reason = "a list of cases")]
fn error_cases() {
    let _serial = serial();
    let gctl = require_root();
    let lab = Lab::build(Variant::Base).expect("build the lab");
    let host_ns = lab.netns(Role::Host);
    let host = host_ns.name().to_owned();
    let pins = PinScope::new(&host).expect("pin scope");
    let g = |args: &[&str]| gctl.command(Some(&host), args);

    assert_fails(
        g(&["attach", "br-nope"]),
        "bridge missing",
        "interface \"br-nope\" does not exist",
        &pins,
    );
    assert_fails(
        g(&["attach", "mgmt0"]),
        "not a bridge",
        "interface \"mgmt0\" is not a bridge",
        &pins,
    );
    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(gctl.path())
        .args(["--netns", &host, "attach", addr::BRIDGE]);
    assert_fails(c, "not root", "permission denied", &pins);
    assert_fails(
        g(&["attach", addr::BRIDGE, "--protect", "10.0.0.300/24"]),
        "invalid CIDR",
        "\"10.0.0.300/24\" is not a CIDR",
        &pins,
    );
    assert_fails(
        g(&[
            "attach",
            addr::BRIDGE,
            "--protect",
            "10.20.0.0/24=storage",
            "--allow",
            "10.20.0.0/24",
        ]),
        "contradictory CIDRs",
        "10.20.0.0/24 is both protected and allowed",
        &pins,
    );
    assert_fails(
        g(&["attach", addr::BRIDGE, "--hook", "ebpf-magic"]),
        "unknown hook",
        "unknown hook",
        &pins,
    );

    // bpffs not mountable. The closest real thing: `ip netns exec` gives the command a fresh
    // /sys without bpffs, and without CAP_SYS_ADMIN (root, with it dropped from the bounding
    // set) guardctl cannot mount it there. Scope `host`, since no --netns is given.
    let host_scope_pins = pin_scope_dir(None).join(addr::BRIDGE);
    let host_scope_state = state_scope_dir(None).join(addr::BRIDGE);
    assert!(
        !host_scope_pins.exists() && !host_scope_state.exists(),
        "this machine has br-guest attached in its own namespace; cannot run this case"
    );
    let mut c = Command::new("ip");
    c.args([
        "netns",
        "exec",
        &host,
        "setpriv",
        "--bounding-set",
        "-sys_admin",
    ])
    .arg(gctl.path())
    .args(["attach", addr::BRIDGE]);
    // With guard state anywhere under /run/guard (another test, another engineer), guardctl
    // refuses before it tries to mount (control_plane.rs tests that refusal); else the mount
    // fails.
    let expected = if guard::pins::state_files(Path::new(guard::pins::RUN_ROOT)).is_empty() {
        "bpffs: /sys/fs/bpf: Operation not permitted"
    } else {
        "bpffs is not mounted at /sys/fs/bpf here, but guard state exists"
    };
    assert_fails(c, "bpffs not mountable", expected, &pins);
    assert!(!host_scope_pins.exists() && !host_scope_state.exists());

    // A port that refuses every hook (the library with a hand-made discovery naming an
    // interface that does not exist) on a first attach that hooks nothing else: rolled back,
    // with the port's error. control_plane.rs has the per-item case (the other ports hooked).
    let iface = |index: u32, name: &str, mac: Option<[u8; 6]>, is_bridge: bool| GIface {
        index,
        name: name.to_owned(),
        mac,
        controller: (!is_bridge).then_some(lab.bridge.ifindex),
        is_bridge,
        is_loopback: false,
        up: true,
        tunnel_port: None,
        xdp_prog: None,
    };
    let discovery = Discovery {
        bridge: iface(lab.bridge.ifindex, addr::BRIDGE, Some(lab.bridge.mac), true),
        ports: vec![iface(999_999, "ghost0", Some([2, 0, 0, 0, 0, 9]), false)],
        host_macs: [(lab.bridge.mac, MacSource::Bridge)].into_iter().collect(),
        addrs: vec![HostAddr {
            ifindex: lab.mgmt_if.ifindex,
            ifname: lab.mgmt_if.name.clone(),
            addr: IpAddr::V4(addr::HOST_MGMT4),
            prefix_len: 24,
            peer: None,
        }],
        ifaces: Vec::new(),
        routes: Vec::new(),
        fou_ports: Vec::new(),
    };
    let loc = Location::new(Some(&host), addr::BRIDGE);
    let outcome = host_ns
        .run(|| {
            let opts = Options {
                hook: "xdp".to_owned(),
                ..Options::default()
            };
            Ok(
                match Guard::attach(&loc, opts, &discovery, embedded_object()) {
                    Err(GuardError::PortRefused { port, reasons }) => Ok((port, reasons)),
                    Err(e) => Err(format!("another error: {e}")),
                    Ok((g, _)) => {
                        g.teardown();
                        Err("attached".to_owned())
                    }
                },
            )
        })
        .expect("attach in the host namespace");
    let (port, reasons) = outcome.expect("GuardError::PortRefused");
    eprintln!("port that refuses every hook: {port}: {reasons}");
    assert_eq!(port, "ghost0");
    for mode in ["xdp-native", "xdp-generic", "tcx", "tc"] {
        assert!(reasons.contains(&format!("{mode} refused")), "{reasons}");
    }
    let left = pins.leftovers();
    assert!(left.is_empty(), "port refused: left behind {left:?}");

    drop(pins);
    teardown(lab);
}

/// Removes a temporary directory on drop.
struct TempDir<'a>(&'a Path);

impl Drop for TempDir<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.0);
    }
}

/// `config check` accepts a good file and points at line and column of a bad one.
#[test]
fn config_check() {
    let gctl = Guardctl::locate().expect("locate guardctl");
    let dir = std::env::temp_dir().join(format!("guard-config-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let _cleanup = TempDir(&dir);
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write config");
        p
    };
    let good = write(
        "good.toml",
        "[[bridge]]\nname = \"br-guest\"\nhook = \"tcx\"\n\
         protect = [\"10.20.0.0/24=storage\", \"10.10.0.0/24=management\"]\n\
         allow = [\"10.20.0.5=iscsi-portal\"]\n",
    );
    let out = gctl
        .ok(None, &["config", "check", good.to_str().expect("utf-8")])
        .expect("a good file passes");
    assert!(out.contains("ok (1 bridge(s))"), "{out}");

    for (name, text, line, col, needle) in [
        (
            "bad-cidr.toml",
            "[[bridge]]\nname = \"br-guest\"\nprotect = [\"10.20.0.0/24\", \"10.20.0.0/33\"]\n",
            3,
            28,
            "is not a CIDR",
        ),
        (
            "bad-key.toml",
            "[[bridge]]\nname = \"br-guest\"\n\nprotekt = [\"10.20.0.0/24\"]\n",
            4,
            1,
            "unknown field",
        ),
        (
            "contradiction.toml",
            "[[bridge]]\nname = \"br-guest\"\nprotect = [\"10.20.0.0/24\"]\n\
             allow = [\"10.20.0.0/24\"]\n",
            4,
            10,
            "both protected and allowed",
        ),
    ] {
        let path = write(name, text);
        let out = gctl
            .output(None, &["config", "check", path.to_str().expect("utf-8")])
            .expect("run config check");
        let err = String::from_utf8_lossy(&out.stderr);
        eprintln!("config check {name}: {}", err.trim());
        assert!(!out.status.success(), "{name} passed");
        let at = format!("{}:{line}:{col}: ", path.display());
        assert!(err.contains(&at), "{name}: {err:?} lacks {at:?}");
        assert!(err.contains(needle), "{name}: {err:?} lacks {needle:?}");
    }
}

/// Measures attaching a bridge with 64 ports (first attach, re-attach, detach).
#[test]
fn attach_64_ports_timing() {
    let _serial = serial();
    let gctl = require_root();
    let ns = NetNs::create(&format!("{}x64", own_prefix())).expect("namespace");
    let mut script = vec![
        "link set lo up".to_owned(),
        "link add br64 type bridge".to_owned(),
        "link add d0 type veth peer name d0p".to_owned(),
        "link set d0p up".to_owned(),
        "address add 10.64.0.1/24 dev d0".to_owned(),
        "link set d0 up".to_owned(),
    ];
    for i in 0..64 {
        script.push(format!("link add p{i} type veth peer name q{i}"));
        script.push(format!("link set p{i} master br64"));
        script.push(format!("link set p{i} up"));
        script.push(format!("link set q{i} up"));
    }
    script.push("link set br64 up".to_owned());
    ns.ip_batch(&script).expect("build 64 ports");
    let pins = PinScope::new(ns.name()).expect("pin scope");

    let t = Instant::now();
    gctl.ok(Some(ns.name()), &["attach", "br64"])
        .expect("attach 64 ports");
    let first = t.elapsed();
    let st = gctl.status(ns.name(), "br64").expect("status");
    let ports = status_ports(&st);
    assert_eq!(ports.len(), 64, "{st:#}");
    assert!(ports.values().all(|p| p["link_id"].as_u64().is_some()));
    let t = Instant::now();
    gctl.ok(Some(ns.name()), &["attach", "br64"])
        .expect("re-attach 64 ports");
    let again = t.elapsed();
    let t = Instant::now();
    gctl.ok(Some(ns.name()), &["detach", "br64"])
        .expect("detach 64 ports");
    let detach = t.elapsed();
    eprintln!(
        "MEASURED: 64-port bridge: attach {first:.1?}, re-attach {again:.1?}, detach \
         {detach:.1?} (guardctl process wall time)"
    );
    assert!(pins.leftovers().is_empty(), "{:?}", pins.leftovers());
    drop(pins);
    ns.delete().expect("delete the namespace");
    assert_no_namespaces_left();
}
