//! `guardctl audit --fix`: writing the safe sysctl changes.

use std::{fs, path::Path};

use serde::Serialize;

use super::{AuditError, Result, SysctlChange, collect::read_sysctl};

/// One `--fix` write, with the value before and after.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Applied {
    pub sysctl: String,
    pub before: Option<i64>,
    pub after: i64,
}

/// Writes the changes under `root` (`/proc/sys`), reading each value back.
pub fn apply(root: &Path, changes: &[SysctlChange]) -> Result<Vec<Applied>> {
    let mut out = Vec::new();
    for c in changes {
        let before = read_sysctl(root, &c.path)?;
        let full = root.join(&c.path);
        if before != Some(c.value) {
            fs::write(&full, format!("{}\n", c.value)).map_err(|source| {
                AuditError::WriteSysctl {
                    path: full.clone(),
                    value: c.value,
                    source,
                }
            })?;
        }
        let after = read_sysctl(root, &c.path)?.unwrap_or(i64::MIN);
        if after != c.value {
            return Err(AuditError::WriteIgnored {
                path: full,
                wanted: c.value,
                got: after,
            });
        }
        out.push(Applied {
            sysctl: c.sysctl.clone(),
            before,
            after,
        });
    }
    Ok(out)
}
