//! Step 2's output: a validated policy. Every value here has been checked; the kernel-facing
//! form is made from it by `lower`.

use std::{collections::BTreeMap, fmt};

use ipnet::IpNet;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Drop what the policy denies.
    Enforce,
    /// Drop nothing; count and report what would be dropped.
    Audit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultAction {
    Allow,
    Deny,
}

pub use guard_common::Proto;

/// What a rule asks for. At equal source specificity `Deny` beats `Audit` beats `Allow`.
/// Named `allow`, `audit` and `deny` in policies, JSON and metrics.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum RuleAction {
    Allow,
    /// Deny in report-only form: matched packets pass and are counted as "would drop".
    Audit,
    Deny,
}

/// An inclusive port range; a single port has `first == last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub const fn single(port: u16) -> Self {
        Self {
            first: port,
            last: port,
        }
    }
    pub const fn contains(&self, port: u16) -> bool {
        self.first <= port && port <= self.last
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InterfaceSpec {
    /// A named interface, e.g. `eth0`.
    Name(String),
    /// `"@default-route"`: the interfaces that carry a default route when the daemon starts.
    DefaultRoute,
}

/// An `[[ingress]]` rule (peers = sources, `from`) or `[[egress]]` rule (peers =
/// destinations, `to`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    pub proto: Proto,
    pub ports: Vec<PortRange>,
    /// The `from`/`to` entries as written (zone names, `any`, CIDRs), for display.
    pub peers: Vec<String>,
    /// The networks they resolve to, normalised and de-duplicated.
    pub nets: Vec<IpNet>,
    pub action: RuleAction,
}

/// An `[[ingress]]` rule for a protocol judged as a whole (no ports): every IP protocol but
/// TCP, UDP and UDP-Lite. For ICMP and ICMPv6 it judges echo requests only (other ICMP
/// messages always pass).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolRule {
    pub name: String,
    /// IP protocol numbers.
    pub protocols: Vec<u8>,
    /// The `from` entries as written.
    pub peers: Vec<String>,
    pub nets: Vec<IpNet>,
    pub action: RuleAction,
}

/// Names guard gives its own counters: the policy default, the failsafe ports, replies to
/// the host's own flows, the egress default, and the rule `icmp_echo` stands for. A policy
/// rule may not take one (its counters and metric series would be confused with them).
pub const RESERVED_RULE_NAMES: [&str; 5] = [
    "default",
    "failsafe",
    "reply",
    "egress-default",
    ICMP_ECHO_RULE,
];
/// The rule `icmp_echo = [...]` stands for.
pub const ICMP_ECHO_RULE: &str = "icmp-echo";

/// IP protocols a policy names, by name (`/etc/protocols` spelling) and number.
pub const PROTOCOL_NAMES: [(&str, u8); 16] = [
    ("icmp", 1),
    ("igmp", 2),
    ("ipip", 4),
    ("ipv6", 41),
    ("gre", 47),
    ("esp", 50),
    ("ah", 51),
    ("icmpv6", 58),
    ("eigrp", 88),
    ("ospf", 89),
    ("pim", 103),
    ("vrrp", 112),
    ("l2tp", 115),
    ("sctp", 132),
    ("dccp", 33),
    ("mpls-in-ip", 137),
];

