//! Reading drop events: the pinned ring buffer, the reader lease, and an event in the terms an
//! operator reads (port and VM, addresses, rule).
//!
//! The ring buffer has one consumer position: two readers of the same bridge would split the
//! events between them. So there is one consumer at a time, the holder of
//! [`ConsumerLock`](crate::pins::ConsumerLock): the agent while it runs (it logs the events and
//! passes them on to subscribers over its socket, `crate::feed`), else one `guardctl events`
//! or `top`. Metrics do not read the ring (they come from counters).

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd},
    time::{Duration, SystemTime},
};

use aya::maps::{Map, MapData, RingBuf};
use guard_common::{
    event::{
        DropEvent, EVENT_FLAG_ARP, EVENT_FLAG_PORTS, EVENT_LEASE_NS, EVENT_LEASE_RENEW_NS, IP_V4,
        IP_V6,
    },
    map_names, reason,
};
use serde::{Deserialize, Serialize};

use crate::{
    error::{GuardError, Result},
    identity::PortLabel,
    maps::GuardMaps,
    pins::Location,
    state::State,
};

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_ns`.
#[must_use]
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    ts.tv_sec
        .cast_unsigned()
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec.cast_unsigned())
}

/// The wall-clock time of a `bpf_ktime_get_ns` timestamp.
#[must_use]
pub fn wall_time(ts_ns: u64) -> SystemTime {
    let age = monotonic_ns().saturating_sub(ts_ns);
    SystemTime::now()
        .checked_sub(Duration::from_nanos(age))
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// A reader of one bridge's events. Holds the lease while it lives and gives it up on drop.
pub struct EventStream {
    ring: RingBuf<MapData>,
    maps: GuardMaps,
    renewed_ns: u64,
    /// Give the lease up on drop (false after [`EventStream::hand_over`]).
    release: bool,
}

impl EventStream {
    /// Opens the pinned ring buffer of `loc` and takes the reader lease.
    pub fn open(loc: &Location) -> Result<Self> {
        let maps = GuardMaps::open(loc)?;
        let path = loc.map_pin(map_names::EVENTS);
        let data = MapData::from_pin(&path).map_err(|e| GuardError::map(map_names::EVENTS, e))?;
        let map = Map::from_map_data(data).map_err(|e| GuardError::map(map_names::EVENTS, e))?;
        let ring = RingBuf::try_from(map).map_err(|e| GuardError::map(map_names::EVENTS, e))?;
        let mut s = Self {
            ring,
            maps,
            renewed_ns: 0,
            release: true,
        };
        s.renew()?;
        Ok(s)
    }

    fn renew(&mut self) -> Result<()> {
        let now = monotonic_ns();
        self.maps.set_event_lease(now + EVENT_LEASE_NS)?;
        self.renewed_ns = now;
        Ok(())
    }

    /// Renews the lease when it is due (call at least once a second).
    pub fn keep_alive(&mut self) -> Result<()> {
        if monotonic_ns().saturating_sub(self.renewed_ns) >= EVENT_LEASE_RENEW_NS {
            self.renew()?;
        }
        Ok(())
    }

    /// The next event already in the ring, without waiting.
    pub fn try_next(&mut self) -> Option<DropEvent> {
        loop {
            let item = self.ring.next()?;
            if item.len() >= size_of::<DropEvent>() {
                // SAFETY: the record holds at least a `DropEvent`, a plain-old-data type whose
                // every bit pattern is valid; the read does not assume alignment.
                return Some(unsafe { item.as_ptr().cast::<DropEvent>().read_unaligned() });
            }
            // A record of another size (a future layout): skip it rather than misread it.
        }
    }

    /// Stops reading but leaves the lease in force: the next consumer (who waits for the
    /// consumer lock this reader releases next) renews it and finds the events made meanwhile
    /// in the ring. If none comes, the lease runs out by itself (`EVENT_LEASE_NS`).
    pub fn hand_over(mut self) {
        self.release = false;
    }

    #[must_use]
    pub fn maps(&self) -> &GuardMaps {
        &self.maps
    }

    /// The ring buffer, for an async readiness wait (`tokio::io::unix::AsyncFd`).
    pub fn ring_mut(&mut self) -> &mut RingBuf<MapData> {
        &mut self.ring
    }
}

impl AsRawFd for EventStream {
    fn as_raw_fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }
}

impl AsFd for EventStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.ring.as_fd()
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        if !self.release {
            return;
        }
        // Another reader still running renews within a second; a failure here only means the
        // lease runs out by itself (EVENT_LEASE_NS).
        if let Err(e) = self.maps.set_event_lease(0) {
            log::debug!("giving up the event lease: {e}");
        }
    }
}

/// What a rule id stands for, for display.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RuleLabel {
    pub prefix: String,
    pub class: String,
}

/// Rule id -> prefix and class, from the live tries and the state's class names.
pub fn rule_labels(maps: &GuardMaps, state: &State) -> Result<BTreeMap<u32, RuleLabel>> {
    Ok(maps
        .rules()?
        .into_iter()
        .map(|(net, v)| {
            (
                v.rule_id,
                RuleLabel {
                    prefix: net.to_string(),
                    class: state.classes.name(v.class),
                },
            )
        })
        .collect())
}

/// An event as shown by `guardctl events` (text and JSON), `top`, the agent's drop log and
/// its subscriber socket: one shape (`guardctl.events.v1`) for all of them.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EventView {
    /// RFC 3339 with milliseconds.
    pub time: String,
    pub bridge: String,
    pub port: String,
    pub ifindex: u32,
    /// The libvirt domain owning the port, if known.
    pub vm: Option<String>,
    /// The guest's MAC from libvirt, else the port interface's own MAC.
    pub port_mac: Option<String>,
    pub src_mac: String,
    pub dst_mac: String,
    /// VLAN IDs, outer first.
    pub vlans: Vec<u16>,
    pub ethertype: String,
    pub src_ip: Option<IpAddr>,
    pub dst_ip: Option<IpAddr>,
    /// `tcp`, `udp`, `icmp`, `icmpv6`, `arp`, a number, or none.
    pub proto: Option<String>,
    pub src_port: Option<u16>,
    pub dst_port: Option<u16>,
    pub reason: String,
    pub rule_id: u32,
    pub rule: Option<RuleLabel>,
    pub len: u32,
    pub captured: u16,
    /// The captured bytes as hex: only on the agent's subscriber socket (for `events
    /// --pcap`), never in the log or `events --json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame: Option<String>,
}

