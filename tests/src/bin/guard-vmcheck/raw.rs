//! Raw frames on a link (`AF_PACKET`), from inside a named network namespace.
//!
//! The frames are written byte for byte, tags included: the guests here have no VLAN devices
//! and must send exactly the frames an attacker would.

use std::{
    collections::BTreeMap,
    ffi::CString,
    fs::File,
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::frames::find_marker;

/// Moves the calling thread into `/run/netns/NAME` (network namespace only).
pub fn enter_netns(name: &str) -> Result<()> {
    let path = format!("/run/netns/{name}");
    let file = File::open(&path).with_context(|| format!("opening {path}"))?;
    // SAFETY: plain syscall on a file descriptor we own for its duration.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("setns into {path}"));
    }
    Ok(())
}

fn ifindex(iface: &str) -> Result<i32> {
    let c = CString::new(iface).with_context(|| format!("interface name {iface:?}"))?;
    // SAFETY: `c` is a valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("no interface {iface}"));
    }
    Ok(i32::try_from(idx)?)
}

/// A packet socket bound to `iface`, receiving every protocol.
fn packet_socket(iface: &str) -> Result<OwnedFd> {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain syscall; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("socket(AF_PACKET)");
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: all-zero is a valid sockaddr_ll, filled in below.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = ifindex(iface)?;
    // SAFETY: `sll` is a valid sockaddr_ll of the size passed.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const sll).cast(),
            size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("binding to {iface}"));
    }
    Ok(fd)
}

/// Sends each frame on `iface` inside `netns` (`None`: the caller's namespace), pausing
/// `gap` between frames so a slow (TCG) receiver keeps up.
pub fn send(netns: Option<&str>, iface: &str, frames: &[Vec<u8>], gap: Duration) -> Result<()> {
    let netns = netns.map(str::to_owned);
    let iface = iface.to_owned();
    let frames = frames.to_vec();
    // A thread of its own: setns changes the calling thread only.
    thread::spawn(move || -> Result<()> {
        if let Some(ns) = &netns {
            enter_netns(ns)?;
        }
        let fd = packet_socket(&iface)?;
        for f in &frames {
            // SAFETY: `f` is a valid buffer of the length passed.
            let n = unsafe { libc::send(fd.as_raw_fd(), f.as_ptr().cast(), f.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error())
                    .with_context(|| format!("sending a {}-byte frame on {iface}", f.len()));
            }
            thread::sleep(gap);
        }
        Ok(())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("sender thread panicked"))?
}

/// A receiver counting marked frames that arrive on an interface.
pub struct Receiver {
    stop: mpsc::Sender<()>,
    handle: thread::JoinHandle<Result<BTreeMap<u16, u32>>>,
}

impl Receiver {
    /// Starts listening on `iface` in `netns`; returns once the socket is bound, so nothing
    /// sent afterwards can be missed.
    pub fn start(netns: Option<&str>, iface: &str) -> Result<Self> {
        let netns = netns.map(str::to_owned);
        let iface = iface.to_owned();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
        let (stop, stop_rx) = mpsc::channel::<()>();
        let handle = thread::spawn(move || -> Result<BTreeMap<u16, u32>> {
            let setup = || -> Result<OwnedFd> {
                if let Some(ns) = &netns {
                    enter_netns(ns)?;
                }
                let fd = packet_socket(&iface)?;
                let tv = libc::timeval {
                    tv_sec: 0,
                    tv_usec: 50_000,
                };
                // SAFETY: valid option value of the size passed.
                unsafe {
                    libc::setsockopt(
                        fd.as_raw_fd(),
                        libc::SOL_SOCKET,
                        libc::SO_RCVTIMEO,
                        (&raw const tv).cast(),
                        size_of::<libc::timeval>() as u32,
                    );
                }
                Ok(fd)
            };
            let fd = match setup() {
                Ok(fd) => {
                    let _ = ready_tx.send(Ok(()));
                    fd
                }
                Err(e) => {
                    let msg = format!("{e:#}");
                    let _ = ready_tx.send(Err(e));
                    bail!("{msg}");
                }
            };
            let mut counts = BTreeMap::new();
            let mut buf = vec![0u8; 4096];
            loop {
                // SAFETY: all-zero is a valid sockaddr_ll; recvfrom fills it.
                let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                let mut len = size_of::<libc::sockaddr_ll>() as u32;
                // SAFETY: `buf` and `from` are valid for the sizes passed.
                let n = unsafe {
                    libc::recvfrom(
                        fd.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        0,
                        (&raw mut from).cast(),
                        &raw mut len,
                    )
                };
                if let Ok(n) = usize::try_from(n) {
                    // Frames this host sends out of the interface are seen too: only
                    // arrivals count.
                    if from.sll_pkttype != libc::PACKET_OUTGOING
                        && let Some((case, _)) = find_marker(&buf[..n])
                    {
                        *counts.entry(case).or_insert(0) += 1;
                    }
                } else {
                    let e = io::Error::last_os_error();
                    if !matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) {
                        return Err(e).with_context(|| format!("receiving on {iface}"));
                    }
                }
                if stop_rx.try_recv().is_ok() {
                    return Ok(counts);
                }
            }
        });
        ready_rx
            .recv()
            .context("receiver thread ended before binding")??;
        Ok(Self { stop, handle })
    }

    /// Stops after letting `settle` pass (frames still in flight arrive), returns the count
    /// of marked frames per case id.
    pub fn finish(self, settle: Duration) -> Result<BTreeMap<u16, u32>> {
        let until = Instant::now() + settle;
        thread::sleep(until.saturating_duration_since(Instant::now()));
        let _ = self.stop.send(());
        self.handle
            .join()
            .map_err(|_| anyhow::anyhow!("receiver thread panicked"))?
    }
}