/// The name of an IP protocol number, or the number itself.
pub fn protocol_name(number: u8) -> String {
    match number {
        6 => "tcp".into(),
        17 => "udp".into(),
        136 => "udplite".into(),
        n => PROTOCOL_NAMES
            .iter()
            .find(|(_, p)| *p == n)
            .map_or_else(|| n.to_string(), |(name, _)| (*name).to_owned()),
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub mode: Mode,
    pub interfaces: Vec<InterfaceSpec>,
    pub default_action: DefaultAction,
    /// TCP ports that always pass (anti-lockout).
    pub failsafe_ports: Vec<PortRange>,
    pub zones: BTreeMap<String, Vec<IpNet>>,
    pub ingress: Vec<Rule>,
    /// `[[ingress]]` rules for protocols without ports, and the `icmp-echo` rule that
    /// `icmp_echo` stands for.
    pub protocols: Vec<ProtocolRule>,
    /// `[[egress]]`: judged at `connect()` and UDP `sendmsg()`; no match means allowed.
    pub egress: Vec<Rule>,
    /// The cgroup v2 directory the cgroup programs attach to (`None`: the cgroup2 root).
    pub cgroup: Option<std::path::PathBuf>,
    /// `[listen]`: the ports processes in the cgroup may `bind()`; `None` when absent (no
    /// bind is denied).
    pub listen: Option<ListenPolicy>,
    pub events: EventLimits,
    pub flows: FlowTimeouts,
    pub health: HealthPolicy,
    /// `[contexts]`; `None` when absent (the probe then uses the defaults).
    pub contexts: Option<ContextsPolicy>,
}

/// `[health]`: what `/health` checks besides enforcement, and the anomaly detectors.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthPolicy {
    /// Ports that must have a listening TCP socket.
    pub tcp: Vec<u16>,
    /// Ports that must have a bound UDP socket.
    pub udp: Vec<u16>,
    /// A process name (`comm`) whose processes and open file descriptors are exported.
    pub service: Option<String>,
    /// The detectors' window.
    pub interval_seconds: u32,
    /// Fire when a port's RTT p99 over a window exceeds this many times its own baseline.
    pub rtt_factor: Option<f64>,
    /// RTT samples a window needs before it is judged.
    pub rtt_min_samples: u32,
    /// Fire when inbound rejections across all ports exceed this rate.
    pub rejected_per_second: Option<u32>,
    /// Fire when TCP listen-queue overflows exceed this rate.
    pub overflows_per_second: Option<u32>,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        Self {
            tcp: Vec::new(),
            udp: Vec::new(),
            service: None,
            interval_seconds: 5,
            rtt_factor: None,
            rtt_min_samples: 10,
            rejected_per_second: None,
            overflows_per_second: None,
        }
    }
}

/// `[listen]`, per protocol (`allow` counts for both).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListenPolicy {
    pub tcp: Vec<PortRange>,
    pub udp: Vec<PortRange>,
}

/// `[events]`: the kernel's per-source limit on deny events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventLimits {
    /// Events per second per source address; 0 turns events off.
    pub rate_per_second: u32,
    /// Events a source may cause at once before the rate applies (>= 1).
    pub burst: u32,
}

impl Default for EventLimits {
    fn default() -> Self {
        Self {
            rate_per_second: 5,
            burst: 10,
        }
    }
}

/// `[flows]`: how long replies to the host's own flows pass after it last sent on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowTimeouts {
    pub tcp_timeout_seconds: u32,
    pub udp_timeout_seconds: u32,
}

impl Default for FlowTimeouts {
    fn default() -> Self {
        Self {
            tcp_timeout_seconds: 3600,
            udp_timeout_seconds: 120,
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
        })
    }
}

impl RuleAction {
    pub const fn as_str(self) -> &'static str {
        match self {
            RuleAction::Allow => "allow",
            RuleAction::Audit => "audit",
            RuleAction::Deny => "deny",
        }
    }
}

/// Compares with the name, so `action == "deny"` reads as it does in JSON.
impl PartialEq<&str> for RuleAction {
    fn eq(&self, name: &&str) -> bool {
        self.as_str() == *name
    }
}

impl fmt::Display for RuleAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A port as counters name it: a number the policy names, or `other` for every port it does
/// not (one counter per protocol). A string in JSON and metrics (`"443"`, `"other"`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(into = "String", try_from = "String")]
pub enum PortLabel {
    Number(u16),
    Other,
}

impl fmt::Display for PortLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortLabel::Number(port) => write!(f, "{port}"),
            PortLabel::Other => f.write_str("other"),
        }
    }
}

