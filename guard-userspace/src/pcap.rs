//! The classic libpcap file format (what `tcpdump -w` writes and `tcpdump -r` reads), written
//! by hand: a 24-byte file header and a 16-byte header per record. A crate would add more
//! code than this.

use std::{
    io::{self, Write},
    time::{SystemTime, UNIX_EPOCH},
};

/// `LINKTYPE_ETHERNET`.
pub const LINKTYPE_ETHERNET: u32 = 1;
const MAGIC_USEC: u32 = 0xa1b2_c3d4;

/// Writes a pcap stream of Ethernet frames.
pub struct PcapWriter<W: Write> {
    out: W,
}

impl<W: Write> PcapWriter<W> {
    /// Writes the file header. `snaplen` is the most bytes a record holds.
    pub fn new(mut out: W, snaplen: u32) -> io::Result<Self> {
        let mut h = Vec::with_capacity(24);
        // Native byte order: readers detect it from the magic.
        h.extend_from_slice(&MAGIC_USEC.to_ne_bytes());
        h.extend_from_slice(&2u16.to_ne_bytes());
        h.extend_from_slice(&4u16.to_ne_bytes());
        h.extend_from_slice(&0i32.to_ne_bytes()); // thiszone
        h.extend_from_slice(&0u32.to_ne_bytes()); // sigfigs
        h.extend_from_slice(&snaplen.to_ne_bytes());
        h.extend_from_slice(&LINKTYPE_ETHERNET.to_ne_bytes());
        out.write_all(&h)?;
        Ok(Self { out })
    }

    /// One frame: `data` is what was captured, `orig_len` the frame's full length.
    pub fn write(&mut self, time: SystemTime, data: &[u8], orig_len: u32) -> io::Result<()> {
        let t = time.duration_since(UNIX_EPOCH).unwrap_or_default();
        let mut h = Vec::with_capacity(16);
        h.extend_from_slice(&(t.as_secs() as u32).to_ne_bytes());
        h.extend_from_slice(&t.subsec_micros().to_ne_bytes());
        h.extend_from_slice(&(data.len() as u32).to_ne_bytes());
        h.extend_from_slice(&orig_len.max(data.len() as u32).to_ne_bytes());
        self.out.write_all(&h)?;
        self.out.write_all(data)
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_and_record_layout() {
        let mut buf = Vec::new();
        let mut w = PcapWriter::new(&mut buf, 64).expect("header");
        let t = UNIX_EPOCH + std::time::Duration::new(1_700_000_000, 123_456_000);
        w.write(t, &[0xaa; 20], 100).expect("record");
        assert_eq!(buf.len(), 24 + 16 + 20);
        assert_eq!(
            u32::from_ne_bytes(buf[0..4].try_into().expect("4")),
            MAGIC_USEC
        );
        assert_eq!(u32::from_ne_bytes(buf[16..20].try_into().expect("4")), 64);
        assert_eq!(u32::from_ne_bytes(buf[20..24].try_into().expect("4")), 1);
        assert_eq!(
            u32::from_ne_bytes(buf[24..28].try_into().expect("4")),
            1_700_000_000
        );
        assert_eq!(
            u32::from_ne_bytes(buf[28..32].try_into().expect("4")),
            123_456
        );
        assert_eq!(u32::from_ne_bytes(buf[32..36].try_into().expect("4")), 20);
        assert_eq!(u32::from_ne_bytes(buf[36..40].try_into().expect("4")), 100);
    }
}
