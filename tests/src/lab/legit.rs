//! Legitimate traffic that must keep working with guard attached: guest to guest, the DHCP
//! broadcast, the guests' router, and the variant-specific paths through the host (DNS and
//! other services on the bridge's address, the internet through the host's NAT), and jumbo
//! datagrams when the guest segment has a 9000-byte MTU.
//!
//! Every flow is measured where it lands: a UDP socket counting markers, a TCP server echoing
//! each connection's marker back, ICMP echo replies counted at the sender.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsFd as _,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use super::{
    Lab, Role, Variant, addr,
    attack::{
        self, AttackCase, Attacker, Carrier, CaseResult, DstMac, Expect, FireOptions, Probe,
        marker, new_nonce, parse_marker,
    },
    netns::in_netns,
    sock::{self, udp_bind, udp_collect, wait_readable},
};
use crate::packet;

/// The UDP payload of a jumbo datagram: with its headers a frame of about 8.95 KB, which
/// needs the 9000-byte MTU end to end.
pub const JUMBO_PAYLOAD: usize = 8900;

/// Forbids fragmentation on a UDP socket (`IP_PMTUDISC_DO`, `IPV6_PMTUDISC_DO`): a datagram
/// larger than the path MTU fails with `EMSGSIZE` instead of leaving in fragments.
fn dont_fragment(s: &UdpSocket, v6: bool) -> Result<()> {
    let (level, opt, val) = if v6 {
        (
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_DO,
        )
    } else {
        (
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DO,
        )
    };
    // SAFETY: valid fd, option value is a c_int.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(s),
            level,
            opt,
            (&raw const val).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("setsockopt(PMTUDISC_DO)");
    }
    Ok(())
}

/// UDP: `count` datagrams from `from` to `dst`, counted by a socket bound on `bind` in `to`
/// when they arrive from `src` (so a NAT flow that bypassed the NAT does not count). With
/// `size`, each datagram is padded to `size` bytes, sent unfragmented, and counted only if it
/// arrives whole.
fn udp_flow(
    lab: &Lab,
    name: &str,
    (from, to): (Role, Role),
    (bind, dst, src_ip): (SocketAddr, SocketAddr, IpAddr),
    (opts, size): (FireOptions, Option<usize>),
) -> Result<CaseResult> {
    let nonce = new_nonce();
    let rx = udp_bind(lab.ns(to), bind)?;
    let src = if dst.is_ipv4() {
        SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0)
    } else {
        "[::]:0".parse()?
    };
    let tx = in_netns(lab.ns(from), || {
        let s = UdpSocket::bind(src).with_context(|| format!("binding UDP {src}"))?;
        if size.is_some() {
            dont_fragment(&s, dst.is_ipv6())?;
        }
        Ok(s)
    })?;
    for seq in 0..opts.count {
        let mut m = marker(nonce, 0, seq);
        if let Some(n) = size {
            m.resize(n, 0x5a);
        }
        tx.send_to(&m, dst)
            .with_context(|| format!("{name}: UDP to {dst} from {}", lab.ns(from)))?;
    }
    let delivered = udp_collect(
        &rx,
        opts.count,
        Instant::now() + opts.deadline,
        |p, peer| {
            parse_marker(p, nonce, 0)
                .filter(|_| peer.ip() == src_ip && size.is_none_or(|n| p.len() == n))
        },
    )?;
    Ok(CaseResult {
        name: name.to_owned(),
        sent: opts.count,
        delivered,
        expect: Expect::Delivered,
    })
}

