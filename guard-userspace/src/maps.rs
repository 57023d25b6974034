//! Typed access to guard's maps, whether just loaded or opened from their pins.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::Path,
};

use aya::{
    Ebpf,
    maps::{Array, LpmTrie, Map, MapData, PerCpuArray, lpm_trie::Key},
};
use guard_common::{
    Counter, Exception4, Exception6, GLOBAL_FLAG_EXCEPTIONS, GlobalConfig, MAX_PORT_SLOTS, Mac,
    PORT_TABLE_SIZE, PortConfig, PortSet, REASON_SLOTS, RuleValue, counter_index,
    event::{EventReader, EventStats},
    mac::{InsertError, MAC_TABLE_MAX_ENTRIES, MacTable},
    map_names,
};
use ipnet::IpNet;

use crate::{
    error::{GuardError, Result},
    exception::{ExcKey, ExcOp},
    pins::Location,
    policy::{Classes, Op, Policy, plan_reserving},
};

/// All of guard's maps.
pub struct GuardMaps {
    pub config: Array<MapData, GlobalConfig>,
    pub ports: Array<MapData, PortConfig>,
    pub mac_table: Array<MapData, MacTable>,
    pub rules_v4: LpmTrie<MapData, [u8; 4], RuleValue>,
    pub rules_v6: LpmTrie<MapData, [u8; 16], RuleValue>,
    pub counters: PerCpuArray<MapData, Counter>,
    pub rule_hits: Array<MapData, u64>,
    pub event_lease: Array<MapData, EventReader>,
    pub event_stats: PerCpuArray<MapData, EventStats>,
    pub tunnel_ports: Array<MapData, PortSet>,
    pub exceptions_v4: LpmTrie<MapData, Exception4, RuleValue>,
    pub exceptions_v6: LpmTrie<MapData, Exception6, RuleValue>,
}

fn typed<T>(name: &'static str, map: Map) -> Result<T>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    T::try_from(map).map_err(|e| GuardError::map(name, e))
}

impl GuardMaps {
    /// Takes the maps out of a loaded object (its programs keep using them).
    pub fn from_ebpf(ebpf: &mut Ebpf) -> Result<Self> {
        Self::with(|name| {
            ebpf.take_map(name).ok_or_else(|| {
                GuardError::map(
                    name,
                    aya::maps::MapError::InvalidName {
                        name: name.to_owned(),
                    },
                )
            })
        })
    }

    /// Opens the maps pinned for an attached bridge. Fails with a clear message when they were
    /// pinned by a guard whose map layout differs (`attach` upgrades them in place).
    pub fn open(loc: &Location) -> Result<Self> {
        if loc.is_attached() {
            crate::layout::check(loc, crate::EBPF_OBJECT)?;
        }
        Self::with(|name| {
            let path = loc.map_pin(name);
            let data = MapData::from_pin(&path).map_err(|e| pin_error(loc, name, &path, e))?;
            Map::from_map_data(data).map_err(|e| GuardError::map(name, e))
        })
    }

