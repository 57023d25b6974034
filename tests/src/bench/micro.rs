//! The micro bench: kernel-timed `BPF_PROG_TEST_RUN` of every contender on every path.
//!
//! Contenders: the floor (`r0 = XDP_PASS; exit` and `r0 = TC_ACT_OK; exit`, loaded from raw
//! instructions: see [`sys::load_constant_program`]), the peer (xdp-filter's own
//! `xdpfilt_alw_ip.o`, loaded with aya, its maps holding the exact target addresses with the
//! destination flag), and guard's XDP and TC programs at each policy size.
//!
//! One round runs every (path, contender) cell once with `repeat` runs, starting at a
//! different contender each round; the kernel reports the mean ns per run of the cell. Ratios
//! (guard / floor, guard / peer, large policy / small policy) are taken within each round and
//! summarised over rounds, so a slow stretch of the shared machine hits both sides of a ratio.

use std::fs;
use std::os::fd::{AsFd as _, BorrowedFd, OwnedFd};
use std::path::{Path as FsPath, PathBuf};

use anyhow::{Context as _, Result, anyhow, ensure};
use aya::maps::{PerCpuHashMap, PerCpuValues};
use aya::programs::Xdp;
use aya::{Ebpf, EbpfLoader};

use super::sys::{self, BPF_PROG_TYPE_SCHED_CLS, BPF_PROG_TYPE_XDP, TC_ACT_OK, XDP_DROP, XDP_PASS};
use super::workload::{self, Path, TARGET4, TARGET6};
use super::{Scale, Summary};
use crate::datapath::{Datapath, Hook};

/// Debian's xdp-tools puts xdp-filter's programs here.
pub const PEER_OBJECT: &str = "/usr/lib/x86_64-linux-gnu/bpf/xdpfilt_alw_ip.o";
const PEER_PROGRAM: &str = "xdpfilt_alw_ip";
/// xdp-filter's `MAP_FLAG_DST` (`common_kern_user.h`): match the destination address. Its
/// program tests `value & 2` after the destination lookup (see `llvm-objdump -d` of the object).
const PEER_FLAG_DST: u64 = 1 << 1;

/// `TC_ACT_SHOT`.
const TC_ACT_SHOT: u32 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Floor,
    Peer,
    /// `variant` 0 is the object under test; 1.. are `--candidate` objects (A/B runs of a
    /// datapath change in the same interleaved rounds).
    Guard {
        prefixes: usize,
        variant: usize,
    },
}

/// One program under test.
pub struct Contender {
    pub label: String,
    pub kind: Kind,
    pub hook: Hook,
    fd: ProgFd,
}

enum ProgFd {
    Owned(OwnedFd),
    /// Index into [`Loaded::guards`] / the peer object; the fd lives in the aya object.
    Guard(usize),
    Peer,
}

/// Everything loaded: owns the aya objects the contenders' fds live in.
pub struct Loaded {
    pub contenders: Vec<Contender>,
    guards: Vec<Datapath>,
    peer: Ebpf,
    pub guard_info: Vec<ProgramFacts>,
}

/// What the kernel says about a loaded guard program (`bpftool prog show` has the same).
#[derive(Clone, Debug)]
pub struct ProgramFacts {
    pub label: String,
    pub id: u32,
    pub xlated_bytes: u32,
    pub jited_bytes: u32,
}

impl Loaded {
    fn fd<'a>(&'a self, c: &'a Contender) -> Result<BorrowedFd<'a>> {
        Ok(match &c.fd {
            ProgFd::Owned(fd) => fd.as_fd(),
            ProgFd::Guard(i) => self.guards[*i].program(c.hook)?.fd()?.as_fd(),
            ProgFd::Peer => self
                .peer
                .program(PEER_PROGRAM)
                .ok_or_else(|| anyhow!("no program {PEER_PROGRAM}"))?
                .fd()?
                .as_fd(),
        })
    }
}

