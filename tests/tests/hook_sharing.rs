//! guard next to another program on a port's XDP hook (issue 15, item 4): a plain XDP program
//! (xdp-filter's pass-all object attached with `ip`) and libxdp's multi-program dispatcher.
//! For each: the attack works with that program and without guard (the negative control);
//! `guardctl attach` in an XDP mode is refused before anything changes (exit 1, the port and
//! the program named, nothing hooked, the program still attached with the same id); with
//! `--hook tcx` and `--hook tc` guard attaches after it, the program stays, the attack is
//! dropped and the legit flows still work.
//!
//! Needs root, xdp-tools, and `guardctl` built in the same profile first:
//!
//! ```text
//! cargo build --release -p guard-userspace --bin guardctl
//! cargo test --release -p guard-tests --test hook_sharing -- --nocapture
//! ```
//!
//! A test that cannot run (not root, no guardctl, no xdp-tools) fails; it never skips. The
//! lab's namespaces, and with them the other XDP program, go on drop, also on failure.

use std::fmt::Write as _;

use guard_tests::lab::{
    Lab, Role, Variant, addr,
    attack::{self, Attacker, FireOptions},
    check::{self, frac},
    guardctl::{Guardctl, PinScope},
    harness::{finish, require_root_and_guardctl, serial},
    legit,
    xdp::{self, XdpProg},
};

fn require_root() -> Guardctl {
    require_root_and_guardctl(
        "the hook-sharing tests need root (namespaces, veth, XDP, bpf); not skipping",
    )
}

/// Frames MAC-addressed to the host and IP-addressed to a protected network.
const ATTACKS: [&str; 3] = ["fwd-v4-storage", "fwd-v4-mgmt", "fwd-v6-storage"];

/// The program put on g1's port before guard.
#[derive(Clone, Copy, Debug)]
enum Foreign {
    Plain,
    Dispatcher,
}

#[test]
fn next_to_a_plain_xdp_program() {
    scenario(Foreign::Plain);
}

#[test]
fn next_to_libxdp_dispatcher() {
    scenario(Foreign::Dispatcher);
}

