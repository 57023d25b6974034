//! guard's XDP and TC programs against the contract (docs/datapath.md), in the real kernel.
//!
//! - `table_*`: named cases, each with its expected verdict, reason and rule id, checked against
//!   the reference model and against both programs, with exact counter deltas;
//! - `differential_*`: a few hundred thousand seeded random and mutated frames through the
//!   kernel and the model; any difference fails with the frame in hex and the seed;
//! - `reply_*`: what `guard_reply` (the bridge's TC egress) writes into the flow table, and
//!   that the guest's reply then passes step 10.
//!
//! Both run for the release object (embedded in guard-userspace) and the debug object (built by
//! `cargo xtask build`, path in `GUARD_EBPF_DEBUG_OBJECT`): the verifier sees different code.
//! Needs root; there are no mocks.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use std::collections::BTreeSet;

use guard_common::model::{Flow, Policy, classify};
use guard_common::reason;
use guard_tests::cases::{
    BLACKHOLE_V4, BRIDGE_MAC, BRIDGE_V4, CONNECTED_PROT, DENY_IN_HOLE, GUEST_MAC, GUEST_V4,
    HAIRPIN_V4, HOLE, IPV4_MCAST_MAC, LLDP_MAC, LOCAL_LO, MGMT_HOST, MGMT_NET, NEAR_HOLE,
    OTHER_IF_MAC, PEER_MAC, PORT_MAC, PROT_BROADCAST, ROUTED_PROT, STORAGE, Setup, UNPROTECTED,
    UNREACHABLE_V4, VXLAN_PORT, base_policy, cases, flow, guest_global_v6, guest_v6, ns, run_table,
    step10_policy, to, udp4, v6,
};
use guard_tests::datapath::{
    Datapath, Hook, MIN_FRAME, Run, expected_run, flow_key, hex, skb_test_run_refuses,
};
use guard_tests::packet::{
    Arp, BROADCAST, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IPV4, ETH_P_IPV6, ETH_P_LLDP, Eth, Ext,
    IPPROTO_AH, IPPROTO_DSTOPTS, IPPROTO_FRAGMENT, IPPROTO_HOPOPTS, IPPROTO_ICMP, IPPROTO_ICMPV6,
    IPPROTO_NONE, IPPROTO_ROUTING, IPPROTO_TCP, IPPROTO_UDP, Ipv4, Ipv6,
};
use guard_tests::rng::Rng;

// ---------------------------------------------------------------------------------------------
// The objects.

const DEBUG_OBJECT_ENV: &str = "GUARD_EBPF_DEBUG_OBJECT";

fn release_object() -> &'static [u8] {
    guard::EBPF_OBJECT
}

/// The debug build, or a loud failure that says how to get it: a skipped debug run is not a
/// passed one.
fn debug_object() -> Vec<u8> {
    let Ok(path) = std::env::var(DEBUG_OBJECT_ENV) else {
        panic!(
            "{DEBUG_OBJECT_ENV} is not set: the datapath tests must also run the debug eBPF \
             object. Build it with `cargo xtask build` (or, by hand, `RUSTFLAGS= \
             CARGO_ENCODED_RUSTFLAGS=$(printf -- '--cfg=bpf_target_arch=\"x86_64\"\\x1f-Cdebuginfo=2\\x1f-Clink-arg=--btf') \
             cargo +nightly build -p guard-ebpf --bins --target bpfel-unknown-none -Z build-std=core`) \
             and set {DEBUG_OBJECT_ENV}=<worktree>/target/bpfel-unknown-none/debug/guard"
        )
    };
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {DEBUG_OBJECT_ENV}={path}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// The table (tests/src/cases.rs).

/// Checks every case against the model, then against both programs of `object`.
fn check_table(object: &[u8], label: &str) {
    let report = run_table(object, &Hook::ALL, label).unwrap_or_else(|e| panic!("{e:?}"));
    println!(
        "{label}: {} cases, {} kernel runs; {} TC runs refused by \
         bpf_prog_test_run_skb (short L3 header), checked on XDP only",
        report.cases, report.checked, report.refused
    );
    assert!(
        report.failures.is_empty(),
        "{} failures:\n{}",
        report.failures.len(),
        report.failures.join("\n")
    );
}

#[test]
fn table_has_enough_distinct_cases() {
    let cases = cases();
    assert!(cases.len() >= 60, "only {} cases", cases.len());
    let mut names: Vec<_> = cases.iter().map(|c| c.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), cases.len(), "duplicate case names");
    // Every reason code is exercised by some case.
    for r in 0..reason::COUNT {
        assert!(
            cases.iter().any(|c| c.reason == r),
            "no case for reason {}",
            reason::name(r)
        );
    }
}

