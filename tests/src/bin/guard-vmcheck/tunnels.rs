//! Issue 11, class 2, for the tunnels the build host's kernel has no module for: GRE, IPIP,
//! SIT, GENEVE and FOU (and VXLAN, which it has, for comparison), on the guests' kernels.
//!
//! The namespace test's bridge `br0` (address 10.99.0.1, unprotected: guests may use it),
//! its two guest ports, forwarding on, and a storage network behind `stor0` (10.20.0.1/24,
//! `fd00:20::1/64`; the server 10.20.0.2, `fd00:20::2` in namespace `vmcheck-s`). Tunnel devices
//! with no local address, so they take packets to any host address, the bridge's too, from
//! their configured remote 198.51.100.9 (which a guest forges):
//!
//! ```text
//!   gre1   type gre    remote 198.51.100.9        inner IPv4 (GRE protocol 0x0800)
//!   ipip1  type ipip   remote 198.51.100.9        inner IPv4 (IP protocol 4)
//!   sit1   type sit    remote 198.51.100.9        inner IPv6 (IP protocol 41)
//!   gnv0   type geneve id 42 remote 198.51.100.9  inner Ethernet to gnv0's MAC (UDP 6081)
//!   fou    port 5555 ipproto 4 (into ipip1)       inner IPv4 in UDP 5555
//!   vx0    type vxlan id 42 dstport 4789          inner Ethernet to vx0's MAC
//! ```
//!
//! Each inner packet goes to the storage server, which counts it on its `eth0`. First
//! without guard (the negative control: every one arrives), then with zero-config `guardctl
//! attach br0 --hook H` (none may arrive; the bridge's drop total must grow by the frames
//! sent, all of them counted as `deny_tunnel`).

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
    path::Path,
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow};
use guard_tests::lab::frame::{Mac, mac_to_string};
use guard_tests::packet::{
    ETH_P_IPV4, ETH_P_TEB, Eth, GENEVE_PORT, IPPROTO_GRE, IPPROTO_IPIP, IPPROTO_IPV6, Ipv4, Ipv6,
    VXLAN_PORT, geneve, gre, vxlan,
};
use serde::Serialize;
use serde_json::Value;

use crate::{
    nsattack::{self, ATTACKER_NS, BRIDGE, mac_of, run},
    plan::{BRIDGE_IP, COPIES, GUEST_IP, marker},
    raw::{Receiver, send},
};

const STORAGE_NS: &str = "vmcheck-s";
const HOST_STORAGE4: Ipv4Addr = Ipv4Addr::new(10, 20, 0, 1);
const STORAGE4: Ipv4Addr = Ipv4Addr::new(10, 20, 0, 2);
const HOST_STORAGE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x20, 0, 0, 0, 0, 0, 1);
const STORAGE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x20, 0, 0, 0, 0, 0, 2);
const GUEST6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 2);
/// The tunnels' configured remote, which the attacking guest forges.
const REMOTE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 9);
const FOU_PORT: u16 = 5555;
const GNV0_MAC: Mac = [0x02, 0x47, 0x4c, 0x00, 0x0c, 0x01];
const VX0_MAC: Mac = [0x02, 0x47, 0x4c, 0x00, 0x0c, 0x02];
const INNER_SRC_MAC: Mac = [0x02, 0x47, 0x4c, 0x00, 0x0e, 0x01];
const VNI: u32 = 42;
/// IP protocol 253 is reserved for experiments (RFC 3692): the inner packets' payload.
const IPPROTO_EXPERIMENT: u8 = 253;
/// Time for frames still in flight to arrive before receivers stop (TCG is slow).
const SETTLE: Duration = Duration::from_millis(500);
const GAP: Duration = Duration::from_millis(2);
/// The devices, in the order they are made (the FOU port needs `ipip1`).
const DEVICES: [&str; 5] = ["gre1", "ipip1", "sit1", "gnv0", "vx0"];