/// Compares with the name, so `port == "other"` reads as it does in JSON.
impl PartialEq<&str> for PortLabel {
    fn eq(&self, name: &&str) -> bool {
        match self {
            PortLabel::Other => *name == "other",
            PortLabel::Number(port) => name.parse::<u16>().is_ok_and(|n| n == *port),
        }
    }
}

impl From<PortLabel> for String {
    fn from(port: PortLabel) -> Self {
        port.to_string()
    }
}

impl TryFrom<String> for PortLabel {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        match text.as_str() {
            "other" => Ok(PortLabel::Other),
            n => n
                .parse()
                .map(PortLabel::Number)
                .map_err(|_| format!("a port is a number or `other`, not {n:?}")),
        }
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// Identity Server's admin surface: the management console and SOAP admin services (the
/// guidelines' `/carbon` and `/services`), the Console and the server REST APIs.
pub const DEFAULT_DENY_CONTEXTS: [&str; 4] =
    ["/carbon/", "/services/", "/console", "/api/server/v1/"];
/// Identity Server's end-user applications.
pub const DEFAULT_ALLOW_CONTEXTS: [&str; 7] = [
    "/oauth2/",
    "/oidc/",
    "/samlsso",
    "/commonauth",
    "/authenticationendpoint/",
    "/accountrecoveryendpoint/",
    "/myaccount",
];

/// `[contexts]`: the HTTP contexts an outside client must not reach (the admin surface) and
/// those it must (the end-user applications), and where the daemon verifies that.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextsPolicy {
    pub deny: Vec<String>,
    pub allow: Vec<String>,
    /// What the daemon probes on its audit tick (none: `guard audit --probe-http` only).
    pub targets: Vec<ProbeTarget>,
    /// Accept any certificate (a self-signed one is still reported).
    pub insecure: bool,
    /// Seconds between the daemon's probes.
    pub interval_seconds: u32,
    /// Seconds each request may take.
    pub timeout_seconds: u32,
    /// The network namespace the daemon probes from (a DMZ vantage point), if not its own.
    pub netns: Option<String>,
}

impl Default for ContextsPolicy {
    fn default() -> Self {
        Self {
            deny: DEFAULT_DENY_CONTEXTS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            allow: DEFAULT_ALLOW_CONTEXTS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            targets: Vec::new(),
            insecure: false,
            interval_seconds: 60,
            timeout_seconds: 3,
            netns: None,
        }
    }
}

/// A probe target: `https://HOST[:PORT][/]` (or `http://`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeTarget {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl ProbeTarget {
    pub fn parse(url: &str) -> Result<Self, String> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(format!(
                "{url}: a target is https://HOST[:PORT] or http://HOST[:PORT]"
            ));
        };
        let authority = rest.split('/').next().unwrap_or("");
        if authority.is_empty() || authority.contains('@') {
            return Err(format!("{url}: no host"));
        }
        let default_port = if tls { 443 } else { 80 };
        // `[v6]`, `[v6]:port`, `host`, `host:port`.
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("{url}: an unclosed [ in the host"))?;
            match after.strip_prefix(':') {
                Some(p) => (host, p),
                None if after.is_empty() => (host, ""),
                None => return Err(format!("{url}: junk after the host")),
            }
        } else {
            match authority.split_once(':') {
                Some((h, p)) => (h, p),
                None => (authority, ""),
            }
        };
        let port = if port.is_empty() {
            default_port
        } else {
            port.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("{url}: the port must be 1-65535"))?
        };
        if host.is_empty() {
            return Err(format!("{url}: no host"));
        }
        // A name or an address, nothing that could end the Host header.
        if !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'_'))
        {
            return Err(format!(
                "{url}: the host may hold letters, digits, `.`, `-` and `:` only"
            ));
        }
        let host = host.to_owned();
        Ok(Self { tls, host, port })
    }

    pub fn url(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!(
            "{}://{host}:{}",
            if self.tls { "https" } else { "http" },
            self.port
        )
    }
}
