//! The privileges attaching needs.

use std::fs;

use crate::error::{GuardError, Result};

/// `CAP_NET_ADMIN`, `CAP_SYS_ADMIN` and `CAP_BPF` (include/uapi/linux/capability.h).
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

/// Checks for the privileges attaching needs, before anything is touched.
pub fn check_privileges() -> Result<()> {
    // SAFETY: no arguments, cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return Ok(());
    }
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    if may_attach(effective_caps(&status)) {
        Ok(())
    } else {
        Err(GuardError::Permission(
            "not root and without CAP_BPF and CAP_NET_ADMIN".to_owned(),
        ))
    }
}

/// The `CapEff:` mask of a `/proc/<pid>/status` text (0 when absent).
fn effective_caps(status: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0)
}

/// `CAP_NET_ADMIN` and one of `CAP_BPF` (5.8+) or `CAP_SYS_ADMIN` (older kernels).
fn may_attach(eff: u64) -> bool {
    let has = |cap: u32| eff & (1 << cap) != 0;
    has(CAP_NET_ADMIN) && (has(CAP_BPF) || has(CAP_SYS_ADMIN))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_masks() {
        let status = "Name:\tx\nCapEff:\t000000800000a000\n";
        let eff = effective_caps(status);
        assert_eq!(eff, (1 << CAP_BPF) | (1 << 13) | (1 << 15));
        assert!(!may_attach(eff), "no CAP_NET_ADMIN");
        assert!(may_attach(eff | (1 << CAP_NET_ADMIN)));
        assert!(may_attach((1 << CAP_NET_ADMIN) | (1 << CAP_SYS_ADMIN)));
        assert_eq!(effective_caps("Name:\tx\n"), 0);
    }
}
