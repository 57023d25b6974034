//! The micro bench: kernel-timed `BPF_PROG_TEST_RUN` of every contender on every path.
//!
//! Contenders: the floor (`r0 = XDP_PASS; exit` and `r0 = TC_ACT_OK; exit`, loaded from raw
//! instructions: see [`sys::load_constant_program`]), the route lookup's floor (one bare
//! `bpf_fib_lookup`, [`sys::load_fib_lookup`]), the peer (xdp-filter's
//! `xdpfilt_alw_ip.o`, Debian's or `--peer`'s, loaded with aya, its maps holding the exact
//! target addresses with the destination flag), and guard's three programs (`guard_xdp`,
//! `guard_tc`, `guard_bridge`) at each policy size, in variants: the object under test as
//! attach configures it (the route check on), the same object with prefix rules only
//! (`GLOBAL_FLAG_NO_ROUTE_CHECK`: what the route check costs), and any `--candidate` objects.
//!
//! Every run happens on one thread that [`route_world::enter`] moved into the routing world:
//! `BPF_PROG_TEST_RUN` runs on the loopback device of the calling thread's namespace, and guard's
//! route check (`bpf_fib_lookup`) looks routes up there.
//!
//! One round runs every (path, contender) cell once with `repeat` runs, starting at a
//! different contender each round; the kernel reports the mean ns per run of the cell. Ratios
//! (guard / floor, guard / peer, large policy / small policy, variant / guard) are taken within
//! each round and summarised over rounds, so a slow stretch of the shared machine hits both
//! sides of a ratio.

use std::fs;
use std::os::fd::{AsFd as _, BorrowedFd, OwnedFd};
use std::path::{Path as FsPath, PathBuf};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use aya::maps::{PerCpuHashMap, PerCpuValues};
use aya::programs::Xdp;
use aya::{Ebpf, EbpfLoader};

use super::sys::{self, BPF_PROG_TYPE_SCHED_CLS, BPF_PROG_TYPE_XDP, TC_ACT_OK, XDP_DROP, XDP_PASS};
use super::workload::{self, Path, TARGET4, TARGET6};
use super::{Scale, Summary};
use crate::datapath::{Datapath, Hook};
use crate::route_world;

/// Debian's xdp-tools puts xdp-filter's programs here (the default peer).
pub const PEER_OBJECT: &str = "/usr/lib/x86_64-linux-gnu/bpf/xdpfilt_alw_ip.o";
/// The program's name in xdp-filter's objects (`FUNCNAME`); an object without it is searched
/// for its only XDP program.
const PEER_PROGRAM: &str = "xdpfilt_alw_ip";
/// xdp-filter's `MAP_FLAG_DST` (`common_kern_user.h`): match the destination address. Its
/// program tests `value & 2` after the destination lookup (see `llvm-objdump -d` of the object).
const PEER_FLAG_DST: u64 = 1 << 1;

/// `TC_ACT_SHOT`.
const TC_ACT_SHOT: u32 = 2;
/// `TC_ACT_UNSPEC` (-1) as the run returns it: guard's TC pass.
const TC_ACT_UNSPEC: u32 = u32::MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Floor,
    /// One bare `bpf_fib_lookup` of the frame's IPv4 destination ([`sys::load_fib_lookup`]):
    /// the floor under the route check.
    RouteFloor,
    Peer,
    /// guard, built as [`Loaded::variants`]`[variant]` says: 0 is the object under test as
    /// attach configures it.
    Guard {
        prefixes: usize,
        variant: usize,
    },
}

/// One way of running guard in the rounds.
#[derive(Clone, Debug)]
pub struct Variant {
    /// One word: the first word of its contenders' labels.
    pub name: String,
    pub what: String,
    /// Steps 8-9 of the contract on (off: `GLOBAL_FLAG_NO_ROUTE_CHECK`).
    pub route_check: bool,
    /// Step 10's replies on (`GLOBAL_FLAG_REPLIES`, as attach sets it by default).
    pub replies: bool,
    /// Step 10's exceptions: [`BENCH_EXCEPTIONS`] entries that match none of the paths (so a
    /// drop pays every lookup and still drops).
    pub exceptions: bool,
}

