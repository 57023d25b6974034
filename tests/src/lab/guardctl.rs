//! Driving `guardctl` from tests: where the binary is, running it, reading `status --json`
//! and `stats --json`, the agent (`guardctl run`) as a child process, a tmux session for
//! `top`, bounded polling, and a guard that removes a namespace's pins and state on drop.
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
    process::{Child, Command, Output, Stdio},
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
    /// Environment given to every run (`GUARD_LIBVIRT_RUN_DIR` for a fake libvirt).
    env: Vec<(String, PathBuf)>,
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
            return Ok(Self {
                path,
                env: Vec::new(),
            });
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
            .map(|p| Self {
                path: p.clone(),
                env: Vec::new(),
            })
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

    /// This guardctl, run with `key=value` in its environment (the agent too).
    #[must_use]
    pub fn with_env(mut self, key: &str, value: impl Into<PathBuf>) -> Self {
        self.env.push((key.to_owned(), value.into()));
        self
    }

    /// `guardctl [--netns NS] ARGS...`, not yet run.
    #[must_use]
    pub fn command(&self, netns: Option<&str>, args: &[&str]) -> Command {
        let mut c = Command::new(&self.path);
        c.envs(self.env.iter().map(|(k, v)| (k, v)));
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

    /// `status BRIDGE --json`: the bridge's entry, whatever the health (its exit code is
    /// [`Guardctl::status_code`]).
    pub fn status(&self, netns: &str, bridge: &str) -> Result<serde_json::Value> {
        self.status_code(netns, bridge).map(|(v, _)| v)
    }

    /// `status BRIDGE --json`: the bridge's entry and the exit code (0 healthy, 2 monitored,
    /// 3 unguarded; anything else is an error).
    pub fn status_code(&self, netns: &str, bridge: &str) -> Result<(serde_json::Value, i32)> {
        let out = self.output(Some(netns), &["status", bridge, "--json"])?;
        let code = out.status.code().unwrap_or(-1);
        let text = String::from_utf8_lossy(&out.stdout);
        if ![0, 2, 3].contains(&code) {
            bail!(
                "`guardctl --netns {netns} status {bridge} --json` failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let v: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("status --json: {text:?}"))?;
        if v["schema"] != "guardctl.status.v1" {
            bail!("status --json without its schema: {text}");
        }
        let entry = v["bridges"]
            .get(0)
            .cloned()
            .with_context(|| format!("status --json has no entry for {bridge}: {text}"))?;
        Ok((entry, code))
    }

    /// `stats BRIDGE --json`: the bridge's counters.
    pub fn stats(&self, netns: &str, bridge: &str) -> Result<Stats> {
        let out = self.ok(Some(netns), &["stats", bridge, "--json"])?;
        let v: serde_json::Value =
            serde_json::from_str(&out).with_context(|| format!("stats --json: {out:?}"))?;
        stats_entry(&v).with_context(|| format!("stats --json has no entry for {bridge}: {out}"))
    }

    /// Polls `stats BRIDGE --json` until `done` holds of a reading (or `timeout` passes, an
    /// error naming `what` and showing the last reading), and returns that reading.
    pub fn wait_stats(
        &self,
        netns: &str,
        bridge: &str,
        what: &str,
        timeout: Duration,
        done: impl Fn(&Stats) -> bool,
    ) -> Result<Stats> {
        let mut last = None;
        poll(timeout, || {
            let s = self.stats(netns, bridge).ok()?;
            let hit = done(&s).then(|| s.clone());
            last = Some(s);
            hit
        })
        .with_context(|| {
            format!(
                "timed out after {timeout:?} waiting for {what}: {:#}",
                last.map_or(serde_json::Value::Null, |s| s.0)
            )
        })
    }
}

/// The first bridge of a `stats --json` document (`guardctl.stats.v1`).
#[must_use]
pub fn stats_entry(v: &serde_json::Value) -> Option<Stats> {
    (v["schema"] == "guardctl.stats.v1")
        .then(|| v["bridges"].get(0).cloned().map(Stats))
        .flatten()
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

/// `/var/log/guard/<scope>`: where the agent's default drop logs of a scope go.
#[must_use]
pub fn log_scope_dir(netns: Option<&str>) -> PathBuf {
    Path::new(guard::droplog::LOG_ROOT).join(netns.unwrap_or(HOST_SCOPE))
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
            // An agent started without --log writes its drop log here.
            log_scope_dir(Some(&self.netns)),
        ] {
            match std::fs::remove_dir_all(&d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => eprintln!("guard-lab: cannot remove {}: {e}", d.display()),
            }
        }
    }
}

/// Poll interval while waiting for the kernel or the agent (always with a deadline).
pub const POLL: Duration = Duration::from_millis(2);

/// Polls `f` until it returns `Some` or `timeout` passes.
pub fn poll<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(POLL);
    }
}

