//! Other XDP programs on a lab port, for the tests of guard next to them: a plain program
//! (xdp-tools' pass-all filter, attached with `ip`) and libxdp's multi-program dispatcher
//! (`xdp-loader`), and what the kernel reports on a port's XDP hook.

use std::process::Command;

use anyhow::{Context as _, Result, bail};

use super::netns::{NetNs, run_cmd};

/// xdp-tools' objects (Debian's xdp-tools, which `cargo xtask setup` installs).
pub const XDP_TOOLS_BPF_DIR: &str = "/usr/lib/x86_64-linux-gnu/bpf";
/// xdp-filter's program with the "allow" policy and every feature: it passes what no filter
/// entry matches, and the tests add none, so legit traffic flows.
pub const PASS_ALL_OBJECT: &str = "xdpfilt_alw_all.o";
pub const PASS_ALL_NAME: &str = "xdpfilt_alw_all";
/// libxdp's dispatcher object and program name.
pub const DISPATCHER_OBJECT: &str = "xdp-dispatcher.o";
pub const DISPATCHER_NAME: &str = "xdp_dispatcher";

/// The program on an XDP hook, as `ip -details -json link show` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XdpProg {
    pub id: u64,
    pub name: String,
    /// `XDP_ATTACHED_*`: 1 driver (native), 2 generic (skb), 3 hardware.
    pub mode: u64,
}

/// The program on `dev`'s XDP hook, if any.
pub fn xdp_prog(ns: &NetNs, dev: &str) -> Result<Option<XdpProg>> {
    let v = ns.ip_json(&["-details", "link", "show", "dev", dev])?;
    let Some(xdp) = v.get(0).and_then(|l| l.get("xdp")) else {
        return Ok(None);
    };
    let prog = &xdp["prog"];
    Ok(Some(XdpProg {
        id: prog["id"].as_u64().context("XDP program without an id")?,
        name: prog["name"].as_str().unwrap_or_default().to_owned(),
        mode: xdp["mode"].as_u64().unwrap_or(0),
    }))
}

fn object(name: &str) -> Result<String> {
    let path = format!("{XDP_TOOLS_BPF_DIR}/{name}");
    if !std::path::Path::new(&path).is_file() {
        bail!("{path} is missing: install xdp-tools (`cargo xtask setup`); not skipping");
    }
    Ok(path)
}

/// Attaches xdp-filter's pass-all program to `dev` in generic (skb) mode with
/// `ip link set dev DEV xdpgeneric obj ... sec xdp`: a plain XDP program, no libxdp.
pub fn load_pass_all(ns: &NetNs, dev: &str) -> Result<XdpProg> {
    let obj = object(PASS_ALL_OBJECT)?;
    ns.ip(&[
        "link",
        "set",
        "dev",
        dev,
        "xdpgeneric",
        "obj",
        &obj,
        "sec",
        "xdp",
    ])?;
    expect_prog(ns, dev, PASS_ALL_NAME)
}

/// How [`load_dispatcher`] got libxdp's dispatcher onto the port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DispatcherVia {
    /// `xdp-loader load` built the dispatcher with xdp-filter's program in its first slot.
    XdpLoader,
    /// libxdp could not use its dispatcher on this kernel (its `freplace` compatibility check
    /// failed) and loaded the program alone; the dispatcher object xdp-tools ships was then
    /// attached with `ip`, with no component program: it passes every frame.
    DispatcherObject,
}

/// Puts libxdp's multi-program dispatcher on `dev` (native mode), the way `xdp-loader load`
/// does; libxdp needs a bpffs, which `ip netns exec`'s fresh `/sys` lacks, so one is mounted
/// in that command's own mount namespace (gone when it exits; the attached program stays).
pub fn load_dispatcher(ns: &NetNs, dev: &str) -> Result<(XdpProg, DispatcherVia)> {
    let obj = object(PASS_ALL_OBJECT)?;
    let script = format!("mount -t bpf bpf /sys/fs/bpf && xdp-loader load -m native {dev} {obj}");
    run_cmd(
        Command::new("ip").args(["netns", "exec", ns.name(), "sh", "-c", &script]),
        None,
    )
    .with_context(|| format!("xdp-loader load on {dev} in {}", ns.name()))?;
    let loaded = xdp_prog(ns, dev)?.context("xdp-loader attached nothing")?;
    if loaded.name == DISPATCHER_NAME {
        return Ok((loaded, DispatcherVia::XdpLoader));
    }
    // libxdp fell back to the program alone: replace it with the dispatcher's object.
    ns.ip(&["link", "set", "dev", dev, "xdpdrv", "off"])?;
    let disp = object(DISPATCHER_OBJECT)?;
    ns.ip(&[
        "link", "set", "dev", dev, "xdpdrv", "obj", &disp, "sec", "xdp",
    ])?;
    Ok((
        expect_prog(ns, dev, DISPATCHER_NAME)?,
        DispatcherVia::DispatcherObject,
    ))
}

fn expect_prog(ns: &NetNs, dev: &str, name: &str) -> Result<XdpProg> {
    let p = xdp_prog(ns, dev)?.with_context(|| format!("no XDP program on {dev}"))?;
    if p.name != name {
        bail!("{dev} runs XDP program {:?}, not {name:?}", p.name);
    }
    Ok(p)
}
