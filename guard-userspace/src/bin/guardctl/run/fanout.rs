//! The agent as the one consumer of the event ring: it appends each event to the drop log
//! (rate-limited, `guard::droplog`) and passes it on to every subscriber of its socket
//! (`guard::feed::Hub`), so `events`, `top` and the log never split the ring between them.
//!
//! A thread of its own: it waits on the ring and the socket with `poll(2)`, and for the
//! consumer lock (a direct `events` or `top` holds it until it has subscribed to us and handed
//! the ring over) without stalling the netlink loop. On exit it reads the ring a last time,
//! leaves the lease in force when subscribers will take over, and closes the socket.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Instant,
};

use anyhow::{Context as _, Result};
use guard::{
    droplog::DropLog,
    events::{EventStream, EventView, RuleLabel, rule_labels},
    feed::Hub,
    identity::PortLabel,
    pins::{ConsumerLock, Location},
    state::State,
};

use super::out::{AgentEvent, Out};
use crate::output;

/// Port labels the agent's loop refreshes after reconciles.
pub type Labels = Arc<Mutex<BTreeMap<u32, PortLabel>>>;

/// How long the thread waits before it looks around (lock, lease, log, stop).
const WAKE_MS: i32 = 100;

pub struct Fanout {
    stop: Arc<AtomicBool>,
    reopen: Arc<AtomicBool>,
    pub labels: Labels,
    handle: Option<JoinHandle<()>>,
}

/// The drop log asked for: a path and a rate, or none (`--no-log`).
pub struct LogSpec {
    pub path: Option<PathBuf>,
    pub rate: u32,
}

impl Fanout {
    /// Binds the socket and opens the log (failing here, before the agent reports itself
    /// started), then starts the thread.
    pub fn start(
        loc: &Location,
        json: bool,
        log: &LogSpec,
        labels: BTreeMap<u32, PortLabel>,
    ) -> Result<Self> {
        let hub = Hub::bind(loc).context("serving drop events")?;
        let log = log
            .path
            .as_ref()
            .map(|p| DropLog::open(p, &loc.bridge, log.rate))
            .transpose()
            .context("opening the drop log")?;
        let stop = Arc::new(AtomicBool::new(false));
        let reopen = Arc::new(AtomicBool::new(false));
        let labels = Arc::new(Mutex::new(labels));
        let mut worker = Worker {
            loc: loc.clone(),
            json,
            hub,
            log,
            labels: labels.clone(),
            ring: None,
            rules: BTreeMap::new(),
            failing: None,
        };
        let (s, r) = (stop.clone(), reopen.clone());
        let handle = std::thread::Builder::new()
            .name("drop-events".to_owned())
            .spawn(move || worker.run(&s, &r))
            .context("starting the drop event thread")?;
        Ok(Self {
            stop,
            reopen,
            labels,
            handle: Some(handle),
        })
    }

    /// Reopens the log (SIGHUP: after a rotation that copied rather than moved it).
    pub fn reopen_log(&self) {
        self.reopen.store(true, Ordering::Relaxed);
    }

    pub fn set_labels(&self, labels: BTreeMap<u32, PortLabel>) {
        *self.labels.lock().unwrap_or_else(PoisonError::into_inner) = labels;
    }
}

impl Drop for Fanout {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

struct Worker {
    loc: Location,
    json: bool,
    hub: Hub,
    log: Option<DropLog>,
    labels: Labels,
    /// The ring, once the consumer lock is ours.
    ring: Option<(EventStream, ConsumerLock)>,
    rules: BTreeMap<u32, RuleLabel>,
    /// The item failing now (reported once, until it works again).
    failing: Option<&'static str>,
}

impl Worker {
    fn out(&self) -> Out<'_> {
        Out {
            json: self.json,
            bridge: &self.loc.bridge,
        }
    }

