//! Named network namespaces: creation, a guard that deletes them, running code inside them,
//! and a registry that a Ctrl-C handler tears down.

use std::{
    collections::BTreeSet,
    ffi::CString,
    fs::File,
    io::Write as _,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicI32, Ordering},
    },
};

use anyhow::{Context as _, Result, bail};

/// Where `ip netns` keeps its bind mounts.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// Names of the namespaces this process created and has not deleted yet.
static LIVE: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

fn live() -> std::sync::MutexGuard<'static, BTreeSet<String>> {
    // A panic while holding the lock leaves a valid set behind: keep using it.
    LIVE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The bind mount of a named namespace.
#[must_use]
pub fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}

/// Renders a command line for error messages.
fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd`, feeding it `stdin`, and returns its standard output. A non-zero exit is an
/// error carrying the command line and its standard error.
pub fn run_cmd(cmd: &mut Command, stdin: Option<&str>) -> Result<String> {
    let line = describe(cmd);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start `{line}`"))?;
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .context("child stdin")?
            .write_all(input.as_bytes())
            .with_context(|| format!("writing to `{line}`"))?;
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for `{line}`"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            stdin.map(|s| format!("\n input:\n{s}")).unwrap_or_default()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("output of `{line}` is not UTF-8"))
}

/// Runs `f` on a fresh thread that has joined the network namespace `ns`, and returns its
/// result. Sockets created inside `f` stay in `ns` for their whole life (a socket belongs to
/// the namespace it was created in), so they can be returned and used from any thread.
/// The calling thread's namespace is never changed.
pub fn in_netns<T, F>(ns: &str, f: F) -> Result<T>
where
    T: Send,
    F: FnOnce() -> Result<T> + Send,
{
    let path = netns_path(ns);
    let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    std::thread::scope(|s| {
        let handle = s.spawn(move || {
            // SAFETY: `file` is an open namespace file; setns only affects this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("setns into network namespace {ns}"));
            }
            f()
        });
        match handle.join() {
            Ok(r) => r,
            // Keep the panic a panic (and its message) for the test harness.
            Err(payload) => std::panic::resume_unwind(payload),
        }
    })
}

/// Deletes a named namespace the way `ip netns del` does: detach the bind mount and remove
/// the file. The namespace itself goes away once no socket or process holds it.
fn delete_netns(name: &str) -> Result<()> {
    remove_guard_state(name);
    let path = netns_path(name);
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .with_context(|| format!("namespace path {}", path.display()))?;
    // SAFETY: `c` is a valid NUL-terminated path.
    let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        // EINVAL: not a mount point (a half-created namespace); the file may still exist.
        if err.raw_os_error() != Some(libc::EINVAL) && err.raw_os_error() != Some(libc::ENOENT) {
            return Err(err).with_context(|| format!("unmounting {}", path.display()));
        }
    }
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// Removes what guardctl pinned for bridges of namespace `name` (`--netns name`): the pins
/// under `/sys/fs/bpf/guard/<name>/` and the state under `/run/guard/<name>/`. With the
/// namespace gone they hold only defunct links and orphaned maps, so every path that deletes
/// a lab namespace (drop, a failed test, Ctrl-C, a stale lab) takes them along. Best effort:
/// usually nothing is there.
fn remove_guard_state(name: &str) {
    for root in ["/sys/fs/bpf/guard", "/run/guard"] {
        let dir = Path::new(root).join(name);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => eprintln!("guard-lab: cannot remove {}: {e}", dir.display()),
        }
    }
}

/// A named network namespace, deleted on drop (also while unwinding from a panic).
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates the namespace `name` (which must not exist) and registers it for Ctrl-C
    /// cleanup.
    pub fn create(name: &str) -> Result<Self> {
        // Creation, deletion and the signal cleanup all hold the registry lock while they
        // work, so a Ctrl-C can never miss a namespace that is being created.
        let mut live = live();
        if netns_path(name).exists() {
            bail!("network namespace {name} already exists");
        }
        if let Err(e) = run_cmd(Command::new("ip").args(["netns", "add", name]), None) {
            // Nothing of ours may stay behind, even half-made.
            let _ = delete_netns(name);
            return Err(e.context(format!("creating network namespace {name}")));
        }
        live.insert(name.to_owned());
        Ok(Self {
            name: name.to_owned(),
        })
    }

    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        run_cmd(
            Command::new("ip").arg("-n").arg(&self.name).args(args),
            None,
        )
        .with_context(|| format!("in network namespace {}", self.name))
    }

    /// `ip -n <ns> -json <args>`, parsed.
    pub fn ip_json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let out = run_cmd(
            Command::new("ip")
                .arg("-n")
                .arg(&self.name)
                .arg("-json")
                .args(args),
            None,
        )
        .with_context(|| format!("in network namespace {}", self.name))?;
        serde_json::from_str(if out.trim().is_empty() { "[]" } else { &out })
            .with_context(|| format!("parsing `ip -json {}` in {}", args.join(" "), self.name))
    }

    /// Runs several `ip` commands (one a line) in one process: `ip -n <ns> -batch -`.
    pub fn ip_batch(&self, lines: &[String]) -> Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let script = lines.join("\n") + "\n";
        run_cmd(
            Command::new("ip")
                .arg("-n")
                .arg(&self.name)
                .args(["-batch", "-"]),
            Some(&script),
        )
        .map(drop)
        .with_context(|| format!("configuring network namespace {}", self.name))
    }

    /// Sets sysctls inside the namespace (`ip netns exec` gives `sysctl` the namespace's own
    /// `/proc/sys/net` and `/sys`).
    pub fn sysctl(&self, settings: &[(&str, &str)]) -> Result<()> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, "sysctl", "-q"]);
        for (k, v) in settings {
            cmd.arg("-w").arg(format!("{k}={v}"));
        }
        run_cmd(&mut cmd, None)
            .map(drop)
            .with_context(|| format!("setting sysctls in network namespace {}", self.name))
    }

    /// Reads one sysctl inside the namespace (`sysctl -n KEY` through `ip netns exec`, as
    /// [`NetNs::sysctl`] writes them).
    pub fn sysctl_get(&self, key: &str) -> Result<String> {
        self.exec("sysctl", &["-n", key], None)
            .map(|v| v.trim().to_owned())
            .with_context(|| format!("reading {key}"))
    }

    /// Runs any command inside the namespace (`ip netns exec <ns> <program> <args>`).
    pub fn exec(&self, program: &str, args: &[&str], stdin: Option<&str>) -> Result<String> {
        run_cmd(
            Command::new("ip")
                .args(["netns", "exec", &self.name, program])
                .args(args),
            stdin,
        )
        .with_context(|| format!("in network namespace {}", self.name))
    }

    /// Runs `f` on a thread inside this namespace: see [`in_netns`].
    pub fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send,
        F: FnOnce() -> Result<T> + Send,
    {
        in_netns(&self.name, f)
    }

    /// Deletes the namespace now and reports failure (drop only prints it).
    pub fn delete(mut self) -> Result<()> {
        let name = std::mem::take(&mut self.name);
        let mut live = live();
        if !live.remove(&name) {
            return Ok(()); // the signal cleanup got there first
        }
        delete_netns(&name).with_context(|| format!("deleting network namespace {name}"))
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if self.name.is_empty() {
            return;
        }
        let mut live = live();
        if !live.remove(&self.name) {
            return;
        }
        if let Err(e) = delete_netns(&self.name) {
            eprintln!(
                "guard-lab: cannot delete network namespace {}: {e:#}",
                self.name
            );
        }
    }
}

/// Names of the existing namespaces whose name starts with `prefix`.
pub fn namespaces_with_prefix(prefix: &str) -> Result<Vec<String>> {
    let dir = match std::fs::read_dir(NETNS_RUN_DIR) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).context(format!("listing {NETNS_RUN_DIR}")),
    };
    let mut names = Vec::new();
    for entry in dir {
        let name = entry
            .with_context(|| format!("listing {NETNS_RUN_DIR}"))?
            .file_name();
        let name = name.to_string_lossy();
        if name.starts_with(prefix) {
            names.push(name.into_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// Deletes the namespaces of dead lab processes (`<base>-<pid>-...` whose pid no longer
/// runs), left behind by a `kill -9` or a crash. Returns their names.
pub fn delete_stale(base: &str) -> Result<Vec<String>> {
    let mut deleted = Vec::new();
    for name in namespaces_with_prefix(&format!("{base}-"))? {
        let pid = name[base.len() + 1..]
            .split('-')
            .next()
            .and_then(|p| p.parse::<u32>().ok());
        let Some(pid) = pid else { continue };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        delete_netns(&name).with_context(|| format!("deleting stale namespace {name}"))?;
        deleted.push(name);
    }
    Ok(deleted)
}

/// Deletes every namespace this process still has registered and exits with `code`, holding
/// the registry lock to the end so that no other thread creates a namespace meanwhile.
fn delete_all_registered_and_exit(code: i32, signal: u8) -> ! {
    let mut live = live();
    let count = live.len();
    for name in std::mem::take(&mut *live) {
        if let Err(e) = delete_netns(&name) {
            eprintln!("guard-lab: cannot delete network namespace {name}: {e:#}");
        }
    }
    eprintln!("\nguard-lab: signal {signal}: deleted {count} lab namespace(s)");
    std::process::exit(code)
}

static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int) {
    // Only async-signal-safe work here: hand the signal number to the cleanup thread.
    let byte = u8::try_from(sig).unwrap_or(u8::MAX);
    let fd = SIGNAL_PIPE.load(Ordering::Relaxed);
    // SAFETY: write(2) is async-signal-safe; `byte` outlives the call.
    unsafe {
        libc::write(fd, (&raw const byte).cast(), 1);
    }
}

/// Installs SIGINT/SIGTERM/SIGHUP handlers that delete every registered namespace and exit
/// with `128 + signal`. The deletion runs on a dedicated thread, not in the handler.
pub fn install_signal_cleanup() -> Result<()> {
    static INSTALLED: Mutex<bool> = Mutex::new(false);
    // Held for the whole installation: concurrent callers install once.
    let mut installed = INSTALLED.lock().unwrap_or_else(PoisonError::into_inner);
    if *installed {
        return Ok(());
    }
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("creating the signal pipe");
    }
    SIGNAL_PIPE.store(fds[1], Ordering::Relaxed);
    let read_fd = fds[0];
    std::thread::Builder::new()
        .name("guard-lab-signals".into())
        .spawn(move || {
            let mut byte = 0u8;
            // SAFETY: reading one byte into a valid buffer from our own pipe.
            let n = unsafe { libc::read(read_fd, (&raw mut byte).cast(), 1) };
            if n == 1 {
                delete_all_registered_and_exit(128 + i32::from(byte), byte);
            }
        })
        .context("starting the signal cleanup thread")?;
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: a zeroed sigaction is valid; we set a handler that only calls write(2).
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&raw mut sa.sa_mask);
            if libc::sigaction(sig, &raw const sa, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("installing the handler for signal {sig}"));
            }
        }
    }
    *installed = true;
    Ok(())
}
