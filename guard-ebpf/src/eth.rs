//! Ethernet: the host-bound test (steps 1-2 of docs/datapath.md) and the VLAN walk (step 3).

use guard_common::{
    GLOBAL_FLAG_STRICT_MAC, MAX_VLAN_TAGS,
    mac::{EMPTY, MAC_PROBE_LIMIT, MAC_TABLE_SLOTS, home_slot, key_from_parts},
};

use crate::{
    frame::{Frame, Malformed},
    maps::{CONFIG, MAC_TABLE},
};

pub const ETH_HLEN: usize = 14;

/// EtherTypes as they sit in the frame (network order), compared as raw integers.
pub const P_IPV4: u16 = 0x0800_u16.to_be();
pub const P_IPV6: u16 = 0x86dd_u16.to_be();
pub const P_ARP: u16 = 0x0806_u16.to_be();
const P_8021Q: u16 = 0x8100_u16.to_be();
const P_8021AD: u16 = 0x88a8_u16.to_be();

/// Is the frame addressed to a MAC the host accepts? `eth` is the 14-byte header.
#[inline(always)]
pub fn host_bound(eth: &[u8; ETH_HLEN]) -> bool {
    if eth[0] & 1 != 0 {
        // Broadcast or multicast: the host stack takes unicast IP inside such frames too.
        return !strict_mac();
    }
    let key = key_from_parts(
        u32::from_le_bytes([eth[0], eth[1], eth[2], eth[3]]),
        u16::from_le_bytes([eth[4], eth[5]]),
    );
    is_host_mac(key)
}

#[inline(always)]
fn strict_mac() -> bool {
    // A missing entry cannot happen for index 0 of an array; if it did, non-strict (judge
    // more frames) is the safe reading.
    CONFIG
        .get(0)
        .is_some_and(|c| c.flags & GLOBAL_FLAG_STRICT_MAC != 0)
}

/// The probe of `guard_common::mac::table_contains`, over the map value.
#[inline(always)]
fn is_host_mac(key: u64) -> bool {
    let Some(table) = MAC_TABLE.get(0) else {
        // Cannot happen (index 0 of a one-entry array); fail closed: judge the frame.
        return true;
    };
    let mut i = home_slot(key);
    for _ in 0..MAC_PROBE_LIMIT {
        // SAFETY: the index is masked into the table.
        let slot = unsafe { *table.slots.get_unchecked(i & (MAC_TABLE_SLOTS - 1)) };
        if slot == key {
            return true;
        }
        if slot == EMPTY {
            return false;
        }
        i = i.wrapping_add(1);
    }
    false
}

#[inline(always)]
const fn is_vlan(proto: u16) -> bool {
    proto == P_8021Q || proto == P_8021AD
}

/// Walks up to [`MAX_VLAN_TAGS`] 802.1Q/802.1ad tags (minus those the hook already stripped).
/// Returns the inner EtherType (raw, network order) and the offset of the inner header.
#[inline(always)]
pub fn skip_vlans<F: Frame>(
    f: &F,
    eth: &[u8; ETH_HLEN],
    stripped: u32,
) -> Result<(u16, usize), Malformed> {
    let mut proto = u16::from_ne_bytes([eth[12], eth[13]]);
    let mut off = ETH_HLEN;
    let budget = (MAX_VLAN_TAGS as u32).saturating_sub(stripped);
    let mut used = 0;
    while used < MAX_VLAN_TAGS as u32 {
        if !is_vlan(proto) {
            return Ok((proto, off));
        }
        if used >= budget {
            return Err(Malformed);
        }
        let tag: &[u8; 4] = f.at(off)?;
        proto = u16::from_ne_bytes([tag[2], tag[3]]);
        off += 4;
        used += 1;
    }
    if is_vlan(proto) {
        return Err(Malformed);
    }
    Ok((proto, off))
}
