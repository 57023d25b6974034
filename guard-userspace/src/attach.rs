//! Attaching, re-attaching and detaching a bridge.
//!
//! An attach is: discover (fail before touching anything if the bridge is missing or not a
//! bridge, or the policy is contradictory) -> load the programs with the maps pinned under the
//! bridge's pin directory (reusing maps already pinned there, so counters keep counting) ->
//! fill the maps -> hook every port, reusing a pinned link with `BPF_LINK_UPDATE` where one
//! exists (the kernel swaps the program atomically: no frame passes unjudged) -> pin programs
//! and links -> record the state. A first attach that fails part way removes everything it
//! made.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs, io,
};

use aya::{
    Ebpf, EbpfLoader,
    programs::{
        LinkOrder, ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
        xdp::XdpLink,
    },
};
use guard_common::{
    DEFAULT_TUNNEL_PORTS, GLOBAL_FLAG_ALLOW_TUNNELS, GLOBAL_FLAG_FIB_SKIP_NEIGH,
    GLOBAL_FLAG_MONITOR, GLOBAL_FLAG_NO_ROUTE_CHECK, GLOBAL_FLAG_STRICT_MAC, GlobalConfig,
    MAX_PORT_SLOTS, Mac, PORT_FLAG_EGRESS_OK, PORT_FLAG_MONITOR, PortConfig, PortSet,
    event::DEFAULT_EVENT_RATE, map_names, program_names,
};

use crate::{
    EBPF_OBJECT,
    discovery::{Discovery, Iface},
    error::{GuardError, Result},
    layout,
    maps::GuardMaps,
    options::{Hook, HookMode, Options},
    pins::{Location, check_bpffs_visible, ensure_bpffs},
    policy::Policy,
    state::{Failure, Item, PortState, State, now},
};

/// Priority and handle of guard's `cls_bpf` filter in `--hook tc` mode (fixed, so a later
/// attach finds and replaces it atomically).
const TC_PRIORITY: u16 = 0x4755;
const TC_HANDLE: TcHandle = TcHandle::new(0x4755, 1);

/// A cheap identity of the embedded object: a new build gets new programs on attach, the
/// same build reuses the pinned ones.
#[must_use]
pub fn object_id(object: &[u8]) -> String {
    // FNV-1a, 64 bit: identity, not security.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in object {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}-{}", object.len())
}

/// Checks for the privileges attaching needs, before anything is touched.
pub fn check_privileges() -> Result<()> {
    // SAFETY: no arguments, cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return Ok(());
    }
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| eff & (1 << cap) != 0;
    // CAP_NET_ADMIN = 12, CAP_SYS_ADMIN = 21, CAP_BPF = 39.
    if has(12) && (has(39) || has(21)) {
        Ok(())
    } else {
        Err(GuardError::Permission(
            "not root and without CAP_BPF and CAP_NET_ADMIN".to_owned(),
        ))
    }
}

/// The programs, freshly loaded or opened from their pins.
enum Programs {
    Loaded(Box<Ebpf>),
    Pinned {
        xdp: Box<Xdp>,
        tc: Box<SchedClassifier>,
        bridge: Box<SchedClassifier>,
    },
}

/// The pin names of the programs (`prog_<name>`).
const PROGRAM_PINS: [&str; 3] = ["xdp", "tc", "bridge"];

impl Programs {
    fn xdp(&mut self) -> Result<&mut Xdp> {
        match self {
            Self::Loaded(ebpf) => ebpf
                .program_mut(program_names::XDP)
                .ok_or_else(|| GuardError::program(program_names::XDP, missing()))?
                .try_into()
                .map_err(|e| GuardError::program(program_names::XDP, e)),
            Self::Pinned { xdp, .. } => Ok(xdp),
        }
    }

    /// A TC program: the bridge device's backstop, or a port's.
    fn tc_for(&mut self, is_bridge: bool) -> Result<&mut SchedClassifier> {
        let name = tc_name(is_bridge);
        match self {
            Self::Loaded(ebpf) => ebpf
                .program_mut(name)
                .ok_or_else(|| GuardError::program(name, missing()))?
                .try_into()
                .map_err(|e| GuardError::program(name, e)),
            Self::Pinned { bridge, .. } if is_bridge => Ok(bridge),
            Self::Pinned { tc, .. } => Ok(tc),
        }
    }
}

const fn tc_name(is_bridge: bool) -> &'static str {
    if is_bridge {
        program_names::BRIDGE
    } else {
        program_names::TC
    }
}

