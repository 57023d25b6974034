//! Issue 11, classes 4 and 5: the host changes after guard was attached.
//!
//! - Class 4, after a one-shot `guardctl attach br-guest` (no agent): a new port whose MAC is
//!   lower than every other port's (a bridge without a set MAC takes it), a port's MAC
//!   change, a macvlan on br-guest, a new management network, `ip link set br-guest
//!   address`. Per change: the negative control (the change made without guard: the attack
//!   is delivered; then reverted), zero-config attach, the change again, the attack (none
//!   delivered, the bridge-wide drop total +N), detach (delivered again), revert.
//! - Class 5, the windows: while g2 makes the bridge learn 500 new source MACs per second,
//!   (a) a new VM is created and enslaved while it sends an attack frame every millisecond
//!   from before its link is up, (b) the bridge MAC is changed while g1 sends an attack frame
//!   every millisecond to the MAC it is about to take. Each without guard (the negative
//!   control: delivered), with attach alone and with attach plus the agent (`guardctl
//!   run`): 0 delivered.
//!
//! Every test runs in XDP, TCX and TC mode. Needs root, and `guardctl` built in the same
//! profile first:
//!
//! ```text
//! cargo build --release -p guard-userspace --bin guardctl
//! cargo test --release -p guard-tests --test holes_changes -- --nocapture
//! ```

use std::{
    fmt::Write as _,
    time::{Duration, Instant},
};

use guard_tests::lab::{
    BridgeMac, Lab, Options, Role, Variant, addr,
    attack::{self, AttackCase, Attacker, DstMac, FireOptions},
    check::{self, frac},
    guardctl::{Agent, Guardctl, PinScope},
    harness::{finish, require_root_and_guardctl, serial},
    holes::{self, Change},
    stream::{MacChurn, Stream},
};

fn require_root() -> Guardctl {
    require_root_and_guardctl(
        "the holes tests need root (namespaces, veth, macvlan, AF_PACKET, bpf); not skipping",
    )
}

/// How long a case's drops may take to reach its frame count.
const COUNTER_DEADLINE: Duration = Duration::from_secs(1);
/// The attack streams of class 5: one frame every millisecond.
const STREAM_GAP: Duration = Duration::from_millis(1);
/// Frames a window stream sends after the event (about a second at 1 ms).
const AFTER_EVENT: u64 = 1000;
/// Frames a window stream sends before the event (class 5 b: aimed at the MAC to come).
const BEFORE_EVENT: u64 = 50;
/// The MAC churn of class 5.
const CHURN_PER_SECOND: u32 = 500;

fn hook_name(hook: Option<&str>) -> &str {
    hook.unwrap_or("xdp (default, no flags)")
}

/// Polls until `f` holds or `timeout` passes (a poll with a deadline, not a sleep).
fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "not within {timeout:?}: {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[expect(
    clippy::too_many_lines,
    reason = "one scenario per change, told in order: control, attach, change, attacks, detach"
)]
fn changes_after_attach(hook: Option<&str>) {
    let _serial = serial();
    let gctl = require_root();
    let started = Instant::now();
    let mut lab = Lab::build_with(
        Variant::NatHost,
        Options {
            bridge_mac: BridgeMac::Auto,
        },
    )
    .expect("build the lab");
    let host = lab.ns(Role::Host).to_owned();
    let pins = PinScope::new(&host).expect("pin scope");
    let opts = FireOptions::default();
    let n = u64::from(opts.count);
    let mut problems = Vec::new();
    let mut t = format!(
        "\nclass 4: changes after a one-shot attach (no agent), hook {}: {n} frames per case, \
         lab {} with an automatic bridge MAC ({})\n\
         {:<30} {:<4} {:>8} {:>8} {:>6} {:>8}  {}\n",
        hook_name(hook),
        lab.variant(),
        guard_tests::lab::frame::mac_to_string(&lab.bridge.mac),
        "case",
        "from",
        "without",
        "with",
        "drops",
        "detached",
        "bridge-wide counters (every slot)"
    );
    t.push_str(&"-".repeat(100));
    t.push('\n');
    let (mut leaked, mut sent) = (0, 0);
    for change in Change::ALL {
        let t_change = Instant::now();
        let cases = change.cases();
        let from = change.attacker();
        let attacker = Attacker::guest(&lab, from).expect("attacker");
        let port = lab.port(from).expect("attacker's port").host.name.clone();

        // The negative control: the same change without guard lets the attack through.
        change.apply(&mut lab).expect("make the change");
        let without = attack::fire(&lab, &attacker, &cases, opts).expect("fire without guard");
        change.revert(&mut lab).expect("revert the change");
        let invalid = check::negative_control_problems(change.name(), &without, &[]);
        assert!(invalid.is_empty(), "{}", invalid.join("\n"));

        // One-shot attach, then the change.
        check::attach(&gctl, &host, addr::BRIDGE, hook).expect("guardctl attach");
        change
            .apply(&mut lab)
            .expect("make the change after attach");
        let (with, counted) = check::fire_counted(
            &lab,
            (&gctl, &host, &port),
            &attacker,
            &cases,
            (opts, COUNTER_DEADLINE),
            |_, c| c.bridge_drops >= n,
        )
        .expect("fire with guard");
        gctl.ok(Some(&host), &["detach", addr::BRIDGE])
            .expect("guardctl detach");
        let left = pins.leftovers();
        if !left.is_empty() {
            problems.push(format!("{}: left after detach: {left:?}", change.name()));
        }
        let restored = attack::fire(&lab, &attacker, &cases, opts).expect("fire after detach");
        problems.extend(check::negative_control_problems(
            &format!("{} after detach", change.name()),
            &restored,
            &[],
        ));
        change.revert(&mut lab).expect("revert the change");

        let _ = writeln!(t, "# {} ({:.1?})", change.name(), t_change.elapsed());
        for (((case, w), g), (c, r)) in cases
            .iter()
            .zip(&without)
            .zip(&with)
            .zip(counted.iter().zip(&restored))
        {
            let _ = writeln!(
                t,
                "{:<30} {:<4} {:>8} {:>8} {:>6} {:>8}  {}",
                case.name,
                from.suffix(),
                frac(w),
                frac(g),
                c.bridge_drops,
                frac(r),
                c.breakdown()
            );
            sent += g.sent;
            leaked += g.delivered;
            if g.delivered > 0 {
                problems.push(format!("LEAKED with guard ({}): {g}", change.name()));
            }
            if c.bridge_drops != n {
                problems.push(format!(
                    "{}: {} drops on the bridge, not {n}",
                    case.name, c.bridge_drops
                ));
            }
        }
    }
    let _ = writeln!(
        t,
        "class 4: {leaked} of {sent} attack frames delivered with guard; total {:.1?}",
        started.elapsed()
    );
    finish(&t, pins, lab, &problems);
}

