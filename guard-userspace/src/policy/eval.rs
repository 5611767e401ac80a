//! The reference semantics of a policy: which rule decides a flow, and so whether it
//! passes. The kernel programs implement exactly this with maps built by [`super::lower`];
//! the audit, the probe and the doctor judge by it, and the tests' oracles are it.
//!
//! One flow, one address ([`inbound`], [`inbound_protocol`], [`outbound`]):
//! - inbound TCP to a failsafe port: the failsafe rule, allow;
//! - else among the rules naming the flow's protocol and port (or, for protocols judged as a
//!   whole, the protocol), the one with the most specific network containing the peer; at
//!   equal prefix length the stronger action (deny, then audit, then allow), then the earlier
//!   rule in the file;
//! - else the default: the policy's `default` inbound, allow outbound (`egress-default`).
//!
//! An IPv4-mapped IPv6 peer (`::ffff:a.b.c.d`) is judged as the IPv4 address, as the kernel
//! does. A set of addresses ([`reach`]) is open, partly open or closed to a port by the same
//! rules, worked out on prefixes rather than address by address.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;

use super::model::{DefaultAction, Policy, Proto, RuleAction};

/// Who decided a flow: the name its packets are counted under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decider {
    /// A failsafe port (`failsafe`).
    Failsafe,
    /// The policy's `default` (`default`), inbound.
    Default,
    /// No `[[egress]]` rule named the destination (`egress-default`).
    EgressDefault,
    /// A rule: its name and its position among the rules of its kind (`[[ingress]]` port
    /// rules, protocol rules, or `[[egress]]` rules).
    Rule { name: String, index: usize },
}

impl Decider {
    /// The name the decision is counted under (`guard stats`, metrics).
    pub fn name(&self) -> &str {
        match self {
            Decider::Failsafe => "failsafe",
            Decider::Default => "default",
            Decider::EgressDefault => "egress-default",
            Decider::Rule { name, .. } => name,
        }
    }
}

/// A flow's decision: who decided, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub decider: Decider,
    pub action: RuleAction,
}

impl Decision {
    /// True when the flow passes in enforce mode (allow, or an audit rule's report-only
    /// deny).
    pub fn passes(&self) -> bool {
        self.action != RuleAction::Deny
    }
}

/// `addr` as the kernel judges it: an IPv4-mapped IPv6 address is the IPv4 address.
pub fn canonical(addr: IpAddr) -> IpAddr {
    addr.to_canonical()
}

/// Among `rules` (action and networks, in file order), the index and action of the one
/// whose most specific network contains `addr`; at equal prefix length the stronger action,
/// then the earlier rule.
pub fn best_rule<'a>(
    rules: impl IntoIterator<Item = (RuleAction, &'a [IpNet])>,
    addr: IpAddr,
) -> Option<(usize, RuleAction)> {
    let addr = canonical(addr);
    // (prefix length, action, earlier first): the greatest wins.
    let mut best: Option<(u8, RuleAction, std::cmp::Reverse<usize>)> = None;
    for (i, (action, nets)) in rules.into_iter().enumerate() {
        for net in nets.iter().filter(|n| n.contains(&addr)) {
            let candidate = (net.prefix_len(), action, std::cmp::Reverse(i));
            if best.is_none_or(|b| candidate > b) {
                best = Some(candidate);
            }
        }
    }
    best.map(|(_, action, std::cmp::Reverse(i))| (i, action))
}

fn default_action(policy: &Policy) -> RuleAction {
    match policy.default_action {
        DefaultAction::Allow => RuleAction::Allow,
        DefaultAction::Deny => RuleAction::Deny,
    }
}

/// The decision among `naming` (each rule's index among its kind, name, action and
/// networks, in file order) for `addr`, else `otherwise`.
fn decide<'a>(
    naming: impl IntoIterator<Item = (usize, &'a str, RuleAction, &'a [IpNet])>,
    addr: IpAddr,
    otherwise: Decision,
) -> Decision {
    let naming: Vec<_> = naming.into_iter().collect();
    match best_rule(
        naming.iter().map(|&(_, _, action, nets)| (action, nets)),
        addr,
    ) {
        Some((i, action)) => Decision {
            decider: Decider::Rule {
                name: naming[i].1.to_owned(),
                index: naming[i].0,
            },
            action,
        },
        None => otherwise,
    }
}

/// The rules of `rules` naming `proto`/`port`, as [`decide`] takes them.
fn port_rules(
    rules: &[super::model::Rule],
    proto: Proto,
    port: u16,
) -> impl Iterator<Item = (usize, &str, RuleAction, &[IpNet])> {
    rules
        .iter()
        .enumerate()
        .filter(move |(_, r)| r.proto == proto && r.ports.iter().any(|p| p.contains(port)))
        .map(|(i, r)| (i, r.name.as_str(), r.action, r.nets.as_slice()))
}