/// The DHCP-style broadcast: `count` datagrams from `g1` port 68 to 255.255.255.255:67,
/// counted in `g2`, in `gw` and, where the bridge has an address (the host serves DHCP
/// there, as libvirt's dnsmasq does), in the host (each bound on 0.0.0.0:67).
fn dhcp_broadcast(lab: &Lab, opts: FireOptions) -> Result<Vec<CaseResult>> {
    let nonce = new_nonce();
    let any67 = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 67);
    let mut at = vec![
        (Role::G2, "dhcp-bcast-to-g2"),
        (Role::Gw, "dhcp-bcast-to-gw"),
    ];
    if lab.variant().bridge_has_ip() {
        at.push((Role::Host, "dhcp-bcast-to-host"));
    }
    let receivers: Vec<_> = at
        .into_iter()
        .map(|(role, name)| udp_bind(lab.ns(role), any67).map(|s| (s, name)))
        .collect();
    let tx = in_netns(lab.ns(Role::G1), || {
        let s = UdpSocket::bind(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 68))
            .context("binding UDP 0.0.0.0:68")?;
        s.set_broadcast(true).context("SO_BROADCAST")?;
        sock::bind_to_device(s.as_fd(), "eth0")?;
        Ok(s)
    })?;
    let dst = SocketAddr::new(Ipv4Addr::BROADCAST.into(), 67);
    for seq in 0..opts.count {
        tx.send_to(&marker(nonce, 0, seq), dst)
            .with_context(|| format!("DHCP broadcast from {}", lab.ns(Role::G1)))?;
    }
    let deadline = Instant::now() + opts.deadline;
    receivers
        .into_iter()
        .map(|r| {
            let (rx, name) = r?;
            Ok(CaseResult {
                name: name.to_owned(),
                sent: opts.count,
                delivered: udp_collect(&rx, opts.count, deadline, |p, peer| {
                    parse_marker(p, nonce, 0).filter(|_| peer.ip() == IpAddr::V4(addr::G1_4))
                })?,
                expect: Expect::Delivered,
            })
        })
        .collect()
}

/// TCP: `count` connections from `from` to `dst`, each sending a marker that the server in
/// `to` (listening on `bind`) echoes back. A connection counts when it came from `src` and
/// its echo came back.
pub fn tcp_flow(
    lab: &Lab,
    name: &str,
    (from, to): (Role, Role),
    (bind, dst, src_ip): (SocketAddr, SocketAddr, IpAddr),
    opts: FireOptions,
) -> Result<CaseResult> {
    let nonce = new_nonce();
    let listener = in_netns(lab.ns(to), || {
        let l = TcpListener::bind(bind).with_context(|| format!("listening on TCP {bind}"))?;
        l.set_nonblocking(true).context("TCP set_nonblocking")?;
        Ok(l)
    })?;
    let deadline = Instant::now() + opts.deadline + Duration::from_secs(1);
    let delivered = in_netns(lab.ns(from), || {
        let mut ok = 0;
        for seq in 0..opts.count {
            if tcp_round(&listener, dst, src_ip, &marker(nonce, 0, seq), deadline).is_ok() {
                ok += 1;
            }
        }
        Ok(ok)
    })
    .with_context(|| format!("{name}: TCP client in {}", lab.ns(from)))?;
    Ok(CaseResult {
        name: name.to_owned(),
        sent: opts.count,
        delivered,
        expect: Expect::Delivered,
    })
}

/// One connection: connect, send `msg`, accept and echo on the server side, read the echo.
fn tcp_round(
    listener: &TcpListener,
    dst: SocketAddr,
    src_ip: IpAddr,
    msg: &[u8],
    deadline: Instant,
) -> Result<()> {
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    let mut client = TcpStream::connect_timeout(&dst, left).context("connect")?;
    client.set_read_timeout(Some(left))?;
    client.write_all(msg)?;
    if !wait_readable(listener.as_fd(), deadline)? {
        anyhow::bail!("no connection arrived");
    }
    let (mut server, peer) = listener.accept().context("accept")?;
    anyhow::ensure!(
        peer.ip() == src_ip,
        "connection from {peer}, not from {src_ip}"
    );
    server.set_nonblocking(false)?;
    server.set_read_timeout(Some(left))?;
    let mut buf = vec![0u8; msg.len()];
    server.read_exact(&mut buf)?;
    server.write_all(&buf)?;
    let mut echo = vec![0u8; msg.len()];
    client.read_exact(&mut echo)?;
    anyhow::ensure!(echo == msg, "echo differs");
    Ok(())
}

