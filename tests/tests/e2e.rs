//! End-to-end: per lab variant and hook mode, every attack of the threat model works without
//! guard (the negative control), fails with `guardctl attach br-guest` (no policy flags: the
//! default protected set), bumps the right reason counter by exactly the number of frames
//! sent, leaves the legitimate flows working with zero drops counted for them, and works
//! again after `guardctl detach`.
//!
//! Needs root, and `guardctl` built in the same profile first (cargo does not build other
//! packages' binaries for these tests):
//!
//! ```text
//! cargo build --release -p guard-userspace --bin guardctl
//! cargo test --release -p guard-tests --test e2e -- --nocapture
//! ```
//!
//! A test that cannot run (not root, no guardctl) fails; it never skips.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::IpAddr,
    time::{Duration, Instant},
};

use guard_tests::lab::{
    Lab, Role, Variant, addr,
    attack::{self, AttackCase, Attacker, CaseResult, Expect, FireOptions, Probe},
    guardctl::{DROP_REASONS, Guardctl, PinScope, Stats},
    harness::{assert_no_namespaces_left, require_root_and_guardctl, serial},
    legit,
};

fn require_root() -> Guardctl {
    require_root_and_guardctl(
        "the end-to-end tests need root (namespaces, veth, AF_PACKET, bpf); not skipping",
    )
}

/// How long a case's counter may take to reach its frame count (the program runs when the
/// veth peer's NAPI or backlog processes the frame, shortly after the send returns).
const COUNTER_DEADLINE: Duration = Duration::from_secs(3);
/// Poll interval while waiting for a counter (a poll with a deadline, not a synchronisation
/// sleep).
const POLL: Duration = Duration::from_millis(2);

/// The reason guard must count a case's frames under.
fn expected_reason(case: &AttackCase) -> &'static str {
    match case.probe {
        Probe::Udp {
            dst: IpAddr::V4(_), ..
        } => "deny_ipv4",
        // A solicitation sent to the target address itself counts as IPv6: the destination
        // is looked up before the ICMPv6 payload (docs/datapath.md, step 6).
        Probe::Udp {
            dst: IpAddr::V6(_), ..
        }
        | Probe::Ndp { unicast: true, .. } => "deny_ipv6",
        Probe::Arp { .. } => "deny_arp",
        Probe::Ndp { unicast: false, .. } => "deny_ndp",
    }
}

/// The counter changes seen for one case.
struct Counted {
    reason: &'static str,
    /// Drop reasons on the attacker's port that changed, with their deltas.
    port_drops: BTreeMap<&'static str, u64>,
    /// Drops on the whole bridge (every port and the unregistered slot).
    bridge_drops: u64,
}

fn drop_deltas(before: &Stats, after: &Stats, port: &str) -> BTreeMap<&'static str, u64> {
    DROP_REASONS
        .iter()
        .map(|r| {
            (
                *r,
                after
                    .port_reason(port, r)
                    .saturating_sub(before.port_reason(port, r)),
            )
        })
        .filter(|(_, d)| *d > 0)
        .collect()
}

/// Problems with a negative control, one line each.
fn negative_control_problems(
    what: &str,
    attacks: &[CaseResult],
    flows: &[CaseResult],
) -> Vec<String> {
    let mut p: Vec<String> = attacks
        .iter()
        .filter(|r| !r.as_expected_without_guard())
        .map(|r| match r.expect {
            Expect::Delivered => format!(
                "INVALID negative control ({what}) {r}: the attack does not work without guard"
            ),
            Expect::NotDelivered(why) => format!(
                "CHANGED kernel ({what}): {r} gets through without guard, although \"{why}\""
            ),
        })
        .collect();
    p.extend(
        flows
            .iter()
            .filter(|r| !r.all_delivered())
            .map(|r| format!("BROKEN lab ({what}): legit flow {r} does not work without guard")),
    );
    p
}

fn frac(r: &CaseResult) -> String {
    format!("{}/{}", r.delivered, r.sent)
}

