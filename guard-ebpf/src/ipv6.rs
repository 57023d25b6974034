//! IPv6 and neighbour solicitation (step 6 of docs/datapath.md, then steps 8-9 through
//! `policy::judge_ip`).

use network_types::ip::Ipv6Hdr;

use crate::{
    Outcome, exception,
    frame::{Frame, Malformed},
    policy::{self, Config},
    route::{self, Route},
};
use guard_common::{MAX_IPV6_EXT_HEADERS, reason};

const NH_HOP_BY_HOP: u8 = 0;
const NH_ROUTING: u8 = 43;
const NH_FRAGMENT: u8 = 44;
const NH_AH: u8 = 51;
const NH_ICMPV6: u8 = 58;
const NH_TCP: u8 = 6;
const NH_UDP: u8 = 17;
const NH_DEST_OPTS: u8 = 60;
const ICMPV6_NEIGHBOUR_SOLICITATION: u8 = 135;
/// Extension headers may not reach past this offset in the frame (docs/datapath.md, step 6).
const MAX_EXT_OFFSET: usize = 1024;

#[inline(always)]
const fn is_ext_header(nh: u8) -> bool {
    matches!(
        nh,
        NH_HOP_BY_HOP | NH_ROUTING | NH_FRAGMENT | NH_AH | NH_DEST_OPTS
    )
}

/// Multicast (`ff00::/8`) or link-local (`fe80::/10`): never forwarded, and a link-local
/// destination is only local when it belongs to the receiving device (the bridge).
#[inline(always)]
const fn is_scoped(dst: &[u8; 16]) -> bool {
    dst[0] == 0xff || (dst[0] == 0xfe && dst[1] & 0xc0 == 0x80)
}

#[inline(always)]
#[expect(
    clippy::many_single_char_names,
    reason = "f, o, h, q: frame, header offset, header, cursor, as in the other parsers"
)]
pub fn classify<F: Frame>(f: &F, o: usize, cfg: Config) -> Result<Outcome, Malformed> {
    let h: &Ipv6Hdr = f.at(o)?;
    if h.vcf[0] >> 4 != 6 {
        return Err(Malformed);
    }
    let payload = usize::from(u16::from_be_bytes(h.payload_len));
    if !f.has(o, Ipv6Hdr::LEN + payload) {
        return Err(Malformed);
    }
    let dst = h.dst_addr;
    let rule = policy::v6(dst, cfg);
    if let Some(id) = rule.deny() {
        let deny = Outcome::new(reason::DENY_IPV6, id);
        // Step 10 may lift it only when the upper layer follows the fixed header (no
        // extension header to walk) and is no tunnel.
        let nh = h.next_hdr;
        if exception::enabled(cfg)
            && matches!(nh, NH_TCP | NH_UDP | NH_ICMPV6)
            && (cfg.tunnels_allowed() || !policy::is_tunnel(f, nh, o + Ipv6Hdr::LEN))
        {
            return Ok(deny.liftable());
        }
        return Ok(deny);
    }
    // Not denied by destination: walk to the upper layer. A routing header with segments left
    // would make the host rewrite the destination; a neighbour solicitation may ask about a
    // protected target (it goes to a solicited-node multicast address); a tunnel would be
    // decapsulated.
    let mut nh = h.next_hdr;
    let mut q = o + Ipv6Hdr::LEN;
    let mut walked = 0;
    // The upper layer is in this frame (not a later fragment).
    let mut upper = true;
    while walked < MAX_IPV6_EXT_HEADERS {
        match nh {
            NH_ROUTING => {
                let e: &[u8; 4] = f.at(q)?;
                if e[3] != 0 {
                    return Ok(Outcome::new(reason::DENY_SRCROUTE, 0));
                }
                nh = e[0];
                q = q.wrapping_add((usize::from(e[1]) + 1) * 8);
            }
            NH_HOP_BY_HOP | NH_DEST_OPTS => {
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
                    upper = false;
                    break;
                }
                q = q.wrapping_add(8);
            }
            _ => break,
        }
        // A bound on the cursor: the verifier's states for the walk then converge (each
        // header length is guest data), which older verifiers need to finish.
        if q > MAX_EXT_OFFSET {
            return Err(Malformed);
        }
        walked += 1;
    }
    if upper && is_ext_header(nh) {
        return Err(Malformed);
    }
    if upper && nh == NH_ICMPV6 {
        let icmp: &[u8; 4] = f.at(q)?;
        if icmp[0] == ICMPV6_NEIGHBOUR_SOLICITATION {
            let target: &[u8; 16] = f.at(q.wrapping_add(8))?;
            if let Some(id) = policy::v6(*target, cfg).deny() {
                return Ok(Outcome::new(reason::DENY_NDP, id));
            }
        }
    }
    if is_scoped(&dst) {
        return Ok(rule.outcome(reason::DENY_IPV6));
    }
    let tunnel = upper && !cfg.tunnels_allowed() && policy::is_tunnel(f, nh, q);
    let route = if policy::needs_route(cfg, rule, tunnel) {
        let flowinfo = u32::from_be_bytes(h.vcf) & 0x0fff_ffff;
        route::v6(f, &cfg, &h.src_addr, &dst, flowinfo.to_be(), nh)
    } else {
        Route::NONE
    };
    Ok(policy::judge_ip(cfg, rule, tunnel, route))
}
