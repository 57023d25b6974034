//! `cargo xtask setup`: checks everything the build, the tests and the lab need, and installs
//! what is missing. Idempotent; when all is present it only reads a few files and runs a few
//! short processes (no network), well under two seconds.
//!
//! Steps, in order (later steps use what earlier ones found):
//! 1. toolchain: `nightly` if rustup has it, else `stable` with `RUSTC_BOOTSTRAP=1`
//!    (`GUARD_EBPF_TOOLCHAIN` overrides the choice);
//! 2. `rust-src` for that toolchain (`-Z build-std=core` compiles core from it);
//! 3. bpf-linker, built against that toolchain's own libLLVM (../shared/docs/toolchain.md);
//! 4. bpffs at /sys/fs/bpf (guard pins its programs, links and maps there);
//! 5. the Debian packages in [`PACKAGES`].
use std::{
    collections::HashSet,
    env,
    ffi::CStr,
    fs, io,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, anyhow, bail};

use crate::cmd;

/// Debian packages the tests, the bench and the lab use, with why. The only copy of this list:
/// README.md's set-up section refers here.
pub const PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "ip, bridge, tc: namespaces, veths and bridges"),
    ("bpftool", "inspect loaded programs, maps and pins"),
    ("tcpdump", "see what crossed an interface"),
    (
        "xdp-tools",
        "xdp-filter, the baseline the bench compares against",
    ),
    ("nftables", "the nftables baseline (bridge family)"),
    ("tmux", "the attack lab's panes"),
    ("ethtool", "offload settings on veths"),
    ("procps", "sysctl (forwarding on and off)"),
    (
        "systemd",
        "systemd-analyze verify of guardctl@.service (a privileged test)",
    ),
];

/// The bpf-linker release measured to build against the toolchains' LLVM 22
/// (../shared/docs/toolchain.md). Pinned so a new release cannot break a fresh machine.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Names the rustup toolchain that builds the eBPF crate. Set it to override the choice;
/// xtask sets it for cargo when the choice is not `nightly`, and guard-userspace/build.rs
/// passes it to aya-build (which otherwise always runs `rustup run nightly`).
pub const TOOLCHAIN_ENV: &str = "GUARD_EBPF_TOOLCHAIN";

/// The rustup toolchain that builds the eBPF crate, and the facts about it the build needs.
pub struct Toolchain {
    /// As rustup names it: `+name` for cargo, `rustup run name` for aya-build.
    pub name: String,
    /// Not a nightly: `-Z build-std` then needs `RUSTC_BOOTSTRAP=1`.
    pub bootstrap: bool,
    /// `rustc -vV`'s `LLVM version:` line, e.g. `22.1.4`.
    llvm_version: String,
    llvm_major: u32,
    /// `$(rustc --print sysroot)/lib/libLLVM.so.*`, the library bpf-linker must use.
    libllvm: PathBuf,
}

/// What the set-up found: everything later verbs need to run cargo the same way.
pub struct Env {
    pub toolchain: Toolchain,
    /// Directory of the bpf-linker that passed the checks; first on `PATH` for every build.
    linker_dir: PathBuf,
}

impl Env {
    /// `cargo` for the host crates, on the default toolchain. guard-userspace/build.rs builds
    /// the release eBPF object from inside it, so it gets the eBPF toolchain's environment:
    /// `GUARD_EBPF_TOOLCHAIN`, which build.rs turns into aya-build's `Toolchain::Custom`, and
    /// `RUSTC_BOOTSTRAP=1`, which cargo hands to the build script, where aya-build 0.2.0 reads
    /// it (`use_build_std`: "1" means add `-Z build-std=core`) and its nested cargo inherits it.
    pub fn host_cargo(&self) -> Command {
        let mut cmd = Command::new("cargo");
        self.apply(&mut cmd);
        cmd
    }

