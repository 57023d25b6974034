//! The macro bench: a flood from guest `g1` into its bridge port `vg1`, against every
//! receive-side setup of the host, in interleaved rounds.
//!
//! Generator: `BPF_PROG_TEST_RUN` in live-frames mode (what xdp-trafficgen does) of an
//! `r0 = XDP_TX; exit` program on g1's `eth0`: each copy of the frame is transmitted out of
//! `eth0` into its veth peer `vg1`, as if the guest had sent it. The frame is what an attack on
//! the management network looks like: the host's MAC, IPv4 UDP to 10.10.0.2.
//!
//! Receiver: `vg1`'s NAPI instance. veth only runs NAPI for frames coming from `ndo_xdp_xmit`
//! when an XDP program is attached or GRO is on, so GRO is switched on for every setup. The
//! generator thread is pinned to one CPU and runs `SCHED_FIFO` (the compilers sharing the
//! machine cannot preempt it); the port's NAPI poll runs in softirq on that same CPU, at the
//! `local_bh_enable` after each generator batch. So the CPU is 100% busy during a flood, every
//! offered frame is received (no ring overflow), and the tick-sampled softirq time of that CPU
//! (`/proc/stat`) is the host's receive cost, which the tables report per frame and as the
//! frames per second one core could drop (`1-core Mpps`).
//!
//! Why not generator and receiver on two CPUs (a threaded NAPI on the other CPU): tried and
//! profiled (`perf record -C 0`): every frame's page then goes back across CPUs to the
//! generator's page pool, and the spin locks of that return (`__pv_queued_spin_lock_slowpath`,
//! 12% of the receive CPU for drop-all and 25% for guard) dominate the difference between
//! setups. A real NIC recycles on the receiving CPU; the same-CPU layout does too.
//!
//! Setups: `none` (the host bridges and forwards the frame to the management server), guard
//! via `guardctl attach --hook xdp` and `--hook tc`, an nftables netdev-ingress rule on the port
//! doing guard's job for this policy (the best nftables can do: earliest hook, one set lookup),
//! `r0 = XDP_DROP; exit` attached native (the ceiling), and a program that reads the frame's
//! first byte and drops (the ceiling of any filter that looks at the frame: the difference to
//! drop-all is the first touch of frame data written on the other CPU).

use std::fs;
use std::os::fd::{AsFd as _, OwnedFd};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, ensure};

use super::sys::{self, BPF_PROG_TYPE_XDP, BPF_XDP, XDP_DROP, XDP_FLAGS_DRV_MODE, XDP_TX};
use super::{Scale, Summary, float, workload};
use crate::lab::netns::in_netns;
use crate::lab::{Lab, Role, Variant, addr};
use crate::packet::{Eth, Ipv4};

/// Frames per live-frames syscall (the kernel checks `need_resched` between batches).
const CHUNK: u32 = 1 << 18;
/// Live-frames batch size (the kernel's default is 64).
const BATCH: u32 = 64;
const GEN_CPU: usize = 1;
/// `USER_HZ`: the unit of `/proc/stat`.
const USER_HZ: f64 = 100.0;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setup {
    None,
    GuardXdp,
    GuardTc,
    Nftables,
    ReadDrop,
    DropAll,
}

impl Setup {
    pub const ALL: [Self; 6] = [
        Self::None,
        Self::GuardXdp,
        Self::GuardTc,
        Self::Nftables,
        Self::ReadDrop,
        Self::DropAll,
    ];

    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::None => "no filter (host forwards)",
            Self::GuardXdp => "guard xdp",
            Self::GuardTc => "guard tc",
            Self::Nftables => "nftables netdev ingress",
            Self::ReadDrop => "xdp read byte 0 + drop",
            Self::DropAll => "xdp drop-all (ceiling)",
        }
    }

    #[must_use]
    pub fn from_key(key: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.key() == key)
    }

    #[must_use]
    pub const fn key(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::GuardXdp => "guard_xdp",
            Self::GuardTc => "guard_tc",
            Self::Nftables => "nftables",
            Self::ReadDrop => "read_drop",
            Self::DropAll => "drop_all",
        }
    }
}

/// One flood of one setup.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sample {
    /// Frames the receiving port processed per second.
    pub rx_pps: f64,
    /// Frames the generator offered per second.
    pub offered_pps: f64,
    /// Receive-side CPU time (softirq on the flood CPU) per million processed frames, in ms
    /// (numerically, ns per frame).
    pub cpu_ms_per_mframe: f64,
    /// Busy share of the flood CPU (about 1: the generator never sleeps).
    pub busy: f64,
}

/// Results per setup, in [`Setup::ALL`] order.
pub struct Results {
    pub samples: Vec<Vec<Sample>>,
}

impl Results {
    #[must_use]
    pub fn summary(&self, setup: usize, f: impl Fn(&Sample) -> f64) -> Summary {
        Summary::of(&self.samples[setup].iter().map(f).collect::<Vec<_>>())
    }
}

