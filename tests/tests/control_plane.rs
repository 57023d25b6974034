//! The control plane (issue 12, and the agent items of issue 11), in the namespace lab: one
//! desired state per bridge that every verb and the agent go through.
//!
//! One test per numbered item of issue 12 (`item1_...` to `item8_...`), each written so that
//! it fails on the guardctl before the fix (run them with `GUARDCTL=/path/to/old/guardctl`
//! to see), then the per-item reconcile and the bounded agent latency of issue 11, and a
//! seeded random interleaving of rule edits, address changes, port changes and agent
//! restarts that compares the kernel's maps with the desired state after every step.
//!
//! Needs root and `guardctl` built in the same profile first:
//!
//! ```text
//! cargo build --release -p guard-userspace --bin guardctl
//! cargo test --release -p guard-tests --test control_plane -- --nocapture
//! ```
//!
//! A test that cannot run fails; it never skips. Namespaces, pins and state are removed
//! also when a test fails (`Lab`, `NetNs`, `PinScope` on drop; `Agent` is killed on drop).

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use guard::{
    attach::{Guard, embedded_object},
    discovery::{Discovery, HostAddr, Iface as GIface, MacSource},
    maps::GuardMaps,
    pins::Location,
    policy::{Action, Policy},
    state::{Item, Options, State},
};
use guard_tests::{
    lab::{
        Lab, NetNs, Role, Variant, addr,
        attack::{self, Attacker, build_frame, new_nonce},
        guardctl::{Agent, Guardctl, PinScope, Tmux, free_local_port, http_get, poll},
        harness::{assert_no_namespaces_left, require_root_and_guardctl, serial},
        sock::PacketSocket,
    },
    rng::Rng,
};
use ipnet::IpNet;

fn require_root() -> Guardctl {
    require_root_and_guardctl("the control-plane tests need root (namespaces, bpf); not skipping")
}

/// The base lab, its host namespace's name, and a pin scope there.
fn lab() -> (Lab, String, PinScope, Location) {
    let lab = Lab::build(Variant::Base).expect("build the lab");
    let host = lab.ns(Role::Host).to_owned();
    let pins = PinScope::new(&host).expect("pin scope");
    let loc = Location::new(Some(&host), addr::BRIDGE);
    (lab, host, pins, loc)
}

fn finish(lab: Lab, pins: PinScope) {
    drop(pins);
    lab.teardown().expect("tear down");
    assert_no_namespaces_left();
}

fn net(s: &str) -> IpNet {
    s.parse().expect("a valid prefix")
}

/// The prefixes in the kernel's tries, with their actions.
fn kernel_rules(loc: &Location) -> BTreeMap<IpNet, Action> {
    GuardMaps::open(loc)
        .expect("open the pinned maps")
        .rules()
        .expect("read the tries")
        .into_iter()
        .map(|(n, v)| (n, Action::from_code(v.action)))
        .collect()
}

fn state(loc: &Location) -> State {
    State::load(loc)
        .expect("read state.json")
        .expect("the bridge has a state")
}

