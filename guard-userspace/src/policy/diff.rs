//! What changed between two validated policies, for the `policy_applied` audit trail: rules
//! added, removed and changed (any field: protocol, ports, sources, action), and the
//! settings that changed (mode, default, failsafe ports, zones, `[listen]`, ...).

use std::collections::BTreeMap;

use super::model::{Policy, ProtocolRule, Rule};

/// A rule as the diff compares it: where it sits and everything it says.
#[derive(PartialEq)]
enum Def<'a> {
    Ingress(&'a Rule),
    Egress(&'a Rule),
    Protocol(&'a ProtocolRule),
}

fn rules(p: &Policy) -> BTreeMap<&str, Def<'_>> {
    p.ingress
        .iter()
        .map(|r| (r.name.as_str(), Def::Ingress(r)))
        .chain(p.egress.iter().map(|r| (r.name.as_str(), Def::Egress(r))))
        .chain(
            p.protocols
                .iter()
                .map(|r| (r.name.as_str(), Def::Protocol(r))),
        )
        .collect()
}

/// The changes from `old` to `new`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Diff {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    /// Top-level settings and sections that differ, by their policy key.
    pub settings: Vec<&'static str>,
}

pub fn diff(old: &Policy, new: &Policy) -> Diff {
    let (before, after) = (rules(old), rules(new));
    let names = |f: &dyn Fn(&&str) -> bool, from: &BTreeMap<&str, Def<'_>>| -> Vec<String> {
        from.keys()
            .filter(|n| f(n))
            .map(|n| (*n).to_owned())
            .collect()
    };
    let mut settings = Vec::new();
    let mut setting = |key: &'static str, differs: bool| {
        if differs {
            settings.push(key);
        }
    };
    setting("mode", old.mode != new.mode);
    setting("default", old.default_action != new.default_action);
    setting("failsafe_ports", old.failsafe_ports != new.failsafe_ports);
    setting("interfaces", old.interfaces != new.interfaces);
    setting("zones", old.zones != new.zones);
    setting("cgroup", old.cgroup != new.cgroup);
    setting("listen", old.listen != new.listen);
    setting("events", old.events != new.events);
    setting("flows", old.flows != new.flows);
    setting("health", old.health != new.health);
    Diff {
        added: names(&|n| !before.contains_key(n), &after),
        removed: names(&|n| !after.contains_key(n), &before),
        changed: names(
            &|n| matches!((before.get(n), after.get(n)), (Some(a), Some(b)) if a != b),
            &before,
        ),
        settings,
    }
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// One line: `+added -removed ~changed (names, at most 5 of each) settings: keys`.
pub fn summary(old: &Policy, new: &Policy) -> String {
    let d = diff(old, new);
    let names: Vec<String> = [("+", &d.added), ("-", &d.removed), ("~", &d.changed)]
        .into_iter()
        .flat_map(|(sign, list)| list.iter().take(5).map(move |n| format!("{sign}{n}")))
        .collect();
    let mut out = format!(
        "+{} -{} ~{} ({})",
        d.added.len(),
        d.removed.len(),
        d.changed.len(),
        names.join(" ")
    );
    if !d.settings.is_empty() {
        out.push_str(&format!(" settings: {}", d.settings.join(", ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::check;

    const BASE: &str = r#"interfaces = ["eth0"]
[zones]
lan = ["198.18.0.0/16"]
[[ingress]]
name = "web"
proto = "tcp"
ports = [443]
[[ingress]]
name = "ssh"
proto = "tcp"
ports = [22]
from = ["lan"]
"#;

    fn policy(text: &str) -> Policy {
        check("p.toml", text).expect("valid").policy
    }

    #[test]
    fn every_kind_of_change_is_named() {
        let old = policy(BASE);
        assert!(diff(&old, &old).is_empty());
        let cases: [(&str, &str, &str); 8] = [
            ("ports = [443]", "ports = [443, 8443]", "+0 -0 ~1 (~web)"),
            ("from = [\"lan\"]", "from = [\"any\"]", "+0 -0 ~1 (~ssh)"),
            (
                "ports = [22]",
                "ports = [22]\naction = \"deny\"",
                "+0 -0 ~1 (~ssh)",
            ),
            (
                "proto = \"tcp\"\nports = [443]",
                "proto = \"udp\"\nports = [443]",
                "+0 -0 ~1 (~web)",
            ),
            (
                "interfaces = [\"eth0\"]",
                "interfaces = [\"eth0\"]\ndefault = \"allow\"",
                "+0 -0 ~0 () settings: default",
            ),
            (
                "interfaces = [\"eth0\"]",
                "interfaces = [\"eth0\"]\nmode = \"audit\"",
                "+0 -0 ~0 () settings: mode",
            ),
            (
                "interfaces = [\"eth0\"]",
                "interfaces = [\"eth0\"]\nfailsafe_ports = [2222]",
                "+0 -0 ~0 () settings: failsafe_ports",
            ),
            (
                "lan = [\"198.18.0.0/16\"]",
                "lan = [\"198.18.0.0/15\"]",
                "+0 -0 ~1 (~ssh) settings: zones",
            ),
        ];
        for (from, to, want) in cases {
            let new = policy(&BASE.replace(from, to));
            assert_eq!(summary(&old, &new), want, "{from} -> {to}");
        }
        let new = policy(&BASE.replace("name = \"ssh\"", "name = \"admin\""));
        assert_eq!(summary(&old, &new), "+1 -1 ~0 (+admin -ssh)");
        let new = policy(&format!("{BASE}[listen]\nallow = [443]\n"));
        assert_eq!(summary(&old, &new), "+0 -0 ~0 () settings: listen");
        let new = policy(&BASE.replace(
            "interfaces = [\"eth0\"]",
            "interfaces = [\"eth0\"]\nicmp_echo = [\"lan\"]",
        ));
        assert_eq!(summary(&old, &new), "+0 -0 ~1 (~icmp-echo)");
    }
}