fn mac_str(m: [u8; 6]) -> String {
    guard_common::Mac(m).to_string()
}

fn ip_of(version: u8, a: [u8; 16]) -> Option<IpAddr> {
    match version {
        IP_V4 => Some(IpAddr::V4(Ipv4Addr::new(a[12], a[13], a[14], a[15]))),
        IP_V6 => Some(IpAddr::V6(Ipv6Addr::from(a))),
        _ => None,
    }
}

fn proto_name(ev: &DropEvent) -> Option<String> {
    if ev.flags & EVENT_FLAG_ARP != 0 {
        return Some("arp".to_owned());
    }
    if ev.ip_version == 0 {
        return None;
    }
    Some(match ev.l4_proto {
        1 => "icmp".to_owned(),
        6 => "tcp".to_owned(),
        17 => "udp".to_owned(),
        58 => "icmpv6".to_owned(),
        n => n.to_string(),
    })
}

impl EventView {
    #[must_use]
    pub fn new(
        ev: &DropEvent,
        bridge: &str,
        port: Option<&PortLabel>,
        rules: &BTreeMap<u32, RuleLabel>,
    ) -> Self {
        let ports = ev.flags & EVENT_FLAG_PORTS != 0;
        let time = humantime::format_rfc3339_millis(wall_time(ev.ts_ns)).to_string();
        Self {
            time,
            bridge: bridge.to_owned(),
            port: port.map_or_else(|| format!("if{}", ev.ifindex), |p| p.name.clone()),
            ifindex: ev.ifindex,
            vm: port.and_then(|p| p.vm.clone()),
            port_mac: port.and_then(|p| p.mac.clone()),
            src_mac: mac_str(ev.src_mac),
            dst_mac: mac_str(ev.dst_mac),
            vlans: ev.vlan_tci[..usize::from(ev.vlan_count.min(2))]
                .iter()
                .map(|t| t & 0x0fff)
                .collect(),
            ethertype: format!("0x{:04x}", ev.ethertype),
            src_ip: ip_of(ev.ip_version, ev.src_ip),
            dst_ip: ip_of(ev.ip_version, ev.dst_ip),
            proto: proto_name(ev),
            src_port: ports.then_some(ev.src_port),
            dst_port: ports.then_some(ev.dst_port),
            reason: reason::name(ev.reason).to_owned(),
            rule_id: ev.rule_id,
            rule: rules.get(&ev.rule_id).cloned(),
            len: ev.frame_len,
            captured: ev.cap_len,
            frame: None,
        }
    }

