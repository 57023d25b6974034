//! `guardctl audit` against the namespace lab (root needed).
//!
//! Each test builds the lab's libvirt-like host (tests/src/lab/: `br-guest` with the guests'
//! ports, the storage and management links, forwarding on), runs the real `guardctl` binary
//! with `--netns`, and checks the finding ids and exit status. Where a fix claims to stop an
//! attack, the lab's attack generator sends the attack's frames from guest `g1` before and
//! after (the negative control first: an attack that never worked proves nothing).
//!
//! Needs root, and `guardctl` built in the same profile first (cargo does not build other
//! packages' binaries for these tests; `cargo xtask test` does it):
//!
//! ```text
//! cargo build --release -p guard-userspace --bin guardctl
//! cargo test --release -p guard-tests --test audit
//! ```
//!
//! A test that cannot run (not root, no guardctl) fails; it never skips.

use std::{collections::BTreeSet, process::Output};

use anyhow::{Context as _, Result};
use guard_tests::lab::{
    Lab, NetNs, Role, Variant,
    addr::BRIDGE,
    attack::{self, Attacker, FireOptions},
    guardctl::{Guardctl, PinScope},
    harness::{assert_no_namespaces_left, own_prefix, require_root_and_guardctl, serial},
};

fn require_root() -> Guardctl {
    require_root_and_guardctl(
        "the audit tests need root (namespaces, sysctls, bpffs): not skipping, failing",
    )
}

/// Every sysctl a hardened host sets on the bridge and globally.
const HARDENING: &[(&str, &str)] = &[
    ("net.ipv4.ip_forward", "0"),
    ("net.ipv6.conf.all.forwarding", "0"),
    ("net.ipv4.conf.br-guest.forwarding", "0"),
    ("net.ipv4.conf.br-guest.rp_filter", "1"),
    ("net.ipv4.conf.br-guest.arp_ignore", "1"),
    ("net.ipv4.conf.br-guest.arp_filter", "1"),
    ("net.ipv4.conf.br-guest.arp_announce", "2"),
    ("net.ipv4.conf.br-guest.drop_unicast_in_l2_multicast", "1"),
    ("net.ipv6.conf.br-guest.accept_ra", "0"),
    ("net.ipv6.conf.br-guest.drop_unicast_in_l2_multicast", "1"),
    ("net.ipv6.conf.br-guest.disable_ipv6", "1"),
    ("net.bridge.bridge-nf-call-iptables", "0"),
    ("net.bridge.bridge-nf-call-ip6tables", "0"),
];

/// The attacks `audit --fix` claims to stop: ARP for the host's storage address, a datagram
/// the host routes to the storage server, and one it delivers to its own storage address
/// (weak host model).
const FIXED_ATTACKS: [&str; 3] = ["arp-host-storage", "fwd-v4-storage", "local-v4-storage"];

