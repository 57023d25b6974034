//! The agent's drop log: one JSON object per line (`guardctl.events.v1`, the shape of
//! `guardctl events --json`), appended to a file that outlives the agent, rate-limited in
//! userspace.
//!
//! The datapath already samples (`event_rate` per port and second); the log adds a token bucket
//! over all ports, so that a flood on many ports cannot fill the disk. Lines over the rate are
//! counted, and once the bucket has a token again (at most once a second) one summary line
//! says how many were left out: `{"schema": "guardctl.droplog.v1", "suppressed": K, ...}`.
//!
//! The file is opened with `O_APPEND` (every line is one `write(2)`, so lines from two agent
//! runs never interleave mid-line) and reopened when its path no longer names the open inode
//! (logrotate moved it away) or on request (SIGHUP).

use std::{
    fs::{self, File},
    io::{self, Write as _},
    os::unix::fs::MetadataExt as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::error::{GuardError, Result};

/// `/var/log/guard`: where the default logs go (`LogsDirectory=guard` in the unit).
pub const LOG_ROOT: &str = "/var/log/guard";

/// The default log of a bridge: `/var/log/guard/<scope>/<bridge>.jsonl` (the scope as in
/// `/run/guard`).
#[must_use]
pub fn default_path(loc: &crate::pins::Location) -> PathBuf {
    Path::new(LOG_ROOT)
        .join(loc.scope())
        .join(format!("{}.jsonl", loc.bridge))
}

/// A token bucket: `rate` tokens a second, at most `rate` held (a burst of one second).
#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// Full at `now`. A rate of 0 admits nothing.
    #[must_use]
    pub fn new(rate: u32, now: Instant) -> Self {
        Self {
            rate: f64::from(rate),
            tokens: f64::from(rate),
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.rate);
        self.last = now;
    }

    /// Takes a token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Is a token there (without taking it)?
    pub fn ready(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= 1.0
    }
}

/// The summary of lines left out (`guardctl.droplog.v1`).
#[derive(Serialize)]
#[expect(
    clippy::struct_field_names,
    reason = "the JSON field is `suppressed`, as the summary line documents"
)]
struct Suppressed<'a> {
    schema: &'static str,
    time: String,
    bridge: &'a str,
    /// Lines not written since the last line or summary.
    suppressed: u64,
    /// The time of the first of them.
    since: String,
    /// The log's rate limit, lines per second.
    rate_limit: u32,
}

/// The schema of the summary lines.
pub const SUMMARY_SCHEMA: &str = "guardctl.droplog.v1";

/// How often a summary may be written, and the inode checked.
const TICK: Duration = Duration::from_secs(1);

/// An open drop log.
pub struct DropLog {
    path: PathBuf,
    file: File,
    /// (dev, ino) of `file`.
    id: (u64, u64),
    bucket: TokenBucket,
    rate: u32,
    bridge: String,
    suppressed: u64,
    /// When the current run of suppressed lines began (wall clock and monotonic).
    suppressed_since: Option<(std::time::SystemTime, Instant)>,
    checked: Instant,
}

impl DropLog {
    /// Opens (creating it and its directories) `path` for appending, `rate` lines a second.
    pub fn open(path: &Path, bridge: &str, rate: u32) -> Result<Self> {
        let (file, id) = open_append(path)?;
        let now = Instant::now();
        Ok(Self {
            path: path.to_owned(),
            file,
            id,
            bucket: TokenBucket::new(rate, now),
            rate,
            bridge: bridge.to_owned(),
            suppressed: 0,
            suppressed_since: None,
            checked: now,
        })
    }

    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Lines suppressed and not yet summarised.
    #[must_use]
    pub fn pending_suppressed(&self) -> u64 {
        self.suppressed
    }

    /// Appends one line (`line` without its newline) if the rate allows; `Ok(false)`: counted
    /// as suppressed.
    pub fn write(&mut self, line: &str, now: Instant) -> Result<bool> {
        self.summarise(now)?;
        if !self.bucket.take(now) {
            if self.suppressed == 0 {
                self.suppressed_since = Some((std::time::SystemTime::now(), now));
            }
            self.suppressed += 1;
            return Ok(false);
        }
        self.append(line)?;
        Ok(true)
    }

    /// Writes the summary when it is due; reopens the file when it was moved away. Call at
    /// least once a second.
    pub fn tick(&mut self, now: Instant) -> Result<()> {
        if now.saturating_duration_since(self.checked) >= TICK {
            self.checked = now;
            let moved = match fs::metadata(&self.path) {
                Ok(m) => (m.dev(), m.ino()) != self.id,
                Err(e) if e.kind() == io::ErrorKind::NotFound => true,
                Err(_) => false,
            };
            if moved {
                self.reopen()?;
            }
        }
        self.summarise(now)
    }

    /// Opens the path again (after a rotation, or on SIGHUP).
    pub fn reopen(&mut self) -> Result<()> {
        let (file, id) = open_append(&self.path)?;
        self.file = file;
        self.id = id;
        Ok(())
    }

    /// Writes any summary still owed, whatever the rate (the agent is exiting).
    pub fn finish(&mut self) -> Result<()> {
        if self.suppressed > 0 {
            self.write_summary()?;
        }
        Ok(())
    }

