//! The test kernels: Debian packages, pinned here and only here, fetched with
//! `apt-get download`, unpacked with `dpkg-deb -x` (nothing is installed), cached under
//! `target/vm/`.
//!
//! qemu boots the uncompressed `vmlinux` through its PVH entry (Debian sets `CONFIG_PVH`),
//! which skips the in-guest decompressor: under TCG that saves seconds per boot.

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};

use crate::cmd;

/// One pinned kernel.
pub struct Kernel {
    /// What `--kernel` takes.
    pub short: &'static str,
    pub package: &'static str,
    pub version: &'static str,
    /// `uname -r`: the directory under `/lib/modules`.
    pub release: &'static str,
}

/// The pinned kernels: Debian 12's own (6.1) and the one in its security updates (6.12).
/// Moving a pin is changing a line here; the cache is keyed by package and version.
pub const KERNELS: &[Kernel] = &[
    Kernel {
        short: "6.1",
        package: "linux-image-6.1.0-56-amd64",
        version: "6.1.192-2",
        release: "6.1.0-56-amd64",
    },
    Kernel {
        short: "6.12",
        package: "linux-image-6.12.117+deb12-amd64",
        version: "6.12.117-1~deb12u1",
        release: "6.12.117+deb12-amd64",
    },
];

/// Modules the guests need when the kernel has them as modules (dependencies are added, in
/// the order `insmod` needs: `ip_tunnel`, `gre`, `tunnel4`, `udp_tunnel`, `ip6_udp_tunnel`,
/// ...): veth and bridge for the namespace test, the clsact qdisc and `cls_bpf` for TC mode,
/// virtio-net (and virtio-pci, which finds the device) for the tap guest, and the tunnels of
/// the tunnel test (issue 11), which the build host's kernel lacks.
pub const MODULES: &[&str] = &[
    "veth",
    "bridge",
    "sch_ingress",
    "cls_bpf",
    "virtio_pci",
    "virtio_net",
    "ip_gre",
    "ipip",
    "sit",
    "geneve",
    "fou",
    "vxlan",
];

/// A kernel ready to boot.
pub struct Prepared {
    pub kernel: &'static Kernel,
    pub vmlinux: PathBuf,
    /// The unpacked package (for its modules).
    pub tree: PathBuf,
}

pub fn select(which: &str) -> Result<Vec<&'static Kernel>> {
    if which == "all" {
        return Ok(KERNELS.iter().collect());
    }
    KERNELS
        .iter()
        .find(|k| k.short == which)
        .map(|k| vec![k])
        .ok_or_else(|| {
            let known: Vec<_> = KERNELS.iter().map(|k| k.short).collect();
            anyhow!("unknown kernel {which:?}: use {} or all", known.join(", "))
        })
}

/// Downloads (once) and unpacks (once) `k` under `cache`, and extracts its vmlinux.
pub fn prepare(k: &'static Kernel, cache: &Path) -> Result<Prepared> {
    let dir = cache.join(format!("{}_{}", k.package, k.version));
    let tree = dir.join("tree");
    let vmlinux = dir.join("vmlinux");
    if vmlinux.exists() && tree.join("lib/modules").join(k.release).exists() {
        return Ok(Prepared {
            kernel: k,
            vmlinux,
            tree,
        });
    }
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let deb = download(k, &dir)?;
    if tree.exists() {
        fs::remove_dir_all(&tree).with_context(|| format!("removing {}", tree.display()))?;
    }
    cmd::output(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))
        .with_context(|| format!("unpacking {}", deb.display()))?;
    let bzimage = tree.join(format!("boot/vmlinuz-{}", k.release));
    let image = extract_vmlinux(&bzimage)?;
    let tmp = dir.join("vmlinux.tmp");
    fs::write(&tmp, image).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, &vmlinux).with_context(|| format!("renaming to {}", vmlinux.display()))?;
    Ok(Prepared {
        kernel: k,
        vmlinux,
        tree,
    })
}

