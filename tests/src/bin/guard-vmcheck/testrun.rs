//! guard's real programs on in-memory frames (`BPF_PROG_TEST_RUN`), on whatever kernel this
//! runs on: a compact table of representative cases (pass, drop, malformed, ARP, NDP, VLAN,
//! monitor) with verdict and exact counter checks.
//!
//! The full 120-case table lives on the `datapath-tests` branch (tests/src/datapath.rs). This
//! runner only needs a list of [`Case`]s, so once that table is merged it can be fed here in
//! place of [`cases`] and run on every kernel of the matrix.
//!
//! The kernel runs both test-run flavours on the loopback device of the caller's namespace
//! (`bpf_prog_test_run_xdp` uses loopback's rx queue, `bpf_prog_test_run_skb` sets `skb->dev`
//! to loopback), so ifindex 1 is registered as port slot [`SLOT`]: a frame counted anywhere
//! else shows up as a wrong delta.

use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, LpmTrie, MapData, PerCpuArray, lpm_trie::Key},
    programs::{SchedClassifier, TestRun as _, TestRunOptions, Xdp},
};
use guard_common::{
    ACTION_ALLOW, ACTION_DENY, CLASS_MANAGEMENT, CLASS_STORAGE, Counter, GLOBAL_FLAG_MONITOR,
    GlobalConfig, PortConfig, RuleValue, counter_index, mac::MacTable, map_names, program_names,
    reason,
};
use serde::Serialize;

use crate::frames::{
    BROADCAST, ETH_P_8021AD, ETH_P_8021Q, ETH_P_ARP, ETH_P_IPV4, ETH_P_IPV6, Mac, arp_request, cat,
    eth, ipv4, ipv6, ipv6_plain, ndp_ns, solicited_node,
};

const TEST_IFINDEX: u32 = 1;
const SLOT: u32 = 1;
const HOST: Mac = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
const GUEST: Mac = [0x02, 0x00, 0x00, 0x00, 0x00, 0x99];
const OTHER: Mac = [0x02, 0x00, 0x00, 0x00, 0x00, 0x42];
const SRC4: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
/// Denied (storage) with an allow hole at `.53`.
const STORAGE4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const HOLE4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 53);
const OPEN4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const SRC6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2);
const MGMT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x99, 0, 0, 0, 0, 0x10);
const OPEN6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x1, 0, 0, 0, 0, 1);
const RULE_STORAGE: u32 = 1;
const RULE_HOLE: u32 = 2;
const RULE_MGMT6: u32 = 3;

/// Which program runs the frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Hook {
    Xdp,
    Tc,
}

impl Hook {
    const fn program(self) -> &'static str {
        match self {
            Self::Xdp => program_names::XDP,
            Self::Tc => program_names::TC,
        }
    }
}

/// One frame and what guard must do with it.
pub struct Case {
    pub name: &'static str,
    pub frame: Vec<u8>,
    pub drop: bool,
    pub reason: u32,
    /// The deny rule whose hit counter must move (0: none may).
    pub rule_id: u32,
    /// Run with the global monitor flag set.
    pub monitor: bool,
    /// `bpf_prog_test_run_skb` refuses frames whose L3 header is shorter than the `EtherType`
    /// promises (measured on 6.18; the kernel builds the skb from it): for TC the case checks
    /// that refusal instead of a verdict.
    pub skb_refuses: bool,
}

fn case(name: &'static str, frame: Vec<u8>, reason: u32, rule_id: u32) -> Case {
    Case {
        name,
        frame,
        drop: reason::is_drop(reason),
        reason,
        rule_id,
        monitor: false,
        skb_refuses: false,
    }
}

fn v4(dst: Mac, tags: &[(u16, u16)], to: Ipv4Addr) -> Vec<u8> {
    cat(eth(dst, GUEST, tags, ETH_P_IPV4), &ipv4(SRC4, to, &[0; 8]))
}