    fn summarise(&mut self, now: Instant) -> Result<()> {
        let Some((_, began)) = self.suppressed_since else {
            return Ok(());
        };
        // At most one summary a second, and only once the bucket has a token again.
        if now.saturating_duration_since(began) >= TICK && self.bucket.ready(now) {
            self.write_summary()?;
        }
        Ok(())
    }

    fn write_summary(&mut self) -> Result<()> {
        let since = self
            .suppressed_since
            .map_or_else(std::time::SystemTime::now, |(t, _)| t);
        let s = Suppressed {
            schema: SUMMARY_SCHEMA,
            time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            bridge: &self.bridge,
            suppressed: self.suppressed,
            since: humantime::format_rfc3339_millis(since).to_string(),
            rate_limit: self.rate,
        };
        let line = serde_json::to_string(&s).map_err(|e| GuardError::DropLog {
            path: self.path.clone(),
            source: io::Error::other(e),
        })?;
        self.append(&line)?;
        self.suppressed = 0;
        self.suppressed_since = None;
        Ok(())
    }

    fn append(&mut self, line: &str) -> Result<()> {
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        // One write(2) per line: with O_APPEND the line lands whole at the end.
        self.file
            .write_all(&buf)
            .map_err(|source| GuardError::DropLog {
                path: self.path.clone(),
                source,
            })
    }
}

fn open_append(path: &Path) -> Result<(File, (u64, u64))> {
    let err = |source| GuardError::DropLog {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        fs::create_dir_all(dir).map_err(err)?;
    }
    // The lines carry guest and host addresses: not world-readable.
    let file = fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)
        .map_err(err)?;
    let m = file.metadata().map_err(err)?;
    Ok((file, (m.dev(), m.ino())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_admits_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, t0);
        let burst = (0..100).filter(|_| b.take(t0)).count();
        assert_eq!(burst, 10, "a full bucket holds one second of tokens");
        assert!(!b.take(t0));
        // A tenth of a second later: one more token.
        let t1 = t0 + Duration::from_millis(100);
        assert!(b.take(t1));
        assert!(!b.take(t1));
        // Over 5 s at a steady flood: about 10 a second, never more than the refill allows.
        let mut admitted = 0;
        for ms in 1..=5000u64 {
            let t = t1 + Duration::from_millis(ms);
            admitted += (0..10).filter(|_| b.take(t)).count();
        }
        assert!((49..=50).contains(&admitted), "{admitted}");
        // Idle for long: never more than the burst.
        let t2 = t1 + Duration::from_secs(3600);
        assert_eq!((0..100).filter(|_| b.take(t2)).count(), 10);
    }

    #[test]
    fn zero_rate_admits_nothing() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(0, t0);
        assert!(!b.take(t0 + Duration::from_secs(10)));
    }

    #[test]
    fn log_suppresses_over_the_rate_and_summarises_once() {
        let dir = std::env::temp_dir().join(format!("guard-droplog-{}", std::process::id()));
        let path = dir.join("sub").join("br.jsonl");
        let mut log = DropLog::open(&path, "br", 3).expect("open");
        let t0 = Instant::now();
        let written = (0..10)
            .filter(|i| log.write(&format!("{{\"n\":{i}}}"), t0).expect("write"))
            .count();
        assert_eq!(written, 3);
        assert_eq!(log.pending_suppressed(), 7);
        // Not yet: the summary waits a second.
        log.tick(t0 + Duration::from_millis(500)).expect("tick");
        assert_eq!(log.pending_suppressed(), 7);
        log.tick(t0 + Duration::from_millis(1100)).expect("tick");
        assert_eq!(log.pending_suppressed(), 0);
        log.tick(t0 + Duration::from_millis(2500)).expect("tick");
        drop(log);
        // A second run appends.
        let mut log = DropLog::open(&path, "br", 3).expect("reopen");
        assert!(log.write("{\"n\":99}", Instant::now()).expect("write"));
        drop(log);
        let text = fs::read_to_string(&path).expect("read");
        let _ = fs::remove_dir_all(&dir);
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert_eq!(lines[3]["schema"], SUMMARY_SCHEMA);
        assert_eq!(lines[3]["suppressed"], 7);
        assert_eq!(lines[3]["rate_limit"], 3);
        assert_eq!(lines[4]["n"], 99);
    }

    #[test]
    fn a_moved_log_is_reopened() {
        let dir = std::env::temp_dir().join(format!("guard-droplog-rot-{}", std::process::id()));
        let path = dir.join("br.jsonl");
        let mut log = DropLog::open(&path, "br", 100).expect("open");
        let t0 = Instant::now();
        log.write("{\"n\":1}", t0).expect("write");
        fs::rename(&path, dir.join("br.jsonl.1")).expect("rotate");
        log.tick(t0 + Duration::from_secs(2)).expect("tick");
        log.write("{\"n\":2}", t0 + Duration::from_secs(2))
            .expect("write");
        let new = fs::read_to_string(&path).expect("read");
        let old = fs::read_to_string(dir.join("br.jsonl.1")).expect("read");
        let _ = fs::remove_dir_all(&dir);
        assert_eq!(old, "{\"n\":1}\n");
        assert_eq!(new, "{\"n\":2}\n");
    }
}