fn download(k: &Kernel, dir: &Path) -> Result<PathBuf> {
    let name = format!("{}_{}_amd64.deb", k.package, k.version.replace(':', "%3a"));
    let deb = dir.join(&name);
    if deb.exists() {
        return Ok(deb);
    }
    let spec = format!("{}={}", k.package, k.version);
    // apt drops privileges to `_apt` for downloads; the cache directory belongs to root, so
    // it would warn and fall back. Same result either way.
    let get = || {
        cmd::output(
            Command::new("apt-get")
                .args(["download", "-q", &spec])
                .current_dir(dir),
        )
    };
    if get().is_err() {
        // A fresh machine (or a stale list): refresh once.
        cmd::run(Command::new("apt-get").args(["update", "-q"]))?;
        get().with_context(|| {
            format!(
                "downloading {spec} (is the pin in xtask/src/vm/kernel.rs still in the archive?)"
            )
        })?;
    }
    ensure!(deb.exists(), "apt-get download left no {}", deb.display());
    Ok(deb)
}

/// The uncompressed kernel inside a bzImage: the boot protocol's setup header says where the
/// compressed payload is (`payload_offset`, `payload_length`, boot protocol 2.08+), and its
/// magic says how it is compressed. This is what the kernel's scripts/extract-vmlinux does by
/// scanning for magics, without the guessing.
pub fn extract_vmlinux(vmlinuz: &Path) -> Result<Vec<u8>> {
    let img = fs::read(vmlinuz).with_context(|| format!("reading {}", vmlinuz.display()))?;
    let u32_at = |o: usize| -> Result<usize> {
        let b = img
            .get(o..o + 4)
            .ok_or_else(|| anyhow!("{} is too short for a bzImage", vmlinuz.display()))?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    ensure!(
        img.get(0x202..0x206) == Some(b"HdrS"),
        "{} is not a bzImage (no HdrS)",
        vmlinuz.display()
    );
    let setup_sects = match img.get(0x1f1).copied().unwrap_or(0) {
        0 => 4,
        n => usize::from(n),
    };
    let start = (setup_sects + 1) * 512 + u32_at(0x248)?;
    let len = u32_at(0x24c)?;
    let payload = img
        .get(start..start + len)
        .ok_or_else(|| anyhow!("{}: payload outside the file", vmlinuz.display()))?;
    // The kernel's build appends the uncompressed size (4 bytes) after the stream; the
    // decompressors are told to stop at the end of the first stream or frame.
    let (tool, args): (&str, &[&str]) = if payload.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        ("xz", &["-dc", "--single-stream"])
    } else if payload.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        ("zstd", &["-dcq"])
    } else if payload.starts_with(&[0x1f, 0x8b]) {
        ("gzip", &["-dc"])
    } else {
        bail!(
            "{}: unknown payload compression (magic {:02x?})",
            vmlinuz.display(),
            &payload[..payload.len().min(6)]
        );
    };
    let input = if tool == "zstd" {
        &payload[..payload.len().saturating_sub(4)]
    } else {
        payload
    };
    let out = pipe(tool, args, input)
        .with_context(|| format!("decompressing the kernel in {}", vmlinuz.display()))?;
    ensure!(
        out.starts_with(b"\x7fELF"),
        "{}: the decompressed payload is not an ELF vmlinux",
        vmlinuz.display()
    );
    Ok(out)
}