/// Finds `guardctl`: `$GUARDCTL`, else next to this binary (`cargo build --release
/// -p guard-userspace` puts it there).
pub fn guardctl() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("GUARDCTL") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().context("locating guard-bench")?;
    let p = exe
        .parent()
        .ok_or_else(|| anyhow!("{} has no directory", exe.display()))?
        .join("guardctl");
    ensure!(
        p.exists(),
        "{} not found: build it first (cargo build --release -p guard-userspace) or set GUARDCTL",
        p.display()
    );
    Ok(p)
}

/// Runs `guardctl -n NS ARGS`, failing with its stderr.
pub fn run_guardctl(guardctl: &PathBuf, ns: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(guardctl)
        .arg("-n")
        .arg(ns)
        .args(args)
        .output()
        .with_context(|| format!("running {}", guardctl.display()))?;
    ensure!(
        out.status.success(),
        "guardctl -n {ns} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `(softirq, busy)` ticks of one CPU (`/proc/stat`, in [`USER_HZ`]).
fn cpu_ticks(cpu: usize) -> Result<(u64, u64)> {
    let stat = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let name = format!("cpu{cpu}");
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))
        .ok_or_else(|| anyhow!("no {name} line in /proc/stat"))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    ensure!(v.len() >= 7, "short {name} line in /proc/stat: {line:?}");
    // user nice system idle iowait irq softirq [steal ...]
    let busy = v[0] + v[1] + v[2] + v[5] + v[6] + v.get(7).copied().unwrap_or(0);
    Ok((v[6], busy))
}

/// Real-time priority of the generator: above the compilers that share this machine, so a
/// flood measures the datapath and not the scheduler's fairness. The kernel's RT throttling
/// still leaves others 5% of the CPU; floods last seconds.
const RT_PRIORITY: libc::c_int = 10;