impl Programs {
    /// The programs pinned for `loc`.
    fn from_pins(loc: &Location) -> Result<Self> {
        let xdp = Xdp::from_pin(
            loc.prog_pin("xdp"),
            aya_obj::programs::XdpAttachType::Interface,
        )
        .map_err(|e| GuardError::program(program_names::XDP, e))?;
        let tc = SchedClassifier::from_pin(loc.prog_pin("tc"))
            .map_err(|e| GuardError::program(program_names::TC, e))?;
        let bridge = SchedClassifier::from_pin(loc.prog_pin("bridge"))
            .map_err(|e| GuardError::program(program_names::BRIDGE, e))?;
        Ok(Self::Pinned {
            xdp: Box::new(xdp),
            tc: Box::new(tc),
            bridge: Box::new(bridge),
        })
    }

    /// Are all the programs pinned for `loc`? (A bridge attached by a build without one of
    /// them gets this build's programs.)
    fn all_pinned(loc: &Location) -> bool {
        PROGRAM_PINS.iter().all(|p| loc.prog_pin(p).exists())
    }
}

fn missing() -> ProgramError {
    ProgramError::UnexpectedProgramType
}

/// An attached (or being attached) bridge.
pub struct Guard {
    pub loc: Location,
    /// The state as of the last change this process made or read (the file is the truth:
    /// [`Guard::update`] re-reads it under the lock before every change).
    pub state: State,
    pub maps: GuardMaps,
    progs: Programs,
    /// [`object_id`] of the programs held.
    object_id: String,
    /// Maps this load replaced because their layout changed (see `layout`): promoted to their
    /// pins once the new programs run on the hooks.
    upgrade: Option<layout::Plan>,
}

/// What a reconcile changed, and what it could not apply, for the caller to print.
#[derive(Debug, Default)]
pub struct Changes {
    pub hooked: Vec<(String, HookMode, Option<String>)>,
    pub unhooked: Vec<String>,
    pub rule_writes: usize,
    pub macs_changed: bool,
    /// Items that failed; every other item was still applied.
    pub failures: Vec<(Item, GuardError)>,
}

impl Guard {
    /// Loads (or reuses) the programs and maps for `loc`, whose state (if any) is `old_state`.
    /// The pinned programs are reused when they came from `object`, or, with `keep_pinned`,
    /// whatever build they came from (only an attach replaces programs: a `rules` edit made
    /// with another build must not swap them). Does not hook anything yet. The caller holds
    /// the bridge's lock.
    fn open(
        loc: &Location,
        object: &[u8],
        old_state: Option<State>,
        keep_pinned: bool,
    ) -> Result<(Self, bool)> {
        let existed = loc.is_attached();
        let pin_dir = loc.pin_dir();
        fs::create_dir_all(&pin_dir).map_err(|source| GuardError::Bpffs {
            path: pin_dir.clone(),
            source,
        })?;
        let mut id = object_id(object);
        let reuse_progs = old_state
            .as_ref()
            .is_some_and(|s| keep_pinned || s.object_id == id)
            && Programs::all_pinned(loc);
        if reuse_progs && let Some(s) = &old_state {
            id.clone_from(&s.object_id);
        }
        let mut upgrade = None;
        let result = (|| {
            if reuse_progs {
                return Ok((GuardMaps::open(loc)?, Programs::from_pins(loc)?));
            }
            let mut loader = EbpfLoader::new();
            let plan = layout::plan(loc, object)?;
            let paths: Vec<_> = map_names::ALL
                .iter()
                .map(|n| (*n, plan.pin_path(loc, n)))
                .collect();
            for (name, path) in &paths {
                loader.map_pin_path(name, path.as_path());
            }
            if !plan.replaced.is_empty() {
                upgrade = Some(plan);
            }
            let mut ebpf = loader
                .load(object)
                .map_err(|e| GuardError::Load(Box::new(e)))?;
            let maps = GuardMaps::from_ebpf(&mut ebpf)?;
            let mut progs = Programs::Loaded(Box::new(ebpf));
            progs
                .xdp()?
                .load()
                .map_err(|e| GuardError::program(program_names::XDP, e))?;
            for is_bridge in [false, true] {
                progs
                    .tc_for(is_bridge)?
                    .load()
                    .map_err(|e| GuardError::program(tc_name(is_bridge), e))?;
            }
            Ok((maps, progs))
        })();
        let (maps, progs) = match result {
            Ok(v) => v,
            Err(e) => {
                if let Some(plan) = &upgrade {
                    layout::abandon(loc, plan);
                }
                if !existed {
                    let _ = loc.remove_all();
                }
                return Err(e);
            }
        };
        let state = old_state.unwrap_or_else(|| State {
            bridge: loc.bridge.clone(),
            netns: loc.netns.clone(),
            since: now(),
            ..State::default()
        });
        let mut guard = Self {
            loc: loc.clone(),
            state,
            maps,
            progs,
            object_id: id.clone(),
            upgrade,
        };
        guard.state.object_id = id;
        Ok((guard, existed))
    }

