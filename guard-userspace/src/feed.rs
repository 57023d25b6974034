//! One consumer of the event ring, any number of readers.
//!
//! A ring buffer has one consumer position, so two readers would split its events. The
//! consumer is whoever holds the bridge's [`ConsumerLock`]: the agent (`guardctl run`) while
//! it runs, otherwise one `guardctl events` or `top`. The agent passes every event on to
//! subscribers over a unix stream socket in the state directory ([`Hub`], at
//! [`Location::events_socket`]); `events` and `top` read through a [`Feed`], which subscribes
//! to the agent when its socket answers, and otherwise reads the ring itself, holding the lock.
//!
//! Hand-over without loss or split: a direct reader that sees the agent's socket subscribes
//! first, then releases the ring without giving the lease up ([`EventStream::hand_over`]), then
//! the lock; the agent, which was waiting for the lock, renews the lease and reads what the
//! datapath put into the ring meanwhile. When the agent exits it reads the ring a last time,
//! hands it over the same way and closes the socket; its subscribers take the lock and read the
//! ring themselves until an agent answers again.
//!
//! The socket speaks JSON lines: first a hello, `{"schema": "guardctl.feed.v1", "hello": true,
//! "bridge": ..., "pid": ...}`, then one `guardctl.events.v1` object per event (with the
//! captured bytes in `frame`), and `{"schema": "guardctl.feed.v1", "gap": K}` where K events
//! did not reach this subscriber: the agent never waits for a slow subscriber.

use std::{
    io::{self, Read as _, Write as _},
    os::{
        fd::{AsFd as _, AsRawFd as _, RawFd},
        unix::{
            fs::PermissionsExt as _,
            net::{UnixListener, UnixStream},
        },
    },
    path::PathBuf,
    time::{Duration, Instant},
};

use guard_common::event::DropEvent;
use serde::{Deserialize, Serialize};

use crate::{
    error::{GuardError, Result},
    events::{EventStream, EventView},
    pins::{ConsumerLock, Location},
};

/// The schema of the socket's own lines (hello, gap).
pub const FEED_SCHEMA: &str = "guardctl.feed.v1";

/// How long a subscriber waits for the agent's hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(2);

/// How often a direct reader looks for an agent's socket.
const AGENT_CHECK: Duration = Duration::from_millis(250);

#[derive(Serialize, Deserialize, Default)]
struct Control {
    schema: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    hello: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bridge: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gap: Option<u64>,
}

fn control_line(c: &Control) -> String {
    // A struct of strings and integers always serialises.
    serde_json::to_string(c).unwrap_or_default()
}

/// The agent's side: the listening socket and its subscribers.
pub struct Hub {
    listener: UnixListener,
    path: PathBuf,
    hello: String,
    subs: Vec<Sub>,
}

struct Sub {
    stream: UnixStream,
    /// The rest of a line the socket did not take whole.
    pending: Vec<u8>,
    /// Events not delivered since the last one that was.
    lost: u64,
}