/// ICMP echo: `count` requests from `from` to `dst`; replies counted at `from`.
pub fn icmp_flow(
    lab: &Lab,
    name: &str,
    from: Role,
    dst: IpAddr,
    opts: FireOptions,
) -> Result<CaseResult> {
    let v6 = dst.is_ipv6();
    let fd = sock::icmp_socket(lab.ns(from), v6)?;
    let id = new_nonce() as u16;
    for seq in 0..opts.count {
        sock::icmp_send(
            fd.as_fd(),
            dst,
            &packet::icmp_echo(v6, id, seq as u16, b"guard-lab"),
        )
        .with_context(|| format!("{name} from {}", lab.ns(from)))?;
    }
    let deadline = Instant::now() + opts.deadline;
    let mut seen = std::collections::BTreeSet::new();
    while (seen.len() as u32) < opts.count {
        let Some(m) = sock::raw_recv(fd.as_fd(), deadline)? else {
            break;
        };
        // IPv4 raw sockets deliver the IP header too; ICMPv6 ones only the message.
        let icmp = if v6 {
            &m[..]
        } else {
            let ihl = usize::from(m.first().map_or(0, |b| b & 0xf)) * 4;
            m.get(ihl..).unwrap_or_default()
        };
        let reply_type = if v6 { 129 } else { 0 };
        if icmp.len() >= 8 && icmp[0] == reply_type && icmp[4..6] == id.to_be_bytes() {
            seen.insert(u16::from_be_bytes([icmp[6], icmp[7]]));
        }
    }
    Ok(CaseResult {
        name: name.to_owned(),
        sent: opts.count,
        delivered: seen.len() as u32,
        expect: Expect::Delivered,
    })
}

/// Address resolution of the guests' real router: the control showing that replies to the
/// ARP/NDP attack probes would be captured if they were sent.
fn resolve_gateway(lab: &Lab, opts: FireOptions) -> Result<Vec<CaseResult>> {
    let cases = [
        AttackCase {
            id: 200,
            name: "arp-gw",
            dst_mac: DstMac::Broadcast,
            tags: Vec::new(),
            probe: Probe::Arp { target: addr::GW4 },
            carrier: Carrier::Plain,
            expect: Expect::Delivered,
        },
        AttackCase {
            id: 201,
            name: "ndp-gw",
            dst_mac: DstMac::SolicitedNode,
            tags: Vec::new(),
            probe: Probe::Ndp {
                target: addr::GW6,
                unicast: false,
            },
            carrier: Carrier::Plain,
            expect: Expect::Delivered,
        },
    ];
    attack::fire(lab, &Attacker::g1(lab)?, &cases, opts)
}

/// One flow of the plan: ICMP echo to an address, or UDP/TCP to a service that the target
/// namespace listens on (bound on the destination address itself).
enum Flow {
    Icmp(IpAddr),
    Udp(Role, SocketAddr),
    /// UDP datagrams of [`JUMBO_PAYLOAD`] bytes, unfragmented.
    Jumbo(Role, SocketAddr),
    Tcp(Role, SocketAddr),
}

impl Flow {
    fn run(&self, lab: &Lab, name: &str, opts: FireOptions) -> Result<CaseResult> {
        let from = Role::G1;
        // The source the target must see: g1 itself, or the host's uplink after masquerade.
        let src = |to: Role, dst: SocketAddr| match (lab.variant(), to, dst.is_ipv4()) {
            (Variant::NatHost, Role::Inet, true) => IpAddr::V4(addr::HOST_UPLINK4),
            (Variant::NatHost, Role::Inet, false) => IpAddr::V6(addr::HOST_UPLINK6),
            (_, _, true) => IpAddr::V4(addr::G1_4),
            (_, _, false) => IpAddr::V6(addr::G1_6),
        };
        match *self {
            Self::Icmp(dst) => icmp_flow(lab, name, from, dst, opts),
            Self::Udp(to, dst) => udp_flow(
                lab,
                name,
                (from, to),
                (dst, dst, src(to, dst)),
                (opts, None),
            ),
            Self::Jumbo(to, dst) => udp_flow(
                lab,
                name,
                (from, to),
                (dst, dst, src(to, dst)),
                (opts, Some(JUMBO_PAYLOAD)),
            ),
            Self::Tcp(to, dst) => tcp_flow(lab, name, (from, to), (dst, dst, src(to, dst)), opts),
        }
    }
}

/// A flow and its name in the results.
type Named = (String, Flow);