/// `guardctl run` as a child process, its stdout read line by line (and echoed to stderr);
/// killed (SIGKILL) on drop if still running.
pub struct Agent {
    pub child: Child,
    lines: mpsc::Receiver<(Instant, String)>,
}

impl Agent {
    /// Starts `guardctl [--netns NS] run BRIDGE ARGS...` and waits until it reports that it
    /// follows the bridge.
    ///
    /// # Panics
    /// When it cannot start or does not get that far within 20 s.
    #[must_use]
    pub fn start(gctl: &Guardctl, netns: &str, bridge: &str, args: &[&str]) -> Self {
        let mut agent = Self::spawn(gctl, netns, bridge, args);
        agent.wait_for("agent following", Duration::from_secs(20));
        agent
    }

    /// Starts the agent without waiting for anything.
    ///
    /// # Panics
    /// When it cannot start.
    #[must_use]
    pub fn spawn(gctl: &Guardctl, netns: &str, bridge: &str, args: &[&str]) -> Self {
        let mut all = vec!["run", bridge];
        all.extend_from_slice(args);
        let mut child = gctl
            .command(Some(netns), &all)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start guardctl run");
        let out = child.stdout.take().expect("agent stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let at = Instant::now();
                eprintln!("  [agent] {line}");
                if tx.send((at, line)).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// Waits for a line of the agent's output containing `what`.
    ///
    /// # Panics
    /// When no such line comes within `timeout`.
    pub fn wait_for(&mut self, what: &str, timeout: Duration) -> String {
        self.wait_for_at(what, timeout).1
    }

    /// Like [`Agent::wait_for`], with the instant the line was read.
    ///
    /// # Panics
    /// When no such line comes within `timeout`.
    pub fn wait_for_at(&mut self, what: &str, timeout: Duration) -> (Instant, String) {
        self.try_wait_for(what, timeout).unwrap_or_else(|e| {
            let status = self.child.try_wait().ok().flatten();
            panic!("the agent did not print {what:?} within {timeout:?} ({e}; exit {status:?})")
        })
    }

    /// Waits for a line containing `what`; the error says why none came.
    pub fn try_wait_for(&mut self, what: &str, timeout: Duration) -> Result<(Instant, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((at, l)) if l.contains(what) => return Ok((at, l)),
                Ok(_) => {}
                Err(e) => bail!("{e}"),
            }
        }
    }

    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `sig` to the agent.
    ///
    /// # Panics
    /// When kill(2) fails.
    pub fn signal(&mut self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.child.id().cast_signed(), sig) };
        assert_eq!(rc, 0, "kill({}, {sig})", self.child.id());
    }

    /// SIGTERM (enforcement stays in place), then waits (bounded) for the exit; `None` if it
    /// is still running 10 s later.
    #[must_use]
    pub fn stop(mut self) -> Option<std::process::ExitStatus> {
        self.signal(libc::SIGTERM);
        self.wait_exit(Duration::from_secs(10))
    }

    /// Waits (bounded) for the agent to exit; `None` if it is still running at the deadline.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        poll(timeout, || self.child.try_wait().ok().flatten())
    }

    /// Resident memory in KiB (`VmRSS` of /proc/<pid>/status).
    ///
    /// # Panics
    /// When /proc cannot be read.
    #[must_use]
    pub fn rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read the agent's /proc status");
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/<pid>/status")
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

