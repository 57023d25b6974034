//! The agent's drop log (issue 15, item 3): `guardctl run --log FILE` appends every drop event
//! as a JSON line, `guardctl events` running at the same time sees the same events (the agent
//! is the one consumer of the ring and passes them on: nothing is split), and both carry on
//! across an agent restart: the log is appended to, and the same `events` process falls back to
//! the ring while no agent runs, then subscribes to the new agent.
//!
//! Needs root, and `guardctl` built in the same profile first:
//!
//! ```text
//! cargo build --release -p guard-userspace --bin guardctl
//! cargo test --release -p guard-tests --test drop_log
//! ```
//!
//! A test that cannot run (not root, no guardctl) fails; it never skips.
#![expect(clippy::unwrap_used, reason = "tests")]

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::MutexGuard,
    time::{Duration, Instant},
};

use guard_tests::{
    lab::{
        Lab, Role, Variant,
        addr::{self, BRIDGE},
        guardctl::{Agent, EventsReader, Guardctl, PinScope, Stats, poll},
        harness::{assert_no_namespaces_left, require_root_and_guardctl, serial},
        sock::{PacketSocket, udp_bind, udp_collect},
    },
    packet::{Eth, Ipv4},
};
use serde_json::Value;

/// The host's management network (`mgmt0` holds [`addr::HOST_MGMT4`]).
const PROTECT: &str = "10.10.0.0/24=management";
/// The attacking guest's port.
const PORT: &str = "vg1";
const DST_PORT: u16 = 3260;
/// Frames per batch; each batch has its own source ports, so every event names its frame.
const N: u16 = 20;
const WAIT: Duration = Duration::from_secs(15);

/// A lab with guard's pins guarded. Fields drop in order: the processes, the log file, the
/// pins, the namespaces, then the one-lab-at-a-time lock (also when the test panics).
struct Setup {
    gctl: Guardctl,
    host: String,
    log: LogFile,
    pins: PinScope,
    lab: Lab,
    _serial: MutexGuard<'static, ()>,
}

/// The drop log of a test, removed on drop.
struct LogFile(PathBuf);

impl Drop for LogFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Setup {
    fn new() -> Self {
        let serial = serial();
        let gctl = require_root_and_guardctl(
            "the drop log tests need root (namespaces, XDP, bpffs); not skipping",
        );
        let lab = Lab::build(Variant::Base).expect("build the lab");
        // No IPv6 in the attacking guest: router solicitations would make events of their own.
        lab.netns(Role::G1)
            .sysctl(&[
                ("net.ipv6.conf.all.disable_ipv6", "1"),
                ("net.ipv6.conf.default.disable_ipv6", "1"),
            ])
            .expect("quiet guest");
        let host = lab.ns(Role::Host).to_owned();
        let pins = PinScope::new(&host).expect("pin scope");
        let log = LogFile(std::env::temp_dir().join(format!("{host}-drops.jsonl")));
        let _ = std::fs::remove_file(&log.0);
        Self {
            gctl,
            host,
            log,
            pins,
            lab,
            _serial: serial,
        }
    }

    fn finish(self) {
        let Self {
            pins,
            lab,
            log,
            _serial,
            ..
        } = self;
        drop(log);
        drop(pins);
        lab.teardown().expect("tear the lab down");
        assert_no_namespaces_left();
    }

    fn stats(&self) -> Stats {
        self.gctl.stats(&self.host, BRIDGE).unwrap()
    }

    /// Sends one attack frame from `g1` per source port: UDP to the management address.
    fn attack(&self, src_ports: &[u16]) {
        let g1 = &self.lab.port(Role::G1).unwrap().guest;
        let sock = PacketSocket::open(&g1.ns, &g1.name, 0).unwrap();
        for &sp in src_ports {
            let frame = Eth::new(self.lab.bridge.mac, g1.mac)
                .ipv4(Ipv4::new(addr::G1_4, addr::HOST_MGMT4).udp(sp, DST_PORT, &[0x5a; 18]))
                .build();
            sock.send(&frame).unwrap();
        }
    }

