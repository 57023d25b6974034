//! MAC addresses as the lab names and prints them. Frames are built with [`crate::packet`].

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

/// Parses `aa:bb:cc:dd:ee:ff`.
#[must_use]
pub fn parse_mac(s: &str) -> Option<Mac> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trip() {
        let m = [0x02, 0x47, 0x4c, 0, 0xab, 1];
        assert_eq!(parse_mac(&mac_to_string(&m)), Some(m));
        assert_eq!(parse_mac("02:00"), None);
    }
}
