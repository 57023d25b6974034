//! Driving `guardctl` from tests: where the binary is, running it, reading `status --json`
//! and `stats --json`, and a guard that removes a namespace's pins and state on drop.
//!
//! `guardctl` is a binary of another package (`guard-userspace`), and cargo only builds the
//! binaries of the package under test for its integration tests (`CARGO_BIN_EXE_*` does not
//! cross packages), so it must be built first:
//! `cargo build [--release] -p guard-userspace --bin guardctl`. [`Guardctl::locate`] fails
//! saying so when it is missing.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use guard::pins::{BPFFS, HOST_SCOPE};

/// Where `guardctl` keeps runtime state (`/run/guard/<scope>/<bridge>/state.json`).
pub const RUN_ROOT: &str = "/run/guard";

/// A located `guardctl` binary.
#[derive(Clone, Debug)]
pub struct Guardctl {
    path: PathBuf,
}

impl Guardctl {
    /// `$GUARDCTL`, else `guardctl` next to the running executable or in its parent directory
    /// (a test executable lives in `target/<profile>/deps/`, binaries in `target/<profile>/`).
    pub fn locate() -> Result<Self> {
        if let Some(p) = std::env::var_os("GUARDCTL") {
            let path = PathBuf::from(p);
            if !path.is_file() {
                bail!("GUARDCTL={} is not a file", path.display());
            }
            return Ok(Self { path });
        }
        let exe = std::env::current_exe().context("locating the running executable")?;
        let dir = exe.parent().context("executable without a directory")?;
        let candidates = [
            dir.join("guardctl"),
            dir.parent()
                .map_or_else(PathBuf::new, |d| d.join("guardctl")),
        ];
        candidates
            .iter()
            .find(|p| p.is_file())
            .map(|p| Self { path: p.clone() })
            .with_context(|| {
                format!(
                    "guardctl not found ({}); build it first with \
                     `cargo build [--release] -p guard-userspace --bin guardctl` in the same \
                     profile as the tests, or set GUARDCTL to its path",
                    candidates
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
    }

    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `guardctl [--netns NS] ARGS...`, not yet run.
    #[must_use]
    pub fn command(&self, netns: Option<&str>, args: &[&str]) -> Command {
        let mut c = Command::new(&self.path);
        if let Some(ns) = netns {
            c.args(["--netns", ns]);
        }
        c.args(args);
        c
    }

    /// Runs it and returns whatever happened.
    pub fn output(&self, netns: Option<&str>, args: &[&str]) -> Result<Output> {
        self.command(netns, args)
            .output()
            .with_context(|| format!("cannot run {}", self.path.display()))
    }

    /// Runs it; a non-zero exit is an error with the command line and its stderr. Returns
    /// stdout.
    pub fn ok(&self, netns: Option<&str>, args: &[&str]) -> Result<String> {
        let out = self.output(netns, args)?;
        if !out.status.success() {
            bail!(
                "`guardctl{} {}` failed ({}): {}",
                netns.map_or(String::new(), |n| format!(" --netns {n}")),
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `status BRIDGE --json`: the bridge's entry.
    pub fn status(&self, netns: &str, bridge: &str) -> Result<serde_json::Value> {
        let out = self.ok(Some(netns), &["status", bridge, "--json"])?;
        let v: serde_json::Value =
            serde_json::from_str(&out).with_context(|| format!("status --json: {out:?}"))?;
        v.get(0)
            .cloned()
            .with_context(|| format!("status --json has no entry for {bridge}: {out}"))
    }

    /// `stats BRIDGE --json`: the bridge's counters.
    pub fn stats(&self, netns: &str, bridge: &str) -> Result<Stats> {
        let out = self.ok(Some(netns), &["stats", bridge, "--json"])?;
        let v: serde_json::Value =
            serde_json::from_str(&out).with_context(|| format!("stats --json: {out:?}"))?;
        v.get(0)
            .cloned()
            .map(Stats)
            .with_context(|| format!("stats --json has no entry for {bridge}: {out}"))
    }
}

/// One bridge's `stats --json` entry.
#[derive(Clone, Debug)]
pub struct Stats(pub serde_json::Value);

/// The drop reasons, by their stable names (`guard_common::reason::name`).
pub const DROP_REASONS: [&str; 5] = [
    "deny_ipv4",
    "deny_ipv6",
    "deny_arp",
    "deny_ndp",
    "malformed",
];

/// The names of every drop reason guard has (`guard_common::reason`), the enforced ones
/// only: new reasons are picked up without touching the tests.
#[must_use]
pub fn drop_reason_names() -> Vec<&'static str> {
    (0..guard_common::reason::COUNT)
        .filter(|r| guard_common::reason::is_drop(*r))
        .map(guard_common::reason::name)
        .collect()
}

impl Stats {
    /// Packets per reason name, of one port or (`None`) of the whole bridge (every slot).
    /// Reads whatever reasons the JSON has, so reasons that this test build does not know
    /// are counted too.
    #[must_use]
    pub fn reasons(&self, port: Option<&str>) -> BTreeMap<String, u64> {
        let entry = match port {
            Some(p) => self.port(p),
            None => Some(&self.0["totals"]),
        };
        entry
            .and_then(|e| e["reasons"].as_object())
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v["packets"].as_u64().unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// What grew from `before` to `self`, per reason (only the reasons that grew).
    #[must_use]
    pub fn reason_deltas(&self, before: &Stats, port: Option<&str>) -> BTreeMap<String, u64> {
        let old = before.reasons(port);
        self.reasons(port)
            .into_iter()
            .map(|(r, n)| {
                let d = n.saturating_sub(old.get(&r).copied().unwrap_or(0));
                (r, d)
            })
            .filter(|(_, d)| *d > 0)
            .collect()
    }

    fn port(&self, name: &str) -> Option<&serde_json::Value> {
        self.0["ports"]
            .as_array()?
            .iter()
            .find(|p| p["name"].as_str() == Some(name))
    }

    /// Packets of `reason` on port `port` (0 if the port is not listed).
    #[must_use]
    pub fn port_reason(&self, port: &str, reason: &str) -> u64 {
        self.port(port)
            .and_then(|p| p["reasons"][reason]["packets"].as_u64())
            .unwrap_or(0)
    }

    /// Is `port` listed at all?
    #[must_use]
    pub fn has_port(&self, port: &str) -> bool {
        self.port(port).is_some()
    }

    /// Packets of `reason` summed over every port (and the unregistered slot).
    #[must_use]
    pub fn total_reason(&self, reason: &str) -> u64 {
        self.0["totals"]["reasons"][reason]["packets"]
            .as_u64()
            .unwrap_or(0)
    }

    /// Every dropped packet of the bridge.
    #[must_use]
    pub fn total_dropped(&self) -> u64 {
        self.0["totals"]["dropped"]["packets"].as_u64().unwrap_or(0)
    }

    /// Hits of the deny rules, summed.
    #[must_use]
    pub fn rule_hits(&self) -> u64 {
        self.0["rules"]
            .as_array()
            .map_or(0, |r| r.iter().filter_map(|r| r["hits"].as_u64()).sum())
    }
}

/// `/sys/fs/bpf/guard/<scope>`.
#[must_use]
pub fn pin_scope_dir(netns: Option<&str>) -> PathBuf {
    Path::new(BPFFS)
        .join("guard")
        .join(netns.unwrap_or(HOST_SCOPE))
}

/// `/run/guard/<scope>`.
#[must_use]
pub fn state_scope_dir(netns: Option<&str>) -> PathBuf {
    Path::new(RUN_ROOT).join(netns.unwrap_or(HOST_SCOPE))
}

/// Every file and directory under `dir` (empty if it does not exist).
#[must_use]
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Removes every pin and state file of a `--netns` scope when dropped (also while a failing
/// test unwinds): removing the pins releases the links, and with them the hooks, and the
/// maps. Declare it after the lab, so that it is dropped before the namespaces go.
#[derive(Debug)]
pub struct PinScope {
    netns: String,
}

impl PinScope {
    /// Guards the pins of `netns`. Fails if that scope already holds anything: a test must
    /// not take over (and then delete) someone else's pins.
    pub fn new(netns: &str) -> Result<Self> {
        let left = files_under(&pin_scope_dir(Some(netns)));
        if !left.is_empty() {
            bail!("pins of namespace {netns} exist before the test: {left:?}");
        }
        Ok(Self {
            netns: netns.to_owned(),
        })
    }

    #[must_use]
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// What is pinned or recorded for the scope right now.
    #[must_use]
    pub fn leftovers(&self) -> Vec<PathBuf> {
        let mut v = files_under(&pin_scope_dir(Some(&self.netns)));
        v.extend(files_under(&state_scope_dir(Some(&self.netns))));
        for d in [
            pin_scope_dir(Some(&self.netns)),
            state_scope_dir(Some(&self.netns)),
        ] {
            if d.exists() {
                v.push(d);
            }
        }
        v
    }
}

impl Drop for PinScope {
    fn drop(&mut self) {
        for d in [
            pin_scope_dir(Some(&self.netns)),
            state_scope_dir(Some(&self.netns)),
        ] {
            match std::fs::remove_dir_all(&d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => eprintln!("guard-lab: cannot remove {}: {e}", d.display()),
            }
        }
    }
}

/// `guardctl run BRIDGE` (the agent) as a child process, killed (SIGKILL) on drop if still
/// running. Its standard output is echoed to stderr with an `[agent]` prefix and can be
/// waited on line by line.
pub struct Agent {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Agent {
    /// Starts the agent on `bridge` in `netns` (`extra`: more options of `guardctl run`, such
    /// as `--hook tc`) and waits until it reports that it follows the bridge.
    pub fn start(gctl: &Guardctl, netns: &str, bridge: &str, extra: &[&str]) -> Result<Self> {
        let mut args = vec!["run", bridge];
        args.extend_from_slice(extra);
        let mut child = gctl
            .command(Some(netns), &args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting guardctl run {bridge} in {netns}"))?;
        let out = child.stdout.take().context("the agent's stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                eprintln!("  [agent] {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut agent = Self { child, lines };
        agent.wait_for("agent following", Duration::from_secs(20))?;
        Ok(agent)
    }

    /// Waits for a line of the agent's output containing `what`, and returns it.
    pub fn wait_for(&mut self, what: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(what) => return Ok(l),
                Ok(_) => {}
                Err(e) => {
                    let status = self.child.try_wait().ok().flatten();
                    bail!(
                        "the agent did not print {what:?} within {timeout:?} ({e}; exit {status:?})"
                    )
                }
            }
        }
    }

    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `sig` to the agent.
    pub fn signal(&mut self, sig: libc::c_int) -> Result<()> {
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.child.id().cast_signed(), sig) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("kill({}, {sig})", self.child.id()));
        }
        Ok(())
    }

    /// Waits for the agent to exit.
    pub fn wait(&mut self) -> Result<ExitStatus> {
        self.child.wait().context("waiting for the agent")
    }

    /// SIGTERM (enforcement stays in place), then waits for the exit.
    pub fn stop(mut self) -> Result<ExitStatus> {
        self.signal(libc::SIGTERM)?;
        self.wait()
    }

    /// Resident memory in KiB (`VmRSS` of /proc/<pid>/status).
    pub fn rss_kib(&self) -> Result<u64> {
        let path = format!("/proc/{}/status", self.pid());
        let s = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no VmRSS in {path}"))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
