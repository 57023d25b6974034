//! The TOML configuration file.
//!
//! ```toml
//! [[bridge]]
//! name = "br-guest"
//! hook = "xdp"                 # xdp | xdp-generic | tc | tcx
//! bridge_hook = true           # the backstop: TC ingress on the bridge device
//! route_check = true           # judge by the kernel's route lookup too
//! allow_tunnels = false        # let tunnel encapsulations to the host through
//! tunnel_ports = [5555]        # more UDP tunnel ports (FOU, ...)
//! uplinks = ["eth0"]           # where guests may be routed (default: default-route links)
//! monitor = false              # count and report, do not drop
//! strict_mac = false           # only unicast host MACs are host-bound
//! protect = ["10.20.0.0/24=storage", "10.10.0.0/24=management"]   # empty: discovered set
//! allow = ["10.20.0.5=iscsi-portal"]
//! extra_host_macs = ["52:54:00:12:34:56"]
//! monitor_ports = ["vnet7"]
//! ```
//!
//! Every error names the file, line and column.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use toml::Spanned;

use crate::{
    attach::Hook,
    discovery::parse_mac,
    policy::{Policy, RuleSpec, parse_allow, parse_protect},
    state::Options,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default, rename = "bridge")]
    pub bridges: Vec<BridgeConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeConfig {
    pub name: Spanned<String>,
    #[serde(default)]
    pub hook: Option<Spanned<String>>,
    #[serde(default = "yes")]
    pub bridge_hook: bool,
    #[serde(default = "yes")]
    pub route_check: bool,
    #[serde(default)]
    pub allow_tunnels: bool,
    #[serde(default)]
    pub tunnel_ports: Vec<u16>,
    #[serde(default)]
    pub uplinks: Vec<String>,
    #[serde(default)]
    pub monitor: bool,
    #[serde(default)]
    pub strict_mac: bool,
    #[serde(default)]
    pub protect: Vec<Spanned<String>>,
    #[serde(default)]
    pub allow: Vec<Spanned<String>>,
    #[serde(default)]
    pub extra_host_macs: Vec<Spanned<String>>,
    #[serde(default)]
    pub monitor_ports: Vec<String>,
    /// Most drop events per second per port (0: none); default 100.
    #[serde(default)]
    pub event_rate: Option<u32>,
}

const fn yes() -> bool {
    true
}

/// A configuration error at a place in a file.
#[derive(Debug)]
pub struct ConfigError {
    pub path: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.path.display(), self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.path.display(),
                self.line,
                self.column,
                self.message
            )
        }
    }
}

impl std::error::Error for ConfigError {}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, column)
}

/// A loaded, validated configuration.
#[derive(Debug)]
pub struct Config {
    pub path: PathBuf,
    pub bridges: Vec<(String, Options)>,
}

impl Config {
    #[must_use]
    pub fn bridge(&self, name: &str) -> Option<&Options> {
        self.bridges.iter().find(|(n, _)| n == name).map(|(_, o)| o)
    }
}

/// Reads and validates `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        path: path.to_owned(),
        line: 0,
        column: 0,
        message: e.to_string(),
    })?;
    parse(path, &text)
}

