//! One prefix rule: its action, class and source, and how the command line and the
//! configuration file write it (`CIDR[=CLASS]`).

use std::{fmt, net::IpAddr, str::FromStr};

use guard_common::{ACTION_ALLOW, ACTION_DENY};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Deny,
    Allow,
}

impl Action {
    #[must_use]
    pub const fn code(self) -> u16 {
        match self {
            Self::Deny => ACTION_DENY,
            Self::Allow => ACTION_ALLOW,
        }
    }

    /// The kernel's reading of an action code: anything but allow denies.
    #[must_use]
    pub const fn from_code(code: u16) -> Self {
        if code == ACTION_ALLOW {
            Self::Allow
        } else {
            Self::Deny
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Self::Deny => "deny",
            Self::Allow => "allow",
        })
    }
}

/// One prefix of the policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleSpec {
    pub net: IpNet,
    pub action: Action,
    /// `management`, `storage`, `host`, `host-net`, `host-route`, `guest-net`, or a user's
    /// name.
    pub class: String,
    /// Where it came from (an interface for discovered prefixes, "cli", "config", "rules").
    #[serde(default)]
    pub source: String,
}

/// A prefix or class that does not parse. Argument validation: `guardctl` reports these as
/// usage errors (exit 64).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    #[error("{input:?} is not an address or CIDR")]
    NotAnAddress { input: String },
    #[error("{input:?} is not a CIDR: {addr:?} is not an IPv4 or IPv6 address")]
    BadAddress { input: String, addr: String },
    #[error("{input:?} is not a CIDR: prefix length {len:?} is not a number")]
    BadLength { input: String, len: String },
    #[error(
        "{input:?} is not a CIDR: the prefix length /{len} is too long for {family} (at most /{max})"
    )]
    TooLong {
        input: String,
        len: u32,
        family: &'static str,
        max: u8,
    },
    #[error("class {class:?} in {input:?}: use letters, digits, '-', '_' or '.'")]
    BadClass { input: String, class: String },
}

/// Parses a CIDR (`10.0.0.0/24`, `fd00::/64`) or a bare address (a host route). Host bits are
/// cleared: `10.0.0.1/24` means the network `10.0.0.0/24`.
pub fn parse_net(s: &str) -> Result<IpNet, PrefixError> {
    let input = s.trim();
    let Some((addr, len)) = input.split_once('/') else {
        return IpAddr::from_str(input)
            .map(IpNet::from)
            .map_err(|_| PrefixError::NotAnAddress {
                input: input.to_owned(),
            });
    };
    let ip = IpAddr::from_str(addr).map_err(|_| PrefixError::BadAddress {
        input: input.to_owned(),
        addr: addr.to_owned(),
    })?;
    let len: u32 = len.parse().map_err(|_| PrefixError::BadLength {
        input: input.to_owned(),
        len: len.to_owned(),
    })?;
    let (family, max) = if ip.is_ipv4() {
        ("IPv4", 32)
    } else {
        ("IPv6", 128)
    };
    let too_long = || PrefixError::TooLong {
        input: input.to_owned(),
        len,
        family,
        max,
    };
    let len = u8::try_from(len).map_err(|_| too_long())?;
    IpNet::new(ip, len)
        .map(|n| n.trunc())
        .map_err(|_| too_long())
}

/// `CIDR[=CLASS]` as given on the command line: the class is `None` when not given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleArg {
    pub net: IpNet,
    pub class: Option<String>,
}

impl FromStr for RuleArg {
    type Err = PrefixError;

    fn from_str(s: &str) -> Result<Self, PrefixError> {
        let (cidr, class) = match s.split_once('=') {
            Some((c, class)) => (c, Some(class.trim())),
            None => (s, None),
        };
        if let Some(class) = class
            && (class.is_empty()
                || !class
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)))
        {
            return Err(PrefixError::BadClass {
                input: s.to_owned(),
                class: class.to_owned(),
            });
        }
        Ok(Self {
            net: parse_net(cidr)?,
            class: class.map(str::to_owned),
        })
    }
}

impl RuleArg {
    /// The rule, with the default class of its action when none was given.
    #[must_use]
    pub fn rule(&self, action: Action, source: &str) -> RuleSpec {
        RuleSpec {
            net: self.net,
            action,
            class: self
                .class
                .clone()
                .unwrap_or_else(|| default_class(action).to_owned()),
            source: source.to_owned(),
        }
    }
}

/// The class of a rule given without one.
#[must_use]
pub const fn default_class(action: Action) -> &'static str {
    match action {
        Action::Deny => "protected",
        Action::Allow => "allowed",
    }
}

/// Parses `CIDR[=CLASS]` (the `--protect` syntax); the class defaults to `protected`.
pub fn parse_protect(s: &str, source: &str) -> Result<RuleSpec, PrefixError> {
    Ok(RuleArg::from_str(s)?.rule(Action::Deny, source))
}

/// Parses `CIDR[=CLASS]` (the `--allow` syntax); the class defaults to `allowed`.
pub fn parse_allow(s: &str, source: &str) -> Result<RuleSpec, PrefixError> {
    Ok(RuleArg::from_str(s)?.rule(Action::Allow, source))
}

/// Where a rule came from, for messages: `source` is an interface name for discovered rules.
#[must_use]
pub fn origin(source: &str) -> String {
    match source {
        "cli" => "given to attach".to_owned(),
        "config" => "from the configuration file".to_owned(),
        "rules" => "added with `rules add`".to_owned(),
        "" => "of unknown origin".to_owned(),
        iface => format!("discovered on {iface}"),
    }
}

impl fmt::Display for RuleSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.action {
            Action::Deny => "protected",
            Action::Allow => "allowed",
        };
        write!(
            f,
            "{} ({what}, class {}, {})",
            self.net,
            self.class,
            origin(&self.source)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;

    fn arg(s: &str) -> RuleArg {
        s.parse().expect("valid")
    }

    #[test]
    fn prefix_errors_say_what_is_wrong() {
        let e = parse_net("10.0.0.0/33").expect_err("too long").to_string();
        assert!(
            e.contains("prefix length /33 is too long for IPv4 (at most /32)"),
            "{e}"
        );
        let e = parse_net("fd00::/129").expect_err("too long").to_string();
        assert!(e.contains("too long for IPv6 (at most /128)"), "{e}");
        let e = parse_net("10.0.0.300/24")
            .expect_err("bad address")
            .to_string();
        assert!(e.contains("\"10.0.0.300/24\" is not a CIDR"), "{e}");
        let e = parse_net("10.0.0.0/x").expect_err("bad length").to_string();
        assert!(e.contains("is not a number"), "{e}");
        assert!("10.0.0.0/8=".parse::<RuleArg>().is_err());
        assert_eq!(arg("10.0.0.0/8").class, None);
    }

    #[test]
    fn parsing_and_contradictions() {
        assert_eq!(
            parse_net("10.0.0.1/24").expect("ok").to_string(),
            "10.0.0.0/24"
        );
        assert_eq!(parse_net("fd00::1").expect("ok").to_string(), "fd00::1/128");
        assert!(parse_net("10.0.0.0/33").is_err());
        assert!(parse_net("nonsense").is_err());
        assert!(parse_protect("10.0.0.0/8=bad class", "t").is_err());
        let r = parse_protect("10.20.0.0/24=storage", "t").expect("ok");
        assert_eq!(r.class, "storage");
        let both = Policy::from_rules([
            parse_protect("10.0.0.0/8", "t").expect("ok"),
            parse_allow("10.0.0.0/8", "t").expect("ok"),
        ]);
        assert!(both.is_err());
    }
}
