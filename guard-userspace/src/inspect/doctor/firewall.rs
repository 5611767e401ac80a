//! `firewall`: nftables and iptables rules beside guard, and rules that drop ports the
//! policy allows (a packet must pass both layers).

use super::*;

/// A rule of another firewall layer that drops or rejects inbound traffic to some ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirewallDrop {
    /// Where it is, e.g. `nftables inet filter input` or `iptables filter INPUT`.
    pub place: String,
    pub proto: Proto,
    pub ports: PortRange,
}

/// What one firewall layer holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layer {
    pub rules: usize,
    pub drops: Vec<FirewallDrop>,
    /// Inbound base chains whose policy is drop.
    pub dropping_chains: Vec<String>,
}

pub(super) fn protos(name: &str) -> Vec<Proto> {
    match name {
        "tcp" => vec![Proto::Tcp],
        "udp" => vec![Proto::Udp],
        "th" => vec![Proto::Tcp, Proto::Udp],
        _ => Vec::new(),
    }
}

pub(super) fn nft_ports(v: &Value) -> Vec<PortRange> {
    let port = |v: &Value| v.as_u64().and_then(|p| u16::try_from(p).ok());
    if let Some(p) = port(v) {
        return vec![PortRange::single(p)];
    }
    if let Some([a, b]) = v["range"].as_array().map(Vec::as_slice)
        && let (Some(a), Some(b)) = (port(a), port(b))
    {
        return vec![PortRange { first: a, last: b }];
    }
    if let Some(set) = v["set"].as_array() {
        return set.iter().flat_map(nft_ports).collect();
    }
    Vec::new()
}

/// Parses `nft -j list ruleset`: rules of inbound base chains (hook `input` or `prerouting`)
/// that match a TCP/UDP destination port and drop or reject.
pub fn parse_nft(json: &str) -> Result<Layer, String> {
    let v: Value = serde_json::from_str(json).map_err(|e| format!("nft -j output: {e}"))?;
    let items = v["nftables"]
        .as_array()
        .ok_or("nft -j output: no `nftables` array")?;
    let mut inbound = BTreeSet::new();
    let mut layer = Layer::default();
    for item in items {
        let c = &item["chain"];
        if c.is_object() && matches!(c["hook"].as_str(), Some("input" | "prerouting")) {
            let id = format!(
                "{} {} {}",
                c["family"].as_str().unwrap_or("?"),
                c["table"].as_str().unwrap_or("?"),
                c["name"].as_str().unwrap_or("?")
            );
            if c["policy"] == "drop" {
                layer.dropping_chains.push(format!("nftables {id}"));
            }
            inbound.insert(id);
        }
    }
    for item in items {
        let r = &item["rule"];
        if !r.is_object() {
            continue;
        }
        layer.rules += 1;
        let id = format!(
            "{} {} {}",
            r["family"].as_str().unwrap_or("?"),
            r["table"].as_str().unwrap_or("?"),
            r["chain"].as_str().unwrap_or("?")
        );
        let Some(expr) = r["expr"].as_array() else {
            continue;
        };
        let drops = expr
            .iter()
            .any(|e| e.get("drop").is_some() || e.get("reject").is_some());
        if !inbound.contains(&id) || !drops {
            continue;
        }
        for e in expr {
            let m = &e["match"];
            let payload = &m["left"]["payload"];
            if m["op"] != "==" || payload["field"] != "dport" {
                continue;
            }
            for proto in protos(payload["protocol"].as_str().unwrap_or("")) {
                for ports in nft_ports(&m["right"]) {
                    layer.drops.push(FirewallDrop {
                        place: format!("nftables {id}"),
                        proto,
                        ports,
                    });
                }
            }
        }
    }
    Ok(layer)
}