/// The flows from `g1` of a variant, by name: first those inside the guest segment, then
/// those leaving it (besides the DHCP broadcast and the gateway's address resolution). With
/// `jumbo`, jumbo datagrams to g2 and to the bridge's address too.
fn plan(variant: Variant, jumbo: bool) -> (Vec<Named>, Vec<Named>) {
    let sa = SocketAddr::new;
    let (g2_4, g2_6) = (IpAddr::V4(addr::G2_4), IpAddr::V6(addr::G2_6));
    let (inet4, inet6) = (IpAddr::V4(addr::INET4), IpAddr::V6(addr::INET6));
    let (b4, b6) = (IpAddr::V4(addr::BRIDGE4), IpAddr::V6(addr::BRIDGE6));
    let (g2, inet, host) = (Role::G2, Role::Inet, Role::Host);
    let via = if variant == Variant::NatHost {
        "host-nat"
    } else {
        "gw"
    };
    let mut local = vec![
        ("icmp-v4-g1-g2".to_owned(), Flow::Icmp(g2_4)),
        ("icmp-v6-g1-g2".to_owned(), Flow::Icmp(g2_6)),
        ("udp-v4-g1-g2".to_owned(), Flow::Udp(g2, sa(g2_4, 41_001))),
        ("udp-v6-g1-g2".to_owned(), Flow::Udp(g2, sa(g2_6, 41_002))),
        ("tcp-v4-g1-g2".to_owned(), Flow::Tcp(g2, sa(g2_4, 41_003))),
        ("tcp-v6-g1-g2".to_owned(), Flow::Tcp(g2, sa(g2_6, 41_004))),
    ];
    if jumbo {
        local.extend([
            (
                "jumbo-udp-v4-g1-g2".to_owned(),
                Flow::Jumbo(g2, sa(g2_4, 41_005)),
            ),
            (
                "jumbo-udp-v6-g1-g2".to_owned(),
                Flow::Jumbo(g2, sa(g2_6, 41_006)),
            ),
        ]);
    }
    let mut out = vec![
        (format!("icmp-v4-inet-via-{via}"), Flow::Icmp(inet4)),
        (format!("icmp-v6-inet-via-{via}"), Flow::Icmp(inet6)),
        (
            format!("udp-v4-inet-via-{via}"),
            Flow::Udp(inet, sa(inet4, 41_011)),
        ),
        (
            format!("udp-v6-inet-via-{via}"),
            Flow::Udp(inet, sa(inet6, 41_012)),
        ),
        (
            format!("tcp-v4-inet-via-{via}"),
            Flow::Tcp(inet, sa(inet4, 41_013)),
        ),
        (
            format!("tcp-v6-inet-via-{via}"),
            Flow::Tcp(inet, sa(inet6, 41_014)),
        ),
    ];
    if variant.bridge_has_ip() {
        // A service on the bridge's own address: host-bound, but not protected.
        out.extend([
            (
                "udp-v4-bridge-svc".to_owned(),
                Flow::Udp(host, sa(b4, 41_021)),
            ),
            (
                "udp-v6-bridge-svc".to_owned(),
                Flow::Udp(host, sa(b6, 41_022)),
            ),
            (
                "tcp-v4-bridge-svc".to_owned(),
                Flow::Tcp(host, sa(b4, 41_023)),
            ),
            (
                "tcp-v6-bridge-svc".to_owned(),
                Flow::Tcp(host, sa(b6, 41_024)),
            ),
            // DNS to the host's resolver on the bridge address (libvirt's dnsmasq).
            ("dns-v4-bridge".to_owned(), Flow::Udp(host, sa(b4, 53))),
            ("dns-v6-bridge".to_owned(), Flow::Udp(host, sa(b6, 53))),
        ]);
        if jumbo {
            out.extend([
                (
                    "jumbo-udp-v4-bridge-svc".to_owned(),
                    Flow::Jumbo(host, sa(b4, 41_025)),
                ),
                (
                    "jumbo-udp-v6-bridge-svc".to_owned(),
                    Flow::Jumbo(host, sa(b6, 41_026)),
                ),
            ]);
        }
    }
    (local, out)
}

/// Does the guest segment carry jumbo frames (g1's `eth0` MTU)?
fn has_jumbo(lab: &Lab) -> Result<bool> {
    let v = lab
        .netns(Role::G1)
        .ip_json(&["link", "show", "dev", "eth0"])?;
    Ok(v[0]["mtu"].as_u64().unwrap_or(0) >= 9000)
}

/// Every legit flow of the lab's variant.
pub fn run_all(lab: &Lab, opts: FireOptions) -> Result<Vec<CaseResult>> {
    let (local, out) = plan(lab.variant(), has_jumbo(lab)?);
    let mut r = Vec::new();
    for (name, flow) in &local {
        r.push(flow.run(lab, name, opts)?);
    }
    r.extend(dhcp_broadcast(lab, opts)?);
    r.extend(resolve_gateway(lab, opts)?);
    for (name, flow) in &out {
        r.push(flow.run(lab, name, opts)?);
    }
    Ok(r)
}
