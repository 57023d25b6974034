//! Prometheus exposition of what `guardctl stats --json` reports, built fresh from the maps on
//! every scrape (so a scrape and `stats --json` read the same counters, and nothing is cached
//! that could drift).
//!
//! `prometheus-client` (the Prometheus project's Rust client) writes the text format: HELP and
//! TYPE lines, label escaping and the `_total` suffix of counters are its job, not ours.

use std::collections::BTreeMap;

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::{policy::Action, state::State, stats::BridgeStats};

/// Everything a scrape shows about one attached bridge.
pub struct BridgeMetrics<'a> {
    pub stats: &'a BridgeStats,
    pub state: &'a State,
    /// Kernel ids of the pinned programs, if they could be read.
    pub xdp_prog_id: Option<u32>,
    pub tc_prog_id: Option<u32>,
    /// Port name -> owning libvirt domain.
    pub vms: &'a BTreeMap<String, String>,
}

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Renders the metrics of `bridges` in the OpenMetrics text format (which Prometheus scrapes).
pub fn render(bridges: &[BridgeMetrics<'_>]) -> Result<String, std::fmt::Error> {
    let mut reg = Registry::default();
    let packets = Family::<Labels, Counter>::default();
    let bytes = Family::<Labels, Counter>::default();
    let hits = Family::<Labels, Counter>::default();
    let ports = Family::<Labels, Gauge>::default();
    let sampled = Family::<Labels, Counter>::default();
    let suppressed = Family::<Labels, Counter>::default();
    let lost = Family::<Labels, Counter>::default();
    let info = Family::<Labels, Gauge>::default();
    let prefixes = Family::<Labels, Gauge>::default();
    let event_rate = Family::<Labels, Gauge>::default();
    reg.register(
        "guard_packets",
        "Frames judged, by bridge, port, VM and reason (drop, monitor and pass reasons)",
        packets.clone(),
    );
    reg.register(
        "guard_bytes",
        "Bytes of the frames judged, by bridge, port, VM and reason",
        bytes.clone(),
    );
    reg.register(
        "guard_rule_hits",
        "Frames a prefix rule decided (drop or monitor)",
        hits.clone(),
    );
    reg.register(
        "guard_attached_ports",
        "Interfaces hooked on the bridge",
        ports.clone(),
    );
    reg.register(
        "guard_events_sampled",
        "Drop events written to the ring buffer",
        sampled.clone(),
    );
    reg.register(
        "guard_events_suppressed",
        "Drop events over the per-port rate limit (not written)",
        suppressed.clone(),
    );
    reg.register(
        "guard_events_lost",
        "Drop events lost to a full ring buffer (reader too slow)",
        lost.clone(),
    );
    reg.register(
        "guard_info",
        "The program and policy in force (value 1)",
        info.clone(),
    );
    reg.register(
        "guard_policy_prefixes",
        "Prefixes in the policy, by action",
        prefixes.clone(),
    );
    reg.register(
        "guard_event_rate_limit",
        "Most drop events per second per port (0: events off)",
        event_rate.clone(),
    );
    for b in bridges {
        let s = b.stats;
        let bridge = s.bridge.as_str();
        for p in s.ports.iter().chain(std::iter::once(&s.unregistered)) {
            let vm = b.vms.get(&p.name).map_or("", String::as_str);
            for (reason, c) in &p.reasons {
                let l = labels(&[
                    ("bridge", bridge),
                    ("port", &p.name),
                    ("vm", vm),
                    ("reason", reason),
                ]);
                packets.get_or_create(&l).inc_by(c.packets);
                bytes.get_or_create(&l).inc_by(c.bytes);
            }
        }
        for r in &s.rules {
            let action = match r.action {
                Action::Allow => "allow",
                Action::Deny => "deny",
            };
            hits.get_or_create(&labels(&[
                ("bridge", bridge),
                ("prefix", &r.prefix),
                ("class", &r.class),
                ("action", action),
                ("rule_id", &r.rule_id.to_string()),
            ]))
            .inc_by(r.hits);
        }
        let only_bridge = labels(&[("bridge", bridge)]);
        ports
            .get_or_create(&only_bridge)
            .set(i64::try_from(s.ports.len()).unwrap_or(i64::MAX));
        sampled.get_or_create(&only_bridge).inc_by(s.events.sampled);
        suppressed
            .get_or_create(&only_bridge)
            .inc_by(s.events.suppressed);
        lost.get_or_create(&only_bridge).inc_by(s.events.lost);
        event_rate
            .get_or_create(&only_bridge)
            .set(i64::from(s.events.rate_limit));
        let o = &b.state.options;
        let id = |v: Option<u32>| v.map_or_else(String::new, |i| i.to_string());
        info.get_or_create(&labels(&[
            ("bridge", bridge),
            ("netns", b.state.netns.as_deref().unwrap_or("")),
            ("object_id", &b.state.object_id),
            ("hook", &o.hook),
            ("mode", if o.monitor { "monitor" } else { "enforce" }),
            ("xdp_prog_id", &id(b.xdp_prog_id)),
            ("tc_prog_id", &id(b.tc_prog_id)),
        ]))
        .set(1);
        for action in [Action::Deny, Action::Allow] {
            let n = b
                .state
                .policy
                .rules
                .iter()
                .filter(|r| r.action == action)
                .count();
            let name = if action == Action::Deny {
                "deny"
            } else {
                "allow"
            };
            prefixes
                .get_or_create(&labels(&[("bridge", bridge), ("action", name)]))
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
    let mut out = String::new();
    encode(&mut out, &reg)?;
    Ok(out)
}
