//! The text rendering of a bridge's status (`status`, `attach`, `run`).

use std::fmt::Write as _;

use super::{PrefixView, StatusView, fmt_time, guardctl_for};

/// The port table of [`describe`]: hook, mode, guarded and VM per port, and why a port is not
/// guarded.
fn port_lines(s: &mut String, v: &StatusView) {
    if !v.ports.is_empty() {
        let _ = writeln!(
            s,
            "  {:<16} {:<12} {:<8} {:<8} VM",
            "PORT", "HOOK", "MODE", "GUARDED"
        );
    }
    for p in &v.ports {
        let name = if p.bridge_device {
            format!("{} [bridge]", p.name)
        } else {
            p.name.clone()
        };
        let _ = writeln!(
            s,
            "  {name:<16} {:<12} {:<8} {:<8} {}",
            p.hook.as_deref().unwrap_or("-"),
            p.mode,
            if p.guarded { "yes" } else { "NO" },
            p.vm.as_deref().unwrap_or("-")
        );
        if let Some(f) = &p.fallback {
            let _ = writeln!(s, "    fallback: {f}");
        }
        if let Some(x) = &p.shared_xdp {
            let _ = writeln!(
                s,
                "    shares its XDP hook: {x} runs first{}",
                if p.guarded {
                    "; guard judges what it passes"
                } else {
                    ""
                }
            );
        }
        if let Some(f) = &p.failure {
            let _ = writeln!(s, "    not hooked: {f}");
        } else if !p.guarded && p.hook.is_none() && v.attached {
            let gc = guardctl_for(v.netns.as_deref());
            let _ = writeln!(
                s,
                "    not hooked: it joined after the attach and no agent hooked it \
                 (`{gc} attach {b}` or `{gc} run {b}`)",
                b = v.bridge
            );
        } else if !p.guarded && v.attached {
            let _ = writeln!(s, "    no guard program on its hook in the kernel");
        }
    }
}

/// What judges beyond the prefix rules: the route check and its uplinks, tunnels.
fn route_line(v: &StatusView) -> String {
    let route = if v.route_check {
        let up = if v.uplinks.is_empty() {
            "none".to_owned()
        } else {
            v.uplinks.join(", ")
        };
        format!("route check on (uplinks: {up})")
    } else {
        "route check off (prefix rules only)".to_owned()
    };
    let tunnels = if v.allow_tunnels {
        "tunnels allowed"
    } else {
        "tunnels to the host dropped"
    };
    format!("{route}, {tunnels}")
}

/// The human summary printed by `attach`, `run` and `status`.
pub fn describe(v: &StatusView) -> String {
    let mut s = String::new();
    let ns = v
        .netns
        .as_deref()
        .map_or(String::new(), |n| format!(" in netns {n}"));
    // Two lines: namespace names can be long and the output must fit 80 columns.
    let _ = writeln!(s, "guard: {}{ns}", v.bridge);
    if v.attached {
        let guarded = v.ports.iter().filter(|p| p.guarded).count();
        let agent = v
            .agent_pid
            .map_or(String::new(), |p| format!(", agent pid {p}"));
        let _ = writeln!(
            s,
            "  {} mode, {guarded} of {} port(s) guarded, hook {}, since {}{agent}",
            v.mode,
            v.ports.len(),
            v.hook,
            fmt_time(v.since)
        );
    } else {
        let _ = writeln!(
            s,
            "  not attached: nothing guards its {} port(s)",
            v.ports.len()
        );
    }
    if v.attached {
        let _ = writeln!(s, "  {}", route_line(v));
        let _ = writeln!(
            s,
            "  {}",
            if v.replies {
                "replies to flows the protected side started pass"
            } else {
                "replies to flows the protected side started are judged like the rest"
            }
        );
    }
    if v.detaching {
        let _ = writeln!(s, "  being detached (or a detach was interrupted)");
    }
    port_lines(&mut s, v);
    for f in v
        .failures
        .iter()
        .filter(|f| !matches!(f.item, guard::state::Item::Port { .. }))
    {
        let _ = writeln!(s, "  {} not applied: {}", f.item, f.error);
    }
    if v.attached {
        let _ = writeln!(s, "  protects {} prefix(es):", v.protected.len());
        for r in &v.protected {
            let _ = writeln!(s, "    {}", prefix_line(r));
        }
        if !v.allowed.is_empty() {
            let _ = writeln!(s, "  allows {} prefix(es):", v.allowed.len());
            for r in &v.allowed {
                let _ = writeln!(s, "    {}", prefix_line(r));
            }
        }
        if !v.removed.is_empty() {
            let _ = writeln!(s, "  removed live: {}", v.removed.join(", "));
        }
        if !v.exceptions.is_empty() {
            let _ = writeln!(s, "  exceptions ({}):", v.exceptions.len());
            for e in &v.exceptions {
                let _ = writeln!(s, "    {}", exception_line(e));
            }
        }
        let _ = writeln!(s, "  host MACs: {}", v.host_macs.len());
    }
    let _ = writeln!(
        s,
        "  health: {} (exit {})",
        serde_json::to_value(v.health)
            .ok()
            .and_then(|h| h.as_str().map(str::to_owned))
            .unwrap_or_default(),
        v.health.exit_code()
    );
    s
}

fn prefix_line(r: &PrefixView) -> String {
    let live = if r.live { " (live)" } else { "" };
    format!("{:<24} {:<12} {}{live}", r.prefix, r.class, r.source)
}

/// `10.20.0.5/32 tcp/3260 from vm backup01 (class allowed, rule 4, 12 hits) on vnet3, br-guest`.
#[must_use]
pub fn exception_line(e: &super::ExceptionView) -> String {
    let what = e
        .dport
        .map_or_else(|| e.proto.clone(), |p| format!("{}/{p}", e.proto));
    let who = match (&e.vm, &e.iface) {
        (Some(vm), _) => format!("VM {vm}"),
        (None, Some(i)) => format!("port {i}"),
        (None, None) => "all ports".to_owned(),
    };
    let hits = e.hits.map_or_else(String::new, |h| format!(", {h} hits"));
    let live = if e.live { ", live" } else { "" };
    let where_ = e.note.clone().unwrap_or_else(|| {
        if e.vm.is_none() && e.iface.is_none() {
            "everywhere".to_owned()
        } else {
            format!("on {}", e.ports.join(", "))
        }
    });
    format!(
        "{} {what} from {who} (class {}, rule {}{hits}{live}): {where_}",
        e.prefix, e.class, e.rule_id
    )
}