    /// `cargo +<toolchain>` for the eBPF crate itself (its debug build and its clippy).
    pub fn ebpf_cargo(&self) -> Command {
        let mut cmd = Command::new("cargo");
        cmd.arg(format!("+{}", self.toolchain.name));
        self.apply(&mut cmd);
        // aya-build drops these too: they would pin another toolchain's rustc.
        cmd.env_remove("RUSTC")
            .env_remove("RUSTC_WORKSPACE_WRAPPER");
        cmd
    }

    fn apply(&self, cmd: &mut Command) {
        let path = env::var_os("PATH").unwrap_or_default();
        let dirs = std::iter::once(self.linker_dir.clone()).chain(env::split_paths(&path));
        if let Ok(path) = env::join_paths(dirs) {
            cmd.env("PATH", path);
        }
        if self.toolchain.bootstrap {
            cmd.env(TOOLCHAIN_ENV, &self.toolchain.name)
                .env("RUSTC_BOOTSTRAP", "1");
        }
    }
}

/// How a step ended when it did not fail.
struct Done<T> {
    value: T,
    installed: bool,
    detail: String,
}

impl<T> Done<T> {
    fn ok(value: T, detail: impl Into<String>) -> Self {
        Self {
            value,
            installed: false,
            detail: detail.into(),
        }
    }

    fn installed(value: T, detail: impl Into<String>) -> Self {
        Self {
            value,
            installed: true,
            detail: detail.into(),
        }
    }
}

/// Runs one step and prints its one line: `ok`, `installed` or `FAILED` with what to do.
fn step<T>(
    name: &str,
    fix: &str,
    f: impl FnOnce() -> anyhow::Result<Done<T>>,
) -> anyhow::Result<T> {
    match f() {
        Ok(Done {
            value,
            installed,
            detail,
        }) => {
            let state = if installed { "installed" } else { "ok" };
            println!("setup: {name:<10} {state:<9} {detail}");
            Ok(value)
        }
        Err(err) => {
            println!("setup: {name:<10} FAILED    {err:#}");
            println!("setup: {name:<10} to fix:   {fix}");
            Err(err.context(format!(
                "cargo xtask setup: step `{name}` failed (see above)"
            )))
        }
    }
}

/// The `setup` verb, also the first thing `build`, `test`, `demo`, `bench` and `vmtest` do.
pub fn run() -> anyhow::Result<Env> {
    let start = Instant::now();
    let env = toolchain()?;
    step(
        "bpffs",
        "run as root, or `mount -t bpf bpf /sys/fs/bpf`",
        mount_bpffs,
    )?;
    step(
        "packages",
        &format!(
            "run as root, or `apt-get update && apt-get install -y {}`",
            package_names().join(" ")
        ),
        packages,
    )?;
    println!("setup: done in {:.2}s", start.elapsed().as_secs_f64());
    Ok(env)
}

