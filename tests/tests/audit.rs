//! `guardctl audit` against real network namespaces (root needed).
//!
//! Each test builds a small host: namespace `host` with the guest bridge `br-guest` (port
//! `vg0`, the guest's `eth0` in namespace `guest`) and a storage link `st0` (10.77.0.1/24,
//! the storage peer 10.77.0.2 in namespace `storage`). It runs the real `guardctl` binary
//! with `--netns`, checks the finding ids and exit status, and where a fix claims to stop an
//! attack it sends the attack's frames from the guest with an `AF_PACKET` socket before and
//! after (the negative control first: an attack that never worked proves nothing).
//!
//! Locating guardctl: `CARGO_BIN_EXE_*` only exists for a package's own binaries, so the
//! tests run `cargo build -p guard-userspace --bin guardctl` once (the cargo that built
//! this test, same target directory and profile as this test executable) and take the
//! path from cargo's JSON messages. It is never a stale binary, and costs an incremental
//! no-op build when it is current.
//!
//! The helpers here are deliberately small: the full attack lab (tests/src/lab/) will
//! replace them.

use std::{
    collections::BTreeSet,
    fs,
    io::ErrorKind,
    net::{Ipv4Addr, UdpSocket},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::PathBuf,
    process::{Command, Output, Stdio},
    sync::{
        OnceLock,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use guard::pins::Location;

const BRIDGE: &str = "br-guest";
const BRIDGE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const GUEST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x10];
const GUEST_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const HOST_STORAGE_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const STORAGE_PEER_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
/// How long an answer may take to come back on veths (it takes microseconds).
const DEADLINE: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------------------
// Namespaces
// ---------------------------------------------------------------------------------------

static SEQ: AtomicU32 = AtomicU32::new(0);

fn require_root() {
    // SAFETY: no arguments, cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the audit tests need root (namespaces, sysctls, bpffs): not skipping, failing"
    );
}