/// Loads xdp-filter's object with its maps pinned (the object asks for pinning by name) in a
/// private bpffs directory, which is removed again at once: the maps live on through their fds,
/// and no pin of a real xdp-filter on this machine is ever touched.
fn load_peer() -> Result<Ebpf> {
    ensure!(
        FsPath::new(PEER_OBJECT).exists(),
        "{PEER_OBJECT} is missing: install Debian's xdp-tools (apt-get install -y xdp-tools)"
    );
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/guard-bench-{}", std::process::id()));
    fs::create_dir_all(&pin_dir).with_context(|| format!("creating {}", pin_dir.display()))?;
    let loaded = (|| -> Result<Ebpf> {
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&pin_dir)
            .load_file(PEER_OBJECT)
            .with_context(|| format!("loading {PEER_OBJECT} with aya"))?;
        let prog: &mut Xdp = ebpf
            .program_mut(PEER_PROGRAM)
            .ok_or_else(|| anyhow!("no program {PEER_PROGRAM} in {PEER_OBJECT}"))?
            .try_into()?;
        prog.load()
            .with_context(|| format!("verifier rejected {PEER_PROGRAM}"))?;
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow!("{what}: {e}"))?;
        let flags = || PerCpuValues::try_from(vec![PEER_FLAG_DST; cpus]);
        {
            let mut v4: PerCpuHashMap<_, u32, u64> = PerCpuHashMap::try_from(
                ebpf.map_mut("filter_ipv4")
                    .ok_or_else(|| anyhow!("no map filter_ipv4 in {PEER_OBJECT}"))?,
            )?;
            // The key is the address as it sits in the packet (read as a u32 in host order).
            v4.insert(u32::from_ne_bytes(TARGET4.octets()), flags()?, 0)
                .context("filling xdp-filter's filter_ipv4")?;
        }
        {
            let mut v6: PerCpuHashMap<_, [u8; 16], u64> = PerCpuHashMap::try_from(
                ebpf.map_mut("filter_ipv6")
                    .ok_or_else(|| anyhow!("no map filter_ipv6 in {PEER_OBJECT}"))?,
            )?;
            v6.insert(TARGET6.octets(), flags()?, 0)
                .context("filling xdp-filter's filter_ipv6")?;
        }
        Ok(ebpf)
    })();
    // The pins are only a side effect of the object's pinning attribute.
    let _ = fs::remove_dir_all(&pin_dir);
    loaded
}

/// Loads every contender for the policy sizes of `scale`: the floor, the peer, guard from
/// `object`, and guard from each of `candidates` (label, object).
pub fn load(object: &[u8], candidates: &[(String, Vec<u8>)], scale: &Scale) -> Result<Loaded> {
    let mut contenders = vec![
        Contender {
            label: "empty xdp".into(),
            kind: Kind::Floor,
            hook: Hook::Xdp,
            fd: ProgFd::Owned(sys::load_constant_program(
                BPF_PROG_TYPE_XDP,
                XDP_PASS,
                "bench_empty_xdp",
            )?),
        },
        Contender {
            label: "empty tc".into(),
            kind: Kind::Floor,
            hook: Hook::Tc,
            fd: ProgFd::Owned(sys::load_constant_program(
                BPF_PROG_TYPE_SCHED_CLS,
                TC_ACT_OK,
                "bench_empty_tc",
            )?),
        },
        Contender {
            label: "xdp-filter".into(),
            kind: Kind::Peer,
            hook: Hook::Xdp,
            fd: ProgFd::Peer,
        },
    ];
    let peer = load_peer()?;
    let mut guards = Vec::new();
    let mut guard_info = Vec::new();
    let objects = std::iter::once(("guard", object))
        .chain(candidates.iter().map(|(l, o)| (l.as_str(), o.as_slice())));
    for (variant, (name, obj)) in objects.enumerate() {
        for &n in scale.policy_sizes {
            load_guard(
                &mut guards,
                &mut guard_info,
                &mut contenders,
                name,
                variant,
                obj,
                n,
            )?;
        }
    }
    Ok(Loaded {
        contenders,
        guards,
        peer,
        guard_info,
    })
}

