//! What the end-to-end tests of the lab share: judging a negative control, attaching with a
//! hook mode and checking the modes guard reports, firing attack cases with guard's counters
//! read after each case, the legit flows with the drops counted meanwhile, and the cells of
//! their tables.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    time::{Duration, Instant},
};

use anyhow::Result;

use super::{
    Lab,
    attack::{self, AttackCase, Attacker, CaseResult, Expect, FireOptions},
    guardctl::{Guardctl, Stats},
    legit,
};

/// Poll interval while waiting for a counter (a poll with a deadline, not a synchronisation
/// sleep).
const POLL: Duration = Duration::from_millis(2);

/// `delivered/sent`.
#[must_use]
pub fn frac(r: &CaseResult) -> String {
    format!("{}/{}", r.delivered, r.sent)
}

/// Problems with a negative control, one line each: an attack that does not work without
/// guard (INVALID), a measured boundary the kernel no longer holds (CHANGED), a legit flow
/// that does not work in the lab (BROKEN).
#[must_use]
pub fn negative_control_problems(
    what: &str,
    attacks: &[CaseResult],
    flows: &[CaseResult],
) -> Vec<String> {
    let mut p: Vec<String> = attacks
        .iter()
        .filter(|r| !r.as_expected_without_guard())
        .map(|r| match r.expect {
            Expect::Delivered => format!(
                "INVALID negative control ({what}) {r}: the attack does not work without guard"
            ),
            Expect::NotDelivered(why) => format!(
                "CHANGED kernel ({what}): {r} gets through without guard, although \"{why}\""
            ),
        })
        .collect();
    p.extend(
        flows
            .iter()
            .filter(|r| !r.all_delivered())
            .map(|r| format!("BROKEN lab ({what}): legit flow {r} does not work without guard")),
    );
    p
}

/// The hook modes `status --json` may report for a `--hook` value.
#[must_use]
pub fn expected_modes(hook: Option<&str>) -> &'static [&'static str] {
    match hook {
        None | Some("xdp") => &["xdp-native", "xdp-generic"],
        Some("xdp-generic") => &["xdp-generic"],
        Some("tcx") => &["tcx"],
        Some("tc") => &["tc"],
        Some(_) => &[],
    }
}

/// `guardctl --netns HOST attach BRIDGE [--hook HOOK]`: zero-config, no policy flags.
pub fn attach(gctl: &Guardctl, host: &str, bridge: &str, hook: Option<&str>) -> Result<()> {
    let mut args = vec!["attach", bridge];
    if let Some(h) = hook {
        args.extend(["--hook", h]);
    }
    gctl.ok(Some(host), &args).map(drop)
}

/// Problems with the hook modes of `ports` in `status --json` after an attach with `hook`:
/// a port missing, in another mode, or without a pinned link (every mode but `tc` has one).
#[must_use]
pub fn mode_problems(
    status: &serde_json::Value,
    ports: &[&str],
    hook: Option<&str>,
) -> Vec<String> {
    let modes = expected_modes(hook);
    let mut problems = Vec::new();
    for name in ports {
        let entry = status["ports"]
            .as_array()
            .and_then(|ps| ps.iter().find(|e| e["name"].as_str() == Some(name)));
        let Some(entry) = entry else {
            problems.push(format!("port {name} not in status: {status}"));
            continue;
        };
        let mode = entry["hook"].as_str().unwrap_or("?");
        if entry["mode"] != "enforce" || entry["guarded"] != true {
            problems.push(format!("port {name} not guarded and enforcing: {entry}"));
        }
        if !modes.contains(&mode) {
            problems.push(format!(
                "port {name} hooked as {mode}, wanted one of {modes:?}"
            ));
        }
        if mode != "tc" && entry["link_id"].as_u64().is_none() {
            problems.push(format!("port {name} has no pinned link: {entry}"));
        }
    }
    problems
}

/// The counter changes while one case's frames were sent.
#[derive(Clone, Debug, Default)]
pub struct Counted {
    /// Per reason on the attacker's port (only reasons that grew).
    pub port: BTreeMap<String, u64>,
    /// Per reason over the whole bridge: every port, the bridge device's own slot and the
    /// unregistered one (only reasons that grew).
    pub bridge: BTreeMap<String, u64>,
    /// Drops over the whole bridge.
    pub bridge_drops: u64,
}

