//! `guardctl stats`.

use std::{collections::BTreeMap, fmt::Write as _, process::ExitCode, time::Duration};

use anyhow::{Context as _, Result};
use clap::Args;
use guard::stats::{BridgeStats, collect};

use crate::{Cli, output, status::attached};

#[derive(Args)]
pub struct StatsArgs {
    /// Only this bridge (default: every attached bridge in scope).
    pub bridge: Option<String>,
    /// Print JSON (`guardctl.stats.v1`; with --watch one such object per line).
    #[arg(long)]
    pub json: bool,
    /// Refresh every second (`--watch=SECS`: every SECS seconds) and show rates, until
    /// interrupted. The value needs the `=`, so `--watch br-guest` watches br-guest.
    #[arg(
        long,
        value_name = "SECS",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "1",
        value_parser = crate::positive_secs
    )]
    pub watch: Option<f64>,
}

fn gather(cli: &Cli, bridge: Option<&str>) -> Result<Vec<BridgeStats>> {
    attached(cli, bridge)?
        .iter()
        .map(|loc| collect(loc).with_context(|| format!("reading counters of {:?}", loc.bridge)))
        .collect()
}

/// `stats --json`: `{"schema": "guardctl.stats.v1", "bridges": [...]}`.
#[derive(serde::Serialize)]
struct StatsJson<'a> {
    bridges: &'a [BridgeStats],
}

type Key = (String, String, &'static str);
/// Packets and bytes per (bridge, port, reason).
type Flat = BTreeMap<Key, (u64, u64)>;

fn flatten(all: &[BridgeStats]) -> Flat {
    let mut m = BTreeMap::new();
    for b in all {
        for p in b.ports.iter().chain(std::iter::once(&b.unregistered)) {
            for (r, c) in &p.reasons {
                m.insert((b.bridge.clone(), p.name.clone(), *r), (c.packets, c.bytes));
            }
        }
    }
    m
}

fn render(all: &[BridgeStats], prev: Option<(&Flat, f64)>) -> String {
    let now = flatten(all);
    let mut s = String::new();
    for b in all {
        let _ = writeln!(
            s,
            "{}{}: dropped {} packets ({} bytes), monitored {}",
            b.bridge,
            b.netns
                .as_deref()
                .map_or(String::new(), |n| format!(" [{n}]")),
            b.totals.dropped.packets,
            b.totals.dropped.bytes,
            b.totals.monitored.packets
        );
        let _ = writeln!(
            s,
            "  events: {} sampled, {} over the rate limit, {} lost (limit {}/s/port)",
            b.events.sampled, b.events.suppressed, b.events.lost, b.events.rate_limit
        );
        let rate_hdr = if prev.is_some() { "     PPS" } else { "" };
        let _ = writeln!(
            s,
            "  {:<16} {:<18} {:>12} {:>14}{rate_hdr}",
            "PORT", "REASON", "PACKETS", "BYTES"
        );
        for p in b.ports.iter().chain(std::iter::once(&b.unregistered)) {
            for (r, c) in &p.reasons {
                if c.packets == 0 {
                    continue;
                }
                let rate = prev.map_or(String::new(), |(pm, secs)| {
                    let key = (b.bridge.clone(), p.name.clone(), *r);
                    let before = pm.get(&key).map_or(0, |v| v.0);
                    let cur = now.get(&key).map_or(0, |v| v.0);
                    #[expect(clippy::cast_precision_loss, reason = "a rate for display")]
                    let pps = cur.saturating_sub(before) as f64 / secs;
                    format!(" {pps:>7.0}")
                });
                let _ = writeln!(
                    s,
                    "  {:<16} {:<18} {:>12} {:>14}{rate}",
                    p.name, r, c.packets, c.bytes
                );
            }
        }
        let hits: Vec<_> = b.rules.iter().filter(|r| r.hits > 0).collect();
        if !hits.is_empty() {
            let _ = writeln!(s, "  {:<24} {:<12} {:>12}", "RULE", "CLASS", "HITS");
            for r in hits {
                let _ = writeln!(s, "  {:<24} {:<12} {:>12}", r.prefix, r.class, r.hits);
            }
        }
    }
    if all.is_empty() {
        s.push_str("guard: no bridge attached\n");
    }
    s
}

pub async fn run(cli: &Cli, a: &StatsArgs) -> Result<ExitCode> {
    let Some(secs) = a.watch else {
        let all = gather(cli, a.bridge.as_deref())?;
        if a.json {
            output::print_json(&output::Schema::new("stats", &StatsJson { bridges: &all }))?;
        } else {
            print!("{}", render(&all, None));
        }
        return Ok(ExitCode::SUCCESS);
    };
    let mut prev: Option<Flat> = None;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(secs));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
        }
        let all = gather(cli, a.bridge.as_deref())?;
        if a.json {
            println!(
                "{}",
                serde_json::to_string(&output::Schema::new("stats", &StatsJson { bridges: &all }))
                    .context("serialising JSON")?
            );
        } else {
            println!("--- {}", output::fmt_time(guard::state::now()));
            print!("{}", render(&all, prev.as_ref().map(|p| (p, secs))));
        }
        prev = Some(flatten(&all));
    }
}
