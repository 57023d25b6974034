//! Runs guard's real programs on in-memory frames with `BPF_PROG_TEST_RUN`.
//!
//! [`Datapath::load`] loads an eBPF object (the embedded release build or a debug build from
//! disk) without pinning anything, loads `guard_xdp` and `guard_tc` without attaching them, and
//! fills the maps from a [`model::Policy`], so one policy drives both the kernel and the
//! reference model. Every load gets fresh maps: no state leaks from one policy to the next.
//! It can load `guard_reply` too ([`Hook::Reply`]), whose only output is what it writes into
//! `GUARD_FLOWS` ([`Datapath::flows`]).
//!
//! The kernel runs both test-run flavours on the loopback device of the caller's network
//! namespace: `bpf_prog_test_run_xdp` uses loopback's rx queue (so `ingress_ifindex` is 1) and
//! `bpf_prog_test_run_skb` sets `skb->dev` to loopback (so `__sk_buff.ifindex` is 1). The harness
//! therefore registers ifindex [`TEST_IFINDEX`] as port slot [`PORT_SLOT`], and a correct
//! program counts every frame in slot 1. Slot 0 (unregistered ports) is read too, so a frame
//! counted in the wrong slot shows up as a delta there. The same ifindex is the ingress
//! interface `i` of step 10 (exceptions scoped to a port), for the bridge device's hook too:
//! [`Policy::ingress_ifindex`] must be [`TEST_IFINDEX`] when the policy has exceptions
//! (checked at load).
//!
//! The model has no clock: a flow it lists is open. The harness writes each flow with the
//! current `CLOCK_MONOTONIC` time (`bpf_ktime_get_ns`'s clock), and a long run calls
//! [`Datapath::refresh_flows`] well within the shortest idle time (ICMP's 30 s).
//!
//! The route check looks routes up in that same namespace: every run happens from a thread
//! that [`route_world::enter`](crate::route_world::enter) moved into the routing world whose
//! FIB the policy's `routes` mirror.
//!
//! Counter deltas are exact: a [`Snapshot`] holds every (slot, reason) counter of slots 0 and 1
//! summed over CPUs, and the hit counter of every rule id in the policy; a delta is the
//! difference of two snapshots. Reading a snapshot costs about thirty map lookups, so the
//! differential test takes one per batch of frames rather than one per frame.

use std::collections::BTreeSet;
use std::net::IpAddr;

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use aya::maps::lpm_trie::Key;
use aya::maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray};
use aya::programs::{SchedClassifier, TestRun as _, TestRunOptions, Xdp};
use aya::{Ebpf, EbpfLoader};
use guard_common::mac::MacTable;
use guard_common::model::{Exception, Flow, Policy, Scope};
use guard_common::{
    ACTION_ALLOW, Counter, EXCEPTION_FIXED_BITS, Exception4, Exception6, FlowKey, FlowValue,
    GLOBAL_FLAG_ALLOW_TUNNELS, GLOBAL_FLAG_EXCEPTIONS, GLOBAL_FLAG_FIB_SKIP_NEIGH,
    GLOBAL_FLAG_MONITOR, GLOBAL_FLAG_NO_ROUTE_CHECK, GLOBAL_FLAG_REPLIES, GLOBAL_FLAG_STRICT_MAC,
    GlobalConfig, MAX_RULES, PORT_FLAG_EGRESS_OK, PORT_FLAG_MONITOR, PortConfig, PortSet,
    RuleValue, SCOPE_ALL, counter_index, map_names, program_names, reason,
};

use crate::route_world;

/// The ingress ifindex of a test run: loopback (see the module documentation).
pub const TEST_IFINDEX: u32 = 1;
/// The counter slot the harness gives [`TEST_IFINDEX`].
pub const PORT_SLOT: u32 = 1;
/// Counter slots a snapshot covers: 0 (unregistered ports) and [`PORT_SLOT`].
const SLOTS: [u32; 2] = [0, PORT_SLOT];
/// Shortest frame `BPF_PROG_TEST_RUN` accepts (`bpf_test_init` rejects less than `ETH_HLEN`).
pub const MIN_FRAME: usize = 14;
/// Longest frame the harness runs: comfortably below the page-size limit of `bpf_test_init`
/// (4096 minus head- and tailroom) for both program types.
pub const MAX_FRAME: usize = 2048;

