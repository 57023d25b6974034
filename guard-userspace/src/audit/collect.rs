//! Reading a [`Snapshot`] from the kernel: sysctls from `/proc/sys`, links and addresses
//! over rtnetlink, the programs on each port's XDP, TCX and `cls_bpf` hooks, guard's pins.

use std::{collections::BTreeMap, fs, io, path::Path};

use aya::programs::{ProgramInfo, SchedClassifier, TcAttachType};
use futures::TryStreamExt as _;
use netlink_packet_route::{
    link::LinkAttribute,
    tc::{TcAttribute, TcFilterBpfOption, TcOption},
};
use rtnetlink::Handle;

use super::{
    AuditError, PROC_SYS, Result,
    snapshot::{BridgeView, GuardView, PortView, Snapshot, sysctl_paths},
};
use crate::{
    discovery::{self, Iface},
    error::GuardError,
    pins::{self, Location},
    state::State,
};

/// Reads one integer sysctl; `None` when it does not exist (IPv6 off at boot, `br_netfilter`
/// not loaded, a knob newer than the kernel).
pub fn read_sysctl(root: &Path, path: &str) -> Result<Option<i64>> {
    let full = root.join(path);
    match fs::read_to_string(&full) {
        Ok(s) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| AuditError::ParseSysctl {
                path: full,
                value: s.trim().to_owned(),
            }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(AuditError::ReadSysctl { path: full, source }),
    }
}

pub fn read_sysctls(root: &Path, paths: &[String]) -> Result<BTreeMap<String, i64>> {
    let mut out = BTreeMap::new();
    for p in paths {
        if let Some(v) = read_sysctl(root, p)? {
            out.insert(p.clone(), v);
        }
    }
    Ok(out)
}

/// Which bridges to audit: the named ones (each must exist and be a bridge), else those guard
/// is attached to in this scope, else every bridge in the namespace.
pub fn select_bridges<'a>(
    ifaces: &'a [Iface],
    named: &[String],
    attached: &[String],
) -> Result<Vec<&'a Iface>> {
    if !named.is_empty() {
        return named
            .iter()
            .map(|n| {
                let i = ifaces
                    .iter()
                    .find(|i| &i.name == n)
                    .ok_or_else(|| GuardError::NoSuchInterface(n.clone()))?;
                if i.is_bridge {
                    Ok(i)
                } else {
                    Err(GuardError::NotABridge(n.clone()).into())
                }
            })
            .collect();
    }
    let bridges: Vec<&Iface> = ifaces.iter().filter(|i| i.is_bridge).collect();
    let guarded: Vec<&Iface> = bridges
        .iter()
        .copied()
        .filter(|b| attached.contains(&b.name))
        .collect();
    Ok(if guarded.is_empty() { bridges } else { guarded })
}

/// `IFLA_XDP` program id per ifindex.
pub async fn xdp_progs(handle: &Handle) -> Result<BTreeMap<u32, u32>> {
    let mut out = BTreeMap::new();
    let mut stream = handle.link().get().execute();
    while let Some(msg) = stream.try_next().await? {
        for attr in &msg.attributes {
            let LinkAttribute::Xdp(xdp) = attr else {
                continue;
            };
            let id = discovery::xdp_prog_id(xdp);
            if let Some(id) = id {
                out.insert(msg.header.index, id);
            }
        }
    }
    Ok(out)
}

/// `cls_bpf` program ids on the ingress hook of `ifindex` (guard's `--hook tc`).
pub async fn tc_progs(handle: &Handle, ifindex: u32) -> Result<Vec<u32>> {
    let Ok(index) = i32::try_from(ifindex) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    let mut stream = handle.traffic_filter(index).get().ingress().execute();
    loop {
        match stream.try_next().await {
            Ok(Some(msg)) => {
                for attr in &msg.attributes {
                    if let TcAttribute::Options(opts) = attr {
                        out.extend(opts.iter().filter_map(|o| match o {
                            TcOption::Bpf(TcFilterBpfOption::ProgId(id)) => Some(*id),
                            _ => None,
                        }));
                    }
                }
            }
            Ok(None) => break,
            // No clsact/ingress qdisc: the kernel answers EINVAL, meaning no filters.
            Err(rtnetlink::Error::NetlinkError(e))
                if e.raw_code() == -libc::EINVAL || e.raw_code() == -libc::ENOENT =>
            {
                break;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}

/// TCX ingress program ids of `port`.
pub fn tcx_progs(port: &str) -> Result<Vec<u32>> {
    match SchedClassifier::query_tcx(port, TcAttachType::Ingress) {
        Ok((_, progs)) => Ok(progs.iter().map(ProgramInfo::id).collect()),
        Err(e) => Err(AuditError::Tcx {
            port: port.to_owned(),
            source: Box::new(e),
        }),
    }
}

fn guard_view(loc: &Location) -> Result<Option<(GuardView, Option<State>)>> {
    if !loc.is_attached() {
        return Ok(None);
    }
    let prog_ids = ["xdp", "tc", "bridge"]
        .iter()
        .filter_map(|h| ProgramInfo::from_pin(loc.prog_pin(h)).ok())
        .map(|i| i.id())
        .collect();
    let state = State::load(loc)?;
    Ok(Some((
        GuardView {
            prog_ids,
            state_present: state.is_some(),
        },
        state,
    )))
}

/// Reads everything the audit needs, in the current network namespace. `netns` is the
/// `--netns` name (the scope of guard's pins).
pub async fn collect(handle: &Handle, netns: Option<&str>, named: &[String]) -> Result<Snapshot> {
    let ifaces = discovery::links(handle).await?;
    let scope = netns.unwrap_or(pins::HOST_SCOPE);
    let attached: Vec<String> = pins::attached_bridges(&Path::new(pins::BPFFS).join("guard"))?
        .into_iter()
        .filter(|(s, _)| s == scope)
        .map(|(_, b)| b)
        .collect();
    let selected = select_bridges(&ifaces, named, &attached)?;
    let xdp = xdp_progs(handle).await?;
    let mut bridges = Vec::new();
    for br in selected {
        let loc = Location::new(netns, &br.name);
        let (guard, state) = match guard_view(&loc)? {
            Some((g, s)) => (Some(g), s),
            None => (None, None),
        };
        let mut ports = Vec::new();
        for p in ifaces.iter().filter(|i| i.controller == Some(br.index)) {
            ports.push(PortView {
                name: p.name.clone(),
                ifindex: p.index,
                xdp_prog: xdp.get(&p.index).copied(),
                tcx_progs: tcx_progs(&p.name)?,
                tc_progs: tc_progs(handle, p.index).await?,
                in_state: state
                    .as_ref()
                    .is_some_and(|s| s.ports.contains_key(&p.index)),
            });
        }
        bridges.push(BridgeView {
            name: br.name.clone(),
            ifindex: br.index,
            ports,
            guard,
        });
    }
    let bridge_names: Vec<&str> = bridges.iter().map(|b| b.name.as_str()).collect();
    let sysctls = read_sysctls(Path::new(PROC_SYS), &sysctl_paths(&bridge_names))?;
    let addrs = discovery::addresses(handle, &ifaces).await?;
    Ok(Snapshot {
        netns: netns.map(str::to_owned),
        sysctls,
        addrs,
        bridges,
    })
}