#[expect(
    clippy::too_many_lines,
    reason = "one scenario told in order: control, refusals, tcx, tc"
)]
fn scenario(foreign: Foreign) {
    let _serial = serial();
    let gctl = require_root();
    let lab = Lab::build(Variant::Base).expect("build the lab");
    let host = lab.ns(Role::Host).to_owned();
    // After the lab: dropped first, so pins go before the namespaces.
    let pins = PinScope::new(&host).expect("pin scope");
    let host_ns = lab.netns(Role::Host);
    let port = lab.port(Role::G1).expect("g1's port").host.name.clone();
    let names: Vec<&str> = lab.ports.iter().map(|p| p.host.name.as_str()).collect();
    let attacker = Attacker::g1(&lab).expect("attacker g1");
    let cases = attack::cases_named(&ATTACKS).expect("attack cases");
    let opts = FireOptions::default();
    let mut problems = Vec::new();
    let mut report = format!("hook sharing, {foreign:?} XDP program on {port}\n");

    // 1. The other program, then the negative control: the attack works with it and no guard.
    let (prog, via) = match foreign {
        Foreign::Plain => (
            xdp::load_pass_all(host_ns, &port).expect("attach the pass-all XDP program"),
            "ip link set xdpgeneric".to_owned(),
        ),
        Foreign::Dispatcher => {
            let (p, via) =
                xdp::load_dispatcher(host_ns, &port).expect("attach libxdp's dispatcher");
            (p, format!("{via:?}"))
        }
    };
    let _ = writeln!(
        report,
        "other program: {} id {} mode {} (via {via})",
        prog.name, prog.id, prog.mode
    );
    let without = attack::fire(&lab, &attacker, &cases, opts).expect("fire without guard");
    let legit_without = legit::run_all(&lab, opts).expect("legit flows without guard");
    let invalid =
        check::negative_control_problems("other XDP program, no guard", &without, &legit_without);
    assert!(invalid.is_empty(), "{}", invalid.join("\n"));
    for r in &without {
        let _ = writeln!(
            report,
            "  no guard:        {:<16} delivered {}",
            r.name,
            frac(r)
        );
    }

    // 2. XDP (the default, and xdp-generic): refused, nothing changed.
    for hook in [None, Some("xdp-generic")] {
        let mut args = vec!["attach", addr::BRIDGE];
        if let Some(h) = hook {
            args.extend(["--hook", h]);
        }
        let out = gctl
            .output(Some(&host), &args)
            .expect("run guardctl attach");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let what = format!("attach --hook {}", hook.unwrap_or("(default xdp)"));
        let _ = writeln!(
            report,
            "  {what}: exit {:?}\n    {}",
            out.status.code(),
            stderr.trim()
        );
        problems.extend(refusal_problems(
            &what,
            out.status.code(),
            &stderr,
            &port,
            &prog,
            foreign,
        ));
        let left = pins.leftovers();
        if !left.is_empty() {
            problems.push(format!("{what}: refused, but left {left:?}"));
        }
        problems.extend(still_there(host_ns, &port, &prog, &what));
        for p in lab.ports.iter().filter(|p| p.host.name != port) {
            match xdp::xdp_prog(host_ns, &p.host.name) {
                Ok(None) => {}
                other => problems.push(format!(
                    "{what}: {} got an XDP program: {other:?}",
                    p.host.name
                )),
            }
        }
        match gctl.status_code(&host, addr::BRIDGE) {
            Ok((st, code)) => {
                if st["attached"] != false || code != 3 {
                    problems.push(format!("{what}: status says attached (exit {code}): {st}"));
                }
                let guarded: Vec<&str> = st["ports"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter(|p| p["guarded"] == true)
                            .filter_map(|p| p["name"].as_str())
                            .collect()
                    })
                    .unwrap_or_default();
                if !guarded.is_empty() {
                    problems.push(format!("{what}: refused, yet guarded: {guarded:?}"));
                }
            }
            Err(e) => problems.push(format!("{what}: status: {e:#}")),
        }
    }

    // 3. TC hooks: guard runs after the other program, which stays.
    for hook in ["tcx", "tc"] {
        let what = format!("attach --hook {hook}");
        if let Err(e) = check::attach(&gctl, &host, addr::BRIDGE, Some(hook)) {
            problems.push(format!("{what}: {e:#}"));
            continue;
        }
        match gctl.status(&host, addr::BRIDGE) {
            Ok(st) => {
                problems.extend(check::mode_problems(&st, &names, Some(hook)));
                problems.extend(shared_xdp_problems(&what, &st, &port, &prog));
            }
            Err(e) => problems.push(format!("{what}: status: {e:#}")),
        }
        problems.extend(still_there(host_ns, &port, &prog, &what));
        let before = gctl.stats(&host, addr::BRIDGE).expect("stats");
        let with = attack::fire(&lab, &attacker, &cases, opts).expect("fire with guard");
        // Read after fire's deadline: the frames that were going to arrive have.
        let after = gctl.stats(&host, addr::BRIDGE).expect("stats");
        let counted = after.reason_deltas(&before, Some(&port));
        for r in &with {
            let _ = writeln!(
                report,
                "  --hook {hook:<4}:     {:<16} delivered {}",
                r.name,
                frac(r)
            );
            if r.delivered != 0 {
                problems.push(format!("{what}: {r} delivered with guard"));
            }
        }
        let dropped: u64 = ["deny_ipv4", "deny_ipv6"]
            .iter()
            .map(|k| counted.get(*k).copied().unwrap_or(0))
            .sum();
        let sent: u64 = with.iter().map(|r| u64::from(r.sent)).sum();
        let _ = writeln!(
            report,
            "    guard counted {dropped} of {sent} on {port}: {counted:?}"
        );
        if dropped != sent {
            problems.push(format!(
                "{what}: guard counted {dropped} drops of {sent} frames: {counted:?}"
            ));
        }
        let (legit_with, drops) =
            check::legit_counted(&lab, &gctl, &host, opts).expect("legit flows with guard");
        check::legit_report(
            &mut report,
            &mut problems,
            (&legit_without, &legit_with),
            drops,
        );
        if let Err(e) = gctl.ok(Some(&host), &["detach", addr::BRIDGE]) {
            problems.push(format!("{what}: detach: {e:#}"));
        }
        problems.extend(still_there(
            host_ns,
            &port,
            &prog,
            &format!("{what}, detach"),
        ));
    }
    finish(&report, pins, lab, &problems);
}

/// What a refused attach must have said and returned.
fn refusal_problems(
    what: &str,
    code: Option<i32>,
    stderr: &str,
    port: &str,
    prog: &XdpProg,
    foreign: Foreign,
) -> Vec<String> {
    let mut p = Vec::new();
    if code != Some(1) {
        p.push(format!("{what}: exit {code:?}, wanted 1 (refused)"));
    }
    let mut wanted = vec![
        format!("port {port}"),
        format!("{} (id {})", prog.name, prog.id),
        "--hook tcx".to_owned(),
    ];
    if matches!(foreign, Foreign::Dispatcher) {
        wanted.push("libxdp's multi-program dispatcher".to_owned());
    }
    for w in wanted {
        if !stderr.contains(&w) {
            p.push(format!("{what}: {w:?} not in stderr: {stderr}"));
        }
    }
    p
}

/// The other program is still on the port's XDP hook, the same one.
fn still_there(
    ns: &guard_tests::lab::NetNs,
    port: &str,
    prog: &XdpProg,
    what: &str,
) -> Vec<String> {
    match xdp::xdp_prog(ns, port) {
        Ok(Some(p)) if p.id == prog.id => Vec::new(),
        other => vec![format!(
            "{what}: {port}'s XDP program is {other:?}, not {} id {}",
            prog.name, prog.id
        )],
    }
}