#[test]
fn table_release() {
    check_table(release_object(), "release");
}

#[test]
fn table_debug() {
    check_table(&debug_object(), "debug");
}

/// The bridge device's hook judges a frame whatever its destination MAC: a MAC discovery
/// never saw (a new port's, a changed bridge MAC, a macvlan's) cannot let an attack by, while
/// a port's hook passes the same frame as not addressed to the host.
#[test]
fn bridge_hook_judges_every_mac() {
    let policy = base_policy();
    let dp = Datapath::load(release_object(), &policy).expect("load");
    let unknown_mac = [0x02, 0x99, 0, 0, 0, 1];
    for (frame, reason) in [
        (
            to(unknown_mac).ipv4(udp4(STORAGE)).build(),
            reason::DENY_IPV4,
        ),
        (
            to(unknown_mac).ipv4(udp4(ROUTED_PROT)).build(),
            reason::DENY_ROUTE,
        ),
        (
            to(unknown_mac).ipv6(udp6_to("2001:db8:1::1")).build(),
            reason::DENY_LOCAL,
        ),
    ] {
        let port = dp.run(Hook::Xdp, &frame).expect("xdp run");
        assert!(
            !port.drop,
            "a port passes a frame to a MAC it does not know"
        );
        let bridge = dp.run(Hook::Bridge, &frame).expect("bridge run");
        let want = classify(&frame, 0, &Hook::Bridge.model_policy(&policy));
        assert!(
            bridge.drop && want.drop && want.reason == reason,
            "{bridge:?} {want:?}"
        );
        assert_eq!(bridge, expected_run(&want, frame.len()));
    }
}

fn udp6_to(dst: &str) -> Ipv6 {
    Ipv6::new(guest_v6(), v6(dst)).udp(40000, 2049, b"nfs?")
}

// ---------------------------------------------------------------------------------------------
// The differential test.

const MACS: [[u8; 6]; 8] = [
    BRIDGE_MAC,
    PORT_MAC,
    OTHER_IF_MAC,
    BROADCAST,
    IPV4_MCAST_MAC,
    LLDP_MAC,
    PEER_MAC,
    GUEST_MAC,
];

fn random_v4(rng: &mut Rng) -> Ipv4Addr {
    let base = rng.pick(&[
        STORAGE,
        HOLE,
        DENY_IN_HOLE,
        NEAR_HOLE,
        MGMT_NET,
        MGMT_HOST,
        UNPROTECTED,
        GUEST_V4,
        [10, 1, 2, 127],
        [10, 1, 2, 128],
        [11, 0, 0, 0],
        [9, 255, 255, 255],
        // The routing world (tests/src/route_world.rs).
        ROUTED_PROT,
        CONNECTED_PROT,
        LOCAL_LO,
        BRIDGE_V4,
        HAIRPIN_V4,
        UNREACHABLE_V4,
        BLACKHOLE_V4,
        PROT_BROADCAST,
        [127, 0, 0, 1],
        [255, 255, 255, 255],
        [224, 0, 0, 251],
        [203, 0, 113, 1],
        [192, 168, 100, 255],
    ]);
    let mut a = base;
    if rng.chance(30) {
        a[3] = rng.byte();
    }
    if rng.chance(10) {
        a = [rng.byte(), rng.byte(), rng.byte(), rng.byte()];
    }
    Ipv4Addr::from(a)
}

