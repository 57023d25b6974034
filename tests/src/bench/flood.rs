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
//! NAPI instance is made threaded and its kthread is pinned to CPU 0 while the generator is
//! pinned to CPU 1: the generator never pays for the receive side, a receiver slower than the
//! generator shows as frames the veth ring refuses, and the kthread's own CPU time
//! (`/proc/PID/schedstat`) is exactly the host's receive cost.
//!
//! Setups: `none` (the host bridges and forwards the frame to the management server), guard
//! via `guardctl attach --hook xdp` and `--hook tc`, an nftables netdev-ingress rule on the port
//! doing guard's job for this policy (the best nftables can do: earliest hook, one set lookup),
//! `r0 = XDP_DROP; exit` attached native (the ceiling), and a program that reads the frame's
//! first byte and drops (the ceiling of any filter that looks at the frame: the difference to
//! drop-all is the first touch of frame data written on the other CPU).

use std::collections::BTreeSet;
use std::fs;
use std::os::fd::{AsFd as _, OwnedFd};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail, ensure};

use super::sys::{self, BPF_PROG_TYPE_XDP, BPF_XDP, XDP_DROP, XDP_FLAGS_DRV_MODE, XDP_TX};
use super::{Scale, Summary, workload};
use crate::lab::netns::in_netns;
use crate::lab::{Lab, Role, Variant, addr};
use crate::packet::{Eth, Ipv4};

/// Frames per live-frames syscall (the kernel checks `need_resched` between batches).
const CHUNK: u32 = 1 << 18;
/// Live-frames batch size (the kernel's default is 64).
const BATCH: u32 = 64;
const GEN_CPU: usize = 1;
const RX_CPU: usize = 0;

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
    /// Receive-side CPU time (the NAPI kthread) per million processed frames, in ms.
    pub cpu_ms_per_mframe: f64,
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

/// Thread ids of NAPI kthreads named after `ifname` (`napi/<ifname>-<napi id>`).
fn napi_threads(ifname: &str) -> Result<BTreeSet<u32>> {
    let prefix = format!("napi/{ifname}-");
    let mut out = BTreeSet::new();
    for e in fs::read_dir("/proc").context("reading /proc")? {
        let e = e?;
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok(comm) = fs::read_to_string(e.path().join("comm"))
            && comm.trim_end().starts_with(&prefix)
        {
            out.insert(pid);
        }
    }
    Ok(out)
}

/// CPU time a thread has run, in ns (`/proc/PID/schedstat`, first field).
fn cpu_ns(tid: u32) -> Result<u64> {
    let s = fs::read_to_string(format!("/proc/{tid}/schedstat"))
        .with_context(|| format!("reading /proc/{tid}/schedstat"))?;
    s.split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("unexpected /proc/{tid}/schedstat: {s:?}"))
}

/// Real-time priority of the generator and the receive thread: above the compilers that share
/// this machine, so a flood measures the receive path and not the scheduler's fairness (a
/// NAPI thread that waits behind rustc lets the veth ring overflow while it is idle). The
/// kernel's RT throttling still leaves others 5% of each CPU; floods last seconds.
const RT_PRIORITY: libc::c_int = 10;

/// Makes `tid` (0: the calling thread) `SCHED_FIFO` at [`RT_PRIORITY`].
fn make_realtime(tid: u32) -> Result<()> {
    let param = libc::sched_param {
        sched_priority: RT_PRIORITY,
    };
    // SAFETY: `param` is a valid sched_param for the call.
    let rc = unsafe { libc::sched_setscheduler(tid as libc::pid_t, libc::SCHED_FIFO, &raw const param) };
    ensure!(
        rc == 0,
        "making thread {tid} SCHED_FIFO: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

fn pin_thread(tid: u32, cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(
            tid as libc::pid_t,
            size_of::<libc::cpu_set_t>(),
            &raw const set,
        )
    };
    ensure!(
        rc == 0,
        "pinning NAPI thread {tid} to CPU {cpu}: {}",
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

/// The flood lab: a base lab, the port's NAPI thread found and pinned, the generator loaded.
pub struct Flood {
    lab: Lab,
    guardctl: PathBuf,
    port: String,
    port_ifindex: u32,
    guest_ifindex: u32,
    napi: Vec<u32>,
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
        let before = napi_threads(&port.host.name)?;
        // `ip netns exec` gives the shell the namespace's /sys/class/net.
        host.exec(
            "sh",
            &[
                "-c",
                &format!("echo 1 > /sys/class/net/{}/threaded", port.host.name),
            ],
            None,
        )
        .context("making the port's NAPI threaded")?;
        let napi: Vec<u32> = napi_threads(&port.host.name)?
            .difference(&before)
            .copied()
            .collect();
        ensure!(
            !napi.is_empty(),
            "no NAPI kthread appeared for {} after enabling threaded NAPI",
            port.host.name
        );
        for t in &napi {
            pin_thread(*t, RX_CPU)?;
        }
        let frame = Eth::new(addr::BRIDGE_MAC, port.guest.mac)
            .ipv4(Ipv4::new(addr::G1_4, workload::TARGET4).udp(40_000, 9, b"guard-bench"))
            .pad_to(60)
            .build();
        Ok(Self {
            guardctl,
            port: port.host.name.clone(),
            port_ifindex: port.host.ifindex,
            guest_ifindex: port.guest.ifindex,
            napi,
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
                    sys::link_create(
                        prog.as_fd(),
                        self.port_ifindex,
                        BPF_XDP,
                        XDP_FLAGS_DRV_MODE,
                    )
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
        // The NAPI kthread may have been recreated by an attach (veth re-adds NAPI when XDP
        // comes or goes); re-pin whatever exists now.
        let threads: Vec<u32> = self
            .napi
            .iter()
            .copied()
            .filter(|t| fs::metadata(format!("/proc/{t}")).is_ok())
            .collect();
        if threads.is_empty() {
            bail!("the NAPI kthread of {} is gone", self.port);
        }
        for t in &threads {
            pin_thread(*t, RX_CPU)?;
            make_realtime(*t)?;
        }
        let cpu0: u64 = threads.iter().map(|t| cpu_ns(*t)).sum::<Result<u64>>()?;
        let rx0 = rx_packets(&self.lab, &self.port)?;
        let started = Instant::now();
        let deadline = Duration::from_secs_f64(secs);
        let sent = in_netns(self.lab.ns(Role::G1), || -> Result<u64> {
            sys::pin_to_cpu(GEN_CPU)?;
            make_realtime(0)?;
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
        let cpu1: u64 = threads.iter().map(|t| cpu_ns(*t)).sum::<Result<u64>>()?;
        let rxf = rx as f64;
        Ok(Sample {
            rx_pps: rxf / wall,
            offered_pps: sent as f64 / wall,
            cpu_ms_per_mframe: if rx == 0 {
                f64::NAN
            } else {
                (cpu1.saturating_sub(cpu0)) as f64 / 1e6 / (rxf / 1e6)
            },
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
