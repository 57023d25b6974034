//! The control-plane bench: what an operator waits for and what the agent costs.
//!
//! - `guardctl attach` of a bridge with `ports` veth ports (end to end: process start, object
//!   load and verification, discovery, one hook per port, pins, state file), and its detach;
//! - `guardctl stats --json` on that bridge;
//! - `GuardMaps::set_policy` of `prefixes` prefixes into freshly loaded (empty) maps, in process;
//! - the resident memory of `guardctl run` holding `prefixes` protected prefixes from a
//!   configuration file, once it reports that it follows the bridge.
//!
//! Everything happens in a namespace of its own (named like the lab's, so `guard-lab cleanup`
//! finds a leftover), which is deleted at the end; guard is detached from it even on error.

use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::EbpfLoader;
use guard::maps::GuardMaps;
use guard::policy::{Action, Classes, Policy, RuleSpec};
use ipnet::IpNet;

use super::flood::{guardctl, run_guardctl};
use super::workload::{self, Prefix};
use super::{Scale, Summary};
use crate::lab::{NAME_BASE, NetNs};

const BRIDGE: &str = "br0";
/// How long `guardctl run` may take to attach and report that it is following the bridge.
const AGENT_READY_TIMEOUT: Duration = Duration::from_secs(180);

#[derive(Clone, Debug, Default)]
pub struct Results {
    pub ports: usize,
    pub prefixes: usize,
    pub attach_s: Summary,
    pub detach_s: Summary,
    pub stats_json_s: Summary,
    pub set_policy_s: f64,
    pub agent_rss_kib: u64,
    pub agent_hwm_kib: u64,
    pub agent_ready_s: f64,
}

/// Detaches guard from the bench bridge when dropped.
struct Attached<'a> {
    guardctl: &'a Path,
    ns: &'a str,
}

impl Drop for Attached<'_> {
    fn drop(&mut self) {
        let _ = Command::new(self.guardctl)
            .args(["-n", self.ns, "detach", BRIDGE])
            .output();
    }
}

fn timed<T>(f: impl FnOnce() -> Result<T>) -> Result<(T, f64)> {
    let t = Instant::now();
    let v = f()?;
    Ok((v, t.elapsed().as_secs_f64()))
}

fn spec(p: &Prefix) -> Result<RuleSpec> {
    Ok(RuleSpec {
        net: IpNet::new(p.addr, p.len)
            .map_err(|e| anyhow!("{}/{}: {e}", p.addr, p.len))?
            .trunc(),
        action: Action::Deny,
        class: "bench".to_owned(),
        source: "bench".to_owned(),
    })
}

/// `set_policy` of `n` prefixes into the empty maps of a fresh, unpinned load of `object`.
fn set_policy_time(object: &[u8], n: usize) -> Result<f64> {
    let mut ebpf = EbpfLoader::new()
        .load(object)
        .context("loading guard's object for the policy-load bench")?;
    let mut maps = GuardMaps::from_ebpf(&mut ebpf)?;
    let specs = workload::prefixes(n)
        .iter()
        .map(spec)
        .collect::<Result<Vec<_>>>()?;
    let policy = Policy::from_rules(specs)?;
    let mut classes = Classes::default();
    let (writes, elapsed) = timed(|| Ok(maps.set_policy(&policy, &mut classes)?))?;
    if writes != n {
        bail!("set_policy wrote {writes} entries for {n} prefixes");
    }
    Ok(elapsed)
}

fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("no {field} in /proc/{pid}/status"))
}

