//! Step 2 of 3: raw policy to validated [`Policy`], collecting every error with its span.

use std::{collections::HashSet, ops::Range};

use ipnet::IpNet;
use toml::Spanned;

use super::{
    Diagnostic,
    addresses::{ZoneTable, peers, zones},
    lint::RuleSpans,
    model::{
        DefaultAction, EventLimits, FlowTimeouts, HealthPolicy, ICMP_ECHO_RULE, InterfaceSpec,
        ListenPolicy, Mode, PROTOCOL_NAMES, Policy, PortRange, Proto, ProtocolRule,
        RESERVED_RULE_NAMES, Rule, RuleAction,
    },
    raw::{RawEgress, RawIngress, RawPolicy, RawPort},
};

/// The interface token that resolves to the default-route interfaces at start.
pub const DEFAULT_ROUTE_INTERFACE: &str = "@default-route";
/// The source token matching every IPv4 and IPv6 address.
pub const ANY: &str = "any";
/// Failsafe ports when the policy does not name any.
pub const DEFAULT_FAILSAFE_PORTS: [u16; 1] = [22];

#[derive(Default)]
pub(super) struct Findings {
    pub(super) errors: Vec<Diagnostic>,
    pub(super) warnings: Vec<Diagnostic>,
}

impl Findings {
    pub(super) fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.errors.push(Diagnostic::new(span, message));
    }
    pub(super) fn warn(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.warnings.push(Diagnostic::new(span, message));
    }
}

