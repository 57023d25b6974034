//! guard's datapath: one classifier behind an XDP and a TC entry point.
//!
//! The verdict order is docs/datapath.md (which refines docs/threat-model.md):
//! not addressed to the host -> pass at once (the hot path); otherwise parse, look up the
//! destination (or ARP/NS target) in the prefix tries, fail closed on what cannot be parsed.
//! Every frame leaves through [`account`], which bumps exactly one per-CPU counter and, for
//! drop and monitor verdicts only, may describe the frame to an event reader (`events.rs`).
#![no_std]
#![no_main]
// `atomic_xadd`: core's AtomicU64::fetch_add is not offered for the BPF target, but the
// intrinsic lowers to the BPF atomic add instruction (what C's __sync_fetch_and_add gives).
#![feature(core_intrinsics)]
#![expect(
    internal_features,
    reason = "atomic_xadd is the only atomic add on bpfel"
)]

mod arp;
mod eth;
mod events;
mod exception;
mod frame;
mod ipv4;
mod ipv6;
mod maps;
mod policy;
mod reply;
mod route;

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use guard_common::{
    GLOBAL_FLAG_MONITOR, MAX_PORT_SLOTS, PORT_FLAG_MONITOR, PortConfig, counter_index, reason,
};

use crate::{
    eth::{ETH_HLEN, P_ARP, P_IPV4, P_IPV6},
    frame::{Frame, Malformed},
    maps::{COUNTERS, PORTS, RULE_HITS},
    policy::Config,
};

/// What the classifier decided: a reason code (which implies the verdict) and the deny rule
/// that caused it (0 for none).
#[derive(Clone, Copy)]
pub struct Outcome {
    pub reason: u32,
    pub rule_id: u32,
}

/// Marks a deny that step 10 may lift (`Outcome::liftable`); never reaches the counters:
/// `try_classify` takes it off.
const LIFTABLE: u32 = 1 << 16;

impl Outcome {
    #[inline(always)]
    #[must_use]
    pub const fn new(reason: u32, rule_id: u32) -> Self {
        Self { reason, rule_id }
    }

    /// This deny, marked as one an exception or a reply may lift: the packet is judged by
    /// its destination alone (no source route, tunnel or malformed header decided it).
    #[inline(always)]
    #[must_use]
    pub const fn liftable(self) -> Self {
        Self {
            reason: self.reason | LIFTABLE,
            rule_id: self.rule_id,
        }
    }
}

/// Steps 1-10 of docs/datapath.md. Every `Malformed` is turned into a drop here, never a pass.
/// `ALL_HOST_BOUND`: the bridge device's hook, where every frame is host-bound (step 2 is
/// skipped, so no host MAC that discovery missed can let a frame through).
#[inline(always)]
fn classify<F: Frame, const ALL_HOST_BOUND: bool>(f: &F) -> (Outcome, Config) {
    let mut cfg = Config {
        flags: 0,
        bridge_ifindex: 0,
        generation: 0,
    };
    let outcome = match try_classify::<F, ALL_HOST_BOUND>(f, &mut cfg) {
        Ok(outcome) => outcome,
        Err(Malformed) => Outcome::new(reason::MALFORMED, 0),
    };
    (outcome, cfg)
}

#[inline(always)]
fn try_classify<F: Frame, const ALL_HOST_BOUND: bool>(
    f: &F,
    cfg: &mut Config,
) -> Result<Outcome, Malformed> {
    let eth: &[u8; ETH_HLEN] = f.at(0)?;
    if !ALL_HOST_BOUND && !eth::host_bound(eth) {
        return Ok(Outcome::new(reason::NOT_HOST, 0));
    }
    // Read once for the frame, and handed to `account` for the monitor flag.
    *cfg = Config::load();
    let (proto, off) = eth::skip_vlans(f, eth, f.tags_stripped())?;
    let outcome = match proto {
        P_IPV4 => ipv4::classify(f, off, *cfg)?,
        P_IPV6 => ipv6::classify(f, off, *cfg)?,
        P_ARP => return arp::classify(f, off, *cfg),
        _ => return Ok(Outcome::new(reason::HOST_PASS, 0)),
    };
    // Step 10: one place after every IP verdict, so its code is verified once per deny
    // reason rather than once per path that reaches a deny.
    if outcome.reason & LIFTABLE != 0 {
        let outcome = Outcome::new(outcome.reason & !LIFTABLE, outcome.rule_id);
        if exception::enabled(*cfg) {
            return Ok(exception::lift(f, off, proto == P_IPV6, *cfg, outcome));
        }
        return Ok(outcome);
    }
    Ok(outcome)
}

