//! Types shared by guard's eBPF programs and its userspace.
//!
//! Everything here crosses the kernel/user boundary through BPF maps, so every type is
//! `#[repr(C)]`, `Copy`, free of implicit padding, and holds only integers and byte arrays: no
//! `bool`, `enum` or `Option` fields (a value written by one side must be a valid value on the
//! other, whatever its bits). Sizes are asserted at compile time.
//!
//! The precise datapath contract these types serve is `docs/datapath.md`.
#![no_std]

#[cfg(feature = "std")]
extern crate std;

pub mod event;
pub mod mac;
pub mod mac_addr;
#[cfg(feature = "std")]
pub mod model;
pub mod reason;

pub use mac_addr::{Mac, ParseMacError};

use core::mem::size_of;

/// Most 802.1Q/802.1ad tags the parser walks; a frame with more is malformed (rule 4).
pub const MAX_VLAN_TAGS: usize = 2;
/// Most IPv6 extension headers the parser walks before the upper layer; more is malformed.
pub const MAX_IPV6_EXT_HEADERS: usize = 6;

/// Port slots in the counter map. Slot 0 counts frames from an ingress interface that has no
/// entry in [`PORTS`](map_names::PORTS) (still enforced: unknown ports fail closed).
pub const MAX_PORT_SLOTS: u32 = 1024;
/// Counter slots per port: one per reason code, rounded up to a power of two.
pub const REASON_SLOTS: u32 = 32;
/// Entries of the port table, indexed by ingress ifindex. An array (not a hash) keeps the
/// per-frame lookup an inlined bounds check plus an add. Ports with a larger ifindex are still
/// enforced, and counted in slot 0.
pub const PORT_TABLE_SIZE: u32 = 1 << 16;
/// Entries of the rule hit-counter array; rule ids are `1..MAX_RULES` (0 means "no rule").
pub const MAX_RULES: u32 = 1 << 18;
/// Capacity of each prefix trie (IPv4 and IPv6 separately).
pub const MAX_PREFIXES: u32 = 1 << 18;

/// Map names, as the eBPF object declares them and as they are pinned.
pub mod map_names {
    pub const CONFIG: &str = "GUARD_CONFIG";
    pub const PORTS: &str = "GUARD_PORTS";
    pub const MAC_TABLE: &str = "GUARD_MAC_TABLE";
    pub const RULES_V4: &str = "GUARD_RULES_V4";
    pub const RULES_V6: &str = "GUARD_RULES_V6";
    pub const COUNTERS: &str = "GUARD_COUNTERS";
    pub const RULE_HITS: &str = "GUARD_RULE_HITS";
    /// Drop events (ring buffer of `event::DropEvent`).
    pub const EVENTS: &str = "GUARD_EVENTS";
    /// The reader lease (`event::EventReader`). Names are at most 15 bytes (`BPF_OBJ_NAME_LEN`).
    pub const EVENT_LEASE: &str = "GUARD_EV_LEASE";
    /// Per-port event-rate windows (`event::EventWindow`, by counter slot).
    pub const EVENT_RATE: &str = "GUARD_EV_RATE";
    /// Per-CPU event accounting (`event::EventStats`).
    pub const EVENT_STATS: &str = "GUARD_EV_STATS";
    /// UDP destination ports of tunnels the host may decapsulate (`PortSet`, one entry).
    pub const TUNNEL_PORTS: &str = "GUARD_TUN_PORTS";
    pub const EXCEPTIONS_V4: &str = "GUARD_EXC_V4";
    pub const EXCEPTIONS_V6: &str = "GUARD_EXC_V6";
    pub const FLOWS: &str = "GUARD_FLOWS";
    pub const FLOW_HINTS: &str = "GUARD_FLOW_HINTS";
    /// The per-CPU cache of prefix-trie answers (`VerdictCacheEntry`, by a hash of the
    /// address). Never pinned and never read by userspace: each load has its own, and an
    /// entry counts only for the [`GlobalConfig`](crate::GlobalConfig) generation it was
    /// filled in.
    pub const VERDICT_CACHE: &str = "GUARD_VCACHE";
    /// Every pinned map, in a fixed order (for pin management).
    pub const ALL: [&str; 16] = [
        CONFIG,
        PORTS,
        MAC_TABLE,
        RULES_V4,
        RULES_V6,
        COUNTERS,
        RULE_HITS,
        EVENTS,
        EVENT_LEASE,
        EVENT_RATE,
        EVENT_STATS,
        TUNNEL_PORTS,
        EXCEPTIONS_V4,
        EXCEPTIONS_V6,
        FLOWS,
        FLOW_HINTS,
    ];
}

