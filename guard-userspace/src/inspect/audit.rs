//! `guard audit`: the host's listening sockets against the policy.
//!
//! Pure: given a validated [`Policy`] and the [`Listener`]s read by `sockets`, it tells
//! - which listeners the policy does not expect (violations): with `[listen]`, a port it
//!   does not allow for that protocol; without `[listen]`, a port no ingress rule, failsafe
//!   port or `default = "allow"` admits (loopback-only sockets are then not judged);
//! - for each listener, which zones can reach it (the exposure matrix), worked out from the
//!   ingress rules the way the kernel judges a packet: the most specific source wins, at equal
//!   specificity deny beats audit beats allow, no match takes `default`, TCP failsafe ports
//!   always pass;
//! - which rules allow ports nobody listens on (least privilege).

use std::collections::BTreeMap;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Serialize;

pub use crate::policy::eval::{Reach, reach};
use crate::{
    linux::sockets::Listener,
    policy::{
        eval::{halves, is_failsafe},
        model::{DefaultAction, Policy, PortRange, Proto, RuleAction},
    },
};

/// The column for addresses in no zone of the policy.
pub const OUTSIDE: &str = "(outside zones)";
/// The only column when the policy names no zones.
pub const ANYWHERE: &str = "(any)";

fn universe() -> [IpNet; 2] {
    [IpNet::V4(Ipv4Net::default()), IpNet::V6(Ipv6Net::default())]
}

/// The exposure matrix's columns: each zone with its networks, then the addresses outside
/// every zone (or, with no zones, every address).
pub fn columns(policy: &Policy) -> Vec<(String, Vec<IpNet>)> {
    let mut cols: Vec<(String, Vec<IpNet>)> = policy
        .zones
        .iter()
        .map(|(name, nets)| (name.clone(), nets.clone()))
        .collect();
    if cols.is_empty() {
        cols.push((ANYWHERE.to_owned(), universe().to_vec()));
    } else {
        let zoned: Vec<IpNet> = policy.zones.values().flatten().copied().collect();
        let outside: Vec<IpNet> = universe()
            .into_iter()
            .flat_map(|u| complement(u, &zoned))
            .collect();
        if !outside.is_empty() {
            cols.push((OUTSIDE.to_owned(), outside));
        }
    }
    cols
}

/// The parts of `net` that no network of `set` covers, as prefixes.
pub fn complement(net: IpNet, set: &[IpNet]) -> Vec<IpNet> {
    let overlapping: Vec<IpNet> = set
        .iter()
        .copied()
        .filter(|s| s.contains(&net) || net.contains(s))
        .collect();
    if overlapping.is_empty() {
        return vec![net];
    }
    if overlapping.iter().any(|s| s.contains(&net)) {
        return Vec::new();
    }
    halves(net)
        .into_iter()
        .flat_map(|h| complement(h, &overlapping))
        .collect()
}

/// One row of the audit: a listener, whether the policy expects it, and who reaches it.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    #[serde(flatten)]
    pub listener: Listener,
    /// The policy expects this listener (see the module documentation).
    pub expected: bool,
    /// Zone (column) name to reach, in column order.
    pub exposure: BTreeMap<String, Reach>,
}

/// Ports a rule allows that no socket listens on (reachable from the network).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unused {
    pub rule: String,
    pub proto: Proto,
    /// The unused ports, as ranges (`"9000-9010"`).
    pub ports: Vec<String>,
    /// How many ports that is.
    pub count: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub mode: String,
    /// The policy has a `[listen]` allowlist (otherwise the ingress rules are the measure).
    pub listen_allowlist: bool,
    pub columns: Vec<String>,
    pub listeners: Vec<Row>,
    /// Listeners the policy does not expect.
    pub unexpected_listeners: usize,
    pub unused_rules: Vec<Unused>,
    /// TCP failsafe ports nothing listens on.
    pub unused_failsafe_ports: Vec<u16>,
}

impl Report {
    pub fn violations(&self) -> impl Iterator<Item = &Row> {
        self.listeners.iter().filter(|r| !r.expected)
    }
}

/// True when the policy expects a listener on `proto`/`port` at `listener`'s address.
pub fn expected(policy: &Policy, listener: &Listener) -> bool {
    let (proto, port) = (listener.proto, listener.port);
    match &policy.listen {
        Some(listen) => {
            let allowed = match proto {
                Proto::Tcp => &listen.tcp,
                Proto::Udp => &listen.udp,
            };
            allowed.iter().any(|p| p.contains(port))
        }
        None => {
            listener.loopback_only()
                || policy.default_action == DefaultAction::Allow
                || is_failsafe(policy, proto, port)
                || policy.ingress.iter().any(|r| {
                    r.proto == proto
                        && r.action != RuleAction::Deny
                        && r.ports.iter().any(|p| p.contains(port))
                })
        }
    }
}