/// The decision for an inbound `proto` packet to `port` from `src`.
pub fn inbound(policy: &Policy, proto: Proto, port: u16, src: IpAddr) -> Decision {
    if is_failsafe(policy, proto, port) {
        return Decision {
            decider: Decider::Failsafe,
            action: RuleAction::Allow,
        };
    }
    let otherwise = Decision {
        decider: Decider::Default,
        action: default_action(policy),
    };
    decide(port_rules(&policy.ingress, proto, port), src, otherwise)
}

/// The decision for an inbound packet of an IP protocol judged as a whole (not TCP, UDP or
/// UDP-Lite; for ICMP and ICMPv6, an echo request) from `src`.
pub fn inbound_protocol(policy: &Policy, ip_proto: u8, src: IpAddr) -> Decision {
    let naming = policy
        .protocols
        .iter()
        .enumerate()
        .filter(|(_, r)| r.protocols.contains(&ip_proto))
        .map(|(i, r)| (i, r.name.as_str(), r.action, r.nets.as_slice()));
    let otherwise = Decision {
        decider: Decider::Default,
        action: default_action(policy),
    };
    decide(naming, src, otherwise)
}

/// The decision for an outbound `proto` connection (or datagram) to `port` at `dst`.
pub fn outbound(policy: &Policy, proto: Proto, port: u16, dst: IpAddr) -> Decision {
    let otherwise = Decision {
        decider: Decider::EgressDefault,
        action: RuleAction::Allow,
    };
    decide(port_rules(&policy.egress, proto, port), dst, otherwise)
}

/// How much of a zone can reach a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Reach {
    /// Every address of the zone.
    Open,
    /// Some addresses of the zone, not all.
    Partial,
    /// No address of the zone.
    Closed,
    /// The socket is bound to a loopback address: no zone reaches it over the network.
    Local,
}

impl Reach {
    pub fn as_str(self) -> &'static str {
        match self {
            Reach::Open => "open",
            Reach::Partial => "partial",
            Reach::Closed => "closed",
            Reach::Local => "local",
        }
    }
}

/// The two halves of `net` (none for a single address).
pub fn halves(net: IpNet) -> Vec<IpNet> {
    net.subnets(net.prefix_len() + 1)
        .map(|s| s.collect())
        .unwrap_or_default()
}

/// The ingress sources that decide `proto`/`port`: each rule covering it, as (network,
/// action).
fn deciding(policy: &Policy, proto: Proto, port: u16) -> Vec<(IpNet, RuleAction)> {
    policy
        .ingress
        .iter()
        .filter(|r| r.proto == proto && r.ports.iter().any(|p| p.contains(port)))
        .flat_map(|r| r.nets.iter().map(move |&n| (n, r.action)))
        .collect()
}

/// True when `proto`/`port` is a failsafe port: it always passes (anti-lockout).
pub fn is_failsafe(policy: &Policy, proto: Proto, port: u16) -> bool {
    proto == Proto::Tcp && policy.failsafe_ports.iter().any(|p| p.contains(port))
}

/// Which addresses of `nets` the policy (as enforced) lets reach `proto`/`port`.
pub fn reach(policy: &Policy, proto: Proto, port: u16, nets: &[IpNet]) -> Reach {
    if is_failsafe(policy, proto, port) {
        return Reach::Open;
    }
    let rules = deciding(policy, proto, port);
    let default_pass = policy.default_action == DefaultAction::Allow;
    let (mut pass, mut block) = (false, false);
    for &net in nets {
        // The most specific rule at least as wide as `net` decides wherever no narrower
        // rule inside `net` does.
        let best = rules
            .iter()
            .filter(|(n, _)| n.contains(&net) && n.prefix_len() < net.prefix_len())
            .map(|&(n, a)| (n.prefix_len(), a))
            .max();
        let inside: Vec<(IpNet, RuleAction)> = rules
            .iter()
            .copied()
            .filter(|(n, _)| net.contains(n))
            .collect();
        let (p, b) = reach_in(net, best, &inside, default_pass);
        pass |= p;
        block |= b;
    }
    match (pass, block) {
        (true, false) => Reach::Open,
        (true, true) => Reach::Partial,
        _ => Reach::Closed,
    }
}

