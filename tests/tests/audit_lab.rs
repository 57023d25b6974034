//! `guardctl audit --fix` on the attack lab: a libvirt-like host (forwarding on, default
//! neighbour and reverse-path settings) is reported as exposed, and after `--fix --yes` the
//! lab's own attack generator shows the attacks failing even without guard, while every
//! legitimate flow keeps working.
//!
//! Needs root and a built guardctl (`cargo build --release -p guard-userspace --bin guardctl`,
//! which `cargo xtask test` does); without them the test fails, it never skips.

use guard_tests::lab::{
    Lab, Role, Variant,
    attack::{self, FireOptions},
    harness::{self, assert_no_namespaces_left, serial},
    legit,
};

#[test]
fn audit_fix_stops_the_lab_attacks_without_guard() {
    let _serial = serial();
    let guardctl = harness::require_root_and_guardctl(
        "the audit lab test needs root (namespaces, sysctls, AF_PACKET); not skipping",
    );
    let opts = FireOptions::default();
    let lab = Lab::build(Variant::Base).expect("build the lab");
    let host = lab.ns(Role::Host).to_owned();

    // Negative control: before the fix every working attack gets through.
    let before = attack::fire_all(&lab, opts).expect("fire the attacks before the fix");
    let invalid: Vec<String> = before
        .iter()
        .filter(|r| !r.as_expected_without_guard())
        .map(ToString::to_string)
        .collect();
    assert!(invalid.is_empty(), "INVALID negative control: {invalid:#?}");
    let working = before.iter().filter(|r| r.is_working_attack()).count();
    assert!(working > 0, "the lab has no working attack to stop");

    // The audit reports the exposure with high severity.
    let audit = guardctl
        .output(Some(&host), &["audit", "br-guest", "--json"])
        .expect("run guardctl audit");
    assert_eq!(
        audit.status.code(),
        Some(2),
        "a libvirt-like host must have high findings:\n{}",
        String::from_utf8_lossy(&audit.stdout)
    );
    let fix = guardctl
        .output(Some(&host), &["audit", "br-guest", "--fix", "--yes"])
        .expect("run guardctl audit --fix --yes");
    let fixed_report = String::from_utf8_lossy(&fix.stdout).into_owned();
    assert!(
        matches!(fix.status.code(), Some(0 | 1)),
        "after --fix no high finding may remain (exit {:?}):\n{fixed_report}",
        fix.status.code()
    );

    // The same attacks, still without guard: none gets through any more.
    let after = attack::fire_all(&lab, opts).expect("fire the attacks after the fix");
    let leaked: Vec<String> = after
        .iter()
        .filter(|r| r.delivered > 0)
        .map(ToString::to_string)
        .collect();
    assert!(
        leaked.is_empty(),
        "attacks still delivered after `audit --fix` (without guard): {leaked:#?}\n{fixed_report}"
    );
    // And the guests' own traffic is untouched by the fix.
    let flows = legit::run_all(&lab, opts).expect("run the legit flows");
    let broken: Vec<String> = flows
        .iter()
        .filter(|r| !r.all_delivered())
        .map(ToString::to_string)
        .collect();
    assert!(
        broken.is_empty(),
        "legit flows broken by `audit --fix`: {broken:#?}"
    );
    for r in before.iter().filter(|r| r.is_working_attack()) {
        println!(
            "  {:<28} before fix {:>2}/{}  after fix 0/{}",
            r.name, r.delivered, r.sent, r.sent
        );
    }

    lab.teardown().expect("tear the lab down");
    assert_no_namespaces_left();
}