/// Steps 1 to 3, all that compiling needs (`cargo xtask lint` stops here): none of them needs
/// root, since bpf-linker goes into cargo's own `bin` directory.
pub fn toolchain() -> anyhow::Result<Env> {
    let toolchain = step(
        "toolchain",
        "install rustup (https://rustup.rs) and `rustup toolchain install nightly`",
        find_toolchain,
    )?;
    step(
        "rust-src",
        &format!(
            "`rustup component add rust-src --toolchain {}`",
            toolchain.name
        ),
        || rust_src(&toolchain),
    )?;
    let linker_dir = step(
        "bpf-linker",
        &format!(
            "build it by hand as ../shared/docs/toolchain.md describes, against {}",
            toolchain.libllvm.display()
        ),
        || bpf_linker(&toolchain),
    )?;
    Ok(Env {
        toolchain,
        linker_dir,
    })
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn rustup() -> Command {
    Command::new("rustup")
}

/// `nightly` when rustup has it (a dated `nightly-2025-...` does not count), else `stable`
/// with `RUSTC_BOOTSTRAP=1`, which builds the eBPF crate too (../shared/docs/toolchain.md).
fn find_toolchain() -> anyhow::Result<Done<Toolchain>> {
    let (name, why) = if let Some(name) = env::var(TOOLCHAIN_ENV).ok().filter(|n| !n.is_empty()) {
        (name, format!("from {TOOLCHAIN_ENV}"))
    } else {
        let list = cmd::output(rustup().args(["toolchain", "list"]))
            .context("rustup picks and runs the eBPF toolchain")?;
        let names: Vec<&str> = list
            .lines()
            .filter_map(|line| line.split_whitespace().next())
            .collect();
        let channel = |channel: &str| {
            names.iter().any(|name| {
                name.strip_prefix(channel)
                    .and_then(|rest| rest.strip_prefix('-'))
                    .and_then(|host| host.chars().next())
                    .is_some_and(|c| !c.is_ascii_digit())
            })
        };
        if channel("nightly") {
            ("nightly".to_owned(), "found".to_owned())
        } else if channel("stable") {
            (
                "stable".to_owned(),
                "no `nightly` toolchain; RUSTC_BOOTSTRAP=1 for the eBPF build".to_owned(),
            )
        } else {
            bail!("rustup has neither a `nightly` nor a `stable` toolchain:\n{list}");
        }
    };
    let bootstrap = !name.starts_with("nightly");

    let version = cmd::output(rustup().args(["run", &name, "rustc", "-vV"]))?;
    let field = |key: &str| {
        version
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .map(|v| v.trim().to_owned())
            .ok_or_else(|| anyhow!("`rustc +{name} -vV` printed no `{key}` line:\n{version}"))
    };
    let release = field("release:")?;
    let llvm_version = field("LLVM version:")?;
    let llvm_major = leading_number(&llvm_version)
        .ok_or_else(|| anyhow!("cannot read an LLVM major from `{llvm_version}`"))?;

    let sysroot = cmd::output(rustup().args(["run", &name, "rustc", "--print", "sysroot"]))?;
    let lib = Path::new(sysroot.trim()).join("lib");
    let libllvm = fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so."))
        })
        .ok_or_else(|| {
            anyhow!(
                "toolchain `{name}` has no libLLVM.so.* in {}: bpf-linker could not use its LLVM",
                lib.display()
            )
        })?;

    let detail = format!("{name} (rustc {release}, LLVM {llvm_version}; {why})");
    Ok(Done::ok(
        Toolchain {
            name,
            bootstrap,
            llvm_version,
            llvm_major,
            libllvm,
        },
        detail,
    ))
}

/// The number a string starts with: `22` for `22.1.4` or `22.1-rust-1.97.0-nightly`.
fn leading_number(s: &str) -> Option<u32> {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    s[..end].parse().ok()
}

fn rust_src(toolchain: &Toolchain) -> anyhow::Result<Done<()>> {
    let name = &toolchain.name;
    let installed =
        cmd::output(rustup().args(["component", "list", "--installed", "--toolchain", name]))?;
    if installed
        .lines()
        .any(|line| line.trim() == "rust-src" || line.starts_with("rust-src-"))
    {
        return Ok(Done::ok((), format!("present for {name}")));
    }
    cmd::run(rustup().args(["component", "add", "rust-src", "--toolchain", name]))?;
    Ok(Done::installed((), format!("added to {name}")))
}

fn cargo_home() -> anyhow::Result<PathBuf> {
    if let Some(home) = env::var_os("CARGO_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(home));
    }
    let home = env::var_os("HOME").ok_or_else(|| anyhow!("neither CARGO_HOME nor HOME is set"))?;
    Ok(Path::new(&home).join(".cargo"))
}