fn random_v6(rng: &mut Rng) -> Ipv6Addr {
    let base = v6(rng.pick(&[
        "fd00::1",
        "fd00:1::5",
        "fd00:1:0:1::9",
        "fd00:1:0:2::9",
        "2001:db8:100::1",
        "2001:db8:100::2",
        "2001:db8::1",
        "fe80::1",
        "ff02::1:ff00:1",
        "fcff:ffff::1",
        // The routing world.
        "2001:db8:300::5",
        "2001:db8:100::9",
        "2001:db8:100::",
        "2001:db8:1::1",
        "2001:db8:50::1",
        "2001:db8:50::20",
        "2001:db8:dead::1",
        "2001:db8:ff::1",
        "::1",
    ]));
    let mut o = base.octets();
    if rng.chance(30) {
        o[15] = rng.byte();
    }
    if rng.chance(10) {
        o[rng.below(16)] = rng.byte();
    }
    Ipv6Addr::from(o)
}

fn random_ext(rng: &mut Rng) -> Ext {
    match rng.below(6) {
        0 => Ext::HopByHop {
            len_units: rng.pick(&[0, 0, 1, 3]),
        },
        1 => {
            if rng.chance(50) {
                Ext::Routing {
                    len_units: rng.pick(&[0, 2]),
                }
            } else {
                // A routing header with segments left (the host would rewrite the
                // destination) or none.
                let mut rest = vec![2, rng.pick(&[0, 2, 3, 4]), rng.pick(&[0, 1, 2])];
                rest.resize(23, 0);
                Ext::Raw {
                    code: IPPROTO_ROUTING,
                    rest,
                }
            }
        }
        2 => Ext::DestOpts {
            len_units: rng.pick(&[0, 1]),
        },
        3 => Ext::Fragment {
            offset_units: if rng.chance(60) {
                0
            } else {
                rng.below(8) as u16
            },
            more: rng.chance(50),
            id: 7,
        },
        4 => Ext::Ah {
            len: rng.pick(&[0, 1, 4]),
        },
        _ => Ext::Raw {
            code: rng.pick(&[IPPROTO_HOPOPTS, IPPROTO_DSTOPTS, IPPROTO_ROUTING]),
            rest: vec![rng.pick(&[0, 0, 1, 255]); 7],
        },
    }
}

