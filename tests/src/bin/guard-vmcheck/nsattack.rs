//! The namespace attack test: a bridge with two veth ports whose other ends sit in guest
//! namespaces, guard attached by `guardctl --protect` in one hook mode, the plan sent from one
//! guest. First without guard (the negative control: the attacks must reach the host, or the
//! test proves nothing), then with it.
//!
//! Also the host side of the real-guest test (`watch`): receivers on the bridge and the peer,
//! then the same judgement on the tap port's counters.

use std::{
    collections::BTreeMap,
    io::BufRead as _,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow};
use guard_tests::lab::{
    frame::{Mac, parse_mac},
    netns::run_cmd,
};
use serde::Serialize;
use serde_json::Value;

use crate::{
    plan::{self, BRIDGE_IP, PROTECT, Verdict, all_frames, judge},
    raw::{Receiver, send},
};

pub const BRIDGE: &str = "br0";
pub const ATTACKER_NS: &str = "vmcheck-a";
const PEER_NS: &str = "vmcheck-b";
/// Time for frames still in flight to arrive before receivers stop (TCG is slow).
const SETTLE: Duration = Duration::from_millis(500);
const GAP: Duration = Duration::from_millis(2);

/// Runs a command; an error naming it (and carrying its stderr) if it fails.
pub fn run(cmd: &mut Command) -> Result<String> {
    run_cmd(cmd, None)
}

fn ip(args: &[&str]) -> Result<()> {
    run(Command::new("ip").args(args)).map(drop)
}

/// guardctl: next to this binary if it is there (the initramfs), else on PATH.
pub fn guardctl() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("guardctl")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("guardctl"))
}

pub fn mac_of(netns: Option<&str>, iface: &str) -> Result<Mac> {
    let out = match netns {
        Some(ns) => run(Command::new("ip").args(["-n", ns, "-br", "link", "show", iface]))?,
        None => run(Command::new("ip").args(["-br", "link", "show", iface]))?,
    };
    // `-br` prints: NAME STATE MAC FLAGS
    let mac = out
        .split_whitespace()
        .nth(2)
        .ok_or_else(|| anyhow!("no MAC in `ip -br link show {iface}`: {out:?}"))?;
    parse_mac(mac)
}

/// The `ports` of the first bridge in `guardctl [--netns NS] VERB BRIDGE --json`, and the
/// command's whole output for error messages.
fn guardctl_ports(
    guardctl: &Path,
    netns: Option<&str>,
    verb: &str,
    bridge: &str,
) -> Result<(Vec<Value>, String)> {
    let mut cmd = Command::new(guardctl);
    if let Some(ns) = netns {
        cmd.args(["--netns", ns]);
    }
    let out = run(cmd.args([verb, bridge, "--json"]))?;
    let v: Value =
        serde_json::from_str(&out).with_context(|| format!("parsing `guardctl {verb} --json`"))?;
    let ports = v
        .pointer("/bridges/0/ports")
        .and_then(Value::as_array)
        .cloned()
        .ok_or_else(|| anyhow!("no ports in `guardctl {verb} --json`: {out}"))?;
    Ok((ports, out))
}

/// `guardctl [--netns NS] stats BRIDGE --json` for one port: reason name -> packets.
pub fn port_counters(
    guardctl: &Path,
    netns: Option<&str>,
    bridge: &str,
    port: &str,
) -> Result<BTreeMap<String, u64>> {
    let (ports, out) = guardctl_ports(guardctl, netns, "stats", bridge)?;
    let p = ports
        .iter()
        .find(|p| p.get("name").and_then(Value::as_str) == Some(port))
        .ok_or_else(|| anyhow!("port {port} not in `guardctl stats --json`: {out}"))?;
    let reasons = p
        .get("reasons")
        .and_then(Value::as_object)
        .ok_or_else(|| anyhow!("no reasons for {port} in `guardctl stats --json`"))?;
    Ok(reasons
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.get("packets").and_then(Value::as_u64).unwrap_or(0),
            )
        })
        .collect())
}

/// Per hooked interface: `(name, mode, fallback)` from `guardctl status --json`. The bridge
/// device's own hook (the backstop) is named `bridge:<name>`.
pub fn port_modes(
    guardctl: &Path,
    netns: Option<&str>,
    bridge: &str,
) -> Result<Vec<(String, String, Option<String>)>> {
    let (ports, _) = guardctl_ports(guardctl, netns, "status", bridge)?;
    Ok(ports
        .iter()
        .map(|p| {
            if p.get("bridge_device").and_then(Value::as_bool) == Some(true) {
                let mut p = p.clone();
                let name = p.get("name").and_then(Value::as_str).unwrap_or_default();
                p["name"] = Value::from(format!("bridge:{name}"));
                p
            } else {
                p.clone()
            }
        })
        .map(|p| {
            let s = |k| p.get(k).and_then(Value::as_str).map(str::to_owned);
            (
                s("name").unwrap_or_default(),
                s("hook").unwrap_or_default(),
                s("fallback"),
            )
        })
        .collect())
}

#[derive(Debug, Default, Serialize)]
pub struct Outcome {
    pub hook: String,
    /// `port=mode` for each hooked port, as `guardctl status` reports it.
    pub modes: Vec<String>,
    /// The fallback reasons `guardctl status` gives, if a port did not get the hook asked for.
    pub fallbacks: Vec<String>,
    /// Negative control: attack frames that reached the host with guard detached.
    pub control_reached: u32,
    pub control_sent: u32,
    #[serde(flatten)]
    pub verdict: Verdict,
    /// Set when the test could not run at all (set-up, attach).
    pub error: Option<String>,
}

