//! MAC addresses as the lab names and prints them: the one parser and formatter of the tests
//! crate (the lab, the tests and `guard-vmcheck`), over `guard_common::Mac`. Frames are built
//! with [`crate::packet`].

use anyhow::{Result, anyhow};

/// An Ethernet MAC address.
pub type Mac = [u8; 6];

/// Formats a MAC the way `ip link` prints it (`guard_common::Mac`'s format).
#[must_use]
pub fn mac_to_string(mac: &Mac) -> String {
    guard_common::Mac::new(*mac).to_string()
}

/// Parses `aa:bb:cc:dd:ee:ff` with `guard_common::Mac`, ignoring white space around it (a
/// line of `/sys/class/net/*/address` ends in a newline).
pub fn parse_mac(s: &str) -> Result<Mac> {
    s.trim()
        .parse::<guard_common::Mac>()
        .map(guard_common::Mac::octets)
        .map_err(|e| anyhow!("{s:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trip() {
        let m = [0x02, 0x47, 0x4c, 0, 0xab, 1];
        assert_eq!(parse_mac(&mac_to_string(&m)).ok(), Some(m));
        assert_eq!(parse_mac(" 02:47:4c:00:ab:01\n").ok(), Some(m));
        assert!(parse_mac("02:00").is_err());
        assert!(parse_mac("02:47:4c:00:ab:01:02").is_err());
    }
}
