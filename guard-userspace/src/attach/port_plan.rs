//! The port decisions of a reconcile, with no kernel calls: which interfaces lose their hook,
//! which keep theirs with the program swapped, which are adopted from a pinned link, and in
//! which order of modes a new hook is tried. `attach::ports` carries the plan out through
//! `sys::hook`; its tests here are plain unit tests, like `policy::plan`'s.

use std::collections::{BTreeMap, BTreeSet};

use guard_common::{MAX_PORT_SLOTS, PORT_FLAG_EGRESS_OK, PORT_FLAG_MONITOR};

use crate::{
    discovery::Discovery,
    error::{GuardError, Result},
    options::{HookMode, Settings},
    state::PortState,
};

/// An interface to hook: a port of the bridge, or the bridge device itself (the backstop).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub ifindex: u32,
    pub name: String,
    pub is_bridge: bool,
}

/// The interfaces to hook: every port, then the bridge device unless `bridge_hook` is off.
#[must_use]
pub fn targets(discovery: &Discovery, bridge_hook: bool) -> Vec<Target> {
    let ports = discovery.ports.iter().map(|p| Target {
        ifindex: p.index,
        name: p.name.clone(),
        is_bridge: false,
    });
    let bridge = bridge_hook.then(|| Target {
        ifindex: discovery.bridge.index,
        name: discovery.bridge.name.clone(),
        is_bridge: true,
    });
    ports.chain(bridge).collect()
}

/// How one interface gets its hook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HookStep {
    /// Keep the hook in place and swap the program behind it atomically (no frame passes
    /// unjudged); the fallback note of the record stays.
    Swap {
        mode: HookMode,
        fallback: Option<String>,
    },
    /// No record of this interface (state lost, e.g. /run wiped) but a pinned link hooks it:
    /// adopt that link (swap the program in) rather than hook twice.
    Adopt { mode: HookMode },
    /// Hook anew: try the modes in order, the first the interface takes wins and the refusals
    /// before it become the fallback note.
    Attach { candidates: &'static [HookMode] },
}

/// Why an adopted hook has no record of its mode choice.
pub const ADOPTED: &str = "adopted a pinned link without state";

/// What to do for one interface that stays or becomes hooked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortStep {
    pub target: Target,
    /// Its record from the last reconcile (its slot is kept; its hook where allowed).
    pub known: Option<PortState>,
    /// Count and report would-drop frames on it, but pass them.
    pub monitor: bool,
    pub hook: HookStep,
}

/// What happens once a step's hook is in place in `mode`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome<'a> {
    /// A new hook or another mode: worth reporting.
    pub hooked: bool,
    /// The old hook, of another kind, to remove now that the new one is in place (so the
    /// interface is never without one). A hook of the same kind shares its pin and was
    /// replaced in place.
    pub unhook_old: Option<&'a PortState>,
}

impl PortStep {
    /// The port-table flags of this interface.
    #[must_use]
    pub const fn flags(&self) -> u32 {
        let mut flags = if self.monitor { PORT_FLAG_MONITOR } else { 0 };
        if self.target.is_bridge {
            // The bridge is also where the route check lets guests be routed (back to them).
            flags |= PORT_FLAG_EGRESS_OK;
        }
        flags
    }

    #[must_use]
    pub fn outcome(&self, mode: HookMode) -> Outcome<'_> {
        Outcome {
            hooked: self.known.as_ref().is_none_or(|k| k.mode != mode),
            unhook_old: self
                .known
                .as_ref()
                .filter(|k| k.mode.pin_name() != mode.pin_name()),
        }
    }
}

/// An interface that left (or is no longer wanted): its hook goes, then its table entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Release {
    pub ifindex: u32,
    pub port: PortState,
}

/// Every port decision of one reconcile, in the order they are carried out: releases first
/// (a port that left the bridge must not keep a slot), then each wanted interface.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortPlan {
    pub release: Vec<Release>,
    pub ports: Vec<PortStep>,
}

/// The modes an interface may be hooked in, best first. The bridge device sees only frames
/// the bridge passes up; XDP there is generic-only and TC is the documented hook
/// (../shared/docs/toolchain.md). It runs the backstop program, which judges every frame
/// without the host MAC table.
#[must_use]
pub fn candidates(target: &Target, settings: &Settings) -> &'static [HookMode] {
    if target.is_bridge {
        &[HookMode::Tcx, HookMode::Tc]
    } else {
        settings.hook.candidates()
    }
}