/// Finds a bpf-linker that runs and links the toolchain's LLVM major, or builds one.
fn bpf_linker(toolchain: &Toolchain) -> anyhow::Result<Done<PathBuf>> {
    let cargo_home = cargo_home()?;
    let bin_dir = cargo_home.join("bin");
    let own = bin_dir.join("bpf-linker");
    let found = if own.is_file() {
        Some(own.clone())
    } else {
        env::var_os("PATH").and_then(|path| {
            env::split_paths(&path)
                .map(|dir| dir.join("bpf-linker"))
                .find(|p| p.is_file())
        })
    };
    match found {
        Some(path) => match check_linker(&path, toolchain) {
            Ok(detail) => {
                let dir = path
                    .parent()
                    .map_or_else(|| bin_dir.clone(), Path::to_path_buf);
                return Ok(Done::ok(dir, detail));
            }
            Err(err) => println!(
                "setup: bpf-linker at {} is not usable ({err:#}); rebuilding it (about a minute)",
                path.display()
            ),
        },
        None => println!(
            "setup: no bpf-linker in {} or on PATH; building it (about a minute)",
            bin_dir.display()
        ),
    }
    let start = Instant::now();
    install_linker(toolchain, &cargo_home)?;
    let detail = check_linker(&own, toolchain).with_context(|| {
        format!(
            "the bpf-linker just built at {} does not work",
            own.display()
        )
    })?;
    Ok(Done::installed(
        bin_dir,
        format!("{detail}; built in {:.0}s", start.elapsed().as_secs_f64()),
    ))
}

/// Checks that the binary runs and that the libLLVM it loads has the toolchain's LLVM major:
/// bpf-linker reads the bitcode rustc wrote, which an older LLVM major cannot parse.
fn check_linker(path: &Path, toolchain: &Toolchain) -> anyhow::Result<String> {
    // `ldd` lists the NEEDED libraries with where the loader finds them (the runpath of our
    // build points at the prefix made by `install_linker`).
    let libs = cmd::output(Command::new("ldd").arg(path));
    let llvm = match &libs {
        Ok(libs) => libs
            .lines()
            .map(str::trim)
            .find(|line| line.starts_with("libLLVM")),
        Err(_) => None,
    };
    let linked = match llvm {
        Some(line) => {
            let (needed, resolved) = line.split_once("=>").unwrap_or((line, ""));
            let needed = needed.trim();
            let resolved = resolved.trim();
            if resolved.starts_with("not found") {
                bail!("its {needed} is not found: the directory it was linked from is gone");
            }
            let major = needed
                .strip_prefix("libLLVM.so.")
                .or_else(|| needed.strip_prefix("libLLVM-"))
                .and_then(leading_number)
                .ok_or_else(|| anyhow!("cannot read the LLVM major of {needed}"))?;
            if major != toolchain.llvm_major {
                bail!(
                    "it links {needed} (LLVM {major}) but toolchain `{}` is LLVM {}",
                    toolchain.name,
                    toolchain.llvm_version
                );
            }
            let resolved = resolved.split(" (").next().unwrap_or(resolved);
            format!("LLVM {major} via {resolved}")
        }
        // Built with a static LLVM (or ldd is missing): nothing to compare, running it is the
        // only check left.
        None => "LLVM linked statically, major not checked".to_owned(),
    };
    let version = cmd::output(Command::new(path).arg("--version"))?;
    Ok(format!("{} ({}, {linked})", path.display(), version.trim()))
}

/// `cargo install bpf-linker` against the toolchain's own libLLVM: a persistent prefix under
/// `$CARGO_HOME/guard-llvm/<libLLVM file>/lib` holds `libLLVM.so` and the library's own name,
/// both symlinks into the toolchain's sysroot. The binary's runpath points at that prefix, so
/// it must outlive the build (a prefix in /tmp breaks at the next reboot); naming it after the
/// library file means a toolchain update gets a new prefix rather than a dangling one.
fn install_linker(toolchain: &Toolchain, cargo_home: &Path) -> anyhow::Result<()> {
    let file = toolchain
        .libllvm
        .file_name()
        .ok_or_else(|| anyhow!("{} has no file name", toolchain.libllvm.display()))?;
    let prefix = cargo_home.join("guard-llvm").join(file);
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    for name in [Path::new("libLLVM.so"), Path::new(file)] {
        let link = lib.join(name);
        if link.symlink_metadata().is_ok() {
            fs::remove_file(&link).with_context(|| format!("removing {}", link.display()))?;
        }
        symlink(&toolchain.libllvm, &link).with_context(|| {
            format!(
                "linking {} to {}",
                link.display(),
                toolchain.libllvm.display()
            )
        })?;
    }
    let features = format!("llvm-{}", toolchain.llvm_major);
    let mut install = Command::new("cargo");
    install
        .args([
            "install",
            "bpf-linker",
            "--locked",
            "--version",
            BPF_LINKER_VERSION,
        ])
        .args([
            "--no-default-features",
            "--features",
            &features,
            "--force",
            "--root",
        ])
        .arg(cargo_home)
        .env("LLVM_PREFIX", &prefix)
        // Outside the workspace, so its .cargo/config.toml does not apply.
        .current_dir(cargo_home);
    cmd::run(&mut install).context("building bpf-linker")
}

