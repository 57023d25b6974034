//! guard's own hooks on the bridge's ports.

use std::collections::BTreeSet;

use super::Ctx;
use crate::audit::{FindingId, Observed, Severity};

pub(super) fn guard_hooks(c: &mut Ctx<'_>) {
    let br = c.name().to_owned();
    let ns = c
        .snap
        .netns
        .as_deref()
        .map_or(String::new(), |n| format!("--netns {n} "));
    let Some(guard) = &c.br.guard else {
        if c.br.ports.is_empty() {
            return;
        }
        let observed =
            c.br.ports
                .iter()
                .map(|p| Observed {
                    what: "unguarded port".to_owned(),
                    value: p.name.clone(),
                })
                .collect();
        c.push(
            FindingId::GuardNotAttached,
            Severity::Medium,
            format!("guard is not attached to {br}"),
            observed,
            &format!(
                "Nothing judges the guests' frames before the host stack sees them. The \
                 sysctls above narrow what the host accepts, but a guest can still reach \
                 the host's services on any address the bridge holds, and every setting \
                 here is one `sysctl -w` or libvirt restart away from being undone. guard \
                 drops frames aimed at the host's MACs whose destination is in the \
                 management or storage networks on every port of {br}."
            ),
            vec![
                format!("guardctl {ns}attach {br}"),
                format!("systemctl enable --now guardctl@{br} (the agent follows new ports)"),
            ],
            Vec::new(),
            "not applied: attaching is not a sysctl; run the command",
        );
        return;
    };
    let ids: BTreeSet<u32> = guard.prog_ids.iter().copied().collect();
    let mut observed = Vec::new();
    for p in &c.br.ports {
        let hooked = p
            .xdp_prog
            .iter()
            .chain(&p.tcx_progs)
            .chain(&p.tc_progs)
            .any(|id| ids.contains(id));
        if hooked {
            continue;
        }
        let why = if p.in_state {
            "listed in guard's state, but no guard program is on its XDP, TCX or tc hook"
        } else {
            "not in guard's state and no guard program on it (it joined after the attach)"
        };
        observed.push(Observed {
            what: p.name.clone(),
            value: why.to_owned(),
        });
    }
    if !guard.state_present {
        observed.push(Observed {
            what: "state file".to_owned(),
            value: "missing: pins exist but /run/guard has no state (reboot of /run?)".to_owned(),
        });
    }
    if observed.is_empty() {
        return;
    }
    c.push(
        FindingId::PortUnguarded,
        Severity::High,
        format!("guard is attached to {br}, but not on every port"),
        observed,
        &format!(
            "guard's pinned state for {br} exists, so the bridge looks protected, but the \
             ports listed carry no guard program: a guest behind them is judged by nobody. \
             This happens when a VM starts after `guardctl attach` and the agent is not \
             running, or when someone removed the hook by hand."
        ),
        vec![
            format!("guardctl {ns}attach {br} (hooks the missing ports, keeps the rest)"),
            format!("systemctl enable --now guardctl@{br}"),
        ],
        Vec::new(),
        "not applied: attaching is not a sysctl; run the command",
    );
}