fn load_guard(
    guards: &mut Vec<Datapath>,
    guard_info: &mut Vec<ProgramFacts>,
    contenders: &mut Vec<Contender>,
    name: &str,
    variant: usize,
    object: &[u8],
    n: usize,
) -> Result<()> {
    {
        let policy = workload::guard_policy(&workload::prefixes(n));
        let dp = Datapath::load(object, &policy)
            .with_context(|| format!("loading {name} with {n} prefixes"))?;
        for hook in Hook::PORTS {
            let label = format!("{name} {} {}", hook_name(hook), size_label(n));
            let info = dp.program(hook)?.info()?;
            guard_info.push(ProgramFacts {
                label: label.clone(),
                id: info.id(),
                xlated_bytes: info.size_translated().unwrap_or(0),
                jited_bytes: info.size_jitted(),
            });
            contenders.push(Contender {
                label,
                kind: Kind::Guard {
                    prefixes: n,
                    variant,
                },
                hook,
                fd: ProgFd::Guard(guards.len()),
            });
        }
        guards.push(dp);
    }
    Ok(())
}

#[must_use]
pub fn hook_name(hook: Hook) -> &'static str {
    match hook {
        Hook::Xdp => "xdp",
        Hook::Tc => "tc",
        Hook::Bridge => "bridge",
    }
}

#[must_use]
pub fn size_label(n: usize) -> String {
    if n >= 1000 && n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

/// Is `retval` the verdict the contender must give on `path`?
fn expected(c: &Contender, path: &Path, retval: u32) -> bool {
    match (c.kind, c.hook) {
        (Kind::Floor, Hook::Xdp) => retval == XDP_PASS,
        (Kind::Floor, Hook::Tc | Hook::Bridge) => retval == TC_ACT_OK,
        (Kind::Peer, _) => retval == if path.peer_drops { XDP_DROP } else { XDP_PASS },
        (Kind::Guard { .. }, Hook::Xdp) => {
            retval == if path.guard_drops { XDP_DROP } else { XDP_PASS }
        }
        (Kind::Guard { .. }, Hook::Tc | Hook::Bridge) => {
            retval
                == if path.guard_drops {
                    TC_ACT_SHOT
                } else {
                    TC_ACT_OK
                }
        }
    }
}

/// ns per run of every (path, contender) cell, one sample per round: `[path][contender][round]`.
pub struct Samples {
    pub paths: Vec<Path>,
    pub ns: Vec<Vec<Vec<f64>>>,
}

/// Runs the interleaved rounds. Checks every verdict first: a contender that does not give the
/// verdict the path needs (a peer map filled wrongly, a guard regression) is an error, not a
/// number.
pub fn run(loaded: &Loaded, scale: &Scale) -> Result<Samples> {
    let paths = workload::paths();
    for path in &paths {
        for c in &loaded.contenders {
            let r = sys::test_run(loaded.fd(c)?, &path.frame, 1)
                .with_context(|| format!("test run of {} on {}", c.label, path.name))?;
            ensure!(
                expected(c, path, r.retval),
                "{} returned {} on {} ({}): not the verdict this bench assumes",
                c.label,
                r.retval,
                path.name,
                path.what
            );
        }
    }
    let n = loaded.contenders.len();
    let mut ns = vec![vec![Vec::with_capacity(scale.rounds); n]; paths.len()];
    for round in 0..scale.rounds {
        for (pi, path) in paths.iter().enumerate() {
            for k in 0..n {
                let ci = (k + round + pi) % n;
                let c = &loaded.contenders[ci];
                let r = sys::test_run(loaded.fd(c)?, &path.frame, scale.repeat)
                    .with_context(|| format!("test run of {} on {}", c.label, path.name))?;
                ns[pi][ci].push(f64::from(r.ns_per_run));
            }
        }
    }
    Ok(Samples { paths, ns })
}

/// Per-round ratio `a / b` of two cells of one path.
#[must_use]
pub fn ratio(samples: &Samples, path: usize, a: usize, b: usize) -> Summary {
    let r: Vec<f64> = samples.ns[path][a]
        .iter()
        .zip(&samples.ns[path][b])
        .map(|(x, y)| if *y > 0.0 { x / y } else { f64::NAN })
        .collect();
    Summary::of(&r)
}
