//! Issue 15, item 1: per-VM (per-port) policy and L4 allow holes (`rules add --allow CIDR
//! --vm NAME --proto tcp --dport 3260`), in each hook mode.
//!
//! The lab's storage server (10.20.0.2, on the host's storage network, protected by the
//! zero-config attach as `host-net`) listens on tcp/3260, tcp/3261 and udp/3260; the guests
//! route the storage network through the bridge's address (`BridgeIp` variant), so every probe
//! is a real connection forwarded by the host, judged by the port's hook and again by the
//! bridge device's backstop. A fake libvirt run directory (`GUARD_LIBVIRT_RUN_DIR`) names
//! g1's port as VM `backup01` and g2's as `web01`.
//!
//! 1. per-VM: both guests reach tcp/3260 without guard (negative control), neither with it;
//!    after the backup01 rule only backup01 does (web01 is the rule's negative control), hits
//!    are counted on the rule (`rules list --json`); `rules del` closes it again.
//! 2. an L4 hole for every guest: tcp/3260 reaches, tcp/3261 and udp/3260 do not.
//! 3. following restart: with `guardctl run`, a rule for a VM with no port is kept as not
//!    resolved; its tap appears, then is removed and re-created (new ifindex): after the
//!    agent's reconcile the rule is on the new port.
//!
//! Needs root, and `guardctl` built in the same profile first:
//!
//! ```text
//! cargo build --release -p guard-userspace --bin guardctl
//! cargo test --release -p guard-tests --test exceptions -- --nocapture
//! ```

use std::{
    fmt::Write as _,
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use guard_tests::lab::{
    Lab, Role, Variant, addr,
    guardctl::{Agent, Guardctl, PinScope, poll},
    harness::{finish, require_root_and_guardctl, serial},
    holes,
    netns::in_netns,
    sock::{udp_bind, udp_collect},
};

fn require_root() -> Guardctl {
    require_root_and_guardctl("the exception tests need root (namespaces, veth, bpf); not skipping")
}

/// Connections (or datagrams) per probe.
const TRIES: u32 = 4;
/// How long a connection attempt may take: a SYN guard drops is never answered.
const CONNECT_DEADLINE: Duration = Duration::from_millis(1500);
const ISCSI: u16 = 3260;

/// A temporary libvirt run directory with one domstatus file per VM (`taps`: VM -> ports).
struct FakeLibvirt {
    dir: PathBuf,
}

impl FakeLibvirt {
    fn new(vms: &[(&str, &str)]) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("guard-exc-libvirt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).context("fake libvirt dir")?;
        for (vm, tap) in vms {
            std::fs::write(
                dir.join(format!("{vm}.xml")),
                format!(
                    "<domstatus state='running'><domain type='kvm'><name>{vm}</name><devices>\
                     <interface type='bridge'><source bridge='{}'/><target dev='{tap}'/>\
                     </interface></devices></domain></domstatus>",
                    addr::BRIDGE
                ),
            )
            .context("domstatus file")?;
        }
        Ok(Self { dir })
    }
}

impl Drop for FakeLibvirt {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The storage server's listeners: tcp/3260, tcp/3261 (accepting in the background) and
/// udp/3260.
struct Server {
    _tcp: Vec<TcpListener>,
    udp: UdpSocket,
}

fn server(lab: &Lab) -> Result<Server> {
    let ns = lab.ns(Role::Storage);
    let tcp = in_netns(ns, || {
        [ISCSI, ISCSI + 1]
            .iter()
            .map(|p| {
                TcpListener::bind(SocketAddr::new(IpAddr::V4(addr::STORAGE_SERVER4), *p))
                    .with_context(|| format!("listen on tcp/{p}"))
            })
            .collect::<Result<Vec<_>>>()
    })?;
    // The kernel completes handshakes into the backlog: connects succeed without accept().
    let udp = udp_bind(
        ns,
        SocketAddr::new(IpAddr::V4(addr::STORAGE_SERVER4), ISCSI),
    )?;
    Ok(Server { _tcp: tcp, udp })
}

/// Routes the storage network through the bridge's address in guest `ns`.
fn route_storage_via_host(lab: &Lab, role: Role) -> Result<()> {
    lab.netns(role).ip(&[
        "route",
        "replace",
        "10.20.0.0/24",
        "via",
        &addr::BRIDGE4.to_string(),
    ])?;
    Ok(())
}

/// TCP connections from `ns` to the storage server's `port` that complete, of [`TRIES`],
/// made at once (each bounded by [`CONNECT_DEADLINE`]).
fn tcp_reach(ns: &str, port: u16) -> u32 {
    let to = SocketAddr::new(IpAddr::V4(addr::STORAGE_SERVER4), port);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..TRIES)
            .map(|_| {
                s.spawn(move || {
                    in_netns(ns, || {
                        Ok(TcpStream::connect_timeout(&to, CONNECT_DEADLINE).is_ok())
                    })
                    .unwrap_or(false)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| u32::from(h.join().unwrap_or(false)))
            .sum()
    })
}

/// UDP datagrams from `ns` to the storage server's udp/3260 that arrive, of [`TRIES`].
fn udp_reach(ns: &str, srv: &Server) -> Result<u32> {
    let sock = in_netns(ns, || UdpSocket::bind("0.0.0.0:0").context("UDP sender"))?;
    let nonce = std::process::id().to_be_bytes();
    for seq in 0..TRIES {
        let mut msg = nonce.to_vec();
        msg.extend_from_slice(&seq.to_be_bytes());
        sock.send_to(
            &msg,
            SocketAddr::new(IpAddr::V4(addr::STORAGE_SERVER4), ISCSI),
        )
        .context("UDP send")?;
    }
    udp_collect(
        &srv.udp,
        TRIES,
        Instant::now() + CONNECT_DEADLINE,
        |p, _| {
            (p.len() == 8 && p[..4] == nonce).then(|| u32::from_be_bytes([p[4], p[5], p[6], p[7]]))
        },
    )
}

/// The exception of `rules list --json` for `prefix` and `vm` (`None`: all ports).
fn exception(
    gctl: &Guardctl,
    host: &str,
    prefix: &str,
    vm: Option<&str>,
) -> Result<serde_json::Value> {
    let out = gctl.ok(Some(host), &["rules", "list", addr::BRIDGE, "--json"])?;
    let v: serde_json::Value = serde_json::from_str(&out).context("rules list --json")?;
    anyhow::ensure!(v["schema"] == "guardctl.rules.v1", "schema: {out}");
    v["exceptions"]
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|e| e["prefix"] == prefix && e["vm"].as_str() == vm)
                .cloned()
        })
        .with_context(|| format!("no exception {prefix} for {vm:?} in {out}"))
}