/// Runs `tool args` with `input` on stdin, returns stdout.
pub fn pipe(tool: &str, args: &[&str], input: &[u8]) -> Result<Vec<u8>> {
    let mut child = Command::new(tool)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start {tool}"))?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| anyhow!("{tool}: no stdin"))?;
    let data = input.to_vec();
    // Written from a thread: the tool's output pipe would fill while we still write.
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for {tool}"))?;
    let _ = writer.join();
    if !out.status.success() {
        bail!(
            "{tool} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

/// A module file of the kernel, decompressed, with the names of its dependencies.
pub struct Module {
    pub name: String,
    pub data: Vec<u8>,
}

/// [`MODULES`] and their dependencies, dependencies first (the order `insmod` needs). Modules
/// built into the kernel are left out. The packages carry no `modules.dep` (depmod runs at
/// install), so dependencies are read from each module's `.modinfo` (`depends=`).
pub fn modules(p: &Prepared) -> Result<Vec<Module>> {
    let root = p.tree.join("lib/modules").join(p.kernel.release);
    let builtin = fs::read_to_string(root.join("modules.builtin"))
        .with_context(|| format!("reading {}/modules.builtin", root.display()))?;
    let index = index_modules(&root.join("kernel"))?;
    let mut out: Vec<Module> = Vec::new();
    let mut visiting = Vec::new();
    for name in MODULES {
        add_module(name, &index, &builtin, &mut out, &mut visiting)?;
    }
    Ok(out)
}

fn norm(name: &str) -> String {
    name.replace('-', "_")
}

/// Module name -> file, for every module of the package.
fn index_modules(dir: &Path) -> Result<std::collections::BTreeMap<String, PathBuf>> {
    let mut map = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let path = e?.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Some(file) = path.file_name().and_then(|f| f.to_str()) {
                let stem = file
                    .strip_suffix(".ko.xz")
                    .or_else(|| file.strip_suffix(".ko.zst"))
                    .or_else(|| file.strip_suffix(".ko"));
                if let Some(stem) = stem {
                    map.insert(norm(stem), path.clone());
                }
            }
        }
    }
    Ok(map)
}

fn add_module(
    name: &str,
    index: &std::collections::BTreeMap<String, PathBuf>,
    builtin: &str,
    out: &mut Vec<Module>,
    visiting: &mut Vec<String>,
) -> Result<()> {
    let name = norm(name);
    if out.iter().any(|m| m.name == name) || visiting.contains(&name) {
        return Ok(());
    }
    let Some(path) = index.get(&name) else {
        let is_builtin = builtin.lines().any(|l| {
            Path::new(l)
                .file_name()
                .and_then(|f| f.to_str())
                .is_some_and(|f| norm(f.trim_end_matches(".ko")) == name)
        });
        ensure!(
            is_builtin,
            "module {name} is neither in the package nor built in"
        );
        return Ok(());
    };
    let raw = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let data = match path.extension().and_then(|e| e.to_str()) {
        Some("xz") => pipe("xz", &["-dc"], &raw),
        Some("zst") => pipe("zstd", &["-dcq"], &raw),
        _ => Ok(raw),
    }
    .with_context(|| format!("decompressing {}", path.display()))?;
    visiting.push(name.clone());
    for dep in depends(&data) {
        add_module(&dep, index, builtin, out, visiting)?;
    }
    visiting.retain(|v| *v != name);
    out.push(Module { name, data });
    Ok(())
}

/// The `depends=` entry of a module's `.modinfo` (NUL-separated `key=value` strings).
fn depends(ko: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"\0depends=";
    let Some(at) = ko.windows(KEY.len()).position(|w| w == KEY) else {
        return Vec::new();
    };
    let rest = &ko[at + KEY.len()..];
    let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end])
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{depends, select};

    #[test]
    fn depends_reads_modinfo() {
        let ko = b"\x7fELF...\0license=GPL\0depends=stp,llc\0intree=Y\0";
        assert_eq!(depends(ko), ["stp", "llc"]);
        assert!(depends(b"\0depends=\0").is_empty());
        assert!(depends(b"no modinfo").is_empty());
    }

    #[test]
    fn kernels_are_selected_by_short_name() {
        assert_eq!(select("all").expect("all").len(), 2);
        assert_eq!(select("6.1").expect("6.1")[0].short, "6.1");
        assert!(select("5.10").is_err());
    }
}