/// Does `bpf_prog_test_run_skb` refuse `frame` (`EINVAL`) before running the program?
///
/// Measured on the 6.18 test kernel: the skb test run rejects a frame whose EtherType at offset
/// 12 is IPv4 (IPv6) but which has fewer than 20 (40) bytes after the Ethernet header; the
/// kernel looks at that L3 header itself while building the skb. XDP runs such frames, and a
/// live TC hook sees them too, so the TC program's handling of them is only covered through
/// the XDP runs of the same classifier code. Tests assert the refusal instead of skipping it,
/// so a kernel that starts running these frames makes them fail and get checked.
#[must_use]
pub fn skb_test_run_refuses(frame: &[u8]) -> bool {
    let Some(ethertype) = frame.get(12..14) else {
        return false;
    };
    let l3 = frame.len().saturating_sub(14);
    match u16::from_be_bytes([ethertype[0], ethertype[1]]) {
        0x0800 => l3 < 20,
        0x86dd => l3 < 40,
        _ => false,
    }
}

/// Which program runs the frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// A port's XDP program.
    Xdp,
    /// A port's TC program.
    Tc,
    /// The bridge device's TC program (every frame host-bound).
    Bridge,
    /// The bridge device's TC egress program that records flows (`guard_reply`): always
    /// `TC_ACT_UNSPEC`, judged by what it writes into `GUARD_FLOWS`. In none of the lists below.
    Reply,
}

impl Hook {
    pub const ALL: [Hook; 3] = [Hook::Xdp, Hook::Tc, Hook::Bridge];
    /// The programs of a bridge port.
    pub const PORTS: [Hook; 2] = [Hook::Xdp, Hook::Tc];

    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Hook::Xdp => program_names::XDP,
            Hook::Tc => program_names::TC,
            Hook::Bridge => program_names::BRIDGE,
            Hook::Reply => program_names::REPLY,
        }
    }

    /// Is it a TC program (an skb test run, with its refusals)?
    #[must_use]
    pub const fn is_tc(self) -> bool {
        matches!(self, Hook::Tc | Hook::Bridge | Hook::Reply)
    }

    /// The policy the reference model judges this hook's frames with.
    #[must_use]
    pub fn model_policy(self, policy: &Policy) -> Policy {
        let mut p = policy.clone();
        p.bridge_hook = self == Hook::Bridge;
        p
    }
}

/// One counter slot that changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct CounterDelta {
    pub slot: u32,
    pub reason: u32,
    pub packets: u64,
    pub bytes: u64,
}

/// Everything one frame did: the verdict and every counter that moved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Run {
    pub drop: bool,
    /// Changed (slot, reason) counters, in slot then reason order.
    pub counters: Vec<CounterDelta>,
    /// Changed rule hit counters: (rule id, increase), in rule id order.
    pub rule_hits: Vec<(u32, u64)>,
}

/// The counters of slots 0 and [`PORT_SLOT`] (summed over CPUs) and the policy's rule hits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// `(slot, reason, counter)` for every reason code of every slot in [`SLOTS`].
    counters: Vec<(u32, u32, Counter)>,
    /// `(rule id, hits)` for every rule id of the policy.
    hits: Vec<(u32, u64)>,
}

impl Snapshot {
    /// What changed from `earlier` to `self`. Counters only grow, so a decrease is reported as
    /// an error by the caller's comparison (it shows up as a huge wrapped delta).
    #[must_use]
    pub fn since(&self, earlier: &Snapshot) -> (Vec<CounterDelta>, Vec<(u32, u64)>) {
        let counters = self
            .counters
            .iter()
            .zip(&earlier.counters)
            .filter(|(now, then)| now.2 != then.2)
            .map(|((slot, reason, now), (_, _, then))| CounterDelta {
                slot: *slot,
                reason: *reason,
                packets: now.packets.wrapping_sub(then.packets),
                bytes: now.bytes.wrapping_sub(then.bytes),
            })
            .collect();
        let hits = self
            .hits
            .iter()
            .zip(&earlier.hits)
            .filter(|(now, then)| now.1 != then.1)
            .map(|(now, then)| (now.0, now.1.wrapping_sub(then.1)))
            .collect();
        (counters, hits)
    }
}

