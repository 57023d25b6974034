//! `guardctl detach`, and the state edits that need no kernel change.

use crate::{
    error::Result,
    options::HookMode,
    pins::{Location, check_bpffs_visible},
    state::State,
    sys::{bpf, caps::check_privileges, hook},
};

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
            hook::remove_tc_filter(&port.name);
        }
        if let Some(h) = &state.reply_hook {
            hook::unhook_reply(loc, h.ifindex, &h.name, h.mode);
        }
    }
    for (_, _, path) in loc.link_pins()? {
        bpf::release_link_pin(&path);
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
