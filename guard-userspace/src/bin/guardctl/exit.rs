//! guardctl's exit codes, one table for every verb (docs/cli.md). `audit` keeps its own
//! (`guard::audit::EXIT_*`).

/// Something failed at run time: the message names the interface, map or file at fault.
pub const ERROR: u8 = 1;
/// `status`: every port is guarded, but some (or the whole bridge) only monitor: would-drop
/// frames pass.
pub const MONITORED: u8 = 2;
/// `status`: a port of the bridge carries no guard hook, an item failed to apply at the last
/// reconcile, or the bridge is not attached at all.
pub const UNGUARDED: u8 = 3;
/// Bad arguments, including a value that does not validate (a CIDR, a hook, a MAC):
/// `EX_USAGE` from sysexits.h.
pub const USAGE: u8 = 64;

/// A usage error found after parsing (an argument that only fails with another one, such as
/// `--dport` without `--proto tcp|udp`): `main` exits with [`USAGE`] for it.
#[derive(Debug)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}
