//! Host tools the VM tests need: installing the Debian packages of those that are missing.
//! (Commands run through [`crate::cmd`].)

use std::{path::Path, process::Command};

use anyhow::{Context as _, Result};

use crate::cmd;

/// Is `prog` an executable on PATH (or an existing path)?
pub fn have(prog: &str) -> bool {
    if prog.contains('/') {
        return Path::new(prog).exists();
    }
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(prog).is_file()))
}

/// The tools the VM tests use, and the Debian package that brings each.
const TOOLS: &[(&str, &str)] = &[
    ("qemu-system-x86_64", "qemu-system-x86"),
    // busybox-static's binary: the initramfs needs one that runs without a libc.
    ("/bin/busybox", "busybox-static"),
    ("xz", "xz-utils"),
    ("zstd", "zstd"),
    ("ip", "iproute2"),
    ("dpkg-deb", "dpkg"),
];

/// Installs the Debian packages of any missing tool (`apt-get`, refreshing the lists once if
/// the first attempt fails).
pub fn ensure_tools() -> Result<()> {
    let mut missing: Vec<&str> = TOOLS
        .iter()
        .filter(|(tool, _)| !have(tool))
        .map(|(_, pkg)| *pkg)
        .collect();
    // A dynamically linked busybox (Debian's `busybox` package) cannot run in the initramfs.
    if have("/bin/busybox") && !is_static(Path::new("/bin/busybox")) {
        missing.push("busybox-static");
    }
    if missing.is_empty() {
        return Ok(());
    }
    let install = |pkgs: &[&str]| {
        cmd::run(
            Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(pkgs)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    };
    if install(&missing).is_err() {
        cmd::run(Command::new("apt-get").args(["update", "-q"]))?;
        install(&missing).with_context(|| format!("installing {}", missing.join(" ")))?;
    }
    Ok(())
}

/// An ELF without a program interpreter is static.
pub fn is_static(path: &Path) -> bool {
    cmd::output(Command::new("ldd").arg(path)).is_err()
}
