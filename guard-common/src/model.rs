//! The reference model of the datapath: `docs/datapath.md`, transcribed step by step.
//!
//! This is the second, independent implementation of the classifier (the first is the eBPF
//! code in `guard-ebpf`). It was written from the contract alone, without reading the eBPF
//! sources, so that a differential test between the two finds mistakes in either. It favours
//! being obviously right over being fast: prefix tables and the FIB are a linear scan, every
//! "needs `k` bytes at `o`" is a literal bounds check, and step numbers in the comments refer
//! to the contract (steps 1-10, `R(packet)`, monitor mode).
//!
//! The kernel's routing decision `R(packet)` is the one input the model cannot compute from
//! the frame: the policy carries the FIB as data ([`Policy::routes`] and the flags next to
//! it), and [`Policy`]'s fields say how each entry maps to the contract's four outcomes.
//! Step 10's flow table is data too ([`Policy::flows`]); the model has no clock, so a listed
//! flow is open (within its idle time), and one not listed is not.

use std::net::IpAddr;
use std::vec::Vec;

use crate::reason;
use crate::{ACTION_ALLOW, MAX_IPV6_EXT_HEADERS, MAX_VLAN_TAGS, TUNNEL_PROTOCOLS};

/// One entry of a prefix table. IPv4 entries go to the IPv4 table and IPv6 entries to the IPv6
/// table; the two never match each other's lookups (an IPv4-mapped IPv6 address is just an
/// IPv6 address here, as it is in the kernel's tries).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    pub addr: IpAddr,
    /// Bits of `addr` that count; at most 32 (IPv4) or 128 (IPv6). An entry with a longer
    /// prefix cannot exist in the kernel's trie, so it never matches here.
    pub prefix_len: u8,
    /// [`ACTION_ALLOW`] or [`ACTION_DENY`](crate::ACTION_DENY); any value
    /// other than allow denies.
    pub action: u16,
    pub rule_id: u32,
    pub class: u16,
}

/// One FIB entry: `addr/prefix_len` of one family; the longest matching entry decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    pub addr: IpAddr,
    /// As [`Rule::prefix_len`]: host bits of `addr` do not count, and a prefix longer than the
    /// family's address never matches.
    pub prefix_len: u8,
    pub kind: RouteKind,
}

/// What the route lookup makes of a destination whose longest match is this entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteKind {
    /// A local-table entry: local address, broadcast or anycast: `not_forwarded`.
    Local,
    /// A unicast route out of `ifindex`; `neigh`: its next hop has a valid neighbour entry.
    Via { ifindex: u32, neigh: bool },
    /// blackhole, unreachable or prohibit: `kernel_drops`.
    KernelDrops,
    /// A route the lookup does not judge (a lightweight-tunnel encap route): `failed`.
    Unsupported,
}

/// Who an exception holds for (step 10): one ingress interface, or all of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Frames that arrive on this ifindex (a port, or `b` on the bridge device's hook).
    Ifindex(u32),
    All,
}

/// One entry of an exception table (step 10): packets to `addr/prefix_len` of protocol
/// `proto` (0: any) to destination port `dport` (0: any), arriving within `scope`, pass with
/// `rule_id`. IPv4 entries go to the IPv4 table and IPv6 entries to the IPv6 table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exception {
    pub scope: Scope,
    pub proto: u8,
    pub dport: u16,
    pub addr: IpAddr,
    /// As [`Rule::prefix_len`]: a prefix longer than the family's address never matches.
    pub prefix_len: u8,
    /// Never 0 (the contract's exceptions always carry one).
    pub rule_id: u32,
}

/// One open flow of step 10's flow table, keyed as the guest's reply sees it: `guest` sends
/// from `guest_port` to `peer` at `peer_port` (ICMP echo: `guest_port` is the identifier,
/// `peer_port` 0). The family is the addresses'; `guest` and `peer` of different families
/// never match a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    pub guest: IpAddr,
    pub guest_port: u16,
    pub peer: IpAddr,
    pub peer_port: u16,
    pub proto: u8,
}

/// Everything the classifier's verdict depends on besides the frame.
///
/// `Default` is a port's hook with the route check off and nothing else set (no host MACs, no
/// rules, no tunnel ports, no routes).
#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// The host MAC set `H`.
    pub host_macs: Vec<[u8; 6]>,
    /// Both prefix tables. When two entries have the same family, prefix length and masked
    /// address, the later one wins (as a later map update replaces the earlier value).
    pub rules: Vec<Rule>,
    pub strict_mac: bool,
    /// The global monitor flag.
    pub monitor: bool,
    /// The monitor flag of the port the frame enters on.
    pub port_monitor: bool,
    /// The bridge device's own hook: every frame is host-bound (step 2).
    pub bridge_hook: bool,
    /// Steps 8-9 on (`route_check`); off by default in the model.
    pub route_check: bool,
    pub allow_tunnels: bool,
    /// `T`: UDP destination ports of tunnels.
    pub tunnel_ports: Vec<u16>,
    /// `E`: interfaces the kernel may forward guest traffic out of.
    pub egress_ok: Vec<u32>,
    /// `b`: the bridge's ifindex (the route lookup's input interface).
    pub bridge_ifindex: u32,
    /// The kernel's FIB as the route lookup sees it (see `Route`). Both families in one list;
    /// among entries with the same family, prefix length and masked address the later wins.
    pub routes: Vec<Route>,
    /// Forwarding enabled on the bridge (off: every lookup is `not_forwarded`).
    pub forwarding: bool,
    /// The kernel reports the egress interface of a next hop without a valid neighbour entry
    /// (Linux 6.3+). Without it such a route gives `out(b)`.
    pub fib_egress_without_neigh: bool,
    /// Step 10's flags: look exceptions up, let replies to open flows through.
    pub exceptions: bool,
    pub replies: bool,
    /// `i`: the interface the frame arrived on (the port; on the bridge device's hook the
    /// bridge, `b`). `BPF_PROG_TEST_RUN` gives every program loopback (1).
    pub ingress_ifindex: u32,
    /// Both exception tables. Entries with the same scope, protocol, port, family, prefix
    /// length and masked address: the later wins.
    pub exception_table: Vec<Exception>,
    /// The open flows.
    pub flows: Vec<Flow>,
}

/// What the classifier decides for one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub drop: bool,
    /// A [`reason`] code.
    pub reason: u32,
    /// The deny entry the verdict came from (drop or monitor), or the exception that let it
    /// through, whose hit counter it bumps; 0 for every other verdict. The contract names a
    /// rule id only for these, and the kernel reports rule ids only through the hit counters,
    /// so an allow verdict carries none.
    pub rule_id: u32,
}

impl Decision {
    const fn pass(reason: u32, rule_id: u32) -> Self {
        Self {
            drop: false,
            reason,
            rule_id,
        }
    }

    const fn drop(reason: u32, rule_id: u32) -> Self {
        Self {
            drop: true,
            reason,
            rule_id,
        }
    }

    /// "The destination lookup gave allow, **pass, `allow`**; else **pass, `host_pass`**", the
    /// closing verdict of several steps.
    const fn pass_by_lookup(allow: bool) -> Self {
        if allow {
            Self::pass(reason::ALLOW, 0)
        } else {
            Self::pass(reason::HOST_PASS, 0)
        }
    }

    /// Does this verdict bump a rule's hit counter? Exactly the deny-entry verdicts, enforced or
    /// monitored, and exceptions (contract, "Accounting").
    #[must_use]
    pub const fn counts_rule_hit(&self) -> bool {
        matches!(
            self.reason,
            reason::DENY_IPV4
                | reason::DENY_IPV6
                | reason::DENY_ARP
                | reason::DENY_NDP
                | reason::MONITOR_IPV4
                | reason::MONITOR_IPV6
                | reason::MONITOR_ARP
                | reason::MONITOR_NDP
                | reason::EXCEPTION
        )
    }
}

/// A lookup result: the longest matching entry's action and id.
#[derive(Clone, Copy)]
struct Hit {
    allow: bool,
    rule_id: u32,
}

/// The frame could not be parsed far enough (contract: "**malformed**").
struct Malformed;

type Step<T> = Result<T, Malformed>;

/// The frame's bytes with the contract's two primitives.
struct Frame<'a>(&'a [u8]);

impl Frame<'_> {
    /// `n`.
    fn len(&self) -> usize {
        self.0.len()
    }

    /// `o + k <= n`: are there `k` bytes at `o`?
    fn has(&self, o: usize, k: usize) -> bool {
        o.checked_add(k).is_some_and(|end| end <= self.len())
    }

    /// "Needs `k` bytes at `o`".
    fn needs(&self, o: usize, k: usize) -> Step<()> {
        if self.has(o, k) {
            Ok(())
        } else {
            Err(Malformed)
        }
    }

    /// `f[o]`; callers have checked the bounds with [`Frame::needs`].
    fn byte(&self, o: usize) -> u8 {
        self.0[o]
    }

    /// `u16(o)`: big-endian.
    fn u16(&self, o: usize) -> u16 {
        u16::from_be_bytes([self.0[o], self.0[o + 1]])
    }

    fn bytes<const N: usize>(&self, o: usize) -> [u8; N] {
        let mut a = [0; N];
        a.copy_from_slice(&self.0[o..o + N]);
        a
    }
}

/// The contract's verdict for `frame`, including step 10 and monitor mode.
#[must_use]
pub fn classify(frame: &[u8], tags_stripped: u32, policy: &Policy) -> Decision {
    let d = match classify_enforced(&Frame(frame), tags_stripped, policy) {
        Ok(d) => d,
        Err(Malformed) => Decision::drop(reason::MALFORMED, 0),
    };
    // Monitor mode, after step 10 (which `classify_enforced` applied).
    if d.drop && (policy.monitor || policy.port_monitor) {
        Decision::pass(reason::monitor_of(d.reason), d.rule_id)
    } else {
        d
    }
}

/// Steps 1-10, before monitor mode.
fn classify_enforced(f: &Frame<'_>, tags_stripped: u32, policy: &Policy) -> Step<Decision> {
    // Step 1.
    f.needs(0, 14)?;
    let dst: [u8; 6] = f.bytes(0);

    // Step 2. On the bridge device's hook `strict_mac` does not apply either: the bridge has
    // already decided the frame goes up to the host.
    let host_bound = if policy.bridge_hook {
        true
    } else if dst[0] & 1 != 0 {
        !policy.strict_mac
    } else {
        policy.host_macs.contains(&dst)
    };
    if !host_bound {
        return Ok(Decision::pass(reason::NOT_HOST, 0));
    }

    // Step 3. A hook can strip at most one tag, but a nonsensical larger value must not wrap
    // the budget into a huge one.
    let mut p = f.u16(12);
    let mut o = 14;
    let mut budget = (MAX_VLAN_TAGS as u32).saturating_sub(tags_stripped);
    while p == 0x8100 || p == 0x88a8 {
        if budget == 0 {
            return Err(Malformed);
        }
        f.needs(o, 4)?;
        p = f.u16(o + 2);
        o += 4;
        budget -= 1;
    }

    // Step 4; step 10 looks once more at what steps 5 and 6 (and 8-9 behind them) decided.
    match p {
        0x0800 => Ok(exceptions_and_replies(
            f,
            o,
            false,
            ipv4(f, o, policy)?,
            policy,
        )),
        0x86dd => Ok(exceptions_and_replies(
            f,
            o,
            true,
            ipv6(f, o, policy)?,
            policy,
        )),
        0x0806 => arp(f, o, policy),
        _ => Ok(Decision::pass(reason::HOST_PASS, 0)),
    }
}

const IPPROTO_UDP: u8 = 17;

