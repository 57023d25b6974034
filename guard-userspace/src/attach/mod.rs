//! Attaching, re-attaching and detaching a bridge.
//!
//! An attach is: discover (fail before touching anything if the bridge is missing or not a
//! bridge, or the policy is contradictory) -> load the programs with the maps pinned under the
//! bridge's pin directory (reusing maps already pinned there, so counters keep counting) ->
//! fill the maps -> hook every port, reusing a pinned link with `BPF_LINK_UPDATE` where one
//! exists (the kernel swaps the program atomically: no frame passes unjudged) -> pin programs
//! and links -> record the state. A first attach that fails part way removes everything it
//! made.
//!
//! - `port_plan`: the port decisions (hook, swap, adopt, unhook), pure and unit-tested;
//! - `ports`: carries the plan out; `reconcile`: the other items of a reconcile;
//! - `detach`: `guardctl detach`; the kernel calls themselves are `crate::sys`.

mod detach;
pub mod port_plan;
mod ports;
mod reconcile;

use std::fs;

use crate::{
    EBPF_OBJECT,
    discovery::Discovery,
    error::{GuardError, Result},
    layout,
    maps::GuardMaps,
    options::{HookMode, Options},
    pins::{Location, check_bpffs_visible, ensure_bpffs},
    policy::Policy,
    state::{Item, State, now},
    sys::{hook, programs::Programs},
};

pub use self::detach::{AGENT_EXIT_TIMEOUT, Detached, detach, modify_state};
pub use crate::{
    error::error_chain,
    sys::{
        caps::check_privileges,
        kernel::fib_skips_neigh,
        xdp_peer::{LIBXDP_DISPATCHER, SharedXdp, XdpProgram, foreign_xdp, is_guard_xdp},
    },
};

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

/// An attached (or being attached) bridge.
pub struct Guard {
    loc: Location,
    /// The state as of the last change this process made or read (the file is the truth:
    /// [`Guard::update`] re-reads it under the lock before every change).
    state: State,
    maps: GuardMaps,
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
        let result = if reuse_progs {
            GuardMaps::open(loc).and_then(|maps| Ok((maps, Programs::from_pins(loc)?)))
        } else {
            Programs::load(loc, object, &mut upgrade)
        };
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
    /// (the bridge device's backstop aside), is rolled back and returns that error; a port
    /// that refuses every hook is reported and the others stay guarded.
    ///
    /// When the hook asked for is XDP and another program holds the XDP hook of any port
    /// ([`shared_xdp`]), the attach is refused before anything changes
    /// ([`GuardError::SharedXdpHook`]): guard never replaces that program, and falling back
    /// to TC on that port alone would hide that the hook asked for is not the one in force.
    pub fn attach(
        loc: &Location,
        options: Options,
        discovery: &Discovery,
        object: &[u8],
    ) -> Result<(Self, Changes)> {
        Self::attach_with(loc, options, discovery, object, true)
    }

    /// [`Guard::attach`] for the agent (`guardctl run`): a port whose XDP hook another
    /// program holds fails as its own item (reported, in `status`), and the other ports and
    /// the bridge device's backstop are still hooked. The agent keeps guarding what it can
    /// rather than exit and leave every port unguarded.
    pub fn attach_per_port(
        loc: &Location,
        options: Options,
        discovery: &Discovery,
        object: &[u8],
    ) -> Result<(Self, Changes)> {
        Self::attach_with(loc, options, discovery, object, false)
    }

    fn attach_with(
        loc: &Location,
        options: Options,
        discovery: &Discovery,
        object: &[u8],
        refuse_shared_xdp: bool,
    ) -> Result<(Self, Changes)> {
        check_privileges()?;
        // Validate everything that can be validated before touching the kernel.
        let settings = options.settings()?;
        if refuse_shared_xdp
            && settings
                .hook
                .candidates()
                .first()
                .is_some_and(|m| m.is_xdp())
        {
            let shared = shared_xdp(discovery);
            if !shared.is_empty() {
                return Err(GuardError::SharedXdpHook(shared));
            }
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

    /// Where the bridge's pins and state live.
    #[must_use]
    pub const fn loc(&self) -> &Location {
        &self.loc
    }

    /// The state as of the last change this process made or read.
    #[must_use]
    pub const fn state(&self) -> &State {
        &self.state
    }

    /// The bridge's maps.
    #[must_use]
    pub const fn maps(&self) -> &GuardMaps {
        &self.maps
    }

    /// Pins freshly loaded programs (see `Programs::pin`). Maps that changed layout go under
    /// their names first (the new programs run on the hooks by now).
    fn pin_programs(&mut self) -> Result<()> {
        if self.progs.is_pinned() {
            return Ok(());
        }
        if let Some(plan) = self.upgrade.take() {
            layout::promote(&self.loc, &plan)?;
        }
        self.progs.pin(&self.loc)
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
            hook::unhook(&self.loc, *ifindex, port);
        }
        if let Some(h) = &self.state.reply_hook {
            hook::unhook_reply(&self.loc, h.ifindex, &h.name, h.mode);
        }
        let _ = self.loc.remove_all();
    }
}

/// The bridge's ports whose XDP hook holds a program that is not guard's (as discovered).
#[must_use]
pub fn shared_xdp(discovery: &Discovery) -> Vec<SharedXdp> {
    discovery
        .ports
        .iter()
        .filter_map(|p| {
            let program = foreign_xdp(p.xdp_prog?)?;
            Some(SharedXdp {
                port: p.name.clone(),
                program,
            })
        })
        .collect()
}

/// The default object: the release build embedded in this binary.
#[must_use]
pub fn embedded_object() -> &'static [u8] {
    EBPF_OBJECT
}