/// A structurally plausible random frame.
#[expect(
    clippy::too_many_lines,
    reason = "one generator: splitting the families apart would only scatter the shapes"
)]
fn random_frame(rng: &mut Rng) -> Vec<u8> {
    let mut eth = Eth::new(rng.pick(&MACS), GUEST_MAC);
    if rng.chance(3) {
        eth.dst = [rng.byte(), rng.byte(), 0, 0, rng.byte(), rng.byte()];
    }
    let tags = rng.pick(&[0, 0, 0, 1, 1, 2, 3]);
    for _ in 0..tags {
        let tpid = rng.pick(&[ETH_P_8021Q, ETH_P_8021AD, ETH_P_8021Q]);
        let vid = if rng.chance(30) {
            0
        } else {
            rng.below(4096) as u16
        };
        eth = eth.tag(tpid, vid);
    }
    eth = match rng.below(10) {
        0..=2 => {
            let dst = random_v4(rng);
            let mut p = match rng.below(10) {
                // Tunnels: UDP to a tunnel port, or a tunnel protocol.
                0 => Ipv4::new(GUEST_V4, dst).udp(1, rng.pick(&[VXLAN_PORT, 6081, 53]), &[0; 8]),
                1 => Ipv4::new(GUEST_V4, dst)
                    .payload(rng.pick(&[4, 41, 47, 97, 115, 137, 6]), &[0; 8]),
                // Step 10: the ports, flags and echo identifiers of the exceptions and flows.
                2 => {
                    let (sport, dport) = step10_ports(rng);
                    Ipv4::new(GUEST_V4, dst).tcp(sport, dport, step10_tcp_flags(rng))
                }
                3 => Ipv4::new(GUEST_V4, dst).payload(IPPROTO_ICMP, &step10_echo(rng, 0, 8)),
                4 => {
                    let (sport, dport) = step10_ports(rng);
                    Ipv4::new(GUEST_V4, dst).udp(sport, dport, &[0; 6])
                }
                _ => Ipv4::new(GUEST_V4, dst).udp(1, 2, &[0; 6]),
            };
            if rng.chance(20) {
                let options = match rng.below(4) {
                    0 => vec![1; rng.below(41)],
                    // Loose or strict source route, maybe behind no-ops or record route.
                    1 => {
                        let mut o = vec![1; rng.below(4)];
                        o.extend_from_slice(&[rng.pick(&[0x83, 0x89, 0x07]), 7, 4, 10, 0, 0, 1]);
                        o
                    }
                    2 => vec![
                        rng.pick(&[0, 1, 0x44, 0x94]),
                        rng.pick(&[0, 1, 2, 4, 12]),
                        0,
                        0,
                    ],
                    _ => (0..rng.below(41)).map(|_| rng.byte()).collect(),
                };
                p = p.options(&options);
            }
            if rng.chance(20) {
                p = p.fragment(rng.below(3) as u16, rng.chance(50));
            }
            if rng.chance(10) {
                p = p.ihl(rng.below(16) as u8);
            }
            if rng.chance(10) {
                p = p.tot_len(rng.below(120) as u16);
            }
            eth.ipv4(p)
        }
        3..=6 => {
            let mut p = match rng.below(8) {
                0..=2 => ns(&random_v6(rng).to_string()),
                6 => {
                    let (sport, dport) = step10_ports(rng);
                    Ipv6::new(guest_global_v6(), random_v6(rng)).tcp(
                        sport,
                        dport,
                        step10_tcp_flags(rng),
                    )
                }
                7 => {
                    let echo = step10_echo(rng, 129, 128);
                    Ipv6::new(guest_global_v6(), random_v6(rng)).icmpv6(echo[0], 0, &echo[4..])
                }
                3 => Ipv6::new(guest_v6(), random_v6(rng)).udp(
                    1,
                    rng.pick(&[VXLAN_PORT, 2]),
                    &[0; 8],
                ),
                4 => Ipv6::new(guest_v6(), random_v6(rng))
                    .payload(rng.pick(&[4, 41, 47, 17]), &[0; 8]),
                _ => Ipv6::new(guest_v6(), random_v6(rng)).udp(1, 2, &[0; 4]),
            };
            if rng.chance(50) {
                p.dst = random_v6(rng);
            }
            for _ in 0..rng.pick(&[0, 0, 1, 2, 3, 5, 6, 7, 8]) {
                p = p.ext(random_ext(rng));
            }
            if rng.chance(10) {
                p = p.payload_len(rng.below(200) as u16);
            }
            eth.ipv6(p)
        }
        7..=8 => {
            let mut a = Arp::request(GUEST_MAC, random_v4(rng), random_v4(rng));
            if rng.chance(20) {
                a.op = 2;
            }
            if rng.chance(5) {
                a = a.hlen(rng.byte());
            }
            if rng.chance(5) {
                a = a.ptype(rng.pick(&[ETH_P_IPV6, 0x0801, ETH_P_IPV4]));
            }
            eth.arp(a)
        }
        _ => {
            let len = rng.below(64);
            let bytes: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
            eth.raw(
                rng.pick(&[ETH_P_LLDP, 0x9000, 0x0000, 0x88cc, 0x8847]),
                &bytes,
            )
        }
    };
    if rng.chance(15) {
        eth = eth.truncate(MIN_FRAME + rng.below(80));
    }
    if rng.chance(10) {
        eth = eth.pad_to(60);
    }
    eth.build()
}

