//! The live edits of `guardctl rules`: what they add and remove, and what `rules save`
//! writes to the configuration file instead.

use ipnet::IpNet;

use super::Policy;
use crate::{
    error::{GuardError, Result},
    options::{Edits, Options},
    rule::{Action, RuleArg, RuleSpec},
};

/// `guardctl rules add`: adds `new` (with their actions) to the live edits. `in_force` is the
/// policy in force before the change.
///
/// A rule whose action contradicts the rule in force for the same prefix (discovered,
/// configured or added earlier) is refused unless `replace`. A rule given without a class for
/// a prefix already in force with the same action keeps that rule's class and source.
/// Nothing is changed when any rule is refused. Returns the rules added.
pub fn add_rules(
    edits: &mut Edits,
    in_force: &Policy,
    new: &[(RuleArg, Action)],
    replace: bool,
) -> Result<Vec<RuleSpec>> {
    // Contradictions within the request itself.
    Policy::from_rules(new.iter().map(|(a, action)| a.rule(*action, "rules")))?;
    let mut rules = Vec::new();
    for (arg, action) in new {
        let rule = match in_force.get(&arg.net) {
            Some(e) if e.action != *action && !replace => {
                return Err(GuardError::Contradiction {
                    new: arg.rule(*action, "rules").to_string(),
                    existing: e.to_string(),
                });
            }
            Some(e) if e.action == *action && arg.class.is_none() => e.clone(),
            _ => arg.rule(*action, "rules"),
        };
        rules.push(rule);
    }
    for r in &rules {
        edits.removed.retain(|n| *n != r.net);
        edits.added.retain(|x| x.net != r.net);
        edits.added.push(r.clone());
    }
    Ok(rules)
}

/// `guardctl rules del`: takes `nets` out of the policy (also from the configured and the
/// discovered set) until `rules reset` or `rules add`. Each must be in force; nothing is
/// changed when one is not.
pub fn del_rules(edits: &mut Edits, in_force: &Policy, nets: &[IpNet]) -> Result<()> {
    if let Some(n) = nets.iter().find(|n| in_force.get(n).is_none()) {
        return Err(GuardError::NotInForce(*n));
    }
    for n in nets {
        edits.added.retain(|x| x.net != *n);
        if !edits.removed.contains(n) {
            edits.removed.push(*n);
        }
    }
    Ok(())
}

/// `guardctl rules reset`: forgets the live edits of `nets` (all of them when empty), so the
/// configured and discovered rules apply again. Each named prefix must have an edit.
pub fn reset_edits(edits: &mut Edits, nets: &[IpNet]) -> Result<usize> {
    let count = |e: &Edits| {
        e.added.len() + e.removed.len() + e.exceptions.len() + e.removed_exceptions.len()
    };
    if nets.is_empty() {
        let n = count(edits);
        *edits = Edits::default();
        return Ok(n);
    }
    if let Some(n) = nets.iter().find(|n| {
        !edits.removed.contains(n)
            && !edits.added.iter().any(|r| r.net == **n)
            && !edits
                .exceptions
                .iter()
                .chain(&edits.removed_exceptions)
                .any(|e| e.net == **n)
    }) {
        return Err(GuardError::NoEdit(*n));
    }
    let before = count(edits);
    edits.added.retain(|r| !nets.contains(&r.net));
    edits.removed.retain(|n| !nets.contains(n));
    edits.exceptions.retain(|e| !nets.contains(&e.net));
    edits.removed_exceptions.retain(|e| !nets.contains(&e.net));
    Ok(before - count(edits))
}

