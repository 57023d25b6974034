//! Where an attached bridge's state lives.
//!
//! `/sys/fs/bpf/guard/<scope>/<bridge>/`: `<scope>` is the network namespace name given with
//! `--netns`, or `host` for the caller's own namespace. It holds the maps (by their names in
//! the object), the programs (`prog_xdp`, `prog_tc`) and one link per hooked interface
//! (`link_<hook>_<ifindex>`). Runtime metadata that bpffs cannot hold (since when, options,
//! class names) is `state.json` under `/run/guard/<scope>/<bridge>/`: tmpfs, so it has the same
//! lifetime as the pins (both end at reboot).
//!
//! One writer at a time: every verb that changes a bridge, and the agent while it reconciles,
//! holds an exclusive `flock(2)` on `/run/guard/<scope>/<bridge>/lock` ([`BridgeLock`]). The lock
//! sits beside `state.json` rather than on the pin directory because `/run` is the one tree
//! every guardctl shares: the pin directory is on bpffs, which `ip netns exec` hides (its fresh
//! `/sys` has none), does not exist before the first attach (creating it only to lock would
//! make the bridge look attached), and is removed by `detach`.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use crate::error::{GuardError, Result};

pub const BPFFS: &str = "/sys/fs/bpf";
pub const HOST_SCOPE: &str = "host";

/// The pin and state locations of one bridge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// `None` for the caller's network namespace, else the `--netns` name.
    pub netns: Option<String>,
    pub bridge: String,
    pin_root: PathBuf,
    run_root: PathBuf,
}

/// Where state files live: tmpfs, shared by every mount namespace (unlike bpffs under `ip
/// netns exec`).
pub const RUN_ROOT: &str = "/run/guard";

impl Location {
    #[must_use]
    pub fn new(netns: Option<&str>, bridge: &str) -> Self {
        Self::with_roots(
            netns,
            bridge,
            Path::new(BPFFS).join("guard"),
            PathBuf::from(RUN_ROOT),
        )
    }

    /// For tests: roots other than the system ones.
    #[must_use]
    pub fn with_roots(
        netns: Option<&str>,
        bridge: &str,
        pin_root: PathBuf,
        run_root: PathBuf,
    ) -> Self {
        Self {
            netns: netns.map(str::to_owned),
            bridge: bridge.to_owned(),
            pin_root,
            run_root,
        }
    }

    /// `/run/guard` (or the test root).
    #[must_use]
    pub fn run_root(&self) -> &Path {
        &self.run_root
    }

    #[must_use]
    pub fn scope(&self) -> &str {
        self.netns.as_deref().unwrap_or(HOST_SCOPE)
    }

    /// `/sys/fs/bpf/guard/<scope>/<bridge>`.
    #[must_use]
    pub fn pin_dir(&self) -> PathBuf {
        self.pin_root.join(self.scope()).join(&self.bridge)
    }

    #[must_use]
    pub fn map_pin(&self, name: &str) -> PathBuf {
        self.pin_dir().join(name)
    }

    #[must_use]
    pub fn prog_pin(&self, hook: &str) -> PathBuf {
        self.pin_dir().join(format!("prog_{hook}"))
    }

    #[must_use]
    pub fn link_pin(&self, hook: &str, ifindex: u32) -> PathBuf {
        self.pin_dir().join(format!("link_{hook}_{ifindex}"))
    }

    /// `/run/guard/<scope>/<bridge>`: the state file and the lock.
    #[must_use]
    pub fn run_dir(&self) -> PathBuf {
        self.run_root.join(self.scope()).join(&self.bridge)
    }

    #[must_use]
    pub fn state_file(&self) -> PathBuf {
        self.run_dir().join("state.json")
    }

    #[must_use]
    pub fn lock_file(&self) -> PathBuf {
        self.run_dir().join("lock")
    }

