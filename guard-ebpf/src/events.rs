//! Drop events: a sampled description of dropped (and monitored) frames for a reader.
//!
//! Only [`crate::account`] calls [`emit`], after the counter bump, and only for drop and
//! monitor reasons: the hot path (not addressed to the host) and the pass verdicts never get
//! here, and nothing decided here changes a verdict or a counter.
//!
//! Cost when no reader is attached: one inlined array load and a compare against zero (the
//! lease). A reader holds the lease by writing an expiry time (`bpf_ktime_get_ns` clock) and
//! renewing it; a reader that died lets it expire, and the first frame that sees it expired
//! writes zero back, so the clock read stops too.
//!
//! Rate limit: per port slot, a window of `EVENT_WINDOW_NS` that opens at the first event
//! after the previous one closed, and admits `event_rate` events. The window state is shared
//! by all CPUs (a read and one atomic add per admitted event). Frames of one port judged on
//! several CPUs at the same instant can overshoot the limit by at most one event per racing
//! CPU (both read `count` below the limit, or both reset a closed window); on one CPU the
//! limit is exact.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::helpers::bpf_ktime_get_ns;
use guard_common::{
    MAX_VLAN_TAGS,
    event::{
        DropEvent, EVENT_FLAG_ARP, EVENT_FLAG_PORTS, EVENT_SNAP_LEN, EVENT_WINDOW_NS, IP_V4, IP_V6,
    },
};
use network_types::ip::{Ipv4Hdr, Ipv6Hdr};

use crate::{
    eth::{ETH_HLEN, P_ARP, P_IPV4, P_IPV6},
    frame::Frame,
    maps::{CONFIG, EVENT_LEASE, EVENT_RATE, EVENT_STATS, EVENTS},
};

const P_8021Q: u16 = 0x8100;
const P_8021AD: u16 = 0x88a8;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
/// `EVENT_SNAP_LEN` is a power of two (asserted in guard-common).
const SNAP_MASK: u32 = EVENT_SNAP_LEN as u32 - 1;

/// Which per-CPU event counter to bump.
#[derive(Clone, Copy)]
enum Stat {
    Sampled,
    Suppressed,
    Lost,
}

#[inline(always)]
fn bump(which: Stat) {
    if let Some(s) = EVENT_STATS.get_ptr_mut(0) {
        // SAFETY: a per-CPU slot: no concurrent writer.
        unsafe {
            match which {
                Stat::Sampled => (*s).sampled = (*s).sampled.wrapping_add(1),
                Stat::Suppressed => (*s).suppressed = (*s).suppressed.wrapping_add(1),
                Stat::Lost => (*s).lost = (*s).lost.wrapping_add(1),
            }
        }
    }
}