/// A loaded object with its maps filled from one policy.
pub struct Datapath {
    ebpf: Ebpf,
    counters: PerCpuArray<MapData, Counter>,
    hits: Array<MapData, u64>,
    /// The policy's rule ids, deduplicated and sorted (the hit counters a snapshot reads).
    rule_ids: Vec<u32>,
}

impl Datapath {
    /// Loads `object`, both programs and the maps for `policy`. Needs root (or `CAP_BPF` +
    /// `CAP_NET_ADMIN`).
    pub fn load(object: &[u8], policy: &Policy) -> Result<Self> {
        Self::load_hooks(object, policy, &Hook::ALL)
    }

    /// Like [`Datapath::load`], but puts only the programs of `hooks` through the verifier:
    /// a rejected program then fails its own load and no other (the VM matrix reports each
    /// hook apart). Running a hook that was not loaded is an error.
    pub fn load_hooks(object: &[u8], policy: &Policy, hooks: &[Hook]) -> Result<Self> {
        let mut ebpf = EbpfLoader::new()
            .load(object)
            .context("loading the eBPF object (maps and BTF)")?;
        for &hook in hooks {
            let name = hook.name();
            let program = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("no program {name} in the object"))?;
            // aya's load error carries the verifier log in its message.
            let loaded = match hook {
                Hook::Xdp => <&mut Xdp>::try_from(program)?.load(),
                Hook::Tc | Hook::Bridge | Hook::Reply => {
                    <&mut SchedClassifier>::try_from(program)?.load()
                }
            };
            loaded.with_context(|| format!("verifier rejected {name}"))?;
        }
        fill_maps(&mut ebpf, policy)?;
        let counters = PerCpuArray::try_from(take_map(&mut ebpf, map_names::COUNTERS)?)?;
        let hits = Array::try_from(take_map(&mut ebpf, map_names::RULE_HITS)?)?;
        // Deny rules and exceptions: both have hit counters.
        let rule_ids: BTreeSet<u32> = policy
            .rules
            .iter()
            .map(|r| r.rule_id)
            .chain(policy.exception_table.iter().map(|e| e.rule_id))
            .filter(|id| *id != 0 && *id < MAX_RULES)
            .collect();
        Ok(Self {
            ebpf,
            counters,
            hits,
            rule_ids: rule_ids.into_iter().collect(),
        })
    }

    /// Runs `frame` once and returns whether the program dropped it. Touches no map from
    /// userspace: the cheap call for bulk runs.
    pub fn verdict(&self, hook: Hook, frame: &[u8]) -> Result<bool> {
        let ret = self.test_run(hook, frame, 1)?.return_value;
        // XDP_DROP = 1, XDP_PASS = 2; TC_ACT_SHOT = 2, TC_ACT_UNSPEC = -1 (guard's TC pass:
        // TCX_NEXT, so programs after it still run). Anything else is a verdict guard never
        // means to give (XDP_ABORTED = 0 would be a program error, TC_ACT_OK would end a TCX
        // chain).
        match (hook.is_tc(), ret) {
            (false, 1) | (true, 2) => Ok(true),
            (false, 2) | (true, u32::MAX) => Ok(false),
            _ => bail!("{} returned unexpected verdict {ret}", hook.name()),
        }
    }

    /// Runs `frame` once and returns the verdict with exact counter and rule-hit deltas.
    pub fn run(&self, hook: Hook, frame: &[u8]) -> Result<Run> {
        let before = self.snapshot()?;
        let drop = self.verdict(hook, frame)?;
        let (counters, rule_hits) = self.snapshot()?.since(&before);
        Ok(Run {
            drop,
            counters,
            rule_hits,
        })
    }

    /// The kernel's average run time in nanoseconds over `repeat` runs of `frame` (the program
    /// alone, without the syscall: `BPF_PROG_TEST_RUN` times the loop in the kernel).
    pub fn ns_per_run(&self, hook: Hook, frame: &[u8], repeat: u32) -> Result<u64> {
        let d = self.test_run(hook, frame, repeat.max(1))?.duration;
        Ok(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }

    /// The loaded program of `hook`, for callers that drive `BPF_PROG_TEST_RUN` themselves
    /// (the bench times every program through one raw code path).
    pub fn program(&self, hook: Hook) -> Result<&aya::programs::Program> {
        self.ebpf
            .program(hook.name())
            .ok_or_else(|| anyhow!("no program {}", hook.name()))
    }

    /// Every entry of `GUARD_FLOWS` (the flow table of step 10), in no particular order.
    pub fn flows(&self) -> Result<Vec<(FlowKey, FlowValue)>> {
        let map = self
            .ebpf
            .map(map_names::FLOWS)
            .ok_or_else(|| anyhow!("no map {} in the object", map_names::FLOWS))?;
        let flows: HashMap<_, FlowKey, FlowValue> = HashMap::try_from(map)?;
        flows
            .iter()
            .map(|e| e.context("reading GUARD_FLOWS"))
            .collect()
    }

    /// Writes `policy`'s flows again with the current time, so that none reaches its idle
    /// time during a run longer than the shortest of them (the model knows no time).
    pub fn refresh_flows(&mut self, policy: &Policy) -> Result<()> {
        write_flows(&mut self.ebpf, &policy.flows)
    }

    /// Reads every counter of slots 0 and [`PORT_SLOT`] and the policy's rule hit counters.
    pub fn snapshot(&self) -> Result<Snapshot> {
        let mut counters = Vec::with_capacity(SLOTS.len() * reason::COUNT as usize);
        for slot in SLOTS {
            for r in 0..reason::COUNT {
                let per_cpu = self
                    .counters
                    .get(&counter_index(slot, r), 0)
                    .with_context(|| format!("reading counter ({slot}, {r})"))?;
                let sum = per_cpu.iter().fold(Counter::default(), |acc, c| Counter {
                    packets: acc.packets.wrapping_add(c.packets),
                    bytes: acc.bytes.wrapping_add(c.bytes),
                });
                counters.push((slot, r, sum));
            }
        }
        let hits = self
            .rule_ids
            .iter()
            .map(|id| {
                self.hits
                    .get(id, 0)
                    .map(|h| (*id, h))
                    .with_context(|| format!("reading hit counter of rule {id}"))
            })
            .collect::<Result<_>>()?;
        Ok(Snapshot { counters, hits })
    }

    fn test_run(
        &self,
        hook: Hook,
        frame: &[u8],
        repeat: u32,
    ) -> Result<aya::programs::TestRunResult> {
        ensure!(
            (MIN_FRAME..=MAX_FRAME).contains(&frame.len()),
            "BPF_PROG_TEST_RUN cannot run a {}-byte frame (needs {MIN_FRAME}..={MAX_FRAME})",
            frame.len()
        );
        // The route check consults the FIB of the running thread's namespace.
        route_world::enter()?;
        let opts = TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::default()
        };
        let program = self
            .ebpf
            .program(hook.name())
            .ok_or_else(|| anyhow!("no program {}", hook.name()))?;
        let result = match hook {
            Hook::Xdp => <&Xdp>::try_from(program)?.test_run(opts),
            Hook::Tc | Hook::Bridge | Hook::Reply => {
                <&SchedClassifier>::try_from(program)?.test_run(opts)
            }
        };
        result.with_context(|| format!("BPF_PROG_TEST_RUN of {}", hook.name()))
    }
}