    /// `/run/guard/<scope>/<bridge>/events.sock`: the agent's drop-event feed (JSON lines).
    #[must_use]
    pub fn events_socket(&self) -> PathBuf {
        self.run_dir().join("events.sock")
    }

    /// `/run/guard/<scope>/<bridge>/consumer.lock`: held by whoever reads the event ring.
    #[must_use]
    pub fn consumer_lock_file(&self) -> PathBuf {
        self.run_dir().join("consumer.lock")
    }

    /// Takes the bridge's writer lock, waiting for the holder to release it.
    pub fn lock(&self) -> Result<BridgeLock> {
        BridgeLock::acquire(self)
    }

    /// Is anything pinned for this bridge?
    #[must_use]
    pub fn is_attached(&self) -> bool {
        self.pin_dir().is_dir()
    }

    /// Link pins present: `(hook, ifindex, path)`.
    pub fn link_pins(&self) -> Result<Vec<(String, u32, PathBuf)>> {
        let dir = self.pin_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(GuardError::Bpffs { path: dir, source }),
        };
        let mut links = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| GuardError::Bpffs {
                path: dir.clone(),
                source,
            })?;
            let name = entry.file_name();
            let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("link_")) else {
                continue;
            };
            if let Some((hook, idx)) = rest.rsplit_once('_')
                && let Ok(ifindex) = idx.parse()
            {
                links.push((hook.to_owned(), ifindex, entry.path()));
            }
        }
        links.sort();
        Ok(links)
    }

    /// Removes every pin and the state file (links held only by their pin are released with
    /// it). Idempotent.
    pub fn remove_all(&self) -> Result<()> {
        let dir = self.pin_dir();
        match fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(GuardError::Bpffs { path: dir, source }),
        }
        let state_dir = self.run_dir();
        match fs::remove_dir_all(&state_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(GuardError::State {
                    path: state_dir,
                    source,
                });
            }
        }
        // Leave no empty scope directories behind.
        for parent in [
            self.pin_root.join(self.scope()),
            self.run_root.join(self.scope()),
        ] {
            let _ = fs::remove_dir(parent);
        }
        Ok(())
    }
}