/// The validated policy, its warnings and where its rules' names are (for the lint,
/// [`super::lint::RuleSpans::warnings`], run by the caller), or every error found.
pub fn validate(
    mut raw: RawPolicy<'_>,
) -> Result<(Policy, Vec<Diagnostic>, RuleSpans), Vec<Diagnostic>> {
    let mut f = Findings::default();

    if let Some(version) = &raw.version
        && *version.get_ref() != 1
    {
        f.error(
            version.span(),
            format!(
                "unsupported policy version {}; this guard reads version 1",
                version.get_ref()
            ),
        );
    }

    let mode = match &raw.mode {
        None => Mode::Enforce,
        Some(m) => match m.get_ref().as_str() {
            "enforce" => Mode::Enforce,
            "audit" => Mode::Audit,
            other => {
                f.error(
                    m.span(),
                    format!("unknown mode `{other}`; expected \"enforce\" or \"audit\""),
                );
                Mode::Enforce
            }
        },
    };

    let default_action = match &raw.default {
        None => DefaultAction::Deny,
        Some(d) => match d.get_ref().as_str() {
            "deny" => DefaultAction::Deny,
            "allow" => DefaultAction::Allow,
            other => {
                f.error(
                    d.span(),
                    format!("unknown default `{other}`; expected \"deny\" or \"allow\""),
                );
                DefaultAction::Deny
            }
        },
    };

    let interfaces = interfaces(&raw, &mut f);

    let failsafe_ports = match &raw.failsafe_ports {
        None => DEFAULT_FAILSAFE_PORTS
            .iter()
            .map(|&p| PortRange::single(p))
            .collect(),
        Some(list) => {
            if list.get_ref().is_empty() {
                f.warn(list.span(), "failsafe_ports = [] disables the anti-lockout ports: a wrong policy can cut off remote access");
            }
            ports(list.get_ref(), &mut f)
        }
    };

    let zones = zones(&raw, &mut f);

    // Rule names are unique across ingress and egress, and not guard's own: they name the
    // counters and metric series.
    let mut names = HashSet::new();
    let mut checked = |view: RawRuleView<'_>, f: &mut Findings| {
        let name = view.name.get_ref();
        if RESERVED_RULE_NAMES.contains(&name.as_str()) {
            f.error(
                view.name.span(),
                format!(
                    "rule name `{name}` is reserved for guard's own counters ({}); choose another",
                    RESERVED_RULE_NAMES.join(", ")
                ),
            );
        } else if !names.insert(name.clone()) {
            f.error(view.name.span(), format!("duplicate rule name `{name}`"));
        }
        rule(view, &zones, f)
    };
    let mut ingress: Vec<Rule> = Vec::new();
    let mut protocols: Vec<ProtocolRule> = Vec::new();
    // Each raw rule is dropped once checked, so the raw and the validated forms of a large
    // policy are not both whole in memory.
    // The rules of a large policy come a parsed piece at a time, and each raw rule is
    // dropped once checked: the raw and the validated forms are never both whole in memory.
    let mut more = std::mem::take(&mut raw.more_rules);
    let mut ingress_spans: Vec<Range<usize>> = Vec::new();
    for r in std::mem::take(&mut raw.ingress)
        .into_iter()
        .chain(more.by_ref().flatten())
    {
        // The lint's warnings point at a rule by its name: one span per rule of `ingress`.
        let span = r.get_ref().name.span();
        match checked(r.get_ref().into(), &mut f) {
            Some(CheckedRule::Ports(rule)) => {
                ingress_spans.push(span);
                ingress.push(rule);
            }
            Some(CheckedRule::Protocol(rule)) => protocols.push(rule),
            None => {}
        }
    }
    raw.egress.extend(more.egress());
    let (egress, egress_spans): (Vec<Rule>, Vec<Range<usize>>) = raw
        .egress
        .iter()
        .filter_map(|r| match checked(r.get_ref().into(), &mut f) {
            Some(CheckedRule::Ports(rule)) => Some((rule, r.get_ref().name.span())),
            _ => None,
        })
        .unzip();
    // `icmp_echo`: who may ping (ICMP and ICMPv6 echo requests); every other ICMP message
    // always passes.
    let echo_from: Option<(Vec<String>, Vec<IpNet>)> = match &raw.icmp_echo {
        None => Some((vec![ANY.to_owned()], vec![any_v4(), any_v6()])),
        Some(list) if list.get_ref().is_empty() => None,
        Some(list) => peers(list.get_ref(), ICMP_ECHO_RULE, &zones, &mut f),
    };
    if let Some((peers, nets)) = echo_from {
        protocols.push(ProtocolRule {
            name: ICMP_ECHO_RULE.to_owned(),
            protocols: vec![1, 58],
            peers,
            nets,
            action: RuleAction::Allow,
        });
    }

    let listen = raw.listen.as_ref().map(|l| {
        let raw_listen = l.get_ref();
        let list = |v: &Option<Spanned<Vec<Spanned<RawPort>>>>, f: &mut Findings| {
            v.as_ref()
                .map(|v| ports(v.get_ref(), f))
                .unwrap_or_default()
        };
        let both = list(&raw_listen.allow, &mut f);
        let mut tcp = list(&raw_listen.tcp, &mut f);
        let mut udp = list(&raw_listen.udp, &mut f);
        tcp.extend(&both);
        udp.extend(&both);
        if tcp.is_empty() && udp.is_empty() {
            f.warn(
                l.span(),
                "[listen] allows no port: every bind() to a fixed port in the cgroup will fail",
            );
        }
        ListenPolicy { tcp, udp }
    });
    let cgroup = raw.cgroup.as_ref().and_then(|c| {
        let path = std::path::Path::new(c.get_ref());
        if path.is_absolute() {
            Some(path.to_path_buf())
        } else {
            f.error(
                c.span(),
                format!(
                    "cgroup `{}` must be an absolute path to a cgroup v2 directory",
                    c.get_ref()
                ),
            );
            None
        }
    });

    let events = events(&raw, &mut f);
    let flows = flows(&raw, &mut f);
    let health = health(&raw, &mut f);
    let contexts = super::contexts::contexts(&raw, &mut f);

    if f.errors.is_empty() {
        let spans = RuleSpans {
            ingress: ingress_spans,
            egress: egress_spans,
        };
        let policy = Policy {
            mode,
            interfaces,
            default_action,
            failsafe_ports,
            zones: zones.into_iter().map(|(k, (_, v))| (k, v)).collect(),
            ingress,
            protocols,
            egress,
            cgroup,
            listen,
            events,
            flows,
            health,
            contexts,
        };
        Ok((policy, f.warnings, spans))
    } else {
        Err(f.errors)
    }
}

/// An integer setting within `min..=max`, or `default` when absent.
pub(super) fn bounded(
    value: Option<&Spanned<i64>>,
    what: &str,
    min: i64,
    max: i64,
    default: u32,
    f: &mut Findings,
) -> u32 {
    match value {
        None => default,
        Some(v) if (min..=max).contains(v.get_ref()) => *v.get_ref() as u32,
        Some(v) => {
            f.error(
                v.span(),
                format!(
                    "{what} must be between {min} and {max}, not {}",
                    v.get_ref()
                ),
            );
            default
        }
    }
}