fn take_map(ebpf: &mut Ebpf, name: &str) -> Result<aya::maps::Map> {
    ebpf.take_map(name)
        .ok_or_else(|| anyhow!("no map {name} in the object"))
}

fn map_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::maps::Map> {
    ebpf.map_mut(name)
        .ok_or_else(|| anyhow!("no map {name} in the object"))
}

/// Writes `policy` into the freshly loaded (all-zero) maps.
fn fill_maps(ebpf: &mut Ebpf, policy: &Policy) -> Result<()> {
    // Only exceptions read `i`; a policy without them may leave it unset.
    ensure!(
        policy.ingress_ifindex == TEST_IFINDEX || policy.exception_table.is_empty(),
        "the policy's ingress ifindex is {}, but every test run arrives on {TEST_IFINDEX}",
        policy.ingress_ifindex
    );
    let mut flags = 0;
    for (on, flag) in [
        (policy.exceptions, GLOBAL_FLAG_EXCEPTIONS),
        (policy.replies, GLOBAL_FLAG_REPLIES),
        (policy.strict_mac, GLOBAL_FLAG_STRICT_MAC),
        (policy.monitor, GLOBAL_FLAG_MONITOR),
        (policy.allow_tunnels, GLOBAL_FLAG_ALLOW_TUNNELS),
        (!policy.route_check, GLOBAL_FLAG_NO_ROUTE_CHECK),
        // Passed exactly where attach passes it (Linux 6.3+, which has the flag).
        (guard::attach::fib_skips_neigh(), GLOBAL_FLAG_FIB_SKIP_NEIGH),
    ] {
        if on {
            flags |= flag;
        }
    }
    let mut config: Array<_, GlobalConfig> = Array::try_from(map_mut(ebpf, map_names::CONFIG)?)?;
    config.set(
        0,
        GlobalConfig {
            flags,
            // No event reader in a test run: events stay off (they never change verdicts
            // or counters, docs/observe.md).
            event_rate: 0,
            bridge_ifindex: policy.bridge_ifindex,
            generation: 0,
        },
        0,
    )?;

    let mut ports: Array<_, PortConfig> = Array::try_from(map_mut(ebpf, map_names::PORTS)?)?;
    for &ifindex in &policy.egress_ok {
        ports.set(
            ifindex,
            PortConfig {
                slot: 0,
                flags: PORT_FLAG_EGRESS_OK,
            },
            0,
        )?;
    }
    // The test port last: in the routing world it is loopback, which is never an egress.
    ports.set(
        TEST_IFINDEX,
        PortConfig {
            slot: PORT_SLOT,
            flags: if policy.port_monitor {
                PORT_FLAG_MONITOR
            } else {
                0
            },
        },
        0,
    )?;

    let mut tunnel_ports = Box::new(PortSet::new());
    for &p in &policy.tunnel_ports {
        tunnel_ports.insert(p);
    }
    let mut set: Array<_, PortSet> = Array::try_from(map_mut(ebpf, map_names::TUNNEL_PORTS)?)?;
    set.set(0, *tunnel_ports, 0)?;

    // 32 KiB: built on the heap, not on the test thread's stack.
    let mut table = Box::new(MacTable::new());
    for mac in &policy.host_macs {
        table
            .insert(*mac)
            .map_err(|e| anyhow!("host MAC table: {e:?}"))?;
    }
    let mut macs: Array<_, MacTable> = Array::try_from(map_mut(ebpf, map_names::MAC_TABLE)?)?;
    macs.set(0, *table, 0)?;

    // Inserted in policy order, so a later duplicate prefix replaces an earlier one (what the
    // model assumes too).
    for rule in &policy.rules {
        let value = RuleValue {
            rule_id: rule.rule_id,
            action: rule.action,
            class: rule.class,
        };
        let prefix_len = u32::from(rule.prefix_len);
        match rule.addr {
            IpAddr::V4(a) => {
                let mut trie: LpmTrie<_, [u8; 4], RuleValue> =
                    LpmTrie::try_from(map_mut(ebpf, map_names::RULES_V4)?)?;
                trie.insert(&Key::new(prefix_len, a.octets()), value, 0)
                    .with_context(|| format!("inserting {a}/{prefix_len}"))?;
            }
            IpAddr::V6(a) => {
                let mut trie: LpmTrie<_, [u8; 16], RuleValue> =
                    LpmTrie::try_from(map_mut(ebpf, map_names::RULES_V6)?)?;
                trie.insert(&Key::new(prefix_len, a.octets()), value, 0)
                    .with_context(|| format!("inserting {a}/{prefix_len}"))?;
            }
        }
    }
    for e in &policy.exception_table {
        write_exception(ebpf, e)?;
    }
    write_flows(ebpf, &policy.flows)
}