    /// With the captured bytes (`frame`), for the subscriber socket.
    #[must_use]
    pub fn with_frame(mut self, bytes: &[u8]) -> Self {
        use std::fmt::Write as _;
        let mut hex = String::with_capacity(bytes.len() * 2);
        for b in bytes {
            let _ = write!(hex, "{b:02x}");
        }
        self.frame = Some(hex);
        self
    }

    /// The captured bytes of `frame` (empty without, or when it is not hex).
    #[must_use]
    pub fn frame_bytes(&self) -> Vec<u8> {
        let Some(hex) = self.frame.as_deref() else {
            return Vec::new();
        };
        (0..hex.len() / 2)
            .map_while(|i| hex.get(2 * i..2 * i + 2))
            .map_while(|b| u8::from_str_radix(b, 16).ok())
            .collect()
    }

    /// The wall-clock time of `time` (now, if it does not parse).
    #[must_use]
    pub fn wall_time(&self) -> SystemTime {
        humantime::parse_rfc3339(&self.time).unwrap_or_else(|_| SystemTime::now())
    }

    /// The port as shown: `vm:port` when libvirt names the VM, else `port[mac]`.
    #[must_use]
    pub fn who(&self) -> String {
        match (&self.vm, &self.port_mac) {
            (Some(vm), _) => format!("{vm}:{}", self.port),
            (None, Some(mac)) => format!("{}[{mac}]", self.port),
            (None, None) => self.port.clone(),
        }
    }

    /// One line: time, port/VM, MACs, VLANs, src -> dst, proto/ports, reason, rule, length.
    #[must_use]
    pub fn line(&self) -> String {
        let vlans = if self.vlans.is_empty() {
            String::new()
        } else {
            let v: Vec<String> = self.vlans.iter().map(u16::to_string).collect();
            format!(" vlan {}", v.join("."))
        };
        let ep = endpoint;
        let rule = match &self.rule {
            Some(r) => format!(" rule {} {} ({})", self.rule_id, r.prefix, r.class),
            None if self.rule_id != 0 => format!(" rule {}", self.rule_id),
            None => String::new(),
        };
        format!(
            "{} {} {} > {}{vlans} {} {} > {} {} {}{rule} len {}",
            self.time,
            self.who(),
            self.src_mac,
            self.dst_mac,
            self.ethertype,
            ep(self.src_ip, self.src_port),
            ep(self.dst_ip, self.dst_port),
            self.proto.as_deref().unwrap_or("-"),
            self.reason,
            self.len
        )
    }
}

/// An endpoint as text: `addr:port`, `[addr]:port` for IPv6 (RFC 3986 brackets: the port is
/// otherwise unreadable), the address alone without a port, `-` without an address.
#[must_use]
pub fn endpoint(ip: Option<IpAddr>, port: Option<u16>) -> String {
    match (ip, port) {
        (Some(IpAddr::V6(a)), Some(p)) => format!("[{a}]:{p}"),
        (Some(a), Some(p)) => format!("{a}:{p}"),
        (Some(a), None) => a.to_string(),
        (None, _) => "-".to_owned(),
    }
}