/// (some address of `net` passes, some is blocked), given the best rule covering all of
/// `net` and the rules inside it.
fn reach_in(
    net: IpNet,
    best: Option<(u8, RuleAction)>,
    inside: &[(IpNet, RuleAction)],
    default_pass: bool,
) -> (bool, bool) {
    let best = inside
        .iter()
        .filter(|(n, _)| n.prefix_len() == net.prefix_len())
        .map(|&(n, a)| (n.prefix_len(), a))
        .chain(best)
        .max();
    let narrower: Vec<(IpNet, RuleAction)> = inside
        .iter()
        .copied()
        .filter(|(n, _)| n.prefix_len() > net.prefix_len())
        .collect();
    if narrower.is_empty() {
        let pass = best.map_or(default_pass, |(_, a)| a != RuleAction::Deny);
        return (pass, !pass);
    }
    let (mut pass, mut block) = (false, false);
    for half in halves(net) {
        let within: Vec<_> = narrower
            .iter()
            .copied()
            .filter(|(n, _)| half.contains(n))
            .collect();
        let (p, b) = reach_in(half, best, &within, default_pass);
        pass |= p;
        block |= b;
        if pass && block {
            break;
        }
    }
    (pass, block)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy;

    fn policy(text: &str) -> Policy {
        policy::check("t.toml", text).expect("valid").policy
    }

    const TEXT: &str = r#"
interfaces = ["eth0"]
default = "deny"
failsafe_ports = [22]
[[ingress]]
name = "wide"
proto = "tcp"
ports = [443]
from = ["10.0.0.0/8"]
[[ingress]]
name = "narrow-deny"
proto = "tcp"
ports = [443]
from = ["10.1.0.0/16"]
action = "deny"
[[ingress]]
name = "narrow-allow"
proto = "tcp"
ports = [443]
from = ["10.1.0.0/16"]
[[ingress]]
name = "gre"
proto = "gre"
from = ["192.0.2.0/24"]
[[egress]]
name = "no-smtp"
proto = "tcp"
ports = [25]
to = ["any"]
action = "deny"
"#;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_most_specific_network_decides_and_deny_wins_a_tie() {
        let p = policy(TEXT);
        let d = inbound(&p, Proto::Tcp, 443, ip("10.2.0.1"));
        assert_eq!((d.decider.name(), d.action), ("wide", RuleAction::Allow));
        let d = inbound(&p, Proto::Tcp, 443, ip("10.1.2.3"));
        assert_eq!(
            (d.decider.name(), d.action),
            ("narrow-deny", RuleAction::Deny)
        );
        assert_eq!(
            d.decider,
            Decider::Rule {
                name: "narrow-deny".into(),
                index: 1
            }
        );
        assert!(!d.passes());
        let d = inbound(&p, Proto::Tcp, 443, ip("192.0.2.1"));
        assert_eq!((d.decider, d.action), (Decider::Default, RuleAction::Deny));
        let d = inbound(&p, Proto::Udp, 443, ip("10.2.0.1"));
        assert_eq!(d.decider, Decider::Default, "rules are per protocol");
    }

    #[test]
    fn failsafe_mapped_addresses_protocols_and_egress() {
        let p = policy(TEXT);
        assert_eq!(
            inbound(&p, Proto::Tcp, 22, ip("203.0.113.1")).decider,
            Decider::Failsafe
        );
        assert_eq!(
            inbound(&p, Proto::Udp, 22, ip("203.0.113.1")).decider,
            Decider::Default,
            "failsafe ports are TCP"
        );
        let mapped = inbound(&p, Proto::Tcp, 443, ip("::ffff:10.2.0.1"));
        assert_eq!(mapped.decider.name(), "wide", "judged as the IPv4 address");
        let gre = inbound_protocol(&p, 47, ip("192.0.2.9"));
        assert_eq!((gre.decider.name(), gre.action), ("gre", RuleAction::Allow));
        assert_eq!(
            inbound_protocol(&p, 47, ip("198.51.100.1")).decider,
            Decider::Default
        );
        let smtp = outbound(&p, Proto::Tcp, 25, ip("198.51.100.1"));
        assert_eq!(
            (smtp.decider.name(), smtp.action),
            ("no-smtp", RuleAction::Deny)
        );
        let web = outbound(&p, Proto::Tcp, 443, ip("198.51.100.1"));
        assert_eq!(
            (web.decider, web.action),
            (Decider::EgressDefault, RuleAction::Allow)
        );
    }

    #[test]
    fn one_address_reaches_a_port_exactly_when_its_decision_passes() {
        let p = policy(TEXT);
        for addr in ["10.2.0.1", "10.1.2.3", "192.0.2.1", "::1"] {
            for port in [22, 443, 80] {
                let one = [IpNet::from(ip(addr))];
                assert_eq!(
                    reach(&p, Proto::Tcp, port, &one) == Reach::Open,
                    inbound(&p, Proto::Tcp, port, ip(addr)).passes(),
                    "{addr} port {port}"
                );
            }
        }
    }
}
