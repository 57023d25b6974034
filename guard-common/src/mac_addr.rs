//! A MAC address as userspace reads, prints and compares it.
//!
//! Only `core` is used, so the type builds for the eBPF target too, but the datapath keeps
//! MACs as the raw `[u8; 6]` it loads from the frame: nothing here runs per packet.

use core::{fmt, str::FromStr};

/// A 48-bit MAC address. Parses and prints as `aa:bb:cc:dd:ee:ff` (lower case).
///
/// ```
/// use guard_common::Mac;
///
/// let mac: Mac = "52:54:00:AB:cd:01".parse().unwrap();
/// assert_eq!(mac.octets(), [0x52, 0x54, 0x00, 0xab, 0xcd, 0x01]);
/// assert_eq!(mac.to_string(), "52:54:00:ab:cd:01");
/// assert!("52:54:00:ab:cd".parse::<Mac>().is_err());
/// ```
#[repr(transparent)]
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    #[must_use]
    pub const fn new(octets: [u8; 6]) -> Self {
        Self(octets)
    }

    #[must_use]
    pub const fn octets(self) -> [u8; 6] {
        self.0
    }
}

impl From<[u8; 6]> for Mac {
    fn from(octets: [u8; 6]) -> Self {
        Self(octets)
    }
}

impl From<Mac> for [u8; 6] {
    fn from(mac: Mac) -> Self {
        mac.0
    }
}

/// Text that is not six `:`-separated hexadecimal octets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParseMacError;

impl fmt::Display for ParseMacError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not a MAC address (aa:bb:cc:dd:ee:ff)")
    }
}

impl core::error::Error for ParseMacError {}

impl FromStr for Mac {
    type Err = ParseMacError;

    /// Six groups separated by `:`, each one hexadecimal `u8` (one or two digits, either
    /// case).
    fn from_str(s: &str) -> Result<Self, ParseMacError> {
        let mut mac = [0u8; 6];
        let mut parts = s.split(':');
        for b in &mut mac {
            let part = parts.next().ok_or(ParseMacError)?;
            *b = u8::from_str_radix(part, 16).map_err(|_| ParseMacError)?;
        }
        if parts.next().is_some() {
            return Err(ParseMacError);
        }
        Ok(Self(mac))
    }
}

impl fmt::Display for Mac {
    /// `aa:bb:cc:dd:ee:ff`; honours width and alignment (`{:<17}`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut buf = [b':'; 17];
        for (i, b) in self.0.iter().enumerate() {
            buf[i * 3] = HEX[usize::from(b >> 4)];
            buf[i * 3 + 1] = HEX[usize::from(b & 0xf)];
        }
        // Only ASCII hex digits and ':' were written.
        f.pad(core::str::from_utf8(&buf).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Mac({self})")
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::{format, string::ToString as _};

    use super::*;

    #[test]
    fn round_trip_and_rejects() {
        let m: Mac = "52:54:00:ab:CD:01".parse().expect("valid");
        assert_eq!(m.to_string(), "52:54:00:ab:cd:01");
        assert_eq!("2:0:0:0:0:9".parse::<Mac>(), Ok(Mac([2, 0, 0, 0, 0, 9])));
        for bad in [
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:01:02",
            "zz:54:00:ab:cd:01",
            "",
            "1::2:3:4:5",
        ] {
            assert_eq!(bad.parse::<Mac>(), Err(ParseMacError), "{bad:?}");
        }
        assert_eq!(format!("[{:<18}]", Mac([0xff; 6])), "[ff:ff:ff:ff:ff:ff ]");
    }
}
