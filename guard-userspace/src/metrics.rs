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
    registry::{Metric, Registry},
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

/// A new metric family, registered under `name`.
fn family<M>(reg: &mut Registry, name: &str, help: &str) -> Family<Labels, M>
where
    Family<Labels, M>: Metric + Clone + Default,
{
    let f = Family::default();
    reg.register(name, help, f.clone());
    f
}

/// The metric families of one scrape (registered, and so written, in this order).
struct Families {
    packets: Family<Labels, Counter>,
    bytes: Family<Labels, Counter>,
    hits: Family<Labels, Counter>,
    ports: Family<Labels, Gauge>,
    sampled: Family<Labels, Counter>,
    suppressed: Family<Labels, Counter>,
    lost: Family<Labels, Counter>,
    info: Family<Labels, Gauge>,
    prefixes: Family<Labels, Gauge>,
    event_rate: Family<Labels, Gauge>,
}

impl Families {
    fn register(reg: &mut Registry) -> Self {
        Self {
            packets: family(
                reg,
                "guard_packets",
                "Frames judged, by bridge, port, VM and reason (drop, monitor and pass reasons)",
            ),
            bytes: family(
                reg,
                "guard_bytes",
                "Bytes of the frames judged, by bridge, port, VM and reason",
            ),
            hits: family(
                reg,
                "guard_rule_hits",
                "Frames a prefix rule decided (drop or monitor)",
            ),
            ports: family(
                reg,
                "guard_attached_ports",
                "Interfaces hooked on the bridge",
            ),
            sampled: family(
                reg,
                "guard_events_sampled",
                "Drop events written to the ring buffer",
            ),
            suppressed: family(
                reg,
                "guard_events_suppressed",
                "Drop events over the per-port rate limit (not written)",
            ),
            lost: family(
                reg,
                "guard_events_lost",
                "Drop events lost to a full ring buffer (reader too slow)",
            ),
            info: family(
                reg,
                "guard_info",
                "The program and policy in force (value 1)",
            ),
            prefixes: family(
                reg,
                "guard_policy_prefixes",
                "Prefixes in the policy, by action",
            ),
            event_rate: family(
                reg,
                "guard_event_rate_limit",
                "Most drop events per second per port (0: events off)",
            ),
        }
    }

    fn add(&self, b: &BridgeMetrics<'_>) {
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
                self.packets.get_or_create(&l).inc_by(c.packets);
                self.bytes.get_or_create(&l).inc_by(c.bytes);
            }
        }
        for r in &s.rules {
            self.hits
                .get_or_create(&labels(&[
                    ("bridge", bridge),
                    ("prefix", &r.prefix),
                    ("class", &r.class),
                    ("action", action_name(r.action)),
                    ("rule_id", &r.rule_id.to_string()),
                ]))
                .inc_by(r.hits);
        }
        let only_bridge = labels(&[("bridge", bridge)]);
        self.ports
            .get_or_create(&only_bridge)
            .set(i64::try_from(s.ports.len()).unwrap_or(i64::MAX));
        self.sampled
            .get_or_create(&only_bridge)
            .inc_by(s.events.sampled);
        self.suppressed
            .get_or_create(&only_bridge)
            .inc_by(s.events.suppressed);
        self.lost.get_or_create(&only_bridge).inc_by(s.events.lost);
        self.event_rate
            .get_or_create(&only_bridge)
            .set(i64::from(s.events.rate_limit));
        let o = &b.state.options;
        let id = |v: Option<u32>| v.map_or_else(String::new, |i| i.to_string());
        self.info
            .get_or_create(&labels(&[
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
            self.prefixes
                .get_or_create(&labels(&[
                    ("bridge", bridge),
                    ("action", action_name(action)),
                ]))
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
}

const fn action_name(a: Action) -> &'static str {
    match a {
        Action::Allow => "allow",
        Action::Deny => "deny",
    }
}

/// Renders the metrics of `bridges` in the `OpenMetrics` text format (which Prometheus
/// scrapes).
pub fn render(bridges: &[BridgeMetrics<'_>]) -> Result<String, std::fmt::Error> {
    let mut reg = Registry::default();
    let families = Families::register(&mut reg);
    for b in bridges {
        families.add(b);
    }
    let mut out = String::new();
    encode(&mut out, &reg)?;
    Ok(out)
}