/// `guardctl events` as a child process: its stdout lines are collected, its stderr lines
/// (where it says what it reads from) can be waited for; killed on drop if still running.
pub struct EventsReader {
    pub child: Child,
    stdout: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stderr: mpsc::Receiver<String>,
}

impl EventsReader {
    /// Starts `guardctl [--netns NS] events BRIDGE ARGS...` without waiting.
    ///
    /// # Panics
    /// When it cannot start.
    #[must_use]
    pub fn spawn(gctl: &Guardctl, netns: &str, bridge: &str, args: &[&str]) -> Self {
        let mut all = vec!["events", bridge];
        all.extend_from_slice(args);
        let mut child = gctl
            .command(Some(netns), &all)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start guardctl events");
        let out = child.stdout.take().expect("events stdout");
        let err = child.stderr.take().expect("events stderr");
        let stdout = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = stdout.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                sink.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(line);
            }
        });
        let (tx, stderr) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("  [events] {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            stdout,
            stderr,
        }
    }

    /// Waits for a line on its stderr containing `what`; returns it.
    ///
    /// # Panics
    /// When none comes within `timeout`.
    pub fn wait_stderr(&mut self, what: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(l) if l.contains(what) => return l,
                Ok(_) => {}
                Err(e) => panic!("guardctl events did not print {what:?} within {timeout:?}: {e}"),
            }
        }
    }

    /// Every stdout line so far.
    #[must_use]
    pub fn lines(&self) -> Vec<String> {
        self.stdout
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Is it still running?
    pub fn running(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_none()
    }

    /// SIGINT (it reads what is there first), then waits (bounded) for the exit.
    ///
    /// # Panics
    /// When it does not exit within 10 s.
    #[must_use]
    pub fn stop(mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id().cast_signed(), libc::SIGINT) };
        poll(Duration::from_secs(10), || {
            self.child.try_wait().ok().flatten()
        })
        .expect("guardctl events exits on SIGINT")
    }
}

impl Drop for EventsReader {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A tmux server of our own (private socket) running one command in an 80x24 window named
/// `top`; killed on drop.
pub struct Tmux {
    socket: String,
}

impl Tmux {
    /// Starts `command` (a shell command line) in a new detached 80x24 session.
    pub fn start(socket: &str, command: &str) -> Result<Self> {
        let t = Self {
            socket: socket.to_owned(),
        };
        let out = t
            .cmd()
            .args([
                "new-session",
                "-d",
                "-s",
                "top",
                "-x",
                "80",
                "-y",
                "24",
                command,
            ])
            .output()
            .context("tmux is needed (cargo xtask setup installs it)")?;
        if !out.status.success() {
            bail!("tmux: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(t)
    }

    #[must_use]
    pub fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.socket]);
        c
    }

    /// The window's text now.
    #[must_use]
    pub fn capture(&self) -> String {
        self.cmd()
            .args(["capture-pane", "-p", "-t", "top"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// Polls the window until `ok` holds of it, within `within`; returns that screen.
    pub fn wait_for(
        &self,
        what: &str,
        within: Duration,
        ok: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let mut last = String::new();
        poll(within, || {
            last = self.capture();
            ok(&last).then(|| last.clone())
        })
        .with_context(|| format!("{what} not shown within {within:?}:\n{last}"))
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").output();
    }
}

/// A free TCP port on 127.0.0.1 of the caller's namespace now, as `127.0.0.1:PORT` (the
/// kernel picks it; another process could take it before it is used, which only fails
/// that bind).
pub fn free_local_port() -> Result<String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(l.local_addr().context("local address")?.to_string())
}

/// `GET path` over HTTP/1.0 to `addr` (in the caller's namespace); the body of a 200.
pub fn http_get(addr: &str, path: &str) -> Result<String> {
    use std::io::{Read as _, Write as _};
    let mut s =
        std::net::TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .context("socket timeout")?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").context("sending the request")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).context("reading the answer")?;
    let (head, body) = resp
        .split_once("\r\n\r\n")
        .with_context(|| format!("no HTTP header end in {resp:?}"))?;
    if !(head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200")) {
        bail!("GET {path} from {addr}: {head}");
    }
    Ok(body.to_owned())
}