/// Makes the calling thread `SCHED_FIFO` at [`RT_PRIORITY`].
fn make_realtime() -> Result<()> {
    // Zeroed, then the priority: musl's `sched_param` has more (reserved) fields than
    // glibc's, and this lib is also built for musl (guard-vmcheck in the test VMs).
    // SAFETY: `sched_param` is plain integers; all-zero is a valid value.
    let mut param: libc::sched_param = unsafe { std::mem::zeroed() };
    param.sched_priority = RT_PRIORITY;
    // SAFETY: `param` is a valid sched_param for the call.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &raw const param) };
    ensure!(
        rc == 0,
        "making the generator SCHED_FIFO: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// `rx_packets` of `ifname` in namespace `ns`.
fn rx_packets(lab: &Lab, ifname: &str) -> Result<u64> {
    let v = lab
        .netns(Role::Host)
        .ip_json(&["-s", "link", "show", "dev", ifname])?;
    v.get(0)
        .and_then(|l| l.pointer("/stats64/rx/packets"))
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| anyhow!("no rx packet count for {ifname} in `ip -s -j link` output"))
}

/// The flood lab: a base lab with GRO (so NAPI) on the port, the generator loaded.
pub struct Flood {
    lab: Lab,
    guardctl: PathBuf,
    port: String,
    port_ifindex: u32,
    guest_ifindex: u32,
    generator: OwnedFd,
    drop_all: OwnedFd,
    read_drop: OwnedFd,
    frame: Vec<u8>,
}

impl Flood {
    pub fn new() -> Result<Self> {
        let guardctl = guardctl()?;
        let lab = Lab::build(Variant::Base).context("building the flood lab")?;
        let port = lab.port(Role::G1)?.clone();
        let host = lab.netns(Role::Host);
        host.exec("ethtool", &["-K", &port.host.name, "gro", "on"], None)
            .with_context(|| format!("enabling GRO (and so NAPI) on {}", port.host.name))?;
        let frame = Eth::new(addr::BRIDGE_MAC, port.guest.mac)
            .ipv4(Ipv4::new(addr::G1_4, workload::TARGET4).udp(40_000, 9, b"guard-bench"))
            .pad_to(60)
            .build();
        Ok(Self {
            guardctl,
            port: port.host.name.clone(),
            port_ifindex: port.host.ifindex,
            guest_ifindex: port.guest.ifindex,
            generator: sys::load_constant_program(BPF_PROG_TYPE_XDP, XDP_TX, "bench_gen")?,
            drop_all: sys::load_constant_program(BPF_PROG_TYPE_XDP, XDP_DROP, "bench_drop_all")?,
            read_drop: sys::load_read_and_drop()?,
            frame,
            lab,
        })
    }

    /// Sets `setup` up, returning what keeps it alive (a link fd for drop-all).
    fn enable(&self, setup: Setup) -> Result<Option<OwnedFd>> {
        let host = self.lab.ns(Role::Host);
        match setup {
            Setup::None => Ok(None),
            Setup::GuardXdp | Setup::GuardTc => {
                let hook = if setup == Setup::GuardXdp {
                    "xdp"
                } else {
                    "tc"
                };
                run_guardctl(
                    &self.guardctl,
                    host,
                    &["attach", addr::BRIDGE, "--hook", hook],
                )?;
                Ok(None)
            }
            Setup::Nftables => {
                // guard's default protected set on the lab host, as one nftables rule per
                // family: host-bound (bridge MAC, or broadcast/multicast) and aimed at it.
                let ruleset = format!(
                    "table netdev guard_bench {{\n\
                     \tchain ingress {{\n\
                     \t\ttype filter hook ingress device \"{port}\" priority -500; policy accept;\n\
                     \t\tether daddr {{ {mac}, ff:ff:ff:ff:ff:ff }} ip daddr {{ 10.10.0.0/24, 10.20.0.0/24 }} drop\n\
                     \t\tether daddr {{ {mac} }} ip6 daddr {{ fd00:10::/64, fd00:20::/64 }} drop\n\
                     \t}}\n}}\n",
                    port = self.port,
                    mac = crate::lab::frame::mac_to_string(&addr::BRIDGE_MAC),
                );
                self.lab
                    .netns(Role::Host)
                    .exec("nft", &["-f", "-"], Some(&ruleset))
                    .context("loading the nftables ruleset")?;
                Ok(None)
            }
            Setup::ReadDrop | Setup::DropAll => {
                let prog = if setup == Setup::DropAll {
                    &self.drop_all
                } else {
                    &self.read_drop
                };
                let link = in_netns(host, || {
                    sys::link_create(prog.as_fd(), self.port_ifindex, BPF_XDP, XDP_FLAGS_DRV_MODE)
                })?;
                Ok(Some(link))
            }
        }
    }

    fn disable(&self, setup: Setup, keep: Option<OwnedFd>) -> Result<()> {
        drop(keep);
        let host = self.lab.ns(Role::Host);
        match setup {
            Setup::None | Setup::ReadDrop | Setup::DropAll => Ok(()),
            Setup::GuardXdp | Setup::GuardTc => {
                run_guardctl(&self.guardctl, host, &["detach", addr::BRIDGE]).map(|_| ())
            }
            Setup::Nftables => self
                .lab
                .netns(Role::Host)
                .exec("nft", &["delete", "table", "netdev", "guard_bench"], None)
                .map(|_| ()),
        }
    }

    /// Floods for `secs` and measures.
    fn flood(&self, secs: f64) -> Result<Sample> {
        let (soft0, busy0) = cpu_ticks(GEN_CPU)?;
        let rx0 = rx_packets(&self.lab, &self.port)?;
        let started = Instant::now();
        let deadline = Duration::from_secs_f64(secs);
        let sent = in_netns(self.lab.ns(Role::G1), || -> Result<u64> {
            sys::pin_to_cpu(GEN_CPU)?;
            make_realtime()?;
            let started = Instant::now();
            let mut sent = 0u64;
            while started.elapsed() < deadline {
                sys::live_frames(
                    self.generator.as_fd(),
                    self.guest_ifindex,
                    &self.frame,
                    CHUNK,
                    BATCH,
                )
                .context("live-frames test run on the guest's eth0")?;
                sent += u64::from(CHUNK);
            }
            Ok(sent)
        })?;
        let wall = started.elapsed().as_secs_f64();
        // Let the receiver drain what is still queued.
        std::thread::sleep(Duration::from_millis(20));
        let rx = rx_packets(&self.lab, &self.port)?.saturating_sub(rx0);
        let (soft1, busy1) = cpu_ticks(GEN_CPU)?;
        let rxf = float(rx);
        let soft_s = float(soft1.saturating_sub(soft0)) / USER_HZ;
        Ok(Sample {
            rx_pps: rxf / wall,
            offered_pps: float(sent) / wall,
            cpu_ms_per_mframe: if rx == 0 {
                f64::NAN
            } else {
                soft_s * 1e3 / (rxf / 1e6)
            },
            busy: float(busy1.saturating_sub(busy0)) / USER_HZ / wall,
        })
    }

    /// Every setup (of `only`, if not empty), `rounds` times, interleaved (each round starts
    /// with a different setup).
    pub fn run(&self, scale: &Scale, only: &[Setup]) -> Result<Results> {
        let n = Setup::ALL.len();
        let mut samples = vec![Vec::new(); n];
        for round in 0..scale.flood_rounds {
            for k in 0..n {
                let i = (k + round) % n;
                let setup = Setup::ALL[i];
                if !only.is_empty() && !only.contains(&setup) {
                    continue;
                }
                let keep = self
                    .enable(setup)
                    .with_context(|| format!("setting up {}", setup.name()))?;
                let sample = self.flood(scale.flood_secs);
                self.disable(setup, keep)
                    .with_context(|| format!("tearing down {}", setup.name()))?;
                samples[i].push(sample.with_context(|| format!("flooding {}", setup.name()))?);
            }
        }
        Ok(Results { samples })
    }
}
