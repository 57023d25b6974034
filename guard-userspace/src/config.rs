//! The TOML configuration file.
//!
//! ```toml
//! [[bridge]]
//! name = "br-guest"
//! hook = "xdp"                 # xdp | xdp-generic | tc | tcx
//! bridge_hook = true           # the backstop: TC ingress on the bridge device
//! route_check = true           # judge by the kernel's route lookup too
//! allow_tunnels = false        # let tunnel encapsulations to the host through
//! replies = true               # let replies to flows the protected side started through
//! tunnel_ports = [5555]        # more UDP tunnel ports (FOU, ...)
//! uplinks = ["eth0"]           # where guests may be routed (default: default-route links)
//! monitor = false              # count and report, do not drop
//! strict_mac = false           # only unicast host MACs are host-bound
//! protect = ["10.20.0.0/24=storage", "10.10.0.0/24=management"]   # empty: discovered set
//! discover = false             # also protect the discovered set (default: protect is empty)
//! exclude = ["10.30.0.0/24"]   # never protect these discovered prefixes
//! allow = ["10.20.0.5=iscsi-portal"]
//! extra_host_macs = ["52:54:00:12:34:56"]
//! monitor_ports = ["vnet7"]
//! event_rate = 100             # drop events per second per port (0: none)
//! # holes for one VM, one port or every port, one protocol and destination port
//! exceptions = [
//!   { allow = "10.20.0.5/32=iscsi", vm = "backup01", proto = "tcp", dport = 3260 },
//!   { allow = "10.20.0.1", proto = "udp", dport = 123 },      # every guest: the host's NTP
//!   { allow = "10.20.0.7", iface = "vnet3", proto = "icmp" },
//! ]
//! ```
//!
//! The discovered set is every network and address the host holds outside the bridge and
//! loopback (link-local and multicast never). A configured rule overrides a discovered one for
//! the same prefix; one that contradicts it (an allow for a discovered protected prefix) is
//! an error unless the prefix is in `exclude`.
//!
//! `guardctl rules save` writes the options and live edits of an attached bridge into its
//! `[[bridge]]` table ([`save_bridge`]), keeping the other tables and the comments.
//!
//! Every error names the file, line and column.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use toml::Spanned;

use crate::{
    exception::{ExceptionSpec, parse_dport, parse_proto, proto_name},
    options::{Hook, Options},
    policy::Policy,
    rule::{RuleArg, RuleSpec, parse_allow, parse_net, parse_protect},
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
    #[serde(default = "yes")]
    pub replies: bool,
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
    pub discover: Option<bool>,
    #[serde(default)]
    pub exclude: Vec<Spanned<String>>,
    #[serde(default)]
    pub allow: Vec<Spanned<String>>,
    #[serde(default)]
    pub extra_host_macs: Vec<Spanned<String>>,
    #[serde(default)]
    pub monitor_ports: Vec<String>,
    /// Most drop events per second per port (0: none); default 100.
    #[serde(default)]
    pub event_rate: Option<u32>,
    #[serde(default)]
    pub exceptions: Vec<Spanned<ExceptionConfig>>,
}

/// One exception: `{ allow = "CIDR[=CLASS]", vm = "NAME" | iface = "PORT", proto = "tcp",
/// dport = 3260 }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExceptionConfig {
    pub allow: String,
    #[serde(default)]
    pub vm: Option<String>,
    #[serde(default)]
    pub iface: Option<String>,
    #[serde(default)]
    pub proto: Option<String>,
    #[serde(default)]
    pub dport: Option<i64>,
}