/// Audits `listeners` against `policy`.
pub fn audit(policy: &Policy, listeners: Vec<Listener>) -> Report {
    let cols = columns(policy);
    let mut rows = Vec::with_capacity(listeners.len());
    let mut cache: BTreeMap<(Proto, u16), Vec<Reach>> = BTreeMap::new();
    for listener in listeners {
        let exposure = if listener.loopback_only() {
            cols.iter()
                .map(|(c, _)| (c.clone(), Reach::Local))
                .collect()
        } else {
            let reaches = cache
                .entry((listener.proto, listener.port))
                .or_insert_with(|| {
                    cols.iter()
                        .map(|(_, nets)| reach(policy, listener.proto, listener.port, nets))
                        .collect()
                });
            cols.iter()
                .map(|(c, _)| c.clone())
                .zip(reaches.iter().copied())
                .collect()
        };
        rows.push(Row {
            expected: expected(policy, &listener),
            listener,
            exposure,
        });
    }
    let network_listening = |proto: Proto, port: u16| {
        rows.iter().any(|r| {
            r.listener.proto == proto && r.listener.port == port && !r.listener.loopback_only()
        })
    };
    let mut unused_rules = Vec::new();
    for rule in policy
        .ingress
        .iter()
        .filter(|r| r.action != RuleAction::Deny)
    {
        let mut ranges: Vec<PortRange> = Vec::new();
        let mut count = 0u32;
        for range in &rule.ports {
            for port in range.first..=range.last {
                if network_listening(rule.proto, port) {
                    continue;
                }
                count += 1;
                match ranges.last_mut() {
                    Some(last) if last.last.checked_add(1) == Some(port) => last.last = port,
                    _ => ranges.push(PortRange::single(port)),
                }
            }
        }
        if count > 0 {
            unused_rules.push(Unused {
                rule: rule.name.clone(),
                proto: rule.proto,
                ports: ranges.iter().map(ToString::to_string).collect(),
                count,
            });
        }
    }
    let mut unused_failsafe_ports = Vec::new();
    for range in &policy.failsafe_ports {
        for port in range.first..=range.last {
            if !network_listening(Proto::Tcp, port) {
                unused_failsafe_ports.push(port);
            }
        }
    }
    let unexpected_listeners = rows.iter().filter(|r| !r.expected).count();
    Report {
        mode: policy.mode.to_string(),
        listen_allowlist: policy.listen.is_some(),
        columns: cols.into_iter().map(|(c, _)| c).collect(),
        listeners: rows,
        unexpected_listeners,
        unused_rules,
        unused_failsafe_ports,
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::policy;

    fn policy(text: &str) -> Policy {
        policy::check("t.toml", text).expect("valid").policy
    }

    fn listener(proto: Proto, addr: &str, port: u16) -> Listener {
        Listener {
            proto,
            address: addr.parse::<IpAddr>().unwrap(),
            port,
            inode: u32::from(port),
            uid: 0,
            ifindex: 0,
            processes: Vec::new(),
        }
    }

    const ZONED: &str = r#"
version = 1
interfaces = ["eth0"]
default = "deny"
failsafe_ports = [22]
[zones]
internal = ["10.0.0.0/8"]
dmz = ["203.0.113.0/24"]
[[ingress]]
name = "web"
proto = "tcp"
ports = [443]
from = ["any"]
[[ingress]]
name = "admin"
proto = "tcp"
ports = [9443, "9000-9002"]
from = ["internal"]
[[ingress]]
name = "no-dmz-host"
proto = "tcp"
ports = [8080]
from = ["10.0.0.0/8"]
[[ingress]]
name = "block-one"
proto = "tcp"
ports = [8080]
from = ["10.1.2.3/32"]
action = "deny"
[listen]
allow = [22, 443, 9443, 8080]
"#;

    #[test]
    fn exposure_follows_most_specific_source_and_default() {
        let p = policy(ZONED);
        let cols = columns(&p);
        let names: Vec<&str> = cols.iter().map(|(c, _)| c.as_str()).collect();
        assert_eq!(names, ["dmz", "internal", OUTSIDE]);
        let row = |port| -> Vec<Reach> {
            cols.iter()
                .map(|(_, nets)| reach(&p, Proto::Tcp, port, nets))
                .collect()
        };
        assert_eq!(row(443), [Reach::Open, Reach::Open, Reach::Open]);
        assert_eq!(row(9443), [Reach::Closed, Reach::Open, Reach::Closed]);
        // A /32 deny inside the allowed /8: internal is only partly open.
        assert_eq!(row(8080), [Reach::Closed, Reach::Partial, Reach::Closed]);
        // Failsafe: open everywhere whatever the rules.
        assert_eq!(row(22), [Reach::Open, Reach::Open, Reach::Open]);
        // No rule: default deny.
        assert_eq!(row(5432), [Reach::Closed, Reach::Closed, Reach::Closed]);
        assert_eq!(
            reach(&p, Proto::Udp, 443, &universe()),
            Reach::Closed,
            "rules are per protocol"
        );
    }

    #[test]
    fn equal_specificity_deny_wins_and_narrower_allow_opens_a_hole() {
        let p = policy(
            r#"
version = 1
interfaces = ["eth0"]
default = "allow"
failsafe_ports = []
[[ingress]]
name = "a"
proto = "udp"
ports = [53]
from = ["192.0.2.0/24"]
[[ingress]]
name = "d"
proto = "udp"
ports = [53]
from = ["192.0.2.0/24"]
action = "deny"
[[ingress]]
name = "hole"
proto = "udp"
ports = [53]
from = ["192.0.2.7/32"]
"#,
        );
        let net = |s: &str| vec![s.parse::<IpNet>().unwrap()];
        assert_eq!(
            reach(&p, Proto::Udp, 53, &net("192.0.2.0/25")),
            Reach::Partial
        );
        assert_eq!(
            reach(&p, Proto::Udp, 53, &net("192.0.2.128/25")),
            Reach::Closed
        );
        assert_eq!(reach(&p, Proto::Udp, 53, &net("192.0.2.7/32")), Reach::Open);
        assert_eq!(
            reach(&p, Proto::Udp, 53, &net("198.51.100.0/24")),
            Reach::Open,
            "default allow"
        );
        assert_eq!(reach(&p, Proto::Udp, 53, &universe()), Reach::Partial);
    }

    #[test]
    fn complement_covers_exactly_what_the_set_does_not() {
        let set: Vec<IpNet> = ["10.0.0.0/8", "10.1.0.0/16", "192.168.0.0/16"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let rest = complement("0.0.0.0/0".parse().unwrap(), &set);
        let total: u64 = rest
            .iter()
            .chain(&set[..1])
            .chain(&set[2..])
            .map(|n| 1u64 << (32 - n.prefix_len()))
            .sum();
        assert_eq!(total, 1 << 32);
        assert!(
            rest.iter()
                .all(|r| !set.iter().any(|s| s.contains(r) || r.contains(s)))
        );
        assert!(complement("10.0.0.0/8".parse().unwrap(), &set).is_empty());
    }

    #[test]
    fn listeners_are_judged_against_listen_and_rules_report_unused_ports() {
        let p = policy(ZONED);
        let report = audit(
            &p,
            vec![
                listener(Proto::Tcp, "0.0.0.0", 22),
                listener(Proto::Tcp, "0.0.0.0", 443),
                listener(Proto::Tcp, "::", 9443),
                listener(Proto::Tcp, "0.0.0.0", 5432),
                listener(Proto::Tcp, "127.0.0.1", 6379),
                listener(Proto::Udp, "0.0.0.0", 5353),
            ],
        );
        let unexpected: Vec<(Proto, u16)> = report
            .violations()
            .map(|r| (r.listener.proto, r.listener.port))
            .collect();
        assert_eq!(
            unexpected,
            [(Proto::Tcp, 5432), (Proto::Tcp, 6379), (Proto::Udp, 5353)]
        );
        assert_eq!(report.unexpected_listeners, 3);
        let local = &report.listeners[4];
        assert!(local.exposure.values().all(|r| *r == Reach::Local));
        assert_eq!(report.listeners[2].exposure["internal"], Reach::Open);
        assert_eq!(report.listeners[2].exposure["dmz"], Reach::Closed);
        assert_eq!(
            report.unused_rules,
            [
                Unused {
                    rule: "admin".into(),
                    proto: Proto::Tcp,
                    ports: vec!["9000-9002".into()],
                    count: 3
                },
                Unused {
                    rule: "no-dmz-host".into(),
                    proto: Proto::Tcp,
                    ports: vec!["8080".into()],
                    count: 1
                },
            ]
        );
        assert!(report.unused_failsafe_ports.is_empty());
        let text = crate::cli::audit::render(&report, "t.toml");
        assert!(text.contains("violation: tcp 0.0.0.0:5432 is listening but not in [listen]"));
        assert!(text.contains("least privilege: rule `admin` allows tcp 9000-9002"));
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["listeners"][3]["expected"], false);
        assert_eq!(json["listeners"][3]["exposure"]["internal"], "closed");
        assert_eq!(json["listeners"][0]["proto"], "tcp");
    }

    #[test]
    fn without_listen_the_ingress_rules_are_the_measure() {
        let p = policy(
            r#"
version = 1
interfaces = ["eth0"]
default = "deny"
failsafe_ports = [22]
[[ingress]]
name = "web"
proto = "tcp"
ports = [443]
from = ["any"]
"#,
        );
        let report = audit(
            &p,
            vec![
                listener(Proto::Tcp, "0.0.0.0", 22),
                listener(Proto::Tcp, "0.0.0.0", 443),
                listener(Proto::Tcp, "0.0.0.0", 8080),
                listener(Proto::Tcp, "127.0.0.1", 8081),
            ],
        );
        let unexpected: Vec<u16> = report.violations().map(|r| r.listener.port).collect();
        assert_eq!(unexpected, [8080]);
        assert_eq!(report.columns, [ANYWHERE]);
        assert!(!report.listen_allowlist);
    }
}
