//! The real guest on a tap: a TCG VM whose virtio-net NIC is the tap `vmtap0`, a port of
//! `br-guest` in a host-side namespace next to a veth "peer guest"; guard attached there by
//! guardctl (XDP on the tap). The guest sends the attack plan; `guard-vmcheck watch` on the
//! host side counts what reaches the bridge device and the peer, and judges the tap port's
//! counters.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, bail};
use serde_json::Value;

use super::qemu;
use crate::cmd;

const HOST_NS: &str = "vmtest-host";
const PEER_NS: &str = "vmtest-peer";
const BRIDGE: &str = "br-guest";
const TAP: &str = "vmtap0";
const GUEST_MAC: &str = "52:54:00:12:34:56";
/// The host's unprotected address on the guest bridge (plan.rs in guard-vmcheck agrees).
const BRIDGE_ADDR: &str = "10.99.0.1/24";
/// The tap guest only boots and sends: measured at 6 s; the margin is for loaded machines.
pub const TIMEOUT: Duration = Duration::from_secs(180);
const PROTECT: [&str; 2] = ["192.0.2.0/24=storage", "2001:db8:99::/48=management"];

pub struct Binaries<'a> {
    pub guardctl: &'a Path,
    pub vmcheck: &'a Path,
}

/// What the tap test found.
pub struct Outcome {
    pub mode: String,
    pub guest: qemu::Guest,
    /// `guard-vmcheck watch`'s verdict.
    pub verdict: Value,
}

fn ip(args: &[&str]) -> Result<()> {
    cmd::output(Command::new("ip").args(args)).map(drop)
}

fn cleanup(bins: &Binaries<'_>) {
    let _ = cmd::output(Command::new(bins.guardctl).args(["--netns", HOST_NS, "detach", BRIDGE]));
    // The veth explicitly: a deleted namespace releases its devices asynchronously, and the
    // next run would find the peer's end still there. The tap and bridge go with the
    // namespace (their names are only used inside it).
    let _ = ip(&["-n", HOST_NS, "link", "del", "vpeer"]);
    for ns in [HOST_NS, PEER_NS] {
        let _ = ip(&["netns", "del", ns]);
    }
}

fn setup(bins: &Binaries<'_>, hook: &str) -> Result<String> {
    for ns in [HOST_NS, PEER_NS] {
        ip(&["netns", "add", ns])?;
    }
    let h = |args: &[&str]| {
        let mut all = vec!["-n", HOST_NS];
        all.extend_from_slice(args);
        ip(&all)
    };
    h(&["link", "add", BRIDGE, "type", "bridge"])?;
    h(&["addr", "add", BRIDGE_ADDR, "dev", BRIDGE])?;
    // A persistent tap made before qemu starts: guard is attached to it before the guest
    // can send anything, and qemu only opens it.
    h(&["tuntap", "add", "dev", TAP, "mode", "tap"])?;
    h(&["link", "set", TAP, "master", BRIDGE, "up"])?;
    h(&[
        "link", "add", "vpeer", "type", "veth", "peer", "name", "eth0", "netns", PEER_NS,
    ])?;
    h(&["link", "set", "vpeer", "master", BRIDGE, "up"])?;
    ip(&["-n", PEER_NS, "link", "set", "eth0", "up"])?;
    h(&["link", "set", BRIDGE, "up"])?;

    let mut attach = Command::new(bins.guardctl);
    attach.args(["--netns", HOST_NS, "attach", BRIDGE, "--hook", hook]);
    for p in PROTECT {
        attach.args(["--protect", p]);
    }
    cmd::output(&mut attach).context("attaching guard to the tap's bridge")?;
    let status = cmd::output(
        Command::new(bins.guardctl).args(["--netns", HOST_NS, "status", BRIDGE, "--json"]),
    )?;
    let v: Value = serde_json::from_str(&status).context("parsing guardctl status --json")?;
    let mode = v
        .pointer("/bridges/0/ports")
        .and_then(Value::as_array)
        .and_then(|ports| {
            ports
                .iter()
                .find(|p| p.get("name").and_then(Value::as_str) == Some(TAP))
        })
        .and_then(|p| p.get("hook"))
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("{TAP} is not hooked: {status}"))?;
    Ok(mode.to_owned())
}

fn mac(netns: &str, iface: &str) -> Result<String> {
    let out = cmd::output(Command::new("ip").args(["-n", netns, "-br", "link", "show", iface]))?;
    out.split_whitespace()
        .nth(2)
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("no MAC for {iface} in {netns}"))
}

fn start_watch(bins: &Binaries<'_>) -> Result<(Child, BufReader<std::process::ChildStdout>)> {
    let mut child = Command::new(bins.vmcheck)
        .args([
            "watch",
            "--netns",
            HOST_NS,
            "--bridge",
            BRIDGE,
            "--port",
            TAP,
            "--peer-netns",
            PEER_NS,
            "--guest-mac",
            GUEST_MAC,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {} watch", bins.vmcheck.display()))?;
    let mut out = BufReader::new(
        child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("guard-vmcheck watch: no stdout"))?,
    );
    let mut line = String::new();
    out.read_line(&mut line)
        .context("waiting for guard-vmcheck watch")?;
    if line.trim() != "ready" {
        let _ = child.kill();
        bail!("guard-vmcheck watch did not start: {line:?}");
    }
    Ok((child, out))
}

/// Runs the tap test with `hook` on a guest booted from `vmlinux` + `initramfs`.
pub fn run(
    bins: &Binaries<'_>,
    hook: &str,
    vmlinux: &Path,
    initramfs: &Path,
    log: &Path,
) -> Result<Outcome> {
    cleanup(bins);
    let result = (|| {
        let mode = setup(bins, hook)?;
        let bridge_mac = mac(HOST_NS, BRIDGE)?;
        let peer_mac = mac(PEER_NS, "eth0")?;
        let (mut watch, mut watch_out) = start_watch(bins)?;
        let guest = qemu::boot(&qemu::Boot {
            vmlinux,
            initramfs,
            append: format!("vmcheck.mode=tap vmcheck.bridge={bridge_mac} vmcheck.peer={peer_mac}"),
            extra: vec![
                "-netdev".into(),
                format!("tap,id=n0,ifname={TAP},script=no,downscript=no"),
                "-device".into(),
                format!("virtio-net-pci,netdev=n0,mac={GUEST_MAC}"),
            ],
            netns: Some(HOST_NS),
            timeout: TIMEOUT,
            log,
        });
        // Whatever the guest did, tell the watcher to stop and judge.
        if let Some(mut stdin) = watch.stdin.take() {
            let _ = writeln!(stdin, "done");
        }
        let mut verdict = None;
        let mut line = String::new();
        while watch_out.read_line(&mut line).unwrap_or(0) > 0 {
            if let Some(json) = line.trim().strip_prefix("VMCHECK ") {
                verdict = Some(
                    serde_json::from_str(json).context("parsing guard-vmcheck watch's result")?,
                );
            }
            line.clear();
        }
        let status = watch.wait().context("waiting for guard-vmcheck watch")?;
        let guest = guest?;
        let verdict =
            verdict.ok_or_else(|| anyhow!("guard-vmcheck watch gave no result ({status})"))?;
        Ok(Outcome {
            mode,
            guest,
            verdict,
        })
    })();
    cleanup(bins);
    result
}