/// The representative cases. Frames are at least 60 bytes where the wire would pad them, so
/// the skb test run sees what a live TC hook sees.
#[must_use]
#[expect(
    clippy::too_many_lines,
    reason = "a table of cases, one entry each, read top to bottom"
)]
pub fn cases() -> Vec<Case> {
    let q = |vid: u16| (ETH_P_8021Q, vid);
    let ad = |vid: u16| (ETH_P_8021AD, vid);
    let (sn_ip, sn_mac) = solicited_node(MGMT6);
    let mut truncated = eth(HOST, GUEST, &[], ETH_P_IPV4);
    truncated.extend_from_slice(&[0x45, 0, 0, 20, 0, 0]);
    let mut bad_ihl = v4(HOST, &[], STORAGE4);
    bad_ihl[14] = 0x44;
    let mut long_total = v4(HOST, &[], STORAGE4);
    long_total[16..18].copy_from_slice(&200u16.to_be_bytes());
    let mut bad_arp = cat(
        eth(BROADCAST, GUEST, &[], ETH_P_ARP),
        &arp_request(GUEST, SRC4, OPEN4),
    );
    bad_arp[15] = 6; // hardware type 6 (IEEE 802), not Ethernet
    let mut arp_sender = arp_request(GUEST, STORAGE4, OPEN4);
    arp_sender.resize(46, 0);
    let hbh_ns = {
        // Hop-by-hop header (8 bytes, PadN) in front of the solicitation.
        let mut ext = vec![58, 0, 1, 4, 0, 0, 0, 0];
        ext.extend_from_slice(&ndp_ns(MGMT6, &[]));
        cat(
            eth(sn_mac, GUEST, &[], ETH_P_IPV6),
            &ipv6(SRC6, sn_ip, 0, &ext),
        )
    };
    let mut v = vec![
        case(
            "ipv4 to another guest's MAC: not looked at",
            v4(OTHER, &[], STORAGE4),
            reason::NOT_HOST,
            0,
        ),
        case(
            "ipv4 to host MAC, storage address",
            v4(HOST, &[], STORAGE4),
            reason::DENY_IPV4,
            RULE_STORAGE,
        ),
        case(
            "ipv4 to host MAC, allow hole in storage",
            v4(HOST, &[], HOLE4),
            reason::ALLOW,
            0,
        ),
        case(
            "ipv4 to host MAC, unprotected address",
            v4(HOST, &[], OPEN4),
            reason::HOST_PASS,
            0,
        ),
        case(
            "ipv4 in L2 broadcast, storage address",
            v4(BROADCAST, &[], STORAGE4),
            reason::DENY_IPV4,
            RULE_STORAGE,
        ),
        case(
            "ipv6 to host MAC, management address",
            cat(
                eth(HOST, GUEST, &[], ETH_P_IPV6),
                &ipv6_plain(SRC6, MGMT6, &[0; 8]),
            ),
            reason::DENY_IPV6,
            RULE_MGMT6,
        ),
        case(
            "ipv6 to host MAC, unprotected address",
            cat(
                eth(HOST, GUEST, &[], ETH_P_IPV6),
                &ipv6_plain(SRC6, OPEN6, &[0; 8]),
            ),
            reason::HOST_PASS,
            0,
        ),
        case(
            "arp who-has storage address",
            cat(
                eth(BROADCAST, GUEST, &[], ETH_P_ARP),
                &arp_request(GUEST, SRC4, STORAGE4),
            ),
            reason::DENY_ARP,
            RULE_STORAGE,
        ),
        case(
            "arp who-has unprotected address",
            cat(
                eth(BROADCAST, GUEST, &[], ETH_P_ARP),
                &arp_request(GUEST, SRC4, OPEN4),
            ),
            reason::HOST_PASS,
            0,
        ),
        case(
            "arp with storage sender address",
            cat(eth(BROADCAST, GUEST, &[], ETH_P_ARP), &arp_sender),
            reason::DENY_ARP,
            RULE_STORAGE,
        ),
        case(
            "arp with hardware type 6: malformed",
            bad_arp,
            reason::MALFORMED,
            0,
        ),
        case(
            "ndp solicitation for management address",
            cat(
                eth(sn_mac, GUEST, &[], ETH_P_IPV6),
                &ipv6(SRC6, sn_ip, 58, &ndp_ns(MGMT6, &[])),
            ),
            reason::DENY_NDP,
            RULE_MGMT6,
        ),
        case(
            "ndp solicitation behind hop-by-hop header",
            hbh_ns,
            reason::DENY_NDP,
            RULE_MGMT6,
        ),
        case(
            "802.1Q tag, storage address",
            v4(HOST, &[q(10)], STORAGE4),
            reason::DENY_IPV4,
            RULE_STORAGE,
        ),
        case(
            "priority tag (VLAN 0), storage address",
            v4(HOST, &[q(0)], STORAGE4),
            reason::DENY_IPV4,
            RULE_STORAGE,
        ),
        case(
            "802.1ad + 802.1Q, storage address",
            v4(HOST, &[ad(100), q(10)], STORAGE4),
            reason::DENY_IPV4,
            RULE_STORAGE,
        ),
        case(
            "three tags: malformed",
            v4(HOST, &[ad(1), q(2), q(3)], OPEN4),
            reason::MALFORMED,
            0,
        ),
        case("ipv4 IHL 4: malformed", bad_ihl, reason::MALFORMED, 0),
        case(
            "ipv4 total length past frame: malformed",
            long_total,
            reason::MALFORMED,
            0,
        ),
        case(
            "LLDP to host MAC: not IP",
            cat(eth(HOST, GUEST, &[], 0x88cc), &[0; 46]),
            reason::HOST_PASS,
            0,
        ),
        Case {
            monitor: true,
            ..case(
                "monitor mode: storage address counted, passed",
                v4(HOST, &[], STORAGE4),
                reason::MONITOR_IPV4,
                RULE_STORAGE,
            )
        },
    ];
    v.push(Case {
        skb_refuses: true,
        ..case(
            "ipv4 header cut short: malformed",
            truncated,
            reason::MALFORMED,
            0,
        )
    });
    v
}