fn hook_args(hook: Option<&str>) -> Vec<&str> {
    hook.map_or_else(Vec::new, |h| vec!["--hook", h])
}

/// Case 1: a per-VM rule, with web01 as its negative control.
#[expect(
    clippy::too_many_lines,
    reason = "one scenario told in order: control, attach, rule, hits, del"
)]
fn per_vm(hook: Option<&str>) {
    let _serial = serial();
    let lab = Lab::build(Variant::BridgeIp).expect("build the lab");
    let host = lab.ns(Role::Host).to_owned();
    let pins = PinScope::new(&host).expect("pin scope");
    let vg1 = lab.port(Role::G1).expect("g1").host.name.clone();
    let vg2 = lab.port(Role::G2).expect("g2").host.name.clone();
    let libvirt = FakeLibvirt::new(&[("backup01", &vg1), ("web01", &vg2)]).expect("libvirt");
    let gctl = require_root().with_env("GUARD_LIBVIRT_RUN_DIR", &libvirt.dir);
    for g in [Role::G1, Role::G2] {
        route_storage_via_host(&lab, g).expect("route");
    }
    let _srv = server(&lab).expect("storage server");
    let (g1, g2) = (lab.ns(Role::G1).to_owned(), lab.ns(Role::G2).to_owned());
    let mode = hook.unwrap_or("xdp");
    let mut report = format!("per-VM rule ({mode}): tcp/{ISCSI} to the storage server\n");
    let mut problems = Vec::new();
    let row = |report: &mut String,
               problems: &mut Vec<String>,
               what: &str,
               b: u32,
               w: u32,
               want: (u32, u32)| {
        let _ = writeln!(
            report,
            "  {what:<34} backup01 {b}/{TRIES}  web01 {w}/{TRIES}"
        );
        if (b, w) != want {
            problems.push(format!(
                "{mode}, {what}: backup01 {b}, web01 {w} delivered; want {want:?}"
            ));
        }
    };
    row(
        &mut report,
        &mut problems,
        "without guard (control)",
        tcp_reach(&g1, ISCSI),
        tcp_reach(&g2, ISCSI),
        (TRIES, TRIES),
    );
    let mut attach = vec!["attach", addr::BRIDGE];
    attach.extend(hook_args(hook));
    gctl.ok(Some(&host), &attach).expect("attach");
    row(
        &mut report,
        &mut problems,
        "attached",
        tcp_reach(&g1, ISCSI),
        tcp_reach(&g2, ISCSI),
        (0, 0),
    );
    let dst = format!("{}/32", addr::STORAGE_SERVER4);
    gctl.ok(
        Some(&host),
        &[
            "rules",
            "add",
            addr::BRIDGE,
            "--allow",
            &dst,
            "--vm",
            "backup01",
            "--proto",
            "tcp",
            "--dport",
            "3260",
        ],
    )
    .expect("rules add --vm");
    let (b, w) = (tcp_reach(&g1, ISCSI), tcp_reach(&g2, ISCSI));
    row(
        &mut report,
        &mut problems,
        "after rules add --vm backup01",
        b,
        w,
        (TRIES, 0),
    );
    let e = exception(&gctl, &host, &dst, Some("backup01")).expect("the rule is listed");
    let hits = e["hits"].as_u64().unwrap_or(0);
    let _ = writeln!(
        report,
        "  rule {} on {} : {hits} hits (each connection's SYN and ACK, at the port and the backstop)",
        e["rule_id"], e["ports"]
    );
    if hits < u64::from(b) {
        problems.push(format!("{mode}: {hits} hits for {b} connections: {e}"));
    }
    if e["resolved"] != true {
        problems.push(format!("{mode}: the rule is not resolved: {e}"));
    }
    let status = gctl.status(&host, addr::BRIDGE).expect("status");
    if !status["exceptions"].as_array().is_some_and(|a| {
        a.iter()
            .any(|x| x["vm"] == "backup01" && x["hits"].as_u64() >= Some(hits))
    }) {
        problems.push(format!(
            "{mode}: status does not show the rule with its hits: {}",
            status["exceptions"]
        ));
    }
    gctl.ok(
        Some(&host),
        &[
            "rules",
            "del",
            addr::BRIDGE,
            &dst,
            "--vm",
            "backup01",
            "--proto",
            "tcp",
            "--dport",
            "3260",
        ],
    )
    .expect("rules del --vm");
    row(
        &mut report,
        &mut problems,
        "after rules del",
        tcp_reach(&g1, ISCSI),
        tcp_reach(&g2, ISCSI),
        (0, 0),
    );
    gctl.ok(Some(&host), &["detach", addr::BRIDGE])
        .expect("detach");
    drop(libvirt);
    finish(&report, pins, lab, &problems);
}