/// The single exit: applies monitor mode, bumps one counter slot (and the deny rule's hit
/// counter), and returns whether to drop. `cfg` is what the classifier read (all zero on the
/// not-host path, which never drops).
#[inline(always)]
fn account<F: Frame>(f: &F, (outcome, cfg): (Outcome, Config)) -> bool {
    let ifindex = f.ingress_ifindex();
    let port = PORTS
        .get(ifindex)
        .copied()
        .unwrap_or(PortConfig { slot: 0, flags: 0 });
    let mut reason = outcome.reason;
    let mut drop = reason::is_drop(reason);
    if drop && (port.flags & PORT_FLAG_MONITOR != 0 || cfg.flags & GLOBAL_FLAG_MONITOR != 0) {
        reason = reason::monitor_of(reason);
        drop = false;
    }
    let slot = if port.slot < MAX_PORT_SLOTS {
        port.slot
    } else {
        0
    };
    if let Some(c) = COUNTERS.get_ptr_mut(counter_index(slot, reason)) {
        // SAFETY: a per-CPU slot: no other program run touches it concurrently.
        unsafe {
            (*c).packets = (*c).packets.wrapping_add(1);
            (*c).bytes = (*c).bytes.wrapping_add(u64::from(f.len()));
        }
    }
    if outcome.rule_id != 0
        && let Some(hits) = RULE_HITS.get_ptr_mut(outcome.rule_id)
    {
        // SAFETY: `hits` points at a live, 8-byte aligned u64 of the map value; other CPUs only
        // touch it atomically too.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(hits, 1) };
    }
    // Drop and monitor verdicts are exactly those whose classifier reason is a drop reason.
    // The event comes after the counters, so sampling can never change them.
    if reason::is_drop(outcome.reason) {
        events::emit(f, ifindex, slot, reason, outcome.rule_id);
    }
    drop
}

#[xdp]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the #[xdp] macro's signature"
)]
pub fn guard_xdp(ctx: XdpContext) -> u32 {
    if account(&ctx, classify::<_, false>(&ctx)) {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

/// Bytes made linear before parsing on TC, where the skb may be non-linear (headers must be
/// readable directly). Covers every header the parser reads short of extension-header chains
/// longer than this; those fail closed.
const TC_PULL_BYTES: u32 = 512;

/// A port's TC ingress hook.
#[classifier]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the #[classifier] macro's signature"
)]
pub fn guard_tc(ctx: TcContext) -> i32 {
    tc_verdict::<false>(&ctx)
}

/// The backstop on the bridge device's TC ingress: it sees exactly what the bridge passes up
/// to the host, so every frame is judged as host-bound.
#[classifier]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the #[classifier] macro's signature"
)]
pub fn guard_bridge(ctx: TcContext) -> i32 {
    tc_verdict::<true>(&ctx)
}

/// The bridge device's TC egress: records the flows the protected side starts toward guests
/// (`reply.rs`). Always passes.
#[classifier]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the #[classifier] macro's signature"
)]
pub fn guard_reply(ctx: TcContext) -> i32 {
    // Ethernet, two tags, the longest IPv4 header and the TCP bytes `exception::read` needs.
    const REPLY_PULL_BYTES: u32 = 128;
    let want = if ctx.len() < REPLY_PULL_BYTES {
        ctx.len()
    } else {
        REPLY_PULL_BYTES
    };
    if ctx.data_end().wrapping_sub(ctx.data()) < want as usize {
        let _ = ctx.pull_data(want);
    }
    // SAFETY: `skb` points at the kernel's `__sk_buff` for this run.
    let from = unsafe { (*ctx.skb.skb).ingress_ifindex };
    reply::record(&ctx, from);
    TC_ACT_UNSPEC
}

#[inline(always)]
fn tc_verdict<const ALL_HOST_BOUND: bool>(ctx: &TcContext) -> i32 {
    let want = if ctx.len() < TC_PULL_BYTES {
        ctx.len()
    } else {
        TC_PULL_BYTES
    };
    // Wrapping: data <= data_end always holds, and a checked `-` would leave an overflow panic
    // path in the debug build that the verifier cannot prove dead.
    if ctx.data_end().wrapping_sub(ctx.data()) < want as usize {
        // On failure the parser sees fewer bytes and fails closed for host-bound frames.
        let _ = ctx.pull_data(want);
    }
    if account(ctx, classify::<_, ALL_HOST_BOUND>(ctx)) {
        TC_ACT_SHOT
    } else {
        // No objection, not a verdict: under TCX this is TCX_NEXT (the programs after guard
        // still run; TC_ACT_OK would end the chain), on a cls_bpf filter the next filter runs;
        // with nothing after it the frame passes.
        TC_ACT_UNSPEC
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a program the verifier accepted: the verifier rejects the loop, so any
    // panic path that survives optimisation fails the load instead of running.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