/// One tunnel's numbers.
#[derive(Debug, Default, Serialize)]
pub struct TunnelCase {
    pub name: &'static str,
    pub sent: u32,
    /// Without guard: inner packets that reached the storage server.
    pub control_reached: u32,
    /// With guard.
    pub reached: u32,
    /// Bridge-wide drops, and `deny_tunnel`, counted while this case's frames went by.
    pub dropped: u64,
    pub deny_tunnel: u64,
    /// Every bridge-wide counter that grew meanwhile, `reason+n`.
    pub counters: String,
}

#[derive(Debug, Default, Serialize)]
pub struct Outcome {
    pub hook: String,
    pub modes: Vec<String>,
    pub fallbacks: Vec<String>,
    pub cases: Vec<TunnelCase>,
    /// Set when the test could not run at all (a module, a device, attach).
    pub error: Option<String>,
}

fn ip(args: &[&str]) -> Result<()> {
    run(Command::new("ip").args(args)).map(drop)
}

fn sysctl(key: &str, value: &str) -> Result<()> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    std::fs::write(&path, value).with_context(|| format!("writing {path}"))
}

fn setup() -> Result<()> {
    nsattack::setup()?;
    sysctl("net.ipv4.ip_forward", "1")?;
    sysctl("net.ipv6.conf.all.forwarding", "1")?;
    sysctl("net.ipv4.conf.all.rp_filter", "0")?;
    sysctl("net.ipv4.conf.default.rp_filter", "0")?;
    ip(&["netns", "add", STORAGE_NS])?;
    ip(&[
        "link", "add", "stor0", "type", "veth", "peer", "name", "eth0", "netns", STORAGE_NS,
    ])?;
    ip(&[
        "addr",
        "add",
        &format!("{HOST_STORAGE4}/24"),
        "dev",
        "stor0",
    ])?;
    ip(&[
        "addr",
        "add",
        &format!("{HOST_STORAGE6}/64"),
        "dev",
        "stor0",
        "nodad",
    ])?;
    ip(&["link", "set", "stor0", "up"])?;
    let s = |args: &[&str]| {
        let mut a = vec!["-n", STORAGE_NS];
        a.extend_from_slice(args);
        ip(&a)
    };
    s(&["addr", "add", &format!("{STORAGE4}/24"), "dev", "eth0"])?;
    s(&[
        "addr",
        "add",
        &format!("{STORAGE6}/64"),
        "dev",
        "eth0",
        "nodad",
    ])?;
    s(&["link", "set", "eth0", "up"])?;
    s(&["link", "set", "lo", "up"])?;
    let remote = REMOTE.to_string();
    ip(&["link", "add", "gre1", "type", "gre", "remote", &remote])?;
    ip(&["link", "add", "ipip1", "type", "ipip", "remote", &remote])?;
    ip(&["link", "add", "sit1", "type", "sit", "remote", &remote])?;
    ip(&[
        "link",
        "add",
        "gnv0",
        "address",
        &mac_to_string(&GNV0_MAC),
        "type",
        "geneve",
        "id",
        &VNI.to_string(),
        "remote",
        &remote,
    ])?;
    ip(&[
        "link",
        "add",
        "vx0",
        "address",
        &mac_to_string(&VX0_MAC),
        "type",
        "vxlan",
        "id",
        &VNI.to_string(),
        "dstport",
        &VXLAN_PORT.to_string(),
        "nolearning",
    ])?;
    for d in DEVICES {
        ip(&["link", "set", d, "up"])?;
    }
    ip(&[
        "fou",
        "add",
        "port",
        &FOU_PORT.to_string(),
        "ipproto",
        &IPPROTO_IPIP.to_string(),
    ])?;
    wait_storage_ready()
}

