//! IPv4 (step 5 of docs/datapath.md).

use network_types::ip::Ipv4Hdr;

use crate::{
    Outcome,
    frame::{Frame, Malformed},
    policy,
};
use guard_common::reason;

#[inline(always)]
pub fn classify<F: Frame>(f: &F, o: usize) -> Result<Outcome, Malformed> {
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
    Ok(policy::judge_v4(h.dst_addr, reason::DENY_IPV4))
}