/// Case 2: an L4 hole for every guest opens tcp/3260 only.
fn l4_hole(hook: Option<&str>) {
    let _serial = serial();
    let gctl = require_root();
    let lab = Lab::build(Variant::BridgeIp).expect("build the lab");
    let host = lab.ns(Role::Host).to_owned();
    let pins = PinScope::new(&host).expect("pin scope");
    route_storage_via_host(&lab, Role::G1).expect("route");
    let srv = server(&lab).expect("storage server");
    let g1 = lab.ns(Role::G1).to_owned();
    let mode = hook.unwrap_or("xdp");
    let mut report = format!("L4 hole for all guests ({mode}), from g1\n");
    let mut problems = Vec::new();
    let mut row = |what: &str, got: [u32; 3], want: [u32; 3]| {
        let _ = writeln!(
            report,
            "  {what:<30} tcp/3260 {}/{TRIES}  tcp/3261 {}/{TRIES}  udp/3260 {}/{TRIES}",
            got[0], got[1], got[2]
        );
        if got != want {
            problems.push(format!("{mode}, {what}: delivered {got:?}, want {want:?}"));
        }
    };
    let probe = || {
        [
            tcp_reach(&g1, ISCSI),
            tcp_reach(&g1, ISCSI + 1),
            udp_reach(&g1, &srv).expect("udp probe"),
        ]
    };
    row("without guard (control)", probe(), [TRIES; 3]);
    let mut attach = vec!["attach", addr::BRIDGE];
    attach.extend(hook_args(hook));
    gctl.ok(Some(&host), &attach).expect("attach");
    row("attached", probe(), [0; 3]);
    let dst = format!("{}/32", addr::STORAGE_SERVER4);
    gctl.ok(
        Some(&host),
        &[
            "rules",
            "add",
            addr::BRIDGE,
            "--allow",
            &dst,
            "--proto",
            "tcp",
            "--dport",
            "3260",
        ],
    )
    .expect("rules add --proto tcp --dport 3260");
    row("after the hole", probe(), [TRIES, 0, 0]);
    let e = exception(&gctl, &host, &dst, None).expect("listed");
    let _ = writeln!(report, "  rule {}: {} hits", e["rule_id"], e["hits"]);
    if e["hits"].as_u64().unwrap_or(0) < u64::from(TRIES) {
        problems.push(format!("{mode}: hits not counted: {e}"));
    }
    gctl.ok(Some(&host), &["detach", addr::BRIDGE])
        .expect("detach");
    finish(&report, pins, lab, &problems);
}

