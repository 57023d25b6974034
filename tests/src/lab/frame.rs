//! MAC addresses as the lab names and prints them: the one parser and formatter of the tests
//! crate (the lab, the tests and `guard-vmcheck`). Frames are built with [`crate::packet`].

use anyhow::{Result, anyhow};

/// An Ethernet MAC address.
pub type Mac = [u8; 6];

/// Formats a MAC the way `ip link` prints it.
#[must_use]
pub fn mac_to_string(mac: &Mac) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff`, ignoring white space around it (a line of
/// `/sys/class/net/*/address` ends in a newline).
pub fn parse_mac(s: &str) -> Result<Mac> {
    let parse = || {
        let mut mac = [0u8; 6];
        let mut parts = s.trim().split(':');
        for byte in &mut mac {
            *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
        }
        parts.next().is_none().then_some(mac)
    };
    parse().ok_or_else(|| anyhow!("{s:?} is not a MAC address"))
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