fn events(raw: &RawPolicy, f: &mut Findings) -> EventLimits {
    let defaults = EventLimits::default();
    let Some(e) = &raw.events else {
        return defaults;
    };
    let e = e.get_ref();
    let rate_per_second = bounded(
        e.rate_per_second.as_ref(),
        "events.rate_per_second",
        0,
        1_000_000,
        defaults.rate_per_second,
        f,
    );
    let burst = bounded(
        e.burst.as_ref(),
        "events.burst",
        1,
        1_000_000,
        defaults.burst,
        f,
    );
    EventLimits {
        rate_per_second,
        burst,
    }
}

fn health(raw: &RawPolicy, f: &mut Findings) -> HealthPolicy {
    let defaults = HealthPolicy::default();
    let Some(h) = &raw.health else {
        return defaults;
    };
    let h = h.get_ref();
    let single = |list: &Option<Spanned<Vec<Spanned<RawPort>>>>, f: &mut Findings| {
        let Some(list) = list else {
            return Vec::new();
        };
        list.get_ref()
            .iter()
            .filter_map(|p| {
                let range = port(p, f)?;
                if range.first != range.last {
                    f.error(
                        p.span(),
                        format!("[health] port `{range}` must be a single port, not a range"),
                    );
                    return None;
                }
                Some(range.first)
            })
            .collect()
    };
    let tcp = single(&h.tcp, f);
    let udp = single(&h.udp, f);
    let service = h.service.as_ref().and_then(|s| {
        let name = s.get_ref();
        if name.is_empty() || name.len() > 15 || name.contains('/') {
            f.error(
                s.span(),
                format!(
                    "health.service `{name}` must be a process name as in /proc/PID/comm (1 to 15 characters, no `/`)"
                ),
            );
            None
        } else {
            Some(name.clone())
        }
    });
    let optional = |v: &Option<Spanned<i64>>, what: &str, f: &mut Findings| {
        v.as_ref()
            .map(|v| bounded(Some(v), what, 1, 1_000_000_000, 1, f))
    };
    let rtt_factor = h.rtt_factor.as_ref().and_then(|k| {
        let value = *k.get_ref();
        if value.is_finite() && (1.0..=1000.0).contains(&value) && value > 1.0 {
            Some(value)
        } else {
            f.error(
                k.span(),
                format!("health.rtt_factor must be above 1 and at most 1000, not {value}"),
            );
            None
        }
    });
    HealthPolicy {
        tcp,
        udp,
        service,
        interval_seconds: bounded(
            h.interval_seconds.as_ref(),
            "health.interval_seconds",
            1,
            3600,
            defaults.interval_seconds,
            f,
        ),
        rtt_factor,
        rtt_min_samples: bounded(
            h.rtt_min_samples.as_ref(),
            "health.rtt_min_samples",
            1,
            1_000_000,
            defaults.rtt_min_samples,
            f,
        ),
        rejected_per_second: optional(&h.rejected_per_second, "health.rejected_per_second", f),
        overflows_per_second: optional(&h.overflows_per_second, "health.overflows_per_second", f),
    }
}

fn flows(raw: &RawPolicy, f: &mut Findings) -> FlowTimeouts {
    let defaults = FlowTimeouts::default();
    let Some(fl) = &raw.flows else {
        return defaults;
    };
    let fl = fl.get_ref();
    // Replies must be allowed long enough for a slow answer, and not forever.
    let week = 7 * 24 * 3600;
    FlowTimeouts {
        tcp_timeout_seconds: bounded(
            fl.tcp_timeout_seconds.as_ref(),
            "flows.tcp_timeout_seconds",
            1,
            week,
            defaults.tcp_timeout_seconds,
            f,
        ),
        udp_timeout_seconds: bounded(
            fl.udp_timeout_seconds.as_ref(),
            "flows.udp_timeout_seconds",
            1,
            week,
            defaults.udp_timeout_seconds,
            f,
        ),
    }
}