/// Every attached bridge under the pin root: `(scope, bridge)`.
pub fn attached_bridges(pin_root: &Path) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let scopes = match fs::read_dir(pin_root) {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(source) => {
            return Err(GuardError::Bpffs {
                path: pin_root.to_owned(),
                source,
            });
        }
    };
    for scope in scopes.flatten() {
        let Ok(bridges) = fs::read_dir(scope.path()) else {
            continue;
        };
        for bridge in bridges.flatten() {
            if bridge.path().is_dir() {
                out.push((
                    scope.file_name().to_string_lossy().into_owned(),
                    bridge.file_name().to_string_lossy().into_owned(),
                ));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The exclusive writer lock of one bridge (see the module documentation). Released on drop;
/// when the bridge has no state left (a detach, or a verb that found nothing attached), the
/// lock file and its empty directories are removed while the lock is still held.
#[derive(Debug)]
pub struct BridgeLock {
    /// Held open for the lock's lifetime: closing it releases the flock.
    _file: fs::File,
    path: PathBuf,
    run_dir: PathBuf,
}

impl BridgeLock {
    fn acquire(loc: &Location) -> Result<Self> {
        use std::os::{fd::AsRawFd as _, unix::fs::MetadataExt as _};
        let path = loc.lock_file();
        let err = |source| GuardError::Lock {
            path: path.clone(),
            source,
        };
        loop {
            fs::create_dir_all(loc.run_dir()).map_err(err)?;
            let file = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(err)?;
            // SAFETY: flock on a descriptor we own.
            while unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(err(e));
                }
            }
            // The holder before us may have removed the file (a detach): then we locked an
            // inode nobody else will ever lock, and must start over on the path's new file.
            let held = file.metadata().map_err(err)?;
            match fs::metadata(&path) {
                Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => {
                    return Ok(Self {
                        _file: file,
                        path,
                        run_dir: loc.run_dir(),
                    });
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(err(e)),
            }
        }
    }
}

impl Drop for BridgeLock {
    fn drop(&mut self) {
        if !self.run_dir.join("state.json").exists() {
            // Nothing attached: leave no lock file behind. Someone waiting on this inode
            // notices the unlink after we close, and retries on a fresh file.
            let _ = fs::remove_file(&self.path);
            let _ = fs::remove_dir(&self.run_dir);
            if let Some(scope) = self.run_dir.parent() {
                let _ = fs::remove_dir(scope);
            }
        }
        // Dropping `_file` afterwards closes it, which releases the flock.
    }
}

/// The one consumer of a bridge's event ring: an exclusive `flock(2)` on
/// [`Location::consumer_lock_file`]. A ring buffer has one consumer position, so two readers
/// would split its events; the agent and a direct `events`/`top` take this lock before they
/// read the ring, and everyone else subscribes to the agent's socket (`crate::feed`). Released
/// on drop (closing the file releases the flock). The file stays: it is empty, and removing
/// it while someone waits on it would let two holders exist.
#[derive(Debug)]
pub struct ConsumerLock {
    _file: fs::File,
}

impl ConsumerLock {
    /// Takes the lock if nobody holds it; `None` when someone does. Fails when the bridge has
    /// no state directory (not attached).
    pub fn try_acquire(loc: &Location) -> Result<Option<Self>> {
        use std::os::{fd::AsRawFd as _, unix::fs::MetadataExt as _};
        let path = loc.consumer_lock_file();
        let err = |source| GuardError::Lock {
            path: path.clone(),
            source,
        };
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(err)?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EWOULDBLOCK | libc::EINTR) => Ok(None),
                _ => Err(err(e)),
            };
        }
        // A detach removed the directory since we opened: this inode is nobody's lock.
        let held = file.metadata().map_err(err)?;
        match fs::metadata(&path) {
            Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => {
                Ok(Some(Self { _file: file }))
            }
            Ok(_) => Ok(None),
            Err(e) => Err(err(e)),
        }
    }
}

/// Is a bpffs mounted at `/sys/fs/bpf` in this mount namespace?
pub fn bpffs_mounted() -> Result<bool> {
    let mounts = fs::read_to_string("/proc/self/mounts").map_err(|source| GuardError::Bpffs {
        path: PathBuf::from("/proc/self/mounts"),
        source,
    })?;
    Ok(mounts.lines().any(|l| {
        l.split_whitespace().nth(1) == Some(BPFFS) && l.split_whitespace().nth(2) == Some("bpf")
    }))
}

/// Every `state.json` under the run root (`/run/guard/<scope>/<bridge>/state.json`).
#[must_use]
pub fn state_files(run_root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for scope in fs::read_dir(run_root).into_iter().flatten().flatten() {
        for bridge in fs::read_dir(scope.path()).into_iter().flatten().flatten() {
            let f = bridge.path().join("state.json");
            if f.is_file() {
                out.push(f);
            }
        }
    }
    out.sort();
    out
}

