//! IPv6 and neighbour solicitation (step 6 of docs/datapath.md).

use network_types::ip::Ipv6Hdr;

use crate::{
    Outcome,
    frame::{Frame, Malformed},
    policy,
};
use guard_common::{MAX_IPV6_EXT_HEADERS, reason};

const NH_HOP_BY_HOP: u8 = 0;
const NH_ROUTING: u8 = 43;
const NH_FRAGMENT: u8 = 44;
const NH_AH: u8 = 51;
const NH_ICMPV6: u8 = 58;
const NH_DEST_OPTS: u8 = 60;
const ICMPV6_NEIGHBOUR_SOLICITATION: u8 = 135;

#[inline(always)]
const fn is_ext_header(nh: u8) -> bool {
    matches!(
        nh,
        NH_HOP_BY_HOP | NH_ROUTING | NH_FRAGMENT | NH_AH | NH_DEST_OPTS
    )
}

#[inline(always)]
#[expect(
    clippy::many_single_char_names,
    reason = "f, o, h, q: frame, header offset, header, cursor, as in the other parsers"
)]
pub fn classify<F: Frame>(f: &F, o: usize) -> Result<Outcome, Malformed> {
    let h: &Ipv6Hdr = f.at(o)?;
    if h.vcf[0] >> 4 != 6 {
        return Err(Malformed);
    }
    let payload = usize::from(u16::from_be_bytes(h.payload_len));
    if !f.has(o, Ipv6Hdr::LEN + payload) {
        return Err(Malformed);
    }
    let dst = policy::judge_v6(h.dst_addr, reason::DENY_IPV6);
    if dst.reason == reason::DENY_IPV6 {
        return Ok(dst);
    }
    // Not denied by destination: a neighbour solicitation may still ask about a protected
    // target (it goes to a solicited-node multicast address), so find the upper layer.
    let mut nh = h.next_hdr;
    let mut q = o + Ipv6Hdr::LEN;
    let mut walked = 0;
    while walked < MAX_IPV6_EXT_HEADERS {
        match nh {
            NH_HOP_BY_HOP | NH_ROUTING | NH_DEST_OPTS => {
                let e: &[u8; 2] = f.at(q)?;
                nh = e[0];
                q = q.wrapping_add((usize::from(e[1]) + 1) * 8);
            }
            NH_AH => {
                let e: &[u8; 2] = f.at(q)?;
                nh = e[0];
                q = q.wrapping_add((usize::from(e[1]) + 2) * 4);
            }
            NH_FRAGMENT => {
                let e: &[u8; 8] = f.at(q)?;
                nh = e[0];
                if u16::from_be_bytes([e[2], e[3]]) & 0xfff8 != 0 {
                    // A later fragment: the upper layer is not in this frame.
                    return Ok(dst);
                }
                q = q.wrapping_add(8);
            }
            _ => break,
        }
        walked += 1;
    }
    if is_ext_header(nh) {
        return Err(Malformed);
    }
    if nh == NH_ICMPV6 {
        let icmp: &[u8; 4] = f.at(q)?;
        if icmp[0] == ICMPV6_NEIGHBOUR_SOLICITATION {
            let target: &[u8; 16] = f.at(q.wrapping_add(8))?;
            let ns = policy::judge_v6(*target, reason::DENY_NDP);
            if ns.reason == reason::DENY_NDP {
                return Ok(ns);
            }
        }
    }
    Ok(dst)
}