fn interfaces(raw: &RawPolicy, f: &mut Findings) -> Vec<InterfaceSpec> {
    let Some(list) = &raw.interfaces else {
        f.error(0..0, "missing `interfaces`: name the interfaces to guard, e.g. interfaces = [\"eth0\"] or [\"@default-route\"]");
        return Vec::new();
    };
    if list.get_ref().is_empty() {
        f.error(
            list.span(),
            "`interfaces` is empty: name at least one interface to guard",
        );
    }
    let mut seen = HashSet::new();
    list.get_ref()
        .iter()
        .filter_map(|name| {
            let text = name.get_ref();
            if !seen.insert(text.clone()) {
                f.error(name.span(), format!("interface `{text}` is listed twice"));
                return None;
            }
            if text == DEFAULT_ROUTE_INTERFACE {
                return Some(InterfaceSpec::DefaultRoute);
            }
            match interface_name_problem(text) {
                Some(problem) => {
                    f.error(
                        name.span(),
                        format!("invalid interface name `{text}`: {problem}"),
                    );
                    None
                }
                None => Some(InterfaceSpec::Name(text.clone())),
            }
        })
        .collect()
}

/// Why `name` cannot be a Linux interface name, if it cannot.
pub fn interface_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("empty")
    } else if name.len() > 15 {
        Some("longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("reserved name")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        Some("contains '/', ':', white space or a control character")
    } else {
        None
    }
}

fn ports(list: &[Spanned<RawPort>], f: &mut Findings) -> Vec<PortRange> {
    list.iter().filter_map(|p| port(p, f)).collect()
}

/// One port or inclusive range, each end in 1..=65535, first <= last.
fn port(p: &Spanned<RawPort>, f: &mut Findings) -> Option<PortRange> {
    let span = p.span();
    let number = |n: i64, f: &mut Findings| -> Option<u16> {
        match u16::try_from(n) {
            Ok(port) if port != 0 => Some(port),
            _ => {
                f.error(
                    span.clone(),
                    format!("port {n} is out of range: ports are 1-65535"),
                );
                None
            }
        }
    };
    let text_number = |s: &str, f: &mut Findings| -> Option<u16> {
        match s.trim().parse::<i64>() {
            Ok(n) => number(n, f),
            Err(_) => {
                f.error(
                    span.clone(),
                    format!("invalid port `{s}`: expected a number or a range like \"9999-10000\""),
                );
                None
            }
        }
    };
    match p.get_ref() {
        RawPort::Number(n) => number(*n, f).map(PortRange::single),
        RawPort::Text(s) => match s.split_once('-') {
            None => text_number(s, f).map(PortRange::single),
            Some((a, b)) => {
                let (first, last) = (text_number(a, f)?, text_number(b, f)?);
                if first > last {
                    f.error(
                        span,
                        format!("reversed port range `{s}`: write it as \"{last}-{first}\""),
                    );
                    return None;
                }
                Some(PortRange { first, last })
            }
        },
    }
}

/// The fields of an ingress or egress rule as written; `peer_key` is `from` or `to`.
struct RawRuleView<'a> {
    name: &'a Spanned<String>,
    proto: &'a Spanned<String>,
    ports: Option<&'a Spanned<Vec<Spanned<RawPort>>>>,
    peers: Option<&'a Spanned<Vec<Spanned<String>>>>,
    peer_key: &'static str,
    action: Option<&'a Spanned<String>>,
}

impl<'a> From<&'a RawIngress> for RawRuleView<'a> {
    fn from(r: &'a RawIngress) -> Self {
        Self {
            name: &r.name,
            proto: &r.proto,
            ports: r.ports.as_ref(),
            peers: r.from.as_ref(),
            peer_key: "from",
            action: r.action.as_ref(),
        }
    }
}

impl<'a> From<&'a RawEgress> for RawRuleView<'a> {
    fn from(r: &'a RawEgress) -> Self {
        Self {
            name: &r.name,
            proto: &r.proto,
            ports: Some(&r.ports),
            peers: r.to.as_ref(),
            peer_key: "to",
            action: r.action.as_ref(),
        }
    }
}

/// A validated rule: by port (TCP, UDP) or for a whole protocol (ingress only).
enum CheckedRule {
    Ports(Rule),
    Protocol(ProtocolRule),
}

/// What a rule's `proto` names.
enum RuleProto {
    Ports(Proto),
    Whole(u8),
}

