//! Hooking an interface (XDP, TCX or a `cls_bpf` filter), swapping the program behind a
//! hook, and removing one. Which of these happens is the port plan's decision
//! (`attach::port_plan`).

use aya::programs::{
    LinkOrder, ProgramError, TcAttachType, XdpMode,
    links::{FdLink, PinnedLink},
    tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
    xdp::XdpLink,
};
use guard_common::program_names;

use super::{bpf::release_link_pin, programs::Programs};
use crate::{
    attach::port_plan::Target,
    error::{GuardError, Result},
    options::HookMode,
    pins::Location,
    state::PortState,
};

/// Priority and handle of guard's `cls_bpf` filter in `--hook tc` mode (fixed, so a later
/// attach finds and replaces it atomically).
const TC_PRIORITY: u16 = 0x4755;
const TC_HANDLE: TcHandle = TcHandle::new(0x4755, 1);

/// Hooks `iface` in `mode` with a new hook (pinned, except `cls_bpf` filters, which the
/// clsact qdisc holds).
pub fn attach(progs: &mut Programs, loc: &Location, iface: &Target, mode: HookMode) -> Result<()> {
    let is_bridge = iface.is_bridge;
    let pin = loc.link_pin(mode.pin_name(), iface.ifindex);
    let fd_link: FdLink = match mode {
        HookMode::XdpNative | HookMode::XdpGeneric => {
            let flags = if mode == HookMode::XdpNative {
                XdpMode::Driver
            } else {
                XdpMode::Skb
            };
            let xdp = progs.xdp()?;
            let id = xdp
                .attach_to_if_index(iface.ifindex, flags)
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
            let tc = progs.tc_for(is_bridge)?;
            // Anchored first: a TCX program before guard that returned TC_ACT_OK (TCX_PASS)
            // would end the chain and skip guard. Guard passes with TC_ACT_UNSPEC (TCX_NEXT),
            // so the programs after it still run (docs/datapath.md, "Sharing the hooks").
            let id = tc
                .attach_with_options(
                    &iface.name,
                    TcAttachType::Ingress,
                    TcAttachOptions::TcxOrder(LinkOrder::first()),
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
                Err(tc::TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => {
                    return Err(GuardError::program(
                        program_names::TC,
                        ProgramError::from(e),
                    ));
                }
            }
            let tc = progs.tc_for(is_bridge)?;
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
pub fn swap(progs: &mut Programs, loc: &Location, iface: &Target, mode: HookMode) -> Result<()> {
    let is_bridge = iface.is_bridge;
    let pin = loc.link_pin(mode.pin_name(), iface.ifindex);
    let link_err = |path: &std::path::Path, e| GuardError::Link {
        path: path.to_owned(),
        source: Box::new(e),
    };
    match mode {
        HookMode::XdpNative | HookMode::XdpGeneric => {
            let pinned = PinnedLink::from_pin(&pin).map_err(|e| link_err(&pin, e))?;
            let link = XdpLink::try_from(FdLink::from(pinned)).map_err(|e| link_err(&pin, e))?;
            let xdp = progs.xdp()?;
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
            let tc = progs.tc_for(is_bridge)?;
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
            let tc = progs.tc_for(is_bridge)?;
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

/// Removes the hook of an interface. Best effort: the interface may be gone already (then
/// the kernel has released its hook with it).
pub fn unhook(loc: &Location, ifindex: u32, port: &PortState) {
    match port.mode {
        HookMode::Tc => remove_tc_filter(&port.name),
        mode => release_link_pin(&loc.link_pin(mode.pin_name(), ifindex)),
    }
}

/// Removes guard's `cls_bpf` filter from `port`'s ingress. Best effort, like
/// [`release_link_pin`]: the interface may be gone, and its filters with it.
pub fn remove_tc_filter(port: &str) {
    // Dropping the link object of an attached filter deletes the filter.
    if let Ok(link) =
        SchedClassifierLink::attached(port, TcAttachType::Ingress, TC_PRIORITY, TC_HANDLE, None)
    {
        drop(link);
    }
}

/// Priority and handle of the reply recorder's `cls_bpf` filter on the bridge's egress, where
/// the kernel has no TCX.
const REPLY_TC_PRIORITY: u16 = 0x4756;
const REPLY_TC_HANDLE: TcHandle = TcHandle::new(0x4756, 1);

/// Hooks the reply recorder (`guard_reply`) on the bridge device's TC egress, or swaps the
/// program behind its hook (`current`, the mode it is hooked with). TCX where the kernel has
/// it, else a `cls_bpf` filter. Returns the mode of the hook.
pub fn hook_reply(
    progs: &mut Programs,
    loc: &Location,
    bridge: &Target,
    current: Option<HookMode>,
) -> Result<HookMode> {
    let pin = loc.link_pin("reply", bridge.ifindex);
    let err = |e| GuardError::program(program_names::REPLY, e);
    let link_err = |path: &std::path::Path, e| GuardError::Link {
        path: path.to_owned(),
        source: Box::new(e),
    };
    match current {
        Some(HookMode::Tcx) => {
            let pinned = PinnedLink::from_pin(&pin).map_err(|e| link_err(&pin, e))?;
            let link = SchedClassifierLink::try_from(FdLink::from(pinned))
                .map_err(|e| link_err(&pin, e))?;
            let prog = progs.reply()?;
            let id = prog.attach_to_link(link).map_err(err)?;
            drop(prog.take_link(id));
            return Ok(HookMode::Tcx);
        }
        Some(_) => {
            if let Ok(link) = SchedClassifierLink::attached(
                &bridge.name,
                TcAttachType::Egress,
                REPLY_TC_PRIORITY,
                REPLY_TC_HANDLE,
                None,
            ) {
                let prog = progs.reply()?;
                let id = prog.attach_to_link(link).map_err(err)?;
                let link = prog.take_link(id).map_err(err)?;
                std::mem::forget(link);
                return Ok(HookMode::Tc);
            }
            // The filter is gone (someone removed the qdisc): hook anew below.
        }
        None => {}
    }
    let prog = progs.reply()?;
    let tcx = prog
        .attach_with_options(
            &bridge.name,
            TcAttachType::Egress,
            TcAttachOptions::TcxOrder(LinkOrder::first()),
        )
        .and_then(|id| prog.take_link(id));
    if let Ok(link) = tcx {
        let fd_link = FdLink::try_from(link).map_err(|e| link_err(&pin, e))?;
        fd_link.pin(&pin).map_err(|e| GuardError::Pin {
            path: pin.clone(),
            source: Box::new(e),
        })?;
        return Ok(HookMode::Tcx);
    }
    // No TCX (before Linux 6.6): a cls_bpf filter on the clsact qdisc's egress.
    match tc::qdisc_add_clsact(&bridge.name) {
        Ok(()) => {}
        Err(tc::TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
        Err(e) => return Err(err(ProgramError::from(e))),
    }
    let id = prog
        .attach_with_options(
            &bridge.name,
            TcAttachType::Egress,
            TcAttachOptions::Netlink(NlOptions {
                priority: REPLY_TC_PRIORITY,
                handle: REPLY_TC_HANDLE,
                ..NlOptions::default()
            }),
        )
        .map_err(err)?;
    let link = prog.take_link(id).map_err(err)?;
    // The qdisc holds the filter; dropping the link object would remove it.
    std::mem::forget(link);
    Ok(HookMode::Tc)
}

/// Removes the reply recorder from the bridge's egress. Best effort (the bridge may be gone).
pub fn unhook_reply(loc: &Location, ifindex: u32, bridge: &str, mode: HookMode) {
    if mode == HookMode::Tc {
        if let Ok(link) = SchedClassifierLink::attached(
            bridge,
            TcAttachType::Egress,
            REPLY_TC_PRIORITY,
            REPLY_TC_HANDLE,
            None,
        ) {
            drop(link);
        }
    } else {
        release_link_pin(&loc.link_pin("reply", ifindex));
    }
}