/// One exception into `GUARD_EXC_V4`/`V6`, as userspace will write it: an allow value, the
/// key's prefix length counting the fixed part (scope, protocol, port) too.
fn write_exception(ebpf: &mut Ebpf, e: &Exception) -> Result<()> {
    ensure!(
        e.rule_id != 0,
        "exception {e:?}: rule id 0 (the contract never has one)"
    );
    let scope = match e.scope {
        Scope::All => SCOPE_ALL,
        Scope::Ifindex(i) => {
            ensure!(i != SCOPE_ALL, "exception {e:?}: ifindex 0 would mean all");
            i
        }
    };
    let value = RuleValue {
        rule_id: e.rule_id,
        action: ACTION_ALLOW,
        class: 0,
    };
    let prefix_len = EXCEPTION_FIXED_BITS + u32::from(e.prefix_len);
    let dport = e.dport.to_be_bytes();
    match e.addr {
        IpAddr::V4(a) => {
            let mut trie: LpmTrie<_, Exception4, RuleValue> =
                LpmTrie::try_from(map_mut(ebpf, map_names::EXCEPTIONS_V4)?)?;
            let data = Exception4 {
                scope,
                proto: e.proto,
                pad: 0,
                dport,
                addr: a.octets(),
            };
            trie.insert(&Key::new(prefix_len, data), value, 0)
        }
        IpAddr::V6(a) => {
            let mut trie: LpmTrie<_, Exception6, RuleValue> =
                LpmTrie::try_from(map_mut(ebpf, map_names::EXCEPTIONS_V6)?)?;
            let data = Exception6 {
                scope,
                proto: e.proto,
                pad: 0,
                dport,
                addr: a.octets(),
            };
            trie.insert(&Key::new(prefix_len, data), value, 0)
        }
    }
    .with_context(|| format!("inserting exception {e:?}"))
}