fn run(cmd: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("running {cmd}"))?;
    ensure!(
        out.status.success(),
        "{cmd} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// A named network namespace, deleted on drop (also when the test panics).
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Result<Self> {
        let name = format!(
            "guardaudit-{}-{}-{tag}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        run("ip", &["netns", "add", &name])?;
        Ok(Self(name))
    }

    fn ip(&self, args: &[&str]) -> Result<()> {
        let mut all = vec!["-n", &self.0];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Runs `f` on a thread that has entered this namespace. Sockets made there stay in it.
    fn enter<T: Send>(&self, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        let path = format!("/run/netns/{}", self.0);
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = fs::File::open(&path).with_context(|| path.clone())?;
                // SAFETY: a valid fd for the duration of the call.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                ensure!(rc == 0, "setns {path}: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .map_err(|_| anyhow::anyhow!("thread in {path} panicked"))?
        })
    }

    /// /proc/sys is the opener's namespace.
    fn sysctl(&self, path: &str) -> Result<i64> {
        self.enter(|| {
            let s = fs::read_to_string(format!("/proc/sys/{path}")).context(path.to_owned())?;
            s.trim().parse().context("not an integer")
        })
    }

    fn set_sysctl(&self, path: &str, value: i64) -> Result<()> {
        self.enter(|| {
            fs::write(format!("/proc/sys/{path}"), value.to_string()).context(path.to_owned())
        })
    }

    /// One counter from /proc/net/{snmp,netstat} (`section` is `Ip` or `TcpExt`).
    fn counter(&self, file: &str, section: &str, name: &str) -> Result<u64> {
        self.enter(|| {
            let text = fs::read_to_string(format!("/proc/thread-self/net/{file}"))?;
            let prefix = format!("{section}:");
            let mut rows = text.lines().filter(|l| l.starts_with(&prefix));
            let (Some(names), Some(values)) = (rows.next(), rows.next()) else {
                bail!("no {section} in {file}");
            };
            let i = names
                .split_whitespace()
                .position(|n| n == name)
                .with_context(|| format!("no {name} in {file}"))?;
            values
                .split_whitespace()
                .nth(i)
                .context("short row")?
                .parse()
                .context("not a number")
        })
    }

    /// Packets the interface received (for the bridge: frames passed up to the host).
    fn rx_packets(&self, ifname: &str) -> Result<u64> {
        self.enter(|| {
            let text = fs::read_to_string("/proc/thread-self/net/dev")?;
            let line = text
                .lines()
                .find_map(|l| l.trim().strip_prefix(&format!("{ifname}:")))
                .with_context(|| format!("{ifname} not in /proc/net/dev"))?;
            line.split_whitespace()
                .nth(1)
                .context("short line")?
                .parse()
                .context("not a number")
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = run("ip", &["netns", "del", &self.0]) {
            eprintln!("cleanup: {e:#}");
        }
    }
}

/// The test host. Fields drop in order: guard's pins first, then the namespaces.
struct Lab {
    pins: Option<Location>,
    host: Netns,
    guest: Netns,
    storage: Netns,
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(loc) = &self.pins
            && let Err(e) = loc.remove_all()
        {
            eprintln!("cleanup of guard pins: {e:#}");
        }
    }
}

/// Every sysctl a hardened host sets on the bridge and globally.
const HARDENING: &[(&str, i64)] = &[
    ("net/ipv4/ip_forward", 0),
    ("net/ipv6/conf/all/forwarding", 0),
    ("net/ipv4/conf/br-guest/forwarding", 0),
    ("net/ipv4/conf/br-guest/rp_filter", 1),
    ("net/ipv4/conf/br-guest/arp_ignore", 1),
    ("net/ipv4/conf/br-guest/arp_filter", 1),
    ("net/ipv4/conf/br-guest/arp_announce", 2),
    ("net/ipv4/conf/br-guest/drop_unicast_in_l2_multicast", 1),
    ("net/ipv6/conf/br-guest/accept_ra", 0),
    ("net/ipv6/conf/br-guest/drop_unicast_in_l2_multicast", 1),
    ("net/ipv6/conf/br-guest/disable_ipv6", 1),
    ("net/bridge/bridge-nf-call-iptables", 0),
    ("net/bridge/bridge-nf-call-ip6tables", 0),
];

impl Lab {
    /// Like a fresh libvirt host: kernel defaults, then libvirt's forwarding switches
    /// (before the bridge exists, so it inherits them through `default`).
    fn fresh(bridge_addr: bool) -> Result<Self> {
        require_root();
        let lab = Self {
            pins: None,
            host: Netns::new("host")?,
            guest: Netns::new("guest")?,
            storage: Netns::new("storage")?,
        };
        let (h, g, s) = (&lab.host, &lab.guest, &lab.storage);
        h.set_sysctl("net/ipv4/ip_forward", 1)?;
        h.set_sysctl("net/ipv6/conf/all/forwarding", 1)?;
        h.ip(&["link", "add", BRIDGE, "type", "bridge"])?;
        h.ip(&["link", "set", BRIDGE, "address", &mac_str(BRIDGE_MAC)])?;
        h.ip(&[
            "link", "add", "vg0", "type", "veth", "peer", "name", "eth0", "netns", &g.0,
        ])?;
        h.ip(&["link", "set", "vg0", "master", BRIDGE, "up"])?;
        // A quiet guest: no IPv6 chatter (RS, MLD) to confuse the frame counts.
        g.set_sysctl("net/ipv6/conf/eth0/disable_ipv6", 1)?;
        g.ip(&["link", "set", "eth0", "address", &mac_str(GUEST_MAC), "up"])?;
        h.ip(&[
            "link", "add", "st0", "type", "veth", "peer", "name", "eth0", "netns", &s.0,
        ])?;
        h.ip(&["addr", "add", "10.77.0.1/24", "dev", "st0"])?;
        h.ip(&["link", "set", "st0", "up"])?;
        s.ip(&["addr", "add", "10.77.0.2/24", "dev", "eth0"])?;
        s.ip(&["link", "set", "eth0", "up"])?;
        h.ip(&["link", "set", BRIDGE, "up"])?;
        if bridge_addr {
            h.ip(&["addr", "add", "192.0.2.1/24", "dev", BRIDGE])?;
        }
        Ok(lab)
    }

    /// Hardened sysctls and guard attached to every port.
    fn hardened() -> Result<Self> {
        let mut lab = Self::fresh(false)?;
        for (path, value) in HARDENING {
            lab.host.set_sysctl(path, *value)?;
        }
        lab.pins = Some(Location::new(Some(&lab.host.0), BRIDGE));
        let out = guardctl(&lab.host, &["attach", BRIDGE])?;
        ensure!(out.status.success(), "attach: {}", text(&out.stderr));
        Ok(lab)
    }
}

fn mac_str(m: [u8; 6]) -> String {
    m.map(|b| format!("{b:02x}")).join(":")
}

// ---------------------------------------------------------------------------------------
// guardctl
// ---------------------------------------------------------------------------------------

fn guardctl_path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| build_guardctl().expect("building guardctl"))
}

