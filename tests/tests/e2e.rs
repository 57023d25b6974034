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
    attack::{self, AttackCase, Attacker, FireOptions, Probe},
    check::{self, frac},
    guardctl::{Guardctl, PinScope, drop_reason_names},
    harness::{finish, require_root_and_guardctl, serial},
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
    let invalid = check::negative_control_problems("before attach", &without, &legit_without);
    assert!(invalid.is_empty(), "{}", invalid.join("\n"));

    // 2. Attach with no policy flags.
    check::attach(&gctl, &host, addr::BRIDGE, hook).expect("guardctl attach");
    let status = gctl.status(&host, addr::BRIDGE).expect("status --json");
    let names: Vec<&str> = lab.ports.iter().map(|p| p.host.name.as_str()).collect();
    problems.extend(check::mode_problems(&status, &names, hook));

    // 3. Every case again, with guard: counters read after each case's frames.
    let (with, counted) = check::fire_counted(
        &lab,
        (&gctl, &host, &port),
        &attacker,
        &cases,
        (opts, COUNTER_DEADLINE),
        |case, c| c.port.get(expected_reason(case)).copied().unwrap_or(0) >= n,
    )
    .expect("fire with guard");

    // 4. Legit flows with guard: all delivered, nothing dropped meanwhile.
    let (legit_with, legit_drops) =
        check::legit_counted(&lab, &gctl, &host, opts).expect("legit flows with guard");
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
    problems.extend(check::negative_control_problems(
        "after detach",
        &restored,
        &[],
    ));

    // The table (it goes into the issue's note).
    let drop_reasons = drop_reason_names();
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
        let reason = expected_reason(case);
        let port_drops: BTreeMap<&str, u64> = c
            .port
            .iter()
            .filter(|(r, _)| drop_reasons.contains(&r.as_str()))
            .map(|(r, d)| (r.as_str(), *d))
            .collect();
        let got = port_drops.get(reason).copied().unwrap_or(0);
        let _ = writeln!(
            t,
            "{:<28} {:>8} {:>8} {:<10} {:>6} {:>8}",
            case.name,
            frac(w),
            frac(g),
            reason,
            got,
            frac(r)
        );
        if g.delivered > 0 {
            problems.push(format!("LEAKED with guard: {g}"));
        }
        if got != n {
            problems.push(format!(
                "{}: {reason} counted {got} times, not {n}",
                case.name
            ));
        }
        let others: Vec<_> = port_drops.iter().filter(|(r, _)| **r != reason).collect();
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
    check::legit_report(
        &mut t,
        &mut problems,
        (&legit_without, &legit_with),
        legit_drops,
    );
    let _ = write!(
        t,
        "guardctl stats after the run:\n{stats_text}total {:.1?}\n",
        started.elapsed()
    );
    finish(&t, pins, lab, &problems);
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
