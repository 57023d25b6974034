//! Observability acceptance tests (issue 5): drop events, VM identity, pcap, `/metrics`, `top`.
//!
//! Each test builds the namespace lab (tests/src/lab/) and attaches guard to its bridge with
//! `guardctl --netns`, protecting the host's management network. Guest `g1` sends an attack
//! of N UDP frames to the bridge's MAC and the host's management address over `AF_PACKET`.
//!
//! Needs root, and `guardctl` built in the same profile first (cargo does not build other
//! packages' binaries for these tests; `cargo xtask test` does it):
//!
//! ```text
//! cargo build --release -p guard-userspace --bin guardctl
//! cargo test --release -p guard-tests --test observe
//! ```
//!
//! A test that cannot run (not root, no guardctl) fails; it never skips.
#![expect(clippy::unwrap_used, reason = "tests")]
#![expect(
    clippy::float_cmp,
    reason = "Prometheus samples are f64; the compared counts are small integers, exact in f64"
)]

use std::{
    io::{BufRead as _, BufReader, Read as _},
    path::Path,
    process::{Child, Command, Stdio},
    sync::MutexGuard,
    time::{Duration, Instant},
};

use guard_tests::{
    lab::{
        Lab, Role, Variant,
        addr::{self, BRIDGE},
        frame::mac_to_string,
        guardctl::{
            Agent, Guardctl, PinScope, Stats, Tmux, free_local_port, http_get, pin_scope_dir,
        },
        harness::{assert_no_namespaces_left, require_root_and_guardctl, serial},
        sock::PacketSocket,
    },
    packet::{Eth, Ipv4},
};
use serde_json::Value;

/// The host's management network (`mgmt0` holds [`addr::HOST_MGMT4`]).
const PROTECT: &str = "10.10.0.0/24=management";
/// The attacking guest's port.
const PORT: &str = "vg1";
const DST_PORT: u16 = 3260;
const SRC_PORT: u16 = 40_000;

/// A lab with guard's pins guarded. Fields drop in order: the pins first, then the
/// namespaces, then the one-lab-at-a-time lock (also when the test panics).
struct Observed {
    gctl: Guardctl,
    host: String,
    pins: PinScope,
    lab: Lab,
    _serial: MutexGuard<'static, ()>,
}

impl Observed {
    fn new() -> Self {
        let serial = serial();
        let gctl = require_root_and_guardctl(
            "the observability tests need root (namespaces, XDP, bpffs); not skipping",
        );
        let lab = Lab::build(Variant::Base).expect("build the lab");
        // No IPv6 in the attacking guest: router solicitations and MLD reports would be
        // judged (and counted) at unpredictable times, and counter comparisons must be exact.
        lab.netns(Role::G1)
            .sysctl(&[
                ("net.ipv6.conf.all.disable_ipv6", "1"),
                ("net.ipv6.conf.default.disable_ipv6", "1"),
            ])
            .expect("quiet guest");
        let host = lab.ns(Role::Host).to_owned();
        let pins = PinScope::new(&host).expect("pin scope");
        Self {
            gctl,
            host,
            pins,
            lab,
            _serial: serial,
        }
    }

    /// Removes the pins and the namespaces now, reporting errors, and checks nothing is left.
    fn finish(self) {
        let Self {
            pins, lab, _serial, ..
        } = self;
        drop(pins);
        lab.teardown().expect("tear the lab down");
        assert_no_namespaces_left();
    }

    fn guardctl(&self, args: &[&str]) -> Command {
        self.gctl.command(Some(&self.host), args)
    }

    fn attach(&self, extra: &[&str]) {
        let mut args = vec!["attach", BRIDGE, "--protect", PROTECT];
        args.extend_from_slice(extra);
        self.gctl.ok(Some(&self.host), &args).unwrap();
    }

    fn stats(&self) -> Stats {
        self.gctl.stats(&self.host, BRIDGE).unwrap()
    }

    /// Polls `stats --json` until `done` holds (bounded), and returns that reading.
    fn wait_stats(&self, what: &str, done: impl Fn(&Stats) -> bool) -> Stats {
        self.gctl
            .wait_stats(&self.host, BRIDGE, what, Duration::from_secs(10), done)
            .unwrap()
    }

    /// Ethernet + IPv4 + UDP from `g1` to the management address, 60 bytes.
    fn attack_frame(&self) -> Eth {
        let g1 = &self.lab.port(Role::G1).unwrap().guest;
        Eth::new(self.lab.bridge.mac, g1.mac).ipv4(Ipv4::new(addr::G1_4, addr::HOST_MGMT4).udp(
            SRC_PORT,
            DST_PORT,
            &[0x5a; 18],
        ))
    }

