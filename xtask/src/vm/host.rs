//! Host commands and tools the VM tests need: running a command with an error that names it,
//! and installing Debian packages that are missing.

use std::{
    path::Path,
    process::{Command, Output},
};

use anyhow::{Context as _, Result, bail};

/// Runs `cmd`, returns its stdout; the error names the command line and carries its stderr.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = output(cmd)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Like [`run`], but keeps the raw output.
pub fn output(cmd: &mut Command) -> Result<Output> {
    let line = describe(cmd);
    let out = cmd
        .output()
        .with_context(|| format!("could not start `{line}`"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// Runs `cmd` with output shown, echoing it first.
pub fn run_shown(cmd: &mut Command) -> Result<()> {
    let line = describe(cmd);
    println!("$ {line}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

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
        run_shown(
            Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(pkgs)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    };
    if install(&missing).is_err() {
        run_shown(Command::new("apt-get").args(["update", "-q"]))?;
        install(&missing).with_context(|| format!("installing {}", missing.join(" ")))?;
    }
    Ok(())
}

/// An ELF without a program interpreter is static.
pub fn is_static(path: &Path) -> bool {
    run(Command::new("ldd").arg(path)).is_err()
}