/// Program names in the eBPF object.
pub mod program_names {
    /// A bridge port's XDP hook.
    pub const XDP: &str = "guard_xdp";
    /// A bridge port's TC ingress hook (TCX or `cls_bpf`).
    pub const TC: &str = "guard_tc";
    /// The backstop on the bridge device's own TC ingress: every frame there is host-bound,
    /// whatever its destination MAC, so it is judged without the host MAC table.
    pub const BRIDGE: &str = "guard_bridge";
    /// The bridge device's TC egress: records flows the protected side starts toward guests.
    pub const REPLY: &str = "guard_reply";
}

/// Verdicts, as the classifier reports them (the entry points map them to `XDP_*`/`TC_ACT_*`).
pub mod verdict {
    pub const PASS: u32 = 0;
    pub const DROP: u32 = 1;
}

/// Key of the IPv4 prefix trie: the layout `BPF_MAP_TYPE_LPM_TRIE` requires (prefix length in
/// host order, then the address in network order).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Lpm4Key {
    pub prefix_len: u32,
    pub addr: [u8; 4],
}

/// Key of the IPv6 prefix trie.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Lpm6Key {
    pub prefix_len: u32,
    pub addr: [u8; 16],
}

/// Rule actions. Only [`ACTION_ALLOW`] lets a frame through: any other value denies, so a
/// corrupted or future value fails closed.
pub const ACTION_DENY: u16 = 1;
pub const ACTION_ALLOW: u16 = 2;

/// Built-in rule classes; user-named classes get ids from [`CLASS_USER_FIRST`] up.
pub const CLASS_UNSPECIFIED: u16 = 0;
pub const CLASS_MANAGEMENT: u16 = 1;
pub const CLASS_STORAGE: u16 = 2;
/// A host's own address (a /32 or /128 host route in the default protected set).
pub const CLASS_HOST: u16 = 3;
/// A network the host is attached to (the default protected set), not named by the user.
pub const CLASS_HOST_NETWORK: u16 = 4;
/// A network the host routes to through one of its non-guest interfaces (a route that is not
/// an address's own prefix), in the default protected set.
pub const CLASS_HOST_ROUTE: u16 = 5;
/// A network of the guest bridge itself (its own addresses' prefixes): allowed by default.
pub const CLASS_GUEST_NETWORK: u16 = 6;
pub const CLASS_USER_FIRST: u16 = 16;

/// Value of both prefix tries.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RuleValue {
    /// Index into the rule hit-counter array, `1..MAX_RULES`.
    pub rule_id: u32,
    pub action: u16,
    pub class: u16,
}

impl RuleValue {
    #[must_use]
    pub const fn is_allow(&self) -> bool {
        self.action == ACTION_ALLOW
    }
}

/// Per-port flags.
pub const PORT_FLAG_MONITOR: u32 = 1;
/// Not a port: an interface the kernel may forward guest traffic out of (the guest bridge
/// itself and the host's uplinks). Forwarding out of any interface without this flag is
/// `reason::DENY_ROUTE`.
pub const PORT_FLAG_EGRESS_OK: u32 = 2;

/// Entry of the port table (indexed by ingress ifindex). All zero means "not registered":
/// enforced, counted in slot 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortConfig {
    /// Counter slot, `1..MAX_PORT_SLOTS`.
    pub slot: u32,
    pub flags: u32,
}

/// Global flags.
/// Only unicast host MACs count as host-bound; broadcast and multicast frames pass unjudged.
pub const GLOBAL_FLAG_STRICT_MAC: u32 = 1;
/// Count and report would-drop frames, pass them (every port).
pub const GLOBAL_FLAG_MONITOR: u32 = 2;
/// Let tunnel encapsulations addressed to the host through (no `reason::DENY_TUNNEL`).
pub const GLOBAL_FLAG_ALLOW_TUNNELS: u32 = 4;
/// The kernel reports the egress interface without a neighbour entry
/// (`BPF_FIB_LOOKUP_SKIP_NEIGH`, Linux 6.3): the route check passes it. Without it (older
/// kernels) a route whose next hop has no valid neighbour entry gives no egress interface and
/// the route check cannot judge it (the prefix rules still do).
pub const GLOBAL_FLAG_FIB_SKIP_NEIGH: u32 = 8;
/// Judge by prefix rules only: no `bpf_fib_lookup` (no `DENY_ROUTE`/`DENY_LOCAL`, and tunnel
/// encapsulations are judged whatever their destination).
pub const GLOBAL_FLAG_NO_ROUTE_CHECK: u32 = 16;
/// Exceptions are installed (`GUARD_EXC_V4`/`V6` hold entries): an IP packet denied by a
/// prefix or the route check is looked up there before it is dropped.
pub const GLOBAL_FLAG_EXCEPTIONS: u32 = 32;
/// Replies to flows the protected side started pass (`GUARD_FLOWS`, filled by `guard_reply`).
pub const GLOBAL_FLAG_REPLIES: u32 = 64;