    /// `guardctl attach`: attach or re-attach `loc.bridge` with `options`. The options replace
    /// those of an earlier attach; live edits stay (see `state`).
    ///
    /// Every item is applied on its own (see [`Changes::failures`]). A first attach whose
    /// global config, host MAC set or policy cannot be applied, or that hooks no port at all
    /// (the bridge device's backstop aside), is rolled back and returns that error; a port that refuses every hook is reported and
    /// the others stay guarded.
    pub fn attach(
        loc: &Location,
        options: Options,
        discovery: &Discovery,
        object: &[u8],
    ) -> Result<(Self, Changes)> {
        check_privileges()?;
        // Validate everything that can be validated before touching the kernel.
        Hook::parse(&options.hook)?;
        for m in &options.extra_macs {
            m.parse::<Mac>()
                .map_err(|_| GuardError::Policy(format!("{m:?} is not a MAC address")))?;
        }
        ensure_bpffs(loc.run_root())?;
        let _lock = loc.lock()?;
        let old_state = if loc.is_attached() {
            State::load(loc)?
        } else {
            None
        };
        let edits = old_state
            .as_ref()
            .map(|s| s.edits.clone())
            .unwrap_or_default();
        let policy = Policy::build(&options, &edits, discovery)?;
        let (mut guard, existed) = Self::open(loc, object, old_state, false)?;
        guard.state.options = options;
        guard.state.detaching = false;
        let changes = guard.reconcile_with(discovery, Ok(policy));
        let fatal = changes
            .failures
            .iter()
            .position(|(item, _)| !matches!(item, Item::Port { .. }))
            .or_else(|| {
                // No port hooked (the bridge device's backstop does not count: guard is
                // meant to be on the ports).
                let no_port = guard.state.ports.values().all(|p| p.is_bridge);
                (no_port && !changes.failures.is_empty()).then_some(0)
            });
        if let (Some(i), false) = (fatal, existed) {
            let mut changes = changes;
            let (_, e) = changes.failures.swap_remove(i);
            guard.teardown();
            return Err(e);
        }
        if let Err(e) = guard.pin_programs().and_then(|()| guard.save()) {
            if existed {
                guard.abandon_upgrade();
            } else {
                guard.teardown();
            }
            return Err(e);
        }
        Ok((guard, changes))
    }

    /// Opens an attached bridge (for `rules`, ...) with the programs pinned for it, whatever
    /// build they came from: only an attach replaces programs.
    pub fn adopt(loc: &Location, object: &[u8]) -> Result<Self> {
        check_bpffs_visible(loc.run_root())?;
        let _lock = loc.lock()?;
        let state = match State::load(loc)? {
            Some(s) if loc.is_attached() && !s.detaching => s,
            _ => return Err(GuardError::NotAttached(loc.bridge.clone())),
        };
        let (guard, _) = Self::open(loc, object, Some(state), true)?;
        Ok(guard)
    }

    /// The one way every verb and the agent change an attached bridge: under the bridge's
    /// lock, re-read the state (so a change someone else made in between is kept, never
    /// overwritten), let `edit` change it, then bring maps and hooks in line with it and
    /// `discovery`, and save it. Fails without changing anything when the bridge is no longer
    /// attached (or is being detached), or when `edit` fails.
    pub fn update(
        &mut self,
        discovery: &Discovery,
        edit: impl FnOnce(&mut State) -> Result<()>,
    ) -> Result<Changes> {
        let _lock = self.loc.lock()?;
        self.state = match State::load(&self.loc)? {
            Some(s) if self.loc.is_attached() && !s.detaching => s,
            _ => return Err(GuardError::NotAttached(self.loc.bridge.clone())),
        };
        if self.state.object_id != self.object_id && Programs::all_pinned(&self.loc) {
            // An attach of another build replaced the programs since we opened them (an
            // upgrade while the agent runs): use those rather than swap ours back in.
            self.progs = Programs::from_pins(&self.loc)?;
            self.object_id.clone_from(&self.state.object_id);
        }
        edit(&mut self.state)?;
        let policy = Policy::build(&self.state.options, &self.state.edits, discovery);
        let changes = self.reconcile_with(discovery, policy);
        if let Err(e) = self.pin_programs() {
            self.abandon_upgrade();
            return Err(e);
        }
        self.save()?;
        Ok(changes)
    }

    /// Drops the staging pins of a map upgrade that did not complete; the old maps stay.
    fn abandon_upgrade(&mut self) {
        if let Some(plan) = self.upgrade.take() {
            layout::abandon(&self.loc, &plan);
        }
    }

