//! One reconcile: the items it applies in order (global config, host MACs, policy, ports,
//! egress), each on its own. The ports are `attach::ports`.

use std::collections::{BTreeMap, BTreeSet};

use guard_common::{
    DEFAULT_TUNNEL_PORTS, GLOBAL_FLAG_ALLOW_TUNNELS, GLOBAL_FLAG_EXCEPTIONS,
    GLOBAL_FLAG_FIB_SKIP_NEIGH, GLOBAL_FLAG_MONITOR, GLOBAL_FLAG_NO_ROUTE_CHECK,
    GLOBAL_FLAG_REPLIES, GLOBAL_FLAG_STRICT_MAC, GlobalConfig, Mac, PORT_FLAG_EGRESS_OK, PortSet,
    event::DEFAULT_EVENT_RATE,
};

use super::{Changes, Guard};
use crate::{
    attach::port_plan::Target,
    discovery::Discovery,
    error::{GuardError, Result, error_chain},
    exception::{self, ExceptionState, PortRef},
    identity,
    options::Settings,
    policy::Policy,
    state::{Failure, Item, ReplyHook, now},
    sys::hook,
    sys::kernel::fib_skips_neigh,
};

impl Guard {
    /// Brings the maps and hooks in line with the state and `discovery`, one item at a time
    /// (global config, host MACs, policy, then each port): an item that fails leaves what
    /// was in force for it, is reported in [`Changes::failures`] and in the state, and the
    /// next items still run.
    ///
    /// The options are parsed once, here ([`Options::settings`](crate::options::Options));
    /// options that do not parse (an attach refuses them, so only a hand-edited state file
    /// has them) fail as the global config, and the host MACs and ports stay as they were.
    pub(super) fn reconcile_with(
        &mut self,
        discovery: &Discovery,
        policy: Result<Policy>,
    ) -> Changes {
        let mut changes = Changes::default();
        let settings = self.state.options.settings();
        if let Err(e) = self.apply_global_config(discovery) {
            changes.failures.push((Item::GlobalConfig, e));
        }
        if let Ok(s) = &settings {
            match self.apply_host_macs(discovery, s) {
                Ok(macs_changed) => changes.macs_changed = macs_changed,
                Err(e) => changes.failures.push((Item::HostMacs, e)),
            }
        }
        match policy.and_then(|p| self.apply_policy(&p)) {
            Ok(writes) => changes.rule_writes = writes,
            Err(e) => changes.failures.push((Item::Policy, e)),
        }
        match self.apply_exceptions(discovery) {
            Ok(writes) => changes.rule_writes += writes,
            Err(e) => changes.failures.push((Item::Exceptions, e)),
        }
        match settings {
            Ok(s) => self.apply_ports(discovery, &s, &mut changes),
            Err(e) => changes.failures.push((Item::GlobalConfig, e)),
        }
        if let Err(e) = self.apply_egress(discovery) {
            changes.failures.push((Item::Egress, e));
        }
        if let Err(e) = self.apply_replies(discovery) {
            changes.failures.push((Item::Replies, e));
        }
        self.state.failures = changes
            .failures
            .iter()
            .map(|(item, e)| Failure {
                item: item.clone(),
                error: error_chain(e),
            })
            .collect();
        self.state.updated = now();
        changes
    }

