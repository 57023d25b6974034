//! Sockets the lab sends and measures with: `AF_PACKET` (raw frames out of a guest, frame
//! capture at a guest), UDP receivers, raw ICMP echo.

use std::{
    io,
    mem::size_of,
    net::{IpAddr, SocketAddr, UdpSocket},
    os::fd::{AsFd, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use super::netns::in_netns;

/// Waits until `fd` is readable or `deadline` passes; `false` on timeout.
pub fn wait_readable(fd: BorrowedFd<'_>, deadline: Instant) -> io::Result<bool> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX);
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&raw mut pfd, 1, ms) };
        match rc {
            0 => return Ok(false),
            1.. => return Ok(true),
            _ => {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
        }
    }
}

fn check(rc: libc::c_int, what: &str) -> Result<()> {
    if rc < 0 {
        return Err(io::Error::last_os_error()).context(what.to_owned());
    }
    Ok(())
}

/// Raises a socket's receive buffer (`SO_RCVBUFFORCE`, we are root) so a burst of test
/// traffic is never lost to a full buffer before it is counted.
pub fn grow_rcvbuf(fd: BorrowedFd<'_>, bytes: libc::c_int) -> Result<()> {
    // SAFETY: valid fd, option value is a c_int.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&raw const bytes).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    check(rc, "setsockopt(SO_RCVBUFFORCE)")
}

/// `SO_BINDTODEVICE`.
pub fn bind_to_device(fd: BorrowedFd<'_>, ifname: &str) -> Result<()> {
    // SAFETY: valid fd, the option value is the name's bytes.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            ifname.as_ptr().cast(),
            ifname.len() as libc::socklen_t,
        )
    };
    check(rc, &format!("setsockopt(SO_BINDTODEVICE, {ifname})"))
}

/// The ifindex of `ifname` in the calling thread's namespace.
fn ifindex(ifname: &str) -> Result<i32> {
    let c = std::ffi::CString::new(ifname).context("interface name")?;
    // SAFETY: valid NUL-terminated name.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("no interface {ifname}"));
    }
    i32::try_from(idx).context("ifindex out of range")
}

/// A frame as captured, with the kernel's packet type (`PACKET_HOST`, `PACKET_OUTGOING`, ...).
pub struct Captured {
    pub pkttype: u8,
    pub bytes: Vec<u8>,
}

/// An `AF_PACKET` raw socket bound to one interface of one namespace.
pub struct PacketSocket {
    fd: OwnedFd,
    ns: String,
    ifname: String,
}

impl PacketSocket {
    /// Opens a socket on `ifname` in `ns`. `protocol` is an ethertype to capture
    /// (`libc::ETH_P_ALL` for all), or 0 for a send-only socket that never queues frames.
    pub fn open(ns: &str, ifname: &str, protocol: u16) -> Result<Self> {
        let proto_be = protocol.to_be();
        let fd = in_netns(ns, || {
            // SAFETY: plain socket(2) call.
            let raw = unsafe {
                libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    i32::from(proto_be),
                )
            };
            check(raw, "socket(AF_PACKET)")?;
            // SAFETY: `raw` is a fresh descriptor we own.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            // SAFETY: sockaddr_ll is plain data; all-zero is valid.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto_be;
            sll.sll_ifindex = ifindex(ifname)?;
            // SAFETY: `sll` is a valid sockaddr_ll of the size passed.
            let rc = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&raw const sll).cast(),
                    size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            check(rc, "bind(AF_PACKET)")?;
            if protocol != 0 {
                grow_rcvbuf(fd.as_fd(), 4 << 20)?;
            }
            Ok(fd)
        })
        .with_context(|| format!("AF_PACKET socket on {ifname} in {ns}"))?;
        Ok(Self {
            fd,
            ns: ns.to_owned(),
            ifname: ifname.to_owned(),
        })
    }

    /// Sends one complete Ethernet frame (no FCS) out of the interface.
    pub fn send(&self, frame: &[u8]) -> Result<()> {
        // SAFETY: valid fd and buffer.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("sending a frame on {} in {}", self.ifname, self.ns));
        }
        if n.cast_unsigned() != frame.len() {
            bail!(
                "short send on {} in {}: {n} of {}",
                self.ifname,
                self.ns,
                frame.len()
            );
        }
        Ok(())
    }

    /// The next frame, or `None` once `deadline` passes.
    pub fn recv(&self, deadline: Instant) -> Result<Option<Captured>> {
        let mut buf = vec![0u8; 2048];
        loop {
            if !wait_readable(self.fd.as_fd(), deadline)
                .with_context(|| format!("poll on {} in {}", self.ifname, self.ns))?
            {
                return Ok(None);
            }
            // SAFETY: sockaddr_ll is plain data; all-zero is valid.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: valid fd, buffer and address storage of the sizes passed.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    (&raw mut sll).cast(),
                    &raw mut len,
                )
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::WouldBlock
                    || err.kind() == io::ErrorKind::Interrupted
                {
                    continue;
                }
                return Err(err)
                    .with_context(|| format!("capturing on {} in {}", self.ifname, self.ns));
            }
            buf.truncate(n.cast_unsigned());
            return Ok(Some(Captured {
                pkttype: sll.sll_pkttype,
                bytes: buf,
            }));
        }
    }
}