/// `proto`: `tcp`, `udp` (UDP-Lite too), a protocol name of [`PROTOCOL_NAMES`] or a number
/// 0-255. Egress rules judge TCP and UDP only (the connect and sendmsg hooks see no other).
fn rule_proto(proto: &Spanned<String>, egress: bool, f: &mut Findings) -> Option<RuleProto> {
    let text = proto.get_ref().trim().to_ascii_lowercase();
    let number = text.parse::<u8>().ok();
    let parsed = match (text.as_str(), number) {
        ("tcp", _) | (_, Some(6)) => RuleProto::Ports(Proto::Tcp),
        ("udp", _) | (_, Some(17)) => RuleProto::Ports(Proto::Udp),
        ("udplite" | "udp-lite", _) | (_, Some(136)) => {
            f.error(
                proto.span(),
                "UDP-Lite is judged as UDP: write proto = \"udp\" (the rule then covers both)",
            );
            return None;
        }
        (_, Some(n)) => RuleProto::Whole(n),
        (name, None) => match PROTOCOL_NAMES.iter().find(|(n, _)| *n == name) {
            Some(&(_, n)) => RuleProto::Whole(n),
            None => {
                f.error(
                    proto.span(),
                    format!(
                        "unknown proto `{}`; expected \"tcp\", \"udp\", an IP protocol name ({}) or number (\"0\" to \"255\")",
                        proto.get_ref(),
                        PROTOCOL_NAMES.map(|(n, _)| n).join(", ")
                    ),
                );
                return None;
            }
        },
    };
    if egress && let RuleProto::Whole(_) = parsed {
        f.error(
            proto.span(),
            format!(
                "egress rules judge \"tcp\" and \"udp\" only (the connect and sendmsg hooks see no other protocol), not `{}`",
                proto.get_ref()
            ),
        );
        return None;
    }
    Some(parsed)
}

fn rule(r: RawRuleView<'_>, zones: &ZoneTable, f: &mut Findings) -> Option<CheckedRule> {
    let errors_before = f.errors.len();
    let name = r.name.get_ref().clone();
    if name.trim().is_empty() {
        f.error(r.name.span(), "rule name is empty");
    }
    let proto = rule_proto(r.proto, r.peer_key == "to", f);
    let action = match r.action.as_ref().map(|a| (a.span(), a.get_ref().as_str())) {
        None | Some((_, "allow")) => RuleAction::Allow,
        Some((_, "deny")) => RuleAction::Deny,
        Some((_, "audit")) => RuleAction::Audit,
        Some((span, other)) => {
            f.error(
                span,
                format!("unknown action `{other}`; expected \"allow\", \"deny\" or \"audit\""),
            );
            RuleAction::Allow
        }
    };
    let ports = match (&proto, r.ports) {
        (Some(RuleProto::Ports(_)), None) => {
            f.error(r.name.span(), format!("rule `{name}` has no ports"));
            Vec::new()
        }
        (Some(RuleProto::Ports(_)), Some(list)) => {
            if list.get_ref().is_empty() {
                f.error(list.span(), format!("rule `{name}` has no ports"));
            }
            ports(list.get_ref(), f)
        }
        (Some(RuleProto::Whole(_)), Some(list)) => {
            f.error(
                list.span(),
                format!(
                    "rule `{name}`: `{}` is judged as a whole protocol (only tcp and udp have ports here); remove `ports`",
                    r.proto.get_ref()
                ),
            );
            Vec::new()
        }
        // An unknown proto: still report the ports' own errors.
        (None, Some(list)) => ports(list.get_ref(), f),
        (_, None) => Vec::new(),
    };

    let peer_key = r.peer_key;
    let resolved = match r.peers {
        None => Some((vec![ANY.to_owned()], vec![any_v4(), any_v6()])),
        Some(list) => {
            if list.get_ref().is_empty() {
                f.error(
                    list.span(),
                    format!(
                        "rule `{name}` has an empty `{peer_key}`: name zones, CIDRs or \"any\""
                    ),
                );
            }
            peers(list.get_ref(), &name, zones, f)
        }
    };

    if f.errors.len() != errors_before {
        return None;
    }
    let (peers, nets) = resolved?;
    Some(match proto? {
        RuleProto::Ports(proto) => CheckedRule::Ports(Rule {
            name,
            proto,
            ports,
            peers,
            nets,
            action,
        }),
        RuleProto::Whole(number) => CheckedRule::Protocol(ProtocolRule {
            name,
            protocols: vec![number],
            peers,
            nets,
            action,
        }),
    })
}

pub(super) fn any_v4() -> IpNet {
    "0.0.0.0/0".parse().expect("valid CIDR")
}

pub(super) fn any_v6() -> IpNet {
    "::/0".parse().expect("valid CIDR")
}
