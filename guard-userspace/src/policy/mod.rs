//! The policy: protected (deny) and allowed prefixes with classes, the default protected set,
//! and the order in which a change is applied to the live tries without opening a window.
//!
//! - [`rule`](crate::rule): one rule and its text forms (re-exported here);
//! - `discovered`: the default protected set and the guest networks;
//! - `edit`: the live edits (`guardctl rules add/del/reset/save`);
//! - `plan`: class ids and the window-free order of trie writes.

mod discovered;
mod edit;
mod plan;

use std::collections::BTreeMap;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

pub use self::{
    discovered::{default_protected, guest_networks},
    edit::{add_rules, del_rules, options_with_edits, reset_edits},
    plan::{Classes, Op, plan, plan_reserving},
};
pub use crate::rule::{
    Action, PrefixError, RuleArg, RuleSpec, default_class, origin, parse_allow, parse_net,
    parse_protect,
};
use crate::{
    discovery::Discovery,
    error::{GuardError, Result},
    options::{Edits, Options},
};

/// A validated policy: at most one rule per prefix.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub rules: Vec<RuleSpec>,
}

impl Policy {
    /// Builds the desired policy: the discovered set (when the options use it, less the
    /// excluded prefixes), overridden by the configured prefixes, then the live edits: removed
    /// prefixes go, added rules replace any other rule for their prefix.
    ///
    /// A configured rule whose action contradicts a discovered rule for the same prefix is an
    /// error, like two contradicting configured rules: `exclude` takes a prefix out of the
    /// discovered set on purpose. The guest bridge's own networks are allowed where no other
    /// rule names the prefix (a protect of the bridge's own network is an operator's choice,
    /// and fails closed).
    ///
    /// ```
    /// use guard::{discovery::Discovery, options::{Edits, Options}, policy::{Action, Policy, parse_protect}};
    ///
    /// // No discovery needed when the options name the protected set and do not ask for it.
    /// let options = Options {
    ///     protect: vec![parse_protect("10.20.0.0/24=storage", "cli")?],
    ///     ..Options::default()
    /// };
    /// let mut edits = Edits::default();
    /// edits.removed.push("10.20.0.0/24".parse()?);
    /// let discovery = Discovery::default();
    /// assert!(Policy::build(&options, &Edits::default(), &discovery)?.rules[0].action == Action::Deny);
    /// // A live `rules del` takes it out again.
    /// assert!(Policy::build(&options, &edits, &discovery)?.rules.is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn build(options: &Options, edits: &Edits, discovery: &Discovery) -> Result<Self> {
        let explicit = Self::from_rules(options.protect.iter().chain(&options.allow).cloned())?;
        let mut by_net: BTreeMap<IpNet, RuleSpec> = BTreeMap::new();
        if options.discovers() {
            for r in default_protected(discovery) {
                if !options.exclude.contains(&r.net) {
                    by_net.insert(r.net, r);
                }
            }
        }
        for r in explicit.rules {
            if let Some(d) = by_net.get(&r.net)
                && d.action != r.action
            {
                return Err(GuardError::Policy(format!(
                    "{} is both protected and allowed: {d} and {r}; exclude it from the \
                     discovered set (--exclude, `exclude = [...]`) to allow it",
                    r.net
                )));
            }
            by_net.insert(r.net, r);
        }
        for r in guest_networks(discovery) {
            if !options.exclude.contains(&r.net) {
                by_net.entry(r.net).or_insert(r);
            }
        }
        for n in &edits.removed {
            by_net.remove(n);
        }
        for r in &edits.added {
            by_net.insert(r.net, r.clone());
        }
        Ok(Self {
            rules: by_net.into_values().collect(),
        })
    }

    /// Checks for contradictions: one prefix both denied and allowed, or given twice with
    /// different classes.
    pub fn from_rules(rules: impl IntoIterator<Item = RuleSpec>) -> Result<Self> {
        let mut by_net: BTreeMap<IpNet, RuleSpec> = BTreeMap::new();
        for r in rules {
            if let Some(prev) = by_net.get(&r.net) {
                if prev.action != r.action {
                    return Err(GuardError::Policy(format!(
                        "{} is both protected and allowed",
                        r.net
                    )));
                }
                if prev.class != r.class {
                    return Err(GuardError::Policy(format!(
                        "{} is given twice, as class {:?} and {:?}",
                        r.net, prev.class, r.class
                    )));
                }
                continue;
            }
            by_net.insert(r.net, r);
        }
        Ok(Self {
            rules: by_net.into_values().collect(),
        })
    }

    #[must_use]
    pub fn get(&self, net: &IpNet) -> Option<&RuleSpec> {
        self.rules.iter().find(|r| &r.net == net)
    }
}