/// `cargo build` of guardctl into this test's target directory and profile.
fn build_guardctl() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/audit-<hash>
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .context("test executable outside target/<profile>/deps")?;
    let target_dir = profile_dir.parent().context("no target directory")?;
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["build", "-p", "guard-userspace", "--bin", "guardctl"])
        .args([
            "--message-format",
            "json-render-diagnostics",
            "--target-dir",
        ])
        .arg(target_dir)
        .stderr(Stdio::inherit());
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let out = cmd.output().context("running cargo build")?;
    ensure!(out.status.success(), "cargo build of guardctl failed");
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] == "compiler-artifact"
            && msg["target"]["name"] == "guardctl"
            && let Some(path) = msg["executable"].as_str()
        {
            return Ok(PathBuf::from(path));
        }
    }
    bail!("cargo reported no guardctl executable")
}

fn guardctl(ns: &Netns, args: &[&str]) -> Result<Output> {
    Command::new(guardctl_path())
        .args(["--netns", &ns.0])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running guardctl")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

struct Audit {
    status: i32,
    findings: Vec<(String, String)>,
    json: serde_json::Value,
}

impl Audit {
    fn ids(&self) -> BTreeSet<&str> {
        self.findings.iter().map(|(id, _)| id.as_str()).collect()
    }
    fn severity(&self, id: &str) -> Option<&str> {
        self.findings
            .iter()
            .find(|(i, _)| i == id)
            .map(|(_, s)| s.as_str())
    }
}

fn audit(ns: &Netns, extra: &[&str]) -> Result<Audit> {
    let mut args = vec!["audit", "--json"];
    args.extend_from_slice(extra);
    let out = guardctl(ns, &args)?;
    let status = out.status.code().context("guardctl killed by a signal")?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "guardctl {args:?} exit {status}: no JSON: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        )
    })?;
    let findings = json["findings"]
        .as_array()
        .context("no findings array")?
        .iter()
        .map(|f| {
            (
                f["id"].as_str().unwrap_or_default().to_owned(),
                f["severity"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        json["exit_status"].as_i64(),
        Some(i64::from(status)),
        "JSON exit_status matches the process's"
    );
    Ok(Audit {
        status,
        findings,
        json,
    })
}

fn set(ids: &[&'static str]) -> BTreeSet<&'static str> {
    ids.iter().copied().collect()
}

// ---------------------------------------------------------------------------------------
// Frames from the guest
// ---------------------------------------------------------------------------------------

/// An `AF_PACKET` socket on one interface of a namespace.
struct Packet(OwnedFd);

impl Packet {
    fn open(ns: &Netns, ifname: &str) -> Result<Self> {
        let ifname = std::ffi::CString::new(ifname)?;
        ns.enter(move || {
            let proto = u16::try_from(libc::ETH_P_ALL)?.to_be();
            // SAFETY: plain syscalls; the fd is owned right away.
            let fd = unsafe {
                libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                    i32::from(proto),
                )
            };
            ensure!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
            // SAFETY: fd is a fresh, valid descriptor.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: a valid NUL-terminated name.
            let index = unsafe { libc::if_nametoindex(ifname.as_ptr()) };
            ensure!(index != 0, "no interface {ifname:?}");
            // SAFETY: all-zero is a valid sockaddr_ll.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            sll.sll_family = u16::try_from(libc::AF_PACKET)?;
            sll.sll_protocol = proto;
            sll.sll_ifindex = i32::try_from(index)?;
            // SAFETY: sll is a sockaddr_ll of the given size.
            let rc = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&raw const sll).cast(),
                    u32::try_from(size_of::<libc::sockaddr_ll>())?,
                )
            };
            ensure!(rc == 0, "bind: {}", std::io::Error::last_os_error());
            Ok(Self(fd))
        })
    }

    fn send(&self, frame: &[u8]) -> Result<()> {
        // SAFETY: frame is a valid buffer of its length.
        let n = unsafe { libc::send(self.0.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        ensure!(
            usize::try_from(n).ok() == Some(frame.len()),
            "send: {}",
            std::io::Error::last_os_error()
        );
        Ok(())
    }

    /// Frames that satisfy `want`, received until `deadline` or until `enough` of them.
    fn count_until(
        &self,
        deadline: Instant,
        enough: usize,
        want: impl Fn(&[u8]) -> bool,
    ) -> Result<usize> {
        let mut n = 0;
        let mut buf = [0u8; 2048];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || n >= enough {
                return Ok(n);
            }
            let mut pfd = libc::pollfd {
                fd: self.0.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = i32::try_from(left.as_millis().max(1)).unwrap_or(i32::MAX);
            // SAFETY: one valid pollfd.
            if unsafe { libc::poll(&raw mut pfd, 1, ms) } <= 0 {
                continue;
            }
            // SAFETY: buf is valid for its length.
            let got =
                unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if let Ok(len) = usize::try_from(got)
                && want(&buf[..len])
            {
                n += 1;
            }
        }
    }
}

fn ether(dst: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A broadcast ARP request from the guest for `target` (sender 0.0.0.0 makes it a probe).
fn arp_request(sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut a = vec![0, 1, 0x08, 0, 6, 4, 0, 1];
    a.extend_from_slice(&GUEST_MAC);
    a.extend_from_slice(&sender.octets());
    a.extend_from_slice(&[0; 6]);
    a.extend_from_slice(&target.octets());
    ether([0xff; 6], 0x0806, &a)
}

fn is_arp_reply_for(frame: &[u8], addr: Ipv4Addr) -> bool {
    frame.len() >= 42
        && frame[12..14] == [0x08, 0x06]
        && frame[20..22] == [0, 2]
        && frame[28..32] == addr.octets()
}

/// A UDP datagram from the guest to `dst`, sent to the host's bridge MAC.
fn udp_to_host_mac(dst: Ipv4Addr, port: u16, payload: &[u8]) -> Vec<u8> {
    let total = u16::try_from(20 + 8 + payload.len()).expect("small");
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&GUEST_IP.octets());
    ip.extend_from_slice(&dst.octets());
    let mut sum: u32 = ip
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let csum = !u16::try_from(sum).expect("folded");
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    // UDP checksum 0: none (allowed for IPv4).
    ip.extend_from_slice(&40000u16.to_be_bytes());
    ip.extend_from_slice(&port.to_be_bytes());
    ip.extend_from_slice(&(total - 20).to_be_bytes());
    ip.extend_from_slice(&[0, 0]);
    ip.extend_from_slice(payload);
    ether(BRIDGE_MAC, 0x0800, &ip)
}

fn udp_listener(ns: &Netns, addr: Ipv4Addr) -> Result<UdpSocket> {
    ns.enter(move || {
        let s = UdpSocket::bind((addr, 0))?;
        s.set_nonblocking(true)?;
        Ok(s)
    })
}

/// Datagrams waiting on a non-blocking socket.
fn drain(s: &UdpSocket) -> Result<usize> {
    let mut buf = [0u8; 256];
    let mut n = 0;
    loop {
        match s.recv(&mut buf) {
            Ok(_) => n += 1,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(n),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Polls `f` until it returns true or the deadline passes.
fn wait_for(what: &str, mut f: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + DEADLINE;
    while Instant::now() < deadline {
        if f()? {
            return Ok(());
        }
        std::thread::yield_now();
    }
    bail!("timed out waiting for {what}")
}

/// What the three attacks achieved.
#[derive(Debug, PartialEq, Eq)]
struct Attacks {
    /// ARP replies for the storage address to a request (sender 192.0.2.10) and a probe
    /// (sender 0.0.0.0).
    arp_replies: usize,
    /// Datagrams the host routed to the storage peer.
    forwarded: usize,
    /// Datagrams the host delivered to its own socket on the storage address.
    delivered: usize,
}

/// Runs the attacks. `expect_success` picks how to know they are over: the answer itself,
/// or the kernel's drop counter for that path (so "nothing arrived" is not a guess).
fn attack(lab: &Lab, expect_success: bool) -> Result<Attacks> {
    let guest = Packet::open(&lab.guest, "eth0")?;

    // 1. ARP for the storage address, from the guest bridge.
    let rx_before = lab.host.rx_packets(BRIDGE)?;
    guest.send(&arp_request(GUEST_IP, HOST_STORAGE_IP))?;
    guest.send(&arp_request(Ipv4Addr::UNSPECIFIED, HOST_STORAGE_IP))?;
    let is_reply = |f: &[u8]| is_arp_reply_for(f, HOST_STORAGE_IP);
    let arp_replies = if expect_success {
        guest.count_until(Instant::now() + DEADLINE, 2, is_reply)?
    } else {
        // Both requests reached the host stack, which answers (if at all) in the same
        // softirq; the short deadline only covers the reply's way back over the veth.
        wait_for("the ARP requests to reach the host", || {
            Ok(lab.host.rx_packets(BRIDGE)? >= rx_before + 2)
        })?;
        guest.count_until(Instant::now() + Duration::from_millis(300), 2, is_reply)?
    };

    // 2. Routed to the storage peer.
    let peer = udp_listener(&lab.storage, Ipv4Addr::UNSPECIFIED)?;
    let peer_port = peer.local_addr()?.port();
    let addr_errors = lab.host.counter("snmp", "Ip", "InAddrErrors")?;
    guest.send(&udp_to_host_mac(STORAGE_PEER_IP, peer_port, b"forwarded"))?;
    let mut forwarded = 0;
    if expect_success {
        wait_for("the forwarded datagram", || {
            forwarded += drain(&peer)?;
            Ok(forwarded > 0)
        })?;
    } else {
        // ip_error() counts InAddrErrors for a packet the host would not forward.
        wait_for("the host to refuse forwarding", || {
            Ok(lab.host.counter("snmp", "Ip", "InAddrErrors")? > addr_errors)
        })?;
        forwarded = drain(&peer)?;
    }

    // 3. Delivered to the host's own socket on its storage address (weak host model).
    let local = udp_listener(&lab.host, HOST_STORAGE_IP)?;
    let local_port = local.local_addr()?.port();
    let rpf_drops = lab
        .host
        .counter("netstat", "TcpExt", "IPReversePathFilter")?;
    guest.send(&udp_to_host_mac(HOST_STORAGE_IP, local_port, b"local"))?;
    let mut delivered = 0;
    if expect_success {
        wait_for("the locally delivered datagram", || {
            delivered += drain(&local)?;
            Ok(delivered > 0)
        })?;
    } else {
        // ip_rcv_finish_core() counts IPReversePathFilter for -EXDEV from the rp_filter.
        wait_for("the reverse-path filter to drop it", || {
            Ok(lab
                .host
                .counter("netstat", "TcpExt", "IPReversePathFilter")?
                > rpf_drops)
        })?;
        delivered = drain(&local)?;
    }
    Ok(Attacks {
        arp_replies,
        forwarded,
        delivered,
    })
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[test]
fn fresh_libvirt_host_is_exposed_and_fix_closes_the_attacks() -> Result<()> {
    let lab = Lab::fresh(false)?;

    let before = audit(&lab.host, &[])?;
    assert_eq!(before.status, 2, "{:#}", before.json);
    assert_eq!(
        before.ids(),
        set(&[
            "ipv4-forwarding",
            "rp-filter",
            "ipv6-forwarding",
            "bridge-ipv6",
            "arp-ignore",
            "arp-filter",
            "arp-announce",
            "ipv4-drop-unicast-in-l2-multicast",
            "ipv6-drop-unicast-in-l2-multicast",
            "guard-not-attached",
            "bridge-nf-call",
        ])
    );
    assert_eq!(before.severity("ipv4-forwarding"), Some("high"));
    assert_eq!(before.severity("rp-filter"), Some("high"));
    assert_eq!(before.severity("arp-ignore"), Some("high"));

    // Negative control: every attack works on this host as configured.
    let open = attack(&lab, true)?;
    assert_eq!(
        open,
        Attacks {
            arp_replies: 2,
            forwarded: 1,
            delivered: 1
        },
        "the attacks must work before the fix, or the test proves nothing"
    );

    // No terminal and no --yes: refuse, change nothing.
    let refused = guardctl(&lab.host, &["audit", "--fix"])?;
    assert_eq!(refused.status.code(), Some(3), "{}", text(&refused.stderr));
    assert!(text(&refused.stderr).contains("--yes"));
    assert_eq!(lab.host.sysctl("net/ipv4/conf/br-guest/rp_filter")?, 0);

    let fixed = audit(&lab.host, &["--fix", "--yes"])?;
    let applied: BTreeSet<&str> = fixed.json["applied"]
        .as_array()
        .context("no applied list")?
        .iter()
        .filter_map(|a| a["sysctl"].as_str())
        .collect();
    assert!(applied.contains("net.ipv4.conf.br-guest.forwarding"));
    assert!(
        applied.iter().all(|s| s.contains("br-guest")),
        "{applied:?}"
    );
    assert_eq!(lab.host.sysctl("net/ipv4/ip_forward")?, 1, "all untouched");
    // What is left needs a person: attach guard, decide on br_netfilter.
    let left = set(&[
        "ipv4-forwarding-default",
        "guard-not-attached",
        "bridge-nf-call",
    ]);
    assert_eq!(fixed.ids(), left);
    assert_eq!(fixed.status, 1);
    let again = audit(&lab.host, &[])?;
    assert_eq!((again.ids(), again.status), (left, 1));

    let closed = attack(&lab, false)?;
    assert_eq!(
        closed,
        Attacks {
            arp_replies: 0,
            forwarded: 0,
            delivered: 0
        }
    );
    Ok(())
}

#[test]
fn bridge_with_an_address_keeps_forwarding_after_fix() -> Result<()> {
    let lab = Lab::fresh(true)?;
    let before = audit(&lab.host, &[])?;
    assert_eq!(before.status, 2);
    assert_eq!(before.severity("bridge-address"), Some("high"));
    assert!(before.ids().contains("ipv4-forwarding"));

    let fixed = audit(&lab.host, &["--fix", "--yes"])?;
    // The host may route for these guests on purpose (a NAT network): not auto-fixed.
    assert_eq!(lab.host.sysctl("net/ipv4/conf/br-guest/forwarding")?, 1);
    assert_eq!(fixed.status, 2);
    assert!(fixed.ids().contains("ipv4-forwarding"));
    assert!(fixed.ids().contains("bridge-address"));
    for gone in [
        "rp-filter",
        "arp-ignore",
        "ipv4-drop-unicast-in-l2-multicast",
    ] {
        assert!(!fixed.ids().contains(gone), "{gone} still reported");
    }
    Ok(())
}

#[test]
fn hardened_host_is_clean_until_an_unguarded_port_joins() -> Result<()> {
    let lab = Lab::hardened()?;
    let clean = audit(&lab.host, &[])?;
    assert_eq!(clean.findings, Vec::new(), "{:#}", clean.json);
    assert_eq!(clean.status, 0);

    // A VM starts while the agent is not running.
    lab.host
        .ip(&["link", "add", "vg1", "type", "veth", "peer", "name", "vg1p"])?;
    lab.host
        .ip(&["link", "set", "vg1", "master", BRIDGE, "up"])?;
    let after = audit(&lab.host, &[])?;
    assert_eq!(after.ids(), set(&["port-unguarded"]));
    assert_eq!(after.status, 2);
    let text = guardctl(&lab.host, &["audit"])?;
    let out = String::from_utf8_lossy(&text.stdout);
    assert!(out.contains("vg1"), "{out}");
    assert!(
        out.lines().all(|l| l.len() <= 80),
        "text output wider than 80 columns:\n{out}"
    );
    Ok(())
}

#[test]
fn audit_errors_have_their_own_exit_status() -> Result<()> {
    require_root();
    let ns = Netns::new("empty")?;
    let missing = guardctl(&ns, &["audit", "no-such-bridge"])?;
    assert_eq!(missing.status.code(), Some(3), "{}", text(&missing.stderr));
    ns.ip(&["link", "add", "d0", "type", "veth", "peer", "name", "d1"])?;
    let not_bridge = guardctl(&ns, &["audit", "d0"])?;
    assert_eq!(not_bridge.status.code(), Some(3));
    let usage = guardctl(&ns, &["audit", "--bogus"])?;
    assert_eq!(usage.status.code(), Some(64));
    // A namespace with no bridge at all still gets an answer.
    let none = audit(&ns, &[])?;
    assert!(none.json["bridges"].as_array().is_some_and(Vec::is_empty));
    Ok(())
}
