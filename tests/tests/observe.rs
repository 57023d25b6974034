//! Observability acceptance tests (issue 5): drop events, VM identity, pcap, `/metrics`, `top`.
//!
//! Each test builds its own small lab: a "host" namespace with a bridge, one port (a veth whose
//! peer is in a "guest" namespace) and a management address on a dummy interface; guard is
//! attached with `guardctl --netns`. The guest sends an attack of N UDP frames to the bridge's
//! MAC and the management address over `AF_PACKET`. Root and the `guardctl` binary are needed;
//! without them the tests fail (they do not skip).
//!
//! The lab helper is deliberately small: the attack lab in `tests/src/lab/` (another branch)
//! will replace it.
#![expect(clippy::unwrap_used, reason = "tests")]
#![expect(
    clippy::float_cmp,
    reason = "Prometheus samples are f64; the compared counts are small integers, exact in f64"
)]

use std::{
    io::{BufRead as _, BufReader, Read as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use guard_tests::lab::guardctl::{Tmux, http_get};
use serde_json::Value;

const BRIDGE_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x01, 0x01];
const GUEST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x02, 0x02];
const GUEST_IP: [u8; 4] = [10, 99, 0, 2];
const MGMT_IP: [u8; 4] = [192, 0, 2, 1];
const PROTECT: &str = "192.0.2.0/24=management";
const DST_PORT: u16 = 3260;
const SRC_PORT: u16 = 40_000;

