//! A libvirt-like host built from real network namespaces, for end-to-end tests and the demo.
//!
//! ```text
//!   mgmt ns 10.10.0.2/24        storage ns 10.20.0.2/24        inet ns 203.0.113.10/24
//!   fd00:10::2/64               fd00:20::2/64                  2001:db8:1::10/64
//!      | eth0                      | eth0                        | eth0       | eth1
//!      | mgmt0 10.10.0.1           | stor0 10.20.0.1             |            | (nat_host:
//!   +--+---------------------------+-----------------+     gw ns (router)     |  198.51.100.2)
//!   | host ns: ip_forward=1, ipv6 forwarding=1       |     eth1 203.0.113.1   |
//!   |   br-guest (MAC 02:47:4c:00:00:fe; no address, |     eth0 192.168.50.1  |
//!   |   or .254 in bridge_ip/nat_host)   uplink -----|---------|--------------+
//!   |   ports: vg1      vg2      vgw ----------------|---------+   (nat_host: 198.51.100.1,
//!   +----------|--------|--------------------------- +              masquerade)
//!              | eth0   | eth0
//!           g1 ns .11   g2 ns .12    guests: 192.168.50.0/24, fd00:50::/64,
//!                                    default route via gw (nat_host: via the host, .254)
//! ```
//!
//! Every namespace gets a unique name (`guardlab-<pid>-<n>-<role>`) and is deleted when the
//! [`Lab`] is dropped, also while a panic unwinds; [`install_signal_cleanup`] extends that to
//! Ctrl-C. Nothing is ever created in the caller's namespace: veth pairs are created with
//! both ends already in their namespaces. All addresses are fixed ([`addr`]): the namespaces
//! isolate parallel labs.
//!
//! Setup uses `ip`, `bridge`, `sysctl` (through `ip netns exec`, which gives it the
//! namespace's `/proc/sys/net`) and, for `nat_host`, `nft`. Sockets are opened on a thread
//! that entered the namespace with `setns(2)` ([`netns::in_netns`]) and keep that namespace
//! for life, so they are used from any thread afterwards.

pub mod attack;
pub mod check;
pub mod frame;
pub mod guardctl;
pub mod harness;
pub mod holes;
pub mod legit;
pub mod netns;
pub mod sock;
pub mod stream;
pub mod xdp;

use std::{
    fmt,
    net::{Ipv4Addr, Ipv6Addr},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use self::frame::{Mac, mac_to_string, parse_mac};
pub use self::netns::{NetNs, install_signal_cleanup, namespaces_with_prefix};

/// First part of every lab namespace name; `guard-lab cleanup` and the tests look for it.
pub const NAME_BASE: &str = "guardlab";

/// The lab's fixed addressing plan.
pub mod addr {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::frame::Mac;

    pub const BRIDGE: &str = "br-guest";
    /// Set explicitly: by default a bridge takes the lowest MAC of its ports, which would make
    /// the bridge MAC and one port's MAC the same address and hide the port-MAC path.
    pub const BRIDGE_MAC: Mac = [0x02, 0x47, 0x4c, 0x00, 0x00, 0xfe];
    /// With [`super::BridgeMac::Auto`]: the MACs of the host sides of `vg1`, `vg2`, `vgw`, set
    /// so that the bridge's automatic MAC is known (the lowest: `vg1`'s).
    pub const AUTO_PORT_MACS: [Mac; 3] = [
        [0x02, 0x47, 0x4c, 0x00, 0x01, 0x01],
        [0x02, 0x47, 0x4c, 0x00, 0x01, 0x02],
        [0x02, 0x47, 0x4c, 0x00, 0x01, 0x03],
    ];

    pub const HOST_MGMT4: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 1);
    pub const MGMT_SERVER4: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 2);
    pub const HOST_MGMT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 0, 1);
    pub const MGMT_SERVER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 0, 2);

    pub const HOST_STORAGE4: Ipv4Addr = Ipv4Addr::new(10, 20, 0, 1);
    pub const STORAGE_SERVER4: Ipv4Addr = Ipv4Addr::new(10, 20, 0, 2);
    pub const HOST_STORAGE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x20, 0, 0, 0, 0, 0, 1);
    pub const STORAGE_SERVER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x20, 0, 0, 0, 0, 0, 2);

    pub const GW4: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 1);
    pub const G1_4: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 11);
    pub const G2_4: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 12);
    /// The bridge's address in the `bridge_ip` and `nat_host` variants.
    pub const BRIDGE4: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 254);
    pub const GW6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, 0, 1);
    pub const G1_6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, 0, 0x11);
    pub const G2_6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, 0, 0x12);
    pub const BRIDGE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, 0, 0x254);

    pub const GW_INET4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
    pub const INET4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
    pub const GW_INET6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
    pub const INET6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x10);

    /// `nat_host`: the host's uplink toward `inet`.
    pub const HOST_UPLINK4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
    pub const INET_UPLINK4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
    pub const HOST_UPLINK6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 1);
    pub const INET_UPLINK6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 2);
}