    /// Builds the typed maps from `map`, which yields each map by its name.
    fn with(mut map: impl FnMut(&'static str) -> Result<Map>) -> Result<Self> {
        Ok(Self {
            config: typed(map_names::CONFIG, map(map_names::CONFIG)?)?,
            ports: typed(map_names::PORTS, map(map_names::PORTS)?)?,
            mac_table: typed(map_names::MAC_TABLE, map(map_names::MAC_TABLE)?)?,
            rules_v4: typed(map_names::RULES_V4, map(map_names::RULES_V4)?)?,
            rules_v6: typed(map_names::RULES_V6, map(map_names::RULES_V6)?)?,
            counters: typed(map_names::COUNTERS, map(map_names::COUNTERS)?)?,
            rule_hits: typed(map_names::RULE_HITS, map(map_names::RULE_HITS)?)?,
            event_lease: typed(map_names::EVENT_LEASE, map(map_names::EVENT_LEASE)?)?,
            event_stats: typed(map_names::EVENT_STATS, map(map_names::EVENT_STATS)?)?,
            tunnel_ports: typed(map_names::TUNNEL_PORTS, map(map_names::TUNNEL_PORTS)?)?,
            exceptions_v4: typed(map_names::EXCEPTIONS_V4, map(map_names::EXCEPTIONS_V4)?)?,
            exceptions_v6: typed(map_names::EXCEPTIONS_V6, map(map_names::EXCEPTIONS_V6)?)?,
        })
    }

    pub fn config(&self) -> Result<GlobalConfig> {
        self.config
            .get(&0, 0)
            .map_err(|e| GuardError::map(map_names::CONFIG, e))
    }

    /// Writes the configuration, keeping the current policy generation (which only
    /// [`apply`](Self::apply) moves): `cfg.generation` is ignored.
    pub fn set_config(&mut self, cfg: GlobalConfig) -> Result<()> {
        let generation = self.config()?.generation;
        self.config
            .set(0, GlobalConfig { generation, ..cfg }, 0)
            .map_err(|e| GuardError::map(map_names::CONFIG, e))
    }

    /// Moves the policy generation on, after a trie write: the datapath's per-CPU verdict
    /// caches then answer nothing they kept under the old policy. A frame judged during the
    /// write may still keep an answer, but under the generation it read, which is over now.
    fn bump_generation(&mut self) -> Result<()> {
        let cfg = self.config()?;
        self.config
            .set(
                0,
                GlobalConfig {
                    generation: cfg.generation.wrapping_add(1),
                    ..cfg
                },
                0,
            )
            .map_err(|e| GuardError::map(map_names::CONFIG, e))
    }

    /// Holds (or, with 0, gives up) the event reader lease: the datapath makes events while
    /// `bpf_ktime_get_ns()` is below `until_ns`. Only readers write this entry, never the
    /// agent's configuration writes, so a reader cannot race a policy change.
    pub fn set_event_lease(&mut self, until_ns: u64) -> Result<()> {
        self.event_lease
            .set(0, EventReader { until_ns }, 0)
            .map_err(|e| GuardError::map(map_names::EVENT_LEASE, e))
    }

    /// Event accounting, summed over CPUs.
    pub fn event_stats(&self) -> Result<EventStats> {
        let per_cpu = self
            .event_stats
            .get(&0, 0)
            .map_err(|e| GuardError::map(map_names::EVENT_STATS, e))?;
        let mut sum = EventStats::default();
        for s in per_cpu.iter() {
            sum.sampled += s.sampled;
            sum.suppressed += s.suppressed;
            sum.lost += s.lost;
        }
        Ok(sum)
    }

    pub fn port(&self, ifindex: u32) -> Result<PortConfig> {
        if ifindex >= PORT_TABLE_SIZE {
            return Ok(PortConfig::default());
        }
        self.ports
            .get(&ifindex, 0)
            .map_err(|e| GuardError::map(map_names::PORTS, e))
    }

    /// Registers a port (its counter slot and flags). Ports whose ifindex does not fit the
    /// table are still enforced by the program, and counted in slot 0.
    pub fn set_port(&mut self, ifindex: u32, port: PortConfig) -> Result<bool> {
        if ifindex >= PORT_TABLE_SIZE {
            return Ok(false);
        }
        self.ports
            .set(ifindex, port, 0)
            .map_err(|e| GuardError::map(map_names::PORTS, e))?;
        Ok(true)
    }

    pub fn clear_port(&mut self, ifindex: u32) -> Result<()> {
        self.set_port(ifindex, PortConfig::default()).map(|_| ())
    }

    /// The UDP tunnel ports (8 KiB: boxed).
    pub fn tunnel_ports(&self) -> Result<Box<PortSet>> {
        self.tunnel_ports
            .get(&0, 0)
            .map(Box::new)
            .map_err(|e| GuardError::map(map_names::TUNNEL_PORTS, e))
    }

    /// Replaces the tunnel port set in one map update (a reader sees the old or the new set).
    pub fn set_tunnel_ports(&mut self, set: &PortSet) -> Result<()> {
        self.tunnel_ports
            .set(0, *set, 0)
            .map_err(|e| GuardError::map(map_names::TUNNEL_PORTS, e))
    }

    pub fn mac_table(&self) -> Result<MacTable> {
        self.mac_table
            .get(&0, 0)
            .map_err(|e| GuardError::map(map_names::MAC_TABLE, e))
    }

    /// Makes the host MAC set equal to `macs`, by removing and inserting single entries in the
    /// live table (see `guard_common::mac` for why that is safe while programs read it).
    pub fn set_host_macs(&mut self, macs: &BTreeSet<Mac>) -> Result<()> {
        if macs.len() > MAC_TABLE_MAX_ENTRIES {
            return Err(GuardError::MacTableFull(MAC_TABLE_MAX_ENTRIES));
        }
        let mut table = Box::new(self.mac_table()?);
        let present: BTreeSet<Mac> = table.macs().map(Mac).collect();
        if &present == macs {
            return Ok(());
        }
        // Insert first: a MAC that moves is never absent.
        for mac in macs.difference(&present) {
            table
                .insert(mac.octets())
                .map_err(|InsertError::Full| GuardError::MacTableFull(MAC_TABLE_MAX_ENTRIES))?;
        }
        for mac in present.difference(macs) {
            table.remove(mac.octets());
        }
        self.mac_table
            .set(0, *table, 0)
            .map_err(|e| GuardError::map(map_names::MAC_TABLE, e))
    }

    /// The live prefix entries of both tries.
    pub fn rules(&self) -> Result<BTreeMap<IpNet, RuleValue>> {
        let mut out = BTreeMap::new();
        for item in &self.rules_v4 {
            let (k, v) = item.map_err(|e| GuardError::map(map_names::RULES_V4, e))?;
            let net = IpNet::new(IpAddr::from(k.data()), k.prefix_len() as u8).map_err(|e| {
                GuardError::Policy(format!("bad key in {}: {e}", map_names::RULES_V4))
            })?;
            out.insert(net, v);
        }
        for item in &self.rules_v6 {
            let (k, v) = item.map_err(|e| GuardError::map(map_names::RULES_V6, e))?;
            let net = IpNet::new(IpAddr::from(k.data()), k.prefix_len() as u8).map_err(|e| {
                GuardError::Policy(format!("bad key in {}: {e}", map_names::RULES_V6))
            })?;
            out.insert(net, v);
        }
        Ok(out)
    }

    /// Applies `ops` in order (see [`plan`] for why the order matters), then moves the policy
    /// generation on. A failed write still moves it: the tries changed up to the failure.
    pub fn apply(&mut self, ops: &[Op]) -> Result<()> {
        if ops.is_empty() {
            return Ok(());
        }
        let written = self.write_ops(ops);
        // The bump also after a failed write, and the write's error first.
        let bumped = self.bump_generation();
        written.and(bumped)
    }

    fn write_ops(&mut self, ops: &[Op]) -> Result<()> {
        for op in ops {
            match *op {
                Op::Upsert(IpNet::V4(n), v) => self
                    .rules_v4
                    .insert(
                        &Key::new(u32::from(n.prefix_len()), n.addr().octets()),
                        v,
                        0,
                    )
                    .map_err(|e| GuardError::map(map_names::RULES_V4, e))?,
                Op::Upsert(IpNet::V6(n), v) => self
                    .rules_v6
                    .insert(
                        &Key::new(u32::from(n.prefix_len()), n.addr().octets()),
                        v,
                        0,
                    )
                    .map_err(|e| GuardError::map(map_names::RULES_V6, e))?,
                Op::Delete(IpNet::V4(n)) => self
                    .rules_v4
                    .remove(&Key::new(u32::from(n.prefix_len()), n.addr().octets()))
                    .map_err(|e| GuardError::map(map_names::RULES_V4, e))?,
                Op::Delete(IpNet::V6(n)) => self
                    .rules_v6
                    .remove(&Key::new(u32::from(n.prefix_len()), n.addr().octets()))
                    .map_err(|e| GuardError::map(map_names::RULES_V6, e))?,
            }
        }
        Ok(())
    }

    /// Makes the tries hold `policy`, without a window. Returns the number of map writes.
    /// New rule ids avoid those of the exceptions in force (they share the hit counters).
    pub fn set_policy(&mut self, policy: &Policy, classes: &mut Classes) -> Result<usize> {
        let current = self.rules()?;
        let reserved: BTreeSet<u32> = self.exceptions()?.values().map(|v| v.rule_id).collect();
        let ops = plan_reserving(&current, policy, classes, &reserved)?;
        let old_ids: BTreeSet<u32> = current.values().map(|v| v.rule_id).collect();
        for op in &ops {
            // A freshly allocated id may have hits left from a rule deleted earlier.
            if let Op::Upsert(_, v) = op
                && !old_ids.contains(&v.rule_id)
            {
                self.reset_rule_hits(v.rule_id)?;
            }
        }
        self.apply(&ops)?;
        Ok(ops.len())
    }

    /// The live entries of both exception tries.
    pub fn exceptions(&self) -> Result<BTreeMap<ExcKey, RuleValue>> {
        let bad = |name: &str, e: ipnet::PrefixLenError| {
            GuardError::Policy(format!("bad key in {name}: {e}"))
        };
        let addr_len = |k: u32| k.saturating_sub(guard_common::EXCEPTION_FIXED_BITS) as u8;
        let mut out = BTreeMap::new();
        for item in &self.exceptions_v4 {
            let (k, v) = item.map_err(|e| GuardError::map(map_names::EXCEPTIONS_V4, e))?;
            let d = k.data();
            let net = IpNet::new(IpAddr::from(d.addr), addr_len(k.prefix_len()))
                .map_err(|e| bad(map_names::EXCEPTIONS_V4, e))?;
            let key = ExcKey {
                scope: d.scope,
                proto: d.proto,
                dport: u16::from_be_bytes(d.dport),
                net,
            };
            out.insert(key, v);
        }
        for item in &self.exceptions_v6 {
            let (k, v) = item.map_err(|e| GuardError::map(map_names::EXCEPTIONS_V6, e))?;
            let d = k.data();
            let net = IpNet::new(IpAddr::from(d.addr), addr_len(k.prefix_len()))
                .map_err(|e| bad(map_names::EXCEPTIONS_V6, e))?;
            let key = ExcKey {
                scope: d.scope,
                proto: d.proto,
                dport: u16::from_be_bytes(d.dport),
                net,
            };
            out.insert(key, v);
        }
        Ok(out)
    }

    /// Makes the exception tries hold `desired` (see `exception::plan`: new entries before
    /// stale ones go), moves the generation on as [`apply`](Self::apply) does, and sets
    /// `GLOBAL_FLAG_EXCEPTIONS` exactly when an entry is installed (turned on after the
    /// entries are in, off before the last ones go). Returns the number of trie writes.
    pub fn set_exceptions(&mut self, desired: &BTreeMap<ExcKey, RuleValue>) -> Result<usize> {
        let current = self.exceptions()?;
        let ops = crate::exception::plan(&current, desired);
        if desired.is_empty() {
            self.set_exception_flag(false)?;
        }
        let written = self.write_exception_ops(&ops);
        let bumped = if ops.is_empty() {
            Ok(())
        } else {
            self.bump_generation()
        };
        written.and(bumped)?;
        if !desired.is_empty() {
            self.set_exception_flag(true)?;
        }
        Ok(ops.len())
    }

    fn set_exception_flag(&mut self, on: bool) -> Result<()> {
        let cfg = self.config()?;
        let flags = if on {
            cfg.flags | GLOBAL_FLAG_EXCEPTIONS
        } else {
            cfg.flags & !GLOBAL_FLAG_EXCEPTIONS
        };
        if flags != cfg.flags {
            self.set_config(GlobalConfig { flags, ..cfg })?;
        }
        Ok(())
    }

    fn write_exception_ops(&mut self, ops: &[ExcOp]) -> Result<()> {
        let e4 = |e| GuardError::map(map_names::EXCEPTIONS_V4, e);
        let e6 = |e| GuardError::map(map_names::EXCEPTIONS_V6, e);
        for op in ops {
            match op {
                ExcOp::Upsert(k, v) => {
                    if let Some(d) = k.v4() {
                        self.exceptions_v4
                            .insert(&Key::new(k.prefix_len(), d), *v, 0)
                            .map_err(e4)?;
                    } else if let Some(d) = k.v6() {
                        self.exceptions_v6
                            .insert(&Key::new(k.prefix_len(), d), *v, 0)
                            .map_err(e6)?;
                    }
                }
                ExcOp::Delete(k) => {
                    if let Some(d) = k.v4() {
                        self.exceptions_v4
                            .remove(&Key::new(k.prefix_len(), d))
                            .map_err(e4)?;
                    } else if let Some(d) = k.v6() {
                        self.exceptions_v6
                            .remove(&Key::new(k.prefix_len(), d))
                            .map_err(e6)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Counters of the given port slots, summed over CPUs: `slot -> [Counter; REASON_SLOTS]`.
    pub fn counters(
        &self,
        slots: &[u32],
    ) -> Result<BTreeMap<u32, [Counter; REASON_SLOTS as usize]>> {
        let mut out = BTreeMap::new();
        for &slot in slots {
            if slot >= MAX_PORT_SLOTS {
                continue;
            }
            let mut row = [Counter::default(); REASON_SLOTS as usize];
            for (reason, cell) in (0..REASON_SLOTS).zip(row.iter_mut()) {
                let per_cpu = self
                    .counters
                    .get(&counter_index(slot, reason), 0)
                    .map_err(|e| GuardError::map(map_names::COUNTERS, e))?;
                for c in per_cpu.iter() {
                    cell.packets += c.packets;
                    cell.bytes += c.bytes;
                }
            }
            out.insert(slot, row);
        }
        Ok(out)
    }

    /// Zeroes a port slot's counters (a slot handed to a new port starts from zero).
    pub fn reset_counters(&mut self, slot: u32) -> Result<()> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| GuardError::Bpffs {
            path: "/sys/devices/system/cpu/possible".into(),
            source: e,
        })?;
        for reason in 0..REASON_SLOTS {
            let zeros = aya::maps::PerCpuValues::try_from(vec![Counter::default(); cpus])
                .map_err(|e| GuardError::Policy(format!("per-cpu values: {e}")))?;
            self.counters
                .set(counter_index(slot, reason), zeros, 0)
                .map_err(|e| GuardError::map(map_names::COUNTERS, e))?;
        }
        Ok(())
    }

    pub fn rule_hits(&self, rule_id: u32) -> Result<u64> {
        self.rule_hits
            .get(&rule_id, 0)
            .map_err(|e| GuardError::map(map_names::RULE_HITS, e))
    }

    pub fn reset_rule_hits(&mut self, rule_id: u32) -> Result<()> {
        self.rule_hits
            .set(rule_id, 0, 0)
            .map_err(|e| GuardError::map(map_names::RULE_HITS, e))
    }
}

fn pin_error(
    loc: &Location,
    name: &'static str,
    path: &Path,
    e: aya::maps::MapError,
) -> GuardError {
    if loc.is_attached() {
        log::debug!("opening {}: {e}", path.display());
        GuardError::map(name, e)
    } else {
        GuardError::NotAttached(loc.bridge.clone())
    }
}