/// Exceptions in the `exceptions` variant.
pub const BENCH_EXCEPTIONS: u32 = 16;

/// `BENCH_EXCEPTIONS` per-port and all-port TCP holes to addresses no path sends to.
fn bench_exceptions() -> Vec<guard_common::model::Exception> {
    use guard_common::model::{Exception, Scope};
    (0..BENCH_EXCEPTIONS)
        .map(|i| {
            let v6 = i % 2 == 1;
            let n = u16::try_from(i).unwrap_or(0);
            Exception {
                scope: if i % 4 < 2 {
                    Scope::Ifindex(crate::datapath::TEST_IFINDEX)
                } else {
                    Scope::All
                },
                proto: 6,
                dport: 3260 + n,
                addr: if v6 {
                    std::net::IpAddr::from([0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, n + 1])
                } else {
                    std::net::IpAddr::from([198, 18, 255, u8::try_from(i + 1).unwrap_or(1)])
                },
                prefix_len: if v6 { 128 } else { 32 },
                rule_id: 900_000 + i,
            }
        })
        .collect()
}

/// The name of the built-in variant without the route check.
pub const PREFIX_ONLY: &str = "prefix-only";

/// One program under test.
pub struct Contender {
    pub label: String,
    pub kind: Kind,
    pub hook: Hook,
    fd: ProgFd,
}

enum ProgFd {
    Owned(OwnedFd),
    /// Index into [`Loaded::guards`]; the fd lives in the aya object.
    Guard(usize),
    Peer,
}

/// Everything loaded: owns the aya objects the contenders' fds live in.
pub struct Loaded {
    pub contenders: Vec<Contender>,
    pub variants: Vec<Variant>,
    guards: Vec<Datapath>,
    peer: Ebpf,
    peer_program: String,
    /// Size of each distinct program: guard's three (and each candidate's), and the peer.
    pub programs: Vec<ProgramFacts>,
}

/// What the kernel says about a loaded program (`bpftool prog show` has the same).
#[derive(Clone, Debug)]
pub struct ProgramFacts {
    pub label: String,
    pub id: u32,
    pub xlated_bytes: u32,
    pub jited_bytes: u32,
}

impl ProgramFacts {
    fn of(label: String, program: &aya::programs::Program) -> Result<Self> {
        let info = program.info()?;
        Ok(Self {
            label,
            id: info.id(),
            xlated_bytes: info.size_translated().unwrap_or(0),
            jited_bytes: info.size_jitted(),
        })
    }
}

impl Loaded {
    fn fd<'a>(&'a self, c: &'a Contender) -> Result<BorrowedFd<'a>> {
        Ok(match &c.fd {
            ProgFd::Owned(fd) => fd.as_fd(),
            ProgFd::Guard(i) => self.guards[*i].program(c.hook)?.fd()?.as_fd(),
            ProgFd::Peer => self.peer_program()?.fd()?.as_fd(),
        })
    }

    fn peer_program(&self) -> Result<&aya::programs::Program> {
        self.peer
            .program(&self.peer_program)
            .ok_or_else(|| anyhow!("no program {}", self.peer_program))
    }

    /// Does `c` (a floor or a guard) have to drop `path`? The peer's verdict is observed, not
    /// required: see [`Samples::peer_drops`].
    fn must_drop(&self, c: &Contender, path: &Path) -> bool {
        match c.kind {
            Kind::Floor | Kind::RouteFloor | Kind::Peer => false,
            Kind::Guard { variant, .. } => {
                if self.variants[variant].route_check {
                    path.guard_drops
                } else {
                    path.prefix_only_drops
                }
            }
        }
    }
}