/// The single entry of the global configuration array. All zero is the strictest reading:
/// route check on, no tunnels, and (with no bridge ifindex) every route lookup fails, which
/// drops every host-bound IP packet without an allow rule.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GlobalConfig {
    pub flags: u32,
    /// Most drop events per second per port (`event::DEFAULT_EVENT_RATE` unless configured);
    /// 0: no events at all, whether a reader is attached or not.
    pub event_rate: u32,
    /// The guest bridge: the input device of the route check (where the host stack receives
    /// what the bridge passes up).
    pub bridge_ifindex: u32,
    /// Bumped (wrapping) after every write to the prefix tries: the datapath's per-CPU
    /// verdict cache ([`map_names::VERDICT_CACHE`]) holds an entry only for the generation it
    /// was filled in. Writers of the configuration keep the current value.
    pub generation: u32,
}

/// Slots of the per-CPU verdict cache (a power of two): 256 x 32 bytes per CPU.
pub const VERDICT_CACHE_SLOTS: u32 = 256;

/// Entries of each exception trie.
pub const MAX_EXCEPTIONS: u32 = 4096;

/// Scope of an exception that holds on every port (and on the bridge's backstop).
pub const SCOPE_ALL: u32 = 0;

/// Bits of an exception key before the address: scope, protocol, padding and port are always
/// matched whole, the address by prefix.
pub const EXCEPTION_FIXED_BITS: u32 = 64;

/// The data of an IPv4 exception key: who (`scope`: the ingress ifindex, or [`SCOPE_ALL`]),
/// what (`proto`, 0 for any; `dport` in network order, 0 for any) and where (`addr`, by
/// prefix). The prefix length of a key is [`EXCEPTION_FIXED_BITS`] plus the address prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Exception4 {
    pub scope: u32,
    pub proto: u8,
    pub pad: u8,
    pub dport: [u8; 2],
    pub addr: [u8; 4],
}

/// The data of an IPv6 exception key (as [`Exception4`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Exception6 {
    pub scope: u32,
    pub proto: u8,
    pub pad: u8,
    pub dport: [u8; 2],
    pub addr: [u8; 16],
}

/// Entries of the flow table of replies.
pub const MAX_FLOWS: u32 = 1 << 16;

/// A flow the protected side started toward a guest, keyed as the guest's reply sees it:
/// `guest` sends from `guest_port` to `peer` at `peer_port`. ICMP echo: `guest_port` is the
/// echo identifier, `peer_port` 0. IPv4 addresses in word 0 (the others zero).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub guest: [u32; 4],
    pub peer: [u32; 4],
    pub guest_port: u16,
    pub peer_port: u16,
    pub proto: u8,
    pub family: u8,
    pub pad: [u8; 2],
}

/// Slots of the flow hints (`GUARD_FLOW_HINTS`): one per hash of a flow's two addresses, set
/// (never cleared) when a flow between them is recorded. A guest's packet whose slot is unset
/// is no reply, without the flow-table lookup (a flood of denied packets pays one array read).
pub const FLOW_HINT_SLOTS: u32 = 1 << 16;

/// The hint slot of `key`'s address pair (the same on both sides of the map).
#[inline(always)]
#[must_use]
pub const fn flow_hint_slot(key: &FlowKey) -> u32 {
    let g = key.guest[0] ^ key.guest[1] ^ key.guest[2] ^ key.guest[3];
    let p = key.peer[0] ^ key.peer[1] ^ key.peer[2] ^ key.peer[3];
    (g.wrapping_mul(0x9e37_79b1) ^ p).wrapping_mul(0x85eb_ca6b) >> 16
}

/// When a flow was last seen (`bpf_ktime_get_ns`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowValue {
    pub seen_ns: u64,
}

/// How long a flow stays open without traffic: TCP (refreshed by every reply), UDP and ICMP
/// echo (refreshed by the protected side's packets and by replies).
pub const FLOW_IDLE_TCP_NS: u64 = 3_600_000_000_000;
pub const FLOW_IDLE_UDP_NS: u64 = 180_000_000_000;
pub const FLOW_IDLE_ICMP_NS: u64 = 30_000_000_000;
/// The protected side's packets refresh a UDP or ICMP flow only when it is older than this
/// (a lookup, not a write, per packet).
pub const FLOW_REFRESH_NS: u64 = 1_000_000_000;