/// The expected hook modes in `status --json` for a `--hook` value.
fn expected_modes(hook: Option<&str>) -> &'static [&'static str] {
    match hook {
        None | Some("xdp") => &["xdp-native", "xdp-generic"],
        Some("tcx") => &["tcx"],
        Some("tc") => &["tc"],
        Some(other) => panic!("no expectation for --hook {other}"),
    }
}

#[expect(
    clippy::too_many_lines,
    reason = "one scenario told in order: control, attach, attacks, legit, detach, table"
)]
fn end_to_end(variant: Variant, hook: Option<&str>) {
    let _serial = serial();
    let gctl = require_root();
    let started = Instant::now();
    let lab = Lab::build(variant).expect("build the lab");
    let host = lab.ns(Role::Host).to_owned();
    // After the lab: dropped first, so pins go before the namespaces.
    let pins = PinScope::new(&host).expect("pin scope");
    let opts = FireOptions::default();
    let n = u64::from(opts.count);
    let cases = attack::attack_cases();
    let attacker = Attacker::g1(&lab).expect("attacker g1");
    let port = lab.port(Role::G1).expect("g1's port").host.name.clone();
    let hook_name = hook.unwrap_or("xdp (default, no flags)");
    let mut problems = Vec::new();

    // 1. The negative control: without guard every attack works.
    let without = attack::fire(&lab, &attacker, &cases, opts).expect("fire without guard");
    let legit_without = legit::run_all(&lab, opts).expect("legit flows without guard");
    let invalid = negative_control_problems("before attach", &without, &legit_without);
    assert!(invalid.is_empty(), "{}", invalid.join("\n"));

    // 2. Attach with no policy flags.
    let mut args = vec!["attach", addr::BRIDGE];
    if let Some(h) = hook {
        args.extend(["--hook", h]);
    }
    gctl.ok(Some(&host), &args).expect("guardctl attach");
    let status = gctl.status(&host, addr::BRIDGE).expect("status --json");
    let modes = expected_modes(hook);
    for p in &lab.ports {
        let entry = status["ports"]
            .as_array()
            .and_then(|ports| {
                ports
                    .iter()
                    .find(|e| e["name"].as_str() == Some(p.host.name.as_str()))
            })
            .unwrap_or_else(|| panic!("port {} not in status: {status:#}", p.host.name));
        let mode = entry["hook"].as_str().unwrap_or("?");
        if entry["mode"] != "enforce" || entry["guarded"] != true {
            problems.push(format!(
                "port {} not guarded and enforcing: {entry}",
                p.host.name
            ));
        }
        if !modes.contains(&mode) {
            problems.push(format!(
                "port {} hooked as {mode}, wanted one of {modes:?}",
                p.host.name
            ));
        }
        if mode != "tc" && entry["link_id"].as_u64().is_none() {
            problems.push(format!("port {} has no pinned link: {entry}", p.host.name));
        }
    }

    // 3. Every case again, with guard: counters read after each case's frames.
    let mut counted: Vec<Counted> = Vec::new();
    let mut before = gctl.stats(&host, addr::BRIDGE).expect("stats");
    let with = attack::fire_with(&lab, &attacker, &cases, opts, |case| {
        let reason = expected_reason(case);
        let deadline = Instant::now() + COUNTER_DEADLINE;
        let after = loop {
            let now = gctl.stats(&host, addr::BRIDGE)?;
            let d = now
                .port_reason(&port, reason)
                .saturating_sub(before.port_reason(&port, reason));
            if d >= n || Instant::now() >= deadline {
                break now;
            }
            std::thread::sleep(POLL);
        };
        counted.push(Counted {
            reason,
            port_drops: drop_deltas(&before, &after, &port),
            bridge_drops: after.total_dropped().saturating_sub(before.total_dropped()),
        });
        before = after;
        Ok(())
    })
    .expect("fire with guard");

    // 4. Legit flows with guard: all delivered, nothing dropped meanwhile.
    let legit_before = gctl.stats(&host, addr::BRIDGE).expect("stats");
    let legit_with = legit::run_all(&lab, opts).expect("legit flows with guard");
    let legit_after = gctl.stats(&host, addr::BRIDGE).expect("stats");
    let legit_drops = legit_after
        .total_dropped()
        .saturating_sub(legit_before.total_dropped());
    let stats_text = gctl
        .ok(Some(&host), &["stats", addr::BRIDGE])
        .unwrap_or_else(|e| format!("{e:#}"));

    // 5. Detach: the negative control is back, nothing is left pinned.
    gctl.ok(Some(&host), &["detach", addr::BRIDGE])
        .expect("guardctl detach");
    let left = pins.leftovers();
    if !left.is_empty() {
        problems.push(format!("left after detach: {left:?}"));
    }
    let restored = attack::fire(&lab, &attacker, &cases, opts).expect("fire after detach");
    problems.extend(negative_control_problems("after detach", &restored, &[]));

    // The table (it goes into the issue's note).
    let mut t = format!(
        "\n{variant}, hook {hook_name}: {n} frames per case from g1 (port {port})\n\
         {:<28} {:>8} {:>8} {:<10} {:>6} {:>8}\n",
        "case", "without", "with", "reason", "count", "detached"
    );
    t.push_str(&"-".repeat(74));
    t.push('\n');
    for (((case, w), g), (c, r)) in cases
        .iter()
        .zip(&without)
        .zip(&with)
        .zip(counted.iter().zip(&restored))
    {
        let got = c.port_drops.get(c.reason).copied().unwrap_or(0);
        let _ = writeln!(
            t,
            "{:<28} {:>8} {:>8} {:<10} {:>6} {:>8}",
            case.name,
            frac(w),
            frac(g),
            c.reason,
            got,
            frac(r)
        );
        if g.delivered > 0 {
            problems.push(format!("LEAKED with guard: {g}"));
        }
        if got != n {
            problems.push(format!(
                "{}: {} counted {got} times, not {n}",
                case.name, c.reason
            ));
        }
        let others: Vec<_> = c
            .port_drops
            .iter()
            .filter(|(r, _)| **r != c.reason)
            .collect();
        if !others.is_empty() {
            problems.push(format!(
                "{}: other drop reasons moved too: {others:?}",
                case.name
            ));
        }
        if c.bridge_drops != n {
            problems.push(format!(
                "{}: {} drops on the bridge, not {n}",
                case.name, c.bridge_drops
            ));
        }
    }
    let _ = writeln!(
        t,
        "{:<28} {:>8} {:>8}   (drops counted during the legit flows: {legit_drops})",
        "legit flow", "without", "with"
    );
    for (w, g) in legit_without.iter().zip(&legit_with) {
        let _ = writeln!(t, "{:<28} {:>8} {:>8}", w.name, frac(w), frac(g));
        if !g.all_delivered() {
            problems.push(format!("BROKEN with guard: legit flow {g}"));
        }
    }
    if legit_with.len() != legit_without.len() {
        problems.push("the legit flows differ between runs".to_owned());
    }
    if legit_drops != 0 {
        problems.push(format!(
            "{legit_drops} drops counted during the legit flows"
        ));
    }
    let _ = write!(
        t,
        "guardctl stats after the run:\n{stats_text}total {:.1?}\n",
        started.elapsed()
    );
    eprintln!("{t}");

    drop(pins);
    lab.teardown().expect("tear the lab down");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert_no_namespaces_left();
}

#[test]
fn e2e_base_xdp() {
    end_to_end(Variant::Base, None);
}

#[test]
fn e2e_base_tcx() {
    end_to_end(Variant::Base, Some("tcx"));
}

#[test]
fn e2e_base_tc() {
    end_to_end(Variant::Base, Some("tc"));
}

#[test]
fn e2e_bridge_ip_xdp() {
    end_to_end(Variant::BridgeIp, None);
}

#[test]
fn e2e_bridge_ip_tcx() {
    end_to_end(Variant::BridgeIp, Some("tcx"));
}

#[test]
fn e2e_nat_host_xdp() {
    end_to_end(Variant::NatHost, None);
}

#[test]
fn e2e_nat_host_tcx() {
    end_to_end(Variant::NatHost, Some("tcx"));
}