    fn agent(&self, hook: &str) -> Agent {
        let log = self.log.0.to_str().unwrap();
        let mut agent = Agent::spawn(
            &self.gctl,
            &self.host,
            BRIDGE,
            &["--protect", PROTECT, "--hook", hook, "--log", log],
        );
        // Printed once the agent holds the ring (after attaching): from here on it logs.
        agent.wait_for("reading drop events", WAIT);
        agent
    }

    /// The log's lines now, parsed.
    fn log_lines(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log.0)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// Source port -> how many events name it, among `lines` (drop events of our attack only).
fn by_src_port(lines: &[Value]) -> BTreeMap<u16, usize> {
    let mut m = BTreeMap::new();
    for v in lines {
        if v["schema"] == "guardctl.events.v1"
            && v["port"] == PORT
            && v["dst_port"] == DST_PORT
            && let Some(sp) = v["src_port"].as_u64()
        {
            *m.entry(u16::try_from(sp).unwrap()).or_default() += 1;
        }
    }
    m
}

fn parse(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Waits until every port of `ports` is named once by the lines `read` returns.
fn wait_all(what: &str, ports: &[u16], read: impl Fn() -> Vec<Value>) -> BTreeMap<u16, usize> {
    let mut last = BTreeMap::new();
    let ok = poll(WAIT, || {
        last = by_src_port(&read());
        ports.iter().all(|p| last.contains_key(p)).then_some(())
    });
    assert!(
        ok.is_some(),
        "{what}: not every event within {WAIT:?}: {last:?}"
    );
    last
}

fn batch(first: u16) -> Vec<u16> {
    (first..first + N).collect()
}

/// Negative control: without guard, the attack frames reach the host's management address.
fn negative_control(s: &Setup) {
    let target = SocketAddr::from((addr::HOST_MGMT4, DST_PORT));
    let udp = udp_bind(&s.host, target).unwrap();
    let ports = batch(41_000);
    s.attack(&ports);
    let got = udp_collect(&udp, u32::from(N), Instant::now() + WAIT, |_, peer| {
        ports.contains(&peer.port()).then(|| u32::from(peer.port()))
    })
    .unwrap();
    assert_eq!(
        got,
        u32::from(N),
        "INVALID negative control: the attack does not reach the host without guard"
    );
}

#[test]
fn drop_log_survives_an_agent_restart_with_events_running_xdp() {
    survives_restart("xdp");
}

#[test]
fn drop_log_survives_an_agent_restart_with_events_running_tc() {
    survives_restart("tc");
}

fn survives_restart(hook: &str) {
    let s = Setup::new();
    negative_control(&s);

    let agent = s.agent(hook);
    let hooked = s.stats();
    let mode = hooked.0["ports"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == PORT))
        .map_or(&Value::Null, |p| &p["mode"]);
    assert!(mode.as_str().unwrap().starts_with(hook), "hooked as {mode}");
    let mut reader = EventsReader::spawn(&s.gctl, &s.host, BRIDGE, &["--json"]);
    reader.wait_stderr("reading events of", WAIT);
    let first_pid = agent.pid();
    assert!(
        reader.lines().is_empty(),
        "events before the attack: {:?}",
        reader.lines()
    );

    // Batch 1: dropped (counted), logged, and seen by `events`, each exactly once.
    let one = batch(42_000);
    let before = s.stats().port_reason(PORT, "deny_ipv4");
    s.attack(&one);
    let logged1 = wait_all("the log, batch 1", &one, || s.log_lines());
    let seen1 = wait_all("events, batch 1", &one, || parse(&reader.lines()));
    let after = s
        .gctl
        .wait_stats(&s.host, BRIDGE, "batch 1 dropped", WAIT, |st| {
            st.port_reason(PORT, "deny_ipv4") >= before + u64::from(N)
        })
        .unwrap();
    assert_eq!(
        after.port_reason(PORT, "deny_ipv4"),
        before + u64::from(N),
        "{:#}",
        after.0
    );
    assert!(logged1.values().all(|n| *n == 1), "log: {logged1:?}");
    assert_eq!(logged1, seen1, "the log and `events` disagree");
    let log_before_restart = std::fs::read(&s.log.0).unwrap();

    // Restart the agent; `events` keeps running: it reads the ring itself meanwhile, then hands
    // it over to the new agent.
    let status = agent.stop().expect("the agent exits on SIGTERM");
    assert!(status.success(), "agent: {status}");
    reader.wait_stderr("directly from the ring", WAIT);
    let agent = s.agent(hook);
    assert_ne!(agent.pid(), first_pid);
    let line = reader.wait_stderr("from the agent", WAIT);
    assert!(line.contains(&agent.pid().to_string()), "{line}");

    // Batch 2.
    let two = batch(43_000);
    s.attack(&two);
    let logged = wait_all("the log, batch 2", &two, || s.log_lines());
    let seen = wait_all("events, batch 2", &two, || parse(&reader.lines()));
    assert!(reader.running(), "`events` is the same process");
    let log_after = std::fs::read(&s.log.0).unwrap();
    assert!(
        log_after.starts_with(&log_before_restart),
        "the earlier lines of the log changed"
    );
    assert!(logged.values().all(|n| *n == 1), "log: {logged:?}");
    assert_eq!(logged, seen, "the log and `events` disagree");
    let both: Vec<u16> = one.iter().chain(&two).copied().collect();
    assert_eq!(
        logged.keys().copied().collect::<Vec<_>>(),
        both,
        "both batches in the log"
    );
    let total = s.stats();
    assert_eq!(
        total.port_reason(PORT, "deny_ipv4"),
        before + 2 * u64::from(N),
        "{:#}",
        total.0
    );
    eprintln!(
        "{hook}: sent {N}+{N}; logged {}+{}; `events` saw {}+{}; log lines {}",
        one.iter().filter(|p| logged.contains_key(p)).count(),
        two.iter().filter(|p| logged.contains_key(p)).count(),
        one.iter().filter(|p| seen.contains_key(p)).count(),
        two.iter().filter(|p| seen.contains_key(p)).count(),
        s.log_lines().len()
    );

    let status = agent.stop().expect("the agent exits on SIGTERM");
    assert!(status.success(), "agent: {status}");
    let status = reader.stop();
    assert!(status.success(), "events: {status}");
    s.finish();
}

/// A flood over the log's rate: at most the burst (`--log-rate`) of event lines, then one
/// summary line that counts the rest.
#[test]
fn drop_log_is_rate_limited() {
    const RATE: u16 = 5;
    const FLOOD: u16 = 50;
    let s = Setup::new();
    let log = s.log.0.to_str().unwrap().to_owned();
    let rate = RATE.to_string();
    let mut agent = Agent::spawn(
        &s.gctl,
        &s.host,
        BRIDGE,
        &[
            "--protect",
            PROTECT,
            "--log",
            &log,
            "--log-rate",
            &rate,
            "--event-rate",
            "1000",
        ],
    );
    agent.wait_for("reading drop events", WAIT);
    let ports: Vec<u16> = (44_000..44_000 + FLOOD).collect();
    s.attack(&ports);
    // Every frame sampled by the kernel (its limit is far above), so FLOOD events reach the
    // agent; the log admits RATE and summarises the rest once a token is back (about 1 s).
    let ok = poll(WAIT, || {
        s.log_lines()
            .iter()
            .any(|v| v["schema"] == "guardctl.droplog.v1")
            .then_some(())
    });
    let lines = s.log_lines();
    assert!(ok.is_some(), "no summary line: {lines:?}");
    let events = by_src_port(&lines);
    let suppressed: u64 = lines.iter().filter_map(|v| v["suppressed"].as_u64()).sum();
    eprintln!(
        "flood of {FLOOD}: {} event lines, {suppressed} suppressed",
        events.len()
    );
    // The flood takes milliseconds; a token more may come back while it lasts.
    assert!(
        (usize::from(RATE)..=usize::from(RATE) + 1).contains(&events.len()),
        "{lines:?}"
    );
    assert_eq!(
        events.len() as u64 + suppressed,
        u64::from(FLOOD),
        "{lines:?}"
    );
    let status = agent.stop().expect("the agent exits on SIGTERM");
    assert!(status.success(), "agent: {status}");
    s.finish();
}

/// The default log path is under /var/log/guard/<scope>/ (and `PinScope` removes it).
#[test]
fn default_log_path_is_per_scope() {
    let p = guard::droplog::default_path(&guard::pins::Location::new(Some("ns1"), "br0"));
    assert_eq!(p, Path::new("/var/log/guard/ns1/br0.jsonl"));
}