    /// Brings the maps and hooks in line with the state and `discovery`, one item at a time
    /// (global config, host MACs, policy, then each port): an item that fails leaves what
    /// was in force for it, is reported in [`Changes::failures`] and in the state, and the
    /// next items still run.
    fn reconcile_with(&mut self, discovery: &Discovery, policy: Result<Policy>) -> Changes {
        let mut changes = Changes::default();
        if let Err(e) = self.apply_global_config(discovery) {
            changes.failures.push((Item::GlobalConfig, e));
        }
        match self.apply_host_macs(discovery) {
            Ok(macs_changed) => changes.macs_changed = macs_changed,
            Err(e) => changes.failures.push((Item::HostMacs, e)),
        }
        match policy.and_then(|p| self.apply_policy(&p)) {
            Ok(writes) => changes.rule_writes = writes,
            Err(e) => changes.failures.push((Item::Policy, e)),
        }
        self.apply_ports(discovery, &mut changes);
        if let Err(e) = self.apply_egress(discovery) {
            changes.failures.push((Item::Egress, e));
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
        let mut flags = 0;
        for (on, flag) in [
            (o.strict_mac, GLOBAL_FLAG_STRICT_MAC),
            (o.monitor, GLOBAL_FLAG_MONITOR),
            (o.allow_tunnels, GLOBAL_FLAG_ALLOW_TUNNELS),
            (!o.route_check, GLOBAL_FLAG_NO_ROUTE_CHECK),
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
            reserved: 0,
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
    fn apply_host_macs(&mut self, discovery: &Discovery) -> Result<bool> {
        let mut macs: BTreeMap<Mac, String> = discovery
            .host_macs
            .iter()
            .map(|(m, s)| (Mac(*m), s.to_string()))
            .collect();
        for m in &self.state.options.extra_macs {
            if let Ok(mac) = m.parse::<Mac>() {
                macs.entry(mac).or_insert_with(|| "config".to_owned());
            }
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

    /// Item: the policy (window-free order, see `policy::plan`). Returns the map writes.
    fn apply_policy(&mut self, policy: &Policy) -> Result<usize> {
        let writes = self.maps.set_policy(policy, &mut self.state.classes)?;
        self.state.policy = policy.clone();
        Ok(writes)
    }

    /// Items: every port, plus the bridge device itself (the backstop, unless turned off). Ports that left
    /// are released first (a port that left the bridge must not keep a slot).
    fn apply_ports(&mut self, discovery: &Discovery, changes: &mut Changes) {
        let o = self.state.options.clone();
        let hook = match Hook::parse(&o.hook) {
            Ok(h) => h,
            Err(e) => {
                changes.failures.push((Item::GlobalConfig, e));
                return;
            }
        };
        let mut wanted: Vec<(Iface, bool)> =
            discovery.ports.iter().map(|p| (p.clone(), false)).collect();
        if o.bridge_hook {
            wanted.push((discovery.bridge.clone(), true));
        }
        let wanted_idx: BTreeSet<u32> = wanted.iter().map(|(i, _)| i.index).collect();
        let gone: Vec<u32> = self
            .state
            .ports
            .keys()
            .filter(|i| !wanted_idx.contains(i))
            .copied()
            .collect();
        for ifindex in gone {
            if let Some(p) = self.state.ports.remove(&ifindex) {
                self.unhook(ifindex, &p);
                if let Err(e) = self.maps.clear_port(ifindex) {
                    changes.failures.push((
                        Item::Port {
                            name: p.name.clone(),
                            ifindex,
                        },
                        e,
                    ));
                }
                changes.unhooked.push(p.name);
            }
        }
        for (iface, is_bridge) in wanted {
            // The backstop cannot tell which port a frame came through: while any port only
            // monitors, it monitors too, or it would drop what that port let through.
            let monitor =
                o.monitor_ports.contains(&iface.name) || (is_bridge && !o.monitor_ports.is_empty());
            if let Err(e) = self.apply_port(&iface, is_bridge, monitor, hook, changes) {
                changes.failures.push((
                    Item::Port {
                        name: iface.name.clone(),
                        ifindex: iface.index,
                    },
                    e,
                ));
            }
        }
    }

    /// Item: one port's table entry and hook. A new port that cannot be hooked gives its
    /// slot back; a known one keeps its hook (and so the program it had).
    fn apply_port(
        &mut self,
        iface: &Iface,
        is_bridge: bool,
        monitor: bool,
        hook: Hook,
        changes: &mut Changes,
    ) -> Result<()> {
        let known = self.state.ports.get(&iface.index).cloned();
        let slot = if let Some(p) = &known {
            p.slot
        } else {
            let slot = self.free_slot()?;
            self.maps.reset_counters(slot)?;
            slot
        };
        let mut flags = if monitor { PORT_FLAG_MONITOR } else { 0 };
        if is_bridge {
            // The bridge is also where the route check lets guests be routed (back to them).
            flags |= PORT_FLAG_EGRESS_OK;
        }
        let port_cfg = PortConfig { slot, flags };
        if self.maps.port(iface.index)? != port_cfg {
            self.maps.set_port(iface.index, port_cfg)?;
        }
        // Hook (or swap the program in the existing hook).
        let (mode, fallback) = match self.hook(iface, is_bridge, hook, known.as_ref()) {
            Ok(v) => v,
            Err(e) => {
                if known.is_none() {
                    let _ = self.maps.clear_port(iface.index);
                }
                return Err(e);
            }
        };
        if known.as_ref().is_none_or(|k| k.mode != mode) {
            changes
                .hooked
                .push((iface.name.clone(), mode, fallback.clone()));
        }
        if let Some(k) = &known
            && k.mode.pin_name() != mode.pin_name()
        {
            // Changed hook type: the new hook is in place, now drop the old one.
            self.unhook(iface.index, k);
        }
        self.state.ports.insert(
            iface.index,
            PortState {
                name: iface.name.clone(),
                slot,
                mode,
                fallback,
                is_bridge,
            },
        );
        Ok(())
    }

    fn free_slot(&self) -> Result<u32> {
        let used: BTreeSet<u32> = self.state.ports.values().map(|p| p.slot).collect();
        (1..MAX_PORT_SLOTS)
            .find(|s| !used.contains(s))
            .ok_or_else(|| GuardError::Policy(format!("more than {} ports", MAX_PORT_SLOTS - 1)))
    }

    /// Hooks one interface. With a hook already in place of the same kind, swaps the program
    /// atomically instead; else tries the candidate modes in order.
    fn hook(
        &mut self,
        iface: &Iface,
        is_bridge: bool,
        hook: Hook,
        known: Option<&PortState>,
    ) -> Result<(HookMode, Option<String>)> {
        // The bridge device sees only frames the bridge passes up; XDP there is generic-only
        // and TC is the documented hook (../shared/docs/toolchain.md). It runs the backstop
        // program (`guard_bridge`), which judges every frame without the host MAC table.
        let candidates: &[HookMode] = if is_bridge {
            &[HookMode::Tcx, HookMode::Tc]
        } else {
            hook.candidates()
        };
        // Keep an existing hook when it is one the request allows (swap the program in
        // place); otherwise hook anew and let the caller remove the old hook afterwards, so
        // the interface is never without one.
        let known = known.filter(|k| candidates.contains(&k.mode));
        if let Some(k) = known
            && k.mode != HookMode::Tc
            && self.loc.link_pin(k.mode.pin_name(), iface.index).exists()
        {
            self.swap(iface, k.mode, is_bridge)?;
            return Ok((k.mode, k.fallback.clone()));
        }
        if let Some(k) = known
            && k.mode == HookMode::Tc
        {
            self.swap(iface, HookMode::Tc, is_bridge)?;
            return Ok((k.mode, k.fallback.clone()));
        }
        if known.is_none() {
            // No record of this interface (state lost, e.g. /run wiped) but a pinned link may
            // still hook it: adopt it rather than hooking twice.
            for &mode in candidates {
                if mode != HookMode::Tc && self.loc.link_pin(mode.pin_name(), iface.index).exists()
                {
                    self.swap(iface, mode, is_bridge)?;
                    return Ok((mode, Some("adopted a pinned link without state".to_owned())));
                }
            }
        }
        let mut refused = Vec::new();
        for &mode in candidates {
            match self.hook_new(iface, mode, is_bridge) {
                Ok(()) => {
                    let fallback = (!refused.is_empty()).then(|| refused.join("; "));
                    if let Some(f) = &fallback {
                        log::warn!("{}: hooked in {mode} mode ({f})", iface.name);
                    }
                    return Ok((mode, fallback));
                }
                Err(e) => refused.push(format!("{mode} refused: {}", error_chain(&e))),
            }
        }
        Err(GuardError::PortRefused {
            port: iface.name.clone(),
            reasons: refused.join("; "),
        })
    }

    fn hook_new(&mut self, iface: &Iface, mode: HookMode, is_bridge: bool) -> Result<()> {
        let pin = self.loc.link_pin(mode.pin_name(), iface.index);
        let fd_link: FdLink = match mode {
            HookMode::XdpNative | HookMode::XdpGeneric => {
                let flags = if mode == HookMode::XdpNative {
                    XdpMode::Driver
                } else {
                    XdpMode::Skb
                };
                let xdp = self.progs.xdp()?;
                let id = xdp
                    .attach_to_if_index(iface.index, flags)
                    .map_err(|e| GuardError::program(program_names::XDP, e))?;
                let link = xdp
                    .take_link(id)
                    .map_err(|e| GuardError::program(program_names::XDP, e))?;
                FdLink::try_from(link).map_err(|e| GuardError::Link {
                    path: pin.clone(),
                    source: Box::new(e),
                })?
            }
            HookMode::Tcx => {
                let tc = self.progs.tc_for(is_bridge)?;
                let id = tc
                    .attach_with_options(
                        &iface.name,
                        TcAttachType::Ingress,
                        TcAttachOptions::TcxOrder(LinkOrder::default()),
                    )
                    .map_err(|e| GuardError::program(program_names::TC, e))?;
                let link = tc
                    .take_link(id)
                    .map_err(|e| GuardError::program(program_names::TC, e))?;
                FdLink::try_from(link).map_err(|e| GuardError::Link {
                    path: pin.clone(),
                    source: Box::new(e),
                })?
            }
            HookMode::Tc => {
                // cls_bpf filters are not bpf links and cannot be pinned: the clsact qdisc
                // holds them, so they survive guardctl's exit on their own.
                match tc::qdisc_add_clsact(&iface.name) {
                    Ok(()) => {}
                    Err(tc::TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {
                    }
                    Err(e) => {
                        return Err(GuardError::program(
                            program_names::TC,
                            ProgramError::from(e),
                        ));
                    }
                }
                let tc = self.progs.tc_for(is_bridge)?;
                let id = tc
                    .attach_with_options(
                        &iface.name,
                        TcAttachType::Ingress,
                        TcAttachOptions::Netlink(NlOptions {
                            priority: TC_PRIORITY,
                            handle: TC_HANDLE,
                            ..NlOptions::default()
                        }),
                    )
                    .map_err(|e| GuardError::program(program_names::TC, e))?;
                let link = tc
                    .take_link(id)
                    .map_err(|e| GuardError::program(program_names::TC, e))?;
                // Dropping the link object would remove the filter.
                std::mem::forget(link);
                return Ok(());
            }
        };
        fd_link.pin(&pin).map_err(|e| GuardError::Pin {
            path: pin.clone(),
            source: Box::new(e),
        })?;
        Ok(())
    }

    /// Replaces the program behind an existing hook, atomically.
    fn swap(&mut self, iface: &Iface, mode: HookMode, is_bridge: bool) -> Result<()> {
        let pin = self.loc.link_pin(mode.pin_name(), iface.index);
        let link_err = |path: &std::path::Path, e| GuardError::Link {
            path: path.to_owned(),
            source: Box::new(e),
        };
        match mode {
            HookMode::XdpNative | HookMode::XdpGeneric => {
                let pinned = PinnedLink::from_pin(&pin).map_err(|e| link_err(&pin, e))?;
                let link =
                    XdpLink::try_from(FdLink::from(pinned)).map_err(|e| link_err(&pin, e))?;
                let xdp = self.progs.xdp()?;
                let id = xdp
                    .attach_to_link(link)
                    .map_err(|e| GuardError::program(program_names::XDP, e))?;
                // The pin keeps the link; our fd can go.
                drop(xdp.take_link(id));
            }
            HookMode::Tcx => {
                let pinned = PinnedLink::from_pin(&pin).map_err(|e| link_err(&pin, e))?;
                let link = SchedClassifierLink::try_from(FdLink::from(pinned))
                    .map_err(|e| link_err(&pin, e))?;
                let tc = self.progs.tc_for(is_bridge)?;
                let id = tc
                    .attach_to_link(link)
                    .map_err(|e| GuardError::program(program_names::TC, e))?;
                drop(tc.take_link(id));
            }
            HookMode::Tc => {
                let link = SchedClassifierLink::attached(
                    &iface.name,
                    TcAttachType::Ingress,
                    TC_PRIORITY,
                    TC_HANDLE,
                    None,
                )
                .map_err(|e| {
                    GuardError::program(
                        program_names::TC,
                        ProgramError::from(tc::TcError::IoError(e)),
                    )
                })?;
                let tc = self.progs.tc_for(is_bridge)?;
                let id = tc
                    .attach_to_link(link)
                    .map_err(|e| GuardError::program(program_names::TC, e))?;
                let link = tc
                    .take_link(id)
                    .map_err(|e| GuardError::program(program_names::TC, e))?;
                std::mem::forget(link);
            }
        }
        Ok(())
    }

    /// Removes the hook of an interface. Best effort: the interface may be gone already
    /// (then the kernel has released its hook with it).
    fn unhook(&self, ifindex: u32, port: &PortState) {
        match port.mode {
            HookMode::Tc => remove_tc_filter(&port.name),
            mode => release_link_pin(&self.loc.link_pin(mode.pin_name(), ifindex)),
        }
    }

    /// Pins freshly loaded programs (replacing the pins of older ones), then holds them
    /// through their pins: pinned once, they are never pinned again by this process. Maps
    /// that changed layout go under their names first (the new programs run on the hooks by
    /// now).
    fn pin_programs(&mut self) -> Result<()> {
        if matches!(self.progs, Programs::Pinned { .. }) {
            return Ok(());
        }
        if let Some(plan) = self.upgrade.take() {
            layout::promote(&self.loc, &plan)?;
        }
        for hook in PROGRAM_PINS {
            let path = self.loc.prog_pin(hook);
            // Pin beside, then rename over the old pin: a reader (`status` takes no lock)
            // never finds the pin missing. bpffs directories implement rename
            // (kernel/bpf/inode.c, bpf_dir_iops); names with a dot are refused there
            // (bpf_lookup), hence `_new`.
            let new = self.loc.prog_pin(&format!("{hook}_new"));
            let _ = fs::remove_file(&new);
            let res = match hook {
                "xdp" => self.progs.xdp()?.pin(&new),
                "tc" => self.progs.tc_for(false)?.pin(&new),
                _ => self.progs.tc_for(true)?.pin(&new),
            };
            res.map_err(|e| GuardError::Pin {
                path: new.clone(),
                source: Box::new(e),
            })?;
            fs::rename(&new, &path).map_err(|source| GuardError::Bpffs { path, source })?;
        }
        self.progs = Programs::from_pins(&self.loc)?;
        Ok(())
    }

    pub fn save(&self) -> Result<()> {
        self.state.save(&self.loc)
    }

    /// Removes every hook, pin and the state. Used for `detach` and to roll back a failed
    /// first attach.
    pub fn teardown(self) {
        if let Some(plan) = &self.upgrade {
            layout::abandon(&self.loc, plan);
        }
        for (ifindex, port) in &self.state.ports {
            self.unhook(*ifindex, port);
        }
        let _ = self.loc.remove_all();
    }
}

/// What `detach` did.
#[derive(Debug, Default)]
pub struct Detached {
    /// Was anything attached?
    pub was_attached: bool,
    /// The agent that followed the bridge: its pid, and whether it exited in time (else it
    /// exits on its next wake-up, when it finds the bridge detached).
    pub agent: Option<(u32, bool)>,
}

/// How long `detach` waits for the agent to exit after SIGTERM.
pub const AGENT_EXIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// `guardctl detach`: idempotent; leaves other bridges alone.
///
/// With an agent following the bridge, the state is first marked as detaching (so the agent
/// neither reconciles again nor claims on exit that the bridge stays protected), the agent is
/// sent SIGTERM and waited for, and only then is everything removed. The agent is told
/// without holding the lock, since it may be waiting for it.
pub fn detach(loc: &Location) -> Result<Detached> {
    check_privileges()?;
    check_bpffs_visible(loc.run_root())?;
    let mut out = Detached::default();
    let agent = {
        let _lock = loc.lock()?;
        match State::load(loc)? {
            Some(mut state) => {
                let agent = state.live_agent();
                if agent.is_some() && !state.detaching {
                    state.detaching = true;
                    state.save(loc)?;
                }
                agent
            }
            None => None,
        }
    };
    if let Some(agent) = agent {
        // SAFETY: kill(2) with a pid whose start time we just matched.
        let rc = unsafe { libc::kill(agent.pid.cast_signed(), libc::SIGTERM) };
        let deadline = std::time::Instant::now() + AGENT_EXIT_TIMEOUT;
        let mut exited = rc != 0 || !agent.is_alive();
        while !exited && std::time::Instant::now() < deadline {
            // A poll with a deadline: the agent is not our child, so there is nothing to
            // wait(2) on.
            std::thread::sleep(std::time::Duration::from_millis(2));
            exited = !agent.is_alive();
        }
        out.agent = Some((agent.pid, exited));
    }
    let _lock = loc.lock()?;
    let state = State::load(loc)?;
    if !loc.is_attached() && state.is_none() {
        return Ok(out);
    }
    out.was_attached = true;
    // cls_bpf filters are not pinned: the state names them.
    if let Some(state) = state {
        for port in state.ports.values().filter(|p| p.mode == HookMode::Tc) {
            remove_tc_filter(&port.name);
        }
    }
    for (_, _, path) in loc.link_pins()? {
        release_link_pin(&path);
    }
    // Removing the pins releases the maps and programs.
    loc.remove_all()?;
    Ok(out)
}

/// Changes the state file of an attached bridge under its lock, without touching the
/// kernel (the agent records itself this way). Returns the state written, or `None` when
/// nothing is attached.
pub fn modify_state(loc: &Location, f: impl FnOnce(&mut State)) -> Result<Option<State>> {
    let _lock = loc.lock()?;
    let Some(mut state) = State::load(loc)? else {
        return Ok(None);
    };
    f(&mut state);
    state.save(loc)?;
    Ok(Some(state))
}

/// Removes guard's `cls_bpf` filter from `port`'s ingress. Best effort, like
/// [`release_link_pin`]: the interface may be gone, and its filters with it.
fn remove_tc_filter(port: &str) {
    // Dropping the link object of an attached filter deletes the filter.
    if let Ok(link) =
        SchedClassifierLink::attached(port, TcAttachType::Ingress, TC_PRIORITY, TC_HANDLE, None)
    {
        drop(link);
    }
}

/// `BPF_OBJ_GET` and `BPF_LINK_DETACH` (`enum bpf_cmd`, include/uapi/linux/bpf.h); aya 0.14
/// wraps neither for a pinned link.
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_DETACH: libc::c_long = 34;

/// Detaches the link pinned at `path` now, then removes the pin. Best effort: the link may
/// be gone already, or defunct because its interface left.
///
/// Removing the pin alone releases the link, but not by the time `unlink` returns: bpffs
/// drops its reference when the inode is freed after an RCU grace period (`bpf_free_inode`),
/// and the last `bpf_link_put` defers the detach to a workqueue (`bpf_link_put_deferred`).
/// Until then the hook keeps judging frames, so `guardctl detach` returned while guard still
/// enforced (measured: frames sent right after a TCX detach were all still dropped).
/// `BPF_LINK_DETACH` (Linux 5.9; XDP and TCX links implement it) unhooks synchronously.
fn release_link_pin(path: &std::path::Path) {
    use std::os::{fd::FromRawFd as _, unix::ffi::OsStrExt as _};
    if let Ok(cpath) = std::ffi::CString::new(path.as_os_str().as_bytes()) {
        // union bpf_attr for BPF_OBJ_GET: pathname (u64), bpf_fd, file_flags, path_fd.
        let mut get = [0u64; 3];
        get[0] = cpath.as_ptr() as u64;
        // SAFETY: `get` is a valid, zero-padded bpf_attr of the size passed; `cpath` outlives
        // the call.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_OBJ_GET,
                get.as_mut_ptr(),
                size_of_val(&get),
            )
        };
        if let Ok(fd) = i32::try_from(fd)
            && fd >= 0
        {
            // SAFETY: a descriptor the kernel just gave us; the OwnedFd closes it.
            let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
            // union bpf_attr for BPF_LINK_DETACH: link_fd.
            let mut detach = [0u32; 4];
            detach[0] = std::os::fd::AsRawFd::as_raw_fd(&fd).cast_unsigned();
            // SAFETY: a valid, zero-padded bpf_attr of the size passed.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    BPF_LINK_DETACH,
                    detach.as_mut_ptr(),
                    size_of_val(&detach),
                )
            };
            if rc != 0 {
                log::debug!(
                    "BPF_LINK_DETACH {}: {}",
                    path.display(),
                    io::Error::last_os_error()
                );
            }
        }
    }
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => log::warn!("removing {}: {e}", path.display()),
    }
}

/// An error and its sources on one line, without the repetition some of aya's errors have
/// (a syscall error's message already ends with its `io::Error`, which is also its source).
#[must_use]
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = vec![e.to_string()];
    let mut src = e.source();
    while let Some(inner) = src {
        let text = inner.to_string();
        match parts.last_mut() {
            Some(last) if text.starts_with(last.as_str()) => *last = text,
            Some(last) if last.contains(&text) => {}
            _ => parts.push(text),
        }
        src = inner.source();
    }
    parts.join(": ")
}

/// Does this kernel take `BPF_FIB_LOOKUP_SKIP_NEIGH` (Linux 6.3, which also made the route
/// lookup report the egress interface of a next hop without a neighbour entry)? An unknown
/// flag fails every lookup with `EINVAL` (and guard then drops every routed frame), so
/// anything that cannot be read says no.
#[must_use]
pub fn fib_skips_neigh() -> bool {
    let Ok(release) = fs::read_to_string("/proc/sys/kernel/osrelease") else {
        return false;
    };
    let mut parts = release.trim().split(['.', '-']);
    let mut next = || parts.next().and_then(|p| p.parse::<u32>().ok());
    matches!((next(), next()), (Some(major), Some(minor)) if (major, minor) >= (6, 3))
}

/// The default object: the release build embedded in this binary.
#[must_use]
pub fn embedded_object() -> &'static [u8] {
    EBPF_OBJECT
}