/// Plans the ports: `current` is the state's record of hooked interfaces, `wanted` what
/// should be hooked now, `has_link_pin(mode, ifindex)` whether a link of that mode's kind is
/// pinned for the interface.
///
/// ```
/// use std::collections::BTreeMap;
/// use guard::attach::port_plan::{HookStep, Target, plan};
/// use guard::options::{HookMode, Options};
/// use guard::state::PortState;
///
/// let settings = Options::default().settings().unwrap(); // hook = "xdp"
/// let vnet0 = Target { ifindex: 7, name: "vnet0".into(), is_bridge: false };
/// let vnet1 = Target { ifindex: 8, name: "vnet1".into(), is_bridge: false };
/// let old = PortState {
///     name: "vnet0".into(), slot: 1, mode: HookMode::XdpNative, fallback: None,
///     is_bridge: false,
/// };
/// let current = BTreeMap::from([(7, old), (9, PortState { name: "gone".into(), slot: 2,
///     mode: HookMode::Tcx, fallback: None, is_bridge: false })]);
/// let p = plan(&current, &[vnet0, vnet1], &settings, |mode, ifindex| {
///     ifindex == 7 && mode.is_xdp()
/// });
/// assert_eq!(p.release[0].port.name, "gone");
/// // vnet0 keeps its XDP link; only the program behind it changes.
/// assert_eq!(p.ports[0].hook, HookStep::Swap { mode: HookMode::XdpNative, fallback: None });
/// // vnet1 is new: native XDP first, then the fallbacks.
/// assert!(matches!(p.ports[1].hook,
///     HookStep::Attach { candidates: [HookMode::XdpNative, HookMode::XdpGeneric, ..] }));
/// ```
pub fn plan(
    current: &BTreeMap<u32, PortState>,
    wanted: &[Target],
    settings: &Settings,
    has_link_pin: impl Fn(HookMode, u32) -> bool,
) -> PortPlan {
    let wanted_idx: BTreeSet<u32> = wanted.iter().map(|t| t.ifindex).collect();
    let release = current
        .iter()
        .filter(|(i, _)| !wanted_idx.contains(i))
        .map(|(i, p)| Release {
            ifindex: *i,
            port: p.clone(),
        })
        .collect();
    let ports = wanted
        .iter()
        .map(|t| {
            let known = current.get(&t.ifindex).cloned();
            let hook = hook_step(t, known.as_ref(), settings, &has_link_pin);
            PortStep {
                target: t.clone(),
                known,
                monitor: settings.monitors(&t.name, t.is_bridge),
                hook,
            }
        })
        .collect();
    PortPlan { release, ports }
}

/// One interface's hook. An existing hook is kept when it is one the request allows (swap
/// the program in place); otherwise the interface is hooked anew and the caller removes the
/// old hook afterwards ([`PortStep::outcome`]).
fn hook_step(
    target: &Target,
    known: Option<&PortState>,
    settings: &Settings,
    has_link_pin: &impl Fn(HookMode, u32) -> bool,
) -> HookStep {
    let candidates = candidates(target, settings);
    match known.filter(|k| candidates.contains(&k.mode)) {
        // A cls_bpf filter is not pinned: the state's record is all there is.
        Some(k) if k.mode == HookMode::Tc || has_link_pin(k.mode, target.ifindex) => {
            HookStep::Swap {
                mode: k.mode,
                fallback: k.fallback.clone(),
            }
        }
        // Recorded, but its link is gone: hook anew.
        Some(_) => HookStep::Attach { candidates },
        None => candidates
            .iter()
            .copied()
            .find(|&m| m != HookMode::Tc && has_link_pin(m, target.ifindex))
            .map_or(HookStep::Attach { candidates }, |mode| HookStep::Adopt {
                mode,
            }),
    }
}