/// How the host is configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// No address on the bridge; the guests' router is the `gw` namespace.
    Base,
    /// The misconfiguration: the bridge holds `192.168.50.254` / `fd00:50::254` (with a TCP/UDP
    /// service on it for legit-flow tests). Guests still route via `gw`.
    BridgeIp,
    /// The host is the guests' router (bridge address as their default route) and
    /// masquerades toward `inet` through an uplink.
    NatHost,
}

impl Variant {
    pub const ALL: [Self; 3] = [Self::Base, Self::BridgeIp, Self::NatHost];

    #[must_use]
    pub const fn bridge_has_ip(self) -> bool {
        matches!(self, Self::BridgeIp | Self::NatHost)
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Base => "base",
            Self::BridgeIp => "bridge_ip",
            Self::NatHost => "nat_host",
        })
    }
}

impl std::str::FromStr for Variant {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.replace('-', "_").as_str() {
            "base" => Ok(Self::Base),
            "bridge_ip" => Ok(Self::BridgeIp),
            "nat_host" => Ok(Self::NatHost),
            _ => bail!("unknown lab variant {s:?} (base, bridge_ip, nat_host)"),
        }
    }
}

/// How the bridge gets its MAC.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BridgeMac {
    /// [`addr::BRIDGE_MAC`], set explicitly: the kernel never changes it.
    #[default]
    Fixed,
    /// None set, as libvirt and most hosts leave it: the kernel gives the bridge the lowest MAC
    /// of its ports and changes it whenever that changes (`br_stp_recalculate_bridge_id`).
    /// The ports get [`addr::AUTO_PORT_MACS`], so the bridge starts with `vg1`'s.
    Auto,
}

/// What a lab is built with besides its [`Variant`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Options {
    pub bridge_mac: BridgeMac,
}

/// The namespaces of a lab: the seven every lab has, and those a scenario builder adds
/// ([`Lab::add_netns`]), named by their suffix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Host,
    Mgmt,
    Storage,
    G1,
    G2,
    Gw,
    Inet,
    Extra(&'static str),
}

impl Role {
    pub const ALL: [Self; 7] = [
        Self::Host,
        Self::Mgmt,
        Self::Storage,
        Self::G1,
        Self::G2,
        Self::Gw,
        Self::Inet,
    ];

    #[must_use]
    pub const fn suffix(self) -> &'static str {
        match self {
            Self::Host => "host",
            Self::Mgmt => "mgmt",
            Self::Storage => "storage",
            Self::G1 => "g1",
            Self::G2 => "g2",
            Self::Gw => "gw",
            Self::Inet => "inet",
            Self::Extra(s) => s,
        }
    }
}

/// One interface as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Iface {
    pub ns: String,
    pub name: String,
    pub ifindex: u32,
    pub mac: Mac,
}

impl fmt::Display for Iface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{} (ifindex {}, {})",
            self.ns,
            self.name,
            self.ifindex,
            mac_to_string(&self.mac)
        )
    }
}

/// A bridge port: the host-side veth (enslaved to `br-guest`) and its peer in the guest.
#[derive(Clone, Debug)]
pub struct Port {
    pub role: Role,
    pub host: Iface,
    pub guest: Iface,
}

