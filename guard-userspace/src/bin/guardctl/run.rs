//! `guardctl run`: the agent.
//!
//! Attaches like `attach`, then follows rtnetlink events (links, bridge FDB and neighbours,
//! addresses). After each burst of events it re-discovers and reconciles: a port enslaved to
//! the bridge is hooked, a port that left is unhooked, host MAC and address changes reach
//! the maps. SIGTERM and SIGINT end the agent and leave enforcement pinned; SIGHUP re-reads
//! the configuration file.

use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use clap::Args;
use futures::StreamExt as _;
use guard::{attach::Guard, config, discovery};
use rtnetlink::sys::AsyncSocket as _;
use tokio::signal::unix::{SignalKind, signal};

use crate::{Cli, attach::AttachArgs, output};

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub attach: AttachArgs,
    /// Serve Prometheus metrics at `http://ADDR/metrics` (e.g. 127.0.0.1:9477).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
}

// rtnetlink multicast groups (linux/rtnetlink.h).
const RTNLGRP_LINK: u32 = 1;
const RTNLGRP_NEIGH: u32 = 3;
const RTNLGRP_IPV4_IFADDR: u32 = 5;
const RTNLGRP_IPV6_IFADDR: u32 = 9;

/// Quiet time that ends a burst of events, and the longest a burst may delay a reconcile
/// (a steady stream of FDB learning must not starve it).
const SETTLE: Duration = Duration::from_millis(30);
const MAX_DELAY: Duration = Duration::from_millis(200);

pub async fn run(cli: &Cli, a: &RunArgs) -> Result<ExitCode> {
    let bridge = a.attach.bridge.clone();
    // Subscribe before the first discovery, so nothing between the two is missed.
    let (mut conn, handle, mut events) =
        rtnetlink::new_connection().context("opening the rtnetlink event socket")?;
    // Bind first: an unbound netlink socket has port id 0, and the kernel skips a listener
    // whose port id equals the notification's (netlink.c do_one_broadcast(): `nlk->portid ==
    // p->portid`), which is 0 for every notification not echoed to a requester, that is for
    // every `ip link set ... master` of another process. Unbound, the agent heard nothing.
    conn.socket_mut()
        .socket_mut()
        .bind_auto()
        .context("binding the rtnetlink event socket")?;
    for group in [
        RTNLGRP_LINK,
        RTNLGRP_NEIGH,
        RTNLGRP_IPV4_IFADDR,
        RTNLGRP_IPV6_IFADDR,
    ] {
        conn.socket_mut()
            .socket_mut()
            .add_membership(group)
            .with_context(|| format!("joining rtnetlink group {group}"))?;
    }
    tokio::spawn(conn);

    // Bind before attaching: a taken port fails the agent before it changes anything.
    let server = match a.metrics {
        Some(addr) => Some(
            tiny_http::Server::http(addr)
                .map_err(|e| anyhow::anyhow!("{e}"))
                .with_context(|| format!("serving metrics on {addr}"))?,
        ),
        None => None,
    };
    let mut guard = crate::attach::attach(cli, &a.attach).await?;
    print!("{}", output::describe(&guard.loc, &guard.state));
    if let Some(server) = server {
        let loc = guard.loc.clone();
        // A plain thread: tiny_http blocks, and scrapes must not stall the netlink loop. It
        // inherits the network namespace (setns happened before any thread was started).
        std::thread::Builder::new()
            .name("metrics".to_owned())
            .spawn(move || crate::metrics::serve(&server, &loc))
            .context("starting the metrics thread")?;
        if let Some(addr) = a.metrics {
            println!("guard: metrics at http://{addr}/metrics");
        }
    }
    println!("guard: agent following {bridge}; SIGTERM/SIGINT leave enforcement in place");

    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    loop {
        tokio::select! {
            ev = events.next() => {
                if ev.is_none() {
                    anyhow::bail!("the rtnetlink event socket closed");
                }
                let start = Instant::now();
                while start.elapsed() < MAX_DELAY {
                    match tokio::time::timeout(SETTLE, events.next()).await {
                        Ok(Some(_)) => {}
                        _ => break,
                    }
                }
                if let Err(e) = reconcile(&mut guard, &handle, &bridge).await {
                    // Keep running: enforcement stays as it was; the next event retries.
                    eprintln!("guardctl: reconciling {bridge}: {e:#}");
                }
            }
            _ = hup.recv() => {
                if let Err(e) = reload(&mut guard, &handle, &bridge).await {
                    eprintln!("guardctl: reloading the configuration: {e:#}");
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    println!(
        "guard: agent exiting; {bridge} stays protected (guardctl detach {bridge} removes it)"
    );
    Ok(ExitCode::SUCCESS)
}

async fn reconcile(guard: &mut Guard, handle: &rtnetlink::Handle, bridge: &str) -> Result<()> {
    let found = discovery::discover(handle, bridge)
        .await
        .with_context(|| format!("discovering bridge {bridge:?}"))?;
    let changes = guard.reconcile(&found)?;
    for (port, mode, fallback) in &changes.hooked {
        let fb = fallback
            .as_deref()
            .map_or(String::new(), |f| format!(" ({f})"));
        println!("guard: {bridge}: hooked {port} ({mode}){fb}");
    }
    for port in &changes.unhooked {
        println!("guard: {bridge}: released {port}");
    }
    if changes.macs_changed {
        println!(
            "guard: {bridge}: host MAC set updated ({} MACs)",
            guard.state.host_macs.len()
        );
    }
    if changes.rule_writes > 0 {
        println!(
            "guard: {bridge}: policy updated ({} map writes)",
            changes.rule_writes
        );
    }
    Ok(())
}

async fn reload(guard: &mut Guard, handle: &rtnetlink::Handle, bridge: &str) -> Result<()> {
    let Some(path) = guard.state.options.config_file.clone() else {
        println!("guard: SIGHUP: no configuration file to re-read");
        return Ok(());
    };
    let cfg = config::load(&path)?;
    let mut opts = cfg
        .bridge(bridge)
        .cloned()
        .with_context(|| format!("{} no longer configures {bridge:?}", path.display()))?;
    // Live rule changes survive a reload.
    opts.added = std::mem::take(&mut guard.state.options.added);
    opts.removed = std::mem::take(&mut guard.state.options.removed);
    guard.state.options = opts;
    println!("guard: re-read {}", path.display());
    reconcile(guard, handle, bridge).await
}