/// Source and destination ports around those of the step-10 policy's exceptions and flows.
fn step10_ports(rng: &mut Rng) -> (u16, u16) {
    let ports = [
        22, 53, 443, 2049, 3260, 3261, 5353, 8080, 40000, 50000, 50001,
    ];
    (rng.pick(&ports), rng.pick(&ports))
}

/// SYN, SYN+ACK, ACK, none, SYN+FIN.
fn step10_tcp_flags(rng: &mut Rng) -> u8 {
    rng.pick(&[0x02, 0x12, 0x10, 0x00, 0x03])
}

/// An echo reply (`reply`) or request (`request`) or another type, with an identifier of the
/// step-10 flows or a neighbour: type, code, checksum, identifier, sequence.
fn step10_echo(rng: &mut Rng, reply: u8, request: u8) -> [u8; 8] {
    let kind = rng.pick(&[reply, reply, request, 3]);
    let id: u16 = rng.pick(&[0, 9, 77, 78]);
    let [hi, lo] = id.to_be_bytes();
    [kind, 0, 0, 0, hi, lo, 0, 1]
}

/// One to four random edits of `f`.
fn mutate(rng: &mut Rng, f: &mut Vec<u8>) {
    for _ in 0..=rng.below(4) {
        match rng.below(9) {
            // Flip bits of a byte, mostly in the headers.
            0 | 1 => {
                let span = f.len().min(if rng.chance(80) { 96 } else { usize::MAX });
                let i = rng.below(span);
                f[i] ^= 1 << rng.below(8);
            }
            2 => {
                let i = rng.below(f.len());
                let any = rng.byte();
                f[i] = rng.pick(&[0, 1, 4, 5, 6, 0x45, 0x60, 0x81, 0x88, 0xa8, 0xff, any]);
            }
            // Cut the frame.
            3 => {
                let n = MIN_FRAME + rng.below(f.len().saturating_sub(MIN_FRAME) + 1);
                f.truncate(n);
            }
            // Insert a VLAN tag right after the MACs.
            4 => {
                let tpid = rng.pick(&[ETH_P_8021Q, ETH_P_8021AD]).to_be_bytes();
                let vid = if rng.chance(40) { 0 } else { rng.byte() };
                f.splice(12..12, [tpid[0], tpid[1], 0, vid]);
            }
            // Remove four bytes after the MACs (a tag, if there is one).
            5 => {
                if f.len() >= 16 + MIN_FRAME {
                    f.drain(12..16);
                }
            }
            // A random or interesting EtherType at the innermost position we can guess.
            6 => {
                let mut o = 12;
                while o + 6 <= f.len()
                    && matches!(u16::from_be_bytes([f[o], f[o + 1]]), 0x8100 | 0x88a8)
                {
                    o += 4;
                }
                let t = if rng.chance(70) {
                    rng.pick(&[
                        ETH_P_IPV4,
                        ETH_P_IPV6,
                        0x0806,
                        ETH_P_8021Q,
                        ETH_P_8021AD,
                        ETH_P_LLDP,
                    ])
                } else {
                    rng.next_u64() as u16
                };
                f[o..o + 2].copy_from_slice(&t.to_be_bytes());
            }
            // A random next header at a likely IPv6 next-header position.
            7 => {
                let candidates = [20, 24, 28, 54, 58, 62, 62 + 8];
                let i = rng.pick(&candidates);
                if i < f.len() {
                    let any = rng.byte();
                    f[i] = rng.pick(&[
                        IPPROTO_HOPOPTS,
                        IPPROTO_ROUTING,
                        IPPROTO_FRAGMENT,
                        IPPROTO_AH,
                        IPPROTO_DSTOPTS,
                        IPPROTO_ICMPV6,
                        IPPROTO_UDP,
                        IPPROTO_NONE,
                        any,
                    ]);
                }
            }
            // Grow it with random bytes.
            _ => {
                for _ in 0..rng.below(40) {
                    f.push(rng.byte());
                }
            }
        }
    }
    if f.len() < MIN_FRAME {
        f.resize(MIN_FRAME, 0);
    }
}