    fn run(&mut self, stop: &AtomicBool, reopen: &AtomicBool) {
        loop {
            let stopping = stop.load(Ordering::Relaxed);
            self.hub.accept();
            if self.ring.is_none() && !stopping {
                let r = self.take_ring();
                self.report("event-ring", r);
            }
            self.drain();
            if let Some((stream, _)) = &mut self.ring {
                let r = stream.keep_alive().map_err(anyhow::Error::from);
                self.report("event-lease", r);
            }
            self.hub.flush();
            if let Some(log) = &mut self.log {
                let mut r = log.tick(Instant::now());
                if r.is_ok() && reopen.swap(false, Ordering::Relaxed) {
                    r = log.reopen();
                }
                self.report("drop-log", r.map_err(anyhow::Error::from));
            }
            if stopping {
                break;
            }
            self.wait();
        }
        if let Some(log) = &mut self.log {
            let r = log.finish().map_err(anyhow::Error::from);
            self.report("drop-log", r);
        }
        if let Some((stream, lock)) = self.ring.take() {
            if self.hub.is_empty() {
                // Nobody to take over: events stop (their cost too) until a reader comes.
                drop(stream);
            } else {
                // Our subscribers take the lock once the socket closes, and find in the ring
                // what the datapath made meanwhile.
                stream.hand_over();
            }
            drop(lock);
        }
        // Dropping the hub (with the worker) removes the socket and closes the subscribers.
    }

    /// Takes the consumer lock and the ring when the lock is free.
    fn take_ring(&mut self) -> Result<()> {
        let Some(lock) = ConsumerLock::try_acquire(&self.loc)? else {
            return Ok(());
        };
        let stream = EventStream::open(&self.loc)
            .with_context(|| format!("opening the event ring of {}", self.loc.bridge))?;
        self.refresh_rules(&stream);
        self.ring = Some((stream, lock));
        let log = self.log.as_ref().map_or_else(
            || "no drop log".to_owned(),
            |l| format!("drop log {}", l.path().display()),
        );
        let msg = format!(
            "reading drop events of {}: {log}, subscribers at {}",
            self.loc.bridge,
            self.loc.events_socket().display()
        );
        self.out().say("events", msg);
        Ok(())
    }

    fn refresh_rules(&mut self, stream: &EventStream) {
        if let Ok(Some(state)) = State::load(&self.loc)
            && let Ok(rules) = rule_labels(stream.maps(), &state)
        {
            self.rules = rules;
        }
    }

    /// Logs and passes on every event in the ring.
    fn drain(&mut self) {
        let Some((mut stream, lock)) = self.ring.take() else {
            return;
        };
        let mut result = Ok(());
        while let Some(ev) = stream.try_next() {
            if ev.rule_id != 0 && !self.rules.contains_key(&ev.rule_id) {
                // A rule added since.
                self.refresh_rules(&stream);
            }
            let view = {
                let labels = self.labels.lock().unwrap_or_else(PoisonError::into_inner);
                EventView::new(&ev, &self.loc.bridge, labels.get(&ev.ifindex), &self.rules)
            };
            let Ok(line) = serde_json::to_string(&output::Schema::new("events", &view)) else {
                continue;
            };
            if let Some(log) = &mut self.log
                && let Err(e) = log.write(&line, Instant::now())
            {
                result = Err(e);
            }
            if !self.hub.is_empty() {
                let view = view.with_frame(ev.captured());
                if let Ok(line) = serde_json::to_string(&output::Schema::new("events", &view)) {
                    self.hub.send(&line);
                }
            }
        }
        self.ring = Some((stream, lock));
        self.report("drop-log", result.map_err(anyhow::Error::from));
    }

    /// Waits for an event, a subscriber, or `WAKE_MS`.
    fn wait(&self) {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        let mut fds = vec![libc::pollfd {
            fd: self.hub.listener_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        if let Some((stream, _)) = &self.ring {
            fds.push(libc::pollfd {
                fd: stream.as_fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        // SAFETY: `fds` is a valid array of its length; an error or EINTR ends the wait early.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, WAKE_MS) };
    }

    /// Reports an item's failure once, and its recovery.
    fn report(&mut self, item: &'static str, r: Result<()>) {
        match r {
            Err(e) if self.failing != Some(item) => {
                self.failing = Some(item);
                let chain = format!("{e:#}");
                self.out().emit(AgentEvent {
                    event: "failed",
                    item: Some(item.to_owned()),
                    error: Some(chain.clone()),
                    message: format!("{}: {item}: {chain}", self.loc.bridge),
                    ..AgentEvent::default()
                });
            }
            Ok(()) if self.failing == Some(item) => self.failing = None,
            _ => {}
        }
    }
}
