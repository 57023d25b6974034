//! The guests' initramfs: an uncompressed cpio (newc) archive, written here rather than by
//! `cpio`, so that `/dev/console` can be a device node without root's mknod and nothing on
//! the host needs a staging directory.
//!
//! Contents: busybox (static, Debian's busybox-static) as the shell and tools, iproute2's
//! `ip` with its shared libraries (veth peers in namespaces and `ip netns` are beyond
//! busybox's `ip`), the kernel's modules, guard's static (musl) `guardctl` and
//! `guard-vmcheck`, and `/init`.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, anyhow};

use super::{host, kernel};

/// A newc archive being built in memory.
#[derive(Default)]
struct Cpio {
    out: Vec<u8>,
    ino: u32,
    dirs: BTreeSet<String>,
}

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)) {
        self.ino += 1;
        let name_len = name.len() + 1;
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            rdev.0,
            rdev.1,
            name_len,
            0
        );
        self.out.extend_from_slice(header.as_bytes());
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    /// `path` (no leading slash) and every directory above it.
    fn dir(&mut self, path: &str) {
        let mut cur = String::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            if !cur.is_empty() {
                cur.push('/');
            }
            cur.push_str(part);
            if self.dirs.insert(cur.clone()) {
                self.entry(&cur.clone(), S_IFDIR | 0o755, &[], (0, 0));
            }
        }
    }

    fn parent(&mut self, path: &str) {
        if let Some((d, _)) = path.rsplit_once('/') {
            self.dir(d);
        }
    }

    fn file(&mut self, path: &str, mode: u32, data: &[u8]) {
        self.parent(path);
        self.entry(path, S_IFREG | mode, data, (0, 0));
    }

    fn symlink(&mut self, path: &str, target: &str) {
        self.parent(path);
        self.entry(path, S_IFLNK | 0o777, target.as_bytes(), (0, 0));
    }

    fn chardev(&mut self, path: &str, major: u32, minor: u32) {
        self.parent(path);
        self.entry(path, S_IFCHR | 0o600, &[], (major, minor));
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[], (0, 0));
        // The kernel reads the archive in 512-byte blocks happily, but cpio tools expect it.
        while !self.out.len().is_multiple_of(512) {
            self.out.push(0);
        }
        self.out
    }
}

/// The guest's `/init`: mount, load modules, run the mode the kernel command line names
/// (`vmcheck.mode=matrix|tap`), power off. Markers (`VMCHECK-...`) let xtask follow it on the
/// serial console.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /run /tmp /bin /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
export PATH=/usr/local/bin:/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mount -t tmpfs run /run
mount -t bpf bpf /sys/fs/bpf
echo "VMCHECK-INIT $(cut -d' ' -f1 /proc/uptime)"
for m in $(cat /modules.list); do
  insmod /lib/modules/$m.ko || echo "VMCHECK-MODFAIL $m"
done
ip link set lo up
arg() { tr ' ' '\n' < /proc/cmdline | sed -n "s/^vmcheck\.$1=//p"; }
case "$(arg mode)" in
  matrix) guard-vmcheck matrix ;;
  tap) guard-vmcheck send --iface eth0 --bridge-mac "$(arg bridge)" --peer-mac "$(arg peer)" ;;
  *) echo "VMCHECK-ERROR unknown mode" ;;
esac
echo "VMCHECK-DONE $?"
poweroff -f
"#;

/// Builds the initramfs for `k` at `dest`. `bins` are the static binaries to put in
/// `/usr/local/bin`.
pub fn build(k: &kernel::Prepared, bins: &[PathBuf], dest: &Path) -> Result<()> {
    let mut c = Cpio::default();
    for d in [
        "dev", "proc", "sys", "run", "tmp", "bin", "sbin", "usr/bin", "usr/sbin",
    ] {
        c.dir(d);
    }
    // Without it the kernel starts init with no stdin/stdout (nothing on the serial console).
    c.chardev("dev/console", 5, 1);
    c.file("init", 0o755, INIT.as_bytes());
    let busybox = fs::read("/bin/busybox").context("reading /bin/busybox (busybox-static)")?;
    c.file("bin/busybox", 0o755, &busybox);
    c.symlink("bin/sh", "busybox");

    add_with_libs(&mut c, "ip", "usr/local/bin/ip")?;
    for b in bins {
        let name = b
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| anyhow!("bad binary path {}", b.display()))?;
        let data = fs::read(b).with_context(|| format!("reading {}", b.display()))?;
        c.file(&format!("usr/local/bin/{name}"), 0o755, &data);
    }

    let mut list = String::new();
    for m in kernel::modules(k)? {
        c.file(&format!("lib/modules/{}.ko", m.name), 0o644, &m.data);
        list.push_str(&m.name);
        list.push('\n');
    }
    c.file("modules.list", 0o644, list.as_bytes());

    if let Some(d) = dest.parent() {
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    fs::write(dest, c.finish()).with_context(|| format!("writing {}", dest.display()))
}

/// A dynamically linked host program with every library `ldd` names, at their own paths.
fn add_with_libs(c: &mut Cpio, prog: &str, dest: &str) -> Result<()> {
    let path = host::run(Command::new("sh").args(["-c", &format!("command -v {prog}")]))
        .with_context(|| format!("finding {prog} on the host"))?;
    let path = fs::canonicalize(path.trim()).with_context(|| format!("resolving {prog}"))?;
    let data = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    c.file(dest, 0o755, &data);
    let ldd = host::run(Command::new("ldd").arg(&path))?;
    for line in ldd.lines() {
        // "libx.so.1 => /lib/.../libx.so.1 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let lib = line
            .split("=>")
            .last()
            .and_then(|s| s.split_whitespace().next())
            .filter(|s| s.starts_with('/'));
        let Some(lib) = lib else { continue };
        let real = fs::canonicalize(lib).with_context(|| format!("resolving {lib}"))?;
        let bytes = fs::read(&real).with_context(|| format!("reading {}", real.display()))?;
        c.file(lib.trim_start_matches('/'), 0o755, &bytes);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Cpio;

    #[test]
    fn newc_entries_are_aligned_and_terminated() {
        let mut c = Cpio::default();
        c.file("a/b", 0o644, b"hello");
        c.chardev("dev/console", 5, 1);
        let out = c.finish();
        assert!(out.starts_with(b"070701"));
        assert_eq!(out.len() % 512, 0);
        let text = String::from_utf8_lossy(&out);
        // Directories come before what is in them.
        let dir = text.find("a\0").expect("directory entry");
        let file = text.find("a/b\0").expect("file entry");
        assert!(dir < file);
        assert!(text.contains("TRAILER!!!"));
        // The console node: S_IFCHR | 0600, rdev 5:1.
        let at = text.find("dev/console").expect("console entry") - 110;
        let header = &text[at..at + 110];
        assert_eq!(&header[14..22], "00002180");
        assert_eq!(&header[78..86], "00000005");
        assert_eq!(&header[86..94], "00000001");
    }
}