impl ExceptionConfig {
    fn spec(&self) -> Result<ExceptionSpec, String> {
        let arg: RuleArg = self
            .allow
            .parse()
            .map_err(|e: crate::rule::PrefixError| e.to_string())?;
        let proto = self
            .proto
            .as_deref()
            .map_or(Ok(0), parse_proto)
            .map_err(|e| e.to_string())?;
        let dport = match self.dport {
            None => 0,
            Some(p) => parse_dport(&p.to_string()).map_err(|e| e.to_string())?,
        };
        ExceptionSpec::new(
            arg.net,
            self.vm.clone(),
            self.iface.clone(),
            proto,
            dport,
            arg.class.unwrap_or_else(|| "allowed".to_owned()),
            "config",
        )
        .map_err(|e| e.to_string())
    }
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
        let mut exclude = Vec::new();
        for x in &b.exclude {
            exclude.push(parse_net(x.get_ref()).map_err(|e| at(x.span().start, e.to_string()))?);
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
            if m.get_ref().parse::<guard_common::Mac>().is_err() {
                return Err(at(
                    m.span().start,
                    format!("{:?} is not a MAC address", m.get_ref()),
                ));
            }
            extra_macs.push(m.get_ref().clone());
        }
        let exceptions = parse_exceptions(&b.exceptions, &at)?;
        bridges.push((
            name,
            Options {
                hook,
                bridge_hook: b.bridge_hook,
                route_check: b.route_check,
                allow_tunnels: b.allow_tunnels,
                replies: b.replies,
                tunnel_ports: b.tunnel_ports,
                uplinks: b.uplinks,
                monitor: b.monitor,
                strict_mac: b.strict_mac,
                protect,
                allow,
                discover: b.discover,
                exclude,
                extra_macs,
                monitor_ports: b.monitor_ports,
                event_rate: b.event_rate,
                exceptions,
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

/// The `exceptions` of a `[[bridge]]`: each checked, none given twice.
fn parse_exceptions(
    list: &[Spanned<ExceptionConfig>],
    at: &impl Fn(usize, String) -> ConfigError,
) -> Result<Vec<ExceptionSpec>, ConfigError> {
    let mut exceptions: Vec<ExceptionSpec> = Vec::new();
    for x in list {
        let spec = x.get_ref().spec().map_err(|m| at(x.span().start, m))?;
        if exceptions.iter().any(|e| e.id() == spec.id()) {
            return Err(at(
                x.span().start,
                format!("exception {} is given twice", spec.id()),
            ));
        }
        exceptions.push(spec);
    }
    Ok(exceptions)
}

/// `CIDR=CLASS`, the form `protect` and `allow` take.
fn rule_text(r: &RuleSpec) -> String {
    format!("{}={}", r.net, r.class)
}

/// Writes `options` as the `[[bridge]]` table named `bridge` in the file at `path`: replaces
/// that table (or appends one), keeps every other table, comment and layout, validates the
/// result as [`load`] would, and replaces the file atomically (temp file + rename).
pub fn save_bridge(path: &Path, bridge: &str, options: &Options) -> Result<(), ConfigError> {
    use toml_edit::{Array, ArrayOfTables, DocumentMut, Item, Table, value};
    let err = |message: String| ConfigError {
        path: path.to_owned(),
        line: 0,
        column: 0,
        message,
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(err(e.to_string())),
    };
    // Errors in the file as it is come first, with their place.
    if !text.trim().is_empty() {
        parse(path, &text)?;
    }
    let mut doc: DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| err(format!("not TOML: {}", e.message())))?;
    // In a file of comments only, toml_edit holds them as the document's trailing text, which
    // would end up below a first table: keep them above it.
    let leading = if doc.as_table().is_empty() {
        let t = doc.trailing().as_str().unwrap_or_default().to_owned();
        doc.set_trailing("");
        t
    } else {
        String::new()
    };
    let strings = |v: &mut dyn Iterator<Item = String>| {
        let mut a = Array::new();
        for s in v {
            a.push(s);
        }
        value(a)
    };
    let mut t = Table::new();
    if !leading.is_empty() {
        t.decor_mut().set_prefix(leading);
    }
    t["name"] = value(bridge);
    t["hook"] = value(if options.hook.is_empty() {
        "xdp"
    } else {
        options.hook.as_str()
    });
    t["bridge_hook"] = value(options.bridge_hook);
    t["monitor"] = value(options.monitor);
    t["strict_mac"] = value(options.strict_mac);
    t["discover"] = value(options.discovers());
    t["protect"] = strings(&mut options.protect.iter().map(rule_text));
    t["exclude"] = strings(&mut options.exclude.iter().map(ToString::to_string));
    t["allow"] = strings(&mut options.allow.iter().map(rule_text));
    t["extra_host_macs"] = strings(&mut options.extra_macs.iter().cloned());
    t["monitor_ports"] = strings(&mut options.monitor_ports.iter().cloned());
    if let Some(rate) = options.event_rate {
        t["event_rate"] = value(i64::from(rate));
    }
    if !options.exceptions.is_empty() {
        let mut a = Array::new();
        for e in &options.exceptions {
            let mut it = toml_edit::InlineTable::new();
            it.insert("allow", format!("{}={}", e.net, e.class).into());
            if let Some(vm) = &e.vm {
                it.insert("vm", vm.as_str().into());
            }
            if let Some(i) = &e.iface {
                it.insert("iface", i.as_str().into());
            }
            if e.proto != 0 {
                it.insert("proto", proto_name(e.proto).into());
            }
            if e.dport != 0 {
                it.insert("dport", i64::from(e.dport).into());
            }
            a.push(it);
        }
        t["exceptions"] = value(a);
    }
    let bridges = doc
        .entry("bridge")
        .or_insert_with(|| Item::ArrayOfTables(ArrayOfTables::new()));
    let Some(bridges) = bridges.as_array_of_tables_mut() else {
        return Err(err(
            "`bridge` is not an array of tables ([[bridge]])".to_owned()
        ));
    };
    let at = bridges
        .iter()
        .position(|b| b.get("name").and_then(Item::as_str) == Some(bridge));
    match at.and_then(|i| bridges.get_mut(i)) {
        Some(existing) => {
            // Keep the comment above the table.
            let decor = existing.decor().clone();
            *existing = t;
            *existing.decor_mut() = decor;
        }
        None => bridges.push(t),
    }
    let out = doc.to_string();
    parse(path, &out)?;
    let tmp = path.with_extension(format!("toml.{}.tmp", std::process::id()));
    std::fs::write(&tmp, &out).map_err(|e| err(format!("writing {}: {e}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(|e| err(e.to_string()))
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
    fn save_replaces_one_bridge_and_keeps_the_rest() {
        let dir = std::env::temp_dir().join(format!("guard-config-save-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("g.toml");
        std::fs::write(
            &path,
            "# site config\n[[bridge]]\nname = \"br-a\"\nhook = \"tc\" # old\n\n\
             # the other one\n[[bridge]]\nname = \"br-b\"\nmonitor = true\n",
        )
        .expect("write");
        let mut o = parse(Path::new("x"), "[[bridge]]\nname = \"br-a\"\n")
            .expect("valid")
            .bridges
            .remove(0)
            .1;
        o.allow
            .push(parse_allow("10.20.0.5=portal", "rules").expect("valid"));
        o.exclude.push(parse_net("10.30.0.0/24").expect("valid"));
        save_bridge(&path, "br-a", &o).expect("save");
        save_bridge(&path, "br-c", &o).expect("save a new one");
        let text = std::fs::read_to_string(&path).expect("read");
        let cfg = load(&path).expect("valid after save");
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            text.contains("# site config") && text.contains("# the other one"),
            "{text}"
        );
        let a = cfg.bridge("br-a").expect("br-a");
        assert_eq!(a.allow[0].net.to_string(), "10.20.0.5/32");
        assert_eq!(a.allow[0].class, "portal");
        assert_eq!(a.exclude[0].to_string(), "10.30.0.0/24");
        assert!(a.discovers());
        assert!(cfg.bridge("br-b").expect("br-b").monitor);
        assert!(cfg.bridge("br-c").is_some());
    }

    #[test]
    fn exceptions_parse_save_and_name_their_errors() {
        let text = "[[bridge]]\nname = \"br-a\"\nexceptions = [\n  \
                    { allow = \"10.20.0.5/32=iscsi\", vm = \"backup01\", proto = \"tcp\", dport = 3260 },\n  \
                    { allow = \"10.20.0.1\", proto = \"udp\", dport = 123 },\n]\n";
        let cfg = parse(Path::new("g.toml"), text).expect("valid");
        let o = cfg.bridge("br-a").expect("br-a");
        assert_eq!(o.exceptions.len(), 2);
        assert_eq!(o.exceptions[0].vm.as_deref(), Some("backup01"));
        assert_eq!((o.exceptions[0].proto, o.exceptions[0].dport), (6, 3260));
        assert_eq!(o.exceptions[0].class, "iscsi");

        let dir = std::env::temp_dir().join(format!("guard-config-exc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("g.toml");
        save_bridge(&path, "br-a", o).expect("save");
        let again = load(&path).expect("valid after save");
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(again.bridge("br-a").expect("br-a").exceptions, o.exceptions);

        let e = parse(
            Path::new("g.toml"),
            "[[bridge]]\nname = \"b\"\nexceptions = [\n { allow = \"10.0.0.1\", proto = \"icmp\", dport = 80 }]\n",
        )
        .expect_err("port without tcp/udp");
        assert_eq!(e.line, 4, "{e}");
        assert!(e.message.contains("--dport 80 needs --proto tcp"), "{e}");
        let e = parse(
            Path::new("g.toml"),
            "[[bridge]]\nname = \"b\"\nexceptions = [{ allow = \"10.0.0.1\", proto = \"tcp\", dport = 70000 }]\n",
        )
        .expect_err("port too big");
        assert!(e.message.contains("--dport"), "{e}");
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
