//! `guardctl events`: stream drop events as lines, JSON lines, or into a pcap file.
//!
//! From the agent's socket when an agent runs, else from the ring itself (one direct reader
//! at a time); it switches between the two as agents come and go (`guard::feed`), without
//! losing or splitting events.

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
    events::{EventView, RuleLabel, rule_labels},
    feed::{Incoming, Source},
    identity::PortLabel,
    maps::GuardMaps,
    pcap::PcapWriter,
    pins::Location,
    state::State,
};
use guard_common::event::EVENT_SNAP_LEN;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    Cli,
    feed::{FeedThread, Msg},
    output, ports,
    status::attached,
};

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

/// One attached bridge, and what names its events: opened alike by `events` and `top`.
pub struct Opened {
    pub loc: Location,
    pub state: State,
    pub labels: BTreeMap<u32, PortLabel>,
    pub maps: GuardMaps,
    pub rules: BTreeMap<u32, RuleLabel>,
}

/// Opens `bridge` (default: the only attached bridge in scope) for reading its events.
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
    let maps =
        GuardMaps::open(&loc).with_context(|| format!("opening the maps of {:?}", loc.bridge))?;
    let rules = rule_labels(&maps, &state)?;
    Ok(Opened {
        loc,
        state,
        labels,
        maps,
        rules,
    })
}

/// The line `events` prints on stderr when its source changes (tests and scripts wait for
/// "reading events").
pub fn source_line(bridge: &str, s: Source) -> String {
    match s {
        Source::Agent(pid) => {
            format!("guard: reading events of {bridge} (from the agent, pid {pid})")
        }
        Source::Direct => format!("guard: reading events of {bridge} (directly from the ring)"),
        Source::Waiting => format!(
            "guard: waiting: another reader holds the event ring of {bridge} and no agent \
             answers"
        ),
    }
}

pub async fn run(cli: &Cli, a: &EventsArgs) -> Result<ExitCode> {
    let Opened {
        loc,
        state,
        labels,
        maps,
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
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let deadline = a
        .timeout
        .map(|s| tokio::time::Instant::now() + Duration::from_secs_f64(s.max(0.0)));
    let mut feed = FeedThread::start(&loc)?;
    let mut seen = 0u64;
    let mut stdout = std::io::stdout().lock();
    let mut emit = |view: &EventView, frame: &[u8]| -> Result<()> {
        if !a.quiet {
            if a.json {
                serde_json::to_writer(&mut stdout, &output::Schema::new("events", view))
                    .context("serialising JSON")?;
                writeln!(stdout).context("writing stdout")?;
            } else {
                writeln!(stdout, "{}", view.line()).context("writing stdout")?;
            }
            stdout.flush().context("writing stdout")?;
        }
        if let Some(p) = pcap.as_mut() {
            p.write(view.wall_time(), frame, view.len)
                .context("writing the pcap file")?;
        }
        Ok(())
    };
    let done = |seen: u64| a.count.is_some_and(|n| seen >= n);
    let mut stopping = false;
    while !done(seen) {
        let msg = if stopping {
            // Stopped: what the thread read before it ended, then the end.
            match feed.rx.try_recv() {
                Ok(m) => m,
                Err(_) => break,
            }
        } else {
            let until = deadline.unwrap_or_else(|| tokio::time::Instant::now() + DAY);
            tokio::select! {
                m = feed.rx.recv() => match m {
                    Some(m) => m,
                    None => break,
                },
                () = tokio::time::sleep_until(until) => { stopping = true; feed.stop(); continue }
                _ = term.recv() => { stopping = true; feed.stop(); continue }
                _ = int.recv() => { stopping = true; feed.stop(); continue }
            }
        };
        match msg {
            Msg::Item(Incoming::Raw(ev)) => {
                if ev.rule_id != 0 && !rules.contains_key(&ev.rule_id) {
                    // A rule added since we started.
                    rules = rule_labels(&maps, &state)?;
                }
                let view = EventView::new(&ev, &loc.bridge, labels.get(&ev.ifindex), &rules);
                emit(&view, ev.captured())?;
                seen += 1;
            }
            Msg::Item(Incoming::View(mut view)) => {
                let frame = view.frame_bytes();
                view.frame = None;
                emit(&view, &frame)?;
                seen += 1;
            }
            Msg::Item(Incoming::Gap(n)) => {
                eprintln!("guard: {n} events did not reach this reader (it was too slow)");
            }
            Msg::Source(s) => eprintln!("{}", source_line(&loc.bridge, s)),
            Msg::Failed(e) => return Err(e),
        }
    }
    drop(feed);
    if let Some(mut p) = pcap {
        p.flush().context("writing the pcap file")?;
    }
    Ok(ExitCode::SUCCESS)
}

/// "No deadline".
const DAY: Duration = Duration::from_secs(86_400);