/// A UDP socket bound in `ns` (before anything is sent to it), with a large receive buffer.
pub fn udp_bind(ns: &str, addr: SocketAddr) -> Result<UdpSocket> {
    in_netns(ns, || {
        let s = UdpSocket::bind(addr).with_context(|| format!("binding UDP {addr}"))?;
        grow_rcvbuf(s.as_fd(), 4 << 20)?;
        Ok(s)
    })
    .with_context(|| format!("UDP receiver in {ns}"))
}

/// Receives datagrams until `want` of them satisfied `accept` (given the payload and the
/// sender; returns a sequence number, counted once each) or `deadline` passes. Returns the
/// number counted.
pub fn udp_collect(
    sock: &UdpSocket,
    want: u32,
    deadline: Instant,
    mut accept: impl FnMut(&[u8], SocketAddr) -> Option<u32>,
) -> Result<u32> {
    let mut seen = std::collections::BTreeSet::new();
    // Room for a jumbo datagram: `accept` sees its whole length.
    let mut buf = vec![0u8; 65_536];
    sock.set_nonblocking(true).context("UDP set_nonblocking")?;
    while (seen.len() as u64) < u64::from(want) {
        if !wait_readable(sock.as_fd(), deadline).context("poll on UDP receiver")? {
            break;
        }
        match sock.recv_from(&mut buf) {
            Ok((n, peer)) => {
                if let Some(seq) = accept(&buf[..n], peer) {
                    seen.insert(seq);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e).context("UDP receive"),
        }
    }
    Ok(seen.len() as u32)
}

/// A raw ICMP (or `ICMPv6`) socket in `ns`, for echo requests and their replies.
pub fn icmp_socket(ns: &str, v6: bool) -> Result<OwnedFd> {
    in_netns(ns, || {
        let (domain, proto) = if v6 {
            (libc::AF_INET6, libc::IPPROTO_ICMPV6)
        } else {
            (libc::AF_INET, libc::IPPROTO_ICMP)
        };
        // SAFETY: plain socket(2) call.
        let raw = unsafe { libc::socket(domain, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) };
        check(raw, "socket(SOCK_RAW, ICMP)")?;
        // SAFETY: `raw` is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        grow_rcvbuf(fd.as_fd(), 4 << 20)?;
        Ok(fd)
    })
    .with_context(|| format!("raw ICMP socket in {ns}"))
}

/// Sends `msg` to `dst` on a raw ICMP socket.
pub fn icmp_send(fd: BorrowedFd<'_>, dst: IpAddr, msg: &[u8]) -> Result<()> {
    let n = match dst {
        IpAddr::V4(a) => {
            // SAFETY: sockaddr_in is plain data.
            let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            sin.sin_family = libc::AF_INET as u16;
            sin.sin_addr.s_addr = u32::from_ne_bytes(a.octets());
            // SAFETY: valid fd, buffer and address.
            unsafe {
                libc::sendto(
                    fd.as_raw_fd(),
                    msg.as_ptr().cast(),
                    msg.len(),
                    0,
                    (&raw const sin).cast(),
                    size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            }
        }
        IpAddr::V6(a) => {
            // SAFETY: sockaddr_in6 is plain data.
            let mut sin6: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
            sin6.sin6_family = libc::AF_INET6 as u16;
            sin6.sin6_addr.s6_addr = a.octets();
            // SAFETY: valid fd, buffer and address.
            unsafe {
                libc::sendto(
                    fd.as_raw_fd(),
                    msg.as_ptr().cast(),
                    msg.len(),
                    0,
                    (&raw const sin6).cast(),
                    size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                )
            }
        }
    };
    if n < 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("ICMP echo to {dst}"));
    }
    Ok(())
}

/// Receives one message from a raw socket, or `None` after `deadline`.
pub fn raw_recv(fd: BorrowedFd<'_>, deadline: Instant) -> Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; 2048];
    loop {
        if !wait_readable(fd, deadline).context("poll on raw socket")? {
            return Ok(None);
        }
        // SAFETY: valid fd and buffer.
        let n = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::WouldBlock || err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err).context("raw socket receive");
        }
        buf.truncate(n.cast_unsigned());
        return Ok(Some(buf));
    }
}