/// The kernel's key of a flow: addresses as network-order bytes in 32-bit words (IPv4 in word
/// 0), ports as network-order bytes.
///
/// # Errors
/// When `guest` and `peer` are of different families (no packet has such a key).
pub fn flow_key(flow: &Flow) -> Result<FlowKey> {
    let words = |a: IpAddr| -> [u32; 4] {
        let mut w = [0; 4];
        let bytes = match a {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        };
        for (word, chunk) in w.iter_mut().zip(bytes.chunks(4)) {
            *word = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        }
        w
    };
    let family = match (flow.guest, flow.peer) {
        (IpAddr::V4(_), IpAddr::V4(_)) => 4,
        (IpAddr::V6(_), IpAddr::V6(_)) => 6,
        _ => bail!("flow {flow:?} mixes families"),
    };
    Ok(FlowKey {
        guest: words(flow.guest),
        peer: words(flow.peer),
        guest_port: u16::from_ne_bytes(flow.guest_port.to_be_bytes()),
        peer_port: u16::from_ne_bytes(flow.peer_port.to_be_bytes()),
        proto: flow.proto,
        family,
        pad: [0; 2],
    })
}

/// `flows` into `GUARD_FLOWS`, seen now (`CLOCK_MONOTONIC`, the clock of `bpf_ktime_get_ns`).
fn write_flows(ebpf: &mut Ebpf, flows: &[Flow]) -> Result<()> {
    if flows.is_empty() {
        // Nothing to write: also loads objects built before step 10 (a bench candidate).
        return Ok(());
    }
    let mut map: HashMap<_, FlowKey, FlowValue> =
        HashMap::try_from(map_mut(ebpf, map_names::FLOWS)?)?;
    let seen_ns = guard::events::monotonic_ns();
    let mut slots = Vec::new();
    for flow in flows {
        let key = flow_key(flow)?;
        slots.push(guard_common::flow_hint_slot(&key));
        map.insert(key, FlowValue { seen_ns }, 0)
            .with_context(|| format!("inserting flow {flow:?}"))?;
    }
    // The hints `guard_reply` would have set with them.
    let mut hints: Array<_, u32> = Array::try_from(map_mut(ebpf, map_names::FLOW_HINTS)?)?;
    for slot in slots {
        hints.set(slot, 1, 0).context("setting a flow hint")?;
    }
    Ok(())
}

/// The counter and rule-hit deltas the contract requires for a frame of `len` bytes that got
/// `decision` on the test port: exactly one slot `(PORT_SLOT, reason)` +1 packet +`len` bytes,
/// and +1 on the deny rule's hit counter when a deny entry caused the verdict.
#[must_use]
pub fn expected_run(decision: &guard_common::model::Decision, len: usize) -> Run {
    let rule_hits = if decision.counts_rule_hit() && decision.rule_id != 0 {
        vec![(decision.rule_id, 1)]
    } else {
        Vec::new()
    };
    Run {
        drop: decision.drop,
        counters: vec![CounterDelta {
            slot: PORT_SLOT,
            reason: decision.reason,
            packets: 1,
            bytes: len as u64,
        }],
        rule_hits,
    }
}

/// `frame` as lowercase hex, 16 bytes a line, for failure messages.
#[must_use]
pub fn hex(frame: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(frame.len() * 3);
    for (i, chunk) in frame.chunks(16).enumerate() {
        let _ = write!(s, "{:04x}:", i * 16);
        for b in chunk {
            let _ = write!(s, " {b:02x}");
        }
        s.push('\n');
    }
    s
}