/// The name under `/run/netns` of the network namespace this process is in, if it has one.
#[must_use]
pub fn own_netns_name() -> Option<String> {
    use std::os::unix::fs::MetadataExt as _;
    let me = fs::metadata("/proc/self/ns/net").ok()?;
    fs::read_dir(crate::netns::NETNS_RUN_DIR)
        .ok()?
        .flatten()
        .find(|e| fs::metadata(e.path()).is_ok_and(|m| m.ino() == me.ino() && m.dev() == me.dev()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
}

/// Refuses to work when bpffs is not mounted here but guard state exists under `run_root`:
/// the pins of that state are in another mount namespace's bpffs (the typical cause is
/// `ip netns exec`, which gives the command a fresh `/sys`), and a fresh bpffs would give
/// guardctl a second, invisible guard (`attach` stacking a second program on hooked ports,
/// `detach` deleting the real state file).
pub fn check_bpffs_visible(run_root: &Path) -> Result<()> {
    if bpffs_mounted()? {
        return Ok(());
    }
    let Some(state) = state_files(run_root).into_iter().next() else {
        return Ok(());
    };
    let hint = match own_netns_name() {
        Some(name) => format!(
            "This looks like `ip netns exec {name}`: run `guardctl --netns {name} ...` from the \
             host instead."
        ),
        None => "Run guardctl where /sys/fs/bpf is mounted; for a bridge in a named network \
                 namespace use `guardctl --netns NAME ...` instead of `ip netns exec`."
            .to_owned(),
    };
    Err(GuardError::BpffsHidden { state, hint })
}

/// Makes sure bpffs is mounted at `/sys/fs/bpf`, mounting it if absent, but only when that
/// cannot hide existing state ([`check_bpffs_visible`]).
pub fn ensure_bpffs(run_root: &Path) -> Result<()> {
    if bpffs_mounted()? {
        return Ok(());
    }
    check_bpffs_visible(run_root)?;
    let err = |source| GuardError::Bpffs {
        path: PathBuf::from(BPFFS),
        source,
    };
    fs::create_dir_all(BPFFS).map_err(err)?;
    let c = |s: &str| std::ffi::CString::new(s).map_err(|e| err(io::Error::other(e)));
    let (src, target, fstype) = (c("bpf")?, c(BPFFS)?, c("bpf")?);
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(err(io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_loc(tag: &str) -> (Location, PathBuf) {
        let root = std::env::temp_dir().join(format!("guard-pins-{tag}-{}", std::process::id()));
        let loc = Location::with_roots(None, "br-t", root.join("bpf"), root.join("run"));
        (loc, root)
    }

    #[test]
    fn lock_is_exclusive_and_leaves_nothing_without_state() {
        let (loc, root) = temp_loc("lock");
        let held = loc.lock().expect("lock");
        let (tx, rx) = std::sync::mpsc::channel();
        let other = loc.clone();
        let waiter = std::thread::spawn(move || {
            let l = other.lock().expect("second lock");
            tx.send(()).expect("send");
            drop(l);
        });
        // The second locker must still be waiting while the first holds the lock.
        assert!(
            rx.recv_timeout(std::time::Duration::from_millis(100))
                .is_err(),
            "two holders at once"
        );
        drop(held);
        rx.recv_timeout(std::time::Duration::from_secs(5))
            .expect("the waiter gets the lock once it is released");
        waiter.join().expect("waiter");
        assert!(!loc.lock_file().exists(), "no state: no lock file left");
        assert!(!loc.run_dir().exists());
        let _ = fs::remove_dir_all(root);
    }

    #[test]
    fn lock_file_kept_while_state_exists() {
        let (loc, root) = temp_loc("keep");
        fs::create_dir_all(loc.run_dir()).expect("dir");
        fs::write(loc.state_file(), "{}").expect("state");
        drop(loc.lock().expect("lock"));
        assert!(loc.lock_file().exists());
        // A holder that removes the directory (a detach) does not strand the next locker.
        let l = loc.lock().expect("lock");
        fs::remove_dir_all(loc.run_dir()).expect("remove");
        drop(l);
        drop(loc.lock().expect("lock after removal"));
        let _ = fs::remove_dir_all(root);
    }

    #[test]
    fn consumer_lock_has_one_holder() {
        let (loc, root) = temp_loc("consumer");
        fs::create_dir_all(loc.run_dir()).expect("dir");
        let first = ConsumerLock::try_acquire(&loc)
            .expect("lock")
            .expect("free");
        assert!(
            ConsumerLock::try_acquire(&loc).expect("lock").is_none(),
            "two consumers at once"
        );
        drop(first);
        assert!(ConsumerLock::try_acquire(&loc).expect("lock").is_some());
        let _ = fs::remove_dir_all(root);
    }
}
