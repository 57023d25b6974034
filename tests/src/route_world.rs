//! The routing world of the datapath tests: a network namespace whose FIB the route check
//! (`bpf_fib_lookup`, docs/datapath.md steps 8-9) consults, and its hand-written mirror for
//! the reference model.
//!
//! `BPF_PROG_TEST_RUN` runs a program on the loopback device of the calling thread's network
//! namespace, and `bpf_fib_lookup` looks up routes in that namespace. [`enter`] therefore moves
//! the calling thread (only it: `unshare(CLONE_NEWNET)` acts on the calling thread) into a new
//! namespace built like a small host, once per thread; the namespace goes away with the
//! thread. Commands that configure it are spawned from that thread and inherit its namespace.
//!
//! ```text
//!   lo   127.0.0.1, 192.0.2.1/32, ::1, 2001:db8:1::1/128      (local addresses)
//!   gbr  bridge (port gp0), 172.16.0.1/24, 2001:db8:50::1/64  (the guest bridge: E)
//!   prot0 192.168.100.1/24, 100.64.0.1/24, 2001:db8:100::1/64 (a protected interface)
//!         198.18.0.0/16 via 192.168.100.2, 2001:db8:300::/48 via 2001:db8:100::2
//!   up0  203.0.113.1/24, 2001:db8:ff::1/64, the default routes (the uplink: E)
//!   unreachable 198.51.100.0/24, 2001:db8:dead::/48; blackhole 198.51.101.0/24
//! ```
//!
//! Every gateway has a permanent neighbour entry, so its routes give the egress interface on
//! any kernel; connected routes have none (their verdict depends on the kernel: see
//! [`World::fib_egress_without_neigh`]). [`enter`] checks the kernel's FIB against [`routes`]
//! entry by entry, so the mirror cannot drift from what the kernel holds.

use std::{
    cell::RefCell,
    collections::BTreeSet,
    net::IpAddr,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail, ensure};
use guard_common::DEFAULT_TUNNEL_PORTS;
use guard_common::model::{Policy, Route, RouteKind};

/// ifindex of the loopback device in a new namespace.
pub const LO: u32 = 1;
/// The guest bridge (input interface of every route lookup). The world's interfaces get
/// fixed, high ifindexes (`ip link add ... index N`): a kernel with tunnel modules loaded
/// puts their fallback devices (`tunl0`, `gre0`, `sit0`, ...) into every new namespace first.
pub const GBR: u32 = 102;
/// The protected interface (`prot0`; its veth peer `prot1` is 105).
pub const PROT: u32 = 106;
/// The uplink (`up0`; its peer `up1` is 107).
pub const UPLINK: u32 = 108;

const SETUP: &str = "\
link set lo up
link add gbr index 102 type bridge stp_state 0
link add gp0 index 104 type veth peer name gp1 index 103
link add prot0 index 106 type veth peer name prot1 index 105
link add up0 index 108 type veth peer name up1 index 107
link set gp0 master gbr
link set gbr up
link set gp0 up
link set gp1 up
link set prot0 up
link set prot1 up
link set up0 up
link set up1 up
address add 192.0.2.1/32 dev lo
address add 2001:db8:1::1/128 dev lo
address add 172.16.0.1/24 dev gbr
address add 2001:db8:50::1/64 dev gbr nodad
address add 192.168.100.1/24 dev prot0
address add 100.64.0.1/24 dev prot0
address add 2001:db8:100::1/64 dev prot0 nodad
address add 203.0.113.1/24 dev up0
address add 2001:db8:ff::1/64 dev up0 nodad
neigh add 192.168.100.2 lladdr 02:00:00:00:01:02 dev prot0 nud permanent
neigh add 203.0.113.254 lladdr 02:00:00:00:02:fe dev up0 nud permanent
neigh add 2001:db8:100::2 lladdr 02:00:00:00:01:02 dev prot0 nud permanent
neigh add 2001:db8:ff::fe lladdr 02:00:00:00:02:fe dev up0 nud permanent
route add 198.18.0.0/16 via 192.168.100.2 dev prot0
route add default via 203.0.113.254 dev up0
route add unreachable 198.51.100.0/24
route add blackhole 198.51.101.0/24
route add 2001:db8:300::/48 via 2001:db8:100::2 dev prot0
route add ::/0 via 2001:db8:ff::fe dev up0
route add unreachable 2001:db8:dead::/48
";