/// What one hook did with the table.
#[derive(Debug, Default, Serialize)]
pub struct Outcome {
    pub hook: Option<Hook>,
    pub passed: usize,
    pub total: usize,
    pub failures: Vec<String>,
    /// The load error with the verifier log, if the program was rejected.
    pub load_error: Option<String>,
}

struct Loaded {
    ebpf: Ebpf,
    counters: PerCpuArray<MapData, Counter>,
    hits: Array<MapData, u64>,
}

fn map_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::maps::Map> {
    ebpf.map_mut(name)
        .ok_or_else(|| anyhow!("no map {name} in the object"))
}

fn set_monitor(ebpf: &mut Ebpf, on: bool) -> Result<()> {
    let mut config: Array<_, GlobalConfig> = Array::try_from(map_mut(ebpf, map_names::CONFIG)?)?;
    let flags = if on { GLOBAL_FLAG_MONITOR } else { 0 };
    config
        .set(
            0,
            GlobalConfig {
                flags,
                // No event reader in a test run: events stay off (they never change verdicts
                // or counters, docs/observe.md).
                event_rate: 0,
                reserved: [0; 2],
            },
            0,
        )
        .context("writing GUARD_CONFIG")
}

/// Loads the object, one program through the verifier, and the policy of [`cases`].
fn load(object: &[u8], hook: Hook) -> Result<Loaded> {
    let mut ebpf = EbpfLoader::new()
        .load(object)
        .context("loading the eBPF object (maps and BTF)")?;
    let program = ebpf
        .program_mut(hook.program())
        .ok_or_else(|| anyhow!("no program {} in the object", hook.program()))?;
    // `{:?}` of aya's load error carries the verifier log: that is the finding to report.
    let loaded = match hook {
        Hook::Xdp => <&mut Xdp>::try_from(program)?.load(),
        Hook::Tc => <&mut SchedClassifier>::try_from(program)?.load(),
    };
    loaded.map_err(|e| anyhow!("verifier rejected {}: {e:?}", hook.program()))?;

    let mut ports: Array<_, PortConfig> = Array::try_from(map_mut(&mut ebpf, map_names::PORTS)?)?;
    ports.set(
        TEST_IFINDEX,
        PortConfig {
            slot: SLOT,
            flags: 0,
        },
        0,
    )?;
    // 32 KiB: on the heap, not the stack.
    let mut table = Box::new(MacTable::new());
    table
        .insert(HOST)
        .map_err(|e| anyhow!("host MAC table: {e:?}"))?;
    let mut macs: Array<_, MacTable> = Array::try_from(map_mut(&mut ebpf, map_names::MAC_TABLE)?)?;
    macs.set(0, *table, 0).context("writing GUARD_MAC_TABLE")?;
    let rule = |rule_id, action, class| RuleValue {
        rule_id,
        action,
        class,
    };
    let mut v4: LpmTrie<_, [u8; 4], RuleValue> =
        LpmTrie::try_from(map_mut(&mut ebpf, map_names::RULES_V4)?)?;
    v4.insert(
        &Key::new(24, [192, 0, 2, 0]),
        rule(RULE_STORAGE, ACTION_DENY, CLASS_STORAGE),
        0,
    )?;
    v4.insert(
        &Key::new(32, HOLE4.octets()),
        rule(RULE_HOLE, ACTION_ALLOW, CLASS_STORAGE),
        0,
    )?;
    let mut v6: LpmTrie<_, [u8; 16], RuleValue> =
        LpmTrie::try_from(map_mut(&mut ebpf, map_names::RULES_V6)?)?;
    v6.insert(
        &Key::new(48, MGMT6.octets()),
        rule(RULE_MGMT6, ACTION_DENY, CLASS_MANAGEMENT),
        0,
    )?;
    let counters = PerCpuArray::try_from(
        ebpf.take_map(map_names::COUNTERS)
            .ok_or_else(|| anyhow!("no map {}", map_names::COUNTERS))?,
    )?;
    let hits = Array::try_from(
        ebpf.take_map(map_names::RULE_HITS)
            .ok_or_else(|| anyhow!("no map {}", map_names::RULE_HITS))?,
    )?;
    Ok(Loaded {
        ebpf,
        counters,
        hits,
    })
}

