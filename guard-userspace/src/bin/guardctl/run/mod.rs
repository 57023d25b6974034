//! `guardctl run`: the agent.
//!
//! Waits for the bridge to exist (a libvirt network may come up after the agent), attaches
//! like `attach`, records itself in the bridge's state (so `detach` can stop it), then follows
//! rtnetlink: links, the bridge's permanent (local) FDB entries, addresses and IPv4/IPv6
//! routes. After a relevant event it re-discovers and reconciles through `Guard::update`, the
//! path every verb uses: under the bridge's lock, on the state as it is on disk, so live
//! edits made with `guardctl rules` are picked up, never overwritten. A port enslaved to the
//! bridge is hooked, a port that left is unhooked, host MAC and address changes reach the
//! maps; each item on its own, so one that fails (a full MAC table, a port that refuses every
//! hook) is reported and the others still apply.
//!
//! Latency: events are filtered by content (a learned FDB entry, which a busy bridge makes
//! hundreds of per second, is irrelevant), and a reconcile starts [`SETTLE`](netlink::SETTLE) after the last
//! relevant event of a burst, at most [`MAX_DELAY`](netlink::MAX_DELAY) after its first, however much else
//! arrives. SIGTERM and SIGINT end the agent and leave enforcement pinned; SIGHUP re-reads
//! the configuration file; a detach (which marks the state, then sends SIGTERM) ends it too.
//!
//! Drop events: the agent is the one consumer of the event ring while it runs ([`fanout`]):
//! it appends them to the drop log and passes them on to `events` and `top` over its socket.

mod fanout;
mod netlink;
mod out;

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Instant};

use anyhow::{Context as _, Result};
use clap::Args;
use futures::StreamExt as _;
use guard::{
    GuardError,
    attach::{Changes, Guard, error_chain, modify_state},
    discovery::{self, Discovery},
    state::{AgentRecord, State},
};
use tokio::signal::unix::{SignalKind, signal};

use self::{
    fanout::{Fanout, LogSpec},
    netlink::{Events, Pending, RESYNC, relevant, subscribe},
    out::{AgentEvent, Out},
};
use crate::{Cli, attach::AttachArgs, output};

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub attach: AttachArgs,
    /// Serve Prometheus metrics at `http://ADDR/metrics` (e.g. 127.0.0.1:9477). The address
    /// is bound in the caller's network namespace, also with --netns.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// Append drop events to FILE, one JSON object a line (`guardctl.events.v1`). Default:
    /// /var/log/guard/<scope>/<bridge>.jsonl (<scope>: the --netns name, or `host`).
    #[arg(long, value_name = "FILE", conflicts_with = "no_log")]
    pub log: Option<PathBuf>,
    /// Keep no drop log (the agent still serves events to `events` and `top`).
    #[arg(long)]
    pub no_log: bool,
    /// At most N drop log lines a second, over all ports; the lines left out are counted in
    /// one summary line (`"suppressed": K`) once the rate allows again.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub log_rate: u32,
}

/// Binds the metrics listener (before `--netns` is entered, so the address is the host's).
pub fn bind_metrics(a: &RunArgs) -> Result<Option<tiny_http::Server>> {
    a.metrics
        .map(|addr| {
            tiny_http::Server::http(addr)
                .map_err(|e| anyhow::anyhow!("{e}"))
                .with_context(|| format!("serving metrics on {addr}"))
        })
        .transpose()
}

/// Why the agent stops.
enum Stop {
    Signal,
    Detached,
}

