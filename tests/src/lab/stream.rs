//! Continuous traffic out of a guest while something else happens: an attack stream (UDP
//! attack cases round-robin, one round every `gap`, receivers bound beforehand) and MAC churn
//! (frames from ever new source MACs that make the bridge learn them). Both run on a thread of
//! their own until stopped and are paced against a clock, so a slow round does not stretch
//! the ones after it.

use std::{
    collections::BTreeSet,
    net::{SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};

use super::{
    Lab, Role,
    attack::{AttackCase, Attacker, Probe, build_frame, new_nonce, parse_marker},
    frame::Mac,
    sock::{PacketSocket, udp_bind, udp_collect},
};
use crate::{
    packet::{ETH_MIN_LEN, Eth},
    rng::Rng,
};

/// How long [`Stream::finish`] waits for frames still in flight.
const STRAGGLERS: Duration = Duration::from_secs(1);

/// Runs `round(seq)` every `gap` (against the clock from the start) until `stop` is set.
fn paced(stop: &AtomicBool, gap: Duration, mut round: impl FnMut(u32) -> Result<()>) -> Result<()> {
    let start = Instant::now();
    let mut seq = 0u32;
    while !stop.load(Ordering::Relaxed) {
        round(seq)?;
        seq = seq.wrapping_add(1);
        // Pacing, not synchronisation: the next round is due at `start + seq * gap`.
        let due = start + gap * seq;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
    }
    Ok(())
}

/// What a finished stream sent and what arrived.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub sent: u64,
    /// Frames counted at their receivers (each sequence number of each case once).
    pub delivered: u32,
    /// The sequence numbers (rounds) of which at least one frame arrived.
    pub delivered_seqs: BTreeSet<u32>,
}

/// UDP attack cases sent round-robin from one guest until stopped.
pub struct Stream {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    thread: Option<JoinHandle<Result<()>>>,
    nonce: u32,
    receivers: Vec<(AttackCase, UdpSocket)>,
}

impl Stream {
    /// Binds a receiver for each case (UDP cases only), then starts sending one frame of each
    /// case every `gap` from `attacker`.
    pub fn start(
        lab: &Lab,
        attacker: Attacker,
        cases: Vec<AttackCase>,
        gap: Duration,
    ) -> Result<Self> {
        let receivers = cases
            .iter()
            .map(|c| {
                let Probe::Udp { dst, rx } = c.probe else {
                    bail!("{}: a stream sends UDP cases only", c.name)
                };
                let sock = udp_bind(lab.ns(rx), SocketAddr::new(dst, 40_000 + c.id))?;
                Ok((c.clone(), sock))
            })
            .collect::<Result<Vec<_>>>()?;
        let nonce = new_nonce();
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let sender = PacketSocket::open(&attacker.ns, &attacker.ifname, 0)?;
        let thread = {
            let (stop, sent) = (Arc::clone(&stop), Arc::clone(&sent));
            std::thread::Builder::new()
                .name("guard-lab-stream".into())
                .spawn(move || {
                    paced(&stop, gap, |seq| {
                        for c in &cases {
                            sender.send(&build_frame(&attacker, c, nonce, seq))?;
                            sent.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(())
                    })
                })
                .context("starting the stream thread")?
        };
        Ok(Self {
            stop,
            sent,
            thread: Some(thread),
            nonce,
            receivers,
        })
    }

    /// Frames sent so far.
    #[must_use]
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Stops the sender and counts what arrived (waiting [`STRAGGLERS`] at most).
    pub fn finish(mut self) -> Result<Outcome> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join()
                .map_err(|_| anyhow!("the stream thread panicked"))?
                .context("the stream could not send")?;
        }
        let sent = self.sent();
        let rounds = u32::try_from(sent).unwrap_or(u32::MAX);
        let deadline = Instant::now() + STRAGGLERS;
        let mut out = Outcome {
            sent,
            ..Outcome::default()
        };
        for (c, sock) in &self.receivers {
            let mut seqs = BTreeSet::new();
            out.delivered += udp_collect(sock, rounds, deadline, |p, _| {
                let seq = parse_marker(p, self.nonce, c.id)?;
                seqs.insert(seq);
                Some(seq)
            })?;
            out.delivered_seqs.extend(seqs);
        }
        Ok(out)
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Frames from a new random locally administered source MAC each, sent from a guest to
/// another guest's MAC: bridged (never host-bound), and each one makes the bridge learn a
/// new FDB entry, as a guest that changes MACs or a flood of spoofed sources does.
pub struct MacChurn {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl MacChurn {
    /// Starts `per_second` frames per second out of `from`'s `eth0`, addressed to `to`.
    pub fn start(lab: &Lab, from: Role, to: Mac, per_second: u32, seed: u64) -> Result<Self> {
        let sender = PacketSocket::open(lab.ns(from), "eth0", 0)?;
        let gap = Duration::from_secs(1) / per_second.max(1);
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, sent) = (Arc::clone(&stop), Arc::clone(&sent));
            std::thread::Builder::new()
                .name("guard-lab-churn".into())
                .spawn(move || {
                    let mut rng = Rng(seed);
                    paced(&stop, gap, |_| {
                        let mut src = rng.next_u64().to_be_bytes();
                        // Unicast, locally administered.
                        src[2] = (src[2] & 0xfe) | 0x02;
                        let src: Mac = [src[2], src[3], src[4], src[5], src[6], src[7]];
                        let f = Eth::new(to, src)
                            .raw(0x88b5, b"guard-lab mac churn")
                            .pad_to(ETH_MIN_LEN)
                            .build();
                        sender.send(&f)?;
                        sent.fetch_add(1, Ordering::Relaxed);
                        Ok(())
                    })
                })
                .context("starting the MAC churn thread")?
        };
        Ok(Self {
            stop,
            sent,
            thread: Some(thread),
        })
    }

    /// Stops it; returns the frames sent.
    pub fn finish(mut self) -> Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join()
                .map_err(|_| anyhow!("the MAC churn thread panicked"))?
                .context("the MAC churn could not send")?;
        }
        Ok(self.sent.load(Ordering::Relaxed))
    }
}

impl Drop for MacChurn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