    /// Item: the global flags, the route check's input interface (the bridge), and the
    /// tunnel ports (the well-known ones, the host's tunnel devices', the configured).
    fn apply_global_config(&mut self, discovery: &Discovery) -> Result<()> {
        let o = &self.state.options;
        // The exceptions item owns its flag (on exactly while entries are installed).
        let mut flags = self.maps.config()?.flags & GLOBAL_FLAG_EXCEPTIONS;
        for (on, flag) in [
            (o.strict_mac, GLOBAL_FLAG_STRICT_MAC),
            (o.monitor, GLOBAL_FLAG_MONITOR),
            (o.allow_tunnels, GLOBAL_FLAG_ALLOW_TUNNELS),
            (!o.route_check, GLOBAL_FLAG_NO_ROUTE_CHECK),
            (o.replies, GLOBAL_FLAG_REPLIES),
            (fib_skips_neigh(), GLOBAL_FLAG_FIB_SKIP_NEIGH),
        ] {
            if on {
                flags |= flag;
            }
        }
        let cfg = GlobalConfig {
            flags,
            event_rate: o.event_rate.unwrap_or(DEFAULT_EVENT_RATE),
            bridge_ifindex: discovery.bridge.index,
            generation: 0,
        };
        if self.maps.config()? != cfg {
            self.maps.set_config(cfg)?;
        }
        let ports: BTreeSet<u16> = DEFAULT_TUNNEL_PORTS
            .iter()
            .copied()
            .chain(discovery.tunnel_ports())
            .chain(o.tunnel_ports.iter().copied())
            .collect();
        let mut set = Box::new(PortSet::new());
        for p in &ports {
            set.insert(*p);
        }
        if *self.maps.tunnel_ports()? != *set {
            self.maps.set_tunnel_ports(&set)?;
        }
        self.state.tunnel_ports = ports.into_iter().collect();
        Ok(())
    }

    /// Item: the reply recorder on the bridge device's TC egress, hooked while replies are
    /// on (swapped to freshly loaded programs, moved when the bridge was re-created), removed
    /// when they are turned off.
    fn apply_replies(&mut self, discovery: &Discovery) -> Result<()> {
        let bridge = &discovery.bridge;
        let current = self.state.reply_hook.take();
        if let Some(h) = &current
            && (!self.state.options.replies || h.ifindex != bridge.index)
        {
            hook::unhook_reply(&self.loc, h.ifindex, &h.name, h.mode);
        }
        if !self.state.options.replies {
            return Ok(());
        }
        let same = current.filter(|h| h.ifindex == bridge.index);
        if same.is_some() && self.progs.is_pinned() {
            // The pinned program is already behind the hook.
            self.state.reply_hook = same;
            return Ok(());
        }
        let target = Target {
            ifindex: bridge.index,
            name: bridge.name.clone(),
            is_bridge: true,
        };
        let mode = hook::hook_reply(&mut self.progs, &self.loc, &target, same.map(|h| h.mode))?;
        self.state.reply_hook = Some(ReplyHook {
            ifindex: bridge.index,
            name: bridge.name.clone(),
            mode,
        });
        Ok(())
    }

    /// Item: the interfaces the route check lets guests be routed out of: the bridge (back
    /// to the guests) and the uplinks (configured, or those carrying a default route). Marks
    /// are added before stale ones are cleared.
    fn apply_egress(&mut self, discovery: &Discovery) -> Result<()> {
        let mut want: BTreeMap<u32, String> = BTreeMap::new();
        want.insert(discovery.bridge.index, discovery.bridge.name.clone());
        let uplinks = &self.state.options.uplinks;
        if uplinks.is_empty() {
            for i in discovery.uplinks() {
                if let Some(iface) = discovery.iface(i) {
                    want.insert(i, iface.name.clone());
                }
            }
        } else {
            for name in uplinks {
                let iface = discovery
                    .ifaces
                    .iter()
                    .find(|i| &i.name == name)
                    .ok_or_else(|| GuardError::NoSuchInterface(name.clone()))?;
                want.insert(iface.index, iface.name.clone());
            }
        }
        for &ifindex in want.keys() {
            let mut cfg = self.maps.port(ifindex)?;
            if cfg.flags & PORT_FLAG_EGRESS_OK == 0 {
                cfg.flags |= PORT_FLAG_EGRESS_OK;
                self.maps.set_port(ifindex, cfg)?;
            }
        }
        let stale: Vec<u32> = self
            .state
            .egress
            .keys()
            .filter(|i| !want.contains_key(i))
            .copied()
            .collect();
        for ifindex in stale {
            let mut cfg = self.maps.port(ifindex)?;
            if cfg.flags & PORT_FLAG_EGRESS_OK != 0 {
                cfg.flags &= !PORT_FLAG_EGRESS_OK;
                self.maps.set_port(ifindex, cfg)?;
            }
        }
        self.state.egress = want;
        Ok(())
    }