pub async fn run(cli: &Cli, a: &RunArgs, metrics: Option<tiny_http::Server>) -> Result<ExitCode> {
    let bridge = a.attach.bridge.clone();
    let out = Out {
        json: a.attach.json,
        bridge: &bridge,
    };
    let loc = cli.location(&bridge);
    // Subscribe before the first discovery, so nothing between the two is missed.
    let (handle, mut events) = subscribe()?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;

    if let Some(other) = State::load(&loc)?.and_then(|s| s.live_agent()) {
        anyhow::bail!(
            "an agent (pid {}) already follows {bridge}: stop it first (or `systemctl stop \
             guardctl@{bridge}`)",
            other.pid
        );
    }

    let Some(found) = wait_for_bridge(&handle, &mut events, &out, &mut term, &mut int).await?
    else {
        return Ok(never_attached(&out));
    };
    let (mut guard, changes) = crate::attach::attach_with(
        cli,
        &a.attach,
        &found,
        crate::attach::SharedXdpPolicy::FailPort,
    )?;
    let me = AgentRecord::current();
    modify_state(&loc, |s| s.agent = me).context("recording the agent in the state")?;
    if a.attach.json {
        out.changes(&changes, guard.state());
    } else {
        let view = output::status_of(&loc, Some(guard.state()), Some(&found)).await;
        print!("{}", output::describe(&view));
    }
    let labels = crate::ports::labels(guard.state())
        .await
        .unwrap_or_else(|e| {
            log::warn!("naming ports for drop events: {e:#}");
            std::collections::BTreeMap::new()
        });
    let log = LogSpec {
        path: (!a.no_log).then(|| {
            a.log
                .clone()
                .unwrap_or_else(|| guard::droplog::default_path(&loc))
        }),
        rate: a.log_rate,
    };
    let fanout = Fanout::start(&loc, a.attach.json, &log, labels)?;
    if let Some(server) = metrics {
        let loc = loc.clone();
        // A plain thread: tiny_http blocks, and scrapes must not stall the netlink loop. The
        // listener was bound in the caller's namespace; the thread reads only pins and state.
        std::thread::Builder::new()
            .name("metrics".to_owned())
            .spawn(move || crate::metrics::serve(&server, &loc))
            .context("starting the metrics thread")?;
        if let Some(addr) = a.metrics {
            out.say("metrics", format!("metrics at http://{addr}/metrics"));
        }
    }
    out.say(
        "attached",
        format!("agent following {bridge}; SIGTERM/SIGINT leave enforcement in place"),
    );

    let stop = follow(
        &mut guard,
        a,
        &handle,
        &mut events,
        &out,
        &fanout,
        (&mut term, &mut int, &mut hup),
    )
    .await;
    // The last read of the ring and the hand-over to subscribers, before the state says the
    // agent has gone.
    drop(fanout);
    Ok(exit(&out, &loc, stop?, me).await)
}

/// Discovers the bridge, waiting (on rtnetlink link events) for it to appear. `None`: a
/// signal ended the wait.
async fn wait_for_bridge(
    handle: &rtnetlink::Handle,
    events: &mut Events,
    out: &Out<'_>,
    term: &mut tokio::signal::unix::Signal,
    int: &mut tokio::signal::unix::Signal,
) -> Result<Option<Discovery>> {
    let bridge = out.bridge;
    loop {
        match discovery::discover(handle, bridge).await {
            Ok(found) => return Ok(Some(found)),
            Err(GuardError::NoSuchInterface(_)) => {}
            Err(e) => return Err(e).with_context(|| format!("discovering bridge {bridge:?}")),
        }
        out.say(
            "waiting",
            format!("waiting for bridge {bridge} to appear (following rtnetlink)"),
        );
        loop {
            tokio::select! {
                ev = events.next() => {
                    let ev = ev.context("the rtnetlink event socket closed")?;
                    if relevant(&ev.0) {
                        break;
                    }
                }
                _ = term.recv() => return Ok(None),
                _ = int.recv() => return Ok(None),
            }
        }
    }
}

type Signals<'s> = (
    &'s mut tokio::signal::unix::Signal,
    &'s mut tokio::signal::unix::Signal,
    &'s mut tokio::signal::unix::Signal,
);

/// The agent's loop: relevant events (bounded latency, see [`Pending`]), the resync timer
/// and SIGHUP reconcile; SIGTERM/SIGINT or a detach end it.
async fn follow(
    guard: &mut Guard,
    a: &RunArgs,
    handle: &rtnetlink::Handle,
    events: &mut Events,
    out: &Out<'_>,
    fanout: &Fanout,
    (term, int, hup): Signals<'_>,
) -> Result<Stop> {
    let bridge = out.bridge;
    let mut pending = Pending::default();
    let mut bridge_gone = false;
    let mut resync = tokio::time::interval(RESYNC);
    resync.reset();
    let stop = loop {
        let due = pending.due();
        let wake = due.map_or_else(
            || tokio::time::Instant::now() + RESYNC,
            tokio::time::Instant::from_std,
        );
        let reconcile_now = tokio::select! {
            ev = events.next() => {
                let ev = ev.context("the rtnetlink event socket closed")?;
                if relevant(&ev.0) {
                    pending.note(Instant::now());
                }
                false
            }
            () = tokio::time::sleep_until(wake), if due.is_some() => true,
            _ = resync.tick() => true,
            _ = hup.recv() => {
                fanout.reopen_log();
                // A reload is a reconcile; after a failed one, reconcile anyway (a detach
                // shows there, and ends the agent).
                match reload(guard, a).await {
                    Ok(changes) => {
                        out.say("reloaded", "re-read the configuration".to_owned());
                        out.changes(&changes, guard.state());
                        false
                    }
                    Err(e) => {
                        out.emit(AgentEvent {
                            event: "failed",
                            item: Some("configuration".to_owned()),
                            error: Some(format!("{e:#}")),
                            message: format!("reloading the configuration: {e:#}"),
                            ..AgentEvent::default()
                        });
                        true
                    }
                }
            }
            _ = term.recv() => break Stop::Signal,
            _ = int.recv() => break Stop::Signal,
        };
        if !reconcile_now {
            continue;
        }
        pending = Pending::default();
        let found = match discovery::discover(handle, bridge).await {
            Ok(f) => {
                bridge_gone = false;
                f
            }
            Err(GuardError::NoSuchInterface(_)) => {
                if !bridge_gone {
                    out.say(
                        "bridge-gone",
                        format!(
                            "{bridge} no longer exists; waiting for it to come back \
                             (its ports left with it)"
                        ),
                    );
                }
                bridge_gone = true;
                continue;
            }
            Err(e) => {
                // Keep running: enforcement stays as it was; the next event retries.
                out.emit(AgentEvent {
                    event: "failed",
                    item: Some("discovery".to_owned()),
                    error: Some(error_chain(&e)),
                    message: format!("discovering {bridge}: {}", error_chain(&e)),
                    ..AgentEvent::default()
                });
                continue;
            }
        };
        match reconcile(guard, &found) {
            Ok(changes) => {
                out.changes(&changes, guard.state());
                if !changes.hooked.is_empty() || !changes.unhooked.is_empty() {
                    // New ports (and VMs) for the drop events' labels.
                    if let Ok(l) = crate::ports::labels(guard.state()).await {
                        fanout.set_labels(l);
                    }
                }
            }
            Err(GuardError::NotAttached(_)) => break Stop::Detached,
            Err(e) => out.emit(AgentEvent {
                event: "failed",
                error: Some(error_chain(&e)),
                message: format!("reconciling {bridge}: {}", error_chain(&e)),
                ..AgentEvent::default()
            }),
        }
    };
    Ok(stop)
}