    /// Sends `frame` `n` times out of `g1`.
    fn send(&self, frame: &[u8], n: usize) {
        let g1 = &self.lab.port(Role::G1).unwrap().guest;
        let sock = PacketSocket::open(&g1.ns, &g1.name, 0).unwrap();
        for _ in 0..n {
            sock.send(frame).unwrap();
        }
    }

    /// Sends `n` attack frames from the guest.
    fn attack(&self, n: usize) {
        self.send(&self.attack_frame().build(), n);
    }
}

/// One JSON event a line, as `guardctl events --json` prints them.
fn parse_events(out: &str) -> Vec<Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn events(s: &Stats, key: &str) -> u64 {
    s.0["events"][key].as_u64().unwrap()
}

/// A `guardctl events` process, killed on drop.
struct Reader {
    child: Child,
}

impl Reader {
    fn start(obs: &Observed, args: &[&str], env: &[(&str, &Path)]) -> Self {
        let mut all = vec!["events", BRIDGE];
        all.extend_from_slice(args);
        let mut cmd = obs.guardctl(&all);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        // Wait (bounded) for the line that says the lease is held.
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) if l.contains("reading events") => break,
                Ok(l) => eprintln!("events: {l}"),
                Err(e) => panic!("guardctl events did not start: {e}"),
            }
        }
        Self { child }
    }

    /// SIGINT (the reader drains the ring first), then all of its stdout.
    fn stop(mut self) -> String {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id().cast_signed(), libc::SIGINT) };
        let mut out = String::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "guardctl events: {status}");
        out
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn check_event(obs: &Observed, ev: &Value, vm: Option<&str>) {
    let g1 = &obs.lab.port(Role::G1).unwrap().guest;
    assert_eq!(ev["port"], PORT, "{ev}");
    assert_eq!(ev["vm"].as_str(), vm, "{ev}");
    // With a VM, the guest's MAC from libvirt; without, the port interface's own MAC.
    if vm.is_some() {
        assert_eq!(ev["port_mac"], "52:54:00:00:00:0a", "{ev}");
    } else {
        assert_eq!(ev["port_mac"].as_str().map(str::len), Some(17), "{ev}");
    }
    assert_eq!(ev["reason"], "deny_ipv4", "{ev}");
    assert_eq!(ev["src_mac"], mac_to_string(&g1.mac), "{ev}");
    assert_eq!(ev["dst_mac"], mac_to_string(&obs.lab.bridge.mac), "{ev}");
    assert_eq!(ev["src_ip"], addr::G1_4.to_string(), "{ev}");
    assert_eq!(ev["dst_ip"], addr::HOST_MGMT4.to_string(), "{ev}");
    assert_eq!(ev["proto"], "udp", "{ev}");
    assert_eq!(ev["src_port"], SRC_PORT, "{ev}");
    assert_eq!(ev["dst_port"], DST_PORT, "{ev}");
    assert_eq!(ev["rule"]["prefix"], "10.10.0.0/24", "{ev}");
    assert_eq!(ev["rule"]["class"], "management", "{ev}");
    assert_eq!(ev["len"], 60, "{ev}");
    assert_eq!(ev["captured"], 60, "{ev}");
}

/// Attack of N frames above the rate limit: exactly N counted, exactly `limit` events (the
/// rest counted as suppressed), each naming port, addresses and reason; the pcap holds them.
#[test]
fn events_are_rate_limited_and_counters_stay_exact() {
    rate_limited("xdp");
}

/// The same through the TC program (`--hook tc`): the event code is shared by both hooks.
#[test]
fn events_are_rate_limited_on_tc_too() {
    rate_limited("tc");
}