/// A veth pair to create: (namespace, name) on both ends.
struct Link {
    a: (Role, &'static str),
    b: (Role, &'static str),
}

/// A built lab. Dropping it deletes every namespace.
pub struct Lab {
    variant: Variant,
    options: Options,
    prefix: String,
    /// In [`Role::ALL`] order. Dropped (deleted) with the lab.
    namespaces: Vec<NetNs>,
    /// Namespaces added by scenario builders ([`Role::Extra`]), deleted with the lab too.
    extra: Vec<NetNs>,
    pub bridge: Iface,
    /// Ports of `g1`, `g2` and `gw`, in that order.
    pub ports: Vec<Port>,
    /// The host's management and storage interfaces.
    pub mgmt_if: Iface,
    pub storage_if: Iface,
    /// `nat_host` only: the host's uplink toward `inet`.
    pub uplink: Option<Iface>,
    /// How long [`Lab::build`] took.
    pub build_time: Duration,
}

/// How long the lab waits for links and addresses to become usable.
pub(crate) const SETTLE_TIMEOUT: Duration = Duration::from_secs(20);
/// Poll interval while waiting for the kernel (a poll, not a synchronisation sleep).
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(5);

static SEQUENCE: AtomicU32 = AtomicU32::new(0);

impl Lab {
    /// Builds a lab of the given variant and waits until every link is up and forwarding
    /// and every address is usable.
    pub fn build(variant: Variant) -> Result<Self> {
        Self::build_with(variant, Options::default())
    }

    /// [`Lab::build`] with [`Options`].
    pub fn build_with(variant: Variant, options: Options) -> Result<Self> {
        let started = Instant::now();
        let n = SEQUENCE.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("{NAME_BASE}-{}-{n}-", std::process::id());
        let mut namespaces = Vec::with_capacity(Role::ALL.len());
        for role in Role::ALL {
            namespaces.push(NetNs::create(&format!("{prefix}{}", role.suffix()))?);
        }
        // From here on an error drops `namespaces`, which deletes them.
        let mut lab = Self {
            variant,
            options,
            prefix,
            namespaces,
            extra: Vec::new(),
            bridge: placeholder(),
            ports: Vec::new(),
            mgmt_if: placeholder(),
            storage_if: placeholder(),
            uplink: None,
            build_time: Duration::ZERO,
        };
        lab.configure()
            .with_context(|| format!("building the {variant} lab {}", lab.prefix))?;
        lab.build_time = started.elapsed();
        Ok(lab)
    }

    #[must_use]
    pub fn variant(&self) -> Variant {
        self.variant
    }

    /// The common prefix of this lab's namespace names.
    #[must_use]
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    #[must_use]
    pub fn options(&self) -> Options {
        self.options
    }

    /// The namespace of a role.
    ///
    /// # Panics
    /// For a [`Role::Extra`] that no scenario builder added to this lab (a bug in the test).
    #[must_use]
    pub fn netns(&self, role: Role) -> &NetNs {
        let base = |i: usize| &self.namespaces[i];
        match role {
            Role::Host => base(0),
            Role::Mgmt => base(1),
            Role::Storage => base(2),
            Role::G1 => base(3),
            Role::G2 => base(4),
            Role::Gw => base(5),
            Role::Inet => base(6),
            Role::Extra(suffix) => {
                let name = format!("{}{suffix}", self.prefix);
                self.extra
                    .iter()
                    .find(|n| n.name() == name)
                    .unwrap_or_else(|| panic!("lab {} has no namespace {suffix}", self.prefix))
            }
        }
    }

    /// Adds the namespace `{prefix}{suffix}` ([`Role::Extra`]`(suffix)`), deleted with the lab,
    /// with the sysctls every lab namespace has and `lo` up. `forwarding` turns IPv4 and IPv6
    /// forwarding on (a router).
    pub fn add_netns(&mut self, suffix: &'static str, forwarding: bool) -> Result<&NetNs> {
        let ns = NetNs::create(&format!("{}{suffix}", self.prefix))?;
        let mut s = base_sysctls();
        if forwarding {
            s.extend(FORWARDING);
        }
        ns.sysctl(&s)?;
        ns.ip_batch(&["link set lo up".to_owned()])?;
        self.extra.push(ns);
        Ok(self.netns(Role::Extra(suffix)))
    }

    /// Creates a veth pair with each end straight in its namespace (nothing appears in the
    /// caller's namespace), both ends down.
    pub fn add_veth(&self, a: (Role, &str), b: (Role, &str)) -> Result<()> {
        netns::run_cmd(
            std::process::Command::new("ip").args([
                "link",
                "add",
                "name",
                a.1,
                "netns",
                self.ns(a.0),
                "type",
                "veth",
                "peer",
                "name",
                b.1,
                "netns",
                self.ns(b.0),
            ]),
            None,
        )
        .map(drop)
        .with_context(|| format!("creating the veth pair {}/{}", a.1, b.1))
    }

    /// The namespace name of a role.
    #[must_use]
    pub fn ns(&self, role: Role) -> &str {
        self.netns(role).name()
    }

    /// Every namespace name of the lab.
    #[must_use]
    pub fn namespace_names(&self) -> Vec<String> {
        self.namespaces
            .iter()
            .chain(&self.extra)
            .map(|n| n.name().to_owned())
            .collect()
    }

    /// The bridge port of a guest (`G1`, `G2`) or of `Gw`.
    pub fn port(&self, role: Role) -> Result<&Port> {
        self.ports
            .iter()
            .find(|p| p.role == role)
            .with_context(|| format!("{role:?} has no bridge port in lab {}", self.prefix))
    }

    /// Deletes the lab now, reporting errors (dropping does the same, printing them).
    pub fn teardown(self) -> Result<()> {
        let mut first_err = None;
        for ns in self
            .extra
            .into_iter()
            .rev()
            .chain(self.namespaces.into_iter().rev())
        {
            if let Err(e) = ns.delete() {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn links(&self) -> Vec<Link> {
        let mut links = vec![
            Link {
                a: (Role::Host, "vg1"),
                b: (Role::G1, "eth0"),
            },
            Link {
                a: (Role::Host, "vg2"),
                b: (Role::G2, "eth0"),
            },
            Link {
                a: (Role::Host, "vgw"),
                b: (Role::Gw, "eth0"),
            },
            Link {
                a: (Role::Host, "mgmt0"),
                b: (Role::Mgmt, "eth0"),
            },
            Link {
                a: (Role::Host, "stor0"),
                b: (Role::Storage, "eth0"),
            },
            Link {
                a: (Role::Gw, "eth1"),
                b: (Role::Inet, "eth0"),
            },
        ];
        if self.variant == Variant::NatHost {
            links.push(Link {
                a: (Role::Host, "uplink"),
                b: (Role::Inet, "eth1"),
            });
        }
        links
    }

    fn configure(&mut self) -> Result<()> {
        // Sysctls first, so that every interface created afterwards inherits `default.*`.
        for role in Role::ALL {
            let mut s = base_sysctls();
            if matches!(role, Role::Host | Role::Gw) {
                // What libvirt turns on when it installs.
                s.extend(FORWARDING);
            }
            self.netns(role).sysctl(&s)?;
        }

        // All veth pairs in one `ip` process, created straight in their namespaces (nothing
        // ever appears in the caller's namespace, so parallel labs cannot collide).
        let links = self.links();
        let script: Vec<String> = links
            .iter()
            .map(|l| {
                format!(
                    "link add name {} netns {} type veth peer name {} netns {}",
                    l.a.1,
                    self.ns(l.a.0),
                    l.b.1,
                    self.ns(l.b.0)
                )
            })
            .collect();
        netns::run_cmd(
            std::process::Command::new("ip").args(["-batch", "-"]),
            Some(&(script.join("\n") + "\n")),
        )
        .context("creating the veth pairs")?;

        for role in Role::ALL {
            self.netns(role).ip_batch(&self.addresses(role))?;
        }
        self.wait_settled()?;
        for role in Role::ALL {
            self.netns(role).ip_batch(&self.routes(role))?;
        }
        if self.variant == Variant::NatHost {
            self.netns(Role::Host)
                .exec(
                    "nft",
                    &["-f", "-"],
                    Some(
                        "table inet guardlab_nat {\n\
                         \tchain postrouting {\n\
                         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
                         \t\toifname \"uplink\" masquerade\n\
                         \t}\n\
                         }\n",
                    ),
                )
                .context("installing the masquerade rule")?;
        }
        self.discover()
    }

    /// Phase 1 of a namespace's configuration: links up, bridge, addresses.
    fn addresses(&self, role: Role) -> Vec<String> {
        let v4 = |a: Ipv4Addr| format!("{a}/24");
        let v6 = |a: Ipv6Addr| format!("{a}/64");
        let mut l: Vec<String> = vec!["link set lo up".into()];
        match role {
            Role::Host => {
                match self.options.bridge_mac {
                    BridgeMac::Fixed => l.push(format!(
                        "link add {} address {} type bridge stp_state 0",
                        addr::BRIDGE,
                        mac_to_string(&addr::BRIDGE_MAC)
                    )),
                    BridgeMac::Auto => {
                        l.push(format!("link add {} type bridge stp_state 0", addr::BRIDGE));
                        for (p, mac) in ["vg1", "vg2", "vgw"].iter().zip(addr::AUTO_PORT_MACS) {
                            l.push(format!("link set {p} address {}", mac_to_string(&mac)));
                        }
                    }
                }
                for p in ["vg1", "vg2", "vgw"] {
                    l.push(format!("link set {p} master {}", addr::BRIDGE));
                    up_with(&mut l, p, &[]);
                }
                up_with(
                    &mut l,
                    "mgmt0",
                    &[v4(addr::HOST_MGMT4), v6(addr::HOST_MGMT6)],
                );
                up_with(
                    &mut l,
                    "stor0",
                    &[v4(addr::HOST_STORAGE4), v6(addr::HOST_STORAGE6)],
                );
                let bridge_addrs = if self.variant.bridge_has_ip() {
                    vec![v4(addr::BRIDGE4), v6(addr::BRIDGE6)]
                } else {
                    Vec::new()
                };
                up_with(&mut l, addr::BRIDGE, &bridge_addrs);
                if self.variant == Variant::NatHost {
                    up_with(
                        &mut l,
                        "uplink",
                        &[v4(addr::HOST_UPLINK4), v6(addr::HOST_UPLINK6)],
                    );
                }
            }
            Role::Mgmt => up_with(
                &mut l,
                "eth0",
                &[v4(addr::MGMT_SERVER4), v6(addr::MGMT_SERVER6)],
            ),
            Role::Storage => up_with(
                &mut l,
                "eth0",
                &[v4(addr::STORAGE_SERVER4), v6(addr::STORAGE_SERVER6)],
            ),
            Role::G1 => up_with(&mut l, "eth0", &[v4(addr::G1_4), v6(addr::G1_6)]),
            Role::G2 => up_with(&mut l, "eth0", &[v4(addr::G2_4), v6(addr::G2_6)]),
            Role::Gw => {
                up_with(&mut l, "eth0", &[v4(addr::GW4), v6(addr::GW6)]);
                up_with(&mut l, "eth1", &[v4(addr::GW_INET4), v6(addr::GW_INET6)]);
            }
            Role::Inet => {
                up_with(&mut l, "eth0", &[v4(addr::INET4), v6(addr::INET6)]);
                if self.variant == Variant::NatHost {
                    up_with(
                        &mut l,
                        "eth1",
                        &[v4(addr::INET_UPLINK4), v6(addr::INET_UPLINK6)],
                    );
                }
            }
            Role::Extra(_) => {}
        }
        l
    }

    /// Phase 2, once links are up: routes (an IPv6 gateway must be on an up link).
    fn routes(&self, role: Role) -> Vec<String> {
        let default = |v4: Ipv4Addr, v6: Ipv6Addr| {
            vec![
                format!("route add default via {v4}"),
                format!("route add ::/0 via {v6}"),
            ]
        };
        match role {
            // Both servers route back via the host, so forwarded traffic could get replies.
            Role::Mgmt => default(addr::HOST_MGMT4, addr::HOST_MGMT6),
            Role::Storage => default(addr::HOST_STORAGE4, addr::HOST_STORAGE6),
            Role::G1 | Role::G2 if self.variant == Variant::NatHost => {
                default(addr::BRIDGE4, addr::BRIDGE6)
            }
            Role::G1 | Role::G2 => default(addr::GW4, addr::GW6),
            Role::Inet => default(addr::GW_INET4, addr::GW_INET6),
            Role::Host if self.variant == Variant::NatHost => {
                default(addr::INET_UPLINK4, addr::INET_UPLINK6)
            }
            Role::Host | Role::Gw | Role::Extra(_) => Vec::new(),
        }
    }

    /// Polls the kernel until every link of every lab namespace (scenario builders' too) is
    /// up, every bridge port forwards and no address is tentative.
    pub fn wait_settled(&self) -> Result<()> {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let pending = self.unsettled()?;
            if pending.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "lab {} not ready after {SETTLE_TIMEOUT:?}: {}",
                    self.prefix,
                    pending.join("; ")
                );
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// What is not ready yet, one entry per problem.
    fn unsettled(&self) -> Result<Vec<String>> {
        let mut pending = Vec::new();
        for ns in self.namespaces.iter().chain(&self.extra) {
            for link in as_array(&ns.ip_json(&["link", "show"])?) {
                let name = link["ifname"].as_str().unwrap_or("?");
                let state = link["operstate"].as_str().unwrap_or("?");
                // UNKNOWN: a device without carrier reporting (VXLAN, macvlan), up as far as
                // the kernel can tell.
                if name != "lo" && !matches!(state, "UP" | "UNKNOWN") {
                    pending.push(format!("{}/{name} is {state}", ns.name()));
                }
            }
            for link in as_array(&ns.ip_json(&["-6", "address", "show", "tentative"])?) {
                for a in as_array(&link["addr_info"]) {
                    pending.push(format!(
                        "{}/{}: {} tentative",
                        ns.name(),
                        link["ifname"].as_str().unwrap_or("?"),
                        a["local"].as_str().unwrap_or("?")
                    ));
                }
            }
        }
        let host = self.netns(Role::Host);
        let out = netns::run_cmd(
            std::process::Command::new("bridge").args(["-n", host.name(), "-json", "link", "show"]),
            None,
        )
        .with_context(|| format!("`bridge link show` in {}", host.name()))?;
        let ports: serde_json::Value =
            serde_json::from_str(&out).context("parsing `bridge -json link show`")?;
        let mut seen = 0;
        for p in as_array(&ports) {
            seen += 1;
            let state = p["state"].as_str().unwrap_or("?");
            if state != "forwarding" {
                pending.push(format!(
                    "{}/{} port state {state}",
                    host.name(),
                    p["ifname"].as_str().unwrap_or("?")
                ));
            }
        }
        if seen < 3 {
            pending.push(format!("{}: {seen} of 3 bridge ports", host.name()));
        }
        Ok(pending)
    }

    /// An interface of a lab namespace as the kernel reports it now.
    pub fn iface(&self, role: Role, name: &str) -> Result<Iface> {
        let ns = self.netns(role);
        let v = ns.ip_json(&["link", "show", "dev", name])?;
        let link = as_array(&v)
            .first()
            .with_context(|| format!("no interface {name} in {}", ns.name()))?;
        let ifindex = link["ifindex"]
            .as_u64()
            .and_then(|i| u32::try_from(i).ok())
            .with_context(|| format!("ifindex of {name} in {}", ns.name()))?;
        let mac = parse_mac(link["address"].as_str().unwrap_or_default())
            .with_context(|| format!("MAC of {name} in {}", ns.name()))?;
        Ok(Iface {
            ns: ns.name().to_owned(),
            name: name.to_owned(),
            ifindex,
            mac,
        })
    }

    fn discover(&mut self) -> Result<()> {
        self.bridge = self.iface(Role::Host, addr::BRIDGE)?;
        let want = match self.options.bridge_mac {
            BridgeMac::Fixed => addr::BRIDGE_MAC,
            BridgeMac::Auto => addr::AUTO_PORT_MACS[0],
        };
        if self.bridge.mac != want {
            bail!(
                "{} does not have the MAC {} ({:?})",
                self.bridge,
                mac_to_string(&want),
                self.options.bridge_mac
            );
        }
        self.ports = [(Role::G1, "vg1"), (Role::G2, "vg2"), (Role::Gw, "vgw")]
            .into_iter()
            .map(|(role, host_name)| {
                Ok(Port {
                    role,
                    host: self.iface(Role::Host, host_name)?,
                    guest: self.iface(role, "eth0")?,
                })
            })
            .collect::<Result<_>>()?;
        self.mgmt_if = self.iface(Role::Host, "mgmt0")?;
        self.storage_if = self.iface(Role::Host, "stor0")?;
        if self.variant == Variant::NatHost {
            self.uplink = Some(self.iface(Role::Host, "uplink")?);
        }
        Ok(())
    }

    /// A multi-line description (at most 80 columns): namespaces, interfaces, MACs.
    #[must_use]
    pub fn describe(&self) -> String {
        use fmt::Write as _;
        let roles: Vec<&str> = Role::ALL.iter().map(|r| r.suffix()).collect();
        let mut s = format!(
            "lab {}: namespaces {}{{{}}}\n",
            self.variant,
            self.prefix,
            roles.join(",")
        );
        let mut line = |i: &Iface, what: String| {
            let ns = i.ns.strip_prefix(&self.prefix).unwrap_or(&i.ns);
            let _ = writeln!(
                s,
                "  {:<14} if {:<3} {}  {what}",
                format!("{ns}/{}", i.name),
                i.ifindex,
                mac_to_string(&i.mac)
            );
        };
        line(&self.bridge, "the guest bridge".into());
        for p in &self.ports {
            line(
                &p.host,
                format!("port; {:?} eth0 {}", p.role, mac_to_string(&p.guest.mac)),
            );
        }
        line(&self.mgmt_if, "management".into());
        line(&self.storage_if, "storage".into());
        if let Some(u) = &self.uplink {
            line(u, "uplink (masquerade)".into());
        }
        s
    }
}

/// Every lab namespace's sysctls.
fn base_sysctls() -> Vec<(&'static str, &'static str)> {
    vec![
        // Addresses are usable at once (also set per address with `nodad`).
        ("net.ipv6.conf.all.accept_dad", "0"),
        ("net.ipv6.conf.default.accept_dad", "0"),
        // Nobody sends router advertisements here; keep the state deterministic.
        ("net.ipv6.conf.default.accept_ra", "0"),
        // The kernel default in a new namespace, set explicitly: with strict or
        // loose reverse-path filtering a host without a route back to the guests
        // would drop forwarded guest traffic for reasons unrelated to guard.
        ("net.ipv4.conf.all.rp_filter", "0"),
        ("net.ipv4.conf.default.rp_filter", "0"),
    ]
}

/// A router's sysctls (what libvirt turns on for the host).
const FORWARDING: [(&str, &str); 2] = [
    ("net.ipv4.ip_forward", "1"),
    ("net.ipv6.conf.all.forwarding", "1"),
];

/// `ip` lines that bring `dev` up and add `cidrs` (IPv6 ones with `nodad`: usable at once).
pub fn up_with(lines: &mut Vec<String>, dev: &str, cidrs: &[String]) {
    lines.push(format!("link set {dev} up"));
    for c in cidrs {
        let nodad = if c.contains(':') { " nodad" } else { "" };
        lines.push(format!("address add {c} dev {dev}{nodad}"));
    }
}

fn placeholder() -> Iface {
    Iface {
        ns: String::new(),
        name: String::new(),
        ifindex: 0,
        mac: [0; 6],
    }
}

fn as_array(v: &serde_json::Value) -> &[serde_json::Value] {
    v.as_array().map_or(&[], Vec::as_slice)
}