fn reconcile(guard: &mut Guard, found: &Discovery) -> guard::Result<Changes> {
    guard.update(found, |_| Ok(()))
}

/// SIGHUP: the options are read again (configuration file, then the command line's flags);
/// live edits stay. Applied by the reconcile that follows.
async fn reload(guard: &mut Guard, a: &RunArgs) -> Result<Changes> {
    let opts = crate::attach::options(&a.attach)?;
    let found = crate::attach::discover(&a.attach.bridge).await?;
    Ok(guard.update(&found, |s| {
        s.options = opts;
        Ok(())
    })?)
}

fn never_attached(out: &Out<'_>) -> ExitCode {
    out.emit(AgentEvent {
        event: "exiting",
        protected: Some(false),
        message: format!(
            "agent exiting; {} never appeared, so nothing was attached",
            out.bridge
        ),
        ..AgentEvent::default()
    });
    ExitCode::SUCCESS
}

/// Leaves the state without the agent and says, truthfully, what stays in force.
async fn exit(
    out: &Out<'_>,
    loc: &guard::pins::Location,
    stop: Stop,
    me: Option<AgentRecord>,
) -> ExitCode {
    let b = out.bridge;
    let gc = output::guardctl_for(loc.netns.as_deref());
    let state = modify_state(loc, |s| {
        if s.agent == me {
            s.agent = None;
        }
    });
    let (protected, message) = match (stop, state) {
        (_, Ok(Some(s))) if s.detaching => (
            false,
            format!(
                "agent exiting: {b} is being detached (guardctl detach); guard no longer \
                 protects it"
            ),
        ),
        (Stop::Detached, _) | (_, Ok(None)) => (
            false,
            format!("agent exiting: {b} was detached; guard does not protect it"),
        ),
        (Stop::Signal, Ok(Some(s))) => {
            let v = output::status_of(loc, Some(&s), None).await;
            let guarded = v.ports.iter().filter(|p| p.guarded).count();
            let total = v.ports.len();
            if v.health == output::Health::Unguarded {
                (
                    guarded > 0,
                    format!(
                        "agent exiting; {b} is only partly protected: {guarded} of {total} \
                         port(s) guarded (`{gc} status {b}`)"
                    ),
                )
            } else {
                let mode = if v.health == output::Health::Monitored {
                    " (some only monitor)"
                } else {
                    ""
                };
                (
                    true,
                    format!(
                        "agent exiting; {b} stays protected: {guarded} of {total} port(s) \
                         guarded{mode}, pinned in the kernel ({gc} detach {b} removes \
                         it); ports that join from now on are not guarded until the agent \
                         runs again"
                    ),
                )
            }
        }
        (Stop::Signal, Err(e)) => (
            false,
            format!(
                "agent exiting; cannot tell whether {b} stays protected: {}",
                error_chain(&e)
            ),
        ),
    };
    out.emit(AgentEvent {
        event: "exiting",
        protected: Some(protected),
        message,
        ..AgentEvent::default()
    });
    ExitCode::SUCCESS
}