fn rate_limited(hook: &str) {
    const N: u64 = 40;
    const LIMIT: u64 = 10;
    let obs = Observed::new();
    obs.attach(&["--event-rate", &LIMIT.to_string(), "--hook", hook]);
    let stats = obs.stats();
    let mode = stats.0["ports"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == PORT))
        .map_or(&Value::Null, |p| &p["mode"]);
    assert!(mode.as_str().unwrap().starts_with(hook), "hooked as {mode}");
    let pcap = std::env::temp_dir().join(format!("{}.pcap", obs.host));
    let reader = Reader::start(&obs, &["--json", "--pcap", pcap.to_str().unwrap()], &[]);
    obs.attack(N as usize);
    // Every frame was judged once the kernel's event accounting covers all N.
    let s = obs.wait_stats("N drops and N event decisions", |s| {
        events(s, "sampled") + events(s, "suppressed") >= N && s.port_reason(PORT, "deny_ipv4") >= N
    });
    let out = reader.stop();
    assert_eq!(s.port_reason(PORT, "deny_ipv4"), N, "{:#}", s.0);
    assert_eq!(s.total_dropped(), N, "{:#}", s.0);
    assert_eq!(events(&s, "sampled"), LIMIT, "{:#}", s.0);
    assert_eq!(events(&s, "suppressed"), N - LIMIT, "{:#}", s.0);
    assert_eq!(events(&s, "lost"), 0, "{:#}", s.0);
    let evs = parse_events(&out);
    assert_eq!(evs.len() as u64, N.min(LIMIT), "{out}");
    for ev in &evs {
        check_event(&obs, ev, None);
    }
    // The pcap reads back with tcpdump, one packet per event.
    let td = Command::new("tcpdump")
        .args(["-nn", "-r"])
        .arg(&pcap)
        .output()
        .expect("tcpdump is needed (cargo xtask setup installs it)");
    let _ = std::fs::remove_file(&pcap);
    assert!(
        td.status.success(),
        "tcpdump: {}",
        String::from_utf8_lossy(&td.stderr)
    );
    let text = String::from_utf8_lossy(&td.stdout);
    assert_eq!(text.lines().count(), evs.len(), "{text}");
    let want = format!(
        "{}.{SRC_PORT} > {}.{DST_PORT}: UDP",
        addr::G1_4,
        addr::HOST_MGMT4
    );
    assert!(text.lines().all(|l| l.contains(&want)), "{text}");
    obs.finish();
}

/// Below the limit every frame is reported, with the libvirt domain that owns the port.
#[test]
fn events_below_the_limit_name_the_vm() {
    const N: u64 = 25;
    let obs = Observed::new();
    obs.attach(&[]);
    let dir = std::env::temp_dir().join(format!("{}-libvirt", obs.host));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("guest-a.xml"),
        format!(
            "<domstatus state='running'><domain type='kvm'><name>guest-a</name><devices>\
             <interface type='bridge'><mac address='52:54:00:00:00:0a'/>\
             <source bridge='{BRIDGE}'/><target dev='{PORT}'/></interface></devices></domain>\
             </domstatus>"
        ),
    )
    .unwrap();
    let reader = Reader::start(&obs, &["--json"], &[("GUARD_LIBVIRT_RUN_DIR", &dir)]);
    obs.attack(N as usize);
    let s = obs.wait_stats("N sampled events", |s| events(s, "sampled") >= N);
    let out = reader.stop();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(s.port_reason(PORT, "deny_ipv4"), N, "{:#}", s.0);
    assert_eq!(events(&s, "rate_limit"), 100, "{:#}", s.0);
    assert_eq!(events(&s, "suppressed"), 0, "{:#}", s.0);
    let evs = parse_events(&out);
    assert_eq!(evs.len() as u64, N, "{out}");
    for ev in &evs {
        check_event(&obs, ev, Some("guest-a"));
    }
    obs.finish();
}

fn sample_value(s: &prometheus_parse::Sample) -> f64 {
    match s.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => v,
        _ => panic!("unexpected sample type {:?}", s.value),
    }
}