/// The kernel's FIB of the world, as the model reads it: every unicast, local-table and
/// kernel-drop entry of the main and local tables, except link-local and multicast (scoped
/// destinations never reach a route lookup). Local-table entries come last: the kernel
/// consults the local table first, and among equal prefixes the model takes the later entry.
#[must_use]
pub fn routes() -> Vec<Route> {
    let r = |net: &str, kind| {
        let (addr, len) = net.split_once('/').unwrap_or((net, ""));
        let addr: IpAddr = addr.parse().expect("world address");
        let prefix_len = if len.is_empty() {
            if addr.is_ipv4() { 32 } else { 128 }
        } else {
            len.parse().expect("world prefix length")
        };
        Route {
            addr,
            prefix_len,
            kind,
        }
    };
    let via = |ifindex, neigh| RouteKind::Via { ifindex, neigh };
    let mut v = vec![
        r("0.0.0.0/0", via(UPLINK, true)),
        r("100.64.0.0/24", via(PROT, false)),
        r("172.16.0.0/24", via(GBR, false)),
        r("192.168.100.0/24", via(PROT, false)),
        r("198.18.0.0/16", via(PROT, true)),
        r("198.51.100.0/24", RouteKind::KernelDrops),
        r("198.51.101.0/24", RouteKind::KernelDrops),
        r("203.0.113.0/24", via(UPLINK, false)),
        r("::/0", via(UPLINK, true)),
        r("2001:db8:1::1/128", via(LO, false)),
        r("2001:db8:50::/64", via(GBR, false)),
        r("2001:db8:ff::/64", via(UPLINK, false)),
        r("2001:db8:100::/64", via(PROT, false)),
        r("2001:db8:300::/48", via(PROT, true)),
        r("2001:db8:dead::/48", RouteKind::KernelDrops),
    ];
    for local in [
        "100.64.0.1",
        "100.64.0.255",
        "127.0.0.0/8",
        "127.0.0.1",
        "127.255.255.255",
        "172.16.0.1",
        "172.16.0.255",
        "192.0.2.1",
        "192.168.100.1",
        "192.168.100.255",
        "203.0.113.1",
        "203.0.113.255",
        "::1",
        "2001:db8:1::1",
        // Subnet-router anycast: a forwarding host holds the all-zero address of each prefix.
        "2001:db8:50::",
        "2001:db8:50::1",
        "2001:db8:ff::",
        "2001:db8:ff::1",
        "2001:db8:100::",
        "2001:db8:100::1",
    ] {
        v.push(r(local, RouteKind::Local));
    }
    v
}

/// `policy` with the route check configured as `guardctl attach` configures it on this world's
/// bridge: on, the guest bridge and the uplink in `E` (attach marks the bridge and the
/// interfaces that carry a default route), the bridge as the lookup's input interface, the
/// default tunnel ports, and `SKIP_NEIGH` where the kernel has it. The FIB mirror comes along
/// for the reference model. Everything else (host MACs, rules, flags) stays as given.
#[must_use]
pub fn as_attached(policy: Policy) -> Policy {
    Policy {
        route_check: true,
        tunnel_ports: DEFAULT_TUNNEL_PORTS.to_vec(),
        egress_ok: vec![GBR, UPLINK],
        bridge_ifindex: GBR,
        routes: routes(),
        forwarding: true,
        // Asked of the running kernel: the VM matrix runs on 6.1 too.
        fib_egress_without_neigh: reports_egress_without_neigh(),
        ..policy
    }
}

/// The world a thread is in.
#[derive(Clone, Debug)]
pub struct World {
    pub routes: Vec<Route>,
    /// Does this kernel report the egress interface of a next hop without a neighbour entry
    /// (Linux 6.3 moved the ifindex update before the neighbour lookup, with
    /// `BPF_FIB_LOOKUP_SKIP_NEIGH`)? Also whether guard may pass `SKIP_NEIGH`.
    pub fib_egress_without_neigh: bool,
}

thread_local! {
    static WORLD: RefCell<Option<World>> = const { RefCell::new(None) };
}

/// Moves the calling thread into its routing world (building it the first time) and returns
/// it. Needs root.
pub fn enter() -> Result<World> {
    if let Some(w) = WORLD.with(|w| w.borrow().clone()) {
        return Ok(w);
    }
    build()?;
    let world = World {
        routes: routes(),
        fib_egress_without_neigh: reports_egress_without_neigh(),
    };
    WORLD.with(|w| *w.borrow_mut() = Some(world.clone()));
    Ok(world)
}

/// Moves the calling thread into a new network namespace and builds the routing world there.
fn build() -> Result<()> {
    // SAFETY: unshare has no memory preconditions; CLONE_NEWNET affects the calling thread.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error())
            .context("unshare(CLONE_NEWNET) for the routing world (needs root)");
    }
    for (path, value) in [
        ("/proc/sys/net/ipv6/conf/all/accept_dad", "0"),
        ("/proc/sys/net/ipv6/conf/default/accept_dad", "0"),
        ("/proc/sys/net/ipv4/ip_forward", "1"),
        ("/proc/sys/net/ipv6/conf/all/forwarding", "1"),
    ] {
        std::fs::write(path, value).with_context(|| format!("writing {path} = {value}"))?;
    }
    run_ip(&["-batch", "-"], Some(SETUP)).context("building the routing world")?;
    check_ifindexes()?;
    check_fib()
}

