//! The reading side of `events` and `top`: a thread that runs a [`Feed`] (the agent's socket,
//! or the ring itself when no agent runs, never both, never split with another reader) and
//! passes what it reads to the verb's loop.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context as _, Result};
use guard::{
    feed::{Feed, Incoming, Source},
    pins::Location,
};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

/// What the thread reports.
pub enum Msg {
    Item(Incoming),
    /// It now reads from there.
    Source(Source),
    Failed(anyhow::Error),
}

/// How long the thread waits for input before it looks around (lease, agent, stop).
const WAKE: Duration = Duration::from_millis(100);

pub struct FeedThread {
    pub rx: UnboundedReceiver<Msg>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl FeedThread {
    pub fn start(loc: &Location) -> Result<Self> {
        let (tx, rx) = unbounded_channel();
        let stop = Arc::new(AtomicBool::new(false));
        let (loc, flag) = (loc.clone(), stop.clone());
        let handle = std::thread::Builder::new()
            .name("events".to_owned())
            .spawn(move || {
                if let Err(e) = run(&loc, &tx, &flag) {
                    let _ = tx.send(Msg::Failed(e));
                }
            })
            .context("starting the event reader thread")?;
        Ok(Self {
            rx,
            stop,
            handle: Some(handle),
        })
    }

    /// Reads what is there a last time, gives the ring up, and ends the thread; what it read
    /// stays in `rx`.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for FeedThread {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(loc: &Location, tx: &UnboundedSender<Msg>, stop: &AtomicBool) -> Result<()> {
    let mut feed = Feed::new(loc);
    let what = || format!("reading the events of {:?}", loc.bridge);
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        if !stopping && let Some(s) = feed.maintain().with_context(what)? {
            let _ = tx.send(Msg::Source(s));
        }
        // Drain (also on the way out: a signal must not lose what was made).
        while let Some(item) = feed.try_next().with_context(what)? {
            if tx.send(Msg::Item(item)).is_err() {
                return Ok(());
            }
        }
        if stopping {
            // Dropping the feed gives the lease up (a direct reader) or unsubscribes.
            return Ok(());
        }
        if feed.source() != Source::Waiting {
            feed.wait(WAKE);
        } else if feed.maintain().with_context(what)?.is_none() {
            // Nobody to read from yet (another reader holds the ring, no agent answers).
            feed.wait(WAKE);
        } else {
            let _ = tx.send(Msg::Source(feed.source()));
        }
    }
}
