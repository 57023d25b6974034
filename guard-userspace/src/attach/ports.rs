//! Carries out the port plan (`port_plan`): releases, table entries and hooks, one port at a
//! time, through `sys::hook`.

use guard_common::PortConfig;

use super::{
    Changes, Guard,
    port_plan::{self, ADOPTED, HookStep, PortStep},
};
use crate::{
    attach::{SharedXdp, foreign_xdp},
    discovery::Discovery,
    error::{GuardError, Result, error_chain},
    options::{HookMode, Settings},
    state::{Item, PortState},
    sys::hook,
};

impl Guard {
    /// Items: every port, plus the bridge device itself (the backstop, unless turned off).
    /// Ports that left are released first (a port that left the bridge must not keep a slot).
    pub(super) fn apply_ports(
        &mut self,
        discovery: &Discovery,
        settings: &Settings,
        changes: &mut Changes,
    ) {
        let wanted = port_plan::targets(discovery, self.state.options.bridge_hook);
        let loc = &self.loc;
        let plan = port_plan::plan(&self.state.ports, &wanted, settings, |mode, ifindex| {
            loc.link_pin(mode.pin_name(), ifindex).exists()
        });
        for r in plan.release {
            self.state.ports.remove(&r.ifindex);
            hook::unhook(&self.loc, r.ifindex, &r.port);
            if let Err(e) = self.maps.clear_port(r.ifindex) {
                changes.failures.push((
                    Item::Port {
                        name: r.port.name.clone(),
                        ifindex: r.ifindex,
                    },
                    e,
                ));
            }
            changes.unhooked.push(r.port.name);
        }
        for step in plan.ports {
            let xdp_prog = discovery
                .ports
                .iter()
                .find(|p| p.index == step.target.ifindex)
                .and_then(|p| p.xdp_prog);
            if let Err(e) = self.apply_port(&step, xdp_prog, changes) {
                changes.failures.push((
                    Item::Port {
                        name: step.target.name.clone(),
                        ifindex: step.target.ifindex,
                    },
                    e,
                ));
            }
        }
    }

    /// Item: one port's table entry and hook. A new port that cannot be hooked gives its
    /// slot back; a known one keeps its hook (and so the program it had). `xdp_prog` is the
    /// program discovery found on its XDP hook.
    fn apply_port(
        &mut self,
        step: &PortStep,
        xdp_prog: Option<u32>,
        changes: &mut Changes,
    ) -> Result<()> {
        let t = &step.target;
        let slot = if let Some(p) = &step.known {
            p.slot
        } else {
            let slot = port_plan::free_slot(&self.state.ports)?;
            self.maps.reset_counters(slot)?;
            slot
        };
        let port_cfg = PortConfig {
            slot,
            flags: step.flags(),
        };
        if self.maps.port(t.ifindex)? != port_cfg {
            self.maps.set_port(t.ifindex, port_cfg)?;
        }
        let (mode, fallback) = match self.run_hook(step, xdp_prog) {
            Ok(v) => v,
            Err(e) => {
                if step.known.is_none() {
                    let _ = self.maps.clear_port(t.ifindex);
                }
                return Err(e);
            }
        };
        let outcome = step.outcome(mode);
        if outcome.hooked {
            changes
                .hooked
                .push((t.name.clone(), mode, fallback.clone()));
        }
        if let Some(old) = outcome.unhook_old {
            // Changed hook type: the new hook is in place, now drop the old one.
            hook::unhook(&self.loc, t.ifindex, old);
        }
        self.state.ports.insert(
            t.ifindex,
            PortState {
                name: t.name.clone(),
                slot,
                mode,
                fallback,
                is_bridge: t.is_bridge,
            },
        );
        Ok(())
    }

    /// Puts the step's hook in place: returns the mode and why it is not the first choice.
    ///
    /// A new hook whose first choice is XDP is not put on a port whose XDP hook another
    /// program holds (`xdp_prog`, or an XDP attach answered `EBUSY`/`EEXIST`): the port fails
    /// rather than fall back to TC, so that `status` says XDP is not in force there.
    /// A hook guard already has (swap, adopt) stays whatever shares the port.
    fn run_hook(
        &mut self,
        step: &PortStep,
        xdp_prog: Option<u32>,
    ) -> Result<(HookMode, Option<String>)> {
        let t = &step.target;
        match &step.hook {
            HookStep::Swap { mode, fallback } => {
                hook::swap(&mut self.progs, &self.loc, t, *mode)?;
                Ok((*mode, fallback.clone()))
            }
            HookStep::Adopt { mode } => {
                hook::swap(&mut self.progs, &self.loc, t, *mode)?;
                Ok((*mode, Some(ADOPTED.to_owned())))
            }
            HookStep::Attach { candidates } => {
                let wants_xdp = candidates.first().is_some_and(|m| m.is_xdp());
                if wants_xdp && let Some(program) = xdp_prog.and_then(foreign_xdp) {
                    return Err(GuardError::SharedXdpHook(vec![SharedXdp {
                        port: t.name.clone(),
                        program,
                    }]));
                }
                let mut refused = Vec::new();
                for &mode in *candidates {
                    match hook::attach(&mut self.progs, &self.loc, t, mode) {
                        Ok(()) => {
                            let fallback = (!refused.is_empty()).then(|| refused.join("; "));
                            if let Some(f) = &fallback {
                                log::warn!("{}: hooked in {mode} mode ({f})", t.name);
                            }
                            return Ok((mode, fallback));
                        }
                        // dev_xdp_attach: EBUSY for a second program, EEXIST for native
                        // while generic is in use (or the reverse).
                        Err(e) if mode.is_xdp() && hook_taken(&e) => {
                            return Err(GuardError::XdpHookBusy {
                                port: t.name.clone(),
                                reason: format!("{mode} refused: {}", error_chain(&e)),
                            });
                        }
                        Err(e) => refused.push(format!("{mode} refused: {}", error_chain(&e))),
                    }
                }
                Err(GuardError::PortRefused {
                    port: t.name.clone(),
                    reasons: refused.join("; "),
                })
            }
        }
    }
}

/// Did the kernel refuse an XDP attach because the hook is taken?
fn hook_taken(e: &GuardError) -> bool {
    let mut src: Option<&dyn std::error::Error> = Some(e);
    while let Some(inner) = src {
        if let Some(io) = inner.downcast_ref::<std::io::Error>()
            && matches!(io.raw_os_error(), Some(libc::EBUSY | libc::EEXIST))
        {
            return true;
        }
        src = inner.source();
    }
    false
}