/// Runs a command and returns (exit code, stdout, stderr).
fn run(mut c: Command) -> (i32, String, String) {
    let out = c.output().expect("run the command");
    let r = (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    eprintln!("  exit {}: {}{}", r.0, r.1.trim(), r.2.trim());
    r
}

/// Program ids on the ingress hooks of `dev` in `ns`: XDP (`ip -d link`) and `cls_bpf`.
fn hooks_on(ns: &NetNs, dev: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(v) = ns.ip_json(&["-details", "link", "show", "dev", dev])
        && let Some(x) = v.get(0).and_then(|l| l.get("xdp"))
    {
        out.push(format!("xdp {x}"));
    }
    if let Ok(tc) = ns.exec("tc", &["filter", "show", "dev", dev, "ingress"], None)
        && !tc.trim().is_empty()
    {
        out.push(format!("tc {}", tc.trim()));
    }
    out
}

/// A veth pair with both ends in `ns`; `name` enslaved to the lab bridge when `enslave`.
fn add_port(ns: &NetNs, name: &str, enslave: bool) {
    let mut lines = vec![
        format!("link add {name} type veth peer name {name}p"),
        format!("link set {name}p up"),
        format!("link set {name} up"),
    ];
    if enslave {
        lines.push(format!("link set {name} master {}", addr::BRIDGE));
    }
    ns.ip_batch(&lines).expect("add a port");
}

// ---------------------------------------------------------------------------------------------
// Item 1: live edits persist.

/// `rules add` made while the agent runs survives the agent's next reconcile (an address
/// change), a restart of `run`, and a re-`attach` with other options; `rules --help` says so.
#[test]
fn item1_live_edits_survive_reconcile_restart_and_reattach() {
    let _serial = serial();
    let gctl = require_root();
    let (lab, host, pins, loc) = lab();
    let host_ns = lab.netns(Role::Host);
    let mut agent = Agent::start(&gctl, &host, addr::BRIDGE, &[]);

    gctl.ok(
        Some(&host),
        &[
            "rules",
            "add",
            addr::BRIDGE,
            "--allow",
            "10.20.0.5=portal",
            "--protect",
            "10.99.0.0/16=lab",
        ],
    )
    .expect("rules add");
    let edits_in_force = |what: &str| {
        let k = kernel_rules(&loc);
        assert_eq!(
            k.get(&net("10.20.0.5/32")),
            Some(&Action::Allow),
            "{what}: {k:?}"
        );
        assert_eq!(
            k.get(&net("10.99.0.0/16")),
            Some(&Action::Deny),
            "{what}: {k:?}"
        );
    };
    edits_in_force("right after rules add (control)");

    // The agent's next reconcile: a new address on the host.
    host_ns
        .ip(&["address", "add", "10.30.0.1/24", "dev", addr_dev(&lab)])
        .expect("add an address");
    poll(Duration::from_secs(5), || {
        kernel_rules(&loc)
            .contains_key(&net("10.30.0.0/24"))
            .then_some(())
    })
    .expect("the agent protects the new address's network");
    edits_in_force("after the agent's reconcile");

    // A restart of the agent.
    agent.signal(libc::SIGTERM);
    agent
        .wait_exit(Duration::from_secs(10))
        .expect("agent exits");
    let agent = Agent::start(&gctl, &host, addr::BRIDGE, &[]);
    edits_in_force("after restarting run");
    drop(agent);

    // A re-attach with other options.
    gctl.ok(Some(&host), &["attach", addr::BRIDGE, "--strict-mac"])
        .expect("re-attach");
    edits_in_force("after a re-attach with other options");
    assert!(state(&loc).options.strict_mac, "the new options apply");

    // `rules save` writes them into the configuration file; they become the options.
    let dir = std::env::temp_dir().join(format!("guard-cp-save-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let cfg = dir.join("guard.toml");
    std::fs::write(&cfg, "# site configuration\n").expect("config");
    let cfg_arg = cfg.to_str().expect("utf-8");
    gctl.ok(
        Some(&host),
        &["rules", "save", addr::BRIDGE, "--config", cfg_arg],
    )
    .expect("rules save");
    let text = std::fs::read_to_string(&cfg).expect("read the saved file");
    let saved = guard::config::load(&cfg).expect("the saved file is valid");
    let _ = std::fs::remove_dir_all(&dir);
    let o = saved.bridge(addr::BRIDGE).expect("br-guest saved");
    assert!(text.starts_with("# site configuration"), "{text}");
    assert!(
        o.allow
            .iter()
            .any(|r| r.net == net("10.20.0.5/32") && r.class == "portal")
            && o.protect.iter().any(|r| r.net == net("10.99.0.0/16")),
        "{text}"
    );
    assert!(o.discovers() && o.strict_mac, "{text}");
    let s = state(&loc);
    assert!(
        s.edits.is_empty(),
        "the edits moved into the options: {:?}",
        s.edits
    );
    edits_in_force("after rules save");

    let help = gctl.ok(None, &["rules", "--help"]).expect("rules --help");
    assert!(
        help.contains("Live edits last") && help.contains("rules save"),
        "rules --help does not say how long a live edit lasts:\n{help}"
    );
    gctl.ok(Some(&host), &["detach", addr::BRIDGE])
        .expect("detach");
    finish(lab, pins);
}

/// The management interface of the lab host (where the tests add addresses).
fn addr_dev(lab: &Lab) -> &str {
    &lab.mgmt_if.name
}

// ---------------------------------------------------------------------------------------------
// Item 2: contradictions refused.

/// `rules add --allow` of a discovered protected prefix is refused (exit 1, naming both
/// rules) unless `--replace`; `--protect` without a class keeps the discovered class/source.
#[test]
fn item2_contradicting_rules_are_refused() {
    let _serial = serial();
    let gctl = require_root();
    let (lab, host, pins, loc) = lab();
    gctl.ok(Some(&host), &["attach", addr::BRIDGE])
        .expect("attach");
    let storage = net("10.20.0.0/24");
    assert_eq!(
        kernel_rules(&loc).get(&storage),
        Some(&Action::Deny),
        "control"
    );

    let (code, _, err) = run(gctl.command(
        Some(&host),
        &["rules", "add", addr::BRIDGE, "--allow", "10.20.0.0/24"],
    ));
    assert_eq!(code, 1, "a contradicting rules add must fail: {err}");
    assert!(
        err.contains("10.20.0.0/24 (allowed")
            && err.contains("10.20.0.0/24 (protected, class host-net, discovered on stor0)")
            && err.contains("--replace"),
        "the message names both rules and the way out: {err}"
    );
    assert_eq!(
        kernel_rules(&loc).get(&storage),
        Some(&Action::Deny),
        "unchanged"
    );

    gctl.ok(
        Some(&host),
        &["rules", "add", addr::BRIDGE, "--protect", "10.10.0.0/24"],
    )
    .expect("rules add --protect without a class");
    let s = state(&loc);
    let r = s.policy.get(&net("10.10.0.0/24")).expect("in force");
    assert_eq!(
        (r.class.as_str(), r.source.as_str()),
        ("host-net", "mgmt0"),
        "class and source of the discovered prefix kept: {r:?}"
    );

    gctl.ok(
        Some(&host),
        &[
            "rules",
            "add",
            addr::BRIDGE,
            "--allow",
            "10.20.0.0/24",
            "--replace",
        ],
    )
    .expect("--replace overrides");
    assert_eq!(kernel_rules(&loc).get(&storage), Some(&Action::Allow));
    gctl.ok(Some(&host), &["detach", addr::BRIDGE])
        .expect("detach");
    finish(lab, pins);
}

// ---------------------------------------------------------------------------------------------
// Item 3: detach and the agent.

/// `detach` while `run` is active stops the agent (which says the bridge is no longer
/// protected), leaves no hook, pin or state, and a second detach finds nothing.
#[test]
fn item3_detach_stops_the_agent() {
    let _serial = serial();
    let gctl = require_root();
    let (lab, host, pins, loc) = lab();
    let host_ns = lab.netns(Role::Host);
    let mut agent = Agent::start(&gctl, &host, addr::BRIDGE, &[]);
    for p in &lab.ports {
        assert!(
            !hooks_on(host_ns, &p.host.name).is_empty(),
            "control: {} hooked",
            p.host.name
        );
    }

    let out = gctl
        .ok(Some(&host), &["detach", addr::BRIDGE])
        .expect("detach");
    assert!(out.contains("stopped the agent"), "{out}");
    let status = agent
        .wait_exit(Duration::from_secs(10))
        .expect("the agent exits after detach");
    assert!(status.success(), "agent exit: {status}");
    let line = agent.wait_for("agent exiting", Duration::from_secs(1));
    assert!(
        line.contains("no longer protects"),
        "the agent's last word: {line}"
    );
    assert!(!loc.is_attached() && State::load(&loc).expect("read").is_none());
    for p in &lab.ports {
        let left = hooks_on(host_ns, &p.host.name);
        assert!(left.is_empty(), "{} still hooked: {left:?}", p.host.name);
    }
    // A port that joins now finds nobody to hook it.
    add_port(host_ns, "vx9", true);
    let again = gctl
        .ok(Some(&host), &["detach", addr::BRIDGE])
        .expect("second detach");
    assert!(again.contains("was not attached"), "{again}");
    assert!(hooks_on(host_ns, "vx9").is_empty());
    let (st, code) = gctl.status_code(&host, addr::BRIDGE).expect("status");
    assert_eq!(
        (code, &st["attached"]),
        (3, &serde_json::json!(false)),
        "{st:#}"
    );
    assert!(pins.leftovers().is_empty(), "{:?}", pins.leftovers());
    finish(lab, pins);
}

// ---------------------------------------------------------------------------------------------
// Item 4: status as a health gate.

fn port<'a>(st: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    st["ports"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["name"] == name))
        .unwrap_or_else(|| panic!("{name} not listed: {st:#}"))
}

/// `status` lists every port (hook, mode, guarded, VM), monitor-only ones and ones added after
/// `attach` included, and exits 3 (unguarded), 2 (monitored) or 0 accordingly.
#[test]
fn item4_status_lists_every_port_and_gates_health() {
    let _serial = serial();
    let gctl = require_root();
    let (lab, host, pins, _loc) = lab();
    let host_ns = lab.netns(Role::Host);
    gctl.ok(
        Some(&host),
        &["attach", addr::BRIDGE, "--monitor-port", "vg2"],
    )
    .expect("attach");
    add_port(host_ns, "vx3", true);

    let (st, code) = gctl.status_code(&host, addr::BRIDGE).expect("status");
    assert_eq!(code, 3, "a port nothing guards: {st:#}");
    assert_eq!(st["health"], "unguarded");
    let p = port(&st, "vg1");
    assert!(
        p["hook"].as_str().is_some_and(|h| h.starts_with("xdp")),
        "{p}"
    );
    assert_eq!(
        (&p["mode"], &p["guarded"]),
        (&"enforce".into(), &true.into()),
        "{p}"
    );
    assert!(p.get("vm").is_some(), "{p}");
    let p = port(&st, "vg2");
    assert_eq!(
        (&p["mode"], &p["guarded"]),
        (&"monitor".into(), &true.into()),
        "{p}"
    );
    let p = port(&st, "vx3");
    assert_eq!(
        (&p["hook"], &p["guarded"]),
        (&serde_json::Value::Null, &false.into()),
        "{p}"
    );
    let text = gctl
        .output(Some(&host), &["status", addr::BRIDGE])
        .expect("status");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("vx3") && text.contains("NO") && text.contains("monitor"),
        "{text}"
    );

    gctl.ok(
        Some(&host),
        &["attach", addr::BRIDGE, "--monitor-port", "vg2"],
    )
    .expect("re-attach hooks vx3");
    let (st, code) = gctl.status_code(&host, addr::BRIDGE).expect("status");
    assert_eq!((code, &st["health"]), (2, &"monitored".into()), "{st:#}");
    gctl.ok(Some(&host), &["attach", addr::BRIDGE])
        .expect("re-attach enforcing");
    let (st, code) = gctl.status_code(&host, addr::BRIDGE).expect("status");
    assert_eq!((code, &st["health"]), (0, &"ok".into()), "{st:#}");
    gctl.ok(Some(&host), &["detach", addr::BRIDGE])
        .expect("detach");
    finish(lab, pins);
}

/// A port in monitor mode stays in monitor mode with the backstop on the bridge device: the
/// backstop cannot tell which port a frame came through, so while any port only monitors it
/// monitors too (else it would drop what the monitored port let through). The attack from the
/// monitored port is delivered and counted as monitored; another port's is still dropped.
#[test]
fn monitor_port_is_not_undone_by_the_backstop() {
    let _serial = serial();
    let gctl = require_root();
    let (lab, host, pins, _loc) = lab();
    let cases: Vec<_> = attack::attack_cases()
        .into_iter()
        .filter(|c| c.name == "fwd-v4-storage")
        .collect();
    let opts = attack::FireOptions::default();
    let g1 = Attacker::g1(&lab).expect("g1");
    let control = attack::fire(&lab, &g1, &cases, opts).expect("fire without guard");
    assert!(
        control[0].all_delivered(),
        "negative control: {}",
        control[0]
    );

    gctl.ok(
        Some(&host),
        &["attach", addr::BRIDGE, "--monitor-port", "vg1"],
    )
    .expect("attach");
    let (st, _) = gctl.status_code(&host, addr::BRIDGE).expect("status");
    let backstop = st["ports"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["bridge_device"] == true))
        .cloned()
        .unwrap_or_else(|| panic!("no backstop in status: {st:#}"));
    assert_eq!(backstop["mode"], "monitor", "{backstop}");
    let monitored = attack::fire(&lab, &g1, &cases, opts).expect("fire from the monitored port");
    assert!(
        monitored[0].all_delivered(),
        "the monitored port's frames were dropped: {}",
        monitored[0]
    );
    let g2 = Attacker::guest(&lab, Role::G2).expect("g2");
    let enforced = attack::fire(&lab, &g2, &cases, opts).expect("fire from an enforcing port");
    assert_eq!(enforced[0].delivered, 0, "leaked: {}", enforced[0]);
    let stats = gctl.stats(&host, addr::BRIDGE).expect("stats");
    assert_eq!(
        stats.port_reason("vg1", "monitor_ipv4"),
        u64::from(opts.count),
        "monitored count"
    );
    assert_eq!(
        stats.port_reason("vg2", "deny_ipv4"),
        u64::from(opts.count),
        "dropped count"
    );
    gctl.ok(Some(&host), &["detach", addr::BRIDGE])
        .expect("detach");
    finish(lab, pins);
}

