//! Reading the counters: per port and reason, totals, rule hits.

use std::collections::BTreeMap;

use guard_common::{Counter, reason};
use serde::Serialize;

use crate::{error::Result, maps::GuardMaps, pins::Location, policy::Action, state::State};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Count {
    pub packets: u64,
    pub bytes: u64,
}

impl Count {
    fn add(&mut self, c: Count) {
        self.packets += c.packets;
        self.bytes += c.bytes;
    }
}

impl From<Counter> for Count {
    fn from(c: Counter) -> Self {
        Self {
            packets: c.packets,
            bytes: c.bytes,
        }
    }
}

/// Counters of one port: every reason by its stable name.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PortStats {
    pub name: String,
    pub ifindex: u32,
    pub slot: u32,
    pub mode: String,
    pub reasons: BTreeMap<&'static str, Count>,
    /// Sum of the drop reasons (enforced drops).
    pub dropped: Count,
    /// Sum of the monitor reasons (would-drop, passed).
    pub monitored: Count,
}

#[derive(Clone, Debug, Serialize)]
pub struct RuleHits {
    pub prefix: String,
    pub action: Action,
    pub class: String,
    pub rule_id: u32,
    pub hits: u64,
}

/// Drop-event accounting of a bridge (see `guard_common::event::EventStats`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EventCounts {
    /// Events written to the ring buffer.
    pub sampled: u64,
    /// Events over the per-port rate (not written).
    pub suppressed: u64,
    /// Events that found the ring buffer full.
    pub lost: u64,
    /// The configured events per second per port (0: off).
    pub rate_limit: u32,
}

#[derive(Clone, Debug, Serialize)]
pub struct BridgeStats {
    pub bridge: String,
    pub netns: Option<String>,
    pub ports: Vec<PortStats>,
    /// Frames from interfaces without a port entry (counted in slot 0; still enforced).
    pub unregistered: PortStats,
    pub totals: PortStats,
    pub rules: Vec<RuleHits>,
    pub events: EventCounts,
}

fn port_stats(name: String, ifindex: u32, slot: u32, mode: String, row: &[Counter]) -> PortStats {
    let mut p = PortStats {
        name,
        ifindex,
        slot,
        mode,
        ..PortStats::default()
    };
    for r in 0..reason::COUNT {
        let c = Count::from(row[r as usize]);
        p.reasons.insert(reason::name(r), c);
        if reason::is_drop(r) {
            p.dropped.add(c);
        } else if reason::is_monitor(r) {
            // Not `>= MONITOR_IPV4`: `exception` and `reply` come after the monitor codes
            // and are passes, not would-drops.
            p.monitored.add(c);
        }
    }
    p
}

pub fn collect(loc: &Location) -> Result<BridgeStats> {
    let maps = GuardMaps::open(loc)?;
    let state = State::load(loc)?.unwrap_or_default();
    let mut slots: Vec<u32> = state.ports.values().map(|p| p.slot).collect();
    slots.push(0);
    let rows = maps.counters(&slots)?;
    let empty = [Counter::default(); guard_common::REASON_SLOTS as usize];
    let mut ports = Vec::new();
    for (ifindex, p) in &state.ports {
        let row = rows.get(&p.slot).unwrap_or(&empty);
        ports.push(port_stats(
            p.name.clone(),
            *ifindex,
            p.slot,
            p.mode.to_string(),
            row,
        ));
    }
    let unregistered = port_stats(
        "(unregistered)".to_owned(),
        0,
        0,
        String::new(),
        rows.get(&0).unwrap_or(&empty),
    );
    let mut totals = PortStats {
        name: "(total)".to_owned(),
        ..PortStats::default()
    };
    for p in ports.iter().chain(std::iter::once(&unregistered)) {
        for (r, c) in &p.reasons {
            totals.reasons.entry(r).or_default().add(*c);
        }
        totals.dropped.add(p.dropped);
        totals.monitored.add(p.monitored);
    }
    let mut rules = Vec::new();
    for (net, v) in maps.rules()? {
        rules.push(RuleHits {
            prefix: net.to_string(),
            action: Action::from_code(v.action),
            class: state.classes.name(v.class),
            rule_id: v.rule_id,
            hits: maps.rule_hits(v.rule_id)?,
        });
    }
    let ev = maps.event_stats()?;
    let events = EventCounts {
        sampled: ev.sampled,
        suppressed: ev.suppressed,
        lost: ev.lost,
        rate_limit: maps.config()?.event_rate,
    };
    Ok(BridgeStats {
        events,
        bridge: loc.bridge.clone(),
        netns: loc.netns.clone(),
        ports,
        unregistered,
        totals,
        rules,
    })
}
