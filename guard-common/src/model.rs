//! The reference model of the datapath: `docs/datapath.md`, transcribed step by step.
//!
//! This is the second, independent implementation of the classifier (the first is the eBPF
//! code in `guard-ebpf`). It was written from the contract alone, without reading the eBPF
//! sources, so that a differential test between the two finds mistakes in either. It favours
//! being obviously right over being fast: prefix tables are a linear scan, every "needs `k`
//! bytes at `o`" is a literal bounds check, and step numbers in the comments refer to the
//! contract.

use std::net::IpAddr;
use std::vec::Vec;

use crate::reason;
use crate::{ACTION_ALLOW, MAX_IPV6_EXT_HEADERS, MAX_VLAN_TAGS};

/// One entry of a prefix table. IPv4 entries go to the IPv4 table and IPv6 entries to the IPv6
/// table; the two never match each other's lookups (an IPv4-mapped IPv6 address is just an
/// IPv6 address here, as it is in the kernel's tries).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    pub addr: IpAddr,
    /// Bits of `addr` that count; at most 32 (IPv4) or 128 (IPv6). An entry with a longer
    /// prefix cannot exist in the kernel's trie, so it never matches here.
    pub prefix_len: u8,
    /// [`ACTION_ALLOW`](crate::ACTION_ALLOW) or [`ACTION_DENY`](crate::ACTION_DENY); any value
    /// other than allow denies.
    pub action: u16,
    pub rule_id: u32,
    pub class: u16,
}

/// Everything the classifier's verdict depends on besides the frame.
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
}

/// What the classifier decides for one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub drop: bool,
    /// A [`reason`] code.
    pub reason: u32,
    /// The deny entry the verdict came from (drop or monitor), whose hit counter it bumps; 0
    /// for every other verdict. The contract names a rule id only for deny verdicts, and the
    /// kernel reports rule ids only through the deny hit counters, so an allow verdict carries
    /// none.
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

    /// Does this verdict bump a rule's hit counter? Exactly the deny-entry verdicts, enforced or
    /// monitored (contract, "Accounting").
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
    /// "Needs `k` bytes at `o`".
    fn needs(&self, o: usize, k: usize) -> Step<()> {
        if o.checked_add(k).is_some_and(|end| end <= self.0.len()) {
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

/// The contract's verdict for `frame`, including monitor mode.
#[must_use]
pub fn classify(frame: &[u8], tags_stripped: u32, policy: &Policy) -> Decision {
    let d = match classify_enforced(&Frame(frame), tags_stripped, policy) {
        Ok(d) => d,
        Err(Malformed) => Decision::drop(reason::MALFORMED, 0),
    };
    if d.drop && (policy.monitor || policy.port_monitor) {
        Decision::pass(d.reason + reason::MONITOR_OFFSET, d.rule_id)
    } else {
        d
    }
}

/// Steps 1-7, before monitor mode.
fn classify_enforced(f: &Frame<'_>, tags_stripped: u32, policy: &Policy) -> Step<Decision> {
    // Step 1.
    f.needs(0, 14)?;
    let dst: [u8; 6] = f.bytes(0);

    // Step 2.
    let host_bound = if dst[0] & 1 != 0 {
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

    // Step 4.
    match p {
        0x0800 => ipv4(f, o, policy),
        0x86dd => ipv6(f, o, policy),
        0x0806 => arp(f, o, policy),
        _ => Ok(Decision::pass(reason::HOST_PASS, 0)),
    }
}

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
    let dst: [u8; 4] = f.bytes(o + 16);
    Ok(match lookup(policy, IpAddr::from(dst)) {
        Some(Hit {
            allow: false,
            rule_id,
        }) => Decision::drop(reason::DENY_IPV4, rule_id),
        Some(Hit { allow: true, .. }) => Decision::pass(reason::ALLOW, 0),
        None => Decision::pass(reason::HOST_PASS, 0),
    })
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

/// Step 6.
fn ipv6(f: &Frame<'_>, o: usize, policy: &Policy) -> Step<Decision> {
    f.needs(o, 40)?;
    if f.byte(o) >> 4 != 6 {
        return Err(Malformed);
    }
    f.needs(o + 40, usize::from(f.u16(o + 4)))?;
    let dst: [u8; 16] = f.bytes(o + 24);
    let dst_hit = lookup(policy, IpAddr::from(dst));
    if let Some(Hit {
        allow: false,
        rule_id,
    }) = dst_hit
    {
        return Ok(Decision::drop(reason::DENY_IPV6, rule_id));
    }
    let final_pass = match dst_hit {
        Some(Hit { allow: true, .. }) => Decision::pass(reason::ALLOW, 0),
        _ => Decision::pass(reason::HOST_PASS, 0),
    };

    let mut nh = f.byte(o + 6);
    let mut q = o + 40;
    let mut walked = 0;
    while walked < MAX_IPV6_EXT_HEADERS && is_ext_header(nh) {
        match nh {
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
                    return Ok(final_pass);
                }
                q += 8;
            }
            // Hop-by-hop, routing, destination options.
            _ => {
                f.needs(q, 2)?;
                nh = f.byte(q);
                q += 8 * (usize::from(f.byte(q + 1)) + 1);
            }
        }
        walked += 1;
    }
    if is_ext_header(nh) {
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
    Ok(final_pass)
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
    Ok(match target_hit {
        Some(Hit { allow: true, .. }) => Decision::pass(reason::ALLOW, 0),
        _ => Decision::pass(reason::HOST_PASS, 0),
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

/// The longest-prefix entry of `addr`'s family that contains it. Among equal prefixes (same
/// length, same masked address) the last entry wins.
fn lookup(policy: &Policy, addr: IpAddr) -> Option<Hit> {
    let mut best: Option<&Rule> = None;
    for rule in &policy.rules {
        let contains = match (rule.addr, addr) {
            (IpAddr::V4(r), IpAddr::V4(a)) => {
                prefix_matches(&r.octets(), &a.octets(), rule.prefix_len)
            }
            (IpAddr::V6(r), IpAddr::V6(a)) => {
                prefix_matches(&r.octets(), &a.octets(), rule.prefix_len)
            }
            _ => false,
        };
        if contains && best.is_none_or(|b| rule.prefix_len >= b.prefix_len) {
            best = Some(rule);
        }
    }
    best.map(|r| Hit {
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
    use crate::{ACTION_DENY, CLASS_STORAGE};

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

    fn ipv4(dst: [u8; 6], ip_dst: Ipv4Addr) -> Vec<u8> {
        let mut f = eth(dst, 0x0800);
        let mut ip = [0u8; 28];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&28u16.to_be_bytes());
        ip[8] = 64;
        ip[9] = 17;
        ip[12..16].copy_from_slice(&[192, 168, 0, 2]);
        ip[16..20].copy_from_slice(&ip_dst.octets());
        f.extend_from_slice(&ip);
        f
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
        h[8..24].copy_from_slice(&"fe80::2".parse::<Ipv6Addr>().expect("addr").octets());
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
}