/// Step 5.
fn ipv4(f: &Frame<'_>, o: usize, policy: &Policy) -> Step<Decision> {
    f.needs(o, 20)?;
    let vihl = f.byte(o);
    if vihl >> 4 != 4 {
        return Err(Malformed);
    }
    let hlen = 4 * usize::from(vihl & 0xf);
    if hlen < 20 {
        return Err(Malformed);
    }
    f.needs(o, hlen)?;
    let total = usize::from(f.u16(o + 2));
    if total < hlen {
        return Err(Malformed);
    }
    f.needs(o, total)?;
    let d: [u8; 4] = f.bytes(o + 16);
    let allow = match lookup(policy, IpAddr::from(d)) {
        Some(Hit {
            allow: false,
            rule_id,
        }) => return Ok(Decision::drop(reason::DENY_IPV4, rule_id)),
        Some(Hit { allow: true, .. }) => true,
        None => false,
    };

    if ipv4_source_routed(f, o, hlen)? {
        return Ok(Decision::drop(reason::DENY_SRCROUTE, 0));
    }

    if d == [255; 4] || d[0] & 0xf0 == 0xe0 {
        // Limited broadcast or multicast: the kernel never forwards these.
        return Ok(Decision::pass_by_lookup(allow));
    }

    let fragment_offset = f.u16(o + 6) & 0x1fff;
    let first_fragment = fragment_offset == 0;
    let tunnel = !policy.allow_tunnels
        && first_fragment
        && is_tunnel_upper_layer(f, f.byte(o + 9), o + hlen, policy);
    let src: [u8; 4] = f.bytes(o + 12);
    Ok(route_check(
        policy,
        IpAddr::from(src),
        IpAddr::from(d),
        allow,
        tunnel,
    ))
}

/// Step 5's options walk over the header `f[o..o + hlen]`: is there a source route option?
fn ipv4_source_routed(f: &Frame<'_>, o: usize, hlen: usize) -> Step<bool> {
    const END_OF_LIST: u8 = 0;
    const NO_OP: u8 = 1;
    const LSRR: u8 = 0x83;
    const SSRR: u8 = 0x89;
    /// The options area is at most 40 bytes and every step moves at least one byte, so the
    /// bound never ends a walk early; it is here because the contract states it.
    const MAX_STEPS: usize = 40;

    let end = o + hlen;
    let mut p = o + 20;
    let mut steps = 0;
    while p < end && steps < MAX_STEPS {
        match f.byte(p) {
            END_OF_LIST => break,
            NO_OP => p += 1,
            LSRR | SSRR => return Ok(true),
            _ => {
                // `len = f[p+1]`. When the type is the header's last byte, `f[p+1]` lies
                // outside the header (and, without a payload, outside the frame); every value
                // it could have is malformed there (`len < 2`, or `p + len > end`), so it is
                // not read.
                if p + 1 >= end {
                    return Err(Malformed);
                }
                let len = usize::from(f.byte(p + 1));
                if len < 2 || p + len > end {
                    return Err(Malformed);
                }
                p += len;
            }
        }
        steps += 1;
    }
    Ok(false)
}

/// Steps 5 and 6: is an upper layer of protocol `proto` that starts at `l4` a tunnel
/// encapsulation? (The callers check `allow_tunnels` and that the upper layer is in the frame.)
fn is_tunnel_upper_layer(f: &Frame<'_>, proto: u8, l4: usize, policy: &Policy) -> bool {
    TUNNEL_PROTOCOLS.contains(&proto)
        || (proto == IPPROTO_UDP && f.has(l4, 4) && policy.tunnel_ports.contains(&f.u16(l4 + 2)))
}

/// IPv6 next-header values the walk in step 6 steps over.
const NH_HOP_BY_HOP: u8 = 0;
const NH_ROUTING: u8 = 43;
const NH_FRAGMENT: u8 = 44;
const NH_AH: u8 = 51;
const NH_DEST_OPTS: u8 = 60;
const NH_ICMPV6: u8 = 58;
const ICMPV6_NEIGHBOUR_SOLICITATION: u8 = 135;

fn is_ext_header(nh: u8) -> bool {
    matches!(
        nh,
        NH_HOP_BY_HOP | NH_ROUTING | NH_FRAGMENT | NH_AH | NH_DEST_OPTS
    )
}

/// Where step 6's extension header walk stopped.
enum Walk {
    /// A routing header with segments left.
    SourceRoute,
    /// The walk ended with next header `nh` at `q`; `in_frame`: the upper layer is in this
    /// frame (not after a later fragment).
    Stopped { nh: u8, q: usize, in_frame: bool },
}

/// Step 6.
fn ipv6(f: &Frame<'_>, o: usize, policy: &Policy) -> Step<Decision> {
    f.needs(o, 40)?;
    if f.byte(o) >> 4 != 6 {
        return Err(Malformed);
    }
    f.needs(o + 40, usize::from(f.u16(o + 4)))?;
    let dst: [u8; 16] = f.bytes(o + 24);
    let allow = match lookup(policy, IpAddr::from(dst)) {
        Some(Hit {
            allow: false,
            rule_id,
        }) => return Ok(Decision::drop(reason::DENY_IPV6, rule_id)),
        Some(Hit { allow: true, .. }) => true,
        None => false,
    };

    let (nh, q, in_frame) = match ipv6_walk(f, o)? {
        Walk::SourceRoute => return Ok(Decision::drop(reason::DENY_SRCROUTE, 0)),
        Walk::Stopped { nh, q, in_frame } => (nh, q, in_frame),
    };

    // The two checks of the upper layer.
    if in_frame {
        if is_ext_header(nh) {
            // Only reachable when the walk used up its headers.
            return Err(Malformed);
        }
        if nh == NH_ICMPV6 {
            f.needs(q, 4)?;
            if f.byte(q) == ICMPV6_NEIGHBOUR_SOLICITATION {
                f.needs(q, 24)?;
                let target: [u8; 16] = f.bytes(q + 8);
                if let Some(Hit {
                    allow: false,
                    rule_id,
                }) = lookup(policy, IpAddr::from(target))
                {
                    return Ok(Decision::drop(reason::DENY_NDP, rule_id));
                }
            }
        }
    }

    let multicast = dst[0] == 0xff;
    let link_local = dst[0] == 0xfe && dst[1] & 0xc0 == 0x80;
    if multicast || link_local {
        return Ok(Decision::pass_by_lookup(allow));
    }

    let tunnel = !policy.allow_tunnels && in_frame && is_tunnel_upper_layer(f, nh, q, policy);
    let src: [u8; 16] = f.bytes(o + 8);
    Ok(route_check(
        policy,
        IpAddr::from(src),
        IpAddr::from(dst),
        allow,
        tunnel,
    ))
}

/// Step 6's walk over at most [`MAX_IPV6_EXT_HEADERS`] extension headers of the IPv6 packet
/// at `o`.
fn ipv6_walk(f: &Frame<'_>, o: usize) -> Step<Walk> {
    let mut nh = f.byte(o + 6);
    let mut q = o + 40;
    let mut walked = 0;
    while walked < MAX_IPV6_EXT_HEADERS && is_ext_header(nh) {
        match nh {
            NH_ROUTING => {
                f.needs(q, 4)?;
                if f.byte(q + 3) != 0 {
                    return Ok(Walk::SourceRoute);
                }
                nh = f.byte(q);
                q += 8 * (usize::from(f.byte(q + 1)) + 1);
            }
            NH_AH => {
                f.needs(q, 2)?;
                nh = f.byte(q);
                q += 4 * (usize::from(f.byte(q + 1)) + 2);
            }
            NH_FRAGMENT => {
                f.needs(q, 8)?;
                nh = f.byte(q);
                if f.u16(q + 2) & 0xfff8 != 0 {
                    // A later fragment: its upper layer is in the first fragment.
                    return Ok(Walk::Stopped {
                        nh,
                        q,
                        in_frame: false,
                    });
                }
                q += 8;
            }
            // Hop-by-hop, destination options.
            _ => {
                f.needs(q, 2)?;
                nh = f.byte(q);
                q += 8 * (usize::from(f.byte(q + 1)) + 1);
            }
        }
        // The walk's bound on the cursor.
        if q > 1024 {
            return Err(Malformed);
        }
        walked += 1;
    }
    Ok(Walk::Stopped {
        nh,
        q,
        in_frame: true,
    })
}

/// Step 7.
fn arp(f: &Frame<'_>, o: usize, policy: &Policy) -> Step<Decision> {
    f.needs(o, 28)?;
    if f.u16(o) != 1 || f.u16(o + 2) != 0x0800 || f.byte(o + 4) != 6 || f.byte(o + 5) != 4 {
        return Err(Malformed);
    }
    let target: [u8; 4] = f.bytes(o + 24);
    let sender: [u8; 4] = f.bytes(o + 14);
    let target_hit = lookup(policy, IpAddr::from(target));
    if let Some(Hit {
        allow: false,
        rule_id,
    }) = target_hit
    {
        return Ok(Decision::drop(reason::DENY_ARP, rule_id));
    }
    if let Some(Hit {
        allow: false,
        rule_id,
    }) = lookup(policy, IpAddr::from(sender))
    {
        return Ok(Decision::drop(reason::DENY_ARP, rule_id));
    }
    Ok(Decision::pass_by_lookup(matches!(
        target_hit,
        Some(Hit { allow: true, .. })
    )))
}

/// Steps 8 and 9 for an IP packet to `dst` whose destination lookup gave allow (`allow`) or
/// nothing, and which is a `tunnel` or not.
fn route_check(policy: &Policy, src: IpAddr, dst: IpAddr, allow: bool, tunnel: bool) -> Decision {
    // Step 8.
    if !policy.route_check {
        return if tunnel {
            Decision::drop(reason::DENY_TUNNEL, 0)
        } else {
            Decision::pass_by_lookup(allow)
        };
    }
    if allow && !tunnel {
        return Decision::pass(reason::ALLOW, 0);
    }
    let r = route(policy, src, dst);
    if tunnel && matches!(r, RouteResult::NotForwarded | RouteResult::Failed) {
        return Decision::drop(reason::DENY_TUNNEL, 0);
    }
    if allow {
        return Decision::pass(reason::ALLOW, 0);
    }

    // Step 9.
    match r {
        RouteResult::Out(i) if policy.egress_ok.contains(&i) => {
            Decision::pass(reason::HOST_PASS, 0)
        }
        RouteResult::KernelDrops => Decision::pass(reason::HOST_PASS, 0),
        RouteResult::NotForwarded => Decision::drop(reason::DENY_LOCAL, 0),
        RouteResult::Out(_) | RouteResult::Failed => Decision::drop(reason::DENY_ROUTE, 0),
    }
}

/// The contract's outcomes of `R(packet)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RouteResult {
    Out(u32),
    NotForwarded,
    KernelDrops,
    Failed,
}

/// `R(packet)` over the policy's FIB. Only the destination counts: the route world the model
/// describes has no policy rules on source, TOS, flow information or protocol.
fn route(policy: &Policy, src: IpAddr, dst: IpAddr) -> RouteResult {
    // The contract: an IPv6 packet whose source or destination is link-local, multicast or
    // loopback is never forwarded (NOT_FWDED before any lookup).
    let strict = |a: IpAddr| match a {
        IpAddr::V6(a) => {
            let o = a.octets();
            o[0] == 0xff || (o[0] == 0xfe && o[1] & 0xc0 == 0x80) || a.is_loopback()
        }
        IpAddr::V4(_) => false,
    };
    if strict(src) || strict(dst) {
        return RouteResult::NotForwarded;
    }
    if !policy.forwarding {
        // FWD_DISABLED.
        return RouteResult::NotForwarded;
    }
    match longest_match(&policy.routes, dst, |r| (r.addr, r.prefix_len)).map(|r| r.kind) {
        // No route at all (NOT_FWDED), or a local-table entry (NOT_FWDED).
        None | Some(RouteKind::Local) => RouteResult::NotForwarded,
        // SUCCESS, or NO_NEIGH with the egress interface filled in (Linux 6.3+).
        Some(RouteKind::Via { ifindex, neigh }) if neigh || policy.fib_egress_without_neigh => {
            RouteResult::Out(ifindex)
        }
        // NO_NEIGH before Linux 6.3: the input interface `b` is left in place.
        Some(RouteKind::Via { .. }) => RouteResult::Out(policy.bridge_ifindex),
        // BLACKHOLE, UNREACHABLE, PROHIBIT.
        Some(RouteKind::KernelDrops) => RouteResult::KernelDrops,
        // UNSUPP_LWT.
        Some(RouteKind::Unsupported) => RouteResult::Failed,
    }
}