/// Starts `guardctl run` with a config of `n` prefixes and measures its memory once ready.
fn agent_memory(guardctl: &Path, ns: &str, n: usize, dir: &Path) -> Result<(u64, u64, f64)> {
    let mut toml = format!("[[bridge]]\nname = \"{BRIDGE}\"\nhook = \"xdp\"\nprotect = [\n");
    for p in workload::prefixes(n) {
        let _ = writeln!(toml, "  \"{}/{}=bench\",", p.addr, p.len);
    }
    toml.push_str("]\n");
    let cfg = dir.join("guard-bench-agent.toml");
    std::fs::write(&cfg, toml).with_context(|| format!("writing {}", cfg.display()))?;
    let _attached = Attached { guardctl, ns };
    let started = Instant::now();
    let mut child = Command::new(guardctl)
        .args(["-n", ns, "run", BRIDGE, "--config"])
        .arg(&cfg)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting guardctl run")?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("no stdout of guardctl run"))?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.contains("agent following") {
                let _ = tx.send(());
            }
        }
    });
    let ready = rx.recv_timeout(AGENT_READY_TIMEOUT);
    let ready_s = started.elapsed().as_secs_f64();
    let measured = match ready {
        Ok(()) => status_kib(child.id(), "VmRSS:")
            .and_then(|rss| Ok((rss, status_kib(child.id(), "VmHWM:")?, ready_s))),
        Err(_) => Err(anyhow!(
            "guardctl run did not report readiness within {AGENT_READY_TIMEOUT:?}"
        )),
    };
    // SIGTERM: the agent's normal stop (enforcement stays; `_attached` detaches).
    // SAFETY: plain kill(2) of our own child.
    unsafe { libc::kill(child.id().cast_signed(), libc::SIGTERM) };
    let _ = child.wait();
    let _ = std::fs::remove_file(&cfg);
    measured
}

/// Runs the control-plane bench.
pub fn run(object: &[u8], scale: &Scale, out_dir: &Path) -> Result<Results> {
    let guardctl: PathBuf = guardctl()?;
    let mut r = Results {
        ports: scale.ports,
        prefixes: scale.prefixes,
        ..Results::default()
    };
    r.set_policy_s = set_policy_time(object, scale.prefixes)?;

    let ns_obj = NetNs::create(&format!("{NAME_BASE}-{}-bench-cp", std::process::id()))?;
    let ns = ns_obj.name().to_owned();
    let mut lines = vec![
        format!("link add {BRIDGE} type bridge"),
        format!("link set {BRIDGE} up"),
        // No dummy driver on every kernel: a veth pair is as good a host interface.
        "link add mgmt0 type veth peer name mgmt1".to_owned(),
        "addr add 10.10.0.1/24 dev mgmt0".to_owned(),
        "link set mgmt0 up".to_owned(),
    ];
    for i in 0..scale.ports {
        lines.push(format!("link add p{i} type veth peer name q{i}"));
        lines.push(format!("link set p{i} master {BRIDGE} up"));
        lines.push(format!("link set q{i} up"));
    }
    ns_obj.ip_batch(&lines)?;

    let (mut attach, mut detach, mut stats) = (Vec::new(), Vec::new(), Vec::new());
    let attempts = if scale.quick { 1 } else { 3 };
    for _ in 0..attempts {
        let attached = Attached {
            guardctl: &guardctl,
            ns: &ns,
        };
        let ((), s) =
            timed(|| run_guardctl(&guardctl, &ns, &["attach", BRIDGE, "--hook", "xdp"]).map(drop))?;
        attach.push(s);
        for _ in 0..5 {
            let (out, s) = timed(|| run_guardctl(&guardctl, &ns, &["stats", BRIDGE, "--json"]))?;
            serde_json::from_str::<serde_json::Value>(&out)
                .context("guardctl stats --json printed invalid JSON")?;
            stats.push(s);
        }
        std::mem::forget(attached);
        let ((), s) = timed(|| run_guardctl(&guardctl, &ns, &["detach", BRIDGE]).map(drop))?;
        detach.push(s);
    }
    r.attach_s = Summary::of(&attach);
    r.detach_s = Summary::of(&detach);
    r.stats_json_s = Summary::of(&stats);

    let (rss, hwm, ready) = agent_memory(&guardctl, &ns, scale.prefixes, out_dir)?;
    r.agent_rss_kib = rss;
    r.agent_hwm_kib = hwm;
    r.agent_ready_s = ready;
    ns_obj.delete()?;
    Ok(r)
}