/// Seed and frame count: `GUARD_DIFF_SEED`, `GUARD_DIFF_FRAMES` override the defaults.
fn diff_params(default_frames: usize) -> (u64, usize) {
    let seed = std::env::var("GUARD_DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x6775_6172_6421);
    let frames = std::env::var("GUARD_DIFF_FRAMES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default_frames);
    (seed, frames)
}

/// Runs `frames` frames per policy through XDP (and every `tc_every`-th through TC too) and the
/// model; panics on the first difference with everything needed to reproduce it.
fn differential(object: &[u8], label: &str, frames_total: usize, tc_every: usize) {
    let (seed, frames_total) = diff_params(frames_total);
    let corpus: Vec<Vec<u8>> = cases().into_iter().map(|c| c.frame).collect();
    let start = Instant::now();
    let (mut xdp_checked, mut tc_checked, mut tc_refused) = (0usize, 0usize, 0usize);
    let per_setup = frames_total.div_ceil(Setup::ALL.len());
    for (s, setup) in Setup::ALL.into_iter().enumerate() {
        let policy = setup.policy();
        let mut dp = Datapath::load(object, &policy)
            .unwrap_or_else(|e| panic!("{label}: loading with {setup:?} policy: {e:?}"));
        let setup_seed = seed ^ ((s as u64 + 1) << 56);
        let mut rng = Rng(setup_seed);
        let mut before = dp.snapshot().expect("snapshot");
        for i in 0..per_setup {
            // The model knows no time: keep every flow far from its idle time (ICMP: 30 s).
            if i % 1000 == 0 && !policy.flows.is_empty() {
                dp.refresh_flows(&policy).expect("refreshing the flows");
            }
            let mut frame = if rng.chance(40) {
                random_frame(&mut rng)
            } else {
                corpus[rng.below(corpus.len())].clone()
            };
            if rng.chance(85) {
                mutate(&mut rng, &mut frame);
            }
            let hooks: &[Hook] = if i % tc_every == 0 {
                &Hook::ALL
            } else {
                &[Hook::Xdp]
            };
            for &hook in hooks {
                let hook_policy = hook.model_policy(&policy);
                let want = expected_run(&classify(&frame, 0, &hook_policy), frame.len());
                if hook.is_tc() && skb_test_run_refuses(&frame) {
                    assert!(
                        dp.verdict(hook, &frame).is_err(),
                        "{label}: the kernel ran a frame skb_test_run_refuses predicted it would \
                         refuse\n{}",
                        hex(&frame)
                    );
                    tc_refused += 1;
                    continue;
                }
                let drop = dp.verdict(hook, &frame).unwrap_or_else(|e| {
                    panic!(
                        "{label} {hook:?} frame {i} (seed {setup_seed:#x}): {e:?}\n{}",
                        hex(&frame)
                    )
                });
                let after = dp.snapshot().expect("snapshot");
                let (counters, rule_hits) = after.since(&before);
                before = after;
                let got = Run {
                    drop,
                    counters,
                    rule_hits,
                };
                assert!(
                    got == want,
                    "{label} {hook:?} {setup:?}: kernel and model disagree on frame {i} \
                     (GUARD_DIFF_SEED={seed}, setup seed {setup_seed:#x}, {} bytes)\n\
                     kernel: {got:?}\nmodel:  {want:?} ({:?})\n{}",
                    frame.len(),
                    classify(&frame, 0, &hook_policy),
                    hex(&frame)
                );
                match hook {
                    Hook::Xdp => xdp_checked += 1,
                    Hook::Tc | Hook::Bridge | Hook::Reply => tc_checked += 1,
                }
            }
        }
    }
    println!(
        "{label}: {xdp_checked} frames checked on XDP, {tc_checked} on TC ({tc_refused} more \
         refused by bpf_prog_test_run_skb), seed {seed}, {:.1} s",
        start.elapsed().as_secs_f64()
    );
}

#[test]
fn differential_release() {
    differential(release_object(), "release", 200_000, 4);
}

#[test]
fn differential_debug() {
    differential(&debug_object(), "debug", 40_000, 4);
}

// ---------------------------------------------------------------------------------------------
// guard_reply: the flow table.

/// From the host's side to the guest: what `guard_reply` sees on the bridge's egress.
fn toward_guest() -> Eth {
    Eth::new(GUEST_MAC, BRIDGE_MAC)
}

/// The flows in `GUARD_FLOWS`, as keys, each seen between `since` and now.
fn recorded(dp: &Datapath, since: u64) -> BTreeSet<Vec<u8>> {
    let now = guard::events::monotonic_ns();
    dp.flows()
        .expect("reading GUARD_FLOWS")
        .into_iter()
        .map(|(k, v)| {
            assert!(
                (since..=now).contains(&v.seen_ns),
                "flow {k:?} seen at {}, not in {since}..={now}",
                v.seen_ns
            );
            key_bytes(&k)
        })
        .collect()
}

/// A key's bytes, for sets (`FlowKey` has no order).
fn key_bytes(k: &guard_common::FlowKey) -> Vec<u8> {
    format!("{k:?}").into_bytes()
}

fn keys(flows: &[Flow]) -> BTreeSet<Vec<u8>> {
    flows
        .iter()
        .map(|f| key_bytes(&flow_key(f).expect("flow key")))
        .collect()
}

/// Packets the host sends toward a guest, and the flow each must record (as the guest's
/// reply sees it), if any.
fn reply_starts() -> Vec<(&'static str, Eth, Option<Flow>)> {
    vec![
        (
            "tcp syn",
            toward_guest().ipv4(Ipv4::new(STORAGE, GUEST_V4).tcp(50000, 22, 0x02)),
            Some(flow("172.16.0.10", 22, "10.0.0.1", 50000, IPPROTO_TCP)),
        ),
        (
            "tcp syn+ack",
            toward_guest().ipv4(Ipv4::new(STORAGE, GUEST_V4).tcp(50001, 22, 0x12)),
            None,
        ),
        (
            "tcp ack",
            toward_guest().ipv4(Ipv4::new(STORAGE, GUEST_V4).tcp(50002, 22, 0x10)),
            None,
        ),
        (
            "udp",
            toward_guest().ipv4(Ipv4::new(STORAGE, GUEST_V4).udp(40000, 53, b"dns?")),
            Some(flow("172.16.0.10", 53, "10.0.0.1", 40000, IPPROTO_UDP)),
        ),
        (
            "icmp echo request",
            toward_guest().ipv4(Ipv4::new(STORAGE, GUEST_V4).icmp_echo(77, 1)),
            Some(flow("172.16.0.10", 77, "10.0.0.1", 0, IPPROTO_ICMP)),
        ),
        (
            "icmp echo reply",
            toward_guest().ipv4(
                Ipv4::new(STORAGE, GUEST_V4).payload(IPPROTO_ICMP, &[0, 0, 0, 0, 0, 78, 0, 1]),
            ),
            None,
        ),
        (
            "icmpv6 echo request, tagged",
            toward_guest().vlan(5).ipv6(
                Ipv6::new(v6("2001:db8:300::5"), guest_global_v6()).icmpv6(128, 0, &[0, 9, 0, 1]),
            ),
            Some(flow(
                "2001:db8:50::10",
                9,
                "2001:db8:300::5",
                0,
                IPPROTO_ICMPV6,
            )),
        ),
        (
            "tcp6 syn",
            toward_guest().ipv6(Ipv6::new(v6("fd00::1"), guest_global_v6()).tcp(50000, 443, 0x02)),
            Some(flow("2001:db8:50::10", 443, "fd00::1", 50000, IPPROTO_TCP)),
        ),
    ]
}

/// `guard_reply` records exactly the packets that start a flow toward a guest, keyed as the
/// guest's reply sees it, and only with the replies flag on.
fn check_reply_records(object: &[u8], label: &str) {
    let starts = reply_starts();
    let policy = Policy {
        flows: Vec::new(),
        ..step10_policy()
    };
    let since = guard::events::monotonic_ns();
    let dp = Datapath::load_hooks(object, &policy, &[Hook::Reply, Hook::Xdp]).expect("load");
    for (what, frame, want) in &starts {
        let frame = frame.build();
        let before = recorded(&dp, since);
        assert!(
            !dp.verdict(Hook::Reply, &frame).expect("guard_reply run"),
            "{label}: guard_reply returned something other than TC_ACT_UNSPEC"
        );
        let after = recorded(&dp, since);
        let new: BTreeSet<_> = after.difference(&before).cloned().collect();
        let want_new = keys(want.as_slice());
        assert_eq!(
            new,
            want_new,
            "{label} {what}: new flows
{}",
            hex(&frame)
        );
        let _ = since;
    }
    // Every flow recorded above, and nothing else.
    let all: Vec<Flow> = starts.iter().filter_map(|s| s.2).collect();
    assert_eq!(recorded(&dp, since), keys(&all), "{label}: the flow table");

    // The guest's reply to the recorded TCP flow now passes step 10, a stranger's does not
    // (storage's deny stands: its only exception is for TCP port 3260).
    let reply = to(BRIDGE_MAC)
        .ipv4(Ipv4::new(GUEST_V4, STORAGE).tcp(22, 50000, 0x12))
        .build();
    let other = to(BRIDGE_MAC)
        .ipv4(Ipv4::new(GUEST_V4, STORAGE).tcp(22, 50001, 0x12))
        .build();
    for (frame, reason) in [(&reply, reason::REPLY), (&other, reason::DENY_IPV4)] {
        let mut model_policy = policy.clone();
        model_policy.flows.clone_from(&all);
        let want = classify(frame, 0, &model_policy);
        assert_eq!(want.reason, reason, "{label}: the model");
        assert_eq!(
            dp.run(Hook::Xdp, frame).expect("xdp run"),
            expected_run(&want, frame.len()),
            "{label}: the reply to a recorded flow"
        );
    }

    println!(
        "{label}: guard_reply recorded {} flows from {} packets",
        all.len(),
        starts.len()
    );
}

/// With the replies flag off, `guard_reply` records nothing.
fn check_reply_flag_off(object: &[u8], label: &str) {
    let off = Policy {
        flows: Vec::new(),
        replies: false,
        ..step10_policy()
    };
    let starts = reply_starts();
    let dp = Datapath::load_hooks(object, &off, &[Hook::Reply]).expect("load");
    for (what, frame, _) in &starts {
        dp.verdict(Hook::Reply, &frame.build())
            .expect("guard_reply run");
        assert!(
            recorded(&dp, 0).is_empty(),
            "{label} {what}: recorded with the replies flag off"
        );
    }
}

#[test]
fn reply_records_flows_release() {
    check_reply_records(release_object(), "release");
    check_reply_flag_off(release_object(), "release");
}

#[test]
fn reply_records_flows_debug() {
    let object = debug_object();
    check_reply_records(&object, "debug");
    check_reply_flag_off(&object, "debug");
}

/// The kernel's ns/run for three typical frames (printed; run with `--nocapture`).
#[test]
fn ns_per_run_release() {
    let dp = Datapath::load(release_object(), &base_policy()).expect("load");
    let frames = [
        (
            "not addressed to the host",
            to(PEER_MAC).ipv4(udp4(STORAGE)).pad_to(60).build(),
        ),
        (
            "host-bound, unprotected",
            to(BRIDGE_MAC).ipv4(udp4(UNPROTECTED)).pad_to(60).build(),
        ),
        (
            "dropped (deny_ipv4)",
            to(BRIDGE_MAC).ipv4(udp4(STORAGE)).pad_to(60).build(),
        ),
    ];
    for hook in Hook::PORTS {
        for (what, frame) in &frames {
            let ns = dp.ns_per_run(hook, frame, 1_000_000).expect("test run");
            println!("{hook:?} {what}: {ns} ns/run");
        }
    }
}
