//! The lab's negative control: without guard, every attack of the threat model reaches its
//! target and every legit flow works. A lab in which an attack does not work proves nothing
//! about guard, so such a case fails the test as INVALID.
//!
//! Needs root (namespaces, veth, `AF_PACKET`). Without it the tests fail; they never skip.

use std::{
    fmt::Write as _,
    panic::AssertUnwindSafe,
    sync::{Mutex, PoisonError},
    time::Instant,
};

use guard_tests::lab::{
    Lab, Variant,
    attack::{self, CaseResult, Expect, FireOptions},
    harness::{self, assert_no_namespaces_left, serial},
    legit,
    netns::netns_path,
};

fn require_root() {
    harness::require_root(
        "the lab tests need root (network namespaces, veth, AF_PACKET); not skipping",
    );
}

fn table(title: &str, results: &[CaseResult]) -> String {
    let mut s = format!("{title}:\n");
    for r in results {
        let _ = writeln!(s, "  {:<30} {:>3}/{}", r.name, r.delivered, r.sent);
    }
    s
}

fn negative_control(variant: Variant) {
    let _serial = serial();
    require_root();
    let started = Instant::now();
    let lab = Lab::build(variant).expect("build the lab");
    let built = lab.build_time;
    let opts = FireOptions::default();
    let attacks = attack::fire_all(&lab, opts).expect("fire the attacks");
    let flows = legit::run_all(&lab, opts).expect("run the legit flows");
    let fired = started.elapsed();
    lab.teardown().expect("tear the lab down");
    eprintln!(
        "{variant}: built in {built:.1?}, fired in {:.1?}, total with teardown {:.1?}\n{}{}",
        fired.saturating_sub(built),
        started.elapsed(),
        table("attacks without guard", &attacks),
        table("legit flows", &flows)
    );

    let invalid: Vec<String> = attacks
        .iter()
        .filter(|r| !r.as_expected_without_guard())
        .map(|r| match r.expect {
            Expect::Delivered => {
                format!("INVALID negative control {r}: the attack does not work without guard")
            }
            Expect::NotDelivered(why) => format!(
                "CHANGED kernel: {r} gets through without guard, although \"{why}\": \
                 make it an attack case"
            ),
        })
        .collect();
    assert!(invalid.is_empty(), "{}", invalid.join("\n"));
    assert!(
        attacks.iter().filter(|r| r.is_working_attack()).count() >= 20,
        "the attack list shrank"
    );
    let broken: Vec<String> = flows
        .iter()
        .filter(|r| !r.all_delivered())
        .map(|r| format!("legit flow {r} does not work in the lab"))
        .collect();
    assert!(broken.is_empty(), "{}", broken.join("\n"));
    assert_no_namespaces_left();
}

#[test]
fn negative_control_base() {
    negative_control(Variant::Base);
}

#[test]
fn negative_control_bridge_ip() {
    negative_control(Variant::BridgeIp);
}

#[test]
fn negative_control_nat_host() {
    negative_control(Variant::NatHost);
}

#[test]
fn lab_namespaces_are_deleted_when_a_test_panics() {
    let _serial = serial();
    require_root();
    let names = Mutex::new(Vec::new());
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let lab = Lab::build(Variant::NatHost).expect("build the lab");
        let mut seen = names.lock().unwrap_or_else(PoisonError::into_inner);
        *seen = lab.namespace_names();
        assert!(seen.iter().all(|n| netns_path(n).exists()));
        drop(seen);
        panic!("on purpose, inside the lab's scope");
    }));
    assert!(outcome.is_err(), "the closure was meant to panic");
    let names = names.into_inner().unwrap_or_else(PoisonError::into_inner);
    assert_eq!(names.len(), 7, "{names:?}");
    let left: Vec<_> = names.iter().filter(|n| netns_path(n).exists()).collect();
    assert!(left.is_empty(), "still present after the panic: {left:?}");
    assert_no_namespaces_left();
}

#[test]
fn lab_namespaces_are_deleted_when_the_build_fails_midway() {
    let _serial = serial();
    require_root();
    // A namespace of the next lab's name already exists: the build fails after creating the
    // ones before it, which must be deleted again.
    let probe = Lab::build(Variant::Base).expect("build the lab");
    let next_prefix = {
        let p = probe.prefix().trim_end_matches('-');
        let (head, n) = p.rsplit_once('-').expect("prefix has a sequence number");
        format!("{head}-{}-", n.parse::<u32>().expect("sequence number") + 1)
    };
    probe.teardown().expect("tear down");
    let blocker =
        guard_tests::lab::NetNs::create(&format!("{next_prefix}g1")).expect("create the blocker");
    let err = Lab::build(Variant::Base)
        .err()
        .expect("the build must fail");
    assert!(format!("{err:#}").contains("already exists"), "{err:#}");
    drop(blocker);
    assert_no_namespaces_left();
}