/// Case 3: the agent moves a VM's rule to its re-created tap.
#[expect(
    clippy::too_many_lines,
    reason = "one scenario told in order: rule before the port, plug, restart, another guest"
)]
fn follows_restart(hook: Option<&str>) {
    let _serial = serial();
    let mut lab = Lab::build(Variant::BridgeIp).expect("build the lab");
    let host = lab.ns(Role::Host).to_owned();
    let pins = PinScope::new(&host).expect("pin scope");
    let tap = "vnet-b";
    let libvirt = FakeLibvirt::new(&[("backup01", tap)]).expect("libvirt");
    let gctl = require_root().with_env("GUARD_LIBVIRT_RUN_DIR", &libvirt.dir);
    let mode = hook.unwrap_or("xdp");
    let mut report = format!("following restart ({mode}): backup01 on {tap}\n");
    let mut problems = Vec::new();
    let _srv = server(&lab).expect("storage server");
    let agent = Agent::start(&gctl, &host, addr::BRIDGE, &hook_args(hook));
    let dst = format!("{}/32", addr::STORAGE_SERVER4);
    gctl.ok(
        Some(&host),
        &[
            "rules",
            "add",
            addr::BRIDGE,
            "--allow",
            &dst,
            "--vm",
            "backup01",
            "--proto",
            "tcp",
            "--dport",
            "3260",
        ],
    )
    .expect("rules add for a VM with no port");
    let e = exception(&gctl, &host, &dst, Some("backup01")).expect("kept");
    let _ = writeln!(
        report,
        "  before its port exists: resolved {}, note {}",
        e["resolved"], e["note"]
    );
    if e["resolved"] != false || e["note"] != "not resolved (no port)" {
        problems.push(format!(
            "{mode}: a VM without port must be kept unresolved: {e}"
        ));
    }
    let mut plug = |lab: &mut Lab, what: &str| -> u64 {
        holes::add_guest_port(lab, tap, None).expect("the VM's port");
        holes::enslave(lab, tap).expect("enslave");
        let ifindex = lab
            .netns(Role::Host)
            .ip_json(&["link", "show", "dev", tap])
            .expect("ip link")[0]["ifindex"]
            .as_u64()
            .expect("ifindex");
        lab.netns(holes::G3)
            .ip(&[
                "route",
                "replace",
                "10.20.0.0/24",
                "via",
                &addr::BRIDGE4.to_string(),
            ])
            .expect("route");
        let started = Instant::now();
        let resolved = poll(Duration::from_secs(10), || {
            let e = exception(&gctl, &host, &dst, Some("backup01")).ok()?;
            e["ifindexes"]
                .as_array()?
                .iter()
                .any(|i| i.as_u64() == Some(ifindex))
                .then_some(())
        });
        let reached = tcp_reach(lab.ns(holes::G3), ISCSI);
        let _ = writeln!(
            report,
            "  {what}: {tap} ifindex {ifindex}, rule resolved to it after {:?} ({}), tcp/3260 {reached}/{TRIES}",
            started.elapsed(),
            if resolved.is_some() {
                "ok"
            } else {
                "NOT within 10 s"
            }
        );
        if resolved.is_none() || reached != TRIES {
            problems.push(format!(
                "{mode}, {what}: resolved {resolved:?}, reached {reached}"
            ));
        }
        ifindex
    };
    let first = plug(&mut lab, "VM started");
    lab.netns(Role::Host)
        .ip(&["link", "del", tap])
        .expect("remove the VM's port");
    let second = plug(&mut lab, "VM restarted");
    if first == second {
        problems.push(format!("{mode}: the re-created port kept ifindex {first}"));
    }
    // A guest without the rule's VM stays out (g1 is not backup01).
    route_storage_via_host(&lab, Role::G1).expect("route");
    let other = tcp_reach(lab.ns(Role::G1), ISCSI);
    let _ = writeln!(report, "  g1 (not backup01): tcp/3260 {other}/{TRIES}");
    if other != 0 {
        problems.push(format!(
            "{mode}: g1 reached tcp/3260 through backup01's rule"
        ));
    }
    let _ = agent.stop();
    gctl.ok(Some(&host), &["detach", addr::BRIDGE])
        .expect("detach");
    drop(libvirt);
    finish(&report, pins, lab, &problems);
}

#[test]
fn per_vm_rule_xdp() {
    per_vm(None);
}

#[test]
fn per_vm_rule_tc() {
    per_vm(Some("tc"));
}

#[test]
fn per_vm_rule_tcx() {
    per_vm(Some("tcx"));
}

#[test]
fn l4_hole_opens_one_port_xdp() {
    l4_hole(None);
}

#[test]
fn l4_hole_opens_one_port_tc() {
    l4_hole(Some("tc"));
}

#[test]
fn l4_hole_opens_one_port_tcx() {
    l4_hole(Some("tcx"));
}

#[test]
fn rule_follows_vm_restart_xdp() {
    follows_restart(None);
}

#[test]
fn rule_follows_vm_restart_tc() {
    follows_restart(Some("tc"));
}