/// The options that give, with no live edits, the same policy as `options` with `edits`:
/// what `guardctl rules save` writes to the configuration file. `discovered` is the
/// discovered set now (it decides which added allow rules must also be excluded from it).
#[must_use]
pub fn options_with_edits(options: &Options, edits: &Edits, discovered: &[RuleSpec]) -> Options {
    let mut o = options.clone();
    let discovers = o.discovers();
    o.discover = Some(discovers);
    let exclude = |o: &mut Options, n: IpNet| {
        if discovers && !o.exclude.contains(&n) {
            o.exclude.push(n);
        }
    };
    for n in &edits.removed {
        o.protect.retain(|r| r.net != *n);
        o.allow.retain(|r| r.net != *n);
        exclude(&mut o, *n);
    }
    for r in &edits.added {
        o.protect.retain(|x| x.net != r.net);
        o.allow.retain(|x| x.net != r.net);
        if discovered
            .iter()
            .any(|d| d.net == r.net && d.action != r.action)
        {
            exclude(&mut o, r.net);
        }
        let mut r = r.clone();
        "config".clone_into(&mut r.source);
        match r.action {
            Action::Deny => o.protect.push(r),
            Action::Allow => o.allow.push(r),
        }
    }
    o.exceptions = crate::exception::desired(options, edits)
        .into_iter()
        .map(|mut e| {
            "config".clone_into(&mut e.source);
            e
        })
        .collect();
    o
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{
        discovery::Discovery,
        policy::default_protected,
        rule::{parse_net, parse_protect},
    };

    fn arg(s: &str) -> RuleArg {
        s.parse().expect("valid")
    }

    #[test]
    fn edits_refuse_contradictions_and_keep_classes() {
        let discovered = Policy::from_rules([
            parse_protect("10.20.0.0/24=host-net", "stor0").expect("ok"),
            parse_protect("10.20.0.1/32=host", "stor0").expect("ok"),
        ])
        .expect("ok");
        let mut edits = Edits::default();
        let e = add_rules(
            &mut edits,
            &discovered,
            &[(arg("10.20.0.0/24"), Action::Allow)],
            false,
        )
        .expect_err("contradiction");
        let text = e.to_string();
        assert!(
            text.contains("10.20.0.0/24 (allowed")
                && text.contains("10.20.0.0/24 (protected, class host-net, discovered on stor0)"),
            "{text}"
        );
        assert!(edits.is_empty(), "nothing changed on a refusal");
        // Without a class, a prefix protected already keeps its class and source.
        let added = add_rules(
            &mut edits,
            &discovered,
            &[(arg("10.20.0.1"), Action::Deny)],
            false,
        )
        .expect("same action");
        assert_eq!(
            (added[0].class.as_str(), added[0].source.as_str()),
            ("host", "stor0")
        );
        // --replace overrides; del of a prefix not in force fails; reset forgets.
        add_rules(
            &mut edits,
            &discovered,
            &[(arg("10.20.0.0/24=portal"), Action::Allow)],
            true,
        )
        .expect("replace");
        let options = Options::default();
        let d = Discovery {
            bridge: crate::discovery::Iface {
                index: 1,
                name: "br".into(),
                mac: None,
                controller: None,
                is_bridge: true,
                is_loopback: false,
                up: true,
                tunnel_port: None,
                xdp_prog: None,
            },
            ports: Vec::new(),
            host_macs: BTreeMap::new(),
            addrs: vec![crate::discovery::HostAddr {
                ifindex: 2,
                ifname: "stor0".into(),
                addr: "10.20.0.1".parse().expect("ok"),
                prefix_len: 24,
                peer: None,
            }],
            ifaces: Vec::new(),
            routes: Vec::new(),
            fou_ports: Vec::new(),
        };
        let p = Policy::build(&options, &edits, &d).expect("build");
        assert_eq!(
            p.get(&parse_net("10.20.0.0/24").expect("ok"))
                .map(|r| r.action),
            Some(Action::Allow)
        );
        assert!(matches!(
            del_rules(&mut edits, &p, &[parse_net("10.99.0.0/16").expect("ok")]),
            Err(GuardError::NotInForce(_))
        ));
        del_rules(&mut edits, &p, &[parse_net("10.20.0.1/32").expect("ok")]).expect("in force");
        let p = Policy::build(&options, &edits, &d).expect("build");
        assert!(
            p.get(&parse_net("10.20.0.1/32").expect("ok")).is_none(),
            "removed stays removed"
        );

        // What `rules save` writes gives the same policy with no edits.
        let saved = options_with_edits(&options, &edits, &default_protected(&d));
        let again = Policy::build(&saved, &Edits::default(), &d).expect("saved options build");
        let key = |p: &Policy| -> Vec<(IpNet, Action)> {
            p.rules.iter().map(|r| (r.net, r.action)).collect()
        };
        assert_eq!(key(&again), key(&p));
        assert!(
            saved
                .exclude
                .contains(&parse_net("10.20.0.0/24").expect("ok"))
        );

        assert_eq!(reset_edits(&mut edits, &[]).expect("reset"), 2);
        assert!(edits.is_empty());
    }
}
