//! A live rule edit governs the very next frame, in every hook mode: the datapath keeps a
//! per-CPU cache of its prefix-trie answers (docs/datapath.md, "Verdict cache"), and userspace
//! moves the policy generation on after every trie write so that no cached answer outlives
//! the policy it came from.
//!
//! The lab's management server is first reached without guard (the negative control), then
//! denied after `attach`; an allow hole for it (`rules add --allow`) lets the next frames
//! through, its removal (`rules del`) denies them again. Every burst is sent from one CPU, so the second and
//! third bursts meet the cache slot the first one filled: a generation that did not move would
//! answer with the old verdict and fail the test.
//!
//! Needs root, and `guardctl` built in the same profile first:
//!
//! ```text
//! cargo build --release -p guard-userspace --bin guardctl
//! cargo test --release -p guard-tests --test live_rules -- --nocapture
//! ```

use guard_tests::lab::{
    Lab, Role, Variant, addr,
    attack::{self, Attacker, FireOptions},
    guardctl::{Guardctl, PinScope},
    harness::{assert_no_namespaces_left, require_root_and_guardctl, serial},
};

fn require_root() -> Guardctl {
    require_root_and_guardctl("the live-rule tests need root (namespaces, bpf); not skipping")
}

/// Pins the calling thread to CPU 0: the frames it sends are received (and judged) there.
fn pin_to_cpu0() {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and sched_setaffinity only
    // touch it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set),
            0,
            "sched_setaffinity to CPU 0: {}",
            std::io::Error::last_os_error()
        );
    }
}

fn live_edit_governs_the_next_frame(hook: &str) {
    let _serial = serial();
    let gctl = require_root();
    pin_to_cpu0();
    let lab = Lab::build(Variant::Base).expect("build the lab");
    let host = lab.ns(Role::Host).to_owned();
    let pins = PinScope::new(&host).expect("pin scope");
    let attacker = Attacker::g1(&lab).expect("attacker g1");
    let cases = attack::cases_named(&["fwd-v4-mgmt"]).expect("the management case");
    let opts = FireOptions::default();
    let delivered = |what: &str| -> u32 {
        let r = attack::fire(&lab, &attacker, &cases, opts).expect("fire");
        eprintln!(
            "  {hook}, {what}: {} of {} delivered",
            r[0].delivered, r[0].sent
        );
        r[0].delivered
    };
    let hole = format!("{}/32", addr::MGMT_SERVER4);

    assert_eq!(
        delivered("without guard (control)"),
        opts.count,
        "the attack must work without guard"
    );
    gctl.ok(Some(&host), &["attach", addr::BRIDGE, "--hook", hook])
        .expect("attach");
    assert_eq!(delivered("attached"), 0, "guard drops the attack");
    gctl.ok(
        Some(&host),
        &["rules", "add", addr::BRIDGE, "--allow", &hole],
    )
    .expect("rules add --allow");
    assert_eq!(
        delivered("after rules add --allow"),
        opts.count,
        "the allow hole governs the next frames (a cached deny must not)"
    );
    gctl.ok(Some(&host), &["rules", "del", addr::BRIDGE, &hole])
        .expect("rules del");
    assert_eq!(
        delivered("after rules del"),
        0,
        "the removed hole's cached allow must not let frames through"
    );
    gctl.ok(Some(&host), &["detach", addr::BRIDGE])
        .expect("detach");
    drop(pins);
    lab.teardown().expect("tear down");
    assert_no_namespaces_left();
}

#[test]
fn live_edit_governs_the_next_frame_xdp() {
    live_edit_governs_the_next_frame("xdp");
}

#[test]
fn live_edit_governs_the_next_frame_tcx() {
    live_edit_governs_the_next_frame("tcx");
}

#[test]
fn live_edit_governs_the_next_frame_tc() {
    live_edit_governs_the_next_frame("tc");
}
