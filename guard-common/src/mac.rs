//! The set of MACs the host accepts, as an open-addressing hash table inside one array-map value.
//!
//! Why not a BPF hash map: the "not addressed to the host" test runs on every frame a guest
//! sends and must be nearly free. A lookup in a one-entry `BPF_MAP_TYPE_ARRAY` is inlined by the
//! verifier into a pointer load, so a probe here costs a multiply, a load and a compare, where a
//! hash-map lookup is a helper call with jhash and a bucket walk.
//!
//! Concurrency: userspace changes the table by rewriting the whole value with
//! `BPF_MAP_UPDATE_ELEM`, which copies it in place while programs may be reading. Every change
//! is made such that any mix of old and new 8-byte slots is safe:
//! - an insert only turns an `EMPTY` slot (or a tombstone) into the new key;
//! - a delete only turns the key's slot into [`TOMBSTONE`], never into `EMPTY`, so probes for
//!   other keys keep walking past it;
//! - entries never move.
//!
//! A slot read half-written is some value with the occupied bit set that equals no real key: a
//! probe walks past it. So a reader sees each MAC either present or absent, never a different
//! MAC, and never loses a MAC that stays in the set.
//!
//! Both sides compute keys and home slots with the functions below, so they cannot disagree.

/// Slots in the table (a power of two). 32 KiB of value.
pub const MAC_TABLE_SLOTS: usize = 4096;
/// Most slots a lookup examines. An insert that finds no free slot within this window fails
/// (userspace reports "host MAC table full"); at the intended load (a few hundred MACs) that is
/// practically impossible.
pub const MAC_PROBE_LIMIT: usize = 16;
/// Most MACs userspace puts into the table (a quarter of the slots keeps probes short).
pub const MAC_TABLE_MAX_ENTRIES: usize = MAC_TABLE_SLOTS / 4;

/// An unused slot: ends a probe.
pub const EMPTY: u64 = 0;
/// Marks a real key (bit 63); a key is `OCCUPIED | mac as 48-bit integer`.
pub const OCCUPIED: u64 = 1 << 63;
/// A deleted slot: probes continue past it; inserts may reuse it.
pub const TOMBSTONE: u64 = 1 << 62;

/// The table: one array-map value.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct MacTable {
    pub slots: [u64; MAC_TABLE_SLOTS],
}

const _: () = assert!(MAC_TABLE_SLOTS.is_power_of_two());
const _: () = assert!(size_of::<MacTable>() == MAC_TABLE_SLOTS * 8);

/// The table key of a MAC: its six bytes as a little-endian integer, with [`OCCUPIED`] set.
/// (The eBPF side builds the same integer from a 4-byte and a 2-byte load of the frame.)
#[expect(
    clippy::inline_always,
    reason = "shared with the eBPF programs, where a call per frame on the hot path costs more than the inlined body"
)]
#[inline(always)]
#[must_use]
pub const fn mac_key(mac: [u8; 6]) -> u64 {
    key_from_parts(
        u32::from_le_bytes([mac[0], mac[1], mac[2], mac[3]]),
        u16::from_le_bytes([mac[4], mac[5]]),
    )
}

/// The table key from the first four and the last two bytes of a MAC, each read as a
/// little-endian integer.
#[expect(
    clippy::inline_always,
    reason = "shared with the eBPF programs, where a call per frame on the hot path costs more than the inlined body"
)]
#[inline(always)]
#[must_use]
pub const fn key_from_parts(lo: u32, hi: u16) -> u64 {
    OCCUPIED | (lo as u64) | ((hi as u64) << 32)
}

/// The MAC a key stands for.
#[must_use]
pub const fn key_to_mac(key: u64) -> [u8; 6] {
    let b = key.to_le_bytes();
    [b[0], b[1], b[2], b[3], b[4], b[5]]
}

/// The slot a key's probe sequence starts at (Fibonacci hashing of the key).
#[expect(
    clippy::inline_always,
    reason = "shared with the eBPF programs, where a call per frame on the hot path costs more than the inlined body"
)]
#[inline(always)]
#[must_use]
pub const fn home_slot(key: u64) -> usize {
    (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - MAC_TABLE_SLOTS.trailing_zeros())) as usize
}