/// One slot of the per-CPU verdict cache: the longest-prefix answer of one address.
/// `seq` is a sequence count (odd while the slot is written), so a program run that nests on
/// the same CPU (a softirq interrupting `BPF_PROG_TEST_RUN`) never reads or writes a slot
/// that is half written.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VerdictCacheEntry {
    pub seq: u32,
    /// `generation << 2 | is_ipv6 << 1 | 1` (bit 0: filled). The generation's top two bits are
    /// shifted out: a slot that no frame rewrote while the policy changed 2^30 times could
    /// answer again under the later generation with the same low bits (a bound, not a case:
    /// every change is a map write from userspace, and any frame whose address hashes to
    /// the slot rewrites it).
    pub tag: u32,
    /// The address, IPv4 in word 0 (the others zero).
    pub addr: [u32; 4],
    /// The rule kind (none, allow, deny) and deny rule id.
    pub kind: u32,
    pub rule_id: u32,
}

/// A set of UDP ports, one bit each (`bits[port / 64] >> (port % 64) & 1`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortSet {
    pub bits: [u64; 1024],
}

impl PortSet {
    #[must_use]
    pub const fn new() -> Self {
        Self { bits: [0; 1024] }
    }

    pub const fn insert(&mut self, port: u16) {
        self.bits[(port >> 6) as usize] |= 1 << (port & 63);
    }

    #[inline(always)]
    #[must_use]
    pub const fn contains(&self, port: u16) -> bool {
        self.bits[(port >> 6) as usize] >> (port & 63) & 1 != 0
    }

    /// The ports in the set, ascending.
    pub fn ports(&self) -> impl Iterator<Item = u16> + '_ {
        (0..=u16::MAX).filter(|p| self.contains(*p))
    }
}

impl Default for PortSet {
    fn default() -> Self {
        Self::new()
    }
}

/// UDP ports of tunnels a host may decapsulate, in every default tunnel set: L2TP (1701),
/// GTP-U (2152), GRE-in-UDP (4754), VXLAN (4789, and Linux's historical default 8472),
/// VXLAN-GPE (4790), GENEVE (6081), MPLS-in-UDP (6635).
pub const DEFAULT_TUNNEL_PORTS: [u16; 8] = [1701, 2152, 4754, 4789, 4790, 6081, 6635, 8472];

/// IP protocols that are tunnel encapsulations the host decapsulates when it has the device:
/// IPIP (4), IPv6 in IPv4, SIT (41), GRE (47), ETHERIP (97), L2TP version 3 (115), MPLS-in-IP (137).
pub const TUNNEL_PROTOCOLS: [u8; 6] = [4, 41, 47, 97, 115, 137];

/// A per-CPU counter slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// Index of a (port slot, reason) pair in the counter array.
#[inline(always)]
#[must_use]
pub const fn counter_index(slot: u32, reason: u32) -> u32 {
    slot.wrapping_mul(REASON_SLOTS).wrapping_add(reason)
}

const _: () = assert!(size_of::<Lpm4Key>() == 8);
const _: () = assert!(size_of::<Lpm6Key>() == 20);
const _: () = assert!(size_of::<RuleValue>() == 8);
const _: () = assert!(size_of::<PortConfig>() == 8);
const _: () = assert!(size_of::<GlobalConfig>() == 16);
const _: () = assert!(size_of::<PortSet>() == 8192);
const _: () = assert!(size_of::<Counter>() == 16);
const _: () = assert!(size_of::<Exception4>() == 12);
const _: () = assert!(size_of::<Exception6>() == 24);
const _: () = assert!(size_of::<FlowKey>() == 40);
const _: () = assert!(FLOW_HINT_SLOTS == 1 << 16);
const _: () = assert!(MAX_PORT_SLOTS.is_power_of_two() && REASON_SLOTS.is_power_of_two());
const _: () = assert!(reason::COUNT <= REASON_SLOTS);

#[cfg(feature = "user")]
mod pod {
    // SAFETY (all impls): `#[repr(C)]`, `Copy`, only integer and byte-array fields, no padding
    // (the size assertions above pin the layouts), so every bit pattern is a valid value.
    unsafe impl aya::Pod for super::Lpm4Key {}
    unsafe impl aya::Pod for super::Lpm6Key {}
    unsafe impl aya::Pod for super::RuleValue {}
    unsafe impl aya::Pod for super::PortConfig {}
    unsafe impl aya::Pod for super::GlobalConfig {}
    unsafe impl aya::Pod for super::Counter {}
    unsafe impl aya::Pod for super::PortSet {}
    unsafe impl aya::Pod for super::Exception4 {}
    unsafe impl aya::Pod for super::Exception6 {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowValue {}
    unsafe impl aya::Pod for super::mac::MacTable {}
    unsafe impl aya::Pod for super::event::DropEvent {}
    unsafe impl aya::Pod for super::event::EventReader {}
    unsafe impl aya::Pod for super::event::EventWindow {}
    unsafe impl aya::Pod for super::event::EventStats {}
}