#[test]
fn holes_changes_after_attach_xdp() {
    changes_after_attach(None);
}

#[test]
fn holes_changes_after_attach_tcx() {
    changes_after_attach(Some("tcx"));
}

#[test]
fn holes_changes_after_attach_tc() {
    changes_after_attach(Some("tc"));
}

/// What guards the bridge during a window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Guarding {
    /// The negative control.
    Nothing,
    /// `guardctl attach` once, before the event.
    Attach,
    /// `guardctl attach`, then `guardctl run` following the bridge.
    Agent,
}

impl Guarding {
    const ALL: [Self; 3] = [Self::Nothing, Self::Attach, Self::Agent];

    fn name(self) -> &'static str {
        match self {
            Self::Nothing => "no guard",
            Self::Attach => "attach",
            Self::Agent => "attach+agent",
        }
    }
}

/// The event of a window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Window {
    /// A new VM is created and enslaved while it attacks.
    NewVm,
    /// The bridge MAC is changed while g1 attacks the MAC it takes.
    BridgeMacChange,
}

impl Window {
    fn name(self) -> &'static str {
        match self {
            Self::NewVm => "new VM attacks from link-up",
            Self::BridgeMacChange => "bridge MAC changed under attack",
        }
    }
}

/// One window's numbers.
struct WindowRun {
    sent: u64,
    /// Frames sent from the event on (the command that enslaves the port, or changes the MAC).
    after_event: u64,
    delivered: u32,
    /// Milliseconds after the event of the first and last delivered frame (by sequence
    /// number: one frame per millisecond).
    span: Option<(i64, i64)>,
    took: Duration,
}

/// Runs one window: the event happens under a 1 ms attack stream; counts what arrived.
fn run_window(lab: &mut Lab, window: Window) -> WindowRun {
    let t0 = Instant::now();
    let case = attack::cases_named(&["fwd-v4-storage"]).expect("the case");
    let (stream, at_event) = match window {
        Window::NewVm => {
            holes::add_guest_port(lab, "vg3", None).expect("a new VM and its port");
            let attacker = holes::g3_attacker(lab, "vg3").expect("the new VM attacks");
            let stream = Stream::start(lab, attacker, case, STREAM_GAP).expect("start");
            wait_until("the stream runs", Duration::from_secs(5), || {
                stream.sent() >= 5
            });
            // The event: its port is enslaved and brought up (its link comes up then).
            let before = stream.sent();
            holes::enslave(lab, "vg3").expect("enslave the new port");
            (stream, before)
        }
        Window::BridgeMacChange => {
            let to_come = holes::addr::SET_BRIDGE_MAC;
            let case: Vec<AttackCase> = case
                .into_iter()
                .map(|c| AttackCase {
                    dst_mac: DstMac::Exact(to_come),
                    ..c
                })
                .collect();
            let attacker = Attacker::g1(lab).expect("g1 attacks");
            let stream = Stream::start(lab, attacker, case, STREAM_GAP).expect("start");
            wait_until("frames to the MAC to come", Duration::from_secs(5), || {
                stream.sent() >= BEFORE_EVENT
            });
            let before = stream.sent();
            holes::set_mac(lab, addr::BRIDGE, to_come).expect("change the bridge MAC");
            (stream, before)
        }
    };
    wait_until(
        "a second of frames after the event",
        Duration::from_secs(10),
        || stream.sent() >= at_event + AFTER_EVENT,
    );
    let out = stream.finish().expect("finish the stream");
    match window {
        Window::NewVm => {
            lab.netns(Role::Host)
                .ip(&["link", "del", "vg3"])
                .expect("remove the new VM's port");
        }
        Window::BridgeMacChange => {
            holes::set_mac(lab, addr::BRIDGE, addr::BRIDGE_MAC).expect("restore the bridge MAC");
        }
    }
    let at = i64::try_from(at_event).unwrap_or(i64::MAX);
    let span = out
        .delivered_seqs
        .first()
        .zip(out.delivered_seqs.last())
        .map(|(a, b)| (i64::from(*a) - at, i64::from(*b) - at));
    WindowRun {
        sent: out.sent,
        after_event: out.sent.saturating_sub(at_event),
        delivered: out.delivered,
        span,
        took: t0.elapsed(),
    }
}

