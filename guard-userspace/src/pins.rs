//! Where an attached bridge's state lives.
//!
//! `/sys/fs/bpf/guard/<scope>/<bridge>/`: `<scope>` is the network namespace name given with
//! `--netns`, or `host` for the caller's own namespace. It holds the maps (by their names in
//! the object), the programs (`prog_xdp`, `prog_tc`) and one link per hooked interface
//! (`link_<hook>_<ifindex>`). Runtime metadata that bpffs cannot hold (since when, options,
//! class names) is `state.json` under `/run/guard/<scope>/<bridge>/`: tmpfs, so it has the same
//! lifetime as the pins (both end at reboot).

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

impl Location {
    #[must_use]
    pub fn new(netns: Option<&str>, bridge: &str) -> Self {
        Self::with_roots(
            netns,
            bridge,
            Path::new(BPFFS).join("guard"),
            PathBuf::from("/run/guard"),
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

    #[must_use]
    pub fn state_file(&self) -> PathBuf {
        self.run_root
            .join(self.scope())
            .join(&self.bridge)
            .join("state.json")
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
        let state_dir = self.run_root.join(self.scope()).join(&self.bridge);
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

/// Makes sure bpffs is mounted at `/sys/fs/bpf` (mounting it if absent).
pub fn ensure_bpffs() -> Result<()> {
    let mounts = fs::read_to_string("/proc/self/mounts").map_err(|source| GuardError::Bpffs {
        path: PathBuf::from("/proc/self/mounts"),
        source,
    })?;
    if mounts.lines().any(|l| {
        l.split_whitespace().nth(1) == Some(BPFFS) && l.split_whitespace().nth(2) == Some("bpf")
    }) {
        return Ok(());
    }
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
