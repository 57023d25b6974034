//! `--netns NAME`: operate on a bridge inside a named network namespace.
//!
//! Only the *network* namespace of the calling thread changes (`setns(CLONE_NEWNET)`), so
//! netlink sockets and XDP/TC attaches made afterwards on this thread (and threads it spawns)
//! see the namespace's interfaces, while the mount namespace (and so the bpffs where pins
//! live) stays the caller's. `ip netns exec` would instead give the command a private `/sys`,
//! and pins made there would be gone for the next command.

use std::{fs::File, os::fd::AsRawFd, path::Path};

use crate::error::{GuardError, Result};

/// Where iproute2 keeps named namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// Moves the calling thread into the network namespace `name` (`/run/netns/NAME`).
pub fn enter(name: &str) -> Result<()> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(GuardError::Netns {
            name: name.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a valid name"),
        });
    }
    let path = Path::new(NETNS_RUN_DIR).join(name);
    let err = |source| GuardError::Netns {
        name: name.to_owned(),
        source,
    };
    let file = File::open(&path).map_err(err)?;
    // SAFETY: plain syscall on a valid fd we own for the duration of the call.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    Ok(())
}