impl Counted {
    fn between(before: &Stats, after: &Stats, port: &str) -> Self {
        Self {
            port: after.reason_deltas(before, Some(port)),
            bridge: after.reason_deltas(before, None),
            bridge_drops: after.total_dropped().saturating_sub(before.total_dropped()),
        }
    }

    /// The bridge-wide breakdown, `reason+n` each, for a table.
    #[must_use]
    pub fn breakdown(&self) -> String {
        let mut s = String::new();
        for (r, n) in &self.bridge {
            if !s.is_empty() {
                s.push(' ');
            }
            let _ = write!(s, "{r}+{n}");
        }
        if s.is_empty() {
            s.push_str("(none)");
        }
        s
    }
}

/// Fires `cases` from `attacker` with guard attached on the lab's bridge in `host`, reading
/// the counters after each case's frames: polls until `done` says the case's counters are
/// complete, or `deadline` passes. Delivery is counted for all cases at the end, under one
/// deadline (see [`attack::fire_with`]).
pub fn fire_counted(
    lab: &Lab,
    (gctl, host, port): (&Guardctl, &str, &str),
    attacker: &Attacker,
    cases: &[AttackCase],
    (opts, deadline): (FireOptions, Duration),
    done: impl Fn(&AttackCase, &Counted) -> bool,
) -> Result<(Vec<CaseResult>, Vec<Counted>)> {
    let bridge = lab.bridge.name.clone();
    let mut counted = Vec::with_capacity(cases.len());
    let mut before = gctl.stats(host, &bridge)?;
    let results = attack::fire_with(lab, attacker, cases, opts, |case| {
        let until = Instant::now() + deadline;
        let (after, c) = loop {
            let now = gctl.stats(host, &bridge)?;
            let c = Counted::between(&before, &now, port);
            if done(case, &c) || Instant::now() >= until {
                break (now, c);
            }
            std::thread::sleep(POLL);
        };
        counted.push(c);
        before = after;
        Ok(())
    })?;
    Ok((results, counted))
}

/// Every legit flow of the lab with guard attached, and the drops counted on the bridge
/// meanwhile (which must be none).
pub fn legit_counted(
    lab: &Lab,
    gctl: &Guardctl,
    host: &str,
    opts: FireOptions,
) -> Result<(Vec<CaseResult>, u64)> {
    let before = gctl.stats(host, &lab.bridge.name)?;
    let flows = legit::run_all(lab, opts)?;
    let after = gctl.stats(host, &lab.bridge.name)?;
    Ok((
        flows,
        after.total_dropped().saturating_sub(before.total_dropped()),
    ))
}

/// Problems with legit flows run with guard: a flow not delivered, flows that differ from the
/// control's, drops counted meanwhile.
#[must_use]
pub fn legit_problems(without: &[CaseResult], with: &[CaseResult], drops: u64) -> Vec<String> {
    let mut p: Vec<String> = with
        .iter()
        .filter(|g| !g.all_delivered())
        .map(|g| format!("BROKEN with guard: legit flow {g}"))
        .collect();
    if with.len() != without.len() {
        p.push("the legit flows differ between runs".to_owned());
    }
    if drops != 0 {
        p.push(format!("{drops} drops counted during the legit flows"));
    }
    p
}

/// The legit-flow rows of a table: name, without, with.
#[must_use]
pub fn legit_table(without: &[CaseResult], with: &[CaseResult], drops: u64) -> String {
    let mut t = format!(
        "{:<28} {:>8} {:>8}   (drops counted during the legit flows: {drops})\n",
        "legit flow", "without", "with"
    );
    for (w, g) in without.iter().zip(with) {
        let _ = writeln!(t, "{:<28} {:>8} {:>8}", w.name, frac(w), frac(g));
    }
    t
}

/// The legit flows' table appended to `report`, and their problems to `problems`: what a
/// scenario says about its legitimate traffic, without and with guard.
pub fn legit_report(
    report: &mut String,
    problems: &mut Vec<String>,
    (without, with): (&[CaseResult], &[CaseResult]),
    drops: u64,
) {
    report.push_str(&legit_table(without, with, drops));
    problems.extend(legit_problems(without, with, drops));
}