/// Every (slot, reason) counter of slots 0 and [`SLOT`], and the hits of every rule id.
fn snapshot(l: &Loaded) -> Result<Vec<(u32, u32, u64, u64)>> {
    let mut out = Vec::new();
    for slot in [0, SLOT] {
        for r in 0..reason::COUNT {
            let per_cpu = l
                .counters
                .get(&counter_index(slot, r), 0)
                .with_context(|| format!("reading counter ({slot}, {r})"))?;
            let (p, b) = per_cpu
                .iter()
                .fold((0, 0), |(p, b), c| (p + c.packets, b + c.bytes));
            out.push((slot, r, p, b));
        }
    }
    for id in [RULE_STORAGE, RULE_HOLE, RULE_MGMT6] {
        let h = l
            .hits
            .get(&id, 0)
            .with_context(|| format!("reading hits of rule {id}"))?;
        // Rule hits ride in the same list under a slot no port can have.
        out.push((u32::MAX, id, h, 0));
    }
    Ok(out)
}

fn run_one(l: &mut Loaded, hook: Hook, c: &Case) -> Result<()> {
    set_monitor(&mut l.ebpf, c.monitor)?;
    let before = snapshot(l)?;
    let opts = TestRunOptions {
        data_in: Some(&c.frame),
        repeat: 1,
        ..TestRunOptions::default()
    };
    let program = l
        .ebpf
        .program(hook.program())
        .ok_or_else(|| anyhow!("no program {}", hook.program()))?;
    let result = match hook {
        Hook::Xdp => <&Xdp>::try_from(program)?.test_run(opts),
        Hook::Tc => <&SchedClassifier>::try_from(program)?.test_run(opts),
    };
    if hook == Hook::Tc && c.skb_refuses {
        return match result {
            Err(_) => Ok(()),
            Ok(r) => Err(anyhow!(
                "the skb test run no longer refuses this frame (returned {}): \
                 check the TC verdict for it",
                r.return_value
            )),
        };
    }
    let ret = result
        .with_context(|| format!("BPF_PROG_TEST_RUN of {}", hook.program()))?
        .return_value;
    // XDP_DROP = 1, XDP_PASS = 2; TC_ACT_OK = 0, TC_ACT_SHOT = 2.
    let dropped = match (hook, ret) {
        (Hook::Xdp, 1) | (Hook::Tc, 2) => true,
        (Hook::Xdp, 2) | (Hook::Tc, 0) => false,
        _ => return Err(anyhow!("unexpected return value {ret}")),
    };
    let after = snapshot(l)?;
    let mut want = vec![(SLOT, c.reason, 1, c.frame.len() as u64)];
    if c.rule_id != 0 {
        want.push((u32::MAX, c.rule_id, 1, 0));
    }
    let got: Vec<_> = after
        .iter()
        .zip(&before)
        .filter(|(a, b)| a != b)
        .map(|(a, b)| (a.0, a.1, a.2 - b.2, a.3 - b.3))
        .collect();
    if dropped != c.drop || got != want {
        return Err(anyhow!(
            "verdict {} (want {}), counter deltas (slot, reason, packets, bytes) {got:?} \
             (want {want:?}; slot {} = rule hits)",
            if dropped { "drop" } else { "pass" },
            if c.drop { "drop" } else { "pass" },
            u32::MAX
        ));
    }
    Ok(())
}

/// Runs `table` through one hook's program. A load failure (verifier) is an outcome, not an
/// error: it is what the kernel matrix exists to find.
pub fn run(object: &[u8], hook: Hook, table: &[Case]) -> Outcome {
    let mut out = Outcome {
        hook: Some(hook),
        total: table.len(),
        ..Outcome::default()
    };
    let mut loaded = match load(object, hook) {
        Ok(l) => l,
        Err(e) => {
            out.load_error = Some(format!("{e:#}"));
            return out;
        }
    };
    for c in table {
        match run_one(&mut loaded, hook, c) {
            Ok(()) => out.passed += 1,
            Err(e) => out.failures.push(format!("{}: {e:#}", c.name)),
        }
    }
    out
}