/// The lowest counter slot no port holds.
pub fn free_slot(ports: &BTreeMap<u32, PortState>) -> Result<u32> {
    let used: BTreeSet<u32> = ports.values().map(|p| p.slot).collect();
    (1..MAX_PORT_SLOTS)
        .find(|s| !used.contains(s))
        .ok_or_else(|| GuardError::Policy(format!("more than {} ports", MAX_PORT_SLOTS - 1)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::Options;

    fn settings(hook: &str, monitor_ports: &[&str]) -> Settings {
        Options {
            hook: hook.to_owned(),
            monitor_ports: monitor_ports.iter().map(|p| (*p).to_owned()).collect(),
            ..Options::default()
        }
        .settings()
        .expect("valid options")
    }

    fn port(ifindex: u32) -> Target {
        Target {
            ifindex,
            name: format!("vnet{ifindex}"),
            is_bridge: false,
        }
    }

    fn bridge() -> Target {
        Target {
            ifindex: 2,
            name: "br-guest".to_owned(),
            is_bridge: true,
        }
    }

    fn record(t: &Target, slot: u32, mode: HookMode) -> (u32, PortState) {
        (
            t.ifindex,
            PortState {
                name: t.name.clone(),
                slot,
                mode,
                fallback: None,
                is_bridge: t.is_bridge,
            },
        )
    }

    fn no_pins(_: HookMode, _: u32) -> bool {
        false
    }

    #[test]
    fn new_ports_try_the_fallback_chain_in_order() {
        use HookMode::{Tc, Tcx, XdpGeneric, XdpNative};
        for (hook, want) in [
            ("xdp", &[XdpNative, XdpGeneric, Tcx, Tc][..]),
            ("", &[XdpNative, XdpGeneric, Tcx, Tc][..]),
            ("xdp-generic", &[XdpGeneric, Tcx, Tc][..]),
            ("tcx", &[Tcx, Tc][..]),
            ("tc", &[Tc][..]),
        ] {
            let p = plan(&BTreeMap::new(), &[port(7)], &settings(hook, &[]), no_pins);
            assert!(p.release.is_empty());
            assert_eq!(
                p.ports[0].hook,
                HookStep::Attach { candidates: want },
                "{hook}"
            );
            assert!(p.ports[0].known.is_none());
        }
    }

    #[test]
    fn the_bridge_device_is_tc_only_whatever_the_hook() {
        for hook in ["xdp", "xdp-generic", "tcx"] {
            let p = plan(&BTreeMap::new(), &[bridge()], &settings(hook, &[]), no_pins);
            assert_eq!(
                p.ports[0].hook,
                HookStep::Attach {
                    candidates: &[HookMode::Tcx, HookMode::Tc]
                }
            );
            assert_eq!(p.ports[0].flags(), PORT_FLAG_EGRESS_OK);
        }
    }

    #[test]
    fn a_known_hook_with_its_pin_swaps_the_program() {
        let t = port(7);
        let current = BTreeMap::from([record(&t, 3, HookMode::XdpGeneric)]);
        let p = plan(&current, &[t], &settings("xdp", &[]), |m, i| {
            m == HookMode::XdpGeneric && i == 7
        });
        assert_eq!(
            p.ports[0].hook,
            HookStep::Swap {
                mode: HookMode::XdpGeneric,
                fallback: None
            }
        );
        let o = p.ports[0].outcome(HookMode::XdpGeneric);
        assert!(!o.hooked && o.unhook_old.is_none(), "nothing to report");
    }

    #[test]
    fn a_cls_bpf_filter_is_swapped_without_a_pin() {
        let t = port(7);
        let current = BTreeMap::from([record(&t, 1, HookMode::Tc)]);
        let p = plan(&current, &[t], &settings("tc", &[]), no_pins);
        assert!(matches!(
            p.ports[0].hook,
            HookStep::Swap {
                mode: HookMode::Tc,
                ..
            }
        ));
    }

    #[test]
    fn a_known_hook_whose_link_is_gone_is_hooked_anew_in_place() {
        let t = port(7);
        let current = BTreeMap::from([record(&t, 1, HookMode::XdpNative)]);
        let p = plan(&current, &[t], &settings("xdp", &[]), no_pins);
        assert!(matches!(p.ports[0].hook, HookStep::Attach { .. }));
        // Same kind again: same pin, replaced in place, not reported.
        let o = p.ports[0].outcome(HookMode::XdpNative);
        assert!(!o.hooked && o.unhook_old.is_none());
        // XDP -> XDP generic: reported, but the pin (kind "xdp") is the new hook's.
        let o = p.ports[0].outcome(HookMode::XdpGeneric);
        assert!(o.hooked && o.unhook_old.is_none());
        // Fell back to TCX: the old XDP link goes once TCX is in place.
        let o = p.ports[0].outcome(HookMode::Tcx);
        assert!(o.hooked);
        assert_eq!(o.unhook_old.map(|k| k.mode), Some(HookMode::XdpNative));
    }

    #[test]
    fn a_changed_hook_request_rehooks_and_removes_the_old_hook_after() {
        let t = port(7);
        let current = BTreeMap::from([record(&t, 1, HookMode::XdpNative)]);
        // The XDP link is pinned, but tcx no longer allows it.
        let p = plan(&current, &[t], &settings("tcx", &[]), |m, _| m.is_xdp());
        assert_eq!(
            p.ports[0].hook,
            HookStep::Attach {
                candidates: &[HookMode::Tcx, HookMode::Tc]
            }
        );
        assert_eq!(
            p.ports[0].outcome(HookMode::Tcx).unhook_old.map(|k| k.mode),
            Some(HookMode::XdpNative)
        );
        assert_eq!(p.ports[0].known.as_ref().map(|k| k.slot), Some(1));
    }

    #[test]
    fn a_pinned_link_without_state_is_adopted_best_mode_first() {
        let p = plan(
            &BTreeMap::new(),
            &[port(7)],
            &settings("xdp", &[]),
            |m, _| matches!(m, HookMode::XdpGeneric | HookMode::Tcx),
        );
        assert_eq!(
            p.ports[0].hook,
            HookStep::Adopt {
                mode: HookMode::XdpGeneric
            }
        );
        assert!(p.ports[0].outcome(HookMode::XdpGeneric).hooked);
        // Only modes the request allows are adopted.
        let p = plan(
            &BTreeMap::new(),
            &[port(7)],
            &settings("tcx", &[]),
            |m, _| m.is_xdp(),
        );
        assert!(matches!(p.ports[0].hook, HookStep::Attach { .. }));
    }

    #[test]
    fn ports_that_left_and_a_turned_off_backstop_are_released() {
        let (a, b, br) = (port(7), port(8), bridge());
        let current = BTreeMap::from([
            record(&a, 1, HookMode::XdpNative),
            record(&b, 2, HookMode::Tcx),
            record(&br, 3, HookMode::Tcx),
        ]);
        let p = plan(&current, &[a], &settings("xdp", &[]), |_, _| true);
        let released: Vec<&str> = p.release.iter().map(|r| r.port.name.as_str()).collect();
        assert_eq!(released, ["br-guest", "vnet8"]);
        assert_eq!(p.ports.len(), 1);
    }

    #[test]
    fn monitor_ports_and_the_backstop_monitor_enforce_elsewhere() {
        let s = settings("xdp", &["vnet8"]);
        let p = plan(&BTreeMap::new(), &[port(7), port(8), bridge()], &s, no_pins);
        let monitor: Vec<(String, u32)> = p
            .ports
            .iter()
            .map(|s| (s.target.name.clone(), s.flags()))
            .collect();
        assert_eq!(
            monitor,
            [
                ("vnet7".to_owned(), 0),
                ("vnet8".to_owned(), PORT_FLAG_MONITOR),
                (
                    "br-guest".to_owned(),
                    PORT_FLAG_MONITOR | PORT_FLAG_EGRESS_OK
                ),
            ]
        );
        // Without monitored ports the backstop enforces.
        let p = plan(
            &BTreeMap::new(),
            &[bridge()],
            &settings("xdp", &[]),
            no_pins,
        );
        assert!(!p.ports[0].monitor);
    }

    #[test]
    fn slots_are_the_lowest_free() {
        let (a, b) = (port(7), port(8));
        let mut ports =
            BTreeMap::from([record(&a, 1, HookMode::Tcx), record(&b, 3, HookMode::Tcx)]);
        assert_eq!(free_slot(&ports).expect("free"), 2);
        ports.extend((0..MAX_PORT_SLOTS).map(|i| record(&port(100 + i), i + 1, HookMode::Tc)));
        assert!(free_slot(&ports).is_err());
    }
}