fn guardctl() -> PathBuf {
    if let Some(p) = std::env::var_os("GUARDCTL") {
        return p.into();
    }
    // target/<profile>/deps/observe-* -> target/<profile>/guardctl
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    let p = profile_dir.join("guardctl");
    assert!(
        p.exists(),
        "{} not built: run `cargo build -p guard-userspace` (same profile) first, or set GUARDCTL",
        p.display()
    );
    p
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "go{}{}{}",
        tag,
        std::process::id() % 100_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Reads with `read` until `done` holds of a reading, and returns that reading; fails with
/// `timed_out` of the last reading once `within` has passed.
fn wait_until<T>(
    within: Duration,
    mut read: impl FnMut() -> T,
    done: impl Fn(&T) -> bool,
    timed_out: impl Fn(&T) -> String,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        let v = read();
        if done(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{}", timed_out(&v));
        std::thread::yield_now();
    }
}

/// Two namespaces and the guard attachment in the host one; all removed on drop (also when
/// the test panics).
struct Lab {
    host: String,
    guest: String,
}

impl Lab {
    fn new(tag: &str) -> Self {
        assert!(
            // SAFETY: no arguments.
            unsafe { libc::geteuid() } == 0,
            "these tests need root (they build namespaces and attach XDP)"
        );
        let lab = Self {
            host: unique(&format!("{tag}h")),
            guest: unique(&format!("{tag}g")),
        };
        let (h, g) = (lab.host.as_str(), lab.guest.as_str());
        sh(&["ip", "netns", "add", h]);
        sh(&["ip", "netns", "add", g]);
        // No IPv6 in the guest: router solicitations and MLD reports would be judged (and
        // counted) at unpredictable times, and counter comparisons must be exact.
        sh(&[
            "ip",
            "netns",
            "exec",
            g,
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ]);
        let mac = |m: [u8; 6]| {
            m.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":")
        };
        sh(&["ip", "-n", h, "link", "set", "lo", "up"]);
        sh(&[
            "ip",
            "-n",
            h,
            "link",
            "add",
            "br0",
            "address",
            &mac(BRIDGE_MAC),
            "type",
            "bridge",
        ]);
        sh(&["ip", "-n", h, "link", "set", "br0", "up"]);
        // The management interface: a veth (this kernel has no dummy driver).
        sh(&[
            "ip", "-n", h, "link", "add", "mgmt0", "type", "veth", "peer", "name", "mgmt1",
        ]);
        sh(&["ip", "-n", h, "addr", "add", "192.0.2.1/24", "dev", "mgmt0"]);
        sh(&["ip", "-n", h, "link", "set", "mgmt0", "up"]);
        sh(&[
            "ip",
            "-n",
            h,
            "link",
            "add",
            "vp0",
            "type",
            "veth",
            "peer",
            "name",
            "ve0",
            "netns",
            g,
            "address",
            &mac(GUEST_MAC),
        ]);
        sh(&["ip", "-n", h, "link", "set", "vp0", "master", "br0"]);
        sh(&["ip", "-n", h, "link", "set", "vp0", "up"]);
        sh(&["ip", "-n", g, "link", "set", "ve0", "up"]);
        lab
    }

    fn guardctl(&self) -> Command {
        let mut c = Command::new(guardctl());
        c.args(["--netns", &self.host]);
        c
    }

    fn attach(&self, extra: &[&str]) {
        let out = self
            .guardctl()
            .args(["attach", "br0", "--protect", PROTECT])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "attach: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn stats(&self) -> Value {
        let out = self
            .guardctl()
            .args(["stats", "br0", "--json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "stats: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        guard_tests::lab::guardctl::stats_entry(&v)
            .expect("stats --json: one bridge")
            .0
    }

    /// Polls `stats --json` until `done` holds (bounded), and returns the last reading.
    fn wait_stats(&self, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        wait_until(
            Duration::from_secs(10),
            || self.stats(),
            done,
            |s| format!("timed out waiting for {what}: {s:#}"),
        )
    }

    /// Sends `n` attack frames from the guest.
    fn attack(&self, n: usize) {
        let guest = self.guest.clone();
        std::thread::spawn(move || send_frames(&guest, "ve0", &attack_frame(), n))
            .join()
            .unwrap();
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.guardctl().args(["detach", "br0"]).output();
        for ns in [&self.host, &self.guest] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

fn port_counter(stats: &Value, port: &str, reason: &str) -> u64 {
    stats["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == port)
        .map_or(0, |p| p["reasons"][reason]["packets"].as_u64().unwrap())
}

/// Ethernet + IPv4 + UDP to the management address, 60 bytes.
fn attack_frame() -> Vec<u8> {
    let payload = [0x5a_u8; 18];
    let udp_len = 8 + payload.len();
    let ip_len = 20 + udp_len;
    let mut f = Vec::new();
    f.extend_from_slice(&BRIDGE_MAC);
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
    ip.extend_from_slice(&GUEST_IP);
    ip.extend_from_slice(&MGMT_IP);
    let sum = ip
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum::<u32>();
    let sum = (sum & 0xffff) + (sum >> 16);
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&SRC_PORT.to_be_bytes());
    f.extend_from_slice(&DST_PORT.to_be_bytes());
    f.extend_from_slice(&(udp_len as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&payload);
    f
}

/// Moves the calling thread into `ns` (only this thread).
fn enter_netns(ns: &str) {
    let file = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
    // SAFETY: a valid fd for the duration of the call.
    let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
}

/// Sends `frame` `n` times out of `ifname` in `ns` with an `AF_PACKET` socket.
fn send_frames(ns: &str, ifname: &str, frame: &[u8], n: usize) {
    enter_netns(ns);
    let name = std::ffi::CString::new(ifname).unwrap();
    // SAFETY: plain syscalls on values we own; the sockaddr is fully initialised.
    unsafe {
        let ifindex = libc::if_nametoindex(name.as_ptr());
        assert_ne!(ifindex, 0, "{ifname} in {ns}");
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        let mut sa: libc::sockaddr_ll = std::mem::zeroed();
        sa.sll_family = libc::AF_PACKET as u16;
        sa.sll_ifindex = ifindex.cast_signed();
        sa.sll_halen = 6;
        sa.sll_addr[..6].copy_from_slice(&frame[..6]);
        for _ in 0..n {
            let rc = libc::sendto(
                fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const sa).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            );
            assert_eq!(
                rc,
                frame.len().cast_signed(),
                "sendto: {}",
                std::io::Error::last_os_error()
            );
        }
        libc::close(fd);
    }
}

/// A `guardctl events` process, killed on drop.
struct Reader {
    child: Child,
}

impl Reader {
    fn start(lab: &Lab, args: &[&str], env: &[(&str, &Path)]) -> Self {
        let mut cmd = lab.guardctl();
        cmd.arg("events")
            .arg("br0")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
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

fn check_event(ev: &Value, vm: Option<&str>) {
    assert_eq!(ev["port"], "vp0", "{ev}");
    assert_eq!(ev["vm"].as_str(), vm, "{ev}");
    // With a VM, the guest's MAC from libvirt; without, the port interface's own MAC.
    if vm.is_some() {
        assert_eq!(ev["port_mac"], "52:54:00:00:00:0a", "{ev}");
    } else {
        assert_eq!(ev["port_mac"].as_str().map(str::len), Some(17), "{ev}");
    }
    assert_eq!(ev["reason"], "deny_ipv4", "{ev}");
    assert_eq!(ev["src_mac"], "02:00:00:00:02:02", "{ev}");
    assert_eq!(ev["dst_mac"], "02:00:00:00:01:01", "{ev}");
    assert_eq!(ev["src_ip"], "10.99.0.2", "{ev}");
    assert_eq!(ev["dst_ip"], "192.0.2.1", "{ev}");
    assert_eq!(ev["proto"], "udp", "{ev}");
    assert_eq!(ev["src_port"], SRC_PORT, "{ev}");
    assert_eq!(ev["dst_port"], DST_PORT, "{ev}");
    assert_eq!(ev["rule"]["prefix"], "192.0.2.0/24", "{ev}");
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
    let lab = Lab::new(&hook[..1]);
    lab.attach(&["--event-rate", &LIMIT.to_string(), "--hook", hook]);
    let stats = lab.stats();
    let mode = stats["ports"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "vp0"))
        .map_or(&Value::Null, |p| &p["mode"]);
    assert!(mode.as_str().unwrap().starts_with(hook), "hooked as {mode}");
    let pcap = std::env::temp_dir().join(format!("{}.pcap", lab.host));
    let reader = Reader::start(&lab, &["--json", "--pcap", pcap.to_str().unwrap()], &[]);
    lab.attack(N as usize);
    // Every frame was judged once the kernel's event accounting covers all N.
    let s = lab.wait_stats("N drops and N event decisions", |s| {
        s["events"]["sampled"].as_u64().unwrap() + s["events"]["suppressed"].as_u64().unwrap() >= N
            && port_counter(s, "vp0", "deny_ipv4") >= N
    });
    let out = reader.stop();
    assert_eq!(port_counter(&s, "vp0", "deny_ipv4"), N, "{s:#}");
    assert_eq!(s["totals"]["dropped"]["packets"], N, "{s:#}");
    assert_eq!(s["events"]["sampled"], LIMIT, "{s:#}");
    assert_eq!(s["events"]["suppressed"], N - LIMIT, "{s:#}");
    assert_eq!(s["events"]["lost"], 0, "{s:#}");
    let events: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len() as u64, N.min(LIMIT), "{out}");
    for ev in &events {
        check_event(ev, None);
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
    assert_eq!(text.lines().count(), events.len(), "{text}");
    assert!(
        text.lines()
            .all(|l| l.contains("10.99.0.2.40000 > 192.0.2.1.3260: UDP")),
        "{text}"
    );
}

/// Below the limit every frame is reported, with the libvirt domain that owns the port.
#[test]
fn events_below_the_limit_name_the_vm() {
    const N: u64 = 25;
    let lab = Lab::new("v");
    lab.attach(&[]);
    let dir = std::env::temp_dir().join(format!("{}-libvirt", lab.host));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("guest-a.xml"),
        "<domstatus state='running'><domain type='kvm'><name>guest-a</name><devices>\
         <interface type='bridge'><mac address='52:54:00:00:00:0a'/><source bridge='br0'/>\
         <target dev='vp0'/></interface></devices></domain></domstatus>",
    )
    .unwrap();
    let reader = Reader::start(&lab, &["--json"], &[("GUARD_LIBVIRT_RUN_DIR", &dir)]);
    lab.attack(N as usize);
    let s = lab.wait_stats("N sampled events", |s| {
        s["events"]["sampled"].as_u64().unwrap() >= N
    });
    let out = reader.stop();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(port_counter(&s, "vp0", "deny_ipv4"), N, "{s:#}");
    assert_eq!(s["events"]["rate_limit"], 100, "{s:#}");
    assert_eq!(s["events"]["suppressed"], 0, "{s:#}");
    let events: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len() as u64, N, "{out}");
    for ev in &events {
        check_event(ev, Some("guest-a"));
    }
}

/// A `guardctl run` agent, stopped on drop.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id().cast_signed(), libc::SIGTERM) };
        let _ = self.0.wait();
    }
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
#[expect(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
fn metrics_equal_stats_json() {
    const N: u64 = 30;
    let lab = Lab::new("m");
    // The listener is bound in the caller's (this test's) namespace: a free port there.
    let addr = guard_tests::lab::guardctl::free_local_port().unwrap();
    let addr = addr.as_str();
    let mut child = lab
        .guardctl()
        .args(["run", "br0", "--protect", PROTECT, "--metrics", addr])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let agent = Agent(child);
    let mut lines = BufReader::new(stdout).lines();
    // The agent prints this after attaching and starting the server (bounded by the
    // attach: a failed start ends the process and the stream).
    loop {
        let l = lines
            .next()
            .expect("agent exited before serving metrics")
            .unwrap();
        if l.contains("metrics at") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    lab.attack(N as usize);
    lab.wait_stats("N drops", |s| port_counter(s, "vp0", "deny_ipv4") >= N);
    // Counters are quiet now (no IPv6 in the guest, nothing else sends); still, compare a
    // scrape only with identical readings before and after it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (stats, body) = loop {
        let before = lab.stats();
        let body = http_get(addr, "/metrics").unwrap();
        let after = lab.stats();
        if before == after {
            break (after, body);
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
                ("bridge", "br0"),
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
            &[("port", "vp0"), ("reason", "deny_ipv4")]
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
    assert_eq!(find("guard_attached_ports", &[("bridge", "br0")]), ports);
    for (k, m) in [
        ("sampled", "guard_events_sampled_total"),
        ("lost", "guard_events_lost_total"),
        ("suppressed", "guard_events_suppressed_total"),
    ] {
        #[expect(clippy::cast_precision_loss, reason = "test counts are small")]
        let v = stats["events"][k].as_u64().unwrap() as f64;
        assert_eq!(find(m, &[("bridge", "br0")]), v, "{k}");
    }
    assert_eq!(
        find("guard_info", &[("bridge", "br0"), ("mode", "enforce")]),
        1.0
    );
    drop(agent);
}

/// `top` in an 80x24 pseudo-terminal shows the attacking port within two seconds, and quits
/// on `q`.
#[test]
fn top_shows_the_attacking_port() {
    const N: usize = 20;
    let lab = Lab::new("t");
    lab.attach(&[]);
    let command = format!(
        "{} --netns {} top br0; sleep 30",
        guardctl().display(),
        lab.host
    );
    let tmux = Tmux::start(&unique("tmux"), &command).unwrap();
    tmux.wait_for("the top screen", Duration::from_secs(10), |s| {
        s.contains("guard top: br0")
    })
    .unwrap();
    lab.attack(N);
    let attacked = Instant::now();
    let screen = tmux
        .wait_for("the attacking port", Duration::from_secs(2), |s| {
            s.lines()
                .any(|l| l.contains("vp0") && l.contains("deny_ipv4"))
        })
        .unwrap();
    eprintln!("shown after {:?}:\n{screen}", attacked.elapsed());
    assert!(screen.lines().count() <= 24);
    assert!(
        screen.contains("10.99.0.2"),
        "offender not shown:\n{screen}"
    );
    // `q` ends top (the shell then sleeps, so the pane stays and shows the prompt-less void).
    tmux.cmd()
        .args(["send-keys", "-t", "top", "q"])
        .output()
        .unwrap();
    tmux.wait_for("top quitting", Duration::from_secs(5), |s| {
        !s.contains("guard top: br0")
    })
    .unwrap();
}

/// The lease entry of the lab's bridge, read from its pin.
fn lease(lab: &Lab) -> u64 {
    let path = format!("/sys/fs/bpf/guard/{}/br0/GUARD_EV_LEASE", lab.host);
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
    let lab = Lab::new("l");
    lab.attach(&[]);
    assert_eq!(lease(&lab), 0, "no reader yet");
    let reader = Reader::start(&lab, &["--json"], &[]);
    assert_ne!(lease(&lab), 0, "the reader holds the lease");
    let _ = reader.stop();
    assert_eq!(lease(&lab), 0, "a clean exit gives the lease up");

    let mut reader = Reader::start(&lab, &["--json"], &[]);
    reader.child.kill().unwrap();
    reader.child.wait().unwrap();
    assert_ne!(lease(&lab), 0, "a killed reader cannot give it up");
    // Frames keep coming; once the lease has run out (5 s) the first drop clears it.
    let deadline = Instant::now() + Duration::from_secs(15);
    while lease(&lab) != 0 {
        assert!(Instant::now() < deadline, "the lease was never cleared");
        lab.attack(1);
    }
    let before = lab.stats();
    lab.attack(10);
    let after = lab.wait_stats("10 more drops", |s| {
        port_counter(s, "vp0", "deny_ipv4") >= port_counter(&before, "vp0", "deny_ipv4") + 10
    });
    assert_eq!(
        after["events"], before["events"],
        "no events without a reader"
    );
}

/// VLAN tags (802.1ad outer, 802.1Q inner) are reported, outer first, with the inner packet's
/// addresses and ports.
#[test]
fn events_report_vlan_tags() {
    const N: usize = 3;
    let lab = Lab::new("q");
    lab.attach(&[]);
    let reader = Reader::start(&lab, &["--json"], &[]);
    let plain = attack_frame();
    let mut tagged = plain[..12].to_vec();
    tagged.extend_from_slice(&[0x88, 0xa8, 0x00, 100, 0x81, 0x00, 0x00, 200]);
    tagged.extend_from_slice(&plain[12..]);
    let guest = lab.guest.clone();
    std::thread::spawn(move || send_frames(&guest, "ve0", &tagged, N))
        .join()
        .unwrap();
    lab.wait_stats("N sampled events", |s| {
        s["events"]["sampled"].as_u64().unwrap() >= N as u64
    });
    let out = reader.stop();
    let events: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), N, "{out}");
    for ev in &events {
        assert_eq!(ev["vlans"], serde_json::json!([100, 200]), "{ev}");
        assert_eq!(ev["ethertype"], "0x0800", "{ev}");
        assert_eq!(ev["dst_ip"], "192.0.2.1", "{ev}");
        assert_eq!(ev["dst_port"], DST_PORT, "{ev}");
        assert_eq!(ev["len"], 68, "{ev}");
    }
}

/// Monitor mode: the frames pass, are counted as `monitor_ipv4`, and are reported as such.
/// A monitored frame passes the port and goes on up to the bridge device, whose backstop
/// judges it again (it cannot tell that a port already did) and reports it a second time,
/// under the bridge.
#[test]
fn monitor_verdicts_make_events_too() {
    const N: u64 = 5;
    let lab = Lab::new("o");
    lab.attach(&["--monitor"]);
    let reader = Reader::start(&lab, &["--json"], &[]);
    lab.attack(N as usize);
    let s = lab.wait_stats("N sampled events on the port and N on the bridge", |s| {
        s["events"]["sampled"].as_u64().unwrap() >= 2 * N
    });
    let out = reader.stop();
    assert_eq!(port_counter(&s, "vp0", "monitor_ipv4"), N, "{s:#}");
    assert_eq!(port_counter(&s, "br0", "monitor_ipv4"), N, "{s:#}");
    assert_eq!(s["totals"]["dropped"]["packets"], 0, "{s:#}");
    let events: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let on = |port: &str| events.iter().filter(|e| e["port"] == port).count() as u64;
    assert_eq!((on("vp0"), on("br0")), (N, N), "{out}");
    for ev in &events {
        assert_eq!(ev["reason"], "monitor_ipv4", "{ev}");
        assert_eq!(ev["dst_ip"], "192.0.2.1", "{ev}");
    }
}