/// Loads xdp-filter's object `file` with its maps pinned (the object asks for pinning by name)
/// in a private bpffs directory, which is removed again at once: the maps live on through their
/// fds, and no pin of a real xdp-filter on this machine is ever touched. Returns the object and
/// its program's name.
fn load_peer(file: &FsPath) -> Result<(Ebpf, String)> {
    ensure!(
        file.exists(),
        "{} is missing: install Debian's xdp-tools (apt-get install -y xdp-tools) or give --peer",
        file.display()
    );
    let shown = file.display();
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/guard-bench-{}", std::process::id()));
    fs::create_dir_all(&pin_dir).with_context(|| format!("creating {}", pin_dir.display()))?;
    let loaded = (|| -> Result<(Ebpf, String)> {
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&pin_dir)
            .load_file(file)
            .with_context(|| format!("loading {shown} with aya"))?;
        let name = if ebpf.program(PEER_PROGRAM).is_some() {
            PEER_PROGRAM.to_owned()
        } else {
            let xdp: Vec<&str> = ebpf
                .programs()
                .filter(|(_, p)| matches!(p, aya::programs::Program::Xdp(_)))
                .map(|(n, _)| n)
                .collect();
            match xdp.as_slice() {
                [one] => (*one).to_owned(),
                _ => bail!("{shown}: no {PEER_PROGRAM} and not exactly one XDP program: {xdp:?}"),
            }
        };
        let prog: &mut Xdp = ebpf
            .program_mut(&name)
            .ok_or_else(|| anyhow!("no program {name} in {shown}"))?
            .try_into()?;
        prog.load()
            .with_context(|| format!("verifier rejected {name} of {shown}"))?;
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow!("{what}: {e}"))?;
        let flags = || PerCpuValues::try_from(vec![PEER_FLAG_DST; cpus]);
        {
            let mut v4: PerCpuHashMap<_, u32, u64> = PerCpuHashMap::try_from(
                ebpf.map_mut("filter_ipv4")
                    .ok_or_else(|| anyhow!("no map filter_ipv4 in {shown}"))?,
            )?;
            // The key is the address as it sits in the packet (read as a u32 in host order).
            v4.insert(u32::from_ne_bytes(TARGET4.octets()), flags()?, 0)
                .context("filling xdp-filter's filter_ipv4")?;
        }
        {
            let mut v6: PerCpuHashMap<_, [u8; 16], u64> = PerCpuHashMap::try_from(
                ebpf.map_mut("filter_ipv6")
                    .ok_or_else(|| anyhow!("no map filter_ipv6 in {shown}"))?,
            )?;
            v6.insert(TARGET6.octets(), flags()?, 0)
                .context("filling xdp-filter's filter_ipv6")?;
        }
        Ok((ebpf, name))
    })();
    // The pins are only a side effect of the object's pinning attribute.
    let _ = fs::remove_dir_all(&pin_dir);
    loaded
}

/// The programs every path is measured against: the empty programs, the bare route lookup,
/// and the peer (whose fd lives in its aya object).
fn floors() -> Result<Vec<Contender>> {
    Ok(vec![
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
            label: "fib lookup xdp".into(),
            kind: Kind::RouteFloor,
            hook: Hook::Xdp,
            fd: ProgFd::Owned(sys::load_fib_lookup(
                route_world::GBR,
                if guard::attach::fib_skips_neigh() {
                    sys::BPF_FIB_LOOKUP_SKIP_NEIGH
                } else {
                    0
                },
            )?),
        },
        Contender {
            label: "xdp-filter".into(),
            kind: Kind::Peer,
            hook: Hook::Xdp,
            fd: ProgFd::Peer,
        },
    ])
}