    /// Item: the host MAC set, discovered plus configured. Returns whether it changed.
    fn apply_host_macs(&mut self, discovery: &Discovery, settings: &Settings) -> Result<bool> {
        let mut macs: BTreeMap<Mac, String> = discovery
            .host_macs
            .iter()
            .map(|(m, s)| (Mac(*m), s.to_string()))
            .collect();
        for mac in &settings.extra_macs {
            macs.entry(*mac).or_insert_with(|| "config".to_owned());
        }
        let set: BTreeSet<Mac> = macs.keys().copied().collect();
        let before: BTreeSet<Mac> = self.maps.mac_table()?.macs().map(Mac).collect();
        let changed = before != set;
        if changed {
            self.maps.set_host_macs(&set)?;
        }
        self.state.host_macs = macs
            .iter()
            .map(|(m, s)| (m.to_string(), s.clone()))
            .collect();
        Ok(changed)
    }

    /// Item: the exceptions, resolved now: a VM to the ports libvirt says are its taps, a
    /// port by name, each with the bridge's own ifindex for the backstop (see `exception`).
    /// Rule ids are kept across reconciles and share the prefix rules' id space. Returns
    /// the map writes.
    fn apply_exceptions(&mut self, discovery: &Discovery) -> Result<usize> {
        let specs = exception::desired(&self.state.options, &self.state.edits);
        let taps = identity::libvirt_taps(&identity::libvirt_run_dir());
        let ports: Vec<PortRef> = discovery
            .ports
            .iter()
            .map(|p| PortRef {
                ifindex: p.index,
                name: p.name.clone(),
            })
            .collect();
        let bridge = PortRef {
            ifindex: discovery.bridge.index,
            name: discovery.bridge.name.clone(),
        };
        let prefix_ids: BTreeSet<u32> = self.maps.rules()?.values().map(|v| v.rule_id).collect();
        let (ids, fresh) = exception::assign_ids(&specs, &self.state.exceptions, &prefix_ids)?;
        let resolved: Vec<Vec<PortRef>> = specs
            .iter()
            .map(|s| exception::resolve(s, &ports, &taps, &bridge))
            .collect();
        let scopes: Vec<Vec<u32>> = resolved
            .iter()
            .map(|r| r.iter().map(|p| p.ifindex).collect())
            .collect();
        let entries = exception::entries(
            specs
                .iter()
                .zip(&ids)
                .zip(&scopes)
                .map(|((s, id), sc)| (s, *id, sc.as_slice())),
            &mut self.state.classes,
        );
        // A fresh id may have hits left from a rule deleted earlier; zero them before the
        // entries that count into them go in.
        for id in &fresh {
            self.maps.reset_rule_hits(*id)?;
        }
        let writes = self.maps.set_exceptions(&entries)?;
        self.state.exceptions = specs
            .into_iter()
            .zip(ids)
            .zip(scopes.into_iter().zip(resolved))
            .map(|((spec, rule_id), (scopes, r))| ExceptionState {
                spec,
                rule_id,
                scopes,
                ports: r.into_iter().map(|p| p.name).collect(),
            })
            .collect();
        Ok(writes)
    }

    /// Item: the policy (window-free order, see `policy::plan`). Returns the map writes.
    fn apply_policy(&mut self, policy: &Policy) -> Result<usize> {
        let writes = self.maps.set_policy(policy, &mut self.state.classes)?;
        self.state.policy = policy.clone();
        Ok(writes)
    }
}