/// Parses `iptables-save` (or `ip6tables-save`) output: rules of INPUT and PREROUTING that
/// match `-p tcp|udp` with `--dport`/`--dports` and jump to DROP or REJECT.
pub fn parse_iptables_save(text: &str, tool: &str) -> Layer {
    let mut layer = Layer::default();
    let mut table = "";
    for line in text.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t.trim();
            continue;
        }
        if let Some(chain) = line.strip_prefix(':') {
            let f: Vec<&str> = chain.split_whitespace().collect();
            if f.len() >= 2 && matches!(f[0], "INPUT" | "PREROUTING") && f[1] == "DROP" {
                layer
                    .dropping_chains
                    .push(format!("{tool} {table} {}", f[0]));
            }
            continue;
        }
        let Some(rule) = line.strip_prefix("-A ") else {
            continue;
        };
        layer.rules += 1;
        let f: Vec<&str> = rule.split_whitespace().collect();
        let chain = f.first().copied().unwrap_or("");
        let arg = |flag: &str| f.iter().position(|t| *t == flag).and_then(|i| f.get(i + 1));
        if !matches!(chain, "INPUT" | "PREROUTING")
            || !matches!(arg("-j").copied(), Some("DROP" | "REJECT"))
        {
            continue;
        }
        let proto = match arg("-p").copied() {
            Some("tcp") => Proto::Tcp,
            Some("udp") => Proto::Udp,
            _ => continue,
        };
        let spec = arg("--dport")
            .or_else(|| arg("--dports"))
            .copied()
            .unwrap_or("");
        for part in spec.split(',').filter(|p| !p.is_empty()) {
            let (a, b) = part.split_once(':').unwrap_or((part, part));
            if let (Ok(first), Ok(last)) = (a.parse(), b.parse()) {
                layer.drops.push(FirewallDrop {
                    place: format!("{tool} {table} {chain}"),
                    proto,
                    ports: PortRange { first, last },
                });
            }
        }
    }
    layer
}

/// A port of `range` the policy admits from somewhere, with the rule that admits it.
pub(super) fn allowed_in(policy: &Policy, proto: Proto, range: PortRange) -> Option<(u16, String)> {
    let everywhere = [
        IpNet::V4(ipnet::Ipv4Net::default()),
        IpNet::V6(ipnet::Ipv6Net::default()),
    ];
    let candidates = policy
        .ingress
        .iter()
        .filter(|r| r.proto == proto && r.action != RuleAction::Deny)
        .flat_map(|r| r.ports.iter().map(move |p| (*p, r.name.clone())))
        .chain(
            (proto == Proto::Tcp)
                .then(|| {
                    policy
                        .failsafe_ports
                        .iter()
                        .map(|p| (*p, "failsafe_ports".to_owned()))
                })
                .into_iter()
                .flatten(),
        );
    for (p, name) in candidates {
        let (first, last) = (p.first.max(range.first), p.last.min(range.last));
        if first > last {
            continue;
        }
        if let Some(port) = (first..=last)
            .take(64)
            .find(|&port| eval::reach(policy, proto, port, &everywhere) != Reach::Closed)
        {
            return Some((port, name));
        }
    }
    None
}

/// Judges the other firewall layers: each is `None` when its tool is missing, `Some(Err)`
/// when it could not be read.
pub fn check_firewall(
    layers: &[(&'static str, Option<Result<Layer, String>>)],
    policy: Option<&Policy>,
) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for (name, layer) in layers {
        let layer = match layer {
            None => {
                out.push(finding(
                    "firewall",
                    Severity::Info,
                    format!("{name} is not installed: its rules were not checked"),
                    "",
                ));
                continue;
            }
            Some(Err(e)) => {
                out.push(finding(
                    "firewall",
                    Severity::Warning,
                    format!("{name}: cannot read the rules: {e}"),
                    "run guard doctor as root",
                ));
                continue;
            }
            Some(Ok(layer)) => layer,
        };
        if layer.rules == 0 {
            out.push(finding(
                "firewall",
                Severity::Ok,
                format!("no {name} rules"),
                "",
            ));
            continue;
        }
        out.push(finding(
            "firewall",
            Severity::Info,
            format!(
                "{name} has {} rules: a packet guard passes must pass them too",
                layer.rules
            ),
            "keep one source of truth for inbound ports, or keep both in step",
        ));
        for chain in &layer.dropping_chains {
            out.push(finding(
                "firewall",
                Severity::Warning,
                format!("{chain} drops by default"),
                "every port the policy allows also needs an accept rule in this chain",
            ));
        }
        let Some(policy) = policy else { continue };
        for d in &layer.drops {
            // iptables-nft rules show in both listings: report each port range once.
            if !seen.insert((d.proto, d.ports)) {
                continue;
            }
            if let Some((port, rule)) = allowed_in(policy, d.proto, d.ports) {
                out.push(finding(
                    "firewall",
                    Severity::Error,
                    format!(
                        "{} drops {} {}, which the policy allows ({}/{port} by `{rule}`)",
                        d.place, d.proto, d.ports, d.proto
                    ),
                    "the layers contradict each other: remove the drop rule, or close the port in the policy",
                ));
            }
        }
    }
    out
}
