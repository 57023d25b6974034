//! The route check (step 8 of docs/datapath.md): what the kernel's own routing decision
//! would do with a host-bound packet that no prefix rule decided.
//!
//! `bpf_fib_lookup` with the guest bridge as the input device asks the FIB exactly what
//! `ip_route_input`/`ip6_route_input` would: forward out of some interface, deliver locally,
//! or drop. A packet the kernel would forward out of an interface that is not marked
//! `PORT_FLAG_EGRESS_OK` (the guest bridge itself and the uplinks) reaches a protected network:
//! whatever its prefix, whenever the route was added. A packet it would not forward is for
//! one of the host's own addresses (the bridge's own are allow rules, decided before this).

use core::mem::MaybeUninit;

use aya_ebpf::bindings::{
    BPF_FIB_LKUP_RET_BLACKHOLE, BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_FWD_DISABLED,
    BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_NOT_FWDED, BPF_FIB_LKUP_RET_PROHIBIT,
    BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LKUP_RET_UNREACHABLE, BPF_FIB_LOOKUP_SKIP_NEIGH,
    bpf_fib_lookup,
};
use guard_common::{GLOBAL_FLAG_FIB_SKIP_NEIGH, PORT_FLAG_EGRESS_OK, reason};

use crate::{Outcome, frame::Frame, maps::PORTS, policy::Config};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// What the kernel would do with the packet. A plain struct, not an enum with a payload:
/// LLVM leaves an absent payload undefined, and the verifier rejects a spilled undefined
/// register.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Route {
    kind: u32,
    /// The egress interface of `OUT`.
    ifindex: u32,
}

/// No lookup was made.
const NONE: u32 = 0;
/// Forward it out of `ifindex`.
const OUT: u32 = 1;
/// Not forward it: local delivery (also broadcast, anycast), no route, or forwarding off on
/// the bridge.
const NOT_FORWARDED: u32 = 2;
/// Drop it itself: a blackhole, unreachable or prohibit route.
const KERNEL_DROPS: u32 = 3;
/// The lookup failed or gave an answer guard does not judge (a lightweight-tunnel route).
const FAILED: u32 = 4;

impl Route {
    pub const NONE: Self = Self::of(NONE);

    #[inline(always)]
    const fn of(kind: u32) -> Self {
        Self { kind, ifindex: 0 }
    }

    #[inline(always)]
    pub fn is_none(self) -> bool {
        self.kind == NONE
    }

    /// The verdict of the route check for a packet no prefix rule decided.
    #[inline(always)]
    pub fn outcome(self) -> Outcome {
        match self.kind {
            OUT if egress_ok(self.ifindex) => Outcome::new(reason::HOST_PASS, 0),
            KERNEL_DROPS => Outcome::new(reason::HOST_PASS, 0),
            NOT_FORWARDED => Outcome::new(reason::DENY_LOCAL, 0).liftable(),
            _ => Outcome::new(reason::DENY_ROUTE, 0).liftable(),
        }
    }

    /// Would the host itself receive (and so decapsulate) the packet?
    #[inline(always)]
    pub fn delivered_locally(self) -> bool {
        self.kind == NOT_FORWARDED || self.kind == FAILED
    }
}

#[inline(always)]
fn egress_ok(ifindex: u32) -> bool {
    PORTS
        .get(ifindex)
        .is_some_and(|p| p.flags & PORT_FLAG_EGRESS_OK != 0)
}

/// Zeroes `p` in place. Volatile word stores: a plain zero initialisation becomes a call to
/// `memset` in the debug build, which the verifier rejects; and zeroing in place (not a
/// zeroed temporary returned by value) leaves LLVM no copy to turn into a `memset` call in the
/// release build either (the call cost 20-33 ns per lookup, docs/bench.md).
#[inline(always)]
fn zeroed(p: &mut MaybeUninit<bpf_fib_lookup>) -> &mut bpf_fib_lookup {
    let words = p.as_mut_ptr().cast::<u32>();
    for i in 0..size_of::<bpf_fib_lookup>() / 4 {
        // SAFETY: `words` covers the 64-byte, 4-byte aligned struct.
        unsafe { words.add(i).write_volatile(0) };
    }
    // SAFETY: every byte was written; all-zero is a valid bpf_fib_lookup.
    unsafe { p.assume_init_mut() }
}

#[inline(always)]
fn lookup<F: Frame>(f: &F, cfg: &Config, p: &mut bpf_fib_lookup) -> Route {
    p.ifindex = cfg.bridge_ifindex;
    let flags = if cfg.flags & GLOBAL_FLAG_FIB_SKIP_NEIGH != 0 {
        BPF_FIB_LOOKUP_SKIP_NEIGH
    } else {
        0
    };
    let rc = f.fib_lookup(p, flags);
    let Ok(rc) = u32::try_from(rc) else {
        return Route::of(FAILED);
    };
    match rc {
        // FRAG_NEEDED only comes from the skb flavour's check of the egress MTU, after the
        // egress interface was found (`tot_len` stays 0, so the lookup itself never checks).
        // NO_NEIGH: Linux 6.3+ sets the egress interface before the neighbour lookup; older
        // kernels leave the input (the bridge) in place: then the check cannot tell, and
        // passes (the prefix rules still judge).
        BPF_FIB_LKUP_RET_SUCCESS | BPF_FIB_LKUP_RET_FRAG_NEEDED | BPF_FIB_LKUP_RET_NO_NEIGH => {
            Route {
                kind: OUT,
                ifindex: p.ifindex,
            }
        }
        BPF_FIB_LKUP_RET_NOT_FWDED | BPF_FIB_LKUP_RET_FWD_DISABLED => Route::of(NOT_FORWARDED),
        BPF_FIB_LKUP_RET_BLACKHOLE | BPF_FIB_LKUP_RET_UNREACHABLE | BPF_FIB_LKUP_RET_PROHIBIT => {
            Route::of(KERNEL_DROPS)
        }
        _ => Route::of(FAILED),
    }
}

/// The route of an IPv4 packet from `src` to `dst` (network order) with `tos` and protocol.
#[inline(always)]
pub fn v4<F: Frame>(f: &F, cfg: &Config, src: [u8; 4], dst: [u8; 4], tos: u8, proto: u8) -> Route {
    let mut m = MaybeUninit::uninit();
    let p = zeroed(&mut m);
    p.family = AF_INET;
    p.l4_protocol = proto;
    p.__bindgen_anon_2.tos = tos;
    p.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(src);
    p.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(dst);
    lookup(f, cfg, p)
}

/// The route of an IPv6 packet; `flowinfo` is the first word of the header (network order)
/// without its version bits.
#[inline(always)]
pub fn v6<F: Frame>(
    f: &F,
    cfg: &Config,
    src: &[u8; 16],
    dst: &[u8; 16],
    flowinfo: u32,
    proto: u8,
) -> Route {
    let mut m = MaybeUninit::uninit();
    let p = zeroed(&mut m);
    p.family = AF_INET6;
    p.l4_protocol = proto;
    p.__bindgen_anon_2.flowinfo = flowinfo;
    p.__bindgen_anon_3.ipv6_src = words(src);
    p.__bindgen_anon_4.ipv6_dst = words(dst);
    lookup(f, cfg, p)
}

#[inline(always)]
fn words(a: &[u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
        u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
        u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
        u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
    ]
}
