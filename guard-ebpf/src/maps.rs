//! The maps. Names and value types come from guard-common, so userspace cannot disagree.
//!
//! Maps are declared unpinned: userspace chooses where they live (`EbpfLoader::map_pin_path`
//! under `/sys/fs/bpf/guard/...` for an attached bridge, nowhere for a test run).

use aya_ebpf::{
    macros::map,
    maps::{Array, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use guard_common::{
    Counter, Exception4, Exception6, FLOW_HINT_SLOTS, FlowKey, FlowValue, GlobalConfig,
    MAX_EXCEPTIONS, MAX_FLOWS, MAX_PORT_SLOTS, MAX_PREFIXES, MAX_RULES, PORT_TABLE_SIZE,
    PortConfig, PortSet, REASON_SLOTS, RuleValue, VERDICT_CACHE_SLOTS, VerdictCacheEntry,
    event::{EVENT_RING_BYTES, EventReader, EventStats, EventWindow},
    mac::MacTable,
};

/// Global flags (one entry).
#[map(name = "GUARD_CONFIG")]
pub static CONFIG: Array<GlobalConfig> = Array::with_max_entries(1, 0);

/// Port table, indexed by ifindex: the ports (and the bridge) a program runs on, with their
/// counter slot; and the interfaces the route check lets the kernel forward to
/// (`PORT_FLAG_EGRESS_OK`).
#[map(name = "GUARD_PORTS")]
pub static PORTS: Array<PortConfig> = Array::with_max_entries(PORT_TABLE_SIZE, 0);

/// The host MAC set (one entry; see `guard_common::mac`).
#[map(name = "GUARD_MAC_TABLE")]
pub static MAC_TABLE: Array<MacTable> = Array::with_max_entries(1, 0);

/// Protected and allowed IPv4 prefixes (address in network order).
#[map(name = "GUARD_RULES_V4")]
pub static RULES_V4: LpmTrie<[u8; 4], RuleValue> = LpmTrie::with_max_entries(MAX_PREFIXES, 0);

/// Protected and allowed IPv6 prefixes.
#[map(name = "GUARD_RULES_V6")]
pub static RULES_V6: LpmTrie<[u8; 16], RuleValue> = LpmTrie::with_max_entries(MAX_PREFIXES, 0);

/// Per-CPU (port slot, reason) counters.
#[map(name = "GUARD_COUNTERS")]
pub static COUNTERS: PerCpuArray<Counter> =
    PerCpuArray::with_max_entries(MAX_PORT_SLOTS * REASON_SLOTS, 0);

/// Deny-rule hit counters, indexed by rule id. Shared across CPUs (one atomic add on the drop
/// path only): a per-CPU array of `MAX_RULES` would cost 2 MiB per CPU.
#[map(name = "GUARD_RULE_HITS")]
pub static RULE_HITS: Array<u64> = Array::with_max_entries(MAX_RULES, 0);

/// Drop events (`guard_common::event::DropEvent`), for `guardctl events`/`top`/`run --metrics`.
#[map(name = "GUARD_EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENT_RING_BYTES, 0);

/// The reader lease (one entry): events are made only while it runs.
#[map(name = "GUARD_EV_LEASE")]
pub static EVENT_LEASE: Array<EventReader> = Array::with_max_entries(1, 0);

/// Per-port event-rate windows, by counter slot. Shared, not per-CPU: the limit is per port,
/// whichever CPUs its frames arrive on.
#[map(name = "GUARD_EV_RATE")]
pub static EVENT_RATE: Array<EventWindow> = Array::with_max_entries(MAX_PORT_SLOTS, 0);

/// Events sampled, suppressed by the rate limit, lost to a full ring (one per-CPU entry).
#[map(name = "GUARD_EV_STATS")]
pub static EVENT_STATS: PerCpuArray<EventStats> = PerCpuArray::with_max_entries(1, 0);

/// UDP ports of tunnels the host may decapsulate (one entry).
#[map(name = "GUARD_TUN_PORTS")]
pub static TUNNEL_PORTS: Array<PortSet> = Array::with_max_entries(1, 0);

/// The per-CPU cache of prefix-trie answers (`policy::cached`): not pinned, one per load.
#[map(name = "GUARD_VCACHE")]
pub static VERDICT_CACHE: PerCpuArray<VerdictCacheEntry> =
    PerCpuArray::with_max_entries(VERDICT_CACHE_SLOTS, 0);

/// IPv4 exceptions: allow rules scoped to a port (or all) with a protocol and destination
/// port (`guard_common::Exception4`), asked only for packets a prefix or the route check
/// denies.
#[map(name = "GUARD_EXC_V4")]
pub static EXCEPTIONS_V4: LpmTrie<Exception4, RuleValue> =
    LpmTrie::with_max_entries(MAX_EXCEPTIONS, 0);

/// IPv6 exceptions.
#[map(name = "GUARD_EXC_V6")]
pub static EXCEPTIONS_V6: LpmTrie<Exception6, RuleValue> =
    LpmTrie::with_max_entries(MAX_EXCEPTIONS, 0);

/// Flows the protected side started toward guests (`guard_reply`), keyed as their replies
/// look. Least recently used entries make room.
#[map(name = "GUARD_FLOWS")]
pub static FLOWS: LruHashMap<FlowKey, FlowValue> = LruHashMap::with_max_entries(MAX_FLOWS, 0);

/// Flow hints (`guard_common::flow_hint_slot`): 1 where `guard_reply` recorded a flow between
/// the slot's addresses. Pinned with `GUARD_FLOWS`, which it summarises.
#[map(name = "GUARD_FLOW_HINTS")]
pub static FLOW_HINTS: Array<u32> = Array::with_max_entries(FLOW_HINT_SLOTS, 0);