/// Validates configuration text (the file name is only used in messages).
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let at = |offset: usize, message: String| {
        let (line, column) = line_col(text, offset);
        ConfigError {
            path: path.to_owned(),
            line,
            column,
            message,
        }
    };
    let file: ConfigFile = toml::from_str(text).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start);
        at(offset, e.message().to_owned())
    })?;
    let mut bridges: Vec<(String, Options)> = Vec::new();
    for b in file.bridges {
        let name = b.name.get_ref().clone();
        if name.is_empty() || name.len() > 15 {
            return Err(at(
                b.name.span().start,
                format!("{name:?} is not an interface name (1 to 15 characters)"),
            ));
        }
        if bridges.iter().any(|(n, _)| *n == name) {
            return Err(at(
                b.name.span().start,
                format!("bridge {name:?} is configured twice"),
            ));
        }
        let hook = match &b.hook {
            Some(h) => {
                Hook::parse(h.get_ref()).map_err(|e| at(h.span().start, e.to_string()))?;
                h.get_ref().clone()
            }
            None => "xdp".to_owned(),
        };
        let mut protect: Vec<RuleSpec> = Vec::new();
        for p in &b.protect {
            protect.push(
                parse_protect(p.get_ref(), "config")
                    .map_err(|e| at(p.span().start, e.to_string()))?,
            );
        }
        let mut allow: Vec<RuleSpec> = Vec::new();
        for a in &b.allow {
            allow.push(
                parse_allow(a.get_ref(), "config")
                    .map_err(|e| at(a.span().start, e.to_string()))?,
            );
        }
        // Contradictions (a prefix both protected and allowed) point at the allow entry.
        if let Err(e) = Policy::from_rules(protect.iter().cloned().chain(allow.iter().cloned())) {
            let offset = b
                .allow
                .first()
                .map_or(b.name.span().start, |a| a.span().start);
            return Err(at(offset, e.to_string()));
        }
        let mut extra_macs = Vec::new();
        for m in &b.extra_host_macs {
            if parse_mac(m.get_ref()).is_none() {
                return Err(at(
                    m.span().start,
                    format!("{:?} is not a MAC address", m.get_ref()),
                ));
            }
            extra_macs.push(m.get_ref().clone());
        }
        bridges.push((
            name,
            Options {
                hook,
                bridge_hook: b.bridge_hook,
                route_check: b.route_check,
                allow_tunnels: b.allow_tunnels,
                tunnel_ports: b.tunnel_ports,
                uplinks: b.uplinks,
                monitor: b.monitor,
                strict_mac: b.strict_mac,
                protect,
                allow,
                extra_macs,
                monitor_ports: b.monitor_ports,
                event_rate: b.event_rate,
                config_file: Some(path.to_owned()),
                ..Options::default()
            },
        ));
    }
    Ok(Config {
        path: path.to_owned(),
        bridges,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_file() {
        let cfg = parse(
            Path::new("g.toml"),
            "[[bridge]]\nname = \"br-guest\"\nprotect = [\"10.20.0.0/24=storage\"]\nallow = [\"10.20.0.5\"]\n",
        )
        .expect("valid");
        let o = cfg.bridge("br-guest").expect("configured");
        assert_eq!(o.protect.len(), 1);
        assert_eq!(o.allow[0].net.to_string(), "10.20.0.5/32");
        assert_eq!(o.hook, "xdp");
    }

    #[test]
    fn errors_name_line_and_column() {
        let e = parse(
            Path::new("g.toml"),
            "[[bridge]]\nname = \"br-guest\"\nprotect = [\n  \"10.20.0.0/24\",\n  \"10.300.0.0/16\",\n]\n",
        )
        .expect_err("bad CIDR");
        assert_eq!((e.line, e.column), (5, 3), "{e}");
        assert!(e.to_string().starts_with("g.toml:5:3: "), "{e}");

        let e = parse(
            Path::new("g.toml"),
            "[[bridge]]\nname = \"b\"\nhook = \"ebpf\"\n",
        )
        .expect_err("bad hook");
        assert_eq!(e.line, 3, "{e}");

        let e = parse(Path::new("g.toml"), "[[bridge]]\nnmae = \"b\"\n").expect_err("unknown key");
        assert_eq!(e.line, 2, "{e}");

        let e = parse(
            Path::new("g.toml"),
            "[[bridge]]\nname = \"b\"\nprotect = [\"10.0.0.0/8\"]\nallow = [\"10.0.0.0/8\"]\n",
        )
        .expect_err("contradiction");
        assert_eq!(e.line, 4, "{e}");
    }
}