// ---------------------------------------------------------------------------------------------
// Item 5: a bpffs guardctl would have to mount.

/// Removes the host-scope pins and state of `br-guest` on drop if they were not there
/// before: what a guardctl under `ip netns exec` (scope `host`) may have made.
struct HostScope {
    dirs: Vec<PathBuf>,
}

impl HostScope {
    fn new() -> Self {
        let dirs = [
            guard_tests::lab::guardctl::pin_scope_dir(None).join(addr::BRIDGE),
            guard_tests::lab::guardctl::state_scope_dir(None).join(addr::BRIDGE),
        ];
        assert!(
            dirs.iter().all(|d| !d.exists()),
            "this machine has br-guest attached in its own namespace: {dirs:?}"
        );
        Self {
            dirs: dirs.to_vec(),
        }
    }
}

impl Drop for HostScope {
    fn drop(&mut self) {
        for d in &self.dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// Under `ip netns exec` (a fresh /sys without the host's bpffs) with guard state present,
/// `attach` and `detach` refuse, name the state and suggest `--netns`; nothing changes.
#[test]
fn item5_hidden_bpffs_is_refused() {
    let _serial = serial();
    let gctl = require_root();
    let (lab, host, pins, loc) = lab();
    let host_ns = lab.netns(Role::Host);
    let _host_scope = HostScope::new();
    gctl.ok(Some(&host), &["attach", addr::BRIDGE])
        .expect("attach");
    let before: Vec<Vec<String>> = lab
        .ports
        .iter()
        .map(|p| hooks_on(host_ns, &p.host.name))
        .collect();
    let state_before = std::fs::read(loc.state_file()).expect("state file");

    for verb in ["attach", "detach"] {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &host])
            .arg(gctl.path())
            .args([verb, addr::BRIDGE]);
        let (code, _, err) = run(c);
        assert_eq!(code, 1, "{verb} under ip netns exec must refuse: {err}");
        assert!(
            err.contains("guard state exists") && err.contains(&format!("guardctl --netns {host}")),
            "{verb}: the refusal names the state and suggests --netns: {err}"
        );
    }
    let after: Vec<Vec<String>> = lab
        .ports
        .iter()
        .map(|p| hooks_on(host_ns, &p.host.name))
        .collect();
    assert_eq!(before, after, "the hooks changed");
    assert_eq!(
        std::fs::read(loc.state_file()).expect("state file"),
        state_before
    );
    gctl.ok(Some(&host), &["detach", addr::BRIDGE])
        .expect("detach");
    finish(lab, pins);
}