/// A scrape of `/metrics` parses as Prometheus text and equals `guardctl stats --json`.
#[test]
fn metrics_equal_stats_json() {
    const N: u64 = 30;
    let obs = Observed::new();
    // The listener is bound in the caller's (this test's) namespace: a free port there.
    let addr = free_local_port().unwrap();
    let addr = addr.as_str();
    let mut agent = Agent::spawn(
        &obs.gctl,
        &obs.host,
        BRIDGE,
        &["--protect", PROTECT, "--metrics", addr],
    );
    // The agent prints this after attaching and starting the server.
    agent.wait_for("metrics at", Duration::from_secs(20));
    obs.attack(N as usize);
    obs.wait_stats("N drops", |s| s.port_reason(PORT, "deny_ipv4") >= N);
    // Counters are quiet now (no IPv6 in the guest, nothing else sends); still, compare a
    // scrape only with identical readings before and after it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (stats, body) = loop {
        let before = obs.stats();
        let body = http_get(addr, "/metrics").unwrap();
        let after = obs.stats();
        if before.0 == after.0 {
            break (after.0, body);
        }
        assert!(Instant::now() < deadline, "counters never settled");
    };
    assert!(body.contains("# HELP guard_packets"), "{body}");
    assert!(body.contains("# TYPE guard_packets counter"), "{body}");
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let find = |name: &str, labels: &[(&str, &str)]| -> f64 {
        let hits: Vec<_> = scrape
            .samples
            .iter()
            .filter(|s| {
                s.metric == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(k).is_some_and(|x| x == *v))
            })
            .collect();
        assert_eq!(hits.len(), 1, "{name} {labels:?} in:\n{body}");
        sample_value(hits[0])
    };
    let mut compared = 0;
    for p in stats["ports"]
        .as_array()
        .unwrap()
        .iter()
        .chain(std::iter::once(&stats["unregistered"]))
    {
        let port = p["name"].as_str().unwrap();
        for (reason, c) in p["reasons"].as_object().unwrap() {
            let l = [
                ("bridge", BRIDGE),
                ("port", port),
                ("reason", reason.as_str()),
            ];
            #[expect(clippy::cast_precision_loss, reason = "test counts are small")]
            let (pk, by) = (
                c["packets"].as_u64().unwrap() as f64,
                c["bytes"].as_u64().unwrap() as f64,
            );
            assert_eq!(find("guard_packets_total", &l), pk, "{port} {reason}");
            assert_eq!(find("guard_bytes_total", &l), by, "{port} {reason}");
            compared += 1;
        }
    }
    assert!(compared >= 13, "compared only {compared} series");
    #[expect(clippy::cast_precision_loss, reason = "test counts are small")]
    let n = N as f64;
    assert_eq!(
        find(
            "guard_packets_total",
            &[("port", PORT), ("reason", "deny_ipv4")]
        ),
        n
    );
    for r in stats["rules"].as_array().unwrap() {
        let id = r["rule_id"].to_string();
        #[expect(clippy::cast_precision_loss, reason = "test counts are small")]
        let hits = r["hits"].as_u64().unwrap() as f64;
        assert_eq!(find("guard_rule_hits_total", &[("rule_id", &id)]), hits);
    }
    #[expect(clippy::cast_precision_loss, reason = "test counts are small")]
    let ports = stats["ports"].as_array().unwrap().len() as f64;
    assert_eq!(find("guard_attached_ports", &[("bridge", BRIDGE)]), ports);
    for (k, m) in [
        ("sampled", "guard_events_sampled_total"),
        ("lost", "guard_events_lost_total"),
        ("suppressed", "guard_events_suppressed_total"),
    ] {
        #[expect(clippy::cast_precision_loss, reason = "test counts are small")]
        let v = stats["events"][k].as_u64().unwrap() as f64;
        assert_eq!(find(m, &[("bridge", BRIDGE)]), v, "{k}");
    }
    assert_eq!(
        find("guard_info", &[("bridge", BRIDGE), ("mode", "enforce")]),
        1.0
    );
    let _ = agent.stop();
    obs.finish();
}

/// `top` in an 80x24 pseudo-terminal shows the attacking port within two seconds, and quits
/// on `q`.
#[test]
fn top_shows_the_attacking_port() {
    const N: usize = 20;
    let obs = Observed::new();
    obs.attach(&[]);
    let command = format!(
        "{} --netns {} top {BRIDGE}; sleep 30",
        obs.gctl.path().display(),
        obs.host
    );
    let title = format!("guard top: {BRIDGE}");
    let tmux = Tmux::start(&format!("{}tmux", obs.lab.prefix()), &command).unwrap();
    tmux.wait_for("the top screen", Duration::from_secs(10), |s| {
        s.contains(&title)
    })
    .unwrap();
    obs.attack(N);
    let attacked = Instant::now();
    let screen = tmux
        .wait_for("the attacking port", Duration::from_secs(2), |s| {
            s.lines()
                .any(|l| l.contains(PORT) && l.contains("deny_ipv4"))
        })
        .unwrap();
    eprintln!("shown after {:?}:\n{screen}", attacked.elapsed());
    assert!(screen.lines().count() <= 24);
    assert!(
        screen.contains(&addr::G1_4.to_string()),
        "offender not shown:\n{screen}"
    );
    // `q` ends top (the shell then sleeps, so the pane stays and shows the prompt-less void).
    tmux.cmd()
        .args(["send-keys", "-t", "top", "q"])
        .output()
        .unwrap();
    tmux.wait_for("top quitting", Duration::from_secs(5), |s| {
        !s.contains(&title)
    })
    .unwrap();
    drop(tmux);
    obs.finish();
}