/// `status --json` names the other program on `port` (and on no other port).
fn shared_xdp_problems(
    what: &str,
    st: &serde_json::Value,
    port: &str,
    prog: &XdpProg,
) -> Vec<String> {
    let mut p = Vec::new();
    for e in st["ports"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let shared = &e["shared_xdp"];
        if e["name"].as_str() == Some(port) {
            if shared["id"].as_u64() != Some(prog.id) || shared["name"].as_str() != Some(&prog.name)
            {
                p.push(format!(
                    "{what}: status does not name {} on {port}: {e}",
                    prog.name
                ));
            }
            let dispatcher = prog.name == xdp::DISPATCHER_NAME;
            if shared["libxdp_dispatcher"].as_bool() != Some(dispatcher) {
                p.push(format!(
                    "{what}: libxdp_dispatcher should be {dispatcher}: {e}"
                ));
            }
        } else if !shared.is_null() {
            p.push(format!(
                "{what}: {} shows a shared XDP hook: {e}",
                e["name"]
            ));
        }
    }
    p
}

/// A TCX program already on the port that passes every frame with `TC_ACT_OK` (`TCX_PASS`,
/// which ends the TCX chain): guard's TCX link is anchored before it, so guard still judges
/// every frame, and guard's pass (`TCX_NEXT`) lets it run after. Appended after it, as guard
/// used to be, guard's port hook never saw a frame (the test attaches without the bridge's
/// backstop, which would hide that).
#[test]
fn tcx_program_that_passes_does_not_hide_frames_from_guard() {
    use guard_tests::bench::sys::{
        BPF_PROG_TYPE_SCHED_CLS, BPF_TCX_INGRESS, TC_ACT_OK, link_create, load_constant_program,
    };
    use guard_tests::lab::netns::in_netns;
    use std::os::fd::AsFd as _;

    let _serial = serial();
    let gctl = require_root();
    let lab = Lab::build(Variant::Base).expect("build the lab");
    let host = lab.ns(Role::Host).to_owned();
    let pins = PinScope::new(&host).expect("pin scope");
    let (port_name, port_ifindex) = {
        let p = &lab.port(Role::G1).expect("g1's port").host;
        (p.name.clone(), p.ifindex)
    };
    let attacker = Attacker::g1(&lab).expect("attacker g1");
    let cases = attack::cases_named(&ATTACKS).expect("attack cases");
    let opts = FireOptions::default();
    let mut problems = Vec::new();
    let mut report = format!("hook sharing, a TCX pass-all program on {port_name}\n");

    // The other program: `r0 = TC_ACT_OK; exit`, on the port's TCX ingress (held by its link
    // fd for the whole test; the namespace's end removes it anyway).
    let link = in_netns(&host, || {
        let prog = load_constant_program(BPF_PROG_TYPE_SCHED_CLS, TC_ACT_OK, "tcx_pass_all")?;
        link_create(prog.as_fd(), port_ifindex, BPF_TCX_INGRESS, 0)
    })
    .expect("attach the TCX pass-all program");

    let without = attack::fire(&lab, &attacker, &cases, opts).expect("fire without guard");
    for r in &without {
        let _ = writeln!(report, "  no guard:   {:<16} delivered {}", r.name, frac(r));
        assert_eq!(r.delivered, r.sent, "{}: must work without guard", r.name);
    }
    let legit_without = legit::run_all(&lab, opts).expect("legit flows without guard");
    // `--hook tc` is not in the list: a cls_bpf filter runs only when every TCX program
    // returned TCX_NEXT, so no cls_bpf filter can see past a TCX program that passes
    // (docs/datapath.md, "Sharing the hooks").
    for hook in ["xdp", "tcx"] {
        // Without the bridge device's backstop, which would drop these frames whatever
        // happens on the port: the port's hook alone must stop them.
        gctl.ok(
            Some(&host),
            &["attach", addr::BRIDGE, "--hook", hook, "--no-bridge-hook"],
        )
        .expect("attach");
        let with = attack::fire(&lab, &attacker, &cases, opts).expect("fire with guard");
        let before = gctl.stats(&host, addr::BRIDGE).expect("stats");
        let legit_with = legit::run_all(&lab, opts).expect("legit flows with guard");
        let after = gctl.stats(&host, addr::BRIDGE).expect("stats");
        for r in &with {
            let _ = writeln!(
                report,
                "  --hook {hook}: {:<16} delivered {}",
                r.name,
                frac(r)
            );
            if r.delivered != 0 {
                problems.push(format!(
                    "--hook {hook}: {} delivered {} next to a TCX program that passes",
                    r.name,
                    frac(r)
                ));
            }
        }
        let legit_drops = after.total_dropped() - before.total_dropped();
        check::legit_report(
            &mut report,
            &mut problems,
            (&legit_without, &legit_with),
            legit_drops,
        );
        gctl.ok(Some(&host), &["detach", addr::BRIDGE])
            .expect("detach");
    }
    drop(link);
    finish(&report, pins, lab, &problems);
}