// ---------------------------------------------------------------------------------------------
// Item 6: --netns, --json, audit and top wording.

/// `run --netns NS --metrics ADDR` serves ADDR in the caller's namespace: the URL it prints
/// answers from the host.
#[test]
fn item6_metrics_bound_in_the_callers_namespace() {
    let _serial = serial();
    let gctl = require_root();
    let (lab, host, pins, _loc) = lab();
    let addr = free_local_port().expect("a free port");
    let agent = Agent::start(&gctl, &host, addr::BRIDGE, &["--metrics", &addr]);
    let body = http_get(&addr, "/metrics").expect("scrape from the caller's namespace");
    assert!(body.contains("# TYPE guard_packets counter"), "{body}");
    drop(agent);
    gctl.ok(Some(&host), &["detach", addr::BRIDGE])
        .expect("detach");
    finish(lab, pins);
}

/// `run --json` prints one JSON object per line, each with `schema` and `event`.
#[test]
fn item6_run_json_prints_events() {
    let _serial = serial();
    let gctl = require_root();
    let (lab, host, pins, _loc) = lab();
    let mut agent = Agent::start(&gctl, &host, addr::BRIDGE, &["--json"]);
    add_port(lab.netns(Role::Host), "vx4", true);
    let line = agent.wait_for("vx4", Duration::from_secs(5));
    let v: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
    assert_eq!(v["schema"], "guardctl.run.v1", "{v}");
    assert_eq!(
        (&v["event"], &v["port"]),
        (&"hooked".into(), &"vx4".into()),
        "{v}"
    );
    drop(agent);
    gctl.ok(Some(&host), &["detach", addr::BRIDGE])
        .expect("detach");
    finish(lab, pins);
}

/// A plain `audit` does not claim that anything was applied, and every fix printed for
/// `--netns NS` names the namespace.
#[test]
fn item6_audit_wording_and_netns_fixes() {
    let _serial = serial();
    let gctl = require_root();
    let (lab, host, pins, _loc) = lab();
    let out = gctl.output(Some(&host), &["audit"]).expect("audit");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("--fix:"),
        "control: the report has fix notes:\n{text}"
    );
    assert!(
        !text.contains("--fix: applied"),
        "plain audit says --fix applied:\n{text}"
    );

    let out = gctl
        .output(Some(&host), &["audit", "--json"])
        .expect("audit --json");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let fixes: Vec<&str> = v["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .flat_map(|f| f["fix"].as_array().into_iter().flatten())
        .filter_map(|f| f.as_str())
        .collect();
    assert!(
        fixes.iter().any(|f| f.contains("sysctl -w")),
        "control: {fixes:?}"
    );
    for f in &fixes {
        let scoped = if f.contains("sysctl -w") {
            f.starts_with(&format!("ip netns exec {host} "))
        } else if f.starts_with("ip ") {
            f.starts_with(&format!("ip -n {host} "))
        } else if f.starts_with("guardctl ") {
            f.starts_with(&format!("guardctl --netns {host} "))
        } else {
            true
        };
        assert!(scoped, "fix for --netns {host} without the namespace: {f}");
    }
    finish(lab, pins);
}

/// `top` shows an IPv6 endpoint with a port as `[addr]:port`.
#[test]
fn item6_top_brackets_ipv6_endpoints() {
    let _serial = serial();
    let gctl = require_root();
    let (lab, host, pins, _loc) = lab();
    gctl.ok(Some(&host), &["attach", addr::BRIDGE])
        .expect("attach");
    let command = format!(
        "{} --netns {host} top {}; sleep 30",
        gctl.path().display(),
        addr::BRIDGE
    );
    let tmux = Tmux::start(&format!("cptop{}", std::process::id()), &command).expect("tmux");
    tmux.wait_for("the top screen", Duration::from_secs(10), |s| {
        s.contains("guard top")
    })
    .expect("top starts");
    let case = attack::attack_cases()
        .into_iter()
        .find(|c| c.name == "fwd-v6-storage")
        .expect("the case");
    let attacker = Attacker::g1(&lab).expect("attacker");
    let sock = PacketSocket::open(&attacker.ns, &attacker.ifname, 0).expect("socket");
    let nonce = new_nonce();
    // The source comes first on the line (an 80-column line may cut the destination).
    let want = format!("[{}]:{}", addr::G1_6, 50_000 + case.id);
    let mut seq = 0;
    let shown = poll(Duration::from_secs(5), || {
        sock.send(&build_frame(&attacker, &case, nonce, seq)).ok()?;
        seq += 1;
        tmux.capture().contains(&want).then_some(())
    });
    let screen = tmux.capture();
    assert!(shown.is_some(), "top does not show {want}:\n{screen}");
    drop(tmux);
    gctl.ok(Some(&host), &["detach", addr::BRIDGE])
        .expect("detach");
    finish(lab, pins);
}

// ---------------------------------------------------------------------------------------------
// Item 7: the unit file and a late bridge.