/// Is `key` in the table? The same probe the eBPF program runs, for userspace and tests.
#[must_use]
pub fn table_contains(table: &MacTable, key: u64) -> bool {
    let home = home_slot(key);
    for step in 0..MAC_PROBE_LIMIT {
        let slot = table.slots[(home + step) & (MAC_TABLE_SLOTS - 1)];
        if slot == key {
            return true;
        }
        if slot == EMPTY {
            return false;
        }
    }
    false
}

/// Why an insert failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InsertError {
    /// No free slot within [`MAC_PROBE_LIMIT`] of the key's home, or the table holds
    /// [`MAC_TABLE_MAX_ENTRIES`] already.
    Full,
}

impl MacTable {
    /// An empty table.
    #[must_use]
    #[expect(
        clippy::large_stack_arrays,
        reason = "the table is one map value; userspace builds it once per update and copies it into the map"
    )]
    pub const fn new() -> Self {
        Self {
            slots: [EMPTY; MAC_TABLE_SLOTS],
        }
    }

    /// Number of MACs present.
    #[must_use]
    pub fn len(&self) -> usize {
        self.slots.iter().filter(|s| **s & OCCUPIED != 0).count()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every MAC present, in slot order.
    pub fn macs(&self) -> impl Iterator<Item = [u8; 6]> + '_ {
        self.slots
            .iter()
            .filter(|s| **s & OCCUPIED != 0)
            .map(|s| key_to_mac(*s))
    }

    #[must_use]
    pub fn contains(&self, mac: [u8; 6]) -> bool {
        table_contains(self, mac_key(mac))
    }

    /// Adds `mac`; a MAC already present is left where it is. Returns whether it was new.
    pub fn insert(&mut self, mac: [u8; 6]) -> Result<bool, InsertError> {
        let key = mac_key(mac);
        if table_contains(self, key) {
            return Ok(false);
        }
        if self.len() >= MAC_TABLE_MAX_ENTRIES {
            return Err(InsertError::Full);
        }
        let home = home_slot(key);
        for step in 0..MAC_PROBE_LIMIT {
            let slot = &mut self.slots[(home + step) & (MAC_TABLE_SLOTS - 1)];
            if *slot == EMPTY || *slot == TOMBSTONE {
                *slot = key;
                return Ok(true);
            }
        }
        Err(InsertError::Full)
    }

    /// Removes `mac` (its slot becomes a tombstone). Returns whether it was present.
    pub fn remove(&mut self, mac: [u8; 6]) -> bool {
        let key = mac_key(mac);
        let home = home_slot(key);
        for step in 0..MAC_PROBE_LIMIT {
            let slot = &mut self.slots[(home + step) & (MAC_TABLE_SLOTS - 1)];
            if *slot == key {
                *slot = TOMBSTONE;
                return true;
            }
            if *slot == EMPTY {
                return false;
            }
        }
        false
    }
}

impl Default for MacTable {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(n: u32) -> [u8; 6] {
        let b = n.to_be_bytes();
        [0x52, 0x54, b[0], b[1], b[2], b[3]]
    }

    #[test]
    fn insert_lookup_remove() {
        let mut t = MacTable::new();
        for n in 0..1000 {
            assert_eq!(t.insert(mac(n)), Ok(true));
        }
        assert_eq!(t.insert(mac(7)), Ok(false));
        assert_eq!(t.len(), 1000);
        for n in 0..1000 {
            assert!(t.contains(mac(n)));
        }
        assert!(!t.contains(mac(5000)));
        // Removing half keeps the other half reachable (tombstones do not end probes).
        for n in (0..1000).step_by(2) {
            assert!(t.remove(mac(n)));
        }
        for n in 0..1000 {
            assert_eq!(t.contains(mac(n)), n % 2 == 1, "mac {n}");
        }
        // Tombstones are reused.
        for n in 2000..2400 {
            assert_eq!(t.insert(mac(n)), Ok(true));
        }
        assert_eq!(t.len(), 900);
    }

    #[test]
    fn full_table_is_an_error() {
        let mut t = MacTable::new();
        let mut n = 0;
        while t.len() < MAC_TABLE_MAX_ENTRIES {
            t.insert(mac(n)).expect("room below the limit");
            n += 1;
        }
        assert_eq!(t.insert(mac(n)), Err(InsertError::Full));
    }

    #[test]
    fn key_round_trips_and_broadcast_is_distinct_from_empty() {
        let m = [0xff; 6];
        assert_eq!(key_to_mac(mac_key(m)), m);
        assert_ne!(mac_key([0; 6]), EMPTY);
        assert_ne!(mac_key([0; 6]), TOMBSTONE);
    }
}