const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// Step 10's reading of the upper layer.
#[derive(Clone, Copy)]
enum Upper {
    /// TCP or UDP with its header in the frame; `flags`: TCP's flags byte (0 for UDP).
    Ports { sport: u16, dport: u16, flags: u8 },
    /// ICMP or ICMPv6 with 6 bytes in the frame.
    Icmp { kind: u8, id: u16 },
    /// Anything else: a later fragment, another protocol.
    None,
}

/// What step 10 reads of an IP packet.
struct Packet {
    proto: u8,
    src: IpAddr,
    dst: IpAddr,
    upper: Upper,
}

/// Step 10 for the IP packet at `o` (`v6`: IPv6) that steps 5-9 judged `d`.
fn exceptions_and_replies(
    f: &Frame<'_>,
    o: usize,
    v6: bool,
    d: Decision,
    policy: &Policy,
) -> Decision {
    if !(policy.exceptions || policy.replies)
        || !matches!(
            d.reason,
            reason::DENY_IPV4 | reason::DENY_IPV6 | reason::DENY_ROUTE | reason::DENY_LOCAL
        )
    {
        return d;
    }
    // A deny entry's verdict only when the packet is judged by its destination alone.
    if matches!(d.reason, reason::DENY_IPV4 | reason::DENY_IPV6)
        && !judged_by_destination_alone(f, o, v6, policy)
    {
        return d;
    }
    // An upper-layer header cut short: the verdict stands.
    let Some(p) = packet(f, o, v6) else {
        return d;
    };
    if policy.exceptions
        && let Some(rule_id) = exception(&p, policy)
    {
        return Decision::pass(reason::EXCEPTION, rule_id);
    }
    if policy.replies && is_reply(&p, policy) {
        return Decision::pass(reason::REPLY, 0);
    }
    d
}

/// Step 10's condition on a `deny_ipv4`/`deny_ipv6` from a deny entry: IPv4, the options
/// walk finds no source route and nothing malformed, and the packet is no tunnel (as step 5
/// defines one); IPv6, the fixed header's next header is TCP, UDP or ICMPv6 and no tunnel.
fn judged_by_destination_alone(f: &Frame<'_>, o: usize, v6: bool, policy: &Policy) -> bool {
    if v6 {
        let nh = f.byte(o + 6);
        matches!(nh, 6 | IPPROTO_UDP | NH_ICMPV6)
            && (policy.allow_tunnels || !is_tunnel_upper_layer(f, nh, o + 40, policy))
    } else {
        let hlen = 4 * usize::from(f.byte(o) & 0xf);
        let fragment_offset = f.u16(o + 6) & 0x1fff;
        let first_fragment = fragment_offset == 0;
        matches!(ipv4_source_routed(f, o, hlen), Ok(false))
            && !(!policy.allow_tunnels
                && first_fragment
                && is_tunnel_upper_layer(f, f.byte(o + 9), o + hlen, policy))
    }
}

/// Step 10's "packet's upper layer"; `None` when the TCP, UDP or ICMP header it needs is
/// not all in the frame.
fn packet(f: &Frame<'_>, o: usize, v6: bool) -> Option<Packet> {
    // Steps 5 and 6 checked the fixed header (and IPv4's `ihl`) before any deny verdict, so
    // the header bytes read here are in the frame.
    let (proto, l4, present, src, dst) = if v6 {
        let src: [u8; 16] = f.bytes(o + 8);
        let dst: [u8; 16] = f.bytes(o + 24);
        (
            f.byte(o + 6),
            o + 40,
            true,
            IpAddr::from(src),
            IpAddr::from(dst),
        )
    } else {
        let src: [u8; 4] = f.bytes(o + 12);
        let dst: [u8; 4] = f.bytes(o + 16);
        let fragment_offset = f.u16(o + 6) & 0x1fff;
        let l4 = o + 4 * usize::from(f.byte(o) & 0x0f);
        (
            f.byte(o + 9),
            l4,
            fragment_offset == 0,
            IpAddr::from(src),
            IpAddr::from(dst),
        )
    };
    let upper = match proto {
        IPPROTO_TCP if present => {
            if !f.has(l4, 14) {
                return None;
            }
            Upper::Ports {
                sport: f.u16(l4),
                dport: f.u16(l4 + 2),
                flags: f.byte(l4 + 13),
            }
        }
        IPPROTO_UDP if present => {
            if !f.has(l4, 4) {
                return None;
            }
            Upper::Ports {
                sport: f.u16(l4),
                dport: f.u16(l4 + 2),
                flags: 0,
            }
        }
        IPPROTO_ICMP | NH_ICMPV6 if present => {
            if !f.has(l4, 6) {
                return None;
            }
            Upper::Icmp {
                kind: f.byte(l4),
                id: f.u16(l4 + 4),
            }
        }
        _ => Upper::None,
    };
    Some(Packet {
        proto,
        src,
        dst,
        upper,
    })
}

/// Step 10's exceptions: the rule id of the first entry found, in the contract's order.
fn exception(p: &Packet, policy: &Policy) -> Option<u32> {
    let dport = match p.upper {
        Upper::Ports { dport, .. } => dport,
        Upper::Icmp { .. } | Upper::None => 0,
    };
    let i = Scope::Ifindex(policy.ingress_ifindex);
    [
        (i, p.proto, dport),
        (i, p.proto, 0),
        (i, 0, 0),
        (Scope::All, p.proto, dport),
        (Scope::All, p.proto, 0),
        (Scope::All, 0, 0),
    ]
    .into_iter()
    .find_map(|(scope, proto, port)| {
        let table: Vec<Exception> = policy
            .exception_table
            .iter()
            .filter(|e| e.scope == scope && e.proto == proto && e.dport == port)
            .copied()
            .collect();
        longest_match(&table, p.dst, |e| (e.addr, e.prefix_len)).map(|e| e.rule_id)
    })
}

/// Step 10's replies: is the packet a reply, and its flow open?
fn is_reply(p: &Packet, policy: &Policy) -> bool {
    // The key as (guest address, guest port, peer address, peer port).
    let key = match p.upper {
        Upper::Ports { flags, .. }
            if p.proto == IPPROTO_TCP && flags & TCP_SYN != 0 && flags & TCP_ACK == 0 =>
        {
            None
        }
        Upper::Ports { sport, dport, .. } => Some((p.src, sport, p.dst, dport)),
        Upper::Icmp { kind: 0, id } if p.proto == IPPROTO_ICMP => Some((p.src, id, p.dst, 0)),
        Upper::Icmp { kind: 129, id } if p.proto == NH_ICMPV6 => Some((p.src, id, p.dst, 0)),
        Upper::Icmp { .. } | Upper::None => None,
    };
    key.is_some_and(|(guest, guest_port, peer, peer_port)| {
        policy.flows.contains(&Flow {
            guest,
            guest_port,
            peer,
            peer_port,
            proto: p.proto,
        })
    })
}

/// Does the first `prefix_len` bits of `a` equal those of `b`?
fn prefix_matches(a: &[u8], b: &[u8], prefix_len: u8) -> bool {
    let bits = usize::from(prefix_len);
    if bits > 8 * a.len() {
        return false;
    }
    let (whole, rest) = (bits / 8, bits % 8);
    if a[..whole] != b[..whole] {
        return false;
    }
    rest == 0 || {
        let mask = 0xffu8 << (8 - rest);
        a[whole] & mask == b[whole] & mask
    }
}

/// Does the prefix `net/prefix_len` contain `addr`? Never across families.
fn prefix_contains(net: IpAddr, prefix_len: u8, addr: IpAddr) -> bool {
    match (net, addr) {
        (IpAddr::V4(n), IpAddr::V4(a)) => prefix_matches(&n.octets(), &a.octets(), prefix_len),
        (IpAddr::V6(n), IpAddr::V6(a)) => prefix_matches(&n.octets(), &a.octets(), prefix_len),
        _ => false,
    }
}

/// The entry with the longest prefix (given by `prefix`) that contains `addr`. Among equal
/// prefixes (same length, same masked address) the last entry wins.
fn longest_match<T>(
    entries: &[T],
    addr: IpAddr,
    prefix: impl Fn(&T) -> (IpAddr, u8),
) -> Option<&T> {
    let mut best: Option<(&T, u8)> = None;
    for entry in entries {
        let (net, prefix_len) = prefix(entry);
        if prefix_contains(net, prefix_len, addr)
            && best.is_none_or(|(_, best_len)| prefix_len >= best_len)
        {
            best = Some((entry, prefix_len));
        }
    }
    best.map(|(entry, _)| entry)
}