/// The unit: every path under /run it needs is created by systemd (`RuntimeDirectory=`, kept
/// with `RuntimeDirectoryPreserve=yes`), and `systemd-analyze verify` accepts it (on a copy
/// whose `ExecStart=` names the guardctl under test, since none is installed here).
#[test]
fn item7_unit_file_verifies() {
    let gctl = Guardctl::locate().expect("locate guardctl");
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../guard-userspace/dist/guardctl@.service");
    let text = std::fs::read_to_string(&path).expect("read the unit");
    let values = |key: &str| -> Vec<String> {
        text.lines()
            .filter_map(|l| l.trim().strip_prefix(&format!("{key}=")))
            .flat_map(|v| v.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
            .collect()
    };
    let runtime: Vec<String> = values("RuntimeDirectory")
        .iter()
        .map(|d| format!("/run/{d}"))
        .collect();
    for p in values("ReadWritePaths")
        .iter()
        .filter(|p| p.starts_with("/run/"))
    {
        assert!(
            runtime.iter().any(|r| p.starts_with(r.as_str())),
            "ReadWritePaths={p} is not created by RuntimeDirectory= (fails on a fresh /run)"
        );
    }
    assert!(
        runtime.contains(&"/run/guard".to_owned()),
        "RuntimeDirectory=guard missing"
    );
    assert_eq!(
        values("RuntimeDirectoryPreserve"),
        ["yes"],
        "the state must outlive the agent"
    );

    let dir = std::env::temp_dir().join(format!("guard-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let unit = dir.join("guardctl@br-guest.service");
    std::fs::write(
        &unit,
        text.replace(
            "/usr/local/sbin/guardctl",
            &gctl.path().display().to_string(),
        ),
    )
    .expect("write the copy");
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze is needed (cargo xtask setup installs systemd)");
    let _ = std::fs::remove_dir_all(&dir);
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!("systemd-analyze verify: {} {}", out.status, err.trim());
    let ours: Vec<&str> = err.lines().filter(|l| l.contains("guardctl@")).collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify: {err}"
    );
}

/// `run` for a bridge that does not exist yet says it waits, then attaches when it appears.
#[test]
fn item7_run_waits_for_the_bridge() {
    let _serial = serial();
    let gctl = require_root();
    let ns = NetNs::create(&format!("{}late", guard_tests::lab::harness::own_prefix()))
        .expect("namespace");
    ns.ip_batch(&[
        "link set lo up".into(),
        "link add m0 type veth peer name m0p".into(),
        "address add 10.77.0.1/24 dev m0".into(),
        "link set m0 up".into(),
        "link set m0p up".into(),
    ])
    .expect("configure");
    let pins = PinScope::new(ns.name()).expect("pin scope");
    let mut agent = Agent::spawn(&gctl, ns.name(), "br-late", &[]);
    agent.wait_for("waiting for bridge br-late", Duration::from_secs(10));
    assert!(
        agent.child.try_wait().expect("try_wait").is_none(),
        "the agent exited"
    );
    ns.ip_batch(&[
        "link add br-late type bridge".into(),
        "link add vl1 type veth peer name vl1p".into(),
        "link set vl1 master br-late".into(),
        "link set vl1 up".into(),
        "link set vl1p up".into(),
        "link set br-late up".into(),
    ])
    .expect("the bridge appears");
    agent.wait_for("agent following br-late", Duration::from_secs(10));
    poll(Duration::from_secs(5), || {
        (!hooks_on(&ns, "vl1").is_empty()).then_some(())
    })
    .expect("vl1 hooked");
    drop(agent);
    gctl.ok(Some(ns.name()), &["detach", "br-late"])
        .expect("detach");
    drop(pins);
    ns.delete().expect("delete the namespace");
    assert_no_namespaces_left();
}

// ---------------------------------------------------------------------------------------------
// Item 8: exit codes and wording.

/// Validation of arguments is a usage error (64), `/33` says the prefix is too long, `stats
/// --watch BRIDGE` watches BRIDGE, `rules del` of a prefix not in force fails.
#[test]
fn item8_exit_codes_and_wording() {
    let _serial = serial();
    let gctl = require_root();
    let (lab, host, pins, _loc) = lab();
    let g = |args: &[&str]| gctl.command(Some(&host), args);
    for (args, needle) in [
        (
            &["attach", addr::BRIDGE, "--protect", "10.0.0.300/24"][..],
            "is not a CIDR",
        ),
        (
            &["attach", addr::BRIDGE, "--protect", "10.0.0.0/33"][..],
            "prefix length /33 is too long for IPv4",
        ),
        (
            &["attach", addr::BRIDGE, "--hook", "ebpf-magic"][..],
            "unknown hook",
        ),
        (
            &["attach", addr::BRIDGE, "--host-mac", "zz:00:00:00:00:01"][..],
            "is not a MAC address",
        ),
        (
            &["rules", "del", addr::BRIDGE, "fd00::/129"][..],
            "too long for IPv6",
        ),
        (
            &["rules", "add", addr::BRIDGE][..],
            "--protect <CIDR[=CLASS]>|--allow <CIDR[=CLASS]>",
        ),
        (
            &["stats", "--watch=0", addr::BRIDGE][..],
            "is not a positive number of seconds",
        ),
    ] {
        let (code, _, err) = run(g(args));
        assert_eq!(code, 64, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err:?} lacks {needle:?}");
        assert!(!err.contains("invalid IP address syntax"), "{err}");
    }
    assert!(pins.leftovers().is_empty(), "{:?}", pins.leftovers());

    gctl.ok(Some(&host), &["attach", addr::BRIDGE])
        .expect("attach");
    let (code, _, err) = run(g(&["rules", "del", addr::BRIDGE, "10.123.0.0/16"]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("10.123.0.0/16 is not in force"), "{err}");

    let mut watch = g(&["stats", "--watch", addr::BRIDGE])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("stats --watch");
    let stdout = watch.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let seen = rx
        .recv_timeout(Duration::from_secs(5))
        .and_then(|_| rx.recv_timeout(Duration::from_secs(5)));
    let exited = watch.try_wait().expect("try_wait");
    let _ = watch.kill();
    let _ = watch.wait();
    let seen =
        seen.unwrap_or_else(|_| panic!("stats --watch br-guest printed nothing (exit {exited:?})"));
    assert!(
        seen.starts_with(addr::BRIDGE),
        "stats --watch {}: {seen}",
        addr::BRIDGE
    );
    gctl.ok(Some(&host), &["detach", addr::BRIDGE])
        .expect("detach");
    finish(lab, pins);
}

/// `--version` names the embedded eBPF object; completions and the man page come from clap.
#[test]
fn version_completions_and_man_page() {
    let gctl = Guardctl::locate().expect("locate guardctl");
    let id = guard::attach::object_id(embedded_object());
    let v = gctl.ok(None, &["--version"]).expect("--version");
    assert!(v.contains(&format!("eBPF object {id}")), "{v}");
    for shell in ["bash", "zsh", "fish"] {
        let c = gctl.ok(None, &["completions", shell]).expect("completions");
        assert!(
            c.contains("guardctl") && c.contains("rules"),
            "{shell}: {c}"
        );
    }
    let man = gctl.ok(None, &["man"]).expect("man");
    assert!(
        man.contains(".TH guardctl 8") && man.contains("netns"),
        "{man}"
    );
}

// ---------------------------------------------------------------------------------------------
// Issue 11: per-item reconcile, bounded latency.

/// One port that refuses every hook, before the others in the discovery, does not keep them
/// from being hooked: each is hooked or reported on its own, and `status` reports the failure.
/// In the agent, a full host MAC table (a SIGHUP'd configuration with too many MACs) is
/// reported and a port that joins afterwards is still hooked.
#[test]
#[expect(
    clippy::too_many_lines,
    reason = "two scenarios of the same property, in order"
)]
fn reconcile_is_per_item() {
    let _serial = serial();
    let gctl = require_root();
    let (lab, host, pins, loc) = lab();
    let host_ns = lab.netns(Role::Host);
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
    let mut ports = vec![iface(999_999, "ghost0", Some([2, 0, 0, 0, 0, 9]), false)];
    ports.extend(
        lab.ports
            .iter()
            .map(|p| iface(p.host.ifindex, &p.host.name, Some(p.host.mac), false)),
    );
    let discovery = Discovery {
        bridge: iface(lab.bridge.ifindex, addr::BRIDGE, Some(lab.bridge.mac), true),
        ports,
        host_macs: [(lab.bridge.mac, MacSource::Bridge)].into_iter().collect(),
        addrs: vec![HostAddr {
            ifindex: lab.mgmt_if.ifindex,
            ifname: lab.mgmt_if.name.clone(),
            addr: addr::HOST_MGMT4.into(),
            prefix_len: 24,
            peer: None,
        }],
        ifaces: Vec::new(),
        routes: Vec::new(),
        fou_ports: Vec::new(),
    };
    let failures = host_ns
        .run(|| {
            let opts = Options {
                hook: "xdp".to_owned(),
                ..Options::default()
            };
            let (_guard, changes) = Guard::attach(&loc, opts, &discovery, embedded_object())?;
            Ok(changes
                .failures
                .iter()
                .map(|(item, e)| (item.clone(), e.to_string()))
                .collect::<Vec<_>>())
        })
        .expect("attach with a refusing port first");
    eprintln!("failures: {failures:?}");
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(
        matches!(&failures[0].0, Item::Port { name, .. } if name == "ghost0"),
        "{failures:?}"
    );
    for p in &lab.ports {
        assert!(
            !hooks_on(host_ns, &p.host.name).is_empty(),
            "{} not hooked",
            p.host.name
        );
    }
    let (st, code) = gctl.status_code(&host, addr::BRIDGE).expect("status");
    assert_eq!(code, 3, "{st:#}");
    assert!(st["failures"][0]["name"] == "ghost0", "{st:#}");
    gctl.ok(Some(&host), &["detach", addr::BRIDGE])
        .expect("detach");

    // The agent: a full MAC table, then a new port.
    let dir = std::env::temp_dir().join(format!("guard-cp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let cfg = dir.join("guard.toml");
    std::fs::write(&cfg, format!("[[bridge]]\nname = \"{}\"\n", addr::BRIDGE)).expect("config");
    let mut agent = Agent::start(
        &gctl,
        &host,
        addr::BRIDGE,
        &["--config", cfg.to_str().expect("utf-8")],
    );
    let macs: Vec<String> = (0..=guard_common::mac::MAC_TABLE_MAX_ENTRIES)
        .map(|i| format!("\"02:aa:00:00:{:02x}:{:02x}\"", i / 256, i % 256))
        .collect();
    std::fs::write(
        &cfg,
        format!(
            "[[bridge]]\nname = \"{}\"\nextra_host_macs = [{}]\n",
            addr::BRIDGE,
            macs.join(", ")
        ),
    )
    .expect("config with too many MACs");
    agent.signal(libc::SIGHUP);
    agent.wait_for("host MAC set not applied", Duration::from_secs(5));
    add_port(host_ns, "vx5", true);
    agent.wait_for("hooked vx5", Duration::from_secs(5));
    let (st, code) = gctl.status_code(&host, addr::BRIDGE).expect("status");
    assert_eq!(code, 3, "{st:#}");
    assert!(
        st["failures"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f["item"] == "host-macs")),
        "{st:#}"
    );
    assert_eq!(port(&st, "vx5")["guarded"], true, "{st:#}");
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
    gctl.ok(Some(&host), &["detach", addr::BRIDGE])
        .expect("detach");
    finish(lab, pins);
}

/// With another guest making the bridge learn 500 MACs per second, a new port is still hooked
/// within a bounded time after it is enslaved (measured; asserted generously).
#[test]
fn agent_latency_under_fdb_learning() {
    const ROUNDS: usize = 7;
    let _serial = serial();
    let gctl = require_root();
    let (lab, host, pins, _loc) = lab();
    let host_ns = lab.netns(Role::Host);
    let mut agent = Agent::start(&gctl, &host, addr::BRIDGE, &[]);
    let fdb_count = || {
        host_ns
            .exec("bridge", &["fdb", "show", "br", addr::BRIDGE], None)
            .map_or(0, |s| s.lines().count())
    };
    let fdb_before = fdb_count();

    // g2 sends 500 frames a second, each from a new MAC, to g1's MAC (bridged, not host-bound).
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let g1_mac = lab.port(Role::G1).expect("g1").guest.mac;
    let sender = PacketSocket::open(lab.ns(Role::G2), "eth0", 0).expect("g2 socket");
    let thread = {
        let (stop, sent) = (Arc::clone(&stop), Arc::clone(&sent));
        std::thread::spawn(move || {
            let mut rng = Rng(0x5eed);
            let start = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                let mut f = vec![0u8; 60];
                f[..6].copy_from_slice(&g1_mac);
                f[6] = 0x02;
                for b in &mut f[7..12] {
                    *b = rng.byte();
                }
                f[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
                let _ = sender.send(&f);
                let n = sent.fetch_add(1, Ordering::Relaxed) + 1;
                // Pacing, not synchronisation: 500 frames per second on average.
                let due = start + Duration::from_millis(2 * n);
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
            }
        })
    };
    let t_learn = Instant::now();
    // Two seconds of the storm before the first measurement: the bridge is busy learning.
    poll(Duration::from_secs(10), || {
        (fdb_count() > fdb_before + 1000).then_some(())
    })
    .expect("the bridge learns the storm's MACs");

    let mut latencies = Vec::new();
    for i in 0..ROUNDS {
        let name = format!("vt{i}");
        add_port(host_ns, &name, false);
        let t0 = Instant::now();
        host_ns
            .ip(&["link", "set", &name, "master", addr::BRIDGE])
            .expect("enslave");
        let (at, _) = agent.wait_for_at(&format!("hooked {name}"), Duration::from_secs(5));
        latencies.push(at.duration_since(t0));
        host_ns.ip(&["link", "del", &name]).expect("delete");
        agent.wait_for(&format!("released {name}"), Duration::from_secs(5));
    }
    stop.store(true, Ordering::Relaxed);
    thread.join().expect("sender");
    let learned = fdb_count().saturating_sub(fdb_before);
    #[expect(clippy::cast_precision_loss, reason = "a rate for the report")]
    let rate = sent.load(Ordering::Relaxed) as f64 / t_learn.elapsed().as_secs_f64();
    latencies.sort();
    eprintln!(
        "MEASURED: enslave -> agent hooked the port, under {rate:.0} new MACs/s ({learned} FDB \
         entries learned): min {:.1?}, median {:.1?}, max {:.1?} ({ROUNDS} rounds)",
        latencies[0],
        latencies[ROUNDS / 2],
        latencies[ROUNDS - 1]
    );
    assert!(
        learned > 1000,
        "the storm did not make the bridge learn: {learned}"
    );
    assert!(
        latencies[ROUNDS - 1] < Duration::from_millis(500),
        "{latencies:?}"
    );
    drop(agent);
    gctl.ok(Some(&host), &["detach", addr::BRIDGE])
        .expect("detach");
    finish(lab, pins);
}

/// Program ids on the ports' guard links, as `status --json` reports them.
fn link_programs(gctl: &Guardctl, host: &str) -> BTreeSet<u64> {
    let st = gctl.status(host, addr::BRIDGE).expect("status");
    st["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .filter_map(|p| p["program_id"].as_u64())
        .collect()
}

/// An attach made by another build while the agent runs (an upgrade) is not undone by the
/// agent's next reconcile: it keeps the newer programs instead of swapping its own back in.
#[test]
fn agent_keeps_the_programs_of_a_later_attach() {
    let _serial = serial();
    let gctl = require_root();
    let (lab, host, pins, loc) = lab();
    let host_ns = lab.netns(Role::Host);
    let _agent = Agent::start(&gctl, &host, addr::BRIDGE, &[]);
    let ours = link_programs(&gctl, &host);
    // Another build: the same object with one more byte (another object id, so its programs
    // are loaded anew and swapped into every link).
    let mut other = embedded_object().to_vec();
    other.push(0);
    let options = state(&loc).options;
    let found = discover_in(host_ns);
    host_ns
        .run(|| {
            Guard::attach(&loc, options, &found, &other)?;
            Ok(())
        })
        .expect("attach the other build");
    // One program on the ports' links and the backstop on the bridge's: both replaced.
    let theirs = link_programs(&gctl, &host);
    assert!(
        theirs.len() == 2 && ours.len() == 2 && theirs.is_disjoint(&ours),
        "control: {ours:?} -> {theirs:?}"
    );
    host_ns
        .ip(&["address", "add", "10.31.0.1/24", "dev", addr_dev(&lab)])
        .expect("add an address");
    poll(Duration::from_secs(5), || {
        kernel_rules(&loc)
            .contains_key(&net("10.31.0.0/24"))
            .then_some(())
    })
    .expect("the agent reconciles");
    assert_eq!(
        link_programs(&gctl, &host),
        theirs,
        "the agent swapped its programs back"
    );
    gctl.ok(Some(&host), &["detach", addr::BRIDGE])
        .expect("detach");
    finish(lab, pins);
}

/// A discovery of the lab bridge in `host`.
fn discover_in(host: &NetNs) -> Discovery {
    host.run(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let h = guard::discovery::connect()?;
            Ok(guard::discovery::discover(&h, addr::BRIDGE).await?)
        })
    })
    .expect("discover the lab bridge")
}