fn run_ip(args: &[&str], stdin: Option<&str>) -> Result<String> {
    use std::io::Write as _;
    let mut child = Command::new("ip")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running ip (iproute2)")?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .context("writing to ip -batch")?;
    }
    let out = child.wait_with_output().context("waiting for ip")?;
    ensure!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8(out.stdout).context("ip output is not UTF-8")
}

fn check_ifindexes() -> Result<()> {
    let links: serde_json::Value =
        serde_json::from_str(&run_ip(&["-j", "link", "show"], None)?).context("ip -j link")?;
    for (name, want) in [("lo", LO), ("gbr", GBR), ("prot0", PROT), ("up0", UPLINK)] {
        let got = links
            .as_array()
            .and_then(|a| a.iter().find(|l| l["ifname"] == name))
            .and_then(|l| l["ifindex"].as_u64());
        ensure!(
            got == Some(u64::from(want)),
            "routing world: {name} has ifindex {got:?}, the mirror assumes {want}"
        );
    }
    Ok(())
}

/// The kernel's FIB (both families, main and local tables) equals [`routes`].
fn check_fib() -> Result<()> {
    let mut kernel = BTreeSet::new();
    for family in ["-4", "-6"] {
        let out = run_ip(&["-j", family, "route", "show", "table", "all"], None)?;
        let v: serde_json::Value = serde_json::from_str(&out).context("ip -j route")?;
        for e in v.as_array().map_or(&[][..], Vec::as_slice) {
            let table = e["table"].as_str().unwrap_or("main");
            if table != "main" && table != "local" {
                continue;
            }
            let kind = e["type"].as_str().unwrap_or("unicast");
            let dst = e["dst"].as_str().unwrap_or_default();
            let dst = match dst {
                "default" if family == "-4" => "0.0.0.0/0".to_owned(),
                "default" => "::/0".to_owned(),
                d if d.contains('/') => d.to_owned(),
                d if family == "-4" => format!("{d}/32"),
                d => format!("{d}/128"),
            };
            if kind == "multicast" || dst.starts_with("fe80:") || dst.starts_with("ff00:") {
                continue;
            }
            let dev = e["dev"].as_str().unwrap_or_default();
            let mirrored = match kind {
                "local" | "broadcast" | "anycast" => "local".to_owned(),
                "unreachable" | "blackhole" | "prohibit" => "drops".to_owned(),
                "unicast" => format!("via {dev} neigh {}", e.get("gateway").is_some()),
                other => bail!("routing world: unexpected {other} route {dst}"),
            };
            kernel.insert(format!("{dst} {mirrored}"));
        }
    }
    let name = |i: u32| match i {
        LO => "lo",
        GBR => "gbr",
        PROT => "prot0",
        UPLINK => "up0",
        _ => "?",
    };
    let mirror: BTreeSet<String> = routes()
        .iter()
        .map(|r| {
            let kind = match r.kind {
                RouteKind::Local => "local".to_owned(),
                RouteKind::KernelDrops => "drops".to_owned(),
                RouteKind::Via { ifindex, neigh } => format!("via {} neigh {neigh}", name(ifindex)),
                RouteKind::Unsupported => "unsupported".to_owned(),
            };
            format!("{}/{} {kind}", r.addr, r.prefix_len)
        })
        .collect();
    ensure!(
        kernel == mirror,
        "routing world: the kernel's FIB and the model's mirror differ\n\
         only in the kernel: {:?}\nonly in the mirror: {:?}",
        kernel.difference(&mirror).collect::<Vec<_>>(),
        mirror.difference(&kernel).collect::<Vec<_>>()
    );
    Ok(())
}

/// Does this kernel's `bpf_fib_lookup` report the egress interface of a next hop without a
/// neighbour entry? Linux 6.3 moved the ifindex update before the neighbour lookup, and some
/// stable kernels (Debian's 6.1) carry that too, so the kernel is asked rather than its
/// version: a bare lookup program run in a routing world of its own on a frame to a connected
/// address of the protected interface (which has no neighbour entry) returns the interface the
/// helper left in its parameters. Asked once per process; a probe that cannot run says no.
#[must_use]
pub fn reports_egress_without_neigh() -> bool {
    static ANSWER: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ANSWER.get_or_init(|| {
        // A thread of its own, in a world of its own (not `enter`, which asks this).
        std::thread::spawn(|| -> Result<bool> {
            build()?;
            let prog = crate::bench::sys::load_fib_egress_probe(GBR)?;
            let frame = crate::packet::Eth::new([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
                .ipv4(
                    crate::packet::Ipv4::new([172, 16, 0, 10], [100, 64, 0, 9]).udp(1, 2, &[0; 4]),
                )
                .pad_to(60)
                .build();
            let r = crate::bench::sys::test_run(std::os::fd::AsFd::as_fd(&prog), &frame, 1)?;
            Ok(r.retval == PROT)
        })
        .join()
        .ok()
        .and_then(Result::ok)
        .unwrap_or(false)
    })
}
