//! `guardctl top`: a live terminal view of one bridge: drop rates per port and reason, the top
//! offenders by source (from sampled events), and the latest events. Fits 80x24; `q` quits.
//! `guardctl stats --watch` is the plain-text fallback (pipes, logs, dumb terminals).

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use clap::Args;
use crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use guard::{
    events::{EventView, RuleLabel},
    feed::Incoming,
    identity::PortLabel,
    pins::Location,
    state::State,
    stats::{BridgeStats, collect},
};
use ratatui::{
    DefaultTerminal, Frame,
    layout::{Constraint, Layout, Rect},
    style::{Modifier, Style},
    text::Line,
    widgets::{Block, Borders, Paragraph, Row, Table},
};

use crate::{
    Cli,
    feed::{FeedThread, Msg},
};

#[derive(Args)]
pub struct TopArgs {
    /// The bridge (default: the only attached bridge in scope).
    pub bridge: Option<String>,
    /// Seconds between counter refreshes.
    #[arg(long, value_name = "SECS", default_value_t = 0.5, value_parser = crate::positive_secs)]
    pub interval: f64,
}

/// How far back "top offenders" looks.
const OFFENDER_WINDOW: Duration = Duration::from_secs(10);
const RECENT: usize = 64;

/// Packets per (port, reason).
type Totals = HashMap<(String, &'static str), u64>;

struct View {
    loc: Location,
    state: State,
    labels: BTreeMap<u32, PortLabel>,
    rules: BTreeMap<u32, RuleLabel>,
    stats: Option<BridgeStats>,
    /// (port, reason) -> (rate per second, total) for drop and monitor reasons.
    rates: Vec<(String, &'static str, f64, u64)>,
    prev: Option<(Instant, Totals)>,
    /// (when, source, port) of the sampled events of the last `OFFENDER_WINDOW`.
    sources: VecDeque<(Instant, String, String)>,
    recent: VecDeque<EventView>,
}

impl View {
    fn refresh(&mut self) -> Result<()> {
        let stats = collect(&self.loc)
            .with_context(|| format!("reading counters of {:?}", self.loc.bridge))?;
        let now = Instant::now();
        let mut cur = HashMap::new();
        for p in &stats.ports {
            let who = self.who(p.ifindex, &p.name);
            for (r, c) in &p.reasons {
                if guard_common::reason::from_name(r)
                    .is_some_and(|code| code >= guard_common::reason::DENY_IPV4)
                {
                    cur.insert((who.clone(), *r), c.packets);
                }
            }
        }
        let mut rates: Vec<_> = cur
            .iter()
            .filter(|(_, total)| **total > 0)
            .map(|((who, r), total)| {
                let rate = self.prev.as_ref().map_or(0.0, |(t, prev)| {
                    let before = prev.get(&(who.clone(), *r)).copied().unwrap_or(0);
                    #[expect(clippy::cast_precision_loss, reason = "a rate for display")]
                    let d = total.saturating_sub(before) as f64;
                    d / now.duration_since(*t).as_secs_f64().max(1e-3)
                });
                (who.clone(), *r, rate, *total)
            })
            .collect();
        rates.sort_by(|a, b| b.2.total_cmp(&a.2).then(b.3.cmp(&a.3)));
        self.rates = rates;
        self.prev = Some((now, cur));
        self.stats = Some(stats);
        while self
            .sources
            .front()
            .is_some_and(|(t, _, _)| now.duration_since(*t) > OFFENDER_WINDOW)
        {
            self.sources.pop_front();
        }
        Ok(())
    }

    fn who(&self, ifindex: u32, name: &str) -> String {
        let label = self.labels.get(&ifindex);
        match (
            label.and_then(|l| l.vm.as_deref()),
            label.and_then(|l| l.mac.as_deref()),
        ) {
            (Some(vm), _) => format!("{vm}:{name}"),
            (None, Some(mac)) => format!("{name}[{mac}]"),
            (None, None) => name.to_owned(),
        }
    }

    fn push(&mut self, item: Incoming) {
        let view = match item {
            Incoming::Raw(ev) => EventView::new(
                &ev,
                &self.loc.bridge,
                self.labels.get(&ev.ifindex),
                &self.rules,
            ),
            Incoming::View(v) => *v,
            Incoming::Gap(_) => return,
        };
        let ip = view
            .src_ip
            .map_or_else(|| "-".to_owned(), |i| i.to_string());
        self.sources.push_back((
            Instant::now(),
            format!("{} {}", view.src_mac, ip),
            view.who(),
        ));
        self.recent.push_front(view);
        self.recent.truncate(RECENT);
    }

    fn draw(&self, f: &mut Frame<'_>) {
        let [head, rates, offenders, recent] = Layout::vertical([
            Constraint::Length(2),
            Constraint::Length(8),
            Constraint::Length(7),
            Constraint::Min(3),
        ])
        .areas(f.area());
        self.draw_header(f, head);
        self.draw_rates(f, rates);
        self.draw_offenders(f, offenders);
        self.draw_recent(f, recent);
    }

    fn draw_header(&self, f: &mut Frame<'_>, area: Rect) {
        let (dropped, ev) = self
            .stats
            .as_ref()
            .map_or((0, None), |s| (s.totals.dropped.packets, Some(s.events)));
        let ev_text = ev.map_or(String::new(), |e| {
            format!(
                "events {} sampled, {} over rate, {} lost",
                e.sampled, e.suppressed, e.lost
            )
        });
        let mode = if self.state.options.monitor {
            "monitor"
        } else {
            "enforce"
        };
        f.render_widget(
            Paragraph::new(vec![
                Line::styled(
                    format!(
                        "guard top: {} ({mode}, {} ports)   q quits",
                        self.loc.bridge,
                        self.state.ports.len()
                    ),
                    Style::default().add_modifier(Modifier::BOLD),
                ),
                Line::raw(format!("dropped {dropped} total; {ev_text}")),
            ]),
            area,
        );
    }

    fn draw_rates(&self, f: &mut Frame<'_>, area: Rect) {
        let rows = self.rates.iter().map(|(who, r, rate, total)| {
            Row::new(vec![
                who.clone(),
                (*r).to_owned(),
                format!("{rate:.0}"),
                total.to_string(),
            ])
        });
        f.render_widget(
            Table::new(
                rows,
                [
                    Constraint::Length(28),
                    Constraint::Length(18),
                    Constraint::Length(10),
                    Constraint::Length(12),
                ],
            )
            .header(Row::new(vec!["PORT", "REASON", "PPS", "TOTAL"]).style(bold()))
            .block(
                Block::default()
                    .borders(Borders::TOP)
                    .title("drops by port"),
            ),
            area,
        );
    }

    fn draw_offenders(&self, f: &mut Frame<'_>, area: Rect) {
        let mut by_source: HashMap<(&str, &str), u64> = HashMap::new();
        for (_, src, who) in &self.sources {
            *by_source.entry((src.as_str(), who.as_str())).or_default() += 1;
        }
        let mut top: Vec<_> = by_source.into_iter().collect();
        top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let rows = top.iter().map(|((src, who), n)| {
            Row::new(vec![(*src).to_owned(), (*who).to_owned(), n.to_string()])
        });
        f.render_widget(
            Table::new(
                rows,
                [
                    Constraint::Length(38),
                    Constraint::Length(28),
                    Constraint::Length(8),
                ],
            )
            .header(Row::new(vec!["SOURCE (MAC IP)", "PORT", "EVENTS"]).style(bold()))
            .block(
                Block::default()
                    .borders(Borders::TOP)
                    .title("top offenders (sampled events, last 10 s)"),
            ),
            area,
        );
    }

    fn draw_recent(&self, f: &mut Frame<'_>, area: Rect) {
        let lines: Vec<Line<'_>> = self
            .recent
            .iter()
            .map(|v| {
                let ep = guard::events::endpoint;
                Line::raw(format!(
                    "{} {} {} > {} {} {}",
                    v.time.get(11..23).unwrap_or(&v.time),
                    v.who(),
                    ep(v.src_ip, v.src_port),
                    ep(v.dst_ip, v.dst_port),
                    v.proto.as_deref().unwrap_or("-"),
                    v.reason
                ))
            })
            .collect();
        f.render_widget(
            Paragraph::new(lines).block(
                Block::default()
                    .borders(Borders::TOP)
                    .title("recent events"),
            ),
            area,
        );
    }
}

fn bold() -> Style {
    Style::default().add_modifier(Modifier::BOLD)
}

pub async fn run(cli: &Cli, a: &TopArgs) -> Result<ExitCode> {
    let crate::events::Opened {
        loc,
        state,
        labels,
        rules,
        ..
    } = crate::events::open(cli, a.bridge.as_deref()).await?;
    let feed = FeedThread::start(&loc)?;
    let mut view = View {
        loc,
        state,
        labels,
        rules,
        stats: None,
        rates: Vec::new(),
        prev: None,
        sources: VecDeque::new(),
        recent: VecDeque::new(),
    };
    view.refresh()?;
    let mut terminal = match ratatui::try_init() {
        Ok(t) => t,
        Err(e) => {
            // Raw mode may have been entered before the failure.
            ratatui::restore();
            return Err(e).context(
                "starting the terminal view (needs a terminal; `guardctl stats --watch` does not)",
            );
        }
    };
    let result = ui(
        &mut terminal,
        &mut view,
        feed,
        Duration::from_secs_f64(a.interval),
    );
    ratatui::restore();
    result.map(|()| ExitCode::SUCCESS)
}

fn ui(
    terminal: &mut DefaultTerminal,
    view: &mut View,
    mut feed: FeedThread,
    interval: Duration,
) -> Result<()> {
    let mut last = Instant::now();
    loop {
        // The feed thread renews the lease, and switches between the agent and the ring.
        while let Ok(msg) = feed.rx.try_recv() {
            match msg {
                Msg::Item(item) => view.push(item),
                Msg::Source(_) => {}
                Msg::Failed(e) => return Err(e),
            }
        }
        if last.elapsed() >= interval {
            view.refresh()?;
            last = Instant::now();
        }
        terminal
            .draw(|f| view.draw(f))
            .context("drawing the terminal")?;
        // The poll timeout paces the loop: input, events and redraws at most every 100 ms.
        if event::poll(Duration::from_millis(100)).context("reading the terminal")?
            && let Event::Key(k) = event::read().context("reading the terminal")?
            && k.kind == KeyEventKind::Press
        {
            let ctrl_c =
                k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
            if ctrl_c || matches!(k.code, KeyCode::Char('q') | KeyCode::Esc) {
                return Ok(());
            }
        }
    }
}
