//! Drop events: what the datapath tells a reader about a frame it dropped (or, in monitor mode,
//! would have dropped). Sampled: at most [`GlobalConfig::event_rate`](crate::GlobalConfig)
//! events per second per port, and only while a reader holds the lease in
//! [`EventReader`]. Counters never depend on either: they are bumped before any of this.

use core::mem::size_of;

/// Bytes of the frame copied into an event (from the destination MAC on). 64 covers Ethernet,
/// two VLAN tags, an IPv4 header with options or an IPv6 header, and the start of L4.
pub const EVENT_SNAP_LEN: usize = 64;

/// Default events per second per port (`GlobalConfig::event_rate`); 0 turns events off.
pub const DEFAULT_EVENT_RATE: u32 = 100;

/// Length of one event-rate window, in `bpf_ktime_get_ns` nanoseconds.
pub const EVENT_WINDOW_NS: u64 = 1_000_000_000;

/// Size of the ring buffer (a power of two, a multiple of the page size): 256 KiB holds about
/// 1,500 events, 15 s of one port at the default rate, so a reader that polls every few
/// milliseconds never loses any at that rate.
pub const EVENT_RING_BYTES: u32 = 256 * 1024;

/// `DropEvent::ip_version` values.
pub const IP_NONE: u8 = 0;
pub const IP_V4: u8 = 4;
pub const IP_V6: u8 = 6;

/// `DropEvent::flags`: `src_port`/`dst_port` hold UDP or TCP ports.
pub const EVENT_FLAG_PORTS: u8 = 1;
/// `DropEvent::flags`: the addresses are ARP's sender/target protocol addresses.
pub const EVENT_FLAG_ARP: u8 = 2;

/// One event, as the datapath writes it into the ring buffer.
///
/// Multi-byte integers are in host order (the reader runs on the same host); MACs, IP
/// addresses and `data` are as they are on the wire. An IPv4 address is stored IPv4-mapped
/// (`::ffff:a.b.c.d`) with `ip_version == IP_V4`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DropEvent {
    /// `bpf_ktime_get_ns()` (`CLOCK_MONOTONIC`) when the frame was judged.
    pub ts_ns: u64,
    pub ifindex: u32,
    /// Counter slot of the port (0: a port without an entry in the port table).
    pub slot: u32,
    /// The reason as counted (a `DENY_*`/`MALFORMED` or `MONITOR_*` code).
    pub reason: u32,
    /// The deny rule (0 for none, e.g. malformed).
    pub rule_id: u32,
    /// Length of the whole frame (`n` in docs/datapath.md).
    pub frame_len: u32,
    /// Bytes of the frame in `data` (`min(frame_len, EVENT_SNAP_LEN)`).
    pub cap_len: u16,
    /// VLAN tags found (0..=2), outer first in `vlan_tci`.
    pub vlan_count: u8,
    /// [`IP_NONE`], [`IP_V4`] or [`IP_V6`].
    pub ip_version: u8,
    pub vlan_tci: [u16; 2],
    /// The inner `EtherType` (after the VLAN tags).
    pub ethertype: u16,
    /// IP protocol / IPv6 next header (0 when not IP).
    pub l4_proto: u8,
    /// `EVENT_FLAG_*`.
    pub flags: u8,
    pub src_port: u16,
    pub dst_port: u16,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src_ip: [u8; 16],
    pub dst_ip: [u8; 16],
    pub data: [u8; EVENT_SNAP_LEN],
}

/// The reader lease: events are produced only while `bpf_ktime_get_ns() < until_ns`. A reader
/// renews it every [`EVENT_LEASE_RENEW_NS`] and sets it to 0 when it exits; a reader that
/// crashed lets it expire, and the first frame after that sets it to 0 too, so from then on the
/// drop path pays one load and compare again (not a clock read).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventReader {
    pub until_ns: u64,
}

/// How long a lease lasts, and how often a reader renews it.
pub const EVENT_LEASE_NS: u64 = 5_000_000_000;
pub const EVENT_LEASE_RENEW_NS: u64 = 1_000_000_000;

/// Per-port rate window (shared by all CPUs, indexed by counter slot).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventWindow {
    /// `bpf_ktime_get_ns()` of the first event of the current window.
    pub start_ns: u64,
    /// Events asked for in the window (emitted or not).
    pub count: u64,
}

/// Per-CPU event accounting (one entry): `sampled` events went into the ring buffer;
/// `suppressed` were over the port's rate; `lost` found the ring buffer full. Drop and monitor
/// verdicts while no reader holds the lease are not counted here (the counters have them).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventStats {
    pub sampled: u64,
    pub suppressed: u64,
    pub lost: u64,
}

const _: () = assert!(size_of::<DropEvent>() == 88 + EVENT_SNAP_LEN);
const _: () = assert!(size_of::<DropEvent>().is_multiple_of(8));
const _: () = assert!(size_of::<EventReader>() == 8);
const _: () = assert!(size_of::<EventWindow>() == 16);
const _: () = assert!(size_of::<EventStats>() == 24);
const _: () = assert!(EVENT_RING_BYTES.is_power_of_two());
// The datapath masks the copy length with `EVENT_SNAP_LEN - 1`.
const _: () = assert!(EVENT_SNAP_LEN.is_power_of_two());

impl DropEvent {
    /// The captured bytes.
    #[must_use]
    pub fn captured(&self) -> &[u8] {
        &self.data[..usize::from(self.cap_len).min(EVENT_SNAP_LEN)]
    }
}