/// Polls until the storage link is up on both ends and IPv6 can use it: the carrier reaches
/// a veth through linkwatch (up to a second late), and until then an IPv6 address stays
/// tentative and its prefix route is missing, so the first forwarded IPv6 packets would be
/// lost for reasons that have nothing to do with guard.
fn wait_storage_ready() -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let ready = || -> Result<bool> {
        let up = |ns: Option<&str>, dev: &str| -> Result<bool> {
            let mut c = Command::new("ip");
            if let Some(n) = ns {
                c.args(["-n", n]);
            }
            Ok(run(c.args(["-br", "link", "show", dev]))?
                .split_whitespace()
                .nth(1)
                == Some("UP"))
        };
        let tentative = |ns: &str| -> Result<bool> {
            Ok(
                !run(Command::new("ip").args(["-n", ns, "-6", "addr", "show", "tentative"]))?
                    .trim()
                    .is_empty(),
            )
        };
        let route = !run(Command::new("ip").args(["-6", "route", "show", "fd00:20::/64"]))?
            .trim()
            .is_empty();
        Ok(up(None, "stor0")? && up(Some(STORAGE_NS), "eth0")? && route && !tentative(STORAGE_NS)?)
    };
    while !ready()? {
        if std::time::Instant::now() >= deadline {
            return Err(anyhow!("the storage link is not ready after 10 s"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn teardown(guardctl: &Path) {
    let _ = ip(&["fou", "del", "port", &FOU_PORT.to_string()]);
    for d in DEVICES.iter().rev().chain(&["stor0"]) {
        let _ = ip(&["link", "del", d]);
    }
    let _ = ip(&["netns", "del", STORAGE_NS]);
    nsattack::teardown(guardctl);
}

/// The inner IPv4 packet, carrying `m`.
fn inner4(m: &[u8]) -> Vec<u8> {
    Ipv4::new(GUEST_IP, STORAGE4)
        .payload(IPPROTO_EXPERIMENT, m)
        .build()
}

/// The cases: (id, name, builds the frame around a marker). Outer frames go to the bridge
/// MAC and the bridge's own address, from the forged tunnel remote.
fn cases(bridge: Mac, guest: Mac) -> Vec<Case> {
    let outer = move |p: Ipv4| Eth::new(bridge, guest).ipv4(p).build();
    let ip4 =
        move |proto: u8, inner: Vec<u8>| outer(Ipv4::new(REMOTE, BRIDGE_IP).payload(proto, &inner));
    let udp = move |port: u16, inner: Vec<u8>| {
        outer(Ipv4::new(REMOTE, BRIDGE_IP).udp(40_000, port, &inner))
    };
    let eth_to = |mac: Mac, m: &[u8]| {
        Eth::new(mac, INNER_SRC_MAC)
            .ipv4(Ipv4::new(GUEST_IP, STORAGE4).payload(IPPROTO_EXPERIMENT, m))
            .build()
    };
    vec![
        (
            201,
            "gre-fwd-v4-storage",
            Box::new(move |m: &[u8]| ip4(IPPROTO_GRE, gre(ETH_P_IPV4, &inner4(m)))),
        ),
        (
            202,
            "ipip-fwd-v4-storage",
            Box::new(move |m: &[u8]| ip4(IPPROTO_IPIP, inner4(m))),
        ),
        (
            203,
            "sit-fwd-v6-storage",
            Box::new(move |m: &[u8]| {
                ip4(
                    IPPROTO_IPV6,
                    Ipv6::new(GUEST6, STORAGE6)
                        .payload(IPPROTO_EXPERIMENT, m)
                        .build(),
                )
            }),
        ),
        (
            204,
            "geneve-fwd-v4-storage",
            Box::new(move |m: &[u8]| {
                udp(GENEVE_PORT, geneve(VNI, ETH_P_TEB, &eth_to(GNV0_MAC, m)))
            }),
        ),
        (
            205,
            "fou-ipip-fwd-v4-storage",
            Box::new(move |m: &[u8]| udp(FOU_PORT, inner4(m))),
        ),
        (
            206,
            "vxlan-fwd-v4-storage",
            Box::new(move |m: &[u8]| udp(VXLAN_PORT, vxlan(VNI, &eth_to(VX0_MAC, m)))),
        ),
    ]
}

/// Bridge-wide counters (`totals.reasons`, every slot) from `guardctl stats --json`.
fn totals(guardctl: &Path) -> Result<BTreeMap<String, u64>> {
    let out = run(Command::new(guardctl).args(["stats", BRIDGE, "--json"]))?;
    let v: Value = serde_json::from_str(&out).context("parsing `guardctl stats --json`")?;
    let reasons = v
        .pointer("/bridges/0/totals/reasons")
        .and_then(Value::as_object)
        .ok_or_else(|| anyhow!("no totals in `guardctl stats --json`: {out}"))?;
    let mut m: BTreeMap<String, u64> = reasons
        .iter()
        .map(|(k, v)| (k.clone(), v["packets"].as_u64().unwrap_or(0)))
        .collect();
    let dropped = v
        .pointer("/bridges/0/totals/dropped/packets")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    m.insert("(dropped)".into(), dropped);
    Ok(m)
}

/// A case: its id (in the marker), its name, and what builds its frame around a marker.
type Case = (u16, &'static str, Box<dyn Fn(&[u8]) -> Vec<u8>>);

/// Sends the copies of `cases` (interleaved); returns, per case, how many inner packets
/// reached the storage server.
fn exchange(cases: &[&Case]) -> Result<Vec<u32>> {
    let at_storage = Receiver::start(Some(STORAGE_NS), "eth0")?;
    let frames: Vec<Vec<u8>> = (0..COPIES)
        .flat_map(|seq| {
            cases
                .iter()
                .map(move |(id, _, build)| build(&marker(*id, seq)))
        })
        .collect();
    send(Some(ATTACKER_NS), "eth0", &frames, GAP)?;
    let got = at_storage.finish(SETTLE)?;
    Ok(cases
        .iter()
        .map(|(id, _, _)| got.get(id).copied().unwrap_or(0).min(u32::from(COPIES)))
        .collect())
}

fn attack(guardctl: &Path, hook: &str, out: &mut Outcome) -> Result<()> {
    setup()?;
    let bridge = mac_of(None, BRIDGE)?;
    let guest = mac_of(Some(ATTACKER_NS), "eth0")?;
    let cases = cases(bridge, guest);
    // The negative control in one go (TCG is slow: one settle time for all).
    let all: Vec<&Case> = cases.iter().collect();
    for (case, control) in cases.iter().zip(exchange(&all)?) {
        out.cases.push(TunnelCase {
            name: case.1,
            sent: u32::from(COPIES),
            control_reached: control,
            ..TunnelCase::default()
        });
    }
    run(Command::new(guardctl).args(["attach", BRIDGE, "--hook", hook]))?;
    for (name, mode, fallback) in nsattack::port_modes(guardctl, None, BRIDGE)? {
        out.modes.push(format!("{name}={mode}"));
        if let Some(f) = fallback {
            out.fallbacks.push(format!("{name}: {f}"));
        }
    }
    // With guard case by case: the counters are read around each one.
    for (case, c) in cases.iter().zip(&mut out.cases) {
        let before = totals(guardctl)?;
        c.reached = exchange(&[case])?.first().copied().unwrap_or(0);
        let after = totals(guardctl)?;
        let grew = |k: &str| {
            after
                .get(k)
                .copied()
                .unwrap_or(0)
                .saturating_sub(before.get(k).copied().unwrap_or(0))
        };
        c.dropped = grew("(dropped)");
        c.deny_tunnel = grew("deny_tunnel");
        c.counters = after
            .keys()
            .filter(|k| *k != "(dropped)" && grew(k) > 0)
            .map(|k| format!("{k}+{}", grew(k)))
            .collect::<Vec<_>>()
            .join(" ");
    }
    Ok(())
}

/// The tunnel attack in one hook mode (`xdp`, `tcx`, `tc`).
pub fn tunnels(hook: &str) -> Outcome {
    let guardctl = nsattack::guardctl();
    let mut out = Outcome {
        hook: hook.to_owned(),
        ..Outcome::default()
    };
    teardown(&guardctl);
    if let Err(e) = attack(&guardctl, hook, &mut out) {
        out.error = Some(format!("{e:#}"));
    }
    teardown(&guardctl);
    out
}