fn mount_bpffs() -> anyhow::Result<Done<()>> {
    const MOUNTPOINT: &str = "/sys/fs/bpf";
    let mounts = fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    let mounted = mounts.lines().any(|line| {
        let mut fields = line.split_whitespace().skip(1);
        fields.next() == Some(MOUNTPOINT) && fields.next() == Some("bpf")
    });
    if mounted {
        return Ok(Done::ok((), format!("mounted at {MOUNTPOINT}")));
    }
    if !is_root() {
        bail!("bpffs is not mounted at {MOUNTPOINT}, and mounting it needs root");
    }
    fs::create_dir_all(MOUNTPOINT).with_context(|| format!("creating {MOUNTPOINT}"))?;
    let source: &CStr = c"bpf";
    let target: &CStr = c"/sys/fs/bpf";
    // SAFETY: all three strings are NUL-terminated and outlive the call; no data argument.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            source.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("mount -t bpf bpf {MOUNTPOINT}"));
    }
    Ok(Done::installed(
        (),
        format!("mounted bpffs at {MOUNTPOINT}"),
    ))
}

fn package_names() -> Vec<&'static str> {
    PACKAGES.iter().map(|(name, _)| *name).collect()
}

/// The packages of [`PACKAGES`] dpkg does not list as installed.
fn missing_packages() -> anyhow::Result<Vec<&'static str>> {
    let names = package_names();
    // dpkg-query exits 1 when a package is unknown to it, but still prints the others: read
    // stdout whatever the status.
    let out = Command::new("dpkg-query")
        .arg("-W")
        .arg("-f=${Package}\t${Status}\n")
        .args(&names)
        .output()
        .context("could not run dpkg-query (is this Debian?)")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let installed: HashSet<&str> = stdout
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .filter(|(_, status)| status.trim() == "install ok installed")
        .map(|(name, _)| name)
        .collect();
    Ok(names
        .into_iter()
        .filter(|name| !installed.contains(name))
        .collect())
}

fn packages() -> anyhow::Result<Done<()>> {
    let missing = missing_packages()?;
    if missing.is_empty() {
        return Ok(Done::ok(
            (),
            format!("{} Debian packages present", PACKAGES.len()),
        ));
    }
    if !is_root() {
        bail!("missing {}; installing them needs root", missing.join(" "));
    }
    println!("setup: installing {}", missing.join(" "));
    // Without a fresh index, `apt-get install` can 404 on these machines.
    cmd::run(Command::new("apt-get").arg("update"))?;
    cmd::run(
        Command::new("apt-get")
            .args(["install", "-y"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    let still = missing_packages()?;
    if !still.is_empty() {
        bail!(
            "apt-get install succeeded but {} still missing",
            still.join(" ")
        );
    }
    Ok(Done::installed((), missing.join(" ")))
}

#[cfg(test)]
mod tests {
    use super::leading_number;

    #[test]
    fn llvm_major_from_version_and_library_name() {
        assert_eq!(leading_number("22.1.4"), Some(22));
        assert_eq!(leading_number("22.1-rust-1.97.0-nightly"), Some(22));
        assert_eq!(leading_number("rust"), None);
    }
}
