//! ARP (step 7 of docs/datapath.md): a guest must not learn, nor poison, the host's neighbour
//! entries for protected addresses.

use network_types::arp::ArpHdr;

use crate::{
    Outcome,
    frame::{Frame, Malformed},
    policy::{self, Config},
};
use guard_common::reason;

#[inline(always)]
pub fn classify<F: Frame>(f: &F, o: usize, cfg: Config) -> Result<Outcome, Malformed> {
    let h: &ArpHdr = f.at(o)?;
    // Ethernet/IPv4 ARP only; anything else addressed to the host fails closed.
    if h.htype != [0, 1] || h.ptype != [0x08, 0x00] || h.hlen != 6 || h.plen != 4 {
        return Err(Malformed);
    }
    let target = policy::v4(h.tpa, cfg);
    if let Some(id) = target.deny() {
        return Ok(Outcome::new(reason::DENY_ARP, id));
    }
    if let Some(id) = policy::v4(h.spa, cfg).deny() {
        return Ok(Outcome::new(reason::DENY_ARP, id));
    }
    Ok(target.outcome(reason::DENY_ARP))
}