// ---------------------------------------------------------------------------------------------
// The randomised interleaving.

/// What the test expects of the live edits.
#[derive(Default, Debug)]
struct Model {
    added: BTreeMap<IpNet, Action>,
    removed: BTreeSet<IpNet>,
}

/// The desired state recomputed from a fresh discovery in `host`.
fn desired(host: &NetNs, s: &State) -> Policy {
    Policy::build(&s.options, &s.edits, &discover_in(host)).expect("build the desired policy")
}

/// The bridge's ports now.
fn bridge_ports(host: &NetNs) -> BTreeSet<u32> {
    host.ip_json(&["link", "show", "master", addr::BRIDGE])
        .expect("ip link")
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|l| l["ifindex"].as_u64())
                .map(|i| i as u32)
                .collect()
        })
        .unwrap_or_default()
}

/// Compares kernel, state and model; `None` with the differences while they differ.
fn converged(loc: &Location, host: &NetNs, model: &Model) -> Result<(), String> {
    let s = state(loc);
    let kernel = kernel_rules(loc);
    let in_state: BTreeMap<IpNet, Action> =
        s.policy.rules.iter().map(|r| (r.net, r.action)).collect();
    if kernel != in_state {
        return Err(format!("kernel {kernel:?} != state.json {in_state:?}"));
    }
    let want = desired(host, &s);
    if want != s.policy {
        return Err(format!(
            "state.json policy {:?} != desired {:?}",
            s.policy.rules, want.rules
        ));
    }
    let added: BTreeMap<IpNet, Action> = s.edits.added.iter().map(|r| (r.net, r.action)).collect();
    let removed: BTreeSet<IpNet> = s.edits.removed.iter().copied().collect();
    if added != model.added || removed != model.removed {
        return Err(format!("edits {added:?} -{removed:?} != model {model:?}"));
    }
    for (n, a) in &model.added {
        if kernel.get(n) != Some(a) {
            return Err(format!("edit {n} {a:?} not in the kernel"));
        }
    }
    for n in &model.removed {
        if kernel.contains_key(n) {
            return Err(format!("removed {n} still in the kernel"));
        }
    }
    // Every port is hooked (the bridge device's own backstop hook aside).
    let hooked: BTreeSet<u32> = s
        .ports
        .iter()
        .filter(|(_, p)| !p.is_bridge)
        .map(|(i, _)| *i)
        .collect();
    let ports = bridge_ports(host);
    if hooked != ports {
        return Err(format!("hooked {hooked:?} != bridge ports {ports:?}"));
    }
    if !s.ports.values().any(|p| p.is_bridge) {
        return Err("the bridge device's backstop is not hooked".to_owned());
    }
    Ok(())
}