impl Hub {
    /// Binds the socket of `loc` (replacing a stale one: only one agent runs per bridge).
    pub fn bind(loc: &Location) -> Result<Self> {
        let path = loc.events_socket();
        let err = |source| GuardError::EventSocket {
            path: path.clone(),
            source,
        };
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(e)),
        }
        let listener = UnixListener::bind(&path).map_err(err)?;
        listener.set_nonblocking(true).map_err(err)?;
        // The events name hosts and addresses: root's only, like the state.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
        let hello = control_line(&Control {
            schema: FEED_SCHEMA.to_owned(),
            hello: true,
            bridge: Some(loc.bridge.clone()),
            pid: Some(std::process::id()),
            ..Control::default()
        });
        Ok(Self {
            listener,
            path,
            hello,
            subs: Vec::new(),
        })
    }

    /// The listening socket, to wait for subscribers with `poll(2)`.
    #[must_use]
    pub fn listener_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    /// Accepts every subscriber waiting, greeting each; returns how many came.
    pub fn accept(&mut self) -> usize {
        let mut n = 0;
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let mut sub = Sub {
                        stream,
                        pending: Vec::new(),
                        lost: 0,
                    };
                    let hello = self.hello.clone();
                    if sub.deliver(&hello) {
                        self.subs.push(sub);
                        n += 1;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // WouldBlock: none left; another error: try again at the next wake.
                Err(_) => return n,
            }
        }
    }

    /// Subscribers connected.
    #[must_use]
    pub fn len(&self) -> usize {
        self.subs.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.subs.is_empty()
    }

    /// Sends one line (without its newline) to every subscriber, without waiting: one whose
    /// socket is full loses it (counted, and reported to it as a gap later); one that has
    /// gone is dropped.
    pub fn send(&mut self, line: &str) {
        self.subs.retain_mut(|s| s.deliver(line));
    }

    /// Pushes out what subscribers' sockets did not take earlier.
    pub fn flush(&mut self) {
        self.subs.retain_mut(Sub::flush);
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        // Subscribers see end-of-file when `subs` goes, right after.
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Sub {
    /// Writes what is pending; false when the subscriber has gone.
    fn flush(&mut self) -> bool {
        while !self.pending.is_empty() {
            match self.stream.write(&self.pending) {
                Ok(0) => return false,
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        true
    }

    /// Delivers one line or counts it as lost; false when the subscriber has gone.
    fn deliver(&mut self, line: &str) -> bool {
        if !self.flush() {
            return false;
        }
        if !self.pending.is_empty() {
            self.lost += 1;
            return true;
        }
        let mut data = Vec::with_capacity(line.len() + 48);
        if self.lost > 0 {
            data.extend_from_slice(
                control_line(&Control {
                    schema: FEED_SCHEMA.to_owned(),
                    gap: Some(self.lost),
                    ..Control::default()
                })
                .as_bytes(),
            );
            data.push(b'\n');
        }
        data.extend_from_slice(line.as_bytes());
        data.push(b'\n');
        loop {
            match self.stream.write(&data) {
                Ok(0) => return false,
                Ok(n) => {
                    self.lost = 0;
                    self.pending = data.split_off(n);
                    return true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.lost += 1;
                    return true;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }
}

/// What a [`Feed`] yields.
pub enum Incoming {
    /// Read from the ring: the caller names its port and rule.
    Raw(DropEvent),
    /// From the agent, already named.
    View(Box<EventView>),
    /// This many events did not reach us (the agent found our socket full).
    Gap(u64),
}

/// Where a [`Feed`] reads from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The agent's socket; the agent's pid.
    Agent(u32),
    /// The ring itself, holding the consumer lock.
    Direct,
    /// Neither: another direct reader holds the ring, and no agent answers.
    Waiting,
}

enum Conn {
    None,
    Agent {
        stream: UnixStream,
        buf: Vec<u8>,
        pid: u32,
    },
    Direct {
        stream: Box<EventStream>,
        lock: ConsumerLock,
        checked: Instant,
    },
}

/// A reader of one bridge's events that never splits them with another (module docs).
pub struct Feed {
    loc: Location,
    conn: Conn,
}

impl Feed {
    #[must_use]
    pub fn new(loc: &Location) -> Self {
        Self {
            loc: loc.clone(),
            conn: Conn::None,
        }
    }

    #[must_use]
    pub fn source(&self) -> Source {
        match &self.conn {
            Conn::None => Source::Waiting,
            Conn::Agent { pid, .. } => Source::Agent(*pid),
            Conn::Direct { .. } => Source::Direct,
        }
    }

    /// Finds a source, or a better one: the agent when it answers (also instead of the ring,
    /// which is then handed over to it), else the ring when its lock is free. Returns the new
    /// source when it changed. Call it after [`Feed::try_next`] runs dry, at least every few
    /// hundred milliseconds (it also renews the lease of a direct reader).
    pub fn maintain(&mut self) -> Result<Option<Source>> {
        let before = self.source();
        let look_for_agent = match &mut self.conn {
            Conn::Agent { .. } => false,
            Conn::None => true,
            Conn::Direct {
                stream, checked, ..
            } => {
                stream.keep_alive()?;
                let due = checked.elapsed() >= AGENT_CHECK;
                if due {
                    *checked = Instant::now();
                }
                due
            }
        };
        if look_for_agent && let Some((sock, buf, pid)) = self.subscribe() {
            // Subscribed first, so nothing the agent reads from now on is missed; then the
            // ring goes with its lease in force, then the lock the agent waits for.
            if let Conn::Direct { stream, lock, .. } = std::mem::replace(
                &mut self.conn,
                Conn::Agent {
                    stream: sock,
                    buf,
                    pid,
                },
            ) {
                stream.hand_over();
                drop(lock);
            }
        } else if matches!(self.conn, Conn::None)
            && let Some(lock) = ConsumerLock::try_acquire(&self.loc)?
        {
            let stream = EventStream::open(&self.loc)?;
            self.conn = Conn::Direct {
                stream: Box::new(stream),
                lock,
                checked: Instant::now(),
            };
        }
        let after = self.source();
        Ok((after != before).then_some(after))
    }

    /// Connects to the agent's socket and reads its hello. `None`: no agent answers.
    fn subscribe(&self) -> Option<(UnixStream, Vec<u8>, u32)> {
        let path = self.loc.events_socket();
        if !path.exists() {
            return None;
        }
        let mut stream = UnixStream::connect(&path).ok()?;
        stream.set_read_timeout(Some(HELLO_TIMEOUT)).ok()?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let end = loop {
            if let Some(i) = buf.iter().position(|b| *b == b'\n') {
                break i;
            }
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let hello: Control = serde_json::from_slice(&buf[..end]).ok()?;
        if hello.schema != FEED_SCHEMA || !hello.hello {
            return None;
        }
        buf.drain(..=end);
        stream.set_nonblocking(true).ok()?;
        Some((stream, buf, hello.pid.unwrap_or(0)))
    }

    /// The descriptor to wait on (`poll(2)`, readable), if there is a source.
    #[must_use]
    pub fn fd(&self) -> Option<RawFd> {
        match &self.conn {
            Conn::None => None,
            Conn::Agent { stream, .. } => Some(stream.as_raw_fd()),
            Conn::Direct { stream, .. } => Some(stream.as_fd().as_raw_fd()),
        }
    }

    /// Waits up to `timeout` for something to read (or just sleeps, without a source).
    pub fn wait(&self, timeout: Duration) {
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        match self.fd() {
            Some(fd) => {
                let mut p = libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd; an error or EINTR only ends the wait early.
                unsafe { libc::poll(&raw mut p, 1, ms) };
            }
            None => std::thread::sleep(timeout),
        }
    }

    /// The next event already there, without waiting. When the agent has gone, the source
    /// becomes [`Source::Waiting`] and [`Feed::maintain`] finds the next one.
    pub fn try_next(&mut self) -> Result<Option<Incoming>> {
        match &mut self.conn {
            Conn::None => Ok(None),
            Conn::Direct { stream, .. } => Ok(stream.try_next().map(Incoming::Raw)),
            Conn::Agent { stream, buf, .. } => {
                let mut chunk = [0u8; 16384];
                loop {
                    if let Some(i) = buf.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = buf.drain(..=i).collect();
                        if let Some(item) = parse_line(&line[..i]) {
                            return Ok(Some(item));
                        }
                        continue;
                    }
                    match stream.read(&mut chunk) {
                        Ok(0) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        // A reset is the agent going away too.
                        Err(_) => break,
                    }
                }
                self.conn = Conn::None;
                Ok(None)
            }
        }
    }

    /// The direct reader's event stream (for its maps), if reading directly.
    #[must_use]
    pub fn direct(&self) -> Option<&EventStream> {
        match &self.conn {
            Conn::Direct { stream, .. } => Some(stream),
            _ => None,
        }
    }
}

/// One line of the socket: an event, a gap, or something to skip (a hello, a future line).
fn parse_line(line: &[u8]) -> Option<Incoming> {
    let v: serde_json::Value = serde_json::from_slice(line).ok()?;
    if v["schema"] == FEED_SCHEMA {
        return v["gap"].as_u64().map(Incoming::Gap);
    }
    serde_json::from_value::<EventView>(v)
        .ok()
        .map(|e| Incoming::View(Box::new(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_as_events_gaps_or_nothing() {
        let gap = control_line(&Control {
            schema: FEED_SCHEMA.to_owned(),
            gap: Some(7),
            ..Control::default()
        });
        assert!(matches!(parse_line(gap.as_bytes()), Some(Incoming::Gap(7))));
        let hello = control_line(&Control {
            schema: FEED_SCHEMA.to_owned(),
            hello: true,
            ..Control::default()
        });
        assert!(parse_line(hello.as_bytes()).is_none());
        let ev = r#"{"schema":"guardctl.events.v1","time":"2026-01-01T00:00:00.000Z",
            "bridge":"br","port":"vnet0","ifindex":3,"vm":null,"port_mac":null,
            "src_mac":"02:00:00:00:00:01","dst_mac":"02:00:00:00:00:02","vlans":[],
            "ethertype":"0x0800","src_ip":"10.0.0.1","dst_ip":"10.0.0.2","proto":"udp",
            "src_port":1,"dst_port":2,"reason":"deny_ipv4","rule_id":3,"rule":null,
            "len":60,"captured":60,"frame":"0aff"}"#;
        let Some(Incoming::View(v)) = parse_line(ev.replace('\n', "").as_bytes()) else {
            panic!("not an event");
        };
        assert_eq!(v.frame_bytes(), [0x0a, 0xff]);
        assert_eq!(v.reason, "deny_ipv4");
    }

    #[test]
    fn a_full_subscriber_loses_events_with_a_gap_and_never_blocks() {
        let (a, mut b) = UnixStream::pair().expect("pair");
        a.set_nonblocking(true).expect("nonblocking");
        let mut sub = Sub {
            stream: a,
            pending: Vec::new(),
            lost: 0,
        };
        let line = "x".repeat(1000);
        // Far more than a socket buffer holds; never blocks.
        for _ in 0..10_000 {
            assert!(sub.deliver(&line));
        }
        assert!(sub.lost > 0, "nothing lost with a full socket");
        let lost = sub.lost;
        // Read everything out, then one more line carries the gap.
        b.set_nonblocking(true).expect("nonblocking");
        let mut all = Vec::new();
        let mut chunk = vec![0u8; 65536];
        loop {
            match b.read(&mut chunk) {
                Ok(n) if n > 0 => all.extend_from_slice(&chunk[..n]),
                _ => {
                    if sub.pending.is_empty() {
                        break;
                    }
                    assert!(sub.flush());
                }
            }
        }
        assert!(sub.deliver("last"));
        let mut tail = Vec::new();
        let _ = b.read_to_end(&mut tail);
        let text = String::from_utf8(tail).expect("utf8");
        assert_eq!(
            text,
            format!("{{\"schema\":\"{FEED_SCHEMA}\",\"gap\":{lost}}}\nlast\n")
        );
        // Whole lines only, before the gap.
        let delivered = String::from_utf8(all).expect("utf8");
        assert!(delivered.lines().all(|l| l == line));
        assert_eq!(delivered.lines().count() as u64 + lost, 10_000);
    }
}