/// The bridge with its address and two guest ports (also the tunnel test's base).
pub fn setup() -> Result<()> {
    for ns in [ATTACKER_NS, PEER_NS] {
        ip(&["netns", "add", ns])?;
    }
    ip(&["link", "add", BRIDGE, "type", "bridge"])?;
    ip(&["addr", "add", &format!("{BRIDGE_IP}/24"), "dev", BRIDGE])?;
    for (port, ns) in [("vpa", ATTACKER_NS), ("vpb", PEER_NS)] {
        ip(&[
            "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ])?;
        ip(&["link", "set", port, "master", BRIDGE, "up"])?;
        ip(&["-n", ns, "link", "set", "eth0", "up"])?;
    }
    ip(&["link", "set", BRIDGE, "up"])
}

pub fn teardown(guardctl: &Path) {
    let _ = run(Command::new(guardctl).args(["detach", BRIDGE]));
    // Veths first, explicitly: a deleted namespace releases its devices asynchronously
    // (cleanup_net runs from a workqueue), so the next set-up could find a port still there.
    // Deleting one end of a veth removes both, synchronously.
    for port in ["vpa", "vpb"] {
        let _ = ip(&["link", "del", port]);
    }
    let _ = ip(&["link", "del", BRIDGE]);
    for ns in [ATTACKER_NS, PEER_NS] {
        let _ = ip(&["netns", "del", ns]);
    }
}

/// Sends the plan from the attacker guest; returns marked arrivals at the bridge and the peer.
fn exchange(plan: &[plan::Case]) -> Result<(BTreeMap<u16, u32>, BTreeMap<u16, u32>)> {
    let at_bridge = Receiver::start(None, BRIDGE)?;
    let at_peer = Receiver::start(Some(PEER_NS), "eth0")?;
    send(Some(ATTACKER_NS), "eth0", &all_frames(plan), GAP)?;
    // One settle time covers both receivers: they ran side by side.
    Ok((at_bridge.finish(SETTLE)?, at_peer.finish(Duration::ZERO)?))
}

fn attack(guardctl: &Path, hook: &str, out: &mut Outcome) -> Result<()> {
    setup()?;
    let bridge = mac_of(None, BRIDGE)?;
    let guest = mac_of(Some(ATTACKER_NS), "eth0")?;
    let peer = mac_of(Some(PEER_NS), "eth0")?;
    let plan = plan::plan(bridge, guest, peer);

    // Negative control: no guard, the attacks must reach the host.
    let (b, _) = exchange(&plan)?;
    for c in plan
        .iter()
        .filter(|c| matches!(c.expect, plan::Expect::Drop(_)))
    {
        out.control_sent += u32::from(plan::COPIES);
        out.control_reached += b.get(&c.id).copied().unwrap_or(0);
    }

    let mut cmd = Command::new(guardctl);
    cmd.args(["attach", BRIDGE, "--hook", hook]);
    for p in PROTECT {
        cmd.args(["--protect", p]);
    }
    run(&mut cmd)?;
    for (name, mode, fallback) in port_modes(guardctl, None, BRIDGE)? {
        out.modes.push(format!("{name}={mode}"));
        if let Some(f) = fallback {
            out.fallbacks.push(format!("{name}: {f}"));
        }
    }
    let (b, p) = exchange(&plan)?;
    let counters = port_counters(guardctl, None, BRIDGE, "vpa")?;
    out.verdict = judge(&plan, &b, &p, &counters);
    Ok(())
}

/// The namespace attack test in one hook mode (`xdp`, `xdp-generic`, `tc`, `tcx`).
pub fn nsattack(hook: &str) -> Outcome {
    let guardctl = guardctl();
    let mut out = Outcome {
        hook: hook.to_owned(),
        ..Outcome::default()
    };
    // Left-overs of an earlier run would make `ip ... add` fail.
    teardown(&guardctl);
    if let Err(e) = attack(&guardctl, hook, &mut out) {
        out.error = Some(format!("{e:#}"));
    }
    teardown(&guardctl);
    out
}

/// Host side of the real-guest test: counts marked arrivals on `bridge` (in `netns`) and on
/// the peer's interface until a line (or end of file) on stdin says the guest is done, then
/// judges the plan against the port's counters.
pub fn watch(
    netns: &str,
    bridge: &str,
    port: &str,
    peer_netns: &str,
    peer_iface: &str,
    guest: Mac,
) -> Result<Verdict> {
    let guardctl = guardctl();
    let at_bridge = Receiver::start(Some(netns), bridge)?;
    let at_peer = Receiver::start(Some(peer_netns), peer_iface)?;
    println!("ready");
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("waiting for the guest to finish (stdin)")?;
    let b = at_bridge.finish(SETTLE)?;
    let p = at_peer.finish(Duration::ZERO)?;
    let counters = port_counters(&guardctl, Some(netns), bridge, port)?;
    let bridge_mac = mac_of(Some(netns), bridge)?;
    let peer_mac = mac_of(Some(peer_netns), peer_iface)?;
    Ok(judge(
        &plan::plan(bridge_mac, guest, peer_mac),
        &b,
        &p,
        &counters,
    ))
}