/// A prefix table lookup: the longest-prefix rule of `addr`'s family that contains it.
fn lookup(policy: &Policy, addr: IpAddr) -> Option<Hit> {
    longest_match(&policy.rules, addr, |r| (r.addr, r.prefix_len)).map(|r| Hit {
        allow: r.action == ACTION_ALLOW,
        rule_id: r.rule_id,
    })
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::vec;
    use std::vec::Vec;

    use super::*;
    use crate::{ACTION_DENY, CLASS_STORAGE, DEFAULT_TUNNEL_PORTS};

    const HOST: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
    const GUEST: [u8; 6] = [0x52, 0x54, 0, 0, 0, 2];
    const OTHER: [u8; 6] = [0x52, 0x54, 0, 0, 0, 3];

    fn rule(addr: &str, prefix_len: u8, action: u16, rule_id: u32) -> Rule {
        Rule {
            addr: addr.parse().expect("test address"),
            prefix_len,
            action,
            rule_id,
            class: CLASS_STORAGE,
        }
    }

    fn policy() -> Policy {
        Policy {
            host_macs: vec![HOST],
            rules: vec![
                rule("10.0.0.0", 8, ACTION_DENY, 1),
                rule("10.1.2.0", 24, ACTION_ALLOW, 2),
                rule("10.1.2.128", 25, ACTION_DENY, 3),
                rule("fd00::", 16, ACTION_DENY, 4),
                rule("fd00:1::", 32, ACTION_ALLOW, 5),
            ],
            ..Policy::default()
        }
    }

    fn eth(dst: [u8; 6], ethertype: u16) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst);
        f.extend_from_slice(&GUEST);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f
    }

    /// IPv4 with `options` (a multiple of 4 bytes), protocol `proto`, the flags and fragment
    /// offset field `frag`, and `payload`.
    fn ipv4_with(
        dst: [u8; 6],
        ip_dst: Ipv4Addr,
        proto: u8,
        frag: u16,
        options: &[u8],
        payload: &[u8],
    ) -> Vec<u8> {
        assert!(options.len().is_multiple_of(4) && options.len() <= 40);
        let mut f = eth(dst, 0x0800);
        let hlen = 20 + options.len();
        let mut h = [0u8; 20];
        h[0] = 0x40 | (hlen / 4) as u8;
        h[2..4].copy_from_slice(&((hlen + payload.len()) as u16).to_be_bytes());
        h[6..8].copy_from_slice(&frag.to_be_bytes());
        h[8] = 64;
        h[9] = proto;
        h[12..16].copy_from_slice(&[192, 168, 0, 2]);
        h[16..20].copy_from_slice(&ip_dst.octets());
        f.extend_from_slice(&h);
        f.extend_from_slice(options);
        f.extend_from_slice(payload);
        f
    }

    /// A UDP header to destination port `port`.
    fn udp(port: u16) -> Vec<u8> {
        let mut u = vec![0x30, 0x39];
        u.extend_from_slice(&port.to_be_bytes());
        u.extend_from_slice(&[0, 8, 0, 0]);
        u
    }

    /// UDP with an all-zero header (port 0, no tunnel) in IPv4 without options: 28 bytes of
    /// IP. The zeros matter to `ipv4_header_checks`, which reads them as options.
    fn ipv4(dst: [u8; 6], ip_dst: Ipv4Addr) -> Vec<u8> {
        ipv4_with(dst, ip_dst, IPPROTO_UDP, 0, &[], &[0; 8])
    }

    /// IPv6 with `ext` (already encoded) between the fixed header and `upper`.
    fn ipv6(dst: [u8; 6], ip_dst: Ipv6Addr, first_nh: u8, ext: &[u8], upper: &[u8]) -> Vec<u8> {
        let mut f = eth(dst, 0x86dd);
        let payload = ext.len() + upper.len();
        let mut h = [0u8; 40];
        h[0] = 0x60;
        h[4..6].copy_from_slice(&(payload as u16).to_be_bytes());
        h[6] = first_nh;
        h[7] = 255;
        // A global source: the kernel never forwards a link-local one (`R` gives
        // not_forwarded), which `ipv6_link_local_source_is_never_forwarded` checks apart.
        h[8..24].copy_from_slice(&"2001:db8:50::2".parse::<Ipv6Addr>().expect("addr").octets());
        h[24..40].copy_from_slice(&ip_dst.octets());
        f.extend_from_slice(&h);
        f.extend_from_slice(ext);
        f.extend_from_slice(upper);
        f
    }

    fn ns(target: Ipv6Addr) -> Vec<u8> {
        let mut m = vec![135, 0, 0, 0, 0, 0, 0, 0];
        m.extend_from_slice(&target.octets());
        m
    }

    fn arp(sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
        let mut f = eth([0xff; 6], 0x0806);
        f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        f.extend_from_slice(&GUEST);
        f.extend_from_slice(&sender.octets());
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&target.octets());
        f
    }

    fn v4(s: &str) -> Ipv4Addr {
        s.parse().expect("test address")
    }

    fn v6(s: &str) -> Ipv6Addr {
        s.parse().expect("test address")
    }

    fn check(frame: &[u8], p: &Policy, drop: bool, reason: u32, rule_id: u32) {
        assert_eq!(
            classify(frame, 0, p),
            Decision {
                drop,
                reason,
                rule_id
            }
        );
    }

    #[test]
    fn host_bound_test_and_short_frames() {
        let p = policy();
        check(&ipv4(OTHER, v4("10.0.0.1")), &p, false, reason::NOT_HOST, 0);
        check(&ipv4(HOST, v4("10.0.0.1")), &p, true, reason::DENY_IPV4, 1);
        check(
            &ipv4([0xff; 6], v4("10.0.0.1")),
            &p,
            true,
            reason::DENY_IPV4,
            1,
        );
        check(
            &ipv4([0x33, 0x33, 0, 0, 0, 1], v4("10.0.0.1")),
            &p,
            true,
            reason::DENY_IPV4,
            1,
        );
        let strict = Policy {
            strict_mac: true,
            ..policy()
        };
        check(
            &ipv4([0xff; 6], v4("10.0.0.1")),
            &strict,
            false,
            reason::NOT_HOST,
            0,
        );
        check(
            &ipv4(HOST, v4("10.0.0.1")),
            &strict,
            true,
            reason::DENY_IPV4,
            1,
        );
        // Too short to show it is not for the host, even with a foreign destination MAC.
        check(
            &ipv4(OTHER, v4("10.0.0.1"))[..13],
            &p,
            true,
            reason::MALFORMED,
            0,
        );
        check(&[], &p, true, reason::MALFORMED, 0);
        // A not-host frame is never looked at further, however broken.
        check(&eth(OTHER, 0x0800), &p, false, reason::NOT_HOST, 0);
    }

    #[test]
    fn longest_prefix_wins() {
        let p = policy();
        check(&ipv4(HOST, v4("10.1.2.3")), &p, false, reason::ALLOW, 0);
        check(
            &ipv4(HOST, v4("10.1.2.200")),
            &p,
            true,
            reason::DENY_IPV4,
            3,
        );
        check(&ipv4(HOST, v4("10.1.3.1")), &p, true, reason::DENY_IPV4, 1);
        check(
            &ipv4(HOST, v4("192.168.0.1")),
            &p,
            false,
            reason::HOST_PASS,
            0,
        );
        // A later duplicate replaces the earlier entry, host bits are ignored.
        let mut dup = policy();
        dup.rules.push(rule("10.1.2.7", 24, ACTION_DENY, 9));
        check(
            &ipv4(HOST, v4("10.1.2.3")),
            &dup,
            true,
            reason::DENY_IPV4,
            9,
        );
        // An action other than allow denies.
        let mut odd = policy();
        odd.rules.push(rule("10.9.9.9", 32, 77, 10));
        check(
            &ipv4(HOST, v4("10.9.9.9")),
            &odd,
            true,
            reason::DENY_IPV4,
            10,
        );
    }

    #[test]
    fn ipv4_header_checks() {
        let p = policy();
        let good = ipv4(HOST, v4("192.168.0.1"));
        let mut f = good.clone();
        f[14] = 0x44; // IHL 4
        check(&f, &p, true, reason::MALFORMED, 0);
        let mut f = good.clone();
        f[14] = 0x65; // version 6
        check(&f, &p, true, reason::MALFORMED, 0);
        let mut f = good.clone();
        f[14] = 0x47; // 28-byte header in a 28-byte packet: total 28 is fine
        check(&f, &p, false, reason::HOST_PASS, 0);
        f[14] = 0x48; // 32-byte header, frame too short
        check(&f, &p, true, reason::MALFORMED, 0);
        let mut f = good.clone();
        f[16..18].copy_from_slice(&29u16.to_be_bytes()); // total beyond the frame
        check(&f, &p, true, reason::MALFORMED, 0);
        f[16..18].copy_from_slice(&19u16.to_be_bytes()); // total below the header
        check(&f, &p, true, reason::MALFORMED, 0);
        let mut f = good.clone();
        f.extend_from_slice(&[0; 18]); // Ethernet padding after total
        check(&f, &p, false, reason::HOST_PASS, 0);
        check(&good[..33], &p, true, reason::MALFORMED, 0);
    }

    #[test]
    fn vlan_budget() {
        let p = policy();
        let plain = ipv4(HOST, v4("10.0.0.1"));
        let tagged = |tags: &[u16]| {
            let mut f = plain[..12].to_vec();
            for t in tags {
                f.extend_from_slice(&t.to_be_bytes());
                f.extend_from_slice(&[0, 0]); // VLAN ID 0
            }
            f.extend_from_slice(&plain[12..]);
            f
        };
        check(&tagged(&[0x8100]), &p, true, reason::DENY_IPV4, 1);
        check(&tagged(&[0x88a8, 0x8100]), &p, true, reason::DENY_IPV4, 1);
        check(
            &tagged(&[0x88a8, 0x8100, 0x8100]),
            &p,
            true,
            reason::MALFORMED,
            0,
        );
        // One tag already stripped by the hook leaves room for one.
        assert_eq!(
            classify(&tagged(&[0x8100]), 1, &p).reason,
            reason::DENY_IPV4
        );
        assert_eq!(
            classify(&tagged(&[0x8100, 0x8100]), 1, &p).reason,
            reason::MALFORMED
        );
        assert_eq!(classify(&plain, 7, &p).reason, reason::DENY_IPV4);
        assert_eq!(
            classify(&tagged(&[0x8100]), 7, &p).reason,
            reason::MALFORMED
        );
        // A tag cut short.
        check(&tagged(&[0x8100])[..16], &p, true, reason::MALFORMED, 0);
    }

    #[test]
    fn ipv6_and_ndp() {
        let p = policy();
        let udp = [0u8; 8];
        check(
            &ipv6(HOST, v6("fd00::1"), 17, &[], &udp),
            &p,
            true,
            reason::DENY_IPV6,
            4,
        );
        check(
            &ipv6(HOST, v6("fd00:1::1"), 17, &[], &udp),
            &p,
            false,
            reason::ALLOW,
            0,
        );
        check(
            &ipv6(HOST, v6("2001:db8::1"), 17, &[], &udp),
            &p,
            false,
            reason::HOST_PASS,
            0,
        );
        let mcast = [0x33, 0x33, 0xff, 0, 0, 1];
        let sol = v6("ff02::1:ff00:1");
        check(
            &ipv6(mcast, sol, 58, &[], &ns(v6("fd00::1"))),
            &p,
            true,
            reason::DENY_NDP,
            4,
        );
        check(
            &ipv6(mcast, sol, 58, &[], &ns(v6("fd00:1::1"))),
            &p,
            false,
            reason::HOST_PASS,
            0,
        );
        // NS cut short after its type: needs 24 bytes.
        check(
            &ipv6(mcast, sol, 58, &[], &ns(v6("fd00::1"))[..20]),
            &p,
            true,
            reason::MALFORMED,
            0,
        );
        // Not an NS: only 4 bytes needed.
        check(
            &ipv6(mcast, sol, 58, &[], &[136, 0, 0, 0]),
            &p,
            false,
            reason::HOST_PASS,
            0,
        );
        // Payload length beyond the frame, bad version.
        let mut f = ipv6(HOST, v6("2001:db8::1"), 17, &[], &udp);
        f[19] = 9;
        check(&f, &p, true, reason::MALFORMED, 0);
        let mut f = ipv6(HOST, v6("2001:db8::1"), 17, &[], &udp);
        f[14] = 0x40;
        check(&f, &p, true, reason::MALFORMED, 0);
    }

    #[test]
    fn ipv6_extension_walk() {
        let p = policy();
        let mcast = [0x33, 0x33, 0xff, 0, 0, 1];
        let sol = v6("ff02::1:ff00:1");
        let target = ns(v6("fd00::1"));
        let hbh = |next: u8| [next, 0, 1, 4, 0, 0, 0, 0];
        // HBH, dest-opts, AH (len 1 = 12 bytes), first fragment, then the NS.
        let mut ext = Vec::new();
        ext.extend_from_slice(&hbh(60));
        ext.extend_from_slice(&hbh(51));
        ext.extend_from_slice(&[44, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        ext.extend_from_slice(&[58, 0, 0, 1, 0, 0, 0, 0]);
        check(
            &ipv6(mcast, sol, 0, &ext, &target),
            &p,
            true,
            reason::DENY_NDP,
            4,
        );
        // The same with a later fragment: the walk stops, final pass.
        let n = ext.len();
        ext[n - 6..n - 4].copy_from_slice(&8u16.to_be_bytes());
        check(
            &ipv6(mcast, sol, 0, &ext, &target),
            &p,
            false,
            reason::HOST_PASS,
            0,
        );
        // Six hop-by-hop-like headers then ICMPv6: allowed; seven: malformed.
        let chain = |k: usize| {
            let mut e = Vec::new();
            for i in 0..k {
                e.extend_from_slice(&hbh(if i + 1 == k { 58 } else { 60 }));
            }
            e
        };
        check(
            &ipv6(mcast, sol, 60, &chain(6), &target),
            &p,
            true,
            reason::DENY_NDP,
            4,
        );
        check(
            &ipv6(mcast, sol, 60, &chain(7), &target),
            &p,
            true,
            reason::MALFORMED,
            0,
        );
        // A destination deny is decided before the walk.
        check(
            &ipv6(HOST, v6("fd00::9"), 60, &chain(7), &[]),
            &p,
            true,
            reason::DENY_IPV6,
            4,
        );
        // An extension header that runs past the frame is malformed; one whose length merely
        // points past the end before a non-ICMPv6 upper layer is not.
        check(
            &ipv6(HOST, v6("2001:db8::1"), 0, &[], &[]),
            &p,
            true,
            reason::MALFORMED,
            0,
        );
        check(
            &ipv6(HOST, v6("2001:db8::1"), 0, &[6, 9], &[]),
            &p,
            false,
            reason::HOST_PASS,
            0,
        );
        check(
            &ipv6(HOST, v6("2001:db8::1"), 0, &[58, 9], &[]),
            &p,
            true,
            reason::MALFORMED,
            0,
        );
    }

    #[test]
    fn arp_rules() {
        let p = policy();
        check(
            &arp(v4("192.168.0.2"), v4("10.0.0.1")),
            &p,
            true,
            reason::DENY_ARP,
            1,
        );
        check(
            &arp(v4("10.1.2.200"), v4("192.168.0.1")),
            &p,
            true,
            reason::DENY_ARP,
            3,
        );
        check(
            &arp(v4("10.0.0.2"), v4("10.1.2.3")),
            &p,
            true,
            reason::DENY_ARP,
            1,
        );
        check(
            &arp(v4("10.1.2.4"), v4("10.1.2.3")),
            &p,
            false,
            reason::ALLOW,
            0,
        );
        check(
            &arp(v4("10.1.2.4"), v4("192.168.0.1")),
            &p,
            false,
            reason::HOST_PASS,
            0,
        );
        let mut f = arp(v4("192.168.0.2"), v4("192.168.0.1"));
        f[18] = 8; // hardware address length
        check(&f, &p, true, reason::MALFORMED, 0);
        check(
            &arp(v4("192.168.0.2"), v4("192.168.0.1"))[..41],
            &p,
            true,
            reason::MALFORMED,
            0,
        );
    }

    fn exception(
        scope: Scope,
        proto: u8,
        dport: u16,
        addr: &str,
        prefix_len: u8,
        rule_id: u32,
    ) -> Exception {
        Exception {
            scope,
            proto,
            dport,
            addr: addr.parse().expect("test address"),
            prefix_len,
            rule_id,
        }
    }

    /// A TCP header from `sport` to `dport` with `flags`.
    fn tcp(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
        let mut t = vec![0u8; 20];
        t[0..2].copy_from_slice(&sport.to_be_bytes());
        t[2..4].copy_from_slice(&dport.to_be_bytes());
        t[12] = 0x50;
        t[13] = flags;
        t
    }

    fn udp_from(sport: u16, dport: u16) -> Vec<u8> {
        let mut u = udp(dport);
        u[0..2].copy_from_slice(&sport.to_be_bytes());
        u
    }

    fn step10() -> Policy {
        Policy {
            exceptions: true,
            replies: true,
            ingress_ifindex: 3,
            exception_table: vec![
                // The port's own, with a short prefix, and one for all with a longer one.
                exception(Scope::Ifindex(3), 6, 3260, "10.0.0.0", 8, 101),
                exception(Scope::All, 6, 3260, "10.0.0.1", 32, 102),
                exception(Scope::Ifindex(4), 0, 0, "10.0.0.0", 8, 103),
                exception(Scope::All, 17, 0, "10.0.0.0", 16, 104),
                exception(Scope::All, 0, 0, "fd00::", 16, 105),
                // Not a valid IPv4 prefix: never matches.
                exception(Scope::All, 0, 0, "10.0.0.0", 33, 106),
            ],
            flows: vec![
                Flow {
                    guest: "192.168.0.2".parse().expect("addr"),
                    guest_port: 22,
                    peer: "10.9.0.1".parse().expect("addr"),
                    peer_port: 50000,
                    proto: 6,
                },
                Flow {
                    guest: "192.168.0.2".parse().expect("addr"),
                    guest_port: 7,
                    peer: "10.9.0.1".parse().expect("addr"),
                    peer_port: 0,
                    proto: 1,
                },
            ],
            ..policy()
        }
    }

    #[test]
    fn exceptions_in_their_order() {
        let p = step10();
        let to = |dst: &str, proto: u8, frag: u16, payload: &[u8]| {
            ipv4_with(HOST, v4(dst), proto, frag, &[], payload)
        };
        // The port's scope comes first, whatever the prefix lengths.
        check(
            &to("10.0.0.1", 6, 0, &tcp(1, 3260, 2)),
            &p,
            false,
            reason::EXCEPTION,
            101,
        );
        check(
            &to("10.0.0.1", 6, 0, &tcp(1, 3261, 2)),
            &p,
            true,
            reason::DENY_IPV4,
            1,
        );
        // Another port's scope never matches; UDP any port (all).
        check(
            &to("10.0.5.1", 17, 0, &udp(9)),
            &p,
            false,
            reason::EXCEPTION,
            104,
        );
        check(
            &to("10.1.5.1", 17, 0, &udp(9)),
            &p,
            true,
            reason::DENY_IPV4,
            1,
        );
        // A later fragment has no ports: only protocol-wide entries match.
        check(
            &to("10.0.0.1", 6, 3, &[0; 20]),
            &p,
            true,
            reason::DENY_IPV4,
            1,
        );
        check(
            &to("10.0.0.1", 17, 3, &[0; 8]),
            &p,
            false,
            reason::EXCEPTION,
            104,
        );
        // A TCP header cut short: the verdict stands, even for a protocol-wide entry.
        check(
            &to("10.0.0.1", 17, 0, &[0; 3]),
            &p,
            true,
            reason::DENY_IPV4,
            1,
        );
    }

    #[test]
    fn exceptions_for_ipv6_off_and_monitored() {
        let p = step10();
        let to = |dst: &str, proto: u8, frag: u16, payload: &[u8]| {
            ipv4_with(HOST, v4(dst), proto, frag, &[], payload)
        };
        // IPv6: proto any; the fixed header's next header is the protocol.
        let v6p = ipv6(HOST, v6("fd00::1"), 17, &[], &udp(9));
        check(&v6p, &p, false, reason::EXCEPTION, 105);
        // Off: the entries are not looked at. Monitor keeps the exception.
        check(
            &to("10.0.0.1", 6, 0, &tcp(1, 3260, 2)),
            &Policy {
                exceptions: false,
                replies: false,
                ..step10()
            },
            true,
            reason::DENY_IPV4,
            1,
        );
        let monitored = Policy {
            monitor: true,
            ..step10()
        };
        check(
            &to("10.0.0.1", 6, 0, &tcp(1, 3260, 2)),
            &monitored,
            false,
            reason::EXCEPTION,
            101,
        );
        assert!(classify(&to("10.0.0.1", 6, 0, &tcp(1, 3260, 2)), 0, &p).counts_rule_hit());
        // Never lifted: source routes, malformed frames.
        let lsrr = ipv4_with(
            HOST,
            v4("8.8.8.8"),
            6,
            0,
            &[0x83, 7, 4, 10, 0, 0, 1, 0],
            &tcp(1, 3260, 2),
        );
        check(
            &lsrr,
            &Policy {
                route_check: false,
                ..p.clone()
            },
            true,
            reason::DENY_SRCROUTE,
            0,
        );
        check(
            &to("10.0.0.1", 6, 0, &tcp(1, 3260, 2))[..30],
            &p,
            true,
            reason::MALFORMED,
            0,
        );
    }

    #[test]
    fn replies_to_open_flows() {
        let p = step10();
        let to =
            |proto: u8, payload: &[u8]| ipv4_with(HOST, v4("10.9.0.1"), proto, 0, &[], payload);
        check(&to(6, &tcp(22, 50000, 0x12)), &p, false, reason::REPLY, 0);
        check(&to(6, &tcp(22, 50000, 0x10)), &p, false, reason::REPLY, 0);
        check(
            &to(6, &tcp(22, 50000, 0x02)),
            &p,
            true,
            reason::DENY_IPV4,
            1,
        );
        check(
            &to(6, &tcp(22, 50001, 0x10)),
            &p,
            true,
            reason::DENY_IPV4,
            1,
        );
        check(
            &to(17, &udp_from(22, 50000)),
            &p,
            true,
            reason::DENY_IPV4,
            1,
        );
        check(
            &to(1, &[0, 0, 0, 0, 0, 7, 0, 1]),
            &p,
            false,
            reason::REPLY,
            0,
        );
        check(
            &to(1, &[8, 0, 0, 0, 0, 7, 0, 1]),
            &p,
            true,
            reason::DENY_IPV4,
            1,
        );
        check(
            &to(1, &[0, 0, 0, 0, 0, 8, 0, 1]),
            &p,
            true,
            reason::DENY_IPV4,
            1,
        );
        check(
            &to(6, &tcp(22, 50000, 0x12)),
            &Policy {
                replies: false,
                ..step10()
            },
            true,
            reason::DENY_IPV4,
            1,
        );
        // A later fragment carries no echo identifier.
        let frag = ipv4_with(HOST, v4("10.9.0.1"), 1, 9, &[], &[0, 0, 0, 0, 0, 7, 0, 1]);
        check(&frag, &p, true, reason::DENY_IPV4, 1);
    }

    #[test]
    fn monitor_mode() {
        for (monitor, port_monitor) in [(true, false), (false, true), (true, true)] {
            let p = Policy {
                monitor,
                port_monitor,
                ..policy()
            };
            check(
                &ipv4(HOST, v4("10.0.0.1")),
                &p,
                false,
                reason::MONITOR_IPV4,
                1,
            );
            check(
                &ipv4(HOST, v4("10.0.0.1"))[..20],
                &p,
                false,
                reason::MONITOR_MALFORMED,
                0,
            );
            check(
                &arp(v4("1.1.1.1"), v4("10.0.0.1")),
                &p,
                false,
                reason::MONITOR_ARP,
                1,
            );
            check(&ipv4(HOST, v4("10.1.2.3")), &p, false, reason::ALLOW, 0);
            check(&ipv4(OTHER, v4("10.0.0.1")), &p, false, reason::NOT_HOST, 0);
        }
        let d = classify(
            &ipv4(HOST, v4("10.0.0.1")),
            0,
            &Policy {
                monitor: true,
                ..policy()
            },
        );
        assert!(d.counts_rule_hit());
        assert!(!classify(&ipv4(HOST, v4("10.1.2.3")), 0, &policy()).counts_rule_hit());
    }

    #[test]
    fn families_do_not_mix_and_long_prefixes_never_match() {
        let p = Policy {
            host_macs: vec![HOST],
            rules: vec![
                rule("::ffff:10.0.0.0", 104, ACTION_DENY, 1),
                rule("10.0.0.0", 33, ACTION_DENY, 2),
                rule("0.0.0.0", 0, ACTION_ALLOW, 3),
            ],
            ..Policy::default()
        };
        check(&ipv4(HOST, v4("10.0.0.1")), &p, false, reason::ALLOW, 0);
    }

    // --- Steps 2, 5 (options, scoped destinations, tunnels), 6 (routing header, scoped
    // destinations, tunnels), 8 and 9.

    const BRIDGE_IF: u32 = 10;
    const UPLINK_IF: u32 = 2;
    const STORAGE_IF: u32 = 3;
    const GRE: u8 = 47;

    /// A verdict with rule id 0, drop exactly for the drop reasons.
    fn expect(p: &Policy, frame: &[u8], reason: u32) {
        let want = Decision {
            drop: reason::is_drop(reason),
            reason,
            rule_id: 0,
        };
        assert_eq!(classify(frame, 0, p), want, "{}", reason::name(reason));
    }

    fn route(addr: &str, prefix_len: u8, kind: RouteKind) -> Route {
        Route {
            addr: addr.parse().expect("test address"),
            prefix_len,
            kind,
        }
    }

    const fn via(ifindex: u32) -> RouteKind {
        RouteKind::Via {
            ifindex,
            neigh: true,
        }
    }

    /// [`policy`] with the route check on, a bridge (`BRIDGE_IF`) and an uplink in `E`, a
    /// protected storage interface outside it, and a FIB with one entry of each kind. IPv6 has
    /// no default route.
    fn routed() -> Policy {
        Policy {
            route_check: true,
            forwarding: true,
            fib_egress_without_neigh: true,
            bridge_ifindex: BRIDGE_IF,
            egress_ok: vec![BRIDGE_IF, UPLINK_IF],
            tunnel_ports: DEFAULT_TUNNEL_PORTS.to_vec(),
            routes: vec![
                route("0.0.0.0", 0, via(UPLINK_IF)),
                route("192.168.122.0", 24, via(BRIDGE_IF)),
                route("172.16.0.0", 12, via(STORAGE_IF)),
                route("172.16.0.1", 32, RouteKind::Local),
                route("172.16.255.255", 32, RouteKind::Local),
                route("198.51.100.0", 24, RouteKind::KernelDrops),
                route("203.0.113.0", 24, RouteKind::Unsupported),
                // The allow hole 10.1.2.0/24 of `policy` lies behind the storage interface.
                route("10.1.2.0", 24, via(STORAGE_IF)),
                route("2001:db8::", 32, via(UPLINK_IF)),
                route("fd10::", 16, via(STORAGE_IF)),
                route("fd10::1", 128, RouteKind::Local),
                route("fd00:1::", 32, RouteKind::Local),
            ],
            ..policy()
        }
    }

    /// `routed` with one more route, which wins ties.
    fn routed_with(r: Route) -> Policy {
        let mut p = routed();
        p.routes.push(r);
        p
    }

    fn ipv4_proto(ip_dst: &str, proto: u8) -> Vec<u8> {
        ipv4_with(HOST, v4(ip_dst), proto, 0, &[], &[0; 8])
    }

    fn ipv4_udp(ip_dst: &str, port: u16) -> Vec<u8> {
        ipv4_with(HOST, v4(ip_dst), IPPROTO_UDP, 0, &[], &udp(port))
    }

    fn ipv4_opts(ip_dst: &str, options: &[u8]) -> Vec<u8> {
        ipv4_with(HOST, v4(ip_dst), IPPROTO_UDP, 0, options, &udp(53))
    }

    fn ipv6_nh(ip_dst: &str, nh: u8, ext: &[u8], upper: &[u8]) -> Vec<u8> {
        ipv6(HOST, v6(ip_dst), nh, ext, upper)
    }

    /// A fragment header with next header `nh` and fragment offset `offset` (8-byte units).
    fn frag6(nh: u8, offset: u16) -> [u8; 8] {
        let [hi, lo] = (offset << 3).to_be_bytes();
        [nh, 0, hi, lo, 0, 0, 0, 1]
    }

    /// An 8-byte type 0 routing header with `segments_left`, then `nh`.
    fn routing6(nh: u8, segments_left: u8) -> [u8; 8] {
        [nh, 0, 0, segments_left, 0, 0, 0, 0]
    }

    const LSRR: [u8; 8] = [0x83, 7, 4, 10, 0, 0, 1, 0];
    const SSRR: [u8; 8] = [0x89, 7, 4, 10, 0, 0, 1, 0];

    #[test]
    fn ipv4_source_route_options() {
        let p = policy();
        expect(&p, &ipv4_opts("192.168.0.1", &LSRR), reason::DENY_SRCROUTE);
        expect(&p, &ipv4_opts("192.168.0.1", &SSRR), reason::DENY_SRCROUTE);
        // Behind no-ops, after another option (router alert), behind a record route.
        let nops = [1, 1, 1, 0x83, 7, 4, 1, 2, 3, 4, 0, 0];
        expect(&p, &ipv4_opts("192.168.0.1", &nops), reason::DENY_SRCROUTE);
        let after_router_alert = [0x94, 4, 0, 0, 0x89, 3, 4, 0];
        expect(
            &p,
            &ipv4_opts("192.168.0.1", &after_router_alert),
            reason::DENY_SRCROUTE,
        );
        let behind_record_route = [7, 7, 4, 0, 0, 0, 0, 0x83, 3, 4, 0, 0];
        expect(
            &p,
            &ipv4_opts("192.168.0.1", &behind_record_route),
            reason::DENY_SRCROUTE,
        );
        // The option type alone decides: a source route option whose length is bad is still
        // a source route.
        expect(
            &p,
            &ipv4_opts("192.168.0.1", &[1, 1, 1, 0x83]),
            reason::DENY_SRCROUTE,
        );
        // Harmless options, and the walk over them.
        expect(
            &p,
            &ipv4_opts("192.168.0.1", &[0x94, 4, 0, 0]),
            reason::HOST_PASS,
        );
        expect(
            &p,
            &ipv4_opts("192.168.0.1", &[1, 1, 1, 1]),
            reason::HOST_PASS,
        );
        expect(&p, &ipv4_opts("10.1.2.3", &[1, 0x94, 2, 0]), reason::ALLOW);
        // End of list stops the walk: what follows is neither judged nor parsed.
        expect(
            &p,
            &ipv4_opts("192.168.0.1", &[0, 0x83, 3, 4]),
            reason::HOST_PASS,
        );
        expect(
            &p,
            &ipv4_opts("192.168.0.1", &[1, 0, 0xff, 0xff]),
            reason::HOST_PASS,
        );
        // The destination lookup comes first; an allow entry does not excuse a source route.
        check(
            &ipv4_opts("10.0.0.1", &LSRR),
            &p,
            true,
            reason::DENY_IPV4,
            1,
        );
        expect(&p, &ipv4_opts("10.1.2.3", &LSRR), reason::DENY_SRCROUTE);
        // Before the scoped destinations, in every fragment, and with the route check on.
        expect(
            &p,
            &ipv4_opts("255.255.255.255", &SSRR),
            reason::DENY_SRCROUTE,
        );
        expect(&p, &ipv4_opts("224.0.0.1", &LSRR), reason::DENY_SRCROUTE);
        let later = ipv4_with(HOST, v4("192.168.0.1"), IPPROTO_UDP, 0x00b9, &LSRR, &[0; 8]);
        expect(&p, &later, reason::DENY_SRCROUTE);
        expect(
            &routed(),
            &ipv4_opts("8.8.8.8", &LSRR),
            reason::DENY_SRCROUTE,
        );
    }

    #[test]
    fn ipv4_malformed_options() {
        let p = policy();
        // Length below 2, length past the header, type in the header's last byte.
        expect(
            &p,
            &ipv4_opts("192.168.0.1", &[0x94, 1, 0, 0]),
            reason::MALFORMED,
        );
        expect(
            &p,
            &ipv4_opts("192.168.0.1", &[0x94, 0, 0, 0]),
            reason::MALFORMED,
        );
        expect(
            &p,
            &ipv4_opts("192.168.0.1", &[0x94, 5, 0, 0]),
            reason::MALFORMED,
        );
        expect(
            &p,
            &ipv4_opts("192.168.0.1", &[1, 1, 1, 0x94]),
            reason::MALFORMED,
        );
        expect(
            &p,
            &ipv4_opts("192.168.0.1", &[7, 7, 4, 0, 0, 0, 0, 0x44]),
            reason::MALFORMED,
        );
        // ... also when the header fills the frame (the length byte would lie past its end).
        let bare = ipv4_with(HOST, v4("192.168.0.1"), 6, 0, &[1, 1, 1, 0x94], &[]);
        expect(&p, &bare, reason::MALFORMED);
        // Before the scoped destinations; after the destination's deny entry.
        expect(
            &p,
            &ipv4_opts("255.255.255.255", &[0x94, 1, 0, 0]),
            reason::MALFORMED,
        );
        check(
            &ipv4_opts("10.0.0.1", &[0x94, 1, 0, 0]),
            &p,
            true,
            reason::DENY_IPV4,
            1,
        );
    }

    #[test]
    fn ipv4_broadcast_and_multicast_skip_the_route_check() {
        // Forwarding off: every route lookup would be `not_forwarded`.
        let mut p = Policy {
            forwarding: false,
            ..routed()
        };
        expect(&p, &ipv4(HOST, v4("8.8.8.8")), reason::DENY_LOCAL);
        expect(&p, &ipv4(HOST, v4("255.255.255.255")), reason::HOST_PASS);
        expect(&p, &ipv4(HOST, v4("224.0.0.251")), reason::HOST_PASS);
        expect(&p, &ipv4(HOST, v4("239.255.255.250")), reason::HOST_PASS);
        // No tunnel either.
        expect(&p, &ipv4_proto("224.0.0.5", GRE), reason::HOST_PASS);
        expect(&p, &ipv4_udp("239.1.1.1", 4789), reason::HOST_PASS);
        // Neighbours of the scoped ranges go to the route check.
        expect(&p, &ipv4(HOST, v4("255.255.255.254")), reason::DENY_LOCAL);
        expect(&p, &ipv4(HOST, v4("240.0.0.1")), reason::DENY_LOCAL);
        expect(&p, &ipv4(HOST, v4("223.255.255.255")), reason::DENY_LOCAL);
        // A directed broadcast is an ordinary destination: the FIB's local entry judges it.
        expect(
            &routed(),
            &ipv4(HOST, v4("172.16.255.255")),
            reason::DENY_LOCAL,
        );
        // The destination lookup still applies.
        p.rules.push(rule("239.0.0.0", 8, ACTION_ALLOW, 20));
        p.rules.push(rule("224.0.0.251", 32, ACTION_DENY, 21));
        expect(&p, &ipv4(HOST, v4("239.1.1.1")), reason::ALLOW);
        check(
            &ipv4(HOST, v4("224.0.0.251")),
            &p,
            true,
            reason::DENY_IPV4,
            21,
        );
    }

    #[test]
    fn route_outcomes_ipv4() {
        let p = routed();
        // out(i), i in E: the uplink, the bridge.
        expect(&p, &ipv4(HOST, v4("8.8.8.8")), reason::HOST_PASS);
        expect(&p, &ipv4(HOST, v4("192.168.122.7")), reason::HOST_PASS);
        // out(i), i not in E.
        expect(&p, &ipv4(HOST, v4("172.16.5.5")), reason::DENY_ROUTE);
        // not_forwarded: a local entry, no route at all.
        expect(&p, &ipv4(HOST, v4("172.16.0.1")), reason::DENY_LOCAL);
        let mut no_default = routed();
        no_default.routes.remove(0);
        expect(&no_default, &ipv4(HOST, v4("8.8.8.8")), reason::DENY_LOCAL);
        // kernel_drops, failed.
        expect(&p, &ipv4(HOST, v4("198.51.100.1")), reason::HOST_PASS);
        expect(&p, &ipv4(HOST, v4("203.0.113.1")), reason::DENY_ROUTE);
        // Forwarding off on the bridge: not_forwarded everywhere.
        let off = Policy {
            forwarding: false,
            ..routed()
        };
        expect(&off, &ipv4(HOST, v4("8.8.8.8")), reason::DENY_LOCAL);
        expect(&off, &ipv4(HOST, v4("172.16.5.5")), reason::DENY_LOCAL);
        // A deny entry still decides first, with its rule id; an allow entry needs no lookup.
        check(&ipv4(HOST, v4("10.0.0.1")), &p, true, reason::DENY_IPV4, 1);
        expect(&p, &ipv4(HOST, v4("10.1.2.3")), reason::ALLOW);
        // Longest prefix wins; among equal prefixes the later entry (host bits ignored).
        let hole = routed_with(route("172.16.5.0", 24, via(UPLINK_IF)));
        expect(&hole, &ipv4(HOST, v4("172.16.5.5")), reason::HOST_PASS);
        expect(&hole, &ipv4(HOST, v4("172.16.6.5")), reason::DENY_ROUTE);
        let replaced = routed_with(route("172.31.1.2", 12, via(BRIDGE_IF)));
        expect(&replaced, &ipv4(HOST, v4("172.16.5.5")), reason::HOST_PASS);
        // A prefix longer than the family's address never matches.
        let long = routed_with(route("8.8.8.8", 33, RouteKind::Local));
        expect(&long, &ipv4(HOST, v4("8.8.8.8")), reason::HOST_PASS);
    }

    #[test]
    fn route_outcomes_ipv6() {
        let p = routed();
        let udp6 = |dst: &str| ipv6_nh(dst, IPPROTO_UDP, &[], &udp(53));
        expect(&p, &udp6("2001:db8::1"), reason::HOST_PASS);
        expect(&p, &udp6("fd10::5"), reason::DENY_ROUTE);
        expect(&p, &udp6("fd10::1"), reason::DENY_LOCAL);
        // No IPv6 default route; IPv4 routes never match IPv6 destinations.
        expect(&p, &udp6("2001:db9::1"), reason::DENY_LOCAL);
        expect(&p, &udp6("::ffff:8.8.8.8"), reason::DENY_LOCAL);
        expect(
            &routed_with(route("::", 0, RouteKind::KernelDrops)),
            &udp6("2001:db9::1"),
            reason::HOST_PASS,
        );
        expect(
            &routed_with(route("::", 0, RouteKind::Unsupported)),
            &udp6("2001:db9::1"),
            reason::DENY_ROUTE,
        );
        let off = Policy {
            forwarding: false,
            ..routed()
        };
        expect(&off, &udp6("2001:db8::1"), reason::DENY_LOCAL);
        // Rules first: deny with its id, allow without a lookup (the FIB says local).
        check(&udp6("fd00::1"), &p, true, reason::DENY_IPV6, 4);
        expect(&p, &udp6("fd00:1::1"), reason::ALLOW);
    }

    #[test]
    fn route_without_neighbour_entry() {
        let storage = RouteKind::Via {
            ifindex: STORAGE_IF,
            neigh: false,
        };
        let uplink = RouteKind::Via {
            ifindex: UPLINK_IF,
            neigh: false,
        };
        let frame = ipv4(HOST, v4("172.16.5.5"));
        // Linux 6.3+: the egress interface is known anyway.
        let mut p = routed_with(route("172.16.0.0", 12, storage));
        expect(&p, &frame, reason::DENY_ROUTE);
        p.fib_egress_without_neigh = false;
        // Older kernels: out(b), which passes (b in E); the prefix rules still judge.
        expect(&p, &frame, reason::HOST_PASS);
        check(&ipv4(HOST, v4("10.0.0.1")), &p, true, reason::DENY_IPV4, 1);
        // The model takes E literally: a bridge outside E makes out(b) a deny_route.
        let outside = Policy {
            egress_ok: vec![UPLINK_IF],
            ..p
        };
        expect(&outside, &frame, reason::DENY_ROUTE);
        // An egress in E passes either way.
        let mut p = routed_with(route("0.0.0.0", 0, uplink));
        expect(&p, &ipv4(HOST, v4("8.8.8.8")), reason::HOST_PASS);
        p.fib_egress_without_neigh = false;
        expect(&p, &ipv4(HOST, v4("8.8.8.8")), reason::HOST_PASS);
    }

    #[test]
    fn allow_rules_and_tunnels_at_the_route_check() {
        // 10.1.2.0/24 is an allow hole, routed out of the storage interface (not in E).
        let p = routed();
        expect(&p, &ipv4(HOST, v4("10.1.2.3")), reason::ALLOW);
        // A tunnel to it is forwarded, not decapsulated: the allow entry decides.
        expect(&p, &ipv4_proto("10.1.2.3", GRE), reason::ALLOW);
        // A tunnel the host would receive itself: deny_tunnel, allow entry or not.
        for kind in [RouteKind::Local, RouteKind::Unsupported] {
            let q = routed_with(route("10.1.2.0", 24, kind));
            expect(&q, &ipv4_proto("10.1.2.3", GRE), reason::DENY_TUNNEL);
            expect(&q, &ipv4(HOST, v4("10.1.2.3")), reason::ALLOW);
        }
        let off = Policy {
            forwarding: false,
            ..routed()
        };
        expect(&off, &ipv4_proto("10.1.2.3", GRE), reason::DENY_TUNNEL);
        let drops = routed_with(route("10.1.2.0", 24, RouteKind::KernelDrops));
        expect(&drops, &ipv4_proto("10.1.2.3", GRE), reason::ALLOW);
        // Without an allow entry: not_forwarded and failed become deny_tunnel, the rest is
        // step 9.
        expect(&p, &ipv4_proto("172.16.0.1", GRE), reason::DENY_TUNNEL);
        expect(&p, &ipv4_proto("203.0.113.1", GRE), reason::DENY_TUNNEL);
        expect(&p, &ipv4_proto("172.16.5.5", GRE), reason::DENY_ROUTE);
        expect(&p, &ipv4_proto("8.8.8.8", GRE), reason::HOST_PASS);
        expect(&p, &ipv4_proto("198.51.100.1", GRE), reason::HOST_PASS);
        // IPv6: the same with fd00:1::/32 (allowed, local in the FIB).
        expect(&p, &ipv6_nh("fd00:1::1", 41, &[], &[]), reason::DENY_TUNNEL);
        expect(&p, &ipv6_nh("fd00:1::1", 6, &[], &[]), reason::ALLOW);
    }

    #[test]
    fn ipv4_tunnel_detection() {
        let p = routed();
        // To a host address: every tunnel protocol, and UDP to a tunnel port.
        for proto in TUNNEL_PROTOCOLS {
            expect(&p, &ipv4_proto("172.16.0.1", proto), reason::DENY_TUNNEL);
        }
        for port in DEFAULT_TUNNEL_PORTS {
            expect(&p, &ipv4_udp("172.16.0.1", port), reason::DENY_TUNNEL);
        }
        expect(&p, &ipv4_udp("172.16.0.1", 53), reason::DENY_LOCAL);
        expect(&p, &ipv4_proto("172.16.0.1", 6), reason::DENY_LOCAL);
        // The port needs 4 bytes of UDP header, no more.
        let port_only = ipv4_with(HOST, v4("172.16.0.1"), IPPROTO_UDP, 0, &[], &udp(4789)[..4]);
        expect(&p, &port_only, reason::DENY_TUNNEL);
        let short = ipv4_with(HOST, v4("172.16.0.1"), IPPROTO_UDP, 0, &[], &udp(4789)[..3]);
        expect(&p, &short, reason::DENY_LOCAL);
        // Behind options.
        let opts = ipv4_with(
            HOST,
            v4("172.16.0.1"),
            IPPROTO_UDP,
            0,
            &[0x94, 4, 0, 0],
            &udp(4789),
        );
        expect(&p, &opts, reason::DENY_TUNNEL);
        // First fragments (MF set, DF set) are tunnels, later fragments are not.
        for (frag, want) in [
            (0x2000, reason::DENY_TUNNEL),
            (0x4000, reason::DENY_TUNNEL),
            (0x00b9, reason::DENY_LOCAL),
            (0x2001, reason::DENY_LOCAL),
            (0x1fff, reason::DENY_LOCAL),
        ] {
            let gre = ipv4_with(HOST, v4("172.16.0.1"), GRE, frag, &[], &[0; 8]);
            expect(&p, &gre, want);
            let vxlan = ipv4_with(HOST, v4("172.16.0.1"), IPPROTO_UDP, frag, &[], &udp(4789));
            expect(&p, &vxlan, want);
        }
        // Only the ports in T.
        let other_ports = Policy {
            tunnel_ports: vec![53],
            ..routed()
        };
        expect(
            &other_ports,
            &ipv4_udp("172.16.0.1", 53),
            reason::DENY_TUNNEL,
        );
        expect(
            &other_ports,
            &ipv4_udp("172.16.0.1", 4789),
            reason::DENY_LOCAL,
        );
        // allow_tunnels.
        let allowed = Policy {
            allow_tunnels: true,
            ..routed()
        };
        expect(&allowed, &ipv4_proto("172.16.0.1", GRE), reason::DENY_LOCAL);
        expect(&allowed, &ipv4_udp("172.16.0.1", 4789), reason::DENY_LOCAL);
        expect(&allowed, &ipv4_proto("10.1.2.3", GRE), reason::ALLOW);
    }

    #[test]
    fn udp_port_read_up_to_the_frame_end() {
        // `o + 4*ihl + 4 <= n` counts the frame, not `total`: a UDP "header" in the Ethernet
        // padding after a 20-byte IPv4 packet is read.
        let p = routed();
        let mut f = ipv4_with(HOST, v4("172.16.0.1"), IPPROTO_UDP, 0, &[], &[]);
        expect(&p, &f, reason::DENY_LOCAL);
        f.extend_from_slice(&udp(4789)[..4]);
        expect(&p, &f, reason::DENY_TUNNEL);
    }

    #[test]
    fn ipv6_tunnel_detection() {
        let p = routed();
        for proto in TUNNEL_PROTOCOLS {
            expect(
                &p,
                &ipv6_nh("fd10::1", proto, &[], &[0; 8]),
                reason::DENY_TUNNEL,
            );
        }
        expect(
            &p,
            &ipv6_nh("fd10::1", IPPROTO_UDP, &[], &udp(6081)),
            reason::DENY_TUNNEL,
        );
        expect(
            &p,
            &ipv6_nh("fd10::1", IPPROTO_UDP, &[], &udp(53)),
            reason::DENY_LOCAL,
        );
        expect(
            &p,
            &ipv6_nh("fd10::1", IPPROTO_UDP, &[], &udp(6081)[..4]),
            reason::DENY_TUNNEL,
        );
        expect(
            &p,
            &ipv6_nh("fd10::1", IPPROTO_UDP, &[], &udp(6081)[..3]),
            reason::DENY_LOCAL,
        );
        // Behind extension headers: destination options, a first fragment.
        let dest_opts = [GRE, 0, 1, 4, 0, 0, 0, 0];
        expect(
            &p,
            &ipv6_nh("fd10::1", 60, &dest_opts, &[]),
            reason::DENY_TUNNEL,
        );
        expect(
            &p,
            &ipv6_nh("fd10::1", 44, &frag6(GRE, 0), &[]),
            reason::DENY_TUNNEL,
        );
        let first = ipv6_nh("fd10::1", 44, &frag6(IPPROTO_UDP, 0), &udp(4789));
        expect(&p, &first, reason::DENY_TUNNEL);
        // A later fragment's upper layer is not in the frame: not a tunnel.
        expect(
            &p,
            &ipv6_nh("fd10::1", 44, &frag6(GRE, 1), &[0; 8]),
            reason::DENY_LOCAL,
        );
        let later = ipv6_nh("fd10::1", 44, &frag6(IPPROTO_UDP, 1), &udp(4789));
        expect(&p, &later, reason::DENY_LOCAL);
        // Forwarded out of E: passes; allow_tunnels: no tunnel.
        expect(
            &p,
            &ipv6_nh("2001:db8::1", GRE, &[], &[]),
            reason::HOST_PASS,
        );
        let allowed = Policy {
            allow_tunnels: true,
            ..routed()
        };
        expect(
            &allowed,
            &ipv6_nh("fd10::1", 41, &[], &[]),
            reason::DENY_LOCAL,
        );
        expect(
            &allowed,
            &ipv6_nh("fd10::1", IPPROTO_UDP, &[], &udp(4789)),
            reason::DENY_LOCAL,
        );
    }

    #[test]
    fn route_check_off_still_denies_tunnels() {
        let p = Policy {
            tunnel_ports: DEFAULT_TUNNEL_PORTS.to_vec(),
            ..policy()
        };
        expect(&p, &ipv4_proto("192.168.0.1", GRE), reason::DENY_TUNNEL);
        expect(&p, &ipv4_udp("192.168.0.1", 4789), reason::DENY_TUNNEL);
        expect(
            &p,
            &ipv6_nh("2001:db8::1", 4, &[], &[]),
            reason::DENY_TUNNEL,
        );
        // Even to an allow entry: without a lookup nothing shows it would be forwarded.
        expect(&p, &ipv4_proto("10.1.2.3", GRE), reason::DENY_TUNNEL);
        expect(
            &p,
            &ipv6_nh("fd00:1::1", GRE, &[], &[]),
            reason::DENY_TUNNEL,
        );
        // Everything else: the lookup result alone.
        expect(&p, &ipv4_udp("192.168.0.1", 53), reason::HOST_PASS);
        expect(&p, &ipv4_udp("10.1.2.3", 53), reason::ALLOW);
        // The default policy has no tunnel ports, and allow_tunnels turns the check off.
        expect(&policy(), &ipv4_udp("192.168.0.1", 4789), reason::HOST_PASS);
        expect(
            &policy(),
            &ipv4_proto("192.168.0.1", GRE),
            reason::DENY_TUNNEL,
        );
        let allowed = Policy {
            allow_tunnels: true,
            ..p
        };
        expect(&allowed, &ipv4_proto("192.168.0.1", GRE), reason::HOST_PASS);
        expect(&allowed, &ipv4_proto("10.1.2.3", GRE), reason::ALLOW);
    }

    #[test]
    fn ipv6_routing_header() {
        let p = policy();
        let rh = |segments_left| routing6(IPPROTO_UDP, segments_left);
        expect(
            &p,
            &ipv6_nh("2001:db8::1", 43, &rh(0), &udp(53)),
            reason::HOST_PASS,
        );
        expect(
            &p,
            &ipv6_nh("2001:db8::1", 43, &rh(1), &udp(53)),
            reason::DENY_SRCROUTE,
        );
        expect(
            &p,
            &ipv6_nh("fd00:1::1", 43, &rh(255), &udp(53)),
            reason::DENY_SRCROUTE,
        );
        // Any routing type (here 4, a segment routing header).
        let srh = [IPPROTO_UDP, 0, 4, 1, 0, 0, 0, 0];
        expect(
            &p,
            &ipv6_nh("2001:db8::1", 43, &srh, &udp(53)),
            reason::DENY_SRCROUTE,
        );
        // Behind another extension header, before the scoped destinations, with the route
        // check on; after the destination's deny entry.
        let hbh_rh = [[43, 0, 0, 0, 0, 0, 0, 0], rh(1)].concat();
        expect(
            &p,
            &ipv6_nh("2001:db8::1", 0, &hbh_rh, &udp(53)),
            reason::DENY_SRCROUTE,
        );
        expect(
            &p,
            &ipv6_nh("ff02::1", 43, &rh(1), &udp(53)),
            reason::DENY_SRCROUTE,
        );
        expect(
            &routed(),
            &ipv6_nh("2001:db8::1", 43, &rh(1), &[]),
            reason::DENY_SRCROUTE,
        );
        check(
            &ipv6_nh("fd00::1", 43, &rh(1), &[]),
            &p,
            true,
            reason::DENY_IPV6,
            4,
        );
        // Needs 4 bytes: truncated after 3 (2 were enough before).
        expect(
            &p,
            &ipv6_nh("2001:db8::1", 43, &rh(1)[..3], &[]),
            reason::MALFORMED,
        );
        expect(
            &p,
            &ipv6_nh("2001:db8::1", 43, &rh(0)[..4], &[]),
            reason::HOST_PASS,
        );
        // Not walked after a later fragment, nor beyond the sixth header.
        let after_later = [frag6(43, 1), rh(1)].concat();
        expect(
            &p,
            &ipv6_nh("2001:db8::1", 44, &after_later, &[]),
            reason::HOST_PASS,
        );
        let mut seventh = Vec::new();
        for _ in 0..5 {
            seventh.extend_from_slice(&[60, 0, 0, 0, 0, 0, 0, 0]);
        }
        seventh.extend_from_slice(&[43, 0, 0, 0, 0, 0, 0, 0]);
        seventh.extend_from_slice(&rh(1));
        expect(
            &p,
            &ipv6_nh("2001:db8::1", 60, &seventh, &[]),
            reason::MALFORMED,
        );
    }

    #[test]
    fn ipv6_scoped_destinations_skip_the_route_check() {
        // Forwarding off: every route lookup would be `not_forwarded`.
        let mut p = Policy {
            forwarding: false,
            ..routed()
        };
        let udp6 = |dst: &str| ipv6_nh(dst, IPPROTO_UDP, &[], &udp(53));
        expect(&p, &udp6("2001:db8::1"), reason::DENY_LOCAL);
        for dst in ["ff02::1", "ff05::1:3", "ff0e::1", "fe80::1", "febf:ffff::1"] {
            expect(&p, &udp6(dst), reason::HOST_PASS);
            // No tunnel either.
            expect(&p, &ipv6_nh(dst, GRE, &[], &[]), reason::HOST_PASS);
            expect(
                &p,
                &ipv6_nh(dst, IPPROTO_UDP, &[], &udp(4789)),
                reason::HOST_PASS,
            );
        }
        // Just outside fe80::/10 and ff00::/8.
        for dst in ["fec0::1", "fe7f::1", "fe00::1", "feff::1"] {
            expect(&p, &udp6(dst), reason::DENY_LOCAL);
        }
        // After a later fragment too.
        expect(
            &p,
            &ipv6_nh("fe80::1", 44, &frag6(GRE, 1), &[]),
            reason::HOST_PASS,
        );
        // The destination lookup still applies.
        p.rules.push(rule("fe80::", 10, ACTION_ALLOW, 20));
        p.rules.push(rule("ff05::", 16, ACTION_DENY, 21));
        expect(&p, &udp6("fe80::1"), reason::ALLOW);
        check(&udp6("ff05::1:3"), &p, true, reason::DENY_IPV6, 21);
    }

    #[test]
    fn ipv6_later_fragment_reaches_the_route_check() {
        let p = routed();
        let later = |dst: &str, nh| ipv6_nh(dst, 44, &frag6(nh, 1), &[0; 8]);
        expect(&p, &later("fd10::1", IPPROTO_UDP), reason::DENY_LOCAL);
        expect(&p, &later("fd10::5", IPPROTO_UDP), reason::DENY_ROUTE);
        expect(&p, &later("2001:db8::1", IPPROTO_UDP), reason::HOST_PASS);
        expect(&p, &later("fd00:1::1", IPPROTO_UDP), reason::ALLOW);
        // The upper-layer checks are skipped: an extension header after a later fragment is
        // not malformed, an NS is not looked at.
        expect(&p, &later("fd10::1", 60), reason::DENY_LOCAL);
        let ns_later = ipv6_nh("2001:db8::1", 44, &frag6(58, 1), &ns(v6("fd00::1")));
        expect(&p, &ns_later, reason::HOST_PASS);
        // Route check off: the lookup result alone, as before.
        expect(&policy(), &later("fd10::1", IPPROTO_UDP), reason::HOST_PASS);
    }

    #[test]
    fn bridge_hook_judges_every_frame() {
        let p = Policy {
            bridge_hook: true,
            ..policy()
        };
        // A destination MAC outside H, even none in H at all.
        check(&ipv4(OTHER, v4("10.0.0.1")), &p, true, reason::DENY_IPV4, 1);
        expect(&p, &ipv4(OTHER, v4("192.168.0.1")), reason::HOST_PASS);
        let empty = Policy {
            host_macs: Vec::new(),
            ..p.clone()
        };
        check(
            &ipv4(OTHER, v4("10.0.0.1")),
            &empty,
            true,
            reason::DENY_IPV4,
            1,
        );
        expect(&empty, &eth(OTHER, 0x0800), reason::MALFORMED);
        // strict_mac is a port's rule: broadcast is judged on the bridge hook.
        let strict = Policy {
            strict_mac: true,
            ..p.clone()
        };
        check(
            &ipv4([0xff; 6], v4("10.0.0.1")),
            &strict,
            true,
            reason::DENY_IPV4,
            1,
        );
        // Step 1 still comes first.
        expect(&p, &ipv4(OTHER, v4("10.0.0.1"))[..13], reason::MALFORMED);
        // With the route check.
        let routed_bridge = Policy {
            bridge_hook: true,
            ..routed()
        };
        expect(
            &routed_bridge,
            &ipv4(OTHER, v4("172.16.0.1")),
            reason::DENY_LOCAL,
        );
        // On a port the same frame is not the host's.
        expect(&routed(), &ipv4(OTHER, v4("172.16.0.1")), reason::NOT_HOST);
    }

    #[test]
    fn monitor_twins_of_the_new_reasons() {
        for (monitor, port_monitor) in [(true, false), (false, true)] {
            let p = Policy {
                monitor,
                port_monitor,
                ..routed()
            };
            let cases = [
                (ipv4(HOST, v4("172.16.5.5")), reason::MONITOR_ROUTE),
                (ipv4(HOST, v4("203.0.113.1")), reason::MONITOR_ROUTE),
                (ipv4(HOST, v4("172.16.0.1")), reason::MONITOR_LOCAL),
                (ipv4_proto("172.16.0.1", GRE), reason::MONITOR_TUNNEL),
                (ipv4_opts("8.8.8.8", &LSRR), reason::MONITOR_SRCROUTE),
                (
                    ipv6_nh("fd10::5", IPPROTO_UDP, &[], &[]),
                    reason::MONITOR_ROUTE,
                ),
                (ipv6_nh("fd10::1", 41, &[], &[]), reason::MONITOR_TUNNEL),
                (
                    ipv6_nh("2001:db8::1", 43, &routing6(6, 2), &[]),
                    reason::MONITOR_SRCROUTE,
                ),
                (
                    ipv4_opts("8.8.8.8", &[0x94, 1, 0, 0]),
                    reason::MONITOR_MALFORMED,
                ),
            ];
            for (frame, twin) in cases {
                let d = classify(&frame, 0, &p);
                assert_eq!(d, Decision::pass(twin, 0), "{}", reason::name(twin));
                assert!(!d.counts_rule_hit());
            }
            // Passes are untouched; deny entries keep their rule id.
            expect(&p, &ipv4(HOST, v4("8.8.8.8")), reason::HOST_PASS);
            check(
                &ipv4(HOST, v4("10.0.0.1")),
                &p,
                false,
                reason::MONITOR_IPV4,
                1,
            );
        }
        // Enforced, the same frames drop with rule id 0 and bump no rule counter.
        let p = routed();
        for (frame, drop_reason) in [
            (ipv4(HOST, v4("172.16.5.5")), reason::DENY_ROUTE),
            (ipv4(HOST, v4("172.16.0.1")), reason::DENY_LOCAL),
            (ipv4_proto("172.16.0.1", GRE), reason::DENY_TUNNEL),
            (ipv4_opts("8.8.8.8", &SSRR), reason::DENY_SRCROUTE),
        ] {
            expect(&p, &frame, drop_reason);
            assert!(!classify(&frame, 0, &p).counts_rule_hit());
        }
    }

    #[test]
    fn default_policy_keeps_the_route_check_off() {
        let p = Policy::default();
        assert!(!p.route_check && !p.bridge_hook && !p.allow_tunnels && !p.forwarding);
        assert!(p.tunnel_ports.is_empty() && p.routes.is_empty() && p.egress_ok.is_empty());
        let with_mac = Policy {
            host_macs: vec![HOST],
            ..Policy::default()
        };
        expect(&with_mac, &ipv4(HOST, v4("172.16.0.1")), reason::HOST_PASS);
        expect(
            &with_mac,
            &ipv6_nh("fd10::1", IPPROTO_UDP, &[], &udp(4789)),
            reason::HOST_PASS,
        );
    }

    #[test]
    fn ipv6_link_local_source_is_never_forwarded() {
        let p = routed();
        // Routed out of the uplink from a global source ...
        let mut frame = ipv6_nh("2001:db8::1", IPPROTO_UDP, &[], &udp(53));
        expect(&p, &frame, reason::HOST_PASS);
        // ... never forwarded from a link-local or loopback one.
        // The source address sits at bytes 8..24 of the IPv6 header, after 14 bytes of
        // Ethernet.
        let ll: Ipv6Addr = "fe80::2".parse().expect("addr");
        frame[22..38].copy_from_slice(&ll.octets());
        expect(&p, &frame, reason::DENY_LOCAL);
        let lo: Ipv6Addr = "::1".parse().expect("addr");
        frame[22..38].copy_from_slice(&lo.octets());
        expect(&p, &frame, reason::DENY_LOCAL);
    }
}