/// Describes the frame in the ring buffer, if a reader holds the lease and the port is under
/// its rate.
#[inline(always)]
pub fn emit<F: Frame>(f: &F, ifindex: u32, slot: u32, reason: u32, rule_id: u32) {
    let Some(lease) = EVENT_LEASE.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: a live map value; a torn read of a u64 cannot happen on 64-bit BPF.
    let until = unsafe { (*lease).until_ns };
    if until == 0 {
        return;
    }
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if now >= until {
        // The reader is gone (it would have renewed): stop reading the clock for every drop.
        // A reader renewing at this very moment is overwritten once; it renews again.
        // SAFETY: as above.
        unsafe { (*lease).until_ns = 0 };
        return;
    }
    let rate = CONFIG.get(0).map_or(0, |c| c.event_rate);
    if rate == 0 {
        return;
    }
    let Some(w) = EVENT_RATE.get_ptr_mut(slot) else {
        return;
    };
    // SAFETY: `w` points at a live, 8-byte aligned map value shared by CPUs; `count` is only
    // changed atomically except by the (benign, see the module comment) window reset.
    let admitted = unsafe {
        if now.wrapping_sub((*w).start_ns) >= EVENT_WINDOW_NS {
            (*w).start_ns = now;
            (*w).count = 0;
        }
        // Check, then add: a fetch-add would give an exact ticket, but its result needs BPF
        // atomics v3 (`-mcpu=v3`), and the datapath is built for the default CPU.
        if (*w).count < u64::from(rate) {
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*w).count, 1);
            true
        } else {
            false
        }
    };
    if !admitted {
        bump(Stat::Suppressed);
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<DropEvent>(0) else {
        bump(Stat::Lost);
        return;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` is the reserved, 8-byte aligned ring-buffer record of `DropEvent`'s size.
    // It is zeroed first (the ring's memory is not), then filled in.
    unsafe {
        // Volatile word stores: a plain zero-initialisation becomes a call to `memset` in the
        // debug build, whose pointer arithmetic the verifier rejects.
        let words = ev.cast::<u64>();
        for i in 0..size_of::<DropEvent>() / 8 {
            words.add(i).write_volatile(0);
        }
        (*ev).ts_ns = now;
        (*ev).ifindex = ifindex;
        (*ev).slot = slot;
        (*ev).reason = reason;
        (*ev).rule_id = rule_id;
        (*ev).frame_len = f.len();
        describe(f, &mut *ev);
        let n = f.len();
        if n > 0 {
            let cap = if n < EVENT_SNAP_LEN as u32 {
                n
            } else {
                EVENT_SNAP_LEN as u32
            };
            // The helper's length must provably lie in 1..=EVENT_SNAP_LEN for the verifier.
            // LLVM folds `cap > 0` into a packet-pointer compare the verifier cannot connect
            // to `cap`; the opaque value plus mask and add give it the range explicitly.
            let cap = (core::hint::black_box(cap).wrapping_sub(1) & SNAP_MASK) + 1;
            if f.load(0, (*ev).data.as_mut_ptr(), cap) {
                (*ev).cap_len = cap as u16;
            }
        }
    }
    entry.submit(0);
    bump(Stat::Sampled);
}

/// Copies `N` bytes with volatile byte stores. Plain array assignments become `memcpy` calls
/// in the debug build (opt-level 1), and the verifier rejects those calls' pointer arithmetic.
///
/// # Safety
/// `src` must be readable and `dst` writable for `N` bytes.
#[inline(always)]
unsafe fn put<const N: usize>(dst: *mut u8, src: *const u8) {
    for i in 0..N {
        // SAFETY: the caller vouches for both ranges.
        unsafe { dst.add(i).write_volatile(src.add(i).read()) };
    }
}

/// Writes `a` as an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) into the zeroed `dst`.
#[inline(always)]
fn put_v4_mapped(dst: &mut [u8; 16], a: &[u8; 4]) {
    dst[10] = 0xff;
    dst[11] = 0xff;
    // SAFETY: bytes 12..16 of a 16-byte array; `a` is 4 bytes.
    unsafe { put::<4>(dst.as_mut_ptr().add(12), a.as_ptr()) };
}

/// Re-parses the headers for the event (MACs, VLANs, addresses, L4 ports). The classifier
/// does not keep these: remembering them would cost every host-bound frame, and this runs for
/// sampled events only. Whatever cannot be read stays zero (malformed frames).
#[inline(always)]
fn describe<F: Frame>(f: &F, ev: &mut DropEvent) {
    let Ok(eth) = f.at::<[u8; ETH_HLEN]>(0) else {
        return;
    };
    // SAFETY: `eth` is 14 readable bytes; the MAC fields are 6 bytes each.
    unsafe {
        put::<6>(ev.dst_mac.as_mut_ptr(), eth.as_ptr());
        put::<6>(ev.src_mac.as_mut_ptr(), eth.as_ptr().add(6));
    }
    let mut proto = u16::from_be_bytes([eth[12], eth[13]]);
    let mut off = ETH_HLEN;
    let stripped = f.tags_stripped() != 0;
    if stripped {
        ev.vlan_tci[0] = f.stripped_tci();
        ev.vlan_count = 1;
    }
    for i in 0..MAX_VLAN_TAGS {
        if proto != P_8021Q && proto != P_8021AD {
            break;
        }
        let Ok(tag) = f.at::<[u8; 4]>(off) else {
            return;
        };
        let tci = u16::from_be_bytes([tag[0], tag[1]]);
        if i == 0 && !stripped {
            ev.vlan_tci[0] = tci;
        } else {
            ev.vlan_tci[1] = tci;
        }
        ev.vlan_count = ev.vlan_count.wrapping_add(1);
        proto = u16::from_be_bytes([tag[2], tag[3]]);
        off += 4;
    }
    ev.ethertype = proto;
    match proto.to_be() {
        P_IPV4 => ipv4(f, off, ev),
        P_IPV6 => ipv6(f, off, ev),
        P_ARP => arp(f, off, ev),
        _ => {}
    }
}

#[inline(always)]
fn ports<F: Frame>(f: &F, off: usize, ev: &mut DropEvent) {
    if ev.l4_proto != IPPROTO_TCP && ev.l4_proto != IPPROTO_UDP {
        return;
    }
    if let Ok(p) = f.at::<[u8; 4]>(off) {
        ev.src_port = u16::from_be_bytes([p[0], p[1]]);
        ev.dst_port = u16::from_be_bytes([p[2], p[3]]);
        ev.flags |= EVENT_FLAG_PORTS;
    }
}

#[inline(always)]
fn ipv4<F: Frame>(f: &F, off: usize, ev: &mut DropEvent) {
    let Ok(h) = f.at::<Ipv4Hdr>(off) else {
        return;
    };
    if h.vihl >> 4 != 4 {
        return;
    }
    ev.ip_version = IP_V4;
    put_v4_mapped(&mut ev.src_ip, &h.src_addr);
    put_v4_mapped(&mut ev.dst_ip, &h.dst_addr);
    ev.l4_proto = h.proto;
    // Only the first fragment (offset 0) carries the L4 header.
    if u16::from_be_bytes(h.frags) & 0x1fff != 0 {
        return;
    }
    let hlen = usize::from(h.vihl & 0x0f) * 4;
    if hlen >= Ipv4Hdr::LEN {
        ports(f, off + hlen, ev);
    }
}

#[inline(always)]
fn ipv6<F: Frame>(f: &F, off: usize, ev: &mut DropEvent) {
    let Ok(h) = f.at::<Ipv6Hdr>(off) else {
        return;
    };
    if h.vcf[0] >> 4 != 6 {
        return;
    }
    ev.ip_version = IP_V6;
    // SAFETY: 16-byte arrays on both sides.
    unsafe {
        put::<16>(ev.src_ip.as_mut_ptr(), h.src_addr.as_ptr());
        put::<16>(ev.dst_ip.as_mut_ptr(), h.dst_addr.as_ptr());
    }
    // The next header only: ports behind extension headers are left out (bounded work).
    ev.l4_proto = h.next_hdr;
    ports(f, off + Ipv6Hdr::LEN, ev);
}

#[inline(always)]
fn arp<F: Frame>(f: &F, off: usize, ev: &mut DropEvent) {
    let Ok(h) = f.at::<network_types::arp::ArpHdr>(off) else {
        return;
    };
    if h.ptype != [0x08, 0x00] || h.plen != 4 {
        return;
    }
    ev.ip_version = IP_V4;
    ev.flags |= EVENT_FLAG_ARP;
    put_v4_mapped(&mut ev.src_ip, &h.spa);
    put_v4_mapped(&mut ev.dst_ip, &h.tpa);
}