/// Loads every contender for the policy sizes of `scale`: the floor, the peer from `peer`,
/// guard from `object` with and without the route check, and guard from each of `candidates`
/// (label, object).
pub fn load(
    object: &[u8],
    candidates: &[(String, Vec<u8>)],
    peer: &FsPath,
    scale: &Scale,
) -> Result<Loaded> {
    let mut contenders = floors()?;
    let (peer, peer_program) = load_peer(peer)?;
    let mut programs = vec![ProgramFacts::of(
        format!("xdp-filter {peer_program}"),
        peer.program(&peer_program)
            .ok_or_else(|| anyhow!("no program {peer_program}"))?,
    )?];
    let mut variants = vec![
        Variant {
            name: "guard".into(),
            what: "the object under test as attach configures it (route check and replies on)"
                .into(),
            route_check: true,
            replies: true,
            exceptions: false,
        },
        Variant {
            name: PREFIX_ONLY.into(),
            what: "the same object with prefix rules only (GLOBAL_FLAG_NO_ROUTE_CHECK)".into(),
            route_check: false,
            replies: true,
            exceptions: false,
        },
        Variant {
            name: "no-replies".into(),
            what: "the same object with replies off (--no-replies: step 10 skipped)".into(),
            route_check: true,
            replies: false,
            exceptions: false,
        },
        Variant {
            name: "exceptions".into(),
            what: format!(
                "the same object with {BENCH_EXCEPTIONS} exceptions installed, none matching"
            ),
            route_check: true,
            replies: true,
            exceptions: true,
        },
    ];
    let mut objects = vec![object, object, object, object];
    for (label, obj) in candidates {
        variants.push(Variant {
            name: label.clone(),
            what: "--candidate object (route check and replies on)".into(),
            route_check: true,
            replies: true,
            exceptions: false,
        });
        objects.push(obj);
    }
    let mut guards = Vec::new();
    for (variant, (v, obj)) in variants.iter().zip(objects).enumerate() {
        for (i, &n) in scale.policy_sizes.iter().enumerate() {
            let mut policy = workload::guard_policy(&workload::prefixes(n));
            policy.route_check = v.route_check;
            policy.replies = v.replies;
            if v.exceptions {
                policy.exceptions = true;
                policy.ingress_ifindex = crate::datapath::TEST_IFINDEX;
                policy.exception_table = bench_exceptions();
            }
            let dp = Datapath::load(obj, &policy)
                .with_context(|| format!("loading {} with {n} prefixes", v.name))?;
            for hook in Hook::ALL {
                // The program is the same at every size and with either setting: one row per
                // object.
                if i == 0 && variant != 1 && variant != 2 && variant != 3 {
                    let label = if variant == 0 {
                        hook.name().to_owned()
                    } else {
                        format!("{} {}", v.name, hook.name())
                    };
                    programs.push(ProgramFacts::of(label, dp.program(hook)?)?);
                }
                contenders.push(Contender {
                    label: format!("{} {} {}", v.name, hook_name(hook), size_label(n)),
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
    }
    Ok(Loaded {
        contenders,
        variants,
        guards,
        peer,
        peer_program,
        programs,
    })
}

#[must_use]
pub fn hook_name(hook: Hook) -> &'static str {
    match hook {
        Hook::Xdp => "xdp",
        Hook::Tc => "tc",
        Hook::Bridge => "bridge",
        Hook::Reply => "reply",
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

/// The drop verdict of `hook`'s program type (`XDP_DROP`, `TC_ACT_SHOT`), and its pass.
fn verdicts(hook: Hook) -> (u32, u32) {
    if hook.is_tc() {
        (TC_ACT_SHOT, TC_ACT_OK)
    } else {
        (XDP_DROP, XDP_PASS)
    }
}

/// ns per run of every (path, contender) cell, one sample per round: `[path][contender][round]`.
pub struct Samples {
    pub paths: Vec<Path>,
    pub ns: Vec<Vec<Vec<f64>>>,
    /// What the peer did on each path (the expected verdict is Debian's xdp-filter's; a newer
    /// object may differ).
    pub peer_drops: Vec<bool>,
    /// The paths where the peer's verdict differed from the expected one, said in words.
    pub peer_notes: Vec<String>,
}

/// Loads everything and runs the rounds on a thread of its own in the routing world (the
/// calling thread's namespace stays as it is: the flood and the control plane run from it).
pub fn measure(
    object: &[u8],
    candidates: &[(String, Vec<u8>)],
    peer: &FsPath,
    scale: &Scale,
) -> Result<(Loaded, Samples)> {
    std::thread::scope(|s| {
        let handle = s.spawn(|| -> Result<(Loaded, Samples)> {
            route_world::enter()?;
            let loaded = load(object, candidates, peer, scale)?;
            let samples = run(&loaded, scale)?;
            Ok((loaded, samples))
        });
        match handle.join() {
            Ok(r) => r,
            Err(payload) => std::panic::resume_unwind(payload),
        }
    })
}

/// Runs the interleaved rounds (from a thread in the routing world). Checks every verdict
/// first: a floor or a guard that does not give the verdict the path needs (a guard
/// regression, a routing world that is not there) is an error, not a number. The peer's
/// verdict is recorded: where it differs from the expected one, that is reported.
pub fn run(loaded: &Loaded, scale: &Scale) -> Result<Samples> {
    let paths = workload::paths();
    let mut peer_drops: Vec<bool> = paths.iter().map(|p| p.peer_drops).collect();
    let mut peer_notes = Vec::new();
    for (pi, path) in paths.iter().enumerate() {
        for c in &loaded.contenders {
            let r = sys::test_run(loaded.fd(c)?, &path.frame, 1)
                .with_context(|| format!("test run of {} on {}", c.label, path.name))?;
            let (drop, pass) = verdicts(c.hook);
            if c.kind == Kind::Peer {
                ensure!(
                    r.retval == drop || r.retval == pass,
                    "{} returned {} on {}: neither pass nor drop",
                    c.label,
                    r.retval,
                    path.name
                );
                let dropped = r.retval == drop;
                if dropped != path.peer_drops {
                    let word = |drops: bool| if drops { "drops" } else { "passes" };
                    peer_notes.push(format!(
                        "{} {} {} ({}); Debian's xdp-filter 1.3.1 {} it",
                        c.label,
                        word(dropped),
                        path.name,
                        path.what,
                        word(path.peer_drops),
                    ));
                }
                peer_drops[pi] = dropped;
                continue;
            }
            let must_drop = loaded.must_drop(c, path);
            // guard's TC programs pass with TC_ACT_UNSPEC (TCX_NEXT); older objects (a
            // candidate) and the floor with TC_ACT_OK.
            let passes = r.retval == pass || (c.hook.is_tc() && r.retval == TC_ACT_UNSPEC);
            let want = if must_drop { drop } else { pass };
            ensure!(
                if must_drop { r.retval == drop } else { passes },
                "{} returned {} on {} ({}), not {want}: not the verdict this bench assumes",
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
    Ok(Samples {
        paths,
        ns,
        peer_drops,
        peer_notes,
    })
}

/// Per-round ratio `a / b` of two cells of one path.
#[must_use]
pub fn ratio(samples: &Samples, path: usize, a: usize, b: usize) -> Summary {
    ratio_across(samples, path, a, path, b)
}

/// Per-round ratio of cell `a` of path `pa` to cell `b` of path `pb` (a guard drop to the
/// peer's drop of another path, where the peer cannot drop this one).
#[must_use]
pub fn ratio_across(samples: &Samples, pa: usize, a: usize, pb: usize, b: usize) -> Summary {
    let r: Vec<f64> = samples.ns[pa][a]
        .iter()
        .zip(&samples.ns[pb][b])
        .map(|(x, y)| if *y > 0.0 { x / y } else { f64::NAN })
        .collect();
    Summary::of(&r)
}

/// Per-round difference `a - b` in ns of two cells of one path.
#[must_use]
pub fn difference(samples: &Samples, path: usize, a: usize, b: usize) -> Summary {
    let d: Vec<f64> = samples.ns[path][a]
        .iter()
        .zip(&samples.ns[path][b])
        .map(|(x, y)| x - y)
        .collect();
    Summary::of(&d)
}