/// The lease entry of the lab's bridge, read from its pin.
fn lease(obs: &Observed) -> u64 {
    let path = pin_scope_dir(Some(&obs.host))
        .join(BRIDGE)
        .join("GUARD_EV_LEASE");
    let data = aya::maps::MapData::from_pin(&path).unwrap();
    let map = aya::maps::Map::from_map_data(data).unwrap();
    let arr: aya::maps::Array<_, guard_common::event::EventReader> =
        aya::maps::Array::try_from(map).unwrap();
    arr.get(&0, 0).unwrap().until_ns
}

/// A reader that exits cleanly gives the lease up; one that is killed leaves it, and the
/// datapath clears it itself once it has expired, so events (and their cost) stop.
#[test]
fn a_dead_reader_does_not_leave_events_on() {
    let obs = Observed::new();
    obs.attach(&[]);
    assert_eq!(lease(&obs), 0, "no reader yet");
    let reader = Reader::start(&obs, &["--json"], &[]);
    assert_ne!(lease(&obs), 0, "the reader holds the lease");
    let _ = reader.stop();
    assert_eq!(lease(&obs), 0, "a clean exit gives the lease up");

    let mut reader = Reader::start(&obs, &["--json"], &[]);
    reader.child.kill().unwrap();
    reader.child.wait().unwrap();
    assert_ne!(lease(&obs), 0, "a killed reader cannot give it up");
    // Frames keep coming; once the lease has run out (5 s) the first drop clears it.
    let deadline = Instant::now() + Duration::from_secs(15);
    while lease(&obs) != 0 {
        assert!(Instant::now() < deadline, "the lease was never cleared");
        obs.attack(1);
    }
    let before = obs.stats();
    obs.attack(10);
    let after = obs.wait_stats("10 more drops", |s| {
        s.port_reason(PORT, "deny_ipv4") >= before.port_reason(PORT, "deny_ipv4") + 10
    });
    assert_eq!(
        after.0["events"], before.0["events"],
        "no events without a reader"
    );
    drop(reader);
    obs.finish();
}

/// VLAN tags (802.1ad outer, 802.1Q inner) are reported, outer first, with the inner packet's
/// addresses and ports.
#[test]
fn events_report_vlan_tags() {
    const N: usize = 3;
    let obs = Observed::new();
    obs.attach(&[]);
    let reader = Reader::start(&obs, &["--json"], &[]);
    let tagged = obs.attack_frame().svlan(100).vlan(200).build();
    obs.send(&tagged, N);
    obs.wait_stats("N sampled events", |s| events(s, "sampled") >= N as u64);
    let out = reader.stop();
    let evs = parse_events(&out);
    assert_eq!(evs.len(), N, "{out}");
    for ev in &evs {
        assert_eq!(ev["vlans"], serde_json::json!([100, 200]), "{ev}");
        assert_eq!(ev["ethertype"], "0x0800", "{ev}");
        assert_eq!(ev["dst_ip"], addr::HOST_MGMT4.to_string(), "{ev}");
        assert_eq!(ev["dst_port"], DST_PORT, "{ev}");
        assert_eq!(ev["len"], 68, "{ev}");
    }
    obs.finish();
}

/// Monitor mode: the frames pass, are counted as `monitor_ipv4`, and are reported as such.
/// A monitored frame passes the port and goes on up to the bridge device, whose backstop
/// judges it again (it cannot tell that a port already did) and reports it a second time,
/// under the bridge.
#[test]
fn monitor_verdicts_make_events_too() {
    const N: u64 = 5;
    let obs = Observed::new();
    obs.attach(&["--monitor"]);
    let reader = Reader::start(&obs, &["--json"], &[]);
    obs.attack(N as usize);
    let s = obs.wait_stats("N sampled events on the port and N on the bridge", |s| {
        events(s, "sampled") >= 2 * N
    });
    let out = reader.stop();
    assert_eq!(s.port_reason(PORT, "monitor_ipv4"), N, "{:#}", s.0);
    assert_eq!(s.port_reason(BRIDGE, "monitor_ipv4"), N, "{:#}", s.0);
    assert_eq!(s.total_dropped(), 0, "{:#}", s.0);
    let evs = parse_events(&out);
    let on = |port: &str| evs.iter().filter(|e| e["port"] == port).count() as u64;
    assert_eq!((on(PORT), on(BRIDGE)), (N, N), "{out}");
    for ev in &evs {
        assert_eq!(ev["reason"], "monitor_ipv4", "{ev}");
        assert_eq!(ev["dst_ip"], addr::HOST_MGMT4.to_string(), "{ev}");
    }
    obs.finish();
}