/// Frames delivered per attack of [`FIXED_ATTACKS`], sent from `g1`.
fn fire_fixed_attacks(lab: &Lab) -> Result<Vec<(String, u32)>> {
    let cases = attack::cases_named(&FIXED_ATTACKS)?;
    let results = attack::fire(lab, &Attacker::g1(lab)?, &cases, FireOptions::default())?;
    Ok(results.into_iter().map(|r| (r.name, r.delivered)).collect())
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

struct Audit {
    status: i32,
    findings: Vec<(String, String)>,
    json: serde_json::Value,
}

impl Audit {
    fn ids(&self) -> BTreeSet<&str> {
        self.findings.iter().map(|(id, _)| id.as_str()).collect()
    }
    fn severity(&self, id: &str) -> Option<&str> {
        self.findings
            .iter()
            .find(|(i, _)| i == id)
            .map(|(_, s)| s.as_str())
    }
}

/// `guardctl --netns NS audit --json EXTRA...`, parsed.
fn audit(gctl: &Guardctl, ns: &str, extra: &[&str]) -> Result<Audit> {
    let mut args = vec!["audit", "--json"];
    args.extend_from_slice(extra);
    let out: Output = gctl.output(Some(ns), &args)?;
    let status = out.status.code().context("guardctl killed by a signal")?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "guardctl {args:?} exit {status}: no JSON: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        )
    })?;
    let findings = json["findings"]
        .as_array()
        .context("no findings array")?
        .iter()
        .map(|f| {
            (
                f["id"].as_str().unwrap_or_default().to_owned(),
                f["severity"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        json["exit_status"].as_i64(),
        Some(i64::from(status)),
        "JSON exit_status matches the process's"
    );
    Ok(Audit {
        status,
        findings,
        json,
    })
}

fn set(ids: &[&'static str]) -> BTreeSet<&'static str> {
    ids.iter().copied().collect()
}

/// A sysctl of the lab's host, as a number.
fn sysctl(lab: &Lab, key: &str) -> Result<i64> {
    let v = lab.netns(Role::Host).sysctl_get(key)?;
    v.parse().with_context(|| format!("{key} = {v:?}"))
}

#[test]
fn fresh_libvirt_host_is_exposed_and_fix_closes_the_attacks() -> Result<()> {
    let _serial = serial();
    let gctl = require_root();
    let lab = Lab::build(Variant::Base)?;
    let host = lab.ns(Role::Host).to_owned();

    let before = audit(&gctl, &host, &[])?;
    assert_eq!(before.status, 2, "{:#}", before.json);
    assert_eq!(
        before.ids(),
        set(&[
            "ipv4-forwarding",
            "rp-filter",
            "ipv6-forwarding",
            "bridge-ipv6",
            "arp-ignore",
            "arp-filter",
            "arp-announce",
            "ipv4-drop-unicast-in-l2-multicast",
            "ipv6-drop-unicast-in-l2-multicast",
            "guard-not-attached",
            "bridge-nf-call",
        ])
    );
    assert_eq!(before.severity("ipv4-forwarding"), Some("high"));
    assert_eq!(before.severity("rp-filter"), Some("high"));
    assert_eq!(before.severity("arp-ignore"), Some("high"));

    // Negative control: every attack works on this host as configured.
    let sent = FireOptions::default().count;
    let open = fire_fixed_attacks(&lab)?;
    assert_eq!(
        open,
        FIXED_ATTACKS.map(|a| (a.to_owned(), sent)),
        "the attacks must work before the fix, or the test proves nothing"
    );

    // No terminal and no --yes: refuse, change nothing.
    let refused = gctl.output(Some(&host), &["audit", "--fix"])?;
    assert_eq!(refused.status.code(), Some(3), "{}", text(&refused.stderr));
    assert!(text(&refused.stderr).contains("--yes"));
    assert_eq!(sysctl(&lab, "net.ipv4.conf.br-guest.rp_filter")?, 0);

    let fixed = audit(&gctl, &host, &["--fix", "--yes"])?;
    let applied: BTreeSet<&str> = fixed.json["applied"]
        .as_array()
        .context("no applied list")?
        .iter()
        .filter_map(|a| a["sysctl"].as_str())
        .collect();
    assert!(applied.contains("net.ipv4.conf.br-guest.forwarding"));
    assert!(
        applied.iter().all(|s| s.contains("br-guest")),
        "{applied:?}"
    );
    assert_eq!(sysctl(&lab, "net.ipv4.ip_forward")?, 1, "all untouched");
    // What is left needs a person: attach guard, decide on br_netfilter.
    let left = set(&[
        "ipv4-forwarding-default",
        "guard-not-attached",
        "bridge-nf-call",
    ]);
    assert_eq!(fixed.ids(), left);
    assert_eq!(fixed.status, 1);
    let again = audit(&gctl, &host, &[])?;
    assert_eq!((again.ids(), again.status), (left, 1));

    let closed = fire_fixed_attacks(&lab)?;
    assert_eq!(closed, FIXED_ATTACKS.map(|a| (a.to_owned(), 0)));

    lab.teardown()?;
    assert_no_namespaces_left();
    Ok(())
}

#[test]
fn bridge_with_an_address_keeps_forwarding_after_fix() -> Result<()> {
    let _serial = serial();
    let gctl = require_root();
    let lab = Lab::build(Variant::BridgeIp)?;
    let host = lab.ns(Role::Host).to_owned();
    let before = audit(&gctl, &host, &[])?;
    assert_eq!(before.status, 2);
    assert_eq!(before.severity("bridge-address"), Some("high"));
    assert!(before.ids().contains("ipv4-forwarding"));

    let fixed = audit(&gctl, &host, &["--fix", "--yes"])?;
    // The host may route for these guests on purpose (a NAT network): not auto-fixed.
    assert_eq!(sysctl(&lab, "net.ipv4.conf.br-guest.forwarding")?, 1);
    assert_eq!(fixed.status, 2);
    assert!(fixed.ids().contains("ipv4-forwarding"));
    assert!(fixed.ids().contains("bridge-address"));
    for gone in [
        "rp-filter",
        "arp-ignore",
        "ipv4-drop-unicast-in-l2-multicast",
    ] {
        assert!(!fixed.ids().contains(gone), "{gone} still reported");
    }

    lab.teardown()?;
    assert_no_namespaces_left();
    Ok(())
}

#[test]
fn hardened_host_is_clean_until_an_unguarded_port_joins() -> Result<()> {
    let _serial = serial();
    let gctl = require_root();
    let lab = Lab::build(Variant::Base)?;
    let host_ns = lab.netns(Role::Host);
    let host = host_ns.name().to_owned();
    // After the lab: dropped first, so guard's pins go before the namespaces.
    let pins = PinScope::new(&host)?;
    host_ns.sysctl(HARDENING)?;
    gctl.ok(Some(&host), &["attach", BRIDGE])?;
    let clean = audit(&gctl, &host, &[])?;
    assert_eq!(clean.findings, Vec::new(), "{:#}", clean.json);
    assert_eq!(clean.status, 0);

    // A VM starts while the agent is not running.
    host_ns.ip(&["link", "add", "vg9", "type", "veth", "peer", "name", "vg9p"])?;
    host_ns.ip(&["link", "set", "vg9", "master", BRIDGE, "up"])?;
    let after = audit(&gctl, &host, &[])?;
    assert_eq!(after.ids(), set(&["port-unguarded"]));
    assert_eq!(after.status, 2);
    let text = gctl.output(Some(&host), &["audit"])?;
    let out = String::from_utf8_lossy(&text.stdout);
    assert!(out.contains("vg9"), "{out}");
    assert!(
        out.lines().all(|l| l.len() <= 80),
        "text output wider than 80 columns:\n{out}"
    );

    drop(pins);
    lab.teardown()?;
    assert_no_namespaces_left();
    Ok(())
}

#[test]
fn audit_errors_have_their_own_exit_status() -> Result<()> {
    let _serial = serial();
    let gctl = require_root();
    let ns = NetNs::create(&format!("{}audit-empty", own_prefix()))?;
    let name = ns.name();
    let missing = gctl.output(Some(name), &["audit", "no-such-bridge"])?;
    assert_eq!(missing.status.code(), Some(3), "{}", text(&missing.stderr));
    ns.ip(&["link", "add", "d0", "type", "veth", "peer", "name", "d1"])?;
    let not_bridge = gctl.output(Some(name), &["audit", "d0"])?;
    assert_eq!(not_bridge.status.code(), Some(3));
    let usage = gctl.output(Some(name), &["audit", "--bogus"])?;
    assert_eq!(usage.status.code(), Some(64));
    // A namespace with no bridge at all still gets an answer.
    let none = audit(&gctl, name, &[])?;
    assert!(none.json["bridges"].as_array().is_some_and(Vec::is_empty));

    ns.delete()?;
    assert_no_namespaces_left();
    Ok(())
}