/// Seeded random steps (rule edits, address changes, port changes, agent restarts); after
/// each, the kernel's tries equal state.json's policy, which equals the policy rebuilt from the
/// options, the edits and a fresh discovery, the edits equal the model, and every port of the
/// bridge is hooked. `GUARD_SEED` replays a run.
#[test]
#[expect(clippy::too_many_lines, reason = "one loop of steps, each a few lines")]
fn random_interleaving_keeps_kernel_equal_to_desired_state() {
    const BUDGET: Duration = Duration::from_secs(50);
    let _serial = serial();
    let gctl = require_root();
    let seed = std::env::var("GUARD_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| u64::from(std::process::id()) ^ 0x9e37_79b9);
    eprintln!("seed {seed} (GUARD_SEED={seed} replays this run)");
    let mut rng = Rng(seed);
    let (lab, host, pins, loc) = lab();
    let host_ns = lab.netns(Role::Host);
    add_port(host_ns, "dx0", false); // the interface the test adds addresses to
    let mut agent = Agent::start(&gctl, &host, addr::BRIDGE, &[]);
    let mut model = Model::default();
    let pool: Vec<IpNet> = [
        "10.50.0.0/16",
        "10.50.1.0/24",
        "10.50.1.7/32",
        "10.50.2.0/24",
        "10.10.0.0/24",
        "10.20.0.0/24",
        "10.20.0.1/32",
        "10.60.1.0/24",
        "10.60.2.0/24",
        "fd00:50:1::/64",
        "fd00:10::/64",
        "fd00:60:1::/64",
    ]
    .iter()
    .map(|s| net(s))
    .collect();
    let mut addrs: BTreeSet<u8> = BTreeSet::new();
    let mut extra_ports: BTreeSet<u8> = BTreeSet::new();
    let started = Instant::now();
    let mut steps = 0;
    while started.elapsed() < BUDGET {
        steps += 1;
        let roll = rng.below(100);
        let what;
        if roll < 30 {
            let n = rng.pick(&pool);
            let action = if rng.chance(50) {
                Action::Deny
            } else {
                Action::Allow
            };
            let replace = rng.chance(50);
            let flag = if action == Action::Deny {
                "--protect"
            } else {
                "--allow"
            };
            let arg = format!("{n}=c{}", rng.below(3));
            let mut args = vec!["rules", "add", addr::BRIDGE, flag, &arg];
            if replace {
                args.push("--replace");
            }
            let in_force = state(&loc).policy.get(&n).map(|r| r.action);
            let refused = in_force.is_some_and(|a| a != action) && !replace;
            let (code, _, err) = run(gctl.command(Some(&host), &args));
            assert_eq!(
                code,
                i32::from(refused),
                "seed {seed} step {steps}: {args:?}: {err}"
            );
            if !refused {
                model.removed.remove(&n);
                model.added.insert(n, action);
            }
            what = format!(
                "rules add {flag} {arg}{}",
                if replace { " --replace" } else { "" }
            );
        } else if roll < 45 {
            let s = state(&loc);
            let candidates: Vec<IpNet> = s.policy.rules.iter().map(|r| r.net).collect();
            let n = if candidates.is_empty() || rng.chance(20) {
                rng.pick(&pool)
            } else {
                rng.pick(&candidates)
            };
            let in_force = s.policy.get(&n).is_some();
            let ns = n.to_string();
            let (code, _, err) =
                run(gctl.command(Some(&host), &["rules", "del", addr::BRIDGE, &ns]));
            assert_eq!(
                code,
                i32::from(!in_force),
                "seed {seed} step {steps}: del {n}: {err}"
            );
            if in_force {
                model.added.remove(&n);
                model.removed.insert(n);
            }
            what = format!("rules del {n}");
        } else if roll < 52 {
            let (code, _, err) = run(gctl.command(Some(&host), &["rules", "reset", addr::BRIDGE]));
            assert_eq!(code, 0, "seed {seed} step {steps}: reset: {err}");
            model = Model::default();
            what = "rules reset".to_owned();
        } else if roll < 70 {
            let k = rng.pick(&[1u8, 2, 3]);
            let (v4, v6) = (format!("10.60.{k}.1/24"), format!("fd00:60:{k}::1/64"));
            let verb = if addrs.contains(&k) { "del" } else { "add" };
            host_ns
                .ip_batch(&[
                    format!("address {verb} {v4} dev dx0"),
                    format!(
                        "address {verb} {v6} dev dx0 {}",
                        if verb == "add" { "nodad" } else { "" }
                    ),
                ])
                .expect("address change");
            if verb == "add" {
                addrs.insert(k);
            } else {
                addrs.remove(&k);
            }
            what = format!("address {verb} {v4}, {v6}");
        } else if roll < 88 {
            let k = rng.pick(&[1u8, 2, 3, 4]);
            let name = format!("rp{k}");
            if extra_ports.remove(&k) {
                host_ns.ip(&["link", "del", &name]).expect("delete a port");
                what = format!("port {name} removed");
            } else {
                add_port(host_ns, &name, true);
                extra_ports.insert(k);
                what = format!("port {name} added");
            }
        } else {
            agent.signal(libc::SIGTERM);
            agent
                .wait_exit(Duration::from_secs(10))
                .expect("agent exits");
            // Sometimes the host changes while no agent runs.
            if rng.chance(50) {
                let name = "rpdown";
                if host_ns.ip(&["link", "show", "dev", name]).is_ok() {
                    host_ns.ip(&["link", "del", name]).expect("delete");
                } else {
                    add_port(host_ns, name, true);
                }
            }
            agent = Agent::start(&gctl, &host, addr::BRIDGE, &[]);
            what = "agent restarted".to_owned();
        }
        let mut last = String::new();
        let t = Instant::now();
        let ok = poll(Duration::from_secs(5), || {
            match converged(&loc, host_ns, &model) {
                Ok(()) => Some(()),
                Err(e) => {
                    last = e;
                    None
                }
            }
        });
        assert!(
            ok.is_some(),
            "seed {seed}, step {steps} ({what}): not converged: {last}"
        );
        eprintln!(
            "step {steps:>3}: {what:<48} converged in {:.1?}",
            t.elapsed()
        );
    }
    eprintln!("seed {seed}: {steps} steps, kernel == desired state after each");
    drop(agent);
    gctl.ok(Some(&host), &["detach", addr::BRIDGE])
        .expect("detach");
    finish(lab, pins);
}
