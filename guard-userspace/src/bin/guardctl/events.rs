//! `guardctl events`: stream drop events as lines, JSON lines, or into a pcap file.

use std::{
    collections::BTreeMap,
    fs::File,
    io::{BufWriter, Write as _},
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context as _, Result};
use clap::Args;
use guard::{
    events::{EventStream, EventView, RuleLabel, rule_labels, wall_time},
    identity::PortLabel,
    pcap::PcapWriter,
    pins::Location,
    state::State,
};
use guard_common::event::EVENT_SNAP_LEN;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};

use crate::{Cli, output, ports, status::attached};

#[derive(Args)]
pub struct EventsArgs {
    /// The bridge (default: the only attached bridge in scope).
    pub bridge: Option<String>,
    /// Print JSON lines instead of text lines.
    #[arg(long)]
    pub json: bool,
    /// Also write the captured frames to FILE (classic pcap, for `tcpdump -r`).
    #[arg(long, value_name = "FILE")]
    pub pcap: Option<PathBuf>,
    /// Print nothing on stdout (with --pcap).
    #[arg(long)]
    pub quiet: bool,
    /// Stop after N events.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Stop after SECS seconds.
    #[arg(long, value_name = "SECS", value_parser = crate::positive_secs)]
    pub timeout: Option<f64>,
}

/// One attached bridge's event ring, and what names its events: opened alike by `events` and
/// `top`.
pub struct Opened {
    pub loc: Location,
    pub state: State,
    pub labels: BTreeMap<u32, PortLabel>,
    pub stream: EventStream,
    pub rules: BTreeMap<u32, RuleLabel>,
}

/// Opens the event ring of `bridge` (default: the only attached bridge in scope).
pub async fn open(cli: &Cli, bridge: Option<&str>) -> Result<Opened> {
    let locs = attached(cli, bridge)?;
    let loc = match locs.as_slice() {
        [one] => one.clone(),
        [] => anyhow::bail!("no bridge attached"),
        _ => anyhow::bail!("several bridges attached: name one"),
    };
    let state = State::load(&loc)
        .with_context(|| format!("reading the state of {:?}", loc.bridge))?
        .with_context(|| format!("bridge {:?} is not attached", loc.bridge))?;
    let labels = ports::labels(&state).await?;
    let stream = EventStream::open(&loc)
        .with_context(|| format!("opening the event ring of {:?}", loc.bridge))?;
    let rules = rule_labels(stream.maps(), &state)?;
    Ok(Opened {
        loc,
        state,
        labels,
        stream,
        rules,
    })
}

pub async fn run(cli: &Cli, a: &EventsArgs) -> Result<ExitCode> {
    let Opened {
        loc,
        state,
        labels,
        stream,
        mut rules,
    } = open(cli, a.bridge.as_deref()).await?;
    let mut pcap = match &a.pcap {
        Some(path) => {
            let f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
            Some(
                PcapWriter::new(BufWriter::new(f), EVENT_SNAP_LEN as u32)
                    .with_context(|| format!("writing {}", path.display()))?,
            )
        }
        None => None,
    };
    // SAFETY: the stream owns the ring's fd and keeps it open, unchanged, for as long as
    // the AsyncFd holds the stream (it is never taken out).
    let mut fd = unsafe { AsyncFd::register(stream) }
        .map_err(|e| e.into_parts().1)
        .context("polling the event ring")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let deadline = a
        .timeout
        .map(|s| tokio::time::Instant::now() + Duration::from_secs_f64(s.max(0.0)));
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    // Tests and scripts wait for this line: from here on, events are being made.
    eprintln!("guard: reading events of {}", loc.bridge);
    let mut seen = 0u64;
    let mut stdout = std::io::stdout().lock();
    let mut emit =
        |ev: &guard_common::event::DropEvent, rules: &BTreeMap<u32, RuleLabel>| -> Result<()> {
            let view = EventView::new(ev, &loc.bridge, labels.get(&ev.ifindex), rules);
            if !a.quiet {
                if a.json {
                    serde_json::to_writer(&mut stdout, &output::Schema::new("events", &view))
                        .context("serialising JSON")?;
                    writeln!(stdout).context("writing stdout")?;
                } else {
                    writeln!(stdout, "{}", view.line()).context("writing stdout")?;
                }
                stdout.flush().context("writing stdout")?;
            }
            if let Some(p) = pcap.as_mut() {
                p.write(wall_time(ev.ts_ns), ev.captured(), ev.frame_len)
                    .context("writing the pcap file")?;
            }
            Ok(())
        };
    let done = |seen: u64| a.count.is_some_and(|n| seen >= n);
    let mut stopping = false;
    while !done(seen) && !stopping {
        tokio::select! {
            ready = fd.readable_mut() => {
                let mut ready = ready.context("polling the event ring")?;
                ready.clear_ready();
            }
            _ = tick.tick() => {
                fd.get_mut().keep_alive().context("renewing the event lease")?;
                if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                    stopping = true;
                }
            }
            _ = term.recv() => stopping = true,
            _ = int.recv() => stopping = true,
        }
        // Drain what is there (also on the way out: a signal must not lose what was made).
        while !done(seen) {
            let Some(ev) = fd.get_mut().try_next() else {
                break;
            };
            if ev.rule_id != 0 && !rules.contains_key(&ev.rule_id) {
                // A rule added since we started.
                rules = rule_labels(fd.get_ref().maps(), &state)?;
            }
            emit(&ev, &rules)?;
            seen += 1;
        }
    }
    if let Some(mut p) = pcap {
        p.flush().context("writing the pcap file")?;
    }
    Ok(ExitCode::SUCCESS)
}