fn windows(hook: Option<&str>) {
    let _serial = serial();
    let gctl = require_root();
    let started = Instant::now();
    let mut lab = Lab::build(Variant::NatHost).expect("build the lab");
    let host = lab.ns(Role::Host).to_owned();
    let pins = PinScope::new(&host).expect("pin scope");
    let gw_mac = lab.port(Role::Gw).expect("gw").guest.mac;
    let churn = MacChurn::start(&lab, Role::G2, gw_mac, CHURN_PER_SECOND, 0x11)
        .expect("start the MAC churn");
    let mut problems = Vec::new();
    let mut t = format!(
        "\nclass 5: windows, hook {}, while g2 makes the bridge learn {CHURN_PER_SECOND} MACs/s; \
         one attack frame (fwd-v4-storage) per ms\n\
         {:<32} {:<13} {:>6} {:>11} {:>9}  {:<22} {:>6}\n",
        hook_name(hook),
        "window",
        "guard",
        "sent",
        "after event",
        "delivered",
        "delivered ms after ev.",
        "took"
    );
    t.push_str(&"-".repeat(100));
    t.push('\n');
    let mut hook_args = Vec::new();
    if let Some(h) = hook {
        hook_args.extend(["--hook", h]);
    }
    for window in [Window::NewVm, Window::BridgeMacChange] {
        for guarding in Guarding::ALL {
            let agent = match guarding {
                Guarding::Nothing => None,
                Guarding::Attach => {
                    check::attach(&gctl, &host, addr::BRIDGE, hook).expect("attach");
                    None
                }
                Guarding::Agent => {
                    check::attach(&gctl, &host, addr::BRIDGE, hook).expect("attach");
                    Some(Agent::start(&gctl, &host, addr::BRIDGE, &hook_args))
                }
            };
            let r = run_window(&mut lab, window);
            if let Some(a) = agent {
                match a.stop() {
                    Some(status) if status.success() => {}
                    Some(status) => {
                        problems.push(format!("the agent exited with {status} after SIGTERM"));
                    }
                    None => problems.push("the agent did not exit after SIGTERM".to_owned()),
                }
            }
            if guarding != Guarding::Nothing {
                gctl.ok(Some(&host), &["detach", addr::BRIDGE])
                    .expect("guardctl detach");
            }
            let span = r
                .span
                .map_or_else(|| "-".to_owned(), |(a, b)| format!("{a}..{b}"));
            let _ = writeln!(
                t,
                "{:<32} {:<13} {:>6} {:>11} {:>9}  {:<22} {:>6.1?}",
                window.name(),
                guarding.name(),
                r.sent,
                r.after_event,
                r.delivered,
                span,
                r.took
            );
            match guarding {
                Guarding::Nothing if r.delivered == 0 => problems.push(format!(
                    "INVALID negative control: {}: nothing delivered without guard",
                    window.name()
                )),
                Guarding::Attach | Guarding::Agent if r.delivered > 0 => {
                    problems.push(format!(
                        "LEAKED with {}: {}: {} of {} frames sent after the event",
                        guarding.name(),
                        window.name(),
                        r.delivered,
                        r.after_event
                    ));
                }
                _ => {}
            }
        }
    }
    let churned = churn.finish().expect("stop the MAC churn");
    let _ = writeln!(
        t,
        "MAC churn: {churned} frames from new source MACs; total {:.1?}",
        started.elapsed()
    );
    finish(&t, pins, lab, &problems);
}

#[test]
fn holes_windows_xdp() {
    windows(None);
}

#[test]
fn holes_windows_tcx() {
    windows(Some("tcx"));
}

#[test]
fn holes_windows_tc() {
    windows(Some("tc"));
}
