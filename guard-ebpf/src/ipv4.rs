//! IPv4 (step 5 of docs/datapath.md, then steps 8-9 through `policy::judge_ip`).

use network_types::ip::Ipv4Hdr;

use crate::{
    Outcome, exception,
    frame::{Frame, Malformed},
    policy::{self, Config},
    route::{self, Route},
};
use guard_common::reason;

/// IPv4 option types that route the packet by a list of addresses (RFC 791): loose and strict
/// source and record route.
const IPOPT_LSRR: u8 = 0x83;
const IPOPT_SSRR: u8 = 0x89;
const IPOPT_END: u8 = 0;
const IPOPT_NOOP: u8 = 1;
/// The fragment offset bits of the flags-and-offset field.
const IP_OFFSET: u16 = 0x1fff;
/// Options fill at most 40 bytes; each step of the walk consumes at least one.
const MAX_OPTION_BYTES: usize = 40;

#[inline(always)]
pub fn classify<F: Frame>(f: &F, o: usize, cfg: Config) -> Result<Outcome, Malformed> {
    let h: &Ipv4Hdr = f.at(o)?;
    if h.vihl >> 4 != 4 {
        return Err(Malformed);
    }
    let hlen = usize::from(h.vihl & 0x0f) * 4;
    if hlen < Ipv4Hdr::LEN || !f.has(o, hlen) {
        return Err(Malformed);
    }
    let total = usize::from(u16::from_be_bytes(h.tot_len));
    if total < hlen || !f.has(o, total) {
        return Err(Malformed);
    }
    // The options are walked before the prefix lookup, and their verdict is applied after it
    // (a deny prefix still decides first, also over malformed options). Walked after the
    // lookup, the walk's loop would be verified once for every way the verdict cache can
    // answer, which takes Linux 6.1's verifier past its million instructions.
    let walk = if hlen > Ipv4Hdr::LEN {
        source_routed(f, o + Ipv4Hdr::LEN, hlen - Ipv4Hdr::LEN)
    } else {
        Ok(false)
    };
    let dst = h.dst_addr;
    let rule = policy::v4(dst, cfg);
    // Only a first fragment (offset 0) carries the upper-layer header.
    let first = u16::from_be_bytes(h.frags) & IP_OFFSET == 0;
    if let Some(id) = rule.deny() {
        let deny = Outcome::new(reason::DENY_IPV4, id);
        // Step 10 may lift it only when the packet is judged by its destination alone.
        if exception::enabled(cfg)
            && matches!(walk, Ok(false))
            && (!first || cfg.tunnels_allowed() || !policy::is_tunnel(f, h.proto, o + hlen))
        {
            return Ok(deny.liftable());
        }
        return Ok(deny);
    }
    if walk? {
        return Ok(Outcome::new(reason::DENY_SRCROUTE, 0));
    }
    // Limited broadcast and multicast: the kernel never forwards them, and delivers them only
    // to what listens on the bridge itself.
    if dst == [255; 4] || dst[0] & 0xf0 == 0xe0 {
        return Ok(rule.outcome(reason::DENY_IPV4));
    }
    let tunnel = first && !cfg.tunnels_allowed() && policy::is_tunnel(f, h.proto, o + hlen);
    let route = if policy::needs_route(cfg, rule, tunnel) {
        route::v4(f, &cfg, h.src_addr, dst, h.tos, h.proto)
    } else {
        Route::NONE
    };
    Ok(policy::judge_ip(cfg, rule, tunnel, route))
}

/// Walks the options (the `len` bytes from offset `start`: a multiple of 4, `4..=40`): does
/// one of them route the packet by an address list? An option that runs past the header, or
/// a length below 2, is malformed. The options are copied to the stack in 4-byte words first:
/// the verifier cannot follow a byte-by-byte walk over packet pointers (a one-byte bound check
/// compiles to `p >= end`, from which it learns nothing); and constant-size word reads need
/// no helper whose variable size older verifiers cannot bound from below.
#[inline(always)]
fn source_routed<F: Frame>(f: &F, start: usize, len: usize) -> Result<bool, Malformed> {
    // 64 bytes, so every index masked with 63 is in bounds; zeroed with volatile stores (a
    // plain initialisation becomes `memset` in the debug build).
    let mut buf = core::mem::MaybeUninit::<[u32; 16]>::uninit();
    let words = buf.as_mut_ptr().cast::<u32>();
    for i in 0..16 {
        // SAFETY: inside the 64-byte buffer.
        unsafe { words.add(i).write_volatile(0) };
    }
    // A volatile read hides what LLVM knows of `len` (at most 40: the IHL is 4 bits) so the
    // check survives into the program: the verifier does not know the IHL bound, and needs one
    // for the walk's indexes into the buffer.
    // SAFETY: a read of a live local.
    let len = unsafe { core::ptr::read_volatile(&raw const len) };
    if len > MAX_OPTION_BYTES {
        return Err(Malformed);
    }
    for i in 0..MAX_OPTION_BYTES / 4 {
        if 4 * i >= len {
            break;
        }
        let word: &[u8; 4] = f.at(start + 4 * i)?;
        // SAFETY: `i < 10`, inside the buffer.
        unsafe { words.add(i).write_volatile(u32::from_ne_bytes(*word)) };
    }
    // SAFETY: every byte was written above.
    let bytes: [u8; 64] = unsafe { core::mem::transmute(buf.assume_init()) };
    // No separate step counter: `p` grows by at least one a step and stops at `len <= 40`,
    // and without a counter the verifier's states at the loop head differ only in `p` and
    // prune (with a counter every step is a new state: the walk's branches multiply). The
    // indexes are masked through a volatile read: LLVM knows `p < len <= 40` and would drop a
    // plain mask, and verifiers before 6.8 do not learn `p`'s bound from `p < len`.
    let at = |i: usize| {
        // SAFETY: a read of a live local.
        let i = unsafe { core::ptr::read_volatile(&raw const i) };
        bytes[i & 63]
    };
    // A second volatile read: LLVM must not know `len <= 40` here, or it drops the clamp
    // below, which is what bounds `p` for verifiers that learn nothing from `p < len`.
    // SAFETY: a read of a live local.
    let len = unsafe { core::ptr::read_volatile(&raw const len) };
    let mut p = 0usize;
    while p < len {
        if p > MAX_OPTION_BYTES {
            return Err(Malformed);
        }
        match at(p) {
            IPOPT_END => return Ok(false),
            IPOPT_NOOP => p += 1,
            IPOPT_LSRR | IPOPT_SSRR => return Ok(true),
            _ => {
                if p + 1 >= len {
                    return Err(Malformed);
                }
                let opt_len = usize::from(at(p + 1));
                if opt_len < 2 || p + opt_len > len {
                    return Err(Malformed);
                }
                p += opt_len;
            }
        }
    }
    Ok(false)
}
